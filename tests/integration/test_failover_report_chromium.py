"""The drill's HTML report opened in headless Chromium: one timeline per round, the failed
round marked, and a screenshot kept as a test artifact."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lvsctl.failover.report import DrillReport, write_html
from tests.support import chromium
from tests.unit.test_failover_report import overlapping, passing


class Dom(HTMLParser):
    """Collects (tag, attributes, enclosing round) for every element."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self._round: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs}
        if tag == "section" and "round" in data.get("class", "").split():
            self._round = data.get("data-round")
        self.elements.append((tag, data, self._round))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._round = None

    def find(self, tag: str, cls: str | None = None) -> list[tuple[dict[str, str], str | None]]:
        wanted = set((cls or "").split())
        return [(a, r) for t, a, r in self.elements
                if t == tag and wanted <= set(a.get("class", "").split())]


def test_report_renders_in_chromium_with_a_timeline_per_round(tmp_path: Path,
                                                              record_property: Any) -> None:
    report = DrillReport("t", "stepdown", 3, (passing(1), overlapping(2), passing(3)),
                         probe="tcp://192.0.2.10:80")
    page = tmp_path / "report.html"
    write_html(page, report)

    dom = Dom()
    dom.feed(chromium.run(page.as_uri(), "--dump-dom"))
    rounds = dom.find("section", "round")
    assert [a["data-round"] for a, _ in rounds] == ["1", "2", "3"]
    assert [a["data-passed"] for a, _ in rounds] == ["true", "false", "true"]
    svgs = dom.find("svg", "timeline")
    assert [r for _, r in svgs] == ["1", "2", "3"]  # exactly one timeline inside each round
    for number in ("1", "2", "3"):
        holds = [a for a, r in dom.find("rect", "hold") if r == number]
        states = [a for a, r in dom.find("rect", "state") if r == number]
        outages = [a for a, r in dom.find("rect", "outage") if r == number]
        assert len(holds) == 2 and len(states) == 5 and len(outages) == 1
    assert [r for _, r in dom.find("rect", "overlap")] == ["2"]
    (verdict,) = [a for a, _ in dom.find("span") if a.get("id") == "verdict"]
    assert "fail" in verdict["class"]
    assert len(dom.find("tr", "fail")) == 1

    shot = chromium.artifacts() / "failover-report.png"
    shot.unlink(missing_ok=True)
    chromium.run(page.as_uri(), f"--screenshot={shot}", "--window-size=1100,1400")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 1400)
    record_property("screenshot", str(shot))  # in the JUnit XML, for CI to keep
