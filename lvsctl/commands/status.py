"""``lvsctl status``: the director pair as ZooKeeper sees it — who leads, with which epoch,
since when, the last transitions, and per service the real servers and their health (as the
directors last reported them under ``directors/<name>``)."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from kazoo.exceptions import NoNodeError

from lvsctl.commands.common import ZkOptions, zookeeper_options
from lvsctl.core.zk import ClusterConnection
from lvsctl.output import echo_json, echo_table


def _children(conn: ClusterConnection, path: str) -> list[str]:
    with conn.errors("listing", path):
        try:
            return sorted(conn.client.get_children(path))
        except NoNodeError:
            return []


def _json_at(conn: ClusterConnection, path: str) -> Any:
    with conn.errors("reading", path):
        try:
            data, _ = conn.client.get(path)
        except NoNodeError:
            return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def collect(conn: ClusterConnection, transitions: int = 10) -> dict[str, Any]:
    """Everything ``status`` prints, read from ZooKeeper."""
    paths = conn.paths
    queue = sorted((c for c in _children(conn, paths.election) if "__n_" in c),
                   key=lambda c: c.rsplit("_", 1)[1])
    leader = None
    if queue:
        info = _json_at(conn, f"{paths.election}/{queue[0]}") or {}
        leader = {"director": info.get("director"), "epoch": int(queue[0].rsplit("_", 1)[1])}
    directors = {}
    for name in _children(conn, paths.directors):
        st = _json_at(conn, paths.director(name))
        if isinstance(st, dict):
            directors[name] = st
    recent = []
    for child in _children(conn, paths.transitions)[-transitions:]:
        entry = _json_at(conn, f"{paths.transitions}/{child}")
        if isinstance(entry, dict):
            recent.append(entry)
    return {"cluster": conn.target.cluster, "leader": leader, "directors": directors,
            "transitions": recent}


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
        data = collect(conn, count)
    if as_json:
        echo_json(data)
        return
    leader = data["leader"]
    click.echo(f"cluster {data['cluster']}: "
               + (f"{leader['director']} leads (epoch {leader['epoch']})" if leader
                  else "no director leads"))
    rows = [[name, st.get("role"), st.get("epoch"), _when(st.get("since")),
             st.get("zookeeper"), " ".join(st.get("vips") or []) or "-",
             (st.get("config") or {}).get("version") or "-"]
            for name, st in sorted(data["directors"].items())]
    echo_table(["DIRECTOR", "ROLE", "EPOCH", "SINCE", "ZOOKEEPER", "VIPS", "CONFIG"], rows)
    active = next((st for st in data["directors"].values() if st.get("role") == "ACTIVE"),
                  next(iter(data["directors"].values()), None))
    if active and active.get("services"):
        click.echo("")
        svc_rows = []
        for svc in active["services"]:
            for rs in svc.get("realservers", []):
                health = rs.get("health")
                state = "-" if health is None else ("up" if health.get("healthy") else "down")
                svc_rows.append([svc["name"], svc["service"], rs["name"], rs["address"],
                                 rs.get("weight"), state, (health or {}).get("reason", "")])
        echo_table(["SERVICE", "VIRTUAL", "REALSERVER", "ADDRESS", "WEIGHT", "HEALTH",
                    "REASON"], svc_rows)
    if data["transitions"]:
        click.echo("")
        echo_table(["WHEN", "DIRECTOR", "EVENT", "STATE/VIP", "EPOCH", "REASON"], [
            [_when(t.get("wall")), t.get("director"), t.get("event"),
             t.get("state") or t.get("vip") or "", t.get("epoch", ""), t.get("reason", "")]
            for t in data["transitions"]])
