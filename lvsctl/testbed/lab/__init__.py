"""The lab: a whole lvsctl cluster on one machine, in network namespaces.

``lvsctl lab up`` builds it, ``lab demo`` builds it, drives traffic and drills through it and
tears it down, ``lab down`` removes it (also after a crash), ``lab status`` shows it.

Topology (every address is private and lives only inside the lab's own namespaces)::

    client 10.77.0.50 ─┐                               ┌─ nat1 10.77.1.21 ┐ default route via
    zk     10.77.0.100 ├─ bridge "front" (ns sw) ──┬───┤                  │ the inside VIP
    dr1/dr2 .21/.22    │   10.77.0.0/24            │   └─ nat2 10.77.1.22 ┘ 10.77.1.1
    tun1/tun2 .31/.32 ─┘                           │      bridge "inside" 10.77.1.0/24 (ns sw)
                          lb1 10.77.0.2 / 10.77.1.2, lb2 10.77.0.3 / 10.77.1.3

Services: NAT 10.77.0.10:80 (rr), DR 10.77.0.11:80 (rr), TUN 10.77.0.12:80 (rr), each with two
real servers running ``busybox httpd`` that answers its own name. The real servers are set up
only with the scripts ``lvsctl realserver render --all`` writes (``setup.sh up`` in each
namespace). Both directors run ``lvsctl director run`` with the kernel's IPVS; a Prometheus
(Debian's) in the client's namespace scrapes both directors' /metrics (job ``lvsctl-lab``).

Everything created is recorded in a state file *before* it is created (namespace names; PIDs
with their start time once started), so ``down`` finds and removes it after any crash and
never signals a PID that was reused by someone else.

The package: ``plan`` (addresses, hosts, the generated files: pure data), ``build`` (the state
file, and the namespaces and processes it records), ``steps`` (what the demo drives and
checks: tables, traffic, health cycles, drills) and ``results`` (how it reports them).
"""
