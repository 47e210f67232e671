"""The wheel ships every package and the shipped models: packages are found by pattern in pyproject.toml
(a subpackage folder without an `__init__.py`, or model files deeper than the package-data globs, would
silently be left out of an install while every test from the source tree still passes).

The wheel is built offline from a copy of the source (pip builds in the tree it is given: build/ and
*.egg-info stay in tmp_path), with the setuptools of this environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows", "labelers", "manifests")
MODELS = "pipeline/models"


def _source_files() -> list[str]:
    """Every file of our packages in the source tree, as wheel paths (no caches)."""
    return sorted(
        p.relative_to(ROOT).as_posix()
        for top in PACKAGES
        for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _expected(files: list[str]) -> set[str]:
    """Every module of every package folder (one with an __init__.py) and every file of each shipped
    model folder under pipeline/models/."""
    packages = {f.rsplit("/", 1)[0] for f in files if f.endswith("/__init__.py")}
    modules = {f for f in files if f.endswith(".py") and f.rsplit("/", 1)[0] in packages}
    models = {f for f in files if f.startswith(MODELS + "/") and f.count("/") > MODELS.count("/") + 1}
    return modules | models


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for top in PACKAGES:
        shutil.copytree(ROOT / top, src / top, ignore=skip)
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "-w", str(dist)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("dataplusplus-*.whl")
    return wheel


def test_the_wheel_ships_every_package_module_and_model_file(tmp_path):
    files = _source_files()
    expected = _expected(files)
    assert f"{MODELS}/toyworld/unet/config.json" in expected  # the expected set is not empty by mistake
    assert "flows/cli/__init__.py" in expected and "pipeline/diffusion/__init__.py" in expected
    with zipfile.ZipFile(_build_wheel(tmp_path)) as z:
        shipped = set(z.namelist())
        entry_points = next(n for n in shipped if n.endswith(".dist-info/entry_points.txt"))
        scripts = z.read(entry_points).decode()
    missing = sorted(expected - shipped)
    assert not missing, f"{len(missing)} file(s) not in the wheel: {missing[:20]}"
    assert "dpp = flows.cli:entry" in scripts
