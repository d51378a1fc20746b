"""The one error hierarchy of lvsctl: every user-facing failure is an LvsctlError."""

from __future__ import annotations

from dataclasses import dataclass


class LvsctlError(Exception):
    """Base of every error lvsctl raises on purpose.

    ``lines()`` is what the CLI prints, one line each, before exiting with ``exit_code``.
    """

    exit_code = 1

    def lines(self) -> list[str]:
        return [str(self)]


@dataclass(frozen=True)
class ConfigIssue:
    """One finding about a cluster file: where (key path) and what rule it breaks."""

    path: str
    message: str

    def line(self, source: str) -> str:
        where = f"{source}: {self.path}" if self.path else source
        return f"{where}: {self.message}"


class ConfigError(LvsctlError):
    """A cluster or node file that cannot be used; carries every issue found, not just the first."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [issue.line(self.source) for issue in self.issues]


class KernelError(LvsctlError):
    """A netlink request the kernel refused; ``op`` names what was asked, ``errno`` why not."""

    def __init__(self, message: str, *, op: object = None, errno: int | None = None) -> None:
        self.op = op
        self.errno = errno
        super().__init__(message)


class NoIpvsError(KernelError):
    """The running kernel has no IPVS support (no ip_vs module, or modules cannot be loaded)."""

    def __init__(self) -> None:
        super().__init__(
            "this kernel has no IPVS: load the ip_vs module, or run the lab in its VM "
            "(lvsctl lab up)"
        )


class ZooKeeperError(LvsctlError):
    """ZooKeeper could not be reached, refused a request, or holds something unexpected."""


class ConflictError(ZooKeeperError):
    """A compare-and-set write lost against a concurrent writer."""


class ElectionError(LvsctlError):
    """An impossible leadership transition or a broken leadership invariant."""


class StateError(LvsctlError):
    """An impossible transition of an explicit state machine."""
