"""A real ZooKeeper server for the test bed: Debian's ``zookeeper`` 3.8 run as a child process.

The one implementation used by the tests (fixtures in tests/support/zookeeper.py), the lab
and the benchmarks. Standalone, with a small tickTime (100 ms by default, so session
timeouts down to 200 ms are allowed) and its data in a folder of its own, either

- in this network namespace on an address of its own: a loopback address derived from this
  process's PID (127.0.0.0/8 is local as a whole) and a port below the kernel's ephemeral
  range, so no other process is handed that address and port by bind(0) or connect(), or
- inside a given network namespace on a given address (port 2181 by default), so a test can
  cut it off with nftables.

Either way ``start`` after ``stop`` or ``kill`` restarts it on the same address, port and data,
as an ensemble coming back would, or raises: it never moves. ``ZooKeeperEnsemble`` runs three
(or any odd number of) such servers as one ensemble, each optionally in a namespace of its own,
so that a drill can cut one server off from the ensemble's leader while clients still reach it.
The server is controlled only through its own PID: ``stop`` (SIGTERM), ``kill`` (SIGKILL),
``pause``/``resume`` (SIGSTOP/SIGCONT). With ``die_with_parent`` (the default) the server gets
SIGKILL if the thread that started it dies (PR_SET_PDEATHSIG), so a killed test run leaves no
Java behind: start it from the main thread, not from a short-lived worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvsctl.core.errors import LvsctlError
from lvsctl.testbed.netns import Lab, Netns, in_netns

JAVA = "java"
JARS = (
    "/usr/share/java/zookeeper.jar",
    # zookeeper.jar names only slf4j-api in its manifest: without a binding it logs nothing.
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
)
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# The serial collector and the C1 compiler only: the server starts in about a second on a busy
# two-core machine and stays well within memory next to other tests.
JVM_OPTS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")
CLIENT_PORT = 2181

# No class or line in the pattern: log4j finds them by walking the stack for every line, which
# costs a lot under the kernel VM's emulated CPU.
LOG4J = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %m%n
"""

_PR_SET_PDEATHSIG = 1
_servers = itertools.count()
# One connection in `cons`: " /192.0.2.2:41234[1](queued=0,...,sid=0x1000...,...,to=2000,...)".
# The answering connection itself has no session yet (no "sid=").
_CONS_LINE = re.compile(
    r"/\[?([0-9A-Fa-f.:]+?)\]?:\d+\[\d+\]\(.*\bsid=0x([0-9a-f]+),.*\bto=(\d+)\b")
QUORUM_PORT = 2888
ELECTION_PORT = 3888
NFT_TABLE = "lvszk"  # isolate()'s rules, in the server's own namespace


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the starting thread dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class ClientSession:
    """A client connected to a server: its address, session id and negotiated timeout."""

    address: str
    session_id: int
    timeout_ms: int


class ZooKeeperStartError(LvsctlError):
    """The server did not become ready; the message carries the tail of its log."""


def own_address() -> tuple[str, int]:
    """A loopback address and port for this process's next server.

    The address encodes the PID (127.1.0.0 - 127.64.255.255), the port counts this process's
    servers from 2181. Both stay this process's own: no other live process has the PID, and
    the kernel hands out ports only from its ephemeral range, which the port stays below.
    Raises ZooKeeperStartError when this machine's ephemeral range starts too low for that.
    """
    pid = os.getpid()
    port = CLIENT_PORT + next(_servers)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if port >= low:
        raise ZooKeeperStartError(
            f"port {port} is inside this kernel's ephemeral range (from {low}): "
            "net.ipv4.ip_local_port_range must start above the test servers' ports")
    return f"127.{1 + ((pid >> 16) & 0x3F)}.{(pid >> 8) & 0xFF}.{pid & 0xFF}", port


def connect(host: str, port: int, *, netns: str | None = None,
            timeout: float = 2.0) -> socket.socket:
    """A TCP connection to ``host:port``, made from inside ``netns`` when given."""
    def make() -> socket.socket:
        return socket.create_connection((host, port), timeout=timeout)

    return make() if netns is None else in_netns(netns, make)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a test that wants nothing listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ZooKeeperServer:
    """One standalone ZooKeeper server process.

    ``hosts`` is the connection string (``addr:port``). Without ``netns`` it listens on an
    address and port of its own (``own_address``) unless ``host``/``port`` are given; with
    ``netns`` it runs inside that namespace on ``host`` (which must be configured there) and
    ``port`` (default 2181). ``workdir`` holds its config and data (a temporary folder,
    removed by ``close``, when not given); ``log_path`` its output.
    """

    def __init__(self, *, host: str | None = None, port: int | None = None,
                 netns: Netns | None = None, tick_ms: int = 100,
                 min_session_ms: int | None = None, max_session_ms: int = 60000,
                 workdir: str | Path | None = None, log_path: str | Path | None = None,
                 heap: str = "256m", die_with_parent: bool = True,
                 quorum: QuorumSeat | None = None) -> None:
        if netns is not None:
            if host is None:
                raise ValueError("a ZooKeeper in a namespace needs the address it listens on")
            self.host, self.port = host, CLIENT_PORT if port is None else port
        elif host is None and port is None:
            self.host, self.port = own_address()
        else:
            self.host, self.port = host or "127.0.0.1", port or CLIENT_PORT
        self.netns = netns
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms if min_session_ms is not None else 2 * tick_ms
        self.max_session_ms = max_session_ms
        self.heap = heap
        self.die_with_parent = die_with_parent
        self.quorum = quorum
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lvsctl-zk-"))
        self.confdir = self.workdir / "conf"
        self.datadir = self.workdir / "data"
        self.log_path = Path(log_path) if log_path is not None else self.workdir / "zookeeper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The client connection string, e.g. ``127.1.2.3:2181`` or ``[fd00::1]:2181``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    def _write_config(self) -> Path:
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        (self.confdir / "log4j.properties").write_text(LOG4J, encoding="utf-8")
        cfg = self.confdir / "zoo.cfg"
        cfg.write_text(
            "\n".join([
                f"tickTime={self.tick_ms}",
                f"minSessionTimeout={self.min_session_ms}",
                f"maxSessionTimeout={self.max_session_ms}",
                f"dataDir={self.datadir}",
                f"clientPort={self.port}",
                f"clientPortAddress={self.host}",
                "maxClientCnxns=0",
                "admin.enableServer=false",
                "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons",
                # Test data need not survive a power cut; fsync per write would slow every test.
                "forceSync=no",
                *(self.quorum.config_lines() if self.quorum is not None else ()),
                "",
            ]),
            encoding="utf-8",
        )
        if self.quorum is not None:
            (self.datadir / "myid").write_text(f"{self.quorum.myid}\n", encoding="utf-8")
        return cfg

    def _argv(self, cfg: Path) -> list[str]:
        classpath = ":".join([str(self.confdir), *JARS])
        argv = [JAVA, f"-Xmx{self.heap}", *JVM_OPTS,
                f"-Dlog4j.configuration=file:{self.confdir}/log4j.properties",
                "-cp", classpath, MAIN, str(cfg)]
        # `ip netns exec` execs the command in place, so the PID we hold is Java's own.
        return self.netns.argv(argv) if self.netns is not None else argv

    def launch(self) -> int:
        """Start (or restart) the server process without waiting for it; returns its PID.

        Raises ZooKeeperStartError if it is running already or Java cannot be started.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise ZooKeeperStartError(f"ZooKeeper already running (pid {self.proc.pid})")
        cfg = self._write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self._argv(cfg), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
        except FileNotFoundError as exc:
            raise ZooKeeperStartError(f"cannot start ZooKeeper: {exc}") from None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ZooKeeperServer:
        """Start (or restart) the server on its address and port and wait until it serves.

        Raises ZooKeeperStartError (the server killed again) if it does not become ready
        within ``timeout`` seconds, e.g. because its port is taken.
        """
        self.launch()
        try:
            self.wait_ready(timeout)
        except ZooKeeperStartError:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for ``srvr`` to answer with a ``Mode:`` line (``ruok`` answers too early).

        Raises ZooKeeperStartError if the process exits first or ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise ZooKeeperStartError(
                    f"ZooKeeper exited ({code}) before it was ready; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if "Mode:" in self.four_letter("srvr", timeout=1.0):
                    return
            time.sleep(0.1)
        raise ZooKeeperStartError(
            f"ZooKeeper not ready on {self.hosts} after {timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process would not act on SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its sessions."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server freezes; connections stay open but nothing answers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its temporary folder."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inspection --------------------------------------------------------------------------

    def four_letter(self, command: str, timeout: float = 2.0) -> str:
        """Send a four-letter word (ruok, srvr, stat, mntr) and return the answer.

        Raises OSError when the server does not accept or answer within ``timeout``.
        """
        with connect(self.host, self.port, netns=self.netns.name if self.netns else None,
                     timeout=timeout) as sock:
            sock.sendall(command.encode("ascii"))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def mode(self, timeout: float = 2.0) -> str | None:
        """``leader``, ``follower`` or ``standalone`` from ``srvr``; None when it serves nothing
        (stopped, starting, or a server that lost its ensemble's leader)."""
        try:
            answer = self.four_letter("srvr", timeout=timeout)
        except OSError:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def sessions(self, timeout: float = 2.0) -> list[ClientSession]:
        """The client sessions connected to this server now (``cons``).

        Raises OSError when the server does not answer.
        """
        out = []
        for line in self.four_letter("cons", timeout=timeout).splitlines():
            found = _CONS_LINE.search(line)
            if found:
                out.append(ClientSession(found.group(1), int(found.group(2), 16),
                                         int(found.group(3))))
        return out


# -- an ensemble -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuorumSeat:
    """One server's place in an ensemble: its id and every member's quorum addresses."""

    myid: int
    # (myid, host, quorum port, election port) of every member, this one included.
    members: tuple[tuple[int, str, int, int], ...]
    init_limit: int
    sync_limit: int

    def config_lines(self) -> list[str]:
        return [
            # In ticks: how long a follower may take to sync with a new leader, and how long
            # a leader and a follower go without hearing each other before giving up.
            f"initLimit={self.init_limit}",
            f"syncLimit={self.sync_limit}",
            *(f"server.{myid}={host}:{quorum}:{election}"
              for myid, host, quorum, election in self.members),
        ]


@dataclass(frozen=True)
class Member:
    """Where one server of an ensemble listens: ``host`` (in ``netns`` when given)."""

    host: str
    netns: Netns | None = None


class ZooKeeperEnsemble:
    """An ensemble of ZooKeeper servers (three by default), each a ``ZooKeeperServer``.

    ``members`` places each server: in a network namespace of its own on an address configured
    there (client port 2181, quorum 2888, election 3888), or — without ``members`` — all on
    this process's own loopback address (``own_address``) with ports of their own. Only
    servers in namespaces can be cut off from each other (``isolate``).

    ``tick_ms``, ``init_limit`` and ``sync_limit`` are ZooKeeper's own: a follower cut off from
    its leader keeps serving its clients' reads for up to ``sync_limit`` ticks before it gives
    up, while the leader expires their sessions after their timeout. ``min_session_ms`` and
    ``max_session_ms`` bound every session's timeout (the server clamps what a client asks);
    ``set_session_limits`` changes them for the servers' next start (``rolling_restart``).
    """

    def __init__(self, members: Sequence[Member] | None = None, *, size: int = 3,
                 tick_ms: int = 100, init_limit: int = 50, sync_limit: int = 20,
                 min_session_ms: int | None = None, max_session_ms: int = 60000,
                 workdir: str | Path | None = None, heap: str = "128m") -> None:
        if members is None:
            members = [Member(own_address()[0]) for _ in range(size)]
            ports = [(own_address()[1], own_address()[1], own_address()[1]) for _ in members]
        else:
            ports = [(CLIENT_PORT, QUORUM_PORT, ELECTION_PORT) for _ in members]
        if len(members) < 3 or len(members) % 2 == 0:
            raise ValueError(f"an ensemble has an odd number of servers, at least 3: "
                             f"{len(members)} given")
        self.members = list(members)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lvsctl-zk-ensemble-"))
        seats = tuple((i + 1, m.host, q, e) for i, (m, (_, q, e)) in enumerate(zip(members, ports,
                                                                               strict=True)))
        self.servers = [
            ZooKeeperServer(
                host=member.host, port=client_port, netns=member.netns, tick_ms=tick_ms,
                min_session_ms=min_session_ms, max_session_ms=max_session_ms, heap=heap,
                workdir=self.workdir / f"zk{i + 1}",
                quorum=QuorumSeat(i + 1, seats, init_limit, sync_limit))
            for i, (member, (client_port, _, _)) in enumerate(zip(members, ports, strict=True))
        ]
        self._isolated: set[int] = set()

    @property
    def hosts(self) -> str:
        """The client connection string naming every server."""
        return ",".join(server.hosts for server in self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> ZooKeeperEnsemble:
        """Start every server and wait until each serves as leader or follower.

        Raises ZooKeeperStartError (every server stopped again) when that takes longer than
        ``timeout`` seconds.
        """
        for server in self.servers:
            server.launch()
        try:
            self.wait_serving(timeout)
        except ZooKeeperStartError:
            for server in self.servers:
                server.kill()
            raise
        return self

    def wait_serving(self, timeout: float = 60.0,
                     servers: Sequence[int] | None = None) -> int:
        """Wait until one leader leads and ``servers`` (default: all) serve; returns the
        leader's index. Raises ZooKeeperStartError after ``timeout`` seconds."""
        wanted = range(len(self.servers)) if servers is None else servers
        deadline = time.monotonic() + timeout
        modes: dict[int, str | None] = {}
        while time.monotonic() < deadline:
            modes = {i: self.servers[i].mode() for i in range(len(self.servers))}
            leaders = [i for i, mode in modes.items() if mode == "leader"]
            if len(leaders) == 1 and all(modes[i] in ("leader", "follower") for i in wanted):
                return leaders[0]
            for i in wanted:
                proc = self.servers[i].proc
                if proc is None or proc.poll() is not None:
                    raise ZooKeeperStartError(
                        f"ZooKeeper server {i + 1} is not running; log:\n"
                        f"{self.servers[i].log_tail()}")
            time.sleep(0.2)
        tails = "\n".join(f"--- server {i + 1} ({modes.get(i)})\n{s.log_tail(15)}"
                          for i, s in enumerate(self.servers))
        raise ZooKeeperStartError(
            f"the ensemble did not serve within {timeout:.0f} s (modes {modes}):\n{tails}")

    def leader(self) -> int | None:
        """The index of the server whose ``srvr`` says ``Mode: leader``; None when none does."""
        leaders = [i for i, server in enumerate(self.servers) if server.mode() == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def modes(self) -> list[str | None]:
        return [server.mode() for server in self.servers]

    def stop_server(self, index: int) -> None:
        """SIGTERM one server (SIGKILL after 10 s): its clients move to the others."""
        self.servers[index].stop()

    def start_server(self, index: int, timeout: float = 60.0) -> None:
        """Start one stopped server again and wait until it serves in the ensemble.

        Raises ZooKeeperStartError when it does not within ``timeout`` seconds.
        """
        self.servers[index].launch()
        self.wait_serving(timeout, servers=[index])

    def set_session_limits(self, min_ms: int | None = None, max_ms: int | None = None) -> None:
        """New session timeout bounds, written at each server's next start."""
        for server in self.servers:
            if min_ms is not None:
                server.min_session_ms = min_ms
            if max_ms is not None:
                server.max_session_ms = max_ms

    def rolling_restart(self, timeout: float = 60.0,
                        progress: Callable[[str], None] = lambda line: None) -> list[int]:
        """Restart the servers one at a time, the leader last, each serving again before the
        next stops (a quorum serves throughout but for the leader's election). Returns the
        order. Raises ZooKeeperStartError when a server does not come back within ``timeout``.
        """
        leader = self.wait_serving(timeout)
        order = [i for i in range(len(self.servers)) if i != leader] + [leader]
        for index in order:
            progress(f"restarting ZooKeeper server {index + 1} ({self.servers[index].mode()})")
            self.stop_server(index)
            self.start_server(index, timeout)
        self.wait_serving(timeout)
        return order

    def close(self) -> None:
        """Stop every server (isolation rules go with their namespaces' owner)."""
        for index in sorted(self._isolated):
            with contextlib.suppress(LvsctlError):
                self.heal(index)
        for server in self.servers:
            server.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- partitions --------------------------------------------------------------------------

    def isolate(self, index: int, from_servers: Sequence[int]) -> None:
        """Drop every packet between server ``index`` and ``from_servers`` (nftables in
        ``index``'s namespace; nothing is rejected, so each side notices only by its own
        timeouts). Its clients still reach it. Raises ValueError for a server outside a
        namespace, CommandError when nft fails."""
        ns = self._netns(index)
        self._isolated.add(index)
        ns.run(["nft", "add", "table", "ip", NFT_TABLE])
        for chain, hook in (("input", "input"), ("output", "output")):
            ns.run(["nft", "add", "chain", "ip", NFT_TABLE, chain,
                    f"{{ type filter hook {hook} priority 0 ; }}"])
        for other in from_servers:
            host = self.servers[other].host
            ns.run(["nft", "add", "rule", "ip", NFT_TABLE, "input", "ip", "saddr", host, "drop"])
            ns.run(["nft", "add", "rule", "ip", NFT_TABLE, "output", "ip", "daddr", host,
                    "drop"])

    def heal(self, index: int) -> None:
        """Remove ``isolate``'s rules from server ``index``'s namespace."""
        self._netns(index).run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
        self._isolated.discard(index)

    def _netns(self, index: int) -> Netns:
        ns = self.servers[index].netns
        if ns is None:
            raise ValueError(f"ZooKeeper server {index + 1} is not in a namespace of its own")
        return ns

    def serving_client(self, address: str) -> int | None:
        """The index of the server a client at ``address`` is connected to (``cons``)."""
        for index, server in enumerate(self.servers):
            with contextlib.suppress(OSError):
                if any(found.address == address for found in server.sessions()):
                    return index
        return None


def on_bridge(lab: Lab, hub: Netns, bridge: str, addresses: Sequence[str],
              **options: Any) -> ZooKeeperEnsemble:
    """An ensemble (not started) whose servers each run in a namespace of their own, plugged
    into ``bridge`` (in ``hub``) at ``addresses`` (``A.B.C.D/prefix``); ``options`` go to
    ZooKeeperEnsemble. The namespaces are ``lab``'s: its close() removes them."""
    members = []
    for address in addresses:
        ns = lab.netns("zk")
        lab.attach(ns, address, hub, bridge, "eth0")
        members.append(Member(address.split("/")[0], ns))
    return ZooKeeperEnsemble(members, **options)
