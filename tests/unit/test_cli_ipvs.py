"""``lvsctl ipvs`` on the fake IPVS (a JSON file), and the no-IPVS sentence on a real socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.errors import NoIpvsError
from lvsctl.core.model import DestKey, DestSpec, Forwarding, Protocol, ServiceKey, ServiceSpec
from lvsctl.director.ipvs import KernelIpvs
from lvsctl.director.reconcile import AddDest, AddService
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.conftest import MINIMAL

WWW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
APP = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 8080)
FOREIGN = ServiceKey.inet(Protocol.UDP, "198.51.100.1", 53)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(MINIMAL))
    return cluster, tmp_path / "ipvs.json"


def run(state: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["ipvs", "--fake-ipvs", str(state), *args])
    return result.exit_code, result.stdout, result.stderr


def test_plan_apply_plan(files: tuple[Path, Path]) -> None:
    cluster, state = files
    FakeIpvs(state).apply(AddService(FOREIGN, ServiceSpec("rr")))
    code, out, _ = run(state, "plan", str(cluster))
    assert code == 0
    assert out.splitlines() == [
        "add service tcp 192.0.2.10:80 scheduler wlc",
        "add dest tcp 192.0.2.10:80 -> 192.0.2.21:80 dr weight 1",
        "add dest tcp 192.0.2.10:80 -> 192.0.2.22:80 dr weight 5",
        "add service tcp 192.0.2.10:8080 scheduler wlc",
        "add dest tcp 192.0.2.10:8080 -> 10.0.1.31:9000 nat weight 1",
        "5 op(s)",
    ]
    assert set(FakeIpvs(state).observe()) == {FOREIGN}  # plan changes nothing

    code, out, _ = run(state, "apply", str(cluster))
    assert code == 0
    assert out.splitlines()[-1] == "5 op(s) applied"
    table = FakeIpvs(state).observe()
    assert set(table) == {WWW, APP, FOREIGN}
    assert table[APP].dests[DestKey("10.0.1.31", 9000)].spec == DestSpec(1, Forwarding.NAT)

    code, out, _ = run(state, "plan", str(cluster), "--json")
    assert code == 0 and json.loads(out)["ops"] == []
    code, out, _ = run(state, "apply", str(cluster))
    assert out == "cluster.yaml: the IPVS table already matches; nothing to do\n"


def test_plan_drains_a_removed_real_server(files: tuple[Path, Path]) -> None:
    cluster, state = files
    run(state, "apply", str(cluster))
    fake = FakeIpvs(state)
    fake.set_conns(WWW, DestKey("192.0.2.22", 80), active=2)
    doc = yaml.safe_load(cluster.read_text())
    doc["services"][0]["realservers"].pop()
    cluster.write_text(yaml.safe_dump(doc))
    _, out, _ = run(state, "plan", str(cluster), "--json")
    assert [(o["op"], o["dest"], o["weight"]) for o in json.loads(out)["ops"]] == [
        ("drain_dest", "192.0.2.22:80", 0)]
    run(state, "apply", str(cluster))
    assert fake.observe()[WWW].dests[DestKey("192.0.2.22", 80)].weight == 0
    _, out, _ = run(state, "plan", str(cluster))
    assert "nothing to do" in out  # still busy, deadline not reached
    fake.set_conns(WWW, DestKey("192.0.2.22", 80), active=0)
    _, out, _ = run(state, "apply", str(cluster))
    assert out.splitlines()[0] == "delete dest tcp 192.0.2.10:80 -> 192.0.2.22:80"


def test_show_and_save(files: tuple[Path, Path]) -> None:
    _, state = files
    fake = FakeIpvs(state)
    fake.apply_all([AddService(WWW, ServiceSpec("rr", persistence=300, netmask=24)),
                    AddDest(WWW, DestKey("192.0.2.21", 80), DestSpec(3, Forwarding.DR))])
    fake.set_conns(WWW, DestKey("192.0.2.21", 80), 4, 9)
    code, out, _ = run(state, "show")
    assert code == 0
    assert out.splitlines()[2:] == [
        "TCP  192.0.2.10:80 rr persistent 300 mask /24",
        "  -> 192.0.2.21:80                Route   3      4          9",
    ]
    code, out, _ = run(state, "show", "--json")
    (service,) = json.loads(out)["services"]
    assert service["dests"][0]["active_conns"] == 4
    code, out, _ = run(state, "save")
    assert out == ("-A -t 192.0.2.10:80 -s rr -p 300 -M 255.255.255.0\n"
                   "-a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 3\n")


def test_bad_cluster_file_is_one_line(files: tuple[Path, Path]) -> None:
    cluster, state = files
    cluster.write_text("cluster: [\n")
    code, out, err = run(state, "plan", str(cluster))
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("cluster.yaml: line")


def test_no_ipvs_is_one_sentence() -> None:
    """A genl family that does not exist takes the same path as a kernel without IPVS."""
    with pytest.raises(NoIpvsError) as excinfo:
        KernelIpvs(family_name="LVSCTL_NONE", modprobe=lambda: False)
    assert str(excinfo.value).startswith("this kernel has no IPVS:")
    assert "\n" not in str(excinfo.value)


def test_fake_table_is_shared_with_another_process(files: tuple[Path, Path]) -> None:
    """The installed executable writes the fake's file; this process reads the same table."""
    cluster, state = files
    exe = Path(sys.executable).parent / "lvsctl"
    done = subprocess.run([str(exe), "ipvs", "--fake-ipvs", str(state), "apply", str(cluster)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(FakeIpvs(state).observe()) == {WWW, APP}
    assert FakeIpvs(state).writes == 5
