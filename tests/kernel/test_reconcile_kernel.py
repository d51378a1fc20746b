"""Reconciliation against the real kernel: from empty, after drift made with ipvsadm, next to a
service lvsctl does not manage, and draining a real server that still carries a connection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import load_cluster, parse_cluster
from lvsctl.core.model import DestKey, DestSpec, Forwarding, Protocol, ServiceKey
from lvsctl.director.ipvs import KernelIpvs
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DrainDest,
    EditDest,
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
        assert all(ipvs.apply_all(ops))
        assert plan(desired, ipvs.observe(), {}, 0.0) == []

        # Drift behind lvsctl's back: a dest removed, a weight changed.
        ns.run(["ipvsadm", "-d", "-t", "192.0.2.10:80", "-r", "192.0.2.21:80"])
        ns.run(["ipvsadm", "-e", "-t", "192.0.2.10:80", "-r", "192.0.2.22:80", "-g", "-w", "9"])
        ops = plan(desired, ipvs.observe(), {}, 0.0)
        assert ops == [AddDest(WWW, DestKey("192.0.2.21", 80), DestSpec(10, Forwarding.DR)),
                       EditDest(WWW, DestKey("192.0.2.22", 80), DestSpec(10, Forwarding.DR))]
        before = ipvs.writes
        ipvs.apply_all(ops)
        assert ipvs.writes - before == 2  # one write per change
        assert plan(desired, ipvs.observe(), {}, 0.0) == []

    # The foreign service is exactly as ipvsadm left it.
    assert _foreign_rules(ns.run(["ipvsadm", "-S", "-n"])) == foreign
    # The CLI agrees that there is nothing left to do.
    result = CliRunner().invoke(cli, ["ipvs", "--netns", ns.name, "plan", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.stdout


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
        ipvs.apply_all(plan(desired_table(full, {}), ipvs.observe(), {}, 0.0))
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
        ipvs.apply_all(ops)

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
        ipvs.apply_all(ops)
        assert set(ipvs.observe()[web].dests) == {DestKey(ADDRESSES[other], RS_PORT)}
