"""A client probe against a VIP: one request every 20 ms, each a new connection, recording
when the client got no answer.

Targets: ``http://VIP[:PORT]/PATH`` (a GET with requests; any HTTP status counts as an answer,
the service answered) or ``tcp://VIP:PORT`` (a TCP connect). Each probe runs on its own worker
thread, started on a fixed cadence, so one probe waiting for its timeout does not delay the
next: the outage is resolved to the cadence, not to the timeout.

From another network namespace (the lab's client host) the probe runs as a subprocess,
``ip netns exec NS python -m failover.probe TARGET ...``, which streams one JSON object per
sample on stdout; ``Probe`` reads them back. Bounded in count and in time either way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlsplit

from lvsctl.core.errors import LvsctlError
from lvsctl.failover.timeline import Sample

INTERVAL = 0.02
# Below Linux's initial SYN retransmission timeout (1 s): a probe whose first SYN went to a
# director that no longer holds the VIP must count as unanswered, not be rescued a second
# later by the retransmission after the takeover (the outage would shrink by that second).
TIMEOUT = 0.5
MAX_DURATION = 3600.0  # no probe runs longer than an hour, whatever it was asked
MAX_IN_FLIGHT = 64


class ProbeError(LvsctlError):
    """A probe target that cannot be used, or a probe process that failed."""


@dataclass(frozen=True)
class Target:
    """Where to probe: ``scheme`` is "http", "https" or "tcp"."""

    scheme: str
    host: str
    port: int
    url: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``http(s)://HOST[:PORT]/...`` or ``tcp://HOST:PORT``. Raises ProbeError."""
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https", "tcp") or not parts.hostname:
            raise ProbeError(f"--probe {text!r}: expected http://VIP[:PORT]/PATH or "
                             "tcp://VIP:PORT")
        try:
            port = parts.port
        except ValueError:
            raise ProbeError(f"--probe {text!r}: the port is not a number 1-65535") from None
        if port is None:
            if parts.scheme == "tcp":
                raise ProbeError(f"--probe {text!r}: tcp:// needs a port (tcp://VIP:PORT)")
            port = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port, text)


def probe_once(target: Target, timeout: float) -> tuple[bool, str]:
    """One probe on a new connection: (answered, error text)."""
    if target.scheme == "tcp":
        try:
            with socket.create_connection((target.host, target.port), timeout=timeout):
                return True, ""
        except OSError as exc:
            return False, _reason(exc)
    import requests  # imported here: the tcp probe (and the CLI's import time) needs none of it

    try:
        # A fresh connection each time (no session, Connection: close): a kept-alive
        # connection would hide a failover from the prober, not from real new clients.
        with requests.get(target.url, timeout=timeout, allow_redirects=False,
                          headers={"Connection": "close"}, stream=True):
            return True, ""
    except requests.RequestException as exc:
        return False, _reason(exc)


def _reason(exc: BaseException) -> str:
    text = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, TimeoutError | socket.timeout):
        text = "timed out"
    return text[:80]


@dataclass
class ProbeLoop:
    """Runs probes at ``interval`` until ``count`` samples, ``duration`` seconds or stop().

    ``emit`` gets each Sample as it completes (from worker threads, under a lock).
    """

    target: Target
    interval: float = INTERVAL
    timeout: float = TIMEOUT
    count: int | None = None
    duration: float = MAX_DURATION
    emit: Callable[[Sample], None] = lambda s: None
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Probe until done; returns how many probes were started."""
        started = 0
        limit = min(self.duration, MAX_DURATION)
        begin = self.clock()
        workers = min(MAX_IN_FLIGHT, int(self.timeout / self.interval) + 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
            next_at = begin
            while not self._stop.is_set():
                if self.count is not None and started >= self.count:
                    break
                if self.clock() - begin >= limit:
                    break
                pool.submit(self._one)
                started += 1
                next_at += self.interval
                delay = next_at - self.clock()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = self.clock()  # fell behind: do not burst to catch up
        return started

    def _one(self) -> None:
        wall, t0 = self.wall(), self.clock()
        ok, error = probe_once(self.target, self.timeout)
        sample = Sample(wall, ok, round(self.clock() - t0, 6) if ok else None, error)
        with self._lock:
            self.emit(sample)


class Probe:
    """A probe running in the background, in this process or in a network namespace.

    ``start()``, then ``samples()`` at any time, ``stop()`` when done (also bounded by
    ``duration``). In a namespace it is a child process killed by its PID on stop.
    """

    def __init__(self, target: Target, *, netns: str | None = None, interval: float = INTERVAL,
                 timeout: float = TIMEOUT, duration: float = MAX_DURATION) -> None:
        self.target = target
        self.netns = netns
        self.interval = interval
        self.timeout = timeout
        self.duration = min(duration, MAX_DURATION)
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._loop: ProbeLoop | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._errors: list[str] = []

    def _add(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def start(self) -> Probe:
        if self.netns is None:
            self._loop = ProbeLoop(self.target, self.interval, self.timeout,
                                   duration=self.duration, emit=self._add)
            self._thread = threading.Thread(target=self._loop.run, name="probe", daemon=True)
            self._thread.start()
            return self
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "failover.probe",
                self.target.url, "--interval", str(self.interval), "--timeout",
                str(self.timeout), "--duration", str(self.duration)]
        try:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
        except OSError as exc:
            raise ProbeError(f"cannot start the probe in namespace {self.netns}: "
                             f"{exc.strerror}") from None
        assert self._proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self._proc.stdout,),
                                        name="probe-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                self._add(Sample.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                self._errors.append(line.strip()[:200])

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._thread is not None and self._thread.is_alive()

    def samples(self) -> list[Sample]:
        with self._lock:
            return sorted(self._samples, key=lambda s: s.wall)

    def stop(self) -> list[Sample]:
        """Stop probing and return every sample. Raises ProbeError if the probe process failed."""
        if self._loop is not None:
            self._loop.stop()
        stopped_by_us = False
        if self._proc is not None:
            if self._proc.poll() is None:
                stopped_by_us = True
                self._proc.terminate()
            try:
                self._proc.wait(timeout=self.timeout + 5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        if self._proc is not None and self._proc.returncode != 0 and not stopped_by_us:
            err = self._proc.stderr.read().strip() if self._proc.stderr else ""
            raise ProbeError(f"the probe in namespace {self.netns} failed "
                             f"({self._proc.returncode}): {err.splitlines()[-1:] or ''}")
        return self.samples()

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ProbeError):
            self.stop()


def main(argv: list[str] | None = None) -> int:
    """The probe entry point run inside a namespace: JSON lines on stdout, one per sample."""
    parser = argparse.ArgumentParser(prog="python -m failover.probe")
    parser.add_argument("target")
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        target = Target.parse(args.target)
    except ProbeError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 2

    def emit(sample: Sample) -> None:
        sys.stdout.write(json.dumps(sample.to_json()) + "\n")
        sys.stdout.flush()

    loop = ProbeLoop(target, args.interval, args.timeout, args.count,
                     min(args.duration, MAX_DURATION), emit)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    try:
        loop.run()
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
