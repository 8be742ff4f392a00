"""Beyond the paper: which estimator of the learned-optimizer meta-gradient, and up to which
unroll length is backprop the best per unit of compute? Every estimator against the gradient
of the smoothed meta-loss, on Figure 3's system where its meta-loss is benign (shift 0) and
rugged (shifts 0.005 to 0.01), for several (θ, direction) picks and master seeds, each cell's
ranking with 95% intervals and how often each conclusion holds across picks and seeds.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import jax
import numpy as np

from chaosgrad.app.compare import compare
from chaosgrad.app.figures.learned_optimizer import (
    SEED,
    _shifted,
    chosen_point,
    make_system,
)

ESTIMATORS = ("backprop", "tbptt", "es", "tes", "pes", "nres", "combined")
# Figure 3 is rugged from shift 0.005 to 0.01 (its extrema counts); 0 is the benign point.
SHIFTS = (0.0, 0.005, 0.0075, 0.01)
SIZES: dict[str, dict[str, Any]] = {
    # each (pick, seed, shift, T) is one `compare`: 7 estimators × 8 replicates and a
    # reference of 10 × 8 batches; sized for a GPU at both scales (see `cost_note`)
    "quick": {
        "unrolls": [32, 128, 256],
        "shifts": SHIFTS,
        "picks": 3,
        "seeds": 3,
        "samples": 8,
        "seconds": None,
        "population": 8,
        "window": 10,
        "reference_per_batch": 8,
        "reference_batches": None,
        "candidates": 10,
        "candidate_points": 21,
        "candidate_T": 128,
        "dtype": "float64",
    },
    "paper": {
        "unrolls": [8, 32, 128, 256, 512, 1024],
        "shifts": SHIFTS,
        "picks": 5,
        "seeds": 5,
        "samples": 16,
        "seconds": None,
        "population": 8,
        "window": 10,
        "reference_per_batch": 8,
        "reference_batches": None,
        "candidates": 10,
        "candidate_points": 41,
        "candidate_T": 128,
        "dtype": "float64",
    },
}
SIGMA = 0.01  # ES/PES/NRES perturbation scale and the target's smoothing: Figure 3's σ
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
    c = compare(
        system,
        theta,
        ESTIMATORS,
        horizon=horizon,
        samples=size["samples"],
        window=min(size["window"], horizon),
        sigma=SIGMA,
        population=size["population"],
        reference="auto",
        reference_batches=size["reference_batches"],
        reference_per_batch=size["reference_per_batch"],
        seconds=size["seconds"],
        key=key,
        progress=False,
    )
    assert c is not None  # compare returns None on processes other than 0 only
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
        mse_s = [
            s.bias.value**2 + s.variance_eff.value * share,
            s.bias.low**2 + s.variance_eff.low * share,
            s.bias.high**2 + s.variance_eff.high * share,
        ]
        out["rel_error_seconds"][i] = [math.sqrt(m) / norm if norm > 0 else math.inf for m in mse_s]
        out["bias"][i] = s.bias[:3]
        out["variance"][i] = s.variance[:3]
        status[i] = codes[s.bias_status]
        steps[i], secs[i] = s.steps, s.seconds
        counts[i] = s.samples, s.nonfinite
    return {
        **out,
        "bias_status": status,
        "steps": steps,
        "seconds": secs,
        "counts": counts,
        "reference": np.array([norm, c.reference_se, c.reference_se_upper]),
        "reference_kind": np.asarray(c.reference),
        "backprop_best": np.asarray("backprop" in c.tied),
        "tied": np.asarray(",".join(c.tied)),
        "budget": np.asarray(c.budget),
        "recommended": np.asarray(c.recommended or ""),
        "timing": np.array(
            [c.timing.get("compile_seconds", math.nan), c.timing.get("sampling_seconds", math.nan)]
        ),
        "null_resolved": np.asarray(bool(c.null_check.get("resolved", False))),
        "null_p": np.asarray(float(c.null_check.get("p_value", math.nan))),
        "target": np.asarray(c.target),
    }


def crossover(unrolls, separated_below) -> int | None:
    """The first unroll length at which another estimator's error interval lies wholly
    below backprop's (``separated_below[j]``), or None if that never happens."""
    for t, below in zip(unrolls, separated_below, strict=True):
        if bool(below):
            return int(t)
    return None


def backprop_beaten(part: dict) -> bool:
    """Whether some estimator's relative-error interval lies wholly below backprop's."""
    err = np.asarray(part["rel_error"], np.float64)
    bp = err[ESTIMATORS.index("backprop")]
    others = [err[k] for k, e in enumerate(ESTIMATORS) if e != "backprop"]
    return bool(np.isfinite(bp[1]) and any(np.isfinite(o[2]) and o[2] < bp[1] for o in others))


def picks_from(system, report: dict, picks: int):
    """The ``picks`` (θ, direction) candidates of Figure 3's choice report whose slice drops
    most (Figure 3's rule until it took the roughest slice; this study keeps it, so its saved
    results stay comparable), each direction's sign set so its minimum lies at positive
    shifts."""
    from chaosgrad.gradients import random_direction
    from chaosgrad.systems.lopt import make_optimizer

    dtype = jax.tree_util.tree_leaves(system.theta)[0].dtype
    opt = make_optimizer("mlp", dtype=dtype)
    n = sum(x.size for x in jax.tree_util.tree_leaves(system.theta))
    rows = sorted(
        (r for r in report["candidates"] if np.isfinite(r["drop"])), key=lambda r: -r["drop"]
    )[:picks]
    out = []
    for r in rows:
        theta = opt.init_theta(jax.random.fold_in(jax.random.PRNGKey(r["seed"]), 1))
        d = random_direction(theta, jax.random.PRNGKey(r["direction_key"]), norm=float(n))
        sign = -1.0 if r["argmin_shift"] < 0 else 1.0
        out.append(
            (
                theta,
                jax.tree_util.tree_map(lambda x, s=sign: s * x, d),
                {
                    "seed": r["seed"],
                    "direction_key": r["direction_key"],
                    "sign": sign,
                    "drop": r["drop"],
                },
            )
        )
    return out


def summarize(parts: dict, shifts, unrolls, picks: int, seeds: int) -> dict:
    """How often each conclusion holds across picks and seeds, per (shift, T).

    ``parts[(p, q, i, j)]`` is `cell`'s record for pick p, seed q, shift i, unroll j.
    Per (shift, T): the recommended estimator's counts (None: a tie or no recommendation),
    per estimator how often it is among the best (its interval overlaps the best's), the
    median and range of its relative error, backprop beaten (another estimator separated
    below it), and the null checks resolved. Per shift: the crossover T of each (pick,
    seed) — reported only where the intervals separate — and its spread."""
    runs = [(p, q) for p in range(picks) for q in range(seeds)]
    table: dict[str, dict] = {}
    for i, s in enumerate(shifts):
        table[str(s)] = {}
        for j, t in enumerate(unrolls):
            cells = [parts[(p, q, i, j)] for p, q in runs]
            rec = Counter(str(c["recommended"]) or "none" for c in cells)
            est = {}
            for k, e in enumerate(ESTIMATORS):
                errs = np.array([c["rel_error"][k][0] for c in cells], np.float64)
                fin = errs[np.isfinite(errs)]
                est[e] = {
                    "among_best": sum(e in str(c["tied"]).split(",") for c in cells),
                    "rel_error_median": float(np.median(fin)) if fin.size else math.nan,
                    "rel_error_range": [float(fin.min()), float(fin.max())]
                    if fin.size
                    else [math.nan, math.nan],
                    "bias_resolved": sum(int(c["bias_status"][k]) == 1 for c in cells),
                }
            table[str(s)][str(t)] = {
                "runs": len(cells),
                "recommended": dict(rec),
                "estimators": est,
                "backprop_beaten": sum(backprop_beaten(c) for c in cells),
                "null_resolved": sum(bool(c["null_resolved"]) for c in cells),
                "reference_kinds": dict(
                    Counter(str(c["reference_kind"]).split(":")[0] for c in cells)
                ),
            }
    cross = {}
    for i, s in enumerate(shifts):
        ts = [
            crossover(unrolls, [backprop_beaten(parts[(p, q, i, j)]) for j in range(len(unrolls))])
            for p, q in runs
        ]
        found = [t for t in ts if t is not None]
        cross[str(s)] = {
            "per_run": ts,
            "found": len(found),
            "runs": len(ts),
            "median": float(np.median(found)) if found else None,
            "range": [min(found), max(found)] if found else None,
        }
    nulls = sum(bool(c["null_resolved"]) for c in parts.values())
    from scipy.stats import binomtest

    n = len(parts)
    test = binomtest(nulls, n, 0.05) if n else None
    timing = np.array(
        [np.asarray(c.get("timing", [math.nan, math.nan]), np.float64) for c in parts.values()]
    )
    return {
        "cells": table,
        "crossover": cross,
        "seconds": {
            "compile": float(np.nansum(timing[:, 0])),
            "sampling": float(np.nansum(timing[:, 1])),
        },
        "null_checks": {
            "resolved": nulls,
            "cells": n,
            "p_value_vs_5_percent": test.pvalue if test else math.nan,
        },
    }


def run(scale: str, store, progress) -> tuple[dict, dict]:
    """Choose the (θ, direction) picks by the drop of their slice (`picks_from`), then
    `compare` every estimator at every (pick, master seed, shift, unroll)."""
    from chaosgrad.progress import progress_bar

    size = SIZES[scale]
    system = make_system(size["dtype"])
    key = jax.random.PRNGKey(SEED)
    _, _, report = chosen_point(system, size, key, store)
    chosen = picks_from(system, report, size["picks"])
    shifts, unrolls = tuple(size["shifts"]), [int(t) for t in size["unrolls"]]
    jobs = [
        (p, q, i, j)
        for p in range(len(chosen))
        for q in range(size["seeds"])
        for i in range(len(shifts))
        for j in range(len(unrolls))
    ]
    parts = {}
    with progress_bar(len(jobs), "figure lopt_estimators", progress, min_total=1) as bar:
        for p, q, i, j in jobs:
            theta, direction, _ = chosen[p]
            th = _shifted(theta, direction, shifts[i])
            t = unrolls[j]
            parts[(p, q, i, j)] = store.part(
                f"cell{p}_{q}_{i}_{j}",
                lambda th=th, t=t, q=q: cell(
                    system, th, t, size, jax.random.fold_in(jax.random.PRNGKey(q), 100 + t)
                ),
            )
            bar.update(1)
    summary = summarize(parts, shifts, unrolls, len(chosen), size["seeds"])
    arrays = {"unrolls": np.asarray(unrolls), "shifts": np.asarray(shifts)}
    for k in ("rel_error", "bias", "variance"):
        arrays[k] = np.stack(
            [
                [
                    [
                        [
                            np.asarray(parts[(p, q, i, j)][k], np.float64)
                            for j in range(len(unrolls))
                        ]
                        for i in range(len(shifts))
                    ]
                    for q in range(size["seeds"])
                ]
                for p in range(len(chosen))
            ]
        )
    arrays["null_resolved"] = np.array(
        [
            [
                [
                    [bool(parts[(p, q, i, j)]["null_resolved"]) for j in range(len(unrolls))]
                    for i in range(len(shifts))
                ]
                for q in range(size["seeds"])
            ]
            for p in range(len(chosen))
        ]
    )
    meta = {
        "sizes": size,
        "estimators": ESTIMATORS,
        "sigma": SIGMA,
        "shifts": shifts,
        "target": "smoothed",
        "picks": [c[2] for c in chosen],
        "theta_choice": report,
        "system": system.describe(),
        **summary,
        "crossover_rule": "per (pick, seed): the first unroll length at which another "
        "estimator's 95% interval of relative RMS error at equal unroll "
        "steps lies wholly below backprop's (None: never separated)",
        "reference_rule": "auto per cell: of the smoothed target's two unbiased "
        "estimators (backprop at θ ± σε, antithetic ES over whole "
        "unrolls), the one with the least variance per second measured "
        "across run keys at T; the other is a cross-check; a bias is "
        "resolved by a sign-flip test over independent replicates",
    }
    return arrays, meta


def draw(results: dict, meta: dict, path) -> None:
    """A column per shift: relative RMS error at equal unroll steps against T, the median
    over (pick, seed) runs with their range as a band (top); how many runs have each
    estimator among the best (bottom)."""
    import matplotlib.pyplot as plt

    from chaosgrad.plots import log_scale, save

    unrolls = np.asarray(results["unrolls"])
    shifts = np.asarray(results["shifts"])
    names = list(meta["estimators"])
    err = np.asarray(results["rel_error"])[..., 0]  # (picks, seeds, shifts, T, estimators)
    runs = err.shape[0] * err.shape[1]
    flat = err.reshape(runs, *err.shape[2:])
    fig, axes = plt.subplots(
        2, len(shifts), figsize=(4.2 * len(shifts), 7.5), sharex=True, squeeze=False
    )
    for i, s in enumerate(shifts):
        ax = axes[0, i]
        for k, name in enumerate(names):
            v = flat[:, i, :, k]
            ok = np.isfinite(v).any(axis=0)
            if not ok.any():
                continue
            med = np.nanmedian(np.where(np.isfinite(v), v, np.nan), axis=0)
            lo, hi = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
            ax.plot(unrolls[ok], med[ok], "o-", color=f"C{k}", ms=4, label=name)
            ax.fill_between(unrolls[ok], lo[ok], hi[ok], color=f"C{k}", alpha=0.15)
        log_scale(ax, flat[:, i], "y", "errors")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        cross = meta["crossover"].get(str(float(s)), {})
        ax.set_title(
            f"shift {s:g}: backprop beaten (separated) in {cross.get('found', 0)} of "
            f"{cross.get('runs', runs)} runs",
            fontsize=9,
        )
        ax2 = axes[1, i]
        cells = meta["cells"][str(float(s))]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            counts = [cells[str(int(t))]["estimators"][name]["among_best"] for t in unrolls]
            ax2.bar(
                np.arange(len(unrolls)) + (k - len(names) / 2) * width,
                counts,
                width,
                color=f"C{k}",
                label=name if i == 0 else None,
            )
        ax2.set_xticks(np.arange(len(unrolls)), [str(int(t)) for t in unrolls])
        ax2.set_ylim(0, runs)
        ax2.set_xlabel("unroll length T")
        if i == 0:
            ax.set_ylabel("relative RMS error at equal unroll steps\n(median, range over runs)")
            ax2.set_ylabel(f"runs (of {runs}) with the estimator\namong the best at 95%")
    axes[0, 0].legend(fontsize=7)
    nulls = meta["null_checks"]
    fig.suptitle(
        "Learned-optimizer meta-gradient (digits), smoothed target: estimators at "
        f"equal compute over {runs} (pick, seed) runs; null checks resolved: "
        f"{nulls['resolved']} of {nulls['cells']}",
        fontsize=11,
    )
    fig.tight_layout()
    save(fig, path)
