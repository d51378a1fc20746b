"""The peer link: an authenticated UDP heartbeat between the two directors.

Each director sends, several times a second, who it is, its election state and epoch, whether
it can reach ZooKeeper and whether it holds the VIPs. The link only ever breaks ties while
ZooKeeper is unreachable (election.py); it never makes a director active on its own.

Every datagram is ``HMAC-SHA256(secret, payload) || payload`` with a JSON payload.

Freshness never depends on the two wall clocks agreeing. Each beat carries ``echo``: the stamp
of the latest beat its sender accepted from us. We remember when (our monotonic clock) we sent
each of our recent beats, and a beat from the other counts as fresh from the moment **we sent
the beat it echoes** — never from when we processed it. The other said what it says after it
received that beat of ours, so a promise it made "from my send time" (election.py: a vouch)
runs from no earlier than what we count from, whatever delay or freeze came in between on
either side. A beat echoing nothing we remember (the other just started, a capture replayed
later, a restart of ours) is authentic but never fresh.

Replays: each sender stamps its beats with a strictly increasing counter (wall-clock ns, kept
increasing when the clock steps back); a receiver accepts a beat only if its stamp is above
the last one it accepted from that sender — or, when the sender restarted with its clock set
back, if the beat echoes one of our recent stamps later than any echoed before (a live
answer; logged). Replays are harmless to safety anyway: a replayed beat's echo is old.
Rejected datagrams are counted by reason and logged (at most every ``LOG_EVERY`` seconds per
reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lvsctl.core.errors import ConfigError, ConfigIssue

log = logging.getLogger("lvsctl.director.peer")

MAC_LEN = 32
SENT_KEPT = 256  # our own recent beats whose send time an echo can refer to (25 s at 10/s)
LOG_EVERY = 10.0  # seconds between log lines about rejected beats, per reason


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
    echo: int = 0  # the stamp of the latest beat this sender accepted from the other; 0: none

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
    if key in ("epoch", "ack_epoch", "stamp", "echo"):
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
    """The latest accepted beat from the other director.

    ``at``: from when it counts as fresh, on our monotonic clock — when we sent the beat of
    ours it echoes (-inf when it echoes none we remember). ``received``: when it arrived.
    """

    beat: Beat
    at: float
    received: float = -math.inf


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
    dead_after: float = 0.5  # a beat echoing one of ours sent longer ago than this is stale
    monotonic: Callable[[], float] = time.monotonic
    wall_ns: Callable[[], int] = time.time_ns
    on_beat: Callable[[Beat], None] | None = None
    # Called just before each beat goes out; it may return the beat to send instead (e.g.
    # without a promise it could not keep).
    on_send: Callable[[Beat], Beat | None] | None = None
    local: Beat = field(init=False)
    heard: Heard | None = field(init=False, default=None)
    rejected: dict[str, int] = field(init=False, default_factory=dict)
    clock_steps: int = field(init=False, default=0)  # beats accepted despite a lower stamp
    received: int = field(init=False, default=0)  # beats accepted (for the metrics)
    _last_stamp: int = field(init=False, default=0)
    _accepted_stamp: int = field(init=False, default=0)
    _accepted_echo: int = field(init=False, default=0)
    _sent: OrderedDict[int, float] = field(init=False, default_factory=OrderedDict)
    _logged_at: dict[str, float] = field(init=False, default_factory=dict)
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
            self._transport = None  # a later advertise() sends nothing

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
        echo = self.heard.beat.stamp if self.heard is not None else 0
        beat = replace(self.local, stamp=self._last_stamp, echo=echo)
        if self.on_send is not None:
            beat = self.on_send(beat) or beat
        # Recorded before the send: an echo of it counts from no later than it went out.
        self._sent[beat.stamp] = self.monotonic()
        while len(self._sent) > SENT_KEPT:
            self._sent.popitem(last=False)
        with contextlib.suppress(OSError):  # unreachable peer: the beats just do not arrive
            self._transport.sendto(beat.encode(self.secret), self.peer)

    async def _beat_forever(self) -> None:
        while True:
            self.send()
            await asyncio.sleep(self.interval)

    def latest(self) -> Heard | None:
        """The other director's latest beat if it is fresh: it echoes a beat we sent within
        ``dead_after`` (see the module docstring)."""
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
            self._log_rejected(reason, str(exc))
            return
        if self.on_beat is not None:
            self.on_beat(beat)

    def _log_rejected(self, reason: str, detail: str) -> None:
        now = self.monotonic()
        if now - self._logged_at.get(reason, -math.inf) < LOG_EVERY:
            return
        self._logged_at[reason] = now
        count = self.rejected.get(reason, 0)
        log.warning("peer beat rejected: %s (%d so far)", detail, count,
                    extra={"event": "peer_rejected", "reason": reason, "count": count})

    def accept(self, data: bytes) -> Beat:
        """Authenticate and check for replays; records the beat with the send time of the
        beat of ours it echoes. Raises Rejected."""
        beat = decode(data, self.secret)
        if beat.name == self.name:
            raise Rejected("own name: a looped-back or forged beat")
        sent_at = self._sent.get(beat.echo) if beat.echo else None
        if beat.stamp <= self._accepted_stamp:
            if sent_at is None or beat.echo <= self._accepted_echo:
                raise Rejected("replayed: stamp not above the last accepted one")
            self.clock_steps += 1
            if self.monotonic() - self._logged_at.get("stamp went back", -math.inf) >= LOG_EVERY:
                self._logged_at["stamp went back"] = self.monotonic()
                log.warning("beats from %s have stamps below the last accepted one (its wall "
                            "clock went back across a restart): accepted on a live echo",
                            beat.name, extra={"event": "peer_clock_stepped"})
        self._accepted_stamp = beat.stamp
        self._accepted_echo = max(self._accepted_echo, beat.echo)
        now = self.monotonic()
        self.heard = Heard(beat, sent_at if sent_at is not None else -math.inf, now)
        self.received += 1
        return beat
