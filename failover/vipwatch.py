"""Watch VIP addresses appear and vanish on a host, from the kernel's own address events.

This is the drill's ground truth for "who held the VIP when": a director's records say what it
believed, the kernel says what was configured — including a VIP that expired by itself after a
crash, or one added behind a director's back. Read-only: it never changes an address.

Run inside a director's namespace as ``python -m failover.vipwatch ADDRESS...``; it prints one
JSON object per change on stdout: ``{"wall": ..., "event": "add"|"del", "address": ...}``,
first the addresses already present (subscribing before the dump, so nothing falls between).
``NetnsVipObserver`` runs one per director and turns the events into ``Hold`` intervals.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO

from lvsctl.core.errors import LvsctlError
from lvsctl.failover.timeline import Hold

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWADDR, RTM_DELADDR = 20, 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLMSG_HDR = 16
IFADDRMSG = 8


def parse_addr_messages(data: bytes) -> list[tuple[str, str]]:
    """(``add``/``del``, address) for every RTM_NEWADDR/RTM_DELADDR in a netlink datagram."""
    out: list[tuple[str, str]] = []
    offset = 0
    while offset + NLMSG_HDR <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < NLMSG_HDR:
            break
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            body = data[offset + NLMSG_HDR: offset + length]
            address = _ifa_address(body)
            if address is not None:
                out.append(("add" if kind == RTM_NEWADDR else "del", address))
        offset += (length + 3) & ~3
    return out


def _ifa_address(body: bytes) -> str | None:
    if len(body) < IFADDRMSG:
        return None
    family = body[0]
    found: dict[int, bytes] = {}
    offset = IFADDRMSG
    while offset + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, offset)
        if alen < 4:
            break
        found[atype] = body[offset + 4: offset + alen]
        offset += (alen + 3) & ~3
    # IPv4 puts the host's own address in IFA_LOCAL (IFA_ADDRESS is the peer on p2p links).
    raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return str(ipaddress.ip_address(raw))


def present_addresses() -> set[str]:
    """Every address configured in this namespace now (``ip -j addr show``)."""
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    found = set()
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            if "local" in info:
                found.add(str(ipaddress.ip_address(info["local"])))
    return found


def watch(addresses: Iterable[str], emit: Callable[[dict[str, object]], None],
          stop: threading.Event, wall: Callable[[], float] = time.time) -> None:
    """Emit the watched addresses' changes until ``stop`` is set (present ones first)."""
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        present = present_addresses() & wanted
        now = wall()
        for address in sorted(present):
            emit({"wall": now, "event": "add", "address": address})
        emit({"wall": now, "event": "ready"})
        while not stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            data = sock.recv(1 << 16)
            now = wall()
            for event, address in parse_addr_messages(data):
                if address not in wanted:
                    continue
                # RTM_NEWADDR also comes on every lifetime renewal: only changes count.
                if event == "add" and address not in present:
                    present.add(address)
                    emit({"wall": now, "event": "add", "address": address})
                elif event == "del" and address in present:
                    present.discard(address)
                    emit({"wall": now, "event": "del", "address": address})
    finally:
        sock.close()


def holds_from_events(director: str, events: Iterable[Mapping[str, object]]) -> list[Hold]:
    """Turn one host's add/del events into holds (open when never deleted)."""
    started: dict[str, float] = {}
    out: list[Hold] = []
    for ev in events:
        address, kind = str(ev.get("address")), ev.get("event")
        wall = float(ev["wall"])  # type: ignore[arg-type]
        if kind == "add" and address not in started:
            started[address] = wall
        elif kind == "del" and address in started:
            out.append(Hold(director, address, started.pop(address), wall))
    out.extend(Hold(director, a, t) for a, t in started.items())
    return sorted(out, key=lambda h: (h.start, h.vip))


class ObserverError(LvsctlError):
    """A VIP watcher could not start or died."""


class NetnsVipObserver:
    """One ``failover.vipwatch`` process per director namespace (None: this namespace)."""

    def __init__(self, namespaces: Mapping[str, str | None], vips: Iterable[str],
                 ready_timeout: float = 10.0) -> None:
        self.namespaces = dict(namespaces)
        self.vips = list(vips)
        self.ready_timeout = ready_timeout
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._events: dict[str, list[dict[str, object]]] = {n: [] for n in self.namespaces}
        self._ready: dict[str, threading.Event] = {n: threading.Event() for n in self.namespaces}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for director, ns in self.namespaces.items():
            argv = [sys.executable, "-m", "failover.vipwatch", *self.vips]
            if ns is not None:
                argv = ["ip", "netns", "exec", ns, *argv]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            self._procs[director] = proc
            assert proc.stdout is not None
            thread = threading.Thread(target=self._read, args=(director, proc.stdout),
                                      daemon=True, name=f"vipwatch-{director}")
            thread.start()
            self._threads.append(thread)
        for director, ready in self._ready.items():
            if not ready.wait(self.ready_timeout):
                self.stop()
                raise ObserverError(f"the VIP watcher for {director} did not start")

    def _read(self, director: str, stream: IO[str]) -> None:
        for line in stream:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "ready":
                self._ready[director].set()
            else:
                self._events[director].append(ev)

    def holds(self) -> list[Hold]:
        out: list[Hold] = []
        for director, events in self._events.items():
            out.extend(holds_from_events(director, list(events)))
        return sorted(out, key=lambda h: (h.start, h.director, h.vip))

    def stop(self) -> list[Hold]:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()  # by PID: only the watchers this observer started
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        return self.holds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m failover.vipwatch")
    parser.add_argument("address", nargs="+")
    parser.add_argument("--duration", type=float, default=3600.0,
                        help="stop after this many seconds (bounded even if never stopped)")
    args = parser.parse_args(argv)
    try:
        for address in args.address:
            ipaddress.ip_address(address)
    except ValueError as exc:
        print(f"vipwatch: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timer = threading.Timer(args.duration, stop.set)
    timer.daemon = True
    timer.start()

    def emit(ev: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(ev) + "\n")
        sys.stdout.flush()

    try:
        watch(args.address, emit, stop)
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
