"""Network namespaces for tests: the test bed's own (lvsctl/testbed/netns.py), named here for
the tests that import them from tests.support."""

from __future__ import annotations

from lvsctl.testbed.netns import Lab, Netns, in_netns, run, unique

__all__ = ["Lab", "Netns", "in_netns", "run", "unique"]
