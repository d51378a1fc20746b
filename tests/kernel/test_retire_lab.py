"""Acceptance on the real kernel, in the whole lab (built once for this module): a service
that leaves the cluster file is retired on both directors — drained (its busy real server at
weight 0, no new connections), then deleted — and a long-lived connection through it keeps
working until the drain deadline of the last file that had the service. The file is pushed
with ``lvsctl config push --plan``, whose plan (made against the active director's table,
read through its API) is what the active then does, as it logs it with its epoch.

Times are bounds to wait within, never assertions on speed: the VM's CPU is emulated.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsctl.core.config import load_cluster, parse_cluster
from lvsctl.core.zk import ConfigStore, Target, open_cluster
from lvsctl.testbed.lab import build, plan, results
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.vm import kernel_has_ipvs
from tests.support.echo import echo_round

pytestmark = pytest.mark.kernel

DRAIN = 30  # seconds: echo-nat's drain_timeout in the file that still has it
ECHO_KEY = f"TCP {plan.ECHO.vip}:{plan.ECHO.port} rr"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[build.Lab]:
    if not kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run with scripts/test (it uses the kernel VM)",
                    pytrace=False)
    the_lab = build.Lab.create(Path(tmp_path_factory.mktemp("lab")), print)
    started = time.monotonic()
    try:
        with results.timed_steps(print) as step:
            # The VM's emulated CPUs are shared with every other VM on the host: a director
            # may take minutes to come up when the host is busy.
            the_lab.up(step, active_timeout=600)
        print(f"lab up in {time.monotonic() - started:.0f} s")
        yield the_lab
    finally:
        the_lab.down()


def _push(lab: build.Lab, text: str) -> None:
    """``text`` as the cluster's next version (validated, compare-and-set), from lb1's ns."""
    loaded = parse_cluster(text, "cluster.yaml")
    target = Target(loaded.cluster.zookeeper, loaded.cluster.name, base_dir=lab.workdir)

    def push() -> None:
        with open_cluster(target, connect_timeout=15) as conn:
            ConfigStore(conn).push(loaded.text, source=loaded.source)

    in_netns(lab.ns("lb1"), push)


def _logged_ops(lab: build.Lab, director: str, after: int) -> list[dict[str, object]]:
    """The IPVS ops ``director`` logged (event ipvs_op) after its log's first ``after`` bytes."""
    text = (lab.workdir / f"{director}.log").read_text(errors="replace")[after:]
    events = [json.loads(line) for line in text.splitlines() if '"ipvs_op"' in line]
    return [{"epoch": e["epoch"], **e["ipvs"]} for e in events]


def _status(lab: build.Lab, director: str) -> dict[str, object]:
    """``director``'s /status; its API may be slow to answer under the emulated CPU."""
    for _ in range(120):
        status = lab.director_status(director)
        if status is not None:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{director}'s API did not answer /status")


def _managed_timeout(lab: build.Lab, director: str) -> float | None:
    """echo-nat's drain timeout in ``director``'s managed-services state file, if listed."""
    name = load_cluster(str(lab.workdir / "cluster.yaml")).cluster.name
    try:
        record = json.loads((lab.workdir / director / f"{name}.managed.json").read_text())
    except (OSError, ValueError):
        return None
    return next((float(s["drain_timeout"]) for s in record["services"]
                 if s["name"] == plan.ECHO.name), None)


def _echo_dests(lab: build.Lab, director: str) -> set[str] | None:
    """echo-nat's real servers as ``ipvsadm -Ln`` lists them; None once it is gone."""
    return plan.ipvsadm_services(lab.ipvsadm(director)).get(ECHO_KEY)


def test_a_service_left_out_is_drained_then_deleted_on_both_directors(
        running: build.Lab) -> None:
    def logs() -> str:
        return "\n".join(f"--- {n}\n{running.log_tail(n, 20)}" for n in plan.DIRECTORS)

    text = (running.workdir / "cluster.yaml").read_text()
    echo_at = text.index(f"  - name: {plan.ECHO.name}\n")
    head, echo_block = text[:echo_at], text[echo_at:]
    with_deadline = head + echo_block.replace(
        "    realservers:\n", f"    drain_timeout: {DRAIN}s\n    realservers:\n", 1)
    _push(running, with_deadline)
    for director in plan.DIRECTORS:
        took = build.wait_until(lambda d=director: _managed_timeout(running, d) == DRAIN, 120, 0.5)
        assert took is not None, f"{director} never recorded echo-nat as managed\n{logs()}"

    sock = in_netns(running.ns("client"), lambda: socket.create_connection(
        (plan.ECHO.vip, plan.ECHO.port), timeout=10))
    try:
        assert echo_round(sock, b"before\n") == b"before\n"
        active = running.wait_active(120)
        epoch = _status(running, active)["epoch"]
        seen: dict[str, dict[str, float]] = {d: {} for d in plan.DIRECTORS}
        without = running.workdir / "without-echo.yaml"
        without.write_text(head)  # echo-nat was the file's last service: the file without it
        logged = len((running.workdir / f"{active}.log").read_bytes())
        pushed = time.monotonic()
        # Watched while the command runs: the drain starts with the director's next pass.
        proc = subprocess.Popen(running.exec_argv("lb1", build.lvsctl_argv(
            "config", "push", "--plan", "--json", str(without))),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def look() -> bool:
            now = time.monotonic() - pushed
            for director in plan.DIRECTORS:
                dests = _echo_dests(running, director)
                if dests is None:
                    seen[director].setdefault("gone", now)
                elif dests and all(d.endswith(" 0") for d in dests):
                    seen[director].setdefault("drained", now)
            return seen[active].get("drained") is not None

        try:
            drained = build.wait_until(lambda: look() and proc.poll() is not None, 300, 0.5)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert drained is not None, \
            f"the active {active} never drained echo-nat: {seen}\n{logs()}"
        plan_json = json.loads(out)["plan"]
        print(f"push --plan: {plan_json}")
        assert (plan_json["basis"]["kind"], plan_json["basis"]["director"]) == (
            "director", active)
        # echo-nat's ops (on a busy host a health check of another service may time out and
        # add an op of its own): the busy real server drained, the idle one deleted at once.
        echo = f"tcp {plan.ECHO.vip}:{plan.ECHO.port}"
        planned = [op for op in plan_json["ops"] if op["service"] == echo]
        assert sorted(op["op"] for op in planned) == ["delete_dest", "drain_dest"], plan_json
        done = [op for op in _logged_ops(running, active, logged)
                if op["service"] == echo][:len(planned)]
        assert [op["text"] for op in done] == [op["text"] for op in planned], done
        assert {op["epoch"] for op in done} == {epoch}
        # Draining: no new connection reaches it (no real server has weight: the kernel
        # answers port unreachable), and the open one still carries data until the deadline.
        with pytest.raises(OSError):
            in_netns(running.ns("client"), lambda: socket.create_connection(
                (plan.ECHO.vip, plan.ECHO.port), timeout=10)).close()
        time.sleep(DRAIN * 0.5)
        assert _echo_dests(running, active) is not None, \
            f"{active} deleted echo-nat before its drain deadline: {seen}"
        assert echo_round(sock, b"during\n") == b"during\n"
        assert build.wait_until(lambda: look() and all("gone" in s for s in seen.values()),
                                DRAIN + 150, 0.5) is not None, \
            f"echo-nat not deleted on both directors: {seen}\n{logs()}"
        # The deadline runs from the first pass that saw the dest at weight 0 (after the one
        # that drained it); "drained" is when ipvsadm showed it, a poll later at most.
        assert seen[active]["gone"] - seen[active]["drained"] >= DRAIN * 0.8, seen
        print(f"seconds after the push: {seen}")
    finally:
        sock.close()
    # The other services are untouched: each still answers.
    for svc in plan.SERVICES:
        assert set(running.fetch(svc.vip, 4)) <= {rs for rs, _ in svc.realservers}
