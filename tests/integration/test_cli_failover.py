"""``lvsctl failover status|drill`` against a real ZooKeeper holding what directors publish.

The director pair itself is exercised in test_failover_drills.py; here the records are written
with the store's writers (as a director writes them), and /status is served over real HTTP
on loopback.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from click.testing import CliRunner, Result

from lvsctl.cli import cli
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.records import DirectorRecord, TransitionRecord
from lvsctl.core.zk import ClusterStore, Target, open_cluster
from tests.conftest import MINIMAL
from tests.support.zookeeper import ZooKeeperServer
from tests.unit.test_failover_health import status

pytestmark = pytest.mark.zookeeper
_roots = itertools.count()
VIPS = ["192.0.2.10", "2001:db8::10", "10.0.1.1"]


class Env:
    def __init__(self, server: ZooKeeperServer, tmp: Path) -> None:
        self.server, self.dir, self.root = server, tmp, f"/fo{next(_roots)}"
        (tmp / "zk.secret").write_text("lvs:s3cret\n", encoding="utf-8")
        (tmp / "api.token").write_text("tok-1\n", encoding="utf-8")
        doc: dict[str, Any] = copy.deepcopy(MINIMAL)
        doc["zookeeper"] = {"hosts": [server.hosts], "root": self.root, "auth": "zk.secret"}
        (tmp / "cluster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        settings = ZooKeeperSettings((server.hosts,), self.root, 4.0, str(tmp / "zk.secret"))
        self.conn = open_cluster(Target(settings, "t"), connect_timeout=15)
        self.store = ClusterStore(self.conn)

    def opts(self) -> list[str]:
        return ["--zookeeper", self.server.hosts, "--cluster", "t", "--root", self.root,
                "--auth", str(self.dir / "zk.secret")]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args))

    def publish(self, st: dict[str, Any]) -> None:
        """Publish a director's /status as its record."""
        self.store.publish_director(DirectorRecord.from_json(st))


@pytest.fixture
def env(zookeeper_module: ZooKeeperServer, tmp_path: Path) -> Iterator[Env]:
    made = Env(zookeeper_module, tmp_path)
    try:
        pushed = made.run("config", "push", str(tmp_path / "cluster.yaml"))
        assert pushed.exit_code == 0, pushed.output
        yield made
    finally:
        made.conn.close()


def test_status_shows_the_active_its_epoch_and_the_last_transitions(env: Env) -> None:
    first, second = env.store.election.join("lb1"), env.store.election.join("lb2")
    epoch = first.epoch
    lb1 = status("lb1", "ACTIVE", epoch, VIPS[:2])
    lb1["since"] = 1764150000.25
    env.publish(lb1)
    env.publish(status("lb2", "STANDBY", second.epoch, []))
    for i, (event, extra) in enumerate([
        ("transition", {"state": "STANDBY", "epoch": epoch - 1, "reason": "another leads"}),
        ("transition", {"state": "ACTIVE", "epoch": epoch, "reason": "won the election"}),
        ("vip_acquired", {"vip": "192.0.2.10", "epoch": epoch, "basis": "zk"}),
    ]):
        env.store.append_transition(TransitionRecord.from_json(
            {"director": "lb1", "monotonic": 10.0 + i, "wall": 1764150000.0 + i,
             "event": event, **extra}))

    shown = env.run("failover", "status", "--last", "2", *env.opts())
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"active: lb1 epoch {epoch} since 2025-11-26 09:40:00.250Z"
    assert lines[2].split() == ["DIRECTOR", "ROLE", "EPOCH", "SINCE", "VIPS", "ZOOKEEPER"]
    assert lines[3].split()[:3] == ["lb1", "ACTIVE", str(epoch)]
    assert "192.0.2.10,2001:db8::10" in lines[3]
    events = [line for line in lines[6:] if line]
    assert events[0].split()[0] == "WHEN" and len(events) == 3
    assert "won the election" in events[1] and "vip_acquired" in events[2]

    data = json.loads(env.run("failover", "status", "--json", *env.opts()).stdout)
    assert (data["active"], data["epoch"], data["since"]) == ("lb1", epoch, 1764150000.25)
    assert [e["epoch"] for e in data["election"]] == [epoch, second.epoch]
    assert [t["event"] for t in data["transitions"]] == ["transition", "transition",
                                                         "vip_acquired"]


def test_status_of_a_cluster_with_no_director_running(env: Env) -> None:
    shown = env.run("failover", "status", *env.opts())
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("active: none\n")
    assert "no director published" in shown.stdout


def test_drill_refuses_when_no_director_answers(env: Env) -> None:
    got = env.run("failover", "drill", "--kind", "stepdown", *env.opts())
    assert got.exit_code == 3, got.output
    assert got.stderr.strip() == (
        "lvsctl: refusing to drill: lb1 does not answer (not running, or its API is "
        "unreachable); lb2 does not answer (not running, or its API is unreachable); "
        "no director is active")


class _Api(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[dict[int, dict[str, Any]]] = {}
    posts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        body = json.dumps(self.statuses[self.server.server_address[1]]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.posts.append(self.path)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_drill_reads_each_directors_api_and_refuses_an_unfit_pair(env: Env) -> None:
    servers = []
    try:
        for name, role, vips in (("lb1", "ACTIVE", VIPS), ("lb2", "FENCED", [])):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
            port = server.server_address[1]
            st = status(name, role, 7, vips)
            known = {"healthy": True, "weight": 1, "reason": "ok"}
            st["services"] = [{"name": "www", "realservers": [{"name": "web1", "health": known},
                                                               {"name": "web2", "health": known}]},
                              {"name": "app", "realservers": [{"name": "app1", "health": None}]}]
            st["api"] = f"127.0.0.1:{port}"
            _Api.statuses[port] = st
            env.publish(st)
        got = env.run("failover", "drill", "--kind", "crash", "--token",
                      str(env.dir / "api.token"), *env.opts())
        assert got.exit_code == 3, got.output
        assert got.stderr.strip() == "lvsctl: refusing to drill: lb2 is FENCED, not STANDBY"
        assert _Api.posts == []  # nothing was caused on an unfit pair
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "zk-partition"], "lvsctl: --kind zk-partition needs the lab"),
    (["--kind", "stepdown", "--probe", "udp://192.0.2.10:53"],
     "lvsctl: --probe 'udp://192.0.2.10:53': expected http://VIP[:PORT]/PATH or tcp://VIP:PORT"),
    (["--kind", "stepdown", "--token", "/nonexistent/token"],
     "/nonexistent/token: cannot read the API token: No such file or directory"),
])
def test_drill_bad_arguments_say_what_is_wrong(env: Env, args: list[str], message: str) -> None:
    got = env.run("failover", "drill", *args, *env.opts())
    assert got.exit_code != 0
    assert got.stderr.startswith(message), got.stderr
    assert "Traceback" not in got.output
