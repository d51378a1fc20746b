"""Failover drills on the director pair: real ZooKeeper, two ``lvsctl director run`` processes
in namespaces, a client probing the VIP from a third, VIPs watched in the kernel.

Every kind passes three rounds; an unhealthy pair is refused; a VIP added to the standby behind
its back is reported as an overlap, proving the detector works.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsctl.failover.drill import Drill, DrillRefused
from lvsctl.failover.probe import Target
from lvsctl.failover.report import DrillReport, write_html
from lvsctl.testbed.director_pair import VIP
from tests.support import chromium
from tests.support.drill_pair import SERVICE_PORT, DrillPair, ReachablePair

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]


@pytest.fixture
def drill_pair(lab, tmp_path: Path) -> Iterator[DrillPair]:  # type: ignore[no-untyped-def]
    # The pair's files live in this test's own tmp_path (another run's clean-up of /tmp once
    # took a pair's folder away mid-test).
    workdir = tmp_path / "pair"
    workdir.mkdir()
    pair = ReachablePair(lab, workdir=workdir)
    try:
        pair.setup()
        made = DrillPair(pair).setup()
        pair.start("lb1")
        pair.wait_holder("lb1", 20)
        pair.start("lb2")
        pair.wait(lambda: (pair.status("lb2") or {}).get("role") == "STANDBY", 20,
                  "lb2 standby")
        # Both directors must have judged every checked real server before a first round.
        probe = Drill(directors=made.directors(), expected=made.expected, kind="stepdown")
        pair.wait(lambda: not probe.health()[1], 30, "a healthy pair")
        yield made
    finally:
        pair.close()


def drill(dp: DrillPair, kind: str, rounds: int = 3, **kw: object) -> Drill:
    return Drill(directors=dp.directors(), expected=dp.expected, kind=kind, rounds=rounds,
                 cluster="t", lab=dp.lab(), probe=Target.parse(f"tcp://{VIP}:{SERVICE_PORT}"),
                 wait=20, **kw)  # type: ignore[arg-type]


def explain(report: DrillReport, dp: DrillPair) -> str:
    return json.dumps(report.to_json(), indent=1)[:6000] + "\n" + "\n".join(
        f"--- {n}\n{dp.pair.log(n)[-2000:]}" for n in ("lb1", "lb2"))


@pytest.mark.parametrize("kind", ["stepdown", "crash", "freeze", "zk-partition",
                                  "peer-partition"])
def test_every_kind_passes_three_rounds(drill_pair: DrillPair, kind: str) -> None:
    report = drill(drill_pair, kind).run()
    assert report.passed, explain(report, drill_pair)
    assert len(report.results) == 3
    for result in report.results:
        assert result.overlap == 0
        assert result.probes > 20 and result.outage is not None
        if kind == "peer-partition":
            assert result.active_after == result.active_before and result.failed_probes == 0
        else:
            assert result.active_after != result.active_before
            assert result.epoch_after > result.epoch_before
            assert result.takeover is not None
            # No client is served again before the new active holds the VIP (after a crash
            # the old one's VIP may still answer until its lease lapses: no outage until then).
            # Both clocks are read by threads that a loaded machine may delay: a 250 ms margin.
            if result.timeline.outages:
                back = result.timeline.outages[-1].end
                assert back >= result.timeline.injected + result.takeover - 0.25
    page = chromium.artifacts() / f"failover-drill-{kind}.html"
    write_html(page, report)  # kept for people to look at, like the screenshot
    dom = chromium.run(page.as_uri(), "--dump-dom")
    assert dom.count('class="timeline"') == 3


def test_a_drill_on_an_unhealthy_pair_refuses(drill_pair: DrillPair) -> None:
    pair = drill_pair.pair
    pair.signal("lb2", signal.SIGTERM)
    assert pair.procs["lb2"].wait(timeout=10) == 0
    with pytest.raises(DrillRefused) as caught:
        drill(drill_pair, "stepdown").run()
    assert caught.value.problems == [
        "lb2 does not answer (not running, or its API is unreachable)"]
    assert pair.holder() == "lb1"  # nothing was caused


def test_a_vip_added_to_the_standby_behind_its_back_fails_the_round(
        drill_pair: DrillPair) -> None:
    pair = drill_pair.pair

    def behind_the_back(line: str) -> None:
        # Right before the failure: the standby gets the VIP without any director's doing.
        pair.ns["lb2"].ip("addr", "add", f"{VIP}/32", "dev", "eth0")

    report = drill(drill_pair, "stepdown", rounds=1, on_progress=behind_the_back).run()
    (result,) = report.results
    assert not result.passed
    assert result.reason.startswith(f"VIP {VIP} held by lb1 and lb2 at once for ")
    assert result.overlap > 0
    assert result.timeline.overlaps[0].directors == ("lb1", "lb2")


def test_cli_stepdown_five_rounds_json_from_the_client_host(drill_pair: DrillPair) -> None:
    """The acceptance run: ``lvsctl failover drill --kind stepdown --rounds 5 --json``."""
    pair = drill_pair.pair
    assert drill_pair.client is not None
    argv = drill_pair.client.argv([
        sys.executable, "-m", "lvsctl", "failover", "drill", "--kind", "stepdown",
        "--rounds", "5", "--json", "--probe", f"tcp://{VIP}:{SERVICE_PORT}",
        "--zookeeper", "192.0.2.100:2181", "--cluster", "t",
        "--auth", str(pair.workdir / "zk.secret"), "--token", str(pair.workdir / "api.token"),
        "--report", str(pair.workdir / "report.html"),
    ])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:] + "\n".join(
        f"--- {n}\n{pair.log(n)[-6000:]}" for n in ("lb1", "lb2"))
    data = json.loads(out.stdout)
    assert data["passed"] and len(data["results"]) == 5
    assert all(r["passed"] and r["overlap_s"] == 0 for r in data["results"])
    assert out.stderr.count("PASS") == 5  # a progress line per round


def test_a_director_that_does_not_come_back_fails_the_round_and_stops_the_drill(
        drill_pair: DrillPair) -> None:
    lab = drill_pair.lab()
    lab.restarter = lambda name: None  # the crashed director is not brought back
    made = drill(drill_pair, "crash", rounds=2)
    made.lab, made.wait = lab, 5
    report = made.run()
    (result,) = report.results
    assert not result.passed
    assert result.reason == "the pair is not whole again after the round (lb1 DOWN, lb2 ACTIVE)"
    assert result.active_after == "lb2" and result.overlap == 0
    assert report.refused is not None and report.refused.startswith(
        "before round 2: lb1 does not answer")
    assert not report.passed
