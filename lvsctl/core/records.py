"""The typed records lvsctl keeps in ZooKeeper, and their one JSON encoding, with bounds.

The ZooKeeper store (lvsctl.core.zk) writes and reads these and nobody else encodes or parses
them. Decoding is tolerant of keys it does not know (another lvsctl version may add some) and
of optional keys that are missing, strict on the types of the keys it reads, and bounded in
size; data that is not a record raises RecordError, which the store's readers count as
skipped instead of failing the whole read.

    DirectorRecord     directors/<name>     what a running director publishes (its /status)
    TransitionRecord   transitions/t_<N>    one event in the pair's log (and in a status)
    Candidate          election/<..>__n_<N> who owns an election znode
    ManagedRecord      managed/<name>       the services a director manages (and retires)
    Overrides          overrides            the maintenance overrides (realserver drain)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lvsctl.core.errors import ZooKeeperError
from lvsctl.core.model import Family, Protocol, ServiceKey

# ZooKeeper refuses a znode over jute.maxbuffer (1 MiB by default); a director's status with
# thousands of real servers stays well below this. A transition is one small event.
MAX_DIRECTOR_BYTES = 1_000_000
MAX_TRANSITION_BYTES = 16_384
MAX_CANDIDATE_BYTES = 1_024
# A managed service is about 120 bytes: far more services than a pushed file can name.
MAX_MANAGED_BYTES = 1_000_000
# A transition's reason may quote a rejected config's issues: long, but never unbounded.
MAX_REASON_CHARS = 2_000


class RecordError(ZooKeeperError):
    """A znode's data is not the record it should be (or a record too large to store)."""


# -- reading JSON with types checked ----------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_REQUIRED: Any = object()


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


# Numbers are read as 64-bit values and finite: "1e400" (inf), a 4,000-digit integer or NaN
# in a znode is not a record, and never reaches float() or a date in a reader.
_INT_BOUND = 2**63
# A wall-clock time a reader can print: from 1970 to the end of year 9999.
MAX_WALL = 253_402_300_799.0


def _is_int(value: Any) -> bool:
    return type(value) is int and -_INT_BOUND <= value < _INT_BOUND


def _is_number(value: Any) -> bool:
    return _is_int(value) or (type(value) is float and math.isfinite(value))


def _is_wall(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= MAX_WALL


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


class Fields:
    """The keys of one JSON object, each read with its type checked; errors name the key.

    A key that is absent takes its default (required without one); ``null`` is accepted only
    where the reader says so.
    """

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise RecordError(f"{where}: expected an object, got {_type_name(raw)}")
        self.raw = raw
        self.where = where

    def _read(self, key: str, is_ok: Callable[[Any], bool], expected: str, default: Any,
              nullable: bool = False) -> Any:
        if key not in self.raw:
            if default is _REQUIRED:
                raise RecordError(f"{self.where}: missing {key}")
            return default
        value = self.raw[key]
        if value is None and nullable:
            return None
        if not is_ok(value):
            expected = f"{expected} or null" if nullable else expected
            raise RecordError(f"{self.where}.{key}: expected {expected}, "
                              f"got {_type_name(value)}")
        return value

    def text(self, key: str, default: str = _REQUIRED) -> str:
        return str(self._read(key, _is_str, "a string", default))

    def text_or_none(self, key: str) -> str | None:
        value = self._read(key, _is_str, "a string", None, nullable=True)
        return None if value is None else str(value)

    def integer(self, key: str, default: int = _REQUIRED) -> int:
        return int(self._read(key, _is_int, "an integer", default))

    def integer_or_none(self, key: str) -> int | None:
        value = self._read(key, _is_int, "an integer", None, nullable=True)
        return None if value is None else int(value)

    def number(self, key: str, default: float = _REQUIRED) -> float:
        return float(self._read(key, _is_number, "a number", default))

    def number_or_none(self, key: str) -> float | None:
        value = self._read(key, _is_number, "a number", None, nullable=True)
        return None if value is None else float(value)

    def wall(self, key: str) -> float:
        return float(self._read(key, _is_wall, "a time in seconds since 1970", _REQUIRED))

    def wall_or_none(self, key: str) -> float | None:
        value = self._read(key, _is_wall, "a time in seconds since 1970", None, nullable=True)
        return None if value is None else float(value)

    def boolean(self, key: str) -> bool:
        return bool(self._read(key, _is_bool, "true or false", _REQUIRED))

    def boolean_or_none(self, key: str) -> bool | None:
        value = self._read(key, _is_bool, "true or false", None, nullable=True)
        return None if value is None else bool(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._read(key, lambda v: isinstance(v, list) and all(map(_is_str, v)),
                           "a list of strings", [])
        return tuple(value)

    def objects(self, key: str) -> list[Fields]:
        value = self._read(key, lambda v: isinstance(v, list), "a list", [])
        return [Fields(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(value)]

    def object(self, key: str) -> Fields | None:
        value = self._read(key, lambda v: isinstance(v, Mapping), "an object", None,
                           nullable=True)
        return None if value is None else Fields(value, f"{self.where}.{key}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


# Deeper than any record lvsctl writes (a status is 5 levels), far below Python's recursion.
MAX_JSON_DEPTH = 32


def _depth_ok(value: Any) -> bool:
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return False
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return True


def decode_json(data: bytes, where: str, limit: int) -> Any:
    """Parse a znode's data as JSON, refusing more than ``limit`` bytes, NaN/Infinity, integers
    of more than 20 digits and nesting past MAX_JSON_DEPTH. Raises RecordError."""
    if len(data) > limit:
        raise RecordError(f"{where}: {len(data)} bytes, more than such a record may hold "
                          f"({limit})")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant,
                           parse_int=_bounded_int)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{where}: not JSON ({_clip(str(exc), 120)})") from None
    except RecursionError:
        raise RecordError(f"{where}: JSON nested too deeply") from None
    if not _depth_ok(value):
        raise RecordError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _encode_json(data: Mapping[str, Any], what: str, limit: int) -> bytes:
    """Encode a record, refusing one over ``limit`` bytes. Raises RecordError."""
    encoded = json.dumps(data, separators=(",", ":")).encode()
    if len(encoded) > limit:
        raise RecordError(f"{what}: {len(encoded)} bytes, more than such a record may hold "
                          f"({limit})")
    return encoded


# -- transitions ------------------------------------------------------------------------------


def clip_reason(reason: str) -> str:
    """``reason`` cut to MAX_REASON_CHARS, saying how much was cut."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    cut = len(reason) - MAX_REASON_CHARS
    return f"{reason[:MAX_REASON_CHARS]}... ({cut} more characters)"


@dataclass(frozen=True)
class TransitionRecord:
    """One event of a director: a leadership transition, a VIP acquired/released/announced,
    a real server's health change, a rejected config.

    ``wall`` and ``monotonic`` are the director's clocks when it happened (seconds). The
    optional fields are those the event has (``state`` for a transition, ``vip`` for a VIP
    event, ``service``/``realserver``/``healthy`` for health, ``basis`` for an acquired VIP,
    ``count`` for an announcement).
    """

    director: str
    event: str
    wall: float
    monotonic: float = 0.0
    state: str | None = None
    epoch: int | None = None
    vip: str | None = None
    reason: str = ""
    service: str | None = None
    realserver: str | None = None
    healthy: bool | None = None
    basis: str | None = None
    count: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON: the required keys, and each optional one the event has."""
        data: dict[str, Any] = {"director": self.director, "monotonic": self.monotonic,
                                "wall": self.wall, "event": self.event}
        optional = {"state": self.state, "epoch": self.epoch, "vip": self.vip,
                    "reason": self.reason or None, "service": self.service,
                    "realserver": self.realserver, "healthy": self.healthy,
                    "basis": self.basis, "count": self.count}
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    @classmethod
    def from_json(cls, raw: Any, where: str = "transition record") -> TransitionRecord:
        """Decode one record. Raises RecordError naming the key that is wrong."""
        f = Fields(raw, where)
        return cls(
            director=f.text("director"), event=f.text("event"), wall=f.wall("wall"),
            monotonic=f.number("monotonic", 0.0), state=f.text_or_none("state"),
            epoch=f.integer_or_none("epoch"), vip=f.text_or_none("vip"),
            reason=f.text_or_none("reason") or "", service=f.text_or_none("service"),
            realserver=f.text_or_none("realserver"), healthy=f.boolean_or_none("healthy"),
            basis=f.text_or_none("basis"), count=f.integer_or_none("count"),
        )

    def to_bytes(self) -> bytes:
        """The znode data; the reason is clipped to MAX_REASON_CHARS. Raises RecordError."""
        data = self.to_json()
        if self.reason:
            data["reason"] = clip_reason(self.reason)
        return _encode_json(data, f"transition record of {self.director}",
                            MAX_TRANSITION_BYTES)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> TransitionRecord:
        return cls.from_json(decode_json(data, where, MAX_TRANSITION_BYTES), where)


@dataclass(frozen=True)
class TransitionEntry:
    """A stored transition and its place in the log (the znode's sequence number)."""

    seq: int
    record: TransitionRecord


# -- director records -------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthStatus:
    """A real server's health as the director's checks last found it."""

    healthy: bool
    weight: int | None = None  # from a dynamic check; None: the configured weight
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "weight": self.weight, "reason": self.reason}


@dataclass(frozen=True)
class RealServerStatus:
    name: str
    address: str = ""  # "ADDRESS:PORT" as the model prints its key
    weight: int = 0  # the configured weight
    health: HealthStatus | None = None  # None: not checked (yet)
    override: Override | None = None  # a maintenance drain holding it at weight 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "weight": self.weight,
                "health": None if self.health is None else self.health.to_json(),
                "override": None if self.override is None else self.override.to_json()}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    service: str = ""  # the virtual service's key as the model prints it
    forwarding: str = ""
    realservers: tuple[RealServerStatus, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "service": self.service, "forwarding": self.forwarding,
                "realservers": [rs.to_json() for rs in self.realservers]}


@dataclass(frozen=True)
class ConfigState:
    """Which config a director runs (``version`` names it) and why it refused the last one."""

    version: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "error": self.error}


@dataclass(frozen=True)
class DirectorRecord:
    """What one running director publishes under ``directors/<name>``: its /status.

    ``role`` is its election state (CANDIDATE, ACTIVE, STANDBY, FENCED), ``epoch`` its
    election znode's sequence number, ``since`` when it entered that role (wall seconds),
    ``zookeeper`` "connected" or "disconnected", ``vips`` the VIPs it holds, ``api`` its HTTP
    API's HOST:PORT, ``last_reconcile`` the summary of its last IPVS pass (a JSON object the
    dataplane defines), ``transitions`` its last few records.
    """

    director: str
    cluster: str
    role: str
    epoch: int
    since: float | None = None
    zookeeper: str = ""
    vips: tuple[str, ...] = ()
    config: ConfigState = field(default_factory=ConfigState)
    services: tuple[ServiceStatus, ...] = ()
    last_reconcile: Mapping[str, Any] = field(default_factory=dict)
    api: str = ""
    transitions: tuple[TransitionRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The record as JSON: the same shape as the director's /status."""
        return {
            "director": self.director, "cluster": self.cluster, "role": self.role,
            "epoch": self.epoch, "since": self.since, "zookeeper": self.zookeeper,
            "vips": list(self.vips), "config": self.config.to_json(),
            "services": [svc.to_json() for svc in self.services],
            "last_reconcile": dict(self.last_reconcile), "api": self.api,
            "transitions": [t.to_json() for t in self.transitions],
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "director record") -> DirectorRecord:
        """Decode a record (e.g. a /status). Raises RecordError naming the key that is wrong."""
        f = Fields(raw, where)
        config = f.object("config")
        last = f.object("last_reconcile")
        return cls(
            director=f.text("director"), cluster=f.text("cluster"), role=f.text("role"),
            epoch=f.integer("epoch"), since=f.wall_or_none("since"),
            zookeeper=f.text("zookeeper", ""), vips=f.strings("vips"),
            config=ConfigState() if config is None else ConfigState(
                version=config.text_or_none("version") or "",
                error=config.text_or_none("error") or ""),
            services=tuple(_service(s) for s in f.objects("services")),
            last_reconcile={} if last is None else dict(last.raw),
            api=f.text("api", ""),
            transitions=tuple(TransitionRecord.from_json(t.raw, t.where)
                              for t in f.objects("transitions")),
        )

    def to_bytes(self) -> bytes:
        """The znode data, the config error clipped to MAX_REASON_CHARS (a rejected config's
        issues can be megabytes). Raises RecordError when larger than MAX_DIRECTOR_BYTES."""
        data = self.to_json()
        data["config"]["error"] = clip_reason(self.config.error)
        return _encode_json(data, f"director record of {self.director}", MAX_DIRECTOR_BYTES)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> DirectorRecord:
        return cls.from_json(decode_json(data, where, MAX_DIRECTOR_BYTES), where)


def _service(f: Fields) -> ServiceStatus:
    return ServiceStatus(
        name=f.text("name"), service=f.text("service", ""),
        forwarding=f.text("forwarding", ""),
        realservers=tuple(_realserver(rs) for rs in f.objects("realservers")),
    )


def _realserver(f: Fields) -> RealServerStatus:
    health = f.object("health")
    override = f.object("override")
    return RealServerStatus(
        name=f.text("name"), address=f.text("address", ""), weight=f.integer("weight", 0),
        health=None if health is None else HealthStatus(
            healthy=health.boolean("healthy"), weight=health.integer_or_none("weight"),
            reason=health.text_or_none("reason") or ""),
        override=None if override is None else Override.from_json(override.raw, override.where),
    )


# -- the election queue's data ----------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """The data of an election znode: which director it stands for."""

    director: str

    def to_bytes(self) -> bytes:
        return _encode_json({"director": self.director}, "election znode",
                            MAX_CANDIDATE_BYTES)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Candidate:
        raw = decode_json(data, where, MAX_CANDIDATE_BYTES)
        return cls(Fields(raw, where).text("director"))


# -- managed services ------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedService:
    """A virtual service a director manages: its key, its name in the last cluster file that
    had it, and that file's drain timeout (what retiring it waits for at most)."""

    key: ServiceKey
    name: str = ""
    drain_timeout: float = 60.0

    def to_json(self) -> dict[str, Any]:
        key = self.key
        return {"name": self.name, "family": "ipv6" if key.family is Family.INET6 else "ipv4",
                "protocol": None if key.protocol is None else key.protocol.label,
                "address": key.address, "port": key.port, "fwmark": key.fwmark,
                "drain_timeout": self.drain_timeout}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ManagedService:
        """Decode one entry. Raises RecordError naming the key that is wrong."""
        f = Fields(raw, where)
        family = {"ipv4": Family.INET, "ipv6": Family.INET6}.get(f.text("family"))
        if family is None:
            raise RecordError(f"{where}.family: expected ipv4 or ipv6")
        fwmark, port = f.integer("fwmark", 0), f.integer("port", 0)
        timeout = f.number("drain_timeout")
        if not 0 <= timeout <= 86_400:
            raise RecordError(f"{where}.drain_timeout: expected 0 to 86400 seconds")
        if fwmark:
            if not 0 < fwmark < 2**32:
                raise RecordError(f"{where}.fwmark: expected 1 to {2**32 - 1}")
            return cls(ServiceKey.mark(family, fwmark), f.text("name", ""), timeout)
        protocol, address = f.text("protocol"), f.text("address")
        try:
            key = ServiceKey.inet(Protocol.parse(protocol), address, port)
        except (KeyError, ValueError):
            raise RecordError(f"{where}: not a service: {protocol!r} {address!r}") from None
        if key.family is not family or not 0 <= port < 65_536:
            raise RecordError(f"{where}: not a service of family {family.name}: "
                              f"{address!r} port {port}")
        return cls(key, f.text("name", ""), timeout)


@dataclass(frozen=True)
class ManagedRecord:
    """What ``managed/<director>`` holds: every service that director put in its own IPVS
    table and has not yet deleted, so a service that leaves the cluster file is retired
    (drained, then deleted) after a restart, a failover or a rollback too. ``wall``: when it
    was written (seconds since 1970)."""

    director: str
    services: tuple[ManagedService, ...] = ()
    wall: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"director": self.director, "wall": self.wall,
                "services": [s.to_json() for s in self.services]}

    @classmethod
    def from_json(cls, raw: Any, where: str = "managed record") -> ManagedRecord:
        """Decode a record. Raises RecordError naming the key that is wrong."""
        f = Fields(raw, where)
        return cls(f.text("director"),
                   tuple(ManagedService.from_json(s.raw, s.where) for s in f.objects("services")),
                   f.wall_or_none("wall") or 0.0)

    def to_bytes(self) -> bytes:
        """The znode (or state file) data. Raises RecordError when over MAX_MANAGED_BYTES."""
        return _encode_json(self.to_json(), f"managed record of {self.director}",
                            MAX_MANAGED_BYTES)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ManagedRecord:
        return cls.from_json(decode_json(data, where, MAX_MANAGED_BYTES), where)


# -- what a reader got ------------------------------------------------------------------------


T = TypeVar("T")


@dataclass(frozen=True)
class Skipped:
    """A znode a reader passed over: its path, and why it is not a record (a line that
    names the path)."""

    znode: str
    reason: str


@dataclass(frozen=True)
class Read(Generic[T]):
    """Records read from a set of znodes, and the znodes whose data was not a record."""

    items: tuple[T, ...]
    skipped: tuple[Skipped, ...] = ()


# -- maintenance overrides ------------------------------------------------------------------

# One znode holds every override of a cluster: a few hundred bytes each, so thousands fit.
MAX_OVERRIDES_BYTES = 262_144
MAX_OVERRIDES = 1_000
# An operator's note ("kernel upgrade, ticket 1234"), not a document.
MAX_OVERRIDE_REASON = 200
MAX_OVERRIDE_WHO = 128
_OVERRIDES_FORMAT = 1


@dataclass(frozen=True)
class Override:
    """A maintenance override: ``realserver`` drained (weight 0: it keeps its connections and
    gets no new ones) in ``service``, or in every service it is in when ``service`` is None,
    until it is enabled again. ``by`` and ``at`` (wall seconds) say who set it and when."""

    realserver: str
    service: str | None = None
    reason: str = ""
    by: str = ""
    at: float = 0.0

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.realserver, self.service)

    def covers(self, service: str, realserver: str) -> bool:
        return realserver == self.realserver and self.service in (None, service)

    def to_json(self) -> dict[str, Any]:
        return {"realserver": self.realserver, "service": self.service, "state": "drain",
                "reason": self.reason, "by": self.by, "at": self.at}

    @classmethod
    def from_json(cls, raw: Any, where: str = "override") -> Override:
        """Decode one override. Raises RecordError naming the key that is wrong."""
        f = Fields(raw, where)
        if f.text("state") != "drain":
            raise RecordError(f"{where}.state: expected drain")
        made = cls(realserver=f.text("realserver"), service=f.text_or_none("service"),
                   reason=f.text("reason", ""), by=f.text("by", ""), at=f.number("at", 0.0))
        if len(made.reason) > MAX_OVERRIDE_REASON or len(made.by) > MAX_OVERRIDE_WHO:
            raise RecordError(f"{where}: reason or by longer than an override may hold")
        return made


@dataclass(frozen=True)
class Overrides:
    """Every maintenance override of a cluster: the data of its ``overrides`` znode."""

    items: tuple[Override, ...] = ()

    def find(self, service: str, realserver: str) -> Override | None:
        """The override that holds ``realserver`` drained in ``service``, if any (a
        per-service one before one for every service)."""
        hits = [o for o in self.items if o.covers(service, realserver)]
        return min(hits, key=lambda o: o.service is None) if hits else None

    def of(self, realserver: str) -> tuple[Override, ...]:
        return tuple(o for o in self.items if o.realserver == realserver)

    def with_override(self, override: Override) -> Overrides:
        """These overrides with ``override`` added (replacing one with the same key)."""
        kept = tuple(o for o in self.items if o.key != override.key)
        return Overrides((*kept, override))

    def without(self, realserver: str, service: str | None = None) -> Overrides:
        """These overrides less those of ``realserver`` (in ``service`` only, if given)."""
        return Overrides(tuple(o for o in self.items if not (
            o.realserver == realserver and (service is None or o.service == service))))

    def to_json(self) -> dict[str, Any]:
        return {"format": _OVERRIDES_FORMAT, "overrides": [o.to_json() for o in self.items]}

    def to_bytes(self) -> bytes:
        """The znode data. Raises RecordError over MAX_OVERRIDES or MAX_OVERRIDES_BYTES."""
        if len(self.items) > MAX_OVERRIDES:
            raise RecordError(f"overrides: {len(self.items)}, more than the {MAX_OVERRIDES} "
                              "a cluster may hold")
        return _encode_json(self.to_json(), "overrides", MAX_OVERRIDES_BYTES)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Overrides:
        """Decode the znode's data (empty data: no overrides). Raises RecordError."""
        if not data:
            return cls()
        raw = decode_json(data, where, MAX_OVERRIDES_BYTES)
        f = Fields(raw, where)
        if f.integer("format") != _OVERRIDES_FORMAT:
            raise RecordError(f"{where}.format: expected {_OVERRIDES_FORMAT}")
        items = f.objects("overrides")
        if len(items) > MAX_OVERRIDES:
            raise RecordError(f"{where}: {len(items)} overrides, more than {MAX_OVERRIDES}")
        return cls(tuple(Override.from_json(o.raw, o.where) for o in items))
