"""Figure 4 of the paper: jax-md packing of bidisperse soft spheres. The energy after T FIRE
steps as a function of the small diameter D turns wild per seed as T grows (how rough the
mean over seeds is, `chaosgrad.roughness`, is in meta.json), and its gradient's variance
explodes with T — fastest for small D.
"""

from __future__ import annotations

import jax
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import gradient_growth, loss_slice

SIZES = {
    # 16 seeds (8 before issue 26: the mean's roughness at T = 256, 0.042, lay within its
    # noise floor of 0.035 and at half a seed's median, 0.084: unresolved either way)
    "quick": {"n": 32, "points": 37, "horizons": [1, 2, 4, 8, 16, 32, 64, 128, 256], "seeds": 16},
    "paper": {"n": 128, "points": 91, "horizons": [1, 2, 4, 8, 16, 32, 64, 128, 256], "seeds": 32},
}
D_RANGE = (0.1, 1.0)
D_VARIANCE = (0.10, 0.35, 0.60, 0.85)
ROUGHNESS_RULE = (
    "chaosgrad.roughness on the energy itself (not its log) over the D grid: the RMS about a "
    "degree-4 least-squares polynomial over the curve's own range, per seed and for the mean "
    "over seeds, with the noise floor the seeds' scatter leaves in that mean; 'smooth' = at "
    "most 0.02, 'smoother' = at most half the median seed's, 'resolved' = above 2 floors"
)


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """(a) energy vs D per horizon, (b) per-seed curves at the longest T, (c) variance vs T."""
    import jax.numpy as jnp

    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = systems.make("md", mode="fire", n=size["n"], d_small=0.55)
    center = 0.5 * (D_RANGE[0] + D_RANGE[1])
    radius = 0.5 * (D_RANGE[1] - D_RANGE[0])
    hs = size["horizons"]
    key = jax.random.PRNGKey(0)
    theta = jnp.asarray(center, system.theta.dtype)
    one = jnp.ones_like(theta)
    out = {}
    with progress_bar(
        size["seeds"] + len(D_VARIANCE), "figure packing", progress, min_total=1
    ) as bar:
        per_seed = []
        for i in range(size["seeds"]):
            part = store.part(
                f"slice{i}",
                lambda i=i: {
                    "losses": loss_slice(
                        system,
                        theta,
                        horizons=hs,
                        key=jax.random.fold_in(key, i),
                        direction=one,
                        radius=radius,
                        points=size["points"],
                    ).losses
                },
            )
            per_seed.append(part["losses"])
            bar.update(1)
        out["energy"] = np.stack(per_seed)  # (seeds, horizons, points)
        for j, d in enumerate(D_VARIANCE):
            part = store.part(f"variance{j}", lambda d=d: _variance(system, d, hs, size, key))
            out[f"variance_{j}"] = part["variance"]
            out[f"nonfinite_{j}"] = part["nonfinite"]
            bar.update(1)
    out["d"] = np.linspace(*D_RANGE, size["points"])
    out["horizons"] = np.asarray(hs)
    meta = {
        "sizes": size,
        "d_variance": D_VARIANCE,
        "system": system.describe(),
        "seeds": size["seeds"],
        "packing": 0.98,
        "note": "FIRE (jax-md defaults), loss = energy after T steps, theta = D",
        "variance_units": "Var[dE/dD]: θ = D is one number, so the variance is also the "
        "paper's mean over coordinates",
        "roughness_rule": ROUGHNESS_RULE,
        "summary": summary(out),
    }
    return out, meta


def summary(out: dict) -> dict:
    """The numbers the README quotes, from the results alone: the variance of dE/dD at the
    longest T per D, and how rough the per-seed and mean energy curves are per T (local
    extrema over the D grid; roughness relative to the curve's range, `ROUGHNESS_RULE`)."""
    from chaosgrad.gradients import count_extrema
    from chaosgrad.roughness import mean_roughness, smoothness

    hs = [int(t) for t in out["horizons"]]
    e = np.asarray(out["energy"])
    return {
        "horizon": hs[-1],
        "variance_at_longest": {
            str(d): float(out[f"variance_{j}"][-1]) for j, d in enumerate(D_VARIANCE)
        },
        "seed_extrema_median": {
            str(t): float(np.median([count_extrema(y) for y in e[:, i]])) for i, t in enumerate(hs)
        },
        "mean_extrema": {
            str(t): count_extrema(np.nanmean(e[:, i], axis=0)) for i, t in enumerate(hs)
        },
        "roughness": {str(t): smoothness(mean_roughness(e[:, i])) for i, t in enumerate(hs)},
    }


def _variance(system, d, hs, size, key):
    import jax.numpy as jnp

    g = gradient_growth(
        system,
        jnp.asarray(d, system.theta.dtype),
        horizons=hs,
        seeds=size["seeds"],
        key=jax.random.fold_in(key, 100),
        progress=False,
    )
    return {"variance": g.variance, "nonfinite": g.nonfinite_fraction}


def draw(results: dict, meta: dict, path) -> None:
    """Three panels like the paper's Figure 4."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    d = results["d"]
    e = results["energy"]
    hs = results["horizons"]
    cmap = plt.get_cmap("viridis")
    for i, t in enumerate(hs):
        axes[0].semilogy(
            d, e[0, i], color=cmap(i / max(len(hs) - 1, 1)), lw=1.2, label=f"T = {int(t)}"
        )
    axes[0].set_title("(a) energy after T FIRE steps, one seed")
    axes[0].set_xlabel("small diameter D")
    axes[0].set_ylabel("energy")
    axes[0].legend(fontsize=7, ncol=2)
    for s in range(e.shape[0]):
        axes[1].semilogy(d, e[s, -1], color="C0", alpha=0.35, lw=0.8)
    axes[1].semilogy(
        d, np.nanmean(e[:, -1], axis=0), "k-", lw=2, label=f"mean over {e.shape[0]} seeds"
    )
    r = meta["summary"].get("roughness", {}).get(str(int(hs[-1])))
    axes[1].set_title(
        f"(b) T = {int(hs[-1])}: each seed, and the mean"
        + (
            ""
            if r is None
            else f"\nroughness / range: one seed {r['curve_roughness_median']:.2g} "
            f"(median), mean {r['mean_roughness']:.2g} (noise floor "
            f"{r['noise_floor']:.2g})"
        ),
        fontsize=10,
    )
    axes[1].set_xlabel("small diameter D")
    axes[1].legend(fontsize=7)
    for j, dv in enumerate(meta["d_variance"]):
        v = results[f"variance_{j}"]
        ok = np.isfinite(v) & (v > 0)
        axes[2].loglog(hs[ok], v[ok], "o-", ms=3, label=f"D = {dv}")
    axes[2].set_title("(c) variance across seeds of dE/dD")
    axes[2].set_xlabel("T (FIRE steps)")
    axes[2].set_ylabel("Var[dE/dD]")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"jax-md packing: {meta['sizes']['n']} bidisperse soft spheres, packing "
        f"fraction {meta['packing']}, {meta['system'].get('precision')}",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
