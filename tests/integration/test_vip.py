"""VIPs as kernel leases, in real network namespaces: expiry, renewal, release, announcements."""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import struct
import subprocess
import time

import pytest

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Announce, Vip
from lvsctl.director.vip import (
    KernelVips,
    Lease,
    StaleLease,
    _checksum,
    announce,
    interface_mac,
)
from lvsctl.testbed.netns import entered as inside

pytestmark = pytest.mark.netns

V4 = Vip("192.0.2.10", "eth0")
V6 = Vip("2001:db8::10", "eth0")


@pytest.fixture
def pair(lab):  # type: ignore[no-untyped-def]
    a, b = lab.netns("va"), lab.netns("vb")
    lab.link(a, "192.0.2.2/24", b, "192.0.2.3/24")
    return a, b


GONE_LIMIT = 30.0  # seconds: a bound on waiting for a lapsed address, not a speed


def wait_gone(vips: KernelVips, vip: Vip, limit: float) -> float:
    """Seconds until ``vip`` disappears (polling every 10 ms), or ``limit`` if it never does."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if vip.address not in vips.held((vip,)):
            return time.monotonic() - start
        time.sleep(0.01)
    return limit


@pytest.mark.parametrize("vip", [V4, V6], ids=["ipv4", "ipv6"])
def test_lease_expiry_removes_the_address_by_itself(pair, vip):  # type: ignore[no-untyped-def]
    a, _ = pair
    with inside(a.name):
        vips = KernelVips()
        acquired = time.monotonic()
        vips.acquire(vip, Lease(1))
        assert vips.held((V4, V6)) == {vip.address}
        wait_gone(vips, vip, GONE_LIMIT)
        gone_after = time.monotonic() - acquired
        vips.close()
    # Never before its lifetime (a late look only sees it later); waited for generously.
    assert 0.9 <= gone_after < GONE_LIMIT


def test_renew_keeps_the_address_and_stopping_lets_it_lapse(pair):  # type: ignore[no-untyped-def]
    a, _ = pair
    with inside(a.name):
        vips = KernelVips()
        # A lifetime far above the renewal period: a loaded machine may delay a renewal.
        vips.acquire(V4, Lease(3))
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:  # over twice the lifetime
            assert vips.held((V4,)) == {V4.address}
            vips.renew(V4, Lease(3))
            time.sleep(0.2)
        gone_after = wait_gone(vips, V4, GONE_LIMIT)
        vips.close()
    assert gone_after < GONE_LIMIT


def test_release_and_idempotent_acquire(pair):  # type: ignore[no-untyped-def]
    a, _ = pair
    with inside(a.name):
        vips = KernelVips()
        vips.acquire(V6, Lease(5))
        vips.acquire(V6, Lease(5))  # acquiring a present VIP is fine (and re-announces)
        out = a.ip("-6", "addr", "show", "dev", "eth0")
        assert out.count("2001:db8::10/128") == 1
        assert vips.release(V6) is True
        assert vips.release(V6) is False
        assert vips.held((V6,)) == frozenset()
        vips.close()


def capture(ns_name: str, ifname: str):  # type: ignore[no-untyped-def]
    with inside(ns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def frames(sock: socket.socket, seconds: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            got.append(sock.recv(2048))
    return got


def test_garp_and_unsolicited_na_reach_the_other_end(pair):  # type: ignore[no-untyped-def]
    a, b = pair
    sock = capture(b.name, "eth0")
    with inside(a.name):
        vips = KernelVips()
        vips.acquire(V4, Lease(5))
        vips.acquire(V6, Lease(5))
        mac = interface_mac("eth0")
        burst = Announce(count=3, interval=0.05)
        sent = [asyncio.run(announce(vip, mac, burst)) for vip in (V4, V6)]
        vips.close()
        with pytest.raises(KernelError, match="cannot read the address of nosuch0"):
            interface_mac("nosuch0")
    got = frames(sock, 1.0)
    sock.close()
    assert sent == [3, 3]
    link = subprocess.run(["ip", "-n", a.name, "-o", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout
    assert f"link/ether {mac.hex(':')} " in link

    garps = [f for f in got if f[12:14] == b"\x08\x06"]
    assert len(garps) == 3
    for f in garps:
        assert f[0:6] == b"\xff" * 6 and f[6:12] == mac
        htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", f[14:22])
        assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, 1)
        assert f[22:28] == mac
        assert f[28:32] == f[38:42] == ipaddress.IPv4Address(V4.address).packed

    nas = [f for f in got if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136]
    assert len(nas) == 3
    for f in nas:
        ip6, icmp = f[14:54], f[54:]
        assert ip6[7] == 255  # hop limit, or receivers must drop it
        assert ip6[24:40] == ipaddress.IPv6Address("ff02::1").packed
        target = icmp[8:24]
        assert target == ipaddress.IPv6Address(V6.address).packed
        assert struct.unpack("!I", icmp[4:8])[0] & 0x20000000  # override
        assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == mac
        pseudo = ip6[8:40] + struct.pack("!I3xB", len(icmp), 58)
        assert _checksum(pseudo + icmp) == 0  # a valid checksum sums to zero


def test_announce_stops_when_the_vip_is_released_mid_burst() -> None:
    sent: list[bytes] = []
    held = iter([True, False, True])

    async def no_sleep(_: float) -> None:
        return None

    count = asyncio.run(announce(
        V4, b"\x02" * 6, Announce(count=3, interval=0.1),
        send=lambda _if, frame: sent.append(frame), sleep=no_sleep,
        still_held=lambda: next(held),
    ))
    assert count == 1 and len(sent) == 1


def test_a_renewal_past_its_deadline_is_not_sent(pair):  # type: ignore[no-untyped-def]
    a, _ = pair
    with inside(a.name):
        vips = KernelVips()
        with pytest.raises(StaleLease):
            vips.renew(V4, Lease(1), not_after=time.monotonic() - 0.001)
        assert vips.held((V4,)) == frozenset()  # a stale verdict never re-adds a VIP
        vips.renew(V4, Lease(1), not_after=time.monotonic() + 1.0)
        assert vips.held((V4,)) == {V4.address}
        vips.close()
