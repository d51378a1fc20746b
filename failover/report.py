"""What a drill shows: a progress line per round, the summary table, JSON, and a self-contained
HTML page with one timeline picture (inline SVG) per round.

The picture's geometry is computed here (``layout``, pure); the template
(templates/report/failover.html.j2) only draws what it is given, so it holds no arithmetic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lvsctl.core.errors import LvsctlError
from lvsctl.failover.timeline import RoundResult, Timeline

WIDTH = 960  # SVG user units
LABEL = 150  # left margin for the row labels
ROW = 22
GAP = 6
AXIS = 30
PAD = 0.5  # seconds shown before the first and after the last thing of interest


@dataclass(frozen=True)
class DrillReport:
    """One drill: what was asked and every round's result."""

    cluster: str
    kind: str
    rounds: int
    results: tuple[RoundResult, ...]
    probe: str | None = None
    started: float = field(default_factory=time.time)
    refused: str | None = None  # why the drill stopped before all rounds ran

    @property
    def passed(self) -> bool:
        return self.refused is None and len(self.results) == self.rounds and all(
            r.passed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "kind": self.kind, "rounds": self.rounds,
            "probe": self.probe, "started": self.started, "passed": self.passed,
            "refused": self.refused, "results": [r.to_json() for r in self.results],
        }


# -- terminal --------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def progress_line(result: RoundResult, rounds: int) -> str:
    """One line per finished round, printed while the drill goes on."""
    mark = "PASS" if result.passed else "FAIL"
    return (f"round {result.number}/{rounds} {result.kind}: {mark} "
            f"takeover {_s(result.takeover)} outage {_s(result.outage)} "
            f"overlap {_s(result.overlap)} - {result.reason}")


SUMMARY_HEADERS = ("ROUND", "RESULT", "BEFORE", "AFTER", "EPOCHS", "TAKEOVER", "OUTAGE",
                   "OVERLAP", "PROBES", "REASON")


def summary_rows(results: Sequence[RoundResult]) -> list[list[str]]:
    return [[
        str(r.number), "pass" if r.passed else "FAIL", r.active_before or "-",
        r.active_after or "-", f"{r.epoch_before}->{r.epoch_after}", _s(r.takeover),
        _s(r.outage), _s(r.overlap),
        "-" if not r.timeline.probed else f"{r.probes - r.failed_probes}/{r.probes}",
        r.reason,
    ] for r in results]


# -- the timeline picture --------------------------------------------------------------------

STATE_CLASSES = {"ACTIVE": "active", "STANDBY": "standby", "CANDIDATE": "candidate",
                 "FENCED": "fenced", "DOWN": "down", "FROZEN": "frozen"}


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    h: float
    cls: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    cls: str = ""


@dataclass(frozen=True)
class Picture:
    width: float
    height: float
    rects: tuple[Rect, ...]
    marks: tuple[Mark, ...]
    labels: tuple[Label, ...]
    ticks: tuple[Label, ...]
    grid: tuple[float, ...]
    injected_x: float
    plot_top: float
    plot_bottom: float


def _view(tl: Timeline) -> tuple[float, float]:
    """The time range worth drawing: the round, trimmed to what happened in it."""
    times = [tl.injected]
    # A hold that was there when observing began started before the round: not an event.
    times += [h.start for h in tl.holds if h.start > tl.start]
    times += [h.end for h in tl.holds if h.end is not None]
    times += [s.start for s in tl.spans if s.start > tl.start]
    times += [w.end for w in tl.outages] + [w.start for w in tl.outages]
    times += [r.wall for r in tl.events]
    lo = max(tl.start, min(times) - PAD)
    hi = min(tl.end, max(times) + PAD)
    return lo, max(hi, lo + 1.0)


def _tick_step(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300):
        if span / step <= 10:
            return step
    return 600.0


def layout(tl: Timeline, width: float = WIDTH) -> Picture:
    """Rows: per director its election state and its VIP holds; then the client; overlaps in
    red across both VIP rows; the failure as a vertical line; seconds relative to it below."""
    lo, hi = _view(tl)
    plot_w = width - LABEL - 10

    def x(t: float) -> float:
        return LABEL + (min(max(t, lo), hi) - lo) / (hi - lo) * plot_w

    rects: list[Rect] = []
    marks: list[Mark] = []
    labels: list[Label] = []
    y = 8.0
    vip_rows: dict[str, tuple[float, float]] = {}
    for director in tl.directors:
        labels.append(Label(LABEL - 8, y + ROW * 0.7, f"{director} state", "row"))
        for span in (s for s in tl.spans if s.director == director):
            if span.end <= lo or span.start >= hi:
                continue
            rects.append(Rect(x(span.start), y, max(x(span.end) - x(span.start), 0.5), ROW,
                              f"state {STATE_CLASSES.get(span.state, 'other')}",
                              f"{director} {span.state} {span.start - tl.injected:+.3f}s .. "
                              f"{span.end - tl.injected:+.3f}s"))
        for ev in (e for e in tl.events if e.director == director):
            marks.append(Mark(x(ev.wall), y, ROW, f"event {ev.event}",
                              f"{director} {ev.event}"
                              + (f" {ev.state}" if ev.state else "")
                              + (f" {ev.vip}" if ev.vip else "")
                              + (f" epoch {ev.epoch}" if ev.epoch is not None else "")
                              + f" at {ev.wall - tl.injected:+.3f}s"
                              + (f": {ev.reason}" if ev.reason else "")))
        y += ROW + GAP
        labels.append(Label(LABEL - 8, y + ROW * 0.7, f"{director} VIP", "row"))
        vip_rows[director] = (y, ROW)
        for hold in (h for h in tl.holds if h.director == director):
            end = hold.until(tl.end)
            if end <= lo or hold.start >= hi:
                continue
            rects.append(Rect(x(hold.start), y, max(x(end) - x(hold.start), 0.5), ROW,
                              "hold", f"{director} held {hold.vip} "
                              f"{hold.start - tl.injected:+.3f}s .. "
                              + ("end" if hold.end is None else f"{end - tl.injected:+.3f}s")))
        y += ROW + GAP * 2
    client_y = y
    labels.append(Label(LABEL - 8, y + ROW * 0.7, "client", "row"))
    if tl.probed:
        rects.append(Rect(x(lo), y, x(hi) - x(lo), ROW, "client ok",
                          f"client answered ({tl.samples} probes in the round)"))
        for w in tl.outages:
            rects.append(Rect(x(w.start), y, max(x(w.end) - x(w.start), 1.0), ROW,
                              "client outage",
                              f"client outage {w.length * 1000:.0f} ms from "
                              f"{w.start - tl.injected:+.3f}s"))
    else:
        labels.append(Label(LABEL + 6, y + ROW * 0.7, "no probe", "note"))
    y += ROW + GAP
    for ov in tl.overlaps:
        top = min(vip_rows[d][0] for d in ov.directors if d in vip_rows)
        bottom = max(vip_rows[d][0] + ROW for d in ov.directors if d in vip_rows)
        rects.append(Rect(x(ov.start), top, max(x(ov.end) - x(ov.start), 2.0), bottom - top,
                          "overlap", f"SPLIT BRAIN: {ov.vip} held by {' and '.join(ov.directors)}"
                          f" for {ov.length * 1000:.0f} ms"))
    step = _tick_step(hi - lo)
    ticks: list[Label] = []
    grid: list[float] = []
    # Whole multiples of the step (k * step, rounded): no 1e-17 from adding floats up.
    k = math.ceil((lo - tl.injected) / step - 1e-9)
    while tl.injected + k * step <= hi + 1e-9:
        t = round(k * step, 6)
        gx = x(tl.injected + t)
        grid.append(gx)
        ticks.append(Label(gx, y + 16, f"{t:+g}s" if k else "0", "tick"))
        k += 1
    return Picture(
        width=width, height=y + AXIS, rects=tuple(rects), marks=tuple(marks),
        labels=tuple(labels), ticks=tuple(ticks), grid=tuple(grid),
        injected_x=x(tl.injected), plot_top=4.0, plot_bottom=client_y + ROW,
    )


# -- HTML ------------------------------------------------------------------------------------


def render_html(report: DrillReport) -> str:
    """The whole page as one string: inline CSS and SVG, no external assets, no scripts."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lvsctl.templates", "report"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    rounds = [{"result": r, "picture": layout(r.timeline), "json": r.to_json()}
              for r in report.results]
    return env.get_template("failover.html.j2").render(
        report=report, rounds=rounds, headers=SUMMARY_HEADERS,
        rows=summary_rows(report.results),
        started=datetime.fromtimestamp(report.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        fmt=_s,
    )


def write_html(path: str | Path, report: DrillReport) -> None:
    """Write the page. Raises LvsctlError naming the file when it cannot be written."""
    text = render_html(report)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise LvsctlError(f"--report {path}: cannot write the report: {exc.strerror}") from None
