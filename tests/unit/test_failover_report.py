"""The drill report: progress lines, summary rows, JSON and the timeline picture's geometry."""

from __future__ import annotations

import json

from lvsctl.failover.report import (
    LABEL,
    DrillReport,
    layout,
    progress_line,
    render_html,
    summary_rows,
)
from lvsctl.failover.timeline import Hold, RoundResult, evaluate
from tests.unit.test_failover_timeline import VIP, rec, round_input

RECORDS = (
    rec("lb1", "transition", 101.02, state="CANDIDATE", epoch=5, reason="stepdown"),
    rec("lb1", "vip_released", 101.05, vip=VIP, epoch=5, reason="stepdown"),
    rec("lb2", "transition", 101.2, state="ACTIVE", epoch=6, reason="won <the> election"),
    rec("lb2", "vip_acquired", 101.3, vip=VIP, epoch=6),
    rec("lb1", "transition", 101.4, state="STANDBY", epoch=7),
)


def passing(number: int = 1) -> RoundResult:
    return evaluate(round_input(number=number, records=RECORDS))


def overlapping(number: int = 2) -> RoundResult:
    return evaluate(round_input(number=number, records=RECORDS,
                                holds=(Hold("lb1", VIP, 50, 101.5), Hold("lb2", VIP, 101.3))))


def test_progress_line_and_summary() -> None:
    assert progress_line(passing(), 3) == (
        "round 1/3 stepdown: PASS takeover 300ms outage 200ms overlap 0ms - lb2 took over in "
        "300 ms (epoch 5 -> 6); clients saw 200 ms of outage; no VIP overlap")
    rows = summary_rows([passing(), overlapping()])
    assert rows[0][:9] == ["1", "pass", "lb1", "lb2", "5->6", "300ms", "200ms", "0ms", "240/250"]
    assert rows[1][1] == "FAIL" and rows[1][7] == "200ms"


def test_json_round_trips_and_says_failed() -> None:
    report = DrillReport("t", "stepdown", 2, (passing(), overlapping()), probe="tcp://x:1")
    data = json.loads(json.dumps(report.to_json()))
    assert data["passed"] is False
    assert [r["passed"] for r in data["results"]] == [True, False]
    assert data["results"][1]["overlap_s"] == 0.2
    assert data["results"][1]["timeline"]["overlaps"][0]["directors"] == ["lb1", "lb2"]


def test_a_drill_with_fewer_rounds_than_asked_did_not_pass() -> None:
    assert not DrillReport("t", "stepdown", 3, (passing(),)).passed
    assert DrillReport("t", "stepdown", 1, (passing(),)).passed
    assert not DrillReport("t", "stepdown", 1, (passing(),), refused="lb2 is DOWN").passed


def test_layout_puts_the_failure_at_zero_and_everything_inside_the_plot() -> None:
    pic = layout(passing().timeline)
    zero = next(t for t in pic.ticks if t.text == "0")
    assert abs(zero.x - pic.injected_x) < 0.01
    for rect in pic.rects:
        assert rect.x >= LABEL - 0.01 and rect.x + rect.w <= pic.width
    assert sum(1 for r in pic.rects if r.cls == "hold") == 2
    assert sum(1 for r in pic.rects if r.cls == "client outage") == 1
    assert not any(r.cls == "overlap" for r in pic.rects)
    assert len(pic.marks) == len(RECORDS)
    states = [r.cls for r in pic.rects if r.cls.startswith("state") and "lb1" in r.title]
    assert states == ["state active", "state candidate", "state standby"]


def test_layout_draws_an_overlap_across_both_vip_rows() -> None:
    pic = layout(overlapping().timeline)
    (ov,) = [r for r in pic.rects if r.cls == "overlap"]
    holds = [r for r in pic.rects if r.cls == "hold"]
    assert ov.y <= min(h.y for h in holds) and ov.y + ov.h >= max(h.y + h.h for h in holds)
    assert "SPLIT BRAIN" in ov.title


def test_html_escapes_what_directors_wrote() -> None:
    page = render_html(DrillReport("t", "stepdown", 1, (passing(),)))
    assert "won &lt;the&gt; election" in page and "<the>" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_ticks_are_round_numbers_and_old_holds_do_not_widen_the_view() -> None:
    result = evaluate(round_input(records=RECORDS, started=100.0, injected=101.3,
                                  holds=(Hold("lb1", VIP, 100.0, 101.35),
                                         Hold("lb2", VIP, 101.6))))
    pic = layout(result.timeline)
    texts = [t.text for t in pic.ticks]
    assert "0" in texts and all("e-" not in t for t in texts)
    # lb1's hold began before the round (the observer found it): it is drawn from the left
    # edge, and the view starts half a second before the first thing that happened in it
    # (the client's outage at 101.0, i.e. -0.3 s): the view opens at -0.8 s.
    (lb1,) = [r for r in pic.rects if r.cls == "hold" and "lb1" in r.title]
    assert lb1.x == LABEL
    assert texts[0] == "-0.8s"
