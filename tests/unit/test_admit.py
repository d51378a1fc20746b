"""director/admit.py: a validated file is admitted only if every step after validation works
on it; each refusal is one line, clipped to the records' reason cap."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import Cluster
from lvsctl.core.records import MAX_REASON_CHARS
from lvsctl.director.admit import Refused, admit
from lvsctl.director.channel import LeaderConfig, VipSpec
from lvsctl.director.worker import leader_config
from tests.integration.test_worker import CLUSTER

LOADED = parse_cluster(CLUSTER, "cluster.yaml")


def test_a_file_for_this_director_is_admitted_with_its_leadership_settings() -> None:
    config = admit(LOADED, cluster="t", director="lb1", leader_config=leader_config)
    assert config == leader_config(LOADED.cluster, "lb1", LOADED.source)


@pytest.mark.parametrize(("cluster", "director", "why"), [
    ("prod", "lb1", "cluster: the file is for cluster 't', this director belongs to 'prod'"),
    ("t", "lb9", "director lb9 is not one of the cluster's directors"),
])
def test_another_clusters_or_directors_file_is_refused(cluster: str, director: str,
                                                       why: str) -> None:
    with pytest.raises(Refused) as info:
        admit(LOADED, cluster=cluster, director=director, leader_config=leader_config)
    assert info.value.lines()[0].startswith(why)


def test_settings_the_keeper_would_refuse_are_refused() -> None:
    def colon(cluster: Cluster, me: str, version: str) -> LeaderConfig:
        made = leader_config(cluster, me, version)
        return replace(made, vips=(VipSpec("192.0.2.10", "eth0:1"),))

    with pytest.raises(Refused) as info:
        admit(LOADED, cluster="t", director="lb1", leader_config=colon)
    assert info.value.lines() == [
        "the keeper would refuse this file's VIP set: config: vips[].interface: "
        "expected an interface name, got 'eth0:1'"]


def test_an_unforeseen_failure_is_a_clipped_one_line_refusal() -> None:
    def broken(cluster: Cluster, me: str, version: str) -> LeaderConfig:
        raise ValueError("x" * 10_000)

    with pytest.raises(Refused) as info:
        admit(LOADED, cluster="t", director="lb1", leader_config=broken)
    (line,) = info.value.lines()
    assert line.startswith("cannot apply: ValueError: xxx")
    assert len(line) <= MAX_REASON_CHARS + 40
