"""The lease benches' lab: a real director pair (tests' ``DirectorPair``) plus a real-server
namespace on its bridge that answers for a whole routed range.

This is the one module of ``bench/`` that imports ``tests.support``: the pair, its namespaces
and its ZooKeeper start-up live there until the test bed takes them over; the benches reach
them only through ``BenchLab``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lvsctl.testbed.director_pair import (
    ADDRS,
    API_PORT,
    PEER_PORT,
    VIP,
    DirectorPair,
    cluster_yaml,
)
from lvsctl.testbed.loads import BULK_NET, FARM_NET
from lvsctl.testbed.netns import Lab

RS_ADDR = "192.0.2.50"  # the real-server namespace on the bridge: every farm address routes here

__all__ = ["ADDRS", "API_PORT", "PEER_PORT", "RS_ADDR", "VIP", "BenchLab"]


@dataclass
class BenchLab:
    """ZooKeeper, two director namespaces (directors started on demand) and the real servers."""

    pair: DirectorPair
    rs_ns: str

    @classmethod
    def open(cls, base_services: list[str]) -> BenchLab:
        """Build the lab and push the cluster file head + ``base_services``; ``close()`` it."""
        pair = DirectorPair(Lab(), vip6=False)
        try:
            pair.setup("\n".join([*cls.head_of(pair), *base_services, ""]))
            rs = pair.lab.netns("rs")
            pair.lab.attach(rs, f"{RS_ADDR}/24", pair.hub, pair.bridge, "eth0")
            for net in (FARM_NET, BULK_NET):
                rs.ip("route", "add", "local", str(net), "dev", "lo")
                for name in ADDRS:
                    pair.ns[name].ip("route", "add", str(net), "via", RS_ADDR)
        except BaseException:
            pair.close()
            pair.lab.close()
            raise
        return cls(pair, rs.name)

    @staticmethod
    def head_of(pair: DirectorPair) -> list[str]:
        """The lab's cluster file up to and including ``services:``."""
        lines = cluster_yaml(extra_vip6=False, auth=str(pair.workdir / "zk.secret")).splitlines()
        return lines[: lines.index("services:") + 1]

    def head(self) -> list[str]:
        return self.head_of(self.pair)

    def netns(self, director: str) -> str:
        return self.pair.ns[director].name

    def push(self, text: str) -> subprocess.CompletedProcess[str]:
        """``lvsctl config push`` from lb1's namespace (not raising on refusal)."""
        return self.pair.push(text, check=False)

    def start(self, director: str) -> int:
        """Start ``lvsctl director run`` for ``director``; its PID."""
        return self.pair.start(director).pid

    def wait_holder(self, director: str, timeout: float) -> None:
        self.pair.wait_holder(director, timeout=timeout)

    def log_path(self, director: str) -> Path:
        return self.pair.workdir / f"{director}.log"

    def log_events(self, director: str, since: int) -> tuple[list[str], int]:
        """The ``event`` of every line in ``director``'s JSON log after byte ``since``; and
        where the log ends now."""
        path = self.log_path(director)
        with open(path, "rb") as log:
            log.seek(since)
            data = log.read()
        end = since + data.rfind(b"\n") + 1
        events = []
        for line in data[: end - since].splitlines():
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                continue
            if isinstance(event, str):
                events.append(event)
        return events, end

    def close(self) -> None:
        self.pair.close()
        self.pair.lab.close()
