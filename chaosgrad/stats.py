"""Intervals for every number a verdict or a ranking rests on: means of independent or
correlated (batch-means) samples, bootstrap intervals for fitted rates, the debiased norm of
a bias, and rankings that say "tie" when the intervals overlap.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

LEVEL = 0.95  # every interval chaosgrad reports is a 95% interval unless it says otherwise


def _st():
    """scipy.stats, imported on first use: it costs over a second, and `import chaosgrad`
    should not pay it."""
    from scipy import stats

    return stats


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval.

    Attributes:
      value: the point estimate. low, high: the interval's ends (may be ±inf).
      level: its nominal coverage (0.95). method: how it was made (for the record).
    """

    value: float
    low: float
    high: float
    level: float = LEVEL
    method: str = ""

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in [low, high]."""
        return bool(self.low <= x <= self.high)

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share a point."""
        return bool(self.low <= other.high and other.low <= self.high)

    @property
    def finite(self) -> bool:
        """Whether the value and both ends are finite numbers."""
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    def to_json(self) -> dict:
        """A JSON-friendly dict (non-finite numbers are nulled by `chaosgrad.io.dumps`)."""
        return {
            "value": float(self.value),
            "low": float(self.low),
            "high": float(self.high),
            "level": self.level,
            "method": self.method,
        }

    def fmt(self, spec: str = ".3g") -> str:
        """``value [low, high]`` for a table."""
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, LEVEL, "none")


def _t(level: float, dof: int) -> float:
    return float(_st().t.ppf(0.5 + level / 2, max(dof, 1)))


def mean_interval(x: npt.ArrayLike, level: float = LEVEL) -> Interval:
    """Student-t interval for the mean of independent samples (non-finite ones dropped)."""
    x = np.asarray(x, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return NAN_INTERVAL
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, -math.inf, math.inf, level, "t (one sample)")
    h = _t(level, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(m, m - h, m + h, level, f"t, {x.size} samples")


def batch_means(samples: np.ndarray, batches: int | None = None) -> np.ndarray:
    """Means of consecutive, equal batches of a correlated sequence (leading axis).

    Successive estimates of a truncated estimator share their particles' states, so they are
    correlated; the means of long enough consecutive batches are nearly independent, and
    their spread gives an honest standard error. Default: ⌊√n⌋ batches, at least 2.
    Trailing samples that do not fill a batch are dropped.
    """
    samples = np.asarray(samples, np.float64)
    n = samples.shape[0]
    b = max(2, int(math.isqrt(n))) if batches is None else int(batches)
    b = min(b, n)
    size = n // b
    return samples[: b * size].reshape(b, size, *samples.shape[1:]).mean(axis=1)


def resample_indices(n: int, reps: int, seed: int = 0) -> list[np.ndarray]:
    """``reps`` bootstrap resamples of range(n) (with repeats), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(reps)]


def percentile_interval(
    point: float, samples: np.ndarray, level: float = LEVEL, method: str = "bootstrap"
) -> Interval:
    """Percentile interval of bootstrap ``samples`` around the full-sample ``point``.

    Resamples whose statistic is not finite are dropped; when more than 1 − level of them
    are (or ``point`` itself is not finite) the data cannot pin the statistic down and the
    interval is (−inf, inf).
    """
    samples = np.asarray(samples, np.float64)
    ok = np.isfinite(samples)
    if not math.isfinite(point) or ok.mean() < level:
        return Interval(point, -math.inf, math.inf, level, f"{method} (unstable)")
    lo, hi = np.quantile(samples[ok], [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(lo), float(hi), level, f"{method}, {len(samples)} resamples")


def bias_interval(
    mean_est: np.ndarray,
    var_est: np.ndarray,
    n_est: float,
    ref: np.ndarray,
    var_ref: np.ndarray,
    level: float = LEVEL,
    dof: int | None = None,
) -> Interval:
    """The norm of a bias ‖E[ĝ] − g*‖, debiased for the noise of both means, with an interval.

    With d = ḡ − g*, per coordinate d_i ≈ N(μ_i, v_i) where v_i = var_est_i / n_est +
    var_ref_i (the squared standard errors of the two means). E‖d‖² = ‖μ‖² + Σv, so
    b² = ‖d‖² − Σv is unbiased for ‖μ‖², with variance 4 Σ μ_i² v_i + 2 Σ v_i². The
    interval is b² ± z·sd, mapped through the square root; a lower end ≤ 0 means the bias is
    not resolved from zero, and only its upper end is informative. Never floored silently:
    ``value`` is sqrt(max(b², 0)) and ``low`` is 0 exactly when b² − z·sd ≤ 0.

    Args:
      mean_est: the estimator's mean.
      var_est: the per-coordinate variance of one of its samples.
      n_est: the (effective) number of samples behind the mean.
      ref: the reference gradient.
      var_ref: its per-coordinate squared standard error.
      dof: degrees of freedom behind the noise estimates (e.g. few batch means): the
        Student-t quantile replaces the normal one, widening the interval honestly.
    """
    d = np.asarray(mean_est, np.float64) - np.asarray(ref, np.float64)
    v = np.asarray(var_est, np.float64) / float(n_est) + np.asarray(var_ref, np.float64)
    b2 = float(np.sum(d**2) - np.sum(v))
    mu2 = np.maximum(d**2 - v, 0.0)
    sd = math.sqrt(float(4 * np.sum(mu2 * v) + 2 * np.sum(v**2)))
    z = _t(level, dof) if dof else float(_st().norm.ppf(0.5 + level / 2))
    # an estimate of ‖μ‖² below zero is noise: the upper end starts from 0, not from it, so
    # the bound stays a bound (at least z·sd) instead of collapsing to 0
    lo2, hi2 = b2 - z * sd, max(b2, 0.0) + z * sd
    return Interval(
        math.sqrt(max(b2, 0.0)),
        math.sqrt(max(lo2, 0.0)),
        math.sqrt(max(hi2, 0.0)),
        level,
        "debiased ‖ḡ − g*‖, " + (f"t with {dof} dof" if dof else "normal approx."),
    )


def variance_interval(total_var: float, dof: float, level: float = LEVEL) -> Interval:
    """Interval for a total variance (trace of a covariance) estimated with ``dof`` degrees
    of freedom, by the chi-square law of one coordinate (conservative for many coordinates)."""
    if not (math.isfinite(total_var) and dof >= 1):
        return Interval(total_var, -math.inf, math.inf, level, "chi2 (undefined)")
    a = (1 - level) / 2
    lo = total_var * dof / float(_st().chi2.ppf(1 - a, dof))
    hi = total_var * dof / float(_st().chi2.ppf(a, dof))
    return Interval(float(total_var), lo, hi, level, f"chi2, {dof:g} dof")


class Ranking(NamedTuple):
    """An ordering by a figure of merit (smaller is better), honest about ties.

    Attributes:
      order: names, best first (by the point estimate).
      tied: the names whose intervals overlap the best one's (the best included): a "winner"
        exists only when this has one name.
    """

    order: list[str]
    tied: list[str]

    @property
    def separated(self) -> bool:
        """Whether the best is separated from every other by its interval."""
        return len(self.tied) == 1


def rank(intervals: dict[str, Interval]) -> Ranking:
    """Order ``intervals`` by value (non-finite last) and find who ties with the best."""

    def key(name):
        v = intervals[name].value
        return (0, v) if math.isfinite(v) else (1, 0.0)

    order = sorted(intervals, key=key)
    best = intervals[order[0]]
    tied = [
        n
        for n in order
        if n == order[0] or (intervals[n].finite and best.finite and intervals[n].overlaps(best))
    ]
    return Ranking(order, tied)


def samples_needed(current: int, current_se: float, target_se: float) -> int:
    """Samples needed for a standard error ``target_se``, given ``current`` samples gave
    ``current_se`` (the error falls like 1/√n)."""
    if not (target_se > 0 and math.isfinite(current_se)):
        return 0
    return int(math.ceil(current * (current_se / target_se) ** 2))


def segment_interval(
    steps: np.ndarray, running: np.ndarray, segments: int = 20, level: float = LEVEL
) -> Interval:
    """Interval for a time average (e.g. a Lyapunov exponent) from its running estimate.

    ``running[i]`` is the average over the first ``steps[i]`` steps. The run is cut into
    ``segments`` consecutive pieces; each piece's own average is recovered from the running
    one, and the spread of the pieces (a batch-means t-interval) gives the interval around
    the final estimate. Pieces of a mixing system decorrelate quickly, so this is honest
    where the running estimate's wiggle alone would understate the error.
    """
    t = np.asarray(steps, np.float64).ravel()
    r = np.asarray(running, np.float64).ravel()
    value = float(r[-1]) if r.size else math.nan
    if r.size < 4 or not np.all(np.isfinite(r)):
        return Interval(value, -math.inf, math.inf, level, "segments (too few)")
    total = r * t
    incr = np.diff(np.concatenate([[0.0], total]))
    dt = np.diff(np.concatenate([[0.0], t]))
    m = min(segments, r.size)
    edges = np.linspace(0, r.size, m + 1).astype(int)
    seg = np.array(
        [incr[a:b].sum() / dt[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )
    h = _t(level, m - 1) * float(seg.std(ddof=1)) / math.sqrt(m)
    return Interval(value, value - h, value + h, level, f"batch means, {m} segments")


# -- replicate-based statistics of vector estimates ---------------------------------------------
# A gradient estimate is a vector whose coordinates are correlated (one chaotic direction can
# carry most of the variance), and its replicates are few. The functions below assume
# neither independent coordinates nor many replicates: the bias test is a sign-flip test of
# an unbiased U-statistic (exact when each replicate difference is symmetric about its mean),
# and the variance interval uses the Satterthwaite degrees of freedom estimated from the
# replicates themselves.


class BiasTest(NamedTuple):
    """The bias ‖E[x] − E[y]‖ between two independent samples of vectors, tested.

    Attributes:
      interval: the bias with its interval: ``value`` = sqrt(max(U, 0)) where U is unbiased
        for ‖E[x] − E[y]‖²; ``low`` = sqrt(max(U − c, 0)) with c the sign-flip test's
        critical value, so ``low > 0`` exactly when the test rejects "no bias" at level
        1 − ``level`` (the probability of a nonzero ``low`` for an unbiased estimator is
        1 − level); ``high`` = sqrt(max(U, 0) + max(z·sd, c)), a one-sided upper bound (sd:
        the jackknife standard deviation of U over the groups).
      p_value: the sign-flip p-value of "no bias".
      resolved: whether the bias is resolved from zero (``interval.low > 0``).
      groups: the independent differences the test rests on.
      u: the unbiased estimate U of the squared bias (may be negative).
    """

    interval: Interval
    p_value: float
    resolved: bool
    groups: int
    u: float


def _groups(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Independent differences d_g = mean(x-part g) − mean(y-part g): the larger sample is
    cut into as many nearly equal parts as the smaller one has rows."""
    if len(x) <= len(y):
        parts = np.array_split(np.arange(len(y)), len(x))
        return np.stack([x[g] - y[p].mean(axis=0) for g, p in enumerate(parts)])
    parts = np.array_split(np.arange(len(x)), len(y))
    return np.stack([x[p].mean(axis=0) - y[g] for g, p in enumerate(parts)])


def _sign_patterns(g: int, draws: int, seed: int) -> np.ndarray:
    """Every sign pattern with s_0 = +1 (a pattern and its negative give the same U) when
    there are at most ``draws`` of them, else ``draws`` random ones plus the identity."""
    if 2 ** (g - 1) <= draws:
        idx = np.arange(2 ** (g - 1))
        bits = (idx[:, None] >> np.arange(g - 1)[None, :]) & 1
        return np.concatenate([np.ones((len(idx), 1)), 1 - 2 * bits], axis=1)
    rng = np.random.default_rng(seed)
    s = rng.choice([-1.0, 1.0], size=(draws, g))
    s[0] = 1.0
    return s


def bias_test(
    x: np.ndarray, y: np.ndarray, level: float = LEVEL, draws: int = 4096, seed: int = 0
) -> BiasTest:
    """Test and bound the bias between two independent samples of vectors.

    ``x`` (R, d): independent replicates of an estimator (e.g. means of fresh estimator
    runs); ``y`` (Q, d): independent batches of a reference. The larger sample is cut into
    G = min(R, Q) parts, giving G independent differences d_g with mean μ = E[x] − E[y].
    U = mean over g ≠ h of d_g · d_h is unbiased for ‖μ‖² whatever the covariance of the
    coordinates. Under "no bias" each d_g is symmetric about 0 (exactly for Gaussian
    replicate means, closely for means of many estimates), so flipping the signs of the d_g
    leaves U's distribution unchanged: the p-value is the fraction of the 2^(G−1) sign
    patterns whose U is at least the observed one (exact, no independent-coordinates or
    large-sample assumption). G ≥ 4 is needed for a test at 5% (2^(G−1) ≥ 8 patterns).
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    d = _groups(x, y)
    g = len(d)
    if g < 4:
        nan = Interval(math.nan, math.nan, math.nan, level, f"too few groups ({g} < 4)")
        return BiasTest(nan, math.nan, False, g, math.nan)
    m = d @ d.T
    tr = float(np.trace(m))
    norm = g * (g - 1)
    s = _sign_patterns(g, draws, seed)
    u_flip = (np.einsum("pi,ij,pj->p", s, m, s) - tr) / norm
    u = float(u_flip[0])  # the identity pattern is the observed statistic
    p = float(np.mean(u_flip >= u - 1e-12 * abs(u)))
    crit = float(np.quantile(u_flip, level, method="higher"))
    # jackknife over groups: U without group k, from the same Gram matrix
    tot = float(m.sum())
    rows = m.sum(axis=1)
    diag = np.diag(m)
    u_loo = (tot - 2 * rows + diag - (tr - diag)) / ((g - 1) * (g - 2))
    sd = math.sqrt(max((g - 1) / g * float(np.sum((u_loo - u_loo.mean()) ** 2)), 0.0))
    z = float(_st().norm.ppf(level))
    resolved = u > max(crit, 0.0)
    low = math.sqrt(u - max(crit, 0.0)) if resolved else 0.0
    high = math.sqrt(max(u, 0.0) + max(z * sd, crit, 0.0))
    iv = Interval(
        math.sqrt(max(u, 0.0)),
        low,
        high,
        level,
        f"sign-flip test of U over {g} independent groups; upper: U + max(z·sd_jk, c)",
    )
    return BiasTest(iv, p, bool(low > 0), g, u)


def trace_variance_interval(x: np.ndarray, level: float = LEVEL) -> tuple[Interval, float]:
    """tr Cov of the rows of ``x`` (R ≥ 4 independent replicates), with an interval whose
    degrees of freedom are estimated from the data (Satterthwaite): tr S ≈ tr Σ χ²_ν / ν with
    ν = 2 (tr Σ)² / Var(tr S), Var(tr S) = 2 tr(Σ²)/(R − 1) + (E‖x − μ‖⁴ − (tr Σ)² −
    2 tr(Σ²))/R. (tr Σ)² and tr(Σ²) are estimated without bias from products of differences
    of disjoint pairs of replicates (no independent-coordinates assumption: one dominant
    direction gives ν ≈ R − 1, many equal ones a narrow interval); the fourth-moment excess
    (zero for Gaussian estimates) widens it for heavy tails.

    Returns (interval, ν)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    r = len(x)
    if r < 2:
        return Interval(math.nan, -math.inf, math.inf, level, "chi2 (one replicate)"), math.nan
    total = float(np.sum(x.var(axis=0, ddof=1)))
    if not math.isfinite(total):
        return Interval(total, -math.inf, math.inf, level, "chi2 (undefined)"), math.nan
    nu = float(r - 1)
    if r >= 4 and total > 0:
        # from the Gram matrix: z_p · z_q for pairs p = (i, j), q = (k, l) of distinct rows
        xs = x[:64] - x[:64].mean(axis=0)
        gram = xs @ xs.T
        i, j = np.triu_indices(len(xs), 1)
        sq = (gram[i, i] + gram[j, j] - 2 * gram[i, j]) / 2
        p, q = np.triu_indices(len(i), 1)
        keep = (i[p] != i[q]) & (i[p] != j[q]) & (j[p] != i[q]) & (j[p] != j[q])
        p, q = p[keep], q[keep]
        dot = gram[i[p], i[q]] - gram[i[p], j[q]] - gram[j[p], i[q]] + gram[j[p], j[q]]
        a = float(np.mean(sq[p] * sq[q]))  # unbiased for (tr Σ)²
        b = float(np.mean(dot**2)) / 4  # unbiased for tr(Σ²)
        # fourth moment E‖x − μ‖⁴ (Gaussian: (tr Σ)² + 2 tr(Σ²)); its excess widens the
        # interval for heavy-tailed estimates (ES's ε·ΔL products are far from Gaussian)
        m4 = float(np.mean(np.sum(xs**2, axis=1) ** 2)) * len(xs) / (len(xs) - 1)
        excess = max(m4 - a - 2 * b, 0.0)
        var_tr = 2 * b / (r - 1) + excess / r
        if var_tr > 0:
            nu = float(min(max(2 * total**2 / var_tr, 1.0), 1e6))
    a_ = (1 - level) / 2
    lo = total * nu / float(_st().chi2.ppf(1 - a_, nu))
    hi = total * nu / float(_st().chi2.ppf(a_, nu))
    return Interval(total, lo, hi, level, f"chi2, Satterthwaite ν = {nu:.3g}"), nu


@functools.lru_cache(maxsize=64)
def dominance_threshold(r: int, level: float = 0.999) -> float:
    """The share of the total squared deviation that the largest of ``r`` Gaussian samples
    exceeds with probability 1 − ``level`` (one coordinate, the most concentrated case:
    with more coordinates the shares are more even). Simulated once per ``r``."""
    x = np.random.default_rng(0).normal(size=(20_000, int(r)))
    d = (x - x.mean(axis=1, keepdims=True)) ** 2
    return float(np.quantile(d.max(axis=1) / d.sum(axis=1), level))


def dominated(x: np.ndarray, level: float = 0.999) -> tuple[bool, float, float]:
    """Whether one replicate carries more of the total squared deviation from the mean than
    Gaussian replicates would with probability 1 − ``level`` (a mean dominated by one
    sample: a heavy tail). Needs at least 8 replicates. Returns (dominated, the largest
    share, the threshold)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(x) < 8:
        return False, math.nan, math.nan
    dev = np.sum((x - x.mean(axis=0)) ** 2, axis=1)
    tot = float(dev.sum())
    share = float(dev.max()) / tot if tot > 0 else 0.0
    limit = dominance_threshold(len(x), level)
    return bool(share > limit), share, limit
