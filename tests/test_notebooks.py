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


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_and_runs_in_jupyter(path, tmp_path, monkeypatch):
    """Each notebook converted to .ipynb (as a user would with jupytext) and executed cell by
    cell through a Jupyter kernel (ipykernel, from the dev extra)."""
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CHAOSGRAD_NOTEBOOK_SCALE", "quick")
    monkeypatch.setenv("CHAOSGRAD_NOTEBOOK_OUT", str(tmp_path / "out"))
    ipynb = tmp_path / f"{path.stem}.ipynb"
    jupytext.write(jupytext.read(path), ipynb)
    nb = nbformat.read(ipynb, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    client = nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any((tmp_path / "out").rglob("*.png")), "a notebook should leave a figure"
