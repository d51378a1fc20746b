"""Cluster-file keys carried over from keepalived: several checks, smtp and ping checks,
per-real-server on_failure, ops, ipvs_timeouts, alpha and quorum_hysteresis."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import HttpCheck, IpvsTimeouts, PingCheck, SmtpCheck, TcpCheck
from lvsctl.core.schema import MAX_CHECKS
from tests.conftest import EXAMPLE, MINIMAL
from tests.unit.test_config import _DELETE, issues_of, mutate

TCP = {"type": "tcp", "interval": 3, "timeout": 1}
HTTP = {"type": "http", "path": "/health", "interval": 2, "timeout": 1}


def loaded(doc: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_cluster(yaml.safe_dump(doc), "c.yaml")


def udp_service(**extra: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["services"].append({
        "name": "dns", "vip": "192.0.2.10", "port": 53, "protocol": "udp", "forwarding": "dr",
        "realservers": [{"name": "ns1", "address": "192.0.2.31"}], **extra,
    })
    return doc


# (key path to change, new value, key path expected in the error, words expected in its message)
BAD = [
    ("services[0].checks", [TCP], "services[0].checks", "not both"),
    ("services[0].realservers[0].checks", [TCP], "services[0].realservers[0].checks",
     None),  # filled below: check + checks on a real server
    ("services[1].checks", [], "services[1].checks", "at least 1"),
    ("services[1].checks", [TCP] * (MAX_CHECKS + 1), "services[1].checks",
     f"at most {MAX_CHECKS}"),
    ("services[1].checks", [TCP, TCP], "services[1].checks[1]", "same check as an earlier"),
    ("services[1].checks", [TCP, {"type": "tcp", "timeout": 5}], "services[1].checks[1].timeout",
     "shorter than the interval"),
    ("services[1].checks", [{"type": "icmp"}], "services[1].checks[0].type",
     "unknown check type"),
    ("services[1].checks", [{"type": "ping", "port": 7}], "services[1].checks[0].port",
     "a ping check has no port"),
    ("services[1].check", {"type": "smtp", "helo_name": "bad name!"},
     "services[1].check.helo_name", "expected form"),
    ("services[1].check", {"type": "smtp", "helo": "x"}, "services[1].check.helo",
     "unknown key (did you mean 'helo_name'?)"),
    ("services[0].realservers[0].on_failure", "drop", "services[0].realservers[0].on_failure",
     "expected one of"),
    ("services[0].ops", True, "services[0].ops", "only for udp services"),
    ("services[0].ops", "yes", "services[0].ops", "expected true or false"),
    ("services[0].alpha", 1, "services[0].alpha", "expected true or false"),
    ("services[0].quorum_hysteresis", 2, "services[0].quorum_hysteresis",
     "must be at most the quorum (1)"),
    ("services[0].quorum_hysteresis", -1, "services[0].quorum_hysteresis", "at least 0"),
    ("ipvs_timeouts", {"tcp": "15m", "udp": "1.5s"}, "ipvs_timeouts.udp", "whole seconds"),
    ("ipvs_timeouts", {"tcp": 0}, "ipvs_timeouts.tcp", "at least 1"),
    ("ipvs_timeouts", {"tcp": "2d"}, "ipvs_timeouts.tcp", "not a duration"),
    ("ipvs_timeouts", {"tcpfin": 120}, "ipvs_timeouts.tcpfin", "did you mean 'tcp_fin'"),
    ("ipvs_timeouts", {}, "ipvs_timeouts", "at least one of tcp, tcp_fin, udp"),
]
BAD[1] = (*BAD[1][:3], "not both")
MINIMAL_WITH_RS_CHECK = mutate(MINIMAL, "services[0].realservers[0].check", TCP)


@pytest.mark.parametrize(("path", "value", "where", "words"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_names_key_path_and_rule(path: str, value: Any, where: str, words: str) -> None:
    issues = issues_of(mutate(MINIMAL_WITH_RS_CHECK, path, value))
    assert any(p == where and words in m for p, m in issues), issues


def test_quorum_plus_hysteresis_must_be_reachable() -> None:
    doc = mutate(MINIMAL, "services[0].quorum", 2)
    doc = mutate(doc, "services[0].quorum_hysteresis", 1)
    assert ("services[0].quorum_hysteresis",
            "quorum 2 + 1 is more than the service's 2 real server(s): once lost, quorum could "
            "never come back") in issues_of(doc)


def test_service_checks_are_all_inherited_in_order() -> None:
    doc = mutate(MINIMAL, "services[0].check", _DELETE)
    doc = mutate(doc, "services[0].checks", [TCP, HTTP, {"type": "ping"}])
    www = loaded(doc).cluster.services[0]
    for rs in www.realservers:
        assert [c.type for c in rs.checks] == ["tcp", "http", "ping"]
        tcp, http, ping = rs.checks
        assert (tcp.address, tcp.port, tcp.timing.interval) == (rs.address, 80, 3.0)
        assert isinstance(http.kind, HttpCheck) and http.kind.path == "/health"
        assert isinstance(ping.kind, PingCheck) and (ping.address, ping.port) == (rs.address, 0)
    assert www.realservers[0].check == www.realservers[0].checks[0]


def test_real_server_checks_replace_the_service_list() -> None:
    doc = mutate(MINIMAL, "services[0].check", _DELETE)
    doc = mutate(doc, "services[0].checks", [TCP, HTTP])
    doc = mutate(doc, "services[0].realservers[1].checks", [{"type": "smtp", "port": 25}])
    first, second = loaded(doc).cluster.services[0].realservers
    assert len(first.checks) == 2
    (smtp,) = second.checks
    assert smtp.kind == SmtpCheck(helo_name="lvsctl") and smtp.port == 25
    assert smtp.timing.interval == 2.0  # the default: nothing is merged from the list


def test_real_server_check_replaces_a_list_but_merges_into_one_check() -> None:
    # The service has a list: the server's own check replaces it whole.
    doc = mutate(MINIMAL, "services[0].check", _DELETE)
    doc = mutate(doc, "services[0].checks", [TCP, HTTP])
    doc = mutate(doc, "services[0].realservers[1].check", {"type": "http", "path": "/rs"})
    (http,) = loaded(doc).cluster.services[0].realservers[1].checks
    assert isinstance(http.kind, HttpCheck) and http.kind.path == "/rs"
    assert http.timing.interval == 2.0 and http.timing.timeout == 1.0
    # The service has one check (as a one-item list): a same-type check overrides its keys.
    doc = mutate(doc, "services[0].checks", [{**HTTP, "interval": 5}])
    (http,) = loaded(doc).cluster.services[0].realservers[1].checks
    assert isinstance(http.kind, HttpCheck) and http.kind.path == "/rs"
    assert http.timing.interval == 5.0


def test_smtp_check_defaults_and_helo_name() -> None:
    doc = mutate(MINIMAL, "services[0].check", {"type": "smtp", "helo_name": "lb1.example",
                                                "port": 25})
    doc = mutate(doc, "services[0].realservers[1].check", {"type": "smtp"})
    first, second = loaded(doc).cluster.services[0].realservers
    assert first.checks[0].kind == SmtpCheck(helo_name="lb1.example")
    assert first.checks[0].port == 25
    assert second.checks[0].kind == SmtpCheck(helo_name="lb1.example")  # merged, same type


def test_on_failure_is_inherited_and_overridden_per_real_server() -> None:
    doc = mutate(MINIMAL, "services[0].on_failure", "weight0")
    doc = mutate(doc, "services[0].realservers[1].on_failure", "remove")
    www, app = loaded(doc).cluster.services
    assert [rs.on_failure for rs in www.realservers] == ["weight0", "remove"]
    assert [rs.on_failure for rs in app.realservers] == ["remove"]


def test_ops_goes_into_the_service_spec_flags() -> None:
    cluster = loaded(udp_service(ops=True)).cluster
    assert cluster.service("dns").spec.flags == frozenset({"ops"})
    assert "ops" not in loaded(udp_service(ops=False)).cluster.service("dns").spec.flags


def test_alpha_quorum_hysteresis_and_their_defaults() -> None:
    doc = mutate(MINIMAL, "services[0].alpha", True)
    doc = mutate(doc, "services[0].quorum_hysteresis", 1)
    doc = mutate(doc, "services[0].sorry_server", {"address": "192.0.2.99"})
    www, app = loaded(doc).cluster.services
    assert (www.alpha, www.quorum, www.quorum_hysteresis) == (True, 1, 1)
    assert (app.alpha, app.quorum_hysteresis) == (False, 0)


def test_hysteresis_without_sorry_server_and_alpha_without_checks_warn() -> None:
    doc = mutate(MINIMAL, "services[0].quorum_hysteresis", 1)
    doc = mutate(doc, "services[1].alpha", True)
    messages = {w.path: w.message for w in loaded(doc).warnings}
    assert "without a sorry_server" in messages["services[0].quorum_hysteresis"]
    assert "no real server of the service is checked" in messages["services[1].alpha"]


def test_ipvs_timeouts_take_durations_in_whole_seconds() -> None:
    doc = mutate(MINIMAL, "ipvs_timeouts", {"tcp": "15m", "tcp_fin": 120, "udp": "300s"})
    assert loaded(doc).cluster.ipvs_timeouts == IpvsTimeouts(900, 120, 300)
    doc = mutate(MINIMAL, "ipvs_timeouts", {"udp": 30})
    assert loaded(doc).cluster.ipvs_timeouts == IpvsTimeouts(0, 0, 30)
    assert loaded(MINIMAL).cluster.ipvs_timeouts == IpvsTimeouts()
    assert not IpvsTimeouts().given


def test_one_check_stays_the_one_check_form() -> None:
    www = loaded(MINIMAL).cluster.services[0]
    assert [len(rs.checks) for rs in www.realservers] == [1, 1]
    assert all(not isinstance(rs.checks[0].kind, TcpCheck) for rs in www.realservers)


def test_service_checks_are_judged_even_when_every_server_has_its_own() -> None:
    doc = mutate(MINIMAL, "services[0].check", _DELETE)
    doc = mutate(doc, "services[0].checks", [{"type": "tcp", "timeout": 5}, {"type": "ping",
                                                                             "port": 7}])
    for j in (0, 1):
        doc = mutate(doc, f"services[0].realservers[{j}].checks", [TCP])
    issues = issues_of(doc)
    assert ("services[0].checks[0].timeout", "must be shorter than the interval (2s)") in issues
    assert ("services[0].checks[1].port", "a ping check has no port (ICMP echo)") in issues


def test_a_merged_check_is_judged_merged() -> None:
    # Alone, the service's check would be wrong (timeout 3s, default interval 2s); each real
    # server's same-type check sets the interval, and the merged checks are right.
    doc = mutate(MINIMAL, "services[0].check", {"type": "http", "timeout": 3})
    for j in (0, 1):
        doc = mutate(doc, f"services[0].realservers[{j}].check", {"type": "http", "interval": 5})
    www = loaded(doc).cluster.services[0]
    assert [(c.timing.interval, c.timing.timeout) for rs in www.realservers
            for c in rs.checks] == [(5.0, 3.0), (5.0, 3.0)]


def test_the_example_files_commented_keepalived_keys_are_valid() -> None:
    text = EXAMPLE.read_text()
    for key in ("ipvs_timeouts", "checks", "quorum_hysteresis", "alpha", "ops"):
        assert f"# {key}:" in text, key
        text = text.replace(f"# {key}:", f"{key}:")
    text = text.replace("    check: {type: tcp, interval: 2s, timeout: 500ms}\n", "")
    cluster = parse_cluster(text, "cluster.yaml").cluster
    assert cluster.ipvs_timeouts == IpvsTimeouts(900, 120, 300)
    assert [c.type for c in cluster.service("www6").realservers[0].checks] == ["tcp", "ping"]
    dns = cluster.service("dns")
    assert (dns.alpha, dns.quorum_hysteresis, "ops" in dns.spec.flags) == (True, 1, True)
