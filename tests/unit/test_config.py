"""Cluster-file validation: one table of bad inputs, inheritance, and the example file."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from lvsctl.core.config import load_cluster, parse_cluster
from lvsctl.core.errors import ConfigError
from lvsctl.core.model import Family, Forwarding, HttpCheck, Protocol, ServiceKey
from tests.conftest import EXAMPLE, MINIMAL

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_DELETE = object()


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, with _DELETE, remove) the value at a key path like services[0].port."""
    doc = copy.deepcopy(doc)
    tokens = [int(i) if i else k for k, i in _TOKEN.findall(path)]
    node: Any = doc
    for token in tokens[:-1]:
        node = node[token]
    if value is _DELETE:
        del node[tokens[-1]]
    else:
        node[tokens[-1]] = value
    return doc


def issues_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_cluster(yaml.safe_dump(doc), "c.yaml")
    return [(i.path, i.message) for i in info.value.issues]


# (key path to change, new value, key path expected in the error, words expected in its message)
BAD = [
    ("services[0].realservers[0].port", 8080, "services[0].realservers[0].port",
     "must equal the service port 80 in dr mode"),
    ("services[0].schedular", "wrr", "services[0].schedular", "did you mean 'scheduler'"),
    ("services[0].realservers[1].address", "192.0.2.300", "services[0].realservers[1].address",
     "not an IPv4 or IPv6 address"),
    ("services[0].realservers[0].address", "2001:db8::21", "services[0].realservers[0].address",
     "not an IPv4 address"),
    ("vips[1].address", "2001:db8::10%$(reboot)", "vips[1].address", "carries a zone"),
    ("directors[0].address", "fe80::1%eth0/64", "directors[0].address", "carries a zone"),
    ("services[0].port", 0, "services[0].port", "at least 1"),
    ("services[0].port", 70000, "services[0].port", "at most 65535"),
    ("services[0].port", "80", "services[0].port", "expected a whole number"),
    ("services[0].forwarding", "direct", "services[0].forwarding", "expected one of"),
    ("services[0].scheduler", "fastest", "services[0].scheduler", "expected one of"),
    ("services[0].flags", ["sh-port"], "services[0].flags", "needs scheduler sh"),
    ("services[1].name", "www", "services[1].name", "already used by services[0]"),
    ("services[1].port", 80, "services[1].vip", "already served by services[0]"),
    ("services[0].vip", "192.0.2.99", "services[0].vip", "not listed under vips"),
    ("services[0].vip", "10.0.1.1", "services[0].vip", "inside VIP"),
    ("services[1].realservers[0].address", "10.9.9.9", "services[1].realservers[0].address",
     "in no inside VIP's network"),
    ("vips[2].inside", False, "vips[2].network", "only an inside VIP"),
    ("vips[2].network", _DELETE, "vips[2].network", "needs the real servers' network"),
    ("vips[2].address", "10.0.2.1", "vips[2].address", "not inside its network"),
    ("vips[0].interface", "eth0; reboot", "vips[0].interface", "not a valid interface name"),
    ("vips[0].interface", "averyveryverylongname", "vips[0].interface",
     "not a valid interface name"),
    ("directors[1].name", "lb1", "directors[1].name", "already used by directors[0]"),
    ("directors", MINIMAL["directors"][:1], "directors", "at least 2"),
    ("zookeeper.hosts", ["zk1"], "zookeeper.hosts[0]", "not host:port"),
    ("zookeeper.session_timeout", "fast", "zookeeper.session_timeout", "not a duration"),
    ("zookeeper.root", "lvsctl", "zookeeper.root", "not an absolute znode path"),
    ("services[0].check.type", "icmp", "services[0].check.type", "unknown check type"),
    ("services[0].check.timeout", 5, "services[0].check.timeout", "shorter than the interval"),
    ("services[0].check.status", ["2xx"], "services[0].check.status[0]", "not an HTTP status"),
    ("services[0].check.sni", "a.example", "services[0].check.sni", "only an https check"),
    ("services[0].check.path", "health", "services[0].check.path", "expected form"),
    ("services[0].check", {"type": "misc"}, "services[0].check.command", "needs a command"),
    ("services[0].check", {"type": "dns"}, "services[0].check.name", "the name to query"),
    ("services[0].quorum", 3, "services[0].quorum", "more than the service's 2"),
    ("services[0].persistence", {"timeout": 60, "netmask": 64},
     "services[0].persistence.netmask", "at most 32"),
    ("services[0].persistence", {"timeout": 60, "netmask": "255.0.255.0"},
     "services[0].persistence.netmask", "not a netmask"),
    ("services[0].sorry_server", {"address": "192.0.2.99", "port": 81},
     "services[0].sorry_server.port", "must equal the service port 80"),
    ("services[0].fwmark", 5, "services[0].vip", "a fwmark service has no vip"),
    ("services[0].vip", _DELETE, "services[0].vip", "needs a vip and port, or a fwmark"),
    ("services[0].realservers[0].name", "bad name", "services[0].realservers[0].name",
     "names start with a letter"),
    ("services[0].realservers[1].name", "web1", "services[0].realservers[1].name",
     "already used"),
    ("services[1].realservers[0].name", "web1", "services[1].realservers[0].address",
     "one name is one host"),
    ("services[0].realservers[0].weight", -1, "services[0].realservers[0].weight", "at least 0"),
    ("services[0].realservers[0].check", {"type": "tcp", "address": "2001:db8::1"},
     "services[0].realservers[0].check.address", "another family"),
    ("cluster", True, "cluster", "expected text"),
    ("services", _DELETE, "services", "required key is missing"),
]


@pytest.mark.parametrize(("path", "value", "where", "words"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_names_key_path_and_rule(path: str, value: Any, where: str, words: str) -> None:
    issues = issues_of(mutate(MINIMAL, path, value))
    assert any(p == where and words in m for p, m in issues), issues


def test_minimal_is_valid() -> None:
    loaded = parse_cluster(yaml.safe_dump(MINIMAL), "c.yaml")
    assert [s.name for s in loaded.cluster.services] == ["www", "app"]


def test_all_problems_reported_at_once_in_file_order() -> None:
    doc = mutate(MINIMAL, "services[0].realservers[0].port", 8080)
    doc = mutate(doc, "services[0].schedular", "wrr")
    doc = mutate(doc, "services[0].realservers[1].address", "192.0.2.300")
    paths = [p for p, _ in issues_of(doc)]
    assert paths == [
        "services[0].realservers[0].port",
        "services[0].realservers[1].address",
        "services[0].schedular",
    ]


def test_yaml_errors_name_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster("cluster: [unclosed\n", "c.yaml")
    (line,) = info.value.lines()
    assert line.startswith("c.yaml: line 2, column 1: invalid YAML")


def test_duplicate_keys_are_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster("cluster: a\ncluster: b\n", "c.yaml")
    assert "key 'cluster' is given twice" in info.value.lines()[0]


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster("- a\n- b\n", "c.yaml")
    assert info.value.lines() == ["c.yaml: the file must be a mapping of keys"]


def test_unreadable_file_is_one_line(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_cluster(tmp_path / "missing.yaml")
    (line,) = info.value.lines()
    assert line.endswith("missing.yaml: cannot read the file: No such file or directory")


def test_check_inherited_and_merged_per_real_server() -> None:
    doc = mutate(MINIMAL, "services[0].realservers[1].check",
                 {"type": "http", "path": "/rs", "port": 8081})
    service = parse_cluster(yaml.safe_dump(doc), "c.yaml").cluster.services[0]
    first, second = service.realservers
    assert first.check is not None and second.check is not None
    assert isinstance(first.check.kind, HttpCheck) and isinstance(second.check.kind, HttpCheck)
    assert (first.check.kind.path, first.check.port, first.check.address) == (
        "/health", 80, "192.0.2.21")
    # the override keeps the service's timing and replaces only what it names
    assert (second.check.kind.path, second.check.port) == ("/rs", 8081)
    assert second.check.timing == first.check.timing
    assert second.check.timing.interval == 2.0 and second.check.timing.rise == 2


def test_check_of_another_type_replaces_the_inherited_one() -> None:
    doc = mutate(MINIMAL, "services[0].realservers[1].check", {"type": "tcp"})
    service = parse_cluster(yaml.safe_dump(doc), "c.yaml").cluster.services[0]
    assert service.realservers[1].check is not None
    assert service.realservers[1].check.type == "tcp"
    assert service.realservers[1].check.timing.interval == 2.0  # the default, not inherited


def test_defaults_are_filled() -> None:
    cluster = parse_cluster(yaml.safe_dump(MINIMAL), "c.yaml").cluster
    www, app = cluster.services
    assert www.key == ServiceKey(Family.INET, Protocol.TCP, "192.0.2.10", 80, 0)
    assert www.spec.scheduler == "wlc" and www.spec.netmask == 32
    assert www.forwarding is Forwarding.DR and www.on_failure == "remove"
    assert [rs.weight for rs in www.realservers] == [1, 5]
    assert [rs.port for rs in www.realservers] == [80, 80]
    assert app.realservers[0].port == 9000 and app.realservers[0].check is None
    assert cluster.directors[0].sync_interface == "eth0" and cluster.directors[0].sync_id == 0
    assert cluster.zookeeper.root == "/lvsctl" and cluster.zookeeper.session_timeout == 4.0


def test_durations_take_units() -> None:
    doc = mutate(MINIMAL, "services[0].check.interval", "1.5s")
    doc = mutate(doc, "services[0].check.timeout", "500ms")
    doc = mutate(doc, "services[0].drain_timeout", "2m")
    service = parse_cluster(yaml.safe_dump(doc), "c.yaml").cluster.services[0]
    check = service.realservers[0].check
    assert check is not None and (check.timing.interval, check.timing.timeout) == (1.5, 0.5)
    assert service.drain_timeout == 120.0


def test_ipv6_and_fwmark_services() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["services"].append({
        "name": "v6", "vip": "2001:DB8:0::10", "port": 443, "forwarding": "tun",
        "realservers": [{"name": "r6", "address": "2001:db8:1::21"}],
    })
    doc["services"].append({
        "name": "mark", "fwmark": 7, "vips": ["192.0.2.10"], "forwarding": "dr",
        "realservers": [{"name": "web1", "address": "192.0.2.21"}],
    })
    cluster = parse_cluster(yaml.safe_dump(doc), "c.yaml").cluster
    v6, mark = cluster.services[2], cluster.services[3]
    assert v6.key.address == "2001:db8::10" and v6.family is Family.INET6
    assert v6.spec.netmask == 128
    assert mark.key == ServiceKey.mark(Family.INET, 7) and mark.realservers[0].port == 0


def test_warnings_nat_scale_dr_subnet_and_no_check() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["services"][1]["realservers"] = [
        {"name": f"app{i}", "address": f"10.0.1.{10 + i}"} for i in range(21)
    ]
    doc["services"][0]["realservers"].append({"name": "far", "address": "198.51.100.7"})
    loaded = parse_cluster(yaml.safe_dump(doc), "c.yaml")
    messages = {w.path: w.message for w in loaded.warnings}
    assert "the director carries both directions" in messages["services[1].realservers"]
    assert "outside the directors' networks" in messages["services[0].realservers[2].address"]
    assert "always taken as healthy" in messages["services[1].check"]


def test_example_file_is_valid_and_has_every_mode() -> None:
    cluster = load_cluster(EXAMPLE).cluster
    assert {s.forwarding for s in cluster.services} == set(Forwarding)
