"""Benchmark: what one /metrics scrape costs a director with 100 services x 20 real servers.

Measured on one synthetic snapshot with every family filled (lvsctl.testbed.prometheus):

- a full scrape: the collector builds the families and prometheus_client writes the text
  (render_metrics), wall and CPU time, median of --repeat;
- the baseline in the same run: JSON-encoding the same director's /status record (what the
  /status handler does with the same data), so the figure reads as a ratio on any machine;
- the event loop's longest stall while scrapes run the way the director serves them
  (ScrapeCache: snapshot on the loop, text rendered in a thread), against the stall when the
  same render runs on the loop itself. A 1 ms ticker on the loop measures how late it fires.

The goal (issue 17): a scrape costs the director's loop under 20 ms.

    .venv/bin/python bench/metrics.py [--services 100] [--realservers 20] [--repeat 5]
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsctl.director.metrics import (  # noqa: E402
    BuildInfo,
    MetricsSnapshot,
    ScrapeCache,
    new_registry,
    render_metrics,
    render_snapshot,
)
from lvsctl.testbed.prometheus import synthetic_snapshot  # noqa: E402

BUILD = BuildInfo("bench", "3")
TICK = 0.001


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn()`` over ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - w) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    return statistics.median(walls), statistics.median(cpus)


async def longest_stall(scrape: Callable[[], object], scrapes: int) -> float:
    """The longest lateness (ms) of a 1 ms ticker on this loop while ``scrapes`` scrapes run
    one after another through ``scrape`` (a coroutine function or a plain one)."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(TICK)
            worst = max(worst, loop.time() - start - TICK)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    for _ in range(scrapes):
        result = scrape()
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(0.01)
    done.set()
    await task
    return worst * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--realservers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not (1 <= args.services <= 1000 and 1 <= args.realservers <= 100
            and 1 <= args.repeat <= 50):
        parser.error("bounds: --services 1..1000, --realservers 1..100, --repeat 1..50")

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    snapshot = synthetic_snapshot(args.services, args.realservers)
    registry = new_registry(lambda: snapshot, BUILD)
    body, _ = render_metrics(registry)
    lines = body.decode().splitlines()
    samples = sum(1 for line in lines if not line.startswith("#"))
    print(f"snapshot: {args.services} services x {args.realservers} real servers; exposition "
          f"{len(body) / 1e6:.1f} MB, {samples} samples")

    base_wall, base_cpu = timed(lambda: json.dumps(snapshot.record.to_json()).encode(),
                                args.repeat)
    collect_wall, _ = timed(lambda: list(registry.collect()), args.repeat)
    wall, cpu = timed(lambda: render_metrics(registry), args.repeat)
    print(f"baseline, /status JSON:      {base_wall:8.1f} ms wall {base_cpu:8.1f} ms CPU")
    print(f"families built (collect):    {collect_wall:8.1f} ms wall")
    print(f"full scrape (render_metrics):{wall:8.1f} ms wall {cpu:8.1f} ms CPU  "
          f"(ratio to baseline: {wall / base_wall:.0f}x wall, {cpu / base_cpu:.0f}x CPU)")

    scrapes = min(args.repeat, 5)
    # The machine's own noise over the same time span: the loop just sleeps for each render.
    idle = asyncio.run(longest_stall(lambda: asyncio.sleep(wall / 1000), scrapes))
    inline = asyncio.run(longest_stall(lambda: render_snapshot(snapshot, BUILD), scrapes))
    loop_cpu: list[float] = []

    def provider() -> MetricsSnapshot:
        # What the worker's provider does on the loop: build the snapshot from live state
        # (here from scratch, the most it can cost), measured in the loop thread's CPU time.
        start = time.thread_time()
        snap = synthetic_snapshot(args.services, args.realservers)
        loop_cpu.append((time.thread_time() - start) * 1000)
        return snap

    cache = ScrapeCache(provider, BUILD, max_age=0.0)
    offloaded = asyncio.run(longest_stall(cache.scrape, scrapes))
    print(f"loop stall, no scrape:       {idle:8.1f} ms (the machine's own noise, same span)")
    print(f"loop stall, render on loop:  {inline:8.1f} ms (longest of {scrapes} scrapes)")
    print(f"loop stall, ScrapeCache:     {offloaded:8.1f} ms (longest of {scrapes} scrapes; "
          f"{cache.renders} renders)")
    print(f"snapshot on the loop:        {statistics.median(loop_cpu):8.1f} ms CPU of the loop "
          f"thread (median of {len(loop_cpu)}; the render runs in a thread)")
    print(f"scrape cost to the loop: {statistics.median(loop_cpu):.1f} ms CPU, longest stall "
          f"{offloaded:.1f} ms against {idle:.1f} ms idle (goal < 20 ms)")


if __name__ == "__main__":
    main()
