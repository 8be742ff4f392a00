"""Figure 7 of the paper (appendix A.2): the error of X⁰ (Π D_i) X⁰⁻¹ x⁰ as the product of the
time-varying maps A_i = X_i D_i X_i⁻¹ when the eigenvector matrix drifts, X_{i+1} = X_i + ε.

What is drawn, the sizes we chose and the first-order law the error follows are written into
the figure's meta.json (``drawn``, ``assumption``, ``first_order``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.config import x64_enabled
from chaosgrad.errors import InputError

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"n": 8, "steps": 20, "eps": [1e-6, 1e-1], "eps_points": 16, "draws": 8},
    "paper": {"n": 32, "steps": 100, "eps": [1e-8, 1e-1], "eps_points": 29, "draws": 32},
}
# The moduli |d_j| of the eigenvalues (drawn once, uniform in the range); each step draws
# their signs afresh, so D_i varies in time while |Π D_i| stays fixed per eigen-direction.
SPECTRA = {"inside": (0.5, 0.95), "on": (1.0, 1.0), "outside": (1.05, 1.2)}
# ‖ε‖_F at which the curves over k are drawn
EPS_REF = 1e-3
SEED = 0
# round-off of one solve and product, relative to ‖x^k‖ and per unit of cond(X_i): MSEs below
# (U·cond·rms(x^k))² may be rounding and are not compared with the first-order law
ROUNDOFF = 1000 * float(np.finfo(np.float64).eps)

FIRST_ORDER = (
    "With X_i = X⁰(I + iE), E = X⁰⁻¹ε, each X_i⁻¹X_{i−1} = I − E + O(ε²), so Π A_i = "
    "X⁰(I + (k−1)E) D_{k−1}(I − E)D_{k−2} ⋯ (I − E)D_0 X⁰⁻¹ and the error x^k − x̂^k = "
    "X⁰ (E ∘ C_k) y + O(ε²), y = X⁰⁻¹x⁰, C_k[a, b] = (k−1) S_k[b] − Σ_{j=1}^{k−1} "
    "S_k[a]/S_j[a] · S_j[b], S_j = Π_{i<j} D_i. Hence MSE_k = ‖ε‖_F² c_k(G) + O(‖ε‖³) for "
    "ε = ‖ε‖_F G, c_k(G) = ‖X⁰((X⁰⁻¹G) ∘ C_k) y‖² / n. C_k vanishes on the diagonal: a drift "
    "that only rescales eigenvectors (E diagonal) leaves no first-order error (none at all). "
    "Averaged over directions G uniform on the unit sphere of R^{n×n}: c̄_k = "
    "Σ (X⁰ᵀX⁰) ∘ (WWᵀ) ∘ (C_k diag(y²) C_kᵀ) / n³, W = X⁰⁻¹."
)
DRAWN = (
    "n-dimensional real maps A_i = X_i D_i X_i⁻¹, X_{i+1} = X_i + ε, i = 0..k−1; X⁰ has "
    "standard-normal columns scaled to unit length, x⁰ is standard normal scaled to mean square "
    "1 (numpy default_rng(SEED)). D_i = diag(m_j s_ij): moduli m_j uniform in the spectrum's "
    "range, signs s_ij = ±1 drawn per step. ε = ‖ε‖_F · G with G a standard-normal n×n matrix "
    "scaled to unit Frobenius norm, one G per draw. Exact: x^{i+1} = X_i (D_i (X_i⁻¹ x^i)) by "
    "a linear solve per step (float64); approximation: x̂^k = X⁰ (Π_{i<k} D_i) X⁰⁻¹ x⁰. "
    "MSE_k = mean over the n coordinates of (x^k − x̂^k)². (a) MSE after `steps` steps vs "
    "‖ε‖_F: each draw (dots), the mean over draws (markers), the first-order law mean_G "
    "c_k(G) ‖ε‖² (line). (b) MSE vs k at ‖ε‖_F = EPS_REF, mean over draws, and the "
    "first-order law (dotted). (c) |MSE / (c_k(G) ‖ε‖²) − 1| at k = steps, median and range "
    "over draws: the first-order law's relative error, O(‖ε‖) where it holds; points where "
    "the MSE is below its round-off floor (U·max cond(X_i)·rms(x^k))², U = 1000 float64 ulps, "
    "are not compared (counted in meta)."
)
ASSUMPTION = (
    "The paper gives no sizes (appendix A.2): n, the number of steps, the moduli of the three "
    "spectra (inside, on and outside the unit circle), the random signs that make D_i vary in "
    "time, the ‖ε‖ range and the number of directions are our choices. ε is the same matrix at "
    "every step, as in X^{i+1} = X^i + ε."
)


def setup(n: int, steps: int, moduli: tuple[float, float], draws: int, seed: int = SEED) -> dict:
    """X⁰ (unit columns), x⁰ (mean square 1), the diagonals D (steps, n) and ``draws`` unit
    Frobenius-norm directions G (draws, n, n), from numpy's default_rng(``seed``)."""
    rng = np.random.default_rng(seed)
    x_mat = rng.standard_normal((n, n))
    x_mat /= np.linalg.norm(x_mat, axis=0)
    x0 = rng.standard_normal(n)
    x0 /= np.sqrt(np.mean(x0**2))
    lo, hi = moduli
    mod = np.sort(rng.uniform(lo, hi, n))[::-1]
    d = mod * rng.choice([-1.0, 1.0], size=(steps, n))
    g = rng.standard_normal((draws, n, n))
    g /= np.linalg.norm(g, axis=(1, 2), keepdims=True)
    return {"X0": x_mat, "x0": x0, "D": d, "G": g, "moduli": mod}


def _require_x64() -> None:
    if not x64_enabled():
        raise InputError(
            "Figure 7 computes in float64: call chaosgrad.enable_x64() first "
            "(`chaosgrad figures` does)"
        )


def exact_states(x_mat, eps, d, x0):
    """x^k for k = 0..steps of x^{i+1} = X_i D_i X_i⁻¹ x^i with X_i = ``x_mat`` + i·``eps``,
    shaped (steps + 1, n). Jittable and differentiable in ``eps``."""

    def body(carry, di):
        x_i, x = carry
        x = x_i @ (di * jnp.linalg.solve(x_i, x))
        return (x_i + eps, x), x

    _, xs = jax.lax.scan(body, (x_mat, x0), d)
    return jnp.concatenate([x0[None], xs])


def approximate_states(x_mat, d, x0):
    """x̂^k = X⁰ (Π_{i<k} D_i) X⁰⁻¹ x⁰ for k = 0..steps, shaped (steps + 1, n)."""
    y = jnp.linalg.solve(x_mat, x0)
    cum = jnp.concatenate([jnp.ones((1, d.shape[1]), d.dtype), jnp.cumprod(d, axis=0)])
    return (cum * y) @ x_mat.T


def first_order_coefficients(d: np.ndarray) -> np.ndarray:
    """C_k[a, b] = (k−1) S_k[b] − Σ_{j=1}^{k−1} (Π_{j≤i<k} d_i[a]) S_j[b] for k = 0..steps,
    S_j = Π_{i<j} d_i, shaped (steps + 1, n, n); by the recursion T_{k+1} = d_k[a] (T_k +
    S_k[b]) from T_1 = 0 (no division by the eigenvalues). C_0 = C_1 = 0."""
    d = np.asarray(d, np.float64)
    steps, n = d.shape
    s = np.concatenate([np.ones((1, n)), np.cumprod(d, axis=0)])  # S_0..S_steps
    c = np.zeros((steps + 1, n, n))
    t = np.zeros((n, n))
    for k in range(1, steps + 1):
        c[k] = (k - 1) * s[k][None, :] - t
        t = d[k][:, None] * (t + s[k][None, :]) if k < steps else t
    return c


def first_order_error(x_mat, g, d, x0) -> np.ndarray:
    """The error's term linear in ε = G: X⁰ ((X⁰⁻¹G) ∘ C_k) X⁰⁻¹x⁰ for k = 0..steps,
    shaped (steps + 1, n)."""
    x_mat = np.asarray(x_mat, np.float64)
    e = np.linalg.solve(x_mat, np.asarray(g, np.float64))
    y = np.linalg.solve(x_mat, np.asarray(x0, np.float64))
    c = first_order_coefficients(d)
    return np.einsum("pa,kab,b->kp", x_mat, e[None] * c, y)


def first_order_mse(x_mat, g, d, x0) -> np.ndarray:
    """c_k(G) = ‖first-order error‖² / n: MSE_k ≈ c_k ‖ε‖² for ε = ‖ε‖·G, ‖G‖_F = 1."""
    delta = first_order_error(x_mat, g, d, x0)
    return np.mean(delta**2, axis=1)


def expected_first_order_mse(x_mat, d, x0) -> np.ndarray:
    """c̄_k: c_k(G) averaged over G uniform on the unit Frobenius sphere (E[G_pq G_rs] =
    δ_pr δ_qs / n²), Σ (X⁰ᵀX⁰) ∘ (WWᵀ) ∘ (C_k diag(y²) C_kᵀ) / n³ with W = X⁰⁻¹."""
    x_mat = np.asarray(x_mat, np.float64)
    n = x_mat.shape[0]
    w = np.linalg.inv(x_mat)
    y = w @ np.asarray(x0, np.float64)
    c = first_order_coefficients(d)
    k = np.einsum("kab,b,kcb->kac", c, y**2, c)
    return np.einsum("ac,ac,kac->k", x_mat.T @ x_mat, w @ w.T, k) / n**3


def measure(n: int, steps: int, moduli, eps, draws: int, seed: int = SEED) -> dict:
    """One spectrum: MSE_k of the approximation for every draw and ‖ε‖ (draws, E, steps + 1),
    the first-order coefficients c_k(G) per draw and c̄_k, and the round-off floor."""
    _require_x64()
    p = setup(n, steps, moduli, draws, seed)
    x_mat, x0, d = (jnp.asarray(p[k], jnp.float64) for k in ("X0", "x0", "D"))
    eps = np.asarray(eps, np.float64)
    approx = approximate_states(x_mat, d, x0)

    def one(g, s):
        xs = exact_states(x_mat, s * g, d, x0)
        # the largest cond(X_i) over the run, for the round-off floor
        conds = jax.vmap(jnp.linalg.cond)(
            x_mat[None] + s * jnp.arange(steps)[:, None, None] * g[None]
        )
        return jnp.mean((xs - approx) ** 2, axis=1), jnp.max(conds)

    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    mse, cond = (np.asarray(a) for a in run(jnp.asarray(p["G"]), jnp.asarray(eps)))
    rms = np.sqrt(np.mean(np.asarray(approx) ** 2, axis=1))
    floor = (ROUNDOFF * cond[..., None] * rms[None, None, :]) ** 2
    coef = np.stack([first_order_mse(p["X0"], g, p["D"], p["x0"]) for g in p["G"]])
    return {
        "mse": mse,
        "cond_max": cond,
        "floor": floor,
        "first_order": coef,
        "expected_first_order": expected_first_order_mse(p["X0"], p["D"], p["x0"]),
        "moduli": p["moduli"],
        "cond_x0": np.asarray(np.linalg.cond(p["X0"])),
    }


def first_order_relative_error(p: dict, eps) -> np.ndarray:
    """|MSE / (c_k(G) ‖ε‖²) − 1| at the last step, shaped (draws, E); NaN where the MSE is
    under its round-off floor (not compared)."""
    eps = np.asarray(eps, np.float64)
    pred = p["first_order"][:, None, -1] * eps[None, :] ** 2
    rel = np.abs(p["mse"][..., -1] / pred - 1)
    return np.where(p["mse"][..., -1] > p["floor"][..., -1], rel, np.nan)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def summary(p: dict, eps, steps: int) -> dict:
    """The numbers the gallery quotes for one spectrum."""
    eps = np.asarray(eps, np.float64)
    rel = first_order_relative_error(p, eps)
    mean_mse = p["mse"][..., -1].mean(axis=0)
    small = eps <= 1e-4  # well inside the first-order regime at these sizes
    iref = int(np.argmin(np.abs(eps - EPS_REF)))
    med = np.nanmedian(rel, axis=0) if np.isfinite(rel).any() else rel[0]
    breaks = [float(e) for e, r in zip(eps, med, strict=True) if np.isfinite(r) and r > 0.1]
    lo = int(np.argmax(np.isfinite(rel).all(axis=0)))  # the smallest ε compared on every draw
    fit = (eps <= EPS_REF) & np.isfinite(med) & (med > 0)
    half = max(1, steps // 2)
    return {
        "slope_small_eps": loglog_slope(eps[small], mean_mse[small]),
        "rel_error_smallest_eps": float(np.nanmax(rel[:, lo])),
        "smallest_eps_compared": float(eps[lo]),
        # the first-order law's relative error is O(‖ε‖): log-log slope 1 where it holds
        "rel_error_slope": loglog_slope(eps[fit], med[fit]) if fit.sum() >= 2 else None,
        "below_floor": int(np.sum(~np.isfinite(rel))),
        "eps_first_order_off_by_10pct": min(breaks) if breaks else None,
        "mse_ref_final": float(p["mse"][:, iref, -1].mean()),
        "first_order_ref_final": float(p["first_order"][:, -1].mean() * eps[iref] ** 2),
        "expected_first_order_final": float(p["expected_first_order"][-1]),
        "mean_first_order_final": float(p["first_order"][:, -1].mean()),
        "growth_second_half": float(
            p["expected_first_order"][-1] / p["expected_first_order"][half]
        ),
        "cond_x0": float(p["cond_x0"]),
        "cond_max_largest_eps": float(np.max(p["cond_max"][:, -1])),
        "nonfinite": int(np.sum(~np.isfinite(p["mse"]))),
        "moduli": [float(np.min(p["moduli"])), float(np.max(p["moduli"]))],
    }


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Exact product vs approximation for each spectrum; first-order law beside it."""
    size = SIZES[scale]
    lo, hi = size["eps"]
    eps = np.unique(np.append(np.logspace(np.log10(lo), np.log10(hi), size["eps_points"]), EPS_REF))
    out = {"eps": eps, "steps": np.arange(size["steps"] + 1)}
    meta: dict[str, Any] = {
        "sizes": size,
        "spectra": {k: list(v) for k, v in SPECTRA.items()},
        "eps_ref": EPS_REF,
        "seed": SEED,
        "roundoff_per_cond": ROUNDOFF,
        "drawn": DRAWN,
        "assumption": ASSUMPTION,
        "first_order": FIRST_ORDER,
        "summary": {},
    }
    for name, moduli in SPECTRA.items():
        p = store.part(
            f"drift-{name}",
            lambda m=moduli: measure(size["n"], size["steps"], m, eps, size["draws"]),
        )
        for k, v in p.items():
            out[f"{k}_{name}"] = v
        meta["summary"][name] = summary(p, eps, size["steps"])
    return out, meta


def draw(results: dict, meta: dict, path) -> None:
    """Three panels: MSE vs ‖ε‖ at the last step, MSE vs k at EPS_REF, and the first-order
    law's relative error vs ‖ε‖."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    n, steps, draws = (meta["sizes"][k] for k in ("n", "steps", "draws"))
    eps, k = results["eps"], results["steps"]
    iref = int(np.argmin(np.abs(eps - meta["eps_ref"])))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 5.2))
    for j, name in enumerate(SPECTRA):
        col = f"C{j}"
        lo, hi = meta["summary"][name]["moduli"]
        label = (
            f"{name} the unit circle (|λ| = {lo:.2f})"
            if lo == hi
            else f"{name} the unit circle (|λ| in [{lo:.2f}, {hi:.2f}])"
        )
        mse = results[f"mse_{name}"]
        coef = results[f"first_order_{name}"]
        for dr in range(draws):
            a.loglog(eps, mse[dr, :, -1], ".", color=col, ms=2, alpha=0.35)
        a.loglog(eps, mse[:, :, -1].mean(axis=0), "o", color=col, ms=5, mfc="none", label=label)
        a.loglog(eps, coef[:, -1].mean() * eps**2, "-", color=col, lw=1)
        # from k = 2: x^1 = A_0 x⁰ is the approximation itself (X_0 = X⁰), its MSE rounding
        b.semilogy(k[2:], mse[:, iref, 2:].mean(axis=0), "o-", color=col, ms=3, lw=1, label=name)
        b.semilogy(k[2:], coef[:, 2:].mean(axis=0) * eps[iref] ** 2, ":", color="k", lw=1)
        sub = results[f"first_order_{name}"][:, None, -1] * eps[None, :] ** 2
        rel = np.abs(mse[..., -1] / sub - 1)
        rel = np.where(mse[..., -1] > results[f"floor_{name}"][..., -1], rel, np.nan)
        ok = np.isfinite(rel).any(axis=0)
        if ok.any():
            c.fill_between(
                eps[ok],
                np.nanmin(rel[:, ok], axis=0),
                np.nanmax(rel[:, ok], axis=0),
                color=col,
                alpha=0.2,
                lw=0,
            )
            c.loglog(
                eps[ok], np.nanmedian(rel[:, ok], axis=0), "o-", color=col, ms=3, lw=1, label=name
            )
    c.loglog(eps, eps / eps[0] * 1e-4, "--", color="0.5", lw=0.8, label="slope 1 (∝ ‖ε‖)")
    a.set_title(
        f"(a) MSE after k = {steps} steps vs ‖ε‖ (dots: {draws} directions each;\n"
        "markers: their mean; lines: first-order law ‖ε‖² · mean c_k)",
        fontsize=10,
    )
    a.set_xlabel("‖ε‖_F (the same ε added to X_i at every step)")
    a.set_ylabel(f"MSE of X⁰(Π D_i)X⁰⁻¹x⁰ at k = {steps}")
    a.legend(fontsize=8, loc="upper left")
    b.set_title(
        f"(b) MSE vs k at ‖ε‖ = {eps[iref]:g}, mean over directions\n"
        "(dotted: first-order law; k = 1 is exact: X_0 = X⁰)",
        fontsize=10,
    )
    b.set_xlabel("k (number of maps in the product)")
    b.set_ylabel("MSE_k")
    b.legend(fontsize=8, loc="lower right")
    c.set_title(
        f"(c) relative error of the first-order law at k = {steps}\n"
        "(median and range over directions; under round-off: not drawn)",
        fontsize=10,
    )
    c.set_xlabel("‖ε‖_F")
    c.set_ylabel("|MSE / (c_k ‖ε‖²) − 1|")
    c.legend(fontsize=8, loc="upper left")
    for ax in (a, b, c):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Figure 7 (appendix A.2): maps A_i = X_i D_i X_i⁻¹ with drifting eigenvectors "
        f"X_{{i+1}} = X_i + ε, n = {n}, float64",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
