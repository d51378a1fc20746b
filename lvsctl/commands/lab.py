"""``lvsctl lab up | demo | down | status``: a whole cluster on this machine (the test bed's
lab, lvsctl/testbed/lab/).

When this kernel has no IPVS, ``up`` and ``demo`` run inside the kernel VM (testbed/vm.py) and
say so. Processes in the VM end with it, so there ``up`` builds the lab, shows its status and
removes it again (use ``demo`` to see it work); on a kernel with IPVS ``up`` leaves it running
until ``lab down``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click

from lvsctl.output import echo_json, echo_table
from lvsctl.testbed import vm
from lvsctl.testbed.lab.build import DEFAULT_STATE_DIR, Lab, LabError, find_states
from lvsctl.testbed.lab.plan import DIRECTORS, SERVICES
from lvsctl.testbed.lab.results import results_json, timed_steps
from lvsctl.testbed.lab.steps import run_demo, status_rows

_DIR = click.option("--dir", "state_dir", type=click.Path(file_okay=False),
                    default=str(DEFAULT_STATE_DIR), show_default=True,
                    envvar="LVSCTL_LAB_DIR", show_envvar=True,
                    help="Where each lab keeps its state file, configs and logs.")
_HERE = click.option("--here", is_flag=True,
                     help="Run on this kernel even without IPVS (the VM runs it this way).")
_VM_TIMEOUT = click.option("--vm-timeout", type=click.FloatRange(60, 3600), default=900.0,
                           show_default=True, metavar="SECONDS",
                           help="Bound on the whole VM run when the lab runs in the VM.")


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _progress(line: str) -> None:
    """A progress line with --json: on stderr, so stdout carries only the JSON."""
    click.echo(line, err=True)


def _in_vm(args: list[str], timeout: float, *, to_stderr: bool = False,
           share: Path | None = None) -> int:
    """Run this lab command again inside the kernel VM; returns its exit code. ``to_stderr``
    sends everything it prints to stderr (stdout is for --json); ``share`` is a host folder
    the guest may write to (it sees it at the same path)."""
    echo = _progress if to_stderr else _echo
    echo("lab: this kernel has no IPVS: running the lab inside the kernel VM (Debian's "
         "kernel under QEMU; the lab ends when the VM does)")
    start = time.monotonic()
    result = vm.run([sys.executable, "-m", "lvsctl", "lab", *args, "--here"],
                    options=vm.VmOptions(memory="1G", cpus=2, timeout=timeout,
                                         shares=() if share is None else (share,)),
                    cwd=str(vm.repo_root()), progress=lambda line: echo(f"vm: {line}"),
                    stream=sys.stderr.buffer if to_stderr else sys.stdout.buffer)
    echo(f"lab: kernel VM: boot {result.boot_seconds:.1f} s, whole run "
         f"{time.monotonic() - start:.1f} s, exit {result.exit_code}")
    return result.exit_code


def _needs_vm(here: bool) -> bool:
    return not here and not vm.kernel_has_ipvs()


@click.group("lab")
def lab_group() -> None:
    """A whole cluster on this machine in network namespaces: ZooKeeper, two directors, NAT,
    DR and TUN real servers and a client."""


@lab_group.command("demo")
@_DIR
@_HERE
@_VM_TIMEOUT
@click.option("--json", "as_json", is_flag=True,
              help="Print the results as JSON on stdout (progress lines go to stderr).")
@click.option("--results", "results_file", type=click.Path(dir_okay=False), hidden=True,
              help="Also write the results as JSON to this file (how the VM hands them back).")
def demo_command(state_dir: str, here: bool, vm_timeout: float, as_json: bool,
                 results_file: str | None) -> None:
    """Build the lab, show traffic, a failing real server and two drills; remove it.

    Exit status 0 when every result passed, 1 otherwise.
    """
    echo = _progress if as_json else _echo
    if _needs_vm(here):
        if not as_json:
            raise SystemExit(_in_vm(["demo", "--dir", state_dir], vm_timeout))
        with tempfile.TemporaryDirectory(prefix="lvsctl-lab-") as tmp:
            handed = Path(tmp) / "results.json"
            code = _in_vm(["demo", "--dir", state_dir, "--results", str(handed)], vm_timeout,
                          to_stderr=True, share=Path(tmp))
            if not handed.exists():
                raise LabError(f"the lab in the kernel VM ended (exit {code}) without results")
            echo_json(json.loads(handed.read_text()))
        raise SystemExit(code)
    results, seconds = run_demo(Path(state_dir), echo)
    report = results_json(results, seconds)
    if results_file is not None:
        Path(results_file).write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        echo_json(report)
    else:
        _echo("")
        echo_table(["result", "step", "detail"],
                   [["pass" if r.passed else "FAIL", r.step, r.detail] for r in results])
        _echo(f"lab demo: {report['passed_count']}/{len(results)} passed in "
              f"{report['seconds']:.1f} s")
    raise SystemExit(0 if report["passed"] else 1)


@lab_group.command("up")
@_DIR
@_HERE
@_VM_TIMEOUT
@click.option("--once", is_flag=True, hidden=True,
              help="Show the status and remove the lab again (how the VM runs up).")
def up_command(state_dir: str, here: bool, vm_timeout: float, once: bool) -> None:
    """Build the lab and leave it running (until ``lvsctl lab down``).

    Without IPVS in this kernel it runs in the kernel VM, where it cannot outlive the command:
    it is built, its status shown, and removed.
    """
    if _needs_vm(here):
        raise SystemExit(_in_vm(["up", "--dir", state_dir, "--once"], vm_timeout))
    lab = Lab.create(Path(state_dir), _echo)
    try:
        with timed_steps(_echo) as step:
            active = lab.up(step)
    except BaseException:
        lab.down()
        raise
    _echo(f"lab {lab.state.lab_id} is up: {active} active; state in {lab.workdir}")
    if once:
        for name in DIRECTORS:
            _echo(f"{name}: ipvsadm -Ln\n{lab.ipvsadm(name).rstrip()}")
        lab.down()
        _echo("lab: removed again (the VM ends now; on a kernel with IPVS `lab up` keeps it)")
        return
    _echo(f"  traffic: ip netns exec {lab.ns('client')} busybox wget -qO- "
          f"http://{SERVICES[0].vip}/")
    for line in lab.endpoints():
        _echo(f"  {line}")
    _echo("  remove it: lvsctl lab down")


@lab_group.command("down")
@_DIR
@click.option("--id", "lab_id", metavar="ID", help="Only this lab (default: every lab).")
def down_command(state_dir: str, lab_id: str | None) -> None:
    """Remove what the lab made, also after a crash: its namespaces and its processes
    (by recorded PID and start time, never by name)."""
    states = [s for s in find_states(Path(state_dir)) if lab_id in (None, s.lab_id)]
    if not states:
        _echo(f"no lab under {state_dir}" + (f" with id {lab_id}" if lab_id else ""))
        return
    for state in states:
        removed = Lab(state).down()
        _echo(f"lab {state.lab_id}: removed {len(removed)} item(s)"
              + (f": {', '.join(removed)}" if removed else ""))


@lab_group.command("status")
@_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def status_command(state_dir: str, as_json: bool) -> None:
    """The labs under --dir: namespaces present, processes running, the active director."""
    rows = status_rows(Path(state_dir))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        _echo(f"no lab under {state_dir}")
        return
    echo_table(["id", "namespaces", "running", "active", "dir"],
               [[r["id"], f"{r['namespaces']}/{r['namespaces_recorded']}",
                 " ".join(r["running"]) or "-", r["active"] or "-", r["dir"]] for r in rows])
