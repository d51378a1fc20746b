"""The director's metrics: every family with HELP and the right type, label values only from
the cluster file and the enums, an exposition promtool accepts, one registry per director."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from lvsctl.core.records import HealthStatus, RealServerStatus, ServiceStatus
from lvsctl.director import metrics as m
from lvsctl.testbed.prometheus import synthetic_snapshot

BUILD = m.BuildInfo("0.1.0", "3.11.2")

# name -> (type, label names) for every family the collector exports: the interface the
# dashboard, the alert rules and the lead's wiring rely on.
FAMILIES: dict[str, tuple[str, set[str]]] = {
    "lvsctl_build_info": ("gauge", {"version", "python"}),
    "lvsctl_director_info": ("gauge", {"director", "cluster"}),
    "lvsctl_director_state": ("gauge", {"state"}),
    "lvsctl_director_epoch": ("gauge", set()),
    "lvsctl_director_state_since_timestamp_seconds": ("gauge", set()),
    "lvsctl_director_vips_held": ("gauge", set()),
    "lvsctl_vip_lease_remaining_seconds": ("gauge", set()),
    "lvsctl_zookeeper_connected": ("gauge", set()),
    "lvsctl_director_transitions": ("counter", {"state", "reason"}),
    "lvsctl_config_version": ("gauge", set()),
    "lvsctl_config_last_rejected": ("gauge", set()),
    "lvsctl_config_rejections": ("counter", set()),
    "lvsctl_sync_daemon_state": ("gauge", {"state"}),
    "lvsctl_realserver_health": ("gauge", {"service", "realserver", "state"}),
    "lvsctl_realserver_weight": ("gauge", {"service", "realserver"}),
    "lvsctl_realserver_effective_weight": ("gauge", {"service", "realserver"}),
    "lvsctl_realserver_active_connections": ("gauge", {"service", "realserver"}),
    "lvsctl_realserver_inactive_connections": ("gauge", {"service", "realserver"}),
    "lvsctl_realserver_connections": ("counter", {"service", "realserver"}),
    "lvsctl_realserver_packets": ("counter", {"service", "realserver", "direction"}),
    "lvsctl_realserver_bytes": ("counter", {"service", "realserver", "direction"}),
    "lvsctl_service_realservers": ("gauge", {"service"}),
    "lvsctl_service_realservers_healthy": ("gauge", {"service"}),
    "lvsctl_service_quorum": ("gauge", {"service"}),
    "lvsctl_service_connections": ("counter", {"service"}),
    "lvsctl_service_packets": ("counter", {"service", "direction"}),
    "lvsctl_service_bytes": ("counter", {"service", "direction"}),
    "lvsctl_check_probe_duration_seconds": ("histogram", {"target"}),
    "lvsctl_check_probe_failures": ("counter", {"target", "reason"}),
    "lvsctl_check_probe_inconclusive": ("counter", {"target", "reason"}),
    "lvsctl_checker_loop_lag_seconds": ("gauge", set()),
    "lvsctl_checker_oldest_round_age_seconds": ("gauge", set()),
    "lvsctl_checker_stalled_targets": ("gauge", set()),
    "lvsctl_checker_probes_in_flight": ("gauge", set()),
    "lvsctl_checker_probes_waiting": ("gauge", set()),
    "lvsctl_reconcile_duration_seconds": ("histogram", set()),
    "lvsctl_reconcile_ops": ("counter", {"kind"}),
    "lvsctl_reconcile_kernel_errors": ("counter", set()),
    "lvsctl_peer_link_up": ("gauge", set()),
    "lvsctl_peer_beats_received": ("counter", set()),
    "lvsctl_peer_beats_rejected": ("counter", {"reason"}),
}


def scrape(snapshot: m.MetricsSnapshot) -> str:
    body, content_type = m.render_metrics(m.new_registry(lambda: snapshot, BUILD))
    assert content_type.startswith("text/plain; version=0.0.4")
    return body.decode()


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list[tuple[Mapping[str, str], float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name]


def test_every_family_has_help_its_type_and_its_labels() -> None:
    text = scrape(synthetic_snapshot(3, 4))
    found = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(found) == set(FAMILIES)
    for name, (kind, labels) in FAMILIES.items():
        family = found[name]
        assert family.type == kind, name
        assert family.documentation, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    assert f"# HELP {'lvsctl_director_transitions_total'} " in text  # counters end in _total


def promtool() -> str:
    found = shutil.which("promtool")
    assert found is not None, "promtool is not installed (scripts/packages.txt lists prometheus)"
    return found


def test_promtool_finds_no_problem_in_the_exposition() -> None:
    text = scrape(synthetic_snapshot(3, 4))
    proc = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == proc.stderr.strip() == ""


def test_role_zookeeper_and_health_read_from_the_record() -> None:
    snap = synthetic_snapshot(2, 4, role="STANDBY")
    text = scrape(replace(snap, record=replace(snap.record, zookeeper="disconnected")))
    assert {lab["state"]: v for lab, v in samples(text, "lvsctl_director_state")} == {
        "CANDIDATE": 0, "ACTIVE": 0, "STANDBY": 1, "FENCED": 0}
    assert samples(text, "lvsctl_zookeeper_connected") == [({}, 0.0)]
    assert samples(text, "lvsctl_sync_daemon_state") == [
        ({"state": "master"}, 0.0), ({"state": "backup"}, 1.0)]
    health = {(lab["realserver"], lab["state"]): v
              for lab, v in samples(text, "lvsctl_realserver_health") if lab["service"] == "svc1"}
    # rs0 and rs2 up, rs1 down (every third), rs3 the last: unchecked
    assert [k for k, v in sorted(health.items()) if v == 1] == [
        ("rs0", "up"), ("rs1", "down"), ("rs2", "up"), ("rs3", "unknown")]
    assert ({"service": "svc1"}, 2.0) in samples(text, "lvsctl_service_realservers_healthy")


def test_kernel_counters_by_direction_and_the_weight_in_force() -> None:
    text = scrape(synthetic_snapshot(1, 2))
    assert sorted((lab["direction"], v) for lab, v in
                  samples(text, "lvsctl_service_bytes_total")) == [("in", 640_000.0),
                                                                   ("out", 5_120_000.0)]
    weights = {lab["realserver"]: v for lab, v in
               samples(text, "lvsctl_realserver_effective_weight")}
    assert weights == {"rs0": 10.0, "rs1": 0.0}  # rs1 is unchecked here: not in force
    configured = {lab["realserver"]: v for lab, v in samples(text, "lvsctl_realserver_weight")}
    assert configured == {"rs0": 10.0, "rs1": 10.0}


def test_a_hostile_reason_never_becomes_a_label_and_unknown_names_are_dropped() -> None:
    hostile = '<script>alert(1)</script>" } evil{x="1'
    snap = synthetic_snapshot(1, 3, reason=hostile)
    # The kernel holds a service and a dest the config does not name (another tool's):
    # their counters must not create label values.
    foreign = m.KernelService("not-configured", m.KernelCounters(1, 1, 1, 1, 1),
                              (m.KernelDest("x", 1),))
    stray = m.KernelService("svc0", dests=(m.KernelDest("stray", 5),))
    snap = replace(snap, kernel=(*snap.kernel, foreign, stray),
                   probes=(m.ProbeStats("http 10.0.0.1:80 /healthz",
                                        failures={m.classify_probe_failure(hostile): 3}),))
    text = scrape(snap)
    allowed = ({"svc0", "rs0", "rs1", "rs2", "lb1", "lab", "http 10.0.0.1:80 /healthz",
                "0.1.0", "3.11.2"}
               | {e.value for enum in (m.Role, m.HealthState, m.TransitionReason, m.ProbeFailure,
                                       m.Inconclusive, m.OpKind, m.SyncRole, m.PeerReject,
                                       m.Direction) for e in enum})
    values = {v for f in text_string_to_metric_families(text) for s in f.samples
              for k, v in s.labels.items() if k != "le"}
    assert values <= allowed, values - allowed
    assert "script" not in text
    assert ({"target": "http 10.0.0.1:80 /healthz", "reason": "other"}, 3.0) in samples(
        text, "lvsctl_check_probe_failures_total")


def test_a_role_outside_the_enum_sets_no_state() -> None:
    snap = synthetic_snapshot(1, 1)
    text = scrape(replace(snap, record=replace(snap.record, role="<b>WEIRD</b>")))
    assert {v for _, v in samples(text, "lvsctl_director_state")} == {0.0}
    assert "WEIRD" not in text


@pytest.mark.parametrize(("text", "timed_out", "want"), [
    ("connection refused", False, m.ProbeFailure.REFUSED),
    ("connection reset", False, m.ProbeFailure.RESET),
    ("no response within 1 s", True, m.ProbeFailure.TIMEOUT),
    ("server closed the connection without a response", False, m.ProbeFailure.CLOSED),
    ("no route to host", False, m.ProbeFailure.UNREACHABLE),
    ("network is unreachable", False, m.ProbeFailure.UNREACHABLE),
    ("TLS handshake failed: WRONG_VERSION_NUMBER", False, m.ProbeFailure.TLS),
    ("bad HTTP response: invalid constant string", False, m.ProbeFailure.BAD_RESPONSE),
    ("HTTP 500, expected 200", False, m.ProbeFailure.UNEXPECTED),
    ("DNS: The DNS operation timed out", False, m.ProbeFailure.TIMEOUT),
    ("<script>", False, m.ProbeFailure.OTHER),
])
def test_probe_failures_are_classified(text: str, timed_out: bool, want: m.ProbeFailure) -> None:
    assert m.classify_probe_failure(text, timed_out) is want


@pytest.mark.parametrize(("text", "want"), [
    ("won the election", m.TransitionReason.WON_ELECTION),
    ("lb2 leads", m.TransitionReason.OTHER_LEADS),
    ("stepping down", m.TransitionReason.STEPDOWN),
    ("leadership no longer confirmed (lease ran out)", m.TransitionReason.LEASE_LOST),
    ("ZooKeeper session lost", m.TransitionReason.SESSION_LOST),
    ("our election znode vanished", m.TransitionReason.ZNODE_LOST),
    ("rejoining the election", m.TransitionReason.REJOINING),
    ("leaving the election", m.TransitionReason.LEAVING),
    ("something new", m.TransitionReason.OTHER),
])
def test_transition_reasons_are_classified(text: str, want: m.TransitionReason) -> None:
    assert m.classify_transition(text) is want


@pytest.mark.parametrize(("text", "want"), [
    ("bad HMAC", m.PeerReject.BAD_MAC), ("malformed beat", m.PeerReject.MALFORMED),
    ("replayed", m.PeerReject.REPLAYED), ("stale", m.PeerReject.STALE),
    ("own name", m.PeerReject.OWN_NAME), ("??", m.PeerReject.OTHER),
])
def test_peer_rejections_are_classified(text: str, want: m.PeerReject) -> None:
    assert m.classify_peer_reject(text) is want


def test_histogram_counter_is_cumulative_with_inf_as_count() -> None:
    h = m.HistogramCounter((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    data = h.data()
    assert data.cumulative == (2, 3)  # le is inclusive: 0.1 falls in the 0.1 bucket
    assert (data.count, data.sum) == (4, pytest.approx(3.65))
    with pytest.raises(ValueError, match="increase"):
        m.HistogramCounter((1.0, 0.5))


def test_histogram_exposed_with_buckets_sum_and_count() -> None:
    text = scrape(synthetic_snapshot(1, 1))
    buckets = [(lab["le"], v)
               for lab, v in samples(text, "lvsctl_reconcile_duration_seconds_bucket")]
    assert buckets[-1] == ("+Inf", 3.0)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert samples(text, "lvsctl_reconcile_duration_seconds_count") == [({}, 3.0)]


def test_each_director_has_its_own_registry_and_none_is_global() -> None:
    before = {f.name for f in REGISTRY.collect()}
    one = m.new_registry(lambda: synthetic_snapshot(1, 1, director="lb1"), BUILD)
    two = m.new_registry(lambda: synthetic_snapshot(1, 1, director="lb2"), BUILD)
    assert "director=\"lb1\"" in m.render_metrics(one)[0].decode()
    assert "director=\"lb2\"" in m.render_metrics(two)[0].decode()
    assert {f.name for f in REGISTRY.collect()} == before


def test_the_provider_is_called_at_every_scrape() -> None:
    calls = []

    def provider() -> m.MetricsSnapshot:
        calls.append(1)
        snap = synthetic_snapshot(1, 1)
        return replace(snap, record=replace(snap.record, epoch=len(calls)))

    registry = m.new_registry(provider, BUILD)
    assert samples(m.render_metrics(registry)[0].decode(), "lvsctl_director_epoch") == [({}, 1)]
    assert samples(m.render_metrics(registry)[0].decode(), "lvsctl_director_epoch") == [({}, 2)]


def test_optional_families_are_left_out_when_unknown() -> None:
    snap = synthetic_snapshot(1, 1)
    text = scrape(replace(snap, lease_seconds_left=None, config_version=None,
                          record=replace(snap.record, since=None)))
    names = families(text)
    assert "lvsctl_vip_lease_remaining_seconds" not in names
    assert "lvsctl_config_version" not in names
    assert "lvsctl_director_state_since_timestamp_seconds" not in names


def test_scrape_cache_shares_one_render_and_takes_the_snapshot_on_the_loop() -> None:
    now = [100.0]
    loop_threads: list[bool] = []

    def provider() -> m.MetricsSnapshot:
        loop_threads.append(threading.current_thread() is threading.main_thread())
        rs = RealServerStatus("rs0", "10.0.0.1:80", 5, HealthStatus(True))
        snap = synthetic_snapshot(1, 1)
        return replace(snap, record=replace(
            snap.record, services=(ServiceStatus("svc0", realservers=(rs,)),)))

    async def main() -> None:
        cache = m.ScrapeCache(provider, BUILD, max_age=1.0, clock=lambda: now[0], timeout=120)
        try:
            bodies = await asyncio.gather(*(cache.scrape() for _ in range(5)))
            assert cache.renders == 1 and len({b for b, _ in bodies}) == 1
            now[0] += 1.5
            await cache.scrape()
            assert cache.renders == 2
        finally:
            await cache.close()

    asyncio.run(main())
    assert loop_threads == [True, True]


def _variants() -> list[m.MetricsSnapshot]:
    snap = synthetic_snapshot(3, 4)
    foreign = m.KernelService("not-configured", m.KernelCounters(1, 1, 1, 1, 1),
                              (m.KernelDest("x", 1),))
    return [
        snap,
        synthetic_snapshot(2, 3, role="STANDBY", reason="HTTP 500, expected 200"),
        replace(snap, lease_seconds_left=None, config_version=None, sync_role=None,
                record=replace(snap.record, since=None, role="<b>WEIRD</b>",
                               config=replace(snap.record.config, error="bad file"))),
        replace(snap, kernel=(*snap.kernel, foreign), probes=()),
        m.MetricsSnapshot(record=replace(snap.record, services=(), vips=())),
    ]


@pytest.mark.parametrize("snap", _variants())
def test_the_encoded_snapshot_renders_the_same_text(snap: m.MetricsSnapshot) -> None:
    # The renderer process sees only what encode_snapshot carries: every field the
    # collector reads must survive the trip.
    decoded = m.decode_snapshot(m.encode_snapshot(snap))
    assert m.render_snapshot(decoded, BUILD) == m.render_snapshot(snap, BUILD)


def test_the_encoded_snapshot_is_plain_data() -> None:
    # Tuples of str/int/float pickle in C: the only classes in the payload are the label enums
    # (each written once), never a dataclass, a record or a live object of the director.
    import io
    import pickle

    found: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            found.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO(m.encode_snapshot(synthetic_snapshot(2, 2)))).load()
    enums = {e.__name__ for e in (m.Role, m.TransitionReason, m.ProbeFailure, m.Inconclusive,
                                  m.OpKind, m.SyncRole, m.PeerReject)}
    assert found and {name for _, name in found} <= enums
    assert {module for module, _ in found} == {m.__name__}
