"""``lvsctl node init``: write a director's node file and its secrets from the cluster file.

The node file is what one director reads before it can reach ZooKeeper (lvsctl/node.py). It
is derived from the cluster file (cluster name, ZooKeeper settings) and the director's name;
the peer-link secret and the API token are random and created once: an existing secret is
kept, because the peer secret must be the same file on both directors.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from lvsctl.core.config import load_cluster
from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import Cluster
from lvsctl.core.node import DEFAULT_NODE_FILE, load_node, parse_node
from lvsctl.output import warn

PEER_SECRET = "peer.secret"
API_TOKEN = "api.token"
SECRET_BYTES = 32  # 256 bits: the HMAC key of the peer link, the API bearer token
# The shortest secret kept as it is: what the peer link accepts (director/peer.read_secret).
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096


class NodeInitError(LvsctlError):
    """``lvsctl node init`` cannot do what it was asked without losing something."""


@dataclass(frozen=True)
class SecretFiles:
    peer: Path
    api_token: Path
    zk_auth: Path | None  # absolute: the cluster file's zookeeper.auth, resolved


def resolve_auth(cluster: Cluster, cluster_file: str) -> Path | None:
    """The cluster file's ``zookeeper.auth`` as an absolute path: lvsctl reads a relative one
    relative to the file that names it, and the node file may live elsewhere."""
    auth = cluster.zookeeper.auth_file
    if auth is None:
        return None
    return Path(cluster_file).absolute().parent / auth  # an absolute auth stays as it is


def render_node_file(cluster: Cluster, director: str, files: SecretFiles, source: str) -> str:
    """The node file's text for ``director`` (which must be one of the cluster's two).

    Strings are written as JSON strings, which YAML reads unchanged whatever they contain.
    """
    zk = cluster.zookeeper
    other = next(d.name for d in cluster.directors if d.name != director)
    lines = [
        f"# lvsctl node file of director {director} (cluster {cluster.name}), written by",
        f"# `lvsctl node init` from {source}. `lvsctl director run --node FILE` reads it; the",
        "# cluster file itself is read from ZooKeeper (`lvsctl config push`).",
        "",
        f"cluster: {json.dumps(cluster.name)}",
        f"director: {json.dumps(director)}",
        "",
        "zookeeper:",
        f"  hosts: {json.dumps(list(zk.hosts))}",
        f"  root: {json.dumps(zk.root)}",
        f"  session_timeout: {zk.session_timeout!r}",
    ]
    if files.zk_auth is not None:
        lines.append(f"  auth: {json.dumps(str(files.zk_auth))}   # 'user:password', mode 0600")
    lines += [
        "",
        "peer:",
        f"  secret: {json.dumps(str(files.peer))}   # identical on {director} and {other}",
        "",
        "api:",
        '  listen: "127.0.0.1:9180"',
        f"  token: {json.dumps(str(files.api_token))}",
        "  drills: false",
        "",
        'state_dir: "/var/lib/lvsctl"',
        "log_format: json",
        "",
    ]
    return "\n".join(lines)


def _atomic_write(path: Path, data: str, mode: int) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place: a reader
    sees the old file or the new one, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _loose_mode(path: Path) -> int | None:
    """The mode of an existing secret if group or others may read it, else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def _dangling(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _keepable_secret(path: Path, what: str) -> bool:
    """Whether an existing secret can be kept (False: there is none). Raises NodeInitError
    when one is there but unusable: empty, too short, not a regular file, a dangling link."""
    if _dangling(path):
        raise NodeInitError(f"{path} is a symlink to {os.readlink(path)}, which does not "
                            f"exist: fix the link, or pass --rotate-secrets to replace it")
    if not path.exists():
        return False
    try:
        if not path.is_file():
            raise NodeInitError(f"{path}: the {what} is not a regular file")
        with path.open("rb") as file:
            size = len(file.read(MAX_SECRET_BYTES + 1).strip())
    except OSError as exc:
        raise _os_error(exc, path, "read the secret") from None
    if size < MIN_SECRET_BYTES:
        raise NodeInitError(
            f"{path}: the existing {what} is {size} bytes, fewer than {MIN_SECRET_BYTES}: "
            "remove it or pass --rotate-secrets (then copy peer.secret to the other director)")
    return True


def _os_error(exc: OSError, path: Path, action: str) -> NodeInitError:
    return NodeInitError(f"{path}: cannot {action}: {exc.strerror or exc}")


@click.group("node")
def node_group() -> None:
    """Set up a director: its node file and secrets."""


@node_group.command("init")
@click.option("--cluster", "cluster_file", required=True, type=click.Path(dir_okay=False),
              help="The cluster file (validated first).")
@click.option("--name", required=True, help="Which of the cluster's two directors this is.")
@click.option("--output", default=DEFAULT_NODE_FILE, show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the node file.")
@click.option("--secrets-dir", type=click.Path(file_okay=False),
              help="Where the peer secret and API token live [default: the node file's folder].")
@click.option("--force", is_flag=True, help="Replace an existing node file.")
@click.option("--rotate-secrets", is_flag=True,
              help="Replace existing secrets too (then copy peer.secret to the other director).")
def init_command(cluster_file: str, name: str, output: str, secrets_dir: str | None,
                 force: bool, rotate_secrets: bool) -> None:
    """Write the node file for director NAME of the cluster file, and its secrets.

    Existing secrets are kept: run it for both directors with the same --secrets-dir (or copy
    peer.secret first) and both node files point at the same peer secret.
    """
    loaded = load_cluster(cluster_file)
    cluster = loaded.cluster
    names = [d.name for d in cluster.directors]
    if name not in names:
        raise NodeInitError(
            f"--name: {name!r} is not a director of cluster {cluster.name} in {cluster_file} "
            f"(it has {' and '.join(names)})"
        )
    out_path = Path(output).absolute()
    folder = Path(secrets_dir).absolute() if secrets_dir else out_path.parent
    files = SecretFiles(
        folder / PEER_SECRET, folder / API_TOKEN, resolve_auth(cluster, cluster_file))
    text = render_node_file(cluster, name, files, Path(cluster_file).name)
    parse_node(text, str(out_path))  # never write a node file lvsctl itself would refuse
    if _dangling(out_path) and not force:
        raise NodeInitError(f"{out_path} is a symlink to {os.readlink(out_path)}, which does "
                            "not exist: pass --force to replace the link with the node file")
    if out_path.exists() and not force:
        raise NodeInitError(f"{out_path} exists: pass --force to replace it")
    # Judge the secrets before anything is written: nothing half done.
    secret_files = ((files.peer, "peer-link secret"), (files.api_token, "API token"))
    kept = {path for path, what in secret_files
            if not rotate_secrets and _keepable_secret(path, what)}

    other = next(n for n in names if n != name)
    for directory in {out_path.parent, folder}:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, directory, "create the folder") from None
    for path, what in secret_files:
        try:
            if path in kept:
                loose = _loose_mode(path)
                if loose is not None:
                    warn(f"{path} may be read by others (mode {loose:04o}): chmod 600 it")
                click.echo(f"kept {path} ({what})")
                continue
            _atomic_write(path, secrets.token_hex(SECRET_BYTES), 0o600)
        except OSError as exc:
            raise _os_error(exc, path, "write the secret") from None
        hint = f": copy it unchanged to {other}" if path == files.peer else ""
        click.echo(f"created {path} ({what}, mode 0600){hint}")
    try:
        _atomic_write(out_path, text, 0o644)
    except OSError as exc:
        raise _os_error(exc, out_path, "write the node file") from None
    click.echo(f"wrote {out_path}: director {name} of cluster {cluster.name}")
    auth = files.zk_auth
    if auth is not None and not auth.exists():
        warn(f"{auth} does not exist yet: write the ZooKeeper digest 'user:password' there "
             "(mode 0600)")


@node_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def check_command(file: str) -> None:
    """Validate the node file FILE (the Ansible role checks every node file with it)."""
    node = load_node(file)
    click.echo(f"{file}: ok: director {node.director} of cluster {node.cluster}, ZooKeeper "
               f"{','.join(node.zookeeper.hosts)}{node.zookeeper.root}")
