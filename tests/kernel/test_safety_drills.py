"""Safety drills on a three-server ZooKeeper ensemble (lvsctl/testbed/safety.py), in the
kernel VM: the peer-link drill needs sch_netem, which this host's kernel lacks.

One bed for the module (three ZooKeeper servers, the director pair, a client; every process
start costs seconds in the VM). Each drill settles the pair, does its damage with the client
probing the VIP, heals, and settles again; it passes when no instant had a VIP on both
directors (kernel address events), the pair came back whole and the client is served.

The pair runs on the test bed's file-backed fake IPVS, not the kernel's: what these drills
put at risk is the VIP, a kernel address lease, real in every namespace; the keeper never
touches IPVS, and the fake is held to the kernel's rules by tests/contract. The kernel table
would only add the worker's netlink work to an emulated CPU already near saturation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lvsctl.testbed.netns import Lab
from lvsctl.testbed.safety import SafetyBed, run_drill
from lvsctl.testbed.vm import kernel_has_ipvs

pytestmark = [pytest.mark.kernel, pytest.mark.netns, pytest.mark.zookeeper]

@pytest.fixture(scope="module")
def bed() -> Iterator[SafetyBed]:
    if not kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run with scripts/test (it uses the kernel VM)",
                    pytrace=False)
    lab = Lab()
    made = SafetyBed(lab, progress=print)
    try:
        made.build()
        yield made
    finally:
        made.close()
        lab.close()


def drill(bed: SafetyBed, name: str) -> None:
    result = run_drill(bed, name)
    print(result.summary())
    assert result.overlap == 0.0, f"a VIP on both directors\n{result.summary()}"
    assert not result.error, result.error
    assert result.served_at_end, f"the client is not served after the drill\n{result.summary()}"


def test_deleting_the_leaders_znode(bed: SafetyBed) -> None:
    drill(bed, "leader_znode_deleted")


def test_the_actives_follower_isolated_from_the_leader(bed: SafetyBed) -> None:
    drill(bed, "follower_isolated")


def test_a_server_max_session_timeout_below_the_node_files(bed: SafetyBed) -> None:
    drill(bed, "session_above_server_max")


def test_netem_delay_and_loss_on_the_peer_link(bed: SafetyBed) -> None:
    drill(bed, "peer_netem")


def test_restarting_the_standby_while_the_active_holds_on_its_vouch(bed: SafetyBed) -> None:
    drill(bed, "standby_restart")


def test_a_rolling_restart_of_the_ensemble(bed: SafetyBed) -> None:
    drill(bed, "rolling_restart")
