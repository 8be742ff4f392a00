"""Figure 3 of the paper: meta-learning a per-parameter MLP learned optimizer. The meta-loss
turns jagged along a direction in θ as the unroll grows, smoothing rescues it, and the
meta-gradient variance explodes with the unroll length — faster at some θ than at others.
"""

from __future__ import annotations

import jax
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import gradient_growth, loss_slice, random_direction

SIZES = {
    "quick": {"unrolls": [8, 32, 128, 256, 512], "points": 41, "smooth_T": 128,
              "smooth_samples": 8, "var_horizons": [10, 20, 40, 60, 80, 100, 120],
              "seeds": 8},
    "paper": {"unrolls": [8, 32, 128, 256, 512, 1024], "points": 101, "smooth_T": 256,
              "smooth_samples": 32, "var_horizons": list(range(10, 121, 10)), "seeds": 32},
}
SHIFTS = (0.0, 0.002, 0.005, 0.008)
RANGE = 0.01
SMOOTH_STD = 0.01


def make_system():
    """The paper's setup on offline data: sklearn digits instead of MNIST (a 2×32 ReLU MLP),
    one fixed batch of 128 reused at every step, meta-loss the mean of log training loss."""
    return systems.make("lopt", task="digits_mlp", optimizer="mlp", fixed_batch=True,
                        batch_size=128, log_loss=True, inner_steps=128)


def _shifted(theta, direction, s):
    return jax.tree_util.tree_map(lambda t, d: t + s * d, theta, direction)


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """(a) slices per unroll length, (b) smoothed slice, (c) variance vs unroll length."""
    from jax.flatten_util import ravel_pytree

    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = make_system()
    theta = system.theta
    n_params = int(ravel_pytree(theta)[0].size)
    key = jax.random.PRNGKey(0)
    direction = random_direction(theta, jax.random.fold_in(key, 1), norm=float(n_params))
    unit = n_params  # ‖direction‖: a shift s in the paper's units moves θ by s·n_params
    out = {}
    with progress_bar(3 + len(SHIFTS), "figure learned_optimizer", progress, min_total=1) as bar:
        a = store.part("slices", lambda: {"losses": loss_slice(
            system, theta, size["unrolls"], key=key, direction=direction, radius=RANGE * unit,
            points=size["points"]).losses})
        out["slice_losses"] = a["losses"]
        bar.update(1)
        smooth = []
        for m in range(size["smooth_samples"]):
            eps = jax.tree_util.tree_map(
                lambda t, k=m: SMOOTH_STD * jax.random.normal(
                    jax.random.fold_in(key, 100 + k), t.shape, t.dtype), theta)
            th = jax.tree_util.tree_map(lambda t, e: t + e, theta, eps)
            part = store.part(f"smooth{m}", lambda th=th, m=m: {"losses": loss_slice(
                system, th, [size["smooth_T"]], key=jax.random.fold_in(key, 200 + m),
                direction=direction, radius=RANGE * unit, points=size["points"]).losses[0]})
            smooth.append(part["losses"])
        out["smooth_samples"] = np.stack(smooth)
        bar.update(1)
        for i, s in enumerate(SHIFTS):
            th = _shifted(theta, direction, s)
            part = store.part(f"variance{i}", lambda th=th: _variance(system, th, size, key))
            out[f"variance_{i}"] = part["variance"]
            out[f"norm_{i}"] = part["norm"]
            out[f"nonfinite_{i}"] = part["nonfinite"]
            bar.update(1)
    out["shifts"] = np.linspace(-RANGE, RANGE, size["points"])
    out["unrolls"] = np.asarray(size["unrolls"])
    out["var_horizons"] = np.asarray(size["var_horizons"])
    meta = {"sizes": size, "variance_shifts": SHIFTS, "n_params": n_params,
            "smooth_std": SMOOTH_STD, "system": system.describe(), "seed": 0,
            "data": "sklearn digits (offline stand-in for MNIST), one fixed batch of 128"}
    return out, meta


def _variance(system, theta, size, key):
    g = gradient_growth(system, theta, size["var_horizons"], size["seeds"],
                        key=jax.random.fold_in(key, 300), progress=False)
    return {"variance": g.variance, "norm": g.geomean_norm, "nonfinite": g.nonfinite_fraction}


def draw(results: dict, meta: dict, path) -> None:
    """Three panels like the paper's Figure 3."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    s = results["shifts"]
    cmap = plt.get_cmap("viridis")
    unrolls = results["unrolls"]
    for i, t in enumerate(unrolls):
        y = results["slice_losses"][i]
        axes[0].plot(s, y, color=cmap(i / max(len(unrolls) - 1, 1)), lw=1.2,
                     label=f"{int(t)} steps")
    axes[0].set_title("(a) meta-loss along a random direction, randomness fixed")
    axes[0].set_xlabel("shift s (θ + s·d, ‖d‖ = number of weights)")
    axes[0].set_ylabel("mean log training loss")
    axes[0].legend(fontsize=7)
    sm = results["smooth_samples"]
    for y in sm:
        axes[1].plot(s, y, color="C0", alpha=0.3, lw=0.8)
    axes[1].plot(s, np.nanmean(sm, axis=0), "k-", lw=2,
                 label=f"mean of {len(sm)} (θ + N(0, {meta['smooth_std']}²))")
    axes[1].set_title(f"(b) smoothed, {meta['sizes']['smooth_T']} steps")
    axes[1].set_xlabel("shift s")
    axes[1].legend(fontsize=7)
    h = results["var_horizons"]
    for i, sh in enumerate(meta["variance_shifts"]):
        v = results[f"variance_{i}"]
        ok = np.isfinite(v) & (v > 0)
        axes[2].semilogy(h[ok], v[ok], "o-", ms=3, label=f"shift {sh}")
    axes[2].set_title("(c) meta-gradient variance across seeds")
    axes[2].set_xlabel("unroll length (inner steps)")
    axes[2].set_ylabel("tr Cov[∂L/∂θ]")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3, which="both")
    for ax in axes[:2]:
        ax.set_xticks([-RANGE, -RANGE / 2, 0.0, RANGE / 2, RANGE])
        ax.grid(alpha=0.3)
    fig.suptitle(f"learned optimizer ({meta['n_params']} weights) training an MLP on digits",
                 fontsize=11)
    fig.tight_layout()
    save(fig, path)
