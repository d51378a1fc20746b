"""Kernel tests need IPVS: on a host without it they fail at once with how to run them."""

from __future__ import annotations

import pytest

from lvsctl.vm import kernel_has_ipvs

_checked: list[bool] = []


@pytest.fixture(autouse=True)
def _needs_ipvs(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        return
    if not _checked:
        _checked.append(kernel_has_ipvs())
    if not _checked[0]:
        pytest.fail(
            "this kernel has no IPVS: run kernel tests in the VM with "
            "'.venv/bin/lvsctl vm run -- .venv/bin/python -m pytest -m kernel' (or scripts/test)",
            pytrace=False,
        )
