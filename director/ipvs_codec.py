"""IPVS's generic-netlink messages as bytes: the attributes declared as data, encoders for ops
and the sync daemon, decoders for what the kernel dumps. Pure: no socket (see ``ipvs_kernel``).

Each nest's attributes are declared once as a table (``AttrSet``), as pyroute2 declares an
``nla_map``: the position is the attribute's type, the form says how its payload is laid out.
Generic ``encode``/``decode`` serve everything that is not hot. Two paths are hot — writing
10,000 dest ops and reading 10,000 dests back — and take a fixed ``struct`` layout built from
the same tables (``layout``): one ``pack`` per dest written, one ``unpack`` per dest read when
the kernel writes a nest in the order Linux 5.2 and later do.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from lvsctl.core.model import (
    DestKey,
    DestSpec,
    Family,
    ServiceKey,
    ServiceSpec,
    canonical_address,
)
from lvsctl.core.model import Protocol as IpProtocol
from lvsctl.director.ipvs_rules import SyncDaemon, SyncState, service_bits, service_spec
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
# Netlink and generic-netlink framing
# ---------------------------------------------------------------------------------------------

NETLINK_GENERIC = 16
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
GENL_VERSION = 1

NLMSGHDR = struct.Struct("=IHHII")
GENLHDR = struct.Struct("=BBH")
NLA = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
HEADERS = NLMSGHDR.size + GENLHDR.size

# IPVS_CMD_* and IPVS_CMD_ATTR_*
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON = 9, 10, 11
ATTR_SERVICE, ATTR_DEST, ATTR_DAEMON = 1, 2, 3
DUMP_NAMES = {CMD_GET_SERVICE: "list IPVS services", CMD_GET_DEST: "list IPVS dests",
              CMD_GET_DAEMON: "list IPVS sync daemons"}


def message(family: int, cmd: int, attrs: bytes, flags: int, seq: int) -> bytes:
    """One generic-netlink request: headers, then ``attrs``."""
    return (NLMSGHDR.pack(HEADERS + len(attrs), family, flags, seq, 0)
            + GENLHDR.pack(cmd, GENL_VERSION, 0) + attrs)


def messages(view: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(type, seq, whole message) for each netlink message in one datagram."""
    offset, size = 0, len(view)
    while offset + NLMSGHDR.size <= size:
        length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size:
            break
        yield kind, seq, view[offset:offset + length]
        offset += (length + 3) & ~3


def error_code(msg: memoryview) -> int:
    """The errno of an NLMSG_ERROR message (0 for an acknowledgement)."""
    return -int(_ERRNO.unpack_from(msg, NLMSGHDR.size)[0])


def nla(kind: int, payload: bytes) -> bytes:
    size = NLA.size + len(payload)
    return NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, payload: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, payload)


def attrs(buf: bytes | memoryview) -> dict[int, bytes | memoryview]:
    """The attributes of ``buf`` by type (the last one wins), payloads uninterpreted."""
    out: dict[int, bytes | memoryview] = {}
    start, end = 0, len(buf)
    while start + 4 <= end:
        size, kind = NLA.unpack_from(buf, start)
        if size < 4:
            break
        out[kind & NLA_TYPE_MASK] = buf[start + 4:start + size]
        start += (size + 3) & ~3
    return out


# ---------------------------------------------------------------------------------------------
# Attributes declared as data
# ---------------------------------------------------------------------------------------------

# form -> (struct for the value, or None for a variable-length payload). "be16" is a port in
# network order; in a fixed layout it is packed native and swapped by the caller (htons).
_NUMBERS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "be16": "H"}
_FIXED = {"addr16": 16, "flags": 8}  # payloads of fixed size that are not one number


@dataclass(frozen=True)
class Attr:
    """One attribute of a nest: its type number, its name and its payload's form."""

    type: int
    name: str
    form: str  # u8 u16 u32 u64 be16 | asciiz | in4 in6 | addr16 | flags | nested | binary

    @functools.cached_property
    def number(self) -> struct.Struct | None:
        """The struct of a number's payload (None for other forms)."""
        if self.form not in _NUMBERS:
            return None
        return struct.Struct(("!" if self.form == "be16" else "=") + _NUMBERS[self.form])


class AttrSet:
    """A nest's attributes by position, as pyroute2 declares an ``nla_map``: the first entry is
    type 0 (UNSPEC, never sent)."""

    def __init__(self, name: str, declared: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self.by_name = {n: Attr(i, n, form) for i, (n, form) in enumerate(declared) if i}
        self.by_type = {a.type: a for a in self.by_name.values()}

    def __getitem__(self, name: str) -> int:
        """The type number of attribute ``name``."""
        return self.by_name[name].type

    def encode(self, items: Iterable[tuple[str, object]]) -> bytes:
        """Attributes from (name, value) pairs, in the order given."""
        out = []
        for name, value in items:
            attr = self.by_name[name]
            out.append(nla(attr.type, _encode_value(attr, value)))
        return b"".join(out)

    def decode(self, buf: bytes | memoryview) -> Values:
        """The attributes of ``buf``, each read by name when asked for."""
        return Values(self, attrs(buf))


class Values:
    """A nest's attributes read by name with the type the caller expects; an attribute that
    is absent (or of another form) reads as the default. Decoded on access: a reply carries
    more than most readers want."""

    def __init__(self, attrset: AttrSet, raw: dict[int, bytes | memoryview]) -> None:
        self._set = attrset
        self._raw = raw

    def _get(self, name: str) -> object:
        attr = self._set.by_name[name]
        raw = self._raw.get(attr.type)
        return None if raw is None else _decode_value(attr, raw)

    def names(self) -> list[str]:
        """The names of the known attributes present."""
        return [a.name for t, a in self._set.by_type.items() if t in self._raw]

    def num(self, name: str, default: int = 0) -> int:
        value = self._get(name)
        return value if isinstance(value, int) else default

    def text(self, name: str) -> str:
        value = self._get(name)
        return value if isinstance(value, str) else ""

    def raw(self, name: str) -> bytes | None:
        value = self._get(name)
        return value if isinstance(value, bytes) else None


def _encode_value(attr: Attr, value: object) -> bytes:
    form = attr.form
    if attr.number is not None:
        assert isinstance(value, int)
        return attr.number.pack(value)
    if form == "asciiz":
        assert isinstance(value, str)
        return value.encode() + b"\0"
    if form in ("in4", "in6"):
        assert isinstance(value, str)
        return socket.inet_pton(socket.AF_INET if form == "in4" else socket.AF_INET6, value)
    if form == "flags":
        assert isinstance(value, tuple)
        return _FLAGS.pack(*value)
    assert isinstance(value, bytes)
    return value


def _decode_value(attr: Attr, raw: bytes | memoryview) -> object:
    if attr.number is not None:
        return attr.number.unpack_from(raw)[0]
    form = attr.form
    if form == "asciiz":
        return bytes(raw).split(b"\0", 1)[0].decode()
    if form in ("in4", "in6"):
        return socket.inet_ntop(socket.AF_INET if form == "in4" else socket.AF_INET6, bytes(raw))
    if form == "flags":
        return _FLAGS.unpack_from(raw)[0]  # the mask half is only for requests
    return bytes(raw)


_FLAGS = struct.Struct("=II")


@dataclass(frozen=True)
class Layout:
    """Attributes ``names`` of a set laid out one after the other, each with its header, as one
    ``struct``. ``value(name)`` is the index of a value in what ``unpack`` returns when headers
    are unpacked as (length, type); ``head(name)`` is a packed header for writing."""

    struct: struct.Struct
    names: tuple[str, ...]
    sizes: tuple[int, ...]  # each attribute's nla length (header + payload, unpadded)
    types: tuple[int, ...]

    def value(self, name: str) -> int:
        return 3 * self.names.index(name) + 2


def layout(attrset: AttrSet, names: Sequence[str], *, nested: bool = False) -> Layout:
    """The fixed layout of ``names`` (numbers, addr16) in ``attrset``; with ``nested`` the
    format starts with a 4-byte nest header."""
    parts, sizes, types = ["=", "4s" if nested else ""], [], []
    for name in names:
        attr = attrset.by_name[name]
        if attr.form in _NUMBERS:
            code = _NUMBERS[attr.form]
            size = struct.calcsize(code)
            parts.append(f"HH{code}{'x' * (-size % 4)}")
        else:
            size = _FIXED[attr.form]
            parts.append(f"HH{size}s")
        sizes.append(NLA.size + size)
        types.append(attr.type)
    return Layout(struct.Struct(" ".join(parts)), tuple(names), tuple(sizes), tuple(types))


# include/uapi/linux/ip_vs.h
SERVICE = AttrSet("IPVS_SVC_ATTR_", (
    ("UNSPEC", ""), ("AF", "u16"), ("PROTOCOL", "u16"), ("ADDR", "addr16"), ("PORT", "be16"),
    ("FWMARK", "u32"), ("SCHED_NAME", "asciiz"), ("FLAGS", "flags"), ("TIMEOUT", "u32"),
    ("NETMASK", "binary"), ("STATS", "nested"), ("PE_NAME", "asciiz"), ("STATS64", "nested"),
))
DEST = AttrSet("IPVS_DEST_ATTR_", (
    ("UNSPEC", ""), ("ADDR", "addr16"), ("PORT", "be16"), ("FWD_METHOD", "u32"),
    ("WEIGHT", "u32"), ("U_THRESH", "u32"), ("L_THRESH", "u32"), ("ACTIVE_CONNS", "u32"),
    ("INACT_CONNS", "u32"), ("PERSIST_CONNS", "u32"), ("STATS", "nested"),
    ("ADDR_FAMILY", "u16"), ("STATS64", "nested"), ("TUN_TYPE", "u8"), ("TUN_PORT", "be16"),
    ("TUN_FLAGS", "u16"),
))
STATS = AttrSet("IPVS_STATS_ATTR_", (
    ("UNSPEC", ""), ("CONNS", "u32"), ("INPKTS", "u32"), ("OUTPKTS", "u32"),
    ("INBYTES", "u64"), ("OUTBYTES", "u64"), ("CPS", "u32"), ("INPPS", "u32"),
    ("OUTPPS", "u32"), ("INBPS", "u32"), ("OUTBPS", "u32"),
))
STATS64 = AttrSet("IPVS_STATS_ATTR_", (
    ("UNSPEC", ""), *((name, "u64") for name in list(STATS.by_name)),
))
DAEMON = AttrSet("IPVS_DAEMON_ATTR_", (
    ("UNSPEC", ""), ("STATE", "u32"), ("MCAST_IFN", "asciiz"), ("SYNC_ID", "u32"),
    ("SYNC_MAXLEN", "u16"), ("MCAST_GROUP", "in4"), ("MCAST_GROUP6", "in6"),
    ("MCAST_PORT", "u16"), ("MCAST_TTL", "u8"),
))
COMMAND = AttrSet("IPVS_CMD_ATTR_", (
    ("UNSPEC", ""), ("SERVICE", "nested"), ("DEST", "nested"), ("DAEMON", "nested"),
    ("TIMEOUT_TCP", "u32"), ("TIMEOUT_TCP_FIN", "u32"), ("TIMEOUT_UDP", "u32"),
))
CTRL = AttrSet("CTRL_ATTR_", (("UNSPEC", ""), ("FAMILY_ID", "u16"), ("FAMILY_NAME", "asciiz")))

# ---------------------------------------------------------------------------------------------
# Encoding ops
# ---------------------------------------------------------------------------------------------


def family_request(name: str, seq: int) -> bytes:
    """CTRL_CMD_GETFAMILY for the generic-netlink family ``name``."""
    return message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL.encode([("FAMILY_NAME", name)]),
                   NLM_F_REQUEST, seq)


def family_id(payload: bytes | memoryview) -> int:
    """The family id in the answer to ``family_request`` (its attribute area)."""
    return CTRL.decode(payload).num("FAMILY_ID")


def _addr16(family: Family, address: str) -> bytes:
    """The kernel's union nf_inet_addr: 16 bytes, IPv4 in the first four (as libipvs sends)."""
    af = socket.AF_INET if family is Family.INET else socket.AF_INET6
    return socket.inet_pton(af, address).ljust(16, b"\0")


# A service's identity in one pack each: by address, or by firewall mark.
_SVC_INET = layout(SERVICE, ("AF", "PROTOCOL", "ADDR", "PORT"), nested=True)
_SVC_MARK = layout(SERVICE, ("AF", "FWMARK"), nested=True)
_NEST_INET = NLA.pack(_SVC_INET.struct.size, ATTR_SERVICE | NLA_F_NESTED)
_NEST_MARK = NLA.pack(_SVC_MARK.struct.size, ATTR_SERVICE | NLA_F_NESTED)


@functools.lru_cache(maxsize=65536)
def service_key_nest(key: ServiceKey) -> bytes:
    """A service's identity as a nest; cached, since every dest op of a service repeats it."""
    af = int(key.family)
    if key.fwmark:
        h_af, h_mark = zip(_SVC_MARK.sizes, _SVC_MARK.types, strict=True)
        return _SVC_MARK.struct.pack(_NEST_MARK, *h_af, af, *h_mark, key.fwmark)
    assert key.protocol is not None and key.address is not None
    h_af, h_proto, h_addr, h_port = zip(_SVC_INET.sizes, _SVC_INET.types, strict=True)
    return _SVC_INET.struct.pack(_NEST_INET, *h_af, af, *h_proto, key.protocol.value,
                                 *h_addr, _addr16(key.family, key.address),
                                 *h_port, socket.htons(key.port))


def _netmask_bytes(family: Family, prefix: int) -> bytes:
    if family is Family.INET:
        return int(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask).to_bytes(4, "big")
    # For IPv6 the kernel reads the same 32-bit field as a plain prefix length (host order).
    return struct.pack("=I", prefix)


def _netmask_prefix(family: Family, raw: bytes) -> int:
    if family is Family.INET:
        return bin(int.from_bytes(raw[:4], "big")).count("1")
    return int(struct.unpack_from("=I", raw)[0])


def _service_nest(key: ServiceKey, spec: ServiceSpec) -> bytes:
    identity = service_key_nest(key)[NLA.size:]
    return nest(ATTR_SERVICE, identity + SERVICE.encode([
        ("SCHED_NAME", spec.scheduler),
        ("FLAGS", (service_bits(spec), 0xFFFFFFFF)),
        ("TIMEOUT", spec.persistence),
        ("NETMASK", _netmask_bytes(key.family, spec.netmask)),
    ]))


# A whole dest nest in one pack (the hot path of a full apply): the identity, then the spec
# for an add or an edit.
_DEST_KEY = layout(DEST, ("ADDR", "PORT", "ADDR_FAMILY"), nested=True)
_DEST_FULL = layout(DEST, ("ADDR", "PORT", "ADDR_FAMILY", "FWD_METHOD", "WEIGHT", "U_THRESH",
                           "L_THRESH"), nested=True)
_NEST_KEY = NLA.pack(_DEST_KEY.struct.size, ATTR_DEST | NLA_F_NESTED)
_NEST_FULL = NLA.pack(_DEST_FULL.struct.size, ATTR_DEST | NLA_F_NESTED)
(_H_ADDR, _H_PORT, _H_AF, _H_FWD, _H_WEIGHT, _H_UTH, _H_LTH) = (
    (size, kind) for size, kind in zip(_DEST_FULL.sizes, _DEST_FULL.types, strict=True))


def _dest_nest(key: DestKey, spec: DestSpec | None) -> bytes:
    six = ":" in key.address
    packed = socket.inet_pton(socket.AF_INET6 if six else socket.AF_INET, key.address)
    family = int(Family.INET6 if six else Family.INET)
    port = socket.htons(key.port)
    if spec is None:
        return _DEST_KEY.struct.pack(_NEST_KEY, *_H_ADDR, packed, *_H_PORT, port, *_H_AF, family)
    return _DEST_FULL.struct.pack(_NEST_FULL, *_H_ADDR, packed, *_H_PORT, port, *_H_AF, family,
                                  *_H_FWD, spec.forwarding.value, *_H_WEIGHT, spec.weight,
                                  *_H_UTH, 0, *_H_LTH, 0)


def op_request(op: Op) -> tuple[int, bytes]:
    """The command and attributes for one op (which ``ipvs_rules.refusal`` has passed)."""
    if isinstance(op, AddService | EditService):
        cmd = CMD_NEW_SERVICE if isinstance(op, AddService) else CMD_SET_SERVICE
        return cmd, _service_nest(op.key, op.spec)
    if isinstance(op, DelService):
        return CMD_DEL_SERVICE, service_key_nest(op.key)
    svc = service_key_nest(op.service)
    if isinstance(op, DelDest):
        return CMD_DEL_DEST, svc + _dest_nest(op.key, None)
    cmd = CMD_NEW_DEST if isinstance(op, AddDest) else CMD_SET_DEST
    return cmd, svc + _dest_nest(op.key, op.spec)


def daemon_start(state: SyncState, interface: str, sync_id: int) -> bytes:
    return nest(ATTR_DAEMON, DAEMON.encode([
        ("STATE", int(state)), ("MCAST_IFN", interface), ("SYNC_ID", sync_id)]))


def daemon_stop(state: SyncState) -> bytes:
    return nest(ATTR_DAEMON, DAEMON.encode([("STATE", int(state))]))


# ---------------------------------------------------------------------------------------------
# Decoding what the kernel dumps
# ---------------------------------------------------------------------------------------------

_STATS64_FIXED = layout(STATS64, tuple(STATS64.by_name))


def _stats(raw64: bytes | memoryview | None, raw32: bytes | memoryview | None) -> Stats:
    """Counters from the 64-bit nest (or the 32-bit one from an older kernel)."""
    if raw64 is not None and len(raw64) == _STATS64_FIXED.struct.size:
        # The kernel writes the ten u64 in type order: one unpack reads them all.
        fields = _STATS64_FIXED.struct.unpack_from(raw64)
        if fields[0::3] == _STATS64_FIXED.sizes and tuple(
                t & NLA_TYPE_MASK for t in fields[1::3]) == _STATS64_FIXED.types:
            return Stats(*fields[2::3])
    wide = raw64 is not None
    raw = raw64 if wide else raw32
    if raw is None:
        return NO_STATS
    values = (STATS64 if wide else STATS).decode(raw)
    return Stats(**{name.lower(): values.num(name) for name in values.names()})


def _address(family: int, raw: bytes | memoryview) -> str:
    if family == Family.INET:
        return socket.inet_ntop(socket.AF_INET, bytes(raw[:4]))
    return canonical_address(socket.inet_ntop(socket.AF_INET6, bytes(raw[:16])))


def service_from_reply(payload: bytes | memoryview) -> ObservedService | None:
    """The service in one reply to CMD_GET_SERVICE (its attribute area), without dests; None
    for a reply without one or a protocol lvsctl has no name for."""
    raw = attrs(payload).get(ATTR_SERVICE)
    return decode_service(raw) if raw is not None else None


def decode_service(payload: bytes | memoryview) -> ObservedService | None:
    """An ObservedService (without dests) from a service nest; None for a protocol with no name."""
    a = SERVICE.decode(payload)
    family = Family(a.num("AF"))
    fwmark = a.num("FWMARK")
    if fwmark:
        key = ServiceKey.mark(family, fwmark)
    else:
        try:
            protocol = IpProtocol(a.num("PROTOCOL"))
        except ValueError:
            return None
        key = ServiceKey.inet(protocol, _address(family, a.raw("ADDR") or b""), a.num("PORT"))
    netmask = a.raw("NETMASK")
    spec = service_spec(a.text("SCHED_NAME"), a.num("FLAGS"), a.num("TIMEOUT"),
                        _netmask_prefix(family, netmask) if netmask is not None else 0,
                        family.host_prefix)
    return ObservedService(key, spec, {}, a.text("PE_NAME"),
                           _stats(a.raw("STATS64"), a.raw("STATS")))


def dest_from_reply(payload: bytes | memoryview, family: Family, stats: bool
                    ) -> ObservedDest | None:
    """The dest in one reply to CMD_GET_DEST (its attribute area)."""
    raw = attrs(payload).get(ATTR_DEST)
    return decode_dest(raw, family, stats) if raw is not None else None


# The order and sizes in which Linux (ip_vs_genl_fill_dest, 5.2 and later) writes a dest's
# numbers. When a nest starts exactly so, one unpack reads them; otherwise decode_dest's loop.
_FILL = layout(DEST, ("ADDR", "PORT", "FWD_METHOD", "WEIGHT", "TUN_TYPE", "TUN_PORT",
                      "TUN_FLAGS", "U_THRESH", "L_THRESH", "ACTIVE_CONNS", "INACT_CONNS",
                      "PERSIST_CONNS", "ADDR_FAMILY"))
(_F_ADDR, _F_PORT, _F_FWD, _F_WEIGHT, _F_TUN_TYPE, _F_TUN_PORT, _F_TUN_FLAGS, _F_UTH, _F_LTH,
 _F_ACTIVE, _F_INACT, _F_PERSIST, _F_AF) = (_FILL.value(n) for n in _FILL.names)
_STATS_TYPE, _STATS64_TYPE = DEST["STATS"], DEST["STATS64"]


def _decode_dest_fast(buf: bytes, stats: bool) -> ObservedDest | None:
    if len(buf) < _FILL.struct.size:
        return None
    f = _FILL.struct.unpack_from(buf)
    if f[0::3] != _FILL.sizes or f[1::3] != _FILL.types:
        return None
    counters = NO_STATS
    offset = _FILL.struct.size
    narrow = None
    while stats and offset + 4 <= len(buf):  # the stats nests follow; the 64-bit one wins
        size, kind = NLA.unpack_from(buf, offset)
        if size < 4:
            break
        if kind & NLA_TYPE_MASK == _STATS64_TYPE:
            counters = _stats(buf[offset + 4:offset + size], None)
            break
        if kind & NLA_TYPE_MASK == _STATS_TYPE:
            narrow = buf[offset + 4:offset + size]
        offset += (size + 3) & ~3
    else:
        if narrow is not None:
            counters = _stats(None, narrow)
    return ObservedDest(
        key=DestKey(_address(f[_F_AF], f[_F_ADDR]), socket.ntohs(f[_F_PORT])),
        weight=f[_F_WEIGHT], fwd=f[_F_FWD] & 0x7, active_conns=f[_F_ACTIVE],
        inactive_conns=f[_F_INACT], persist_conns=f[_F_PERSIST], u_threshold=f[_F_UTH],
        l_threshold=f[_F_LTH], tun_type=f[_F_TUN_TYPE], tun_port=socket.ntohs(f[_F_TUN_PORT]),
        tun_flags=f[_F_TUN_FLAGS], stats=counters,
    )


def decode_dest(payload: bytes | memoryview, family: Family, stats: bool = True
                ) -> ObservedDest:
    """An ObservedDest from a dest nest: with 10,000 dests this is most of what observing the
    table costs, hence the fixed-layout fast path."""
    buf = bytes(payload)
    fast = _decode_dest_fast(buf, stats)
    if fast is not None:
        return fast
    a = DEST.decode(buf)
    return ObservedDest(
        key=DestKey(_address(a.num("ADDR_FAMILY") or int(family), a.raw("ADDR") or b""),
                    a.num("PORT")),
        weight=a.num("WEIGHT"),
        fwd=a.num("FWD_METHOD") & 0x7,
        active_conns=a.num("ACTIVE_CONNS"),
        inactive_conns=a.num("INACT_CONNS"),
        persist_conns=a.num("PERSIST_CONNS"),
        u_threshold=a.num("U_THRESH"),
        l_threshold=a.num("L_THRESH"),
        tun_type=a.num("TUN_TYPE"),
        tun_port=a.num("TUN_PORT"),
        tun_flags=a.num("TUN_FLAGS"),
        stats=_stats(a.raw("STATS64"), a.raw("STATS")) if stats else NO_STATS,
    )


def daemon_from_reply(payload: bytes | memoryview) -> SyncDaemon | None:
    """The sync daemon in one reply to CMD_GET_DAEMON (its attribute area)."""
    raw = attrs(payload).get(ATTR_DAEMON)
    if raw is None:
        return None
    a = DAEMON.decode(raw)
    return SyncDaemon(
        state=SyncState(a.num("STATE")),
        interface=a.text("MCAST_IFN"),
        sync_id=a.num("SYNC_ID"),
        maxlen=a.num("SYNC_MAXLEN"),
        group=a.text("MCAST_GROUP") or a.text("MCAST_GROUP6"),
        port=a.num("MCAST_PORT"),
        ttl=a.num("MCAST_TTL"),
    )


NO_STATS = Stats()
