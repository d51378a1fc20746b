"""The connection-sync daemon on the real kernel: master on the director carrying a connection,
backup in another namespace, and the connection's entry appears on the backup."""

from __future__ import annotations

import time

import pytest

from lvsctl.core.config import parse_cluster
from lvsctl.director.dataplane import apply_ops
from lvsctl.director.ipvs import KernelIpvs, SyncState
from lvsctl.director.reconcile import desired_table, plan
from tests.kernel.test_reconcile_kernel import NAT_CLUSTER
from tests.support.ipvs_lab import VIP, Client, nat_lab
from tests.support.netns import Lab

pytestmark = pytest.mark.kernel

SYNC_ID = 42


def test_sync_daemon_master_to_backup(lab: Lab) -> None:
    nat = nat_lab(lab)
    backup_ns = lab.netns("bk")
    lab.link(nat.director, "10.9.0.1/24", backup_ns, "10.9.0.2/24", a_if="sync0", b_if="sync0")
    desired = desired_table(parse_cluster(NAT_CLUSTER, "nat.yaml").cluster, {})
    with KernelIpvs(netns=nat.director.name) as master, \
            KernelIpvs(netns=backup_ns.name) as backup:
        for ipvs in (master, backup):  # the standby keeps the same table warm
            apply_ops(ipvs, plan(desired, ipvs.observe(), {}, 0.0))
        backup.start_sync_daemon(SyncState.BACKUP, "sync0", SYNC_ID)
        master.start_sync_daemon(SyncState.MASTER, "sync0", SYNC_ID)
        assert [(d.state, d.interface, d.sync_id) for d in master.sync_daemons()] == [
            (SyncState.MASTER, "sync0", SYNC_ID)]
        listed = backup_ns.run(["ipvsadm", "-L", "--daemon"])
        assert f"backup sync daemon (mcast=sync0, syncid={SYNC_ID}" in listed

        client = Client(nat)
        serving = client.send()
        assert serving in ("r1", "r2")

        deadline = time.monotonic() + 30
        entries: list[str] = []
        while time.monotonic() < deadline:
            entries = [line for line in backup_ns.run(["ipvsadm", "-Lnc"]).splitlines()
                       if f"{VIP}:80" in line]
            if entries:
                break
            time.sleep(0.5)
        assert entries, "no connection entry reached the backup within 30 s"
        assert "192.0.2.100:" in entries[0]  # the client's connection, synced
        client.reset()
        assert master.stop_sync_daemon(SyncState.MASTER) is True
        assert backup.stop_sync_daemon(SyncState.BACKUP) is True
        assert master.sync_daemons() == []
