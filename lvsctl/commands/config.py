"""``lvsctl config``: check a cluster file, print its JSON Schema."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click

from lvsctl.config import load_cluster
from lvsctl.errors import ConfigError
from lvsctl.model import Cluster, Service
from lvsctl.output import echo_json, echo_table, warn
from lvsctl.schema import ClusterFile


@click.group("config")
def config_group() -> None:
    """Check cluster files and show their schema."""


def _check_label(service: Service) -> str:
    types = sorted({rs.check.type for rs in service.realservers if rs.check is not None})
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
