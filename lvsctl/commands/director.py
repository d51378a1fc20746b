"""``lvsctl director run``: the director daemon (director/daemon.py) in the foreground."""

from __future__ import annotations

import click

from lvsctl.core.node import DEFAULT_NODE_FILE


@click.group("director")
def director_group() -> None:
    """Run this host's director (ZooKeeper leadership, VIPs, IPVS)."""


@director_group.command("run")
@click.option("--node", "node_file", default=DEFAULT_NODE_FILE, show_default=True,
              type=click.Path(dir_okay=False), help="the node file naming this director")
@click.option("--insecure", is_flag=True,
              help="run even without ZooKeeper credentials or with an open root ACL")
def run_command(node_file: str, insecure: bool) -> None:
    """Run the director daemon until SIGTERM (graceful stepdown, then exit)."""
    from lvsctl.director.daemon import run_director

    raise SystemExit(run_director(node_file, insecure=insecure))
