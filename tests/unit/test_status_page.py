"""The status page's rows and verdict, and its text: escaped, self-contained, refreshing."""

from __future__ import annotations

import re
from dataclasses import replace

from lvsctl.core.records import TransitionRecord
from lvsctl.director.page import pair_verdict, render_page, view
from lvsctl.testbed.prometheus import synthetic_snapshot

NOW = 1_700_000_100.0


def test_pair_verdict_one_none_both_and_unknown_without_the_peer() -> None:
    lb1 = synthetic_snapshot(1, 1, director="lb1", role="ACTIVE").record
    lb2 = synthetic_snapshot(1, 1, director="lb2", role="STANDBY").record
    rows = lambda *records: view(records[0], records[1] if len(records) > 1 else None,  # noqa: E731
                                 now=NOW)[0]
    assert pair_verdict(rows(lb1, lb2)) == ("ok", "lb1 is active")
    assert pair_verdict(rows(replace(lb1, role="STANDBY"), lb2))[0] == "bad"
    both = pair_verdict(rows(lb1, replace(lb2, role="ACTIVE")))
    assert both == ("bad", "more than one director claims to be active: lb1, lb2")
    assert pair_verdict(rows(lb2))[0] == "unknown"
    assert pair_verdict(rows(lb1)) == ("ok", "lb1 is active")


def test_rows_join_the_kernel_view_and_the_peers_checks() -> None:
    own = synthetic_snapshot(1, 3, reason="connection refused")
    peer = synthetic_snapshot(1, 3, director="lb2", role="STANDBY", reason="HTTP 500")
    _, services, _ = view(own.record, peer.record, now=NOW, kernel=own.kernel)
    (svc,) = services
    assert [(r.name, r.health, r.effective, r.active) for r in svc.realservers] == [
        ("rs0", "up", "10", "0"), ("rs1", "down", "0", "1"), ("rs2", "unknown", "0", "2")]
    assert (svc.realservers[1].peer_health, svc.realservers[1].peer_reason) == ("down",
                                                                                "HTTP 500")
    assert svc.healthy == 1
    _, alone, _ = view(own.record, None, now=NOW)
    assert alone[0].realservers[0].effective == "-"  # no kernel view given
    assert alone[0].realservers[0].peer_health is None


def test_transitions_of_both_directors_newest_first() -> None:
    own = synthetic_snapshot(1, 1).record
    peer = synthetic_snapshot(1, 1, director="lb2", role="STANDBY").record
    peer = replace(peer, transitions=(TransitionRecord("lb2", "transition", NOW - 5,
                                                       state="STANDBY", epoch=8,
                                                       reason="lb1 leads"),))
    _, _, transitions = view(own, peer, now=NOW)
    assert [(t.director, t.reason) for t in transitions] == [("lb2", "lb1 leads"),
                                                            ("lb1", "won the election")]
    assert transitions[0].at.endswith("(5 s ago)")


def test_page_is_self_contained_refreshes_and_escapes_everything() -> None:
    hostile = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
    snap = synthetic_snapshot(2, 3, reason=hostile)
    record = replace(snap.record, config=replace(snap.record.config, error=hostile))
    text = render_page(record, None, now=NOW, peer_note=hostile, refresh_seconds=3)
    assert '<meta http-equiv="refresh" content="3">' in text
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in text
    # No external assets: the only URLs are the director's own /metrics and /status.
    assert set(re.findall(r'(?:href|src)="([^"]*)"', text)) == {"/metrics", "/status"}
