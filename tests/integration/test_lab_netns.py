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
