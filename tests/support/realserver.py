"""Real-server setups used by several test tiers: the golden cases and a cluster to derive them."""

from __future__ import annotations

import copy
import difflib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import Cluster
from lvsctl.templates.render import RealServerSetup, setup_adhoc, setup_for
from lvsctl.testbed.netns import Lab, Netns
from tests.conftest import MINIMAL


def dr_and_tun_cluster() -> Cluster:
    """MINIMAL plus a tun service on a second VIP that web1 is also in."""
    data: dict[str, Any] = copy.deepcopy(MINIMAL)
    data["vips"].append({"address": "192.0.2.11", "interface": "eth0"})
    data["services"].append(
        {"name": "mail", "vip": "192.0.2.11", "port": 25, "forwarding": "tun",
         "realservers": [{"name": "web1", "address": "192.0.2.21"}]}
    )
    return parse_cluster(yaml.safe_dump(data), "dr-tun.yaml").cluster


# name -> setup; every mode x family, and one combined server with a dotted interface name.
GOLDEN_CASES: dict[str, RealServerSetup] = {
    "dr-ipv4": setup_adhoc("dr", ["192.0.2.10", "192.0.2.11"]),
    "dr-ipv6": setup_adhoc("dr", ["2001:db8::10"]),
    "tun-ipv4": setup_adhoc("tun", ["192.0.2.10"], interface="ens3"),
    "tun-ipv6": setup_adhoc("tun", ["2001:db8::10", "2001:db8::11"]),
    "nat-ipv4": setup_adhoc("nat", [], gateway="10.0.1.1"),
    "nat-ipv6": setup_adhoc("nat", [], gateway="fd00:1::1"),
    "dr-tun-ipv4": setup_for(dr_and_tun_cluster(), "web1", interface="eth0.100"),
}


# ---------------------------------------------------------------------------------------------
# A real server in a network namespace: run the rendered script and verify inside it
# ---------------------------------------------------------------------------------------------


_KERNEL_KEPT = re.compile(r"qdisc \S+ |addrgenmode \S+ ")


@dataclass
class RealServerHost:
    """One namespace playing a real server; the script's state file goes to ``state_dir``."""

    ns: Netns
    state_dir: Path

    def script(self, script: Path, action: str) -> subprocess.CompletedProcess[str]:
        argv = self.ns.argv(["env", f"LVSCTL_STATE_DIR={self.state_dir}", "bash", str(script),
                             action])
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def verify(self, selector: list[str]) -> tuple[int, dict[str, Any]]:
        """``lvsctl realserver verify SELECTOR --json`` run inside the namespace."""
        argv = self.ns.argv([sys.executable, "-m", "lvsctl", "realserver", "verify", *selector,
                             "--json"])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def snapshot(self) -> str:
        """Everything a setup may change: links, addresses, routes, per-device sysctls."""
        parts = [
            # Not the qdisc: the kernel attaches one when a device first goes up and keeps it
            # after it goes down again ("noop" -> "noqueue"); no setting of ours is behind it.
            # Nor IPv6's per-device state (addrgenmode, net/ipv6/conf/DEV), which the kernel
            # creates when a device like tunl0 first goes up and keeps until it is deleted.
            _KERNEL_KEPT.sub("", self.ns.run(["ip", "-d", "link", "show"])),
            _KERNEL_KEPT.sub("", self.ns.run(["ip", "addr", "show"])),
            self.ns.run(["ip", "-4", "route", "show", "table", "all"]),
            self.ns.run(["ip", "-6", "route", "show", "table", "all"]),
            # grep prints path:value for every readable file; a few are write-only (check=False).
            self.ns.run(["grep", "-r", ".", "/proc/sys/net/ipv4/conf",
                         *(f"/proc/sys/net/ipv6/conf/{dev}" for dev in ("all", "default", "lo")),
                         ], check=False),
        ]
        return "\n".join(parts)


def realserver_host(lab: Lab, state_dir: Path, address: str | None,
                    gateway: str | None = None, interface: str = "eth0") -> RealServerHost:
    """A namespace whose ``interface`` (a veth to a second namespace) has ``address``."""
    ns = lab.netns("rs")
    # No duplicate address detection: a link-local address turning from tentative to valid
    # meanwhile would show up as a change the setup never made.
    ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0"])
    peer = lab.netns("gw")
    lab.link(ns, None, peer, None, a_if=interface)
    if address is not None:
        ns.ip("addr", "add", address, "dev", interface)
    if gateway is not None:
        ns.ip("route", "add", "default", "via", gateway, "dev", interface)
    return RealServerHost(ns, state_dir)


RUN_NETWORKD = Path(__file__).resolve().parent / "run-networkd.sh"
NETWORKD = Path("/lib/systemd/systemd-networkd")
SYSTEMD_SYSCTL = Path("/lib/systemd/systemd-sysctl")
SYSTEMD_MODULES_LOAD = Path("/lib/systemd/systemd-modules-load")


def apply_networkd(host: RealServerHost, root: Path, extra: dict[str, str] | None = None,
                   want: int = 1) -> list[str]:
    """Apply rendered networkd output (laid out under ``root`` as under /) the way a booting
    host would: modules-load.d, sysctl.d, then the real systemd-networkd on the .network files
    (plus ``extra`` ones, e.g. the host's own eth0.network). Returns networkd's diagnostics
    about the configuration files (each 'path:line: problem'); empty when they all parsed."""
    for conf in sorted((root / "etc/modules-load.d").glob("*.conf")):
        proc = subprocess.run(host.ns.argv([str(SYSTEMD_MODULES_LOAD), str(conf)]),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    for conf in sorted((root / "etc/sysctl.d").glob("*.conf")):
        proc = subprocess.run(host.ns.argv([str(SYSTEMD_SYSCTL), str(conf)]),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    config = root / "etc/systemd/network"
    config.mkdir(parents=True, exist_ok=True)
    for name, text in (extra or {}).items():
        (config / name).write_text(text)
    log = host.ns.run([str(RUN_NETWORKD), str(config), str(want)], timeout=60)
    assert f"configured links: {want}" in log, log
    return [line for line in log.splitlines() if line.startswith("/run/systemd/network/")]


def _assert_same(expected: str, actual: str, what: str) -> None:
    # tests/support is not rewritten by pytest: say what differs ourselves.
    if expected != actual:
        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), lineterm="")
        raise AssertionError(f"{what}:\n" + "\n".join(diff))


def _ok(report: dict[str, Any]) -> set[str]:
    return {f["requirement"] for f in report["findings"] if f["ok"]}


def check_up_down_cycle(host: RealServerHost, script: Path, selector: list[str]) -> None:
    """The whole contract of a rendered setup.sh, asserted against the live namespace:
    verify finds it wrong before; up -> verify all ok; a second up changes nothing; status ok;
    down -> verify wrong again, ok for exactly what was already so before up (a fresh
    namespace may have rp_filter 0, a loaded module has its device), and the namespace is
    exactly as before up."""
    before = host.snapshot()
    rc, report = host.verify(selector)
    assert rc == 1 and not report["ok"]
    ok_before = _ok(report)

    up = host.script(script, "up")
    assert up.returncode == 0, up.stderr
    rc, report = host.verify(selector)
    assert rc == 0, report
    assert report["findings"] and all(f["ok"] for f in report["findings"])
    after_up = host.snapshot()
    assert after_up != before

    again = host.script(script, "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""  # it reports every change it makes: here, none
    _assert_same(after_up, host.snapshot(), "a second up changed the state")

    status = host.script(script, "status")
    assert status.returncode == 0, status.stdout
    assert "missing" not in status.stdout

    down = host.script(script, "down")
    assert down.returncode == 0, down.stderr
    rc, report = host.verify(selector)
    assert rc == 1
    assert _ok(report) == ok_before, report
    _assert_same(before, host.snapshot(), "down did not restore the state before up")
    status = host.script(script, "status")
    assert status.returncode == 1 and "missing" in status.stdout
