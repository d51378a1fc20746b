"""Retired services: the managed set's rules as a table of cases, its state file and record,
the daemon's pass retiring a service that left the file (drain, deadline, delete) beside one
added by hand, and ``lvsctl ipvs apply``'s own state file. The same on real ZooKeeper across a
restart, a failover and a rollback: tests/integration/test_retire.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsctl.core.config import parse_cluster
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster, DestKey, Family, Protocol, ServiceKey, ServiceSpec
from lvsctl.core.records import ManagedRecord, ManagedService, RecordError
from lvsctl.director.dataplane import Dataplane, plan_cluster
from lvsctl.director.managed import (
    ManagedBook,
    next_managed,
    read_state_file,
    record_of,
    retired_services,
    write_state_file,
)
from lvsctl.director.reconcile import (
    AddService,
    DelDest,
    DelService,
    DesiredService,
    DrainDest,
    ObservedService,
)
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.conftest import MINIMAL

WWW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
APP = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 8080)
DNS = ServiceKey.inet(Protocol.UDP, "192.0.2.10", 53)
FWM = ServiceKey.mark(Family.INET6, 7)
HAND = ServiceKey.inet(Protocol.TCP, "198.51.100.1", 22)
APP1 = DestKey("10.0.1.31", 9000)


def desired(*keys: ServiceKey, timeout: float = 60.0) -> dict[ServiceKey, DesiredService]:
    return {k: DesiredService(k, ServiceSpec(), {}, timeout) for k in keys}


def observed(*keys: ServiceKey) -> dict[ServiceKey, ObservedService]:
    return {k: ObservedService(k, ServiceSpec()) for k in keys}


def managed(*keys: ServiceKey, timeout: float = 60.0) -> dict[ServiceKey, ManagedService]:
    return {k: ManagedService(k, "", timeout) for k in keys}


# (case, managed before, desired, observed (None: the dump failed), managed after, retired)
CASES = [
    ("a desired service becomes managed", managed(), desired(WWW), observed(),
     {WWW}, {}),
    ("a managed service that left the file and is in the kernel is retired",
     managed(WWW, APP, timeout=5.0), desired(WWW), observed(WWW, APP), {WWW, APP}, {APP: 5.0}),
    ("once retired and gone from the kernel it is forgotten",
     managed(WWW, APP), desired(WWW), observed(WWW), {WWW}, {APP: 60.0}),
    ("a failed dump forgets nothing", managed(WWW, APP), desired(WWW), None, {WWW, APP},
     {APP: 60.0}),
    ("a service never managed is never retired", managed(WWW), desired(WWW),
     observed(WWW, HAND), {WWW}, {}),
    ("a retired service named again is desired, not retired", managed(APP), desired(APP),
     observed(APP), {APP}, {}),
]


@pytest.mark.parametrize(("case", "before", "want", "have", "after", "retired"), CASES,
                         ids=[c[0] for c in CASES])
def test_managed_set_rules(case: str, before: dict[ServiceKey, ManagedService],
                           want: dict[ServiceKey, DesiredService],
                           have: dict[ServiceKey, ObservedService] | None,
                           after: set[ServiceKey], retired: dict[ServiceKey, float]) -> None:
    assert retired_services(before, want) == retired
    assert set(next_managed(before, want, have)) == after


def test_drain_timeout_comes_from_the_last_file_that_had_the_service() -> None:
    after = next_managed(managed(WWW, timeout=60.0), desired(WWW, timeout=7.0), observed())
    assert after[WWW].drain_timeout == 7.0


def test_record_round_trip_and_refusals(tmp_path: Path) -> None:
    record = record_of("lb1", {k: ManagedService(k, n, 3.5) for k, n in
                               [(WWW, "www"), (DNS, "dns"), (FWM, "marked"),
                                (ServiceKey.inet(Protocol.TCP, "2001:db8::10", 443), "v6")]},
                       1_700_000_000.25)
    assert ManagedRecord.from_bytes(record.to_bytes(), "x") == record
    path = tmp_path / "t.managed.json"
    write_state_file(path, record)
    assert read_state_file(path, "lb1") == {s.key: s for s in record.services}
    with pytest.raises(RecordError, match="of director lb1, not lb2"):
        read_state_file(path, "lb2")
    assert read_state_file(tmp_path / "absent.json") == {}
    bad = json.loads(record.to_bytes())
    for change, message in [({"family": "ipx"}, "family: expected ipv4 or ipv6"),
                            ({"address": "2001:db8::1"}, "not a service of family INET"),
                            ({"protocol": "icmp"}, "not a service"),
                            ({"drain_timeout": -1}, "drain_timeout: expected 0 to 86400")]:
        entry = {**bad["services"][0], **change}
        with pytest.raises(RecordError, match=message):
            ManagedRecord.from_json({**bad, "services": [entry]}, "managed/lb1")
    (tmp_path / "junk.json").write_text("[1]")
    with pytest.raises(RecordError, match="expected an object"):
        read_state_file(tmp_path / "junk.json")
    with pytest.raises(LvsctlError, match="cannot write the managed services"):
        write_state_file(tmp_path / "junk.json" / "x", record)


def cluster_of(doc: dict[str, Any]) -> Cluster:
    return parse_cluster(yaml.safe_dump(doc), "cluster.yaml").cluster


def without_app(timeout: float = 30.0) -> Cluster:
    doc = copy.deepcopy(MINIMAL)
    doc["services"] = [s for s in doc["services"] if s["name"] != "app"]
    doc["services"][0]["drain_timeout"] = timeout
    return cluster_of(doc)


def with_app_timeout(timeout: float) -> Cluster:
    doc = copy.deepcopy(MINIMAL)
    doc["services"][1]["drain_timeout"] = timeout
    return cluster_of(doc)


def test_the_daemon_drains_a_retired_service_then_deletes_it_and_keeps_a_hand_made_one(
        tmp_path: Path) -> None:
    fake = FakeIpvs()
    fake.apply(AddService(HAND, ServiceSpec("rr")))
    clock = [0.0]
    book = ManagedBook("lb1", tmp_path / "t.managed.json")
    plane = Dataplane(fake, monotonic=lambda: clock[0], managed=book)
    plane.reconcile(with_app_timeout(30.0), {}, epoch=1, role="ACTIVE")
    assert set(fake.observe()) == {WWW, APP, HAND}
    assert set(read_state_file(tmp_path / "t.managed.json", "lb1")) == {WWW, APP}
    fake.set_conns(APP, APP1, 3)  # a long-lived connection through app

    summary = plane.reconcile(without_app(), {}, epoch=1, role="ACTIVE")
    assert summary["retiring"] == [str(APP)]
    assert fake.observe()[APP].dests[APP1].weight == 0  # drained: no new connections
    # Its deadline runs from the pass that first sees it at weight 0 (a restarted director
    # starts there too): 30 s, the drain timeout of the last file that had app.
    for clock[0] in (1.0, 30.9):
        assert plane.reconcile(without_app(), {}, epoch=1, role="ACTIVE")["planned"] == 0
    clock[0] = 31.0
    plane.reconcile(without_app(), {}, epoch=1, role="ACTIVE")
    assert set(fake.observe()) == {WWW, HAND}  # the hand-made service is untouched
    summary = plane.reconcile(without_app(), {}, epoch=1, role="ACTIVE")
    assert (summary["planned"], summary["retiring"]) == (0, [])
    assert set(read_state_file(tmp_path / "t.managed.json", "lb1")) == {WWW}


def test_a_restarted_daemon_retires_what_its_state_file_names(tmp_path: Path) -> None:
    fake = FakeIpvs()
    first = Dataplane(fake, managed=ManagedBook("lb1", tmp_path / "m.json"))
    first.reconcile(cluster_of(MINIMAL), {}, epoch=1, role="ACTIVE")
    book = ManagedBook("lb1", tmp_path / "m.json")
    book.load()
    second = Dataplane(fake, managed=book)  # idle dests: deleted at once, then the service
    assert second.reconcile(without_app(), {}, epoch=2, role="STANDBY")["retiring"] == [str(APP)]
    assert set(fake.observe()) == {WWW}


class Remote:
    """A remote record in memory; ``fail`` makes it unreachable."""

    def __init__(self, record: ManagedRecord | None) -> None:
        self.record = record
        self.fail = False
        self.writes: list[ManagedRecord] = []

    def read(self) -> ManagedRecord | None:
        if self.fail:
            raise LvsctlError("unreachable")
        return self.record

    def write(self, record: ManagedRecord) -> None:
        if self.fail:
            raise LvsctlError("unreachable")
        self.record = record
        self.writes.append(record)


def _until(predicate: Any) -> None:
    import time

    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_lost_state_file_is_made_good_from_the_remote_record(tmp_path: Path) -> None:
    fake = FakeIpvs()
    Dataplane(fake).reconcile(cluster_of(MINIMAL), {}, epoch=1, role="ACTIVE")
    remote = Remote(record_of("lb1", managed(WWW, APP), 1.0))
    book = ManagedBook("lb1", tmp_path / "m.json", remote)  # no state file
    book.load()
    plane = Dataplane(fake, managed=book)
    try:
        def passed() -> bool:  # one pass, then: is app retired and the record made good?
            plane.reconcile(without_app(), {}, epoch=2, role="ACTIVE")
            return APP not in fake.observe() and remote.record is not None and {
                s.key for s in remote.record.services} == {WWW}

        _until(passed)
    finally:
        book.close()


def test_plan_cluster_retires_only_managed_services() -> None:
    fake = FakeIpvs()
    Dataplane(fake).reconcile(cluster_of(MINIMAL), {}, epoch=1, role="ACTIVE")
    assert plan_cluster(fake, without_app()).ops == []  # app was never apply's
    ops = plan_cluster(fake, without_app(), managed=managed(WWW, APP)).ops
    assert ops == [DelDest(APP, APP1), DelService(APP)]
    fake.set_conns(APP, APP1, 1)
    assert plan_cluster(fake, without_app(), managed=managed(WWW, APP)).ops[0] == \
        DrainDest(APP, APP1, with_app_timeout(1).services[1].forwarding)


def test_the_ipvs_view_round_trips() -> None:
    from lvsctl.core.model import Health
    from lvsctl.director.plan_view import parse_view

    fake = FakeIpvs()
    plane = Dataplane(fake)
    plane.reconcile(cluster_of(MINIMAL), {}, epoch=1, role="ACTIVE")
    fake.set_conns(APP, APP1, 2, 1)
    health = {("www", "web1"): Health(False), ("www", "web2"): Health(True, 3)}
    doc = plane.view(director="lb1", role="ACTIVE", epoch=9, version="c.yaml@v3", health=health)
    view = parse_view(json.dumps(doc).encode(), "/ipvs")
    assert (view.director, view.role, view.epoch, view.config_version) == (
        "lb1", "ACTIVE", 9, "c.yaml@v3")
    observed = fake.observe(stats=False)
    assert view.observed.keys() == observed.keys()
    assert view.observed[APP].dests[APP1].conns == 3
    assert view.observed[WWW].spec == observed[WWW].spec
    assert view.health == health
    assert set(view.managed) == {WWW, APP} and view.quorum_held == {WWW: True, APP: True}
    bad = {**doc, "services": [{**doc["services"][0], "scheduler": "x" * 17}]}
    with pytest.raises(RecordError, match="scheduler"):
        parse_view(json.dumps(bad).encode(), "/ipvs")
