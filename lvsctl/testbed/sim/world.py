"""The simulated director pair: two hosts running the production keeper on virtual time.

Each host keeps, across its director's restarts, a kernel (its addresses: the VIP leases), a
state folder and a monotonic clock; each director *process* is the production ``Keeper`` with
its ``Election`` and ``PeerLink`` (built exactly as lvsctl/director_main.py builds them, in
``start_director``) on a ``VirtualLoop``, a simulated kazoo client and a ``SimVips`` table.
The world runs world events (packets, server work, kernel expiries, faults) and the processes'
loops in virtual-time order; a frozen process is not stepped (its client's events wait too,
and run a few milliseconds after it resumes, as kazoo's thread would).

Whenever simulated time moves on, the invariant is checked: **at most one (host, interface)
holds each VIP address** (World.check says what is tolerated: a double hold that does not
outlive its instant, and one bounded by the rule's stated limit after an operator deletes the
leader's znode). The first breach stops the run (``Violation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Announce, Vip, ZooKeeperSettings
from lvsctl.core.node import Api, Node
from lvsctl.core.zk import SessionLog
from lvsctl.director.channel import LeaderConfig, VipSpec
from lvsctl.director.election import Election, State, Timing, Transition
from lvsctl.director.keeper import Keeper, Supervision
from lvsctl.director.peer import PeerLink
from lvsctl.director.promise import PromiseFile
from lvsctl.testbed.sim import schedule as S
from lvsctl.testbed.sim.clock import Agenda
from lvsctl.testbed.sim.kernel import HostKernel, SimVips
from lvsctl.testbed.sim.loop import VirtualLoop
from lvsctl.testbed.sim.network import PeerNetwork, SimDatagramTransport
from lvsctl.testbed.sim.zookeeper import RetryPolicy, SimKazooClient, SimZooKeeper

VIPS = (VipSpec("192.0.2.10", "eth0"), VipSpec("2001:db8::10", "eth0"))
SECRET = b"simulated-peer-secret-0123456789"
PEER_PORT = 7946
WALL_BASE = 1_800_000_000.0
KAZOO_LAG = 0.02  # after a resume, kazoo's thread runs within this (the GIL's switch interval)
RESTART_BACKOFF = 0.5  # systemd's RestartSec for a director that exited
ROUND_TRIP = 0.1  # a confirmation's round trip, at most, in the simulated ensemble


class Violation(AssertionError):
    """Two holders of one VIP at one instant."""


class SimulationError(RuntimeError):
    """The simulation itself went wrong (a production call it does not model, a livelock)."""


@dataclass
class Host:
    """What survives a director's restart: kernel, state folder, clocks, peer address."""

    name: str
    index: int
    kernel: HostKernel
    state_dir: str
    peer_addr: tuple[str, int]
    mono_offset: float
    wall_skew: float

    def monotonic(self, now: float) -> float:
        return now + self.mono_offset

    def wall(self, now: float) -> float:
        return WALL_BASE + now + self.wall_skew


class NoWorker:
    """The keeper's worker launcher in the simulation: there is none (the VIP set comes
    straight from the world), so every start fails and the keeper backs off."""

    def start(self) -> Any:
        raise OSError("no worker in the simulation")


async def _announce(vip: Vip, burst: Announce, still_held: Callable[[], bool]) -> int:
    return burst.count if still_held() else 0


@dataclass
class Process:
    """One run of a director on its host, from start to exit or crash."""

    world: World
    host: Host
    pid: int
    loop: VirtualLoop = field(init=False)
    client: SimKazooClient = field(init=False)
    keeper: Keeper | None = field(init=False, default=None)
    task: asyncio.Task[int] | None = field(init=False, default=None)
    alive: bool = field(init=False, default=True)
    frozen_until: float = field(init=False, default=-1.0)
    inline: bool = field(init=False, default=False)
    deferred: list[Callable[[], None]] = field(init=False, default_factory=list)
    armed: list[tuple[str, str, float]] = field(init=False, default_factory=list)
    transports: list[SimDatagramTransport] = field(init=False, default_factory=list)
    froze_in_call: bool = field(init=False, default=False)

    @property
    def name(self) -> str:
        return self.host.name

    def frozen(self) -> bool:
        return self.inline or self.world.agenda.now < self.frozen_until

    def runnable(self) -> bool:
        return self.alive and not self.frozen()

    # ClientHost: the client's (kazoo's) thread runs only while the process does.
    def run(self, fn: Callable[[], None]) -> None:
        if not self.alive:
            return
        if self.frozen() or self.deferred:
            self.deferred.append(fn)
            return
        with self.world.current(self):
            fn()

    def flush(self) -> None:
        while self.deferred and self.runnable():
            fn = self.deferred.pop(0)
            with self.world.current(self):
                fn()

    def hook(self, point: str) -> None:
        """A point inside the VIP table's renewal where a fault may be armed: a freeze (for
        ``seconds``) or a crash (restarted ``seconds`` later).

        At most one freeze per renewal call: a second stop between the send and the re-check
        after it would stretch the double hold that a stale send causes by its own length,
        which no code can prevent (DESIGN.md bounds it by the call, not by time); a second
        armed freeze waits for a later call.
        """
        if point == "renew_before_check":
            self.froze_in_call = False
        for i, (kind, armed_point, seconds) in enumerate(self.armed):
            if armed_point == point and (kind == S.CRASH or not self.froze_in_call):
                del self.armed[i]
                if kind == S.CRASH:
                    self.world.crash(self, seconds)
                else:
                    self.froze_in_call = True
                    self.world.freeze_inline(self, seconds)
                return

    def endpoint(self, protocol: asyncio.DatagramProtocol,
                 addr: tuple[str, int]) -> SimDatagramTransport:
        def deliver(fn: Callable[[], None]) -> None:
            if self.alive:
                self.loop.call_soon(fn)  # the socket buffer: read when the loop runs

        transport = SimDatagramTransport(self.world.network, addr, protocol, deliver)
        self.transports.append(transport)
        return transport


@dataclass
class Stats:
    schedules: int = 0
    simulated: float = 0.0  # seconds
    steps: int = 0
    held: float = 0.0  # simulated seconds during which a director held the first VIP
    transient: int = 0  # double holds that lasted no simulated time (see World.check)
    tolerated: int = 0  # double holds within the bound after an external znode delete
    refusals: int = 0  # director runs that ended in an error or a non-zero exit

    def add(self, other: Stats) -> None:
        self.schedules += other.schedules
        self.simulated += other.simulated
        self.steps += other.steps
        self.held += other.held
        self.transient += other.transient
        self.tolerated += other.tolerated
        self.refusals += other.refusals


class _LogTap(logging.Handler):
    """Keeps the production log lines of a run, stamped with virtual time and the host."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.DEBUG)
        self.world = world
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        who = self.world._current.name if self.world._current is not None else "world"
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not end the run
            message = str(record.msg)
        self.lines.append(f"{self.world.agenda.now:9.3f} {who:5} {record.levelname[0]} "
                          f"{message}")


class World:
    """One simulated run of ``schedule``; ``run()`` returns its Stats or raises Violation."""

    def __init__(self, schedule: S.Schedule) -> None:
        self.schedule = schedule
        self.rng = random.Random(schedule.seed)
        self.agenda = Agenda()
        self.zk = SimZooKeeper(self.agenda, random.Random(self.rng.random()),
                               servers=schedule.servers, tick=schedule.tick,
                               sync_limit=schedule.sync_limit, max_session=schedule.max_session)
        self.network = PeerNetwork(self.agenda, random.Random(self.rng.random()),
                                   loss=schedule.peer_loss, delay=schedule.peer_delay)
        self.vips: tuple[VipSpec, ...] = VIPS
        self.hosts: list[Host] = []
        self.processes: dict[str, Process] = {}
        self.stats = Stats(schedules=1)
        self.events: list[str] = []  # the run's story, for a failure report
        self.violation: str | None = None
        self._pids = iter(range(1000, 10**9))
        self._current: Process | None = None
        self._tmp = tempfile.mkdtemp(prefix="lvsctl-sim-")
        self._tap = _LogTap(self)
        self._stopping: set[str] = set()
        self._holding_since: float | None = None
        self._changes = 0  # address changes in any kernel
        self._checked = 0
        self._transient_at: float | None = None
        self._foreign_delete_until = -1.0
        self._tolerating = False
        for i, name in enumerate(S.DIRECTORS):
            kernel = HostKernel(name, self.agenda, random.Random(self.rng.random()),
                                late_max=schedule.kernel_late, late_bias=schedule.late_bias,
                                on_change=self._kernel_changed)
            state_dir = f"{self._tmp}/{name}"
            os.makedirs(state_dir)
            self.hosts.append(Host(name, i, kernel, state_dir, (f"10.0.0.{i + 1}", PEER_PORT),
                                   mono_offset=1000.0 * (i + 1) + self.rng.uniform(0, 100),
                                   wall_skew=self.rng.uniform(-0.05, 0.05)))

    # -- running -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def current(self, process: Process | None) -> Any:
        previous, self._current = self._current, process
        try:
            yield
        finally:
            self._current = previous

    def log(self, text: str) -> None:
        self.events.append(f"{self.agenda.now:9.3f} {text}")
        self._tap.lines.append(f"{self.agenda.now:9.3f} ===== {text}")

    def run(self) -> Stats:
        loggers = [logging.getLogger("lvsctl"), logging.getLogger("asyncio")]
        saved = [(lg, lg.level, lg.propagate) for lg in loggers]
        for lg in loggers:
            lg.addHandler(self._tap)
            lg.setLevel(logging.DEBUG if lg.name == "lvsctl" else logging.WARNING)
            lg.propagate = False
        try:
            for host in self.hosts:
                self.start_director(host)
            for fault in self.schedule.faults:
                self.agenda.at(fault.at, functools.partial(self.apply, fault))
            self.run_until(self.schedule.duration)
            if self._holding_since is not None:
                self.stats.held += self.agenda.now - self._holding_since
                self._holding_since = None
        finally:
            with warnings.catch_warnings():
                # Coroutines of killed processes were never finished (nor, some, started):
                # that is what a kill is, not a bug worth a warning.
                warnings.simplefilter("ignore", RuntimeWarning)
                for process in self.processes.values():
                    process.alive = False
                    process.client.kill()  # what is left of a coroutine must not reach it
                    for task in asyncio.all_tasks(process.loop):
                        task.cancel()
                    with contextlib.suppress(Exception):
                        process.loop.step()
                    process.loop.close()
                self.processes.clear()
                gc.collect()
            for lg, level, propagate in saved:
                lg.removeHandler(self._tap)
                lg.setLevel(level)
                lg.propagate = propagate
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.stats.simulated = self.agenda.now
        return self.stats

    def run_until(self, end: float, exclude: Process | None = None) -> None:
        same_instant = 0
        while True:
            if self.violation is not None:
                if exclude is None:
                    raise Violation(self.report())
                return  # inside a frozen step: the outer loop raises once the step is done
            progressed = True
            while progressed:
                progressed = False
                event = self.agenda.pop_due()
                if event is not None:
                    event.fn()
                    progressed = True
                    continue
                for process in list(self.processes.values()):
                    if process is exclude or not process.runnable():
                        continue
                    due = process.loop.next_due()
                    if due is not None and due <= self.agenda.now:
                        with self.current(process):
                            process.loop.step()
                        self.stats.steps += 1
                        progressed = True
                same_instant += 1
                if same_instant > 200_000:
                    raise SimulationError(f"no progress of time at {self.agenda.now:.3f}")
            # Everything due at this instant has run: the state it ends with is what lasts.
            self.check()
            if self.violation is not None:
                continue
            upcoming = [t for t in [self.agenda.next_time()] if t is not None]
            for process in self.processes.values():
                if process is exclude or not process.runnable():
                    continue
                due = process.loop.next_due()
                if due is not None:
                    upcoming.append(due)
            nxt = min(upcoming) if upcoming else None
            if nxt is None or nxt > end:
                self.agenda.now = max(self.agenda.now, end)
                return
            if nxt > self.agenda.now:
                same_instant = 0
            self.agenda.now = max(self.agenda.now, nxt)

    def _holders(self, address: str) -> list[tuple[str, str]]:
        return [(h.name, i) for h in self.hosts for i in h.kernel.holds(address)]

    def _recheck(self) -> None:
        self._changes += 1  # the verdict depends on the time, not only on the addresses

    def _kernel_changed(self) -> None:
        self._changes += 1
        if self._transient_at is None and any(len(self._holders(spec.address)) > 1
                                              for spec in VIPS):
            self._transient_at = self.agenda.now

    def check(self) -> None:
        """The invariant: at most one (host, interface) holds each VIP address.

        Evaluated whenever simulated time is about to move on, on the state the instant ends
        with (it can change only when a kernel's addresses do). A double hold that begins and
        ends within one instant — a renewal sent after a freeze between its clock check and
        its send, undone by its own re-check in the same step (DESIGN.md: "The clock is
        checked immediately before each renewal is sent and the verdict re-checked after") —
        lasts no simulated time: it is counted as transient (``Stats.transient``), not as a
        breach. After an operator deletes the leader's znode (a fault outside the rule's
        assumption that only the owner or the session's expiry removes it) a double hold is
        tolerated for ``confirm_interval`` + a round trip + ``hold_span`` (``Stats.tolerated``).
        Any other double hold that outlives its instant is a breach.
        """
        if self._checked == self._changes:
            return
        self._checked = self._changes
        # Availability, so that a run in which nobody ever holds a VIP is seen for what it is.
        holding = any(h.kernel.holds(VIPS[0].address) for h in self.hosts)
        if self._holding_since is not None and not holding:
            self.stats.held += self.agenda.now - self._holding_since
            self._holding_since = None
        elif self._holding_since is None and holding:
            self._holding_since = self.agenda.now
        breach = None
        for spec in VIPS:
            holders = self._holders(spec.address)
            if len(holders) > 1:
                breach = (f"t={self.agenda.now:.3f}: VIP {spec.address} held by "
                          + ", ".join(f"{n}/{i}" for n, i in holders))
                break
        if breach is not None and self.agenda.now < self._foreign_delete_until:
            # The rule assumes that only a znode's owner or its session's expiry removes it;
            # after someone else deletes the leader's znode, the old leader learns it from its
            # next confirmation and its last renewals live their hold span (election.py). A
            # double hold is tolerated that long, and a breach if it outlives that.
            if not self._tolerating:
                self._tolerating = True
                self.stats.tolerated += 1
                self.log(f"double hold after an external znode delete, tolerated until "
                         f"t={self._foreign_delete_until:.3f}: {breach}")
        elif breach is not None and self.violation is None:
            # Recorded here, raised by the run loop (this may run inside a frozen step).
            self.violation = breach
        elif breach is None and self._transient_at is not None:
            self.stats.transient += 1
            self.log(f"transient double hold at t={self._transient_at:.3f}, gone within "
                     "the instant")
        self._transient_at = None

    def report(self) -> str:
        lines = [self.violation or "no violation", "schedule:", self.schedule.describe(),
                 "story:", *self.events[-40:], "last log lines:", *self._tap.lines[-80:]]
        return "\n".join(lines)

    # -- directors -------------------------------------------------------------------------

    def node(self, host: Host) -> Node:
        hosts = tuple(f"zk{i + 1}:2181" for i in range(self.schedule.servers))
        return Node(cluster="sim", director=host.name,
                    zookeeper=ZooKeeperSettings(hosts, "/lvsctl", self.schedule.session_timeout,
                                                None),
                    peer_secret_file="(simulated)", api=Api("127.0.0.1", 0, None, False),
                    ipvs="fake", state_dir=host.state_dir, log_format="json",
                    source=f"(simulated {host.name})")

    def config(self, host: Host) -> LeaderConfig:
        other = self.hosts[1 - host.index]
        return LeaderConfig("sim@1", self.vips, 1, 0.0, host.peer_addr, other.peer_addr)

    def start_director(self, host: Host) -> None:
        """Start the director of ``host``: the production keeper, wired as director_main."""
        process = Process(self, host, next(self._pids))
        now = self.agenda
        process.loop = VirtualLoop(lambda: now.now, endpoint=process.endpoint)
        process.loop.set_exception_handler(lambda loop, ctx: self._loop_error(process, ctx))
        node = self.node(host)
        client = SimKazooClient(self.zk, process, timeout=node.zookeeper.session_timeout,
                                retry=RetryPolicy(), logger=client_logger())
        if self.schedule.first_server is not None:
            client._next_host = self.schedule.first_server[host.index]
        process.client = client
        self.processes[host.name] = process
        self.log(f"{host.name} starts (pid {process.pid})")
        with self.current(process):
            client.start_async()
            keeper = build_keeper(self, process, node)
            keeper.on_config(self.config(host))
            process.keeper = keeper
            process.task = process.loop.create_task(self._main(process, keeper))
            process.task.add_done_callback(lambda _t: self.exited(process))

    async def _main(self, process: Process, keeper: Keeper) -> int:
        try:
            return await keeper.run()
        finally:
            process.client.stop()

    def _loop_error(self, process: Process, context: dict[str, Any]) -> None:
        error = context.get("exception")
        self.log(f"{process.name}: loop error: {context.get('message')} {error!r}")

    def exited(self, process: Process) -> None:
        """A process whose main task ended: exit (code or exception), restart after the
        backoff unless the world stopped it for a planned restart."""
        process.alive = False
        task = process.task
        error = None
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
        if error is not None and not isinstance(error, LvsctlError):
            raise SimulationError(f"{process.name} failed: {error!r}") from error
        code = task.result() if task is not None and error is None else None
        self.log(f"{process.name} exited ({error or f'code {code}'})")
        if error is not None or code:
            self.stats.refusals += 1  # a director that would not run (e.g. the session timeout)
        if process.name not in self._stopping:
            self.agenda.after(RESTART_BACKOFF, functools.partial(self.start_director, process.host))

    # -- faults ------------------------------------------------------------------------------

    def active(self) -> Process | None:
        for process in self.processes.values():
            election = process.keeper.election if process.keeper is not None else None
            if process.alive and election is not None and election.state is State.ACTIVE:
                return process
        return None

    def _director(self, target: str) -> Process | None:
        if target == "active":
            return self.active()
        if target == "standby":
            active = self.active()
            others = [p for p in self.processes.values() if p.alive and p is not active]
            return others[0] if active is not None and others else None
        return self.processes.get(target)

    def _server(self, target: str) -> int | None:
        if target == "active-server":
            process = self.active()
            conn = process.client._conn if process is not None else None
            return conn.server.sid if conn is not None and conn.open else None
        index = int(target)
        return index if index < self.schedule.servers else None

    def apply(self, fault: S.Fault) -> None:
        kind = fault.kind
        if kind in (S.FREEZE, S.CRASH, S.RESTART, S.ZK_CUT):
            process = self._director(fault.target)
            if process is None or not process.alive:
                self.log(f"fault skipped (no such director): {fault.describe()}")
                return
            self.log(f"fault {fault.describe()} on {process.name}")
            if kind in (S.FREEZE, S.CRASH) and fault.point:
                process.armed.append((kind, fault.point, fault.duration))
            elif kind == S.FREEZE:
                self.freeze(process, fault.duration)
            elif kind == S.CRASH:
                self.crash(process, fault.duration)
            elif kind == S.RESTART:
                self._stopping.add(process.name)
                if process.keeper is not None:
                    process.run(process.keeper.stop)
                stopping = process
                self.agenda.after(0.0, lambda: self._await_exit(stopping, fault.duration))
            else:
                self._cut(process.name, fault.duration)
            return
        self.log(f"fault {fault.describe()}")
        if kind in (S.ISOLATE, S.SERVER_CRASH, S.LAG):
            index = self._server(fault.target)
            if index is None:
                self.log("fault skipped (no such server)")
                return
            if kind == S.ISOLATE:
                self.zk.isolate(index)
                self.agenda.after(fault.duration, lambda: self.zk.rejoin(index))
            elif kind == S.SERVER_CRASH:
                self.zk.crash(index)
                self.agenda.after(fault.duration, lambda: self.zk.restart(index))
            else:
                old = self.zk.servers[index].lag
                self.zk.set_lag(index, fault.value)
                self.agenda.after(fault.duration, lambda: self.zk.set_lag(index, old))
        elif kind == S.ENSEMBLE_DOWN:
            for i in range(self.schedule.servers):
                self.zk.crash(i)
                self.agenda.after(fault.duration, functools.partial(self.zk.restart, i))
        elif kind == S.PEER_CUT:
            self.network.cut_until = max(self.network.cut_until, self.agenda.now + fault.duration)
        elif kind == S.DELETE_LEADER:
            path = self.zk.delete_head("/lvsctl/sim/election")
            self.log(f"deleted {path}")
            if path is not None:
                timing = Timing(session_timeout=self.schedule.session_timeout)
                window = timing.confirm_interval + ROUND_TRIP + timing.hold_span
                self._foreign_delete_until = self.agenda.now + window
                self._tolerating = False
                self.agenda.at(self._foreign_delete_until, self._recheck)
        elif kind == S.MOVE_VIP:
            first = self.vips[0]
            moved = VipSpec(first.address, "eth1" if first.interface == "eth0" else "eth0")
            self.vips = (moved, *self.vips[1:])
            for process in self.processes.values():
                if process.alive and process.keeper is not None:
                    keeper, config = process.keeper, self.config(process.host)
                    process.run(functools.partial(keeper.on_config, config))

    def crash(self, process: Process, downtime: float) -> None:
        """kill -9: the process stops at once (its sockets close, its session lives on until
        it expires, its kernel's addresses until their lifetimes end); restarted later."""
        self.log(f"{process.name} crashed")
        process.alive = False
        process.client.kill()
        for transport in process.transports:
            transport.close()
        self.agenda.after(downtime, functools.partial(self.start_director, process.host))

    def _cut(self, host: str, seconds: float) -> None:
        for i in range(self.schedule.servers):
            self.zk.block(host, i)
            self.agenda.after(seconds, functools.partial(self.zk.unblock, host, i))

    def _await_exit(self, process: Process, downtime: float) -> None:
        if process.alive:
            self.agenda.after(0.05, lambda: self._await_exit(process, downtime))
            return
        self._stopping.discard(process.name)
        self.agenda.after(downtime, lambda: self.start_director(process.host))

    def freeze(self, process: Process, seconds: float) -> None:
        process.frozen_until = self.agenda.now + seconds
        self.agenda.at(process.frozen_until, lambda: self._resumed(process))

    def freeze_inline(self, process: Process, seconds: float) -> None:
        """Stop ``process`` right here, inside its current step, for ``seconds``."""
        self.log(f"{process.name} frozen inside its step for {seconds:.3f}s")
        process.inline = True
        try:
            self.run_until(self.agenda.now + seconds, exclude=process)
        finally:
            process.inline = False
        self._resumed(process)

    def _resumed(self, process: Process) -> None:
        if process.alive and not process.frozen():
            self.log(f"{process.name} resumed")
            lag = process.world.rng.uniform(0.0, KAZOO_LAG)
            self.agenda.after(lag, process.flush)


def client_logger() -> SessionLog:
    """The logger lvsctl.core.zk.make_client gives a director's client (the store reads the
    negotiated session timeout from what kazoo logs through it)."""
    return SessionLog(logging.getLogger("lvsctl.core.zk.kazoo"))


def build_keeper(world: World, process: Process, node: Node) -> Keeper:
    """The keeper with its election and peer link, as lvsctl/director_main.py wires them,
    on the simulated clock, client, kernel and network."""
    host, client = process.host, process.client
    agenda = world.agenda

    def monotonic() -> float:
        return host.monotonic(agenda.now)

    def wall() -> float:
        return host.wall(agenda.now)

    def wall_ns() -> int:
        return int(host.wall(agenda.now) * 1e9)

    timing = Timing(session_timeout=node.zookeeper.session_timeout)

    def make_peer(config: LeaderConfig) -> PeerLink:
        return PeerLink(node.director, SECRET, config.peer_listen, config.peer_remote,
                        dead_after=timing.peer_dead_after, monotonic=monotonic,
                        wall_ns=wall_ns)

    # The standby's promise survives a restart in the node's state_dir.
    promises = PromiseFile(Path(node.state_dir) / "promise.json")

    def make_election(peer: PeerLink, on_transition: Callable[[Transition], None]) -> Election:
        return Election(client, f"{node.cluster_path}/election", node.director,  # type: ignore[arg-type, unused-ignore]
                        timing, peer=peer, on_transition=on_transition, monotonic=monotonic,
                        wall=wall, promises=promises)

    vips = SimVips(host.kernel, monotonic, process.hook, alive=lambda: process.alive)
    keeper = Keeper(node, vips=vips, announcer=_announce, launcher=NoWorker(),
                    make_peer=make_peer, make_election=make_election,
                    zk_connected=lambda: bool(client.connected),
                    supervision=replace(Supervision(), backoff_min=10.0, backoff_max=10.0),
                    monotonic=monotonic, wall=wall)
    return keeper


def run_schedule(schedule: S.Schedule) -> Stats:
    """Run one schedule; raises Violation with a report when the invariant breaks."""
    world = World(schedule)
    return world.run()
