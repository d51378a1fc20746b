"""VIP addresses as kernel leases: add, renew and remove them, and announce them (GARP / NA).

A VIP is added with an address lifetime (``valid_lft``/``preferred_lft``) of a few seconds and
renewed by ``replace`` while — and only while — the caller's leadership is confirmed. A director
that crashes or freezes stops renewing and the kernel deletes the address by itself
(DESIGN.md "The VIP is a kernel lease"). This is the only module that changes addresses and
sends ARP or neighbour advertisements.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Announce, Family, Vip

T = TypeVar("T")
IFA_F_NODAD = 0x02  # no duplicate address detection: the VIP is usable at once
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # ff02::1
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed


class StaleLease(KernelError):
    """A renewal not sent because its verdict had expired by the time of the kernel call."""


# rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
RTM_NEWADDR = 20
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO, IFA_FLAGS = 1, 2, 6, 8
RT_SCOPE_UNIVERSE = 0


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\x00" * ((4 - length % 4) % 4)


def newaddr_message(index: int, address: str, lifetime: int, seq: int) -> bytes:
    """RTM_NEWADDR (create or replace) of a host address with a lifetime, as bytes."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    flags = 0 if ip.version == 4 else IFA_F_NODAD
    body = struct.pack("=BBBBI", family, ip.max_prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_ADDRESS, ip.packed)
    if ip.version == 4:
        body += _attr(IFA_LOCAL, ip.packed)
    body += _attr(IFA_CACHEINFO, struct.pack("=IIII", lifetime, lifetime, 0, 0))
    body += _attr(IFA_FLAGS, struct.pack("=I", flags))
    head = struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq, 0)
    return head + body


def _ack(reply: bytes) -> int:
    """The errno of a netlink ACK (0 = success)."""
    if len(reply) >= 20 and struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
        return -struct.unpack_from("=i", reply, 16)[0]
    return 0


@dataclass(frozen=True)
class Lease:
    """How long the kernel keeps an address unless renewed, in whole seconds (kernel unit)."""

    lifetime: int = 1

    def __post_init__(self) -> None:
        if self.lifetime < 1:
            raise ValueError("a VIP lifetime is at least 1 second (the kernel counts seconds)")


class VipTable(Protocol):
    """What the daemon needs from VIP handling; the kernel implementation is ``KernelVips``."""

    def acquire(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        """Add (or renew) the address with the lease's lifetime. Raises KernelError."""

    def renew(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        """Restart the address's lifetime, unless the monotonic clock is past ``not_after``
        at the moment of the kernel call (raises StaleLease). Raises KernelError."""

    def release(self, vip: Vip) -> bool:
        """Remove the address; True if it was present. Raises KernelError."""

    def held(self, vips: tuple[Vip, ...]) -> frozenset[str]:
        """Which of ``vips`` are configured on their interfaces right now."""


class KernelVips:
    """VIPs on real interfaces through rtnetlink (pyroute2) in the current network namespace.

    pyroute2's synchronous API runs its own event loop, which cannot run inside the daemon's:
    every call goes to one worker thread (started here, so it shares our network namespace)
    and we wait for it — a netlink request takes well under a millisecond.
    """

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtnl")
        self._ipr: IPRoute = self._worker.submit(IPRoute).result()
        # Renewals go through a plain rtnetlink socket of ours (see renew()).
        self._nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self._nl.bind((0, 0))
        self._seq = itertools.count(1)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._worker.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._nl.close()
        self._call(self._ipr.close)
        self._worker.shutdown()

    def _index(self, ifname: str) -> int:
        # One ioctl, asked anew each time (an interface can be re-created with a new index);
        # pyroute2's link_lookup dumps every link and is too dear at the renewal rate.
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise KernelError(f"interface {ifname} does not exist", errno=errno.ENODEV) from None

    def acquire(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        self.renew(vip, lease, not_after)

    def renew(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        # The message is built first, so that the clock check is the very last thing before
        # the send: a director frozen (SIGSTOP) or starved after deciding to renew must not
        # re-add, on resuming, a VIP its leadership no longer covers. "replace" both adds and
        # renews: the kernel restarts the lifetime from when it handles the message.
        message = newaddr_message(self._index(vip.interface), vip.address, lease.lifetime,
                                  next(self._seq))
        if not_after is not None and time.monotonic() > not_after:
            raise StaleLease(f"renewal of {vip.address} came too late; not sent")
        try:
            self._nl.send(message)
            code = _ack(self._nl.recv(65536))
        except OSError as exc:  # ENOBUFS and the like: a failed renewal, not a dead keeper
            code = exc.errno or errno.EIO
        if code:
            raise KernelError(
                f"cannot add VIP {vip.address} on {vip.interface}: {os.strerror(code)}",
                op=("add", vip.address), errno=code,
            )

    def release(self, vip: Vip) -> bool:
        family = Family.of(vip.address)
        try:
            self._call(
                self._ipr.addr, "del", index=self._index(vip.interface), address=vip.address,
                prefixlen=family.host_prefix,
            )
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False  # already gone (the lease ran out, or never added)
            raise KernelError(
                f"cannot remove VIP {vip.address} from {vip.interface}: {exc.args[-1]}",
                op=("del", vip.address), errno=exc.code,
            ) from None
        except KernelError:
            return False  # the interface is gone, and the address with it
        return True

    def held(self, vips: tuple[Vip, ...]) -> frozenset[str]:
        wanted = {vip.address for vip in vips}
        present = set()
        for msg in self._call(self._ipr.get_addr):
            address = msg.get_attr("IFA_ADDRESS")
            if address is not None and str(ipaddress.ip_address(address)) in wanted:
                present.add(str(ipaddress.ip_address(address)))
        return frozenset(present)


# ---------------------------------------------------------------------------------------------
# Announcements: the frames are built here, a few bytes each (RFC 826/5227, RFC 4861 §4.4).
# ---------------------------------------------------------------------------------------------


def garp_frame(mac: bytes, address: str) -> bytes:
    """A gratuitous ARP request for ``address`` from ``mac``, as an Ethernet frame."""
    ip = ipaddress.IPv4Address(address).packed
    eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    # htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, oper 1 (request); sender = target = VIP.
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return eth + arp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na_frame(mac: bytes, address: str) -> bytes:
    """An unsolicited neighbour advertisement (override flag) for ``address`` to ff02::1."""
    src = ipaddress.IPv6Address(address).packed
    # type 136, code 0, checksum, flags (O = override), target, option 2 = target link-layer.
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + src + struct.pack("!BB", 2, 1) + mac
    pseudo = src + ALL_NODES + struct.pack("!I3xB", len(body), socket.IPPROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    # version 6, payload length, next header ICMPv6, hop limit 255 (required by RFC 4861).
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), socket.IPPROTO_ICMPV6, 255) + src + ALL_NODES
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def announce_frame(mac: bytes, vip: Vip) -> bytes:
    if Family.of(vip.address) is Family.INET:
        return garp_frame(mac, vip.address)
    return unsolicited_na_frame(mac, vip.address)


def interface_mac(ifname: str) -> bytes:
    """The hardware address of ``ifname``, as a packet socket bound to it sees it: one socket,
    no netlink request queued behind the renewals before a takeover's first announcement.
    Raises KernelError."""
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            mac: bytes = sock.getsockname()[4]
    except OSError as exc:
        raise KernelError(f"cannot read the address of {ifname}: {exc.strerror}",
                          errno=exc.errno) from None
    return mac


def send_frame(ifname: str, frame: bytes) -> None:
    """Send one raw Ethernet frame on ``ifname``. Raises KernelError."""
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            sock.send(frame)
    except OSError as exc:
        raise KernelError(
            f"cannot send an announcement on {ifname}: {exc.strerror}", errno=exc.errno
        ) from None


async def announce(
    vip: Vip,
    mac: bytes,
    burst: Announce,
    *,
    send: Callable[[str, bytes], None] = send_frame,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    still_held: Callable[[], bool] = lambda: True,
) -> int:
    """Send the burst (GARP for IPv4, unsolicited NA for IPv6); returns how many were sent.

    ``still_held`` is asked before each frame: a VIP released mid-burst is not announced further.
    """
    frame = announce_frame(mac, vip)
    sent = 0
    for i in range(burst.count):
        if not still_held():
            break
        send(vip.interface, frame)
        sent += 1
        if i + 1 < burst.count:
            await sleep(burst.interval)
    return sent


class KernelAnnouncer:
    """Announces VIPs on real interfaces (the keeper's ``Announcer``): the interface's MAC,
    then ``announce``'s burst."""

    async def __call__(self, vip: Vip, burst: Announce, still_held: Callable[[], bool]) -> int:
        """Raises KernelError when the interface is gone or a frame cannot be sent."""
        return await announce(vip, interface_mac(vip.interface), burst, still_held=still_held)
