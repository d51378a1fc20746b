"""The director's Prometheus metrics: one collector per director that builds every family at
scrape time from a typed snapshot of the director's state.

The worker hands a provider (``() -> MetricsSnapshot``) to ``DirectorCollector``; each scrape
calls it once and turns the snapshot into metric families through ``prometheus_client``. No
metric lives in the library's global registry: ``new_registry(provider)`` makes a
``CollectorRegistry`` of the director's own, and ``render_metrics(registry)`` is what the
``/metrics`` handler returns.

Cardinality is bounded by the cluster file. Every label value is either a name from the
validated config (a service, a real server, a check target as ``target_label`` prints it) or a
member of one of the enums below; a free-text reason (a probe's error line, a transition's
reason, a peer link's rejection) is classified into an enum first and never becomes a label
itself. Kernel counters and probe figures for a service or real server that the director's
record does not list are dropped, not exported under a name nobody configured.
"""

from __future__ import annotations

import asyncio
import bisect
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lvsctl.core.records import DirectorRecord

# -- the enums every non-config label value comes from ----------------------------------------


class Role(StrEnum):
    """The election states a director can be in (the record's ``role``)."""

    CANDIDATE = "CANDIDATE"
    ACTIVE = "ACTIVE"
    STANDBY = "STANDBY"
    FENCED = "FENCED"


class HealthState(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"  # not checked (yet), or no check configured


class TransitionReason(StrEnum):
    """Why the director changed role; ``classify_transition`` maps the election's text."""

    WON_ELECTION = "won_election"
    OTHER_LEADS = "other_leads"
    STEPDOWN = "stepdown"
    LEAVING = "leaving"
    REJOINING = "rejoining"
    LEASE_LOST = "lease_lost"
    SESSION_LOST = "session_lost"
    ZNODE_LOST = "znode_lost"
    PEER_HIGHER_EPOCH = "peer_higher_epoch"
    OTHER = "other"


class ProbeFailure(StrEnum):
    """Why a probe found a real server unhealthy; ``classify_probe_failure`` maps its line."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    RESET = "reset"
    CLOSED = "closed"  # closed the connection without a response
    UNREACHABLE = "unreachable"  # no route, host unreachable, network unreachable
    TLS = "tls"
    BAD_RESPONSE = "bad_response"  # a response that is not the protocol's
    UNEXPECTED = "unexpected"  # a valid response that is not the expected one (status, body)
    OTHER = "other"


class Inconclusive(StrEnum):
    """Why a probe's result was not applied to the real server's state."""

    LATE_TIMEOUT = "late_timeout"  # its timeout fired late: the checker's loop was behind


class OpKind(StrEnum):
    """The reconcile op kinds (director.reconcile), by the class name in snake case."""

    ADD_SERVICE = "add_service"
    EDIT_SERVICE = "edit_service"
    DEL_SERVICE = "del_service"
    ADD_DEST = "add_dest"
    EDIT_DEST = "edit_dest"
    DRAIN_DEST = "drain_dest"
    DEL_DEST = "del_dest"


class SyncRole(StrEnum):
    MASTER = "master"
    BACKUP = "backup"


class PeerReject(StrEnum):
    """Why the peer link refused a datagram; ``classify_peer_reject`` maps PeerLink.rejected."""

    BAD_MAC = "bad_mac"
    MALFORMED = "malformed"
    REPLAYED = "replayed"
    STALE = "stale"
    OWN_NAME = "own_name"
    OTHER = "other"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


# Leading words of the free text each classifier knows; the first that matches wins, anything
# else is OTHER. Matching is on a lowercased prefix or word, never a label of its own.
_TRANSITION_WORDS: tuple[tuple[str, TransitionReason], ...] = (
    ("won the election", TransitionReason.WON_ELECTION),
    ("stepping down", TransitionReason.STEPDOWN),
    ("leaving the election", TransitionReason.LEAVING),
    ("rejoining the election", TransitionReason.REJOINING),
    ("leadership no longer confirmed", TransitionReason.LEASE_LOST),
    ("zookeeper session lost", TransitionReason.SESSION_LOST),
    ("our election znode vanished", TransitionReason.ZNODE_LOST),
    ("peer", TransitionReason.PEER_HIGHER_EPOCH),
)
_PROBE_WORDS: tuple[tuple[str, ProbeFailure], ...] = (
    ("timed out", ProbeFailure.TIMEOUT),
    ("timeout", ProbeFailure.TIMEOUT),
    ("connection refused", ProbeFailure.REFUSED),
    ("connection reset", ProbeFailure.RESET),
    ("server closed the connection", ProbeFailure.CLOSED),
    ("unreachable", ProbeFailure.UNREACHABLE),
    ("no route to host", ProbeFailure.UNREACHABLE),
    ("tls ", ProbeFailure.TLS),
    ("bad http response", ProbeFailure.BAD_RESPONSE),
    ("dns:", ProbeFailure.BAD_RESPONSE),
    ("http ", ProbeFailure.UNEXPECTED),
    ("exit ", ProbeFailure.UNEXPECTED),
    ("body ", ProbeFailure.UNEXPECTED),
)
_PEER_WORDS: tuple[tuple[str, PeerReject], ...] = (
    ("bad hmac", PeerReject.BAD_MAC),
    ("malformed", PeerReject.MALFORMED),
    ("replayed", PeerReject.REPLAYED),
    ("stale", PeerReject.STALE),
    ("own name", PeerReject.OWN_NAME),
)


E = TypeVar("E", bound=StrEnum)


def _classify(text: str, words: tuple[tuple[str, E], ...], other: E) -> E:
    lowered = text.lower()
    for word, value in words:
        if lowered.startswith(word) or f" {word}" in lowered:
            return value
    return other


def classify_transition(reason: str) -> TransitionReason:
    """The enum for an election transition's reason text ("won the election" ...)."""
    if reason.endswith(" leads"):  # "<director> leads": another director won
        return TransitionReason.OTHER_LEADS
    return _classify(reason, _TRANSITION_WORDS, TransitionReason.OTHER)


def classify_probe_failure(reason: str, timed_out: bool = False) -> ProbeFailure:
    """The enum for a failed probe (CheckResult.reason and .timed_out)."""
    if timed_out:
        return ProbeFailure.TIMEOUT
    return _classify(reason, _PROBE_WORDS, ProbeFailure.OTHER)


def classify_peer_reject(reason: str) -> PeerReject:
    """The enum for a PeerLink.rejected key ("bad HMAC", "replayed", ...)."""
    return _classify(reason, _PEER_WORDS, PeerReject.OTHER)


# -- the snapshot the worker provides ---------------------------------------------------------

# Probe latencies: a TCP connect on a LAN is ~1 ms, an HTTP check tens of ms, a timeout 1-10 s.
PROBE_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0)
# A reconcile pass: an observe dump and a handful of ops, up to a full table load.
RECONCILE_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 5.0)


@dataclass(frozen=True)
class HistogramData:
    """A histogram's cumulative bucket counts (one per bound, in order, then +Inf = count)."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # observations <= each bound
    count: int = 0
    sum: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> HistogramData:
        return cls(bounds, (0,) * len(bounds))


class HistogramCounter:
    """A histogram the worker fills as probes or passes happen; ``data()`` freezes it.

    Raises ValueError when ``bounds`` do not strictly increase.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram bounds must increase: {bounds}")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def data(self) -> HistogramData:
        cumulative: list[int] = []
        total = 0
        for n in self._counts[:-1]:
            total += n
            cumulative.append(total)
        return HistogramData(self.bounds, tuple(cumulative), total + self._counts[-1], self._sum)


@dataclass(frozen=True)
class KernelCounters:
    """The kernel's traffic counters for a service or a dest (ipvs Stats, counters only)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0


@dataclass(frozen=True)
class KernelDest:
    """One dest of a service as the observe pass read it, named by the cluster file."""

    realserver: str
    weight: int  # the weight the kernel holds: the effective weight
    active_conns: int = 0
    inactive_conns: int = 0
    counters: KernelCounters = field(default_factory=KernelCounters)


@dataclass(frozen=True)
class KernelService:
    """One service as the observe pass read it, named by the cluster file."""

    service: str
    counters: KernelCounters = field(default_factory=KernelCounters)
    dests: tuple[KernelDest, ...] = ()


@dataclass(frozen=True)
class ProbeStats:
    """One check target's probes: ``target`` is ``target_label(check)`` of a configured check."""

    target: str
    latency: HistogramData = field(default_factory=lambda: HistogramData.empty(PROBE_BUCKETS))
    failures: Mapping[ProbeFailure, int] = field(default_factory=dict)
    inconclusive: Mapping[Inconclusive, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckerStats:
    """The checker as a whole (the scheduler's Watchdog)."""

    loop_lag_seconds: float = 0.0
    probes_in_flight: int = 0
    probes_waiting: int = 0
    stalled_targets: int = 0
    oldest_round_age_seconds: float = 0.0


@dataclass(frozen=True)
class ReconcileStats:
    duration: HistogramData = field(
        default_factory=lambda: HistogramData.empty(RECONCILE_BUCKETS))
    ops: Mapping[OpKind, int] = field(default_factory=dict)  # applied, by kind, since start
    kernel_errors: int = 0  # ops the kernel refused and observe dumps that failed, since start


@dataclass(frozen=True)
class PeerStats:
    up: bool = False  # a beat was accepted within the link's dead_after
    received: int = 0  # beats accepted since start
    rejected: Mapping[PeerReject, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape exports; the worker fills it from its live state.

    ``record`` is the director's own /status; ``lease_seconds_left`` the time until its VIP
    leases expire (None: it holds none); ``transitions`` counts role changes since start by
    (new role, reason); ``config_version`` is the store's version number of the running config
    and ``config_rejections`` how many pushed versions it refused since start; ``quorum`` the
    cluster file's quorum per service; ``kernel`` what the last observe pass read.

    Mappings must be copies, never the worker's live dicts: ScrapeCache renders the snapshot
    in another thread while the loop goes on changing its own state.
    """

    record: DirectorRecord
    lease_seconds_left: float | None = None
    transitions: Mapping[tuple[Role, TransitionReason], int] = field(default_factory=dict)
    config_version: int | None = None
    config_rejections: int = 0
    quorum: Mapping[str, int] = field(default_factory=dict)
    kernel: tuple[KernelService, ...] = ()
    probes: tuple[ProbeStats, ...] = ()
    checker: CheckerStats = field(default_factory=CheckerStats)
    reconcile: ReconcileStats = field(default_factory=ReconcileStats)
    sync_role: SyncRole | None = None
    peer: PeerStats = field(default_factory=PeerStats)


@dataclass(frozen=True)
class BuildInfo:
    version: str
    python: str

    @classmethod
    def installed(cls) -> BuildInfo:
        """This installation's lvsctl version ("unknown" when it is not installed)."""
        try:
            version = metadata.version("lvsctl")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return cls(version, platform.python_version())


# -- the collector ----------------------------------------------------------------------------

Provider = Callable[[], MetricsSnapshot]

_SVC = ["service"]
_RS = ["service", "realserver"]
_TARGET = ["target"]
_DIR = ["direction"]


def _b(value: bool) -> float:
    return 1.0 if value else 0.0


class DirectorCollector:
    """A prometheus_client collector: every family built at scrape time from ``provider()``."""

    def __init__(self, provider: Provider, build: BuildInfo | None = None) -> None:
        self.provider = provider
        self.build = build or BuildInfo.installed()

    def collect(self) -> Iterator[Metric]:
        snap = self.provider()
        yield from self._director(snap)
        yield from self._services(snap)
        yield from self._checks(snap)
        yield from self._reconcile(snap)
        yield from self._peer(snap)

    def _director(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        rec = snap.record
        info = GaugeMetricFamily("lvsctl_build_info", "lvsctl's version and Python's (always 1).",
                                 labels=["version", "python"])
        info.add_metric([self.build.version, self.build.python], 1)
        yield info
        who = GaugeMetricFamily("lvsctl_director_info",
                                "The director's name and cluster from its node file (always 1).",
                                labels=["director", "cluster"])
        who.add_metric([rec.director, rec.cluster], 1)
        yield who
        state = GaugeMetricFamily("lvsctl_director_state",
                                  "1 for the director's election state, 0 for the others.",
                                  labels=["state"])
        for role in Role:
            state.add_metric([role.value], _b(rec.role == role.value))
        yield state
        yield GaugeMetricFamily("lvsctl_director_epoch",
                                "The director's election epoch (its election znode's sequence).",
                                value=rec.epoch)
        if rec.since is not None:
            yield GaugeMetricFamily("lvsctl_director_state_since_timestamp_seconds",
                                    "When the director entered its election state (Unix time).",
                                    value=rec.since)
        yield GaugeMetricFamily("lvsctl_director_vips_held", "VIPs the director holds now.",
                                value=len(rec.vips))
        if snap.lease_seconds_left is not None:
            yield GaugeMetricFamily("lvsctl_vip_lease_remaining_seconds",
                                    "Seconds until the director's VIP leases expire unless "
                                    "renewed.", value=snap.lease_seconds_left)
        yield GaugeMetricFamily("lvsctl_zookeeper_connected",
                                "1 while the director's ZooKeeper session is connected.",
                                value=_b(rec.zookeeper == "connected"))
        moves = CounterMetricFamily("lvsctl_director_transitions",
                                    "Election state changes since start, by new state and reason.",
                                    labels=["state", "reason"])
        for (role, reason), n in sorted(snap.transitions.items()):
            moves.add_metric([Role(role).value, TransitionReason(reason).value], n)
        yield moves
        if snap.config_version is not None:
            yield GaugeMetricFamily("lvsctl_config_version",
                                    "The version number of the cluster file the director runs.",
                                    value=snap.config_version)
        yield GaugeMetricFamily("lvsctl_config_last_rejected",
                                "1 when the latest pushed cluster file was rejected (the "
                                "director keeps running the previous one).",
                                value=_b(bool(rec.config.error)))
        yield CounterMetricFamily("lvsctl_config_rejections",
                                  "Pushed cluster files the director rejected since start.",
                                  value=snap.config_rejections)
        sync = GaugeMetricFamily("lvsctl_sync_daemon_state",
                                 "1 for the role the IPVS connection-sync daemon runs in "
                                 "(none: all 0).", labels=["state"])
        for sync_role in SyncRole:
            sync.add_metric([sync_role.value], _b(snap.sync_role == sync_role))
        yield sync

    def _services(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        health = GaugeMetricFamily("lvsctl_realserver_health",
                                   "1 for the real server's health as the checks found it "
                                   "(up, down, unknown), 0 for the others.",
                                   labels=[*_RS, "state"])
        weight = GaugeMetricFamily("lvsctl_realserver_weight",
                                   "The real server's weight in the cluster file.", labels=_RS)
        healthy = GaugeMetricFamily("lvsctl_service_realservers_healthy",
                                    "Real servers of the service the checks find up.",
                                    labels=_SVC)
        configured = GaugeMetricFamily("lvsctl_service_realservers",
                                       "Real servers of the service in the cluster file.",
                                       labels=_SVC)
        quorum = GaugeMetricFamily("lvsctl_service_quorum",
                                   "Healthy real servers the service needs before its sorry "
                                   "server is added.", labels=_SVC)
        known: dict[str, set[str]] = {}
        up, down, unknown = HealthState.UP.value, HealthState.DOWN.value, HealthState.UNKNOWN.value
        for svc in snap.record.services:
            names = known.setdefault(svc.name, set())
            n_up = 0
            for rs in svc.realservers:
                names.add(rs.name)
                labels = [svc.name, rs.name]
                now = unknown if rs.health is None else up if rs.health.healthy else down
                n_up += now == up
                health.add_metric([*labels, up], _b(now == up))
                health.add_metric([*labels, down], _b(now == down))
                health.add_metric([*labels, unknown], _b(now == unknown))
                weight.add_metric(labels, rs.weight)
            healthy.add_metric([svc.name], n_up)
            configured.add_metric([svc.name], len(svc.realservers))
            if svc.name in snap.quorum:
                quorum.add_metric([svc.name], snap.quorum[svc.name])
        yield from (health, weight, healthy, configured, quorum)
        yield from self._kernel(snap.kernel, known)

    def _kernel(self, kernel: Iterable[KernelService],
                known: Mapping[str, set[str]]) -> Iterator[Metric]:
        def counters(scope: str, what: str, labels: list[str]) -> tuple[CounterMetricFamily, ...]:
            return (
                CounterMetricFamily(f"lvsctl_{scope}_connections",
                                    f"Connections the kernel scheduled to the {what}.",
                                    labels=labels),
                CounterMetricFamily(f"lvsctl_{scope}_packets",
                                    f"Packets through the {what}, by direction (kernel).",
                                    labels=[*labels, *_DIR]),
                CounterMetricFamily(f"lvsctl_{scope}_bytes",
                                    f"Bytes through the {what}, by direction (kernel).",
                                    labels=[*labels, *_DIR]),
            )

        svc_conns, svc_pkts, svc_bytes = counters("service", "virtual service", _SVC)
        rs_conns, rs_pkts, rs_bytes = counters("realserver", "real server", _RS)
        effective = GaugeMetricFamily("lvsctl_realserver_effective_weight",
                                      "The real server's weight in the kernel's IPVS table now.",
                                      labels=_RS)
        active = GaugeMetricFamily("lvsctl_realserver_active_connections",
                                   "The real server's active connections (kernel).", labels=_RS)
        inactive = GaugeMetricFamily("lvsctl_realserver_inactive_connections",
                                     "The real server's inactive connections (kernel).",
                                     labels=_RS)
        for svc in kernel:
            names = known.get(svc.service)
            if names is None:  # not a service of the running config: no label for it
                continue
            c = svc.counters
            svc_conns.add_metric([svc.service], c.conns)
            svc_pkts.add_metric([svc.service, "in"], c.inpkts)
            svc_pkts.add_metric([svc.service, "out"], c.outpkts)
            svc_bytes.add_metric([svc.service, "in"], c.inbytes)
            svc_bytes.add_metric([svc.service, "out"], c.outbytes)
            for dest in svc.dests:
                if dest.realserver not in names:
                    continue
                labels = [svc.service, dest.realserver]
                c = dest.counters
                effective.add_metric(labels, dest.weight)
                active.add_metric(labels, dest.active_conns)
                inactive.add_metric(labels, dest.inactive_conns)
                rs_conns.add_metric(labels, c.conns)
                rs_pkts.add_metric([*labels, "in"], c.inpkts)
                rs_pkts.add_metric([*labels, "out"], c.outpkts)
                rs_bytes.add_metric([*labels, "in"], c.inbytes)
                rs_bytes.add_metric([*labels, "out"], c.outbytes)
        yield from (effective, active, inactive, svc_conns, svc_pkts, svc_bytes,
                    rs_conns, rs_pkts, rs_bytes)

    def _checks(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        latency = HistogramMetricFamily("lvsctl_check_probe_duration_seconds",
                                        "How long each probe of a check target took.",
                                        labels=_TARGET)
        failures = CounterMetricFamily("lvsctl_check_probe_failures",
                                       "Probes that found the target unhealthy, by reason.",
                                       labels=[*_TARGET, "reason"])
        inconclusive = CounterMetricFamily("lvsctl_check_probe_inconclusive",
                                           "Probes whose result was not applied, by reason.",
                                           labels=[*_TARGET, "reason"])
        for probe in snap.probes:
            latency.add_metric([probe.target], _buckets(probe.latency), probe.latency.sum)
            for fail, n in sorted(probe.failures.items()):
                failures.add_metric([probe.target, ProbeFailure(fail).value], n)
            for why, n in sorted(probe.inconclusive.items()):
                inconclusive.add_metric([probe.target, Inconclusive(why).value], n)
        yield from (latency, failures, inconclusive)
        ch = snap.checker
        yield GaugeMetricFamily("lvsctl_checker_loop_lag_seconds",
                                "How late the checker's event loop ran its latest timer.",
                                value=ch.loop_lag_seconds)
        yield GaugeMetricFamily("lvsctl_checker_oldest_round_age_seconds",
                                "The longest time since any check target completed a probe.",
                                value=ch.oldest_round_age_seconds)
        yield GaugeMetricFamily("lvsctl_checker_stalled_targets",
                                "Check targets with no completed probe for 2 x interval + "
                                "timeout.", value=ch.stalled_targets)
        yield GaugeMetricFamily("lvsctl_checker_probes_in_flight", "Probes running now.",
                                value=ch.probes_in_flight)
        yield GaugeMetricFamily("lvsctl_checker_probes_waiting",
                                "Probes due but waiting for a slot.", value=ch.probes_waiting)

    def _reconcile(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        rec = snap.reconcile
        duration = HistogramMetricFamily("lvsctl_reconcile_duration_seconds",
                                         "How long each reconcile pass (observe, plan, apply) "
                                         "took.")
        duration.add_metric([], _buckets(rec.duration), rec.duration.sum)
        yield duration
        ops = CounterMetricFamily("lvsctl_reconcile_ops",
                                  "IPVS ops applied since start, by kind.", labels=["kind"])
        for kind in OpKind:
            ops.add_metric([kind.value], rec.ops.get(kind, 0))
        yield ops
        yield CounterMetricFamily("lvsctl_reconcile_kernel_errors",
                                  "IPVS requests the kernel refused or failed since start.",
                                  value=rec.kernel_errors)

    def _peer(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        peer = snap.peer
        yield GaugeMetricFamily("lvsctl_peer_link_up",
                                "1 while beats from the other director arrive.", value=_b(peer.up))
        yield CounterMetricFamily("lvsctl_peer_beats_received",
                                  "Beats from the other director accepted since start.",
                                  value=peer.received)
        rejected = CounterMetricFamily("lvsctl_peer_beats_rejected",
                                       "Peer link datagrams refused since start, by reason.",
                                       labels=["reason"])
        for reason in PeerReject:
            rejected.add_metric([reason.value], peer.rejected.get(reason, 0))
        yield rejected


def _buckets(data: HistogramData) -> list[tuple[str, float]]:
    """prometheus_client's bucket list: (upper bound text, cumulative count), +Inf last."""
    pairs = [(_bound(b), float(n)) for b, n in zip(data.bounds, data.cumulative, strict=True)]
    pairs.append(("+Inf", float(data.count)))
    return pairs


def _bound(value: float) -> str:
    return repr(float(value))


def new_registry(provider: Provider, build: BuildInfo | None = None) -> CollectorRegistry:
    """A registry of the director's own with its collector (nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DirectorCollector(provider, build))
    return registry


def render_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition for a /metrics response: (body, Content-Type)."""
    # The 0.0.4 text format: what every Prometheus reads (Debian 12 ships 2.42); the names are
    # all legacy-valid, so the body is the same as under 1.0.0.
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


def render_snapshot(snapshot: MetricsSnapshot, build: BuildInfo | None = None
                    ) -> tuple[bytes, str]:
    """The exposition of one snapshot already taken (safe in any thread: it is frozen)."""
    return render_metrics(new_registry(lambda: snapshot, build))


class ScrapeCache:
    """/metrics for an event loop: the snapshot is taken on the loop (where the worker's state
    is written), the text is rendered in a thread, and scrapes within ``max_age`` seconds of a
    render share it.

    Rendering 2,000 real servers' families costs far more than the loop may stall (bench/
    metrics.py): in a thread the loop keeps running, interrupted only for the interpreter's
    switch interval, and concurrent scrapes (two Prometheus servers, a flood) cost one render.
    """

    def __init__(self, provider: Provider, build: BuildInfo | None = None, *,
                 max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.build = build or BuildInfo.installed()
        self.max_age = max_age
        self.clock = clock
        self.renders = 0
        self._lock = asyncio.Lock()
        self._cached: tuple[float, bytes, str] | None = None

    async def scrape(self) -> tuple[bytes, str]:
        """(body, Content-Type) of a render at most ``max_age`` old."""
        async with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < self.max_age:
                return self._cached[1], self._cached[2]
            taken = self.clock()
            snapshot = self.provider()
            body, content_type = await asyncio.to_thread(render_snapshot, snapshot, self.build)
            self.renders += 1
            self._cached = (taken, body, content_type)
            return body, content_type
