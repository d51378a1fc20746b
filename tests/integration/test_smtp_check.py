"""The smtp checker against a real SMTP listener on loopback, written here: the greeting, HELO,
QUIT exchange, what it decides and the reason it gives. Runs on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from lvsctl.core.model import Check, CheckTiming, SmtpCheck
from lvsctl.healthcheck.checkers import MAX_SMTP_LINE, MAX_SMTP_LINES, Checkers
from lvsctl.healthcheck.result import CheckResult
from tests.support.listeners import free_tcp_port
from tests.support.loops import each_loop  # noqa: F401  (runs every test on both loops)

T = TypeVar("T")
TIMING = CheckTiming(interval=1.0, timeout=0.5, rise=1, fall=1, warmup=0)


@dataclass
class SmtpListener:
    """A tiny SMTP server: sends ``greeting``, answers HELO with ``helo_reply``, QUIT with 221.

    ``lines`` keeps every command line it received; ``greeting`` None sends nothing at all.
    """

    greeting: bytes | None = b"220 mx.test ESMTP ready\r\n"
    helo_reply: bytes = b"250 mx.test\r\n"
    lines: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> SmtpListener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.greeting is None:
                await reader.read()  # silent until the client gives up
                return
            writer.write(self.greeting)
            while line := await reader.readline():
                command = line.decode().rstrip("\r\n")
                self.lines.append(command)
                if command.upper().startswith("HELO"):
                    writer.write(self.helo_reply)
                elif command.upper() == "QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), 30))


async def smtp_probe(server: SmtpListener, helo_name: str = "lvsctl") -> CheckResult:
    await server.start()
    try:
        async with Checkers() as checkers:
            result = await checkers.check(
                Check(SmtpCheck(helo_name=helo_name), TIMING, "127.0.0.1", server.port))
        # The QUIT is written as the probe ends; give the listener a moment to read it.
        for _ in range(500 if result.healthy else 0):
            if "QUIT" in server.lines:
                break
            await asyncio.sleep(0.01)
        return result
    finally:
        await server.close()


def test_smtp_greeting_helo_and_quit() -> None:
    server = SmtpListener()
    result = run(lambda: smtp_probe(server, "lb1.example"))
    assert (result.healthy, result.reason) == (True, "SMTP 250 after HELO")
    assert server.lines == ["HELO lb1.example", "QUIT"]


def test_smtp_multiline_greeting_is_read_whole() -> None:
    server = SmtpListener(greeting=b"220-mx.test first\r\n220-second\r\n220 ready\r\n",
                          helo_reply=b"250-mx.test\r\n250 PIPELINING\r\n")
    result = run(lambda: smtp_probe(server))
    assert (result.healthy, result.reason) == (True, "SMTP 250 after HELO")
    assert server.lines == ["HELO lvsctl", "QUIT"]


def test_smtp_refusing_greeting_is_unhealthy() -> None:
    server = SmtpListener(greeting=b"554 no service here\r\n")
    result = run(lambda: smtp_probe(server))
    assert (result.healthy, result.reason) == (
        False, "SMTP greeting 554 no service here, expected 220")
    assert "HELO lvsctl" not in server.lines


def test_smtp_helo_refused_is_unhealthy() -> None:
    server = SmtpListener(helo_reply=b"501 syntax error\r\n")
    result = run(lambda: smtp_probe(server))
    assert (result.healthy, result.reason) == (
        False, "SMTP HELO answered 501 syntax error, expected 250")


def test_smtp_silent_server_times_out_waiting_for_the_greeting() -> None:
    result = run(lambda: smtp_probe(SmtpListener(greeting=None)))
    assert (result.healthy, result.timed_out) == (False, True)
    assert result.reason == "timed out after 0.5s waiting for the SMTP greeting"


def test_smtp_not_a_reply_and_overlong_replies_are_bad() -> None:
    result = run(lambda: smtp_probe(SmtpListener(greeting=b"SSH-2.0-OpenSSH_9.2\r\n")))
    assert (result.healthy, result.reason) == (False, "bad SMTP reply: 'SSH-2.0-OpenSSH_9.2'")
    long_line = b"220 " + b"x" * (MAX_SMTP_LINE + 10) + b"\r\n"
    result = run(lambda: smtp_probe(SmtpListener(greeting=long_line)))
    assert (result.healthy, result.reason) == (
        False, f"bad SMTP reply: a reply line longer than {MAX_SMTP_LINE} bytes")
    endless = b"220-more\r\n" * (MAX_SMTP_LINES + 1) + b"220 done\r\n"
    result = run(lambda: smtp_probe(SmtpListener(greeting=endless)))
    assert (result.healthy, result.reason) == (
        False, f"bad SMTP reply: a reply of more than {MAX_SMTP_LINES} lines")


def test_smtp_connection_refused() -> None:
    async def probe() -> CheckResult:
        async with Checkers() as checkers:
            return await checkers.check(
                Check(SmtpCheck(), TIMING, "127.0.0.1", free_tcp_port()))
    result = run(probe)
    assert (result.healthy, result.reason) == (False, "connection refused")
