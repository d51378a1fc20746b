"""The director pair end to end: real ZooKeeper, two ``lvsctl director run`` processes in two
namespaces on a bridge, VIP presence observed with netlink events in both namespaces.

Every scenario asserts who holds the VIP and that both never held it at the same instant.
"""

from __future__ import annotations

import signal

import pytest

from tests.support.director_lab import VIP, VIP6, DirectorPair

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]


@pytest.fixture
def pair(lab):  # type: ignore[no-untyped-def]
    made = DirectorPair(lab)
    try:
        made.setup()
        made.start("lb1")
        made.wait_holder("lb1", 20)  # lb1 leads before lb2 even starts
        made.start("lb2")
        made.wait(lambda: (made.status("lb2") or {}).get("role") == "STANDBY", 20, "lb2 standby")
        yield made
    finally:
        made.close()


def assert_never_both(pair: DirectorPair) -> None:
    for addr in (VIP, VIP6):
        assert pair.overlap(addr) == 0.0, f"both directors held {addr} at once"


def test_graceful_stop_hands_over_at_once(pair: DirectorPair) -> None:
    pair.signal("lb1", signal.SIGTERM)
    took = pair.wait_holder("lb2", 5)
    assert pair.procs["lb1"].wait(timeout=10) == 0
    pair.wait_holder("lb2", 5, addr=VIP6)
    assert took < 1.0  # far below a session timeout: the znode was deleted, not expired
    st = pair.status("lb2")
    assert st is not None and st["role"] == "ACTIVE" and VIP in st["vips"]
    assert_never_both(pair)
