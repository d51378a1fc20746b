"""``lvsctl vm``: prepare Debian's stock kernel (which has IPVS) and run commands in a QEMU VM."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click

from lvsctl.core.errors import LvsctlError
from lvsctl.output import echo_json, echo_table
from lvsctl.testbed import vm

_MEMORY = re.compile(r"[1-9][0-9]*[MG]")


class UsageError(LvsctlError):
    exit_code = 2


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


@click.group("vm")
def vm_group() -> None:
    """Run commands under Debian's stock kernel (IPVS, ipip, dummy) in a QEMU VM.

    The host's root filesystem is shared read-only (with a throw-away overlay), so the venv,
    Python and the repository are visible in the guest at the same paths.
    """


_DIR_OPTION = click.option(
    "--dir", "directory", type=click.Path(file_okay=False),
    help="Cache folder for the kernel (default: $LVSCTL_VM_DIR, else var/vm in the repository).",
)


@vm_group.command("prepare")
@_DIR_OPTION
def prepare_command(directory: str | None) -> None:
    """Download and unpack the kernel, build the initramfs (once; reused afterwards)."""
    kernel = vm.prepare(directory)
    click.echo(f"{kernel.version} {kernel.folder}")


@vm_group.command("status")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def status_command(directory: str | None, as_json: bool) -> None:
    """Show the cache folder, the kernels in it, and whether this host needs the VM."""
    kernels = vm.cached_kernels(directory)
    info = {
        "cache": str(vm.cache_dir(directory)),
        "qemu": shutil.which(vm.QEMU),
        "host_has_ipvs": vm.kernel_has_ipvs(),
        "kernels": [
            {"version": k.version, "folder": str(k.folder), "ready": k.ready, "mib": k.size_mib}
            for k in kernels
        ],
    }
    if as_json:
        echo_json(info)
        return
    click.echo(f"cache: {info['cache']}")
    click.echo(f"qemu: {info['qemu'] or 'not installed (scripts/setup installs it)'}")
    click.echo("host kernel has IPVS: " + ("yes" if info["host_has_ipvs"] else
                                          "no (kernel tests run in the VM)"))
    click.echo()
    echo_table(["KERNEL", "READY", "MIB", "FOLDER"],
               [[k.version, "yes" if k.ready else "no (lvsctl vm prepare)", k.size_mib, k.folder]
                for k in kernels])


@vm_group.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--memory", default=vm.DEFAULT_MEMORY, show_default=True,
              help="Guest memory, e.g. 512M or 2G.")
@click.option("--cpus", type=click.IntRange(1, 64), default=vm.DEFAULT_CPUS, show_default=True,
              help="Guest CPUs.")
@click.option("--timeout", type=click.FloatRange(min=1), default=vm.DEFAULT_TIMEOUT,
              show_default=True, help="Seconds for everything (boot and command); then killed.")
@click.option("--share", "shares", multiple=True, type=click.Path(file_okay=False),
              help="A host folder writable in the guest at the same path (repeatable).")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="Set an environment variable for the command (repeatable).")
@click.option("--verbose", is_flag=True, help="Show the kernel's boot messages.")
@_DIR_OPTION
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_command(ctx: click.Context, memory: str, cpus: int, timeout: float,
                shares: tuple[str, ...], env: tuple[str, ...], verbose: bool, directory: str | None,
                command: tuple[str, ...]) -> None:
    """Boot the VM, run COMMAND in the current folder, exit with its exit code.

    Put `--` before COMMAND when it has options of its own:

        lvsctl vm run -- .venv/bin/python -m pytest -m kernel
    """
    if not _MEMORY.fullmatch(memory):
        raise UsageError(f"--memory {memory!r}: expected a size such as 512M or 2G")
    options = vm.VmOptions(
        memory=memory, cpus=cpus, timeout=timeout,
        shares=tuple(Path(s) for s in shares), env=_env_pairs(env), verbose=verbose,
    )
    result = vm.run(list(command), options=options, directory=directory)
    ctx.exit(result.exit_code)
