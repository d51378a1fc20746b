"""``lvsctl config push|show|diff|history|rollback`` against a real ZooKeeper."""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kazoo.client import KazooClient
from kazoo.security import OPEN_ACL_UNSAFE

from lvsctl.cli import cli
from tests.conftest import MINIMAL
from tests.support.netns import Lab
from tests.support.zookeeper import ZooKeeperServer, free_port

pytestmark = pytest.mark.zookeeper

_roots = itertools.count()


def lvsctl_path() -> str:
    found = shutil.which("lvsctl", path=os.path.dirname(sys.executable)) or shutil.which("lvsctl")
    assert found, "the lvsctl console script is not installed in this environment"
    return found


@dataclass
class Env:
    """A cluster file, a node file and an auth file in one folder, for one root of its own."""

    dir: Path
    server: ZooKeeperServer
    root: str

    @property
    def cluster_file(self) -> Path:
        return self.dir / "cluster.yaml"

    @property
    def node_file(self) -> Path:
        return self.dir / "node.yaml"

    def write_cluster(self, port: int = 80, *, auth: str | None = "zk.secret",
                      **changes: Any) -> Path:
        doc: dict[str, Any] = copy.deepcopy(MINIMAL)
        zk: dict[str, Any] = {"hosts": [self.server.hosts], "root": self.root}
        if auth:
            zk["auth"] = auth  # relative: to the cluster file's folder
        doc.update(zookeeper=zk, **changes)
        doc["services"][0]["port"] = port
        self.cluster_file.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return self.cluster_file

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args))


@pytest.fixture
def env(zookeeper_module: ZooKeeperServer, tmp_path: Path) -> Env:
    made = Env(tmp_path, zookeeper_module, f"/cli{next(_roots)}")
    (tmp_path / "zk.secret").write_text("lvs:s3cret\n", encoding="utf-8")
    made.node_file.write_text(yaml.safe_dump({
        "cluster": "t", "director": "lb1",
        "zookeeper": {"hosts": [zookeeper_module.hosts], "root": made.root, "auth": "zk.secret"},
        "peer": {"secret": "/nonexistent"},
    }), encoding="utf-8")
    return made


def test_push_show_diff_history_rollback(env: Env) -> None:
    node = ("--node", str(env.node_file))
    first = env.run("config", "push", str(env.write_cluster(80)))
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(
        "pushed cluster.yaml as version 1 of cluster t (sha256 ")
    assert first.stdout.rstrip().endswith(f"to {env.server.hosts} {env.root}/t/config")
    v1 = env.cluster_file.read_text(encoding="utf-8")

    shown = env.run("config", "show", *node)
    assert shown.exit_code == 0 and shown.stdout == v1  # exactly as pushed

    env.write_cluster(81)
    diff = env.run("config", "diff", str(env.cluster_file), *node)
    assert diff.exit_code == 0, diff.output
    assert f"--- zookeeper:{env.root}/t/config@v1" in diff.stdout
    assert "-  port: 80\n+  port: 81\n" in diff.stdout
    assert env.run("config", "diff", str(env.cluster_file), "--exit-code", *node).exit_code == 1

    second = env.run("config", "push", str(env.cluster_file), "--expect-version", "1", "--json")
    assert second.exit_code == 0, second.output
    data = json.loads(second.stdout)
    assert (data["version"], data["changed"], data["cluster"]) == (2, True, "t")
    same = env.run("config", "diff", str(env.cluster_file), *node)
    assert same.stdout == f"no differences: {env.cluster_file} equals version 2\n"

    back = env.run("config", "rollback", "1", "--zookeeper", env.server.hosts, "--cluster", "t",
                   "--root", env.root, "--auth", str(env.dir / "zk.secret"))
    assert back.exit_code == 0, back.output
    assert back.stdout.startswith("rolled back: version 3 holds the text of version 1")
    assert env.run("config", "show", *node).stdout == v1

    table = env.run("config", "history", *node)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "PUSHED", "AT", "BY", "SOURCE", "SHA256", "NOTE"]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    assert lines[1].endswith("current, rollback of 1")
    history = json.loads(env.run("config", "history", "--json", *node).stdout)
    assert [(h["version"], h["current"], h["rollback_of"]) for h in history] == [
        (3, True, 1), (2, False, None), (1, False, None)]
    assert history[0]["sha256"] == history[2]["sha256"]
    old = json.loads(env.run("config", "show", "--version", "2", "--json", *node).stdout)
    assert old["version"] == 2 and "port: 81" in old["text"]


def test_bad_push_is_rejected_and_nothing_changes(env: Env) -> None:
    node = ("--node", str(env.node_file))
    assert env.run("config", "push", str(env.write_cluster(80))).exit_code == 0
    v1 = env.cluster_file.read_text(encoding="utf-8")
    doc = yaml.safe_load(v1)
    doc["services"][0]["realservers"][0]["port"] = 8080  # dr cannot rewrite ports
    env.cluster_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    bad = env.run("config", "push", str(env.cluster_file))
    assert bad.exit_code == 1
    assert "cluster.yaml: services[0].realservers[0].port: must equal the service port 80" \
        in bad.stderr
    assert "Traceback" not in bad.output
    history = json.loads(env.run("config", "history", "--json", *node).stdout)
    assert [h["version"] for h in history] == [1]
    assert env.run("config", "show", *node).stdout == v1


def test_two_concurrent_push_processes_one_wins(env: Env) -> None:
    assert env.run("config", "push", str(env.write_cluster(80))).exit_code == 0
    files = []
    for port in (81, 82):
        env.write_cluster(port)
        path = env.dir / f"c{port}.yaml"
        shutil.copy(env.cluster_file, path)
        files.append(path)
    procs = [subprocess.Popen([lvsctl_path(), "config", "push", str(f), "--expect-version", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in files]
    outcomes = [(p.wait(timeout=60), *p.communicate(timeout=60)) for p in procs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1], outcomes
    loser = next(err for code, _, err in outcomes if code == 1)
    errors = [line for line in loser.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("lvsctl: ")
    assert "nothing written; check with 'lvsctl config diff' and push again" in errors[0]
    history = json.loads(env.run("config", "history", "--json", "--node",
                                 str(env.node_file)).stdout)
    assert [h["version"] for h in history] == [2, 1]


def test_open_root_refused_without_insecure(env: Env) -> None:
    outsider = KazooClient(hosts=env.server.hosts)
    outsider.start(timeout=10)
    try:
        outsider.create(env.root, b"", acl=OPEN_ACL_UNSAFE)
    finally:
        outsider.stop()
        outsider.close()
    refused = env.run("config", "push", str(env.write_cluster()))
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1] == (
        f"lvsctl: ZooKeeper node {env.root} at {env.server.hosts} is open to anyone (ACL "
        "world:anyone): restrict it to the cluster's digest credentials, or pass --insecure")
    assert env.run("config", "show", "--node", str(env.node_file)).exit_code == 1
    allowed = env.run("config", "push", str(env.cluster_file), "--insecure")
    assert allowed.exit_code == 0, allowed.output
    shown = env.run("config", "show", "--node", str(env.node_file), "--insecure")
    assert shown.exit_code == 0 and shown.stdout == env.cluster_file.read_text(encoding="utf-8")


def test_no_auth_file_refused_without_insecure(env: Env) -> None:
    refused = env.run("config", "push", str(env.write_cluster(auth=None)))
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1] == (
        "lvsctl: no ZooKeeper credentials for cluster t: set zookeeper.auth to a file holding "
        "'user:password' (or pass --auth FILE); --insecure to go without")
    allowed = env.run("config", "push", str(env.cluster_file), "--insecure")
    assert allowed.exit_code == 0, allowed.output
    assert "warning: no ZooKeeper credentials (--insecure)" in allowed.stderr


def test_bad_auth_file_names_the_file(env: Env) -> None:
    (env.dir / "zk.secret").write_text("just-a-password\n", encoding="utf-8")
    result = env.run("config", "show", "--node", str(env.node_file))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{env.dir / 'zk.secret'}: expected one line 'user:password' (ZooKeeper digest "
        "credentials)"]


def test_connection_options_are_checked(env: Env) -> None:
    both = env.run("config", "show", "--node", str(env.node_file), "--zookeeper",
                   env.server.hosts, "--cluster", "t")
    assert both.exit_code == 2 and "give either --node or --zookeeper, not both" in both.output
    alone = env.run("config", "show", "--zookeeper", env.server.hosts)
    assert alone.exit_code == 2 and "--zookeeper needs --cluster NAME" in alone.output
    bad = env.run("config", "show", "--zookeeper", "zk1", "--cluster", "t")
    assert bad.exit_code == 2 and "'zk1' is not HOST:PORT" in bad.output
    nothing = env.run("config", "history", "--zookeeper", env.server.hosts, "--cluster", "t",
                      "--root", env.root, "--auth", str(env.dir / "zk.secret"))
    assert nothing.exit_code == 0 and nothing.stdout == "no versions kept for cluster t\n"
    empty = env.run("config", "show", "--node", str(env.node_file))
    assert empty.exit_code == 1 and empty.stderr == (
        f"lvsctl: nothing pushed yet for cluster t ({env.root}/t/config): "
        "lvsctl config push FILE\n")


def _unreachable(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return proc, time.monotonic() - started


def test_unreachable_zookeeper_one_line_no_traceback(tmp_path: Path) -> None:
    secret = tmp_path / "zk.secret"
    secret.write_text("lvs:s3cret\n", encoding="utf-8")
    hosts = f"127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    proc, took = _unreachable([lvsctl_path(), "config", "history", "--zookeeper", hosts,
                               "--cluster", "t", "--auth", str(secret),
                               "--connect-timeout", "1"])
    assert proc.returncode == 1
    assert proc.stderr == f"lvsctl: cannot reach ZooKeeper at {hosts} within 1 s\n"
    assert proc.stdout == ""
    print(f"refused port: lvsctl gave up after {took:.2f} s (--connect-timeout 1)")


@pytest.mark.netns
def test_zookeeper_behind_a_dropping_firewall_one_line(lab: Lab, tmp_path: Path) -> None:
    """SYNs dropped (nftables in the client's namespace): still one line, and it returns."""
    ns = lab.netns("zku")
    ns.ip("addr", "add", "10.203.0.1/24", "dev", "lo")
    ns.run(["nft", "add", "table", "inet", "t"])
    ns.run(["nft", "add", "chain", "inet", "t", "out",
            "{ type filter hook output priority 0; }"])
    ns.run(["nft", "add", "rule", "inet", "t", "out", "tcp", "dport", "2181", "counter", "drop"])
    secret = tmp_path / "zk.secret"
    secret.write_text("lvs:s3cret\n", encoding="utf-8")
    proc, took = _unreachable(ns.argv([
        lvsctl_path(), "config", "show", "--zookeeper", "10.203.0.1:2181", "--cluster", "t",
        "--auth", str(secret), "--connect-timeout", "1"]))
    assert proc.returncode == 1
    assert proc.stderr == "lvsctl: cannot reach ZooKeeper at 10.203.0.1:2181 within 1 s\n"
    counted = ns.run(["nft", "list", "chain", "inet", "t", "out"])
    assert "packets 0 " not in counted and "packets " in counted  # the SYNs were dropped
    print(f"dropped SYNs: lvsctl gave up after {took:.2f} s (--connect-timeout 1)")
