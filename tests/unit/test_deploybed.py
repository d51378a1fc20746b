"""The deploy test bed's pure parts: its cluster file passes lvsctl's own validation, the
real-server setup renders from it, the bumped build's version, the unit's limits as read, the
agent's request handling, the controller's keys and inventory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.templates.render import render_shell, setup_for
from lvsctl.testbed.deploybed import (
    DIRECTORS,
    REALSERVERS,
    SERVICES,
    UNIT_FILE,
    VIP,
    Agent,
    BedError,
    bumped_version,
    cluster_document,
    unit_limits,
)
from lvsctl.testbed.hosts import HostAccess, host_addresses

ZK = ["192.0.2.1:2181", "192.0.2.1:2182", "192.0.2.1:2183"]


def test_the_cluster_file_is_valid_and_names_the_bed() -> None:
    loaded = parse_cluster(json.dumps(cluster_document(ZK)), "bed.yaml")
    cluster = loaded.cluster
    assert [d.name for d in cluster.directors] == list(DIRECTORS)
    assert sorted(s.name for s in cluster.services) == sorted(SERVICES)
    for service in cluster.services:
        assert {rs.name for rs in service.realservers} == set(REALSERVERS)
    assert loaded.warnings == ()


def test_each_real_server_renders_a_direct_routing_setup_with_the_vip() -> None:
    cluster = parse_cluster(json.dumps(cluster_document(ZK)), "bed.yaml").cluster
    for name in REALSERVERS:
        (script,) = render_shell(setup_for(cluster, name)).values()
        assert f"{VIP}/32" in script and "arp_ignore" in script


@pytest.mark.parametrize(("version", "bumped"), [("0.1.0", "0.1.0.post1"), ("2", "2.post1")])
def test_the_upgrade_build_is_a_post_release(version: str, bumped: str) -> None:
    assert bumped_version(version) == bumped


@pytest.mark.parametrize("version", ["0.1.0.post1", "1.0rc1", "0.1.0+local", ""])
def test_a_version_that_is_not_a_plain_release_is_refused(version: str) -> None:
    with pytest.raises(BedError, match="expected a plain release"):
        bumped_version(version)


def test_unit_limits_reads_the_settings_systemd_would_apply() -> None:
    text = ("[Service]\nLimitNOFILE=65536\n# MemoryMax=1G\nMemoryMax = 512M\nTasksMax=64\n"
            "LimitNOFILE=4096:65536\nMemoryDenyWriteExecute=no\n")
    assert unit_limits(text) == {"LimitNOFILE": "4096:65536", "MemoryMax": "512M",
                                 "TasksMax": "64"}


def test_the_shipped_unit_is_where_the_bed_reads_it() -> None:
    assert UNIT_FILE.is_file() and Path(UNIT_FILE).name == "lvsctl-director.service"
    assert isinstance(unit_limits(UNIT_FILE.read_text()), dict)


def test_the_directors_addresses_are_those_in_the_cluster_file() -> None:
    cluster = parse_cluster(json.dumps(cluster_document(ZK)), "bed.yaml").cluster
    assert host_addresses(DIRECTORS) == {"lb1": "192.0.2.2", "lb2": "192.0.2.3"}
    assert {d.name: d.address for d in cluster.directors} == host_addresses(DIRECTORS)


@pytest.mark.parametrize(("line", "error"), [
    (b'{"op": "rm", "path": "/"}', "no operation 'rm'"),
    (b'{"op": "__init__"}', "no operation '__init__'"),
    (b"not json", "JSONDecodeError"),
    (b'{"path": "/"}', "KeyError"),
    (b'{"op": "now", "extra": 1}', "TypeError"),
])
def test_the_agent_refuses_what_it_does_not_offer(line: bytes, error: str) -> None:
    reply = json.loads(Agent(hosts=None, observer=None).answer(line))  # type: ignore[arg-type]
    assert reply["ok"] is False and error in reply["error"]
    assert isinstance(reply["now"], float)


def test_the_agent_answers_with_its_clock_and_stops_when_told() -> None:
    agent = Agent(hosts=None, observer=None)  # type: ignore[arg-type]
    before = time.time()
    reply = json.loads(agent.answer(b'{"op": "now"}'))
    assert reply["ok"] is True and before <= reply["now"] <= time.time()
    assert not agent.stopped.is_set()
    assert json.loads(agent.answer(b'{"op": "stop"}'))["ok"] is True
    assert agent.stopped.is_set()


def test_the_controller_knows_each_host_by_the_key_it_made(tmp_path: Path) -> None:
    access = HostAccess(tmp_path / "access", DIRECTORS, progress=lambda _: None)
    access.generate()
    known = access.known_hosts.read_text().splitlines()
    assert len(known) == len(DIRECTORS)
    for line, (name, address) in zip(known, host_addresses(DIRECTORS).items(), strict=True):
        public = Path(f"{access.host_key(name)}.pub").read_text().split()[:2]
        assert line.split() == [address, *public]
    assert access.authorized_keys.read_text() == Path(f"{access.key}.pub").read_text()
    inventory = json.loads(access.inventory(tmp_path / "inv.json", group_vars={"x": 1})
                           .read_text())
    group = inventory["all"]["children"]["lvsctl_directors"]
    assert group["hosts"] == {name: {"ansible_host": address}
                              for name, address in host_addresses(DIRECTORS).items()}
    assert group["vars"]["x"] == 1
    assert f"UserKnownHostsFile={access.known_hosts}" in group["vars"]["ansible_ssh_common_args"]
