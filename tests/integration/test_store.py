"""The cluster's store against a real ZooKeeper: every record written and read back, ACLs on
every znode, foreign data skipped and counted, and one answer to "who leads" — the same as a
running election's own and the same in ``status`` and ``failover status``."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from lvsctl.cli import cli
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.records import (
    ConfigState,
    DirectorRecord,
    HealthStatus,
    RealServerStatus,
    RecordError,
    ServiceStatus,
    TransitionRecord,
)
from lvsctl.core.zk import (
    DIRECTOR_RECONNECT,
    ClusterConnection,
    ClusterStore,
    Target,
    make_client,
    open_cluster,
)
from lvsctl.director.election import Election, State, Timing
from tests.conftest import MINIMAL
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

_roots = itertools.count()


def record(name: str, role: str, epoch: int, **changes: Any) -> DirectorRecord:
    base = DirectorRecord(
        director=name, cluster="t", role=role, epoch=epoch, since=1764150000.25,
        zookeeper="connected", vips=("192.0.2.10",) if role == "ACTIVE" else (),
        config=ConfigState("/lvsctl/t/config@v1", ""),
        services=(ServiceStatus("www", "tcp 192.0.2.10:80", "dr", (
            RealServerStatus("web1", "192.0.2.21:80", 1, HealthStatus(True, 1, "HTTP 200")),)),),
        last_reconcile={"planned": 0}, api="127.0.0.1:9180",
        transitions=(TransitionRecord(name, "transition", 1764150000.25, 4.5, role, epoch),),
    )
    return DirectorRecord(**{**base.__dict__, **changes})


@pytest.fixture
def target(zookeeper_module: ZooKeeperServer, tmp_path: Path) -> Target:
    auth = tmp_path / "zk.secret"
    auth.write_text("lvs:s3cret\n", encoding="utf-8")
    settings = ZooKeeperSettings((zookeeper_module.hosts,), f"/st{next(_roots)}", 4.0, str(auth))
    return Target(settings, "t")


@pytest.fixture
def conn(target: Target) -> Iterator[ClusterConnection]:
    with open_cluster(target) as made:
        yield made


def cli_opts(target: Target) -> list[str]:
    return ["--zookeeper", target.hosts, "--cluster", "t", "--root", target.settings.root,
            "--auth", str(target.settings.auth_file)]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def cluster_text() -> str:
    return yaml.safe_dump(copy.deepcopy(MINIMAL), sort_keys=False)


def test_every_record_round_trips(conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    assert store.leader() is None and store.queue() == []
    assert store.directors().items == () and store.transitions().items == ()
    assert store.director("lb1") is None

    lb1, lb2 = record("lb1", "ACTIVE", 3), record("lb2", "STANDBY", 4, since=None)
    store.publish_director(lb1)
    store.publish_director(lb2)
    assert store.director("lb1") == lb1
    assert store.directors().items == (lb1, lb2)
    moved = record("lb1", "FENCED", 3, vips=())
    store.publish_director(moved)  # the same session: replaced in place
    assert store.director("lb1") == moved

    events = [TransitionRecord("lb1", "transition", 10.0 + i, i, "ACTIVE", i, reason=f"r{i}")
              for i in range(5)]
    seqs = [store.append_transition(e) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    read = store.transitions()
    assert [(e.seq, e.record) for e in read.items] == list(zip(seqs, events, strict=True))
    assert [e.record for e in store.transitions(last=2).items] == events[-2:]
    assert [e.record for e in store.transitions(after=seqs[2]).items] == events[3:]
    assert store.transitions(last=0).items == ()

    entry = store.election.join("lb1")
    leader = store.leader()
    assert leader is not None
    assert (leader.director, leader.epoch, leader.znode) == ("lb1", entry.epoch, entry.znode)
    assert leader.owner == conn.client.client_id[0] and leader.joined > 0
    assert store.queue() == [entry]

    pushed = store.config.push(cluster_text(), source="c.yaml")
    assert store.config.current() == pushed.version


def test_transitions_are_trimmed_to_the_last_n(conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    for i in range(7):
        store.append_transition(TransitionRecord("lb1", "health", float(i)), keep=3)
    assert [e.record.wall for e in store.transitions().items] == [4.0, 5.0, 6.0]
    assert len(conn.client.get_children(conn.paths.transitions)) == 3


def test_a_record_left_by_an_earlier_session_is_replaced(target: Target) -> None:
    first = open_cluster(target)
    try:
        ClusterStore(first).publish_director(record("lb1", "ACTIVE", 1))
        # A restarted director publishes while its old session has not expired yet ...
        with open_cluster(target) as second:
            store = ClusterStore(second)
            store.publish_director(record("lb1", "STANDBY", 2))
            _, stat = second.client.get(second.paths.director("lb1"))
            assert stat.ephemeralOwner == second.client.client_id[0]
            first.close()
            # ... and when the old session ends, the new record is not taken with it.
            published = store.director("lb1")
            assert published is not None and published.role == "STANDBY"
        with open_cluster(target) as third:
            assert ClusterStore(third).director("lb1") is None  # ephemeral: gone with its session
    finally:
        first.close()


def test_a_record_too_large_is_refused_and_nothing_written(conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    huge = record("lb1", "ACTIVE", 1, vips=tuple(
        f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(90_000)))
    with pytest.raises(RecordError, match="more than such a record may hold"):
        store.publish_director(huge)
    assert store.director("lb1") is None


def _walk(conn: ClusterConnection, path: str) -> Iterator[str]:
    yield path
    for child in conn.client.get_children(path):
        yield from _walk(conn, f"{path.rstrip('/')}/{child}")


def test_every_znode_written_carries_the_cluster_acl(target: Target,
                                                     conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    store.config.push(cluster_text(), source="c.yaml")
    store.publish_director(record("lb1", "ACTIVE", 1))
    store.append_transition(TransitionRecord("lb1", "transition", 1.0, state="ACTIVE"))
    store.election.join("lb2")

    async def elect() -> None:
        # The election recipe with a director's own client (its default ACL is the cluster's).
        client = make_client(target, target.credentials(), reconnect=DIRECTOR_RECONNECT)
        await asyncio.to_thread(client.start, 10)
        election = Election(client, conn.paths.election, "lb1", Timing(4.0))
        await election.start()
        try:
            async with asyncio.timeout(20):
                while election.state is not State.STANDBY:
                    await asyncio.sleep(0.01)
            znodes = list(_walk(conn, target.settings.root))
            assert any(z.endswith(str(election.node)) for z in znodes)
            for path in znodes:
                acls, _ = conn.client.get_acls(path)
                assert [(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acls] == [
                    ("digest", "lvs", 31)], path
        finally:
            await election.stop()
            await asyncio.to_thread(client.stop)
            client.close()

    asyncio.run(elect())


def test_foreign_data_is_skipped_and_counted(target: Target, conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    store.publish_director(record("lb1", "ACTIVE", 1))
    store.append_transition(TransitionRecord("lb1", "transition", 1.0, state="ACTIVE"))
    # Other writers (another version, a hand with zkCli) put what is not a record.
    paths = conn.paths
    conn.client.create(f"{paths.directors}/lb2", b'{"director": "lb2", "epoch": "two"}',
                       acl=conn.acl, ephemeral=True)
    conn.client.create(f"{paths.directors}/lb3", json.dumps(
        record("lb9", "STANDBY", 2).to_json()).encode(), acl=conn.acl, ephemeral=True)
    conn.client.create(f"{paths.transitions}/t_", b"not json", acl=conn.acl, sequence=True)
    conn.client.create(f"{paths.transitions}/notes", b"{}", acl=conn.acl)
    store.append_transition(TransitionRecord("lb1", "vip_acquired", 2.0, vip="192.0.2.10"))

    directors = store.directors()
    assert [r.director for r in directors.items] == ["lb1"]
    assert sorted(s.reason for s in directors.skipped) == [
        f"{paths.directors}/lb2: missing cluster",
        f"{paths.directors}/lb3: the record is of director lb9"]
    log = store.transitions()
    assert [e.record.event for e in log.items] == ["transition", "vip_acquired"]
    assert len(log.skipped) == 2

    shown = run("status", *cli_opts(target))
    assert shown.exit_code == 0, shown.output
    assert "Traceback" not in shown.output
    assert "\n4 malformed records skipped\n" in shown.stdout
    assert f"  {paths.directors}/lb2: missing cluster" in shown.stdout
    as_json = json.loads(run("status", "--json", *cli_opts(target)).stdout)
    assert len(as_json["skipped"]) == 4 and list(as_json["directors"]) == ["lb1"]
    failover = run("failover", "status", *cli_opts(target))
    assert failover.exit_code == 0 and "\n4 malformed records skipped\n" in failover.stdout


def test_leader_agrees_with_the_running_election_and_both_status_commands(
        target: Target, conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    store.config.push(cluster_text(), source="c.yaml")

    def both_say() -> tuple[tuple[str, int], tuple[str, int], str, str]:
        status = json.loads(run("status", "--json", *cli_opts(target)).stdout)["leader"]
        failover = json.loads(run("failover", "status", "--json", *cli_opts(target)).stdout)
        text = run("status", *cli_opts(target)).stdout.splitlines()[0]
        failover_text = run("failover", "status", *cli_opts(target)).stdout.splitlines()[0]
        return ((status["director"], status["epoch"]), (failover["active"], failover["epoch"]),
                text, failover_text)

    async def elect() -> None:
        clients = [make_client(target, target.credentials(), reconnect=DIRECTOR_RECONNECT)
                   for _ in range(2)]
        for client in clients:
            await asyncio.to_thread(client.start, 10)
        e1 = Election(clients[0], conn.paths.election, "lb1", Timing(4.0))
        e2 = Election(clients[1], conn.paths.election, "lb2", Timing(4.0))
        try:
            await e1.start()
            async with asyncio.timeout(20):
                while e1.state is not State.ACTIVE:
                    await asyncio.sleep(0.01)
            await e2.start()
            async with asyncio.timeout(20):
                while e2.state is not State.STANDBY:
                    await asyncio.sleep(0.01)
            leader = await asyncio.to_thread(store.leader)
            assert leader is not None
            assert (leader.director, leader.epoch, leader.znode) == ("lb1", e1.epoch, e1.node)
            assert leader.owner == clients[0].client_id[0]
            assert [e.epoch for e in store.queue()] == [e1.epoch, e2.epoch]
            said = await asyncio.to_thread(both_say)
            assert said[0] == said[1] == ("lb1", e1.epoch)
            assert said[2] == f"cluster t: lb1 leads (epoch {e1.epoch})"
            assert said[3] == f"active: lb1 epoch {e1.epoch} since -"  # lb1 published nothing

            await e1.stepdown()
            async with asyncio.timeout(20):
                while not (e2.state is State.ACTIVE and e1.state is State.STANDBY):
                    await asyncio.sleep(0.01)
            leader = await asyncio.to_thread(store.leader)
            assert leader is not None
            assert (leader.director, leader.epoch, leader.znode) == ("lb2", e2.epoch, e2.node)
            # With lb2's record published, both commands also say since when it leads.
            await asyncio.to_thread(store.publish_director,
                                    record("lb2", "ACTIVE", e2.epoch, since=1764150000.25))
            said = await asyncio.to_thread(both_say)
            assert said[0] == said[1] == ("lb2", e2.epoch)
            assert said[3] == f"active: lb2 epoch {e2.epoch} since 2025-11-26 09:40:00.250Z"
        finally:
            for election in (e1, e2):
                await election.stop()
            for client in clients:
                await asyncio.to_thread(client.stop)
                client.close()

    asyncio.run(elect())


def test_hostile_numbers_and_nesting_are_skipped_not_tracebacks(
        target: Target, conn: ClusterConnection) -> None:
    store = ClusterStore(conn)
    store.publish_director(record("lb1", "ACTIVE", 1))
    paths = conn.paths
    first = TransitionRecord("lb1", "transition", 1.0, state="ACTIVE")
    store.append_transition(first)
    good = first.to_json()
    hostile = [
        json.dumps(good).replace('"wall": 1.0', '"wall": 1e400').encode(),
        json.dumps({**good, "wall": 1e300}).encode(),  # finite, but no date
        json.dumps({**good, "epoch": 2**70}).encode(),
        json.dumps({**good, "monotonic": 1.0}).replace("1.0", "NaN", 1).encode(),
        b"[" * 5000 + b"]" * 5000,
        b'{"director": "lb1", "event": "\xff"}',
    ]
    for data in hostile:
        conn.client.create(f"{paths.transitions}/t_", data, acl=conn.acl, sequence=True)
    nested: Any = "deep"
    for _ in range(40):
        nested = {"a": nested}
    conn.client.create(f"{paths.directors}/lb2", json.dumps(
        {**record("lb2", "STANDBY", 2).to_json(), "last_reconcile": nested}).encode(),
        acl=conn.acl, ephemeral=True)
    store.append_transition(TransitionRecord("lb1", "vip_acquired", 2.0, vip="192.0.2.10"))

    for args in (("status",), ("failover", "status")):
        shown = run(*args, *cli_opts(target))
        assert shown.exit_code == 0, shown.output
        assert "Traceback" not in shown.output
        assert f"\n{len(hostile) + 1} malformed records skipped\n" in shown.stdout
    as_json = json.loads(run("status", "--json", *cli_opts(target)).stdout)
    assert [t["event"] for t in as_json["transitions"]] == ["transition", "vip_acquired"]
    assert len(as_json["skipped"]) == len(hostile) + 1
