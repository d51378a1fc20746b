"""The standby's promise not to take the VIPs, kept on disk so that it survives a restart.

A vouching beat (election.py) promises the other director that we will not take the VIPs
until an instant ``T`` on our monotonic clock. A director restarted inside its promise must
keep it, so the promise is written to ``<state_dir>/promise.json`` *before* the vouching beat
goes out, and read back at start. ``CLOCK_MONOTONIC`` is one clock for every process of one
boot, so ``T`` means the same instant to the next run; the file names its boot
(``/proc/sys/kernel/random/boot_id``), and a promise from another boot is over (a reboot takes
longer than any promise, a few seconds). The file is replaced atomically (rename) and not
fsynced: a process crash keeps the page cache, a power cut reboots.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MAX_BYTES = 4096


class PromiseStore(Protocol):
    """Where a director keeps its promise across restarts."""

    def load(self) -> float:
        """The monotonic instant until which an earlier run's promise holds (-inf: none).
        Raises ValueError when the record cannot be read as one (the caller then assumes
        the longest promise from now)."""

    def save(self, until: float) -> None:
        """Record a promise until ``until`` (monotonic); returns once it would survive a
        crash of this process. Raises OSError."""


@dataclass
class PromiseFile:
    """A ``PromiseStore`` in a file (``<state_dir>/promise.json``, mode 0600)."""

    path: Path
    boot_id: Path = BOOT_ID

    def _boot(self) -> str:
        return self.boot_id.read_text(encoding="ascii").strip()

    def load(self) -> float:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return -math.inf
        except OSError as exc:
            raise ValueError(f"{self.path}: {exc.strerror}") from None
        try:
            if len(data) > MAX_BYTES:
                raise ValueError
            record = json.loads(data)
            boot, until = record["boot"], record["until"]
            if not isinstance(boot, str) or type(until) is not float or not math.isfinite(until):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise ValueError(f"{self.path}: not a promise record") from None
        try:
            if boot != self._boot():
                return -math.inf  # made before a reboot: long over
        except OSError as exc:
            raise ValueError(f"{self.boot_id}: {exc.strerror}") from None
        return until

    def save(self, until: float) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        data = json.dumps({"boot": self._boot(), "until": float(until)}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
