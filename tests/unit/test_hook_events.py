"""Which changes are notify events: a real server's health, a service's quorum verdict."""

from __future__ import annotations

import yaml

from lvsctl.core.config import parse_cluster
from lvsctl.core.model import Health
from lvsctl.director.hooks import health_event, quorum_events
from tests.conftest import MINIMAL


def test_health_changes_that_are_events() -> None:
    up, down = Health(True), Health(False, None, "refused")
    assert health_event(None, down) == "realserver_down"  # found down at start
    assert health_event(None, up) is None  # found up at start: nothing to say
    assert health_event(up, down) == "realserver_down"
    assert health_event(down, up) == "realserver_up"
    assert health_event(up, Health(True, 3)) is None  # a dynamic weight change only
    assert health_event(down, Health(False, None, "timeout")) is None


def test_quorum_verdict_changes_are_events() -> None:
    services = parse_cluster(yaml.safe_dump(MINIMAL), "c.yaml").cluster.services
    www, app = services[0].key, services[1].key
    assert quorum_events(services, {}, {www: True, app: True}) == []
    assert quorum_events(services, {}, {www: False, app: True}) == [("quorum_lost", "www")]
    assert quorum_events(services, {www: False, app: True},
                         {www: True, app: False}) == [("quorum_regained", "www"),
                                                      ("quorum_lost", "app")]
    assert quorum_events(services, {www: False}, {www: False}) == []
