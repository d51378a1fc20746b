"""Kernel VM figures: prepare, boot to the first command, a trivial command, and how much slower
the guest is than the host for what kernel tests do (start Python and import pyroute2, start
Java, start a standalone ZooKeeper), measured on both sides in the same run (ratios).

    .venv/bin/python bench/vm.py [--fresh] [--repeat N]

--fresh also times a first prepare (download, unpack, depmod, vmlinux, initramfs) into an
empty temporary cache folder. Times inside the guest are read from the guest's clock.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsctl.testbed import vm  # noqa: E402

MARK = "BENCH-JSON "
PYTHON = sys.executable


def _quiet(line: str) -> None:
    """Progress lines would interleave with the figures."""


def _timed(fn: Callable[[], object]) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def _median_run(argv: list[str], repeat: int) -> float:
    return statistics.median(
        _timed(lambda: subprocess.run(argv, check=True, capture_output=True))
        for _ in range(repeat)
    )


def measure_here(repeat: int) -> dict[str, float]:
    """The same figures on whichever kernel this runs (host, or guest with --guest)."""
    from lvsctl.testbed.zookeeper import ZooKeeperServer

    figures = {
        "python -c pass": _median_run([PYTHON, "-c", "pass"], repeat),
        "python -c 'import pyroute2'": _median_run([PYTHON, "-c", "import pyroute2"], repeat),
        "java -version": _median_run(["java", "-version"], repeat),
    }
    server = ZooKeeperServer(tick_ms=200)
    try:
        figures["ZooKeeper standalone ready"] = _timed(lambda: server.start(timeout=180))
    finally:
        server.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="also time a first prepare")
    parser.add_argument("--repeat", type=int, default=3, help="runs per process-start figure")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guest:
        print(MARK + json.dumps(measure_here(args.repeat)), flush=True)
        return 0

    print(f"command: {' '.join([PYTHON, *sys.argv])}")
    # Other work on the machine slows the TCG guest most: say how busy it was.
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    if args.fresh:
        with tempfile.TemporaryDirectory(prefix="lvsctl-vm-bench-") as tmp:
            took = _timed(lambda: vm.prepare(tmp, progress=_quiet))
        print(f"first prepare (download, unpack, depmod, vmlinux, initramfs): {took:.1f} s")
    print(f"cached prepare: {_timed(lambda: vm.prepare(progress=_quiet)) * 1000:.0f} ms")

    trivial = [vm.run(["true"], progress=_quiet) for _ in range(args.repeat)]
    boots = [r.boot_seconds for r in trivial]
    totals = [r.total_seconds for r in trivial]
    print(f"boot to first command: median {statistics.median(boots):.1f} s "
          f"(min {min(boots):.1f}, max {max(boots):.1f}, n={len(boots)})")
    print(f"'true' in the VM, total: median {statistics.median(totals):.1f} s "
          f"(min {min(totals):.1f}, max {max(totals):.1f}, n={len(totals)})")

    host = measure_here(args.repeat)
    result = vm.run([PYTHON, str(Path(__file__).resolve()), "--guest", "--repeat",
                     str(args.repeat)], cwd=ROOT, stream=io.BytesIO(), progress=_quiet)
    lines = [ln for ln in result.output.splitlines() if ln.startswith(MARK)]
    if result.exit_code != 0 or not lines:
        print(f"guest measurement failed (exit {result.exit_code}):\n{result.output}")
        return 1
    guest = json.loads(lines[-1][len(MARK):])
    print()
    print(f"{'figure':<32} {'host':>9} {'guest':>9} {'guest/host':>11}")
    for name, on_host in host.items():
        on_guest = guest[name]
        print(f"{name:<32} {on_host:>8.2f}s {on_guest:>8.2f}s {on_guest / on_host:>10.1f}x")
    print(f"(the guest run took {result.total_seconds:.1f} s, its boot {result.boot_seconds:.1f} s;"
          f" medians of {args.repeat} for process starts)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
