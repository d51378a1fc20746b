"""End to end on the real kernel (IPVS, ipip): the whole lab of ``lvsctl lab`` — ZooKeeper,
two ``lvsctl director run`` processes, NAT/DR/TUN real servers set up only with their rendered
``setup.sh``, and a client — built once for this module (every process start in the VM costs
seconds), driven with real traffic from the client's namespace.

After every step the directors' tables (``ipvsadm -Ln``) must be what ``lvsctl ipvs plan``
expects: the plan against the live table is empty.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsctl import lab
from lvsctl.vm import kernel_has_ipvs

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab.Lab]:
    if not kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run with scripts/test (it uses the kernel VM)",
                    pytrace=False)
    the_lab = lab.Lab.create(Path(tmp_path_factory.mktemp("lab")), print)
    try:
        with lab.timed_steps(print) as step:
            active = the_lab.up(step)
        # Whether the active director programmed its table itself is the first test's
        # question; when it did not, the file is applied once (as the demo does) so the other
        # tests still examine the data path and the directors' other duties.
        the_lab.ipvs_result = lab.ensure_ipvs(the_lab, active, print, timeout=30)
        yield the_lab
    finally:
        for name in lab.DIRECTORS:
            log = the_lab.workdir / f"{name}.log"
            if log.exists():
                print(f"--- {name}.log (tail)\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-30:]))
        the_lab.down()


def _tables_equal_plan(the_lab: lab.Lab, when: str) -> None:
    for name in lab.DIRECTORS:
        ok, detail = lab.plan_is_empty(the_lab, name)
        assert ok, f"{name} {when}: {detail}\n{the_lab.ipvsadm(name)}"


def test_the_active_director_programs_every_service(running: lab.Lab) -> None:
    result = running.ipvs_result
    assert result is not None and result.passed, result
    _tables_equal_plan(running, "after up")


@pytest.mark.parametrize("svc", lab.SERVICES, ids=[s.mode for s in lab.SERVICES])
def test_each_mode_reaches_every_realserver_round_robin(running: lab.Lab,
                                                       svc: lab.LabService) -> None:
    answers = running.fetch(svc.vip, 12)
    seen = lab.spread(answers)
    assert set(seen) == {rs for rs, _ in svc.realservers}, answers
    assert max(seen.values()) - min(seen.values()) <= 1, seen  # rr: an even spread
    _tables_equal_plan(running, f"after {svc.mode} traffic")


def test_unhealthy_realserver_leaves_within_fall_and_returns_after_rise(
        running: lab.Lab) -> None:
    results = lab.health_cycle(running, print)
    assert all(r.passed for r in results), results
    _tables_equal_plan(running, "after the health cycle")


def _echo_round(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    got = b""
    deadline = time.monotonic() + 5
    while len(got) < len(text) and time.monotonic() < deadline:
        got += sock.recv(len(text) - len(got))
    return got


def test_long_lived_nat_connection_survives_a_stepdown(running: lab.Lab) -> None:
    sock = lab.in_netns(running.ns("client"), lambda: socket.create_connection(
        (lab.ECHO.vip, lab.ECHO.port), timeout=5))
    try:
        assert _echo_round(sock, b"before\n") == b"before\n"
        result = lab.drill(running, "stepdown", print)
        assert result.passed, result.detail
        # The new active knows the connection (sync daemon) and is the NAT servers' gateway
        # now (inside VIP moved): the same connection still carries data both ways.
        assert _echo_round(sock, b"after\n") == b"after\n"
    finally:
        sock.close()
    _tables_equal_plan(running, "after the stepdown")


def test_new_connections_work_after_a_crash(running: lab.Lab) -> None:
    result = lab.drill(running, "crash", print)
    assert result.passed, result.detail
    for svc in lab.SERVICES:
        answers = running.fetch(svc.vip, 4)
        assert "-" not in answers, (svc.name, answers)
    _tables_equal_plan(running, "after the crash")
