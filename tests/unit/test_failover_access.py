"""Where the drill reaches a director's API."""

from __future__ import annotations

import pytest

from lvsctl.failover.access import api_url


@pytest.mark.parametrize(("address", "director", "url"), [
    ("127.0.0.1:9180", "192.0.2.2", "http://127.0.0.1:9180/status"),
    ("0.0.0.0:9180", "192.0.2.2", "http://192.0.2.2:9180/status"),
    ("[::]:9180", "2001:db8::2", "http://[2001:db8::2]:9180/status"),
    ("::1:9180", None, "http://[::1]:9180/status"),
    ("0.0.0.0:9180", None, "http://0.0.0.0:9180/status"),
])
def test_api_url(address: str, director: str | None, url: str) -> None:
    assert api_url(address, "/status", director) == url
