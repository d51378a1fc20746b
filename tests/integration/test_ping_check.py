"""The ping checker in real network namespaces: ICMP echo over IPv4 and IPv6, from an
unprivileged ICMP datagram socket and, where ``ping_group_range`` refuses it, from a raw socket.

The prober runs in a namespace of its own (one thread switched into it), linked to one that
answers echo requests and one that ignores them. Runs on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Iterator

import pytest

from lvsctl.core.model import Check, CheckTiming, PingCheck
from lvsctl.healthcheck.checkers import Checkers, is_echo_reply, open_icmp
from lvsctl.healthcheck.result import CheckResult
from lvsctl.testbed.netns import entered
from tests.support.loops import each_loop  # noqa: F401  (runs every test on both loops)
from tests.support.netns import Lab, Netns

TIMING = CheckTiming(interval=2.0, timeout=1.0, rise=1, fall=1, warmup=0)
ANSWERS = ("10.201.0.2", "fd00:201::2")
SILENT = ("10.201.1.2", "fd00:201:1::2")


class Hosts:
    """A prober namespace linked to a host that answers pings and one that ignores them."""

    def __init__(self, lab: Lab) -> None:
        self.prober = lab.netns("pp")
        answers, silent = lab.netns("pa"), lab.netns("ps")
        silent.run(["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1",
                    "-w", "net.ipv6.icmp.echo_ignore_all=1"])
        for k, (ns, (v4, v6)) in enumerate(((answers, ANSWERS), (silent, SILENT))):
            self._link(lab, ns, k, v4, v6)

    def _link(self, lab: Lab, ns: Netns, k: int, v4: str, v6: str) -> None:
        here, there = lab.link(self.prober, f"10.201.{k}.1/24", ns, f"{v4}/24",
                               a_if=f"eth{k}", b_if="eth0")
        # nodad: usable at once, instead of after duplicate address detection.
        self.prober.ip("addr", "add", ("fd00:201::1/64", "fd00:201:1::1/64")[k], "dev", here,
                       "nodad")
        ns.ip("addr", "add", f"{v6}/64", "dev", there, "nodad")

    def allow_datagram(self, allowed: bool) -> None:
        """Whether root's group may open ICMP datagram sockets in the prober namespace."""
        self.prober.run(["sysctl", "-q", "-w",
                         f"net.ipv4.ping_group_range={'0 0' if allowed else '1 0'}"])

    def call(self, fn):  # type: ignore[no-untyped-def]
        """Run ``fn()`` in a thread switched into the prober namespace; its result."""
        def inner():  # type: ignore[no-untyped-def]
            with entered(self.prober.name):
                return fn()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(inner).result(timeout=60)

    def ping(self, address: str) -> CheckResult:
        async def probe() -> CheckResult:
            async with Checkers() as checkers:
                return await checkers.check(Check(PingCheck(), TIMING, address, 0))
        # asyncio.run in that thread uses the loop policy the test set (asyncio or uvloop).
        return self.call(lambda: asyncio.run(asyncio.wait_for(probe(), 30)))  # type: ignore[no-any-return]


@pytest.fixture
def hosts(lab: Lab) -> Iterator[Hosts]:
    yield Hosts(lab)


@pytest.mark.parametrize("datagram", [True, False], ids=["datagram", "raw"])
def test_ping_answering_and_silent_hosts(hosts: Hosts, datagram: bool) -> None:
    hosts.allow_datagram(datagram)
    for family in (socket.AF_INET, socket.AF_INET6):
        sock, raw = hosts.call(lambda f=family: open_icmp(f))
        sock.close()
        assert raw is not datagram  # the socket kind this case is about
    for address in ANSWERS:
        result = hosts.ping(address)
        assert (result.healthy, result.reason) == (True, "echo reply"), address
    for address in SILENT:
        result = hosts.ping(address)
        assert (result.healthy, result.timed_out) == (False, True), address
        assert result.reason == "timed out after 1s waiting for the echo reply"


def test_ping_unreachable_network_is_an_error(hosts: Hosts) -> None:
    hosts.allow_datagram(True)
    result = hosts.ping("10.202.0.9")  # no route in the prober namespace
    assert (result.healthy, result.reason) == (False, "network is unreachable")


def test_echo_reply_matching_is_strict() -> None:
    head = bytes([0, 0, 0, 0, 0x12, 0x34, 0, 7])
    assert is_echo_reply(socket.AF_INET, head + b"data", False, None, 7, b"data")
    assert not is_echo_reply(socket.AF_INET, head + b"dat", False, None, 7, b"data")
    assert not is_echo_reply(socket.AF_INET, head + b"data", False, None, 8, b"data")
    assert not is_echo_reply(socket.AF_INET, head + b"data", True, 0x1234, 7, b"data")  # no IP
    ip = bytes([0x45]) + bytes(19)
    assert is_echo_reply(socket.AF_INET, ip + head + b"data", True, 0x1234, 7, b"data")
    assert not is_echo_reply(socket.AF_INET, ip + head + b"data", True, 0x1235, 7, b"data")
    request = bytes([8]) + head[1:]
    assert not is_echo_reply(socket.AF_INET, request + b"data", False, None, 7, b"data")
    assert is_echo_reply(socket.AF_INET6, bytes([129]) + head[1:] + b"x", True, 0x1234, 7, b"x")
