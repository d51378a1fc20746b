"""The keeper in-process, composed from its parts: the real election on a real ZooKeeper, a
real peer link on loopback, the real channel, and an in-memory VIP table held to the kernel's
rules (tests/integration/test_vip_contract.py) on a clock that can jump (a freeze). The
worker's end of the channel is played by the test.

Every branch of the hold loop: acquire and renew, a stale renewal after a freeze (not sent),
a verdict that changes during a renewal (undone), adopting VIPs left by an earlier run, a VIP
moving to another interface; and supervision, stepdown, SIGHUP and the graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from lvsctl.core.errors import ConfigError, ConfigIssue
from lvsctl.core.model import Announce, Vip, ZooKeeperSettings
from lvsctl.core.node import Api, Node
from lvsctl.core.zk import SessionLog
from lvsctl.director.channel import (
    EXIT_FATAL,
    Channel,
    HandedOver,
    Handover,
    Heartbeat,
    KeeperState,
    LeaderConfig,
    LeaderRecord,
    ReloadNode,
    StepdownRequest,
    VipSpec,
    WorkerFatal,
)
from lvsctl.director.election import Election, Timing, Transition
from lvsctl.director.keeper import Keeper, Supervision
from lvsctl.director.peer import PeerLink, read_secret
from lvsctl.director.vip import Lease
from tests.support.fake_vips import FakeClock, FakeVips
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

SESSION = 3.0
VIP = VipSpec("192.0.2.10", "eth0")
VIP6 = VipSpec("2001:db8::10", "eth0")


@dataclass
class FakeWorker:
    """A worker process as the keeper sees it; its channel end is the test's."""

    pid: int
    code: int | None = None
    killed: bool = False
    got: list[Any] = field(default_factory=list)
    channel: Channel | None = None

    def poll(self) -> int | None:
        return self.code

    def kill(self) -> None:
        self.killed = True
        if self.code is None:
            self.code = -signal.SIGKILL

    def send(self, message: Any) -> None:
        assert self.channel is not None
        self.channel.send(message)

    def records(self, event: str | None = None) -> list[LeaderRecord]:
        return [m for m in self.got
                if isinstance(m, LeaderRecord) and (event is None or m.event == event)]

    def states(self) -> list[KeeperState]:
        return [m for m in self.got if isinstance(m, KeeperState)]


@dataclass
class Launcher:
    """Starts "workers" the test plays: ``config`` is sent at once unless None;
    ``answer_handover`` makes each answer the keeper's Handover."""

    config: LeaderConfig | None
    heartbeats: bool = True
    answer_handover: bool = True
    started: list[FakeWorker] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> tuple[FakeWorker, socket.socket]:
        keeper_end, worker_end = socket.socketpair()
        worker = FakeWorker(pid=100_000 + len(self.started))

        def on_message(message: Any) -> None:
            worker.got.append(message)
            if isinstance(message, Handover) and self.answer_handover:
                worker.send(HandedOver(message.epoch))

        def on_close(_why: str) -> None:
            if worker.code is None:
                worker.code = 0  # a worker exits when its keeper closes the channel

        worker.channel = Channel(worker_end, on_message=on_message, on_close=on_close)
        if self.config is not None:
            worker.send(self.config)
        if self.heartbeats:
            self._tasks.append(asyncio.ensure_future(self._beat(worker)))
        self.started.append(worker)
        self.started_at.append(time.monotonic())
        return worker, keeper_end

    async def _beat(self, worker: FakeWorker) -> None:
        seq = 0
        while worker.code is None and worker.channel is not None and not worker.channel.closed:
            seq += 1
            worker.send(Heartbeat(seq))
            await asyncio.sleep(0.1)

    @property
    def worker(self) -> FakeWorker:
        return self.started[-1]


class Events(logging.Handler):
    """The ``event`` of every log record of the director."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(getattr(record, "event", ""))


@dataclass
class Harness:
    zk: ZooKeeperServer
    tmp: Path
    cluster: str = field(default_factory=lambda: f"k{uuid.uuid4().hex[:8]}")
    clock: FakeClock = field(default_factory=lambda: FakeClock(time.monotonic))
    vips: FakeVips = field(init=False)
    announced: list[tuple[Vip, Announce]] = field(default_factory=list)
    elections: list[Election] = field(default_factory=list)
    sink: socket.socket = field(init=False)  # where our peer beats go (nobody answers)

    def __post_init__(self) -> None:
        self.vips = FakeVips(self.clock)
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.secret = self.tmp / "peer.secret"
        self.secret.write_text("peer-secret-0123456789abcdef\n")

    def node(self, secret: Path | None = None) -> Node:
        return Node(
            cluster=self.cluster, director="lb1",
            zookeeper=ZooKeeperSettings((self.zk.hosts,), "/lvsctl", SESSION, None),
            peer_secret_file=str(secret or self.secret),
            api=Api("127.0.0.1", 0, None, False), ipvs="kernel",
            state_dir=str(self.tmp), log_format="json", source=str(self.tmp / "node.yaml"))

    def config(self, *vips: VipSpec, version: str = "c@v1") -> LeaderConfig:
        port = self.sink.getsockname()[1]
        return LeaderConfig(version, vips or (VIP,), 2, 0.0, ("127.0.0.1", port),
                            ("127.0.0.1", port))

    def keeper(self, client: KazooClient, launcher: Launcher, **kwargs: Any) -> Keeper:
        timing = Timing(session_timeout=SESSION)

        def make_peer(config: LeaderConfig) -> PeerLink:
            return PeerLink("lb1", read_secret(str(self.secret)), ("127.0.0.1", 0),
                            config.peer_remote, dead_after=timing.peer_dead_after)

        def make_election(peer: PeerLink, on_transition: Callable[[Transition], None]
                          ) -> Election:
            election = Election(client, f"/lvsctl/{self.cluster}/election", "lb1", timing,
                                peer=peer, on_transition=on_transition, monotonic=self.clock)
            self.elections.append(election)
            return election

        async def announcer(vip: Vip, burst: Announce, still_held: Callable[[], bool]) -> int:
            self.announced.append((vip, burst))
            return burst.count if still_held() else 0

        parts: dict[str, Any] = {
            "vips": self.vips, "announcer": announcer, "launcher": launcher,
            "make_peer": make_peer, "make_election": make_election,
            "zk_connected": lambda: bool(client.connected), "monotonic": self.clock,
            **kwargs}
        return Keeper(self.node(), **parts)


@pytest.fixture
def harness(zookeeper_module: ZooKeeperServer, tmp_path: Path) -> Iterator[Harness]:
    made = Harness(zookeeper_module, tmp_path)
    try:
        yield made
    finally:
        made.sink.close()


@pytest.fixture
def client(zookeeper_module: ZooKeeperServer) -> Iterator[KazooClient]:
    zk = KazooClient(hosts=zookeeper_module.hosts, timeout=SESSION,
                     logger=SessionLog(logging.getLogger("kazoo")))  # as make_client
    zk.start(timeout=15)
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger("lvsctl.director")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def run_keeper(keeper: Keeper, scenario: Callable[[], Any]) -> int:
    """Run the keeper while ``scenario`` runs, then stop it gracefully; its exit code."""
    task = asyncio.create_task(keeper.run())
    try:
        await scenario()
    finally:
        keeper.stop()
        code = await asyncio.wait_for(task, 30)
    return code


def holds(keeper: Keeper, harness: Harness, *specs: VipSpec) -> bool:
    want = set(specs or (VIP,))
    return keeper.held == want and {(s.address, s.interface) for s in want} <= set(
        harness.vips.expires)


def test_acquires_renews_announces_and_records_without_a_log_line_per_renewal(
        harness: Harness, client: KazooClient, events: Events) -> None:
    launcher = Launcher(harness.config(VIP, VIP6))
    keeper = harness.keeper(client, launcher)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness, VIP, VIP6), "both VIPs held")
        assert launcher.started
        renewals = len(harness.vips.ops("renew"))
        await until(lambda: len(harness.vips.ops("renew")) >= renewals + 10, "renewals")
        await until(lambda: len(launcher.worker.records("garp_sent")) == 2, "announcements")

    assert asyncio.run(run_keeper(keeper, scenario)) == 0
    worker = launcher.worker
    assert [r.vip for r in worker.records("vip_acquired")] == [VIP.address, VIP6.address]
    assert {r.basis for r in worker.records("vip_acquired")} == {"zk"}
    assert [v.address for v, _ in harness.announced] == [VIP.address, VIP6.address]
    assert harness.announced[0][1] == Announce(2, 0.0)
    active = [s for s in worker.states() if s.role == "ACTIVE"]
    assert active and active[-1].vips == tuple(sorted((VIP.address, VIP6.address)))
    # Renewals are many and silent: one log line per VIP acquired, none per renewal.
    assert events.events.count("vip_acquired") == 2
    assert len(harness.vips.ops("renew")) >= 10
    # The graceful stop released both and told the worker, then closed the channel.
    assert harness.vips.expires == {}
    assert {r.vip for r in worker.records("vip_released")} == {VIP.address, VIP6.address}
    assert any(isinstance(m, Handover) for m in worker.got)
    assert worker.code == 0
    assert client.get_children(f"/lvsctl/{harness.cluster}/election") == []


def test_a_graceful_stop_deletes_the_znode_without_waiting_for_the_handover(
        harness: Harness, client: KazooClient) -> None:
    """The other director's takeover must not wait for the worker's sync-daemon handover: the
    VIPs go, the worker is asked, and the znode goes while the answer is still outstanding."""
    launcher = Launcher(harness.config(), answer_handover=False)
    keeper = harness.keeper(client, launcher, supervision=Supervision(handover_timeout=60.0))
    election = f"/lvsctl/{harness.cluster}/election"

    async def scenario() -> None:
        task = asyncio.create_task(keeper.run())
        await until(lambda: holds(keeper, harness), "the VIP held")
        assert client.get_children(election)
        keeper.stop()
        await until(lambda: any(isinstance(m, Handover) for m in launcher.worker.got),
                    "the handover asked")
        await until(lambda: not client.get_children(election),
                    "the znode deleted while the handover is unanswered")
        assert harness.vips.expires == {}
        assert not task.done()  # still waiting for the answer (bounded by handover_timeout)
        epoch = next(m.epoch for m in launcher.worker.got if isinstance(m, Handover))
        launcher.worker.send(HandedOver(epoch))
        assert await asyncio.wait_for(task, 30) == 0

    asyncio.run(scenario())


def test_a_renewal_that_comes_too_late_after_a_freeze_is_not_sent(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        # Frozen between the verdict and the kernel call, far past the lease.
        harness.vips.before_send.append(lambda: harness.clock.jump(10.0))
        await until(lambda: harness.vips.stale == 1, "the stale renewal refused")
        await until(lambda: holds(keeper, harness), "the VIP held again on a fresh verdict")

    asyncio.run(run_keeper(keeper, scenario))
    # Not one renewal reached the table after its verdict's deadline.
    assert all(not_after is not None and at <= not_after for at, not_after in harness.vips.sent)


def test_a_verdict_that_expires_during_the_renewal_is_undone(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        # Frozen just after the kernel call: the renewal went out, the verdict ran out.
        harness.vips.after_send.append(lambda: harness.clock.jump(10.0))
        await until(lambda: any(r.reason == "verdict changed while renewing"
                                for r in launcher.worker.records("vip_released")),
                    "the renewal undone")
        await until(lambda: holds(keeper, harness), "the VIP held again on a fresh verdict")

    asyncio.run(run_keeper(keeper, scenario))
    # Gone right after the renewal that was undone (the 10 s freeze also lapsed the lease,
    # so the table reports it expired by the time of the release).
    log = harness.vips.log
    undone = next(i for i, (op, *_) in enumerate(log) if op in ("release", "expired"))
    assert log[undone - 1] == ("renew", VIP.address, VIP.interface)


def test_vips_left_by_an_earlier_run_are_released_before_anything_is_added(
        harness: Harness, client: KazooClient) -> None:
    # A leftover lease, still in its lifetime, plus an unrelated address nobody configured.
    harness.vips.renew(Vip(VIP.address, VIP.interface), Lease(30))
    harness.vips.renew(Vip("192.0.2.99", "eth0"), Lease(30))
    harness.vips.log.clear()
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")

    asyncio.run(run_keeper(keeper, scenario))
    assert harness.vips.log[:2] == [("release", VIP.address, "eth0"),
                                    ("add", VIP.address, "eth0")]
    released = launcher.started[0].records("vip_released")
    assert released[0].reason == "left over from an earlier run"
    assert ("192.0.2.99", "eth0") in harness.vips.expires  # not ours: untouched


def test_a_vip_moving_to_another_interface_is_released_before_it_is_added_there(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)
    moved = replace(VIP, interface="eth1")

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held on eth0")
        launcher.worker.send(harness.config(moved, version="c@v2"))
        await until(lambda: holds(keeper, harness, moved), "the VIP held on eth1")

    asyncio.run(run_keeper(keeper, scenario))
    log = harness.vips.log
    release = log.index(("release", VIP.address, "eth0"))
    add = log.index(("add", VIP.address, "eth1"))
    assert release < add
    assert [v.interface for v, _ in harness.announced] == ["eth0", "eth1"]
    reasons = [r.reason for r in launcher.worker.records("vip_released")]
    assert reasons[0] == "removed from the config"


def test_a_keeper_never_given_a_vip_set_holds_nothing_and_joins_no_election(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(None)
    keeper = harness.keeper(client, launcher)

    async def scenario() -> None:
        await until(lambda: bool(launcher.started) and len(launcher.worker.states()) >= 2,
                    "two state snapshots")

    asyncio.run(run_keeper(keeper, scenario))
    assert harness.vips.log == [] and harness.elections == []
    assert {s.have_config for s in launcher.started[0].states()} == {False}


def test_a_worker_that_exits_or_hangs_is_replaced_and_the_vip_renewed_meanwhile(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    supervision = Supervision(heartbeat_timeout=0.5, backoff_min=0.2, backoff_max=0.8)
    keeper = harness.keeper(client, launcher, supervision=supervision)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        first = launcher.worker
        first.code = 1  # exits
        await until(lambda: len(launcher.started) == 2, "a second worker")
        launcher.heartbeats = False  # the third one will hang
        renewals = len(harness.vips.ops("renew"))
        second = launcher.worker
        second.code = 1
        await until(lambda: len(launcher.started) == 3, "a third worker")
        await until(lambda: len(launcher.started) == 4, "the hung one replaced")
        assert launcher.started[2].killed
        assert len(harness.vips.ops("renew")) > renewals  # renewed while workers came and went
        assert holds(keeper, harness)

    asyncio.run(run_keeper(keeper, scenario))
    gaps = [b - a for a, b in zip(launcher.started_at, launcher.started_at[1:], strict=False)]
    # Backoff: each restart waits at least as long as the one before (0.2, 0.4, 0.8 s).
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4


def test_a_worker_that_refuses_to_run_stops_the_keeper(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        # As a real worker exits: its channel closes first, its exit code comes a bit later.
        worker = launcher.worker
        assert worker.channel is not None
        worker.channel.close()
        await asyncio.sleep(0.3)
        worker.code = EXIT_FATAL

    async def run() -> int:
        task = asyncio.create_task(keeper.run())
        await scenario()
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(run()) == 2
    assert harness.vips.expires == {} and len(launcher.started) == 1


def test_a_stepdown_request_from_the_api_moves_the_lead_and_rejoins(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)
    epochs: list[int] = []

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        epochs.append(keeper.epoch)
        launcher.worker.send(StepdownRequest())
        await until(lambda: keeper.epoch > epochs[0] and holds(keeper, harness),
                    "leading again with a later epoch (the only candidate)")

    asyncio.run(run_keeper(keeper, scenario))
    states = [r.state for r in launcher.worker.records("transition")]
    assert states[:3] == ["ACTIVE", "CANDIDATE", "ACTIVE"]
    assert launcher.worker.records("vip_released")[0].reason.startswith("leadership CANDIDATE")


def test_sighup_applies_a_rotated_peer_secret_and_refuses_a_bad_node_file(
        harness: Harness, client: KazooClient, events: Events) -> None:
    launcher = Launcher(harness.config())
    rotated = harness.tmp / "peer.secret.2"
    rotated.write_text("a-new-peer-secret-0123456789\n")
    answers: list[Any] = []

    def reload() -> Node:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    keeper = harness.keeper(client, launcher, reload_node=reload, read_secret=read_secret)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        assert keeper.peer is not None
        before = keeper.peer.secret
        answers.append(ConfigError("node.yaml", [ConfigIssue("api.listen", "bad")]))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: "node_rejected" in events.events, "the bad file refused")
        assert keeper.peer.secret == before
        assert not any(isinstance(m, ReloadNode) for m in launcher.worker.got)
        answers.append(harness.node(secret=rotated))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: "node_reloaded" in events.events, "the new file applied")
        assert keeper.peer.secret == b"a-new-peer-secret-0123456789"
        assert keeper.node.peer_secret_file == str(rotated)
        await until(lambda: any(isinstance(m, ReloadNode) for m in launcher.worker.got),
                    "the worker told to re-read it")
        assert holds(keeper, harness)  # leadership untouched throughout

    asyncio.run(run_keeper(keeper, scenario))


def test_records_made_while_no_worker_runs_reach_the_next_one(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher,
                            supervision=Supervision(backoff_min=1.0, backoff_max=1.0))

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        launcher.worker.code = 1
        await until(lambda: keeper.worker is None, "the worker dropped")
        harness.vips.after_send.append(lambda: harness.clock.jump(10.0))
        await until(lambda: len(launcher.started) == 2, "a second worker")
        await until(lambda: any(r.reason == "verdict changed while renewing"
                                for r in launcher.worker.records("vip_released")),
                    "the release made meanwhile, told to the new worker")

    asyncio.run(run_keeper(keeper, scenario))
    assert not any(r.reason == "verdict changed while renewing"
                   for r in launcher.started[0].records("vip_released"))


def test_a_vip_the_kernel_will_not_renew_lapses_and_the_keeper_goes_on(
        harness: Harness, client: KazooClient, events: Events) -> None:
    """Fail safe: a renewal the kernel refuses is not retried into a held VIP; the lease
    lapses, the keeper keeps running and holds the VIP again once the kernel takes it."""
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)
    key = (VIP.address, VIP.interface)

    async def scenario() -> None:
        await until(lambda: holds(keeper, harness), "the VIP held")
        harness.vips.interfaces = frozenset({"eth1"})  # eth0 gone: every renewal is ENODEV
        vip = (Vip(VIP.address, VIP.interface),)
        await until(lambda: not harness.vips.held(vip), "the lease lapsed")
        assert "vip_error" in events.events
        harness.vips.interfaces = frozenset({"eth0", "eth1"})
        await until(lambda: holds(keeper, harness), "the VIP held again")

    assert asyncio.run(run_keeper(keeper, scenario)) == 0
    lapsed = harness.vips.log.index(("expired", *key))
    # Nothing renewed it between its last renewal and its lapse; then it was added afresh.
    assert harness.vips.log[lapsed + 1] == ("add", *key)


def test_a_worker_that_refuses_to_run_says_why_through_the_keeper(
        harness: Harness, client: KazooClient) -> None:
    launcher = Launcher(harness.config())
    keeper = harness.keeper(client, launcher)
    why = "api.listen: cannot listen on 127.0.0.1:9180: Address already in use"

    async def run() -> int:
        task = asyncio.create_task(keeper.run())
        await until(lambda: holds(keeper, harness), "the VIP held")
        worker = launcher.worker
        worker.send(WorkerFatal(why))
        await asyncio.sleep(0.3)
        assert worker.channel is not None
        worker.channel.close()
        worker.code = EXIT_FATAL
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(run()) == 2
    assert keeper.fatal == f"the worker refused to run: {why}"
    assert harness.vips.expires == {}


def test_a_zookeeper_granting_too_short_a_session_stops_the_keeper(tmp_path: Path) -> None:
    """The server's maxSessionTimeout (2 s) is below what the rule needs: refuse to run."""
    capped = ZooKeeperServer(max_session_ms=2000)
    capped.start()
    try:
        harness = Harness(capped, tmp_path)
        zk = KazooClient(hosts=capped.hosts, timeout=SESSION,
                         logger=SessionLog(logging.getLogger("kazoo")))
        zk.start(timeout=15)
        launcher = Launcher(harness.config())
        keeper = harness.keeper(zk, launcher)

        async def run() -> int:
            return await asyncio.wait_for(keeper.run(), 30)

        assert asyncio.run(run()) == 2
        assert "maxSessionTimeout" in keeper.fatal
        assert harness.vips.log == []  # never held anything
        zk.stop()
        zk.close()
        harness.sink.close()
    finally:
        capped.close()
