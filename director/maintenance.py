"""Maintenance overrides applied to the worker's view: the cluster and health results the
planner sees once drained real servers are held at weight 0, and the per-real-server rows
the director's API serves (``GET /realservers``: override, weights, connections).

Pure functions; the worker (director/worker.py) calls ``effective`` before every reconcile
pass, so a drain takes effect on the next pass and holds across restarts and failovers (the
overrides live in ZooKeeper, lvsctl.core.zk, and in the worker's local cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from lvsctl.core.model import Cluster, Health, HealthKey, RealServer, Service
from lvsctl.core.records import Override, Overrides, RecordError
from lvsctl.director.reconcile import ObservedTable, desired_table


def effective(cluster: Cluster, health: Mapping[HealthKey, Health],
              overrides: Overrides) -> tuple[Cluster, dict[HealthKey, Health]]:
    """The cluster and health the planner is given so that every drained real server has
    weight 0: it stays in IPVS with its connections and gets no new ones.

    Per real server of a service (truth table; "drained" = an override covers it there):

        drained  checked  health          -> planner sees
        no       any      any             -> unchanged
        yes      no       (ignored)       -> weight 0 (counted up for quorum: nothing checks it)
        yes      yes      unhealthy       -> unchanged (removed or weight 0 by on_failure)
        yes      yes      healthy/unknown -> down with on_failure weight0: weight 0, and not
                                             counted for quorum (it takes no new connections)

    Overrides naming services or real servers that are not in ``cluster`` change nothing.
    """
    if not overrides.items:
        return cluster, dict(health)
    out_health = dict(health)
    services = []
    for svc in cluster.services:
        changed = False
        rows: list[RealServer] = []
        for rs in svc.realservers:
            held = overrides.find(svc.name, rs.name)
            key = (svc.name, rs.name)
            seen = health.get(key)
            if held is None or (rs.checks and seen is not None and not seen.healthy):
                rows.append(rs)
                continue
            changed = True
            if not rs.checks:
                rows.append(replace(rs, weight=0))
                continue
            rows.append(replace(rs, on_failure="weight0"))
            out_health[key] = Health(False, None, drain_reason(held))
        services.append(replace(svc, realservers=tuple(rows)) if changed else svc)
    return replace(cluster, services=tuple(services)), out_health


class OverrideState:
    """The overrides a worker applies: the last good ones from ZooKeeper (at start, from its
    local cache: ZooKeeper may be unreachable), and why the last data was refused."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.current = Overrides()
        self.error = ""

    def take(self, data: bytes | None, where: str, *, cached: bool = False) -> bool:
        """Apply the znode's data (None: absent, no overrides); True when the overrides
        changed. Data that is not an Overrides record is refused (``error`` says why) and
        the last good ones stay, as with the config. What ZooKeeper gave is cached."""
        try:
            new = Overrides.from_bytes(data or b"", where)
        except RecordError as exc:
            self.error = str(exc)
            return False
        self.error = ""
        changed, self.current = new != self.current, new
        if not cached:
            with contextlib.suppress(OSError):
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                self.cache.write_bytes(new.to_bytes())
        return changed

    def load(self) -> bool:
        """Start from the cached overrides; True when there were some to apply."""
        try:
            data = self.cache.read_bytes()
        except OSError:
            return False
        return self.take(data, str(self.cache), cached=True)

    def names(self) -> str:
        """The drained servers as one line: ``web1, www/web2`` (or ``none``)."""
        return ", ".join(o.realserver if o.service is None else f"{o.service}/{o.realserver}"
                         for o in self.current.items) or "none"


def drain_reason(override: Override) -> str:
    return f"drained: {override.reason}" if override.reason else "drained"


def unknown_names(cluster: Cluster, overrides: Overrides) -> list[str]:
    """Overrides that name a real server (or a service of it) the cluster does not have."""
    out = []
    for o in overrides.items:
        services = [s for s in cluster.services if o.service in (None, s.name)]
        if not any(rs.name == o.realserver for s in services for rs in s.realservers):
            out.append(o.realserver if o.service is None else f"{o.service}/{o.realserver}")
    return out


def realserver_rows(cluster: Cluster, health: Mapping[HealthKey, Health],
                    overrides: Overrides, observed: ObservedTable | None,
                    quorum_held: Mapping[Any, bool] | None = None) -> list[dict[str, Any]]:
    """One row per real server of each service: its configured weight, the weight the
    director wants for it now (health and overrides applied), the kernel's weight and
    connections (None when ``observed`` is None or the kernel does not hold it), its health
    and its override."""
    eff_cluster, eff_health = effective(cluster, health, overrides)
    desired = desired_table(eff_cluster, eff_health, quorum_held=quorum_held)
    rows = []
    for svc in cluster.services:
        want = desired[svc.key].dests
        have = observed.get(svc.key) if observed is not None else None
        for rs in svc.realservers:
            rows.append(_row(svc, rs, health.get((svc.name, rs.name)),
                             overrides.find(svc.name, rs.name),
                             want.get(rs.key), have.dests.get(rs.key) if have else None,
                             observed is not None))
    return rows


def _row(svc: Service, rs: RealServer, seen: Health | None, held: Override | None,
         want: Any, have: Any, observed: bool) -> dict[str, Any]:
    return {
        "service": svc.name, "realserver": rs.name, "address": str(rs.key),
        "weight": rs.weight,
        "effective_weight": None if want is None else want.weight,
        "health": None if seen is None else {"healthy": seen.healthy, "weight": seen.weight,
                                             "reason": seen.reason},
        "override": None if held is None else held.to_json(),
        "observed": observed,
        "kernel_weight": None if have is None else have.weight,
        "active_conns": None if have is None else have.active_conns,
        "inactive_conns": None if have is None else have.inactive_conns,
    }
