"""The IPVS table in ipvsadm's text formats: the ``-Ln`` listing and the ``-S -n`` rules that
``ipvsadm -R`` reads back, in ipvsadm's order (libipvs's comparison, quirks included)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import cmp_to_key

from lvsctl.core.model import Family, Forwarding, ServiceKey
from lvsctl.core.model import Protocol as IpProtocol
from lvsctl.director.ipvs_rules import FWD_NAMES, scheduler_flag_names
from lvsctl.director.reconcile import ObservedDest, ObservedService

Table = Mapping[ServiceKey, ObservedService]

# ---------------------------------------------------------------------------------------------
# ipvsadm's order
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


def _proto_number(key: ServiceKey) -> int:
    # The kernel reports fwmark services with protocol TCP.
    return key.protocol.value if key.protocol is not None else IpProtocol.TCP.value


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


def sorted_services(table: Table) -> list[ObservedService]:
    """The services in the order ipvsadm lists them."""
    return sorted(table.values(), key=cmp_to_key(_cmp_services))


def sorted_dests(service: ObservedService) -> list[ObservedDest]:
    """A service's dests in the order ipvsadm lists them."""
    return sorted(service.dests.values(), key=cmp_to_key(_cmp_dests))


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# ---------------------------------------------------------------------------------------------
# ipvsadm -Ln
# ---------------------------------------------------------------------------------------------


def service_label(key: ServiceKey) -> tuple[str, str]:
    """The protocol column and the address column of ``ipvsadm -Ln`` for a service."""
    if key.fwmark:
        return "FWM", f"{key.fwmark}{' IPv6' if key.family is Family.INET6 else ''}"
    assert key.protocol is not None and key.address is not None
    return key.protocol.name, _host_port(key.address, key.port)


def _flags_text(service: ObservedService) -> str:
    spec = service.spec
    parts = []
    if spec.persistence:
        parts.append(f"persistent {spec.persistence}")
        if spec.netmask != service.key.family.host_prefix:
            parts.append(f"mask /{spec.netmask}")
    parts.extend(sorted(spec.flags))
    if service.pe_name:
        parts.append(f"pe {service.pe_name}")
    return " ".join(parts)


def listing_lines(table: Table) -> list[str]:
    """The table in ``ipvsadm -Ln``'s layout (same columns, same order), without its version
    line."""
    lines = ["Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for service in sorted_services(table):
        proto, where = service_label(service.key)
        head = f"{proto:<4} {where} {service.spec.scheduler}"
        lines.append(f"{head} {_flags_text(service)}".rstrip())
        for dest in sorted_dests(service):
            name = _host_port(dest.key.address, dest.key.port)
            lines.append(f"  -> {name:<28} {FWD_NAMES.get(dest.fwd, '?'):<7} {dest.weight:<6} "
                         f"{dest.active_conns:<10} {dest.inactive_conns:<10}".rstrip())
    return lines


# ---------------------------------------------------------------------------------------------
# ipvsadm -S -n
# ---------------------------------------------------------------------------------------------

_RULE_PROTO = {IpProtocol.TCP: "-t", IpProtocol.UDP: "-u", IpProtocol.SCTP: "--sctp-service"}
_FWD_SWITCH = {0: "-m", 1: "-g", 2: "-i", 3: "-g"}
_TUN_NAMES = {0: "ipip", 1: "gue", 2: "gre"}
_TUN_CSUM = {0: "--tun-nocsum", 1: "--tun-csum", 2: "--tun-remcsum"}


def rule_name(key: ServiceKey) -> str:
    """The service as ipvsadm -S writes it: "-t 192.0.2.10:80", "-f 7 -6"."""
    if key.fwmark:
        return f"-f {key.fwmark} -6" if key.family is Family.INET6 else f"-f {key.fwmark}"
    assert key.protocol is not None and key.address is not None
    return f"{_RULE_PROTO[key.protocol]} {_host_port(key.address, key.port)}"


def _sched_flag_text(service: ObservedService) -> str:
    names = scheduler_flag_names(service.spec.scheduler)
    return ",".join(name for name in names if name in service.spec.flags)


def save_text(table: Table) -> str:
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
