# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # The figures of "Gradients are Not All You Need"
#
# Each figure of Metz, Freeman, Schoenholz & Kachman (arXiv 2111.05803) has a module in
# `chaosgrad/app/figures/` that runs its experiment through chaosgrad's public API, saves the raw
# results (`results.npz` + `meta.json` with versions, precision, seeds and sizes) and draws
# the PNG from the saved results. `run_figure` resumes from saved parts after an
# interruption; the command line equivalent is `chaosgrad figures --all --scale quick`.
#
# At quick scale this notebook makes the fast figures by default; set
# CHAOSGRAD_NOTEBOOK_FIGURES=all (or a comma-separated list) for more.

# %%
import os

import chaosgrad
from chaosgrad.app import figures
from chaosgrad.plots import show_png

chaosgrad.enable_x64()
SCALE = os.environ.get("CHAOSGRAD_NOTEBOOK_SCALE", "quick")
OUT = os.environ.get("CHAOSGRAD_NOTEBOOK_OUT", "out/notebooks") + "/figures"
WANT = os.environ.get("CHAOSGRAD_NOTEBOOK_FIGURES", "toy,linear")
NAMES = figures.names() if WANT == "all" else WANT.split(",")
for name in figures.names():
    print(f"{name:<18} {figures.FIGURES[name][1]}")

# %%
pngs = {}
for name in NAMES:
    pngs[name] = figures.run_figure(name, SCALE, OUT, progress=False)
    print(name, pngs[name])

# %% [markdown]
# ## The figures
# Each was drawn from its saved `results.npz`; re-running this cell redraws without
# re-running the experiments.

# %%
for name, png in pngs.items():
    results, meta = figures.load(name, OUT)
    print(
        f"{meta['title']} — {meta['scale']} scale, {meta['seconds']} s, "
        f"{meta['precision']['backend']}"
    )
    show_png(png)  # inline in Jupyter; the path as a plain script
