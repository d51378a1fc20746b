"""keepalived is the oracle: for each keepalived.conf of the corpus, the IPVS table keepalived's
checker builds equals the one ``lvsctl ipvs apply`` builds from ``lvsctl config import``'s file,
and when a real server stops, keepalived and ``lvsctl check run --once`` both call it down.

Real servers are listeners in their own namespace; keepalived (checker only) and lvsctl each
program the director namespace's IPVS table in turn.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import load_cluster
from tests.conftest import ROOT
from tests.support.netns import Lab, Netns

pytestmark = pytest.mark.kernel

CORPUS = ROOT / "tests" / "golden" / "keepalived"
FILES = ["nat.conf", "dr.conf", "tun.conf", "ipv6.conf"]
IMPORT_OPTIONS = ["--zookeeper", "127.0.0.1:2181",
                  "--directors", "lb1=192.0.2.2/24@eth0", "--directors", "lb2=192.0.2.3/24@eth0"]

DIRECTOR_ADDRESSES = ["192.0.2.2/24", "10.0.1.254/24", "10.0.2.254/24", "2001:db8::2/64"]
REALSERVER_ADDRESSES = ["192.0.2.31/24", "192.0.2.32/24", "192.0.2.33/24", "10.0.1.11/24",
                        "10.0.1.12/24", "10.0.1.13/24", "10.0.1.99/24", "10.0.2.21/24",
                        "10.0.2.22/24", "2001:db8::31/64", "2001:db8::32/64"]
TCP_PORTS = [80, 443, 8080, 8081, 8443]
UDP_PORTS = [53]
STOPPED = ("192.0.2.33", 443)  # the real server the verdict test stops (dr.conf)

# One process serves every (address, port) it is given: TCP answers one HTTP 200 and closes,
# UDP echoes. It exits when its stdin closes, so it never outlives the test.
LISTENER = r"""
import asyncio, sys

async def http(reader, writer):
    try:
        await asyncio.wait_for(reader.read(4096), 2)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        await writer.drain()
    except Exception:
        pass
    writer.close()

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

async def main():
    loop = asyncio.get_running_loop()
    for spec in sys.argv[1:]:
        host, port, proto = spec.rsplit(":", 2)
        if proto == "tcp":
            await asyncio.start_server(http, host, int(port), reuse_address=True)
        else:
            await loop.create_datagram_endpoint(Echo, local_addr=(host, int(port)))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def _listener(lab: Lab, ns: Netns, specs: list[str]) -> subprocess.Popen[bytes]:
    proc = lab.start(ns, [sys.executable, "-c", LISTENER, *specs], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[Lab, Netns, Netns, dict[str, subprocess.Popen[bytes]]]]:
    lab = Lab()
    try:
        director, servers = lab.netns("kd"), lab.netns("kr")
        lab.link(director, None, servers, None)
        for ns, addresses in ((director, DIRECTOR_ADDRESSES), (servers, REALSERVER_ADDRESSES)):
            for address in addresses:
                nodad = ["nodad"] if ":" in address else []  # usable at once, no DAD wait
                ns.ip("addr", "add", address, "dev", "eth0", *nodad)
        # keepalived's lvs_sync_daemon (nat.conf) names eth1.
        director.ip("link", "add", "eth1", "type", "dummy")
        director.ip("link", "set", "eth1", "up")
        hosts = [a.split("/")[0] for a in REALSERVER_ADDRESSES]
        specs = [f"{h}:{p}:tcp" for h in hosts for p in TCP_PORTS if (h, p) != STOPPED]
        specs += [f"{h}:{p}:udp" for h in hosts for p in UDP_PORTS]
        listeners = {
            "all": _listener(lab, servers, specs),
            "stopped": _listener(lab, servers, [f"{STOPPED[0]}:{STOPPED[1]}:tcp"]),
        }
        yield lab, director, servers, listeners
    finally:
        lab.close()


def _table(ns: Netns) -> list[str]:
    return sorted(line for line in ns.run(["ipvsadm", "-S", "-n"]).splitlines() if line)


class Keepalived:
    """keepalived's checker, in the foreground in a namespace, its files in a temp folder."""

    def __init__(self, lab: Lab, ns: Netns, conf: Path, tmp: Path) -> None:
        self.log = (tmp / "keepalived.log").open("wb")
        self.proc = lab.start(ns, [
            "keepalived", "-C", "-n", "-l", "-D", "-G", "-f", str(conf),
            "-p", str(tmp / "keepalived.pid"), "-c", str(tmp / "checkers.pid"),
            "-r", str(tmp / "vrrp.pid"), "-b", str(tmp / "bfd.pid"),
        ], stdout=self.log, stderr=subprocess.STDOUT)
        self.path = tmp / "keepalived.log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def text(self) -> str:
        return self.path.read_text(errors="replace")


def _import(conf: Path, out: Path) -> Path:
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", str(conf), *IMPORT_OPTIONS,
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _counts(file: Path) -> tuple[int, int]:
    cluster = load_cluster(file).cluster
    return len(cluster.services), sum(len(s.realservers) for s in cluster.services)


def _rules(lines: list[str]) -> tuple[int, int]:
    return (sum(line.startswith("-A") for line in lines),
            sum(line.startswith("-a") for line in lines))


@dataclass
class Oracle:
    """What keepalived did with the whole corpus, in one run."""

    imported: dict[str, Path]  # corpus file -> the cluster file lvsctl imported from it
    table: list[str]  # keepalived's table, every real server up
    after_stop: list[str]  # keepalived's table once STOPPED's listener is gone


@pytest.fixture(scope="module")
def oracle(bed: tuple[Lab, Netns, Netns, dict[str, subprocess.Popen[bytes]]],
           tmp_path_factory: pytest.TempPathFactory) -> Oracle:
    lab, director, _, listeners = bed
    tmp = tmp_path_factory.mktemp("keepalived")
    imported = {name: _import(CORPUS / name, tmp / f"{name}.yaml") for name in FILES}
    counts = [_counts(file) for file in imported.values()]
    expected = (sum(c[0] for c in counts), sum(c[1] for c in counts))
    everything = tmp / "keepalived.conf"
    everything.write_text("".join(f"include {CORPUS / name}\n" for name in FILES))
    director.run(["ipvsadm", "-C"])
    keepalived = Keepalived(lab, director, everything, tmp)
    try:
        _wait_for(lambda: _rules(_table(director)) == expected or keepalived.proc.poll(),
                  90, f"keepalived's table ({expected[0]} services, {expected[1]} real servers)")
        assert keepalived.proc.poll() is None, keepalived.text()
        time.sleep(1)  # anything keepalived would still change shows up now
        table = _table(director)
        stopped = listeners["stopped"]
        assert stopped.stdin is not None
        stopped.stdin.close()
        stopped.wait(timeout=30)
        dest = f"-r {STOPPED[0]}:{STOPPED[1]}"
        # keepalived: connection refused, retry 2 -> the dest goes after three failed probes.
        _wait_for(lambda: not any(dest in line for line in _table(director)), 90,
                  f"keepalived to remove {STOPPED[0]}:{STOPPED[1]}")
        after_stop = _table(director)
        assert keepalived.proc.poll() is None, keepalived.text()
    finally:
        keepalived.stop()
    director.run(["ipvsadm", "-C"])
    print("keepalived's table:\n" + "\n".join(table))
    return Oracle(imported, table, after_stop)


def test_keepalived_and_lvsctl_build_the_same_table(
        bed: tuple[Lab, Netns, Netns, dict[str, subprocess.Popen[bytes]]],
        oracle: Oracle) -> None:
    _, director, _, _ = bed
    assert _table(director) == []
    for name, file in oracle.imported.items():
        result = CliRunner().invoke(cli, ["ipvs", "--netns", director.name, "apply", str(file)])
        assert result.exit_code == 0, (name, result.output)
    by_lvsctl = _table(director)
    director.run(["ipvsadm", "-C"])
    assert by_lvsctl == oracle.table
    # The unit tests replay this table on the fake IPVS: it must stay what keepalived builds.
    recorded = (CORPUS / "corpus.ipvsadm").read_text().splitlines()
    assert oracle.table == sorted(line for line in recorded if line and line[0] != "#")


def test_a_stopped_real_server_is_down_for_both(
        bed: tuple[Lab, Netns, Netns, dict[str, subprocess.Popen[bytes]]],
        oracle: Oracle) -> None:
    _, director, _, _ = bed
    address, port = STOPPED
    removed = sorted(set(oracle.table) - set(oracle.after_stop))
    assert [line.split(" -r ")[1].split()[0] for line in removed] == [f"{address}:{port}"]
    kept = [line for line in oracle.after_stop if line.startswith("-a")
            and line.split()[2] in ("192.0.2.20:443", "192.0.2.21:53")]  # dr.conf's services
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        director.argv([sys.executable, "-m", "lvsctl", "check", "run",
                       str(oracle.imported["dr.conf"]), "--once", "--json"]),
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    verdicts = {r["probe"]: r["healthy"] for r in json.loads(proc.stdout)}
    down_for_lvsctl = {probe for probe, healthy in verdicts.items() if not healthy}
    assert down_for_lvsctl == {f"{address}:{port}"}, proc.stdout
    # Every dest keepalived kept is healthy for lvsctl too.
    assert len(kept) == 4
    for line in kept:
        probe = line.split(" -r ")[1].split()[0]
        assert verdicts.get(probe) is True, (line, proc.stdout)
