"""One suite, two implementations: the in-memory FakeIpvs and the kernel's IPVS must agree.

Every test takes the ``ipvs`` fixture, which is the fake (runs anywhere) or the real kernel
(marked ``kernel``: a fresh network namespace, so each test starts from an empty table). A rule
the fake gets wrong fails here against the kernel, so tests built on the fake stay honest.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lvsctl.core.errors import KernelError
from lvsctl.core.model import (
    DestKey,
    DestSpec,
    Family,
    Forwarding,
    Protocol,
    ServiceKey,
    ServiceSpec,
)
from lvsctl.director.dataplane import Outcome, apply_ops
from lvsctl.director.ipvs import IpvsTable, KernelIpvs, SyncState
from lvsctl.director.ipvs_text import save_text
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DrainDest,
    EditDest,
    EditService,
    Op,
    kernel_spec,
)
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.support.netns import Lab, Netns

TCP = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
UDP = ServiceKey.inet(Protocol.UDP, "192.0.2.10", 53)
SCTP = ServiceKey.inet(Protocol.SCTP, "192.0.2.10", 3868)
TCP6 = ServiceKey.inet(Protocol.TCP, "2001:db8::10", 443)
FWM = ServiceKey.mark(Family.INET, 7)
FWM6 = ServiceKey.mark(Family.INET6, 8)
NAT, DR, TUN = Forwarding.NAT, Forwarding.DR, Forwarding.TUN


@dataclass
class Target:
    ipvs: IpvsTable
    netns: Netns | None  # the kernel's namespace (None for the fake)

    def interface(self) -> str:
        """An interface with an address for the sync daemon (the fake takes any name)."""
        if self.netns is not None:
            self.netns.ip("link", "add", "sync0", "type", "dummy")
            self.netns.ip("addr", "add", "10.9.0.1/24", "dev", "sync0")
            self.netns.ip("link", "set", "sync0", "up")
        return "sync0"


def _kernel_target(lab: Lab) -> Target:
    ns = lab.netns("ct")
    return Target(KernelIpvs(netns=ns.name), ns)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.kernel)])
def target(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Iterator[Target]:
    if request.param == "fake":
        made = Target(FakeIpvs(tmp_path / "ipvs.json"), None)
    else:
        made = _kernel_target(lab)
    try:
        yield made
    finally:
        made.ipvs.close()


@pytest.fixture
def ipvs(target: Target) -> IpvsTable:
    return target.ipvs


def errno_of(excinfo: pytest.ExceptionInfo[KernelError]) -> int | None:
    return excinfo.value.errno


def setup(ipvs: IpvsTable, *ops: Op) -> None:
    assert ipvs.apply_batch(ops) == [0] * len(ops)


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------

SERVICES = [
    (TCP, ServiceSpec("wlc")),
    (UDP, ServiceSpec("rr", persistence=300, netmask=24)),
    (SCTP, ServiceSpec("sh", frozenset({"sh-port", "sh-fallback"}))),
    (TCP6, ServiceSpec("mh", frozenset({"mh-port"}), persistence=60, netmask=64)),
    (FWM, ServiceSpec("wrr")),
    (FWM6, ServiceSpec("lc", netmask=128)),
]


@pytest.mark.parametrize(("key", "spec"), SERVICES, ids=[str(k) for k, _ in SERVICES])
def test_service_round_trip(ipvs: IpvsTable, key: ServiceKey, spec: ServiceSpec) -> None:
    assert ipvs.apply(AddService(key, spec)) is True
    observed = ipvs.observe()
    assert list(observed) == [key]
    assert observed[key].spec == kernel_spec(key, spec)
    assert observed[key].dests == {}


# Every scheduler of the model but "twos", which Debian 12's kernel does not build.
SCHEDULERS = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf",
              "mh"]


def test_every_scheduler(ipvs: IpvsTable) -> None:
    """One test, not one per scheduler: each kernel test costs seconds in the VM."""
    keys = [ServiceKey.inet(Protocol.TCP, "192.0.2.10", 1000 + i) for i in range(len(SCHEDULERS))]
    setup(ipvs, *(AddService(k, ServiceSpec(s)) for k, s in zip(keys, SCHEDULERS, strict=True)))
    observed = ipvs.observe()
    assert [observed[k].spec.scheduler for k in keys] == SCHEDULERS


def test_unknown_scheduler_is_refused(ipvs: IpvsTable) -> None:
    with pytest.raises(KernelError) as excinfo:
        ipvs.apply(AddService(TCP, ServiceSpec("nosuch")))
    assert errno_of(excinfo) == errno.ENOENT
    assert ipvs.observe() == {}


def test_edit_service(ipvs: IpvsTable) -> None:
    ipvs.apply(AddService(TCP, ServiceSpec("wlc")))
    new = ServiceSpec("sh", frozenset({"sh-port"}), persistence=30, netmask=16)
    assert ipvs.apply(EditService(TCP, new)) is True
    assert ipvs.observe()[TCP].spec == new
    assert ipvs.apply(EditService(TCP, ServiceSpec("rr"))) is True
    assert ipvs.observe()[TCP].spec == ServiceSpec("rr")


def test_duplicate_add_keeps_the_first_and_counts_as_done(ipvs: IpvsTable) -> None:
    ipvs.apply(AddService(TCP, ServiceSpec("rr")))
    assert ipvs.apply(AddService(TCP, ServiceSpec("lc"))) is False
    assert ipvs.observe()[TCP].spec == ServiceSpec("rr")


def test_missing_service(ipvs: IpvsTable) -> None:
    assert ipvs.apply(DelService(TCP)) is False  # ESRCH on a delete: already gone
    with pytest.raises(KernelError) as excinfo:
        ipvs.apply(EditService(TCP, ServiceSpec("rr")))
    assert errno_of(excinfo) == errno.ESRCH
    with pytest.raises(KernelError) as excinfo:
        ipvs.apply(AddDest(TCP, DestKey("10.0.1.1", 80), DestSpec(1, NAT)))
    assert errno_of(excinfo) == errno.ESRCH
    assert ipvs.apply(DelDest(TCP, DestKey("10.0.1.1", 80))) is False


def test_delete_service_with_dests(ipvs: IpvsTable) -> None:
    setup(ipvs, AddService(TCP, ServiceSpec()), AddService(UDP, ServiceSpec()),
          AddDest(TCP, DestKey("10.0.1.1", 8080), DestSpec(1, NAT)))
    assert ipvs.apply(DelService(TCP)) is True
    assert list(ipvs.observe()) == [UDP]


# ---------------------------------------------------------------------------------------------
# Dests
# ---------------------------------------------------------------------------------------------

DESTS = [
    (TCP, DestKey("10.0.1.1", 8080), DestSpec(5, NAT)),
    (TCP, DestKey("192.0.2.21", 80), DestSpec(1, DR)),
    (TCP, DestKey("198.51.100.7", 80), DestSpec(100, TUN)),
    (TCP6, DestKey("2001:db8:1::21", 443), DestSpec(3, DR)),
    (TCP6, DestKey("2001:db8:1::22", 8443), DestSpec(0, NAT)),
    (FWM, DestKey("192.0.2.22", 0), DestSpec(2, DR)),
    (UDP, DestKey("10.0.1.2", 5353), DestSpec(1, NAT)),
]


@pytest.mark.parametrize(("service", "key", "spec"), DESTS,
                         ids=[f"{s}->{k}-{p.forwarding.label}" for s, k, p in DESTS])
def test_dest_round_trip(ipvs: IpvsTable, service: ServiceKey, key: DestKey,
                         spec: DestSpec) -> None:
    ipvs.apply(AddService(service, ServiceSpec()))
    assert ipvs.apply(AddDest(service, key, spec)) is True
    (dest,) = ipvs.observe()[service].dests.values()
    assert (dest.key, dest.spec) == (key, spec)
    assert (dest.active_conns, dest.inactive_conns) == (0, 0)


def test_edit_drain_and_delete_dest(ipvs: IpvsTable) -> None:
    key = DestKey("10.0.1.1", 8080)
    setup(ipvs, AddService(TCP, ServiceSpec()), AddDest(TCP, key, DestSpec(5, NAT)))
    assert ipvs.apply(EditDest(TCP, key, DestSpec(9, DR))) is True
    assert ipvs.observe()[TCP].dests[key].spec == DestSpec(9, DR)
    assert ipvs.apply(DrainDest(TCP, key, DR)) is True
    assert ipvs.observe()[TCP].dests[key].spec == DestSpec(0, DR)
    assert ipvs.apply(DelDest(TCP, key)) is True
    assert ipvs.observe()[TCP].dests == {}
    assert ipvs.apply(DelDest(TCP, key)) is False  # ENOENT on a delete: already gone


def test_duplicate_dest_keeps_the_first(ipvs: IpvsTable) -> None:
    key = DestKey("10.0.1.1", 8080)
    setup(ipvs, AddService(TCP, ServiceSpec()), AddDest(TCP, key, DestSpec(5, NAT)))
    assert ipvs.apply(AddDest(TCP, key, DestSpec(7, DR))) is False
    assert ipvs.observe()[TCP].dests[key].spec == DestSpec(5, NAT)


def test_edit_missing_dest(ipvs: IpvsTable) -> None:
    ipvs.apply(AddService(TCP, ServiceSpec()))
    for op in (EditDest(TCP, DestKey("10.0.1.9", 80), DestSpec(1, NAT)),
               DrainDest(TCP, DestKey("10.0.1.9", 80), NAT)):
        with pytest.raises(KernelError) as excinfo:
            ipvs.apply(op)
        assert errno_of(excinfo) == errno.ENOENT


def test_other_family_only_by_tunnel(ipvs: IpvsTable) -> None:
    ipvs.apply(AddService(TCP6, ServiceSpec()))
    with pytest.raises(KernelError) as excinfo:
        ipvs.apply(AddDest(TCP6, DestKey("10.0.1.1", 443), DestSpec(1, NAT)))
    assert errno_of(excinfo) == errno.EINVAL
    assert ipvs.apply(AddDest(TCP6, DestKey("198.51.100.7", 443), DestSpec(1, TUN))) is True
    assert DestKey("198.51.100.7", 443) in ipvs.observe()[TCP6].dests


def test_weight_out_of_range(ipvs: IpvsTable) -> None:
    ipvs.apply(AddService(TCP, ServiceSpec()))
    with pytest.raises(KernelError) as excinfo:
        ipvs.apply(AddDest(TCP, DestKey("10.0.1.1", 80), DestSpec(-1, NAT)))
    assert errno_of(excinfo) == errno.ERANGE


def test_apply_batch_answers_each_op_and_counts_writes(ipvs: IpvsTable) -> None:
    key = DestKey("10.0.1.1", 80)
    before = ipvs.writes
    assert ipvs.apply_batch([AddService(TCP, ServiceSpec()), AddService(TCP, ServiceSpec()),
                             AddDest(TCP, key, DestSpec(1, NAT)),
                             DelDest(TCP, DestKey("10.0.1.2", 80))]) == [
        0, errno.EEXIST, 0, errno.ENOENT]
    assert ipvs.writes - before == 4
    assert ipvs.apply(EditDest(TCP, key, DestSpec(2, NAT))) is True
    assert ipvs.writes - before == 5
    # What the kernel refuses whatever it holds is answered without a write.
    assert ipvs.apply_batch([EditDest(TCP, key, DestSpec(-1, NAT))]) == [errno.ERANGE]
    assert ipvs.writes - before == 5


def test_a_refused_op_in_a_batch_does_not_stop_the_ones_after_it(ipvs: IpvsTable) -> None:
    """The kernel answers each pipelined request on its own: what the driver relies on."""
    key = DestKey("10.0.1.1", 8080)
    assert ipvs.apply_batch([
        AddService(TCP, ServiceSpec()),
        EditService(UDP, ServiceSpec()),  # no such service
        AddService(SCTP, ServiceSpec("nosuch")),  # no such scheduler
        AddDest(TCP, key, DestSpec(1, NAT)),
        AddDest(UDP, key, DestSpec(1, NAT)),  # no such service
        AddService(FWM, ServiceSpec("rr")),
    ]) == [0, errno.ESRCH, errno.ENOENT, 0, errno.ESRCH, 0]
    observed = ipvs.observe()
    assert set(observed) == {TCP, FWM}
    assert set(observed[TCP].dests) == {key}


def test_a_refused_op_raises_with_the_op(ipvs: IpvsTable) -> None:
    op = EditService(UDP, ServiceSpec())
    with pytest.raises(KernelError) as excinfo:
        ipvs.apply(op)
    assert excinfo.value.op == op
    assert str(UDP) in str(excinfo.value)


# ---------------------------------------------------------------------------------------------
# The reconcile driver's rule for a refused op (director/dataplane.py), on both tables
# ---------------------------------------------------------------------------------------------


def test_refused_op_rule(ipvs: IpvsTable) -> None:
    """A refused AddService takes its dests with it (skipped); a refused EditService or AddDest
    takes nothing else; already-so counts as done; the next pass meets the same refusals."""
    v6 = DestKey("2001:db8:1::21", 443)
    setup(ipvs, AddService(TCP6, ServiceSpec("wlc")), AddDest(TCP6, v6, DestSpec(1, DR)))
    a, b = DestKey("10.0.1.1", 8080), DestKey("10.0.1.2", 8080)
    ops: list[Op] = [
        AddService(TCP, ServiceSpec("wlc")),
        AddService(UDP, ServiceSpec("nosuch")),
        EditService(TCP6, ServiceSpec("nosuch")),
        AddDest(TCP, a, DestSpec(1, NAT)),
        AddDest(UDP, a, DestSpec(1, NAT)),
        AddDest(UDP, b, DestSpec(1, NAT)),
        EditDest(TCP6, v6, DestSpec(4, DR)),
        AddDest(TCP6, DestKey("10.0.1.1", 443), DestSpec(1, NAT)),  # other family, not tunnel
        AddDest(TCP6, v6, DestSpec(9, DR)),
    ]
    results = apply_ops(ipvs, ops, batch=4)
    by_op = {r.op: (r.outcome, r.errno, r.after) for r in results}
    assert by_op == {
        ops[0]: (Outcome.APPLIED, 0, None),
        ops[1]: (Outcome.REFUSED, errno.ENOENT, None),
        ops[2]: (Outcome.REFUSED, errno.ENOENT, None),
        ops[3]: (Outcome.APPLIED, 0, None),
        ops[4]: (Outcome.SKIPPED, 0, ops[1]),
        ops[5]: (Outcome.SKIPPED, 0, ops[1]),
        ops[6]: (Outcome.APPLIED, 0, None),
        ops[7]: (Outcome.REFUSED, errno.EINVAL, None),
        ops[8]: (Outcome.ALREADY, errno.EEXIST, None),
    }
    observed = ipvs.observe()
    assert set(observed) == {TCP, TCP6}
    assert observed[TCP6].spec.scheduler == "wlc"
    assert {k: d.weight for k, d in observed[TCP6].dests.items()} == {v6: 4}
    assert set(observed[TCP].dests) == {a}
    again = apply_ops(ipvs, ops)
    assert [r.outcome for r in again].count(Outcome.REFUSED) == 3
    assert [r.outcome for r in again].count(Outcome.SKIPPED) == 2


# ---------------------------------------------------------------------------------------------
# Connection-sync daemon
# ---------------------------------------------------------------------------------------------


def test_sync_daemon(target: Target) -> None:
    ipvs = target.ipvs
    interface = target.interface()
    assert ipvs.sync_daemons() == []
    ipvs.start_sync_daemon(SyncState.MASTER, interface, 7)
    with pytest.raises(KernelError) as excinfo:
        ipvs.start_sync_daemon(SyncState.MASTER, interface, 7)
    assert errno_of(excinfo) == errno.EEXIST
    ipvs.start_sync_daemon(SyncState.BACKUP, interface, 7)
    daemons = ipvs.sync_daemons()
    assert [(d.state, d.interface, d.sync_id) for d in daemons] == [
        (SyncState.MASTER, interface, 7), (SyncState.BACKUP, interface, 7)]
    # The kernel's defaults: IPVS's multicast group and port, TTL 1.
    assert {(d.group, d.port, d.ttl) for d in daemons} == {("224.0.0.81", 8848, 1)}
    assert ipvs.stop_sync_daemon(SyncState.MASTER) is True
    assert ipvs.stop_sync_daemon(SyncState.MASTER) is False
    assert [d.state for d in ipvs.sync_daemons()] == [SyncState.BACKUP]
    assert ipvs.stop_sync_daemon(SyncState.BACKUP) is True


def test_sync_daemon_bad_arguments(ipvs: IpvsTable) -> None:
    with pytest.raises(KernelError) as excinfo:
        ipvs.start_sync_daemon(SyncState.MASTER, "x" * 16, 1)
    assert errno_of(excinfo) == errno.EINVAL
    assert ipvs.sync_daemons() == []


# ---------------------------------------------------------------------------------------------
# ipvsadm compatibility (kernel only: ipvsadm reads the kernel)
# ---------------------------------------------------------------------------------------------

MIXED: list[Op] = [
    AddService(TCP, ServiceSpec("wlc")),
    AddService(UDP, ServiceSpec("rr", persistence=300, netmask=24)),
    AddService(SCTP, ServiceSpec("sh", frozenset({"sh-port", "sh-fallback"}))),
    AddService(TCP6, ServiceSpec("mh", frozenset({"mh-port"}), persistence=60, netmask=64)),
    AddService(FWM, ServiceSpec("wrr", persistence=120)),
    AddService(FWM6, ServiceSpec("lc", netmask=128)),
    AddService(ServiceKey.inet(Protocol.TCP, "10.0.0.5", 8080), ServiceSpec("rr")),
    AddDest(TCP, DestKey("192.0.2.22", 80), DestSpec(1, DR)),
    AddDest(TCP, DestKey("192.0.2.21", 80), DestSpec(10, DR)),
    AddDest(TCP, DestKey("10.0.1.1", 8080), DestSpec(5, NAT)),
    AddDest(TCP, DestKey("198.51.100.7", 80), DestSpec(0, TUN)),
    AddDest(UDP, DestKey("10.0.1.2", 5353), DestSpec(1, NAT)),
    AddDest(TCP6, DestKey("2001:db8:1::21", 443), DestSpec(3, DR)),
    AddDest(FWM, DestKey("192.0.2.22", 0), DestSpec(2, DR)),
    AddDest(FWM6, DestKey("2001:db8:1::23", 0), DestSpec(2, TUN)),
]


@pytest.mark.kernel
def test_save_equals_ipvsadm(lab: Lab) -> None:
    ns = lab.netns("ct")
    with KernelIpvs(netns=ns.name) as ipvs:
        setup(ipvs, *MIXED)
        ours = save_text(ipvs.observe())
    theirs = ns.run(["ipvsadm", "-S", "-n"])
    assert ours == theirs
    assert ours.count("\n") == len(MIXED)

    # And ipvsadm -R reads it back into the same table.
    other = lab.netns("cr")
    proc = lab.start(other, ["ipvsadm", "-R"], stdin=-1, stderr=-1)
    _, err = proc.communicate(ours.encode(), timeout=60)
    assert proc.returncode == 0, err
    with KernelIpvs(netns=other.name) as restored:
        assert save_text(restored.observe()) == ours
