"""Figure 5 of the paper: Jacobian spectra of the closed-loop Brax Ant at a random policy
("init1") and at the same policy scaled by 0.01 ("init2"): per-step eigenvalues, the growth
of the Jacobian product, and the gradient norm against the unroll length.
"""

from __future__ import annotations

import jax
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import gradient_growth
from chaosgrad.spectra import jacobian_eigenvalues, jacobian_products

SIZES = {
    "quick": {
        "env": "ant",
        "steps": 100,
        "at": 90,
        "horizons": [10, 20, 40, 60, 80, 100],
        "seeds": 4,
        "layers": 2,
    },
    "paper": {
        "env": "ant",
        "steps": 200,
        "at": 90,
        "horizons": [10, 20, 40, 60, 80, 100, 150, 200],
        "seeds": 16,
        "layers": 4,
    },
}
INITS = {"init1": 1.0, "init2": 0.01}


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Per init: eigenvalues along the trajectory, product growth, gradient growth."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = systems.make(
        "brax",
        env=size["env"],
        backend="generalized",
        policy="mlp",
        hidden=32,
        layers=size["layers"],
        seed=0,
    )
    key = jax.random.PRNGKey(0)
    out = {"horizons": np.asarray(size["horizons"])}
    with progress_bar(3 * len(INITS), "figure spectra", progress, min_total=1) as bar:
        for name, scale_ in INITS.items():
            theta = jax.tree_util.tree_map(lambda t, c=scale_: t * c, system.theta)
            ev = store.part(
                f"{name}_eig",
                lambda th=theta: {
                    "ev": jacobian_eigenvalues(
                        system, th, key=key, steps=size["steps"], method="dense"
                    ).eigenvalues
                },
            )["ev"]
            bar.update(1)
            prod = store.part(
                f"{name}_prod",
                lambda th=theta: {
                    "log_eig": jacobian_products(
                        system, th, key=key, steps=size["steps"]
                    ).log_max_abs_eigenvalue
                },
            )["log_eig"]
            bar.update(1)
            grad = store.part(
                f"{name}_grad",
                lambda th=theta: {
                    "norm": gradient_growth(
                        system,
                        th,
                        horizons=size["horizons"],
                        seeds=size["seeds"],
                        key=key,
                        progress=False,
                    ).geomean_norm
                },
            )["norm"]
            bar.update(1)
            out[f"{name}_eigenvalues"] = ev
            out[f"{name}_log_product_radius"] = prod
            out[f"{name}_grad_norm"] = grad
    meta = {
        "sizes": size,
        "inits": INITS,
        "system": system.describe(),
        "seed": 0,
        "note": "closed loop (policy inside the step), no action noise; eigenvalues of "
        "the 28x28 Jacobian in (q, qd) with the torso's rotation vector",
        "summary": summary(out, size),
    }
    return out, meta


def summary(out: dict, size: dict) -> dict:
    """The numbers the README quotes, per init, from the results alone: the spectral radius
    of ∂s_t/∂s_0 at the last step, the gradient norm at the longest unroll, and the largest
    |eigenvalue| of the one-step Jacobian at step ``at``."""
    res = {"steps": size["steps"], "horizon": int(size["horizons"][-1]), "at": size["at"]}
    for name in INITS:
        lp = np.asarray(out[f"{name}_log_product_radius"], np.float64)
        res[name] = {
            "product_radius": float(np.exp(min(lp[-1], 700.0))),
            "grad_norm": float(out[f"{name}_grad_norm"][-1]),
            "max_abs_eigenvalue_at": float(np.abs(out[f"{name}_eigenvalues"][size["at"]]).max()),
        }
    return res


def draw(results: dict, meta: dict, path) -> None:
    """Four panels like the paper's Figure 5."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    at = meta["sizes"]["at"]
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
    axes[0].plot(circle.real, circle.imag, "k-", lw=0.8)
    for i, name in enumerate(meta["inits"]):
        ev = results[f"{name}_eigenvalues"]
        axes[0].plot(ev[at].real, ev[at].imag, "o", ms=4, alpha=0.7, color=f"C{i}", label=name)
        steps = np.arange(ev.shape[0])
        axes[1].semilogy(steps, np.abs(ev).max(axis=1), color=f"C{i}", label=name)
        lp = results[f"{name}_log_product_radius"]
        axes[2].semilogy(
            np.arange(1, len(lp) + 1), np.exp(np.minimum(lp, 700)), color=f"C{i}", label=name
        )
        axes[3].semilogy(
            results["horizons"], results[f"{name}_grad_norm"], "o-", color=f"C{i}", label=name
        )
    axes[0].set_aspect("equal")
    axes[0].set_title(f"(a) eigenvalues of ∂s_{{t+1}}/∂s_t at t = {at}")
    axes[0].set_xlabel("Re")
    axes[0].set_ylabel("Im")
    axes[1].axhline(1, color="0.5", lw=0.8, ls="--")
    axes[1].set_title("(b) max |eigenvalue| of each one-step Jacobian")
    axes[1].set_xlabel("step t")
    axes[2].axhline(1, color="0.5", lw=0.8, ls="--")
    axes[2].set_title("(c) max |eigenvalue| of ∂s_t/∂s_0")
    axes[2].set_xlabel("step t")
    axes[3].set_title("(d) ‖∂L/∂θ‖ vs unroll length")
    axes[3].set_xlabel("unroll length (steps)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Brax {meta['sizes']['env']}: init1 = random MLP policy, init2 = init1 × "
        f"{meta['inits']['init2']}",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
