"""``lvsctl config import``: a keepalived.conf or ipvsadm rules -> a cluster file and a report.

The cluster file goes to stdout (or --output), the report to stderr (or into --json): one line
per source line that did not carry over, ``FILE:LINE: kind: reason``. Bad input is one line
``FILE:LINE: reason`` and exit 1, with nothing written.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lvsctl.core.importers.common import (
    DirectorOption,
    ImportOptions,
    ImportResult,
    SourceError,
    Where,
)
from lvsctl.core.importers.ipvsadm import MAX_BYTES as IPVSADM_MAX_BYTES
from lvsctl.core.importers.ipvsadm import import_ipvsadm
from lvsctl.core.importers.keepalived import import_keepalived
from lvsctl.core.schema import _hostport as schema_hostport
from lvsctl.core.schema import _name as schema_name
from lvsctl.output import echo_json

_json_option = click.option("--json", "as_json", is_flag=True,
                            help="Print the file, the report and any error as JSON.")


_KIND_LABELS = {"unmapped": "not imported", "refused": "refused", "placeholder": "fill in",
                "note": "note"}


def _zookeeper_hosts(ctx: click.Context, param: click.Parameter,
                     value: tuple[str, ...]) -> tuple[str, ...]:
    hosts = tuple(h.strip() for item in value for h in item.split(",") if h.strip())
    for host in hosts:
        try:
            schema_hostport(host)
        except ValueError:
            raise click.BadParameter(f"{host!r} is not HOST:PORT") from None
    return hosts


def _director_options(ctx: click.Context, param: click.Parameter,
                      value: tuple[str, ...]) -> tuple[DirectorOption, ...]:
    if value and len(value) != 2:
        raise click.BadParameter("give both directors: --directors NAME=ADDR/PLEN@IFACE twice")
    try:
        return tuple(DirectorOption.parse(v) for v in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _cluster_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            schema_name(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _import_options(func: Any) -> Any:
    decorators = [
        click.option("--output", "-o", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Write the cluster file here (default: stdout)."),
        click.option("--zookeeper", multiple=True, callback=_zookeeper_hosts,
                     metavar="HOST:PORT", help="ZooKeeper server (repeat, or comma-separate)."),
        click.option("--directors", multiple=True, callback=_director_options,
                     metavar="NAME=ADDR/PLEN@IFACE", help="A director (give two)."),
        click.option("--cluster", callback=_cluster_name, metavar="NAME",
                     help="The cluster's name (default: keepalived's router_id)."),
        click.option("--strict", is_flag=True,
                     help="Exit 1 (and write nothing) if any line is not imported or refused."),
        _json_option,
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def _write_import(run: Callable[[], ImportResult], source: str, output: str | None, strict: bool,
                  as_json: bool) -> None:
    """Run an import and report it: the file on stdout or --output, the report on stderr."""
    try:
        result: ImportResult = run()
    except SourceError as exc:
        if as_json:
            echo_json({"ok": False, "file": source, "error": {
                "file": exc.where.file, "line": exc.where.line, "reason": exc.reason}})
        else:
            click.echo(exc.lines()[0], err=True)
        raise SystemExit(1) from None
    failed = strict and bool(result.strict_findings())
    if output is not None and not failed:
        target = Path(output)
        partial = target.with_name(f".{target.name}.partial")
        try:
            partial.write_text(result.text, encoding="utf-8")
            partial.replace(target)  # a reader sees the old file or the whole new one
        except OSError as exc:
            partial.unlink(missing_ok=True)
            click.echo(f"{output}: cannot write: {exc.strerror or exc}", err=True)
            raise SystemExit(1) from None
    if as_json:
        echo_json({
            "ok": not failed, "file": source, "output": output,
            "findings": [f.as_dict() for f in result.findings],
            "placeholders": list(result.placeholders),
            "warnings": list(result.warnings),
            **({"text": result.text} if output is None else {}),
        })
    else:
        if output is None and not failed:
            click.echo(result.text, nl=False)
        for finding in result.findings:
            click.echo(f"{finding.where}: {_KIND_LABELS[finding.kind]}: {finding.reason}",
                       err=True)
        counts = Counter(f.kind for f in result.findings)
        click.echo(
            f"{source}: {counts['unmapped']} line(s) not imported, {counts['refused']} refused, "
            f"{len(result.placeholders)} placeholder(s) to fill"
            + (f"; written to {output}" if output is not None and not failed else ""), err=True)
    if failed:
        if not as_json:
            click.echo(f"{source}: --strict: not written ({len(result.strict_findings())} "
                       "line(s) not imported or refused)", err=True)
        raise SystemExit(1)


@click.group("import")
def import_group() -> None:
    """Turn a keepalived.conf or ipvsadm rules into a cluster file, with a report."""


@import_group.command("keepalived")
@click.argument("file", type=click.Path(dir_okay=False))
@_import_options
def import_keepalived_command(file: str, output: str | None, zookeeper: tuple[str, ...],
                              directors: tuple[DirectorOption, ...], cluster: str | None,
                              strict: bool, as_json: bool) -> None:
    """Import keepalived.conf FILE (with its includes) as a cluster file.

    What lvsctl cannot express is reported on stderr, one line each: FILE:LINE: reason.
    The file is validated by lvsctl's loader before it is written.
    """
    options = ImportOptions(zookeeper, directors, cluster)
    _write_import(lambda: import_keepalived(file, options), file, output, strict, as_json)


@import_group.command("ipvsadm")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_import_options
def import_ipvsadm_command(file: str, output: str | None, zookeeper: tuple[str, ...],
                           directors: tuple[DirectorOption, ...], cluster: str | None,
                           strict: bool, as_json: bool) -> None:
    """Import 'ipvsadm -S -n' rules from FILE (- for stdin): the table as it is."""
    options = ImportOptions(zookeeper, directors, cluster)
    source = "<stdin>" if file == "-" else file

    def run() -> ImportResult:
        if file == "-":
            text = sys.stdin.read(IPVSADM_MAX_BYTES + 1)
        else:
            try:
                with open(file, encoding="utf-8") as handle:
                    text = handle.read(IPVSADM_MAX_BYTES + 1)
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise SourceError(Where(source, 1), f"cannot read the file: {reason}") from None
        return import_ipvsadm(text, source, options)

    _write_import(run, source, output, strict, as_json)
