"""Beyond the paper: training an MLP on digits by SGD, as a function of the learning rate.
Where the inner training turns chaotic (λ1 > 0), the meta-loss over log η turns jagged and
backprop's meta-gradient explodes; there ES/PES beat backprop at equal compute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad import systems
from chaosgrad.app.compare import compare
from chaosgrad.gradients import gradient_growth, loss_slice
from chaosgrad.spectra import lyapunov_spectrum

SIZES = {
    "quick": {
        "horizons": [10, 50, 200],
        "points": 41,
        "lrs": 9,
        "seeds": 4,
        "lyap_steps": 200,
        "compare_T": 50,
        "samples": 12,
        "ref_batches": 8,
    },
    "paper": {
        "horizons": [10, 100, 1000],
        "points": 121,
        "lrs": 21,
        "seeds": 16,
        "lyap_steps": 2000,
        "compare_T": 200,
        "samples": 64,
        "ref_batches": 32,
    },
}
LOG_LR = (np.log(0.03), np.log(3.0))
COMPARE_LRS = (0.1, 1.0)


def make_system(lr: float = 0.3):
    """SGD on the digits MLP, θ = {"log_lr"}; meta-loss the mean log training loss."""
    return systems.make("lopt", task="digits_mlp", optimizer="sgd", lr=lr, inner_steps=200)


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """(a) meta-loss vs log η per T, (b) λ1 and gradient growth vs η, (c) estimators."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    key = jax.random.PRNGKey(0)
    center, radius = 0.5 * (LOG_LR[0] + LOG_LR[1]), 0.5 * (LOG_LR[1] - LOG_LR[0])
    base = make_system(float(np.exp(center)))
    direction = {"log_lr": jnp.ones((), base.theta["log_lr"].dtype)}
    lrs = np.exp(np.linspace(*LOG_LR, size["lrs"]))
    out = {"lrs": lrs, "horizons": np.asarray(size["horizons"])}
    with progress_bar(
        1 + len(lrs) + len(COMPARE_LRS), "figure learning_rate", progress, min_total=1
    ) as bar:
        part = store.part(
            "slice",
            lambda: {
                "losses": loss_slice(
                    base,
                    base.theta,
                    horizons=size["horizons"],
                    key=key,
                    direction=direction,
                    radius=radius,
                    points=size["points"],
                ).losses
            },
        )
        out["slice_losses"] = part["losses"]
        out["slice_lr"] = np.exp(np.linspace(center - radius, center + radius, size["points"]))
        bar.update(1)
        lam, rate, nonfinite = [], [], []
        for i, lr in enumerate(lrs):
            p = store.part(f"lr{i}", lambda lr=lr: _at_lr(float(lr), size, key))
            lam.append(p["lam"])
            rate.append(p["rate"])
            nonfinite.append(p["nonfinite"])
            bar.update(1)
        out["lyapunov"] = np.asarray(lam, np.float64)
        out["growth_rate"] = np.asarray(rate, np.float64)
        out["grad_nonfinite"] = np.asarray(nonfinite, np.float64)
        names = ["backprop", "tbptt", "es", "pes"]
        for j, lr in enumerate(COMPARE_LRS):
            p = store.part(f"compare{j}", lambda lr=lr: _compare(float(lr), size, key, names))
            out[f"rel_error_{j}"] = p["rel_error"]
        out["estimators"] = np.asarray(names)
    meta = {
        "sizes": size,
        "compare_lrs": COMPARE_LRS,
        "system": base.describe(),
        "seed": 0,
        "summary": summary(out),
    }
    return out, meta


def errors(results: dict, j: int) -> np.ndarray:
    """Relative errors at compared rate ``j`` as rows (value, low, high): `compare` saves each
    as an interval (value, low, high, level, what); older results hold the value alone."""
    e = np.asarray(results[f"rel_error_{j}"])
    if e.ndim == 1:
        v = e.astype(np.float64)
        return np.stack([v, v, v], axis=1)
    return e[:, :3].astype(np.float64)


def summary(out: dict) -> dict:
    """The numbers the README quotes, from the results alone: λ1 per learning rate, where it
    first exceeds 0.05 per step (the largest rate below that and its λ1 bound), and the
    relative errors of each estimator at each compared rate."""
    lrs, lam = np.asarray(out["lrs"]), np.asarray(out["lyapunov"])
    jump = np.flatnonzero(lam > 0.05)
    first = int(jump[0]) if jump.size else None
    below = lam[:first] if first else lam
    names = [str(n) for n in out["estimators"]]
    return {
        "lyapunov": {f"{lr:.3g}": float(v) for lr, v in zip(lrs, lam, strict=True)},
        "last_lr_below": float(lrs[first - 1]) if first else None,
        "max_lyapunov_below": float(below.max()) if below.size else None,
        "first_lr_above": float(lrs[first]) if first is not None else None,
        "lyapunov_first_above": float(lam[first]) if first is not None else None,
        "rel_error": {
            str(lr): {n: float(row[0]) for n, row in zip(names, errors(out, j), strict=True)}
            for j, lr in enumerate(COMPARE_LRS)
        },
        "rel_error_interval": {
            str(lr): {
                n: [float(x) for x in row] for n, row in zip(names, errors(out, j), strict=True)
            }
            for j, lr in enumerate(COMPARE_LRS)
        },
    }


def _at_lr(lr, size, key):
    s = make_system(lr)
    lam = lyapunov_spectrum(
        s, key=key, steps=size["lyap_steps"], k=1, transient=50, progress=False
    ).exponents[0]
    g = gradient_growth(s, horizons=size["horizons"], seeds=size["seeds"], key=key, progress=False)
    return {"lam": lam, "rate": g.growth_rate, "nonfinite": g.nonfinite_fraction[-1]}


def _compare(lr, size, key, names):
    s = make_system(lr)
    c = compare(
        s,
        estimators_=names,
        horizon=size["compare_T"],
        samples=size["samples"],
        reference="es",
        reference_batches=size["ref_batches"],
        reference_per_batch=32,
        key=key,
        progress=False,
    )
    by = {st.name: st for st in c.stats}
    return {"rel_error": np.array([by[n].relative_error for n in names])}


def draw(results: dict, meta: dict, path) -> None:
    """(a) meta-loss vs η, (b) λ1 and the gradient's growth rate vs η, (c) estimator errors."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    cmap = plt.get_cmap("viridis")
    hs = results["horizons"]
    for i, t in enumerate(hs):
        axes[0].semilogx(
            results["slice_lr"],
            results["slice_losses"][i],
            color=cmap(i / max(len(hs) - 1, 1)),
            label=f"T = {int(t)}",
        )
    axes[0].set_xlabel("learning rate η")
    axes[0].set_ylabel("meta-loss (mean log training loss)")
    axes[0].set_title("(a) meta-loss vs learning rate, randomness fixed")
    axes[0].legend(fontsize=7)
    lrs = results["lrs"]
    axes[1].semilogx(lrs, results["lyapunov"], "o-", label="λ1 of inner training (per step)")
    axes[1].semilogx(
        lrs, results["growth_rate"], "s--", label="growth rate of ‖∂L/∂ log η‖ (per step)"
    )
    axes[1].axhline(0, color="0.5", lw=0.8)
    bad = results["grad_nonfinite"] > 0
    if bad.any():
        axes[1].semilogx(
            lrs[bad],
            np.zeros(bad.sum()),
            "rx",
            ms=8,
            label=f"NaN/Inf gradients at T = {int(hs[-1])}",
        )
    axes[1].set_xlabel("learning rate η")
    axes[1].set_title("(b) where training turns chaotic")
    axes[1].legend(fontsize=7)
    names = [str(n) for n in results["estimators"]]
    x = np.arange(len(names))
    w = 0.38
    for j, lr in enumerate(meta["compare_lrs"]):
        e = errors(results, j)
        axes[2].bar(
            x + (j - 0.5) * w,
            e[:, 0],
            w,
            label=f"η = {lr}",
            yerr=[e[:, 0] - e[:, 1], e[:, 2] - e[:, 0]],
            capsize=2,
        )
    axes[2].set_xticks(x, names)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("relative RMS error at equal compute (95% interval)")
    axes[2].set_title(f"(c) estimators, T = {meta['sizes']['compare_T']}")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("SGD on an MLP (sklearn digits): θ = log learning rate", fontsize=11)
    fig.tight_layout()
    save(fig, path)
