"""The lease bench's instrument: the renewal watch against renewals made at a known cadence.

The test renews an address itself (pyroute2 ``replace`` with lifetimes, as a director does),
pauses once, then stops: the watch must see every renewal, report the pause as the longest
gap (agreeing with the test's own clock to within the kernel stamps' resolution, whatever the
machine's load), report the lapse when the kernel lets the address expire, and tell that
expiry from a removal.
"""

from __future__ import annotations

import itertools
import time

import pytest
from pyroute2 import IPRoute

from lvsctl.testbed.netns import entered
from lvsctl.testbed.renewals import (
    STAMP_RESOLUTION,
    AddrEvent,
    RenewalWatch,
    subscribe,
    window_figures,
)

pytestmark = pytest.mark.netns

ADDRESS = "192.0.2.50"
OTHER = "192.0.2.51"
CADENCE = 0.1
PAUSE = 0.7  # under the 2 s lifetime: a gap, not a lapse
LIFETIME = 2
# Each renewal happened somewhere between the test's clock readings around its call; the
# watch places it from 10 ms kernel stamps and an offset good to one more step.
SLACK = 3 * STAMP_RESOLUTION


def renew_at_cadence(ipr: IPRoute, index: int, address: str, count: int,
                     pause_after: int) -> list[tuple[float, float]]:
    """``count`` renewals every CADENCE s, with PAUSE s more after the ``pause_after``-th;
    the (before, after) monotonic readings around each call."""
    calls = []
    for i in range(count):
        before = time.monotonic()
        ipr.addr("replace", index=index, address=address, prefixlen=32,
                 IFA_CACHEINFO={"ifa_preferred": LIFETIME, "ifa_valid": LIFETIME})
        calls.append((before, time.monotonic()))
        time.sleep(CADENCE + (PAUSE if i + 1 == pause_after else 0.0))
    return calls


def wait_for(predicate, limit: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_watch_reports_the_pause_as_the_longest_gap_and_the_expiry_as_a_lapse(lab):  # type: ignore[no-untyped-def]
    ns = lab.netns("lw")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")
    with entered(ns.name):
        watch = RenewalWatch(subscribe(), frozenset({ADDRESS})).start()
        ipr = IPRoute()
        try:
            index = ipr.link_lookup(ifname="v0")[0]
            # An address nobody watches: its events must not count.
            ipr.addr("add", index=index, address=OTHER, prefixlen=32)
            calls = renew_at_cadence(ipr, index, ADDRESS, count=12, pause_after=5)
            stopped = time.monotonic()
            lapsed = wait_for(lambda: any(ev.kind == "del" for ev in watch.events),
                              LIFETIME + 8.0)
            # Then a removal, as a director releasing the VIP: a lapse, but no expiry.
            renew_at_cadence(ipr, index, ADDRESS, count=1, pause_after=0)
            ipr.addr("del", index=index, address=ADDRESS, prefixlen=32)
            removed = wait_for(lambda: sum(ev.kind == "del" for ev in watch.events) == 2, 10.0)
        finally:
            ipr.close()
            events = watch.stop()
    end = time.monotonic()
    assert lapsed, f"no RTM_DELADDR within {LIFETIME + 8.0} s of the last renewal: {events}"
    assert removed, f"no RTM_DELADDR for the removal: {events}"
    assert {ev.address for ev in events} == {ADDRESS}
    assert [ev.kind for ev in events] == ["renew"] * 12 + ["del", "renew", "del"]

    # The cadence alone (its 12 renewals), up to when the test stopped renewing.
    figures = window_figures(events[:12], ADDRESS, calls[0][0] - SLACK, stopped,
                             observed_until=stopped)
    assert figures.renewals == 12
    # The test's own bounds on each gap: from the earliest to the latest moment either
    # renewal could have happened.
    shortest = [b[0] - a[1] for a, b in itertools.pairwise(calls)]
    longest = [b[1] - a[0] for a, b in itertools.pairwise(calls)]
    assert max(shortest) >= PAUSE
    assert max(shortest) - SLACK <= figures.longest_ms / 1000 <= max(longest) + SLACK

    whole = window_figures(events, ADDRESS, calls[0][0], end, observed_until=end)
    assert whole.lapses == 2
    assert whole.expired == 1  # the kernel's own expiry; the removal had lifetime left
    # From the last cadence renewal to the re-add: at least the lifetime the kernel waited.
    assert whole.longest_ms / 1000 >= LIFETIME - SLACK


def ev(kind: str, t: float, address: str = ADDRESS) -> AddrEvent:
    # Received 5 ms after the kernel stamp, as a prompt watcher would.
    return AddrEvent(kind, address, t + 0.005, t, LIFETIME)


@pytest.mark.parametrize(("window", "renewals", "longest_ms", "lapses"), [
    ((0.0, 0.45), 3, 300.0, 0),   # renewals at 0, .1, .2: the .2-.5 gap straddles the end
    ((0.6, 0.9), 0, 500.0, 0),    # no renewal inside: the .5-1.0 gap covers the window
    ((0.95, 2.0), 2, 1900.0, 0),  # the gap after the last renewal (1.1) stays open
    ((1.2, 3.0), 0, 1900.0, 1),   # ... and the address expired inside this window
    ((2.5, 3.0), 0, 1900.0, 1),   # gone before this window opened: still a lapse in it
])
def test_window_figures_count_every_gap_that_touches_the_window(  # type: ignore[no-untyped-def]
        window, renewals, longest_ms, lapses):
    events = [ev("renew", t) for t in (0.0, 0.1, 0.2, 0.5, 1.0, 1.1)]
    events.append(AddrEvent("del", ADDRESS, 2.2, 1.1, 0))
    figures = window_figures(events, ADDRESS, *window, observed_until=3.005)
    assert figures.renewals == renewals
    assert figures.longest_ms == pytest.approx(longest_ms, abs=0.01)
    assert figures.lapses == lapses
