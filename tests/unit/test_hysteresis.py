"""Rise/fall hysteresis: the transition table, counters, and the time stamps it is given."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvsctl.core.errors import StateError
from lvsctl.core.model import CheckTiming, Health
from lvsctl.healthcheck.hysteresis import TRANSITIONS, State, Status, check_transition, next_state
from lvsctl.healthcheck.result import CheckResult

TIMING = CheckTiming(interval=1.0, timeout=0.5, rise=2, fall=3)
OK = CheckResult(True, "HTTP 200", 0.001)
FAIL = CheckResult(False, "HTTP 500, expected 200", 0.001)


def run(results: list[CheckResult], timing: CheckTiming = TIMING) -> list[State]:
    state = State()
    states = []
    for now, result in enumerate(results, start=1):
        state = next_state(state, result, timing, float(now))
        states.append(state)
    return states


def statuses(results: list[CheckResult], timing: CheckTiming = TIMING) -> str:
    return "".join(s.status.value[0] for s in run(results, timing))


def test_first_result_decides() -> None:
    assert run([OK])[0].status is Status.UP
    assert run([FAIL])[0].status is Status.DOWN
    assert run([OK])[0].health == Health(True, None, "HTTP 200")
    assert run([FAIL])[0].health == Health(False, None, "HTTP 500, expected 200")


def test_unknown_has_no_health() -> None:
    assert State().health is None


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        # fall = 3: two failures keep it up, the third takes it down.
        ([OK, FAIL, FAIL, FAIL], "uuud"),
        # A success in between resets the failure count.
        ([OK, FAIL, FAIL, OK, FAIL, FAIL, FAIL], "uuuuuud"),
        # rise = 2: one success keeps it down, the second brings it up.
        ([FAIL, OK, OK], "ddu"),
        ([FAIL, OK, FAIL, OK, OK], "ddddu"),
    ],
)
def test_rise_and_fall(results: list[CheckResult], expected: str) -> None:
    assert statuses(results) == expected


def test_rise_one_fall_one_follows_each_result() -> None:
    timing = CheckTiming(interval=1.0, timeout=0.5, rise=1, fall=1)
    assert statuses([OK, FAIL, OK, FAIL], timing) == "udud"


def test_since_is_the_injected_time_of_the_transition() -> None:
    states = run([OK, OK, FAIL, FAIL, FAIL, FAIL])
    assert [s.since for s in states] == [1.0, 1.0, 1.0, 1.0, 5.0, 5.0]


def test_reason_is_the_result_that_took_it_down_then_the_latest_failure() -> None:
    refused = CheckResult(False, "connection refused", 0.0)
    states = run([OK, FAIL, FAIL, FAIL, refused])
    assert states[3].reason == "HTTP 500, expected 200"
    assert states[4].reason == "connection refused"
    # While up, a failure below `fall` does not change what the reconciler is told.
    assert states[1].health == Health(True, None, "HTTP 200")


def test_dynamic_weight_follows_results_while_up_and_is_dropped_when_down() -> None:
    w5 = CheckResult(True, "exit 7: weight 5", 0.0, weight=5)
    w9 = CheckResult(True, "exit 11: weight 9", 0.0, weight=9)
    states = run([w5, w9, FAIL, FAIL, FAIL])
    assert [s.health.weight for s in states if s.health] == [5, 9, 9, 9, None]
    assert states[1].health == Health(True, 9, "exit 11: weight 9")


def test_transition_table_is_enforced() -> None:
    for old, new in itertools.product(Status, Status):
        if (old, new) in TRANSITIONS:
            check_transition(old, new)
        else:
            with pytest.raises(StateError, match=f"{old.value} -> {new.value}"):
                check_transition(old, new)
    # Nothing ever returns to UNKNOWN.
    assert (Status.UP, Status.UNKNOWN) not in TRANSITIONS
    assert (Status.DOWN, Status.UNKNOWN) not in TRANSITIONS


@given(
    st.lists(st.booleans(), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=5),
)
def test_status_matches_a_direct_count_of_consecutive_results(
    oks: list[bool], rise: int, fall: int
) -> None:
    """Reference: after the first result, the status flips only after `rise` consecutive
    successes (when down) or `fall` consecutive failures (when up)."""
    timing = CheckTiming(interval=1.0, timeout=0.5, rise=rise, fall=fall)
    states = run([OK if ok else FAIL for ok in oks], timing)
    up = oks[0]
    streak = 0
    for ok, state in zip(oks[1:], states[1:], strict=True):
        streak = streak + 1 if ok != up else 0
        if streak >= (rise if not up else fall):
            up, streak = ok, 0
        assert state.status is (Status.UP if up else Status.DOWN)
