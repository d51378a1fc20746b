"""The typed channel between the keeper and its worker: bounded, length-prefixed messages over
a Unix socketpair.

Each message is a frozen dataclass with an explicit ``to_fields``/``from_fields``; on the wire
it is a 4-byte big-endian length, then a JSON object ``{"kind": NAME, ...fields}``. Decoding
checks every field's type and bounds and raises ``ChannelError``: the keeper takes nothing
from its worker that it has not checked by type and bound (the worker validated the cluster
file; the keeper re-checks only these few fields).

``Channel`` never blocks its loop: reads happen when the socket is readable, writes go to a
bounded buffer flushed when the socket is writable. A peer that stops reading (a hung or
stopped process) costs at most ``limit`` bytes: further messages are dropped and counted, and
the state snapshots sent periodically bring the reader up to date once it reads again.

Keeper -> worker: ``KeeperState`` (on change and periodically), ``LeaderRecord`` (a VIP action
or leadership transition, for the records), ``Handover`` (become sync backup now, the keeper is
stopping), ``ReloadNode`` (SIGHUP). Worker -> keeper: ``LeaderConfig`` (what leadership needs of
the validated cluster file), ``StepdownRequest``, ``HandedOver``, ``Heartbeat``, ``WorkerFatal``
(why it exits with EXIT_FATAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from lvsctl.core.errors import LvsctlError
from lvsctl.core.schema import MAX_VIPS as MAX_CLUSTER_VIPS

log = logging.getLogger("lvsctl.director.channel")

HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024  # one message; a LeaderConfig of MAX_VIPS VIPs needs about 20 KB
WRITE_LIMIT = 256 * 1024  # unsent bytes kept for a peer that does not read; more is dropped
READ_BUDGET = 64 * 1024  # read per turn of the loop at most (about 2,000 small messages)
MAX_VIPS = MAX_CLUSTER_VIPS  # as many as a cluster file may list
MAX_TEXT = 1024
MAX_PEER_REASONS = 16  # the peer link's rejection reasons are a handful of fixed words
# The kernel's rule for interface names (dev_valid_name): 1-15 bytes, no '/', ':' or space.
IFNAME = re.compile(r"[^/:\s]{1,15}")
# The worker's exit code for "do not restart me": it would fail the same way again (an insecure
# ZooKeeper root, a node file, credentials or IPVS it cannot use). The keeper then stops.
EXIT_FATAL = 78  # EX_CONFIG


class ChannelError(LvsctlError):
    """A message that is not well formed, or a stream that cannot be read any further."""


# ---------------------------------------------------------------------------------------------
# Field checks: each returns the value or raises ChannelError naming the field
# ---------------------------------------------------------------------------------------------


def _int(fields: Mapping[str, Any], key: str, low: int = 0, high: int = 2**63) -> int:
    value = fields.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ChannelError(f"{key}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _float(fields: Mapping[str, Any], key: str, low: float = 0.0, high: float = 1e12) -> float:
    value = fields.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or not low <= value <= high:
        raise ChannelError(f"{key}: expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _bool(fields: Mapping[str, Any], key: str) -> bool:
    value = fields.get(key)
    if type(value) is not bool:
        raise ChannelError(f"{key}: expected true or false, got {value!r}")
    return value


def _str(fields: Mapping[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    value = fields.get(key)
    if type(value) is not str or len(value) > limit:
        raise ChannelError(f"{key}: expected a string of at most {limit} characters")
    return value


def _address(value: Any, key: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ChannelError(f"{key}: expected an IP address, got {value!r}") from None


def _ifname(value: Any, key: str) -> str:
    if type(value) is not str or not IFNAME.fullmatch(value) or value in (".", ".."):
        raise ChannelError(f"{key}: expected an interface name, got {value!r}")
    return value


def _list(fields: Mapping[str, Any], key: str, limit: int) -> list[Any]:
    value = fields.get(key)
    if type(value) is not list or len(value) > limit:
        raise ChannelError(f"{key}: expected a list of at most {limit} items")
    return value


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


class Message(Protocol):
    KIND: ClassVar[str]

    def to_fields(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class KeeperState:
    """Keeper -> worker: where leadership stands now."""

    KIND: ClassVar[str] = "state"
    role: str
    epoch: int
    since: float  # wall clock of the last transition
    zk_connected: bool
    vips: tuple[str, ...]  # addresses held now, sorted
    have_config: bool  # the keeper was given a VIP set (LeaderConfig)
    # For the worker's metrics, sent with the periodic snapshots (not compared: a change of
    # these alone sends nothing): the keeper's monotonic instant at which the VIPs it holds
    # lapse unless a renewal is confirmed again (0: none held), and its peer link's counts.
    lease_until: float = field(default=0.0, compare=False)
    peer_up: bool = field(default=False, compare=False)
    peer_received: int = field(default=0, compare=False)
    peer_rejected: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    def to_fields(self) -> dict[str, Any]:
        return {"role": self.role, "epoch": self.epoch, "since": self.since,
                "zk_connected": self.zk_connected, "vips": list(self.vips),
                "have_config": self.have_config, "lease_until": self.lease_until,
                "peer_up": self.peer_up, "peer_received": self.peer_received,
                "peer_rejected": [list(item) for item in self.peer_rejected]}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> KeeperState:
        role, epoch, since = _str(f, "role", 16), _int(f, "epoch"), _float(f, "since")
        zk_connected = _bool(f, "zk_connected")
        vips = tuple(_address(v, "vips[]") for v in _list(f, "vips", MAX_VIPS))
        have_config = _bool(f, "have_config")
        if "lease_until" not in f:  # a keeper without the metrics fields
            return cls(role, epoch, since, zk_connected, vips, have_config)
        rejected = []
        for item in _list(f, "peer_rejected", MAX_PEER_REASONS):
            if type(item) is not list or len(item) != 2:
                raise ChannelError("peer_rejected[]: expected [reason, count]")
            rejected.append((_str({"reason": item[0]}, "reason", 64),
                             _int({"count": item[1]}, "count")))
        return cls(role, epoch, since, zk_connected, vips, have_config,
                   _float(f, "lease_until"), _bool(f, "peer_up"), _int(f, "peer_received"),
                   tuple(rejected))


@dataclass(frozen=True)
class LeaderRecord:
    """Keeper -> worker: one leadership event to log in the records (transition, VIP action)."""

    KIND: ClassVar[str] = "record"
    event: str
    epoch: int
    monotonic: float
    wall: float
    vip: str = ""
    state: str = ""
    reason: str = ""
    basis: str = ""
    count: int = 0

    def to_fields(self) -> dict[str, Any]:
        return {"event": self.event, "epoch": self.epoch, "monotonic": self.monotonic,
                "wall": self.wall, "vip": self.vip, "state": self.state, "reason": self.reason,
                "basis": self.basis, "count": self.count}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> LeaderRecord:
        return cls(_str(f, "event", 32), _int(f, "epoch"), _float(f, "monotonic"),
                   _float(f, "wall"), _str(f, "vip", 64), _str(f, "state", 16),
                   _str(f, "reason"), _str(f, "basis", 16), _int(f, "count", 0, 10_000))

    def record(self) -> dict[str, Any]:
        """The record as the director writes it (director/worker.py): empty fields left out."""
        out: dict[str, Any] = {"event": self.event, "epoch": self.epoch}
        for key in ("vip", "state", "reason", "basis"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.event == "garp_sent":
            out["count"] = self.count
        # When it happened in the keeper, not when the worker heard of it (a worker that was
        # restarting hears of it late).
        out["monotonic"] = round(self.monotonic, 6)
        out["wall"] = round(self.wall, 6)
        return out


@dataclass(frozen=True)
class Handover:
    """Keeper -> worker: the keeper is leaving; put the sync daemon in backup, then answer."""

    KIND: ClassVar[str] = "handover"
    epoch: int

    def to_fields(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> Handover:
        return cls(_int(f, "epoch"))


@dataclass(frozen=True)
class ReloadNode:
    """Keeper -> worker: the node file was re-read and accepted (SIGHUP); re-read it too."""

    KIND: ClassVar[str] = "reload"

    def to_fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> ReloadNode:
        return cls()


@dataclass(frozen=True)
class VipSpec:
    """A VIP as leadership sees it: its key, (address, interface)."""

    address: str
    interface: str


@dataclass(frozen=True)
class LeaderConfig:
    """Worker -> keeper: what leadership needs of the validated cluster file."""

    KIND: ClassVar[str] = "config"
    version: str
    vips: tuple[VipSpec, ...]
    announce_count: int
    announce_interval: float
    peer_listen: tuple[str, int]  # this director's peer-link address and port
    peer_remote: tuple[str, int]  # the other director's

    def to_fields(self) -> dict[str, Any]:
        return {"version": self.version,
                "vips": [[v.address, v.interface] for v in self.vips],
                "announce_count": self.announce_count,
                "announce_interval": self.announce_interval,
                "peer_listen": list(self.peer_listen), "peer_remote": list(self.peer_remote)}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> LeaderConfig:
        vips = []
        for item in _list(f, "vips", MAX_VIPS):
            if type(item) is not list or len(item) != 2:
                raise ChannelError("vips[]: expected [address, interface]")
            vips.append(VipSpec(_address(item[0], "vips[].address"),
                                _ifname(item[1], "vips[].interface")))
        if len({v.address for v in vips}) != len(vips):
            raise ChannelError("vips: an address appears twice")
        return cls(_str(f, "version", 256), tuple(vips), _int(f, "announce_count", 0, 100),
                   _float(f, "announce_interval", 0.0, 60.0),
                   _endpoint(f, "peer_listen"), _endpoint(f, "peer_remote"))


def _endpoint(f: Mapping[str, Any], key: str) -> tuple[str, int]:
    value = _list(f, key, 2)
    if len(value) != 2:
        raise ChannelError(f"{key}: expected [address, port]")
    port = value[1]
    if type(port) is not int or not 1 <= port <= 65535:
        raise ChannelError(f"{key}: expected a port in [1, 65535], got {port!r}")
    return _address(value[0], key), port


@dataclass(frozen=True)
class StepdownRequest:
    """Worker -> keeper: the API was asked to step down (authenticated there)."""

    KIND: ClassVar[str] = "stepdown"

    def to_fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> StepdownRequest:
        return cls()


@dataclass(frozen=True)
class HandedOver:
    """Worker -> keeper: the sync daemon is backup now (answers ``Handover``)."""

    KIND: ClassVar[str] = "handed_over"
    epoch: int

    def to_fields(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> HandedOver:
        return cls(_int(f, "epoch"))


@dataclass(frozen=True)
class Heartbeat:
    """Worker -> keeper: the worker's loop is turning."""

    KIND: ClassVar[str] = "heartbeat"
    seq: int

    def to_fields(self) -> dict[str, Any]:
        return {"seq": self.seq}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> Heartbeat:
        return cls(_int(f, "seq"))


@dataclass(frozen=True)
class WorkerFatal:
    """Worker -> keeper: why it is about to exit with EXIT_FATAL (one line)."""

    KIND: ClassVar[str] = "fatal"
    reason: str

    def to_fields(self) -> dict[str, Any]:
        return {"reason": self.reason[:MAX_TEXT]}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> WorkerFatal:
        return cls(_str(f, "reason"))


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    cls.KIND: cls.from_fields
    for cls in (KeeperState, LeaderRecord, Handover, ReloadNode, LeaderConfig, StepdownRequest,
                HandedOver, Heartbeat, WorkerFatal)
}


def encode(message: Message) -> bytes:
    """One framed message. Raises ChannelError if it exceeds MAX_MESSAGE."""
    body = json.dumps({"kind": message.KIND, **message.to_fields()},
                      separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ChannelError(f"{message.KIND}: {len(body)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    """One message from its body (the bytes after the length). Raises ChannelError."""
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ChannelError("not a JSON message") from None
    if type(fields) is not dict:
        raise ChannelError("a message must be a JSON object")
    kind = fields.pop("kind", None)
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None:
        raise ChannelError(f"unknown message kind {kind!r}")
    try:
        return decoder(fields)
    except ChannelError as exc:
        raise ChannelError(f"{kind}: {exc}") from None


@dataclass
class Splitter:
    """Cuts a byte stream into message bodies. Raises ChannelError on an oversized length."""

    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        bodies = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > MAX_MESSAGE:
                raise ChannelError(f"a message of {length} bytes exceeds {MAX_MESSAGE}")
            if len(self._buffer) < HEADER.size + length:
                break
            bodies.append(bytes(self._buffer[HEADER.size:HEADER.size + length]))
            del self._buffer[:HEADER.size + length]
        return bodies


# ---------------------------------------------------------------------------------------------
# The channel on an asyncio loop
# ---------------------------------------------------------------------------------------------


class Channel:
    """One end of the socketpair on the running loop; never blocks it.

    ``on_message`` gets each decoded message; ``on_invalid`` each message that failed its
    checks (the stream goes on); ``on_close`` is called once when the other end closed or the
    stream cannot be read any further (a framing error), after which nothing is delivered.
    """

    def __init__(self, sock: socket.socket, *, on_message: Callable[[Any], None],
                 on_close: Callable[[str], None],
                 on_invalid: Callable[[ChannelError], None] = lambda exc: None,
                 limit: int = WRITE_LIMIT, read_budget: int = READ_BUDGET) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._on_message = on_message
        self._on_close = on_close
        self._on_invalid = on_invalid
        self._limit = limit
        self._read_budget = read_budget
        self._splitter = Splitter()
        self._out = bytearray()
        self._loop = asyncio.get_running_loop()
        self._writing = False
        self.closed = False
        self.dropped = 0  # messages not sent because the peer did not read
        self._loop.add_reader(sock.fileno(), self.drain)

    def send(self, message: Message) -> bool:
        """Queue ``message``; False if it was dropped (closed, or the buffer is full)."""
        if self.closed:
            return False
        data = encode(message)
        if len(self._out) + len(data) > self._limit:
            self.dropped += 1
            return False
        self._out += data
        self._flush()
        return True

    def _flush(self) -> None:
        if self.closed:
            return
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close(f"write failed: {exc.strerror}")
                return
            del self._out[:sent]
        if self._out and not self._writing:
            self._loop.add_writer(self._sock.fileno(), self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(self._sock.fileno())
            self._writing = False

    def drain(self) -> None:
        """Read and deliver what is available now, at most ``read_budget`` bytes, without
        blocking: a peer that writes without pause cannot hold the loop here (the rest is
        read on the next turn of the loop)."""
        budget = self._read_budget
        while not self.closed and budget > 0:
            try:
                data = self._sock.recv(min(65536, budget))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._close(f"read failed: {exc.strerror}")
                return
            if not data:
                self._close("the other end closed the channel")
                return
            budget -= len(data)
            try:
                bodies = self._splitter.feed(data)
            except ChannelError as exc:
                self._close(str(exc))
                return
            for body in bodies:
                try:
                    message = decode(body)
                except ChannelError as exc:
                    self._on_invalid(exc)
                    continue
                self._on_message(message)
                if self.closed:
                    return

    def _close(self, why: str) -> None:
        if self.closed:
            return
        self.close()
        self._on_close(why)

    def close(self) -> None:
        """Stop reading and writing and close our end (the other end sees end-of-file)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError, RuntimeError):  # loop closing
            self._loop.remove_reader(self._sock.fileno())
            if self._writing:
                self._loop.remove_writer(self._sock.fileno())
        self._sock.close()

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the buffer has gone out."""
        deadline = self._loop.time() + timeout
        while self._out and not self.closed and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
