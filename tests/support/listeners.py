"""Real servers for health-check tests: HTTP(S), UDP echo and DNS listeners on loopback.

Each listener binds port 0 on a 127.x address, counts what it saw, and can change its
behaviour while running, so a test can make a real server fail and recover.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.message
import dns.rcode
import dns.rrset

# The head of a cluster file for check tests: the services (whose real servers are these
# listeners) follow it.
CLUSTER_HEAD = """
cluster: t
zookeeper: {hosts: ["127.0.0.1:2181"]}
directors:
  - {name: lb1, address: 127.0.0.2/8, interface: lo, peer: {address: 127.0.0.2}}
  - {name: lb2, address: 127.0.0.3/8, interface: lo, peer: {address: 127.0.0.3}}
vips: [{address: 192.0.2.10, interface: eth0}, {address: 192.0.2.11, interface: eth0}]
services:
"""

# What an HTTP listener does with a request.
OK = "ok"  # 200, body "ok\n"
ERROR = "error"  # 500
SLOW = "slow"  # 200 headers at once, then the body only after `slow_seconds`
RESET = "reset"  # read the request, then reset the connection (SO_LINGER 0)
WRONG = "wrong"  # 200 with body "maintenance\n"


@dataclass
class HttpListener:
    """A tiny HTTP/1.1 server on asyncio streams; ``requests`` counts requests per path."""

    address: str = "127.0.0.1"
    behaviour: str = OK
    slow_seconds: float = 5.0
    tls: ssl.SSLContext | None = None
    requests: Counter[str] = field(default_factory=Counter)
    hosts: list[str] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # responses per behaviour
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> HttpListener:
        self._server = await asyncio.start_server(self._serve, self.address, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            self.hosts.extend(
                line.split(":", 1)[1].strip() for line in lines[1:]
                if line.lower().startswith("host:")
            )
            self.requests[path] += 1
            self.served[self.behaviour] += 1
            if self.behaviour == RESET:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            status, body = {
                OK: (200, b"ok\n"), ERROR: (500, b"broken\n"), SLOW: (200, b"ok\n"),
                WRONG: (200, b"maintenance\n"),
            }[self.behaviour]
            reason = "OK" if status == 200 else "Internal Server Error"
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
            )
            if self.behaviour == SLOW:
                await writer.drain()
                await asyncio.sleep(self.slow_seconds)
            writer.write(body)
            await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self._tasks.discard(task)


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpEcho) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.received += 1
        if self.owner.reply is not None:
            self.transport.sendto(self.owner.reply or data, addr)


@dataclass
class UdpEcho:
    """Echoes each datagram (or sends ``reply``; None = stay silent)."""

    address: str = "127.0.0.1"
    reply: bytes | None = b""  # b"": echo what came
    received: int = 0
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> UdpEcho:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Echo(self), local_addr=(self.address, 0)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class DnsServer:
    """An authoritative DNS server built with dnspython, over UDP and TCP on one port.

    ``records`` maps (name, type) -> answers; anything else gets NXDOMAIN. ``queries`` counts.
    """

    address: str = "127.0.0.1"
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    queries: int = 0
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None

    def answer(self, wire: bytes) -> bytes:
        self.queries += 1
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        answers = self.records.get((name, rdtype))
        if answers is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.append(dns.rrset.from_text(name, 30, "IN", rdtype, *answers))
        return response.to_wire()

    async def start(self) -> DnsServer:
        # Find one port free for both transports: bind TCP first, then UDP on the same number.
        self._tcp = await asyncio.start_server(self._serve_tcp, self.address, 0)
        self.port = self._tcp.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        server = self

        class _Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(server.answer(data), addr)

        self._udp, _ = await loop.create_datagram_endpoint(
            _Udp, local_addr=(self.address, self.port)
        )
        return self

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = self.answer(await reader.readexactly(length))
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` made with Debian's openssl: (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def free_udp_port(address: str = "127.0.0.1") -> int:
    """A UDP port nobody listens on right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(address: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
