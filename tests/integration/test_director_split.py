"""The director's two failure domains as processes: the keeper (leadership, VIP leases) and
the worker it supervises (config, checks, IPVS, API, records), in the pair's namespaces.

What a worker meets — a crash, a hang — must never stop the VIP's renewals: the address is
observed with netlink events in the director's namespace, and a lease of 1 s that was not
renewed would show as a deletion. The keeper's death must take the worker along.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lvsctl.testbed.director_pair import PYTHON, VIP, DirectorPair, process_state

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

SESSION = 3.0  # as test_director_pair.py


@pytest.fixture
def pair(lab):  # type: ignore[no-untyped-def]
    made = DirectorPair(lab, session=SESSION)
    try:
        made.setup()
        made.start("lb1")
        made.wait_holder("lb1", 20)
        made.start("lb2")
        made.wait(lambda: (made.status("lb2") or {}).get("role") == "STANDBY", 20, "lb2 standby")
        yield made
    finally:
        made.close()


def gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z")


def worker_answers(pair: DirectorPair, name: str, old_worker: int) -> bool:
    new = pair.worker_pid(name)
    st = pair.status(name)
    return new is not None and new != old_worker and st is not None and st["role"] == "ACTIVE"


def assert_held_throughout(pair: DirectorPair, since: float) -> None:
    # One interval from before `since` up to now: never deleted, so renewed within every
    # lease; and the standby never took it.
    intervals = pair.intervals_since("lb1", since)
    assert len(intervals) == 1 and intervals[0][0] < since, intervals
    assert pair.holder() == "lb1"
    assert pair.overlap() == 0.0


def test_worker_killed_while_active_the_vip_stays_and_the_worker_comes_back(
        pair: DirectorPair) -> None:
    worker = pair.worker_pid("lb1")
    assert worker is not None
    start = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    pair.wait(lambda: worker_answers(pair, "lb1", worker), 60, "a new lb1 worker answering")
    time.sleep(2 * SESSION)  # well past the lease and the session timeout
    assert_held_throughout(pair, start)
    assert pair.procs["lb1"].poll() is None
    assert '"worker_lost"' in pair.log("lb1")
    st = pair.status("lb1")
    assert st is not None and VIP in st["vips"] and st["config"]["error"] == ""
    assert (pair.status("lb2") or {}).get("role") == "STANDBY"


def test_worker_stopped_renewals_go_on_and_the_keeper_replaces_it(pair: DirectorPair) -> None:
    worker = pair.worker_pid("lb1")
    assert worker is not None
    start = time.monotonic()
    os.kill(worker, signal.SIGSTOP)
    try:
        # The keeper's heartbeat timeout is 30 s: the stopped worker is killed, a new one runs.
        pair.wait(lambda: gone(worker), 90, "the stopped worker to be killed")
        pair.wait(lambda: worker_answers(pair, "lb1", worker), 60, "a new lb1 worker answering")
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGCONT)
    assert_held_throughout(pair, start)
    assert "sent nothing for" in pair.log("lb1")


def test_keeper_killed_the_worker_exits_and_the_standby_takes_over(pair: DirectorPair) -> None:
    worker = pair.worker_pid("lb1")
    assert worker is not None
    pair.signal("lb1", signal.SIGKILL)
    pair.wait(lambda: gone(worker), 30, "lb1's worker to exit after its keeper")
    pair.wait_holder("lb2", 15)
    assert pair.overlap() == 0.0


def test_graceful_stop_stops_the_worker_too(pair: DirectorPair) -> None:
    worker = pair.worker_pid("lb1")
    assert worker is not None
    pair.signal("lb1", signal.SIGTERM)
    assert pair.procs["lb1"].wait(timeout=15) == 0
    assert gone(worker)
    pair.wait_holder("lb2", 5)
    assert pair.overlap() == 0.0


def test_director_run_execs_the_keeper_which_reports_a_bad_node_file_in_one_line(
        tmp_path: Path) -> None:
    missing = tmp_path / "no-such.secret"
    node = tmp_path / "node.yaml"
    node.write_text("cluster: t\ndirector: lb1\nzookeeper: {hosts: ['127.0.0.1:1']}\n"
                    f"peer: {{secret: {missing}}}\n")
    proc = subprocess.run([PYTHON, "-m", "lvsctl", "director", "run", "--node", str(node)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (f"{missing}: cannot read the peer secret: "
                                   "No such file or directory")


def test_a_crashed_director_restarts_and_rejoins_as_standby(pair: DirectorPair) -> None:
    code, _ = pair.post("lb1", "crash")
    assert code == 200
    assert pair.procs["lb1"].wait(timeout=10) == -signal.SIGKILL
    pair.wait_holder("lb2", 15)
    pair.start("lb1")
    pair.wait(lambda: (pair.status("lb1") or {}).get("role") == "STANDBY", 60,
              "lb1 back as standby")
    assert pair.holder() == "lb2"
    assert pair.overlap() == 0.0
