"""What both importers share: findings, options, the cluster around the services, validation.

An import builds the services from its source, then ``assemble`` adds what keepalived and
ipvsadm do not know (ZooKeeper, the two directors: from options, or placeholders) and the VIP
list, and ``finish`` renders the text and has lvsctl's own loader validate it before anyone
writes it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

import yaml
from pydantic import ValidationError

from lvsctl.core import schema
from lvsctl.core.config import parse_cluster
from lvsctl.core.errors import ConfigError, LvsctlError
from lvsctl.core.importers.text import (
    PLACEHOLDER,
    Map,
    Placeholder,
    Seq,
    placeholders,
    plain,
    render,
)

# unmapped: a source line lvsctl has no equivalent for; refused: lvsctl refuses what the line
# asks (and it was left out, never changed); placeholder: a value to fill in; note: how a
# value was derived. --strict fails on the first two.
Kind = Literal["unmapped", "refused", "placeholder", "note"]
STRICT_KINDS = ("unmapped", "refused")


@dataclass(frozen=True)
class Where:
    """A line of a source file."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Finding:
    """One report line: where in the source, what kind, and why."""

    where: Where
    kind: Kind
    reason: str

    def line(self) -> str:
        return f"{self.where}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.where.file, "line": self.where.line, "kind": self.kind,
                "reason": self.reason}


class SourceError(LvsctlError):
    """The source file cannot be imported at all: ``FILE:LINE: reason``, nothing is written."""

    def __init__(self, where: Where, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


# -- options ----------------------------------------------------------------------------------

_DIRECTOR = re.compile(r"(?P<name>[^=]+)=(?P<address>[^@]+)@(?P<interface>.+)")


@dataclass(frozen=True)
class DirectorOption:
    """``NAME=ADDR/PLEN@IFACE`` from the command line."""

    name: str
    address: str
    interface: str

    @classmethod
    def parse(cls, text: str) -> DirectorOption:
        """Raises ValueError with a sentence naming what is wrong."""
        match = _DIRECTOR.fullmatch(text)
        if not match:
            raise ValueError(f"{text!r} is not NAME=ADDRESS/PREFIX@INTERFACE")
        name, address, interface = match["name"], match["address"], match["interface"]
        schema._name(name)
        schema._ifname(interface)
        if "/" not in address:
            raise ValueError(f"{address!r} needs its prefix length, e.g. 192.0.2.2/24")
        schema._interface_address(address)
        return cls(name, address, interface)


@dataclass(frozen=True)
class ImportOptions:
    zookeeper: tuple[str, ...] = ()
    directors: tuple[DirectorOption, ...] = ()
    cluster: str | None = None


# -- the cluster-file keys this lvsctl knows ---------------------------------------------------

# Keys agreed for keepalived's constructs; each is emitted only when the loader knows it,
# otherwise the construct is reported as unmapped.
FEATURES = ("checks", "smtp", "ping", "realserver_on_failure", "ops", "ipvs_timeouts",
            "alpha", "quorum_hysteresis")
ALL_FEATURES = frozenset(FEATURES)


def _accepts(model: type[schema.Strict], data: dict[str, object]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def supported_features() -> frozenset[str]:
    """The agreed keys this lvsctl's cluster-file schema accepts."""
    rs = {"name": "a", "address": "192.0.2.1"}
    service = {"name": "a", "vip": "192.0.2.1", "port": 1, "forwarding": "dr", "realservers": []}
    probes = {
        "checks": _accepts(schema.RealServerFile, {**rs, "checks": [{"type": "tcp"}]}),
        "smtp": _accepts(schema.RealServerFile, {**rs, "check": {"type": "smtp"}}),
        "ping": _accepts(schema.RealServerFile, {**rs, "check": {"type": "ping"}}),
        "realserver_on_failure": _accepts(schema.RealServerFile, {**rs, "on_failure": "weight0"}),
        "ops": _accepts(schema.ServiceFile, {**service, "ops": True}),
        "alpha": _accepts(schema.ServiceFile, {**service, "alpha": True}),
        "quorum_hysteresis": _accepts(schema.ServiceFile, {**service, "quorum_hysteresis": 1}),
        "ipvs_timeouts": "ipvs_timeouts" in schema.ClusterFile.model_fields,
    }
    return frozenset(name for name, ok in probes.items() if ok)


# -- names ------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A cluster-file name from free text: letters, digits, '_', '.', '-' (at most 63)."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    if not out or not out[0].isalnum():
        out = f"x{out}"
    return out[:63].rstrip("-.")


def address_slug(address: str) -> str:
    return address.replace(".", "-").replace(":", "-")


class Names:
    """Hands out unique names: the second ``web`` becomes ``web-2``."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, wanted: str) -> str:
        name, n = wanted, 1
        while name in self.used:
            n += 1
            name = f"{wanted[:58]}-{n}"
        self.used.add(name)
        return name


# -- the cluster around the services ----------------------------------------------------------


@dataclass
class VipSource:
    """An address the source says a director owns (a VRRP VIP), or a service's VIP."""

    address: str
    where: Where
    interface: str | None = None
    prefix: int | None = None
    comment: str = ""


@dataclass
class Draft:
    """What an importer found, before the cluster is assembled around it."""

    source: str
    services: list[Map] = field(default_factory=list)
    vips: list[VipSource] = field(default_factory=list)  # VRRP addresses, in file order
    service_vips: list[VipSource] = field(default_factory=list)  # addresses services use
    nat_realservers: list[str] = field(default_factory=list)  # need an inside VIP
    cluster: tuple[str, Where] | None = None
    sync: tuple[str, int, Where] | None = None
    ipvs_timeouts: Map | None = None
    findings: list[Finding] = field(default_factory=list)

    def report(self, where: Where, kind: Kind, reason: str) -> None:
        self.findings.append(Finding(where, kind, reason))


_EXAMPLE_DIRECTORS = (("lb1", "192.0.2.2/24"), ("lb2", "192.0.2.3/24"))


def _directors(draft: Draft, options: ImportOptions) -> Seq:
    seq = Seq()
    sync = draft.sync
    for i in range(2):
        if options.directors:
            given = options.directors[i]
            name: str | Placeholder = given.name
            address: str | Placeholder = given.address
            interface: str | Placeholder = given.interface
            peer: str | Placeholder = str(ipaddress.ip_interface(given.address).ip)
            comment = "from --directors"
        else:
            example_name, example_address = _EXAMPLE_DIRECTORS[i]
            name = Placeholder("director name", example_name)
            address = Placeholder("director address/prefix", example_address)
            interface = Placeholder("director interface", "eth0")
            peer = Placeholder("peer-link address", example_address.split("/")[0])
            comment = "REPLACE ME: keepalived has no director list (or pass --directors)"
        director = Map(comment=comment)
        director.add("name", name).add("address", address).add("interface", interface)
        director.add("peer", Map(flow=True).add("address", peer))
        if sync is not None:
            director.add("sync", Map(flow=True).add("interface", sync[0]).add("id", sync[1]),
                         f"{sync[2]} lvs_sync_daemon")
        seq.items.append(director)
    return seq


def _inside_network(addresses: list[str]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The smallest network holding every address (at most a /24 or /64 around them)."""
    ips = [ipaddress.ip_address(a) for a in addresses]
    prefix = 24 if ips[0].version == 4 else 64
    while prefix > 0:
        net = ipaddress.ip_network(f"{ips[0]}/{prefix}", strict=False)
        if all(ip in net for ip in ips):
            return net
        prefix -= 1
    return ipaddress.ip_network(f"{ips[0]}/0", strict=False)


def _vips(draft: Draft, options: ImportOptions) -> Seq:
    seq = Seq()
    seen: set[str] = set()
    nat = [ipaddress.ip_address(a) for a in draft.nat_realservers]
    inside_found = {4: False, 6: False}
    fallback_if: str | Placeholder = (
        options.directors[0].interface if options.directors
        else Placeholder("VIP interface", "eth0"))
    service_addresses = {v.address for v in draft.service_vips}
    for vip in draft.vips:
        if vip.address in seen:
            continue
        seen.add(vip.address)
        item = Map(flow=True, comment=vip.comment or f"{vip.where}")
        item.add("address", vip.address)
        item.add("interface", vip.interface or fallback_if)
        if vip.prefix is not None and vip.address not in service_addresses:
            net = ipaddress.ip_network(f"{vip.address}/{vip.prefix}", strict=False)
            inside = [ip for ip in nat if ip.version == net.version]
            if inside and all(ip in net for ip in inside) and net.num_addresses > 1:
                item.add("inside", True).add("network", str(net))
                item.comment += "; the NAT real servers' gateway"
                inside_found[net.version] = True
        seq.items.append(item)
    for vip in draft.service_vips:
        if vip.address in seen:
            continue
        seen.add(vip.address)
        item = Map(flow=True, comment=f"{vip.where} virtual_server address")
        item.add("address", vip.address).add("interface", fallback_if)
        where_if = fallback_if if isinstance(fallback_if, str) else PLACEHOLDER
        draft.report(vip.where, "note" if options.directors else "placeholder",
                     f"{vip.address} is in no vrrp_instance virtual_ipaddress: listed as a VIP "
                     f"on interface {where_if}")
        seq.items.append(item)
    for version in (4, 6):
        members = [str(ip) for ip in dict.fromkeys(nat) if ip.version == version]
        if members and not inside_found[version]:
            net = _inside_network(members)
            taken = set(members) | seen
            gateway = str(next(ip for ip in net.hosts() if str(ip) not in taken))
            item = Map(flow=True, comment="REPLACE ME: the NAT real servers' gateway VIP")
            item.add("address", Placeholder("inside VIP (the NAT gateway)", gateway))
            item.add("interface", Placeholder("inside VIP interface", "eth1"))
            item.add("inside", True)
            item.add("network", Placeholder("the NAT real servers' network", str(net)))
            seq.items.append(item)
            draft.report(Where(draft.source, 1), "placeholder",
                         f"nat real servers ({', '.join(members[:3])}"
                         f"{', ...' if len(members) > 3 else ''}) need an inside VIP (their "
                         "gateway, a virtual_ipaddress with their network's prefix): none found, "
                         "fill in the placeholder")
    return seq


HEADER_NOTE = (
    "Each comment names the line a value came from (file:line). What did not carry over is",
    "in the import's report (stderr, or --json).",
)


def assemble(draft: Draft, options: ImportOptions, features: frozenset[str]) -> Map:
    """The whole cluster document around the draft's services."""
    doc = Map()
    if options.cluster is not None:
        doc.add("cluster", options.cluster, "from --cluster")
    elif draft.cluster is not None:
        doc.add("cluster", draft.cluster[0], f"{draft.cluster[1]} router_id")
    else:
        doc.add("cluster", "imported", "the source names no cluster (or pass --cluster)")
    hosts = Seq(list(options.zookeeper)) if options.zookeeper else Seq(
        [Placeholder("ZooKeeper HOST:PORT", "127.0.0.1:2181")])
    doc.add("zookeeper", Map().add(
        "hosts", hosts,
        "from --zookeeper" if options.zookeeper else
        "REPLACE ME: keepalived has no ZooKeeper (or pass --zookeeper HOST:PORT)"))
    doc.add("directors", _directors(draft, options))
    doc.add("vips", _vips(draft, options))
    if draft.ipvs_timeouts is not None and "ipvs_timeouts" in features:
        doc.add("ipvs_timeouts", draft.ipvs_timeouts)
    doc.add("services", Seq(list(draft.services)))
    return doc


@dataclass(frozen=True)
class ImportResult:
    """The cluster file's text and the report; ``placeholders`` lists what is left to fill."""

    text: str
    findings: tuple[Finding, ...]
    placeholders: tuple[str, ...]
    warnings: tuple[str, ...]  # the loader's warnings on the file (placeholders filled)

    def strict_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.kind in STRICT_KINDS]


class ImportInvalid(LvsctlError):
    """The imported file does not validate: a construct this import cannot express."""


def finish(doc: Map, header: list[str], draft: Draft) -> ImportResult:
    """Render ``doc`` and validate it with lvsctl's loader; raise ImportInvalid if it fails.

    With placeholders, the text validated is the one with each placeholder's example value;
    the text returned (with ``<REPLACE ME>``) is checked to be refused.
    """
    text = render(doc, header)
    filled = render(doc, header, fill=True)
    if yaml.safe_load(text) != plain(doc) or yaml.safe_load(filled) != plain(doc, fill=True):
        raise ImportInvalid("the rendered cluster file does not read back as built (a bug)")
    name = "imported.yaml"
    try:
        loaded = parse_cluster(filled, name)
    except ConfigError as exc:
        raise ImportInvalid(
            f"{draft.source}: the imported cluster file does not validate: "
            + "; ".join(issue.line(name) for issue in exc.issues)) from None
    holes = placeholders(doc)
    if holes:
        try:
            parse_cluster(text, name)
        except ConfigError:
            pass
        else:
            raise ImportInvalid("a placeholder was accepted by the loader (a bug)")
    return ImportResult(
        text=text,
        findings=tuple(dict.fromkeys(draft.findings)),  # an expanded group repeats its lines
        placeholders=tuple(dict.fromkeys(p.what for p in holes)),
        warnings=tuple(w.line(name) for w in loaded.warnings),
    )
