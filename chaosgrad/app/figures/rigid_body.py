"""Figure 2 of the paper: Brax Ant under an MLP policy. Loss slices along a random direction in
θ turn jagged as the unroll grows; averaging over action noise smooths them; the variance of
the gradient grows exponentially with the unroll, at a rate that depends on where θ is.
"""

from __future__ import annotations

import jax
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import gradient_growth, loss_slice, random_direction

SIZES = {
    "quick": {"env": "ant", "unrolls": [1, 2, 4, 8, 16], "points": 41, "seeds": 8,
              "var_horizons": [2, 4, 8, 16, 32], "var_seeds": 8, "layers": 2},
    "paper": {"env": "ant", "unrolls": [1, 2, 4, 8, 16], "points": 201, "seeds": 32,
              "var_horizons": [2, 4, 8, 16, 32, 64], "var_seeds": 64, "layers": 4},
}
RANGE = 0.004
VAR_SHIFTS = (-0.002, 0.0, 0.002)
NOISE = 0.1


def make_system(size):
    """Ant (generalized backend) under a tanh MLP policy with Gaussian action noise."""
    return systems.make("brax", env=size["env"], backend="generalized", policy="mlp",
                        hidden=32, layers=size["layers"], action_noise=NOISE, seed=0)


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """(a) slices with randomness fixed, (b) 8-step slices over seeds, (c) variance vs T."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = make_system(size)
    theta = system.theta
    key = jax.random.PRNGKey(0)
    direction = random_direction(theta, jax.random.fold_in(key, 1))
    out = {}
    with progress_bar(1 + size["seeds"] + len(VAR_SHIFTS), "figure rigid_body", progress,
                      min_total=1) as bar:
        out["slice_losses"] = store.part("slices", lambda: {"losses": loss_slice(
            system, theta, size["unrolls"], key=key, direction=direction, radius=RANGE,
            points=size["points"]).losses})["losses"]
        bar.update(1)
        per_seed = []
        for i in range(size["seeds"]):
            per_seed.append(store.part(f"seed{i}", lambda i=i: {"losses": loss_slice(
                system, theta, [8], key=jax.random.fold_in(key, 10 + i), direction=direction,
                radius=RANGE, points=size["points"]).losses[0]})["losses"])
            bar.update(1)
        out["seed_losses"] = np.stack(per_seed)
        for j, s in enumerate(VAR_SHIFTS):
            th = jax.tree_util.tree_map(lambda t, d, s=s: t + s * d, theta, direction)
            p = store.part(f"variance{j}", lambda th=th: _variance(system, th, size, key))
            out[f"variance_{j}"] = p["variance"]
            out[f"nonfinite_{j}"] = p["nonfinite"]
            bar.update(1)
    out["shifts"] = np.linspace(-RANGE, RANGE, size["points"])
    out["unrolls"] = np.asarray(size["unrolls"])
    out["var_horizons"] = np.asarray(size["var_horizons"])
    meta = {"sizes": size, "var_shifts": VAR_SHIFTS, "action_noise": NOISE,
            "system": system.describe(), "seed": 0,
            "policy": f"tanh MLP, {size['layers']} hidden layers of 32 (paper: 4 of 32 swish, "
                      "tanh-Normal actions)"}
    return out, meta


def _variance(system, theta, size, key):
    g = gradient_growth(system, theta, size["var_horizons"], size["var_seeds"],
                        key=jax.random.fold_in(key, 100), progress=False)
    return {"variance": g.variance, "nonfinite": g.nonfinite_fraction}


def draw(results: dict, meta: dict, path) -> None:
    """Three panels like the paper's Figure 2."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    s = results["shifts"]
    cmap = plt.get_cmap("viridis")
    un = results["unrolls"]
    for i, t in enumerate(un):
        y = results["slice_losses"][i]
        axes[0].plot(s, y - np.nanmean(y), color=cmap(i / max(len(un) - 1, 1)),
                     label=f"{int(t)} steps")
    axes[0].set_title("(a) loss along a random direction, randomness fixed")
    axes[0].set_xlabel("shift along a unit direction in θ")
    axes[0].set_ylabel("mean −reward (minus its mean over the slice)")
    axes[0].legend(fontsize=7)
    for y in results["seed_losses"]:
        axes[1].plot(s, y, color="C0", alpha=0.3, lw=0.8)
    axes[1].plot(s, np.nanmean(results["seed_losses"], axis=0), "k-", lw=2, label="mean")
    axes[1].set_title(f"(b) 8 steps: {len(results['seed_losses'])} action-noise seeds")
    axes[1].set_xlabel("shift")
    axes[1].legend(fontsize=7)
    h = results["var_horizons"]
    for j, sh in enumerate(meta["var_shifts"]):
        v = results[f"variance_{j}"]
        ok = np.isfinite(v) & (v > 0)
        axes[2].semilogy(h[ok], v[ok], "o-", ms=3, label=f"shift {sh}")
    axes[2].set_title("(c) gradient variance across seeds")
    axes[2].set_xlabel("unroll length (steps)")
    axes[2].set_ylabel("tr Cov[∂L/∂θ]")
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_xticks([-RANGE, -RANGE / 2, 0.0, RANGE / 2, RANGE])
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Brax {meta['sizes']['env']} (generalized backend), {meta['policy']}, "
                 f"{meta['system'].get('precision')}", fontsize=11)
    fig.tight_layout()
    save(fig, path)
