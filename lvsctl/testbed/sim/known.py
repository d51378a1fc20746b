"""Named schedules: each found a hole in the leadership rules (the invariant broke on the code
before its fix), one hole each, and must hold now. Replay one with
``python -m lvsctl.testbed.sim --known NAME``.

Faults name their director by role ("active", "standby") as it is when they strike: which
director wins the first election depends on the code's own timing.
"""

from __future__ import annotations

from lvsctl.testbed.sim import schedule as S

F = S.Fault

KNOWN: dict[str, tuple[str, S.Schedule]] = {
    "leader_znode_deleted": (
        "1. an operator deletes the leader's znode while the standby is restarting and the peer "
        "link is down: the leader keeps confirming through the election parent and holds on; "
        "the standby comes back, finds itself alone in the queue and takes the VIPs",
        S.Schedule(seed=1, duration=12.0,
                   faults=(F(3.0, S.RESTART, "standby", 2.0), F(4.0, S.DELETE_LEADER),
                           F(4.0, S.PEER_CUT, "", 3.0))),
    ),
    "isolated_follower_reads": (
        "2. the active's server is cut off from the ensemble (syncLimit x tick = 4 s) and the "
        "peer link is down: the server keeps answering the active's reads while the leader "
        "expires the active's session after 3 s and the standby takes over",
        S.Schedule(seed=1, duration=15.0, sync_limit=20, first_server=(1, 2),
                   faults=(F(3.0, S.ISOLATE, "active-server", 8.0),
                           F(3.0, S.PEER_CUT, "", 8.0))),
    ),
    "negotiated_timeout_ignored": (
        "3. the node asks for 5 s, the servers grant 3 s: the active, cut off from ZooKeeper and "
        "the peer link, renews as if its session lasted 5 s and dies right after a renewal at "
        "5.5 s; its session expired at 6 s and the other holds while the address lives on "
        "(no kernel lateness)",
        S.Schedule(seed=1, duration=15.0, session_timeout=5.0, max_session=3.0,
                   kernel_late=0.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 8.0), F(3.0, S.PEER_CUT, "", 8.0),
                           F(5.5, S.CRASH, "active", 5.0, "renew_after_send"))),
    ),
    "vouch_fresh_from_processing": (
        "4. the active, cut off from ZooKeeper and holding on the standby's vouch, freezes with "
        "a vouching beat in its socket; the link drops; on resuming it counts that old beat as "
        "fresh and re-adds the VIPs the other has taken meanwhile",
        S.Schedule(seed=1, duration=15.0, kernel_late=0.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 10.0), F(5.0, S.FREEZE, "active", 4.5),
                           F(5.02, S.PEER_CUT, "", 10.0))),
    ),
    "promise_lost_on_restart": (
        "5. the standby restarts while the active, cut off from ZooKeeper, holds on its vouch: "
        "it comes back without its promise, wins and holds at once",
        S.Schedule(seed=1, duration=15.0, kernel_late=0.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 10.0), F(5.5, S.RESTART, "standby", 0.1),
                           F(5.5, S.PEER_CUT, "", 3.0))),
    ),
    "kernel_removes_late": (
        "6. the active, cut off, renews near the edge of a lease counted with 0.35 s of kernel "
        "slack and dies right after; the kernel removes the address 1 s after its lifetime "
        "and the other has won by then",
        S.Schedule(seed=1, duration=15.0, kernel_late=1.0, late_bias=1.0,
                   faults=(F(3.0, S.ZK_CUT, "active", 8.0), F(3.0, S.PEER_CUT, "", 8.0),
                           F(4.3, S.CRASH, "active", 5.0, "renew_after_send"))),
    ),
}

