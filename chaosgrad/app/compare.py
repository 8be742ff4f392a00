"""`compare`: which gradient estimator to use on a system — bias and variance against a
reference gradient, cost in unroll steps and seconds, and the error at equal compute.
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
from jax.flatten_util import ravel_pytree

from chaosgrad import estimators
from chaosgrad.config import precision_info, provenance
from chaosgrad.errors import InputError
from chaosgrad.io import write_json
from chaosgrad.plots import plot_comparison, save
from chaosgrad.progress import progress_bar
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.system import System, default_key, resolve_theta

PyTree = Any
DEFAULT_ESTIMATORS = ("backprop", "tbptt", "es", "pes")


@dataclass
class EstimatorStats:
    """One estimator's numbers against the reference gradient g*.

    Attributes:
      name, params: the estimator and its settings.
      samples: how many successive estimates were taken (θ fixed).
      steps: unroll steps one estimate costs; seconds: median wall time of one (compiled).
      bias: ‖E[ĝ] − g*‖, debiased for the sampling noise of the mean and of g*
        (sqrt(max(0, ‖ḡ − g*‖² − tr Cov/n − se*²))); bias_raw: ‖ḡ − g*‖ itself.
      variance: tr Cov[ĝ] of one estimate (across the estimates).
      mse_at_budget: bias² + variance · steps / budget — the squared error of averaging as
        many estimates as the budget of unroll steps buys (the figure of merit).
      relative_error: sqrt(mse_at_budget) / ‖g*‖.
      nonfinite: estimates with a non-finite gradient (excluded from the statistics).
    """

    name: str
    params: dict
    samples: int
    steps: float
    seconds: float
    bias: float
    bias_raw: float
    variance: float
    mse_at_budget: float
    relative_error: float
    nonfinite: int
    mean_grad: np.ndarray = field(repr=False, default=None)


@dataclass
class Comparison:
    """What `compare` returns: per-estimator statistics, the reference, a recommendation."""

    system: dict
    horizon: int
    budget: int
    reference: str
    reference_norm: float
    reference_se: float
    stats: list[EstimatorStats]
    ranking: list[str]
    recommendation: str
    precision: dict
    seconds: float
    figures: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-friendly summary (non-finite numbers as null)."""
        def num(x):
            return float(x) if x is not None and np.isfinite(x) else None

        return {
            "system": self.system, "horizon": self.horizon, "budget": self.budget,
            "reference": self.reference, "reference_norm": num(self.reference_norm),
            "reference_se": num(self.reference_se),
            "estimators": [{
                "name": s.name, "params": s.params, "samples": s.samples, "steps": num(s.steps),
                "seconds": num(s.seconds), "bias": num(s.bias), "bias_raw": num(s.bias_raw),
                "variance": num(s.variance), "mse_at_budget": num(s.mse_at_budget),
                "relative_error": num(s.relative_error), "nonfinite": s.nonfinite}
                for s in self.stats],
            "ranking": self.ranking, "recommendation": self.recommendation,
            "precision": self.precision, "figures": self.figures,
            "seconds": round(self.seconds, 2), "run": self.run,
        }

    def table(self) -> str:
        """The comparison as a table for the terminal."""
        lines = [
            f"chaosgrad compare: {self.system.get('description') or self.system.get('name')}, "
            f"T = {self.horizon}, budget {self.budget} unroll steps per estimator",
            f"reference: {self.reference}, ‖g*‖ = {self.reference_norm:.4g} "
            f"(± {self.reference_se:.2g})",
            f"{'estimator':<10}{'steps/est':>10}{'s/est':>10}{'bias':>11}{'variance':>11}"
            f"{'MSE@budget':>12}{'rel. error':>11}{'NaN':>5}",
        ]
        for s in sorted(self.stats, key=lambda s: self.ranking.index(s.name)):
            lines.append(f"{s.name:<10}{s.steps:>10.0f}{s.seconds:>10.2e}{s.bias:>11.3e}"
                         f"{s.variance:>11.3e}{s.mse_at_budget:>12.3e}{s.relative_error:>11.3g}"
                         f"{s.nonfinite:>5}")
        lines += ["", f"RECOMMENDATION: {self.recommendation}"]
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write compare.json and compare.png into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.figures = {"compare": str(save(plot_comparison(self), out / "compare.png"))}
        write_json(out / "compare.json", self.to_json())
        return out


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


# Which of compare's shared settings each estimator takes, named explicitly: a renamed
# estimator parameter then fails loudly in `estimators.make` instead of silently dropping out.
COMMON_SETTINGS = {
    "backprop": ("samples", "horizon"),
    "tbptt": ("particles", "window", "horizon"),
    "es": ("pairs", "sigma", "horizon"),
    "tes": ("pairs", "sigma", "window", "horizon"),
    "pes": ("pairs", "sigma", "window", "horizon"),
    "combined": ("pairs", "sigma", "horizon"),
}


def _estimator_params(name: str, common: dict, extra: dict | None) -> dict:
    key = estimators.canonical_name(name)
    params = {k: common[k] for k in COMMON_SETTINGS[key]}
    params.update(extra or {})
    return params


def _collect(est, theta, key, samples, progress_desc, progress):
    """``samples`` successive estimates at fixed θ; flat gradients, steps, seconds."""
    estimate = jax.jit(est.estimate)
    state = est.init(jax.random.fold_in(key, 0), theta)
    g, state, info = estimate(state, theta, jax.random.fold_in(key, 1))  # compile
    jax.block_until_ready(g)
    grads, steps, secs = [], [], []
    with progress_bar(samples, progress_desc, progress, min_total=1) as bar:
        for i in range(samples):
            t0 = time.perf_counter()
            g, state, info = estimate(state, theta, jax.random.fold_in(key, 2 + i))
            g = jax.block_until_ready(g)
            secs.append(time.perf_counter() - t0)
            grads.append(_flat(g))
            steps.append(float(info["steps"]))
            bar.update(1)
    return np.stack(grads), float(np.mean(steps)), float(np.median(secs))


def reference_gradient(system: System, theta: PyTree, horizon: int, *, kind: str,
                       key: jax.Array, batches: int = 32, per_batch: int = 32,
                       sigma: float = 0.01) -> tuple[np.ndarray, float, str]:
    """A reference gradient g* with its standard error (norm of the standard error vector).

    ``kind="es"``: antithetic ES over whole unrolls (unbiased for the gradient of the
    Gaussian-smoothed meta-loss, which is what ES/PES estimate), ``batches × per_batch``
    pairs. ``kind="backprop"``: the mean of ``batches × per_batch`` independent exact
    gradients (the gradient of the expected meta-loss; equal to the smoothed one up to
    O(σ²) where the loss is smooth, i.e. in stable systems).
    """
    if kind == "es":
        est = estimators.make("es", system, pairs=per_batch, sigma=sigma, horizon=horizon)
    elif kind == "backprop":
        est = estimators.make("backprop", system, samples=per_batch, horizon=horizon)
    else:
        raise InputError(f"reference {kind!r} is not accepted: use 'auto', 'es' or 'backprop'")
    grads, _, _ = _collect(est, theta, key, batches, f"reference ({kind})", False)
    ok = np.all(np.isfinite(grads), axis=1)
    grads = grads[ok]
    if len(grads) < 2:
        raise InputError(f"the {kind} reference gradient is non-finite in {int((~ok).sum())} of "
                         f"{len(ok)} batches: the system diverges at T = {horizon}")
    mean = grads.mean(axis=0)
    se = math.sqrt(np.sum(grads.var(axis=0, ddof=1)) / len(grads))
    return mean, se, f"{kind} ({len(grads) * per_batch} {'pairs' if kind == 'es' else 'runs'})"


def compare(
    system: System,
    theta: PyTree = None,
    estimators_: tuple[str, ...] | list[str] = DEFAULT_ESTIMATORS,
    *,
    horizon: int | None = None,
    budget: int | None = None,
    samples: int = 32,
    window: int = 10,
    sigma: float = 0.01,
    population: int = 8,
    reference: str = "auto",
    reference_batches: int = 32,
    reference_per_batch: int = 64,
    params: dict | None = None,
    key: jax.Array | None = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Comparison:
    """Compare gradient estimators of ``system``'s T-step meta-loss at fixed θ.

    Each estimator (by registry name: backprop, tbptt, es, tes, pes, combined) gives
    ``samples`` successive estimates with θ fixed (truncated ones advance their particles
    through their staggered windows as in training). Against a reference gradient g*
    (``reference``: "es", "backprop", or "auto" = backprop when the leading Lyapunov
    exponent is negative, else ES), each gets a bias, a variance, a cost in unroll steps and
    seconds, and its squared error when ``budget`` unroll steps are spent averaging its
    estimates — the error per unit of compute. The recommendation is the estimator with
    the least error at that budget.

    Args:
      horizon: T (default: the system's). window: K for truncated estimators.
      sigma: ES/PES perturbation scale. population: samples/pairs/particles per estimate.
      budget: unroll steps (default: what ``samples`` full-backprop estimates would cost).
      params: per-estimator overrides, e.g. ``{"pes": {"pairs": 16}}``.
      out: write compare.json and compare.png there.
    """
    t0 = time.perf_counter()
    theta = resolve_theta(system, theta)
    horizon = int(horizon or system.horizon)
    if horizon <= 0:
        raise InputError(f"horizon must be a positive integer, got {horizon}")
    names = list(estimators_)
    if not names:
        raise InputError("name at least one estimator; accepted: " + ", ".join(estimators.names()))
    for n in names:
        estimators.parameters(n)  # unknown names fail before any work
    key = default_key(key)
    if reference == "auto":
        lam = lyapunov_spectrum(system, theta, key=key, steps=max(500, 5 * horizon), k=1,
                                transient=horizon, progress=False).exponents[0]
        reference = "backprop" if lam < 0 else "es"
    g_ref, se_ref, ref_desc = reference_gradient(
        system, theta, horizon, kind=reference, key=jax.random.fold_in(key, 1000),
        batches=reference_batches, per_batch=reference_per_batch, sigma=sigma)
    ref_norm = float(np.linalg.norm(g_ref))
    common = {"samples": population, "particles": population, "pairs": population,
              "sigma": sigma, "window": min(window, horizon), "horizon": horizon}
    built = [estimators.make(n, system, **_estimator_params(n, common, (params or {}).get(n)))
             for n in names]
    runs = []
    for i, est in enumerate(built):
        grads, steps, secs = _collect(est, theta, jax.random.fold_in(key, i), samples,
                                      f"compare {est.name}", progress)
        runs.append((est, grads, steps, secs))
    budget = int(budget or samples * population * horizon)
    stats = []
    for est, grads, steps, secs in runs:
        ok = np.all(np.isfinite(grads), axis=1)
        good = grads[ok]
        if len(good) >= 2:
            mean = good.mean(axis=0)
            var = float(np.sum(good.var(axis=0, ddof=1)))
            raw2 = float(np.sum((mean - g_ref) ** 2))
            bias = math.sqrt(max(0.0, raw2 - var / len(good) - se_ref**2))
            mse = bias**2 + var * steps / budget
        else:
            mean, var, raw2, bias, mse = None, math.inf, math.inf, math.inf, math.inf
        stats.append(EstimatorStats(
            name=est.name, params=dict(est.params), samples=len(grads), steps=steps,
            seconds=secs, bias=bias, bias_raw=math.sqrt(raw2), variance=var,
            mse_at_budget=mse,
            relative_error=math.sqrt(mse) / ref_norm if ref_norm > 0 else math.inf,
            nonfinite=int((~ok).sum()), mean_grad=mean))
    ranking = [s.name for s in sorted(stats, key=lambda s: (s.mse_at_budget, s.steps))]
    comp = Comparison(
        system=system.describe(), horizon=horizon, budget=budget, reference=ref_desc,
        reference_norm=ref_norm, reference_se=se_ref, stats=stats, ranking=ranking,
        recommendation=_recommend(stats, ranking, ref_norm), run=provenance(key),
        precision=precision_info(
            np.asarray(jax.tree_util.tree_leaves(theta)[0]).dtype),
        seconds=time.perf_counter() - t0)
    if out is not None:
        comp.save(out)
    return comp


def _recommend(stats: list[EstimatorStats], ranking: list[str], ref_norm: float) -> str:
    by = {s.name: s for s in stats}
    best = by[ranking[0]]
    if not np.isfinite(best.mse_at_budget):
        return "No estimator gave finite gradients: shorten the horizon or check the system."
    why = "bias-dominated" if best.bias**2 > best.mse_at_budget / 2 else "variance-dominated"
    text = (f"use {best.name}: the least error for the compute ({best.relative_error:.2g} "
            f"relative RMS error at the budget, {why}).")
    if len(ranking) > 1 and np.isfinite(by[ranking[1]].mse_at_budget) and best.mse_at_budget > 0:
        second = by[ranking[1]]
        text += (f" Next: {second.name}, {second.mse_at_budget / best.mse_at_budget:.3g}x its "
                 "squared error.")
    worst = [s.name for s in stats if not np.isfinite(s.mse_at_budget) or s.nonfinite]
    if worst:
        text += f" Non-finite estimates from: {', '.join(worst)}."
    return text[0].upper() + text[1:]
