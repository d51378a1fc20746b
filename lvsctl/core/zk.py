"""ZooKeeper for lvsctl: the one place that makes kazoo clients and owns lvsctl's znodes.

Every command and the director daemon get their client from ``open_cluster`` (or
``make_client`` when listeners must be added before the session starts), so credentials,
ACLs, timeouts and error messages are the same everywhere. A director::

    target = Target.from_node(load_node(path))
    creds = target.credentials()
    client = make_client(target, creds, reconnect=DIRECTOR_RECONNECT)  # node's session timeout
    client.add_listener(...)                     # before the session starts
    conn = open_cluster(target, client=client, credentials=creds)
    store = ClusterStore(conn)
    store.config.watch(on_config)                # runs on a kazoo thread: do not block
    store.publish_director(record)               # blocking calls: from a worker thread
    store.append_transition(entry)

Znode layout, under ``<root>/<cluster>`` (``root`` is ``zookeeper.root``, default ``/lvsctl``);
``ClusterStore`` writes and reads every one of them, with typed records (lvsctl.core.records)::

    <root>                          created by lvsctl if missing, with the cluster's ACL
    <root>/<cluster>                the cluster's node (empty)
        config                      the current cluster file: JSON, see ConfigVersion
        history/<0000000042>        the last N versions (default 20), the current one included,
                                    each the same JSON as ``config`` was when it was current
        election/<hex>__n_<0000000007>
                                    the election queue (ElectionQueue; the Election recipe in
                                    director/election.py drives it): ephemeral sequential, data
                                    a Candidate; the lowest leads and its sequence is the epoch
        directors/<name>            each running director's DirectorRecord (ephemeral)
        transitions/t_<0000000042>  the pair's log: one TransitionRecord each, the last 200
        overrides/                  reserved: maintenance overrides (realserver drain)

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
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
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
from pydantic import TypeAdapter, ValidationError

from lvsctl.core import schema
from lvsctl.core.config import Loaded, parse_cluster, read_file_text
from lvsctl.core.errors import ConfigError, ConfigIssue, ConflictError, ZooKeeperError
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.node import Node
from lvsctl.core.records import (
    Candidate,
    DirectorRecord,
    Fields,
    Read,
    RecordError,
    Skipped,
    TransitionEntry,
    TransitionRecord,
    clip_reason,
    decode_json,
)

log = logging.getLogger(__name__)
# Library logging: kazoo's reconnect chatter goes to the daemon's handlers when it has some,
# and never to Python's last-resort stderr handler in a CLI run (one line per error, no noise).
log.addHandler(logging.NullHandler())
_kazoo_log = logging.getLogger(f"{__name__}.kazoo")
# kazoo's per-connection INFO lines ("Connecting to ...") are noise in a director's log too.
_kazoo_log.setLevel(logging.WARNING)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_KEEP = 20
TRANSITIONS_KEPT = 200
# ZooKeeper refuses a znode over jute.maxbuffer (1 MiB by default); say so before it does.
MAX_ZNODE_BYTES = 1_000_000
# ZooKeeper takes one request of at most jute.maxbuffer bytes (1,048,575 by default) and drops
# the connection otherwise ("lost the connection"). A push is one multi-op request that
# carries the record twice (config and history/N) with the paths, ACLs and pruned entries;
# ``push_request_bytes`` counts it as jute encodes it (checked against ZooKeeper 3.8: two
# 523,827-byte copies with 19 pruned entries commit, 64 bytes more do not).
ZK_MAX_REQUEST = 1_048_575
# No file above half a request fits: refused before it is even validated (what fits below
# it depends on the metadata, the paths and the ACL: push_request_bytes decides).
MAX_PUSH_FILE_BYTES = ZK_MAX_REQUEST // 2
_WHY_PUSH_BOUND = (f"a push writes it twice, to config and history/N, in one ZooKeeper request "
                   f"of at most {ZK_MAX_REQUEST} bytes (jute.maxbuffer)")
_CONFIG_FORMAT = 1
# As the cluster file's names: one path component, nothing ZooKeeper would refuse.
_ZNODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TRANSITION_PREFIX = "t_"
MAX_AUTH_FILE_BYTES = 4096
_ROOT_RULE: TypeAdapter[str] = TypeAdapter(schema.ZnodeRoot)
_HOST_RULE: TypeAdapter[str] = TypeAdapter(schema.HostPort)
_NAME_RULE: TypeAdapter[str] = TypeAdapter(schema.Name)
_TRANSITION_CHILD = re.compile(r"t_(\d{1,19})")


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
        """A director's record. Raises RecordError when ``name`` cannot be a znode's name."""
        if not _ZNODE_NAME.fullmatch(name) or name in (".", "..", "zookeeper"):
            raise RecordError(f"director name {name!r} cannot name a znode")
        return f"{self.directors}/{name}"

    @property
    def transitions(self) -> str:
        return f"{self.base}/transitions"

    def transition_entry(self, seq: int) -> str:
        return f"{self.transitions}/{_TRANSITION_PREFIX}{seq:010d}"

    @property
    def overrides(self) -> str:
        """Reserved for maintenance overrides (a drained real server); nothing writes it yet."""
        return f"{self.base}/overrides"


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
    text = read_file_text(path, limit=MAX_AUTH_FILE_BYTES)  # a regular file, one short line
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

    def __post_init__(self) -> None:
        # A node or cluster file was checked already; command-line options (--root,
        # --zookeeper, --cluster) meet the same rules here, so no path with '..' or a host
        # with a chroot reaches kazoo. Raises ZooKeeperError, one line.
        checks = [(_ROOT_RULE, self.settings.root, "ZooKeeper root"),
                  (_NAME_RULE, self.cluster, "cluster name")]
        checks += [(_HOST_RULE, host, "ZooKeeper host") for host in self.settings.hosts]
        for rule, value, what in checks:
            try:
                rule.validate_python(value)
            except ValidationError as exc:
                message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
                raise ZooKeeperError(f"{what} {value!r}: {message}") from None

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


@dataclass(frozen=True)
class Reconnect:
    """How a client retries its connection: forever, waiting ``delay`` at first, then
    ``backoff`` times longer each time, up to ``max_delay`` (seconds)."""

    delay: float
    backoff: float
    max_delay: float

    def kazoo(self) -> dict[str, float]:
        return {"max_tries": -1, "delay": self.delay, "backoff": self.backoff,
                "max_delay": self.max_delay}


# A command: how long it waits is start()'s timeout, so a modest pace will do.
COMMAND_RECONNECT = Reconnect(delay=0.1, backoff=2, max_delay=1.0)
# A director: after a whole-ensemble outage the active must be back within half a second,
# before its (restored) session can expire.
DIRECTOR_RECONNECT = Reconnect(delay=0.05, backoff=1.5, max_delay=0.5)


def make_client(target: Target, credentials: Credentials | None, *,
                session_timeout: float | None = None,
                reconnect: Reconnect = COMMAND_RECONNECT) -> KazooClient:
    """An unstarted kazoo client for ``target``; add listeners, then pass it to open_cluster.

    Every znode it creates without an explicit ACL gets the cluster's (``default_acl``).
    ``session_timeout`` defaults to the node or cluster file's; a director passes
    ``reconnect=DIRECTOR_RECONNECT``.
    """
    acl = [credentials.acl()] if credentials else OPEN_ACL_UNSAFE
    return KazooClient(
        hosts=target.hosts,
        timeout=session_timeout or target.settings.session_timeout,
        auth_data=credentials.auth_data() if credentials else None,
        default_acl=acl,
        connection_retry=reconnect.kazoo(),
        logger=SessionLog(_kazoo_log),  # keeps the negotiated session timeout (ElectionQueue)
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


def _jute_string(text: str) -> int:
    return 4 + len(text.encode())


def push_request_bytes(record: int, config_path: str, history_path: str,
                       pruned: Iterable[str], acl: Iterable[Any], config_exists: bool) -> int:
    """The size of a push's multi-op request as jute encodes it: a create (or set) of
    ``config_path`` and a create of ``history_path``, each with ``record`` bytes, and a delete
    of each ``pruned`` path."""
    acl_bytes = 4 + sum(4 + _jute_string(a.id.scheme) + _jute_string(a.id.id) for a in acl)
    op_header = 4 + 1 + 4  # MultiHeader: type, done, err
    config = op_header + _jute_string(config_path) + 4 + record + (
        4 if config_exists else acl_bytes + 4)  # set: version; create: ACL, flags
    history = op_header + _jute_string(history_path) + 4 + record + acl_bytes + 4
    deletes = sum(op_header + _jute_string(path) + 4 for path in pruned)
    return 4 + 4 + config + history + deletes + op_header  # xid, type ... the end marker


def check_push_size(size: int, source: str) -> None:
    """Raise ConfigError when a file of ``size`` bytes is more than a push can carry."""
    if size > MAX_PUSH_FILE_BYTES:
        raise ConfigError(source, [ConfigIssue(
            "", f"is {size} bytes, more than the {MAX_PUSH_FILE_BYTES} a pushed cluster file "
                f"can be: {_WHY_PUSH_BOUND}")])


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
    # Set when the push overwrote a config znode that held no readable lvsctl file: why.
    replaced: str | None = None

    def meta(self) -> dict[str, Any]:
        """Everything but the text (what history and --json print)."""
        data = asdict(self)
        del data["text"]
        return data

    def to_bytes(self) -> bytes:
        # ensure_ascii off: non-ASCII text costs its UTF-8 bytes, not a 6-byte escape each.
        return json.dumps({"format": _CONFIG_FORMAT, **asdict(self)}, sort_keys=True,
                          ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ConfigVersion:
        """Decode a znode's data, every key's type checked. Raises RecordError (a
        ZooKeeperError) naming the znode if it does not hold an lvsctl cluster file."""
        try:
            raw = decode_json(data, where, MAX_ZNODE_BYTES)
            f = Fields(raw, where)
            if raw.get("format") != _CONFIG_FORMAT:
                raise RecordError(f"unknown format {repr(raw.get('format'))[:20]}")
            made = cls(
                version=f.integer("version"), sha256=f.text("sha256"),
                pushed_by=f.text("pushed_by"), pushed_at=f.text("pushed_at"),
                source=f.text("source"), text=f.text("text"),
                rollback_of=f.integer_or_none("rollback_of"),
                replaced=f.text_or_none("replaced"),
            )
        except RecordError as exc:
            raise RecordError(f"{where} does not hold an lvsctl cluster file: "
                              f"{clip_reason(str(exc).removeprefix(f'{where}: '))}") from None
        try:
            encoded = made.text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON ("\ud800")
            raise RecordError(f"{where}: the text is not UTF-8") from None
        if hashlib.sha256(encoded).hexdigest() != made.sha256:
            raise RecordError(f"{where}: the text does not match its sha256")
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

    def _read_raw(self) -> tuple[bytes, Any] | None:
        path = self.paths.config
        with self.conn.errors("reading", path):
            try:
                data, stat = self.conn.client.get(path)
            except NoNodeError:
                return None
        return data, stat

    def _read(self) -> tuple[ConfigVersion, Any] | None:
        found = self._read_raw()
        if found is None:
            return None
        return ConfigVersion.from_bytes(found[0], self.paths.config), found[1]

    def current(self) -> ConfigVersion | None:
        """The current version, or None when nothing was pushed yet. Raises RecordError
        when the config znode does not hold an lvsctl cluster file."""
        found = self._read()
        return found[0] if found else None

    def _history_versions(self) -> list[int]:
        with self.conn.errors("listing", self.paths.history):
            try:
                names = self.conn.client.get_children(self.paths.history)
            except NoNodeError:
                return []
        return sorted(int(n) for n in names if n.isascii() and n.isdigit() and len(n) < 19)

    def history_read(self) -> Read[ConfigVersion]:
        """The kept versions, newest first, and the entries that are not readable."""
        out: list[ConfigVersion] = []
        skipped: list[Skipped] = []
        for version in reversed(self._history_versions()):
            path = self.paths.history_entry(version)
            with self.conn.errors("reading", path):
                try:
                    data, _ = self.conn.client.get(path)
                except NoNodeError:
                    continue  # pruned by a concurrent push while we listed
            try:
                out.append(ConfigVersion.from_bytes(data, path))
            except RecordError as exc:
                skipped.append(Skipped(path, str(exc)))
        return Read(tuple(out), tuple(skipped))

    def history(self) -> list[ConfigVersion]:
        """The kept versions that are readable, newest first."""
        return list(self.history_read().items)

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
             rollback_of: int | None = None, validate: bool = True,
             replace_unreadable: bool = False) -> PushResult:
        """Validate ``text``, then write it as the next version with compare-and-set.

        Raises ConfigError (nothing written) when the text is not a valid cluster file of
        this cluster or is larger than a push can carry (MAX_PUSH_FILE_BYTES, and
        ZK_MAX_REQUEST for the whole request); ConflictError when the current version is not
        ``expect_version`` or another push won the race; RecordError when the config znode
        does not hold an lvsctl file, unless ``replace_unreadable`` (then it is overwritten,
        still with compare-and-set, and the new version says what it replaced);
        ZooKeeperError for anything ZooKeeper refuses.
        ``validate=False`` writes the text unchecked, as a writer with other rules (another
        lvsctl version) could: tests use it to show that a director refuses such a config.
        """
        check_push_size(len(text.encode()), source)  # before the (slower) validation
        warnings: tuple[ConfigIssue, ...] = ()
        if validate:
            loaded = parse_cluster(text, source)  # an invalid file never reaches ZooKeeper
            if loaded.cluster.name != self.paths.cluster:
                raise ConfigError(source, [ConfigIssue(
                    "cluster", f"is '{loaded.cluster.name}' but this is cluster "
                    f"'{self.paths.cluster}' in ZooKeeper")])
            warnings = loaded.warnings
        replaced = None
        raw = self._read_raw()
        stat = None if raw is None else raw[1]
        current = None
        if raw is not None:
            try:
                current = ConfigVersion.from_bytes(raw[0], self.paths.config)
            except RecordError as exc:
                if not replace_unreadable:
                    raise RecordError(f"{exc} (to overwrite it: lvsctl config push "
                                      "--replace-unreadable FILE)") from None
                if expect_version is not None:
                    raise ConflictError(
                        f"{self.paths.config} is unreadable, so its version is unknown: "
                        "nothing written; push --replace-unreadable without "
                        "--expect-version") from None
                replaced = clip_reason(f"an unreadable config znode ({len(raw[0])} bytes): "
                                       f"{exc}")
        have = current.version if current else 0
        if expect_version is not None and expect_version != have:
            raise self._conflict(expect_version, have)
        sha = hashlib.sha256(text.encode()).hexdigest()
        if current is not None and current.sha256 == sha and rollback_of is None:
            return PushResult(current, False, warnings)
        kept = self._history_versions()
        made = ConfigVersion(
            version=max([have, *kept]) + 1,
            sha256=sha,
            pushed_by=self._who(),
            pushed_at=datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"),
            source=source,
            text=text,
            rollback_of=rollback_of,
            replaced=replaced,
        )
        data = made.to_bytes()
        pruned = [self.paths.history_entry(old)
                  for old in kept[: max(0, len(kept) + 1 - self.keep)]]
        request = push_request_bytes(len(data), self.paths.config,
                                     self.paths.history_entry(made.version), pruned,
                                     self.conn.acl, stat is not None)
        if request > ZK_MAX_REQUEST:
            raise ConfigError(source, [ConfigIssue(
                "", f"is {len(data)} bytes once stored (metadata and JSON escapes included): "
                    f"the push would be one ZooKeeper request of {request} bytes, more than "
                    f"the {ZK_MAX_REQUEST} ZooKeeper takes (jute.maxbuffer); it carries the "
                    "file twice, in config and history/N")])
        self.conn.ensure(self.paths.history)
        txn = self.conn.client.transaction()
        if stat is None:
            txn.create(self.paths.config, data, acl=self.conn.acl)
        else:
            txn.set_data(self.paths.config, data, version=stat.version)
        txn.create(self.paths.history_entry(made.version), data, acl=self.conn.acl)
        for path in pruned:
            txn.delete(path)
        with self.conn.errors("writing", self.paths.config):
            results = txn.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            # The first failure is the cause; the rest are "rolled back" markers.
            cause = failed[0]
            if isinstance(cause, BadVersionError | NodeExistsError | NoNodeError):
                latest = self._read_raw()
                found = 0
                if latest is not None:
                    with contextlib.suppress(RecordError):
                        found = ConfigVersion.from_bytes(latest[0], self.paths.config).version
                raise self._conflict(have, found, raced=True)
            with self.conn.errors("writing", self.paths.config):
                raise cause
        return PushResult(made, True, warnings)

    def rollback(self, version: int, expect_version: int | None = None, *,
                 replace_unreadable: bool = False) -> PushResult:
        """Push the text of a kept ``version`` again, as a new version (validated again).
        Raises RecordError naming the readable versions when that one is unreadable."""
        try:
            old = self.get(version)
        except RecordError as exc:
            readable = [v.version for v in self.history_read().items]
            kept = ", ".join(map(str, readable)) if readable else "none"
            raise RecordError(f"{exc}; readable versions: {kept}") from None
        return self.push(old.text, expect_version, source=old.source, rollback_of=version,
                         replace_unreadable=replace_unreadable)

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


# -- the election queue -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    """One candidate in the election queue: its znode's name and sequence number (epoch)."""

    znode: str
    epoch: int


@dataclass(frozen=True)
class Leader:
    """Who leads: the lowest entry of the election queue (DESIGN.md "Leadership rules").

    ``director`` is the name its znode holds (None when the data is not a Candidate),
    ``epoch`` its sequence number, ``joined`` when the znode was created (wall seconds: it
    leads since then or since the entries ahead of it left), ``owner`` the ZooKeeper session
    that owns it (``ephemeralOwner``).
    """

    director: str | None
    epoch: int
    znode: str
    joined: float
    owner: int


@dataclass(frozen=True)
class Session:
    """A client's ZooKeeper session as the server granted it: its id (what an ephemeral
    znode's ``ephemeralOwner`` holds) and the **negotiated** timeout in seconds (the server
    clamps the requested one to ``[minSessionTimeout, maxSessionTimeout]``)."""

    id: int
    timeout: float


class SessionLog(logging.LoggerAdapter):
    """kazoo's logger for lvsctl's clients: passes every line on, and keeps the session
    timeout the server negotiated, which kazoo 2.11 only logs ("Session created ...",
    arguments: session id, password, negotiated timeout in ms, ...). ``make_client`` installs
    it; ``ElectionQueue.session`` reads it."""

    negotiated: tuple[int, float] | None = None  # (session id, seconds)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if (isinstance(msg, str) and msg.startswith("Session created") and len(args) >= 3
                and isinstance(args[0], int) and isinstance(args[2], int | float)):
            self.negotiated = (args[0], args[2] / 1000.0)
        super().log(level, msg, *args, **kwargs)


_QUEUE_MARK = "__n_"
_QUEUE_CHILD = re.compile(r"(?P<prefix>.*)__n_(?P<seq>\d{1,19})")
_LEADER_TRIES = 5


class ElectionQueue:
    """The election queue's znodes: their names, their data, reading who leads.

    The znodes are kazoo's Lock recipe layout: ``<prefix>__n_<sequence>``, ephemeral and
    sequential, the lowest sequence first. The Election recipe (director/election.py) drives
    the queue through the ``*_async`` calls (kazoo IAsyncResults it awaits on its loop);
    commands read it with ``entries()`` and ``leader()``. ``acl`` None: the client's
    default ACL, which ``make_client`` sets to the cluster's.
    """

    def __init__(self, client: KazooClient, path: str, acl: list[Any] | None = None) -> None:
        self.client = client
        self.path = path
        self.acl = acl

    # names

    @staticmethod
    def new_prefix() -> str:
        """A prefix unique to one candidate, so it can find its znode after a lost reply."""
        return uuid.uuid4().hex

    @staticmethod
    def sequence(znode: str) -> int | None:
        """The sequence number (epoch) of a queue entry's name; None if it is not one."""
        match = _QUEUE_CHILD.fullmatch(znode)
        return int(match["seq"]) if match else None

    @classmethod
    def order(cls, children: Iterable[str]) -> list[QueueEntry]:
        """The queue entries among ``children``, the leader first; other names are ignored."""
        entries = []
        for child in children:
            seq = cls.sequence(child)
            if seq is not None:
                entries.append(QueueEntry(child, seq))
        return sorted(entries, key=lambda e: e.epoch)

    @staticmethod
    def owned(children: Iterable[str], prefix: str) -> str | None:
        """The child created with ``prefix``, if any."""
        for child in children:
            match = _QUEUE_CHILD.fullmatch(child)
            if match and match["prefix"] == prefix:
                return child
        return None

    def entry_path(self, znode: str) -> str:
        return f"{self.path}/{znode}"

    # the recipe's calls (asynchronous: kazoo IAsyncResult)

    def ensure_async(self) -> Any:
        """Create the queue's node (and parents) if missing."""
        return self.client.ensure_path_async(self.path, acl=self.acl)

    def join_async(self, prefix: str, director: str) -> Any:
        """Queue ``director``: an ephemeral sequential znode; the result is its full path."""
        return self.client.create_async(
            f"{self.path}/{prefix}{_QUEUE_MARK}", Candidate(director).to_bytes(),
            acl=self.acl, ephemeral=True, sequence=True)

    def children_async(self) -> Any:
        return self.client.get_children_async(self.path)

    def exists_async(self, znode: str | None = None, watch: Callable[..., Any] | None = None,
                     ) -> Any:
        """A round trip: the stat of an entry (or of the queue's node), optionally watched."""
        path = self.path if znode is None else self.entry_path(znode)
        return self.client.exists_async(path, watch=watch)

    def delete_async(self, znode: str) -> Any:
        return self.client.delete_async(self.entry_path(znode))

    def sync_async(self) -> Any:
        """``sync`` the queue's node: the server the client talks to catches up with the
        ensemble's leader first. A read sent right after it on the same session (ZooKeeper
        answers one session's requests in order) is linearizable from the sync's send time."""
        return self.client.sync_async(self.path)

    def session(self) -> Session | None:
        """The client's current session and its negotiated timeout; None while it has none,
        or when the client was not made by ``make_client`` (the timeout is then unknown)."""
        session_id = self.client.client_id[0] if self.client.client_id else None
        negotiated = getattr(self.client.logger, "negotiated", None)
        if session_id is None or negotiated is None or negotiated[0] != session_id:
            return None
        return Session(session_id, negotiated[1])

    @staticmethod
    def owns(stat: Any, session: Session) -> bool:
        """Does a queue entry's stat (None: the znode is gone) say ``session`` owns it?
        A deleted znode, or one recreated by anyone else, is no leadership (CURATOR-696)."""
        return stat is not None and stat.ephemeralOwner == session.id

    @staticmethod
    def created_name(path: str) -> str:
        """The entry's name from the full path a create returned."""
        return path.rsplit("/", 1)[1]

    # reading (blocking)

    def entries(self) -> list[QueueEntry]:
        """The queue, leader first (empty when nobody stands)."""
        try:
            return self.order(self.client.get_children(self.path))
        except NoNodeError:
            return []

    def join(self, director: str) -> QueueEntry:
        """Queue ``director`` on this client's session (blocking: for tools and tests)."""
        self.client.ensure_path(self.path, acl=self.acl)
        created = self.join_async(self.new_prefix(), director).get()
        name = self.created_name(created)
        seq = self.sequence(name)
        assert seq is not None
        return QueueEntry(name, seq)

    def leader(self) -> Leader | None:
        """Who leads now, or None when the queue is empty.

        ``sync`` first: a server cut off from the ensemble's leader may answer reads from a
        stale view for seconds. Raises ZooKeeperError when the queue's head keeps leaving
        between the listing and the read (more than a few times in a row).
        """
        with contextlib.suppress(NoNodeError):
            self.client.sync(self.path)
        for _ in range(_LEADER_TRIES):
            entries = self.entries()
            if not entries:
                return None
            head = entries[0]
            try:
                data, stat = self.client.get(self.entry_path(head.znode))
            except NoNodeError:
                continue  # it left between the listing and the read: look again
            try:
                director: str | None = Candidate.from_bytes(
                    data, self.entry_path(head.znode)).director
            except RecordError as exc:
                log.warning("%s", exc)
                director = None
            return Leader(director, head.epoch, head.znode, stat.ctime / 1000.0,
                          stat.ephemeralOwner)
        raise ZooKeeperError(f"the election queue {self.path} kept changing while read")


# -- everything of one cluster ----------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """What ``status`` shows, read at once: who leads, the directors' records, the log."""

    leader: Leader | None
    queue: tuple[QueueEntry, ...]
    directors: Read[DirectorRecord]
    transitions: Read[TransitionEntry]

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.directors.skipped + self.transitions.skipped


class ClusterStore:
    """Every znode of one cluster (see the module docstring), written and read here only.

    ``config`` is the cluster file (ConfigStore), ``election`` the election queue; director
    records and transitions are written and read by the methods below. Every write carries
    the cluster's ACL. The calls block: a daemon makes them from a worker thread.
    """

    def __init__(self, conn: ClusterConnection, *, keep: int = DEFAULT_KEEP,
                 clock: Callable[[], float] = time.time,
                 who: Callable[[], str] = default_who) -> None:
        self.conn = conn
        self.paths = conn.paths
        self.config = ConfigStore(conn, keep=keep, clock=clock, who=who)
        self.election = ElectionQueue(conn.client, self.paths.election, acl=conn.acl)

    # the election

    def leader(self) -> Leader | None:
        """Who leads (the one definition every command uses); see ElectionQueue.leader."""
        with self.conn.errors("reading", self.paths.election):
            return self.election.leader()

    def queue(self) -> list[QueueEntry]:
        """The election queue, leader first."""
        with self.conn.errors("listing", self.paths.election):
            return self.election.entries()

    # director records

    def publish_director(self, record: DirectorRecord) -> None:
        """Create or replace ``directors/<record.director>`` as an ephemeral znode of this
        session (it goes when the session does).

        A record left by an earlier session of the same director (not expired yet) is
        replaced, so that ours does not vanish with it. Raises RecordError when the record is
        too large, ZooKeeperError when ZooKeeper refuses.
        """
        path = self.paths.director(record.director)
        data = record.to_bytes()
        client = self.conn.client
        with self.conn.errors("writing", path):
            self.conn.ensure(self.paths.directors)
            for _ in range(3):
                try:
                    client.create(path, data, acl=self.conn.acl, ephemeral=True)
                    return
                except NodeExistsError:
                    pass
                try:
                    stat = client.exists(path)
                    if stat is None:
                        continue
                    if stat.ephemeralOwner == client.client_id[0]:
                        client.set(path, data)
                        return
                    client.delete(path, version=stat.version)
                except (NoNodeError, BadVersionError):
                    continue  # changed under us: try again
        raise ZooKeeperError(f"{path} kept changing while publishing the record")

    def director(self, name: str) -> DirectorRecord | None:
        """One director's record; None when it publishes none. Raises RecordError when the
        znode holds something else."""
        path = self.paths.director(name)
        with self.conn.errors("reading", path):
            try:
                data, _ = self.conn.client.get(path)
            except NoNodeError:
                return None
        return DirectorRecord.from_bytes(data, path)

    def directors(self) -> Read[DirectorRecord]:
        """Every published record, by name; znodes that hold something else are skipped."""
        records, skipped = [], []
        for name in self._children(self.paths.directors):
            path = f"{self.paths.directors}/{name}"
            data = self._get(path)
            if data is None:
                continue  # its director stopped while we listed
            try:
                record = DirectorRecord.from_bytes(data, path)
                if record.director != name:
                    raise RecordError(f"{path}: the record is of director {record.director}")
            except RecordError as exc:
                skipped.append(Skipped(path, str(exc)))
                continue
            records.append(record)
        return Read(tuple(records), tuple(skipped))

    # transitions

    def append_transition(self, record: TransitionRecord, *,
                          keep: int = TRANSITIONS_KEPT) -> int:
        """Append ``record`` to the log and trim the log to the last ``keep``; returns its
        sequence number. Raises RecordError (too large), ZooKeeperError."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        data = record.to_bytes()
        path = self.paths.transitions
        with self.conn.errors("writing", path):
            self.conn.ensure(path)
            created = self.conn.client.create(f"{path}/{_TRANSITION_PREFIX}", data,
                                              acl=self.conn.acl, sequence=True)
            seqs = self._transition_seqs()[0]
            for old in seqs[:-keep]:
                with contextlib.suppress(NoNodeError):  # trimmed by the other director
                    self.conn.client.delete(self.paths.transition_entry(old))
        match = _TRANSITION_CHILD.fullmatch(created.rsplit("/", 1)[1])
        assert match is not None
        return int(match[1])

    def transitions(self, *, last: int | None = None,
                    after: int | None = None) -> Read[TransitionEntry]:
        """The log, oldest first: only entries after sequence ``after``, only the ``last``
        ones. Znodes that are not a record are skipped (and counted)."""
        seqs, skipped = self._transition_seqs()
        if after is not None:
            seqs = [s for s in seqs if s > after]
        if last is not None:
            seqs = seqs[-last:] if last > 0 else []
        entries = []
        for seq in seqs:
            path = self.paths.transition_entry(seq)
            data = self._get(path)
            if data is None:
                continue  # trimmed while we listed
            try:
                entries.append(TransitionEntry(seq, TransitionRecord.from_bytes(data, path)))
            except RecordError as exc:
                skipped.append(Skipped(path, str(exc)))
        return Read(tuple(entries), tuple(skipped))

    def _transition_seqs(self) -> tuple[list[int], list[Skipped]]:
        seqs, foreign = [], []
        for child in self._children(self.paths.transitions):
            match = _TRANSITION_CHILD.fullmatch(child)
            if match is None:
                path = f"{self.paths.transitions}/{child}"
                foreign.append(Skipped(path, f"{path}: not a transition record's name "
                                             "(t_<N>)"))
            else:
                seqs.append(int(match[1]))
        return sorted(seqs), foreign

    # everything status shows

    def overview(self, transitions: int = 10) -> Overview:
        """The leader, the queue, every director record and the last ``transitions``."""
        return Overview(self.leader(), tuple(self.queue()), self.directors(),
                        self.transitions(last=transitions))

    # plumbing

    def _children(self, path: str) -> list[str]:
        with self.conn.errors("listing", path):
            try:
                return sorted(self.conn.client.get_children(path))
            except NoNodeError:
                return []

    def _get(self, path: str) -> bytes | None:
        with self.conn.errors("reading", path):
            try:
                data, _ = self.conn.client.get(path)
            except NoNodeError:
                return None
        return bytes(data or b"")
