"""Opt-in (``pytest -m notebooks``): execute every notebook (jupytext .py) at quick scale."""

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_quick_scale(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOSGRAD_NOTEBOOK_SCALE", "quick")
    monkeypatch.setenv("CHAOSGRAD_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runpy.run_path(str(path), run_name="__main__")
    assert any(tmp_path.rglob("*.png")), "a notebook should leave at least one figure"
