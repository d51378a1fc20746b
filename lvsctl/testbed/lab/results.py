"""What the lab demo reports: one result per check, its JSON form, and timed progress steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Echo = Callable[[str], None]
Step = Callable[[str], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class Result:
    """One check of the demo: what was checked, whether it held, and what was seen."""

    step: str
    passed: bool
    detail: str


def results_json(results: Sequence[Result], seconds: float) -> dict[str, Any]:
    """The demo's results as ``lvsctl lab demo --json`` prints them."""
    passed = sum(r.passed for r in results)
    return {"passed": bool(results) and passed == len(results), "passed_count": passed,
            "seconds": round(seconds, 1),
            "results": [{"step": r.step, "passed": r.passed, "detail": r.detail}
                        for r in results]}


@contextlib.contextmanager
def timed_steps(echo: Echo, clock: Callable[[], float] = time.monotonic) -> Iterator[Step]:
    """``with step("what"):`` prints ``what ... ok (1.2 s)`` (or ``FAILED``) per step."""
    @contextlib.contextmanager
    def step(what: str) -> Iterator[None]:
        start = clock()
        echo(f"lab: {what} ...")
        try:
            yield
        except BaseException:
            echo(f"lab: {what}: FAILED after {clock() - start:.1f} s")
            raise
        echo(f"lab: {what}: ok ({clock() - start:.1f} s)")

    yield step
