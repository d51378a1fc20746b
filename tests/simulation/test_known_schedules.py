"""The named schedules of lvsctl/testbed/sim/known.py, one per hole that was found in the
leadership rules: each broke the invariant before its fix and must hold now."""

from __future__ import annotations

import pytest

from lvsctl.testbed.sim.known import KNOWN
from lvsctl.testbed.sim.world import run_schedule


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_schedule_holds_the_invariant(name: str) -> None:
    _why, schedule = KNOWN[name]
    stats = run_schedule(schedule)  # raises Violation, with the run's story, on a breach
    # Not vacuous: somebody held the VIPs for most of the run (before and after the faults).
    assert stats.held > schedule.duration / 3, f"a VIP was held only {stats.held:.1f} s"
