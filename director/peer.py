"""The peer link: an authenticated UDP heartbeat between the two directors.

Each director sends, several times a second, who it is, its election state and epoch, whether
it can reach ZooKeeper and whether it holds the VIPs. The link only ever breaks ties while
ZooKeeper is unreachable (election.py); it never makes a director active on its own.

Every datagram is ``HMAC-SHA256(secret, payload) || payload`` with a JSON payload. Replays are
rejected: each sender stamps its beats with a strictly increasing wall-clock counter; a receiver
accepts a beat only if its stamp is above the last one it accepted from that sender and within
``max_skew`` of its own wall clock (so an old capture is useless after a restart too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lvsctl.core.errors import ConfigError, ConfigIssue

MAC_LEN = 32


@dataclass(frozen=True)
class Beat:
    """One heartbeat: what a director says about itself."""

    name: str
    state: str = "CANDIDATE"
    epoch: int = 0
    zk_connected: bool = False
    holding: bool = False  # holds (or may still hold) at least one VIP
    ack_epoch: int = 0  # highest epoch it has seen the other director claim ACTIVE with
    stamp: int = 0  # strictly increasing per sender (wall-clock ns)
    vouch: bool = False  # "you cannot reach ZooKeeper, I am not active: lean on me" (a promise)

    def encode(self, secret: bytes) -> bytes:
        payload = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()
        return hmac.new(secret, payload, hashlib.sha256).digest() + payload


class Rejected(Exception):
    """A datagram that is not a valid, fresh, authentic beat; the reason is the message."""


# A beat is about 200 bytes of JSON; anything much larger is not one (checked before the HMAC).
MAX_BEAT_BYTES = 1024
_STATES = frozenset({"CANDIDATE", "ACTIVE", "STANDBY", "FENCED"})
_MAX_NAME = 64
_MAX_COUNTER = 2**63 - 1  # epochs are ZooKeeper sequence numbers, stamps wall-clock ns


def _no_float(text: str) -> Any:
    # A beat has no fractional numbers; "1e400" would otherwise become inf.
    raise ValueError(f"a number with a fraction or exponent ({text[:20]})")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


def _field_ok(key: str, value: Any) -> bool:
    if key == "name":
        return isinstance(value, str) and 0 < len(value) <= _MAX_NAME
    if key == "state":
        return isinstance(value, str) and value in _STATES
    if key in ("epoch", "ack_epoch", "stamp"):
        return type(value) is int and 0 <= value <= _MAX_COUNTER
    return isinstance(value, bool)  # zk_connected, holding, vouch


def decode(datagram: bytes, secret: bytes) -> Beat:
    """Check the size and the HMAC, then parse with every field's type checked.

    Raises Rejected ("oversized beat", "bad HMAC" or "malformed beat: <why>"): an authentic
    beat whose JSON is not a Beat (a wrong type, an unknown key, a float, a huge number,
    nesting) is refused like a forged one, never passed on half-typed.
    """
    if len(datagram) > MAC_LEN + MAX_BEAT_BYTES:
        raise Rejected(f"oversized beat: {len(datagram)} bytes")
    mac, payload = datagram[:MAC_LEN], datagram[MAC_LEN:]
    want = hmac.new(secret, payload, hashlib.sha256).digest()
    if len(mac) != MAC_LEN or not hmac.compare_digest(mac, want):
        raise Rejected("bad HMAC")
    try:
        data = json.loads(payload, parse_float=_no_float, parse_int=_bounded_int,
                          parse_constant=_no_float)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Rejected(f"malformed beat: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Rejected("malformed beat: not a JSON object")
    fields = Beat.__dataclass_fields__
    for key, value in data.items():
        if key not in fields:
            raise Rejected(f"malformed beat: unknown key {key[:32]!r}")
        if not _field_ok(key, value):
            raise Rejected(f"malformed beat: {key} is {type(value).__name__} "
                           f"{str(value)[:32]!r}")
    if "name" not in data:
        raise Rejected("malformed beat: no name")
    return Beat(**data)


@dataclass(frozen=True)
class Heard:
    """The latest accepted beat from the other director and when (monotonic) it arrived."""

    beat: Beat
    at: float


def read_secret(path: str) -> bytes:
    """The shared HMAC key. Raises ConfigError naming the file."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        issue = ConfigIssue("", f"cannot read the peer secret: {exc.strerror}")
        raise ConfigError(path, [issue]) from None
    if len(secret) < 16:
        raise ConfigError(path, [ConfigIssue("", "the peer secret must be at least 16 bytes")])
    return secret


@dataclass
class PeerLink(asyncio.DatagramProtocol):
    """Sends our beat every ``interval`` seconds and keeps the latest authentic one we heard."""

    name: str
    secret: bytes
    listen: tuple[str, int]
    peer: tuple[str, int]
    interval: float = 0.1
    dead_after: float = 0.5  # no beat for this long = the link is down
    max_skew: float = 5.0
    monotonic: Callable[[], float] = time.monotonic
    wall_ns: Callable[[], int] = time.time_ns
    on_beat: Callable[[Beat], None] | None = None
    on_send: Callable[[Beat], None] | None = None  # called just before each beat goes out
    local: Beat = field(init=False)
    heard: Heard | None = field(init=False, default=None)
    rejected: dict[str, int] = field(init=False, default_factory=dict)
    received: int = field(init=False, default=0)  # beats accepted (for the metrics)
    _last_stamp: int = field(init=False, default=0)
    _accepted_stamp: int = field(init=False, default=0)
    _transport: asyncio.DatagramTransport | None = field(init=False, default=None)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.local = Beat(self.name)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=self.listen)
        self._transport = transport
        self._task = asyncio.create_task(self._beat_forever(), name="peer-beats")

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    def advertise(self, **changes: Any) -> None:
        """Change what we say about ourselves; sent at once if it changed."""
        updated = replace(self.local, **changes)
        if updated != self.local:
            self.local = updated
            self.send()

    def send(self) -> None:
        if self._transport is None:
            return
        # Strictly increasing even if the wall clock steps back or two beats share a tick.
        self._last_stamp = max(self.wall_ns(), self._last_stamp + 1)
        beat = replace(self.local, stamp=self._last_stamp)
        if self.on_send is not None:
            self.on_send(beat)
        with contextlib.suppress(OSError):  # unreachable peer: the beats just do not arrive
            self._transport.sendto(beat.encode(self.secret), self.peer)

    async def _beat_forever(self) -> None:
        while True:
            self.send()
            await asyncio.sleep(self.interval)

    def latest(self) -> Heard | None:
        """The other director's latest beat if the link is up (heard within ``dead_after``)."""
        if self.heard is None or self.monotonic() - self.heard.at > self.dead_after:
            return None
        return self.heard

    # asyncio.DatagramProtocol
    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            beat = self.accept(data)
        except Rejected as exc:
            reason = str(exc).split(":")[0]
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return
        if self.on_beat is not None:
            self.on_beat(beat)

    def accept(self, data: bytes) -> Beat:
        """Authenticate and check freshness; records the beat. Raises Rejected."""
        beat = decode(data, self.secret)
        if beat.name == self.name:
            raise Rejected("own name: a looped-back or forged beat")
        if beat.stamp <= self._accepted_stamp:
            raise Rejected("replayed: stamp not above the last accepted one")
        if abs(beat.stamp - self.wall_ns()) > self.max_skew * 1e9:
            raise Rejected("stale: stamp too far from our clock")
        self._accepted_stamp = beat.stamp
        self.heard = Heard(beat, self.monotonic())
        self.received += 1
        return beat
