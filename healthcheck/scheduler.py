"""The probe scheduler: one asyncio loop, one probe per (address, port, check spec), fanned out.

Many services often share real servers; keepalived then runs the same check once per virtual
service. Here every distinct resolved ``Check`` (kind, timing, probe address and port) is one
*target*, probed by one task, and its state is copied to every ``HealthKey`` (service, real
server) that uses it. A real server with several checks is healthy only while every one of its
targets is up (``combine``); each target keeps its own rise/fall state. Probes run on a fixed
grid (``interval``) with a small jitter that does not accumulate, first probes spread over
``warmup``, and at most ``concurrency`` at once.

The probes' own work must never flood the loop: how many may run at once follows the loop's
lag (``next_limit``), so an overloaded checker runs fewer probes on time rather than all of
them late. A probe waiting for a slot has not started; its timeout runs from when it gets one.

A checker that falls behind must not blame the real servers: a probe that timed out much later
than its timeout (its timer fired late because the loop was overloaded or the process was not
scheduled) is *inconclusive* and leaves the state as it was — up to ``2 x fall`` times in a
row, after which it counts as a failure so that a real outage is still detected. (keepalived
marks servers down when its checker thread stalls.) ``watchdog()`` counts inconclusive probes.

The director's daemon uses ``Scheduler`` on its own loop:

    scheduler = Scheduler(cluster, checkers, on_change=reconciler_wakeup)
    await scheduler.start()
    scheduler.replace(new_cluster)       # config change: unchanged targets keep their state
    scheduler.snapshot()                 # Mapping[HealthKey, Health], decided keys only
    async for change in scheduler.changes(): ...
    scheduler.watchdog()                 # loop lag, last completed round per target
    await scheduler.stop()
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import random
import statistics
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lvsctl.core.model import Check, CheckTiming, Cluster, Health, HealthKey, join_host_port
from lvsctl.healthcheck.checkers import Checker
from lvsctl.healthcheck.hysteresis import State, Status, next_state
from lvsctl.healthcheck.result import CheckResult

log = logging.getLogger(__name__)

# A real server with several checks: its combined health reason is cut at this length.
MAX_REASON = 480
# A real server without a check is always healthy (the config loader warns about it).
UNCHECKED = Health(True, None, "no check")
# How long past its own timeout a checker may run before the scheduler gives up on it.
GRACE = 0.5
# A timed-out probe that ends later than timeout + this (or 10 % of the timeout, if more) was
# cut off late by our own loop: the result says nothing about the real server.
LATE = 0.05
# Jitter around the grid: this fraction of the interval, at most MAX_JITTER seconds.
JITTER = 0.01
MAX_JITTER = 0.01
# Adaptive concurrency: a lag sample above LAG_HIGH halves the number of probes allowed at
# once; a sample below it, while probes wait for a slot, grows it by a quarter. Never below
# MIN_SLOTS (nor above the scheduler's ``concurrency``), which is also where it starts.
LAG_HIGH = 0.01
MIN_SLOTS = 16


class Clock(Protocol):
    """The scheduler's time source; tests inject their own."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class HealthChange:
    """A HealthKey's health changed (healthy or weight); ``previous`` is None for a new key."""

    key: HealthKey
    health: Health
    previous: Health | None
    at: float


@dataclass(frozen=True)
class TargetView:
    """One target as an operator or exporter sees it."""

    check: Check
    keys: tuple[HealthKey, ...]
    state: State
    last: CheckResult | None
    last_round: float | None  # monotonic time the last probe completed
    rounds: int
    inconclusive: int = 0  # probes so far whose timeout fired late (not applied)

    @property
    def label(self) -> str:
        return target_label(self.check)


@dataclass(frozen=True)
class Watchdog:
    """Figures that show whether the checker keeps up (the director exports them)."""

    loop_lag: float  # the latest measured event-loop lag, seconds
    loop_lag_p50: float
    loop_lag_p99: float
    loop_lag_max: float
    targets: int
    running: int  # probes in flight
    oldest_round_age: float  # the longest time since any target last completed a probe
    stalled: tuple[str, ...]  # targets with no completed probe for 2 x interval + timeout
    inconclusive: int  # probes whose timeout fired late, so not held against the server
    last_round: Mapping[str, float]  # target label -> monotonic time of its last completed probe
    limit: int = 0  # probes allowed at once now (follows the loop lag, up to concurrency)
    waiting: int = 0  # probes due but waiting for a slot: the checker is at its limit
    rounds: int = 0  # probes completed so far, all targets together


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def late(result: CheckResult, timing: CheckTiming) -> bool:
    """Pure: did this probe time out well after its timeout (our loop, not the server, was
    late)?"""
    return result.timed_out and result.latency > timing.timeout + max(LATE, 0.1 * timing.timeout)


def settle(
    state: State, late_streak: int, result: CheckResult, timing: CheckTiming, now: float
) -> tuple[State, int]:
    """Pure: (state, late streak) after ``result``. A late timeout is inconclusive (state kept,
    streak + 1) until ``2 x fall`` of them in a row; then it counts like any failure."""
    if late(result, timing) and late_streak < 2 * timing.fall:
        return state, late_streak + 1
    return next_state(state, result, timing, now), 0


def next_limit(limit: int, lag: float, waiting: int, ceiling: int) -> int:
    """Pure: the number of probes allowed at once after one loop-lag sample.

        lag > LAG_HIGH   waiting   next limit
        --------------   -------   ----------------------------------------------
        yes              any       limit // 2, not below min(MIN_SLOTS, ceiling)
        no               yes       limit + limit // 4 (at least + 1), up to ceiling
        no               no        limit (nothing asks for more)
    """
    if lag > LAG_HIGH:
        return max(min(MIN_SLOTS, ceiling), limit // 2)
    if waiting:
        return min(ceiling, limit + max(1, limit // 4))
    return limit


def _freeze_loaded() -> None:
    """Move every object alive now out of the garbage collector's reach.

    The model, its targets and every imported module live as long as the process; without
    this each full collection (which the probes' churn triggers every few seconds) walks them
    all again while the loop waits: 80 ms pauses at 2,000 targets. Frozen objects are still
    freed by reference counting when dropped; only a reference cycle among them would stay.
    """
    gc.freeze()


def target_label(check: Check) -> str:
    """How a target is named in tables and watchdog figures: "http 10.0.1.31:80 /healthz",
    "ping 10.0.1.31" (a ping has no port)."""
    if check.type == "ping":
        return f"ping {check.address}"
    label = f"{check.type} {join_host_port(check.address, check.port)}"
    path = getattr(check.kind, "path", None)
    return f"{label} {path}" if path is not None else label


def plan_targets(
    cluster: Cluster, services: Iterable[str] | None = None
) -> tuple[dict[Check, tuple[HealthKey, ...]], tuple[HealthKey, ...]]:
    """Pure: the distinct targets of ``cluster`` and the keys each serves, plus unchecked keys.

    ``services`` limits the plan to those service names (all when None).
    """
    wanted = None if services is None else set(services)
    targets: dict[Check, list[HealthKey]] = {}
    unchecked: list[HealthKey] = []
    for service in cluster.services:
        if wanted is not None and service.name not in wanted:
            continue
        for rs in service.realservers:
            key = (service.name, rs.name)
            if not rs.checks:
                unchecked.append(key)
            for check in rs.checks:
                targets.setdefault(check, []).append(key)
    return {check: tuple(keys) for check, keys in targets.items()}, tuple(unchecked)


def plan_multi(
    cluster: Cluster, services: Iterable[str] | None = None
) -> dict[HealthKey, tuple[Check, ...]]:
    """Pure: the keys with more than one check, and their checks in file order."""
    wanted = None if services is None else set(services)
    return {
        (service.name, rs.name): rs.checks
        for service in cluster.services if wanted is None or service.name in wanted
        for rs in service.realservers if len(rs.checks) > 1
    }


def combine(parts: Iterable[tuple[str, State]]) -> Health | None:
    """Pure: one real server's health from the states of all its checks (label, state).

        any check DOWN                 -> unhealthy; the reason names every check that is down
        else any check not decided     -> None (undecided, like a single check's first wait)
        every check UP                 -> healthy; the lowest dynamic weight among them, if any
    """
    down: list[str] = []
    up: list[str] = []
    weights: list[int] = []
    undecided = False
    for label, state in parts:
        if state.status is Status.DOWN:
            down.append(f"{label}: {state.reason}")
        elif state.status is Status.UNKNOWN:
            undecided = True
        else:
            up.append(f"{label}: {state.reason}")
            if state.weight is not None:
                weights.append(state.weight)
    if down:
        return Health(False, None, _bounded("; ".join(down)))
    if undecided:
        return None
    return Health(True, min(weights) if weights else None, _bounded("; ".join(up)))


def _bounded(reason: str) -> str:
    # Each check's reason is short already; sixteen of them joined are not.
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."


@dataclass
class _Target:
    check: Check
    keys: tuple[HealthKey, ...]
    state: State = field(default_factory=State)
    last: CheckResult | None = None
    last_round: float | None = None
    rounds: int = 0
    inconclusive: int = 0  # in all
    late_streak: int = 0  # inconclusive in a row
    task: asyncio.Task[None] | None = None
    label: str = ""  # target_label(check), made once: the watchdog walks every target

    def __post_init__(self) -> None:
        self.label = target_label(self.check)


class LagMonitor:
    """Measures event-loop lag: how late a timer that should fire every ``period`` fires.

    ``on_sample`` is called with each sample as it is taken.
    """

    def __init__(self, period: float = 0.1, window: int = 600,
                 on_sample: Callable[[float], None] | None = None) -> None:
        self.period = period
        self.samples: deque[float] = deque(maxlen=window)
        self.latest = 0.0
        self._on_sample = on_sample

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.period)
            self.latest = max(0.0, loop.time() - start - self.period)
            self.samples.append(self.latest)
            if self._on_sample is not None:
                self._on_sample(self.latest)

    def figures(self) -> tuple[float, float, float]:
        """(p50, p99, max) over the window; zeros before the first sample."""
        if not self.samples:
            return 0.0, 0.0, 0.0
        ordered = sorted(self.samples)
        return statistics.median(ordered), percentile(ordered, 0.99), ordered[-1]


class Slots:
    """At most ``limit`` probes at once, granted in the order they asked; the limit may change
    at any time (``set_limit``), between 1 and ``ceiling``."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = min(MIN_SLOTS, self.ceiling)
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self.release()  # granted just as it was cancelled: hand the slot on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.running -= 1
        self._grant()

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, min(self.ceiling, limit))
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.running < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter leaves the queue when its task runs
                self.running += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Scheduler:
    """Runs every target's probes on the current loop and keeps the health of every key."""

    def __init__(
        self,
        cluster: Cluster,
        checker: Checker,
        *,
        services: Iterable[str] | None = None,
        concurrency: int = 4096,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[HealthChange], None] | None = None,
    ) -> None:
        self._checker = checker
        self._services = None if services is None else tuple(services)
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._slots = Slots(concurrency)
        self._targets: dict[Check, _Target] = {}
        # Keys with several checks (usually none): their health combines their targets'.
        self._multi: dict[HealthKey, tuple[Check, ...]] = {}
        self._unchecked: tuple[HealthKey, ...] = ()
        self._health: dict[HealthKey, Health] = {}
        self._subscribers: list[asyncio.Queue[HealthChange]] = []
        self._lag = LagMonitor(on_sample=self._adapt)
        self._lag_task: asyncio.Task[None] | None = None
        self._started = False
        self._started_at = 0.0
        self._cluster = cluster
        # Sees every probe's result (target label, result, whether it was inconclusive): the
        # director's metrics count them. Called on the loop; must not block.
        self.on_result: Callable[[str, CheckResult, bool], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start probing; first probes are spread over each check's warmup."""
        if self._started:
            return
        self._started = True
        self._started_at = self._clock.monotonic()
        self._lag_task = asyncio.create_task(self._lag.run(), name="healthcheck-lag")
        self._apply_plan(self._cluster)
        _freeze_loaded()

    async def stop(self) -> None:
        """Cancel every probe and wait until they are gone (misc children are killed)."""
        tasks = [t.task for t in self._targets.values() if t.task is not None]
        if self._lag_task is not None:
            tasks.append(self._lag_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def replace(self, cluster: Cluster) -> None:
        """Switch to a new cluster: targets whose check spec is unchanged keep their state and
        their schedule; gone targets stop; new targets start (spread over their warmup)."""
        self._cluster = cluster
        if self._started:
            self._apply_plan(cluster)
            _freeze_loaded()

    # -- what others read -----------------------------------------------------------------

    def snapshot(self) -> Mapping[HealthKey, Health]:
        """The health of every key whose checks have decided (and every unchecked key)."""
        return dict(self._health)

    def targets(self) -> list[TargetView]:
        return [
            TargetView(t.check, t.keys, t.state, t.last, t.last_round, t.rounds, t.inconclusive)
            for t in self._targets.values()
        ]

    def changes(self) -> AsyncIterator[HealthChange]:
        """Every health change from this call on, in order, for as long as the caller iterates.

        The subscription starts at the call (not at the first ``__anext__``), so a caller can
        subscribe before ``start()`` and miss nothing; closing the iterator ends it.
        """
        queue: asyncio.Queue[HealthChange] = asyncio.Queue()
        self._subscribers.append(queue)

        async def stream() -> AsyncIterator[HealthChange]:
            try:
                while True:
                    yield await queue.get()
            finally:
                self._subscribers.remove(queue)

        return stream()

    def watchdog(self) -> Watchdog:
        now = self._clock.monotonic()
        p50, p99, worst = self._lag.figures()
        last_round: dict[str, float] = {}
        stalled: list[str] = []
        oldest = 0.0
        rounds = inconclusive = 0
        for target in self._targets.values():
            label = target.label
            rounds += target.rounds
            inconclusive += target.inconclusive
            timing = target.check.timing
            reference = target.last_round
            if reference is None:
                reference = self._started_at + timing.warmup
            else:
                last_round[label] = reference
            age = max(0.0, now - reference)
            oldest = max(oldest, age)
            if age > 2 * timing.interval + timing.timeout:
                stalled.append(label)
        return Watchdog(self._lag.latest, p50, p99, worst, len(self._targets),
                        self._slots.running, oldest, tuple(stalled), inconclusive, last_round,
                        self._slots.limit, self._slots.waiting, rounds)

    # -- probing --------------------------------------------------------------------------

    def _adapt(self, lag: float) -> None:
        self._slots.set_limit(next_limit(self._slots.limit, lag, self._slots.waiting,
                                         self._slots.ceiling))

    async def run_once(self) -> list[TargetView]:
        """Probe every target once, now, and apply the results (for ``lvsctl check run
        --once``); needs no ``start()``."""
        if not self._targets:
            self._started_at = self._clock.monotonic()
            plan, self._unchecked = plan_targets(self._cluster, self._services)
            self._multi = plan_multi(self._cluster, self._services)
            self._targets = {check: _Target(check, keys) for check, keys in plan.items()}
            for key in self._unchecked:
                self._set_health(key, UNCHECKED)
        # The lag monitor runs for the round: it is what lets the concurrency grow.
        lag = None if self._lag_task is not None else asyncio.create_task(self._lag.run())
        try:
            await asyncio.gather(*(self._probe(t) for t in self._targets.values()))
        finally:
            if lag is not None:
                lag.cancel()
                await asyncio.gather(lag, return_exceptions=True)
        return self.targets()

    def _apply_plan(self, cluster: Cluster) -> None:
        plan, unchecked = plan_targets(cluster, self._services)
        self._multi = plan_multi(cluster, self._services)
        for check in list(self._targets):
            if check not in plan:
                gone = self._targets.pop(check)
                if gone.task is not None:
                    gone.task.cancel()
        for check, keys in plan.items():
            target = self._targets.get(check)
            if target is None:
                target = self._targets[check] = _Target(check, keys)
                target.task = asyncio.create_task(self._drive(target), name=target.label)
            else:
                target.keys = keys
        self._unchecked = unchecked
        # Rebuild the key map: keys that left are dropped, new keys of decided targets (and
        # unchecked keys) are announced at once.
        wanted: dict[HealthKey, Health] = {key: UNCHECKED for key in unchecked}
        for target in self._targets.values():
            health = target.state.health
            if health is not None:
                wanted.update(dict.fromkeys(target.keys, health))
        for key in self._multi:
            combined = self._combined(key)
            if combined is None:
                wanted.pop(key, None)
            else:
                wanted[key] = combined
        for key in set(self._health) - set(wanted):
            del self._health[key]
        for key, health in wanted.items():
            self._set_health(key, health)

    async def _drive(self, target: _Target) -> None:
        """Probe one target forever on its grid."""
        timing = target.check.timing
        await self._clock.sleep(self._rng.uniform(0.0, timing.warmup))
        due = self._clock.monotonic()
        jitter = min(timing.interval * JITTER, MAX_JITTER)
        while True:
            await self._probe(target)
            due += timing.interval
            now = self._clock.monotonic()
            if due < now:
                # Overloaded or suspended: skip the missed slots instead of bursting.
                due = now
            await self._clock.sleep(max(0.0, due - now + self._rng.uniform(-jitter, jitter)))

    async def _probe(self, target: _Target) -> None:
        timing = target.check.timing
        async with self._slots:
            start = self._clock.monotonic()
            try:
                async with asyncio.timeout(timing.timeout + GRACE):
                    result = await self._checker.check(target.check)
            except TimeoutError:
                result = CheckResult(False, f"checker did not finish within "
                                            f"{timing.timeout + GRACE:g}s",
                                     self._clock.monotonic() - start, timed_out=True)
            except Exception as exc:  # a checker bug must not stop the other targets
                log.exception("checker failed on %s", target.label)
                result = CheckResult(False, f"checker error: {type(exc).__name__}: {exc}",
                                     self._clock.monotonic() - start)
        self._record(target, result)

    def _record(self, target: _Target, result: CheckResult) -> None:
        now = self._clock.monotonic()
        timing = target.check.timing
        target.last = result
        target.last_round = now
        target.rounds += 1
        before = target.state
        state, streak = settle(before, target.late_streak, result, timing, now)
        inconclusive = streak > target.late_streak
        if inconclusive:
            target.inconclusive += 1
        target.state, target.late_streak = state, streak
        if self.on_result is not None:
            self.on_result(target.label, result, inconclusive)
        if state.status is Status.UNKNOWN or (
            (state.status, state.weight, state.reason) == (before.status, before.weight,
                                                           before.reason)
        ):
            return  # undecided, or what every key already has (most probes of a steady pool)
        health = state.health
        assert health is not None
        multi = self._multi
        for key in target.keys:
            if multi and key in multi:
                combined = self._combined(key)
                if combined is not None:
                    self._set_health(key, combined, now)
                else:  # back to undecided (a check up again while another has no result)
                    self._health.pop(key, None)
            else:
                self._set_health(key, health, now)

    def _combined(self, key: HealthKey) -> Health | None:
        """The health of a key with several checks, from its targets' states."""
        parts = [self._targets.get(c) for c in self._multi[key]]
        if None in parts:  # a target gone with a config change; the new plan decides
            return None
        return combine((t.label, t.state) for t in parts if t is not None)

    def _set_health(self, key: HealthKey, health: Health, at: float | None = None) -> None:
        previous = self._health.get(key)
        if previous == health:
            return
        self._health[key] = health
        if previous is not None and (previous.healthy, previous.weight) == (
            health.healthy, health.weight
        ):
            return  # only the reason text changed: kept in the snapshot, not announced
        change = HealthChange(key, health, previous, self._clock.monotonic() if at is None else at)
        if self._on_change is not None:
            self._on_change(change)
        for queue in self._subscribers:
            queue.put_nowait(change)
