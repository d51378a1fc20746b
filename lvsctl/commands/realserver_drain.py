"""``lvsctl realserver drain|enable|list``: maintenance overrides in ZooKeeper, and every real
server's health, override, weight and connections as the active director sees them.

A drain is an override in the cluster's store (lvsctl.core.zk, compare-and-set, the cluster's
ACL); both directors apply it on their next pass (weight 0: the server keeps its connections
and gets no new ones) and keep it across restarts and failovers until ``enable``. ``--wait``
then follows the active director's ``GET /realservers`` until the server's active connections
reach 0, so a rolling upgrade can be scripted::

    lvsctl realserver drain web1 --reason "kernel upgrade" --wait --timeout 600 && upgrade web1
    lvsctl realserver enable web1
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from lvsctl.commands.common import ZkOptions, zookeeper_options
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster
from lvsctl.core.records import MAX_OVERRIDE_REASON, MAX_OVERRIDE_WHO, Override, Overrides
from lvsctl.core.zk import ClusterConnection, ClusterStore, default_who
from lvsctl.director.maintenance import realserver_rows, unknown_names
from lvsctl.failover.access import api_url
from lvsctl.output import echo_json, echo_table, warn

API_TIMEOUT = 5.0
POLL_EVERY = 1.0
DEFAULT_WAIT = 3600.0


class DrainError(LvsctlError):
    """A drain, enable or wait that cannot be done as asked."""


def _cluster(store: ClusterStore) -> Cluster:
    """The cluster file ZooKeeper holds, validated. Raises LvsctlError."""
    current = store.config.current()
    if current is None:
        raise DrainError(f"cluster {store.paths.cluster} has no config in ZooKeeper: push one "
                         "with 'lvsctl config push'")
    return current.load().cluster


def _services_of(cluster: Cluster, name: str, service: str | None) -> list[str]:
    """The services ``name`` is drained in: ``service`` alone, or every one it is in.
    Raises DrainError (one line) when the cluster has no such real server or service."""
    having = [s.name for s in cluster.services if any(rs.name == name for rs in s.realservers)]
    if not having:
        raise DrainError(f"real server {name!r} is not in cluster {cluster.name} (its real "
                         f"servers: {', '.join(cluster.realserver_names()) or 'none'})")
    if service is None:
        return having
    if service not in {s.name for s in cluster.services}:
        raise DrainError(f"service {service!r} is not in cluster {cluster.name}")
    if service not in having:
        raise DrainError(f"real server {name!r} is not in service {service!r} (it is in "
                         f"{', '.join(having)})")
    return [service]


def _reason(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if len(value) > MAX_OVERRIDE_REASON:
        raise click.BadParameter(f"is {len(value)} characters; at most {MAX_OVERRIDE_REASON}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise click.BadParameter("holds a control character (a reason is one line of text)")
    return value


# -- the active director's view ----------------------------------------------------------------


def active_rows(conn: ClusterConnection, cluster: Cluster) -> tuple[str, dict[str, Any]] | None:
    """The leader's name and its ``GET /realservers``, or None when no director answers."""
    import requests

    store = ClusterStore(conn)
    leader = store.leader()
    if leader is None or leader.director is None:
        return None
    record = store.director(leader.director)
    if record is None or not record.api:
        return None
    try:
        address = cluster.director(leader.director).address
    except KeyError:
        address = None
    try:
        resp = requests.get(api_url(record.api, "/realservers", address), timeout=API_TIMEOUT)
        data = resp.json() if resp.ok else None
    except (requests.RequestException, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("realservers"), list):
        return None
    if data.get("director") != leader.director:
        return None  # the address reached another director (an API on localhost, say)
    return leader.director, data


def store_rows(conn: ClusterConnection, cluster: Cluster,
               overrides: Overrides) -> list[dict[str, Any]]:
    """What ZooKeeper alone knows: the file, the overrides, and the health the leader (or
    any director) last published; no kernel weights or connections."""
    from lvsctl.core.model import Health

    store = ClusterStore(conn)
    records = store.directors().items
    leader = store.leader()
    shown = next((r for r in records if leader and r.director == leader.director),
                 records[0] if records else None)
    health = {}
    if shown is not None:
        for svc in shown.services:
            for rs in svc.realservers:
                if rs.health is not None:
                    health[(svc.name, rs.name)] = Health(rs.health.healthy, rs.health.weight,
                                                         rs.health.reason)
    return realserver_rows(cluster, health, overrides, None)


def _conns(rows: Sequence[dict[str, Any]], name: str, services: Sequence[str]
           ) -> tuple[int, list[str], bool]:
    """Active connections of ``name`` in ``services`` (total, per service text), and whether
    every one of its dests there is at weight 0 in the kernel (or gone from it)."""
    total, parts, applied = 0, [], True
    for row in rows:
        if row.get("realserver") != name or row.get("service") not in services:
            continue
        active = row.get("active_conns") or 0
        total += active
        parts.append(f"{row['service']} {active}")
        if row.get("kernel_weight") not in (None, 0):
            applied = False
    return total, parts, applied


def wait_drained(conn: ClusterConnection, cluster: Cluster, name: str,
                 services: Sequence[str], timeout: float, echo: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> float:
    """Until the active director holds ``name`` at weight 0 in ``services`` with no active
    connection left; prints each change of the count. Returns the seconds waited. Raises
    DrainError after ``timeout``."""
    start = clock()
    last = ""
    while True:
        seen = active_rows(conn, cluster)
        if seen is None:
            line = "no director answers (its API): waiting"
            done = False
        else:
            director, data = seen
            total, parts, applied = _conns(data["realservers"], name, services)
            done = applied and total == 0
            line = (f"{name}: {total} active connection{'s' if total != 1 else ''} "
                    f"({', '.join(parts)}) on {director}"
                    + ("" if applied else ", drain not applied yet"))
        if line != last:
            echo(f"{time.strftime('%H:%M:%S')} {line}")
            last = line
        if done:
            return clock() - start
        if clock() - start >= timeout:
            raise DrainError(f"{name} still not drained after {timeout:g} s ({line}); the "
                             "drain stays: 'lvsctl realserver enable' ends it")
        sleep(POLL_EVERY)


# -- commands ----------------------------------------------------------------------------------


@click.command("drain")
@click.argument("name")
@click.option("--service", metavar="NAME", help="Only in this service (default: every one).")
@click.option("--reason", default="", callback=_reason, metavar="TEXT",
              help=f"Why, for status and list (at most {MAX_OVERRIDE_REASON} characters).")
@click.option("--wait", "wait", is_flag=True,
              help="Then wait until its active connections reach 0 (on the active director).")
@click.option("--timeout", type=click.FloatRange(0, 86400), default=DEFAULT_WAIT,
              show_default=True, metavar="SECONDS", help="With --wait: give up after this.")
@zookeeper_options
def drain_command(zk: ZkOptions, name: str, service: str | None, reason: str, wait: bool,
                  timeout: float) -> None:
    """Drain real server NAME: weight 0 on both directors (its connections stay, no new ones
    come) until 'lvsctl realserver enable NAME'; kept in ZooKeeper across restarts and
    failovers. Exit 1 if --wait times out."""
    with zk.connect() as conn:
        store = ClusterStore(conn)
        cluster = _cluster(store)
        services = _services_of(cluster, name, service)
        override = Override(name, service, reason, default_who()[:MAX_OVERRIDE_WHO],
                            round(time.time(), 3))
        store.update_overrides(lambda current: current.with_override(override))
        where = service or f"every service ({', '.join(services)})"
        click.echo(f"{name} drained in {where}" + (f": {reason}" if reason else ""))
        if wait:
            took = wait_drained(conn, cluster, name, services, timeout, click.echo)
            click.echo(f"{name} has no active connection left (after {took:.1f} s)")


@click.command("enable")
@click.argument("name")
@click.option("--service", metavar="NAME", help="Only its drain in this service.")
@zookeeper_options
def enable_command(zk: ZkOptions, name: str, service: str | None) -> None:
    """End real server NAME's drain (every one, or the one in --service)."""
    with zk.connect() as conn:
        store = ClusterStore(conn)
        cluster = _cluster(store)
        try:
            _services_of(cluster, name, service)
        except DrainError:
            # A drain left by a push that removed the server can still be ended.
            if not any(service in (None, o.service) for o in store.overrides().of(name)):
                raise
        found: list[Override] = []

        def change(current: Overrides) -> Overrides:
            mine = current.of(name)
            if service is not None and any(o.service is None for o in mine):
                raise DrainError(f"{name} is drained in every service: 'lvsctl realserver "
                                 f"enable {name}' (without --service) enables it")
            found[:] = [o for o in mine if service is None or o.service == service]
            return current.without(name, service)

        store.update_overrides(change)
        where = f" in {service}" if service else ""
        click.echo(f"{name} enabled{where}" if found else f"{name} was not drained{where}")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the real servers as JSON.")
@zookeeper_options
def list_command(zk: ZkOptions, as_json: bool) -> None:
    """Every real server: health, override, weights and connections, from the active
    director's API (from ZooKeeper alone, without kernel figures, when none answers)."""
    with zk.connect() as conn:
        store = ClusterStore(conn)
        cluster = _cluster(store)
        overrides = store.overrides()
        seen = active_rows(conn, cluster)
        if seen is not None:
            source, rows = seen[0], list(seen[1]["realservers"])
        else:
            source, rows = None, store_rows(conn, cluster, overrides)
    stale = unknown_names(cluster, overrides)
    if as_json:
        echo_json({"cluster": cluster.name, "director": source, "realservers": rows,
                   "stale_overrides": stale})
        return
    for name in stale:
        # Left by a push that removed the server: harmless, but an enable tidies it away.
        warn(f"a drain names {name}, which the cluster file no longer has")
    click.echo(f"cluster {cluster.name}: " + (f"as {source} (active) sees it" if source else
                                               "no director answers: ZooKeeper's view, no "
                                               "kernel figures"))
    echo_table(["SERVICE", "REALSERVER", "ADDRESS", "HEALTH", "OVERRIDE", "WEIGHT", "KERNEL",
                "ACTIVE", "INACTIVE"], [
        [r["service"], r["realserver"], r["address"], _health(r.get("health")),
         _override(r.get("override")), _weights(r), _dash(r.get("kernel_weight")),
         _dash(r.get("active_conns")), _dash(r.get("inactive_conns"))] for r in rows])


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _health(health: Any) -> str:
    if not isinstance(health, dict):
        return "-"
    return "up" if health.get("healthy") else "down"


def _override(override: Any) -> str:
    if not isinstance(override, dict):
        return "-"
    reason = override.get("reason") or ""
    return "drain" + (f" ({reason})" if reason else "")


def _weights(row: dict[str, Any]) -> str:
    """``configured`` or ``configured->effective`` when health or a drain changes it."""
    weight, eff = row.get("weight"), row.get("effective_weight")
    if eff == weight:
        return str(weight)
    return f"{weight}->{'absent' if eff is None else eff}"
