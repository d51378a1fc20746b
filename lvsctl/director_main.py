"""The director's main: wires the real parts into the keeper and its worker.

``lvsctl director run --node FILE`` execs ``python -m lvsctl.director_main run --node FILE``:
a fresh interpreter that imports only what the keeper needs (election, peer link, VIPs,
channel — no CLI, no HTTP, no health checks). The keeper starts its worker as
``python -m lvsctl.director_main worker --node FILE --channel-fd N``, in a process group of
its own. The test bed has its own main (lvsctl/testbed/director_main.py) that wires the same
keeper to a worker on a fake IPVS table.

Both processes log one JSON object per line on stderr (journald keeps each as one entry),
with ``"process": "keeper"`` or ``"worker"``. ``kill -USR1 PID`` prints every thread's stack,
``kill -USR2 PID`` every asyncio task's. With ``NOTIFY_SOCKET`` set, the keeper sends READY=1
and STOPPING=1 to systemd; the worker never does (NotifyAccess=main).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import faulthandler
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lvsctl.core.errors import ConfigError, LvsctlError
from lvsctl.director.channel import EXIT_FATAL

# Imported where used: the keeper starts its worker before it loads anything heavy, so that
# the two processes' imports overlap (in the emulated kernel VM they take tens of seconds).
if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from lvsctl.core.node import Node
    from lvsctl.core.zk import Credentials, Target
    from lvsctl.director.channel import LeaderConfig
    from lvsctl.director.election import Election, Transition
    from lvsctl.director.ipvs import IpvsTable
    from lvsctl.director.keeper import WorkerProcess
    from lvsctl.director.peer import PeerLink

# ---------------------------------------------------------------------------------------------
# Logging and systemd
# ---------------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, director: str, process: str) -> None:
        super().__init__()
        self.director = director
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 6), "level": record.levelname.lower(),
            "director": self.director, "process": self.process, "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(node: Node, process: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if node.log_format == "json":
        handler.setFormatter(JsonFormatter(node.director, process))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {node.director} {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("kazoo").setLevel(logging.WARNING)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about READY=1 / STOPPING=1; nothing without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def _connect(node: Node, insecure: bool) -> tuple[Target, Credentials | None, KazooClient]:
    from lvsctl.core.zk import DIRECTOR_RECONNECT, Target, make_client

    target = Target.from_node(node, insecure=insecure)
    credentials = target.credentials()  # no credentials and not --insecure: refuse
    # Unlike a command's client it reconnects within half a second: after a whole-ensemble
    # outage the active must be back before its (restored) session can expire.
    client = make_client(target, credentials, reconnect=DIRECTOR_RECONNECT)
    client.start_async()
    return target, credentials, client


async def _stop_client(client: KazooClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.to_thread(client.stop), 2.0)
    with contextlib.suppress(Exception):
        client.close()


def _run_loop(main: Callable[[], Any]) -> int:
    import uvloop

    # uvloop: the health checks' probes cost half the CPU they cost on asyncio's own loop.
    loop = uvloop.new_event_loop()
    try:
        return int(loop.run_until_complete(main()))
    finally:
        loop.close()  # does not wait for executor threads (a kazoo call may never return)


def _exit(code: int) -> NoReturn:
    # Kazoo's threads or a blocked executor thread must not keep a stopped process alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# The keeper
# ---------------------------------------------------------------------------------------------


class WorkerChild:
    """A worker process started by ``WorkerCommand``: the leader of its own process group."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        if self._proc.returncode is None:  # once reaped, its number may belong to another
            os.killpg(self.pid, signal.SIGKILL)


class WorkerCommand:
    """Starts the worker as a child command with its end of a socketpair (the keeper's
    ``WorkerLauncher``)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self._early: tuple[WorkerProcess, socket.socket] | None = None

    def start_early(self) -> None:
        """Start the first worker now; the keeper's first ``start`` gets this one."""
        self._early = self._spawn()

    def start(self) -> tuple[WorkerProcess, socket.socket]:
        early, self._early = self._early, None
        return early if early is not None else self._spawn()

    def _spawn(self) -> tuple[WorkerProcess, socket.socket]:
        keeper_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env[KEEPER_PID_ENV] = str(os.getpid())
        try:
            proc = subprocess.Popen(
                [*self.argv, "--channel-fd", str(worker_end.fileno())],
                pass_fds=(worker_end.fileno(),), start_new_session=True,
                stdin=subprocess.DEVNULL, env=env)
        except OSError:
            keeper_end.close()
            raise
        finally:
            worker_end.close()
        return WorkerChild(proc), keeper_end


def run_keeper(node_path: str, *, insecure: bool, worker_argv: Sequence[str]) -> NoReturn:
    """The keeper of the director named by ``node_path``; ``worker_argv`` starts its worker
    (``--channel-fd N`` is appended)."""
    launcher = WorkerCommand(worker_argv)
    launcher.start_early()
    from lvsctl.core.node import load_node
    from lvsctl.director.election import Election, Timing
    from lvsctl.director.keeper import Keeper
    from lvsctl.director.peer import PeerLink, read_secret
    from lvsctl.director.promise import PromiseFile
    from lvsctl.director.vip import KernelAnnouncer, KernelVips

    node = load_node(node_path)
    setup_logging(node, "keeper")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    secret = read_secret(node.peer_secret_file)
    _target, _credentials, client = _connect(node, insecure)
    timing = Timing(session_timeout=node.zookeeper.session_timeout)
    vips = KernelVips()

    keepers: list[Keeper] = []

    def make_peer(config: LeaderConfig) -> PeerLink:
        # The secret as of now: a SIGHUP before the first VIP set may have rotated it.
        current = secret
        with contextlib.suppress(LvsctlError):
            current = read_secret(keepers[0].node.peer_secret_file)
        return PeerLink(node.director, current, config.peer_listen, config.peer_remote,
                        dead_after=timing.peer_dead_after)

    def make_election(peer: PeerLink, on_transition: Callable[[Transition], None]) -> Election:
        # The standby's promise survives a restart in the node's state_dir.
        return Election(client, f"{node.cluster_path}/election", node.director, timing,
                        peer=peer, on_transition=on_transition,
                        promises=PromiseFile(Path(node.state_dir) / "promise.json"))

    async def main() -> int:
        keeper = Keeper(
            node, vips=vips, announcer=KernelAnnouncer(),
            launcher=launcher, make_peer=make_peer,
            make_election=make_election, zk_connected=lambda: bool(client.connected),
            reload_node=lambda: load_node(node_path), read_secret=read_secret,
            notify=sd_notify)
        keepers.append(keeper)
        try:
            return await keeper.run()
        finally:
            await _stop_client(client)

    _exit(_run_loop(main))


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------


WORKER_NICE = 5
KEEPER_PID_ENV = "LVSCTL_KEEPER_PID"  # set by WorkerCommand: whom the worker works for


def _die_with_keeper() -> int:
    """SIGKILL us if the keeper dies, even with our loop hung (end-of-file on the channel
    covers a live loop); exit at once if it died before we got here. Returns its PID."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    keeper_pid = os.getppid()
    if str(keeper_pid) != os.environ.get(KEEPER_PID_ENV):
        _exit(0)  # orphaned already (or not started by a keeper): nobody to work for
    return keeper_pid


def run_worker(node_path: str, *, channel_fd: int, insecure: bool,
               make_table: Callable[[Node], IpvsTable]) -> NoReturn:
    """The worker of the director named by ``node_path``, on channel ``channel_fd``."""
    keeper_pid = _die_with_keeper()
    # A worker that spins (a flood of checks, a huge file) must not take the CPU the keeper's
    # renewals need: the scheduler favours the keeper when both want it.
    with contextlib.suppress(OSError):  # a sandbox that forbids it: the same priority, then
        os.nice(WORKER_NICE)
    from lvsctl.core.node import load_node
    from lvsctl.core.zk import ClusterConnection
    from lvsctl.director import failsafe
    from lvsctl.director.api import start_api
    from lvsctl.director.channel import Channel
    from lvsctl.director.dataplane import Dataplane
    from lvsctl.director.managed import ManagedBook, ZkManaged, state_file
    from lvsctl.director.worker import Worker, ZkStore
    from lvsctl.healthcheck.checkers import Checkers
    from lvsctl.healthcheck.scheduler import Scheduler

    sock = socket.socket(fileno=channel_fd)
    node = load_node(node_path)
    setup_logging(node, "worker")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    target, credentials, client = _connect(node, insecure)
    store = ZkStore(client, ClusterConnection(target, client, credentials))
    # The kernel's table is adopted as it is: only what the plan says changes (no flush).
    # The services it manages: its state file, and its record in ZooKeeper (read back when
    # the file is lost), so what leaves the cluster file is retired after a restart too.
    managed = ManagedBook(node.director, state_file(node.state_dir, node.cluster),
                          ZkManaged(store.store, node.director))
    managed.load()
    dataplane = Dataplane(make_table(node), monotonic=time.monotonic, managed=managed)

    async def main() -> int:
        # Both directors run the checks (a warm standby knows the real servers' health).
        async with Checkers() as checkers:
            worker = Worker(
                node, keeper_pid=keeper_pid, store=store, dataplane=dataplane,
                make_health=lambda cluster, on_change: Scheduler(cluster, checkers,
                                                                 on_change=on_change),
                start_api=start_api, reload_node=lambda: load_node(node_path))
            worker.attach(Channel(sock, on_message=failsafe.callback("keeper message",
                                                                    worker.on_message),
                                  on_close=worker.on_channel_closed,
                                  on_invalid=worker.on_invalid))
            return await worker.run()

    _exit(_run_loop(main))


def kernel_table(_node: Node) -> IpvsTable:
    from lvsctl.director.ipvs_kernel import KernelIpvs

    return KernelIpvs()


# ---------------------------------------------------------------------------------------------
# Command line (hidden: ``lvsctl director run`` is the user's command)
# ---------------------------------------------------------------------------------------------


def parser(prog: str, options: Sequence[str] = ()) -> argparse.ArgumentParser:
    """``run`` and ``worker``, each with ``--node``, ``--insecure`` and ``options`` (required
    strings)."""
    top = argparse.ArgumentParser(prog=prog)
    sub = top.add_subparsers(dest="part", required=True)
    for part in ("run", "worker"):
        cmd = sub.add_parser(part)
        cmd.add_argument("--node", required=True)
        cmd.add_argument("--insecure", action="store_true")
        for option in options:
            cmd.add_argument(option, required=True)
        if part == "worker":
            cmd.add_argument("--channel-fd", type=int, required=True)
    return top


def worker_argv(module: str, node_path: str, insecure: bool, *extra: str) -> list[str]:
    """How a keeper started as ``python -m module run`` starts its worker."""
    return [sys.executable, "-m", module, "worker", "--node", node_path,
            *(["--insecure"] if insecure else []), *extra]


def guarded(fn: Callable[[], NoReturn], code: int | None = None) -> NoReturn:
    """Run ``fn``; an LvsctlError before the loop starts is one readable line and its exit
    code (``code`` if given)."""
    try:
        fn()
    except LvsctlError as exc:
        prefix = "" if isinstance(exc, ConfigError) else "lvsctl: "  # as the CLI prints them
        for line in exc.lines():
            print(f"{prefix}{line}", file=sys.stderr)
        _exit(exc.exit_code if code is None else code)


# A worker that cannot even start (its node file, credentials or IPVS refused) would fail the
# same way on every restart: it tells the keeper to stop, and systemd's start limit takes over.
WORKER_SETUP_FAILED = EXIT_FATAL


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parser("python -m lvsctl.director_main").parse_args(argv)
    if args.part == "run":
        guarded(lambda: run_keeper(args.node, insecure=args.insecure, worker_argv=worker_argv(
            "lvsctl.director_main", args.node, args.insecure)))
    guarded(lambda: run_worker(args.node, channel_fd=args.channel_fd, insecure=args.insecure,
                               make_table=kernel_table), WORKER_SETUP_FAILED)


if __name__ == "__main__":
    main()
