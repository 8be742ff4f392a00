"""The rules behind `diagnose`'s verdict: "diverges" (`blowup_test` on a forward unroll),
"chaotic", "stable" or "marginal" from the spectrum and the measured gradients, the critical
horizon, the non-finite report and the recommendation. `chaosgrad.diagnose` re-exports them.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from chaosgrad.diagnosis import _fi
from chaosgrad.gradients import GrowthResult, SliceResult
from chaosgrad.io import count_text
from chaosgrad.spectra import LyapunovResult
from chaosgrad.stats import NAN_INTERVAL, Interval
from chaosgrad.system import System, split_run_key
from chaosgrad.unroll import unroll

VERDICTS = ("stable", "marginal", "chaotic", "diverges")


def _verdict(
    lam: Interval,
    lam_ft: float,
    growth: Interval,
    margin: float,
    grad_nonfinite: bool,
    first_bad: int,
    variance_growth: Interval | None = None,
    diverged: str = "a forward unroll produced NaN/Inf",
) -> tuple[str, str]:
    """The verdict and its confidence. The spectrum and the measured gradients must agree,
    each resolved by its interval, for "chaotic" or "stable"; anything else is "marginal".

    diverges: the forward unroll itself blew up (`blowup_test`: NaN/Inf, or the loss or
    state grown a million-fold; checked first: exponents and gradients of a blown-up state
    say nothing about chaos; ``diverged`` says how). chaotic: λ1's interval (or
    the finite-time λ1) lies above +margin and the growth-rate interval of the gradient's
    norm lies above +margin, or that of its variance above +2·margin (or gradients
    overflowed). stable: λ1's interval and the finite-time λ1
    lie below −margin and the growth rate is not resolved as positive.
    """
    if first_bad >= 0:
        return "diverges", (
            f"certain: {diverged} at step {first_bad}; the exponents and "
            "gradients past it are meaningless"
        )
    lam_pos = (np.isfinite(lam.low) and lam.low > margin) or lam_ft > margin
    lam_neg = np.isfinite(lam.high) and lam.high < -margin and lam_ft < -margin
    var_grows = (
        variance_growth is not None
        and np.isfinite(variance_growth.low)
        and variance_growth.low > 2 * margin
    )
    grows = grad_nonfinite or (np.isfinite(growth.low) and growth.low > margin) or var_grows
    flat = not grows and not (np.isfinite(growth.value) and growth.value > margin)
    lam_txt = f"λ1 = {_fi(lam)}"
    g_txt = f"|grad| growth rate {_fi(growth)}"
    if var_grows and not (np.isfinite(growth.low) and growth.low > margin):
        g_txt = f"its variance's growth rate {_fi(variance_growth)}"
    if lam_pos and grows:
        return "chaotic", (
            f"95%: {lam_txt} lies above +{margin:.2g} and {g_txt} "
            f"{'includes overflowed gradients' if grad_nonfinite else 'too'}"
        )
    if lam_neg and flat:
        return "stable", f"95%: {lam_txt} lies below -{margin:.2g} and {g_txt} shows no growth"
    why = []
    if not (lam_pos or lam_neg):
        why.append(f"{lam_txt} is not resolved from 0 (±{margin:.2g})")
    if lam_pos and not grows:
        why.append(
            f"the spectrum stretches but {g_txt} is not resolved as growing (the loss "
            "may not feel the stretching, e.g. a relaxation to a minimum)"
        )
    if lam_neg and not flat:
        why.append(
            f"the dynamics contract asymptotically but {g_txt} grows (a transient instability)"
        )
    return "marginal", "; ".join(why) or "the intervals do not settle it"


def _resolved_above(iv: Interval | None, x: float) -> bool:
    return iv is not None and bool(np.isfinite(iv.low) and iv.low > x)


def _resolved_below(iv: Interval | None, x: float) -> bool:
    return iv is not None and bool(np.isfinite(iv.high) and iv.high < x)


def _critical(
    lam: Interval,
    lam_ft: float,
    growth: GrowthResult,
    verdict: str,
    limit: float,
    per_step: float,
    margin: float,
) -> tuple[float | None, Interval]:
    """The horizon (steps) over which backprop's variance grows ``limit`` times, on the line
    fitted to the measured variances (the table's): T* = ln(limit) / rate, with rate the
    fitted variance rate when its interval lies above +2·margin, else twice the fitted norm
    rate when that interval lies above +margin. So the table grows ``limit``-fold every T*
    steps, and T* is where it has grown that much from T = 0: absolute, whichever horizons
    were measured. Only when neither measured rate is resolved but the verdict is chaotic
    (e.g. every gradient overflowed) does it fall back to the spectrum's 2·λ1, and its
    method says so."""
    if verdict in ("stable", "diverges"):
        return None, NAN_INTERVAL
    v, g = growth.variance_rate_interval, growth.growth_interval
    if _resolved_above(v, 2 * margin):
        rate, lo, hi, how = v.value, v.low, v.high, "fitted variance rate"
    elif _resolved_above(g, margin):
        rate, lo, hi, how = 2 * g.value, 2 * g.low, 2 * g.high, "2 × fitted |grad| rate"
    elif verdict == "chaotic" and np.isfinite(lam.low) and lam.low > margin:
        rate, lo, hi, how = 2 * lam.value, 2 * lam.low, 2 * lam.high, "2·λ1 of the spectrum"
    elif verdict == "chaotic" and lam_ft > margin:
        rate, lo, hi, how = 2 * lam_ft, 2 * lam_ft, 2 * lam_ft, "2·finite-time λ1"
    else:
        return None, NAN_INTERVAL
    if not rate > 0:
        return None, NAN_INTERVAL
    steps = math.log(limit) / per_step
    return steps / rate, Interval(
        steps / rate,
        steps / hi if np.isfinite(hi) and hi > 0 else 0.0,
        steps / lo,
        method=f"log({limit:g}) / ({how})",
    )


BLOWUP_FACTOR = 1e6  # "diverges" once the loss or the state grows past this × its start


def _scale(tree) -> np.ndarray:
    """Largest |entry| of the float leaves of a (batched) pytree, per leading index."""
    leaves = [
        np.asarray(x, np.float64)
        for x in jax.tree_util.tree_leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
    ]
    if not leaves:
        return np.zeros(0)
    with np.errstate(invalid="ignore"):
        return np.max(
            np.stack(
                [
                    np.max(np.abs(x.reshape(x.shape[0], -1)), axis=1)
                    if x.ndim and x.size
                    else np.zeros(x.shape[:1])
                    for x in leaves
                ]
            ),
            axis=0,
        )


def blowup_test(
    losses: np.ndarray,
    start_scale: np.ndarray,
    end_scale: np.ndarray,
    factor: float = BLOWUP_FACTOR,
) -> dict:
    """The growth test behind "diverges", on a forward unroll of every seed.

    A seed blows up when (a) its loss or state is NaN/Inf at some step, or (b) some
    per-step loss exceeds ``factor`` × the loss's initial scale (the median |ℓ_t| over all
    seeds and the first three steps, fewer in runs under 30 steps), or (c) its final
    state's largest entry exceeds ``factor`` × its initial one. Bounded chaos never grows a
    million-fold; a run that does is heading for the float range, which float32 reaches
    long before float64 (1e38 against 1e308), so only a test on the growth itself gives the
    same verdict in both precisions. A loss or state whose initial scale is 0 is not tested
    by (b) or (c).

    Args:
      losses: per-step losses, shape (seeds, T). start_scale, end_scale: per seed, the
        largest |entry| of the state before the first and after the last step.

    Returns:
      ``first_step`` (the first step any seed blew up, -1: none), ``seeds`` (how many),
      ``reason`` (words), ``factor`` and ``loss_scale``.
    """
    L = np.abs(np.asarray(losses, np.float64))
    if L.ndim == 1:
        L = L[None]
    S, T = L.shape
    early = L[:, : max(1, min(3, T // 10))]  # before a fast blow-up is under way
    early = early[np.isfinite(early)]
    ref = float(np.median(early)) if early.size else math.nan
    bad_step = np.full(S, -1)
    why = {}
    with np.errstate(invalid="ignore"):
        nonfinite = ~np.isfinite(L)
        grown = (L > factor * ref) if ref > 0 else np.zeros_like(nonfinite)
    for i in range(S):
        hits = np.where(nonfinite[i] | grown[i])[0]
        if hits.size:
            bad_step[i] = hits[0]
            why[i] = "NaN/Inf" if nonfinite[i, hits[0]] else "loss"
    s0, s1 = np.asarray(start_scale, np.float64), np.asarray(end_scale, np.float64)
    with np.errstate(invalid="ignore"):
        state_bad = (~np.isfinite(s1)) | ((s0 > 0) & (s1 > factor * s0))
    for i in np.where(state_bad)[0]:
        if bad_step[i] < 0:
            bad_step[i] = T - 1  # only the end state is known: it blew up by the last step
            why[i] = "state"
    bad = bad_step >= 0
    first = int(bad_step[bad].min()) if bad.any() else -1
    words = {
        "NaN/Inf": "the loss or state turned NaN/Inf",
        "loss": f"the loss grew past {count_text(factor)}× its initial scale ({ref:.3g})",
        "state": f"the state grew past {count_text(factor)}× its initial size",
    }
    # the reason is what happened first (a seed that overflows later says nothing new)
    firsts = sorted((bad_step[i], ["NaN/Inf", "loss", "state"].index(w), w) for i, w in why.items())
    reasons = [words[firsts[0][2]]] if firsts else []
    return {
        "first_step": first,
        "seeds": int(bad.sum()),
        "reason": "; ".join(reasons),
        "factor": factor,
        "loss_scale": ref,
    }


def _first_nonfinite(
    system: System, theta, key, seeds: int, steps: int, factor: float = BLOWUP_FACTOR
) -> dict:
    """`blowup_test` on a forward unroll of ``steps`` steps per seed; its NaN/Inf part also
    takes the unroll's own count (a non-finite phase with a finite loss)."""
    keys = jax.random.split(key, seeds)
    res = unroll(system, theta, keys, steps, progress=False)
    start = jax.vmap(lambda k: system.init(split_run_key(k)[0], theta))(keys)
    phase = jax.vmap(system.get_phase)
    test = blowup_test(
        np.asarray(res.losses).reshape(seeds, -1),
        _scale(phase(start)),
        _scale(phase(res.state)),
        factor,
    )
    first = np.asarray(res.first_nonfinite_step).ravel()
    if (first >= 0).any():
        f = int(first[first >= 0].min())
        if test["first_step"] < 0 or f < test["first_step"]:
            test["first_step"] = f
            test["reason"] = "the loss or state turned NaN/Inf"
        test["seeds"] = max(test["seeds"], int((first >= 0).sum()))
    return test


def _nonfinite_report(ly: LyapunovResult, growth: GrowthResult, slices: SliceResult) -> dict:
    bad_h = [
        int(h) for h, f in zip(growth.horizons, growth.nonfinite_fraction, strict=True) if f > 0
    ]
    rep = {
        "lyapunov_nonfinite_step": ly.nonfinite_step,
        "gradient_nonfinite_fraction": {
            int(h): float(f)
            for h, f in zip(growth.horizons, growth.nonfinite_fraction, strict=True)
        },
        "slice_nonfinite": {
            int(h): int(c) for h, c in zip(slices.horizons, slices.nonfinite, strict=True)
        },
    }
    msgs = []
    if ly.nonfinite_step >= 0:
        msgs.append(
            f"the state or its tangent growth overflowed at step {ly.nonfinite_step} "
            "(after the transient) of the Lyapunov run, so the exponents are unreliable"
        )
    if bad_h:
        msgs.append(
            f"backprop gradients are NaN/Inf for some seeds at T = "
            f"{', '.join(map(str, bad_h))}: the gradient overflowed (explosion past "
            "the float range) or the dynamics diverged; those seeds are excluded from "
            "the statistics and counted here"
        )
    bad_s = [int(h) for h, c in zip(slices.horizons, slices.nonfinite, strict=True) if c]
    if bad_s:
        msgs.append(
            f"the loss itself is NaN/Inf at some shifts for T = "
            f"{', '.join(map(str, bad_s))}: the unroll diverges there"
        )
    rep["message"] = "; ".join(msgs)
    return rep


def _recommend(
    verdict: str,
    critical: float | None,
    crit_iv: Interval,
    growth: GrowthResult,
    lam: Interval,
    margin: float,
    limit: float,
    blowup: dict,
) -> str:
    """What to use, in sentences built from the numbers beside them: the sign of each rate
    is the sign its interval resolves, and a horizon is the critical one of the headline."""
    v = growth.variance_rate_interval
    hmin, hmax = int(np.min(growth.horizons)), int(np.max(growth.horizons))
    if verdict == "diverges":
        first = blowup.get("first_step", -1)
        return (
            f"The unroll itself diverges ({blowup.get('reason') or 'NaN/Inf'}, from step "
            f"{first}): the state leaves the region where the step is defined or blows "
            "up, so no gradient estimator can help. Shorten the horizon below that step, "
            "move θ, or fix the step (e.g. clip or bound the state); then diagnose again."
        )
    if verdict == "stable":
        return (
            f"Backprop gradients are trustworthy at these horizons: λ1 = {_fi(lam)} "
            "shows contracting dynamics and the gradient stays bounded. Use full backprop "
            "(with remat for memory)."
        )
    v_txt = f"its variance's growth rate is {_fi(v)}"
    if critical is not None and "λ1" in crit_iv.method:
        v_txt = (
            f"no measured growth rate is resolved (its variance's: {_fi(v)}; the "
            "gradients may overflow), so the horizon is the spectrum's, from "
            f"{crit_iv.method.split('(')[-1].rstrip(')')}"
        )
    if critical is not None:
        ci = crit_iv
        where = (
            f"T ≈ {count_text(critical)} [{count_text(ci.low)}, {count_text(ci.high)}], "
            f"where its variance has grown {limit:g}× since T = 0 ({ci.method})"
        )
        if verdict == "chaotic":
            return (
                f"Do not trust backprop beyond {where}: {v_txt}, exponential growth that "
                "averaging over seeds cannot rescue. Use a black-box estimator of the "
                "smoothed loss (ES, or PES for long unrolls in truncations), or truncated "
                "backprop with windows well below that horizon (biased)."
            )
        return (
            f"Backprop is usable up to {where}; {v_txt}, so beyond it the variance keeps "
            "growing. Prefer truncated backprop with windows below that horizon, or "
            "ES/PES if bias matters; recheck with longer horizons."
        )
    if verdict == "chaotic":  # chaotic without a fitted or spectral rate: overflowed gradients
        return (
            "Do not trust backprop at these horizons: the gradients overflow. Use a "
            "black-box estimator of the smoothed loss (ES or PES), or truncated backprop "
            f"with windows well below T = {hmin} (biased)."
        )
    if _resolved_below(v, -2 * margin):
        trend = f"{v_txt}: it shrinks with the horizon"
    else:
        trend = f"{v_txt}, not resolved from 0 (±{2 * margin:.2g})"
    return (
        f"Backprop is usable up to the longest horizon tested, T = {hmax}: {trend}. The "
        "verdict is marginal because the spectrum and the gradients do not settle it (see "
        "the confidence line); recheck with longer horizons or more seeds before relying "
        "on backprop beyond it."
    )
