"""Load a cluster file: parse -> check shape -> resolve defaults -> validate across keys.

The result is either a frozen ``Cluster`` plus warnings, or one ``ConfigError`` listing every
problem with its key path. Nothing is repaired silently (STYLE.md 2).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lvsctl.core import schema
from lvsctl.core.errors import ConfigError, ConfigIssue
from lvsctl.core.model import (
    Announce,
    Check,
    CheckKind,
    CheckTiming,
    Cluster,
    Director,
    DnsCheck,
    Family,
    Forwarding,
    HttpCheck,
    IpvsTimeouts,
    MiscCheck,
    NotifyHook,
    OnFailure,
    PingCheck,
    Protocol,
    RealServer,
    Service,
    ServiceKey,
    ServiceSpec,
    SmtpCheck,
    SorryServer,
    TcpCheck,
    UdpCheck,
    Vip,
    ZooKeeperSettings,
)

_M = TypeVar("_M", bound=BaseModel)

NAT_SCALE_WARNING = 20  # real servers; the seed's rule of thumb for one NAT director


@dataclass(frozen=True)
class Loaded:
    """A validated cluster, the warnings found on the way, and the text it came from."""

    cluster: Cluster
    warnings: tuple[ConfigIssue, ...]
    text: str
    source: str


# A cluster file of 100,000 real servers is about 5 MB of YAML at most; a file past this bound
# is refused before it is read (a mistaken path to a log, a device, a hostile file).
MAX_FILE_BYTES = 4 << 20
# YAML aliases repeat a node without repeating its text ("billion laughs"): the document is
# judged on its size with every alias expanded, and on its depth. A real cluster file has a few
# hundred thousand nodes at most and a depth under 10.
MAX_YAML_NODES = 1_000_000
MAX_YAML_DEPTH = 32


def read_file_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """A regular file's text (UTF-8) of at most ``limit`` bytes.

    Raises ConfigError naming the file: unreadable, not a regular file (a FIFO would block the
    reader, a device would never end), larger than ``limit`` or not UTF-8.
    """
    path = Path(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError(str(path), [ConfigIssue("", message)])

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then judges what opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise refuse("is not a regular file")
    with os.fdopen(fd, "rb") as file:
        if info.st_size > limit:
            raise refuse(f"is {info.st_size} bytes, more than the limit of {limit}")
        try:
            data = file.read(limit + 1)
        except OSError as exc:
            raise refuse(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew after the fstat
        raise refuse(f"is more than the limit of {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"is not UTF-8 text (byte {exc.start})") from None


def load_cluster(path: str | Path) -> Loaded:
    """Read and validate a cluster file. Raises ConfigError naming the file on any problem."""
    path = Path(path)
    source = path.name if path.name else str(path)
    return parse_cluster(read_file_text(path), source)


def parse_cluster(text: str, source: str) -> Loaded:
    """Validate cluster-file text; ``source`` names it in messages. Raises ConfigError."""
    data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue("", "the file must be a mapping of keys")])
    try:
        raw = schema.ClusterFile.model_validate(data)
    except ValidationError as exc:
        # Report the rules that span keys too, for the parts that are well-formed, so one
        # run shows every problem of the file, not only its shape errors.
        issues = pydantic_issues(exc, data) + _salvage_issues(data)
        raise ConfigError(source, sorted_unique(issues)) from None
    resolver = _Resolver()
    cluster = resolver.cluster(raw)
    if resolver.errors or cluster is None:
        raise ConfigError(source, sorted_unique(resolver.errors))
    return Loaded(cluster, tuple(resolver.warnings), text, source)


def _path_order(issue: ConfigIssue) -> list[tuple[int, int | str]]:
    parts = re.split(r"[.\[\]]+", issue.path)
    return [(0, int(p)) if p.isascii() and p.isdigit() else (1, p) for p in parts if p]


def sorted_unique(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(dict.fromkeys(issues), key=_path_order)


def _valid_items(items: Any, model: type[_M]) -> list[tuple[int, _M]]:
    """The items of a list that validate on their own (unknown keys dropped), with their index."""
    out: list[tuple[int, _M]] = []
    if not isinstance(items, list):
        return out
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        known = {k: v for k, v in item.items() if k in model.model_fields}
        try:
            out.append((i, model.model_validate(known)))
        except ValidationError:
            continue
    return out


def _salvage_issues(data: dict[str, Any]) -> list[ConfigIssue]:
    """Cross-key errors of the well-formed directors, VIPs, services and real servers."""
    directors = [d for _, d in _valid_items(data.get("directors"), schema.DirectorFile)]
    raw_vips = data.get("vips")
    vips = _valid_items(raw_vips, schema.VipFile)
    vips_complete = isinstance(raw_vips, list) and len(vips) == len(raw_vips)
    resolver = _Resolver()
    vip_models = tuple(resolver.vip(f"vips[{i}]", v) for i, v in vips)
    director_models = tuple(resolver.director(f"directors[{i}]", d) for i, d in
                            enumerate(directors))
    services = data.get("services")
    for i, item in enumerate(services if isinstance(services, list) else []):
        if not isinstance(item, dict):
            continue
        known = {k: v for k, v in item.items() if k in schema.ServiceFile.model_fields}
        raw_rs = known.get("realservers")
        realservers = _valid_items(raw_rs, schema.RealServerFile)
        known["realservers"] = []
        try:
            service = schema.ServiceFile.model_validate(known)
        except ValidationError:
            try:  # the checks may be what is broken: judge the rest without them
                service = schema.ServiceFile.model_validate(
                    {**known, "check": None, "checks": None})
            except ValidationError:
                continue
        resolver.service(
            f"services[{i}]", service, vip_models, director_models,
            realservers=realservers,
            total=len(raw_rs) if isinstance(raw_rs, list) else 0,
            vips_complete=vips_complete,
        )
    return resolver.errors


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last), and
    a document larger than MAX_YAML_NODES with its aliases expanded or deeper than
    MAX_YAML_DEPTH, before a single value of it is constructed."""

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_yaml_bounds(node)
        return node


def _check_yaml_bounds(root: yaml.Node) -> None:
    """Raise YAMLError when the composed document expands past the bounds.

    Each node's expanded size is counted once (memoised by identity), so an alias bomb is
    measured in time linear in its text. The depth bound also ends an alias to itself.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep "
                                 f"(line {node.start_mark.line + 1})")
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key, depth + 1) + size(value, depth + 1)
        if total > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES} values once its aliases are "
                                 "expanded")
        sizes[id(node)] = total
        return total

    size(root, 0)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document, safely; a syntax error becomes a ConfigError with line and column."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(source, [ConfigIssue(where, f"invalid YAML: {problem}")]) from None
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        raise ConfigError(source, [ConfigIssue("", f"invalid YAML: {exc}")]) from None


# ---------------------------------------------------------------------------------------------
# pydantic errors -> key paths and plain sentences
# ---------------------------------------------------------------------------------------------


_KEYS: set[str] = set()
for _model in (
    schema.ClusterFile, schema.ZooKeeperFile, schema.DirectorFile, schema.PeerFile,
    schema.SyncFile, schema.VipFile, schema.ServiceFile, schema.PersistenceFile,
    schema.SorryServerFile, schema.RealServerFile, schema.AnnounceFile, schema.TcpCheckFile,
    schema.HttpCheckFile, schema.MiscCheckFile, schema.UdpCheckFile, schema.DnsCheckFile,
    schema.SmtpCheckFile, schema.PingCheckFile, schema.IpvsTimeoutsFile,
):
    _KEYS.update(_model.model_fields)


def format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _data_path(loc: tuple[str | int, ...], data: Any, last_may_be_missing: bool) -> list[str | int]:
    """Keep only the parts of a pydantic location that index the user's data.

    pydantic inserts union tags (e.g. the check type) into locations; walking the data
    drops them, so the path is exactly what the user wrote.
    """
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        indexes = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if indexes:
            path.append(part)
            node = node[part]
        elif i == len(loc) - 1 and last_may_be_missing and isinstance(part, str):
            path.append(part)
    return path


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "text",
             list: "a list", dict: "a mapping"}
    return kinds.get(type(value), type(value).__name__)


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    loc = err["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '')}; got {value!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {ctx.get('ge', ctx.get('gt'))}; got {value!r}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {ctx.get('le', ctx.get('lt'))}; got {value!r}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} item(s)"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not in the expected form ({ctx.get('pattern')})"
    if kind == "union_tag_invalid":
        return f"unknown check type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "a check needs a 'type' (tcp, http, https, misc, udp, dns, smtp or ping)"
    expected = {
        "int_type": "a whole number", "float_type": "a number", "string_type": "text",
        "bool_type": "true or false", "list_type": "a list", "dict_type": "a mapping",
        "model_type": "a mapping", "model_attributes_type": "a mapping",
    }.get(kind)
    if expected:
        return f"expected {expected}, got {_describe(value)}"
    return str(err["msg"])


def pydantic_issues(exc: ValidationError, data: Any) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen: set[str] = set()
    for err in exc.errors():
        parts = _data_path(tuple(err["loc"]), data, err["type"] == "missing")
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            parts.append("type")  # the discriminator is what is wrong or missing
        path = format_path(parts)
        if path in seen:  # one finding per key: a union's alternatives would repeat it
            continue
        seen.add(path)
        issues.append(ConfigIssue(path, _clip(_message(err))))
    return issues


# A message quotes the value it refuses; a hostile value (megabytes of one string) must not
# make a line of megabytes, here or in the director's record of a refused config.
MAX_MESSAGE_CHARS = 300


def _clip(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters)"


# ---------------------------------------------------------------------------------------------
# Resolution and the rules that span keys
# ---------------------------------------------------------------------------------------------


_CHECK_DEFAULTS: dict[str, CheckKind] = {
    "tcp": TcpCheck(),
    "http": HttpCheck(type="http"),
    "https": HttpCheck(type="https"),
    "misc": MiscCheck(),
    "udp": UdpCheck(),
    "dns": DnsCheck(),
    "smtp": SmtpCheck(),
    "ping": PingCheck(),
}
_TIMING_KEYS = ("interval", "timeout", "rise", "fall", "warmup")
_TARGET_KEYS = ("address", "port")


def _network_of(address: str, prefix: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


class _Resolver:
    """Turns a shape-checked ClusterFile into a Cluster, collecting every error and warning."""

    def __init__(self) -> None:
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigIssue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ConfigIssue(path, message))

    def cluster(self, raw: schema.ClusterFile) -> Cluster | None:
        directors = tuple(self.director(f"directors[{i}]", d) for i, d in enumerate(raw.directors))
        self.unique("directors", [d.name for d in directors], "name")
        self.unique("directors", [d.address for d in directors], "address")
        vips = tuple(self.vip(f"vips[{i}]", v) for i, v in enumerate(raw.vips))
        self.unique("vips", [v.address for v in vips], "address")
        self.vips_apart(vips, directors)
        services = tuple(
            s for i, raw_s in enumerate(raw.services)
            if (s := self.service(f"services[{i}]", raw_s, vips, directors)) is not None
        )
        if len(services) == len(raw.services):
            self.across_services(services)
        zk = raw.zookeeper
        announce = raw.announce or schema.AnnounceFile()
        timeouts = self.ipvs_timeouts("ipvs_timeouts", raw.ipvs_timeouts)
        notify = tuple(NotifyHook(h.name, tuple(h.command), frozenset(h.events or ()),
                                  h.timeout, h.queue) for h in raw.notify or ())
        self.unique("notify", [h.name for h in notify], "name")
        if self.errors:
            return None
        return Cluster(
            name=raw.cluster,
            zookeeper=ZooKeeperSettings(
                tuple(zk.hosts), zk.root, zk.session_timeout, zk.auth
            ),
            directors=(directors[0], directors[1]),
            vips=vips,
            services=services,
            announce=Announce(announce.count, announce.interval),
            ipvs_timeouts=timeouts,
            notify=notify,
        )

    def ipvs_timeouts(self, path: str, raw: schema.IpvsTimeoutsFile | None) -> IpvsTimeouts:
        """Whole seconds, as the kernel's interface takes them (``ipvsadm --set``)."""
        if raw is None:
            return IpvsTimeouts()
        values: dict[str, int] = {}
        for key in ("tcp", "tcp_fin", "udp"):
            seconds = getattr(raw, key)
            if seconds is None:
                continue
            if seconds != int(seconds):
                self.error(f"{path}.{key}", f"must be whole seconds (the kernel's unit); got "
                                            f"{seconds:g}s")
            values[key] = int(seconds)
        if not values:
            self.error(path, "give at least one of tcp, tcp_fin, udp")
        return IpvsTimeouts(**values)

    def vips_apart(self, vips: tuple[Vip, ...], directors: tuple[Director, ...]) -> None:
        """A VIP is an address of its own: the active director adds it and the standby
        removes it, so a director's own address as a VIP would be taken from that host."""
        for i, vip in enumerate(vips):
            for k, director in enumerate(directors):
                if vip.address == director.address:
                    self.error(f"vips[{i}].address",
                               f"{vip.address} is the address of directors[{k}] "
                               f"({director.name}): a VIP needs an address of its own")

    def realserver_apart(self, path: str, rs: RealServer, vips: tuple[Vip, ...],
                         directors: tuple[Director, ...]) -> None:
        """A real server is another host than the VIPs and the directors it sits behind."""
        for i, vip in enumerate(vips):
            if rs.address == vip.address:
                self.error(f"{path}.address", f"{rs.address} is the address of vips[{i}]: a "
                           "real server cannot be a VIP (the director owns it)")
        for k, director in enumerate(directors):
            if rs.address == director.address:
                self.error(f"{path}.address", f"{rs.address} is the address of directors[{k}] "
                           f"({director.name}): a real server is another host")

    def unique(self, path: str, values: list[Any], key: str) -> None:
        self.unique_at(path, list(enumerate(values)), key)

    def unique_at(self, path: str, values: list[tuple[int, Any]], key: str) -> None:
        """Each value once; ``values`` pairs each with its index in the file."""
        seen: dict[Any, int] = {}
        for i, value in values:
            if value in seen:
                self.error(f"{path}[{i}].{key}",
                           f"{value} is already used by {path}[{seen[value]}]")
            else:
                seen[value] = i

    def director(self, path: str, raw: schema.DirectorFile) -> Director:
        iface = ipaddress.ip_interface(raw.address)
        prefix = iface.network.prefixlen if "/" in raw.address else None
        sync = raw.sync or schema.SyncFile(interface=raw.interface, id=0)
        if Family.of(raw.peer.address) is not Family.of(str(iface.ip)):
            self.warn(f"{path}.peer.address", "is of another family than the director address")
        return Director(
            name=raw.name,
            address=str(iface.ip),
            prefix=prefix,
            interface=raw.interface,
            peer_address=raw.peer.address,
            peer_port=raw.peer.port,
            sync_interface=sync.interface,
            sync_id=sync.id,
        )

    def vip(self, path: str, raw: schema.VipFile) -> Vip:
        if (problem := schema.vip_problem(raw.address)) is not None:
            self.error(f"{path}.address", problem)
        if raw.network is not None and not raw.inside:
            self.error(f"{path}.network", "only an inside VIP (inside: true) has a network")
        if raw.inside:
            if raw.network is None:
                self.error(
                    f"{path}.network",
                    "an inside VIP needs the real servers' network it is the gateway of",
                )
            elif ipaddress.ip_address(raw.address) not in ipaddress.ip_network(raw.network):
                self.error(f"{path}.address", f"is not inside its network {raw.network}")
        return Vip(raw.address, raw.interface, raw.inside, raw.network)

    def service(
        self,
        path: str,
        raw: schema.ServiceFile,
        vips: tuple[Vip, ...],
        directors: tuple[Director, ...],
        realservers: list[tuple[int, schema.RealServerFile]] | None = None,
        total: int | None = None,
        vips_complete: bool = True,
    ) -> Service | None:
        """Resolve one service. ``realservers``/``total`` let a partial file be judged: the
        well-formed real servers with their index in the file, and how many the file has."""
        errors_before = len(self.errors)
        if realservers is None:
            realservers = list(enumerate(raw.realservers))
        if total is None:
            total = len(raw.realservers)
        forwarding = Forwarding.parse(raw.forwarding)
        key, vip_list = self.service_key(path, raw, vips, vips_complete)
        if key is None:
            return None
        family = key.family
        scheduler = raw.scheduler or "wlc"
        flags = frozenset(raw.flags or ())
        for flag in sorted(flags):
            owner = schema.SCHED_FLAGS[flag]
            if owner != scheduler:
                self.error(f"{path}.flags", f"{flag} needs scheduler {owner}, not {scheduler}")
        if raw.ops:
            # The kernel takes the flag on any service but only honours it for UDP; on TCP or
            # a fwmark it would be a setting that silently does nothing.
            if key.protocol is not Protocol.UDP:
                self.error(f"{path}.ops", "one-packet scheduling is only for udp services "
                                          "(protocol: udp)")
            flags |= {"ops"}
        netmask = family.host_prefix
        persistence = 0
        if raw.persistence is not None:
            persistence = round(raw.persistence.timeout)
            if raw.persistence.netmask is not None:
                netmask = raw.persistence.netmask
                if netmask > family.host_prefix:
                    self.error(
                        f"{path}.persistence.netmask",
                        f"must be at most {family.host_prefix} for an {_family_label(family)}"
                        " service",
                    )
        service_port = key.port
        if raw.check is not None and raw.checks is not None:
            self.error(f"{path}.checks", "give check (one) or checks (a list), not both")
        service_checks = _check_list(raw.check, raw.checks, path)
        on_failure = raw.on_failure or "remove"

        resolved: list[tuple[int, RealServer]] = []
        for j, raw_rs in realservers:
            rs_path = f"{path}.realservers[{j}]"
            rs = self.realserver(rs_path, raw_rs, service_checks, on_failure, family,
                                 forwarding, service_port)
            if rs is not None:
                self.realserver_apart(rs_path, rs, vips, directors)
                resolved.append((j, rs))
        if not any(_inherits(raw_rs, service_checks) for _, raw_rs in realservers):
            # No real server runs the service's checks: judge them alone, so a mistake in
            # them is reported even before a real server inherits it.
            anywhere = "0.0.0.0" if family is Family.INET else "::"
            for where, check in service_checks:
                self.check(where, _set_values(check), anywhere, service_port or 1)
        self.unique_at(f"{path}.realservers", [(j, rs.name) for j, rs in resolved], "name")
        self.unique_at(f"{path}.realservers", [(j, str(rs.key)) for j, rs in resolved],
                       "address")

        if forwarding is Forwarding.NAT:
            self.nat_rules(path, resolved, vips, family)
            if total > NAT_SCALE_WARNING:
                self.warn(
                    f"{path}.realservers",
                    f"{total} real servers in nat mode: the director carries both "
                    "directions of every connection (about 20 is the usual limit); plan for it "
                    "or use dr/tun",
                )
        elif forwarding is Forwarding.DR:
            self.dr_rules(path, resolved, directors)

        quorum = 1 if raw.quorum is None else raw.quorum
        if quorum > total:
            self.error(
                f"{path}.quorum",
                f"{quorum} is more than the service's {total} real server(s)",
            )
        hysteresis = raw.quorum_hysteresis or 0
        if hysteresis > quorum:
            self.error(f"{path}.quorum_hysteresis",
                       f"must be at most the quorum ({quorum}); got {hysteresis}")
        elif quorum <= total < quorum + hysteresis:
            self.error(f"{path}.quorum_hysteresis",
                       f"quorum {quorum} + {hysteresis} is more than the service's {total} real "
                       "server(s): once lost, quorum could never come back")
        elif hysteresis and raw.sorry_server is None:
            self.warn(f"{path}.quorum_hysteresis",
                      "has no effect without a sorry_server (quorum only decides on it)")
        sorry = None
        if raw.sorry_server is not None:
            sorry = self.sorry_server(f"{path}.sorry_server", raw.sorry_server, family,
                                      forwarding, service_port)
        if not service_checks and all(rs.check is None and rs.checks is None
                                      for _, rs in realservers):
            self.warn(f"{path}.check", "no check: every real server is always taken as healthy")
        if raw.alpha and not any(rs.checks for _, rs in resolved):
            self.warn(f"{path}.alpha", "has no effect: no real server of the service is checked")
        if len(self.errors) > errors_before:
            return None
        return Service(
            name=raw.name,
            key=key,
            spec=ServiceSpec(scheduler, flags, persistence, netmask),
            forwarding=forwarding,
            on_failure=on_failure,
            quorum=quorum,
            sorry_server=sorry,
            drain_timeout=60.0 if raw.drain_timeout is None else raw.drain_timeout,
            realservers=tuple(rs for _, rs in resolved),
            vips=vip_list,
            alpha=bool(raw.alpha),
            quorum_hysteresis=hysteresis,
        )

    def service_key(
        self, path: str, raw: schema.ServiceFile, vips: tuple[Vip, ...], vips_complete: bool
    ) -> tuple[ServiceKey | None, tuple[str, ...]]:
        declared = {v.address: v for v in vips}
        if raw.fwmark is not None:
            for key in ("vip", "port", "protocol"):
                if getattr(raw, key) is not None:
                    self.error(f"{path}.{key}", "a fwmark service has no vip, port or protocol")
            family = Family.INET6 if raw.family == "ipv6" else Family.INET
            listed = tuple(raw.vips or ())
            for k, address in enumerate(listed):
                if address not in declared and vips_complete:
                    self.error(f"{path}.vips[{k}]", f"{address} is not listed under vips")
                elif Family.of(address) is not family:
                    self.error(f"{path}.vips[{k}]", f"is not an {_family_label(family)} address")
            return ServiceKey.mark(family, raw.fwmark), listed
        for key in ("family", "vips"):
            if getattr(raw, key) is not None:
                self.error(f"{path}.{key}", "only a fwmark service takes this key")
        if raw.vip is None:
            self.error(f"{path}.vip", "a service needs a vip and port, or a fwmark")
            return None, ()
        if raw.port is None:
            self.error(f"{path}.port", "a service with a vip needs a port")
            return None, ()
        vip = declared.get(raw.vip)
        if vip is None:
            if vips_complete:
                self.error(f"{path}.vip", f"{raw.vip} is not listed under vips")
        elif vip.inside:
            self.error(f"{path}.vip", f"{raw.vip} is an inside VIP (a gateway), not a service VIP")
        protocol = Protocol.parse(raw.protocol or "tcp")
        return ServiceKey.inet(protocol, raw.vip, raw.port), (raw.vip,)

    def realserver(
        self,
        path: str,
        raw: schema.RealServerFile,
        service_checks: list[tuple[str, schema.CheckFile]],
        on_failure: OnFailure,
        family: Family,
        forwarding: Forwarding,
        service_port: int,
    ) -> RealServer | None:
        ok = True
        if Family.of(raw.address) is not family:
            self.error(f"{path}.address",
                       f"is not an {_family_label(family)} address like the service's")
            ok = False
        port = service_port if raw.port is None else raw.port
        if forwarding.keeps_port and port != service_port:
            self.error(
                f"{path}.port",
                f"must equal the service port {service_port} in {forwarding.label} mode "
                "(the kernel does not rewrite ports)",
            )
            ok = False
        if forwarding is Forwarding.NAT and port == 0:
            self.error(f"{path}.port", "a nat real server behind a fwmark service needs a port")
            ok = False
        if raw.check is not None and raw.checks is not None:
            self.error(f"{path}.checks", "give check (one) or checks (a list), not both")
        checks = self.checks(path, service_checks, raw, raw.address, port)
        if not ok:
            return None
        weight = 1 if raw.weight is None else raw.weight
        return RealServer(raw.name, raw.address, port, weight, checks,
                          raw.on_failure or on_failure)

    def checks(
        self,
        path: str,
        inherited: list[tuple[str, schema.CheckFile]],
        raw: schema.RealServerFile,
        address: str,
        port: int,
    ) -> tuple[Check, ...]:
        """The real server's resolved checks: its own list replaces the service's, except
        that its one ``check`` of the same type as the service's one check overrides only
        the keys it names (as before several checks existed)."""
        own = _check_list(raw.check, raw.checks, path)
        if not own:
            chosen = [(where, _set_values(c)) for where, c in inherited]
        elif raw.check is not None and _inherits(raw, inherited):
            chosen = [(own[0][0], {**_set_values(inherited[0][1]), **_set_values(raw.check)})]
        else:
            chosen = [(where, _set_values(c)) for where, c in own]
        out: list[Check] = []
        for where, values in chosen:
            check = self.check(where, values, address, port)
            if check in out:
                self.error(where, "is the same check as an earlier one in the list")
            out.append(check)
        return tuple(out)

    def check(self, where: str, values: dict[str, Any], address: str, port: int) -> Check:
        """Fill one check's defaults; ``where`` is its key path for errors."""
        values = dict(values)
        kind_name = values.pop("type")
        timing = replace(CheckTiming(), **{k: values.pop(k) for k in _TIMING_KEYS if k in values})
        target = {k: values.pop(k) for k in _TARGET_KEYS if k in values}
        if timing.timeout >= timing.interval:
            self.error(f"{where}.timeout",
                       f"must be shorter than the interval ({timing.interval:g}s)")
        probe_address = target.get("address", address)
        probe_port = target.get("port", port)
        if Family.of(probe_address) is not Family.of(address):
            self.error(f"{where}.address", "is of another family than the real server")
        if kind_name == "misc":
            if not values.get("command"):
                self.error(f"{where}.command", "a misc check needs a command (a list of words)")
            values["command"] = tuple(values.get("command") or ())
        elif kind_name == "ping":
            if "port" in target:
                self.error(f"{where}.port", "a ping check has no port (ICMP echo)")
            # One probe per address: the same host pinged for several services is one target.
            probe_port = 0
        elif probe_port == 0:
            self.error(f"{where}.port", f"a {kind_name} check needs a port to probe")
        if kind_name == "dns":
            if "name" not in values:
                self.error(f"{where}.name", "a dns check needs the name to query")
            values["expect"] = tuple(values.get("expect") or ())
        if kind_name in ("http", "https"):
            if "status" in values:
                values["status"] = tuple(
                    (int(low), int(high))
                    for low, high in (item.split("-") for item in values["status"])
                )
            if kind_name == "http":
                for key in ("sni", "ca_file", "verify"):
                    if key in values:
                        self.error(f"{where}.{key}", "only an https check takes this key")
        kind = replace(_CHECK_DEFAULTS[kind_name], **values)
        return Check(kind, timing, probe_address, probe_port)

    def nat_rules(
        self,
        path: str,
        realservers: list[tuple[int, RealServer]],
        vips: tuple[Vip, ...],
        family: Family,
    ) -> None:
        inside = [
            ipaddress.ip_network(v.network)
            for v in vips
            if v.inside and v.network is not None and v.family is family
        ]
        if not inside:
            self.error(
                f"{path}.forwarding",
                "nat needs an inside VIP (inside: true, with the real servers' network) that "
                "the real servers use as their default gateway",
            )
            return
        for j, rs in realservers:
            if not any(ipaddress.ip_address(rs.address) in net for net in inside):
                self.error(
                    f"{path}.realservers[{j}].address",
                    f"{rs.address} is in no inside VIP's network "
                    f"({', '.join(str(n) for n in inside)}): a nat real server must route "
                    "through the director",
                )

    def dr_rules(
        self, path: str, realservers: list[tuple[int, RealServer]], directors: tuple[Director, ...]
    ) -> None:
        networks = [d.network for d in directors if d.network is not None]
        if not networks:
            return
        for j, rs in realservers:
            if not any(ipaddress.ip_address(rs.address) in net for net in networks):
                self.warn(
                    f"{path}.realservers[{j}].address",
                    f"{rs.address} is outside the directors' networks: dr needs the real "
                    "servers on the director's L2 segment",
                )

    def sorry_server(
        self,
        path: str,
        raw: schema.SorryServerFile,
        family: Family,
        forwarding: Forwarding,
        service_port: int,
    ) -> SorryServer | None:
        port = service_port if raw.port is None else raw.port
        if Family.of(raw.address) is not family:
            self.error(f"{path}.address", f"is not an {_family_label(family)} address")
            return None
        if forwarding.keeps_port and port != service_port:
            self.error(f"{path}.port", f"must equal the service port {service_port} in "
                       f"{forwarding.label} mode")
            return None
        if port == 0:
            self.error(f"{path}.port", "a sorry server behind a fwmark service needs a port")
            return None
        return SorryServer(raw.address, port)

    def across_services(self, services: tuple[Service, ...]) -> None:
        keys: dict[ServiceKey, int] = {}
        names: dict[str, int] = {}
        addresses: dict[str, tuple[str, str]] = {}
        for i, service in enumerate(services):
            path = f"services[{i}]"
            if service.name in names:
                self.error(f"{path}.name",
                           f"{service.name} is already used by services[{names[service.name]}]")
            names.setdefault(service.name, i)
            if service.key in keys:
                what = "fwmark" if service.key.fwmark else "vip"
                self.error(f"{path}.{what}",
                           f"{service.key} is already served by services[{keys[service.key]}]")
            keys.setdefault(service.key, i)
            for j, rs in enumerate(service.realservers):
                first = addresses.setdefault(rs.name, (rs.address, f"{path}.realservers[{j}]"))
                if first[0] != rs.address:
                    self.error(
                        f"{path}.realservers[{j}].address",
                        f"real server {rs.name} is {first[0]} at {first[1]}; one name is one host",
                    )


def _check_list(
    check: schema.CheckFile | None, checks: list[schema.CheckFile] | None, path: str
) -> list[tuple[str, schema.CheckFile]]:
    """An object's checks with the key path of each: ``check`` alone, else ``checks``."""
    if check is not None:
        return [(f"{path}.check", check)]
    return [(f"{path}.checks[{k}]", c) for k, c in enumerate(checks or ())]


def _inherits(raw: schema.RealServerFile, service_checks: list[tuple[str, schema.CheckFile]]
              ) -> bool:
    """Whether a real server runs its service's checks: it names none of its own, or its one
    ``check`` is of the type of the service's single check (and is merged into it)."""
    if raw.check is None and raw.checks is None:
        return True
    return (raw.check is not None and len(service_checks) == 1
            and service_checks[0][1].type == raw.check.type)


def _set_values(model: BaseModel) -> dict[str, Any]:
    """The keys the file gave a value; an explicit null means "not given" (inherit/default)."""
    return {k: v for k in model.model_fields_set if (v := getattr(model, k)) is not None}


def _family_label(family: Family) -> str:
    return "IPv4" if family is Family.INET else "IPv6"
