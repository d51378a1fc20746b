"""IPVS timeouts against the real kernel: set with lvsctl and read back with ipvsadm, set with
ipvsadm and read back with lvsctl, unconfigured ones left alone, and the CLI's apply and show.
Also one-packet scheduling (ops) on a UDP service, as ipvsadm lists it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.model import IpvsTimeouts
from lvsctl.director.ipvs import KernelIpvs
from lvsctl.director.ipvs_timeouts import KernelTimeouts, sync_timeouts
from tests.conftest import MINIMAL
from tests.support.netns import Lab, Netns

pytestmark = pytest.mark.kernel


def ipvsadm_timeouts(ns: Netns) -> tuple[int, int, int]:
    """(tcp, tcpfin, udp) as ``ipvsadm -L --timeout`` prints them."""
    text = ns.run(["ipvsadm", "-L", "--timeout"])
    match = re.search(r"Timeout \(tcp tcpfin udp\): (\d+) (\d+) (\d+)", text)
    assert match is not None, text
    return int(match[1]), int(match[2]), int(match[3])


def test_timeouts_both_ways_and_through_the_cli(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("to")
    with KernelIpvs(netns=ns.name) as ipvs:  # loads ip_vs if it is not yet
        with KernelTimeouts(ns.name) as kernel:
            defaults = kernel.observe()
            assert (defaults.tcp, defaults.tcp_fin, defaults.udp) == ipvsadm_timeouts(ns)

            kernel.set(IpvsTimeouts(tcp=600, udp=45))  # tcp_fin 0: left as it is
            assert ipvsadm_timeouts(ns) == (600, defaults.tcp_fin, 45)

            ns.run(["ipvsadm", "--set", "100", "50", "40"])
            assert kernel.observe() == IpvsTimeouts(100, 50, 40)

        ns.run(["ipvsadm", "--set", "900", "50", "300"])
        want = IpvsTimeouts(900, 120, 300)
        assert sync_timeouts(ipvs, want) == IpvsTimeouts(tcp_fin=120)  # only what differs
        assert ipvsadm_timeouts(ns) == (900, 120, 300)
        assert sync_timeouts(ipvs, want) is None  # already so: nothing written

    # The CLI: apply sets the file's timeouts (and the ops flag), show --json reports them.
    doc = json.loads(json.dumps(MINIMAL))
    doc["ipvs_timeouts"] = {"tcp": "20m", "tcp_fin": 30, "udp": 60}
    doc["services"] = [{
        "name": "dns", "vip": "192.0.2.10", "port": 53, "protocol": "udp", "forwarding": "dr",
        "ops": True, "realservers": [{"name": "ns1", "address": "192.0.2.31"}],
    }]
    path = tmp_path / "cluster.yaml"
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["ipvs", "--netns", ns.name, "apply", str(path)])
    assert result.exit_code == 0, result.output
    assert "set IPVS timeouts tcp 1200s tcp_fin 30s udp 60s" in result.stdout
    assert ipvsadm_timeouts(ns) == (1200, 30, 60)
    assert "-A -u 192.0.2.10:53 -s wlc -o" in ns.run(["ipvsadm", "-S", "-n"])
    result = CliRunner().invoke(cli, ["ipvs", "--netns", ns.name, "show", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["timeouts"] == {"tcp": 1200, "tcp_fin": 30, "udp": 60}
    assert shown["services"][0]["flags"] == ["ops"]
