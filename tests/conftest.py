"""Shared fixtures: paths and a minimal valid cluster document to mutate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Shared machines are noisy: a per-example deadline measures the machine, not the code.
settings.register_profile("lvsctl", deadline=None)
settings.load_profile("lvsctl")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "examples" / "cluster.yaml"

MINIMAL: dict[str, Any] = {
    "cluster": "t",
    "zookeeper": {"hosts": ["127.0.0.1:2181"]},
    "directors": [
        {"name": "lb1", "address": "192.0.2.2/24", "interface": "eth0",
         "peer": {"address": "192.0.2.2"}},
        {"name": "lb2", "address": "192.0.2.3/24", "interface": "eth0",
         "peer": {"address": "192.0.2.3"}},
    ],
    "vips": [
        {"address": "192.0.2.10", "interface": "eth0"},
        {"address": "2001:db8::10", "interface": "eth0"},
        {"address": "10.0.1.1", "interface": "eth1", "inside": True, "network": "10.0.1.0/24"},
    ],
    "services": [
        {"name": "www", "vip": "192.0.2.10", "port": 80, "forwarding": "dr",
         "check": {"type": "http", "path": "/health", "interval": 2, "timeout": 1},
         "realservers": [
             {"name": "web1", "address": "192.0.2.21"},
             {"name": "web2", "address": "192.0.2.22", "weight": 5},
         ]},
        {"name": "app", "vip": "192.0.2.10", "port": 8080, "forwarding": "nat",
         "realservers": [{"name": "app1", "address": "10.0.1.31", "port": 9000}]},
    ],
}


@pytest.fixture
def minimal() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL)


@pytest.fixture
def lab():  # type: ignore[no-untyped-def]
    """Network namespaces (and processes in them) that are removed after the test."""
    from lvsctl.testbed.netns import Lab

    made = Lab()
    try:
        yield made
    finally:
        made.close()

pytest_plugins = ["tests.support.zookeeper"]
