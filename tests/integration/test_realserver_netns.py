"""Rendered real-server setups applied for real in network namespaces (DR and NAT, both
families), then checked with ``lvsctl realserver verify`` run inside the same namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import load_cluster
from lvsctl.templates.render import render_shell, setup_adhoc, write_files
from tests.conftest import EXAMPLE
from tests.support.netns import Lab
from tests.support.realserver import check_up_down_cycle, realserver_host

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def example_rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the acceptance command writes: lvsctl realserver render EXAMPLE --all --output DIR."""
    out = tmp_path_factory.mktemp("rs")
    result = CliRunner().invoke(cli, ["realserver", "render", str(EXAMPLE), "--all",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


EXAMPLE_CLUSTER = load_cluster(EXAMPLE).cluster
# The example's dr and nat servers; its tun (IPv6) ones need ip6_tunnel: test_realserver_tun.py.
HOST_SERVERS = [
    (s.forwarding.label, rs) for s in EXAMPLE_CLUSTER.services for rs in s.realservers
    if s.forwarding.label in ("dr", "nat")
]


@pytest.mark.parametrize(("mode", "rs"), HOST_SERVERS, ids=[rs.name for _, rs in HOST_SERVERS])
def test_example_setup_applies_and_verifies(lab: Lab, tmp_path: Path, example_rendered: Path,
                                            mode: str, rs: object) -> None:
    name, address = rs.name, rs.address  # type: ignore[attr-defined]
    # A NAT server starts with some other default route, which up replaces and down restores.
    gateway = "10.0.1.254" if mode == "nat" else "192.0.2.1"
    host = realserver_host(lab, tmp_path / "state", f"{address}/24", gateway)
    check_up_down_cycle(host, example_rendered / name / "setup.sh",
                        [str(EXAMPLE), "--server", name])


@pytest.mark.parametrize(
    ("mode", "vips", "gateway", "address", "old_gateway"),
    [
        ("dr", ["2001:db8::10", "2001:db8::11"], None, "2001:db8::21/64", None),
        ("nat", [], "fd00:1::1", "fd00:1::31/64", "fd00:1::fe"),
        ("nat", [], "10.0.1.1", "10.0.1.31/24", None),  # no default route at all before
    ],
    ids=["dr-ipv6", "nat-ipv6", "nat-ipv4-no-route-before"],
)
def test_adhoc_setup_applies_and_verifies(lab: Lab, tmp_path: Path, mode: str, vips: list[str],
                                          gateway: str | None, address: str,
                                          old_gateway: str | None) -> None:
    setup = setup_adhoc(mode, vips, gateway=gateway)
    (script,) = write_files(tmp_path / "out", render_shell(setup))
    host = realserver_host(lab, tmp_path / "state", address, old_gateway)
    selector = ["--mode", mode, *[a for v in vips for a in ("--vip", v)]]
    if gateway:
        selector += ["--gateway", gateway]
    check_up_down_cycle(host, script, selector)


def test_down_leaves_what_was_already_there(lab: Lab, tmp_path: Path) -> None:
    """Settings present before up are not up's doing: down keeps them."""
    setup = setup_adhoc("dr", ["192.0.2.10", "192.0.2.11"])
    (script,) = write_files(tmp_path / "out", render_shell(setup))
    host = realserver_host(lab, tmp_path / "state", "192.0.2.21/24")
    host.ns.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1"])
    host.ns.ip("addr", "add", "192.0.2.10/32", "dev", "lo")

    assert host.script(script, "up").returncode == 0
    assert host.verify(["--mode", "dr", "--vip", "192.0.2.10", "--vip", "192.0.2.11"])[0] == 0
    assert host.script(script, "down").returncode == 0

    rc, report = host.verify(["--mode", "dr", "--vip", "192.0.2.10", "--vip", "192.0.2.11"])
    ok = {f["requirement"] for f in report["findings"] if f["ok"]}
    assert rc == 1
    assert ok == {"net.ipv4.conf.all.arp_ignore = 1", "192.0.2.10/32 on lo"}


def test_verify_prints_one_line_per_requirement_with_the_fix(lab: Lab, tmp_path: Path) -> None:
    host = realserver_host(lab, tmp_path / "state", "192.0.2.21/24")
    host.ns.run(["sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_announce=2"])
    proc = host.ns.run(
        [sys.executable, "-m", "lvsctl", "realserver", "verify", "--mode", "dr",
         "--vip", "192.0.2.10"], check=False)
    lines = proc.splitlines()
    assert lines[0].split() == ["STATUS", "REQUIREMENT", "FOUND", "FIX"]
    assert lines[1].split() == ["wrong", "net.ipv4.conf.all.arp_ignore", "=", "1", "0", "sysctl",
                                "-w", "net.ipv4.conf.all.arp_ignore=1"]
    assert lines[4].split() == ["ok", "net.ipv4.conf.eth0.arp_announce", "=", "2", "2"]
    assert lines[5].split() == ["wrong", "192.0.2.10/32", "on", "lo", "absent", "ip", "addr",
                                "add", "192.0.2.10/32", "dev", "lo"]
    assert lines[6] == "realserver (dr (IPv4)): 1 ok, 4 wrong"


def test_up_on_a_host_without_the_interface_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    setup = setup_adhoc("dr", ["192.0.2.10"], interface="ens3")
    (script,) = write_files(tmp_path / "out", render_shell(setup))
    host = realserver_host(lab, tmp_path / "state", "192.0.2.21/24")
    before = host.snapshot()
    up = host.script(script, "up")
    assert up.returncode == 1
    assert up.stderr.strip() == (
        "setup.sh: no interface ens3 here: render again with --interface NAME "
        "(the outward interface)"
    )
    assert host.snapshot() == before
    assert not (tmp_path / "state").exists()


def test_verify_finds_which_server_this_host_is(lab: Lab, tmp_path: Path,
                                               example_rendered: Path) -> None:
    host = realserver_host(lab, tmp_path / "state", "192.0.2.22/24")
    assert host.script(example_rendered / "web2" / "setup.sh", "up").returncode == 0
    rc, report = host.verify([str(EXAMPLE)])
    assert (rc, report["server"], report["ok"]) == (0, "web2", True)

    other = realserver_host(lab, tmp_path / "state2", "198.51.100.9/24")
    result = subprocess.run(other.ns.argv([sys.executable, "-m", "lvsctl", "realserver",
                                           "verify", str(EXAMPLE)]),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "lvsctl: cluster.yaml: cannot tell which real server this host is (address match: "
        "none): give --server NAME"
    )
