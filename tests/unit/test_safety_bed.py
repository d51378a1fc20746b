"""The safety bed's pure parts: an ensemble member's quorum lines, the sessions read from a
server's ``cons`` answer, and the client's outage from its probes."""

from __future__ import annotations

import pytest

from lvsctl.failover.timeline import Sample
from lvsctl.testbed.safety import _served, longest_outage
from lvsctl.testbed.zookeeper import (
    ClientSession,
    Member,
    QuorumSeat,
    ZooKeeperEnsemble,
    ZooKeeperServer,
)

CONS = (
    " /192.0.2.2:45678[1](queued=0,recved=12,sent=12,sid=0x10000a1b2c30000,lop=PING,"
    "est=1764460000000,to=6000,lcxid=0x5,lzxid=0xffffffffffffffff,lresp=1764460001000,"
    "llat=0,minlat=0,avglat=0,maxlat=1)\n"
    " /192.0.2.50:41000[0](queued=0,recved=1,sent=0)\n"
)


def test_a_quorum_seat_names_every_member_and_the_limits() -> None:
    seat = QuorumSeat(2, ((1, "10.0.0.1", 2888, 3888), (2, "10.0.0.2", 2888, 3888)), 50, 20)
    assert seat.config_lines() == ["initLimit=50", "syncLimit=20",
                                   "server.1=10.0.0.1:2888:3888", "server.2=10.0.0.2:2888:3888"]


def test_sessions_come_from_cons_without_the_answering_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = ZooKeeperServer(host="127.0.0.1", port=2181)
    try:
        monkeypatch.setattr(server, "four_letter", lambda word, timeout=2.0: CONS)
        assert server.sessions() == [ClientSession("192.0.2.2", 0x10000a1b2c30000, 6000)]
    finally:
        server.close()


def test_an_ensemble_has_an_odd_number_of_servers() -> None:
    with pytest.raises(ValueError, match="odd number"):
        ZooKeeperEnsemble([Member("10.0.0.1"), Member("10.0.0.2")])


def samples(*oks: bool) -> list[Sample]:
    return [Sample(float(i), ok) for i, ok in enumerate(oks)]


@pytest.mark.parametrize(("oks", "outage"), [
    ((True, True, True), 0.0),
    ((True, False, False, True), 2.0),  # from the first unanswered to the next answered
    ((False, True, False, False, False), 2.0),  # still unanswered at the end: up to the last
])
def test_the_longest_outage(oks: tuple[bool, ...], outage: float) -> None:
    assert longest_outage(samples(*oks)) == outage


def test_served_needs_the_last_probes_after_the_moment_answered() -> None:
    assert _served(samples(False, *[True] * 5), 0.0)
    assert not _served(samples(*[True] * 5, False), -1.0)
    assert not _served(samples(*[True] * 6), 2.0)  # only 3 started after 2.0
