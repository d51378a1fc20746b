"""plan() and desired_table() as tables of cases: (wanted, what the kernel has) -> ops; and the
reconcile driver's rule for a refused op, as a table of cases on the fake."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import replace

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.core.errors import KernelError
from lvsctl.core.model import (
    DestKey,
    DestSpec,
    Family,
    Forwarding,
    Health,
    Protocol,
    ServiceKey,
    ServiceSpec,
)
from lvsctl.director.dataplane import Dataplane, OpResult, Outcome, apply_ops
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DesiredService,
    DrainDest,
    EditDest,
    EditService,
    ObservedDest,
    ObservedService,
    Op,
    desired_table,
    draining,
    op_dict,
    plan,
    update_drain_state,
)
from lvsctl.testbed.fake_ipvs import FakeIpvs

TCP = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
UDP = ServiceKey.inet(Protocol.UDP, "192.0.2.10", 53)
V6 = ServiceKey.inet(Protocol.TCP, "2001:db8::10", 443)
FWM = ServiceKey.mark(Family.INET, 7)
FOREIGN = ServiceKey.inet(Protocol.TCP, "198.51.100.1", 22)
A, B, C = DestKey("10.0.1.1", 80), DestKey("10.0.1.2", 80), DestKey("10.0.1.3", 80)
WLC = ServiceSpec()
RR = ServiceSpec(scheduler="rr")
DR = Forwarding.DR
NAT = Forwarding.NAT


def want(key: ServiceKey, dests: dict[DestKey, int], spec: ServiceSpec = WLC,
         fwd: Forwarding = DR, timeout: float = 60.0) -> DesiredService:
    return DesiredService(key, spec, {d: DestSpec(w, fwd) for d, w in dests.items()}, timeout)


def have(key: ServiceKey, dests: dict[DestKey, tuple[int, int]], spec: ServiceSpec = WLC,
         fwd: Forwarding = DR) -> ObservedService:
    """dests: key -> (weight, connections)."""
    return ObservedService(key, spec, {
        d: ObservedDest(d, w, fwd.value, active_conns=c) for d, (w, c) in dests.items()
    })


def table(*services):  # type: ignore[no-untyped-def]
    return {s.key: s for s in services}


# (name, desired, observed, drain_state, now, expected ops)
CASES: list[tuple[str, object, object, dict, float, list[Op]]] = [
    ("empty kernel: service first, then its dests",
     table(want(TCP, {A: 1, B: 2})), table(), {}, 0.0,
     [AddService(TCP, WLC), AddDest(TCP, A, DestSpec(1, DR)), AddDest(TCP, B, DestSpec(2, DR))]),
    ("everything matches: nothing to do",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 5)})), {}, 0.0, []),
    ("weight changed: one EditDest",
     table(want(TCP, {A: 1, B: 3})), table(have(TCP, {A: (1, 0), B: (2, 0)})), {}, 0.0,
     [EditDest(TCP, B, DestSpec(3, DR))]),
    ("fwd method changed: EditDest",
     table(want(TCP, {A: 1}, fwd=NAT)), table(have(TCP, {A: (1, 0)}, fwd=DR)), {}, 0.0,
     [EditDest(TCP, A, DestSpec(1, NAT))]),
    ("scheduler changed: EditService only",
     table(want(TCP, {A: 1}, spec=RR)), table(have(TCP, {A: (1, 0)})), {}, 0.0,
     [EditService(TCP, RR)]),
    ("persistence changed: EditService",
     table(want(TCP, {}, spec=ServiceSpec(persistence=300, netmask=24))), table(have(TCP, {})),
     {}, 0.0, [EditService(TCP, ServiceSpec(persistence=300, netmask=24))]),
    ("dest missing from the kernel (drift): added back",
     table(want(TCP, {A: 1, B: 1})), table(have(TCP, {A: (1, 0)})), {}, 0.0,
     [AddDest(TCP, B, DestSpec(1, DR))]),
    ("removed dest with connections: drained to weight 0",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0), B: (1, 3)})), {}, 0.0,
     [DrainDest(TCP, B, DR)]),
    ("removed dest without connections: deleted at once",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0), B: (1, 0)})), {}, 0.0,
     [DelDest(TCP, B)]),
    ("draining dest still busy before its deadline: left alone",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0), B: (0, 2)})),
     {(TCP, B): 100.0}, 159.0, []),
    ("draining dest past its deadline: deleted although busy",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0), B: (0, 2)})),
     {(TCP, B): 100.0}, 160.0, [DelDest(TCP, B)]),
    ("draining dest whose connections closed: deleted",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0), B: (0, 0)})),
     {(TCP, B): 100.0}, 101.0, [DelDest(TCP, B)]),
    ("drain rebuilt from the kernel after a restart (no drain state): deadline starts now",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0), B: (0, 2)})), {}, 5000.0, []),
    ("UDP dest removed: deleted at once, even with connections",
     table(want(UDP, {A: 1})), table(have(UDP, {A: (1, 0), B: (1, 9)})), {}, 0.0,
     [DelDest(UDP, B)]),
    ("drain_timeout 0: a busy draining dest goes at once",
     table(want(TCP, {A: 1}, timeout=0)), table(have(TCP, {A: (1, 0), B: (0, 2)})), {}, 0.0,
     [DelDest(TCP, B)]),
    ("removed dest comes back while draining: weight restored",
     table(want(TCP, {A: 1, B: 4})), table(have(TCP, {A: (1, 0), B: (0, 2)})),
     {(TCP, B): 1.0}, 2.0, [EditDest(TCP, B, DestSpec(4, DR))]),
    ("foreign service in the kernel: untouched",
     table(want(TCP, {A: 1})), table(have(TCP, {A: (1, 0)}), have(FOREIGN, {C: (1, 0)})), {},
     0.0, []),
    ("IPv6 service: the netmask is the host prefix /128",
     table(want(V6, {DestKey("2001:db8:1::1", 443): 1})),
     table(have(TCP, {A: (1, 0)})), {}, 0.0,
     [AddService(V6, ServiceSpec(netmask=128)),
      AddDest(V6, DestKey("2001:db8:1::1", 443), DestSpec(1, DR))]),
    ("fwmark service: same rules",
     table(want(FWM, {A: 2})), table(have(FWM, {A: (1, 0), B: (1, 0)})), {}, 0.0,
     [EditDest(FWM, A, DestSpec(2, DR)), DelDest(FWM, B)]),
    ("desired weight 0 (on_failure weight0) is kept, not drained",
     table(want(TCP, {A: 0})), table(have(TCP, {A: (0, 4)})), {}, 0.0, []),
]


@pytest.mark.parametrize(("name", "desired", "observed", "drain", "now", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_plan(name, desired, observed, drain, now, expected) -> None:  # type: ignore[no-untyped-def]
    assert plan(desired, observed, drain, now) == expected


def test_retired_service_is_drained_then_deleted_dest_first() -> None:
    observed = table(have(TCP, {A: (1, 0), B: (1, 2)}), have(FOREIGN, {C: (1, 0)}))
    ops = plan({}, observed, {}, 0.0, retired={TCP: 30.0})
    assert ops == [DelDest(TCP, A), DrainDest(TCP, B, DR)]
    after = table(have(TCP, {B: (0, 2)}))
    assert plan({}, after, {(TCP, B): 0.0}, 29.0, retired={TCP: 30.0}) == []
    assert plan({}, after, {(TCP, B): 0.0}, 30.0, retired={TCP: 30.0}) == [
        DelDest(TCP, B), DelService(TCP)]
    assert plan({}, table(have(TCP, {})), {}, 0.0, retired={TCP: 30.0}) == [DelService(TCP)]


def test_adds_come_before_deletes() -> None:
    desired = table(want(UDP, {A: 1}))
    observed = table(have(TCP, {A: (1, 0)}), have(UDP, {B: (1, 0)}))
    assert plan(desired, observed, {}, 0.0, retired={TCP: 0.0}) == [
        AddDest(UDP, A, DestSpec(1, DR)), DelDest(TCP, A), DelDest(UDP, B), DelService(TCP)]


def test_observe_failed_plans_adds_only() -> None:
    desired = table(want(TCP, {A: 1}))
    assert plan(desired, None, {}, 0.0, retired={UDP: 0.0}) == [
        AddService(TCP, WLC), AddDest(TCP, A, DestSpec(1, DR))]


def test_plan_applied_to_the_observed_table_converges() -> None:
    """Applying a plan to the table it came from yields an empty plan (no flapping)."""
    desired = table(want(TCP, {A: 1, B: 2}, spec=RR), want(UDP, {C: 1}, fwd=NAT))
    fake = FakeIpvs()
    fake.apply(AddService(TCP, WLC))
    fake.apply(AddDest(TCP, C, DestSpec(5, DR)))
    for op in plan(desired, fake.observe(), {}, 0.0):
        fake.apply(op)
    assert plan(desired, fake.observe(), {}, 0.0) == []


def test_drain_state_tracks_draining_dests() -> None:
    desired = table(want(TCP, {A: 1}))
    observed = table(have(TCP, {A: (1, 0), B: (0, 3), C: (2, 3)}), have(FOREIGN, {A: (0, 1)}))
    assert draining(desired, observed) == {(TCP, B)}
    state = update_drain_state({(TCP, B): 7.0, (TCP, C): 1.0}, desired, observed, 50.0)
    assert state == {(TCP, B): 7.0}
    assert update_drain_state({}, desired, observed, 50.0) == {(TCP, B): 50.0}


def test_op_text_and_json() -> None:
    op = EditDest(TCP, A, DestSpec(3, NAT))
    assert str(op) == "edit dest tcp 192.0.2.10:80 -> 10.0.1.1:80 nat weight 3"
    assert op_dict(op)["weight"] == 3
    assert str(AddService(V6, ServiceSpec("mh", frozenset({"mh-port"}), 60, 64))) == (
        "add service tcp [2001:db8::10]:443 scheduler mh flags mh-port persistence 60s "
        "netmask /64")


# ---------------------------------------------------------------------------------------------
# desired_table: health -> effective weights
# ---------------------------------------------------------------------------------------------

CLUSTER = """\
cluster: t
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
    on_failure: ON_FAILURE
    quorum: 2
    sorry_server: {address: 192.0.2.99}
    realservers:
      - {name: web1, address: 192.0.2.21, weight: 10, check: {type: tcp}}
      - {name: web2, address: 192.0.2.22, weight: 5, check: {type: tcp}}
      - {name: web3, address: 192.0.2.23, weight: 1}
"""
W1, W2, W3 = DestKey("192.0.2.21", 80), DestKey("192.0.2.22", 80), DestKey("192.0.2.23", 80)
SORRY = DestKey("192.0.2.99", 80)
UP, DOWN = Health(True), Health(False)

# (on_failure, health of web1, health of web2, expected dest weights)
HEALTH_CASES = [
    ("remove", UP, UP, {W1: 10, W2: 5, W3: 1}),
    ("remove", None, None, {W1: 10, W2: 5, W3: 1}),  # warm start: unknown = healthy
    ("remove", Health(True, weight=3), UP, {W1: 3, W2: 5, W3: 1}),  # dynamic weight
    ("remove", DOWN, UP, {W2: 5, W3: 1}),
    ("weight0", DOWN, UP, {W1: 0, W2: 5, W3: 1}),
    ("remove", DOWN, DOWN, {W3: 1, SORRY: 1}),  # 1 healthy < quorum 2: sorry server added
    ("weight0", DOWN, DOWN, {W1: 0, W2: 0, W3: 1, SORRY: 1}),
]


@pytest.mark.parametrize(("on_failure", "h1", "h2", "expected"), HEALTH_CASES)
def test_desired_table(on_failure, h1, h2, expected) -> None:  # type: ignore[no-untyped-def]
    cluster = parse_cluster(CLUSTER.replace("ON_FAILURE", on_failure), "c.yaml").cluster
    health = {k: v for k, v in ((("www", "web1"), h1), (("www", "web2"), h2)) if v is not None}
    (service,) = desired_table(cluster, health).values()
    assert {k: s.weight for k, s in service.dests.items()} == expected
    assert {s.forwarding for s in service.dests.values()} == {DR}
    assert service.key == TCP


def test_desired_table_unknown_unhealthy() -> None:
    cluster = parse_cluster(CLUSTER.replace("ON_FAILURE", "remove"), "c.yaml").cluster
    (service,) = desired_table(cluster, {}, unknown="unhealthy").values()
    assert dict(service.dests) == {W3: DestSpec(1, DR), SORRY: DestSpec(1, DR)}


def test_spec_equality_decides_edits() -> None:
    spec = ServiceSpec("sh", frozenset({"sh-port"}))
    assert replace(spec) == spec
    desired = table(want(TCP, {}, spec=spec))
    assert plan(desired, table(have(TCP, {}, spec=ServiceSpec("sh"))), {}, 0.0) == [
        EditService(TCP, spec)]


# ---------------------------------------------------------------------------------------------
# The driver's rule for a refused op (director/dataplane.py), on the fake
# ---------------------------------------------------------------------------------------------


class Refusing(FakeIpvs):
    """The fake, answering the ops in ``refuse`` with EPERM (as the kernel answers a process
    without CAP_NET_ADMIN), and failing ``observe`` when ``blind`` (as a dump fails when its
    answers overflow the socket, ENOBUFS)."""

    def __init__(self, refuse: Sequence[Op] = (), blind: bool = False) -> None:
        super().__init__()
        self.refuse = list(refuse)
        self.blind = blind

    def observe(self, *, stats: bool = True) -> dict[ServiceKey, ObservedService]:
        if self.blind:
            raise KernelError("reading IPVS answers failed: No buffer space available",
                              errno=errno.ENOBUFS)
        return super().observe(stats=stats)

    def apply_batch(self, ops: Sequence[Op]) -> list[int]:
        passed = iter(super().apply_batch([op for op in ops if op not in self.refuse]))
        return [errno.EPERM if op in self.refuse else next(passed) for op in ops]


NOSUCH = ServiceSpec(scheduler="nosuch")
APPLIED, ALREADY, REFUSED, SKIPPED = (Outcome.APPLIED, Outcome.ALREADY, Outcome.REFUSED,
                                      Outcome.SKIPPED)

# (name, ops already in the table, ops refused with EPERM, ops to apply,
#  expected per op: (outcome, errno, index of the op it was skipped after))
Expected = list[tuple[Outcome, int, int | None]]
RULE_CASES: list[tuple[str, list[Op], list[Op], list[Op], Expected]] = [
    ("every op applied",
     [], [], [AddService(TCP, WLC), AddDest(TCP, A, DestSpec(1, DR))],
     [(APPLIED, 0, None), (APPLIED, 0, None)]),
    ("a duplicate add is already so, not refused",
     [AddService(TCP, WLC)], [], [AddService(TCP, WLC), AddDest(TCP, A, DestSpec(1, DR))],
     [(ALREADY, errno.EEXIST, None), (APPLIED, 0, None)]),
    ("a delete of what is gone is already so",
     [], [], [DelDest(TCP, A), DelService(TCP)],
     [(ALREADY, errno.ESRCH, None), (ALREADY, errno.ESRCH, None)]),
    ("a refused AddService skips its dests and nothing else",
     [], [], [AddService(TCP, NOSUCH), AddService(UDP, WLC), AddDest(TCP, A, DestSpec(1, DR)),
              AddDest(UDP, B, DestSpec(1, DR)), AddDest(TCP, B, DestSpec(1, DR))],
     [(REFUSED, errno.ENOENT, None), (APPLIED, 0, None), (SKIPPED, 0, 0), (APPLIED, 0, None),
      (SKIPPED, 0, 0)]),
    ("a refused EditService keeps the old spec and its dests go on",
     [AddService(TCP, WLC)], [], [EditService(TCP, NOSUCH), AddDest(TCP, A, DestSpec(1, DR))],
     [(REFUSED, errno.ENOENT, None), (APPLIED, 0, None)]),
    ("a refused dest op takes only itself",
     [AddService(TCP, WLC)], [],
     [AddDest(TCP, A, DestSpec(-1, DR)), AddDest(TCP, B, DestSpec(1, DR)),
      EditDest(TCP, C, DestSpec(1, DR))],
     [(REFUSED, errno.ERANGE, None), (APPLIED, 0, None), (REFUSED, errno.ENOENT, None)]),
    ("a refused DelDest keeps its service (the delete would take the dest along)",
     [AddService(TCP, WLC), AddDest(TCP, A, DestSpec(1, DR)), AddDest(TCP, B, DestSpec(1, DR)),
      AddService(UDP, WLC)],
     [DelDest(TCP, A)], [DelDest(TCP, A), DelDest(TCP, B), DelService(TCP), DelService(UDP)],
     [(REFUSED, errno.EPERM, None), (APPLIED, 0, None), (SKIPPED, 0, 0), (APPLIED, 0, None)]),
]


@pytest.mark.parametrize(("name", "before", "refuse", "ops", "expected"), RULE_CASES,
                         ids=[c[0] for c in RULE_CASES])
@pytest.mark.parametrize("batch", [1, 256])
def test_refused_op_rule(name: str, before: list[Op], refuse: list[Op], ops: list[Op],
                         expected: Expected, batch: int) -> None:
    fake = Refusing(refuse)
    assert fake.apply_batch(before) == [0] * len(before)
    seen: list[OpResult] = []
    results = apply_ops(fake, ops, batch=batch, on_batch=seen.extend)
    assert seen == results
    by_op = {r.op: (r.outcome, r.errno, None if r.after is None else ops.index(r.after))
             for r in results}
    assert [by_op[op] for op in ops] == expected
    # Skipped ops were not sent: one write per op that was.
    assert fake.writes == len(before) + sum(
        1 for r in results if r.outcome is not SKIPPED and r.errno not in (errno.EPERM,
                                                                        errno.ERANGE))


def test_ops_are_applied_services_then_dests_then_service_deletes() -> None:
    ops: list[Op] = [AddService(TCP, WLC), AddDest(TCP, A, DestSpec(1, DR)),
                     AddService(UDP, WLC), AddDest(UDP, B, DestSpec(1, DR)),
                     DelDest(FWM, C), DelService(FWM)]
    results = apply_ops(FakeIpvs(), ops)
    assert [r.op for r in results] == [ops[0], ops[2], ops[1], ops[3], ops[4], ops[5]]


SCHED_CLUSTER = CLUSTER.replace("ON_FAILURE", "remove").replace(
    "realservers:", "scheduler: SCHED\n    realservers:", 1)


def test_dataplane_pass_summary_names_refused_and_skipped_ops() -> None:
    """The daemon's pass follows the same rule: a service on a scheduler the kernel lacks is
    refused and reported, its dests skipped; the next pass plans (and meets) the same."""
    cluster = parse_cluster(SCHED_CLUSTER.replace("SCHED", "twos"), "c.yaml").cluster
    fake = FakeIpvs()
    plane = Dataplane(fake, monotonic=lambda: 0.0)
    summary = plane.reconcile(cluster, {}, epoch=7, role="active")
    assert {k: summary[k] for k in ("epoch", "role", "observed", "planned", "applied",
                                    "already", "refused", "skipped", "services")} == {
        "epoch": 7, "role": "active", "observed": True, "planned": 4, "applied": 0,
        "already": 0, "refused": 1, "skipped": 3, "services": 1}
    assert summary["errors"][0] == (
        "add service tcp 192.0.2.10:80 scheduler twos: the kernel refused: no such "
        "destination, scheduler or persistence engine (ENOENT)")
    assert all("skipped, since the kernel refused: add service" in line
               for line in summary["errors"][1:])
    assert fake.observe() == {}
    assert plane.reconcile(cluster, {}, epoch=7, role="active")["refused"] == 1
    fixed = parse_cluster(SCHED_CLUSTER.replace("SCHED", "rr"), "c.yaml").cluster
    summary = plane.reconcile(fixed, {}, epoch=7, role="active")
    assert (summary["applied"], summary["errors"]) == (4, [])


def test_a_blind_pass_plans_adds_only() -> None:
    cluster = parse_cluster(SCHED_CLUSTER.replace("SCHED", "rr"), "c.yaml").cluster
    table = Refusing(blind=True)
    plane = Dataplane(table, monotonic=lambda: 0.0)
    summary = plane.reconcile(cluster, {}, epoch=3, role="standby")
    assert (summary["observed"], summary["planned"], summary["applied"]) == (False, 4, 4)
    table.blind = False
    assert plane.reconcile(cluster, {}, epoch=3, role="standby")["planned"] == 0
