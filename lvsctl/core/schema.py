"""The cluster file's shape as pydantic models: types, ranges and unknown keys, nothing more.

Rules that span several keys (families, ports per mode, uniqueness, inside networks) live in
``lvsctl.core.config``; this module only says what each key may hold. ``ClusterFile`` doubles as
the source of ``lvsctl config schema``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from lvsctl.core.model import SCHED_FLAGS, SCHEDULERS

# Linux's dev_valid_name() (net/core/dev.c): 1..15 bytes (IFNAMSIZ 16 with the NUL), not "."
# or "..", no "/", ":" or white space as the kernel's isspace() sees it -- which counts byte 0xA0
# too, so a UTF-8 name is judged on its bytes. Control characters are refused as well: the
# kernel would take them, but a name also reaches rendered shell and networkd files.
IFNAMSIZ = 16
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")
# Whole-string rules: fullmatch everywhere ("$" would also match before a trailing newline).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_STATUS = re.compile(r"([1-5]\d\d)(?:-([1-5]\d\d))?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def ifname_problem(name: str) -> str | None:
    """Why the kernel (or a rendered file) would refuse ``name`` as an interface name, or None."""
    raw = name.encode("utf-8", "surrogatepass")
    why = None
    if not 0 < len(raw) < IFNAMSIZ:
        why = f"it is {len(raw)} bytes (UTF-8), not 1 to {IFNAMSIZ - 1}"
    elif name in (".", ".."):
        why = "'.' and '..' are not names"
    elif any(byte in b"/:" for byte in raw):
        why = "it holds '/' or ':'"
    elif any(byte in _KERNEL_SPACE for byte in raw):
        why = "it holds white space"
    elif any(byte < 0x20 or byte == 0x7F for byte in raw):
        why = "it holds a control character"
    return None if why is None else f"{name!r} is not a valid interface name: {why}"


def _ifname(value: Any) -> Any:
    if isinstance(value, str) and (problem := ifname_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _name(value: Any) -> Any:
    if isinstance(value, str) and not _NAME.fullmatch(value):
        raise ValueError(
            "names start with a letter or digit and hold only letters, digits, '_', '.' or '-'"
            " (at most 63)"
        )
    return value


def _address(value: Any) -> Any:
    if isinstance(value, str):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            # A zone ("%eth0") names a link of one host; no cluster address is link-scoped.
            raise ValueError(f"{value!r} carries a zone (%...): give the address alone")
        return str(address)
    return value


def _interface_address(value: Any) -> Any:
    """An address with an optional prefix length, e.g. 10.0.0.2/24."""
    if isinstance(value, str):
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an address (optionally with /prefix, e.g. 10.0.0.2/24)"
            ) from None
        if "%" in value:
            raise ValueError(f"{value!r} carries a zone (%...): give the address alone")
        return str(iface) if "/" in value else str(iface.ip)
    return value


def _network(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network such as 10.0.1.0/24 ({exc})") from None
    return value


def _duration(value: Any) -> Any:
    """Seconds as a number, or a string with a unit: 500ms, 2s, 1.5m, 1h."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2, 2s or 500ms")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 2, 2s or 500ms")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


def _netmask(value: Any) -> Any:
    """A prefix length (24) or a dotted IPv4 mask (255.255.255.0) -> prefix length."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 128:
            raise ValueError(f"{value} is not a prefix length from 1 to 128")
        return value
    if isinstance(value, str):
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
        except ValueError:
            raise ValueError(f"{value!r} is not a netmask such as 255.255.255.0 or 24") from None
    return value


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_PORT = re.compile(r"[0-9]{1,5}")


def _hostport(value: Any) -> Any:
    """HOST:PORT: a host name, an IPv4 address or an IPv6 address (bare or in brackets)."""
    if not isinstance(value, str):
        return value
    if "/" in value:
        # kazoo would take "host:port/path" as a chroot: the cluster's root is not said here.
        raise ValueError(f"{value!r} carries a path ('/...'): give host:port only; the znode "
                         "root is zookeeper.root")
    host, sep, port = value.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (a port from 1 to 65535)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare != host or ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{value!r}: {host!r} is not a host name or address")
    return value


# ZooKeeper's path rules (PathUtils.validatePath): absolute, no empty, "." or ".." segment, no
# trailing "/", no control characters; "/zookeeper" is the server's own subtree. lvsctl keeps
# to a plain alphabet on top, and a bound that leaves room for the paths below the root.
_ZNODE_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,255}")
MAX_ROOT_CHARS = 512


def _zk_root(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) > MAX_ROOT_CHARS:
        raise ValueError(f"is {len(value)} characters; a root has at most {MAX_ROOT_CHARS}")
    if not value.startswith("/") or value == "/":
        raise ValueError(f"{value!r} is not an absolute znode path below / such as /lvsctl")
    segments = value[1:].split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            shown = "an empty" if not segment else f"a {segment!r}"
            raise ValueError(f"{value!r} has {shown} segment: ZooKeeper takes only plain "
                             "paths such as /lvsctl/prod (no '//', '.', '..' or trailing '/')")
        if not _ZNODE_SEGMENT.fullmatch(segment):
            raise ValueError(f"{value!r}: segment {segment!r} may hold only letters, digits, "
                             "'_', '.' and '-'")
    if segments[0] == "zookeeper":
        raise ValueError(f"{value!r} is under /zookeeper, which ZooKeeper reserves for itself")
    return value


def vip_problem(address: str) -> str | None:
    """Why ``address`` (canonical) cannot be a VIP, or None: no host could be reached on it."""
    ip = ipaddress.ip_address(address)
    kinds = [
        (ip.is_unspecified, "the unspecified address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"),
         "the broadcast address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved,
         "in 240.0.0.0/4, reserved (the kernel routes none of it)"),
    ]
    for hit, what in kinds:
        if hit:
            return f"{address} is {what}: a VIP must be a unicast address clients can reach"
    return None


_STR_SCHEMA = {"type": "string"}
_DURATION_SCHEMA = {
    "anyOf": [{"type": "number", "minimum": 0},
              {"type": "string", "pattern": f"^{_DURATION.pattern}$"}]
}

IfName = Annotated[str, BeforeValidator(_ifname), WithJsonSchema(_STR_SCHEMA)]
Name = Annotated[str, BeforeValidator(_name), WithJsonSchema(_STR_SCHEMA)]
Address = Annotated[str, BeforeValidator(_address), WithJsonSchema(_STR_SCHEMA)]
InterfaceAddress = Annotated[str, BeforeValidator(_interface_address), WithJsonSchema(_STR_SCHEMA)]
Network = Annotated[str, BeforeValidator(_network), WithJsonSchema(_STR_SCHEMA)]
HostPort = Annotated[str, BeforeValidator(_hostport), WithJsonSchema(_STR_SCHEMA)]
ZnodeRoot = Annotated[str, BeforeValidator(_zk_root), WithJsonSchema(_STR_SCHEMA)]
Netmask = Annotated[
    int,
    BeforeValidator(_netmask),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
]
Port = Annotated[int, Field(ge=1, le=65535)]
Weight = Annotated[int, Field(ge=0, le=65535)]
Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]


def _positive(low: float, high: float) -> Any:
    return Field(ge=low, le=high)


class Strict(BaseModel):
    """Unknown keys are errors, values are never coerced across types, models are frozen."""

    # Field patterns run on Rust's regex engine, where "$" is the end of the text (never
    # before a final newline, as in Python's re): pinned, and held to it by the tests.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              regex_engine="rust-regex")


class CheckCommon(Strict):
    interval: Annotated[Duration, _positive(0.05, 3600)] | None = None
    timeout: Annotated[Duration, _positive(0.01, 600)] | None = None
    rise: Annotated[int, Field(ge=1, le=100)] | None = None
    fall: Annotated[int, Field(ge=1, le=100)] | None = None
    warmup: Annotated[Duration, _positive(0, 3600)] | None = None
    address: Address | None = Field(None, description="probe this address instead")
    port: Port | None = Field(None, description="probe this port instead")


class TcpCheckFile(CheckCommon):
    type: Literal["tcp"]
    send: str | None = None
    expect: str | None = None


def _status_item(value: Any) -> Any:
    """200, "200" or "200-299" -> "200-299" (an inclusive range, as text)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str):
        match = _STATUS.fullmatch(text)
        if not match or int(match.group(1)) > int(match.group(2) or match.group(1)):
            raise ValueError(f"{value!r} is not an HTTP status code or range such as 200-299")
        return f"{match.group(1)}-{match.group(2) or match.group(1)}"
    return value


StatusItem = Annotated[
    str,
    BeforeValidator(_status_item),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
]


class HttpCheckFile(CheckCommon):
    type: Literal["http", "https"]
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] | None = None
    path: Annotated[str, Field(pattern=r"^/[^\s]*$")] | None = None
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.:\[\]-]+$")] | None = None
    status: list[StatusItem] | None = Field(None, min_length=1)
    body: str | None = None
    digest: Annotated[str, Field(pattern=r"^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$")] | None = None
    sni: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+$")] | None = None
    verify: bool | None = None
    ca_file: str | None = None


class MiscCheckFile(CheckCommon):
    type: Literal["misc"]
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    dynamic: bool | None = None


class UdpCheckFile(CheckCommon):
    type: Literal["udp"]
    send: str | None = None
    expect: str | None = None
    require_reply: bool | None = None


class DnsCheckFile(CheckCommon):
    type: Literal["dns"]
    name: Annotated[str, Field(pattern=r"^([A-Za-z0-9_-]{1,63}\.?)*$|^\.$")] | None = None
    qtype: Literal["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT"] | None = None
    transport: Literal["udp", "tcp"] | None = None
    expect: list[str] | None = None


class SmtpCheckFile(CheckCommon):
    type: Literal["smtp"]
    helo_name: Annotated[
        str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$|^\[[0-9A-Fa-f.:]+\]$")
    ] | None = Field(None, description="the name sent with HELO; defaults to lvsctl")


class PingCheckFile(CheckCommon):
    type: Literal["ping"]


CheckFile = Annotated[
    TcpCheckFile | HttpCheckFile | MiscCheckFile | UdpCheckFile | DnsCheckFile | SmtpCheckFile
    | PingCheckFile,
    Field(discriminator="type"),
]
# A real server has at most this many checks: each is a probe on every interval.
MAX_CHECKS = 16
# The VIPs a director holds: the keeper takes at most this many from its worker (the channel's
# LeaderConfig), so a file with more would validate and then never run.
MAX_VIPS = 256


class RealServerFile(Strict):
    name: Name
    address: Address
    port: Port | None = Field(None, description="defaults to the service port")
    weight: Weight | None = Field(None, description="defaults to 1")
    check: CheckFile | None = Field(
        None, description="overrides the service check (keys of the same type are merged)"
    )
    checks: list[CheckFile] | None = Field(
        None, min_length=1, max_length=MAX_CHECKS,
        description="replaces the service's checks; healthy only while all pass",
    )
    on_failure: Literal["remove", "weight0"] | None = Field(
        None, description="defaults to the service's on_failure"
    )


class SorryServerFile(Strict):
    address: Address
    port: Port | None = None


class PersistenceFile(Strict):
    timeout: Annotated[Duration, _positive(1, 31 * 86400)]
    netmask: Netmask | None = Field(None, description="prefix length or dotted IPv4 mask")


class ServiceFile(Strict):
    name: Name
    vip: Address | None = None
    port: Port | None = None
    protocol: Literal["tcp", "udp", "sctp"] | None = None
    fwmark: Annotated[int, Field(ge=1, le=2**32 - 1)] | None = None
    family: Literal["ipv4", "ipv6"] | None = None
    vips: list[Address] | None = Field(
        None, description="fwmark services: the VIPs the mark covers (for real-server setup)"
    )
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    flags: list[Literal[tuple(SCHED_FLAGS)]] | None = None  # type: ignore[valid-type]
    forwarding: Literal["nat", "dr", "tun"]
    persistence: PersistenceFile | None = None
    ops: bool | None = Field(None, description="one-packet scheduling (udp services only)")
    on_failure: Literal["remove", "weight0"] | None = None
    quorum: Annotated[int, Field(ge=0, le=10000)] | None = None
    quorum_hysteresis: Annotated[int, Field(ge=0, le=10000)] | None = Field(
        None, description="quorum is lost below quorum - this and regained at quorum + this"
    )
    alpha: bool | None = Field(
        None, description="checked real servers start down until their checks first pass"
    )
    sorry_server: SorryServerFile | None = None
    drain_timeout: Annotated[Duration, _positive(0, 86400)] | None = None
    check: CheckFile | None = None
    checks: list[CheckFile] | None = Field(
        None, min_length=1, max_length=MAX_CHECKS,
        description="several checks; a real server is healthy only while all pass",
    )
    realservers: list[RealServerFile] = Field(min_length=0, max_length=100000)


class PeerFile(Strict):
    address: Address
    port: Port = 7946


class SyncFile(Strict):
    interface: IfName
    id: Annotated[int, Field(ge=0, le=255)] = 0


class DirectorFile(Strict):
    name: Name
    address: InterfaceAddress
    interface: IfName
    peer: PeerFile
    sync: SyncFile | None = Field(None, description="defaults to the director interface, id 0")


class VipFile(Strict):
    address: Address
    interface: IfName
    inside: bool = False
    network: Network | None = Field(
        None, description="inside VIPs: the real servers' subnet this address is the gateway of"
    )


class ZooKeeperFile(Strict):
    hosts: list[HostPort] = Field(min_length=1)
    root: ZnodeRoot = "/lvsctl"
    session_timeout: Annotated[Duration, _positive(0.4, 60)] = 4.0
    auth: str | None = Field(None, description="file holding 'user:password' digest credentials")


class AnnounceFile(Strict):
    count: Annotated[int, Field(ge=0, le=100)] = 3
    interval: Annotated[Duration, _positive(0.001, 10)] = 0.2


# The kernel keeps IPVS timeouts in jiffies in an int; a day is far more than any use.
IPVS_TIMEOUT_MAX = 86400  # seconds: one day
_IPVS_TIMEOUT = Annotated[Duration, _positive(1, IPVS_TIMEOUT_MAX)]


class IpvsTimeoutsFile(Strict):
    tcp: _IPVS_TIMEOUT | None = Field(None, description="established TCP connections")
    tcp_fin: _IPVS_TIMEOUT | None = Field(None, description="TCP connections after a FIN")
    udp: _IPVS_TIMEOUT | None = Field(None, description="UDP flows")


# What a notify hook may run on: one event each (director/hooks.py runs them).
NOTIFY_EVENTS = (
    "realserver_up", "realserver_down", "quorum_lost", "quorum_regained", "director_active",
    "director_standby", "director_fenced", "config_accepted", "config_rejected",
)
MAX_NOTIFY_HOOKS = 32
MAX_NOTIFY_ARGS = 64
MAX_NOTIFY_ARG_CHARS = 4096


def _program(value: Any) -> Any:
    """A notify command: an argv list run without a shell, its program an absolute path."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        if not value[0].startswith("/"):
            raise ValueError(f"the program {value[0]!r} is not an absolute path (the command "
                             "runs without a shell and without PATH lookup)")
        if any(isinstance(arg, str) and "\0" in arg for arg in value):
            raise ValueError("an argument holds a NUL byte")
    return value


NotifyArg = Annotated[str, Field(min_length=1, max_length=MAX_NOTIFY_ARG_CHARS)]


class NotifyFile(Strict):
    name: Name
    command: Annotated[
        list[NotifyArg], Field(min_length=1, max_length=MAX_NOTIFY_ARGS),
        BeforeValidator(_program),
    ] = Field(description="argv list, run without a shell; the first word an absolute path")
    events: list[Literal[NOTIFY_EVENTS]] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, description="the events it runs on (default: every event)")
    timeout: Annotated[Duration, _positive(0.1, 600)] = Field(
        10.0, description="a run still going after this long is killed (counted, logged)")
    queue: Annotated[int, Field(ge=1, le=10000)] = Field(
        100, description="events waiting for this hook beyond this are dropped (counted)")


class ClusterFile(Strict):
    """An lvsctl cluster file."""

    cluster: Name
    zookeeper: ZooKeeperFile
    directors: list[DirectorFile] = Field(min_length=2, max_length=2)
    vips: list[VipFile] = Field(min_length=1, max_length=MAX_VIPS)
    services: list[ServiceFile] = Field(min_length=1)
    announce: AnnounceFile | None = None
    ipvs_timeouts: IpvsTimeoutsFile | None = Field(
        None, description="the kernel's IPVS connection timeouts (ipvsadm --set)"
    )
    notify: list[NotifyFile] | None = Field(
        None, max_length=MAX_NOTIFY_HOOKS,
        description="commands run on events (director/hooks.py), each without a shell")
