"""Render what a real server needs for its forwarding mode: a shell script or networkd files.

One pure pipeline: cluster file (or the ad-hoc options) -> ``RealServerSetup`` (every value
validated when it is built) -> ``requirements()`` (the list of kernel settings, also what
``templates.verify`` checks) -> Jinja2 templates -> ``{relative path: text}``. Nothing touches
the disk until ``write_files``, so a bad input writes nothing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import jinja2
from pydantic import TypeAdapter, ValidationError

from lvsctl import __version__
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster, Family, Forwarding, canonical_address
from lvsctl.core.schema import IfName, Name

Format = Literal["shell", "networkd"]
FORMATS: tuple[Format, ...] = ("shell", "networkd")

TEMPLATE_DIR = Path(__file__).resolve().parent

# Beyond Linux's own rule (lvsctl.core.schema.IfName), a name that reaches networkd or sysctl.d must
# not carry characters those formats give a meaning: networkd's Name= takes globs (* ? [ ]),
# sysctl.d splits at '=', and '#'/';' start comments.
# fullmatch: a "$" would let a trailing newline through into the rendered files.
_RENDERABLE_IFNAME = re.compile(r"[A-Za-z0-9_.-]+")

_IFNAME_RULE = TypeAdapter(IfName)
_NAME_RULE = TypeAdapter(Name)

# Fallback devices the kernel creates when the tunnel module loads (one per namespace).
TUNNEL_DEVICE = {Family.INET: "tunl0", Family.INET6: "ip6tnl0"}
TUNNEL_MODULE = {Family.INET: "ipip", Family.INET6: "ip6_tunnel"}
# Metric of the NAT default route: IPv4 0 (the kernel's lowest); IPv6 1, because 0 means "the
# default, 1024" there, which an RA-learned default route would tie with.
DEFAULT_ROUTE_METRIC = {Family.INET: 0, Family.INET6: 1}


class SetupError(LvsctlError):
    """A real-server setup that cannot be rendered: bad value, unknown server, conflicting needs."""


# ---------------------------------------------------------------------------------------------
# Validation of every value that may reach a template
# ---------------------------------------------------------------------------------------------


def _rule_message(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def check_interface(value: str, what: str = "--interface") -> str:
    """A Linux interface name (the schema's rule) that is also safe in every output format."""
    try:
        _IFNAME_RULE.validate_python(value)
    except ValidationError as exc:
        raise SetupError(f"{what} {value!r}: {_rule_message(exc)}") from None
    if not _RENDERABLE_IFNAME.fullmatch(value):
        raise SetupError(
            f"{what} {value!r}: lvsctl renders only interface names of letters, digits, "
            "'_', '.' and '-'"
        )
    return value


def check_name(value: str, what: str = "--server") -> str:
    try:
        _NAME_RULE.validate_python(value)
    except ValidationError as exc:
        raise SetupError(f"{what} {value!r}: {_rule_message(exc)}") from None
    return value


def check_address(value: str, what: str) -> str:
    """A unicast address a VIP or gateway can be, in its one canonical spelling."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise SetupError(f"{what} {value!r}: not an IPv4 or IPv6 address") from None
    if getattr(address, "scope_id", None) is not None:  # fe80::1%eth0: a zone is no VIP
        raise SetupError(f"{what} {value!r}: an address with a %zone is not a VIP or gateway")
    if (address.is_multicast or address.is_unspecified or address.is_loopback
            or address.is_link_local or str(address) == "255.255.255.255"):
        raise SetupError(f"{what} {value}: not a unicast address a real server can use")
    return canonical_address(value)


def _family_label(family: Family) -> str:
    return "IPv4" if family is Family.INET else "IPv6"


# ---------------------------------------------------------------------------------------------
# The setup of one real server
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealServerSetup:
    """Everything one real server needs, for every service it is in. Validated on creation.

    ``dr_vips`` go on ``lo``, ``tun_vips`` on the tunnel device, ``gateway`` (NAT) becomes the
    default route. A server is of one family: its address decides its services' family.
    """

    name: str
    family: Family
    interface: str = "eth0"  # the outward interface: ARP settings (DR, TUN)
    dr_vips: tuple[str, ...] = ()
    tun_vips: tuple[str, ...] = ()
    gateway: str | None = None
    services: tuple[str, ...] = field(default=(), compare=False)  # for the header only

    def __post_init__(self) -> None:
        check_name(self.name)
        check_interface(self.interface)
        for name in self.services:
            check_name(name, "service")
        for what, values in (("dr VIP", self.dr_vips), ("tun VIP", self.tun_vips)):
            for vip in values:
                if check_address(vip, what) != vip:
                    raise SetupError(f"{what} {vip}: not in canonical form")
                if Family.of(vip) is not self.family:
                    raise SetupError(
                        f"{what} {vip} is not {_family_label(self.family)}: one real server's "
                        "VIPs are all of its own family"
                    )
        if self.gateway is not None:
            check_address(self.gateway, "gateway")
            if Family.of(self.gateway) is not self.family:
                raise SetupError(
                    f"gateway {self.gateway} is not {_family_label(self.family)} like the rest"
                )
            if self.dr_vips or self.tun_vips:
                raise SetupError(
                    f"{self.name}: nat (default route via the director {self.gateway}) and "
                    f"{'dr' if self.dr_vips else 'tun'} (replies go straight to the clients "
                    "from the VIP) cannot share one host: the director would get the "
                    "direct replies and drop them"
                )
        if not (self.dr_vips or self.tun_vips or self.gateway):
            raise SetupError(f"{self.name}: nothing to set up (no VIP and no gateway)")
        if set(self.dr_vips) & set(self.tun_vips):
            raise SetupError(f"{self.name}: a VIP is either on lo (dr) or on the tunnel (tun)")

    @property
    def modes(self) -> tuple[Forwarding, ...]:
        out = []
        if self.dr_vips:
            out.append(Forwarding.DR)
        if self.tun_vips:
            out.append(Forwarding.TUN)
        if self.gateway:
            out.append(Forwarding.NAT)
        return tuple(out)

    @property
    def summary(self) -> str:
        return " + ".join(m.label for m in self.modes) + f" ({_family_label(self.family)})"


def setup_adhoc(
    mode: str, vips: Sequence[str], interface: str = "eth0", gateway: str | None = None,
    name: str = "realserver",
) -> RealServerSetup:
    """The setup the ad-hoc CLI form asks for. Raises SetupError naming the bad option."""
    forwarding = Forwarding.parse(mode)
    check_interface(interface)
    canonical = tuple(dict.fromkeys(check_address(v, "--vip") for v in vips))
    if gateway is not None:
        gateway = check_address(gateway, "--gateway")
    families = {Family.of(a) for a in (*canonical, *([gateway] if gateway else []))}
    if len(families) > 1:
        first = canonical[0]
        other = next(a for a in (*canonical, gateway) if a and Family.of(a) != Family.of(first))
        raise SetupError(
            f"--vip {first} and {other} are of different families: one setup is IPv4 or IPv6"
        )
    if forwarding is Forwarding.NAT:
        if gateway is None:
            raise SetupError("--mode nat needs --gateway (the director's inside VIP)")
        if canonical:
            raise SetupError("--vip: a nat real server needs no VIP (the director rewrites it)")
        return RealServerSetup(name, Family.of(gateway), interface, gateway=gateway)
    if gateway is not None:
        raise SetupError(f"--gateway: a {forwarding.label} real server keeps its own router")
    if not canonical:
        raise SetupError(f"--mode {forwarding.label} needs at least one --vip")
    family = Family.of(canonical[0])
    if forwarding is Forwarding.DR:
        return RealServerSetup(name, family, interface, dr_vips=canonical)
    return RealServerSetup(name, family, interface, tun_vips=canonical)


def setup_for(cluster: Cluster, name: str, interface: str = "eth0") -> RealServerSetup:
    """The combined setup of real server ``name`` over every service it is in."""
    check_interface(interface)
    names = cluster.realserver_names()
    if name not in names:
        raise SetupError(
            f"--server {name!r}: no such real server in cluster {cluster.name} "
            f"(it has {', '.join(names)})"
        )
    per_mode: dict[Forwarding, list[str]] = {}
    vips: dict[Forwarding, dict[str, None]] = {m: {} for m in Forwarding}
    services: list[str] = []
    address = ""
    for service in cluster.services:
        for rs in service.realservers:
            if rs.name != name:
                continue
            address = rs.address
            services.append(service.name)
            per_mode.setdefault(service.forwarding, []).append(service.name)
            vips[service.forwarding].update(dict.fromkeys(service.vips))
    if Forwarding.NAT in per_mode and len(per_mode) > 1:
        other = next(m for m in per_mode if m is not Forwarding.NAT)
        raise SetupError(
            f"{name} is a nat real server in {', '.join(per_mode[Forwarding.NAT])} (default "
            f"route via the director) and a {other.label} one in {', '.join(per_mode[other])} "
            "(replies go straight to the clients from the VIP): one host cannot be both"
        )
    family = Family.of(address)
    gateway = None
    if Forwarding.NAT in per_mode:
        inside = [
            v for v in cluster.vips
            if v.inside and v.network is not None and v.family is family
            and ipaddress.ip_address(address) in ipaddress.ip_network(v.network)
        ]
        if not inside:  # the cluster loader already refuses this; kept as a clear message
            raise SetupError(f"{name}: {address} is in no inside VIP's network")
        gateway = inside[0].address
    tun = tuple(vips[Forwarding.TUN])
    # A VIP served in both modes needs to be local only once: the tunnel device takes it.
    dr = tuple(v for v in vips[Forwarding.DR] if v not in vips[Forwarding.TUN])
    return RealServerSetup(name, family, interface, dr, tun, gateway, tuple(services))


def setups_for_all(cluster: Cluster, interface: str = "eth0") -> list[RealServerSetup]:
    """Every real server's setup; the first conflict raises, before anything is written."""
    return [setup_for(cluster, name, interface) for name in cluster.realserver_names()]


# ---------------------------------------------------------------------------------------------
# Requirements: the kernel settings a setup amounts to (rendered, and verified)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """A kernel module whose fallback ``device`` must exist (ipip -> tunl0)."""

    kind: ClassVar[str] = "Module"
    name: str
    device: str

    @property
    def label(self) -> str:
        return f"module {self.name} loaded ({self.device} exists)"

    @property
    def fix(self) -> str:
        return f"modprobe {shlex.quote(self.name)}"


@dataclass(frozen=True)
class LinkUp:
    kind: ClassVar[str] = "LinkUp"
    device: str

    @property
    def label(self) -> str:
        return f"{self.device} up"

    @property
    def fix(self) -> str:
        return f"ip link set dev {shlex.quote(self.device)} up"


@dataclass(frozen=True)
class Address:
    kind: ClassVar[str] = "Address"
    device: str
    address: str
    prefixlen: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def label(self) -> str:
        return f"{self.cidr} on {self.device}"

    @property
    def options(self) -> tuple[str, ...]:
        # No duplicate address detection: the VIP is meant to exist on several hosts.
        return ("nodad",) if ":" in self.address else ()

    @property
    def args(self) -> tuple[str, ...]:
        return (self.device, self.cidr, *self.options)

    @property
    def fix(self) -> str:
        return shlex.join(["ip", "addr", "add", self.cidr, "dev", self.device, *self.options])


@dataclass(frozen=True)
class Sysctl:
    kind: ClassVar[str] = "Sysctl"
    path: str  # under /proc/sys, '/'-separated: an interface name may hold dots
    value: str

    @property
    def key(self) -> str:
        """The dotted spelling when it is unambiguous, the '/' one otherwise."""
        parts = self.path.split("/")
        return self.path if any("." in p for p in parts) else ".".join(parts)

    @property
    def label(self) -> str:
        return f"{self.key} = {self.value}"

    @property
    def fix(self) -> str:
        return f"sysctl -w {shlex.quote(f'{self.key}={self.value}')}"


@dataclass(frozen=True)
class DefaultRoute:
    kind: ClassVar[str] = "DefaultRoute"
    family: Family
    gateway: str
    metric: int

    @property
    def flag(self) -> str:
        return "-4" if self.family is Family.INET else "-6"

    @property
    def label(self) -> str:
        return f"default route via {self.gateway}"

    @property
    def fix(self) -> str:
        return shlex.join(["ip", self.flag, "route", "replace", "default", "via", self.gateway,
                           "metric", str(self.metric)])


Requirement = Module | LinkUp | Address | Sysctl | DefaultRoute


def _arp(interface: str) -> list[Requirement]:
    # arp_ignore=1: answer ARP only for addresses of the receiving interface (not the VIP on
    # lo/tunl0); arp_announce=2: never use the VIP as the source of our own ARP requests.
    # The kernel takes the larger of `all` and the interface's value, so both are set.
    return [
        Sysctl(f"net/ipv4/conf/{dev}/{key}", value)
        for dev in ("all", interface)
        for key, value in (("arp_ignore", "1"), ("arp_announce", "2"))
    ]


def requirements(setup: RealServerSetup) -> tuple[Requirement, ...]:
    """The settings in the order they are applied (``down`` undoes them in reverse)."""
    out: list[Requirement] = []
    ipv4 = setup.family is Family.INET
    prefix = setup.family.host_prefix
    if setup.tun_vips:
        device = TUNNEL_DEVICE[setup.family]
        out.append(Module(TUNNEL_MODULE[setup.family], device))
        if ipv4:
            # The decapsulated packet arrives on tunl0 with the client's source address, which
            # is not routed via tunl0: strict or loose reverse-path filtering drops it. The
            # kernel uses max(all, device); `default` covers a tunl0 created later.
            out += [Sysctl(f"net/ipv4/conf/{dev}/rp_filter", "0")
                    for dev in ("all", "default", device)]
    if ipv4 and (setup.dr_vips or setup.tun_vips):
        # ARP settings come before any VIP: otherwise the host answers ARP for it meanwhile.
        out += _arp(setup.interface)
    out += [Address("lo", vip, prefix) for vip in setup.dr_vips]
    if setup.tun_vips:
        device = TUNNEL_DEVICE[setup.family]
        out += [Address(device, vip, prefix) for vip in setup.tun_vips]
        out.append(LinkUp(device))
    if setup.gateway is not None:
        out.append(DefaultRoute(setup.family, setup.gateway, DEFAULT_ROUTE_METRIC[setup.family]))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # shell and ini text, not HTML: values are validated and sh-quoted
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters["shjoin"] = lambda values: shlex.join(str(v) for v in values)
    return env


_ENV = _environment()


_PLAIN = re.compile(r"[^A-Za-z0-9_.,:/+@ -]")


def _context(setup: RealServerSetup, source: str) -> dict[str, object]:
    reqs = requirements(setup)
    return {
        "setup": setup,
        "requirements": reqs,
        # The source is only named in comments; it must not be able to end one (a newline).
        "source": _PLAIN.sub("?", source),
        "version": __version__,
        "kinds": {type(r).__name__ for r in reqs},
    }


def render_shell(setup: RealServerSetup, source: str = "the command line") -> dict[str, str]:
    return {"setup.sh": _ENV.get_template("shell/setup.sh.j2").render(_context(setup, source))}


def render_networkd(setup: RealServerSetup, source: str = "the command line") -> dict[str, str]:
    """Files laid out as under /, e.g. etc/systemd/network/50-lvsctl-lo.network."""
    ctx = _context(setup, source)
    reqs = requirements(setup)
    files: dict[str, str] = {}
    devices: dict[str, list[Address]] = {}
    for req in reqs:
        if isinstance(req, Address):
            devices.setdefault(req.device, []).append(req)
    for device, addresses in devices.items():
        files[f"etc/systemd/network/50-lvsctl-{device}.network"] = _ENV.get_template(
            "networkd/device.network.j2"
        ).render(ctx, device=device, addresses=addresses)
    sysctls = [r for r in reqs if isinstance(r, Sysctl)]
    if sysctls:
        files["etc/sysctl.d/90-lvsctl-realserver.conf"] = _ENV.get_template(
            "networkd/sysctl.conf.j2"
        ).render(ctx, sysctls=sysctls)
    modules = [r for r in reqs if isinstance(r, Module)]
    if modules:
        files["etc/modules-load.d/lvsctl-realserver.conf"] = _ENV.get_template(
            "networkd/modules.conf.j2"
        ).render(ctx, modules=modules)
    for req in reqs:
        if isinstance(req, DefaultRoute):
            files[f"etc/systemd/network/{setup.interface}.network.d/50-lvsctl-gateway.conf"] = (
                _ENV.get_template("networkd/gateway.conf.j2").render(ctx, route=req)
            )
    return files


def render(setup: RealServerSetup, fmt: Format, source: str = "the command line") -> dict[str, str]:
    if fmt == "shell":
        return render_shell(setup, source)
    return render_networkd(setup, source)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_files(directory: str | Path, files: Mapping[str, str]) -> list[Path]:
    """Write ``files`` under ``directory``; each file appears whole (temp file + rename)."""
    root = Path(directory)
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o755 if relative.endswith(".sh") else 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def files_for(setups: Iterable[RealServerSetup], fmt: Format, source: str,
              per_server_folder: bool) -> dict[str, str]:
    """Render every setup first (so a failure writes nothing), keyed by relative path."""
    out: dict[str, str] = {}
    for setup in setups:
        for relative, text in render(setup, fmt, source).items():
            out[f"{setup.name}/{relative}" if per_server_folder else relative] = text
    return out
