"""``lvsctl check run`` against real listeners: on loopback, and across network namespaces."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from tests.support.listeners import CLUSTER_HEAD, HttpListener, free_tcp_port
from tests.support.netns import Lab

ROOT = Path(__file__).resolve().parents[2]


class Background:
    """An HTTP listener served by its own event loop in a thread (the CLI runs its own loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(HttpListener().start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def listener() -> Iterator[HttpListener]:
    background = Background()
    try:
        yield background.server
    finally:
        background.close()


def write_cluster(tmp_path: Path, http_port: int, closed_port: int) -> Path:
    check = f"{{type: http, path: /h, port: {http_port}, interval: 2, timeout: 1}}"
    text = CLUSTER_HEAD + f"""
  - {{name: a, vip: 192.0.2.10, port: 80, forwarding: dr, check: {check},
     realservers: [{{name: r1, address: 127.0.0.1}}, {{name: r2, address: 127.0.0.4,
                    check: {{type: tcp, port: {closed_port}, timeout: 0.5}}}}]}}
  - {{name: b, vip: 192.0.2.11, port: 80, forwarding: dr, check: {check},
     realservers: [{{name: r1, address: 127.0.0.1}}]}}
  - {{name: c, vip: 192.0.2.11, port: 81, forwarding: dr,
     realservers: [{{name: r3, address: 127.0.0.5}}]}}
"""
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_once_json_prints_one_record_per_server_and_check(
    tmp_path: Path, listener: HttpListener
) -> None:
    closed = free_tcp_port("127.0.0.4")
    path = write_cluster(tmp_path, listener.port, closed)
    result = CliRunner().invoke(cli, ["check", "run", str(path), "--once", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    summary = {(r["server"], r["check"]): (r["services"], r["healthy"], r["reason"])
               for r in records}
    assert summary == {
        ("r1", "http"): (["a", "b"], True, "HTTP 200"),
        ("r2", "tcp"): (["a"], False, "connection refused"),
    }
    # r1 is shared by services a and b: probed once.
    assert listener.requests == {"/h": 1}
    assert all(r["rounds"] == 1 and r["latency_ms"] is not None for r in records)


def test_once_table_and_service_filter(tmp_path: Path, listener: HttpListener) -> None:
    path = write_cluster(tmp_path, listener.port, free_tcp_port("127.0.0.4"))
    result = CliRunner().invoke(cli, ["check", "run", str(path), "--once", "--service", "b"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "probing 1 real servers once..."
    assert lines[1].split() == ["SERVER", "SERVICES", "CHECK", "PROBE", "STATE", "LATENCY",
                                "REASON"]
    assert lines[2].split()[:5] == ["r1", "b", "http", f"127.0.0.1:{listener.port}", "up"]
    assert len(lines) == 3


def test_unknown_service_is_one_clear_line(tmp_path: Path, listener: HttpListener) -> None:
    path = write_cluster(tmp_path, listener.port, free_tcp_port("127.0.0.4"))
    result = CliRunner().invoke(cli, ["check", "run", str(path), "--once", "--service", "zz"])
    assert result.exit_code == 2
    assert "'zz' is not a service of" in result.output
    assert "services: a, b, c" in result.output
    assert listener.total == 0


def test_live_json_streams_health_changes(tmp_path: Path, listener: HttpListener) -> None:
    path = write_cluster(tmp_path, listener.port, free_tcp_port("127.0.0.4"))
    path.write_text(path.read_text().replace("interval: 2, timeout: 1",
                                             "interval: 0.5, timeout: 0.45, warmup: 0"))
    result = CliRunner().invoke(
        cli, ["check", "run", str(path), "--json", "--duration", "2.5"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    first = {(e["service"], e["server"]): e["healthy"] for e in events}
    assert first == {("a", "r1"): True, ("b", "r1"): True, ("a", "r2"): False,
                     ("c", "r3"): True}
    # At most ~5 rounds in 2.5 s at 0.5 s (fewer on a loaded machine), one request each,
    # however many services share r1: a probe per service would make about twice as many.
    assert 1 <= listener.requests["/h"] <= 7


@pytest.mark.netns
def test_cli_in_a_director_namespace_probes_a_real_server_namespace(
    lab: Lab, tmp_path: Path
) -> None:
    director, realserver = lab.netns("d"), lab.netns("r")
    lab.link(director, "10.231.0.1/24", realserver, "10.231.0.2/24")
    http = lab.start(realserver, [sys.executable, "-m", "http.server", "8080",
                                  "--bind", "10.231.0.2", "--directory", str(tmp_path)])
    (tmp_path / "healthz").write_text("ready\n")
    deadline = time.monotonic() + 10
    probe = [sys.executable, "-c",
             "import socket; socket.create_connection(('10.231.0.2', 8080), 1).close()"]
    while subprocess.run(director.argv(probe), capture_output=True, timeout=10).returncode:
        assert time.monotonic() < deadline and http.poll() is None, "http.server did not start"
        time.sleep(0.1)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("""
cluster: t
zookeeper: {hosts: ["127.0.0.1:2181"]}
directors:
  - {name: lb1, address: 10.231.0.1/24, interface: eth0, peer: {address: 10.231.0.1}}
  - {name: lb2, address: 10.231.0.3/24, interface: eth0, peer: {address: 10.231.0.3}}
vips: [{address: 10.231.0.10, interface: eth0}]
services:
  - name: web
    vip: 10.231.0.10
    port: 8080
    forwarding: dr
    check: {type: http, path: /healthz, body: "^ready", timeout: 1}
    realservers: [{name: rs1, address: 10.231.0.2}]
  - name: syslog
    vip: 10.231.0.10
    port: 514
    protocol: udp
    forwarding: dr
    check: {type: udp, send: "<13>lvsctl", require_reply: false, timeout: 1}
    realservers: [{name: rs1, address: 10.231.0.2}]
  - name: gone
    vip: 10.231.0.10
    port: 8081
    forwarding: dr
    check: {type: tcp, timeout: 1}
    realservers: [{name: rs1, address: 10.231.0.2}]
""")
    out = director.run([str(Path(sys.executable).with_name("lvsctl")), "check", "run", str(cluster),
                        "--once", "--json"], timeout=60)
    records: list[dict[str, Any]] = json.loads(out)
    got = {r["check"]: (r["healthy"], r["reason"]) for r in records}
    assert got == {
        "http": (True, "HTTP 200"),
        # ICMP port unreachable from the real server's kernel, seen on the connected socket.
        "udp": (False, "connection refused"),
        "tcp": (False, "connection refused"),
    }


def test_live_table_redraws_with_state_and_watchdog(tmp_path: Path, listener: HttpListener
                                                    ) -> None:
    path = write_cluster(tmp_path, listener.port, free_tcp_port("127.0.0.4"))
    path.write_text(path.read_text().replace("interval: 2, timeout: 1",
                                             "interval: 0.3, timeout: 0.2, warmup: 0"))
    result = CliRunner().invoke(
        cli, ["check", "run", str(path), "--service", "b", "--duration", "1.3",
              "--refresh", "0.4"])
    assert result.exit_code == 0, result.output
    tables = [block.splitlines() for block in result.output.strip().split("\n\n")[0::2]]
    footers = result.output.strip().split("\n\n")[1::2]
    assert len(tables) >= 2
    assert tables[-1][1].split()[:5] == ["r1", "b", "http", f"127.0.0.1:{listener.port}", "up"]
    assert all(f.startswith("1 probes, ") and "loop lag p99" in f for f in footers)


def test_once_json_shows_each_of_several_checks_of_a_server(
    tmp_path: Path, listener: HttpListener
) -> None:
    closed = free_tcp_port("127.0.0.4")
    http = f"{{type: http, path: /h, port: {listener.port}, interval: 2, timeout: 1}}"
    tcp = f"{{type: tcp, port: {closed}, timeout: 0.5}}"
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_HEAD + f"""
  - {{name: a, vip: 192.0.2.10, port: 80, forwarding: dr, checks: [{http}, {tcp}],
     realservers: [{{name: r1, address: 127.0.0.1}}]}}
""")
    result = CliRunner().invoke(cli, ["check", "run", str(path), "--once", "--json"])
    assert result.exit_code == 0, result.output
    summary = {(r["server"], r["check"]): (r["healthy"], r["reason"])
               for r in json.loads(result.output)}
    assert summary == {("r1", "http"): (True, "HTTP 200"),
                       ("r1", "tcp"): (False, "connection refused")}
