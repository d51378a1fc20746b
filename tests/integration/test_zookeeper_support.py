"""The ZooKeeper test server itself: it starts, serves kazoo, pauses, restarts, and stops."""

from __future__ import annotations

from pathlib import Path

import pytest
from kazoo.client import KazooClient

from lvsctl.testbed.netns import Lab, run
from lvsctl.testbed.zookeeper import ZooKeeperServer, connect

pytestmark = pytest.mark.zookeeper


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_serves_kazoo_with_a_short_session_and_stops(zookeeper: ZooKeeperServer) -> None:
    assert "Mode: standalone" in zookeeper.four_letter("srvr")
    client = KazooClient(hosts=zookeeper.hosts, timeout=0.4)
    client.start(timeout=10)
    try:
        client.create("/probe", b"hello")
        assert client.get("/probe")[0] == b"hello"
        # tickTime 100 ms allows a 400 ms session: the director tests rely on it.
        assert client._session_timeout == 400  # the timeout the server granted
    finally:
        client.stop()
        client.close()
    pid = zookeeper.pid
    assert pid is not None and _pid_alive(pid)
    zookeeper.stop()
    assert not _pid_alive(pid)
    assert zookeeper.proc is not None and zookeeper.proc.returncode is not None


def test_pause_freezes_and_restart_keeps_data_address_and_port(
        zookeeper: ZooKeeperServer) -> None:
    client = KazooClient(hosts=zookeeper.hosts, timeout=2.0)
    client.start(timeout=10)
    client.create("/kept", b"1")
    zookeeper.pause()
    try:
        with pytest.raises(OSError):
            zookeeper.four_letter("srvr", timeout=0.5)
    finally:
        zookeeper.resume()
    assert "Mode:" in zookeeper.four_letter("srvr")
    client.stop()
    client.close()
    hosts = zookeeper.hosts
    zookeeper.kill()
    with pytest.raises(OSError):  # nothing listens there while it is down
        connect(zookeeper.host, zookeeper.port, timeout=5).close()
    zookeeper.start()
    assert zookeeper.hosts == hosts
    # Connected by the address recorded before the restart: the server really is back there.
    again = KazooClient(hosts=hosts)
    again.start(timeout=10)
    try:
        assert again.get("/kept")[0] == b"1"
    finally:
        again.stop()
        again.close()


def test_servers_listen_where_no_other_process_is_given_an_address() -> None:
    first, second = ZooKeeperServer(), ZooKeeperServer()
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        for server in (first, second):
            # Below the ephemeral range: bind(0) and connect() never pick the port.
            assert server.port < low
            assert server.host.startswith("127.") and server.host != "127.0.0.1"
        assert first.hosts != second.hosts
    finally:
        first.close()
        second.close()


@pytest.mark.netns
def test_runs_inside_a_network_namespace(lab: Lab) -> None:
    ns = lab.netns("zk")
    ns.ip("addr", "add", "10.201.0.1/24", "dev", "lo")
    server = ZooKeeperServer(netns=ns, host="10.201.0.1")
    try:
        server.start()
        assert server.hosts == "10.201.0.1:2181"
        with open(f"/proc/{server.pid}/comm", encoding="ascii") as comm:
            assert comm.read().strip() == "java"  # the PID we signal is the server's own
        assert "Mode: standalone" in server.four_letter("srvr")
        # It listens in the namespace, not on the host.
        # (Java lists an IPv4 listener as [::ffff:10.201.0.1]:2181.)
        assert "10.201.0.1]:2181" in ns.run(["ss", "-Hltn"])
        assert "10.201.0.1]:2181" not in run(["ss", "-Hltn"])
    finally:
        server.close()
    assert server.proc is not None and server.proc.returncode is not None
