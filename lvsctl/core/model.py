"""The frozen cluster model: what a validated cluster file means, every default filled in.

Identity is kept apart from spec (STYLE.md 1): a virtual service is identified by its
``ServiceKey`` (family, protocol, address, port — or family and fwmark) and configured by its
``ServiceSpec``; a destination is identified by its ``DestKey`` (address, port) and configured
by its ``DestSpec`` (weight, forwarding method). Everything here is immutable and hashable.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Literal


class Family(IntEnum):
    """Address family, valued as the kernel's AF_ constants."""

    INET = 2
    INET6 = 10

    @classmethod
    def of(cls, address: str) -> Family:
        return cls.INET if ipaddress.ip_address(address).version == 4 else cls.INET6

    @property
    def host_prefix(self) -> int:
        return 32 if self is Family.INET else 128


class Protocol(Enum):
    """Transport protocol of a virtual service, valued as the IP protocol number."""

    TCP = 6
    UDP = 17
    SCTP = 132

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Protocol:
        return cls[name.upper()]


class Forwarding(Enum):
    """How the director hands packets to a real server; valued as IPVS's fwd method."""

    NAT = 0  # IPVS "masq"
    TUN = 2  # IPVS "tunnel" (IP-in-IP)
    DR = 3  # IPVS "route" (direct routing)

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Forwarding:
        return cls[name.upper()]

    @property
    def keeps_port(self) -> bool:
        """DR and TUN do not rewrite the destination port: real-server port = service port."""
        return self is not Forwarding.NAT


# Every scheduler the kernel offers (net/netfilter/ipvs/ip_vs_*.c).
SCHEDULERS = (
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
)
# Scheduler flags and the scheduler each belongs to; the kernel shares the bits between sh and mh.
SCHED_FLAGS = {
    "sh-fallback": "sh",
    "sh-port": "sh",
    "mh-fallback": "mh",
    "mh-port": "mh",
}

OnFailure = Literal["remove", "weight0"]


# ---------------------------------------------------------------------------------------------
# Kernel-level identity and spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ServiceKey:
    """Identity of a virtual service: (family, protocol, address, port), or (family, fwmark)."""

    family: Family
    protocol: Protocol | None = None
    address: str | None = None
    port: int = 0
    fwmark: int = 0

    @classmethod
    def inet(cls, protocol: Protocol, address: str, port: int) -> ServiceKey:
        return cls(Family.of(address), protocol, canonical_address(address), port, 0)

    @classmethod
    def mark(cls, family: Family, fwmark: int) -> ServiceKey:
        return cls(family, None, None, 0, fwmark)

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark} {'IPv6' if self.family is Family.INET6 else 'IPv4'}"
        assert self.protocol is not None and self.address is not None
        return f"{self.protocol.label} {join_host_port(self.address, self.port)}"


@dataclass(frozen=True)
class ServiceSpec:
    """What a virtual service does with its traffic; compared to decide on an EditService."""

    scheduler: str = "wlc"
    flags: frozenset[str] = frozenset()
    persistence: int = 0  # seconds; 0 = not persistent
    netmask: int = 32  # persistence granularity as a prefix length (IPv4 32, IPv6 128 = per client)


@dataclass(frozen=True, order=True)
class DestKey:
    """Identity of a destination (real server) inside one virtual service."""

    address: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.address, self.port)


@dataclass(frozen=True)
class DestSpec:
    """How much traffic a destination gets and how it is forwarded; always explicit."""

    weight: int
    forwarding: Forwarding


# ---------------------------------------------------------------------------------------------
# Health checks (filled in by the cluster file; run by healthcheck/)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckTiming:
    """Knobs every checker shares; durations in seconds."""

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    warmup: float = 2.0  # first probes are spread over this many seconds


@dataclass(frozen=True)
class TcpCheck:
    type: Literal["tcp"] = "tcp"
    send: str | None = None
    expect: str | None = None  # reply must start with this


@dataclass(frozen=True)
class HttpCheck:
    type: Literal["http", "https"] = "http"
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    status: tuple[tuple[int, int], ...] = ((200, 200),)  # inclusive ranges
    body: str | None = None  # a regular expression the body must match
    digest: str | None = None  # "sha256:<hex>" or "md5:<hex>" of the whole body
    sni: str | None = None
    verify: bool = True
    ca_file: str | None = None

    def status_ok(self, code: int) -> bool:
        return any(low <= code <= high for low, high in self.status)


@dataclass(frozen=True)
class MiscCheck:
    type: Literal["misc"] = "misc"
    command: tuple[str, ...] = ()
    dynamic: bool = False  # exit codes 2..255 set the weight to code - 2


@dataclass(frozen=True)
class UdpCheck:
    type: Literal["udp"] = "udp"
    send: str = ""
    expect: str | None = None
    require_reply: bool = True  # False: healthy unless an ICMP error arrives within the timeout


@dataclass(frozen=True)
class DnsCheck:
    type: Literal["dns"] = "dns"
    name: str = "."
    qtype: str = "A"
    transport: Literal["udp", "tcp"] = "udp"
    expect: tuple[str, ...] = ()  # answers that must all be present; empty = any answer


@dataclass(frozen=True)
class SmtpCheck:
    """Connect, read the 220 greeting, HELO, expect 250, QUIT (keepalived's SMTP_CHECK)."""

    type: Literal["smtp"] = "smtp"
    # The director's host name is not known to a checker; keepalived's own default is the
    # host name, so files that care set helo_name (the import carries it).
    helo_name: str = "lvsctl"


@dataclass(frozen=True)
class PingCheck:
    """ICMP echo request, answered by an echo reply (keepalived's PING_CHECK); no port."""

    type: Literal["ping"] = "ping"


CheckKind = TcpCheck | HttpCheck | MiscCheck | UdpCheck | DnsCheck | SmtpCheck | PingCheck


@dataclass(frozen=True)
class Check:
    """A fully resolved check for one real server: what to run, against where, how often."""

    kind: CheckKind
    timing: CheckTiming
    address: str  # where to probe (the real server's address unless overridden)
    port: int  # where to probe (the real server's port unless overridden; 0 for ping)

    @property
    def type(self) -> str:
        return self.kind.type


@dataclass(frozen=True)
class Health:
    """What the checks currently say about one real server of one service."""

    healthy: bool
    weight: int | None = None  # set by a dynamic misc check; None = the configured weight
    reason: str = ""


# (service name, real server name): how health results are keyed everywhere.
HealthKey = tuple[str, str]


# ---------------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealServer:
    """A real server of one service; healthy only while every one of ``checks`` is up."""

    name: str
    address: str
    port: int
    weight: int
    checks: tuple[Check, ...]
    on_failure: OnFailure = "remove"  # resolved from the service's unless the server sets it

    @property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)

    @property
    def check(self) -> Check | None:
        """The first check, or None for an unchecked server (for callers that only ask
        whether the server is checked)."""
        return self.checks[0] if self.checks else None


@dataclass(frozen=True)
class SorryServer:
    address: str
    port: int

    @property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)


@dataclass(frozen=True)
class Service:
    name: str
    key: ServiceKey
    spec: ServiceSpec
    forwarding: Forwarding
    on_failure: OnFailure
    quorum: int
    sorry_server: SorryServer | None
    drain_timeout: float
    realservers: tuple[RealServer, ...]
    vips: tuple[str, ...]  # the VIP addresses real servers must accept (for fwmark: all listed)
    alpha: bool = False  # checked real servers count as down until their checks first pass
    quorum_hysteresis: int = 0  # quorum lost below quorum - this, regained at quorum + this

    @property
    def family(self) -> Family:
        return self.key.family

    def dest_spec(self, weight: int) -> DestSpec:
        return DestSpec(weight, self.forwarding)

    def quorum_held(self, healthy: int, was_held: bool | None) -> bool:
        """Whether ``healthy`` real servers make quorum, given the last verdict (None: none).

        keepalived's ``quorum``/``hysteresis`` rule, on lvsctl's count of healthy servers
        instead of keepalived's sum of their weights (q = quorum, h = quorum_hysteresis):

            last verdict        quorum held when
            ------------------  ------------------------------------------
            held, or none yet   healthy >= q - h   (lost below q - h)
            lost                healthy >= q + h   (regained at q + h)
            any                 never with 0 healthy, unless q = 0

        With h = 0 this is plainly healthy >= q. A director that starts has no last verdict
        and judges as if quorum were held, as keepalived does at start.
        """
        q, h = self.quorum, self.quorum_hysteresis
        if q == 0:
            return True
        if healthy == 0:
            return False
        return healthy >= (q + h if was_held is False else q - h)


@dataclass(frozen=True)
class Vip:
    address: str
    interface: str
    inside: bool = False
    network: str | None = None  # inside VIPs: the real servers' subnet they are the gateway of

    @property
    def family(self) -> Family:
        return Family.of(self.address)


@dataclass(frozen=True)
class Director:
    name: str
    address: str
    prefix: int | None  # the interface network's prefix length, when given
    interface: str
    peer_address: str
    peer_port: int
    sync_interface: str
    sync_id: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        if self.prefix is None:
            return None
        return ipaddress.ip_network(f"{self.address}/{self.prefix}", strict=False)


@dataclass(frozen=True)
class ZooKeeperSettings:
    hosts: tuple[str, ...]
    root: str
    session_timeout: float
    auth_file: str | None

    def cluster_path(self, cluster: str) -> str:
        return f"{self.root.rstrip('/')}/{cluster}"


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARP / unsolicited NA burst sent when a director acquires a VIP."""

    count: int = 3
    interval: float = 0.2


@dataclass(frozen=True)
class IpvsTimeouts:
    """The kernel's IPVS connection timeouts in whole seconds (``ipvsadm --set tcp tcpfin
    udp``); 0 = leave that one as the kernel has it."""

    tcp: int = 0
    tcp_fin: int = 0
    udp: int = 0

    @property
    def given(self) -> bool:
        return bool(self.tcp or self.tcp_fin or self.udp)


@dataclass(frozen=True)
class NotifyHook:
    """A command run on events (the worker runs it, director/hooks.py): ``command`` is an argv
    list run without a shell; ``events`` empty = every event; a run is killed after
    ``timeout`` seconds; at most ``queue`` events wait for it."""

    name: str
    command: tuple[str, ...]
    events: frozenset[str] = frozenset()
    timeout: float = 10.0
    queue: int = 100

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


@dataclass(frozen=True)
class Cluster:
    name: str
    zookeeper: ZooKeeperSettings
    directors: tuple[Director, Director]
    vips: tuple[Vip, ...]
    services: tuple[Service, ...]
    announce: Announce = field(default_factory=Announce)
    ipvs_timeouts: IpvsTimeouts = field(default_factory=IpvsTimeouts)
    notify: tuple[NotifyHook, ...] = ()

    def director(self, name: str) -> Director:
        for director in self.directors:
            if director.name == name:
                return director
        raise KeyError(name)

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def realserver_names(self) -> list[str]:
        """Every real server name, once, in file order."""
        seen: dict[str, None] = {}
        for service in self.services:
            for rs in service.realservers:
                seen.setdefault(rs.name, None)
        return list(seen)


def canonical_address(address: str) -> str:
    """The one spelling of an address used everywhere (compressed IPv6, no zone)."""
    return str(ipaddress.ip_address(address))


def join_host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
