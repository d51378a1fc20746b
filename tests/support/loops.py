"""Run a health-check test module on both event loops: asyncio's own and uvloop (the director's).

Import ``each_loop`` into a test module: it is an autouse fixture, so every test there runs
twice, and ``asyncio.run`` inside it gets the loop of that run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def each_loop(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)
