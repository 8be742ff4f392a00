"""Beyond the paper: self-training. The MLP learned optimizer, meta-trained once with Adam as
the outer optimizer (θ*), meta-trains fresh copies of itself as the outer optimizer; against
Adam (its learning rate tuned) at equal compute: meta-loss against outer steps over runs, and
the final held-out meta-loss per run, paired by run, with a bootstrap interval.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from chaosgrad.app.figures.lopt_meta_training import (
    _built,
    _keys,
    fse_per_estimate,
    hierarchical_interval,
    inner_curves,
    meta_train_one,
    paired_vs,
    theta0_of,
)

# quick: 17 meta-training runs (stage 1, 4 tuning runs, 6 runs × 2 outer optimizers) on
# 10-dimensional quadratics. It is compile-bound: each run compiles its estimator step and
# its evaluator (about 40 s each on a 2-core CPU shared at load 5), while an outer step takes
# about 2 ms: 9 of the runs at these sizes took 392 s there, so about 12 minutes in all
# (projected; less on a quiet machine). paper: 26 runs, 24,500 outer steps of PES with 32
# pairs on family members (kinds quad and mlp, the meta-training split), sized for one GPU
# (estimated half an hour there, not yet measured).
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "horizon": 50,
        "window": 10,
        "estimator": "pes",
        "pairs": 8,
        "particles": 8,
        "samples": 4,
        "stage1_steps": 2_000,
        "stage1_lr": 1e-2,
        "steps": 500,
        "tune_steps": 250,
        "outer_lrs": [3e-3, 1e-2, 3e-2, 1e-1],
        "runs": 6,
        "evals": 25,
        "eval_seeds": 4,
        "heldout_seeds": 16,
        "lopt_lr": 0.01,
        "boot": 2000,
        "dtype": "float32",
        "task": {"task": "quadratic", "dim": 10, "noise": 0.1, "sample_task": True},
    },
    "paper": {
        "horizon": 200,
        "window": 20,
        "estimator": "pes",
        "pairs": 32,
        "particles": 32,
        "samples": 16,
        "stage1_steps": 3_000,
        "stage1_lr": 1e-2,
        "steps": 1_000,
        "tune_steps": 300,
        "outer_lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
        "runs": 10,
        "evals": 40,
        "eval_seeds": 16,
        "heldout_seeds": 64,
        "lopt_lr": 0.01,
        "boot": 4000,
        "dtype": "float32",
        "task": {"task": "family", "kinds": "quad,mlp", "batch_size": 32},
    },
}
SEED = 0
HELDOUT_OFFSET = 1_000_000  # held-out inner seeds, never used in meta-training or tuning
STAGE1_RUN = 500  # stage 1's θ0 and key (theta0_of's seed 600): never a stage-2 run's
TUNE_RUN = 1_000  # the stage-2 run that tunes Adam's outer learning rate
OUTER_NAMES = ("adam", "self")
COLORS = {"adam": "C4", "self": "C3", "stage1": "0.6"}


def self_outer(size: dict, theta_star):
    """The learned optimizer with the meta-trained weights ``theta_star`` (a pytree) as an
    optax outer optimizer: the same `mlp_lopt` (step scale ``lopt_lr``) that θ* was
    meta-trained as, not retuned."""
    from chaosgrad.systems.lopt import as_outer_optimizer, make_optimizer

    opt = make_optimizer("mlp", size["lopt_lr"], dtype=jnp.dtype(size["dtype"]))
    return as_outer_optimizer(opt, theta_star)


def outer_update_seconds(tx, theta, repeats: int = 50) -> float:
    """Seconds of one jitted outer update of ``tx`` on a θ-shaped gradient (compilation
    excluded; median of ``repeats`` calls)."""
    update = jax.jit(tx.update)
    state = tx.init(theta)
    grads = jax.tree_util.tree_map(lambda x: 1e-3 * jnp.ones_like(x), theta)
    jax.block_until_ready(update(grads, state, theta))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(update(grads, state, theta))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def median_band(curves: np.ndarray, boot: int, seed: int = 0, level: float = 0.95):
    """Per column of ``curves`` (runs, points): the median over runs and a percentile
    bootstrap interval of that median (runs resampled with replacement). A non-finite entry
    stays in (a resample that draws it has a non-finite or shifted median, never dropped
    silently). Returns (median, low, high), each of shape (points,)."""
    c = np.asarray(curves, np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c.shape[0], (boot, c.shape[0]))
    meds = np.median(c[idx], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return np.median(c, axis=0), lo, hi


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Stage 1: meta-train θ* with Adam. Tune Adam's outer learning rate for stage 2. Stage 2:
    from each run's fresh θ0 and key, meta-train with Adam and with θ* (same estimator,
    steps and estimates); evaluate every final θ on held-out seeds."""
    from jax.flatten_util import ravel_pytree

    size = SIZES[scale]
    name, steps, boot = size["estimator"], size["steps"], size["boot"]
    per = fse_per_estimate(name, size)
    lopt, est = _built(name, json.dumps(size, sort_keys=True))
    unravel = ravel_pytree(lopt.theta)[1]
    folder = store.folder

    stage1 = store.part(
        "stage1",
        lambda: meta_train_one(
            name,
            size,
            folder,
            progress,
            run=STAGE1_RUN,
            outer_lr=size["stage1_lr"],
            budget=size["stage1_steps"] * per,
        ),
    )

    def theta_star():
        # read when first needed: under a multi-process launch stage 1 may still be on its
        # way while this process tunes Adam
        return unravel(jnp.asarray(stage1["theta"]))

    scores = []
    for i, lr in enumerate(size["outer_lrs"]):
        part = store.part(
            f"tune-adam-{i}",
            lambda lr=lr: meta_train_one(
                name,
                size,
                folder,
                progress,
                run=TUNE_RUN,
                outer_lr=lr,
                budget=size["tune_steps"] * per,
            ),
        )
        s = float(part["eval_meta_loss"][-1])
        scores.append(s if np.isfinite(s) else math.inf)
    best = int(np.argmin(scores))
    adam_lr = float(size["outer_lrs"][best])

    outers = {
        "adam": lambda: {"outer_lr": adam_lr},
        "self": lambda: {"outer": self_outer(size, theta_star()), "tag": "-self"},
    }
    trained: dict[str, list] = {k: [] for k in OUTER_NAMES}
    for r in range(size["runs"]):
        for k in OUTER_NAMES:
            trained[k].append(
                store.part(
                    f"train-{k}-{r}",
                    lambda k=k, r=r: meta_train_one(
                        name, size, folder, progress, run=r, budget=steps * per, **outers[k]()
                    ),
                )
            )

    heldout = _keys(HELDOUT_OFFSET, size["heldout_seeds"])
    T = size["horizon"]
    out: dict[str, Any] = {}
    final: dict[str, np.ndarray] = {}
    for k in OUTER_NAMES:
        thetas = jax.vmap(unravel)(jnp.stack([jnp.asarray(p["theta"]) for p in trained[k]]))
        c = store.part(
            f"heldout-{k}", lambda th=thetas: {"curves": inner_curves(lopt, th, heldout, T)}
        )["curves"]
        final[k] = c.mean(axis=-1)  # (runs, held-out seeds): the meta-loss per seed
        evals = np.stack([p["eval_meta_loss"] for p in trained[k]])
        med, lo, hi = median_band(evals, boot)
        out[f"{k}_eval_meta_loss"] = evals
        out[f"{k}_median"], out[f"{k}_low"], out[f"{k}_high"] = med, lo, hi
        out[f"{k}_final_heldout"] = final[k].mean(axis=1)
    star = store.part(
        "heldout-star",
        lambda: {
            "curves": inner_curves(
                lopt, jax.tree_util.tree_map(lambda x: x[None], theta_star()), heldout, T
            )
        },
    )["curves"]
    init = jax.vmap(unravel)(
        jnp.stack([ravel_pytree(theta0_of(r, size))[0] for r in range(size["runs"])])
    )
    c_init = store.part("heldout-init", lambda: {"curves": inner_curves(lopt, init, heldout, T)})[
        "curves"
    ]
    out["eval_step"] = trained["adam"][0]["eval_step"]
    out["stage1_eval_step"] = stage1["eval_step"]
    out["stage1_eval_meta_loss"] = stage1["eval_meta_loss"]

    # paired by run (same θ0, estimator keys, evaluation seeds) and by held-out seed:
    # paired_vs against zeros is the interval of the differences themselves
    diff = paired_vs(final["self"] - final["adam"], np.zeros(final["adam"].shape[1]), boot)
    step_secs = {
        k: float(np.median(np.concatenate([p["step_seconds"] for p in trained[k]])))
        for k in OUTER_NAMES
    }
    upd_secs = {
        "adam": outer_update_seconds(optax.adam(adam_lr), lopt.theta),
        "self": outer_update_seconds(self_outer(size, theta_star()), lopt.theta),
    }
    theta0s = [np.asarray(ravel_pytree(theta0_of(r, size))[0]) for r in range(size["runs"])]
    summary = {}
    for k in OUTER_NAMES:
        m, lo, hi = hierarchical_interval(final[k], boot, seed=3)
        # how far each run moved θ from its θ0 (RMS per weight): the outer steps' net size
        moved = [
            float(np.sqrt(np.mean((np.asarray(p["theta"]) - t0) ** 2)))
            for p, t0 in zip(trained[k], theta0s, strict=True)
        ]
        summary[k] = {
            "theta_rms_change": moved,
            "heldout_meta_loss": m,
            "interval": [lo, hi],
            "per_run": final[k].mean(axis=1).tolist(),
            "final_eval_meta_loss": [float(p["eval_meta_loss"][-1]) for p in trained[k]],
            "skipped_outer_steps": [int(p["skipped"]) for p in trained[k]],
            "nonfinite_evals": [int(np.sum(p["eval_nonfinite"])) for p in trained[k]],
            "nonfinite_heldout_seeds": int(np.sum(~np.isfinite(final[k]))),
            "median_step_seconds": step_secs[k],
            "outer_update_seconds": upd_secs[k],
            "outer_update_fraction": upd_secs[k] / step_secs[k],
        }
    meta = {
        "sizes": size,
        "estimator": {"name": name, "params": est.params, "fse_per_estimate": per},
        "outer_steps": steps,
        "equal_compute": "both outer optimizers: the same estimator, the same outer steps, the "
        "same estimator keys per run (so the same number of estimates and inner steps); the "
        "outer update's own cost is measured (outer_update_seconds) against a step's",
        "stage1": {
            "outer": "adam",
            "outer_lr": size["stage1_lr"],
            "steps": size["stage1_steps"],
            "initial_eval_meta_loss": float(stage1["eval_meta_loss"][0]),
            "final_eval_meta_loss": float(stage1["eval_meta_loss"][-1]),
            "skipped_outer_steps": int(stage1["skipped"]),
            "heldout_meta_loss": float(star.mean()),
        },
        "untrained_heldout_meta_loss": hierarchical_interval(c_init.mean(axis=-1), boot, seed=4),
        "adam_outer_lr": {
            "grid": list(size["outer_lrs"]),
            "scores": scores,
            "best": adam_lr,
            "at_grid_edge": best in (0, len(scores) - 1),
            "tuned_on": f"one run of {size['tune_steps']} outer steps per rate (its own θ0 "
            "and key), scored by its last evaluation meta-loss",
        },
        "self_outer": {
            "optimizer": "mlp_lopt with θ* (stage 1's final weights), step scale lopt_lr, "
            "not retuned",
            "loss_features": "none read: mlp_lopt reads the gradient, the parameters, its "
            "momenta and the step; meta_train passes no loss",
            "time_features_beyond_training": steps > T,
        },
        "summary": summary,
        "self_minus_adam": diff,
        "self_better": diff["verdict"] == "better",
        "resolved": diff["verdict"] in ("better", "worse"),
        "meta_loss": "mean over the horizon of log(training loss) on a held-out inner seed; "
        "per run the mean over held-out seeds",
        "intervals": f"95% bootstrap, {boot} resamples: curves, the median over runs "
        "(runs resampled); held-out meta-loss and the difference, runs then held-out seeds "
        "(hierarchical); the difference is paired by run and seed",
        "heldout": f"{size['heldout_seeds']} inner seeds PRNGKey({HELDOUT_OFFSET} + i)",
        "system": lopt.describe(),
        "seed": SEED,
        "runs": size["runs"],
    }
    out["horizon"] = np.asarray(T)
    return out, json.loads(json.dumps(meta, default=float))


def draw(results: dict, meta: dict, path) -> None:
    """(a) evaluation meta-loss against outer steps, median and 95% interval over runs, per
    outer optimizer (stage 1 in grey); (b) held-out meta-loss per run, paired by run."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    x = results["eval_step"]
    labels = {
        "adam": f"Adam (outer lr {meta['adam_outer_lr']['best']:g}, tuned)",
        "self": "θ* (the meta-trained optimizer)",
    }
    for k in OUTER_NAMES:
        axes[0].plot(x, results[f"{k}_median"], color=COLORS[k], label=labels[k])
        axes[0].fill_between(
            x, results[f"{k}_low"], results[f"{k}_high"], color=COLORS[k], alpha=0.2
        )
    s1 = results["stage1_eval_step"]
    keep = s1 <= x[-1]
    axes[0].plot(
        s1[keep],
        results["stage1_eval_meta_loss"][keep],
        "--",
        color=COLORS["stage1"],
        label="stage 1 (Adam; its own θ0)",
    )
    axes[0].set_xlabel("outer step")
    axes[0].set_ylabel(f"meta-loss ({int(results['horizon'])} steps, mean log-loss)")
    axes[0].set_title(f"(a) meta-training fresh copies, {meta['runs']} runs: median, 95% interval")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    a, s = results["adam_final_heldout"], results["self_final_heldout"]
    for i in range(len(a)):
        axes[1].plot([0, 1], [a[i], s[i]], "-o", color="0.5", lw=1)
    axes[1].set_xticks([0, 1], ["Adam outer", "θ* outer"])
    axes[1].axhline(
        meta["stage1"]["heldout_meta_loss"], color=COLORS["stage1"], ls="--", label="θ* itself"
    )
    d = meta["self_minus_adam"]
    lo, hi = d["interval"]
    axes[1].set_title(
        f"(b) held-out meta-loss per run; θ* − Adam {d['difference']:.3g} [{lo:.3g}, {hi:.3g}]"
    )
    axes[1].set_ylabel("held-out meta-loss of the final θ")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
