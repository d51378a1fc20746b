"""An in-memory VIP table for in-process tests of the keeper, held to the kernel's rules by
tests/integration/test_vip_contract.py (the same cases run against ``KernelVips``).

Addresses are keyed by (address, interface) as the kernel keys them; each expires
``lifetime`` seconds after its last renewal on the table's clock; a renewal checked against
``not_after`` too late raises StaleLease and changes nothing; an unknown interface is ENODEV.
Hooks run just before and just after the "kernel call", where a real director can be frozen.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Vip
from lvsctl.director.vip import Lease, StaleLease


@dataclass
class FakeClock:
    """A monotonic clock that runs with real time and can jump ahead (a freeze)."""

    real: Callable[[], float]
    offset: float = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class FakeVips:
    clock: Callable[[], float]
    interfaces: frozenset[str] = frozenset({"eth0", "eth1"})
    expires: dict[tuple[str, str], float] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (op, address, interface)
    sent: list[tuple[float, float | None]] = field(default_factory=list)  # (at, not_after)
    stale: int = 0  # renewals refused as too late
    before_send: list[Callable[[], None]] = field(default_factory=list)  # one-shot hooks
    after_send: list[Callable[[], None]] = field(default_factory=list)

    def _check(self, vip: Vip) -> None:
        if vip.interface not in self.interfaces:
            raise KernelError(f"interface {vip.interface} does not exist", errno=errno.ENODEV)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, t in self.expires.items() if t <= now]:
            del self.expires[key]
            self.log.append(("expired", *key))

    def acquire(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        self.renew(vip, lease, not_after)

    def renew(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        self._check(vip)
        while self.before_send:
            self.before_send.pop(0)()
        if not_after is not None and self.clock() > not_after:
            self.stale += 1
            raise StaleLease(f"renewal of {vip.address} came too late; not sent")
        self._expire()
        key = (vip.address, vip.interface)
        self.log.append(("renew" if key in self.expires else "add", *key))
        self.expires[key] = self.clock() + lease.lifetime
        self.sent.append((self.clock(), not_after))
        while self.after_send:
            self.after_send.pop(0)()

    def release(self, vip: Vip) -> bool:
        self._expire()
        key = (vip.address, vip.interface)
        if vip.interface not in self.interfaces:
            return False  # the interface is gone, and the address with it
        present = self.expires.pop(key, None) is not None
        if present:
            self.log.append(("release", *key))
        return present

    def held(self, vips: tuple[Vip, ...]) -> frozenset[str]:
        self._expire()
        present = {address for address, _ in self.expires}
        return frozenset(v.address for v in vips if v.address in present)

    def ops(self, *kinds: str) -> list[tuple[str, str, str]]:
        return [entry for entry in self.log if entry[0] in kinds]
