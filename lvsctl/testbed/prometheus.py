"""A real Prometheus server for the lab and the tests (Debian's ``prometheus``), a small client
for its HTTP query API, and synthetic director snapshots to drive the metrics collector.

``PrometheusServer.start`` writes a config (scrape interval 1 s, the given targets), keeps its
TSDB in a directory of the caller's and listens where it is told, optionally inside a network
namespace; ``stop`` ends it by PID. ``PrometheusClient`` asks ``/api/v1/query``; inside a
namespace it runs its requests from a thread that joined it (lab.in_netns).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lvsctl.core.errors import LvsctlError
from lvsctl.core.records import (
    ConfigState,
    DirectorRecord,
    HealthStatus,
    RealServerStatus,
    ServiceStatus,
    TransitionRecord,
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
)
from lvsctl.testbed.netns import in_netns

T = TypeVar("T")

PROMETHEUS = "prometheus"
SCRAPE_INTERVAL = 1.0


class PrometheusError(LvsctlError):
    """The Prometheus server could not be started, or its API answered with an error."""


def config_yaml(targets: Sequence[str], *, job: str = "lvsctl",
                interval: float = SCRAPE_INTERVAL) -> str:
    """prometheus.yml: one job scraping ``targets`` ("HOST:PORT") at ``/metrics``."""
    seconds = f"{interval:g}s"
    return yaml.safe_dump({
        "global": {"scrape_interval": seconds, "evaluation_interval": seconds},
        "scrape_configs": [{"job_name": job, "scrape_interval": seconds,
                            "scrape_timeout": seconds, "metrics_path": "/metrics",
                            "static_configs": [{"targets": list(targets)}]}],
    }, sort_keys=False)


@dataclass
class PrometheusServer:
    """One Prometheus process: ``listen`` is HOST:PORT inside ``netns`` (None: here)."""

    workdir: Path
    listen: str
    targets: Sequence[str]
    netns: str | None = None
    job: str = "lvsctl"
    interval: float = SCRAPE_INTERVAL
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def prepare(self) -> None:
        """Create the work directory and write prometheus.yml."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "prometheus.yml").write_text(config_yaml(self.targets, job=self.job,
                                                                 interval=self.interval))

    def command(self) -> list[str]:
        """The server's command line, to run in whatever namespace the caller enters.
        Raises PrometheusError when Prometheus is not installed."""
        binary = shutil.which(PROMETHEUS)
        if binary is None:
            raise PrometheusError("prometheus is not installed (scripts/setup installs it)")
        return [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.listen}", "--log.level=warn",
                "--storage.tsdb.retention.time=1h"]

    def argv(self) -> list[str]:
        """``command()`` inside ``netns`` (``ip netns exec`` execs it: the PID is the server's)."""
        command = self.command()
        return ["ip", "netns", "exec", self.netns, *command] if self.netns else command

    def start(self) -> subprocess.Popen[bytes]:
        """Write the config and start the server; its output goes to ``log``."""
        self.prepare()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def client(self) -> PrometheusClient:
        host, _, port = self.listen.rpartition(":")
        return PrometheusClient(host.strip("[]"), int(port), self.netns)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until ``/-/ready`` answers 200. Raises PrometheusError if it exits or times out."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self.proc.returncode}): "
                                      f"{self.log_tail()}")
            if client.ready():
                return
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass(frozen=True)
class Series:
    """One series of an instant query: its labels and value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class PrometheusClient:
    """Blocking client for Prometheus's HTTP API at HOST:PORT (inside ``netns`` if given)."""

    host: str
    port: int
    netns: str | None = None
    timeout: float = 5.0

    def _in_place(self, fn: Callable[[], T]) -> T:
        if self.netns is None:
            return fn()
        return in_netns(self.netns, fn)

    def _get(self, path: str) -> tuple[int, bytes]:
        def get() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        return self._in_place(get)

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            status, _ = self._get("/-/ready")
            return status == 200
        return False

    def query(self, expr: str) -> list[Series]:
        """An instant query's vector. Raises PrometheusError on an error answer."""
        try:
            status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        except OSError as exc:
            raise PrometheusError(f"prometheus at {self.host}:{self.port}: {exc}") from None
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError:
            raise PrometheusError(f"query {expr!r}: HTTP {status}, not JSON") from None
        if data.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {data.get('error', f'HTTP {status}')}")
        result = data["data"]
        if result.get("resultType") != "vector":
            raise PrometheusError(f"query {expr!r}: a {result.get('resultType')}, not a vector")
        return [Series(dict(item["metric"]), float(item["value"][1]))
                for item in result["result"]]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        _, body = self._get("/api/v1/targets")
        return list(json.loads(body)["data"]["activeTargets"])


# -- synthetic director state -----------------------------------------------------------------


def synthetic_snapshot(services: int = 2, realservers: int = 2, *, director: str = "lb1",
                       role: str = "ACTIVE", reason: str = "connection refused"
                       ) -> MetricsSnapshot:
    """A snapshot with one of everything (every family has samples): ``services`` services of
    ``realservers`` real servers each, every third real server down with ``reason``, the last
    one of each service unchecked."""
    service_records = []
    kernel = []
    probes = []
    latency = HistogramCounter(PROBE_BUCKETS)
    for value in (0.0004, 0.003, 0.02, 0.2, 3.0):
        latency.observe(value)
    for s in range(services):
        name = f"svc{s}"
        rs_records = []
        dests = []
        for r in range(realservers):
            rs = f"rs{r}"
            address = f"10.{s // 250}.{s % 250}.{r + 1}:80"
            health = (None if r == realservers - 1 else
                      HealthStatus(healthy=r % 3 != 1, reason="" if r % 3 != 1 else reason))
            rs_records.append(RealServerStatus(rs, address, 10, health))
            healthy = health is not None and health.healthy
            dests.append(KernelDest(rs, 10 if healthy else 0, active_conns=r, inactive_conns=2 * r,
                                    counters=KernelCounters(100 + r, 1000, 900, 64_000, 512_000)))
            probes.append(ProbeStats(f"http {address} /healthz", latency.data(),
                                     {ProbeFailure.REFUSED: r, ProbeFailure.TIMEOUT: 1},
                                     {Inconclusive.LATE_TIMEOUT: 1}))
        service_records.append(ServiceStatus(name, f"TCP 192.0.2.{s % 250}:80", "nat",
                                             tuple(rs_records)))
        kernel.append(KernelService(name, KernelCounters(1000, 10_000, 9_000, 640_000,
                                                         5_120_000), tuple(dests)))
    passes = HistogramCounter(RECONCILE_BUCKETS)
    for value in (0.002, 0.004, 0.03):
        passes.observe(value)
    record = DirectorRecord(
        director=director, cluster="lab", role=role, epoch=7, since=1_700_000_000.0,
        zookeeper="connected", vips=("192.0.2.10",), config=ConfigState("zk:/lvsctl/lab@v3", ""),
        services=tuple(service_records), last_reconcile={"planned": 0, "applied": 0},
        api="127.0.0.1:9180",
        transitions=(TransitionRecord(director, "transition", 1_700_000_000.0, state=role,
                                      epoch=7, reason="won the election" if role == "ACTIVE"
                                      else "lb1 leads"),),
    )
    return MetricsSnapshot(
        record=record, lease_seconds_left=1.5,
        transitions={(Role.ACTIVE, TransitionReason.WON_ELECTION): 1,
                     (Role.CANDIDATE, TransitionReason.STEPDOWN): 1},
        config_version=3, config_rejections=1, quorum={f"svc{s}": 1 for s in range(services)},
        kernel=tuple(kernel), probes=tuple(probes),
        checker=CheckerStats(0.002, 1, 0, 0, 0.8),
        reconcile=ReconcileStats(passes.data(), {OpKind.ADD_SERVICE: services,
                                                 OpKind.ADD_DEST: services * realservers}, 0),
        sync_role=SyncRole.MASTER if role == "ACTIVE" else SyncRole.BACKUP,
        peer=PeerStats(True, 120, {PeerReject.REPLAYED: 2}),
    )
