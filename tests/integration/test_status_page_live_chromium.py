"""A live pair's status page in headless Chromium: two workers (real checks, real dataplane on
the fake IPVS, real HTTP APIs on loopback addresses of their own), lb1's ``GET /`` showing
both directors (lb2's view fetched from its API), a real server up and one down; the DOM is
asserted and a screenshot kept as a test artifact."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.node import Api, Node
from lvsctl.director.api import start_api
from lvsctl.director.channel import Channel, KeeperState
from lvsctl.director.dataplane import Dataplane
from lvsctl.director.worker import Worker
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.healthcheck.scheduler import Scheduler
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.integration.test_status_page_chromium import Dom
from tests.integration.test_worker import Keeper, MemoryStore, config_bytes, until
from tests.support import chromium

ADDRESSES = {"lb1": "127.0.0.2", "lb2": "127.0.0.3"}


def cluster(port: int) -> str:
    return f"""\
cluster: t
zookeeper: {{hosts: ['127.0.0.1:2181']}}
directors:
  - {{name: lb1, address: 127.0.0.2/8, interface: lo, peer: {{address: 127.0.0.2, port: 7001}}}}
  - {{name: lb2, address: 127.0.0.3/8, interface: lo, peer: {{address: 127.0.0.3, port: 7002}}}}
vips:
  - {{address: 192.0.2.10, interface: lo}}
services:
  - name: www
    vip: 192.0.2.10
    port: {port}
    forwarding: dr
    check: {{type: tcp, interval: 300ms, timeout: 200ms, rise: 1, fall: 1, warmup: 0}}
    realservers:
      - {{name: web1, address: 127.0.0.1}}
      - {{name: web2, address: 127.0.0.5}}
"""


def shared_port() -> int:
    """A port free on both directors' loopback addresses (they listen on the same port, as
    symmetric node files would have them)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind((ADDRESSES["lb1"], 0))
            port = a.getsockname()[1]
            try:
                b.bind((ADDRESSES["lb2"], port))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no port free on both loopback addresses")


async def start(name: str, tmp: Path, config: bytes, port: int, checkers: Checkers
                ) -> tuple[Worker, Keeper, asyncio.Task[int]]:
    folder = tmp / name
    folder.mkdir()
    node = Node(cluster="t", director=name,
                zookeeper=ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 2.5, None),
                peer_secret_file=str(folder / "peer.secret"),
                api=Api(ADDRESSES[name], port, None, False), ipvs="kernel",
                state_dir=str(folder / "state"), log_format="json",
                source=str(folder / "node.yaml"))
    keeper = Keeper()
    ours, theirs = socket.socketpair()
    keeper.channel = Channel(ours, on_message=keeper.got.append, on_close=lambda why: None)
    worker = Worker(node, keeper_pid=0, store=MemoryStore(True, config),
                    dataplane=Dataplane(FakeIpvs(folder / "ipvs.json")),
                    make_health=lambda c, on_change: Scheduler(c, checkers, on_change=on_change),
                    start_api=start_api)
    worker.attach(Channel(theirs, on_message=worker.on_message,
                          on_close=worker.on_channel_closed, on_invalid=worker.on_invalid))
    return worker, keeper, asyncio.create_task(worker.run())


def test_a_live_directors_page_in_chromium_shows_the_pair(tmp_path: Path,
                                                           record_property: Any) -> None:
    shot = chromium.artifacts() / "status-page-live.png"
    shot.unlink(missing_ok=True)

    async def run() -> str:
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        # web1 listens on 127.0.0.1; nothing listens on web2's 127.0.0.5: refused.
        config = config_bytes(cluster(listener.sockets[0].getsockname()[1]), 3)
        port = shared_port()
        running = []
        try:
            async with Checkers() as checkers:
                for name, role, epoch in (("lb1", "ACTIVE", 12), ("lb2", "STANDBY", 0)):
                    worker, keeper, task = await start(name, tmp_path, config, port, checkers)
                    running.append((worker, keeper, task))
                    assert keeper.channel is not None
                    vips = ("192.0.2.10",) if role == "ACTIVE" else ()
                    keeper.channel.send(KeeperState(role, epoch, 1.7e9, True, vips, True))
                for worker, _, _ in running:
                    await until(lambda w=worker: w.health is not None
                                and len(w.health.snapshot()) == 2
                                and w._api is not None, "checks of both real servers")
                url = f"http://{ADDRESSES['lb1']}:{port}/"

                def browse() -> str:
                    dom = chromium.run(url, "--dump-dom")
                    chromium.run(url, f"--screenshot={shot}", "--window-size=1280,1000")
                    return dom

                return await asyncio.to_thread(browse)
        finally:
            for _, keeper, task in running:
                if keeper.channel is not None:
                    keeper.channel.close()
                await asyncio.wait_for(task, 20)
            listener.close()

    dom = Dom()
    dom.feed(asyncio.run(run()))

    assert dom.title == "lvsctl t: lb1 ACTIVE"
    (verdict,) = [a for t, a in dom.elements if t == "span" and a.get("id") == "verdict"]
    assert verdict["class"] == "verdict ok"
    assert [(a["data-director"], a["data-role"], a["data-own"]) for a in
            dom.find("tr", class_="director")] == [("lb1", "ACTIVE", "true"),
                                                    ("lb2", "STANDBY", "false")]
    assert [a["data-service"] for a in dom.find("section", class_="service")] == ["www"]
    rows = {a["data-realserver"]: a for t, a in dom.elements
            if t == "tr" and "data-realserver" in a}
    assert {name: row["data-health"] for name, row in rows.items()} == {
        "web1": "up", "web2": "down"}
    # lb2's own check of web2, fetched from its API, is on lb1's page.
    assert any("refused" in text for cls, text in dom.texts if cls == "reason peer")

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    record_property("screenshot", str(shot))
