"""Run a block of test code inside a network namespace (this thread only), then come back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pyroute2.netns import popns, pushns


@contextlib.contextmanager
def inside(netns_name: str) -> Iterator[None]:
    """Switch the calling thread into ``netns_name``; sockets opened here stay in it."""
    pushns(netns_name)
    try:
        yield
    finally:
        popns()
