"""The record `diagnose` returns, `Diagnosis`, and its reports: the terminal summary,
JSON, Markdown and the saved folder (report.json, report.md, PNG figures); the gradient-tail
table they print. `chaosgrad.diagnose` re-exports every name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chaosgrad.gradients import GrowthResult, SliceResult
from chaosgrad.io import count_text, jsonable, write_json, write_text
from chaosgrad.spectra import LyapunovResult
from chaosgrad.stats import Interval

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

    def _table_rows(self):
        """Per horizon: T, |grad|'s geometric mean, median and largest, the share beyond
        TAIL_MULTIPLE × the median, the variance, the non-finite share, the loss slice's
        extrema and its non-finite count (the table of `summary` and `to_markdown`)."""
        g = self.growth
        tails = tail_table(g.norms)
        for i, h in enumerate(g.horizons):
            j = int(np.searchsorted(self.slices.horizons, h))
            yield (
                int(h),
                g.geomean_norm[i],
                tails["median"][i],
                tails["max"][i],
                tails["beyond"][i],
                g.variance[i],
                g.nonfinite_fraction[i],
                int(self.slices.extrema[j]),
                int(self.slices.nonfinite[j]),
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
        for h, geo, med, big, beyond, var, bad, ext, nan in self._table_rows():
            lines.append(
                f"{h:>7} {geo:>18.4e} {med:>11.3e} {big:>11.3e} {beyond:>9.0%} {var:>11.3e} "
                f"{bad:>10.0%} {ext:>14} {nan:>10}"
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
        for h, geo, med, big, beyond, var, bad, ext, _ in self._table_rows():
            md.append(
                f"| {h} | {geo:.4e} | {med:.3e} | {big:.3e} | {beyond:.0%} | {var:.3e} | "
                f"{bad:.0%} | {ext} |"
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
