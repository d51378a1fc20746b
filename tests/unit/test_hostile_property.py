"""Property tests: arbitrary peer datagrams and znode payloads decode or raise the typed error.

Peer beats: any bytes, any JSON signed with the right secret (authentic but malformed), and
mutations of a valid beat give a Beat whose every field has its type, or Rejected, which the
link counts under a reason. Znode payloads: any bytes and any JSON give a record or a
RecordError, for each record the store decodes (transition, director, candidate, config).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from dataclasses import asdict, fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsctl.core.records import (
    Candidate,
    DirectorRecord,
    RecordError,
    TransitionRecord,
)
from lvsctl.core.zk import ConfigVersion
from lvsctl.director.peer import MAC_LEN, MAX_BEAT_BYTES, Beat, PeerLink, Rejected, decode

SECRET = b"k" * 32
EXAMPLES = settings(max_examples=400)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=25,
)
# Raw JSON texts a hostile writer might send that json.dumps would never produce.
raw_tricks = st.sampled_from([
    b"1e400", b"-1e400", b"NaN", b"Infinity", b"9" * 5000, b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000, b'"\\ud800"', b"\xff", b"",
])


def sign(payload: bytes) -> bytes:
    return hmac.new(SECRET, payload, hashlib.sha256).digest() + payload


def _beat_is_typed(beat: Beat) -> None:
    assert isinstance(beat.name, str) and beat.name
    assert beat.state in ("CANDIDATE", "ACTIVE", "STANDBY", "FENCED")
    for name in ("epoch", "ack_epoch", "stamp"):
        value = getattr(beat, name)
        assert type(value) is int and 0 <= value < 2**63
    for name in ("zk_connected", "holding", "vouch"):
        assert type(getattr(beat, name)) is bool


def _decode_or_reject(datagram: bytes) -> None:
    try:
        beat = decode(datagram, SECRET)
    except Rejected:
        return
    _beat_is_typed(beat)


@EXAMPLES
@given(st.binary(max_size=2 * MAX_BEAT_BYTES))
def test_any_datagram_is_a_beat_or_rejected(datagram: bytes) -> None:
    _decode_or_reject(datagram)
    _decode_or_reject(sign(datagram))  # authentic, whatever it holds


@EXAMPLES
@given(json_values)
def test_any_authentic_json_is_a_typed_beat_or_rejected(value: Any) -> None:
    _decode_or_reject(sign(json.dumps(value).encode()))


_FIELDS = [f.name for f in fields(Beat)]


@EXAMPLES
@given(st.sampled_from(_FIELDS), json_values | st.sampled_from([1e400, 2**64, -1, 1.5]))
def test_a_valid_beat_with_one_field_changed_is_typed_or_rejected(key: str, value: Any) -> None:
    data = asdict(Beat("lb2", "ACTIVE", 7, True, True, 3, 10**18, False))
    data[key] = value
    _decode_or_reject(sign(json.dumps(data).encode()))


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"name": "lb2", "epoch": 1e400}', "malformed beat"),
    (b'{"name": "lb2", "epoch": 1.0}', "malformed beat"),
    (b'{"name": "lb2", "stamp": ' + b"9" * 30 + b"}", "malformed beat"),
    (b'{"name": "lb2", "epoch": ' + b"9" * 5000 + b"}", "oversized beat"),
    (b'{"name": "lb2", "holding": "yes"}', "malformed beat"),
    (b'{"name": "lb2", "state": "LEADER"}', "malformed beat"),
    (b'{"name": ["lb2"]}', "malformed beat"),
    (b'{"name": "lb2", "epoch": NaN}', "malformed beat"),
    (b'{"name": "lb2", "extra": {"a": [[[[1]]]]}}', "malformed beat"),
    (b"[" * 500 + b"]" * 500, "malformed beat"),
    (b'{"state": "ACTIVE"}', "malformed beat"),
    (b"\xff\xfe", "malformed beat"),
])
def test_an_authentic_malformed_beat_is_counted_under_its_reason(payload: bytes,
                                                                 reason: str) -> None:
    link = PeerLink("lb1", SECRET, ("127.0.0.1", 0), ("127.0.0.1", 9))
    link.datagram_received(sign(payload), ("127.0.0.1", 9))
    assert link.rejected == {reason: 1}
    assert link.heard is None


def test_an_oversized_datagram_is_refused_before_its_hmac() -> None:
    with pytest.raises(Rejected, match=f"oversized beat: {MAC_LEN + MAX_BEAT_BYTES + 1} bytes"):
        decode(b"x" * (MAC_LEN + MAX_BEAT_BYTES + 1), SECRET)


# -- znode payloads ---------------------------------------------------------------------------


def _decoders() -> list[Any]:
    return [TransitionRecord.from_bytes, DirectorRecord.from_bytes, Candidate.from_bytes,
            ConfigVersion.from_bytes]


def _record_or_record_error(data: bytes) -> None:
    for decoder in _decoders():
        with contextlib.suppress(RecordError):  # the one error allowed
            decoder(data, "/z")


@EXAMPLES
@given(st.binary(max_size=512) | raw_tricks)
def test_any_znode_bytes_are_a_record_or_a_record_error(data: bytes) -> None:
    _record_or_record_error(data)


@EXAMPLES
@given(json_values)
def test_any_znode_json_is_a_record_or_a_record_error(value: Any) -> None:
    _record_or_record_error(json.dumps(value).encode())


_TRANSITION = TransitionRecord("lb1", "transition", 1.8e9, 12.5, "ACTIVE", 7, reason="won")
_CONFIG = ConfigVersion(3, hashlib.sha256(b"cluster: t\n").hexdigest(), "ops@h",
                        "2026-01-01T00:00:00+00:00", "c.yaml", "cluster: t\n")


@EXAMPLES
@given(st.sampled_from(["transition", "config"]), st.text(max_size=12),
       json_values | st.sampled_from([1e300, -1.0, 2**63, "\ud800"]))
def test_a_valid_record_with_one_key_changed_is_a_record_or_a_record_error(
        which: str, key: str, value: Any) -> None:
    if which == "transition":
        data = _TRANSITION.to_json()
        keys = [*data, "state", "epoch", "vip", "reason", "healthy", "count"]
    else:
        data = json.loads(_CONFIG.to_bytes())
        keys = list(data)
    data[keys[len(key) % len(keys)] if key else key] = value
    try:
        encoded = json.dumps(data).encode()
    except (UnicodeEncodeError, ValueError):
        return
    _record_or_record_error(encoded)
    if which == "transition":
        try:
            record = TransitionRecord.from_bytes(encoded, "/z")
        except RecordError:
            return
        assert 0 <= record.wall <= 253_402_300_799  # a reader can always print it
