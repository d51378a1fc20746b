"""The wheel installs beside the distributions that own the names ``director`` and
``healthcheck`` on PyPI, and both work: lvsctl installs no top-level package but its own.

Builds lvsctl's wheel from a copy of this tree, installs it into one fresh venv together with
``celery-director`` and ``py-healthcheck`` (pip through this machine's configured index, the
only network use), then runs the installed ``lvsctl`` and imports the namesakes' packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from lvsctl import __version__

ROOT = Path(__file__).resolve().parents[2]
# Versions that install on Python 3.11 (checked with pip download); pinned so the test is
# the same every day.
NAMESAKES = {"celery-director": ("0.10.0", "director"), "py-healthcheck": ("1.10.1", "healthcheck")}
OUR_TOP_LEVEL = {"lvsctl", f"lvsctl-{__version__}.dist-info"}
# Where each namesake's top-level package comes from, asked of the installed distributions.
WHERE = """
import importlib, importlib.metadata as md, json, sys
out = {}
for dist, module in json.loads(sys.argv[1]).items():
    mod = importlib.import_module(module)
    files = {str(d.locate_file(f)) for d in [md.distribution(dist)] for f in d.files or ()}
    out[module] = {"file": mod.__file__, "owned_by_dist": mod.__file__ in files}
print(json.dumps(out))
"""


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, f"{argv[:4]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _source_copy(into: Path) -> Path:
    """This tree without its venv, VCS and build leftovers (the engines' links kept)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "var", "build", "dist", "*.egg-info",
                                    "__pycache__", ".*_cache", ".hypothesis")
    return Path(shutil.copytree(ROOT, into, symlinks=True, ignore=ignore))


def test_wheel_installs_and_runs_beside_celery_director_and_py_healthcheck(
        tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
          str(source)], cwd=tmp_path)
    (wheel,) = dist.glob("lvsctl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
    assert top_level == OUR_TOP_LEVEL

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, lvsctl = venv / "bin" / "python", venv / "bin" / "lvsctl"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel),
          *(f"{name}=={version}" for name, (version, _) in NAMESAKES.items())], cwd=tmp_path)

    # An empty folder as the working directory: nothing of this tree can be imported from it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _run([str(lvsctl), "--version"], cwd=elsewhere) == f"lvsctl, version {__version__}\n"
    rendered = _run([str(lvsctl), "realserver", "render", "--mode", "dr", "--vip", "192.0.2.10"],
                    cwd=elsewhere)
    assert "192.0.2.10/32" in rendered and "arp_ignore" in rendered, rendered

    where = json.loads(_run([str(python), "-c", WHERE, json.dumps(
        {name: module for name, (_, module) in NAMESAKES.items()})], cwd=elsewhere))
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    for _, module in NAMESAKES.values():
        found = where[module]
        assert found["owned_by_dist"], found
        assert Path(found["file"]) == site / "site-packages" / module / "__init__.py", found
