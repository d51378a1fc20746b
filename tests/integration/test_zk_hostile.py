"""Hostile and broken data in ZooKeeper, and pushes too large for it: one line, a way out.

Against a real ZooKeeper: a push above what one ZooKeeper request carries is refused before
it is validated, naming its size and the limit, and a file just under it goes through; a
config znode that does not hold an lvsctl file is overwritten only with --replace-unreadable
(recorded in history); history and rollback skip unreadable versions with a note.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lvsctl.core.errors import ConfigError
from lvsctl.core.node import load_node
from lvsctl.core.zk import (
    MAX_PUSH_FILE_BYTES,
    ZK_MAX_REQUEST,
    ClusterConnection,
    ConfigStore,
    ConfigVersion,
    Target,
    open_cluster,
    push_request_bytes,
)
from tests.conftest import MINIMAL
from tests.integration.test_cli_zk_config import Env
from tests.integration.test_cli_zk_config import env as _env

pytestmark = pytest.mark.zookeeper
env = _env  # the cluster, node and auth files of one root of its own


@pytest.fixture
def conn(env: Env) -> Iterator[ClusterConnection]:
    with open_cluster(Target.from_node(load_node(env.node_file))) as made:
        yield made


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("warning:")]


def _big_cluster(env: Env, realservers: int) -> Path:
    """A valid cluster file of about 45 bytes a real server (dr, one service)."""
    env.write_cluster(80)
    doc = yaml.safe_load(env.cluster_file.read_text(encoding="utf-8"))
    doc["services"] = [doc["services"][0]]
    doc["services"][0]["realservers"] = [
        {"name": f"rs{i}", "address": str(ipaddress.IPv4Address("10.2.0.1") + i)}
        for i in range(realservers)]
    # One line per real server, as people write them, not yaml's block style.
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200)
    env.cluster_file.write_text(text, encoding="utf-8")
    return env.cluster_file


def test_a_push_too_large_for_zookeeper_is_refused_up_front(env: Env) -> None:
    path = _big_cluster(env, 14_000)
    size = path.stat().st_size
    assert size > MAX_PUSH_FILE_BYTES
    refused = env.run("config", "push", str(path))
    assert refused.exit_code == 1
    assert _errors(refused.stderr) == [
        f"{path}: is {size} bytes, more than the {MAX_PUSH_FILE_BYTES} a pushed "
        "cluster file can be: a push writes it twice, to config and history/N, in one "
        "ZooKeeper request of at most 1048575 bytes (jute.maxbuffer)"]
    assert "nothing pushed yet" in env.run("config", "show", "--node",
                                           str(env.node_file)).stderr


def test_a_push_just_under_the_limit_goes_through(env: Env) -> None:
    path = _big_cluster(env, 10_500)
    assert MAX_PUSH_FILE_BYTES * 0.8 < path.stat().st_size <= MAX_PUSH_FILE_BYTES
    pushed = env.run("config", "push", str(path), "--json")
    assert pushed.exit_code == 0, pushed.output
    assert json.loads(pushed.stdout)["version"] == 1
    shown = env.run("config", "show", "--node", str(env.node_file))
    assert shown.stdout == path.read_text(encoding="utf-8")


def test_the_push_limit_is_zookeepers_to_the_byte(conn: ClusterConnection) -> None:
    """The largest push the request count allows commits on a real ZooKeeper; one byte more
    is refused before it is sent, naming both sizes (a create first, then a set)."""
    store = ConfigStore(conn, clock=lambda: 0.0, who=lambda: "ops@host")
    paths = store.paths

    for version, exists in ((1, False), (2, True)):
        empty = ConfigVersion(version, "0" * 64, "ops@host", "1970-01-01T00:00:00+00:00", "-",
                              "")
        base = len(empty.to_bytes())  # the record of an empty text; "#" needs no escape
        room = ZK_MAX_REQUEST - push_request_bytes(
            base, paths.config, paths.history_entry(version), [], conn.acl, exists)
        size = room // 2  # the text is in the request twice
        with pytest.raises(ConfigError) as info:
            store.push("#" * (size + 1), validate=False)
        request = ZK_MAX_REQUEST - room + 2 * (size + 1)
        assert info.value.lines() == [
            f"-: is {base + size + 1} bytes once stored (metadata and JSON escapes included): "
            f"the push would be one ZooKeeper request of {request} bytes, more than the "
            f"{ZK_MAX_REQUEST} ZooKeeper takes (jute.maxbuffer); it carries the file twice, in "
            "config and history/N"]
        result = store.push("#" * size, validate=False)
        assert (result.changed, result.version.version) == (True, version)
        assert store.current() == result.version  # committed, read back whole


@pytest.mark.parametrize("garbage", [
    b"not json at all", b'{"format": 1, "version": 1e400}', b"[" * 5000 + b"]" * 5000,
    b'{"format": 1, "version": ' + b"9" * 5000 + b"}", b"\xff\xfe",
], ids=["text", "1e400", "nested", "huge number", "not utf-8"])
def test_an_unreadable_config_blocks_nothing_but_is_replaced_only_on_request(
        env: Env, conn: ClusterConnection, garbage: bytes) -> None:
    node = ("--node", str(env.node_file))
    assert env.run("config", "push", str(env.write_cluster(80))).exit_code == 0
    store = ConfigStore(conn)
    conn.client.set(store.paths.config, garbage)

    for args in (("config", "show", *node), ("config", "diff", str(env.cluster_file), *node)):
        shown = env.run(*args)
        assert shown.exit_code == 1 and "Traceback" not in shown.output
        assert len(_errors(shown.stderr)) == 1
        assert f"{store.paths.config} does not hold an lvsctl cluster file" in shown.stderr

    env.write_cluster(81)
    refused = env.run("config", "push", str(env.cluster_file))
    assert refused.exit_code == 1 and len(_errors(refused.stderr)) == 1
    assert refused.stderr.rstrip().endswith(
        "(to overwrite it: lvsctl config push --replace-unreadable FILE)")
    assert conn.client.get(store.paths.config)[0] == garbage  # nothing written

    replaced = env.run("config", "push", str(env.cluster_file), "--replace-unreadable")
    assert replaced.exit_code == 0, replaced.output
    assert replaced.stdout.startswith("pushed cluster.yaml as version 2 of cluster t")
    history = json.loads(env.run("config", "history", "--json", *node).stdout)
    assert [(h["version"], h["current"]) for h in history] == [(2, True), (1, False)]
    assert history[0]["replaced"].startswith(
        f"an unreadable config znode ({len(garbage)} bytes): ")
    table = env.run("config", "history", *node).stdout.splitlines()
    assert table[1].endswith("current, replaced an unreadable config")


def test_history_and_rollback_skip_unreadable_versions(
        env: Env, conn: ClusterConnection) -> None:
    node = ("--node", str(env.node_file))
    for port in (80, 81, 82):
        assert env.run("config", "push", str(env.write_cluster(port))).exit_code == 0
    store = ConfigStore(conn)
    conn.client.set(store.paths.history_entry(2), b'{"format": 1, "version": NaN}')

    listed = env.run("config", "history", *node)
    assert listed.exit_code == 0, listed.output
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["3", "1"]
    notes = _errors(listed.stderr)
    assert notes == [] and listed.stderr.count("\n") == 1  # one warning line
    assert listed.stderr.startswith(
        f"warning: skipped an unreadable version: {store.paths.history_entry(2)} does not "
        "hold an lvsctl cluster file: not JSON (NaN is not a JSON number)")

    refused = env.run("config", "rollback", "2", *node)
    assert refused.exit_code == 1 and len(_errors(refused.stderr)) == 1
    assert refused.stderr.rstrip().endswith("; readable versions: 3, 1")
    back = env.run("config", "rollback", "1", *node)
    assert back.exit_code == 0, back.output
    assert back.stdout.startswith("rolled back: version 4 holds the text of version 1")

    conn.client.set(store.paths.config, b"{}")
    blocked = env.run("config", "rollback", "1", *node)
    assert blocked.exit_code == 1 and "--replace-unreadable" in blocked.stderr
    forced = env.run("config", "rollback", "1", "--replace-unreadable", *node)
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.startswith("rolled back: version 5 holds the text of version 1")


def test_a_cluster_file_that_is_no_regular_file_is_not_pushed(env: Env, tmp_path: Path
                                                              ) -> None:
    env.write_cluster(80)
    refused = env.run("config", "push", str(tmp_path))
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    doc = dict(MINIMAL, zookeeper={"hosts": [env.server.hosts], "root": env.root + "/../x"})
    env.cluster_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    bad_root = env.run("config", "push", str(env.cluster_file))
    assert bad_root.exit_code == 1
    assert _errors(bad_root.stderr) == [
        f"cluster.yaml: zookeeper.root: '{env.root}/../x' has a '..' segment: ZooKeeper "
        "takes only plain paths such as /lvsctl/prod (no '//', '.', '..' or trailing '/')"]
