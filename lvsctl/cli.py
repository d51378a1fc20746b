"""The ``lvsctl`` command line: one click group, each area a subgroup in lvsctl.commands."""

from __future__ import annotations

import sys
from typing import Any

import click

from lvsctl import __version__
from lvsctl.commands.check import check_group
from lvsctl.commands.config import config_group
from lvsctl.commands.director import director_group
from lvsctl.commands.failover import failover_group
from lvsctl.commands.ipvs import ipvs_group
from lvsctl.commands.lab import lab_group
from lvsctl.commands.node import node_group
from lvsctl.commands.realserver import realserver_group
from lvsctl.commands.status import status_command
from lvsctl.commands.vm import vm_group
from lvsctl.core.errors import ConfigError, LvsctlError


class LvsctlGroup(click.Group):
    """Turns every LvsctlError into its lines on stderr and its exit code; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LvsctlError as exc:
            prefix = "" if isinstance(exc, ConfigError) else "lvsctl: "
            for line in exc.lines():
                click.echo(f"{prefix}{line}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=LvsctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lvsctl")
def cli() -> None:
    """Manage a Linux Virtual Server director pair: config, IPVS, health, failover."""


cli.add_command(config_group)
cli.add_command(vm_group)
cli.add_command(check_group)
cli.add_command(node_group)
cli.add_command(ipvs_group)
cli.add_command(realserver_group)
cli.add_command(director_group)
cli.add_command(status_command)
cli.add_command(failover_group)
cli.add_command(lab_group)


def main() -> None:
    try:
        cli.main(prog_name="lvsctl")
    except KeyboardInterrupt:
        click.echo("lvsctl: interrupted", err=True)
        sys.exit(130)
