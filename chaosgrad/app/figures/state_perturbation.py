"""Appendix oracle (ours, not a numbered figure): the mean squared error that a perturbation ε
of the *state* along one eigenvector of the FTCS heat step leaves after i steps, on both sides
of its stability bound — MSE = ε² λ_k^{2i} / n, exact by linearity. Figure 7 itself (a drift of
the eigenvector *matrix*, appendix A.2) is `perturbation`.

What is drawn, and the reading of the paper it rests on, is written into the figure's meta.json
(``drawn`` and ``assumption``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad import systems
from chaosgrad.jacobian import step_jacobian
from chaosgrad.systems.maps import heat_eigenvalues

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"n": 16, "steps": 40, "eps": [1e-6, 1e-1], "eps_points": 11},
    "paper": {"n": 64, "steps": 100, "eps": [1e-6, 1e-1], "eps_points": 21},
}
# r = αΔt/Δx² below and above the von Neumann bound ½ (the same two as the appendix figure)
RS = (0.45, 0.55)
# the ε at which the curves over i are drawn
EPS_REF = 1e-3
DRAWN = (
    "X^0 is a standard-normal initial profile (key 0) of the FTCS heat step X -> X + r L X "
    "(n interior points, Dirichlet). v_k are the unit eigenvectors of the step's dense "
    "Jacobian (jax.jacfwd, numpy eigh), ordered k = 1..n by decreasing eigenvalue λ_k. "
    "'once': the perturbed run starts at X^0 + ε v_k; 'every step': X~^{i+1} = f(X~^i) + ε v_k "
    "from X~^0 = X^0. MSE_i = mean over the n grid points of (X~^i − X^i)². The step is "
    "linear (f(X + δ) = f(X) + f(δ), checked: its Jacobian at X^0 and at 0 are equal and "
    "f(0) = 0), so the deviation δ^i = X~^i − X^i is computed exactly as δ^{i+1} = f(δ^i) "
    "from δ^0 = ε v_k ('once') or δ^{i+1} = f(δ^i) + ε v_k from δ^0 = 0 ('every step'), by "
    "the system's own step in float64, rather than as the difference of two runs: at r = 0.55 "
    "the unperturbed run grows like max|λ|^i, and the round-off of that difference "
    "(two_run_rel_error_once in meta) swamps the ε-mode of decaying eigenvectors. "
    "Markers/solid: measured; dotted/black: closed form ε² λ_k^{2i} / n ('once') and "
    "ε² (Σ_{j<i} λ_k^j)² / n ('every step') with the exact λ_k = 1 − 4r sin²(kπ/(2(n+1))). "
    "(a) MSE after `steps` steps vs ε for k = 1 and k = n at both r; (b), (c) MSE vs i at "
    "ε = EPS_REF for every k at r = 0.45 and 0.55; (d) 'every step' vs i for k = 1, n. "
    "Round-off floor of mode k: ε² (U Σ_{j≤i} s_j ρ^{i−j})² / n with U = 1000 float64 ulps, "
    "ρ = max|λ| and s_j the deviation's size at step j over ε (|λ_k|^j 'once', "
    "max(1, Σ_{l<j} |λ_k|^l) 'every step'): rounding at step j, about 10 ulps of the "
    "deviation (eigh's eigenvectors, each step's arithmetic), amplified at most ρ per step "
    "after; U is a hundred times that, so above the floor round-off is at most ~1e-4 of the "
    "MSE. A closed-form MSE below its floor is not compared (relative errors are taken above "
    "it only, and the points below counted); a measured value below it is round-off, and "
    "b, c do not draw measured values below their own mode's floor (grey dash-dot in b, c: "
    "the largest floor over k for 'once')."
)
ASSUMPTION = (
    "An oracle of ours, not the paper's Figure 7 (that is the figure `perturbation`: a drift "
    "X^{i+1} = X^i + ε of the eigenvector matrix of time-varying maps). Here the state is "
    "perturbed by ε along one eigenvector of a fixed linear step, once at the start (panels "
    "a-c) or added at every step (panel d), and the MSE must equal its closed form. The system "
    "is the FTCS heat equation, the paper's appendix example; n, the number of steps, the ε "
    "range and r = 0.45 / 0.55 are our choices."
)


def _trajectory(system, x_start, add, steps: int):
    """X^0 = ``x_start`` and X^{i+1} = f(X^i) + ``add`` for ``steps`` steps by the system's own
    step, shaped (steps + 1, n)."""
    theta = system.theta

    def body(x, _):
        x = system.step(x, theta, None)[0] + add
        return x, x

    _, xs = jax.lax.scan(body, x_start, None, length=steps)
    return jnp.concatenate([x_start[None], xs])


def _deviations(system, vecs, eps, steps):
    """Deviation MSE per step along each of ``vecs`` for each ``eps``, iterated directly:
    'once' δ^{i+1} = f(δ^i) from δ^0 = ε·v, 'every' δ^{i+1} = f(δ^i) + ε·v from δ^0 = 0. For
    a linear step with f(0) = 0 this is exactly X~^i − X^i. Shapes (k, E, steps + 1)."""

    def mse(v, e):
        zero = jnp.zeros_like(v)
        once = _trajectory(system, e * v, zero, steps)
        every = _trajectory(system, zero, e * v, steps)
        return jnp.mean(once**2, axis=1), jnp.mean(every**2, axis=1)

    per_e = jax.vmap(mse, in_axes=(None, 0))
    return jax.jit(jax.vmap(per_e, in_axes=(0, None)))(vecs, eps)


def _two_runs(system, x0, vecs, eps, steps):
    """The literal 'once' measurement, kept as evidence of its round-off: the MSE of the
    difference of the run from X^0 + ε·v and the run from X^0, shaped (k, E, steps + 1); and
    the RMS of the unperturbed run after the last step. Where the unperturbed run grows, its
    rounding (~1e-16 of its size per step, amplified like max|λ|^i) is in the difference."""
    zero = jnp.zeros_like(x0)
    base = _trajectory(system, x0, zero, steps)

    def mse(v, e):
        return jnp.mean((_trajectory(system, x0 + e * v, zero, steps) - base) ** 2, axis=1)

    once = jax.jit(jax.vmap(jax.vmap(mse, in_axes=(None, 0)), in_axes=(0, None)))(vecs, eps)
    return once, jnp.sqrt(jnp.mean(base[-1] ** 2))


def exact_mse(lam: np.ndarray, eps: np.ndarray, i: np.ndarray, n: int) -> tuple:
    """Closed forms for unit eigenvectors of a linear step: 'once' ε² λ^{2i} / n and 'every
    step' ε² (Σ_{j<i} λ^j)² / n, shaped (len(lam), len(eps), len(i))."""
    lam = np.asarray(lam, np.float64)
    i = np.asarray(i, int)
    # Σ_{j<i} λ^j for i = 0..max(i), summed term by term (the closed form (1−λ^i)/(1−λ)
    # divides by zero at λ = 1)
    powers = lam[:, None] ** np.arange(int(i.max()))
    geom = np.concatenate([np.zeros((lam.size, 1)), np.cumsum(powers, axis=1)], axis=1)[:, i]
    e2 = np.asarray(eps, np.float64)[None, :, None] ** 2
    once = e2 * (lam[:, None] ** (2 * i))[:, None, :] / n
    return once, e2 * (geom**2)[:, None, :] / n


def measure(n: int, r: float, eps, steps: int, key=None) -> dict:
    """One r: eigen-decomposition of the heat step's Jacobian, the measured MSEs (deviation
    iterated directly; the two-run difference beside it) and the closed forms."""
    system = systems.make("heat", n=n, r=r, dtype="float64")
    key = jax.random.PRNGKey(0) if key is None else key
    x0 = system.init(key, system.theta)
    jac = np.asarray(step_jacobian(system, state=x0))
    # iterating the deviation alone is exact only for a linear step: the same Jacobian at X^0
    # and at 0, and f(0) = 0
    zero = jnp.zeros_like(x0)
    if not (
        np.array_equal(jac, np.asarray(step_jacobian(system, state=zero)))
        and not np.any(np.asarray(system.step(zero, system.theta, None)[0]))
    ):
        raise RuntimeError(
            "the heat step is not linear: the deviation cannot be iterated on its own"
        )
    lam, vecs = np.linalg.eigh(jac)  # symmetric: I + rL with L the Dirichlet Laplacian
    order = np.argsort(-lam)
    lam, vecs = lam[order], vecs[:, order]
    lam_exact = np.sort(heat_eigenvalues(n, r))[::-1]
    eps = np.asarray(eps, np.float64)
    once, every = (
        np.asarray(a) for a in _deviations(system, jnp.asarray(vecs.T), jnp.asarray(eps), steps)
    )
    two_run, base_rms = (
        np.asarray(a) for a in _two_runs(system, x0, jnp.asarray(vecs.T), jnp.asarray(eps), steps)
    )
    ex_once, ex_every = exact_mse(lam_exact, eps, np.arange(steps + 1), n)
    return {
        "eigenvalues": lam,
        "eigenvalues_exact": lam_exact,
        "once": once,
        "every": every,
        "two_run_once": two_run,
        "base_rms_final": base_rms,
        "exact_once": ex_once,
        "exact_every": ex_every,
        "floor_once": roundoff_floor(lam_exact, eps, steps, n, every=False),
        "floor_every": roundoff_floor(lam_exact, eps, steps, n, every=True),
    }


# What one step's rounding leaves outside v_k, relative to the deviation: eigh's eigenvectors
# are good to ~2e-15 (10 ulps) and each FTCS step rounds at a few ulps of |δ|. A hundred times
# that, so that above the floor it gives round-off is at most ~(1/100)² of the MSE.
ROUNDOFF_PER_STEP = 1000 * float(np.finfo(np.float64).eps)


# The difference of two O(1) float64 runs resolves an RMS deviation of ~1e-10 (~1e6 ulps) at
# best: the absolute floor the two-run measurement is compared above (meta only).
TWO_RUN_FLOOR_MSE = 1e-20


def roundoff_floor(lam, eps, steps: int, n: int, every: bool) -> np.ndarray:
    """The MSE below which a measured deviation along mode k may be round-off,
    ε² (U a_k(i))² / n with a_k(i) = Σ_{j≤i} s_k(j) ρ^{i−j}: rounding of U times the
    deviation's size s_k(j) ε at step j (|λ_k|^j 'once', max(1, Σ_{l<j} |λ_k|^l) 'every
    step'), grown by at most ρ = max|λ| per step after. Shaped (len(lam), len(eps), steps + 1).
    """
    lam = np.abs(np.asarray(lam, np.float64))
    rho = float(np.max(lam))
    powers = lam[:, None] ** np.arange(steps + 1)
    if every:
        size = np.maximum(1.0, np.cumsum(powers, axis=1) - powers)  # Σ_{l<j} |λ|^l
    else:
        size = powers
    amp = np.empty_like(size)
    amp[:, 0] = size[:, 0]
    for i in range(1, steps + 1):
        amp[:, i] = rho * amp[:, i - 1] + size[:, i]
    e2 = np.asarray(eps, np.float64)[None, :, None] ** 2
    return e2 * (ROUNDOFF_PER_STEP * amp)[:, None, :] ** 2 / n


def relative_error(measured, exact, floor) -> tuple[float, int]:
    """Largest relative error of ``measured`` against ``exact`` (k, E, i) where the exact MSE
    exceeds the round-off ``floor`` (same shape), and how many points lie below it (not
    compared)."""
    ok = exact > floor
    if not ok.any():
        return float("nan"), int(exact.size)
    return float(np.max(np.abs(measured[ok] - exact[ok]) / exact[ok])), int(np.sum(~ok))


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Measured and closed-form MSEs for both r; relative errors and counts go into meta."""
    size = SIZES[scale]
    lo, hi = size["eps"]
    eps = np.logspace(np.log10(lo), np.log10(hi), size["eps_points"])
    eps = np.unique(np.append(eps, EPS_REF))
    out = {"eps": eps, "rs": np.asarray(RS), "steps": np.arange(size["steps"] + 1)}
    meta: dict[str, Any] = {
        "sizes": size,
        "rs": RS,
        "eps_ref": EPS_REF,
        "drawn": DRAWN,
        "assumption": ASSUMPTION,
        "per_r": {},
    }
    for j, r in enumerate(RS):
        # "deviation-": parts saved by the two-run measurement (keys "r0", "r1") lack the
        # iterated deviation and its floors, and are not reused
        p = store.part(f"deviation-r{j}", lambda r=r: measure(size["n"], r, eps, size["steps"]))
        for k, v in p.items():
            out[f"{k}_{j}"] = v
        lam = p["eigenvalues"]
        bad = int(np.sum(~np.isfinite(p["once"])) + np.sum(~np.isfinite(p["every"])))
        iref = int(np.argmin(np.abs(eps - EPS_REF)))
        err_once, below_once = relative_error(p["once"], p["exact_once"], p["floor_once"])
        err_every, below_every = relative_error(p["every"], p["exact_every"], p["floor_every"])
        meta["per_r"][str(r)] = {
            "eigenvalue_max_abs_error": float(np.max(np.abs(lam - p["eigenvalues_exact"]))),
            "max_abs_eigenvalue": float(np.max(np.abs(lam))),
            "modes_growing": int(np.sum(np.abs(lam) > 1)),
            "rel_error_once": err_once,
            "rel_error_every": err_every,
            "below_floor_once": below_once,
            "below_floor_every": below_every,
            "points": int(p["once"].size),
            "roundoff_per_step": ROUNDOFF_PER_STEP,
            "nonfinite": bad,
            # the literal difference of two runs against the same closed form, above the
            # absolute floor it was once compared above, and the unperturbed run's size at the
            # end: its round-off is in that difference (why the deviation is iterated alone)
            "two_run_rel_error_once": relative_error(
                p["two_run_once"],
                p["exact_once"],
                np.full(p["exact_once"].shape, TWO_RUN_FLOOR_MSE),
            )[0],
            "two_run_floor_mse": TWO_RUN_FLOOR_MSE,
            "base_rms_final": float(p["base_rms_final"]),
            # MSE after the last step at ε = EPS_REF, smoothest (k = 1) and roughest (k = n) mode
            "mse_final_k1": float(p["once"][0, iref, -1]),
            "mse_final_kn": float(p["once"][-1, iref, -1]),
            "mse_final_every_k1": float(p["every"][0, iref, -1]),
            "mse_final_every_kn": float(p["every"][-1, iref, -1]),
        }
    return out, meta


def draw(results: dict, meta: dict, path) -> None:
    """Four panels: MSE vs ε, MSE vs i for every eigenvector at each r, and the 'every step'
    perturbation."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import save

    n, steps = meta["sizes"]["n"], meta["sizes"]["steps"]
    eps, i = results["eps"], results["steps"]
    iref = int(np.argmin(np.abs(eps - meta["eps_ref"])))
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    a, b, c, d = axes.ravel()
    for j, r in enumerate(meta["rs"]):
        lam = results[f"eigenvalues_{j}"]
        for k, ls, mk in ((0, "-", "o"), (n - 1, "--", "s")):
            color = f"C{2 * j + (k > 0)}"
            # k = 1 has nearly the same λ at both r: the first r's markers are open and
            # larger, its lines wide and pale, so the second r's stay visible on top
            a.loglog(
                eps,
                results[f"once_{j}"][k, :, -1],
                mk,
                color=color,
                ms=8 if j == 0 else 4,
                mfc="none" if j == 0 else color,
                label=f"r = {r}, k = {k + 1} (λ = {lam[k]:+.3f})",
            )
            a.loglog(eps, results[f"exact_once_{j}"][k, :, -1], ls, color=color, lw=0.8)
            d.semilogy(
                i[1:],
                results[f"every_{j}"][k, iref, 1:],
                ls,
                color=color,
                lw=4 if j == 0 else 1.2,
                alpha=0.45 if j == 0 else 1,
                label=f"r = {r}, k = {k + 1}",
            )
            d.semilogy(i[1:], results[f"exact_every_{j}"][k, iref, 1:], ":", color="k", lw=0.8)
        ax = (b, c)[j]
        cmap = plt.get_cmap("coolwarm")
        for k in range(n):
            col = cmap(0.5 + 0.5 * np.clip(np.log(abs(lam[k])) / 0.2, -1, 1))
            # measured values under their own mode's round-off floor are rounding, not the
            # mode: not drawn (counted in meta.json as below_floor_once)
            meas = np.asarray(results[f"once_{j}"][k, iref], np.float64)
            meas = np.where(meas > results[f"floor_once_{j}"][k, iref], meas, np.nan)
            ax.semilogy(i, meas, color=col, lw=1)
            ax.semilogy(i, results[f"exact_once_{j}"][k, iref], ":", color="k", lw=0.5)
        pr = meta["per_r"][str(r)]
        ax.axhline(eps[iref] ** 2 / n, color="0.4", lw=0.8, ls="--", label="ε²/n (no change)")
        ax.semilogy(
            i,
            results[f"floor_once_{j}"][:, iref].max(axis=0),
            "-.",
            color="0.5",
            lw=0.8,
            label="round-off floor, largest over k\n(measured values under "
            "their own mode's floor: not drawn)",
        )
        # decaying modes fall far below anything float64 can resolve next to the others
        ax.set_ylim(1e-34, None)
        ax.set_title(
            f"({'bc'[j]}) r = {r}: each eigenvector, ε = {eps[iref]:g}; "
            f"{pr['modes_growing']} of {n} with |λ| > 1",
            fontsize=10,
        )
        ax.set_xlabel("step i")
        ax.set_ylabel("MSE_i (red: |λ| > 1, blue: |λ| < 1; dotted: ε²λ^{2i}/n)")
        ax.legend(fontsize=8, loc="upper right")
    a.loglog(eps, eps**2 / n, color="0.5", lw=0.8, ls=":", label="ε²/n")
    a.set_title(
        f"(a) MSE after {steps} steps vs ε (markers measured, lines ε²λ^{{2i}}/n)", fontsize=10
    )
    a.set_xlabel("perturbation ε along eigenvector v_k")
    a.set_ylabel(f"MSE after {steps} steps")
    a.legend(fontsize=7, loc="center right", bbox_to_anchor=(1.0, 0.42), framealpha=0.9)
    d.set_title(
        f"(d) ε = {eps[iref]:g} added along v_k at every step (dotted: closed form)", fontsize=10
    )
    d.set_xlabel("step i")
    d.set_ylabel("MSE_i")
    d.legend(fontsize=7, loc="center right", framealpha=0.9)
    for ax in axes.ravel():
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Appendix oracle (not Figure 7): FTCS heat equation, n = {n}; a state "
        "perturbation along eigenvector k changes the result by |λ_k| per step "
        "(float64)",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
