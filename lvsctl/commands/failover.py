"""``lvsctl failover``: rehearse director failures (drill) and show who leads (status).

drill causes one failure per round through the directors' API, measures the takeover and
what a client saw, and judges it (``lvsctl lab`` drives the same drills with its own hands on
each director's host: failover/drill.py ``Lab``); status reads the pair's state and last
transitions from ZooKeeper.
"""

from __future__ import annotations

from datetime import UTC, datetime
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
from lvsctl.core.errors import ZooKeeperError
from lvsctl.core.node import load_node
from lvsctl.core.zk import ClusterStore
from lvsctl.failover.access import ClusterView, ZkDirectors, read_token, timeline_record
from lvsctl.failover.drill import Drill, Expected
from lvsctl.failover.probe import Target
from lvsctl.failover.report import SUMMARY_HEADERS, progress_line, summary_rows, write_html
from lvsctl.failover.timeline import KINDS
from lvsctl.output import echo_json, echo_table


@click.group("failover")
def failover_group() -> None:
    """Rehearse director failovers and show the pair's leadership."""


def _token_file(zk: ZkOptions, token: str | None) -> str | None:
    if token is not None:
        return token
    if zk.node is not None:
        return load_node(zk.node).api.token_file
    return None


def _probe(value: str | None) -> Target | None:
    return None if value is None else Target.parse(value)


def _when(wall: float | None) -> str:
    if not wall:
        return "-"
    return datetime.fromtimestamp(float(wall), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


@failover_group.command("drill")
@click.option("--kind", required=True, type=click.Choice(KINDS), help="The failure to cause.")
@click.option("--rounds", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--probe", "probe_url", metavar="URL|tcp://VIP:PORT",
              help="Probe the service every 20 ms as a client would (http://... or tcp://...).")
@click.option("--token", type=click.Path(dir_okay=False), metavar="FILE",
              help="The directors' API token file [default: the node file's api.token].")
@click.option("--wait", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              metavar="SECONDS", help="Longest wait for a takeover or for the pair to recover.")
@click.option("--hold", type=click.FloatRange(0.1, 600), default=None, metavar="SECONDS",
              help="How long a freeze or partition lasts [default: two session timeouts].")
@click.option("--max-outage", type=click.FloatRange(0, 600), default=None, metavar="SECONDS",
              help="Fail a round whose client outage is longer than this.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write an HTML page with a timeline of every round.")
@zookeeper_options
def drill_command(zk: ZkOptions, kind: str, rounds: int, probe_url: str | None,
                  token: str | None, wait: float, hold: float | None,
                  max_outage: float | None, as_json: bool, report_file: str | None) -> None:
    """Cause a failure of KIND on the active director, ROUNDS times, and judge each takeover.

    Before each round the pair must be healthy (two directors, one active holding every VIP,
    both knowing every real server); the drill refuses otherwise and says why. Exit status:
    0 every round passed, 1 a round failed, 3 refused.
    """
    target = _probe(probe_url)
    token_file = _token_file(zk, token)
    secret = read_token(token_file) if token_file else None
    with zk.connect() as conn:
        current = ClusterStore(conn).config.current()
        if current is None:
            raise ZooKeeperError(f"nothing pushed yet for cluster {conn.paths.cluster}: "
                                 "lvsctl config push FILE")
        cluster = current.load().cluster
        directors = ZkDirectors(ClusterView(conn), secret,
                                addresses={d.name: d.address for d in cluster.directors})
        rounds_done: list[Any] = []

        def progress(line: str) -> None:
            click.echo(line, err=as_json)

        def finished(result: Any) -> None:
            rounds_done.append(result)
            click.echo(progress_line(result, rounds), err=as_json)

        drill = Drill(
            directors=directors, expected=Expected.from_cluster(cluster), kind=kind,
            # From a shell every failure goes through the directors' own API; the kinds that
            # need hands on a director's host (partitions) run in the lab (lvsctl lab).
            rounds=rounds, cluster=cluster.name, lab=None, probe=target, wait=wait,
            hold=hold, max_outage=max_outage, on_round=finished, on_progress=progress,
        )
        report = drill.run()
    if report_file is not None:
        write_html(report_file, report)
    if as_json:
        echo_json(report.to_json())
    else:
        echo_table(SUMMARY_HEADERS, summary_rows(report.results))
        if report.refused:
            click.echo(f"stopped {report.refused}")
        click.echo(f"{kind}: {sum(r.passed for r in report.results)}/{rounds} rounds passed")
    if report_file is not None and not as_json:
        click.echo(f"report written to {report_file}")
    if not report.passed:
        click.get_current_context().exit(1)


@failover_group.command("status")
@click.option("--last", type=click.IntRange(1, 200), default=10, show_default=True,
              help="How many recent transitions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@zookeeper_options
def status_command(zk: ZkOptions, last: int, as_json: bool) -> None:
    """The active director, its epoch and since when, and the last transitions (ZooKeeper)."""
    with zk.connect() as conn:
        seen = ClusterStore(conn).overview(last)
    records = seen.directors.items
    leader = describe_leader(seen.leader, records)
    transitions = [timeline_record(e.record) for e in seen.transitions.items]
    data: dict[str, Any] = {
        "cluster": conn.paths.cluster,
        "active": leader["director"] if leader else None,
        "epoch": leader["epoch"] if leader else None,
        "since": leader["since"] if leader else None,
        "leader": leader,
        "directors": [{"director": r.director, "role": r.role, "epoch": r.epoch,
                       "since": r.since, "vips": list(r.vips), "zookeeper": r.zookeeper,
                       "api": r.api} for r in records],
        "election": [{"znode": e.znode, "epoch": e.epoch} for e in seen.queue],
        "transitions": [r.to_json() for r in transitions],
        "skipped": skipped_json(seen.skipped),
    }
    if as_json:
        echo_json(data)
        return
    if leader is None:
        click.echo("active: none")
    else:
        click.echo(f"active: {leader_name(leader)} epoch {leader['epoch']} since "
                   f"{_when(leader['since'])}")
        if leader["also_active"]:
            click.echo(f"warning: {' and '.join(leader['also_active'])} also say ACTIVE")
    click.echo("")
    echo_table(["DIRECTOR", "ROLE", "EPOCH", "SINCE", "VIPS", "ZOOKEEPER"], [
        [r.director, r.role, r.epoch, _when(r.since), ",".join(r.vips) or "-",
         r.zookeeper or "-"] for r in records] or [["-", "no director published", "", "", "",
                                                    ""]])
    click.echo("")
    echo_table(["WHEN", "DIRECTOR", "EVENT", "STATE", "EPOCH", "VIP", "REASON"], [
        [_when(r.wall), r.director, r.event, r.state or "", r.epoch if r.epoch is not None
         else "", r.vip or "", r.reason] for r in transitions])
    echo_skipped(seen.skipped)
