"""Beyond the paper: meta-training the per-parameter MLP learned optimizer on digits with PES,
NRES, truncated backprop, ES and backprop at a horizon where the meta-loss is rugged, several
runs per estimator at equal compute (forward-step equivalents that count backward passes,
and seconds), each estimator's outer learning rate tuned first; then every trained optimizer
against Adam, momentum and SGD tuned over their learning rate, momentum and schedule, on
held-out inner seeds at the meta-training horizon and at 10× it, with intervals from a
hierarchical bootstrap (runs, then held-out seeds).
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad import estimators, systems

SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "horizon": 200,
        "window": 10,
        "runs": 5,
        "budget": 60_000,
        "tune_budget": 15_000,
        "outer_lrs": [1e-3, 3e-3, 1e-2],
        "eval_seeds": 4,
        "heldout_seeds": 16,
        "tune_seeds": 8,
        "lr_grid": [1e-4, 10.0, 13],
        "betas": [0.5, 0.9, 0.99],
        "schedules": ["constant", "cosine"],
        "lopt_lr": 0.01,
        "pairs": 4,
        "particles": 8,
        "samples": 4,
        "evals": 8,
        "boot": 2000,
        "dtype": "float32",
        "task": {"task": "digits_mlp", "batch_size": 128},
    },
    "paper": {
        "horizon": 400,
        "window": 20,
        "runs": 8,
        "budget": 2_000_000,
        "tune_budget": 400_000,
        "outer_lrs": [3e-4, 1e-3, 3e-3, 1e-2],
        "eval_seeds": 16,
        "heldout_seeds": 64,
        "tune_seeds": 32,
        "lr_grid": [1e-4, 1.0, 21],
        "betas": [0.5, 0.9, 0.99],
        "schedules": ["constant", "cosine"],
        "lopt_lr": 0.01,
        "pairs": 32,
        "particles": 32,
        "samples": 16,
        "evals": 40,
        "boot": 4000,
        "dtype": "float32",
        "task": {"task": "digits_mlp", "batch_size": 128},
    },
}
ESTIMATORS = ("pes", "nres", "tbptt", "es", "backprop")
BASELINES = ("adam", "momentum", "sgd")
SEED = 0
HELDOUT_OFFSET = 1_000_000  # held-out inner seeds: PRNGKey(HELDOUT_OFFSET + i), never trained on
TUNE_OFFSET = 2_000_000  # baselines and outer learning rates are tuned on these seeds
TUNE_RUN = 1_000  # the meta-training run that tunes each outer learning rate
# A backward step through an inner step costs about two forward steps (the vector-Jacobian
# product re-traverses the step's graph twice: activations' and parameters' cotangents); a
# forward-step equivalent (FSE) counts a differentiated step as 1 + BACKWARD_COST.
BACKWARD_COST = 2.0


def make_system(
    optimizer: str,
    size: dict,
    lr: float | None = None,
    schedule: str = "constant",
    seed: int = SEED,
):
    """Inner training of ``size["task"]`` (the 2×32 ReLU MLP on digits, a fresh minibatch of
    128 per step) for ``size["horizon"]`` steps, per-step loss log(training loss)."""
    return systems.make(
        "lopt",
        optimizer=optimizer,
        log_loss=True,
        inner_steps=size["horizon"],
        dtype=size["dtype"],
        lr=lr,
        seed=seed,
        schedule=schedule,
        **size["task"],
    )


def estimator_params(name: str, size: dict) -> dict:
    """Each estimator's settings (σ = 0.01; truncations of K = ``window`` steps)."""
    h, k = size["horizon"], size["window"]
    return {
        "pes": {"pairs": size["pairs"], "sigma": 0.01, "window": k, "horizon": h},
        "nres": {"pairs": size["pairs"], "sigma": 0.01, "window": k, "horizon": h},
        "tbptt": {"particles": size["particles"], "window": k, "horizon": h},
        "es": {"pairs": size["pairs"], "sigma": 0.01, "horizon": h},
        "backprop": {"samples": size["samples"], "horizon": h},
    }[name]


def steps_per_estimate(name: str, size: dict) -> int:
    """Inner steps one estimate runs (the estimator's ``steps`` trait)."""
    return _built(name, json.dumps(size, sort_keys=True))[1].steps


def fse_per_estimate(name: str, size: dict) -> float:
    """Forward-step equivalents of one estimate: an estimator that differentiates through
    the unroll (its ``reverse_mode`` trait) pays each step forward and backward
    (1 + `BACKWARD_COST`), a black-box one forward only."""
    est = _built(name, json.dumps(size, sort_keys=True))[1]
    return est.steps * (1 + BACKWARD_COST) if est.reverse_mode else float(est.steps)


@functools.lru_cache(maxsize=16)
def _jit_curves(system, steps: int):
    """Compiled ``(thetas, keys) -> per-step losses (n_theta, n_keys, steps)``."""
    from chaosgrad.unroll import pure_unroll

    def one(theta, key):
        return pure_unroll(system, theta, key, steps)[1]

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))


def inner_curves(system, thetas, keys, steps: int) -> np.ndarray:
    """Per-step losses of inner training for a batch of θ (leading axis) and of run keys."""
    return np.asarray(_jit_curves(system, int(steps))(thetas, keys), np.float64)


def _keys(offset: int, n: int) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(offset + i) for i in range(n)])


def hierarchical_interval(x: np.ndarray, boot: int, seed: int = 0, level: float = 0.95):
    """The mean of ``x`` (runs, seeds) with a percentile interval from a hierarchical
    bootstrap: resample runs with replacement, then seeds within each resampled run. One
    run: seeds only. Non-finite values make the mean non-finite (never dropped).
    Returns (mean, low, high)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[None]
    mean = float(x.mean())
    if not np.isfinite(mean):
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    r, s = x.shape
    runs = rng.integers(0, r, (boot, r)) if r > 1 else np.zeros((boot, 1), int)
    seeds = rng.integers(0, s, (boot, r, s))
    means = x[runs[:, :, None], seeds].mean(axis=(1, 2))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(lo), float(hi)


def per_seed(curves: np.ndarray, horizon: int) -> np.ndarray:
    """Meta-loss per curve: mean log-loss over the first ``horizon`` steps (last axis)."""
    return curves[..., :horizon].mean(axis=-1)


def summarize(curves: np.ndarray, horizon: int, boot: int) -> dict:
    """Meta-loss at ``horizon`` and the final log-loss (mean of its last tenth), each with a
    hierarchical interval over (runs, seeds); non-finite seeds counted and the first
    non-finite step named."""
    c = np.asarray(curves, np.float64)
    if c.ndim == 2:
        c = c[None]
    c = c[..., :horizon]
    tail = max(1, horizon // 10)
    bad = ~np.isfinite(c)
    first_bad = [int(np.argmax(row)) + 1 for row in bad.reshape(-1, horizon) if row.any()]
    meta = hierarchical_interval(c.mean(axis=-1), boot)
    final = hierarchical_interval(c[..., -tail:].mean(axis=-1), boot, seed=1)
    return {
        "meta_loss": meta[0],
        "meta_loss_interval": list(meta[1:]),
        "final_log_loss": final[0],
        "final_log_loss_interval": list(final[1:]),
        "first_nonfinite_step": min(first_bad) if first_bad else None,
        "nonfinite_seeds": int(np.sum(~np.isfinite(c.mean(axis=-1)))),
        "runs": int(c.shape[0]),
        "seeds": int(c.shape[1]),
    }


COLORS = {
    "pes": "C0",
    "nres": "C5",
    "tbptt": "C1",
    "es": "C2",
    "backprop": "C3",
    "init": "0.6",
    "adam": "C4",
    "sgd": "C6",
    "momentum": "C8",
}


def baseline_grid(name: str, size: dict) -> list[dict]:
    """The grid a user would tune: learning rates × momentum (Adam's β1, heavy-ball β; none
    for SGD) × schedule (constant, cosine decay to 0 at the horizon)."""
    lo, hi, n = size["lr_grid"]
    betas = size["betas"] if name in ("adam", "momentum") else [None]
    return [
        {"lr": float(lr), "beta": b, "schedule": sch}
        for sch in size["schedules"]
        for b in betas
        for lr in np.geomspace(lo, hi, int(n))
    ]


def _baseline_theta(system, name: str, point: dict):
    th = dict(system.theta)
    dt = th["log_lr"].dtype
    th["log_lr"] = jnp.asarray(np.log(point["lr"]), dt)
    if point["beta"] is not None:
        k = "logit_b1" if name == "adam" else "logit_beta"
        b = point["beta"]
        th[k] = jnp.asarray(np.log(b / (1 - b)), dt)
    return th


def tune_baseline(name: str, size: dict) -> dict:
    """Grid-tune ``name`` by the mean meta-loss at the horizon on the tuning seeds (never the
    held-out ones); grid points whose runs went non-finite lose."""
    grid = baseline_grid(name, size)
    keys = _keys(TUNE_OFFSET, size["tune_seeds"])
    scores = np.full(len(grid), np.inf)
    for sch in size["schedules"]:
        idx = [i for i, g in enumerate(grid) if g["schedule"] == sch]
        system = make_system(name, size, schedule=sch)
        thetas = jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *[_baseline_theta(system, name, grid[i]) for i in idx]
        )
        curves = inner_curves(system, thetas, keys, size["horizon"])
        s = curves.mean(axis=2).mean(axis=1)
        scores[idx] = np.where(np.isfinite(s), s, np.inf)
    best = int(np.argmin(scores))
    lrs = sorted({g["lr"] for g in grid})
    return {
        "grid": json.dumps(grid),
        "scores": scores,
        "best": json.dumps(grid[best]),
        "nonfinite_grid_points": int(np.sum(~np.isfinite(scores))),
        "lr_at_grid_edge": grid[best]["lr"] in (lrs[0], lrs[-1]),
    }


@functools.lru_cache(maxsize=8)
def _built(name: str, size_json: str):
    """The learned-optimizer system and estimator ``name``, built once per size: every run
    and every tuning run reuses them, so each estimator compiles once, not once per run."""
    size = json.loads(size_json)
    system = make_system(learned_of(size), size, lr=size["lopt_lr"])
    return system, estimators.make(name, system, **estimator_params(name, size))


def learned_of(size: dict) -> str:
    """The learned optimizer a size meta-trains: ``size["optimizer"]``, by default "mlp" (the
    per-parameter MLP; this figure's only one)."""
    return size.get("optimizer", "mlp")


def theta0_of(run: int, size: dict):
    """The learned optimizer's initial θ for meta-training run ``run`` (its own init seed)."""
    return make_system(learned_of(size), size, lr=size["lopt_lr"], seed=100 + run).theta


@functools.lru_cache(maxsize=16)
def _adam(lr: float):
    """``optax.adam(lr)``, one object per rate: `meta_train` shares one compiled outer step
    among the runs given the same estimator and optimizer objects."""
    import optax

    return optax.adam(lr)


def meta_train_one(
    name: str,
    size: dict,
    folder,
    progress,
    *,
    run: int,
    budget: float,
    outer_lr: float | None = None,
    outer=None,
    tag: str = "",
) -> dict:
    """Meta-train with estimator ``name`` from run ``run``'s θ0 and key for ``budget``
    forward-step equivalents; returns θ (flat) and the evaluation curve against forward-step
    equivalents and seconds. The outer optimizer is Adam at ``outer_lr``, or ``outer`` (an
    optax transformation; then ``tag`` names its folder apart)."""
    if (outer is None) == (outer_lr is None):
        raise ValueError("give exactly one of outer_lr (Adam) and outer")
    from jax.flatten_util import ravel_pytree

    from chaosgrad.estimators.meta import meta_train

    system, est = _built(name, json.dumps(size, sort_keys=True))
    per = fse_per_estimate(name, size)
    steps = max(1, int(budget // per))
    log_every = max(1, steps // size["evals"])
    stamps = {0: time.perf_counter()}

    def callback(step, rec):
        stamps[step] = time.perf_counter()

    res = meta_train(
        system,
        est,
        _adam(outer_lr) if outer is None else outer,
        steps,
        folder / f"meta-{name}-r{run}{tag}",
        jax.random.PRNGKey(SEED + 1 + run),
        theta0=theta0_of(run, size),
        log_every=log_every,
        checkpoint_every=max(steps, 1),
        eval_seeds=size["eval_seeds"],
        progress=progress,
        callback=callback,
        resume=False,
    )
    if res.interrupted:
        raise KeyboardInterrupt
    ev_steps = np.asarray([e["step"] for e in res.evals])
    dur = np.diff([stamps[i] for i in range(steps + 1)])
    return {
        "theta": ravel_pytree(res.theta)[0],
        "eval_step": ev_steps,
        "eval_fse": ev_steps * per,
        "step_seconds": dur,
        "eval_meta_loss": np.asarray([e["meta_loss"] for e in res.evals]),
        "eval_nonfinite": np.asarray([e["nonfinite"] for e in res.evals]),
        "skipped": np.asarray(int(np.sum(res.history["skipped"]))),
        "outer_steps": np.asarray(steps),
        "fse_per_estimate": np.asarray(per),
    }


def tune_outer_lr(name: str, size: dict, folder, progress, store) -> dict:
    """Each outer learning rate of the grid, one tuning run of ``tune_budget`` forward-step
    equivalents; the score is the trained θ's meta-loss on the tuning seeds."""
    from jax.flatten_util import ravel_pytree

    lopt = make_system(learned_of(size), size, lr=size["lopt_lr"])
    unravel = ravel_pytree(lopt.theta)[1]
    scores = []
    for i, lr in enumerate(size["outer_lrs"]):
        part = store.part(
            f"tune-{name}-{i}",
            lambda lr=lr: meta_train_one(
                name, size, folder, progress, run=TUNE_RUN, outer_lr=lr, budget=size["tune_budget"]
            ),
        )
        th = jax.tree_util.tree_map(lambda x: x[None], unravel(jnp.asarray(part["theta"])))
        c = inner_curves(lopt, th, _keys(TUNE_OFFSET, size["tune_seeds"]), size["horizon"])
        s = float(c.mean())
        scores.append(s if np.isfinite(s) else math.inf)
    best = int(np.argmin(scores))
    return {
        "outer_lrs": list(size["outer_lrs"]),
        "scores": scores,
        "best": float(size["outer_lrs"][best]),
        "at_grid_edge": best in (0, len(scores) - 1),
    }


def compute_seconds(step_seconds: np.ndarray) -> tuple[np.ndarray, float]:
    """Cumulative seconds of meta-training after each outer step (index 0: none yet) with
    compilation taken out, and the seconds taken out. Steps that took over 5× the median
    step (step 1 compiles the estimator, its init and the evaluator; the first evaluation
    and a retrace can compile again) are counted at the median; every other step's wall
    time, its evaluation included, counts as measured."""
    dur = np.asarray(step_seconds, np.float64).copy()
    med = float(np.median(dur))
    slow = dur > 5 * med
    taken = float(np.sum(dur[slow] - med))
    dur[slow] = med
    return np.concatenate([[0.0], np.cumsum(dur)]), taken


def paired_vs(a: np.ndarray, b: np.ndarray, boot: int) -> dict:
    """``a`` (runs, seeds) minus ``b`` (seeds,), paired by held-out seed, with a hierarchical
    interval; "better" when the interval lies wholly below 0, "worse" wholly above."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)[None]
    m, lo, hi = hierarchical_interval(d, boot, seed=2)
    verdict = (
        "diverges" if not np.isfinite(m) else "better" if hi < 0 else "worse" if lo > 0 else "tie"
    )
    return {"difference": m, "interval": [lo, hi], "verdict": verdict}


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Tune each estimator's outer learning rate, meta-train ``runs`` runs with it, tune the
    baselines, and evaluate all on held-out seeds at T and 10T."""
    from jax.flatten_util import ravel_pytree

    size = SIZES[scale]
    T, boot, n_runs = size["horizon"], size["boot"], size["runs"]
    heldout = _keys(HELDOUT_OFFSET, size["heldout_seeds"])
    lopt = make_system("mlp", size, lr=size["lopt_lr"])
    unravel = ravel_pytree(lopt.theta)[1]
    out, tuned_outer, trained, curves = {}, {}, {}, {}
    for name in ESTIMATORS:
        tuned_outer[name] = tune_outer_lr(name, size, store.folder, progress, store)
        runs = []
        for r in range(n_runs):
            part = store.part(
                f"train-{name}-{r}",
                lambda name=name, r=r: meta_train_one(
                    name,
                    size,
                    store.folder,
                    progress,
                    run=r,
                    outer_lr=tuned_outer[name]["best"],
                    budget=size["budget"],
                ),
            )
            cum, taken = compute_seconds(part["step_seconds"])
            runs.append(dict(part, eval_seconds=cum[part["eval_step"]], compile_seconds=taken))
            for k in ("eval_fse", "eval_seconds", "eval_meta_loss"):
                out[f"{name}_r{r}_{k}"] = runs[-1][k]
        trained[name] = runs
        thetas = jax.vmap(unravel)(jnp.stack([jnp.asarray(p["theta"]) for p in runs]))
        curves[name] = store.part(
            f"heldout-{name}", lambda th=thetas: {"curves": inner_curves(lopt, th, heldout, 10 * T)}
        )["curves"]
    init = jax.vmap(unravel)(
        jnp.stack([ravel_pytree(theta0_of(r, size))[0] for r in range(n_runs)])
    )
    curves["init"] = store.part(
        "heldout-init", lambda: {"curves": inner_curves(lopt, init, heldout, 10 * T)}
    )["curves"]
    tuned = {}
    for b in BASELINES:
        tb = store.part(f"tune-{b}", lambda b=b: tune_baseline(b, size))
        point = json.loads(str(tb["best"]))
        tuned[b] = dict(
            point,
            nonfinite_grid_points=int(tb["nonfinite_grid_points"]),
            lr_at_grid_edge=bool(tb["lr_at_grid_edge"]),
        )
        out[f"tune_{b}_scores"] = tb["scores"]
        system = make_system(b, size, schedule=point["schedule"])
        th = jax.tree_util.tree_map(lambda v: v[None], _baseline_theta(system, b, point))
        curves[b] = store.part(
            f"heldout-{b}", lambda s=system, th=th: {"curves": inner_curves(s, th, heldout, 10 * T)}
        )["curves"]
    table, vs_adam = {}, {}
    adam = {h: per_seed(curves["adam"][0], h) for h in (T, 10 * T)}
    for n, c in curves.items():
        out[f"curve_{n}"] = np.mean(c, axis=(0, 1))
        out[f"band_{n}"] = np.stack(
            [np.min(np.mean(c, axis=1), axis=0), np.max(np.mean(c, axis=1), axis=0)]
        )
        table[n] = {"T": summarize(c, T, boot), "10T": summarize(c, 10 * T, boot)}
        if n != "adam":
            vs_adam[n] = {
                "T": paired_vs(per_seed(c, T), adam[T], boot),
                "10T": paired_vs(per_seed(c, 10 * T), adam[10 * T], boot),
            }
    beats = [n for n in ESTIMATORS if vs_adam[n]["T"]["verdict"] == "better"]
    holds = [n for n in ESTIMATORS if vs_adam[n]["10T"]["verdict"] in ("better", "tie")]
    meta = {
        "sizes": size,
        "estimators": {n: estimator_params(n, size) for n in ESTIMATORS},
        "budget_fse": size["budget"],
        "backward_cost": BACKWARD_COST,
        "fse_per_estimate": {n: fse_per_estimate(n, size) for n in ESTIMATORS},
        "outer_steps": {n: int(trained[n][0]["outer_steps"]) for n in ESTIMATORS},
        "outer_lr": tuned_outer,
        "train_seconds": {
            n: [float(p["eval_seconds"][-1]) for p in trained[n]] for n in ESTIMATORS
        },
        "compile_seconds": {
            n: [float(p["compile_seconds"]) for p in trained[n]] for n in ESTIMATORS
        },
        "skipped_outer_steps": {n: [int(p["skipped"]) for p in trained[n]] for n in ESTIMATORS},
        "tuned": tuned,
        "table": table,
        "vs_adam": vs_adam,
        "beat_adam_at_T": beats,
        "hold_at_10T": holds,
        "meta_loss": "mean over the unroll of log(training loss on a fresh minibatch of "
        "128); final log-loss: mean of the last tenth of the steps",
        "intervals": "95% hierarchical bootstrap: runs, then held-out seeds within a run "
        f"({boot} resamples); differences paired by held-out seed",
        "heldout": f"{size['heldout_seeds']} inner seeds PRNGKey({HELDOUT_OFFSET} + i) "
        "(inner init and minibatches) never used in meta-training or tuning",
        "system": lopt.describe(),
        "seed": SEED,
        "runs": n_runs,
    }
    out["horizon"] = np.asarray(T)
    out["runs"] = np.asarray(n_runs)
    return out, json.loads(json.dumps(meta, default=float))


def draw(results: dict, meta: dict, path) -> None:
    """(a) meta-loss against forward-step equivalents, (b) against seconds, one line per run;
    (c) held-out inner training to 10T, the band over runs; (d) meta-loss at T and 10T
    minus tuned Adam's, with hierarchical intervals."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    T, runs = int(results["horizon"]), int(results["runs"])
    names = list(meta["estimators"])
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    adam_T = meta["table"]["adam"]["T"]["meta_loss"]
    for n in names:
        for r in range(runs):
            y = results[f"{n}_r{r}_eval_meta_loss"]
            kw = {"color": COLORS[n], "lw": 1, "alpha": 0.7, "label": n if r == 0 else None}
            axes[0].plot(results[f"{n}_r{r}_eval_fse"], y, "-", **kw)
            axes[1].plot(results[f"{n}_r{r}_eval_seconds"], y, "-", **kw)
    for ax in axes[:2]:
        ax.axhline(adam_T, color="k", ls="--", lw=1, label="tuned Adam (held-out)")
        ax.set_ylabel(f"meta-loss ({T} steps, mean log-loss; eval seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_xlabel(
        f"forward-step equivalents spent (backward = {meta['backward_cost']:g} forward)"
    )
    axes[1].set_xlabel("seconds (compilation excluded)")
    axes[0].set_title(f"(a) meta-training, {runs} runs each, at equal compute")
    axes[1].set_title("(b) the same against wall-clock time")
    x = np.arange(1, 10 * T + 1)
    for n in [*names, "init", *BASELINES]:
        c = results.get(f"curve_{n}")
        if c is None:
            continue
        style = "--" if n in BASELINES else "-"
        axes[2].plot(
            x, c, style, color=COLORS[n], lw=1, label=n if n != "init" else "untrained lopt"
        )
        band = results.get(f"band_{n}")
        if band is not None and n not in BASELINES:
            axes[2].fill_between(x, band[0], band[1], color=COLORS[n], alpha=0.15)
    axes[2].axvline(T, color="k", lw=0.8)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("inner step")
    axes[2].set_ylabel("log training loss (held-out seeds; band: runs)")
    axes[2].set_title(f"(c) held-out inner training to 10×{T} steps")
    axes[2].legend(fontsize=7, ncol=2)
    axes[2].grid(alpha=0.3)
    rows = [n for n in meta["vs_adam"] if n != "init"]
    for k, h in enumerate(("T", "10T")):
        for i, n in enumerate(rows):
            v = meta["vs_adam"][n][h]
            m, (lo, hi) = v["difference"], v["interval"]
            if m is None or lo is None:
                continue
            axes[3].errorbar(
                i + 0.15 * (2 * k - 1),
                m,
                yerr=[[m - lo], [hi - m]],
                fmt="os"[k],
                color=COLORS.get(n.split()[0], "k"),
                capsize=3,
                label=f"at {h}" if i == 0 else None,
            )
    axes[3].axhline(0, color="k", lw=0.8)
    axes[3].set_xticks(range(len(rows)), rows, rotation=30, fontsize=8)
    axes[3].set_ylabel("meta-loss minus tuned Adam's (paired by seed)")
    axes[3].set_title("(d) against tuned Adam, 95% hierarchical intervals")
    axes[3].legend(fontsize=7)
    axes[3].grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
