"""Benchmark: the health-check scheduler against thousands of real HTTP listeners on loopback.

N real servers (default 5,000) are HTTP listeners on distinct 127.x addresses, served by a
separate process (so the checker's CPU is measured alone). The scheduler probes each once per
interval for the duration; part-way through, some servers start answering 500 and the time
until the scheduler emits their health change is measured against the ideal ``fall x interval``.

Baselines in the same run, against the same listeners and on the same loop: the same number of
checks made with raw asyncio streams (the cheapest possible client), with aiohttp called
directly (a general HTTP client, as the checker once used) and with the checker called directly
(no scheduler), so the figures read as ratios on whatever machine runs them. ``--loop asyncio``
runs the checker on asyncio's own loop instead of uvloop (the director's loop), to compare.
The listeners always run on uvloop: they are the real servers, not what is measured, and on a
small machine they compete with the checker for CPU.

As root the whole run happens inside a network namespace of its own (a fresh loopback, its own
TIME_WAIT table), removed at the end. Everything is bounded: --servers <= 15000, --duration
<= 300 s.

    .venv/bin/python bench/healthcheck.py [--servers 5000] [--duration 30] [--interval 1]
                                          [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsctl.core.model import (  # noqa: E402
    Check,
    CheckTiming,
    Cluster,
    Director,
    Forwarding,
    HttpCheck,
    Protocol,
    RealServer,
    Service,
    ServiceKey,
    ServiceSpec,
    Vip,
    ZooKeeperSettings,
)
from lvsctl.healthcheck.checkers import Checkers  # noqa: E402
from lvsctl.healthcheck.scheduler import HealthChange, LagMonitor, Scheduler, percentile  # noqa: E402

FIRST = int(ipaddress.ip_address("127.77.0.1"))
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# -- the real servers (a process of their own) ----------------------------------------------


def serve(count: int) -> None:
    """Listen on ``count`` loopback addresses; print their ports; on a stdin line
    ``fail I J ...`` answer 500 on those listeners and print when that took effect."""
    raise_nofile(count + 1000)
    failing: set[int] = set()

    class Http(asyncio.Protocol):
        def __init__(self, index: int) -> None:
            self.index = index
            self.buffer = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            if b"\r\n\r\n" in self.buffer:
                self.transport.write(FAIL if self.index in failing else OK)  # type: ignore[attr-defined]
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for i in range(count):
            address = str(ipaddress.ip_address(FIRST + i))
            server = await loop.create_server(lambda i=i: Http(i), address, 0, backlog=64)
            ports.append(server.sockets[0].getsockname()[1])
        print(json.dumps({"ports": ports}), flush=True)

        def command(line: str) -> None:
            words = line.split()
            if words and words[0] == "fail":
                failing.update(int(w) for w in words[1:])
                print(json.dumps({"failed_at": time.monotonic()}), flush=True)

        def reader() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(command, line)
            loop.call_soon_threadsafe(loop.stop)

        threading.Thread(target=reader, daemon=True).start()
        await asyncio.Event().wait()

    # RuntimeError: the loop was stopped when stdin closed, that is, the bench is over.
    with contextlib.suppress(RuntimeError):
        uvloop.run(main())


# -- the cluster ----------------------------------------------------------------------------


def make_cluster(ports: list[int], timing: CheckTiming, share: int) -> Cluster:
    """One service per 100 real servers; each real server also in ``share`` - 1 more services
    (as when many VIPs share a farm), so the scheduler must dedupe."""
    services = []
    per = 100
    groups = [range(g, min(g + per, len(ports))) for g in range(0, len(ports), per)]
    for copy in range(share):
        for g, group in enumerate(groups):
            realservers = tuple(
                RealServer(f"rs{i}", str(ipaddress.ip_address(FIRST + i)), 80, 1,
                           (Check(HttpCheck(path="/healthz"), timing,
                                  str(ipaddress.ip_address(FIRST + i)), ports[i]),))
                for i in group
            )
            services.append(Service(
                f"svc{copy}-{g}", ServiceKey.inet(Protocol.TCP, "192.0.2.10", 1 + copy * 1000 + g),
                ServiceSpec(), Forwarding.DR, "remove", 0, None, 0.0, realservers,
                ("192.0.2.10",),
            ))
    director = Director("lb1", "192.0.2.2", 24, "eth0", "192.0.2.2", 7946, "eth0", 0)
    return Cluster("bench", ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 4.0, None),
                   (director, director), (Vip("192.0.2.10", "eth0"),), tuple(services))


# -- baselines ------------------------------------------------------------------------------


async def raw_streams_check(address: str, port: int) -> bool:
    reader, writer = await asyncio.open_connection(address, port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line = await reader.readline()
    writer.close()
    return line.split(b" ", 2)[1] == b"200"


async def aiohttp_check(session: aiohttp.ClientSession, address: str, port: int) -> bool:
    url = f"http://{address}:{port}/healthz"
    async with session.get(url, allow_redirects=False) as response:
        return response.status == 200


def aiohttp_session() -> aiohttp.ClientSession:
    """aiohttp as a health checker would use it: a new connection per request, no limits."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0, use_dns_cache=False),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
        headers={"User-Agent": "lvsctl-healthcheck", "Connection": "close"},
    )


async def baseline(name: str, checks: int, targets: list[tuple[str, int]], probe: Any
                   ) -> float:
    """CPU ms per check for ``checks`` probes, 50 at a time."""
    slots = asyncio.Semaphore(50)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with slots:
            address, port = targets[i % len(targets)]
            healthy = bool(await probe(address, port))
            ok += healthy  # after the await: `ok += await ...` would lose updates

    cpu = time.process_time()
    await asyncio.gather(*(one(i) for i in range(checks)))
    per = (time.process_time() - cpu) * 1000 / checks
    print(f"  baseline {name:<24} {per:6.3f} CPU ms/check ({ok}/{checks} healthy)", flush=True)
    return per


# -- the run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, ports: list[int], server: subprocess.Popen[str]
                ) -> dict[str, Any]:
    timing = CheckTiming(interval=args.interval, timeout=args.timeout, rise=args.rise,
                         fall=args.fall, warmup=args.interval)
    targets = [(str(ipaddress.ip_address(FIRST + i)), port) for i, port in enumerate(ports)]
    figures: dict[str, Any] = {}
    async with Checkers() as checkers:
        figures["raw_ms"] = await baseline("raw asyncio streams", args.baseline_checks,
                                           targets, raw_streams_check)

        async with aiohttp_session() as session:
            figures["aiohttp_ms"] = await baseline(
                "aiohttp direct", args.baseline_checks, targets,
                lambda address, port: aiohttp_check(session, address, port))

        async def direct(address: str, port: int) -> bool:
            check = Check(HttpCheck(path="/healthz"), timing, address, port)
            return (await checkers.check(check)).healthy

        figures["direct_ms"] = await baseline("checker direct", args.baseline_checks,
                                              targets, direct)

        # Baseline lag: the same monitor on this loop with nothing else to do.
        idle = LagMonitor(period=0.05, window=100000)
        idle_task = asyncio.create_task(idle.run())
        await asyncio.sleep(3)
        idle_task.cancel()
        figures["idle_lag_p50"], figures["idle_lag_p99"], figures["idle_lag_max"] = idle.figures()

        cluster = make_cluster(ports, timing, args.share)
        failing = list(range(0, len(ports), max(1, len(ports) // args.fail)))[: args.fail]
        failing_names = {f"rs{i}" for i in failing}
        detected: dict[str, float] = {}

        def on_change(change: HealthChange) -> None:
            # Only what the injected failure caused: a 500 after the servers switched.
            if (not change.health.healthy and change.key[1] in failing_names
                    and change.health.reason.startswith("HTTP 500")):
                detected.setdefault(change.key[1], time.monotonic())

        lag = LagMonitor(period=0.05, window=100000)
        scheduler = Scheduler(cluster, checkers, concurrency=args.concurrency,
                              on_change=on_change)
        loop = asyncio.get_running_loop()
        lag_task = asyncio.create_task(lag.run())
        await scheduler.start()
        start = loop.time()
        # Measure after the warmup spread and the first full round.
        await asyncio.sleep(timing.warmup + timing.interval)
        rounds0 = scheduler.watchdog().rounds
        lag.samples.clear()
        cpu0, t0, times0 = time.process_time(), loop.time(), os.times()
        fail_at = start + args.duration / 2
        failed_at = None
        ticks = 0
        while loop.time() - start < args.duration:
            await asyncio.sleep(0.25)
            if failed_at is None and loop.time() >= fail_at:
                assert server.stdin is not None and server.stdout is not None
                server.stdin.write("fail " + " ".join(map(str, failing)) + "\n")
                server.stdin.flush()
                reply = await loop.run_in_executor(None, server.stdout.readline)
                failed_at = json.loads(reply)["failed_at"]
            ticks += 1
            if ticks % 8:
                continue  # the progress line every 2 s: it walks every target
            dog = scheduler.watchdog()
            print(f"\r  t={loop.time() - start:5.1f}s rounds={dog.rounds} running={dog.running}"
                  f"/{dog.limit} waiting={dog.waiting} "
                  f"lag p99={dog.loop_lag_p99 * 1000:.1f}ms detected={len(detected)}"
                  f"/{len(failing)}   ", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        cpu1, t1, times1 = time.process_time(), loop.time(), os.times()
        lag_task.cancel()  # the figures end here: what follows walks every target at once
        p50, p99, worst = lag.figures()
        dog = scheduler.watchdog()
        rounds1 = dog.rounds
        views = scheduler.targets()
        await scheduler.stop()
    checks = rounds1 - rounds0
    reasons = Counter(v.last.reason for v in views if v.last is not None and not v.last.healthy)
    figures["reasons"] = reasons.most_common(3)
    figures["server_cpu_s"] = process_cpu(server.pid)
    latencies = sorted(detected[n] - failed_at for n in detected) if failed_at else []
    figures.update(
        targets=len(views), keys=sum(len(v.keys) for v in views), checks=checks,
        seconds=t1 - t0, checks_per_s=checks / (t1 - t0),
        cpu_ms_per_check=(cpu1 - cpu0) * 1000 / max(1, checks),
        cpu_cores=(cpu1 - cpu0) / (t1 - t0),
        system_share=(times1.system - times0.system) / max(1e-9, cpu1 - cpu0),
        lag_p50=p50, lag_p99=p99, lag_max=worst, stalled=len(dog.stalled),
        inconclusive=dog.inconclusive, limit=dog.limit, waiting=dog.waiting,
        unhealthy_unexpected=sum(1 for v in views if v.state.health is not None
                                 and not v.state.health.healthy
                                 and v.check.address not in
                                 {str(ipaddress.ip_address(FIRST + i)) for i in failing}),
        detected=len(latencies), failing=len(failing),
        detect_p50=statistics.median(latencies) if latencies else None,
        detect_p99=percentile(latencies, 0.99) if latencies else None,
        detect_max=latencies[-1] if latencies else None,
    )
    return figures


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(args: argparse.Namespace, f: dict[str, Any], command: str) -> None:
    ideal = args.fall * args.interval
    goal = ideal + args.timeout + 0.05
    print()
    print(f"command: {command}")
    print(f"real servers {args.servers} (HTTP listeners on 127.77.x.x), each in {args.share} "
          f"services: {f['keys']} health keys -> {f['targets']} probes (one per target)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} at the end (shared machine: "
          "a busy neighbour shows as loop lag)")
    print(f"interval {args.interval:g}s timeout {args.timeout:g}s rise {args.rise} fall "
          f"{args.fall}; measured over {f['seconds']:.1f}s")
    print(f"achieved checks/s        {f['checks_per_s']:9.0f}   "
          f"(target {args.servers / args.interval:.0f})")
    print(f"checker CPU ms/check     {f['cpu_ms_per_check']:9.3f}   "
          f"({f['cpu_cores']:.2f} cores busy, {f['system_share']:.0%} of it in the kernel; "
          f"{args.loop} loop)")
    ms = f["cpu_ms_per_check"]
    for name, key in (("raw asyncio streams", "raw_ms"), ("aiohttp direct", "aiohttp_ms"),
                      ("checker direct", "direct_ms")):
        print(f"  baseline {name:<20} {f[key]:6.3f} ms: scheduled check = "
              f"x{ms / f[key]:.2f} of it")
    print(f"loop lag p50/p99/max     {f['lag_p50'] * 1000:6.1f} / {f['lag_p99'] * 1000:.1f} / "
          f"{f['lag_max'] * 1000:.1f} ms   (goal p99 < 50 ms; idle loop baseline "
          f"{f['idle_lag_p50'] * 1000:.1f} / {f['idle_lag_p99'] * 1000:.1f} / "
          f"{f['idle_lag_max'] * 1000:.1f} ms)")
    if f["detected"]:
        print(f"detection p50/p99/max    {f['detect_p50']:6.3f} / {f['detect_p99']:.3f} / "
              f"{f['detect_max']:.3f} s   ({f['detected']}/{f['failing']} detected; ideal "
              f"fall x interval = {ideal:g}s, goal <= {goal:.2f}s)")
    else:
        print(f"detection                none of {f['failing']} failing servers detected")
    print(f"probes allowed at once at the end {f['limit']} (follows the loop lag), "
          f"{f['waiting']} waiting for a slot")
    print(f"stalled targets {f['stalled']}, inconclusive (late) probes {f['inconclusive']}, "
          f"unexpected unhealthy {f['unhealthy_unexpected']}; "
          f"listener process used {f['server_cpu_s']:.1f} CPU s in all")
    for reason, count in f["reasons"]:
        print(f"  last failure reason x{count}: {reason}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=5000)
    p.add_argument("--share", type=int, default=2, help="services per real server")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=0.5)
    p.add_argument("--rise", type=int, default=2)
    p.add_argument("--fall", type=int, default=3)
    p.add_argument("--fail", type=int, default=100, help="servers that start failing mid-run")
    p.add_argument("--concurrency", type=int, default=4096)
    p.add_argument("--baseline-checks", type=int, default=2000)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="the checker's event loop (the director runs on uvloop)")
    p.add_argument("--no-netns", action="store_true", help="run on this host's loopback")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (1 <= args.servers <= 15000 and 1 <= args.duration <= 300
            and args.timeout < args.interval and 1 <= args.fail <= args.servers):
        p.error("bounds: 1 <= --servers <= 15000, 1 <= --duration <= 300, --timeout < "
                "--interval, 1 <= --fail <= --servers")
    return args


def main() -> None:
    args = parse()
    if args.serve is not None:
        serve(args.serve)
        return
    command = "python bench/healthcheck.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] if a != "--inside")
    if os.geteuid() == 0 and not args.no_netns and not args.inside:
        # A namespace of our own: its loopback, its TIME_WAIT table; removed at the end.
        name = f"lvsbench{os.getpid()}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
            rc = subprocess.run(["ip", "netns", "exec", name, sys.executable, __file__,
                                 *sys.argv[1:], "--inside"]).returncode
        finally:
            subprocess.run(["ip", "netns", "del", name], check=False)
        sys.exit(rc)
    nofile = raise_nofile(args.servers * 2 + 1000)
    if nofile < args.servers + args.concurrency // 4 + 200:
        sys.exit(f"RLIMIT_NOFILE hard limit {nofile} is too low for {args.servers} servers")
    print(f"starting {args.servers} listeners (RLIMIT_NOFILE {nofile})...", file=sys.stderr)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(args.servers)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())["ports"]
        run = uvloop.run if args.loop == "uvloop" else asyncio.run
        figures = run(bench(args, ports, server))
    finally:
        server.kill()  # by its PID: the one process this bench started
        server.wait(timeout=10)
    report(args, figures, command + (" (inside its own network namespace)" if args.inside
                                     else ""))


if __name__ == "__main__":
    main()
