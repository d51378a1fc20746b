"""Runs one command inside a small VM booting Debian's stock kernel, which has IPVS.

The host kernel may lack IPVS (and ipip, dummy, module loading). This module downloads Debian's
``linux-image-VER-amd64`` once into a cache folder, builds a busybox initramfs holding the
modules the guest needs, and boots the kernel under QEMU (TCG) with the host's root filesystem
shared read-only over 9p and a tmpfs overlay on top: the guest sees the project's venv, Python
and Java unchanged. Per run, a small writable 9p share (the control folder) carries the command
in (argv, environment, working directory) and its exit code out; more writable shares (same
path in the guest as on the host) carry results such as JUnit XML.

Layout of the cache folder (``LVSCTL_VM_DIR`` or ``<repo>/var/vm``)::

    VER/root/            the unpacked .deb (boot/vmlinuz-VER, lib/modules/VER + depmod output)
    VER/vmlinux          the uncompressed kernel, booted via PVH (saves the decompression)
    VER/initramfs-ID.cpio  busybox, /init, the boot and guest modules; written last. ID hashes
                           the recipe (VER-ID.json), so checkouts with a different /init
                           share the cache without rebuilding each other's initramfs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import lzma
import os
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lvsctl.core.errors import LvsctlError

# -- errors ---------------------------------------------------------------------------------


class VmError(LvsctlError):
    """The kernel VM could not be prepared or run."""


class NoQemuError(VmError):
    """qemu-system-x86_64 (or another tool the VM needs) is not installed."""


class KernelDownloadError(VmError):
    """Debian's kernel package could not be found, downloaded or unpacked."""


class BootError(VmError):
    """The guest did not reach the command (kernel panic, missing module, 9p mount failed)."""


class VmTimeoutError(VmError):
    """The VM ran past its total timeout and was killed."""


# -- constants ------------------------------------------------------------------------------

DEFAULT_MEMORY = "1G"
DEFAULT_CPUS = 2
DEFAULT_TIMEOUT = 600.0
KERNEL_META_PACKAGE = "linux-image-amd64"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")

# Loaded first, in the initramfs, so that /init can mount the host's root over 9p.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# Loaded before the command: what IPVS tests and the lab use. Every IPVS scheduler module of the
# kernel is added at prepare time (ip_vs_*.ko but the FTP helper and persistence engines).
GUEST_MODULES = (
    "ip_vs",
    "nf_conntrack",
    "ipip",
    "tunnel4",
    "ip6_tunnel",
    "dummy",
    "veth",
    "bridge",
    "macvlan",
    "nf_tables",
    "sch_netem",
    # A NIC on a host tap (VmOptions.tap): the deploy test bed's link to its controller.
    "virtio_net",
)
_NOT_SCHEDULERS = re.compile(r"ip_vs_(ftp|pe_.*)")

CTL_TAG = "lvsctl_ctl"
ROOT_TAG = "hostroot"
CTL_GUEST = "/run/lvsctl-vm"
START_MARK = b"\x1b[lvsctl-vm:start]\n"
END_MARK = b"\x1b[lvsctl-vm:end]"
# Host environment passed through to the guest command when set.
PASS_ENV = ("CI", "PYTEST_ADDOPTS", "TZ", "HYPOTHESIS_PROFILE")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# An argv the guest's xargs must pass in one invocation (its default limit is 128 KiB).
MAX_ARGV_BYTES = 100_000

Echo = Callable[[str], None]


def _progress(line: str) -> None:
    print(f"vm: {line}", file=sys.stderr, flush=True)


# -- where things are -----------------------------------------------------------------------


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]  # lvsctl/testbed/vm.py -> the checkout


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the argument, else ``LVSCTL_VM_DIR`` (read now), else ``<repo>/var/vm``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("LVSCTL_VM_DIR")
    if env:
        return Path(env)
    return repo_root() / "var" / "vm"


# -- pure parts -----------------------------------------------------------------------------


def parse_meta_depends(text: str, meta: str = KERNEL_META_PACKAGE) -> str:
    """The kernel release (``6.1.0-56-amd64``) from ``apt-cache depends linux-image-amd64``.

    Raises KernelDownloadError when the output names no ``linux-image-*`` dependency.
    """
    for match in re.finditer(r"^\s*Depends:\s*linux-image-(\S+)\s*$", text, re.MULTILINE):
        return match.group(1)
    raise KernelDownloadError(
        f"apt-cache depends {meta} names no linux-image package: run 'apt-get update' first"
    )


def parse_show_depends(text: str, modules_dir: str) -> list[str]:
    """Module files to insmod, in order, from ``modprobe --show-depends`` output.

    Paths come back relative to ``modules_dir`` (``lib/modules/VER``); a module listed twice
    (a shared dependency) is kept at its first place; ``builtin X`` lines need no file.
    """
    prefix = modules_dir.rstrip("/") + "/"
    order: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "insmod":
            continue
        path = parts[1]
        if not path.startswith(prefix):
            raise KernelDownloadError(f"modprobe named a module outside {modules_dir}: {path}")
        rel = path[len(prefix):]
        if rel not in order:
            order.append(rel)
    return order


def scheduler_modules(modules_dir: Path) -> list[str]:
    """Every IPVS scheduler module this kernel ships, by name (ip_vs_rr, ip_vs_wrr, ...)."""
    ipvs = modules_dir / "kernel" / "net" / "netfilter" / "ipvs"
    names = sorted(p.name.removesuffix(".ko") for p in ipvs.glob("ip_vs_*.ko"))
    return [n for n in names if not _NOT_SCHEDULERS.fullmatch(n)]


def find_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (xz or gzip payload), or None when none is found.

    Does what the kernel's scripts/extract-vmlinux does: try each compression magic and keep
    the first stream that decompresses to an ELF file.
    """
    for magic, make in (
        (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
        (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ):
        start = bzimage.find(magic)
        while start != -1:
            try:
                data = make().decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error):
                data = b""
            if data.startswith(b"\x7fELF"):
                return data
            start = bzimage.find(magic, start + 1)
    return None


def is_static_elf(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a program interpreter (PT_INTERP)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader the initramfs does not have
            return False
    return True


@dataclass(frozen=True)
class CpioEntry:
    """One file, folder, symlink or device node of a newc cpio archive."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") archive, the format the kernel unpacks as an initramfs."""
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.lstrip("/").encode() + b"\0"
        fields = (
            ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0,
            entry.rdev[0], entry.rdev[1], len(name), 0,
        )
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name)
        pad4()
        out.extend(entry.data)
        pad4()
    return bytes(out)


def parse_cpio_newc(data: bytes) -> dict[str, CpioEntry]:
    """The entries of a newc archive by name (for checking what an initramfs holds)."""
    entries: dict[str, CpioEntry] = {}
    pos = 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ValueError(f"not a newc cpio header at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = CpioEntry(name, mode, body, (fields[9], fields[10]))


_START = START_MARK.decode().replace("\x1b", "\\033").replace("\n", "\\n")


def init_script(version: str) -> str:
    """The initramfs's /init (busybox sh): mount the host root + overlay, run the command.

    The command itself runs chrooted in the overlay with the host's own /bin/sh (stage 2,
    written per run into the control share), so busybox stays PID 1 and can report the exit
    code and power off whatever the command did.
    """
    end = END_MARK.decode().replace("\x1b", "\\033")
    return f"""#!/bin/sh
# PID 1 of the lvsctl kernel VM (kernel {version}).
export PATH=/bin
fail() {{ echo "lvsctl-vm: $*"; reboot -f; }}
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
# Raw output on the console: no CR before each LF.
stty -F /dev/console -onlcr 2>/dev/null
while read -r mod; do
  insmod "/lib/modules/{version}/$mod" || fail "insmod $mod failed"
done < /modules.order
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 {ROOT_TAG} /lower \\
  || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
  || fail "cannot mount the overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
# /tmp stays the host's (through the overlay), so a working folder there exists in the guest.
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/netns /newroot{CTL_GUEST}
mount -t 9p -o trans=virtio,version=9p2000.L {CTL_TAG} /newroot{CTL_GUEST} \\
  || fail "cannot mount the control share"
# Writable shares, each at its host path: "TAG PATH" per line.
while read -r tag path; do
  mkdir -p "/newroot$path" && mount -t 9p -o trans=virtio,version=9p2000.L "$tag" "/newroot$path" \\
    || fail "cannot mount share $path"
done < /newroot{CTL_GUEST}/shares
# The kernel's whole module tree over the host's /lib/modules, and a modprobe helper that
# runs the host's modprobe in the overlay: the kernel can then autoload any other module.
if read -r modroot < /newroot{CTL_GUEST}/modroot; then
  # Inside the chroot, so that /lib -> usr/lib resolves as on the host.
  chroot /newroot /bin/sh -c 'mkdir -p /lib/modules && mount --bind "$1" /lib/modules' \\
    sh "$modroot/lib/modules" || fail "cannot bind the kernel's modules from $modroot"
  echo /bin/modprobe-in-guest > /proc/sys/kernel/modprobe
fi
# IPVS and friends, from the initramfs (modprobe reading them over 9p took seconds).
if [ -e /newroot{CTL_GUEST}/load-modules ]; then
  while read -r mod; do
    insmod "/lib/modules/{version}/$mod" || fail "insmod $mod failed"
  done < /guest-modules.order
fi
ip link set lo up
hostname lvsctl-vm
chroot /newroot /usr/bin/env -i /bin/sh {CTL_GUEST}/stage2.sh < /dev/null
rc=$?
sync
printf '{end}%s\\n' "$rc"
reboot -f
"""


# The kernel runs this to autoload a module (its root is the initramfs, PID 1's root).
MODPROBE = """#!/bin/sh
exec /bin/chroot /newroot /sbin/modprobe "$@"
"""

# Runs chrooted, with the host's own /bin/sh and tools: environment, working folder, then the
# argv read NUL-separated by xargs (no value is ever parsed by a shell).
STAGE2 = f"""set -u
ctl={CTL_GUEST}
while IFS= read -r kv; do export "$kv"; done < "$ctl/env"
echo 1 > /proc/sys/kernel/printk
cd "$(cat "$ctl/cwd")" || exit 125
printf '{_START}'
xargs -0 -x -a "$ctl/argv" sh -c '"$@" < /dev/null; echo $? > {CTL_GUEST}/rc' sh
test -s "$ctl/rc" || exit 126
exit "$(cat "$ctl/rc")"
"""


def guest_env(
    extra: Mapping[str, str] | None = None,
    host_env: Mapping[str, str] | None = None,
    venv_bin: str | None = None,
) -> dict[str, str]:
    """The guest command's environment: a clean PATH (the venv's bin first) and a few names."""
    host = os.environ if host_env is None else host_env
    path = GUEST_PATH if venv_bin is None else f"{venv_bin}:{GUEST_PATH}"
    env = {
        "PATH": path,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "LVSCTL_IN_VM": "1",
    }
    if venv_bin is not None:
        env["VIRTUAL_ENV"] = str(Path(venv_bin).parent)
    env.update({k: host[k] for k in PASS_ENV if k in host})
    env.update(extra or {})
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "\n" in value or "\0" in value:
            raise VmError(f"environment variable {key!r}: name must be [A-Za-z_0-9] and the "
                          "value must not hold a newline")
    return env


def encode_argv(argv: Sequence[str]) -> bytes:
    """argv as NUL-terminated strings, the form ``xargs -0`` reads."""
    if not argv:
        raise VmError("vm run: no command given")
    for arg in argv:
        if "\0" in arg:
            raise VmError(f"vm run: argument {arg!r} holds a NUL byte")
    data = b"".join(a.encode() + b"\0" for a in argv)
    if len(data) > MAX_ARGV_BYTES:
        raise VmError(f"vm run: the command line is {len(data)} bytes, more than {MAX_ARGV_BYTES}")
    return data


class ConsoleSplitter:
    """Splits the guest console into boot log, command output, and the exit marker.

    Bytes before START_MARK are the boot log (kept, shown only when boot fails); bytes after it
    are the command's output, handed on as soon as they cannot be the start of END_MARK.
    """

    def __init__(self) -> None:
        self.boot_log = bytearray()
        self.started = False
        self.ended = False
        self.exit_code: int | None = None
        self._pending = bytearray()

    def feed(self, data: bytes) -> bytes:
        """Takes console bytes; returns the command output that is now certain."""
        if self.ended:
            return b""
        if not self.started:
            self.boot_log.extend(data)
            at = self.boot_log.find(START_MARK)
            if at == -1:
                return b""
            self.started = True
            data = bytes(self.boot_log[at + len(START_MARK):])
            del self.boot_log[at:]
        self._pending.extend(data)
        at = self._pending.find(END_MARK)
        if at != -1:
            out = bytes(self._pending[:at])
            tail = self._pending[at + len(END_MARK):]
            match = re.match(rb"(\d+)\n", tail)
            if match is None:  # the code has not fully arrived yet
                return self._release(at)
            self.exit_code = int(match.group(1))
            self.ended = True
            self._pending.clear()
            return out
        keep = 0
        for n in range(min(len(END_MARK) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(END_MARK[:n]):
                keep = n
                break
        return self._release(len(self._pending) - keep)

    def _release(self, upto: int) -> bytes:
        out = bytes(self._pending[:upto])
        del self._pending[:upto]
        return out


# -- preparing the kernel -------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """A prepared kernel in the cache: what run() boots."""

    version: str
    folder: Path
    cached: bool

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def image(self) -> Path:
        vmlinux = self.folder / "vmlinux"
        return vmlinux if vmlinux.exists() else self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def initramfs(self) -> Path:
        return self.folder / f"initramfs-{recipe_id(self.version)}.cpio"


def _run_tool(argv: Sequence[str], what: str, *, cwd: Path | None = None,
              error: type[VmError] = KernelDownloadError) -> str:
    if shutil.which(argv[0]) is None:
        raise NoQemuError(f"{what}: '{argv[0]}' is not installed (scripts/setup installs it)")
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise error(f"{what} failed ({proc.returncode}): {detail[-1] if detail else 'no output'}")
    return proc.stdout


def kernel_release(progress: Echo = _progress) -> str:
    """The release Debian's ``linux-image-amd64`` depends on now (e.g. ``6.1.0-56-amd64``).

    When the package lists were never fetched (a fresh machine) and we are root, fetches them
    once with ``apt-get update``.
    """
    what = f"apt-cache depends {KERNEL_META_PACKAGE}"
    try:
        return parse_meta_depends(_run_tool(["apt-cache", "depends", KERNEL_META_PACKAGE], what))
    except KernelDownloadError:
        if os.geteuid() != 0:
            raise
    progress("no package lists: running apt-get update")
    _run_tool(["apt-get", "update", "-qq"], "apt-get update")
    return parse_meta_depends(_run_tool(["apt-cache", "depends", KERNEL_META_PACKAGE], what))


def _recipe(kernel_version: str, init: str) -> dict[str, object]:
    """What the cached initramfs and module list were made from; a change rebuilds them."""
    busybox = hashlib.sha256(BUSYBOX.read_bytes()).hexdigest() if BUSYBOX.exists() else None
    return {
        "version": kernel_version,
        "boot_modules": list(BOOT_MODULES),
        "guest_modules": list(GUEST_MODULES),
        "init": hashlib.sha256(init.encode()).hexdigest(),
        "modprobe": hashlib.sha256(MODPROBE.encode()).hexdigest(),
        "busybox": busybox,
    }


def module_order(root: Path, version: str, names: Sequence[str]) -> list[str]:
    """The insmod order for ``names`` and their dependencies, from the kernel's own modules.dep."""
    out = _run_tool(
        ["modprobe", "-d", str(root), "-S", version, "-a", "--show-depends", *names],
        f"modprobe --show-depends {' '.join(names)}",
    )
    return parse_show_depends(out, str(root / "lib" / "modules" / version))


def build_initramfs(root: Path, version: str, order: Sequence[str], busybox: bytes,
                    guest_order: Sequence[str] = ()) -> bytes:
    """busybox (static), its applet links, /dev/console, /init, and the modules in order.

    ``order`` is loaded before the host root is mounted, ``guest_order`` (modules not already
    in ``order``) before the command runs.
    """
    if not is_static_elf(busybox):
        raise NoQemuError(f"{BUSYBOX} is not a static binary: install busybox-static")
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in (
        "bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", f"lib/modules/{version}")]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    for applet in ("sh", "mount", "insmod", "mkdir", "reboot", "chroot", "stty", "ip",
                   "hostname", "sync", "printf", "echo", "cat"):
        entries.append(CpioEntry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init_script(version).encode()))
    entries.append(CpioEntry("bin/modprobe-in-guest", stat.S_IFREG | 0o755, MODPROBE.encode()))
    guest_order = [m for m in guest_order if m not in order]
    for name, listed in (("modules.order", order), ("guest-modules.order", guest_order)):
        entries.append(CpioEntry(name, stat.S_IFREG | 0o644,
                                 "".join(f"{m}\n" for m in listed).encode()))
    made: set[str] = {f"lib/modules/{version}"}
    modules_dir = root / "lib" / "modules" / version
    for rel in [*order, *guest_order]:
        parts = Path(rel).parts[:-1]
        for i in range(1, len(parts) + 1):
            d = f"lib/modules/{version}/{'/'.join(parts[:i])}"
            if d not in made:
                made.add(d)
                entries.append(CpioEntry(d, stat.S_IFDIR | 0o755))
        entries.append(CpioEntry(f"lib/modules/{version}/{rel}", stat.S_IFREG | 0o644,
                                 (modules_dir / rel).read_bytes()))
    return cpio_newc(entries)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


APT_LISTS = Path("/var/lib/apt/lists")


def _current_release(base: Path, progress: Echo) -> str:
    """kernel_release(), remembered in the cache folder until the apt lists change.

    apt-cache takes 1-2 s on a busy machine; the lists folder's mtime changes whenever
    ``apt-get update`` brings new lists, so the answer is asked again exactly then.
    """
    try:
        lists = APT_LISTS.stat().st_mtime_ns
    except OSError:
        lists = None
    memo = base / "release.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(memo.read_text())
        if lists is not None and data["lists"] == lists:
            return str(data["version"])
    version = kernel_release(progress)
    with contextlib.suppress(OSError):
        lists = APT_LISTS.stat().st_mtime_ns  # apt-get update may have just run
        base.mkdir(parents=True, exist_ok=True)
        _write_atomic(memo, json.dumps({"lists": lists, "version": version}).encode())
    return version


def recipe_id(version: str) -> str:
    """A short hash of what the initramfs for ``version`` is built from."""
    recipe = json.dumps(_recipe(version, init_script(version)), sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _newest_cached(base: Path) -> str | None:
    """The kernel most recently made ready in ``base`` (for this recipe), if any."""
    ready = [p for p in base.glob("*/initramfs-*.cpio")
             if p.name == f"initramfs-{recipe_id(p.parent.name)}.cpio"]
    ready.sort(key=lambda p: p.stat().st_mtime)
    return ready[-1].parent.name if ready else None


def prepare(
    directory: str | os.PathLike[str] | None = None,
    *,
    version: str | None = None,
    progress: Echo = _progress,
) -> Kernel:
    """Downloads, unpacks and readies the kernel in the cache folder; reuses a complete one.

    Raises NoQemuError (a tool is missing) or KernelDownloadError.
    """
    base = cache_dir(directory)
    t0 = time.monotonic()
    if version is None:
        try:
            version = _current_release(base, progress)
        except VmError:
            # Offline, or apt lists not fetched yet: a kernel already in the cache still works.
            version = _newest_cached(base)
            if version is None:
                raise
    folder = base / version
    with _locked(base):
        if Kernel(version, folder, cached=True).initramfs.exists():
            progress(f"kernel {version} ready (cached, {folder})")
            return Kernel(version, folder, cached=True)
        root = folder / "root"
        if not (root / "boot" / f"vmlinuz-{version}").exists():
            try:
                _download(version, folder, progress)
            except KernelDownloadError as exc:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if the failed download left it empty
                # The archive may have moved on, or we are offline: an older kernel will do.
                older = _newest_cached(base)
                if older is None:
                    raise
                progress(f"warning: {exc}; using the cached kernel {older}")
                return Kernel(older, base / older, cached=True)
        else:
            progress(f"kernel {version} already unpacked")
        modules_dir = root / "lib" / "modules" / version
        if not (modules_dir / "modules.dep").exists():  # the .deb ships none
            t = time.monotonic()
            _run_tool(["depmod", "-b", str(root), version], "depmod")
            progress(f"depmod done in {time.monotonic() - t:.1f} s")
        if not (folder / "vmlinux").exists():
            t = time.monotonic()
            vmlinux = find_vmlinux((root / "boot" / f"vmlinuz-{version}").read_bytes())
            if vmlinux is not None:
                _write_atomic(folder / "vmlinux", vmlinux)
                progress(f"extracted vmlinux ({len(vmlinux) >> 20} MiB) in "
                         f"{time.monotonic() - t:.1f} s, to boot it via PVH")
            else:
                progress("no vmlinux found in the bzImage: booting the compressed kernel")
        order = module_order(root, version, BOOT_MODULES)
        guest = module_order(root, version, [*GUEST_MODULES, *scheduler_modules(modules_dir)])
        if not BUSYBOX.exists():
            raise NoQemuError(f"{BUSYBOX} is not installed: install busybox-static")
        kernel = Kernel(version, folder, cached=False)
        recipe = _recipe(version, init_script(version))
        (folder / f"initramfs-{recipe_id(version)}.json").write_text(json.dumps(recipe, indent=2))
        _write_atomic(kernel.initramfs,
                      build_initramfs(root, version, order, BUSYBOX.read_bytes(), guest))
    progress(f"kernel {version} ready in {time.monotonic() - t0:.1f} s ({folder})")
    return kernel


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _download(version: str, folder: Path, progress: Echo) -> None:
    package = f"linux-image-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        t = time.monotonic()
        progress(f"downloading {package}")
        _run_tool(["apt-get", "download", package], f"apt-get download {package}", cwd=Path(tmp))
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise KernelDownloadError(f"apt-get download {package} left no .deb file")
        size = debs[0].stat().st_size
        progress(f"downloaded {size >> 20} MiB in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        unpacked = Path(tmp) / "root"
        _run_tool(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], f"dpkg-deb -x {debs[0].name}")
        if (folder / "root").exists():
            shutil.rmtree(folder / "root")
        unpacked.rename(folder / "root")
        progress(f"unpacked in {time.monotonic() - t:.1f} s")


# -- running --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VmResult:
    """What a guest command did: its exit code, its output (stdout and stderr merged), times."""

    exit_code: int
    output: str
    boot_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class VmOptions:
    """How to boot: memory (QEMU syntax), CPUs, total timeout, extra writable shares, and a
    tap device of the host (already made, in QEMU's network namespace) for a NIC: the guest's
    ``eth0``, on the host's side of that tap."""

    memory: str = DEFAULT_MEMORY
    cpus: int = DEFAULT_CPUS
    timeout: float = DEFAULT_TIMEOUT
    shares: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    modules: bool = True
    verbose: bool = False
    tap: str | None = None


def qemu_argv(kernel: Kernel, ctl: Path, options: VmOptions) -> list[str]:
    """The QEMU command line (TCG only: KVM hangs on these machines)."""
    # quiet: the serial console is slow under TCG, and boot messages are only wanted when
    # something fails (--verbose shows them as they come).
    cmdline = " ".join([
        "console=ttyS0", *([] if options.verbose else ["quiet", "loglevel=3"]), "panic=-1",
        "rdinit=/init", "mitigations=off", "8250.nr_uarts=1", "random.trust_cpu=on",
    ])
    argv = [
        QEMU, "-accel", "tcg", "-M", "pc", "-cpu", "max",
        "-m", options.memory, "-smp", str(options.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(kernel.image), "-initrd", str(kernel.initramfs), "-append", cmdline,
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-fsdev", f"local,id={ROOT_TAG},path=/,readonly=on,security_model=none,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev={ROOT_TAG},mount_tag={ROOT_TAG}",
        "-fsdev", f"local,id=ctl,path={ctl},security_model=none",
        "-device", f"virtio-9p-pci,fsdev=ctl,mount_tag={CTL_TAG}",
    ]
    for i, share in enumerate(options.shares):
        argv += [
            "-fsdev", f"local,id=share{i},path={share},security_model=none",
            "-device", f"virtio-9p-pci,fsdev=share{i},mount_tag=share{i}",
        ]
    if options.tap is not None:
        argv += ["-netdev", f"tap,id=net0,ifname={options.tap},script=no,downscript=no",
                 "-device", "virtio-net-pci,netdev=net0"]
    return argv


def _write_ctl(ctl: Path, argv: Sequence[str], cwd: Path, options: VmOptions,
               kernel_root: Path) -> None:
    venv_bin = str(Path(sys.prefix) / "bin") if sys.prefix != sys.base_prefix else None
    env = guest_env(options.env, venv_bin=venv_bin)
    (ctl / "argv").write_bytes(encode_argv(argv))
    (ctl / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (ctl / "cwd").write_text(f"{cwd}\n")
    (ctl / "stage2.sh").write_text(STAGE2)
    (ctl / "shares").write_text("".join(f"share{i} {p}\n" for i, p in enumerate(options.shares)))
    if options.modules:
        (ctl / "load-modules").write_text("")
    (ctl / "modroot").write_text(f"{kernel_root}\n")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Ends QEMU (and the `timeout` around it) by their process group, which we created,
    and returns once no process of that group is left."""
    if proc.poll() is not None:
        # `timeout` exits only after QEMU did; its PID may already be reused: signal nothing.
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # QEMU is `timeout`'s child, not ours: wait until it is gone too (it frees its memory first).
    for _ in range(200):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def run(
    argv: Sequence[str],
    *,
    options: VmOptions | None = None,
    cwd: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    stream: IO[bytes] | None = None,
    progress: Echo = _progress,
    clock: Callable[[], float] = time.monotonic,
) -> VmResult:
    """Boots the kernel VM, runs ``argv`` in it, returns its exit code and output.

    ``cwd`` (default: the current folder) is the working folder in the guest, the same path as
    on the host. Output is streamed to ``stream`` (default: this process's stdout) as it comes.
    Raises NoQemuError, KernelDownloadError, BootError or VmTimeoutError.
    """
    options = options or VmOptions()
    t0 = clock()
    deadline = t0 + options.timeout
    if shutil.which(QEMU) is None:
        raise NoQemuError(f"{QEMU} is not installed: install qemu-system-x86 (scripts/setup)")
    kernel = prepare(directory, progress=progress)
    shares = tuple(Path(s).resolve() for s in options.shares)
    for share in shares:
        if not share.is_dir():
            raise VmError(f"vm run: share {share} is not a folder")
    options = dataclasses.replace(options, shares=shares)
    workdir = Path(cwd if cwd is not None else os.getcwd()).resolve()
    out = stream if stream is not None else sys.stdout.buffer
    with tempfile.TemporaryDirectory(prefix="lvsctl-vm-") as tmp:
        ctl = Path(tmp)
        _write_ctl(ctl, argv, workdir, options, kernel.root.resolve())
        splitter = ConsoleSplitter()
        output = bytearray()
        remaining = max(1.0, deadline - clock())
        t_qemu = clock()
        proc = subprocess.Popen(
            # `timeout` also ends QEMU should this process die without cleaning up.
            ["timeout", "-s", "KILL", f"{remaining + 10:.0f}", *qemu_argv(kernel, ctl, options)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        boot_seconds = 0.0
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                left = deadline - clock()
                if left <= 0:
                    _kill(proc)
                    where = "the command" if splitter.started else "boot"
                    raise VmTimeoutError(
                        f"kernel VM timed out after {options.timeout:.0f} s during {where}; "
                        "QEMU was killed (raise --timeout)")
                ready, _, _ = select.select([fd], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                was_started = splitter.started
                data = splitter.feed(chunk)
                if options.verbose and not was_started:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                if splitter.started and not was_started:
                    boot_seconds = clock() - t_qemu
                    progress(f"booted in {boot_seconds:.1f} s (modules loaded, command starts)")
                if data:
                    output.extend(data)
                    out.write(data)
                    out.flush()
                if splitter.ended:
                    break
            try:
                proc.wait(timeout=max(1.0, min(15.0, deadline - clock())))
            except subprocess.TimeoutExpired:
                _kill(proc)
        finally:
            _kill(proc)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        total = clock() - t0
        rc_file = ctl / "rc"
        code = splitter.exit_code
        if code is None and rc_file.exists() and rc_file.read_text().strip().isdigit():
            code = int(rc_file.read_text())
        if code is None:
            log = splitter.boot_log.decode(errors="replace").strip().splitlines()[-15:]
            detail = [*log, *stderr.strip().splitlines()[-5:]] or [
                "(no console output: run with --verbose to see the kernel's boot messages)"]
            what = "the command did not finish" if splitter.started else "the guest did not boot"
            raise BootError("\n".join(
                [f"kernel VM: {what} (QEMU exit {proc.returncode}):", *detail]))
    progress(f"command exited {code} after {total - boot_seconds - (t_qemu - t0):.1f} s "
             f"(total {total:.1f} s)")
    return VmResult(code, output.decode(errors="replace"), boot_seconds, total)


@dataclass(frozen=True)
class CachedKernel:
    """A kernel found in the cache folder, and whether this checkout's initramfs is built."""

    version: str
    folder: Path
    ready: bool
    size_mib: int


def cached_kernels(directory: str | os.PathLike[str] | None = None) -> list[CachedKernel]:
    """The kernels unpacked in the cache folder, oldest first."""
    base = cache_dir(directory)
    found = []
    for boot in sorted(base.glob("*/root/boot/vmlinuz-*"), key=lambda p: p.stat().st_mtime):
        folder = boot.parents[2]
        size = sum(f.stat().st_size for f in folder.rglob("*")
                   if f.is_file() and not f.is_symlink())
        kernel = Kernel(folder.name, folder, cached=True)
        found.append(CachedKernel(folder.name, folder, kernel.initramfs.exists(), size >> 20))
    return found


# -- the host kernel ------------------------------------------------------------------------


def kernel_has_ipvs() -> bool:
    """True when this (host) kernel serves IPVS: /proc/net/ip_vs, or the genl family resolves."""
    if Path("/proc/net/ip_vs").exists():
        return True
    try:
        from pyroute2.netlink.generic import GenericNetlinkSocket

        sock = GenericNetlinkSocket()
        try:
            sock.bind("IPVS", None)
            return True
        finally:
            sock.close()
    except Exception:  # any failure to resolve the family means: no IPVS here
        return False
