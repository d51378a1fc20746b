"""``lvsctl node init``: node files lvsctl accepts, secrets made once, nothing half-written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from lvsctl.cli import cli
from lvsctl.core.node import load_node
from tests.conftest import EXAMPLE, MINIMAL


def init(*args: str) -> Result:
    return CliRunner().invoke(cli, ["node", "init", "--cluster", str(EXAMPLE), *args])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_a_node_file_lvsctl_loads_and_private_secrets(tmp_path: Path) -> None:
    out = tmp_path / "etc" / "node.yaml"
    result = init("--name", "lb2", "--output", str(out))
    assert result.exit_code == 0, result.output
    node = load_node(out)
    assert (node.cluster, node.director) == ("web", "lb2")
    assert node.zookeeper.hosts == ("10.0.0.11:2181", "10.0.0.12:2181", "10.0.0.13:2181")
    assert node.zookeeper.auth_file == "/etc/lvsctl/zk.secret"
    assert node.zookeeper.session_timeout == 4.0
    assert node.peer_secret_file == str(tmp_path / "etc" / "peer.secret")
    assert node.api.token_file == str(tmp_path / "etc" / "api.token")
    for secret in (tmp_path / "etc" / "peer.secret", tmp_path / "etc" / "api.token"):
        assert mode(secret) == 0o600
        value = secret.read_text()
        assert len(value) == 64 and int(value, 16) >= 0
    assert (tmp_path / "etc" / "peer.secret").read_text() != (
        tmp_path / "etc" / "api.token").read_text()
    assert mode(out) == 0o644
    assert "copy it unchanged to lb1" in result.output
    # The example's ZooKeeper credentials file is not there: said once, as a warning.
    assert result.stderr.count("zk.secret does not exist yet") == 1
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "api.token", "node.yaml", "peer.secret"]  # no temporary files left behind


def test_second_director_shares_the_peer_secret(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    first = init("--name", "lb1", "--output", str(tmp_path / "lb1.yaml"),
                 "--secrets-dir", str(secrets_dir))
    peer = (secrets_dir / "peer.secret").read_text()
    second = init("--name", "lb2", "--output", str(tmp_path / "lb2.yaml"),
                  "--secrets-dir", str(secrets_dir))
    assert first.exit_code == second.exit_code == 0
    assert f"kept {secrets_dir / 'peer.secret'}" in second.output
    assert (secrets_dir / "peer.secret").read_text() == peer
    lb1, lb2 = load_node(tmp_path / "lb1.yaml"), load_node(tmp_path / "lb2.yaml")
    assert lb1.peer_secret_file == lb2.peer_secret_file == str(secrets_dir / "peer.secret")
    assert (lb1.director, lb2.director) == ("lb1", "lb2")


def test_refuses_to_replace_a_node_file_without_force(tmp_path: Path) -> None:
    out = tmp_path / "node.yaml"
    out.write_text("mine\n")
    result = init("--name", "lb1", "--output", str(out), "--secrets-dir",
                  str(tmp_path / "s"))
    assert result.exit_code == 1
    assert result.stderr == f"lvsctl: {out} exists: pass --force to replace it\n"
    assert out.read_text() == "mine\n"
    assert not (tmp_path / "s").exists()  # refused before any secret was made


def test_force_replaces_the_node_file_but_keeps_secrets(tmp_path: Path) -> None:
    out = tmp_path / "node.yaml"
    assert init("--name", "lb1", "--output", str(out)).exit_code == 0
    peer = (tmp_path / "peer.secret").read_text()
    out.write_text("stale\n")
    result = init("--name", "lb1", "--output", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert load_node(out).director == "lb1"
    assert (tmp_path / "peer.secret").read_text() == peer


def test_rotate_secrets_replaces_them(tmp_path: Path) -> None:
    out = tmp_path / "node.yaml"
    assert init("--name", "lb1", "--output", str(out)).exit_code == 0
    peer = (tmp_path / "peer.secret").read_text()
    result = init("--name", "lb1", "--output", str(out), "--force", "--rotate-secrets")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "peer.secret").read_text() != peer
    assert mode(tmp_path / "peer.secret") == 0o600


def test_warns_about_a_secret_others_can_read(tmp_path: Path) -> None:
    (tmp_path / "peer.secret").write_text("shared" * 6)
    (tmp_path / "peer.secret").chmod(0o644)
    result = init("--name", "lb1", "--output", str(tmp_path / "node.yaml"))
    assert result.exit_code == 0
    assert f"warning: {tmp_path / 'peer.secret'} may be read by others (mode 0644)" in (
        result.stderr)
    assert (tmp_path / "peer.secret").read_text() == "shared" * 6


def test_unknown_director_is_one_line(tmp_path: Path) -> None:
    result = init("--name", "lb3", "--output", str(tmp_path / "node.yaml"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"lvsctl: --name: 'lb3' is not a director of cluster web in {EXAMPLE} (it has lb1 and lb2)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_invalid_cluster_file_writes_nothing(tmp_path: Path) -> None:
    bad = dict(MINIMAL, directors=MINIMAL["directors"][:1])
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(bad))
    out = tmp_path / "out" / "node.yaml"
    result = CliRunner().invoke(
        cli, ["node", "init", "--cluster", str(cluster), "--name", "lb1", "--output", str(out)])
    assert result.exit_code == 1
    assert result.stderr.startswith("cluster.yaml: directors: ")
    assert len(result.stderr.splitlines()) == 1
    assert not out.parent.exists()


def test_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = init("--name", "lb1", "--output", str(blocker / "node.yaml"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"lvsctl: {blocker}: cannot create the folder: ")
    assert len(result.stderr.splitlines()) == 1


def test_check_accepts_what_init_wrote_and_rejects_a_broken_file(tmp_path: Path) -> None:
    out = tmp_path / "node.yaml"
    assert init("--name", "lb1", "--output", str(out)).exit_code == 0
    good = CliRunner().invoke(cli, ["node", "check", str(out)])
    assert good.exit_code == 0
    assert good.output.startswith(f"{out}: ok: director lb1 of cluster web")
    out.write_text(out.read_text().replace("director:", "directer:"))
    bad = CliRunner().invoke(cli, ["node", "check", str(out)])
    assert bad.exit_code == 1
    assert f"{out}: director: required key is missing" in bad.stderr.splitlines()


def test_relative_auth_file_is_resolved_beside_the_cluster_file(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["zookeeper"]["auth"] = "creds/zk.secret"
    cluster = tmp_path / "conf" / "cluster.yaml"
    cluster.parent.mkdir()
    cluster.write_text(yaml.safe_dump(doc))
    (tmp_path / "conf" / "creds").mkdir()
    (tmp_path / "conf" / "creds" / "zk.secret").write_text("lvsctl:pw")
    out = tmp_path / "elsewhere" / "node.yaml"
    result = CliRunner().invoke(
        cli, ["node", "init", "--cluster", str(cluster), "--name", "lb1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert load_node(out).zookeeper.auth_file == str(tmp_path / "conf" / "creds" / "zk.secret")
    assert "does not exist yet" not in result.stderr


@pytest.mark.parametrize(("content", "size"), [("", 0), ("\n", 0), ("short-secret\n", 12)])
def test_refuses_an_existing_secret_that_is_empty_or_too_short(tmp_path: Path, content: str,
                                                               size: int) -> None:
    peer = tmp_path / "peer.secret"
    peer.write_text(content)
    out = tmp_path / "node.yaml"
    result = init("--name", "lb1", "--output", str(out))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"lvsctl: {peer}: the existing peer-link secret is {size} bytes, fewer than 16: remove "
        "it or pass --rotate-secrets (then copy peer.secret to the other director)"]
    assert not out.exists() and not (tmp_path / "api.token").exists()  # nothing half done
    rotated = init("--name", "lb1", "--output", str(out), "--rotate-secrets")
    assert rotated.exit_code == 0, rotated.output
    assert len(peer.read_text()) == 64


def test_refuses_a_dangling_symlink_at_the_output_without_force(tmp_path: Path) -> None:
    out = tmp_path / "node.yaml"
    out.symlink_to(tmp_path / "gone" / "node.yaml")
    result = init("--name", "lb1", "--output", str(out))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"lvsctl: {out} is a symlink to {tmp_path / 'gone' / 'node.yaml'}, which does not "
        "exist: pass --force to replace the link with the node file"]
    assert out.is_symlink() and not (tmp_path / "peer.secret").exists()
    forced = init("--name", "lb1", "--output", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert not out.is_symlink() and load_node(out).director == "lb1"


def test_refuses_a_dangling_symlink_for_a_secret(tmp_path: Path) -> None:
    peer = tmp_path / "peer.secret"
    peer.symlink_to("/nonexistent/peer.secret")
    result = init("--name", "lb1", "--output", str(tmp_path / "node.yaml"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"lvsctl: {peer} is a symlink to /nonexistent/peer.secret, which does not exist: fix "
        "the link, or pass --rotate-secrets to replace it"]
