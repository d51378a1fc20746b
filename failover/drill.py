"""Failover drills: check the pair is healthy, cause one failure of a chosen kind, watch the
takeover, measure what a client saw, put the pair back, and judge the round (timeline.py).

Two seams keep the drill independent of where it runs:

- ``Directors`` reaches the directors the way an operator can: their HTTP API (``/status``,
  authenticated actions) and their records in ZooKeeper. ``ZkDirectors`` is the real one.
- ``Lab`` is what only a lab (or a host the drill runs on) can do: signal a director's process
  by PID, restart it, cut its ZooKeeper or peer traffic with nftables, observe the VIPs in the
  kernel, and name the namespace the client probe runs in. Without a lab, ``crash`` and
  ``freeze`` go through the API (``api.drills: true`` on the directors), the partitions are
  refused, and VIP holds come from the directors' own status (their belief, not the kernel's).

Per round (the sequence is the same for every kind; ``_inject`` and ``_restore`` differ)::

    health check -> start probe + VIP observer -> settle -> inject failure -> wait for the
    expected outcome -> restore -> wait until the pair is whole -> settle -> stop -> evaluate
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster
from lvsctl.failover.probe import Probe, Target
from lvsctl.failover.report import DrillReport
from lvsctl.failover.timeline import (
    KINDS,
    TAKEOVER_KINDS,
    Hold,
    PairState,
    Record,
    RoundInput,
    RoundResult,
    evaluate,
)


class DrillError(LvsctlError):
    """A drill that cannot go on: a director refused an action, a wait ran out, ..."""


class PairChanged(DrillError):
    """The pair changed by itself between the pre-round check and the failure."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("the pair changed before the failure was caused: "
                         + "; ".join(self.problems))


class DrillRefused(DrillError):
    """The cluster is not healthy enough to drill; ``problems`` says why."""

    exit_code = 3

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("refusing to drill: " + "; ".join(self.problems))


# -- what a healthy pair looks like ----------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the cluster file says the pair must show: names, VIPs, real servers per service."""

    directors: tuple[str, ...]
    vips: tuple[str, ...]
    realservers: Mapping[str, frozenset[str]]  # service name -> real server names
    session_timeout: float
    checked: Mapping[str, frozenset[str]] = field(default_factory=dict)  # ... with a check

    @classmethod
    def from_cluster(cls, cluster: Cluster) -> Expected:
        return cls(
            directors=tuple(d.name for d in cluster.directors),
            vips=tuple(v.address for v in cluster.vips),
            realservers={s.name: frozenset(rs.name for rs in s.realservers)
                         for s in cluster.services},
            session_timeout=cluster.zookeeper.session_timeout,
            checked={s.name: frozenset(rs.name for rs in s.realservers if rs.check is not None)
                     for s in cluster.services},
        )


def pair_state(statuses: Mapping[str, Mapping[str, Any] | None],
               directors: Sequence[str]) -> PairState:
    """Roles as the statuses say (DOWN when a director does not answer), the active's epoch."""
    roles = {name: str((statuses.get(name) or {}).get("role", "DOWN")) for name in directors}
    actives = [n for n, r in roles.items() if r == "ACTIVE"]
    epoch = int((statuses.get(actives[0]) or {}).get("epoch", 0)) if len(actives) == 1 else 0
    return PairState(roles, epoch)


def check_health(statuses: Mapping[str, Mapping[str, Any] | None],
                 expected: Expected) -> tuple[PairState, list[str]]:
    """Is the pair fit for a drill? Returns its state and every problem found (none = fit).

    Fit: both directors answer and reach ZooKeeper, run the same valid config, one is ACTIVE
    and holds every VIP, the other is STANDBY and holds none, and both know every real server.
    """
    state = pair_state(statuses, expected.directors)
    problems: list[str] = []
    versions: dict[str, str] = {}
    for name in expected.directors:
        st = statuses.get(name)
        if st is None:
            problems.append(f"{name} does not answer (not running, or its API is unreachable)")
            continue
        if st.get("zookeeper") != "connected":
            problems.append(f"{name} cannot reach ZooKeeper")
        config = st.get("config") or {}
        if config.get("error"):
            problems.append(f"{name} rejected the config: {config['error']}")
        versions[name] = str(config.get("version", ""))
        known = {svc.get("name"): {rs.get("name") for rs in svc.get("realservers", [])}
                 for svc in st.get("services", [])}
        for service, wanted in sorted(expected.realservers.items()):
            missing = sorted(wanted - known.get(service, set()))
            if missing:
                problems.append(f"{name} does not know real server(s) {', '.join(missing)} "
                                f"of service {service}")
            for svc in st.get("services", []):
                if svc.get("name") != service:
                    continue
                # A real server with a check must have a result: until then the active would
                # take over a service whose servers it has not judged yet.
                checked = expected.checked.get(service, frozenset())
                unknown = sorted(str(rs.get("name")) for rs in svc.get("realservers", [])
                                 if rs.get("name") in checked and rs.get("health") is None)
                if unknown:
                    problems.append(f"{name} has no health result yet for {', '.join(unknown)} "
                                    f"of service {service}")
    if len(set(versions.values())) > 1:
        problems.append("the directors run different configs (" + ", ".join(
            f"{n} {v or '?'}" for n, v in sorted(versions.items())) + ")")
    actives = [n for n, r in state.roles.items() if r == "ACTIVE"]
    if not actives:
        problems.append("no director is active")
    elif len(actives) > 1:
        problems.append(f"both {' and '.join(actives)} say they are active")
    for name, role in sorted(state.roles.items()):
        st = statuses.get(name)
        if st is None:
            continue
        held = set(st.get("vips", []))
        if role == "ACTIVE":
            missing = [v for v in expected.vips if v not in held]
            if missing:
                problems.append(f"{name} is active but does not hold VIP {', '.join(missing)}")
        elif role != "STANDBY" and len(actives) == 1:
            problems.append(f"{name} is {role}, not STANDBY")
        if role != "ACTIVE" and held:
            problems.append(f"{name} is {role} but holds VIP {', '.join(sorted(held))}")
    return state, problems


# -- the seams -------------------------------------------------------------------------------


class Directors(Protocol):
    """Reach the directors as an operator can: status, authenticated actions, records."""

    def status(self, director: str) -> dict[str, Any] | None:
        """The director's /status, or None when it does not answer."""

    def action(self, director: str, action: str, params: Mapping[str, str] | None = None,
               ) -> dict[str, Any]:
        """POST an authenticated action (stepdown, crash, freeze). Raises DrillError."""

    def records(self) -> list[Record]:
        """Every transition record the directors published (ZooKeeper ``transitions/``)."""


class VipObserver(Protocol):
    def start(self) -> None: ...

    def stop(self) -> list[Hold]:
        """Stop observing; every hold seen (open ones have ``end`` None)."""


class Lab(Protocol):
    """What only the lab can do to a director (see the module docstring)."""

    @property
    def probe_netns(self) -> str | None:
        """The namespace the client probe runs in (None: this process's own)."""

    def signal(self, director: str, sig: int) -> None:
        """Send ``sig`` to the director's process."""

    def restart(self, director: str) -> None:
        """Start the director again if its process is gone (after a crash)."""

    def cut(self, director: str, link: str) -> None:
        """Drop the director's ``zookeeper`` or ``peer`` traffic (both directions)."""

    def heal(self, director: str, link: str) -> None:
        """Undo ``cut``; harmless when nothing is cut."""

    def observer(self, vips: Sequence[str]) -> VipObserver | None:
        """A watcher of the VIP addresses on both directors' interfaces (kernel truth)."""


class StatusObserver:
    """VIP holds from polling both directors' /status every ``interval`` (their belief).

    Each poll is an observation at the midpoint of its request; a hold runs from the first
    observation that showed the VIP to the last one that did. So two holds overlap only when
    both directors were each seen holding at the same instants, not merely because one was
    polled a little later than the other (a single sighting is an instant: it takes two to
    show an overlap, so its resolution is the poll interval). A director that does not
    answer holds nothing as far as this can tell (after a crash its VIP lease lapses in the
    kernel, which only the lab's observer sees).
    """

    def __init__(self, directors: Directors, names: Sequence[str], interval: float = 0.05,
                 wall: Callable[[], float] = time.time) -> None:
        self.directors = directors
        self.names = list(names)
        self.interval = interval
        self.wall = wall
        self._open: dict[tuple[str, str], tuple[float, float]] = {}  # first seen, last seen
        self._holds: list[Hold] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vip-status", daemon=True)

    def start(self) -> None:
        self._poll()  # what each director holds when the round begins, before it begins
        self._thread.start()

    def observe(self, name: str, held: set[str], at: float) -> None:
        """One observation: ``name`` held exactly ``held`` at ``at``."""
        for key in [k for k in self._open if k[0] == name and k[1] not in held]:
            first, last = self._open.pop(key)
            self._holds.append(Hold(name, key[1], first, last))
        for vip in held:
            first, _ = self._open.get((name, vip), (at, at))
            self._open[(name, vip)] = (first, at)

    def _poll(self) -> None:
        for name in self.names:
            sent = self.wall()
            st = self.directors.status(name)
            self.observe(name, set((st or {}).get("vips", [])), (sent + self.wall()) / 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._poll()
            self._stop.wait(self.interval)

    def stop(self) -> list[Hold]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        return sorted(self._holds + [Hold(d, v, first) for (d, v), (first, _) in
                                     self._open.items()], key=lambda h: (h.start, h.director))


# -- the drill -------------------------------------------------------------------------------


@dataclass
class Drill:
    """Runs ``rounds`` rounds of one kind; see the module docstring."""

    directors: Directors
    expected: Expected
    kind: str
    rounds: int = 1
    cluster: str = ""
    lab: Lab | None = None
    probe: Target | None = None
    wait: float = 30.0  # longest wait for a takeover, or for the pair to be whole again
    hold: float | None = None  # how long a freeze / partition lasts (default: 2 sessions)
    settle: float = 0.5  # quiet time observed before the failure and after the recovery
    max_outage: float | None = None
    probe_interval: float = 0.02
    probe_timeout: float = 0.5
    on_round: Callable[[RoundResult], None] = lambda r: None
    on_progress: Callable[[str], None] = lambda line: None
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    _results: list[RoundResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DrillError(f"--kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.lab is None and self.kind in ("zk-partition", "peer-partition"):
            raise DrillError(f"--kind {self.kind} needs the lab: cutting a director's traffic "
                             "takes nftables on that director (lvsctl lab)")

    @property
    def hold_for(self) -> float:
        return self.hold if self.hold is not None else 2 * self.expected.session_timeout

    # -- helpers -----------------------------------------------------------------------------

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        return {name: self.directors.status(name) for name in self.expected.directors}

    def health(self) -> tuple[PairState, list[str]]:
        return check_health(self.statuses(), self.expected)

    def _until(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = self.monotonic() + timeout
        while True:
            if predicate():
                return
            if self.monotonic() >= deadline:
                raise DrillError(f"gave up after {timeout:g} s waiting for {what}")
            self.sleep(0.05)

    def _someone_else_leads(self, before: str) -> bool:
        statuses = self.statuses()
        state = pair_state(statuses, self.expected.directors)
        new = [n for n, r in state.roles.items() if r == "ACTIVE" and n != before]
        return bool(new) and set(self.expected.vips) <= set(
            (statuses.get(new[0]) or {}).get("vips", []))

    def wait_whole(self, timeout: float | None = None) -> PairState:
        """Wait until the pair passes the health check again. Raises DrillError with why not."""
        last: list[str] = []

        def fit() -> bool:
            nonlocal last
            _, last = self.health()
            return not last

        try:
            self._until("the pair to be whole again", fit, self.wait if timeout is None
                        else timeout)
        except DrillError as exc:
            raise DrillError(f"{exc}: {'; '.join(last)}") from None
        return self.health()[0]

    # -- failures ----------------------------------------------------------------------------

    def _inject(self, target: str) -> None:
        kind, lab = self.kind, self.lab
        if kind == "stepdown":
            self.directors.action(target, "stepdown")
        elif kind == "crash":
            if lab is not None:
                lab.signal(target, signal.SIGKILL)
            else:
                self.directors.action(target, "crash")
        elif kind == "freeze":
            if lab is not None:
                lab.signal(target, signal.SIGSTOP)
            else:
                # The director pauses itself and must resume itself after ``seconds``.
                self.directors.action(target, "freeze", {"seconds": f"{self.hold_for:g}"})
        elif kind == "zk-partition":
            assert lab is not None
            lab.cut(target, "zookeeper")
        elif kind == "peer-partition":
            assert lab is not None
            lab.cut(target, "peer")

    def _await_outcome(self, target: str, injected_mono: float) -> None:
        if self.kind in TAKEOVER_KINDS:
            self._until(f"a director other than {target} to take over",
                        lambda: self._someone_else_leads(target), self.wait)
        if self.kind in ("freeze", "zk-partition", "peer-partition"):
            # Keep the failure in place for the whole span (longer than a session), so a
            # takeover that comes late, or a split brain that needs time, has time to show.
            left = injected_mono + self.hold_for - self.monotonic()
            if left > 0:
                self.sleep(left)

    def _restore(self, target: str) -> None:
        lab = self.lab
        if lab is None:
            return  # a crashed director comes back through its supervisor (systemd Restart=)
        if self.kind == "freeze":
            lab.signal(target, signal.SIGCONT)
        elif self.kind == "crash":
            lab.restart(target)
        elif self.kind == "zk-partition":
            lab.heal(target, "zookeeper")
        elif self.kind == "peer-partition":
            lab.heal(target, "peer")

    # -- rounds ------------------------------------------------------------------------------

    def run(self) -> DrillReport:
        """Run every round; stops early (``refused`` set) when the pair is not fit again.

        Raises DrillRefused when the pair is not fit before the first round.
        """
        started = self.wall()
        refused: str | None = None
        for number in range(1, self.rounds + 1):
            _, problems = self.health()
            if problems and number > 1:
                with contextlib.suppress(DrillError):
                    self.wait_whole()
                    problems = []
            if problems:
                if number == 1:
                    raise DrillRefused(problems)
                refused = f"before round {number}: " + "; ".join(problems)
                break
            try:
                result = self._round_with_retries(number)
            except LvsctlError as exc:  # an action refused, a probe that died, ...
                refused = f"round {number}: {exc}"
                break
            self._results.append(result)
            self.on_round(result)
        return DrillReport(self.cluster, self.kind, self.rounds, tuple(self._results),
                           probe=None if self.probe is None else self.probe.url,
                           started=started, refused=refused)

    def _round_with_retries(self, number: int, attempts: int = 3) -> RoundResult:
        for attempt in range(1, attempts + 1):
            try:
                return self.run_round(number)
            except PairChanged as exc:
                if attempt == attempts:
                    raise
                self.on_progress(f"round {number}/{self.rounds}: {exc}; once it is whole "
                                 f"again, round {number} starts over")
                self.wait_whole()
        raise AssertionError("unreachable")

    def run_round(self, number: int) -> RoundResult:
        """One round. Raises PairChanged when the pair was not fit just before the failure."""
        probe = observer = None
        if self.probe is not None:
            probe = Probe(self.probe, netns=self.lab.probe_netns if self.lab else None,
                          interval=self.probe_interval, timeout=self.probe_timeout,
                          duration=self.wait * 3 + self.hold_for + 60)
        lab_observer = self.lab.observer(self.expected.vips) if self.lab else None
        observer = lab_observer or StatusObserver(self.directors, self.expected.directors,
                                                  wall=self.wall)
        observer.start()
        # The round begins once the observer knows what each director holds: holds it saw
        # at its start are older than the round, not acquired in it.
        started = self.wall()
        if probe is not None:
            probe.start()
        restored = False
        target: str | None = None
        try:
            self.sleep(self.settle)
            # Check again just before the failure: a pair that changed by itself since the
            # pre-round check (a lease that ran out on a busy host) would otherwise be drilled
            # on a director that no longer leads, and its "takeover" measured from nothing.
            before, problems = self.health()
            if problems or before.active is None:
                raise PairChanged(problems or ["no director is active"])
            target = before.active
            self.on_progress(f"round {number}/{self.rounds}: {self.kind} on {target} "
                             f"(epoch {before.epoch})")
            injected, injected_mono = self.wall(), self.monotonic()
            self._inject(target)
            # A wait that runs out is not the end of the round: its verdict says what the pair
            # looked like (no takeover, not whole again), and the next health check decides.
            with contextlib.suppress(DrillError):
                self._await_outcome(target, injected_mono)
            self._restore(target)
            restored = True
            try:
                after = self.wait_whole()
            except DrillError:
                after = self.health()[0]
            self.sleep(self.settle)
        finally:
            if not restored and target is not None:
                with contextlib.suppress(Exception):
                    self._restore(target)
            ended = self.wall()
            samples = probe.stop() if probe is not None else None
            holds = observer.stop()
        records = self.directors.records()
        return evaluate(RoundInput(
            number=number, kind=self.kind, target=target, vips=self.expected.vips,
            started=started, injected=injected, ended=ended, before=before, after=after,
            records=tuple(records), holds=tuple(holds),
            samples=None if samples is None else tuple(samples),
            holds_observed=lab_observer is not None, max_outage=self.max_outage,
        ))

