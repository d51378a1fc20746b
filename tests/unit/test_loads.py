"""The test bed's load generators: the cluster files they make pass lvsctl's own validation
(a load that the director refuses measures nothing) and have the sizes and counts asked for."""

from __future__ import annotations

import ipaddress

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.testbed.loads import (
    FARM_NET,
    MAX_SERVERS,
    PORT_ENDLESS,
    bulk_services,
    chatty_misc_services,
    farm_services,
    hostile_http_services,
    server_address,
)

VIP = "192.0.2.10"
HEAD = [
    "cluster: t",
    "zookeeper: {hosts: ['192.0.2.100:2181'], session_timeout: 2}",
    "directors:",
    "  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2}}",
    "  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3}}",
    "vips:",
    f"  - {{address: {VIP}, interface: eth0}}",
    "services:",
]


def cluster(*blocks: list[str]):  # type: ignore[no-untyped-def]
    return parse_cluster("\n".join([*HEAD, *(line for b in blocks for line in b), ""]),
                         "generated.yaml").cluster


def test_a_farm_and_the_base_farm_live_side_by_side_with_every_server_checked():
    c = cluster(farm_services(VIP, 10, name="base", first=MAX_SERVERS - 10, first_port=9000),
                farm_services(VIP, 250))
    servers = [rs for svc in c.services for rs in svc.realservers]
    assert len(servers) == 260
    assert len({rs.address for rs in servers}) == 260
    assert all(rs.check is not None and rs.check.port == 80 for rs in servers)
    assert all(ipaddress.ip_address(rs.address) in FARM_NET for rs in servers)


@pytest.mark.parametrize("target", [20_000, 200_000])
def test_bulk_fills_the_size_asked_for_without_passing_it(target):  # type: ignore[no-untyped-def]
    text = "\n".join(bulk_services(VIP, target)) + "\n"
    assert 0.95 * target <= len(text) <= target
    c = cluster(bulk_services(VIP, target))
    assert sum(len(svc.realservers) for svc in c.services) > target // 60


def test_bulk_variants_differ_in_one_weight_only():
    a, b = bulk_services(VIP, 20_000, variant=0), bulk_services(VIP, 20_000, variant=1)
    assert sum(x != y for x, y in zip(a, b, strict=True)) == 1


def test_hostile_services_validate():
    c = cluster(hostile_http_services(VIP, 3, PORT_ENDLESS, name="endless"),
                chatty_misc_services(VIP, 2))
    assert [len(svc.realservers) for svc in c.services] == [3, 2]


def test_server_addresses_stay_inside_the_range():
    assert server_address(0) == "10.77.1.1"
    assert server_address(MAX_SERVERS - 1) == "10.77.255.250"
    with pytest.raises(ValueError, match="outside"):
        server_address(MAX_SERVERS)
