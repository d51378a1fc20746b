"""The election against a real ZooKeeper, in one process: epochs, queueing, stepdown, loss, and
the leadership rules' holes closed (DESIGN.md "Leadership rules"): own-znode confirmation,
linearizable confirmation, the negotiated session timeout, a higher-epoch ACTIVE beat, and a
stepdown that ZooKeeper could not carry out at once."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from lvsctl.core.zk import DIRECTOR_RECONNECT, ElectionQueue, SessionLog
from lvsctl.director.election import Election, State, Timing, Transition
from lvsctl.director.peer import PeerLink
from lvsctl.director.promise import PromiseFile
from tests.support.fake_vips import FakeClock
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

SESSION = 3.0  # the shortest the rule allows is 2.5 s (Timing.shortest_session)
SECRET = b"peer-secret-0123456789abcdef"


async def until(predicate, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.01)


def director_client(hosts: str, timeout: float = SESSION) -> KazooClient:
    """A client as a director has one (lvsctl.core.zk.make_client): it keeps the negotiated
    session timeout, and reconnects quickly."""
    return KazooClient(hosts=hosts, timeout=timeout, connection_retry=DIRECTOR_RECONNECT.kazoo(),
                       logger=SessionLog(logging.getLogger("kazoo")))


async def started(*clients: KazooClient) -> None:
    for c in clients:
        await asyncio.to_thread(c.start, 15)


async def closed(*clients: KazooClient) -> None:
    for c in clients:
        await asyncio.to_thread(c.stop)
        c.close()


def new_path() -> str:
    return f"/t-{uuid.uuid4().hex[:8]}/election"


def test_two_candidates_one_leads_stepdown_moves_it_and_epochs_grow(zookeeper_module):  # type: ignore[no-untyped-def]
    path = new_path()

    async def run() -> None:
        clients = [director_client(zookeeper_module.hosts) for _ in range(2)]
        await started(*clients)
        seen: dict[str, list[Transition]] = {"lb1": [], "lb2": []}
        e1 = Election(clients[0], path, "lb1", Timing(SESSION), on_transition=seen["lb1"].append)
        await e1.start()
        await until(lambda: e1.state is State.ACTIVE)
        e2 = Election(clients[1], path, "lb2", Timing(SESSION), on_transition=seen["lb2"].append)
        await e2.start()
        await until(lambda: e2.state is State.STANDBY)
        assert e2.epoch > e1.epoch
        # A confirmed leader may hold the VIPs; the standby never.
        await until(lambda: e1.permission() == "zk")
        assert e2.permission() is None

        await e1.stepdown()
        await until(lambda: e2.state is State.ACTIVE)
        await until(lambda: e1.state is State.STANDBY)
        assert e1.epoch > e2.epoch  # re-queued with a later sequence number
        assert [t.state for t in seen["lb1"]] == [
            State.ACTIVE, State.CANDIDATE, State.STANDBY]
        assert [t.state for t in seen["lb2"]] == [State.STANDBY, State.ACTIVE]

        # lb2's session closes (its ephemeral znode goes with it): lb1 leads again.
        await asyncio.to_thread(clients[1].stop)
        await until(lambda: e1.state is State.ACTIVE, 15)
        assert e1.epoch > e2.epoch

        await e1.stop()
        await e2.stop()
        await closed(*clients)

    asyncio.run(run())


def test_lease_runs_out_without_round_trips_and_fences(zookeeper_module):  # type: ignore[no-untyped-def]
    path = new_path()

    async def run() -> None:
        client = director_client(zookeeper_module.hosts)
        await started(client)
        e = Election(client, path, "lb1", Timing(SESSION))
        await e.start()
        await until(lambda: e.permission() == "zk")
        zookeeper_module.pause()  # the server freezes: round trips stop coming back
        try:
            await until(lambda: e.permission() is None, 6)  # holds nothing any more
        finally:
            zookeeper_module.resume()
        # Its session lived on (or it rejoined after losing it): it leads again.
        await until(lambda: e.permission() == "zk", 15)
        assert e.state is State.ACTIVE
        await e.stop()
        await closed(client)

    asyncio.run(run())


@pytest.mark.parametrize("how", ["deleted", "recreated by another session"])
def test_a_leader_whose_znode_is_deleted_or_not_its_own_leaves_the_lead(
        zookeeper_module: ZooKeeperServer, how: str) -> None:
    """Hole 1: the leader confirms ITS znode, owned by ITS session, not the queue's parent."""
    path = new_path()

    async def run() -> None:
        clients = [director_client(zookeeper_module.hosts) for _ in range(3)]
        await started(*clients)
        e1 = Election(clients[0], path, "lb1", Timing(SESSION))
        e2 = Election(clients[1], path, "lb2", Timing(SESSION))
        await e1.start()
        await until(lambda: e1.permission() == "zk")
        await e2.start()
        await until(lambda: e2.state is State.STANDBY)
        first = e1.epoch
        operator = clients[2]
        assert e1.node is not None
        znode = f"{path}/{e1.node}"
        await asyncio.to_thread(operator.delete, znode)
        if how == "recreated by another session":
            await asyncio.to_thread(operator.create, znode, b"{}", ephemeral=True)
        # lb1 gives the lead up (and rejoins behind lb2) while lb2 leads.
        await until(lambda: e1.state is not State.ACTIVE, 10)
        assert e1.permission() is None
        if how == "deleted":
            await until(lambda: e2.state is State.ACTIVE, 10)
            await until(lambda: e1.state is State.STANDBY and e1.epoch > first, 10)
        else:
            # lb1 rejoins behind the foreign copy (lb2 may have led in between, when the
            # znode was briefly gone): lb1 never leads on a znode that is not its own.
            await until(lambda: e1.state is State.STANDBY and e1.epoch > first, 10)
        await e1.stop()
        await e2.stop()
        await closed(*clients)

    asyncio.run(run())


class _Never:
    """A kazoo IAsyncResult that never completes: a sync stuck at a follower cut off from
    the ensemble's leader."""

    def rawlink(self, _callback: Any) -> None:
        pass


def test_a_reply_counts_only_behind_a_sync(zookeeper_module: ZooKeeperServer) -> None:
    """Hole 2: a read answered by an isolated follower confirms nothing: until the sync
    before it comes back, the leader is not confirmed (and the sync's send time counts)."""
    path = new_path()

    async def run() -> None:
        client = director_client(zookeeper_module.hosts)
        await started(client)
        e = Election(client, path, "lb1", Timing(SESSION))
        stuck: list[bool] = [True]
        real_sync = e._queue.sync_async
        sent_at: list[float] = []

        def sync_async() -> Any:
            sent_at.append(e.monotonic())
            return _Never() if stuck[0] else real_sync()

        e._queue.sync_async = sync_async  # type: ignore[method-assign]
        await e.start()
        await until(lambda: e.state is State.ACTIVE)
        await asyncio.sleep(1.0)  # ten confirm intervals: the reads alone would confirm
        assert e.confirmed_until == -math.inf and e.permission() is None
        stuck[0] = False
        await until(lambda: e.permission() == "zk", SESSION * 2)
        # The lease runs from a sync's send time, with the session's timeout.
        assert e.session is not None and e.session.timeout == SESSION
        assert any(0 <= t - (e.confirmed_until - SESSION + e.timing.margin) < 0.005
                   for t in sent_at)
        await e.stop()
        await closed(client)

    asyncio.run(run())


@pytest.fixture
def capped_zookeeper() -> Iterator[ZooKeeperServer]:
    """A server whose maxSessionTimeout (2.8 s) is below what directors ask for."""
    server = ZooKeeperServer(max_session_ms=2800)
    try:
        server.start()
        yield server
    finally:
        print(f"--- ZooKeeper log ---\n{server.log_tail()}")
        server.close()


def test_the_negotiated_session_timeout_is_used_or_refused(
        capped_zookeeper: ZooKeeperServer) -> None:
    """Hole 3: S is what the server granted, not what the node file asked for; a director
    whose granted S leaves no room for the rule refuses to run."""

    async def run() -> None:
        clients = [director_client(capped_zookeeper.hosts, timeout=4.0) for _ in range(2)]
        await started(*clients)
        e = Election(clients[0], new_path(), "lb1", Timing(4.0))
        await e.start()
        await until(lambda: e.permission() == "zk")
        assert e.timing.session_timeout == pytest.approx(2.8)
        assert e.confirmed_until <= e.monotonic() + 2.8 - e.timing.margin
        assert not e.fatal
        # The same server, a rule that needs more than 2.8 s: refused, never leading.
        wide = Timing(4.0, margin=0.3)
        assert wide.shortest_session > 2.8
        refused = Election(clients[1], new_path(), "lb2", wide)
        await refused.start()
        await until(lambda: bool(refused.fatal))
        assert "too short" in refused.fatal and "maxSessionTimeout" in refused.fatal
        await asyncio.sleep(0.5)
        assert refused.state is State.CANDIDATE and refused.node is None
        await e.stop()
        await refused.stop()
        await closed(*clients)

    asyncio.run(run())


def test_a_client_without_the_negotiated_timeout_is_refused(
        zookeeper_module: ZooKeeperServer) -> None:
    async def run() -> None:
        client = KazooClient(hosts=zookeeper_module.hosts, timeout=SESSION)
        await started(client)
        e = Election(client, new_path(), "lb1", Timing(SESSION))
        await e.start()
        assert "negotiated timeout is unknown" in e.fatal
        await e.stop()
        await closed(client)

    asyncio.run(run())


def test_an_active_beat_with_a_higher_epoch_demotes_a_confirmed_leader(
        zookeeper_module: ZooKeeperServer) -> None:
    """Hole 8: permission "zk" does not outrank the other director's higher epoch."""

    async def run() -> None:
        client = director_client(zookeeper_module.hosts)
        await started(client)
        other = PeerLink("lb2", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9), interval=0.05)
        await other.start()
        link = PeerLink("lb1", SECRET, ("127.0.0.1", 0), other.address, interval=0.05)
        await link.start()
        other.peer = link.address
        e = Election(client, new_path(), "lb1", Timing(SESSION), peer=link)
        link.on_beat = e.on_peer_beat
        await e.start()
        await until(lambda: e.permission() == "zk")
        first = e.epoch
        other.advertise(state="ACTIVE", epoch=first + 1, zk_connected=True)
        await until(lambda: e.permission() is None and e.state is not State.ACTIVE)
        # It rejoins with a new znode (a later epoch) and, alone in the queue, leads again.
        other.advertise(state="STANDBY")
        await until(lambda: e.state is State.ACTIVE and e.epoch > first, 10)
        await e.stop()
        await other.stop()
        await link.stop()
        await closed(client)

    asyncio.run(run())


def test_a_stepdown_while_zookeeper_is_down_is_carried_out_on_reconnect(
        zookeeper: ZooKeeperServer) -> None:
    """Liveness: the stepped-down znode is deleted when ZooKeeper is back, never found again
    as our own (which would make us lead again with the old epoch)."""
    path = new_path()

    async def run() -> None:
        client = director_client(zookeeper.hosts)
        await started(client)
        e = Election(client, path, "lb1", Timing(SESSION))
        await e.start()
        await until(lambda: e.permission() == "zk")
        first, node = e.epoch, e.node
        await asyncio.to_thread(zookeeper.stop)
        try:
            await until(lambda: not e.zk_connected, 10)
            await asyncio.wait_for(e.stepdown(), 5)  # returns: the delete waits for ZooKeeper
            assert e.state is State.CANDIDATE
        finally:
            await asyncio.to_thread(zookeeper.start)
        await until(lambda: e.state is State.ACTIVE, 20)
        assert e.epoch > first and e.node != node
        queue = [entry.znode for entry in ElectionQueue(client, path).entries()]
        assert queue == [e.node]
        await e.stop()
        await closed(client)

    asyncio.run(run())


def stopped(server: ZooKeeperServer) -> bool:
    """Has SIGSTOP taken effect (every thread of the server stopped)?"""
    assert server.pid is not None
    try:
        return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
                   for t in Path(f"/proc/{server.pid}/task").iterdir())
    except FileNotFoundError:  # a thread exited while we looked: look again
        return False


def test_a_stepdown_whose_delete_times_out_stays_in_the_election(
        zookeeper: ZooKeeperServer) -> None:
    """Liveness: a delete that does not come back within its timeout neither escapes the
    stepdown (an API 504) nor leaves the director out of the election."""
    path = new_path()
    # kazoo notices a silent server after 2/3 of the session: later than the delete's timeout.
    session = 6.0

    async def run() -> None:
        client = director_client(zookeeper.hosts, timeout=session)
        await started(client)
        e = Election(client, path, "lb1", Timing(session))
        await e.start()
        await until(lambda: e.permission() == "zk")
        first = e.epoch
        zookeeper.pause()  # connected, but nothing answers: the delete times out
        try:
            await until(lambda: stopped(zookeeper))
            await asyncio.wait_for(e.stepdown(), 10)
            await asyncio.sleep(0.5)
        finally:
            zookeeper.resume()
        await until(lambda: e.state is State.ACTIVE, 20)
        assert e.epoch > first
        queue = [entry.znode for entry in ElectionQueue(client, path).entries()]
        assert queue == [e.node]
        await e.stop()
        await closed(client)

    asyncio.run(run())


def test_a_standby_restarted_inside_its_promise_keeps_it(
        zookeeper_module: ZooKeeperServer, tmp_path: Path) -> None:
    """Hole 5: lb2 vouched for lb1 (cut off from ZooKeeper, holding the VIPs on lb2's word),
    then restarted and won at once: it waits out the promise its earlier run made."""
    path = new_path()
    store = tmp_path / "promise.json"

    async def run() -> None:
        holder = director_client(zookeeper_module.hosts)
        await started(holder)
        await asyncio.to_thread(ElectionQueue(holder, path).join, "lb1")
        # lb1's peer link: ACTIVE, holding, and it cannot reach ZooKeeper.
        lb1 = PeerLink("lb1", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9), interval=0.05)
        await lb1.start()
        lb1.advertise(state="ACTIVE", epoch=0, holding=True, zk_connected=False)

        async def standby() -> tuple[Election, PeerLink, KazooClient]:
            client = director_client(zookeeper_module.hosts)
            await started(client)
            link = PeerLink("lb2", SECRET, ("127.0.0.1", 0), lb1.address, interval=0.05,
                            dead_after=1.0)
            e = Election(client, path, "lb2", Timing(SESSION), peer=link,
                         promises=PromiseFile(store))
            link.on_beat, link.on_send = e.on_peer_beat, e.on_beat_sent
            await link.start()
            lb1.peer = link.address
            await e.start()
            return e, link, client

        e2, link2, client2 = await standby()
        await until(lambda: e2.state is State.STANDBY and link2.local.vouch, 10)
        await until(lambda: e2.promise_until > e2.monotonic() and store.exists())
        # lb2 crashes; lb1's session ends (its znode goes): the restarted lb2 wins at once.
        await e2.stop()
        await link2.stop()
        await closed(client2)
        await closed(holder)
        saved = PromiseFile(store).load()
        # lb1 now says it reaches ZooKeeper: the new run has no reason to vouch (and promise)
        # anew; only the earlier run's promise can hold it back.
        lb1.advertise(zk_connected=True)
        e3, link3, client3 = await standby()
        await until(lambda: e3.state is State.ACTIVE, 10)
        assert e3.permission() == "wait"  # the earlier run's word binds it
        restored = e3.promise_until
        assert restored == saved and restored > e3.monotonic()
        assert not link3.local.vouch
        # lb1 says it holds nothing and is not active: the promise is void, for good (lb1
        # then falls silent, as a director that stops does, and nothing brings the wait back).
        lb1.advertise(state="CANDIDATE", holding=False)
        await until(lambda: e3.permission() == "zk", 5)
        await lb1.stop()
        await asyncio.sleep(1.5)
        assert e3.monotonic() < restored and e3.permission() == "zk"
        await e3.stop()
        await link3.stop()
        await closed(client3)

    asyncio.run(run())


def test_a_promise_that_cannot_be_recorded_is_not_made(
        zookeeper_module: ZooKeeperServer, tmp_path: Path) -> None:
    path = new_path()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")

    async def run() -> None:
        holder = director_client(zookeeper_module.hosts)
        client = director_client(zookeeper_module.hosts)
        await started(holder, client)
        await asyncio.to_thread(ElectionQueue(holder, path).join, "lb1")
        lb1 = PeerLink("lb1", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9), interval=0.05)
        await lb1.start()
        lb1.advertise(state="ACTIVE", epoch=0, holding=True, zk_connected=False)
        heard: list[bool] = []
        lb1.on_beat = lambda beat: heard.append(beat.vouch)
        link = PeerLink("lb2", SECRET, ("127.0.0.1", 0), lb1.address, interval=0.05)
        e = Election(client, path, "lb2", Timing(SESSION), peer=link,
                     promises=PromiseFile(blocked / "promise.json"))
        link.on_beat, link.on_send = e.on_peer_beat, e.on_beat_sent
        await link.start()
        lb1.peer = link.address
        await e.start()
        await until(lambda: e.state is State.STANDBY and link.local.vouch and len(heard) > 20)
        assert not any(heard)  # no vouch went out
        await e.stop()
        await link.stop()
        await lb1.stop()
        await closed(holder, client)

    asyncio.run(run())


def test_a_frozen_active_recovers_on_a_fresh_vouch_during_a_whole_ensemble_outage(
        zookeeper: ZooKeeperServer) -> None:
    """Liveness: ZooKeeper is down for everyone, the active holds on the standby's vouch;
    frozen past the vouch's freshness, it holds nothing — and holds again on the next fresh
    vouch, then on ZooKeeper's word with the same epoch once the ensemble is back."""
    clock = FakeClock(time.monotonic)

    async def run() -> None:
        client = director_client(zookeeper.hosts)
        await started(client)
        lb2 = PeerLink("lb2", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9), interval=0.05)
        await lb2.start()
        link = PeerLink("lb1", SECRET, ("127.0.0.1", 0), lb2.address, interval=0.05,
                        dead_after=1.0, monotonic=clock)
        e = Election(client, new_path(), "lb1", Timing(SESSION), peer=link, monotonic=clock)
        link.on_beat, link.on_send = e.on_peer_beat, e.on_beat_sent
        await link.start()
        lb2.peer = link.address
        await e.start()
        await until(lambda: e.permission() == "zk")
        epoch = e.epoch
        # The standby cannot reach ZooKeeper either, and vouches for lb1.
        lb2.advertise(state="STANDBY", epoch=epoch + 1, zk_connected=False, vouch=True)
        await asyncio.to_thread(zookeeper.stop)
        try:
            await until(lambda: not e.zk_connected, 10)
            await until(lambda: e.permission() == "peer", 10)
            clock.jump(2.0)  # frozen: the last vouch is stale
            assert e.permission() is None
            await until(lambda: e.permission() == "peer", 5)  # the next one covers it again
            assert e.state is State.ACTIVE and e.epoch == epoch
        finally:
            await asyncio.to_thread(zookeeper.start)
        lb2.advertise(vouch=False, zk_connected=True)
        await until(lambda: e.permission() == "zk", 20)
        assert e.epoch == epoch  # the same session, the same znode: the lead never moved
        await e.stop()
        await link.stop()
        await lb2.stop()
        await closed(client)

    asyncio.run(run())
