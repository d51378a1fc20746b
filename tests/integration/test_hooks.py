"""Notify hooks with real processes: each event once and in order with the documented
variables, one run at a time per hook, a bounded queue, timeouts that kill the whole process
group, failures counted and never retried."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lvsctl.core.model import NotifyHook
from lvsctl.director.hooks import Event, Hooks

DOCUMENTED = {"PATH", "LVSCTL_EVENT", "LVSCTL_CLUSTER", "LVSCTL_DIRECTOR", "LVSCTL_ROLE",
              "LVSCTL_EPOCH", "LVSCTL_SERVICE", "LVSCTL_REALSERVER", "LVSCTL_REASON",
              "LVSCTL_CONFIG_VERSION", "LVSCTL_TIME", "LVSCTL_SEQ"}


def hook_program(tmp: Path, body: str) -> str:
    """An executable Python script (absolute path) that appends a JSON line per step to
    ``tmp/runs.jsonl``; ``body`` runs between its "start" and "end" lines."""
    path = tmp / "hook.py"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time\n"
        f"LOG = {str(tmp / 'runs.jsonl')!r}\n"
        "def note(step, **more):\n"
        "    with open(LOG, 'a') as f:\n"
        "        f.write(json.dumps({'step': step, 'pid': os.getpid(), 'env': dict(os.environ),"
        " 'args': sys.argv[1:], **more}) + '\\n')\n"
        "note('start')\n"
        f"{body}\n"
        "note('end')\n")
    path.chmod(0o755)
    return str(path)


def runs(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def event(kind: str, seq: int, **more: Any) -> Event:
    return Event(kind, "lb1", "prod", "ACTIVE", 7, 1764150000.25 + seq, seq, **more)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def test_each_event_runs_once_in_order_with_the_documented_variables(tmp_path: Path) -> None:
    program = hook_program(tmp_path, "")
    os.environ["LVSCTL_TEST_SECRET"] = "not for hooks"
    events = [event("realserver_down", 1, service="www", realserver="web1",
                    reason="connection refused"),
              event("quorum_lost", 2, service="www"),
              event("director_standby", 3),
              event("config_rejected", 4, reason="x" * 5000, config_version="c.yaml@v3"),
              event("realserver_up", 5, service="www", realserver="web1")]

    async def go() -> dict[str, Any]:
        hooks = Hooks()
        hooks.configure([NotifyHook("record", (program, "--flag"), frozenset(), 20.0, 100),
                         NotifyHook("only-down", (program,), frozenset({"realserver_down"}),
                                    20.0, 100)])
        for e in events:
            hooks.emit(e)
        await until(lambda: hooks.counts()["record"]["ok"] == 5
                    and hooks.counts()["only-down"]["ok"] == 1, "every run")
        counts = hooks.counts()
        await hooks.close()
        return counts

    try:
        counts = asyncio.run(go())
    finally:
        del os.environ["LVSCTL_TEST_SECRET"]
    assert counts["record"] == {"runs": 5, "ok": 5, "failed": 0, "timed_out": 0,
                                "dropped": 0, "queued": 0, "last_error": ""}
    started = [r for r in runs(tmp_path) if r["step"] == "start"]
    record = [r for r in started if r["args"] == ["--flag"]]
    assert [r["env"]["LVSCTL_EVENT"] for r in record] == [e.event for e in events]
    assert [r["env"]["LVSCTL_SEQ"] for r in record] == ["1", "2", "3", "4", "5"]
    for r in record:
        # LC_CTYPE: set by the hook's own Python at start (PEP 538 locale coercion).
        assert set(r["env"]) - {"LC_CTYPE"} == DOCUMENTED, set(r["env"]) ^ DOCUMENTED
    first = record[0]["env"]
    assert (first["LVSCTL_DIRECTOR"], first["LVSCTL_CLUSTER"], first["LVSCTL_ROLE"],
            first["LVSCTL_EPOCH"], first["LVSCTL_SERVICE"], first["LVSCTL_REALSERVER"],
            first["LVSCTL_REASON"]) == ("lb1", "prod", "ACTIVE", "7", "www", "web1",
                                        "connection refused")
    assert first["LVSCTL_TIME"] == "2025-11-26T09:40:01.250Z"
    rejected = record[3]["env"]
    assert rejected["LVSCTL_CONFIG_VERSION"] == "c.yaml@v3"
    assert len(rejected["LVSCTL_REASON"]) == 1003  # clipped, not passed whole
    assert [r["env"]["LVSCTL_EVENT"] for r in started if not r["args"]] == ["realserver_down"]


def test_one_run_at_a_time_per_hook_and_the_queue_is_bounded(tmp_path: Path) -> None:
    program = hook_program(tmp_path, "time.sleep(0.3)")

    async def go() -> dict[str, Any]:
        hooks = Hooks()
        hooks.configure([NotifyHook("slow", (program,), frozenset(), 20.0, 2)])
        for seq in range(1, 7):  # the first starts at once, two wait, three find it full
            hooks.emit(event("realserver_down", seq))
            await asyncio.sleep(0)
        await until(lambda: hooks.counts()["slow"]["ok"] == 3, "three runs")
        await asyncio.sleep(0.5)  # nothing else comes
        counts = hooks.counts()["slow"]
        await hooks.close()
        return counts

    counts = asyncio.run(go())
    assert (counts["runs"], counts["ok"], counts["dropped"]) == (3, 3, 3)
    steps = [(r["step"], r["env"]["LVSCTL_SEQ"]) for r in runs(tmp_path)]
    # Never two at once: each run ends before the next starts, in event order.
    assert steps == [("start", "1"), ("end", "1"), ("start", "2"), ("end", "2"),
                     ("start", "3"), ("end", "3")]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_run_past_its_timeout_is_killed_with_its_children_and_the_next_runs(
        tmp_path: Path) -> None:
    program = hook_program(tmp_path, (
        "import subprocess\n"
        "if os.environ['LVSCTL_SEQ'] == '1':\n"
        "    child = subprocess.Popen(['/bin/sleep', '60'])\n"
        "    note('child', child=child.pid)\n"
        "    time.sleep(60)"))

    async def go() -> dict[str, Any]:
        hooks = Hooks()
        hooks.configure([NotifyHook("stuck", (program,), frozenset(), 1.0, 10)])
        hooks.emit(event("director_active", 1))
        hooks.emit(event("director_standby", 2))
        await until(lambda: hooks.counts()["stuck"]["ok"] == 1, "the second run")
        counts = hooks.counts()["stuck"]
        await hooks.close()
        return counts

    counts = asyncio.run(go())
    assert (counts["runs"], counts["ok"], counts["timed_out"]) == (2, 1, 1)
    assert "still running after 1 s: killed" in counts["last_error"]
    log = runs(tmp_path)
    first = next(r for r in log if r["step"] == "start")
    child = next(r["child"] for r in log if r["step"] == "child")
    assert not any(r["step"] == "end" and r["env"]["LVSCTL_SEQ"] == "1" for r in log)
    for pid in (first["pid"], child):
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"process {pid} of the timed-out run still runs"


def test_failures_are_counted_and_never_retried(tmp_path: Path) -> None:
    program = hook_program(tmp_path, "print('pager unreachable', file=sys.stderr)\n"
                                     "sys.exit(3)")

    async def go() -> dict[str, Any]:
        hooks = Hooks()
        hooks.configure([NotifyHook("fails", (program,), frozenset(), 20.0, 10),
                         NotifyHook("missing", (str(tmp_path / "nope"),), frozenset(), 20.0,
                                    10)])
        hooks.emit(event("quorum_lost", 1))
        await until(lambda: hooks.counts()["fails"]["failed"] == 1
                    and hooks.counts()["missing"]["failed"] == 1, "both failures")
        await asyncio.sleep(1.0)  # a retry would show as a second run
        counts = hooks.counts()
        await hooks.close()
        return counts

    counts = asyncio.run(go())
    assert (counts["fails"]["runs"], counts["fails"]["failed"]) == (1, 1)
    assert counts["fails"]["last_error"] == "exit status 3: pager unreachable"
    assert counts["missing"]["last_error"].startswith(f"cannot run {tmp_path / 'nope'}")
    assert len([r for r in runs(tmp_path) if r["step"] == "start"]) == 1


def test_a_new_file_keeps_unchanged_hooks_and_stops_removed_ones(tmp_path: Path) -> None:
    program = hook_program(tmp_path, "")
    keep = NotifyHook("keep", (program,), frozenset(), 20.0, 10)

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        hooks = Hooks()
        hooks.configure([keep, NotifyHook("gone", (program,), frozenset(), 20.0, 10)])
        hooks.emit(event("config_accepted", 1))
        await until(lambda: all(c["ok"] == 1 for c in hooks.counts().values()), "both runs")
        hooks.configure([keep, NotifyHook("new", (program,), frozenset(), 20.0, 10)])
        after = hooks.counts()
        hooks.emit(event("config_accepted", 2))
        await until(lambda: hooks.counts()["new"]["ok"] == 1 and
                    hooks.counts()["keep"]["ok"] == 2, "the next runs")
        final = hooks.counts()
        await hooks.close()
        return after, final

    after, final = asyncio.run(go())
    assert set(after) == {"keep", "new"} and after["keep"]["ok"] == 1
    assert final["keep"]["ok"] == 2 and final["new"]["ok"] == 1
