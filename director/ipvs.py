"""The only module that speaks IPVS netlink: observe the table, apply ops, run the sync daemon.

``IpvsTable`` is the Protocol the director depends on; ``KernelIpvs`` implements it on the
kernel's generic-netlink family "IPVS", ``lvsctl.testbed.fake_ipvs.FakeIpvs`` in memory (the
contract suite in tests/contract proves both obey the same rules).

Why a codec of its own for services and dests: the table is written and read in bulk (10,000
dests), and pyroute2's per-request path (an event loop per call, generic nla objects) costs
far more per message than the kernel does. Services and dests are encoded here with
``struct`` and sent pipelined, many requests per ``send``, each acknowledged separately.
pyroute2 is used for what is not hot: resolving the family (``ctrlmsg``) and the
connection-sync daemon, whose messages pyroute2 has no schema for (``IpvsDaemonMsg`` below).
Writes are counted (``writes``) so a benchmark can show that one changed weight is one write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errnos
import functools
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cmp_to_key
from typing import Any, Protocol

from lvsctl.core.errors import KernelError, NoIpvsError
from lvsctl.core.model import (
    DestKey,
    DestSpec,
    Family,
    Forwarding,
    ServiceKey,
    ServiceSpec,
    canonical_address,
)
from lvsctl.core.model import (
    Protocol as IpProtocol,
)
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    EditService,
    ObservedDest,
    ObservedService,
    Op,
    Stats,
)

# ---------------------------------------------------------------------------------------------
# Kernel vocabulary shared with the fake: flags, fwd names, validation
# ---------------------------------------------------------------------------------------------

F_PERSISTENT = 0x0001
F_HASHED = 0x0002  # internal to the kernel, reported on every service
F_ONEPACKET = 0x0004
F_SCHED1, F_SCHED2, F_SCHED3 = 0x0008, 0x0010, 0x0020
_SCHED_BITS = (F_SCHED1, F_SCHED2, F_SCHED3)
# Scheduler flag names per scheduler, as ipvsadm prints them; sh and mh share the bits.
_FLAG_NAMES = {
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}
_GENERIC_FLAGS = ("flag-1", "flag-2", "flag-3")

IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_IFNAME_MAXLEN = 16
MAX_WEIGHT = 2**31 - 1  # the kernel keeps weights in an int and refuses negatives (ERANGE)


def flag_bits(scheduler: str, flags: frozenset[str]) -> int:
    """The kernel's service flag bits for scheduler flag names (and "ops")."""
    names = _FLAG_NAMES.get(scheduler, _GENERIC_FLAGS)
    bits = 0
    for flag in flags:
        if flag == "ops":
            bits |= F_ONEPACKET
            continue
        for table in (names, *_FLAG_NAMES.values(), _GENERIC_FLAGS):
            if flag in table:
                bits |= _SCHED_BITS[table.index(flag)]
                break
        else:
            raise ValueError(f"unknown service flag {flag!r}")
    return bits


def flag_names(scheduler: str, bits: int) -> frozenset[str]:
    """Flag names for the kernel's bits, named as ipvsadm names them for this scheduler."""
    names = _FLAG_NAMES.get(scheduler, _GENERIC_FLAGS)
    out = {names[i] for i, bit in enumerate(_SCHED_BITS) if bits & bit}
    if bits & F_ONEPACKET:
        out.add("ops")
    return frozenset(out)


def service_spec(scheduler: str, bits: int, timeout: int, netmask: int) -> ServiceSpec:
    """A ServiceSpec from what the kernel reports (netmask as a prefix length)."""
    persistent = bool(bits & F_PERSISTENT)
    return ServiceSpec(
        scheduler=scheduler,
        flags=flag_names(scheduler, bits),
        persistence=timeout if persistent else 0,
        netmask=netmask,
    )


def check_weight(op: Op, weight: int) -> None:
    if not 0 <= weight <= MAX_WEIGHT:
        raise KernelError(f"{op}: weight {weight} is out of range", op=op, errno=errnos.ERANGE)


class SyncState(IntEnum):
    """The connection-sync daemon's role (IPVS_DAEMON_ATTR_STATE)."""

    MASTER = 1
    BACKUP = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class SyncDaemon:
    """A running connection-sync daemon as the kernel reports it."""

    state: SyncState
    interface: str
    sync_id: int
    maxlen: int = 0
    group: str = ""
    port: int = 0
    ttl: int = 0


# ---------------------------------------------------------------------------------------------
# The Protocol the director depends on
# ---------------------------------------------------------------------------------------------


class IpvsTable(Protocol):
    """What the director needs from IPVS. Implemented by KernelIpvs and FakeIpvs.

    ``apply`` returns True when it changed the table and False when the kernel said it was
    already so (EEXIST on an add; ESRCH/ENOENT on a delete). Every other refusal raises
    KernelError carrying the op and the errno. ``observe`` raises KernelError (NoIpvsError on
    a kernel without IPVS) when the table cannot be read.
    """

    writes: int

    def observe(self, *, stats: bool = True) -> dict[ServiceKey, ObservedService]: ...

    def apply(self, op: Op) -> bool: ...

    def apply_all(self, ops: Sequence[Op]) -> list[bool]: ...

    def sync_daemons(self) -> list[SyncDaemon]: ...

    def start_sync_daemon(self, state: SyncState, interface: str, sync_id: int) -> None: ...

    def stop_sync_daemon(self, state: SyncState) -> bool: ...

    def close(self) -> None: ...


def done_errno(op: Op, code: int) -> bool:
    """Whether the kernel's ``code`` for ``op`` means "already so" (idempotent success)."""
    if isinstance(op, AddService | AddDest):
        return code == errnos.EEXIST
    if isinstance(op, DelService):
        return code == errnos.ESRCH
    if isinstance(op, DelDest):
        return code in (errnos.ENOENT, errnos.ESRCH)
    return False


def kernel_error(op: object, code: int) -> KernelError:
    reason = _REASONS.get(code) or os.strerror(code)
    return KernelError(f"{op}: the kernel refused: {reason} ({errnos.errorcode.get(code, code)})",
                       op=op, errno=code)


# The kernel's errnos for IPVS requests, in ipvsadm's words (libipvs ipvs_strerror).
_REASONS = {
    errnos.EEXIST: "already exists",
    errnos.ESRCH: "no such service",
    errnos.ENOENT: "no such destination, scheduler or persistence engine",
    errnos.EINVAL: "invalid request",
    errnos.ERANGE: "weight or threshold out of range",
    errnos.ENODEV: "no such interface",
    errnos.EPERM: "permission denied (run as root)",
}


# ---------------------------------------------------------------------------------------------
# Netlink codec for services and dests
# ---------------------------------------------------------------------------------------------

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON = 9, 10, 11
ATTR_SERVICE, ATTR_DEST, ATTR_DAEMON = 1, 2, 3

SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
SVC_STATS, SVC_PE_NAME, SVC_STATS64 = 10, 11, 12

DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT = 1, 2, 3, 4
DEST_U_THRESH, DEST_L_THRESH, DEST_ACTIVE_CONNS, DEST_INACT_CONNS = 5, 6, 7, 8
DEST_PERSIST_CONNS, DEST_STATS, DEST_ADDR_FAMILY, DEST_STATS64 = 9, 10, 11, 12
DEST_TUN_TYPE, DEST_TUN_PORT, DEST_TUN_FLAGS = 13, 14, 15

_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_U16, _U32, _U64, _BE16 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q"), \
    struct.Struct("!H")
_FLAGS = struct.Struct("=II")
GENL_VERSION = 1
_DUMPS = {4: "list IPVS services", 8: "list IPVS dests", 11: "list IPVS sync daemons"}


def _nla(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _addr16(family: Family, address: str) -> bytes:
    """The kernel's union nf_inet_addr: 16 bytes, IPv4 in the first four (as libipvs sends)."""
    af = socket.AF_INET if family is Family.INET else socket.AF_INET6
    return socket.inet_pton(af, address).ljust(16, b"\0")


@functools.lru_cache(maxsize=65536)
def _service_key_attrs(key: ServiceKey) -> bytes:
    """A service's identity attributes; cached, since every dest op of a service repeats them."""
    if key.fwmark:
        return _nla(SVC_AF, _U16.pack(key.family)) + _nla(SVC_FWMARK, _U32.pack(key.fwmark))
    assert key.protocol is not None and key.address is not None
    return (_nla(SVC_AF, _U16.pack(key.family))
            + _nla(SVC_PROTOCOL, _U16.pack(key.protocol.value))
            + _nla(SVC_ADDR, _addr16(key.family, key.address))
            + _nla(SVC_PORT, _BE16.pack(key.port)))


def _netmask_bytes(family: Family, prefix: int) -> bytes:
    if family is Family.INET:
        return int(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask).to_bytes(4, "big")
    # For IPv6 the kernel reads the same 32-bit field as a plain prefix length (host order).
    return _U32.pack(prefix)


def _netmask_prefix(family: Family, raw: bytes) -> int:
    if family is Family.INET:
        return bin(int.from_bytes(raw[:4], "big")).count("1")
    return int(_U32.unpack(raw[:4])[0])


def _service_attrs(key: ServiceKey, spec: ServiceSpec) -> bytes:
    bits = flag_bits(spec.scheduler, spec.flags) | (F_PERSISTENT if spec.persistence else 0)
    return _nla(ATTR_SERVICE | NLA_F_NESTED, _service_key_attrs(key)
                + _nla(SVC_SCHED_NAME, spec.scheduler.encode() + b"\0")
                + _nla(SVC_FLAGS, _FLAGS.pack(bits, 0xFFFFFFFF))
                + _nla(SVC_TIMEOUT, _U32.pack(spec.persistence))
                + _nla(SVC_NETMASK, _netmask_bytes(key.family, spec.netmask)))


# A whole dest nest in one pack (this is the hot path of a full apply): nest header, ADDR,
# PORT (network order, padded), ADDR_FAMILY (padded), then FWD_METHOD, WEIGHT, U_THRESH and
# L_THRESH for add/edit.
_DEST_KEY = struct.Struct("=HH HH16s HHH2x HHH2x")
_DEST_FULL = struct.Struct("=HH HH16s HHH2x HHH2x HHI HHI HHI HHI")


def _dest_attrs(key: DestKey, spec: DestSpec | None) -> bytes:
    six = ":" in key.address
    family = Family.INET6 if six else Family.INET
    packed = socket.inet_pton(socket.AF_INET6 if six else socket.AF_INET, key.address)
    head = (20, DEST_ADDR, packed, 6, DEST_PORT, socket.htons(key.port),
            6, DEST_ADDR_FAMILY, int(family))
    if spec is None:
        return _DEST_KEY.pack(_DEST_KEY.size, ATTR_DEST | NLA_F_NESTED, *head)
    return _DEST_FULL.pack(_DEST_FULL.size, ATTR_DEST | NLA_F_NESTED, *head,
                           8, DEST_FWD_METHOD, spec.forwarding.value, 8, DEST_WEIGHT, spec.weight,
                           8, DEST_U_THRESH, 0, 8, DEST_L_THRESH, 0)


def op_request(op: Op) -> tuple[int, bytes]:
    """The generic-netlink command and attributes for one op."""
    if isinstance(op, AddService | EditService):
        check_spec(op, op.key, op.spec)
        cmd = CMD_NEW_SERVICE if isinstance(op, AddService) else CMD_SET_SERVICE
        return cmd, _service_attrs(op.key, op.spec)
    if isinstance(op, DelService):
        return CMD_DEL_SERVICE, _nla(ATTR_SERVICE | NLA_F_NESTED, _service_key_attrs(op.key))
    svc = _nla(ATTR_SERVICE | NLA_F_NESTED, _service_key_attrs(op.service))
    if isinstance(op, DelDest):
        return CMD_DEL_DEST, svc + _dest_attrs(op.key, None)
    check_weight(op, op.spec.weight)
    cmd = CMD_NEW_DEST if isinstance(op, AddDest) else CMD_SET_DEST
    return cmd, svc + _dest_attrs(op.key, op.spec)


def check_spec(op: Op, key: ServiceKey, spec: ServiceSpec) -> None:
    """Refuse, as the kernel would, what cannot be encoded at all."""
    if not spec.scheduler or len(spec.scheduler) >= IP_VS_SCHEDNAME_MAXLEN:
        raise kernel_error(op, errnos.ENOENT)
    if not 0 < spec.netmask <= key.family.host_prefix:
        raise kernel_error(op, errnos.EINVAL)


def _attrs(buf: bytes | memoryview, start: int, end: int) -> dict[int, bytes | memoryview]:
    out: dict[int, bytes | memoryview] = {}
    while start + 4 <= end:
        size, kind = _NLA.unpack_from(buf, start)
        if size < 4:
            break
        out[kind & NLA_TYPE_MASK] = buf[start + 4:start + size]
        start += (size + 3) & ~3
    return out


_STATS_NAMES = ("conns", "inpkts", "outpkts", "inbytes", "outbytes", "cps", "inpps", "outpps",
                "inbps", "outbps")
_STATS32_FORMS = ("I", "I", "I", "Q", "Q", "I", "I", "I", "I", "I")


# The kernel writes the 64-bit stats nest as ten u64 attributes, types 1..10, in order; one
# unpack reads them all, and anything else takes the generic path below.
_STATS64_FIXED = struct.Struct("=" + "HHQ" * 10)
_STATS64_HEADS = [(12, i + 1) for i in range(10)]


def _stats(attrs: dict[int, bytes | memoryview], a32: int, a64: int) -> Stats:
    raw = attrs.get(a64)
    if raw is not None and len(raw) == _STATS64_FIXED.size:
        fields = _STATS64_FIXED.unpack_from(raw)
        if [(fields[i] & 0xFFFF, fields[i + 1] & NLA_TYPE_MASK)
                for i in range(0, 30, 3)] == _STATS64_HEADS:
            return Stats(*fields[2::3])
    wide = raw is not None
    if raw is None:
        raw = attrs.get(a32)
    if raw is None:
        return Stats()
    nested = _attrs(raw, 0, len(raw))
    values: dict[str, int] = {}
    for i, name in enumerate(_STATS_NAMES):
        item = nested.get(i + 1)
        if item is not None:
            form = "Q" if wide else _STATS32_FORMS[i]
            values[name] = struct.unpack_from("=" + form, item)[0]
    return Stats(**values)


def _u(attrs: dict[int, bytes | memoryview], kind: int, codec: struct.Struct,
       default: int = 0) -> int:
    raw = attrs.get(kind)
    return int(codec.unpack_from(raw)[0]) if raw is not None else default


def _address(family: int, raw: bytes | memoryview) -> str:
    if family == Family.INET:
        return socket.inet_ntop(socket.AF_INET, bytes(raw[:4]))
    return canonical_address(socket.inet_ntop(socket.AF_INET6, bytes(raw[:16])))


def _text(raw: bytes | memoryview | None) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode() if raw is not None else ""


def decode_service(payload: bytes | memoryview) -> ObservedService | None:
    """An ObservedService (without dests) from a service nest; None for a protocol with no name."""
    a = _attrs(payload, 0, len(payload))
    family = Family(_u(a, SVC_AF, _U16))
    fwmark = _u(a, SVC_FWMARK, _U32)
    if fwmark:
        key = ServiceKey.mark(family, fwmark)
    else:
        try:
            protocol = IpProtocol(_u(a, SVC_PROTOCOL, _U16))
        except ValueError:
            return None
        key = ServiceKey.inet(protocol, _address(family, a[SVC_ADDR]), _u(a, SVC_PORT, _BE16))
    scheduler = _text(a.get(SVC_SCHED_NAME))
    raw_flags = a.get(SVC_FLAGS)
    bits = _FLAGS.unpack_from(raw_flags)[0] if raw_flags is not None else 0
    netmask = _netmask_prefix(family, bytes(a[SVC_NETMASK])) if SVC_NETMASK in a else 0
    spec = service_spec(scheduler, bits, _u(a, SVC_TIMEOUT, _U32), netmask)
    if not spec.persistence:
        spec = ServiceSpec(spec.scheduler, spec.flags, 0, family.host_prefix)
    return ObservedService(key, spec, {}, _text(a.get(SVC_PE_NAME)),
                           _stats(a, SVC_STATS, SVC_STATS64))


_U8 = struct.Struct("=B")
# Dest attributes read as plain unsigned numbers: type -> (codec, field index in _DEST_FIELDS).
_DEST_FIELDS = ("port", "fwd", "weight", "u_threshold", "l_threshold", "active_conns",
                "inactive_conns", "persist_conns", "af", "tun_type", "tun_port", "tun_flags")
_DEST_NUMBERS = {
    DEST_PORT: (_BE16, 0), DEST_FWD_METHOD: (_U32, 1), DEST_WEIGHT: (_U32, 2),
    DEST_U_THRESH: (_U32, 3), DEST_L_THRESH: (_U32, 4), DEST_ACTIVE_CONNS: (_U32, 5),
    DEST_INACT_CONNS: (_U32, 6), DEST_PERSIST_CONNS: (_U32, 7), DEST_ADDR_FAMILY: (_U16, 8),
    DEST_TUN_TYPE: (_U8, 9), DEST_TUN_PORT: (_BE16, 10), DEST_TUN_FLAGS: (_U16, 11),
}


# The order and sizes in which Linux (ip_vs_genl_fill_dest, 5.2 and later) writes a dest's
# numbers. When a nest starts exactly so, one unpack reads them; otherwise the loop below does.
_DEST_LAYOUT = struct.Struct("=HH16s HHH2x HHI HHI HHB3x HHH2x HHH2x HHI HHI HHI HHI HHI HHH2x")
_DEST_LENS = (20, 6, 8, 8, 5, 6, 6, 8, 8, 8, 8, 8, 6)
_DEST_TYPES = (DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_TUN_TYPE,
               DEST_TUN_PORT, DEST_TUN_FLAGS, DEST_U_THRESH, DEST_L_THRESH, DEST_ACTIVE_CONNS,
               DEST_INACT_CONNS, DEST_PERSIST_CONNS, DEST_ADDR_FAMILY)


def _decode_dest_fast(buf: bytes, stats: bool) -> ObservedDest | None:
    if len(buf) < _DEST_LAYOUT.size:
        return None
    f = _DEST_LAYOUT.unpack_from(buf)
    if f[0::3] != _DEST_LENS or f[1::3] != _DEST_TYPES:
        return None
    counters = _NO_STATS
    offset = _DEST_LAYOUT.size
    while stats and offset + 4 <= len(buf):  # the two stats nests follow; read the 64-bit one
        size, kind = _NLA.unpack_from(buf, offset)
        if size < 4:
            break
        if kind & NLA_TYPE_MASK == DEST_STATS64:
            counters = _stats({DEST_STATS64: buf[offset + 4:offset + size]}, 0, DEST_STATS64)
            break
        offset += (size + 3) & ~3
    return ObservedDest(
        key=DestKey(_address(f[38], f[2]), socket.ntohs(f[5])),
        weight=f[11], fwd=f[8] & 0x7, active_conns=f[29], inactive_conns=f[32],
        persist_conns=f[35], u_threshold=f[23], l_threshold=f[26], tun_type=f[14],
        tun_port=socket.ntohs(f[17]), tun_flags=f[20], stats=counters,
    )


def decode_dest(payload: bytes | memoryview, family: Family, stats: bool = True
                ) -> ObservedDest:
    """An ObservedDest from a dest nest: with 10,000 dests this is most of what observing the
    table costs, hence the fixed-layout fast path."""
    buf = bytes(payload)
    fast = _decode_dest_fast(buf, stats)
    if fast is not None:
        return fast
    values = [0] * len(_DEST_FIELDS)
    values[8] = int(family)
    raw_addr = b""
    nested: dict[int, bytes | memoryview] = {}
    offset, end = 0, len(buf)
    numbers = _DEST_NUMBERS
    while offset + 4 <= end:
        size, kind = _NLA.unpack_from(buf, offset)
        if size < 4:
            break
        kind &= NLA_TYPE_MASK
        number = numbers.get(kind)
        if number is not None:
            values[number[1]] = number[0].unpack_from(buf, offset + 4)[0]
        elif kind == DEST_ADDR:
            raw_addr = buf[offset + 4:offset + size]
        elif stats and kind in (DEST_STATS, DEST_STATS64):
            nested[kind] = buf[offset + 4:offset + size]
        offset += (size + 3) & ~3
    (port, fwd, weight, u_threshold, l_threshold, active, inactive, persist, af, tun_type,
     tun_port, tun_flags) = values
    return ObservedDest(
        key=DestKey(_address(af, raw_addr), port),
        weight=weight,
        fwd=fwd & 0x7,
        active_conns=active,
        inactive_conns=inactive,
        persist_conns=persist,
        u_threshold=u_threshold,
        l_threshold=l_threshold,
        tun_type=tun_type,
        tun_port=tun_port,
        tun_flags=tun_flags,
        stats=_stats(nested, DEST_STATS, DEST_STATS64) if stats else _NO_STATS,
    )


_NO_STATS = Stats()


# ---------------------------------------------------------------------------------------------
# The connection-sync daemon's messages, on pyroute2's generic-netlink classes
# ---------------------------------------------------------------------------------------------


def _daemon_msg_class() -> Any:
    from pyroute2.netlink import genlmsg, nla

    class IpvsDaemonMsg(genlmsg):
        """IPVS_CMD_{NEW,DEL,GET}_DAEMON: pyroute2's ipvsmsg carries the daemon nest as hex."""

        prefix = "IPVS_CMD_ATTR_"
        nla_map = (
            ("IPVS_CMD_ATTR_UNSPEC", "none"),
            ("IPVS_CMD_ATTR_SERVICE", "hex"),
            ("IPVS_CMD_ATTR_DEST", "hex"),
            ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        )

        class daemon(nla):  # pyroute2 finds a nest's class by this name
            prefix = "IPVS_DAEMON_ATTR_"
            nla_map = (
                ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
                ("IPVS_DAEMON_ATTR_STATE", "uint32"),
                ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
                ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
                ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
                ("IPVS_DAEMON_ATTR_MCAST_GROUP", "ip4addr"),
                ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "ip6addr"),
                ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
                ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
            )

    return IpvsDaemonMsg


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000
BATCH = 256  # requests per send: well inside the default socket buffers
ANSWER_TIMEOUT = 30.0  # seconds; the kernel answers at once, this only ends a lost exchange


@contextlib.contextmanager
def _in_netns(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name`` (this thread only), then come back."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except OSError:
        os.close(own)
        raise KernelError(f"no network namespace {name!r}") from None
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise KernelError(f"cannot enter network namespace {name!r}: {os.strerror(code)}",
                              errno=code)
        try:
            yield
        finally:
            libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


class KernelIpvs:
    """IPVS in the running kernel (optionally inside network namespace ``netns``).

    Raises NoIpvsError when the kernel has no IPVS (after trying ``modprobe ip_vs`` once, as
    ipvsadm does), KernelError when the socket cannot be opened.
    """

    def __init__(self, netns: str | None = None, *, family_name: str = "IPVS",
                 modprobe: Callable[[], bool] | None = None) -> None:
        self.netns = netns
        self.writes = 0
        self._seq = 0
        self._buf = bytearray(1 << 17)
        with _in_netns(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(ANSWER_TIMEOUT)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            try:  # past net.core.rmem_max (as root): room for a whole batch of acks
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            family = self._family_id(family_name)
            if family is None and (modprobe or _modprobe_ip_vs)():
                family = self._family_id(family_name)
            if family is None:
                raise NoIpvsError()
            self.family = family
        except BaseException:
            self._sock.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> KernelIpvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _message(self, cmd: int, attrs: bytes, flags: int, seq: int) -> bytes:
        size = _NLMSGHDR.size + _GENLHDR.size + len(attrs)
        return (_NLMSGHDR.pack(size, self.family, flags, seq, 0)
                + _GENLHDR.pack(cmd, GENL_VERSION, 0) + attrs)

    def _messages(self) -> Iterator[tuple[int, int, memoryview]]:
        """(type, seq, whole message) for each netlink message of the next datagram."""
        try:
            size = self._sock.recv_into(self._buf)
        except TimeoutError:
            raise KernelError(f"the kernel did not answer an IPVS request within "
                              f"{ANSWER_TIMEOUT:g} s", errno=errnos.ETIMEDOUT) from None
        except OSError as exc:  # ENOBUFS: answers were lost; the table must be read again
            raise KernelError(f"reading IPVS answers failed: {exc.strerror}",
                              errno=exc.errno) from None
        view = memoryview(self._buf)[:size]
        offset = 0
        while offset + _NLMSGHDR.size <= size:
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(view, offset)
            if length < _NLMSGHDR.size:
                break
            yield kind, seq, view[offset:offset + length]
            offset += (length + 3) & ~3

    def _family_id(self, name: str) -> int | None:
        from pyroute2.netlink import CTRL_CMD_GETFAMILY, GENL_ID_CTRL, ctrlmsg

        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", name)]
        msg["header"]["type"] = GENL_ID_CTRL
        msg["header"]["flags"] = NLM_F_REQUEST
        msg["header"]["sequence_number"] = seq = self._next_seq()
        msg.encode()
        self._sock.send(msg.data)
        while True:
            for kind, got, data in self._messages():
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, 16)[0]
                    if code in (errnos.ENOENT, errnos.EOPNOTSUPP):
                        return None
                    raise KernelError(f"generic netlink lookup of IPVS failed: "
                                      f"{os.strerror(code)}", errno=code)
                reply = ctrlmsg(bytes(data))
                reply.decode()
                return int(reply.get_attr("CTRL_ATTR_FAMILY_ID"))

    def _dump(self, cmd: int, attrs: bytes) -> list[memoryview]:
        """The attribute area of every reply to a dump request (copied out of the buffer)."""
        seq = self._next_seq()
        self._sock.send(self._message(cmd, attrs, NLM_F_REQUEST | NLM_F_DUMP, seq))
        out: list[memoryview] = []
        while True:
            for kind, got, data in self._messages():
                if got != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, 16)[0]
                    if code:
                        raise kernel_error(_DUMPS.get(cmd, f"dump {cmd}"), code)
                    continue
                out.append(memoryview(bytes(data[_NLMSGHDR.size + _GENLHDR.size:])))

    def _requests(self, requests: Sequence[tuple[int, bytes]]) -> list[int]:
        """Send write requests pipelined; the errno of each (0 = done), in order."""
        codes: list[int] = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            seqs = [self._next_seq() for _ in chunk]
            self._sock.send(b"".join(
                self._message(cmd, attrs, NLM_F_REQUEST | NLM_F_ACK, seq)
                for (cmd, attrs), seq in zip(chunk, seqs, strict=True)))
            self.writes += len(chunk)
            waiting = set(seqs)
            answers: dict[int, int] = {}
            while waiting:
                for kind, seq, msg in self._messages():
                    if kind == NLMSG_ERROR and seq in waiting:
                        waiting.discard(seq)
                        answers[seq] = -struct.unpack_from("=i", msg, 16)[0]
            codes.extend(answers[seq] for seq in seqs)
        return codes

    # -- IpvsTable ----------------------------------------------------------------------------

    def observe(self, *, stats: bool = True) -> dict[ServiceKey, ObservedService]:
        """One pass over the table: every service and its dests with their connection counts,
        and (``stats``) their traffic counters and rates, which a reconcile pass can skip."""
        table: dict[ServiceKey, ObservedService] = {}
        for attrs in self._dump(CMD_GET_SERVICE, b""):
            nest = _attrs(attrs, 0, len(attrs)).get(ATTR_SERVICE)
            service = decode_service(nest) if nest is not None else None
            if service is None:
                continue
            dests: dict[DestKey, ObservedDest] = {}
            key_attrs = _nla(ATTR_SERVICE | NLA_F_NESTED, _service_key_attrs(service.key))
            for dattrs in self._dump(CMD_GET_DEST, key_attrs):
                dnest = _attrs(dattrs, 0, len(dattrs)).get(ATTR_DEST)
                if dnest is not None:
                    dest = decode_dest(dnest, service.key.family, stats)
                    dests[dest.key] = dest
            table[service.key] = ObservedService(service.key, service.spec, dests,
                                                 service.pe_name, service.stats)
        return table

    def apply(self, op: Op) -> bool:
        return self.apply_all([op])[0]

    def apply_all(self, ops: Sequence[Op]) -> list[bool]:
        """Apply ``ops`` in order, pipelined. Raises KernelError for the first op the kernel
        refused; the ops after it in the same batch of BATCH requests were tried too."""
        requests = [op_request(op) for op in ops]
        results: list[bool] = []
        for op, code in zip(ops, self._requests(requests), strict=True):
            if code and not done_errno(op, code):
                raise kernel_error(op, code)
            results.append(code == 0)
        return results

    def sync_daemons(self) -> list[SyncDaemon]:
        msg_class = _daemon_msg_class()
        out: list[SyncDaemon] = []
        for attrs in self._dump(CMD_GET_DAEMON, b""):
            raw = bytes(_GENLHDR.pack(CMD_GET_DAEMON, GENL_VERSION, 0)) + bytes(attrs)
            header = _NLMSGHDR.pack(_NLMSGHDR.size + len(raw), self.family, 0, 0, 0)
            msg = msg_class(header + raw)
            msg.decode()
            nest = msg.get_attr("IPVS_CMD_ATTR_DAEMON")
            if nest is None:
                continue
            out.append(SyncDaemon(
                state=SyncState(nest.get_attr("IPVS_DAEMON_ATTR_STATE")),
                interface=nest.get_attr("IPVS_DAEMON_ATTR_MCAST_IFN") or "",
                sync_id=nest.get_attr("IPVS_DAEMON_ATTR_SYNC_ID") or 0,
                maxlen=nest.get_attr("IPVS_DAEMON_ATTR_SYNC_MAXLEN") or 0,
                group=(nest.get_attr("IPVS_DAEMON_ATTR_MCAST_GROUP")
                       or nest.get_attr("IPVS_DAEMON_ATTR_MCAST_GROUP6") or ""),
                port=nest.get_attr("IPVS_DAEMON_ATTR_MCAST_PORT") or 0,
                ttl=nest.get_attr("IPVS_DAEMON_ATTR_MCAST_TTL") or 0,
            ))
        return sorted(out, key=lambda d: d.state)

    def _daemon_request(self, cmd: int, attrs: list[tuple[str, object]]) -> int:
        msg = _daemon_msg_class()()
        msg["cmd"] = cmd
        msg["version"] = GENL_VERSION
        msg["attrs"] = [("IPVS_CMD_ATTR_DAEMON", {"attrs": attrs})]
        msg["header"]["type"] = self.family
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        msg["header"]["sequence_number"] = seq = self._next_seq()
        msg.encode()
        self._sock.send(msg.data)
        self.writes += 1
        while True:
            for kind, got, data in self._messages():
                if got == seq and kind == NLMSG_ERROR:
                    return int(-struct.unpack_from("=i", data, 16)[0])

    def start_sync_daemon(self, state: SyncState, interface: str, sync_id: int) -> None:
        """Start the master or backup daemon. KernelError: EEXIST if that one already runs,
        ENODEV for a missing interface."""
        what = f"start sync daemon {state.label} on {interface} (sync id {sync_id})"
        check_sync_args(what, interface, sync_id)
        code = self._daemon_request(CMD_NEW_DAEMON, [
            ("IPVS_DAEMON_ATTR_STATE", int(state)),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", interface),
            ("IPVS_DAEMON_ATTR_SYNC_ID", sync_id),
        ])
        if code:
            raise kernel_error(what, code)

    def stop_sync_daemon(self, state: SyncState) -> bool:
        """Stop the master or backup daemon; False if it was not running (ESRCH)."""
        code = self._daemon_request(CMD_DEL_DAEMON, [("IPVS_DAEMON_ATTR_STATE", int(state))])
        if code == errnos.ESRCH:
            return False
        if code:
            raise kernel_error(f"stop sync daemon {state.label}", code)
        return True


def open_ipvs(netns: str | None = None, fake: str | None = None) -> IpvsTable:
    """The kernel's IPVS (in ``netns`` if given), or the fake stored in file ``fake``."""
    if fake is not None:
        from lvsctl.testbed.fake_ipvs import FakeIpvs

        return FakeIpvs(fake)
    return KernelIpvs(netns=netns)


def check_sync_args(what: str, interface: str, sync_id: int) -> None:
    if not interface or len(interface) >= IP_VS_IFNAME_MAXLEN:
        raise kernel_error(what, errnos.EINVAL)
    if not 0 <= sync_id <= 255:
        raise kernel_error(what, errnos.EINVAL)


def _modprobe_ip_vs() -> bool:
    """Load ip_vs as ipvsadm does when the family is missing; True if modprobe succeeded."""
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    try:
        done = subprocess.run([modprobe, "-q", "--", "ip_vs"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# ---------------------------------------------------------------------------------------------
# ipvsadm-compatible text: `lvsctl ipvs save` prints what `ipvsadm -S -n` prints
# ---------------------------------------------------------------------------------------------


def _wrap_int(value: int) -> int:
    """C's int conversion of an unsigned 32-bit difference (libipvs compares by subtracting)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _addr_words(address: str | None) -> list[int]:
    if address is None:
        return [0]
    packed = ipaddress.ip_address(address).packed
    return [int.from_bytes(packed[i:i + 4], "big") for i in range(0, len(packed), 4)]


def _cmp_words(a: list[int], b: list[int]) -> int:
    for x, y in zip(a, b, strict=False):
        r = _wrap_int(x - y)
        if r:
            return r
    return 0


def _cmp_services(s1: ObservedService, s2: ObservedService) -> int:
    """libipvs's ipvs_cmp_services, including its unsigned-subtraction quirks."""
    k1, k2 = s1.key, s2.key
    for a, b in ((k1.fwmark, k2.fwmark), (int(k1.family), int(k2.family)),
                 (_proto_number(k1), _proto_number(k2))):
        r = _wrap_int(a - b)
        if r:
            return r
    r = _cmp_words(_addr_words(k1.address), _addr_words(k2.address))
    return r or (k1.port - k2.port)


def _cmp_dests(d1: ObservedDest, d2: ObservedDest) -> int:
    r = _cmp_words(_addr_words(d1.key.address), _addr_words(d2.key.address))
    return r or (d1.key.port - d2.key.port)


def _proto_number(key: ServiceKey) -> int:
    # The kernel reports fwmark services with protocol TCP.
    return key.protocol.value if key.protocol is not None else IpProtocol.TCP.value


def sorted_services(table: dict[ServiceKey, ObservedService]) -> list[ObservedService]:
    return sorted(table.values(), key=cmp_to_key(_cmp_services))


def sorted_dests(service: ObservedService) -> list[ObservedDest]:
    return sorted(service.dests.values(), key=cmp_to_key(_cmp_dests))


_RULE_PROTO = {IpProtocol.TCP: "-t", IpProtocol.UDP: "-u", IpProtocol.SCTP: "--sctp-service"}
_FWD_SWITCH = {0: "-m", 1: "-g", 2: "-i", 3: "-g"}
_TUN_NAMES = {0: "ipip", 1: "gue", 2: "gre"}
_TUN_CSUM = {0: "--tun-nocsum", 1: "--tun-csum", 2: "--tun-remcsum"}


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def rule_name(key: ServiceKey) -> str:
    """The service as ipvsadm -S writes it: "-t 192.0.2.10:80", "-f 7 -6"."""
    if key.fwmark:
        return f"-f {key.fwmark} -6" if key.family is Family.INET6 else f"-f {key.fwmark}"
    assert key.protocol is not None and key.address is not None
    return f"{_RULE_PROTO[key.protocol]} {_host_port(key.address, key.port)}"


def _sched_flag_text(service: ObservedService) -> str:
    names = _FLAG_NAMES.get(service.spec.scheduler, _GENERIC_FLAGS)
    return ",".join(name for name in names if name in service.spec.flags)


def save_text(table: dict[ServiceKey, ObservedService]) -> str:
    """The table in ``ipvsadm -S -n`` form (what ``ipvsadm -R`` reads back)."""
    lines: list[str] = []
    for service in sorted_services(table):
        name = rule_name(service.key)
        spec = service.spec
        line = f"-A {name} -s {spec.scheduler}"
        if spec.persistence:
            line += f" -p {spec.persistence}"
            if spec.netmask != service.key.family.host_prefix:
                if service.key.family is Family.INET:
                    line += f" -M {ipaddress.IPv4Network(f'0.0.0.0/{spec.netmask}').netmask}"
                else:
                    line += f" -M {spec.netmask}"
        if service.pe_name:
            line += f" --pe {service.pe_name}"
        if "ops" in spec.flags:
            line += " -o"
        flags = _sched_flag_text(service)
        if flags:
            line += f" -b {flags}"
        lines.append(line)
        for dest in sorted_dests(service):
            line = (f"-a {name} -r {_host_port(dest.key.address, dest.key.port)} "
                    f"{_FWD_SWITCH.get(dest.fwd, '-g')} -w {dest.weight}")
            if dest.fwd == Forwarding.TUN.value:
                line += f" --tun-type {_TUN_NAMES.get(dest.tun_type, 'ipip')}"
                if dest.tun_type == 1:
                    line += f" --tun-port {dest.tun_port}"
                if dest.tun_type in (1, 2):
                    line += f" {_TUN_CSUM.get(dest.tun_flags, '--tun-nocsum')}"
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)
