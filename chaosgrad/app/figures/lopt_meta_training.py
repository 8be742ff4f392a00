"""Beyond the paper: meta-training the per-parameter MLP learned optimizer on digits with PES,
truncated backprop, ES and backprop at equal compute (inner unroll steps), then measuring each
trained optimizer against Adam, SGD and momentum with learning rates tuned on a grid, on
held-out inner seeds, at the meta-training horizon and at 10× it.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad import estimators, systems

SIZES = {
    "quick": {"horizon": 40, "budget": 16_000, "eval_seeds": 4, "heldout_seeds": 8,
              "tune_seeds": 8, "lr_grid": [1e-4, 10.0, 21], "outer_lr": 1e-2,
              "lopt_lr": 0.01, "pairs": 4, "particles": 8, "samples": 4, "window": 10,
              "evals": 12, "dtype": "float32",
              "task": {"task": "digits_mlp", "batch_size": 128}},
    "paper": {"horizon": 100, "budget": 2_000_000, "eval_seeds": 16, "heldout_seeds": 64,
              "tune_seeds": 32, "lr_grid": [1e-4, 1.0, 21], "outer_lr": 1e-3,
              "lopt_lr": 0.01, "pairs": 32, "particles": 32, "samples": 16, "window": 10,
              "evals": 40, "dtype": "float32",
              "task": {"task": "digits_mlp", "batch_size": 128}},
}
ESTIMATORS = ("pes", "tbptt", "es", "backprop")
BASELINES = ("adam", "sgd", "momentum")
SEED = 0
HELDOUT_OFFSET = 1_000_000  # held-out inner seeds: PRNGKey(HELDOUT_OFFSET + i), never trained on
TUNE_OFFSET = 2_000_000     # the baselines' learning rates are tuned on these seeds


def make_system(optimizer: str, size: dict, lr: float | None = None):
    """Inner training of ``size["task"]`` (at both scales the 2×32 ReLU MLP on digits with a
    fresh minibatch of 128 per step, as in Figure 3 but with fresh batches) for
    ``size["horizon"]`` steps, the per-step loss log(training loss)."""
    return systems.make("lopt", optimizer=optimizer, log_loss=True,
                        inner_steps=size["horizon"], dtype=size["dtype"], lr=lr, seed=SEED,
                        **size["task"])


def estimator_params(name: str, size: dict) -> dict:
    """The settings of each estimator at this scale (σ = 0.01 and windows of K = 10 as in the
    paper's defaults; populations sized so that each estimate is a few hundred steps)."""
    h, k = size["horizon"], size["window"]
    return {"pes": {"pairs": size["pairs"], "sigma": 0.01, "window": k, "horizon": h},
            "tbptt": {"particles": size["particles"], "window": k, "horizon": h},
            "es": {"pairs": size["pairs"], "sigma": 0.01, "horizon": h},
            "backprop": {"samples": size["samples"], "horizon": h}}[name]


def steps_per_estimate(name: str, size: dict) -> int:
    """Inner unroll steps one estimate runs (what the budget is counted in)."""
    p = estimator_params(name, size)
    if name == "pes":
        return 2 * p["pairs"] * p["window"]  # antithetic: two members per pair
    if name == "tbptt":
        return p["particles"] * p["window"]
    if name == "es":
        return 2 * p["pairs"] * p["horizon"]
    return p["samples"] * p["horizon"]


@functools.lru_cache(maxsize=16)
def _jit_curves(system, steps: int):
    """Compiled ``(thetas, keys) -> per-step losses (n_theta, n_keys, steps)``."""
    from chaosgrad.system import split_run_key
    from chaosgrad.unroll import rollout

    def one(theta, key):
        k_init, k_steps = split_run_key(key)
        return rollout(system, theta, system.init(k_init, theta), k_steps, steps)[1]

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))


def inner_curves(system, thetas, keys, steps: int) -> np.ndarray:
    """Per-step losses of inner training for a batch of θ (leading axis) and of run keys."""
    return np.asarray(_jit_curves(system, int(steps))(thetas, keys), np.float64)


def _keys(offset: int, n: int) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(offset + i) for i in range(n)])


def summarize(curves: np.ndarray, horizon: int) -> dict:
    """Per-seed meta-loss (mean log-loss over the first ``horizon`` steps) and final
    log-loss (mean of the last horizon/10 steps), for curves (seeds, steps); non-finite seeds
    are counted, and make the mean non-finite rather than being dropped."""
    c = curves[:, :horizon]
    tail = max(1, horizon // 10)
    meta, final = c.mean(axis=1), c[:, -tail:].mean(axis=1)
    n = len(meta)
    bad = ~np.isfinite(c)
    first_bad = [int(np.argmax(row)) + 1 for row in bad if row.any()]
    return {"first_nonfinite_step": min(first_bad) if first_bad else None,
            "meta_loss": float(meta.mean()), "meta_loss_se": float(meta.std(ddof=1) / n**0.5),
            "final_log_loss": float(final.mean()),
            "final_log_loss_se": float(final.std(ddof=1) / n**0.5),
            "nonfinite_seeds": int((~np.isfinite(meta)).sum()), "per_seed": meta.tolist()}


COLORS = {"pes": "C0", "tbptt": "C1", "es": "C2", "backprop": "C3", "init": "0.6",
          "adam": "C4", "sgd": "C6", "momentum": "C8"}


def tune_baseline(name: str, size: dict) -> dict:
    """Grid-tune ``name``'s learning rate by the mean meta-loss at the training horizon on
    the tuning seeds (not the held-out ones); grid points whose runs went non-finite lose."""
    lo, hi, n = size["lr_grid"]
    grid = np.geomspace(lo, hi, int(n))
    system = make_system(name, size)
    theta0 = system.theta
    thetas = {k: jnp.stack([jnp.asarray(np.log(lr), v.dtype) if k == "log_lr" else v
                            for lr in grid]) for k, v in theta0.items()}
    curves = inner_curves(system, thetas, _keys(TUNE_OFFSET, size["tune_seeds"]),
                          size["horizon"])
    scores = curves.mean(axis=2).mean(axis=1)
    bad = ~np.isfinite(scores)
    best = int(np.argmin(np.where(bad, np.inf, scores)))
    return {"grid": grid, "scores": scores, "best_lr": float(grid[best]),
            "nonfinite_grid_points": int(bad.sum()),
            "at_grid_edge": best in (0, len(grid) - 1)}


def meta_train_one(name: str, size: dict, folder, progress) -> dict:
    """Meta-train the learned optimizer with estimator ``name`` for the step budget;
    returns θ (flat), the evaluation curve against unroll steps and seconds."""
    import optax
    from jax.flatten_util import ravel_pytree

    from chaosgrad.estimators.meta import meta_train

    system = make_system("mlp", size, lr=size["lopt_lr"])
    est = estimators.make(name, system, **estimator_params(name, size))
    per = steps_per_estimate(name, size)
    steps = max(1, size["budget"] // per)
    log_every = max(1, steps // size["evals"])
    stamps = {0: time.perf_counter()}

    def callback(step, rec):
        stamps[step] = time.perf_counter()

    res = meta_train(system, est, optax.adam(size["outer_lr"]), steps, folder / f"meta-{name}",
                     jax.random.PRNGKey(SEED + 1), log_every=log_every,
                     checkpoint_every=max(steps, 1), eval_seeds=size["eval_seeds"],
                     progress=progress, callback=callback, resume=False)
    if res.interrupted:
        raise KeyboardInterrupt
    ev_steps = np.asarray([e["step"] for e in res.evals])
    dur = np.diff([stamps[i] for i in range(steps + 1)])
    return {"theta": ravel_pytree(res.theta)[0], "eval_step": ev_steps,
            "eval_unroll_steps": ev_steps * per,
            "step_seconds": dur,
            "eval_meta_loss": np.asarray([e["meta_loss"] for e in res.evals]),
            "eval_nonfinite": np.asarray([e["nonfinite"] for e in res.evals]),
            "skipped": np.asarray(int(np.sum(res.history["skipped"]))),
            "outer_steps": np.asarray(steps), "steps_per_estimate": np.asarray(per)}


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


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Meta-train with each estimator, tune the baselines, evaluate all on held-out seeds."""
    from jax.flatten_util import ravel_pytree

    size = SIZES[scale]
    T = size["horizon"]
    out, trained = {}, {}
    for name in ESTIMATORS:
        part = store.part(f"train-{name}", lambda name=name: meta_train_one(
            name, size, store.folder, progress))
        cum, taken = compute_seconds(part["step_seconds"])
        part = dict(part, eval_seconds=cum[part["eval_step"]], compile_seconds=taken)
        trained[name] = part
        for k in ("eval_unroll_steps", "eval_seconds", "eval_meta_loss", "eval_nonfinite"):
            out[f"{name}_{k}"] = part[k]
    heldout = _keys(HELDOUT_OFFSET, size["heldout_seeds"])
    lopt = make_system("mlp", size, lr=size["lopt_lr"])
    unravel = ravel_pytree(lopt.theta)[1]
    init_flat = ravel_pytree(lopt.theta)[0]
    names = [*ESTIMATORS, "init"]
    thetas = jax.vmap(unravel)(jnp.stack(
        [jnp.asarray(trained[n]["theta"]) for n in ESTIMATORS] + [init_flat]))
    curves = store.part("heldout-lopt", lambda: {"curves": inner_curves(
        lopt, thetas, heldout, 10 * T)})["curves"]
    table, tuned = {}, {}
    for i, n in enumerate(names):
        out[f"curve_{n}"] = np.mean(curves[i], axis=0)
        table[f"learned ({n})" if n != "init" else "learned (untrained init)"] = {
            "T": summarize(curves[i], T), "10T": summarize(curves[i], 10 * T)}
    for b in BASELINES:
        tb = store.part(f"tune-{b}", lambda b=b: tune_baseline(b, size))
        lr = float(tb["best_lr"])
        tuned[b] = {"lr": lr, "nonfinite_grid_points": int(tb["nonfinite_grid_points"]),
                    "at_grid_edge": bool(tb["at_grid_edge"])}
        out[f"tune_{b}_grid"], out[f"tune_{b}_scores"] = tb["grid"], tb["scores"]
        system = make_system(b, size)
        th = jax.tree_util.tree_map(lambda v: v[None], dict(
            system.theta, log_lr=jnp.asarray(np.log(lr), system.theta["log_lr"].dtype)))
        c = store.part(f"heldout-{b}", lambda s=system, th=th: {"curves": inner_curves(
            s, th, heldout, 10 * T)[0]})["curves"]
        out[f"curve_{b}"] = np.mean(c, axis=0)
        table[f"{b} (lr {lr:.3g})"] = {"T": summarize(c, T), "10T": summarize(c, 10 * T)}
        if b == "adam":
            adam_T = c[:, :T].mean(axis=1)
    beats = {}
    for n in ESTIMATORS:
        d = curves[names.index(n)][:, :T].mean(axis=1) - adam_T  # paired by held-out seed
        beats[n] = {"mean_difference_vs_adam": float(d.mean()),
                    "se": float(d.std(ddof=1) / len(d) ** 0.5),
                    "beats_adam_at_T": bool(d.mean() + 2 * d.std(ddof=1) / len(d) ** 0.5 < 0)}
    meta = {"sizes": size, "estimators": {n: estimator_params(n, size) for n in ESTIMATORS},
            "budget_unroll_steps": size["budget"],
            "outer_steps": {n: int(trained[n]["outer_steps"]) for n in ESTIMATORS},
            "steps_per_estimate": {n: int(trained[n]["steps_per_estimate"]) for n in ESTIMATORS},
            "train_seconds": {n: float(trained[n]["eval_seconds"][-1]) for n in ESTIMATORS},
            "compile_seconds": {n: float(trained[n]["compile_seconds"]) for n in ESTIMATORS},
            "skipped_outer_steps": {n: int(trained[n]["skipped"]) for n in ESTIMATORS},
            "tuned": tuned, "table": table, "vs_adam_at_T": beats,
            "any_beats_adam_at_T": any(v["beats_adam_at_T"] for v in beats.values()),
            "meta_loss": "mean over the unroll of log(training loss on a fresh minibatch of "
                         "128); final log-loss: mean of the last horizon/10 steps",
            "heldout": f"{size['heldout_seeds']} inner seeds PRNGKey({HELDOUT_OFFSET} + i) "
                       "(inner init and minibatches) never used in meta-training or tuning",
            "system": lopt.describe(), "seed": SEED}
    out["horizon"] = np.asarray(T)
    return out, json.loads(json.dumps(meta, default=float))


def draw(results: dict, meta: dict, path) -> None:
    """Meta-loss vs unroll steps and vs seconds; held-out inner training curves; tuning."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    T = int(results["horizon"])
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.6))
    for n in ESTIMATORS:
        y = results[f"{n}_eval_meta_loss"]
        axes[0].plot(results[f"{n}_eval_unroll_steps"], y, "o-", ms=3, color=COLORS[n], label=n)
        axes[1].plot(results[f"{n}_eval_seconds"], y, "o-", ms=3, color=COLORS[n], label=n)
    adam = next(v for k, v in meta["table"].items() if k.startswith("adam"))["T"]["meta_loss"]
    for ax in axes[:2]:
        ax.axhline(adam, color="k", ls="--", lw=1, label="tuned Adam (held-out)")
        ax.set_ylabel(f"meta-loss ({T} steps, mean log-loss)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_xlabel("inner unroll steps spent")
    axes[1].set_xlabel("seconds (compilation excluded)")
    axes[0].set_title("(a) meta-training at equal unroll steps")
    axes[1].set_title("(b) the same against wall-clock time")
    for n in [*ESTIMATORS, "init", *BASELINES]:
        c = results.get(f"curve_{n}")
        if c is None:
            continue
        style = "-" if n not in BASELINES else "--"
        axes[2].plot(np.arange(1, len(c) + 1), c, style, color=COLORS[n], lw=1,
                     label=n if n != "init" else "untrained lopt")
    axes[2].axvline(T, color="k", lw=0.8)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("inner step")
    axes[2].set_ylabel("log training loss (mean of held-out seeds; gaps: NaN)")
    axes[2].set_title(f"(c) held-out inner training to 10×{T} steps")
    axes[2].legend(fontsize=7, ncol=2)
    axes[2].grid(alpha=0.3)
    for b in BASELINES:
        axes[3].semilogx(results[f"tune_{b}_grid"], results[f"tune_{b}_scores"], "o-", ms=3,
                         color=COLORS[b], label=b)
    axes[3].set_xlabel("learning rate")
    axes[3].set_ylabel(f"meta-loss at {T} steps (tuning seeds)")
    axes[3].set_title("(d) baselines' learning-rate grids")
    axes[3].legend(fontsize=7)
    axes[3].grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
