"""What the lab demo drives and checks: the directors' IPVS tables, traffic through every
service, a health cycle per service, and drills, each judged into a Result.

The checks judge facts (the table equals the plan, every real server answers, a failed server
leaves and comes back only after ``rise`` checks), each waited for within a generous bound;
how fast things happen is shown, and measured in the benchmarks (bench/healthcheck.py,
bench/failover.py), not judged here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvsctl.core.config import load_cluster
from lvsctl.core.errors import LvsctlError
from lvsctl.core.node import load_node
from lvsctl.core.zk import Target, open_cluster
from lvsctl.director.dataplane import plan_cluster
from lvsctl.director.ipvs_kernel import KernelIpvs
from lvsctl.director.reconcile import Op, op_dict
from lvsctl.failover.access import ClusterView, ZkDirectors, read_token
from lvsctl.failover.drill import Drill, Expected
from lvsctl.failover.probe import Target as ProbeTarget
from lvsctl.failover.vipwatch import NetnsVipObserver
from lvsctl.testbed.lab.build import Echo, Lab, find_states, running_in_vm, wait_until
from lvsctl.testbed.lab.plan import (
    CHECK,
    DIRECTORS,
    HTTP_PORT,
    PEER_PORT,
    SERVICES,
    LabService,
    expected_listing,
    ipvsadm_services,
    spread,
)
from lvsctl.testbed.lab.results import Result, Step, timed_steps
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.netns_lab import NetnsLab


def plan_ops(lab: Lab, director: str) -> list[Op]:
    """What ``lvsctl ipvs plan`` would change in ``director``'s IPVS table to match the lab's
    cluster file (every real server counted healthy, as there). Raises LvsctlError."""
    loaded = load_cluster(str(lab.workdir / "cluster.yaml"))
    with KernelIpvs(netns=lab.ns(director)) as ipvs:
        return plan_cluster(ipvs, loaded.cluster).ops


def table_matches(lab: Lab, director: str) -> tuple[bool, str]:
    """Whether ``director``'s IPVS table is what the cluster file asks for: the plan against
    it finds nothing to change (``plan_ops``), and ``ipvsadm -Ln`` (the kernel read by another
    tool) lists exactly the lab's services and real servers with their forwarding and weight.
    """
    try:
        ops = plan_ops(lab, director)
    except LvsctlError as exc:
        return False, f"the IPVS plan failed: {exc}"
    if ops:
        return False, f"the IPVS plan has {len(ops)} op(s): {[op_dict(op) for op in ops[:3]]}"
    listed, wanted = ipvsadm_services(lab.ipvsadm(director)), expected_listing()
    if listed != wanted:
        differ = sorted(k for k in listed.keys() | wanted.keys()
                        if listed.get(k) != wanted.get(k))
        return False, "ipvsadm -Ln differs at " + "; ".join(
            f"{k}: lists {sorted(listed.get(k, ()))}, expected {sorted(wanted.get(k, ()))}"
            for k in differ[:3])
    dests = sum(len(d) for d in listed.values())
    return True, f"plan empty; ipvsadm -Ln lists {len(listed)} services, {dests} real servers"


def wait_table(lab: Lab, director: str, timeout: float = 30) -> Result:
    """Wait until ``director``'s table matches (``table_matches``): right after a change its
    checks and reconcile pass need a moment. The result says how long it took, or why not."""
    last = ""

    def matches() -> bool:
        nonlocal last
        ok, last = table_matches(lab, director)
        return ok

    took = wait_until(matches, timeout, 0.5)
    what = f"{director}'s IPVS table matches the plan (nothing to change) and `ipvsadm -Ln`"
    if took is None:
        return Result(what, False, f"not within {timeout:.0f} s: {last}")
    return Result(what, True, f"{last} (after {took:.1f} s)")


def wait_tables(lab: Lab, when: str, timeout: float = 30) -> list[Result]:
    """``wait_table`` on both directors (the standby keeps its table warm too)."""
    return [Result(f"{r.step} ({when})", r.passed, r.detail)
            for r in (wait_table(lab, name, timeout) for name in DIRECTORS)]


def traffic(lab: Lab, echo: Echo, count: int = 12, even: bool = True) -> list[Result]:
    """``count`` new connections to each service: every one answered, every real server
    reached and, with ``even``, round-robin's even spread.

    After a takeover the spread need not be even: the new active's table holds the
    connections it was synced or made earlier, and a client port reused while the director
    still keeps its entry (DR, TUN) goes to the same real server again, as IPVS intends.
    """
    out = []
    for svc in SERVICES:
        answers = lab.fetch(svc.vip, count)
        seen = spread(answers)
        expected = {rs for rs, _ in svc.realservers}
        ok = set(seen) == expected and (not even or max(seen.values()) - min(seen.values()) <= 1)
        text = ", ".join(f"{name} {n}" for name, n in seen.items())
        echo(f"lab:   {svc.mode.upper():3} {svc.vip}:{HTTP_PORT} {count} requests -> {text}")
        what = "traffic spread" if even else "every real server answers"
        out.append(Result(f"{svc.mode.upper()} {what} ({svc.name}, rr)", ok, text))
    return out


@dataclass(frozen=True)
class HealthRules:
    """What a health cycle is judged by, from the lab's check timing.

    A stopped real server must stop getting new connections, and get them again once
    restarted, each within ``wait`` seconds: a bound on waiting, generous for the VM's emulated
    CPU, not a speed (bench/healthcheck.py measures detection times). Hysteresis is a fact of
    order: a restarted server needs ``rise`` successful checks in a row, an interval apart, so
    it cannot be back before ``(rise - 1) x interval`` (less the scheduler's jitter, 10 ms at
    most) after its listener was started.
    """

    wait: float = 120.0

    @property
    def back_earliest(self) -> float:
        return (CHECK["rise"] - 1) * CHECK["interval"] * 0.9


def health_cycle(lab: Lab, echo: Echo, service: LabService = SERVICES[0],
                 rules: HealthRules = HealthRules()) -> list[Result]:
    """Stop one real server's listener: new connections must avoid it, and reach it again
    once it is restarted and has passed ``rise`` checks (not before)."""
    rs = service.realservers[0][0]
    lab.stop_listener(rs)

    def gone() -> bool:
        answers = lab.fetch(service.vip, 4, timeout=3.0)
        return all(a not in (rs, "-") for a in answers)

    left = wait_until(gone, rules.wait)
    left_text = "never" if left is None else f"after {left:.1f} s"
    echo(f"lab:   {service.mode.upper():3} {rs} stopped: new connections avoid it {left_text}")
    # The clock starts before the listener exists: no check can pass earlier.
    start = time.monotonic()
    lab.start_listener(rs)
    lab.wait_listening(rs)
    back = wait_until(lambda: rs in lab.fetch(service.vip, 4, timeout=3.0), rules.wait)
    earliest = None if back is None else time.monotonic() - start
    back_text = "never" if earliest is None else (
        f"{earliest:.1f} s after its start (hysteresis: not before {rules.back_earliest:.1f} s)")
    echo(f"lab:   {service.mode.upper():3} {rs} restarted: it answers again {back_text}")
    return [
        Result(f"{service.mode.upper()} {rs} leaves when unhealthy", left is not None,
               left_text if left is not None else f"still answered after {rules.wait:.0f} s"),
        # Coming back means something only after it left.
        Result(f"{service.mode.upper()} {rs} returns after rise",
               left is not None and earliest is not None
               and rules.back_earliest <= earliest, back_text),
    ]


class SlowStartLab(NetnsLab):
    """The drills' ``NetnsLab`` with patience for the VM: its VIP watchers are Python
    processes, and under the emulated CPU one takes well over the default 10 s to start."""

    def observer(self, vips: Sequence[str]) -> NetnsVipObserver:
        return NetnsVipObserver(dict(self.namespaces), vips, ready_timeout=90.0)


def netns_drill_lab(lab: Lab) -> NetnsLab:
    """The drills' ``Lab`` (testbed/netns_lab.py) for this lab's processes and namespaces."""
    return SlowStartLab({name: lab.ns(name) for name in DIRECTORS}, pid=lab.state.alive,
                        restarter=lab.start_director, zookeeper_port=2181,
                        # No probe namespace: drill() runs in the client's namespace already,
                        # so the probe runs as a thread there instead of a new Python process.
                        peer_port=PEER_PORT, client_netns=None)


def drill(lab: Lab, kind: str, echo: Echo) -> Result:
    """One round of ``kind`` (stepdown, crash) through the drills code, probing the NAT VIP."""
    cluster = load_cluster(str(lab.workdir / "cluster.yaml")).cluster
    node = load_node(str(lab.workdir / "lb1.node.yaml"))

    def go() -> Any:
        with open_cluster(Target.from_node(node), connect_timeout=15) as conn:
            # A generous API timeout: under the VM's emulated CPU on a busy host a director
            # may take many seconds to answer (a stepdown answers once it is done).
            directors = ZkDirectors(ClusterView(conn), read_token(lab.workdir / "api.token"),
                                    timeout=30.0,
                                    addresses={d.name: d.address for d in cluster.directors})
            the_drill = Drill(
                directors=directors, expected=Expected.from_cluster(cluster), kind=kind,
                rounds=1, cluster=cluster.name, lab=netns_drill_lab(lab),
                probe=ProbeTarget.parse(f"http://{SERVICES[0].vip}:{HTTP_PORT}/"),
                # A restarted director needs well over 30 s to rejoin in the VM, and minutes when
                # the emulated CPUs are saturated (its niced worker waits for a CPU): a bound on
                # waiting, not a time the drill measures.
                wait=300, on_progress=lambda line: echo(f"lab:   {line}"))
            # Right after the previous step (a restarted real server, a drill's own restart)
            # the pair may not be fit yet: a drill refuses an unfit pair, the lab waits.
            the_drill.wait_whole()
            return the_drill.run()

    # The drill talks to ZooKeeper and the directors' APIs from the client's namespace.
    report = in_netns(lab.ns("client"), go)
    parts = []
    for r in report.results:
        parts.append(f"{r.active_before} -> {r.active_after}, takeover "
                     f"{'-' if r.takeover is None else f'{r.takeover:.2f} s'}, client outage "
                     f"{'-' if r.outage is None else f'{r.outage:.2f} s'}, "
                     f"{r.failed_probes}/{r.probes} probes failed, VIP overlap {r.overlap:.2f} s"
                     + ("" if r.passed else f" ({r.reason})"))
    detail = "; ".join(parts) or (report.refused or "no round ran")
    # The drill judges the takeover; the demo also wants the client served again afterwards.
    served = all(r.failed_probes < r.probes for r in report.results)
    return Result(f"{kind} drill", report.passed and served, detail)


def demo(lab: Lab, step: Step, echo: Echo, results: list[Result]) -> list[Result]:
    """Every step of ``lvsctl lab demo``; appends to ``results`` as it goes (kept on failure)."""
    active = lab.up(step)
    echo(f"lab: {active} is active")
    for line in lab.endpoints():
        echo(f"lab:   {line}")
    with step("IPVS tables programmed by both directors (the standby's kept warm)"):
        results += wait_tables(lab, "after up", timeout=60)
        echo(lab.ipvsadm(active).rstrip())
    with step("traffic from the client through each service"):
        results += traffic(lab, echo)
    for svc in SERVICES:
        with step(f"health: a {svc.mode.upper()} real server fails and returns (check every "
                  f"{CHECK['interval']} s, fall {CHECK['fall']}, rise {CHECK['rise']})"):
            results += health_cycle(lab, echo, svc)
    results += wait_tables(lab, "after the health cycles")
    for kind in ("stepdown", "crash"):
        with step(f"{kind} drill with a client probe on the NAT VIP"):
            try:
                results.append(drill(lab, kind, echo))
            except LvsctlError as exc:
                results.append(Result(f"{kind} drill", False, str(exc)))
        results += wait_tables(lab, f"after the {kind} drill")
    with step("traffic after the drills: new connections reach every real server"):
        results += traffic(lab, echo, count=8, even=False)
    return results


def run_demo(state_dir: Path, echo: Echo) -> tuple[list[Result], float]:
    """Build a lab under ``state_dir``, run every ``demo`` step, remove it again; the results
    (a failure to build or remove is one more failed result) and the seconds it all took.

    After a failure the logs stay in the lab's folder, or, inside the kernel VM whose files
    go with it, the directors' last log lines are shown.
    """
    start = time.monotonic()
    lab = Lab.create(state_dir, echo)
    results: list[Result] = []
    try:
        with timed_steps(echo) as step:
            try:
                results = demo(lab, step, echo, results)
            finally:
                ok = bool(results) and all(r.passed for r in results)
                if not ok and running_in_vm():
                    for name in DIRECTORS:
                        echo(f"--- {name}.log, last lines")
                        echo(lab.log_tail(name))
                kept = not ok and not running_in_vm()
                with step("tear down" + (f" (logs kept in {lab.workdir})" if kept else "")):
                    lab.down(keep_logs=kept)
    except LvsctlError as exc:
        results.append(Result("demo", False, str(exc)))
    return results, time.monotonic() - start


def status_rows(state_dir: Path) -> list[dict[str, Any]]:
    """The labs under ``state_dir``: namespaces present, processes running, the active
    director (asked only when the lab's client namespace still exists)."""
    rows: list[dict[str, Any]] = []
    for state in find_states(state_dir):
        lab = Lab(state)
        present = [n for n in state.namespaces if Path(f"/run/netns/{n}").exists()]
        running = sorted(r for r in state.processes if state.alive(r) is not None)
        active = lab.active() if lab.ns("client") in present else None
        rows.append({"id": state.lab_id, "namespaces": len(present),
                     "namespaces_recorded": len(state.namespaces), "running": running,
                     "active": active, "dir": state.workdir})
    return rows
