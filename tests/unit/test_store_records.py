"""The store's typed records and znode names, without ZooKeeper: encode, decode, bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.records import (
    MAX_DIRECTOR_BYTES,
    MAX_REASON_CHARS,
    MAX_TRANSITION_BYTES,
    Candidate,
    ConfigState,
    DirectorRecord,
    HealthStatus,
    RealServerStatus,
    RecordError,
    ServiceStatus,
    TransitionRecord,
)
from lvsctl.core.zk import (
    COMMAND_RECONNECT,
    DIRECTOR_RECONNECT,
    ElectionQueue,
    Paths,
    QueueEntry,
    Target,
    make_client,
)

TRANSITION = TransitionRecord("lb1", "transition", 1764150000.25, monotonic=812.5,
                              state="ACTIVE", epoch=7, reason="won the election")
HEALTH = TransitionRecord("lb2", "health", 1764150001.0, monotonic=3.0, service="www",
                          realserver="web1", healthy=False, reason="connect refused")
ACQUIRED = TransitionRecord("lb1", "vip_acquired", 1764150002.0, vip="192.0.2.10", epoch=7,
                            basis="zk")
GARP = TransitionRecord("lb1", "garp_sent", 1764150002.5, vip="192.0.2.10", epoch=7, count=3)
RECORD = DirectorRecord(
    director="lb1", cluster="t", role="ACTIVE", epoch=7, since=1764150000.25,
    zookeeper="connected", vips=("192.0.2.10", "2001:db8::10"),
    config=ConfigState("/lvsctl/t/config@v3", ""),
    services=(ServiceStatus("www", "tcp 192.0.2.10:80", "dr", (
        RealServerStatus("web1", "192.0.2.21:80", 1, None),
        RealServerStatus("web2", "192.0.2.22:80", 2, HealthStatus(True, 2, "HTTP 200")),
        RealServerStatus("web3", "192.0.2.23:80", 1, HealthStatus(False, None, "refused")),
    )),),
    last_reconcile={"wall": 1764150003.0, "planned": 0, "errors": []},
    api="127.0.0.1:9180", transitions=(TRANSITION, ACQUIRED),
)


@pytest.mark.parametrize("record", [TRANSITION, HEALTH, ACQUIRED, GARP])
def test_transition_record_round_trips(record: TransitionRecord) -> None:
    assert TransitionRecord.from_bytes(record.to_bytes(), "/x") == record
    assert TransitionRecord.from_json(record.to_json()) == record


def test_transition_json_has_only_the_keys_of_its_event() -> None:
    assert ACQUIRED.to_json() == {"director": "lb1", "monotonic": 0.0, "wall": 1764150002.0,
                                  "event": "vip_acquired", "vip": "192.0.2.10", "epoch": 7,
                                  "basis": "zk"}


def test_director_record_round_trips_and_keeps_the_status_shape() -> None:
    assert DirectorRecord.from_bytes(RECORD.to_bytes(), "/x") == RECORD
    data = RECORD.to_json()
    assert list(data) == ["director", "cluster", "role", "epoch", "since", "zookeeper", "vips",
                          "config", "services", "last_reconcile", "api", "transitions"]
    assert data["services"][0]["realservers"][1] == {
        "name": "web2", "address": "192.0.2.22:80", "weight": 2,
        "health": {"healthy": True, "weight": 2, "reason": "HTTP 200"}, "override": None}
    assert DirectorRecord.from_json(json.loads(json.dumps(data))) == RECORD


def test_unknown_keys_are_tolerated_and_optional_ones_default() -> None:
    data: dict[str, Any] = {"director": "lb2", "cluster": "t", "role": "STANDBY", "epoch": 8,
                            "added_later": {"x": 1}}
    record = DirectorRecord.from_json(data)
    assert (record.since, record.vips, record.services, record.api) == (None, (), (), "")
    assert record.config == ConfigState()
    transition = TransitionRecord.from_json({"director": "lb1", "event": "new_kind",
                                             "wall": 5, "colour": "blue"})
    assert (transition.wall, transition.monotonic, transition.reason) == (5.0, 0.0, "")


def _with(path: str, value: Any) -> dict[str, Any]:
    data = RECORD.to_json()
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("epoch", True, "director record.epoch: expected an integer, got bool"),
    ("epoch", "7", "director record.epoch: expected an integer, got str"),
    ("since", "yesterday",
     "director record.since: expected a time in seconds since 1970 or null, got str"),
    ("since", 1e300,
     "director record.since: expected a time in seconds since 1970 or null, got float"),
    ("epoch", 2**64, "director record.epoch: expected an integer, got int"),
    ("vips", "192.0.2.10", "director record.vips: expected a list of strings, got str"),
    ("vips", [1], "director record.vips: expected a list of strings, got list"),
    ("config", [], "director record.config: expected an object or null, got list"),
    ("services.0.realservers.1.health.healthy", "yes",
     "director record.services[0].realservers[1].health.healthy: expected true or false, "
     "got str"),
    ("services.0.realservers.0.weight", 1.5,
     "director record.services[0].realservers[0].weight: expected an integer, got float"),
    ("transitions.0.wall", None, "director record.transitions[0].wall: expected a time in "
                                 "seconds since 1970, got null"),
    ("transitions.0.monotonic", float("inf"),
     "director record.transitions[0].monotonic: expected a number, got float"),
])
def test_wrong_types_name_the_key(path: str, value: Any, message: str) -> None:
    with pytest.raises(RecordError) as info:
        DirectorRecord.from_json(_with(path, value))
    assert str(info.value) == message


@pytest.mark.parametrize(("data", "message"), [
    (b"garbage", "/x: not JSON"),
    (b"\xff\xfe", "/x: not JSON"),
    (b"[1, 2]", "/x: expected an object, got list"),
    (b'{"director": "lb1", "cluster": "t", "role": "ACTIVE"}', "/x: missing epoch"),
    (b"[" * 100_000 + b"]" * 100_000, "/x: JSON nested too deeply"),
    (b"[" * 40 + b"]" * 40, "/x: JSON nested more than 32 levels deep"),
    (b'{"director": "lb1", "cluster": "t", "role": "ACTIVE", "epoch": 1e400}',
     "/x.epoch: expected an integer, got float"),
    (b'{"director": "lb1", "cluster": "t", "role": "ACTIVE", "epoch": 1, "since": 1e400}',
     "/x.since: expected a time in seconds since 1970 or null, got float"),
    (b'{"epoch": NaN}', "/x: not JSON (NaN is not a JSON number)"),
    (b'{"epoch": ' + b"9" * 4000 + b"}", "/x: not JSON (a number of 4000 digits)"),
    (b" " * (MAX_DIRECTOR_BYTES + 1), f"/x: {MAX_DIRECTOR_BYTES + 1} bytes, more than such a "
                                       f"record may hold ({MAX_DIRECTOR_BYTES})"),
])
def test_foreign_data_is_a_record_error(data: bytes, message: str) -> None:
    with pytest.raises(RecordError) as info:
        DirectorRecord.from_bytes(data, "/x")
    assert str(info.value).startswith(message)


def test_records_over_their_bound_are_refused_or_clipped() -> None:
    huge = DirectorRecord("lb1", "t", "ACTIVE", 1, vips=tuple(
        f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(80_000)))
    with pytest.raises(RecordError, match=r"director record of lb1: \d+ bytes, more than"):
        huge.to_bytes()
    long = TransitionRecord("lb1", "config_rejected", 1.0, reason="x" * 50_000)
    data = long.to_bytes()
    assert len(data) <= MAX_TRANSITION_BYTES
    back = TransitionRecord.from_bytes(data, "/x")
    assert back.reason == "x" * MAX_REASON_CHARS + "... (48000 more characters)"
    with pytest.raises(RecordError, match="more than such a record may hold"):
        TransitionRecord("lb1", "e" * MAX_TRANSITION_BYTES, 1.0).to_bytes()


def test_candidate_round_trip_and_foreign_data() -> None:
    assert Candidate.from_bytes(Candidate("lb1").to_bytes(), "/e") == Candidate("lb1")
    with pytest.raises(RecordError, match="/e: missing director"):
        Candidate.from_bytes(b"{}", "/e")


def test_election_queue_names() -> None:
    prefix = ElectionQueue.new_prefix()
    assert len(prefix) == 32 and prefix != ElectionQueue.new_prefix()
    children = ["b__n_0000000012", f"{prefix}__n_0000000009", "abc__lock__0000000001",
                "x__n_", "x__n_12a", "__n_0000000010"]
    assert ElectionQueue.order(children) == [
        QueueEntry(f"{prefix}__n_0000000009", 9), QueueEntry("__n_0000000010", 10),
        QueueEntry("b__n_0000000012", 12)]
    assert ElectionQueue.sequence("b__n_0000000012") == 12
    assert ElectionQueue.sequence("abc__lock__0000000001") is None
    assert ElectionQueue.owned(children, prefix) == f"{prefix}__n_0000000009"
    assert ElectionQueue.owned(children, "b_") is None
    assert ElectionQueue.created_name("/lvsctl/t/election/b__n_0000000012") == "b__n_0000000012"


def test_paths_of_records() -> None:
    paths = Paths("/lvsctl", "t")
    assert paths.transition_entry(42) == "/lvsctl/t/transitions/t_0000000042"
    assert paths.overrides == "/lvsctl/t/overrides"
    for bad in ("", "..", "a/b", "zookeeper", "x" * 65):
        with pytest.raises(RecordError, match="cannot name a znode"):
            paths.director(bad)


def test_reconnect_policies_reach_the_client() -> None:
    assert COMMAND_RECONNECT.kazoo() == {"max_tries": -1, "delay": 0.1, "backoff": 2,
                                         "max_delay": 1.0}
    target = Target(ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 2.5, None), "t",
                    insecure=True)
    client = make_client(target, None, reconnect=DIRECTOR_RECONNECT)
    retry = client._conn_retry  # kazoo keeps the policy it was given here (not started)
    assert (retry.max_tries, retry.delay, retry.backoff, retry.max_delay) == (-1, 0.05, 1.5, 0.5)
    assert client._session_timeout == 2500  # the node file's session timeout, in ms


def test_a_rejected_configs_reason_is_clipped_before_it_is_stored() -> None:
    reason = "c.yaml: services[0].vip: " + "x" * 3_000_000  # e.g. issues of an alias bomb
    record = DirectorRecord("lb1", "t", "ACTIVE", 7, config=ConfigState("5", reason))
    data = record.to_bytes()
    assert len(data) < 2 * MAX_REASON_CHARS + 1000
    stored = DirectorRecord.from_bytes(data, "/x").config.error
    assert stored.startswith("c.yaml: services[0].vip: xxx")
    assert stored.endswith(f"... ({len(reason) - MAX_REASON_CHARS} more characters)")
    event = TransitionRecord("lb1", "config_rejected", 1.0, reason=reason).to_bytes()
    assert len(event) <= MAX_TRANSITION_BYTES
