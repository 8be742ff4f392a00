"""Gradient diagnostics: how ‖∂L/∂θ‖ and its variance across seeds grow with the horizon T,
with a fitted exponential rate to set beside the leading Lyapunov exponent.
"""

from __future__ import annotations

import math
import time
from functools import reduce
from typing import Any, NamedTuple

import jax
import numpy as np

from chaosgrad import deprecation
from chaosgrad.checks import check_horizons, check_positive_int
from chaosgrad.checks import check_horizons as _check_horizons  # noqa: F401 -- old name
from chaosgrad.config import precision_info
from chaosgrad.progress import progress_bar
from chaosgrad.stats import LEVEL, NAN_INTERVAL, Interval, percentile_interval, resample_indices
from chaosgrad.system import System, default_key, resolve_theta
from chaosgrad.unroll import unroll_grad

PyTree = Any


def overflow_safe_norm(tree: PyTree, batched: bool = False) -> np.ndarray:
    """The global L2 norm of a pytree (per row when ``batched``), in float64 on the host.

    Scaled by the largest entry first, so gradients near the float range do not overflow
    in the squares. Non-finite entries give NaN or Inf, as they should. Inside jit, or for
    norms well inside the float range, use ``optax.tree_utils.tree_norm``; it squares
    without scaling, in the leaves' dtype (float32 unless x64 is on), so a float32 gradient
    with entries of 3e20 and 4e20 has norm inf there and 5e20 here.
    """
    leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
    if batched:
        flat = np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)
    else:
        flat = np.concatenate([x.reshape(1, -1) for x in leaves], axis=1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scale = np.max(np.abs(flat), axis=1)
        safe = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
        norm = safe * np.linalg.norm(flat / safe[:, None], axis=1)
        norm = np.where(np.isfinite(scale), norm, scale)
        norm = np.where(np.any(np.isnan(flat), axis=1), np.nan, norm)
    return norm if batched else norm[0]


tree_norm = deprecation.alias(
    overflow_safe_norm,
    "chaosgrad.gradients.tree_norm",
    "chaosgrad.gradients.overflow_safe_norm (the same values), or "
    "optax.tree_utils.tree_norm inside jit",
)


def fit_rate(horizons: np.ndarray, log_values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of ``log_values`` against ``horizons`` (finite only).

    Returns (nan, nan) when fewer than two finite points remain.
    """
    h = np.asarray(horizons, np.float64)
    y = np.asarray(log_values, np.float64)
    ok = np.isfinite(y)
    if ok.sum() < 2 or np.ptp(h[ok]) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(h[ok], y[ok], 1)
    return float(slope), float(intercept)


def growth_fits(horizons, values) -> dict:
    """Which law describes a positive quantity's growth with the horizon: least-squares fits
    of ln value against T (exponential, e^{rate·T}) and against ln T (power law, T^power).

    Returns {"rate", "exp_rms", "power", "power_rms", "points", "better"}: the residual RMS
    of each fit in ln units and ``better``, the law with the smaller one ("exponential" or
    "power law"; None when fewer than three finite positive points remain, where two
    parameters fit any two points exactly). Non-positive or non-finite values are left out
    and counted in ``points``' complement, never replaced.
    """
    t = np.asarray(horizons, np.float64)
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v) & (v > 0) & (t > 0)
    t, y = t[ok], np.log(np.where(ok, v, 1.0)[ok])
    out = {
        "rate": math.nan,
        "exp_rms": math.nan,
        "power": math.nan,
        "power_rms": math.nan,
        "points": int(ok.sum()),
        "better": None,
    }
    if ok.sum() < 3 or np.ptp(t) == 0:
        return out
    pe, pp = np.polyfit(t, y, 1), np.polyfit(np.log(t), y, 1)
    out.update(
        rate=float(pe[0]),
        power=float(pp[0]),
        exp_rms=float(np.sqrt(np.mean((y - np.polyval(pe, t)) ** 2))),
        power_rms=float(np.sqrt(np.mean((y - np.polyval(pp, np.log(t))) ** 2))),
    )
    out["better"] = "power law" if out["power_rms"] < out["exp_rms"] else "exponential"
    return out


class GrowthResult(NamedTuple):
    """What `gradient_growth` returns.

    Attributes:
      horizons: the unroll lengths T, shape (H,).
      norms: ‖∂L_T/∂θ‖ per horizon and seed, shape (H, S); NaN/Inf kept.
      median_norm, geomean_norm: per horizon, over the seeds with a finite gradient.
      variance: per horizon, the total variance across seeds of the gradient vector
        (trace of its covariance), over the finite seeds.
      nonfinite_fraction: per horizon, the fraction of seeds whose gradient or meta-loss
        has NaN/Inf (excluded from the statistics).
      nonfinite_loss_fraction: per horizon, the fraction of seeds whose meta-loss is NaN/Inf
        (a gradient can be finite where the loss is not, e.g. log of a negative number).
      losses: meta-loss per horizon and seed.
      growth_rate: fitted slope of log(geomean norm) against T — per step, or per unit time
        for flows (divide-by-dt applied); compare it with the leading Lyapunov exponent.
      variance_rate: fitted slope of log(variance) against T (same units); ≈ 2 λ1 when chaotic.
      growth_interval, variance_rate_interval: 95% intervals of the two rates, by bootstrap
        over the seeds (each resample keeps a seed's gradients at every horizon together).
      units: "per step" or "per unit time".
      dt: the flow's time step or None.
      precision, system: recorded facts; seconds: wall-clock time.
    """

    horizons: np.ndarray
    norms: np.ndarray
    median_norm: np.ndarray
    geomean_norm: np.ndarray
    variance: np.ndarray
    nonfinite_fraction: np.ndarray
    losses: np.ndarray
    growth_rate: float
    variance_rate: float
    units: str
    dt: float | None
    precision: dict
    system: dict
    seconds: float
    growth_interval: Interval = NAN_INTERVAL
    variance_rate_interval: Interval = NAN_INTERVAL
    nonfinite_loss_fraction: np.ndarray | None = None

    def to_json(self) -> dict:
        """A JSON-friendly summary."""

        def fl(a):
            return [None if not np.isfinite(x) else float(x) for x in np.asarray(a).ravel()]

        return {
            "system": self.system.get("name"),
            "horizons": [int(h) for h in self.horizons],
            "median_norm": fl(self.median_norm),
            "geomean_norm": fl(self.geomean_norm),
            "variance": fl(self.variance),
            "nonfinite_fraction": fl(self.nonfinite_fraction),
            "mean_loss": fl(_nanmean_rows(np.where(np.isfinite(self.losses), self.losses, np.nan))),
            "growth_rate": None if not np.isfinite(self.growth_rate) else self.growth_rate,
            "variance_rate": None if not np.isfinite(self.variance_rate) else self.variance_rate,
            "growth_interval": self.growth_interval.to_json(),
            "variance_rate_interval": self.variance_rate_interval.to_json(),
            "nonfinite_loss_fraction": (
                None if self.nonfinite_loss_fraction is None else fl(self.nonfinite_loss_fraction)
            ),
            "units": self.units,
            "dt": self.dt,
            "seeds": int(self.norms.shape[1]),
            "precision": self.precision,
            "system_meta": self.system,
            "seconds": round(self.seconds, 3),
        }


@deprecation.key_third("horizons", "seeds")
def gradient_growth(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    horizons=(10, 30, 100),
    seeds: int = 8,
    chunk: int | None = None,
    progress: bool | None = None,
) -> GrowthResult:
    """‖∂L/∂θ‖ of the T-step meta-loss across ``seeds`` random starts, for each T.

    Gradients are exact (backprop, chunk-wise reverse mode: one compilation serves every
    horizon when ``chunk`` divides them all; by default the gcd of the horizons, or a
    masked chunk of at most 64 when the gcd is below 5). Seeds run together in one vmap.

    The fitted ``growth_rate`` is the slope of log ‖g‖ against T. When the dynamics are
    chaotic the gradient grows like exp(λ1 T), so the rate estimates λ1 (per step, or per
    unit time for flows); the variance grows at about twice that. Both rates carry a 95%
    bootstrap interval over the seeds. A seed whose gradient or meta-loss is non-finite is
    counted in ``nonfinite_fraction`` and left out of the statistics.
    """
    t_start = time.perf_counter()
    theta = resolve_theta(system, theta)
    hs = check_horizons(horizons)
    seeds = check_positive_int(seeds, "seeds")
    key = default_key(key)
    keys = jax.random.split(key, seeds)
    if chunk is None:
        g = int(reduce(math.gcd, hs.tolist()))
        chunk = min(g, 256) if g >= 5 else min(64, int(hs.max()))
    norms = np.zeros((len(hs), seeds))
    losses = np.zeros((len(hs), seeds))
    flats = []
    bar = progress_bar(len(hs), f"grad-growth {system.name}", progress, min_total=1)
    with bar:
        for i, h in enumerate(hs):
            res = unroll_grad(system, theta, keys, int(h), chunk=chunk, progress=False)
            losses[i] = np.asarray(res.meta_loss, np.float64)
            norms[i] = np.where(
                np.isfinite(losses[i]), overflow_safe_norm(res.grad, batched=True), np.nan
            )
            flat = np.concatenate(
                [
                    np.asarray(x, np.float64).reshape(seeds, -1)
                    for x in jax.tree_util.tree_leaves(res.grad)
                ],
                axis=1,
            )
            flats.append(np.where(np.isfinite(losses[i])[:, None], flat, np.nan))
            bar.update(1)
    scale = system.dt if system.dt is not None else 1.0

    def rates(idx):
        geo, var = _norm_and_variance(norms[:, idx], [f[idx] for f in flats])
        with np.errstate(divide="ignore", invalid="ignore"):
            return fit_rate(hs * scale, np.log(geo))[0], fit_rate(hs * scale, np.log(var))[0]

    geomean, variance = _norm_and_variance(norms, flats)
    rate, vrate = rates(np.arange(seeds))
    boot = np.array([rates(i) for i in resample_indices(seeds, BOOTSTRAP_REPS)])
    finite = np.isfinite(norms) & (norms > 0)
    with np.errstate(invalid="ignore"):
        median = np.array(
            [
                np.median(r[np.isfinite(r)]) if np.isfinite(r).any() else np.nan
                for r in np.where(finite, norms, np.nan)
            ]
        )
    if seeds < 2:
        # One seed: every resample is that seed, and the bootstrap's zero width would be
        # read as certainty. An interval needs at least 2 independent samples.
        g_iv = Interval(rate, -math.inf, math.inf, LEVEL, "none (one seed)")
        v_iv = Interval(vrate, -math.inf, math.inf, LEVEL, "none (one seed)")
    else:
        g_iv = percentile_interval(rate, boot[:, 0], method=BOOTSTRAP_METHOD)
        v_iv = percentile_interval(vrate, boot[:, 1], method=BOOTSTRAP_METHOD)
    return GrowthResult(
        horizons=hs,
        norms=norms,
        median_norm=median,
        geomean_norm=geomean,
        variance=variance,
        nonfinite_fraction=1.0 - np.isfinite(norms).mean(axis=1),
        nonfinite_loss_fraction=1.0 - np.isfinite(losses).mean(axis=1),
        growth_interval=g_iv,
        variance_rate_interval=v_iv,
        losses=losses,
        growth_rate=rate,
        variance_rate=vrate,
        units="per unit time" if system.dt is not None else "per step",
        dt=system.dt,
        precision=precision_info(np.asarray(jax.tree_util.tree_leaves(theta)[0]).dtype),
        system=system.describe(),
        seconds=time.perf_counter() - t_start,
    )


BOOTSTRAP_REPS = 400
BOOTSTRAP_METHOD = "bootstrap over seeds"


def _norm_and_variance(norms: np.ndarray, flats: list[np.ndarray]):
    """Per horizon: the geometric-mean norm and the total variance over the finite seeds."""
    finite = np.isfinite(norms) & (norms > 0)
    logn = np.where(finite, np.log(np.where(finite, norms, 1.0)), np.nan)
    with np.errstate(invalid="ignore", over="ignore"):
        geo = np.exp(_nanmean_rows(logn))
    var = np.array([_total_variance(f[np.all(np.isfinite(f), axis=1)]) for f in flats])
    return geo, var


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape[0], np.nan)
    for i, r in enumerate(x):
        r = r[np.isfinite(r)]
        if r.size:
            out[i] = r.mean()
    return out


def _total_variance(flat: np.ndarray) -> float:
    """Trace of the sample covariance of the rows (NaN with fewer than two rows)."""
    if flat.shape[0] < 2:
        return math.nan
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.max(np.abs(flat))
        if not np.isfinite(scale) or scale == 0:
            return float(scale * 0) if scale == 0 else math.inf
        z = flat / scale
        v = np.sum(np.var(z, axis=0, ddof=1))
        return float(v * scale**2)


class SliceResult(NamedTuple):
    """The meta-loss along one direction in θ, for several horizons, randomness fixed.

    Attributes:
      shifts: the offsets s along the direction (θ + s·d, with ‖d‖ = 1), shape (P,).
      horizons: the unroll lengths T, shape (H,).
      losses: meta-loss of the first T steps at each shift, shape (H, P); NaN/Inf kept.
      extrema: per horizon, the number of interior local extrema of the slice — about one
        for a smooth bowl, many when the surface is jagged (chaos).
      nonfinite: per horizon, how many shifts gave a non-finite meta-loss.
      direction: the unit direction d (a pytree like θ).
    """

    shifts: np.ndarray
    horizons: np.ndarray
    losses: np.ndarray
    extrema: np.ndarray
    nonfinite: np.ndarray
    direction: PyTree

    def to_json(self) -> dict:
        """A JSON-friendly summary (losses with non-finite values as null)."""
        return {
            "shifts": [float(s) for s in self.shifts],
            "horizons": [int(h) for h in self.horizons],
            "losses": [[float(x) if np.isfinite(x) else None for x in row] for row in self.losses],
            "extrema": [int(e) for e in self.extrema],
            "nonfinite": [int(n) for n in self.nonfinite],
        }


def random_direction(theta: PyTree, key: jax.Array, norm: float | None = 1.0) -> PyTree:
    """A Gaussian direction in θ-space (a pytree like θ), rescaled to global L2 ``norm``
    (None: left unscaled). The paper's Figure 3 uses norm = the number of parameters."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(theta)
    d = jax.random.normal(key, flat.shape, flat.dtype)
    if norm is not None:
        d = d * (norm / jax.numpy.linalg.norm(d))
    return unravel(d)


def count_extrema(y: np.ndarray) -> int:
    """Interior local extrema of a sampled curve (sign changes of its first difference)."""
    y = np.asarray(y, np.float64)
    y = y[np.isfinite(y)]
    d = np.diff(y)
    d = d[d != 0]
    return int(np.sum(np.sign(d[1:]) != np.sign(d[:-1])))


@deprecation.key_third("horizons")
def loss_slice(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    horizons=(10, 30, 100),
    direction: PyTree = None,
    radius: float | None = None,
    points: int = 41,
) -> SliceResult:
    """The T-step meta-loss along θ + s·d for s in [−radius, radius], one curve per T.

    The randomness (initial state, step keys) is the same at every shift, so the curve shows
    the loss surface a backprop gradient sees. All shifts run in one vmapped unroll of the
    longest horizon; shorter horizons are prefixes of it.

    Args:
      direction: a direction like θ (normalised to unit norm); default random from ``key``.
      radius: the largest shift; default 1% of ‖θ‖ (or 0.01 when θ = 0).
      points: number of shifts.
    """
    from jax.flatten_util import ravel_pytree

    from chaosgrad.unroll import loss_weights, unroll

    theta = resolve_theta(system, theta)
    hs = check_horizons(horizons)
    points = check_positive_int(points, "points")
    key = default_key(key)
    flat, unravel = ravel_pytree(theta)
    if direction is None:
        direction = random_direction(theta, jax.random.fold_in(key, 99))
    d, _ = ravel_pytree(direction)
    d = d / jax.numpy.linalg.norm(d)
    if radius is None:
        radius = 0.01 * float(jax.numpy.linalg.norm(flat)) or 0.01
    shifts = np.linspace(-radius, radius, points)
    thetas = jax.vmap(unravel)(
        flat[None, :] + jax.numpy.asarray(shifts, flat.dtype)[:, None] * d[None, :]
    )
    res = unroll(system, thetas, key, int(hs.max()), theta_batched=True, progress=False)
    losses = np.empty((len(hs), points))
    for i, h in enumerate(hs):
        w = np.asarray(loss_weights(system.meta_loss, np.arange(h), h), np.float64)
        part = np.asarray(res.losses[:, :h], np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            losses[i] = np.sum(np.where(w != 0, w * part, 0.0), axis=1)
    return SliceResult(
        shifts=shifts,
        horizons=hs,
        losses=losses,
        extrema=np.array([count_extrema(row) for row in losses]),
        nonfinite=(~np.isfinite(losses)).sum(axis=1),
        direction=unravel(d),
    )
