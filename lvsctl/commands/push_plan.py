"""``config push --plan`` and ``config diff --plan``: what the directors will change in IPVS for
a cluster file, by the planner the directors run (director/reconcile.py), against the active
director's table as its API serves it (``GET /ipvs``: observed table, managed services, health),
or, when no director answers, against the desired table of the version ZooKeeper holds now
(every real server counted healthy, connections unknown: a removed TCP real server is shown
drained). The output names which one it used.
"""

from __future__ import annotations

import http.client
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

import click

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster, DestKey, Protocol, ServiceKey
from lvsctl.core.records import ManagedService, Overrides
from lvsctl.core.zk import ClusterConnection, ClusterStore
from lvsctl.director.maintenance import effective
from lvsctl.director.managed import retired_services
from lvsctl.director.plan_view import MAX_VIEW_BYTES, DirectorView, parse_view
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DesiredTable,
    DrainDest,
    EditDest,
    EditService,
    ObservedDest,
    ObservedService,
    ObservedTable,
    Op,
    desired_table,
    dest_text,
    op_dict,
    plan,
    spec_text,
)
from lvsctl.output import echo_table

API_TIMEOUT = 5.0


@dataclass(frozen=True)
class PushPlan:
    """The ops, what they were planned against (``basis``), and the names to show."""

    basis: dict[str, Any]
    ops: list[Op]
    observed: ObservedTable
    names: dict[ServiceKey, str] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        return [[*_row(op, self.observed), self.names.get(_service(op), "")] for op in self.ops]

    def as_json(self) -> dict[str, Any]:
        return {"basis": self.basis, "ops": [
            {**op_dict(op), "name": self.names.get(_service(op), ""), "change": row[3]}
            for op, row in zip(self.ops, self.rows(), strict=True)]}

    def basis_text(self) -> str:
        b = self.basis
        if b["kind"] == "director":
            return (f"against director {b['director']}'s IPVS table ({b['role']}, epoch "
                    f"{b['epoch']}, read from {b['api']})")
        return (f"against the desired table of version {b['version']} (no director answered: "
                f"{b['why']})")


def plan_push(conn: ClusterConnection, cluster: Cluster) -> PushPlan:
    """Plan ``cluster`` against the active director's table, else the current version's
    desired table. Raises LvsctlError only when neither can be read."""
    store = ClusterStore(conn)
    overrides = store.overrides()
    try:
        view, api = _active_view(store, cluster)
    except LvsctlError as exc:
        return _against_version(store, cluster, overrides, str(exc))
    # Drained real servers are held at weight 0 exactly as the directors hold them.
    held, health = effective(cluster, view.health, overrides)
    desired = desired_table(held, health, quorum_held=view.quorum_held)
    ops = plan(desired, view.observed, {}, time.monotonic(),
               retired=retired_services(view.managed, desired))
    basis = {"kind": "director", "director": view.director, "role": view.role,
             "epoch": view.epoch, "api": api, "config_version": view.config_version}
    return PushPlan(basis, ops, view.observed, _names(cluster, view.managed))


def echo_plan(planned: PushPlan) -> None:
    """The plan as a table, with the basis and a count."""
    click.echo(f"IPVS plan {planned.basis_text()}:")
    if not planned.ops:
        click.echo("nothing to change")
        return
    echo_table(["OP", "SERVICE", "REALSERVER", "CHANGE", "NAME"], planned.rows())
    click.echo(f"{len(planned.ops)} op(s)")


# -- the bases ------------------------------------------------------------------------------


def _active_view(store: ClusterStore, cluster: Cluster) -> tuple[DirectorView, str]:
    leader = store.leader()
    if leader is None or leader.director is None:
        raise LvsctlError("no director leads")
    record = store.director(leader.director)
    if record is None or not record.api:
        raise LvsctlError(f"director {leader.director} publishes no API address")
    host, _, port = record.api.rpartition(":")
    host = host.strip("[]")
    if _unspecified(host):
        # It listens everywhere: reach it at its own address from the cluster file.
        try:
            host = cluster.director(leader.director).address
        except KeyError:
            host = "127.0.0.1"
    api = f"{host}:{port}"
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=API_TIMEOUT)
        try:
            conn.request("GET", "/ipvs")
            resp = conn.getresponse()
            data = resp.read(MAX_VIEW_BYTES + 1)
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise LvsctlError(f"director {leader.director}'s API at {api}: {exc}") from None
    if resp.status != 200:
        raise LvsctlError(f"director {leader.director}'s API at {api} answered {resp.status}: "
                          f"{data[:200].decode(errors='replace').strip()}")
    view = parse_view(data, f"http://{api}/ipvs")
    if view.director != leader.director:  # e.g. a loopback address reached another director
        raise LvsctlError(f"the API at {api} is director {view.director}'s, not the active "
                          f"{leader.director}'s")
    return view, api


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: reached as it is


def _against_version(store: ClusterStore, cluster: Cluster, overrides: Overrides,
                     why: str) -> PushPlan:
    current = store.config.current()
    if current is None:
        observed: dict[ServiceKey, ObservedService] = {}
        managed: dict[ServiceKey, ManagedService] = {}
        version = 0
    else:
        before = current.load().cluster
        observed = _as_observed(desired_table(*effective(before, {}, overrides)))
        managed = {s.key: ManagedService(s.key, s.name, s.drain_timeout)
                   for s in before.services}
        version = current.version
    desired = desired_table(*effective(cluster, {}, overrides))
    ops = plan(desired, observed, {}, time.monotonic(),
               retired=retired_services(managed, desired))
    return PushPlan({"kind": "version", "version": version, "why": why}, ops, observed,
                    _names(cluster, managed))


def _as_observed(desired: DesiredTable) -> dict[ServiceKey, ObservedService]:
    """A desired table as the kernel would list it once applied. Connections are unknown: a
    TCP or SCTP dest counts as busy, so removing it plans a drain (UDP is deleted at once)."""
    out = {}
    for key, want in desired.items():
        busy = 0 if key.protocol is Protocol.UDP else 1
        out[key] = ObservedService(key, want.spec, {
            d: ObservedDest(d, spec.weight, spec.forwarding.value, active_conns=busy)
            for d, spec in want.dests.items()})
    return out


def _names(cluster: Cluster, managed: dict[ServiceKey, ManagedService]) -> dict[ServiceKey, str]:
    return {**{k: m.name for k, m in managed.items()}, **{s.key: s.name for s in cluster.services}}


# -- showing an op --------------------------------------------------------------------------


def _service(op: Op) -> ServiceKey:
    return op.key if isinstance(op, AddService | EditService | DelService) else op.service


def _row(op: Op, observed: ObservedTable) -> list[str]:
    """OP, SERVICE, REALSERVER, CHANGE (what it was -> what it becomes)."""
    service = str(_service(op))
    if isinstance(op, AddService):
        return ["add", service, "-", spec_text(op.spec)]
    if isinstance(op, EditService):
        have = observed.get(op.key)
        was = spec_text(have.spec) if have is not None else "?"
        return ["edit", service, "-", f"{was} -> {spec_text(op.spec)}"]
    if isinstance(op, DelService):
        return ["delete", service, "-", "retired: left the file"]
    dest = _observed_dest(observed, op.service, op.key)
    if isinstance(op, AddDest):
        return ["add", service, str(op.key), dest_text(op.spec)]
    was = "?" if dest is None else (dest_text(dest.spec) if dest.spec is not None
                                    else f"fwd {dest.fwd} weight {dest.weight}")
    if isinstance(op, EditDest):
        return ["edit", service, str(op.key), f"{was} -> {dest_text(op.spec)}"]
    if isinstance(op, DrainDest):
        return ["drain", service, str(op.key), f"{was} -> weight 0, deleted once idle"]
    assert isinstance(op, DelDest)
    return ["delete", service, str(op.key), was]


def _observed_dest(observed: ObservedTable, service: ServiceKey,
                   key: DestKey) -> ObservedDest | None:
    have = observed.get(service)
    return None if have is None else have.dests.get(key)
