"""The scheduler against real listeners: one probe per shared target, rise/fall, fan-out,
config replacement keeping state, the watchdog, and the adaptive concurrency limit. Every test
runs on asyncio's own loop and on uvloop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import Cluster, Health
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.healthcheck.hysteresis import Status
from lvsctl.healthcheck.scheduler import MIN_SLOTS, UNCHECKED, HealthChange, Scheduler, Slots
from tests.support.listeners import CLUSTER_HEAD, ERROR, OK, HttpListener
from tests.support.loops import each_loop  # noqa: F401  (runs every test on both loops)

T = TypeVar("T")


def service(name: str, vip: str, port: int, check: str, realservers: str) -> str:
    return (f"  - {{name: {name}, vip: {vip}, port: {port}, forwarding: dr, check: {check},\n"
            f"     realservers: [{realservers}]}}\n")


def cluster_of(*services: str) -> Cluster:
    return parse_cluster(CLUSTER_HEAD + "".join(services), "test.yaml").cluster


# A loopback listener answers in well under a millisecond, but a loaded machine may hold the
# test's loop back for a while: the timeout leaves room for that, so a failure counted here is
# always the listener's answer.
def timing(path: str, port: int) -> str:
    return (f"{{type: http, path: {path}, port: {port}, interval: 0.5, timeout: 0.45, rise: 2, "
            f"fall: 2, warmup: 0}}")


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), 180))


async def until(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_shared_target_is_probed_once_and_fans_out_rise_and_fall() -> None:
    async def go() -> None:
        server = await HttpListener().start()
        rs = "{name: r1, address: 127.0.0.1}"
        cluster = cluster_of(
            service("a", "192.0.2.10", 80, timing("/h", server.port), rs),
            service("b", "192.0.2.11", 80, timing("/h", server.port), rs),
            service("c", "192.0.2.10", 81, timing("/h", server.port), rs),
            service("d", "192.0.2.10", 82, timing("/other", server.port), rs),
        )
        changes: list[tuple[HealthChange, int, int]] = []

        def seen(change: HealthChange) -> None:
            changes.append((change, server.served[OK], server.served[ERROR]))

        async with Checkers() as checkers:
            scheduler = Scheduler(cluster, checkers, on_change=seen)
            await scheduler.start()
            try:
                await until(lambda: len(scheduler.snapshot()) == 4)
                first = {c.key: c.health for c, _, _ in changes}
                assert first == {(s, "r1"): Health(True, None, "HTTP 200") for s in "abcd"}

                # Fail: after exactly `fall` failing responses every key of the shared target
                # goes down, at the same moment.
                changes.clear()
                server.behaviour = ERROR
                await until(lambda: len(changes) == 4)
                down = {c.key: (c.health, c.previous, errors) for c, _, errors in changes}
                reason = "HTTP 500, expected 200"
                assert {k: v[0] for k, v in down.items()} == {
                    (s, "r1"): Health(False, None, reason) for s in "abcd"}
                assert all(v[1] == Health(True, None, "HTTP 200") for v in down.values())
                # Two targets (/h and /other) each needed `fall` = 2 failures.
                assert max(v[2] for v in down.values()) <= 4
                assert len({c.at for c, _, _ in changes if c.key[0] in "abc"}) == 1

                # Recover: `rise` = 2 successes bring each target back.
                changes.clear()
                oks_before = server.served[OK]
                server.behaviour = OK
                await until(lambda: len(changes) == 4)
                assert all(c.health.healthy for c, _, _ in changes)
                assert max(oks for _, oks, _ in changes) - oks_before <= 4

                # One probe per (address, port, check spec): the server saw exactly as many
                # requests per path as the scheduler ran rounds for that target.
                await scheduler.stop()
                views = {v.check.kind.path: v for v in scheduler.targets()}  # type: ignore[union-attr]
                assert set(views) == {"/h", "/other"}
                assert sorted(views["/h"].keys) == [("a", "r1"), ("b", "r1"), ("c", "r1")]
                assert server.requests["/h"] == views["/h"].rounds
                assert server.requests["/other"] == views["/other"].rounds
                assert views["/h"].rounds >= 5  # first decision, fall = 2, rise = 2
            finally:
                await scheduler.stop()
                await server.close()

    run(go)


def test_fall_counts_consecutive_failures_exactly() -> None:
    async def go() -> None:
        server = await HttpListener().start()
        check = (f"{{type: http, port: {server.port}, interval: 0.5, timeout: 0.45, rise: 3, "
                 "fall: 3, warmup: 0}")
        cluster = cluster_of(service("a", "192.0.2.10", 80, check,
                                     "{name: r1, address: 127.0.0.1}"))
        changes: list[tuple[HealthChange, int, int]] = []
        async with Checkers() as checkers:
            scheduler = Scheduler(
                cluster, checkers,
                on_change=lambda c: changes.append((c, server.served[OK], server.served[ERROR])),
            )
            async with scheduler:
                await until(lambda: len(changes) == 1)
                server.behaviour = ERROR
                await until(lambda: len(changes) == 2)
                server.behaviour = OK
                oks = server.served[OK]
                await until(lambda: len(changes) == 3)
        await server.close()
        assert [c.health.healthy for c, _, _ in changes] == [True, False, True]
        assert changes[1][2] == 3  # down on the third failing response
        assert changes[2][1] - oks == 3  # up again on the third good one
        assert changes[1][0].health.reason == "HTTP 500, expected 200"

    run(go)


def test_replace_keeps_state_of_unchanged_targets() -> None:
    async def go() -> None:
        server = await HttpListener().start()
        rs = "{name: r1, address: 127.0.0.1}"
        old = cluster_of(
            service("a", "192.0.2.10", 80, timing("/h", server.port), rs),
            service("b", "192.0.2.11", 80, timing("/h", server.port), rs),
        )
        new = cluster_of(
            service("a", "192.0.2.10", 80, timing("/h", server.port), rs),
            service("n", "192.0.2.11", 80, timing("/h", server.port), rs),
            service("p", "192.0.2.10", 90, timing("/p", server.port), rs),
            "  - {name: u, vip: 192.0.2.10, port: 91, forwarding: dr,"
            " realservers: [{name: r1, address: 127.0.0.1}]}\n",
        )
        changes: list[HealthChange] = []
        async with Checkers() as checkers:
            scheduler = Scheduler(old, checkers, on_change=changes.append)
            async with scheduler:
                await until(lambda: len(scheduler.snapshot()) == 2)
                (before,) = scheduler.targets()
                changes.clear()
                scheduler.replace(new)
                # The kept target's decided state is announced for its new key at once; the
                # unchecked key is healthy at once; the new target decides after its probe.
                announced = {c.key: c for c in changes}
                assert set(announced) == {("n", "r1"), ("u", "r1")}
                assert announced["n", "r1"].previous is None
                assert announced["n", "r1"].health == Health(True, None, "HTTP 200")
                assert announced["u", "r1"].health == UNCHECKED
                assert ("b", "r1") not in scheduler.snapshot()
                kept = {v.check.kind.path: v for v in scheduler.targets()}  # type: ignore[union-attr]
                assert kept["/h"].state.since == before.state.since
                assert kept["/h"].rounds >= before.rounds
                assert kept["/h"].keys == (("a", "r1"), ("n", "r1"))
                await until(lambda: ("p", "r1") in scheduler.snapshot())
        await server.close()
        assert server.requests["/p"] >= 1

    run(go)


def test_changes_stream_and_dynamic_weight(tmp_path: Path) -> None:
    script = tmp_path / "weight.py"
    state = tmp_path / "state"
    script.write_text("import sys; sys.exit(int(open(sys.argv[1]).read()))\n")
    state.write_text("12")
    check = (f"{{type: misc, command: [{sys.executable}, {script}, {state}], dynamic: true, "
             "interval: 1, timeout: 0.9, rise: 1, fall: 1, warmup: 0}")
    cluster = cluster_of(service("a", "192.0.2.10", 80, check, "{name: r1, address: 127.0.0.1}"))

    async def go() -> list[HealthChange]:
        seen: list[HealthChange] = []
        async with Checkers() as checkers:
            scheduler = Scheduler(cluster, checkers)
            stream = scheduler.changes()  # subscribed from here on, before the first probe
            async with scheduler:
                async for change in stream:
                    seen.append(change)
                    if len(seen) == 1:
                        state.write_text("5")
                    elif len(seen) == 2:
                        state.write_text("1")
                    else:
                        break
        return seen

    seen = run(go)
    assert [(c.health.healthy, c.health.weight) for c in seen] == [(True, 10), (True, 3),
                                                                  (False, None)]
    assert seen[1].health.reason == "exit 5: weight 3"
    assert seen[2].health.reason == "exit 1"


def test_watchdog_reports_rounds_and_notices_starved_targets(tmp_path: Path) -> None:
    async def go() -> None:
        server = await HttpListener().start()
        healthy = cluster_of(service("a", "192.0.2.10", 80, timing("/h", server.port),
                                     "{name: r1, address: 127.0.0.1}"))
        async with Checkers() as checkers, Scheduler(healthy, checkers) as scheduler:
            await until(lambda: scheduler.targets()[0].rounds >= 3)
            dog = scheduler.watchdog()
            label = f"http 127.0.0.1:{server.port} /h"
            assert list(dog.last_round) == [label]
            assert dog.stalled == ()
            assert dog.rounds == sum(v.rounds for v in scheduler.targets()) >= 3
            assert 0 <= dog.oldest_round_age < 30  # seconds since a round; its speed is benched
            assert 0 <= dog.loop_lag_p50 <= dog.loop_lag_p99 <= dog.loop_lag_max
        await server.close()

        # Four misc checks that each run into their 0.5 s timeout, one probe at a time: a
        # round of all four takes 2 s, longer than 2 x interval + timeout = 1.7 s.
        slow = (f"{{type: misc, command: [{sys.executable}, -c, 'import time; time.sleep(9)'],"
                " interval: 0.6, timeout: 0.5, warmup: 0, port: %d}")
        starved = cluster_of(*(
            service(f"s{i}", "192.0.2.10", 80 + i, slow % (1000 + i),
                    "{name: r1, address: 127.0.0.1}")
            for i in range(4)
        ))
        async with Checkers() as checkers, Scheduler(starved, checkers,
                                                     concurrency=1) as scheduler:
            await until(lambda: bool(scheduler.watchdog().stalled), seconds=15)
            dog = scheduler.watchdog()
            assert dog.oldest_round_age > 1.7
            assert (dog.limit, dog.running) == (1, 1)
            assert dog.waiting >= 1  # the other targets are due and queued for the one slot
            assert all(v.state.status in (Status.UNKNOWN, Status.DOWN)
                       for v in scheduler.targets())

    run(go)


def test_slots_grant_in_order_up_to_a_limit_that_may_change() -> None:
    async def go() -> None:
        slots = Slots(ceiling=100)
        assert slots.limit == MIN_SLOTS
        slots.set_limit(2)
        order: list[int] = []

        async def take(n: int) -> None:
            await slots.acquire()
            order.append(n)

        tasks = [asyncio.create_task(take(n)) for n in range(5)]
        await until(lambda: len(order) == 2)
        assert (slots.running, slots.waiting) == (2, 3)
        slots.release()
        await until(lambda: len(order) == 3)
        slots.set_limit(4)  # a higher limit lets waiters in at once
        await until(lambda: len(order) == 5)
        assert order == [0, 1, 2, 3, 4]
        assert (slots.running, slots.waiting) == (4, 0)
        slots.set_limit(1000)
        assert slots.limit == 100  # never above the ceiling
        await asyncio.gather(*tasks)

    run(go)


def test_slots_a_cancelled_waiter_takes_no_slot() -> None:
    async def go() -> None:
        slots = Slots(ceiling=1)
        await slots.acquire()
        waiting = asyncio.create_task(slots.acquire())
        granted = asyncio.create_task(slots.acquire())
        await until(lambda: slots.waiting == 2)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert slots.waiting == 1
        # Granted and cancelled in the same loop pass: the slot is handed back, not lost.
        slots.release()
        granted.cancel()
        await asyncio.gather(granted, return_exceptions=True)
        assert (slots.running, slots.waiting) == (0, 0)
        await slots.acquire()
        assert slots.running == 1

    run(go)


def test_several_checks_all_must_pass_each_with_its_own_hysteresis() -> None:
    async def go() -> None:
        web = await HttpListener().start()
        other = await HttpListener().start()
        http = (f"{{type: http, path: /h, port: {web.port}, interval: 0.2, timeout: 0.15, "
                "rise: 1, fall: 1, warmup: 0}")
        tcp = (f"{{type: tcp, port: {other.port}, interval: 0.2, timeout: 0.15, rise: 1, "
               "fall: 2, warmup: 0}")
        rs = "{name: r1, address: 127.0.0.1}"
        cluster = cluster_of(
            f"  - {{name: a, vip: 192.0.2.10, port: 80, forwarding: dr, checks: [{http}, {tcp}],"
            f"\n     realservers: [{rs}]}}\n",
            service("b", "192.0.2.11", 80, http, rs),
        )
        http_label = f"http 127.0.0.1:{web.port} /h"
        tcp_label = f"tcp 127.0.0.1:{other.port}"
        changes: list[HealthChange] = []
        async with Checkers() as checkers:
            scheduler = Scheduler(cluster, checkers, on_change=changes.append)
            try:
                await scheduler.start()
                await until(lambda: len(scheduler.snapshot()) == 2)
                health = scheduler.snapshot()
                assert health["a", "r1"] == Health(
                    True, None, f"{http_label}: HTTP 200; {tcp_label}: connected")
                assert health["b", "r1"] == Health(True, None, "HTTP 200")

                # The tcp check fails: only the server that has it goes down, after its own
                # fall (2) failures, and the reason names that check alone.
                changes.clear()
                await other.close()
                await until(lambda: not scheduler.snapshot()["a", "r1"].healthy)
                assert scheduler.snapshot()["a", "r1"] == Health(
                    False, None, f"{tcp_label}: connection refused")
                assert scheduler.snapshot()["b", "r1"].healthy
                assert [c.key for c in changes] == [("a", "r1")]

                # The shared http check fails too: both go down; a's reason names both.
                web.behaviour = ERROR
                await until(lambda: not scheduler.snapshot()["b", "r1"].healthy)
                assert scheduler.snapshot()["a", "r1"].reason == (
                    f"{http_label}: HTTP 500, expected 200; {tcp_label}: connection refused")
                assert [c.key for c in changes] == [("a", "r1"), ("b", "r1")]

                # http recovers: b is back up; a stays down while its tcp check is down.
                web.behaviour = OK
                await until(lambda: scheduler.snapshot()["b", "r1"].healthy)
                await until(lambda: scheduler.snapshot()["a", "r1"].reason
                            == f"{tcp_label}: connection refused")
                assert not scheduler.snapshot()["a", "r1"].healthy

                # One probe per distinct check, however many servers use it.
                await scheduler.stop()
                views = {v.label: v for v in scheduler.targets()}
                assert set(views) == {http_label, tcp_label}
                assert sorted(views[http_label].keys) == [("a", "r1"), ("b", "r1")]
                assert views[tcp_label].keys == (("a", "r1"),)
                assert web.requests["/h"] == views[http_label].rounds
            finally:
                await scheduler.stop()
                await web.close()

    run(go)
