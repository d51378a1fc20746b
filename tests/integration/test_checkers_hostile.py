"""Hostile real servers against the checkers: every read is bounded in bytes and in time.

Each server is a real listener on loopback that answers a probe with something without end
(a header line, header lines, 1xx heads) or a trickle; each misc command prints without end.
The check must fail with a reason that names the limit hit or the phase that timed out, and
keep no more than its bound. Every server stops by itself (bytes or time bounded).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from lvsctl.core.model import Check, CheckTiming, HttpCheck, MiscCheck
from lvsctl.healthcheck.checkers import (
    MAX_HTTP_HEAD,
    MAX_HTTP_HEADER_LINES,
    MAX_MISC_OUTPUT,
    CappedOutput,
    Checkers,
    run_command,
)
from lvsctl.healthcheck.result import CheckResult
from tests.support.loops import each_loop  # noqa: F401  (runs every test on both loops)

T = TypeVar("T")
TIMING = CheckTiming(interval=2.0, timeout=1.0, rise=1, fall=1, warmup=0)
# A hostile server stops by itself after this many bytes, whatever the client does.
SEND_BOUND = 64 << 20

Script = Callable[[], AsyncIterator[bytes]]


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), 60))


class Hostile:
    """Reads a request, then writes what ``script`` yields until the client leaves or
    SEND_BOUND bytes are out; ``sent`` counts the bytes written."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sent = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Hostile:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            async for chunk in self.script():
                if self.sent >= SEND_BOUND or writer.is_closing():
                    break
                writer.write(chunk)
                self.sent += len(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def probe_hostile(script: Script, kind: HttpCheck | None = None
                        ) -> tuple[CheckResult, int]:
    async with Hostile(script) as server, Checkers() as checkers:
        result = await checkers.check(
            Check(kind or HttpCheck(), TIMING, "127.0.0.1", server.port))
        return result, server.sent


async def endless_header_line() -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nX-Endless: "
    while True:
        yield b"a" * 16384


async def endless_headers() -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\n"
    for n in range(10**9):
        yield b"".join(b"X-%d: v\r\n" % (n * 100 + i) for i in range(100))


async def endless_informational() -> AsyncIterator[bytes]:
    while True:
        yield b"HTTP/1.1 100 Continue\r\n\r\n" * 100


def trickle(head: bytes, then: bytes) -> Script:
    """``head`` at once, then ``then`` one byte every 100 ms (for at most 20 s)."""
    async def script() -> AsyncIterator[bytes]:
        yield head
        for byte in then[:200]:
            await asyncio.sleep(0.1)
            yield bytes([byte])
    return script


async def silence() -> AsyncIterator[bytes]:
    await asyncio.sleep(20)
    yield b""


@pytest.mark.parametrize(("script", "reason"), [
    (endless_header_line,
     f"bad HTTP response: the response head is longer than {MAX_HTTP_HEAD} bytes"),
    (endless_informational,
     f"bad HTTP response: the response head is longer than {MAX_HTTP_HEAD} bytes"),
    (endless_headers,
     f"bad HTTP response: the response has more than {MAX_HTTP_HEADER_LINES} header lines"),
], ids=["endless header line", "endless 1xx heads", "endless header lines"])
def test_an_endless_head_fails_at_its_limit_not_at_the_deadline(script: Script,
                                                                 reason: str) -> None:
    result, sent = run(lambda: probe_hostile(script))
    assert (result.healthy, result.reason, result.timed_out) == (False, reason, False)
    # The server went on past the limit; the checker stopped reading near it (the server's
    # last writes fill the socket buffers before it sees the close).
    assert sent < SEND_BOUND


@pytest.mark.parametrize(("script", "phase"), [
    (silence, "waiting for the status line"),
    (trickle(b"", b"HTTP/1.1 200 OK\r\n\r\n"), "reading the status line"),
    (trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 400), "reading the headers"),
    (trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n", b"a" * 400),
     "reading the body"),
], ids=["silent", "trickled status line", "trickled headers", "trickled body"])
def test_one_deadline_for_the_whole_exchange_names_the_phase(script: Script,
                                                             phase: str) -> None:
    started = time.monotonic()
    result, _ = run(lambda: probe_hostile(script, HttpCheck(body="a")))
    assert (result.healthy, result.reason, result.timed_out) == (
        False, f"timed out after 1s {phase}", True)
    # One deadline, not one per read: a trickle that keeps each read alive still ends it
    # (the trickle itself would last 20 s).
    assert time.monotonic() - started < 15


def test_a_head_within_the_limits_is_still_read() -> None:
    async def big_but_fine() -> AsyncIterator[bytes]:
        # Content-Length and 99 more: the line limit exactly, about 50 KiB.
        lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500)
                         for i in range(MAX_HTTP_HEADER_LINES - 1))
        yield b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n" + lines + b"\r\nok\n"

    result, _ = run(lambda: probe_hostile(big_but_fine))
    assert (result.healthy, result.reason) == (True, "HTTP 200")


# -- misc: output without end ------------------------------------------------------------


YES = (sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('y' * 65536 + '\\n')")


def test_misc_output_without_end_is_drained_but_only_its_tail_kept() -> None:
    async def drain_for_a_while() -> CappedOutput:
        output = CappedOutput()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await run_command(YES, {}, output)
        return output

    output = run(drain_for_a_while)
    assert output.total > 4 * MAX_MISC_OUTPUT  # it did print without end...
    assert len(output.kept) == MAX_MISC_OUTPUT  # ...and no more than the cap was kept
    assert set(output.kept) <= set(b"y\n")


def test_a_misc_command_printing_without_end_times_out_and_is_killed() -> None:
    async def check() -> CheckResult:
        async with Checkers() as checkers:
            return await checkers.check(Check(MiscCheck(command=YES), TIMING, "127.0.0.1", 0))

    result = run(check)
    assert (result.healthy, result.reason, result.timed_out) == (
        False, f"timed out after 1s running {sys.executable}", True)


def test_a_misc_command_printing_megabytes_then_exiting_is_judged_on_its_last_line() -> None:
    argv = (sys.executable, "-c", "import sys\nfor _ in range(80): sys.stdout.write('x' * 65535"
                                  " + '\\n')\nprint('all good')")

    async def check() -> CheckResult:
        async with Checkers() as checkers:
            return await checkers.check(Check(MiscCheck(command=argv),
                                              CheckTiming(interval=20, timeout=15),
                                              "127.0.0.1", 0))

    result = run(check)
    assert (result.healthy, result.reason) == (True, "exit 0: all good")
