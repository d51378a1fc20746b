"""The simulation's virtual clock and its agenda of world events (deliveries, expiries)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Event:
    """One scheduled world event; ``cancel`` makes it a no-op."""

    at: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Agenda:
    """Virtual time (``now``, seconds from the start) and the events still to happen, run in
    time order, ties in the order they were scheduled."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[Event] = []
        self._seq = itertools.count()

    def at(self, when: float, fn: Callable[[], None]) -> Event:
        event = Event(max(when, self.now), next(self._seq), fn)
        heapq.heappush(self._heap, event)
        return event

    def after(self, delay: float, fn: Callable[[], None]) -> Event:
        return self.at(self.now + max(delay, 0.0), fn)

    def next_time(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].at if self._heap else None

    def pop_due(self) -> Event | None:
        """The next event due by ``now`` (removed), or None."""
        when = self.next_time()
        if when is None or when > self.now:
            return None
        return heapq.heappop(self._heap)
