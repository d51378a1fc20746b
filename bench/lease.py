"""Benchmark: the active director's longest gap between VIP renewals, quiet and under load.

A real director (``lvsctl director run``, real ZooKeeper, file-backed fake IPVS) holds the VIP
in a network namespace; the bench watches that namespace's kernel address events, with no help
from the director: every renewal (``replace`` with a lifetime) is an RTM_NEWADDR stamped by the
kernel, and the VIP vanishing is an RTM_DELADDR (lvsctl/testbed/renewals.py). Loads, one after
the other in one run, each measured over its own window after a quiet baseline:

- ``quiet``: nothing but the base config (10 real servers checked over HTTP);
- ``api``: many clients on the director's HTTP API at once, plus half-open connections;
- ``slowloris``: half-open API connections that send one more header byte every second;
- ``checks``: HTTP checks of ``--servers`` real servers (listeners in a real-server namespace),
  measured once the director has reconciled them (its log shows no IPVS change for 2 s);
- ``push``: ``lvsctl config push`` of a large valid file (``--push-bytes``), repeated until
  the window ends (at most ``--pushes``), each waited for until the director applied it;
- ``endless`` / ``slow``: real servers that send a status line and then a header that never
  ends (as fast as read / one byte every 100 ms);
- ``chatty``: a misc check whose command prints without end;
- ``peer``: a flood of datagrams to the director's peer port.

A gap that crosses a window's edge counts in the window; setting a load up and taking it down
(pushing its config, waiting for its reconcile) is not measured. Every traffic load is a
bounded process of its own in a namespace the bench made; ``--quick`` is a short run.

The director's IPVS is the test bed's file-backed fake, which rewrites its whole file for every
op, and today's daemon applies op by op: a table of thousands of dests takes minutes to build.
Hence the settle wait before ``checks`` (and ``--settle-timeout``), and ``push`` last: the
reconcile that follows a large push is not waited for.

    sudo .venv/bin/python bench/lease.py [--duration 20] [--servers 5000]
        [--loads quiet,api,checks,push] [--push-bytes 500000] [--pair] [--quick] [--json]

The last line is ``longest renewal gap: N ms`` over the loads other than ``quiet``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyroute2.netns import popns, pushns  # noqa: E402

from bench.director_pair import ADDRS, API_PORT, PEER_PORT, VIP, BenchLab  # noqa: E402
from lvsctl.testbed.loads import (  # noqa: E402
    MAX_SERVERS,
    PORT_ENDLESS,
    PORT_SLOW,
    LoadProcess,
    bulk_services,
    chatty_misc_services,
    farm_services,
    hostile_http_services,
)
from lvsctl.testbed.renewals import RenewalWatch, subscribe, window_figures  # noqa: E402

ACTIVE = "lb1"
LEASE_LOADS = ("quiet", "api", "checks", "push")
HOSTILE_LOADS = ("quiet", "endless", "slow", "chatty", "api", "slowloris", "peer", "push")
ALL_LOADS = ("quiet", "checks", "push", "api", "endless", "slow", "chatty", "peer", "slowloris")
BASE_SERVERS = 10
APPLY_TIMEOUT = 60.0  # a large config on a busy machine: seconds, not minutes
SETTLE = 2.0  # after a config change, before a window opens (first checks, reconcile)
RSS_LIMIT = 1 << 30  # the chatty check must not take the shared machine's memory


class BenchError(RuntimeError):
    """The bench could not set a load up."""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """This thread in ``netns`` (sockets opened here stay there), then back."""
    pushns(netns)
    try:
        yield
    finally:
        popns()


@dataclass
class Window:
    """One load's measured interval and what the load itself counted."""

    load: str
    start: float
    end: float
    notes: dict[str, Any] = field(default_factory=dict)


class LeaseBench:
    """The lab, the watch on the active director, and one method per load."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab: BenchLab | None = None
        self.watch: RenewalWatch | None = None
        self.farm: LoadProcess | None = None
        self.pid = 0
        self._log_at = 0
        self._pushed = ""  # the text the cluster holds: pushing it again changes nothing
        self._last = False  # the last load need not put the base config back
        self.interrupted = ""

    # -- the lab ---------------------------------------------------------------------------

    def base(self) -> list[str]:
        # Its own names, addresses and ports: the loads' farms come on top of it.
        return farm_services(VIP, BASE_SERVERS, name="base", first=MAX_SERVERS - BASE_SERVERS,
                             first_port=9000)

    def config(self, *extra: list[str]) -> str:
        assert self.lab is not None
        lines = [*self.lab.head(), *self.base()]
        for block in extra:
            lines += block
        return "\n".join([*lines, ""])

    def open(self) -> None:
        progress("starting ZooKeeper, the namespaces and the real servers")
        self.lab = BenchLab.open(self.base())
        self._pushed = self.config()
        # Real servers for the whole run (the loads end by themselves, this one with the run).
        self.farm = LoadProcess("serve", ["--duration", str(self.args.budget)],
                                netns=self.lab.rs_ns).start()
        with inside(self.lab.netns(ACTIVE)):
            self.watch = RenewalWatch(subscribe(), frozenset({VIP})).start()
        progress(f"starting director {ACTIVE}")
        self.pid = self.lab.start(ACTIVE)
        self.lab.wait_holder(ACTIVE, timeout=60)
        if self.args.pair:
            self.lab.start("lb2")
        self._log_at = 0
        self.wait_applied(0)  # the base config, before the first window
        self.wait_settled()

    def close(self) -> None:
        if self.farm is not None:
            self.farm.stop()
        if self.watch is not None:
            self.watch.stop()
        if self.lab is not None:
            self.lab.close()

    # -- config changes ------------------------------------------------------------------------

    def wait_applied(self, pushes: int, timeout: float = APPLY_TIMEOUT) -> str:
        """Wait until the active's log says ``pushes`` more configs were applied or rejected;
        the last verdict (``timeout`` if none came in ``timeout`` s)."""
        assert self.lab is not None
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            events, self._log_at = self.lab.log_events(ACTIVE, self._log_at)
            seen += [e for e in events if e in ("config_applied", "config_rejected")]
            if len(seen) >= max(pushes, 1):
                return seen[-1]
            time.sleep(0.05)
        return "timeout"

    def wait_settled(self) -> dict[str, Any]:
        """Wait until the active's log shows no IPVS change for SETTLE s (the reconcile of a
        new config is done), at most --settle-timeout s; how long that took."""
        assert self.lab is not None
        started = time.monotonic()
        quiet_since = started
        while time.monotonic() - started < self.args.settle_timeout:
            events, self._log_at = self.lab.log_events(ACTIVE, self._log_at)
            now = time.monotonic()
            if "ipvs_op" in events:
                quiet_since = now
            elif now - quiet_since >= SETTLE:
                return {"settle_s": round(now - started, 1)}
            time.sleep(0.1)
        return {"settle_s": round(time.monotonic() - started, 1), "settled": False}

    def change_config(self, text: str, what: str,
                      timeout: float = APPLY_TIMEOUT) -> dict[str, Any]:
        """Push ``text`` and wait (at most ``timeout`` s) until the active director took it;
        the push's figures."""
        assert self.lab is not None
        if text == self._pushed:
            return {"push": "unchanged"}
        progress(f"pushing {what} ({len(text) // 1000} KB)")
        started = time.monotonic()
        proc = self.lab.push(text)
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            progress(f"push refused: {reason[0]}")
            return {"push": "refused", "reason": reason[0]}
        self._pushed = text
        verdict = self.wait_applied(1, timeout)
        return {"push": verdict, "bytes": len(text),
                "push_s": round(time.monotonic() - started, 2)}

    def with_config(self, name: str, extra: list[str], what: str,
                    during: Callable[[], dict[str, Any]] | None = None) -> Window:
        """Apply base + ``extra``, settle, measure a window, go back to the base config."""
        notes = self.change_config(self.config(extra), what)
        if notes["push"] != "config_applied":
            # The bench's own file: refused or never applied is a fault of the bench or the
            # director, not a figure.
            raise BenchError(f"load {name}: the config was not applied: {notes}")
        notes.update(self.wait_settled())
        start = time.monotonic()
        notes.update(during() if during is not None else self.sleep_watching_rss())
        end = time.monotonic()
        self.back_to_base()
        return Window(name, start, end, notes)

    def back_to_base(self) -> None:
        """Between loads (not measured): the base config again, and a moment to settle."""
        if not self._last:
            self.change_config(self.config(), "the base config back")
            self.wait_settled()

    def sleep_watching_rss(self) -> dict[str, Any]:
        """Sleep the window out; stop early if the director's memory passes RSS_LIMIT."""
        deadline = time.monotonic() + self.args.duration
        peak = 0
        while time.monotonic() < deadline:
            peak = max(peak, rss(self.pid))
            if peak > RSS_LIMIT:
                return {"rss_mb": peak >> 20, "stopped": "director memory over the limit"}
            time.sleep(0.2)
        return {"rss_mb": peak >> 20}

    # -- the loads ------------------------------------------------------------------------------

    def load_quiet(self) -> Window:
        start = time.monotonic()
        notes = self.sleep_watching_rss()
        return Window("quiet", start, time.monotonic(), notes)

    def load_checks(self) -> Window:
        servers = self.args.servers
        return self.with_config("checks", farm_services(VIP, servers),
                                f"{servers} real servers with HTTP checks")

    def load_push(self) -> Window:
        start = time.monotonic()
        pushes: list[dict[str, Any]] = []
        while (len(pushes) < self.args.pushes
               and time.monotonic() - start < self.args.duration):
            text = self.config(bulk_services(VIP, self.args.push_bytes, variant=len(pushes)))
            # Each push may take the rest of the window (and a little more) to be applied.
            left = self.args.duration - (time.monotonic() - start)
            pushes.append(self.change_config(text, f"a large config #{len(pushes) + 1}",
                                             timeout=max(left, 0.0) + 10.0))
        end = time.monotonic()
        self.back_to_base()
        applied = sum(1 for p in pushes if p.get("push") == "config_applied")
        return Window("push", start, end, {
            "pushes": len(pushes), "applied": applied,
            "bytes": max((p.get("bytes", 0) for p in pushes), default=0),
            "push_s": [p.get("push_s") for p in pushes],
            **({"refused": pushes[-1].get("reason")} if applied < len(pushes) else {})})

    def traffic(self, name: str, kind: str, args: list[str], netns: str) -> Window:
        load = LoadProcess(kind, ["--duration", str(self.args.duration), *args], netns=netns)
        progress(f"{name}: {kind} for {self.args.duration:g} s")
        start = time.monotonic()
        load.start()
        notes = load.finish(self.args.duration + 15)
        end = time.monotonic()
        time.sleep(SETTLE)
        return Window(name, start, end, notes)

    def load_api(self) -> Window:
        assert self.lab is not None
        return self.traffic("api", "api-flood", [
            "--port", str(API_PORT), "--concurrency", str(self.args.api_clients),
            "--half-open", str(self.args.half_open)], self.lab.netns(ACTIVE))

    def load_slowloris(self) -> Window:
        assert self.lab is not None
        return self.traffic("slowloris", "api-flood", [
            "--port", str(API_PORT), "--concurrency", "0", "--trickle", "1",
            "--half-open", str(self.args.half_open)], self.lab.netns(ACTIVE))

    def load_peer(self) -> Window:
        assert self.lab is not None
        return self.traffic("peer", "peer-flood", [
            "--address", ADDRS[ACTIVE], "--port", str(PEER_PORT)], self.lab.rs_ns)

    def load_endless(self) -> Window:
        return self.with_config("endless", hostile_http_services(
            VIP, self.args.hostile, PORT_ENDLESS, name="endless"),
            "real servers with endless headers")

    def load_slow(self) -> Window:
        return self.with_config("slow", hostile_http_services(
            VIP, self.args.hostile, PORT_SLOW, name="slow", service_port=30002),
            "real servers trickling a header")

    def load_chatty(self) -> Window:
        return self.with_config("chatty", chatty_misc_services(VIP, self.args.hostile),
                                "a misc check that prints without end")

    def run(self) -> list[Window]:
        """Every load in turn; on SIGTERM or Ctrl-C, the windows measured so far."""
        windows: list[Window] = []
        try:
            for i, name in enumerate(self.args.loads):
                progress(f"load {name}")
                self._last = i + 1 == len(self.args.loads)
                windows.append(getattr(self, f"load_{name}")())
        except (KeyboardInterrupt, SystemExit, BenchError) as exc:
            self.interrupted = (f"stopped after {len(windows)} loads: "
                                f"{exc if isinstance(exc, BenchError) else type(exc).__name__}")
        return windows


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the report -------------------------------------------------------------------------------


def rows(windows: list[Window], watch: RenewalWatch, until: float) -> list[dict[str, Any]]:
    events = list(watch.events)
    return [{"load": w.load, **window_figures(events, VIP, w.start, w.end, until).as_dict(),
             "seconds": round(w.end - w.start, 1), "notes": w.notes} for w in windows]


def write_events(path: Path, windows: list[Window], watch: RenewalWatch) -> None:
    with open(path, "w") as out:
        for w in windows:
            out.write(json.dumps({"window": w.load, "start": w.start, "end": w.end}) + "\n")
        for ev in list(watch.events):
            out.write(json.dumps(dataclasses.asdict(ev)) + "\n")


def summary(table: list[dict[str, Any]]) -> tuple[float, float | None, int]:
    """(longest gap over the loads but quiet, quiet's longest or None, lapses under load)."""
    loaded = [r for r in table if r["load"] != "quiet"]
    quiet = next((r["longest_ms"] for r in table if r["load"] == "quiet"), None)
    longest = max((r["longest_ms"] for r in loaded), default=math.nan)
    return longest, quiet, sum(r["lapses"] for r in loaded)


def print_table(table: list[dict[str, Any]], command: str, overruns: int) -> None:
    print(f"{'load':<9} {'renewals':>8} {'longest ms':>11} {'p99 ms':>8} {'lapses':>6} "
          f"{'expired':>7}  notes")
    for r in table:
        notes = json.dumps(r["notes"], separators=(",", ":"))
        print(f"{r['load']:<9} {r['renewals']:>8} {r['longest_ms']:>11.0f} {r['p99_ms']:>8.0f} "
              f"{r['lapses']:>6} {r['expired']:>7}  {notes}")
    print("(lapses: the VIP vanished in the window; expired: of those, its lifetime ran out "
          "rather than the director removing it)")
    print(f"command: {command}")
    if overruns:
        print(f"warning: the watch lost events {overruns} times (receive buffer overrun)")


def parse_args(argv: list[str] | None, loads: tuple[str, ...], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of each load's window (default 20; --quick 6)")
    parser.add_argument("--servers", type=int, default=None,
                        help="real servers for the checks load (default 5000; --quick 1000)")
    parser.add_argument("--loads", default=",".join(loads),
                        help=f"comma-separated, from {','.join(ALL_LOADS)}")
    parser.add_argument("--push-bytes", type=int, default=500_000,
                        help="size of each pushed file (the push's ZooKeeper transaction "
                             "carries it twice: more than ~510 KB does not fit 1 MiB)")
    parser.add_argument("--pushes", type=int, default=None,
                        help="pushes in the push load (default 3; --quick 2)")
    parser.add_argument("--api-clients", type=int, default=64)
    parser.add_argument("--half-open", type=int, default=300,
                        help="half-open API connections held during the api load")
    parser.add_argument("--hostile", type=int, default=5,
                        help="real servers in each hostile load (endless, slow, chatty)")
    parser.add_argument("--settle-timeout", type=float, default=60.0,
                        help="longest wait for a load's config to be reconciled before its "
                             "window opens")
    parser.add_argument("--pair", action="store_true",
                        help="also run the standby director (both run every check; on one "
                             "small machine that doubles the check load)")
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--events", type=Path, default=None,
                        help="also write every address event and window here (JSON lines)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (6.0 if args.quick else 20.0)
    args.servers = args.servers or (1000 if args.quick else 5000)
    args.pushes = args.pushes or (2 if args.quick else 3)
    args.loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = [name for name in args.loads if name not in ALL_LOADS]
    if unknown:
        parser.error(f"--loads: {','.join(unknown)}: expected some of {','.join(ALL_LOADS)}")
    if not 0 < args.duration <= 300:
        parser.error("--duration: expected more than 0 and at most 300 seconds")
    if not 1 <= args.servers <= 15000:
        parser.error("--servers: expected 1 to 15000")
    if not 1000 <= args.push_bytes <= 2_000_000:
        parser.error("--push-bytes: expected 1000 to 2000000")
    if not (1 <= args.pushes <= 20 and 1 <= args.api_clients <= 1000
            and 0 <= args.half_open <= 5000 and 1 <= args.hostile <= 100):
        parser.error("--pushes 1..20, --api-clients 1..1000, --half-open 0..5000, "
                     "--hostile 1..100")
    # The real servers and the watch outlive every window: bound them by the whole run.
    args.budget = len(args.loads) * (args.duration + APPLY_TIMEOUT) + 120
    return args


def main(argv: list[str] | None = None, *, loads: tuple[str, ...] = LEASE_LOADS,
         prog: str = "bench/lease.py", count_lapses: bool = False) -> int:
    args = parse_args(argv, loads, prog)
    if os.geteuid() != 0:
        print(f"{prog}: needs root (network namespaces)", file=sys.stderr)
        return 2
    command = shlex.join([".venv/bin/python", prog, *(sys.argv[1:] if argv is None else argv)])
    bench = LeaseBench(args)
    # SIGTERM (a timeout, a killed run) unwinds like Ctrl-C: the lab is removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        bench.open()
        windows = bench.run()
        assert bench.watch is not None
        table = rows(windows, bench.watch, time.monotonic())
        if args.events is not None:
            write_events(args.events, windows, bench.watch)
        overruns = bench.watch.overruns
    finally:
        bench.close()
    longest, quiet, lapses = summary(table)
    last = f"longest renewal gap: {longest:.0f} ms"
    if count_lapses:
        last += f", lapses: {lapses}"
    if args.json:
        print(json.dumps({"rows": table, "command": command, "interrupted": bench.interrupted,
                          "longest_ms": round(longest, 1), "quiet_ms": quiet, "lapses": lapses,
                          "watch_overruns": overruns, "last_line": last}, indent=2))
        return 1 if bench.interrupted else 0
    print_table(table, command, overruns)
    if bench.interrupted:
        print(f"warning: {bench.interrupted}")
    if quiet:
        print(f"quiet baseline: {quiet:.0f} ms (under load {longest / quiet:.1f}x)")
    print(last)
    return 1 if bench.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
