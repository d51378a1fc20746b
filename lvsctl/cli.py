"""The ``lvsctl`` command line: one click group, each area a subgroup in lvsctl.commands."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from lvsctl import __version__
from lvsctl.core.errors import ConfigError, LvsctlError

# Each command group is imported only when it runs (or when --help lists them): a director's
# `lvsctl director run` must not pay for the HTTP, health-check, template and schema modules
# of the other commands, which take seconds to import in the emulated kernel VM.
COMMANDS = {
    "config": "lvsctl.commands.config:config_group",
    "vm": "lvsctl.commands.vm:vm_group",
    "check": "lvsctl.commands.check:check_group",
    "node": "lvsctl.commands.node:node_group",
    "ipvs": "lvsctl.commands.ipvs:ipvs_group",
    "realserver": "lvsctl.commands.realserver:realserver_group",
    "director": "lvsctl.commands.director:director_group",
    "status": "lvsctl.commands.status:status_command",
    "failover": "lvsctl.commands.failover:failover_group",
    "lab": "lvsctl.commands.lab:lab_group",
}


class LvsctlGroup(click.Group):
    """Turns every LvsctlError into its lines on stderr and its exit code; never a traceback.
    Its subcommands are the modules named in COMMANDS, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, _, name = where.partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command), where
        return command

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


def main() -> None:
    try:
        cli.main(prog_name="lvsctl")
    except KeyboardInterrupt:
        click.echo("lvsctl: interrupted", err=True)
        sys.exit(130)
