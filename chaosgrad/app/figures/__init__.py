"""The paper's figures, one module per figure: run the experiment through the public API,
save raw results (.npz + .json metadata), and draw from the saved results alone.

`run_figure(name, scale, out)` resumes from saved parts after an interruption.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from chaosgrad.config import precision_info
from chaosgrad.errors import InputError
from chaosgrad.io import jsonable, load_npz, read_json, save_npz, write_json

FIGURES = {
    "toy": ("chaosgrad.app.figures.toy", "Figure 1: when black-box beats backprop (sin toy)"),
    "rigid_body": ("chaosgrad.app.figures.rigid_body",
                   "Figure 2: Brax Ant (loss slices, smoothing, gradient variance)"),
    "spectra": ("chaosgrad.app.figures.spectra",
                "Figure 5: Jacobian spectra of the closed-loop Brax Ant at two inits"),
    "truncation": ("chaosgrad.app.figures.truncation",
                   "Figure 6: training a policy by backprop with the gradient stopped every t "
                   "(quick: inverted_double_pendulum; paper: Ant)"),
    "learned_optimizer": ("chaosgrad.app.figures.learned_optimizer",
                          "Figure 3: meta-learning a learned optimizer (loss slices, variance)"),
    "packing": ("chaosgrad.app.figures.packing",
                "Figure 4: jax-md packing (energy vs diameter, gradient variance)"),
    "learning_rate": ("chaosgrad.app.figures.learning_rate",
                      "Beyond the paper: the learning rate where SGD turns chaotic; estimators"),
    "lopt_estimators": ("chaosgrad.app.figures.lopt_estimators",
                        "Beyond the paper: estimators of the learned-optimizer meta-gradient "
                        "vs unroll length, with 95% intervals"),
    "lopt_meta_training": ("chaosgrad.app.figures.lopt_meta_training",
                           "Beyond the paper: meta-training a learned optimizer with PES, "
                           "truncated backprop, ES and backprop; against tuned Adam/SGD/momentum"),
    "perturbation": ("chaosgrad.app.figures.perturbation",
                     "Figure 7: MSE after a perturbation ε along each eigenvector (FTCS heat)"),
    "linear": ("chaosgrad.app.figures.linear",
               "Appendix (not a numbered figure): gradient norms of linear maps and FTCS heat, "
               "the FTCS leading exponent vs r"),
}
SCALES = ("quick", "paper")


def names() -> list[str]:
    """The figure names `chaosgrad figures` accepts."""
    return list(FIGURES)


def _module(name: str):
    if name not in FIGURES:
        raise InputError(f"unknown figure {name!r}; accepted: {', '.join(FIGURES)} (or --all)")
    return importlib.import_module(FIGURES[name][0])


def versions() -> dict:
    """Versions of the packages a result depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "numpy", "brax", "jax-md", "optax", "chaosgrad"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def code_hash() -> str:
    """A short hash of chaosgrad's own source (the library, ``chaosgrad.systems`` and
    ``chaosgrad.estimators``: every ``.py`` file), so that saved figure parts made by other
    code are never reused, even within one version."""
    import hashlib

    import chaosgrad
    from chaosgrad import estimators, systems

    h = hashlib.sha256()
    roots = [Path(m.__file__).parent for m in (chaosgrad, systems, estimators)]
    files = sorted({f.resolve() for r in roots for f in r.rglob("*.py")})
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def config_hash(name: str, scale: str) -> str:
    """A short hash of what figure ``name``'s results depend on: the scale, the figure's size
    settings at that scale, the chaosgrad version and its source (`code_hash`). Saved parts
    and results are reused only under the same hash, so a changed configuration, release or
    edited code never reuses stale ones; an interrupted run of the same code resumes.
    """
    import hashlib

    from chaosgrad import __version__

    size = getattr(_module(name), "SIZES", {}).get(scale)
    text = json.dumps(jsonable({"figure": name, "scale": scale, "size": size,
                                "chaosgrad": __version__, "code": code_hash()})[0],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PART_SECONDS = "_part_seconds"


class Store:
    """Saved parts of one experiment, so an interrupted run resumes where it stopped.

    ``store.part(key, fn)`` returns the arrays ``fn()`` made, from
    ``parts/<scale>-<config>-<key>.npz`` when an earlier run saved them under the same
    configuration hash (see `config_hash`), else runs ``fn`` and saves them atomically.
    With ``force`` every part is recomputed. A damaged part is an InputError naming it.
    """

    def __init__(self, folder: Path, scale: str, config: str = "", force: bool = False):
        self.folder = Path(folder) / "parts"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scale = scale
        self.prefix = f"{scale}-{config}" if config else scale
        self.force = force
        self.reused = 0
        self.reused_seconds = 0.0  # what the reused parts took to compute, when saved

    def part(self, key: str, fn) -> dict:
        """The arrays of part ``key`` (computed once, then loaded). Each part also saves the
        seconds it took (``_part_seconds``, not returned), so a figure rebuilt from parts
        still reports what it cost in all."""
        path = self.folder / f"{self.prefix}-{key}.npz"
        if path.exists() and not self.force:
            self.reused += 1
            arrays = load_npz(path)
            self.reused_seconds += float(arrays.pop(PART_SECONDS, 0.0))
            return arrays
        t0 = time.perf_counter()
        arrays = {k: np.asarray(v) for k, v in fn().items()}
        save_npz(path, {**arrays, PART_SECONDS: np.asarray(time.perf_counter() - t0)})
        return arrays


def load(name: str, out: str | os.PathLike) -> tuple[dict, dict]:
    """The saved results and metadata of figure ``name`` under ``out``."""
    folder = Path(out) / name
    return load_npz(folder / "results.npz"), read_json(folder / "meta.json")


def run_figure(name: str, scale: str = "quick", out: str | os.PathLike = "figs", *,
               force: bool = False, progress: bool | None = None) -> Path:
    """Run (or resume) figure ``name``'s experiment at ``scale``, save it, draw the PNG.

    Results and parts saved under the same configuration (`config_hash`: scale, sizes,
    chaosgrad version) are reused unless ``force``, which recomputes everything; only
    drawing is repeated. Returns the PNG's path.
    """
    if scale not in SCALES:
        raise InputError(f"unknown scale {scale!r}; accepted: {', '.join(SCALES)}")
    mod = _module(name)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    config = config_hash(name, scale)
    have = meta_path.exists() and (folder / "results.npz").exists()
    saved = read_json(meta_path) if have else None
    if have and not force and isinstance(saved, dict) and saved.get("config_hash") == config:
        results, meta = load(name, out)
    else:
        t0 = time.perf_counter()
        store = Store(folder, scale, config, force=force)
        results, meta = mod.run(scale, store, progress)
        seconds = time.perf_counter() - t0
        # seconds: this run; compute_seconds: plus what the reused parts took when made
        meta = {"figure": name, "title": FIGURES[name][1], "scale": scale,
                "config_hash": config, "seconds": round(seconds, 2),
                "compute_seconds": round(seconds + store.reused_seconds, 2),
                "parts_reused": store.reused,
                "versions": versions(), "precision": precision_info(), **meta}
        save_npz(folder / "results.npz", results)
        write_json(meta_path, meta)
    png = folder / f"{name}.png"
    mod.draw(results, meta, png)
    return png
