"""A simulated ZooKeeper ensemble and a kazoo-like client, on the simulation's virtual clock.

Only what lvsctl's election and lease code use, with ZooKeeper's rules for it (held to the real
server by tests/simulation/test_zookeeper_contract.py):

- a tree of znodes with ephemeral and sequential creates (the suffix counts the parent's
  creates, ten digits), ``exists``/``get``/``get_children`` with one-shot watches,
  ``delete``, ``set``, ``sync``; the errors kazoo raises (NoNodeError, NodeExistsError,
  NotEmptyError, BadVersionError, ConnectionLoss, SessionExpiredError);
- sessions negotiated to ``[min_session, max_session]`` (default 2 and 20 ticks), expired by
  the leader in tick buckets once nothing was heard for the negotiated timeout (a follower
  passes a touch on within half a tick), their ephemerals deleted with them; a new leader
  gives every open session a full timeout again;
- one leader that orders every write; followers that apply the log after a lag, answer reads
  from what they applied (a write or a ``sync`` is answered only once they caught up) and, when
  cut off from the leader, keep answering reads from their stale view for
  ``sync_limit × tick`` before they drop their clients;
- per connection, requests are answered in order; a client notices a dead connection as
  kazoo does (a ping unanswered within half its read timeout, the read timeout being 2/3 of the
  negotiated session timeout), reconnects with kazoo's retry policy and re-registers its watches;
  a session found expired on reconnect is LOST (watches fire with type NONE) and a new one
  is made.

Packets between a client's host and a server take ``latency``; a partition holds them (TCP
retransmits) until it heals, unless the connection is gone by then.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.protocol.states import EventType, KazooState, WatchedEvent, ZnodeStat

from lvsctl.testbed.sim.clock import Agenda

BLATHER = 5  # kazoo's own log level below DEBUG (kazoo.loggingsupport)


# -- the tree --------------------------------------------------------------------------------


@dataclass
class ZNode:
    data: bytes
    owner: int  # ephemeralOwner: the session id, 0 for a persistent node
    czxid: int
    mzxid: int
    ctime: float
    version: int = 0
    cversion: int = 0
    pzxid: int = 0
    sequence: int = 0  # the next sequential child's suffix: counts creates only
    children: set[str] = field(default_factory=set)

    def stat(self) -> ZnodeStat:
        ms = int(self.ctime * 1000)
        return ZnodeStat(self.czxid, self.mzxid, ms, ms, self.version, self.cversion, 0,
                         self.owner, len(self.data), len(self.children), self.pzxid)


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Txn:
    """One committed change, in the leader's order."""

    zxid: int
    kind: str  # "create", "delete", "set", "close_session"
    path: str = ""
    data: bytes = b""
    owner: int = 0
    at: float = 0.0


class Tree:
    """One server's copy of the data, at the zxid it applied last."""

    def __init__(self) -> None:
        self.nodes: dict[str, ZNode] = {"/": ZNode(b"", 0, 0, 0, 0.0)}
        self.zxid = 0

    def apply(self, txn: Txn) -> list[tuple[str, str, int]]:
        """Apply ``txn``; returns the watch events it causes: (path, kind, EventType)."""
        self.zxid = txn.zxid
        events: list[tuple[str, str, int]] = []
        if txn.kind == "create":
            parent = self.nodes[_parent(txn.path)]
            parent.children.add(_name(txn.path))
            parent.cversion += 1
            parent.sequence += 1
            parent.pzxid = txn.zxid
            self.nodes[txn.path] = ZNode(txn.data, txn.owner, txn.zxid, txn.zxid, txn.at,
                                         pzxid=txn.zxid)
            events += [(txn.path, "data", EventType.CREATED),
                       (_parent(txn.path), "child", EventType.CHILD)]
        elif txn.kind == "delete":
            events += self._delete(txn.path, txn.zxid)
        elif txn.kind == "set":
            node = self.nodes[txn.path]
            node.data, node.mzxid = txn.data, txn.zxid
            node.version += 1
            events.append((txn.path, "data", EventType.CHANGED))
        elif txn.kind == "close_session":
            for path in sorted(p for p, n in self.nodes.items() if n.owner == txn.owner):
                events += self._delete(path, txn.zxid)
        return events

    def _delete(self, path: str, zxid: int) -> list[tuple[str, str, int]]:
        del self.nodes[path]
        parent = self.nodes[_parent(path)]
        parent.children.discard(_name(path))
        parent.cversion += 1
        parent.pzxid = zxid
        return [(path, "data", EventType.DELETED), (path, "child", EventType.DELETED),
                (_parent(path), "child", EventType.CHILD)]


# -- the ensemble ----------------------------------------------------------------------------


class ClientHost(Protocol):
    """The simulated process a client lives in: its threads run only while it runs."""

    @property
    def name(self) -> str: ...

    def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the process now, when it resumes if frozen, never if it died."""


@dataclass
class Session:
    sid: int
    passwd: bytes
    timeout: float  # negotiated, seconds
    expires_at: float
    open: bool = True


@dataclass
class Request:
    xid: int
    op: str
    args: tuple[Any, ...]
    watch: bool = False


@dataclass
class Connection:
    """One TCP connection from a client to a server."""

    cid: int
    client: SimKazooClient
    server: Server
    open: bool = True
    queue: deque[Request] = field(default_factory=deque)  # the server's FIFO for it
    busy: bool = False


@dataclass
class Server:
    sid: int
    tree: Tree = field(default_factory=Tree)
    up: bool = True
    isolated_at: float | None = None  # cut off from the other servers since
    lag: float = 0.001  # how long a committed txn takes to reach this server
    conns: set[int] = field(default_factory=set)
    watches: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    waiters: list[tuple[int, Callable[[], None]]] = field(default_factory=list)


class SimZooKeeper:
    """The ensemble; see the module docstring. ``servers`` 1 is a standalone server."""

    def __init__(self, agenda: Agenda, rng: random.Random, *, servers: int = 3,
                 tick: float = 0.2, sync_limit: int = 5, min_session: float | None = None,
                 max_session: float | None = None, latency: tuple[float, float] = (0.0002, 0.002),
                 election_delay: float = 0.4) -> None:
        self.agenda = agenda
        self.rng = rng
        self.tick = tick
        self.sync_limit = sync_limit
        self.min_session = 2 * tick if min_session is None else min_session
        self.max_session = 20 * tick if max_session is None else max_session
        self.latency = latency
        self.election_delay = election_delay
        self.servers = [Server(i) for i in range(servers)]
        self.leader: int | None = 0
        self.log: list[Txn] = []
        self.sessions: dict[int, Session] = {}
        self.blocked: set[tuple[str, int]] = set()  # (client host, server) partitions
        self._held: dict[tuple[str, int], list[Callable[[], None]]] = {}
        self._conns: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._session_ids = itertools.count(0x100000001)
        self._electing = False
        self.expired: list[tuple[float, int]] = []  # (when, session id): for the report
        self.agenda.after(self.tick, self._expiry_tick)

    # -- state of the ensemble ---------------------------------------------------------------

    @property
    def zxid(self) -> int:
        return self.log[-1].zxid if self.log else 0

    def _linked(self, server: Server) -> bool:
        """In touch with the leader (the leader itself included)."""
        if self.leader is None or not server.up:
            return False
        if server.sid == self.leader:
            return True
        return server.isolated_at is None and self.servers[self.leader].isolated_at is None

    def has_quorum(self) -> bool:
        if self.leader is None:
            return False
        linked = sum(1 for s in self.servers if self._linked(s))
        return linked * 2 > len(self.servers)

    def serving(self, server: Server) -> bool:
        """Whether ``server`` answers clients: in a working ensemble, or cut off recently."""
        if not server.up:
            return False
        if self._linked(server) and self.has_quorum():
            return True
        if server.isolated_at is not None and server.sid != self.leader:
            return self.agenda.now - server.isolated_at < self.sync_limit * self.tick
        return False

    # -- faults --------------------------------------------------------------------------------

    def isolate(self, index: int) -> None:
        """Cut server ``index`` off from the others (its clients still reach it)."""
        server = self.servers[index]
        server.isolated_at = self.agenda.now
        self._after_membership_change()
        # It notices after sync_limit ticks without its leader and drops its clients.
        self.agenda.after(self.sync_limit * self.tick + 1e-6, self._check_serving)

    def rejoin(self, index: int) -> None:
        server = self.servers[index]
        server.isolated_at = None
        self._catch_up(server)
        self._after_membership_change()

    def crash(self, index: int) -> None:
        server = self.servers[index]
        server.up = False
        server.watches.clear()
        for cid in list(server.conns):
            self._close(self._conns[cid], notify=True)
        self._after_membership_change()

    def restart(self, index: int) -> None:
        server = self.servers[index]
        server.up = True
        self._catch_up(server)
        self._after_membership_change()

    def set_lag(self, index: int, lag: float) -> None:
        self.servers[index].lag = lag

    def block(self, host: str, index: int) -> None:
        self.blocked.add((host, index))

    def unblock(self, host: str, index: int) -> None:
        self.blocked.discard((host, index))
        for deliver in self._held.pop((host, index), []):
            deliver()

    def delete_head(self, parent: str) -> str | None:
        """An operator's (or a foreign writer's) delete of the lowest child of ``parent``;
        returns its path, or None when there is nothing to delete or no quorum."""
        if not self.has_quorum() or self.leader is None:
            return None
        tree = self.servers[self.leader].tree
        node = tree.nodes.get(parent)
        if node is None or not node.children:
            return None
        head = min(node.children, key=lambda c: (c[-10:], c))
        path = f"{parent.rstrip('/')}/{head}"
        self._commit(Txn(self.zxid + 1, "delete", path, at=self.agenda.now))
        return path

    def _after_membership_change(self) -> None:
        if self.leader is not None and not (self.servers[self.leader].up and self.has_quorum()):
            self.leader = None
        if self.leader is None and not self._electing:
            self._electing = True
            self.agenda.after(self.election_delay, self._elect)
        self._check_serving()

    def _elect(self) -> None:
        self._electing = False
        if self.leader is not None:
            return
        candidates = [s for s in self.servers if s.up and s.isolated_at is None]
        if len(candidates) * 2 <= len(self.servers):
            self._electing = True
            self.agenda.after(self.election_delay, self._elect)
            return
        self.leader = candidates[0].sid
        for server in candidates:
            self._catch_up(server)
        # A new leader restores every open session with a full timeout.
        for session in self.sessions.values():
            if session.open:
                session.expires_at = self._bucket(self.agenda.now + session.timeout)
        self._check_serving()

    def _check_serving(self) -> None:
        for server in self.servers:
            if not self.serving(server):
                for cid in list(server.conns):
                    self._close(self._conns[cid], notify=True)
                server.watches.clear()

    # -- sessions ------------------------------------------------------------------------------

    def run_until(self, ready: Callable[[], bool], limit: float = 60.0) -> None:
        """Run the ensemble's events (and the clients') until ``ready()`` or ``limit``
        simulated seconds passed: for tests that drive a client directly."""
        end = self.agenda.now + limit
        while not ready():
            event = self.agenda.pop_due()
            if event is not None:
                event.fn()
                continue
            upcoming = self.agenda.next_time()
            if upcoming is None or upcoming > end:
                raise TimeoutError(f"not ready after {limit:g} simulated seconds")
            self.agenda.now = upcoming

    def negotiate(self, requested: float) -> float:
        return min(max(requested, self.min_session), self.max_session)

    def _bucket(self, when: float) -> float:
        return math.ceil(when / self.tick - 1e-9) * self.tick

    def _touch(self, sid: int) -> None:
        session = self.sessions.get(sid)
        if session is not None and session.open and self.leader is not None:
            session.expires_at = max(session.expires_at,
                                     self._bucket(self.agenda.now + session.timeout))

    def _touch_from(self, server: Server, sid: int) -> None:
        if server.sid == self.leader:
            self._touch(sid)
        elif self._linked(server):
            # A follower reports its sessions on its next ping from the leader.
            delay = self.rng.uniform(0, self.tick / 2)
            self.agenda.after(delay, lambda: self._touch(sid)
                              if self._linked(server) else None)

    def _expiry_tick(self) -> None:
        self.agenda.after(self.tick, self._expiry_tick)
        if not self.has_quorum():
            return
        for session in list(self.sessions.values()):
            if session.open and session.expires_at <= self.agenda.now + 1e-9:
                self._end_session(session)
                self.expired.append((self.agenda.now, session.sid))

    def _end_session(self, session: Session) -> None:
        session.open = False
        self._commit(Txn(self.zxid + 1, "close_session", owner=session.sid, at=self.agenda.now))
        # Servers in touch with the leader close its connections; a cut-off one knows nothing.
        for conn in list(self._conns.values()):
            if conn.open and conn.client.session_id == session.sid and self._linked(conn.server):
                self._close(conn, notify=True)

    # -- the log -------------------------------------------------------------------------------

    def _commit(self, txn: Txn) -> None:
        self.log.append(txn)
        assert self.leader is not None
        for server in self.servers:
            if server.sid == self.leader:
                self._apply_to(server, txn.zxid)
            elif self._linked(server):
                self.agenda.after(server.lag, functools.partial(self._apply_if_linked, server,
                                                                txn.zxid))

    def _apply_if_linked(self, server: Server, zxid: int) -> None:
        if self._linked(server):
            self._apply_to(server, zxid)

    def _catch_up(self, server: Server) -> None:
        if server.up:
            self._apply_to(server, self.zxid)

    def _apply_to(self, server: Server, zxid: int) -> None:
        while server.tree.zxid < zxid and server.tree.zxid < self.zxid:
            txn = self.log[server.tree.zxid]  # zxid n is log[n-1]: the next one to apply
            for path, kind, etype in server.tree.apply(txn):
                self._fire(server, path, kind, etype)
        ready = [w for w in server.waiters if w[0] <= server.tree.zxid]
        server.waiters = [w for w in server.waiters if w[0] > server.tree.zxid]
        for _, fn in ready:
            fn()

    def _when_applied(self, server: Server, zxid: int, fn: Callable[[], None]) -> None:
        if server.tree.zxid >= zxid:
            fn()
        else:
            server.waiters.append((zxid, fn))

    def _fire(self, server: Server, path: str, kind: str, etype: int) -> None:
        for cid in server.watches.pop((path, kind), set()):
            conn = self._conns.get(cid)
            if conn is not None and conn.open:
                self._to_client(conn, functools.partial(conn.client._on_watch, conn, path, kind,
                                                        etype))

    # -- the wire ------------------------------------------------------------------------------

    def _wire(self, host: str, index: int, deliver: Callable[[], None]) -> None:
        delay = self.rng.uniform(*self.latency)

        def arrive() -> None:
            if (host, index) in self.blocked:
                self._held.setdefault((host, index), []).append(deliver)
            else:
                deliver()

        if (host, index) in self.blocked:
            self._held.setdefault((host, index), []).append(
                functools.partial(self._after_none, delay, arrive))
        else:
            self.agenda.after(delay, arrive)

    def _after_none(self, delay: float, fn: Callable[[], None]) -> None:
        self.agenda.after(delay, fn)

    def _to_server(self, conn: Connection, fn: Callable[[], None]) -> None:
        def deliver() -> None:
            if conn.open and conn.server.up:
                fn()

        self._wire(conn.client.host.name, conn.server.sid, deliver)

    def _to_client(self, conn: Connection, fn: Callable[[], None]) -> None:
        def deliver() -> None:
            if conn.open:
                conn.client.host.run(fn)

        self._wire(conn.client.host.name, conn.server.sid, deliver)

    def _close(self, conn: Connection, *, notify: bool) -> None:
        if not conn.open:
            return
        conn.open = False
        conn.server.conns.discard(conn.cid)
        for key in list(conn.server.watches):
            conn.server.watches[key].discard(conn.cid)
        if notify:
            # The FIN (or RST) reaches the client like any packet.
            self._wire(conn.client.host.name, conn.server.sid,
                       lambda: conn.client.host.run(lambda: conn.client._closed_by_server(conn)))

    # -- handshakes ----------------------------------------------------------------------------

    def connect(self, client: SimKazooClient, index: int,
                done: Callable[[Connection | None, str], None]) -> None:
        """A client's connection attempt to server ``index``; ``done(conn, outcome)`` runs in
        the client's process: outcome "ok", "expired", "refused" or "timeout"."""
        host = client.host.name
        server = self.servers[index]
        timeout = client.connect_timeout()
        if (host, index) in self.blocked:
            self.agenda.after(timeout, lambda: client.host.run(lambda: done(None, "timeout")))
            return

        def at_server() -> None:
            linked = self._linked(server) and self.has_quorum()
            if not server.up or not linked:
                # Down: refused. Cut off from its leader: it cannot validate a session.
                self._wire(host, index, lambda: client.host.run(lambda: done(None, "refused")))
                return
            sid = client.session_id
            if sid is not None:
                session = self.sessions.get(sid)
                if session is None or not session.open or session.passwd != client.passwd:
                    self._wire(host, index,
                               lambda: client.host.run(lambda: done(None, "expired")))
                    return
            else:
                sid = next(self._session_ids)
                passwd = self.rng.randbytes(16)
                timeout_s = self.negotiate(client.requested_timeout)
                self.sessions[sid] = Session(sid, passwd, timeout_s,
                                             self._bucket(self.agenda.now + timeout_s))
            session = self.sessions[sid]
            self._touch_from(server, sid)
            conn = Connection(next(self._ids), client, server)
            self._conns[conn.cid] = conn
            server.conns.add(conn.cid)
            grant = (sid, session.passwd, session.timeout, server.tree.zxid)
            self._wire(host, index,
                       lambda: client.host.run(lambda: client._handshake(conn, grant, done)))

        self._wire(host, index, at_server)

    # -- requests --------------------------------------------------------------------------------

    def submit(self, conn: Connection, request: Request | None) -> None:
        """A request (None = a ping) sent on ``conn``."""
        def at_server() -> None:
            if not self.serving(conn.server):
                self._close(conn, notify=True)
                return
            sid = conn.client.session_id
            if sid is not None:
                self._touch_from(conn.server, sid)
            if request is None:
                self._reply(conn, None, None, None)
                return
            conn.queue.append(request)
            self._pump(conn)

        self._to_server(conn, at_server)

    def _pump(self, conn: Connection) -> None:
        # One request at a time per connection: ZooKeeper answers a session's requests in
        # the order they were sent (a read waits for the session's earlier writes).
        while conn.queue and not conn.busy and conn.open:
            request = conn.queue.popleft()
            conn.busy = True
            self._execute(conn, request)

    def _finish(self, conn: Connection, request: Request, result: Any, error: Any) -> None:
        conn.busy = False
        self._reply(conn, request, result, error)
        self._pump(conn)

    def _reply(self, conn: Connection, request: Request | None, result: Any,
               error: Any) -> None:
        zxid = conn.server.tree.zxid
        self._to_client(conn, lambda: conn.client._on_reply(conn, request, result, error, zxid))

    def _execute(self, conn: Connection, request: Request) -> None:
        server = conn.server
        op, args = request.op, request.args
        if op in ("exists", "get", "get_children"):
            path = args[0]
            node = server.tree.nodes.get(path)
            if op == "exists":
                if request.watch:
                    server.watches.setdefault((path, "data"), set()).add(conn.cid)
                self._finish(conn, request, node.stat() if node else None, None)
                return
            if node is None:
                self._finish(conn, request, None, NoNodeError())
                return
            if request.watch:
                kind = "data" if op == "get" else "child"
                server.watches.setdefault((path, kind), set()).add(conn.cid)
            result = (node.data, node.stat()) if op == "get" else sorted(node.children)
            self._finish(conn, request, result, None)
            return
        # Writes and sync go through the leader.
        if not self._linked(server):
            return  # never answered: the client's connection dies first
        sid = conn.client.session_id or 0

        def at_leader() -> None:
            if not self._linked(server) or not self.has_quorum():
                return
            value: Any = args[0] if op == "sync" else None
            zxid = self.zxid
            if op != "sync":
                try:
                    zxid, value = self._write(op, args, sid)
                except Exception as exc:  # kazoo's error classes, answered as such
                    error = exc
                    self._when_applied(server, zxid,
                                       lambda: self._finish(conn, request, None, error))
                    return

            def answer() -> None:
                self._when_applied(server, zxid, lambda: self._finish(conn, request, value, None))

            if server.sid == self.leader:
                answer()
            else:
                self.agenda.after(server.lag, answer)

        if server.sid == self.leader:
            at_leader()
        else:
            self.agenda.after(self.rng.uniform(*self.latency), at_leader)

    def _write(self, op: str, args: tuple[Any, ...], sid: int) -> tuple[int, Any]:
        """Validate and commit a write at the leader; returns (zxid, result)."""
        assert self.leader is not None
        tree = self.servers[self.leader].tree
        now = self.agenda.now
        if op == "create":
            path, data, ephemeral, sequence = args
            parent = tree.nodes.get(_parent(path))
            if parent is None:
                raise NoNodeError()
            if parent.owner:
                raise NoChildrenForEphemeralsError()
            if sequence:
                path = f"{path}{parent.sequence:010d}"
            if path in tree.nodes:
                raise NodeExistsError()
            self._commit(Txn(self.zxid + 1, "create", path, data, sid if ephemeral else 0, now))
            return self.zxid, path
        if op == "ensure":
            path = args[0]
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts) + 1):
                sub = "/" + "/".join(parts[:i])
                if sub not in tree.nodes:
                    self._commit(Txn(self.zxid + 1, "create", sub, b"", 0, now))
            return self.zxid, True
        if op == "delete":
            path, version = args
            node = tree.nodes.get(path)
            if node is None:
                raise NoNodeError()
            if version != -1 and node.version != version:
                raise BadVersionError()
            if node.children:
                raise NotEmptyError()
            self._commit(Txn(self.zxid + 1, "delete", path, at=now))
            return self.zxid, True
        if op == "set":
            path, data, version = args
            node = tree.nodes.get(path)
            if node is None:
                raise NoNodeError()
            if version != -1 and node.version != version:
                raise BadVersionError()
            self._commit(Txn(self.zxid + 1, "set", path, data, at=now))
            return self.zxid, tree.nodes[path].stat()
        if op == "close_session":
            session = self.sessions.get(sid)
            if session is not None and session.open:
                self._end_session(session)
            return self.zxid, None
        raise ValueError(f"unknown operation {op}")

    def reregister(self, conn: Connection, watches: list[tuple[str, str]], since: int) -> None:
        """kazoo's SetWatches after a reconnect: fire what changed since ``since``."""
        server = conn.server
        for path, kind in watches:
            node = server.tree.nodes.get(path)
            etype: int | None = None
            if kind == "data":
                if node is None:
                    etype = EventType.DELETED if since else None
                elif node.mzxid > since:
                    etype = EventType.CREATED if node.czxid > since else EventType.CHANGED
            elif node is None:
                etype = EventType.DELETED
            elif node.pzxid > since:
                etype = EventType.CHILD
            if etype is None:
                server.watches.setdefault((path, kind), set()).add(conn.cid)
            else:
                self._to_client(conn, functools.partial(conn.client._on_watch, conn, path, kind,
                                                        etype))


# -- the client ------------------------------------------------------------------------------


class SimAsyncResult:
    """kazoo's IAsyncResult as the election uses it: ``rawlink``, ``get_nowait``, ``get``."""

    def __init__(self, drive: Callable[[Callable[[], bool]], None]) -> None:
        self._drive = drive
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._links: list[Callable[[SimAsyncResult], None]] = []

    def ready(self) -> bool:
        return self._done

    def set(self, value: Any) -> None:
        self._settle(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if self._done:
            return
        self._done, self._value, self._error = True, value, error
        links, self._links = self._links, []
        for link in links:
            link(self)

    def rawlink(self, callback: Callable[[SimAsyncResult], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._links.append(callback)

    def get_nowait(self) -> Any:
        if not self._done:
            raise TimeoutError("not ready")
        if self._error is not None:
            raise self._error
        return self._value

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Runs the simulation until the result is in (for tests that call it directly)."""
        if not self._done:
            self._drive(self.ready)
        return self.get_nowait()


@dataclass(frozen=True)
class RetryPolicy:
    delay: float = 0.05
    backoff: float = 1.5
    max_delay: float = 0.5


class SimKazooClient:
    """A kazoo-like client in a simulated process (see the module docstring)."""

    def __init__(self, zk: SimZooKeeper, host: ClientHost, *, timeout: float,
                 retry: RetryPolicy = RetryPolicy(), logger: Any = None,
                 drive: Callable[[Callable[[], bool]], None] | None = None,
                 client_id: tuple[int, bytes] | None = None) -> None:
        self.zk = zk
        self.host = host
        self.requested_timeout = timeout
        self._session_timeout = int(timeout * 1000)  # as kazoo keeps it: the request, ms
        self.negotiated_timeout: float | None = None  # seconds, from the handshake
        self.retry = retry
        self.logger = logger or logging.getLogger("lvsctl.testbed.sim.kazoo")
        self._drive = drive or (lambda ready: None)
        self.state = KazooState.LOST
        self.session_id: int | None = client_id[0] if client_id else None
        self.passwd = client_id[1] if client_id else b"\x00" * 16
        self.last_zxid = 0
        self.hosts = list(range(len(zk.servers)))
        self._listeners: list[Callable[[str], Any]] = []
        self._conn: Connection | None = None
        self._xids = itertools.count(1)
        self._pending: dict[int, tuple[Request, SimAsyncResult]] = {}
        self._queue: deque[tuple[Request, SimAsyncResult]] = deque()
        self._data_watchers: dict[str, list[Callable[[WatchedEvent], Any]]] = {}
        self._child_watchers: dict[str, list[Callable[[WatchedEvent], Any]]] = {}
        self._started = False
        self._stopped = False
        self._attempt = 0
        self._next_host = zk.rng.randrange(len(self.hosts))
        self._last_send = 0.0
        self._ping_outstanding = False
        self._watchdog_gen = 0

    # -- kazoo's surface -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == KazooState.CONNECTED

    @property
    def client_id(self) -> tuple[int, bytes] | None:
        return (self.session_id, self.passwd) if self.session_id is not None else None

    def add_listener(self, listener: Callable[[str], Any]) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str], Any]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def start_async(self) -> SimAsyncResult:
        result = self._result()
        self._started = True
        self._connect_next()
        return result

    def start(self, timeout: float = 15.0) -> None:
        self.start_async()
        self._drive(lambda: self.connected)

    def stop(self) -> None:
        """Close the session (its ephemerals go at once) and stop reconnecting."""
        if self._stopped:
            return
        self._stopped = True
        conn = self._conn
        if conn is not None and conn.open:
            self.zk.submit(conn, Request(next(self._xids), "close_session", ()))
        self._fail_all(ConnectionClosedError("Connection has been closed"))
        self._set_state(KazooState.LOST)
        self._conn = None

    def close(self) -> None:
        pass

    def kill(self) -> None:
        """The process died: its socket closes, its session lives on until it expires."""
        self._stopped = True
        if self._conn is not None:
            self.zk._close(self._conn, notify=False)
        self._conn = None

    def _result(self) -> SimAsyncResult:
        return SimAsyncResult(self._drive)

    def _call(self, op: str, *args: Any, watch: Callable[[WatchedEvent], Any] | None = None,
              ) -> SimAsyncResult:
        result = self._result()
        if self._stopped:
            result.set_exception(ConnectionClosedError("Connection has been closed"))
            return result
        request = Request(next(self._xids), op, args, watch is not None)
        if watch is not None:
            result.rawlink(lambda r: self._keep_watch(r, op, args[0], watch))
        if self._conn is not None and self._conn.open and self.connected:
            self._send(request, result)
        else:
            self._queue.append((request, result))
        return result

    def _keep_watch(self, result: SimAsyncResult, op: str, path: str,
                    watch: Callable[[WatchedEvent], Any]) -> None:
        # kazoo keeps a watcher only once the server accepted the request.
        if result._error is not None:
            return
        table = self._child_watchers if op == "get_children" else self._data_watchers
        callbacks = table.setdefault(path, [])
        if watch not in callbacks:
            callbacks.append(watch)

    def create_async(self, path: str, value: bytes = b"", acl: Any = None,
                     ephemeral: bool = False, sequence: bool = False,
                     makepath: bool = False) -> SimAsyncResult:
        return self._call("create", path, bytes(value), ephemeral, sequence)

    def ensure_path_async(self, path: str, acl: Any = None) -> SimAsyncResult:
        return self._call("ensure", path)

    def delete_async(self, path: str, version: int = -1) -> SimAsyncResult:
        return self._call("delete", path, version)

    def set_async(self, path: str, value: bytes, version: int = -1) -> SimAsyncResult:
        return self._call("set", path, bytes(value), version)

    def exists_async(self, path: str, watch: Callable[[WatchedEvent], Any] | None = None,
                     ) -> SimAsyncResult:
        return self._call("exists", path, watch=watch)

    def get_async(self, path: str, watch: Callable[[WatchedEvent], Any] | None = None,
                  ) -> SimAsyncResult:
        return self._call("get", path, watch=watch)

    def get_children_async(self, path: str,
                           watch: Callable[[WatchedEvent], Any] | None = None,
                           include_data: bool = False) -> SimAsyncResult:
        return self._call("get_children", path, watch=watch)

    def sync_async(self, path: str) -> SimAsyncResult:
        return self._call("sync", path)

    # -- the connection --------------------------------------------------------------------------

    def connect_timeout(self) -> float:
        timeout = self.negotiated_timeout or self.requested_timeout
        return timeout / len(self.hosts)

    def _read_timeout(self) -> float:
        return (self.negotiated_timeout or self.requested_timeout) * 2.0 / 3.0

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        for listener in list(self._listeners):
            listener(state)

    def _connect_next(self) -> None:
        if self._stopped:
            return
        index = self.hosts[self._next_host % len(self.hosts)]
        self._next_host += 1
        self.zk.connect(self, index, self._connected)

    def _connected(self, conn: Connection | None, outcome: str) -> None:
        if self._stopped:
            if conn is not None:
                self.zk._close(conn, notify=False)
            return
        if outcome == "expired":
            self._lose_session()
            self._attempt = 0
            self._connect_next()
            return
        if conn is None:
            delay = min(self.retry.delay * self.retry.backoff ** self._attempt,
                        self.retry.max_delay)
            self._attempt += 1
            self.zk.agenda.after(delay, lambda: self.host.run(self._connect_next))
            return

    def _handshake(self, conn: Connection, grant: tuple[int, bytes, float, int],
                   done: Callable[[Connection | None, str], None]) -> None:
        if self._stopped or not conn.open:
            self.zk._close(conn, notify=False)
            if not self._stopped:
                done(None, "refused")
            return
        sid, passwd, timeout, zxid = grant
        new = self.session_id != sid
        self.session_id, self.passwd = sid, passwd
        self.negotiated_timeout = timeout
        self.last_zxid = max(self.last_zxid, zxid) if not new else zxid
        self._conn = conn
        self._attempt = 0
        self.logger.log(BLATHER, "Session created, session_id: %r session_passwd: %s\n"
                        "    negotiated session timeout: %s\n    connect timeout: %s\n"
                        "    read timeout: %s", sid, passwd.hex(), int(timeout * 1000),
                        timeout * 1000 / len(self.hosts), timeout * 1000 * 2 / 3)
        watches = ([(p, "data") for p in self._data_watchers]
                   + [(p, "child") for p in self._child_watchers])
        if watches:
            self.zk.reregister(conn, watches, self.last_zxid)
        self._set_state(KazooState.CONNECTED)
        self._last_send = self.zk.agenda.now
        self._ping_outstanding = False
        self._arm_watchdog()
        while self._queue and self._conn is conn and conn.open:
            request, result = self._queue.popleft()
            self._send(request, result)

    def _send(self, request: Request, result: SimAsyncResult) -> None:
        assert self._conn is not None
        self._pending[request.xid] = (request, result)
        self._last_send = self.zk.agenda.now
        self.zk.submit(self._conn, request)
        self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        # kazoo: wait for a reply until last_send + read_timeout/2 - jitter; a ping still
        # unanswered then drops the connection, otherwise a ping goes out.
        self._watchdog_gen += 1
        gen = self._watchdog_gen
        jitter = self.zk.rng.randint(1, 40) / 100.0
        wait = max(self._last_send + self._read_timeout() / 2.0 - jitter - self.zk.agenda.now,
                   jitter)
        self.zk.agenda.after(wait, lambda: self.host.run(lambda: self._watchdog(gen)))

    def _watchdog(self, gen: int) -> None:
        conn = self._conn
        if gen != self._watchdog_gen or conn is None or not conn.open or self._stopped:
            return
        if self._ping_outstanding:
            self._drop(conn, "outstanding heartbeat ping not received")
            return
        self._ping_outstanding = True
        self._last_send = self.zk.agenda.now
        self.zk.submit(conn, None)
        self._arm_watchdog()

    def _on_reply(self, conn: Connection, request: Request | None, result: Any, error: Any,
                  zxid: int) -> None:
        if conn is not self._conn:
            return
        self.last_zxid = max(self.last_zxid, zxid)
        if request is None:
            self._ping_outstanding = False
            return
        entry = self._pending.pop(request.xid, None)
        if entry is None:
            return
        if error is not None:
            entry[1].set_exception(error)
        else:
            entry[1].set(result)

    def _on_watch(self, conn: Connection, path: str, kind: str, etype: int) -> None:
        table = self._child_watchers if kind == "child" else self._data_watchers
        event = WatchedEvent(etype, KazooState.CONNECTED, path)
        for callback in table.pop(path, []):
            callback(event)

    def _closed_by_server(self, conn: Connection) -> None:
        if conn is self._conn:
            self._drop(conn, "connection closed by the server")

    def _drop(self, conn: Connection, why: str) -> None:
        self.zk._close(conn, notify=False)
        self._conn = None
        self._watchdog_gen += 1
        pending, self._pending = self._pending, {}
        for _request, result in pending.values():
            result.set_exception(ConnectionLoss())
        if not self._stopped:
            self._set_state(KazooState.SUSPENDED)
            self._connect_next()

    def _lose_session(self) -> None:
        self.session_id, self.passwd = None, b"\x00" * 16
        self.negotiated_timeout = None
        self._set_state(KazooState.LOST)
        watchers = [cb for cbs in self._child_watchers.values() for cb in cbs]
        watchers += [cb for cbs in self._data_watchers.values() for cb in cbs]
        self._child_watchers, self._data_watchers = {}, {}
        event = WatchedEvent(EventType.NONE, KazooState.LOST, None)
        for callback in watchers:
            callback(event)
        queued, self._queue = self._queue, deque()
        for _request, result in queued:
            result.set_exception(SessionExpiredError())

    def _fail_all(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        queued, self._queue = self._queue, deque()
        for _request, result in [*pending.values(), *queued]:
            result.set_exception(error)
