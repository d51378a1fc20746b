"""Pure reconciliation: the IPVS table lvsctl wants, the one the kernel has, and the ops between.

Nothing here touches the kernel or the clock: ``plan()`` takes the desired table, the observed
table (one dump, see ``director.ipvs``), the drain state and the current time, and returns the
ops that make the kernel's table match, in an order the kernel accepts (service-first adds,
dest-first deletes). ``desired_table()`` turns the cluster file plus health results into the
desired table.

Real-server lifecycle (DESIGN.md): absent -> active -> draining (weight 0) -> deleted. The drain
state is not trusted from memory alone: a dest the kernel holds at weight 0 that is not desired
is draining, so a restarted director picks up where the old one stopped.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from lvsctl.core.model import (
    Cluster,
    DestKey,
    DestSpec,
    Forwarding,
    Health,
    HealthKey,
    Protocol,
    Service,
    ServiceKey,
    ServiceSpec,
)

# ---------------------------------------------------------------------------------------------
# Tables: what the kernel holds (observed) and what lvsctl wants (desired)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """A service's or dest's traffic counters and rates, as the kernel keeps them."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(frozen=True)
class ObservedDest:
    """One destination as the kernel reports it, with its connection counters."""

    key: DestKey
    weight: int
    fwd: int  # IPVS fwd method number (Forwarding values, or 1/4 set by other tools)
    active_conns: int = 0
    inactive_conns: int = 0
    persist_conns: int = 0
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = 0  # 0 ipip, 1 gue, 2 gre (tunnel dests only)
    tun_port: int = 0
    tun_flags: int = 0
    stats: Stats = field(default_factory=Stats)

    @property
    def spec(self) -> DestSpec | None:
        """The dest's spec in model terms, or None when its fwd method is not one lvsctl sets."""
        try:
            return DestSpec(self.weight, Forwarding(self.fwd))
        except ValueError:
            return None

    @property
    def conns(self) -> int:
        """Connections that still use the dest: what a drain waits for."""
        return self.active_conns + self.inactive_conns


@dataclass(frozen=True)
class ObservedService:
    """One virtual service as the kernel reports it, with its dests keyed by address:port."""

    key: ServiceKey
    spec: ServiceSpec
    dests: Mapping[DestKey, ObservedDest] = field(default_factory=dict)
    pe_name: str = ""
    stats: Stats = field(default_factory=Stats)


ObservedTable = Mapping[ServiceKey, ObservedService]


@dataclass(frozen=True)
class DesiredService:
    """A service lvsctl manages: its spec, its dests with effective weights, its drain deadline."""

    key: ServiceKey
    spec: ServiceSpec
    dests: Mapping[DestKey, DestSpec]
    drain_timeout: float = 60.0
    quorum_held: bool = True  # this pass's quorum verdict: the next pass's last verdict


DesiredTable = Mapping[ServiceKey, DesiredService]

# (service, dest) -> when the dest was first seen draining (the caller's monotonic clock).
DrainKey = tuple[ServiceKey, DestKey]
DrainState = Mapping[DrainKey, float]


# ---------------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddService:
    key: ServiceKey
    spec: ServiceSpec

    def __str__(self) -> str:
        return f"add service {self.key} {spec_text(self.spec)}"


@dataclass(frozen=True)
class EditService:
    key: ServiceKey
    spec: ServiceSpec

    def __str__(self) -> str:
        return f"edit service {self.key} {spec_text(self.spec)}"


@dataclass(frozen=True)
class DelService:
    key: ServiceKey

    def __str__(self) -> str:
        return f"delete service {self.key}"


@dataclass(frozen=True)
class AddDest:
    service: ServiceKey
    key: DestKey
    spec: DestSpec

    def __str__(self) -> str:
        return f"add dest {self.service} -> {self.key} {dest_text(self.spec)}"


@dataclass(frozen=True)
class EditDest:
    service: ServiceKey
    key: DestKey
    spec: DestSpec

    def __str__(self) -> str:
        return f"edit dest {self.service} -> {self.key} {dest_text(self.spec)}"


@dataclass(frozen=True)
class DrainDest:
    """Set a dest that is no longer wanted to weight 0: it gets no new connections."""

    service: ServiceKey
    key: DestKey
    forwarding: Forwarding

    @property
    def spec(self) -> DestSpec:
        return DestSpec(0, self.forwarding)

    def __str__(self) -> str:
        return f"drain dest {self.service} -> {self.key} (weight 0)"


@dataclass(frozen=True)
class DelDest:
    service: ServiceKey
    key: DestKey

    def __str__(self) -> str:
        return f"delete dest {self.service} -> {self.key}"


Op = AddService | EditService | DelService | AddDest | EditDest | DrainDest | DelDest


def spec_text(spec: ServiceSpec) -> str:
    text = f"scheduler {spec.scheduler}"
    if spec.flags:
        text += f" flags {','.join(sorted(spec.flags))}"
    if spec.persistence:
        text += f" persistence {spec.persistence}s netmask /{spec.netmask}"
    return text


def dest_text(spec: DestSpec) -> str:
    return f"{spec.forwarding.label} weight {spec.weight}"


def op_dict(op: Op) -> dict[str, object]:
    """A JSON-ready description of an op (for ``--json`` output and logs)."""
    kind = {
        AddService: "add_service", EditService: "edit_service", DelService: "delete_service",
        AddDest: "add_dest", EditDest: "edit_dest", DrainDest: "drain_dest",
        DelDest: "delete_dest",
    }[type(op)]
    out: dict[str, object] = {"op": kind}
    if isinstance(op, AddService | EditService | DelService):
        out["service"] = str(op.key)
    else:
        out["service"] = str(op.service)
        out["dest"] = str(op.key)
    if isinstance(op, AddService | EditService):
        out.update(scheduler=op.spec.scheduler, flags=sorted(op.spec.flags),
                   persistence=op.spec.persistence, netmask=op.spec.netmask)
    if isinstance(op, AddDest | EditDest | DrainDest):
        out.update(forwarding=op.spec.forwarding.label, weight=op.spec.weight)
    out["text"] = str(op)
    return out


# ---------------------------------------------------------------------------------------------
# Desired table from the cluster and health
# ---------------------------------------------------------------------------------------------

SORRY_WEIGHT = 1


def desired_table(
    cluster: Cluster,
    health: Mapping[HealthKey, Health],
    *,
    unknown: Literal["healthy", "unhealthy"] = "healthy",
    quorum_held: Mapping[ServiceKey, bool] | None = None,
) -> dict[ServiceKey, DesiredService]:
    """The table lvsctl wants for ``cluster`` given the health results so far.

    Per real server (truth table; "unknown" = no Health entry yet):

        check   health      on_failure  -> dest
        none    (ignored)   any         -> configured weight
        yes     healthy     any         -> Health.weight if set (dynamic), else configured
        yes     unhealthy   remove      -> absent (drained if the kernel has it)
        yes     unhealthy   weight0     -> weight 0 (kept, gets no new connections)
        yes     unknown     any         -> as ``unknown`` says; "healthy" by default,
                                           "unhealthy" in an ``alpha`` service

    ``on_failure`` is the real server's own (inherited from its service unless it sets it).

    Unknown defaults to healthy for a warm start: a director that (re)starts adopts the
    kernel's table, and taking unknown as unhealthy would drain a working pool for the length
    of the checks' warmup; a dead server is taken out by its first failed checks instead.

    Quorum: when the healthy real servers do not make quorum (``Service.quorum_held``, with
    the last verdict from ``quorum_held``, the previous pass's ``DesiredService.quorum_held``)
    and the service has a sorry server, the sorry server is added (weight 1) next to whatever
    healthy servers remain.
    """
    held = quorum_held or {}
    return {s.key: _desired_service(s, health, unknown, held.get(s.key))
            for s in cluster.services}


def _desired_service(
    service: Service, health: Mapping[HealthKey, Health], unknown: str, was_held: bool | None
) -> DesiredService:
    dests: dict[DestKey, DestSpec] = {}
    healthy = 0
    for rs in service.realservers:
        result = health.get((service.name, rs.name))
        if rs.check is None:
            ok, weight = True, rs.weight
        elif result is None:
            ok, weight = unknown == "healthy" and not service.alpha, rs.weight
        else:
            ok = result.healthy
            weight = rs.weight if result.weight is None else result.weight
        if ok:
            healthy += 1
            dests[rs.key] = service.dest_spec(weight)
        elif rs.on_failure == "weight0":
            dests[rs.key] = service.dest_spec(0)
    sorry = service.sorry_server
    held = service.quorum_held(healthy, was_held)
    if sorry is not None and not held:
        dests.setdefault(sorry.key, service.dest_spec(SORRY_WEIGHT))
    return DesiredService(service.key, service.spec, dests, service.drain_timeout, held)


def quorum_verdicts(desired: DesiredTable) -> dict[ServiceKey, bool]:
    """Each service's quorum verdict of this pass, to pass as the next pass's ``quorum_held``."""
    return {key: service.quorum_held for key, service in desired.items()}


# ---------------------------------------------------------------------------------------------
# Drain state
# ---------------------------------------------------------------------------------------------


def draining(desired: DesiredTable, observed: ObservedTable,
             retired: Mapping[ServiceKey, float] | None = None) -> set[DrainKey]:
    """Dests the kernel holds at weight 0 that lvsctl no longer wants: they are draining."""
    out: set[DrainKey] = set()
    for skey in _scope(desired, observed, retired):
        want = desired[skey].dests if skey in desired else {}
        for dkey, dest in observed[skey].dests.items():
            if dest.weight == 0 and dkey not in want:
                out.add((skey, dkey))
    return out


def update_drain_state(
    drain_state: DrainState,
    desired: DesiredTable,
    observed: ObservedTable,
    now: float,
    retired: Mapping[ServiceKey, float] | None = None,
) -> dict[DrainKey, float]:
    """The drain state after this observation: each draining dest with when it began.

    A dest seen draining for the first time (set to weight 0 by the previous pass, or found so
    by a restarted director) starts its deadline now; dests no longer draining are dropped.
    """
    return {k: drain_state.get(k, now) for k in draining(desired, observed, retired)}


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------


def _packed(address: str) -> bytes:
    six = ":" in address
    return socket.inet_pton(socket.AF_INET6 if six else socket.AF_INET, address)


def service_order(key: ServiceKey) -> tuple[int, int, int, bytes, int]:
    """A total order on service keys (ServiceKey's own order breaks on protocol enums)."""
    address = _packed(key.address) if key.address is not None else b""
    protocol = key.protocol.value if key.protocol is not None else 0
    return (key.fwmark, int(key.family), protocol, address, key.port)


def dest_order(key: DestKey) -> tuple[bytes, int]:
    """Dests by address (IPv4 before IPv6: the length leads), then port."""
    packed = _packed(key.address)
    return (bytes([len(packed)]) + packed, key.port)


def _scope(desired: DesiredTable, observed: ObservedTable,
           retired: Mapping[ServiceKey, float] | None) -> list[ServiceKey]:
    """Observed services lvsctl manages; any other service in the kernel is left alone."""
    return [k for k in observed if k in desired or k in (retired or {})]


def kernel_spec(key: ServiceKey, spec: ServiceSpec) -> ServiceSpec:
    """``spec`` as the kernel will report it: without persistence the netmask means nothing
    and reads back as the host prefix, so it must not cause an EditService on every pass."""
    if spec.persistence == 0 and spec.netmask != key.family.host_prefix:
        return replace(spec, netmask=key.family.host_prefix)
    return spec


def plan(
    desired: DesiredTable,
    observed: ObservedTable | None,
    drain_state: DrainState,
    now: float,
    *,
    retired: Mapping[ServiceKey, float] | None = None,
) -> list[Op]:
    """The ops that turn ``observed`` into ``desired``; nothing for what already matches.

    ``observed`` is None when the dump failed: then only adds are planned (the kernel answers
    a duplicate add with EEXIST, which counts as done) and no edit or delete, since nothing is
    known about what is there. ``retired`` names services lvsctl managed before (e.g. under the
    previous version of the cluster file) that are no longer desired, each with its drain
    timeout: their dests are drained and deleted, then the service. Services in neither
    ``desired`` nor ``retired`` are never touched.

    A dest that is observed but not desired (truth table; conns = active + inactive):

        protocol  weight  conns  deadline passed  -> op
        udp       any     any    any              -> DelDest (datagrams have no connection)
        other     > 0     > 0    -                -> DrainDest (weight 0)
        other     any     0      any              -> DelDest
        other     0       > 0    no               -> nothing (still draining)
        other     0       > 0    yes              -> DelDest

    The deadline is ``drain_state[(service, dest)] + drain_timeout``; a dest not in the drain
    state started draining ``now``.
    """
    # Walk the tables unsorted and sort only the ops found: a no-op pass over 10,000 dests
    # must stay cheap (bench/reconcile.py), and ops are few.
    adds: list[tuple[tuple[object, ...], Op]] = []
    deletes: list[tuple[tuple[object, ...], Op]] = []
    complete: set[ServiceKey] = set()  # observed services holding no dest beyond the desired
    for skey, want in desired.items():
        have = observed.get(skey) if observed is not None else None
        spec = kernel_spec(skey, want.spec)
        if have is None:
            adds.append(((skey, 0, None), AddService(skey, spec)))
        elif have.spec != spec:
            adds.append(((skey, 0, None), EditService(skey, spec)))
        have_dests = have.dests if have is not None else {}
        found = 0
        for dkey, dspec in want.dests.items():
            dest = have_dests.get(dkey)
            if dest is None:
                adds.append(((skey, 1, dkey), AddDest(skey, dkey, dspec)))
                continue
            found += 1
            if dest.weight != dspec.weight or dest.fwd != _FWD_VALUE[dspec.forwarding]:
                adds.append(((skey, 1, dkey), EditDest(skey, dkey, dspec)))
        if found == len(have_dests):
            complete.add(skey)
    if observed is not None:
        for skey in _scope(desired, observed, retired):
            if skey in complete:
                continue
            have = observed[skey]
            want_dests = desired[skey].dests if skey in desired else {}
            timeout = desired[skey].drain_timeout if skey in desired else (retired or {})[skey]
            remaining = 0
            for dkey, dest in have.dests.items():
                if dkey in want_dests:
                    remaining += 1
                    continue
                op = _retire_dest(skey, dest, drain_state, now, timeout)
                if op is not None:
                    deletes.append(((0, skey, dkey), op))
                if not isinstance(op, DelDest):
                    remaining += 1
            if skey not in desired and remaining == 0:
                # Dest-first deletes: every DelDest/DrainDest before any DelService.
                deletes.append(((1, skey, None), DelService(skey)))
    return [op for _, op in sorted(adds, key=_op_order)] + \
        [op for _, op in sorted(deletes, key=_op_order)]


_FWD_VALUE = {f: f.value for f in Forwarding}


def _op_order(item: tuple[tuple[object, ...], Op]) -> tuple[object, ...]:
    """Sort key of a planned op: services in address order, a service before its dests."""
    return tuple(
        service_order(part) if isinstance(part, ServiceKey)
        else dest_order(part) if isinstance(part, DestKey)
        else (-1,) if part is None else part
        for part in item[0]
    )


def _retire_dest(
    skey: ServiceKey, dest: ObservedDest, drain_state: DrainState, now: float, timeout: float
) -> Op | None:
    if skey.protocol is Protocol.UDP or dest.conns == 0:
        return DelDest(skey, dest.key)
    if dest.weight != 0:
        # Keep the observed fwd method; a dest with one lvsctl never sets is simply deleted.
        if dest.spec is None:
            return DelDest(skey, dest.key)
        return DrainDest(skey, dest.key, dest.spec.forwarding)
    started = drain_state.get((skey, dest.key), now)
    if now - started >= timeout:
        return DelDest(skey, dest.key)
    return None
