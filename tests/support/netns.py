"""Real network namespaces for tests: unique names, veth links, bridges, and cleanup.

Every name carries the creating process's PID, so parallel test runs never collide, and
``Lab.close()`` removes what it made even when a test failed half-way.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

_counter = itertools.count()


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command (argv list, never a shell) and return its stdout."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def unique(prefix: str) -> str:
    """A name unique to this process, short enough for an interface (15 chars)."""
    return f"{prefix}{os.getpid() % 100000}x{next(_counter)}"[:15]


@dataclass
class Netns:
    name: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
        return run(self.argv(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(argv), **kwargs)  # type: ignore[call-overload]

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])


@dataclass
class Lab:
    """A set of namespaces and links that are all removed by close()."""

    namespaces: list[Netns] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def netns(self, prefix: str = "t") -> Netns:
        ns = Netns(unique(f"lvs{prefix}"))
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
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

    def start(self, ns: Netns, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
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
