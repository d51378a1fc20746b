"""Benchmark: what one /metrics scrape costs the event loop of a director with 100 services x 20
real servers.

Measured on one synthetic snapshot with every family filled (lvsctl.testbed.prometheus), in one
run so every figure shares the machine's load of the moment:

- CPU milliseconds (median of --repeat): JSON-encoding the director's /status record (what the
  /status handler does with the same data: the baseline, so figures read as ratios on any
  machine), writing the exposition text (render_snapshot: prometheus_client's writer), and
  encoding the snapshot for the renderer process (encode_snapshot: what the loop pays);
- a loop-lag probe: a ticker on the loop sleeps 1 ms at a time and adds up how late it wakes,
  with no scrape (the baseline), while --scrapes scrapes run one after another with the text
  rendered in a thread (the previous design), and with ScrapeCache (renderer process). The
  excess over the baseline, per scrape, is the time the scrape kept the loop from running; the
  loop thread's CPU time over the same span says how much of it was the loop's own work.

The provider returns a snapshot built beforehand: building it is the worker's part (copying its
live state), printed apart as "snapshot built from scratch", the most it can cost.

The goal (issue 17): a scrape costs the director's loop under 20 ms.

    .venv/bin/python bench/metrics.py [--services 100] [--realservers 20] [--repeat 5]
                                      [--scrapes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsctl.director.metrics import (  # noqa: E402
    BuildInfo,
    MetricsSnapshot,
    ScrapeCache,
    encode_snapshot,
    render_snapshot,
)
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


@dataclass(frozen=True)
class Lag:
    """What the ticker saw over one phase."""

    seconds: float  # the phase's wall time
    ticks: int
    late_ms: float  # total lateness of the ticker's wake-ups
    longest_ms: float  # the longest single lateness
    loop_cpu_ms: float  # the loop thread's CPU time over the phase

    def late_per_second(self) -> float:
        return self.late_ms / self.seconds


async def probe_lag(work: Callable[[], Awaitable[object]]) -> Lag:
    """Run ``work()`` on this loop beside a 1 ms ticker; what the ticker saw meanwhile."""
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(TICK)
            lateness.append(loop.time() - start - TICK)

    cpu, wall = time.thread_time(), time.perf_counter()
    task = asyncio.create_task(ticker())
    await work()
    done.set()
    await task
    return Lag(time.perf_counter() - wall, len(lateness), sum(lateness) * 1000,
               max(lateness) * 1000, (time.thread_time() - cpu) * 1000)


async def scrapes(scrape: Callable[[], Awaitable[object]], count: int) -> None:
    for _ in range(count):
        await scrape()
        await asyncio.sleep(0.01)


def per_scrape(phase: Lag, base: Lag, count: int) -> tuple[float, float]:
    """(excess lateness, excess loop CPU) per scrape in ms, against the baseline's rate."""
    late = (phase.late_ms - base.late_per_second() * phase.seconds) / count
    cpu = (phase.loop_cpu_ms - base.loop_cpu_ms / base.seconds * phase.seconds) / count
    return late, cpu


async def loop_phases(snapshot: MetricsSnapshot, count: int) -> None:
    def provider() -> MetricsSnapshot:
        return snapshot

    async def threaded() -> None:
        # The previous design: snapshot on the loop, the text written in a thread.
        await asyncio.to_thread(render_snapshot, provider(), BUILD)

    cache = ScrapeCache(provider, BUILD, max_age=0.0, timeout=60.0)
    try:
        start = time.perf_counter()
        await cache.scrape()  # starts the renderer process: once per director
        first = (time.perf_counter() - start) * 1000
        thread = await probe_lag(lambda: scrapes(threaded, count))
        process = await probe_lag(lambda: scrapes(cache.scrape, count))
        base = await probe_lag(lambda: asyncio.sleep(max(process.seconds, thread.seconds)))
        renders = cache.renders - 1
    finally:
        await cache.close()

    print(f"first scrape (starts the renderer process): {first:.0f} ms wall")
    print(f"loop-lag probe (1 ms ticker), {count} scrapes per phase, one after another:")
    print(f"  {'phase':<24}{'wall s':>8}{'ticks':>8}{'late ms':>10}{'longest':>10}"
          f"{'loop CPU':>10}{'late/scrape':>13}{'CPU/scrape':>12}")
    rows = [("no scrape (baseline)", base, None), ("render in a thread", thread, count),
            ("ScrapeCache (process)", process, count)]
    for name, lag, n in rows:
        late, cpu = per_scrape(lag, base, n) if n else (0.0, 0.0)
        print(f"  {name:<24}{lag.seconds:8.2f}{lag.ticks:8d}{lag.late_ms:10.1f}"
              f"{lag.longest_ms:10.1f}{lag.loop_cpu_ms:10.1f}{late:13.1f}{cpu:12.1f}")
    late, cpu = per_scrape(process, base, count)
    thread_late, _ = per_scrape(thread, base, count)
    print(f"ScrapeCache renders: {renders} (max_age 0: every scrape renders)")
    print(f"scrape cost to the loop: {late:.1f} ms late per scrape ({cpu:.1f} ms of it the loop "
          f"thread's CPU), longest stall {process.longest_ms:.1f} ms against "
          f"{base.longest_ms:.1f} ms with no scrape; goal < {GOAL_MS:.0f} ms "
          f"({late / GOAL_MS:.2f} of it); render in a thread: {thread_late:.1f} ms per scrape "
          f"({thread_late / max(late, 0.1):.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--realservers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=5)
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
    asyncio.run(loop_phases(snapshot, args.scrapes))


if __name__ == "__main__":
    main()
