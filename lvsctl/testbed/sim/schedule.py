"""Schedules for the simulation: the setting (session timeouts, the ensemble, the kernel's
lateness, the peer link) and the faults, and how to draw them from any source of choices (a
seeded ``random.Random`` for long runs, hypothesis in the tests, which shrinks a failure)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

T = TypeVar("T")

DIRECTORS = ("lb1", "lb2")

# Fault kinds; ``target`` is a director's name, a server's index (as text), "active" (the
# director ACTIVE at that moment), "standby" (the other one, while one is ACTIVE) or
# "active-server" (the server the active's client is connected to).
FREEZE = "freeze"  # SIGSTOP for ``duration`` at the next ``point`` ("" = at once)
CRASH = "crash"  # kill -9 (at the next ``point``, "" = at once), restarted after ``duration``
RESTART = "restart"  # SIGTERM (graceful stop), started again ``duration`` after it exits
ZK_CUT = "zk_cut"  # the director's host cannot reach any ZooKeeper server
ISOLATE = "isolate"  # a ZooKeeper server cut off from the other servers
SERVER_CRASH = "server_crash"  # a ZooKeeper server down
ENSEMBLE_DOWN = "ensemble_down"  # every ZooKeeper server down
LAG = "lag"  # a follower applies the log ``value`` seconds late
PEER_CUT = "peer_cut"  # every peer-link datagram lost
DELETE_LEADER = "delete_leader"  # an operator deletes the lowest election znode
MOVE_VIP = "move_vip"  # the cluster file moves the first VIP to the other interface

FAULT_KINDS = (FREEZE, CRASH, RESTART, ZK_CUT, ISOLATE, SERVER_CRASH, ENSEMBLE_DOWN, LAG,
               PEER_CUT, DELETE_LEADER, MOVE_VIP)
FREEZE_POINTS = ("", "renew_before_check", "renew_before_send", "renew_after_send")


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    target: str = ""
    duration: float = 0.0
    point: str = ""
    value: float = 0.0

    def describe(self) -> str:
        what = f"{self.kind}({self.target}" + (f" @{self.point}" if self.point else "") + ")"
        extra = f" value={self.value:g}" if self.value else ""
        return f"t={self.at:.3f} {what} for {self.duration:.3f}s{extra}"


@dataclass(frozen=True)
class Schedule:
    """Everything one simulated run depends on: the same schedule runs the same way."""

    seed: int = 0
    duration: float = 30.0  # simulated seconds
    session_timeout: float = 3.0  # the node file's (requested) value
    max_session: float | None = None  # the servers' maxSessionTimeout (None: 20 ticks)
    servers: int = 3
    tick: float = 0.2
    sync_limit: int = 5
    kernel_late: float = 1.0  # the latest an expired address is removed
    late_bias: float = 0.5  # chance that an expiry is as late as it can be
    peer_loss: float = 0.0
    peer_delay: tuple[float, float] = (0.0002, 0.002)
    # The server each director's client tries first (None: drawn from the seed).
    first_server: tuple[int, ...] | None = None
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        head = (f"seed={self.seed} duration={self.duration:g}s session={self.session_timeout:g}s"
                f" max_session={self.max_session} servers={self.servers} tick={self.tick:g}"
                f" sync_limit={self.sync_limit} kernel_late={self.kernel_late:g}"
                f" late_bias={self.late_bias:g} peer_loss={self.peer_loss:g}"
                f" peer_delay={self.peer_delay} first_server={self.first_server}")
        return "\n".join([head, *("  " + f.describe() for f in self.faults)])

    def with_faults(self, *faults: Fault) -> Schedule:
        return replace(self, faults=tuple(faults))


class Chooser(Protocol):
    """A source of choices: seeded randomness or hypothesis's ``data.draw``."""

    def integer(self, lo: int, hi: int) -> int: ...

    def real(self, lo: float, hi: float) -> float: ...

    def pick(self, options: Sequence[T]) -> T: ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def real(self, lo: float, hi: float) -> float:
        return round(self.rng.uniform(lo, hi), 3)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]


def draw_fault(ch: Chooser, duration: float, kinds: Sequence[str] = FAULT_KINDS) -> Fault:
    kind = ch.pick(kinds)
    at = ch.real(2.0, duration - 4.0)
    director = ch.pick(("active", "standby", *DIRECTORS))
    if kind == FREEZE:
        return Fault(at, kind, director, ch.real(0.05, 6.0), ch.pick(FREEZE_POINTS))
    if kind == CRASH:
        return Fault(at, kind, director, ch.real(0.1, 5.0), ch.pick(FREEZE_POINTS))
    if kind == RESTART:
        return Fault(at, kind, director, ch.real(0.1, 5.0))
    if kind == ZK_CUT:
        return Fault(at, kind, director, ch.real(0.2, 8.0))
    if kind in (ISOLATE, SERVER_CRASH):
        return Fault(at, kind, ch.pick(("active-server", "0", "1", "2")), ch.real(0.2, 8.0))
    if kind == LAG:
        return Fault(at, kind, ch.pick(("active-server", "1", "2")), ch.real(0.5, 8.0),
                     value=ch.real(0.05, 2.0))
    if kind in (ENSEMBLE_DOWN, PEER_CUT):
        return Fault(at, kind, "", ch.real(0.2, 8.0))
    return Fault(at, kind, "")  # DELETE_LEADER, MOVE_VIP


def draw_schedule(ch: Chooser, *, duration: float = 30.0, max_faults: int = 6,
                  kinds: Sequence[str] = FAULT_KINDS) -> Schedule:
    """A schedule: a setting in which the directors can run, and up to ``max_faults`` faults
    of ``kinds`` (the first two seconds free of them, so that a leader is settled)."""
    session = ch.pick((3.0, 4.0, 5.0))
    clamp = ch.pick((None, None, 2.4, 3.0, 4.0))
    count = ch.integer(1, max_faults)
    faults = sorted((draw_fault(ch, duration, kinds) for _ in range(count)),
                    key=lambda f: f.at)
    return Schedule(
        seed=ch.integer(0, 2**31),
        duration=duration,
        session_timeout=session,
        max_session=clamp,
        servers=3,
        tick=0.2,
        sync_limit=ch.pick((5, 10, 20)),
        kernel_late=ch.pick((0.0, 0.5, 1.0)),
        late_bias=ch.pick((0.0, 0.5, 1.0)),
        peer_loss=ch.pick((0.0, 0.0, 0.1, 0.5)),
        peer_delay=ch.pick(((0.0002, 0.002), (0.001, 0.05), (0.01, 0.4))),
        faults=tuple(faults),
    )
