"""Retired services and ``config push --plan`` with real ZooKeeper and two real directors on
the file-backed fake IPVS (lvsctl.testbed.director_pair): a service left out of the file is
deleted from both tables while a service made by hand stays; a director that was down (its
state file lost too) retires it from its own table when it comes back, from its record in
ZooKeeper; a rollback brings a service back and a rollback past it retires it again; and the
plan ``push --plan`` prints is exactly the ops the active director then logs with its epoch.
"""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import pytest

from lvsctl.core.model import Protocol, ServiceKey, ServiceSpec
from lvsctl.director.reconcile import AddService
from lvsctl.testbed.director_pair import PYTHON, ROOT, VIP, DirectorPair, cluster_yaml
from lvsctl.testbed.fake_ipvs import FakeIpvs

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

APP = ServiceKey.inet(Protocol.TCP, VIP, 8080)
HAND = ServiceKey.inet(Protocol.UDP, "198.51.100.1", 53)
APP_SERVICE = "\n".join([
    "  - name: app",
    f"    vip: {VIP}",
    "    port: 8080",
    "    forwarding: dr",
    "    drain_timeout: 5s",
    "    realservers:",
    "      - {name: app1, address: 192.0.2.31}",
    "      - {name: app2, address: 192.0.2.32}",
    "",
])


@pytest.fixture
def pair(lab):  # type: ignore[no-untyped-def]
    made = DirectorPair(lab)
    try:
        made.setup(with_app(made))
        made.start("lb1")
        made.wait_holder("lb1", 20)
        made.start("lb2")
        made.wait(lambda: (made.status("lb2") or {}).get("role") == "STANDBY", 20, "lb2 standby")
        yield made
    finally:
        made.close()


def without_app(pair: DirectorPair) -> str:
    return cluster_yaml(extra_vip6=pair.vip6, auth=str(pair.workdir / "zk.secret"))


def with_app(pair: DirectorPair) -> str:
    return without_app(pair) + APP_SERVICE


def table(pair: DirectorPair, name: str) -> set[ServiceKey]:
    return set(FakeIpvs(pair.ipvs_file(name)).observe())


def lvsctl(pair: DirectorPair, *args: str, where: str = "lb1") -> subprocess.CompletedProcess[str]:
    """``lvsctl ARGS`` in ``where``'s namespace (where its API listens on 127.0.0.1)."""
    proc = subprocess.run(pair.ns[where].argv([PYTHON, "-m", "lvsctl", *args]),
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    return proc


def ipvs_ops(pair: DirectorPair, name: str, after: int) -> list[dict[str, Any]]:
    """The ops ``name``'s worker logged (event ipvs_op) after the log's first ``after`` bytes."""
    out = []
    for line in pair.log(name)[after:].splitlines():
        if '"ipvs_op"' in line:
            event = json.loads(line)
            out.append({"epoch": event["epoch"], **event["ipvs"]})
    return out


def test_a_service_left_out_is_retired_on_both_tables_a_hand_made_one_stays(
        pair: DirectorPair) -> None:
    FakeIpvs(pair.ipvs_file("lb2")).apply(AddService(HAND, ServiceSpec("rr")))
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP in table(pair, n), 20, f"app in {name}'s table")
    epoch = pair.status("lb1")["epoch"]  # type: ignore[index]
    logged = len(pair.log("lb1"))

    path = pair.workdir / "without-app.yaml"
    path.write_text(without_app(pair))
    diff = json.loads(lvsctl(pair, "config", "diff", "--plan", "--json", "--node",
                             str(pair.node_file("lb1")), str(path)).stdout)
    pushed = json.loads(lvsctl(pair, "config", "push", "--plan", "--json", str(path)).stdout)
    planned = pushed["plan"]
    assert planned["basis"]["kind"] == "director" and planned["basis"]["director"] == "lb1"
    assert planned["ops"] == diff["plan"]["ops"]
    assert [(op["op"], op.get("dest", "")) for op in planned["ops"]] == [
        ("delete_dest", "192.0.2.31:8080"), ("delete_dest", "192.0.2.32:8080"),
        ("delete_service", "")]  # idle dests: deleted at once, then the service

    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP not in table(pair, n), 20, f"app gone from {name}")
    assert HAND in table(pair, "lb2")
    # What the active did, as it logged it with its epoch, is what the plan said.
    done = ipvs_ops(pair, "lb1", logged)
    assert [op["text"] for op in done] == [op["text"] for op in planned["ops"]]
    assert {op["epoch"] for op in done} == {epoch}


def test_retired_after_a_restart_without_state_file_and_across_rollbacks(
        pair: DirectorPair) -> None:
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP in table(pair, n), 20, f"app in {name}'s table")
    pair.wait(lambda: "app" in pair.store_script(
        "print(store.managed('lb2').to_json())"), 20, "lb2's managed record names app")
    with_app_version = json.loads(lvsctl(pair, "config", "history", "--json", "--node",
                                         str(pair.node_file("lb1"))).stdout)[0]["version"]
    pair.signal("lb2", signal.SIGTERM)
    pair.procs["lb2"].wait(20)
    (pair.workdir / "lb2" / "t.managed.json").unlink()  # only ZooKeeper remembers now
    pair.push(without_app(pair))
    pair.wait(lambda: APP not in table(pair, "lb1"), 20, "app gone from lb1")
    assert APP in table(pair, "lb2")  # lb2 is down: its table is as it left it
    pair.start("lb2")
    pair.wait(lambda: APP not in table(pair, "lb2"), 30, "app retired by the restarted lb2")

    # A rollback to the version with app brings it back; a rollback past it retires it again.
    node = str(pair.node_file("lb1"))
    lvsctl(pair, "config", "rollback", str(with_app_version), "--node", node)
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP in table(pair, n), 20, f"app back in {name}'s table")
    lvsctl(pair, "config", "rollback", str(with_app_version + 1), "--node", node)
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP not in table(pair, n), 20, f"app retired from {name}")


def test_after_a_failover_the_new_active_plans_and_both_retire(pair: DirectorPair) -> None:
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP in table(pair, n), 20, f"app in {name}'s table")
    status, body = pair.post("lb1", "stepdown")
    assert status == 200, body
    pair.wait_holder("lb2", 20)
    pair.wait(lambda: (pair.status("lb2") or {}).get("role") == "ACTIVE", 20, "lb2 active")
    path = pair.workdir / "without-app.yaml"
    path.write_text(without_app(pair))
    # From lb1's namespace the API on loopback is lb1's, not the active's: said, and the plan
    # is made against the current version instead (connections unknown: drains).
    node = str(pair.node_file("lb1"))
    elsewhere = json.loads(lvsctl(pair, "config", "diff", "--plan", "--json", "--node", node,
                                  str(path)).stdout)["plan"]
    assert elsewhere["basis"]["kind"] == "version"
    assert "is director lb1's, not the active lb2's" in elsewhere["basis"]["why"]
    assert [op["op"] for op in elsewhere["ops"]] == ["drain_dest", "drain_dest"]
    logged = len(pair.log("lb2"))
    pushed = json.loads(lvsctl(pair, "config", "push", "--plan", "--json", str(path),
                               where="lb2").stdout)["plan"]
    assert (pushed["basis"]["kind"], pushed["basis"]["director"]) == ("director", "lb2")
    for name in ("lb1", "lb2"):
        pair.wait(lambda n=name: APP not in table(pair, n), 20, f"app gone from {name}")
    assert [op["text"] for op in ipvs_ops(pair, "lb2", logged)] == [
        op["text"] for op in pushed["ops"]]
