"""The services a director manages, remembered durably, so a service that leaves the cluster
file is retired (drained, then deleted) from the director's own IPVS table and a service added
by hand is never touched.

Each director keeps its own set (both keep their tables warm, each retires on its own table):

- in a local state file (``<state_dir>/<cluster>.managed.json``), written before the pass that
  adds a service applies anything, so a crash right after the add cannot forget it, and read
  at start, so a restart during a ZooKeeper outage still retires;
- in its ZooKeeper record ``managed/<director>`` (lvsctl.core.zk), written in the background,
  so a director whose disk was replaced reads it back.

At start the union of both is taken: a service in either was put in the table by this
director at some time. A service stays managed while it is desired, or while the kernel still
holds it after it left the file (it is being retired); once retired and gone from the kernel it
is forgotten. ``config rollback`` is one more version of the file: a service the rolled-back
version lacks is retired, one it names is desired again.

Truth table of one service after a pass (``observed`` None: the dump failed):

    desired  was managed  in kernel   -> managed after the pass  (planned)
    yes      any          any         -> yes (its drain timeout refreshed)  add/edit
    no       yes          yes         -> yes                                 retire
    no       yes          unknown     -> yes                                 nothing
    no       yes          no          -> no (forgotten)                      nothing
    no       no           any         -> no                                  never touched
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import ServiceKey
from lvsctl.core.records import ManagedRecord, ManagedService, RecordError
from lvsctl.director.reconcile import DesiredTable, ObservedTable, service_order

if TYPE_CHECKING:  # kazoo is not for ``lvsctl ipvs``, which keeps its set on disk only
    from lvsctl.core.zk import ClusterStore

log = logging.getLogger("lvsctl.director.managed")

Managed = Mapping[ServiceKey, ManagedService]


# ---------------------------------------------------------------------------------------------
# The pure rules
# ---------------------------------------------------------------------------------------------


def retired_services(managed: Managed, desired: DesiredTable) -> dict[ServiceKey, float]:
    """The services to retire: managed, no longer desired; each with its drain timeout (the
    ``retired`` argument of reconcile.plan)."""
    return {key: m.drain_timeout for key, m in managed.items() if key not in desired}


def next_managed(managed: Managed, desired: DesiredTable, observed: ObservedTable | None,
                 names: Mapping[ServiceKey, str] | None = None) -> dict[ServiceKey, ManagedService]:
    """The managed set after a pass that planned ``desired`` against ``observed`` (module
    docstring's truth table); ``names`` gives the desired services' names in the file."""
    out = {key: ManagedService(key, (names or {}).get(key, ""), want.drain_timeout)
           for key, want in desired.items()}
    for key, m in managed.items():
        if key not in out and (observed is None or key in observed):
            out[key] = m
    return out


def record_of(director: str, managed: Managed, wall: float) -> ManagedRecord:
    """The record of ``managed``, its services in the kernel's order (stable files)."""
    return ManagedRecord(director, tuple(managed[k] for k in sorted(managed, key=service_order)),
                         round(wall, 3))


# ---------------------------------------------------------------------------------------------
# Where the set lives
# ---------------------------------------------------------------------------------------------


class RemoteManaged(Protocol):
    """The director's record in ZooKeeper (blocking calls, made from a background thread)."""

    def read(self) -> ManagedRecord | None:
        """The stored record, None when there is none. Raises LvsctlError."""

    def write(self, record: ManagedRecord) -> None:
        """Replace the stored record. Raises LvsctlError."""


class ZkManaged:
    """RemoteManaged on the cluster's store: ``managed/<director>``."""

    def __init__(self, store: ClusterStore, director: str) -> None:
        self.store = store
        self.director = director

    def read(self) -> ManagedRecord | None:
        return self.store.managed(self.director)

    def write(self, record: ManagedRecord) -> None:
        self.store.publish_managed(record)


def state_file(state_dir: str | Path, cluster: str, suffix: str = "managed") -> Path:
    """Where a director (or ``lvsctl ipvs apply``) keeps its managed set on disk."""
    return Path(state_dir) / f"{cluster}.{suffix}.json"


def read_state_file(path: Path, director: str = "") -> dict[ServiceKey, ManagedService]:
    """The managed set a state file holds; empty when there is no file. Raises LvsctlError
    (a RecordError naming the file) when it holds something else or cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LvsctlError(f"cannot read the managed services from {path}: "
                          f"{exc.strerror or exc}") from None
    record = ManagedRecord.from_bytes(data, str(path))
    if director and record.director != director:
        raise RecordError(f"{path}: the record is of director {record.director}, not {director}")
    return {s.key: s for s in record.services}


def write_state_file(path: Path, record: ManagedRecord) -> None:
    """Replace the state file atomically (a crash leaves the old or the new one, never half).
    Raises LvsctlError naming the file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(record.to_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LvsctlError(f"cannot write the managed services to {path}: "
                          f"{exc.strerror or exc}") from None


_READ_RETRY = (0.2, 5.0)  # seconds: first and longest wait between tries of the remote


class ManagedBook:
    """One director's managed set: in memory, in its state file, in its ZooKeeper record.

    Without ``path`` and ``remote`` it lives in memory only (tests, a one-off pass). Calls come
    from one thread (the worker's loop); the remote is read once and then written from a
    background thread of its own, the newest set winning.
    """

    def __init__(self, director: str = "", path: Path | None = None,
                 remote: RemoteManaged | None = None, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.director = director
        self.path = path
        self.remote = remote
        self.wall = wall
        self.services: dict[ServiceKey, ManagedService] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._remote_read: ManagedRecord | None = None
        self._remote_done = False  # the remote was read (merged or not yet)
        self._merged = remote is None
        self._pending: ManagedRecord | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """Read the state file and start reading the remote. An unreadable file is logged
        and taken as empty (the remote may still know)."""
        if self.path is not None:
            try:
                self.services = read_state_file(self.path, self.director)
            except (OSError, LvsctlError) as exc:
                log.error("managed services not read from %s: %s", self.path, exc,
                          extra={"event": "managed_error"})
        if self.remote is not None and self._thread is None:
            self._thread = threading.Thread(target=self._remote_loop, name="managed-record",
                                            daemon=True)
            self._thread.start()

    def retired(self, desired: DesiredTable) -> dict[ServiceKey, float]:
        """The services this pass retires (see ``retired_services``)."""
        self._merge_remote()
        return retired_services(self.services, desired)

    def update(self, desired: DesiredTable, observed: ObservedTable | None,
               names: Mapping[ServiceKey, str] | None = None, *, strict: bool = False) -> bool:
        """Record the set after a pass (``next_managed``), before its ops are applied.
        Returns whether it changed. The state file is written at once: with ``strict`` a
        failure raises LvsctlError (nothing was applied yet), else it is logged. The remote is
        written in the background."""
        self._merge_remote()
        after = next_managed(self.services, desired, observed, names)
        if after == self.services:
            return False
        self.services = after
        self._save(strict)
        return True

    def as_json(self) -> list[dict[str, object]]:
        """The set as JSON, in the kernel's order (for /ipvs and ``config push --plan``)."""
        return [self.services[k].to_json() for k in sorted(self.services, key=service_order)]

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify_all()

    # -- persistence ---------------------------------------------------------------------------

    def _save(self, strict: bool) -> None:
        record = record_of(self.director, self.services, self.wall())
        try:
            record.to_bytes()  # too large for a record: neither copy can hold it
        except RecordError as exc:
            if strict:
                raise
            log.error("managed services not recorded: %s", exc,
                      extra={"event": "managed_error"})
            return
        if self.path is not None:
            try:
                write_state_file(self.path, record)
            except LvsctlError as exc:
                if strict:
                    raise
                log.error("%s", exc, extra={"event": "managed_error"})
        if self.remote is not None:
            with self._lock:
                self._pending = record
                self._wake.notify_all()

    def _merge_remote(self) -> None:
        """Take the union with the remote record once it has been read; write the union back
        when the remote lacked some of it."""
        if self._merged:
            return
        with self._lock:
            if not self._remote_done:
                return
            remote = self._remote_read
        self._merged = True
        known = {} if remote is None else {s.key: s for s in remote.services}
        added = {k: s for k, s in known.items() if k not in self.services}
        if added:
            log.info("managed services from ZooKeeper: %s",
                     ", ".join(sorted(str(k) for k in added)),
                     extra={"event": "managed_merged", "services": len(added)})
            self.services = {**self.services, **added}
        if set(known) != set(self.services):
            self._save(strict=False)

    def _remote_loop(self) -> None:
        assert self.remote is not None
        delay = _READ_RETRY[0]
        while True:  # read first: writing before would drop what only the remote knows
            try:
                record = self.remote.read()
                if record is not None and self.director and record.director != self.director:
                    raise RecordError(f"the record is of director {record.director}")
                break
            except LvsctlError as exc:
                log.warning("managed record not read yet: %s", exc,
                            extra={"event": "managed_error"})
            with self._lock:
                if self._wake.wait_for(lambda: self._stopped, delay):
                    return
            delay = min(delay * 2, _READ_RETRY[1])
        with self._lock:
            self._remote_read, self._remote_done = record, True
        delay = _READ_RETRY[0]
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._stopped or self._pending is not None)
                if self._stopped:
                    return
                pending, self._pending = self._pending, None
            assert pending is not None
            try:
                self.remote.write(pending)
                delay = _READ_RETRY[0]
            except LvsctlError as exc:
                log.warning("managed record not written: %s", exc,
                            extra={"event": "managed_error"})
                with self._lock:
                    if self._pending is None:  # keep it unless a newer one came
                        self._pending = pending
                    if self._wake.wait_for(lambda: self._stopped, delay):
                        return
                delay = min(delay * 2, _READ_RETRY[1])
