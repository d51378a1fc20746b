"""The checkers: ``await Checkers.check(target) -> CheckResult`` for every check type.

Types: tcp, http(s), misc, udp, dns, smtp and ping.

A target is a resolved ``lvsctl.core.model.Check`` (kind, timing, probe address, port). Each probe
is bounded by the check's timeout, opens a new connection (as keepalived does: a reused
connection would not prove the server still accepts), and reports one short reason line.
Checkers never touch the kernel. An HTTP probe is one request on an asyncio protocol whose
response is parsed by httptools (llhttp, the parser Node.js uses): less than half the CPU of an
aiohttp request, which is what lets one core check thousands of servers a second
(``bench/healthcheck.py``). DNS uses dnspython; misc checks run an argv list, never a shell.
Ping sends one ICMP echo from an unprivileged ICMP datagram socket (allowed by
``net.ipv4.ping_group_range``), or from a raw socket when that is refused (the director runs
as root): no shell, no setuid helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import re
import signal
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, cast

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httptools

from lvsctl.core.model import (
    Check,
    DnsCheck,
    HttpCheck,
    MiscCheck,
    PingCheck,
    SmtpCheck,
    TcpCheck,
    UdpCheck,
    join_host_port,
)
from lvsctl.healthcheck.result import CheckResult

# A health page is small; a body past this is not read further (regex and digest see no more).
MAX_BODY = 1 << 20
MAX_REASON = 160
# An SMTP reply line is at most 512 octets (RFC 5321 4.5.3.1.5); a multi-line reply is cut
# off after this many lines: a greeting that goes on is not a mail server worth trusting.
MAX_SMTP_LINE = 512
MAX_SMTP_LINES = 32
# An HTTP response's head (status line and headers, 1xx heads included) is read up to this
# many bytes and header lines: a server that sends a header without end fails the check
# instead of growing the parser's buffers (nginx and Node take 8-16 KiB, Apache 100 lines).
MAX_HTTP_HEAD = 64 << 10
MAX_HTTP_HEADER_LINES = 100
# A misc check's output is drained to its end, but only its last this many bytes are kept
# (the reason quotes its last line): a command printing without end costs time, not memory.
MAX_MISC_OUTPUT = 64 << 10
_MISC_READ = 64 << 10


class Checker(Protocol):
    """What the scheduler needs: one probe of one target, never raising for a failed probe."""

    async def check(self, target: Check) -> CheckResult: ...


@dataclass
class _Probe:
    """Where a running probe is, so a timeout can say what it was waiting for."""

    phase: str = "connecting"
    timeout_is_healthy: bool = False  # udp without require_reply: silence is health


@dataclass(frozen=True)
class _Outcome:
    healthy: bool
    reason: str
    weight: int | None = None


def payload_bytes(text: str) -> bytes:
    """Text from the cluster file as bytes: U+0000..U+00FF one byte each (so YAML "\\x00"
    escapes write binary payloads), anything else as UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class _BadResponse(Exception):
    """The server answered, but not with a complete HTTP response."""


class _NoResponse(Exception):
    """The server closed the connection before it sent a response."""


class _BadSmtp(Exception):
    """The server answered, but not with an SMTP reply."""


def describe_error(exc: BaseException) -> str:
    """One line for a failed connection or exchange, in the words an operator expects."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        return _short(f"TLS certificate not accepted: {detail}")
    if isinstance(exc, ssl.SSLError):
        detail = exc.reason or str(exc)
        return _short(f"TLS handshake failed: {detail}")
    if isinstance(exc, _NoResponse):
        return "server closed the connection without a response"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, _BadResponse | httptools.HttpParserError):
        return _short(f"bad HTTP response: {exc}")
    if isinstance(exc, _BadSmtp):
        return _short(f"bad SMTP reply: {exc}")
    if isinstance(exc, OSError) and exc.strerror:
        return _short(exc.strerror.lower())
    if isinstance(exc, dns.exception.DNSException):
        return _short(f"DNS: {exc}")
    return _short(f"{type(exc).__name__}: {exc}")


@lru_cache(maxsize=256)
def _body_regex(pattern: str) -> re.Pattern[bytes]:
    return re.compile(pattern.encode("utf-8"))


# Methods that carry a body: sent with "Content-Length: 0", as HTTP clients do.
_BODY_METHODS = frozenset({"POST", "PUT"})


@lru_cache(maxsize=65536)
def http_request(kind: HttpCheck, address: str, port: int) -> bytes:
    """The request bytes for one target, built once and sent on every probe.

    Host is the check's ``host``, else the address with the port unless it is the scheme's
    default; the connection is closed after the response (one connection per probe).
    """
    if kind.host:
        host = kind.host
    elif port == (443 if kind.type == "https" else 80):
        host = f"[{address}]" if ":" in address else address
    else:
        host = join_host_port(address, port)
    lines = [
        f"{kind.method} {kind.path} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: lvsctl-healthcheck",
        "Accept: */*",
        "Connection: close",
    ]
    if kind.method in _BODY_METHODS:
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _status_text(kind: HttpCheck) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in kind.status)


def judge_http(kind: HttpCheck, status: int, body: bytes | None) -> _Outcome:
    """Pure: does this status and body satisfy the check?"""
    if not kind.status_ok(status):
        return _Outcome(False, f"HTTP {status}, expected {_status_text(kind)}")
    if kind.body is not None:
        assert body is not None
        if not _body_regex(kind.body).search(body):
            return _Outcome(False, _short(f"HTTP {status}, body does not match /{kind.body}/"))
    if kind.digest is not None:
        assert body is not None
        algorithm, expected = kind.digest.split(":", 1)
        got = hashlib.new(algorithm, body).hexdigest()
        if got != expected:
            return _Outcome(False, f"HTTP {status}, body {algorithm} is {got[:16]}..., "
                                   f"expected {expected[:16]}...")
    return _Outcome(True, f"HTTP {status}")


def judge_exit(kind: MiscCheck, code: int, output: str) -> _Outcome:
    """Pure: what a misc check's exit code means (keepalived misc / misc_dynamic rules).

    0 healthy; 1 unhealthy; with ``dynamic``, 2..255 healthy with weight = code - 2;
    without it any non-zero code is unhealthy. A negative code is the signal that killed it.
    """
    last = _short(output.strip().splitlines()[-1]) if output.strip() else ""
    said = f": {last}" if last else ""
    if code < 0:
        return _Outcome(False, f"killed by signal {-code}{said}")
    if code == 0:
        return _Outcome(True, f"exit 0{said}")
    if kind.dynamic and code >= 2:
        return _Outcome(True, f"exit {code}: weight {code - 2}", code - 2)
    return _Outcome(False, f"exit {code}{said}")


class Checkers:
    """Every checker kind behind one ``check(target)``; keeps the TLS contexts.

    Use as ``async with Checkers() as checkers``; one instance serves all targets. Nothing else
    outlives a probe: each one opens and closes its own connection or process.
    """

    def __init__(self) -> None:
        self._ssl: dict[tuple[bool, str | None], ssl.SSLContext] = {}
        self._run: dict[type, Callable[[Check, _Probe], Awaitable[_Outcome]]] = {
            TcpCheck: self._tcp,
            HttpCheck: self._http,
            MiscCheck: self._misc,
            UdpCheck: self._udp,
            DnsCheck: self._dns,
            SmtpCheck: self._smtp,
            PingCheck: self._ping,
        }
        # Echo sequence numbers (and, on raw sockets, the identifier) tell this checker's
        # replies apart from any other's.
        self._ping_seq = itertools.count(1)
        self._ping_ident = os.getpid() & 0xFFFF

    async def __aenter__(self) -> Checkers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Forget the TLS contexts (the next https probe builds its own again)."""
        self._ssl.clear()

    def _ssl_context(self, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        # One context per (verify, CA file), shared by every probe: building one loads the
        # CA store, far more work than the probe itself.
        key = (verify, ca_file)
        context = self._ssl.get(key)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl[key] = context
        return context

    async def check(self, target: Check) -> CheckResult:
        """Probe ``target`` once; a failure is a result, not an exception."""
        # time.monotonic, not loop.time: uvloop's loop clock counts whole milliseconds and
        # stands still within one loop iteration, too coarse for a loopback probe's latency.
        start = time.monotonic()
        probe = _Probe()
        timeout = target.timing.timeout
        try:
            async with asyncio.timeout(timeout):
                outcome = await self._run[type(target.kind)](target, probe)
        except TimeoutError:
            if probe.timeout_is_healthy:
                outcome = _Outcome(True, f"no reply and no ICMP error within {timeout:g}s")
            else:
                return CheckResult(False, f"timed out after {timeout:g}s {probe.phase}",
                                   time.monotonic() - start, timed_out=True)
        except (OSError, _BadResponse, _NoResponse, _BadSmtp, httptools.HttpParserError,
                dns.exception.DNSException, ValueError) as exc:
            outcome = _Outcome(False, describe_error(exc))
        return CheckResult(outcome.healthy, outcome.reason, time.monotonic() - start,
                           outcome.weight)

    # -- tcp ------------------------------------------------------------------------------

    async def _tcp(self, target: Check, probe: _Probe) -> _Outcome:
        kind = target.kind
        assert isinstance(kind, TcpCheck)
        reader, writer = await asyncio.open_connection(target.address, target.port)
        try:
            if kind.send is not None:
                probe.phase = "sending"
                writer.write(payload_bytes(kind.send))
                await writer.drain()
            if kind.expect is None:
                return _Outcome(True, "connected")
            probe.phase = "waiting for the reply"
            want = payload_bytes(kind.expect)
            got = b""
            while len(got) < len(want):
                chunk = await reader.read(len(want) - len(got))
                if not chunk:
                    break
                got += chunk
            if got != want:
                return _Outcome(False, _short(f"reply {got!r} does not start with {want!r}"))
            return _Outcome(True, "reply matches")
        finally:
            writer.close()

    # -- http / https ---------------------------------------------------------------------

    async def _http(self, target: Check, probe: _Probe) -> _Outcome:
        kind = target.kind
        assert isinstance(kind, HttpCheck)
        tls: ssl.SSLContext | None = None
        server_hostname = None
        if kind.type == "https":
            tls = self._ssl_context(kind.verify, kind.ca_file)
            # The certificate is checked against the SNI name, else the Host name, else the
            # address (what a browser asking for that name would check).
            server_hostname = kind.sni or kind.host or None
            probe.phase = "connecting (TCP and TLS handshake)"
        loop = asyncio.get_running_loop()
        response: asyncio.Future[tuple[int, bytes | None]] = loop.create_future()
        wants_body = kind.body is not None or kind.digest is not None
        exchange = _HttpExchange(http_request(kind, target.address, target.port), response,
                                 probe, wants_body, kind.method == "HEAD")
        transport, _ = await loop.create_connection(
            lambda: exchange, target.address, target.port, ssl=tls,
            server_hostname=server_hostname,
        )
        try:
            status, body = await response
        finally:
            transport.close()
        return judge_http(kind, status, body)

    # -- misc -----------------------------------------------------------------------------

    async def _misc(self, target: Check, probe: _Probe) -> _Outcome:
        kind = target.kind
        assert isinstance(kind, MiscCheck)
        env = {
            **os.environ,
            "LVSCTL_CHECK_ADDRESS": target.address,
            "LVSCTL_CHECK_PORT": str(target.port),
        }
        probe.phase = f"running {kind.command[0]}"
        output = CappedOutput()
        code = await run_command(kind.command, env, output)
        return judge_exit(kind, code, output.kept.decode("utf-8", "replace"))

    # -- udp ------------------------------------------------------------------------------

    async def _udp(self, target: Check, probe: _Probe) -> _Outcome:
        kind = target.kind
        assert isinstance(kind, UdpCheck)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(reply), remote_addr=(target.address, target.port)
        )
        try:
            transport.sendto(payload_bytes(kind.send))
            probe.phase = "waiting for a reply"
            probe.timeout_is_healthy = not kind.require_reply
            data = await reply
        finally:
            transport.close()
        if kind.expect is not None and not data.startswith(payload_bytes(kind.expect)):
            return _Outcome(False, _short(f"reply {data[:40]!r} does not start with "
                                          f"{payload_bytes(kind.expect)!r}"))
        return _Outcome(True, f"reply of {len(data)} bytes")

    # -- dns ------------------------------------------------------------------------------

    async def _dns(self, target: Check, probe: _Probe) -> _Outcome:
        kind = target.kind
        assert isinstance(kind, DnsCheck)
        query = dns.message.make_query(kind.name, kind.qtype)
        probe.phase = f"waiting for the {kind.transport} answer"
        timeout = target.timing.timeout
        if kind.transport == "tcp":
            answer = await dns.asyncquery.tcp(query, target.address, timeout, target.port)
        else:
            answer = await dns.asyncquery.udp(
                query, target.address, timeout, target.port, ignore_unexpected=True
            )
        return judge_dns(kind, answer)


    # -- smtp -----------------------------------------------------------------------------

    async def _smtp(self, target: Check, probe: _Probe) -> _Outcome:
        """Greeting 220, HELO answered 250, QUIT; all within the check's one timeout."""
        kind = target.kind
        assert isinstance(kind, SmtpCheck)
        reader, writer = await asyncio.open_connection(target.address, target.port,
                                                       limit=MAX_SMTP_LINE + 2)
        try:
            probe.phase = "waiting for the SMTP greeting"
            code, text = await smtp_reply(reader)
            if code != 220:
                return _Outcome(False, _short(f"SMTP greeting {code} {text}, expected 220"))
            probe.phase = "waiting for the HELO reply"
            writer.write(f"HELO {kind.helo_name}\r\n".encode("ascii"))
            code, text = await smtp_reply(reader)
            if code != 250:
                return _Outcome(False, _short(f"SMTP HELO answered {code} {text}, "
                                              "expected 250"))
            # QUIT is a courtesy: the 221 is not waited for, the verdict is already known.
            writer.write(b"QUIT\r\n")
            return _Outcome(True, "SMTP 250 after HELO")
        finally:
            writer.close()

    # -- ping -----------------------------------------------------------------------------

    async def _ping(self, target: Check, probe: _Probe) -> _Outcome:
        """One ICMP echo request; healthy on the matching echo reply."""
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        sock, raw = open_icmp(family)
        with sock:
            sock.setblocking(False)
            # Connected: the kernel hands this socket only what comes from the target, and
            # reports an ICMP error about it (host unreachable) as the error of a receive.
            sock.connect((target.address, 0))
            seq = next(self._ping_seq) & 0xFFFF
            payload = b"lvsctl" + struct.pack("!Q", time.monotonic_ns())
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, echo_request(family, self._ping_ident, seq, payload))
            probe.phase = "waiting for the echo reply"
            while True:
                data = await loop.sock_recv(sock, 65535)
                # A datagram socket's identifier is chosen by the kernel, which also sorts
                # replies by it; a raw socket sees every ICMP message from the target.
                ident = self._ping_ident if raw else None
                if is_echo_reply(family, data, raw, ident, seq, payload):
                    return _Outcome(True, "echo reply")


def open_icmp(family: int) -> tuple[socket.socket, bool]:
    """An ICMP socket for echo requests: (socket, is raw).

    An ICMP datagram socket needs no privilege when the process's group is inside
    ``net.ipv4.ping_group_range`` (which covers IPv6 too); when it is refused, a raw socket
    (root or CAP_NET_RAW). Raises OSError when neither may be opened.
    """
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
            raise
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError:
        raise PermissionError(errno.EPERM, "may not open an ICMP socket (neither "
                                           "ping_group_range nor CAP_NET_RAW allows it)") from None


_ICMP_HEAD = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request. The ICMPv6 checksum covers a pseudo-header
    only the kernel knows; it fills it in (RFC 3542 3.1), as it does for datagram sockets."""
    kind = ECHO_REQUEST[family]
    checksum = 0
    if family == socket.AF_INET:
        checksum = icmp_checksum(_ICMP_HEAD.pack(kind, 0, 0, ident, seq) + payload)
    return _ICMP_HEAD.pack(kind, 0, checksum, ident, seq) + payload


def is_echo_reply(family: int, data: bytes, raw: bool, ident: int | None, seq: int,
                  payload: bytes) -> bool:
    """Pure: is ``data`` (as a socket of this kind received it) the reply to our request?

    A raw IPv4 socket receives the IP header too; raw ICMPv6 and datagram sockets do not.
    """
    if raw and family == socket.AF_INET:
        if len(data) < 20:
            return False
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < _ICMP_HEAD.size:
        return False
    kind, code, _, got_ident, got_seq = _ICMP_HEAD.unpack_from(data)
    return (kind == ECHO_REPLY[family] and code == 0 and got_seq == seq
            and (ident is None or got_ident == ident) and data[_ICMP_HEAD.size:] == payload)


async def smtp_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One SMTP reply, single- or multi-line: (code, text of its last line).

    Raises _BadSmtp for something that is not a reply (or one past the line bounds) and
    _NoResponse when the server closes first.
    """
    for _ in range(MAX_SMTP_LINES):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _BadSmtp(f"connection closed inside a line {exc.partial[:40]!r}") from None
            raise _NoResponse() from None
        except asyncio.LimitOverrunError:
            raise _BadSmtp(f"a reply line longer than {MAX_SMTP_LINE} bytes") from None
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            raise _BadSmtp(repr(text[:40]))
        if text[3:4] != "-":
            return int(text[:3]), text[4:]
    raise _BadSmtp(f"a reply of more than {MAX_SMTP_LINES} lines")


def judge_dns(kind: DnsCheck, answer: dns.message.Message) -> _Outcome:
    """Pure: does this DNS answer satisfy the check?"""
    rcode = answer.rcode()
    if rcode != dns.rcode.NOERROR:
        return _Outcome(False, f"DNS {dns.rcode.to_text(rcode)} for {kind.name} {kind.qtype}")
    rdtype = dns.rdatatype.from_text(kind.qtype)
    found = sorted(
        rd.to_text() for rrset in answer.answer if rrset.rdtype == rdtype for rd in rrset
    )
    if not found:
        return _Outcome(False, f"DNS no {kind.qtype} answer for {kind.name}")
    missing = [want for want in kind.expect if want not in found]
    if missing:
        return _Outcome(False, _short(f"DNS answer lacks {', '.join(missing)} "
                                      f"(got {', '.join(found)})"))
    return _Outcome(True, _short(f"DNS {kind.qtype} {', '.join(found)}"))


class CappedOutput:
    """A command's output read to its end, keeping only the last ``cap`` bytes of it."""

    def __init__(self, cap: int = MAX_MISC_OUTPUT) -> None:
        self.cap = cap
        self.kept = b""
        self.total = 0  # bytes read, kept or not

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.kept = (self.kept + chunk)[-self.cap:]


async def run_command(argv: tuple[str, ...], env: dict[str, str], output: CappedOutput) -> int:
    """Run ``argv`` (never a shell) to its end, its stdout and stderr read into ``output``;
    its exit code (negative: the signal that ended it).

    Cancelled (the check's deadline), it SIGKILLs the command's process group and waits for
    the command. The pipe is ours, not asyncio.subprocess's: a pipe of the child's that is
    full and never read again would keep ``wait()`` from returning (asyncio waits for the
    pipes to close), and a grandchild outside the group could hold it open for ever.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MISC_READ)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    try:
        # A session of its own, so a timeout can kill the child and anything it started
        # (its process group id is its pid).
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
            env=env, start_new_session=True,
        )
    except BaseException:
        pipe.close()
        raise
    finally:
        os.close(write_fd)
    transport: asyncio.BaseTransport | None = None
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
        while chunk := await reader.read(_MISC_READ):
            output.feed(chunk)
        return await process.wait()
    except BaseException:
        _kill_group(process.pid)
        await asyncio.shield(process.wait())
        raise
    finally:
        if transport is not None:
            transport.close()  # closes the pipe
        else:
            pipe.close()


class _HttpExchange(asyncio.Protocol):
    """One request on a fresh connection; hands (status, body) of the response to a future.

    The response is parsed by httptools (llhttp). The status is known once the head has
    arrived; the body is read only when the check looks at it (regex or digest), up to
    MAX_BODY bytes. Informational 1xx responses before the real one are skipped. The
    connection closing first is _NoResponse (or the reset that closed it); a body cut short
    of its Content-Length or chunked end is _BadResponse; without either, the body ends where
    the connection does. A head (all heads, 1xx included) past MAX_HTTP_HEAD bytes or
    MAX_HTTP_HEADER_LINES header lines is _BadResponse. ``probe.phase`` follows the exchange
    (sending, the status line, the headers, the body), so the check's one deadline can say
    what it was waiting for.
    """

    def __init__(self, request: bytes, response: asyncio.Future[tuple[int, bytes | None]],
                 probe: _Probe, wants_body: bool, head_only: bool) -> None:
        self._request = request
        self._response = response
        self._probe = probe
        self._wants_body = wants_body
        self._head_only = head_only  # a HEAD response has no body whatever its headers say
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._body: bytearray | None = None
        self._delimited = False  # the body's end is marked (Content-Length or chunked)
        self._head_bytes = 0  # bytes of the response heads so far (1xx heads included)
        self._header_lines = 0
        self._in_head = True

    # -- transport side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio's classes.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(self._request)
        # A request is a few hundred bytes: unless the socket buffer is full, it is sent.
        self._probe.phase = ("sending the request" if writer.get_write_buffer_size()
                             else "waiting for the status line")

    def data_received(self, data: bytes) -> None:
        if self._response.done():
            return
        if self._in_head:
            if self._probe.phase in ("sending the request", "waiting for the status line"):
                self._probe.phase = "reading the status line"
            if self._probe.phase == "reading the status line" and b"\n" in data:
                # The status line ended (the parser holds it); a find, not a parser callback:
                # this runs on every probe.
                self._probe.phase = "reading the headers"
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._response.done():
                self._response.set_exception(exc)
            return
        # One read is at most the transport's buffer (64-256 KiB), so the parser never holds
        # more than the bound and one read of an endless head.
        if self._in_head and self._head_bytes > MAX_HTTP_HEAD:
            self._fail(f"the response head is longer than {MAX_HTTP_HEAD} bytes")

    def _fail(self, reason: str) -> None:
        if not self._response.done():
            self._response.set_exception(_BadResponse(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._response.done():
            return
        if self._body is not None and not self._delimited:
            self._response.set_result((self._status, bytes(self._body)))
        elif self._body is not None:
            self._response.set_exception(_BadResponse(
                f"connection closed after {len(self._body)} bytes of the body"))
        else:
            self._response.set_exception(exc or _NoResponse())

    # -- parser side (httptools calls these from feed_data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > MAX_HTTP_HEADER_LINES:
            self._fail(f"the response has more than {MAX_HTTP_HEADER_LINES} header lines")
        if self._wants_body and name.lower() in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        if self._response.done():
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._delimited = False  # a 1xx head: the real response follows
            self._probe.phase = "waiting for the status line"
            return
        self._in_head = False
        self._status = status
        if not self._wants_body:
            self._response.set_result((status, None))
        elif self._head_only:
            self._response.set_result((status, b""))
        else:
            self._probe.phase = "reading the body"
            self._body = bytearray()

    def on_body(self, body: bytes) -> None:
        if self._body is None or self._response.done():
            return
        self._body += body[: MAX_BODY - len(self._body)]
        if len(self._body) >= MAX_BODY:
            self._response.set_result((self._status, bytes(self._body)))

    def on_message_complete(self) -> None:
        if self._body is not None and not self._response.done():
            self._response.set_result((self._status, bytes(self._body)))


class _Datagrams(asyncio.DatagramProtocol):
    """Hands the first reply, or the ICMP error of a connected UDP socket, to a future."""

    def __init__(self, reply: asyncio.Future[bytes]) -> None:
        self._reply = reply

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self._reply.done():
            self._reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ECONNREFUSED here is an ICMP port unreachable from the real server.
        if not self._reply.done():
            self._reply.set_exception(exc)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group we created for one misc check (pgid == its pid)."""
    # ProcessLookupError: it exited on its own between the timeout and the kill.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
