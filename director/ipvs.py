"""What the director needs from IPVS: the ``IpvsTable`` protocol, and the kernel's table.

The IPVS side is split by concern; only ``ipvs_kernel`` opens a netlink socket:

    ipvs_rules   the kernel's rules, shared with the test bed's fake: flag and fwd names,
                 limits, what the kernel refuses before looking at its table, errno meanings
    ipvs_codec   the generic-netlink messages as bytes, attributes declared as data
    ipvs_kernel  KernelIpvs: the socket, pipelined requests, dumps
    ipvs_text    ipvsadm's text formats (-Ln listing, -S -n rules)

``lvsctl.testbed.fake_ipvs.FakeIpvs`` implements the same protocol in memory, importing
``ipvs_rules`` only; tests/contract runs one suite against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lvsctl.core.model import ServiceKey
from lvsctl.director.ipvs_kernel import KernelIpvs
from lvsctl.director.ipvs_rules import SyncDaemon, SyncState
from lvsctl.director.reconcile import ObservedService, Op

__all__ = ["IpvsTable", "KernelIpvs", "SyncDaemon", "SyncState"]


class IpvsTable(Protocol):
    """What the director needs from IPVS. Implemented by KernelIpvs and the test bed's FakeIpvs.

    ``apply_batch`` answers each op with the kernel's errno (0: done) and never raises for a
    refusal: what a refusal means for the ops around it is the reconcile driver's rule
    (``dataplane.apply_ops``). ``apply`` is one op: True when it changed the table, False when
    the kernel said it was already so (EEXIST on an add; ESRCH/ENOENT on a delete); any other
    refusal raises KernelError carrying the op and the errno. ``observe`` raises KernelError
    (NoIpvsError on a kernel without IPVS) when the table cannot be read.
    """

    writes: int

    def observe(self, *, stats: bool = True) -> dict[ServiceKey, ObservedService]: ...

    def apply(self, op: Op) -> bool: ...

    def apply_batch(self, ops: Sequence[Op]) -> list[int]: ...

    def sync_daemons(self) -> list[SyncDaemon]: ...

    def start_sync_daemon(self, state: SyncState, interface: str, sync_id: int) -> None: ...

    def stop_sync_daemon(self, state: SyncState) -> bool: ...

    def close(self) -> None: ...
