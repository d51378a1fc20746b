"""The keeper: the director process that holds leadership and renews the VIP leases, and
supervises the worker that does everything else.

``lvsctl director run`` starts it (lvsctl/director_main.py wires the real parts). Its loop does
only this: ask the election for its verdict and renew, add or drop the VIPs accordingly
(``hold_once``, every VIP action logged with the epoch), run the peer link, tell the worker
where leadership stands (director/channel.py) and keep the worker alive. Health checks, the
cluster file, IPVS, the HTTP API and the ZooKeeper records live in the worker
(director/worker.py): whatever happens there, nothing on this loop waits for it.

Supervision: a worker that exits, closes the channel or sends nothing for
``heartbeat_timeout`` (``startup_timeout`` before its first message) is killed by process group
and started again after a backoff (``backoff_min`` doubling to ``backoff_max``; back to the
minimum once a worker lived ``stable_after``). Meanwhile the VIPs are kept or dropped by the
same rules, with the last VIP set the worker gave: a keeper that was never given one holds
nothing. A worker that exits with ``EXIT_FATAL`` (it would fail the same way again: an
insecure ZooKeeper root, a node file, credentials or IPVS it cannot use) stops the keeper.

Signals: SIGTERM/SIGINT = graceful stepdown (VIPs released, sync daemon handed over through the
worker, election znode deleted), then the worker is stopped; SIGHUP = re-read the node file
(the peer secret here; the worker is told to re-read it too).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Announce, Vip
from lvsctl.core.node import Node
from lvsctl.director.channel import (
    EXIT_FATAL,
    Channel,
    ChannelError,
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
from lvsctl.director.election import Election, State, Transition
from lvsctl.director.peer import Beat, PeerLink
from lvsctl.director.vip import Lease, StaleLease, VipTable

log = logging.getLogger("lvsctl.director")

RENEW_INTERVAL = 0.1  # how often the VIP lease is checked and renewed
STATE_EVERY = 1.0  # a state snapshot goes to the worker at least this often
RECORDS_PENDING = 100  # records kept while no worker runs, sent to the next one


class WorkerProcess(Protocol):
    """A started worker, as the keeper supervises it."""

    pid: int

    def poll(self) -> int | None:
        """Its exit code once it exited (reaped), else None; never blocks."""

    def kill(self) -> None:
        """SIGKILL its whole process group (its own checks' children too); idempotent."""


class WorkerLauncher(Protocol):
    def start(self) -> tuple[WorkerProcess, socket.socket]:
        """Start a worker; returns it and the keeper's end of its channel. Raises OSError."""


class Announcer(Protocol):
    def __call__(self, vip: Vip, burst: Announce, still_held: Callable[[], bool]
                 ) -> Awaitable[int]:
        """Send the GARP/NA burst for a VIP just acquired; returns how many frames went out."""


@dataclass(frozen=True)
class Supervision:
    """How the keeper watches its worker; seconds."""

    # Generous: a worker validating a large pushed file on a loaded host (or in an emulated
    # VM, 20-30 times slower) must not be killed for it: it would validate it again after
    # the restart. The VIPs never wait on the worker anyway.
    heartbeat_timeout: float = 30.0
    # Its imports alone take 1.5 s on a loaded host, over 30 s in the emulated kernel VM.
    startup_timeout: float = 120.0
    backoff_min: float = 0.5
    backoff_max: float = 10.0
    stable_after: float = 30.0
    stop_timeout: float = 5.0  # a stopping worker's last records, then SIGKILL
    handover_timeout: float = 1.0  # the wait for the sync daemon's handover at a stop
    exit_grace: float = 2.0  # from a closed channel to the worker's exit, then SIGKILL


class Keeper:
    """Holds leadership for one director; see the module docstring.

    ``make_peer`` builds the peer link once the worker has said where both directors listen;
    ``make_election`` builds the election on it, calling back ``on_transition``.
    """

    def __init__(
        self,
        node: Node,
        *,
        vips: VipTable,
        announcer: Announcer,
        launcher: WorkerLauncher,
        make_peer: Callable[[LeaderConfig], PeerLink],
        make_election: Callable[[PeerLink, Callable[[Transition], None]], Election],
        zk_connected: Callable[[], bool],
        reload_node: Callable[[], Node] | None = None,
        read_secret: Callable[[str], bytes] | None = None,
        notify: Callable[[str], None] = lambda message: None,
        supervision: Supervision = Supervision(),
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.vips = vips
        self.announcer = announcer
        self.launcher = launcher
        self.make_peer = make_peer
        self.make_election = make_election
        self.zk_connected = zk_connected
        self.reload_node_file = reload_node
        self.read_secret = read_secret
        self.notify = notify
        self.supervision = supervision
        self.monotonic = monotonic
        self.wall = wall
        self.config: LeaderConfig | None = None
        self.election: Election | None = None
        self.peer: PeerLink | None = None
        self.held: set[VipSpec] = set()
        self.stopping = False
        self.fatal = ""
        self._worker_fatal = ""  # the reason its worker gave (WorkerFatal) before exiting
        self.worker: WorkerProcess | None = None
        self.worker_starts = 0
        self._channel: Channel | None = None
        self._worker_started_at = 0.0
        self._heard_at = 0.0
        self._heard_any = False
        self._restart_at = 0.0
        self._backoff = supervision.backoff_min
        self._reaping: list[WorkerProcess] = []
        self._join_deadline: float | None = None
        self._closed_at: float | None = None
        self._sent_state: KeeperState | None = None
        self._lease_until = 0.0  # monotonic: the held VIPs lapse then unless confirmed again
        self._sent_at = -1e18
        self._handed_over = asyncio.Event()
        self._wake = asyncio.Event()
        self._announcing: set[asyncio.Task[int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: collections.deque[LeaderRecord] = collections.deque(
            maxlen=RECORDS_PENDING)

    # -- the VIPs ------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.election.epoch if self.election is not None else 0

    def _record(self, event: str, **fields: Any) -> None:
        self._send_record(LeaderRecord(event, fields.pop("epoch", self.epoch), self.monotonic(),
                                       self.wall(), **fields))

    def _send_record(self, record: LeaderRecord) -> None:
        # While no worker runs (it crashed, it is starting), the newest records wait for it.
        if self._channel is None or self._channel.closed:
            self._pending.append(record)
        else:
            self._send(record)

    def _release(self, spec: VipSpec, why: str) -> None:
        try:
            self.vips.release(Vip(spec.address, spec.interface))
        except LvsctlError as exc:
            log.error("cannot release VIP %s: %s", spec.address, exc,
                      extra={"event": "vip_error", "vip": spec.address, "epoch": self.epoch})
        self.held.discard(spec)
        log.info("VIP %s released (%s)", spec.address, why, extra={
            "event": "vip_released", "vip": spec.address, "interface": spec.interface,
            "epoch": self.epoch})
        self._record("vip_released", vip=spec.address, reason=why)

    def release_all(self, why: str) -> None:
        for spec in sorted(self.held, key=lambda s: (s.address, s.interface)):
            self._release(spec, why)
        if self.election is not None:
            self.election.advertise_holding(False)

    def hold_once(self) -> None:
        """Renew, add or drop the VIPs according to the election's verdict right now."""
        election, config = self.election, self.config
        if election is None or config is None:
            return
        if election.fatal and not self.fatal:
            # The rule cannot be kept with this ZooKeeper (e.g. its maxSessionTimeout): stop.
            self.fatal = election.fatal
            self.stopping = True
        verdict = election.permission()
        if verdict not in ("zk", "peer"):
            if self.held:
                why = "lease lapsed" if election.state is State.ACTIVE else "not the leader"
                self.release_all(f"{why} ({election.state.value}, {verdict or 'no verdict'})")
            return
        lease = Lease(election.timing.lifetime)
        for spec in config.vips:
            vip = Vip(spec.address, spec.interface)
            try:
                self.vips.renew(vip, lease, not_after=election.hold_deadline())
            except StaleLease:
                break  # the verdict ran out under us: the next pass decides afresh
            except LvsctlError as exc:
                log.error("cannot hold VIP %s: %s", vip.address, exc,
                          extra={"event": "vip_error", "vip": vip.address, "epoch": election.epoch})
                continue
            # The renewal took effect at some instant before now. If the verdict still holds
            # now, the address cannot outlive our leadership; if not (we were stopped or
            # starved between the verdict and the kernel call), undo it at once.
            if election.permission() not in ("zk", "peer"):
                self.held.add(spec)  # so that release_all removes this one too
                self.release_all("verdict changed while renewing")
                return
            # Without a new confirmation, renewals stop at the hold deadline and the kernel
            # drops the address a lifetime later: what the metrics call the lease left.
            self._lease_until = election.hold_deadline() + lease.lifetime
            if spec not in self.held:
                self.held.add(spec)
                log.info("VIP %s acquired", vip.address, extra={
                    "event": "vip_acquired", "vip": vip.address, "interface": vip.interface,
                    "epoch": election.epoch, "basis": verdict})
                self._record("vip_acquired", vip=vip.address, basis=verdict)
                self._announce(vip, Announce(config.announce_count, config.announce_interval),
                               election.epoch)
        election.advertise_holding(bool(self.held))

    def _announce(self, vip: Vip, burst: Announce, epoch: int) -> None:
        spec = VipSpec(vip.address, vip.interface)

        async def run() -> int:
            try:
                sent = await self.announcer(vip, burst, lambda: spec in self.held)
            except LvsctlError as exc:
                log.error("cannot announce VIP %s: %s", vip.address, exc,
                          extra={"event": "vip_error", "vip": vip.address, "epoch": epoch})
                return 0
            log.info("announced VIP %s (%d frames)", vip.address, sent, extra={
                "event": "garp_sent", "vip": vip.address, "epoch": epoch, "count": sent})
            self._record("garp_sent", vip=vip.address, epoch=epoch, count=sent)
            return sent

        task = asyncio.create_task(run())
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    def adopt_existing(self) -> None:
        """At start: VIPs we find configured are a lapsing lease of an earlier run; no flush
        of anything else, and no renewal on a stale belief: released until the election says
        otherwise."""
        if self.config is None:
            return
        found = self.vips.held(tuple(Vip(s.address, s.interface) for s in self.config.vips))
        for spec in self.config.vips:
            if spec.address in found:
                self.held.add(spec)
        if self.held:
            self.release_all("left over from an earlier run")

    def on_transition(self, t: Transition) -> None:
        # Runs synchronously inside the election's transition: leaving ACTIVE releases the
        # VIPs before anything else happens (before the znode is deleted on a stepdown).
        if t.state is not State.ACTIVE:
            self.release_all(f"leadership {t.state.value}: {t.reason}")
        self._send_record(LeaderRecord("transition", t.epoch, t.monotonic, t.wall,
                                       state=t.state.value, reason=t.reason))
        if t.state is not State.ACTIVE:
            self.publish(force=True)  # the worker moves the sync daemon with the role
        # Won: the VIPs first. The state (and with it the sync daemon's move to master) goes
        # to the worker from the pass that adds them, right after.

    def on_config(self, config: LeaderConfig) -> None:
        """A validated VIP set from the worker: VIPs that left it (or moved to another
        interface) are released now, before the next pass adds their new copies."""
        old, self.config = self.config, config
        kept = set(config.vips)
        for spec in sorted(self.held - kept, key=lambda s: (s.address, s.interface)):
            self._release(spec, "removed from the config")
        if old is None:
            log.info("VIP set %s received", config.version, extra={
                "event": "leader_config", "version": config.version, "vips": len(config.vips)})
        elif (old.peer_listen, old.peer_remote) != (config.peer_listen, config.peer_remote):
            log.warning("the peer link's addresses changed: restart the director to use them",
                        extra={"event": "peer_link_unchanged"})
        self.poke()

    # -- the worker ----------------------------------------------------------------------------

    def _send(self, message: Any) -> None:
        if self._channel is not None:
            try:
                self._channel.send(message)
            except ChannelError as exc:
                log.error("message not sent: %s", exc, extra={"event": "channel_error"})

    def state(self) -> KeeperState:
        election, peer = self.election, self.peer
        role = election.state.value if election is not None else State.CANDIDATE.value
        return KeeperState(
            role=role, epoch=self.epoch, since=election.since if election is not None else 0.0,
            zk_connected=bool(election.zk_connected) if election is not None else False,
            vips=tuple(sorted({s.address for s in self.held})),
            have_config=self.config is not None,
            lease_until=self._lease_until if self.held else 0.0,
            peer_up=peer is not None and peer.latest() is not None,
            peer_received=peer.received if peer is not None else 0,
            peer_rejected=tuple(sorted(peer.rejected.items()))[:16] if peer is not None else ())

    def publish(self, force: bool = False) -> None:
        """Send the state if it changed (or ``force``), and at least every STATE_EVERY."""
        state = self.state()
        now = self.monotonic()
        if force or state != self._sent_state or now - self._sent_at >= STATE_EVERY:
            self._sent_state, self._sent_at = state, now
            self._send(state)

    def _on_message(self, message: Any) -> None:
        self._heard_at = self.monotonic()
        self._heard_any = True
        if isinstance(message, Heartbeat):
            return
        if isinstance(message, LeaderConfig):
            self.on_config(message)
        elif isinstance(message, StepdownRequest):
            self._spawn(self.stepdown())
        elif isinstance(message, HandedOver):
            self._handed_over.set()
        elif isinstance(message, WorkerFatal):
            self._worker_fatal = message.reason
        else:
            log.warning("unexpected message %s from the worker", type(message).__name__,
                        extra={"event": "channel_error"})

    def _on_invalid(self, exc: ChannelError) -> None:
        log.error("invalid message from the worker: %s", exc, extra={"event": "channel_error"})

    def _on_channel_closed(self, why: str) -> None:
        log.info("worker channel closed: %s", why, extra={"event": "worker_channel_closed"})
        self.poke()

    def start_worker(self) -> None:
        try:
            worker, sock = self.launcher.start()
        except OSError as exc:
            log.error("cannot start the worker: %s", exc, extra={"event": "worker_error"})
            self._schedule_restart()
            return
        self.worker = worker
        self._closed_at = None
        self.worker_starts += 1
        self._worker_started_at = self._heard_at = self.monotonic()
        self._heard_any = False
        self._channel = Channel(sock, on_message=self._on_message,
                                on_close=self._on_channel_closed, on_invalid=self._on_invalid)
        log.info("worker started (pid %d)", worker.pid,
                 extra={"event": "worker_started", "pid": worker.pid})
        self.publish(force=True)
        while self._pending:
            self._send(self._pending.popleft())

    def _schedule_restart(self) -> None:
        now = self.monotonic()
        if self._worker_started_at and now - self._worker_started_at >= \
                self.supervision.stable_after:
            self._backoff = self.supervision.backoff_min
        self._restart_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.supervision.backoff_max)

    def _drop_worker(self, why: str) -> None:
        worker = self.worker
        if worker is None:
            return
        code = worker.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                worker.kill()
            self._reaping.append(worker)
        log.warning("worker (pid %d) %s", worker.pid, why,
                    extra={"event": "worker_lost", "pid": worker.pid, "reason": why})
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self.worker = None
        if code == EXIT_FATAL:
            self.fatal = f"the worker refused to run: {self._worker_fatal or 'see its log'}"
            log.error("%s", self.fatal, extra={"event": "fatal", "reason": self.fatal})
            self.stopping = True
            return
        self._schedule_restart()

    def supervise(self) -> None:
        """Reap, judge and restart the worker; never blocks."""
        self._reaping = [w for w in self._reaping if w.poll() is None]
        if self.stopping:
            return
        if self.worker is None:
            if self.monotonic() >= self._restart_at:
                self.start_worker()
            return
        if self._channel is not None:
            self._channel.drain()  # what arrived counts, before silence is judged
        code = self.worker.poll()
        if code is not None:
            self._drop_worker(f"exited with code {code}")
            return
        if self._channel is None or self._channel.closed:
            # A worker that is exiting closes its channel first: its exit code (fatal or not)
            # is worth a moment's wait before it is killed.
            if self._closed_at is None:
                self._closed_at = self.monotonic()
            if self.monotonic() - self._closed_at >= self.supervision.exit_grace:
                self._drop_worker("closed its channel")
            return
        silent = self.monotonic() - self._heard_at
        limit = (self.supervision.heartbeat_timeout if self._heard_any
                 else self.supervision.startup_timeout)
        if silent > limit:
            self._drop_worker(f"sent nothing for {silent:.1f} s: killed")

    # -- lifecycle ----------------------------------------------------------------------------

    def poke(self) -> None:
        """Wake the loop now."""
        self._wake.set()
        if self.election is not None:
            self.election.wake()

    def stop(self) -> None:
        self.stopping = True
        self.poke()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _join(self) -> None:
        """Join the election once a VIP set is known and ZooKeeper is connected (or has had
        a session timeout's chance): our beats must not say "I cannot reach ZooKeeper" merely
        because we have not connected yet, or the other director would lean on our word."""
        assert self.config is not None
        if self._join_deadline is None:
            self._join_deadline = self.monotonic() + self.node.zookeeper.session_timeout
        if not self.zk_connected() and self.monotonic() < self._join_deadline:
            return
        peer = self.make_peer(self.config)
        peer.local = Beat(self.node.director, zk_connected=self.zk_connected())
        election = self.make_election(peer, self.on_transition)
        peer.on_beat = election.on_peer_beat
        peer.on_send = election.on_beat_sent
        self.peer, self.election = peer, election
        self.adopt_existing()
        await peer.start()
        await election.start()
        self.notify("READY=1")
        log.info("running", extra={"event": "ready"})

    async def _wait(self, timeout: float) -> None:
        if self.election is not None:
            await self.election.changed(timeout)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def run(self) -> int:
        """Until stopped: returns the exit code (0, or 2 after a fatal worker refusal)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_node)
        loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
        log.info("waiting for a valid config from the worker", extra={"event": "starting"})
        self.start_worker()
        while not self.stopping:
            if self.election is None and self.config is not None:
                await self._join()
            self.hold_once()
            if self._announcing:
                await asyncio.sleep(0)  # a takeover's first announcement before anything else
            self.supervise()
            self.publish()
            await self._wait(RENEW_INTERVAL)
        await self.shutdown()
        return 2 if self.fatal else 0

    async def stepdown(self) -> None:
        if self.election is not None:
            await self.election.stepdown(release=lambda: self.release_all("stepdown"))

    def _ask_handover(self) -> bool:
        """Ask the worker to put the sync daemon in backup; False when there is no worker."""
        if self._channel is None or self._channel.closed:
            return False
        self._handed_over.clear()
        self._send(Handover(self.epoch))
        return True

    async def shutdown(self) -> None:
        """Graceful stop: release, ask for the handover, delete the znode, wait a moment for
        the handover's answer, then stop the worker."""
        self.notify("STOPPING=1")
        log.info("stopping: stepping down", extra={"event": "stopping"})
        self.release_all("stopping")
        # The znode goes without waiting for the worker's answer: the other director's
        # takeover, and so the clients' outage, must not include that round trip. The worker
        # has the request first, and the other director's worker can start its master only
        # after it has won, confirmed and been told, so the daemon still changes hands in order.
        asked = self._ask_handover()
        if self.election is not None:
            # Bounded by itself: releasing is local, deleting the znode waits at most 2 s.
            await self.election.stop(release=lambda: self.release_all("stopping"))
        if asked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handed_over.wait(),
                                       self.supervision.handover_timeout)
        if self.peer is not None:
            await self.peer.stop()
        self.publish(force=True)
        await self.stop_worker()
        log.info("stopped", extra={"event": "stopped", "epoch": self.epoch})

    async def stop_worker(self) -> None:
        """Close the channel (the worker writes its last records and exits), wait a bounded
        time, then kill whatever is left of its process group."""
        worker, channel = self.worker, self._channel
        self.worker, self._channel = None, None
        if channel is not None:
            await channel.flush(1.0)
            channel.close()
        if worker is not None:
            deadline = self.monotonic() + self.supervision.stop_timeout
            while worker.poll() is None and self.monotonic() < deadline:
                await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                worker.kill()  # its group: a check's child left behind goes too
            self._reaping.append(worker)
        for _ in range(20):
            self._reaping = [w for w in self._reaping if w.poll() is None]
            if not self._reaping:
                break
            await asyncio.sleep(0.05)

    def reload_node(self) -> None:
        """SIGHUP: re-read the node file; a new peer secret applies at once. A rejected file
        changes nothing (and the worker is not told)."""
        if self.reload_node_file is None:
            return
        try:
            node = self.reload_node_file()
            if (node.cluster, node.director) != (self.node.cluster, self.node.director):
                raise ValueError("cluster and director cannot change at run time")
            secret = (self.read_secret(node.peer_secret_file)
                      if self.read_secret is not None and self.peer is not None else None)
        except (LvsctlError, ValueError) as exc:
            why = "; ".join(exc.lines()) if isinstance(exc, LvsctlError) else str(exc)
            log.error("node file not reloaded: %s", why,
                      extra={"event": "node_rejected", "reason": why})
            return
        self.node = node
        if secret is not None and self.peer is not None:
            self.peer.secret = secret
        log.info("node file reloaded", extra={"event": "node_reloaded"})
        self._send(ReloadNode())


def dump_tasks() -> None:
    """SIGUSR2: where each asyncio task waits, on stderr."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
