"""Maintenance overrides in a real ZooKeeper: written with the cluster's ACL and with
compare-and-set (a concurrent writer's change is kept, never overwritten), foreign data
refused, and the CLI's one-line errors before anything is written."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from kazoo.exceptions import NoNodeError

from lvsctl.cli import cli
from lvsctl.core.errors import ConflictError
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.records import Override, Overrides, RecordError
from lvsctl.core.zk import ClusterConnection, ClusterStore, Target, open_cluster
from tests.conftest import MINIMAL
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

_roots = itertools.count()


@pytest.fixture
def target(zookeeper_module: ZooKeeperServer, tmp_path: Path) -> Target:
    auth = tmp_path / "zk.secret"
    auth.write_text("lvs:s3cret\n", encoding="utf-8")
    settings = ZooKeeperSettings((zookeeper_module.hosts,), f"/ov{next(_roots)}", 4.0, str(auth))
    return Target(settings, "t")


@pytest.fixture
def conn(target: Target) -> Iterator[ClusterConnection]:
    with open_cluster(target) as made:
        yield made


def run(target: Target, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--zookeeper", target.hosts, "--cluster", "t",
                                    "--root", target.settings.root,
                                    "--auth", str(target.settings.auth_file)])


def test_overrides_carry_the_cluster_acl_and_round_trip(conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    assert store.overrides() == Overrides()
    written = store.update_overrides(lambda o: o.with_override(Override("web1", None, "x")))
    assert store.overrides() == written and written.items[0].reason == "x"
    acls, _ = conn.client.get_acls(conn.paths.overrides)
    assert [(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acls] == [
        ("digest", "lvs", 31)]
    store.update_overrides(lambda o: o.without("web1"))
    assert store.overrides() == Overrides()


def test_a_concurrent_writer_is_never_overwritten(target: Target,
                                                  conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    calls = []

    def change(current: Overrides) -> Overrides:
        calls.append(current)
        if len(calls) == 1:
            # Another operator drains web2 between our read and our write.
            with open_cluster(target) as other:
                ClusterStore(other).update_overrides(
                    lambda o: o.with_override(Override("web2")))
        return current.with_override(Override("web1"))

    written = store.update_overrides(change)
    assert len(calls) == 2 and [o.realserver for o in calls[1].items] == ["web2"]
    assert {o.realserver for o in written.items} == {"web1", "web2"}
    assert store.overrides() == written

    def always_raced(current: Overrides) -> Overrides:
        conn.client.set(conn.paths.overrides, current.to_bytes())  # bumps the version
        return current.with_override(Override("web3"))

    with pytest.raises(ConflictError, match="kept changing"):
        store.update_overrides(always_raced)
    assert "web3" not in {o.realserver for o in store.overrides().items}


def test_foreign_data_is_refused_and_not_overwritten(conn: ClusterConnection) -> None:
    conn.client.ensure_path(conn.paths.base, acl=conn.acl)
    conn.client.create(conn.paths.overrides, b'{"format": 9}', acl=conn.acl)
    store = ClusterStore(conn)
    with pytest.raises(RecordError, match=r"overrides\.format"):
        store.overrides()
    with pytest.raises(RecordError):
        store.update_overrides(lambda o: o.with_override(Override("web1")))
    assert conn.client.get(conn.paths.overrides)[0] == b'{"format": 9}'


def test_cli_errors_are_one_line_and_write_nothing(target: Target,
                                                   conn: ClusterConnection) -> None:
    result = run(target, "realserver", "drain", "web1")
    assert result.exit_code == 1 and "has no config in ZooKeeper" in result.output
    ClusterStore(conn).config.push(yaml.safe_dump(copy.deepcopy(MINIMAL)), source="c.yaml")
    for args, why in (
        (["drain", "web9"], "real server 'web9' is not in cluster t (its real servers: web1, "
                            "web2, app1)"),
        (["drain", "web1", "--service", "app"], "real server 'web1' is not in service 'app'"),
        (["drain", "web1", "--reason", "x" * 201], "at most 200"),
        (["drain", "web1", "--reason", "two\nlines"], "control character"),
    ):
        result = run(target, "realserver", *args)
        assert result.exit_code != 0 and why in result.output, result.output
    with pytest.raises(NoNodeError):
        conn.client.get(conn.paths.overrides)
    result = run(target, "realserver", "drain", "web1", "--reason", "disk swap")
    assert result.exit_code == 0, result.output
    assert "web1 drained in every service (www): disk swap" in result.output
    result = run(target, "realserver", "enable", "web1", "--service", "www")
    assert result.exit_code == 1 and "drained in every service" in result.output
    # No director runs: list shows ZooKeeper's view, without kernel figures.
    result = run(target, "realserver", "list")
    assert result.exit_code == 0, result.output
    assert "no director answers" in result.output
    assert "drain (disk swap)" in result.output
    web1 = next(line for line in result.output.splitlines() if " web1 " in line)
    assert web1.split()[-3:] == ["-", "-", "-"]  # kernel weight, active, inactive
    result = run(target, "realserver", "enable", "web1")
    assert result.exit_code == 0 and "web1 enabled" in result.output
    assert ClusterStore(conn).overrides() == Overrides()

    # A drain whose server a later push removed: listed as stale, and enable still ends it.
    assert run(target, "realserver", "drain", "web2").exit_code == 0
    doc = copy.deepcopy(MINIMAL)
    del doc["services"][0]["realservers"][1]
    ClusterStore(conn).config.push(yaml.safe_dump(doc), source="c.yaml")
    result = run(target, "realserver", "list")
    assert "a drain names web2, which the cluster file no longer has" in result.output
    assert run(target, "realserver", "drain", "web2").exit_code == 1
    result = run(target, "realserver", "enable", "web2")
    assert result.exit_code == 0 and "web2 enabled" in result.output, result.output
    assert ClusterStore(conn).overrides() == Overrides()
