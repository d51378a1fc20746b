"""The lab's plan: addresses, the generated cluster file, the state file's PID guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.testbed.lab import build, plan, results, steps


def test_every_address_is_unique_and_private() -> None:
    addresses = [p.address.split("/")[0] for h in plan.hosts() for p in h.ports]
    assert len(addresses) == len(set(addresses))
    assert all(a.startswith(("10.77.0.", "10.77.1.")) for a in addresses)
    roles = [h.role for h in plan.hosts()]
    assert len(roles) == len(set(roles)) == 10


def test_generated_cluster_file_is_valid_and_has_every_mode(tmp_path: Path) -> None:
    text = plan.cluster_yaml("abc123", str(tmp_path / "zk.secret"))
    cluster = parse_cluster(text, "lab.yaml").cluster
    assert cluster.name == "lab-abc123"
    modes = {s.name: s.forwarding.label for s in cluster.services}
    assert modes == {"web-nat": "nat", "web-dr": "dr", "web-tun": "tun", "echo-nat": "nat"}
    assert sorted(d.name for d in cluster.directors) == ["lb1", "lb2"]
    # every real server of the file is a host of the lab, on the address the plan gives it
    planned = {h.role: h.ports[0].address.split("/")[0] for h in plan.hosts()}
    for svc in cluster.services:
        for rs in svc.realservers:
            assert planned[rs.name] == str(rs.address)


def test_spread_counts_in_first_seen_order() -> None:
    assert plan.spread(["a", "b", "a", "-"]) == {"a": 2, "b": 1, "-": 1}


def test_ipvsadm_listing_parsed_with_scheduler_forwarding_and_weight() -> None:
    listing = ("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler\n"
               "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
               "TCP  10.77.0.10:80 rr\n  -> 10.77.1.21:80 Masq 1 0 0\n"
               "  -> 10.77.1.22:80 Masq 0 3 1\nUDP  10.77.0.10:53 wrr\n")
    assert plan.ipvsadm_services(listing) == {
        "TCP 10.77.0.10:80 rr": {"10.77.1.21:80 Masq 1", "10.77.1.22:80 Masq 0"},
        "UDP 10.77.0.10:53 wrr": set()}


def test_expected_listing_has_every_service_with_its_forwarding() -> None:
    wanted = plan.expected_listing()
    assert wanted["TCP 10.77.0.10:80 rr"] == {"10.77.1.21:80 Masq 1", "10.77.1.22:80 Masq 1"}
    assert wanted["TCP 10.77.0.10:7 rr"] == {"10.77.1.21:7 Masq 1", "10.77.1.22:7 Masq 1"}
    assert wanted["TCP 10.77.0.11:80 rr"] == {"10.77.0.21:80 Route 1", "10.77.0.22:80 Route 1"}
    assert wanted["TCP 10.77.0.12:80 rr"] == {"10.77.0.31:80 Tunnel 1", "10.77.0.32:80 Tunnel 1"}
    assert len(wanted) == 4


def test_health_rules_hold_hysteresis_as_a_lower_bound_only() -> None:
    rules = steps.HealthRules()
    # Back no earlier than rise - 1 intervals after the restart (less the scheduler's jitter):
    assert 0 < rules.back_earliest < (plan.CHECK["rise"] - 1) * plan.CHECK["interval"]
    # and waited for generously, far beyond what the check timing needs (no speed judged).
    assert rules.wait >= 10 * (plan.CHECK["rise"] + plan.CHECK["fall"]) * plan.CHECK["interval"]


def test_state_guards_against_a_reused_pid(tmp_path: Path) -> None:
    state = build.LabState("x", str(tmp_path))
    me = os.getpid()
    started = build._start_time(me)
    assert started is not None
    state.processes = {"me": [me, started], "reused": [me, started + 1], "gone": [2**22 + 7, 1]}
    state.save()
    loaded = build.LabState.load(state.path)
    assert loaded.alive("me") == me
    assert loaded.alive("reused") is None
    assert loaded.alive("gone") is None


def test_down_of_a_lab_made_in_an_ended_vm_signals_nothing(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVSCTL_IN_VM", raising=False)
    me = os.getpid()
    state = build.LabState("y", str(tmp_path / "y"), namespaces=["lvlab-y-sw"],
                         processes={"me": [me, build._start_time(me) or 0]}, in_vm=True)
    Path(state.workdir).mkdir()
    state.save()
    assert build.Lab(state).down() == []  # this test process (the recorded PID) still runs
    assert not Path(state.workdir).exists()


def test_status_finds_labs_under_the_folder_lvsctl_lab_dir_names(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lvsctl.cli import cli

    workdir = tmp_path / "abc123"
    workdir.mkdir()
    build.LabState("abc123", str(workdir), namespaces=["lvslab-gone"]).save()
    result = CliRunner().invoke(cli, ["lab", "status", "--json"],
                                env={"LVSCTL_LAB_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["id"], row["namespaces"], row["namespaces_recorded"]) == ("abc123", 0, 1)


def test_results_json_passes_only_when_every_result_passed() -> None:
    good, bad = results.Result("a", True, "1 s"), results.Result("b", False, "never")
    report = results.results_json([good, bad], 12.345)
    assert report == {"passed": False, "passed_count": 1, "seconds": 12.3, "results": [
        {"step": "a", "passed": True, "detail": "1 s"},
        {"step": "b", "passed": False, "detail": "never"}]}
    assert results.results_json([good], 1.0)["passed"] is True
    assert results.results_json([], 1.0)["passed"] is False  # nothing ran: not a pass
