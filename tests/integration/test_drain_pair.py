"""Maintenance drains and notify hooks on the director pair: real ZooKeeper, two directors
(keeper and worker processes) in namespaces on the file-backed fake IPVS (held to the kernel
by tests/contract), the ``lvsctl realserver`` commands as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lvsctl.core.model import DestKey, Protocol, ServiceKey
from lvsctl.testbed.director_pair import PYTHON, ROOT, ZK_ADDR, DirectorPair, cluster_yaml
from lvsctl.testbed.fake_ipvs import FakeIpvs

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

ZK_SERVICE = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 2181)
ZK1 = DestKey(ZK_ADDR, 2181)


def hook_script(workdir: Path) -> Path:
    """A notify hook that appends its environment, one JSON line, to events.jsonl."""
    path = workdir / "hook.py"
    path.write_text(f"#!{sys.executable}\nimport json, os\n"
                    f"with open({str(workdir / 'events.jsonl')!r}, 'a') as f:\n"
                    "    f.write(json.dumps({k: v for k, v in os.environ.items()"
                    " if k.startswith('LVSCTL_')}) + '\\n')\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def pair(lab) -> Iterator[DirectorPair]:  # type: ignore[no-untyped-def]
    made = DirectorPair(lab)
    try:
        hook = hook_script(made.workdir)
        text = cluster_yaml(auth=str(made.workdir / "zk.secret")) + (
            f"notify:\n  - {{name: record, command: [{hook}], timeout: 20s}}\n")
        made.setup(text)
        made.cluster_text = text  # type: ignore[attr-defined]
        made.start("lb1")
        made.wait_holder("lb1", 20)
        made.start("lb2")
        made.wait(lambda: (made.status("lb2") or {}).get("role") == "STANDBY", 20,
                  "lb2 standby")
        yield made
    finally:
        made.close()


def lvsctl(pair: DirectorPair, ns: str, *args: str, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pair.ns[ns].argv([PYTHON, "-m", "lvsctl", *args, "--node",
                          str(pair.node_file(ns))]),
        capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def zk1_weight(pair: DirectorPair, name: str) -> int | None:
    service = FakeIpvs(pair.ipvs_file(name)).observe().get(ZK_SERVICE)
    dest = service.dests.get(ZK1) if service else None
    return None if dest is None else dest.weight


def both_weights(pair: DirectorPair, weight: int, what: str) -> None:
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: zk1_weight(pair, n) == weight, 15, f"{name}: {what}")


def events(pair: DirectorPair) -> list[dict[str, Any]]:
    path = pair.workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_drain_wait_enable_and_the_drain_survives_a_stepdown_and_a_restart(
        pair: DirectorPair) -> None:
    both_weights(pair, 1, "zk1 in the table")
    # Unknown names: one line, non-zero, nothing written.
    for args, why in ((["drain", "nosuch"], "real server 'nosuch' is not in cluster t"),
                      (["drain", "zk1", "--service", "www"],
                       "real server 'zk1' is not in service 'www'"),
                      (["enable", "zk1", "--service", "nope"], "service 'nope' is not in")):
        proc = lvsctl(pair, "lb1", "realserver", *args)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert why in proc.stderr, proc.stderr

    # An open connection on the active: --wait follows it until it closes.
    FakeIpvs(pair.ipvs_file("lb1")).set_conns(ZK_SERVICE, ZK1, 2, 5)
    output = pair.workdir / "wait.out"
    with open(output, "w") as sink:
        waiting = subprocess.Popen(
            pair.ns["lb1"].argv([PYTHON, "-m", "lvsctl", "realserver", "drain", "zk1",
                                 "--reason", "kernel upgrade", "--wait", "--timeout", "120",
                                 "--node", str(pair.node_file("lb1"))]),
            stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT))
    try:
        both_weights(pair, 0, "zk1 drained (weight 0)")
        pair.wait(lambda: "2 active connections" in output.read_text(), 30,
                  "--wait to report 2 active connections")
        assert waiting.poll() is None  # still waiting: the connection is open
        FakeIpvs(pair.ipvs_file("lb1")).set_conns(ZK_SERVICE, ZK1, 0, 5)
        waiting.wait(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    out = output.read_text()
    assert waiting.returncode == 0, out
    assert "zk1 drained in every service (zk): kernel upgrade" in out
    assert "zk1: 2 active connections (zk 2) on lb1" in out
    assert "zk1 has no active connection left" in out
    assert zk1_weight(pair, "lb1") == 0  # kept: only new connections stay away

    # list: the active's view, with the kernel's figures.
    listed = json.loads(lvsctl(pair, "lb1", "realserver", "list", "--json").stdout)
    assert listed["director"] == "lb1"
    row = next(r for r in listed["realservers"] if r["realserver"] == "zk1")
    assert (row["weight"], row["effective_weight"], row["kernel_weight"]) == (1, 0, 0)
    assert (row["active_conns"], row["inactive_conns"]) == (0, 5)
    assert row["override"]["reason"] == "kernel upgrade"
    status = json.loads(lvsctl(pair, "lb1", "status", "--json").stdout)
    assert [o["realserver"] for o in status["overrides"]] == ["zk1"]
    zk_rows = [s for s in status["directors"]["lb1"]["services"] if s["name"] == "zk"]
    assert zk_rows[0]["realservers"][0]["override"]["reason"] == "kernel upgrade"

    # A timeout is one line and exit 1; the drain stays.
    FakeIpvs(pair.ipvs_file("lb1")).set_conns(ZK_SERVICE, ZK1, 1, 0)
    proc = lvsctl(pair, "lb1", "realserver", "drain", "zk1", "--wait", "--timeout", "2")
    assert proc.returncode == 1 and "still not drained after 2 s" in proc.stderr, proc.stderr
    FakeIpvs(pair.ipvs_file("lb1")).set_conns(ZK_SERVICE, ZK1, 0, 0)

    # Failover: the new active holds the drain; a restarted director too.
    code, _ = pair.post("lb1", "stepdown")
    assert code == 200
    pair.wait_holder("lb2", 15)
    pair.signal("lb1", signal.SIGTERM)
    assert pair.procs["lb1"].wait(timeout=20) == 0
    pair.start("lb1")
    pair.wait(lambda: ((pair.status("lb1") or {}).get("last_reconcile") or {}).get("observed")
              is True, 30, "lb1 back, one pass made")
    time.sleep(2 * 2.0)  # two more reconcile intervals: a forgotten drain would be undone
    assert zk1_weight(pair, "lb1") == 0 and zk1_weight(pair, "lb2") == 0
    listed = json.loads(lvsctl(pair, "lb2", "realserver", "list", "--json").stdout)
    assert listed["director"] == "lb2"

    proc = lvsctl(pair, "lb2", "realserver", "enable", "zk1")
    assert proc.returncode == 0 and "zk1 enabled" in proc.stdout, proc.stderr
    both_weights(pair, 1, "zk1 back at weight 1")
    again = lvsctl(pair, "lb2", "realserver", "enable", "zk1")
    assert again.returncode == 0 and "zk1 was not drained" in again.stdout

    # The hook saw each director's events once, in order.
    pair.wait(lambda: any(e["LVSCTL_EVENT"] == "director_active" and
                          e["LVSCTL_DIRECTOR"] == "lb2" for e in events(pair)), 20,
              "lb2's director_active event")
    seen = events(pair)
    for name in ("lb1", "lb2"):
        # Once each and in order: 1, 2, 3, ... per worker process (lb1 was restarted).
        seqs = [int(e["LVSCTL_SEQ"]) for e in seen if e["LVSCTL_DIRECTOR"] == name]
        runs: list[list[int]] = []
        for seq in seqs:
            if seq == 1:
                runs.append([])
            runs[-1].append(seq)
        assert all(run == list(range(1, len(run) + 1)) for run in runs), seqs
        assert len(runs) == (2 if name == "lb1" else 1), seqs
    lb2 = [e["LVSCTL_EVENT"] for e in seen if e["LVSCTL_DIRECTOR"] == "lb2"]
    assert lb2[:2] == ["config_accepted", "director_standby"], lb2
    assert lb2.index("director_active") > lb2.index("director_standby")
    down = [e for e in seen if e["LVSCTL_EVENT"] == "realserver_down"]
    assert {(e["LVSCTL_DIRECTOR"], e["LVSCTL_SERVICE"], e["LVSCTL_REALSERVER"])
            for e in down} >= {("lb1", "www", "web1"), ("lb2", "www", "web1")}
    active = next(e for e in seen if e["LVSCTL_EVENT"] == "director_active"
                  and e["LVSCTL_DIRECTOR"] == "lb2")
    assert active["LVSCTL_ROLE"] == "ACTIVE" and int(active["LVSCTL_EPOCH"]) >= 1
    assert active["LVSCTL_CLUSTER"] == "t" and active["LVSCTL_TIME"].endswith("Z")

