"""Reaching a running director pair from outside: what ZooKeeper holds about it (published
statuses, election, transition records) and each director's HTTP API.

Znodes read (written by director/daemon.py, see lvsctl/zk.py for the layout)::

    <root>/<cluster>/directors/<name>     ephemeral JSON status, incl. "api": "HOST:PORT"
    <root>/<cluster>/election/<..._N>     the election queue; N is the epoch
    <root>/<cluster>/transitions/t_<N>    one JSON record per transition (timeline.Record)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazoo.exceptions import NoNodeError

from lvsctl.core.errors import ConfigError, ConfigIssue, LvsctlError
from lvsctl.core.zk import ClusterConnection
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


@dataclass
class ClusterView:
    """Read-only view of the pair's znodes."""

    conn: ClusterConnection

    def _get_json(self, path: str) -> Any | None:
        with self.conn.errors("reading", path):
            try:
                data, _ = self.conn.client.get(path)
            except NoNodeError:
                return None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    def _children(self, path: str) -> list[str]:
        with self.conn.errors("listing", path):
            try:
                return sorted(self.conn.client.get_children(path))
            except NoNodeError:
                return []

    def published(self) -> dict[str, dict[str, Any]]:
        """Each running director's published status (ephemeral: gone when it is)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self._children(self.conn.paths.directors):
            data = self._get_json(self.conn.paths.director(name))
            if isinstance(data, dict):
                out[name] = data
        return out

    def election(self) -> list[tuple[str, int]]:
        """The election queue, leader first: (znode, epoch)."""
        out = []
        for child in self._children(self.conn.paths.election):
            _, _, seq = child.rpartition("_")
            if seq.isdigit():
                out.append((child, int(seq)))
        return sorted(out, key=lambda c: c[1])

    def records(self, after: str | None = None) -> list[tuple[str, Record]]:
        """Transition records (znode name, record), oldest first; only those after ``after``."""
        out = []
        for child in self._children(self.conn.paths.transitions):
            if after is not None and child <= after:
                continue
            data = self._get_json(f"{self.conn.paths.transitions}/{child}")
            if isinstance(data, dict):
                try:
                    out.append((child, Record.from_json(data)))
                except ValueError:
                    continue
        return out


@dataclass
class ZkDirectors:
    """The drill's ``Directors``: statuses and actions through each director's API (address
    from its published status), records from ZooKeeper."""

    view: ClusterView
    token: str | None
    timeout: float = 1.0
    addresses: Mapping[str, str] = field(default_factory=dict)  # director -> cluster address
    _api: dict[str, str] = field(default_factory=dict)
    _records: list[tuple[str, Record]] = field(default_factory=list)

    def _address(self, director: str) -> str | None:
        published = self.view.published().get(director)
        if published and published.get("api"):
            self._api[director] = str(published["api"])
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
