"""Benchmark of the IPVS dataplane: 1,000 services x 10 real servers (10,000 dests).

Host part (any machine): plan() from an empty kernel, for a table that already matches (no-op)
and for one changed weight.
Kernel part (--kernel; needs IPVS, e.g. in the kernel VM): in a fresh network namespace, the
same table loaded by ``ipvsadm -R`` (the baseline) and by lvsctl (observe + plan + apply) in
the same run, as a ratio; a no-op resync (observe + plan) of the full table; and the netlink
writes for one changed weight. Times in a VM are only comparable as ratios within one run.

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
    Op,
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


def kernel_part(rounds: int) -> None:
    from lvsctl.director.ipvs import KernelIpvs, save_text

    desired = build()
    rules = save_text(as_observed(desired)).encode()
    name = f"lvsbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # With lo down the namespace has no local routing table, and the kernel refuses
        # every IPv4 dest (EINVAL, "address not unicast").
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with KernelIpvs(netns=name) as ipvs:
            base_ms, ours_ms, pass_ms = [], [], []
            ops: list[Op] = []
            for _ in range(rounds):
                _ns(name, "ipvsadm", "-C")
                t0 = time.perf_counter()
                _ns(name, "ipvsadm", "-R", stdin=rules)
                base_ms.append((time.perf_counter() - t0) * 1000)
                baseline_table = _ns(name, "ipvsadm", "-S", "-n")
                _ns(name, "ipvsadm", "-C")

                t0 = time.perf_counter()
                observed = ipvs.observe(stats=False)
                ops = plan(desired, observed, {}, 0.0)
                t1 = time.perf_counter()
                ipvs.apply_all(ops)
                t2 = time.perf_counter()
                ours_ms.append((t2 - t1) * 1000)
                pass_ms.append((t2 - t0) * 1000)
                assert _ns(name, "ipvsadm", "-S", "-n") == baseline_table, "tables differ"
            base, ours, whole = (statistics.median(x) for x in (base_ms, ours_ms, pass_ms))
            print(f"ipvsadm -R (baseline):      {base:8.0f} ms  ({len(ops)} rules; median of "
                  f"{rounds}, includes starting ip netns exec + ipvsadm)")
            print(f"lvsctl apply_all:           {ours:8.0f} ms  ({len(ops)} ops; ratio "
                  f"{ours / base:.2f} x ipvsadm -R; goal <= 2)")
            print(f"lvsctl observe+plan+apply:  {whole:8.0f} ms  (ratio {whole / base:.2f})")

            t0 = time.perf_counter()
            observed = ipvs.observe(stats=False)
            t1 = time.perf_counter()
            noop = plan(desired, observed, {}, 0.0)
            t2 = time.perf_counter()
            assert noop == []
            print(f"no-op resync:               {(t2 - t0) * 1000:8.0f} ms  (observe "
                  f"{(t1 - t0) * 1000:.0f} ms + plan {(t2 - t1) * 1000:.0f} ms; 0 ops)")
            t0 = time.perf_counter()
            full = ipvs.observe(stats=True)
            t1 = time.perf_counter()
            _ns(name, "ipvsadm", "-L", "-n", "--stats")
            t2 = time.perf_counter()
            assert sum(len(s.dests) for s in full.values()) == SERVICES * DESTS
            print(f"observe with stats:         {(t1 - t0) * 1000:8.0f} ms  (ipvsadm -Ln --stats: "
                  f"{(t2 - t1) * 1000:.0f} ms, ratio {(t1 - t0) / (t2 - t1):.2f})")

            before = ipvs.writes
            changed = one_weight_changed(desired)
            t0 = time.perf_counter()
            ops = plan(changed, ipvs.observe(stats=False), {}, 0.0)
            ipvs.apply_all(ops)
            ms = (time.perf_counter() - t0) * 1000
            writes = ipvs.writes - before
            print(f"one changed weight:         {ms:8.0f} ms  ({len(ops)} op, {writes} netlink "
                  f"write(s); goal 1)")
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
