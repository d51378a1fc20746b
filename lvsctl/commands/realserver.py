"""``lvsctl realserver``: render a real server's setup for its mode, verify a live one, and
drain/enable/list them on the running directors (lvsctl.commands.realserver_drain)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click

from lvsctl.core.config import load_cluster
from lvsctl.core.errors import LvsctlError
from lvsctl.output import echo_json, echo_table
from lvsctl.templates.render import (
    FORMATS,
    Format,
    RealServerSetup,
    SetupError,
    files_for,
    requirements,
    setup_adhoc,
    setup_for,
    setups_for_all,
    write_files,
)


@click.group("realserver")
def realserver_group() -> None:
    """Set up real servers for their forwarding mode (dr, tun, nat) and check them; drain,
    enable and list them on the running directors."""


def _selector_options(func: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.argument("cluster_file", required=False, type=click.Path(dir_okay=False)),
        click.option("--server", "server", metavar="NAME",
                     help="The real server (its name in the cluster file)."),
        click.option("--mode", type=click.Choice(["dr", "tun", "nat"]),
                     help="Without a cluster file: the forwarding mode."),
        click.option("--vip", "vips", multiple=True, metavar="ADDR",
                     help="Without a cluster file: a VIP to accept (dr, tun); repeatable."),
        click.option("--gateway", metavar="ADDR",
                     help="Without a cluster file: the director's inside VIP (nat)."),
        click.option("--interface", default="eth0", show_default=True, metavar="IF",
                     help="The real server's outward interface (ARP settings)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_selectors(cluster_file: str | None, server: str | None, every: bool, mode: str | None,
                     vips: Sequence[str], gateway: str | None) -> None:
    if cluster_file is not None:
        for flag, given in (("--mode", mode), ("--vip", vips), ("--gateway", gateway)):
            if given:
                raise click.UsageError(f"{flag} is for the form without a cluster file")
        if server is None and not every:
            raise click.UsageError("with a cluster file, name the real server: --server NAME")
        if server is not None and every:
            raise click.UsageError("give --server NAME or --all, not both")
    else:
        if server is not None or every:
            raise click.UsageError("--server and --all need a cluster file")
        if mode is None:
            raise click.UsageError("give a cluster file and --server, or --mode dr|tun|nat")


def _setups(cluster_file: str | None, server: str | None, every: bool, mode: str | None,
            vips: Sequence[str], gateway: str | None,
            interface: str) -> tuple[list[RealServerSetup], str]:
    _check_selectors(cluster_file, server, every, mode, vips, gateway)
    if cluster_file is None:
        assert mode is not None
        return [setup_adhoc(mode, vips, interface, gateway)], "the command line"
    loaded = load_cluster(cluster_file)
    if every:
        return setups_for_all(loaded.cluster, interface), loaded.source
    assert server is not None
    return [setup_for(loaded.cluster, server, interface)], loaded.source


@realserver_group.command("render")
@_selector_options
@click.option("--all", "every", is_flag=True, help="Every real server, one folder each.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="shell", show_default=True,
              help="shell: setup.sh up|down|status; networkd: .network + sysctl.d files.")
@click.option("--output", type=click.Path(file_okay=False), metavar="DIR",
              help="Write the files here (default: print them).")
def render_command(cluster_file: str | None, server: str | None, mode: str | None,
                   vips: tuple[str, ...], gateway: str | None, interface: str, every: bool,
                   fmt: Format, output: str | None) -> None:
    """Render what a real server needs: from CLUSTER_FILE with --server NAME (or --all), or
    ad hoc with --mode dr|tun|nat --vip ADDR ... [--gateway ADDR]."""
    if every and output is None:
        raise click.UsageError("--all writes one folder per real server: give --output DIR")
    setups, source = _setups(cluster_file, server, every, mode, vips, gateway, interface)
    # Everything is rendered before anything is written: a bad input writes nothing.
    files = files_for(setups, fmt, source, per_server_folder=every)
    if output is None:
        if len(files) == 1:
            click.echo(next(iter(files.values())), nl=False)
            return
        for relative, text in files.items():
            click.echo(f"==> {relative} <==")
            click.echo(text)
        return
    try:
        written = write_files(output, files)
    except OSError as exc:
        raise LvsctlError(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    for setup in setups:
        where = Path(output) / setup.name if every else Path(output)
        click.echo(f"{setup.name}: {setup.summary}: {where}")
    click.echo(f"wrote {len(written)} file(s) under {output}", err=True)


def _this_server(cluster_file: str, addresses: frozenset[str]) -> str:
    """The real server of the cluster whose address this host has (verify runs on it)."""
    loaded = load_cluster(cluster_file)
    names = {rs.name: rs.address for s in loaded.cluster.services for rs in s.realservers}
    here = sorted(name for name, address in names.items() if address in addresses)
    if len(here) != 1:
        what = "none" if not here else ", ".join(here)
        raise SetupError(
            f"{loaded.source}: cannot tell which real server this host is (address match: "
            f"{what}): give --server NAME"
        )
    return here[0]


@realserver_group.command("verify")
@_selector_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def verify_command(cluster_file: str | None, server: str | None, mode: str | None,
                   vips: tuple[str, ...], gateway: str | None, interface: str,
                   as_json: bool) -> None:
    """Check this host's live state against the setup it needs; exit 1 if anything is wrong.

    With CLUSTER_FILE and no --server, the real server is the one whose address this host has."""
    from lvsctl.templates.verify import check, local_addresses, observe

    if cluster_file is not None and server is None and not (mode or vips or gateway):
        server = _this_server(cluster_file, local_addresses())
    setups, _ = _setups(cluster_file, server, False, mode, vips, gateway, interface)
    setup = setups[0]
    reqs = requirements(setup)
    findings = check(reqs, observe(reqs))
    wrong = [f for f in findings if not f.ok]
    if as_json:
        echo_json({"server": setup.name, "modes": [m.label for m in setup.modes],
                   "ok": not wrong, "findings": [f.as_dict() for f in findings]})
    else:
        echo_table(
            ["STATUS", "REQUIREMENT", "FOUND", "FIX"],
            [["ok" if f.ok else "wrong", f.requirement, f.found, "" if f.ok else f.fix]
             for f in findings],
        )
        click.echo(f"{setup.name} ({setup.summary}): {len(findings) - len(wrong)} ok, "
                   f"{len(wrong)} wrong")
    if wrong:
        raise SystemExit(1)


def _add_drain_commands() -> None:
    from lvsctl.commands.realserver_drain import drain_command, enable_command, list_command

    for command in (drain_command, enable_command, list_command):
        realserver_group.add_command(command)


_add_drain_commands()
