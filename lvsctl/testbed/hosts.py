"""Deploy test-bed hosts: Debian 12 containers with systemd as PID 1, reached only over SSH.

A host is a ``systemd-nspawn --boot`` container started inside the kernel VM (so it has the real
kernel's IPVS in its own network namespace), on a bridge in the VM that the VM's NIC joins to a
tap on the machine, where the controller (Ansible, at native speed) runs. Its root file system
is one Debian 12 image built on the machine with ``mmdebstrap`` and cached in the VM cache
folder under a key of its recipe; each host boots it as the lower layer of an overlay whose
upper layer is a tmpfs of its own, so hosts never share writes, a run leaves the image
untouched, and what a host wrote survives its reboot or a kill of its container (as a disk
would) until the bed is torn down.

Per run, a fresh SSH key pair for the controller and a fresh host key per host are generated,
so the controller checks host keys strictly (a ``known_hosts`` written from them).

Two sides:

* on the machine (network to Debian's mirrors, root): :func:`build_image`, and
  :class:`HostAccess`, the controller's keys, SSH and inventory;
* in the kernel VM (root, the image visible read-only through the VM's 9p share):
  :class:`HostBed`, which starts, kills, powers on and tears down the containers.

``python -m lvsctl.testbed.hosts image`` builds the image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lvsctl.core.errors import LvsctlError
from lvsctl.testbed.vm import cache_dir

Echo = Callable[[str], None]


class HostsError(LvsctlError):
    """A deploy test-bed host could not be built, started, reached or stopped."""


def _progress(line: str) -> None:
    print(f"hosts: {line}", file=sys.stderr, flush=True)


# -- the image ------------------------------------------------------------------------------

SUITE = "bookworm"
# What a Debian 12 director has before the playbook runs: systemd as init, D-Bus (systemctl's
# and logind's bus), sshd, Python for Ansible's modules (python3-apt for its apt module), sudo
# for `become`. The role's own packages (python3-venv, python3-setuptools, ipvsadm) are in the
# image too: the hosts have no route to a Debian mirror, and the role finds them present.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    # The container's own hostname resolves without DNS (sudo looks it up on every call, and
    # the hosts have no name server: each lookup would wait for its timeout).
    "libnss-myhostname",
    "iproute2",
    "python3",
    "python3-apt",
    "python3-venv",
    "python3-setuptools",
    "ipvsadm",
)
ADMIN_USER = "admin"
# Run by mmdebstrap in the finished root ("$1"): the login user Ansible uses (key only,
# password-less sudo as on a cloud image), sshd with the one host key each run binds in, and
# no timers that would start apt or cleanup work in the middle of a test.
CUSTOMIZE = f"""set -eu
root="$1"
chroot "$root" useradd --create-home --shell /bin/bash {ADMIN_USER}
chroot "$root" install -d -m 0700 -o {ADMIN_USER} -g {ADMIN_USER} /home/{ADMIN_USER}/.ssh
echo '{ADMIN_USER} ALL=(ALL) NOPASSWD:ALL' > "$root/etc/sudoers.d/{ADMIN_USER}"
chmod 0440 "$root/etc/sudoers.d/{ADMIN_USER}"
rm -f "$root"/etc/ssh/ssh_host_*
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\\nPasswordAuthentication no\\nUseDNS no\\n' \\
  > "$root/etc/ssh/sshd_config.d/testbed.conf"
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \\
            systemd-tmpfiles-clean.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
"""
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def image_key(packages: Sequence[str] = PACKAGES, suite: str = SUITE,
              customize: str = CUSTOMIZE) -> str:
    """A short hash of the image's recipe: a change of packages or hook builds a new image."""
    recipe = json.dumps({"suite": suite, "packages": sorted(packages), "customize": customize},
                        sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Image:
    """A built host root file system in the cache, and how long its build took."""

    root: Path
    key: str
    build_seconds: float
    cached: bool


def images_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(directory) / "hosts"


def find_image(directory: str | os.PathLike[str] | None = None) -> Image:
    """The image of the current recipe, already built. Raises HostsError when there is none."""
    folder = images_dir(directory) / image_key()
    try:
        meta = json.loads((folder / "image.json").read_text())
    except (OSError, ValueError) as exc:
        raise HostsError(f"no host image {folder} (build it first: python -m "
                         "lvsctl.testbed.hosts image)") from exc
    return Image(folder / "root", image_key(), float(meta["build_seconds"]), cached=True)


def build_image(directory: str | os.PathLike[str] | None = None, *,
                progress: Echo = _progress) -> Image:
    """Builds the host image with mmdebstrap, once per recipe; a built one is reused.

    Needs root and Debian's mirrors (the host, not the VM). Raises HostsError.
    """
    with contextlib.suppress(HostsError):
        image = find_image(directory)
        progress(f"image {image.key} ready (cached, {image.root})")
        return image
    if shutil.which("mmdebstrap") is None:
        raise HostsError("mmdebstrap is not installed (scripts/setup installs it)")
    if os.geteuid() != 0:
        raise HostsError("building the host image needs root (mmdebstrap --mode=root)")
    base = images_dir(directory)
    base.mkdir(parents=True, exist_ok=True)
    folder = base / image_key()
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(HostsError):
            return find_image(directory)  # built by another process while we waited
        t0 = time.monotonic()
        progress(f"building image {image_key()} with mmdebstrap ({len(PACKAGES)} packages)")
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".build-"))
        try:
            root = tmp / "root"
            hook = tmp / "customize.sh"
            hook.write_text(CUSTOMIZE)
            proc = subprocess.run(
                ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
                 f"--include={','.join(PACKAGES)}",
                 f"--customize-hook=sh {hook} \"$1\"",
                 SUITE, str(root), str(SOURCES)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
                raise HostsError("mmdebstrap failed ({}): {}".format(
                    proc.returncode, " | ".join(tail) or "no output"))
            seconds = time.monotonic() - t0
            (tmp / "image.json").write_text(json.dumps({
                "suite": SUITE, "packages": list(PACKAGES), "build_seconds": round(seconds, 1),
            }, indent=2))
            hook.unlink()
            if folder.exists():
                shutil.rmtree(folder)
            tmp.chmod(0o755)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    progress(f"image {image_key()} built in {seconds:.1f} s ({folder})")
    return Image(folder / "root", image_key(), seconds, cached=False)


# -- the hosts ------------------------------------------------------------------------------

SUBNET = "192.0.2"  # TEST-NET-1: only on the bed's own bridge (a host namespace and the VM)
CONTROLLER_ADDRESS = f"{SUBNET}.1"
# The VM's own address on the bridge: where the guest side of a bed answers its controller.
GUEST_ADDRESS = f"{SUBNET}.254"


def host_addresses(names: Sequence[str]) -> dict[str, str]:
    """Each host's address on the bridge, in the order of ``names`` (from .2 up)."""
    return {name: f"{SUBNET}.{i}" for i, name in enumerate(names, start=2)}


def _run(argv: Sequence[str], *, timeout: float = 60, check: bool = True,
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise HostsError(f"{argv[0]} {' '.join(argv[1:3])} failed ({proc.returncode}): "
                         f"{detail[-1] if detail else 'no output'}")
    return proc


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc's children lists), deepest last."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found.extend(kids)
                todo.extend(kids)
    return found


@dataclass
class HostAccess:
    """The controller's side of the hosts: its key pair, each host's key (made here, bound into
    the host by the guest side: ``HostBed``), ``known_hosts``, SSH and an Ansible inventory.

    ``folder`` is shared with the guest side; ``generate`` fills it once per run.
    """

    folder: Path
    names: Sequence[str]
    progress: Echo = _progress

    @property
    def addresses(self) -> dict[str, str]:
        return host_addresses(self.names)

    @property
    def key(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    def host_key(self, name: str) -> Path:
        return self.folder / name / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.folder / "authorized_keys"

    def generate(self) -> None:
        """A fresh controller key pair, a fresh host key per host, ``known_hosts`` from them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lvsctl-deploy-controller",
              "-f", str(self.key)])
        shutil.copy(f"{self.key}.pub", self.authorized_keys)
        os.chmod(self.authorized_keys, 0o644)
        known = []
        for name, address in self.addresses.items():
            self.host_key(name).parent.mkdir()
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                  "-f", str(self.host_key(name))])
            kind, key = Path(f"{self.host_key(name)}.pub").read_text().split()[:2]
            known.append(f"{address} {kind} {key}\n")
        self.known_hosts.write_text("".join(known))

    def ssh_argv(self, name: str, command: Sequence[str], *, connect_timeout: int = 10,
                 ) -> list[str]:
        """ssh as the admin user with this run's key and strict host-key checking."""
        return ["ssh", "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR",
                f"{ADMIN_USER}@{self.addresses[name]}", "--", *command]

    def ssh(self, name: str, command: Sequence[str], *, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs ``command`` on host ``name`` (words joined by the remote shell: pass no
        untrusted values)."""
        return _run(self.ssh_argv(name, command), timeout=timeout, check=check)

    def wait_hosts(self, names: Sequence[str], timeout: float = 300,
                   alive: Callable[[], None] | None = None) -> dict[str, dict[str, object]]:
        """Waits until sshd answers on each of ``names``, then for ``systemctl
        is-system-running --wait``: ``running`` or ``degraded`` ends the wait.

        ``alive`` is called between tries and raises when a host can no longer come (its
        container exited). Returns per host the seconds to SSH and to running, and the state;
        raises HostsError when the time is up or a host's boot failed.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        found: dict[str, dict[str, object]] = {}
        for name in names:
            while True:
                if alive is not None:
                    alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HostsError(f"{name}: no SSH after {timeout:.0f} s")
                try:
                    probe = self.ssh(name, ["true"], timeout=max(5.0, min(left, 30.0)),
                                     check=False)
                except subprocess.TimeoutExpired:
                    continue  # sshd accepted but did not finish the login in time: booting
                if probe.returncode == 0:
                    found[name] = {"ssh_seconds": round(time.monotonic() - t0, 1)}
                    self.progress(f"{name}: SSH answers after {found[name]['ssh_seconds']} s")
                    break
                time.sleep(1.0)
        for name in names:
            left = max(5.0, deadline - time.monotonic())
            # --wait returns once the boot is over: running, or degraded with failed units.
            state = self.ssh(name, ["systemctl", "is-system-running", "--wait"], timeout=left,
                             check=False).stdout.strip()
            found[name].update(state=state, running_seconds=round(time.monotonic() - t0, 1))
            if state not in ("running", "degraded"):
                raise HostsError(f"{name}: systemctl is-system-running says {state!r}")
            if state == "degraded":
                failed = self.ssh(name, ["systemctl", "--failed", "--no-legend", "--plain"],
                                  check=False).stdout.strip().replace("\n", "; ")
                self.progress(f"{name}: degraded, failed units: {failed}")
            self.progress(f"{name}: {state} after {found[name]['running_seconds']} s")
        return found

    def inventory(self, path: Path, group: str = "lvsctl_directors",
                  group_vars: dict[str, object] | None = None) -> Path:
        """Writes an Ansible inventory (YAML; JSON is YAML) of the hosts, reached over SSH."""
        ssh_args = (f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={self.known_hosts} "
                    "-o ConnectTimeout=30")
        data = {"all": {"children": {group: {"hosts": {
            name: {"ansible_host": address} for name, address in self.addresses.items()},
            "vars": {
                "ansible_user": ADMIN_USER,
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": ssh_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                # sudo and Python start 20-30 times slower on the emulated CPUs than natively:
                # Ansible's default 10 s for the connection and the become prompt is too short.
                "ansible_timeout": 120,
                **(group_vars or {}),
            }}}}}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


@dataclass
class Host:
    """One container: its name (also its hostname), address and namespace."""

    name: str
    address: str
    netns: str
    veth: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    mounted: bool = False
    boots: int = 0

    @property
    def root(self) -> Path:
        """The host's root file system: the image under its own writable layer."""
        return self.folder / "root"


@dataclass
class HostBed:
    """The guest side: N hosts on one bridge, which ``uplink`` (the VM's NIC) joins to the
    controller's side, with the keys ``HostAccess`` made in ``keys``. A context manager: leaving
    it stops every container by PID and removes namespaces, links and the bridge."""

    image: Image
    keys: HostAccess
    workdir: Path
    uplink: str
    progress: Echo = _progress
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    _made_bridge: bool = False

    def __enter__(self) -> HostBed:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Makes the bridge (with the uplink and this side's address) and namespaces, and
        starts every container (not waiting: the controller waits over SSH)."""
        if os.geteuid() != 0:
            raise HostsError("the deploy hosts need root (run them in the kernel VM)")
        for tool in ("systemd-nspawn", "ip"):
            if shutil.which(tool) is None:
                raise HostsError(f"{tool} is not installed (scripts/setup installs it)")
        _ensure_cgroup2()
        tag = os.getpid() % 100000
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bridge = f"lvdbr{tag}"[:15]
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._made_bridge = True
        _run(["ip", "link", "set", self.uplink, "master", self.bridge, "up"])
        _run(["ip", "addr", "add", f"{GUEST_ADDRESS}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i, (name, address) in enumerate(self.keys.addresses.items(), start=2):
            host = Host(name, address, f"lvd{tag}{name}"[:15], f"lvd{tag}v{i}"[:15],
                        self.workdir / name)
            self.hosts.append(host)
            self._prepare(host)
        for host in self.hosts:
            self._spawn(host)

    def _prepare(self, host: Host) -> None:
        host.folder.mkdir(parents=True, exist_ok=True)
        self._mount_root(host)
        _run(["ip", "netns", "add", host.netns])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
              "netns", host.netns])
        _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host.netns, "route", "add", "default", "via", CONTROLLER_ADDRESS])

    def _mount_root(self, host: Host) -> None:
        """The image (read-only, shared) under a tmpfs layer of this host's own. Not nspawn's
        ``--volatile=overlay``: its layer is gone when the container stops, and a host that is
        killed or rebooted must come back with what was installed on it."""
        rw = host.folder / "rw"
        rw.mkdir(exist_ok=True)
        host.root.mkdir(exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", "mode=0755", f"lvsctl-{host.name}", str(rw)])
        host.mounted = True
        (rw / "upper").mkdir()
        (rw / "work").mkdir()
        _run(["mount", "-t", "overlay", "-o",
              f"lowerdir={self.image.root},upperdir={rw / 'upper'},workdir={rw / 'work'}",
              f"lvsctl-{host.name}", str(host.root)])

    def _spawn(self, host: Host) -> None:
        home = f"/home/{ADMIN_USER}/.ssh/authorized_keys"
        hostkey = self.keys.host_key(host.name)
        argv = [
            "systemd-nspawn", "--quiet", "--boot", f"--directory={host.root}",
            f"--machine={host.name}",
            # No machined in the VM: the container stays in this process's cgroup.
            "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{host.netns}",
            # nspawn grants CAP_NET_ADMIN only with a namespace of its own making
            # (--private-network); a director host needs it for VIPs and IPVS.
            "--capability=CAP_NET_ADMIN",
            "--console=pipe",
            f"--bind-ro={hostkey}:/etc/ssh/ssh_host_ed25519_key",
            f"--bind-ro={hostkey}.pub:/etc/ssh/ssh_host_ed25519_key.pub",
            f"--bind-ro={self.keys.authorized_keys}:{home}",
        ]
        # Each boot in a cgroup of its own: nspawn puts the container in a "payload" group
        # under its own, and a killed container leaves that group behind (and two containers
        # in one group would share it).
        host.boots += 1
        cgroup = CGROUP_ROOT / f"lvsctl-{host.name}-{os.getpid()}-{host.boots}"
        cgroup.mkdir()
        log = open(host.folder / "console.log", "ab")  # noqa: SIM115 - kept by the process
        host.process = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh",
             str(cgroup), *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        self.progress(f"{host.name}: started (nspawn PID {host.process.pid}, {host.address})")

    def check(self) -> None:
        """Raises HostsError when a container that should run has exited."""
        for host in self.hosts:
            if host.process is not None and host.process.poll() is not None:
                raise HostsError(f"{host.name}: the container exited "
                                 f"({host.process.returncode}); see {host.folder}/console.log")

    def host(self, name: str) -> Host:
        """The host named ``name``. Raises HostsError when the bed has none."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise HostsError(f"no host {name} in this bed")

    def kill(self, host: Host) -> None:
        """Pulls the plug: SIGKILL to the container's processes and its nspawn at once, no
        shutdown of any kind. Its namespace stays (the cable stays in the switch), with
        whatever addresses the kernel still holds there."""
        if host.process is None or host.process.poll() is not None:
            raise HostsError(f"{host.name}: the container is not running")
        pids = [host.process.pid, *_children(host.process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        host.process.wait(timeout=60)
        self.progress(f"{host.name}: killed (nspawn PID {host.process.pid} and "
                      f"{len(pids) - 1} processes below it)")

    def wait_exit(self, host: Host, timeout: float = 300) -> int:
        """Waits until the container's nspawn exits; returns its exit status (133 after a
        reboot inside, as systemd-nspawn documents). Raises HostsError when it does not."""
        if host.process is None:
            raise HostsError(f"{host.name}: the container was never started")
        try:
            return host.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HostsError(f"{host.name}: the container did not exit within "
                             f"{timeout:.0f} s") from None

    def power_on(self, host: Host) -> None:
        """Boots a host whose container has exited, on the same root file system (what it
        installed is still there). Does not wait."""
        if host.process is not None and host.process.poll() is None:
            raise HostsError(f"{host.name}: the container is still running")
        self._spawn(host)

    def close(self) -> None:
        """Stops every container (SIGTERM: a clean halt, then SIGKILL to what is left), removes
        namespaces, links and the bridge. Safe to call twice and after a failed start."""
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    host.process.send_signal(signal.SIGTERM)  # nspawn halts the container
        for host in self.hosts:
            if host.process is None:
                continue
            try:
                host.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for pid in [host.process.pid, *_children(host.process.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                host.process.wait()
        for host in self.hosts:
            _run(["ip", "netns", "del", host.netns], check=False)
            if host.mounted:
                _run(["umount", "--lazy", str(host.root)], check=False)
                _run(["umount", "--lazy", str(host.folder / "rw")], check=False)
                host.mounted = False
        if self._made_bridge:
            _run(["ip", "link", "del", self.bridge], check=False)
            self._made_bridge = False
        self.hosts = []


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _ensure_cgroup2() -> None:
    """systemd in a container needs a cgroup2 hierarchy; the kernel VM's init mounts none."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return
    _run(["mount", "-t", "cgroup2", "cgroup2", str(CGROUP_ROOT)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvsctl.testbed.hosts")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("image", help="build (or find) the host image; on the host, as root")
    args = parser.parse_args(argv)
    try:
        if args.what == "image":
            image = build_image()
            print(json.dumps(dataclasses.asdict(image), default=str))
        return 0
    except (HostsError, subprocess.TimeoutExpired) as exc:
        print(f"hosts: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
