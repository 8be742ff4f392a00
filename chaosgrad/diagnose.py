"""`diagnose`: can backprop gradients through this system be trusted, and up to which horizon?

Lyapunov exponents, gradient norm/variance vs horizon (measured vs predicted, with 95%
intervals), loss slices, non-finite counts, a verdict with its confidence and a
recommendation; a terminal report, JSON, Markdown and PNGs. The record and its reports live in
`chaosgrad.diagnosis`, the verdict rules in `chaosgrad.verdicts`; every name stays importable
from here.
"""

from __future__ import annotations

import math
import os
import time
import types

import jax
import numpy as np

from chaosgrad import deprecation
from chaosgrad._types import PyTree
from chaosgrad.checks import check_horizons, check_positive_int
from chaosgrad.config import provenance
from chaosgrad.diagnosis import (  # noqa: F401 -- re-exported
    TAIL_MULTIPLE,
    TAIL_RARITY,
    Diagnosis,
    _f,
    _fi,
    seeds_to_see,
    tail_table,
)
from chaosgrad.errors import InputError
from chaosgrad.gradients import gradient_growth, loss_slice
from chaosgrad.progress import progress_bar
from chaosgrad.spectra import lyapunov_runs, lyapunov_spectrum, resolve_k
from chaosgrad.system import System, default_key, resolve_theta
from chaosgrad.verdicts import (  # noqa: F401 -- re-exported
    BLOWUP_FACTOR,
    VERDICTS,
    _critical,
    _first_nonfinite,
    _nonfinite_report,
    _recommend,
    _resolved_above,
    _resolved_below,
    _scale,
    _verdict,
    blowup_test,
)


def default_horizons(system: System) -> list[int]:
    """Three horizons up to the system's natural one: H/10, H/3, H (at least 1, distinct)."""
    h = int(system.horizon)
    return sorted({max(1, h // 10), max(1, h // 3), h})


@deprecation.key_third("horizons")
def diagnose(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    horizons=None,
    seeds: int = 8,
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
    hs = default_horizons(system) if horizons is None else check_horizons(horizons).tolist()
    if not blowup_factor > 1:
        raise InputError(f"blowup_factor must be > 1, got {blowup_factor}")
    if not variance_growth_limit > 1:
        raise InputError(f"variance_growth_limit must be > 1, got {variance_growth_limit}")
    key = default_key(key)
    n = system.phase_dim(theta, key)
    k = resolve_k(k, n, system.name)
    seeds = check_positive_int(seeds, "seeds")
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
            system, theta, horizons=hs, seeds=seeds, key=jax.random.fold_in(key, 1), progress=False
        )
        bar.update(1)
        slices = loss_slice(
            system,
            theta,
            horizons=hs,
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


class _CallableModule(types.ModuleType):
    """`chaosgrad.diagnose` is this module and, called, the function `diagnose`: the one
    name works as ``chaosgrad.diagnose(system)`` and as ``chaosgrad.diagnose.diagnose``."""

    def __call__(self, *args, **kwargs) -> Diagnosis:
        return diagnose(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
