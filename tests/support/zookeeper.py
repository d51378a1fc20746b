"""A real ZooKeeper server for tests: Debian's ``zookeeper`` 3.8 run as a child process.

Standalone, with a small tickTime (100 ms by default, so session timeouts down to 200 ms are
allowed), its data and log in a temporary folder, on a free loopback port — or inside a
given network namespace on a given address, so a test can cut it off with nftables.
The server is controlled only through its own PID: ``stop`` (SIGTERM), ``kill`` (SIGKILL),
``pause``/``resume`` (SIGSTOP/SIGCONT). ``start`` after ``stop`` or ``kill`` restarts it on
the same address, port and data, as an ensemble coming back would. The server gets SIGKILL if
the thread that started it dies (PR_SET_PDEATHSIG), so a killed test run leaves no Java behind:
start it from the test's main thread, not from a short-lived worker thread.

Fixtures (registered for all tests by ``tests/conftest.py``):

- ``zookeeper``: a fresh server per test;
- ``zookeeper_module``: one server shared by a test module (use a unique root per test).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Netns

JAVA = "java"
JARS = (
    "/usr/share/java/zookeeper.jar",
    # zookeeper.jar names only slf4j-api in its manifest: without a binding it logs nothing.
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
)
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# A small heap, the serial collector and the C1 compiler only: the server starts in about
# a second on a busy two-core machine and stays well within memory next to other tests.
JVM_OPTS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")

LOG4J = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] %m%n
"""

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ZooKeeperStartError(RuntimeError):
    """The server did not become ready; the message carries the tail of its log."""


def _in_netns(netns: str, fn):  # type: ignore[no-untyped-def]
    """Run ``fn()`` in a short-lived thread that has joined network namespace ``netns``.

    setns(2) changes only the calling thread, so the test process itself stays where it was;
    a socket created inside keeps its namespace after the thread ends.
    """
    result: dict[str, object] = {}

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}", "rb") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=work, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


def connect(host: str, port: int, *, netns: str | None = None,
            timeout: float = 2.0) -> socket.socket:
    """A TCP connection to ``host:port``, made from inside ``netns`` when given."""
    def make() -> socket.socket:
        return socket.create_connection((host, port), timeout=timeout)

    return make() if netns is None else _in_netns(netns, make)  # type: ignore[no-any-return]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (start() retries if another process takes it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ZooKeeperServer:
    """One standalone ZooKeeper server process.

    ``hosts`` is the connection string (``addr:port``). Without ``netns`` it listens on a free
    port of ``host`` (default 127.0.0.1); with ``netns`` it runs inside that namespace on
    ``host`` (which must be configured there) and ``port`` (default 2181).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None,
                 netns: Netns | None = None, tick_ms: int = 100,
                 min_session_ms: int | None = None, max_session_ms: int = 60000,
                 workdir: str | Path | None = None) -> None:
        self.host = host
        self.netns = netns
        self._fixed_port = port is not None or netns is not None
        self.port = port if port is not None else (2181 if netns is not None else 0)
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms if min_session_ms is not None else 2 * tick_ms
        self.max_session_ms = max_session_ms
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lvsctl-zk-"))
        self.confdir = self.workdir / "conf"
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "zookeeper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The client connection string, e.g. ``127.0.0.1:34567`` or ``[fd00::1]:2181``."""
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
                "4lw.commands.whitelist=ruok,srvr,stat,mntr",
                # Test data need not survive a power cut; fsync per write would slow every test.
                "forceSync=no",
                "",
            ]),
            encoding="utf-8",
        )
        return cfg

    def _argv(self, cfg: Path) -> list[str]:
        classpath = ":".join([str(self.confdir), *JARS])
        argv = [JAVA, *JVM_OPTS, f"-Dlog4j.configuration=file:{self.confdir}/log4j.properties",
                "-cp", classpath, MAIN, str(cfg)]
        # `ip netns exec` execs the command in place, so the PID we hold is Java's own.
        return self.netns.argv(argv) if self.netns is not None else argv

    def start(self, timeout: float = 30.0) -> ZooKeeperServer:
        """Start (or restart) the server and wait until it serves requests."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"ZooKeeper already running (pid {self.proc.pid})")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port and (self.port == 0 or attempt > 0):
                self.port = free_port(self.host)
            cfg = self._write_config()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self._argv(cfg), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            try:
                self.wait_ready(timeout)
                return self
            except ZooKeeperStartError:
                self.kill()
                if attempt + 1 == attempts or "Address already in use" not in self.log_tail():
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for ``srvr`` to answer with a ``Mode:`` line (``ruok`` answers too early)."""
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
        """Send a four-letter word (ruok, srvr, stat, mntr) and return the answer."""
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


def _serve() -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer()
    try:
        server.start()
        yield server
    finally:
        # pytest shows teardown output only when the test failed: the log is there to read.
        print(f"--- ZooKeeper log ({server.hosts}) ---\n{server.log_tail()}")
        server.close()


@pytest.fixture
def zookeeper() -> Iterator[ZooKeeperServer]:
    """A fresh standalone ZooKeeper on a free loopback port (tickTime 100 ms)."""
    yield from _serve()


@pytest.fixture(scope="module")
def zookeeper_module() -> Iterator[ZooKeeperServer]:
    """One ZooKeeper for a whole test module; tests keep apart by using their own root."""
    yield from _serve()
