"""``lvsctl ipvs``: show and save the kernel's IPVS table, plan and apply a cluster file to it."""

from __future__ import annotations

import time
from typing import Any

import click

from lvsctl.core.config import Loaded, load_cluster
from lvsctl.core.errors import KernelError
from lvsctl.core.model import Family, ServiceKey
from lvsctl.director.ipvs import (
    IpvsTable,
    open_ipvs,
    save_text,
    sorted_dests,
    sorted_services,
)
from lvsctl.director.ipvs_timeouts import (
    observe_timeouts,
    sync_timeouts,
    timeouts_json,
    timeouts_text,
)
from lvsctl.director.reconcile import (
    FWD_NAMES,
    ObservedService,
    Op,
    desired_table,
    op_dict,
    plan,
    update_drain_state,
)
from lvsctl.output import echo_json, warn

APPLY_CHUNK = 256  # ops per pipelined batch; a progress line per op after each batch


@click.group("ipvs")
@click.option("--netns", metavar="NAME", default=None,
              help="Work on the IPVS table of this network namespace.")
@click.option("--fake-ipvs", "fake", metavar="FILE", default=None, hidden=True,
              help="Use the in-memory fake IPVS stored in FILE (tests only).")
@click.pass_context
def ipvs_group(ctx: click.Context, netns: str | None, fake: str | None) -> None:
    """Show the kernel's IPVS table; plan and apply a cluster file to it."""
    ctx.obj = {"netns": netns, "fake": fake}


def _open(ctx: click.Context) -> IpvsTable:
    opts = ctx.find_object(dict) or {}
    return open_ipvs(netns=opts.get("netns"), fake=opts.get("fake"))


def _service_label(key: ServiceKey) -> tuple[str, str]:
    if key.fwmark:
        return "FWM", f"{key.fwmark}{' IPv6' if key.family is Family.INET6 else ''}"
    assert key.protocol is not None and key.address is not None
    host = f"[{key.address}]" if key.family is Family.INET6 else key.address
    return key.protocol.name, f"{host}:{key.port}"


def _flags_text(service: ObservedService) -> str:
    spec = service.spec
    parts = []
    if spec.persistence:
        parts.append(f"persistent {spec.persistence}")
        if spec.netmask != service.key.family.host_prefix:
            parts.append(f"mask /{spec.netmask}")
    parts.extend(sorted(spec.flags))
    if service.pe_name:
        parts.append(f"pe {service.pe_name}")
    return " ".join(parts)


def show_lines(table: dict[ServiceKey, ObservedService]) -> list[str]:
    """The table in ipvsadm -Ln's layout (same columns, same order)."""
    lines = ["Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for service in sorted_services(table):
        proto, where = _service_label(service.key)
        head = f"{proto:<4} {where} {service.spec.scheduler}"
        flags = _flags_text(service)
        lines.append(f"{head} {flags}".rstrip())
        for dest in sorted_dests(service):
            host = (f"[{dest.key.address}]" if ":" in dest.key.address else dest.key.address)
            name = f"{host}:{dest.key.port}"
            lines.append(f"  -> {name:<28} {FWD_NAMES.get(dest.fwd, '?'):<7} {dest.weight:<6} "
                         f"{dest.active_conns:<10} {dest.inactive_conns:<10}".rstrip())
    return lines


def table_json(table: dict[ServiceKey, ObservedService]) -> list[dict[str, Any]]:
    out = []
    for service in sorted_services(table):
        proto = _service_label(service.key)[0]
        out.append({
            "service": str(service.key),
            "protocol": proto.lower(),
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
    with _closing(_open(ctx)) as ipvs:
        table = ipvs.observe()
        timeouts = observe_timeouts(ipvs) if as_json else None
    if as_json:
        echo_json({"services": table_json(table),
                   "timeouts": None if timeouts is None else timeouts_json(timeouts)})
        return
    for line in show_lines(table):
        click.echo(line)


@ipvs_group.command("save")
@click.pass_context
def save_command(ctx: click.Context) -> None:
    """Print the table as rules ipvsadm -R reads (the same text as ipvsadm -S -n)."""
    with _closing(_open(ctx)) as ipvs:
        click.echo(save_text(ipvs.observe()), nl=False)


def _load(file: str) -> Loaded:
    """The cluster file, checked before the kernel is asked anything."""
    loaded = load_cluster(file)
    for issue in loaded.warnings:
        warn(issue.line(loaded.source))
    return loaded


def _plan(ipvs: IpvsTable, loaded: Loaded) -> tuple[str, list[Op]]:
    # No health results here: every real server counts as healthy (desired_table's warm-start
    # rule), so the plan is what the file says.
    desired = desired_table(loaded.cluster, {})
    observed = ipvs.observe(stats=False)
    now = time.monotonic()
    drain = update_drain_state({}, desired, observed, now)
    return loaded.source, plan(desired, observed, drain, now)


@ipvs_group.command("plan")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the ops as JSON.")
@click.pass_context
def plan_command(ctx: click.Context, file: str, as_json: bool) -> None:
    """Show what `apply FILE` would change in the live table; change nothing."""
    loaded = _load(file)
    with _closing(_open(ctx)) as ipvs:
        source, ops = _plan(ipvs, loaded)
    if as_json:
        echo_json({"file": file, "ops": [op_dict(op) for op in ops]})
        return
    if not ops:
        click.echo(f"{source}: the IPVS table already matches; nothing to do")
        return
    for op in ops:
        click.echo(str(op))
    click.echo(f"{len(ops)} op(s)")


@ipvs_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def apply_command(ctx: click.Context, file: str) -> None:
    """Reconcile the live table with FILE once, printing each op as it is applied.

    Only the file's services are touched. A real server no longer in the file is drained
    (weight 0) and deleted once idle; run apply again later to finish a drain. The file's
    ipvs_timeouts are set too (like ipvsadm --set).
    """
    loaded = _load(file)
    with _closing(_open(ctx)) as ipvs:
        source, ops = _plan(ipvs, loaded)
        sent = sync_timeouts(ipvs, loaded.cluster.ipvs_timeouts)
        if sent is not None:
            click.echo(f"set IPVS timeouts {timeouts_text(sent)}")
        if not ops:
            click.echo(f"{source}: the IPVS table already matches; nothing to do")
            return
        for start in range(0, len(ops), APPLY_CHUNK):
            chunk = ops[start:start + APPLY_CHUNK]
            try:
                results = ipvs.apply_all(chunk)
            except KernelError as exc:
                # What went before the refused op in this batch was applied: say so.
                for op in chunk[:chunk.index(exc.op)] if exc.op in chunk else []:
                    click.echo(str(op))
                raise
            for op, changed in zip(chunk, results, strict=True):
                click.echo(f"{op}{'' if changed else ' (already so)'}")
        click.echo(f"{len(ops)} op(s) applied")


class _closing:
    def __init__(self, ipvs: IpvsTable) -> None:
        self.ipvs = ipvs

    def __enter__(self) -> IpvsTable:
        return self.ipvs

    def __exit__(self, *exc: object) -> None:
        self.ipvs.close()
