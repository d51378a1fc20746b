"""ZooKeeper leadership for the director pair: the election, its fencing epoch and the VIP lease.

Leadership is an ephemeral sequential znode under ``<root>/<cluster>/election`` (the layout of
kazoo's Lock recipe: the lowest sequence number leads), named, written and read through the
store's ``ElectionQueue`` (lvsctl.core.zk), which also tells commands who leads. The
**epoch** is our znode's sequence number, so a later leader always has a higher epoch.

The leader may hold the VIPs only while its leadership is *confirmed* (DESIGN.md "Leadership
rules"). Every ``confirm_interval`` we make one linearizable round trip: a ``sync`` and, queued
right behind it on the same session, an ``exists`` of **our own** znode. It confirms only if
the znode is there and its ``ephemeralOwner`` is our session (a deleted or recreated znode is
no leadership: Curator's CURATOR-696). The next confirmation notices it; renewals made before
that still live their ``hold_span``. So a new leader also waits while a fresh beat of the
other director says it still holds, whatever epoch it carries (having noticed, it rejoins the
queue behind us before its addresses are gone): with the peer link up, a znode deleted by
someone else (an operator) costs no overlap. With the peer link down as well, it can still
overlap the next leader by up to ``confirm_interval`` + a round trip + ``hold_span``: the
rule assumes that only its owner or the session's expiry removes a queue entry.
ZooKeeper answers one session's requests in order and the sync goes through the ensemble's
leader, so the reply proves that the ensemble saw our session alive at or after the sync's
send time ``t`` (a follower cut off from the leader could otherwise answer from a stale view
for ``syncLimit x tickTime``). The ensemble expires a
session no sooner than ``S`` after it last heard from it, ``S`` the **negotiated** timeout
(the server clamps the requested one; we read what it granted), so our znode stays — and the
other director cannot win — until ``t + S`` at least. Both clocks are our own monotonic clock;
the ensemble's clocks only ever make the expiry later. A VIP renewed at ``now`` lives at most
``lifetime + kernel_slack`` more (the kernel removes an expired address up to ~1 s late), so
renewing is allowed only while::

    now + lifetime + kernel_slack + margin <= t + S - margin               ("zk")

That is the SUSPENDED lease: it runs out on its own when round trips stop. Past it the active
keeps the VIPs only on the peer link's word (fail-static when the whole ensemble is down)::

    peer beat fresh | peer vouches | peer claims ACTIVE or holds | may hold
    ----------------+--------------+----------------------------+---------
    no              | -            | -                          | no
    yes             | no           | -                          | no
    yes             | yes          | yes                        | no
    yes             | yes          | no                         | yes ("peer")

"No" holds nothing but stays ACTIVE (a freeze, a slow round trip, a peer-link blip during a
whole-ensemble outage: it holds again once confirmed or vouched for). It leaves the lead
(FENCED, then rejoins with a new znode) only on proof that it no longer leads: its session
lost, its znode gone or not its own, or a beat claiming ACTIVE with a higher epoch. A
director restarted during a whole-ensemble outage has no session and so no lead: it holds
nothing until ZooKeeper is back (the peer link never makes a director active).

A director *vouches* (``Beat.vouch``) while it is not active and the other director's beats
say it cannot reach ZooKeeper. Each vouching beat is a promise: the voucher will not take the
VIPs until ``dead_after + lifetime + slack + margin`` after it, even if it wins the election
meanwhile — unless a fresh beat from the other says it holds nothing and is not active (or has
seen our epoch): a director that is not active cannot become so again while we lead. A director that
never vouched (the other was connected: a crash, a freeze) takes over as soon as it wins.

Whatever else it believes, a director that hears an authentic beat claiming ACTIVE with a
higher epoch than its own leaves the lead: epochs only grow, so a higher one proves that our
znode was gone when it was created.

A director refuses to run (``fatal``) when the negotiated timeout leaves no room for the rule
(``Timing.check``), or cannot be learnt at all.

Kazoo runs its own threads: its listeners and watches only hand events to the asyncio loop
with ``call_soon_threadsafe`` and never block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from lvsctl.core.errors import ElectionError
from lvsctl.core.zk import ElectionQueue, Session
from lvsctl.director.peer import Beat, Heard, PeerLink
from lvsctl.director.promise import PromiseStore

log = logging.getLogger("lvsctl.director.election")

DELETE_TIMEOUT = 2.0  # a stepdown's delete waits this long; later, the next campaign retries
# A promise is written to disk this far beyond what the beat being sent needs, so that a
# director vouching for a while writes about once a second, not with every beat.
PROMISE_AHEAD = 1.0


class State(Enum):
    CANDIDATE = "CANDIDATE"  # in the queue, not yet told where it stands
    ACTIVE = "ACTIVE"  # won the election: may hold the VIPs while confirmed
    STANDBY = "STANDBY"  # another director leads; warm, holds nothing
    FENCED = "FENCED"  # lost its session or its lease: holds nothing until it rejoins


# The enforced transition table (STYLE.md 7): anything else raises ElectionError.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.CANDIDATE: frozenset({State.ACTIVE, State.STANDBY, State.FENCED}),
    State.STANDBY: frozenset({State.ACTIVE, State.FENCED, State.CANDIDATE}),
    State.ACTIVE: frozenset({State.CANDIDATE, State.FENCED}),  # CANDIDATE = stepped down
    State.FENCED: frozenset({State.CANDIDATE}),
}


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise ElectionError(f"impossible leadership transition {old.value} -> {new.value}")


@dataclass(frozen=True)
class Timing:
    """The numbers the lease arithmetic needs; seconds."""

    # The requested one until connected; then the one the server negotiated (Election).
    session_timeout: float
    lifetime: int = 1  # the VIP address lifetime (the kernel counts whole seconds)
    # How late the kernel may delete an expired address: its lifetime work
    # (net/ipv4/devinet.c check_lifetime, likewise IPv6's addrconf_verify) is never
    # rescheduled sooner than ADDRCONF_TIMER_FUZZ_MAX = 1 s after its last run, and any
    # address change on the host runs it early. So 1 s, plus 0.1 s for the work queue.
    kernel_slack: float = 1.1
    margin: float = 0.1
    confirm_interval: float = 0.1
    # A beat older than this is no word at all. Generous, because a starved process on a
    # loaded host can miss several beats; the promise grows with it (dead_after + hold_span).
    peer_dead_after: float = 1.0

    @property
    def hold_span(self) -> float:
        """How long a renewal made now may keep a VIP alive, at worst."""
        return self.lifetime + self.kernel_slack + self.margin

    @property
    def shortest_session(self) -> float:
        """The session timeout must exceed this: a renewal's reach (``hold_span``), the
        confirmation's own margin, and two confirm intervals of slack for the round trips."""
        return self.hold_span + self.margin + self.confirm_interval * 2

    def check(self) -> None:
        """Raises ElectionError when ``session_timeout`` leaves no room for the lease rule."""
        if self.session_timeout <= self.shortest_session:
            raise ElectionError(
                f"session timeout {self.session_timeout:g}s is too short for a VIP lifetime of "
                f"{self.lifetime}s: it must exceed {self.shortest_session:g}s")


def promise_acked(now: float, *, epoch: int, peer: Heard | None, timing: Timing) -> bool:
    """Does the other's fresh word void our promise for good? It holds nothing and either is
    not active (it cannot become active again while we lead: only a new znode, behind ours,
    would make it so) or has seen us ACTIVE with ``epoch`` (then it never holds again with
    its lower epoch). Pure."""
    return (
        peer is not None
        and now - peer.at <= timing.peer_dead_after
        and not peer.beat.holding
        and (peer.beat.state != State.ACTIVE.value or peer.beat.ack_epoch >= epoch)
    )


def hold_permission(
    now: float,
    *,
    state: State,
    epoch: int,
    confirmed_until: float,
    peer: Heard | None,
    promise_until: float,
    timing: Timing,
    peer_active_epoch: int = 0,
) -> str | None:
    """May the director renew (or add) its VIPs now? "zk", "peer", "wait" or None (fence).

    Pure: the truth table is in the module docstring. "wait" = leader, but the other director
    may still hold the VIPs on our earlier word; hold nothing yet, do not fence.
    ``peer_active_epoch``: the highest epoch any authentic beat claimed ACTIVE with; above
    ours, we are not the leader whatever else holds.
    """
    if state is not State.ACTIVE or peer_active_epoch > epoch:
        return None
    if now < promise_until and not promise_acked(now, epoch=epoch, peer=peer, timing=timing):
        return "wait"
    if peer is not None and now - peer.at <= timing.peer_dead_after and peer.beat.holding:
        # The other says, freshly, that it still holds: its znode went without its session
        # (someone deleted it) and it has not noticed yet, or it has noticed and rejoined the
        # queue (a fresh znode: its beats carry a new, higher epoch) but has not yet removed
        # its addresses. It says "holding" until they are gone, and lets go once it notices
        # (or hears our higher epoch); a crashed or frozen one says nothing fresh. (Were it
        # ACTIVE with a higher epoch, we would not be the leader: see above.)
        return "wait"
    if now + timing.hold_span <= confirmed_until:
        return "zk"
    if (
        peer is not None
        and now - peer.at <= timing.peer_dead_after
        and peer.beat.vouch
        and peer.beat.state != State.ACTIVE.value
        and not peer.beat.holding
    ):
        return "peer"
    return None


@dataclass(frozen=True)
class Transition:
    state: State
    epoch: int
    reason: str
    monotonic: float
    wall: float


@dataclass
class Election:
    """Runs the election for one director and keeps its state; see the module docstring."""

    client: KazooClient
    path: str  # <root>/<cluster>/election
    name: str
    timing: Timing
    peer: PeerLink | None = None
    on_transition: Callable[[Transition], None] = lambda t: None
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    # Keeps our promise across a restart (director/promise.py); None: it is not kept, and
    # this director never vouches for the other.
    promises: PromiseStore | None = None
    state: State = field(init=False, default=State.CANDIDATE)
    epoch: int = field(init=False, default=0)
    since: float = field(init=False, default=0.0)
    confirmed_until: float = field(init=False, default=-math.inf)
    promise_until: float = field(init=False, default=-math.inf)
    zk_connected: bool = field(init=False, default=False)
    node: str | None = field(init=False, default=None)
    session: Session | None = field(init=False, default=None)  # as negotiated, once connected
    fatal: str = field(init=False, default="")  # why this director refuses to run; "" = fine
    _loop: asyncio.AbstractEventLoop | None = field(init=False, default=None)
    _campaign: asyncio.Task[None] | None = field(init=False, default=None)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _prefix: str = field(init=False, default_factory=ElectionQueue.new_prefix)
    _queue: ElectionQueue = field(init=False)
    _stopping: bool = field(init=False, default=False)
    _peer_active_epoch: int = field(init=False, default=0)
    _confirmed_sent: float = field(init=False, default=-math.inf)
    # Znodes we left (a stepdown) that are not deleted yet: ZooKeeper was unreachable, or the
    # delete timed out. Deleted first on every campaign, so a stepdown is never undone.
    _doomed: set[str] = field(init=False, default_factory=set)
    _promised_on_disk: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        # The queue's znodes (names, data, reads) belong to the store; this is the recipe.
        self._queue = ElectionQueue(self.client, self.path)

    # -- state ------------------------------------------------------------------------------

    def _to(self, new: State, reason: str) -> None:
        check_transition(self.state, new)
        self.state = new
        self.since = self.wall()
        log.info("leadership %s", new.value, extra={"event": "transition", "state": new.value,
                                                     "epoch": self.epoch, "reason": reason})
        self._advertise()
        self.on_transition(Transition(new, self.epoch, reason, self.monotonic(), self.since))
        self._wake.set()  # the daemon acts on a new state at once, not on its next tick

    def _advertise(self, holding: bool | None = None) -> None:
        if self.peer is None:
            return
        heard = self.peer.latest()
        vouch = (self.state is not State.ACTIVE and heard is not None
                 and not heard.beat.zk_connected and self.promises is not None)
        # "Reaching ZooKeeper" means round trips are coming back, not merely that kazoo has
        # not noticed a dead connection yet (it takes 2/3 of the session timeout to notice).
        fresh = self.monotonic() - self._confirmed_sent <= 3 * self.timing.confirm_interval
        changes: dict[str, Any] = {
            "state": self.state.value, "epoch": self.epoch,
            "zk_connected": self.zk_connected and fresh,
            "ack_epoch": self._peer_active_epoch, "vouch": vouch,
        }
        if holding is not None:
            changes["holding"] = holding
        self.peer.advertise(**changes)

    def advertise_holding(self, holding: bool) -> None:
        self._advertise(holding)

    def hold_deadline(self) -> float:
        """The last monotonic instant at which a renewal is still covered by the verdict."""
        deadline = self.confirmed_until - self.timing.hold_span
        heard = self.peer.latest() if self.peer is not None else None
        if heard is not None and heard.beat.vouch:
            deadline = max(deadline, heard.at + self.timing.peer_dead_after)
        return deadline

    def permission(self) -> str | None:
        """``hold_permission`` for now; leaves the lead (ACTIVE -> FENCED) on a higher epoch."""
        self._advertise()
        peer = self.peer.latest() if self.peer is not None else None
        now = self.monotonic()
        if (self.state is State.ACTIVE and now < self.promise_until
                and promise_acked(now, epoch=self.epoch, peer=peer, timing=self.timing)):
            # Voided for good (promise_acked): were it re-judged on every pass, the other's
            # silence (it stopped, it was stepping down) would bring the wait back.
            log.info("our promise is void: the other director holds nothing and cannot lead",
                     extra={"event": "promise_void", "epoch": self.epoch})
            self.promise_until = -math.inf
        verdict = hold_permission(
            now, state=self.state, epoch=self.epoch,
            confirmed_until=self.confirmed_until, peer=peer,
            promise_until=self.promise_until, timing=self.timing,
            peer_active_epoch=self._peer_active_epoch,
        )
        if self.state is State.ACTIVE and self._peer_active_epoch > self.epoch:
            self._lose_lead(f"the other director is ACTIVE with epoch {self._peer_active_epoch}"
                            f" > ours ({self.epoch})")
        # A lapse alone (no confirmation, no fresh vouch) is no reason to leave the lead:
        # we stay ACTIVE holding nothing, and hold again once a round trip confirms us or a
        # fresh vouch covers us (a freeze, a peer-link blip during a whole-ensemble outage).
        # Our znode may still lead; if it does not, we learn it from ZooKeeper (session lost,
        # znode gone) or from the other's beat (a higher epoch), and leave then. Meanwhile
        # the other, should it win, never takes our beats for an acknowledgement
        # (hold_permission: ACTIVE without its epoch) and waits out any promise it made.
        return verdict

    def _lose_lead(self, reason: str) -> None:
        """ACTIVE -> FENCED now, whatever the lease says; our znode goes, and we rejoin with
        a new one (a later epoch) as the rules allow."""
        self.confirmed_until = -math.inf
        self._to(State.FENCED, reason)
        self._cancel_campaign()
        self._restart_campaign_later()

    def _refuse(self, why: str) -> None:
        """Stop taking part for good: this director cannot keep the rule (see ``fatal``)."""
        if self.fatal:
            return
        self.fatal = why
        log.error("refusing to run: %s", why, extra={"event": "election_refused",
                                                        "reason": why})
        self.confirmed_until = -math.inf
        self._cancel_campaign()
        if self.state is State.ACTIVE:
            self._to(State.FENCED, why)
        self._wake.set()

    def _on_session(self) -> None:
        """Connected: learn the session the server granted and check the rule against its
        negotiated timeout (which replaces the requested one in ``timing``)."""
        session = self._queue.session()
        if session is None:
            self._refuse("the ZooKeeper session's negotiated timeout is unknown (a client not "
                         "made by lvsctl.core.zk.make_client)")
            return
        if self.session is None or session != self.session:
            requested = self.timing.session_timeout if self.session is None else None
            if requested is not None and abs(session.timeout - requested) > 1e-6:
                log.warning("ZooKeeper negotiated a session timeout of %gs (requested %gs)",
                            session.timeout, requested,
                            extra={"event": "session_negotiated", "timeout": session.timeout})
            self.session = session
            self.timing = replace(self.timing, session_timeout=session.timeout)
            # A reconnect may renegotiate a shorter timeout (the server's limits changed in
            # a rolling restart): what we confirmed before counts with the shorter one only.
            self.confirmed_until = min(self.confirmed_until, self._confirmed_sent
                                       + session.timeout - self.timing.margin)
        try:
            self.timing.check()
        except ElectionError as exc:
            self._refuse(f"{exc} (as negotiated with ZooKeeper: the server's "
                         "maxSessionTimeout is below it)")

    # -- ZooKeeper plumbing -----------------------------------------------------------------

    async def _zk(self, async_result: Any) -> Any:
        """Await a kazoo IAsyncResult from the loop (its callback runs in kazoo's thread)."""
        assert self._loop is not None
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any) -> None:
            def settle() -> None:
                if future.done():
                    return
                try:
                    future.set_result(result.get_nowait())
                except Exception as exc:  # kazoo's errors, handed back to the awaiting task
                    future.set_exception(exc)

            loop.call_soon_threadsafe(settle)

        async_result.rawlink(done)
        return await future

    def _listener(self, zk_state: str) -> None:
        # Runs in kazoo's thread: hand over and return at once.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_zk_state, zk_state)

    def _on_zk_state(self, zk_state: str) -> None:
        was = self.zk_connected
        self.zk_connected = zk_state == KazooState.CONNECTED
        log.info("zookeeper %s", zk_state, extra={"event": "zookeeper", "zk": zk_state})
        if self.zk_connected:
            self._on_session()
        if not self.zk_connected and self.state is State.ACTIVE:
            self.permission()  # the verdict for now, and our beats say we are cut off
        if zk_state == KazooState.LOST:
            self.confirmed_until = -math.inf
            self._cancel_campaign()
            self.node = None
            self._doomed.clear()  # ephemeral: gone with the session
            if self.state is not State.FENCED:
                self._to(State.FENCED, "ZooKeeper session lost")
        self._advertise()
        if self.zk_connected and not was:
            self._restart_campaign_later()
        self._wake.set()

    def on_beat_sent(self, beat: Beat) -> Beat | None:
        """Called by the peer link just before each beat goes out: a vouching beat is a
        promise, from its send time on our monotonic clock, written to disk before it goes
        out (so a restarted director keeps it). Returns the beat without its vouch when the
        promise cannot be written: a promise we could not keep is not made."""
        if not beat.vouch:
            return None
        until = self.monotonic() + self.timing.peer_dead_after + self.timing.hold_span
        if until > self._promised_on_disk:
            try:
                if self.promises is None:
                    raise OSError("no promise store")
                self.promises.save(until + PROMISE_AHEAD)
            except OSError as exc:
                log.error("not vouching: cannot record the promise: %s", exc,
                          extra={"event": "promise_error"})
                return replace(beat, vouch=False)
            self._promised_on_disk = until + PROMISE_AHEAD
        self.promise_until = max(self.promise_until, until)
        return None

    def on_peer_beat(self, beat: Any) -> None:
        """Called by the peer link for each authentic beat."""
        if beat.state == State.ACTIVE.value:
            self._peer_active_epoch = max(self._peer_active_epoch, beat.epoch)
        self._advertise()  # whether we vouch follows what the other says
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    def _load_promise(self) -> None:
        """A promise made by an earlier run of this director still binds us."""
        if self.promises is None:
            return
        now = self.monotonic()
        try:
            until = self.promises.load()
        except ValueError as exc:
            # Unreadable: assume the longest promise any beat could have made just now.
            self.promise_until = now + self.timing.peer_dead_after + self.timing.hold_span
            log.error("promise record unreadable (%s): assuming one for %.3f s", exc,
                      self.promise_until - now, extra={"event": "promise_error"})
            return
        if until > now:
            log.info("a promise made before our restart holds for %.3f s", until - now,
                     extra={"event": "promise_restored", "remaining": until - now})
            self.promise_until = max(self.promise_until, until)
            self._promised_on_disk = max(self._promised_on_disk, until)

    async def start(self) -> None:
        self.timing.check()
        self._load_promise()
        self._loop = asyncio.get_running_loop()
        self.since = self.wall()
        self.client.add_listener(self._listener)
        if self.client.connected:
            self.zk_connected = True
            self._on_session()
        self._tasks.append(asyncio.create_task(self._confirm_forever(), name="zk-confirm"))
        if self.zk_connected:
            self._restart_campaign_later()

    async def stop(self, *, release: Callable[[], None] | None = None) -> None:
        """Graceful stop: step down (release first, then delete our znode), then stop tasks."""
        self._stopping = True
        await self.stepdown(rejoin=False, release=release)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self.client.remove_listener(self._listener)

    async def stepdown(self, *, rejoin: bool = True,
                       release: Callable[[], None] | None = None) -> None:
        """Leave the lead: transition (the daemon releases the VIPs), then delete the znode."""
        self._cancel_campaign()
        if self.state is State.ACTIVE:
            self._to(State.CANDIDATE, "stepping down")
        if release is not None:
            release()
        await self._delete_node()
        if self.state is State.STANDBY and not rejoin:
            self._to(State.CANDIDATE, "leaving the election")
        if rejoin and not self._stopping:
            self._restart_campaign_later()

    async def _delete_node(self) -> None:
        """Leave the queue: our znode is doomed, deleted now if ZooKeeper answers within
        DELETE_TIMEOUT, else by the next campaign (never raises). A fresh prefix, so that a
        doomed znode is never found again as our own."""
        node, self.node = self.node, None
        if node is None:
            return
        self._prefix = ElectionQueue.new_prefix()
        self._doomed.add(node)
        await self._delete_doomed()

    async def _delete_doomed(self) -> bool:
        """Delete the znodes we left; True once none is left."""
        for node in sorted(self._doomed):
            if not self.zk_connected:
                return False
            try:
                await asyncio.wait_for(self._zk(self._queue.delete_async(node)),
                                       DELETE_TIMEOUT)
            except NoNodeError:
                pass
            except (TimeoutError, KazooException) as exc:
                log.warning("cannot delete our election znode %s yet: %s", node,
                            type(exc).__name__, extra={"event": "election_error"})
                return False
            self._doomed.discard(node)
        return True

    def _cancel_campaign(self) -> None:
        if self._campaign is not None and not self._campaign.done():
            self._campaign.cancel()
        self._campaign = None

    def _restart_campaign_later(self) -> None:
        if self._stopping or self._loop is None or self.fatal:
            return
        if self._campaign is not None and not self._campaign.done():
            return
        self._campaign = asyncio.ensure_future(self._run_campaign())

    async def _run_campaign(self) -> None:
        try:
            await self._campaign_once()
        except asyncio.CancelledError:
            raise
        except (TimeoutError, KazooException, ElectionError) as exc:
            # No fencing here: whether we may hold the VIPs is the lease's business alone
            # (permission()); a failed request only means we ask again.
            log.warning("election request failed: %s", exc, extra={"event": "election_error"})
            await self.sleep(self.timing.confirm_interval)
            self._campaign = None
            if self.zk_connected:
                self._restart_campaign_later()

    async def _campaign_once(self) -> None:
        if not self.zk_connected:
            return
        if self.state is State.FENCED:
            # Fenced while our session lived on: our old znode must go, or we would still lead.
            await self._delete_node()
            self._to(State.CANDIDATE, "rejoining the election")
        if not await self._delete_doomed():
            raise ElectionError("a znode we left is not deleted yet")
        with contextlib.suppress(NodeExistsError):
            await self._zk(self._queue.ensure_async())
        if self.node is None:
            self.node = await self._find_own_node() or await self._create_node()
        epoch = ElectionQueue.sequence(self.node)
        if epoch is None:
            node, self.node = self.node, None
            raise ElectionError(f"our election znode {node} is not a queue entry")
        self.epoch = epoch
        while True:
            children = await self._zk(self._queue.children_async())
            queue = [entry.znode for entry in ElectionQueue.order(children)]
            if self.node not in queue:
                # Gone: the next round creates a new one (never finding this name again).
                self.node = None
                self._prefix = ElectionQueue.new_prefix()
                if self.state is State.ACTIVE:
                    self._to(State.FENCED, "our election znode vanished")
                raise ElectionError("our election znode vanished")
            position = queue.index(self.node)
            if position == 0:
                if self.state is not State.ACTIVE:
                    self._to(State.ACTIVE, "won the election")
                return
            if self.state is not State.STANDBY:
                self._to(State.STANDBY, f"{queue[0]} leads")
            assert self._loop is not None
            gone = asyncio.Event()
            loop = self._loop

            def watch(_event: Any, gone: asyncio.Event = gone,
                      loop: asyncio.AbstractEventLoop = loop) -> None:
                loop.call_soon_threadsafe(gone.set)

            ahead = queue[position - 1]
            if await self._zk(self._queue.exists_async(ahead, watch=watch)) is not None:
                await gone.wait()

    async def _find_own_node(self) -> str | None:
        # A create whose reply was lost to a disconnection may still have made our znode.
        children = await self._zk(self._queue.children_async())
        return ElectionQueue.owned(children, self._prefix)

    async def _create_node(self) -> str:
        created = await self._zk(self._queue.join_async(self._prefix, self.name))
        return ElectionQueue.created_name(str(created))

    async def _confirm_forever(self) -> None:
        """One confirming round trip per ``confirm_interval`` (see ``confirm_once``)."""
        # The flag, not only cancellation, ends the loop: Python 3.11's wait_for can swallow
        # a cancel that races with its inner future completing.
        while not self._stopping:
            if self.zk_connected and not self.fatal:
                with contextlib.suppress(TimeoutError, KazooException):
                    await self.confirm_once()
            self._wake.set()
            await self.sleep(self.timing.confirm_interval)

    async def confirm_once(self) -> None:
        """``sync``, then ``exists`` of our own znode, pipelined on one session; the reply
        extends ``confirmed_until`` to the sync's send time + S - margin when the znode is
        there and our session owns it. A znode gone or not ours ends our leadership (and our
        place in the queue: we rejoin with a new one). Raises TimeoutError, KazooException."""
        node, session = self.node, self.session
        if node is None or session is None:
            return
        sent = self.monotonic()  # before the sync goes out: the lease runs from here
        synced = self._queue.sync_async()
        stat_reply = self._queue.exists_async(node)
        timeout = session.timeout
        await asyncio.wait_for(self._zk(synced), timeout)
        stat = await asyncio.wait_for(self._zk(stat_reply), timeout)
        if node != self.node or session != self.session:
            return  # the queue or the session changed meanwhile: this reply says nothing
        if not ElectionQueue.owns(stat, session):
            why = "gone" if stat is None else f"owned by session {stat.ephemeralOwner:#x}"
            log.warning("our election znode %s is %s", node, why,
                        extra={"event": "election_znode_lost", "epoch": self.epoch})
            self.node = None
            self._prefix = ElectionQueue.new_prefix()
            if self.state is State.ACTIVE:
                self._lose_lead(f"our election znode is {why}")
            else:
                self._cancel_campaign()
                self._restart_campaign_later()
            return
        self._confirmed_sent = max(self._confirmed_sent, sent)
        self.confirmed_until = max(self.confirmed_until,
                                   sent + session.timeout - self.timing.margin)

    def wake(self) -> None:
        """End a pending ``changed`` wait at once (the caller has news of its own)."""
        self._wake.set()

    async def changed(self, timeout: float) -> None:
        """Wait until something happened (ZooKeeper state, a beat, a confirmation) or timeout."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()
