"""A director pair in network namespaces: ZooKeeper in its own namespace, two real
directors (keeper and worker processes, started through lvsctl.testbed.director_main on a
file-backed fake IPVS), a bridge joining them, and VIP presence observed with
netlink address events in both directors' namespaces (timestamped with one monotonic clock).

Used by the integration scenarios and by ``bench/failover.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvsctl.core.records import TransitionRecord
from lvsctl.failover.vipwatch import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, parse_addr_messages
from lvsctl.testbed.netns import Lab, Netns
from lvsctl.testbed.netns import in_netns as _in_netns
from lvsctl.testbed.overlap import overlap
from lvsctl.testbed.zookeeper import ZooKeeperServer

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(Path(sys.executable))
ZK_ADDR = "192.0.2.100"
ADDRS = {"lb1": "192.0.2.2", "lb2": "192.0.2.3"}
VIP = "192.0.2.10"
VIP6 = "2001:db8::10"
PEER_PORT = 7946
API_PORT = 9180
ZK_AUTH = "lvsctl:test-password"
SESSION = 3.0  # seconds: above the 2.5 s the lease rule needs (election.Timing.shortest_session)



def cluster_yaml(announce_count: int = 3, interval: str = "20ms", extra_vip6: bool = True,
                 auth: str | None = None,
                 zk_hosts: Sequence[str] = (f"{ZK_ADDR}:2181",)) -> str:
    vips = [f"  - {{address: {VIP}, interface: eth0}}"]
    if extra_vip6:
        vips.append(f'  - {{address: "{VIP6}", interface: eth0}}')
    return "\n".join([
        "cluster: t",
        f"zookeeper: {{hosts: {list(zk_hosts)}, session_timeout: {SESSION}"
        + (f", auth: {auth}}}" if auth else "}"),
        "directors:",
        *(f"  - {{name: {name}, address: {addr}/24, interface: eth0, "
          f"peer: {{address: {addr}, port: {PEER_PORT}}}}}" for name, addr in ADDRS.items()),
        "vips:",
        *vips,
        f"announce: {{count: {announce_count}, interval: {interval}}}",
        "services:",
        "  - name: www",
        f"    vip: {VIP}",
        "    port: 80",
        "    forwarding: dr",
        "    check: {type: tcp, interval: 300ms, timeout: 200ms, rise: 1, fall: 1, warmup: 0}",
        "    realservers:",
        "      - {name: web1, address: 192.0.2.21}   # nobody there: unhealthy",
        "  - name: zk",
        f"    vip: {VIP}",
        "    port: 2181",
        "    forwarding: dr",
        "    check: {type: tcp, interval: 300ms, timeout: 200ms, rise: 1, fall: 1, warmup: 0}",
        "    realservers:",
        f"      - {{name: zk1, address: {ZK_ADDR}}}   # ZooKeeper itself: healthy",
        "",
    ])


@dataclass
class AddrWatch:
    """Netlink address events for one address family set in one namespace, in a thread."""

    ns: Netns
    addresses: frozenset[str]
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, "add"/"del", addr)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            return sock

        self.sock: socket.socket = _in_netns(self.ns.name, make)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        present: set[str] = set()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            data = self.sock.recv(1 << 16)
            now = time.monotonic()
            for kind, addr in parse_addr_messages(data):
                if addr not in self.addresses:
                    continue
                if kind == "add" and addr not in present:
                    present.add(addr)
                    self.events.append((now, "add", addr))
                elif kind == "del" and addr in present:
                    present.discard(addr)
                    self.events.append((now, "del", addr))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()

    def intervals(self, addr: str, until: float) -> list[tuple[float, float]]:
        """When ``addr`` was present: [(added, removed or ``until``)]."""
        out: list[tuple[float, float]] = []
        start: float | None = None
        for t, kind, a in list(self.events):
            if a != addr:
                continue
            if kind == "add" and start is None:
                start = t
            elif kind == "del" and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, until))
        return out

    def holds(self, addr: str) -> bool:
        ivs = self.intervals(addr, float("inf"))
        return bool(ivs) and ivs[-1][1] == float("inf")


def process_state(pid: int) -> str | None:
    """The process's state letter from /proc (R, S, T, Z, ...), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


@dataclass
class DirectorPair:
    """ZooKeeper + two directors on a bridge; ``close()`` removes everything."""

    lab: Lab
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lvsctl-pair-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ns: dict[str, Netns] = field(default_factory=dict)
    watches: dict[str, AddrWatch] = field(default_factory=dict)
    zk: ZooKeeperServer | None = None
    vip6: bool = True
    session: float = SESSION
    sessions: dict[str, float] = field(default_factory=dict)  # a director's own, if not session
    zk_hosts: tuple[str, ...] = (f"{ZK_ADDR}:2181",)

    def setup(self, cluster_text: str | None = None) -> DirectorPair:
        self.hub = self.lab.netns("hub")
        bridge = self.lab.bridge(self.hub)
        self.bridge = bridge
        for name, addr in ADDRS.items():
            ns = self.lab.netns(name[-1])
            self.ns[name] = ns
            self.lab.attach(ns, f"{addr}/24", self.hub, bridge, "eth0")
            ns.run(["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"], check=False)
            watch = AddrWatch(ns, frozenset({VIP, VIP6}))
            watch.start()
            self.watches[name] = watch
        self.start_zookeeper()
        (self.workdir / "zk.secret").write_text(ZK_AUTH + "\n")
        (self.workdir / "peer.secret").write_text("peer-secret-0123456789abcdef\n")
        (self.workdir / "api.token").write_text("test-token-42\n")
        for p in ("zk.secret", "peer.secret", "api.token"):
            os.chmod(self.workdir / p, 0o600)
        self.push(cluster_text)
        return self

    def start_zookeeper(self) -> None:
        """ZooKeeper for the pair: one server in a namespace of its own on the bridge."""
        zk_ns = self.lab.netns("zk")
        self.lab.attach(zk_ns, f"{ZK_ADDR}/24", self.hub, self.bridge, "eth0")
        self.zk = ZooKeeperServer(host=ZK_ADDR, port=2181, netns=zk_ns,
                                  workdir=self.workdir / "zk").start()

    def node_file(self, name: str) -> Path:
        path = self.workdir / f"{name}.node.yaml"
        path.write_text("\n".join([
            "cluster: t",
            f"director: {name}",
            f"zookeeper: {{hosts: {list(self.zk_hosts)}, "
            f"session_timeout: {self.sessions.get(name, self.session)}, "
            f"auth: {self.workdir / 'zk.secret'}}}",
            f"peer: {{secret: {self.workdir / 'peer.secret'}}}",
            f"api: {{listen: '127.0.0.1:{API_PORT}', token: {self.workdir / 'api.token'}, "
            "drills: true}",
            f"state_dir: {self.workdir / name}",
            "log_format: json",
            "",
        ]))
        return path

    # -- the cluster's store, from inside a namespace (the test process is outside) ----------

    def store_script(self, code: str, timeout: float = 20) -> str:
        """Run ``code`` in lb1's namespace with ``store``, the cluster's ClusterStore."""
        script = (
            "import json\n"
            "from lvsctl.core.model import ZooKeeperSettings\n"
            "from lvsctl.core.zk import ClusterStore, Target, open_cluster\n"
            f"settings = ZooKeeperSettings({self.zk_hosts!r}, '/lvsctl', {self.session}, "
            f"{str(self.workdir / 'zk.secret')!r})\n"
            "with open_cluster(Target(settings, 't'), connect_timeout=10) as conn:\n"
            "    store = ClusterStore(conn)\n"
            + "".join(f"    {line}\n" for line in code.splitlines())
        )
        return self.ns["lb1"].run([PYTHON, "-c", script], timeout=timeout)

    def push(self, text: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``lvsctl config push`` of ``text`` (default: the lab's cluster file), from lb1's ns."""
        path = self.workdir / "cluster.yaml"
        path.write_text(text or cluster_yaml(extra_vip6=self.vip6,
                                             auth=str(self.workdir / "zk.secret"),
                                             zk_hosts=self.zk_hosts))
        proc = subprocess.run(
            self.ns["lb1"].argv([PYTHON, "-m", "lvsctl", "config", "push", str(path)]),
            capture_output=True, text=True, timeout=60, cwd=str(ROOT),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"config push failed: {proc.stderr}")
        return proc

    def raw_push(self, text: str) -> None:
        """Write the config without validating it (as a skewed or foreign writer could)."""
        self.store_script(
            f"store.config.push({text!r}, source='cluster.yaml', validate=False)")

    def transitions(self) -> list[TransitionRecord]:
        """The transition log as the store reads it, oldest first."""
        out = self.store_script(
            "print(json.dumps([e.record.to_json() for e in store.transitions().items]))")
        return [TransitionRecord.from_json(r) for r in json.loads(out)]

    # -- directors ---------------------------------------------------------------------------

    def ipvs_file(self, name: str) -> Path:
        """Where ``name``'s fake IPVS table lives (lvsctl.testbed.fake_ipvs)."""
        return self.workdir / f"{name}.ipvs.json"

    def start(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``name``'s director (its keeper; the keeper starts the worker) through the
        test bed's main, on a file-backed fake IPVS."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = self.lab.start(
            self.ns[name],
            [PYTHON, "-m", "lvsctl.testbed.director_main", "run",
             "--node", str(self.node_file(name)), "--fake-ipvs", str(self.ipvs_file(name))],
            stdout=log, stderr=log, cwd=str(ROOT), env={**os.environ, **(env or {})},
        )
        self.procs[name] = proc
        return proc

    def worker_pid(self, name: str) -> int | None:
        """The PID of ``name``'s worker (the keeper's child running ``worker``), if any."""
        keeper = self.procs[name].pid
        children: list[str] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{keeper}/task").iterdir():
                children += (task / "children").read_text().split()
        for pid in children:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"worker" in argv and process_state(int(pid)) not in (None, "Z"):
                    return int(pid)
        return None

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def status(self, name: str) -> dict[str, Any] | None:
        def get() -> dict[str, Any] | None:
            conn = http.client.HTTPConnection("127.0.0.1", API_PORT, timeout=1.0)
            try:
                conn.request("GET", "/status")
                return json.loads(conn.getresponse().read())
            except OSError:
                return None
            finally:
                conn.close()

        return _in_netns(self.ns[name].name, get)

    def post(self, name: str, action: str, token: str = "test-token-42") -> tuple[int, str]:
        def go() -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", API_PORT, timeout=3.0)
            try:
                conn.request("POST", f"/{action}", headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                return resp.status, resp.read().decode()
            finally:
                conn.close()

        return _in_netns(self.ns[name].name, go)

    def holder(self, addr: str = VIP) -> str | None:
        held = [name for name, w in self.watches.items() if w.holds(addr)]
        assert len(held) <= 1, f"both directors hold {addr}"
        return held[0] if held else None

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``predicate`` every 10 ms; returns when it held; AssertionError after timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                             + "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs))

    def wait_holder(self, name: str | None, timeout: float = 15.0, addr: str = VIP) -> float:
        return self.wait(lambda: self.holder(addr) == name, timeout, f"{name} to hold {addr}")

    def intervals_since(self, name: str, since: float,
                        addr: str = VIP) -> list[tuple[float, float]]:
        """``name``'s holding intervals of ``addr`` that reach past ``since``."""
        return [iv for iv in self.watches[name].intervals(addr, time.monotonic()) if iv[1] > since]

    def overlap(self, addr: str = VIP) -> float:
        now = time.monotonic()
        return overlap(self.watches["lb1"].intervals(addr, now),
                       self.watches["lb2"].intervals(addr, now))

    def nft_drop(self, name: str, rule: list[str]) -> None:
        """Drop matching traffic in ``name``'s namespace (input and output)."""
        ns = self.ns[name]
        ns.run(["nft", "add", "table", "inet", "lvstest"], check=False)
        for chain in ("input", "output"):
            ns.run(["nft", "add", "chain", "inet", "lvstest", chain,
                    f"{{ type filter hook {chain} priority 0 ; }}"], check=False)
            ns.run(["nft", "add", "rule", "inet", "lvstest", chain, *rule, "drop"])

    def nft_clear(self, name: str) -> None:
        self.ns[name].run(["nft", "delete", "table", "inet", "lvstest"], check=False)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
        for watch in self.watches.values():
            watch.stop()
        if self.zk is not None:
            self.zk.close()
        if not os.environ.get("LVSCTL_KEEP_LAB"):
            shutil.rmtree(self.workdir, ignore_errors=True)
