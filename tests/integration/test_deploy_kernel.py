"""deploy/modules-load.d and deploy/sysctl.d on a kernel that has IPVS (the kernel VM here).

Every module the shipped modules-load.d file names must exist in Debian 12's kernel (a name
systemd-modules-load cannot find fails that unit at boot), and with them loaded every line of
the sysctl.d file must apply, net.ipv4.vs.* included. The sysctls are applied by
systemd-sysctl, as at boot, in a throw-away network namespace (the net.ipv4.vs keys exist per
namespace once ip_vs is loaded).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.test_deploy_units import DEPLOY, conf_lines

pytestmark = pytest.mark.kernel

MODULES = DEPLOY / "modules-load.d" / "lvsctl.conf"
SYSCTLS = DEPLOY / "sysctl.d" / "90-lvsctl.conf"


def test_every_module_loads() -> None:
    modules = conf_lines(MODULES)
    assert modules[0] == "ip_vs" and len(modules) > 10
    failed = {}
    for module in modules:
        result = subprocess.run(["modprobe", module], capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            failed[module] = result.stderr.strip()
    assert failed == {}
    proc_modules = Path("/proc/modules").read_text(encoding="ascii")
    loaded = {line.split()[0] for line in proc_modules.splitlines()}
    assert set(modules) <= loaded


def test_every_sysctl_applies_with_ip_vs_loaded() -> None:
    subprocess.run(["modprobe", "ip_vs"], check=True, timeout=60)
    settings = [tuple(p.strip() for p in line.split("=", 1)) for line in conf_lines(SYSCTLS)]
    # The glob line is checked through an interface it must reach.
    exact = [(k, v) for k, v in settings if "*" not in k]
    script = (
        'ip link add lvt0 type veth peer name lvt1 && /lib/systemd/systemd-sysctl "$1" '
        '&& shift && sysctl -n "$@" net.ipv4.conf.lvt0.send_redirects'
    )
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, "sh", str(SYSCTLS), *(k for k, _ in exact)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.split() == [v for _, v in exact] + ["0"]
