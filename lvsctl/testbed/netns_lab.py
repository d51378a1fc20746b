"""A drill ``Lab`` for directors that run as local processes in network namespaces.

It signals a director's process by its PID, restarts it through a callback, cuts its
ZooKeeper or peer-link traffic with an nftables table of its own inside the director's
namespace, and observes the VIPs with the kernel's address events (vipwatch.py). Whoever
starts the directors (the test harness, ``lvsctl lab``) builds one and hands it to ``Drill``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lvsctl.failover.drill import DrillError
from lvsctl.failover.vipwatch import NetnsVipObserver

NFT_TABLE = "lvsctl_drill"


@dataclass
class NetnsLab:
    """See the module docstring. ``namespaces`` maps each director to its namespace."""

    namespaces: Mapping[str, str]
    pid: Callable[[str], int | None]  # the director's running process, None if gone
    restarter: Callable[[str], None]
    zookeeper_port: int = 2181
    peer_port: int = 7946
    client_netns: str | None = None

    @property
    def probe_netns(self) -> str | None:
        return self.client_netns

    def signal(self, director: str, sig: int) -> None:
        pid = self.pid(director)
        if pid is None:
            raise DrillError(f"{director} has no running process to signal")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            raise DrillError(f"{director} (pid {pid}) is gone") from None

    def restart(self, director: str) -> None:
        self.restarter(director)

    def _rules(self, link: str) -> list[tuple[str, list[str]]]:
        if link == "zookeeper":
            port = str(self.zookeeper_port)
            return [("output", ["tcp", "dport", port]), ("input", ["tcp", "sport", port])]
        if link == "peer":
            port = str(self.peer_port)
            return [("output", ["udp", "dport", port]), ("input", ["udp", "dport", port])]
        raise DrillError(f"unknown link {link!r}: expected zookeeper or peer")

    def _nft(self, director: str, args: Sequence[str], check: bool = True) -> None:
        ns = self.namespaces[director]
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True,
                              text=True, timeout=15)
        if check and proc.returncode != 0:
            raise DrillError(f"nft {' '.join(args)} in {ns} failed: {proc.stderr.strip()}")

    def cut(self, director: str, link: str) -> None:
        rules = self._rules(link)
        self._nft(director, ["add", "table", "inet", NFT_TABLE])
        for chain in ("input", "output"):
            self._nft(director, ["add", "chain", "inet", NFT_TABLE, chain,
                                 f"{{ type filter hook {chain} priority 0 ; }}"])
        for chain, match in rules:
            self._nft(director, ["add", "rule", "inet", NFT_TABLE, chain, *match, "drop"])

    def heal(self, director: str, link: str) -> None:
        self._rules(link)
        self._nft(director, ["delete", "table", "inet", NFT_TABLE], check=False)

    def observer(self, vips: Sequence[str]) -> NetnsVipObserver:
        return NetnsVipObserver(dict(self.namespaces), vips)
