"""Maintenance drains and notify hooks on the real kernel: the lab of ``lvsctl lab`` (ZooKeeper,
two ``lvsctl director run`` processes on the kernel's IPVS, NAT real servers set up with their
rendered ``setup.sh``, a client), built once for this module, with a notify hook in its
cluster file that appends its environment to a file.

``lvsctl realserver drain --wait`` runs from the client's namespace as an operator would run
it: an open connection through the drained server keeps working while new connections go to
the other server, ``--wait`` returns once that connection closes, the drain holds across a
stepdown, and ``enable`` brings the server back. Each bound is on waiting (the VM's CPU is
emulated), never a speed.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsctl.testbed.lab import build, plan, results, steps
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.vm import kernel_has_ipvs
from tests.support.echo import echo_round

pytestmark = pytest.mark.kernel

WEB = plan.SERVICES[0]  # web-nat: the same two real servers as plan.ECHO
DOCUMENTED = {"LVSCTL_EVENT", "LVSCTL_CLUSTER", "LVSCTL_DIRECTOR", "LVSCTL_ROLE",
              "LVSCTL_EPOCH", "LVSCTL_SERVICE", "LVSCTL_REALSERVER", "LVSCTL_REASON",
              "LVSCTL_CONFIG_VERSION", "LVSCTL_TIME", "LVSCTL_SEQ"}


def _hook(workdir: Path) -> Path:
    """The notify hook: appends its LVSCTL_ variables, one block per event, to its director's
    file. A shell script: a Python start costs seconds under the VM's emulated CPU."""
    path = workdir / "hook.sh"
    path.write_text("#!/bin/sh\n"
                    f"out={workdir}/events-$LVSCTL_DIRECTOR.txt\n"
                    "{ echo BEGIN; env | grep '^LVSCTL_'; echo END; } >> \"$out\"\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[build.Lab]:
    if not kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run with scripts/test (it uses the kernel VM)",
                    pytrace=False)
    the_lab = build.Lab.create(Path(tmp_path_factory.mktemp("drainlab")), print)
    the_lab.cluster_extra = (f"notify:\n  - {{name: record, command: [{_hook(the_lab.workdir)}],"
                             " timeout: 120s}\n")
    try:
        start = time.monotonic()
        try:
            with results.timed_steps(print) as step:
                # The emulated CPUs of a busy host can take minutes to start both directors.
                the_lab.up(step, active_timeout=900)
        except build.LabError:
            print(_logs(the_lab))
            raise
        print(f"drain lab: built in {time.monotonic() - start:.1f} s")
        yield the_lab
    finally:
        the_lab.down()


def _logs(the_lab: build.Lab) -> str:
    return "\n".join(f"--- {name}.log (tail)\n{the_lab.log_tail(name, 25)}"
                     for name in plan.DIRECTORS)


def _assert_tables(the_lab: build.Lab, when: str, timeout: float = 120) -> None:
    for result in steps.wait_tables(the_lab, when, timeout):
        assert result.passed, f"{result.step}: {result.detail}\n{_logs(the_lab)}"


def _cli_argv(the_lab: build.Lab, *args: str) -> list[str]:
    """``lvsctl ARGS`` in the client's namespace, with lb1's node file (ZooKeeper, auth)."""
    return the_lab.exec_argv("client", build.lvsctl_argv(
        *args, "--node", str(the_lab.workdir / "lb1.node.yaml")))


def _cli(the_lab: build.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli_argv(the_lab, *args), capture_output=True, text=True,
                          timeout=300)


def _weight(the_lab: build.Lab, director: str, address: str) -> int | None:
    """``address``'s weight in web-nat as ``ipvsadm -Ln`` lists it on ``director``."""
    listed = plan.ipvsadm_services(the_lab.ipvsadm(director))
    for entry in listed.get(f"TCP {WEB.vip}:{WEB.port} rr", ()):
        dest, _fwd, weight = entry.split()
        if dest == f"{address}:{WEB.port}":
            return int(weight)
    return None


def _dest_of(listing: str, client: str) -> str | None:
    """The real server address of ``client``'s connection in ``ipvsadm -Lnc``."""
    for line in listing.splitlines():
        words = line.split()
        if client in words and len(words) >= 6:
            return words[-1].rsplit(":", 1)[0]
    return None


class _Shared:
    drained: tuple[str, str] | None = None  # (name, address) of the drained real server
    other: str | None = None


def test_drain_wait_keeps_the_open_connection_and_new_ones_go_elsewhere(
        running: build.Lab) -> None:
    active = running.wait_active(300)
    _assert_tables(running, "after up", timeout=300)
    sock = in_netns(running.ns("client"), lambda: socket.create_connection(
        (plan.ECHO.vip, plan.ECHO.port), timeout=30))
    waiting: subprocess.Popen[str] | None = None
    output = running.workdir / "drain-wait.out"
    try:
        assert echo_round(sock, b"before\n", timeout=60.0) == b"before\n"
        client = "{}:{}".format(*sock.getsockname()[:2])
        address = build.wait_until(lambda: _dest_of(running.connections(active), client)
                                   is not None, 60, 0.3)
        assert address is not None, running.connections(active)
        dest = _dest_of(running.connections(active), client)
        name = next(rs for rs, a in WEB.realservers if a == dest)
        other = next(rs for rs, a in WEB.realservers if a != dest)
        _Shared.drained, _Shared.other = (name, str(dest)), other

        with open(output, "w") as sink:
            waiting = subprocess.Popen(
                _cli_argv(running, "realserver", "drain", name, "--reason", "lab upgrade",
                          "--wait", "--timeout", "600"),
                stdout=sink, stderr=subprocess.STDOUT, text=True)
        took = build.wait_until(lambda: _weight(running, active, str(dest)) == 0, 300, 0.5)
        assert took is not None, f"{name} never drained on {active}\n{_logs(running)}"
        # No new connection reaches the drained server (under a saturated emulated CPU a
        # request may fail, "-": that is no answer from the drained server either) ...
        answers = running.fetch(WEB.vip, 8)
        assert name not in answers and other in answers, answers
        # ... the open one keeps working, and --wait is still waiting for it.
        assert echo_round(sock, b"during\n", timeout=60.0) == b"during\n"
        seen = build.wait_until(lambda: f"{name}: 1 active connection " in output.read_text(),
                                300, 0.5)
        assert seen is not None, output.read_text()
        assert waiting.poll() is None, output.read_text()
    finally:
        sock.close()
    assert waiting is not None
    try:
        code = waiting.wait(timeout=300)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    text = output.read_text()
    print(text)
    assert code == 0, text
    assert f"{name} drained in every service" in text and "lab upgrade" in text
    assert f"{name} has no active connection left" in text
    assert _weight(running, active, str(dest)) == 0  # held until enable


def _stepdown(the_lab: build.Lab, director: str) -> int:
    token = (the_lab.workdir / "api.token").read_text().strip()

    def post() -> int:
        conn = http.client.HTTPConnection(plan.DIRECTORS[director][0], plan.API_PORT,
                                          timeout=120)
        try:
            conn.request("POST", "/stepdown", headers={"Authorization": f"Bearer {token}"})
            return conn.getresponse().status
        finally:
            conn.close()

    return in_netns(the_lab.ns("client"), post)


def test_the_drain_survives_a_stepdown_and_enable_brings_it_back(running: build.Lab) -> None:
    assert _Shared.drained is not None, "needs the drain of the test before"
    name, address = _Shared.drained
    before = running.wait_active(300)
    after = next(d for d in plan.DIRECTORS if d != before)
    assert _stepdown(running, before) == 200
    took = build.wait_until(lambda: running.active() == after, 300, 0.5)
    assert took is not None, _logs(running)
    # The new active holds the drain (it kept its warm table at weight 0 all along).
    assert _weight(running, after, address) == 0
    answers = running.fetch(WEB.vip, 6)
    assert name not in answers and _Shared.other in answers, answers

    listed = _cli(running, "realserver", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["director"] == after
    row = next(r for r in data["realservers"]
               if r["realserver"] == name and r["service"] == WEB.name)
    assert (row["effective_weight"], row["kernel_weight"]) == (0, 0)
    assert row["override"]["reason"] == "lab upgrade"

    enabled = _cli(running, "realserver", "enable", name)
    assert enabled.returncode == 0 and f"{name} enabled" in enabled.stdout, enabled.stderr
    back = build.wait_until(lambda: name in running.fetch(WEB.vip, 4, timeout=5.0), 300, 0.5)
    assert back is not None, _logs(running)
    _assert_tables(running, "after enable")


def _events(the_lab: build.Lab) -> list[dict[str, str]]:
    """Every event the hook recorded (both directors' files), as its variables."""
    out = []
    for path in sorted(the_lab.workdir.glob("events-*.txt")):
        for block in path.read_text().split("BEGIN\n")[1:]:
            body, _, _ = block.partition("END\n")
            out.append(dict(line.split("=", 1) for line in body.splitlines() if "=" in line))
    return out


def test_the_hook_recorded_each_event_once_in_order(running: build.Lab) -> None:
    cluster = f"lab-{running.state.lab_id}"
    # The last event (the new active's director_active) may still be on its way.
    got = build.wait_until(lambda: sum(e["LVSCTL_EVENT"] == "director_active"
                                       for e in _events(running)) >= 2, 300, 0.5)
    assert got is not None, _events(running)
    seen = _events(running)
    for e in seen:
        assert set(e) == DOCUMENTED, set(e) ^ DOCUMENTED
        assert e["LVSCTL_CLUSTER"] == cluster and e["LVSCTL_TIME"].endswith("Z")
    # Asked until it answers: one status request may time out under a saturated CPU.
    active = running.wait_active(300)
    for director in plan.DIRECTORS:
        mine = [e for e in seen if e["LVSCTL_DIRECTOR"] == director]
        # Once each, in order: the worker numbers its events 1, 2, 3, ... (no restart here).
        assert [int(e["LVSCTL_SEQ"]) for e in mine] == list(range(1, len(mine) + 1)), mine
        kinds = [e["LVSCTL_EVENT"] for e in mine]
        assert kinds.count("config_accepted") == 1, kinds  # one version pushed
        roles = [k for k in kinds if k.startswith("director_")]
        assert all(a != b for a, b in itertools.pairwise(roles)), roles
        # Both changed role in the stepdown: the one active now became so last, the other
        # stood by after having been active.
        if director == active:
            assert roles[-1] == "director_active", roles
        else:
            assert roles[-1] == "director_standby" and "director_active" in roles, roles
        for e in mine:
            if e["LVSCTL_EVENT"] == "director_active":
                assert e["LVSCTL_ROLE"] == "ACTIVE" and int(e["LVSCTL_EPOCH"]) >= 0
