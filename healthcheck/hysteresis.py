"""Rise/fall hysteresis: a pure ``next_state(state, result, now)`` over an enforced table.

A target starts UNKNOWN. Its first result decides at once (a director that starts cold should
not keep every real server out for ``rise x interval``; a standby that takes over already has
decided states). After that, ``fall`` consecutive failures take an UP target DOWN and ``rise``
consecutive successes bring a DOWN target UP; a result of the other kind resets the count.

    state    result   counter after        next state
    -------  -------  -------------------  ----------------------------------
    UNKNOWN  ok       -                    UP
    UNKNOWN  fail     -                    DOWN
    UP       ok       failures = 0         UP   (weight follows a dynamic check)
    UP       fail     failures + 1         DOWN when failures reaches fall, else UP
    DOWN     fail     successes = 0        DOWN
    DOWN     ok       successes + 1        UP   when successes reaches rise, else DOWN

Nothing ever goes back to UNKNOWN: a changed check spec is a new target with a new state.
The time of each transition comes from the caller (an injected clock), never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from lvsctl.core.errors import StateError
from lvsctl.core.model import CheckTiming, Health
from lvsctl.healthcheck.result import CheckResult


class Status(Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


# Every transition that may happen; anything else is a bug and raises StateError.
TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset({
    (Status.UNKNOWN, Status.UNKNOWN),  # only as "no result yet": next_state never returns it
    (Status.UNKNOWN, Status.UP),
    (Status.UNKNOWN, Status.DOWN),
    (Status.UP, Status.UP),
    (Status.UP, Status.DOWN),
    (Status.DOWN, Status.DOWN),
    (Status.DOWN, Status.UP),
})


def check_transition(old: Status, new: Status) -> None:
    """Raises StateError unless ``old -> new`` is in TRANSITIONS."""
    if (old, new) not in TRANSITIONS:
        raise StateError(f"impossible health transition {old.value} -> {new.value}")


@dataclass(frozen=True)
class State:
    """Where one target stands.

    ``successes``/``failures`` count consecutive results against the current status;
    ``since`` is when the status last changed; ``reason`` is the result that changed it (or,
    while DOWN, the latest failure); ``weight`` is the dynamic weight while UP.
    """

    status: Status = Status.UNKNOWN
    successes: int = 0
    failures: int = 0
    since: float = 0.0
    reason: str = "no result yet"
    weight: int | None = None

    @property
    def health(self) -> Health | None:
        """What the reconciler is told; None while no result has decided anything."""
        if self.status is Status.UNKNOWN:
            return None
        return Health(self.status is Status.UP, self.weight if self.status is Status.UP else None,
                      self.reason)


def next_state(state: State, result: CheckResult, timing: CheckTiming, now: float) -> State:
    """The state after ``result``; ``now`` (injected clock) stamps a transition."""
    if state.status is Status.UNKNOWN:
        status = Status.UP if result.healthy else Status.DOWN
        new = State(status, int(result.healthy), int(not result.healthy), now, result.reason,
                    result.weight if result.healthy else None)
    elif state.status is Status.UP:
        if result.healthy:
            new = replace(state, successes=state.successes + 1, failures=0, weight=result.weight)
            if result.weight != state.weight:
                new = replace(new, reason=result.reason)
        elif state.failures + 1 >= timing.fall:
            new = State(Status.DOWN, 0, state.failures + 1, now, result.reason, None)
        else:
            new = replace(state, failures=state.failures + 1, successes=0)
    elif result.healthy:
        if state.successes + 1 >= timing.rise:
            new = State(Status.UP, state.successes + 1, 0, now, result.reason, result.weight)
        else:
            new = replace(state, successes=state.successes + 1, failures=0)
    else:
        # Still DOWN: keep the latest reason so an operator sees why it is down now.
        new = replace(state, successes=0, failures=state.failures + 1, reason=result.reason)
    check_transition(state.status, new.status)
    return new
