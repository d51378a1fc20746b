"""One failover round as a timeline: directors' records, observed VIP holds and probe samples
merged on one time axis, and the round's verdict (takeover, outage, overlap, epochs).

Everything here is pure: the drill (drill.py) gathers the inputs, this module does the maths.

Time axis: wall-clock seconds (``time.time()``). The directors' records carry both clocks
(lvsctl.core.records.TransitionRecord, stamped by the keeper), but monotonic clocks of two
hosts cannot be compared, and a drill always merges two directors and a client;
NTP-disciplined wall clocks are good to a few milliseconds, far below the 20 ms probe cadence.
(In the lab all three share one host clock.)

Records are the transition records the directors write under ``<root>/<cluster>/transitions/``::

    {"director": "lb1", "monotonic": 812.3, "wall": 1764150000.1, "event": "transition",
     "state": "ACTIVE", "epoch": 7, "reason": "..."}
    {"director": "lb1", ..., "event": "vip_acquired", "vip": "192.0.2.10", "epoch": 7}
    {"director": "lb1", ..., "event": "vip_released", "vip": "192.0.2.10", "reason": "..."}
    {"director": "lb1", ..., "event": "garp_sent", "vip": "192.0.2.10", "count": 3}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KINDS = ("stepdown", "crash", "freeze", "zk-partition", "peer-partition")
# Kinds after which the other director must lead; peer-partition must change nothing.
TAKEOVER_KINDS = frozenset({"stepdown", "crash", "freeze", "zk-partition"})


@dataclass(frozen=True)
class Record:
    """One director record (see the module docstring); unknown events are kept, not dropped."""

    director: str
    event: str
    wall: float
    monotonic: float = 0.0
    state: str | None = None
    epoch: int | None = None
    vip: str | None = None
    reason: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        """Parse a record as the director writes it. Raises ValueError when it is not one."""
        try:
            director = str(data["director"])
            event = str(data["event"])
            wall = float(data["wall"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a director record: missing or bad {exc}") from None
        epoch = data.get("epoch")
        return cls(
            director=director, event=event, wall=wall,
            monotonic=float(data.get("monotonic") or 0.0),
            state=None if data.get("state") is None else str(data["state"]),
            epoch=None if epoch is None else int(epoch),
            vip=None if data.get("vip") is None else str(data["vip"]),
            reason=str(data.get("reason") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {"director": self.director, "event": self.event, "wall": self.wall,
                "monotonic": self.monotonic, "state": self.state, "epoch": self.epoch,
                "vip": self.vip, "reason": self.reason}


@dataclass(frozen=True)
class Sample:
    """One client probe: started at ``wall``; ``ok`` when it connected (and HTTP answered)."""

    wall: float
    ok: bool
    latency: float | None = None
    error: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sample:
        latency = data.get("latency")
        return cls(float(data["wall"]), bool(data["ok"]),
                   None if latency is None else float(latency), str(data.get("error") or ""))

    def to_json(self) -> dict[str, Any]:
        return {"wall": self.wall, "ok": self.ok, "latency": self.latency, "error": self.error}


@dataclass(frozen=True)
class Hold:
    """A VIP present on a director from ``start`` to ``end`` (None: still there at the end)."""

    director: str
    vip: str
    start: float
    end: float | None = None

    def until(self, horizon: float) -> float:
        return horizon if self.end is None else self.end


@dataclass(frozen=True)
class Window:
    """A time window, e.g. an outage as the client saw it."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Overlap:
    """Both directors held ``vip`` between ``start`` and ``end``: a split brain."""

    vip: str
    directors: tuple[str, str]
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Span:
    """A director in one election state from ``start`` to ``end``."""

    director: str
    state: str
    start: float
    end: float


@dataclass(frozen=True)
class PairState:
    """Who led and at which epoch, as the directors' status said at one instant."""

    roles: Mapping[str, str]  # director -> ACTIVE / STANDBY / CANDIDATE / FENCED / DOWN
    epoch: int  # the active's epoch; 0 when nobody leads

    @property
    def active(self) -> str | None:
        leaders = [name for name, role in self.roles.items() if role == "ACTIVE"]
        return leaders[0] if len(leaders) == 1 else None

    @property
    def standby(self) -> str | None:
        others = [name for name, role in self.roles.items() if role == "STANDBY"]
        return others[0] if len(others) == 1 else None

    @property
    def whole(self) -> bool:
        """One active, one standby: the pair can take the next failure."""
        return self.active is not None and self.standby is not None


# -- the maths -------------------------------------------------------------------------------


def outage_windows(samples: Iterable[Sample], until: float | None = None) -> list[Window]:
    """Windows in which the client got no answer: from the first failed probe's start to the
    start of the next probe that succeeded (or ``until`` / the last failure if none did).

    A probe that succeeded means the service answered when it was sent; so the outage as the
    client saw it ends at the first good probe, with the probe cadence as its resolution.
    """
    windows: list[Window] = []
    start: float | None = None
    last_fail = 0.0
    for sample in sorted(samples, key=lambda s: s.wall):
        if not sample.ok:
            if start is None:
                start = sample.wall
            last_fail = sample.wall
        elif start is not None:
            windows.append(Window(start, sample.wall))
            start = None
    if start is not None:
        windows.append(Window(start, until if until is not None else last_fail))
    return windows


def overlaps(holds: Iterable[Hold], horizon: float) -> list[Overlap]:
    """Every instant two different directors held the same VIP (open holds end at
    ``horizon``). Touching intervals (one ends exactly when the other starts) do not overlap.
    """
    by_vip: dict[str, list[Hold]] = {}
    for hold in holds:
        by_vip.setdefault(hold.vip, []).append(hold)
    found: list[Overlap] = []
    for vip, vip_holds in sorted(by_vip.items()):
        ordered = sorted(vip_holds, key=lambda h: (h.start, h.director))
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                if b.director == a.director:
                    continue
                start, end = max(a.start, b.start), min(a.until(horizon), b.until(horizon))
                if end > start:
                    pair = tuple(sorted((a.director, b.director)))
                    found.append(Overlap(vip, (pair[0], pair[1]), start, end))
    return sorted(found, key=lambda o: o.start)


def holds_from_records(records: Iterable[Record]) -> list[Hold]:
    """The directors' own belief of what they held: ``vip_acquired`` until ``vip_released``.

    A director that crashed writes no release; its hold stays open. Use this only where no
    observation of the addresses themselves exists (the lab observes the kernel; see drill.py).
    """
    open_: dict[tuple[str, str], float] = {}
    out: list[Hold] = []
    for rec in sorted(records, key=lambda r: r.wall):
        if rec.vip is None:
            continue
        key = (rec.director, rec.vip)
        if rec.event == "vip_acquired" and key not in open_:
            open_[key] = rec.wall
        elif rec.event == "vip_released" and key in open_:
            out.append(Hold(rec.director, rec.vip, open_.pop(key), rec.wall))
    out.extend(Hold(d, v, t) for (d, v), t in open_.items())
    return sorted(out, key=lambda h: (h.start, h.director, h.vip))


def state_spans(records: Iterable[Record], initial: Mapping[str, str], start: float,
                end: float) -> list[Span]:
    """Each director's election state from ``start`` to ``end``: ``initial`` (the state before
    ``start``), then every ``transition`` record in between."""
    spans: list[Span] = []
    current = dict(initial)
    since = {name: start for name in current}
    for rec in sorted(records, key=lambda r: r.wall):
        if rec.event != "transition" or rec.state is None:
            continue
        name = rec.director
        if rec.wall <= start:
            current[name] = rec.state
            since[name] = start
            continue
        if rec.wall >= end:
            break
        if name not in current:
            current[name], since[name] = "DOWN", start
        if current[name] != rec.state:
            if rec.wall > since[name]:
                spans.append(Span(name, current[name], since[name], rec.wall))
            current[name], since[name] = rec.state, rec.wall
    spans.extend(Span(name, state, since[name], end) for name, state in current.items())
    return sorted(spans, key=lambda s: (s.director, s.start))


def takeover_time(holds: Iterable[Hold], director: str, vips: Sequence[str],
                  injected: float) -> float | None:
    """Seconds from the failure until ``director`` held every VIP (None if it never did)."""
    latest = -math.inf
    for vip in vips:
        starts = [h.start for h in holds if h.director == director and h.vip == vip
                  and h.until(math.inf) > injected]
        if not starts:
            return None
        latest = max(latest, max(min(starts), injected))
    return latest - injected if vips else None


def held_throughout(holds: Iterable[Hold], director: str, vip: str, start: float,
                    end: float) -> bool:
    """Did ``director`` hold ``vip`` for the whole of [start, end] without a gap?"""
    covered = start
    for hold in sorted((h for h in holds if h.director == director and h.vip == vip),
                       key=lambda h: h.start):
        if hold.start > covered:
            return False
        covered = max(covered, hold.until(math.inf))
        if covered >= end:
            return True
    return covered >= end


# -- one round -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundInput:
    """What a drill gathered in one round; all times wall-clock seconds."""

    number: int
    kind: str
    target: str  # the director the failure was applied to
    vips: tuple[str, ...]
    started: float
    injected: float
    ended: float
    before: PairState
    after: PairState
    records: tuple[Record, ...] = ()
    holds: tuple[Hold, ...] = ()
    samples: tuple[Sample, ...] | None = None  # None: no client probe in this drill
    holds_observed: bool = True  # False: holds come from the directors' records (belief)
    max_outage: float | None = None


@dataclass(frozen=True)
class Timeline:
    """What the report draws for one round, relative times left to the renderer."""

    start: float
    end: float
    injected: float
    directors: tuple[str, ...]
    spans: tuple[Span, ...]
    holds: tuple[Hold, ...]
    outages: tuple[Window, ...]
    overlaps: tuple[Overlap, ...]
    events: tuple[Record, ...]
    samples: int
    probed: bool


@dataclass(frozen=True)
class RoundResult:
    number: int
    kind: str
    passed: bool
    reason: str
    target: str
    active_before: str | None
    active_after: str | None
    epoch_before: int
    epoch_after: int
    takeover: float | None  # seconds from the failure until the new active held every VIP
    outage: float | None  # longest window the client got no answer (None: no probe)
    outage_total: float | None
    overlap: float  # seconds any VIP was held by both directors (must be 0)
    probes: int
    failed_probes: int
    timeline: Timeline = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        tl = self.timeline
        return {
            "round": self.number, "kind": self.kind, "passed": self.passed,
            "reason": self.reason, "target": self.target,
            "active_before": self.active_before, "active_after": self.active_after,
            "epoch_before": self.epoch_before, "epoch_after": self.epoch_after,
            "takeover_s": _r(self.takeover), "outage_s": _r(self.outage),
            "outage_total_s": _r(self.outage_total), "overlap_s": _r(self.overlap),
            "probes": self.probes, "failed_probes": self.failed_probes,
            "timeline": {
                "start": tl.start, "end": tl.end, "injected": tl.injected,
                "directors": list(tl.directors),
                "spans": [{"director": s.director, "state": s.state, "start": s.start,
                           "end": s.end} for s in tl.spans],
                "holds": [{"director": h.director, "vip": h.vip, "start": h.start,
                           "end": h.end} for h in tl.holds],
                "outages": [{"start": w.start, "end": w.end} for w in tl.outages],
                "overlaps": [{"vip": o.vip, "directors": list(o.directors), "start": o.start,
                              "end": o.end} for o in tl.overlaps],
                "events": [r.to_json() for r in tl.events],
            },
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def evaluate(inp: RoundInput) -> RoundResult:
    """Merge the round's inputs into a timeline and judge it (first failing rule wins)."""
    window = (inp.started, inp.ended)
    records = tuple(sorted((r for r in inp.records if window[0] <= r.wall <= window[1]),
                           key=lambda r: r.wall))
    holds = tuple(h for h in inp.holds if h.until(math.inf) >= window[0] and h.start <= window[1])
    found = [o for o in overlaps(holds, inp.ended) if o.end > window[0]]
    overlap_s = sum(o.length for o in found)
    outages = [] if inp.samples is None else outage_windows(
        (s for s in inp.samples if window[0] <= s.wall <= window[1]), inp.ended)
    probes = 0 if inp.samples is None else sum(
        1 for s in inp.samples if window[0] <= s.wall <= window[1])
    failed = 0 if inp.samples is None else sum(
        1 for s in inp.samples if window[0] <= s.wall <= window[1] and not s.ok)
    longest = max((w.length for w in outages), default=0.0) if inp.samples is not None else None
    total = sum(w.length for w in outages) if inp.samples is not None else None

    directors = tuple(sorted(set(inp.before.roles) | set(inp.after.roles)
                             | {r.director for r in inp.records}))
    # Before the round the roles are those of the health check; a record before the window
    # refines them (state_spans replays records up to ``started``).
    # A crashed or frozen director writes nothing while it is out: its state from the failure
    # to its next record is what the drill did to it, not the last state it wrote.
    caused = {"crash": "DOWN", "freeze": "FROZEN"}.get(inp.kind)
    replay = inp.records + ((Record(inp.target, "transition", inp.injected, state=caused,
                                    reason=f"{inp.kind} caused by the drill"),)
                            if caused else ())
    spans = tuple(state_spans(replay, {d: inp.before.roles.get(d, "DOWN")
                                       for d in directors}, *window))
    before, after = inp.before, inp.after
    new_active = after.active
    takeover = None
    if inp.kind in TAKEOVER_KINDS and new_active is not None and new_active != before.active:
        takeover = takeover_time(holds, new_active, inp.vips, inp.injected)

    reason = _verdict(inp, found, takeover, longest, failed, holds)
    passed = reason is None
    if reason is None:
        reason = _success(inp, takeover, longest)
    timeline = Timeline(
        start=window[0], end=window[1], injected=inp.injected, directors=directors,
        spans=spans, holds=holds, outages=tuple(outages), overlaps=tuple(found),
        events=records, samples=probes, probed=inp.samples is not None,
    )
    return RoundResult(
        number=inp.number, kind=inp.kind, passed=passed, reason=reason, target=inp.target,
        active_before=before.active, active_after=after.active, epoch_before=before.epoch,
        epoch_after=after.epoch, takeover=takeover, outage=longest, outage_total=total,
        overlap=overlap_s, probes=probes, failed_probes=failed, timeline=timeline,
    )


def _verdict(inp: RoundInput, found: Sequence[Overlap], takeover: float | None,
             longest: float | None, failed: int, holds: Sequence[Hold]) -> str | None:
    """Why the round failed, or None. Safety first: an overlap beats every other finding."""
    if found:
        first = found[0]
        return (f"VIP {first.vip} held by {first.directors[0]} and {first.directors[1]} at "
                f"once for {_ms(sum(o.length for o in found))} "
                f"(from +{first.start - inp.injected:.3f} s)")
    # The failure must have hit the director that held the VIPs then; from status polls a
    # hold is known only to its last sighting, up to a poll or so before the failure.
    grace = 0.0 if inp.holds_observed else 0.25
    missing = [v for v in inp.vips if not any(
        h.director == inp.target and h.vip == v and h.start <= inp.injected
        and h.until(math.inf) >= inp.injected - grace for h in holds)]
    if missing:
        return (f"{inp.target} did not hold VIP {', '.join(missing)} when the failure was "
                "caused: the pair changed under the drill")
    before, after = inp.before, inp.after
    if inp.kind in TAKEOVER_KINDS:
        if after.active is None:
            return "no director is active after the round"
        if after.active == before.active:
            return f"{after.active} is still active: no takeover"
        if after.epoch <= before.epoch:
            return f"epoch did not increase ({before.epoch} -> {after.epoch})"
        if takeover is None:
            missing = [v for v in inp.vips
                       if takeover_time(holds, after.active, [v], inp.injected) is None]
            return f"{after.active} leads but never held {', '.join(missing)}"
    else:  # peer-partition: nothing may change
        if after.active != before.active:
            return f"the active changed ({before.active} -> {after.active})"
        if after.epoch != before.epoch:
            return f"epoch changed ({before.epoch} -> {after.epoch})"
        if before.active is not None:
            for vip in inp.vips:
                if not held_throughout(holds, before.active, vip, inp.injected, inp.ended):
                    return f"{before.active} let go of VIP {vip} during the partition"
        if failed:
            return f"clients saw an outage ({failed} failed probes) though nothing should change"
    if not after.whole:
        roles = ", ".join(f"{d} {r}" for d, r in sorted(after.roles.items()))
        return f"the pair is not whole again after the round ({roles})"
    if inp.max_outage is not None and longest is not None and longest > inp.max_outage:
        return f"clients saw an outage of {_ms(longest)} (limit {_ms(inp.max_outage)})"
    return None


def _success(inp: RoundInput, takeover: float | None, longest: float | None) -> str:
    client = "" if longest is None else f"; clients saw {_ms(longest)} of outage"
    basis = "" if inp.holds_observed else " (VIP holds as the directors reported them)"
    if inp.kind in TAKEOVER_KINDS and takeover is not None:
        return (f"{inp.after.active} took over in {_ms(takeover)} "
                f"(epoch {inp.before.epoch} -> {inp.after.epoch}){client}; no VIP overlap{basis}")
    return f"{inp.before.active} kept the lead at epoch {inp.after.epoch}{client}; " \
           f"no VIP overlap{basis}"
