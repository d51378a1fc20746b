"""The director pair end to end: real ZooKeeper, two ``lvsctl director run`` processes in two
namespaces on a bridge, VIP presence observed with netlink events in both namespaces.

Every scenario asserts who holds the VIP and that both never held it at the same instant.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time

import pytest

from lvsctl.testbed.director_pair import (
    PEER_PORT,
    PYTHON,
    VIP,
    VIP6,
    DirectorPair,
    cluster_yaml,
)
from lvsctl.testbed.fake_ipvs import FakeIpvs

pytestmark = [pytest.mark.netns, pytest.mark.zookeeper]

# The session timeout must exceed the VIP's 1 s lifetime + 1.1 s kernel lateness + margins
# and round trips (2.5 s, election.Timing.shortest_session); 3 s leaves room on a loaded machine.
SESSION = 3.0


@pytest.fixture
def pair(lab, tmp_path):  # type: ignore[no-untyped-def]
    made = DirectorPair(lab, session=SESSION)
    # lb1 runs as under systemd Type=notify: it must say READY=1 and, on stop, STOPPING=1.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.1)
    made.notify = notify  # type: ignore[attr-defined]
    try:
        made.setup()
        made.start("lb1", env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        made.wait_holder("lb1", 20)  # lb1 leads before lb2 even starts
        made.start("lb2")
        made.wait(lambda: (made.status("lb2") or {}).get("role") == "STANDBY", 20, "lb2 standby")
        yield made
    finally:
        made.close()
        notify.close()


def notifications(pair: DirectorPair) -> list[str]:
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(pair.notify.recv(256).decode())  # type: ignore[attr-defined]
    return got


def assert_never_both(pair: DirectorPair) -> None:
    for addr in (VIP, VIP6):
        assert pair.overlap(addr) == 0.0, f"both directors held {addr} at once"


def ipvs(pair: DirectorPair, name: str) -> FakeIpvs:
    return FakeIpvs(pair.ipvs_file(name))


def sync_states(pair: DirectorPair, name: str) -> set[str]:
    return {d.state.label for d in ipvs(pair, name).sync_daemons()}


def dests(pair: DirectorPair, name: str, port: int) -> set[str]:
    table = ipvs(pair, name).observe()
    service = next(s for k, s in table.items() if k.port == port)
    return {str(d) for d in service.dests}


def test_both_tables_kept_warm_and_sync_daemon_follows_the_lead(pair: DirectorPair) -> None:
    for name in ("lb1", "lb2"):  # the standby's table is programmed too (no flush, warm)
        pair.wait(lambda n=name: "192.0.2.100:2181" in dests(pair, n, 2181), 10,
                  f"{name}'s table to have zk1")
        # web1 fails its check: on_failure remove takes it out of the table.
        pair.wait(lambda n=name: "192.0.2.21:80" not in dests(pair, n, 80), 10,
                  f"{name} to drop web1")
    assert sync_states(pair, "lb1") == {"master"}
    assert sync_states(pair, "lb2") == {"backup"}
    pair.signal("lb1", signal.SIGTERM)
    pair.wait_holder("lb2", 5)
    pair.wait(lambda: sync_states(pair, "lb2") == {"master"}, 5, "lb2 sync master")
    assert sync_states(pair, "lb1") == {"backup"}  # handed over before it left
    st = pair.status("lb2")
    assert st is not None and st["last_reconcile"]["observed"] is True
    assert '"ipvs_op"' in pair.log("lb1") and '"epoch"' in pair.log("lb1")
    assert_never_both(pair)


def zk_log_from(pair: DirectorPair, offset: int) -> str:
    """What ZooKeeper logged since byte ``offset`` of its log (log4j flushes every line)."""
    assert pair.zk is not None
    with open(pair.zk.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def zk_log_size(pair: DirectorPair) -> int:
    assert pair.zk is not None
    return pair.zk.log_path.stat().st_size


def test_graceful_stop_hands_over_at_once(pair: DirectorPair) -> None:
    assert notifications(pair) == ["READY=1"]
    before = zk_log_size(pair)
    pair.signal("lb1", signal.SIGTERM)
    pair.wait_holder("lb2", 20)
    # No session had expired when lb2 took over (ZooKeeper logs an expiry before it removes
    # the session's znodes): lb1 deleted its znode, lb2 did not wait for a timeout.
    assert "Expiring session" not in zk_log_from(pair, before)
    assert pair.procs["lb1"].wait(timeout=10) == 0
    pair.wait_holder("lb2", 20, addr=VIP6)
    assert notifications(pair) == ["STOPPING=1"]
    st = pair.status("lb2")
    assert st is not None and st["role"] == "ACTIVE" and VIP in st["vips"]
    assert_never_both(pair)


def test_kill_9_of_the_active_the_standby_takes_over_after_the_lease(pair: DirectorPair) -> None:
    before = zk_log_size(pair)
    pair.signal("lb1", signal.SIGKILL)
    pair.wait_holder("lb2", 30)
    pair.wait_holder("lb2", 20, addr=VIP6)
    # lb2 waited for lb1's session to expire: it never guessed.
    assert "Expiring session" in zk_log_from(pair, before)
    # The dead director's VIP vanished by itself (kernel lease) before lb2 added it.
    now = time.monotonic()
    gone = pair.watches["lb1"].intervals(VIP, now)[-1][1]
    taken = pair.watches["lb2"].intervals(VIP, now)[-1][0]
    assert gone <= taken
    assert_never_both(pair)


def test_frozen_active_loses_the_lead_and_comes_back_standby(pair: DirectorPair) -> None:
    start = time.monotonic()
    pair.signal("lb1", signal.SIGSTOP)
    pair.wait_holder("lb2", 10)
    time.sleep(1.0)  # frozen well past the session timeout
    pair.signal("lb1", signal.SIGCONT)
    pair.wait(lambda: (pair.status("lb1") or {}).get("role") == "STANDBY", 15, "lb1 standby")
    time.sleep(1.0)  # a resumed director must not re-add the VIP on its stale belief
    assert pair.holder() == "lb2"
    assert len(pair.intervals_since("lb1", start)) == 1  # the one it held when frozen
    assert_never_both(pair)


def test_zookeeper_unreachable_from_the_active_only(pair: DirectorPair) -> None:
    pair.nft_drop("lb1", ["tcp", "dport", "2181"])
    pair.wait_holder("lb2", 15)
    st = pair.status("lb1")
    assert st is not None and st["role"] in ("FENCED", "CANDIDATE") and st["vips"] == []
    pair.nft_clear("lb1")
    pair.wait(lambda: (pair.status("lb1") or {}).get("role") == "STANDBY", 15, "lb1 standby")
    assert pair.holder() == "lb2"
    assert_never_both(pair)


def test_whole_ensemble_down_the_active_keeps_serving_then_back(pair: DirectorPair) -> None:
    assert pair.zk is not None
    start = time.monotonic()
    pair.zk.kill()
    time.sleep(3 * SESSION)  # far past the session timeout and any lease
    assert pair.holder() == "lb1"  # fail-static: the peer link vouches, nobody else can win
    assert len(pair.intervals_since("lb1", start)) == 1  # never dropped
    st = pair.status("lb1")
    assert st is not None and st["zookeeper"] == "disconnected" and st["role"] == "ACTIVE"
    pair.zk.start()
    pair.wait(lambda: (pair.status("lb1") or {}).get("zookeeper") == "connected", 15,
              "lb1 reconnected")
    pair.wait(lambda: (pair.status("lb2") or {}).get("zookeeper") == "connected", 15,
              "lb2 reconnected")
    time.sleep(2 * SESSION)
    assert pair.holder() == "lb1"
    assert (pair.status("lb2") or {}).get("role") == "STANDBY"
    assert_never_both(pair)


def test_ensemble_down_and_peer_link_cut_the_active_lets_go(pair: DirectorPair) -> None:
    assert pair.zk is not None
    pair.zk.kill()
    time.sleep(1.0)
    assert pair.holder() == "lb1"
    pair.nft_drop("lb1", ["udp", "dport", str(PEER_PORT)])
    # Nobody can vouch any more: the lease runs out and the VIP is released.
    pair.wait_holder(None, 5)
    assert_never_both(pair)


def test_peer_link_cut_while_zookeeper_is_fine_changes_nothing(pair: DirectorPair) -> None:
    start = time.monotonic()
    pair.nft_drop("lb1", ["udp", "dport", str(PEER_PORT)])
    time.sleep(2 * SESSION)
    assert pair.holder() == "lb1"
    assert len(pair.intervals_since("lb1", start)) == 1
    assert (pair.status("lb2") or {}).get("role") == "STANDBY"
    pair.nft_clear("lb1")
    assert_never_both(pair)


def test_a_bad_config_push_is_rejected_and_the_running_one_kept(pair: DirectorPair) -> None:
    before = pair.status("lb1")
    assert before is not None
    bad = cluster_yaml(auth=str(pair.workdir / "zk.secret")).replace("port: 80", "port: 99999")
    proc = pair.push(bad, check=False)
    assert proc.returncode != 0 and "port" in proc.stderr  # push validates first
    # A config that reaches ZooKeeper unvalidated (another writer) is refused by the directors.
    pair.raw_push(cluster_yaml().replace("port: 80", "port: 99999"))
    pair.wait(lambda: "port" in (pair.status("lb1") or {}).get("config", {}).get("error", ""),
              10, "lb1 to report the rejected config")
    st = pair.status("lb1")
    assert st is not None
    assert st["config"]["version"] == before["config"]["version"]
    assert st["role"] == "ACTIVE" and VIP in st["vips"]
    assert "port" in (pair.status("lb2") or {}).get("config", {}).get("error", "")
    # A good push afterwards is applied and clears the error.
    pair.push()
    pair.wait(lambda: (pair.status("lb1") or {}).get("config", {}).get("error") == "", 10,
              "lb1 to apply the next good config")
    assert pair.holder() == "lb1"
    assert_never_both(pair)


def test_stepdown_action_needs_the_token_and_moves_the_lead(pair: DirectorPair) -> None:
    code, _ = pair.post("lb1", "stepdown", token="wrong")
    assert code == 401
    assert pair.holder() == "lb1"
    code, body = pair.post("lb1", "stepdown")
    assert code == 200 and '"stepped_down": true' in body
    pair.wait_holder("lb2", 5)
    pair.wait(lambda: (pair.status("lb1") or {}).get("role") == "STANDBY", 10, "lb1 standby")
    epochs = [pair.status(n)["epoch"] for n in ("lb1", "lb2")]  # type: ignore[index]
    assert epochs[0] > epochs[1]  # lb1 re-queued behind lb2 with a later sequence number
    assert_never_both(pair)


def test_lvsctl_status_shows_the_leader_epoch_and_transitions(pair: DirectorPair) -> None:
    pair.signal("lb1", signal.SIGTERM)
    pair.wait_holder("lb2", 5)
    assert pair.procs["lb1"].wait(timeout=10) == 0

    def status() -> dict:  # type: ignore[type-arg]
        out = pair.ns["lb2"].run([PYTHON, "-m", "lvsctl", "status", "--json", "--node",
                                  str(pair.node_file("lb2"))], timeout=60)
        return json.loads(out)  # type: ignore[no-any-return]

    pair.wait(lambda: status()["leader"]["director"] == "lb2", 10, "status to show lb2 leading")
    data = status()
    assert data["directors"]["lb2"]["role"] == "ACTIVE"
    assert "lb1" not in data["directors"]  # its ephemeral status left with its session
    assert data["leader"]["epoch"] == data["directors"]["lb2"]["epoch"] == 1
    events = [(t["director"], t["event"]) for t in data["transitions"]]
    assert ("lb1", "vip_released") in events and ("lb2", "vip_acquired") in events
    services = {s["name"]: s for s in data["directors"]["lb2"]["services"]}
    web1 = services["www"]["realservers"][0]
    zk1 = services["zk"]["realservers"][0]
    assert web1["name"] == "web1" and web1["health"]["healthy"] is False
    assert zk1["name"] == "zk1" and zk1["health"]["healthy"] is True
    table = pair.ns["lb2"].run([PYTHON, "-m", "lvsctl", "status", "--node",
                                str(pair.node_file("lb2"))], timeout=60)
    assert "lb2 leads (epoch 1)" in table and "web1" in table


def test_crash_drill_and_node_file_reload(pair: DirectorPair) -> None:
    pair.signal("lb2", signal.SIGHUP)
    pair.wait(lambda: '"node_reloaded"' in pair.log("lb2"), 10, "lb2 to re-read its node file")
    assert pair.procs["lb2"].poll() is None
    code, _ = pair.post("lb1", "crash", token="nope")
    assert code == 401 and pair.procs["lb1"].poll() is None
    code, _ = pair.post("lb1", "crash")
    assert code == 200
    assert pair.procs["lb1"].wait(timeout=10) == -signal.SIGKILL
    pair.wait_holder("lb2", 10)
    assert_never_both(pair)


def test_freeze_drill_resumes_by_itself_and_comes_back_standby(pair: DirectorPair) -> None:
    code, body = pair.post("lb1", "freeze?seconds=abc")
    assert code == 400 and "seconds: expected a number" in body
    code, body = pair.post("lb1", "freeze?seconds=4")
    assert code == 200 and json.loads(body) == {"freezing": True, "seconds": 4.0}
    pair.wait_holder("lb2", 10)
    # nothing from outside sends SIGCONT: the director's own resumer must
    pair.wait(lambda: (pair.status("lb1") or {}).get("role") == "STANDBY", 30, "lb1 to resume")
    assert pair.procs["lb1"].poll() is None
    assert pair.holder() == "lb2"
    assert_never_both(pair)
