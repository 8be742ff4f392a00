"""The statistics that fill a comparison's records: the reference from its batches, each
estimator's bias, variance, cost and error at the budget against it, and the reference and
null checks."""

from __future__ import annotations

import math

import numpy as np

from chaosgrad.app.compare.records import EstimatorStats, Reference
from chaosgrad.diagnosis import TAIL_MULTIPLE, tail_table
from chaosgrad.errors import InputError
from chaosgrad.io import count_text
from chaosgrad.stats import (
    BiasTest,
    Interval,
    bias_test,
    dominated,
    samples_needed,
    trace_variance_interval,
)


def _reference_from_rows(
    rows: np.ndarray, kind: str, per_batch: int, horizon: int, note: str = ""
) -> Reference:
    """A `Reference` from independent batch estimates (rows: (batches, d)); batches with a
    non-finite gradient are left out (and must not be more than half)."""
    ok = np.all(np.isfinite(rows), axis=1)
    good = rows[ok]
    if len(good) < max(2, len(rows) // 2):
        raise InputError(
            f"the {kind} reference gradient is non-finite in {int((~ok).sum())} of "
            f"{len(ok)} batches: the system diverges at T = {horizon}"
        )
    unit = "runs" if kind == "backprop" else "pairs"
    what = {
        "es": "antithetic ES over whole unrolls",
        "reparam": "backprop at θ ± σε (reparameterisation, antithetic)",
        "backprop": "backprop",
    }[kind]
    desc = f"{kind}: {what}, {count_text(len(good) * per_batch)} {unit} in {len(good)} batches"
    return Reference(
        mean=good.mean(axis=0),
        var_of_mean=good.var(axis=0, ddof=1) / len(good),
        samples=len(good) * per_batch,
        kind=kind,
        description=desc + (f"; {note}" if note else ""),
        batches=len(good),
        rows=good,
    )


def _reference_check(cross: np.ndarray, ref: Reference, other: str) -> dict:
    """The other unbiased kind against the reference: they estimate the same gradient, so
    a resolved difference says one of them is not what it claims (or a tail was missed)."""
    ok = np.all(np.isfinite(cross), axis=1)
    t = bias_test(cross[ok], ref.rows)
    se = math.sqrt(float(np.sum(cross[ok].var(axis=0, ddof=1))) / max(ok.sum(), 1))
    return {
        "kind": other,
        "batches": int(ok.sum()),
        "difference": t.interval.to_json(),
        "p_value": t.p_value,
        "agree": not t.resolved,
        "se": se,
        "precise": bool(se < 0.2 * ref.norm and ref.se < 0.2 * ref.norm),
    }


def _null_check(a: np.ndarray, b: np.ndarray, kind: str, against: str) -> dict:
    """An unbiased estimator against an independent sample of itself: its bias must not be
    resolved (at 95%, one such check in twenty resolves by chance)."""
    a = a[np.all(np.isfinite(a), axis=1)]
    b = b[np.all(np.isfinite(b), axis=1)]
    t: BiasTest = bias_test(a, b)
    if not t.interval.finite:
        return {
            "estimator": kind,
            "against": against,
            "resolved": False,
            "sentence": f"not run ({len(a)} and {len(b)} finite samples)",
        }
    verdict = (
        "RESOLVED — the intervals here are not to be trusted"
        if t.resolved
        else "not resolved, as it should not be"
    )
    return {
        "estimator": kind,
        "against": against,
        "bias": t.interval.to_json(),
        "p_value": t.p_value,
        "resolved": t.resolved,
        "groups": t.groups,
        "sentence": f"{kind} against an independent sample of itself ({against}): bias "
        f"{t.interval.fmt()} (p = {t.p_value:.2g}), {verdict}",
    }


def _estimator_stats(
    name, est, rows, steps, secs, ref: Reference, budget, per_rep: int
) -> EstimatorStats:
    means, firsts = rows[:, 0], rows[:, 1]
    ok = np.all(np.isfinite(means), axis=1)
    good = means[ok]
    n = len(good)
    nan = Interval(math.nan, math.nan, math.nan, method="too few finite replicates")
    head = (name, dict(est.params), len(means), n, steps, secs)  # every record starts so
    base = {
        "estimator": est.name,
        "target": est.target,
        "per_replicate": per_rep,
        "traits": est.traits(),
    }
    if n < 4:
        return EstimatorStats(
            *head, nan, "upper bound", 0, nan, nan, nan, nan, int((~ok).sum()), **base
        )
    test = bias_test(good, ref.rows)
    bias = test.interval
    variance, _ = trace_variance_interval(firsts[ok])
    v_rep, _ = trace_variance_interval(good)
    veff = Interval(
        v_rep.value * per_rep,
        v_rep.low * per_rep,
        v_rep.high * per_rep,
        method=f"{per_rep} × tr Cov of a replicate mean; {v_rep.method}",
    )
    share = steps / budget
    mse = Interval(
        bias.value**2 + veff.value * share,
        bias.low**2 + veff.low * share,
        bias.high**2 + veff.high * share,
        method="bias² + variance_eff·steps/budget",
    )
    norm = ref.norm
    rel = (
        Interval(
            math.sqrt(mse.value) / norm,
            math.sqrt(mse.low) / norm,
            math.sqrt(mse.high) / norm,
            method="sqrt(MSE)/‖g*‖",
        )
        if norm > 0
        else Interval(math.inf, math.inf, math.inf, method="‖g*‖ = 0")
    )
    own = v_rep.value / n  # squared standard error of the estimator's mean
    ref_noise = float(np.sum(ref.var_of_mean))
    if test.resolved:
        status, needed = "resolved", 0
    elif ref_noise > own and ref_noise > 0:
        status = "reference too noisy"
        needed = samples_needed(ref.samples, math.sqrt(ref_noise), math.sqrt(max(own, 1e-300)))
    else:
        status, needed = "upper bound", 0
    tail = tail_table(np.linalg.norm(good, axis=1)[None])
    dom, share, limit = dominated(good)
    tails = {
        "median_norm": tail["median"][0],
        "max_norm": tail["max"][0],
        f"beyond_{TAIL_MULTIPLE:g}x_median": tail["beyond"][0],
        "dominated": dom,
        "largest_share": share,
        "gaussian_limit": limit,
    }
    return EstimatorStats(
        *head,
        bias,
        status,
        needed,
        variance,
        veff,
        mse,
        rel,
        int((~ok).sum()),
        bias_p=test.p_value,
        tails=tails,
        mean_grad=good.mean(axis=0),
        **base,
    )
