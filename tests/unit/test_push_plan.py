"""How ``config push --plan`` shows a plan: one row per op with the old value beside the new,
the service's name, the basis it was planned against; the same as JSON. Planning itself is the
directors' planner (tests/unit/test_reconcile.py); against ZooKeeper and a live director:
tests/integration/test_push_plan.py and test_retire.py."""

from __future__ import annotations

from lvsctl.commands.push_plan import PushPlan
from lvsctl.core.model import DestKey, DestSpec, Forwarding, Protocol, ServiceKey, ServiceSpec
from lvsctl.director.reconcile import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DrainDest,
    EditDest,
    EditService,
    ObservedDest,
    ObservedService,
)

WWW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 80)
OLD = ServiceKey.inet(Protocol.UDP, "192.0.2.10", 53)
NEW = ServiceKey.inet(Protocol.TCP, "192.0.2.10", 443)
A, B = DestKey("10.0.1.1", 80), DestKey("10.0.1.2", 80)
DR = Forwarding.DR


def test_rows_show_each_change_with_what_it_was() -> None:
    observed = {
        WWW: ObservedService(WWW, ServiceSpec("wlc"), {
            A: ObservedDest(A, 1, DR.value, active_conns=4),
            B: ObservedDest(B, 5, DR.value)}),
        OLD: ObservedService(OLD, ServiceSpec("rr"), {A: ObservedDest(A, 1, 1)}),  # Local
    }
    ops = [AddService(NEW, ServiceSpec("rr")), AddDest(NEW, A, DestSpec(2, DR)),
           EditService(WWW, ServiceSpec("sh", frozenset({"sh-port"}))),
           EditDest(WWW, B, DestSpec(3, DR)), DrainDest(WWW, A, DR),
           DelDest(OLD, A), DelService(OLD)]
    planned = PushPlan({"kind": "director", "director": "lb1", "role": "ACTIVE", "epoch": 7,
                        "api": "127.0.0.1:9180"}, ops, observed,
                       {WWW: "www", OLD: "dns", NEW: "tls"})
    assert planned.rows() == [
        ["add", "tcp 192.0.2.10:443", "-", "scheduler rr", "tls"],
        ["add", "tcp 192.0.2.10:443", "10.0.1.1:80", "dr weight 2", "tls"],
        ["edit", "tcp 192.0.2.10:80", "-", "scheduler wlc -> scheduler sh flags sh-port", "www"],
        ["edit", "tcp 192.0.2.10:80", "10.0.1.2:80", "dr weight 5 -> dr weight 3", "www"],
        ["drain", "tcp 192.0.2.10:80", "10.0.1.1:80",
         "dr weight 1 -> weight 0, deleted once idle", "www"],
        ["delete", "udp 192.0.2.10:53", "10.0.1.1:80", "fwd 1 weight 1", "dns"],
        ["delete", "udp 192.0.2.10:53", "-", "retired: left the file", "dns"],
    ]
    assert planned.basis_text() == ("against director lb1's IPVS table (ACTIVE, epoch 7, read "
                                    "from 127.0.0.1:9180)")
    first = planned.as_json()["ops"][3]
    assert (first["op"], first["weight"], first["name"], first["change"]) == (
        "edit_dest", 3, "www", "dr weight 5 -> dr weight 3")
    fallback = PushPlan({"kind": "version", "version": 4, "why": "no director leads"}, [], {})
    assert fallback.basis_text() == ("against the desired table of version 4 (no director "
                                     "answered: no director leads)")
