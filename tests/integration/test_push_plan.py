"""``config push --plan`` and ``config diff --plan`` when no director answers: planned against
the desired table of the version ZooKeeper holds (real ZooKeeper, the CLI in-process), in a
table and as JSON, the basis named. Against a live director: tests/integration/test_retire.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lvsctl.cli import cli
from tests.conftest import MINIMAL
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper


def test_plan_against_the_current_version_when_no_director_answers(
        zookeeper: ZooKeeperServer, tmp_path: Path) -> None:
    (tmp_path / "zk.secret").write_text("lvs:s3cret\n")
    doc = copy.deepcopy(MINIMAL)
    doc["zookeeper"] = {"hosts": [zookeeper.hosts], "auth": "zk.secret"}
    path = tmp_path / "cluster.yaml"

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    path.write_text(yaml.safe_dump(doc))
    first = json.loads(run("config", "push", "--plan", "--json", str(path)))
    assert first["plan"]["basis"] == {"kind": "version", "version": 0,
                                      "why": "no director leads"}
    assert [op["op"] for op in first["plan"]["ops"]] == [
        "add_service", "add_dest", "add_dest", "add_service", "add_dest"]

    doc["services"][0]["realservers"][1]["weight"] = 2  # web2: 5 -> 2
    doc["services"] = doc["services"][:1]  # app leaves the file
    path.write_text(yaml.safe_dump(doc))
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump({
        "cluster": "t", "director": "lb1", "peer": {"secret": "/nonexistent"},
        "zookeeper": {"hosts": [zookeeper.hosts], "auth": "zk.secret"}}))
    table = run("config", "diff", "--plan", str(path), "--node", str(node))
    assert table.splitlines()[0] == ("IPVS plan against the desired table of version 1 (no "
                                     "director answered: no director leads):")
    rows = [" ".join(line.split()) for line in table.splitlines()[2:-1]]
    assert rows == [  # OP SERVICE REALSERVER CHANGE NAME
        "edit tcp 192.0.2.10:80 192.0.2.22:80 dr weight 5 -> dr weight 2 www",
        "drain tcp 192.0.2.10:8080 10.0.1.31:9000 nat weight 1 -> weight 0, deleted once idle "
        "app",
    ]
    assert table.splitlines()[-1] == "2 op(s)"
