"""The Ansible playbooks in deploy/ansible: linted, syntax-checked, and applied for real.

The role runs with a local connection for two directors, lb1 and lb2, each into its own
temporary root (``lvsctl_root_prefix``): it builds a real venv from a wheel of this checkout,
writes /etc/lvsctl, the unit, the modules-load.d and sysctl.d files, and pushes the cluster
file to a real ZooKeeper (started here; the test's cluster file names it and a relative auth
file, and ``lvsctl_push_under_prefix`` lets the push run under a prefix). The tasks that need
a real system (packages, user, systemctl, modules, sysctls, status) are skipped under a
prefix; everything else is exactly what a director gets. A second run must change nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lvsctl import __version__
from lvsctl.core.config import load_cluster
from lvsctl.core.node import load_node
from tests.conftest import EXAMPLE, ROOT
from tests.support.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

ANSIBLE = ROOT / "deploy" / "ansible"
DIRECTORS = ("lb1", "lb2")
SOURCES = ("lvsctl",)  # its engine folders are links to the top-level folders: copied whole
RECAP = re.compile(
    r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
    })
    return env


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: scripts/setup installs it (scripts/packages.txt)"
    return path


def playbook(
    tmp: Path, inventory: Path, book: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("ansible-playbook"), "-i", str(inventory), str(ANSIBLE / book), *extra],
        cwd=ANSIBLE, env=ansible_env(tmp), capture_output=True, text=True, timeout=570,
        check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unr),
               "failed": int(failed)}
        for host, ok, changed, unr, failed in RECAP.findall(output)
    }


def build_wheel(tmp: Path) -> Path:
    """A wheel of this checkout, built from a copy so nothing is written into the tree."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
         str(src)], check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp / "dist").glob("lvsctl-*.whl")
    return wheel


def inventory(tmp: Path, hosts: dict[str, dict[str, object]], **common: object) -> Path:
    path = tmp / f"inventory-{len(list(tmp.glob('inventory-*')))}.yml"
    group_vars = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": "/usr/bin/python3",
        "lvsctl_cluster_file": str(EXAMPLE),
        "lvsctl_secrets_local_dir": str(tmp / "secrets"),
        **common,
    }
    data = {"all": {"children": {"lvsctl_directors": {"hosts": hosts, "vars": group_vars}}}}
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass(frozen=True)
class Deployed:
    tmp: Path
    wheel: Path
    cluster_file: Path
    zookeeper: ZooKeeperServer
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]

    def root(self, host: str) -> Path:
        return self.tmp / "root" / host


def cluster_for(server: ZooKeeperServer, tmp: Path) -> Path:
    """The example cluster, with its ZooKeeper section pointing at the test server."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["zookeeper"] = {"hosts": [server.hosts], "root": "/lvsctl", "session_timeout": "4s",
                        "auth": "zk.secret"}  # relative: beside the cluster file
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("deploy")
    wheel = build_wheel(tmp)
    with ZooKeeperServer() as server:
        cluster = cluster_for(server, tmp)
        inv = inventory(
            tmp, {h: {"lvsctl_root_prefix": str(tmp / "root" / h)} for h in DIRECTORS},
            lvsctl_wheel=str(wheel), lvsctl_cluster_file=str(cluster),
            lvsctl_push_under_prefix=True,
        )
        first = playbook(tmp, inv, "site.yml")
        second = playbook(tmp, inv, "site.yml") if first.returncode == 0 else first
        yield Deployed(tmp, wheel, cluster, server, first, second)


def test_first_run_lays_out_both_directors(deployed: Deployed) -> None:
    assert deployed.first.returncode == 0, deployed.first.stdout[-4000:] + deployed.first.stderr
    result = recap(deployed.first.stdout)
    assert sorted(result) == list(DIRECTORS)
    for host in DIRECTORS:
        assert result[host]["failed"] == result[host]["unreachable"] == 0
        assert result[host]["changed"] > 0


def test_second_run_changes_nothing(deployed: Deployed) -> None:
    assert deployed.second.returncode == 0, deployed.second.stdout[-4000:]
    result = recap(deployed.second.stdout)
    assert {h: r["changed"] for h, r in result.items()} == dict.fromkeys(DIRECTORS, 0), (
        "\n".join(line for line in deployed.second.stdout.splitlines()
                  if line.startswith(("changed:", "TASK")))
    )


# path under the root -> mode; "link" for a symlink
LAYOUT = {
    "etc/lvsctl": 0o750,
    "etc/lvsctl/node.yaml": 0o640,
    "etc/lvsctl/cluster.yaml": 0o640,
    "etc/lvsctl/peer.secret": 0o600,
    "etc/lvsctl/api.token": 0o600,
    "etc/lvsctl/zk.secret": 0o600,
    "etc/systemd/system/lvsctl-director.service": 0o644,
    "etc/modules-load.d/lvsctl.conf": 0o644,
    "etc/sysctl.d/90-lvsctl.conf": 0o644,
    "opt/lvsctl/wheels": 0o755,
    "usr/local/bin/lvsctl": "link",
}


@pytest.mark.parametrize("host", DIRECTORS)
def test_files_and_modes(deployed: Deployed, host: str) -> None:
    root = deployed.root(host)
    found: dict[str, int | str] = {}
    for rel in LAYOUT:
        path = root / rel
        if path.is_symlink():
            found[rel] = "link"
        elif path.exists():
            found[rel] = stat.S_IMODE(path.stat().st_mode)
    assert found == LAYOUT
    assert os.readlink(root / "usr/local/bin/lvsctl") == "/opt/lvsctl/venv/bin/lvsctl"
    assert (root / "opt/lvsctl/wheels" / deployed.wheel.name).read_bytes() == (
        deployed.wheel.read_bytes())


@pytest.mark.parametrize("host", DIRECTORS)
def test_node_file_names_this_director(deployed: Deployed, host: str) -> None:
    node = load_node(deployed.root(host) / "etc/lvsctl/node.yaml")
    cluster = load_cluster(deployed.cluster_file).cluster
    assert (node.cluster, node.director) == (cluster.name, host)
    assert node.zookeeper.hosts == cluster.zookeeper.hosts == (deployed.zookeeper.hosts,)
    assert (node.zookeeper.root, node.zookeeper.session_timeout) == ("/lvsctl", 4.0)
    # The cluster file's relative auth path, resolved where the cluster file lives.
    assert node.zookeeper.auth_file == "/etc/lvsctl/zk.secret"
    # Paths inside the file are the director's own, never the test prefix.
    assert node.peer_secret_file == "/etc/lvsctl/peer.secret"
    assert node.api.token_file == "/etc/lvsctl/api.token"
    assert (node.api.host, node.api.port, node.api.drills) == ("127.0.0.1", 9180, False)
    assert node.state_dir == "/var/lib/lvsctl"


def test_secrets_are_the_same_on_both_directors_and_kept_on_the_controller(
    deployed: Deployed,
) -> None:
    lb1, lb2 = (deployed.root(h) / "etc/lvsctl" for h in DIRECTORS)
    kept = deployed.tmp / "secrets"  # the password lookup's files end with a newline
    assert (lb1 / "peer.secret").read_text() == (lb2 / "peer.secret").read_text() == (
        kept / "peer.secret").read_text().strip()
    assert (lb1 / "api.token").read_text() == (kept / "api.token").read_text().strip()
    assert (lb1 / "zk.secret").read_text() == (
        f"lvsctl:{(kept / 'zk.password').read_text().strip()}")
    assert (lb1 / "zk.secret").read_text() == (lb2 / "zk.secret").read_text()
    peer = (lb1 / "peer.secret").read_text()
    assert len(peer) == 64 and peer.isalnum() and peer != (lb1 / "api.token").read_text()
    assert stat.S_IMODE(kept.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize("host", DIRECTORS)
def test_shipped_files_installed_unchanged(deployed: Deployed, host: str) -> None:
    root = deployed.root(host)
    pairs = [
        (ROOT / "deploy/systemd/lvsctl-director.service",
         root / "etc/systemd/system/lvsctl-director.service"),
        (ROOT / "deploy/sysctl.d/90-lvsctl.conf", root / "etc/sysctl.d/90-lvsctl.conf"),
        (deployed.cluster_file, root / "etc/lvsctl/cluster.yaml"),
    ]
    for shipped, installed in pairs:
        assert installed.read_bytes() == shipped.read_bytes(), installed


def test_modules_load_has_the_schedulers_in_use(deployed: Deployed) -> None:
    services = load_cluster(deployed.cluster_file).cluster.services
    in_use = sorted({s.spec.scheduler for s in services})
    assert in_use == ["mh", "rr", "wlc"]  # the example has one service of each
    lines = [
        line for line in
        (deployed.root("lb1") / "etc/modules-load.d/lvsctl.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == ["ip_vs"] + [f"ip_vs_{s}" for s in in_use]


def test_installed_lvsctl_runs(deployed: Deployed) -> None:
    root = deployed.root("lb1")
    lvsctl = root / "opt/lvsctl/venv/bin/lvsctl"
    version = subprocess.run([str(lvsctl), "--version"], capture_output=True, text=True,
                             timeout=60, check=True)
    assert version.stdout.strip() == f"lvsctl, version {__version__}"
    check = subprocess.run(
        [str(lvsctl), "config", "check", str(root / "etc/lvsctl/cluster.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert check.returncode == 0 and "ok: cluster web" in check.stdout, check.stderr


def lvsctl_zk(deployed: Deployed, *args: str) -> subprocess.CompletedProcess[str]:
    root = deployed.root("lb1")
    return subprocess.run(
        [str(root / "opt/lvsctl/venv/bin/lvsctl"), "config", *args,
         "--zookeeper", deployed.zookeeper.hosts, "--cluster", "web",
         "--auth", str(root / "etc/lvsctl/zk.secret"), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_cluster_file_pushed_once(deployed: Deployed) -> None:
    """Two directors, two runs: one version in ZooKeeper, the file's text, readable with the
    credentials the role laid down."""
    shown = lvsctl_zk(deployed, "show")
    assert shown.returncode == 0, shown.stderr
    current = json.loads(shown.stdout)
    assert current["version"] == 1
    assert current["text"] == deployed.cluster_file.read_text()
    history = lvsctl_zk(deployed, "history")
    assert history.returncode == 0, history.stderr
    assert [v["version"] for v in json.loads(history.stdout)] == [1]
    pushes = [line for line in deployed.first.stdout.splitlines()
              if "push the cluster file" in line]
    assert len(pushes) == 1


def test_installed_unit_verifies_against_the_installed_venv(deployed: Deployed) -> None:
    """systemd-analyze verify needs the ExecStart binary: point it at the venv the role built
    under the prefix (the unit is otherwise the installed file, byte for byte)."""
    root = deployed.root("lb1")
    unit = (root / "etc/systemd/system/lvsctl-director.service").read_text()
    copy = deployed.tmp / "verify" / "lvsctl-director.service"
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(unit.replace("ExecStart=/opt/lvsctl/", f"ExecStart={root}/opt/lvsctl/"))
    assert copy.read_text() != unit
    result = subprocess.run([tool("systemd-analyze"), "verify", str(copy)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_host_that_is_not_a_director_is_refused(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    inv = inventory(tmp_path, {
        "lb1": {"lvsctl_root_prefix": str(prefix / "lb1")},
        "lb9": {"lvsctl_root_prefix": str(prefix / "lb9")},
    })
    result = playbook(tmp_path, inv, "site.yml")
    assert result.returncode != 0
    assert "lvsctl_director_name lb9 is not a director of cluster web" in result.stdout
    assert recap(result.stdout)["lb9"]["failed"] == 1
    assert not prefix.exists()  # the check comes before anything is laid out


def test_two_hosts_for_one_director_are_refused(tmp_path: Path) -> None:
    inv = inventory(tmp_path, {
        "lb1": {"lvsctl_root_prefix": str(tmp_path / "a")},
        "other": {"lvsctl_root_prefix": str(tmp_path / "b"), "lvsctl_director_name": "lb1"},
    })
    result = playbook(tmp_path, inv, "site.yml")
    assert result.returncode != 0
    assert "another host of this play is also director lb1" in result.stdout


@pytest.mark.parametrize("book", ["site.yml", "rolling.yml"])
def test_syntax_check(tmp_path: Path, book: str) -> None:
    result = playbook(tmp_path, ANSIBLE / "inventory.example.yml", book, "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"playbook: {ANSIBLE / book}" in result.stdout


def lint(tmp: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=folder, env=ansible_env(tmp), capture_output=True, text=True, timeout=300,
        check=False,
    )


def test_ansible_lint_clean(tmp_path: Path) -> None:
    result = lint(tmp_path, ANSIBLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_catches_a_bad_task(tmp_path: Path) -> None:
    """The check above can fail: a command without changed_when is reported."""
    copy = tmp_path / "ansible"
    shutil.copytree(ANSIBLE, copy, ignore=shutil.ignore_patterns("secrets"))
    tasks = copy / "roles/lvsctl/tasks/system.yml"
    tasks.write_text(tasks.read_text() + (
        "\n- name: System | something\n  ansible.builtin.command:\n    argv: [true]\n"))
    result = lint(tmp_path, copy)
    assert result.returncode != 0
    assert "no-changed-when" in result.stdout + result.stderr
