"""The leadership rules as pure functions: the transition table and the hold verdict."""

from __future__ import annotations

import math

import pytest

from lvsctl.core.errors import ElectionError
from lvsctl.director.election import TRANSITIONS, State, Timing, check_transition, hold_permission
from lvsctl.director.peer import Beat, Heard

T = Timing(session_timeout=3.0)  # hold_span = 1 + 1.1 + 0.1 = 2.2


def test_every_transition_outside_the_table_raises() -> None:
    for old in State:
        for new in State:
            if new in TRANSITIONS[old]:
                check_transition(old, new)
            else:
                with pytest.raises(ElectionError, match=f"{old.value} -> {new.value}"):
                    check_transition(old, new)
    # The ones that matter most: a fenced director never leads without rejoining first,
    # a standby never steps "down" into nothing.
    with pytest.raises(ElectionError):
        check_transition(State.FENCED, State.ACTIVE)
    with pytest.raises(ElectionError):
        check_transition(State.CANDIDATE, State.CANDIDATE)


def test_a_session_too_short_for_the_lifetime_is_refused() -> None:
    # 1 s lifetime + 1.1 s kernel lateness + 2 x 0.1 s margin + 2 x 0.1 s of round trips.
    assert Timing(session_timeout=9).shortest_session == pytest.approx(2.5)
    for short in (1.0, 2.0, 2.5):
        with pytest.raises(ElectionError, match="too short"):
            Timing(session_timeout=short).check()
    Timing(session_timeout=2.6).check()


def test_the_kernel_lateness_bound_is_a_second_and_more() -> None:
    # check_lifetime is never rescheduled sooner than ADDRCONF_TIMER_FUZZ_MAX (1 s).
    assert Timing(session_timeout=3.0).kernel_slack >= 1.0


def peer(now: float, *, age: float = 0.0, vouch: bool = True, state: str = "STANDBY",
         holding: bool = False, ack: int = 0, epoch: int = 3) -> Heard:
    return Heard(Beat("lb2", state, epoch, True, holding, ack, 1, vouch), now - age)


NOW = 100.0


@pytest.mark.parametrize(
    ("case", "state", "confirmed_until", "heard", "promise_until", "expect"),
    [
        ("confirmed by zk", State.ACTIVE, NOW + 2.2, None, -math.inf, "zk"),
        ("zk confirmation too short for a full lifetime", State.ACTIVE, NOW + 2.1, None,
         -math.inf, None),
        ("not the leader", State.STANDBY, NOW + 5, None, -math.inf, None),
        ("fenced", State.FENCED, NOW + 5, None, -math.inf, None),
        ("zk gone, peer fresh and vouching", State.ACTIVE, NOW, peer(NOW), -math.inf, "peer"),
        ("zk gone, peer does not vouch", State.ACTIVE, NOW, peer(NOW, vouch=False),
         -math.inf, None),
        ("zk gone, peer beat stale", State.ACTIVE, NOW, peer(NOW, age=1.1), -math.inf, None),
        ("zk gone, peer claims active", State.ACTIVE, NOW, peer(NOW, state="ACTIVE"),
         -math.inf, None),
        ("zk gone, an older leader (epoch 3) still holds", State.ACTIVE, NOW,
         peer(NOW, holding=True), -math.inf, "wait"),
        ("confirmed, but an older leader says it still holds", State.ACTIVE, NOW + 5,
         peer(NOW, holding=True, vouch=False, state="ACTIVE"), -math.inf, "wait"),
        ("... until that word is stale", State.ACTIVE, NOW + 5,
         peer(NOW, holding=True, vouch=False, state="ACTIVE", age=1.1), -math.inf, "zk"),
        ("new leader inside its promise", State.ACTIVE, NOW + 5, peer(NOW, holding=True),
         NOW + 1, "wait"),
        ("new leader, the old one acknowledged our epoch", State.ACTIVE, NOW + 5,
         peer(NOW, state="ACTIVE", ack=7), NOW + 1, "zk"),
        ("new leader, the old one says it is active", State.ACTIVE, NOW + 5,
         peer(NOW, state="ACTIVE"), NOW + 1, "wait"),
        ("new leader, the old one stepped down and holds nothing", State.ACTIVE, NOW + 5,
         peer(NOW, state="CANDIDATE"), NOW + 1, "zk"),
        ("new leader, that word is stale", State.ACTIVE, NOW + 5,
         peer(NOW, state="CANDIDATE", age=1.1), NOW + 1, "wait"),
        ("new leader, ack but the peer still holds", State.ACTIVE, NOW + 5,
         peer(NOW, ack=7, holding=True), NOW + 1, "wait"),
        ("new leader, promise over", State.ACTIVE, NOW + 5, None, NOW - 0.01, "zk"),
    ],
)
def test_hold_permission(case, state, confirmed_until, heard, promise_until, expect):  # type: ignore[no-untyped-def]
    got = hold_permission(NOW, state=state, epoch=7, confirmed_until=confirmed_until,
                          peer=heard, promise_until=promise_until, timing=T)
    assert got == expect, case


@pytest.mark.parametrize(
    ("case", "peer_active_epoch", "confirmed_until", "heard", "expect"),
    [
        ("a higher epoch claimed ACTIVE outranks zk", 8, NOW + 5, None, None),
        ("... and the peer's vouch", 8, NOW, peer(NOW), None),
        ("the other rejoined the queue (a higher epoch, not ACTIVE) but still holds: wait",
         0, NOW + 5, peer(NOW, holding=True, epoch=9), "wait"),
        ("... until it says it holds nothing", 0, NOW + 5, peer(NOW, epoch=9), "zk"),
        ("our own epoch claimed by the other is no demotion", 7, NOW + 5, None, "zk"),
        ("a lower epoch neither", 6, NOW + 5, None, "zk"),
    ],
)
def test_a_higher_epoch_demotes_whatever_the_permission(case, peer_active_epoch,  # type: ignore[no-untyped-def]
                                                       confirmed_until, heard, expect):
    got = hold_permission(NOW, state=State.ACTIVE, epoch=7, confirmed_until=confirmed_until,
                          peer=heard, promise_until=-math.inf, timing=T,
                          peer_active_epoch=peer_active_epoch)
    assert got == expect, case
