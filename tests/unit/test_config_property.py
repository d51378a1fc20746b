"""Property tests: any YAML, and any mutation of a valid file, gives a model or a ConfigError."""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsctl.cli import cli
from lvsctl.core.config import parse_cluster
from lvsctl.core.errors import ConfigError
from tests.conftest import MINIMAL

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["80", "eth0", "10.0.1.5", "2001:db8::1", "dr", "nat",
                                            "tcp", "http", "1s", "/x", "-1", "255.255.0.0"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


ALL_PATHS = [p for p in _paths(MINIMAL) if p]


def _outcome(text: str) -> None:
    try:
        parse_cluster(text, "c.yaml")
    except ConfigError as exc:
        assert exc.lines() and all(line.startswith("c.yaml") for line in exc.lines())


@given(st.text(max_size=300))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_text_gives_model_or_config_error(text: str) -> None:
    _outcome(text)


@given(values)
@settings(max_examples=300)
def test_arbitrary_yaml_documents(doc: Any) -> None:
    _outcome(yaml.safe_dump(doc))


@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), values, st.booleans()), min_size=1,
                max_size=4))
@settings(max_examples=400)
def test_mutated_valid_files(mutations: list[tuple[tuple[Any, ...], Any, bool]]) -> None:
    doc = copy.deepcopy(MINIMAL)
    for path, value, delete in mutations:
        node: Any = doc
        try:
            for part in path[:-1]:
                node = node[part]
            if delete:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    _outcome(yaml.safe_dump(doc))


@given(values)
@settings(max_examples=60)
def test_config_check_never_prints_a_traceback(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "c.yaml")
        with open(path, "w") as f:
            f.write(yaml.safe_dump(doc))
        result = CliRunner().invoke(cli, ["config", "check", path])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1)
