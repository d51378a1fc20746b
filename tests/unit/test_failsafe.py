"""director/failsafe.py: a failing call goes on, a failing task restarts with a growing wait,
cancellation still ends a task, and every failure is logged with its part's name."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lvsctl.director import failsafe


def failures(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.part, r.error) for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "event", "") == "worker_part_failed"]


def test_a_failing_call_is_logged_and_gives_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "lvsctl.director")
    assert failsafe.call("reconcile pass", lambda: 1 / 0) is None
    assert failsafe.call("reconcile pass", lambda x: x + 1, 41) == 42
    assert failures(caplog) == [("reconcile pass", "ZeroDivisionError: division by zero")]


def test_a_callback_swallows_the_failure_of_the_one_call(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "lvsctl.director")
    seen: list[int] = []

    def on_data(value: int) -> None:
        if value < 0:
            raise ValueError(f"bad value {value}")
        seen.append(value)

    wrapped = failsafe.callback("config watch", on_data)
    for value in (1, -1, 2):
        wrapped(value)
    assert seen == [1, 2]
    assert failures(caplog) == [("config watch", "ValueError: bad value -1")]


def test_a_failing_task_restarts_with_a_growing_wait(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "lvsctl.director")
    waits: list[float] = []
    runs = 0

    async def part() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"run {runs}")

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    asyncio.run(failsafe.supervised("records writer", part, sleep=sleep, monotonic=lambda: 0.0))
    assert runs == 4
    assert waits == [failsafe.RESTART_MIN, failsafe.RESTART_MIN * 2, failsafe.RESTART_MIN * 4]
    assert [e for _, e in failures(caplog)] == ["RuntimeError: run 1", "RuntimeError: run 2",
                                                "RuntimeError: run 3"]


def test_cancellation_ends_a_supervised_task() -> None:
    async def run() -> bool:
        async def forever() -> None:
            await asyncio.sleep(3600)

        task = asyncio.create_task(failsafe.supervised("heartbeats", forever))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(run())
