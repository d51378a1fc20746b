"""Check a real server's live state against its setup: one finding per requirement.

``observe()`` reads the current network namespace read-only (pyroute2 for links, addresses and
routes; /proc/sys for sysctls); ``check()`` is pure, so its judgement is tested with tables of
observed states, and the same requirements drive the rendered templates (templates.render).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Family
from lvsctl.templates.render import (
    Address,
    DefaultRoute,
    LinkUp,
    Module,
    Requirement,
    Sysctl,
)

IFF_UP = 0x1
MAIN_TABLE = 254


@dataclass(frozen=True)
class Route:
    metric: int
    gateway: str | None
    device: str | None


@dataclass(frozen=True)
class Observed:
    """The part of a host's network state that real-server requirements talk about."""

    links: Mapping[str, bool]  # device name -> administratively up
    addresses: Mapping[str, frozenset[str]]  # device name -> {"address/prefixlen", ...}
    sysctls: Mapping[str, str | None]  # /proc/sys path -> value; None: no such key
    default_routes: Mapping[Family, tuple[Route, ...]]  # main table


@dataclass(frozen=True)
class Finding:
    requirement: str
    ok: bool
    found: str
    fix: str

    def as_dict(self) -> dict[str, object]:
        return {"requirement": self.requirement, "ok": self.ok, "found": self.found,
                "fix": self.fix if not self.ok else ""}


def _where_is(address: str, observed: Observed) -> list[str]:
    out = []
    for device, cidrs in sorted(observed.addresses.items()):
        for cidr in sorted(cidrs):
            if cidr.split("/")[0] == address:
                out.append(f"{cidr} on {device}")
    return out


def check_one(req: Requirement, observed: Observed) -> Finding:
    """Judge one requirement against the observed state."""
    if isinstance(req, Module):
        ok = req.device in observed.links
        return Finding(req.label, ok, f"{req.device} exists" if ok else f"no {req.device}",
                       req.fix)
    if isinstance(req, LinkUp):
        if req.device not in observed.links:
            return Finding(req.label, False, f"no {req.device}", req.fix)
        up = observed.links[req.device]
        return Finding(req.label, up, "up" if up else "down", req.fix)
    if isinstance(req, Address):
        if req.device not in observed.links:
            return Finding(req.label, False, f"no {req.device}", req.fix)
        ok = req.cidr in observed.addresses.get(req.device, frozenset())
        elsewhere = _where_is(req.address, observed)
        found = "present" if ok else (", ".join(elsewhere) if elsewhere else "absent")
        return Finding(req.label, ok, found, req.fix)
    if isinstance(req, Sysctl):
        value = observed.sysctls.get(req.path)
        if value is None:
            parts = req.path.split("/")
            device = parts[3] if len(parts) == 5 and parts[2] == "conf" else None
            if device and device not in ("all", "default") and device not in observed.links:
                return Finding(req.label, False, f"no interface {device}", req.fix)
            return Finding(req.label, False, f"no {req.key}", req.fix)
        return Finding(req.label, value == req.value, value, req.fix)
    if isinstance(req, DefaultRoute):
        routes = sorted(observed.default_routes.get(req.family, ()), key=lambda r: r.metric)
        if not routes:
            return Finding(req.label, False, "no default route", req.fix)
        best = routes[0]
        found = f"via {best.gateway or '(none)'}"
        if best.device:
            found += f" dev {best.device}"
        found += f" metric {best.metric}"
        return Finding(req.label, best.gateway == req.gateway, found, req.fix)
    raise TypeError(f"unknown requirement {req!r}")


def check(requirements: Iterable[Requirement], observed: Observed) -> list[Finding]:
    return [check_one(req, observed) for req in requirements]


# ---------------------------------------------------------------------------------------------
# Reading the live state (read-only)
# ---------------------------------------------------------------------------------------------


def _read_sysctl(path: str, root: Path) -> str | None:
    try:
        return (root / path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def local_addresses() -> frozenset[str]:
    """Every address configured in this network namespace (canonical spelling)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = {msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS") for msg in ipr.get_addr()}
    except (NetlinkError, OSError) as exc:
        raise KernelError(f"cannot read this host's addresses: {exc}") from None
    return frozenset(str(ipaddress.ip_address(a.split("%")[0])) for a in found if a)


def observe(requirements: Iterable[Requirement], proc_sys: Path = Path("/proc/sys")) -> Observed:
    """Read links, addresses, default routes and the requirements' sysctls of this namespace.

    Raises KernelError when netlink cannot be read.
    """
    from pyroute2 import IPRoute  # imported here: rendering must not need netlink
    from pyroute2.netlink.exceptions import NetlinkError

    reqs = list(requirements)
    try:
        with IPRoute() as ipr:
            names: dict[int, str] = {}
            links: dict[str, bool] = {}
            for link in ipr.get_links():
                name = link.get("ifname")
                names[link["index"]] = name
                links[name] = bool(link["flags"] & IFF_UP)
            addresses: dict[str, set[str]] = {}
            for msg in ipr.get_addr():
                address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                device = names.get(msg["index"])
                if address and device:
                    canonical = str(ipaddress.ip_address(address.split("%")[0]))
                    addresses.setdefault(device, set()).add(f"{canonical}/{msg['prefixlen']}")
            routes: dict[Family, tuple[Route, ...]] = {}
            for family in Family:
                found = []
                for msg in ipr.get_routes(family=int(family), table=MAIN_TABLE):
                    if msg["dst_len"] != 0 or msg.get("RTA_DST") is not None:
                        continue
                    if msg["type"] != 1:  # unicast only: not unreachable/blackhole
                        continue
                    gateway = msg.get("RTA_GATEWAY")
                    found.append(Route(
                        int(msg.get("RTA_PRIORITY") or 0),
                        str(ipaddress.ip_address(gateway)) if gateway else None,
                        names.get(msg.get("RTA_OIF") or -1),
                    ))
                routes[family] = tuple(found)
    except (NetlinkError, OSError) as exc:
        raise KernelError(f"cannot read this host's network state: {exc}") from None
    sysctls = {r.path: _read_sysctl(r.path, proc_sys) for r in reqs if isinstance(r, Sysctl)}
    return Observed(links, {k: frozenset(v) for k, v in addresses.items()}, sysctls, routes)
