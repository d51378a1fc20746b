"""The metrics renderer process behind ScrapeCache: it writes the same text as the collector in
process, a stopped or dead renderer fails that scrape (a 503) and the next scrape starts a new
one, and no renderer outlives ``close()`` or its director."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvsctl.director import metrics as m
from lvsctl.testbed.prometheus import synthetic_snapshot

BUILD = m.BuildInfo("0.1.0", "3.11.2")
# Generous: a renderer starts a fresh interpreter, slow on a loaded machine.
PATIENT = 120.0


def gone(pid: int) -> bool:
    """True when the process has exited (no /proc entry, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def scraper(snap: m.MetricsSnapshot | None = None) -> m.ScrapeCache:
    snap = snap or synthetic_snapshot(2, 2)
    return m.ScrapeCache(lambda: snap, BUILD, max_age=0.0, timeout=PATIENT)


def test_the_renderer_writes_the_collectors_text() -> None:
    snap = synthetic_snapshot(3, 4)

    async def main() -> None:
        cache = scraper(snap)
        try:
            body, content_type = await cache.scrape()
            assert (body, content_type) == m.render_snapshot(snap, BUILD)
            pid = cache.renderer_pid
            await cache.scrape()
            assert cache.renderer_pid == pid and cache.renders == 2  # one long-lived process
        finally:
            await cache.close()

    asyncio.run(main())


def test_a_renderer_past_its_timeout_fails_the_scrape_and_is_replaced() -> None:
    async def main() -> None:
        cache = scraper()
        try:
            await cache.scrape()
            stuck = cache.renderer_pid
            assert stuck is not None
            os.kill(stuck, signal.SIGSTOP)  # a renderer that never answers
            cache.timeout = 0.5
            sharers = await asyncio.gather(cache.scrape(), cache.scrape(),
                                           return_exceptions=True)
            for failed in sharers:  # both scrapes shared the one render, and its failure
                assert isinstance(failed, m.MetricsUnavailable), failed
                assert "took over 0.5 s" in str(failed)
            assert cache.failures == 1 and cache.renderer_pid is None
            assert gone(stuck)  # killed and reaped, not left stopped
            cache.timeout = PATIENT
            body, _ = await cache.scrape()
            assert b"lvsctl_director_epoch 7.0" in body
            assert cache.renderer_pid not in (None, stuck)
        finally:
            await cache.close()

    asyncio.run(main())


def test_a_renderer_slower_to_start_than_a_render_may_take_is_kept() -> None:
    # Under an emulated CPU a new interpreter's imports take longer than a render may: the
    # start has a timeout of its own, or such a renderer would be killed and replaced forever.
    async def main() -> None:
        snap = synthetic_snapshot(1, 1)
        cache = m.ScrapeCache(lambda: snap, BUILD, max_age=0.0, timeout=2.0,
                              start_timeout=PATIENT)
        try:
            scrape = asyncio.create_task(cache.scrape())
            while cache.renderer_pid is None:
                await asyncio.sleep(0)
            pid = cache.renderer_pid
            os.kill(pid, signal.SIGSTOP)  # still importing: its start now outlasts 2 s
            await asyncio.sleep(3.0)
            os.kill(pid, signal.SIGCONT)
            body, _ = await scrape
            assert b"lvsctl_director_epoch 7.0" in body
            assert (cache.failures, cache.renderer_pid) == (0, pid)
        finally:
            await cache.close()

    asyncio.run(main())


def test_a_renderer_that_dies_mid_render_fails_the_scrape_and_is_replaced() -> None:
    async def main() -> None:
        cache = scraper()
        try:
            await cache.scrape()
            pid = cache.renderer_pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # hold it, so the render is surely in flight
            scrape = asyncio.create_task(cache.scrape())
            for _ in range(5):  # let the scrape reach the renderer
                await asyncio.sleep(0)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(m.MetricsUnavailable, match="died"):
                await scrape
            assert gone(pid)
            await cache.scrape()
            assert cache.renderer_pid not in (None, pid) and cache.failures == 1
        finally:
            await cache.close()

    asyncio.run(main())


def test_a_renderer_found_dead_is_restarted_before_the_scrape() -> None:
    async def main() -> None:
        cache = scraper()
        try:
            await cache.scrape()
            pid = cache.renderer_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while not gone(pid):
                await asyncio.sleep(0.05)
            await cache.scrape()  # no 503: the scrape saw it dead before sending
            assert cache.renderer_pid not in (None, pid) and cache.failures == 0
        finally:
            await cache.close()

    asyncio.run(main())


def test_close_leaves_no_renderer_and_later_scrapes_fail() -> None:
    async def main() -> int:
        cache = scraper()
        await cache.scrape()
        pid = cache.renderer_pid
        assert pid is not None
        await cache.close()
        with pytest.raises(m.MetricsUnavailable, match="closed"):
            await cache.scrape()
        return pid

    pid = asyncio.run(main())
    assert gone(pid)
    assert all(child.pid != pid for child in multiprocessing.active_children())


def test_close_during_a_render_fails_it_and_leaves_no_renderer() -> None:
    async def main() -> None:
        cache = scraper()
        await cache.scrape()
        pid = cache.renderer_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the next render stays in flight until close
        scrape = asyncio.create_task(cache.scrape())
        for _ in range(5):
            await asyncio.sleep(0)
        await cache.close()
        with pytest.raises(m.MetricsUnavailable):
            await scrape
        assert gone(pid) and cache.renderer_pid is None

    asyncio.run(main())


# A director that dies without closing its scraper (SIGKILL: no atexit, no finally).
_DIRECTOR = """
import asyncio, os, signal, sys
from lvsctl.director import metrics as m
from lvsctl.testbed.prometheus import synthetic_snapshot

async def main():
    snap = synthetic_snapshot(1, 1)
    cache = m.ScrapeCache(lambda: snap, m.BuildInfo("0", "3"), timeout=120)
    await cache.scrape()
    print(cache.renderer_pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_renderer_does_not_outlive_its_director(tmp_path: Path) -> None:
    script = tmp_path / "director.py"
    script.write_text(_DIRECTOR)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=PATIENT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pid = int(proc.stdout.strip())
    deadline = time.monotonic() + PATIENT  # a bound on waiting, not an assert on speed
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not gone(pid):
        os.kill(pid, signal.SIGKILL)  # clean up before failing
    assert gone(pid), "the renderer outlived its director"
