"""The worker fails safe, not dead (in-process, as tests/integration/test_worker.py composes
it): a config it cannot apply is refused like an invalid one and never cached, a config for
another cluster is refused, a failing part is logged and goes on, and an API it cannot start
is a fatal refusal that publishes no API address."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lvsctl.core.records import MAX_REASON_CHARS
from lvsctl.director.channel import EXIT_FATAL, LeaderConfig, WorkerFatal
from lvsctl.director.dataplane import Dataplane
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.integration.test_worker import (
    CLUSTER,
    MemoryStore,
    config_bytes,
    start_worker,
    until,
)

# More VIPs than the keeper takes (the channel's MAX_VIPS): validation refuses it too.
TOO_MANY_VIPS = CLUSTER.replace(
    "vips:\n", "vips:\n" + "".join(f"  - {{address: 198.51.100.{i}, interface: eth0}}\n"
                                   for i in range(1, 255))
    + "".join(f"  - {{address: 203.0.113.{i}, interface: eth0}}\n" for i in range(1, 10)))
OTHER_CLUSTER = CLUSTER.replace("cluster: t\n", "cluster: other\n")


@dataclass
class PushingStore(MemoryStore):
    """MemoryStore whose config can change while the worker watches it."""

    on_data: Callable[[bytes | None], None] | None = None

    async def watch_config(self, on_data: Callable[[bytes | None], None]) -> None:
        self.on_data = on_data
        on_data(self.config)

    def deliver(self, data: bytes) -> None:
        assert self.on_data is not None
        self.config = data
        self.on_data(data)


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", "") == event]


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger("lvsctl.director")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def cache(tmp: Path) -> Path:
    return tmp / "state" / "t.config.json"


@pytest.mark.parametrize(("text", "why"), [
    (TOO_MANY_VIPS, "cluster.yaml@v2: vips: takes at most 256 item(s)"),
    (OTHER_CLUSTER, "cluster: the file is for cluster 'other', this director belongs to 't' "
                    "(the node file's cluster)"),
])
def test_a_config_the_director_cannot_run_is_refused_and_never_cached(
        tmp_path: Path, text: str, why: str) -> None:
    store = PushingStore(True, config_bytes(CLUSTER, 1))

    async def run() -> dict[str, Any]:
        async with Checkers() as checkers:
            running = await start_worker(tmp_path, store, checkers)
            await until(lambda: running.worker.config_version == "cluster.yaml@v1", "v1")
            await until(cache(tmp_path).exists, "v1 cached")
            store.deliver(config_bytes(text, 2))
            await until(lambda: bool(running.worker.config_error), "the refusal")
            status = running.worker.status()
            assert await running.stop() == 0
            return status

    status = asyncio.run(run())
    assert status["config"] == {"version": "cluster.yaml@v1", "error": why}
    assert cache(tmp_path).read_bytes() == config_bytes(CLUSTER, 1)
    refused = [r for r in status["transitions"] if r.get("event") == "config_rejected"]
    assert [r["reason"] for r in refused] == [why]


def test_a_refusal_reason_is_clipped_to_the_record_cap(tmp_path: Path) -> None:
    # Thousands of issues: each real server's port out of range.
    bad = CLUSTER.replace("      - {name: web1, address: 127.0.0.1}\n", "".join(
        f"      - {{name: w{i}, address: 127.0.0.{i % 250 + 1}, port: 70000}}\n"
        for i in range(3000)))
    store = PushingStore(True, config_bytes(bad, 1))

    async def run() -> dict[str, Any]:
        async with Checkers() as checkers:
            running = await start_worker(tmp_path, store, checkers)
            await until(lambda: bool(running.worker.config_error), "the refusal")
            status = running.worker.status()
            running.worker.stopping.set()
            return status

    status = asyncio.run(run())
    error = status["config"]["error"]
    assert MAX_REASON_CHARS < len(error) <= MAX_REASON_CHARS + 40
    assert error.endswith("more characters)")
    assert not cache(tmp_path).exists()


class FailingOnce(Dataplane):
    """The real dataplane, whose first reconcile pass fails with an unforeseen error."""

    failures = 0

    def reconcile(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not self.failures:
            self.failures += 1
            raise RuntimeError("a pass nobody foresaw")
        return super().reconcile(*args, **kwargs)


def test_a_reconcile_pass_that_raises_is_logged_and_the_next_pass_runs(
        tmp_path: Path, events: Events) -> None:
    store = PushingStore(True, config_bytes(CLUSTER, 1))
    dataplane = FailingOnce(FakeIpvs(tmp_path / "ipvs.json"))

    async def run() -> Mapping[str, Any]:
        async with Checkers() as checkers:
            running = await start_worker(tmp_path, store, checkers)
            running.worker.dataplane = dataplane
            running.worker._reconcile_at = 0.0
            await until(lambda: running.worker.last_reconcile.get("observed") is True,
                        "a pass after the failed one", timeout=30)
            status = running.worker.status()
            assert await running.stop() == 0
            return status

    status = asyncio.run(run())
    assert dataplane.failures == 1
    failed = events.of("worker_part_failed")
    assert [(r.part, r.error) for r in failed] == [  # type: ignore[attr-defined]
        ("reconcile pass", "RuntimeError: a pass nobody foresaw")]
    assert status["last_reconcile"]["services"] == 1


def test_an_api_that_cannot_listen_is_fatal_and_no_address_is_published(
        tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    store = PushingStore(True, config_bytes(CLUSTER, 1))

    async def run() -> tuple[int, list[Any]]:
        async with Checkers() as checkers:
            running = await start_worker(tmp_path, store, checkers, api_port=port)
            code = await asyncio.wait_for(running.task, 30)
            await asyncio.sleep(0.2)  # the keeper's end reads what was sent before the exit
            return code, running.keeper.got

    try:
        code, got = asyncio.run(run())
    finally:
        taken.close()
    why = f"api.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert code == EXIT_FATAL
    assert [m for m in got if isinstance(m, WorkerFatal)] == [WorkerFatal(why)]
    assert any(isinstance(m, LeaderConfig) for m in got)
    assert store.persisted and all(status["api"] == "" for _, status in store.persisted)
