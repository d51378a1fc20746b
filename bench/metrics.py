"""Benchmark: what one /metrics scrape costs the event loop of a director with 100 services x 20
real servers.

Measured on one synthetic snapshot with every family filled (lvsctl.testbed.prometheus), in one
run so every figure shares the machine's load of the moment:

- CPU milliseconds (median of --repeat): JSON-encoding the director's /status record (what the
  /status handler does with the same data: the baseline, so figures read as ratios on any
  machine), writing the exposition text (render_snapshot: prometheus_client's writer), and
  encoding the snapshot for the renderer process (encode_snapshot: what the loop pays);
- a loop-lag probe: a ticker on the loop sleeps 1 ms at a time and adds up how late it wakes,
  over --scrapes pairs of windows: one scrape (ScrapeCache: renderer process; then the
  previous design, the text rendered in a thread), then as long again with no scrape, so each
  pair shares the machine's load. The excess lateness per scrape is the time the scrape kept
  the loop from running; the loop thread's CPU over the windows (the ticker's own counted per
  tick) is how much of it was the loop's own work, and "held" its longest stretch between
  two ticks. On a loaded shared machine the lateness of the windows without scrapes is large
  and varies: use more pairs (--scrapes 12) for a figure to quote.

The provider returns a snapshot built beforehand: building it is the worker's part (copying its
live state), printed apart as "snapshot built from scratch", the most it can cost.

With --wired the provider is the worker's own (director/worker.py ``metrics_snapshot``, what
the API's /metrics serves): a Worker holding a generated cluster file of that size, every real
server checked (probe results fed through its stats), its reconcile pass run once on the fake
IPVS (so the kernel view names every dest); each scrape then takes a fresh snapshot of the
worker's state on the loop, as a live director does.

The goal: a scrape costs the director's loop under 20 ms.

    .venv/bin/python bench/metrics.py [--services 100] [--realservers 20] [--repeat 5]
                                      [--scrapes 5] [--wired]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsctl.core.config import parse_cluster  # noqa: E402
from lvsctl.core.model import Cluster, Health, HealthKey, ZooKeeperSettings  # noqa: E402
from lvsctl.core.node import Api, Node  # noqa: E402
from lvsctl.director.channel import KeeperState  # noqa: E402
from lvsctl.director.dataplane import Dataplane  # noqa: E402
from lvsctl.director.metrics import (  # noqa: E402
    BuildInfo,
    MetricsSnapshot,
    ScrapeCache,
    encode_snapshot,
    render_snapshot,
)
from lvsctl.director.worker import Worker  # noqa: E402
from lvsctl.healthcheck.result import CheckResult  # noqa: E402
from lvsctl.healthcheck.scheduler import plan_targets, target_label  # noqa: E402
from lvsctl.testbed.fake_ipvs import FakeIpvs  # noqa: E402
from lvsctl.testbed.prometheus import synthetic_snapshot  # noqa: E402

BUILD = BuildInfo("bench", "3")
TICK = 0.001
GOAL_MS = 20.0


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU milliseconds of ``fn()`` over ``repeat`` runs (this thread's CPU time)."""
    runs = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        runs.append((time.thread_time() - start) * 1000)
    return statistics.median(runs)


@dataclass
class Lag:
    """What the 1 ms ticker saw over the windows of one phase."""

    seconds: float = 0.0  # wall time of the windows
    ticks: int = 0
    late_ms: float = 0.0  # total lateness of the ticker's wake-ups
    longest_ms: float = 0.0  # the longest single lateness: the longest stall
    loop_cpu_ms: float = 0.0  # the loop thread's CPU time over the windows
    held_ms: float = 0.0  # the longest CPU stretch of the loop thread between two ticks

    def add(self, other: Lag) -> None:
        self.seconds += other.seconds
        self.ticks += other.ticks
        self.late_ms += other.late_ms
        self.loop_cpu_ms += other.loop_cpu_ms
        self.longest_ms = max(self.longest_ms, other.longest_ms)
        self.held_ms = max(self.held_ms, other.held_ms)


async def probe_lag(work: Callable[[], Awaitable[object]]) -> Lag:
    """Run ``work()`` on this loop beside a 1 ms ticker; what the ticker saw meanwhile."""
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    held: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        cpu = time.thread_time()
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(TICK)
            lateness.append(loop.time() - start - TICK)
            # The loop thread's CPU since the last tick: its own work (a scrape's encoding, the
            # ticker itself) that kept it from coming back; waits (for the GIL, for a CPU the
            # machine gives to others) show in the lateness only.
            now = time.thread_time()
            held.append(now - cpu)
            cpu = now

    cpu, wall = time.thread_time(), time.perf_counter()
    task = asyncio.create_task(ticker())
    await work()
    done.set()
    await task
    return Lag(time.perf_counter() - wall, len(lateness), sum(lateness) * 1000,
               max(lateness, default=0.0) * 1000, (time.thread_time() - cpu) * 1000,
               max(held, default=0.0) * 1000)


async def paired(scrape: Callable[[], Awaitable[object]], count: int) -> tuple[Lag, Lag]:
    """(with scrapes, without) over ``count`` pairs of windows: one scrape and its settling,
    then as long again with no scrape, so both halves of a pair share the machine's load."""
    busy, idle = Lag(), Lag()

    async def one() -> None:
        await scrape()
        await asyncio.sleep(0.05)

    for _ in range(count):
        window = await probe_lag(one)
        busy.add(window)
        idle.add(await probe_lag(partial(asyncio.sleep, window.seconds)))
    return busy, idle


def per_scrape(busy: Lag, idle: Lag, count: int) -> tuple[float, float]:
    """(excess lateness, excess loop CPU) per scrape in ms, against the windows without; the
    ticker's own CPU is counted per tick, as a loop that is held ticks less."""
    tick_cpu = idle.loop_cpu_ms / max(idle.ticks, 1)
    return ((busy.late_ms - idle.late_ms) / count,
            (busy.loop_cpu_ms - tick_cpu * busy.ticks) / count)


def wired_cluster(services: int, realservers: int) -> str:
    """A cluster file of ``services`` DR services of ``realservers`` real servers each."""
    lines = ["cluster: bench", "zookeeper: {hosts: ['127.0.0.1:2181']}", "directors:",
             "  - {name: lb1, address: 192.0.2.2/24, interface: eth0, "
             "peer: {address: 192.0.2.2, port: 7001}}",
             "  - {name: lb2, address: 192.0.2.3/24, interface: eth0, "
             "peer: {address: 192.0.2.3, port: 7002}}",
             "vips: [{address: 192.0.2.10, interface: eth0}]", "services:"]
    for s in range(services):
        lines += [f"  - name: svc{s}", "    vip: 192.0.2.10", f"    port: {1000 + s}",
                  "    forwarding: dr",
                  "    check: {type: http, path: /healthz, interval: 1s, timeout: 500ms}",
                  "    realservers:"]
        lines += [f"      - {{name: rs{s}-{r}, address: 10.{s // 250}.{s % 250}.{r + 1}}}"
                  for r in range(realservers)]
    return "\n".join(lines) + "\n"


def wired_worker(services: int, realservers: int, folder: Path) -> Worker:
    """A Worker holding a cluster of that size with every real server checked and one
    reconcile pass on the fake IPVS behind it (its metrics as a running director's)."""
    loaded = parse_cluster(wired_cluster(services, realservers), "bench.yaml@v7")
    node = Node(cluster="bench", director="lb1",
                zookeeper=ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 2.5, None),
                peer_secret_file=str(folder / "peer.secret"), api=Api("127.0.0.1", 0, None, False),
                ipvs="kernel", state_dir=str(folder / "state"), log_format="json",
                source=str(folder / "node.yaml"))
    health = {(svc.name, rs.name): Health(i % 3 != 1, None, "" if i % 3 != 1 else "HTTP 500")
              for svc in loaded.cluster.services for i, rs in enumerate(svc.realservers)}

    class Checks:
        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        def replace(self, cluster: Cluster) -> None: ...

        def snapshot(self) -> Mapping[HealthKey, Health]:
            return health

    worker = Worker(node, keeper_pid=0, store=_NoStore(), dataplane=Dataplane(FakeIpvs()),
                    make_health=lambda cluster, on_change: Checks())
    worker.apply_config(loaded)
    worker.health = Checks()
    worker.leader = KeeperState("ACTIVE", 7, time.time(), True, ("192.0.2.10",), True,
                                lease_until=time.monotonic() + 3600, peer_up=True,
                                peer_received=100)
    for check in plan_targets(loaded.cluster)[0]:
        for latency in (0.0004, 0.003, 0.02):
            worker.stats.probe(target_label(check), CheckResult(True, "HTTP 200", latency), False)
        worker.stats.probe(target_label(check), CheckResult(False, "HTTP 500", 0.01), False)
    worker.reconcile_if_due()
    return worker


class _NoStore:
    connected = False

    async def watch_config(self, on_data: Callable[[bytes | None], None]) -> None: ...

    def persist(self, entry: Mapping[str, Any], status: Mapping[str, Any]) -> None: ...

    async def close(self) -> None: ...


async def loop_phases(snapshot: MetricsSnapshot, count: int,
                      provider: Callable[[], MetricsSnapshot] | None = None) -> None:
    if provider is None:
        def provider() -> MetricsSnapshot:
            return snapshot

    async def threaded() -> None:
        # The previous design: snapshot on the loop, the text written in a thread.
        assert provider is not None
        await asyncio.to_thread(render_snapshot, provider(), BUILD)

    cache = ScrapeCache(provider, BUILD, max_age=0.0, timeout=60.0)
    try:
        start = time.perf_counter()
        await cache.scrape()  # starts the renderer process: once per director
        first = (time.perf_counter() - start) * 1000
        process = await paired(cache.scrape, count)
        thread = await paired(threaded, count)
        renders = cache.renders - 1
    finally:
        await cache.close()

    print(f"first scrape (starts the renderer process): {first:.0f} ms wall")
    print(f"loop-lag probe (1 ms ticker), {count} pairs of windows (one scrape, then as long "
          f"with none):")
    print(f"  {'windows':<30}{'wall s':>7}{'ticks':>7}{'late ms':>9}{'longest':>9}"
          f"{'held':>7}{'loop CPU':>9}{'late/scrape':>12}{'CPU/scrape':>11}")
    rows = [("ScrapeCache (process)", process), ("render in a thread (before)", thread)]
    for name, (busy, idle) in rows:
        late, cpu = per_scrape(busy, idle, count)
        for label, lag, figures in ((name, busy, f"{late:12.1f}{cpu:11.1f}"),
                                    ("  same span, no scrape", idle, "")):
            print(f"  {label:<30}{lag.seconds:7.2f}{lag.ticks:7d}{lag.late_ms:9.1f}"
                  f"{lag.longest_ms:9.1f}{lag.held_ms:7.1f}{lag.loop_cpu_ms:9.1f}{figures}")
    print("  (longest: the longest stall; held: the longest CPU stretch of the loop thread "
          "between two ticks)")
    busy, idle = process
    late, cpu = per_scrape(busy, idle, count)
    thread_late, _ = per_scrape(*thread, count)
    print(f"ScrapeCache renders: {renders} (max_age 0: every scrape renders)")
    print(f"scrape cost to the loop: held {busy.held_ms:.1f} ms at most (no scrape: "
          f"{idle.held_ms:.1f}), {cpu:.1f} ms of loop CPU per scrape; {late:.1f} ms late per "
          f"scrape, longest stall {busy.longest_ms:.1f} ms (no scrape: {idle.longest_ms:.1f}, "
          f"ratio {busy.longest_ms / max(idle.longest_ms, 0.1):.1f}); goal < {GOAL_MS:.0f} ms. "
          f"Render in a thread: {thread_late:.1f} ms late per scrape "
          f"({thread_late / max(late, 0.1):.1f}x), longest stall {thread[0].longest_ms:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--realservers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--wired", action="store_true",
                        help="scrape the worker's own provider (director/worker.py) holding a "
                             "cluster of that size")
    args = parser.parse_args()
    if not (1 <= args.services <= 1000 and 1 <= args.realservers <= 100
            and 1 <= args.repeat <= 50 and 1 <= args.scrapes <= 50):
        parser.error("bounds: --services 1..1000, --realservers 1..100, --repeat 1..50, "
                     "--scrapes 1..50")

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    snapshot = synthetic_snapshot(args.services, args.realservers)
    body, _ = render_snapshot(snapshot, BUILD)
    samples = sum(1 for line in body.decode().splitlines() if not line.startswith("#"))
    payload = encode_snapshot(snapshot)
    print(f"snapshot: {args.services} services x {args.realservers} real servers; exposition "
          f"{len(body) / 1e6:.1f} MB, {samples} samples; encoded snapshot "
          f"{len(payload) / 1e3:.0f} kB")

    base = cpu_ms(lambda: json.dumps(snapshot.record.to_json()).encode(), args.repeat)
    built = cpu_ms(lambda: synthetic_snapshot(args.services, args.realservers), args.repeat)
    render = cpu_ms(lambda: render_snapshot(snapshot, BUILD), args.repeat)
    encode = cpu_ms(lambda: encode_snapshot(snapshot), args.repeat)
    print(f"CPU ms, median of {args.repeat}:")
    print(f"  baseline, /status JSON:             {base:8.1f}")
    print(f"  snapshot built from scratch:        {built:8.1f}  (the worker's provider, at most)")
    print(f"  text written (render_snapshot):     {render:8.1f}  ({render / base:.0f}x baseline; "
          f"in the renderer process)")
    print(f"  snapshot encoded (encode_snapshot): {encode:8.1f}  ({encode / base:.1f}x baseline, "
          f"{render / encode:.0f}x less than the text; on the loop)")
    if not args.wired:
        asyncio.run(loop_phases(snapshot, args.scrapes))
        return
    with tempfile.TemporaryDirectory(prefix="lvsctl-bench-") as tmp:
        async def wired() -> None:
            worker = wired_worker(args.services, args.realservers, Path(tmp))
            live = worker.metrics_snapshot()
            body, _ = render_snapshot(live, BUILD)
            samples = sum(1 for line in body.decode().splitlines() if not line.startswith("#"))
            taken = cpu_ms(worker.metrics_snapshot, args.repeat)
            encoded = cpu_ms(lambda: encode_snapshot(worker.metrics_snapshot()), args.repeat)
            print(f"wired: the worker's provider (metrics_snapshot), {samples} samples "
                  f"({len(body) / 1e6:.1f} MB):")
            print(f"  snapshot of the worker's state:     {taken:8.1f}  CPU ms, median of "
                  f"{args.repeat} (on the loop)")
            print(f"  snapshot taken and encoded:         {encoded:8.1f}  CPU ms (what the loop "
                  f"pays per scrape)")
            await loop_phases(live, args.scrapes, worker.metrics_snapshot)

        asyncio.run(wired())


if __name__ == "__main__":
    main()
