"""The daemon's IPVS side: reconcile the table toward the cluster and the health results, and
keep the connection-sync daemon in the role leadership gives (active = master, else backup).

Both directors reconcile (the standby's table is kept warm, DESIGN.md "Data flow"); the kernel
is observed on every pass and a failed observation plans no deletes (reconcile.plan). Every
change is logged with the epoch. A director that starts adopts the table it finds: nothing is
flushed, only what the plan says is changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Cluster, Health, HealthKey
from lvsctl.director.ipvs import IpvsTable, SyncState, open_ipvs
from lvsctl.director.reconcile import (
    DrainKey,
    desired_table,
    op_dict,
    plan,
    update_drain_state,
)

log = logging.getLogger("lvsctl.director.ipvs")


def open_table(spec: str) -> IpvsTable:
    """The node file's ``ipvs``: 'kernel', or 'fake:/path' (a file-backed fake, tests only)."""
    if spec.startswith("fake:"):
        return open_ipvs(fake=spec[len("fake:"):])
    return open_ipvs()


@dataclass
class Dataplane:
    table: IpvsTable
    monotonic: Callable[[], float] = time.monotonic
    drain_state: dict[DrainKey, float] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)

    def reconcile(self, cluster: Cluster, health: Mapping[HealthKey, Health], *,
                  epoch: int, role: str) -> dict[str, Any]:
        """One pass: observe, plan, apply. Returns (and keeps) a summary for /status."""
        desired = desired_table(cluster, health)
        now = self.monotonic()
        try:
            observed = self.table.observe()
        except KernelError as exc:
            observed = None  # plan adds and edits only: never delete on a blind pass
            log.error("cannot read the IPVS table: %s", exc,
                      extra={"event": "ipvs_error", "epoch": epoch, "role": role})
        if observed is not None:
            self.drain_state = update_drain_state(self.drain_state, desired, observed, now)
        ops = plan(desired, observed, self.drain_state, now)
        applied = 0
        errors: list[str] = []
        for op in ops:
            try:
                changed = self.table.apply(op)
            except KernelError as exc:
                errors.append(str(exc))
                log.error("IPVS refused %s: %s", op, exc, extra={
                    "event": "ipvs_error", "epoch": epoch, "role": role, "op": str(op)})
                continue
            applied += int(changed)
            log.info("ipvs %s", op, extra={"event": "ipvs_op", "epoch": epoch, "role": role,
                                           "ipvs": op_dict(op)})
        self.last = {
            "wall": round(time.time(), 6), "epoch": epoch, "role": role,
            "observed": observed is not None, "planned": len(ops), "applied": applied,
            "errors": errors, "services": len(desired),
        }
        return self.last

    def sync_role(self, active: bool, interface: str, sync_id: int, *, epoch: int) -> None:
        """Master on the active, backup elsewhere; idempotent. Raises KernelError."""
        want = SyncState.MASTER if active else SyncState.BACKUP
        other = SyncState.BACKUP if active else SyncState.MASTER
        running = {d.state: d for d in self.table.sync_daemons()}
        if other in running:
            self.table.stop_sync_daemon(other)
            log.info("sync daemon %s stopped", other.label, extra={
                "event": "sync_daemon", "state": other.label, "epoch": epoch, "action": "stop"})
        current = running.get(want)
        if current is not None and (current.interface, current.sync_id) == (interface, sync_id):
            return
        if current is not None:
            self.table.stop_sync_daemon(want)
        self.table.start_sync_daemon(want, interface, sync_id)
        log.info("sync daemon %s on %s (sync id %d)", want.label, interface, sync_id, extra={
            "event": "sync_daemon", "state": want.label, "epoch": epoch, "action": "start",
            "interface": interface, "sync_id": sync_id})

    def close(self) -> None:
        self.table.close()
