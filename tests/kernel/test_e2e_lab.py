"""End to end on the real kernel (IPVS, ipip): the whole lab of ``lvsctl lab`` — ZooKeeper,
two ``lvsctl director run`` processes, NAT/DR/TUN real servers set up only with their rendered
``setup.sh``, and a client — built once for this module (every process start in the VM costs
seconds), driven with real traffic from the client's namespace.

After every step both directors' tables must be what the cluster file asks for: the plan
``lvsctl ipvs plan`` makes against them is empty and ``ipvsadm -Ln`` lists exactly the lab's
services. A table needs a moment after a change (checks, a reconcile pass), so each comparison
waits for it, generously bounded. How fast things happen is the benchmarks' business.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsctl.testbed.lab import build, plan, results, steps
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.vm import kernel_has_ipvs

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[build.Lab]:
    if not kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run with scripts/test (it uses the kernel VM)",
                    pytrace=False)
    the_lab = build.Lab.create(Path(tmp_path_factory.mktemp("lab")), print)
    try:
        with results.timed_steps(print) as step:
            the_lab.up(step)
        yield the_lab
    finally:
        the_lab.down()


def _logs(the_lab: build.Lab) -> str:
    return "\n".join(f"--- {name}.log (tail)\n{the_lab.log_tail(name, 25)}"
                     for name in plan.DIRECTORS)


def _assert_tables(the_lab: build.Lab, when: str, timeout: float = 30) -> None:
    for result in steps.wait_tables(the_lab, when, timeout):
        assert result.passed, f"{result.step}: {result.detail}\n{_logs(the_lab)}"


def test_both_directors_program_every_service(running: build.Lab) -> None:
    # The active programs the table, the standby keeps the same one warm: neither was given
    # anything but the cluster file in ZooKeeper.
    _assert_tables(running, "after up", timeout=90)


@pytest.mark.parametrize("svc", plan.SERVICES, ids=[s.mode for s in plan.SERVICES])
def test_each_mode_reaches_every_realserver_round_robin(running: build.Lab,
                                                       svc: plan.LabService) -> None:
    answers = running.fetch(svc.vip, 12)
    seen = plan.spread(answers)
    assert set(seen) == {rs for rs, _ in svc.realservers}, answers
    assert max(seen.values()) - min(seen.values()) <= 1, seen  # rr: an even spread
    _assert_tables(running, f"after {svc.mode} traffic")


@pytest.mark.parametrize("svc", plan.SERVICES, ids=[s.mode for s in plan.SERVICES])
def test_unhealthy_realserver_leaves_and_returns_only_after_rise(
        running: build.Lab, svc: plan.LabService) -> None:
    results = steps.health_cycle(running, print, svc)
    assert [r.step for r in results if not r.passed] == [], results
    _assert_tables(running, f"after the {svc.mode} health cycle")


def _echo_round(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    got = b""
    deadline = time.monotonic() + 30
    while len(got) < len(text) and time.monotonic() < deadline:
        chunk = sock.recv(len(text) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_long_lived_nat_connection_survives_a_stepdown(running: build.Lab) -> None:
    active = running.active()
    assert active is not None
    standby = next(name for name in plan.DIRECTORS if name != active)
    sock = in_netns(running.ns("client"), lambda: socket.create_connection(
        (plan.ECHO.vip, plan.ECHO.port), timeout=5))
    try:
        assert _echo_round(sock, b"before\n") == b"before\n"
        address, port = sock.getsockname()[:2]
        client = f"{address}:{port}"
        # The active's sync daemon hands the connection to the standby's table.
        synced = build.wait_until(lambda: client in running.connections(standby), 60, 0.3)
        assert synced is not None, (f"{standby} never listed {client} (ipvsadm -Lnc):\n"
                                    f"{running.connections(standby)}")
        result = steps.drill(running, "stepdown", print)
        assert result.passed, result.detail
        assert running.active() == standby
        # The new active knows the connection (sync daemon) and is the NAT servers' gateway
        # now (inside VIP moved): the same connection still carries data both ways.
        assert _echo_round(sock, b"after\n") == b"after\n"
    finally:
        sock.close()
    _assert_tables(running, "after the stepdown")


def test_new_connections_work_after_a_crash(running: build.Lab) -> None:
    before = running.active()
    result = steps.drill(running, "crash", print)
    assert result.passed, f"{result.detail}\n{_logs(running)}"
    assert running.active() not in (None, before)
    # Every real server answers; not necessarily evenly: in DR and TUN a client port reused
    # while the new active still keeps its entry goes to the same real server again.
    for svc in plan.SERVICES:
        answers = running.fetch(svc.vip, 8)
        assert set(answers) == {rs for rs, _ in svc.realservers}, (svc.name, answers)
    _assert_tables(running, "after the crash", timeout=90)
