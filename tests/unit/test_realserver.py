"""Real-server setups: what each mode requires, what verify judges, what the CLI refuses."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import parse_cluster
from lvsctl.core.model import Family
from lvsctl.templates.render import (
    Address,
    DefaultRoute,
    LinkUp,
    Module,
    RealServerSetup,
    SetupError,
    Sysctl,
    render,
    requirements,
    setup_adhoc,
    setup_for,
    setups_for_all,
)
from lvsctl.templates.verify import Observed, Route, check
from tests.conftest import EXAMPLE, MINIMAL
from tests.support.realserver import dr_and_tun_cluster

ARP_ETH0 = [
    Sysctl("net/ipv4/conf/all/arp_ignore", "1"),
    Sysctl("net/ipv4/conf/all/arp_announce", "2"),
    Sysctl("net/ipv4/conf/eth0/arp_ignore", "1"),
    Sysctl("net/ipv4/conf/eth0/arp_announce", "2"),
]


# --- what each mode requires ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (setup_adhoc("dr", ["192.0.2.10"]), [*ARP_ETH0, Address("lo", "192.0.2.10", 32)]),
        # ARP does not exist in IPv6: a VIP on lo is not answered for on other links.
        (setup_adhoc("dr", ["2001:db8::10"]), [Address("lo", "2001:db8::10", 128)]),
        (
            setup_adhoc("tun", ["192.0.2.10"]),
            [
                Module("ipip", "tunl0"),
                Sysctl("net/ipv4/conf/all/rp_filter", "0"),
                Sysctl("net/ipv4/conf/default/rp_filter", "0"),
                Sysctl("net/ipv4/conf/tunl0/rp_filter", "0"),
                *ARP_ETH0,
                Address("tunl0", "192.0.2.10", 32),
                LinkUp("tunl0"),
            ],
        ),
        (
            setup_adhoc("tun", ["2001:0db8::0010"]),
            [Module("ip6_tunnel", "ip6tnl0"), Address("ip6tnl0", "2001:db8::10", 128),
             LinkUp("ip6tnl0")],
        ),
        (setup_adhoc("nat", [], gateway="10.0.1.1"),
         [DefaultRoute(Family.INET, "10.0.1.1", 0)]),
        (setup_adhoc("nat", [], gateway="fd00::1"), [DefaultRoute(Family.INET6, "fd00::1", 1)]),
    ],
    ids=["dr4", "dr6", "tun4", "tun6", "nat4", "nat6"],
)
def test_requirements_per_mode(setup: RealServerSetup, expected: list[object]) -> None:
    assert list(requirements(setup)) == expected


def test_arp_settings_come_before_the_vip() -> None:
    reqs = list(requirements(setup_adhoc("dr", ["192.0.2.10"])))
    assert max(i for i, r in enumerate(reqs) if isinstance(r, Sysctl)) < next(
        i for i, r in enumerate(reqs) if isinstance(r, Address)
    )


def test_cluster_server_in_dr_and_tun_gets_one_combined_setup() -> None:
    setup = setup_for(dr_and_tun_cluster(), "web1")
    assert setup.dr_vips == ("192.0.2.10",)
    assert setup.tun_vips == ("192.0.2.11",)
    assert setup.services == ("www", "mail")
    assert setup.summary == "dr + tun (IPv4)"


def test_nat_server_gets_the_inside_vip_of_its_network() -> None:
    cluster = parse_cluster(EXAMPLE.read_text(), "cluster.yaml").cluster
    assert setup_for(cluster, "ns1").gateway == "10.0.1.1"
    assert setup_for(cluster, "web6a").tun_vips == ("2001:db8::10",)
    assert [s.name for s in setups_for_all(cluster)] == cluster.realserver_names()


def _cluster(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_cluster(yaml.safe_dump(data), "c.yaml").cluster


def test_dr_and_nat_on_one_server_is_an_error_that_says_why() -> None:
    data = copy.deepcopy(MINIMAL)
    # app1 (nat, 10.0.1.31) also in a dr service
    data["services"].append({"name": "other", "vip": "192.0.2.10", "port": 443,
                             "forwarding": "dr",
                             "realservers": [{"name": "app1", "address": "10.0.1.31"}]})
    with pytest.raises(SetupError) as err:
        setup_for(_cluster(data), "app1")
    message = str(err.value)
    assert "app1 is a nat real server in app" in message
    assert "dr one in other" in message and "cannot be both" in message
    with pytest.raises(SetupError):  # --all refuses too, before anything is written
        setups_for_all(_cluster(data))


def test_a_vip_in_dr_and_tun_for_one_server_goes_on_the_tunnel_only() -> None:
    data = copy.deepcopy(MINIMAL)
    data["services"].append({"name": "t", "vip": "192.0.2.10", "port": 81, "forwarding": "tun",
                             "realservers": [{"name": "web1", "address": "192.0.2.21"}]})
    setup = setup_for(_cluster(data), "web1")
    assert (setup.dr_vips, setup.tun_vips) == ((), ("192.0.2.10",))


def test_fwmark_service_brings_every_listed_vip() -> None:
    data = copy.deepcopy(MINIMAL)
    data["vips"].append({"address": "192.0.2.11", "interface": "eth0"})
    data["services"].append({"name": "fw", "fwmark": 7, "vips": ["192.0.2.10", "192.0.2.11"],
                             "forwarding": "dr",
                             "realservers": [{"name": "web9", "address": "192.0.2.29"}]})
    assert setup_for(_cluster(data), "web9").dr_vips == ("192.0.2.10", "192.0.2.11")


# --- verify's judgement (pure) ------------------------------------------------------------------


def _observed(**kw: Any) -> Observed:
    base: dict[str, Any] = {
        "links": {"lo": True, "eth0": True},
        "addresses": {"lo": frozenset({"127.0.0.1/8"})},
        "sysctls": {},
        "default_routes": {},
    }
    base.update(kw)
    return Observed(**base)


@pytest.mark.parametrize(
    ("req", "observed", "ok", "found"),
    [
        (Sysctl("net/ipv4/conf/all/arp_ignore", "1"),
         _observed(sysctls={"net/ipv4/conf/all/arp_ignore": "1"}), True, "1"),
        (Sysctl("net/ipv4/conf/all/arp_ignore", "1"),
         _observed(sysctls={"net/ipv4/conf/all/arp_ignore": "0"}), False, "0"),
        (Sysctl("net/ipv4/conf/eth9/arp_ignore", "1"), _observed(), False, "no interface eth9"),
        (Sysctl("net/ipv4/conf/all/arp_ignore", "1"), _observed(), False,
         "no net.ipv4.conf.all.arp_ignore"),
        (Address("lo", "192.0.2.10", 32),
         _observed(addresses={"lo": frozenset({"192.0.2.10/32"})}), True, "present"),
        (Address("lo", "192.0.2.10", 32),
         _observed(addresses={"eth0": frozenset({"192.0.2.10/24"})}), False,
         "192.0.2.10/24 on eth0"),
        (Address("lo", "192.0.2.10", 32), _observed(), False, "absent"),
        (Address("tunl0", "192.0.2.10", 32), _observed(), False, "no tunl0"),
        (Module("ipip", "tunl0"), _observed(links={"tunl0": False}), True, "tunl0 exists"),
        (LinkUp("tunl0"), _observed(links={"tunl0": False}), False, "down"),
        (LinkUp("tunl0"), _observed(links={"tunl0": True}), True, "up"),
        (DefaultRoute(Family.INET, "10.0.1.1", 0), _observed(), False, "no default route"),
        (DefaultRoute(Family.INET, "10.0.1.1", 0),
         _observed(default_routes={Family.INET: (Route(100, "10.0.1.254", "eth0"),
                                                 Route(0, "10.0.1.1", "eth0"))}),
         True, "via 10.0.1.1 dev eth0 metric 0"),
        # the route with the lowest metric is the one the kernel uses
        (DefaultRoute(Family.INET, "10.0.1.1", 0),
         _observed(default_routes={Family.INET: (Route(100, "10.0.1.1", "eth0"),
                                                 Route(0, "10.0.1.254", "eth0"))}),
         False, "via 10.0.1.254 dev eth0 metric 0"),
        (DefaultRoute(Family.INET6, "fd00::1", 1),
         _observed(default_routes={Family.INET: (Route(0, "10.0.1.1", "eth0"),)}),
         False, "no default route"),
    ],
)
def test_check_one_requirement(req: Any, observed: Observed, ok: bool, found: str) -> None:
    (finding,) = check([req], observed)
    assert (finding.ok, finding.found) == (ok, found)
    assert finding.fix == req.fix


def test_fixes_are_commands_with_quoted_values() -> None:
    assert Sysctl("net/ipv4/conf/eth0.100/arp_ignore", "1").fix == (
        "sysctl -w net/ipv4/conf/eth0.100/arp_ignore=1"
    )
    assert Address("lo", "2001:db8::10", 128).fix == "ip addr add 2001:db8::10/128 dev lo nodad"
    assert DefaultRoute(Family.INET, "10.0.1.1", 0).fix == (
        "ip -4 route replace default via 10.0.1.1 metric 0"
    )


# --- rejected inputs: one line, non-zero, nothing written ----------------------------------------

INJECTIONS = ["eth0; reboot", "eth0$(reboot)", "eth0`reboot`", "eth0\nreboot", "eth0'", "e*",
              "a=b", "eth0#x", "", "averyveryverylongname"]


def _run(args: list[str]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, args)


def _assert_refused(args: list[str], out: Path, expect: str) -> None:
    result = _run([*args, "--output", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvsctl: "), result.output
    assert expect in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("interface", INJECTIONS)
@pytest.mark.parametrize("form", ["adhoc", "cluster"])
def test_bad_interface_is_refused(tmp_path: Path, interface: str, form: str) -> None:
    args = (["realserver", "render", "--mode", "dr", "--vip", "192.0.2.10"] if form == "adhoc"
            else ["realserver", "render", str(EXAMPLE), "--server", "web1"])
    _assert_refused([*args, "--interface", interface], tmp_path / "out", "--interface")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--mode", "dr", "--vip", "192.0.2.10; reboot"], "not an IPv4 or IPv6 address"),
        (["--mode", "dr", "--vip", "$(reboot)"], "not an IPv4 or IPv6 address"),
        (["--mode", "dr", "--vip", "192.0.2.10/32"], "not an IPv4 or IPv6 address"),
        (["--mode", "dr", "--vip", "fe80::1%eth0"], "%zone"),
        (["--mode", "dr", "--vip", "2001:db8::1%$(reboot)"], "%zone"),
        (["--mode", "dr", "--vip", "224.0.0.1"], "not a unicast address"),
        (["--mode", "dr", "--vip", "0.0.0.0"], "not a unicast address"),
        (["--mode", "tun", "--vip", "::1"], "not a unicast address"),
        (["--mode", "nat", "--gateway", "10.0.1.1\nreboot"], "--gateway"),
        (["--mode", "nat", "--gateway", "10.0.1.1 ; reboot"], "--gateway"),
        (["--mode", "dr", "--vip", "192.0.2.10", "--vip", "2001:db8::10"],
         "different families"),
        (["--mode", "nat", "--gateway", "2001:db8::1", "--vip", "192.0.2.10"],
         "different families"),
        (["--mode", "nat"], "needs --gateway"),
        (["--mode", "nat", "--gateway", "10.0.1.1", "--vip", "10.0.1.2"], "needs no VIP"),
        (["--mode", "dr"], "needs at least one --vip"),
        (["--mode", "tun", "--vip", "192.0.2.10", "--gateway", "192.0.2.1"], "own router"),
    ],
)
def test_bad_adhoc_values_are_refused(tmp_path: Path, args: list[str], expect: str) -> None:
    _assert_refused(["realserver", "render", *args], tmp_path / "out", expect)


@pytest.mark.parametrize("name", ["nope", "web1; reboot", "$(reboot)", "../web1"])
def test_unknown_server_is_refused(tmp_path: Path, name: str) -> None:
    _assert_refused(["realserver", "render", str(EXAMPLE), "--server", name], tmp_path / "out",
                    "no such real server in cluster web")


@pytest.mark.parametrize(
    ("key", "value"),
    [("name", "web1; reboot"), ("name", "web1$(reboot)"), ("address", "192.0.2.21; reboot")],
)
def test_injection_in_the_cluster_file_is_refused(tmp_path: Path, key: str, value: str) -> None:
    data = copy.deepcopy(MINIMAL)
    data["services"][0]["realservers"][0][key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    result = _run(["realserver", "render", str(path), "--all", "--output", str(out)])
    assert result.exit_code == 1
    assert f"c.yaml: services[0].realservers[0].{key}:" in result.output
    assert not out.exists()


def test_conflict_in_all_writes_nothing(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["services"].append({"name": "other", "vip": "192.0.2.10", "port": 443,
                             "forwarding": "dr",
                             "realservers": [{"name": "app1", "address": "10.0.1.31"}]})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    _assert_refused(["realserver", "render", str(path), "--all"], tmp_path / "out",
                    "cannot be both")


def test_a_source_name_cannot_end_a_comment(tmp_path: Path) -> None:
    files = render(setup_adhoc("dr", ["192.0.2.10"]), "shell", "evil\nreboot #.yaml")
    header = files["setup.sh"].splitlines()[2]
    assert header.startswith("# Rendered by lvsctl") and "evil?reboot ?.yaml" in header
    assert "\nreboot" not in files["setup.sh"]


def test_the_setup_refuses_unvalidated_values_built_directly() -> None:
    with pytest.raises(SetupError):
        RealServerSetup("x", Family.INET, "eth0; reboot", dr_vips=("192.0.2.10",))
    with pytest.raises(SetupError):
        RealServerSetup("x", Family.INET, "eth0", dr_vips=("192.0.2.10 ; reboot",))
    with pytest.raises(SetupError):
        RealServerSetup("x;y", Family.INET, "eth0", dr_vips=("192.0.2.10",))
    with pytest.raises(SetupError):
        RealServerSetup("x", Family.INET, "eth0", dr_vips=("2001:db8::1",))


@pytest.mark.parametrize(
    "args",
    [
        ["realserver", "render"],
        ["realserver", "render", str(EXAMPLE)],
        ["realserver", "render", str(EXAMPLE), "--server", "web1", "--all", "--output", "x"],
        ["realserver", "render", str(EXAMPLE), "--server", "web1", "--mode", "dr"],
        ["realserver", "render", "--server", "web1", "--mode", "dr"],
        ["realserver", "render", str(EXAMPLE), "--all"],
        ["realserver", "verify", str(EXAMPLE), "--mode", "dr"],
    ],
)
def test_wrong_usage_exits_2(args: list[str]) -> None:
    result = _run(args)
    assert result.exit_code == 2, result.output


# --- output -------------------------------------------------------------------------------------


def test_render_all_writes_one_folder_per_server(tmp_path: Path) -> None:
    out = tmp_path / "rs"
    result = _run(["realserver", "render", str(EXAMPLE), "--all", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["web1", "web2", "web3", "web6a", "web6b", "ns1", "ns2"])
    script = out / "web1" / "setup.sh"
    assert os.access(script, os.X_OK)
    assert "ensure_addr lo 192.0.2.10/32" in script.read_text()
    assert "ensure_default -4 10.0.1.1 0" in (out / "ns1" / "setup.sh").read_text()
    assert "ensure_addr ip6tnl0 2001:db8::10/128 nodad" in (out / "web6a" / "setup.sh").read_text()


def test_render_networkd_to_a_folder(tmp_path: Path) -> None:
    result = _run(["realserver", "render", str(EXAMPLE), "--server", "web1", "--format",
                   "networkd", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "etc/systemd/network/50-lvsctl-lo.network").is_file()
    assert "net/ipv4/conf/eth0/arp_ignore = 1" in (
        tmp_path / "etc/sysctl.d/90-lvsctl-realserver.conf").read_text()


def test_render_prints_the_script_without_output() -> None:
    result = _run(["realserver", "render", "--mode", "nat", "--gateway", "10.0.1.1"])
    assert result.exit_code == 0
    assert result.output.startswith("#!/bin/bash\n")
    assert "ensure_default -4 10.0.1.1 0" in result.output


def test_a_zoned_vip_from_the_cluster_file_is_refused(tmp_path: Path) -> None:
    # The cluster schema refuses an IPv6 zone ("%...") at every key that takes it.
    data = copy.deepcopy(MINIMAL)
    zoned = "2001:db8::10%$(reboot)"
    data["vips"][1]["address"] = zoned
    data["services"].append({"name": "v6", "vip": zoned, "port": 80, "forwarding": "dr",
                             "realservers": [{"name": "web6", "address": "2001:db8::21"}]})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _run(["realserver", "render", str(path), "--all", "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"c.yaml: services[2].vip: {zoned!r} carries a zone (%...): give the address alone",
        f"c.yaml: vips[1].address: {zoned!r} carries a zone (%...): give the address alone",
    ]
    assert not (tmp_path / "out").exists()
