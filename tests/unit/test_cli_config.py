"""The config commands through click's runner and through the installed executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lvsctl import __version__
from lvsctl.cli import cli
from tests.conftest import EXAMPLE, MINIMAL

BAD = """\
cluster: web
zookeeper: {hosts: ["127.0.0.1:2181"]}
directors:
  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2}}
  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3}}
vips:
  - {address: 192.0.2.10, interface: eth0}
services:
  - name: www
    vip: 192.0.2.10
    port: 80
    forwarding: dr
    schedular: wrr
    realservers:
      - {name: web1, address: 192.0.2.21, port: 8080}
      - {name: web2, address: 192.0.2.300}
"""


def test_check_example_prints_summary() -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "cluster.yaml: ok: cluster web, directors lb1 and lb2" in result.output
    assert "www6     tcp [2001:db8::10]:443  tun" in result.output


def test_check_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(EXAMPLE), "--json"])
    data = json.loads(result.output)
    assert data["ok"] is True
    assert data["realservers_per_mode"] == {"dr": 3, "nat": 2, "tun": 2}
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = CliRunner().invoke(cli, ["config", "check", str(bad), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [e["path"] for e in data["errors"]] == [
        "services[0].realservers[0].port",
        "services[0].realservers[1].address",
        "services[0].schedular",
    ]


def test_check_warnings_go_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0
    assert "warning: c.yaml: services[1].check: no check" in result.stderr
    assert "warning" not in result.stdout


def test_schema_is_json_schema() -> None:
    result = CliRunner().invoke(cli, ["config", "schema"])
    schema = json.loads(result.output)
    assert schema["title"] == "ClusterFile"
    assert schema["additionalProperties"] is False
    assert "services" in schema["required"]


def test_usage_error_exits_2() -> None:
    result = CliRunner().invoke(cli, ["config", "check"])
    assert result.exit_code == 2


def _installed_lvsctl() -> str:
    found = shutil.which("lvsctl", path=os.path.dirname(sys.executable)) or shutil.which("lvsctl")
    assert found, "the lvsctl console script is not installed in this environment"
    return found


def test_installed_executable_reports_three_key_paths(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text(BAD)
    proc = subprocess.run([_installed_lvsctl(), "config", "check", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "cluster.yaml: services[0].realservers[0].port: must equal the service port 80 in dr "
        "mode (the kernel does not rewrite ports)",
        "cluster.yaml: services[0].realservers[1].address: '192.0.2.300' is not an IPv4 or IPv6"
        " address",
        "cluster.yaml: services[0].schedular: unknown key (did you mean 'scheduler'?)",
    ]


def test_installed_executable_version() -> None:
    proc = subprocess.run([_installed_lvsctl(), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"lvsctl, version {__version__}"


def test_check_summary_names_every_check_type(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    www = doc["services"][0]
    www["checks"] = [www.pop("check"), {"type": "tcp"}, {"type": "ping"}]
    for rs in www["realservers"]:
        rs.pop("check", None)
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["config", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = [s for s in json.loads(result.stdout)["services"] if s["name"] == "www"]
    assert row["check"] == "http,ping,tcp"


@pytest.mark.parametrize(("root", "why"), [
    ("/lvsctl\n", "may hold only letters"),
    ("/lvsctl/../etc", "has a '..' segment"),
    ("/zookeeper/x", "reserves for itself"),
])
def test_a_root_option_is_held_to_the_cluster_files_rule_as_a_whole_string(
        root: str, why: str) -> None:
    result = CliRunner().invoke(cli, ["status", "--zookeeper", "127.0.0.1:1", "--cluster", "t",
                                      "--root", root])
    assert result.exit_code == 2
    assert why in result.output and "Traceback" not in result.output
