"""An asyncio event loop on the simulation's virtual clock, stepped by the simulation.

Each simulated director process runs its production coroutines on one ``VirtualLoop``. The
loop never blocks and never looks at real time: ``time()`` is the world's clock, its selector
returns nothing, and the world decides when the loop runs (``step``) — so a frozen process is
simply a loop nobody steps, and one step is one pass of asyncio's own ``_run_once``.
"""

from __future__ import annotations

import asyncio
import heapq
import selectors
from asyncio import events
from collections.abc import Callable
from typing import Any


class _NullSelector(selectors.BaseSelector):
    """Accepts registrations (the loop's self-pipe) and never reports an event."""

    def __init__(self) -> None:
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, 0, events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector loop whose clock is ``now()`` and which runs only when stepped."""

    def __init__(self, now: Callable[[], float],
                 endpoint: Callable[[asyncio.DatagramProtocol, tuple[str, int]],
                                    asyncio.DatagramTransport] | None = None) -> None:
        super().__init__(_NullSelector())
        self._now = now
        self._endpoint = endpoint  # the simulated host's UDP sockets

    async def create_datagram_endpoint(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.DatagramProtocol],
            local_addr: tuple[str, int] | None = None, **_kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if self._endpoint is None or local_addr is None:
            raise OSError("this simulated process has no network")
        protocol = protocol_factory()
        transport = self._endpoint(protocol, local_addr)
        protocol.connection_made(transport)
        return transport, protocol

    def time(self) -> float:
        return self._now()

    def _write_to_self(self) -> None:
        pass  # one thread only: call_soon_threadsafe needs no wake-up

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:  # type: ignore[override]
        pass  # a simulated process gets no signals: the world calls the handlers itself

    def next_due(self) -> float | None:
        """When this loop next has work: now if callbacks are ready, else its first timer."""
        # asyncio's own queues (CPython 3.11-3.13 BaseEventLoop): _ready and the _scheduled heap.
        loop: Any = self
        if loop._ready:
            return self._now()
        scheduled = loop._scheduled
        while scheduled and scheduled[0]._cancelled:
            # asyncio drops cancelled timers lazily; they are no work
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            loop._timer_cancelled_count = max(0, loop._timer_cancelled_count - 1)
        if scheduled:
            return float(scheduled[0]._when)
        return None

    def step(self) -> None:
        """One pass: every timer due by now is moved to the ready queue, and what was ready
        runs. The loop counts as the running one meanwhile (tasks it starts land on it)."""
        previous = events._get_running_loop()
        events._set_running_loop(self)
        try:
            loop: Any = self
            loop._run_once()
        finally:
            events._set_running_loop(previous)
