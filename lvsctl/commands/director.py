"""``lvsctl director run``: the director (keeper and worker, lvsctl/director_main.py) in the
foreground."""

from __future__ import annotations

import os
import sys

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
    """Run the director until SIGTERM (graceful stepdown, then exit)."""
    # exec, not call: the keeper keeps this process (its PID is systemd's MAINPID) and starts
    # in a fresh interpreter without the CLI's imports (HTTP, health checks, templates).
    argv = [sys.executable, "-m", "lvsctl.director_main", "run", "--node", node_file,
            *(["--insecure"] if insecure else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
