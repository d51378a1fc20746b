"""Maintenance overrides without ZooKeeper: the record's encoding and bounds, the effective
cluster the planner sees (the truth table of director/maintenance.py), the rows
``GET /realservers`` serves, and the notify section of the cluster file."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from lvsctl.core.config import parse_cluster
from lvsctl.core.errors import ConfigError
from lvsctl.core.model import Health, ServiceKey
from lvsctl.core.records import (
    MAX_OVERRIDE_REASON,
    MAX_OVERRIDES,
    Override,
    Overrides,
    RecordError,
)
from lvsctl.director.maintenance import effective, realserver_rows, unknown_names
from lvsctl.director.reconcile import ObservedDest, ObservedService, desired_table, plan
from tests.conftest import MINIMAL


def cluster(doc: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    return parse_cluster(yaml.safe_dump(doc or MINIMAL), "c.yaml").cluster


def weights(c, health, overrides):  # type: ignore[no-untyped-def]
    eff, eff_health = effective(c, health, overrides)
    table = desired_table(eff, eff_health)
    return {(svc.name, rs.name): (table[svc.key].dests.get(rs.key).weight  # type: ignore[union-attr]
                                  if rs.key in table[svc.key].dests else None)
            for svc in c.services for rs in svc.realservers}


def test_overrides_round_trip_and_replace_by_key() -> None:
    a = Override("web1", None, "kernel upgrade", "ops@h", 1764150000.5)
    b = Override("web2", "www", "", "ops@h", 1764150001.0)
    o = Overrides().with_override(a).with_override(b)
    assert Overrides.from_bytes(o.to_bytes(), "z") == o
    assert Overrides.from_bytes(b"", "z") == Overrides()
    again = o.with_override(Override("web1", None, "other", "x", 2.0))
    assert len(again.items) == 2 and again.of("web1")[0].reason == "other"
    assert o.find("www", "web1") == a and o.find("app", "web1") == a
    assert o.find("app", "web2") is None and o.find("www", "web2") == b
    assert o.without("web2", "app") == o and o.without("web2").items == (a,)


@pytest.mark.parametrize("data, why", [
    (b"[]", "expected an object"),
    (b'{"format": 2, "overrides": []}', "format"),
    (b'{"format": 1, "overrides": [{"realserver": "a", "state": "up"}]}', "expected drain"),
    (b'{"format": 1, "overrides": [{"realserver": 5, "state": "drain"}]}', "expected a string"),
    (json.dumps({"format": 1, "overrides": [
        {"realserver": "a", "state": "drain", "reason": "x" * (MAX_OVERRIDE_REASON + 1)}]}
    ).encode(), "longer than"),
    (json.dumps({"format": 1, "overrides": [{"realserver": f"r{i}", "state": "drain"}
                                            for i in range(MAX_OVERRIDES + 1)]}).encode(),
     "more than"),
    (b"x" * 300_000, "more than such a record may hold"),
])
def test_foreign_or_oversized_overrides_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(RecordError, match=why):
        Overrides.from_bytes(data, "/lvsctl/t/overrides")


def test_too_many_overrides_are_not_written() -> None:
    many = Overrides(tuple(Override(f"r{i}") for i in range(MAX_OVERRIDES + 1)))
    with pytest.raises(RecordError, match="more than"):
        many.to_bytes()


def test_a_drained_server_is_held_at_weight_0_by_the_truth_table() -> None:
    c = cluster()
    drained = Overrides((Override("web2"), Override("app1")))
    ok = {("www", "web1"): Health(True), ("www", "web2"): Health(True)}
    # Checked and healthy: weight 0 instead of 5; unchecked (app1): weight 0 as well.
    assert weights(c, ok, drained) == {("www", "web1"): 1, ("www", "web2"): 0,
                                       ("app", "app1"): 0}
    # Unknown health (a director that just started) is drained the same.
    assert weights(c, {}, drained)[("www", "web2")] == 0
    # Unhealthy with on_failure remove: absent, as without the drain.
    down = {**ok, ("www", "web2"): Health(False, None, "refused")}
    assert weights(c, down, drained)[("www", "web2")] is None
    # Without overrides nothing changes, and the cluster is the same object.
    assert weights(c, ok, Overrides()) == {("www", "web1"): 1, ("www", "web2"): 5,
                                           ("app", "app1"): 1}
    assert effective(c, ok, Overrides())[0] is c


def test_a_drain_in_one_service_leaves_the_others() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["services"].append({"name": "alt", "vip": "192.0.2.10", "port": 81,
                            "forwarding": "dr",
                            "realservers": [{"name": "web1", "address": "192.0.2.21"}]})
    c = cluster(doc)
    got = weights(c, {}, Overrides((Override("web1", "alt"),)))
    assert got[("www", "web1")] == 1 and got[("alt", "web1")] == 0


def test_drained_servers_do_not_count_for_quorum() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["services"][0].update(quorum=2, sorry_server={"address": "192.0.2.99"})
    c = cluster(doc)
    health = {("www", "web1"): Health(True), ("www", "web2"): Health(True)}
    www = c.services[0]
    assert desired_table(c, health)[www.key].quorum_held
    eff, eff_health = effective(c, health, Overrides((Override("web2"),)))
    table = desired_table(eff, eff_health)
    assert not table[www.key].quorum_held
    assert {str(k) for k in table[www.key].dests} == {"192.0.2.21:80", "192.0.2.22:80",
                                                      "192.0.2.99:80"}


def test_the_plan_for_a_drain_is_one_edit_and_never_a_delete() -> None:
    c = cluster()
    www = c.services[0]
    health = {("www", "web1"): Health(True), ("www", "web2"): Health(True)}
    observed = {s: ObservedService(s, d.spec, {
        k: ObservedDest(k, spec.weight, spec.forwarding.value, 7, 2)
        for k, spec in d.dests.items()}) for s, d in desired_table(c, health).items()}
    eff, eff_health = effective(c, health, Overrides((Override("web2", "www"),)))
    ops = plan(desired_table(eff, eff_health), observed, {}, 0.0)
    assert [str(op) for op in ops] == [f"edit dest {www.key} -> 192.0.2.22:80 dr weight 0"]
    # Later passes, the kernel at weight 0 with connections left: nothing to do.
    drained = {**observed, www.key: ObservedService(www.key, observed[www.key].spec, {
        k: ObservedDest(k, 0 if str(k).endswith(".22:80") else 1, 3, 7, 2)
        for k in observed[www.key].dests})}
    assert plan(desired_table(eff, eff_health), drained, {}, 10_000.0) == []


def test_rows_show_override_weights_and_connections() -> None:
    c = cluster()
    www: ServiceKey = c.services[0].key
    held = Override("web2", None, "upgrade")
    observed = {www: ObservedService(www, c.services[0].spec, {
        rs.key: ObservedDest(rs.key, 0 if rs.name == "web2" else 1, 3, 4, 9)
        for rs in c.services[0].realservers})}
    rows = {(r["service"], r["realserver"]): r
            for r in realserver_rows(c, {}, Overrides((held,)), observed)}
    web2 = rows[("www", "web2")]
    assert (web2["weight"], web2["effective_weight"], web2["kernel_weight"]) == (5, 0, 0)
    assert (web2["active_conns"], web2["inactive_conns"]) == (4, 9)
    assert web2["override"]["reason"] == "upgrade"
    assert rows[("www", "web1")]["override"] is None
    assert rows[("app", "app1")]["kernel_weight"] is None  # the kernel has no such service
    assert realserver_rows(c, {}, Overrides(), None)[0]["observed"] is False


def test_overrides_naming_nothing_in_the_cluster_are_found() -> None:
    found = unknown_names(cluster(), Overrides((Override("web1", "app"), Override("gone"),
                                                Override("web1"))))
    assert found == ["app/web1", "gone"]


HOOK = {"name": "pager", "command": ["/usr/local/bin/page", "--team", "lb"]}


@pytest.mark.parametrize("hook, where, why", [
    ({**HOOK, "command": ["page"]}, "notify[0].command", "not an absolute path"),
    ({**HOOK, "command": []}, "notify[0].command", "at least 1"),
    ({**HOOK, "command": "/bin/page --x"}, "notify[0].command", "list"),
    ({**HOOK, "command": ["/bin/page", "a\0b"]}, "notify[0].command", "NUL"),
    ({**HOOK, "timeout": 0}, "notify[0].timeout", "at least 0.1"),
    ({**HOOK, "timeout": "2h"}, "notify[0].timeout", "at most 600"),
    ({**HOOK, "queue": 0}, "notify[0].queue", "at least 1"),
    ({**HOOK, "events": ["vip_lost"]}, "notify[0].events[0]", "realserver_up"),
    ({**HOOK, "shell": True}, "notify[0].shell", "unknown key"),
])
def test_bad_notify_hooks_are_one_line_errors(hook: dict[str, Any], where: str,
                                              why: str) -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["notify"] = [hook]
    with pytest.raises(ConfigError) as caught:
        parse_cluster(yaml.safe_dump(doc), "c.yaml")
    lines = caught.value.lines()
    assert any(line.startswith(f"c.yaml: {where}") and why in line for line in lines), lines


def test_notify_hooks_resolve_with_defaults_and_unique_names() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["notify"] = [HOOK, {"name": "log", "command": ["/bin/logger"], "timeout": "500ms",
                            "events": ["realserver_down"], "queue": 5}]
    hooks = cluster(doc).notify
    assert hooks[0].command == ("/usr/local/bin/page", "--team", "lb")
    assert (hooks[0].timeout, hooks[0].queue, hooks[0].events) == (10.0, 100, frozenset())
    assert hooks[0].wants("config_rejected") and not hooks[1].wants("realserver_up")
    assert (hooks[1].timeout, hooks[1].queue) == (0.5, 5)
    doc["notify"] = [HOOK, HOOK]
    with pytest.raises(ConfigError, match=r"notify\[1\]\.name: pager is already used"):
        parse_cluster(yaml.safe_dump(doc), "c.yaml")
