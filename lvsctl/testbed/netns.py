"""Network namespaces for the test bed: unique names, veth links, bridges, entering one from a
thread, and removing everything that was made.

The one implementation used by the lab, the tests and the benchmarks. Every name carries the
creating process's PID, so parallel runs never collide, and ``Lab.close()`` removes what it
made even when its user failed half-way.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lvsctl.core.errors import LvsctlError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000

_counter = itertools.count()


class CommandError(LvsctlError):
    """A command of the test bed (``ip``, ``nft``, ...) failed or is missing."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command (argv list, never a shell) and return its stdout.

    Raises CommandError when it is missing, exits non-zero (with ``check``) or outlives
    ``timeout`` seconds.
    """
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandError(f"{' '.join(argv[:6])} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} is not installed (scripts/setup installs it)") from None
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[:400]}")
    return proc.stdout


def unique(prefix: str) -> str:
    """A name unique to this process, short enough for an interface (15 chars): the prefix
    is shortened, never the PID and counter that make it unique."""
    tail = f"{os.getpid() % 100000}x{next(_counter)}"
    return prefix[:15 - len(tail)] + tail


def _setns(path: str, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({what}): {os.strerror(err)}")


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Switch the calling thread into network namespace ``netns`` and back afterwards.

    setns(2) changes only the calling thread; a socket opened inside keeps its namespace after
    the thread has left. Raises OSError when the namespace does not exist.
    """
    with open("/proc/thread-self/ns/net", "rb") as own:
        _setns(f"/run/netns/{netns}", netns)
        try:
            yield
        finally:
            if ctypes.CDLL(None, use_errno=True).setns(own.fileno(), CLONE_NEWNET) != 0:
                # A thread stuck in the wrong namespace would do the caller's later work there.
                raise OSError(ctypes.get_errno(), f"setns back from {netns}")


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a short-lived thread that joined ``netns``; return its result or raise
    its exception. Threads ``fn`` starts stay in the namespace; the caller never leaves its own.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            _setns(f"/run/netns/{netns}", netns)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@dataclass
class Netns:
    """One named network namespace (``ip netns``)."""

    name: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it in place)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
        return run(self.argv(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(argv), **kwargs)

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run in a thread inside this namespace (see ``in_netns``)."""
        return in_netns(self.name, fn)


@dataclass
class Lab:
    """A set of namespaces, bridges and processes that ``close()`` removes."""

    namespaces: list[Netns] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def netns(self, prefix: str = "t") -> Netns:
        ns = Netns(unique(f"lvs{prefix}"))
        # Recorded first: close() removes it even if the next command fails.
        self.namespaces.append(ns)
        run(["ip", "netns", "add", ns.name])
        ns.ip("link", "set", "lo", "up")
        return ns

    def bridge(self, host_ns: Netns) -> str:
        """A bridge inside ``host_ns`` (so nothing is added to the host's own namespace)."""
        name = unique("br")
        host_ns.ip("link", "add", name, "type", "bridge")
        host_ns.ip("link", "set", name, "up")
        return name

    def link(self, a: Netns, a_addr: str | None, b: Netns, b_addr: str | None,
             a_if: str = "eth0", b_if: str = "eth0") -> tuple[str, str]:
        """A veth pair from ``a`` to ``b`` (addresses with prefix, e.g. 10.0.0.1/24, or None)."""
        left, right = unique("va"), unique("vb")
        run(["ip", "link", "add", left, "netns", a.name, "type", "veth", "peer", "name", right,
             "netns", b.name])
        a.ip("link", "set", left, "name", a_if)
        b.ip("link", "set", right, "name", b_if)
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            if addr:
                ns.ip("addr", "add", addr, "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        return a_if, b_if

    def attach(self, ns: Netns, addr: str | None, hub: Netns, bridge: str, ifname: str) -> None:
        """Plug ``ns`` into ``bridge`` (which lives in ``hub``) through a veth named ``ifname``."""
        port = unique("p")
        self.link(ns, addr, hub, None, a_if=ifname, b_if=port)
        hub.ip("link", "set", port, "master", bridge)

    def start(self, ns: Netns, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = ns.popen(argv, **kwargs)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for ns in reversed(self.namespaces):
            # Killing by PID only what still lives inside a namespace we created ourselves.
            pids = run(["ip", "netns", "pids", ns.name], check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()
