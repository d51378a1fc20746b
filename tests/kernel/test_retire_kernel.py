"""Retirement and the sorry server on the real kernel, without a lab (one namespace each):
a sorry server on the director's own address is programmed once and not re-edited on every
pass, whatever forwarding the kernel reports for it; ``lvsctl ipvs apply`` retires a service
it applied once that the next file no longer names, and leaves one made by hand alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import parse_cluster
from lvsctl.core.model import Health
from lvsctl.director.dataplane import Dataplane
from lvsctl.director.ipvs import KernelIpvs
from tests.conftest import MINIMAL
from tests.support.netns import Lab

pytestmark = pytest.mark.kernel

DIRECTOR = "192.0.2.2"


def test_a_sorry_server_on_the_director_itself_is_not_re_edited(lab: Lab) -> None:
    ns = lab.netns("so")
    ns.ip("link", "add", "d0", "type", "dummy")
    ns.ip("addr", "add", f"{DIRECTOR}/24", "dev", "d0")
    ns.ip("link", "set", "d0", "up")
    doc = json.loads(json.dumps(MINIMAL))
    check = {"type": "tcp", "interval": 1, "timeout": 0.5}
    doc["services"] = [
        {"name": mode, "vip": "192.0.2.10", "port": port, "forwarding": mode, "check": check,
         "sorry_server": {"address": DIRECTOR, "port": port},
         "realservers": [{"name": f"{mode}1", "address": address, "port": port}]}
        for mode, port, address in (("nat", 80, "10.0.1.31"), ("dr", 81, "192.0.2.21"),
                                    ("tun", 82, "192.0.2.21"))]
    cluster = parse_cluster(json.dumps(doc), "cluster.yaml").cluster
    down = {(s.name, f"{s.name}1"): Health(False, reason="refused") for s in cluster.services}
    with KernelIpvs(netns=ns.name) as ipvs:
        plane = Dataplane(ipvs)
        first = plane.reconcile(cluster, down, epoch=1, role="ACTIVE")
        assert (first["applied"], first["errors"]) == (6, [])  # 3 services, 3 sorry servers
        # The kernel's word for each sorry server, as ipvsadm shows it (the report's figure).
        print(ns.run(["ipvsadm", "-Ln"]))
        for _ in range(3):
            again = plane.reconcile(cluster, down, epoch=1, role="ACTIVE")
            assert (again["planned"], again["errors"]) == (0, []), again
        observed = ipvs.observe(stats=False)
    forwarded = {str(k): [d.fwd for d in s.dests.values()] for k, s in observed.items()}
    assert forwarded == {"tcp 192.0.2.10:80": [0], "tcp 192.0.2.10:81": [3],
                         "tcp 192.0.2.10:82": [2]}, forwarded


def test_ipvs_apply_retires_what_it_applied_and_leaves_a_hand_made_service(
        lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("ap")
    ns.run(["ipvsadm", "-A", "-t", "198.51.100.1:22", "-s", "rr"])  # made by hand
    path = tmp_path / "cluster.yaml"
    state = tmp_path / "state"

    def apply(doc: dict[str, object]) -> str:
        path.write_text(json.dumps(doc))
        result = CliRunner().invoke(cli, ["ipvs", "--netns", ns.name, "apply", str(path),
                                          "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        return result.stdout

    apply(MINIMAL)
    assert json.loads((state / f"t.ipvs@{ns.name}.managed.json").read_text())["services"]
    without_app = json.loads(json.dumps(MINIMAL))
    without_app["services"] = without_app["services"][:1]
    out = apply(without_app)
    assert "delete service tcp 192.0.2.10:8080" in out, out
    listing = ns.run(["ipvsadm", "-Ln"])
    assert "192.0.2.10:8080" not in listing and "198.51.100.1:22" in listing, listing
    assert "nothing to do" in apply(without_app)
