"""What ``lvsctl ipvs`` does, as a library on the fake IPVS (plan a cluster file, apply it by the
driver's rule, list and save the table as ipvsadm does), and the command's one-line errors on
this host. The command itself on the real kernel: tests/kernel/test_reconcile_kernel.py."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsctl.core.config import parse_cluster
from lvsctl.core.errors import NoIpvsError
from lvsctl.core.model import (
    Cluster,
    DestKey,
    DestSpec,
    Forwarding,
    Protocol,
    ServiceKey,
    ServiceSpec,
)
from lvsctl.director.dataplane import Outcome, apply_ops, count, plan_cluster
from lvsctl.director.ipvs import KernelIpvs
from lvsctl.director.ipvs_text import listing_lines, save_text
from lvsctl.director.reconcile import AddDest, AddService
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.conftest import MINIMAL

WWW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
APP = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 8080)
FOREIGN = ServiceKey.inet(Protocol.UDP, "198.51.100.1", 53)
LVSCTL = Path(sys.executable).parent / "lvsctl"


def cluster_of(doc: dict[str, Any]) -> Cluster:
    return parse_cluster(yaml.safe_dump(doc), "cluster.yaml").cluster


def test_plan_apply_plan_beside_a_foreign_service() -> None:
    fake = FakeIpvs()
    fake.apply(AddService(FOREIGN, ServiceSpec("rr")))
    cluster = cluster_of(MINIMAL)
    ops = plan_cluster(fake, cluster).ops
    assert [str(op) for op in ops] == [
        "add service tcp 192.0.2.10:80 scheduler wlc",
        "add dest tcp 192.0.2.10:80 -> 192.0.2.21:80 dr weight 1",
        "add dest tcp 192.0.2.10:80 -> 192.0.2.22:80 dr weight 5",
        "add service tcp 192.0.2.10:8080 scheduler wlc",
        "add dest tcp 192.0.2.10:8080 -> 10.0.1.31:9000 nat weight 1",
    ]
    assert set(fake.observe()) == {FOREIGN}  # planning changes nothing
    batches: list[int] = []
    results = apply_ops(fake, ops, batch=2, on_batch=lambda b: batches.append(len(b)))
    assert count(results)["applied"] == 5
    assert batches == [2, 2, 1]  # two services in one batch, then the dests in two
    table = fake.observe()
    assert set(table) == {WWW, APP, FOREIGN}
    assert table[APP].dests[DestKey("10.0.1.31", 9000)].spec == DestSpec(1, Forwarding.NAT)
    assert plan_cluster(fake, cluster).ops == []


def test_a_removed_real_server_is_drained_then_deleted_once_idle() -> None:
    fake = FakeIpvs()
    apply_ops(fake, plan_cluster(fake, cluster_of(MINIMAL)).ops)
    busy = DestKey("192.0.2.22", 80)
    fake.set_conns(WWW, busy, active=2)
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    doc["services"][0]["realservers"].pop()
    smaller = cluster_of(doc)
    ops = plan_cluster(fake, smaller).ops
    assert [str(op) for op in ops] == ["drain dest tcp 192.0.2.10:80 -> 192.0.2.22:80 (weight 0)"]
    apply_ops(fake, ops)
    assert fake.observe()[WWW].dests[busy].weight == 0
    assert plan_cluster(fake, smaller).ops == []  # still busy
    fake.set_conns(WWW, busy, active=0)
    ops = plan_cluster(fake, smaller).ops
    assert [str(op) for op in ops] == ["delete dest tcp 192.0.2.10:80 -> 192.0.2.22:80"]


def test_a_service_the_kernel_refuses_skips_its_real_servers_only() -> None:
    """Debian 12's kernel has no "twos" scheduler (nor does the fake): the service is refused,
    its real servers are skipped, the other service is applied."""
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    doc["services"][1]["scheduler"] = "twos"
    fake = FakeIpvs()
    results = apply_ops(fake, plan_cluster(fake, cluster_of(doc)).ops)
    assert [(r.outcome, str(r.op)) for r in results
            if r.outcome is not Outcome.APPLIED] == [
        (Outcome.REFUSED, "add service tcp 192.0.2.10:8080 scheduler twos"),
        (Outcome.SKIPPED, "add dest tcp 192.0.2.10:8080 -> 10.0.1.31:9000 nat weight 1"),
    ]
    refused = next(r for r in results if r.outcome is Outcome.REFUSED)
    assert refused.errno == errno.ENOENT
    assert str(refused).endswith("the kernel refused: no such destination, scheduler or "
                                 "persistence engine (ENOENT)")
    assert set(fake.observe()) == {WWW}


def test_listing_and_save_are_ipvsadms() -> None:
    fake = FakeIpvs()
    fake.apply_batch([AddService(WWW, ServiceSpec("rr", persistence=300, netmask=24)),
                      AddDest(WWW, DestKey("192.0.2.21", 80), DestSpec(3, Forwarding.DR))])
    fake.set_conns(WWW, DestKey("192.0.2.21", 80), 4, 9)
    table = fake.observe()
    assert listing_lines(table)[2:] == [
        "TCP  192.0.2.10:80 rr persistent 300 mask /24",
        "  -> 192.0.2.21:80                Route   3      4          9",
    ]
    assert save_text(table) == ("-A -t 192.0.2.10:80 -s rr -p 300 -M 255.255.255.0\n"
                                "-a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 3\n")


def _lvsctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LVSCTL), *args], capture_output=True, text=True, timeout=60)


def test_bad_cluster_file_is_one_line(tmp_path: Path) -> None:
    """The file is checked before the kernel is asked anything (this host has no IPVS)."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("cluster: [\n")
    done = _lvsctl("ipvs", "plan", str(cluster))
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("cluster.yaml: line")


def test_missing_namespace_is_one_line(tmp_path: Path) -> None:
    done = _lvsctl("ipvs", "--netns", f"lvsctl-none-{tmp_path.name}", "show")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"lvsctl: no network namespace 'lvsctl-none-{tmp_path.name}'\n"


def test_no_ipvs_is_one_sentence() -> None:
    """A genl family that does not exist takes the same path as a kernel without IPVS."""
    with pytest.raises(NoIpvsError) as excinfo:
        KernelIpvs(family_name="LVSCTL_NONE", modprobe=lambda: False)
    assert str(excinfo.value).startswith("this kernel has no IPVS:")
    assert "\n" not in str(excinfo.value)
