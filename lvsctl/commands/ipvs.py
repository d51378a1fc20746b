"""``lvsctl ipvs``: show and save the kernel's IPVS table, plan and apply a cluster file to it.

``apply`` remembers the services it put in a table in a state file of its own
(``<state-dir>/<cluster>.ipvs[@NETNS].managed.json``, the director's format): a service that
a later file no longer names is retired (drained, then deleted) like a removed real server, and
a service it never applied is never touched. ``plan`` reads the same file.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click

from lvsctl.core.config import Loaded, load_cluster
from lvsctl.core.errors import KernelError
from lvsctl.core.model import Family, ServiceKey
from lvsctl.director.dataplane import (
    OpResult,
    Outcome,
    apply_ops,
    count,
    plan_cluster,
    service_names,
)
from lvsctl.director.ipvs_kernel import KernelIpvs
from lvsctl.director.ipvs_rules import FWD_NAMES
from lvsctl.director.ipvs_text import (
    listing_lines,
    save_text,
    service_label,
    sorted_dests,
    sorted_services,
)
from lvsctl.director.ipvs_timeouts import (
    observe_timeouts,
    sync_timeouts,
    timeouts_json,
    timeouts_text,
)
from lvsctl.director.managed import (
    next_managed,
    read_state_file,
    record_of,
    state_file,
    write_state_file,
)
from lvsctl.director.reconcile import ObservedService, desired_table, op_dict
from lvsctl.output import echo_json, warn


@click.group("ipvs")
@click.option("--netns", metavar="NAME", default=None,
              help="Work on the IPVS table of this network namespace.")
@click.pass_context
def ipvs_group(ctx: click.Context, netns: str | None) -> None:
    """Show the kernel's IPVS table; plan and apply a cluster file to it."""
    ctx.obj = {"netns": netns}


def _open(ctx: click.Context) -> KernelIpvs:
    opts = ctx.find_object(dict) or {}
    return KernelIpvs(netns=opts.get("netns"))


def table_json(table: dict[ServiceKey, ObservedService]) -> list[dict[str, Any]]:
    out = []
    for service in sorted_services(table):
        out.append({
            "service": str(service.key),
            "protocol": service_label(service.key)[0].lower(),
            "address": service.key.address,
            "port": service.key.port,
            "fwmark": service.key.fwmark,
            "family": "ipv6" if service.key.family is Family.INET6 else "ipv4",
            "scheduler": service.spec.scheduler,
            "flags": sorted(service.spec.flags),
            "persistence": service.spec.persistence,
            "netmask": service.spec.netmask,
            "pe": service.pe_name,
            "stats": vars(service.stats),
            "dests": [
                {
                    "address": d.key.address,
                    "port": d.key.port,
                    "forwarding": FWD_NAMES.get(d.fwd, str(d.fwd)).lower(),
                    "weight": d.weight,
                    "active_conns": d.active_conns,
                    "inactive_conns": d.inactive_conns,
                    "persist_conns": d.persist_conns,
                    "stats": vars(d.stats),
                }
                for d in sorted_dests(service)
            ],
        })
    return out


@ipvs_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_context
def show_command(ctx: click.Context, as_json: bool) -> None:
    """Show the live IPVS table with connection counts (like ipvsadm -Ln)."""
    with _open(ctx) as ipvs:
        table = ipvs.observe()
        timeouts = observe_timeouts(ipvs) if as_json else None
    if as_json:
        echo_json({"services": table_json(table),
                   "timeouts": None if timeouts is None else timeouts_json(timeouts)})
        return
    for line in listing_lines(table):
        click.echo(line)


@ipvs_group.command("save")
@click.pass_context
def save_command(ctx: click.Context) -> None:
    """Print the table as rules ipvsadm -R reads (the same text as ipvsadm -S -n)."""
    with _open(ctx) as ipvs:
        click.echo(save_text(ipvs.observe(stats=False)), nl=False)


def _load(file: str) -> Loaded:
    """The cluster file, checked before the kernel is asked anything."""
    loaded = load_cluster(file)
    for issue in loaded.warnings:
        warn(issue.line(loaded.source))
    return loaded


DEFAULT_STATE_DIR = "/var/lib/lvsctl"
_state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=DEFAULT_STATE_DIR,
    show_default=True, help="Where apply keeps the services it manages (retired when they "
                            "leave the file).")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _managed_file(ctx: click.Context, state_dir: str, cluster: str) -> Path:
    """The state file of the services ``apply`` manages in this table (one per namespace)."""
    netns = (ctx.find_object(dict) or {}).get("netns")
    if netns is None:
        return state_file(state_dir, cluster, "ipvs.managed")
    if not _NETNS_NAME.fullmatch(netns) or netns in (".", ".."):
        raise click.BadParameter(f"expected a namespace name ({_NETNS_NAME.pattern}), got "
                                 f"{netns!r}", param_hint="--netns")
    return state_file(state_dir, cluster, f"ipvs@{netns}.managed")


@ipvs_group.command("plan")
@click.argument("file", type=click.Path(dir_okay=False))
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the ops as JSON.")
@click.pass_context
def plan_command(ctx: click.Context, file: str, state_dir: str, as_json: bool) -> None:
    """Show what `apply FILE` would change in the live table; change nothing."""
    loaded = _load(file)
    managed = read_state_file(_managed_file(ctx, state_dir, loaded.cluster.name))
    with _open(ctx) as ipvs:
        ops = plan_cluster(ipvs, loaded.cluster, managed=managed).ops
    if as_json:
        echo_json({"file": file, "ops": [op_dict(op) for op in ops]})
        return
    if not ops:
        click.echo(f"{loaded.source}: the IPVS table already matches; nothing to do")
        return
    for op in ops:
        click.echo(str(op))
    click.echo(f"{len(ops)} op(s)")


@ipvs_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@_state_dir_option
@click.option("--json", "as_json", is_flag=True,
              help="Print each op's outcome as JSON at the end (progress goes to stderr).")
@click.pass_context
def apply_command(ctx: click.Context, file: str, state_dir: str, as_json: bool) -> None:
    """Reconcile the live table with FILE once, printing each op as it is applied.

    Only the file's services, and those an earlier apply made that the file no longer names,
    are touched. A real server no longer in the file, and every real server of such a retired
    service, is drained (weight 0) and deleted once idle, then the retired service; run apply
    again later to finish a drain. The services apply manages are kept in
    STATE_DIR/CLUSTER.ipvs.managed.json, written before the table is changed. An op the
    kernel refuses is printed with its reason and the others go on, except those that depend
    on it (the real servers of a service that could not be added), which are skipped; then
    apply exits 1. The file's ipvs_timeouts are set too (like ipvsadm --set).
    """
    loaded = _load(file)
    path = _managed_file(ctx, state_dir, loaded.cluster.name)
    managed = read_state_file(path)

    def progress(batch: list[OpResult]) -> None:
        for result in batch:
            failed = result.outcome in (Outcome.REFUSED, Outcome.SKIPPED)
            click.echo(str(result), err=as_json or failed)

    with _open(ctx) as ipvs:
        sent = sync_timeouts(ipvs, loaded.cluster.ipvs_timeouts)
        if sent is not None:
            click.echo(f"set IPVS timeouts {timeouts_text(sent)}", err=as_json)
        planned = plan_cluster(ipvs, loaded.cluster, managed=managed)
        ops = planned.ops
        after = next_managed(managed, desired_table(loaded.cluster, {}), planned.observed,
                             service_names(loaded.cluster))
        if after != managed:  # before the table changes: a service added is never forgotten
            write_state_file(path, record_of("", after, time.time()))
        results = apply_ops(ipvs, ops, on_batch=progress) if ops else []
    counts = count(results)
    failed = counts[Outcome.REFUSED] + counts[Outcome.SKIPPED]
    if as_json:
        echo_json({"file": file, **counts, "results": [r.as_dict() for r in results]})
    elif not ops:
        click.echo(f"{loaded.source}: the IPVS table already matches; nothing to do")
    elif not failed:
        click.echo(f"{len(ops)} op(s) applied")
    if failed:
        raise KernelError(f"{loaded.source}: {counts[Outcome.REFUSED]} op(s) refused by the "
                          f"kernel and {counts[Outcome.SKIPPED]} skipped with them, of "
                          f"{len(ops)}; the rest applied")
