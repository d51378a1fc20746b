"""The simulation itself: its clock and loop, and that it can fail (a planted double hold is
caught) and is not vacuous (without faults one director holds the VIPs all along)."""

from __future__ import annotations

import asyncio

import pytest

from lvsctl.testbed.sim import schedule as S
from lvsctl.testbed.sim.clock import Agenda
from lvsctl.testbed.sim.loop import VirtualLoop
from lvsctl.testbed.sim.world import World, run_schedule


def test_virtual_loop_runs_timers_in_virtual_time_only_when_stepped() -> None:
    agenda = Agenda()
    loop = VirtualLoop(lambda: agenda.now)
    woke: list[float] = []

    async def sleeper() -> None:
        await asyncio.sleep(2.5)
        woke.append(agenda.now)

    loop.create_task(sleeper())
    loop.step()  # starts the task: it now waits for its timer
    assert loop.next_due() == pytest.approx(2.5)
    agenda.now = 2.0
    loop.step()
    assert woke == []
    agenda.now = 2.5
    loop.step()
    loop.step()
    assert woke == [2.5]
    loop.close()


def test_without_faults_one_director_holds_the_vips_all_along() -> None:
    stats = run_schedule(S.Schedule(seed=7, duration=20.0))
    assert stats.held > 19.0


def test_a_vip_on_both_hosts_is_caught() -> None:
    world = World(S.Schedule(seed=3, duration=10.0))
    intruder = world.hosts[1].kernel
    # At t=5 the standby's kernel gets the VIP behind the directors' backs.
    world.agenda.at(5.0, lambda: intruder.replace("192.0.2.10", "eth0", 30))
    with pytest.raises(AssertionError, match=r"t=5\.000: VIP 192\.0\.2\.10 held by lb1/eth0, "
                                             r"lb2/eth0"):
        world.run()


def test_the_same_schedule_runs_the_same_way() -> None:
    schedule = S.Schedule(seed=11, duration=12.0, faults=(
        S.Fault(3.0, S.ZK_CUT, "active", 2.0), S.Fault(6.0, S.FREEZE, "lb2", 1.0)))
    first, second = World(schedule), World(schedule)
    first.run()
    second.run()
    assert first.events == second.events
    assert [h.kernel.history for h in first.hosts] == [h.kernel.history for h in second.hosts]
