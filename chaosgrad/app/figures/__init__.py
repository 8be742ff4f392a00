"""The paper's figures, one module per figure: run the experiment through the public API,
save raw results (.npz + .json metadata), and draw from the saved results alone.

`run_figure(name, scale, out)` resumes from saved parts after an interruption. Under a
multi-process launch (`chaosgrad.distributed`) the parts are split over the processes and
process 0 gathers them, saves and draws (`run_split`).
"""

from __future__ import annotations

import hashlib
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
    "rigid_body": (
        "chaosgrad.app.figures.rigid_body",
        "Figure 2: Brax Ant (loss slices, smoothing, gradient variance)",
    ),
    "spectra": (
        "chaosgrad.app.figures.spectra",
        "Figure 5: Jacobian spectra of the closed-loop Brax Ant at two inits",
    ),
    "truncation": (
        "chaosgrad.app.figures.truncation",
        "Figure 6: training a policy by backprop with the gradient stopped every t "
        "(quick: inverted_double_pendulum; paper: Ant)",
    ),
    "learned_optimizer": (
        "chaosgrad.app.figures.learned_optimizer",
        "Figure 3: meta-learning a learned optimizer (loss slices, variance)",
    ),
    "packing": (
        "chaosgrad.app.figures.packing",
        "Figure 4: jax-md packing (energy vs diameter, gradient variance)",
    ),
    "learning_rate": (
        "chaosgrad.app.figures.learning_rate",
        "Beyond the paper: the learning rate where SGD turns chaotic; estimators",
    ),
    "lopt_estimators": (
        "chaosgrad.app.figures.lopt_estimators",
        "Beyond the paper: estimators of the learned-optimizer meta-gradient "
        "vs unroll length, with 95% intervals",
    ),
    "lopt_meta_training": (
        "chaosgrad.app.figures.lopt_meta_training",
        "Beyond the paper: meta-training a learned optimizer with PES, "
        "truncated backprop, ES and backprop; against tuned Adam/SGD/momentum",
    ),
    "lopt_self_training": (
        "chaosgrad.app.figures.lopt_self_training",
        "Beyond the paper: a meta-trained learned optimizer as the outer optimizer that "
        "meta-trains a fresh copy of itself, against tuned Adam at equal compute",
    ),
    "lopt_generalization": (
        "chaosgrad.app.figures.lopt_generalization",
        "Beyond the paper: learned optimizers meta-trained on the task family against "
        "family- and per-task-tuned Adam on its held-out members, at T and 10 T",
    ),
    "perturbation": (
        "chaosgrad.app.figures.perturbation",
        "Figure 7: error of X⁰(Π D_i)X⁰⁻¹ for maps X_i D_i X_i⁻¹ whose "
        "eigenvectors drift, X_{i+1} = X_i + ε",
    ),
    "state_perturbation": (
        "chaosgrad.app.figures.state_perturbation",
        "Appendix oracle (not a numbered figure): MSE after a state "
        "perturbation ε along each eigenvector (FTCS heat)",
    ),
    "linear": (
        "chaosgrad.app.figures.linear",
        "Appendix (not a numbered figure): gradient norms of linear maps and FTCS heat, "
        "the FTCS leading exponent vs r",
    ),
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
    out: dict[str, str | None] = {"python": platform.python_version()}
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
    # a package on disk has a __file__
    roots = [Path(m.__file__).parent for m in (chaosgrad, systems, estimators)]  # type: ignore[arg-type]
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
    text = json.dumps(
        jsonable(
            {
                "figure": name,
                "scale": scale,
                "size": size,
                "chaosgrad": __version__,
                "code": code_hash(),
            }
        )[0],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PART_SECONDS = "_part_seconds"


PART_DIGEST = "_part_sha256"
FORCE = "pass --force to recompute it"


def arrays_digest(arrays: dict) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[k]))
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_part(path: Path, arrays: dict, seconds: float | None = None) -> None:
    """Save a part with its digest (and the seconds it took, when known)."""
    extra = {} if seconds is None else {PART_SECONDS: np.asarray(seconds)}
    body = {**arrays, **extra}
    save_npz(path, {**body, PART_DIGEST: np.asarray(arrays_digest(body))})


def read_part(path: Path) -> tuple[dict, float] | None:
    """A saved part's arrays (as the experiment made them) and the seconds it took to make
    (0 for a part saved without them); None for a part saved without a digest (by an older
    chaosgrad: it is recomputed). A damaged part, or one whose contents do not match its
    digest (edited, or of another shape), is an InputError naming it and ``--force``."""
    try:
        arrays = load_npz(path)
    except InputError:
        raise InputError(
            f"the saved part {path} is damaged (not a readable .npz archive); {FORCE}"
        ) from None
    digest = arrays.pop(PART_DIGEST, None)
    if digest is None:
        return None
    if digest.shape != () or str(digest) != arrays_digest(arrays):
        raise InputError(
            f"the saved part {path} does not match its digest (damaged or edited); {FORCE}"
        )
    try:
        seconds = float(arrays.pop(PART_SECONDS, 0.0))
    except (TypeError, ValueError):
        seconds = 0.0
    return arrays, seconds


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
        saved = read_part(path) if path.exists() and not self.force else None
        if saved is not None:
            self.reused += 1
            arrays, seconds = saved
            self.reused_seconds += seconds
            return arrays
        t0 = time.perf_counter()
        arrays = {k: np.asarray(v) for k, v in fn().items()}
        write_part(path, arrays, time.perf_counter() - t0)
        return arrays


class Deferred(Exception):
    """A part that another process computes was needed before it arrived."""


class Pending:
    """Stands for a part (or an entry of one) that another process is computing: it may be
    stored and indexed, and anything that needs its values raises `Deferred`."""

    def __init__(self, key: str):
        self.key = key

    def __getitem__(self, item):
        return Pending(f"{self.key}[{item!r}]")

    def _defer(self, *args, **kwargs):
        raise Deferred(self.key)

    __array__ = __float__ = __int__ = __index__ = __len__ = __iter__ = __bool__ = _defer
    items = keys = values = get = _defer


class SplitStore(Store):
    """A `Store` for one process of several: part i (in the order the experiment asks for
    them) is computed by process i mod P, by that process alone (`distributed.local_only`);
    a part another process owns is its value when it has arrived (``cache``), else a
    `Pending`. Only process 0 reads and writes the parts folder."""

    def __init__(self, folder: Path, scale: str, config: str, force: bool, cache: dict):
        from chaosgrad import distributed

        self.rank, self.count = distributed.process_index(), distributed.process_count()
        if self.rank == 0:
            super().__init__(folder, scale, config, force)
        else:
            # other processes never touch the folder
            self.folder, self.scale, self.force, self.reused = None, scale, force, 0  # type: ignore[assignment]
            self.prefix = f"{scale}-{config}" if config else scale
        self.cache = cache
        self.new: dict = {}
        self.index = 0
        self.pending = 0

    def part(self, key: str, fn) -> dict:
        """The arrays of part ``key``: from the cache, computed here, or `Pending`."""
        from chaosgrad import distributed

        i, self.index = self.index, self.index + 1
        if key in self.cache:
            return self.cache[key]
        if i % self.count != self.rank:
            self.pending += 1
            return Pending(key)  # type: ignore[return-value]  # stands in until it arrives
        with distributed.local_only():
            if self.rank == 0:
                arrays = super().part(key, fn)
            else:
                arrays = {k: np.asarray(v) for k, v in fn().items()}
        self.cache[key] = self.new[key] = arrays
        return arrays

    def keep(self, key: str, arrays: dict) -> None:
        """Save a part another process made (process 0 only), so a resumed run has it."""
        if self.rank == 0:
            write_part(self.folder / f"{self.prefix}-{key}.npz", arrays)

    def saved_parts(self) -> dict:
        """The parts process 0 finds in its folder under this configuration (none with
        ``force``): they are sent to every process before any work starts."""
        if self.rank != 0 or self.force:
            return {}
        head = f"{self.prefix}-"
        found = {
            p.name[len(head) : -len(".npz")]: read_part(p)
            for p in sorted(self.folder.glob(f"{head}*.npz"))
        }
        return {k: v[0] for k, v in found.items() if v is not None}


def _pack(status: str, error: str, parts: dict) -> bytes:
    """One process's report of a pass: its status, its error and its new parts, as npz."""
    import io as _io

    arrays = {f"{k}::{n}": np.asarray(v) for k, d in parts.items() for n, v in d.items()}
    arrays["__status__"] = np.asarray(
        json.dumps({"status": status, "error": error, "keys": sorted(parts)})
    )
    buf = _io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # mypy matches **arrays to allow_pickle
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[dict, dict]:
    import io as _io

    with np.load(_io.BytesIO(data), allow_pickle=False) as z:
        head = json.loads(str(z["__status__"]))
        parts: dict = {k: {} for k in head["keys"]}
        for name in z.files:
            if name != "__status__":
                k, n = name.split("::", 1)
                parts[k][n] = z[name]
    return head, parts


def run_split(
    name: str, mod, scale: str, store_args: tuple[Path, str, str, bool], progress
) -> tuple | None:
    """Run experiment ``mod`` with its parts split over the processes of the launch.

    In passes: every process runs the experiment, computing its own parts and standing in
    `Pending` for the others'; a pass ends when the experiment finishes or needs a part it
    does not have yet. Then every process sends the parts it made to every other. The
    first part still missing is always one its owner can compute (all parts before it have
    arrived), so each pass makes progress; parts used only after a loop over them are all
    made in one pass. Returns process 0's ((results, meta), number of parts it loaded from
    its folder), None elsewhere. An error on any process stops every process with its
    message.
    """
    from chaosgrad import distributed

    cache: dict = {}
    first = SplitStore(*store_args, cache)

    def exchange(status: str, error: str, parts: dict) -> list[dict]:
        heads = []
        for blob in distributed.allgather_bytes(_pack(status, error, parts)):
            head, got = _unpack(blob)
            for k, v in got.items():
                if k not in cache:
                    first.keep(k, v)
                    cache[k] = v
            heads.append(head)
        return heads

    saved = first.saved_parts()
    exchange("start", "", saved)
    while True:
        store = SplitStore(*store_args, cache)
        status, error, result = "done", "", None
        try:
            result = mod.run(scale, store, progress if store.rank == 0 else False)
        except Exception as e:  # noqa: BLE001 - reported to every process below
            if store.pending:
                status = "deferred"  # it needed a part that is on its way
            else:
                status, error = "error", f"{type(e).__name__}: {e}"
        heads = exchange(status, error, store.new)
        failed = [(i, h["error"]) for i, h in enumerate(heads) if h["status"] == "error"]
        if failed:
            i, msg = failed[0]
            raise InputError(f"figure {name} failed on process {i}: {msg}")
        if heads[0]["status"] == "done":
            return (result, len(saved)) if store.rank == 0 else None
        if not any(h["keys"] for h in heads):
            raise InputError(
                f"figure {name}: a pass over the processes made no part; the "
                "experiment asks for its parts in a different order on "
                "different processes"
            )


def _saved_meta(folder: Path, config: str, force: bool) -> bool:
    """Whether the saved results in ``folder`` are reusable: made under ``config``, and
    ``results.npz`` matching the digest in ``meta.json``. Damaged files are an InputError
    naming ``--force`` (which does not read them at all)."""
    meta_path, res_path = folder / "meta.json", folder / "results.npz"
    if force or not (meta_path.exists() and res_path.exists()):
        return False
    try:
        saved = read_json(meta_path)
    except InputError:
        raise InputError(f"the saved {meta_path} is damaged (not readable JSON); {FORCE}") from None
    if not isinstance(saved, dict):
        raise InputError(f"the saved {meta_path} is damaged (not a JSON object); {FORCE}")
    if saved.get("config_hash") != config:
        return False
    digest = saved.get("results_sha256")
    if digest is None:
        return False  # saved by an older chaosgrad: recomputed
    try:
        arrays = load_npz(res_path)
    except InputError:
        raise InputError(
            f"the saved {res_path} is damaged (not a readable .npz archive); {FORCE}"
        ) from None
    if digest != arrays_digest(arrays):
        raise InputError(
            f"the saved {res_path} does not match the digest in {meta_path} "
            f"(damaged or edited); {FORCE}"
        )
    return True


def load(name: str, out: str | os.PathLike) -> tuple[dict, dict]:
    """The saved results and metadata of figure ``name`` under ``out``."""
    folder = Path(out) / name
    return load_npz(folder / "results.npz"), read_json(folder / "meta.json")


def run_figure(
    name: str,
    scale: str = "quick",
    out: str | os.PathLike = "figs",
    *,
    force: bool = False,
    progress: bool | None = None,
) -> Path | None:
    """Run (or resume) figure ``name``'s experiment at ``scale``, save it, draw the PNG.

    Results and parts saved under the same configuration (`config_hash`: scale, sizes,
    chaosgrad version) are reused unless ``force``, which recomputes everything; only
    drawing is repeated. Returns the PNG's path.

    Under a multi-process launch every process calls it alike: the parts are split over the
    processes (`run_split`), process 0 alone reads and writes ``out`` and draws, and the
    others return None.
    """
    from chaosgrad import distributed

    if scale not in SCALES:
        raise InputError(f"unknown scale {scale!r}; accepted: {', '.join(SCALES)}")
    mod = _module(name)
    folder = Path(out) / name
    meta_path = folder / "meta.json"
    config = config_hash(name, scale)
    main = distributed.is_main_process()
    reuse = False
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        reuse = _saved_meta(folder, config, force)
    # Process 0's folder decides, for every process: all run the experiment, or none.
    reuse = distributed.broadcast_text("reuse" if reuse else "run") == "reuse"
    if not main:
        if not reuse:
            run_split(name, mod, scale, (folder, scale, config, force), progress)
        return None
    if reuse:
        results, meta = load(name, out)
    else:
        t0 = time.perf_counter()
        if distributed.process_count() > 1:
            (results, meta), reused = run_split(  # type: ignore[misc]  # process 0: not None
                name, mod, scale, (folder, scale, config, force), progress
            )
            reused_seconds = 0.0
        else:
            store = Store(folder, scale, config, force=force)
            results, meta = mod.run(scale, store, progress)
            reused, reused_seconds = store.reused, store.reused_seconds
        seconds = time.perf_counter() - t0
        # seconds: this run; compute_seconds: plus what the reused parts took when made
        meta = {
            "figure": name,
            "title": FIGURES[name][1],
            "scale": scale,
            "config_hash": config,
            "seconds": round(seconds, 2),
            "compute_seconds": round(seconds + reused_seconds, 2),
            "parts_reused": reused,
            "versions": versions(),
            "precision": precision_info(),
            **meta,
            "results_sha256": arrays_digest(results),
        }
        save_npz(folder / "results.npz", results)
        write_json(meta_path, meta)
    png = folder / f"{name}.png"
    mod.draw(results, meta, png)
    return png
