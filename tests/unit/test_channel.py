"""The keeper/worker channel: every message round-trips, bad input is refused by type and
bound with a ChannelError naming the field, and a peer that does not read never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import pytest

from lvsctl.director.channel import (
    HEADER,
    MAX_MESSAGE,
    Channel,
    ChannelError,
    HandedOver,
    Handover,
    Heartbeat,
    KeeperState,
    LeaderConfig,
    LeaderRecord,
    ReloadNode,
    Splitter,
    StepdownRequest,
    VipSpec,
    decode,
    encode,
)

CONFIG = LeaderConfig("cluster.yaml@v3", (VipSpec("192.0.2.10", "eth0"),
                                          VipSpec("2001:db8::10", "eth1")),
                      3, 0.2, ("192.0.2.2", 7946), ("192.0.2.3", 7946))
MESSAGES: list[Any] = [
    KeeperState("ACTIVE", 7, 1700000000.5, True, ("192.0.2.10",), True),
    LeaderRecord("vip_acquired", 7, 12.5, 1700000000.5, vip="192.0.2.10", basis="zk"),
    Handover(7), ReloadNode(), CONFIG, StepdownRequest(), HandedOver(7), Heartbeat(42),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Any) -> None:
    framed = encode(message)
    (body,) = Splitter().feed(framed)
    assert decode(body) == message


def test_a_state_carries_the_metrics_fields_which_do_not_count_as_a_change() -> None:
    state = KeeperState("ACTIVE", 7, 1.5, True, ("192.0.2.10",), True, lease_until=812.25,
                        peer_up=True, peer_received=40, peer_rejected=(("bad HMAC", 3),))
    (body,) = Splitter().feed(encode(state))
    got = decode(body)
    assert (got.lease_until, got.peer_up, got.peer_received, got.peer_rejected) == (
        812.25, True, 40, (("bad HMAC", 3),))
    # The keeper sends a state when it changed: a lease renewed or a beat counted is not one.
    assert got == KeeperState("ACTIVE", 7, 1.5, True, ("192.0.2.10",), True)


@pytest.mark.parametrize(("rejected", "error"), [
    ([["bad HMAC"]], "state: peer_rejected[]: expected [reason, count]"),
    ([["x" * 65, 1]], "state: reason: expected a string of at most 64"),
    ([["bad HMAC", -1]], "state: count: expected an integer"),
    ([["r", 1]] * 17, "state: peer_rejected: expected a list of at most 16 items"),
])
def test_bad_peer_counts_are_refused(rejected: list[Any], error: str) -> None:
    raw = body("state", role="ACTIVE", epoch=1, since=1.0, zk_connected=True, vips=[],
               have_config=True, lease_until=0.0, peer_up=False, peer_received=0,
               peer_rejected=rejected)
    with pytest.raises(ChannelError) as info:
        decode(raw)
    assert str(info.value).startswith(error)


def test_the_splitter_reassembles_messages_cut_anywhere() -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    splitter = Splitter()
    bodies = []
    for i in range(0, len(stream), 7):
        bodies += splitter.feed(stream[i:i + 7])
    assert [decode(b) for b in bodies] == MESSAGES


def body(kind: str, **fields: Any) -> bytes:
    return json.dumps({"kind": kind, **fields}).encode()


GOOD_CONFIG = CONFIG.to_fields()


@pytest.mark.parametrize(("raw", "error"), [
    (b"\xff", "not a JSON message"),
    (b"[1]", "a message must be a JSON object"),
    (body("nope"), "unknown message kind 'nope'"),
    (body("heartbeat", seq=True), "heartbeat: seq: expected an integer"),
    (body("heartbeat", seq=-1), "heartbeat: seq: expected an integer"),
    (body("handover"), "handover: epoch: expected an integer"),
    (body("state", role="ACTIVE", epoch=1, since=float("nan"), zk_connected=True, vips=[],
          have_config=True), "state: since: expected a number"),
    (body("state", role="ACTIVE", epoch=1, since=1.0, zk_connected=1, vips=[],
          have_config=True), "state: zk_connected: expected true or false"),
    (body("config", **{**GOOD_CONFIG, "vips": [["192.0.2.300", "eth0"]]}),
     "config: vips[].address: expected an IP address"),
    (body("config", **{**GOOD_CONFIG, "vips": [["192.0.2.10", "eth0/1"]]}),
     "config: vips[].interface: expected an interface name"),
    (body("config", **{**GOOD_CONFIG, "vips": [["192.0.2.10", "x" * 16]]}),
     "config: vips[].interface: expected an interface name"),
    (body("config", **{**GOOD_CONFIG, "vips": [["192.0.2.10", ".."]]}),
     "config: vips[].interface: expected an interface name"),
    (body("config", **{**GOOD_CONFIG, "vips": [["192.0.2.10", "a"], ["192.0.2.10", "b"]]}),
     "config: vips: an address appears twice"),
    (body("config", **{**GOOD_CONFIG, "vips": [["192.0.2.10", "eth0"]] * 257}),
     "config: vips: expected a list of at most 256 items"),
    (body("config", **{**GOOD_CONFIG, "announce_count": 1000}),
     "config: announce_count: expected an integer in [0, 100]"),
    (body("config", **{**GOOD_CONFIG, "peer_remote": ["192.0.2.3", 0]}),
     "config: peer_remote: expected a port in [1, 65535]"),
    (body("record", event="x" * 33, epoch=1, monotonic=1.0, wall=1.0, vip="", state="",
          reason="", basis="", count=0), "record: event: expected a string of at most 32"),
])
def test_bad_messages_are_refused_naming_the_field(raw: bytes, error: str) -> None:
    with pytest.raises(ChannelError) as info:
        decode(raw)
    assert str(info.value).startswith(error)


def test_oversized_messages_are_refused_both_ways() -> None:
    with pytest.raises(ChannelError, match="exceeds"):
        Splitter().feed(HEADER.pack(MAX_MESSAGE + 1))
    with pytest.raises(ChannelError, match="exceeds"):
        encode(LeaderRecord("transition", 1, 1.0, 1.0, reason="x" * (MAX_MESSAGE + 1)))


def test_channel_delivers_skips_an_invalid_message_and_reports_the_close() -> None:
    async def run() -> tuple[list[Any], list[str], list[str]]:
        a, b = socket.socketpair()
        got: list[Any] = []
        invalid: list[str] = []
        closed: list[str] = []
        done = asyncio.Event()

        def on_message(m: Any) -> None:
            got.append(m)

        def on_close(why: str) -> None:
            closed.append(why)
            done.set()

        channel = Channel(b, on_message=on_message, on_close=on_close,
                          on_invalid=lambda exc: invalid.append(str(exc)))
        bad = body("heartbeat", seq="x")
        a.sendall(encode(Heartbeat(1)) + HEADER.pack(len(bad)) + bad + encode(Heartbeat(2)))
        a.close()
        await asyncio.wait_for(done.wait(), 10)
        assert channel.closed and not channel.send(Heartbeat(3))
        return got, invalid, closed

    got, invalid, closed = asyncio.run(run())
    assert got == [Heartbeat(1), Heartbeat(2)]
    assert len(invalid) == 1 and invalid[0].startswith("heartbeat: seq")
    assert closed == ["the other end closed the channel"]


def test_a_peer_that_does_not_read_costs_a_bounded_buffer_and_never_blocks() -> None:
    async def run() -> tuple[int, int, int]:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        channel = Channel(a, on_message=lambda m: None, on_close=lambda why: None,
                          limit=8192)
        sent = sum(channel.send(Heartbeat(i)) for i in range(20_000))  # b never reads
        dropped = channel.dropped
        # Once the reader reads again, what was kept arrives, in order.
        received = Splitter()
        bodies: list[bytes] = []
        b.setblocking(False)
        for _ in range(500):
            await asyncio.sleep(0.01)
            try:
                bodies += received.feed(b.recv(65536))
            except BlockingIOError:
                if len(bodies) == sent:
                    break
        seqs = [decode(x).seq for x in bodies]
        assert seqs == sorted(seqs)
        channel.close()
        b.close()
        return sent, dropped, len(bodies)

    sent, dropped, received = asyncio.run(run())
    assert dropped > 0 and sent + dropped == 20_000
    assert received == sent


def test_a_record_keeps_the_keepers_time_of_the_event() -> None:
    record = LeaderRecord("vip_released", 7, 12.3456789, 1700000000.1234567, vip="192.0.2.10",
                          reason="stepdown")
    assert record.record() == {"event": "vip_released", "epoch": 7, "vip": "192.0.2.10",
                               "reason": "stepdown", "monotonic": 12.345679,
                               "wall": 1700000000.123457}


def test_one_turn_reads_a_bounded_amount_however_much_is_waiting() -> None:
    # A peer writing without pause always has more waiting: each turn of the reader's loop
    # takes at most its read budget and returns, the rest comes on the next turns.
    budget = 4096
    a, b = socket.socketpair()
    frame = encode(Heartbeat(1))
    chunk = frame * (1024 // len(frame))
    a.setblocking(False)
    waiting = 0
    with contextlib.suppress(BlockingIOError):
        while waiting < 4 * budget:
            waiting += a.send(chunk)
    assert waiting >= 3 * budget

    async def run() -> list[int]:
        got: list[Any] = []
        channel = Channel(b, on_message=got.append, on_close=lambda why: None,
                          read_budget=budget)
        turns = []
        for _ in range(2):
            channel.drain()
            turns.append(len(got))
        channel.close()
        return turns

    first, second = asyncio.run(run())
    a.close()
    assert 0 < first * len(frame) <= budget
    assert second > first
