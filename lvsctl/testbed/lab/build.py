"""Building and removing a lab: its state file, network namespaces, ZooKeeper, real servers,
listeners and directors (the plan is in plan.py).

Everything created is recorded in the state file *before* it is created (namespace names;
PIDs with their start time once started), so ``down`` finds and removes it after any crash
and never signals a PID that was reused by someone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvsctl.core.config import load_cluster
from lvsctl.core.errors import LvsctlError
from lvsctl.core.zk import ConfigStore, Target, open_cluster
from lvsctl.templates.render import files_for, setups_for_all, write_files
from lvsctl.testbed.lab.plan import (
    API_PORT,
    CLIENT_ADDR,
    DIRECTORS,
    ECHO,
    HTTP_PORT,
    PROMETHEUS_JOB,
    PROMETHEUS_PORT,
    SCRAPE_INTERVAL,
    SERVICES,
    ZK_ADDR,
    ZK_AUTH,
    cluster_yaml,
    hosts,
    netns_name,
    node_yaml,
)
from lvsctl.testbed.netns import Netns, in_netns, run
from lvsctl.testbed.prometheus import PrometheusClient, PrometheusError, PrometheusServer
from lvsctl.testbed.zookeeper import ZooKeeperServer, ZooKeeperStartError

Echo = Callable[[str], None]

DEFAULT_STATE_DIR = Path("/run/lvsctl-lab")  # the CLI takes --dir or LVSCTL_LAB_DIR
BUSYBOX = "/bin/busybox"


class LabError(LvsctlError):
    """The lab could not be built, driven or removed."""


# ---------------------------------------------------------------------------------------------
# The state file: what this lab created, written before it is created
# ---------------------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


@dataclass
class LabState:
    lab_id: str
    workdir: str
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, list[int]] = field(default_factory=dict)  # role -> [pid, start time]
    in_vm: bool = False

    @property
    def path(self) -> Path:
        return Path(self.workdir) / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1, sort_keys=True))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> LabState:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise LabError(f"{path}: not a lab state file: {exc}") from None

    def alive(self, role: str) -> int | None:
        """The recorded process of ``role`` if it still runs as the same process."""
        entry = self.processes.get(role)
        if not entry:
            return None
        pid, started = entry
        return pid if _start_time(pid) == started else None


def running_in_vm() -> bool:
    """True inside the kernel VM (testbed/vm.py sets LVSCTL_IN_VM for the guest command)."""
    return os.environ.get("LVSCTL_IN_VM") == "1"


def find_states(state_dir: Path = DEFAULT_STATE_DIR) -> list[LabState]:
    if not state_dir.is_dir():
        return []
    return [LabState.load(p) for p in sorted(state_dir.glob("*/state.json"))]


# ---------------------------------------------------------------------------------------------
# Side effects: ip, processes
# ---------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float,
               interval: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` held, None if it did not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def lvsctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lvsctl", *args]


@dataclass
class Lab:
    """One lab: built by ``up``, removed by ``down``; ``state`` is its state file."""

    state: LabState
    echo: Echo = lambda line: None
    cluster_extra: str = ""  # appended to the generated cluster file (e.g. a notify section)
    _zookeeper: ZooKeeperServer | None = field(default=None, init=False, repr=False)

    @property
    def workdir(self) -> Path:
        return Path(self.state.workdir)

    def ns(self, role: str) -> str:
        return netns_name(self.state.lab_id, role)

    def exec_argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    @classmethod
    def create(cls, state_dir: Path = DEFAULT_STATE_DIR, echo: Echo = lambda line: None) -> Lab:
        lab_id = secrets.token_hex(3)
        workdir = state_dir / lab_id
        workdir.mkdir(parents=True, mode=0o700)
        state = LabState(lab_id, str(workdir), in_vm=running_in_vm())
        state.save()
        return cls(state, echo)

    # -- building ----------------------------------------------------------------------------

    def _batch(self, netns: str | None, lines: Sequence[Sequence[str]]) -> None:
        """Many ``ip`` commands in one process (``ip -batch``): a process start costs a lot
        under the VM's emulated CPU. Arguments are single words, so no quoting is needed."""
        argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
        text = "".join(" ".join(line) + "\n" for line in lines)
        try:
            proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise LabError(f"ip -batch in {netns or 'this namespace'} took over 60 s") from None
        if proc.returncode != 0:
            raise LabError(f"ip -batch in {netns or 'this namespace'} failed: "
                           f"{proc.stderr.strip()[:400]}")

    def build_network(self) -> None:
        roles = ["sw", *(h.role for h in hosts())]
        # Recorded before they exist: down removes them even if we die half-way.
        self.state.namespaces.extend(self.ns(r) for r in roles)
        self.state.save()
        self._batch(None, [["netns", "add", self.ns(r)] for r in roles])
        sw = self.ns("sw")
        switch: list[list[str]] = [["link", "set", "lo", "up"]]
        for bridge in ("front", "inside"):
            switch += [["link", "add", bridge, "type", "bridge"], ["link", "set", bridge, "up"]]
        for host in hosts():
            for port in host.ports:
                peer = f"{host.role}-{port.ifname}"
                switch += [["link", "add", peer, "type", "veth", "peer", "name", port.ifname,
                            "netns", self.ns(host.role)],
                           ["link", "set", peer, "master", port.bridge, "up"]]
        self._batch(sw, switch)
        for host in hosts():
            lines = [["link", "set", "lo", "up"]]
            for port in host.ports:
                lines += [["addr", "add", port.address, "dev", port.ifname],
                          ["link", "set", port.ifname, "up"]]
            self._batch(self.ns(host.role), lines)
        for name in DIRECTORS:
            # A director forwards NAT traffic between its two interfaces (deploy/sysctl.d
            # does this on a real director).
            run(self.exec_argv(name, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))

    def _start(self, role: str, argv: Sequence[str], key: str,
               env: dict[str, str] | None = None) -> int:
        """Start ``argv`` in ``role``'s namespace; recorded as ``key`` (its log: key.log)."""
        with open(self.workdir / f"{key}.log", "ab") as out:
            proc = subprocess.Popen(self.exec_argv(role, argv), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        started = _start_time(proc.pid)
        self.state.processes[key] = [proc.pid, started or 0]
        self.state.save()
        return proc.pid

    def start_zookeeper(self) -> None:
        """Start ZooKeeper in its namespace (the test bed's server); ``wait_zookeeper`` waits.

        It outlives this process (``lab up`` leaves it running): ``down`` stops it by the PID
        the state file records.
        """
        self._zookeeper = ZooKeeperServer(
            host=ZK_ADDR, netns=Netns(self.ns("zk")), tick_ms=200, min_session_ms=400,
            max_session_ms=20000, workdir=self.workdir / "zk", log_path=self.workdir / "zk.log",
            heap="128m", die_with_parent=False)
        pid = self._zookeeper.launch()
        self.state.processes["zk"] = [pid, _start_time(pid) or 0]
        self.state.save()

    def wait_zookeeper(self, timeout: float = 150) -> None:
        """Until ZooKeeper serves (the VM's emulated CPU starts a JVM slowly). Raises LabError."""
        if self._zookeeper is None:
            raise LabError("ZooKeeper was not started by this process")
        try:
            self._zookeeper.wait_ready(timeout)
        except ZooKeeperStartError:
            raise LabError(f"ZooKeeper not ready after {timeout:.0f} s; see "
                           f"{self.workdir / 'zk.log'}") from None

    def write_files(self) -> Path:
        for name, text in (("zk.secret", ZK_AUTH), ("peer.secret", secrets.token_hex(16)),
                           ("api.token", secrets.token_hex(16))):
            path = self.workdir / name
            path.write_text(text + "\n")
            path.chmod(0o600)
        cluster = self.workdir / "cluster.yaml"
        cluster.write_text(cluster_yaml(self.state.lab_id, str(self.workdir / "zk.secret"))
                           + self.cluster_extra)
        for director in DIRECTORS:
            (self.workdir / director).mkdir(exist_ok=True)
            (self.workdir / f"{director}.node.yaml").write_text(
                node_yaml(self.state.lab_id, director, self.workdir))
        return cluster

    def push_config(self) -> None:
        """The cluster file into ZooKeeper, as ``lvsctl config push`` writes it (validated,
        compare-and-set, history): from lb1's namespace, where ZooKeeper is reachable."""
        loaded = load_cluster(str(self.workdir / "cluster.yaml"))
        target = Target(loaded.cluster.zookeeper, loaded.cluster.name, base_dir=self.workdir)

        def push() -> None:
            with open_cluster(target, connect_timeout=15) as conn:
                ConfigStore(conn).push(loaded.text, source=loaded.source)

        in_netns(self.ns("lb1"), push)

    def render_realservers(self) -> tuple[Path, list[str]]:
        """Every real server's ``setup.sh`` (as ``lvsctl realserver render --all`` writes
        them), one folder each under ``realservers/``; returns the folder and their names."""
        loaded = load_cluster(str(self.workdir / "cluster.yaml"))
        out = self.workdir / "realservers"
        setups = setups_for_all(loaded.cluster, "eth0")
        write_files(out, files_for(setups, "shell", loaded.source, per_server_folder=True))
        return out, [setup.name for setup in setups]

    def setup_realservers(self) -> None:
        out, names = self.render_realservers()
        # All at once: each is its own namespace. LVSCTL_STATE_DIR keeps what each script
        # records for `setup.sh down` apart (they would share /var/lib/lvsctl otherwise).
        procs = {rs: subprocess.Popen(
            self.exec_argv(rs, ["env", f"LVSCTL_STATE_DIR={self.workdir / 'rs-state' / rs}",
                                "bash", str(out / rs / "setup.sh"), "up"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for rs in names}
        failed = []
        for rs, proc in procs.items():
            try:
                output, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"{rs}: {output.strip()[-300:]}")
        if failed:
            raise LabError("setup.sh up failed on " + "; ".join(failed))
        for rs in names:
            self.start_listener(rs)

    def start_listener(self, rs: str) -> None:
        """busybox httpd answering the real server's name on port 80 (its own process)."""
        www = self.workdir / "www" / rs
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_text(rs + "\n")
        self._start(rs, [BUSYBOX, "httpd", "-f", "-p", str(HTTP_PORT), "-h", str(www)], rs)
        if any(rs == name for name, _ in ECHO.realservers):
            self._start(rs, [BUSYBOX, "nc", "-ll", "-p", str(ECHO.port), "-e", "/bin/cat"],
                        f"{rs}-echo")

    def wait_listening(self, rs: str, timeout: float = 30) -> None:
        """Until ``rs``'s web listener accepts a connection (asked from inside its own
        namespace: a thread there, not a new process)."""
        address = next(a for svc in SERVICES for name, a in svc.realservers if name == rs)

        def accepts() -> bool:
            return in_netns(self.ns(rs), lambda: _connects(address, HTTP_PORT))

        if wait_until(accepts, timeout, 0.05) is None:
            raise LabError(f"{rs}'s listener does not accept within {timeout:.0f} s; see "
                           f"{self.workdir / (rs + '.log')}")

    def stop_listener(self, rs: str) -> None:
        """Stop every listener of ``rs`` (its checks then fail)."""
        self.kill(rs)
        self.kill(f"{rs}-echo")

    def start_director(self, name: str) -> None:
        self._start(name, lvsctl_argv("director", "run", "--node",
                                      str(self.workdir / f"{name}.node.yaml")), name)

    def prometheus_server(self) -> PrometheusServer:
        """The lab's Prometheus (Debian's): in the client's namespace, where both directors'
        APIs are reachable, scraping their /metrics (job ``lvsctl-lab``)."""
        return PrometheusServer(
            self.workdir / "prometheus", f"{CLIENT_ADDR}:{PROMETHEUS_PORT}",
            [f"{front}:{API_PORT}" for front, _inside in DIRECTORS.values()],
            netns=self.ns("client"), job=PROMETHEUS_JOB, interval=SCRAPE_INTERVAL)

    def start_prometheus(self) -> None:
        """Start the lab's Prometheus (recorded like every process; ``down`` stops it)."""
        server = self.prometheus_server()
        server.prepare()
        try:
            command = server.command()
        except PrometheusError as exc:
            raise LabError(str(exc)) from None
        self._start("client", command, "prometheus")

    def prometheus(self) -> PrometheusClient:
        """A client of the lab's Prometheus (its requests run in the client's namespace)."""
        return self.prometheus_server().client()

    def wait_prometheus(self, timeout: float = 120) -> None:
        """Until the lab's Prometheus is ready. Raises LabError."""
        if wait_until(self.prometheus().ready, timeout, 0.5) is None:
            raise LabError(f"Prometheus not ready within {timeout:.0f} s; see "
                           f"{self.workdir / 'prometheus.log'}")

    def endpoints(self) -> list[str]:
        """Where the status pages and Prometheus are, while the lab is up (addresses inside
        its namespaces: reached from the client's)."""
        client = self.ns("client")
        lines = [f"status page of {name}: http://{front}:{API_PORT}/  (metrics: /metrics)"
                 for name, (front, _inside) in DIRECTORS.items()]
        lines.append(f"Prometheus: http://{CLIENT_ADDR}:{PROMETHEUS_PORT}/  (job "
                     f"{PROMETHEUS_JOB}, scraping both directors every {SCRAPE_INTERVAL:g} s)")
        lines.append(f"from this host: ip netns exec {client} busybox wget -qO- "
                     f"http://{CLIENT_ADDR}:{PROMETHEUS_PORT}/api/v1/query?query=up")
        return lines

    def kill(self, role: str, sig: int = signal.SIGTERM, wait: float = 10) -> None:
        pid = self.state.alive(role)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.state.alive(role) == pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if self.state.alive(role) == pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- observing ---------------------------------------------------------------------------

    def director_status(self, name: str) -> dict[str, Any] | None:
        front = DIRECTORS[name][0]

        def get() -> dict[str, Any] | None:
            import http.client

            conn = http.client.HTTPConnection(front, API_PORT, timeout=1.0)
            try:
                conn.request("GET", "/status")
                data = json.loads(conn.getresponse().read())
                return data if isinstance(data, dict) else None
            except (OSError, ValueError):
                return None
            finally:
                conn.close()

        return in_netns(self.ns("client"), get)

    def active(self) -> str | None:
        for name in DIRECTORS:
            status = self.director_status(name)
            if status and str(status.get("role", status.get("state", ""))).lower() in (
                    "active", "leader"):
                return name
        return None

    def wait_active(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = self.active()
            if name is not None:
                return name
            time.sleep(0.2)
        raise LabError(f"no director became active within {timeout:.0f} s; see "
                       f"{self.workdir}/lb1.log and lb2.log")

    def fetch(self, vip: str, count: int, timeout: float = 15.0) -> list[str]:
        """``count`` HTTP requests from the client, each on a new connection: who answered
        (``"-"`` for a failure). ``timeout`` (per request) is generous: under the VM's emulated
        CPU on a busy host one answer may take seconds, and a refusal comes at once anyway."""
        return in_netns(self.ns("client"), lambda: [_http_get(vip, HTTP_PORT, timeout)
                                                    for _ in range(count)])

    def log_tail(self, key: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"{key}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(line[:300] for line in text.splitlines()[-lines:])

    def ipvsadm(self, director: str) -> str:
        return run(self.exec_argv(director, ["ipvsadm", "-Ln"]), check=False)

    def connections(self, director: str) -> str:
        """``ipvsadm -Lnc``: the connections ``director``'s IPVS knows (own or synced)."""
        return run(self.exec_argv(director, ["ipvsadm", "-Lnc"]), check=False)

    # -- the whole thing ---------------------------------------------------------------------

    def up(self, step: Callable[[str], contextlib.AbstractContextManager[None]],
           active_timeout: float = 300) -> str:
        with step("network namespaces, bridges and addresses"):
            self.build_network()
        # ZooKeeper (a JVM) starts while the real servers are set up: both take long in the VM.
        self.start_zookeeper()
        self.write_files()
        with step("real servers set up with their rendered setup.sh, listeners started"):
            self.setup_realservers()
        with step("ZooKeeper ready"):
            self.wait_zookeeper()
        with step("cluster file pushed (lvsctl config push)"):
            self.push_config()
        with step("directors started (lvsctl director run, kernel IPVS), one active"):
            for name in DIRECTORS:
                self.start_director(name)
            active = self.wait_active(timeout=active_timeout)
        with step("Prometheus scraping both directors (in the client's namespace)"):
            self.start_prometheus()
            self.wait_prometheus()
        return active

    def down(self, keep_logs: bool = False) -> list[str]:
        """Remove everything the state file lists; returns what was removed. ``keep_logs``
        leaves the processes' logs in the lab's folder (to read after a failure)."""
        removed: list[str] = []
        if self.state.in_vm and not running_in_vm():
            # Made inside a kernel VM that has ended: its processes and namespaces ended with
            # it, and its PIDs mean nothing here.
            shutil.rmtree(self.workdir, ignore_errors=True)
            return removed
        for role in list(self.state.processes):
            if self.state.alive(role) is not None:
                self.kill(role)
                removed.append(f"process {role}")
        present = [n for n in reversed(self.state.namespaces) if Path(f"/run/netns/{n}").exists()]
        if present:
            with contextlib.suppress(LabError):
                self._batch(None, [["netns", "del", n] for n in present])
            for name in present:
                if Path(f"/run/netns/{name}").exists():  # the batch stopped early: one by one
                    run(["ip", "netns", "del", name], check=False)
            removed += [f"netns {n}" for n in present]
        if keep_logs:
            for path in self.workdir.iterdir():
                if path.suffix != ".log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return removed


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _http_get(host: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return "-"
    body = b"".join(chunks).partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    return body or "-"
