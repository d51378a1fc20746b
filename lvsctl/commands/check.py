"""``lvsctl check run``: run a cluster file's health checks from this machine, before deploying.

Probes go out from here with the same checkers, hysteresis and one-probe-per-target scheduler
the directors use; nothing touches IPVS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import click
import uvloop

from lvsctl.core.config import load_cluster
from lvsctl.core.model import Cluster, join_host_port
from lvsctl.healthcheck.checkers import Checkers
from lvsctl.healthcheck.scheduler import HealthChange, Scheduler, TargetView
from lvsctl.output import echo_json, table, warn

HEADERS = ["SERVER", "SERVICES", "CHECK", "PROBE", "STATE", "LATENCY", "REASON"]


@click.group("check")
def check_group() -> None:
    """Try a cluster file's health checks from this machine."""


def records(cluster: Cluster, views: list[TargetView]) -> list[dict[str, Any]]:
    """One record per (real server, check): the shared probe's result under each name."""
    names = {
        (service.name, rs.name): rs for service in cluster.services for rs in service.realservers
    }
    out = []
    for view in views:
        servers: dict[str, list[str]] = {}
        for service, server in view.keys:
            servers.setdefault(server, []).append(service)
        for server, services in servers.items():
            rs = names[(services[0], server)]
            last = view.last
            out.append({
                "server": server,
                "address": rs.address,
                "services": services,
                "check": view.check.type,
                "probe": (view.check.address if view.check.type == "ping"  # ICMP has no port
                          else join_host_port(view.check.address, view.check.port)),
                "state": view.state.status.value,
                "healthy": None if view.state.health is None else view.state.health.healthy,
                "weight": view.state.weight,
                "latency_ms": None if last is None else round(last.latency * 1000, 2),
                "reason": view.state.reason if last is None else last.reason,
                "rounds": view.rounds,
            })
    out.sort(key=lambda r: (r["server"], r["check"], r["probe"]))
    return out


def _rows(recs: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [r["server"], ",".join(r["services"]), r["check"], r["probe"], r["state"],
         "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}ms", r["reason"]]
        for r in recs
    ]


async def _once(cluster: Cluster, services: list[str] | None) -> list[TargetView]:
    async with Checkers() as checkers:
        scheduler = Scheduler(cluster, checkers, services=services)
        return await scheduler.run_once()


async def _live(cluster: Cluster, services: list[str] | None, as_json: bool,
                refresh: float, duration: float | None) -> None:
    def on_change(change: HealthChange) -> None:
        if as_json:
            click.echo(json.dumps({
                "service": change.key[0], "server": change.key[1],
                "healthy": change.health.healthy, "weight": change.health.weight,
                "reason": change.health.reason,
                "previous": None if change.previous is None else change.previous.healthy,
            }))

    async with Checkers() as checkers:
        scheduler = Scheduler(cluster, checkers, services=services, on_change=on_change)
        async with scheduler:
            started = time.monotonic()
            tty = sys.stdout.isatty()
            while duration is None or time.monotonic() - started < duration:
                await asyncio.sleep(refresh)
                if as_json:
                    continue
                text = table(HEADERS, _rows(records(cluster, scheduler.targets())))
                dog = scheduler.watchdog()
                footer = (f"{dog.targets} probes, {dog.running} running, loop lag p99 "
                          f"{dog.loop_lag_p99 * 1000:.1f}ms, oldest round "
                          f"{dog.oldest_round_age:.1f}s ago (Ctrl-C to stop)")
                if tty:
                    click.clear()
                click.echo(f"{text}\n\n{footer}\n")


@check_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--service", "services", multiple=True, metavar="NAME",
              help="Only this service's checks (repeatable).")
@click.option("--once", is_flag=True, help="Probe every target once, print, exit.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: with --once one record per (server, check); otherwise one line per "
                   "health change.")
@click.option("--refresh", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between table redraws.")
@click.option("--duration", type=click.FloatRange(0.1), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C).")
def run_command(file: str, services: tuple[str, ...], once: bool, as_json: bool,
                refresh: float, duration: float | None) -> None:
    """Run FILE's health checks from this machine and show (server, check, state, latency,
    reason). Each distinct (address, port, check) is probed once, however many services
    share it."""
    loaded = load_cluster(file)
    cluster = loaded.cluster
    known = {s.name for s in cluster.services}
    for name in services:
        if name not in known:
            raise click.BadParameter(
                f"{name!r} is not a service of {file} (services: {', '.join(sorted(known))})",
                param_hint="--service",
            )
    only = list(services) or None
    if once:
        if not as_json:
            count = sum(len(s.realservers) for s in cluster.services
                             if only is None or s.name in only)
            click.echo(f"probing {count} real servers once...", err=True)
        views = uvloop.run(_once(cluster, only))
        recs = records(cluster, views)
        if as_json:
            echo_json(recs)
        else:
            click.echo(table(HEADERS, _rows(recs)))
        unchecked = [f"{s.name}/{rs.name}" for s in cluster.services for rs in s.realservers
                     if rs.check is None and (only is None or s.name in only)]
        if unchecked and not as_json:
            warn(f"no check (always healthy): {', '.join(unchecked)}")
        return
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_live(cluster, only, as_json, refresh, duration))

