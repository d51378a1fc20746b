"""The worker: the director process that does everything but hold leadership — the cluster
file (watch, validation, local cache), health checks, IPVS reconcile and the sync daemon's
role, the HTTP API and the ZooKeeper records.

The keeper (director/keeper.py) starts and supervises it and talks to it over the channel
(director/channel.py): it tells the worker where leadership stands (role, epoch, VIPs held,
transitions to record); the worker gives it the validated cluster file's VIP set, stepdown
requests from the API and a heartbeat. The worker exits when the keeper's end of the channel
closes, so it never outlives its keeper. It may fail in any way without harm to the VIP
leases: the keeper restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.recipe.watchers import DataWatch

from lvsctl.core.config import Loaded
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster, Health, HealthKey, ServiceKey
from lvsctl.core.node import Node
from lvsctl.core.records import DirectorRecord, TransitionRecord, clip_reason
from lvsctl.core.zk import ClusterConnection, ClusterStore, ConfigVersion
from lvsctl.director import exporter, failsafe
from lvsctl.director.admit import admit
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
from lvsctl.director.hooks import Event, Hooks, health_event, quorum_events
from lvsctl.director.ipvs import IpvsTable
from lvsctl.director.maintenance import OverrideState, effective, realserver_rows
from lvsctl.director.metrics import MetricsSnapshot, ScrapeCache
from lvsctl.director.reconcile import ObservedTable
from lvsctl.healthcheck.scheduler import HealthChange, Scheduler, plan_targets, target_label

log = logging.getLogger("lvsctl.director")

HEARTBEAT_EVERY = 0.5  # the keeper's heartbeat_timeout is ten of these
RECONCILE_INTERVAL = 2.0  # the kernel's table is observed at least this often
RECORDS_KEPT = 50  # in memory, for /status
TRANSITIONS_KEPT = 200  # in ZooKeeper


class Store(Protocol):
    """What the worker needs of ZooKeeper: the config znode and the records."""

    @property
    def connected(self) -> bool: ...

    async def watch_config(self, on_data: Callable[[bytes | None], None]) -> None:
        """Once connected, refuse an open root, then call ``on_data`` (on this loop) with
        the config znode's data now and on every change. Raises LvsctlError (insecure)."""

    async def watch_overrides(self, on_data: Callable[[bytes | None], None]) -> None:
        """As ``watch_config``, for the maintenance overrides' znode."""

    def persist(self, entry: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Write one record and this director's status (blocking: runs in a thread)."""

    async def close(self) -> None: ...


class Dataplane(Protocol):
    """director/dataplane.py's ``Dataplane``, as the worker uses it."""

    table: IpvsTable
    quorum_held: dict[ServiceKey, bool]

    def reconcile(self, cluster: Cluster, health: Mapping[HealthKey, Health], *,
                  epoch: int, role: str) -> dict[str, Any]: ...

    def sync_role(self, active: bool, interface: str, sync_id: int, *, epoch: int) -> None: ...

    def view(self, *, director: str, role: str, epoch: int, version: str,
             health: Mapping[HealthKey, Health]) -> dict[str, Any]: ...

    def close(self) -> None: ...

    @property
    def observed(self) -> ObservedTable | None:
        """The last pass's observation with the kernel's counters (None: none read yet)."""


class HealthChecks(Protocol):
    """healthcheck.scheduler's ``Scheduler``, as the worker uses it."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def replace(self, cluster: Cluster) -> None: ...

    def snapshot(self) -> Mapping[HealthKey, Any]: ...


def decode_config(data: bytes, where: str) -> Loaded:
    """The cluster file held by a config znode (or its local cache), validated.

    Raises LvsctlError (ZooKeeperError for a foreign znode, ConfigError for an invalid file).
    """
    return ConfigVersion.from_bytes(data, where).load()


def leader_config(cluster: Cluster, me: str, version: str) -> LeaderConfig:
    """What the keeper needs of a validated cluster. Raises KeyError if ``me`` is not in it."""
    mine = cluster.director(me)
    other = next(d for d in cluster.directors if d.name != me)
    return LeaderConfig(
        version=version,
        vips=tuple(VipSpec(v.address, v.interface) for v in cluster.vips),
        announce_count=cluster.announce.count, announce_interval=cluster.announce.interval,
        peer_listen=(mine.peer_address, mine.peer_port),
        peer_remote=(other.peer_address, other.peer_port))


class Worker:
    """Everything but leadership, for one director; see the module docstring."""

    def __init__(
        self,
        node: Node,
        *,
        keeper_pid: int,
        store: Store,
        dataplane: Dataplane,
        make_health: Callable[[Cluster, Callable[[HealthChange], None]], HealthChecks],
        start_api: Callable[[Worker], Awaitable[Any]] | None = None,
        reload_node: Callable[[], Node] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.drill_pid = keeper_pid
        self.store = store
        self.dataplane = dataplane
        self.make_health = make_health
        self.start_api = start_api
        self.reload_node_file = reload_node
        self.monotonic = monotonic
        self.wall = wall
        self.cluster: Cluster | None = None
        self.config_version = ""
        self.config_error = ""
        self.leader = KeeperState("CANDIDATE", 0, 0.0, False, (), False)
        self.health: HealthChecks | None = None
        self.last_reconcile: dict[str, Any] = {}
        self.transitions: list[dict[str, Any]] = []
        self.fatal = ""
        self.stopping = asyncio.Event()
        self._channel: Channel | None = None
        self._sync_active: bool | None = None  # the sync role last set (None = not yet)
        self._handed_over = False
        self._reconcile_at = 0.0
        self._wake = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._records: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._api: Any = None
        self.api_address = ""  # published only once the API listens there
        self.overrides = OverrideState(Path(node.state_dir) / f"{node.cluster}.overrides.json")
        self.hooks = Hooks()
        self.stats = exporter.WorkerStats()
        self._record_services = exporter.RecordServices()
        self.scraper = ScrapeCache(self.metrics_snapshot)

    @property
    def me(self) -> str:
        return self.node.director

    # -- the channel --------------------------------------------------------------------------

    def attach(self, channel: Channel) -> None:
        self._channel = channel

    def send(self, message: Any) -> None:
        if self._channel is not None:
            try:
                self._channel.send(message)
            except ChannelError as exc:
                log.error("message not sent: %s", exc, extra={"event": "channel_error"})

    def on_message(self, message: Any) -> None:
        if isinstance(message, KeeperState):
            self._on_state(message)
        elif isinstance(message, LeaderRecord):
            if message.event == "transition":
                self.stats.transition(message.state, message.reason)
            self.record(message.record())
        elif isinstance(message, Handover):
            self._handed_over = True
            self._sync_role(False, message.epoch)
            self.send(HandedOver(message.epoch))
        elif isinstance(message, ReloadNode):
            self.reload_node()
        else:
            log.warning("unexpected message %s from the keeper", type(message).__name__,
                        extra={"event": "channel_error"})

    def on_invalid(self, exc: ChannelError) -> None:
        log.error("invalid message from the keeper: %s", exc, extra={"event": "channel_error"})

    def on_channel_closed(self, why: str) -> None:
        log.info("keeper gone (%s): stopping", why, extra={"event": "keeper_gone"})
        self.stopping.set()

    def _on_state(self, state: KeeperState) -> None:
        old, self.leader = self.leader, state
        if (old.role, old.epoch) != (state.role, state.epoch):
            self._reconcile_at = 0.0
            self._wake.set()
        if old.role != state.role and state.role in ("ACTIVE", "STANDBY", "FENCED"):
            self.notify(f"director_{state.role.lower()}")
        self._sync_role(state.role == "ACTIVE" and not self._handed_over, state.epoch)
        if not state.have_config and self.cluster is not None:
            self.send(leader_config(self.cluster, self.me, self.config_version))
        self._state_changed.set()

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            seq += 1
            self.send(Heartbeat(seq))
            await asyncio.sleep(HEARTBEAT_EVERY)

    # -- configuration -----------------------------------------------------------------------

    def _config_cache(self) -> Path:
        return Path(self.node.state_dir) / f"{self.node.cluster}.config.json"

    def on_config_data(self, data: bytes | None) -> None:
        where = f"{self.node.cluster_path}/config"
        if data is None:
            self.config_error = f"{where} does not exist: push a config with 'lvsctl config push'"
            log.warning(self.config_error, extra={"event": "config_missing"})
            return
        try:
            loaded = decode_config(data, where)
            admit(loaded, cluster=self.node.cluster, director=self.me,
                  leader_config=leader_config)
        except LvsctlError as exc:
            self._reject("; ".join(exc.lines()))
            return
        except Exception as exc:  # nothing a znode holds may end the worker
            self._reject(f"{where}: cannot read: {type(exc).__name__}: {exc}")
            return
        self.apply_config(loaded, data)

    def _reject(self, why: str) -> None:
        # Never apply what we cannot validate: the running config stays (STYLE.md 2).
        why = clip_reason(why)
        self.config_error = why
        self.stats.config_rejections += 1
        log.error("config rejected, keeping version %s: %s", self.config_version or "none", why,
                  extra={"event": "config_rejected", "reason": why})
        self.record({"event": "config_rejected", "reason": why})
        self.notify("config_rejected", reason=why)

    def apply_config(self, loaded: Loaded, data: bytes | None = None) -> None:
        # Once per version: the cached copy a worker starts from and the same version from
        # ZooKeeper are one acceptance.
        fresh = loaded.source != self.config_version
        self.cluster = loaded.cluster
        self.config_version = loaded.source
        self.config_error = ""
        log.info("config %s applied", loaded.source, extra={"event": "config_applied",
                                                            "version": loaded.source})
        self.send(leader_config(loaded.cluster, self.me, loaded.source))
        if self.health is not None:
            failsafe.call("health checks", self.health.replace, loaded.cluster,
                          version=loaded.source)
        self.hooks.configure(loaded.cluster.notify)
        if fresh:
            self.notify("config_accepted")
        self.stats.keep_targets(target_label(c) for c in plan_targets(loaded.cluster)[0])
        if self._sync_active is None:
            self._sync_role(self.leader.role == "ACTIVE" and not self._handed_over,
                            self.leader.epoch)
        self._reconcile_at = 0.0
        self._wake.set()
        if data is not None:  # cached last: only what was applied in full
            with contextlib.suppress(OSError):
                self._config_cache().parent.mkdir(parents=True, exist_ok=True)
                self._config_cache().write_bytes(data)

    def load_cached_config(self) -> bool:
        """Start from the last config this director applied (ZooKeeper may be unreachable)."""
        path = self._config_cache()
        try:
            data = path.read_bytes()
            loaded = decode_config(data, str(path))
            admit(loaded, cluster=self.node.cluster, director=self.me,
                  leader_config=leader_config)
        except (OSError, LvsctlError):
            return False
        log.info("starting from the cached config %s", path, extra={"event": "config_cached"})
        self.apply_config(loaded)
        return True

    def reload_node(self) -> None:
        if self.reload_node_file is None:
            return
        try:
            node = self.reload_node_file()
        except LvsctlError as exc:
            log.error("node file not reloaded: %s", "; ".join(exc.lines()),
                      extra={"event": "worker_node_rejected"})
            return
        self.node = node
        log.info("node file reloaded (worker)", extra={"event": "worker_node_reloaded"})

    # -- maintenance overrides (director/maintenance.py applies them) ------------------------

    def on_overrides_data(self, data: bytes | None) -> None:
        """The overrides znode's data (None: absent, no overrides)."""
        self._overrides_taken(self.overrides.take(data, f"{self.node.cluster_path}/overrides"))

    def _overrides_taken(self, changed: bool) -> None:
        if self.overrides.error:
            log.error("overrides not applied: %s", self.overrides.error,
                      extra={"event": "overrides_rejected"})
        if changed:
            drained = self.overrides.names()
            log.info("overrides: drained %s", drained, extra={"event": "overrides_applied"})
            # A record also publishes this director's status, which now shows the drains.
            self.record({"event": "overrides_applied", "reason": f"drained: {drained}"})
        self._reconcile_at = 0.0
        self._wake.set()

    def realservers(self) -> dict[str, Any]:
        """Every real server with its override, weights and the kernel's connection counts
        (``GET /realservers``); ``observed`` False when the table could not be read."""
        if self.cluster is None:
            return {"director": self.me, "role": self.leader.role, "realservers": []}
        health = self.health.snapshot() if self.health is not None else {}
        try:
            observed = self.dataplane.table.observe(stats=False)
            error = ""
        except LvsctlError as exc:
            observed, error = None, str(exc)
        return {"director": self.me, "role": self.leader.role, "epoch": self.leader.epoch,
                "error": error,
                "realservers": realserver_rows(self.cluster, health, self.overrides.current,
                                               observed, self.dataplane.quorum_held)}

    # -- notify hooks (director/hooks.py runs them) -----------------------------------------

    def notify(self, event: str, *, service: str = "", realserver: str = "",
               reason: str = "") -> None:
        self.hooks.emit(Event(
            event, self.me, self.node.cluster, self.leader.role, self.leader.epoch,
            self.wall(), self.hooks.next_seq(), service, realserver, reason,
            self.config_version))

    def _notify_quorum(self, before: Mapping[ServiceKey, bool],
                       after: Mapping[ServiceKey, bool]) -> None:
        if self.cluster is not None:
            for event, service in quorum_events(self.cluster.services, before, after):
                self.notify(event, service=service)

    # -- records for status and drills -------------------------------------------------------

    def record(self, entry: Mapping[str, Any]) -> None:
        full = {"director": self.me, "monotonic": round(self.monotonic(), 6),
                "wall": round(self.wall(), 6), **entry}
        self.transitions.append(full)
        del self.transitions[:-RECORDS_KEPT]
        self._records.put_nowait(full)

    async def _write_records(self) -> None:
        """Persist records under transitions/ and our status under directors/<name>."""
        while True:
            entry = await self._records.get()
            while not self.store.connected:
                await asyncio.sleep(0.2)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.store.persist, entry,
                                                         self.status()), 5.0)
            except Exception as exc:
                log.warning("record not written: %s %s", type(exc).__name__, exc,
                            extra={"event": "record_error"})
            finally:
                self._records.task_done()

    def _on_health_change(self, change: HealthChange) -> None:
        service, realserver = change.key
        log.info("%s/%s %s", service, realserver,
                 "healthy" if change.health.healthy else "unhealthy",
                 extra={"event": "health", "service": service, "realserver": realserver,
                        "healthy": change.health.healthy, "reason": change.health.reason})
        self.record({"event": "health", "service": service, "realserver": realserver,
                     "healthy": change.health.healthy, "reason": change.health.reason})
        event = health_event(change.previous, change.health)
        if event is not None:
            self.notify(event, service=service, realserver=realserver,
                        reason=change.health.reason)
        self._reconcile_at = 0.0
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """This director's status, as /status serves it and directors/<name> holds it."""
        cluster = self.cluster
        health = self.health.snapshot() if self.health is not None else {}
        services = []
        if cluster is not None:
            for svc in cluster.services:
                rows = []
                for rs in svc.realservers:
                    h = health.get((svc.name, rs.name))
                    held = self.overrides.current.find(svc.name, rs.name)
                    rows.append({
                        "name": rs.name, "address": str(rs.key), "weight": rs.weight,
                        "health": None if h is None else {
                            "healthy": h.healthy, "weight": h.weight, "reason": h.reason},
                        "override": None if held is None else held.to_json(),
                    })
                services.append({
                    "name": svc.name, "service": str(svc.key), "forwarding": svc.forwarding.label,
                    "realservers": rows,
                })
        leader = self.leader
        return {
            "director": self.me, "cluster": self.node.cluster,
            "role": leader.role, "epoch": leader.epoch,
            "since": leader.since or None,
            "zookeeper": "connected" if leader.zk_connected else "disconnected",
            "vips": list(leader.vips),
            "config": {"version": self.config_version, "error": self.config_error},
            "services": services,
            "last_reconcile": self.last_reconcile,
            "api": self.api_address,
            "transitions": self.transitions[-10:],
            "overrides": {"items": [o.to_json() for o in self.overrides.current.items],
                          "error": self.overrides.error},
            "hooks": self.hooks.counts(),
        }

    def ipvs(self) -> dict[str, Any]:
        """What ``GET /ipvs`` serves: the table as observed now and what the next pass plans
        from (director/plan_view.py). Raises LvsctlError when the table cannot be read."""
        return self.dataplane.view(
            director=self.me, role=self.leader.role, epoch=self.leader.epoch,
            version=self.config_version,
            health=self.health.snapshot() if self.health is not None else {})

    # -- the API's actions ---------------------------------------------------------------------

    async def stepdown(self) -> None:
        """Ask the keeper to step down; wait (a little) until it says it left the lead."""
        self.send(StepdownRequest())
        deadline = self.monotonic() + 3.0
        while self.leader.role == "ACTIVE" and self.monotonic() < deadline:
            self._state_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), 0.2)

    # -- IPVS --------------------------------------------------------------------------------

    def _sync_role(self, active: bool, epoch: int) -> None:
        if self.cluster is None or active == self._sync_active:
            return
        me = self.cluster.director(self.me)
        try:
            self.dataplane.sync_role(active, me.sync_interface, me.sync_id, epoch=epoch)
        except LvsctlError as exc:
            log.error("sync daemon not switched: %s", exc,
                      extra={"event": "sync_daemon_error", "epoch": epoch})
            return
        self._sync_active = active

    def reconcile_if_due(self) -> None:
        if self.cluster is None:
            return
        now = self.monotonic()
        if now < self._reconcile_at:
            return
        self._reconcile_at = now + RECONCILE_INTERVAL
        health = self.health.snapshot() if self.health is not None else {}
        # Drained real servers are held at weight 0 before the planner sees the cluster.
        cluster, health = effective(self.cluster, health, self.overrides.current)
        quorum_before = dict(self.dataplane.quorum_held)
        try:
            self.last_reconcile = self.dataplane.reconcile(
                cluster, health, epoch=self.leader.epoch, role=self.leader.role)
        except LvsctlError as exc:
            self.stats.reconcile_failed()
            log.error("reconcile failed: %s", exc, extra={"event": "ipvs_error",
                                                          "epoch": self.leader.epoch})
        else:
            self.stats.reconciled(self.monotonic() - now, self.last_reconcile,
                                  exporter.kernel_view(self.cluster, self.dataplane.observed))
            if self.last_reconcile.get("applied"):
                # The pass observed the table before its ops: the next one, soon, shows the
                # kernel as they left it (the metrics and the page read that observation).
                self._reconcile_at = now + 0.2
        self._notify_quorum(quorum_before, self.dataplane.quorum_held)

    # -- metrics and the status page --------------------------------------------------------

    def lease_seconds_left(self) -> float | None:
        """Seconds until the held VIPs lapse unless leadership is confirmed again (None: no
        VIP held)."""
        until = self.leader.lease_until
        return None if not self.leader.vips or not until else max(0.0, until - self.monotonic())

    def metrics_snapshot(self) -> MetricsSnapshot:
        """What one /metrics scrape exports, from the worker's live state."""
        leader, cluster = self.leader, self.cluster
        health = self.health.snapshot() if self.health is not None else {}
        record = exporter.light_record(
            director=self.me, cluster_name=self.node.cluster, role=leader.role,
            epoch=leader.epoch, since=leader.since or None,
            zookeeper="connected" if leader.zk_connected else "disconnected", vips=leader.vips,
            config_error=self.config_error,
            services=self._record_services.get(cluster, health))
        watchdog = self.health.watchdog() if isinstance(self.health, Scheduler) else None
        return exporter.snapshot(
            record, self.stats, lease_seconds_left=self.lease_seconds_left(),
            config_source=self.config_version,
            quorum={s.name: s.quorum for s in cluster.services} if cluster else {},
            checker=exporter.checker_stats(watchdog), sync_active=self._sync_active,
            peer=exporter.peer_stats(leader.peer_up, leader.peer_received,
                                     leader.peer_rejected))

    async def scrape_metrics(self) -> tuple[bytes, str]:
        """/metrics: (body, Content-Type). Raises MetricsUnavailable (answer 503)."""
        return await self.scraper.scrape()

    async def status_page(self) -> str:
        """/: the status page, with the peer's view when its API answers."""
        own = DirectorRecord.from_json(self.status(), "this director's status")
        api = self.node.api
        return await exporter.status_page(
            own, exporter.peer_api_url(api.host, api.port, self.cluster, self.me),
            lease_seconds_left=self.lease_seconds_left(), kernel=self.stats.kernel,
            wall=self.wall)

    # -- the loop ----------------------------------------------------------------------------

    def refuse_to_run(self, why: str, event: str) -> None:
        """Stop with EXIT_FATAL (the keeper does not restart us), telling it why."""
        log.error("%s", why, extra={"event": event})
        self.fatal = why
        self.send(WorkerFatal(why))
        self.stopping.set()

    async def _watch(self) -> None:
        try:
            await self.store.watch_config(failsafe.callback("config watch",
                                                            self.on_config_data))
            await self.store.watch_overrides(failsafe.callback("overrides watch",
                                                               self.on_overrides_data))
        except LvsctlError as exc:
            self.refuse_to_run(str(exc), "zookeeper_insecure")

    async def run(self) -> int:
        """Until the keeper goes: returns the exit code (EXIT_FATAL = do not restart)."""
        loop = asyncio.get_running_loop()
        # The keeper decides when we stop (by closing the channel); signals meant for the
        # director reach the keeper, which passes SIGHUP on as ReloadNode.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        tasks = [asyncio.create_task(failsafe.supervised(name, part), name=name)
                 for name, part in (("heartbeats", self._heartbeats),
                                    ("records writer", self._write_records))]
        failsafe.call("cached overrides", lambda: self._overrides_taken(self.overrides.load()))
        failsafe.call("cached config", self.load_cached_config)
        tasks.append(asyncio.create_task(failsafe.supervised("config watch", self._watch),
                                         name="config-watch"))
        stopper = asyncio.create_task(self.stopping.wait())
        while not self.stopping.is_set() and self.cluster is None:
            await asyncio.wait({stopper}, timeout=0.1)
        if not self.stopping.is_set():
            assert self.cluster is not None
            self.health = self.make_health(
                self.cluster, failsafe.callback("health change", self._on_health_change))
            if isinstance(self.health, Scheduler):
                self.health.on_result = self.stats.probe
            await self.health.start()
            if self.start_api is not None:
                try:
                    self._api = await self.start_api(self)
                except LvsctlError as exc:
                    # Fatal: a director without the API its node file promises would run
                    # unseen by the drills and probes that rely on it.
                    self.refuse_to_run(str(exc), "api_error")
                else:
                    self.api_address = f"{self.node.api.host}:{self.node.api.port}"
        while not self.stopping.is_set():
            failsafe.call("reconcile pass", self.reconcile_if_due)
            self._wake.clear()
            waker = asyncio.create_task(self._wake.wait())
            await asyncio.wait({stopper, waker}, timeout=0.5,
                               return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
        stopper.cancel()
        await self._close(tasks)
        return EXIT_FATAL if self.fatal else 0

    async def _close(self, tasks: list[asyncio.Task[None]]) -> None:
        # The last records (released, stepped down) are worth a moment.
        if self.store.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._records.join(), 2.0)
        for task in tasks:
            task.cancel()
        if self.health is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.health.stop(), 2.0)
        if self._api is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._api.cleanup(), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.hooks.close(), 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.scraper.close(), 6.0)
        self.dataplane.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.close(), 3.0)
        if self._channel is not None:
            self._channel.close()
        log.info("worker stopped", extra={"event": "worker_stopped"})


class ZkStore:
    """The worker's ZooKeeper side, on its own session, through the cluster's store
    (lvsctl.core.zk.ClusterStore owns the znodes): the config watch, the transition records
    (the newest TRANSITIONS_KEPT kept) and this director's record (ephemeral: it leaves with
    this worker's session)."""

    def __init__(self, client: KazooClient, conn: ClusterConnection) -> None:
        self.client = client
        self.conn = conn
        self.store = ClusterStore(conn)

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    async def watch_config(self, on_data: Callable[[bytes | None], None]) -> None:
        loop = asyncio.get_running_loop()
        while not self.client.connected:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.conn.check_acl, self.store.paths.root)
        await asyncio.to_thread(self.conn.check_acl, self.store.paths.base)

        def changed(data: bytes | None, _stat: Any, *_: Any) -> None:
            loop.call_soon_threadsafe(on_data, data)  # kazoo's thread: hand over

        # The raw bytes: the worker decodes and validates them on its own loop and caches
        # exactly what it applied.
        await asyncio.to_thread(DataWatch, self.client, self.store.paths.config, changed)

    async def watch_overrides(self, on_data: Callable[[bytes | None], None]) -> None:
        loop = asyncio.get_running_loop()

        def changed(data: bytes | None, _stat: Any, *_: Any) -> None:
            loop.call_soon_threadsafe(on_data, data)

        await asyncio.to_thread(DataWatch, self.client, self.store.paths.overrides, changed)

    def persist(self, entry: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        self.store.append_transition(TransitionRecord.from_json(dict(entry)),
                                     keep=TRANSITIONS_KEPT)
        self.store.publish_director(DirectorRecord.from_json(dict(status)))

    async def close(self) -> None:
        client = self.client
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(client.stop), 2.0)
        with contextlib.suppress(Exception):
            client.close()
