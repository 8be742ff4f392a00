"""What chaosgrad's wheel may hold, and a check of a built one.

The wheel holds code and little else: every module of chaosgrad (with the folders systems/ and
estimators/ as chaosgrad.systems and chaosgrad.estimators), the MJCF models of the MJX systems,
`py.typed` and its own metadata; no images, results, notebooks or tests. A module on disk that
the wheel lacks means a package missing from pyproject's list. Used by .ci/package_check and
tests/test_packaging.py; `python .ci/wheel_contents.py WHEEL` prints what is wrong and exits 1.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> its package path in the wheel (pyproject's package-dir)
FOLDERS = {
    "chaosgrad": "chaosgrad",
    "systems": "chaosgrad/systems",
    "estimators": "chaosgrad/estimators",
}
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt", "licenses/LICENSE"}


def expected(root: Path = ROOT) -> set[str]:
    """The files the wheel must hold, besides its .dist-info folder."""
    out = {"chaosgrad/py.typed"}
    for folder, package in FOLDERS.items():
        for f in (root / folder).rglob("*.py"):
            if "__pycache__" not in f.parts:
                out.add(f"{package}/{f.relative_to(root / folder).as_posix()}")
    out |= {
        f"chaosgrad/systems/mjx_models/{f.name}"
        for f in (root / "systems/mjx_models").glob("*.xml")
    }
    return out


def problems(names: list[str], root: Path = ROOT) -> list[str]:
    """What is wrong with a wheel whose members are ``names``: one line per file missing or
    not allowed; empty when the wheel is right."""
    meta = {n for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    files = set(names) - meta
    want = expected(root)
    out = [f"missing from the wheel: {n}" for n in sorted(want - files)]
    out += [f"in the wheel but not code, a model or py.typed: {n}" for n in sorted(files - want)]
    inside = {n.split("/", 1)[1] for n in meta}
    out += [f"unexpected metadata file: {n}" for n in sorted(inside - DIST_INFO)]
    out += [f"metadata missing: {n}" for n in sorted(DIST_INFO - inside - {"top_level.txt"})]
    return out


def main(argv: list[str]) -> int:
    bad = 0
    for wheel in argv:
        names = zipfile.ZipFile(wheel).namelist()
        found = problems(names)
        for line in found:
            print(f"{wheel}: {line}", file=sys.stderr)
        bad += bool(found)
        if not found:
            print(f"{Path(wheel).name}: {len(names)} files, code, models and py.typed only")
    return 1 if bad or not argv else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
