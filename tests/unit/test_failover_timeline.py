"""The failover timeline maths: outage windows, VIP overlap, takeover, state spans, verdicts."""

from __future__ import annotations

import pytest

from lvsctl.failover.timeline import (
    Hold,
    PairState,
    Record,
    RoundInput,
    Sample,
    Span,
    Window,
    evaluate,
    held_throughout,
    holds_from_records,
    outage_windows,
    overlaps,
    state_spans,
    takeover_time,
)

VIP = "192.0.2.10"
VIP6 = "2001:db8::10"


def samples(pattern: str, start: float = 100.0, step: float = 0.02) -> list[Sample]:
    """'.' = answered, 'x' = no answer, one probe per ``step``."""
    return [Sample(start + i * step, c == ".") for i, c in enumerate(pattern)]


@pytest.mark.parametrize(("pattern", "until", "expected"), [
    ("....", None, []),
    ("..xx..", None, [(100.04, 100.08)]),
    ("x..", None, [(100.0, 100.02)]),
    ("..xxx", 101.0, [(100.04, 101.0)]),
    ("..xxx", None, [(100.04, 100.08)]),
    (".x.xx.", None, [(100.02, 100.04), (100.06, 100.1)]),
    ("", None, []),
])
def test_outage_windows(pattern: str, until: float | None,
                        expected: list[tuple[float, float]]) -> None:
    got = [(round(w.start, 6), round(w.end, 6)) for w in outage_windows(samples(pattern), until)]
    assert got == expected


def test_outage_windows_sort_samples_that_arrive_out_of_order() -> None:
    got = outage_windows(list(reversed(samples("..xx.."))))
    assert [(round(w.start, 6), round(w.end, 6)) for w in got] == [(100.04, 100.08)]


@pytest.mark.parametrize(("holds", "expected"), [
    # handover with a gap: no overlap
    ([Hold("lb1", VIP, 0, 5), Hold("lb2", VIP, 5.2)], []),
    # touching intervals do not overlap
    ([Hold("lb1", VIP, 0, 5), Hold("lb2", VIP, 5)], []),
    # both at once for 0.3 s
    ([Hold("lb1", VIP, 0, 5.3), Hold("lb2", VIP, 5)], [(VIP, 5, 5.3)]),
    # a hold that never ended overlaps until the horizon
    ([Hold("lb1", VIP, 0), Hold("lb2", VIP, 8)], [(VIP, 8, 10)]),
    # different VIPs never overlap each other
    ([Hold("lb1", VIP, 0), Hold("lb2", VIP6, 0)], []),
    # the same director twice is not a split brain
    ([Hold("lb1", VIP, 0, 6), Hold("lb1", VIP, 5)], []),
    # the VIP added behind the standby's back, inside the active's hold
    ([Hold("lb1", VIP, 0), Hold("lb2", VIP, 3, 4)], [(VIP, 3, 4)]),
])
def test_overlaps(holds: list[Hold], expected: list[tuple[str, float, float]]) -> None:
    got = [(o.vip, o.start, o.end) for o in overlaps(holds, horizon=10)]
    assert got == expected


def test_overlap_names_both_directors() -> None:
    (found,) = overlaps([Hold("lb2", VIP, 0, 2), Hold("lb1", VIP, 1, 3)], 10)
    assert found.directors == ("lb1", "lb2") and found.length == 1


def rec(director: str, event: str, wall: float, **kw: object) -> Record:
    return Record(director=director, event=event, wall=wall, **kw)  # type: ignore[arg-type]


def test_record_parses_what_the_director_writes() -> None:
    got = Record.from_json({"director": "lb1", "monotonic": 812.3, "wall": 1764150000.1,
                            "event": "transition", "state": "ACTIVE", "epoch": 7,
                            "reason": "won", "extra": "kept out"})
    assert got == Record("lb1", "transition", 1764150000.1, 812.3, "ACTIVE", 7, None, "won")
    with pytest.raises(ValueError, match="not a director record"):
        Record.from_json({"director": "lb1", "event": "transition"})


def test_holds_from_records_pairs_acquire_and_release_and_keeps_crashed_holds_open() -> None:
    records = [
        rec("lb1", "vip_acquired", 1, vip=VIP),
        rec("lb1", "garp_sent", 1.1, vip=VIP),
        rec("lb1", "vip_released", 4, vip=VIP),
        rec("lb2", "vip_acquired", 4.5, vip=VIP),
        rec("lb2", "vip_acquired", 4.6, vip=VIP),  # a repeat does not restart the hold
    ]
    assert holds_from_records(records) == [Hold("lb1", VIP, 1, 4), Hold("lb2", VIP, 4.5)]


def test_state_spans_replay_transitions_inside_the_window() -> None:
    records = [
        rec("lb1", "transition", 5, state="ACTIVE"),  # before the window: refines initial
        rec("lb1", "transition", 12, state="CANDIDATE"),
        rec("lb2", "transition", 12.5, state="ACTIVE"),
        rec("lb1", "transition", 13, state="STANDBY"),
        rec("lb1", "transition", 30, state="ACTIVE"),  # after the window: ignored
    ]
    got = state_spans(records, {"lb1": "STANDBY", "lb2": "STANDBY"}, 10, 20)
    assert got == [
        Span("lb1", "ACTIVE", 10, 12), Span("lb1", "CANDIDATE", 12, 13),
        Span("lb1", "STANDBY", 13, 20),
        Span("lb2", "STANDBY", 10, 12.5), Span("lb2", "ACTIVE", 12.5, 20),
    ]


def test_takeover_time_is_until_the_new_active_holds_every_vip() -> None:
    holds = [Hold("lb1", VIP, 0, 10), Hold("lb2", VIP, 11.2), Hold("lb2", VIP6, 11.5)]
    assert takeover_time(holds, "lb2", [VIP, VIP6], injected=10) == pytest.approx(1.5)
    assert takeover_time(holds, "lb2", [VIP, "198.51.100.1"], injected=10) is None
    assert takeover_time(holds, "lb1", [VIP], injected=10.5) is None  # ended before


def test_held_throughout_sees_gaps() -> None:
    assert held_throughout([Hold("lb1", VIP, 0)], "lb1", VIP, 1, 5)
    assert held_throughout([Hold("lb1", VIP, 0, 3), Hold("lb1", VIP, 3)], "lb1", VIP, 1, 5)
    assert not held_throughout([Hold("lb1", VIP, 0, 3), Hold("lb1", VIP, 3.1)], "lb1", VIP, 1, 5)
    assert not held_throughout([Hold("lb1", VIP, 0, 4)], "lb1", VIP, 1, 5)


# -- verdicts --------------------------------------------------------------------------------

BEFORE = PairState({"lb1": "ACTIVE", "lb2": "STANDBY"}, 5)
AFTER = PairState({"lb1": "STANDBY", "lb2": "ACTIVE"}, 6)


def round_input(**kw: object) -> RoundInput:
    base: dict[str, object] = dict(
        number=1, kind="stepdown", target="lb1", vips=(VIP,), started=100.0, injected=101.0,
        ended=106.0, before=BEFORE, after=AFTER,
        holds=(Hold("lb1", VIP, 50, 101.05), Hold("lb2", VIP, 101.3)),
        samples=tuple(samples("." * 50 + "x" * 10 + "." * 190)),
    )
    base.update(kw)
    return RoundInput(**base)  # type: ignore[arg-type]


def test_a_clean_takeover_passes_with_its_figures() -> None:
    got = evaluate(round_input())
    assert got.passed, got.reason
    assert got.takeover == pytest.approx(0.3)
    assert got.outage == pytest.approx(0.2)
    assert got.overlap == 0
    assert (got.epoch_before, got.epoch_after) == (5, 6)
    assert (got.active_before, got.active_after) == ("lb1", "lb2")
    assert got.probes == 250 and got.failed_probes == 10
    assert "lb2 took over in 300 ms (epoch 5 -> 6)" in got.reason
    assert got.timeline.outages == (Window(pytest.approx(101.0), pytest.approx(101.2)),)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"holds": (Hold("lb1", VIP, 50, 101.5), Hold("lb2", VIP, 101.3))},
     "VIP 192.0.2.10 held by lb1 and lb2 at once for 200 ms (from +0.300 s)"),
    ({"after": PairState({"lb1": "ACTIVE", "lb2": "STANDBY"}, 5)},
     "lb1 is still active: no takeover"),
    ({"after": PairState({"lb1": "FENCED", "lb2": "FENCED"}, 0)},
     "no director is active after the round"),
    ({"after": PairState({"lb1": "STANDBY", "lb2": "ACTIVE"}, 5)},
     "epoch did not increase (5 -> 5)"),
    ({"holds": (Hold("lb1", VIP, 50, 101.05),)}, "lb2 leads but never held 192.0.2.10"),
    ({"after": PairState({"lb1": "DOWN", "lb2": "ACTIVE"}, 6)},
     "the pair is not whole again after the round (lb1 DOWN, lb2 ACTIVE)"),
    ({"max_outage": 0.1}, "clients saw an outage of 200 ms (limit 100 ms)"),
    # lb2 had already taken over (by itself) when the drill stepped lb1 down.
    ({"holds": (Hold("lb1", VIP, 50, 100.6), Hold("lb2", VIP, 100.7))},
     "lb1 did not hold VIP 192.0.2.10 when the failure was caused: the pair changed under "
     "the drill"),
])
def test_failing_rounds_say_why(changes: dict[str, object], reason: str) -> None:
    got = evaluate(round_input(**changes))
    assert not got.passed
    assert got.reason == reason


def test_an_overlap_is_reported_even_when_everything_else_fails() -> None:
    got = evaluate(round_input(holds=(Hold("lb1", VIP, 50), Hold("lb2", VIP, 102)),
                               after=BEFORE))
    assert not got.passed and got.reason.startswith("VIP 192.0.2.10 held by lb1 and lb2")
    assert got.overlap == pytest.approx(4.0)


def test_peer_partition_passes_when_nothing_changed() -> None:
    got = evaluate(round_input(kind="peer-partition", after=BEFORE,
                               holds=(Hold("lb1", VIP, 50),), samples=tuple(samples("." * 250))))
    assert got.passed, got.reason
    assert got.takeover is None and got.outage == 0
    assert got.reason.startswith("lb1 kept the lead at epoch 5")


@pytest.mark.parametrize(("changes", "reason"), [
    ({"after": AFTER}, "the active changed (lb1 -> lb2)"),
    ({"after": PairState({"lb1": "ACTIVE", "lb2": "STANDBY"}, 9)}, "epoch changed (5 -> 9)"),
    ({"holds": (Hold("lb1", VIP, 50, 102), Hold("lb1", VIP, 102.5))},
     "lb1 let go of VIP 192.0.2.10 during the partition"),
    ({"samples": tuple(samples("." * 100 + "x" + "." * 149))},
     "clients saw an outage (1 failed probes) though nothing should change"),
])
def test_peer_partition_fails_on_any_change(changes: dict[str, object], reason: str) -> None:
    base: dict[str, object] = {"kind": "peer-partition", "after": BEFORE,
                               "holds": (Hold("lb1", VIP, 50),),
                               "samples": tuple(samples("." * 250))}
    base.update(changes)
    got = evaluate(round_input(**base))
    assert not got.passed and got.reason == reason


def test_holds_from_status_polls_may_end_a_poll_before_the_failure() -> None:
    polled = (Hold("lb1", VIP, 50, 100.9), Hold("lb2", VIP, 101.3))  # last seen 100 ms before
    assert evaluate(round_input(holds=polled, holds_observed=False)).passed
    assert not evaluate(round_input(holds=polled, holds_observed=True)).passed


def test_without_a_probe_there_is_no_client_figure() -> None:
    got = evaluate(round_input(samples=None))
    assert got.passed and got.outage is None and got.probes == 0
    assert "clients" not in got.reason
    assert got.to_json()["outage_s"] is None


def test_records_outside_the_round_are_not_its_events() -> None:
    records = (rec("lb1", "vip_released", 90, vip=VIP), rec("lb1", "vip_released", 101, vip=VIP))
    got = evaluate(round_input(records=records))
    assert [r.wall for r in got.timeline.events] == [101]


@pytest.mark.parametrize(("kind", "state"), [("crash", "DOWN"), ("freeze", "FROZEN")])
def test_a_crashed_or_frozen_director_is_drawn_so_until_its_next_record(kind: str,
                                                                        state: str) -> None:
    records = (rec("lb1", "transition", 103.5, state="STANDBY", epoch=7),)
    got = evaluate(round_input(kind=kind, records=records))
    lb1 = [(s.state, s.start, s.end) for s in got.timeline.spans if s.director == "lb1"]
    assert lb1 == [("ACTIVE", 100.0, 101.0), (state, 101.0, 103.5), ("STANDBY", 103.5, 106.0)]
    assert [r.state for r in got.timeline.events] == ["STANDBY"]  # not a record of its own
