"""The client probe against real listeners that are stopped and restarted: the outage it
records must cover the time the listener was really down, and nothing while it was up."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lvsctl.failover.probe import Probe, ProbeError, Target
from lvsctl.failover.timeline import Sample, outage_windows
from tests.support.netns import Lab
from tests.support.zookeeper import free_port

ROOT = Path(__file__).resolve().parents[2]
LISTENER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen(128)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.close()\n"
)


def test_target_parsing() -> None:
    assert Target.parse("tcp://192.0.2.10:80") == Target("tcp", "192.0.2.10", 80,
                                                          "tcp://192.0.2.10:80")
    assert Target.parse("http://192.0.2.10/health").port == 80
    assert Target.parse("https://[2001:db8::10]/").port == 443
    for bad, why in [("ftp://x/", "expected http"), ("tcp://192.0.2.10", "needs a port"),
                     ("tcp://192.0.2.10:99999", "not a number"), ("192.0.2.10:80", "expected")]:
        with pytest.raises(ProbeError, match=why):
            Target.parse(bad)


# Generous: on a loaded machine a probe thread or the listener may be starved for a while,
# and a probe that times out counts as an outage. Refused connections fail at once anyway.
TIMEOUT = 2.0
HTTP_SERVER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen(256)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.settimeout(2)\n"
    "    try:\n"
    "        c.recv(65536)\n"
    "        c.sendall(b'HTTP/1.0 204 No Content\\r\\nConnection: close\\r\\n\\r\\n')\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)


def assert_outage_matches(samples: list[Sample], stopping: float, stopped: float,
                          starting: float, started: float) -> None:
    """The probe saw the downtime and only the downtime: every probe started while the
    listener was surely down failed; no probe failed unless it started while the listener
    was stopping, down or starting (or was still in flight, within its timeout, when it
    stopped). Bounds come from the test's own clock readings around each action, so a
    loaded machine cannot make this flaky."""
    down = [s for s in samples if stopped <= s.wall <= starting]
    assert len(down) >= 3 and not any(s.ok for s in down), down
    failed = [s for s in samples if not s.ok]
    stray = [(round(s.wall - stopping, 3), s.error) for s in failed
             if not stopping - TIMEOUT <= s.wall <= started]
    assert not stray, (stray, round(started - stopping, 3))
    assert any(s.ok and s.wall < stopping for s in samples)
    assert any(s.ok and s.wall > started for s in samples)
    (window,) = [w for w in outage_windows(samples) if w.start <= down[0].wall <= w.end]
    assert stopping - TIMEOUT <= window.start <= down[0].wall
    assert starting <= window.end


def stop_and_restart(probe: Probe, proc: object, start: Callable[[], object],
                     pause: float) -> list[Sample]:
    """Probe a running listener, kill it, keep it down ``pause`` s, start it again; the
    samples, once the outage they record was checked against the test's own clock."""
    probe.start()
    try:
        _wait_for(lambda: sum(1 for s in probe.samples() if s.ok) >= 10, 10)
        stopping = time.time()
        proc.kill()  # type: ignore[attr-defined]
        proc.wait()  # type: ignore[attr-defined]
        stopped = time.time()
        time.sleep(pause)
        starting = time.time()
        start()
        started = time.time()
        _wait_for(lambda: sum(1 for s in probe.samples() if s.wall > started) >= 10, 10)
    finally:
        samples = probe.stop()
    assert_outage_matches(samples, stopping, stopped, starting, started)
    return samples


def test_http_probe_measures_a_stopped_listener(lab: Lab) -> None:
    port = free_port()

    def serve() -> object:
        proc = subprocess.Popen([sys.executable, "-c", HTTP_SERVER, str(port)],
                                stdout=subprocess.PIPE, text=True)
        lab.processes.append(proc)  # killed by the lab fixture even if the test fails
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    server = serve()
    probe = Probe(Target.parse(f"http://127.0.0.1:{port}/health"), timeout=TIMEOUT,
                  duration=20)
    samples = stop_and_restart(probe, server, serve, pause=0.5)
    assert {s.error for s in samples if not s.ok} <= {"ConnectionError", "ReadTimeout",
                                                      "ConnectTimeout"}


@pytest.mark.netns
def test_tcp_probe_from_a_namespace_measures_a_listener_stopped_and_restarted(lab: Lab) -> None:
    server_ns, client_ns = lab.netns("srv"), lab.netns("cli")
    lab.link(server_ns, "198.51.100.1/24", client_ns, "198.51.100.2/24")
    port = 8080  # inside a namespace of our own: no other process can hold it

    def listen() -> object:
        proc = lab.start(server_ns, [sys.executable, "-c", LISTENER, "198.51.100.1", str(port)],
                         stdout=-1, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    proc = listen()
    probe = Probe(Target.parse(f"tcp://198.51.100.1:{port}"), netns=client_ns.name,
                  timeout=TIMEOUT, duration=30)
    samples = stop_and_restart(probe, proc, listen, pause=0.6)
    # Refused at once (RST from the namespace's own stack): no probe needed its timeout.
    assert {s.error for s in samples if not s.ok} == {"Connection refused"}


@pytest.mark.netns
def test_probe_into_a_namespace_that_does_not_exist_fails_clearly() -> None:
    probe = Probe(Target.parse("tcp://198.51.100.1:80"), netns="lvsnosuchns0", duration=2)
    probe.start()
    _wait_for(lambda: not probe.running, 10)
    with pytest.raises(ProbeError, match="the probe in namespace lvsnosuchns0 failed"):
        probe.stop()


def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_probe_entry_point_streams_json_lines(tmp_path: Path) -> None:
    import json
    import subprocess

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "failover.probe", f"tcp://127.0.0.1:{port}", "--count", "5",
             "--interval", "0.01"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and len(lines) == 5
    assert all(line["ok"] for line in lines)
    bad = subprocess.run([sys.executable, "-m", "failover.probe", "udp://x:1"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert bad.returncode == 2 and "expected http://VIP" in bad.stderr
