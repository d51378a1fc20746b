"""The worker's side of the metrics (director/exporter.py): counts classified into the enums,
the kernel's view named by the cluster file, and the record's services rebuilt only on change."""

from __future__ import annotations

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import DestKey, Health
from lvsctl.director.exporter import (
    RecordServices,
    WorkerStats,
    config_number,
    kernel_view,
    op_kind,
    peer_stats,
)
from lvsctl.director.metrics import (
    Inconclusive,
    OpKind,
    PeerReject,
    ProbeFailure,
    Role,
    TransitionReason,
)
from lvsctl.director.reconcile import ObservedDest, ObservedService, Stats
from lvsctl.healthcheck.result import CheckResult

CLUSTER = parse_cluster("""\
cluster: t
zookeeper: {hosts: ['127.0.0.1:2181']}
directors:
  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2, port: 7001}}
  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3, port: 7002}}
vips: [{address: 192.0.2.10, interface: eth0}]
services:
  - {name: www, vip: 192.0.2.10, port: 80, forwarding: dr,
     realservers: [{name: web1, address: 192.0.2.21}, {name: web2, address: 192.0.2.22}]}
""", "cluster.yaml").cluster


def test_op_kinds_and_config_versions_are_read_whole() -> None:
    assert op_kind("AddDest") is OpKind.ADD_DEST
    assert op_kind("DelService") is OpKind.DEL_SERVICE
    assert op_kind("Frobnicate") is None
    assert config_number("cluster.yaml@v12") == 12
    assert config_number("/etc/lvsctl/cluster.yaml") is None
    assert config_number("cluster.yaml@v12x") is None
    assert config_number("") is None


def test_free_text_is_counted_under_its_enum_never_as_a_label() -> None:
    stats = WorkerStats()
    stats.transition("ACTIVE", "won the election")
    stats.transition("STANDBY", "lb2 leads")
    stats.transition("STANDBY", "lb2 leads")
    stats.transition("<script>", "whatever")  # not an election state: not counted
    assert stats.transitions == {(Role.ACTIVE, TransitionReason.WON_ELECTION): 1,
                                 (Role.STANDBY, TransitionReason.OTHER_LEADS): 2}
    stats.probe("tcp 192.0.2.21:80", CheckResult(False, "connection refused", 0.001), False)
    stats.probe("tcp 192.0.2.21:80", CheckResult(False, "x" * 500, 0.5, timed_out=True), True)
    stats.probe("tcp 192.0.2.21:80", CheckResult(True, "connected", 0.003), False)
    (probe,) = stats.probe_stats()
    assert probe.failures == {ProbeFailure.REFUSED: 1}
    assert probe.inconclusive == {Inconclusive.LATE_TIMEOUT: 1}
    assert probe.latency.count == 3
    stats.keep_targets(["tcp 192.0.2.22:80"])
    assert stats.probe_stats() == ()
    peer = peer_stats(True, 5, [("bad HMAC", 2), ("replayed", 1), ("?!", 4)])
    assert peer.rejected == {PeerReject.BAD_MAC: 2, PeerReject.REPLAYED: 1,
                             PeerReject.OTHER: 4}


def test_reconcile_summaries_add_up_by_kind() -> None:
    stats = WorkerStats()
    stats.reconciled(0.002, {"ops": {"AddService": 1, "AddDest": 2}, "kernel_errors": 0}, ())
    stats.reconciled(0.5, {"ops": {"AddDest": 1, "Unknown": 9}, "kernel_errors": 2}, ())
    stats.reconcile_failed()
    assert stats.ops == {OpKind.ADD_SERVICE: 1, OpKind.ADD_DEST: 3}
    assert stats.kernel_errors == 3
    assert stats.reconcile.data().count == 2


def test_the_kernel_view_names_only_what_the_cluster_file_names() -> None:
    (svc,) = CLUSTER.services
    web1 = svc.realservers[0]
    observed = {svc.key: ObservedService(svc.key, svc.spec, {
        web1.key: ObservedDest(web1.key, 5, 3, 2, 1, stats=Stats(conns=7, inbytes=640)),
        DestKey("192.0.2.99", 80): ObservedDest(DestKey("192.0.2.99", 80), 1, 3),
    }, stats=Stats(conns=9, outbytes=100))}
    (seen,) = kernel_view(CLUSTER, observed)
    assert (seen.service, seen.counters.conns, seen.counters.outbytes) == ("www", 9, 100)
    (dest,) = seen.dests  # the foreign dest 192.0.2.99 has no name: left out
    assert (dest.realserver, dest.weight, dest.active_conns, dest.inactive_conns,
            dest.counters.conns, dest.counters.inbytes) == ("web1", 5, 2, 1, 7, 640)
    assert kernel_view(CLUSTER, None) == ()


def test_the_records_services_are_rebuilt_only_when_health_or_the_cluster_changed() -> None:
    cache = RecordServices()
    health = {("www", "web1"): Health(True)}
    first = cache.get(CLUSTER, health)
    assert cache.get(CLUSTER, dict(health)) is first
    changed = cache.get(CLUSTER, {("www", "web1"): Health(False, None, "refused")})
    assert changed is not first
    web1, web2 = changed[0].realservers
    assert web1.health is not None and not web1.health.healthy and web2.health is None
    assert cache.get(None, health) == ()
