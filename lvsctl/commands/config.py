"""``lvsctl config``: check a cluster file, print its JSON Schema, keep it in ZooKeeper.

push validates a file and writes it as the cluster's next version (compare-and-set);
show, diff, history and rollback read and rewind what ZooKeeper holds (lvsctl.core.zk).
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

from lvsctl.commands.common import (
    ZkOptions,
    connect_timeout_option,
    insecure_option,
    zookeeper_options,
)
from lvsctl.commands.push_plan import echo_plan, plan_push
from lvsctl.core.config import load_cluster, parse_cluster, read_file_text
from lvsctl.core.errors import ConfigError, ZooKeeperError
from lvsctl.core.model import Cluster, Service
from lvsctl.core.records import RecordError
from lvsctl.core.schema import ClusterFile
from lvsctl.core.zk import (
    DEFAULT_KEEP,
    ClusterConnection,
    ConfigStore,
    ConfigVersion,
    PushResult,
    Target,
    check_push_size,
    open_cluster,
)
from lvsctl.output import echo_json, echo_table, warn


@click.group("config")
def config_group() -> None:
    """Check cluster files, show their schema, and keep them in ZooKeeper."""


def _check_label(service: Service) -> str:
    types = sorted({check.type for rs in service.realservers for check in rs.checks})
    return ",".join(types) or "-"


def summary(cluster: Cluster) -> dict[str, Any]:
    per_mode = Counter()  # type: Counter[str]
    for service in cluster.services:
        per_mode[service.forwarding.label] += len(service.realservers)
    return {
        "cluster": cluster.name,
        "directors": [d.name for d in cluster.directors],
        "vips": [
            {"address": v.address, "interface": v.interface, "inside": v.inside}
            for v in cluster.vips
        ],
        "services": [
            {
                "name": s.name,
                "virtual": str(s.key),
                "forwarding": s.forwarding.label,
                "scheduler": s.spec.scheduler,
                "realservers": len(s.realservers),
                "check": _check_label(s),
            }
            for s in cluster.services
        ],
        "realservers_per_mode": dict(sorted(per_mode.items())),
    }


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check_command(file: str, as_json: bool) -> None:
    """Validate FILE; print a summary, or every problem with its key path."""
    try:
        loaded = load_cluster(file)
    except ConfigError as exc:
        if as_json:
            echo_json({"ok": False, "file": file, "errors": [
                {"path": i.path, "message": i.message} for i in exc.issues
            ]})
        raise
    warnings = [w.line(loaded.source) for w in loaded.warnings]
    info = summary(loaded.cluster)
    if as_json:
        echo_json({"ok": True, "file": file, **info, "warnings": warnings})
        return
    for line in warnings:
        warn(line)
    cluster = loaded.cluster
    total = sum(len(s.realservers) for s in cluster.services)
    modes = ", ".join(f"{mode} {n}" for mode, n in info["realservers_per_mode"].items())
    click.echo(
        f"{loaded.source}: ok: cluster {cluster.name}, directors "
        f"{' and '.join(info['directors'])}, {len(cluster.vips)} VIPs, "
        f"{len(cluster.services)} services, {total} real servers ({modes})"
    )
    click.echo()
    echo_table(
        ["SERVICE", "VIRTUAL", "MODE", "SCHED", "REALSERVERS", "CHECK"],
        [
            [s["name"], s["virtual"], s["forwarding"], s["scheduler"], s["realservers"],
             s["check"]]
            for s in info["services"]
        ],
    )


@config_group.command("schema")
def schema_command() -> None:
    """Print the cluster file's JSON Schema."""
    click.echo(json.dumps(ClusterFile.model_json_schema(), indent=2))


# -- the cluster file in ZooKeeper ----------------------------------------------------------

_json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
_expect_option = click.option(
    "--expect-version", type=click.IntRange(0), metavar="N",
    help="Write only if the cluster is at version N now (0: nothing pushed yet).",
)


def _current(store: ConfigStore) -> ConfigVersion:
    current = store.current()
    if current is None:
        raise ZooKeeperError(
            f"nothing pushed yet for cluster {store.paths.cluster} "
            f"({store.paths.config}): lvsctl config push FILE")
    return current


def _report_push(result: PushResult, conn: ClusterConnection, as_json: bool,
                 extra: dict[str, Any] | None = None) -> None:
    made = result.version
    hosts, path = conn.target.hosts, conn.paths.config
    if as_json:
        echo_json({"changed": result.changed, "cluster": conn.paths.cluster,
                   "zookeeper": hosts, "znode": path, **made.meta(), **(extra or {})})
        return
    if not result.changed:
        click.echo(f"unchanged: version {made.version} already holds this text "
                   f"(sha256 {made.sha256[:12]})")
    elif made.rollback_of is not None:
        click.echo(f"rolled back: version {made.version} holds the text of version "
                   f"{made.rollback_of} (sha256 {made.sha256[:12]}) in {path}")
    else:
        click.echo(f"pushed {made.source} as version {made.version} of cluster "
                   f"{conn.paths.cluster} (sha256 {made.sha256[:12]}) to {hosts} {path}")


_replace_unreadable_option = click.option(
    "--replace-unreadable", is_flag=True,
    help="Overwrite a config znode that does not hold a readable lvsctl file (recorded in "
         "the new version's history entry).",
)


@config_group.command("push")
@click.argument("file", type=click.Path(dir_okay=False))
@_expect_option
@click.option("--keep", type=click.IntRange(1, 1000), default=DEFAULT_KEEP, show_default=True,
              metavar="N", help="How many versions the history keeps.")
@_replace_unreadable_option
@insecure_option
@connect_timeout_option
@click.option("--plan", "show_plan", is_flag=True,
              help="First print what the directors will change in IPVS (see diff --plan).")
@_json_option
def push_command(file: str, expect_version: int | None, keep: int, replace_unreadable: bool,
                 insecure: bool, connect_timeout: float, show_plan: bool, as_json: bool) -> None:
    """Validate FILE, then write it to the ZooKeeper its 'zookeeper' section names.

    The write is a compare-and-set: if another push lands first, this one fails and
    nothing is written. An invalid file, or one larger than a push can carry, never reaches
    ZooKeeper. With --plan the IPVS changes are planned (and printed) before the write.
    """
    text = read_file_text(file)
    check_push_size(len(text.encode()), file)  # before validating: a huge file is slow to
    loaded = parse_cluster(text, Path(file).name or file)  # judge; neither reaches ZooKeeper
    for issue in loaded.warnings:
        warn(issue.line(loaded.source))
    cluster = loaded.cluster
    target = Target(cluster.zookeeper, cluster.name, insecure,
                    base_dir=Path(file).resolve().parent)
    with open_cluster(target, connect_timeout=connect_timeout) as conn:
        if conn.credentials is None:
            warn(f"no ZooKeeper credentials (--insecure): {conn.paths.base} is open to "
                 "every ZooKeeper client")
        planned = plan_push(conn, cluster) if show_plan else None
        if planned is not None and not as_json:
            echo_plan(planned)
        store = ConfigStore(conn, keep=keep)
        result = store.push(loaded.text, expect_version, source=loaded.source,
                            replace_unreadable=replace_unreadable)
        _report_push(result, conn, as_json,
                     None if planned is None else {"plan": planned.as_json()})


@config_group.command("show")
@zookeeper_options
@click.option("--version", "version", type=click.IntRange(1), metavar="N",
              help="Show a kept older version instead of the current one.")
@_json_option
def show_command(zk: ZkOptions, version: int | None, as_json: bool) -> None:
    """Print the cluster file ZooKeeper holds (exactly as pushed)."""
    with zk.connect() as conn:
        store = ConfigStore(conn)
        shown = store.get(version) if version is not None else _current(store)
    if as_json:
        echo_json({**shown.meta(), "text": shown.text})
    else:
        click.echo(shown.text, nl=not shown.text.endswith("\n"))


@config_group.command("diff")
@click.argument("file", type=click.Path(dir_okay=False))
@zookeeper_options
@click.option("--exit-code", is_flag=True, help="Exit 1 when there are differences.")
@click.option("--plan", "show_plan", is_flag=True,
              help="Show what the directors would change in IPVS instead: planned against the "
                   "active director's table (its API), else the current version's.")
@_json_option
def diff_command(file: str, zk: ZkOptions, exit_code: bool, show_plan: bool,
                 as_json: bool) -> None:
    """Show how FILE differs from the cluster file ZooKeeper holds (a unified diff)."""
    if show_plan:
        _diff_plan(file, zk, exit_code, as_json)
        return
    text = read_file_text(file)
    with zk.connect() as conn:
        current = _current(ConfigStore(conn))
    lines = list(difflib.unified_diff(
        current.text.splitlines(keepends=True), text.splitlines(keepends=True),
        fromfile=f"zookeeper:{conn.paths.config}@v{current.version}", tofile=file,
    ))
    if as_json:
        echo_json({"version": current.version, "file": file, "identical": not lines,
                   "diff": "".join(lines)})
    elif lines:
        for line in lines:
            click.echo(line, nl=not line.endswith("\n"))
    else:
        click.echo(f"no differences: {file} equals version {current.version}")
    if lines and exit_code:
        raise SystemExit(1)


def _diff_plan(file: str, zk: ZkOptions, exit_code: bool, as_json: bool) -> None:
    loaded = load_cluster(file)
    for issue in loaded.warnings:
        warn(issue.line(loaded.source))
    with zk.connect() as conn:
        planned = plan_push(conn, loaded.cluster)
    if as_json:
        echo_json({"file": file, "plan": planned.as_json()})
    else:
        echo_plan(planned)
    if planned.ops and exit_code:
        raise SystemExit(1)


@config_group.command("history")
@zookeeper_options
@_json_option
def history_command(zk: ZkOptions, as_json: bool) -> None:
    """List the kept versions, newest first."""
    with zk.connect() as conn:
        store = ConfigStore(conn)
        try:
            current = store.current()
        except RecordError as exc:
            current = None
            warn(f"current config unreadable: {exc}")
        read = store.history_read()
        versions = read.items
    for skipped in read.skipped:
        warn(f"skipped an unreadable version: {skipped.reason}")
    if as_json:
        echo_json([{**v.meta(), "current": current is not None and v.version == current.version}
                   for v in versions])
        return
    if not versions:
        click.echo(f"no versions kept for cluster {conn.paths.cluster}")
        return
    rows = []
    for v in versions:
        notes = []
        if current is not None and v.version == current.version:
            notes.append("current")
        if v.rollback_of is not None:
            notes.append(f"rollback of {v.rollback_of}")
        if v.replaced is not None:
            notes.append("replaced an unreadable config")
        rows.append([v.version, v.pushed_at, v.pushed_by, v.source, v.sha256[:12],
                     ", ".join(notes)])
    echo_table(["VERSION", "PUSHED AT", "BY", "SOURCE", "SHA256", "NOTE"], rows)


@config_group.command("rollback")
@click.argument("version", type=click.IntRange(1))
@zookeeper_options
@_expect_option
@_replace_unreadable_option
@_json_option
def rollback_command(version: int, zk: ZkOptions, expect_version: int | None,
                     replace_unreadable: bool, as_json: bool) -> None:
    """Make a kept VERSION current again, as a new version (validated again first)."""
    with zk.connect() as conn:
        result = ConfigStore(conn).rollback(version, expect_version,
                                            replace_unreadable=replace_unreadable)
        _report_push(result, conn, as_json)


# `config import` lives in its own module: it shares nothing with the ZooKeeper commands.
from lvsctl.commands.config_import import import_group  # noqa: E402

config_group.add_command(import_group)
