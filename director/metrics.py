"""The director's Prometheus metrics: one collector per director that builds every family at
scrape time from a typed snapshot of the director's state.

The worker hands a provider (``() -> MetricsSnapshot``) to ``DirectorCollector``; each scrape
calls it once and turns the snapshot into metric families through ``prometheus_client``. No
metric lives in the library's global registry: ``new_registry(provider)`` makes a
``CollectorRegistry`` of the director's own, and ``render_metrics(registry)`` writes the text.

The ``/metrics`` handler uses ``ScrapeCache``: the snapshot is taken on the worker's loop and
encoded into plain tuples, and a long-lived renderer process writes the text, so the loop pays
a few milliseconds per scrape instead of the ~300 ms the text costs at 100 x 20 (bench/metrics.py).

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
import gc
import logging
import multiprocessing
import os
import pickle
import platform
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from operator import attrgetter
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lvsctl.core.errors import LvsctlError
from lvsctl.core.records import (
    ConfigState,
    DirectorRecord,
    HealthStatus,
    RealServerStatus,
    ServiceStatus,
)

log = logging.getLogger("lvsctl.director.metrics")

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

# Probe latencies, one histogram per check target: steps of about 5x from a LAN TCP connect
# (<= 2 ms) through a quick HTTP check (<= 10 ms, <= 50 ms) and a slow one (<= 250 ms) to the
# default check timeout (1 s); +Inf holds probes that ran past it (a timeout, or a longer
# configured one). Five bounds, not seven: this family is half of all samples at 100 x 20, and
# the mean is exact anyway from _sum / _count.
PROBE_BUCKETS = (0.002, 0.01, 0.05, 0.25, 1.0)
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

    ScrapeCache encodes the snapshot on the loop right after the provider returns it, so
    mappings may be the worker's own; only the fields ``encode_snapshot`` lists reach the
    renderer (the record's: director, cluster, role, epoch, since, zookeeper, vips,
    config.error, and per real server its name, weight and health).
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




# -- the wire form: the snapshot as plain tuples, for the renderer process ---------------------

# Pickling a dataclass (or a named tuple) runs Python code per object: ~20 ms on the loop for
# the 16,000 objects of 100 x 20. Plain tuples of str/int/float pickle in C, ~50x faster, and
# attrgetter picks several fields in one C call. Enum members pickle once each (the pickler's
# memo), so mappings keyed by them travel as they are.
_COUNTERS = attrgetter("conns", "inpkts", "outpkts", "inbytes", "outbytes")
_DEST = attrgetter("realserver", "weight", "active_conns", "inactive_conns")
_HIST = attrgetter("bounds", "cumulative", "count", "sum")
_CHECKER = attrgetter("loop_lag_seconds", "probes_in_flight", "probes_waiting",
                      "stalled_targets", "oldest_round_age_seconds")
_RECORD = attrgetter("director", "cluster", "role", "epoch", "since", "zookeeper", "vips")


def encode_snapshot(snap: MetricsSnapshot) -> bytes:
    """The snapshot as the renderer process reads it: the fields the collector uses, pickled
    as plain tuples (``decode_snapshot`` is the other side)."""
    # The ~20,000 tuples below die as soon as they are pickled (reference counts free them);
    # left on, the cyclic collector would count them as new objects and could run a full
    # collection over the director's whole heap in the middle of the scrape.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _encode(snap)
    finally:
        if paused:
            gc.enable()


def _encode(snap: MetricsSnapshot) -> bytes:
    rec = snap.record
    services = tuple(
        (svc.name, tuple((rs.name, rs.weight, None if rs.health is None else rs.health.healthy)
                         for rs in svc.realservers))
        for svc in rec.services)
    kernel = tuple(
        (svc.service, _COUNTERS(svc.counters),
         tuple((*_DEST(d), _COUNTERS(d.counters)) for d in svc.dests))
        for svc in snap.kernel)
    probes = tuple((p.target, _HIST(p.latency), tuple(p.failures.items()),
                    tuple(p.inconclusive.items())) for p in snap.probes)
    reconcile = snap.reconcile
    wire = (
        (*_RECORD(rec), rec.config.error, services),
        snap.lease_seconds_left, tuple(snap.transitions.items()), snap.config_version,
        snap.config_rejections, tuple(snap.quorum.items()), kernel, probes,
        _CHECKER(snap.checker),
        (_HIST(reconcile.duration), tuple(reconcile.ops.items()), reconcile.kernel_errors),
        snap.sync_role, (snap.peer.up, snap.peer.received, tuple(snap.peer.rejected.items())),
    )
    return pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL)


def decode_snapshot(data: bytes) -> MetricsSnapshot:
    """The snapshot ``encode_snapshot`` wrote (only the renderer process calls this: the bytes
    come from the director itself, never from the network)."""
    (rec, lease, transitions, config_version, config_rejections, quorum, kernel, probes,
     checker, reconcile, sync_role, peer) = pickle.loads(data)
    *head, error, services = rec
    director, cluster, role, epoch, since, zookeeper, vips = head
    record = DirectorRecord(
        director=director, cluster=cluster, role=role, epoch=epoch, since=since,
        zookeeper=zookeeper, vips=vips, config=ConfigState(error=error),
        services=tuple(
            ServiceStatus(name, realservers=tuple(
                RealServerStatus(rs, weight=weight,
                                 health=None if healthy is None else HealthStatus(healthy))
                for rs, weight, healthy in rss))
            for name, rss in services))
    duration, ops, kernel_errors = reconcile
    up, received, rejected = peer
    return MetricsSnapshot(
        record=record, lease_seconds_left=lease, transitions=dict(transitions),
        config_version=config_version, config_rejections=config_rejections,
        quorum=dict(quorum),
        kernel=tuple(
            KernelService(name, KernelCounters(*counters), tuple(
                KernelDest(rs, weight, active, inactive, KernelCounters(*c))
                for rs, weight, active, inactive, c in dests))
            for name, counters, dests in kernel),
        probes=tuple(ProbeStats(target, HistogramData(*latency), dict(failures),
                                dict(inconclusive))
                     for target, latency, failures, inconclusive in probes),
        checker=CheckerStats(*checker),
        reconcile=ReconcileStats(HistogramData(*duration), dict(ops), kernel_errors),
        sync_role=sync_role, peer=PeerStats(up, received, dict(rejected)),
    )


# -- the renderer process and the scrape the API serves --------------------------------------

# The text can wait; the worker's loop (health checks, the API) cannot.
RENDER_NICE = 10
# Prometheus gives up on a scrape after 10 s by default: answer 503 before that.
RENDER_TIMEOUT = 8.0
# A new renderer's interpreter start and imports: 1-5 s on a loaded host, tens of seconds
# under an emulated CPU (the kernel VM). Not part of any render's timeout, or a renderer that
# starts slower than RENDER_TIMEOUT would be killed and replaced forever.
START_TIMEOUT = 180.0
# The renderer's first byte: its imports are done and it reads snapshots.
_READY = b"R"
# The largest text a renderer may send back: 100 x 20 is ~4 MB; the config bounds the rest.
MAX_BODY_BYTES = 256 * 1024 * 1024


class MetricsUnavailable(LvsctlError):
    """No exposition for this scrape: the renderer ran past its timeout, died, or the scraper
    is closed. The /metrics handler answers 503; the next scrape starts a new renderer."""


# Each message on the renderer's socket: its length (8 bytes, network order), then its bytes.
_FRAME = struct.Struct("!Q")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket. Raises EOFError when it closes first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the socket closed mid-message")
        got += n
    return bytes(buf)


def _serve(sock: socket.socket, build: BuildInfo) -> None:
    """The renderer process: one snapshot in, its text out, until the director closes the
    socket (or dies: the socket closes with it, so no renderer outlives its director)."""
    # ^C in a terminal reaches the whole process group; the director decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Its own session: where the kernel groups CPU time by session (autogroup, the default on
    # desktops and login shells), the renderer's bursts are then charged to a group of their
    # own instead of halving the director's; bench/metrics.py measured the loop's lateness
    # grow by ~300 ms per scrape without this on a loaded 2-CPU host. Within one cgroup (a
    # systemd service) the nice value puts the loop's health checks first.
    os.setsid()
    os.nice(RENDER_NICE)
    with sock:
        sock.sendall(_READY)
        while True:
            try:
                (size,) = _FRAME.unpack(_recv_exactly(sock, _FRAME.size))
                data = _recv_exactly(sock, size)
            except EOFError:
                return
            body, _ = render_snapshot(decode_snapshot(data), build)
            sock.sendall(_FRAME.pack(len(body)))
            sock.sendall(body)


class _Renderer:
    """One child process of the spawn context (a fresh interpreter: no copy of the director's
    threads, locks or sockets) and the director's end of its socket, non-blocking: the loop
    sends and receives without a helper thread, which would take the GIL from the loop at
    every chunk and could be descheduled holding it."""

    def __init__(self, build: BuildInfo) -> None:
        """Start the process (blocking: fork and exec; call it from a thread)."""
        context = multiprocessing.get_context("spawn")
        self.sock, child = socket.socketpair()
        self.process = context.Process(target=_serve, args=(child, build),
                                       name="lvsctl-metrics-renderer", daemon=True)
        try:
            self.process.start()
        except BaseException:
            self.sock.close()
            raise
        finally:
            child.close()
        self.sock.setblocking(False)

    async def ready(self) -> None:
        """Until the process says its imports are done. Raises EOFError or OSError when it
        dies first."""
        if await self._recv(len(_READY)) != _READY:
            raise OSError("the renderer did not start its protocol")

    async def exchange(self, payload: bytes) -> bytes:
        """Send one encoded snapshot, return its text. Raises EOFError or OSError when the
        process dies, OSError when it answers more than MAX_BODY_BYTES."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, _FRAME.pack(len(payload)))
        await loop.sock_sendall(self.sock, payload)
        (size,) = _FRAME.unpack(await self._recv(_FRAME.size))
        if size > MAX_BODY_BYTES:
            raise OSError(f"the renderer answered {size} bytes, over {MAX_BODY_BYTES}")
        return await self._recv(size)

    async def _recv(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = await loop.sock_recv_into(self.sock, view[got:])
            if n == 0:
                raise EOFError("the renderer closed its socket")
            got += n
        return bytes(buf)

    def stop(self, grace: float) -> None:
        """Close the socket (an idle renderer exits on it), give the process ``grace`` seconds,
        then SIGKILL, and reap it (blocking: call it from a thread, with no read or write of
        the loop pending on the socket)."""
        self.sock.close()
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class ScrapeCache:
    """/metrics for an event loop: ``await scrape()`` -> (body, Content-Type), ``await close()``.

    The snapshot is taken and encoded on the loop (where the worker's state is written); a
    renderer process writes the text, so the loop is not held by the text writer, not even
    through the GIL as a thread would hold it. One render is in flight at a time: concurrent
    scrapes share it, and scrapes within ``max_age`` seconds of a render share its text. A
    render past ``timeout`` seconds or a renderer that dies fails that scrape (and its
    sharers) with MetricsUnavailable, and the next scrape starts a new renderer. A new
    renderer's start (its interpreter and imports) has ``start_timeout`` of its own.
    """

    def __init__(self, provider: Provider, build: BuildInfo | None = None, *,
                 max_age: float = 1.0, timeout: float = RENDER_TIMEOUT,
                 start_timeout: float = START_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.build = build or BuildInfo.installed()
        self.max_age = max_age
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.clock = clock
        self.renders = 0  # texts the renderer returned
        self.failures = 0  # renders that timed out or lost their renderer
        self._renderer: _Renderer | None = None
        self._inflight: asyncio.Task[bytes] | None = None
        self._cached: tuple[float, bytes] | None = None
        self._closed = False

    @property
    def renderer_pid(self) -> int | None:
        """The renderer process's PID (None: none started yet, or it was stopped)."""
        return None if self._renderer is None else self._renderer.process.pid

    async def scrape(self) -> tuple[bytes, str]:
        """(body, Content-Type) of a render at most ``max_age`` old.

        Raises MetricsUnavailable (answer 503) when the render failed or the scraper is closed.
        """
        if self._closed:
            raise MetricsUnavailable("the metrics scraper is closed")
        if self._cached is not None and self.clock() - self._cached[0] < self.max_age:
            return self._cached[1], CONTENT_TYPE_PLAIN_0_0_4
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._render())
            self._inflight.add_done_callback(self._render_done)
        # A scraper that goes away (its HTTP client hung up) leaves the render to the others.
        body = await asyncio.shield(self._inflight)
        return body, CONTENT_TYPE_PLAIN_0_0_4

    def _render_done(self, task: asyncio.Task[bytes]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: every sharer may have gone away

    async def _render(self) -> bytes:
        taken = self.clock()
        # On the loop: the worker's state is here. The cyclic collector waits meanwhile: the
        # snapshot's thousands of short-lived objects would otherwise set off collections,
        # up to a full one over the director's whole heap (encode_snapshot's reason, twice).
        paused = gc.isenabled()
        gc.disable()
        try:
            payload = encode_snapshot(self.provider())
        finally:
            if paused:
                gc.enable()
        renderer = self._renderer
        if renderer is None or not renderer.process.is_alive():
            if renderer is not None:
                await self._discard(renderer)
            # Starting a process costs milliseconds of fork and exec: not on the loop.
            try:
                renderer = self._renderer = await asyncio.to_thread(_Renderer, self.build)
            except OSError as exc:  # out of processes or memory
                self.failures += 1
                raise MetricsUnavailable(f"the metrics renderer did not start: {exc}") from exc
            if self._closed:  # closed while it started
                await self._discard(renderer, grace=0.0)
                raise MetricsUnavailable("the metrics scraper is closed")
            try:
                await asyncio.wait_for(renderer.ready(), self.start_timeout)
            except (TimeoutError, EOFError, OSError) as exc:
                self.failures += 1
                log.warning("metrics renderer (pid %s) did not start: %s",
                            renderer.process.pid, type(exc).__name__)
                await self._discard(renderer, grace=0.0)
                raise MetricsUnavailable("the metrics renderer did not start within "
                                         f"{self.start_timeout:g} s") from exc
        try:
            body = await asyncio.wait_for(renderer.exchange(payload), self.timeout)
        except (TimeoutError, EOFError, OSError) as exc:
            self.failures += 1
            why = (f"took over {self.timeout:g} s" if isinstance(exc, TimeoutError)
                   else f"died ({type(exc).__name__}: {exc})")
            log.warning("metrics renderer (pid %s) %s; a new one starts at the next scrape",
                        renderer.process.pid, why)
            # A renderer that may be half-way through a message is never reused.
            await self._discard(renderer, grace=0.0)
            raise MetricsUnavailable(f"the metrics renderer {why}") from exc
        self.renders += 1
        self._cached = (taken, body)
        return body

    async def _discard(self, renderer: _Renderer, grace: float = 5.0) -> None:
        if self._renderer is renderer:
            self._renderer = None
        await asyncio.to_thread(renderer.stop, grace)

    async def close(self) -> None:
        """Stop the renderer process and wait until it is reaped; a render in flight fails
        with MetricsUnavailable. Later scrapes raise MetricsUnavailable."""
        self._closed = True
        inflight = self._inflight
        if inflight is not None:
            # Killed, the renderer fails the render in flight at once, which discards it: its
            # socket is closed only after the loop stopped waiting on it.
            if self._renderer is not None:
                self._renderer.process.kill()
            await asyncio.gather(inflight, return_exceptions=True)
        if self._renderer is not None:
            await self._discard(self._renderer)
