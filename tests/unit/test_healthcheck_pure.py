"""Pure parts of the checkers and scheduler: judging answers, planning targets."""

from __future__ import annotations

import hashlib

import dns.message
import dns.rrset
import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import CheckTiming, DnsCheck, Health, HttpCheck, MiscCheck
from lvsctl.healthcheck.checkers import (
    echo_request,
    http_request,
    icmp_checksum,
    judge_dns,
    judge_exit,
    judge_http,
    payload_bytes,
)
from lvsctl.healthcheck.hysteresis import State, Status, next_state
from lvsctl.healthcheck.result import CheckResult
from lvsctl.healthcheck.scheduler import (
    LAG_HIGH,
    MAX_REASON,
    MIN_SLOTS,
    LagMonitor,
    combine,
    late,
    next_limit,
    plan_multi,
    plan_targets,
    settle,
    target_label,
)


@pytest.mark.parametrize(
    ("status", "ok", "reason"),
    [
        (200, True, "HTTP 200"),
        (302, True, "HTTP 302"),
        (500, False, "HTTP 500, expected 200, 300-399"),
        (404, False, "HTTP 404, expected 200, 300-399"),
    ],
)
def test_judge_http_status(status: int, ok: bool, reason: str) -> None:
    kind = HttpCheck(status=((200, 200), (300, 399)))
    outcome = judge_http(kind, status, None)
    assert (outcome.healthy, outcome.reason) == (ok, reason)


def test_judge_http_body_and_digest() -> None:
    assert judge_http(HttpCheck(body=r"ok\b"), 200, b"all ok").healthy
    bad = judge_http(HttpCheck(body=r"^ready$"), 200, b"starting")
    assert (bad.healthy, bad.reason) == (False, "HTTP 200, body does not match /^ready$/")
    good = "sha256:" + hashlib.sha256(b"v1").hexdigest()
    assert judge_http(HttpCheck(digest=good), 200, b"v1").healthy
    wrong = judge_http(HttpCheck(digest=good), 200, b"v2")
    assert not wrong.healthy and wrong.reason.startswith("HTTP 200, body sha256 is ")


@pytest.mark.parametrize(
    ("dynamic", "code", "healthy", "weight", "reason"),
    [
        (False, 0, True, None, "exit 0: fine"),
        (False, 1, False, None, "exit 1: fine"),
        (False, 7, False, None, "exit 7: fine"),
        (True, 1, False, None, "exit 1: fine"),
        (True, 2, True, 0, "exit 2: weight 0"),
        (True, 12, True, 10, "exit 12: weight 10"),
        (True, 255, True, 253, "exit 255: weight 253"),
        (True, -9, False, None, "killed by signal 9: fine"),
    ],
)
def test_judge_exit(
    dynamic: bool, code: int, healthy: bool, weight: int | None, reason: str
) -> None:
    outcome = judge_exit(MiscCheck(command=("x",), dynamic=dynamic), code, "starting\nfine\n")
    assert (outcome.healthy, outcome.weight, outcome.reason) == (healthy, weight, reason)


def test_judge_dns() -> None:
    query = dns.message.make_query("svc.test.", "A")
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text("svc.test.", 30, "IN", "A", "10.0.0.1", "10.0.0.2"))
    assert judge_dns(DnsCheck(name="svc.test.", expect=("10.0.0.2",)), answer).healthy
    lacks = judge_dns(DnsCheck(name="svc.test.", expect=("10.0.0.9",)), answer)
    assert lacks.reason == "DNS answer lacks 10.0.0.9 (got 10.0.0.1, 10.0.0.2)"
    empty = dns.message.make_response(query)
    assert judge_dns(DnsCheck(name="svc.test."), empty).reason == "DNS no A answer for svc.test."
    empty.set_rcode(3)
    assert judge_dns(DnsCheck(name="svc.test."), empty).reason == "DNS NXDOMAIN for svc.test. A"


def test_payload_bytes() -> None:
    assert payload_bytes("PING\x00\xff") == b"PING\x00\xff"
    assert payload_bytes("ü→") == "ü→".encode()


SHARED = """
cluster: t
zookeeper: {hosts: ["127.0.0.1:2181"]}
directors:
  - {name: lb1, address: 192.0.2.2/24, interface: eth0, peer: {address: 192.0.2.2}}
  - {name: lb2, address: 192.0.2.3/24, interface: eth0, peer: {address: 192.0.2.3}}
vips: [{address: 192.0.2.10, interface: eth0}, {address: 192.0.2.11, interface: eth0}]
services:
  - name: a
    vip: 192.0.2.10
    port: 80
    forwarding: dr
    check: {type: http, path: /h}
    realservers: [{name: r1, address: 192.0.2.21}, {name: r2, address: 192.0.2.22}]
  - name: b
    vip: 192.0.2.11
    port: 80
    forwarding: dr
    check: {type: http, path: /h}
    realservers: [{name: r1, address: 192.0.2.21}, {name: r2b, address: 192.0.2.22,
                  check: {type: http, path: /other}}]
  - name: c
    vip: 192.0.2.11
    port: 81
    forwarding: dr
    realservers: [{name: r1, address: 192.0.2.21}]
"""


def test_plan_targets_dedupes_shared_checks() -> None:
    cluster = parse_cluster(SHARED, "shared.yaml").cluster
    plan, unchecked = plan_targets(cluster)
    by_keys = sorted(plan.values())
    assert by_keys == [
        (("a", "r1"), ("b", "r1")),  # same address, port and check spec: one target
        (("a", "r2"),),
        (("b", "r2b"),),  # another path is another check spec
    ]
    assert unchecked == (("c", "r1"),)
    only_b, _ = plan_targets(cluster, ["b"])
    assert sorted(only_b.values()) == [(("b", "r1"),), (("b", "r2b"),)]


def test_lag_figures() -> None:
    monitor = LagMonitor()
    assert monitor.figures() == (0.0, 0.0, 0.0)
    monitor.samples.extend([0.001] * 98 + [0.02, 0.5])
    p50, p99, worst = monitor.figures()
    assert (p50, p99, worst) == (0.001, 0.02, 0.5)


def test_late_timeouts_are_inconclusive_until_twice_fall() -> None:
    timing = CheckTiming(interval=1.0, timeout=0.5, rise=2, fall=3)
    up = next_state(State(), CheckResult(True, "HTTP 200", 0.01), timing, 1.0)
    on_time = CheckResult(False, "timed out after 0.5s connecting", 0.52, timed_out=True)
    late_one = CheckResult(False, "timed out after 0.5s connecting", 0.9, timed_out=True)
    refused = CheckResult(False, "connection refused", 0.9)
    assert not late(on_time, timing) and late(late_one, timing) and not late(refused, timing)
    # An on-time timeout is an ordinary failure.
    assert settle(up, 0, on_time, timing, 2.0)[0].failures == 1
    # Late ones leave the state alone, six times (2 x fall), then count as failures.
    state, streak = up, 0
    for n in range(1, 7):
        state, streak = settle(state, streak, late_one, timing, float(n))
        assert (state, streak) == (up, n)
    state, streak = settle(state, streak, late_one, timing, 7.0)
    assert (state.failures, streak) == (1, 0)
    # A result that is not a late timeout resets the streak.
    assert settle(up, 4, refused, timing, 8.0)[1] == 0


@pytest.mark.parametrize(
    ("kind", "address", "port", "head"),
    [
        (HttpCheck(path="/healthz"), "10.0.0.5", 8080,
         "GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:8080\r\n"),
        (HttpCheck(), "10.0.0.5", 80, "GET / HTTP/1.1\r\nHost: 10.0.0.5\r\n"),
        (HttpCheck(type="https"), "10.0.0.5", 443, "GET / HTTP/1.1\r\nHost: 10.0.0.5\r\n"),
        (HttpCheck(type="https"), "10.0.0.5", 80, "GET / HTTP/1.1\r\nHost: 10.0.0.5:80\r\n"),
        (HttpCheck(), "2001:db8::5", 8080, "GET / HTTP/1.1\r\nHost: [2001:db8::5]:8080\r\n"),
        (HttpCheck(), "2001:db8::5", 80, "GET / HTTP/1.1\r\nHost: [2001:db8::5]\r\n"),
        (HttpCheck(method="HEAD", host="www.test"), "10.0.0.5", 8080,
         "HEAD / HTTP/1.1\r\nHost: www.test\r\n"),
    ],
)
def test_http_request_head(kind: HttpCheck, address: str, port: int, head: str) -> None:
    request = http_request(kind, address, port).decode()
    assert request.startswith(head)
    assert request.endswith("\r\nConnection: close\r\n\r\n")


def test_http_request_body_methods_send_an_empty_body() -> None:
    assert b"Content-Length: 0\r\n" in http_request(HttpCheck(method="POST"), "10.0.0.5", 80)
    assert b"Content-Length" not in http_request(HttpCheck(method="GET"), "10.0.0.5", 80)


LOW, HIGH = LAG_HIGH / 2, LAG_HIGH * 2


@pytest.mark.parametrize(
    ("limit", "lag", "waiting", "ceiling", "after"),
    [
        (64, HIGH, 0, 4096, 32),  # the loop is late: halve
        (64, HIGH, 10, 4096, 32),  # ... even with probes waiting
        (MIN_SLOTS + 2, HIGH, 0, 4096, MIN_SLOTS),  # not below the floor
        (1, HIGH, 0, 1, 1),  # a ceiling below the floor is the floor
        (64, LOW, 10, 4096, 80),  # on time and asked for: a quarter more
        (3, LOW, 1, 4096, 4),  # at least one more
        (4000, LOW, 500, 4096, 4096),  # not above the ceiling
        (64, LOW, 0, 4096, 64),  # on time, nobody waiting: unchanged
        (64, LAG_HIGH, 5, 4096, 80),  # exactly LAG_HIGH is on time
    ],
)
def test_next_limit(limit: int, lag: float, waiting: int, ceiling: int, after: int) -> None:
    assert next_limit(limit, lag, waiting, ceiling) == after


UP, DOWN, UNKNOWN = Status.UP, Status.DOWN, Status.UNKNOWN


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        # (status, reason, dynamic weight) per check -> the real server's health
        ([(UP, "HTTP 200", None), (UP, "connected", None)],
         Health(True, None, "a: HTTP 200; b: connected")),
        ([(UP, "HTTP 200", None), (DOWN, "connection refused", None)],
         Health(False, None, "b: connection refused")),
        ([(DOWN, "HTTP 500", None), (DOWN, "connection refused", None)],
         Health(False, None, "a: HTTP 500; b: connection refused")),
        ([(DOWN, "HTTP 500", None), (UNKNOWN, "no result yet", None)],
         Health(False, None, "a: HTTP 500")),  # one down is enough to decide
        ([(UP, "HTTP 200", None), (UNKNOWN, "no result yet", None)], None),  # undecided
        ([(UNKNOWN, "no result yet", None)] * 2, None),
        ([(UP, "exit 7: weight 5", 5), (UP, "exit 4: weight 2", 2), (UP, "ok", None)],
         Health(True, 2, "a: exit 7: weight 5; b: exit 4: weight 2; c: ok")),
    ],
)
def test_combine_all_checks_must_be_up(
    states: list[tuple[Status, str, int | None]], expected: Health | None
) -> None:
    parts = [(label, State(status, reason=reason, weight=weight))
             for label, (status, reason, weight) in zip("abc", states, strict=False)]
    assert combine(parts) == expected


def test_combined_reason_is_bounded() -> None:
    parts = [(f"tcp 192.0.2.{i}:80", State(DOWN, reason="x" * 150)) for i in range(16)]
    health = combine(parts)
    assert health is not None and len(health.reason) == MAX_REASON
    assert health.reason.startswith("tcp 192.0.2.0:80: xxx") and health.reason.endswith("...")


def test_plan_with_several_checks_per_server() -> None:
    text = SHARED.replace(
        "check: {type: http, path: /h}", "checks: [{type: http, path: /h}, {type: ping}]", 1)
    cluster = parse_cluster(text, "multi.yaml").cluster
    plan, _ = plan_targets(cluster)
    assert sorted(keys for check, keys in plan.items() if check.type == "ping") == [
        (("a", "r1"),), (("a", "r2"),)]
    assert sorted(target_label(c) for c in plan if c.type == "ping") == [
        "ping 192.0.2.21", "ping 192.0.2.22"]
    multi = plan_multi(cluster)
    assert sorted(multi) == [("a", "r1"), ("a", "r2")]
    assert [c.type for c in multi["a", "r1"]] == ["http", "ping"]
    assert plan_multi(cluster, ["b"]) == {}


def test_icmp_checksum_and_echo_request() -> None:
    # RFC 1071's example words sum to 0xddf2; the checksum is its complement.
    assert icmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    packet = echo_request(2, 0x1234, 7, b"abc")  # AF_INET
    assert packet[:2] == bytes([8, 0]) and packet[4:8] == bytes.fromhex("12340007")
    assert icmp_checksum(packet) == 0  # a packet with its checksum in sums to zero
    assert echo_request(10, 1, 2, b"")[:4] == bytes([128, 0, 0, 0])  # AF_INET6: kernel sums
