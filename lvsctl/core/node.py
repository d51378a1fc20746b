"""The node file: which director this host is, how it reaches ZooKeeper, where its secrets are.

The cluster file describes the cluster and lives in ZooKeeper; the node file is what one
director needs before it can read it. ``lvsctl director run --node FILE`` and the commands
that talk to ZooKeeper (``--node``) read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from lvsctl.core import schema
from lvsctl.core.config import parse_yaml, pydantic_issues, read_file_text, sorted_unique
from lvsctl.core.errors import ConfigError, ConfigIssue
from lvsctl.core.model import ZooKeeperSettings

DEFAULT_NODE_FILE = "/etc/lvsctl/node.yaml"


class PeerLinkFile(schema.Strict):
    secret: str = Field(description="file holding the peer-link HMAC secret (mode 0600)")


class ApiFile(schema.Strict):
    listen: schema.HostPort = "127.0.0.1:9180"
    token: str | None = Field(
        None, description="file holding the bearer token for actions; without it, no actions"
    )
    drills: bool = Field(False, description="allow the crash and freeze drill actions")


class NodeFile(schema.Strict):
    """An lvsctl node file (one per director)."""

    cluster: schema.Name
    director: schema.Name
    zookeeper: schema.ZooKeeperFile
    peer: PeerLinkFile
    api: ApiFile | None = None
    # Only the kernel: the test bed runs directors on a fake table through its own main
    # (lvsctl.testbed.director_main --fake-ipvs), so the product never opens a fake.
    ipvs: Annotated[str, Field(pattern=r"^kernel$")] = Field(
        "kernel", description="the IPVS table the director programs: 'kernel'"
    )
    # The pattern engine is Rust's regex: "$" is the end of the text, never before a "\n".
    state_dir: Annotated[str, Field(pattern=r"^/[^\x00-\x1f\x7f]*$")] = "/var/lib/lvsctl"
    log_format: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class Api:
    host: str
    port: int
    token_file: str | None
    drills: bool


@dataclass(frozen=True)
class Node:
    cluster: str
    director: str
    zookeeper: ZooKeeperSettings
    peer_secret_file: str
    api: Api
    ipvs: str
    state_dir: str
    log_format: str
    source: str

    @property
    def cluster_path(self) -> str:
        """The cluster's root znode, e.g. /lvsctl/web."""
        return self.zookeeper.cluster_path(self.cluster)


def load_node(path: str | Path) -> Node:
    """Read and validate a node file. Raises ConfigError naming the file on any problem."""
    path = Path(path)
    text = read_file_text(path)
    return parse_node(text, str(path))


def parse_node(text: str, source: str) -> Node:
    data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue("", "the file must be a mapping of keys")])
    try:
        raw = NodeFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, sorted_unique(pydantic_issues(exc, data))) from None
    api = raw.api or ApiFile()
    host, _, port = api.listen.rpartition(":")
    zk = raw.zookeeper
    return Node(
        cluster=raw.cluster,
        director=raw.director,
        zookeeper=ZooKeeperSettings(tuple(zk.hosts), zk.root, zk.session_timeout, zk.auth),
        peer_secret_file=raw.peer.secret,
        api=Api(host.strip("[]"), int(port), api.token, api.drills),
        ipvs=raw.ipvs,
        state_dir=raw.state_dir,
        log_format=raw.log_format,
        source=source,
    )
