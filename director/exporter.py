"""The worker's side of the metrics and the status page: the counts the worker keeps for them,
the MetricsSnapshot taken from its live state, and the page with the peer director's view.

The worker (director/worker.py) owns one ``WorkerStats`` and feeds it as things happen (a
transition record from the keeper, a rejected config, a reconcile pass, a probe's result);
``snapshot`` copies what a scrape needs into a MetricsSnapshot (director/metrics.py turns it
into text in its renderer process). Every label value comes from the cluster file or from an
enum of director/metrics.py: free text is classified first.

``status_page`` renders ``GET /``: this director's record and, fetched from the peer's API
``/status`` with a short timeout and a size cap, the peer's. The peer's API is found without
configuration: the same port as ours on the peer director's address from the cluster file,
when our API listens on an address the directors share (not on loopback, the default, unless
the directors' own addresses are loopback ones: a pair on one host).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster, Health, HealthKey
from lvsctl.core.records import (
    MAX_DIRECTOR_BYTES,
    ConfigState,
    DirectorRecord,
    HealthStatus,
    RealServerStatus,
    ServiceStatus,
)
from lvsctl.director.metrics import (
    PROBE_BUCKETS,
    RECONCILE_BUCKETS,
    CheckerStats,
    HistogramCounter,
    Inconclusive,
    KernelCounters,
    KernelDest,
    KernelService,
    MetricsSnapshot,
    OpKind,
    PeerReject,
    PeerStats,
    ProbeFailure,
    ProbeStats,
    ReconcileStats,
    Role,
    SyncRole,
    TransitionReason,
    classify_peer_reject,
    classify_probe_failure,
    classify_transition,
)
from lvsctl.director.page import render_page
from lvsctl.director.reconcile import ObservedTable, Stats
from lvsctl.healthcheck.result import CheckResult
from lvsctl.healthcheck.scheduler import Watchdog

# The peer's /status: asked with this budget (connect and read together), at most a director
# record's size read; a slow or silent peer costs the page this long, never the loop.
PEER_TIMEOUT = 1.0
PEER_MAX_BYTES = MAX_DIRECTOR_BYTES
_VERSION = re.compile(r".*@v([0-9]{1,18})")  # ConfigVersion.load's source: "FILE@vN"
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def op_kind(name: str) -> OpKind | None:
    """The OpKind of a reconcile op's class name ("AddDest" -> ADD_DEST), None if unknown."""
    try:
        return OpKind(_CAMEL.sub("_", name).lower())
    except ValueError:
        return None


def config_number(source: str) -> int | None:
    """The store's version number of a running config from its source ("f.yaml@v12" -> 12);
    None for a config that did not come from the store."""
    match = _VERSION.fullmatch(source)
    return int(match.group(1)) if match else None


def _counters(stats: Stats) -> KernelCounters:
    return KernelCounters(stats.conns, stats.inpkts, stats.outpkts, stats.inbytes,
                          stats.outbytes)


def kernel_view(cluster: Cluster, observed: ObservedTable | None) -> tuple[KernelService, ...]:
    """The observe pass's services and dests named by the cluster file; services and dests the
    file does not name (another tool's, a sorry server, one being retired) are left out."""
    if observed is None:
        return ()
    out = []
    for svc in cluster.services:
        seen = observed.get(svc.key)
        if seen is None:
            continue
        dests = []
        for rs in svc.realservers:
            dest = seen.dests.get(rs.key)
            if dest is not None:
                dests.append(KernelDest(rs.name, dest.weight, dest.active_conns,
                                        dest.inactive_conns, _counters(dest.stats)))
        out.append(KernelService(svc.name, _counters(seen.stats), tuple(dests)))
    return tuple(out)


@dataclass
class _Probes:
    latency: HistogramCounter
    failures: dict[ProbeFailure, int]
    inconclusive: dict[Inconclusive, int]


class WorkerStats:
    """What the worker counts for its metrics since it started (a restarted worker starts
    from zero: Prometheus's rate() reads that as a counter reset)."""

    def __init__(self) -> None:
        self.transitions: dict[tuple[Role, TransitionReason], int] = {}
        self.config_rejections = 0
        self.reconcile = HistogramCounter(RECONCILE_BUCKETS)
        self.ops: dict[OpKind, int] = {}
        self.kernel_errors = 0
        self.kernel: tuple[KernelService, ...] = ()
        self._probes: dict[str, _Probes] = {}

    def transition(self, state: str, reason: str) -> None:
        """One election transition the keeper recorded (its new state and reason text)."""
        try:
            role = Role(state)
        except ValueError:
            return  # not an election state: nothing to count it under
        key = (role, classify_transition(reason))
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def reconciled(self, seconds: float, summary: Mapping[str, Any], kernel: tuple[
            KernelService, ...]) -> None:
        """One reconcile pass: its duration, the dataplane's summary, the kernel's view."""
        self.reconcile.observe(seconds)
        for name, n in dict(summary.get("ops") or {}).items():
            kind = op_kind(str(name))
            if kind is not None and isinstance(n, int):
                self.ops[kind] = self.ops.get(kind, 0) + n
        errors = summary.get("kernel_errors", 0)
        self.kernel_errors += errors if isinstance(errors, int) else 0
        self.kernel = kernel

    def reconcile_failed(self) -> None:
        self.kernel_errors += 1

    def probe(self, target: str, result: CheckResult, inconclusive: bool) -> None:
        """One probe of a configured check target (its ``target_label``)."""
        probes = self._probes.get(target)
        if probes is None:
            probes = self._probes[target] = _Probes(HistogramCounter(PROBE_BUCKETS), {}, {})
        probes.latency.observe(result.latency)
        if inconclusive:
            why = Inconclusive.LATE_TIMEOUT
            probes.inconclusive[why] = probes.inconclusive.get(why, 0) + 1
        elif not result.healthy:
            fail = classify_probe_failure(result.reason, result.timed_out)
            probes.failures[fail] = probes.failures.get(fail, 0) + 1

    def keep_targets(self, targets: Iterable[str]) -> None:
        """Forget the probes of targets the running config no longer has."""
        keep = set(targets)
        for target in set(self._probes) - keep:
            del self._probes[target]

    def probe_stats(self) -> tuple[ProbeStats, ...]:
        return tuple(ProbeStats(target, p.latency.data(), dict(p.failures),
                                dict(p.inconclusive))
                     for target, p in self._probes.items())


def checker_stats(watchdog: Watchdog | None) -> CheckerStats:
    if watchdog is None:
        return CheckerStats()
    return CheckerStats(watchdog.loop_lag, watchdog.running, watchdog.waiting,
                        len(watchdog.stalled), watchdog.oldest_round_age)


def peer_stats(up: bool, received: int, rejected: Iterable[tuple[str, int]]) -> PeerStats:
    counts: dict[PeerReject, int] = {}
    for reason, n in rejected:
        why = classify_peer_reject(reason)
        counts[why] = counts.get(why, 0) + n
    return PeerStats(up, received, counts)


class RecordServices:
    """The services part of the record a scrape exports, rebuilt only when the cluster or a
    health result changed since the last scrape (most scrapes of a steady pool: comparing the
    health map costs far less than building thousands of records)."""

    def __init__(self) -> None:
        self._cluster: Cluster | None = None
        self._health: dict[HealthKey, Health] = {}
        self._services: tuple[ServiceStatus, ...] = ()

    def get(self, cluster: Cluster | None, health: Mapping[HealthKey, Health]
            ) -> tuple[ServiceStatus, ...]:
        if cluster is None:
            return ()
        if cluster is not self._cluster or health != self._health:
            self._cluster, self._health = cluster, dict(health)
            self._services = tuple(
                ServiceStatus(svc.name, realservers=tuple(
                    RealServerStatus(rs.name, weight=rs.weight, health=_health(
                        health.get((svc.name, rs.name))))
                    for rs in svc.realservers))
                for svc in cluster.services)
        return self._services


def light_record(*, director: str, cluster_name: str, role: str, epoch: int,
                 since: float | None, zookeeper: str, vips: tuple[str, ...],
                 config_error: str, services: tuple[ServiceStatus, ...]) -> DirectorRecord:
    """The director's record with what a scrape exports (no transitions, no addresses):
    built straight from the model (``RecordServices``), cheaper than decoding /status."""
    return DirectorRecord(director=director, cluster=cluster_name, role=role, epoch=epoch,
                          since=since, zookeeper=zookeeper, vips=vips,
                          config=ConfigState(error=config_error), services=services)


def _health(h: Health | None) -> HealthStatus | None:
    return None if h is None else HealthStatus(h.healthy, h.weight, h.reason)


def snapshot(record: DirectorRecord, stats: WorkerStats, *, lease_seconds_left: float | None,
             config_source: str, quorum: Mapping[str, int], checker: CheckerStats,
             sync_active: bool | None, peer: PeerStats) -> MetricsSnapshot:
    """One scrape's snapshot of the worker's state."""
    return MetricsSnapshot(
        record=record, lease_seconds_left=lease_seconds_left,
        transitions=dict(stats.transitions), config_version=config_number(config_source),
        config_rejections=stats.config_rejections, quorum=quorum, kernel=stats.kernel,
        probes=stats.probe_stats(), checker=checker,
        reconcile=ReconcileStats(stats.reconcile.data(), dict(stats.ops), stats.kernel_errors),
        sync_role=None if sync_active is None else
        SyncRole.MASTER if sync_active else SyncRole.BACKUP,
        peer=peer)


# -- the status page and the peer's view --------------------------------------------------------


def peer_api_url(own_host: str, own_port: int, cluster: Cluster | None, me: str
                 ) -> tuple[str, str]:
    """(peer's name, its /status URL), or ("", a note why the page cannot ask the peer)."""
    if cluster is None:
        return "", "no cluster file yet"
    other = next((d for d in cluster.directors if d.name != me), None)
    if other is None:
        return "", "the cluster file names no other director"
    # On loopback our API is out of the peer's reach, and (being symmetric) the peer's out of
    # ours, unless the peer director itself has a loopback address (both on one host).
    if _loopback(own_host) and not _loopback(other.address):
        return "", (f"this API listens on {own_host} only; the peer's view needs api.listen "
                    "on an address the directors share (the same port on both)")
    host = f"[{other.address}]" if ":" in other.address else other.address
    return other.name, f"http://{host}:{own_port}/status"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def fetch_peer(name: str, url: str, cluster: str, *, timeout: float = PEER_TIMEOUT,
                     limit: int = PEER_MAX_BYTES) -> tuple[DirectorRecord | None, str]:
    """(the peer's record, "") or (None, why not): its /status, read within ``timeout``
    seconds and ``limit`` bytes, checked as a director record of ``name`` in ``cluster``."""
    try:
        async with asyncio.timeout(timeout):
            async with aiohttp.ClientSession() as session, session.get(
                    url, allow_redirects=False) as response:
                if response.status != 200:
                    return None, f"{name}'s API at {url} answered HTTP {response.status}"
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        return None, f"{name}'s API at {url} sent more than {limit} bytes"
                    chunks.append(chunk)
                data = b"".join(chunks)
    except TimeoutError:
        return None, f"{name}'s API at {url} did not answer within {timeout:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"{name}'s API at {url} is unreachable ({type(exc).__name__})"
    try:
        record = DirectorRecord.from_bytes(data, f"{name}'s /status")
    except LvsctlError as exc:
        return None, str(exc)[:300]
    if (record.director, record.cluster) != (name, cluster):
        return None, (f"{url} answers as {record.director[:64]!r} of cluster "
                      f"{record.cluster[:64]!r}, not {name} of {cluster}")
    return record, ""


async def status_page(own: DirectorRecord, peer_at: tuple[str, str], *,
                      lease_seconds_left: float | None, kernel: tuple[KernelService, ...],
                      wall: Callable[[], float] = time.time) -> str:
    """The page for ``GET /``: ``own`` and, when ``peer_at`` names the peer and it answers,
    the peer's record."""
    name, where = peer_at
    peer, note = (None, where) if not name else await fetch_peer(name, where, own.cluster)
    return render_page(own, peer, now=wall(), lease_seconds_left=lease_seconds_left,
                       kernel=kernel, peer_note=note)
