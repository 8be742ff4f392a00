"""How rough a sampled curve is relative to its own range, and how rough a mean of N noisy curves
can be told to be: the numbers behind the words "smooth" and "smoother".

A count of extrema above a fixed tolerance counts the 1/√N residual noise of a mean; these
measures are relative to the curve's range and say what N curves can resolve.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The smooth part of a curve: its least-squares polynomial of this degree over the sampled
# interval. 4 follows the large-scale bend of a loss slice (a quadratic bowl, a step-like fall)
# while a jagged curve's turns, many per interval, stay in the residual.
DEGREE = 4
# A curve is called smooth when its residual RMS is at most this fraction of its range.
SMOOTH_LEVEL = 0.02
# A mean is called smoother than its curves when its roughness is at most this fraction of
# the median roughness of one curve.
SMOOTHER_FACTOR = 0.5
# A mean's roughness is resolved (above what the curves' noise leaves in it) beyond this
# multiple of its noise floor.
RESOLVED_FACTOR = 2.0


def _residuals(curves: np.ndarray, degree: int) -> np.ndarray:
    """Each row of ``curves`` minus its least-squares polynomial of ``degree`` in x uniform
    on [−1, 1] (Legendre basis, well conditioned)."""
    p = curves.shape[-1]
    x = np.linspace(-1.0, 1.0, p)
    basis = np.polynomial.legendre.legvander(x, min(degree, p - 1))
    coef, *_ = np.linalg.lstsq(basis, curves.T, rcond=None)
    return curves - (basis @ coef).T


def roughness(y, degree: int = DEGREE) -> float:
    """RMS of the sampled curve ``y`` about its least-squares polynomial of ``degree``,
    divided by its range max(y) − min(y).

    Arguments:
      y: samples at equally spaced points.
      degree: degree of the smooth fit (`DEGREE`).

    Returns:
      0 for a polynomial of at most ``degree`` (or a constant curve); about a/√2 over the
      range for a fast oscillation of amplitude a on a smooth trend; 0.5 for a fast square
      wave. NaN when any sample is non-finite (nothing is dropped silently).
    """
    y = np.asarray(y, np.float64)
    if not np.all(np.isfinite(y)):
        return float("nan")
    span = float(np.ptp(y))
    if span == 0.0:
        return 0.0
    return float(np.sqrt(np.mean(_residuals(y[None], degree) ** 2)) / span)


def turn_indices(y, tol: float) -> list[int]:
    """Indices of the local extrema of a sampled curve that stand out by more than ``tol``:
    a turn counts once the curve has moved back by more than ``tol`` from its running
    extreme (hysteresis), so wiggles at the level of rounding do not count. Non-finite
    samples are skipped; the indices refer to ``y`` as given."""
    y = np.asarray(y, np.float64)
    idx = np.flatnonzero(np.isfinite(y))
    if len(idx) < 3:
        return []
    turns: list[int] = []
    trend = 0  # +1 rising, -1 falling, 0 not yet known
    hi = lo = (y[idx[0]], idx[0])
    for i in idx[1:]:
        v = y[i]
        if trend >= 0 and v > hi[0]:
            hi = (v, i)
        if trend <= 0 and v < lo[0]:
            lo = (v, i)
        if trend == 0:
            if v > lo[0] + tol:
                trend, hi = 1, (v, i)
            elif v < hi[0] - tol:
                trend, lo = -1, (v, i)
        elif trend > 0 and v < hi[0] - tol:
            turns.append(int(hi[1]))
            trend, lo = -1, (v, i)
        elif trend < 0 and v > lo[0] + tol:
            turns.append(int(lo[1]))
            trend, hi = 1, (v, i)
    return turns


def significant_turns(y, fraction: float = 0.05) -> int:
    """How many local extrema of ``y`` stand out by more than ``fraction`` of its range
    (`turn_indices` with tol = fraction · (max − min) over the finite samples)."""
    y = np.asarray(y, np.float64)
    finite = y[np.isfinite(y)]
    if finite.size < 3:
        return 0
    return len(turn_indices(y, fraction * float(np.ptp(finite))))


class MeanRoughness(NamedTuple):
    """Roughness of the mean of N curves, each relative to its own range.

    mean: `roughness` of the mean curve. floor: the part of it the curves' own scatter
    leaves in a mean of N (√(mean over x of Var_seeds(residual)/N) over the mean's range): in
    expectation mean² = (roughness of the true mean)² + floor², so a mean whose roughness is
    within a few floors may be smooth, and more curves would tell. per_curve: `roughness` of
    each curve over its own range. nonfinite: curves left out for a non-finite sample.
    """

    mean: float
    floor: float
    per_curve: np.ndarray
    curves: int
    nonfinite: int
    degree: int

    @property
    def per_curve_median(self) -> float:
        return float(np.median(self.per_curve)) if self.per_curve.size else float("nan")


def mean_roughness(curves, degree: int = DEGREE) -> MeanRoughness:
    """`MeanRoughness` of the rows of ``curves`` (N curves × points sampled alike). Curves
    with a non-finite sample are left out of the mean and counted."""
    curves = np.asarray(curves, np.float64)
    if curves.ndim != 2:
        raise ValueError(f"curves must be (curves, points), got shape {curves.shape}")
    ok = np.all(np.isfinite(curves), axis=1)
    good = curves[ok]
    n = good.shape[0]
    if n < 2:
        nan = float("nan")
        return MeanRoughness(
            nan, nan, np.array([roughness(y, degree) for y in good]), n, int(np.sum(~ok)), degree
        )
    mean = good.mean(axis=0)
    span = float(np.ptp(mean))
    resid = _residuals(good, degree)
    rms_mean = float(np.sqrt(np.mean(resid.mean(axis=0) ** 2)))
    noise = float(np.sqrt(np.mean(np.var(resid, axis=0, ddof=1)) / n))
    rel = (rms_mean / span, noise / span) if span > 0 else (0.0, float("inf"))
    return MeanRoughness(
        rel[0], rel[1], np.array([roughness(y, degree) for y in good]), n, int(np.sum(~ok)), degree
    )


def smoothness(
    r: MeanRoughness, level: float = SMOOTH_LEVEL, factor: float = SMOOTHER_FACTOR
) -> dict:
    """The verdicts a text may state about the mean of N curves, with the numbers behind them.

    Returns a dict: ``mean_roughness``, ``noise_floor``, ``curve_roughness_median``,
    ``curves``; ``smooth``: the mean's roughness is at most ``level`` (of its range);
    ``smoother``: at most ``factor`` times the median curve's; ``resolved``: above
    `RESOLVED_FACTOR` noise floors (below, the measured roughness may be the N curves' noise
    alone: more curves would tell); and the rule's constants.
    """
    med = r.per_curve_median
    finite = np.isfinite(r.mean)
    return {
        "mean_roughness": r.mean,
        "noise_floor": r.floor,
        "curve_roughness_median": med,
        "curves": r.curves,
        "nonfinite_curves": r.nonfinite,
        "smooth": bool(finite and r.mean <= level),
        "smoother": bool(finite and np.isfinite(med) and r.mean <= factor * med),
        "resolved": bool(finite and r.mean > RESOLVED_FACTOR * r.floor),
        "rule": {
            "degree": r.degree,
            "smooth_level": level,
            "smoother_factor": factor,
            "resolved_factor": RESOLVED_FACTOR,
        },
    }
