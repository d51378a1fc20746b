"""Fail safe, not dead: the worker's parts (config watch, checks, reconcile pass, records writer,
API handlers, channel messages) run through these wrappers, so that an unexpected exception in
one part is logged with its context and that part goes on (a call) or restarts (a task) while
the rest of the worker, and the keeper's VIP renewals, carry on.

An expected failure is an LvsctlError, handled where it happens; what reaches these wrappers is
a bug or an input nobody foresaw. Catching it here is not hiding it: every one is logged at
error level with its traceback and the part's name (``event: worker_part_failed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger("lvsctl.director")

T = TypeVar("T")

RESTART_MIN = 0.5  # seconds before a failed task's first restart
RESTART_MAX = 30.0  # the longest wait between restarts of a task that keeps failing
STABLE_AFTER = 60.0  # a task that ran this long starts its backoff afresh


def _failed(part: str, exc: BaseException, context: dict[str, Any]) -> None:
    log.error("%s failed: %s: %s", part, type(exc).__name__, exc, exc_info=exc,
              extra={"event": "worker_part_failed", "part": part,
                     "error": f"{type(exc).__name__}: {exc}"[:2000], **context})


def call(part: str, fn: Callable[..., T], *args: Any, **context: Any) -> T | None:
    """``fn(*args)``; an unexpected exception is logged as ``part`` failing (with ``context``)
    and gives None. Raises nothing but BaseExceptions that are not Exceptions."""
    try:
        return fn(*args)
    except Exception as exc:
        _failed(part, exc, context)
        return None


def callback(part: str, fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` wrapped by ``call``: for callbacks handed to others (a watch, a scheduler)."""

    def wrapped(*args: Any) -> None:
        call(part, fn, *args)

    return wrapped


async def supervised(part: str, make: Callable[[], Awaitable[None]], *,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                     monotonic: Callable[[], float] | None = None) -> None:
    """Run ``make()`` until it returns; restart it after an unexpected exception, waiting
    RESTART_MIN s, doubling up to RESTART_MAX while it keeps failing. Cancellation ends it."""
    clock = monotonic or asyncio.get_running_loop().time
    backoff = RESTART_MIN
    while True:
        started = clock()
        try:
            await make()
            return
        except Exception as exc:
            if clock() - started >= STABLE_AFTER:
                backoff = RESTART_MIN
            _failed(part, exc, {"restart_in": backoff})
        await sleep(backoff)
        backoff = min(backoff * 2, RESTART_MAX)
