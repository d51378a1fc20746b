"""The standby's promise on disk: kept across a restart of the same boot, over after a reboot,
an unreadable record refused (the election then assumes the longest promise)."""

from __future__ import annotations

import math
import stat
from pathlib import Path

import pytest

from lvsctl.director.promise import PromiseFile


def store(tmp_path: Path, boot: str = "boot-a") -> PromiseFile:
    boot_id = tmp_path / f"{boot}.id"
    boot_id.write_text(f"{boot}\n")
    return PromiseFile(tmp_path / "state" / "promise.json", boot_id=boot_id)


def test_a_promise_survives_a_restart_of_the_same_boot(tmp_path: Path) -> None:
    first = store(tmp_path)
    assert first.load() == -math.inf  # none yet
    first.save(1234.5)
    again = store(tmp_path)  # the next run of the director
    assert again.load() == 1234.5
    assert stat.S_IMODE(again.path.stat().st_mode) == 0o600
    assert [p.name for p in again.path.parent.iterdir()] == ["promise.json"]


def test_a_promise_from_another_boot_is_over(tmp_path: Path) -> None:
    store(tmp_path, "boot-a").save(1234.5)
    assert store(tmp_path, "boot-b").load() == -math.inf


@pytest.mark.parametrize("text", ["", "{", "[]", '{"boot": "boot-a"}',
                                  '{"boot": "boot-a", "until": "soon"}',
                                  '{"boot": "boot-a", "until": 1e999}', "x" * 5000])
def test_an_unreadable_record_is_refused(tmp_path: Path, text: str) -> None:
    promises = store(tmp_path)
    promises.path.parent.mkdir()
    promises.path.write_text(text)
    with pytest.raises(ValueError, match=r"promise\.json"):
        promises.load()
