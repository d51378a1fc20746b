"""The director's status page served over real HTTP and opened in headless Chromium: the pair,
the services and real servers, both directors' checks, a hostile reason shown as text (and not
run), and a screenshot kept as a test artifact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from lvsctl.director.page import CONTENT_TYPE, render_page
from lvsctl.testbed.prometheus import synthetic_snapshot
from tests.support import chromium

NOW = 1_700_000_100.0
# Would change the title and mark the body if the browser ran it.
HOSTILE = ('<script>document.title="pwned"</script>'
           '<img src=x onerror="document.body.dataset.pwned=1">')


class Dom(HTMLParser):
    """Elements (tag, attributes) in order, and the text of every element with a class."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: list[tuple[str, str]] = []  # (class, text)
        self._open: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs}
        self.elements.append((tag, data))
        self._open.append(data.get("class", ""))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._open and self._open[-1]:
            self.texts.append((self._open[-1], data))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements
                if t == tag and all(a.get(k.rstrip("_").replace("_", "-")) == v
                                     for k, v in attrs.items())]


async def serve(page: Callable[[], str], then: Callable[[str], Any]) -> Any:
    """Serve ``page()`` at / on 127.0.0.1 (a port of our own), run ``then(url)`` in a thread."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.add_routes([web.get("/", index)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        return await asyncio.to_thread(then, f"http://{host}:{port}/")
    finally:
        await runner.cleanup()


def test_status_page_in_chromium_shows_both_directors_and_escapes_reasons(
        record_property: Any) -> None:
    own = synthetic_snapshot(3, 4, reason=HOSTILE)
    peer = synthetic_snapshot(3, 4, director="lb2", role="STANDBY", reason="HTTP 500")
    record = replace(own.record, config=replace(own.record.config, error=HOSTILE))

    def page() -> str:
        return render_page(record, peer.record, now=NOW, lease_seconds_left=1.25,
                           kernel=own.kernel)

    shot = chromium.artifacts() / "status-page.png"
    shot.unlink(missing_ok=True)

    def browse(url: str) -> str:
        dom = chromium.run(url, "--dump-dom")
        chromium.run(url, f"--screenshot={shot}", "--window-size=1280,1600")
        return dom

    dom = Dom()
    dom.feed(asyncio.run(serve(page, browse)))

    assert dom.title == "lvsctl lab: lb1 ACTIVE"  # a script that ran would have changed it
    assert not dom.find("script") and not dom.find("img")
    (body,) = dom.find("body")
    assert "data-pwned" not in body
    (verdict,) = [a for t, a in dom.elements if t == "span" and a.get("id") == "verdict"]
    assert verdict["class"] == "verdict ok"
    assert [(a["data-director"], a["data-role"], a["data-own"]) for a in
            dom.find("tr", class_="director")] == [("lb1", "ACTIVE", "true"),
                                                    ("lb2", "STANDBY", "false")]
    assert [a["data-service"] for a in dom.find("section", class_="service")] == [
        "svc0", "svc1", "svc2"]
    rows = [a for t, a in dom.elements if t == "tr" and "data-realserver" in a]
    assert len(rows) == 12
    assert [a["data-health"] for a in rows[:4]] == ["up", "down", "up", "unknown"]
    reasons = [text for cls, text in dom.texts if cls == "reason"]
    assert HOSTILE in reasons  # shown as text, exactly as the check reported it
    assert any(HOSTILE in text for cls, text in dom.texts if "config-error" in cls)
    assert [text.strip() for cls, text in dom.texts if cls == "reason peer"].count(
        "HTTP 500") == 3  # the peer's checks of rs1 in each service

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)
    record_property("screenshot", str(shot))
