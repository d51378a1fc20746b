"""Failover benchmark: lvsctl's director pair against keepalived's VRRP pair, in one run.

For each pair and each way of losing the active (graceful stop = SIGTERM; crash = SIGKILL;
freeze = SIGSTOP, resumed with SIGCONT after the round),
over N rounds: the takeover time (signal sent -> the VIP is present on the other director AND
a gratuitous ARP from it was seen on the bridge) and the VIP overlap (how long both directors
had the VIP configured at the same time, from netlink address events in both namespaces).

    sudo .venv/bin/python -m bench.failover [--rounds 20] [--only lvsctl|keepalived]
                                            [--kinds graceful,kill,freeze]

Pairs: lvsctl (ZooKeeper session timeout 3 s, VIP lease 1 s, real ZooKeeper in its own
namespace), keepalived VRRPv2 advert_int 1 (its defaults), keepalived VRRPv3 advert_int 0.1.
Every run is bounded: a round that does not complete within its limit counts as a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The director pair's launcher is still test support (see pyproject's import contracts).
from lvsctl.testbed.director_pair import ADDRS, VIP, AddrWatch, DirectorPair
from lvsctl.testbed.netns import Lab, Netns, in_netns, run
from lvsctl.testbed.overlap import overlap

ETH_P_ARP = 0x0806


@dataclass
class GarpWatch:
    """Gratuitous ARPs for the VIP seen on the bridge: (monotonic time, sender MAC)."""

    hub: Netns
    bridge: str
    seen: list[tuple[float, bytes]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((self.bridge, 0))
            return sock

        self.sock: socket.socket = in_netns(self.hub.name, make)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        vip = socket.inet_aton(VIP)
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            frame = self.sock.recv(2048)
            now = time.monotonic()
            # sender IP == target IP == VIP: gratuitous (request or reply)
            if len(frame) >= 42 and frame[28:32] == vip and frame[38:42] == vip:
                self.seen.append((now, frame[22:28]))

    def first_after(self, t: float, mac: bytes) -> float | None:
        for when, sender in list(self.seen):
            if when >= t and sender == mac:
                return when
        return None

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


def mac_of(ns: Netns, ifname: str = "eth0") -> bytes:
    text = Path(f"/sys/class/net/{ifname}/address")
    out = ns.run(["cat", str(text)])
    return bytes.fromhex(out.strip().replace(":", ""))


@dataclass
class Round:
    takeover: float | None  # seconds; None = did not happen within the limit
    overlap: float  # seconds both held the VIP, from the signal until the lost one is back
    left_behind: bool  # the lost director still had the VIP at the end of the round


class Pair:
    """What the benchmark needs of a director pair."""

    name: str
    watches: dict[str, AddrWatch]
    ns: dict[str, Netns]

    def holder(self) -> str | None:
        held = [n for n, w in self.watches.items() if w.holds(VIP)]
        return held[0] if len(held) == 1 else None

    def lose(self, who: str, sig: int) -> None: ...

    def restore(self, who: str) -> None: ...


def wait(predicate: Callable[[], bool], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def measure(pair: Pair, garps: GarpWatch, sig: int, limit: float) -> Round:
    if not wait(lambda: pair.holder() is not None, 20):
        raise RuntimeError(f"{pair.name}: nobody holds the VIP before the round")
    active = pair.holder()
    assert active is not None
    other = next(n for n in pair.watches if n != active)
    mac = mac_of(pair.ns[other])
    t0 = time.monotonic()
    pair.lose(active, sig)
    took: float | None = None

    def done() -> bool:
        ivs = pair.watches[other].intervals(VIP, float("inf"))
        added = ivs[-1][0] if ivs and ivs[-1][1] == float("inf") and ivs[-1][0] >= t0 else None
        garp = garps.first_after(t0, mac)
        if added is None or garp is None:
            return False
        nonlocal took
        took = max(added, garp) - t0
        return True

    wait(done, limit)
    time.sleep(0.3)  # let a late removal on the lost side show up
    left = pair.watches[active].holds(VIP)
    # Bring the lost director back (restart, or SIGCONT after a freeze) inside the measured
    # window: a resumed director that re-added the VIP would count as an overlap.
    pair.restore(active)
    time.sleep(0.5)
    end = time.monotonic()
    both = overlap(
        [iv for iv in pair.watches[active].intervals(VIP, end) if iv[1] >= t0],
        [iv for iv in pair.watches[other].intervals(VIP, end) if iv[1] >= t0],
    )
    return Round(took, both, left)


# ---------------------------------------------------------------------------------------------
# lvsctl
# ---------------------------------------------------------------------------------------------


class LvsctlPair(Pair):
    name = "lvsctl (ZooKeeper session 3 s, VIP lease 1 s)"

    def __init__(self, lab: Lab) -> None:
        self.pair = DirectorPair(lab, vip6=False)

    def setup(self) -> tuple[Netns, str]:
        self.pair.setup()
        self.watches, self.ns = self.pair.watches, self.pair.ns
        self.pair.start("lb1")
        self.pair.wait_holder("lb1", 30)
        self.pair.start("lb2")
        self.standby("lb2")
        return self.pair.hub, self.pair.bridge

    def standby(self, name: str) -> None:
        self.pair.wait(lambda: (self.pair.status(name) or {}).get("role") == "STANDBY", 30,
                       f"{name} standby")

    def lose(self, who: str, sig: int) -> None:
        self.pair.signal(who, sig)

    def restore(self, who: str) -> None:
        if self.pair.procs[who].poll() is None:
            # Frozen: resumed, it must find itself fenced and come back as the standby.
            self.pair.signal(who, signal.SIGCONT)
            self.standby(who)
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.pair.procs[who].wait(timeout=10)
        self.pair.start(who)
        self.standby(who)

    def close(self) -> None:
        self.pair.close()


# ---------------------------------------------------------------------------------------------
# keepalived (Debian 2.2.7, VRRP only)
# ---------------------------------------------------------------------------------------------

KEEPALIVED_CONF = """\
global_defs {{
    router_id {name}
    vrrp_version {version}
    enable_script_security
}}
vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/32 dev eth0
    }}
}}
"""


class KeepalivedPair(Pair):
    def __init__(self, lab: Lab, version: int, advert: float) -> None:
        self.lab = lab
        self.version = version
        self.advert = advert
        self.name = f"keepalived VRRPv{version} advert_int {advert:g}"
        self.workdir = Path(tempfile.mkdtemp(prefix="lvsctl-bench-ka-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.watches = {}
        self.ns = {}

    def setup(self) -> tuple[Netns, str]:
        self.hub = self.lab.netns("khub")
        self.bridge = self.lab.bridge(self.hub)
        for i, (name, addr) in enumerate(ADDRS.items()):
            ns = self.lab.netns(f"k{i}")
            self.ns[name] = ns
            self.lab.attach(ns, f"{addr}/24", self.hub, self.bridge, "eth0")
            watch = AddrWatch(ns, frozenset({VIP}))
            watch.start()
            self.watches[name] = watch
        self.start("lb1")
        if not wait(lambda: self.holder() == "lb1", 30):
            raise RuntimeError(f"{self.name}: lb1 never became master")
        self.start("lb2")
        time.sleep(max(1.0, 3 * self.advert))
        return self.hub, self.bridge

    def start(self, name: str) -> None:
        conf = self.workdir / f"{name}.conf"
        conf.write_text(KEEPALIVED_CONF.format(
            name=name, version=self.version, priority=150 if name == "lb1" else 100,
            advert=f"{self.advert:g}", vip=VIP))
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs[name] = self.lab.start(self.ns[name], [
            "keepalived", "--dont-fork", "--vrrp", "--log-console", "--log-detail",
            "-f", str(conf), "-p", str(self.workdir / f"{name}.pid"),
            "-r", str(self.workdir / f"{name}.vrrp.pid"),
        ], stdout=log, stderr=log)

    def lose(self, who: str, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            # A crash: every keepalived process of that director dies at once (parent and
            # VRRP child), as on a kernel panic or an OOM kill.
            # Frozen first, so that no process sees another die and shuts down cleanly (the
            # VRRP child would send a priority-0 advert when its parent goes).
            pids = run(["ip", "netns", "pids", self.ns[who].name], check=False).split()
            for sig_ in dict.fromkeys((signal.SIGSTOP, sig)):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), sig_)
        else:
            self.procs[who].send_signal(sig)

    def restore(self, who: str) -> None:
        if self.procs[who].poll() is None:
            # Frozen: a resumed keepalived master would fight the new one; start it afresh.
            for pid in run(["ip", "netns", "pids", self.ns[who].name], check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[who].wait(timeout=10)
        # keepalived leaves a crashed master's VIP configured: remove it by hand, as an
        # operator would have to.
        self.ns[who].run(["ip", "addr", "del", f"{VIP}/32", "dev", "eth0"], check=False)
        wait(lambda: not run(["ip", "netns", "pids", self.ns[who].name], check=False).split(), 10)
        for pidfile in (f"{who}.pid", f"{who}.vrrp.pid"):
            (self.workdir / pidfile).unlink(missing_ok=True)
        self.start(who)
        time.sleep(max(1.0, 4 * self.advert))  # comes up BACKUP (nopreempt) and settles

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for watch in self.watches.values():
            watch.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, kind: str, rounds: list[Round]) -> dict[str, object]:
    took = [r.takeover * 1000 for r in rounds if r.takeover is not None]
    overlaps = [r for r in rounds if r.overlap > 0]
    row = {
        "pair": name, "kind": kind, "rounds": len(rounds), "completed": len(took),
        "p50_ms": statistics.median(took) if took else None,
        "p90_ms": pct(took, 0.9) if took else None,
        "overlap_rounds": len(overlaps),
        "overlap_max_ms": max((r.overlap for r in overlaps), default=0.0) * 1000,
        "left_behind": sum(r.left_behind for r in rounds),
    }
    print(f"  {name:<48} {kind:<9} takeover p50 {fmt(row['p50_ms'])} p90 {fmt(row['p90_ms'])}"
          f"  completed {len(took)}/{len(rounds)}  both held the VIP in {len(overlaps)} of "
          f"{len(rounds)} rounds (max {row['overlap_max_ms']:.0f} ms); the lost director kept "
          f"the VIP in {row['left_behind']}", flush=True)
    return row


def fmt(ms: object) -> str:
    return f"{ms:7.1f} ms" if isinstance(ms, float | int) else "      - "


KINDS = {
    "graceful": ("graceful", signal.SIGTERM, 10.0),
    "kill": ("kill -9", signal.SIGKILL, 15.0),
    "freeze": ("freeze", signal.SIGSTOP, 15.0),
}


def bench(pair: Pair, lab: Lab, rounds: int, kinds: list[str]) -> list[dict[str, object]]:
    hub, bridge = pair.setup()  # type: ignore[attr-defined]
    garps = GarpWatch(hub, bridge)
    garps.start()
    rows = []
    try:
        for kind, sig, limit in (KINDS[k] for k in kinds):
            results = []
            for i in range(rounds):
                results.append(measure(pair, garps, sig, limit))
                print(f"    {kind} round {i + 1}/{rounds}: "
                      f"{fmt(results[-1].takeover * 1000 if results[-1].takeover else None)}"
                      f" overlap {results[-1].overlap * 1000:.0f} ms"
                      f"{' (VIP left behind)' if results[-1].left_behind else ''}",
                      file=sys.stderr, flush=True)
            rows.append(report(pair.name, kind, results))
    finally:
        garps.stop()
        pair.close()  # type: ignore[attr-defined]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices=["lvsctl", "keepalived"])
    parser.add_argument("--kinds", default="graceful,kill,freeze",
                        help="comma-separated: graceful, kill, freeze")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds: expected a comma-separated subset of {', '.join(KINDS)}")
    argv = ["sudo", ".venv/bin/python", "-m", "bench.failover", *sys.argv[1:]]
    print(f"command: {' '.join(argv)}")
    print(f"rounds: {args.rounds} per kind; takeover = signal -> VIP on the other + GARP seen")
    rows = []
    lab = Lab()
    try:
        makers: list[Callable[[], Pair]] = []
        if args.only in (None, "lvsctl"):
            makers.append(lambda: LvsctlPair(lab))
        if args.only in (None, "keepalived"):
            makers.append(lambda: KeepalivedPair(lab, 2, 1.0))
            makers.append(lambda: KeepalivedPair(lab, 3, 0.1))
        for make in makers:
            rows += bench(make(), lab, args.rounds, kinds)
    finally:
        lab.close()
    print("\nsummary")
    for row in rows:
        print(f"  {row['pair']:<48} {row['kind']:<9} p50 {fmt(row['p50_ms'])} "
              f"p90 {fmt(row['p90_ms'])}  both held in {row['overlap_rounds']}/{row['rounds']}"
              f"  lost one kept it in {row['left_behind']}/{row['rounds']}")


if __name__ == "__main__":
    main()
