"""Every checker against real listeners on loopback: what it decides and the reason it gives.

Each test runs on asyncio's own loop and on uvloop (the director's loop).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lvsctl.core.model import (
    Check,
    CheckKind,
    CheckTiming,
    DnsCheck,
    HttpCheck,
    MiscCheck,
    TcpCheck,
    UdpCheck,
)
from lvsctl.healthcheck.checkers import MAX_BODY, Checkers
from lvsctl.healthcheck.result import CheckResult
from tests.support.listeners import (
    ERROR,
    RESET,
    SLOW,
    WRONG,
    DnsServer,
    HttpListener,
    UdpEcho,
    free_udp_port,
    self_signed,
    server_tls,
)
from tests.support.loops import each_loop  # noqa: F401  (runs every test on both loops)

T = TypeVar("T")
TIMING = CheckTiming(interval=1.0, timeout=0.5, rise=1, fall=1, warmup=0)


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), 30))


async def probe(kind: CheckKind, address: str, port: int, timing: CheckTiming = TIMING
                ) -> CheckResult:
    async with Checkers() as checkers:
        return await checkers.check(Check(kind, timing, address, port))


async def with_http(behaviour: str, kind: HttpCheck, **listener: Any) -> tuple[CheckResult,
                                                                              HttpListener]:
    server = await HttpListener(behaviour=behaviour, **listener).start()
    try:
        return await probe(kind, server.address, server.port), server
    finally:
        await server.close()


# -- http -----------------------------------------------------------------------------------


def test_http_200_is_healthy_and_sends_path_and_host() -> None:
    result, server = run(lambda: with_http("ok", HttpCheck(path="/healthz", host="www.test")))
    assert (result.healthy, result.reason) == (True, "HTTP 200")
    assert server.requests == {"/healthz": 1}
    assert server.hosts == ["www.test"]
    assert 0 < result.latency < TIMING.timeout


def test_http_500_is_unhealthy() -> None:
    result, _ = run(lambda: with_http(ERROR, HttpCheck()))
    assert (result.healthy, result.reason) == (False, "HTTP 500, expected 200")


def test_http_500_within_an_accepted_range_is_healthy() -> None:
    result, _ = run(lambda: with_http(ERROR, HttpCheck(status=((200, 200), (500, 599)))))
    assert (result.healthy, result.reason) == (True, "HTTP 500")


def test_http_slow_body_times_out_while_reading_it() -> None:
    result, _ = run(lambda: with_http(SLOW, HttpCheck(body="ok")))
    assert (result.healthy, result.reason) == (False, "timed out after 0.5s reading the body")
    # Never before its timeout; the reason shows it gave up rather than waiting for the body.
    # uvloop's timers count whole milliseconds: one may fire up to 1 ms before the deadline
    # as time.monotonic measures it (0.49995 s was seen for 0.5 s).
    assert TIMING.timeout - 0.001 <= result.latency


def test_http_reset_connection() -> None:
    result, server = run(lambda: with_http(RESET, HttpCheck()))
    assert server.total == 1
    assert not result.healthy
    assert result.reason in ("connection reset", "server closed the connection without a response")


def test_http_wrong_body_and_digest() -> None:
    result, _ = run(lambda: with_http(WRONG, HttpCheck(body=r"^ok$")))
    assert (result.healthy, result.reason) == (False, "HTTP 200, body does not match /^ok$/")
    digest = "md5:" + "0" * 32
    result, _ = run(lambda: with_http(WRONG, HttpCheck(digest=digest)))
    assert not result.healthy
    assert result.reason.startswith("HTTP 200, body md5 is ")


def test_http_connection_refused() -> None:
    async def go() -> CheckResult:
        server = await HttpListener().start()
        port = server.port
        await server.close()
        return await probe(HttpCheck(), "127.0.0.1", port)

    result = run(go)
    assert (result.healthy, result.reason) == (False, "connection refused")


class Scripted:
    """A server that answers every connection with ``reply`` as raw bytes, then closes it (or
    leaves it open with ``hold``); ``received`` keeps each request it read."""

    def __init__(self, reply: bytes, hold: bool = False) -> None:
        self.reply = reply
        self.hold = hold
        self.received: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.received.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(self.reply)
            await writer.drain()
            if self.hold:
                await reader.read()  # until the client closes
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass


async def scripted(reply: bytes, kind: HttpCheck, hold: bool = False
                   ) -> tuple[CheckResult, list[bytes]]:
    server = await Scripted(reply, hold).start()
    try:
        return await probe(kind, "127.0.0.1", server.port), server.received
    finally:
        await server.close()


def test_http_request_names_the_target_and_asks_to_close() -> None:
    result, received = run(lambda: scripted(b"HTTP/1.1 204 No Content\r\n\r\n",
                                             HttpCheck(path="/ready?x=1", status=((204, 204),))))
    assert (result.healthy, result.reason) == (True, "HTTP 204")
    head = received[0].decode().split("\r\n")
    assert head[0] == "GET /ready?x=1 HTTP/1.1"
    assert head[1].startswith("Host: 127.0.0.1:")
    assert "Connection: close" in head
    assert not any(line.lower().startswith("content-length") for line in head)


def test_http_post_sends_an_empty_body() -> None:
    _, received = run(lambda: scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                       HttpCheck(method="POST")))
    assert received[0].startswith(b"POST / HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 0\r\n" in received[0]


def test_http_informational_response_is_skipped() -> None:
    reply = (b"HTTP/1.1 100 Continue\r\n\r\n"
             b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    result, _ = run(lambda: scripted(reply, HttpCheck()))
    assert (result.healthy, result.reason) == (False, "HTTP 503, expected 200")


def test_http_body_without_length_ends_with_the_connection() -> None:
    reply = b"HTTP/1.0 200 OK\r\n\r\nstatus: ready\n"
    result, _ = run(lambda: scripted(reply, HttpCheck(body=r"ready\n$")))
    assert (result.healthy, result.reason) == (True, "HTTP 200")


def test_http_chunked_body_is_matched_whole() -> None:
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"6\r\nstatus\r\n7\r\n: ready\r\n0\r\n\r\n")
    result, _ = run(lambda: scripted(reply, HttpCheck(body=r"^status: ready$"), hold=True))
    assert (result.healthy, result.reason) == (True, "HTTP 200")


def test_http_body_cut_short_of_its_length_is_a_bad_response() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok"
    result, _ = run(lambda: scripted(reply, HttpCheck(body="ok")))
    assert (result.healthy, result.reason) == (
        False, "bad HTTP response: connection closed after 2 bytes of the body")


def test_http_body_is_read_up_to_its_limit() -> None:
    # More than MAX_BODY, on a connection the server keeps open: the probe stops reading at
    # the limit instead of waiting for the rest (which would time out).
    body = b"a" * MAX_BODY + b"tail"
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    timing = CheckTiming(interval=10, timeout=5, rise=1, fall=1, warmup=0)

    async def go() -> tuple[CheckResult, CheckResult]:
        server = await Scripted(reply, hold=True).start()
        try:
            whole = await probe(HttpCheck(body=r"^a+$"), "127.0.0.1", server.port, timing)
            tail = await probe(HttpCheck(body="tail"), "127.0.0.1", server.port, timing)
        finally:
            await server.close()
        return whole, tail

    whole, tail = run(go)
    assert (whole.healthy, whole.reason) == (True, "HTTP 200")
    assert (tail.healthy, tail.reason) == (False, "HTTP 200, body does not match /tail/")


def test_http_head_response_has_no_body_whatever_its_length() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    result, received = run(lambda: scripted(reply, HttpCheck(method="HEAD", body="^$"),
                                             hold=True))
    assert received[0].startswith(b"HEAD / HTTP/1.1\r\n")
    assert (result.healthy, result.reason) == (True, "HTTP 200")


def test_http_garbage_is_a_bad_response() -> None:
    result, _ = run(lambda: scripted(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", HttpCheck()))
    assert not result.healthy
    assert result.reason.startswith("bad HTTP response: ")


def test_http_connection_closed_without_a_response() -> None:
    result, _ = run(lambda: scripted(b"", HttpCheck()))
    assert (result.healthy, result.reason) == (
        False, "server closed the connection without a response")


# -- https ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "rs.test")


def test_https_self_signed_without_verification(certificate: tuple[Path, Path]) -> None:
    tls = server_tls(*certificate)
    result, server = run(lambda: with_http("ok", HttpCheck(type="https", verify=False), tls=tls))
    assert (result.healthy, result.reason) == (True, "HTTP 200")
    assert server.total == 1


def test_https_self_signed_is_rejected_when_verified(certificate: tuple[Path, Path]) -> None:
    tls = server_tls(*certificate)
    result, server = run(lambda: with_http("ok", HttpCheck(type="https", sni="rs.test"), tls=tls))
    assert not result.healthy
    assert result.reason.startswith("TLS certificate not accepted: ")
    assert "self-signed" in result.reason or "self signed" in result.reason
    assert server.total == 0  # no request was sent over an unverified connection


def test_https_verified_with_ca_file_and_sni(certificate: tuple[Path, Path]) -> None:
    tls = server_tls(*certificate)
    cert = str(certificate[0])
    ok, _ = run(lambda: with_http("ok", HttpCheck(type="https", sni="rs.test", ca_file=cert),
                                  tls=tls))
    assert (ok.healthy, ok.reason) == (True, "HTTP 200")
    wrong, _ = run(lambda: with_http("ok", HttpCheck(type="https", sni="other.test",
                                                     ca_file=cert), tls=tls))
    assert not wrong.healthy
    assert "other.test" in wrong.reason or "hostname" in wrong.reason.lower()


# -- tcp ------------------------------------------------------------------------------------


def test_tcp_connect_and_refused() -> None:
    async def go() -> tuple[CheckResult, CheckResult]:
        server = await HttpListener().start()
        try:
            up = await probe(TcpCheck(), server.address, server.port)
        finally:
            await server.close()
        down = await probe(TcpCheck(), server.address, server.port)
        return up, down

    up, down = run(go)
    assert (up.healthy, up.reason) == (True, "connected")
    assert (down.healthy, down.reason) == (False, "connection refused")


def test_tcp_send_and_expect() -> None:
    request = "GET / HTTP/1.0\r\n\r\n"

    async def go() -> tuple[CheckResult, CheckResult]:
        server = await HttpListener().start()
        try:
            good = await probe(TcpCheck(send=request, expect="HTTP/1.1 200"), server.address,
                               server.port)
            bad = await probe(TcpCheck(send=request, expect="SSH-2.0"), server.address,
                              server.port)
        finally:
            await server.close()
        return good, bad

    good, bad = run(go)
    assert (good.healthy, good.reason) == (True, "reply matches")
    assert (bad.healthy, bad.reason) == (False, "reply b'HTTP/1.' does not start with b'SSH-2.0'")


# -- udp ------------------------------------------------------------------------------------


def test_udp_echo_reply_expected() -> None:
    async def go() -> tuple[CheckResult, CheckResult, int]:
        echo = await UdpEcho().start()
        try:
            good = await probe(UdpCheck(send="ping", expect="ping"), echo.address, echo.port)
            bad = await probe(UdpCheck(send="ping", expect="pong"), echo.address, echo.port)
        finally:
            await echo.close()
        return good, bad, echo.received

    good, bad, received = run(go)
    assert (good.healthy, good.reason) == (True, "reply of 4 bytes")
    assert (bad.healthy, bad.reason) == (False, "reply b'ping' does not start with b'pong'")
    assert received == 2


def test_udp_silent_server_and_closed_port() -> None:
    async def go() -> tuple[CheckResult, CheckResult, CheckResult]:
        silent = await UdpEcho(reply=None).start()
        try:
            times_out = await probe(UdpCheck(send="x"), silent.address, silent.port)
            quiet_ok = await probe(UdpCheck(send="x", require_reply=False), silent.address,
                                   silent.port)
        finally:
            await silent.close()
        closed = await probe(UdpCheck(send="x", require_reply=False), "127.0.0.1",
                             free_udp_port())
        return times_out, quiet_ok, closed

    times_out, quiet_ok, closed = run(go)
    assert (times_out.healthy, times_out.reason) == (
        False, "timed out after 0.5s waiting for a reply")
    assert (quiet_ok.healthy, quiet_ok.reason) == (
        True, "no reply and no ICMP error within 0.5s")
    # The ICMP port unreachable arrives as ECONNREFUSED on the connected socket, well before
    # the timeout.
    assert (closed.healthy, closed.reason) == (False, "connection refused")
    assert closed.latency < TIMING.timeout


# -- dns ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_answers(transport: str) -> None:
    async def go() -> tuple[list[CheckResult], int]:
        server = await DnsServer(records={
            ("svc.test.", "A"): ["10.0.0.1", "10.0.0.2"],
            ("svc.test.", "TXT"): ['"v=1"'],
        }).start()
        try:
            results = [
                await probe(DnsCheck(name="svc.test.", transport=transport), server.address,
                            server.port),  # type: ignore[arg-type]
                await probe(DnsCheck(name="svc.test.", expect=("10.0.0.2",),
                                     transport=transport),  # type: ignore[arg-type]
                            server.address, server.port),
                await probe(DnsCheck(name="svc.test.", expect=("10.0.0.9",),
                                     transport=transport),  # type: ignore[arg-type]
                            server.address, server.port),
                await probe(DnsCheck(name="gone.test.", transport=transport),  # type: ignore[arg-type]
                            server.address, server.port),
                await probe(DnsCheck(name="svc.test.", qtype="AAAA",
                                     transport=transport),  # type: ignore[arg-type]
                            server.address, server.port),
            ]
        finally:
            await server.close()
        return results, server.queries

    results, queries = run(go)
    assert [(r.healthy, r.reason) for r in results] == [
        (True, "DNS A 10.0.0.1, 10.0.0.2"),
        (True, "DNS A 10.0.0.1, 10.0.0.2"),
        (False, "DNS answer lacks 10.0.0.9 (got 10.0.0.1, 10.0.0.2)"),
        (False, "DNS NXDOMAIN for gone.test. A"),
        (False, "DNS NXDOMAIN for svc.test. AAAA"),
    ]
    assert queries == 5


def test_dns_no_server_times_out() -> None:
    # A UDP port with a silent listener: no answer and no ICMP error.
    async def go() -> CheckResult:
        silent = await UdpEcho(reply=None).start()
        try:
            return await probe(DnsCheck(name="svc.test."), silent.address, silent.port)
        finally:
            await silent.close()

    result = run(go)
    assert (result.healthy, result.reason) == (False, "timed out after 0.5s waiting for the udp "
                                                      "answer")


# -- misc -----------------------------------------------------------------------------------

FLIP = """
import sys
from pathlib import Path
print("state file says", Path(sys.argv[1]).read_text().strip())
sys.exit(int(Path(sys.argv[1]).read_text()))
"""


def test_misc_exit_codes_and_dynamic_weight(tmp_path: Path) -> None:
    script = tmp_path / "flip.py"
    script.write_text(FLIP)
    state = tmp_path / "state"
    argv = (sys.executable, str(script), str(state))

    async def go(code: int, dynamic: bool) -> CheckResult:
        state.write_text(str(code))
        return await probe(MiscCheck(command=argv, dynamic=dynamic), "127.0.0.1", 0,
                           CheckTiming(interval=10, timeout=5, rise=1, fall=1))

    up = run(lambda: go(0, False))
    assert (up.healthy, up.weight, up.reason) == (True, None, "exit 0: state file says 0")
    down = run(lambda: go(1, False))
    assert (down.healthy, down.reason) == (False, "exit 1: state file says 1")
    seven = run(lambda: go(7, False))
    assert (seven.healthy, seven.weight) == (False, None)
    dyn = run(lambda: go(7, True))
    assert (dyn.healthy, dyn.weight, dyn.reason) == (True, 5, "exit 7: weight 5")


def test_misc_arguments_are_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    argv = (sys.executable, "-c", "import sys; print(sys.argv[1])", f"; touch {marker}")
    result = run(lambda: probe(MiscCheck(command=argv), "127.0.0.1", 0,
                               CheckTiming(interval=10, timeout=5)))
    assert (result.healthy, result.reason) == (True, f"exit 0: ; touch {marker}")
    assert not marker.exists()


def test_misc_timeout_kills_the_child_and_what_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = run(lambda: probe(MiscCheck(command=(sys.executable, "-c", hang)), "127.0.0.1", 0,
                               CheckTiming(interval=5, timeout=1.5)))
    assert time.monotonic() - started < 30  # not the 60 s the child would take
    assert result.healthy is False
    assert result.reason == f"timed out after 1.5s running {sys.executable}"
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"process {pid} survived the timeout"


def test_misc_gets_the_target_in_its_environment() -> None:
    argv = (sys.executable, "-c", "import os; print(os.environ['LVSCTL_CHECK_ADDRESS'], "
                                  "os.environ['LVSCTL_CHECK_PORT'])")
    result = run(lambda: probe(MiscCheck(command=argv), "127.0.0.9", 8443,
                               CheckTiming(interval=10, timeout=5)))
    assert result.reason == "exit 0: 127.0.0.9 8443"


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(f"/proc/{pid}")
