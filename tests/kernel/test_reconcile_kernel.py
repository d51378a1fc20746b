"""Reconciliation against the real kernel: from empty, after drift made with ipvsadm, next to a
service lvsctl does not manage; draining a real server that still carries a connection; the
refused-op rule, through the daemon's Dataplane and through the `lvsctl ipvs` command."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lvsctl.core.config import load_cluster, parse_cluster
from lvsctl.core.model import DestKey, DestSpec, Forwarding, Protocol, ServiceKey
from lvsctl.director.dataplane import Dataplane, Outcome, apply_ops
from lvsctl.director.ipvs import IpvsTable, KernelIpvs
from lvsctl.director.ipvs_text import save_text
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DrainDest,
    EditDest,
    Op,
    desired_table,
    plan,
    update_drain_state,
)
from tests.conftest import EXAMPLE
from tests.support.ipvs_lab import ADDRESSES, PORT, RS_PORT, VIP, Client, nat_lab
from tests.support.netns import Lab

pytestmark = pytest.mark.kernel

WWW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
FOREIGN = ["-t", "198.51.100.1:22"]
LVSCTL = Path(sys.executable).parent / "lvsctl"


def apply_all(ipvs: IpvsTable, ops: list[Op]) -> None:
    """Apply ops through the driver; every one must be applied."""
    results = apply_ops(ipvs, ops)
    assert [r for r in results if r.outcome is not Outcome.APPLIED] == []


def _foreign_rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if "198.51.100.1:22" in line]


def test_reconcile_from_empty_after_drift_and_beside_a_foreign_service(lab: Lab) -> None:
    ns = lab.netns("rk")
    ns.run(["ipvsadm", "-A", *FOREIGN, "-s", "rr"])
    ns.run(["ipvsadm", "-a", *FOREIGN, "-r", "198.51.100.2:22", "-g", "-w", "1"])
    foreign = _foreign_rules(ns.run(["ipvsadm", "-S", "-n"]))
    assert len(foreign) == 2

    cluster = load_cluster(EXAMPLE).cluster
    desired = desired_table(cluster, {})
    with KernelIpvs(netns=ns.name) as ipvs:
        ops = plan(desired, ipvs.observe(), {}, 0.0)
        services = len(cluster.services)
        dests = sum(len(s.realservers) for s in cluster.services)
        assert [type(op) for op in ops].count(AddService) == services
        assert [type(op) for op in ops].count(AddDest) == dests
        assert len(ops) == services + dests
        apply_all(ipvs, ops)
        assert plan(desired, ipvs.observe(), {}, 0.0) == []

        # Drift behind lvsctl's back: a dest removed, a weight changed.
        ns.run(["ipvsadm", "-d", "-t", "192.0.2.10:80", "-r", "192.0.2.21:80"])
        ns.run(["ipvsadm", "-e", "-t", "192.0.2.10:80", "-r", "192.0.2.22:80", "-g", "-w", "9"])
        ops = plan(desired, ipvs.observe(), {}, 0.0)
        assert ops == [AddDest(WWW, DestKey("192.0.2.21", 80), DestSpec(10, Forwarding.DR)),
                       EditDest(WWW, DestKey("192.0.2.22", 80), DestSpec(10, Forwarding.DR))]
        before = ipvs.writes
        apply_all(ipvs, ops)
        assert ipvs.writes - before == 2  # one write per change
        assert plan(desired, ipvs.observe(), {}, 0.0) == []

    # The foreign service is exactly as ipvsadm left it.
    assert _foreign_rules(ns.run(["ipvsadm", "-S", "-n"])) == foreign


NAT_CLUSTER = f"""\
cluster: drain
zookeeper: {{hosts: ["127.0.0.1:2181"]}}
directors:
  - {{name: lb1, address: 192.0.2.1/24, interface: eth0, peer: {{address: 192.0.2.1}}}}
  - {{name: lb2, address: 192.0.2.2/24, interface: eth0, peer: {{address: 192.0.2.2}}}}
vips:
  - {{address: {VIP}, interface: eth0}}
  - {{address: 10.0.1.1, interface: br0, inside: true, network: 10.0.1.0/24}}
services:
  - name: web
    vip: {VIP}
    port: {PORT}
    forwarding: nat
    scheduler: rr
    drain_timeout: 120s
    realservers:
      - {{name: r1, address: {ADDRESSES["r1"]}, port: {RS_PORT}}}
      - {{name: r2, address: {ADDRESSES["r2"]}, port: {RS_PORT}}}
"""


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def test_drain_keeps_a_live_connection_until_it_closes(lab: Lab, tmp_path: Path) -> None:
    nat = nat_lab(lab)
    full = parse_cluster(NAT_CLUSTER, "nat.yaml").cluster
    with KernelIpvs(netns=nat.director.name) as ipvs:
        apply_all(ipvs, plan(desired_table(full, {}), ipvs.observe(), {}, 0.0))
        web = full.services[0].key

        client = Client(nat)
        serving = client.send()
        assert serving in ADDRESSES
        other = next(name for name in ADDRESSES if name != serving)
        busy = DestKey(ADDRESSES[serving], RS_PORT)

        # The real server that carries the connection leaves the cluster file.
        doc = yaml.safe_load(NAT_CLUSTER)
        doc["services"][0]["realservers"] = [
            rs for rs in doc["services"][0]["realservers"] if rs["name"] != serving]
        smaller = parse_cluster(yaml.safe_dump(doc), "nat.yaml").cluster
        desired = desired_table(smaller, {})
        observed = ipvs.observe()
        assert observed[web].dests[busy].active_conns == 1
        ops = plan(desired, observed, {}, 0.0)
        assert ops == [DrainDest(web, busy, Forwarding.NAT)]
        apply_all(ipvs, ops)

        # Draining: weight 0, the old connection still works, new ones go elsewhere.
        drain = update_drain_state({}, desired, ipvs.observe(), time.monotonic())
        assert list(drain) == [(web, busy)]
        assert ipvs.observe()[web].dests[busy].weight == 0
        assert client.send() == serving
        newcomer = Client(nat)
        assert newcomer.send() == other
        newcomer.reset()
        assert plan(desired, ipvs.observe(), drain, time.monotonic()) == []

        # The connection closes: once the kernel's entry is gone the dest is deleted.
        client.reset()
        _wait_for(lambda: ipvs.observe()[web].dests[busy].conns == 0, 40,
                  "the drained dest's connections to reach 0")
        ops = plan(desired, ipvs.observe(), drain, time.monotonic())
        assert ops == [DelDest(web, busy)]
        apply_all(ipvs, ops)
        assert set(ipvs.observe()[web].dests) == {DestKey(ADDRESSES[other], RS_PORT)}


# Debian 12's kernel builds no "twos" scheduler: a service on it is refused with ENOENT.
REFUSED_CLUSTER = NAT_CLUSTER + f"""\
  - name: other
    vip: {VIP}
    port: 81
    forwarding: nat
    scheduler: twos
    realservers:
      - {{name: r1, address: {ADDRESSES["r1"]}, port: {RS_PORT}}}
      - {{name: r2, address: {ADDRESSES["r2"]}, port: {RS_PORT}}}
"""
OTHER = ServiceKey.inet(Protocol.TCP, VIP, 81)


def test_the_daemons_pass_refuses_one_service_and_programs_the_rest(lab: Lab) -> None:
    ns = lab.netns("rd")
    cluster = parse_cluster(REFUSED_CLUSTER, "refused.yaml").cluster
    with KernelIpvs(netns=ns.name) as ipvs:
        plane = Dataplane(ipvs)
        summary = plane.reconcile(cluster, {}, epoch=5, role="active")
        assert {k: summary[k] for k in ("planned", "applied", "refused", "skipped")} == {
            "planned": 6, "applied": 3, "refused": 1, "skipped": 2}
        assert summary["errors"][0].endswith("(ENOENT)")
        assert set(ipvs.observe()) == {WWW}
        assert len(ipvs.observe()[WWW].dests) == 2
        # The next pass re-plans from a fresh observation and meets the same refusal.
        again = plane.reconcile(cluster, {}, epoch=5, role="active")
        assert (again["planned"], again["applied"], again["refused"]) == (3, 0, 1)


def _lvsctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LVSCTL), *args], capture_output=True, text=True, timeout=300)


def test_the_command_applies_by_the_same_rule(lab: Lab, tmp_path: Path) -> None:
    """`lvsctl ipvs apply` as a process on the real kernel: a refused service is printed with
    its reason, its real servers are skipped, the rest is applied, and the exit code is 1; with
    the file fixed it finishes the job; `plan` then finds nothing and `save` is ipvsadm's."""
    ns = lab.netns("rc")
    refused, fixed = tmp_path / "refused.yaml", tmp_path / "fixed.yaml"
    refused.write_text(REFUSED_CLUSTER)
    fixed.write_text(REFUSED_CLUSTER.replace("scheduler: twos", "scheduler: wrr"))

    done = _lvsctl("ipvs", "--netns", ns.name, "apply", "--json", str(refused))
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert {k: report[k] for k in ("applied", "refused", "skipped")} == {
        "applied": 3, "refused": 1, "skipped": 2}
    (refusal,) = [r for r in report["results"] if r["outcome"] == "refused"]
    assert (refusal["op"], refusal["service"], refusal["errno"]) == (
        "add_service", str(OTHER), errno.ENOENT)
    assert "scheduler twos: the kernel refused: no such destination, scheduler" in done.stderr
    assert done.stderr.count("skipped, since the kernel refused: add service") == 2
    assert done.stderr.splitlines()[-1].startswith(
        "lvsctl: refused.yaml: 1 op(s) refused by the kernel and 2 skipped with them, of 6")
    assert "TCP  192.0.2.10:81" not in ns.run(["ipvsadm", "-Ln"])

    done = _lvsctl("ipvs", "--netns", ns.name, "apply", str(fixed))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "add service tcp 192.0.2.10:81 scheduler wrr",
        "add dest tcp 192.0.2.10:81 -> 10.0.1.11:8080 nat weight 1",
        "add dest tcp 192.0.2.10:81 -> 10.0.1.12:8080 nat weight 1",
        "3 op(s) applied",
    ]
    done = _lvsctl("ipvs", "--netns", ns.name, "plan", str(fixed))
    assert (done.returncode, done.stdout) == (
        0, "fixed.yaml: the IPVS table already matches; nothing to do\n")
    done = _lvsctl("ipvs", "--netns", ns.name, "save")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ns.run(["ipvsadm", "-S", "-n"])
    with KernelIpvs(netns=ns.name) as ipvs:
        assert save_text(ipvs.observe()) == done.stdout
        assert set(ipvs.observe()) == {WWW, OTHER}
