"""The ZooKeeper fixtures for tests (the server itself is lvsctl/testbed/zookeeper.py).

Registered for all tests by ``tests/conftest.py``:

- ``zookeeper``: a fresh server per test;
- ``zookeeper_module``: one server shared by a test module (use a unique root per test).

Each listens on an address and port of its own, so a restart keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lvsctl.testbed.zookeeper import ZooKeeperServer, ZooKeeperStartError, connect, free_port

__all__ = ["ZooKeeperServer", "ZooKeeperStartError", "connect", "free_port", "zookeeper",
           "zookeeper_module"]


def _serve() -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer()
    try:
        server.start()
        yield server
    finally:
        # pytest shows teardown output only when the test failed: the log is there to read.
        print(f"--- ZooKeeper log ({server.hosts}) ---\n{server.log_tail()}")
        server.close()


@pytest.fixture
def zookeeper() -> Iterator[ZooKeeperServer]:
    """A fresh standalone ZooKeeper on its own loopback address (tickTime 100 ms)."""
    yield from _serve()


@pytest.fixture(scope="module")
def zookeeper_module() -> Iterator[ZooKeeperServer]:
    """One ZooKeeper for a whole test module; tests keep apart by using their own root."""
    yield from _serve()
