"""The drill's pre-round health check: a pair fit for a drill, and every way it is not."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lvsctl.failover.drill import Drill, DrillError, Expected, check_health, pair_state
from lvsctl.failover.timeline import PairState

VIP, VIP6 = "192.0.2.10", "2001:db8::10"
EXPECTED = Expected(("lb1", "lb2"), (VIP, VIP6), {"www": frozenset({"web1", "web2"})}, 2.0,
                    checked={"www": frozenset({"web2"})})


def status(name: str, role: str, epoch: int, vips: list[str]) -> dict[str, Any]:
    """A director's /status as the worker returns it (the keys the drill reads)."""
    return {
        "director": name, "cluster": "t", "role": role, "epoch": epoch, "since": 1.0,
        "zookeeper": "connected", "vips": vips,
        "config": {"version": "/lvsctl/t/config@v3", "error": ""},
        "services": [{"name": "www", "service": "tcp 192.0.2.10:80", "forwarding": "dr",
                      "realservers": [{"name": "web1", "address": "192.0.2.21:80", "weight": 1,
                                       "health": None},
                                      {"name": "web2", "address": "192.0.2.22:80", "weight": 1,
                                       "health": {"healthy": True, "weight": 1,
                                                  "reason": "HTTP 200"}}]}],
        "api": "127.0.0.1:9180", "transitions": [],
    }


HEALTHY = {"lb1": status("lb1", "ACTIVE", 7, [VIP, VIP6]), "lb2": status("lb2", "STANDBY", 8, [])}


def test_a_healthy_pair() -> None:
    state, problems = check_health(HEALTHY, EXPECTED)
    assert problems == []
    assert state == PairState({"lb1": "ACTIVE", "lb2": "STANDBY"}, 7)
    assert state.active == "lb1" and state.standby == "lb2" and state.whole


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        d = d[key]
    d[last] = value


@pytest.mark.parametrize(("changes", "expected"), [
    ({"lb2": None}, ["lb2 does not answer (not running, or its API is unreachable)"]),
    ({"lb2.zookeeper": "disconnected"}, ["lb2 cannot reach ZooKeeper"]),
    ({"lb1.config.error": "services[0].port: too big"},
     ["lb1 rejected the config: services[0].port: too big"]),
    ({"lb2.config.version": "/lvsctl/t/config@v2"},
     ["the directors run different configs (lb1 /lvsctl/t/config@v3, lb2 /lvsctl/t/config@v2)"]),
    ({"lb1.role": "STANDBY", "lb1.vips": []}, ["no director is active"]),
    ({"lb2.role": "ACTIVE", "lb2.vips": [VIP, VIP6]}, ["both lb1 and lb2 say they are active"]),
    ({"lb1.vips": [VIP]}, ["lb1 is active but does not hold VIP 2001:db8::10"]),
    ({"lb2.vips": [VIP]}, ["lb2 is STANDBY but holds VIP 192.0.2.10"]),
    ({"lb2.role": "FENCED"}, ["lb2 is FENCED, not STANDBY"]),
    ({"lb2.services": []}, ["lb2 does not know real server(s) web1, web2 of service www"]),
])
def test_an_unfit_pair_says_why(changes: dict[str, Any], expected: list[str]) -> None:
    statuses: dict[str, Any] = copy.deepcopy(HEALTHY)
    for path, value in changes.items():
        if "." in path:
            _set(statuses, path, value)
        else:
            statuses[path] = value
    _, problems = check_health(statuses, EXPECTED)
    assert problems == expected


def test_a_checked_real_server_without_a_health_result_is_not_known_yet() -> None:
    statuses = copy.deepcopy(HEALTHY)
    # web1 has no check: no result ever; web2 has one: not yet.
    statuses["lb1"]["services"][0]["realservers"][1]["health"] = None
    _, problems = check_health(statuses, EXPECTED)
    assert problems == ["lb1 has no health result yet for web2 of service www"]
    statuses["lb1"]["services"][0]["realservers"][1]["health"] = {"healthy": False}
    assert check_health(statuses, EXPECTED)[1] == []  # known, even if down


def test_pair_state_marks_silent_directors_down() -> None:
    state = pair_state({"lb1": HEALTHY["lb1"], "lb2": None}, ("lb1", "lb2"))
    assert state.roles == {"lb1": "ACTIVE", "lb2": "DOWN"} and not state.whole


def test_partitions_need_the_lab_and_kinds_are_checked() -> None:
    with pytest.raises(DrillError, match="--kind zk-partition needs the lab"):
        Drill(directors=None, expected=EXPECTED, kind="zk-partition")  # type: ignore[arg-type]
    with pytest.raises(DrillError, match="expected one of stepdown, crash"):
        Drill(directors=None, expected=EXPECTED, kind="reboot")  # type: ignore[arg-type]


def test_status_observations_overlap_only_when_both_were_seen_holding_together() -> None:
    from lvsctl.failover.drill import StatusObserver
    from lvsctl.failover.timeline import Hold, overlaps

    obs = StatusObserver(directors=None, names=["lb1", "lb2"])  # type: ignore[arg-type]
    # Polled in turn every 50 ms: lb1 lets go between its polls at 1.00 and 1.05, lb2 is seen
    # holding at 1.03 — a poll later than lb1's last sighting, not at the same time.
    for at, name, held in [(1.00, "lb1", {VIP}), (1.01, "lb2", set()),
                           (1.05, "lb1", set()), (1.03, "lb2", {VIP}),
                           (1.10, "lb1", set()), (1.08, "lb2", {VIP})]:
        obs.observe(name, held, at)
    holds = obs.stop()
    assert holds == [Hold("lb1", VIP, 1.00, 1.00), Hold("lb2", VIP, 1.03)]
    assert overlaps(holds, 2.0) == []
    # Seen holding at the same time, poll after poll: an overlap.
    obs2 = StatusObserver(directors=None, names=["lb1", "lb2"])  # type: ignore[arg-type]
    for at, name, held in [(1.00, "lb1", {VIP}), (1.01, "lb2", {VIP}), (1.05, "lb1", {VIP}),
                           (1.06, "lb2", {VIP}), (1.10, "lb1", {VIP}), (1.11, "lb2", set())]:
        obs2.observe(name, held, at)
    (found,) = overlaps(obs2.stop(), 2.0)
    assert (found.start, found.end) == (1.01, 1.06)
