"""What a director serves at ``GET /ipvs`` so ``config push --plan`` can plan as it would:
its observed IPVS table, the services it manages, its health results and quorum verdicts;
the JSON is written and read here only (read with types checked and size bounded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lvsctl.core.model import DestKey, Family, Health, HealthKey, ServiceKey, ServiceSpec
from lvsctl.core.records import Fields, ManagedService, RecordError, decode_json
from lvsctl.director.reconcile import ObservedDest, ObservedService, ObservedTable, service_order

# A table of 10,000 dests is about 1.5 MB of this JSON.
MAX_VIEW_BYTES = 64 * 1024 * 1024


def _key_json(key: ServiceKey) -> dict[str, Any]:
    return {"family": "ipv6" if key.family is Family.INET6 else "ipv4",
            "protocol": None if key.protocol is None else key.protocol.label,
            "address": key.address, "port": key.port, "fwmark": key.fwmark}


def observed_json(table: ObservedTable) -> list[dict[str, Any]]:
    """The observed table as JSON (what a plan needs of it: keys, specs, weights, conns)."""
    out = []
    for key in sorted(table, key=service_order):
        service = table[key]
        out.append({**_key_json(key), "scheduler": service.spec.scheduler,
                    "flags": sorted(service.spec.flags),
                    "persistence": service.spec.persistence, "netmask": service.spec.netmask,
                    "dests": [{"address": d.key.address, "port": d.key.port, "weight": d.weight,
                               "fwd": d.fwd, "active_conns": d.active_conns,
                               "inactive_conns": d.inactive_conns}
                              for d in service.dests.values()]})
    return out


def view_document(*, director: str, role: str, epoch: int, version: str,
                  observed: ObservedTable, managed: list[dict[str, object]],
                  health: Mapping[HealthKey, Health],
                  quorum_held: Mapping[ServiceKey, bool]) -> dict[str, Any]:
    """The /ipvs document."""
    return {
        "director": director, "role": role, "epoch": epoch, "config_version": version,
        "services": observed_json(observed), "managed": managed,
        "health": [{"service": s, "realserver": r, "healthy": h.healthy, "weight": h.weight}
                   for (s, r), h in sorted(health.items())],
        "quorum": [{**_key_json(k), "held": held} for k, held in quorum_held.items()],
    }


@dataclass(frozen=True)
class DirectorView:
    """A director's /ipvs document, decoded."""

    director: str
    role: str
    epoch: int
    config_version: str
    observed: dict[ServiceKey, ObservedService]
    managed: dict[ServiceKey, ManagedService]
    health: dict[HealthKey, Health]
    quorum_held: dict[ServiceKey, bool]


def _key(f: Fields) -> ServiceKey:
    # The managed entry's reader checks the key's parts; the drain timeout is not read here.
    return ManagedService.from_json({**f.raw, "drain_timeout": 0}, f.where).key


def _spec(f: Fields) -> ServiceSpec:
    scheduler = f.text("scheduler")
    if len(scheduler) > 16:
        raise RecordError(f"{f.where}.scheduler: longer than the kernel's 16 characters")
    return ServiceSpec(scheduler, frozenset(f.strings("flags")), f.integer("persistence", 0),
                       f.integer("netmask", 32))


def parse_view(data: bytes, where: str) -> DirectorView:
    """Decode a /ipvs document. Raises RecordError naming the key that is wrong."""
    f = Fields(decode_json(data, where, MAX_VIEW_BYTES), where)
    observed = {}
    for s in f.objects("services"):
        key = _key(s)
        dests = {}
        for d in s.objects("dests"):
            dkey = DestKey(d.text("address"), d.integer("port"))
            dests[dkey] = ObservedDest(dkey, d.integer("weight"), d.integer("fwd"),
                                       active_conns=d.integer("active_conns", 0),
                                       inactive_conns=d.integer("inactive_conns", 0))
        observed[key] = ObservedService(key, _spec(s), dests)
    managed = {m.key: m for m in (ManagedService.from_json(e.raw, e.where)
                                  for e in f.objects("managed"))}
    health = {(h.text("service"), h.text("realserver")):
              Health(h.boolean("healthy"), h.integer_or_none("weight"))
              for h in f.objects("health")}
    quorum = {_key(q): q.boolean("held") for q in f.objects("quorum")}
    return DirectorView(f.text("director"), f.text("role"), f.integer("epoch"),
                        f.text("config_version", ""), observed, managed, health, quorum)
