"""The IPVS codec without a kernel: the declared attribute numbers are the kernel's, what is
encoded decodes back, and a dest nest in another order (or with 32-bit counters only) reads
the same as the kernel's usual layout. Against the real kernel: tests/contract."""

from __future__ import annotations

import random

import pytest

from lvsctl.core.model import (
    DestKey,
    DestSpec,
    Family,
    Forwarding,
    Protocol,
    ServiceKey,
    ServiceSpec,
)
from lvsctl.director import ipvs_codec as codec
from lvsctl.director.ipvs_rules import SyncDaemon, SyncState
from lvsctl.director.reconcile import AddDest, AddService, ObservedDest, Stats, kernel_spec


def test_declared_numbers_are_the_kernels() -> None:
    """A few from include/uapi/linux/ip_vs.h: a slip in a table shifts every later type."""
    assert (codec.SERVICE["FWMARK"], codec.SERVICE["PE_NAME"], codec.SERVICE["STATS64"]) == (
        5, 11, 12)
    assert (codec.DEST["ADDR_FAMILY"], codec.DEST["STATS64"], codec.DEST["TUN_FLAGS"]) == (
        11, 12, 15)
    assert (codec.STATS["OUTBPS"], codec.STATS64["INBYTES"]) == (10, 4)
    assert (codec.DAEMON["SYNC_ID"], codec.DAEMON["MCAST_TTL"]) == (3, 8)


SERVICES = [
    (ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80), ServiceSpec("wlc")),
    (ServiceKey.inet(Protocol.UDP, "192.0.2.10", 53), ServiceSpec("rr", persistence=300,
                                                                   netmask=24)),
    (ServiceKey.inet(Protocol.SCTP, "2001:db8::10", 443),
     ServiceSpec("mh", frozenset({"mh-port", "ops"}), persistence=60, netmask=64)),
    (ServiceKey.mark(Family.INET6, 8), ServiceSpec("sh", frozenset({"sh-fallback"}))),
]


@pytest.mark.parametrize(("key", "spec"), SERVICES, ids=[str(k) for k, _ in SERVICES])
def test_service_round_trip(key: ServiceKey, spec: ServiceSpec) -> None:
    _cmd, attrs = codec.op_request(AddService(key, spec))
    reply = codec.service_from_reply(attrs)
    assert reply is not None
    assert (reply.key, reply.spec, reply.stats) == (key, kernel_spec(key, spec), Stats())


def _addr16(address: str) -> bytes:
    return codec._addr16(Family.of(address), address)


def _kernel_dest(address: str, port: int, stats64: bool = True) -> list[tuple[str, object]]:
    """A dest nest's attributes in the order Linux writes them, counters last."""
    items: list[tuple[str, object]] = [
        ("ADDR", _addr16(address)), ("PORT", port), ("FWD_METHOD", 2), ("WEIGHT", 7),
        ("TUN_TYPE", 1), ("TUN_PORT", 6080), ("TUN_FLAGS", 1), ("U_THRESH", 0),
        ("L_THRESH", 0), ("ACTIVE_CONNS", 3), ("INACT_CONNS", 4), ("PERSIST_CONNS", 5),
        ("ADDR_FAMILY", int(Family.of(address))),
        ("STATS", codec.STATS.encode((n, i + 1) for i, n in enumerate(codec.STATS.by_name))),
    ]
    if stats64:
        items.append(("STATS64", codec.STATS64.encode(
            (n, 1000 * (i + 1)) for i, n in enumerate(codec.STATS64.by_name))))
    return items


def _expected(address: str, port: int, stats: Stats) -> ObservedDest:
    return ObservedDest(DestKey(address, port), weight=7, fwd=2, active_conns=3,
                        inactive_conns=4, persist_conns=5, tun_type=1, tun_port=6080,
                        tun_flags=1, stats=stats)


WIDE = Stats(*(1000 * (i + 1) for i in range(10)))
NARROW = Stats(*(i + 1 for i in range(10)))


@pytest.mark.parametrize("address", ["10.0.1.1", "2001:db8:1::21"])
@pytest.mark.parametrize("shuffled", [False, True], ids=["kernel-order", "other-order"])
@pytest.mark.parametrize("stats64", [True, False], ids=["stats64", "stats32"])
def test_dest_reads_the_same_in_any_order(address: str, shuffled: bool, stats64: bool) -> None:
    items = _kernel_dest(address, 8080, stats64)
    if shuffled:
        random.Random(7).shuffle(items)
    nest = codec.DEST.encode(items)
    want = _expected(address, 8080, WIDE if stats64 else NARROW)
    assert codec.decode_dest(nest, Family.INET) == want
    assert codec.decode_dest(nest, Family.INET, stats=False) == _expected(address, 8080, Stats())


def test_dest_ops_encode_their_spec() -> None:
    service = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
    op = AddDest(service, DestKey("10.0.1.1", 8080), DestSpec(9, Forwarding.NAT))
    cmd, attrs = codec.op_request(op)
    assert cmd == codec.CMD_NEW_DEST
    dest = codec.dest_from_reply(attrs, Family.INET, stats=False)
    assert dest is not None
    assert (dest.key, dest.spec) == (op.key, op.spec)


def test_sync_daemon_reply() -> None:
    reply = codec.nest(codec.ATTR_DAEMON, codec.DAEMON.encode([
        ("STATE", 2), ("MCAST_IFN", "sync0"), ("SYNC_ID", 42), ("SYNC_MAXLEN", 1472),
        ("MCAST_GROUP", "224.0.0.81"), ("MCAST_PORT", 8848), ("MCAST_TTL", 1)]))
    assert codec.daemon_from_reply(reply) == SyncDaemon(
        SyncState.BACKUP, "sync0", 42, 1472, "224.0.0.81", 8848, 1)
    start = codec.daemon_start(SyncState.MASTER, "sync0", 7)
    assert codec.daemon_from_reply(start) == SyncDaemon(SyncState.MASTER, "sync0", 7)
