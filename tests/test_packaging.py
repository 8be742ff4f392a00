"""The wheel holds code, the MJCF models and py.typed, nothing else (`.ci/wheel_contents.py`,
also run by `make package-check` on the wheel built from the sdist): here the wheel is built
without build isolation from a copy of the sources, in a few seconds."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _wheel_contents():
    spec = importlib.util.spec_from_file_location("wheel_contents", ROOT / ".ci/wheel_contents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wheel_holds_code_models_and_py_typed_only(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # pyproject's build requirement
    src = tmp_path / "src"
    for name in ("chaosgrad", "systems", "estimators"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert _wheel_contents().problems(names) == []
    for name in ("chaosgrad/py.typed", "chaosgrad/systems/mjx_models/cartpole.xml"):
        assert name in names
    assert not [n for n in names if n.endswith((".png", ".json", ".npz")) or "tests/" in n]


def test_the_check_names_what_is_missing_and_what_does_not_belong():
    wc = _wheel_contents()
    names = sorted(wc.expected()) + [
        "chaosgrad-0.2.0.dist-info/METADATA",
        "chaosgrad-0.2.0.dist-info/WHEEL",
        "chaosgrad-0.2.0.dist-info/RECORD",
        "chaosgrad-0.2.0.dist-info/entry_points.txt",
        "chaosgrad-0.2.0.dist-info/licenses/LICENSE",
    ]
    assert wc.problems(names) == []
    bad = [n for n in names if n != "chaosgrad/estimators/es.py"]
    bad += ["docs/gallery/lorenz.png", "chaosgrad/results.json", "tests/test_unroll.py"]
    found = wc.problems(bad)
    assert found == [
        "missing from the wheel: chaosgrad/estimators/es.py",
        "in the wheel but not code, a model or py.typed: chaosgrad/results.json",
        "in the wheel but not code, a model or py.typed: docs/gallery/lorenz.png",
        "in the wheel but not code, a model or py.typed: tests/test_unroll.py",
    ]
