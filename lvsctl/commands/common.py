"""Options shared by every command that talks to a cluster's ZooKeeper, and who leads as
every command shows it.

``@zookeeper_options`` adds ``--node FILE`` (default /etc/lvsctl/node.yaml) or
``--zookeeper HOST:PORT[,..] --cluster NAME [--root PATH]``, plus ``--auth FILE``,
``--insecure`` and ``--connect-timeout``, and passes the command one ``zk: ZkOptions``::

    @zookeeper_options
    def status_command(zk: ZkOptions, as_json: bool) -> None:
        with zk.connect() as conn:
            ...
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from lvsctl.core import schema
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.node import DEFAULT_NODE_FILE, load_node
from lvsctl.core.records import DirectorRecord, Skipped
from lvsctl.core.zk import (
    DEFAULT_CONNECT_TIMEOUT,
    ClusterConnection,
    Leader,
    Target,
    open_cluster,
)
from lvsctl.output import warn

F = TypeVar("F", bound=Callable[..., Any])


def _hosts(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    hosts = tuple(h.strip() for h in value.split(",") if h.strip())
    for host in hosts:
        try:
            schema._hostport(host)
        except ValueError:
            raise click.BadParameter(f"{host!r} is not HOST:PORT") from None
    if not hosts:
        raise click.BadParameter("expected HOST:PORT[,HOST:PORT...]")
    return hosts


def _name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            schema._name(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _root(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # The cluster file's own rule for zookeeper.root (whole string, ZooKeeper's path rules).
    if value is not None:
        try:
            schema._zk_root(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def insecure_option(func: F) -> F:
    return click.option(
        "--insecure", is_flag=True,
        help="Allow no credentials and a ZooKeeper root open to anyone.",
    )(func)


def connect_timeout_option(func: F) -> F:
    return click.option(
        "--connect-timeout", type=click.FloatRange(0.1, 300), default=DEFAULT_CONNECT_TIMEOUT,
        show_default=True, metavar="SECONDS", help="Give up reaching ZooKeeper after this long.",
    )(func)


@dataclass(frozen=True)
class ZkOptions:
    """What the connection options said; ``target()`` resolves them (reading the node file)."""

    node: str | None
    hosts: tuple[str, ...] | None
    cluster: str | None
    root: str | None
    auth: str | None
    insecure: bool
    connect_timeout: float

    def target(self) -> Target:
        """The cluster to talk to. Raises click.UsageError or ConfigError on bad options."""
        if self.hosts is not None:
            if self.node is not None:
                raise click.UsageError("give either --node or --zookeeper, not both")
            if self.cluster is None:
                raise click.UsageError("--zookeeper needs --cluster NAME")
            settings = ZooKeeperSettings(self.hosts, self.root or "/lvsctl", 4.0, self.auth)
            return Target(settings, self.cluster, self.insecure, base_dir=Path.cwd())
        if self.cluster is not None or self.root is not None:
            raise click.UsageError("--cluster and --root go with --zookeeper (or use --node)")
        path = self.node or DEFAULT_NODE_FILE
        if self.node is None and not Path(path).exists():
            raise click.UsageError(
                f"no node file at {path}: pass --node FILE, or --zookeeper HOST:PORT "
                "--cluster NAME")
        target = Target.from_node(load_node(path), insecure=self.insecure)
        if self.auth is not None:
            settings = replace(target.settings, auth_file=self.auth)
            target = replace(target, settings=settings, base_dir=Path.cwd())
        return target

    def connect(self) -> ClusterConnection:
        """Resolve and connect; warns when running without credentials."""
        target = self.target()
        conn = open_cluster(target, connect_timeout=self.connect_timeout)
        if conn.credentials is None:
            warn(f"no ZooKeeper credentials (--insecure): what lvsctl writes under "
                 f"{target.paths.base} is open to every ZooKeeper client")
        return conn


def zookeeper_options(func: F) -> F:
    """Add the connection options; the command receives them as ``zk: ZkOptions``."""

    @functools.wraps(func)
    def wrapper(*args: Any, node: str | None, zookeeper: tuple[str, ...] | None,
                cluster: str | None, root: str | None, auth: str | None, insecure: bool,
                connect_timeout: float, **kwargs: Any) -> Any:
        zk = ZkOptions(node, zookeeper, cluster, root, auth, insecure, connect_timeout)
        return func(*args, zk=zk, **kwargs)

    decorators = [
        click.option("--node", type=click.Path(dir_okay=False), metavar="FILE",
                     help=f"This host's node file [default: {DEFAULT_NODE_FILE}]."),
        click.option("--zookeeper", callback=_hosts, metavar="HOST:PORT[,..]",
                     help="ZooKeeper to use instead of a node file (needs --cluster)."),
        click.option("--cluster", callback=_name, metavar="NAME",
                     help="The cluster's name (with --zookeeper)."),
        click.option("--root", callback=_root, metavar="PATH",
                     help="ZooKeeper root [default: /lvsctl]."),
        click.option("--auth", type=click.Path(dir_okay=False), metavar="FILE",
                     help="File holding 'user:password' ZooKeeper digest credentials."),
        insecure_option,
        connect_timeout_option,
    ]
    wrapped: Any = wrapper
    for decorate in reversed(decorators):
        wrapped = decorate(wrapped)
    return wrapped


# -- who leads, as every command shows it ---------------------------------------------------


def describe_leader(leader: Leader | None,
                    records: Sequence[DirectorRecord]) -> dict[str, Any] | None:
    """Who leads (the store's ``leader()``), as ``status`` and ``failover status`` print it.

    ``since`` is when the leader turned ACTIVE by its own record, when that record agrees
    (ACTIVE at the queue's epoch), else None; ``also_active`` names any other director whose
    record claims ACTIVE (a stale record, or a split brain worth a look).
    """
    if leader is None:
        return None
    own = next((r for r in records if r.director == leader.director), None)
    agrees = own is not None and own.role == "ACTIVE" and own.epoch == leader.epoch
    return {
        "director": leader.director, "epoch": leader.epoch,
        "since": own.since if agrees and own is not None else None,
        "joined": leader.joined, "znode": leader.znode, "session": f"0x{leader.owner:x}",
        "also_active": [r.director for r in records
                        if r.role == "ACTIVE" and r.director != leader.director],
    }


def leader_name(described: dict[str, Any]) -> str:
    return described["director"] or f"an unknown director (znode {described['znode']})"


def skipped_json(skipped: Sequence[Skipped]) -> list[dict[str, str]]:
    return [{"znode": s.znode, "reason": s.reason} for s in skipped]


def echo_skipped(skipped: Sequence[Skipped], shown: int = 5) -> None:
    """One line per record that could not be read (at most ``shown``), under a count."""
    if not skipped:
        return
    click.echo("")
    click.echo(f"{len(skipped)} malformed record{'s' if len(skipped) != 1 else ''} skipped")
    for item in skipped[:shown]:
        click.echo(f"  {item.reason}")
    if len(skipped) > shown:
        click.echo(f"  ... and {len(skipped) - shown} more (--json lists them all)")
