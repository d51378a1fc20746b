"""Rendered real-server setups equal the reviewed golden files in tests/golden/realserver.

To accept a deliberate change: LVSCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_realserver_golden.py,
then read the diff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lvsctl.templates.render import FORMATS, Format, render
from tests.support.realserver import GOLDEN_CASES

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "realserver"
UPDATE = os.environ.get("LVSCTL_UPDATE_GOLDEN") == "1"


def _on_disk(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_render_matches_golden(case: str, fmt: Format) -> None:
    files = render(GOLDEN_CASES[case], fmt, "golden.yaml")
    folder = GOLDEN / case / fmt
    if UPDATE:
        shutil.rmtree(folder, ignore_errors=True)
        for relative, text in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text, encoding="utf-8")
    assert _on_disk(folder) == files
