"""The peer link over real UDP sockets on loopback: authentication, replays, loss detection."""

from __future__ import annotations

import asyncio
import socket

import pytest

from lvsctl.director.peer import Beat, PeerLink, Rejected, decode

SECRET = b"s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate, seconds: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.01)


async def pair(secret_b: bytes = SECRET, clock: Clock | None = None):  # type: ignore[no-untyped-def]
    pa, pb = free_udp_port(), free_udp_port()
    kw = {"monotonic": clock} if clock else {}
    a = PeerLink("lb1", SECRET, ("127.0.0.1", pa), ("127.0.0.1", pb), interval=0.02, **kw)
    b = PeerLink("lb2", secret_b, ("127.0.0.1", pb), ("127.0.0.1", pa), interval=0.02, **kw)
    await a.start()
    await b.start()
    return a, b


def test_beats_carry_state_both_ways() -> None:
    async def run() -> None:
        a, b = await pair()
        a.advertise(state="ACTIVE", epoch=7, zk_connected=True, holding=True)
        await wait_for(lambda: b.latest() is not None and b.latest().beat.epoch == 7)
        heard = b.latest()
        assert heard is not None
        assert (heard.beat.name, heard.beat.state, heard.beat.holding) == ("lb1", "ACTIVE", True)
        await wait_for(lambda: a.latest() is not None)
        assert a.latest().beat.name == "lb2"
        await a.stop()
        await b.stop()

    asyncio.run(run())


def test_a_wrong_secret_is_rejected_and_never_heard() -> None:
    async def run() -> None:
        a, b = await pair(secret_b=b"x" * 32)
        await wait_for(lambda: b.rejected.get("bad HMAC", 0) >= 3)
        assert b.latest() is None and a.latest() is None
        await a.stop()
        await b.stop()

    asyncio.run(run())


def test_a_replayed_beat_is_rejected() -> None:
    link = PeerLink("lb2", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9))
    now = link.wall_ns()
    first = Beat("lb1", "ACTIVE", 3, True, True, 0, now).encode(SECRET)
    assert link.accept(first).epoch == 3
    with pytest.raises(Rejected, match="replayed"):
        link.accept(first)
    older = Beat("lb1", "STANDBY", 3, True, False, 0, now - 1).encode(SECRET)
    with pytest.raises(Rejected, match="replayed"):
        link.accept(older)
    # After a restart the receiver has no last stamp: an old capture is authentic, but it
    # echoes nothing this receiver sent, so it is never fresh.
    fresh = PeerLink("lb2", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9))
    stale = Beat("lb1", "STANDBY", 3, False, False, 0, now - 60 * 10**9, True,
                 echo=now - 61 * 10**9).encode(SECRET)
    fresh.accept(stale)
    assert fresh.heard is not None and fresh.latest() is None


def test_tampering_and_own_name_are_rejected() -> None:
    beat = Beat("lb1", "STANDBY", 1, True, False, 0, 1).encode(SECRET)
    tampered = beat.replace(b"STANDBY", b"ACTIVE!")
    with pytest.raises(Rejected, match="bad HMAC"):
        decode(tampered, SECRET)
    link = PeerLink("lb1", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9))
    own = Beat("lb1", "ACTIVE", 1, True, True, 0, link.wall_ns()).encode(SECRET)
    with pytest.raises(Rejected, match="own name"):
        link.accept(own)


def test_loss_is_detected_after_dead_after() -> None:
    clock = Clock()

    async def run() -> None:
        a, b = await pair(clock=clock)
        await wait_for(lambda: b.latest() is not None)
        await a.stop()  # the other director goes silent
        await asyncio.sleep(0.05)
        clock.now += 0.4
        assert b.latest() is not None  # still inside dead_after (0.5 s)
        clock.now += 0.2
        assert b.latest() is None
        await b.stop()

    asyncio.run(run())


def vouch(stamp: int, echo: int) -> bytes:
    return Beat("lb2", "STANDBY", 4, False, False, 3, stamp, True, echo=echo).encode(SECRET)


def test_a_beat_is_fresh_from_our_send_time_it_echoes_not_from_its_processing() -> None:
    """Hole 4: a vouch processed late (a freeze, a slow loop) is as old as our beat it
    answers; one that echoes nothing of ours is never fresh."""
    clock = Clock()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))

    async def run() -> None:
        sent: list[Beat] = []
        link = PeerLink("lb1", SECRET, ("127.0.0.1", 0), sink.getsockname(), interval=3600,
                        dead_after=1.0, monotonic=clock)
        link.on_send = sent.append  # type: ignore[assignment]  # returns None: sent as is
        await link.start()
        await wait_for(lambda: bool(sent))
        ours = sent[-1].stamp  # sent at 100.0
        clock.now += 2.0  # frozen: the answer to it is processed only now
        link.accept(vouch(1, ours))
        assert link.heard is not None and link.heard.at == 100.0
        assert link.heard.received == 102.0
        assert link.latest() is None  # 2 s old, whatever its arrival
        link.send()  # at 102.0
        clock.now += 0.3
        link.accept(vouch(2, sent[-1].stamp))
        heard = link.latest()
        assert heard is not None and heard.at == 102.0 and heard.beat.vouch
        link.accept(vouch(3, 0))  # echoes nothing: authentic, never fresh
        assert link.latest() is None
        # Our next beats echo the other's latest stamp.
        link.send()
        assert sent[-1].echo == 3
        await link.stop()

    try:
        asyncio.run(run())
    finally:
        sink.close()


def test_wall_clocks_that_disagree_do_not_matter() -> None:
    """Beats are no longer refused when the two wall clocks differ (by an hour here), and a
    sender whose stamps went back (a restart with its clock set back) is accepted again on a
    live echo — and logged."""
    clock = Clock()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))

    async def run() -> None:
        sent: list[Beat] = []
        link = PeerLink("lb1", SECRET, ("127.0.0.1", 0), sink.getsockname(), interval=3600,
                        dead_after=1.0, monotonic=clock)
        link.on_send = sent.append  # type: ignore[assignment]  # returns None: sent as is
        await link.start()
        await wait_for(lambda: bool(sent))
        hour_ahead = link.wall_ns() + 3600 * 10**9
        link.accept(vouch(hour_ahead, sent[-1].stamp))
        assert link.latest() is not None
        link.send()
        behind = link.wall_ns() - 3600 * 10**9
        link.accept(vouch(behind, sent[-1].stamp))  # below the last stamp, but a live echo
        heard = link.latest()
        assert heard is not None and heard.beat.stamp == behind
        assert link.clock_steps == 1
        with pytest.raises(Rejected, match="replayed"):
            link.accept(vouch(behind, sent[-1].stamp))  # the same again: a replay
        await link.stop()

    try:
        asyncio.run(run())
    finally:
        sink.close()
