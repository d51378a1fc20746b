"""The systemd unit, modules-load.d and sysctl.d files in deploy/: checked by systemd itself.

``systemd-analyze verify`` refuses a unit whose ExecStart binary does not exist, and
/opt/lvsctl/venv/bin/lvsctl exists only on a director. So the unit is verified as a copy in
which that one path is replaced by this checkout's own ``lvsctl`` console script (the same
program, installed elsewhere); every other line is the shipped file's. The Ansible test
verifies the unit again as the role installed it, against the venv the role built.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvsctl.core.model import SCHEDULERS
from lvsctl.core.schema import ZooKeeperFile
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "lvsctl-director.service"
SHIPPED_EXEC = "/opt/lvsctl/venv/bin/lvsctl"
LVSCTL = Path(sys.executable).parent / "lvsctl"
# `systemd-analyze security --offline` scores exposure from 0 (locked down) to 10; "OK" is
# below 4.0. 1.8 was measured for this unit: a change that loosens it fails here.
MAX_EXPOSURE = 2.5


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: scripts/setup installs it"
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
        check=False,
    )


def unit_copy(tmp_path: Path, extra: str = "") -> Path:
    text = UNIT.read_text()
    assert f"ExecStart={SHIPPED_EXEC} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={LVSCTL} ") + extra)
    return copy


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_verifies_clean(tmp_path: Path) -> None:
    result = verify(unit_copy(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_catches_a_bad_key(tmp_path: Path) -> None:
    """The check above can fail: systemd warns about a key it does not know."""
    result = verify(unit_copy(tmp_path, "ProtectSystm=strict\n"))
    assert "Unknown key" in result.stderr and "ProtectSystm" in result.stderr


def test_unit_security_exposure(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_copy(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_contract() -> None:
    """What the daemon and the operator rely on, spelled out by the issue."""
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == [f"{SHIPPED_EXEC} director run --node /etc/lvsctl/node.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    assert d["CapabilityBoundingSet"] == d["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelModules",
                "ProtectKernelTunables"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"] and d["StateDirectory"] == ["lvsctl"]
    assert "PrivateNetwork" not in d and "PrivateUsers" not in d


def test_stop_timeout_outlasts_the_longest_stepdown() -> None:
    """A stepdown is bounded by the ZooKeeper session timeout; the unit must wait longer."""
    limits = ZooKeeperFile.model_fields["session_timeout"].metadata
    longest_session = max(float(getattr(m, "le", 0)) for m in limits)
    assert longest_session > 0
    stop = directives(UNIT.read_text())["TimeoutStopSec"]
    assert len(stop) == 1 and stop[0].endswith("s")
    assert float(stop[0][:-1]) > longest_session


def test_descriptor_limit_outlasts_the_api_and_the_checks_at_their_limits() -> None:
    """A flood of API connections or a full probe load must meet the API's and the
    scheduler's own limits before the process runs out of descriptors."""
    from lvsctl.director.api_limits import MAX_CONNECTIONS
    from lvsctl.healthcheck.scheduler import Scheduler

    probes = inspect.signature(Scheduler).parameters["concurrency"].default
    nofile = directives(UNIT.read_text())["LimitNOFILE"]
    assert len(nofile) == 1
    assert int(nofile[0]) >= 2 * MAX_CONNECTIONS + probes + 1024


def conf_lines(path: Path) -> list[str]:
    return [
        line.strip() for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_modules_load_lists_ip_vs_and_every_scheduler_debian_ships() -> None:
    # twos is in lvsctl's list (Linux 6.8+) but not in Debian 12's 6.1 kernel: a module name
    # systemd-modules-load cannot find fails the boot unit.
    expected = ["ip_vs"] + [f"ip_vs_{s}" for s in SCHEDULERS if s != "twos"]
    assert conf_lines(DEPLOY / "modules-load.d" / "lvsctl.conf") == expected


@pytest.mark.parametrize(("key", "value"), [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.vs.sync_version", "1"),
    ("net.ipv4.conf.all.send_redirects", "0"),
])
def test_sysctl_settings(key: str, value: str) -> None:
    settings = dict(
        tuple(part.strip() for part in line.split("=", 1))
        for line in conf_lines(DEPLOY / "sysctl.d" / "90-lvsctl.conf")
    )
    assert settings[key] == value


@pytest.mark.netns
def test_sysctl_file_applied_by_systemd_sysctl_in_a_namespace() -> None:
    """systemd-sysctl applies the file in a fresh network namespace (it dies with the process):
    ip_forward is set, the send_redirects glob reaches an existing interface, and the only keys
    it cannot write are the net.ipv4.vs ones (this host's kernel has no IPVS)."""
    script = (
        'ip link add lvt0 type veth peer name lvt1 && /lib/systemd/systemd-sysctl "$1"; '
        "echo rc=$?; sysctl -n net.ipv4.ip_forward net.ipv4.conf.lvt0.send_redirects"
    )
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, "sh", str(DEPLOY / "sysctl.d" / "90-lvsctl.conf")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.stdout.split() == ["rc=0", "1", "0"], result.stdout + result.stderr
    unwritable = re.findall(r"Couldn't write '[^']*' to '([^']+)'", result.stderr)
    assert all(key.startswith("net/ipv4/vs/") for key in unwritable), result.stderr
    assert len(result.stderr.splitlines()) == len(unwritable), result.stderr
