"""``lvsctl status``: the director pair as ZooKeeper sees it — who leads, with which epoch,
since when, the last transitions, per service the real servers and their health (as the
directors last reported them in their records), and the maintenance overrides (drains)."""

from __future__ import annotations

import time
from typing import Any

import click

from lvsctl.commands.common import (
    ZkOptions,
    describe_leader,
    echo_skipped,
    leader_name,
    skipped_json,
    zookeeper_options,
)
from lvsctl.core.records import Overrides, RecordError, Skipped
from lvsctl.core.zk import ClusterStore, Overview
from lvsctl.output import echo_json, echo_table


def to_json(cluster: str, seen: Overview, overrides: Overrides | None = None
            ) -> dict[str, Any]:
    directors = seen.directors.items
    return {
        "overrides": [o.to_json() for o in (overrides or Overrides()).items],
        "cluster": cluster,
        "leader": describe_leader(seen.leader, directors),
        "directors": {r.director: r.to_json() for r in directors},
        "transitions": [e.record.to_json() for e in seen.transitions.items],
        "skipped": skipped_json(seen.skipped),
    }


def _when(wall: float | None) -> str:
    if not wall:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


@click.command("status")
@zookeeper_options
@click.option("--transitions", "count", type=click.IntRange(0, 200), default=10,
              show_default=True, help="How many recent transitions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(zk: ZkOptions, count: int, as_json: bool) -> None:
    """Who is active, since when, recent transitions, and the services' real servers."""
    with zk.connect() as conn:
        store = ClusterStore(conn)
        seen = store.overview(count)
        bad: tuple[Skipped, ...] = ()
        try:
            overrides = store.overrides()
        except RecordError as exc:
            overrides, bad = Overrides(), (Skipped(conn.paths.overrides, str(exc)),)
    cluster = conn.paths.cluster
    if as_json:
        echo_json({**to_json(cluster, seen, overrides),
                   "skipped": skipped_json(seen.skipped + bad)})
        return
    records = seen.directors.items
    leader = describe_leader(seen.leader, records)
    click.echo(f"cluster {cluster}: "
               + (f"{leader_name(leader)} leads (epoch {leader['epoch']})" if leader
                  else "no director leads"))
    if leader and leader["also_active"]:
        click.echo(f"warning: {' and '.join(leader['also_active'])} also say ACTIVE")
    echo_table(["DIRECTOR", "ROLE", "EPOCH", "SINCE", "ZOOKEEPER", "VIPS", "CONFIG"], [
        [r.director, r.role, r.epoch, _when(r.since), r.zookeeper or "-",
         " ".join(r.vips) or "-", r.config.version or "-"] for r in records])
    # The services as the leader sees them (else as any director does).
    shown = next((r for r in records if leader and r.director == leader["director"]),
                 records[0] if records else None)
    if shown is not None and shown.services:
        click.echo("")
        echo_table(["SERVICE", "VIRTUAL", "REALSERVER", "ADDRESS", "WEIGHT", "HEALTH",
                    "OVERRIDE", "REASON"], [
            [svc.name, svc.service, rs.name, rs.address, rs.weight,
             "-" if rs.health is None else ("up" if rs.health.healthy else "down"),
             "-" if overrides.find(svc.name, rs.name) is None else "drain",
             "" if rs.health is None else rs.health.reason]
            for svc in shown.services for rs in svc.realservers])
    if overrides.items:
        click.echo("")
        echo_table(["DRAINED", "SERVICE", "SINCE", "BY", "REASON"], [
            [o.realserver, o.service or "(every)", _when(o.at), o.by, o.reason]
            for o in overrides.items])
    transitions = [e.record for e in seen.transitions.items]
    if transitions:
        click.echo("")
        echo_table(["WHEN", "DIRECTOR", "EVENT", "STATE/VIP", "EPOCH", "REASON"], [
            [_when(t.wall), t.director, t.event, t.state or t.vip or "",
             "" if t.epoch is None else t.epoch, t.reason] for t in transitions])
    echo_skipped(seen.skipped + bad)
