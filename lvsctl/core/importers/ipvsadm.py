"""Turn ``ipvsadm -S -n`` rules into a cluster file for the table as it is (no health checks).

A hand-built director is taken over this way: the file describes exactly the services and
destinations the kernel holds, so ``lvsctl ipvs plan`` against that table plans nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from lvsctl.core import schema
from lvsctl.core.importers.common import (
    Draft,
    ImportOptions,
    ImportResult,
    Names,
    SourceError,
    VipSource,
    Where,
    address_slug,
    assemble,
    finish,
    supported_features,
)
from lvsctl.core.importers.text import Map, Seq
from lvsctl.core.model import SCHED_FLAGS, SCHEDULERS

MAX_BYTES = 16 * 1024 * 1024
MAX_LINES = 1_000_000

_PROTOCOLS = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
              "--sctp-service": "sctp"}
_FORWARDING = {"-g": "dr", "--gatewaying": "dr", "-m": "nat", "--masquerading": "nat",
               "-i": "tun", "--ipip": "tun"}
_FLAG_N = {("flag-1", "sh"): "sh-fallback", ("flag-2", "sh"): "sh-port",
           ("flag-1", "mh"): "mh-fallback", ("flag-2", "mh"): "mh-port"}


@dataclass
class _Service:
    where: Where
    protocol: str | None
    address: str | None
    port: int
    fwmark: int
    family: str
    scheduler: str = "wlc"
    flags: list[str] = field(default_factory=list)
    persistence: int | None = None
    netmask: str | None = None
    ops: bool = False
    dests: list[tuple[Where, str, int, str, int]] = field(default_factory=list)


_Key = tuple[object, ...]
_Ident = tuple[str | None, str | None, int, int]  # protocol, address, port, fwmark


def _host_port(where: Where, text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise SourceError(where, f"{text!r} is not ADDRESS:PORT") from None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SourceError(where, f"{text!r} is not ADDRESS:PORT")
    return address, int(port_text)


class IpvsadmImport:
    """Reads the rules line by line into services, then into a Draft."""

    def __init__(self, source: str, options: ImportOptions, features: frozenset[str]) -> None:
        self.source = source
        self.options = options
        self.features = features
        self.draft = Draft(source)
        self.services: dict[tuple[object, ...], _Service] = {}

    def run(self, text: str) -> Draft:
        lines = text.splitlines()
        if len(lines) > MAX_LINES:
            raise SourceError(Where(self.source, MAX_LINES + 1), f"more than {MAX_LINES} lines")
        for number, raw in enumerate(lines, 1):
            where = Where(self.source, number)
            words = raw.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] in ("-A", "--add-service"):
                self.add_service(where, words[1:])
            elif words[0] in ("-a", "--add-server"):
                self.add_dest(where, words[1:])
            else:
                raise SourceError(where, f"{words[0]!r}: expected -A or -a lines as "
                                  "'ipvsadm -S -n' prints them")
        if not self.services:
            raise SourceError(Where(self.source, 1), "no service (-A line): nothing to import")
        names = Names()
        for service in self.services.values():
            self.emit(service, names)
        self.draft.report(Where(self.source, 1), "note", "ipvsadm rules carry no health "
                          "checks: every real server is taken as healthy until checks are added")
        return self.draft

    def key(self, where: Where, words: list[str]) -> tuple[_Key, list[str], _Ident]:
        """The service a line names, and the words after it."""
        if len(words) < 2:
            raise SourceError(where, "expected -t|-u|--sctp-service ADDRESS:PORT or -f MARK")
        flag, value, rest = words[0], words[1], words[2:]
        family6 = "-6" in rest
        if flag in _PROTOCOLS:
            address, port = _host_port(where, value)
            return (_PROTOCOLS[flag], address, port), rest, (_PROTOCOLS[flag], address, port, 0)
        if flag in ("-f", "--fwmark-service"):
            if not value.isdigit() or not 0 < int(value) < 2**32:
                raise SourceError(where, f"fwmark {value!r} is not a number from 1 to 2^32-1")
            return ("fwmark", int(value), family6), rest, (None, None, 0, int(value))
        raise SourceError(where, f"{flag!r}: expected -t, -u, --sctp-service or -f")

    def add_service(self, where: Where, words: list[str]) -> None:
        key, rest, (protocol, address, port, mark) = self.key(where, words)
        if key in self.services:
            raise SourceError(where, "this service is added twice")
        family = "ipv6" if (address and ":" in address) or "-6" in rest else "ipv4"
        service = _Service(where, protocol, address, port, mark, family)
        i = 0
        while i < len(rest):
            word = rest[i]
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            if word in ("-s", "--scheduler") and nxt:
                if nxt not in SCHEDULERS:
                    raise SourceError(where, f"scheduler {nxt!r} is not one the kernel has")
                service.scheduler = nxt
                i += 2
            elif word in ("-p", "--persistent"):
                if nxt is not None and nxt.isdigit():
                    if not 1 <= int(nxt) <= 31 * 86400:
                        raise SourceError(where, f"-p {nxt}: a timeout from 1 s to 31 days")
                    service.persistence = int(nxt)
                    i += 2
                else:
                    service.persistence = 300  # ipvsadm's default
                    i += 1
            elif word in ("-M", "--netmask") and nxt:
                if not re.fullmatch(r"\d{1,3}|\d{1,3}(\.\d{1,3}){3}", nxt):
                    raise SourceError(where, f"-M {nxt!r}: not a netmask such as "
                                      "255.255.255.0 or 64")
                try:
                    schema._netmask(int(nxt) if nxt.isdigit() else nxt)
                except ValueError as exc:
                    raise SourceError(where, f"-M {nxt}: {exc}") from None
                service.netmask = nxt
                i += 2
            elif word in ("-b", "--sched-flags") and nxt:
                service.flags.extend(nxt.split(","))
                i += 2
            elif word in ("-o", "--ops"):
                service.ops = True
                i += 1
            elif word == "-6":
                i += 1
            elif word == "--pe" and nxt:
                self.draft.report(where, "unmapped", f"--pe {nxt}: lvsctl sets no persistence "
                                  "engine")
                i += 2
            else:
                raise SourceError(where, f"{word!r}: not an option of 'ipvsadm -S' service lines")
        self.services[key] = service

    def add_dest(self, where: Where, words: list[str]) -> None:
        key, rest, _ = self.key(where, words)
        service = self.services.get(key)
        if service is None:
            raise SourceError(where, "a real server of a service no -A line added before")
        address: str | None = None
        port = 0
        forwarding = "dr"  # ipvsadm's default
        weight = 1
        i = 0
        while i < len(rest):
            word = rest[i]
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            if word in ("-r", "--real-server") and nxt:
                address, port = _host_port(where, nxt)
                i += 2
            elif word in _FORWARDING:
                forwarding = _FORWARDING[word]
                i += 1
            elif word in ("-w", "--weight") and nxt and nxt.isdigit():
                weight = int(nxt)
                i += 2
            elif word in ("-x", "--u-threshold", "-y", "--l-threshold") and nxt:
                if nxt != "0":
                    self.draft.report(where, "unmapped", f"{word} {nxt}: lvsctl sets no "
                                      "connection thresholds")
                i += 2
            elif word in ("--tun-type", "--tun-port", "--tun-nocsum", "--tun-csum",
                          "--tun-remcsum"):
                step = 1 if word in ("--tun-nocsum", "--tun-csum", "--tun-remcsum") else 2
                if not (word == "--tun-type" and nxt == "ipip"):
                    self.draft.report(where, "refused", f"{' '.join(rest[i:i + step])}: lvsctl's "
                                      "tun mode is ipip")
                i += step
            else:
                raise SourceError(where, f"{word!r}: not an option of 'ipvsadm -S' server lines")
        if address is None:
            raise SourceError(where, "a real server line needs -r ADDRESS:PORT")
        service.dests.append((where, address, port, forwarding, weight))

    def emit(self, service: _Service, names: Names) -> None:
        forwardings = {d[3] for d in service.dests}
        forwarding = sorted(forwardings)[0] if forwardings else "dr"
        if len(forwardings) > 1:
            majority = max(sorted(forwardings), key=lambda f: sum(d[3] == f for d in service.dests))
            forwarding = majority
        if service.fwmark:
            label = f"fwmark-{service.fwmark}"
        else:
            assert service.address is not None
            label = f"{service.protocol}-{address_slug(service.address)}-{service.port}"
        item = Map(comment=f"{service.where}")
        item.add("name", names.take(label))
        if service.fwmark:
            item.add("fwmark", service.fwmark)
            if service.family == "ipv6":
                item.add("family", "ipv6")
        else:
            assert service.address is not None
            item.add("vip", service.address).add("port", service.port)
            if service.protocol != "tcp":
                assert service.protocol is not None
                item.add("protocol", service.protocol)
            self.draft.service_vips.append(VipSource(service.address, service.where))
        item.add("forwarding", forwarding)
        item.add("scheduler", service.scheduler)
        flags = [_FLAG_N.get((f, service.scheduler), f) for f in service.flags]
        for flag in flags:
            if SCHED_FLAGS.get(flag) != service.scheduler:
                self.draft.report(service.where, "refused", f"scheduler flag {flag} does not "
                                  f"belong to {service.scheduler}: left out")
        flags = [f for f in flags if SCHED_FLAGS.get(f) == service.scheduler]
        if flags:
            item.add("flags", Seq(list(flags)))
        if service.persistence is not None:
            persistence = Map(flow=True).add("timeout", f"{service.persistence}s")
            host = 32 if service.family == "ipv4" else 128
            if service.netmask is not None:
                netmask: int | str = int(service.netmask) if service.netmask.isdigit() \
                    else service.netmask
                if netmask not in (host, "255.255.255.255"):
                    persistence.add("netmask", netmask)
            item.add("persistence", persistence)
        if service.ops:
            if "ops" in self.features:
                item.add("ops", True)
            else:
                self.draft.report(service.where, "unmapped", "-o (one-packet scheduling): this "
                                  "lvsctl's cluster file has no ops")
        realservers = Seq()
        rs_names = Names()
        taken = 0
        for where, address, port, fwd, weight in service.dests:
            if fwd != forwarding:
                self.draft.report(where, "refused", f"{address}:{port} forwards by {fwd} and "
                                  f"the service's others by {forwarding}: lvsctl forwards a "
                                  "whole service one way; left out")
                continue
            if ("ipv6" if ":" in address else "ipv4") != service.family:
                self.draft.report(where, "refused", f"{address}: not an {service.family} "
                                  "address like the service's; left out")
                continue
            if fwd == "nat" and port == 0:
                self.draft.report(where, "refused", f"{address}:0: a nat real server needs "
                                  "a port; left out")
                continue
            keeps = fwd in ("dr", "tun")
            wanted_port = service.port
            if keeps and port != wanted_port:
                self.draft.report(where, "refused", f"{address}:{port}: in {fwd} mode the port "
                                  f"must be the service's ({wanted_port}); left out")
                continue
            rs = Map(flow=True, comment=str(where))
            rs.add("name", rs_names.take(f"rs-{address_slug(address)}"))
            rs.add("address", address)
            if port != service.port:
                rs.add("port", port)
            if weight != 1:
                rs.add("weight", weight)
            realservers.items.append(rs)
            taken += 1
            if forwarding == "nat":
                self.draft.nat_realservers.append(address)
        if taken == 0:
            item.add("quorum", 0, "no real server in the table")
        item.add("realservers", realservers)
        self.draft.services.append(item)


def import_ipvsadm(text: str, source: str, options: ImportOptions | None = None,
                   features: frozenset[str] | None = None) -> ImportResult:
    """Import ``ipvsadm -S -n`` text; ``source`` names it in messages.

    Raises SourceError (bad input) or ImportInvalid.
    """
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise SourceError(Where(source, 1), f"more than {MAX_BYTES // (1024 * 1024)} MiB")
    options = options or ImportOptions()
    features = supported_features() if features is None else features
    draft = IpvsadmImport(source, options, features).run(text)
    header = [
        f"lvsctl cluster file imported from {source} (lvsctl config import ipvsadm): the",
        "IPVS table as it is, without health checks. Each comment names the rule's line.",
        "'<REPLACE ME>' marks a value the rules do not have: fill it in (lvsctl config check",
        "refuses the file until then).",
    ]
    return finish(assemble(draft, options, features), header, draft)
