"""The desired table with the keepalived knobs: per-real-server on_failure, alpha, quorum with
hysteresis (a table of the rule, then passes that carry the verdict), and one-packet scheduling
carried by the service spec, through plan and the fake IPVS (the contract suite holds it to the
kernel's rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import DestKey, Health, Service, ServiceSpec
from lvsctl.director.reconcile import (
    AddService,
    EditService,
    desired_table,
    plan,
    quorum_verdicts,
)
from lvsctl.testbed.fake_ipvs import FakeIpvs

HEAD = """\
cluster: t
zookeeper: {hosts: ["127.0.0.1:2181"]}
directors:
  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2}}
  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3}}
vips:
  - {address: 192.0.2.10, interface: eth0}
services:
"""
POOL = "".join(
    f"      - {{name: web{i}, address: 192.0.2.{20 + i}, check: {{type: tcp}}}}\n"
    for i in range(1, 6)
)
WEB = [DestKey(f"192.0.2.{20 + i}", 80) for i in range(1, 6)]
SORRY = DestKey("192.0.2.99", 80)
UP, DOWN = Health(True), Health(False)


def www(extra: str = "", pool: str = POOL) -> str:
    return HEAD + (
        "  - name: www\n    vip: 192.0.2.10\n    port: 80\n    forwarding: dr\n"
        f"    sorry_server: {{address: 192.0.2.99}}\n{extra}    realservers:\n{pool}"
    )


def service_of(text: str) -> Service:
    return parse_cluster(text, "c.yaml").cluster.services[0]


def health(up: int, total: int = 5) -> dict[tuple[str, str], Health]:
    return {("www", f"web{i}"): UP if i <= up else DOWN for i in range(1, total + 1)}


# (quorum, hysteresis, healthy, last verdict, held?)
QUORUM_RULE = [
    (3, 0, 3, None, True), (3, 0, 2, None, False), (3, 0, 2, True, False),
    (3, 0, 3, False, True),  # without hysteresis the plain count decides
    (3, 1, 2, None, True),  # no verdict yet: judged as held, lost only below 3 - 1
    (3, 1, 2, True, True), (3, 1, 1, True, False),  # lost below q - h
    (3, 1, 3, False, False), (3, 1, 4, False, True),  # regained at q + h
    (3, 1, 2, False, False),
    (2, 2, 1, True, True), (2, 2, 0, True, False),  # no healthy server never makes quorum
    (0, 0, 0, None, True), (0, 0, 0, False, True),  # quorum 0: always held
]


@pytest.mark.parametrize(("quorum", "hysteresis", "healthy", "was_held", "held"), QUORUM_RULE)
def test_quorum_rule(quorum: int, hysteresis: int, healthy: int, was_held: bool | None,
                     held: bool) -> None:
    service = service_of(www(f"    quorum: {quorum}\n    quorum_hysteresis: {hysteresis}\n"))
    assert service.quorum_held(healthy, was_held) is held


def test_quorum_hysteresis_across_passes() -> None:
    text = www("    quorum: 3\n    quorum_hysteresis: 1\n")
    cluster = parse_cluster(text, "c.yaml").cluster
    verdicts = None
    sorry_per_pass = []
    # Healthy servers per pass: a flapping pool around the quorum of 3.
    for up in (5, 2, 1, 2, 3, 4, 3, 2):
        desired = desired_table(cluster, health(up), quorum_held=verdicts)
        verdicts = quorum_verdicts(desired)
        (service,) = desired.values()
        sorry_per_pass.append(SORRY in service.dests)
    # held at 2 (not below 3 - 1); lost at 1; still lost at 2 and 3; back at 4 (3 + 1);
    # held at 3 and 2 again.
    assert sorry_per_pass == [False, False, True, True, True, False, False, False]


def test_without_hysteresis_the_old_rule_holds() -> None:
    cluster = parse_cluster(www("    quorum: 3\n"), "c.yaml").cluster
    for up, sorry in ((3, False), (2, True), (3, False)):
        (service,) = desired_table(cluster, health(up)).values()
        assert (SORRY in service.dests) is sorry


def test_alpha_servers_are_down_until_their_first_result() -> None:
    pool = POOL + "      - {name: plain, address: 192.0.2.30}\n"
    plain = DestKey("192.0.2.30", 80)
    for on_failure, before in (("remove", {plain: 1}),
                               ("weight0", {**dict.fromkeys(WEB, 0), plain: 1})):
        cluster = parse_cluster(www(f"    alpha: true\n    on_failure: {on_failure}\n", pool),
                                "c.yaml").cluster
        (service,) = desired_table(cluster, {}).values()
        # Unchecked servers are not affected: alpha only waits for checks.
        assert {k: s.weight for k, s in service.dests.items()} == before
        (service,) = desired_table(cluster, {("www", "web1"): UP}).values()
        assert service.dests[WEB[0]].weight == 1
    # Without alpha, unknown is healthy (warm start).
    (service,) = desired_table(parse_cluster(www(), "c.yaml").cluster, {}).values()
    assert set(service.dests) == set(WEB)


def test_on_failure_per_real_server() -> None:
    pool = POOL.replace("web2, address: 192.0.2.22,",
                        "web2, address: 192.0.2.22, on_failure: weight0,")
    cluster = parse_cluster(www("", pool), "c.yaml").cluster
    (service,) = desired_table(cluster, health(0)).values()
    assert {k: s.weight for k, s in service.dests.items()} == {WEB[1]: 0, SORRY: 1}


UDP = HEAD + """\
  - name: dns
    vip: 192.0.2.10
    port: 53
    protocol: udp
    forwarding: dr
    OPS
    realservers: [{name: ns1, address: 192.0.2.31}]
"""


def test_ops_flag_change_is_an_edit_and_the_fake_keeps_it() -> None:
    with_ops = parse_cluster(UDP.replace("OPS", "ops: true"), "c.yaml").cluster
    without = parse_cluster(UDP.replace("OPS", ""), "c.yaml").cluster
    ipvs = FakeIpvs()
    desired = desired_table(without, {})
    assert set(ipvs.apply_batch(plan(desired, ipvs.observe(), {}, 0.0))) == {0}
    desired = desired_table(with_ops, {})
    ops = plan(desired, ipvs.observe(), {}, 0.0)
    (key,) = desired
    assert ops == [EditService(key, ServiceSpec(flags=frozenset({"ops"})))]
    assert ipvs.apply_batch(ops) == [0]
    assert ipvs.observe()[key].spec.flags == frozenset({"ops"})
    assert plan(desired, ipvs.observe(), {}, 0.0) == []
    assert isinstance(plan(desired, {}, {}, 0.0)[0], AddService)


def test_the_director_carries_the_quorum_verdict_between_passes(tmp_path: Path) -> None:
    from lvsctl.director.dataplane import Dataplane

    cluster = parse_cluster(www("    quorum: 3\n    quorum_hysteresis: 1\n"), "c.yaml").cluster
    dataplane = Dataplane(FakeIpvs(str(tmp_path / "ipvs.json")), monotonic=lambda: 0.0)
    sorry_per_pass = []
    for up in (5, 2, 1, 2, 3, 4, 3, 2):
        dataplane.reconcile(cluster, health(up), epoch=1, role="ACTIVE")
        (observed,) = dataplane.table.observe().values()
        sorry_per_pass.append(SORRY in observed.dests)
    # The same sequence as the pure rule above, this time through the kernel table's fake.
    assert sorry_per_pass == [False, False, True, True, True, False, False, False]
