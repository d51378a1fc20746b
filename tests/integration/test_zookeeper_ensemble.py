"""The test bed's three-server ZooKeeper ensemble (lvsctl/testbed/zookeeper.py): each server in
a namespace of its own on a bridge, a client in another, reaching them with kazoo.

What the safety drills build on is checked here against the real servers: one leader found
by ``srvr``, the server's clamp of a session's timeout, a follower cut off from the leader
answering reads its leader no longer agrees with (the hazard the leadership rules' ``sync``
closes), and sessions surviving a rolling restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from lvsctl.testbed.netns import Lab, Netns, in_netns
from lvsctl.testbed.zookeeper import ZooKeeperEnsemble, on_bridge

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

ADDRESSES = ("10.77.0.1/24", "10.77.0.2/24", "10.77.0.3/24")
CLIENT = "10.77.0.50"
TICK_MS = 100
SYNC_LIMIT = 80  # a cut-off follower serves 8 s before it gives up: far beyond a 1 s session
MAX_SESSION_MS = 1500


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Bed:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        hub = lab.netns("hub")
        bridge = lab.bridge(hub)
        self.client_ns: Netns = lab.netns("c")
        lab.attach(self.client_ns, f"{CLIENT}/24", hub, bridge, "eth0")
        self.ensemble: ZooKeeperEnsemble = on_bridge(
            lab, hub, bridge, ADDRESSES, tick_ms=TICK_MS, sync_limit=SYNC_LIMIT,
            max_session_ms=MAX_SESSION_MS, heap="96m")
        self.clients: list[KazooClient] = []

    def client(self, servers: list[int] | None = None, timeout: float = 1.0) -> KazooClient:
        """A started kazoo client in the client namespace, to ``servers`` (default: all)."""
        chosen = self.ensemble.servers if servers is None else [
            self.ensemble.servers[i] for i in servers]
        zk = KazooClient(hosts=",".join(s.hosts for s in chosen), timeout=timeout)
        self.clients.append(zk)
        # Started inside the namespace: kazoo's connection thread (and its sockets) stay there.
        in_netns(self.client_ns.name, lambda: zk.start(timeout=30))
        return zk

    def close(self) -> None:
        for zk in self.clients:
            zk.stop()
            zk.close()
        self.ensemble.close()


@pytest.fixture
def bed(lab: Lab) -> Iterator[Bed]:
    made = Bed(lab)
    try:
        made.ensemble.start(timeout=120)
        yield made
    finally:
        for i, server in enumerate(made.ensemble.servers):
            print(f"--- ZooKeeper {i + 1} log ---\n{server.log_tail(20)}")
        made.close()


def test_three_servers_elect_one_leader_and_replicate(bed: Bed) -> None:
    modes = bed.ensemble.modes()
    assert sorted(m or "none" for m in modes) == ["follower", "follower", "leader"], modes
    leader = bed.ensemble.leader()
    assert leader is not None and modes[leader] == "leader"
    follower = next(i for i, m in enumerate(modes) if m == "follower")
    writer, reader = bed.client([leader]), bed.client([follower])
    writer.create("/replicated", b"x")
    reader.sync("/replicated")
    assert reader.get("/replicated")[0] == b"x"


def test_a_session_timeout_above_the_servers_maximum_is_clamped(bed: Bed) -> None:
    zk = bed.client(timeout=10.0)
    serving = wait(lambda: bed.ensemble.serving_client(CLIENT) is not None, 30, "a session")
    assert serving
    index = bed.ensemble.serving_client(CLIENT)
    assert index is not None
    sessions = [s for s in bed.ensemble.servers[index].sessions() if s.address == CLIENT]
    assert [s.timeout_ms for s in sessions] == [MAX_SESSION_MS]
    assert sessions[0].session_id == zk.client_id[0]


def test_a_follower_cut_off_from_the_leader_answers_reads_its_leader_has_expired(
        bed: Bed) -> None:
    leader = bed.ensemble.leader()
    assert leader is not None
    follower, other = (i for i in range(3) if i != leader)
    owner = bed.client([follower], timeout=1.0)  # its session lives on the follower
    observer = bed.client([other])
    owner.create("/held", b"", ephemeral=True)
    observer.sync("/held")
    assert observer.exists("/held") is not None

    bed.ensemble.isolate(follower, [leader])
    try:
        # The leader no longer hears the session's pings: it expires the session (1 s) and
        # the quorum deletes the ephemeral node ...
        wait(lambda: observer.exists("/held") is None, 30, "the leader to expire the session")
        # ... while the cut-off follower still serves the old tree and the owner's session.
        assert bed.ensemble.servers[follower].mode() == "follower"
        stale = owner.exists("/held")
        assert stale is not None and stale.owner_session_id == owner.client_id[0]
    finally:
        bed.ensemble.heal(follower)
    bed.ensemble.wait_serving(120)


def test_sessions_survive_a_rolling_restart_and_the_leader_moves(bed: Bed) -> None:
    zk = bed.client(timeout=1.5)
    zk.create("/survivor", b"", ephemeral=True)
    session = zk.client_id[0]
    before = bed.ensemble.leader()
    order = bed.ensemble.rolling_restart(timeout=120)
    assert order[-1] == before and sorted(order) == [0, 1, 2]
    after = bed.ensemble.leader()
    assert after is not None and after != before
    stat = wait(lambda: zk.connected and zk.exists("/survivor"), 30, "the client back")
    assert stat.owner_session_id == session == zk.client_id[0]
