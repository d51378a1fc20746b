"""The director daemon: one asyncio loop wiring election, config watch, peer link, VIPs and IPVS.

``lvsctl director run --node NODE.yaml`` runs it. The loop's heartbeat is ``_hold_once``: it
asks the election whether leadership is confirmed (election.py) and renews, adds or removes
the VIPs accordingly — every VIP action logged with the epoch. Kazoo's threads only hand
events over with ``call_soon_threadsafe``.

Signals: SIGTERM/SIGINT = graceful stepdown (VIPs released first, then the election znode
deleted) and exit; SIGHUP = re-read the node file. With ``NOTIFY_SOCKET`` set, READY=1 and
STOPPING=1 go to systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import uvloop
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError
from kazoo.recipe.watchers import DataWatch
from kazoo.security import OPEN_ACL_UNSAFE

from lvsctl.core.config import Loaded
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster, Vip
from lvsctl.core.node import Node, load_node
from lvsctl.core.zk import ClusterConnection, ConfigVersion, Credentials, Target
from lvsctl.director.dataplane import Dataplane, open_table
from lvsctl.director.election import Election, State, Timing, Transition
from lvsctl.director.peer import Beat, PeerLink, read_secret
from lvsctl.director.vip import KernelVips, Lease, StaleLease, VipTable, announce
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.healthcheck.scheduler import HealthChange, Scheduler

log = logging.getLogger("lvsctl.director")

RENEW_INTERVAL = 0.1  # how often the VIP lease is checked and renewed
RECONCILE_INTERVAL = 2.0  # the kernel's table is observed at least this often
TRANSITIONS_KEPT = 200


# ---------------------------------------------------------------------------------------------
# Logging: one JSON object per line on stderr (journald keeps each as one entry)
# ---------------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, director: str) -> None:
        super().__init__()
        self.director = director

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 6), "level": record.levelname.lower(),
            "director": self.director, "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(node: Node) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if node.log_format == "json":
        handler.setFormatter(JsonFormatter(node.director))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node.director} %(levelname)s "
                                               "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("kazoo").setLevel(logging.WARNING)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about READY=1 / STOPPING=1; nothing without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


# ---------------------------------------------------------------------------------------------
# ZooKeeper access
# ---------------------------------------------------------------------------------------------


def make_daemon_client(target: Target, credentials: Credentials | None) -> KazooClient:
    """A kazoo client with the cluster's digest ACL on every znode it creates.

    Unlike a command's client it reconnects within half a second: after a whole-ensemble
    outage the active must be back before its (restored) session can expire.
    """
    return KazooClient(
        hosts=target.hosts,
        timeout=target.settings.session_timeout,
        auth_data=credentials.auth_data() if credentials else None,
        default_acl=[credentials.acl()] if credentials else OPEN_ACL_UNSAFE,
        connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 1.5, "max_delay": 0.5},
    )


def decode_config(data: bytes, where: str) -> Loaded:
    """The cluster file held by a config znode (or its local cache), validated.

    Raises LvsctlError (ZooKeeperError for a foreign znode, ConfigError for an invalid file).
    """
    return ConfigVersion.from_bytes(data, where).load()


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------


@dataclass
class Daemon:
    node: Node
    node_path: str
    insecure: bool = False
    vips: VipTable = field(default_factory=KernelVips)
    monotonic: Callable[[], float] = time.monotonic
    client: KazooClient | None = None
    cluster: Cluster | None = None
    config_version: str = ""
    config_error: str = ""
    election: Election | None = None
    peer: PeerLink | None = None
    held: set[str] = field(default_factory=set)
    last_reconcile: dict[str, Any] = field(default_factory=dict)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _config_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _announcing: set[asyncio.Task[int]] = field(default_factory=set)
    _records: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _api: Any = None
    fatal: str = ""
    health: Scheduler | None = None
    _checkers: Checkers | None = None
    dataplane: Dataplane | None = None
    _reconcile_at: float = 0.0  # monotonic time of the next reconcile pass (0 = now)

    # -- paths -------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return self.node.cluster_path

    @property
    def me(self) -> str:
        return self.node.director

    # -- configuration -----------------------------------------------------------------------

    def _config_cache(self) -> Path:
        return Path(self.node.state_dir) / f"{self.node.cluster}.config.json"

    def _on_config_data(self, data: bytes | None) -> None:
        where = f"{self.base}/config"
        if data is None:
            self.config_error = f"{where} does not exist: push a config with 'lvsctl config push'"
            log.warning(self.config_error, extra={"event": "config_missing"})
            return
        try:
            loaded = decode_config(data, where)
            loaded.cluster.director(self.me)
        except KeyError:
            self._reject(f"director {self.me} is not one of the cluster's directors")
            return
        except LvsctlError as exc:
            self._reject("; ".join(exc.lines()))
            return
        self.apply_config(loaded, data)

    def _reject(self, why: str) -> None:
        # Never apply what we cannot validate: the running config stays (STYLE.md 2).
        self.config_error = why
        log.error("config rejected, keeping version %s: %s", self.config_version or "none", why,
                  extra={"event": "config_rejected", "reason": why})
        self.record({"event": "config_rejected", "reason": why})

    def apply_config(self, loaded: Loaded, data: bytes | None = None) -> None:
        old = self.cluster
        self.cluster = loaded.cluster
        self.config_version = loaded.source
        self.config_error = ""
        log.info("config %s applied", loaded.source, extra={"event": "config_applied",
                                                            "version": loaded.source})
        if data is not None:
            with contextlib.suppress(OSError):
                self._config_cache().parent.mkdir(parents=True, exist_ok=True)
                self._config_cache().write_bytes(data)
        if old is not None:
            # VIPs that left the config are no longer ours to hold.
            kept = {vip.address for vip in loaded.cluster.vips}
            for vip in old.vips:
                if vip.address not in kept and vip.address in self.held:
                    self._release(vip, "removed from the config")
        if self.health is not None:
            self.health.replace(loaded.cluster)
        self._reconcile_at = 0.0
        self._config_ready.set()

    async def _watch_config(self, conn: ClusterConnection) -> None:
        """Once connected: refuse an open root (unless --insecure), then watch the config."""
        assert self.client is not None and self._loop is not None
        loop = self._loop
        while not self.client.connected:
            await asyncio.sleep(0.05)
        try:
            await asyncio.to_thread(conn.check_acl, self.node.zookeeper.root)
            await asyncio.to_thread(conn.check_acl, self.base)
        except LvsctlError as exc:
            log.error("%s", exc, extra={"event": "zookeeper_insecure"})
            self.fatal = str(exc)
            self.stopping.set()
            return

        def changed(data: bytes | None, _stat: Any, *_: Any) -> None:
            loop.call_soon_threadsafe(self._on_config_data, data)  # kazoo's thread: hand over

        await asyncio.to_thread(DataWatch, self.client, f"{self.base}/config", changed)

    def _load_cached_config(self) -> None:
        path = self._config_cache()
        with contextlib.suppress(OSError, LvsctlError):
            data = path.read_bytes()
            loaded = decode_config(data, str(path))
            loaded.cluster.director(self.me)
            log.info("starting from the cached config %s", path, extra={"event": "config_cached"})
            self.apply_config(loaded)

    # -- records for status and drills -------------------------------------------------------

    def record(self, entry: dict[str, Any]) -> None:
        full = {"director": self.me, "monotonic": round(self.monotonic(), 6),
                "wall": round(time.time(), 6), **entry}
        self.transitions.append(full)
        del self.transitions[:-50]
        self._records.put_nowait(full)

    async def _write_records(self) -> None:
        """Persist records under transitions/ and our status under directors/<name>."""
        assert self.client is not None
        while True:
            entry = await self._records.get()
            while not self.client.connected:
                await asyncio.sleep(0.2)
            try:
                with contextlib.suppress(KazooException, TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(self._persist, entry), 5.0)
            finally:
                self._records.task_done()

    def _persist(self, entry: dict[str, Any]) -> None:
        assert self.client is not None
        path = f"{self.base}/transitions"
        self.client.ensure_path(path)
        self.client.create(f"{path}/t_", json.dumps(entry).encode(), sequence=True)
        self._write_status()
        children = sorted(self.client.get_children(path))
        for old in children[:-TRANSITIONS_KEPT]:
            with contextlib.suppress(KazooException):
                self.client.delete(f"{path}/{old}")

    def _write_status(self) -> None:
        assert self.client is not None
        path = f"{self.base}/directors/{self.me}"
        data = json.dumps(self.status()).encode()
        if self.client.exists(path) is None:
            self.client.ensure_path(f"{self.base}/directors")
            with contextlib.suppress(NodeExistsError):
                self.client.create(path, data, ephemeral=True)
                return
        self.client.set(path, data)

    def _on_health_change(self, change: HealthChange) -> None:
        service, realserver = change.key
        log.info("%s/%s %s", service, realserver,
                 "healthy" if change.health.healthy else "unhealthy",
                 extra={"event": "health", "service": service, "realserver": realserver,
                        "healthy": change.health.healthy, "reason": change.health.reason})
        self.record({"event": "health", "service": service, "realserver": realserver,
                     "healthy": change.health.healthy, "reason": change.health.reason})
        self._reconcile_at = 0.0
        self._wake_loop()

    def _wake_loop(self) -> None:
        if self.election is not None:
            self.election._wake.set()

    def status(self) -> dict[str, Any]:
        election = self.election
        cluster = self.cluster
        health = self.health.snapshot() if self.health is not None else {}
        services = []
        if cluster is not None:
            for svc in cluster.services:
                rows = []
                for rs in svc.realservers:
                    h = health.get((svc.name, rs.name))
                    rows.append({
                        "name": rs.name, "address": str(rs.key), "weight": rs.weight,
                        "health": None if h is None else {
                            "healthy": h.healthy, "weight": h.weight, "reason": h.reason},
                    })
                services.append({
                    "name": svc.name, "service": str(svc.key), "forwarding": svc.forwarding.label,
                    "realservers": rows,
                })
        return {
            "director": self.me, "cluster": self.node.cluster,
            "role": election.state.value if election else State.CANDIDATE.value,
            "epoch": election.epoch if election else 0,
            "since": election.since if election else None,
            "zookeeper": "connected" if election and election.zk_connected else "disconnected",
            "vips": sorted(self.held),
            "config": {"version": self.config_version, "error": self.config_error},
            "services": services,
            "last_reconcile": self.last_reconcile,
            "api": f"{self.node.api.host}:{self.node.api.port}",
            "transitions": self.transitions[-10:],
        }

    # -- VIPs --------------------------------------------------------------------------------

    def _epoch(self) -> int:
        return self.election.epoch if self.election else 0

    def _release(self, vip: Vip, why: str) -> None:
        try:
            self.vips.release(vip)
        except LvsctlError as exc:
            log.error("cannot release VIP %s: %s", vip.address, exc,
                      extra={"event": "vip_error", "vip": vip.address, "epoch": self._epoch()})
        self.held.discard(vip.address)
        log.info("VIP %s released (%s)", vip.address, why,
                 extra={"event": "vip_released", "vip": vip.address, "epoch": self._epoch()})
        self.record({"event": "vip_released", "vip": vip.address, "epoch": self._epoch(),
                     "reason": why})

    def release_all(self, why: str) -> None:
        if self.cluster is None:
            return
        for vip in self.cluster.vips:
            if vip.address in self.held:
                self._release(vip, why)
        if self.election is not None:
            self.election.advertise_holding(False)

    def _hold_once(self) -> None:
        """Renew, add or drop the VIPs according to the election's verdict right now."""
        election, cluster = self.election, self.cluster
        if election is None or cluster is None:
            return
        verdict = election.permission()
        if verdict not in ("zk", "peer"):
            if self.held:
                why = "lease lapsed" if election.state is State.ACTIVE else "not the leader"
                self.release_all(f"{why} ({election.state.value}, {verdict or 'no verdict'})")
            return
        lease = Lease(election.timing.lifetime)
        for vip in cluster.vips:
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
                self.held.add(vip.address)  # so that release_all removes this one too
                self.release_all("verdict changed while renewing")
                return
            if vip.address not in self.held:
                self.held.add(vip.address)
                log.info("VIP %s acquired", vip.address, extra={
                    "event": "vip_acquired", "vip": vip.address, "epoch": election.epoch,
                    "basis": verdict})
                self.record({"event": "vip_acquired", "vip": vip.address, "epoch": election.epoch,
                             "basis": verdict})
                self._announce(vip, cluster, election.epoch)
        election.advertise_holding(bool(self.held))

    def _announce(self, vip: Vip, cluster: Cluster, epoch: int) -> None:
        if not isinstance(self.vips, KernelVips):
            return
        try:
            mac = self.vips.mac(vip.interface)
        except LvsctlError:
            return

        async def burst() -> int:
            sent = await announce(vip, mac, cluster.announce,
                                  still_held=lambda: vip.address in self.held)
            log.info("announced VIP %s (%d frames)", vip.address, sent, extra={
                "event": "garp_sent", "vip": vip.address, "epoch": epoch, "count": sent})
            self.record({"event": "garp_sent", "vip": vip.address, "epoch": epoch,
                         "count": sent})
            return sent

        task = asyncio.create_task(burst())
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    def _on_transition(self, t: Transition) -> None:
        # Runs synchronously inside the election's transition: leaving ACTIVE releases the
        # VIPs before anything else happens (before the znode is deleted on a stepdown).
        if t.state is not State.ACTIVE:
            self.release_all(f"leadership {t.state.value}: {t.reason}")
        # Then the connection-sync daemon follows: master only on the active.
        self._sync_role(t.state is State.ACTIVE, t.epoch)
        self._reconcile_at = 0.0
        self.record({"event": "transition", "state": t.state.value, "epoch": t.epoch,
                     "reason": t.reason, "monotonic": round(t.monotonic, 6),
                     "wall": round(t.wall, 6)})

    # -- IPVS --------------------------------------------------------------------------------

    def _sync_role(self, active: bool, epoch: int) -> None:
        if self.dataplane is None or self.cluster is None:
            return
        me = self.cluster.director(self.me)
        try:
            self.dataplane.sync_role(active, me.sync_interface, me.sync_id, epoch=epoch)
        except LvsctlError as exc:
            log.error("sync daemon not switched: %s", exc,
                      extra={"event": "sync_daemon_error", "epoch": epoch})

    def _reconcile_if_due(self) -> None:
        if self.dataplane is None or self.cluster is None or self.election is None:
            return
        now = self.monotonic()
        if now < self._reconcile_at:
            return
        self._reconcile_at = now + RECONCILE_INTERVAL
        health = self.health.snapshot() if self.health is not None else {}
        try:
            self.last_reconcile = self.dataplane.reconcile(
                self.cluster, health, epoch=self.election.epoch,
                role=self.election.state.value)
        except LvsctlError as exc:
            log.error("reconcile failed: %s", exc, extra={"event": "ipvs_error",
                                                          "epoch": self.election.epoch})

    # -- the loop ----------------------------------------------------------------------------

    def adopt_existing(self) -> None:
        """At start: VIPs we find configured are ours only once we win; note them, no flush."""
        if self.cluster is None:
            return
        found = self.vips.held(self.cluster.vips)
        if found:
            # A VIP left over from an earlier run is a lease about to lapse; we do not renew
            # it on a stale belief: it is released until the election says otherwise.
            for vip in self.cluster.vips:
                if vip.address in found:
                    self.held.add(vip.address)
            self.release_all("left over from an earlier run")

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        loop = self._loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_node)
        loop.add_signal_handler(signal.SIGUSR2, dump_tasks)  # where each asyncio task waits
        target = Target.from_node(self.node, insecure=self.insecure)
        credentials = target.credentials()  # no credentials and not --insecure: refuse
        self.client = make_daemon_client(target, credentials)
        self.client.start_async()
        self._load_cached_config()
        conn = ClusterConnection(target, self.client, credentials)
        watcher = asyncio.create_task(self._watch_config(conn))
        log.info("waiting for a valid config", extra={"event": "starting"})
        waiter = asyncio.create_task(self._config_ready.wait())
        stopper = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.stopping.is_set():
            await self._shutdown()
            return 2 if self.fatal else 0
        assert self.cluster is not None
        me = self.cluster.director(self.me)
        other = next(d for d in self.cluster.directors if d.name != self.me)
        # Our beats must not say "I cannot reach ZooKeeper" merely because we have not
        # connected yet: that would let the other director lean on our word (election.py).
        deadline = self.monotonic() + self.node.zookeeper.session_timeout
        while not self.client.connected and self.monotonic() < deadline:
            await asyncio.sleep(0.02)
        timing = Timing(session_timeout=self.node.zookeeper.session_timeout)
        self.peer = PeerLink(
            self.me, read_secret(self.node.peer_secret_file),
            (me.peer_address, me.peer_port), (other.peer_address, other.peer_port),
            dead_after=timing.peer_dead_after,
        )
        self.peer.local = Beat(self.me, zk_connected=self.client.connected)
        self.election = Election(self.client, f"{self.base}/election", self.me, timing,
                                 peer=self.peer, on_transition=self._on_transition)
        self.peer.on_beat = self.election.on_peer_beat
        self.peer.on_send = self.election.on_beat_sent
        self.adopt_existing()
        # The kernel's table is adopted as it is: only what the plan says changes (no flush).
        self.dataplane = Dataplane(open_table(self.node.ipvs), monotonic=self.monotonic)
        self._sync_role(False, 0)
        # Both directors run the checks (a warm standby knows the real servers' health).
        self._checkers = Checkers()
        await self._checkers.__aenter__()
        self.health = Scheduler(self.cluster, self._checkers, on_change=self._on_health_change)
        await self.health.start()
        await self.peer.start()
        await self.election.start()
        writer = asyncio.create_task(self._write_records())
        await self._start_api()
        sd_notify("READY=1")
        log.info("running", extra={"event": "ready"})
        while not self.stopping.is_set():
            self._hold_once()
            self._reconcile_if_due()
            stop = asyncio.create_task(self.stopping.wait())
            change = asyncio.create_task(self.election.changed(RENEW_INTERVAL))
            await asyncio.wait({stop, change}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            change.cancel()
        await self._shutdown()
        writer.cancel()
        watcher.cancel()
        return 2 if self.fatal else 0

    async def stepdown(self) -> None:
        if self.election is not None:
            await self.election.stepdown(release=lambda: self.release_all("stepdown"))

    async def _shutdown(self) -> None:
        sd_notify("STOPPING=1")
        log.info("stopping: stepping down", extra={"event": "stopping"})
        if self.election is not None:
            # Bounded by itself: releasing is local, deleting the znode waits at most 2 s.
            await self.election.stop(release=lambda: self.release_all("stopping"))
        try:
            await asyncio.wait_for(self._close(), 6.0)
        except TimeoutError:
            log.warning("shutdown did not finish in time; exiting anyway",
                        extra={"event": "stop_timeout"})
        log.info("stopped", extra={"event": "stopped", "epoch": self._epoch()})

    async def _close(self) -> None:
        if self.peer is not None:
            await self.peer.stop()
        if self.health is not None:
            await self.health.stop()
        if self._checkers is not None:
            await self._checkers.__aexit__(None, None, None)
        # The last records (released, stepped down) are worth a moment: the takeover has
        # already happened, since our znode is gone.
        if self.client is not None and self.client.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._records.join(), 2.0)
        if self._api is not None:
            await self._api.cleanup()
        if self.dataplane is not None:
            self.dataplane.close()
        if self.client is not None:
            client = self.client
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(client.stop), 2.0)
            with contextlib.suppress(Exception):
                client.close()

    def reload_node(self) -> None:
        try:
            node = load_node(self.node_path)
        except LvsctlError as exc:
            log.error("node file not reloaded: %s", "; ".join(exc.lines()),
                      extra={"event": "node_rejected"})
            return
        if (node.cluster, node.director) != (self.node.cluster, self.node.director):
            log.error("node file not reloaded: cluster and director cannot change at run time",
                      extra={"event": "node_rejected"})
            return
        self.node = node
        if self.peer is not None:
            with contextlib.suppress(LvsctlError):
                self.peer.secret = read_secret(node.peer_secret_file)
        log.info("node file reloaded", extra={"event": "node_reloaded"})

    async def _start_api(self) -> None:
        from lvsctl.director.api import start_api

        with contextlib.suppress(OSError):
            self._api = await start_api(self)


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def run_director(node_path: str, *, insecure: bool = False) -> NoReturn:
    node = load_node(node_path)
    setup_logging(node)
    # `kill -USR1 PID` prints every thread's stack to stderr: how to see where a daemon hangs.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    daemon = Daemon(node, node_path, insecure=insecure)
    # uvloop: the health checks' probes cost half the CPU they cost on asyncio's own loop.
    loop = uvloop.new_event_loop()
    try:
        code = loop.run_until_complete(daemon.run())
    finally:
        loop.close()  # does not wait for executor threads (a kazoo call may never return)
    # Stepped down and released by now; kazoo's threads or a blocked worker thread must not
    # keep a stopped director alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
