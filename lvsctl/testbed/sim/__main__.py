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

from lvsctl.testbed.sim.schedule import RandomChooser, Schedule, draw_schedule
from lvsctl.testbed.sim.world import SimulationError, Stats, Violation, run_schedule


def schedule_at(seed: int, index: int) -> Schedule:
    """Schedule ``index`` of the run seeded ``seed``."""
    return draw_schedule(RandomChooser(random.Random(f"{seed}:{index}")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvsctl.testbed.sim",
                                     description="Explore schedules of the simulated pair.")
    parser.add_argument("--schedules", type=int, default=100, help="how many (default 100)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="run for this long instead (wall-clock minutes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, default=None, help="replay one schedule index")
    parser.add_argument("--stop-at-first", action="store_true")
    args = parser.parse_args(argv)

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
        schedule = schedule_at(args.seed, index)
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
    print(f"schedules {total.schedules}, simulated hours {total.simulated / 3600:.2f}, "
          f"violations {len(violations)}, wall {elapsed:.0f} s, seed {args.seed}")
    for index, first in violations[:20]:
        print(f"  schedule {index}: {first}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
