"""The kernel's IPVS rules, shared by the kernel's table and the test bed's fake: names, limits,
what the kernel refuses before it looks at the table, and what each errno means.

Nothing here speaks netlink (``ipvs_kernel``) or encodes it (``ipvs_codec``): the fake in
``lvsctl.testbed.fake_ipvs`` imports this module only, so both implementations refuse the same
ops with the same errno (proven by tests/contract against the real kernel).
"""

from __future__ import annotations

import errno as errnos
import os
from dataclasses import dataclass
from enum import IntEnum

from lvsctl.core.errors import KernelError
from lvsctl.core.model import ServiceSpec
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DrainDest,
    EditDest,
    EditService,
    Op,
)

# ---------------------------------------------------------------------------------------------
# Service flags, named as ipvsadm names them
# ---------------------------------------------------------------------------------------------

F_PERSISTENT = 0x0001
F_HASHED = 0x0002  # internal to the kernel, reported on every service
F_ONEPACKET = 0x0004
F_SCHED1, F_SCHED2, F_SCHED3 = 0x0008, 0x0010, 0x0020
SCHED_BITS = (F_SCHED1, F_SCHED2, F_SCHED3)
# Scheduler flag names per scheduler, as ipvsadm prints them; sh and mh share the bits.
FLAG_NAMES = {
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}
GENERIC_FLAGS = ("flag-1", "flag-2", "flag-3")

# IPVS's fwd method numbers as ipvsadm -Ln names them: 1 (local node) and 4 (bypass) exist in
# the kernel but are never configured by lvsctl; an observed dest may still carry them.
FWD_NAMES = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route", 4: "Bypass"}

IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_IFNAME_MAXLEN = 16
MAX_WEIGHT = 2**31 - 1  # the kernel keeps weights in an int and refuses negatives (ERANGE)
MAX_SYNC_ID = 255


def scheduler_flag_names(scheduler: str) -> tuple[str, str, str]:
    """The names of the three scheduler flag bits for ``scheduler``."""
    return FLAG_NAMES.get(scheduler, GENERIC_FLAGS)


def flag_bits(scheduler: str, flags: frozenset[str]) -> int:
    """The kernel's service flag bits for scheduler flag names (and "ops").

    Raises ValueError for a name no scheduler uses (the cluster file's schema has said so
    already; this is the last line)."""
    names = scheduler_flag_names(scheduler)
    bits = 0
    for flag in flags:
        if flag == "ops":
            bits |= F_ONEPACKET
            continue
        for table in (names, *FLAG_NAMES.values(), GENERIC_FLAGS):
            if flag in table:
                bits |= SCHED_BITS[table.index(flag)]
                break
        else:
            raise ValueError(f"unknown service flag {flag!r}")
    return bits


def service_bits(spec: ServiceSpec) -> int:
    """Every flag bit a service is written with: scheduler flags, one-packet, persistence."""
    return flag_bits(spec.scheduler, spec.flags) | (F_PERSISTENT if spec.persistence else 0)


def flag_names(scheduler: str, bits: int) -> frozenset[str]:
    """Flag names for the kernel's bits, named as ipvsadm names them for this scheduler."""
    names = scheduler_flag_names(scheduler)
    out = {names[i] for i, bit in enumerate(SCHED_BITS) if bits & bit}
    if bits & F_ONEPACKET:
        out.add("ops")
    return frozenset(out)


def service_spec(scheduler: str, bits: int, timeout: int, netmask: int,
                 host_prefix: int) -> ServiceSpec:
    """A ServiceSpec from what the kernel reports. Without persistence the kernel's netmask
    means nothing, and it is read as the host prefix (as ``reconcile.kernel_spec`` plans)."""
    persistent = bool(bits & F_PERSISTENT)
    return ServiceSpec(
        scheduler=scheduler,
        flags=flag_names(scheduler, bits),
        persistence=timeout if persistent else 0,
        netmask=netmask if persistent else host_prefix,
    )


# ---------------------------------------------------------------------------------------------
# What the kernel refuses before it looks at the table, and what its answers mean
# ---------------------------------------------------------------------------------------------


def refusal(op: Op) -> int:
    """The errno the kernel answers for ``op`` whatever its table holds (0: none).

    These ops cannot even be encoded: a scheduler name that does not fit, a netmask beyond the
    family's width, a weight the kernel's int refuses.
    """
    if isinstance(op, AddService | EditService):
        spec = op.spec
        if not spec.scheduler or len(spec.scheduler) >= IP_VS_SCHEDNAME_MAXLEN:
            return errnos.ENOENT
        if not 0 < spec.netmask <= op.key.family.host_prefix:
            return errnos.EINVAL
    elif isinstance(op, AddDest | EditDest | DrainDest) and not 0 <= op.spec.weight <= MAX_WEIGHT:
        return errnos.ERANGE
    return 0


def done_errno(op: Op, code: int) -> bool:
    """Whether the kernel's ``code`` for ``op`` means "already so" (idempotent success)."""
    if isinstance(op, AddService | AddDest):
        return code == errnos.EEXIST
    if isinstance(op, DelService):
        return code == errnos.ESRCH
    if isinstance(op, DelDest):
        return code in (errnos.ENOENT, errnos.ESRCH)
    return False


def settle(op: Op, code: int) -> bool:
    """The kernel's answer ``code`` for ``op`` as ``IpvsTable.apply`` reports it: True when the
    table changed, False when it was already so. Raises KernelError for a refusal."""
    if code and not done_errno(op, code):
        raise kernel_error(op, code)
    return code == 0


# The kernel's errnos for IPVS requests, in ipvsadm's words (libipvs ipvs_strerror).
REASONS = {
    errnos.EEXIST: "already exists",
    errnos.ESRCH: "no such service",
    errnos.ENOENT: "no such destination, scheduler or persistence engine",
    errnos.EINVAL: "invalid request",
    errnos.ERANGE: "weight or threshold out of range",
    errnos.ENODEV: "no such interface",
    errnos.EPERM: "permission denied (run as root)",
}


def reason(code: int) -> str:
    """The kernel's errno ``code`` in words, with its symbolic name: "no such service (ESRCH)"."""
    words = REASONS.get(code) or os.strerror(code)
    return f"{words} ({errnos.errorcode.get(code, code)})"


def kernel_error(op: object, code: int) -> KernelError:
    """The KernelError for the kernel refusing ``op`` (an Op, or a description) with ``code``."""
    return KernelError(f"{op}: the kernel refused: {reason(code)}", op=op, errno=code)


# ---------------------------------------------------------------------------------------------
# The connection-sync daemon
# ---------------------------------------------------------------------------------------------


class SyncState(IntEnum):
    """The connection-sync daemon's role (IPVS_DAEMON_ATTR_STATE)."""

    MASTER = 1
    BACKUP = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class SyncDaemon:
    """A running connection-sync daemon as the kernel reports it."""

    state: SyncState
    interface: str
    sync_id: int
    maxlen: int = 0
    group: str = ""
    port: int = 0
    ttl: int = 0


def sync_start_text(state: SyncState, interface: str, sync_id: int) -> str:
    return f"start sync daemon {state.label} on {interface} (sync id {sync_id})"


def check_sync_args(state: SyncState, interface: str, sync_id: int) -> None:
    """Refuse, as the kernel does (EINVAL), an interface name or sync id it cannot take."""
    if not interface or len(interface) >= IP_VS_IFNAME_MAXLEN or not 0 <= sync_id <= MAX_SYNC_ID:
        raise kernel_error(sync_start_text(state, interface, sync_id), errnos.EINVAL)
