"""The networkd output, checked by the strongest parser there is: the real systemd-networkd
(and systemd-sysctl) applying it inside a network namespace; then verify must say all ok.

(``systemd-analyze verify`` only knows unit files; it refuses .network files.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsctl.templates.render import render_networkd, setup_adhoc, write_files
from tests.support.netns import Lab
from tests.support.realserver import apply_networkd, realserver_host

pytestmark = pytest.mark.netns

# The real server's own .network for its interface, as a host would have; NAT adds a drop-in.
OWN_NETWORK = """\
[Match]
Name={interface}

[Network]
Address={address}
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


@pytest.mark.parametrize(
    ("mode", "vips", "gateway", "interface", "address", "want"),
    [
        ("dr", ["192.0.2.10", "192.0.2.11"], None, "eth0.100", "192.0.2.21/24", 1),
        ("dr", ["2001:db8::10"], None, "eth0", "2001:db8::21/64", 1),
        ("nat", [], "10.0.1.1", "eth0", "10.0.1.31/24", 1),
        ("nat", [], "fd00:1::1", "eth0", "fd00:1::31/64", 1),
    ],
    ids=["dr-ipv4-dotted-interface", "dr-ipv6", "nat-ipv4", "nat-ipv6"],
)
def test_networkd_applies_the_setup_and_verify_passes(
    lab: Lab, tmp_path: Path, mode: str, vips: list[str], gateway: str | None, interface: str,
    address: str, want: int,
) -> None:
    setup = setup_adhoc(mode, vips, interface=interface, gateway=gateway)
    root = tmp_path / "out"
    write_files(root, render_networkd(setup))
    nat = mode == "nat"
    host = realserver_host(lab, tmp_path / "state", None if nat else address, None, interface)
    selector = ["--mode", mode, "--interface", interface,
                *[a for v in vips for a in ("--vip", v)],
                *(["--gateway", gateway] if gateway else [])]
    assert host.verify(selector)[0] == 1

    extra = {f"{interface}.network": OWN_NETWORK.format(interface=interface, address=address)}
    diagnostics = apply_networkd(host, root, extra if nat else None, want=want)

    assert diagnostics == []
    rc, report = host.verify(selector)
    assert rc == 0, report
    # networkd manages lo for DR: it must keep the loopback addresses it did not configure.
    lo = host.ns.ip("-o", "addr", "show", "dev", "lo")
    assert "127.0.0.1/8" in lo and "::1/128" in lo


def test_the_networkd_check_catches_a_bad_file(lab: Lab, tmp_path: Path) -> None:
    """The check above can fail: networkd reports a key it does not know, with the file."""
    root = tmp_path / "out"
    (network, *_) = write_files(root, render_networkd(setup_adhoc("dr", ["192.0.2.10"])))
    network.write_text(network.read_text() + "Bogus=1\n")
    host = realserver_host(lab, tmp_path / "state", "192.0.2.21/24")
    diagnostics = apply_networkd(host, root)
    assert len(diagnostics) == 1
    assert diagnostics[0].startswith("/run/systemd/network/50-lvsctl-lo.network:")
    assert "Bogus" in diagnostics[0]
