"""Watch a host's VIP renewals from outside the director: the kernel's own address events.

Every ``ip addr replace`` of an address that has a lifetime — a director renewing a VIP lease —
makes the kernel send RTM_NEWADDR to the rtnetlink address groups, even when only the lifetime
changed (measured on this kernel, 6.18: four replaces 200 ms apart gave four RTM_NEWADDR, and
the expiry one RTM_DELADDR). The message's IFA_CACHEINFO carries ``tstamp``: the kernel's time
of that update, in hundredths of a second since boot. Gaps are taken from those stamps, so a
watcher delayed by a busy machine still measures the director, not itself; a netlink socket
gives no receive timestamps (SO_TIMESTAMPNS adds none), so the receive time is kept only to
place events on this process's monotonic clock.

Read-only: it never changes an address. Open the socket inside the director's network
namespace with :func:`subscribe` (called from a thread that has joined it), then hand it to
:class:`RenewalWatch`; :func:`window_figures` turns the events into a window's figures.
"""

from __future__ import annotations

import itertools
import math
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lvsctl.failover.vipwatch import (
    IFADDRMSG,
    NLMSG_HDR,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    parse_addr_messages,
)
from lvsctl.healthcheck.scheduler import percentile

IFA_CACHEINFO = 6
STAMP_RESOLUTION = 0.01  # the kernel reports tstamp in hundredths of a second
RCVBUF = 1 << 22  # a few thousand events: the watcher may be starved for seconds


@dataclass(frozen=True)
class AddrEvent:
    """One kernel address event for a watched address.

    ``kind`` is ``renew`` (RTM_NEWADDR: an add or a renewal) or ``del`` (RTM_DELADDR);
    ``received`` is when this process read it (monotonic seconds); ``stamp`` the kernel's time
    of the address's last update (seconds since boot, 10 ms steps; for ``del`` the last
    renewal's); ``valid`` the lifetime left then, in seconds (None: permanent or not given).
    """

    kind: str
    address: str
    received: float
    stamp: float | None
    valid: int | None


def _cacheinfo(message: bytes) -> tuple[float | None, int | None]:
    """(tstamp in seconds, valid lifetime) of one address message's IFA_CACHEINFO."""
    offset = NLMSG_HDR + IFADDRMSG
    while offset + 4 <= len(message):
        alen, atype = struct.unpack_from("=HH", message, offset)
        if alen < 4:
            break
        if atype == IFA_CACHEINFO and alen >= 4 + 16:
            # struct ifa_cacheinfo: ifa_prefered, ifa_valid, cstamp, tstamp
            _, valid, _, tstamp = struct.unpack_from("=IIII", message, offset + 4)
            return tstamp * STAMP_RESOLUTION, None if valid == 0xFFFFFFFF else valid
        offset += (alen + 3) & ~3
    return None, None


def parse_addr_events(data: bytes, received: float) -> list[AddrEvent]:
    """The address events in one netlink datagram (address parsing is vipwatch's)."""
    out: list[AddrEvent] = []
    offset = 0
    while offset + NLMSG_HDR <= len(data):
        (length,) = struct.unpack_from("=I", data, offset)
        if length < NLMSG_HDR:
            break
        message = data[offset: offset + length]
        for kind, address in parse_addr_messages(message):
            stamp, valid = _cacheinfo(message)
            out.append(AddrEvent("renew" if kind == "add" else "del", address, received,
                                 stamp, valid))
        offset += (length + 3) & ~3
    return out


def subscribe() -> socket.socket:
    """A netlink socket subscribed to IPv4 and IPv6 address events of the calling thread's
    network namespace. Raises OSError."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class RenewalWatch:
    """Records the events of ``addresses`` read from a :func:`subscribe` socket, in a thread.

    The socket is this watch's from ``start`` on (``stop`` closes it). A receive buffer
    overflow (ENOBUFS) is counted in ``overruns``: renewals were lost, the figures are not
    trustworthy, and the report must say so.
    """

    sock: socket.socket
    addresses: frozenset[str]
    clock: Callable[[], float] = time.monotonic
    events: list[AddrEvent] = field(default_factory=list)
    overruns: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RenewalWatch:
        self._thread = threading.Thread(target=self._run, daemon=True, name="renewal-watch")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                data = self.sock.recv(1 << 16)
            except OSError:  # ENOBUFS: the kernel dropped events for us
                self.overruns += 1
                continue
            now = self.clock()
            self.events.extend(ev for ev in parse_addr_events(data, now)
                               if ev.address in self.addresses)

    def stop(self) -> list[AddrEvent]:
        """Stop reading, close the socket; the events seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()
        return list(self.events)


# -- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """One address over one window: renewals seen, gaps between renewals (ms) and lapses."""

    renewals: int
    longest_ms: float
    p99_ms: float
    lapses: int
    gaps: int
    expired: int = 0  # lapses where the kernel let the lifetime run out (not a removal)

    def as_dict(self) -> dict[str, float | int]:
        return {"renewals": self.renewals, "longest_ms": round(self.longest_ms, 1),
                "p99_ms": round(self.p99_ms, 1), "lapses": self.lapses,
                "expired": self.expired, "gaps": self.gaps}


def stamp_offset(events: Iterable[AddrEvent]) -> float:
    """The monotonic time of kernel stamp 0: a renewal is read after it happened, so the
    smallest ``received - stamp`` is the offset, to within the stamps' 10 ms steps.
    Raises ValueError when no event carries a stamp."""
    return min(ev.received - ev.stamp for ev in events
               if ev.kind == "renew" and ev.stamp is not None)


def renewal_times(events: Sequence[AddrEvent], address: str) -> list[float]:
    """When ``address`` was renewed (or added), in monotonic seconds, from the kernel stamps.
    An event without a stamp (a permanent address) is placed at its receive time."""
    renewals = [ev for ev in events if ev.kind == "renew" and ev.address == address]
    try:
        offset = stamp_offset(renewals)
    except ValueError:
        offset = 0.0
    return sorted(ev.received if ev.stamp is None else ev.stamp + offset for ev in renewals)


def window_figures(events: Sequence[AddrEvent], address: str, start: float, end: float,
                   observed_until: float) -> Figures:
    """The figures of ``address`` for the window [``start``, ``end``] (monotonic seconds).

    A gap is the time between two consecutive renewals; after the last one it runs to
    ``observed_until`` (still open when watching stopped). A gap counts in every window it
    overlaps, so none is hidden by falling across a window's edge. A lapse is the address
    vanishing (RTM_DELADDR) inside the window, whether it expired or was removed, or being
    already gone when the window opened. ``expired`` counts the deletions whose message says
    no lifetime was left (the kernel's, in whole seconds): a removal comes with some left.
    """
    times = renewal_times(events, address)
    bounds = [*times, max(observed_until, times[-1])] if times else []
    gaps = sorted((b - a) * 1000 for a, b in itertools.pairwise(bounds)
                  if b > start and a < end and b > a)
    renewals = sum(1 for t in times if start <= t <= end)
    deleted = [ev for ev in events if ev.kind == "del" and ev.address == address]
    deletions = [ev.received for ev in deleted]
    lapses = sum(1 for t in deletions if start <= t <= end)
    expired = sum(1 for ev in deleted if start <= ev.received <= end and ev.valid == 0)
    last_renewal = max((t for t in times if t <= start), default=None)
    last_deletion = max((t for t in deletions if t <= start), default=None)
    if last_deletion is not None and (last_renewal is None or last_deletion > last_renewal):
        lapses += 1  # gone before the window opened, not back yet
    if not gaps:
        # Never renewed in or across the window: the whole window is one gap.
        return Figures(renewals, (end - start) * 1000, math.nan, lapses, 0, expired)
    return Figures(renewals, gaps[-1], percentile(gaps, 0.99), lapses, len(gaps), expired)
