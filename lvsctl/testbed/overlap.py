"""How long two directors held one address at once, from their holding intervals.

The arithmetic is the drills' own (``lvsctl.failover.timeline.overlaps``); this is its form for
the tests and benchmarks that watch two directors' addresses as interval lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from lvsctl.failover.timeline import Hold, overlaps

Interval = tuple[float, float]  # (start, end) on one clock; end may be inf (still held)


def overlap(a: Iterable[Interval], b: Iterable[Interval]) -> float:
    """Total seconds both ``a`` and ``b`` held the address at once (0.0 when never)."""
    holds = [Hold(who, "vip", start, end) for who, intervals in (("a", a), ("b", b))
             for start, end in intervals]
    return sum(found.length for found in overlaps(holds, horizon=float("inf")))
