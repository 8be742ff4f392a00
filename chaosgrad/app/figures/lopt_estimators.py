"""Beyond the paper: which estimator of the learned-optimizer meta-gradient, and up to which
unroll length is backprop the best per unit of compute? Backprop, truncated backprop, ES,
truncated ES, PES and their inverse-variance combination on Figure 3's system, at Figure 3's
point and shifts, each number with a 95% interval and the reference's own error enforced.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from chaosgrad.app.compare import compare, leading_exponent
from chaosgrad.app.figures.learned_optimizer import (
    SEED,
    SHIFTS,
    _shifted,
    chosen_point,
    make_system,
)
from chaosgrad.stats import Interval

ESTIMATORS = ("backprop", "tbptt", "es", "tes", "pes", "nres", "combined")
SIZES = {
    "quick": {"unrolls": [8, 32, 128, 256], "samples": 32, "seconds": 12.0, "population": 8,
              "window": 10, "reference_per_batch": 8, "reference_batches": 128,
              "candidates": 10, "candidate_points": 21, "candidate_T": 128, "dtype": "float32"},
    "paper": {"unrolls": [8, 32, 128, 256, 512, 1024], "samples": 64, "seconds": 120.0,
              "population": 8, "window": 10, "reference_per_batch": 8,
              "reference_batches": 512, "candidates": 10, "candidate_points": 41,
              "candidate_T": 128, "dtype": "float64"},
}
SIGMA = 0.01  # ES/PES perturbation scale: Figure 3's smoothing σ
# The reference's batches are as large as the estimators' populations, so the reference
# reuses the compiled backprop (or ES) program instead of compiling its own at every T.
FIELDS = ("rel_error", "rel_error_seconds", "bias", "variance")


def cell(system, theta, horizon: int, size: dict, key) -> dict:
    """One (shift, unroll length): `compare` of every estimator, as arrays.

    Returns per estimator (in ``ESTIMATORS`` order) the relative RMS error at equal unroll
    steps and at equal seconds, the bias and the variance of one estimate, each as
    (value, low, high); the bias's status (0 upper bound, 1 resolved, 2 reference too noisy);
    steps and seconds per estimate; the estimates taken and how many were non-finite
    (left out of the statistics: with fewer than 4 finite ones the numbers are NaN); and the
    reference's norm, standard error and its upper bound, whether backprop ties for best,
    the names tied for best, and the null check (reparameterisation backprop against an
    independent sample of itself: resolved or not, and its p-value).
    """
    c = compare(system, theta, ESTIMATORS, horizon=horizon, samples=size["samples"],
                window=min(size["window"], horizon), sigma=SIGMA,
                population=size["population"], reference="auto",
                reference_batches=size["reference_batches"],
                reference_per_batch=size["reference_per_batch"], seconds=size["seconds"],
                key=key, progress=False)
    by = {s.name: s for s in c.stats}
    # equal seconds: the wall time backprop needs for the step budget, spent by each
    bp = by["backprop"]
    t_budget = c.budget / bp.steps * bp.seconds
    out = {k: np.full((len(ESTIMATORS), 3), np.nan) for k in FIELDS}
    status = np.zeros(len(ESTIMATORS), np.int32)
    steps = np.zeros(len(ESTIMATORS))
    secs = np.zeros(len(ESTIMATORS))
    counts = np.zeros((len(ESTIMATORS), 2), np.int64)  # estimates taken, non-finite ones
    codes = {"upper bound": 0, "resolved": 1, "reference too noisy": 2}
    norm = c.reference_norm
    for i, name in enumerate(ESTIMATORS):
        s = by[name]
        out["rel_error"][i] = s.relative_error[:3]
        share = s.seconds / t_budget
        mse_s = [s.bias.value**2 + s.variance_eff.value * share,
                 s.bias.low**2 + s.variance_eff.low * share,
                 s.bias.high**2 + s.variance_eff.high * share]
        out["rel_error_seconds"][i] = [math.sqrt(m) / norm if norm > 0 else math.inf
                                       for m in mse_s]
        out["bias"][i] = s.bias[:3]
        out["variance"][i] = s.variance[:3]
        status[i] = codes[s.bias_status]
        steps[i], secs[i] = s.steps, s.seconds
        counts[i] = s.samples, s.nonfinite
    return {**out, "bias_status": status, "steps": steps, "seconds": secs, "counts": counts,
            "reference": np.array([norm, c.reference_se, c.reference_se_upper]),
            "reference_kind": np.asarray(c.reference),
            "backprop_best": np.asarray("backprop" in c.tied),
            "tied": np.asarray(",".join(c.tied)), "budget": np.asarray(c.budget),
            "null_resolved": np.asarray(bool(c.null_check.get("resolved", False))),
            "null_p": np.asarray(float(c.null_check.get("p_value", math.nan))),
            "target": np.asarray(c.target)}


def noisy_from(unrolls, reference) -> int | None:
    """The first unroll length at which the reference's 95% upper standard error reaches its
    own norm: from there the study says the reference is too noisy instead of ranking."""
    for t, (norm, _, upper) in zip(unrolls, np.asarray(reference), strict=True):
        if upper >= norm:
            return int(t)
    return None


def crossover(unrolls, backprop_best) -> int | None:
    """The first unroll length from which backprop is no longer among the best (another
    estimator's error interval lies wholly below backprop's), or None if it always is."""
    for t, best in zip(unrolls, backprop_best, strict=True):
        if not bool(best):
            return int(t)
    return None


def _lyapunov_part(system, theta, key, horizon: int) -> dict:
    lam, units = leading_exponent(system, theta, key, horizon)
    return {"interval": np.array([lam.value, lam.low, lam.high, lam.level]),
            "units": np.asarray(units)}


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Choose θ as Figure 3 does, then compare the estimators at every (shift, unroll)."""

    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = make_system(size["dtype"])
    key = jax.random.PRNGKey(SEED)
    theta, direction, report = chosen_point(system, size, key, store)
    out = {}
    cells = [(i, j) for i in range(len(SHIFTS)) for j in range(len(size["unrolls"]))]
    t_max = int(max(size["unrolls"]))
    lams = {}
    with progress_bar(len(cells), "figure lopt_estimators", progress, min_total=1) as bar:
        for i, j in cells:
            th = _shifted(theta, direction, SHIFTS[i])
            t = int(size["unrolls"][j])
            if i not in lams:
                # λ1 for the reference rule, once per shift (at the longest T's settings)
                lam = store.part(f"lyapunov{i}", lambda th=th, i=i: _lyapunov_part(
                    system, th, jax.random.fold_in(key, 7_000 + i), t_max))
                lams[i] = (Interval(*(float(x) for x in lam["interval"])), str(lam["units"]))
            part = store.part(f"cell{i}_{j}", lambda th=th, t=t: cell(
                system, th, t, size, jax.random.fold_in(key, 100 + t)))
            for k, v in part.items():
                out.setdefault(k, {})[(i, j)] = v
            bar.update(1)
    arrays = {}
    for k, d in out.items():
        first = np.asarray(next(iter(d.values())))
        arr = np.empty((len(SHIFTS), len(size["unrolls"])) + first.shape, first.dtype
                       if first.dtype.kind != "U" else object)
        for (i, j), v in d.items():
            arr[i, j] = v
        arrays[k] = arr.astype(str) if arr.dtype == object else arr
    arrays["unrolls"] = np.asarray(size["unrolls"])
    arrays["shifts"] = np.asarray(SHIFTS)
    cross = {str(s): crossover(size["unrolls"], arrays["backprop_best"][i])
             for i, s in enumerate(SHIFTS)}
    noisy = {str(s): noisy_from(size["unrolls"], arrays["reference"][i])
             for i, s in enumerate(SHIFTS)}
    table = {str(s): {str(t): {
        "reference": str(arrays["reference_kind"][i, j]),
        "reference_norm": float(arrays["reference"][i, j, 0]),
        "reference_se": float(arrays["reference"][i, j, 1]),
        "reference_se_upper": float(arrays["reference"][i, j, 2]),
        "tied_for_best": str(arrays["tied"][i, j]).split(","),
        "estimators": {e: {f: [float(x) for x in arrays[f][i, j, k]] for f in FIELDS}
                       | {"bias_status": ["upper bound", "resolved", "reference too noisy"][
                           int(arrays["bias_status"][i, j, k])],
                          "steps": float(arrays["steps"][i, j, k]),
                          "estimates": int(arrays["counts"][i, j, k, 0]),
                          "nonfinite_estimates": int(arrays["counts"][i, j, k, 1]),
                          "seconds": float(arrays["seconds"][i, j, k])}
                       for k, e in enumerate(ESTIMATORS)}}
        for j, t in enumerate(size["unrolls"])} for i, s in enumerate(SHIFTS)}
    meta = {"sizes": size, "estimators": ESTIMATORS, "sigma": SIGMA, "shifts": SHIFTS,
            "theta_choice": report, "system": system.describe(),
            "crossover": cross, "reference_too_noisy_from": noisy,
            "crossover_rule": "the first unroll length at which another estimator's 95% "
                              "interval of relative RMS error at equal unroll steps lies "
                              "wholly below backprop's (None: backprop ties for best at "
                              "every length measured)",
            "lyapunov": {str(s): {"lambda1": list(lams[i][0][:3]), "units": lams[i][1]}
                         for i, s in enumerate(SHIFTS)},
            "reference_rule": "auto per cell: of the smoothed target's two unbiased "
                              "estimators (backprop at θ ± σε, antithetic ES over whole "
                              "unrolls), the one with the least variance per second measured "
                              "across run keys at T; the other is a cross-check; a bias is "
                              "resolved by a sign-flip test over independent replicates",
            "null_checks": {"resolved": int(np.sum(arrays["null_resolved"])),
                            "cells": int(arrays["null_resolved"].size)},
            "results": table}
    return arrays, meta


def draw(results: dict, meta: dict, path) -> None:
    """Rows: relative RMS error at equal unroll steps, at equal seconds, bias; a column per
    shift; 95% error bars; a bias not resolved from zero is a triangle at its upper bound."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import log_scale, save

    unrolls = np.asarray(results["unrolls"])
    shifts = np.asarray(results["shifts"])
    names = list(meta["estimators"])
    rows = [("rel_error", "relative RMS error\nat equal unroll steps"),
            ("rel_error_seconds", "relative RMS error\nat equal seconds"),
            ("bias", "bias ‖E[ĝ] − g*‖")]
    fig, axes = plt.subplots(len(rows), len(shifts), figsize=(4.2 * len(shifts), 10),
                             sharex=True, squeeze=False)
    for j, s in enumerate(shifts):
        for r, (field, label) in enumerate(rows):
            ax = axes[r, j]
            vals = results[field][j]  # (unrolls, estimators, 3)
            for k, name in enumerate(names):
                x = unrolls * (1 + 0.04 * (k - len(names) / 2))
                v, lo, hi = vals[:, k, 0], vals[:, k, 1], vals[:, k, 2]
                upper = (lo <= 0) & (field == "bias")
                ok = np.isfinite(v) & (v > 0) & ~upper
                ax.errorbar(x[ok], v[ok], yerr=[v[ok] - lo[ok], hi[ok] - v[ok]], fmt="o-",
                            ms=4, capsize=2, color=f"C{k}", label=name if r == 0 else None)
                if upper.any():
                    ax.plot(x[upper], hi[upper], "v", color=f"C{k}", ms=6)
            if field == "bias":
                ax.plot(unrolls, results["reference"][j][:, 2], "k:", lw=1,
                        label="reference's error (95% upper)")
            log_scale(ax, vals[..., 2], "y", "values")
            ax.set_xscale("log")
            ax.grid(alpha=0.3, which="both")
            if j == 0:
                ax.set_ylabel(label)
            if r == 0:
                c = meta["crossover"].get(str(float(s)))
                ref = np.asarray(results["reference"][j])  # (unrolls, [norm, se, se upper])
                noisy = [int(u) for u, (n, _, up) in zip(unrolls, ref, strict=True) if up >= n]
                ax.set_title(f"shift {s:g}: backprop among the best "
                             + (f"until T < {c}" if c else "at every T measured")
                             + (f"\nreference noise ≥ ‖g*‖ from T = {noisy[0]}: no ranking"
                                if noisy else ""), fontsize=9)
                if c:
                    for rr in range(len(rows)):
                        axes[rr, j].axvline(c, color="0.5", ls="--", lw=0.8)
        axes[-1, j].set_xlabel("unroll length T")
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].legend(fontsize=7)
    fig.suptitle("Learned-optimizer meta-gradient (digits): estimators at equal compute, 95% "
                 "intervals; ▼ = bias not resolved from zero (upper bound)", fontsize=11)
    fig.tight_layout()
    save(fig, path)
