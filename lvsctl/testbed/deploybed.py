"""The deploy test bed's run: deploy/README.md's steps against two real director hosts.

The two director hosts (``lvsctl.testbed.hosts``: systemd as PID 1, sshd, their own network
stack) run in the kernel VM, for its IPVS; everything else runs on the machine at native speed,
in network namespaces of the bed's own: the controller (192.0.2.1) with ``ansible-playbook``
and an inventory of the two hosts, a ZooKeeper ensemble of three servers and the wheel server
(the hosts have no route to a package index), and beside it the two real servers and the
client. The VM's NIC sits on a tap in the controller's bridge, so the hosts are reached over
SSH on their addresses as real hosts would be, and the directors, the real servers and the
client share one Ethernet segment, as direct routing needs.

Inside the VM a small agent (the guest side of the bed) starts the containers, watches each
director's VIP in its namespace, and does what only the VM can: pull a host's plug, power it
on, wait for its container to exit. The controller asks it over TCP on the bridge, one JSON
line per request; every answer carries the guest's clock, so what the watchers saw is put on
the controller's clock, where the client probes.

``python -m lvsctl.testbed.deploybed wheels DIR`` builds lvsctl's wheel from the checkout, the
wheels of its dependencies, and a second lvsctl wheel with a bumped version (the rolling
upgrade's new build); ``python -m lvsctl.testbed.deploybed run`` (root) sets the bed up, runs
the phases, writes ``result.json`` (and every log) into the results folder and tears the bed
down; exit 0 only when all passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvsctl.core.errors import LvsctlError
from lvsctl.testbed import vm
from lvsctl.testbed.hosts import (
    CONTROLLER_ADDRESS,
    GUEST_ADDRESS,
    SUBNET,
    HostAccess,
    HostBed,
    HostsError,
    find_image,
    host_addresses,
)
from lvsctl.testbed.netns import entered, in_netns
from lvsctl.testbed.vm import repo_root
from lvsctl.testbed.zookeeper import JARS, JAVA, JVM_OPTS, LOG4J, MAIN

Echo = Callable[[str], None]


class BedError(LvsctlError):
    """A step of the deploy test bed failed (the message says which and what was seen)."""


class PhaseFailed(BedError):
    """A phase ran to its end and found something wrong; ``findings`` is what it measured."""

    def __init__(self, message: str, findings: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.findings = dict(findings)


def _progress(line: str) -> None:
    print(f"deploy-bed: {line}", file=sys.stderr, flush=True)


# -- the bed's layout ---------------------------------------------------------------------------

DIRECTORS = ("lb1", "lb2")
VIP = f"{SUBNET}.10"
REALSERVERS = {"web1": f"{SUBNET}.21", "web2": f"{SUBNET}.22"}
CLIENT_ADDRESS = f"{SUBNET}.30"
# Two services on the VIP, both direct routing (real servers on the bridge, the VIP on their
# loopback), so "the client reaches every service" is more than one port.
SERVICES = {"www": 80, "api": 8080}
WHEEL_PORT = 8000
ZK_CLIENT_PORT = 2181
# The guest side's agent, on the VM's address on the bridge.
AGENT_PORT = 7070
UNIT = "lvsctl-director"
NODE_FILE = "/etc/lvsctl/node.yaml"
# CAP_NET_ADMIN (12) and CAP_NET_RAW (13): the unit's CapabilityBoundingSet and ambient set.
EXPECTED_CAPS = (1 << 12) | (1 << 13)
# The longest graceful takeover a client probing every 20 ms may see here. On real hardware
# the bound is 100 ms (bench/failover.py measures the same handover natively: about 45 ms);
# here the directors run on emulated CPUs, 20-30 times slower, and the same handover
# measured 67-111 ms in the kernels' view and 101-162 ms at the client. This bound still
# fails a takeover that waits for anything: a handover answer (1 s), a session (4 s).
MAX_GRACEFUL_OUTAGE = 0.500
ANSIBLE_DIR = repo_root() / "deploy" / "ansible"
UNIT_FILE = repo_root() / "deploy" / "systemd" / f"{UNIT}.service"


def cluster_document(zk_hosts: Sequence[str]) -> dict[str, Any]:
    """The bed's cluster file: the two hosts, the VIP, the services on the real servers."""
    directors = [{
        "name": name, "address": f"{address}/24", "interface": "eth0",
        "peer": {"address": address, "port": 7946},
        "sync": {"interface": "eth0", "id": 1},
    } for name, address in host_addresses(DIRECTORS).items()]
    services = [{
        "name": name, "vip": VIP, "port": port, "protocol": "tcp", "forwarding": "dr",
        "scheduler": "rr", "check": {"type": "tcp", "interval": "1s", "timeout": "500ms"},
        "realservers": [{"name": rs, "address": address} for rs, address in REALSERVERS.items()],
    } for name, port in SERVICES.items()]
    return {
        "cluster": "web",
        "zookeeper": {"hosts": list(zk_hosts), "root": "/lvsctl", "session_timeout": "4s",
                      "auth": "/etc/lvsctl/zk.secret"},
        "directors": directors,
        "vips": [{"address": VIP, "interface": "eth0"}],
        "services": services,
    }


# -- wheels (the machine) -------------------------------------------------------------------------

WHEELS_MANIFEST = "wheels.json"


def bumped_version(version: str) -> str:
    """The next build's version: a post-release of ``version`` (0.1.0 -> 0.1.0.post1), which
    ``lvsctl==0.1.0`` does not match. Raises BedError for a version that is not plain N.N.N."""
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise BedError(f"pyproject.toml version {version!r}: expected a plain release N.N.N")
    return f"{version}.post1"


def _checkout_copy(dest: Path, version: str | None) -> None:
    """The checkout's files (tracked and untracked, not ignored) copied to ``dest``; with
    ``version``, pyproject.toml and lvsctl/__init__.py say that version."""
    root = repo_root()
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60).stdout.decode()
    for name in filter(None, listing.split("\0")):
        src = root / name
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    if version is None:
        return
    for rel, key in (("pyproject.toml", "version"), ("lvsctl/__init__.py", "__version__")):
        path = dest / rel
        text, count = re.subn(rf'(?m)^{key} = "[^"]*"$', f'{key} = "{version}"',
                              path.read_text())
        if count != 1:
            raise BedError(f"{rel}: no single version line to bump")
        path.write_text(text)


def build_wheels(output: Path, progress: Echo = _progress) -> dict[str, str]:
    """lvsctl's wheel with its dependencies' wheels, and the bumped build, into ``output``.

    Writes ``wheels.json`` (``wheel``, ``upgrade``: file names; ``version``, ``upgrade_version``)
    and returns it. Needs the package index (the host side). Raises BedError.
    """
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("lvsctl-*.whl"):
        old.unlink()
    version = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]["version"]
    upgrade = bumped_version(version)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lvsctl-wheels-") as tmp:
        for label, ver, deps in (("current", None, True), ("upgrade", upgrade, False)):
            src = Path(tmp) / label
            _checkout_copy(src, ver)
            argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(output), str(src)]
            if not deps:
                argv.insert(4, "--no-deps")
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise BedError(f"pip wheel ({label}) failed: "
                               f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    manifest = {"wheel": f"lvsctl-{version}-py3-none-any.whl", "version": version,
                "upgrade": f"lvsctl-{upgrade}-py3-none-any.whl", "upgrade_version": upgrade}
    for key in ("wheel", "upgrade"):
        if not (output / manifest[key]).is_file():
            raise BedError(f"pip wheel wrote no {manifest[key]} into {output}")
    (output / WHEELS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    progress(f"wheels {manifest['wheel']} and {manifest['upgrade']} with "
             f"{len(list(output.glob('*.whl'))) - 2} dependencies in {time.monotonic() - t0:.1f} s")
    return manifest


# -- processes the bed owns (ZooKeeper, the wheel server, the real servers' HTTP) ------------


@dataclass
class Processes:
    """Every process the bed started, stopped by PID at the end (SIGTERM, then SIGKILL)."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, label: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((label, proc))
        return proc

    def check(self) -> None:
        """Raises BedError when one of them has exited."""
        for label, proc in self.procs:
            if proc.poll() is not None:
                raise BedError(f"{label} exited ({proc.returncode})")

    def close(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self.procs = []


def start_ensemble(procs: Processes, workdir: Path, servers: int, logs: Path) -> list[str]:
    """``servers`` ZooKeeper servers (3: an ensemble; 1: standalone) on the controller's
    address, each with its own client and quorum ports; returns the connection strings.
    Does not wait: ``wait_ensemble``."""
    quorum = [f"server.{i}={CONTROLLER_ADDRESS}:{2887 + i}:{3887 + i}"
              for i in range(1, servers + 1)] if servers > 1 else []
    hosts = []
    for i in range(1, servers + 1):
        folder = workdir / f"zk{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "myid").write_text(f"{i}\n")
        (folder / "log4j.properties").write_text(LOG4J)
        port = ZK_CLIENT_PORT + i - 1
        # tickTime 250 ms: sessions of 0.5-60 s; initLimit and syncLimit in ticks are generous
        # (30 s, 5 s): the machine also runs the VM's emulated CPUs, which can starve a
        # follower for a while.
        (folder / "zoo.cfg").write_text("\n".join([
            "tickTime=250", "initLimit=120", "syncLimit=20", "minSessionTimeout=500",
            "maxSessionTimeout=60000", f"dataDir={folder / 'data'}", f"clientPort={port}",
            f"clientPortAddress={CONTROLLER_ADDRESS}", "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,stat,mntr", "forceSync=no", *quorum, ""]))
        procs.start(f"zookeeper {i}", [
            JAVA, "-Xmx128m", *JVM_OPTS, f"-Dlog4j.configuration=file:{folder}/log4j.properties",
            "-cp", ":".join([str(folder), *JARS]), MAIN, str(folder / "zoo.cfg")],
            logs / f"zookeeper-{i}.log")
        hosts.append(f"{CONTROLLER_ADDRESS}:{port}")
    return hosts


def _four_letter(hostport: str, word: str) -> str:
    import socket

    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def wait_ensemble(hosts: Sequence[str], procs: Processes, timeout: float) -> dict[str, str]:
    """Waits until every server answers ``srvr`` with a mode (leader, follower, standalone)
    and one is the leader (or standalone); returns the modes. Raises BedError."""
    deadline = time.monotonic() + timeout
    modes: dict[str, str] = {}
    while time.monotonic() < deadline:
        procs.check()
        for hostport in hosts:
            with contextlib.suppress(OSError):
                found = re.search(r"^Mode: (\w+)", _four_letter(hostport, "srvr"), re.M)
                if found:
                    modes[hostport] = found.group(1)
        if len(modes) == len(hosts) and {"leader", "standalone"} & set(modes.values()):
            return modes
        time.sleep(1.0)
    raise BedError(f"ZooKeeper not ready after {timeout:.0f} s: modes {modes}")


# -- the guest side: the agent in the kernel VM -----------------------------------------------


class Agent:
    """What the controller may ask of the guest side, by name (``OPS``); each answer is a
    dict, and ``now`` (the guest's wall clock) is added to it."""

    OPS = ("now", "check", "holders", "holds", "kill", "power_on", "wait_exit", "stop")

    def __init__(self, hosts: HostBed, observer: Any) -> None:
        self.hosts = hosts
        self.observer = observer
        self.stopped = threading.Event()

    def now(self) -> dict[str, Any]:
        return {}

    def check(self) -> dict[str, Any]:
        self.hosts.check()
        return {}

    def holders(self) -> dict[str, Any]:
        """The directors whose eth0 holds the VIP now (the kernel's view, from the namespace)."""
        holders = []
        for host in self.hosts.hosts:
            out = subprocess.run(["ip", "-n", host.netns, "-o", "addr", "show", "dev", "eth0"],
                                 capture_output=True, text=True, timeout=30).stdout
            if f" {VIP}/" in out:
                holders.append(host.name)
        return {"holders": holders}

    def holds(self) -> dict[str, Any]:
        return {"holds": [[h.director, h.vip, h.start, h.end] for h in self.observer.holds()]}

    def kill(self, host: str) -> dict[str, Any]:
        self.hosts.kill(self.hosts.host(host))
        return {}

    def power_on(self, host: str) -> dict[str, Any]:
        self.hosts.power_on(self.hosts.host(host))
        return {}

    def wait_exit(self, host: str, limit: float) -> dict[str, Any]:
        return {"code": self.hosts.wait_exit(self.hosts.host(host), timeout=limit)}

    def stop(self) -> dict[str, Any]:
        self.stopped.set()
        return {}

    def answer(self, line: bytes) -> bytes:
        """One request line (``{"op": NAME, ...arguments}``) to one answer line."""
        try:
            request = json.loads(line)
            op = request.pop("op")
            if op not in self.OPS:
                raise BedError(f"no operation {op!r}")
            reply = {"ok": True, **getattr(self, op)(**request)}
        except (LvsctlError, ValueError, TypeError, KeyError, OSError,
                subprocess.SubprocessError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["now"] = time.time()
        return json.dumps(reply).encode() + b"\n"

    def serve(self, address: str, port: int, timeout: float) -> None:
        """Answers the controller (one connection at a time) until ``stop`` or ``timeout``."""
        agent = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while not agent.stopped.is_set() and (line := self.rfile.readline(65536)):
                    self.wfile.write(agent.answer(line))
                    self.wfile.flush()

        class Server(socketserver.TCPServer):
            allow_reuse_address = True

        with Server((address, port), Handler) as server:
            server.timeout = 1.0
            deadline = time.monotonic() + timeout
            while not self.stopped.is_set() and time.monotonic() < deadline:
                server.handle_request()


def guest(workdir: Path, logs: Path, timeout: float, progress: Echo = _progress) -> None:
    """The guest side of a run: the director hosts (keys from ``workdir``/access), the VIP
    watchers, then the agent until the controller says stop. Tears all of it down, copying
    each host's console log into ``logs``. Raises BedError or HostsError."""
    from lvsctl.failover.vipwatch import NetnsVipObserver

    access = HostAccess(workdir / "access", DIRECTORS)
    local = Path(tempfile.mkdtemp(prefix="lvsctl-deploybed-guest-"))
    hosts = HostBed(find_image(), access, local / "hosts", uplink="eth0", progress=progress)
    try:
        with hosts:
            observer = NetnsVipObserver({h.name: h.netns for h in hosts.hosts}, [VIP],
                                        ready_timeout=300)
            observer.start()
            try:
                progress(f"guest side ready: agent on {GUEST_ADDRESS}:{AGENT_PORT}")
                Agent(hosts, observer).serve(GUEST_ADDRESS, AGENT_PORT, timeout)
            finally:
                observer.stop()
                for host in hosts.hosts:
                    with contextlib.suppress(OSError):
                        shutil.copy(host.folder / "console.log", logs / f"{host.name}-console.log")
    finally:
        shutil.rmtree(local, ignore_errors=True)


# -- the controller side ------------------------------------------------------------------------


class AgentClient:
    """The controller's connection to the guest side's agent; puts guest times on this clock."""

    def __init__(self, timeout: float, alive: Callable[[], None]) -> None:
        """Connects, retrying while the VM boots; ``alive`` raises when the VM has ended.
        Raises BedError when the agent does not answer within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            alive()
            try:
                self.sock = socket.create_connection((GUEST_ADDRESS, AGENT_PORT), timeout=5)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise BedError(f"the VM's agent on {GUEST_ADDRESS}:{AGENT_PORT} did not "
                                   f"answer within {timeout:.0f} s: {exc}") from None
                time.sleep(1.0)
        self.file = self.sock.makefile("rwb")
        self.offset = 0.0  # guest clock minus this clock
        self.sync_clock()

    def call(self, op: str, *, timeout: float = 120, **args: Any) -> dict[str, Any]:
        """One request; returns the answer. Raises BedError for a failed one."""
        self.sock.settimeout(timeout)
        try:
            self.file.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self.file.flush()
            line = self.file.readline()
        except OSError as exc:
            raise BedError(f"the VM's agent ({op}): {exc}") from None
        if not line:
            raise BedError(f"the VM's agent closed the connection ({op})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise BedError(f"in the VM, {op}: {reply['error']}")
        return reply

    def sync_clock(self, rounds: int = 7) -> float:
        """Estimates the guest clock's offset from the answer with the shortest round trip
        (its error is at most half that round trip); returns the round trip."""
        best = None
        for _ in range(rounds):
            sent = time.time()
            now = self.call("now")["now"]
            back = time.time()
            if best is None or back - sent < best[0]:
                best = (back - sent, now - (sent + back) / 2)
        assert best is not None
        self.offset = best[1]
        return best[0]

    def holds(self) -> list[tuple[str, float, float | None]]:
        """Every VIP hold the watchers saw so far, (director, start, end) on this clock."""
        self.sync_clock()
        return [(director, start - self.offset, None if end is None else end - self.offset)
                for director, _, start, end in self.call("holds")["holds"]]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Bed:
    """The controller's view of the bed: SSH to the hosts, the agent in the VM, the
    processes beside them, the results folder."""

    access: HostAccess
    agent: AgentClient
    results: Path
    workdir: Path
    wheels: Path
    manifest: Mapping[str, str]
    zk_hosts: list[str]
    client_ns: str
    procs: Processes
    progress: Echo = _progress

    @property
    def logs(self) -> Path:
        return self.results / "logs"

    def ssh(self, host: str, command: Sequence[str], *, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.access.ssh(host, command, timeout=timeout, check=check)

    def check(self) -> None:
        """Raises BedError when a process of the bed or a container in the VM has exited."""
        self.procs.check()
        self.agent.call("check")

    # -- Ansible --------------------------------------------------------------------------------

    def inventory(self) -> Path:
        wheel_url = f"http://{CONTROLLER_ADDRESS}:{WHEEL_PORT}/"
        return self.access.inventory(self.workdir / "inventory.json", group_vars={
            "lvsctl_cluster_file": str(self.workdir / "cluster.yaml"),
            "lvsctl_wheel": str(self.wheels / self.manifest["wheel"]),
            # The hosts reach no package index: the dependencies come from the bed's wheel
            # server, as from a private mirror.
            "lvsctl_pip_extra_args": (f"--no-index --find-links {wheel_url} "
                                      f"--trusted-host {CONTROLLER_ADDRESS}"),
            "lvsctl_secrets_local_dir": str(self.workdir / "secrets"),
            "lvsctl_apt_update_cache": False,
        })

    def playbook(self, name: str, extra: Mapping[str, str] | None = None,
                 timeout: float = 1800) -> dict[str, Any]:
        """Runs ``ansible-playbook NAME`` from deploy/ansible with the bed's inventory; its
        output, each line with the seconds since the start, goes to logs/NAME.log. Returns the
        time and the slowest tasks. Raises BedError when it fails."""
        log = self.logs / f"{name.removesuffix('.yml')}.log"
        env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
               "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_PIPELINING": "True",
               "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp")}
        argv = ["ansible-playbook", "-i", str(self.inventory()), name]
        if extra:
            argv += ["-e", json.dumps(dict(extra))]
        t0 = time.monotonic()
        tasks: list[tuple[float, str]] = []
        proc = subprocess.Popen(argv, cwd=ANSIBLE_DIR, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            with open(log, "w") as out:
                for line in proc.stdout:
                    now = time.monotonic() - t0
                    out.write(f"{now:7.1f} {line}")
                    out.flush()
                    if line.startswith(("TASK [", "PLAY [", "RUNNING HANDLER [")):
                        tasks.append((now, line.split("[", 1)[1].rsplit("]", 1)[0]))
                    if line.startswith(("fatal:", "PLAY RECAP", "failed:")):
                        self.progress(f"{name}: {line.strip()[:300]}")
            rc = proc.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - t0
        durations = [(b[0] - a[0], a[1]) for a, b in zip(tasks, [*tasks[1:], (seconds, "")],
                                                           strict=True)]
        slowest = sorted(durations, reverse=True)[:8]
        self.progress(f"{name}: exit {rc} after {seconds:.0f} s")
        if rc != 0:
            raise BedError(f"ansible-playbook {name} failed (exit {rc}); see {log}")
        return {"seconds": round(seconds, 1), "tasks": len(tasks),
                "slowest": [{"task": t, "seconds": round(s, 1)} for s, t in slowest]}

    # -- looking at the hosts ------------------------------------------------------------------

    def unit(self, host: str) -> dict[str, str]:
        """``systemctl show`` of the director's unit on ``host`` (a few properties)."""
        out = self.ssh(host, [
            "systemctl", "show", UNIT, "-p", "ActiveState", "-p", "SubState", "-p", "Type",
            "-p", "MainPID", "-p", "NRestarts", "-p", "ExecMainStartTimestampMonotonic",
            "-p", "UnitFileState", "-p", "ControlGroup", "-p", "LimitNOFILE",
            "-p", "LimitNOFILESoft", "-p", "MemoryMax", "-p", "MemoryHigh", "-p", "TasksMax",
        ]).stdout
        return {key: value for key, _, value in
                (line.partition("=") for line in out.splitlines()) if value or key}

    def roles(self, via: str) -> dict[str, str]:
        """Director name -> role, as ``lvsctl status --json`` on ``via`` shows them ({} when
        the command fails or hangs: ZooKeeper or the host unreachable)."""
        try:
            proc = self.ssh(via, ["sudo", "lvsctl", "status", "--node", NODE_FILE, "--json"],
                            check=False, timeout=180)
        except subprocess.TimeoutExpired:
            return {}
        if proc.returncode != 0:
            return {}
        try:
            directors = json.loads(proc.stdout)["directors"]
            return {name: str(record["role"]) for name, record in directors.items()}
        except (ValueError, KeyError, TypeError):
            return {}

    def wait_roles(self, expect: Mapping[str, str], via: str, timeout: float = 600,
                   ) -> dict[str, str]:
        """Waits until ``lvsctl status`` shows exactly ``expect`` (name -> ACTIVE/STANDBY).
        Raises BedError with the last roles seen."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = self.roles(via)
            if seen == dict(expect):
                return seen
            time.sleep(2.0)
        raise BedError(f"roles {seen} after {timeout:.0f} s, expected {dict(expect)}")

    def vip_holders(self) -> list[str]:
        """The hosts whose eth0 holds the VIP now (the kernel's view, asked of the VM)."""
        holders: list[str] = self.agent.call("holders")["holders"]
        return holders

    def wait_vip(self, name: str, timeout: float = 120) -> float:
        """Waits until ``name`` alone holds the VIP; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.vip_holders() == [name]:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise BedError(f"{name} does not hold {VIP} alone after {timeout:.0f} s "
                       f"(holders: {self.vip_holders()})")

    def installed_version(self, host: str) -> str:
        out = self.ssh(host, ["/usr/local/bin/lvsctl", "--version"], timeout=180).stdout
        return out.strip().rsplit(" ", 1)[-1]

    def client_answers(self, rounds: int = 6) -> dict[str, list[str]]:
        """Per service, the real servers that answered ``rounds`` new connections to the VIP
        from the client's namespace (nothing for a connection that failed)."""
        def ask() -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {}
            for service, port in SERVICES.items():
                names = []
                for _ in range(rounds):
                    with (contextlib.suppress(OSError, urllib.error.URLError),
                          urllib.request.urlopen(f"http://{VIP}:{port}/", timeout=3) as resp):
                        names.append(resp.read().decode().strip())
                seen[service] = sorted(set(names))
            return seen

        return in_netns(self.client_ns, ask)

    def wait_client(self, timeout: float = 180) -> dict[str, list[str]]:
        """Waits until every service answered from both real servers (round robin)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            seen = self.client_answers()
            if all(names == sorted(REALSERVERS) for names in seen.values()):
                return seen
            time.sleep(2.0)
        raise BedError(f"the client reached {seen}, expected {sorted(REALSERVERS)} "
                       f"behind each of {sorted(SERVICES)}")

    def collect(self) -> None:
        """Each host's unit status and journal of the director into logs/ (after a failure)."""
        for host in DIRECTORS:
            for label, argv in (("status", ["systemctl", "status", "--no-pager", UNIT]),
                                ("journal", ["journalctl", "-u", UNIT, "-n", "300",
                                             "--no-pager"])):
                with contextlib.suppress(HostsError, subprocess.TimeoutExpired):
                    proc = self.ssh(host, ["sudo", *argv], check=False, timeout=120)
                    (self.logs / f"{host}-{label}.txt").write_text(proc.stdout + proc.stderr)


# -- measuring a takeover -----------------------------------------------------------------------


@contextlib.contextmanager
def watched(bed: Bed, duration: float) -> Iterator[dict[str, Any]]:
    """A client probe to the VIP every 20 ms while the block runs, from the client's namespace;
    afterwards the dict it yields holds the outage windows, and the overlaps and VIP holds the
    watchers in the VM saw (seconds on this machine's wall clock)."""
    from lvsctl.failover.probe import Probe, Target
    from lvsctl.failover.timeline import Hold, outage_windows, overlaps

    found: dict[str, Any] = {}
    probe = Probe(Target.parse(f"http://{VIP}/"), netns=bed.client_ns, duration=duration)
    began = time.time()
    try:
        probe.start()
        # Wait for the probe's first answers before the block acts, so the measurement starts
        # from a working service.
        deadline = time.monotonic() + 60
        while not any(s.ok for s in probe.samples()) and time.monotonic() < deadline:
            time.sleep(0.1)
        yield found
    finally:
        samples = probe.stop()
        # Holds that ended before the block began are history of an earlier block.
        holds = [Hold(director, VIP, start, end) for director, start, end in bed.agent.holds()
                 if end is None or end > began]
        horizon = time.time()
        found["samples"] = len(samples)
        found["failed"] = sum(1 for s in samples if not s.ok)
        found["windows"] = [(w.start, w.end) for w in outage_windows(samples)]
        found["overlaps"] = [(o.start, o.end) for o in overlaps(holds, horizon)]
        found["holds"] = [(h.director, h.start, h.end) for h in holds]


def _first_hold(found: Mapping[str, Any], director: str, after: float) -> float | None:
    """When ``director`` first held the VIP at or after ``after`` (None: it did not)."""
    starts = [start for name, start, _ in found["holds"] if name == director and start >= after]
    return min(starts) if starts else None


def _takeover(found: Mapping[str, Any], director: str, after: float) -> float | None:
    first = _first_hold(found, director, after)
    return None if first is None else round(first - after, 3)


def _summary(found: Mapping[str, Any], director: str, after: float) -> dict[str, Any]:
    """What the client and the watchers saw, with the kernels' view of ``director``'s takeover
    after ``after``: the gap between the other's last hold ending and its first hold."""
    first = _first_hold(found, director, after)
    ends = [end for name, _, end in found["holds"]
            if name != director and end is not None and first is not None and end <= first]
    gap = round((first - max(ends)) * 1000, 1) if first is not None and ends else None
    return {"probes": found["samples"], "failed_probes": found["failed"],
            "outages_ms": [round((end - start) * 1000, 1) for start, end in found["windows"]],
            "vip_gap_ms": gap,
            "overlap_ms": round(sum(end - start for start, end in found["overlaps"]) * 1000, 1)}


# -- the phases ---------------------------------------------------------------------------------


def phase_site(bed: Bed) -> dict[str, Any]:
    """site.yml on both hosts; both units active (Type=notify: READY reached), one director
    active holding the VIP, the other standby, the client answered behind every service."""
    run = bed.playbook("site.yml")
    units = {}
    for host in DIRECTORS:
        is_active = bed.ssh(host, ["systemctl", "is-active", UNIT], check=False)
        unit = bed.unit(host)
        units[host] = {"is_active": is_active.stdout.strip(), "type": unit.get("Type"),
                       "enabled": unit.get("UnitFileState")}
        # A Type=notify unit is "active" only once its main process sent READY=1.
        if is_active.returncode != 0 or unit.get("Type") != "notify":
            raise BedError(f"{host}: {UNIT} is {is_active.stdout.strip()!r} "
                           f"(Type={unit.get('Type')})")
    roles = bed.roles(DIRECTORS[0])
    if sorted(roles.values()) != ["ACTIVE", "STANDBY"]:
        raise BedError(f"after site.yml lvsctl status shows {roles}")
    active = next(name for name, role in roles.items() if role == "ACTIVE")
    bed.wait_vip(active, timeout=60)
    return {"playbook": run, "units": units, "roles": roles,
            "client": bed.wait_client()}


def _proc_status(bed: Bed, host: str, pid: str) -> dict[str, str]:
    out = bed.ssh(host, ["sudo", "cat", f"/proc/{pid}/status"]).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def unit_limits(text: str) -> dict[str, str]:
    """The resource limits a unit file sets (``Limit*=``, ``Memory{Max,High}=``,
    ``TasksMax=``), by name, last one winning as in systemd."""
    limits: dict[str, str] = {}
    for line in text.splitlines():
        found = re.fullmatch(r"\s*(Limit[A-Z]+|MemoryMax|MemoryHigh|TasksMax)\s*=\s*(\S*)\s*",
                             line)
        if found:
            limits[found.group(1)] = found.group(2)
    return limits


def phase_hardening(bed: Bed) -> dict[str, Any]:
    """On each running director: its capabilities from /proc/PID/status, that its view of
    the file system is read-only but for its state directory, and that the limits the unit
    sets are those in effect for the process and its cgroup."""
    report: dict[str, Any] = {"unit_sets": unit_limits(UNIT_FILE.read_text())}
    for host in DIRECTORS:
        unit = bed.unit(host)
        pid = unit["MainPID"]
        status = _proc_status(bed, host, pid)
        caps = {k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")}
        uid = status["Uid"].split()[0]
        gid = status["Gid"].split()[0]
        if uid == "0" or caps["CapEff"] != EXPECTED_CAPS or caps["CapBnd"] != EXPECTED_CAPS:
            raise BedError(f"{host}: director PID {pid} runs as uid {uid} with CapEff "
                           f"{caps['CapEff']:#x} CapBnd {caps['CapBnd']:#x}, expected "
                           f"{EXPECTED_CAPS:#x} (CAP_NET_ADMIN, CAP_NET_RAW) and a user")
        writes = {}
        # Root in the director's mount namespace: only a read-only mount can refuse it, so a
        # refusal is the unit's ProtectSystem=, not a file's owner. Then the daemon's own user
        # in its state directory, which must work. --root: the director's own root, not the
        # base of its mount tree (in a container that is the machine's).
        for path in ("/etc", "/etc/lvsctl", "/opt/lvsctl/venv", "/usr/local/bin", "/var/lib",
                     "/var/log"):
            probe = bed.ssh(host, ["sudo", "nsenter", f"--target={pid}", "--mount", "--root",
                                   "--", "touch", f"{path}/.lvsctl-bed-probe"], check=False)
            writes[path] = "refused" if probe.returncode != 0 else "WRITTEN"
            if probe.returncode == 0 or "Read-only file system" not in probe.stderr:
                raise BedError(f"{host}: a write to {path} in the director's view: "
                               f"exit {probe.returncode} {probe.stderr.strip()!r}")
        state = bed.ssh(host, ["sudo", "nsenter", f"--target={pid}", "--mount", "--root",
                               f"--setuid={uid}", f"--setgid={gid}", "--", "sh", "-c",
                               "'touch /var/lib/lvsctl/.bed-probe && "
                               "rm /var/lib/lvsctl/.bed-probe'"], check=False)
        writes["/var/lib/lvsctl"] = "written" if state.returncode == 0 else "REFUSED"
        if state.returncode != 0:
            raise BedError(f"{host}: the director's user cannot write its state "
                           f"directory: {state.stderr.strip()!r}")
        limits = bed.ssh(host, ["sudo", "cat", f"/proc/{pid}/limits"]).stdout
        files = re.search(r"^Max open files\s+(\S+)\s+(\S+)", limits, re.M)
        if files is None:
            raise BedError(f"{host}: /proc/{pid}/limits has no 'Max open files'")
        effective = {"nofile_soft": files.group(1), "nofile_hard": files.group(2)}
        if (files.group(1), files.group(2)) != (unit["LimitNOFILESoft"], unit["LimitNOFILE"]):
            raise BedError(f"{host}: open files {files.group(1)}/{files.group(2)} in "
                           f"effect, the unit says {unit['LimitNOFILESoft']}/"
                           f"{unit['LimitNOFILE']}")
        cgroup = f"/sys/fs/cgroup{unit['ControlGroup']}"
        for prop, cgfile in (("MemoryMax", "memory.max"), ("MemoryHigh", "memory.high"),
                             ("TasksMax", "pids.max")):
            read = bed.ssh(host, ["cat", f"{cgroup}/{cgfile}"], check=False)
            have = read.stdout.strip() if read.returncode == 0 else "absent"
            want = "max" if unit.get(prop) == "infinity" else unit.get(prop, "")
            effective[cgfile] = have
            # A limit the unit sets must be enforced; an unset one may lack its controller.
            if prop in report["unit_sets"] and have != want:
                raise BedError(f"{host}: {cgfile} is {have}, the unit sets {prop}={want}")
        report[host] = {"pid": pid, "uid": uid, "caps": {k: f"{v:#x}" for k, v in
                                                               caps.items()},
                             "writes": writes, "limits": effective}
    return report


def phase_rolling(bed: Bed) -> dict[str, Any]:
    """rolling.yml to the bumped build under a client probe every 20 ms: failed probes only
    at the graceful takeover (at most MAX_GRACEFUL_OUTAGE), the VIP never on both, both
    directors running the new version at the end, the roles swapped."""
    roles = bed.roles(DIRECTORS[0])
    if sorted(roles.values()) != ["ACTIVE", "STANDBY"]:
        raise BedError(f"before the upgrade lvsctl status shows {roles}")
    active = next(name for name, role in roles.items() if role == "ACTIVE")
    standby = next(name for name, role in roles.items() if role == "STANDBY")
    # The unit's start time on each host, by the VM's clock: a new one means a restart.
    starts = {h: bed.unit(h)["ExecMainStartTimestampMonotonic"] for h in DIRECTORS}
    wall = time.time()
    with watched(bed, duration=3000) as found:
        run = bed.playbook("rolling.yml", {"lvsctl_wheel": str(bed.wheels /
                                                              bed.manifest["upgrade"])})
    summary = _summary(found, standby, wall)
    takeover = _takeover(found, standby, wall)
    versions = {h: bed.installed_version(h) for h in DIRECTORS}
    restarted = {h: bed.unit(h)["ExecMainStartTimestampMonotonic"] != starts[h]
                 for h in DIRECTORS}
    after = bed.wait_roles({standby: "ACTIVE", active: "STANDBY"}, DIRECTORS[0], timeout=120)
    result = {"playbook": run, "before": {"active": active, "standby": standby},
              "after": after, "versions": versions, "restarted": restarted,
              "takeover_after_start_s": takeover, **summary}
    problems = []
    if len(summary["outages_ms"]) > 1 or any(ms > MAX_GRACEFUL_OUTAGE * 1000
                                              for ms in summary["outages_ms"]):
        problems.append(f"outages {summary['outages_ms']} ms (at most one, of at most "
                        f"{MAX_GRACEFUL_OUTAGE * 1000:.0f} ms)")
    if found["overlaps"]:
        problems.append(f"the VIP was on both for {summary['overlap_ms']} ms")
    if set(versions.values()) != {bed.manifest["upgrade_version"]} or not all(restarted.values()):
        problems.append(f"versions {versions}, restarted since the upgrade began {restarted}")
    if problems:
        raise PhaseFailed("rolling upgrade: " + "; ".join(problems), result)
    return result


def _failure(bed: Bed, kind: str, inject: Callable[[str], None],
             recover: Callable[[str], None], max_outage: float | None = None) -> dict[str, Any]:
    """One failure of the active director's host: the takeover by the other as the VIP
    watchers and the client saw it, then the failed host back as standby by itself. With
    ``max_outage`` (a graceful takeover) the client may see one outage of at most that long."""
    holders = bed.vip_holders()
    if len(holders) != 1:
        raise BedError(f"{kind}: the VIP is on {holders} before the failure")
    victim = holders[0]
    other = next(h for h in DIRECTORS if h != victim)
    restarts = int(bed.unit(victim).get("NRestarts", "0"))
    with watched(bed, duration=3000) as found:
        injected = time.time()
        inject(victim)
        bed.wait_vip(other, timeout=180)
        recover(victim)
        back = bed.wait_roles({other: "ACTIVE", victim: "STANDBY"}, other, timeout=900)
        back_after = time.time() - injected
    result = {"failed": victim, "took_over": other,
              "takeover_s": _takeover(found, other, injected),
              "back_as_standby_after_s": round(back_after, 1), "roles": back,
              **_summary(found, other, injected)}
    if kind == "kill":
        result["systemd_restarts"] = int(bed.unit(victim).get("NRestarts", "0")) - restarts
        if result["systemd_restarts"] < 1:
            raise PhaseFailed(f"kill: systemd did not restart {victim}'s director", result)
    if found["overlaps"]:
        raise PhaseFailed(f"{kind}: the VIP was on both directors for {result['overlap_ms']} ms",
                          result)
    if max_outage is not None and (len(result["outages_ms"]) > 1 or any(
            ms > max_outage * 1000 for ms in result["outages_ms"])):
        raise PhaseFailed(f"{kind}: outages {result['outages_ms']} ms (at most one, of at most "
                          f"{max_outage * 1000:.0f} ms)", result)
    return result


STEPDOWN_ROUNDS = 3


def phase_stepdowns(bed: Bed) -> dict[str, Any]:
    """Graceful takeovers, as the rolling upgrade makes one: ``systemctl restart`` of the
    active director's unit (SIGTERM: a stepdown, then a start), STEPDOWN_ROUNDS times, each
    with one outage of at most MAX_GRACEFUL_OUTAGE for the client, no overlap, the old active
    back as standby."""
    def restart(host: str) -> None:
        bed.ssh(host, ["sudo", "systemctl", "restart", UNIT])

    def back(host: str) -> None:
        pass  # the unit started again: waited for through lvsctl status

    rounds: list[dict[str, Any]] = []
    for _ in range(STEPDOWN_ROUNDS):
        try:
            rounds.append(_failure(bed, "stepdown", restart, back, MAX_GRACEFUL_OUTAGE))
        except PhaseFailed as exc:
            raise PhaseFailed(str(exc), {"rounds": [*rounds, exc.findings]}) from None
    return {"rounds": rounds}


def phase_failures(bed: Bed) -> dict[str, Any]:
    """SIGKILL of the active director (systemd restarts it), its host stopped without
    warning (then powered on again), a reboot of the active host."""
    def kill(host: str) -> None:
        # The keeper (the main PID): its worker follows as its channel closes. Not the whole
        # cgroup: inside the bed's containers systemd fails to signal the rest (EIO).
        bed.ssh(host, ["sudo", "systemctl", "kill", "--kill-whom=main", "--signal=KILL", UNIT])

    def restarted(host: str) -> None:
        pass  # Restart=on-failure: systemd's own work, waited for through lvsctl status

    def pull_plug(host: str) -> None:
        bed.agent.call("kill", host=host)

    def power_on(host: str) -> None:
        bed.agent.call("power_on", host=host)
        bed.access.wait_hosts([host], timeout=900, alive=bed.check)

    def reboot(host: str) -> None:
        # The connection drops while the command runs: its exit status says nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            bed.ssh(host, ["sudo", "systemctl", "reboot"], check=False, timeout=60)

    def reboots(host: str) -> None:
        # What systemd-nspawn@.service does (RestartForceExitStatus=133): a container whose
        # init asked for a reboot exits 133 and is started again.
        code = bed.agent.call("wait_exit", host=host, limit=600, timeout=660)["code"]
        if code != 133:
            raise BedError(f"reboot: {host}'s container exited {code}, not 133")
        power_on(host)

    found: dict[str, Any] = {}
    for kind, inject, recover in (("kill", kill, restarted), ("host_stop", pull_plug, power_on),
                                  ("reboot", reboot, reboots)):
        try:
            found[kind] = _failure(bed, kind, inject, recover)
        except PhaseFailed as exc:
            raise PhaseFailed(str(exc), {**found, kind: exc.findings}) from None
    return found


PHASES: dict[str, Callable[[Bed], dict[str, Any]]] = {
    "site": phase_site,
    "hardening": phase_hardening,
    "rolling": phase_rolling,
    "stepdowns": phase_stepdowns,
    "failures": phase_failures,
}


# -- the run ------------------------------------------------------------------------------------

TAP = "lvdtap0"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BedError(f"ip {' '.join(args[:4])} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def controller_network() -> Iterator[tuple[str, dict[str, str]]]:
    """The controller's namespace on this machine (a bridge at 192.0.2.1 with the tap the VM's
    NIC will use) and, on that bridge, a namespace each for the client and the real servers;
    yields the controller's name and theirs (by ``client``, ``web1``...), removes them all
    afterwards."""
    tag = os.getpid() % 100000
    ctl = f"lvdc{tag}"
    others = {"client": CLIENT_ADDRESS, **REALSERVERS}
    names = {label: f"lvd{tag}{label}"[:15] for label in others}
    made: list[str] = []
    try:
        _ip("netns", "add", ctl)
        made.append(ctl)
        _ip("-n", ctl, "link", "set", "lo", "up")
        _ip("-n", ctl, "link", "add", "br0", "type", "bridge")
        _ip("-n", ctl, "addr", "add", f"{CONTROLLER_ADDRESS}/24", "dev", "br0")
        _ip("-n", ctl, "link", "set", "br0", "up")
        _ip("-n", ctl, "tuntap", "add", "dev", TAP, "mode", "tap")
        _ip("-n", ctl, "link", "set", TAP, "master", "br0", "up")
        for label, address in others.items():
            netns = names[label]
            _ip("netns", "add", netns)
            made.append(netns)
            _ip("-n", ctl, "link", "add", label, "type", "veth", "peer", "name", "eth0",
                "netns", netns)
            _ip("-n", ctl, "link", "set", label, "master", "br0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
        yield ctl, names
    finally:
        for netns in reversed(made):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=60)


def start_realservers(procs: Processes, namespaces: Mapping[str, str], cluster: Path,
                      workdir: Path, logs: Path) -> None:
    """Each real server in its namespace, set up by the project's own rendered script (the
    VIP on lo, the ARP settings of direct routing), answering GET / on every service's port
    with its name (busybox's httpd). They sit on the controller's bridge, the directors' own
    segment, so direct routing reaches them, and run at native speed: the emulated CPUs are
    left to the directors."""
    from lvsctl.core.config import load_cluster
    from lvsctl.templates.render import render_shell, setup_for

    loaded = load_cluster(cluster)
    for name in REALSERVERS:
        netns = namespaces[name]
        script = workdir / f"{name}-setup.sh"
        script.write_text(next(iter(render_shell(setup_for(loaded.cluster, name)).values())))
        proc = subprocess.run(["ip", "netns", "exec", netns, "bash", str(script), "up"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "LVSCTL_STATE_DIR": str(workdir / name)})
        if proc.returncode != 0:
            raise BedError(f"{name}: setup.sh up failed: {proc.stderr.strip()[-300:]}")
        docroot = workdir / f"{name}-www"
        docroot.mkdir()
        (docroot / "index.html").write_text(f"{name}\n")
        for port in SERVICES.values():
            procs.start(f"real server {name}:{port}", [
                "ip", "netns", "exec", netns, "busybox", "httpd", "-f",
                "-p", f"0.0.0.0:{port}", "-h", str(docroot)], logs / f"{name}-{port}.log")


@dataclass
class VmThread:
    """The kernel VM running the guest side, in a thread of its own (QEMU is a child of this
    process, so it starts in the controller's namespace and finds the tap there)."""

    argv: Sequence[str]
    options: vm.VmOptions
    log: Path
    result: dict[str, Any] = field(default_factory=dict)
    thread: threading.Thread | None = None

    def start(self) -> None:
        def work() -> None:
            try:
                with open(self.log, "wb") as out:
                    done = vm.run(self.argv, options=self.options, cwd=repo_root(), stream=out,
                                  progress=lambda line: print(f"vm: {line}", file=sys.stderr,
                                                              flush=True))
                self.result["exit"] = done.exit_code
            except LvsctlError as exc:
                self.result["error"] = str(exc)

        self.thread = threading.Thread(target=work, name="kernel-vm", daemon=True)
        self.thread.start()

    def alive(self) -> None:
        """Raises BedError when the VM has ended."""
        if self.thread is not None and not self.thread.is_alive():
            raise BedError(f"the kernel VM ended ({self.result}); see {self.log}")

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


def _run_in_controller(result: dict[str, Any], save: Callable[[], None], results: Path,
                       workdir: Path, namespaces: Mapping[str, str], wheels: Path,
                       manifest: Mapping[str, str],
                       phases: Sequence[str], zk_servers: int, timeout: float,
                       progress: Echo) -> None:
    """``run``'s work in the controller's namespace: ZooKeeper, the wheel server, the real
    servers, the VM with the guest side, the phases; stops all of them before it returns or
    raises."""
    t0 = time.monotonic()
    logs = results / "logs"
    procs = Processes()
    agent: AgentClient | None = None
    machine: VmThread | None = None
    try:
        access = HostAccess(workdir / "access", DIRECTORS, progress)
        access.generate()
        zk_hosts = start_ensemble(procs, workdir, zk_servers, logs)
        (workdir / "cluster.yaml").write_text(
            json.dumps(cluster_document(zk_hosts), indent=2) + "\n")
        procs.start("wheel server", [sys.executable, "-m", "http.server", "--bind",
                                     CONTROLLER_ADDRESS, "--directory", str(wheels),
                                     str(WHEEL_PORT)], logs / "wheel-server.log")
        start_realservers(procs, namespaces, workdir / "cluster.yaml", workdir, logs)
        machine = VmThread(
            [sys.executable, "-m", "lvsctl.testbed.deploybed", "guest", "--workdir",
             str(workdir), "--logs", str(logs), "--timeout", str(timeout)],
            vm.VmOptions(memory="3G", cpus=2, timeout=timeout + 300,
                         shares=(workdir, results), tap=TAP,
                         env={"LVSCTL_VM_DIR": str(vm.cache_dir())}),
            logs / "vm.log")
        machine.start()
        agent = AgentClient(timeout=600, alive=machine.alive)
        bed = Bed(access, agent, results, workdir, wheels, manifest, zk_hosts,
                  namespaces["client"], procs, progress)
        result["hosts"] = access.wait_hosts(DIRECTORS, timeout=900, alive=bed.check)
        result["zookeeper"] = wait_ensemble(zk_hosts, procs, timeout=300)
        result["setup_seconds"] = round(time.monotonic() - t0, 1)
        progress(f"bed ready after {result['setup_seconds']} s: {result['zookeeper']}")
        save()
        for name in phases:
            p0 = time.monotonic()
            progress(f"== phase {name}")
            try:
                found = PHASES[name](bed)
            except (LvsctlError, subprocess.TimeoutExpired) as exc:
                findings = exc.findings if isinstance(exc, PhaseFailed) else {}
                result["phases"][name] = {"passed": False, "error": str(exc), **findings,
                                          "seconds": round(time.monotonic() - p0, 1)}
                progress(f"phase {name} FAILED: {exc}")
                bed.collect()
                save()
                break
            result["phases"][name] = {"passed": True, **found,
                                      "seconds": round(time.monotonic() - p0, 1)}
            progress(f"phase {name} passed in {time.monotonic() - p0:.0f} s: "
                     + json.dumps({k: v for k, v in found.items() if k != "playbook"},
                                  default=str)[:2000])
            save()
        bed.check()
        t_down = time.monotonic()
        agent.call("stop")
        machine.join(timeout=300)
        procs.close()
        result["teardown_seconds"] = round(time.monotonic() - t_down, 1)
    finally:
        if agent is not None:
            with contextlib.suppress(BedError):
                agent.call("stop", timeout=30)
            agent.close()
        if machine is not None:
            machine.join(timeout=300)  # its own timeout kills QEMU at the latest
        procs.close()


def run(results: Path, wheels: Path, phases: Sequence[str], zk_servers: int,
        timeout: float, progress: Echo = _progress) -> dict[str, Any]:
    """Sets the bed up, runs ``phases`` in order (stopping at the first failure), tears it
    down; returns the result (``passed`` and per phase its seconds and findings)."""
    manifest = json.loads((wheels / WHEELS_MANIFEST).read_text())
    (results / "logs").mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"passed": False, "zookeeper_servers": zk_servers, "phases": {}}
    out = results / "result.json"

    def save() -> None:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    t0 = time.monotonic()
    find_image()  # before anything starts: a bed without its image is one clear line
    workdir = Path(tempfile.mkdtemp(prefix="lvsctl-deploybed-"))
    try:
        with controller_network() as (ctl, namespaces), entered(ctl):
            _run_in_controller(result, save, results, workdir, namespaces, wheels, manifest,
                               phases, zk_servers, timeout, progress)
    except LvsctlError as exc:
        result["error"] = str(exc)
        progress(f"FAILED: {exc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        result["total_seconds"] = round(time.monotonic() - t0, 1)
        result["passed"] = ("error" not in result and len(result["phases"]) == len(phases)
                            and all(p["passed"] for p in result["phases"].values()))
        save()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvsctl.testbed.deploybed")
    sub = parser.add_subparsers(dest="what", required=True)
    wheels = sub.add_parser("wheels", help="build the wheels into DIR")
    wheels.add_argument("output", type=Path)
    bed = sub.add_parser("run", help="run the bed (root; boots the kernel VM)")
    bed.add_argument("--results", type=Path, required=True)
    bed.add_argument("--wheels", type=Path, required=True)
    bed.add_argument("--phases", default=",".join(PHASES),
                     help=f"comma-separated, in order, from {','.join(PHASES)}")
    bed.add_argument("--zookeeper-servers", type=int, choices=(1, 3), default=3)
    bed.add_argument("--timeout", type=float, default=3600,
                     help="seconds the VM may run at most")
    inside = sub.add_parser("guest", help="the guest side, in the kernel VM (internal)")
    inside.add_argument("--workdir", type=Path, required=True)
    inside.add_argument("--logs", type=Path, required=True)
    inside.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        if args.what == "wheels":
            print(json.dumps(build_wheels(args.output)))
            return 0
        if args.what == "guest":
            os.chdir(repo_root())  # the VIP watchers run as `python -m failover.vipwatch`
            guest(args.workdir, args.logs, args.timeout)
            return 0
        phases = [p for p in args.phases.split(",") if p]
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            parser.error(f"--phases: unknown {unknown}; expected some of {list(PHASES)}")
        if os.geteuid() != 0:
            raise BedError("the deploy test bed needs root (namespaces, a tap, the VM)")
        os.chdir(repo_root())  # the probe runs as `python -m failover.probe`
        # Absolute: Ansible resolves a relative source path against its role, not this folder.
        result = run(args.results.resolve(), args.wheels.resolve(), phases,
                     args.zookeeper_servers, args.timeout)
    except (LvsctlError, OSError, subprocess.SubprocessError) as exc:
        print(f"deploy-bed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}, default=str))
    for name, phase in result["phases"].items():
        print(f"{name}: {'passed' if phase['passed'] else 'FAILED'} in {phase['seconds']} s"
              + ("" if phase["passed"] else f": {phase['error']}"))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
