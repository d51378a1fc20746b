"""Map a keepalived.conf onto an lvsctl cluster file, reporting every line that does not carry over.

What maps (and how) — keepalived -> lvsctl:

- ``virtual_server IP PORT`` / ``fwmark N`` / ``group NAME`` -> one service per IPVS service
  (a ``virtual_server_group`` is expanded, address ranges included);
  ``lb_algo``/``lvs_sched`` -> scheduler, ``lb_kind``/``lvs_method`` -> forwarding,
  ``persistence_timeout``/``persistence_granularity`` -> persistence {timeout, netmask},
  ``sorry_server`` -> sorry_server, ``quorum`` -> quorum (when every weight is 1: keepalived
  counts live weight, lvsctl live servers), ``hysteresis`` -> quorum_hysteresis,
  ``inhibit_on_failure`` -> on_failure: weight0, ``alpha`` -> alpha, ``ops`` -> ops,
  ``sh-port``/``flag-2``... -> flags.
- ``real_server IP PORT`` -> a real server named ``rs-<address>``, ``weight`` -> weight.
- checkers -> checks (all must pass, as in keepalived): ``delay_loop`` -> interval,
  ``connect_timeout`` -> timeout, ``retry``/``nb_get_retry`` N -> fall N+1 (keepalived
  declares a server down after the first failure and N retries), rise 1 (one success brings it
  back), ``connect_ip``/``connect_port`` -> address/port, ``warmup`` -> warmup; each value
  resolved checker -> real_server -> virtual_server -> keepalived's default.
- ``vrrp_instance``'s ``virtual_ipaddress`` -> vips (``dev``, else the instance's
  ``interface``); one whose prefix holds the NAT real servers is their inside VIP.
- ``global_defs``' ``lvs_sync_daemon`` -> each director's sync, ``lvs_timeouts`` ->
  ipvs_timeouts, ``router_id`` -> the cluster name.

Everything else (VRRP election and tracking, notify scripts, SMTP alerts, ...) is reported,
one finding per line.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lvsctl.core import schema
from lvsctl.core.importers.common import (
    Draft,
    ImportOptions,
    ImportResult,
    Kind,
    Names,
    SourceError,
    VipSource,
    Where,
    address_slug,
    assemble,
    finish,
    slug,
    supported_features,
)
from lvsctl.core.importers.keepalived_parse import Statement, parse_file
from lvsctl.core.importers.text import Commented, Entry, Map, Seq, Value, render
from lvsctl.core.model import SCHEDULERS

MAX_RANGE = 1024  # addresses one virtual_server_group range may expand to

# keepalived's defaults (keepalived.conf(5), 2.2): what a checker does when the file is silent.
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RETRY = {"misc": 0, "dns": 3}  # others: 1
DEFAULT_PERSISTENCE = 360
DEFAULT_PROTOCOL = "udp"  # keepalived 2.2: "no protocol set - defaulting to UDP"

_TOP_LEVEL = {
    "global_defs", "vrrp_instance", "vrrp_sync_group", "vrrp_script", "virtual_server",
    "virtual_server_group", "static_ipaddress", "static_routes", "static_rules",
    "linkbeat_interfaces", "garp_group", "net_namespace", "net_namespace_ipvs", "instance",
    "use_pid_dir", "ssl", "bfd_instance", "track_file", "vrrp_track_file", "vrrp_track_process",
    "track_process", "child_wait_time", "namespace_with_ipsets", "interface_up_down_delays",
}
_KEYWORD = re.compile(r"[A-Za-z_@][A-Za-z0-9_.@^-]*")

_VRRP_REASONS = {
    "state": "VRRP role: lvsctl elects the active director through ZooKeeper",
    "priority": "VRRP priority: lvsctl elects the active director through ZooKeeper",
    "nopreempt": "VRRP preemption: lvsctl keeps the active director until it fails",
    "preempt_delay": "VRRP preemption: lvsctl keeps the active director until it fails",
    "virtual_router_id": "VRRP router id: lvsctl has no VRRP",
    "advert_int": "VRRP advertisement interval: lvsctl's failover timing is the ZooKeeper "
                  "session (zookeeper.session_timeout)",
    "authentication": "VRRP authentication: lvsctl's peer link is HMAC-authenticated",
    "unicast_src_ip": "VRRP unicast peers: lvsctl's directors meet through ZooKeeper",
    "unicast_peer": "VRRP unicast peers: lvsctl's directors meet through ZooKeeper",
    "track_script": "VRRP tracking: lvsctl has no tracked scripts",
    "track_interface": "VRRP tracking: lvsctl has no tracked interfaces",
    "track_process": "VRRP tracking: lvsctl has no tracked processes",
    "track_file": "VRRP tracking: lvsctl has no tracked files",
    "virtual_routes": "VRRP routes: lvsctl moves addresses, not routes",
    "virtual_rules": "VRRP rules: lvsctl moves addresses, not policy rules",
    "garp_master_delay": "gratuitous ARP timing: see the cluster file's announce",
    "garp_master_repeat": "gratuitous ARP timing: see the cluster file's announce",
    "garp_master_refresh": "gratuitous ARP timing: see the cluster file's announce",
    "smtp_alert": "SMTP alerts: lvsctl sends no mail",
}
_GLOBAL_REASONS = {
    "notification_email": "SMTP alerts: lvsctl sends no mail",
    "notification_email_from": "SMTP alerts: lvsctl sends no mail",
    "smtp_server": "SMTP alerts: lvsctl sends no mail",
    "smtp_connect_timeout": "SMTP alerts: lvsctl sends no mail",
    "smtp_helo_name": "SMTP alerts: lvsctl sends no mail",
    "smtp_alert": "SMTP alerts: lvsctl sends no mail",
    "smtp_alert_vrrp": "SMTP alerts: lvsctl sends no mail",
    "smtp_alert_checker": "SMTP alerts: lvsctl sends no mail",
    "enable_script_security": "lvsctl runs no scripts as another user (misc checks run as lvsctl)",
    "script_user": "lvsctl runs no scripts as another user (misc checks run as lvsctl)",
    "lvs_flush": "lvsctl never flushes the table: it changes only what differs",
    "lvs_flush_on_stop": "lvsctl keeps the table when it stops (the standby has it warm)",
}
_VS_REASONS = {
    "ha_suspend": "lvsctl keeps checking while the VIP is away (the standby's table stays warm)",
    "smtp_alert": "SMTP alerts: lvsctl sends no mail",
    "snmp_name": "lvsctl has no SNMP agent",
    "omega": "lvsctl runs no notify scripts at shutdown",
    "quorum_up": "lvsctl runs no scripts on quorum changes",
    "quorum_down": "lvsctl runs no scripts on quorum changes",
    "persistence_engine": "lvsctl sets no persistence engine",
    "sorry_server_inhibit": "lvsctl adds the sorry server when quorum is lost and deletes it after",
}
_RS_REASONS = {
    "file_check": "lvsctl has no file checks (a misc check can read the file)",
    "bfd_check": "lvsctl has no BFD",
    "notify_up": "lvsctl runs no notify scripts",
    "notify_down": "lvsctl runs no notify scripts",
    "uthreshold": "lvsctl sets no connection thresholds",
    "lthreshold": "lvsctl sets no connection thresholds",
    "smtp_alert": "SMTP alerts: lvsctl sends no mail",
    "snmp_name": "lvsctl has no SNMP agent",
}
_CHECK_TYPES = {
    "tcp_check": "tcp", "http_get": "http", "ssl_get": "https", "misc_check": "misc",
    "dns_check": "dns", "udp_check": "udp", "smtp_check": "smtp", "ping_check": "ping",
}
_TIMING_KEYWORDS = {"delay_loop", "connect_timeout", "retry", "nb_get_retry",
                    "delay_before_retry", "warmup"}
_FORWARDING = {"nat": "nat", "dr": "dr", "tun": "tun"}
_FLAGS = {"sh-port": "sh-port", "sh-fallback": "sh-fallback", "mh-port": "mh-port",
          "mh-fallback": "mh-fallback"}
_FLAG_N = {("flag-1", "sh"): "sh-fallback", ("flag-2", "sh"): "sh-port",
           ("flag-1", "mh"): "mh-fallback", ("flag-2", "mh"): "mh-port"}
# A shell is needed for these (misc_path is split into words and run without one).
_SHELL_CHARS = re.compile(r"[|&;<>()$`\\*?\[\]~{}]|^\w+=")
_HEX = re.compile(r"[0-9A-Fa-f\s]*")


@dataclass
class _Timing:
    """A checker's timing keywords, looked up checker -> real_server -> virtual_server."""

    values: dict[str, tuple[str, Where]] = field(default_factory=dict)

    def read(self, statement: Statement) -> bool:
        key = "retry" if statement.keyword == "nb_get_retry" else statement.keyword
        if key not in _TIMING_KEYWORDS:
            return False
        self.values[key] = (_one(statement), statement.where)
        return True


def _one(statement: Statement) -> str:
    if len(statement.args) != 1:
        raise SourceError(statement.where, f"{statement.keyword} takes one value")
    return statement.args[0]


def _integer(statement: Statement, value: str, low: int = 0, high: int = 2**32 - 1) -> int:
    if not re.fullmatch(r"\d+", value) or not low <= int(value) <= high:
        raise SourceError(statement.where, f"{statement.keyword}: {value!r} is not a whole "
                          f"number from {low} to {high}")
    return int(value)


def _address(statement: Statement, value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise SourceError(statement.where, f"{value!r} is not an IP address") from None
    return str(address)


def _port(statement: Statement, value: str) -> int:
    return _integer(statement, value, 0, 65535)


def _seconds(value: float) -> str:
    return f"{value:g}s"


class KeepalivedImport:
    """One import run: reads the statements, fills a Draft, reports as it goes."""

    def __init__(self, path: Path, options: ImportOptions, features: frozenset[str]) -> None:
        self.path = path
        self.options = options
        self.features = features
        self.draft = Draft(str(path))
        self.groups: dict[str, Statement] = {}
        self.vrids: dict[str, int] = {}
        self.service_names = Names()
        self.seen: dict[tuple[object, ...], Where] = {}

    def report(self, where: Where, kind: Kind, reason: str) -> None:
        self.draft.report(where, kind, reason)

    def unmapped(self, statement: Statement, reason: str) -> None:
        self.report(statement.where, "unmapped", f"{statement.words[0].text}: {reason}")

    def unknown(self, statement: Statement, context: str) -> None:
        self.unmapped(statement, f"not a keyword lvsctl knows in {context}")

    def run(self) -> Draft:
        statements = parse_file(self.path)
        if not statements:
            raise SourceError(Where(str(self.path), 1), "no keepalived statement in the file")
        self.spelling(statements)
        for statement in statements:  # lvs_sync_daemon's default id is its instance's VRID
            if statement.keyword == "vrrp_instance" and statement.args:
                for child in statement.children():
                    if child.keyword == "virtual_router_id":
                        self.vrids[statement.args[0]] = _integer(child, _one(child), 1, 255)
        servers: list[Statement] = []
        for statement in statements:
            keyword = statement.keyword
            if statement.words[0].text.startswith("$"):
                raise SourceError(statement.where, "keepalived parameters ($NAME=...) are not "
                                  "imported: expand them first")
            if not _KEYWORD.fullmatch(statement.words[0].text) or statement.words[0].quoted:
                raise SourceError(statement.where,
                                  f"{statement.words[0].text!r} is not keepalived syntax "
                                  "(a keyword such as global_defs, vrrp_instance, virtual_server)")
            if keyword.startswith("@"):
                self.unmapped(statement, "conditional configuration (@config-id): resolve it "
                              "for the director first")
            elif keyword == "virtual_server_group":
                if len(statement.args) != 1 or statement.block is None:
                    raise SourceError(statement.where, "virtual_server_group takes a name and "
                                      "a block")
                self.groups[statement.args[0]] = statement
            elif keyword == "virtual_server":
                servers.append(statement)
            elif keyword == "global_defs":
                self.global_defs(statement)
            elif keyword == "vrrp_instance":
                self.vrrp_instance(statement)
            elif keyword in _TOP_LEVEL:
                self.unmapped(statement, "lvsctl has no equivalent (VRRP/network setup "
                              "beyond the VIPs)")
            else:
                self.unknown(statement, "the top level")
        if not servers:
            raise SourceError(Where(str(self.path), 1),
                              "no virtual_server in the file: nothing to import")
        for statement in servers:
            self.virtual_server(statement)
        if not self.draft.services:
            refused = [f for f in self.draft.findings if f.kind == "refused"]
            first = f": {refused[0].line()}" if refused else ""
            raise SourceError(servers[0].where, f"no virtual_server could be imported "
                              f"({len(refused)} refusal(s)){first}")
        return self.draft

    def spelling(self, statements: list[Statement]) -> None:
        """keepalived matches keywords exactly; the import in any case, saying where they differ."""
        for statement in statements:
            word = statement.words[0].text
            keyword = statement.keyword
            canonical = keyword.upper() if keyword in _CHECK_TYPES else keyword
            if keyword in _KNOWN and word != canonical:
                self.report(statement.where, "note", f"{word}: keepalived knows only {canonical} "
                            "(keywords are case-sensitive) and ignores this line; imported as "
                            f"{canonical}")
            if statement.block and keyword not in ("virtual_ipaddress",
                                                   "virtual_ipaddress_excluded",
                                                   "virtual_server_group"):
                self.spelling(statement.block)

    # -- global_defs and vrrp_instance ------------------------------------------------------

    def global_defs(self, block: Statement) -> None:
        for statement in block.children():
            keyword = statement.keyword
            if keyword == "router_id":
                name = slug(_one(statement))
                self.draft.cluster = (name, statement.where)
            elif keyword == "lvs_sync_daemon":
                self.sync_daemon(statement)
            elif keyword == "lvs_timeouts":
                self.lvs_timeouts(statement)
            elif keyword in _GLOBAL_REASONS:
                self.unmapped(statement, _GLOBAL_REASONS[keyword])
            else:
                self.unmapped(statement, "a keepalived global setting with no lvsctl equivalent")

    def sync_daemon(self, statement: Statement) -> None:
        args = statement.args
        if not args:
            raise SourceError(statement.where, "lvs_sync_daemon needs an interface")
        interface, rest = args[0], args[1:]
        sync_id: int | None = None
        instance: str | None = None
        extra: list[str] = []
        i = 0
        while i < len(rest):
            word = rest[i].lower()
            if word in ("id", "maxlen", "port", "ttl", "group", "inst") and i + 1 < len(rest):
                if word == "id":
                    sync_id = _integer(statement, rest[i + 1], 0, 255)
                elif word == "inst":
                    instance = rest[i + 1]
                else:
                    extra.append(f"{rest[i]} {rest[i + 1]}")
                i += 2
            elif instance is None and i == 0:
                instance = rest[i]
                i += 1
            else:
                raise SourceError(statement.where, f"lvs_sync_daemon: unexpected {rest[i]!r}")
        if sync_id is None:
            # keepalived's default: the VRID of the instance named, else 0.
            sync_id = self.vrids.get(instance or "", 0)
        self.draft.sync = (interface, sync_id, statement.where)
        if extra:
            self.unmapped(statement, f"{', '.join(extra)}: lvsctl runs the sync daemon with the "
                          "kernel's defaults for these")

    def lvs_timeouts(self, statement: Statement) -> None:
        args = statement.args
        if not args or len(args) % 2:
            raise SourceError(statement.where, "lvs_timeouts takes pairs: tcp N tcpfin N udp N")
        timeouts = Map(flow=True)
        names = {"tcp": "tcp", "tcpfin": "tcp_fin", "udp": "udp"}
        for key, value in zip(args[::2], args[1::2], strict=True):
            if key.lower() not in names:
                raise SourceError(statement.where, f"lvs_timeouts: unknown {key!r} "
                                  "(tcp, tcpfin or udp)")
            seconds = _integer(statement, value, 0, 86400 * 31)
            if seconds == 0:
                # The kernel reads 0 as "leave this timeout as it is": so does a key left out.
                self.report(statement.where, "note", f"lvs_timeouts {key} 0 leaves the kernel's "
                            "timeout as it is: left out")
            elif seconds > schema.IPVS_TIMEOUT_MAX:
                self.report(statement.where, "refused", f"lvs_timeouts {key} {seconds}: lvsctl "
                            f"takes at most {schema.IPVS_TIMEOUT_MAX} s: left out")
            else:
                timeouts.add(names[key.lower()], _seconds(seconds))
        if not timeouts.entries:
            return
        timeouts.comment = f"{statement.where} lvs_timeouts"
        self.draft.ipvs_timeouts = timeouts
        if "ipvs_timeouts" not in self.features:
            self.unmapped(statement, "this lvsctl's cluster file has no ipvs_timeouts")

    def vrrp_instance(self, block: Statement) -> None:
        name = block.args[0] if block.args else "?"
        interface: str | None = None
        for statement in block.children():
            if statement.keyword == "interface":
                interface = _one(statement)
            elif statement.keyword == "virtual_router_id":
                self.vrids[name] = _integer(statement, _one(statement), 1, 255)
        for statement in block.children():
            keyword = statement.keyword
            if keyword in ("interface", "virtual_router_id"):
                if keyword == "virtual_router_id":
                    self.unmapped(statement, _VRRP_REASONS[keyword])
                continue
            if keyword in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
                for entry in statement.children():
                    self.vip(entry, interface, name)
            elif keyword == "lvs_sync_daemon_interface":
                self.draft.sync = (_one(statement), self.vrids.get(name, 0), statement.where)
            elif keyword in _VRRP_REASONS:
                self.unmapped(statement, _VRRP_REASONS[keyword])
            elif keyword.startswith("notify"):
                self.unmapped(statement, "notify scripts: lvsctl runs no scripts on transitions")
            else:
                self.unmapped(statement, "a VRRP setting with no lvsctl equivalent")

    def vip(self, entry: Statement, interface: str | None, instance: str) -> None:
        words = [w.text for w in entry.words]
        text = words[0]
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise SourceError(entry.where, f"{text!r} is not an address (ADDRESS[/PREFIX])") \
                from None
        device = interface
        options = words[1:]
        ignored: list[str] = []
        i = 0
        while i < len(options):
            word = options[i].lower()
            if word == "dev" and i + 1 < len(options):
                device = options[i + 1]
                i += 2
            elif word in ("brd", "broadcast", "label", "scope", "metric") and i + 1 < len(options):
                ignored.append(f"{options[i]} {options[i + 1]}")
                i += 2
            else:
                ignored.append(options[i])
                i += 1
        prefix = iface.network.prefixlen if "/" in text else None
        if prefix is not None and prefix != iface.max_prefixlen:
            # Kept only to recognise the NAT gateway; lvsctl adds every VIP as a host address.
            self.report(entry.where, "note", f"{text}: lvsctl adds the VIP as {iface.ip}/"
                        f"{iface.max_prefixlen} (no prefix route on {device or 'its interface'})")
        self.draft.vips.append(VipSource(
            str(iface.ip), entry.where, device, prefix,
            comment=f"{entry.where} vrrp_instance {instance} virtual_ipaddress"))
        if device is None:
            self.report(entry.where, "placeholder", f"{iface.ip}: no dev and no interface in "
                        f"vrrp_instance {instance}: the VIP's interface is a placeholder")
        if ignored:
            self.report(entry.where, "unmapped", f"{iface.ip}: {' '.join(ignored)}: lvsctl "
                        "adds a VIP as a host address with no further options")

    # -- virtual_server ---------------------------------------------------------------------

    def virtual_server(self, block: Statement) -> None:
        args = block.args
        if block.block is None:
            raise SourceError(block.where, "virtual_server needs a block { ... }")
        protocol = DEFAULT_PROTOCOL
        if not any(s.keyword == "protocol" for s in block.children()) and not (
                args and args[0].lower() == "fwmark"):
            self.report(block.where, "note", "no protocol: keepalived 2.2 takes UDP "
                        "(\"no protocol set - defaulting to UDP\"), and so does the import")
        for statement in block.children():
            if statement.keyword == "protocol":
                protocol = _one(statement).lower()
                if protocol not in ("tcp", "udp", "sctp"):
                    raise SourceError(statement.where, f"protocol {protocol!r}: expected TCP, "
                                      "UDP or SCTP")
        family_hint = None
        for statement in block.children():
            if statement.keyword == "ip_family":
                family_hint = "ipv6" if _one(statement).lower() == "inet6" else "ipv4"
        keys: list[tuple[str, str | None, int, int, str]] = []
        if len(args) >= 2 and args[0].lower() == "fwmark":
            mark = _integer(block, args[1], 1, 2**32 - 1)
            keys.append((f"fwmark-{mark}", None, 0, mark, family_hint or ""))
        elif len(args) == 2 and args[0].lower() == "group":
            group = self.groups.get(args[1])
            if group is None:
                raise SourceError(block.where, f"virtual_server group {args[1]}: no "
                                  "virtual_server_group of that name")
            keys = self.expand_group(group, family_hint)
        elif len(args) in (1, 2):
            address = _address(block, args[0])
            if len(args) == 1 or args[1] == "0":
                self.report(block.where, "refused", f"virtual_server {address} without a port "
                            "(a persistent any-port service): lvsctl services have a port; "
                            "left out")
                return
            port = _port(block, args[1])
            label = f"{protocol}-{address_slug(address)}-{port}"
            family = "ipv6" if ":" in address else "ipv4"
            keys.append((label, address, port, 0, family))
        else:
            raise SourceError(block.where, "virtual_server takes IP PORT, fwmark N or group NAME")
        service = self.service_body(block, protocol)
        if service is None:
            return
        for label, vip, vport, mark, family in keys:
            self.emit(block, service, label, vip, vport, mark, family, protocol)

    def expand_group(self, group: Statement,
                     family_hint: str | None) -> list[tuple[str, str | None, int, int, str]]:
        keys: list[tuple[str, str | None, int, int, str]] = []
        name = slug(group.args[0])
        for entry in group.children():
            words = entry.args
            if entry.keyword == "fwmark":
                mark = _integer(entry, words[0] if words else "", 1, 2**32 - 1)
                fam = ""
                if len(words) > 1:
                    fam = "ipv6" if words[1].lower() == "inet6" else "ipv4"
                keys.append((f"{name}-fwmark-{mark}", None, 0, mark, fam or family_hint or ""))
                continue
            text = entry.words[0].text
            if len(entry.words) > 2:
                raise SourceError(entry.where, "a virtual_server_group entry is ADDRESS[-END] "
                                  "[PORT] or fwmark N")
            port_text = entry.words[1].text if len(entry.words) == 2 else "0"
            port = _port(entry, port_text)
            for address in self.expand_range(entry, text):
                if port == 0:
                    self.report(entry.where, "refused", f"{address} without a port: lvsctl "
                                "services have a port; left out")
                    continue
                family = "ipv6" if ":" in address else "ipv4"
                keys.append((f"{name}-{address_slug(address)}-{port}", address, port, 0, family))
        return keys

    def expand_range(self, entry: Statement, text: str) -> list[str]:
        """keepalived's ranges: A.B.C.D-E, A.B.C.D-W.X.Y.Z, A.B.C.D/NN (and IPv6 likewise)."""
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                first, last = int(net.network_address), int(net.broadcast_address)
                version = net.version
            elif "-" in text:
                start_text, end_text = text.split("-", 1)
                start = ipaddress.ip_address(start_text)
                version = start.version
                if "." in end_text or ":" in end_text:
                    end = ipaddress.ip_address(end_text)
                else:  # the last byte (IPv4) or group (IPv6)
                    base = 10 if version == 4 else 16
                    step = int(end_text, base)
                    mask = 0xFF if version == 4 else 0xFFFF
                    end = ipaddress.ip_address((int(start) & ~mask) | step)
                first, last = int(start), int(end)
            else:
                return [_address(entry, text)]
        except ValueError:
            raise SourceError(entry.where, f"{text!r} is not an address or range such as "
                              "10.0.0.1-10") from None
        if last < first:
            raise SourceError(entry.where, f"{text}: the range ends before it starts")
        if last - first + 1 > MAX_RANGE:
            raise SourceError(entry.where, f"{text}: more than {MAX_RANGE} addresses")
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        return [str(make(n)) for n in range(first, last + 1)]

    def service_body(self, block: Statement, protocol: str) -> _Body | None:
        body = _Body(block)
        for statement in block.children():
            keyword = statement.keyword
            handler = _VS_HANDLERS.get(keyword)
            if handler is not None:
                handler(self, body, statement)
            elif body.timing.read(statement):
                pass
            elif keyword == "real_server":
                body.realservers.append(statement)
            elif keyword in _VS_REASONS:
                self.unmapped(statement, _VS_REASONS[keyword])
            elif keyword in ("protocol", "ip_family"):
                pass
            else:
                self.unknown(statement, "virtual_server")
        inhibits = [_inhibit_of(rs) for rs in body.realservers]
        if body.on_failure == "remove" and inhibits and all(w == "weight0" for w in inhibits):
            # Every real server inhibits: that is the service's on_failure (a key lvsctl has).
            body.on_failure = "weight0"
            body.keys["on_failure"] = ("weight0", "every real_server's inhibit_on_failure")
        if body.forwarding is None:
            body.forwarding = "nat"  # keepalived's default
            self.report(block.where, "note", "no lb_kind/lvs_method: keepalived's default, "
                        "nat, is written out")
        if body.scheduler is None:
            self.report(block.where, "note", "no lb_algo/lvs_sched: lvsctl's default wlc "
                        "(keepalived's too) is written out")
        if protocol != "udp" and body.ops:
            self.report(body.ops, "refused", "ops: one-packet scheduling is for UDP services")
            body.ops = None
        return body

    def emit(self, block: Statement, body: _Body, label: str, address: str | None, port: int,
             mark: int, family: str, protocol: str) -> None:
        rs_family = self.rs_family(body)
        svc_family = (family or rs_family) if mark else ("ipv6" if ":" in str(address) else "ipv4")
        ident: tuple[object, ...] = (svc_family, mark) if mark else (protocol, address, port)
        if ident in self.seen:
            self.report(block.where, "refused", f"the same IPVS service as {self.seen[ident]} "
                        "(keepalived would merge or fail): left out")
            return
        self.seen[ident] = block.where
        service = Map(comment=f"{block.where} {block.text}")
        service.add("name", self.service_names.take(label))
        if mark:
            service.add("fwmark", mark)
            fam = family or rs_family
            if fam == "ipv6":
                service.add("family", "ipv6")
        else:
            assert address is not None
            service.add("vip", address).add("port", port)
            if protocol != "tcp":
                service.add("protocol", protocol, body.where("protocol"))
        assert body.forwarding is not None
        service.add("forwarding", body.forwarding, body.where("forwarding"))
        service.add("scheduler", body.scheduler or "wlc", body.where("scheduler"))
        for key in ("flags", "persistence", "ops", "alpha", "quorum", "quorum_hysteresis",
                    "on_failure", "sorry_server"):
            if key in body.keys:
                value, where = body.keys[key]
                service.add(key, value, where)
        self.check_sorry(service, body, port, mark, svc_family)
        realservers = Seq()
        names = Names()
        count = 0
        taken: dict[tuple[str, int], Where] = {}
        for statement in body.realservers:
            item = self.realserver(statement, body, port, mark, names, svc_family, taken)
            if isinstance(item, Map):
                count += 1
            realservers.items.append(item)
        if count == 0:
            self.report(block.where, "refused", "no real server lvsctl can take: the service "
                        "is left out")
            return
        quorum = body.keys.get("quorum", (0, ""))[0]
        if isinstance(quorum, int) and quorum > count:
            self.report(block.where, "refused", f"quorum {body.keys['quorum'][0]} is more "
                        f"than the {count} real server(s) lvsctl takes: left to the default")
            service.remove("quorum")
        service.add("realservers", realservers)
        if address is not None:
            self.draft.service_vips.append(VipSource(address, block.where))
        if body.forwarding == "nat":
            self.draft.nat_realservers.extend(
                str(item.get("address")) for item in realservers.items if isinstance(item, Map))
        self.draft.services.append(service)

    def check_sorry(self, service: Map, body: _Body, port: int, mark: int,
                    family: str) -> None:
        """Leave out (and report) a sorry server lvsctl would refuse."""
        if "sorry_server" not in body.keys:
            return
        sorry = body.keys["sorry_server"][0]
        assert isinstance(sorry, Map)
        address, sport = str(sorry.get("address")), sorry.get("port")
        reason = None
        if ("ipv6" if ":" in address else "ipv4") != family:
            reason = f"is not an {family} address like the service's"
        elif body.forwarding in ("dr", "tun") and not mark and sport not in (None, port):
            reason = f"port {sport}: in {body.forwarding} mode it must be the service port {port}"
        elif mark and body.forwarding == "nat" and sport is None:
            reason = "needs a port behind a fwmark nat service"
        if reason is not None:
            self.report(body.sources["sorry_server"], "refused",
                        f"sorry_server {address} {reason}: left out")
            service.remove("sorry_server")

    def rs_family(self, body: _Body) -> str:
        for statement in body.realservers:
            if statement.args and ":" in statement.args[0]:
                return "ipv6"
        return "ipv4"

    # -- real_server and its checkers -------------------------------------------------------

    def realserver(self, block: Statement, body: _Body, service_port: int, mark: int,
                   names: Names, family: str,
                   taken: dict[tuple[str, int], Where]) -> Map | Commented:
        args = block.args
        if not args or len(args) > 2:
            raise SourceError(block.where, "real_server takes IP [PORT]")
        address = _address(block, args[0])
        port = _port(block, args[1]) if len(args) == 2 else service_port
        left_out = Commented((f"refused ({block.where}): {block.text}",))
        if port == 0 and not mark:
            self.report(block.where, "refused", f"real_server {address} port 0: only a fwmark "
                        "service's real servers go without a port; left out")
            return left_out
        if ("ipv6" if ":" in address else "ipv4") != family:
            self.report(block.where, "refused", f"real_server {address}: not an {family} "
                        "address like the service's (lvsctl does not mix families); left out")
            return left_out
        if (address, port) in taken:
            self.report(block.where, "refused", f"real_server {address} {port} is already "
                        f"given at {taken[(address, port)]}: left out")
            return left_out
        taken[(address, port)] = block.where
        assert body.forwarding is not None
        check_port = port
        if mark and body.forwarding in ("dr", "tun") and port != 0:
            # keepalived clears it too ("has port specified - clearing"); the checks still
            # probe the port written.
            self.report(block.where, "note", f"real_server {address} {port}: a {body.forwarding} "
                        "real server of a fwmark service has no port (keepalived clears it "
                        "too); its checks probe port {port}".replace("{port}", str(port)))
            port = 0
        elif body.forwarding in ("dr", "tun") and port != service_port:
            what = f"the service port {service_port}"
            self.report(block.where, "refused",
                        f"real_server {address} {port}: in {body.forwarding} mode the real "
                        f"server's port must be {what} (the kernel does not rewrite ports); "
                        "left out of the file")
            return Commented((f"refused ({block.where}): {block.text}",))
        if body.forwarding == "nat" and mark and port == 0:
            self.report(block.where, "refused", f"real_server {address} without a port behind "
                        "a fwmark nat service: lvsctl needs the port to forward to; left out")
            return Commented((f"refused ({block.where}): {block.text}",))
        name = names.take(f"rs-{address_slug(address)}")
        item = Map(comment=f"{block.where} {block.text}")
        item.add("name", name).add("address", address)
        if port != service_port:
            item.add("port", port)
        timing = _Timing(dict(body.timing.values))
        checks: list[tuple[Map, Where]] = []
        inhibit: tuple[str, Where] | None = None
        for statement in block.children():
            keyword = statement.keyword
            if keyword == "weight":
                item.add("weight", _integer(statement, _one(statement), 0, 65535),
                         str(statement.where))
            elif timing.read(statement):
                pass
            elif keyword == "inhibit_on_failure":
                on = not statement.args or statement.args[0].lower() in ("on", "true", "yes")
                inhibit = ("weight0" if on else "remove", statement.where)
            elif keyword in _CHECK_TYPES:
                pass
            elif keyword in ("lvs_method", "lb_kind"):
                method = _one(statement).lower()
                if method != body.forwarding:
                    self.report(statement.where, "refused", f"lvs_method {method} for one "
                                f"real server: lvsctl forwards a whole service one way "
                                f"({body.forwarding})")
            elif keyword == "virtualhost":
                timing.values["virtualhost"] = (_one(statement), statement.where)
            elif keyword == "alpha":
                self.unmapped(statement, "alpha is per service in lvsctl")
            elif keyword in _RS_REASONS:
                self.unmapped(statement, _RS_REASONS[keyword])
            else:
                self.unknown(statement, "real_server")
        if "virtualhost" not in timing.values and body.virtualhost is not None:
            timing.values["virtualhost"] = body.virtualhost
        for statement in block.children():
            if statement.keyword in _CHECK_TYPES:
                checks.extend(self.checker(statement, timing, address, port, check_port))
        if inhibit is not None and inhibit[0] != body.on_failure:
            if "realserver_on_failure" in self.features:
                item.add("on_failure", inhibit[0], f"{inhibit[1]} inhibit_on_failure")
            else:
                self.report(inhibit[1], "unmapped", "inhibit_on_failure for one real server: "
                            "this lvsctl sets on_failure per service")
        if len(checks) == 1:
            item.add("check", checks[0][0])
        elif checks:
            if "checks" in self.features:
                item.add("checks", Seq([check for check, _ in checks]))
            else:
                item.add("check", checks[0][0])
                for _, where in checks[1:]:
                    self.report(where, "unmapped", "a second check on one real server: this "
                                "lvsctl runs one check per real server (the first is kept)")
        return item

    def checker(self, block: Statement, inherited: _Timing, address: str, port: int,
                check_port: int) -> list[tuple[Map, Where]]:
        kind = _CHECK_TYPES[block.keyword]
        if kind in ("smtp", "ping") and kind not in self.features:
            self.unmapped(block, f"this lvsctl has no {kind} check")
            return []
        timing = _Timing(dict(inherited.values))
        check = Map(comment=f"{block.where} {block.words[0].text}")
        check.add("type", kind)
        extra = Map()
        urls: list[Statement] = []
        connect: dict[str, tuple[object, Where]] = {}
        hosts: list[Statement] = []
        for statement in block.children():
            keyword = statement.keyword
            if timing.read(statement):
                continue
            if keyword == "connect_ip":
                connect["address"] = (_address(statement, _one(statement)), statement.where)
            elif keyword == "connect_port":
                connect["port"] = (_integer(statement, _one(statement), 1, 65535),
                                   statement.where)
            elif keyword in ("bindto", "bind_port", "bind_if", "fwmark"):
                self.unmapped(statement, "lvsctl's checks use the director's own source address")
            elif keyword in ("alpha", "log_all_failures"):
                self.unmapped(statement, "per-check setting with no lvsctl equivalent")
            elif kind in ("http", "https") and keyword == "url":
                urls.append(statement)
            elif kind in ("http", "https") and keyword == "virtualhost":
                timing.values["virtualhost"] = (_one(statement), statement.where)
            elif kind == "https" and keyword == "enable_sni":
                timing.values["enable_sni"] = ("yes", statement.where)
            elif kind in ("http", "https") and keyword in ("http_protocol", "fast_recovery"):
                self.unmapped(statement, "lvsctl's HTTP check sends one HTTP/1.1 request")
            elif kind == "misc" and keyword == "misc_path":
                if not self.misc_path(statement, extra):
                    return []
            elif kind == "misc" and keyword == "misc_timeout":
                timing.values["connect_timeout"] = (_one(statement), statement.where)
            elif kind == "misc" and keyword == "misc_dynamic":
                extra.add("dynamic", True, str(statement.where))
            elif kind == "misc" and keyword == "user":
                self.unmapped(statement, "misc checks run as lvsctl's own user")
            elif kind == "dns" and keyword == "type":
                qtype = _one(statement).upper()
                if qtype not in ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT"):
                    raise SourceError(statement.where, f"DNS_CHECK type {qtype!r} is unknown")
                extra.add("qtype", qtype, str(statement.where))
            elif kind == "dns" and keyword == "name":
                extra.add("name", _one(statement), str(statement.where))
            elif kind == "udp" and keyword in ("payload", "require_reply"):
                if not self.udp_key(statement, extra):
                    return []
            elif kind == "udp" and keyword in ("min_reply_length", "max_reply_length"):
                self.unmapped(statement, "lvsctl's udp check compares the reply's start only")
            elif kind == "smtp" and keyword == "helo_name":
                extra.add("helo_name", _one(statement), str(statement.where))
            elif kind == "smtp" and keyword == "host":
                hosts.append(statement)
            else:
                self.unknown(statement, block.words[0].text)
        if kind == "dns":
            if extra.get("qtype") is None:
                extra.add("qtype", "SOA", "keepalived's default")
            if extra.get("name") is None:
                extra.add("name", ".", "keepalived's default")
        if kind == "udp" and extra.get("require_reply") is None:
            extra.add("require_reply", False, "keepalived's default: healthy unless ICMP says no")
        if kind == "misc" and extra.get("command") is None:
            self.report(block.where, "refused", "MISC_CHECK without misc_path: left out")
            return []
        self.timing_keys(check, timing, kind)
        for entry in extra.entries:
            check.entries.append(entry)
        if check_port != port and "port" not in connect:
            connect["port"] = (check_port, block.where)
        probe_port = connect["port"][0] if "port" in connect else port
        if probe_port == 0 and kind not in ("misc", "ping") and not hosts:
            self.report(block.where, "refused", f"{block.words[0].text}: no port to probe (the "
                        "real server has none): give connect_port; the check is left out")
            return []
        targets: list[dict[str, tuple[object, Where]]] = [connect]
        if hosts:  # SMTP_CHECK's legacy host blocks: one check each
            targets = [self.smtp_host(h) for h in hosts]
        out: list[tuple[Map, Where]] = []
        for target in targets:
            each_url: list[Statement | None] = [*urls] or [None]
            for url in each_url:
                one = Map(check.entries.copy(), comment=check.comment)
                for key, (value, where) in target.items():
                    if key == "port" and value == port:
                        continue
                    one.add(key, value, str(where))  # type: ignore[arg-type]
                if kind in ("http", "https"):
                    self.http_keys(one, url, timing, block)
                out.append((one, url.where if url is not None else block.where))
        return out

    def timing_keys(self, check: Map, timing: _Timing, kind: str) -> None:
        values = timing.values

        def where(key: str, default: str) -> str:
            return str(values[key][1]) if key in values else default

        interval = DEFAULT_DELAY_LOOP
        if "delay_loop" in values:
            interval = _number_at(values["delay_loop"], "delay_loop", 0.05, 3600)
        timeout = DEFAULT_CONNECT_TIMEOUT
        if "connect_timeout" in values:
            timeout = _number_at(values["connect_timeout"], "connect_timeout", 0.01, 600)
        elif kind == "misc":
            timeout = interval  # misc_timeout's default is delay_loop
        retry = DEFAULT_RETRY.get(kind, 1)
        if "retry" in values:
            retry = int(_number_at(values["retry"], "retry", 0, 99))
        check.add("interval", _seconds(interval), where("delay_loop", "keepalived's default"))
        if timeout >= interval:
            used = interval / 2
            at = values.get("connect_timeout", (None, Where(self.path.name, 0)))[1]
            self.report(at if at.line else Where(self.draft.source, 1), "refused",
                        f"check timeout {timeout:g}s is not shorter than delay_loop "
                        f"{interval:g}s, which lvsctl requires: timeout {used:g}s is written")
            timeout = used
        check.add("timeout", _seconds(timeout), where("connect_timeout", "keepalived's default"))
        check.add("rise", 1, "keepalived: one success brings a server back")
        check.add("fall", retry + 1, f"retry {retry} ({where('retry', 'keepalived default')}) "
                  "+ the first failure")
        if "warmup" in values:
            check.add("warmup", _seconds(_number_at(values["warmup"], "warmup", 0, 3600)),
                      str(values["warmup"][1]))
        if "delay_before_retry" in values:
            value, at = values["delay_before_retry"]
            self.report(at, "unmapped", f"delay_before_retry {value}: lvsctl probes a failing "
                        "server at the check interval")

    def http_keys(self, check: Map, url: Statement | None, timing: _Timing,
                  block: Statement) -> None:
        status: list[str] = []
        host = timing.values.get("virtualhost")
        if url is not None:
            check.comment += f"; {url.where} url"
            for statement in url.children():
                keyword = statement.keyword
                if keyword == "path":
                    path = _one(statement)
                    if not re.fullmatch(r"/\S*", path):
                        raise SourceError(statement.where, f"url path {path!r} must start "
                                          "with '/'")
                    check.add("path", path, str(statement.where))
                elif keyword == "digest":
                    digest = _one(statement).lower()
                    if not re.fullmatch(r"[0-9a-f]{32}", digest):
                        raise SourceError(statement.where, "digest must be 32 hex digits (MD5)")
                    check.add("digest", f"md5:{digest}", str(statement.where))
                elif keyword == "status_code":
                    for code in statement.args:
                        if not re.fullmatch(r"[1-5]\d\d(-[1-5]\d\d)?", code):
                            raise SourceError(statement.where, f"status_code {code!r} is not a "
                                              "code or range such as 200-299")
                        status.append(code if "-" in code else f"{code}")
                elif keyword == "virtualhost":
                    host = (_one(statement), statement.where)
                elif keyword == "regex":
                    check.add("body", _one(statement), str(statement.where))
                else:
                    self.unmapped(statement, "an url setting lvsctl's HTTP check lacks")
        if status:
            check.add("status", Seq([int(s) if s.isdigit() else s for s in status]))
        elif check.get("digest") is None:
            check.add("status", Seq(["200-299"]), "keepalived's default")
        if host is not None:
            check.add("host", host[0], str(host[1]))
        if check.get("type") == "https":
            check.add("verify", False, "SSL_GET does not verify the certificate")
            if "enable_sni" in timing.values and host is not None:
                check.add("sni", host[0], str(timing.values["enable_sni"][1]))

    def misc_path(self, statement: Statement, extra: Map) -> bool:
        command = " ".join(statement.args)
        if _SHELL_CHARS.search(command):
            self.report(statement.where, "refused", "misc_path needs a shell (it uses shell "
                        "syntax) and lvsctl runs a command without one: wrap it in a script; "
                        "the check is left out")
            return False
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise SourceError(statement.where, f"misc_path: {exc}") from None
        if not argv:
            raise SourceError(statement.where, "misc_path is empty")
        extra.add("command", Seq(list(argv)), str(statement.where))
        return True

    def udp_key(self, statement: Statement, extra: Map) -> bool:
        hex_text = " ".join(statement.args)
        if statement.keyword == "require_reply":
            extra.add("require_reply", True, str(statement.where))
            if not hex_text:
                return True
        data = _hex_bytes(statement, hex_text)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not text or not text.isprintable():
            self.report(statement.where, "refused", f"{statement.keyword}: lvsctl's udp check "
                        "sends and expects text, not these bytes; the check is left out")
            return False
        extra.add("send" if statement.keyword == "payload" else "expect", text,
                  str(statement.where))
        return True

    def smtp_host(self, host: Statement) -> dict[str, tuple[object, Where]]:
        target: dict[str, tuple[object, Where]] = {}
        for statement in host.children():
            if statement.keyword == "connect_ip":
                target["address"] = (_address(statement, _one(statement)), statement.where)
            elif statement.keyword == "connect_port":
                target["port"] = (_port(statement, _one(statement)), statement.where)
            else:
                self.unmapped(statement, "lvsctl's smtp check takes an address and port only")
        return target


def _inhibit_of(realserver: Statement) -> str | None:
    for statement in realserver.children():
        if statement.keyword == "inhibit_on_failure":
            off = statement.args and statement.args[0].lower() in ("off", "false", "no")
            return "remove" if off else "weight0"
    return None


def _hex_bytes(statement: Statement, text: str) -> bytes:
    digits = "".join(text.split())
    if not _HEX.fullmatch(text) or len(digits) % 2:
        raise SourceError(statement.where, f"{statement.keyword}: {text!r} is not hex bytes")
    return bytes.fromhex(digits)


def _number_at(value: tuple[str, Where], keyword: str, low: float, high: float) -> float:
    text, where = value
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise SourceError(where, f"{keyword}: {text!r} is not a number from {low:g} to {high:g}")
    return number


@dataclass
class _Body:
    """A virtual_server's settings, read once and shared by every service it expands to."""

    block: Statement
    forwarding: str | None = None
    scheduler: str | None = None
    keys: dict[str, tuple[Value, str]] = field(default_factory=dict)
    sources: dict[str, Where] = field(default_factory=dict)
    timing: _Timing = field(default_factory=_Timing)
    realservers: list[Statement] = field(default_factory=list)
    virtualhost: tuple[str, Where] | None = None
    on_failure: str = "remove"
    ops: Where | None = None

    def where(self, key: str) -> str:
        return str(self.sources[key]) if key in self.sources else ""


def _scheduler(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    name = _one(statement).lower()
    if name not in SCHEDULERS:
        raise SourceError(statement.where, f"{statement.keyword} {name!r}: not a scheduler the "
                          f"kernel has ({', '.join(SCHEDULERS)})")
    if statement.args[0] != name:
        run.report(statement.where, "note", f"{statement.keyword} {statement.args[0]}: keepalived "
                   "ignores this spelling (schedulers are lower case) and uses wlc; imported "
                   f"as {name}")
    body.scheduler = name
    body.sources["scheduler"] = statement.where


def _forwarding(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    if not statement.args:
        raise SourceError(statement.where, f"{statement.keyword} needs NAT, DR or TUN")
    method = statement.args[0].lower()
    if method not in _FORWARDING:
        raise SourceError(statement.where, f"{statement.keyword} {statement.args[0]!r}: "
                          "expected NAT, DR or TUN")
    if len(statement.args) > 1:
        tunnel = " ".join(statement.args[1:]).lower()
        if tunnel not in ("type ipip",):
            run.report(statement.where, "refused", f"tunnel {tunnel}: lvsctl's tun mode is "
                       "ipip; written as tun (ipip)")
    if statement.args[0] != method.upper():
        run.report(statement.where, "note", f"{statement.keyword} {statement.args[0]}: keepalived "
                   "ignores this spelling (NAT, DR, TUN) and uses NAT; imported as "
                   f"{method.upper()}")
    body.forwarding = _FORWARDING[method]
    body.sources["forwarding"] = statement.where


def _persistence_timeout(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    seconds = DEFAULT_PERSISTENCE
    if statement.args:
        seconds = _integer(statement, _one(statement), 1, 31 * 86400)
    current = body.keys.get("persistence")
    persistence = current[0] if current else Map(flow=True)
    assert isinstance(persistence, Map)
    persistence.remove("timeout")
    persistence.entries.insert(0, Entry("timeout", _seconds(seconds)))
    body.keys["persistence"] = (persistence, f"{statement.where} persistence_timeout")


def _persistence_granularity(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    value = _one(statement)
    if not re.fullmatch(r"\d+|\d+\.\d+\.\d+\.\d+", value):
        raise SourceError(statement.where, f"persistence_granularity {value!r}: a netmask such as "
                          "255.255.255.0 (or a prefix length for IPv6)")
    current = body.keys.get("persistence")
    persistence = current[0] if current else Map(flow=True)
    assert isinstance(persistence, Map)
    persistence.add("netmask", int(value) if value.isdigit() else value)
    comment = current[1] if current else ""
    note = f"{statement.where} persistence_granularity"
    body.keys["persistence"] = (persistence, f"{comment}; {note}" if comment else note)


def _flag(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    keyword = statement.keyword
    scheduler = body.scheduler or ""
    flag = _FLAGS.get(keyword) or _FLAG_N.get((keyword, scheduler))
    if flag is None:
        run.unmapped(statement, f"no lvsctl scheduler flag for {keyword} with scheduler "
                     f"{scheduler or 'wlc'}")
        return
    current = body.keys.get("flags")
    flags = current[0] if current else Seq()
    assert isinstance(flags, Seq)
    flags.items.append(flag)
    body.keys["flags"] = (flags, str(statement.where))


def _sorry(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    args = statement.args
    if not 1 <= len(args) <= 2:
        raise SourceError(statement.where, "sorry_server takes IP [PORT]")
    sorry = Map(flow=True).add("address", _address(statement, args[0]))
    if len(args) == 2:
        sorry.add("port", _integer(statement, args[1], 1, 65535))
    body.keys["sorry_server"] = (sorry, str(statement.where))
    body.sources["sorry_server"] = statement.where


def _sorry_method(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    method = _one(statement).lower()
    if method != (body.forwarding or "nat"):
        run.report(statement.where, "refused", f"sorry_server_lvs_method {method}: lvsctl "
                   "forwards to the sorry server as to the real servers")


def _quorum(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    quorum = _integer(statement, _one(statement), 0, 10000)
    weights = []
    for rs in body.block.children():
        if rs.keyword == "real_server":
            weight = next((_one(c) for c in rs.children() if c.keyword == "weight"), "1")
            weights.append(weight)
    if any(w != "1" for w in weights):
        run.report(statement.where, "refused", f"quorum {quorum} counts live weight in "
                   "keepalived and live real servers in lvsctl, and the weights differ: left "
                   "to lvsctl's default (1)")
        return
    body.keys["quorum"] = (quorum, str(statement.where))


def _hysteresis(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    value = _integer(statement, _one(statement), 0, 10000)
    if "quorum_hysteresis" not in run.features:
        run.unmapped(statement, "this lvsctl's cluster file has no quorum_hysteresis")
        return
    body.keys["quorum_hysteresis"] = (value, str(statement.where))


def _feature_flag(key: str) -> Callable[[KeepalivedImport, _Body, Statement], None]:
    def handle(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
        if statement.args and statement.args[0].lower() in ("off", "false", "no"):
            return
        if key not in run.features:
            run.unmapped(statement, f"this lvsctl's cluster file has no {key}")
            return
        if key == "ops":
            body.ops = statement.where
        body.keys[key] = (True, str(statement.where))
    return handle


def _inhibit(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    if statement.args and statement.args[0].lower() in ("off", "false", "no"):
        return
    body.on_failure = "weight0"
    body.keys["on_failure"] = ("weight0", f"{statement.where} inhibit_on_failure")


def _virtualhost(run: KeepalivedImport, body: _Body, statement: Statement) -> None:
    body.virtualhost = (_one(statement), statement.where)


_VS_HANDLERS: dict[str, Callable[[KeepalivedImport, _Body, Statement], None]] = {
    "lb_algo": _scheduler, "lvs_sched": _scheduler,
    "lb_kind": _forwarding, "lvs_method": _forwarding,
    "persistence_timeout": _persistence_timeout,
    "persistence_granularity": _persistence_granularity,
    "sh-port": _flag, "sh-fallback": _flag, "mh-port": _flag, "mh-fallback": _flag,
    "flag-1": _flag, "flag-2": _flag, "flag-3": _flag,
    "sorry_server": _sorry, "sorry_server_lvs_method": _sorry_method,
    "quorum": _quorum, "hysteresis": _hysteresis,
    "alpha": _feature_flag("alpha"), "ops": _feature_flag("ops"),
    "inhibit_on_failure": _inhibit, "virtualhost": _virtualhost,
}


_KNOWN = (_TOP_LEVEL | set(_VRRP_REASONS) | set(_GLOBAL_REASONS) | set(_VS_REASONS)
          | set(_RS_REASONS) | set(_CHECK_TYPES) | _TIMING_KEYWORDS | set(_VS_HANDLERS)
          | {"real_server", "weight", "url", "path", "digest", "status_code", "connect_ip",
             "connect_port", "protocol", "router_id", "lvs_sync_daemon", "lvs_timeouts",
             "interface", "virtual_ipaddress", "misc_path", "misc_timeout", "misc_dynamic",
             "helo_name", "payload", "require_reply"})


def _header(path: Path) -> list[str]:
    return [
        f"lvsctl cluster file imported from {path} (lvsctl config import keepalived).",
        "Each comment names the keepalived line a value came from (file:line); what did not",
        "carry over is in the import's report. '<REPLACE ME>' marks a value keepalived does",
        "not have: fill it in (lvsctl config check refuses the file until then).",
    ]


def import_keepalived(path: str | Path, options: ImportOptions | None = None,
                      features: frozenset[str] | None = None) -> ImportResult:
    """Import a keepalived.conf; the text is validated by lvsctl's loader.

    Raises SourceError (bad input: FILE:LINE: reason) or ImportInvalid.
    """
    path = Path(path)
    options = options or ImportOptions()
    features = supported_features() if features is None else features
    run = KeepalivedImport(path, options, features)
    draft = run.run()
    doc = assemble(draft, options, features)
    return finish(doc, _header(path), draft)


def draft_keepalived(path: str | Path, options: ImportOptions | None = None,
                     features: frozenset[str] | None = None) -> tuple[str, Draft]:
    """The cluster-file text without validation (for keys the loader may not know yet)."""
    path = Path(path)
    options = options or ImportOptions()
    features = supported_features() if features is None else features
    draft = KeepalivedImport(path, options, features).run()
    return render(assemble(draft, options, features), _header(path)), draft
