"""The lab's network on this kernel (no IPVS needed): every host reaches its neighbours, and
``down`` removes every namespace and process it recorded, also when the builder died."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lvsctl.testbed.lab import build, plan

pytestmark = pytest.mark.netns


def _ping(the_lab: build.Lab, role: str, address: str) -> bool:
    proc = subprocess.run(the_lab.exec_argv(role, ["ping", "-c1", "-W2", address]),
                          capture_output=True, timeout=10)
    return proc.returncode == 0


def test_network_then_down_after_a_crash(tmp_path: Path) -> None:
    built = build.Lab.create(tmp_path)
    try:
        built.build_network()
        assert _ping(built, "client", plan.DIRECTORS["lb2"][0])
        assert _ping(built, "nat2", plan.DIRECTORS["lb1"][1])
        assert _ping(built, "tun1", plan.ZK_ADDR)
        assert not _ping(built, "client", plan.DIRECTORS["lb1"][1])  # inside is not routed
        pid = built._start("client", ["sleep", "60"], "sleeper")
        # A second process reading only the state file (as `lab down` after a crash does).
        found = [s for s in build.find_states(tmp_path) if s.lab_id == built.state.lab_id]
        assert len(found) == 1 and found[0].alive("sleeper") == pid
        removed = build.Lab(found[0]).down()
    finally:
        built.down()
    assert "process sleeper" in removed
    assert len([r for r in removed if r.startswith("netns ")]) == 11
    assert not any(Path(f"/run/netns/{n}").exists() for n in built.state.namespaces)
    assert build._start_time(pid) is None  # killed and reaped


def test_the_labs_prometheus_targets_both_directors_and_down_stops_it(tmp_path: Path) -> None:
    # No director runs here (this kernel has no IPVS): both targets are down, but the server,
    # its job and its targets are the lab's, and `down` stops it by its recorded PID.
    built = build.Lab.create(tmp_path)
    try:
        built.build_network()
        built.start_prometheus()
        built.wait_prometheus()
        client = built.prometheus()
        # Targets appear once the scrape manager has read the config, shortly after ready.
        assert build.wait_until(lambda: len(client.targets()) == 2, 60, 0.2) is not None
        targets = client.targets()
        pid = built.state.alive("prometheus")
        assert pid is not None
        removed = build.Lab(built.state).down()
    finally:
        built.down()
    assert sorted((t["labels"]["job"], t["labels"]["instance"]) for t in targets) == [
        (plan.PROMETHEUS_JOB, f"{front}:{plan.API_PORT}")
        for front, _inside in plan.DIRECTORS.values()]
    assert "process prometheus" in removed
    assert build._start_time(pid) is None
    assert any(f"http://{plan.CLIENT_ADDR}:{plan.PROMETHEUS_PORT}/" in line
               for line in built.endpoints())
