"""`diagnose`: can backprop gradients through this system be trusted, and up to which horizon?

Lyapunov exponents, gradient norm/variance vs horizon (measured vs predicted, with 95%
intervals), loss slices, non-finite counts, a verdict with its confidence and a
recommendation; a terminal report, JSON, Markdown and PNGs.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from chaosgrad.config import provenance
from chaosgrad.errors import InputError
from chaosgrad.gradients import GrowthResult, SliceResult, gradient_growth, loss_slice
from chaosgrad.io import count_text, jsonable, write_json, write_text
from chaosgrad.progress import progress_bar
from chaosgrad.spectra import LyapunovResult, lyapunov_runs, lyapunov_spectrum, resolve_k
from chaosgrad.stats import NAN_INTERVAL, Interval
from chaosgrad.system import System, default_key, resolve_theta, split_run_key
from chaosgrad.unroll import unroll

PyTree = Any
VERDICTS = ("stable", "marginal", "chaotic", "diverges")
TAIL_MULTIPLE = 100.0  # a seed's |grad| beyond this × the median is in the tail
TAIL_RARITY = 500  # the tail a user should be able to see: 1 seed in this many


def tail_table(norms: np.ndarray, multiple: float = TAIL_MULTIPLE) -> dict:
    """Per horizon (rows of ``norms``, seeds along columns): the median and the largest
    finite per-seed gradient norm, and the fraction of finite seeds beyond ``multiple`` × the
    median. A mean (or a geometric mean) over few seeds cannot show a heavy tail; these can.
    """
    norms = np.asarray(norms, np.float64)
    med, big, frac = [], [], []
    for row in norms:
        ok = row[np.isfinite(row)]
        if ok.size == 0:
            med.append(np.nan), big.append(np.nan), frac.append(np.nan)
            continue
        m = float(np.median(ok))
        med.append(m)
        big.append(float(ok.max()))
        frac.append(float(np.mean(ok > multiple * m)) if m > 0 else 0.0)
    return {"median": med, "max": big, "beyond": frac, "multiple": multiple}


def seeds_to_see(rarity: float = TAIL_RARITY, chance: float = 0.95) -> int:
    """Seeds needed to see at least one sample of a 1-in-``rarity`` tail with ``chance``."""
    return int(math.ceil(math.log(1 - chance) / math.log(1 - 1 / rarity)))


def default_horizons(system: System) -> list[int]:
    """Three horizons up to the system's natural one: H/10, H/3, H (at least 1, distinct)."""
    h = int(system.horizon)
    return sorted({max(1, h // 10), max(1, h // 3), h})


@dataclass
class Diagnosis:
    """What `diagnose` found. Rates are per step (maps) or per unit time (flows); every
    interval is a 95% interval.

    Attributes:
      verdict: "chaotic" (λ1 clearly positive and the gradient clearly growing: it explodes
        exponentially), "stable" (λ1 clearly negative and the gradient not growing),
        "marginal" (λ1 ≈ 0 within its interval, or the spectrum and the measured gradient
        disagree), or "diverges" (the state or the loss itself blows up within the horizons:
        turns NaN/Inf, or grows past ``blowup_factor`` × its initial scale, see
        `blowup_test`; the same verdict in float32 and float64; never called chaotic).
      confidence: what the intervals allow, in words.
      critical_horizon: the horizon (steps) over which backprop's gradient variance, on the
        line fitted to the measured variances (the table's), grows
        ``variance_growth_limit`` times: ln(limit) / rate, so where it has grown that much
        from T = 0, whichever horizons were measured (the spectrum's 2·λ1 only when no
        measured rate is resolved and the verdict is chaotic; ``critical_interval.method``
        says which). None if nothing resolved grows.
      critical_interval: its interval, from the interval of the rate.
      critical_extrapolated: True when the critical horizon lies beyond the longest horizon
        measured.
      first_nonfinite_step: the first step at which any seed's state or loss blew up (NaN/Inf
        or the growth test) in a forward unroll of the longest horizon (-1: none);
        diverged_seeds: how many. blowup: that test's record (reason, factor, scale).
      figure_error: why the figures could not be drawn ("" when they were): the report is
        saved either way.
      recommendation: what to use, following from the verdict and the numbers.
      lyapunov, growth, slices: the underlying results.
      lyapunov_interval: λ1 with its interval over independent runs, each cut into batch
        means (`chaosgrad.spectra.leading_exponent_interval`).
      finite_time_exponent: the leading exponent over the longest horizon from the initial
        state (no transient), averaged over a few seeds: what gradients over these horizons
        see, which can differ from the asymptotic λ1.
      predicted_rate, measured_rate: growth rate of ‖g‖ the spectra predict (max(λ1,
        finite-time λ1, 0)) and the fitted one; predicted_variance_rate,
        measured_variance_rate likewise (2·).
      lyapunov_margin: rates within ±this of 0 count as zero (``tol``).
      nonfinite: where NaN/Inf appeared, and what it means.
    """

    system: dict
    verdict: str
    confidence: str
    critical_horizon: float | None
    critical_interval: Interval
    critical_extrapolated: bool
    first_nonfinite_step: int
    diverged_seeds: int
    recommendation: str
    lyapunov: LyapunovResult
    lyapunov_interval: Interval
    growth: GrowthResult
    slices: SliceResult
    finite_time_exponent: float
    predicted_rate: float
    measured_rate: float
    predicted_variance_rate: float
    measured_variance_rate: float
    lyapunov_margin: float
    variance_growth_limit: float
    nonfinite: dict
    seconds: float
    units: str
    figures: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    blowup: dict = field(default_factory=dict)
    figure_error: str = ""

    # -- reports -------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Everything as a JSON-friendly dict (non-finite numbers as null)."""
        return jsonable(
            {
                "system": self.system,
                "verdict": self.verdict,
                "confidence": self.confidence,
                "critical_horizon": self.critical_horizon,
                "critical_interval": self.critical_interval.to_json(),
                "critical_extrapolated": self.critical_extrapolated,
                "first_nonfinite_step": self.first_nonfinite_step,
                "diverged_seeds": self.diverged_seeds,
                "recommendation": self.recommendation,
                "units": self.units,
                "lyapunov": self.lyapunov.to_json()
                | {
                    "history_steps": self.lyapunov.history_steps.tolist(),
                    "history": self.lyapunov.history.tolist(),
                },
                "lyapunov_interval": self.lyapunov_interval.to_json(),
                "lyapunov_margin": self.lyapunov_margin,
                "finite_time_exponent": self.finite_time_exponent,
                "predicted_rate": self.predicted_rate,
                "measured_rate": self.measured_rate,
                "predicted_variance_rate": self.predicted_variance_rate,
                "measured_variance_rate": self.measured_variance_rate,
                "variance_growth_limit": self.variance_growth_limit,
                "gradient_growth": self.growth.to_json() | {"norms": self.growth.norms.tolist()},
                "gradient_tails": tail_table(self.growth.norms)
                | {"seeds_to_see_1_in": TAIL_RARITY, "seeds_needed": seeds_to_see()},
                "loss_slices": self.slices.to_json(),
                "nonfinite": self.nonfinite,
                "blowup": self.blowup,
                "figures": self.figures,
                "figure_error": self.figure_error,
                "seconds": round(self.seconds, 2),
                "run": self.run,
            }
        )[0]

    def _headline(self) -> str:
        if self.verdict == "diverges":
            why = self.blowup.get("reason") or "the state or loss is NaN/Inf"
            return (
                f"VERDICT: DIVERGES - {why}, from step {self.first_nonfinite_step} "
                f"({self.diverged_seeds} of {self.growth.norms.shape[1]} seeds)"
            )
        head = f"VERDICT: {self.verdict.upper()}"
        if self.critical_horizon is not None:
            ci = self.critical_interval
            fitted = "fitted" in ci.method
            head += (
                f" - backprop variance grows {self.variance_growth_limit:g}x every "
                f"{count_text(self.critical_horizon)} steps [{count_text(ci.low)}, "
                f"{count_text(ci.high)}] ("
                + (
                    "the rate fitted to the table"
                    if fitted
                    else "the spectrum's prediction; the table resolves no rate"
                )
                + ")"
                + (" (beyond the horizons measured)" if self.critical_extrapolated else "")
            )
        return head

    def _tail_note(self) -> str:
        s = int(self.growth.norms.shape[1])
        seen = 1 - (1 - 1 / TAIL_RARITY) ** s
        return (
            f"Tails: {s} seeds see a 1-in-{TAIL_RARITY} tail of |grad| with probability "
            f"{seen:.0%}; {seeds_to_see():,} seeds would see it with 95% (--seeds, or seeds= "
            "in Python)."
        )

    def summary(self) -> str:
        """The terminal report."""
        g, ly = self.growth, self.lyapunov
        lines = [
            f"chaosgrad diagnose: {self.system.get('description') or self.system.get('name')}",
            f"  precision {ly.precision['dtype']}, backend {ly.precision['backend']}, "
            f"{self.seconds:.1f} s; intervals are 95%",
            "",
            self._headline(),
            f"  confidence: {self.confidence}",
            f"  {self.recommendation}",
            "",
            f"Lyapunov exponents ({ly.units}, {ly.runs} runs × {ly.steps} steps, each after "
            f"{ly.transient}): " + ", ".join(_f(x) for x in ly.exponents),
            f"  λ1 = {_fi(self.lyapunov_interval)}   (|rate| < {self.lyapunov_margin:.2g} "
            "counts as 0)",
            f"Finite-time λ1 over T = {int(g.horizons[-1])} from the start: "
            f"{_f(self.finite_time_exponent)}",
            f"Growth rate of |grad|: measured {_fi(g.growth_interval)}, predicted "
            f"max(λ1, finite-time λ1, 0) = {_f(self.predicted_rate)}",
            f"Growth rate of its variance: measured {_fi(g.variance_rate_interval)}, "
            f"predicted 2x that = {_f(self.predicted_variance_rate)}",
            "",
            f"{'T':>7} {'|grad| (geo-mean)':>18} {'median':>11} {'largest':>11} "
            f"{'>' + format(TAIL_MULTIPLE, 'g') + 'x med':>9} {'variance':>11} "
            f"{'non-finite':>11} {'slice extrema':>14} {'slice NaN':>10}",
        ]
        tails = tail_table(g.norms)
        for i, h in enumerate(g.horizons):
            j = int(np.searchsorted(self.slices.horizons, h))
            lines.append(
                f"{int(h):>7} {g.geomean_norm[i]:>18.4e} {tails['median'][i]:>11.3e} "
                f"{tails['max'][i]:>11.3e} {tails['beyond'][i]:>9.0%} {g.variance[i]:>11.3e} "
                f"{g.nonfinite_fraction[i]:>10.0%} {int(self.slices.extrema[j]):>14} "
                f"{int(self.slices.nonfinite[j]):>10}"
            )
        lines.append(self._tail_note())
        if self.nonfinite.get("message"):
            lines += ["", f"NON-FINITE: {self.nonfinite['message']}"]
        if self.figures:
            lines += ["", "figures: " + ", ".join(self.figures.values())]
        if self.figure_error:
            lines += ["", f"figures not drawn: {self.figure_error}"]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown (with the figures linked when saved)."""
        g, ly = self.growth, self.lyapunov
        md = [
            f"# chaosgrad diagnosis: {self.system.get('name')}",
            "",
            f"{self.system.get('description', '')}",
            "",
            f"**Verdict: {self.verdict}.** {self.recommendation}",
            "",
            f"Confidence: {self.confidence}",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| Lyapunov exponents ({ly.units}) | " + ", ".join(_f(x) for x in ly.exponents) + " |",
            f"| λ1 with its 95% interval | {_fi(self.lyapunov_interval)} |",
            f"| finite-time λ1 over the longest horizon, from the start | "
            f"{_f(self.finite_time_exponent)} |",
            f"| growth rate of ‖∂L/∂θ‖, measured / predicted | {_fi(g.growth_interval)} / "
            f"{_f(self.predicted_rate)} |",
            f"| growth rate of its variance, measured / predicted | "
            f"{_fi(g.variance_rate_interval)} / {_f(self.predicted_variance_rate)} |",
            f"| critical horizon (variance × {self.variance_growth_limit:g} from T = 0) | "
            + (
                "none"
                if self.critical_horizon is None
                else f"{count_text(self.critical_horizon)} steps "
                f"[{count_text(self.critical_interval.low)}, "
                f"{count_text(self.critical_interval.high)}] ({self.critical_interval.method})"
            )
            + " |",
            "| first non-finite step of the state or loss | "
            + (
                "none"
                if self.first_nonfinite_step < 0
                else f"{self.first_nonfinite_step} ({self.diverged_seeds} seeds)"
            )
            + " |",
            f"| precision | {ly.precision['dtype']} on {ly.precision['backend']} |",
            "",
            f"| T | ‖∂L/∂θ‖ (geometric mean) | median | largest | beyond "
            f"{TAIL_MULTIPLE:g}× median | variance | non-finite | loss-slice extrema |",
            "|---|---|---|---|---|---|---|---|",
        ]
        tails = tail_table(g.norms)
        for i, h in enumerate(g.horizons):
            j = int(np.searchsorted(self.slices.horizons, h))
            md.append(
                f"| {int(h)} | {g.geomean_norm[i]:.4e} | {tails['median'][i]:.3e} | "
                f"{tails['max'][i]:.3e} | {tails['beyond'][i]:.0%} | "
                f"{g.variance[i]:.3e} | "
                f"{g.nonfinite_fraction[i]:.0%} | {int(self.slices.extrema[j])} |"
            )
        md += ["", self._tail_note()]
        if self.nonfinite.get("message"):
            md += ["", f"**Non-finite values:** {self.nonfinite['message']}"]
        for name, path in self.figures.items():
            md += ["", f"![{name}]({Path(path).name})"]
        return "\n".join(md) + "\n"

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write report.json and report.md into ``out_dir`` (atomically), then the PNG
        figures, then the reports again naming the figures: a plot that fails cannot cost
        the report (its error is recorded in ``figure_error`` and warned about)."""
        import warnings

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._write_reports(out)
        try:
            from chaosgrad.plots import plot_diagnosis

            self.figures = plot_diagnosis(self, out)
            self.figure_error = ""
        except Exception as e:  # noqa: BLE001 - a figure must never cost the diagnosis
            self.figure_error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"the figures could not be drawn ({self.figure_error}); the report "
                f"is saved in {out}",
                RuntimeWarning,
                stacklevel=2,
            )
        self._write_reports(out)
        return out

    def _write_reports(self, out: Path) -> None:
        write_json(out / "report.json", self.to_json())
        write_text(out / "report.md", self.to_markdown())


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.4g}"


def _fi(iv: Interval) -> str:
    """``+0.42 [+0.41, +0.43]``; ends that are unbounded or unknown say so."""
    if not np.isfinite(iv.value):
        return "n/a"
    if not np.isfinite(iv.low) and not np.isfinite(iv.high):
        return f"{iv.value:+.4g} (no interval: n/a)"
    return (
        f"{iv.value:+.4g} [{_f(iv.low) if np.isfinite(iv.low) else '-inf'}, "
        f"{_f(iv.high) if np.isfinite(iv.high) else '+inf'}]"
    )


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


def diagnose(
    system: System,
    theta: PyTree = None,
    horizons=None,
    *,
    seeds: int = 8,
    key: jax.Array | None = None,
    lyapunov_steps: int | None = None,
    transient: int | None = None,
    runs: int = 4,
    k: int | str | None = None,
    slice_points: int = 41,
    slice_radius: float | None = None,
    tol: float | None = None,
    variance_growth_limit: float = 100.0,
    blowup_factor: float = BLOWUP_FACTOR,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Diagnosis:
    """Diagnose whether backprop gradients through ``system`` can be trusted.

    Works on any `chaosgrad.System` (no registry entry needed). Runs, with one key: a
    forward unroll of the longest horizon per seed (does the system itself diverge?); the k
    leading Lyapunov exponents (QR method, with convergence history and an interval for λ1);
    the exact gradient of the meta-loss for ``seeds`` random starts at each horizon (norm,
    variance, fitted growth rates with bootstrap intervals); a 1-D loss slice per horizon
    along a random direction in θ; and counts of non-finite values everywhere.

    Args:
      system: the system.
      theta: its parameters (default ``system.theta``).
      horizons: unroll lengths (default H/10, H/3, H of the system's natural horizon H).
      seeds: random starts per horizon for the gradient statistics.
      lyapunov_steps: counted Lyapunov steps in all (default 20 × the longest horizon, at
        least 2,000), shared by ``runs`` independent runs (at least 50 steps each);
        transient: uncounted steps first, in each run (default: the longest horizon).
      runs: independent Lyapunov runs (run keys); λ1's interval combines them with each
        run's batch means, so it covers the run-to-run spread
        (`chaosgrad.spectra.leading_exponent_interval`).
      k: number of exponents (default min(n, 8), as everywhere; "all" for every one).
      slice_points: points of the loss slices (see `chaosgrad.gradients.loss_slice`).
      slice_radius: their half-width.
      tol: rates per step within ±tol count as zero (default 0.5 / the longest horizon:
        growth of less than e^0.5 over the whole unroll); a verdict needs the intervals to
        clear it.
      variance_growth_limit: the critical horizon is the T over which the variance fitted
        to the measured ones grows by this factor.
      blowup_factor: "diverges" once a seed's loss or state grows past this multiple of
        its initial scale (see `blowup_test`), or turns NaN/Inf.
      out: if given, write report.json, report.md and PNG figures there.

    Returns:
      A `Diagnosis` (``print(d.summary())`` for the terminal report).
    """
    t0 = time.perf_counter()
    theta = resolve_theta(system, theta)
    hs = default_horizons(system) if horizons is None else list(horizons)
    if not hs:
        raise InputError("horizons must not be empty")
    if not blowup_factor > 1:
        raise InputError(f"blowup_factor must be > 1, got {blowup_factor}")
    if not variance_growth_limit > 1:
        raise InputError(f"variance_growth_limit must be > 1, got {variance_growth_limit}")
    key = default_key(key)
    n = system.phase_dim(theta, key)
    k = resolve_k(k, n, system.name)
    seeds = int(seeds)
    hmax = int(max(hs))
    lyapunov_steps = max(2000, 20 * hmax) if lyapunov_steps is None else int(lyapunov_steps)
    transient = hmax if transient is None else int(transient)
    with progress_bar(4, f"diagnose {system.name}", progress, min_total=1) as bar:
        blowup = _first_nonfinite(
            system, theta, jax.random.fold_in(key, 1), seeds, hmax, blowup_factor
        )
        first_bad, n_bad = blowup["first_step"], blowup["seeds"]
        bar.update(1)
        lyap = lyapunov_runs(
            system,
            theta,
            key=key,
            runs=runs,
            steps=max(50, -(-lyapunov_steps // runs)),
            k=k,
            transient=transient,
            progress=False,
        )
        ly = lyap.result
        lam_ft = float(
            np.mean(
                [
                    lyapunov_spectrum(
                        system,
                        theta,
                        key=jax.random.fold_in(key, 10 + i),
                        steps=hmax,
                        k=1,
                        transient=0,
                        record_every=hmax,
                        progress=False,
                    ).exponents[0]
                    for i in range(3)
                ]
            )
        )
        bar.update(1)
        growth = gradient_growth(
            system, theta, hs, seeds, key=jax.random.fold_in(key, 1), progress=False
        )
        bar.update(1)
        slices = loss_slice(
            system,
            theta,
            hs,
            key=jax.random.fold_in(key, 2),
            radius=slice_radius,
            points=slice_points,
        )
        bar.update(1)
    per_step = system.dt if system.dt is not None else 1.0
    lam_iv = lyap.interval
    lam = lam_iv.value
    margin = (0.5 / hmax if tol is None else float(tol)) / per_step
    verdict, confidence = _verdict(
        lam_iv,
        lam_ft,
        growth.growth_interval,
        margin,
        bool(np.any(growth.nonfinite_fraction > 0)),
        first_bad,
        growth.variance_rate_interval,
        blowup["reason"] or "a forward unroll produced NaN/Inf",
    )
    pred = max(lam, lam_ft, 0.0) if np.isfinite(lam) and np.isfinite(lam_ft) else math.nan
    critical, crit_iv = _critical(
        lam_iv, lam_ft, growth, verdict, variance_growth_limit, per_step, margin
    )
    nonfinite = _nonfinite_report(ly, growth, slices)
    return _finish(
        Diagnosis(
            run=provenance(key),
            system=system.describe(),
            verdict=verdict,
            confidence=confidence,
            critical_horizon=critical,
            critical_interval=crit_iv,
            critical_extrapolated=critical is not None and critical > hmax,
            first_nonfinite_step=first_bad,
            diverged_seeds=n_bad,
            recommendation=_recommend(
                verdict, critical, crit_iv, growth, lam_iv, margin, variance_growth_limit, blowup
            ),
            blowup=blowup,
            lyapunov=ly,
            lyapunov_interval=lam_iv,
            growth=growth,
            slices=slices,
            finite_time_exponent=lam_ft,
            predicted_rate=pred,
            measured_rate=growth.growth_rate,
            predicted_variance_rate=2 * pred,
            measured_variance_rate=growth.variance_rate,
            lyapunov_margin=margin,
            variance_growth_limit=variance_growth_limit,
            nonfinite=nonfinite,
            seconds=time.perf_counter() - t0,
            units=ly.units,
        ),
        out,
    )


def _finish(d: Diagnosis, out) -> Diagnosis:
    if out is not None:
        d.save(out)
    return d


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


class _CallableModule(type(os)):
    """`chaosgrad.diagnose` is this module and, called, the function `diagnose`: the one
    name works as ``chaosgrad.diagnose(system)`` and as ``chaosgrad.diagnose.diagnose``."""

    def __call__(self, *args, **kwargs) -> Diagnosis:
        return diagnose(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
