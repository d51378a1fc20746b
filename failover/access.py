"""Reaching a running director pair from outside: what ZooKeeper holds about it (published
director records, transition records; read through the store, lvsctl.core.zk) and each
director's HTTP API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvsctl.core.errors import ConfigError, ConfigIssue, LvsctlError
from lvsctl.core.records import DirectorRecord, TransitionRecord
from lvsctl.core.zk import ClusterConnection, ClusterStore
from lvsctl.failover.timeline import Record


class ApiError(LvsctlError):
    """A director's API refused or failed an action."""


def read_token(path: str | Path) -> str:
    """The API bearer token from its file. Raises ConfigError naming the file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(str(path), [ConfigIssue("", f"cannot read the API token: {reason}")]
                          ) from None
    if not token:
        raise ConfigError(str(path), [ConfigIssue("", "the API token file is empty")])
    return token


WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def api_url(address: str, path: str, director_address: str | None = None) -> str:
    """``http://HOST:PORT/path`` from a status's ``"api": "HOST:PORT"`` (IPv6 bracketed).

    An API listening on every address (0.0.0.0, ::) is reached at ``director_address``, the
    director's address from the cluster file.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in WILDCARDS and director_address:
        host = director_address
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def timeline_record(record: TransitionRecord) -> Record:
    """A stored transition as the drill's timeline reads it."""
    return Record(director=record.director, event=record.event, wall=record.wall,
                  monotonic=record.monotonic, state=record.state, epoch=record.epoch,
                  vip=record.vip, reason=record.reason)


class ClusterView:
    """Read-only view of the pair's records in ZooKeeper (through the cluster's store)."""

    def __init__(self, conn: ClusterConnection) -> None:
        self.store = ClusterStore(conn)

    def published(self) -> dict[str, DirectorRecord]:
        """Each running director's record (ephemeral: gone when it is); others skipped."""
        return {r.director: r for r in self.store.directors().items}

    def records(self, after: int | None = None) -> list[tuple[int, Record]]:
        """Transition records (sequence, record), oldest first; only those after ``after``."""
        return [(e.seq, timeline_record(e.record))
                for e in self.store.transitions(after=after).items]


@dataclass
class ZkDirectors:
    """The drill's ``Directors``: statuses and actions through each director's API (address
    from its published status), records from ZooKeeper."""

    view: ClusterView
    token: str | None
    timeout: float = 1.0
    addresses: Mapping[str, str] = field(default_factory=dict)  # director -> cluster address
    _api: dict[str, str] = field(default_factory=dict)
    _records: list[tuple[int, Record]] = field(default_factory=list)

    def _address(self, director: str) -> str | None:
        published = self.view.published().get(director)
        if published is not None and published.api:
            self._api[director] = published.api
        # Keep the last address known: a crashed director's znode is gone, its API comes back.
        return self._api.get(director)

    def status(self, director: str) -> dict[str, Any] | None:
        import requests

        address = self._api.get(director) or self._address(director)
        if address is None:
            return None
        try:
            resp = requests.get(api_url(address, "/status", self.addresses.get(director)),
                                timeout=self.timeout)
            data = resp.json() if resp.ok else None
        except (requests.RequestException, ValueError):
            self._address(director)  # it may have come back elsewhere
            return None
        return data if isinstance(data, dict) else None

    def action(self, director: str, action: str, params: Mapping[str, str] | None = None,
               ) -> dict[str, Any]:
        import requests

        if self.token is None:
            raise ApiError(f"{action} on {director} needs the API token: pass --token FILE "
                           "(or a node file whose api.token names it)")
        address = self._address(director)
        if address is None:
            raise ApiError(f"{director} publishes no API address in ZooKeeper")
        url = api_url(address, f"/{action}", self.addresses.get(director))
        try:
            resp = requests.post(url, params=dict(params or {}), timeout=max(self.timeout, 5.0),
                                 headers={"Authorization": f"Bearer {self.token}"})
        except requests.RequestException as exc:
            raise ApiError(f"{director} at {url}: {type(exc).__name__}") from None
        if resp.status_code == 401:
            raise ApiError(f"{director} refused {action}: the API token is not accepted")
        if resp.status_code == 403:
            raise ApiError(f"{director} refused {action}: {resp.text.strip()}")
        if not resp.ok:
            raise ApiError(f"{director} answered {action} with HTTP {resp.status_code}: "
                           f"{resp.text.strip()[:200]}")
        try:
            data = resp.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def records(self) -> list[Record]:
        last = self._records[-1][0] if self._records else None
        self._records.extend(self.view.records(after=last))
        return [r for _, r in self._records]
