"""`diagnose`: can backprop gradients through this system be trusted, and up to which horizon?

Lyapunov exponents, gradient norm/variance vs horizon (measured vs predicted), loss slices,
non-finite counts, a verdict and a recommendation; a terminal report, JSON, Markdown and PNGs.
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
from chaosgrad.io import jsonable, write_json, write_text
from chaosgrad.progress import progress_bar
from chaosgrad.spectra import LyapunovResult, lyapunov_spectrum
from chaosgrad.system import System, default_key, resolve_theta

PyTree = Any
VERDICTS = ("stable", "marginal", "chaotic")


def default_horizons(system: System) -> list[int]:
    """Three horizons up to the system's natural one: H/10, H/3, H (at least 1, distinct)."""
    h = int(system.horizon)
    return sorted({max(1, h // 10), max(1, h // 3), h})


@dataclass
class Diagnosis:
    """What `diagnose` found. Rates are per step (maps) or per unit time (flows).

    Attributes:
      verdict: "chaotic" (λ1 > 0 and the gradient grows: it explodes exponentially),
        "stable" (λ1 < 0 and bounded gradients) or "marginal" (λ1 ≈ 0, or the spectrum and
        the measured gradient disagree; see `_verdict`).
      critical_horizon: the horizon (steps) beyond which backprop's gradient variance has
        grown more than ``variance_growth_limit`` times over its value at the shortest
        horizon (from the fit, or from 2·λ1 when the fit is unusable); None if it does not grow.
      critical_extrapolated: True when the critical horizon lies beyond the longest horizon
        measured (an extrapolation of the fit).
      recommendation: what to use, following from the verdict and the numbers.
      lyapunov, growth, slices: the underlying results.
      finite_time_exponent: the leading exponent over the longest horizon from the initial
        state (no transient), averaged over a few seeds: what gradients over these horizons
        see, which can differ from the asymptotic λ1 (an unstable start that settles, or a
        transient before chaos).
      predicted_rate, measured_rate: growth rate of ‖g‖ the spectra predict (max(λ1,
        finite-time λ1, 0)) and the fitted one; predicted_variance_rate,
        measured_variance_rate likewise (2·).
      lyapunov_margin: |λ1| below this counts as zero (max of ``tol`` and 3× the spread
        of λ1's running estimate over the second half of the run).
      nonfinite: where NaN/Inf appeared, and what it means.
    """

    system: dict
    verdict: str
    critical_horizon: float | None
    critical_extrapolated: bool
    recommendation: str
    lyapunov: LyapunovResult
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

    # -- reports -------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Everything as a JSON-friendly dict (non-finite numbers as null)."""
        return jsonable({
            "system": self.system,
            "verdict": self.verdict,
            "critical_horizon": self.critical_horizon,
            "critical_extrapolated": self.critical_extrapolated,
            "recommendation": self.recommendation,
            "units": self.units,
            "lyapunov": self.lyapunov.to_json() | {
                "history_steps": self.lyapunov.history_steps.tolist(),
                "history": self.lyapunov.history.tolist()},
            "lyapunov_margin": self.lyapunov_margin,
            "finite_time_exponent": self.finite_time_exponent,
            "predicted_rate": self.predicted_rate,
            "measured_rate": self.measured_rate,
            "predicted_variance_rate": self.predicted_variance_rate,
            "measured_variance_rate": self.measured_variance_rate,
            "variance_growth_limit": self.variance_growth_limit,
            "gradient_growth": self.growth.to_json() | {"norms": self.growth.norms.tolist()},
            "loss_slices": self.slices.to_json(),
            "nonfinite": self.nonfinite,
            "figures": self.figures,
            "seconds": round(self.seconds, 2),
            "run": self.run,
        })[0]

    def summary(self) -> str:
        """The terminal report."""
        g, ly = self.growth, self.lyapunov
        lines = [
            f"chaosgrad diagnose: {self.system.get('description') or self.system.get('name')}",
            f"  precision {ly.precision['dtype']}, backend {ly.precision['backend']}, "
            f"{self.seconds:.1f} s",
            "",
            f"VERDICT: {self.verdict.upper()}"
            + (f" - backprop variance exceeds {self.variance_growth_limit:g}x its T="
               f"{int(g.horizons[0])} value beyond T = {self.critical_horizon:.0f} steps"
               + (" (extrapolated)" if self.critical_extrapolated else "")
               if self.critical_horizon is not None else ""),
            f"  {self.recommendation}",
            "",
            f"Lyapunov exponents ({ly.units}, {ly.steps} steps after {ly.transient}): "
            + ", ".join(f"{x:+.4g}" for x in ly.exponents)
            + f"   (|λ| < {self.lyapunov_margin:.2g} counts as 0)",
            f"Finite-time λ1 over T = {int(g.horizons[-1])} from the start: "
            f"{_f(self.finite_time_exponent)}",
            f"Growth rate of |grad|: measured {_f(self.measured_rate)}, predicted "
            f"max(λ1, finite-time λ1, 0) = {_f(self.predicted_rate)}",
            f"Growth rate of its variance: measured {_f(self.measured_variance_rate)}, "
            f"predicted 2x that = {_f(self.predicted_variance_rate)}",
            "",
            f"{'T':>7} {'|grad| (geo-mean)':>18} {'variance':>11} {'non-finite':>11} "
            f"{'slice extrema':>14} {'slice NaN':>10}",
        ]
        for i, h in enumerate(g.horizons):
            j = int(np.searchsorted(self.slices.horizons, h))
            lines.append(
                f"{int(h):>7} {g.geomean_norm[i]:>18.4e} {g.variance[i]:>11.3e} "
                f"{g.nonfinite_fraction[i]:>10.0%} {int(self.slices.extrema[j]):>14} "
                f"{int(self.slices.nonfinite[j]):>10}")
        if self.nonfinite.get("message"):
            lines += ["", f"NON-FINITE: {self.nonfinite['message']}"]
        if self.figures:
            lines += ["", "figures: " + ", ".join(self.figures.values())]
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
            "| quantity | value |",
            "|---|---|",
            f"| Lyapunov exponents ({ly.units}) | "
            + ", ".join(f"{x:+.4g}" for x in ly.exponents) + " |",
            f"| finite-time λ1 over the longest horizon, from the start | "
            f"{_f(self.finite_time_exponent)} |",
            f"| growth rate of ‖∂L/∂θ‖, measured / predicted | {_f(self.measured_rate)} / "
            f"{_f(self.predicted_rate)} |",
            f"| growth rate of its variance, measured / predicted | "
            f"{_f(self.measured_variance_rate)} / {_f(self.predicted_variance_rate)} |",
            f"| critical horizon (variance × {self.variance_growth_limit:g}) | "
            f"{'none' if self.critical_horizon is None else f'{self.critical_horizon:.0f} steps'}"
            " |",
            f"| precision | {ly.precision['dtype']} on {ly.precision['backend']} |",
            "",
            "| T | ‖∂L/∂θ‖ (geometric mean) | variance | non-finite | loss-slice extrema |",
            "|---|---|---|---|---|",
        ]
        for i, h in enumerate(g.horizons):
            j = int(np.searchsorted(self.slices.horizons, h))
            md.append(f"| {int(h)} | {g.geomean_norm[i]:.4e} | {g.variance[i]:.3e} | "
                      f"{g.nonfinite_fraction[i]:.0%} | {int(self.slices.extrema[j])} |")
        if self.nonfinite.get("message"):
            md += ["", f"**Non-finite values:** {self.nonfinite['message']}"]
        for name, path in self.figures.items():
            md += ["", f"![{name}]({Path(path).name})"]
        return "\n".join(md) + "\n"

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write report.json and report.md into ``out_dir`` (atomically), then the PNG
        figures, then the reports again naming the figures: a plot that fails cannot cost
        the report."""
        from chaosgrad.plots import plot_diagnosis

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._write_reports(out)
        self.figures = plot_diagnosis(self, out)
        self._write_reports(out)
        return out

    def _write_reports(self, out: Path) -> None:
        write_json(out / "report.json", self.to_json())
        write_text(out / "report.md", self.to_markdown())


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.4g}"


def _margin(ly: LyapunovResult, tol: float) -> float:
    half = ly.history[len(ly.history) // 2:, 0]
    spread = float(np.nanstd(half)) if half.size > 1 else 0.0
    return max(tol, 3.0 * spread)


def _verdict(lam: float, lam_ft: float, margin: float, measured: float,
             any_nonfinite: bool) -> str:
    """The spectrum and the measured gradients must agree for a clear verdict.

    chaotic: λ1 or the finite-time λ1 clearly positive (or non-finite) and the gradient
    growing (or non-finite) over the horizons; stable: both exponents clearly negative and the
    gradient not growing; marginal: anything between — e.g. stretching the loss does not see
    (a relaxation towards a minimum), or a gradient that grows while the asymptotic
    dynamics contract (an unstable start that settles).
    """
    lam_max = max(lam, lam_ft) if np.isfinite(lam) and np.isfinite(lam_ft) else math.inf
    growing = any_nonfinite or (np.isfinite(measured) and measured > margin)
    if lam_max > margin and growing:
        return "chaotic"
    if lam_max < -margin and not growing:
        return "stable"
    return "marginal"


def diagnose(
    system: System,
    theta: PyTree = None,
    horizons=None,
    *,
    seeds: int = 8,
    key: jax.Array | None = None,
    lyapunov_steps: int | None = None,
    transient: int | None = None,
    k: int | None = None,
    slice_points: int = 41,
    slice_radius: float | None = None,
    tol: float | None = None,
    variance_growth_limit: float = 100.0,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Diagnosis:
    """Diagnose whether backprop gradients through ``system`` can be trusted.

    Works on any `chaosgrad.System` (no registry entry needed). Runs, with one key:
    the k leading Lyapunov exponents (QR method, with convergence history); the exact
    gradient of the meta-loss for ``seeds`` random starts at each horizon (norm, variance,
    fitted growth rates); a 1-D loss slice per horizon along a random direction in θ; and
    counts of non-finite values everywhere.

    Args:
      system, theta: the system and its parameters (default ``system.theta``).
      horizons: unroll lengths (default H/10, H/3, H of the system's natural horizon H).
      seeds: random starts per horizon for the gradient statistics.
      lyapunov_steps: counted Lyapunov steps (default 20 × the longest horizon, at least
        2,000); transient: uncounted steps first (default: the longest horizon).
      k: number of exponents (default min(n, 3)).
      slice_points, slice_radius: the loss slices (see `chaosgrad.gradients.loss_slice`).
      tol: |λ1| per step below which the system counts as marginal (default 0.5 / the
        longest horizon: growth of less than e^0.5 over the whole unroll; raised to 3× the
        spread of λ1's running estimate over the second half of the run when larger).
      variance_growth_limit: the critical horizon is where the gradient variance has grown
        this many times over its value at the shortest horizon.
      out: if given, write report.json, report.md and PNG figures there.

    Returns:
      A `Diagnosis` (``print(d.summary())`` for the terminal report).
    """
    t0 = time.perf_counter()
    theta = resolve_theta(system, theta)
    hs = default_horizons(system) if horizons is None else list(horizons)
    if not hs:
        raise InputError("horizons must not be empty")
    if not variance_growth_limit > 1:
        raise InputError(f"variance_growth_limit must be > 1, got {variance_growth_limit}")
    key = default_key(key)
    n = system.phase_dim(theta, key)
    k = min(n, 3) if k is None else int(k)
    hmax = int(max(hs))
    lyapunov_steps = max(2000, 20 * hmax) if lyapunov_steps is None else int(lyapunov_steps)
    transient = hmax if transient is None else int(transient)
    with progress_bar(3, f"diagnose {system.name}", progress, min_total=1) as bar:
        ly = lyapunov_spectrum(system, theta, key=key, steps=lyapunov_steps, k=k,
                               transient=transient, progress=False)
        lam_ft = float(np.mean([
            lyapunov_spectrum(system, theta, key=jax.random.fold_in(key, 10 + i), steps=hmax,
                              k=1, transient=0, record_every=hmax,
                              progress=False).exponents[0] for i in range(3)]))
        bar.update(1)
        growth = gradient_growth(system, theta, hs, seeds, key=jax.random.fold_in(key, 1),
                                 progress=False)
        bar.update(1)
        slices = loss_slice(system, theta, hs, key=jax.random.fold_in(key, 2),
                            radius=slice_radius, points=slice_points)
        bar.update(1)
    per_step = system.dt if system.dt is not None else 1.0
    lam = float(ly.exponents[0])
    tol = 0.5 / hmax if tol is None else float(tol)
    margin = _margin(ly, tol / per_step)
    verdict = _verdict(lam, lam_ft, margin, growth.growth_rate,
                       bool(np.any(growth.nonfinite_fraction > 0)))
    pred = max(lam, lam_ft, 0.0) if np.isfinite(lam) and np.isfinite(lam_ft) else math.nan
    critical = _critical_horizon(growth, verdict, pred, variance_growth_limit, per_step)
    nonfinite = _nonfinite_report(ly, growth, slices)
    return _finish(Diagnosis(
        run=provenance(key),
        system=system.describe(), verdict=verdict, critical_horizon=critical,
        critical_extrapolated=critical is not None and critical > hmax,
        recommendation=_recommend(verdict, critical, growth, nonfinite),
        lyapunov=ly, growth=growth, slices=slices, finite_time_exponent=lam_ft,
        predicted_rate=pred, measured_rate=growth.growth_rate,
        predicted_variance_rate=2 * pred, measured_variance_rate=growth.variance_rate,
        lyapunov_margin=margin, variance_growth_limit=variance_growth_limit,
        nonfinite=nonfinite, seconds=time.perf_counter() - t0, units=ly.units), out)


def _finish(d: Diagnosis, out) -> Diagnosis:
    if out is not None:
        d.save(out)
    return d


def _critical_horizon(growth: GrowthResult, verdict, pred, limit, per_step) -> float | None:
    """Steps at which the variance reaches ``limit`` × its value at the shortest horizon."""
    rate = growth.variance_rate  # per unit of growth.horizons * per_step
    if not (np.isfinite(rate) and rate > 0):
        if verdict == "chaotic" and np.isfinite(pred) and pred > 0:
            rate = 2 * pred
        else:
            return None
    if verdict == "stable":
        return None
    return float(growth.horizons[0] + math.log(limit) / (rate * per_step))


def _nonfinite_report(ly: LyapunovResult, growth: GrowthResult, slices: SliceResult) -> dict:
    bad_h = [int(h) for h, f in zip(growth.horizons, growth.nonfinite_fraction, strict=True)
             if f > 0]
    rep = {
        "lyapunov_nonfinite_step": ly.nonfinite_step,
        "gradient_nonfinite_fraction": {int(h): float(f) for h, f in
                                        zip(growth.horizons, growth.nonfinite_fraction,
                                            strict=True)},
        "slice_nonfinite": {int(h): int(c) for h, c in zip(slices.horizons, slices.nonfinite,
                                                           strict=True)},
    }
    msgs = []
    if ly.nonfinite_step >= 0:
        msgs.append(f"the state or its tangent growth overflowed at step {ly.nonfinite_step} "
                    "(after the transient) of the Lyapunov run, so the exponents are unreliable")
    if bad_h:
        msgs.append(f"backprop gradients are NaN/Inf for some seeds at T = "
                    f"{', '.join(map(str, bad_h))}: the gradient overflowed (explosion past "
                    "the float range) or the dynamics diverged; those seeds are excluded from "
                    "the statistics and counted here")
    bad_s = [int(h) for h, c in zip(slices.horizons, slices.nonfinite, strict=True) if c]
    if bad_s:
        msgs.append(f"the loss itself is NaN/Inf at some shifts for T = "
                    f"{', '.join(map(str, bad_s))}: the unroll diverges there")
    rep["message"] = "; ".join(msgs)
    return rep


def _recommend(verdict, critical, growth: GrowthResult, nonfinite) -> str:
    if verdict == "stable":
        return ("Backprop gradients are trustworthy at these horizons: the dynamics contract "
                "and the gradient stays bounded. Use full backprop (with remat for memory).")
    crit = f"T ≈ {critical:.0f}" if critical is not None else "the longest horizon tested"
    if verdict == "marginal":
        return (f"Backprop is usable up to {crit}; beyond it, its variance keeps growing. "
                "Prefer truncated backprop with windows below that horizon, or ES/PES if "
                "bias matters; recheck with longer horizons.")
    return (f"Do not trust backprop beyond {crit}: its variance grows exponentially, so "
            "averaging over seeds cannot rescue it. Use a black-box estimator of the "
            "smoothed loss (ES, or PES for long unrolls in truncations), or truncated "
            "backprop with windows well below the critical horizon (biased).")
