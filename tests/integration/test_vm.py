"""The kernel VM booted for real: exit codes, argv passed untouched, shares, timeouts.

Each test boots QEMU (5-10 s under TCG), so they are few and each checks several things.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvsctl.testbed import vm
from tests.conftest import ROOT

QUIET = {"progress": lambda line: None}


def test_cli_exits_with_the_guest_commands_exit_code() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lvsctl")), "vm", "run", "--", "sh", "-c",
         "echo from-guest; uname -r; exit 7"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "from-guest"
    assert lines[1].endswith("-amd64") and lines[1] != os.uname().release
    assert "vm: booted in" in proc.stderr


def test_false_gives_1() -> None:
    result = vm.run(["false"], options=vm.VmOptions(modules=False), **QUIET)  # type: ignore[arg-type]
    assert result.exit_code == 1
    assert result.output == ""


def test_argv_env_cwd_and_a_writable_share(tmp_path: Path) -> None:
    """Arguments arrive byte for byte (no shell parsed them), in the same folder, and the
    command can write into a shared host folder while the host root stays read-only."""
    out = tmp_path / "out"
    out.mkdir()
    script = (
        'printf "[%s]" "$@"; echo; pwd; echo "$LVSCTL_IN_VM $MY_VAR"; '
        'echo written > "$OUT/result"; '
        'touch /usr/lvsctl-overlay-probe && echo overlay-ok; '
        'test -e /proc/net/ip_vs && echo ipvs-ok'
    )
    argv = ["sh", "-c", script, "sh", "a b", "$HOME", "'q'", "*", "x;exit 3"]
    result = vm.run(
        argv, cwd=tmp_path,
        options=vm.VmOptions(shares=(out,), env={"MY_VAR": "v w", "OUT": str(out)}),
        **QUIET,  # type: ignore[arg-type]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "[a b][$HOME]['q'][*][x;exit 3]",
        str(tmp_path),
        "1 v w",
        "overlay-ok",
        "ipvs-ok",
    ]
    assert (out / "result").read_text() == "written\n"
    # What the guest wrote elsewhere went to its throw-away overlay, not to the host.
    assert not Path("/usr/lvsctl-overlay-probe").exists()


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_timeout_kills_the_vm(tmp_path: Path) -> None:
    # The share's unique path is on QEMU's command line: a way to find this test's QEMU.
    options = vm.VmOptions(timeout=4, shares=(tmp_path,))
    t0 = time.monotonic()
    with pytest.raises(vm.VmTimeoutError, match="timed out after 4 s"):
        vm.run(["sleep", "600"], options=options, **QUIET)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 60
    assert _processes_naming(f"path={tmp_path}") == []


def test_a_guest_that_cannot_boot_is_a_boot_error() -> None:
    with pytest.raises(vm.BootError, match="did not boot"):
        vm.run(["true"], options=vm.VmOptions(memory="24M", timeout=120), **QUIET)  # type: ignore[arg-type]
