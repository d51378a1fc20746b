"""Safety drills: the director pair on a three-server ZooKeeper ensemble, driven into the
situations the leadership rules must survive, with "never a VIP on both directors" checked
from the kernel's own address events and a client probing the VIP throughout.

The bed (``SafetyBed``) is built once and reused by every drill: three ZooKeeper servers, two
directors (keeper and worker processes on the file-backed fake IPVS: the drills are about the
VIPs, kernel address leases, which are real in any namespace) and a client, each in a network
namespace on one bridge. A small TCP service on each director answers on whatever VIP it holds,
so the client's probe sees who serves. Each drill starts from a settled pair (lb1 ACTIVE and
holding, lb2 STANDBY; lb2 ACTIVE for the session drill), does its damage, heals it and waits
for the pair to settle again; its result is the overlap (seconds both held a VIP), the
client's longest outage and whether the pair came back whole.

Used by tests/kernel/test_safety_drills.py and bench/safety.py. Timings are chosen for the
emulated kernel VM (a 6 s session; the servers' tick 200 ms).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lvsctl.core.errors import LvsctlError
from lvsctl.core.model import ZooKeeperSettings
from lvsctl.core.zk import ClusterConnection, ClusterStore, Target, open_cluster
from lvsctl.failover.probe import ProbeLoop
from lvsctl.failover.probe import Target as ProbeTarget
from lvsctl.failover.timeline import Sample
from lvsctl.testbed.director_pair import (
    ADDRS,
    PEER_PORT,
    VIP,
    VIP6,
    DirectorPair,
    cluster_yaml,
)
from lvsctl.testbed.netns import CommandError, Lab, Netns, entered, in_netns, run, unique
from lvsctl.testbed.overlap import overlap
from lvsctl.testbed.zookeeper import ZooKeeperEnsemble, on_bridge

ZK_ADDRS = ("192.0.2.100", "192.0.2.101", "192.0.2.102")
CLIENT_ADDR = "192.0.2.50"
SERVICE_PORT = 80
DIRECTORS = ("lb1", "lb2")
NFT_TABLE = "lvssafety"  # the drills' own rules in a director's namespace
SERVED_AT_END = 5  # this many last probes answered: the client is served again
PREMISE_ATTEMPTS = 3  # tries at a drill's starting situation before it counts as failed


@dataclass(frozen=True)
class Timings:
    """The bed's numbers; seconds unless named otherwise.

    ``session`` is what both node files ask and the servers allow (``max_session_ms``);
    lb2's node file asks ``high_session``, above it, so the session drill finds a director
    whose file and server disagree. A follower cut off from the leader serves
    ``sync_limit * tick_ms`` before it gives up: well past a session, so the isolated
    follower's stale answers outlive the active's session. ``patience`` bounds every wait
    for something that must happen (a takeover, a restart): generous, the VM is slow.
    """

    session: float = 6.0
    high_session: float = 12.0
    tick_ms: int = 200
    sync_limit: int = 60
    init_limit: int = 100
    patience: float = 240.0
    # Three JVMs starting at once in the emulated VM, on a loaded host, took over 240 s.
    start_patience: float = 900.0
    # netem on lb2's beats to lb1: about the standby's promise (peer_dead_after 1 s + the
    # hold span 1.45 s = 2.45 s after its last vouch), so the last vouches arrive around the
    # moment the standby may take over.
    netem_delay: float = 3.0
    netem_loss: float = 10.0  # percent

    @property
    def max_session_ms(self) -> int:
        return int(self.session * 1000)

    @property
    def release_within(self) -> float:
        """How long a director that lost the lead may take to let its VIPs go: a few
        sessions (its lease runs out within one); past it the drill stops waiting."""
        return 5 * self.session


class DrillError(LvsctlError):
    """A drill could not set up its situation (its premise failed) or the pair did not come
    back; the message says which."""


@dataclass(frozen=True)
class DrillResult:
    """One drill's outcome. ``overlap`` is the longest total time (s) both directors held one
    VIP during the drill, from kernel address events; ``outage`` the client's longest run of
    unanswered probes (s); ``error`` a liveness or premise failure."""

    drill: str
    overlap: float
    outage: float
    probes: int
    answered: int
    holder: str | None
    seconds: float
    served_at_end: bool  # the client's last probes were answered
    error: str = ""
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.overlap == 0.0 and not self.error and self.served_at_end

    def summary(self) -> str:
        lines = [f"{self.drill}: overlap {self.overlap * 1000:.0f} ms, outage "
                 f"{self.outage * 1000:.0f} ms, {self.answered}/{self.probes} probes answered"
                 f"{'' if self.served_at_end else ' (not at the end)'}, holder {self.holder}, "
                 f"{self.seconds:.1f} s", *self.notes]
        if self.error:
            lines.append(f"error: {self.error.splitlines()[0]}")
        return "\n".join(lines)


# -- the client's view ---------------------------------------------------------------------------


class ClientProbe:
    """TCP connects to the VIP from the client's namespace, in a thread of this process (a
    process start costs seconds in the VM)."""

    def __init__(self, ns: Netns, interval: float = 0.05, timeout: float = 0.5,
                 duration: float = 1800.0) -> None:
        self.ns = ns
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self.loop = ProbeLoop(ProbeTarget.parse(f"tcp://{VIP}:{SERVICE_PORT}"), interval,
                              timeout, duration=duration, emit=self._add)
        self._thread = threading.Thread(target=self._run, name="safety-probe", daemon=True)

    def _add(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def _run(self) -> None:
        # The loop's worker threads are started from this one: they share its namespace.
        with entered(self.ns.name):
            self.loop.run()

    def start(self) -> ClientProbe:
        self._thread.start()
        return self

    def samples(self) -> list[Sample]:
        with self._lock:
            return sorted(self._samples, key=lambda s: s.wall)

    def stop(self) -> list[Sample]:
        self.loop.stop()
        self._thread.join(timeout=30)
        return self.samples()


def _served(samples: Sequence[Sample], since: float) -> bool:
    """The last SERVED_AT_END probes started after ``since`` (wall clock) were answered."""
    later = [s for s in samples if s.wall > since]
    return len(later) >= SERVED_AT_END and all(s.ok for s in later[-SERVED_AT_END:])


def longest_outage(samples: Sequence[Sample]) -> float:
    """The longest stretch from an unanswered probe to the next answered one (or the last)."""
    worst, since = 0.0, None
    for sample in samples:
        if not sample.ok and since is None:
            since = sample.wall
        elif sample.ok and since is not None:
            worst, since = max(worst, sample.wall - since), None
    if since is not None and samples:
        worst = max(worst, samples[-1].wall - since)
    return worst


def serve(ns: Netns, stop: threading.Event) -> threading.Thread:
    """A stand-in service answering every TCP connection on port 80 of any address ``ns``
    holds (the VIP comes and goes), in a thread of this process."""
    def listen() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", SERVICE_PORT))
        sock.listen(256)
        sock.settimeout(0.2)
        return sock

    sock = in_netns(ns.name, listen)

    def accept() -> None:
        with sock:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except (TimeoutError, OSError):
                    continue
                conn.close()

    thread = threading.Thread(target=accept, name=f"service-{ns.name}", daemon=True)
    thread.start()
    return thread


# -- the bed -------------------------------------------------------------------------------------


@dataclass
class EnsemblePair(DirectorPair):
    """The test bed's director pair, its ZooKeeper a three-server ensemble on the bridge."""

    timings: Timings = field(default_factory=Timings)
    ensemble: ZooKeeperEnsemble | None = None

    def start_zookeeper(self) -> None:
        self.ensemble = on_bridge(
            self.lab, self.hub, self.bridge, [f"{a}/24" for a in ZK_ADDRS],
            tick_ms=self.timings.tick_ms, sync_limit=self.timings.sync_limit,
            init_limit=self.timings.init_limit, max_session_ms=self.timings.max_session_ms,
            heap="64m", workdir=self.workdir / "zk")
        self.ensemble.start(timeout=self.timings.start_patience)

    def push(self, text: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """The cluster file pushed (validated, compare-and-set) in-process from lb1's
        namespace: a Python process started in a loaded VM takes over a minute.
        Raises ConfigError or ZooKeeperError (``check`` is always on)."""
        path = self.workdir / "cluster.yaml"
        path.write_text(text or cluster_yaml(extra_vip6=self.vip6,
                                             auth=str(self.workdir / "zk.secret"),
                                             zk_hosts=self.zk_hosts))
        with operator_store(self, self.ns["lb1"]) as store:
            result = store.config.push(path.read_text(), source=path.name)
        return subprocess.CompletedProcess(["config", "push", str(path)], 0,
                                           f"version {result.version}\n", "")

    def close(self) -> None:
        super().close()
        if self.ensemble is not None:
            self.ensemble.close()


@contextlib.contextmanager
def operator_store(pair: DirectorPair, ns: Netns) -> Iterator[ClusterStore]:
    """The cluster's store as an operator with the cluster's credentials reaches it from
    namespace ``ns`` (kazoo's thread stays there)."""
    settings = ZooKeeperSettings(pair.zk_hosts, "/lvsctl", pair.session,
                                 str(pair.workdir / "zk.secret"))
    conn: ClusterConnection = in_netns(
        ns.name, lambda: open_cluster(Target(settings, "t"), connect_timeout=60))
    try:
        yield ClusterStore(conn)
    finally:
        conn.close()


class SafetyBed:
    """The ensemble, the pair, the client and the services; ``close()`` removes them all."""

    def __init__(self, lab: Lab, timings: Timings = Timings(),
                 progress: Callable[[str], None] = lambda line: None) -> None:
        self.lab = lab
        self.timings = timings
        self.progress = progress
        self.pair = EnsemblePair(
            lab, session=timings.session, sessions={"lb2": timings.high_session},
            zk_hosts=tuple(f"{a}:2181" for a in ZK_ADDRS), timings=timings)
        self._stop_services = threading.Event()
        self.client: Netns | None = None
        self._netem: set[str] = set()

    @property
    def ensemble(self) -> ZooKeeperEnsemble:
        assert self.pair.ensemble is not None
        return self.pair.ensemble

    def build(self) -> SafetyBed:
        """Start everything and wait until lb1 holds the VIP and lb2 stands by."""
        t0 = time.monotonic()
        self.progress("starting a three-server ZooKeeper ensemble and the pair's namespaces")
        self.pair.setup()
        self.client = self.lab.netns("c")
        self.lab.attach(self.client, f"{CLIENT_ADDR}/24", self.pair.hub, self.pair.bridge,
                        "eth0")
        for name in DIRECTORS:
            serve(self.pair.ns[name], self._stop_services)
        self.progress("starting lb1, then lb2")
        self.pair.start("lb1")
        self.pair.wait_holder("lb1", self.timings.start_patience)
        self.pair.start("lb2")
        self.settle("lb1", self.timings.start_patience)
        self.progress(f"bed ready in {time.monotonic() - t0:.0f} s")
        return self

    def close(self) -> None:
        self._stop_services.set()
        self.pair.close()

    # -- what the directors say and hold -----------------------------------------------------

    def roles(self) -> dict[str, str | None]:
        return {name: (self.pair.status(name) or {}).get("role") for name in DIRECTORS}

    def holders(self, addr: str = VIP) -> list[str]:
        return [name for name in DIRECTORS if self.pair.watches[name].holds(addr)]

    def holder(self) -> str | None:
        held = self.holders()
        return held[0] if len(held) == 1 else None

    def wait(self, predicate: Callable[[], bool], what: str,
             timeout: float | None = None) -> float:
        """Poll ``predicate``; returns the seconds it took. DrillError after ``timeout``
        (default: patience), with each director's last log lines."""
        limit = self.timings.patience if timeout is None else timeout
        start = time.monotonic()
        while time.monotonic() - start < limit:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.05)
        tails = "\n".join(f"--- {n}\n{self.pair.log(n)[-1500:]}" for n in DIRECTORS)
        raise DrillError(f"timed out after {limit:.0f} s waiting for {what}\n{tails}")

    def overlap_since(self, since: float) -> float:
        """The longest time both directors held one VIP at once since ``since``."""
        now = time.monotonic()
        worst = 0.0
        for addr in (VIP, VIP6):
            clipped = [[(max(a, since), b) for a, b in self.pair.watches[n].intervals(addr, now)
                        if b > since] for n in DIRECTORS]
            worst = max(worst, overlap(clipped[0], clipped[1]))
        return worst

    def address(self, name: str) -> str:
        return ADDRS[name]

    # -- settling ------------------------------------------------------------------------------

    def settle(self, active: str = "lb1", timeout: float | None = None) -> None:
        """Wait until ``active`` is ACTIVE and alone holds the VIP, the other is STANDBY, both
        reach ZooKeeper. Steps a director down when both claim ACTIVE (the lower epoch) or
        when the other one leads; starts a director whose process is gone.
        Raises DrillError after ``timeout`` (default: patience)."""
        other = next(n for n in DIRECTORS if n != active)
        asked_at = -1e9

        def settled() -> bool:
            nonlocal asked_at
            for name in DIRECTORS:
                proc = self.pair.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    self.progress(f"{name} had exited ({proc.returncode}): starting it")
                    self.pair.start(name)
            status = {n: self.pair.status(n) or {} for n in DIRECTORS}
            roles = {n: status[n].get("role") for n in DIRECTORS}
            connected = all(status[n].get("zookeeper") == "connected" for n in DIRECTORS)
            if (roles[active] == "ACTIVE" and roles[other] == "STANDBY" and connected
                    and self.holders() == [active] and self.holders(VIP6) == [active]):
                return True
            # Stepping down is graceful: a director released, then its znode is deleted.
            if time.monotonic() - asked_at < 20:
                return False
            if roles[active] == roles[other] == "ACTIVE":
                lower = min(DIRECTORS, key=lambda n: int(status[n].get("epoch") or 0))
                self._stepdown(lower, "both claim ACTIVE")
                asked_at = time.monotonic()
            elif roles[other] == "ACTIVE" and roles[active] == "STANDBY":
                self._stepdown(other, f"so that {active} leads")
                asked_at = time.monotonic()
            return False

        self.wait(settled, f"{active} ACTIVE holding the VIPs, the other STANDBY", timeout)

    def _stepdown(self, name: str, why: str) -> None:
        self.progress(f"stepping {name} down ({why})")
        with contextlib.suppress(OSError):
            self.pair.post(name, "stepdown")

    # -- damage and healing ------------------------------------------------------------------

    def cut(self, name: str, addresses: Sequence[str]) -> None:
        """Drop every packet between director ``name`` and ``addresses`` (nftables in its
        namespace; nothing rejected, so each side notices only by its own timeouts)."""
        ns = self.pair.ns[name]
        self._ensure_table(ns)
        peers = "{ " + ", ".join(addresses) + " }"
        ns.run(["nft", "add", "rule", "ip", NFT_TABLE, "input", "ip", "saddr", peers, "drop"])
        ns.run(["nft", "add", "rule", "ip", NFT_TABLE, "output", "ip", "daddr", peers, "drop"])

    def steer(self, name: str, away_from: Sequence[int]) -> int:
        """Move director ``name``'s ZooKeeper connection off the servers ``away_from`` (its
        connections to them are reset, its session lives on); returns the server it uses."""
        ns = self.pair.ns[name]
        self._ensure_table(ns)
        hosts = "{ " + ", ".join(self.ensemble.servers[i].host for i in away_from) + " }"
        ns.run(["nft", "add", "rule", "ip", NFT_TABLE, "output", "ip", "daddr", hosts,
                "tcp", "dport", "2181", "reject", "with", "tcp", "reset"])
        found: list[int] = []

        def moved() -> bool:
            index = self.ensemble.serving_client(self.address(name))
            if index is None or index in away_from:
                return False
            found.append(index)
            return True

        self.wait(moved, f"{name}'s ZooKeeper connection to move off {list(away_from)}")
        return found[-1]

    def _ensure_table(self, ns: Netns) -> None:
        ns.run(["nft", "add", "table", "ip", NFT_TABLE])
        for chain in ("input", "output"):
            ns.run(["nft", "add", "chain", "ip", NFT_TABLE, chain,
                    f"{{ type filter hook {chain} priority 0 ; }}"])

    def uncut(self, name: str) -> None:
        self.pair.ns[name].run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)

    def netem(self, name: str, delay: float, loss: float, jitter: float = 0.05) -> None:
        """Delay (s, with ``jitter``) and drop (``loss`` percent) the peer beats director
        ``name`` sends, nothing else: a prio qdisc whose third band, fed by a u32 filter on
        the peer port, is a netem. Raises CommandError without sch_netem."""
        ns = self.pair.ns[name]
        self._netem.add(name)
        ns.run(["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio"])
        ns.run(["tc", "qdisc", "add", "dev", "eth0", "parent", "1:3", "handle", "30:", "netem",
                "delay", f"{int(delay * 1000)}ms", f"{int(jitter * 1000)}ms",
                "loss", f"{loss:g}%"])
        ns.run(["tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                "prio", "1", "u32", "match", "ip", "protocol", "17", "0xff",
                "match", "ip", "dport", str(PEER_PORT), "0xffff", "flowid", "1:3"])

    def heal(self) -> None:
        """Undo every drill's damage: nftables rules, netem, isolated or stopped servers."""
        for name in DIRECTORS:
            self.uncut(name)
            if name in self._netem:
                self.pair.ns[name].run(["tc", "qdisc", "del", "dev", "eth0", "root"],
                                       check=False)
        self._netem.clear()
        for index, server in enumerate(self.ensemble.servers):
            self.ensemble.heal(index)
            if server.proc is None or server.proc.poll() is not None:
                self.progress(f"starting ZooKeeper server {index + 1} again")
                server.launch()
        self.ensemble.wait_serving(self.timings.patience)

    def operator(self) -> contextlib.AbstractContextManager[ClusterStore]:
        """The cluster's store as an operator reaches it from the client's namespace."""
        assert self.client is not None, "build() the bed first"
        return operator_store(self.pair, self.client)


# -- the drills ----------------------------------------------------------------------------------


Notes = list[str]


def follower_isolated(bed: SafetyBed, notes: Notes) -> None:
    """The active's ZooKeeper server, a follower, is cut off from the ensemble's leader: it
    still answers the active's reads while the leader may expire the active's session and
    the standby (connected to the quorum) win. Either the standby takes over, or the active
    moves to a server of the quorum in time and leads on; both pass if never both hold."""
    ensemble = bed.ensemble
    leader = ensemble.wait_serving(bed.timings.patience)
    served: list[int] = []
    bed.wait(lambda: _serving(bed, "lb1", served), "lb1's ZooKeeper connection")
    follower = served[-1]
    if follower == leader:
        follower = bed.steer("lb1", [leader])
    served.clear()
    bed.wait(lambda: _serving(bed, "lb2", served), "lb2's ZooKeeper connection")
    if served[-1] == follower:
        bed.steer("lb2", [follower])
    notes.append(f"leader zk{leader + 1}; lb1 on follower zk{follower + 1}, cut off from it")
    cut_at = time.monotonic()
    ensemble.isolate(follower, [leader])

    resolution: list[str] = []

    def resolved() -> bool:
        if bed.holders() == ["lb2"]:
            resolution.append("lb2")
            return True
        moved = bed.ensemble.serving_client(bed.address("lb1")) not in (None, follower)
        if moved and bed.holders() == ["lb1"] and bed.roles()["lb1"] == "ACTIVE":
            resolution.append("lb1")
            return True
        return False

    took = bed.wait(resolved, "lb2 alone to hold the VIP, or lb1 to lead on from the quorum")
    who = resolution[-1]
    notes.append(f"{who} alone holds the VIP {took:.1f} s after the cut"
                 + (" (lb1 moved to the quorum)" if who == "lb1" else ""))
    # Until the cut-off follower gives up (sync_limit ticks) and a lease more, a director
    # misled by it could still hold: keep watching that long.
    give_up = bed.timings.sync_limit * bed.timings.tick_ms / 1000 + bed.timings.session
    time.sleep(max(0.0, cut_at + give_up - time.monotonic()))


def _serving(bed: SafetyBed, name: str, found: list[int]) -> bool:
    index = bed.ensemble.serving_client(bed.address(name))
    if index is not None:
        found.append(index)
    return index is not None


def session_above_server_max(bed: SafetyBed, notes: Notes) -> None:
    """lb2 leads with a node file asking more than the servers allow (12 s against 6 s), and
    is cut off from the ensemble and from lb1: its session expires after the negotiated
    timeout and lb1 takes over."""
    index = bed.ensemble.serving_client(bed.address("lb2"))
    if index is not None:
        timeouts = [s.timeout_ms for s in bed.ensemble.servers[index].sessions()
                    if s.address == bed.address("lb2")]
        notes.append(f"lb2 asked {bed.timings.high_session:g} s, negotiated "
                     f"{', '.join(f'{t / 1000:g} s' for t in timeouts)}")
    bed.cut("lb2", [*ZK_ADDRS, bed.address("lb1")])
    took = bed.wait(lambda: "lb1" in bed.holders(), "lb1 to take the VIP")
    notes.append(f"lb1 holds the VIP {took:.1f} s after the cut")
    bed.wait(lambda: "lb2" not in bed.holders(), "lb2 to hold nothing",
             bed.timings.release_within)


def leader_znode_deleted(bed: SafetyBed, notes: Notes) -> None:
    """Someone deletes the leader's election znode (an operator, a foreign writer): its owner
    must stop leading; the standby, now first in the queue, takes over."""
    epoch = int((bed.pair.status("lb1") or {}).get("epoch") or 0)
    with bed.operator() as store:
        head = store.election.entries()[0]
        if head.epoch != epoch:
            raise DrillError(f"the queue's head is epoch {head.epoch}, lb1 says {epoch}")
        store.election.delete_async(head.znode).get(timeout=30)
    notes.append(f"deleted lb1's znode {head.znode}")
    took = bed.wait(lambda: "lb2" in bed.holders(), "lb2 to take the VIP")
    notes.append(f"lb2 holds the VIP {took:.1f} s after the delete")
    bed.wait(lambda: "lb1" not in bed.holders(), "lb1 to hold nothing",
             bed.timings.release_within)
    # Two sessions long: a director still believing it leads would hold again meanwhile.
    time.sleep(2 * bed.timings.session)


def rolling_restart(bed: SafetyBed, notes: Notes) -> None:
    """Every ZooKeeper server restarted in turn, the leader last: the sessions survive and
    the pair keeps (or at worst hands over) the VIP."""
    order = bed.ensemble.rolling_restart(bed.timings.patience, bed.progress)
    notes.append(f"restarted zk{', zk'.join(str(i + 1) for i in order)}; leader now "
                 f"zk{(bed.ensemble.leader() or 0) + 1}")
    time.sleep(bed.timings.session)


def peer_netem(bed: SafetyBed, notes: Notes) -> None:
    """lb1 is cut off from ZooKeeper while lb2's beats reach it late and lossy (netem on the
    peer port): lb1 holds on lb2's vouch until lb2 wins; lb2's last vouches arrive about when
    its promise ends and it may take over."""
    delay, loss = bed.timings.netem_delay, bed.timings.netem_loss
    bed.netem("lb2", delay, loss)
    notes.append(f"lb2's beats to lb1: delay {delay:g} s, loss {loss:g} %")
    time.sleep(delay + 2)  # the delayed beats arrive steadily again before the cut
    bed.cut("lb1", ZK_ADDRS)
    took = bed.wait(lambda: bed.holders() == ["lb2"], "lb2 alone to hold the VIP")
    notes.append(f"lb2 alone holds the VIP {took:.1f} s after lb1's cut")


def standby_restart(bed: SafetyBed, notes: Notes) -> None:
    """The whole ensemble unreachable from both directors: lb1 holds on lb2's vouch. lb2 is
    killed and restarted (reaching ZooKeeper again); it must keep the promise its vouches made
    before it takes over (lb1's session has expired meanwhile)."""
    for attempt in range(1, PREMISE_ATTEMPTS + 1):
        bed.cut("lb1", ZK_ADDRS)
        bed.cut("lb2", ZK_ADDRS)
        cut_at = time.monotonic()
        # Past the session timeout lb1 holds only on lb2's word (fail-static).
        time.sleep(bed.timings.session + 1)
        holders = bed.holders()
        if holders == ["lb1"]:
            break
        # A starved host can miss the vouch's freshness; that is no drill of a restart.
        notes.append(f"attempt {attempt}: lb1 did not hold on lb2's vouch "
                     f"{time.monotonic() - cut_at:.1f} s into the outage (holders {holders})")
        if attempt == PREMISE_ATTEMPTS:
            raise DrillError(f"premise: lb1 never held on lb2's vouch in {attempt} attempts")
        bed.heal()
        bed.settle("lb1")
    notes.append(f"lb1 holds on lb2's vouch {time.monotonic() - cut_at:.1f} s into the outage")
    proc = bed.pair.procs["lb2"]
    proc.kill()  # SIGKILL by PID: its worker dies with it
    proc.wait(timeout=30)
    bed.uncut("lb2")
    bed.pair.start("lb2")
    took = bed.wait(lambda: bed.holders() == ["lb2"], "the restarted lb2 to hold the VIP")
    notes.append(f"the restarted lb2 holds the VIP {took:.1f} s after its kill")


DRILLS: dict[str, tuple[Callable[[SafetyBed, Notes], None], str]] = {
    # name: (drill, the director that leads when it starts)
    "follower_isolated": (follower_isolated, "lb1"),
    "session_above_server_max": (session_above_server_max, "lb2"),
    "leader_znode_deleted": (leader_znode_deleted, "lb1"),
    "rolling_restart": (rolling_restart, "lb1"),
    "peer_netem": (peer_netem, "lb1"),
    "standby_restart": (standby_restart, "lb1"),
}


def run_drill(bed: SafetyBed, name: str) -> DrillResult:
    """Settle the pair, run drill ``name`` with the client probing, heal, settle again (lb1
    leading). Raises DrillError only when the pair cannot be settled before the drill."""
    drill, leader = DRILLS[name]
    bed.settle(leader)
    bed.progress(f"drill {name}")
    assert bed.client is not None, "build() the bed first"
    probe = ClientProbe(bed.client).start()
    started = time.monotonic()
    notes: Notes = []
    error = ""
    try:
        drill(bed, notes)
    except (DrillError, LvsctlError, OSError) as exc:
        error = str(exc)
    finally:
        try:
            bed.heal()
            bed.settle("lb1")
            settled_at = time.time()
            # Probes started before the pair settled may have failed: judge later ones.
            bed.wait(lambda: _served(probe.samples(), settled_at), "the client to be served",
                     bed.timings.release_within)
        except (DrillError, LvsctlError, OSError) as exc:
            error = error or f"the pair did not settle after the drill: {exc}"
        samples = probe.stop()
    return DrillResult(
        drill=name, overlap=bed.overlap_since(started), outage=longest_outage(samples),
        probes=len(samples), answered=sum(s.ok for s in samples), holder=bed.holder(),
        seconds=time.monotonic() - started,
        served_at_end=_served(samples, -1.0),
        error=error, notes=tuple(notes))


def has_netem() -> bool:
    """Whether this kernel has sch_netem (tried in a namespace made for it)."""
    name = unique("lvsnetem")
    try:
        run(["ip", "netns", "add", name])
        run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
             "delay", "1ms"])
        return True
    except CommandError:
        return False
    finally:
        run(["ip", "netns", "del", name], check=False)


def results_table(results: Sequence[DrillResult]) -> list[dict[str, Any]]:
    """Per drill: rounds, passed, worst overlap and outage (ms), for a table or JSON."""
    rows = []
    for name in dict.fromkeys(r.drill for r in results):
        mine = [r for r in results if r.drill == name]
        rows.append({
            "drill": name, "rounds": len(mine), "passed": sum(r.passed for r in mine),
            "worst_overlap_ms": round(max(r.overlap for r in mine) * 1000, 1),
            "worst_outage_ms": round(max(r.outage for r in mine) * 1000, 1),
            "errors": sum(bool(r.error) for r in mine),
        })
    return rows
