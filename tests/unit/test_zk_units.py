"""The pure parts of lvsctl.core.zk and the shared connection options: no ZooKeeper needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click
import pytest

from lvsctl.commands.common import ZkOptions
from lvsctl.core.errors import ConfigError, ZooKeeperError
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.zk import ConfigVersion, Paths, Target, read_credentials


def test_paths_layout() -> None:
    paths = Paths("/lvsctl/", "web")
    assert (paths.base, paths.config, paths.history) == (
        "/lvsctl/web", "/lvsctl/web/config", "/lvsctl/web/history")
    assert paths.history_entry(42) == "/lvsctl/web/history/0000000042"
    assert (paths.election, paths.director("lb1"), paths.transitions) == (
        "/lvsctl/web/election", "/lvsctl/web/directors/lb1", "/lvsctl/web/transitions")


@pytest.mark.parametrize(("text", "ok"), [
    ("lvs:s3cret\n", ("lvs", "s3cret")),
    ("\n  lvs:pa:ss  \n", ("lvs", "pa:ss")),
    ("s3cret\n", None),
    (":s3cret\n", None),
    ("lvs:\n", None),
    ("a:b\nc:d\n", None),
    ("", None),
])
def test_read_credentials(tmp_path: Path, text: str, ok: tuple[str, str] | None) -> None:
    path = tmp_path / "zk.secret"
    path.write_text(text, encoding="utf-8")
    if ok is None:
        with pytest.raises(ConfigError) as info:
            read_credentials(path)
        assert info.value.lines() == [
            f"{path}: expected one line 'user:password' (ZooKeeper digest credentials)"]
    else:
        creds = read_credentials(path)
        assert (creds.user, creds.password) == ok
        assert creds.acl().id.scheme == "digest" and creds.acl().perms == 31


def test_missing_auth_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_credentials(tmp_path / "nope")
    assert info.value.lines() == [
        f"{tmp_path / 'nope'}: cannot read the file: No such file or directory"]


def _version(text: str = "cluster: t\n") -> ConfigVersion:
    return ConfigVersion(3, hashlib.sha256(text.encode()).hexdigest(), "ops@lb0",
                         "2026-01-01T00:00:00+00:00", "c.yaml", text, rollback_of=1)


def test_config_version_round_trip() -> None:
    made = _version()
    assert ConfigVersion.from_bytes(made.to_bytes(), "/x") == made
    assert "text" not in made.meta() and made.meta()["rollback_of"] == 1


@pytest.mark.parametrize(("data", "message"), [
    (b"garbage", "/x does not hold an lvsctl cluster file: not JSON (Expecting value"),
    (b'{"format": 9}', "/x does not hold an lvsctl cluster file: unknown format 9"),
    (b'{"format": 1, "version": 1}', "/x does not hold an lvsctl cluster file: missing sha256"),
    (_version().to_bytes().replace(b"cluster: t", b"cluster: u"),
     "/x: the text does not match its sha256"),
])
def test_config_version_rejects_foreign_data(data: bytes, message: str) -> None:
    with pytest.raises(ZooKeeperError) as info:
        ConfigVersion.from_bytes(data, "/x")
    assert str(info.value).startswith(message)


def test_credentials_required_unless_insecure() -> None:
    settings = ZooKeeperSettings(("127.0.0.1:2181",), "/lvsctl", 4.0, None)
    with pytest.raises(ZooKeeperError, match="no ZooKeeper credentials for cluster web"):
        Target(settings, "web").credentials()
    assert Target(settings, "web", insecure=True).credentials() is None


def _options(**kw: object) -> ZkOptions:
    base: dict[str, object] = {"node": None, "hosts": None, "cluster": None, "root": None,
                               "auth": None, "insecure": False, "connect_timeout": 5.0}
    base.update(kw)
    return ZkOptions(**base)  # type: ignore[arg-type]


def test_node_file_target_resolves_auth_next_to_it(tmp_path: Path) -> None:
    node = tmp_path / "node.yaml"
    node.write_text("cluster: web\ndirector: lb1\nzookeeper: {hosts: ['10.0.0.1:2181'], "
                    "root: /lb, auth: zk.secret}\npeer: {secret: /s}\n", encoding="utf-8")
    target = _options(node=str(node)).target()
    assert (target.cluster, target.hosts, target.paths.base) == ("web", "10.0.0.1:2181", "/lb/web")
    assert target.auth_path() == tmp_path / "zk.secret"
    other = _options(node=str(node), auth="/etc/other.secret").target()
    assert other.auth_path() == Path("/etc/other.secret")


def test_zookeeper_option_target() -> None:
    target = _options(hosts=("a:1", "b:2"), cluster="web", insecure=True).target()
    assert (target.hosts, target.paths.base, target.insecure) == ("a:1,b:2", "/lvsctl/web", True)
    with pytest.raises(click.UsageError, match="--cluster and --root go with --zookeeper"):
        _options(node="/n.yaml", cluster="web").target()


@pytest.mark.parametrize(("root", "hosts", "cluster", "message"), [
    ("/lvsctl/../x", ("zk:2181",), "t", "ZooKeeper root '/lvsctl/../x': '/lvsctl/../x' has a "
                                        "'..' segment"),
    ("/lvsctl\n", ("zk:2181",), "t", "ZooKeeper root '/lvsctl\\n': "),
    ("/zookeeper", ("zk:2181",), "t", "ZooKeeper root '/zookeeper': '/zookeeper' is under "
                                      "/zookeeper, which ZooKeeper reserves for itself"),
    ("/lvsctl", ("zk:2181/chroot",), "t", "ZooKeeper host 'zk:2181/chroot': 'zk:2181/chroot' "
                                          "carries a path ('/...')"),
    ("/lvsctl", ("zk:2181",), "../t", "cluster name '../t': names start with a letter"),
])
def test_a_target_from_command_line_options_meets_the_file_rules(
        root: str, hosts: tuple[str, ...], cluster: str, message: str) -> None:
    with pytest.raises(ZooKeeperError) as info:
        Target(ZooKeeperSettings(hosts, root, 4.0, None), cluster, insecure=True)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)  # one line, the value shown escaped


def test_an_auth_file_that_is_a_fifo_or_huge_is_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "zk.secret"
    os.mkfifo(fifo)  # nobody writes: reading it would wait for ever
    with pytest.raises(ConfigError) as info:
        read_credentials(fifo)
    assert info.value.lines() == [f"{fifo}: is not a regular file"]
    big = tmp_path / "big.secret"
    big.write_text("u:" + "p" * 5000)
    with pytest.raises(ConfigError, match="is 5002 bytes, more than the limit of 4096"):
        read_credentials(big)
