"""Notify hooks: the cluster file's ``notify`` commands, run by the worker on events (a real
server up or down, a service's quorum lost or regained, this director active, standby or
fenced, a config accepted or rejected).

Rules (each kept here, for every hook of the file):

- A command is an argv list executed directly (never a shell), its program an absolute
  path; the event is in its environment only (``Event.env``: LVSCTL_EVENT, LVSCTL_DIRECTOR,
  ...), beside a fixed PATH. It runs in its own session with stdin and stdout on /dev/null;
  the first STDERR_KEPT bytes of its stderr go to the log when it fails.
- Per hook: at most one run at a time, events in the order they happened; at most
  ``queue`` events wait, and an event that finds the queue full is dropped, counted and
  logged (never an unbounded backlog).
- A run still going after ``timeout`` seconds is killed with its process group. A failure
  (non-zero exit, a signal, a program that cannot be executed) or a timeout is logged and
  counted, and never retried: the next event runs the hook again.
- The runs are asyncio subprocesses of the worker's loop, never of the keeper's, so nothing
  a hook does can delay a VIP renewal; ``counts()`` goes into the worker's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from lvsctl.core.model import Health, NotifyHook, Service, ServiceKey

log = logging.getLogger("lvsctl.director.hooks")

HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDERR_KEPT = 2048  # bytes of a failed run's stderr kept for the log
MAX_ENV_REASON = 1000  # characters of LVSCTL_REASON (a rejected config's issues are long)


@dataclass(frozen=True)
class Event:
    """One event as hooks see it. ``seq`` numbers the events of one worker in order;
    ``wall`` is when it happened (seconds since 1970)."""

    event: str
    director: str
    cluster: str
    role: str
    epoch: int
    wall: float
    seq: int = 0
    service: str = ""
    realserver: str = ""
    reason: str = ""
    config_version: str = ""

    def env(self) -> dict[str, str]:
        """The hook's whole environment (nothing of the director's own is passed on)."""
        when = datetime.fromtimestamp(self.wall, UTC)
        reason = self.reason if len(self.reason) <= MAX_ENV_REASON else (
            self.reason[:MAX_ENV_REASON] + "...")
        return {
            "PATH": HOOK_PATH,
            "LVSCTL_EVENT": self.event,
            "LVSCTL_CLUSTER": self.cluster,
            "LVSCTL_DIRECTOR": self.director,
            "LVSCTL_ROLE": self.role,
            "LVSCTL_EPOCH": str(self.epoch),
            "LVSCTL_SERVICE": self.service,
            "LVSCTL_REALSERVER": self.realserver,
            "LVSCTL_REASON": reason.replace("\0", " "),
            "LVSCTL_CONFIG_VERSION": self.config_version,
            "LVSCTL_TIME": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "LVSCTL_SEQ": str(self.seq),
        }


@dataclass
class HookCounts:
    """What became of one hook's events since the worker started."""

    runs: int = 0
    ok: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    queued: int = 0
    last_error: str = ""


class _Target:
    """One hook: its queue and the task that runs it, one event after another."""

    def __init__(self, hook: NotifyHook, counts: HookCounts) -> None:
        self.hook = hook
        self.counts = counts
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=hook.queue)
        self.task: asyncio.Task[None] | None = None

    def offer(self, event: Event) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"hook-{self.hook.name}")
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.counts.dropped += 1
            log.warning("hook %s: %d events waiting, %s #%d dropped", self.hook.name,
                        self.queue.qsize(), event.event, event.seq,
                        extra={"event": "hook_dropped", "hook": self.hook.name,
                               "hook_event": event.event})
        self.counts.queued = self.queue.qsize()

    async def _run(self) -> None:
        while True:
            event = await self.queue.get()
            self.counts.queued = self.queue.qsize()
            try:
                await self._exec(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a hook must never stop the next one
                self._failed(event, f"{type(exc).__name__}: {exc}")

    async def _exec(self, event: Event) -> None:
        hook = self.hook
        self.counts.runs += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *hook.command, env=event.env(), cwd="/", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as exc:
            self._failed(event, f"cannot run {hook.command[0]}: {exc.strerror or exc}")
            return
        try:
            stderr = await asyncio.wait_for(_finish(proc), hook.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            _kill_group(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5.0)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.counts.timed_out += 1
            self._failed(event, f"still running after {hook.timeout:g} s: killed",
                         counted=False)
            return
        if proc.returncode == 0:
            self.counts.ok += 1
            log.info("hook %s ran for %s #%d", hook.name, event.event, event.seq,
                     extra={"event": "hook_ran", "hook": hook.name, "hook_event": event.event})
            return
        code = proc.returncode or 0
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        first = stderr.decode(errors="replace").strip().splitlines()[:1]
        self._failed(event, how + (f": {first[0][:300]}" if first else ""))

    def _failed(self, event: Event, why: str, *, counted: bool = True) -> None:
        if counted:
            self.counts.failed += 1
        self.counts.last_error = why
        log.warning("hook %s failed for %s #%d: %s", self.hook.name, event.event, event.seq,
                    why, extra={"event": "hook_failed", "hook": self.hook.name,
                                "hook_event": event.event, "reason": why})

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def _finish(proc: asyncio.subprocess.Process) -> bytes:
    """Wait for ``proc``, keeping the first STDERR_KEPT bytes of its stderr (the rest is read
    and dropped: a chatty hook must neither block on a full pipe nor fill our memory)."""
    kept = bytearray()
    assert proc.stderr is not None
    while chunk := await proc.stderr.read(4096):
        kept += chunk[:max(0, STDERR_KEPT - len(kept))]
    await proc.wait()
    return bytes(kept)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The run has its own session (start_new_session): its group is its process id, and
    # everything it started without leaving the group goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Hooks:
    """Every hook of the running cluster file; ``emit`` hands an event to those that want it.

    ``configure`` replaces the hooks when the file changes: a hook whose entry is unchanged
    keeps its queue and counts, one that left is stopped (its running command killed).
    """

    targets: dict[str, _Target] = field(default_factory=dict)
    seq: int = 0
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)

    def configure(self, hooks: Iterable[NotifyHook]) -> None:
        wanted = {h.name: h for h in hooks}
        for name, target in list(self.targets.items()):
            if wanted.get(name) != target.hook:
                del self.targets[name]
                self._stop_later(target)
        for name, hook in wanted.items():
            if name not in self.targets:
                old = HookCounts()
                self.targets[name] = _Target(hook, old)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def emit(self, event: Event) -> None:
        """Queue ``event`` for each hook that runs on it (call on the worker's loop)."""
        for target in self.targets.values():
            if target.hook.wants(event.event):
                target.offer(event)

    def counts(self) -> dict[str, Any]:
        return {name: asdict(t.counts) for name, t in self.targets.items()}

    def _stop_later(self, target: _Target) -> None:
        if target.task is None:
            return
        task = asyncio.get_running_loop().create_task(target.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop every hook (a running command is killed)."""
        targets, self.targets = list(self.targets.values()), {}
        for target in targets:
            await target.stop()
        for task in list(self._stopping):
            with contextlib.suppress(Exception):
                await task


# -- which changes are events (pure: the worker calls these) ----------------------------------


def health_event(previous: Health | None, now: Health) -> str | None:
    """``realserver_up``/``realserver_down`` for a health change, or None (a weight change,
    or a server found up at start: only a server that was down comes up)."""
    was_up = previous is None or previous.healthy
    if now.healthy == was_up:
        return None
    return "realserver_up" if now.healthy else "realserver_down"


def quorum_events(services: Iterable[Service], before: Mapping[ServiceKey, bool],
                  after: Mapping[ServiceKey, bool]) -> list[tuple[str, str]]:
    """``(event, service name)`` for each service whose quorum verdict changed between two
    passes; no verdict yet counts as held, as the planner judges a starting director."""
    out = []
    for svc in services:
        was, now = before.get(svc.key, True), after.get(svc.key, True)
        if was != now:
            out.append(("quorum_regained" if now else "quorum_lost", svc.name))
    return out
