"""A plain (non-editable) install carries the real-server templates: render works from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

CODE = """
import lvsctl.templates.render as r
print(r.__file__)
s = r.setup_adhoc("tun", ["192.0.2.10"])
for fmt in r.FORMATS:
    print(sorted(r.render(s, fmt)))
"""


def test_wheel_ships_the_templates_and_renders_from_an_install(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("lvsctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("lvsctl/templates/") and n.endswith(".j2")}
    in_tree = {f"lvsctl/{p.relative_to(ROOT)}" for p in (ROOT / "templates").rglob("*.j2")}
    assert in_tree and shipped == in_tree

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # The installed copy comes first on the path; run from elsewhere so the tree is not used.
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert out[1] == "['setup.sh']"
    assert out[2] == ("['etc/modules-load.d/lvsctl-realserver.conf', "
                      "'etc/sysctl.d/90-lvsctl-realserver.conf', "
                      "'etc/systemd/network/50-lvsctl-tunl0.network']")
