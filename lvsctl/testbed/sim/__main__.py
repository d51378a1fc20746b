"""The long run: ``python -m lvsctl.testbed.sim [--schedules N | --minutes M] [--seed S]``.

Draws schedules from a seeded generator (schedule i of seed S is always the same), runs each,
and prints progress, then one line: schedules explored, simulated hours, violations. Each
violation is printed with its schedule and the story of the run, and can be replayed with
``--only I``. Exits 1 when any schedule broke the invariant, 2 when the simulation itself
failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from collections.abc import Sequence

from lvsctl.testbed.sim.known import KNOWN
from lvsctl.testbed.sim.schedule import FAULT_KINDS, RandomChooser, Schedule, draw_schedule
from lvsctl.testbed.sim.world import SimulationError, Stats, Violation, run_schedule


def schedule_at(seed: int, index: int, kinds: Sequence[str] = FAULT_KINDS) -> Schedule:
    """Schedule ``index`` of the run seeded ``seed``."""
    return draw_schedule(RandomChooser(random.Random(f"{seed}:{index}")), kinds=kinds)


def replay_known(name: str) -> int:
    if name not in KNOWN:
        for known, (why, _schedule) in KNOWN.items():
            print(f"{known}: {why}")
        return 0 if name == "list" else 2
    why, schedule = KNOWN[name]
    print(f"{name}: {why}\n{schedule.describe()}")
    try:
        stats = run_schedule(schedule)
    except Violation as exc:
        print(f"broke the invariant:\n{exc}")
        return 1
    print(f"held: no violation in {stats.simulated:g} simulated seconds "
          f"(a VIP held {stats.held:.1f} s of them)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvsctl.testbed.sim",
                                     description="Explore schedules of the simulated pair.")
    parser.add_argument("--schedules", type=int, default=100, help="how many (default 100)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="run for this long instead (wall-clock minutes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, default=None, help="replay one schedule index")
    parser.add_argument("--stop-at-first", action="store_true")
    parser.add_argument("--exclude", action="append", default=[], choices=FAULT_KINDS,
                        help="draw no fault of this kind (repeatable)")
    parser.add_argument("--known", metavar="NAME", default=None,
                        help="replay a named schedule (lvsctl/testbed/sim/known.py); 'list'")
    args = parser.parse_args(argv)
    # Coroutines of killed simulated processes are never finished: that is what a kill is.
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
    if args.known is not None:
        return replay_known(args.known)

    kinds = [k for k in FAULT_KINDS if k not in args.exclude]
    total = Stats(schedules=0)
    violations: list[tuple[int, str]] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60 if args.minutes is not None else None
    indexes = [args.only] if args.only is not None else range(10**12)
    for count, index in enumerate(indexes):
        if deadline is None and args.only is None and count >= args.schedules:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        schedule = schedule_at(args.seed, index, kinds)
        try:
            total.add(run_schedule(schedule))
        except Violation as exc:
            total.schedules += 1
            total.simulated += schedule.duration
            violations.append((index, str(exc).splitlines()[0]))
            print(f"--- schedule {index} (seed {args.seed}) broke the invariant:\n{exc}\n",
                  flush=True)
            if args.stop_at_first:
                break
        except SimulationError as exc:
            print(f"--- schedule {index} (seed {args.seed}): the simulation failed: {exc}\n"
                  f"{schedule.describe()}", flush=True)
            return 2
        if total.schedules % 50 == 0:
            print(f"... {total.schedules} schedules, {total.simulated / 3600:.2f} simulated "
                  f"hours, {len(violations)} violations, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    elapsed = time.monotonic() - started
    excluded = f", without {'/'.join(args.exclude)}" if args.exclude else ""
    print(f"schedules {total.schedules}, simulated hours {total.simulated / 3600:.2f}, "
          f"VIP held {100 * total.held / max(total.simulated, 1e-9):.0f}% of the time, "
          f"violations {len(violations)}, transient double holds {total.transient}, "
          f"tolerated after an external znode delete {total.tolerated}, "
          f"wall {elapsed:.0f} s, seed {args.seed}{excluded}")
    for index, first in violations[:20]:
        print(f"  schedule {index}: {first}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
