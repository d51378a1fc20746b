"""ZooKeeper for lvsctl: the one place that makes kazoo clients and owns lvsctl's znodes.

Every command and the director daemon get their client from ``open_cluster`` (or
``make_client`` when listeners must be added before the session starts), so credentials,
ACLs, timeouts and error messages are the same everywhere. A director::

    target = Target.from_node(load_node(path))
    creds = target.credentials()
    client = make_client(target, creds)          # the node file's session timeout
    client.add_listener(...)                     # before the session starts
    conn = open_cluster(target, client=client, credentials=creds)
    ConfigStore(conn).watch(on_config)           # runs on a kazoo thread: do not block

Znode layout, under ``<root>/<cluster>`` (``root`` is ``zookeeper.root``, default ``/lvsctl``)::

    <root>                          created by lvsctl if missing, with the cluster's ACL
    <root>/<cluster>                the cluster's node (empty)
        config                      the current cluster file: JSON, see ConfigVersion
        history/<0000000042>        the last N versions (default 20), the current one included,
                                    each the same JSON as ``config`` was when it was current
        election/                   reserved: director/election.py (leadership recipe, epoch)
        directors/<name>            reserved: each director's published status
        transitions/                reserved: the log of leadership transitions

``config`` and its history entry are written in one multi-op transaction guarded by the
``config`` znode's version (compare-and-set), so two concurrent pushes cannot both win and the
history never disagrees with ``config``. A version number is lvsctl's own counter (1, 2, ...),
stored in the JSON; the znode version is only the CAS guard.

ACLs: with credentials (an auth file holding ``user:password``), everything lvsctl creates
carries one digest ACL (all permissions) for exactly those credentials, and lvsctl refuses a
root (or cluster node) whose ACL lets ``world:anyone`` in. Without an auth file, or against an
open root, it refuses unless told ``insecure`` (then what it creates is open to anyone).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import DataWatch
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from lvsctl.core.config import Loaded, parse_cluster
from lvsctl.core.errors import ConfigError, ConfigIssue, ConflictError, ZooKeeperError
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.node import Node

log = logging.getLogger(__name__)
# Library logging: kazoo's reconnect chatter goes to the daemon's handlers when it has some,
# and never to Python's last-resort stderr handler in a CLI run (one line per error, no noise).
log.addHandler(logging.NullHandler())
_kazoo_log = logging.getLogger(f"{__name__}.kazoo")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_KEEP = 20
# ZooKeeper refuses a znode over jute.maxbuffer (1 MiB by default); say so before it does.
MAX_ZNODE_BYTES = 1_000_000
_CONFIG_FORMAT = 1


# -- where things are -----------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """The znodes of one cluster (see the module docstring)."""

    root: str
    cluster: str

    @property
    def base(self) -> str:
        return f"{self.root.rstrip('/')}/{self.cluster}"

    @property
    def config(self) -> str:
        return f"{self.base}/config"

    @property
    def history(self) -> str:
        return f"{self.base}/history"

    def history_entry(self, version: int) -> str:
        return f"{self.history}/{version:010d}"

    @property
    def election(self) -> str:
        return f"{self.base}/election"

    @property
    def directors(self) -> str:
        return f"{self.base}/directors"

    def director(self, name: str) -> str:
        return f"{self.directors}/{name}"

    @property
    def transitions(self) -> str:
        return f"{self.base}/transitions"


@dataclass(frozen=True)
class Credentials:
    """ZooKeeper digest credentials, read from an auth file (``user:password``)."""

    user: str
    password: str
    source: str

    def acl(self) -> Any:
        """The one ACL lvsctl puts on what it creates: all permissions, these credentials only."""
        return make_digest_acl(self.user, self.password, all=True)

    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]


def read_credentials(path: str | Path) -> Credentials:
    """Read an auth file. Raises ConfigError naming the file when it cannot be used."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        issue = ConfigIssue("", f"cannot read the auth file: {reason}")
        raise ConfigError(source, [issue]) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    user, sep, password = lines[0].partition(":") if len(lines) == 1 else ("", "", "")
    if not (sep and user and password):
        raise ConfigError(source, [ConfigIssue(
            "", "expected one line 'user:password' (ZooKeeper digest credentials)")])
    return Credentials(user, password, source)


@dataclass(frozen=True)
class Target:
    """One cluster in ZooKeeper and how to get in: what every ZooKeeper command needs.

    ``base_dir`` resolves a relative ``auth_file`` (relative to the file that named it).
    """

    settings: ZooKeeperSettings
    cluster: str
    insecure: bool = False
    base_dir: Path | None = None

    @classmethod
    def from_node(cls, node: Node, *, insecure: bool = False) -> Target:
        """The cluster a node file names (a relative auth path is relative to that file)."""
        return cls(node.zookeeper, node.cluster, insecure,
                   base_dir=Path(node.source).resolve().parent)

    @property
    def hosts(self) -> str:
        return ",".join(self.settings.hosts)

    @property
    def paths(self) -> Paths:
        return Paths(self.settings.root, self.cluster)

    def auth_path(self) -> Path | None:
        if not self.settings.auth_file:
            return None
        path = Path(self.settings.auth_file)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def credentials(self) -> Credentials | None:
        """The credentials, or None when there are none and ``insecure`` allows it.

        Raises ZooKeeperError without an auth file unless insecure, ConfigError on a bad one.
        """
        path = self.auth_path()
        if path is None:
            if self.insecure:
                return None
            raise ZooKeeperError(
                f"no ZooKeeper credentials for cluster {self.cluster}: set zookeeper.auth to a "
                "file holding 'user:password' (or pass --auth FILE); --insecure to go without"
            )
        return read_credentials(path)


# -- clients --------------------------------------------------------------------------------


def make_client(target: Target, credentials: Credentials | None, *,
                session_timeout: float | None = None) -> KazooClient:
    """An unstarted kazoo client for ``target``; add listeners, then pass it to open_cluster."""
    acl = [credentials.acl()] if credentials else OPEN_ACL_UNSAFE
    return KazooClient(
        hosts=target.hosts,
        timeout=session_timeout or target.settings.session_timeout,
        auth_data=credentials.auth_data() if credentials else None,
        default_acl=acl,
        # Reconnect quickly and forever; how long a caller waits is start()'s timeout.
        connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0},
        logger=_kazoo_log,
    )


class ClusterConnection:
    """A started client plus the cluster's paths and ACL. Close it (or use ``with``)."""

    def __init__(self, target: Target, client: KazooClient,
                 credentials: Credentials | None) -> None:
        self.target = target
        self.client = client
        self.credentials = credentials
        self.paths = target.paths

    @property
    def acl(self) -> list[Any]:
        """The ACL for every znode lvsctl creates in this cluster."""
        return [self.credentials.acl()] if self.credentials else list(OPEN_ACL_UNSAFE)

    @contextlib.contextmanager
    def errors(self, doing: str, path: str) -> Iterator[None]:
        """Turn kazoo's exceptions into one-line ZooKeeperErrors naming the znode."""
        try:
            yield
        except NoAuthError:
            who = (f"the credentials in {self.credentials.source}" if self.credentials
                   else "no credentials")
            raise ZooKeeperError(
                f"ZooKeeper at {self.target.hosts} refused {doing} {path} with {who} "
                "(its ACL is for other credentials)"
            ) from None
        except (ConnectionLoss, SessionExpiredError, KazooTimeoutError):
            raise ZooKeeperError(
                f"lost the connection to ZooKeeper at {self.target.hosts} while {doing} {path}"
            ) from None
        except (NoNodeError, NodeExistsError, BadVersionError):
            raise  # callers decide what these mean
        except KazooException as exc:
            raise ZooKeeperError(
                f"ZooKeeper at {self.target.hosts} failed {doing} {path}: "
                f"{type(exc).__name__} {exc}".rstrip()
            ) from None

    def check_acl(self, path: str) -> None:
        """Refuse ``path`` if it exists with an ACL open to anyone, unless insecure."""
        if self.target.insecure:
            return
        with self.errors("reading the ACL of", path):
            try:
                acls, _ = self.client.get_acls(path)
            except NoNodeError:
                return
        open_to = [a for a in acls if a.id.scheme == "world" and a.id.id == "anyone"]
        if open_to:
            raise ZooKeeperError(
                f"ZooKeeper node {path} at {self.target.hosts} is open to anyone (ACL "
                "world:anyone): restrict it to the cluster's digest credentials, or pass "
                "--insecure"
            )

    def ensure(self, path: str) -> None:
        """Create ``path`` and its missing parents with the cluster's ACL."""
        with self.errors("creating", path):
            self.client.ensure_path(path, acl=self.acl)

    def exists(self, path: str) -> bool:
        with self.errors("reading", path):
            return self.client.exists(path) is not None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop()
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> ClusterConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cluster(target: Target, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 client: KazooClient | None = None,
                 credentials: Credentials | None = None) -> ClusterConnection:
    """Connect to the cluster's ZooKeeper and check its root's ACL.

    Without ``client``, credentials are read from the target and the session timeout is the
    connect timeout (a command needs no long session). Raises ZooKeeperError when ZooKeeper
    cannot be reached within ``connect_timeout`` or the root is open; ConfigError on a bad
    auth file.
    """
    if client is None:
        credentials = target.credentials()
        client = make_client(target, credentials, session_timeout=connect_timeout)
    try:
        client.start(timeout=connect_timeout)
    except KazooTimeoutError:
        with contextlib.suppress(Exception):
            client.stop()
            client.close()
        raise ZooKeeperError(
            f"cannot reach ZooKeeper at {target.hosts} within {connect_timeout:g} s"
        ) from None
    conn = ClusterConnection(target, client, credentials)
    try:
        conn.check_acl(target.settings.root)
        conn.check_acl(conn.paths.base)
    except BaseException:
        conn.close()
        raise
    return conn


# -- the cluster file in ZooKeeper ----------------------------------------------------------


@dataclass(frozen=True)
class ConfigVersion:
    """One pushed version of the cluster file, as stored in ``config`` and ``history/``."""

    version: int
    sha256: str
    pushed_by: str
    pushed_at: str  # ISO 8601, UTC
    source: str  # the file name it was pushed from
    text: str
    rollback_of: int | None = None

    def meta(self) -> dict[str, Any]:
        """Everything but the text (what history and --json print)."""
        data = asdict(self)
        del data["text"]
        return data

    def to_bytes(self) -> bytes:
        return json.dumps({"format": _CONFIG_FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ConfigVersion:
        """Decode a znode's data. Raises ZooKeeperError naming the znode if it is not ours."""
        try:
            raw = json.loads(data.decode("utf-8"))
            if raw.get("format") != _CONFIG_FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            made = cls(
                version=int(raw["version"]), sha256=str(raw["sha256"]),
                pushed_by=str(raw["pushed_by"]), pushed_at=str(raw["pushed_at"]),
                source=str(raw["source"]), text=str(raw["text"]),
                rollback_of=None if raw.get("rollback_of") is None else int(raw["rollback_of"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ZooKeeperError(f"{where} does not hold an lvsctl cluster file: {exc}") from None
        if hashlib.sha256(made.text.encode()).hexdigest() != made.sha256:
            raise ZooKeeperError(f"{where}: the text does not match its sha256")
        return made

    def load(self) -> Loaded:
        """Validate the text again (this lvsctl's rules). Raises ConfigError."""
        return parse_cluster(self.text, f"{self.source}@v{self.version}")


@dataclass(frozen=True)
class PushResult:
    version: ConfigVersion
    changed: bool  # False: the text equals the current version's, nothing was written
    warnings: tuple[ConfigIssue, ...] = ()


class ConfigSource(Protocol):
    """What a director needs of the stored cluster file (ConfigStore is the real one)."""

    def current(self) -> ConfigVersion | None: ...

    def watch(self, callback: Callable[[ConfigVersion | None], None], *,
              on_error: Callable[[ZooKeeperError], None] | None = None) -> object: ...


def default_who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


class ConfigStore:
    """The cluster file in ZooKeeper: push with compare-and-set, history, rollback, watch."""

    def __init__(self, conn: ClusterConnection, *, keep: int = DEFAULT_KEEP,
                 clock: Callable[[], float] = time.time,
                 who: Callable[[], str] = default_who) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.conn = conn
        self.paths = conn.paths
        self.keep = keep
        self._clock = clock
        self._who = who

    # reading

    def _read(self) -> tuple[ConfigVersion, Any] | None:
        path = self.paths.config
        with self.conn.errors("reading", path):
            try:
                data, stat = self.conn.client.get(path)
            except NoNodeError:
                return None
        return ConfigVersion.from_bytes(data, path), stat

    def current(self) -> ConfigVersion | None:
        """The current version, or None when nothing was pushed yet."""
        found = self._read()
        return found[0] if found else None

    def _history_versions(self) -> list[int]:
        with self.conn.errors("listing", self.paths.history):
            try:
                names = self.conn.client.get_children(self.paths.history)
            except NoNodeError:
                return []
        return sorted(int(n) for n in names if n.isdigit())

    def history(self) -> list[ConfigVersion]:
        """The kept versions, newest first."""
        out = []
        for version in reversed(self._history_versions()):
            path = self.paths.history_entry(version)
            with self.conn.errors("reading", path):
                try:
                    data, _ = self.conn.client.get(path)
                except NoNodeError:
                    continue  # pruned by a concurrent push while we listed
            out.append(ConfigVersion.from_bytes(data, path))
        return out

    def get(self, version: int) -> ConfigVersion:
        """One kept version. Raises ZooKeeperError if it is not (or no longer) kept."""
        path = self.paths.history_entry(version)
        with self.conn.errors("reading", path):
            try:
                data, _ = self.conn.client.get(path)
            except NoNodeError:
                kept = self._history_versions()
                span = f"kept: {kept[0]}..{kept[-1]}" if kept else "no history"
                raise ZooKeeperError(
                    f"version {version} of cluster {self.paths.cluster} is not in its history "
                    f"({span})"
                ) from None
        return ConfigVersion.from_bytes(data, path)

    # writing

    def push(self, text: str, expect_version: int | None = None, *, source: str = "-",
             rollback_of: int | None = None) -> PushResult:
        """Validate ``text``, then write it as the next version with compare-and-set.

        Raises ConfigError (nothing written) when the text is not a valid cluster file of
        this cluster; ConflictError when the current version is not ``expect_version`` or
        another push won the race; ZooKeeperError for anything ZooKeeper refuses.
        """
        loaded = parse_cluster(text, source)  # an invalid file never reaches ZooKeeper
        if loaded.cluster.name != self.paths.cluster:
            raise ConfigError(source, [ConfigIssue(
                "cluster", f"is '{loaded.cluster.name}' but this is cluster "
                f"'{self.paths.cluster}' in ZooKeeper")])
        found = self._read()
        current, stat = found if found else (None, None)
        have = current.version if current else 0
        if expect_version is not None and expect_version != have:
            raise self._conflict(expect_version, have)
        sha = hashlib.sha256(text.encode()).hexdigest()
        if current is not None and current.sha256 == sha and rollback_of is None:
            return PushResult(current, False, loaded.warnings)
        kept = self._history_versions()
        made = ConfigVersion(
            version=max([have, *kept]) + 1,
            sha256=sha,
            pushed_by=self._who(),
            pushed_at=datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"),
            source=source,
            text=text,
            rollback_of=rollback_of,
        )
        data = made.to_bytes()
        if len(data) > MAX_ZNODE_BYTES:
            raise ZooKeeperError(
                f"{source}: {len(data)} bytes is more than a ZooKeeper node holds "
                f"({MAX_ZNODE_BYTES})")
        self.conn.ensure(self.paths.history)
        txn = self.conn.client.transaction()
        if stat is None:
            txn.create(self.paths.config, data, acl=self.conn.acl)
        else:
            txn.set_data(self.paths.config, data, version=stat.version)
        txn.create(self.paths.history_entry(made.version), data, acl=self.conn.acl)
        for old in kept[: max(0, len(kept) + 1 - self.keep)]:
            txn.delete(self.paths.history_entry(old))
        with self.conn.errors("writing", self.paths.config):
            results = txn.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            # The first failure is the cause; the rest are "rolled back" markers.
            cause = failed[0]
            if isinstance(cause, BadVersionError | NodeExistsError | NoNodeError):
                latest = self.current()
                raise self._conflict(have, latest.version if latest else 0, raced=True)
            with self.conn.errors("writing", self.paths.config):
                raise cause
        return PushResult(made, True, loaded.warnings)

    def rollback(self, version: int, expect_version: int | None = None) -> PushResult:
        """Push the text of a kept ``version`` again, as a new version (validated again)."""
        old = self.get(version)
        return self.push(old.text, expect_version, source=old.source, rollback_of=version)

    def _conflict(self, expected: int, found: int, raced: bool = False) -> ConflictError:
        cluster = self.paths.cluster
        if raced:
            return ConflictError(
                f"another push changed cluster {cluster} first (version {expected} is now "
                f"{found}): nothing written; check with 'lvsctl config diff' and push again"
            )
        return ConflictError(
            f"cluster {cluster} is at version {found}, not {expected} as expected: nothing "
            "written; check with 'lvsctl config diff' and push again"
        )

    # watching

    def watch(self, callback: Callable[[ConfigVersion | None], None], *,
              on_error: Callable[[ZooKeeperError], None] | None = None) -> DataWatch:
        """Call ``callback`` with the current version now and on every change (None: absent).

        The callback runs on a kazoo thread and must not block: hand the version to your own
        loop (e.g. ``loop.call_soon_threadsafe``) and return. Data that does not decode goes to
        ``on_error`` (or the log); the watch keeps going either way.
        """
        path = self.paths.config

        def changed(data: bytes | None, stat: Any, event: Any = None) -> None:
            if data is None and stat is None:
                deliver(None)
                return
            try:
                version = ConfigVersion.from_bytes(data or b"", path)
            except ZooKeeperError as exc:
                if on_error is not None:
                    on_error(exc)
                else:
                    log.error("%s", exc)
                return
            deliver(version)
            # Returning None (never False) keeps the DataWatch registered.

        def deliver(version: ConfigVersion | None) -> None:
            # A failing callback must not reach kazoo: it would retry the call without the
            # event argument on a TypeError, and log nothing useful otherwise.
            try:
                callback(version)
            except Exception:
                log.exception("config watch callback failed")

        with self.conn.errors("watching", path):
            return DataWatch(self.conn.client, path, changed)
