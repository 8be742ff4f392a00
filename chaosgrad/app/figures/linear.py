"""Appendix oracle figure (ours, not one of the paper's numbered figures; the paper's Figure 7
is `perturbation`): linear maps explode iff the spectral radius exceeds 1, and the FTCS heat
equation is stable iff r = αΔt/Δx² ≤ ½ — spectra and gradients agree.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from chaosgrad import systems
from chaosgrad.gradients import gradient_growth
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.systems.maps import heat_eigenvalues

SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "n": 16,
        "horizons": [5, 10, 20, 40, 60, 80, 100],
        "seeds": 8,
        "rs": 17,
        "lyap_steps": 2000,
    },
    "paper": {
        "n": 64,
        "horizons": [5, 10, 20, 40, 80, 120, 160, 200],
        "seeds": 32,
        "rs": 41,
        "lyap_steps": 20000,
    },
}
RADII = (0.9, 1.0, 1.1)
HEAT_R = (0.45, 0.55)


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Gradient norm vs T for linear maps and FTCS; the leading exponent vs r for FTCS."""
    size = SIZES[scale]
    key = jax.random.PRNGKey(0)
    hs = size["horizons"]
    out = {"horizons": np.asarray(hs)}
    for rho in RADII:
        s = systems.make("linear", n=size["n"], radius=rho, seed=0)
        part = store.part(
            f"linear{rho}",
            lambda s=s: {
                "norm": gradient_growth(
                    s, horizons=hs, seeds=size["seeds"], key=key, progress=False
                ).geomean_norm
            },
        )
        out[f"linear_norm_{rho}"] = part["norm"]
    for r in HEAT_R:
        s = systems.make("heat", n=size["n"], r=r)
        part = store.part(
            f"heat{r}",
            lambda s=s: {
                "norm": gradient_growth(
                    s, horizons=hs, seeds=size["seeds"], key=key, progress=False
                ).geomean_norm
            },
        )
        out[f"heat_norm_{r}"] = part["norm"]
    rs = np.linspace(0.3, 0.7, size["rs"])
    lam = []
    for i, r in enumerate(rs):
        s = systems.make("heat", n=size["n"], r=float(r))
        lam.append(
            store.part(
                f"heat_lyap{i}",
                lambda s=s: {
                    "lam": lyapunov_spectrum(
                        s,
                        key=key,
                        steps=size["lyap_steps"],
                        k=1,
                        transient=size["lyap_steps"],
                        progress=False,
                    ).exponents[0]
                },
            )["lam"]
        )
    out["rs"] = rs
    out["heat_lyapunov"] = np.asarray(lam, np.float64)
    out["heat_exact"] = np.array([np.log(np.abs(heat_eigenvalues(size["n"], r)).max()) for r in rs])
    lam_err = np.abs(out["heat_lyapunov"] - out["heat_exact"])
    positive = rs[out["heat_lyapunov"] > 0]
    # the numbers the README quotes, so they can be printed from this file alone
    summary = {
        "heat_lyapunov_max_abs_error": float(np.nanmax(lam_err)),
        "heat_lyapunov_nonfinite": int(np.sum(~np.isfinite(out["heat_lyapunov"]))),
        "heat_first_positive_r": float(positive.min()) if positive.size else None,
        "heat_last_nonpositive_r": float(rs[out["heat_lyapunov"] <= 0].max()),
        "final_norm": {
            **{f"linear {rho}": float(out[f"linear_norm_{rho}"][-1]) for rho in RADII},
            **{f"heat {r}": float(out[f"heat_norm_{r}"][-1]) for r in HEAT_R},
        },
        "final_horizon": int(hs[-1]),
    }
    return out, {"sizes": size, "radii": RADII, "heat_r": HEAT_R, "seed": 0, "summary": summary}


def draw(results: dict, meta: dict, path) -> None:
    """Left: ‖∂L/∂θ‖ vs T. Right: FTCS leading exponent vs r, measured and exact."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    h = results["horizons"]
    for i, rho in enumerate(meta["radii"]):
        a.semilogy(
            h,
            results[f"linear_norm_{rho}"],
            "o-",
            color=f"C{i}",
            label=f"linear map, spectral radius {rho}",
        )
    for i, r in enumerate(meta["heat_r"]):
        a.semilogy(
            h, results[f"heat_norm_{r}"], "s--", color=f"C{i + 3}", label=f"FTCS heat, r = {r}"
        )
    a.set_xlabel("horizon T (steps)")
    a.set_ylabel("‖∂L/∂θ‖ (geometric mean over seeds)")
    a.set_title("gradients explode iff the spectral radius exceeds 1")
    a.legend(fontsize=8)
    a.grid(alpha=0.3, which="both")
    b.plot(results["rs"], results["heat_exact"], "k-", lw=1, label="exact: ln max|1 − 4r sin²|")
    b.plot(results["rs"], results["heat_lyapunov"], "o", ms=4, label="measured λ1 (QR method)")
    b.axhline(0, color="0.5", lw=0.8, ls="--")
    b.axvline(0.5, color="C3", lw=0.8, ls=":", label="von Neumann bound r = 1/2")
    b.set_xlabel("r = αΔt/Δx²")
    b.set_ylabel("leading Lyapunov exponent (per step)")
    b.set_title(f"FTCS heat equation, n = {meta['sizes']['n']}")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
