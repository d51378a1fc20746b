"""Loads a director meets in service — real servers, config pushes, API clients, peer traffic —
made bounded and repeatable, for benches and hostile-input tests.

Each traffic load runs as a process of its own (``python -m lvsctl.testbed.loads KIND ...``),
started inside a network namespace the caller created (``ip netns exec``), so its CPU is not
the measuring process's; every one stops by itself after ``--duration`` seconds and bounds its
counts. The cluster-file generators return YAML ``services:`` items for a file whose head
(cluster, ZooKeeper, directors, VIPs) the caller writes.

Real servers live on a routed range: in the real-server namespace ``ip route add local
10.77.0.0/16 dev lo`` makes every address of it local, so one wildcard listener per port
answers thousands of real-server addresses (the directors route the range to that namespace).

    python -m lvsctl.testbed.loads serve --duration 60          # ports 80 ok, 81 endless, 82 slow
    python -m lvsctl.testbed.loads api-flood --port 9180 --duration 20
    python -m lvsctl.testbed.loads api-flood --port 9180 --concurrency 0 --trickle 1  # slowloris
    python -m lvsctl.testbed.loads peer-flood --address 192.0.2.2 --port 7946 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

FARM_NET = ipaddress.IPv4Network("10.77.0.0/16")  # real servers with listeners
BULK_NET = ipaddress.IPv4Network("10.78.0.0/16")  # real servers nobody checks (config bulk)
PORT_OK, PORT_ENDLESS, PORT_SLOW = 80, 81, 82
PER_SUBNET = 250  # real servers per /24: .1 to .250
MAX_SERVERS = PER_SUBNET * 255  # per /16, from x.x.1.0 to x.x.255.250
HOSTILE_FIRST = PER_SUBNET * 200  # hostile real servers: 10.77.201.0 and up, apart from farms
MAX_DURATION = 600.0

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
STATUS_LINE = b"HTTP/1.1 200 OK\r\n"


def server_address(index: int, net: ipaddress.IPv4Network = FARM_NET) -> str:
    """The ``index``-th real-server address of ``net`` (.1 to .250 in each /24, from x.x.1.0).
    Raises ValueError past MAX_SERVERS."""
    if not 0 <= index < MAX_SERVERS:
        raise ValueError(f"real server index {index} is outside 0..{MAX_SERVERS - 1}")
    return str(net.network_address + (index // PER_SUBNET + 1) * 256 + index % PER_SUBNET + 1)


# -- cluster-file items ------------------------------------------------------------------------


def farm_services(vip: str, servers: int, *, name: str = "farm", first: int = 0,
                  per_service: int = 100, interval: str = "1s", timeout: str = "500ms",
                  first_port: int = 10000) -> list[str]:
    """Services of ``per_service`` real servers each, ``servers`` in all, on the farm range,
    each checked over HTTP on the farm's answering port (the service port itself is the DR
    port, equal on both sides as DR requires). ``name`` prefixes the names, ``first`` is the
    first real server's index on the range: two farms in one file differ in both."""
    lines: list[str] = []
    for group, start in enumerate(range(first, first + servers, per_service)):
        lines += [
            f"  - name: {name}{group}",
            f"    vip: {vip}",
            f"    port: {first_port + group}",
            "    forwarding: dr",
            f"    check: {{type: http, port: {PORT_OK}, path: /healthz, interval: {interval},"
            f" timeout: {timeout}, rise: 1, fall: 2, warmup: 0}}",
            "    realservers:",
            *(f"      - {{name: {name}{group}-{i}, address: {server_address(i)}}}"
              for i in range(start, min(start + per_service, first + servers))),
        ]
    return lines


def bulk_services(vip: str, target_bytes: int, *, variant: int = 0, per_service: int = 200,
                  first_port: int = 20000) -> list[str]:
    """Unchecked services whose text adds up to about ``target_bytes`` (never more):
    a large but valid file. ``variant`` changes the first real server's weight only, so two
    variants differ while the IPVS table they describe stays almost the same."""
    lines: list[str] = []
    size = 0
    index = 0
    group = 0
    while True:
        head = [f"  - name: bulk{group}", f"    vip: {vip}", f"    port: {first_port + group}",
                "    forwarding: dr", "    realservers:"]
        block = list(head)
        for _ in range(per_service):
            weight = 1 + variant % 2 if index == 0 else 1
            block.append(f"      - {{name: b{index}, address: {server_address(index, BULK_NET)},"
                         f" weight: {weight}}}")
            index += 1
        grown = sum(len(line) + 1 for line in block)
        if size + grown > target_bytes:
            # The last service only partly: as many real servers as still fit.
            room = target_bytes - size - sum(len(line) + 1 for line in head)
            take: list[str] = []
            for line in block[len(head):]:
                if room < len(line) + 1:
                    break
                take.append(line)
                room -= len(line) + 1
            if take:
                lines += head + take
            return lines
        lines += block
        size += grown
        group += 1


def hostile_http_services(vip: str, servers: int, port: int, *, name: str,
                          first_index: int = HOSTILE_FIRST,
                          service_port: int = 30000) -> list[str]:
    """One service of ``servers`` real servers checked over HTTP on ``port`` of the farm
    (PORT_ENDLESS or PORT_SLOW: they never finish their headers)."""
    return [
        f"  - name: {name}",
        f"    vip: {vip}",
        f"    port: {service_port}",
        "    forwarding: dr",
        f"    check: {{type: http, port: {port}, path: /, interval: 1s, timeout: 900ms, rise: 1,"
        " fall: 1, warmup: 0}",
        "    realservers:",
        *(f"      - {{name: {name}{i}, address: {server_address(first_index + i)}}}"
          for i in range(servers)),
    ]


CHATTY = ("import sys, time\n"
          "chunk = 'x' * 65536\n"
          "while True:\n"
          "    sys.stdout.write(chunk)\n"
          "    sys.stdout.flush()\n"
          "    time.sleep(0.01)\n")


def chatty_misc_services(vip: str, servers: int, *, python: str = sys.executable,
                         service_port: int = 30001) -> list[str]:
    """One service whose misc check prints without end (about 6 MB/s per check, so the
    director's memory is not the machine's undoing): the check's timeout must stop it."""
    command = json.dumps([python, "-c", CHATTY])
    return [
        "  - name: chatty",
        f"    vip: {vip}",
        f"    port: {service_port}",
        "    forwarding: dr",
        f"    check: {{type: misc, command: {command}, interval: 1s, timeout: 900ms, rise: 1,"
        " fall: 1, warmup: 0}",
        "    realservers:",
        *(f"      - {{name: chatty{i}, address: {server_address(HOSTILE_FIRST + 1000 + i)}}}"
          for i in range(servers)),
    ]


# -- the processes -------------------------------------------------------------------------------


@dataclass
class LoadProcess:
    """One load as a child process inside network namespace ``netns`` (None: here).

    ``start`` waits for its ``{"ready": ...}`` line; ``finish`` waits for it to end by itself
    (or ends it) and returns its last JSON line, the load's own counts.
    """

    kind: str
    args: Sequence[str]
    netns: str | None = None
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> LoadProcess:
        argv = [sys.executable, "-m", "lvsctl.testbed.loads", self.kind, *self.args]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout, ready),
                                        daemon=True)
        self._reader.start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"load {self.kind} did not start: {self.stderr()}")
        return self

    def _read(self, stream: IO[str], ready: threading.Event) -> None:
        for line in stream:
            self.lines.append(line)
            if line.startswith('{"ready"'):
                ready.set()
        ready.set()  # ended: start() reports it instead of waiting out its timeout

    def stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def finish(self, timeout: float) -> dict[str, object]:
        """Wait up to ``timeout`` s for the load to end by itself, then end it; its counts."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        if self._reader is not None:
            self._reader.join(5)  # its last line may still be on the way
        for line in reversed(self.lines):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
                if isinstance(result, dict) and "ready" not in result:
                    return result
        return {"error": f"no result: {self.stderr()}"}

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL), by its own PID only."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- inside the load processes -------------------------------------------------------------------


def _raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _emit(obj: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _until(duration: float) -> None:
    """Sleep ``duration`` s or until SIGTERM, whichever comes first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


async def serve(duration: float, slow_interval: float = 0.1) -> dict[str, int]:
    """Answer on every local address: PORT_OK with 200, PORT_ENDLESS with a status line then
    one header that never ends (64 KB at a time, as fast as the client reads),
    PORT_SLOW with a status line then a header one byte per ``slow_interval``."""
    counts = {"ok": 0, "endless": 0, "slow": 0, "endless_bytes": 0}

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["ok"] += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
        writer.close()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["endless"] += 1
        chunk = b"a" * 65536
        with contextlib.suppress(OSError):
            writer.write(STATUS_LINE + b"X-Endless: ")
            while True:  # ends when the client goes away (or with the process)
                writer.write(chunk)
                await writer.drain()
                counts["endless_bytes"] += len(chunk)
        writer.close()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["slow"] += 1
        with contextlib.suppress(OSError):
            writer.write(STATUS_LINE + b"X-Slow: ")
            while True:
                await asyncio.sleep(slow_interval)
                writer.write(b"a")
                await writer.drain()
        writer.close()

    _raise_nofile(65536)
    servers = [await asyncio.start_server(handler, "0.0.0.0", port, backlog=4096)
               for handler, port in ((ok, PORT_OK), (endless, PORT_ENDLESS), (slow, PORT_SLOW))]
    _emit({"ready": [PORT_OK, PORT_ENDLESS, PORT_SLOW]})
    await _until(duration)
    for server in servers:
        server.close()
    return counts


async def api_flood(host: str, port: int, duration: float, concurrency: int, half_open: int,
                    max_requests: int, trickle: float = 0.0) -> dict[str, int]:
    """``concurrency`` clients asking GET /status and /metrics on fresh connections as fast as
    answered, plus ``half_open`` connections that send half a request and then nothing (with
    ``trickle`` > 0, one more header byte every ``trickle`` s: a slowloris); at most
    ``max_requests`` requests in all. ``closed_by_server`` counts the half-open connections
    the server ended (``timed_out_408`` of them with a 408 answer)."""
    _raise_nofile(half_open + concurrency + 256)
    counts = {"requests": 0, "answered": 0, "errors": 0, "half_open": 0, "half_open_refused": 0,
              "closed_by_server": 0, "timed_out_408": 0}
    deadline = time.monotonic() + duration
    holders: list[asyncio.Task[None]] = []

    async def client(n: int) -> None:
        path = b"/metrics" if n % 2 else b"/status"
        while time.monotonic() < deadline and counts["requests"] < max_requests:
            counts["requests"] += 1
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await asyncio.wait_for(reader.read(), max(0.1, deadline - time.monotonic()))
                writer.close()
                counts["answered"] += 1
            except (OSError, TimeoutError):
                counts["errors"] += 1
                await asyncio.sleep(0.05)

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Keep one half-open connection until the deadline or until the server ends it."""
        try:
            while (left := deadline - time.monotonic()) > 0:
                if trickle > 0:
                    writer.write(b"X")
                try:
                    answer = await asyncio.wait_for(reader.read(4096),
                                                    min(left, trickle) if trickle > 0 else left)
                except TimeoutError:
                    continue
                counts["closed_by_server"] += 1
                counts["timed_out_408"] += answer.startswith(b"HTTP/1.1 408 ")
                return
        except OSError:
            counts["closed_by_server"] += 1
        finally:
            writer.close()

    async def open_half() -> None:
        for _ in range(half_open):
            if time.monotonic() >= deadline:
                return
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # no blank line
                holders.append(asyncio.create_task(hold(reader, writer)))
                counts["half_open"] += 1
            except (OSError, TimeoutError):
                counts["half_open_refused"] += 1
                await asyncio.sleep(0.05)

    _emit({"ready": "api-flood"})
    stop = asyncio.create_task(_until(duration))
    tasks = [asyncio.create_task(open_half()),
             *(asyncio.create_task(client(n)) for n in range(concurrency))]
    await stop  # the clients end by the same deadline; SIGTERM ends them sooner
    for task in [*tasks, *holders]:
        task.cancel()
    await asyncio.gather(*tasks, *holders, return_exceptions=True)
    return counts


async def peer_flood(address: str, port: int, duration: float, rate: int,
                     size: int) -> dict[str, int]:
    """Datagrams of ``size`` random bytes to ``address:port``, at most ``rate`` a second."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    counts = {"sent": 0, "dropped": 0}
    deadline = time.monotonic() + duration
    batch = max(1, rate // 100)
    _emit({"ready": "peer-flood"})
    while time.monotonic() < deadline:
        for _ in range(batch):
            try:
                sock.sendto(os.urandom(size), (address, port))
                counts["sent"] += 1
            except (BlockingIOError, OSError):
                counts["dropped"] += 1
        await asyncio.sleep(0.01)
    sock.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvsctl.testbed.loads")
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("serve", "api-flood", "peer-flood"):
        p = sub.add_parser(kind)
        p.add_argument("--duration", type=float, default=20.0)
    sub.choices["api-flood"].add_argument("--host", default="127.0.0.1")
    sub.choices["api-flood"].add_argument("--port", type=int, required=True)
    sub.choices["api-flood"].add_argument("--concurrency", type=int, default=64)
    sub.choices["api-flood"].add_argument("--half-open", type=int, default=300)
    sub.choices["api-flood"].add_argument("--max-requests", type=int, default=200000)
    sub.choices["api-flood"].add_argument("--trickle", type=float, default=0.0,
                                          help="seconds between header bytes (0: none)")
    sub.choices["peer-flood"].add_argument("--address", required=True)
    sub.choices["peer-flood"].add_argument("--port", type=int, required=True)
    sub.choices["peer-flood"].add_argument("--rate", type=int, default=20000)
    sub.choices["peer-flood"].add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration: expected more than 0 and at most {MAX_DURATION:g}")
    if args.kind == "serve":
        result = asyncio.run(serve(args.duration))
    elif args.kind == "api-flood":
        if not (0 <= args.concurrency <= 1000 and 0 <= args.half_open <= 20000
                and 0 <= args.trickle <= 60):
            parser.error("--concurrency: 0..1000, --half-open: 0..20000, --trickle: 0..60")
        result = asyncio.run(api_flood(args.host, args.port, args.duration, args.concurrency,
                                       args.half_open, args.max_requests, args.trickle))
    else:
        if not (0 < args.rate <= 200000 and 0 < args.size <= 65000):
            parser.error("--rate: 1..200000, --size: 1..65000")
        result = asyncio.run(peer_flood(args.address, args.port, args.duration, args.rate,
                                        args.size))
    _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
