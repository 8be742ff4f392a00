"""Beyond the paper: do learned optimizers meta-trained on the task family generalise to its
held-out members? The per-parameter MLP and the hierarchical (LSTM) optimizer, each meta-trained
several times with the estimator `compare` recommends at a rugged horizon T and with PES,
against Adam tuned for the family and per task, on every held-out member at T and at 10 T.

The horizon's ruggedness (the roughness of a meta-loss slice at the initial θ) and the estimator
choice are measured inside the study and recorded in its meta.json, so the page's words about
them follow saved numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.app.figures import lopt_meta_training as lm

SIZES: dict[str, dict[str, Any]] = {
    # quick: 2,010 s measured on a quiet 2-core CPU (the rule chose T = 100 at step scale
    # 0.01; the runs of one optimizer and estimator share one compiled training step; peak
    # 48,000 memory mappings, under Linux's default limit of 65,530). The conv members are left
    # out (~800 µs per inner step against ~50 for an MLP: vmapped particles run every kind's
    # branch, so one conv slot would more than double every run).
    # The study measures the "horizon_candidates" [T, step scale] in order and runs at the
    # first whose meta-loss is rugged (`choose_horizon`).
    "quick": {
        "horizon_candidates": [[50, 3e-3], [50, 1e-2], [100, 3e-3], [100, 1e-2]],
        "window": 10,
        "runs": 3,
        "budget": 45_000,  # forward-step equivalents per run: 37 backprop steps at T = 100
        "tune_budget": 10_000,
        "outer_lrs": [3e-3],
        "eval_seeds": 8,
        "heldout_seeds": 2,
        "tune_seeds": 2,
        "lr_grid": [1e-4, 1.0, 13],
        "list_k": 5,
        "list_candidates": 16,
        "pairs": 8,
        "particles": 8,
        "samples": 4,
        "evals": 8,
        "boot": 2000,
        "dtype": "float32",
        "task": {
            "task": "family",
            "split": "meta_train",
            "kinds": "mlp,quad,rnn",
            "batch_size": 32,
        },
        "optimizers": ["mlp", "lstm"],
        "candidates": ["backprop", "tbptt", "es", "pes"],
        "compare_samples": 8,
        "compare_population": 8,
        "compare_reference_batches": 40,
        "slice_points": 21,
        "slice_keys": 6,
        "slice_range": 0.01,
    },
    # paper: sized for one GPU (every kind, conv included; 5 runs; the outer learning rate
    # tuned per optimizer and estimator over three values)
    "paper": {
        "horizon_candidates": [[100, 3e-3], [100, 1e-2], [200, 3e-3], [200, 1e-2]],
        "window": 10,
        "runs": 5,
        "budget": 2_000_000,
        "tune_budget": 200_000,
        "outer_lrs": [1e-3, 3e-3, 1e-2],
        "eval_seeds": 16,
        "heldout_seeds": 8,
        "tune_seeds": 8,
        "lr_grid": [1e-5, 1.0, 21],
        "list_k": 10,
        "list_candidates": 256,
        "pairs": 32,
        "particles": 32,
        "samples": 16,
        "evals": 40,
        "boot": 4000,
        "dtype": "float32",
        "task": {"task": "family", "split": "meta_train", "kinds": "all", "batch_size": 32},
        "optimizers": ["mlp", "lstm"],
        "candidates": ["backprop", "tbptt", "es", "pes", "nres"],
        "compare_samples": 16,
        "compare_population": 16,
        "compare_reference_batches": None,
        "slice_points": 41,
        "slice_keys": 16,
        "slice_range": 0.01,
    },
}
# Each scale's "horizon" and "lopt_lr" before the choice (what the compare settings' test
# reads) are its first candidate's: set here, not written twice.
for _size in SIZES.values():
    _size["horizon"], _size["lopt_lr"] = _size["horizon_candidates"][0]
SEED = 0
EVAL_SEED = lm.HELDOUT_OFFSET  # held-out runs: keys from PRNGKey(EVAL_SEED) (`member_curves`)
TUNE_SEED = lm.TUNE_OFFSET  # Adam's tuning runs (family and per task) and the list's
COMPARISON = "pes"  # always meta-trained beside the recommended estimator
COMPARISON_IF_PES = "tbptt"  # ... or this one, when PES is the recommendation
BASELINES = ("family_adam", "task_adam", "adam_list")
BASELINE_TEXT = {
    "family_adam": "Adam tuned for the family",
    "task_adam": "Adam tuned per task",
    "adam_list": "Adam list, best of first k",
}


def heldout_tasks(size: dict) -> list[int]:
    """The held-out members evaluated: every member of the "held_out" split whose kind is in
    ``size["task"]["kinds"]`` (in increasing index order)."""
    from chaosgrad.systems.lopt import family

    kinds = family.parse_kinds(size["task"].get("kinds", "all"))
    return [t["index"] for t in family.list_tasks("held_out") if t["kind"] in kinds]


def train_tasks(size: dict) -> list[int]:
    """The meta-training members of the kinds in ``size["task"]["kinds"]``: Adam's family
    tuning and the list are fitted on these, the learned optimizers meta-trained on them."""
    from chaosgrad.systems.lopt import family

    kinds = family.parse_kinds(size["task"].get("kinds", "all"))
    return [t["index"] for t in family.list_tasks("meta_train") if t["kind"] in kinds]


def sized(size: dict, optimizer: str) -> dict:
    """``size`` for meta-training ``optimizer`` (`lopt_meta_training.learned_of`)."""
    return dict(size, optimizer=optimizer)


def final_loss(curves: np.ndarray, horizon: int) -> np.ndarray:
    """A run's final loss at ``horizon`` from its per-step log losses (last axis): the mean
    over the last tenth of the first ``horizon`` steps (at least one), +inf when one of them
    is non-finite — `chaosgrad.systems.lopt.baselines.final_losses`' rule."""
    c = np.asarray(curves, np.float64)[..., :horizon]
    tail = c[..., -max(1, horizon // 10) :]
    return np.where(np.all(np.isfinite(tail), axis=-1), tail.mean(axis=-1), np.inf)


def per_task(curves: np.ndarray, horizon: int) -> np.ndarray:
    """Final loss at ``horizon`` per task: the mean over seeds (axis −2 of the curves, which
    are (..., tasks, seeds, steps)) of `final_loss`; +inf when any seed's is."""
    return final_loss(curves, horizon).mean(axis=-1)


def beats(lopt: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """1 where the learned optimizer's final loss (runs, tasks) is strictly below the
    baseline's (tasks,), else 0: a tie, a diverged learned optimizer (+inf or NaN) or a
    diverged baseline against a diverged learned optimizer count as not beating it."""
    a = np.asarray(lopt, np.float64)
    b = np.broadcast_to(np.asarray(baseline, np.float64), a.shape[-1:])
    with np.errstate(invalid="ignore"):
        return (a < b[None]).astype(np.float64)


def fraction_interval(win: np.ndarray, boot: int, seed: int = 0) -> dict:
    """The fraction of held-out tasks won, averaged over runs, with a 95% interval from a
    hierarchical bootstrap over runs, then tasks (`lopt_meta_training.hierarchical_interval`)."""
    m, lo, hi = lm.hierarchical_interval(np.asarray(win, np.float64), boot, seed=seed)
    return {"fraction": m, "interval": [lo, hi]}


def diverged(curves: np.ndarray, horizon: int) -> np.ndarray:
    """True for a run (last axis: steps) whose first ``horizon`` log losses hold a non-finite
    value, or whose final loss there (`final_loss`) is above its initial log loss (step 0)."""
    c = np.asarray(curves, np.float64)[..., :horizon]
    bad = ~np.all(np.isfinite(c), axis=-1)
    with np.errstate(invalid="ignore"):
        return bad | (final_loss(c, horizon) > c[..., 0])


def median_curve(curves: np.ndarray) -> np.ndarray:
    """The median over tasks of the normalised loss log(L_t / L_0), averaged over seeds, per
    leading entry (run): curves (runs, tasks, seeds, steps) -> (runs, steps). A non-finite
    value counts as +inf (a diverged task sits above every finite one, never dropped)."""
    c = np.asarray(curves, np.float64)
    norm = np.nan_to_num(c - c[..., :1], nan=np.inf, posinf=np.inf, neginf=np.inf)
    with np.errstate(invalid="ignore"):
        return np.median(norm.mean(axis=-2), axis=-2)


def slice_roughness(optimizer: str, size: dict) -> dict:
    """The meta-loss at T along a random line θ0 + s·d through the first run's initial θ
    (d Gaussian of norm = its size, as in Figure 3; s in ±``slice_range``), one slice per
    run key (each key draws a meta-training member, its initialisation and minibatches)."""
    from chaosgrad.systems.lopt.slices import meta_loss_along_line

    system = lm.make_system(optimizer, size, lr=size["lopt_lr"])
    r = size["slice_range"]
    keys = lm._keys(SEED + 7, size["slice_keys"])
    shifts = np.linspace(-r, r, size["slice_points"])
    y = meta_loss_along_line(
        system,
        lm.theta0_of(0, sized(size, optimizer)),
        shifts=shifts,
        steps=size["horizon"],
        key=keys,
    )
    return {"shifts": shifts, "losses": np.asarray(y, np.float64)}


def slice_report(losses: np.ndarray) -> dict:
    """Per-key roughness of the slices (`chaosgrad.roughness.roughness`), their median, and
    whether the median is above the smooth level: the rule that calls the horizon rugged."""
    from chaosgrad.roughness import SMOOTH_LEVEL, roughness

    per = [roughness(losses[:, i]) for i in range(losses.shape[1])]
    finite = [v for v in per if np.isfinite(v)]
    med = float(np.median(finite)) if finite else math.nan
    return {
        "roughness": per,
        "median_roughness": med,
        "nonfinite_slices": len(per) - len(finite),
        "smooth_level": SMOOTH_LEVEL,
        "rugged": bool(np.isfinite(med) and med > SMOOTH_LEVEL),
        "rule": "the horizon T is rugged when the median over run keys of the roughness of "
        "the T-step meta-loss slice (RMS about a degree-4 fit over the slice's range) is above "
        f"chaosgrad.roughness.SMOOTH_LEVEL ({SMOOTH_LEVEL}); slices with a non-finite value "
        "are counted and left out of the median",
    }


def candidate_tag(T: int, lr: float) -> str:
    """The name of a (horizon, step scale) candidate in part keys and folders."""
    return f"T{int(T)}-lr{lr:g}"


def choose_horizon(size: dict, store) -> tuple[dict, dict, dict]:
    """The horizon and step scale the study runs at: the first of ``size["horizon_candidates"]``
    (pairs [T, the learned optimizers' step scale], in increasing cost) at which the meta-loss
    of every learned optimizer in ``size["optimizers"]`` is rugged by `slice_report`'s rule;
    the last candidate, recorded as not rugged, when none is. Candidates after the chosen one
    are not measured. Returns the size for the chosen candidate, a record of every measured
    candidate (for the meta.json) and the chosen candidate's slices (arrays)."""
    measured = []
    cands = size["horizon_candidates"]
    for i, (T, lr) in enumerate(cands):
        s = dict(size, horizon=int(T), lopt_lr=float(lr))
        reports, sl_arrays = {}, {}
        for opt in size["optimizers"]:
            sl = store.part(
                f"slice-{opt}-{candidate_tag(T, lr)}", lambda opt=opt, s=s: slice_roughness(opt, s)
            )
            reports[opt] = slice_report(sl["losses"])
            sl_arrays[f"slice_{opt}"] = sl["losses"]
            sl_arrays["slice_shifts"] = sl["shifts"]
        rugged = all(r["rugged"] for r in reports.values())
        measured.append({"horizon": int(T), "lopt_lr": float(lr), "rugged": rugged, **reports})
        if rugged or i == len(cands) - 1:
            return (
                s,
                {
                    "candidates": measured,
                    "chosen": {"horizon": int(T), "lopt_lr": float(lr), "rugged": rugged},
                    "rule": "the first candidate [T, step scale] in the listed order at which "
                    "every learned optimizer's meta-loss is rugged (median slice roughness "
                    "above the smooth level); the last one, not rugged, when none is",
                },
                sl_arrays,
            )
    raise ValueError("size['horizon_candidates'] is empty; give at least one [T, step scale]")


def choose_estimator(size: dict, progress) -> dict:
    """`chaosgrad.compare` of the candidate estimators on the per-parameter MLP's family
    system at T at the first run's initial θ, each configured as it would be meta-trained
    (`lopt_meta_training.estimator_params`). Returns the comparison as JSON text."""
    from chaosgrad.app.compare import compare, release

    system = lm.make_system("mlp", size, lr=size["lopt_lr"])
    comp = compare(
        system,
        lm.theta0_of(0, sized(size, "mlp")),
        list(size["candidates"]),
        horizon=size["horizon"],
        samples=size["compare_samples"],
        population=size["compare_population"],
        window=size["window"],
        reference_batches=size["compare_reference_batches"],
        params={n: compare_params(n, size) for n in size["candidates"]},
        key=jax.random.PRNGKey(SEED + 11),
        progress=progress,
    )
    assert comp is not None  # one process
    release(system)  # nothing later compares on it: free its compiled estimators
    return {"json": json.dumps(comp.to_json(), default=float)}


def compare_params(name: str, size: dict) -> dict:
    """Estimator ``name``'s settings in the comparison: as it would be meta-trained
    (`lopt_meta_training.estimator_params`), except backprop, which `compare` runs as the
    reparameterisation gradient under its smoothed target (backprop at θ ± σε, σ = 0.01, in
    antithetic pairs): as many unrolls per estimate as backprop's samples."""
    if name == "backprop":
        return {"pairs": max(1, size["samples"] // 2), "sigma": 0.01, "horizon": size["horizon"]}
    return lm.estimator_params(name, size)


def pick(comparison: dict) -> dict:
    """The estimator to meta-train with, from a comparison's JSON: its ``recommended``
    estimator, or, when it recommends none (a tie or a caveat), its best point estimate
    (``ranking[0]``), recorded as such; and the comparison estimator (PES, or truncated
    backprop when PES is the pick)."""
    rec = comparison.get("recommended")
    chosen = rec if rec else comparison["ranking"][0]
    return {
        "estimator": chosen,
        "how": "recommended" if rec else "best point estimate (no recommendation)",
        "comparison": COMPARISON_IF_PES if chosen == COMPARISON else COMPARISON,
        "ranking": comparison["ranking"],
        "tied": comparison.get("tied", []),
        "recommendation": comparison.get("recommendation", ""),
        "relative_error": {
            s["name"]: s["relative_error"] for s in comparison.get("estimators", [])
        },
    }


class _Prefixed:
    """A figure store whose part keys carry a prefix (one per learned optimizer), so
    `lopt_meta_training.tune_outer_lr`'s parts of two optimizers never collide."""

    def __init__(self, store, prefix: str):
        self.store, self.prefix = store, prefix
        self.folder = store.folder / prefix

    def part(self, key: str, fn) -> dict:
        return self.store.part(f"{self.prefix}-{key}", fn)


def meta_train_runs(
    optimizer: str, name: str, size: dict, store, progress
) -> tuple[list[dict], dict]:
    """``size["runs"]`` meta-training runs of ``optimizer`` with estimator ``name`` at equal
    compute (`lopt_meta_training.meta_train_one`); the outer learning rate tuned first when
    ``size["outer_lrs"]`` holds more than one (`lopt_meta_training.tune_outer_lr`)."""
    s = sized(size, optimizer)
    sub = _Prefixed(store, optimizer)
    if len(size["outer_lrs"]) > 1:
        tuned = lm.tune_outer_lr(name, s, sub.folder, progress, sub)
    else:
        tuned = {"outer_lrs": list(size["outer_lrs"]), "best": float(size["outer_lrs"][0])}
    runs = []
    for r in range(size["runs"]):
        part = sub.part(
            f"train-{name}-{r}",
            lambda r=r: lm.meta_train_one(
                name, s, sub.folder, progress, run=r, outer_lr=tuned["best"], budget=size["budget"]
            ),
        )
        cum, taken = lm.compute_seconds(part["step_seconds"])
        runs.append(dict(part, eval_seconds=cum[part["eval_step"]], compile_seconds=taken))
    return runs, tuned


def adam_parts(size: dict, store) -> dict:
    """Adam on the learning-rate grid: tuned once for the meta-training members and per
    held-out member (final loss at T on the tuning seeds), an ordered list of Adam settings
    fitted on the meta-training members, and the held-out curves to 10 T (evaluation seeds)
    of every grid point and every list entry."""
    from chaosgrad.systems.lopt import baselines

    T, dt = size["horizon"], jnp.dtype(size["dtype"])
    lo, hi, n = size["lr_grid"]
    grid = baselines.with_lrs(np.geomspace(lo, hi, int(n)))
    held, train = heldout_tasks(size), train_tasks(size)
    bs = size["task"]["batch_size"]
    common = {"inner_steps": T, "seeds": size["tune_seeds"], "batch_size": bs, "dtype": dt}
    fam = store.part(
        "adam-family",
        lambda: {"losses": baselines.final_losses(grid, train, seed=TUNE_SEED, **common)},
    )["losses"]
    task = store.part(
        "adam-task",
        lambda: {"losses": baselines.final_losses(grid, held, seed=TUNE_SEED + 1, **common)},
    )["losses"]
    lst = store.part(
        "adam-list",
        lambda: dict(
            zip(
                ("settings", "losses"),
                baselines.adam_list(
                    train,
                    k=size["list_k"],
                    candidates=size["list_candidates"],
                    seed=TUNE_SEED + 2,
                    **common,
                ),
                strict=True,
            )
        ),
    )
    run = {"seeds": size["heldout_seeds"], "seed": EVAL_SEED, "batch_size": bs, "dtype": dt}
    curves = store.part(
        "heldout-adam",
        lambda: {
            "grid": baselines.member_curves(
                "adam", baselines.adam_theta(grid), held, 10 * T, **run
            ),
            "list": baselines.member_curves(
                "adam", baselines.adam_theta(lst["settings"]), held, 10 * T, **run
            ),
        },
    )
    return {
        "grid": grid,
        "family_scores": fam,
        "task_scores": task,
        "list_settings": lst["settings"],
        "grid_curves": curves["grid"],
        "list_curves": curves["list"],
    }


def baseline_finals(adam: dict, T: int, k: int) -> dict:
    """Each baseline's final loss per held-out task at T and 10 T, its curves (1, tasks,
    seeds, steps) and its settings: the family-tuned grid point (best mean final loss over
    the meta-training members), each task's best grid point (on its tuning seeds), and the
    list's best of its first ``k`` entries on each task (k trainings per task: the best
    final loss at that horizon among them)."""
    from chaosgrad.systems.lopt import baselines

    g = adam["grid_curves"]  # (grid, tasks, seeds, steps)
    fam = baselines.tune_adam_global(adam["family_scores"])
    per = baselines.tune_adam_per_task(adam["task_scores"])
    cols = np.arange(g.shape[1])
    out = {
        "family_adam": {"curves": g[fam][None], "lr": float(adam["grid"][fam, 0])},
        "task_adam": {"curves": g[per, cols][None], "lr": adam["grid"][per, 0].tolist()},
    }
    for name in out:
        c = out[name]["curves"][0]
        out[name].update(T=per_task(c, T), tenT=per_task(c, 10 * T))
    lst = adam["list_curves"][:k]
    best = {h: per_task(lst, n).min(axis=0) for h, n in (("T", T), ("tenT", 10 * T))}
    pick_T = np.argmin(per_task(lst, T), axis=0)
    out["adam_list"] = {
        "curves": lst[pick_T, cols][None],  # the entry best at T, per task, for the plot
        "settings": np.asarray(adam["list_settings"]).tolist(),
        **best,
    }
    return out


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Measure the horizon's roughness, choose the estimator by `compare`, meta-train each
    learned optimizer with it and with the comparison estimator, tune the Adam baselines, and
    evaluate everything on the held-out members at T and 10 T."""
    from jax.flatten_util import ravel_pytree

    from chaosgrad.systems.lopt import family

    size, horizon_choice, slice_arrays = choose_horizon(SIZES[scale], store)
    # every later part belongs to the chosen candidate: its keys and folders carry its tag
    store = _Prefixed(store, candidate_tag(size["horizon"], size["lopt_lr"]))
    T, boot, n_runs = size["horizon"], size["boot"], size["runs"]
    held = heldout_tasks(size)
    out: dict[str, Any] = dict(slice_arrays)
    slices = {k: v for k, v in horizon_choice["candidates"][-1].items() if k in size["optimizers"]}
    comparison = json.loads(
        str(store.part("compare", lambda: choose_estimator(size, progress))["json"])
    )
    choice = pick(comparison)
    names = [choice["estimator"], choice["comparison"]]
    rows, trained, outer = {}, {}, {}
    for opt in size["optimizers"]:
        s = sized(size, opt)
        unravel = ravel_pytree(lm.theta0_of(0, s))[1]
        for name in names:
            runs, tuned = meta_train_runs(opt, name, size, store, progress)
            row = f"{opt}/{name}"
            trained[row], outer[row] = runs, tuned
            for r, p in enumerate(runs):
                for k in ("eval_fse", "eval_seconds", "eval_meta_loss"):
                    out[f"{row}_r{r}_{k}"] = p[k]
            thetas = jax.vmap(unravel)(jnp.stack([jnp.asarray(p["theta"]) for p in runs]))
            rows[row] = store.part(
                f"heldout-{opt}-{name}",
                lambda opt=opt, th=thetas: {
                    "curves": _lopt_curves(opt, th, held, size),
                },
            )["curves"]
    adam = adam_parts(size, store)
    base = baseline_finals(adam, T, size["list_k"])
    table: dict[str, Any] = {}
    for row, c in rows.items():
        fin = {"T": per_task(c, T), "10T": per_task(c, 10 * T)}
        entry: dict[str, Any] = {}
        for b in BASELINES:
            for h, bh in (("T", "T"), ("10T", "tenT")):
                entry[f"vs_{b}_{h}"] = fraction_interval(beats(fin[h], base[b][bh]), boot)
        div = diverged(c, 10 * T)
        entry["diverged_10T"] = {
            "runs": int(div.sum()),
            "of": int(div.size),
            "tasks": int(np.any(div, axis=(0, 2)).sum()),
            "rule": "a (run, task, seed) diverged when a log loss up to 10 T is non-finite or "
            "its final loss at 10 T is above its initial log loss",
        }
        entry["nonfinite_runs_10T"] = int((~np.all(np.isfinite(c), axis=-1)).sum())
        table[row] = entry
        out[f"curve_{row}"] = median_curve(c)
        out[f"final_{row}_T"] = fin["T"]
        out[f"final_{row}_10T"] = fin["10T"]
    for b in BASELINES:
        out[f"curve_{b}"] = median_curve(base[b]["curves"])
        out[f"final_{b}_T"] = base[b]["T"]
        out[f"final_{b}_10T"] = base[b]["tenT"]
        table[b] = {
            "diverged_10T": int(diverged(base[b]["curves"], 10 * T).sum()),
            "of": int(base[b]["curves"][..., 0].size),
        }
    members = family.members()
    meta = {
        "sizes": size,
        "horizon": T,
        "lopt_lr": size["lopt_lr"],
        "horizon_choice": horizon_choice,
        "slice": slices,
        "estimator_choice": choice,
        "compare": {k: comparison.get(k) for k in ("horizon", "budget", "target", "notes")},
        "estimators": {n: lm.estimator_params(n, size) for n in names},
        "rows": list(rows),
        "fse_per_estimate": {n: lm.fse_per_estimate(n, sized(size, "mlp")) for n in names},
        "budget_fse": size["budget"],
        "backward_cost": lm.BACKWARD_COST,
        "outer_lr": outer,
        "outer_steps": {r: int(trained[r][0]["outer_steps"]) for r in rows},
        "skipped_outer_steps": {r: [int(p["skipped"]) for p in trained[r]] for r in rows},
        "train_seconds": {r: [float(p["eval_seconds"][-1]) for p in trained[r]] for r in rows},
        "compile_seconds": {r: [float(p["compile_seconds"]) for p in trained[r]] for r in rows},
        "table": table,
        "adam": {
            "family_lr": base["family_adam"]["lr"],
            "task_lrs": base["task_adam"]["lr"],
            "list": base["adam_list"]["settings"],
            "list_k": size["list_k"],
            "lr_grid": size["lr_grid"],
        },
        "heldout": {
            "indices": held,
            "names": [members[i]["name"] for i in held],
            "kinds": size["task"]["kinds"],
            "seeds": size["heldout_seeds"],
            "note": "every held-out member of these kinds; runs from PRNGKey"
            f"({EVAL_SEED}) (`baselines.member_curves`: common randomness for every "
            "optimizer); Adam's tuning runs use other keys",
        },
        "meta_train_tasks": len(train_tasks(size)),
        "final_loss": "mean over the last tenth of the steps up to the horizon of "
        "log(max(training loss, 1e-12)), averaged over the held-out seeds; +inf when a value "
        "is non-finite",
        "beats": "the learned optimizer's final loss on the task strictly below the baseline's",
        "intervals": f"95% hierarchical bootstrap: runs, then held-out tasks ({boot} resamples)",
        "goal": {
            r: {
                "most_at_T": bool(table[r]["vs_family_adam_T"]["interval"][0] > 0.5),
                "no_divergence_10T": table[r]["diverged_10T"]["runs"] == 0,
            }
            for r in rows
        },
        "seed": SEED,
        "runs": n_runs,
    }
    out["horizon"] = np.asarray(T)
    out["runs"] = np.asarray(n_runs)
    return out, json.loads(json.dumps(meta, default=float))


def _lopt_curves(optimizer: str, thetas, held: list[int], size: dict) -> np.ndarray:
    """Held-out curves to 10 T of ``optimizer`` at each trained θ: (runs, tasks, seeds, steps)."""
    from chaosgrad.systems.lopt import baselines

    return baselines.member_curves(
        optimizer,
        thetas,
        held,
        10 * size["horizon"],
        seeds=size["heldout_seeds"],
        seed=EVAL_SEED,
        batch_size=size["task"]["batch_size"],
        lr=size["lopt_lr"],
        dtype=jnp.dtype(size["dtype"]),
    )


COLORS = {"mlp": "C0", "lstm": "C3"}
SHORT = {"family_adam": "family Adam", "task_adam": "per-task Adam"}
BASELINE_COLORS = {"family_adam": "k", "task_adam": "0.45", "adam_list": "C2"}


def draw(results: dict, meta: dict, path) -> None:
    """(a) meta-training: the change of the meta-loss on each run's fixed meta-training draws
    (members, initialisations, minibatches) against forward-step equivalents, one line per
    run; (b) the fraction of held-out tasks on which each learned
    optimizer beats family-tuned and per-task-tuned Adam, at T and 10 T, with 95% intervals;
    (c) held-out learning curves to 10 T: the median over tasks of log(L_t / L_0)."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    T, runs = int(results["horizon"]), int(results["runs"])
    rows = meta["rows"]
    est = meta["estimator_choice"]

    def style(row):
        opt, name = row.split("/")
        return COLORS.get(opt, "C4"), "-" if name == est["estimator"] else "--"

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for row in rows:
        color, ls = style(row)
        for r in range(runs):
            y = np.asarray(results[f"{row}_r{r}_eval_meta_loss"], np.float64)
            axes[0].plot(
                results[f"{row}_r{r}_eval_fse"],
                y - y[0],
                ls,
                color=color,
                lw=1,
                alpha=0.7,
                label=row if r == 0 else None,
            )
    axes[0].set_xlabel(f"forward-step equivalents (backward = {meta['backward_cost']:g} forward)")
    axes[0].set_ylabel(f"meta-loss change from θ0 ({T} steps; each run's fixed draws)")
    axes[0].set_title(
        f"(a) meta-training, {runs} runs each; {est['estimator']} "
        f"({est['how'].split(' (')[0]}) vs {est['comparison']}"
    )
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    bars = [(b, h) for b in ("family_adam", "task_adam") for h in ("T", "10T")]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        color, ls = style(row)
        for j, (b, h) in enumerate(bars):
            v = meta["table"][row][f"vs_{b}_{h}"]
            m, (lo, hi) = v["fraction"], v["interval"]
            x = j + (i - (len(rows) - 1) / 2) * width
            axes[1].bar(
                x,
                m,
                width * 0.9,
                color=color,
                alpha=1.0 if ls == "-" else 0.45,
                hatch=None if h == "T" else "//",
                label=row if j == 0 else None,
            )
            if lo is not None and hi is not None:
                axes[1].errorbar(x, m, yerr=[[m - lo], [hi - m]], color="k", capsize=2, lw=1)
    axes[1].axhline(0.5, color="k", lw=0.8, ls=":")
    axes[1].set_xticks(range(len(bars)), [f"vs {SHORT[b]}\nat {h}" for b, h in bars], fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel(f"fraction of {len(meta['heldout']['indices'])} held-out tasks beaten")
    axes[1].set_title("(b) held-out tasks beaten (95% intervals: runs, then tasks)")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3, axis="y")
    steps = np.arange(1, 10 * T + 1)
    for row in rows:
        color, ls = style(row)
        c = results[f"curve_{row}"]
        axes[2].plot(steps, np.mean(c, axis=0), ls, color=color, lw=1.2, label=row)
        axes[2].fill_between(steps, np.min(c, axis=0), np.max(c, axis=0), color=color, alpha=0.15)
    for b in BASELINES:
        axes[2].plot(
            steps,
            results[f"curve_{b}"][0],
            ":",
            color=BASELINE_COLORS[b],
            lw=1.2,
            label=BASELINE_TEXT[b],
        )
    axes[2].axvline(T, color="k", lw=0.8)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("inner step (vertical line: T)")
    axes[2].set_ylabel("median over held-out tasks of log(L_t / L_0)")
    axes[2].set_title(f"(c) held-out learning curves to 10×{T} (band: runs)")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
