"""What the kernel VM promises the other kernel tests: IPVS, its schedulers, namespaces, ipip."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsctl.testbed.netns import Lab, run
from lvsctl.testbed.vm import kernel_has_ipvs

pytestmark = pytest.mark.kernel


def test_ipvs_is_loaded_and_ipvsadm_reads_the_table() -> None:
    assert Path("/proc/net/ip_vs").exists()
    out = run(["ipvsadm", "-Ln"])
    assert out.startswith("IP Virtual Server version")
    assert kernel_has_ipvs()


def test_every_scheduler_takes_a_service(lab: Lab) -> None:
    """Each scheduler the lab may ask for is loaded: a service with it appears in the table."""
    ns = lab.netns("sch")
    schedulers = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
                  "ovf", "mh"]
    for port, sched in enumerate(schedulers, start=8000):
        ns.run(["ipvsadm", "-A", "-t", f"192.0.2.1:{port}", "-s", sched])
    table = ns.run(["ipvsadm", "-Ln"])
    for port, sched in enumerate(schedulers, start=8000):
        assert f"TCP  192.0.2.1:{port} {sched}" in table


def test_namespaces_joined_by_veth_ping(lab: Lab) -> None:
    a, b = lab.netns("a"), lab.netns("b")
    lab.link(a, "198.51.100.1/24", b, "198.51.100.2/24")
    out = a.run(["ping", "-c", "1", "-W", "2", "198.51.100.2"], check=False)
    assert " 0% packet loss" in out


def test_ipip_tunl0_and_dummy_exist(lab: Lab) -> None:
    assert "tunl0" in run(["ip", "-o", "link", "show", "tunl0"])
    ns = lab.netns("dum")
    ns.ip("link", "add", "d0", "type", "dummy")
    assert "d0" in ns.ip("-o", "link", "show", "d0")


def test_other_modules_load_on_demand(lab: Lab) -> None:
    """Only the common modules are loaded at boot; the kernel autoloads the rest (vxlan here)
    and modprobe finds the guest kernel's module tree."""
    ns = lab.netns("vx")
    ns.ip("link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789")
    assert "vxlan id 42" in ns.ip("-d", "-o", "link", "show", "vx0")
    assert "vxlan " in Path("/proc/modules").read_text()
    run(["modprobe", "ip_vs_ftp"])
    assert "ip_vs_ftp " in Path("/proc/modules").read_text()
