"""The deploy test bed's run: deploy/README.md's steps against two real director hosts.

Two director hosts (``lvsctl.testbed.hosts``: systemd as PID 1, sshd, their own network stack
in the kernel VM) on one bridge with a ZooKeeper ensemble of three servers, two real servers
and a client, all in the VM. From the controller side (the VM's root namespace, 192.0.2.1)
``ansible-playbook`` runs the repository's ``site.yml`` and ``rolling.yml`` over SSH with an
inventory of the two hosts, installing lvsctl from wheels built from the checkout and served
over HTTP on the bridge (the hosts have no route to a package index). Then the failures a host
really has. Every phase is checked from outside, as an operator would: ``systemctl`` and
``lvsctl status`` over SSH, the kernel's addresses in each host's namespace, a client's
requests through the VIP.

Two sides:

* on the host (network to the package index): ``python -m lvsctl.testbed.deploybed wheels
  DIR`` builds lvsctl's wheel from the checkout, the wheels of its dependencies, and a second
  lvsctl wheel with a bumped version (the rolling upgrade's new build);
* in the kernel VM (root): ``python -m lvsctl.testbed.deploybed run`` runs the phases and
  writes ``result.json`` (and every log) into the results folder; exit 0 only when all passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
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
from lvsctl.testbed.hosts import (
    CONTROLLER_ADDRESS,
    SUBNET,
    Host,
    HostBed,
    HostsError,
    find_image,
)
from lvsctl.testbed.netns import in_netns
from lvsctl.testbed.vm import repo_root
from lvsctl.testbed.zookeeper import JARS, JAVA, JVM_OPTS, LOG4J, MAIN

Echo = Callable[[str], None]


class BedError(LvsctlError):
    """A step of the deploy test bed failed (the message says which and what was seen)."""


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
UNIT = "lvsctl-director"
NODE_FILE = "/etc/lvsctl/node.yaml"
# CAP_NET_ADMIN (12) and CAP_NET_RAW (13): the unit's CapabilityBoundingSet and ambient set.
EXPECTED_CAPS = (1 << 12) | (1 << 13)
# A graceful takeover seen by a client probing every 20 ms (the issue's bound).
MAX_GRACEFUL_OUTAGE = 0.100
ANSIBLE_DIR = repo_root() / "deploy" / "ansible"
UNIT_FILE = repo_root() / "deploy" / "systemd" / f"{UNIT}.service"


def cluster_document(zk_hosts: Sequence[str]) -> dict[str, Any]:
    """The bed's cluster file: the two hosts, the VIP, the services on the real servers."""
    directors = [{
        "name": name, "address": f"{SUBNET}.{i}/24", "interface": "eth0",
        "peer": {"address": f"{SUBNET}.{i}", "port": 7946},
        "sync": {"interface": "eth0", "id": 1},
    } for i, name in enumerate(DIRECTORS, start=2)]
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


# -- wheels (host side) -------------------------------------------------------------------------

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


# -- processes the bed owns (ZooKeeper, the wheel server, the real servers' HTTP) --------------


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
        # (30 s, 5 s) because the emulated CPUs can stall a follower for seconds.
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


def serve_http(name: str, ports: Sequence[int], duration: float) -> None:
    """A real server's service: answers every GET on ``ports`` with ``name``; runs at most
    ``duration`` seconds."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = f"{name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    servers = [ThreadingHTTPServer(("0.0.0.0", port), Handler) for port in ports]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    time.sleep(duration)


# -- the bed ------------------------------------------------------------------------------------


@dataclass
class Bed:
    """The hosts, what runs beside them, and the results folder."""

    hosts: HostBed
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

    def directors(self) -> list[Host]:
        return [self.hosts.host(name) for name in DIRECTORS]

    # -- Ansible --------------------------------------------------------------------------------

    def inventory(self) -> Path:
        cluster = self.workdir / "cluster.yaml"
        if not cluster.exists():
            cluster.write_text(json.dumps(cluster_document(self.zk_hosts), indent=2) + "\n")
        wheel_url = f"http://{CONTROLLER_ADDRESS}:{WHEEL_PORT}/"
        return self.hosts.inventory(self.workdir / "inventory.json", group_vars={
            "lvsctl_cluster_file": str(cluster),
            "lvsctl_wheel": str(self.wheels / self.manifest["wheel"]),
            # The hosts reach no package index: the dependencies come from the bed's wheel
            # server, as from a private mirror.
            "lvsctl_pip_extra_args": (f"--no-index --find-links {wheel_url} "
                                      f"--trusted-host {CONTROLLER_ADDRESS}"),
            "lvsctl_secrets_local_dir": str(self.workdir / "secrets"),
            "lvsctl_apt_update_cache": False,
        })

    def playbook(self, name: str, extra: Mapping[str, str] | None = None,
                 timeout: float = 3600) -> dict[str, Any]:
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

    def unit(self, host: Host) -> dict[str, str]:
        """``systemctl show`` of the director's unit on ``host`` (a few properties)."""
        out = self.hosts.ssh(host, [
            "systemctl", "show", UNIT, "-p", "ActiveState", "-p", "SubState", "-p", "Type",
            "-p", "MainPID", "-p", "NRestarts", "-p", "ExecMainStartTimestampMonotonic",
            "-p", "UnitFileState", "-p", "ControlGroup", "-p", "LimitNOFILE",
            "-p", "LimitNOFILESoft", "-p", "MemoryMax", "-p", "MemoryHigh", "-p", "TasksMax",
        ]).stdout
        return {key: value for key, _, value in
                (line.partition("=") for line in out.splitlines()) if value or key}

    def roles(self, via: Host) -> dict[str, str]:
        """Director name -> role, as ``lvsctl status --json`` on ``via`` shows them ({} when
        the command fails or hangs: ZooKeeper or the host unreachable)."""
        try:
            proc = self.hosts.ssh(via, ["sudo", "lvsctl", "status", "--node", NODE_FILE,
                                        "--json"], check=False, timeout=180)
        except subprocess.TimeoutExpired:
            return {}
        if proc.returncode != 0:
            return {}
        try:
            directors = json.loads(proc.stdout)["directors"]
            return {name: str(record["role"]) for name, record in directors.items()}
        except (ValueError, KeyError, TypeError):
            return {}

    def wait_roles(self, expect: Mapping[str, str], via: Host, timeout: float = 600,
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
        """The hosts whose eth0 holds the VIP now (the kernel's view, from the namespace)."""
        holders = []
        for host in self.directors():
            out = subprocess.run(["ip", "-n", host.netns, "-o", "addr", "show", "dev", "eth0"],
                                 capture_output=True, text=True, timeout=30).stdout
            if f" {VIP}/" in out:
                holders.append(host.name)
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

    def installed_version(self, host: Host) -> str:
        out = self.hosts.ssh(host, ["/usr/local/bin/lvsctl", "--version"], timeout=180).stdout
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
        for host in self.hosts.hosts:
            for label, argv in (("status", ["systemctl", "status", "--no-pager", UNIT]),
                                ("journal", ["journalctl", "-u", UNIT, "-n", "300",
                                             "--no-pager"])):
                with contextlib.suppress(HostsError, subprocess.TimeoutExpired):
                    proc = self.hosts.ssh(host, ["sudo", *argv], check=False, timeout=120)
                    (self.logs / f"{host.name}-{label}.txt").write_text(proc.stdout + proc.stderr)


# -- measuring a takeover -----------------------------------------------------------------------


@contextlib.contextmanager
def watched(bed: Bed, duration: float) -> Iterator[dict[str, Any]]:
    """A client probe to the VIP every 20 ms and a VIP watcher in each director's namespace
    while the block runs; afterwards the dict it yields holds the outage windows, overlaps and
    VIP holds (wall-clock seconds)."""
    from lvsctl.failover.probe import Probe, Target
    from lvsctl.failover.timeline import outage_windows, overlaps
    from lvsctl.failover.vipwatch import NetnsVipObserver

    found: dict[str, Any] = {}
    observer = NetnsVipObserver({h.name: h.netns for h in bed.directors()}, [VIP],
                                ready_timeout=120)
    observer.start()
    probe = Probe(Target.parse(f"http://{VIP}/"), netns=bed.client_ns, duration=duration)
    try:
        probe.start()
        # The probe is a Python process started in the client's namespace: wait for its first
        # answers before the block acts, so the measurement starts from a working service.
        deadline = time.monotonic() + 120
        while not any(s.ok for s in probe.samples()) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield found
    finally:
        samples = probe.stop()
        holds = observer.stop()
        horizon = time.time()
        found["samples"] = len(samples)
        found["failed"] = sum(1 for s in samples if not s.ok)
        found["windows"] = [(w.start, w.end) for w in outage_windows(samples)]
        found["overlaps"] = [(o.start, o.end) for o in overlaps(holds, horizon)]
        found["holds"] = [(h.director, h.start, h.end) for h in holds]


def _takeover(found: Mapping[str, Any], director: str, after: float) -> float | None:
    starts = [start for name, start, _ in found["holds"] if name == director and start >= after]
    return round(min(starts) - after, 3) if starts else None


def _summary(found: Mapping[str, Any]) -> dict[str, Any]:
    return {"probes": found["samples"], "failed_probes": found["failed"],
            "outages_ms": [round((end - start) * 1000, 1) for start, end in found["windows"]],
            "overlap_ms": round(sum(end - start for start, end in found["overlaps"]) * 1000, 1)}


# -- the phases ---------------------------------------------------------------------------------


def phase_site(bed: Bed) -> dict[str, Any]:
    """site.yml on both hosts; both units active (Type=notify: READY reached), one director
    active holding the VIP, the other standby, the client answered behind every service."""
    run = bed.playbook("site.yml")
    units = {}
    for host in bed.directors():
        is_active = bed.hosts.ssh(host, ["systemctl", "is-active", UNIT], check=False)
        unit = bed.unit(host)
        units[host.name] = {"is_active": is_active.stdout.strip(), "type": unit.get("Type"),
                            "enabled": unit.get("UnitFileState")}
        # A Type=notify unit is "active" only once its main process sent READY=1.
        if is_active.returncode != 0 or unit.get("Type") != "notify":
            raise BedError(f"{host.name}: {UNIT} is {is_active.stdout.strip()!r} "
                           f"(Type={unit.get('Type')})")
    roles = bed.roles(bed.directors()[0])
    if sorted(roles.values()) != ["ACTIVE", "STANDBY"]:
        raise BedError(f"after site.yml lvsctl status shows {roles}")
    active = next(name for name, role in roles.items() if role == "ACTIVE")
    bed.wait_vip(active, timeout=60)
    return {"playbook": run, "units": units, "roles": roles,
            "client": bed.wait_client()}


def _proc_status(bed: Bed, host: Host, pid: str) -> dict[str, str]:
    out = bed.hosts.ssh(host, ["sudo", "cat", f"/proc/{pid}/status"]).stdout
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
    for host in bed.directors():
        unit = bed.unit(host)
        pid = unit["MainPID"]
        status = _proc_status(bed, host, pid)
        caps = {k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")}
        uid = status["Uid"].split()[0]
        gid = status["Gid"].split()[0]
        if uid == "0" or caps["CapEff"] != EXPECTED_CAPS or caps["CapBnd"] != EXPECTED_CAPS:
            raise BedError(f"{host.name}: director PID {pid} runs as uid {uid} with CapEff "
                           f"{caps['CapEff']:#x} CapBnd {caps['CapBnd']:#x}, expected "
                           f"{EXPECTED_CAPS:#x} (CAP_NET_ADMIN, CAP_NET_RAW) and a user")
        writes = {}
        # Root in the director's mount namespace: only a read-only mount can refuse it, so a
        # refusal is the unit's ProtectSystem=, not a file's owner. Then the daemon's own user
        # in its state directory, which must work.
        for path in ("/etc", "/etc/lvsctl", "/opt/lvsctl/venv", "/usr/local/bin", "/var/lib",
                     "/var/log"):
            probe = bed.hosts.ssh(host, ["sudo", "nsenter", f"--target={pid}", "--mount", "--",
                                         "touch", f"{path}/.lvsctl-bed-probe"], check=False)
            writes[path] = "refused" if probe.returncode != 0 else "WRITTEN"
            if probe.returncode == 0 or "Read-only file system" not in probe.stderr:
                raise BedError(f"{host.name}: a write to {path} in the director's view: "
                               f"exit {probe.returncode} {probe.stderr.strip()!r}")
        state = bed.hosts.ssh(host, ["sudo", "nsenter", f"--target={pid}", "--mount",
                                     f"--setuid={uid}", f"--setgid={gid}", "--", "sh", "-c",
                                     "'touch /var/lib/lvsctl/.bed-probe && "
                                     "rm /var/lib/lvsctl/.bed-probe'"], check=False)
        writes["/var/lib/lvsctl"] = "written" if state.returncode == 0 else "REFUSED"
        if state.returncode != 0:
            raise BedError(f"{host.name}: the director's user cannot write its state "
                           f"directory: {state.stderr.strip()!r}")
        limits = bed.hosts.ssh(host, ["sudo", "cat", f"/proc/{pid}/limits"]).stdout
        files = re.search(r"^Max open files\s+(\S+)\s+(\S+)", limits, re.M)
        if files is None:
            raise BedError(f"{host.name}: /proc/{pid}/limits has no 'Max open files'")
        effective = {"nofile_soft": files.group(1), "nofile_hard": files.group(2)}
        if (files.group(1), files.group(2)) != (unit["LimitNOFILESoft"], unit["LimitNOFILE"]):
            raise BedError(f"{host.name}: open files {files.group(1)}/{files.group(2)} in "
                           f"effect, the unit says {unit['LimitNOFILESoft']}/"
                           f"{unit['LimitNOFILE']}")
        cgroup = f"/sys/fs/cgroup{unit['ControlGroup']}"
        for prop, cgfile in (("MemoryMax", "memory.max"), ("MemoryHigh", "memory.high"),
                             ("TasksMax", "pids.max")):
            read = bed.hosts.ssh(host, ["cat", f"{cgroup}/{cgfile}"], check=False)
            have = read.stdout.strip() if read.returncode == 0 else "absent"
            want = "max" if unit.get(prop) == "infinity" else unit.get(prop, "")
            effective[cgfile] = have
            # A limit the unit sets must be enforced; an unset one may lack its controller.
            if prop in report["unit_sets"] and have != want:
                raise BedError(f"{host.name}: {cgfile} is {have}, the unit sets {prop}={want}")
        report[host.name] = {"pid": pid, "uid": uid, "caps": {k: f"{v:#x}" for k, v in
                                                               caps.items()},
                             "writes": writes, "limits": effective}
    return report


def phase_rolling(bed: Bed) -> dict[str, Any]:
    """rolling.yml to the bumped build under a client probe every 20 ms: failed probes only
    at the graceful takeover (at most 100 ms), the VIP never on both, both directors running
    the new version at the end, the roles swapped."""
    hosts = bed.directors()
    roles = bed.roles(hosts[0])
    if sorted(roles.values()) != ["ACTIVE", "STANDBY"]:
        raise BedError(f"before the upgrade lvsctl status shows {roles}")
    active = next(name for name, role in roles.items() if role == "ACTIVE")
    standby = next(name for name, role in roles.items() if role == "STANDBY")
    started = time.monotonic()
    wall = time.time()
    with watched(bed, duration=3000) as found:
        run = bed.playbook("rolling.yml", {"lvsctl_wheel": str(bed.wheels /
                                                              bed.manifest["upgrade"])})
    summary = _summary(found)
    takeover = _takeover(found, standby, wall)
    versions = {h.name: bed.installed_version(h) for h in hosts}
    restarted = {h.name: int(bed.unit(h)["ExecMainStartTimestampMonotonic"]) / 1e6 > started
                 for h in hosts}
    after = bed.wait_roles({standby: "ACTIVE", active: "STANDBY"}, hosts[0], timeout=120)
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
    result["passed"] = not problems
    if problems:
        raise BedError("rolling upgrade: " + "; ".join(problems))
    return result


def _failure(bed: Bed, kind: str, inject: Callable[[Host], None],
             recover: Callable[[Host], None]) -> dict[str, Any]:
    """One failure of the active director's host: the takeover by the other as the VIP
    watchers and the client saw it, then the failed host back as standby by itself."""
    holders = bed.vip_holders()
    if len(holders) != 1:
        raise BedError(f"{kind}: the VIP is on {holders} before the failure")
    victim = bed.hosts.host(holders[0])
    other = next(h for h in bed.directors() if h is not victim)
    restarts = int(bed.unit(victim).get("NRestarts", "0"))
    with watched(bed, duration=3000) as found:
        injected = time.time()
        inject(victim)
        bed.wait_vip(other.name, timeout=180)
        recover(victim)
        back = bed.wait_roles({other.name: "ACTIVE", victim.name: "STANDBY"}, other,
                              timeout=900)
        back_after = time.time() - injected
    result = {"failed": victim.name, "took_over": other.name,
              "takeover_s": _takeover(found, other.name, injected),
              "back_as_standby_after_s": round(back_after, 1), "roles": back, **_summary(found)}
    if kind == "kill":
        result["systemd_restarts"] = int(bed.unit(victim).get("NRestarts", "0")) - restarts
        if result["systemd_restarts"] < 1:
            raise BedError(f"kill: systemd did not restart {victim.name}'s director")
    if found["overlaps"]:
        raise BedError(f"{kind}: the VIP was on both directors for {result['overlap_ms']} ms")
    return result


def phase_failures(bed: Bed) -> dict[str, Any]:
    """SIGKILL of the active director (systemd restarts it), its host stopped without
    warning (then powered on again), a reboot of the active host."""
    def kill(host: Host) -> None:
        bed.hosts.ssh(host, ["sudo", "systemctl", "kill", "--signal=KILL", UNIT])

    def restarted(host: Host) -> None:
        pass  # Restart=on-failure: systemd's own work, waited for through lvsctl status

    def pull_plug(host: Host) -> None:
        bed.hosts.kill(host)

    def power_on(host: Host) -> None:
        bed.hosts.power_on(host)
        bed.hosts.wait_hosts([host], timeout=900)

    def reboot(host: Host) -> None:
        # The connection drops while the command runs: its exit status says nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            bed.hosts.ssh(host, ["sudo", "systemctl", "reboot"], check=False, timeout=60)

    def reboots(host: Host) -> None:
        # What systemd-nspawn@.service does (RestartForceExitStatus=133): a container whose
        # init asked for a reboot exits 133 and is started again.
        code = bed.hosts.wait_exit(host, timeout=600)
        if code != 133:
            raise BedError(f"reboot: {host.name}'s container exited {code}, not 133")
        power_on(host)

    return {"kill": _failure(bed, "kill", kill, restarted),
            "host_stop": _failure(bed, "host_stop", pull_plug, power_on),
            "reboot": _failure(bed, "reboot", reboot, reboots)}


PHASES: dict[str, Callable[[Bed], dict[str, Any]]] = {
    "site": phase_site,
    "hardening": phase_hardening,
    "rolling": phase_rolling,
    "failures": phase_failures,
}


# -- the run ------------------------------------------------------------------------------------


def run(results: Path, wheels: Path, phases: Sequence[str], zk_servers: int,
        progress: Echo = _progress) -> dict[str, Any]:
    """Sets the bed up, runs ``phases`` in order (stopping at the first failure), tears it
    down; returns the result (``passed`` and per phase its seconds and findings)."""
    manifest = json.loads((wheels / WHEELS_MANIFEST).read_text())
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"passed": False, "zookeeper_servers": zk_servers, "phases": {}}
    out = results / "result.json"

    def save() -> None:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lvsctl-deploybed-"))
    procs = Processes()
    image = find_image()
    bed: Bed | None = None
    try:
        with HostBed(image, DIRECTORS, workdir / "hosts", progress) as hosts:
            zk_hosts = start_ensemble(procs, workdir, zk_servers, logs)
            procs.start("wheel server", [sys.executable, "-m", "http.server", "--bind",
                                         CONTROLLER_ADDRESS, "--directory", str(wheels),
                                         str(WHEEL_PORT)], logs / "wheel-server.log")
            client_ns = hosts.attach_namespace("client", CLIENT_ADDRESS)
            bed = Bed(hosts, results, workdir, wheels, manifest, zk_hosts, client_ns, procs,
                      progress)
            cluster = workdir / "cluster.yaml"
            cluster.write_text(json.dumps(cluster_document(zk_hosts), indent=2) + "\n")
            _start_realservers(bed, cluster)
            hosts.wait_running(timeout=900)
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
                    result["phases"][name] = {"passed": False, "error": str(exc),
                                              "seconds": round(time.monotonic() - p0, 1)}
                    progress(f"phase {name} FAILED: {exc}")
                    bed.collect()
                    save()
                    break
                result["phases"][name] = {"passed": True, **found,
                                          "seconds": round(time.monotonic() - p0, 1)}
                progress(f"phase {name} passed in {time.monotonic() - p0:.0f} s")
                save()
            procs.check()
            t_down = time.monotonic()
            procs.close()
        result["teardown_seconds"] = round(time.monotonic() - t_down, 1)
    finally:
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)
        result["total_seconds"] = round(time.monotonic() - t0, 1)
        result["passed"] = (len(result["phases"]) == len(phases)
                            and all(p["passed"] for p in result["phases"].values()))
        save()
    return result


def _start_realservers(bed: Bed, cluster: Path) -> None:
    """Each real server in a namespace of its own, set up by the project's own rendered
    script (the VIP on lo, ARP settings), serving HTTP on every service's port."""
    from lvsctl.core.config import load_cluster
    from lvsctl.templates.render import render_shell, setup_for

    loaded = load_cluster(cluster)
    for name, address in REALSERVERS.items():
        netns = bed.hosts.attach_namespace(name, address)
        script = bed.workdir / f"{name}-setup.sh"
        script.write_text(next(iter(render_shell(setup_for(loaded.cluster, name)).values())))
        proc = subprocess.run(["ip", "netns", "exec", netns, "bash", str(script), "up"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "LVSCTL_STATE_DIR": str(bed.workdir / name)})
        if proc.returncode != 0:
            raise BedError(f"{name}: setup.sh up failed: {proc.stderr.strip()[-300:]}")
        bed.procs.start(f"real server {name}", [
            "ip", "netns", "exec", netns, sys.executable, "-m", "lvsctl.testbed.deploybed",
            "serve", name, *map(str, SERVICES.values())], bed.logs / f"{name}.log")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvsctl.testbed.deploybed")
    sub = parser.add_subparsers(dest="what", required=True)
    wheels = sub.add_parser("wheels", help="build the wheels into DIR; on the host")
    wheels.add_argument("output", type=Path)
    bed = sub.add_parser("run", help="run the bed; in the kernel VM, as root")
    bed.add_argument("--results", type=Path, required=True)
    bed.add_argument("--wheels", type=Path, required=True)
    bed.add_argument("--phases", default=",".join(PHASES),
                     help=f"comma-separated, in order, from {','.join(PHASES)}")
    bed.add_argument("--zookeeper-servers", type=int, choices=(1, 3), default=3)
    serve = sub.add_parser("serve", help="a real server's HTTP service (internal)")
    serve.add_argument("name")
    serve.add_argument("ports", type=int, nargs="+")
    serve.add_argument("--duration", type=float, default=7200)
    args = parser.parse_args(argv)
    try:
        if args.what == "wheels":
            print(json.dumps(build_wheels(args.output)))
            return 0
        if args.what == "serve":
            serve_http(args.name, args.ports, args.duration)
            return 0
        phases = [p for p in args.phases.split(",") if p]
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            parser.error(f"--phases: unknown {unknown}; expected some of {list(PHASES)}")
        os.chdir(repo_root())  # the probe and VIP watchers run as `python -m failover.X`
        # Absolute: Ansible resolves a relative source path against its role, not this folder.
        result = run(args.results.resolve(), args.wheels.resolve(), phases,
                     args.zookeeper_servers)
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
