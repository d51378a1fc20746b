"""Benchmark of the IPVS dataplane: 1,000 services x 10 real servers (10,000 dests).

Host part (any machine): plan() from an empty kernel, for a table that already matches (no-op)
and for one changed weight.

Kernel part (--kernel; needs IPVS, e.g. in the kernel VM), in a fresh network namespace, each
comparison against ipvsadm in the same run, as a ratio, and always the same work on both sides:

- Loading the table, start-up excluded on both sides: ``ipvsadm -R`` of the rules minus
  ``ipvsadm -R`` of an empty file (the same process start, ``ip netns exec`` included, and
  libipvs's set-up), against lvsctl in-process: open the table, observe, plan, apply through
  the reconcile driver, from the desired table in memory.
- Reading the table and printing it as rules, both as processes started the same way
  (``ip netns exec NS ipvsadm -S -n`` and ``ip netns exec NS lvsctl ipvs save``), whose output
  must be equal.
- A no-op resync and one changed weight (in-process; the weight must be one netlink write).

Times in a VM are only comparable as ratios within one run.

    .venv/bin/python bench/reconcile.py                 # host part
    .venv/bin/lvsctl vm run -- .venv/bin/python bench/reconcile.py --kernel
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lvsctl.core.model import (
    DestKey,
    DestSpec,
    Forwarding,
    Protocol,
    ServiceKey,
    ServiceSpec,
)
from lvsctl.director.reconcile import (
    DesiredService,
    EditDest,
    ObservedDest,
    ObservedService,
    plan,
)

SERVICES = 1000
DESTS = 10


def build(services: int = SERVICES, dests: int = DESTS) -> dict[ServiceKey, DesiredService]:
    """A table like a big site's: TCP services on 1,000 VIPs, 10 NAT real servers each."""
    table = {}
    for i in range(services):
        key = ServiceKey.inet(Protocol.TCP, f"10.100.{i // 250}.{i % 250 + 1}", 80)
        members = {
            DestKey(f"10.{200 + j}.{i // 250}.{i % 250 + 1}", 8080): DestSpec(1 + j % 5,
                                                                            Forwarding.NAT)
            for j in range(dests)
        }
        table[key] = DesiredService(key, ServiceSpec("wlc"), members, 60.0)
    return table


def as_observed(desired: dict[ServiceKey, DesiredService]) -> dict[ServiceKey, ObservedService]:
    return {
        key: ObservedService(key, s.spec, {
            d: ObservedDest(d, spec.weight, spec.forwarding.value)
            for d, spec in s.dests.items()
        })
        for key, s in desired.items()
    }


def one_weight_changed(desired: dict[ServiceKey, DesiredService]
                       ) -> dict[ServiceKey, DesiredService]:
    key = sorted(desired, key=lambda k: k.address or "")[SERVICES // 2]
    service = desired[key]
    dkey = next(iter(service.dests))
    dests = dict(service.dests)
    dests[dkey] = replace(dests[dkey], weight=dests[dkey].weight + 7)
    return {**desired, key: replace(service, dests=dests)}


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time in ms over ``repeat`` runs, and the last result."""
    times = []
    result: object = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def host_part(repeat: int) -> None:
    desired = build()
    observed = as_observed(desired)
    changed = one_weight_changed(desired)
    print(f"table: {SERVICES} services x {DESTS} dests = {SERVICES * DESTS} dests")
    ms, ops = timed(lambda: plan(desired, {}, {}, 0.0), repeat)
    assert isinstance(ops, list) and len(ops) == SERVICES * (DESTS + 1)
    print(f"plan() from empty:          {ms:8.1f} ms  ({len(ops)} ops; median of {repeat})")
    ms, ops = timed(lambda: plan(desired, observed, {}, 0.0), repeat)
    assert ops == []
    print(f"plan() no-op:               {ms:8.1f} ms  (0 ops; goal < 50 ms)")
    ms, ops = timed(lambda: plan(changed, observed, {}, 0.0), repeat)
    assert isinstance(ops, list) and len(ops) == 1 and isinstance(ops[0], EditDest)
    print(f"plan() one changed weight:  {ms:8.1f} ms  (1 op)")


def _ns(name: str, *argv: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["ip", "netns", "exec", name, *argv], input=stdin,
                          capture_output=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): "
                         f"{done.stderr.decode(errors='replace')[:500]}")
    return done.stdout


def _process_ms(name: str, *argv: str, stdin: bytes | None = None) -> tuple[float, bytes]:
    """Wall time of ``ip netns exec name argv`` from spawn to exit, and its output."""
    t0 = time.perf_counter()
    out = _ns(name, *argv, stdin=stdin)
    return (time.perf_counter() - t0) * 1000, out


def _load_in_process(name: str, desired: dict[ServiceKey, DesiredService]) -> tuple[float, float]:
    """lvsctl's load of the table: open, observe, plan, apply. (whole ms, apply ms)."""
    from lvsctl.director import ipvs_codec
    from lvsctl.director.dataplane import Outcome, apply_ops
    from lvsctl.director.ipvs_kernel import KernelIpvs

    ipvs_codec.service_key_nest.cache_clear()  # every round starts cold, as a process does
    t0 = time.perf_counter()
    with KernelIpvs(netns=name) as ipvs:
        ops = plan(desired, ipvs.observe(stats=False), {}, 0.0)
        t1 = time.perf_counter()
        results = apply_ops(ipvs, ops)
    t2 = time.perf_counter()
    assert all(r.outcome is Outcome.APPLIED for r in results), "an op was not applied"
    return (t2 - t0) * 1000, (t2 - t1) * 1000


def kernel_part(rounds: int) -> None:
    from lvsctl.director.dataplane import apply_ops
    from lvsctl.director.ipvs_kernel import KernelIpvs
    from lvsctl.director.ipvs_text import save_text

    desired = build()
    rules = save_text(as_observed(desired)).encode()
    lvsctl = str(Path(sys.executable).parent / "lvsctl")
    name = f"lvsbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # With lo down the namespace has no local routing table, and the kernel refuses
        # every IPv4 dest (EINVAL, "address not unicast").
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        start_ms, base_ms, ours_ms, apply_ms = [], [], [], []
        for _ in range(rounds):
            _ns(name, "ipvsadm", "-C")
            start_ms.append(_process_ms(name, "ipvsadm", "-R", stdin=b"")[0])
            base_ms.append(_process_ms(name, "ipvsadm", "-R", stdin=rules)[0])
            baseline_table = _ns(name, "ipvsadm", "-S", "-n")
            _ns(name, "ipvsadm", "-C")
            whole, applied = _load_in_process(name, desired)
            ours_ms.append(whole)
            apply_ms.append(applied)
            assert _ns(name, "ipvsadm", "-S", "-n") == baseline_table, "tables differ"
        start, total, ours, alone = (statistics.median(x)
                                     for x in (start_ms, base_ms, ours_ms, apply_ms))
        base = total - start
        rule_count = SERVICES * (DESTS + 1)
        print(f"load {rule_count} rules/ops into an empty table, start-up excluded on both sides "
              f"(median of {rounds}):")
        print(f"  ipvsadm -R (baseline):          {base:8.0f} ms  (process {total:.0f} ms - "
              f"start-up {start:.0f} ms: ipvsadm -R of an empty file)")
        print(f"  lvsctl open+observe+plan+apply: {ours:8.0f} ms  (in-process; ratio "
              f"{ours / base:.2f} x ipvsadm -R; goal <= 2)")
        print(f"    of which apply_ops:           {alone:8.0f} ms  (ratio {alone / base:.2f})")

        theirs_ms, save_ms = [], []
        for _ in range(rounds):
            ms, theirs = _process_ms(name, "ipvsadm", "-S", "-n")
            theirs_ms.append(ms)
            ms, ours_text = _process_ms(name, lvsctl, "ipvs", "save")
            save_ms.append(ms)
            assert ours_text == theirs, "lvsctl ipvs save differs from ipvsadm -S -n"
        theirs_med, save_med = statistics.median(theirs_ms), statistics.median(save_ms)
        print(f"read the table and print it as rules, both as processes through ip netns exec "
              f"(median of {rounds}, equal output):")
        print(f"  ipvsadm -S -n (baseline):       {theirs_med:8.0f} ms")
        print(f"  lvsctl ipvs save:               {save_med:8.0f} ms  (ratio "
              f"{save_med / theirs_med:.2f}; includes Python's start-up and imports)")

        with KernelIpvs(netns=name) as ipvs:
            t0 = time.perf_counter()
            observed = ipvs.observe(stats=False)
            t1 = time.perf_counter()
            noop = plan(desired, observed, {}, 0.0)
            t2 = time.perf_counter()
            assert noop == []
            print(f"no-op resync (in-process):      {(t2 - t0) * 1000:8.0f} ms  (observe "
                  f"{(t1 - t0) * 1000:.0f} ms + plan {(t2 - t1) * 1000:.0f} ms; 0 ops)")
            t0 = time.perf_counter()
            full = ipvs.observe(stats=True)
            print(f"observe with stats (in-process):{(time.perf_counter() - t0) * 1000:8.0f} ms")
            assert sum(len(s.dests) for s in full.values()) == SERVICES * DESTS

            before = ipvs.writes
            changed = one_weight_changed(desired)
            t0 = time.perf_counter()
            ops = plan(changed, ipvs.observe(stats=False), {}, 0.0)
            apply_ops(ipvs, ops)
            ms = (time.perf_counter() - t0) * 1000
            writes = ipvs.writes - before
            print(f"one changed weight (in-process):{ms:8.0f} ms  ({len(ops)} op, {writes} "
                  f"netlink write(s); goal 1)")
            assert writes == 1
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", action="store_true",
                        help="also measure against the kernel (needs IPVS and root)")
    parser.add_argument("--repeat", type=int, default=5, help="plan() runs per figure")
    parser.add_argument("--rounds", type=int, default=2, help="full loads per tool (kernel)")
    args = parser.parse_args()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().release}, "
          f"{os.cpu_count()} CPUs, load {load}")
    host_part(args.repeat)
    if args.kernel:
        kernel_part(args.rounds)


if __name__ == "__main__":
    main()
