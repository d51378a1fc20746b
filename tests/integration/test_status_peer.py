"""The status page's view of the peer director: its /status fetched over real loopback HTTP,
bounded in time and size, and checked as the peer's record; each failure is a note."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from lvsctl.core.config import parse_cluster
from lvsctl.core.records import DirectorRecord
from lvsctl.director.exporter import fetch_peer, peer_api_url, status_page

PEER = DirectorRecord(director="lb2", cluster="t", role="STANDBY", epoch=9, since=1.7e9,
                      zookeeper="connected")
CLUSTER = parse_cluster("""\
cluster: t
zookeeper: {hosts: ['127.0.0.1:2181']}
directors:
  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2, port: 7001}}
  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3, port: 7002}}
vips: [{address: 192.0.2.10, interface: eth0}]
services:
  - {name: www, vip: 192.0.2.10, port: 80, forwarding: dr,
     realservers: [{name: web1, address: 192.0.2.21}]}
""", "cluster.yaml").cluster


@asynccontextmanager
async def peer_api(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes([web.get("/status", handler)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/status"
    finally:
        await runner.cleanup()


async def answer(_: web.Request) -> web.Response:
    return web.json_response(PEER.to_json())


def test_the_peers_record_is_read_and_shown() -> None:
    async def run() -> tuple[DirectorRecord | None, str, str]:
        async with peer_api(answer) as url:
            record, note = await fetch_peer("lb2", url, "t")
            own = DirectorRecord(director="lb1", cluster="t", role="ACTIVE", epoch=10)
            page = await status_page(own, ("lb2", url), lease_seconds_left=3.0, kernel=())
        return record, note, page

    record, note, page = asyncio.run(run())
    assert (record, note) == (PEER, "")
    assert "lb2" in page and "STANDBY" in page


async def wrong_director(_: web.Request) -> web.Response:
    return web.json_response({**PEER.to_json(), "director": "lb1"})


async def huge(_: web.Request) -> web.Response:
    return web.Response(body=json.dumps({**PEER.to_json(), "pad": "x" * 5000}).encode())


async def silent(_: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return web.json_response(PEER.to_json())


async def not_json(_: web.Request) -> web.Response:
    return web.Response(text="<html>")


async def error(_: web.Request) -> web.Response:
    raise web.HTTPForbidden()


@pytest.mark.parametrize(("handler", "why"), [
    (wrong_director, "answers as 'lb1' of cluster 't', not lb2 of t"),
    (huge, "sent more than 4096 bytes"),
    (silent, "did not answer within 0.5 s"),
    (not_json, "not JSON"),
    (error, "answered HTTP 403"),
])
def test_a_peer_that_answers_badly_is_a_note(
        handler: Callable[[web.Request], Awaitable[web.Response]], why: str) -> None:
    async def run() -> tuple[DirectorRecord | None, str]:
        async with peer_api(handler) as url:
            return await fetch_peer("lb2", url, "t", timeout=0.5, limit=4096)

    record, note = asyncio.run(run())
    assert record is None
    assert why in note


def test_an_unreachable_peer_is_a_note() -> None:
    # A port bound here but never listening: the connection is refused.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/status"
        record, note = asyncio.run(fetch_peer("lb2", url, "t"))
    assert record is None and "unreachable" in note


def test_the_peers_api_is_found_from_the_cluster_file_and_our_port() -> None:
    assert peer_api_url("0.0.0.0", 9180, CLUSTER, "lb1") == (
        "lb2", "http://192.0.2.3:9180/status")
    name, note = peer_api_url("127.0.0.1", 9180, CLUSTER, "lb1")
    assert name == "" and "api.listen" in note
    assert peer_api_url("::1", 9180, CLUSTER, "lb2")[0] == ""
