"""One suite, two ZooKeepers: the real server (Debian's 3.8, tests/support/zookeeper.py) with
kazoo, and the simulation's ensemble with its kazoo-like client (lvsctl/testbed/sim). What the
election and lease code relies on must behave the same in both: sequential ephemeral names and
owners, the negotiated session timeout (as kazoo logs it), deletes by another session, closed
and expired sessions, the errors, and sync."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import (
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from kazoo.protocol.states import EventType, KazooState

from lvsctl.testbed.sim.clock import Agenda
from lvsctl.testbed.sim.zookeeper import SimKazooClient, SimZooKeeper
from tests.support.zookeeper import ZooKeeperServer

TICK_MS = 100
MAX_SESSION_MS = 4000  # below what the tests request, to see the clamp
ROOT = "/contract"


class Capture(logging.Handler):
    """Keeps the arguments of kazoo's "Session created" lines (negotiated timeout: [2], ms)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.created: list[tuple[Any, ...]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Session created") and isinstance(record.args, tuple):
            self.created.append(record.args)


def capturing_logger(name: str) -> tuple[logging.Logger, Capture]:
    logger = logging.getLogger(f"tests.contract.{name}")
    logger.setLevel(1)
    logger.propagate = False
    capture = Capture()
    logger.handlers = [capture]
    return logger, capture


class Real:
    """A standalone real server; waits poll in real time with generous bounds."""

    name = "real"

    def __init__(self, server: ZooKeeperServer) -> None:
        self.server = server
        self.clients: list[Any] = []

    def client(self, timeout: float = 2.0, logger: logging.Logger | None = None,
               client_id: tuple[int, bytes] | None = None) -> Any:
        client = KazooClient(hosts=self.server.hosts, timeout=timeout, logger=logger,
                             client_id=client_id)
        client.start(30)
        self.clients.append(client)
        return client

    def get(self, result: Any) -> Any:
        return result.get(timeout=30)

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            assert time.monotonic() < deadline, f"never: {what}"
            time.sleep(0.02)

    def close(self) -> None:
        for client in self.clients:
            client.stop()
            client.close()


class _Host:
    name = "contract"

    def run(self, fn: Callable[[], None]) -> None:
        fn()


class Sim:
    """The simulated ensemble as a standalone server; waits run simulated time."""

    name = "sim"

    def __init__(self) -> None:
        self.zk = SimZooKeeper(Agenda(), random.Random(5), servers=1, tick=TICK_MS / 1000,
                               max_session=MAX_SESSION_MS / 1000)

    def client(self, timeout: float = 2.0, logger: logging.Logger | None = None,
               client_id: tuple[int, bytes] | None = None) -> Any:
        client = SimKazooClient(self.zk, _Host(), timeout=timeout, logger=logger,
                                drive=self.zk.run_until, client_id=client_id)
        client.start()
        return client

    def get(self, result: Any) -> Any:
        return result.get()

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        try:
            self.zk.run_until(ready)
        except TimeoutError:
            pytest.fail(f"never: {what}")

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def real_server() -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer(tick_ms=TICK_MS, max_session_ms=MAX_SESSION_MS)
    try:
        server.start()
        yield server
    finally:
        print(f"--- ZooKeeper log ---\n{server.log_tail()}")
        server.close()


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.zookeeper), "sim"])
def zk(request: pytest.FixtureRequest) -> Iterator[Real | Sim]:
    if request.param == "real":
        backend: Real | Sim = Real(request.getfixturevalue("real_server"))
    else:
        backend = Sim()
    try:
        yield backend
    finally:
        backend.close()


def fresh_root(zk: Real | Sim, client: Any) -> str:
    """A root of its own for each test (the real server is shared by the module)."""
    path = f"{ROOT}/{random.Random().getrandbits(40):x}"
    zk.get(client.ensure_path_async(path))
    return path


def test_sequential_ephemeral_names_count_up_and_name_their_owner(zk: Real | Sim) -> None:
    client = zk.client()
    root = fresh_root(zk, client)
    first = zk.get(client.create_async(f"{root}/a__n_", b"x", ephemeral=True, sequence=True))
    second = zk.get(client.create_async(f"{root}/b__n_", b"y", ephemeral=True, sequence=True))
    assert first == f"{root}/a__n_0000000000"
    assert second == f"{root}/b__n_0000000001"  # the parent's counter, whatever the prefix
    assert sorted(zk.get(client.get_children_async(root))) == ["a__n_0000000000",
                                                               "b__n_0000000001"]
    stat = zk.get(client.exists_async(first))
    assert stat.ephemeralOwner == client.client_id[0]
    assert zk.get(client.exists_async(root)).ephemeralOwner == 0
    data, _ = zk.get(client.get_async(second))
    assert data == b"y"
    zk.get(client.delete_async(first))
    third = zk.get(client.create_async(f"{root}/a__n_", b"", ephemeral=True, sequence=True))
    assert third == f"{root}/a__n_0000000002"  # creates count, deletes do not


@pytest.mark.parametrize(("requested", "granted_ms"), [(10.0, MAX_SESSION_MS),
                                                      (0.05, 2 * TICK_MS), (1.5, 1500)])
def test_the_session_timeout_is_negotiated_into_the_servers_bounds(
        zk: Real | Sim, requested: float, granted_ms: int) -> None:
    logger, capture = capturing_logger(f"{zk.name}-{requested}")
    client = zk.client(timeout=requested, logger=logger)
    assert capture.created, "no 'Session created' line logged"
    session_id, _passwd, negotiated = capture.created[-1][:3]
    assert session_id == client.client_id[0]
    assert int(negotiated) == granted_ms


def test_another_session_may_delete_our_ephemeral_and_our_watch_fires(zk: Real | Sim) -> None:
    owner, operator = zk.client(), zk.client()
    root = fresh_root(zk, owner)
    node = zk.get(owner.create_async(f"{root}/x__n_", b"", ephemeral=True, sequence=True))
    events: list[Any] = []
    assert zk.get(owner.exists_async(node, watch=events.append)) is not None
    zk.get(operator.delete_async(node))
    zk.wait(lambda: bool(events), "the owner's watch fired")
    assert events[0].type == EventType.DELETED
    assert zk.get(owner.exists_async(node)) is None


def test_a_closed_session_takes_its_ephemerals(zk: Real | Sim) -> None:
    owner, other = zk.client(), zk.client()
    root = fresh_root(zk, other)
    node = zk.get(owner.create_async(f"{root}/x__n_", b"", ephemeral=True, sequence=True))
    events: list[Any] = []
    zk.get(other.exists_async(node, watch=events.append))
    owner.stop()
    zk.wait(lambda: bool(events), "the other's watch fired")
    assert events[0].type == EventType.DELETED
    assert zk.get(other.exists_async(node)) is None


def test_a_session_ended_elsewhere_is_lost_and_replaced(zk: Real | Sim) -> None:
    client = zk.client()
    root = fresh_root(zk, client)
    states: list[str] = []
    client.add_listener(states.append)
    old_id = client.client_id
    node = zk.get(client.create_async(f"{root}/x__n_", b"", ephemeral=True, sequence=True))
    # kazoo's own test harness expires a session this way: a second client on it closes it.
    twin = zk.client(client_id=old_id)
    twin.stop()
    zk.wait(lambda: KazooState.LOST in states and client.connected
            and client.client_id[0] != old_id[0], "lost, then connected on a new session")
    assert zk.get(client.exists_async(node)) is None


def test_errors_are_kazoos(zk: Real | Sim) -> None:
    client = zk.client()
    root = fresh_root(zk, client)
    with pytest.raises(NoNodeError):
        zk.get(client.delete_async(f"{root}/missing"))
    with pytest.raises(NoNodeError):
        zk.get(client.create_async(f"{root}/missing/child", b""))
    zk.get(client.create_async(f"{root}/p", b""))
    with pytest.raises(NodeExistsError):
        zk.get(client.create_async(f"{root}/p", b""))
    zk.get(client.create_async(f"{root}/p/c", b""))
    with pytest.raises(NotEmptyError):
        zk.get(client.delete_async(f"{root}/p"))
    eph = zk.get(client.create_async(f"{root}/e", b"", ephemeral=True))
    with pytest.raises(NoChildrenForEphemeralsError):
        zk.get(client.create_async(f"{eph}/c", b""))
    with pytest.raises(NoNodeError):
        zk.get(client.get_children_async(f"{root}/missing"))


def test_sync_then_read_is_answered_in_order_with_the_latest(zk: Real | Sim) -> None:
    writer, reader = zk.client(), zk.client()
    root = fresh_root(zk, writer)
    zk.get(writer.create_async(f"{root}/n", b"1"))
    synced = reader.sync_async(root)
    stat = reader.exists_async(f"{root}/n")
    assert zk.get(synced) == root
    assert zk.get(stat) is not None
    assert synced.ready()
