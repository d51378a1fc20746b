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

import dataclasses
import http.client
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lvsctl.testbed.lab import build, plan, results, steps
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.prometheus import PrometheusError, Series
from lvsctl.testbed.vm import kernel_has_ipvs
from tests.support.echo import echo_round

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[build.Lab]:
    if not kernel_has_ipvs():
        pytest.fail("this kernel has no IPVS: run with scripts/test (it uses the kernel VM)",
                    pytrace=False)
    the_lab = build.Lab.create(Path(tmp_path_factory.mktemp("lab")), print)
    try:
        with results.timed_steps(print) as step:
            try:
                the_lab.up(step)
            except BaseException:
                print(_logs(the_lab))  # the lab's folder goes with the VM
                for name in plan.DIRECTORS:
                    print(f"--- {name} /status (30 s to answer): {_status_line(the_lab, name)}")
                raise
        yield the_lab
    finally:
        the_lab.down()


def _status_line(the_lab: build.Lab, director: str) -> str:
    """What ``director``'s API says of its role, with a patient timeout (or why not)."""
    def get() -> str:
        conn = http.client.HTTPConnection(plan.DIRECTORS[director][0], plan.API_PORT,
                                          timeout=30)
        try:
            start = time.monotonic()
            conn.request("GET", "/status")
            body = conn.getresponse().read()
            data = json.loads(body)
            return (f"role {data.get('role')}, epoch {data.get('epoch')}, vips "
                    f"{data.get('vips')} (answered in {time.monotonic() - start:.1f} s)")
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    return in_netns(the_lab.ns("client"), get)


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


# -- Prometheus (the lab's, in the client's namespace, scraping both directors) -----------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lvsctl.json"
METRIC_NAME = re.compile(r"\blvsctl_[a-zA-Z0-9_]*[a-zA-Z0-9]")
# A bound on waiting for Prometheus to see a change, on top of what the change itself needs:
# the VM's emulated CPU delays checks, scrapes and the query engine alike (not a speed).
MARGIN = 60.0


def _instance(director: str) -> str:
    return f"{plan.DIRECTORS[director][0]}:{plan.API_PORT}"


def _query_until(the_lab: build.Lab, expr: str, done: Callable[[list[Series]], bool],
                 timeout: float) -> tuple[float | None, list[Series]]:
    """Seconds until ``expr``'s result satisfied ``done`` (None: not within ``timeout``), and
    the last result."""
    # Patient per query: the VM's emulated CPU can keep Prometheus from answering for seconds.
    client = dataclasses.replace(the_lab.prometheus(), timeout=30.0)
    last: list[Series] = []

    def check() -> bool:
        nonlocal last
        try:
            last = client.query(expr)
        except PrometheusError:  # a query that timed out: ask again, within the bound
            return False
        return done(last)

    return build.wait_until(check, timeout, 0.5), last


def _by_instance(result: list[Series]) -> dict[str, float]:
    return {s.labels.get("instance", ""): s.value for s in result}


def _scrape(the_lab: build.Lab, director: str) -> str:
    """One live /metrics of ``director``, fetched from the client's namespace."""
    def get() -> str:
        conn = http.client.HTTPConnection(plan.DIRECTORS[director][0], plan.API_PORT,
                                          timeout=30)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200, response.status
            return response.read().decode()
        finally:
            conn.close()

    return in_netns(the_lab.ns("client"), get)


def _exposed(text: str) -> set[str]:
    """The metric names a scrape offers: its samples', and each family's (a family without
    samples yet, such as a counter of rare events, is offered by its HELP and TYPE)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return names


def test_prometheus_scrapes_both_directors_and_a_live_scrape_is_clean(
        running: build.Lab) -> None:
    took, last = _query_until(
        running, f'up{{job="{plan.PROMETHEUS_JOB}"}}',
        # A director's first scrape starts its renderer process (a Python interpreter: slow
        # under the emulated CPU); its scrapes time out until then.
        lambda r: _by_instance(r) == {_instance(n): 1.0 for n in plan.DIRECTORS}, 300)
    assert took is not None, f"targets not both up: {last}"
    active = running.active()
    assert active is not None
    text = _scrape(running, active)
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed (scripts/setup installs it)"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    dashboard = json.loads(DASHBOARD.read_text())
    used = set(METRIC_NAME.findall(json.dumps(dashboard)))
    assert len(used) >= 35
    assert used - _exposed(text) == set()
    # The series name the cluster file's services and real servers (every one of them).
    for svc in plan.SERVICES:
        for rs, _address in svc.realservers:
            assert f'realserver="{rs}",service="{svc.name}"' in text or \
                f'service="{svc.name}",realserver="{rs}"' in text, (svc.name, rs)


def test_a_stopped_listener_shows_in_prometheus_within_fall_interval_and_a_scrape(
        running: build.Lab) -> None:
    svc = plan.SERVICES[1]  # DR
    rs = svc.realservers[1][0]
    series = (f'lvsctl_realserver_health{{job="{plan.PROMETHEUS_JOB}",service="{svc.name}",'
              f'realserver="{rs}",state="up"}}')
    took, last = _query_until(running, series,
                              lambda r: len(r) == 2 and all(s.value == 1 for s in r), 120)
    assert took is not None, f"{rs} not up on both directors: {last}"
    # fall checks an interval apart (the first may come a whole interval after the stop, and
    # each may take its timeout), then a scrape (and the scrape cache's 1 s), then the margin.
    bound = (plan.CHECK["fall"] * plan.CHECK["interval"] + plan.CHECK["timeout"]
             + plan.SCRAPE_INTERVAL + 1.0 + MARGIN)
    running.stop_listener(rs)
    try:
        took, last = _query_until(running, series,
                                  lambda r: len(r) == 2 and all(s.value == 0 for s in r), bound)
        print(f"{rs}'s health series went to 0 on both directors {took} s after its "
              f"listener stopped (bound {bound:.1f} s)")
        assert took is not None, f"still {last} after {bound:.0f} s"
    finally:
        running.start_listener(rs)
        running.wait_listening(rs)
    took, last = _query_until(running, series,
                              lambda r: len(r) == 2 and all(s.value == 1 for s in r), 120)
    assert took is not None, f"{rs} not up again: {last}"
    _assert_tables(running, f"after {rs}'s listener came back")


def test_ipvs_byte_counters_grow_while_the_client_sends_traffic(running: build.Lab) -> None:
    active = running.active()
    assert active is not None
    svc = plan.SERVICES[0]  # NAT: both directions pass the director
    expr = (f'sum by (direction) (lvsctl_service_bytes_total{{job="{plan.PROMETHEUS_JOB}",'
            f'instance="{_instance(active)}",service="{svc.name}"}})')
    took, before = _query_until(running, expr, lambda r: len(r) == 2, 120)
    assert took is not None, f"no byte counters for {svc.name}: {before}"
    start = {s.labels["direction"]: s.value for s in before}
    answers = running.fetch(svc.vip, 20)
    assert set(answers) == {rs for rs, _ in svc.realservers}, answers
    took, after = _query_until(
        running, expr, lambda r: len(r) == 2 and all(
            s.value > start[s.labels["direction"]] for s in r), 120)
    assert took is not None, f"byte counters did not grow: {start} -> {after}"


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


def test_long_lived_nat_connection_survives_a_stepdown(running: build.Lab) -> None:
    active = running.active()
    assert active is not None
    standby = next(name for name in plan.DIRECTORS if name != active)
    active_series = f'lvsctl_director_state{{job="{plan.PROMETHEUS_JOB}",state="ACTIVE"}}'
    took, last = _query_until(running, active_series, lambda r: _by_instance(r) == {
        _instance(active): 1.0, _instance(standby): 0.0}, 120)
    assert took is not None, f"Prometheus does not show {active} active: {last}"
    sock = in_netns(running.ns("client"), lambda: socket.create_connection(
        (plan.ECHO.vip, plan.ECHO.port), timeout=5))
    try:
        assert echo_round(sock, b"before\n") == b"before\n"
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
        assert echo_round(sock, b"after\n") == b"after\n"
    finally:
        sock.close()
    # Prometheus sees the active series move to the other director.
    took, last = _query_until(running, active_series, lambda r: _by_instance(r) == {
        _instance(active): 0.0, _instance(standby): 1.0}, 120)
    assert took is not None, f"Prometheus does not show {standby} active: {last}"
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
