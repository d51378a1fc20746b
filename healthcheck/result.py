"""What one probe of one target found: the value every checker returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """One probe's outcome.

    ``reason`` is one short line an operator can act on ("HTTP 500, expected 200",
    "connection refused"); ``latency`` is the probe's wall time in seconds; ``weight`` is set
    only by a dynamic misc check (exit code - 2); ``timed_out`` marks a probe cut off by its
    timeout (the scheduler judges whether the real server or its own loop was late).
    """

    healthy: bool
    reason: str
    latency: float
    weight: int | None = None
    timed_out: bool = False
