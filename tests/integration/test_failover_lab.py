"""The drill's lab side in real namespaces: the kernel VIP watcher (including an address that
expires by itself and one added behind a director's back), nftables cuts, signals by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvsctl.failover.timeline import overlaps
from lvsctl.failover.vipwatch import holds_from_events, parse_addr_messages
from lvsctl.testbed.netns_lab import NetnsLab
from tests.support.netns import Lab

pytestmark = pytest.mark.netns
VIP = "192.0.2.10"
VIP6 = "2001:db8::10"


def test_holds_from_events() -> None:
    events = [{"wall": 1, "event": "add", "address": VIP}, {"wall": 2, "event": "add",
              "address": VIP}, {"wall": 3, "event": "del", "address": VIP},
              {"wall": 4, "event": "add", "address": VIP6}]
    got = holds_from_events("lb1", events)
    assert [(h.vip, h.start, h.end) for h in got] == [(VIP, 1, 3), (VIP6, 4, None)]


def test_parse_ignores_what_is_not_an_address_message() -> None:
    assert parse_addr_messages(b"") == []
    assert parse_addr_messages(b"\x10\x00\x00\x00\x03\x00" + b"\x00" * 10) == []  # NLMSG_DONE


def _pair(lab: Lab) -> tuple[NetnsLab, dict[str, str]]:
    a, b = lab.netns("da"), lab.netns("db")
    lab.link(a, "198.51.100.1/24", b, "198.51.100.2/24")
    for ns in (a, b):
        ns.run(["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"])
    names = {"lb1": a.name, "lb2": b.name}
    return NetnsLab(names, pid=lambda d: None, restarter=lambda d: None, zookeeper_port=2181,
                    peer_port=7946), names


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)


def test_kernel_watcher_sees_holds_expiry_and_an_overlap_behind_the_back(lab: Lab) -> None:
    netns_lab, ns = _pair(lab)
    _ip(ns["lb1"], "addr", "add", f"{VIP}/32", "dev", "eth0")  # present before watching
    observer = netns_lab.observer([VIP, VIP6])
    observer.start()
    try:
        started = time.time()
        time.sleep(0.2)
        _ip(ns["lb1"], "addr", "add", f"{VIP6}/128", "dev", "eth0")
        # Behind lb1's back: lb2 gets the VIP too, for a moment.
        behind = time.time()
        _ip(ns["lb2"], "addr", "add", f"{VIP}/32", "dev", "eth0")
        time.sleep(0.3)
        _ip(ns["lb2"], "addr", "del", f"{VIP}/32", "dev", "eth0")
        back = time.time()
        _ip(ns["lb1"], "addr", "del", f"{VIP}/32", "dev", "eth0")
        # A kernel lease: the address goes by itself when its lifetime ends.
        added = time.time()
        _ip(ns["lb2"], "addr", "add", f"{VIP}/32", "dev", "eth0", "valid_lft", "1",
            "preferred_lft", "1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len([h for h in observer.holds() if h.director == "lb2" and h.end]) == 2:
                break
            time.sleep(0.05)
    finally:
        holds = observer.stop()
    lb1 = [(h.vip, h.end is None) for h in holds if h.director == "lb1"]
    assert lb1 == [(VIP, False), (VIP6, True)]
    first = next(h for h in holds if h.director == "lb1" and h.vip == VIP)
    assert first.start <= started  # already there: reported at the watch's start
    lb2 = [h for h in holds if h.director == "lb2"]
    assert len(lb2) == 2 and all(h.end is not None for h in lb2)
    lapse = lb2[1].end - added  # type: ignore[operator]
    assert lapse >= 0.95  # the kernel removed it by itself, once its 1 s lifetime was over
    (found,) = overlaps(holds, time.time())
    assert found.vip == VIP and found.directors == ("lb1", "lb2")
    assert behind <= found.start < found.end <= back


def test_cut_and_heal_zookeeper_and_peer_traffic(lab: Lab) -> None:
    netns_lab, ns = _pair(lab)
    listener = lab.start(lab.namespaces[1], [sys.executable, "-c", (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('198.51.100.2', 2181)); s.listen(16); print('ready', flush=True)\n"
        "while True:\n    c, _ = s.accept(); c.close()\n")], stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"

    def connects() -> bool:
        code = ("import socket, sys\n"
                "try:\n    socket.create_connection(('198.51.100.2', 2181), timeout=0.5)\n"
                "except OSError:\n    sys.exit(1)\n")
        return subprocess.run(["ip", "netns", "exec", ns["lb1"], sys.executable, "-c", code],
                              timeout=20).returncode == 0

    assert connects()
    netns_lab.cut("lb1", "zookeeper")
    assert not connects()
    netns_lab.heal("lb1", "zookeeper")
    assert connects()

    netns_lab.cut("lb1", "peer")
    ruleset = subprocess.run(["ip", "netns", "exec", ns["lb1"], "nft", "list", "ruleset"],
                             capture_output=True, text=True, check=True).stdout
    assert "udp dport 7946 drop" in ruleset
    netns_lab.heal("lb1", "peer")
    ruleset = subprocess.run(["ip", "netns", "exec", ns["lb1"], "nft", "list", "ruleset"],
                             capture_output=True, text=True, check=True).stdout
    assert "lvsctl_drill" not in ruleset


def test_signal_by_pid(lab: Lab) -> None:
    proc = lab.start(lab.netns("sig"), ["sleep", "30"])
    netns_lab = NetnsLab({"lb1": "x"}, pid=lambda d: proc.pid, restarter=lambda d: None)

    def state() -> str:
        return Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0]

    # ``ip netns exec`` execs the command: the PID is sleep's own.
    netns_lab.signal("lb1", signal.SIGSTOP)
    time.sleep(0.1)
    assert state() == "T"
    netns_lab.signal("lb1", signal.SIGCONT)
    time.sleep(0.1)
    assert state() == "S"
    proc.kill()
    proc.wait()
    from lvsctl.failover.drill import DrillError
    with pytest.raises(DrillError, match=r"lb1 \(pid \d+\) is gone"):
        netns_lab.signal("lb1", signal.SIGTERM)
