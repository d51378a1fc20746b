"""Kernel tests need IPVS: on a host without it they fail at once, naming how to run them."""

from __future__ import annotations

import functools

import pytest

from lvsctl.testbed.vm import kernel_has_ipvs

_has_ipvs = functools.cache(kernel_has_ipvs)


@pytest.fixture(autouse=True)
def _needs_ipvs(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is not None and not _has_ipvs():
        pytest.fail(
            "this kernel has no IPVS: run kernel tests in the VM with "
            "'.venv/bin/lvsctl vm run -- .venv/bin/python -m pytest -m kernel' (or scripts/test)",
            pytrace=False,
        )
