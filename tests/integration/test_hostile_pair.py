"""Hostile input against a live director pair: real ZooKeeper, two directors (keeper and worker
processes) in network namespaces, real servers in a namespace of their own, the active's VIP
renewals watched from outside through the kernel's address events.

Each class of hostile input — files the directors must not take, files they cannot run, real
servers that never finish their headers, a check that prints without end, API clients that
flood, trickle or send bytes that are not text, a peer datagram flood, an API port already
taken — is tried in turn on one pair, and each asserts one-line errors, both directors alive
with the same worker processes (nothing was restarted to survive it) and the active's VIP never
lapsing.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lvsctl.testbed.director_pair import (
    ADDRS,
    API_PORT,
    PEER_PORT,
    PYTHON,
    ROOT,
    VIP,
    ZK_ADDR,
    DirectorPair,
    cluster_yaml,
)
from lvsctl.testbed.loads import (
    FARM_NET,
    PORT_ENDLESS,
    PORT_SLOW,
    LoadProcess,
    chatty_misc_services,
    hostile_http_services,
)
from lvsctl.testbed.netns import Lab, entered, in_netns
from lvsctl.testbed.renewals import RenewalWatch, subscribe, window_figures

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

RS_ADDR = "192.0.2.50"  # the real servers' namespace: every farm address routes here
RUN_BUDGET = 600  # seconds: the real servers end by themselves after this
HOSTILE = 3  # real servers in each hostile service
RSS_LIMIT = 512 << 20  # the chatty check must not grow a worker past this


@dataclass
class Hostile:
    """The pair, its real servers and the watch on the active's VIP renewals."""

    pair: DirectorPair
    rs_ns: str
    watch: RenewalWatch
    workers: dict[str, int]
    base: str

    def cache(self, name: str) -> Path:
        return self.pair.workdir / name / "t.config.json"

    def status(self, name: str) -> dict[str, Any]:
        st = self.pair.status(name)
        assert st is not None, f"{name}'s API does not answer"
        return st

    def config(self, name: str) -> dict[str, str]:
        return dict(self.status(name)["config"])

    def applied(self, version: str) -> None:
        """Wait until both directors run ``version`` with no error."""
        for name in ADDRS:
            self.pair.wait(lambda n=name: (self.pair.status(n) or {}).get("config") == {
                "version": version, "error": ""}, 60, f"{name} to apply {version}")

    def push(self, text: str) -> str:
        """Push ``text`` (validated by the CLI); the version it became."""
        proc = self.pair.push(text)
        made = re.search(r"pushed (\S+) as version (\d+) ", proc.stdout)
        assert made, proc.stdout
        return f"{made.group(1)}@v{made.group(2)}"

    def refused(self, text: str) -> str:
        """Push ``text`` expecting the CLI to refuse it; its one line."""
        proc = self.pair.push(text, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        return lines[0]

    def calm(self, since: float, *, lb2_restarted: bool = False) -> dict[str, Any]:
        """Both directors alive with the workers they started with, lb1 active, and its VIP
        never lapsed since ``since``; the window's figures."""
        for name, proc in self.pair.procs.items():
            assert proc.poll() is None, f"{name} exited:\n{self.pair.log(name)[-3000:]}"
            if not (name == "lb2" and lb2_restarted):
                assert self.pair.worker_pid(name) == self.workers[name], \
                    f"{name}'s worker was restarted:\n{self.pair.log(name)[-3000:]}"
        assert self.status("lb1")["role"] == "ACTIVE"
        assert self.pair.overlap(VIP) == 0.0
        now = time.monotonic()
        figures = window_figures(list(self.watch.events), VIP, since, now, now)
        assert figures.lapses == 0, f"the VIP lapsed: {figures}"
        assert self.watch.overruns == 0
        return figures.as_dict()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    lab = Lab()
    pair = DirectorPair(lab, vip6=False)
    farm: LoadProcess | None = None
    watch: RenewalWatch | None = None
    try:
        base = cluster_yaml(extra_vip6=False, auth=str(pair.workdir / "zk.secret"))
        pair.setup(base)
        rs = lab.netns("rs")
        lab.attach(rs, f"{RS_ADDR}/24", pair.hub, pair.bridge, "eth0")
        rs.ip("route", "add", "local", str(FARM_NET), "dev", "lo")
        for name in ADDRS:
            pair.ns[name].ip("route", "add", str(FARM_NET), "via", RS_ADDR)
        farm = LoadProcess("serve", ["--duration", str(RUN_BUDGET)], netns=rs.name).start()
        with entered(pair.ns["lb1"].name):
            watch = RenewalWatch(subscribe(), frozenset({VIP})).start()
        pair.start("lb1")
        pair.wait_holder("lb1", 30)
        pair.start("lb2")
        pair.wait(lambda: (pair.status("lb2") or {}).get("role") == "STANDBY", 30, "lb2 standby")
        workers = {name: pair.worker_pid(name) for name in ADDRS}
        assert all(workers.values())
        yield Hostile(pair, rs.name, watch, workers, base)  # type: ignore[arg-type]
    finally:
        if farm is not None:
            farm.stop()
        if watch is not None:
            watch.stop()
        pair.close()
        lab.close()


def test_files_the_directors_must_not_take_are_refused_in_one_line(hostile: Hostile) -> None:
    since = time.monotonic()
    before = hostile.config("lb1")
    base = hostile.base

    def vip(address: str) -> str:
        return base.replace("vips:\n", f"vips:\n  - {{address: {address}, interface: eth0}}\n")

    cases = [
        (base.replace("interface: eth0}", 'interface: "eth0\\n"}', 1), "interface"),
        (vip("255.255.255.255"), "broadcast"),
        (vip("224.0.0.1"), "multicast"),
        (vip("127.0.0.2"), "loopback"),
        (vip(ADDRS["lb2"]), ADDRS["lb2"]),
        (base.replace(f"hosts: ['{ZK_ADDR}:2181']", f"hosts: ['{ZK_ADDR}:2181'], "
                                                     "root: /lvsctl/../etc"), "'..'"),
        (base.replace(f"hosts: ['{ZK_ADDR}:2181']", f"hosts: ['{ZK_ADDR}:2181/chroot']"),
         "2181/chroot"),
        (base + "# " + "x" * 1_200_000 + "\n", "bytes"),
    ]
    for text, expected in cases:
        line = hostile.refused(text)
        assert expected in line, line
    for name in ADDRS:
        assert hostile.config(name) == before
    hostile.calm(since)


def test_files_the_directors_cannot_run_are_refused_and_never_cached(hostile: Hostile) -> None:
    since = time.monotonic()
    before = hostile.config("lb1")
    cached = hostile.cache("lb1").read_bytes()
    # Written past the CLI (a skewed or foreign writer): more VIPs than the keeper takes
    # (the CLI refuses the same file in one line), then another cluster's file.
    many = hostile.base.replace("vips:\n", "vips:\n" + "".join(
        f"  - {{address: 198.51.100.{i}, interface: eth0}}\n" for i in range(1, 255)) + "".join(
        f"  - {{address: 203.0.113.{i}, interface: eth0}}\n" for i in range(1, 47)))
    assert hostile.refused(many).endswith("vips: takes at most 256 item(s)")
    for text, why in ((many, "vips: takes at most 256 item(s)"),
                      (hostile.base.replace("cluster: t\n", "cluster: other\n"),
                       "cluster: the file is for cluster 'other'")):
        hostile.pair.raw_push(text)
        for name in ADDRS:
            hostile.pair.wait(lambda n=name, w=why: w in hostile.config(n)["error"], 30,
                              f"{name} to refuse the file")
            assert hostile.config(name)["version"] == before["version"]
        assert "\n" not in hostile.config("lb1")["error"]
    assert hostile.cache("lb1").read_bytes() == cached
    hostile.applied(hostile.push(hostile.base))
    hostile.calm(since)


def test_a_corrupt_config_znode_is_refused_and_replaced_only_on_request(
        hostile: Hostile) -> None:
    since = time.monotonic()
    pair = hostile.pair
    before = hostile.config("lb1")
    # Deeply nested JSON where an lvsctl file should be (a foreign or broken writer).
    pair.store_script("conn.client.set(store.paths.config, b'[' * 100000)")
    for name in ADDRS:
        pair.wait(lambda n=name: "does not hold an lvsctl cluster file" in hostile.config(n)[
            "error"], 30, f"{name} to refuse the znode")
        assert hostile.config(name)["version"] == before["version"]
    assert "\n" not in hostile.config("lb1")["error"]
    line = hostile.refused(hostile.base)  # a plain push does not overwrite it...
    assert line.endswith("(to overwrite it: lvsctl config push --replace-unreadable FILE)")
    path = pair.workdir / "cluster.yaml"
    path.write_text(hostile.base)
    proc = subprocess.run(  # ...this one does, and says so in the history
        pair.ns["lb1"].argv([PYTHON, "-m", "lvsctl", "config", "push", str(path),
                             "--replace-unreadable"]),
        capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    made = re.search(r"pushed (\S+) as version (\d+) ", proc.stdout)
    assert proc.returncode == 0 and made, proc.stderr
    hostile.applied(f"{made.group(1)}@v{made.group(2)}")
    hostile.calm(since)


def test_hostile_real_servers_and_a_chatty_check_cost_no_lapse(hostile: Hostile) -> None:
    text = "".join(line + "\n" for line in [
        *hostile.base.rstrip("\n").splitlines(),
        *hostile_http_services(VIP, HOSTILE, PORT_ENDLESS, name="endless"),
        *hostile_http_services(VIP, HOSTILE, PORT_SLOW, name="slow", service_port=30002),
        *chatty_misc_services(VIP, HOSTILE)])
    hostile.applied(hostile.push(text))
    since = time.monotonic()
    deadline = since + 10.0
    peak = 0
    while time.monotonic() < deadline:  # the checks run a few rounds against them
        peak = max(peak, *(rss(pid) for pid in hostile.workers.values()))
        time.sleep(0.2)
    assert peak < RSS_LIMIT
    rows = {rs["name"]: rs for svc in hostile.status("lb1")["services"]
            for rs in svc["realservers"]}
    for name in ("endless0", "slow0", "chatty0"):
        health = rows[name]["health"]
        assert health is not None and health["healthy"] is False, rows[name]
        assert "\n" not in health["reason"] and len(health["reason"]) <= 480
    hostile.calm(since)
    hostile.applied(hostile.push(hostile.base))


def http_raw(ns: str, data: bytes) -> bytes:
    """``data`` to the API in namespace ``ns``; all it answers until it closes."""
    def go() -> bytes:
        with socket.create_connection(("127.0.0.1", API_PORT), timeout=15) as sock:
            sock.sendall(data)
            chunks = []
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)

    return in_netns(ns, go)


def test_hostile_api_clients_cost_no_lapse(hostile: Hostile) -> None:
    since = time.monotonic()
    ns = hostile.pair.ns["lb1"].name
    answer = http_raw(ns, b"POST /stepdown HTTP/1.1\r\nHost: x\r\n"
                          b"Authorization: Bearer \xff\xfe\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.partition(b"\r\n\r\n")[2] == b"headers: expected UTF-8 text\n"
    body = b"x" * 100_000
    answer = http_raw(ns, b"POST /stepdown HTTP/1.1\r\nHost: x\r\n"
                          b"Authorization: Bearer test-token-42\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    # A slowloris (header bytes trickling) and a flood with half-open connections at once.
    slow = LoadProcess("api-flood", ["--port", str(API_PORT), "--duration", "8",
                                     "--concurrency", "0", "--half-open", "200",
                                     "--trickle", "1"], netns=ns).start()
    flood = LoadProcess("api-flood", ["--port", str(API_PORT), "--duration", "8",
                                      "--concurrency", "8", "--half-open", "300"],
                        netns=ns).start()
    slowed, flooded = slow.finish(40), flood.finish(40)
    assert slowed.get("timed_out_408", 0) > 0, slowed  # cut at the header deadline
    assert flooded.get("answered", 0) > 0, flooded
    assert hostile.status("lb1")["role"] == "ACTIVE"
    hostile.calm(since)


def test_a_peer_datagram_flood_costs_no_lapse(hostile: Hostile) -> None:
    since = time.monotonic()
    flood = LoadProcess("peer-flood", ["--address", ADDRS["lb1"], "--port", str(PEER_PORT),
                                       "--duration", "6", "--rate", "5000"],
                        netns=hostile.rs_ns).start()
    sent = flood.finish(30)
    assert sent.get("sent", 0) > 1000, sent
    assert hostile.status("lb2")["role"] == "STANDBY"
    hostile.calm(since)


def test_an_api_port_taken_is_a_fatal_start_that_says_why(hostile: Hostile) -> None:
    since = time.monotonic()
    pair = hostile.pair
    pair.signal("lb2", signal.SIGTERM)
    pair.procs["lb2"].wait(60)
    taken = in_netns(pair.ns["lb2"].name, lambda: socket.create_server(("127.0.0.1", API_PORT)))
    try:
        log_from = len(pair.log("lb2"))
        proc = pair.start("lb2")
        assert proc.wait(90) == 2
        why = (f"the worker refused to run: api.listen: cannot listen on 127.0.0.1:{API_PORT}: "
               "Address already in use")
        said = [json.loads(line) for line in pair.log("lb2")[log_from:].splitlines()
                if line.startswith("{")]
        assert any(entry.get("event") == "fatal" and entry.get("msg") == why
                   for entry in said), [(e.get("event"), e.get("msg")) for e in said]
    finally:
        taken.close()
    pair.start("lb2")
    pair.wait(lambda: (pair.status("lb2") or {}).get("role") == "STANDBY", 60, "lb2 standby")
    assert pair.status("lb2")["api"] == f"127.0.0.1:{API_PORT}"  # type: ignore[index]
    hostile.calm(since, lb2_restarted=True)


def test_the_active_never_lapsed_through_the_whole_run(hostile: Hostile) -> None:
    events = list(hostile.watch.events)
    assert events, "the watch saw no renewal at all"
    first = min(ev.received for ev in events)
    figures = hostile.calm(first, lb2_restarted=True)
    assert figures["renewals"] > 10


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

