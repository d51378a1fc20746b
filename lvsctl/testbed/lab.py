"""The lab: a whole lvsctl cluster on one machine, in network namespaces.

``lvsctl lab up`` builds it, ``lab demo`` builds it, drives traffic and drills through it and
tears it down, ``lab down`` removes it (also after a crash), ``lab status`` shows it.

Topology (every address is private and lives only inside the lab's own namespaces)::

    client 10.77.0.50 ─┐                               ┌─ nat1 10.77.1.21 ┐ default route via
    zk     10.77.0.100 ├─ bridge "front" (ns sw) ──┬───┤                  │ the inside VIP
    dr1/dr2 .21/.22    │   10.77.0.0/24            │   └─ nat2 10.77.1.22 ┘ 10.77.1.1
    tun1/tun2 .31/.32 ─┘                           │      bridge "inside" 10.77.1.0/24 (ns sw)
                          lb1 10.77.0.2 / 10.77.1.2, lb2 10.77.0.3 / 10.77.1.3

Services: NAT 10.77.0.10:80 (rr), DR 10.77.0.11:80 (rr), TUN 10.77.0.12:80 (rr), each with two
real servers running ``busybox httpd`` that answers its own name. The real servers are set up
only with the scripts ``lvsctl realserver render --all`` writes (``setup.sh up`` in each
namespace). Both directors run ``lvsctl director run`` with the kernel's IPVS.

Everything created is recorded in a state file *before* it is created (namespace names; PIDs
with their start time once started), so ``down`` finds and removes it after any crash and
never signals a PID that was reused by someone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lvsctl.core.errors import LvsctlError

Echo = Callable[[str], None]
T = TypeVar("T")

DEFAULT_STATE_DIR = Path("/run/lvsctl-lab")  # the CLI takes --dir or LVSCTL_LAB_DIR
FRONT, INSIDE = "10.77.0", "10.77.1"
ZK_ADDR = f"{FRONT}.100"
CLIENT_ADDR = f"{FRONT}.50"
INSIDE_VIP = f"{INSIDE}.1"
API_PORT = 9180
PEER_PORT = 7946
HTTP_PORT = 80
SESSION = 6.0  # ZooKeeper session (s): short enough for a quick crash takeover, long enough
#               for the directors to stay confirmed under the VM's emulated CPU
# Checks every second: each check costs CPU in both directors, and the VM's CPU is emulated.
CHECK = {"interval": 1.0, "timeout": 0.5, "rise": 2, "fall": 2}
ZK_AUTH = "lvsctl:lab-password"

JAVA = "java"
ZK_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-log4j12.jar",
           "/usr/share/java/log4j-1.2.jar")
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
ZK_JVM = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")
BUSYBOX = "/bin/busybox"


class LabError(LvsctlError):
    """The lab could not be built, driven or removed."""


# ---------------------------------------------------------------------------------------------
# The plan: pure data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    """One interface of a host: a veth whose other end is on a bridge in the switch ns."""

    bridge: str  # "front" or "inside"
    ifname: str  # inside the host's namespace
    address: str  # with prefix length


@dataclass(frozen=True)
class Host:
    role: str  # zk, lb1, lb2, nat1, ..., client
    ports: tuple[Port, ...]
    gateway: str | None = None  # a default route the lab sets (not for real servers)


@dataclass(frozen=True)
class LabService:
    name: str
    mode: str  # nat, dr, tun
    vip: str
    realservers: tuple[tuple[str, str], ...]  # (name, address)
    port: int = 80


SERVICES = (
    LabService("web-nat", "nat", f"{FRONT}.10",
               (("nat1", f"{INSIDE}.21"), ("nat2", f"{INSIDE}.22"))),
    LabService("web-dr", "dr", f"{FRONT}.11", (("dr1", f"{FRONT}.21"), ("dr2", f"{FRONT}.22"))),
    LabService("web-tun", "tun", f"{FRONT}.12",
               (("tun1", f"{FRONT}.31"), ("tun2", f"{FRONT}.32"))),
)
# An echo service (busybox nc running cat) on the NAT real servers: long-lived connections.
ECHO = LabService("echo-nat", "nat", f"{FRONT}.10", SERVICES[0].realservers, port=7)
ALL_SERVICES = (*SERVICES, ECHO)
DIRECTORS = {"lb1": (f"{FRONT}.2", f"{INSIDE}.2"), "lb2": (f"{FRONT}.3", f"{INSIDE}.3")}


def hosts() -> tuple[Host, ...]:
    """Every host of the lab with its interfaces."""
    out = [Host("zk", (Port("front", "eth0", f"{ZK_ADDR}/24"),)),
           Host("client", (Port("front", "eth0", f"{CLIENT_ADDR}/24"),))]
    for name, (front, inside) in DIRECTORS.items():
        out.append(Host(name, (Port("front", "eth0", f"{front}/24"),
                               Port("inside", "eth1", f"{inside}/24"))))
    for svc in SERVICES:
        bridge = "inside" if svc.mode == "nat" else "front"
        for rs, address in svc.realservers:
            out.append(Host(rs, (Port(bridge, "eth0", f"{address}/24"),)))
    return tuple(out)


def netns_name(lab_id: str, role: str) -> str:
    return f"lvlab-{lab_id}-{role}"


def cluster_yaml(lab_id: str, auth_file: str) -> str:
    """The lab's cluster file (lvsctl's own schema), generated for these addresses."""
    check = ", ".join(f"{k}: {v}" for k, v in CHECK.items())
    lines = [
        f"# lvsctl lab {lab_id}: generated; every address lives only inside the lab's namespaces",
        f"cluster: lab-{lab_id}",
        f"zookeeper: {{hosts: ['{ZK_ADDR}:2181'], root: /lvsctl, session_timeout: {SESSION}, "
        f"auth: {auth_file}}}",
        "directors:",
    ]
    for name, (front, _inside) in DIRECTORS.items():
        lines.append(f"  - {{name: {name}, address: {front}/24, interface: eth0, "
                     f"peer: {{address: {front}, port: {PEER_PORT}}}, "
                     "sync: {interface: eth1, id: 1}}")
    lines.append("vips:")
    for svc in SERVICES:
        lines.append(f"  - {{address: {svc.vip}, interface: eth0}}")
    lines.append(f"  - {{address: {INSIDE_VIP}, interface: eth1, inside: true, "
                 f"network: {INSIDE}.0/24}}")
    lines += ["announce: {count: 2, interval: 50ms}", "services:"]
    for svc in ALL_SERVICES:
        lines += [f"  - name: {svc.name}", f"    vip: {svc.vip}", f"    port: {svc.port}",
                  "    protocol: tcp", f"    forwarding: {svc.mode}", "    scheduler: rr",
                  f"    check: {{type: tcp, {check}}}", "    realservers:"]
        lines += [f"      - {{name: {rs}, address: {address}}}" for rs, address in svc.realservers]
    return "\n".join(lines) + "\n"


def node_yaml(lab_id: str, director: str, workdir: Path) -> str:
    return "\n".join([
        f"cluster: lab-{lab_id}",
        f"director: {director}",
        f"zookeeper: {{hosts: ['{ZK_ADDR}:2181'], root: /lvsctl, session_timeout: {SESSION}, "
        f"auth: {workdir / 'zk.secret'}}}",
        f"peer: {{secret: {workdir / 'peer.secret'}}}",
        f"api: {{listen: '0.0.0.0:{API_PORT}', token: {workdir / 'api.token'}, drills: true}}",
        "ipvs: kernel",
        f"state_dir: {workdir / director}",
        "log_format: json",
        "",
    ])


def spread(names: Sequence[str]) -> dict[str, int]:
    """How many answers each real server gave, in first-seen order."""
    out: dict[str, int] = {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return out


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
    """True inside the kernel VM (lvsctl/vm.py sets LVSCTL_IN_VM for the guest command)."""
    return os.environ.get("LVSCTL_IN_VM") == "1"


def find_states(state_dir: Path = DEFAULT_STATE_DIR) -> list[LabState]:
    if not state_dir.is_dir():
        return []
    return [LabState.load(p) for p in sorted(state_dir.glob("*/state.json"))]


# ---------------------------------------------------------------------------------------------
# Side effects: ip, processes
# ---------------------------------------------------------------------------------------------


def run(argv: Sequence[str], *, timeout: float = 30, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv[:6])} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed (scripts/setup installs it)") from None
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()[:400]}")
    return proc


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a thread that joined ``netns``; threads it starts stay in there too.

    setns(2) changes only the calling thread, so the caller stays where it was.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}", "rb") as handle:
                if libc.setns(handle.fileno(), 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def lvsctl_command(args: Sequence[str]) -> str:
    """Run an lvsctl command in this process (the same code as the console script, without a
    new Python: one costs seconds under the VM's emulated CPU); its output, or LabError."""
    from click.testing import CliRunner

    from lvsctl.cli import cli

    result = CliRunner().invoke(cli, list(args))
    if result.exit_code != 0:
        detail = result.output.strip() or repr(result.exception)
        raise LabError(f"lvsctl {' '.join(args[:2])} exited {result.exit_code}: {detail[:400]}")
    return result.output


def lvsctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lvsctl", *args]


@dataclass
class Lab:
    """One lab: built by ``up``, removed by ``down``; ``state`` is its state file."""

    state: LabState
    echo: Echo = lambda line: None

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
        conf = self.workdir / "zk"
        (conf / "data").mkdir(parents=True, exist_ok=True)
        (conf / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, C\nlog4j.appender.C=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.C.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.C.layout.ConversionPattern=%d %-5p %m%n\n")
        cfg = conf / "zoo.cfg"
        cfg.write_text("\n".join([
            "tickTime=200", "minSessionTimeout=400", "maxSessionTimeout=20000",
            f"dataDir={conf / 'data'}", "clientPort=2181", f"clientPortAddress={ZK_ADDR}",
            "admin.enableServer=false", "4lw.commands.whitelist=ruok,srvr", "forceSync=no", ""]))
        argv = [JAVA, *ZK_JVM, f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
                "-cp", ":".join([str(conf), *ZK_JARS]), ZK_MAIN, str(cfg)]
        self._start("zk", argv, "zk")

    def wait_zookeeper(self, timeout: float = 150) -> None:
        """Until ``srvr`` answers with a ``Mode:`` line (``ruok`` answers too early)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.alive("zk") is None:
                raise LabError(f"ZooKeeper exited; see {self.workdir / 'zk.log'}")
            answer = in_netns(self.ns("client"), lambda: _four_letter(ZK_ADDR, 2181, "srvr"))
            if "Mode:" in answer:
                return
            time.sleep(0.2)
        raise LabError(f"ZooKeeper not ready after {timeout:.0f} s; see {self.workdir / 'zk.log'}")

    def write_files(self) -> Path:
        for name, text in (("zk.secret", ZK_AUTH), ("peer.secret", secrets.token_hex(16)),
                           ("api.token", secrets.token_hex(16))):
            path = self.workdir / name
            path.write_text(text + "\n")
            path.chmod(0o600)
        cluster = self.workdir / "cluster.yaml"
        cluster.write_text(cluster_yaml(self.state.lab_id, str(self.workdir / "zk.secret")))
        for director in DIRECTORS:
            (self.workdir / director).mkdir(exist_ok=True)
            (self.workdir / f"{director}.node.yaml").write_text(
                node_yaml(self.state.lab_id, director, self.workdir))
        return cluster

    def push_config(self) -> None:
        # From lb1's namespace, where ZooKeeper is reachable, as a director would push.
        in_netns(self.ns("lb1"), lambda: lvsctl_command(
            ["config", "push", str(self.workdir / "cluster.yaml")]))

    def setup_realservers(self) -> None:
        out = self.workdir / "realservers"
        lvsctl_command(["realserver", "render", str(self.workdir / "cluster.yaml"), "--all",
                        "--output", str(out)])
        names = [rs for svc in SERVICES for rs, _ in svc.realservers]
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

    def fetch(self, vip: str, count: int, timeout: float = 3.0) -> list[str]:
        """``count`` HTTP requests from the client, each on a new connection: who answered
        (``"-"`` for a failure)."""
        return in_netns(self.ns("client"), lambda: [_http_get(vip, HTTP_PORT, timeout)
                                                    for _ in range(count)])

    def log_tail(self, key: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"{key}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(line[:300] for line in text.splitlines()[-lines:])

    def ipvsadm(self, director: str) -> str:
        return run(self.exec_argv(director, ["ipvsadm", "-Ln"]), check=False).stdout

    def connections(self, director: str) -> str:
        """``ipvsadm -Lnc``: the connections ``director``'s IPVS knows (own or synced)."""
        return run(self.exec_argv(director, ["ipvsadm", "-Lnc"]), check=False).stdout

    # -- the whole thing ---------------------------------------------------------------------

    def up(self, step: Callable[[str], contextlib.AbstractContextManager[None]]) -> str:
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
            active = self.wait_active(timeout=300)
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


def _four_letter(host: str, port: int, word: str) -> str:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


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


@contextlib.contextmanager
def timed_steps(echo: Echo, clock: Callable[[], float] = time.monotonic
                ) -> Iterator[Callable[[str], contextlib.AbstractContextManager[None]]]:
    """``with step("what"):`` prints ``what ... ok (1.2 s)`` (or ``FAILED``) per step."""
    @contextlib.contextmanager
    def step(what: str) -> Iterator[None]:
        start = clock()
        echo(f"lab: {what} ...")
        try:
            yield
        except BaseException:
            echo(f"lab: {what}: FAILED after {clock() - start:.1f} s")
            raise
        echo(f"lab: {what}: ok ({clock() - start:.1f} s)")

    yield step


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    step: str
    passed: bool
    detail: str


Step = Callable[[str], contextlib.AbstractContextManager[None]]


def results_json(results: Sequence[Result], seconds: float) -> dict[str, Any]:
    """The demo's results as ``lvsctl lab demo --json`` prints them."""
    passed = sum(r.passed for r in results)
    return {"passed": bool(results) and passed == len(results), "passed_count": passed,
            "seconds": round(seconds, 1),
            "results": [{"step": r.step, "passed": r.passed, "detail": r.detail}
                        for r in results]}


FORWARD = {"nat": "Masq", "dr": "Route", "tun": "Tunnel"}  # ipvsadm -Ln's words


def expected_listing() -> dict[str, set[str]]:
    """What ``ipvsadm -Ln`` must list on a director once every real server is healthy, from
    the lab's own plan (not from lvsctl's code): ``"TCP VIP:PORT rr"`` -> its real servers'
    ``"ADDR:PORT FWD WEIGHT"``."""
    return {f"TCP {svc.vip}:{svc.port} rr": {f"{address}:{svc.port} {FORWARD[svc.mode]} 1"
                                             for _rs, address in svc.realservers}
            for svc in ALL_SERVICES}


def ipvsadm_services(listing: str) -> dict[str, set[str]]:
    """``ipvsadm -Ln`` parsed: ``"PROT VIP:PORT SCHED"`` -> its real servers'
    ``"ADDR:PORT FWD WEIGHT"``."""
    out: dict[str, set[str]] = {}
    current: str | None = None
    for line in listing.splitlines():
        words = line.split()
        if line.startswith(("TCP ", "UDP ", "SCTP ", "FWM ")) and len(words) >= 3:
            current = " ".join(words[:3])
            out[current] = set()
        elif current is not None and words[:1] == ["->"] and len(words) >= 4:
            out[current].add(" ".join(words[1:4]))
    return out


def table_matches(lab: Lab, director: str) -> tuple[bool, str]:
    """Whether ``director``'s IPVS table is what the cluster file asks for: ``lvsctl ipvs plan``
    against it finds nothing to change, and ``ipvsadm -Ln`` (the kernel read by another tool)
    lists exactly the lab's services and real servers with their forwarding and weight.

    The plan runs in this process through the command itself (a Python start costs seconds
    under the VM's emulated CPU); ``--netns`` makes it read that director's table.
    """
    from click.testing import CliRunner

    from lvsctl.cli import cli

    result = CliRunner().invoke(cli, ["ipvs", "--netns", lab.ns(director), "plan", "--json",
                                      str(lab.workdir / "cluster.yaml")])
    if result.exit_code != 0:
        return False, f"lvsctl ipvs plan exited {result.exit_code}: {result.output.strip()[:300]}"
    try:
        ops = json.loads(result.output).get("ops", [])
    except ValueError:
        return False, f"lvsctl ipvs plan printed no JSON: {result.output.strip()[:300]}"
    if ops:
        return False, f"lvsctl ipvs plan has {len(ops)} op(s): {ops[:3]}"
    listed, wanted = ipvsadm_services(lab.ipvsadm(director)), expected_listing()
    if listed != wanted:
        differ = sorted(k for k in listed.keys() | wanted.keys()
                        if listed.get(k) != wanted.get(k))
        return False, "ipvsadm -Ln differs at " + "; ".join(
            f"{k}: lists {sorted(listed.get(k, ()))}, expected {sorted(wanted.get(k, ()))}"
            for k in differ[:3])
    dests = sum(len(d) for d in listed.values())
    return True, f"plan empty; ipvsadm -Ln lists {len(listed)} services, {dests} real servers"


def wait_until(predicate: Callable[[], bool], timeout: float,
               interval: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` held, None if it did not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def wait_table(lab: Lab, director: str, timeout: float = 30) -> Result:
    """Wait until ``director``'s table matches (``table_matches``): right after a change its
    checks and reconcile pass need a moment. The result says how long it took, or why not."""
    last = ""

    def matches() -> bool:
        nonlocal last
        ok, last = table_matches(lab, director)
        return ok

    took = wait_until(matches, timeout, 0.5)
    what = f"{director}'s IPVS table equals `lvsctl ipvs plan` and `ipvsadm -Ln`"
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
class HealthLimits:
    """The bounds a health cycle is judged by, from the lab's check timing.

    A real server must stop getting new connections within ``fall x interval + margin`` of
    its listener stopping, and get them again within ``rise x interval + margin`` of its
    restart, but not before ``(rise - 1) x interval``: hysteresis needs ``rise`` successes
    in a row, an interval apart (less the scheduler's jitter, 10 ms at most).
    """

    # A check's timeout, a reconcile pass and the client's polling, on the VM's emulated CPU.
    margin: float = 4.0

    @property
    def leave(self) -> float:
        return CHECK["fall"] * CHECK["interval"] + self.margin

    @property
    def back(self) -> float:
        return CHECK["rise"] * CHECK["interval"] + self.margin

    @property
    def back_earliest(self) -> float:
        return (CHECK["rise"] - 1) * CHECK["interval"] * 0.9


def health_cycle(lab: Lab, echo: Echo, service: LabService = SERVICES[0],
                 limits: HealthLimits = HealthLimits()) -> list[Result]:
    """Stop one real server's listener: new connections must avoid it within the limits, and
    reach it again once it is restarted and has passed ``rise`` checks."""
    rs = service.realservers[0][0]
    lab.stop_listener(rs)

    def gone() -> bool:
        answers = lab.fetch(service.vip, 4, timeout=0.5)
        return all(a not in (rs, "-") for a in answers)

    left = wait_until(gone, limits.leave + 5)
    echo(f"lab:   {service.mode.upper():3} {rs} stopped: new connections avoid it after "
         f"{'never' if left is None else f'{left:.1f} s'} (limit {limits.leave:.1f} s)")
    # Two clocks: from before the listener exists (no check can pass earlier: the lower
    # bound) and from when it accepts (starting a process in the VM takes a while: the upper).
    start = time.monotonic()
    lab.start_listener(rs)
    lab.wait_listening(rs)
    back = wait_until(lambda: rs in lab.fetch(service.vip, 4, timeout=0.5), limits.back + 5)
    earliest = None if back is None else time.monotonic() - start
    back_text = "never" if back is None or earliest is None else (
        f"{back:.1f} s after it listens (limit {limits.back:.1f} s), {earliest:.1f} s after "
        f"its start (at least {limits.back_earliest:.1f} s)")
    echo(f"lab:   {service.mode.upper():3} {rs} restarted: it answers again {back_text}")
    return [
        Result(f"{service.mode.upper()} {rs} leaves when unhealthy",
               left is not None and left <= limits.leave,
               "never" if left is None else f"{left:.1f} s (limit {limits.leave:.1f} s)"),
        # Coming back means something only after it left.
        Result(f"{service.mode.upper()} {rs} returns after rise",
               left is not None and back is not None and earliest is not None
               and limits.back_earliest <= earliest and back <= limits.back, back_text),
    ]


def netns_drill_lab(lab: Lab) -> Any:
    """The drills' ``Lab`` (failover/netns_lab.py) for this lab's processes and namespaces."""
    from lvsctl.failover.netns_lab import NetnsLab
    from lvsctl.failover.vipwatch import NetnsVipObserver

    class SlowStartLab(NetnsLab):
        # The watchers are Python processes: in the VM one takes well over the default 10 s
        # to start.
        def observer(self, vips: Sequence[str]) -> NetnsVipObserver:
            return NetnsVipObserver(dict(self.namespaces), vips, ready_timeout=90.0)

    return SlowStartLab({name: lab.ns(name) for name in DIRECTORS}, pid=lab.state.alive,
                        restarter=lab.start_director, zookeeper_port=2181,
                        # No probe namespace: drill() runs in the client's namespace already,
                        # so the probe runs as a thread there instead of a new Python process.
                        peer_port=PEER_PORT, client_netns=None)


def drill(lab: Lab, kind: str, echo: Echo) -> Result:
    """One round of ``kind`` (stepdown, crash) through the drills code, probing the NAT VIP."""
    from lvsctl.core.config import load_cluster
    from lvsctl.core.node import load_node
    from lvsctl.core.zk import Target, open_cluster
    from lvsctl.failover.access import ClusterView, ZkDirectors, read_token
    from lvsctl.failover.drill import Drill, Expected
    from lvsctl.failover.probe import Target as ProbeTarget

    cluster = load_cluster(str(lab.workdir / "cluster.yaml")).cluster
    node = load_node(str(lab.workdir / "lb1.node.yaml"))

    def go() -> Any:
        with open_cluster(Target.from_node(node), connect_timeout=15) as conn:
            # A generous API timeout: the directors answer slowly under the VM's emulated CPU.
            directors = ZkDirectors(ClusterView(conn), read_token(lab.workdir / "api.token"),
                                    timeout=5.0,
                                    addresses={d.name: d.address for d in cluster.directors})
            the_drill = Drill(
                directors=directors, expected=Expected.from_cluster(cluster), kind=kind,
                rounds=1, cluster=cluster.name, lab=netns_drill_lab(lab),
                probe=ProbeTarget.parse(f"http://{SERVICES[0].vip}:{HTTP_PORT}/"),
                # A restarted director needs well over 30 s to rejoin in the VM.
                wait=120, on_progress=lambda line: echo(f"lab:   {line}"))
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
