"""The test bed's pure parts: the overlap arithmetic, a ZooKeeper's own address and port, and
how a failed command is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsctl.core.errors import LvsctlError
from lvsctl.testbed.netns import CommandError, run, unique
from lvsctl.testbed.overlap import overlap
from lvsctl.testbed.zookeeper import own_address

INF = float("inf")


@pytest.mark.parametrize(("a", "b", "both"), [
    ([], [(0.0, 5.0)], 0.0),
    ([(0.0, 1.0)], [(2.0, 3.0)], 0.0),  # a handover with a gap
    ([(0.0, 1.0)], [(1.0, 3.0)], 0.0),  # touching: one ends as the other starts
    ([(0.0, 2.0)], [(1.5, 3.0)], 0.5),
    ([(0.0, 1.0), (2.0, 4.0)], [(0.5, 2.5)], 1.0),  # two holds of one side, each overlapping
    ([(0.0, 10.0)], [(1.0, 2.0), (3.0, 4.0)], 2.0),
])
def test_overlap_sums_the_time_both_held(a: list[tuple[float, float]],
                                         b: list[tuple[float, float]], both: float) -> None:
    assert overlap(a, b) == pytest.approx(both)
    assert overlap(b, a) == pytest.approx(both)


def test_overlap_with_a_hold_still_open_is_unbounded() -> None:
    assert overlap([(0.0, INF)], [(1.0, INF)]) == INF


def test_own_address_is_private_to_this_process_and_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first, second = own_address(), own_address()
    assert first[0] == second[0] and first[1] != second[1]
    host, port = first
    octets = [int(o) for o in host.split(".")]
    assert octets[0] == 127 and octets[1] >= 1  # not 127.0.0.x, which everyone uses
    assert port < low


def test_a_failed_command_is_one_error_naming_it() -> None:
    with pytest.raises(CommandError, match=r"^false failed \(1\)"):
        run(["false"])
    with pytest.raises(LvsctlError, match="no-such-tool-here is not installed"):
        run(["no-such-tool-here"])
    assert run(["false"], check=False) == ""


def test_unique_names_fit_an_interface() -> None:
    names = {unique("lvsprefix") for _ in range(50)}
    assert len(names) == 50 and all(len(n) <= 15 for n in names)
