"""The worker in-process, composed from its parts: the real dataplane on the file-backed fake
IPVS (held to the kernel by tests/contract), the real health checks and HTTP API on loopback,
the real channel; ZooKeeper replaced by an in-memory store (the real one runs in the pair
tests). The keeper's end of the channel is played by the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.node import Api, Node
from lvsctl.core.zk import ConfigVersion
from lvsctl.director.api import start_api
from lvsctl.director.channel import (
    Channel,
    HandedOver,
    Handover,
    KeeperState,
    LeaderConfig,
    LeaderRecord,
    StepdownRequest,
    VipSpec,
)
from lvsctl.director.dataplane import Dataplane
from lvsctl.director.reconcile import desired_table, plan
from lvsctl.director.worker import Worker
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.healthcheck.scheduler import Scheduler
from lvsctl.testbed.fake_ipvs import FakeIpvs

CLUSTER = """\
cluster: t
zookeeper: {hosts: ['127.0.0.1:2181']}
directors:
  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2, port: 7001}}
  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3, port: 7002}}
vips:
  - {address: 192.0.2.10, interface: eth0}
announce: {count: 4, interval: 50ms}
services:
  - name: www
    vip: 192.0.2.10
    port: 80
    forwarding: dr
    check: {type: tcp, interval: 300ms, timeout: 200ms, rise: 1, fall: 1, warmup: 0}
    realservers:
      - {name: web1, address: 127.0.0.1}
"""
TOKEN = "test-token-42"


def config_bytes(text: str, version: int) -> bytes:
    return ConfigVersion(version, hashlib.sha256(text.encode()).hexdigest(), "tests",
                         "2026-01-01T00:00:00Z", "cluster.yaml", text).to_bytes()


@dataclass
class MemoryStore:
    """The worker's store without ZooKeeper: ``connected`` False is an outage."""

    connected: bool
    config: bytes | None = None
    overrides: bytes | None = None
    persisted: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = field(default_factory=list)

    async def watch_config(self, on_data: Callable[[bytes | None], None]) -> None:
        while not self.connected:
            await asyncio.sleep(0.05)
        on_data(self.config)

    async def watch_overrides(self, on_data: Callable[[bytes | None], None]) -> None:
        on_data(self.overrides)

    def persist(self, entry: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        self.persisted.append((entry, status))

    async def close(self) -> None:
        return None


@dataclass
class Keeper:
    """The keeper's end of the channel, played by the test."""

    got: list[Any] = field(default_factory=list)
    channel: Channel | None = None

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.got if isinstance(m, kind)]


def node(tmp: Path, *, drills: bool, port: int = 0) -> Node:
    token = tmp / "api.token"
    token.write_text(TOKEN + "\n")
    return Node(cluster="t", director="lb1",
                zookeeper=ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 2.5, None),
                peer_secret_file=str(tmp / "peer.secret"),
                api=Api("127.0.0.1", port, str(token), drills), ipvs="kernel",
                state_dir=str(tmp / "state"), log_format="json", source=str(tmp / "node.yaml"))


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Running:
    worker: Worker
    keeper: Keeper
    task: asyncio.Task[int]
    api_port: int | None = None

    async def stop(self) -> int:
        assert self.keeper.channel is not None
        self.keeper.channel.close()  # the keeper is gone: the worker must exit
        return await asyncio.wait_for(self.task, 20)


async def start_worker(tmp: Path, store: MemoryStore, checkers: Checkers, *, drills: bool = False,
                       drill_pid: int = 0, api: bool = False,
                       api_port: int | None = None) -> Running:
    """The worker on ``store``; with ``api`` its API on a free port (waited for), with
    ``api_port`` on that port (not waited for)."""
    keeper = Keeper()
    ours, theirs = socket.socketpair()
    keeper.channel = Channel(ours, on_message=keeper.got.append, on_close=lambda why: None)
    runners: list[Any] = []

    async def api_starter(w: Worker) -> Any:
        runner = await start_api(w)
        runners.append(runner)
        return runner

    worker = Worker(
        node(tmp, drills=drills, port=api_port or 0), keeper_pid=drill_pid, store=store,
        dataplane=Dataplane(FakeIpvs(tmp / "ipvs.json")),
        make_health=lambda cluster, on_change: Scheduler(cluster, checkers, on_change=on_change),
        start_api=api_starter if api or api_port else None)
    worker.attach(Channel(theirs, on_message=worker.on_message,
                          on_close=worker.on_channel_closed, on_invalid=worker.on_invalid))
    running = Running(worker, keeper, asyncio.create_task(worker.run()))
    if api:
        await until(lambda: bool(runners), "the API listening")
        running.api_port = runners[0].addresses[0][1]
    return running


def request(port: int, method: str, path: str, token: str | None = TOKEN) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_the_cached_config_serves_a_restart_during_a_zookeeper_outage(tmp_path: Path) -> None:
    async def run() -> tuple[Keeper, dict[str, Any]]:
        async with Checkers() as checkers:
            first = await start_worker(tmp_path, MemoryStore(True, config_bytes(CLUSTER, 7)),
                                       checkers)
            await until(lambda: bool(first.keeper.of(LeaderConfig)), "the first config")
            assert await first.stop() == 0
            # ZooKeeper unreachable from the start: the cache is all there is.
            second = await start_worker(tmp_path, MemoryStore(False), checkers)
            await until(lambda: bool(second.keeper.of(LeaderConfig)), "the cached config")
            await until(lambda: second.worker.last_reconcile.get("observed") is True,
                        "a reconcile pass")
            status = second.worker.status()
            assert await second.stop() == 0
            return second.keeper, status

    keeper, status = asyncio.run(run())
    config = keeper.of(LeaderConfig)[0]
    assert config == LeaderConfig("cluster.yaml@v7", (VipSpec("192.0.2.10", "eth0"),), 4, 0.05,
                                  ("192.0.2.2", 7001), ("192.0.2.3", 7002))
    assert status["config"] == {"version": "cluster.yaml@v7", "error": ""}
    assert status["last_reconcile"]["services"] == 1
    assert {k.port for k in FakeIpvs(tmp_path / "ipvs.json").observe()} == {80}


def test_leadership_moves_the_sync_daemon_and_a_handover_is_answered(tmp_path: Path) -> None:
    table = FakeIpvs(tmp_path / "ipvs.json")

    def sync() -> set[str]:
        return {d.state.label for d in table.sync_daemons()}

    async def run() -> Keeper:
        async with Checkers() as checkers:
            running = await start_worker(tmp_path, MemoryStore(True, config_bytes(CLUSTER, 1)),
                                         checkers)
            assert running.keeper.channel is not None
            await until(lambda: sync() == {"backup"}, "the sync daemon in backup")
            running.keeper.channel.send(KeeperState("ACTIVE", 3, 1.0, True, ("192.0.2.10",), True))
            await until(lambda: sync() == {"master"}, "master while active")
            running.keeper.channel.send(Handover(3))
            await until(lambda: bool(running.keeper.of(HandedOver)), "the handover answered")
            assert sync() == {"backup"}
            # Still ACTIVE by the keeper's last word, but handed over: it stays backup.
            running.keeper.channel.send(KeeperState("ACTIVE", 3, 1.0, True, (), True))
            await asyncio.sleep(0.2)
            assert sync() == {"backup"}
            status = running.worker.status()
            assert (status["role"], status["epoch"], status["vips"]) == ("ACTIVE", 3, [])
            await running.stop()
            return running.keeper

    assert asyncio.run(run()).of(HandedOver) == [HandedOver(3)]


def test_status_metrics_and_stepdown_over_http(tmp_path: Path) -> None:
    async def run() -> list[tuple[int, str]]:
        async with Checkers() as checkers:
            running = await start_worker(tmp_path, MemoryStore(True, config_bytes(CLUSTER, 1)),
                                         checkers, api=True)
            assert running.keeper.channel is not None and running.api_port is not None
            port = running.api_port
            running.keeper.channel.send(LeaderRecord("transition", 5, time.monotonic(),
                                                     time.time(), state="ACTIVE",
                                                     reason="won the election"))
            running.keeper.channel.send(KeeperState(
                "ACTIVE", 5, 1.0, True, ("192.0.2.10",), True,
                lease_until=time.monotonic() + 600, peer_up=True, peer_received=7,
                peer_rejected=(("bad HMAC", 2), ("replayed", 1))))
            await until(lambda: running.worker.leader.role == "ACTIVE", "the state")
            # A probe of web1 (nothing listens on 127.0.0.1:80: refused) and a reconcile pass
            # that added the service and its dest.
            await until(lambda: bool(running.worker.stats.probe_stats())
                        and bool(running.worker.stats.kernel), "a probe and a reconcile pass")
            answers = [await asyncio.to_thread(request, port, "GET", "/status", None),
                       await asyncio.to_thread(request, port, "GET", "/metrics", None),
                       await asyncio.to_thread(request, port, "POST", "/stepdown", "wrong"),
                       await asyncio.to_thread(request, port, "GET", "/", None)]
            stepdown = asyncio.ensure_future(
                asyncio.to_thread(request, port, "POST", "/stepdown"))
            await until(lambda: bool(running.keeper.of(StepdownRequest)), "the request")
            # The keeper steps down: the API answers once the state says so.
            running.keeper.channel.send(KeeperState("CANDIDATE", 5, 2.0, True, (), True))
            answers.append(await stepdown)
            await running.stop()
            return answers

    ((status_code, status), (metrics_code, metrics), (bad_code, _), (page_code, page),
     (code, body)) = asyncio.run(run())
    assert status_code == 200
    data = json.loads(status)
    assert {"role", "epoch", "since", "vips", "config", "services", "last_reconcile", "api",
            "transitions", "zookeeper", "director", "cluster"} <= set(data)
    assert (data["role"], data["epoch"], data["vips"]) == ("ACTIVE", 5, ["192.0.2.10"])
    assert metrics_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("lvsctl_director_state", state="ACTIVE") == 1
    assert value("lvsctl_director_state", state="STANDBY") == 0
    assert value("lvsctl_director_epoch") == 5
    assert value("lvsctl_director_vips_held") == 1
    assert value("lvsctl_director_info", director="lb1", cluster="t") == 1
    assert value("lvsctl_zookeeper_connected") == 1
    assert 500 < value("lvsctl_vip_lease_remaining_seconds") <= 600
    assert value("lvsctl_director_transitions_total", state="ACTIVE",
                 reason="won_election") == 1
    assert value("lvsctl_config_version") == 1
    assert value("lvsctl_config_last_rejected") == 0
    assert value("lvsctl_realserver_health", service="www", realserver="web1",
                 state="down") == 1
    assert value("lvsctl_realserver_weight", service="www", realserver="web1") == 1
    # Down, web1 left the kernel's table (on_failure: remove): no kernel series for it.
    assert ("lvsctl_realserver_effective_weight",
            (("realserver", "web1"), ("service", "www"))) not in samples
    assert value("lvsctl_service_bytes_total", service="www", direction="in") == 0
    assert value("lvsctl_service_connections_total", service="www") == 0
    assert value("lvsctl_reconcile_ops_total", kind="add_service") == 1
    assert value("lvsctl_reconcile_ops_total", kind="add_dest") == 1
    assert value("lvsctl_reconcile_kernel_errors_total") == 0
    assert value("lvsctl_reconcile_duration_seconds_count") >= 1
    assert value("lvsctl_check_probe_duration_seconds_count", target="tcp 127.0.0.1:80") >= 1
    assert value("lvsctl_check_probe_failures_total", target="tcp 127.0.0.1:80",
                 reason="refused") >= 1
    assert value("lvsctl_sync_daemon_state", state="master") == 1
    assert value("lvsctl_peer_link_up") == 1
    assert value("lvsctl_peer_beats_received_total") == 7
    assert value("lvsctl_peer_beats_rejected_total", reason="bad_mac") == 2
    assert value("lvsctl_peer_beats_rejected_total", reason="replayed") == 1
    assert page_code == 200
    assert "lb1" in page and "web1" in page and "api.listen" in page  # the peer's note
    assert bad_code == 401
    assert code == 200 and json.loads(body) == {"stepped_down": True, "epoch": 5}


def test_drill_actions_are_refused_unless_the_node_file_allows_them(tmp_path: Path) -> None:
    # The drills act on the keeper's PID: here a child of the test's own stands in for it.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        async def run(drills: bool) -> list[int]:
            async with Checkers() as checkers:
                running = await start_worker(
                    tmp_path, MemoryStore(True, config_bytes(CLUSTER, 1)), checkers,
                    drills=drills, drill_pid=stand_in.pid, api=True)
                assert running.api_port is not None
                port = running.api_port
                codes = [(await asyncio.to_thread(request, port, "POST", "/crash", None))[0],
                         (await asyncio.to_thread(request, port, "POST", "/freeze?seconds=1"))[0],
                         (await asyncio.to_thread(request, port, "POST", "/crash"))[0]]
                if drills:  # the kill comes a moment after the answer, from the worker's loop
                    await until(lambda: stand_in.poll() is not None, "the crash drill's kill",
                                timeout=30.0)
                await running.stop()
                return codes

        assert asyncio.run(run(drills=False)) == [401, 403, 403]
        assert stand_in.poll() is None  # nothing was stopped or killed
        assert asyncio.run(run(drills=True))[2] == 200
        assert stand_in.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()


def test_a_restarted_worker_adopts_the_table_it_finds_without_a_write(tmp_path: Path) -> None:
    static = CLUSTER.replace(
        "    check: {type: tcp, interval: 300ms, timeout: 200ms, rise: 1, fall: 1, warmup: 0}\n",
        "")  # no check: the desired table does not change with health between the two runs
    table = FakeIpvs(tmp_path / "ipvs.json")
    foreign = parse_cluster(static.replace("192.0.2.10", "198.51.100.1").replace(
        "port: 80", "port: 443"), "foreign.yaml").cluster
    # Not ours: left alone.
    assert set(table.apply_batch(plan(desired_table(foreign, {}), {}, {}, 0.0))) == {0}

    async def run(version: int) -> dict[str, Any]:
        async with Checkers() as checkers:
            running = await start_worker(
                tmp_path, MemoryStore(True, config_bytes(static, version)), checkers)
            await until(lambda: running.worker.last_reconcile.get("observed") is True,
                        "a reconcile pass")
            summary = dict(running.worker.last_reconcile)
            await running.stop()
            return summary

    first = asyncio.run(run(1))
    assert first["applied"] > 0
    table.writes = 0
    second = asyncio.run(run(2))  # a restart: the same file, the table as the first left it
    assert (second["planned"], second["applied"], table.writes) == (0, 0, 0)
    assert {(str(k.address), k.port) for k in table.observe()} == {("192.0.2.10", 80),
                                                                   ("198.51.100.1", 443)}
