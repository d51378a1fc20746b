"""Named schedules: each breaks the invariant on the code before the safety fixes (issue 14),
one hole each, and must hold on the fixed code. Replay one with
``python -m lvsctl.testbed.sim --known NAME``.

lb1 wins the first election in each (both start at once; lb1's client connects first), so
"active" is lb1 until a fault moves the lead.
"""

from __future__ import annotations

from lvsctl.testbed.sim import schedule as S

F = S.Fault

KNOWN: dict[str, tuple[str, S.Schedule]] = {
    "leader_znode_deleted": (
        "1. an operator deletes the leader's znode: the standby wins at once while the old "
        "leader keeps confirming through the election parent and holds on",
        S.Schedule(seed=1, duration=12.0, faults=(F(3.0, S.DELETE_LEADER),)),
    ),
    "isolated_follower_reads": (
        "2. the active's server is cut off from the ensemble (syncLimit x tick = 4 s): it keeps "
        "answering the active's reads while the leader expires the active's session after 3 s",
        S.Schedule(seed=1, duration=15.0, sync_limit=20, first_server=(1, 2),
                   faults=(F(3.0, S.ISOLATE, "active-server", 8.0),)),
    ),
    "negotiated_timeout_ignored": (
        "3. the node asks for 5 s, the servers grant 3 s: the active, cut off from ZooKeeper and "
        "the peer link, renews on a 5 s lease after its session expired (no kernel lateness)",
        S.Schedule(seed=1, duration=15.0, session_timeout=5.0, max_session=3.0,
                   kernel_late=0.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 8.0), F(3.0, S.PEER_CUT, "", 8.0))),
    ),
    "vouch_fresh_from_processing": (
        "4. the active, cut off from ZooKeeper and holding on the standby's vouch, freezes with "
        "a vouching beat in its socket; the link drops; on resuming it counts that old beat as "
        "fresh and re-adds the VIPs the other has taken meanwhile",
        S.Schedule(seed=1, duration=15.0, kernel_late=0.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 10.0), F(5.0, S.FREEZE, "active", 3.0),
                           F(5.02, S.PEER_CUT, "", 10.0))),
    ),
    "promise_lost_on_restart": (
        "5. the standby restarts while the active, cut off from ZooKeeper, holds on its vouch: "
        "it comes back without its promise, wins and holds at once",
        S.Schedule(seed=1, duration=15.0, kernel_late=0.0,
                   faults=(F(3.0, S.ZK_CUT, "lb1", 10.0), F(5.5, S.RESTART, "lb2", 0.1),
                           F(5.5, S.PEER_CUT, "", 3.0))),
    ),
    "kernel_removes_late": (
        "6. the active renews at the edge of its lease and dies; the kernel removes the address "
        "1 s after its lifetime (the rule allowed 0.35 s) and the other has won by then",
        S.Schedule(seed=1, duration=15.0, kernel_late=1.0, late_bias=1.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 8.0), F(3.0, S.PEER_CUT, "", 8.0),
                           F(4.46, S.CRASH, "lb1", 5.0))),
    ),
}
