"""A simulated host kernel's addresses and the VIP table the keeper drives on it.

Addresses are keyed by (address, interface), as the kernel keys them. ``replace`` adds or
renews an address with a lifetime counted from when the kernel handles the message; an expired
address is removed late, by up to ``late_max`` seconds (the kernel's lifetime work runs on a
coarse, fuzzed timer: DESIGN.md "The VIP is a kernel lease"); a renewal that comes before the
removal keeps the address. ``SimVips`` is ``KernelVips`` on such a kernel: the same checks in
the same order, with a hook at each point where a real director can be frozen.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Vip
from lvsctl.director.vip import Lease, StaleLease
from lvsctl.testbed.sim.clock import Agenda, Event


@dataclass
class Address:
    valid_until: float
    removal: Event | None = None


@dataclass
class HostKernel:
    """One host's addresses; ``on_change`` is told of every add and removal."""

    name: str
    agenda: Agenda
    rng: random.Random
    late_max: float = 1.0
    late_bias: float = 0.5  # chance that an expiry is as late as it can be
    interfaces: frozenset[str] = frozenset({"eth0", "eth1"})
    on_change: Callable[[], None] = lambda: None
    addresses: dict[tuple[str, str], Address] = field(default_factory=dict)
    history: list[tuple[float, str, str, str]] = field(default_factory=list)

    def replace(self, address: str, interface: str, lifetime: int) -> None:
        if interface not in self.interfaces:
            raise KernelError(f"interface {interface} does not exist", errno=errno.ENODEV)
        key = (address, interface)
        entry = self.addresses.get(key)
        valid_until = self.agenda.now + lifetime
        if entry is None:
            entry = self.addresses[key] = Address(valid_until)
            self.history.append((self.agenda.now, "add", address, interface))
        else:
            entry.valid_until = valid_until
            if entry.removal is not None:
                entry.removal.cancel()
        late = (self.late_max if self.rng.random() < self.late_bias
                else self.rng.uniform(0.0, self.late_max))
        entry.removal = self.agenda.at(valid_until + late, lambda: self._expire(key, entry))
        self.on_change()

    def _expire(self, key: tuple[str, str], entry: Address) -> None:
        if self.addresses.get(key) is entry:
            del self.addresses[key]
            self.history.append((self.agenda.now, "expired", *key))
            self.on_change()

    def delete(self, address: str, interface: str) -> bool:
        entry = self.addresses.pop((address, interface), None)
        if entry is None:
            return False
        if entry.removal is not None:
            entry.removal.cancel()
        self.history.append((self.agenda.now, "deleted", address, interface))
        self.on_change()
        return True

    def holds(self, address: str) -> list[str]:
        """The interfaces that carry ``address`` now."""
        return sorted(i for (a, i) in self.addresses if a == address)


class SimVips:
    """``KernelVips`` on a simulated kernel (director/vip.py's VipTable).

    ``hook(point)`` runs at "renew_before_check", "renew_before_send" and
    "renew_after_send": where the world freezes or kills the process when a schedule says so.
    """

    def __init__(self, kernel: HostKernel, monotonic: Callable[[], float],
                 hook: Callable[[str], None], alive: Callable[[], bool] = lambda: True) -> None:
        self.kernel = kernel
        self.monotonic = monotonic
        self.hook = hook
        self.alive = alive  # a process killed inside a step does nothing more

    def acquire(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        self.renew(vip, lease, not_after)

    def renew(self, vip: Vip, lease: Lease, not_after: float | None = None) -> None:
        if vip.interface not in self.kernel.interfaces:
            raise KernelError(f"interface {vip.interface} does not exist", errno=errno.ENODEV)
        self.hook("renew_before_check")
        if not_after is not None and self.monotonic() > not_after:
            raise StaleLease(f"renewal of {vip.address} came too late; not sent")
        self.hook("renew_before_send")
        if self.alive():
            self.kernel.replace(vip.address, vip.interface, lease.lifetime)
        self.hook("renew_after_send")

    def release(self, vip: Vip) -> bool:
        if vip.interface not in self.kernel.interfaces or not self.alive():
            return False
        return self.kernel.delete(vip.address, vip.interface)

    def held(self, vips: tuple[Vip, ...]) -> frozenset[str]:
        wanted = {vip.address for vip in vips}
        return frozenset(a for (a, _i) in self.kernel.addresses if a in wanted)
