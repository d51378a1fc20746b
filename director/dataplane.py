"""The director's IPVS side: the one reconcile driver (observe, plan, apply in pipelined
batches), used by the daemon's ``Dataplane`` and by ``lvsctl ipvs plan/apply``, and the
connection-sync daemon in the role leadership gives (active = master, else backup).

Both directors reconcile (the standby's table is kept warm, DESIGN.md "Data flow"); the kernel
is observed on every pass and a failed observation plans no deletes (reconcile.plan). A
director that starts adopts the table it finds: nothing is flushed, only what the plan says is
changed. Each director remembers the services it manages (director/managed.py): one that
leaves the cluster file is retired (its dests drained, then deleted, then the service), one it
never managed is never touched.

**A refused op** (the one rule, for the daemon and the CLI alike):

- An op the kernel refuses is reported with its errno (the daemon logs it with the epoch, the
  CLI prints it) and the pass carries on with every op that does not depend on it.
- An op depends on a refused one when it needs what the refused op was to make or remove:
  the dest ops of a service whose AddService was refused (the kernel would answer each with
  ESRCH), and the DelService of a service one of whose DelDest was refused (deleting the
  service would take that dest with it, which the plan did not say). Those are skipped, not
  sent, and counted and named with the op they depended on. Nothing else is skipped: after a
  refused EditService (an unknown scheduler, say) the service keeps its old spec and its
  dests are still programmed.
- "Already so" is not a refusal: EEXIST on an add, ESRCH or ENOENT on a delete count as done.
- Nothing is retried within the pass. The next pass observes the kernel afresh and plans from
  what it finds, so a refused op is planned, and reported, again until the file or the kernel
  changes.

To know what was refused before sending what depends on it, a pass applies its ops in three
phases, each pipelined: services added or edited; then dests (added, edited, drained,
deleted); then services deleted. This keeps the plan's order where it matters (a service
before its dests, dests before their service's delete) and costs one round trip per phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from lvsctl.core.errors import KernelError
from lvsctl.core.model import Cluster, Health, HealthKey, ServiceKey
from lvsctl.core.records import ManagedService
from lvsctl.director.ipvs import IpvsTable
from lvsctl.director.ipvs_rules import SyncState, done_errno, reason
from lvsctl.director.ipvs_timeouts import sync_timeouts, timeouts_text
from lvsctl.director.managed import ManagedBook, retired_services
from lvsctl.director.plan_view import view_document
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DesiredTable,
    DrainDest,
    DrainKey,
    DrainState,
    EditDest,
    EditService,
    ObservedTable,
    Op,
    desired_table,
    op_dict,
    plan,
    quorum_verdicts,
    update_drain_state,
)

log = logging.getLogger("lvsctl.director.ipvs")

BATCH = 256  # ops per pipelined batch: one send, and a progress report, per batch

# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    APPLIED = "applied"  # the table changed
    ALREADY = "already"  # the kernel said it was already so (EEXIST on an add, ...)
    REFUSED = "refused"  # the kernel refused it; ``errno`` says why
    SKIPPED = "skipped"  # not sent: it depends on a refused op (``after``)


class OpResult(NamedTuple):
    """What became of one planned op. (A named tuple: a pass makes one per op, 11,000 for a
    big table from empty, and a tuple is the cheapest to make.)"""

    op: Op
    outcome: Outcome
    errno: int = 0  # the kernel's answer (ALREADY, REFUSED)
    after: Op | None = None  # SKIPPED: the refused op it depended on

    def __str__(self) -> str:
        if self.outcome is Outcome.ALREADY:
            return f"{self.op} (already so)"
        if self.outcome is Outcome.REFUSED:
            return f"{self.op}: the kernel refused: {reason(self.errno)}"
        if self.outcome is Outcome.SKIPPED:
            return f"{self.op}: skipped, since the kernel refused: {self.after}"
        return str(self.op)

    def as_dict(self) -> dict[str, object]:
        out = {**op_dict(self.op), "outcome": self.outcome.value}
        if self.errno:
            out["errno"] = self.errno
        if self.after is not None:
            out["after"] = str(self.after)
        return out


@dataclass(frozen=True)
class Planned:
    """The first half of a pass: what was observed and the ops that follow from it."""

    observed: ObservedTable | None  # None: the dump failed (``observe_error``), adds only
    drain_state: dict[DrainKey, float]
    ops: list[Op]
    observe_error: KernelError | None = None


def plan_pass(table: IpvsTable, desired: DesiredTable, drain_state: DrainState, now: float, *,
              retired: Mapping[ServiceKey, float] | None = None,
              blind: bool = True, stats: bool = False) -> Planned:
    """Observe ``table`` (with traffic counters only if ``stats``) and plan toward ``desired``.

    With ``blind`` a failed observation plans adds and edits only (and the drain state is
    kept); without it the KernelError is raised (a command cannot show a plan it could not
    make).
    """
    try:
        observed = table.observe(stats=stats)
    except KernelError as exc:
        if not blind:
            raise
        return Planned(None, dict(drain_state), plan(desired, None, drain_state, now,
                                                     retired=retired), exc)
    drain = update_drain_state(drain_state, desired, observed, now, retired)
    return Planned(observed, drain, plan(desired, observed, drain, now, retired=retired))


def plan_cluster(table: IpvsTable, cluster: Cluster, *, now: float | None = None,
                 managed: Mapping[ServiceKey, ManagedService] | None = None) -> Planned:
    """The plan ``lvsctl ipvs plan`` shows for ``cluster``: with no health results every real
    server counts as healthy (``desired_table``'s warm-start rule), so the plan is what the
    file says; the drain state comes from the kernel alone (a busy draining dest waits until
    it is idle). The ``managed`` services the file no longer names are retired. Raises
    KernelError when the table cannot be read."""
    now = time.monotonic() if now is None else now
    desired = desired_table(cluster, {})
    return plan_pass(table, desired, {}, now, blind=False,
                     retired=retired_services(managed or {}, desired))


def service_names(cluster: Cluster) -> dict[ServiceKey, str]:
    """Each service's name in the cluster file, by key (kept with the managed set)."""
    return {s.key: s.name for s in cluster.services}


# The phase of each kind of op: services added or edited, then dests, then services deleted.
_PHASE: dict[type, int] = {AddService: 0, EditService: 0, AddDest: 1, EditDest: 1,
                           DrainDest: 1, DelDest: 1, DelService: 2}


def apply_ops(table: IpvsTable, ops: Sequence[Op], *, batch: int = BATCH,
              on_batch: Callable[[list[OpResult]], None] | None = None) -> list[OpResult]:
    """Apply planned ``ops`` by the refused-op rule (module docstring), in pipelined batches of
    ``batch``; ``on_batch`` sees each batch's results as they come. Returns every op's result,
    in the order applied (a phase's skipped ops first). Raises KernelError only when the
    exchange with the kernel fails (what was applied before stays applied; the next pass
    re-plans)."""
    phases: list[list[Op]] = [[], [], []]
    for op in ops:
        phases[_PHASE[type(op)]].append(op)
    results: list[OpResult] = []
    refused: dict[tuple[int, ServiceKey], Op] = {}  # (phase it blocks, service) -> refused op
    for phase, members in enumerate(phases):
        send = members
        if refused:
            send, skipped = [], []
            for op in members:
                service = op.key if isinstance(op, AddService | EditService | DelService) \
                    else op.service
                after = refused.get((phase, service))
                if after is None:
                    send.append(op)
                else:
                    skipped.append(OpResult(op, Outcome.SKIPPED, after=after))
            if skipped:
                results.extend(skipped)
                if on_batch is not None:
                    on_batch(skipped)
        for start in range(0, len(send), batch):
            chunk = send[start:start + batch]
            done = [OpResult(op, APPLIED) if not code else _failed(op, code, refused)
                    for op, code in zip(chunk, table.apply_batch(chunk), strict=True)]
            results.extend(done)
            if on_batch is not None:
                on_batch(done)
    return results


APPLIED = Outcome.APPLIED


def _failed(op: Op, code: int, refused: dict[tuple[int, ServiceKey], Op]) -> OpResult:
    """The result of an op the kernel answered with ``code``; a refusal that others depend on
    is noted in ``refused``."""
    if done_errno(op, code):
        return OpResult(op, Outcome.ALREADY, code)
    if isinstance(op, AddService):
        refused[(1, op.key)] = op  # its dests cannot be added
    elif isinstance(op, DelDest):
        refused.setdefault((2, op.service), op)  # it must not go with its service
    return OpResult(op, Outcome.REFUSED, code)


def count(results: Sequence[OpResult]) -> dict[str, int]:
    """How many results of each outcome: {"applied": n, "already": n, ...}."""
    out = {outcome.value: 0 for outcome in Outcome}
    for result in results:
        out[result.outcome.value] += 1
    return out


# ---------------------------------------------------------------------------------------------
# The daemon's dataplane
# ---------------------------------------------------------------------------------------------


@dataclass
class Dataplane:
    table: IpvsTable
    monotonic: Callable[[], float] = time.monotonic
    drain_state: dict[DrainKey, float] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    # Each service's last quorum verdict: quorum_hysteresis needs the previous pass's.
    quorum_held: dict[ServiceKey, bool] = field(default_factory=dict)
    # The services this director manages (retired when they leave the file); in memory
    # only unless the daemon gives it a state file and its ZooKeeper record.
    managed: ManagedBook = field(default_factory=ManagedBook)
    # The last pass's observation, with the kernel's traffic counters (the metrics read it);
    # None until a pass read the table.
    observed: ObservedTable | None = None

    def reconcile(self, cluster: Cluster, health: Mapping[HealthKey, Health], *,
                  epoch: int, role: str) -> dict[str, Any]:
        """One pass: observe, plan, apply (the refused-op rule above). Returns (and keeps) a
        summary for /status: wall, epoch, role, observed, planned, applied, errors (one line
        per refused or skipped op), services, retiring (the retired services the kernel still
        holds), the count of each outcome (already, refused, skipped), ops applied by kind
        ({"AddDest": n, ...}) and kernel_errors (refusals, a failed dump, refused timeouts).

        The managed set is recorded before any op is applied (director/managed.py)."""
        desired = desired_table(cluster, health, quorum_held=self.quorum_held)
        self.quorum_held = quorum_verdicts(desired)
        retired = self.managed.retired(desired)
        planned = plan_pass(self.table, desired, self.drain_state, self.monotonic(),
                            retired=retired, stats=True)
        self.observed = planned.observed
        if planned.observe_error is not None:
            log.error("cannot read the IPVS table: %s", planned.observe_error,
                      extra={"event": "ipvs_error", "epoch": epoch, "role": role})
        self.drain_state = planned.drain_state
        self.managed.update(desired, planned.observed, service_names(cluster))
        retiring = sorted(str(k) for k in retired
                          if planned.observed is not None and k in planned.observed)

        def report(batch: list[OpResult]) -> None:
            for result in batch:
                self._log(result, epoch, role)

        results = apply_ops(self.table, planned.ops, on_batch=report)
        counts = count(results)
        errors = [str(r) for r in results if r.outcome in (Outcome.REFUSED, Outcome.SKIPPED)]
        kinds: dict[str, int] = {}
        for result in results:
            if result.outcome is Outcome.APPLIED:
                kind = type(result.op).__name__
                kinds[kind] = kinds.get(kind, 0) + 1
        kernel_errors = counts[Outcome.REFUSED] + (planned.observe_error is not None)
        try:
            sent = sync_timeouts(self.table, cluster.ipvs_timeouts)
        except KernelError as exc:
            errors.append(str(exc))
            kernel_errors += 1
            log.error("IPVS refused the timeouts: %s", exc,
                      extra={"event": "ipvs_error", "epoch": epoch, "role": role})
        else:
            if sent is not None:
                log.info("ipvs timeouts %s", timeouts_text(sent),
                         extra={"event": "ipvs_timeouts", "epoch": epoch, "role": role})
        self.last = {
            "wall": round(time.time(), 6), "epoch": epoch, "role": role,
            "observed": planned.observed is not None, "planned": len(planned.ops),
            "applied": counts[Outcome.APPLIED],
            "errors": errors,
            "services": len(desired), "retiring": retiring,
            "already": counts[Outcome.ALREADY], "refused": counts[Outcome.REFUSED],
            "skipped": counts[Outcome.SKIPPED],
            "ops": kinds, "kernel_errors": kernel_errors,
        }
        return self.last

    def view(self, *, director: str, role: str, epoch: int, version: str,
             health: Mapping[HealthKey, Health]) -> dict[str, Any]:
        """What ``GET /ipvs`` serves (director/plan_view.py): the table observed now, the
        managed services, ``health`` and the last quorum verdicts, from which the next pass
        plans. Raises KernelError when the table cannot be read."""
        return view_document(director=director, role=role, epoch=epoch, version=version,
                             observed=self.table.observe(stats=False),
                             managed=self.managed.as_json(), health=health,
                             quorum_held=self.quorum_held)

    @staticmethod
    def _log(result: OpResult, epoch: int, role: str) -> None:
        extra = {"epoch": epoch, "role": role, "ipvs": result.as_dict()}
        if result.outcome is Outcome.REFUSED:
            log.error("IPVS refused %s", result, extra={
                "event": "ipvs_error", "op": str(result.op), "errno": result.errno, **extra})
        elif result.outcome is Outcome.SKIPPED:
            log.warning("ipvs %s", result, extra={"event": "ipvs_skipped", **extra})
        else:
            log.info("ipvs %s", result, extra={"event": "ipvs_op", **extra})

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
        self.managed.close()
        self.table.close()
