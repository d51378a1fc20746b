"""The node file: defaults, and errors with key paths."""

from __future__ import annotations

import pytest

from lvsctl.core.errors import ConfigError
from lvsctl.core.node import load_node, parse_node
from tests.conftest import ROOT


def test_example_node_file() -> None:
    node = load_node(ROOT / "deploy" / "examples" / "node.yaml")
    assert (node.cluster, node.director, node.cluster_path) == ("web", "lb1", "/lvsctl/web")
    assert (node.api.host, node.api.port, node.api.drills) == ("127.0.0.1", 9180, False)
    assert node.zookeeper.session_timeout == 4.0 and node.ipvs == "kernel"


def test_defaults() -> None:
    node = parse_node(
        "cluster: c\ndirector: lb1\nzookeeper: {hosts: ['127.0.0.1:2181']}\n"
        "peer: {secret: /s}\n", "n.yaml")
    assert (node.api.host, node.api.port, node.api.token_file) == ("127.0.0.1", 9180, None)
    assert node.state_dir == "/var/lib/lvsctl" and node.log_format == "json"


@pytest.mark.parametrize(("text", "line"), [
    ("cluster: c\ndirector: lb1\nzookeeper: {hosts: ['127.0.0.1:2181']}\npeer: {}\n",
     "n.yaml: peer.secret: required key is missing"),
    ("cluster: c\ndirector: lb1\nzookeeper: {hosts: ['127.0.0.1:2181']}\npeer: {secret: /s}\n"
     "ipvs: fake:/tmp/t.json\n",
     "n.yaml: ipvs: 'fake:/tmp/t.json' is not in the expected form (^kernel$)"),
    ("cluster: c\ndirecter: lb1\nzookeeper: {hosts: ['127.0.0.1:2181']}\npeer: {secret: /s}\n",
     "n.yaml: director: required key is missing"),
])
def test_errors(text: str, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_node(text, "n.yaml")
    assert line in info.value.lines()
