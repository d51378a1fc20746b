"""TUN real servers need ipip / ip6_tunnel, which only the kernel VM has: the example's IPv6
tun servers and an IPv4 one, set up by the rendered script and by the networkd output."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.templates.render import render_networkd, render_shell, setup_adhoc, write_files
from tests.conftest import EXAMPLE
from tests.support.netns import Lab, run
from tests.support.realserver import apply_networkd, check_up_down_cycle, realserver_host

pytestmark = [pytest.mark.kernel, pytest.mark.netns]


@pytest.fixture(autouse=True)
def _tunnel_modules() -> None:
    # Loaded once up front: the fallback devices then exist in every new namespace already,
    # so the namespace before `up` and after `down` can be compared whole (down leaves modules
    # loaded on purpose: unloading would pull tunl0 out of every namespace).
    run(["modprobe", "ipip"])
    run(["modprobe", "ip6_tunnel"])


@pytest.mark.parametrize(("name", "address"),
                         [("web6a", "2001:db8:1::21/64"), ("web6b", "2001:db8:1::22/64")])
def test_example_tun6_setup_applies_and_verifies(lab: Lab, tmp_path: Path, name: str,
                                                 address: str) -> None:
    out = tmp_path / "rs"
    result = CliRunner().invoke(cli, ["realserver", "render", str(EXAMPLE), "--all",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    host = realserver_host(lab, tmp_path / "state", address)
    check_up_down_cycle(host, out / name / "setup.sh", [str(EXAMPLE), "--server", name])


def test_tun4_setup_applies_and_verifies(lab: Lab, tmp_path: Path) -> None:
    (script,) = write_files(tmp_path / "out",
                            render_shell(setup_adhoc("tun", ["192.0.2.10", "192.0.2.11"])))
    host = realserver_host(lab, tmp_path / "state", "198.51.100.21/24")
    check_up_down_cycle(host, script, ["--mode", "tun", "--vip", "192.0.2.10", "--vip",
                                       "192.0.2.11"])


@pytest.mark.parametrize(("vip", "address"), [("192.0.2.10", "198.51.100.21/24"),
                                              ("2001:db8::10", "2001:db8:1::21/64")])
def test_tun_networkd_output_applies_and_verifies(lab: Lab, tmp_path: Path, vip: str,
                                                  address: str) -> None:
    root = tmp_path / "out"
    write_files(root, render_networkd(setup_adhoc("tun", [vip])))
    host = realserver_host(lab, tmp_path / "state", address)
    assert apply_networkd(host, root) == []
    rc, report = host.verify(["--mode", "tun", "--vip", vip])
    assert rc == 0, report
