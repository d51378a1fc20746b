"""The namespace helper itself: two hosts on a bridge can talk, and cleanup removes them."""

from __future__ import annotations

from lvsctl.testbed.netns import Lab, run


def test_two_hosts_on_a_bridge_ping_and_are_removed() -> None:
    lab = Lab()
    try:
        hub = lab.netns("hub")
        a, b = lab.netns("a"), lab.netns("b")
        bridge = lab.bridge(hub)
        lab.attach(a, "10.200.0.1/24", hub, bridge, "eth0")
        lab.attach(b, "10.200.0.2/24", hub, bridge, "eth0")
        out = a.run(["ping", "-c", "1", "-W", "2", "10.200.0.2"], check=False)
        assert " 0% packet loss" in out
        names = [ns.name for ns in (hub, a, b)]
    finally:
        lab.close()
    listed = run(["ip", "netns", "list"])
    assert not any(name in listed for name in names)
