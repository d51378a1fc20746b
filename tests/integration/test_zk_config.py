"""The cluster file in a real ZooKeeper: compare-and-set pushes, history, rollback, ACLs, watch."""

from __future__ import annotations

import copy
import itertools
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE

from lvsctl.core.errors import ConfigError, ConflictError, ZooKeeperError
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.zk import ClusterConnection, ConfigStore, ConfigVersion, Target, open_cluster
from tests.conftest import MINIMAL
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

_roots = itertools.count()


def cluster_text(port: int = 80, name: str = "t") -> str:
    doc: dict[str, Any] = copy.deepcopy(MINIMAL)
    doc["cluster"] = name
    doc["services"][0]["port"] = port
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def target(zookeeper_module: ZooKeeperServer, tmp_path: Path) -> Target:
    """A cluster 't' under a root of its own, with digest credentials in an auth file."""
    auth = tmp_path / "zk.secret"
    auth.write_text("lvs:s3cret\n", encoding="utf-8")
    settings = ZooKeeperSettings((zookeeper_module.hosts,), f"/it{next(_roots)}", 4.0, str(auth))
    return Target(settings, "t")


@pytest.fixture
def conn(target: Target) -> Iterator[ClusterConnection]:
    with open_cluster(target) as made:
        yield made


def bare_client(server: ZooKeeperServer, auth: str | None = None) -> KazooClient:
    client = KazooClient(hosts=server.hosts,
                         auth_data=[("digest", auth)] if auth else None)
    client.start(timeout=10)
    return client


def test_push_show_history_get_rollback(conn: ClusterConnection) -> None:
    clock = iter([1_700_000_000.0, 1_700_000_060.0, 1_700_000_120.0])
    store = ConfigStore(conn, clock=lambda: next(clock), who=lambda: "ops@lb0")
    assert store.current() is None and store.history() == []

    first = store.push(cluster_text(80), source="c.yaml")
    assert first.changed and first.version.version == 1
    assert first.version.pushed_at == "2023-11-14T22:13:20+00:00"
    assert first.version.pushed_by == "ops@lb0" and first.version.source == "c.yaml"
    second = store.push(cluster_text(81), expect_version=1, source="c.yaml")
    assert second.version.version == 2

    current = store.current()
    assert current is not None and current.text == cluster_text(81)
    assert current.load().cluster.service("www").key.port == 81
    assert [v.version for v in store.history()] == [2, 1]
    assert store.get(1).text == cluster_text(80)

    again = store.push(cluster_text(81), source="c.yaml")  # same text: no new version
    assert not again.changed and again.version.version == 2

    back = store.rollback(1)
    assert back.changed and back.version.version == 3 and back.version.rollback_of == 1
    assert back.version.text == cluster_text(80)
    assert back.version.sha256 == first.version.sha256
    assert [v.version for v in store.history()] == [3, 2, 1]


def test_invalid_push_never_reaches_zookeeper(conn: ClusterConnection) -> None:
    store = ConfigStore(conn)
    bad = cluster_text().replace("forwarding: dr", "forwarding: direct", 1)
    with pytest.raises(ConfigError) as info:
        store.push(bad, source="bad.yaml")
    assert any(line.startswith("bad.yaml: services[0].forwarding:") for line in info.value.lines())
    assert not conn.exists(conn.paths.base)  # not even the cluster's node was created

    store.push(cluster_text(80), source="c.yaml")
    with pytest.raises(ConfigError):
        store.push(bad, source="bad.yaml")
    with pytest.raises(ConfigError) as other:
        store.push(cluster_text(80, name="other"), source="o.yaml")
    assert other.value.lines() == [
        "o.yaml: cluster: is 'other' but this is cluster 't' in ZooKeeper"]
    current = store.current()
    assert current is not None and current.version == 1 and current.text == cluster_text(80)
    assert [v.version for v in store.history()] == [1]


def test_expect_version_mismatch_is_a_conflict(conn: ClusterConnection) -> None:
    store = ConfigStore(conn)
    with pytest.raises(ConflictError, match="is at version 0, not 3 as expected"):
        store.push(cluster_text(), expect_version=3)
    store.push(cluster_text(80), expect_version=0)
    with pytest.raises(ConflictError, match="cluster t is at version 1, not 0 as expected"):
        store.push(cluster_text(81), expect_version=0)


def _race(target: Target, pushes: list[dict[str, Any]]) -> list[object]:
    """Run the pushes in threads, each on its own connection; return result or error each."""
    results: list[object] = [None] * len(pushes)

    def run(i: int, kwargs: dict[str, Any]) -> None:
        with open_cluster(target) as own:
            store = ConfigStore(own, who=kwargs.pop("who", lambda: "racer"))
            try:
                results[i] = store.push(**kwargs)
            except ConflictError as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i, kw)) for i, kw in enumerate(pushes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_pushes_on_one_expected_version_one_wins(conn: ClusterConnection) -> None:
    store = ConfigStore(conn)
    store.push(cluster_text(80))
    results = _race(conn.target, [
        {"text": cluster_text(port), "expect_version": 1} for port in (81, 82, 83, 84)])
    won = [r for r in results if not isinstance(r, ConflictError)]
    lost = [r for r in results if isinstance(r, ConflictError)]
    assert len(won) == 1 and len(lost) == 3
    assert all("nothing written" in str(e) for e in lost)
    current = store.current()
    assert current is not None and current.version == 2
    assert current.text == won[0].version.text  # type: ignore[attr-defined]
    assert [v.version for v in store.history()] == [2, 1]


def test_push_racing_between_read_and_write_loses_the_compare_and_set(
        conn: ClusterConnection) -> None:
    """Both pushes read version 1, then both write: the znode version lets only one through."""
    ConfigStore(conn).push(cluster_text(80))
    both_read = threading.Barrier(2, timeout=30)

    def who() -> str:  # called after the read, before the write
        both_read.wait()
        return "racer"

    results = _race(conn.target, [
        {"text": cluster_text(81), "who": who}, {"text": cluster_text(82), "who": who}])
    lost = [r for r in results if isinstance(r, ConflictError)]
    assert len(lost) == 1
    assert "another push changed cluster t first (version 1 is now 2)" in str(lost[0])
    assert [v.version for v in ConfigStore(conn).history()] == [2, 1]


def test_history_keeps_the_last_n(conn: ClusterConnection) -> None:
    store = ConfigStore(conn, keep=3)
    for port in range(80, 86):
        store.push(cluster_text(port))
    assert [v.version for v in store.history()] == [6, 5, 4]
    assert store.get(4).text == cluster_text(83)
    with pytest.raises(ZooKeeperError, match=r"version 2 of cluster t is not in its history "
                                             r"\(kept: 4\.\.6\)"):
        store.rollback(2)
    # A smaller keep prunes the surplus on the next push, in the same transaction.
    ConfigStore(conn, keep=1).push(cluster_text(90))
    assert [v.version for v in store.history()] == [7]


def test_acl_locks_out_other_clients(conn: ClusterConnection,
                                     zookeeper_module: ZooKeeperServer) -> None:
    ConfigStore(conn).push(cluster_text())
    paths = conn.paths
    acls, _ = conn.client.get_acls(paths.config)
    assert [(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acls] == [
        ("digest", "lvs", 31)]
    for auth in (None, "lvs:wrong", "other:s3cret"):
        outsider = bare_client(zookeeper_module, auth)
        try:
            for path in (paths.config, paths.history_entry(1)):
                with pytest.raises(NoAuthError):
                    outsider.get(path)
                with pytest.raises(NoAuthError):
                    outsider.set(path, b"x")
            with pytest.raises(NoAuthError):
                outsider.get_children(conn.target.settings.root)
            with pytest.raises(NoAuthError):
                outsider.create(f"{paths.base}/intruder", b"")
        finally:
            outsider.stop()
            outsider.close()
    current = ConfigStore(conn).current()
    assert current is not None and current.text == cluster_text()


def test_wrong_credentials_give_one_clear_line(target: Target, tmp_path: Path) -> None:
    with open_cluster(target) as conn:
        ConfigStore(conn).push(cluster_text())
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("lvs:guess\n", encoding="utf-8")
    other = Target(ZooKeeperSettings(target.settings.hosts, target.settings.root, 4.0,
                                     str(wrong)), "t")
    with pytest.raises(ZooKeeperError) as info, open_cluster(other) as conn:
        ConfigStore(conn).current()
    assert str(info.value) == (
        f"ZooKeeper at {target.hosts} refused reading the ACL of {target.settings.root} "
        f"with the credentials in {wrong} (its ACL is for other credentials)")


def test_open_root_is_refused_unless_insecure(target: Target,
                                              zookeeper_module: ZooKeeperServer) -> None:
    outsider = bare_client(zookeeper_module)
    try:
        outsider.create(target.settings.root, b"", acl=OPEN_ACL_UNSAFE)
    finally:
        outsider.stop()
        outsider.close()
    with pytest.raises(ZooKeeperError) as info:
        open_cluster(target)
    assert str(info.value) == (
        f"ZooKeeper node {target.settings.root} at {target.hosts} is open to anyone (ACL "
        "world:anyone): restrict it to the cluster's digest credentials, or pass --insecure")
    insecure = Target(target.settings, "t", insecure=True)
    with open_cluster(insecure) as conn:
        ConfigStore(conn).push(cluster_text())
        # What lvsctl creates below an open root still carries the cluster's digest ACL.
        acls, _ = conn.client.get_acls(conn.paths.config)
        assert [a.id.scheme for a in acls] == ["digest"]


def test_without_credentials_refused_unless_insecure(zookeeper_module: ZooKeeperServer) -> None:
    settings = ZooKeeperSettings((zookeeper_module.hosts,), f"/it{next(_roots)}", 4.0, None)
    with pytest.raises(ZooKeeperError, match=r"no ZooKeeper credentials for cluster t: set "
                                             r"zookeeper\.auth"):
        open_cluster(Target(settings, "t"))
    with open_cluster(Target(settings, "t", insecure=True)) as conn:
        ConfigStore(conn).push(cluster_text())
        acls, _ = conn.client.get_acls(conn.paths.config)
        assert [(a.id.scheme, a.id.id) for a in acls] == [("world", "anyone")]


def test_unreachable_zookeeper_is_one_error(tmp_path: Path) -> None:
    from tests.support.zookeeper import free_port

    auth = tmp_path / "zk.secret"
    auth.write_text("lvs:s3cret\n", encoding="utf-8")
    hosts = f"127.0.0.1:{free_port()}"
    settings = ZooKeeperSettings((hosts,), "/lvsctl", 4.0, str(auth))
    with pytest.raises(ZooKeeperError) as info:
        open_cluster(Target(settings, "t"), connect_timeout=0.5)
    assert str(info.value) == f"cannot reach ZooKeeper at {hosts} within 0.5 s"


def test_watch_sees_every_version(conn: ClusterConnection) -> None:
    store = ConfigStore(conn)
    seen: queue.Queue[ConfigVersion | None] = queue.Queue()
    store.watch(seen.put)
    assert seen.get(timeout=10) is None  # nothing pushed yet
    store.push(cluster_text(80))
    first = seen.get(timeout=10)
    assert first is not None and first.version == 1
    store.push(cluster_text(81))
    second = seen.get(timeout=10)
    assert second is not None and second.version == 2 and second.text == cluster_text(81)


def test_watch_reports_data_that_is_not_a_cluster_file(conn: ClusterConnection) -> None:
    store = ConfigStore(conn)
    store.push(cluster_text(80))
    seen: queue.Queue[object] = queue.Queue()
    store.watch(seen.put, on_error=seen.put)
    first = seen.get(timeout=10)
    assert isinstance(first, ConfigVersion)
    conn.client.set(conn.paths.config, b"garbage")
    error = seen.get(timeout=10)
    assert isinstance(error, ZooKeeperError)
    assert str(error).startswith(f"{conn.paths.config} does not hold an lvsctl cluster file")
