"""The worker and its maintenance overrides, in-process (the parts of tests/integration/
test_worker.py): a drain from the store holds a real server at weight 0, a restart during a
ZooKeeper outage keeps it (the local cache), data that is not an override record is refused
and the last good overrides stay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lvsctl.core.model import DestKey, Protocol, ServiceKey
from lvsctl.core.records import Override, Overrides
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.integration.test_worker import CLUSTER, MemoryStore, config_bytes, start_worker, until

# web1 unchecked: only the drain decides its weight (nothing listens on its port here).
UNCHECKED = "\n".join(line for line in CLUSTER.splitlines() if "check:" not in line) + "\n"
WWW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
WEB1 = DestKey("127.0.0.1", 80)


def web1_weight(tmp: Path) -> int | None:
    service = FakeIpvs(tmp / "ipvs.json").observe().get(WWW)
    dest = service.dests.get(WEB1) if service else None
    return None if dest is None else dest.weight


def test_a_drain_holds_across_a_restart_without_zookeeper(tmp_path: Path) -> None:
    drained = Overrides((Override("web1", None, "disk swap"),)).to_bytes()

    async def run() -> dict[str, Any]:
        async with Checkers() as checkers:
            store = MemoryStore(True, config_bytes(UNCHECKED, 3), overrides=drained)
            first = await start_worker(tmp_path, store, checkers)
            await until(lambda: web1_weight(tmp_path) == 0, "web1 at weight 0")
            first.worker.on_overrides_data(b"not json")  # refused: the drain stays
            assert "not JSON" in first.worker.status()["overrides"]["error"]
            first.worker.reconcile_if_due()
            assert web1_weight(tmp_path) == 0
            assert await first.stop() == 0
            # Back with ZooKeeper unreachable: the cached config and overrides are all there is.
            FakeIpvs(tmp_path / "ipvs.json").clear()
            second = await start_worker(tmp_path, MemoryStore(False), checkers)
            await until(lambda: web1_weight(tmp_path) == 0, "web1 at weight 0 again")
            status = second.worker.status()
            # The drain ends when the store says so.
            second.worker.on_overrides_data(None)
            await until(lambda: web1_weight(tmp_path) == 1, "web1 back at weight 1")
            assert await second.stop() == 0
            return status

    status = asyncio.run(run())
    row = status["services"][0]["realservers"][0]
    assert row["override"]["reason"] == "disk swap"
    assert [o["realserver"] for o in status["overrides"]["items"]] == ["web1"]
