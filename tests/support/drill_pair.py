"""The test bed's director pair dressed for failover drills: a client host on the
bridge probing the VIP, a small TCP service on each director answering on whatever VIP it
holds, the pair's ``Directors`` (API in each namespace, records from ZooKeeper) and its
``NetnsLab`` (PIDs, nftables, kernel VIP watcher)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvsctl.core.config import parse_cluster
from lvsctl.failover.access import timeline_record
from lvsctl.failover.drill import DrillError, Expected
from lvsctl.failover.timeline import Record
from lvsctl.testbed.director_pair import PEER_PORT, DirectorPair, cluster_yaml
from lvsctl.testbed.netns import Netns
from lvsctl.testbed.netns_lab import NetnsLab

CLIENT_ADDR = "192.0.2.50/24"
SERVICE_PORT = 80
# A stand-in real service: answers every connection on any address the namespace holds.
SERVICE = (
    "import socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {SERVICE_PORT}))  # any address: the VIP comes and goes\n"
    "s.listen(256)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.close()\n"
)


class ReachablePair(DirectorPair):
    """The pair with each director's API on every address, so that a drill run from the
    client host reaches both (at their addresses from the cluster file)."""

    def node_file(self, name: str) -> Path:
        path = super().node_file(name)
        path.write_text(path.read_text().replace("listen: '127.0.0.1:", "listen: '0.0.0.0:"))
        return path


@dataclass
class PairDirectors:
    """``Directors`` for the pair: /status and actions inside each director's namespace."""

    pair: DirectorPair

    def status(self, director: str) -> dict[str, Any] | None:
        return self.pair.status(director)

    def action(self, director: str, action: str, params: dict[str, str] | None = None,
               ) -> dict[str, Any]:
        import json

        query = "" if not params else "?" + "&".join(f"{k}={v}" for k, v in params.items())
        try:
            code, body = self.pair.post(director, action + query)
        except OSError as exc:
            raise DrillError(f"{director} {action}: {exc}") from None
        if code != 200:
            raise DrillError(f"{director} answered {action} with HTTP {code}: {body.strip()}")
        return json.loads(body) if body.strip() else {}

    def records(self) -> list[Record]:
        return [timeline_record(r) for r in self.pair.transitions()]


@dataclass
class DrillPair:
    pair: DirectorPair
    client: Netns | None = None
    services: dict[str, Any] = field(default_factory=dict)

    def setup(self) -> DrillPair:
        pair = self.pair
        self.client = pair.lab.netns("c")
        pair.lab.attach(self.client, CLIENT_ADDR, pair.hub, pair.bridge, "eth0")
        for name in ("lb1", "lb2"):
            self.services[name] = pair.lab.start(pair.ns[name], [sys.executable, "-c", SERVICE])
        return self

    @property
    def expected(self) -> Expected:
        return Expected.from_cluster(parse_cluster(cluster_yaml(), "cluster.yaml").cluster)

    def directors(self) -> PairDirectors:
        return PairDirectors(self.pair)

    def lab(self) -> NetnsLab:
        pair = self.pair

        def pid(name: str) -> int | None:
            proc = pair.procs.get(name)
            return proc.pid if proc is not None and proc.poll() is None else None

        def restart(name: str) -> None:
            proc = pair.procs.get(name)
            if proc is not None and proc.poll() is None:
                return
            if proc is not None:
                proc.wait()
            pair.start(name)

        assert self.client is not None
        return NetnsLab({n: ns.name for n, ns in pair.ns.items()}, pid=pid, restarter=restart,
                        zookeeper_port=2181, peer_port=PEER_PORT, client_netns=self.client.name)

    def workdir(self) -> Path:
        return self.pair.workdir
