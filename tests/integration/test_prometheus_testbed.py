"""A real Prometheus server (lvsctl.testbed.prometheus) in a network namespace of the test's
own, scraping a small aiohttp server that serves the director's collector there: the series
arrive, follow the director's state, and every dashboard query and alert expression is
answered by the real query engine."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from lvsctl.director.metrics import BuildInfo, MetricsSnapshot, ScrapeCache
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.prometheus import PrometheusClient, PrometheusServer, Series, synthetic_snapshot
from tests.integration.test_prometheus_rules import dashboard_exprs, rule_exprs, substituted
from tests.support.netns import Lab

pytestmark = pytest.mark.netns

PROMETHEUS_PORT = 9090  # inside a namespace of our own: nobody else can hold it
WAIT = 120.0  # generous: the machine is shared and Prometheus scrapes every second


def listening_socket(netns: str) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (a free port) inside ``netns``."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        return sock

    return in_netns(netns, make)


async def wait_for(client: PrometheusClient, expr: str,
                   done: Callable[[list[Series]], bool]) -> list[Series]:
    """Query ``expr`` until ``done(result)``; fails with the last result after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    result: list[Series] = []
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(client.query, expr)
        if done(result):
            return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"{expr}: still {result} after {WAIT:.0f} s")


def test_prometheus_in_a_namespace_scrapes_the_collector(tmp_path: Path) -> None:
    lab = Lab()
    server: PrometheusServer | None = None
    try:
        ns = lab.netns("prom")
        sock = listening_socket(ns.name)
        port = sock.getsockname()[1]
        state = {"snapshot": synthetic_snapshot(2, 3)}

        def provider() -> MetricsSnapshot:
            return state["snapshot"]

        cache = ScrapeCache(provider, BuildInfo("0.1.0", "3.11"), max_age=0.0)

        async def metrics(_: web.Request) -> web.Response:
            body, content_type = await cache.scrape()
            return web.Response(body=body, headers={"Content-Type": content_type})

        server = PrometheusServer(tmp_path / "prometheus", f"127.0.0.1:{PROMETHEUS_PORT}",
                                  [f"127.0.0.1:{port}"], netns=ns.name)

        async def main(server: PrometheusServer) -> None:
            app = web.Application()
            app.add_routes([web.get("/metrics", metrics)])
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            try:
                server.start()
                await asyncio.to_thread(server.wait_ready, WAIT)
                client = server.client()
                up = await wait_for(client, 'up{job="lvsctl"}',
                                    lambda r: len(r) == 1 and r[0].value == 1)
                assert up[0].labels["instance"] == f"127.0.0.1:{port}"
                (epoch,) = await wait_for(client, "lvsctl_director_epoch", lambda r: len(r) == 1)
                assert epoch.value == 7
                active = await wait_for(client, 'lvsctl_director_state{state="ACTIVE"}',
                                        lambda r: len(r) == 1)
                assert active[0].value == 1

                # The director steps down: the next scrapes carry the new state.
                snap = state["snapshot"]
                state["snapshot"] = replace(snap, record=replace(snap.record, role="CANDIDATE",
                                                                 epoch=8))
                await wait_for(client, 'lvsctl_director_state{state="ACTIVE"} == 0',
                               lambda r: len(r) == 1)
                (epoch,) = await wait_for(client, "lvsctl_director_epoch",
                                          lambda r: len(r) == 1 and r[0].value == 8)

                down = await asyncio.to_thread(
                    client.query, 'lvsctl_realserver_health{state="down"} == 1')
                assert sorted((s.labels["service"], s.labels["realserver"]) for s in down) == [
                    ("svc0", "rs1"), ("svc1", "rs1")]
                # Wait for enough samples that rate() over 1m has two points.
                await wait_for(client, "count_over_time(lvsctl_director_epoch[1m]) >= 3",
                               lambda r: len(r) == 1)
                for expr in [*dashboard_exprs(), *rule_exprs()]:
                    if expr.startswith("label_values("):
                        continue
                    await asyncio.to_thread(client.query, substituted(expr))  # raises on error
                bytes_in = await asyncio.to_thread(
                    client.query, 'rate(lvsctl_service_bytes_total{direction="in"}[1m])')
                assert len(bytes_in) == 2
                targets = await asyncio.to_thread(client.targets)
                assert [t["health"] for t in targets] == ["up"], targets
            finally:
                await runner.cleanup()

        asyncio.run(main(server))
    finally:
        if server is not None:
            server.stop()
        lab.close()
