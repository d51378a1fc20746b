"""Bounds on the director's HTTP API: how many connections it holds, how long a client may take
to send its headers and then its request, how large a request may be, and what a client gets
when it breaks one of these rules.

An API client is untrusted (STYLE.md 12): a slowloris (headers one byte at a time), a flood of
half-open connections or a client that never reads its answer must cost the worker at most
``MAX_CONNECTIONS`` sockets for at most ``CONNECTION_LIMIT`` seconds each, never its file
descriptors or its loop. Each connection carries one request (no keep-alive): the deadlines
are per connection, counted from the accept.

When descriptors run short anyway (other parts of the worker hold them), the event loop's own
accept path copes: uvloop (libuv) accepts and closes with a reserve descriptor, asyncio's
selector loop pauses accepting for a second; neither stops listening. The connection limit
keeps the API from being the part that exhausts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("lvsctl.director.api")

MAX_CONNECTIONS = 128  # open at once; more are answered 503 and closed
HEADER_TIMEOUT = 5.0  # from the accept to the end of the request's headers
REQUEST_TIMEOUT = 10.0  # from the end of the headers to the answer (body and handler)
CONNECTION_LIMIT = HEADER_TIMEOUT + REQUEST_TIMEOUT + 5.0  # then the socket is aborted
BODY_LIMIT = 64 * 1024  # bytes of a request body
MAX_LINE = 4096  # the request line, and each header line
MAX_HEADERS = 64
BACKLOG = 128

# RequestHandler's settings: aiohttp answers 400 for a longer line or more headers.
HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": MAX_LINE, "max_field_size": MAX_LINE, "max_headers": MAX_HEADERS,
    "keepalive_timeout": 0.0, "lingering_time": 1.0, "tcp_keepalive": False,
}

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 42\r\nConnection: close\r\n\r\n"
         b"too many connections to the director's API\n")
_SLOW = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 48\r\nConnection: close\r\n\r\n"
         b"request headers not complete within 5 s: closed\n")


@dataclass
class Counts:
    """What the limits did, for the log and the tests."""

    open: int = 0
    refused: int = 0
    header_timeouts: int = 0
    aborted: int = 0
    errors: int = 0


@dataclass
class Limits:
    """The connections of one listening API and the rules they live by."""

    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    connection_limit: float = CONNECTION_LIMIT
    counts: Counts = field(default_factory=Counts)
    connections: set[GuardedHandler] = field(default_factory=set)
    refusing: set[GuardedHandler] = field(default_factory=set)  # answered 503, closing


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with the accept-time limit and the deadlines of ``Limits``."""

    def __init__(self, limits: Limits, manager: web.Server, *,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(manager, loop=loop, **HANDLER_ARGS)
        self.limits = limits
        self.headers_done = False
        self.refused = False
        self._timers: list[asyncio.TimerHandle] = []
        self._guard_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport = cast(asyncio.Transport, transport)  # uvloop's are not its subclasses
        self._guard_transport = transport
        limits = self.limits
        if len(limits.connections) >= limits.max_connections:
            self._refuse(transport)
            return
        limits.connections.add(self)
        limits.counts.open = len(limits.connections)
        self._timers += [self._loop.call_later(limits.header_timeout, self._header_deadline),
                         self._loop.call_later(limits.connection_limit, self._abort)]

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 and close: politely (the client's request is read and dropped, so
        that the close is not a reset that loses the answer) while few refusals are in
        flight, at once when many are."""
        limits = self.limits
        limits.counts.refused += 1
        self.refused = True
        if limits.counts.refused in (1, 10, 100) or limits.counts.refused % 1000 == 0:
            log.warning("API at its limit of %d connections: refused %d so far",
                        limits.max_connections, limits.counts.refused,
                        extra={"event": "api_refused", "refused": limits.counts.refused})
        if len(limits.refusing) >= limits.max_connections:
            transport.abort()
            return
        limits.refusing.add(self)
        transport.write(_BUSY)
        if transport.can_write_eof():
            transport.write_eof()
        self._timers += [self._loop.call_later(1.0, transport.close),
                         self._loop.call_later(2.0, transport.abort)]

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if self.refused and self._guard_transport is not None:
            self._guard_transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.limits.connections.discard(self)
        self.limits.refusing.discard(self)
        self.limits.counts.open = len(self.limits.connections)
        super().connection_lost(exc)

    def _header_deadline(self) -> None:
        transport = self._guard_transport
        if self.headers_done or transport is None or transport.is_closing():
            return
        self.limits.counts.header_timeouts += 1
        transport.write(_SLOW)
        transport.close()  # the connection limit aborts it if the client does not read

    def _abort(self) -> None:
        if self._guard_transport is not None:
            self.limits.counts.aborted += 1
            self._guard_transport.abort()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(limits: Limits) -> Any:
    """The request's side of the limits: the request deadline, the body limit, one request
    per connection, and one-line answers for undecodable headers and handler failures."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, GuardedHandler):
            protocol.headers_done = True
        try:
            if request.content_length is not None and request.content_length > BODY_LIMIT:
                raise web.HTTPRequestEntityTooLarge(max_size=BODY_LIMIT,
                                                    actual_size=request.content_length)
            async with asyncio.timeout(limits.request_timeout):
                response = await handler(request)
        except TimeoutError:
            response = web.Response(
                status=408, text=f"request not complete within {limits.request_timeout:g} s\n")
        except UnicodeError:
            # aiohttp keeps undecodable header bytes as surrogates; using them fails here.
            response = web.Response(status=400, text="headers: expected UTF-8 text\n")
        except web.HTTPException:
            raise  # aiohttp's own answer; the connection's deadlines still hold
        except Exception as exc:
            limits.counts.errors += 1
            log.error("API %s %s failed: %s: %s", request.method, request.path,
                      type(exc).__name__, exc, exc_info=True,
                      extra={"event": "api_error", "path": request.path})
            response = web.Response(status=500, text=f"internal error: {type(exc).__name__}\n")
        response.force_close()
        return response

    return guard


@dataclass
class Listening:
    """A started API: where it listens, its limits; ``await cleanup()`` stops it."""

    runner: web.AppRunner
    server: asyncio.Server
    address: str
    limits: Limits

    @property
    def addresses(self) -> list[Any]:
        """The listening sockets' addresses (as aiohttp's runners give them)."""
        return [sock.getsockname() for sock in self.server.sockets]

    async def cleanup(self) -> None:
        self.server.close()
        for conn in list(self.limits.connections):
            if conn._guard_transport is not None:
                conn._guard_transport.abort()
        await self.runner.cleanup()


async def listen(app: web.Application, host: str, port: int,
                 limits: Limits | None = None) -> Listening:
    """Serve ``app`` (made with ``client_max_size=BODY_LIMIT``) on ``host:port`` within
    ``limits``.

    Raises OSError if it cannot listen there (the address in use, not local, no permission).
    """
    limits = limits or Limits()
    app.middlewares.insert(0, middleware(limits))
    runner = web.AppRunner(app, access_log=None, **HANDLER_ARGS)
    await runner.setup()
    loop = asyncio.get_running_loop()
    manager = runner.server
    assert manager is not None
    try:
        server = await loop.create_server(lambda: GuardedHandler(limits, manager, loop=loop),
                                          host, port, backlog=BACKLOG, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    bound = server.sockets[0].getsockname()
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    return Listening(runner, server, address, limits)
