"""The election against a real ZooKeeper, in one process: epochs, queueing, stepdown, loss."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kazoo.client import KazooClient

from lvsctl.director.election import Election, State, Timing, Transition

pytestmark = pytest.mark.zookeeper


async def until(predicate, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.01)


def test_two_candidates_one_leads_stepdown_moves_it_and_epochs_grow(zookeeper_module):  # type: ignore[no-untyped-def]
    path = f"/t-{uuid.uuid4().hex[:8]}/election"

    async def run() -> None:
        clients = [KazooClient(hosts=zookeeper_module.hosts, timeout=2.0) for _ in range(2)]
        for c in clients:
            await asyncio.to_thread(c.start, 10)
        seen: dict[str, list[Transition]] = {"lb1": [], "lb2": []}
        e1 = Election(clients[0], path, "lb1", Timing(2.0), on_transition=seen["lb1"].append)
        await e1.start()
        await until(lambda: e1.state is State.ACTIVE)
        e2 = Election(clients[1], path, "lb2", Timing(2.0), on_transition=seen["lb2"].append)
        await e2.start()
        await until(lambda: e2.state is State.STANDBY)
        assert e2.epoch > e1.epoch
        # A confirmed leader may hold the VIPs; the standby never.
        await until(lambda: e1.permission() == "zk")
        assert e2.permission() is None

        await e1.stepdown()
        await until(lambda: e2.state is State.ACTIVE)
        await until(lambda: e1.state is State.STANDBY)
        assert e1.epoch > e2.epoch  # re-queued with a later sequence number
        assert [t.state for t in seen["lb1"]] == [
            State.ACTIVE, State.CANDIDATE, State.STANDBY]
        assert [t.state for t in seen["lb2"]] == [State.STANDBY, State.ACTIVE]

        # lb2's session closes (its ephemeral znode goes with it): lb1 leads again.
        await asyncio.to_thread(clients[1].stop)
        await until(lambda: e1.state is State.ACTIVE, 15)
        assert e1.epoch > e2.epoch

        await e1.stop()
        await e2.stop()
        for c in clients:
            await asyncio.to_thread(c.stop)
            c.close()

    asyncio.run(run())


def test_lease_runs_out_without_round_trips_and_fences(zookeeper_module):  # type: ignore[no-untyped-def]
    path = f"/t-{uuid.uuid4().hex[:8]}/election"

    async def run() -> None:
        client = KazooClient(hosts=zookeeper_module.hosts, timeout=2.0)
        await asyncio.to_thread(client.start, 10)
        e = Election(client, path, "lb1", Timing(2.0))
        await e.start()
        await until(lambda: e.permission() == "zk")
        zookeeper_module.pause()  # the server freezes: round trips stop coming back
        try:
            await until(lambda: e.permission() is None and e.state is not State.ACTIVE, 5)
            assert e.state in (State.FENCED, State.CANDIDATE)
        finally:
            zookeeper_module.resume()
        await until(lambda: e.state is State.ACTIVE, 15)  # rejoined, and alone: leads again
        await e.stop()
        await asyncio.to_thread(client.stop)
        client.close()

    asyncio.run(run())
