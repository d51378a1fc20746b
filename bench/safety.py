"""Safety drills for many rounds: the director pair on a three-server ZooKeeper ensemble
(lvsctl/testbed/safety.py), every drill once per round on one bed, "never a VIP on both
directors" checked from kernel address events, a client probing the VIP.

Prints a row per drill (rounds, passed, worst overlap, worst client outage, errors) and, as
its last line, ``rounds R, worst overlap X ms``. The peer-link drill needs sch_netem: when
this kernel lacks it or IPVS (the test bed's kernel), the bench runs itself in the kernel VM.
Round k delays lb2's beats by the k-th of --delays (cycling), around the standby's promise.

    .venv/bin/python bench/safety.py [--rounds N] [--drill NAME ...] [--json] [--here]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsctl.testbed import vm  # noqa: E402
from lvsctl.testbed.netns import Lab  # noqa: E402
from lvsctl.testbed.safety import (  # noqa: E402
    DRILLS,
    DrillResult,
    SafetyBed,
    has_netem,
    results_table,
    run_drill,
)

MARK = "SAFETY-JSON "
NETEM_DRILL = "peer_netem"


def progress(line: str) -> None:
    print(f"safety: {line}", file=sys.stderr, flush=True)


def run_here(rounds: int, drills: list[str], delays: list[float]) -> list[DrillResult]:
    results: list[DrillResult] = []
    lab = Lab()
    bed = SafetyBed(lab, progress=progress)
    try:
        bed.build()
        for k in range(rounds):
            bed.timings = dataclasses.replace(bed.timings, netem_delay=delays[k % len(delays)])
            for name in drills:
                result = run_drill(bed, name)
                progress(f"round {k + 1}/{rounds} {result.summary()}")
                results.append(result)
    finally:
        bed.close()
        lab.close()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every drill")
    parser.add_argument("--drill", action="append", choices=sorted(DRILLS),
                        help="run only this drill (repeatable; default: all)")
    parser.add_argument("--delays", default="2.0,2.5,3.0,3.5",
                        help="netem delays (s) of lb2's beats, one per round, cycling")
    parser.add_argument("--json", action="store_true", help="the results as one JSON object")
    parser.add_argument("--here", action="store_true",
                        help="run on this kernel even without IPVS or sch_netem (the pair needs "
                             "neither; without sch_netem the peer-link drill is left out)")
    parser.add_argument("--vm-timeout", type=float, default=7200.0,
                        help="seconds for the whole run in the kernel VM")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: expected a whole number of at least 1")
    try:
        args.delay_list = [float(d) for d in args.delays.split(",")]
    except ValueError:
        parser.error(f"--delays {args.delays!r}: expected seconds separated by commas")
    if not args.delay_list or min(args.delay_list) < 0:
        parser.error(f"--delays {args.delays!r}: expected seconds of at least 0")
    return args


def report(results: list[dict[str, object]], rounds: int, as_json: bool, seconds: float) -> None:
    rows = results_table([DrillResult(**{**r, "notes": tuple(r["notes"])})  # type: ignore[arg-type]
                          for r in results])
    worst = max((float(r["overlap"]) for r in results), default=0.0) * 1000  # type: ignore[arg-type]
    if as_json:
        print(json.dumps({"rounds": rounds, "worst_overlap_ms": round(worst, 1),
                          "seconds": round(seconds, 1), "drills": rows,
                          "results": results}, indent=2))
        return
    print(f"{'drill':<26} {'rounds':>6} {'passed':>6} {'worst overlap':>14} "
          f"{'worst outage':>13} {'errors':>6}")
    for row in rows:
        print(f"{row['drill']:<26} {row['rounds']:>6} {row['passed']:>6} "
              f"{row['worst_overlap_ms']:>11.0f} ms {row['worst_outage_ms']:>10.0f} ms "
              f"{row['errors']:>6}")
    print(f"(took {seconds:.0f} s)")
    print(f"rounds {rounds}, worst overlap {worst:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    drills = args.drill or list(DRILLS)
    if args.here and not has_netem():
        if args.drill and NETEM_DRILL in args.drill:
            print(f"safety: --drill {NETEM_DRILL} needs sch_netem, which this kernel lacks: "
                  "leave out --here to run in the kernel VM", file=sys.stderr)
            return 2
        drills = [d for d in drills if d != NETEM_DRILL]
        progress(f"this kernel has no sch_netem: {NETEM_DRILL} left out")
    if args.guest:
        t0 = time.monotonic()
        results = run_here(args.rounds, drills, args.delay_list)
        print(MARK + json.dumps({"seconds": time.monotonic() - t0,
                                 "results": [dataclasses.asdict(r) for r in results]}),
              flush=True)
        return 0
    print(f"command: {shlex.join([sys.executable, *sys.argv])}", file=sys.stderr)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    progress(f"{os.uname().release}, {os.cpu_count()} CPUs, load {load}")
    guest_argv = [sys.executable, str(Path(__file__).resolve()), "--guest", "--rounds",
                  str(args.rounds), "--delays", args.delays,
                  *(f"--drill={d}" for d in drills)]
    if args.here or (vm.kernel_has_ipvs() and has_netem()):
        import subprocess

        done = subprocess.run(guest_argv, stdout=subprocess.PIPE, text=True, check=False)
        output, code = done.stdout, done.returncode
    else:
        progress("this kernel has no IPVS or no sch_netem: running the drills in the kernel VM")
        result = vm.run(guest_argv, cwd=ROOT, options=vm.VmOptions(timeout=args.vm_timeout),
                        stream=sys.stderr.buffer, progress=progress)
        output, code = result.output, result.exit_code
    lines = [line for line in output.splitlines() if line.startswith(MARK)]
    if code != 0 or not lines:
        print(f"safety: the drills failed (exit {code})", file=sys.stderr)
        return 1
    found = json.loads(lines[-1][len(MARK):])
    report(found["results"], args.rounds, args.json, found["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
