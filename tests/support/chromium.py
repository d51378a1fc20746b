"""Headless Chromium (Debian's ``chromium``) for tests of pages lvsctl writes.

Every run gets a fresh profile directory and the flags that keep Chromium off the network
(this machine's network is closed; background requests would only fail noisily).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def binary() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise AssertionError("chromium is not installed (scripts/packages.txt lists it)")
    return found


def run(url: str, *args: str, timeout: float = 90) -> str:
    """Run Chromium once on ``url`` with ``args`` (e.g. --dump-dom); returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="lvsctl-chromium-") as profile:
        proc = subprocess.run(
            [binary(), *FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True, text=True, timeout=timeout,
        )
    if proc.returncode != 0:
        raise AssertionError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def artifacts() -> Path:
    """Where tests keep files for people to look at (LVSCTL_TEST_ARTIFACTS or test-artifacts/)."""
    path = Path(os.environ.get("LVSCTL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
