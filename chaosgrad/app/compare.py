"""`compare`: which gradient estimator to use on a system — bias and variance against a
reference gradient, cost in unroll steps and seconds, and the error at equal compute, every
number with a 95% interval, and a ranking that says "tie" when the intervals overlap.
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
from scipy.stats import chi2 as _chi2

from chaosgrad import distributed, estimators
from chaosgrad.config import precision_info, provenance
from chaosgrad.errors import InputError
from chaosgrad.io import write_json
from chaosgrad.plots import plot_comparison, save
from chaosgrad.progress import progress_bar
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.stats import (
    Interval,
    Ranking,
    batch_means,
    bias_interval,
    rank,
    samples_needed,
    segment_interval,
    variance_interval,
)
from chaosgrad.system import System, default_key, resolve_theta

PyTree = Any
DEFAULT_ESTIMATORS = ("backprop", "tbptt", "es", "pes")
# Estimators whose successive estimates share persistent particles, hence are correlated:
# their standard errors come from batch means, not from the spread of single estimates.
CORRELATED = ("tbptt", "tes", "pes")
MIN_SAMPLES = 4


@dataclass
class EstimatorStats:
    """One estimator's numbers against the reference gradient g*, each with a 95% interval.

    Attributes:
      name, params: the estimator and its settings.
      samples: how many successive estimates were taken (θ fixed); effective_samples: the
        independent pieces behind its standard errors (batch means for the truncated
        estimators, whose successive estimates share particles; else ``samples``).
      steps: unroll steps one estimate costs; seconds: median wall time of one (compiled).
      bias: ‖E[ĝ] − g*‖, debiased for the noise of both means (`chaosgrad.stats.
        bias_interval`); its low end is 0 when the bias is not resolved from zero, and then
        only its high end (an upper bound) says anything.
      bias_status: "resolved" (low > 0 and the reference's standard error ≤ bias/5),
        "upper bound" (not resolved from zero), or "reference too noisy" (resolved from zero,
        or unresolved because of the reference, but the reference's error is too large to
        call it: see ``reference_samples_needed``).
      reference_samples_needed: reference samples that would resolve this bias (0: enough).
      variance: tr Cov[ĝ] of one estimate. variance_eff: the variance per estimate that
        averaging actually sees (the batch-means long-run variance for correlated
        estimators; equal to ``variance`` for independent ones).
      mse_at_budget: bias² + variance_eff · steps / budget — the squared error of averaging as
        many estimates as the budget of unroll steps buys (the figure of merit).
      relative_error: sqrt(mse_at_budget) / ‖g*‖.
      nonfinite: estimates with a non-finite gradient (excluded from the statistics).
    """

    name: str
    params: dict
    samples: int
    effective_samples: int
    steps: float
    seconds: float
    bias: Interval
    bias_status: str
    reference_samples_needed: int
    variance: Interval
    variance_eff: Interval
    mse_at_budget: Interval
    relative_error: Interval
    nonfinite: int
    mean_grad: np.ndarray = field(repr=False, default=None)

    def to_json(self) -> dict:
        """A JSON-friendly dict (intervals as value/low/high)."""
        return {
            "name": self.name, "params": self.params, "samples": self.samples,
            "effective_samples": self.effective_samples, "steps": self.steps,
            "seconds": self.seconds, "bias": self.bias.to_json(),
            "bias_status": self.bias_status,
            "reference_samples_needed": self.reference_samples_needed,
            "variance": self.variance.to_json(), "variance_eff": self.variance_eff.to_json(),
            "mse_at_budget": self.mse_at_budget.to_json(),
            "relative_error": self.relative_error.to_json(), "nonfinite": self.nonfinite}


@dataclass
class Reference:
    """The reference gradient g*: its mean, per-coordinate squared standard error, how many
    samples are behind it and what it is."""

    mean: np.ndarray
    var_of_mean: np.ndarray
    samples: int
    kind: str
    description: str
    batches: int = 0

    @property
    def se(self) -> float:
        """The norm of its standard-error vector, sqrt(Σ se_i²)."""
        return math.sqrt(float(np.sum(self.var_of_mean)))

    @property
    def se_upper(self) -> float:
        """A 95% upper bound of ``se``: from few batches the spread itself is uncertain
        (chi-square with batches − 1 degrees of freedom), and two batches that happen to
        agree must not make the reference look precise."""
        if self.batches < 2:
            return math.inf
        return self.se * math.sqrt((self.batches - 1) / float(_chi2.ppf(0.025,
                                                                           self.batches - 1)))

    @property
    def norm(self) -> float:
        """‖g*‖."""
        return float(np.linalg.norm(self.mean))


@dataclass
class Comparison:
    """What `compare` returns: per-estimator statistics, the reference, an honest ranking."""

    system: dict
    horizon: int
    budget: int
    reference: str
    reference_norm: float
    reference_se: float
    reference_se_upper: float
    reference_samples: int
    stats: list[EstimatorStats]
    ranking: list[str]
    tied: list[str]
    recommendation: str
    notes: list[str]
    precision: dict
    seconds: float
    figures: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    time_budget: float | None = None

    def to_json(self) -> dict:
        """A JSON-friendly summary (write it with `chaosgrad.io`: non-finite → null)."""
        return {
            "system": self.system, "horizon": self.horizon, "budget": self.budget,
            "intervals": "95%", "reference": self.reference,
            "reference_norm": self.reference_norm, "reference_se": self.reference_se,
            "reference_se_upper": self.reference_se_upper,
            "reference_samples": self.reference_samples,
            "estimators": [s.to_json() for s in self.stats],
            "ranking": self.ranking, "tied": self.tied,
            "recommendation": self.recommendation, "notes": self.notes,
            "precision": self.precision, "figures": self.figures,
            "seconds": round(self.seconds, 2), "time_budget": self.time_budget,
            "run": self.run,
        }

    def table(self) -> str:
        """The comparison as a table for the terminal (95% intervals in brackets)."""
        lines = [
            f"chaosgrad compare: {self.system.get('description') or self.system.get('name')}, "
            f"T = {self.horizon}, budget {self.budget} unroll steps per estimator; "
            "[95% intervals]",
            f"reference: {self.reference}, ‖g*‖ = {self.reference_norm:.4g}, standard error "
            f"{self.reference_se:.2g} ({self.reference_se / self.reference_norm:.1%} of ‖g*‖; "
            f"95% upper bound {self.reference_se_upper:.2g})"
            if self.reference_norm > 0 else f"reference: {self.reference}, ‖g*‖ = 0",
            f"{'estimator':<10}{'steps/est':>10}{'s/est':>9}  {'bias':<29}{'variance':<32}"
            f"{'rel. RMS error @budget':<27}{'NaN':>4}",
        ]
        for name in self.ranking:
            s = next(x for x in self.stats if x.name == name)
            b = (f"< {s.bias.high:.3g}" if s.bias.low <= 0 else s.bias.fmt())
            if s.bias_status == "reference too noisy":
                b += " (ref!)"
            lines.append(f"{s.name:<10}{s.steps:>10.0f}{s.seconds:>9.2e}  {b:<29}"
                         f"{s.variance.fmt():<32}{s.relative_error.fmt():<27}{s.nonfinite:>4}")
        lines += ["", f"RECOMMENDATION: {self.recommendation}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write compare.json, then compare.png, into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "compare.json", self.to_json())
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


class _Gathered:
    """What another process's `_Sampler.run` returned, standing in for that sampler."""

    def __init__(self, est, grads: np.ndarray, steps: float, secs: float, seconds: float):
        self.est, self.grads, self.steps, self.secs, self.seconds = (est, grads, steps, secs,
                                                                     seconds)

    def run(self, samples: int, desc: str, progress) -> tuple[np.ndarray, float, float]:
        """The gathered estimates (``samples`` of them were asked of their owner)."""
        return self.grads, self.steps, self.secs


def _split_sampling(samplers_fn, n_jobs: int, allocate, progress) -> list | None:
    """Run the ``n_jobs`` samplers (the estimators, then the reference) split over the
    processes of a launch: job j is built, timed and run by process j mod P alone
    (`distributed.local_only`). Timings are shared first, so every process allocates
    the samples the same way (``allocate(steps_and_seconds) -> counts``). Returns process
    0's list of `_Gathered`, None on the others."""
    import io as _io
    import json

    rank, count = distributed.process_index(), distributed.process_count()
    mine = {}
    with distributed.local_only():
        for j in range(n_jobs):
            if j % count == rank:
                mine[j] = samplers_fn(j)
    timing = {j: (s.steps, s.seconds) for j, s in mine.items()}
    shared = {}
    for blob in distributed.allgather_bytes(json.dumps(timing).encode()):
        shared.update({int(j): v for j, v in json.loads(blob).items()})
    counts = allocate([shared[j] for j in range(n_jobs)])
    runs = {}
    with distributed.local_only():
        for j, s in mine.items():
            runs[j] = s.run(counts[j], f"compare {s.est.name}", progress if rank == 0 else False)
    buf = _io.BytesIO()
    np.savez(buf, **{f"g{j}": g for j, (g, _, _) in runs.items()},
             meta=np.asarray(json.dumps({j: [st, sec] for j, (_, st, sec) in runs.items()})))
    got: dict = {}
    for blob in distributed.allgather_bytes(buf.getvalue()):
        with np.load(_io.BytesIO(blob), allow_pickle=False) as z:
            for j, (st, sec) in json.loads(str(z["meta"])).items():
                got[int(j)] = (z[f"g{j}"], st, sec)
    if rank != 0:
        return None
    return [(got[j], shared[j][1]) for j in range(n_jobs)]


class _Sampler:
    """Successive estimates of one estimator at fixed θ, compiled and timed before the
    sampling starts, so a time budget can be shared out first.

    The compiling call and the timed call are ordinary successive estimates of the same
    chain (fresh keys, the state carried on), so they are kept as the first two samples
    instead of being thrown away: on long unrolls each estimate costs seconds."""

    def __init__(self, est, theta, key):
        self.est, self.theta, self.key = est, theta, key
        self.estimate = jax.jit(est.estimate)
        self.state = est.init(jax.random.fold_in(key, 0), theta)
        self.kept = []  # (flat gradient, steps, seconds or None) of the first two estimates
        g, self.state, info = self.estimate(self.state, theta, jax.random.fold_in(key, 1))
        g = jax.block_until_ready(g)
        self.kept.append((_flat(g), float(info["steps"]), None))  # its time includes compiling
        self.steps = float(info["steps"])
        t0 = time.perf_counter()
        g, self.state, info = self.estimate(self.state, theta, jax.random.fold_in(key, 3))
        g = jax.block_until_ready(g)
        self.seconds = time.perf_counter() - t0
        self.kept.append((_flat(g), float(info["steps"]), self.seconds))

    def run(self, samples: int, desc: str, progress) -> tuple[np.ndarray, float, float]:
        """``samples`` successive estimates (the two made while compiling and timing come
        first): flat gradients, steps per estimate, median seconds of the timed ones."""
        grads, steps, secs = [], [], []
        for g, st, sec in self.kept[:samples]:
            grads.append(g)
            steps.append(st)
            if sec is not None:
                secs.append(sec)
        self.kept = self.kept[samples:]
        with progress_bar(samples - len(grads), desc, progress, min_total=1) as bar:
            for i in range(samples - len(grads)):
                t0 = time.perf_counter()
                g, self.state, info = self.estimate(self.state, self.theta,
                                                    jax.random.fold_in(self.key, 4 + i))
                g = jax.block_until_ready(g)
                secs.append(time.perf_counter() - t0)
                grads.append(_flat(g))
                steps.append(float(info["steps"]))
                bar.update(1)
        seconds = float(np.median(secs)) if secs else self.seconds
        return np.stack(grads), float(np.mean(steps)), seconds


# Estimators built for a system, reused by later comparisons on the same system (a sweep
# over θ or shifts): the same estimator object keeps its compiled programs, so each
# (estimator, settings) compiles once per system instead of once per comparison.
_BUILT: dict = {}


def make_estimator(name: str, system: System, **params):
    """`estimators.make`, memoised on (system, name, params) while the system lives."""
    # The process count is part of the key: an estimator built to work alone (inside
    # `distributed.local_only`) must not be handed to a population spread over processes.
    key = (id(system), name, tuple(sorted((k, repr(v)) for k, v in params.items())),
           distributed.process_count())
    hit = _BUILT.get(key)
    if hit is not None and hit[0] is system:
        return hit[1]
    if len(_BUILT) > 256:
        _BUILT.clear()
    est = estimators.make(name, system, **params)
    _BUILT[key] = (system, est)
    return est


def _reference_sampler(system, theta, horizon, kind, key, per_batch, sigma) -> _Sampler:
    if kind == "es":
        est = make_estimator("es", system, pairs=per_batch, sigma=sigma, horizon=horizon)
    elif kind == "backprop":
        est = make_estimator("backprop", system, samples=per_batch, horizon=horizon)
    else:
        raise InputError(f"reference {kind!r} is not accepted: use 'auto', 'es' or 'backprop'")
    return _Sampler(est, theta, key)


def reference_gradient(system: System, theta: PyTree, horizon: int, *, kind: str,
                       key: jax.Array, batches: int = 32, per_batch: int = 32,
                       sigma: float = 0.01, sampler: _Sampler | None = None) -> Reference:
    """A reference gradient g* with its standard error, from ``batches`` independent batches.

    ``kind="es"``: antithetic ES over whole unrolls (unbiased for the gradient of the
    Gaussian-smoothed meta-loss, which is what ES/PES estimate), ``batches × per_batch``
    pairs. ``kind="backprop"``: the mean of ``batches × per_batch`` independent exact
    gradients (the gradient of the expected meta-loss; equal to the smoothed one up to
    O(σ²) where the loss is smooth, i.e. in stable systems). Batches with a non-finite
    gradient are left out (and must not be more than half).
    """
    sampler = sampler or _reference_sampler(system, theta, horizon, kind, key, per_batch,
                                            sigma)
    grads, _, _ = sampler.run(batches, f"reference ({kind})", False)
    ok = np.all(np.isfinite(grads), axis=1)
    grads = grads[ok]
    if len(grads) < max(2, batches // 2):
        raise InputError(f"the {kind} reference gradient is non-finite in {int((~ok).sum())} of "
                         f"{len(ok)} batches: the system diverges at T = {horizon}")
    unit = "pairs" if kind == "es" else "runs"
    return Reference(mean=grads.mean(axis=0), var_of_mean=grads.var(axis=0, ddof=1) / len(grads),
                     samples=len(grads) * per_batch, kind=kind,
                     description=f"{kind} ({len(grads) * per_batch} {unit})", batches=len(grads))


def _check_inputs(names, horizon, window, samples, budget):
    canon = [estimators.canonical_name(n) for n in names]  # unknown names fail here
    if not canon:
        raise InputError("name at least one estimator; accepted: " + ", ".join(estimators.names()))
    dup = sorted({n for n in canon if canon.count(n) > 1})
    if dup:
        raise InputError(f"estimator {', '.join(dup)} named more than once; name each once")
    if horizon <= 0:
        raise InputError(f"horizon must be a positive integer, got {horizon}")
    if any(n in ("tbptt", "tes", "pes") for n in canon) and not 1 <= window <= horizon:
        raise InputError(f"window {window} must be between 1 and the horizon {horizon}")
    if samples < MIN_SAMPLES:
        raise InputError(f"samples must be at least {MIN_SAMPLES} (intervals need them), "
                         f"got {samples}")
    if budget is not None and budget <= 0:
        raise InputError(f"budget must be a positive number of unroll steps, got {budget}")
    return canon


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
    reference_batches: int = 256,
    reference_per_batch: int | None = None,
    seconds: float | None = None,
    lyapunov: tuple | None = None,
    params: dict | None = None,
    key: jax.Array | None = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Comparison | None:
    """Compare gradient estimators of ``system``'s T-step meta-loss at fixed θ.

    Each estimator (by registry name: backprop, tbptt, es, tes, pes, combined) gives
    ``samples`` successive estimates with θ fixed (truncated ones advance their particles
    through their staggered windows as in training). Against a reference gradient g*
    (``reference``: "es", "backprop", or "auto" = backprop when the leading Lyapunov
    exponent is negative, else ES), each gets a bias, a variance, a cost in unroll steps and
    seconds, and its squared error when ``budget`` unroll steps are spent averaging its
    estimates — the error per unit of compute — each with a 95% interval. Successive
    estimates of the truncated estimators are correlated, so their intervals use batch
    means. The recommendation names the estimator with the least error at that budget when
    its interval separates it from the rest, and says "tie" otherwise; a bias the reference
    is too noisy to call is reported as such, with the reference samples that would call it.

    Args:
      horizon: T (default: the system's). window: K for truncated estimators (≤ T).
      sigma: ES/PES perturbation scale. population: samples/pairs/particles per estimate.
      samples: estimates per estimator (at least 4).
      budget: unroll steps (default: what ``samples`` full-backprop estimates would cost);
        at least the cost of one estimate of each estimator.
      reference_batches, reference_per_batch: the reference's size, at most (the time
        budget may take fewer batches). ``reference_per_batch`` None: the population, so
        that the reference reuses the compiled backprop (or ES) program of the estimators
        instead of compiling one of its own.
      seconds: a time budget for the sampling (after compiling): every estimator and the
        reference are timed first, then half of it goes to the reference and half is shared
        by the estimators, each capped at ``samples`` (``reference_batches``) and never
        below 4. None: no budget, take every sample asked for.
      lyapunov: (Interval, units) of λ1 for the "auto" rule, measured beforehand by
        `leading_exponent` (None: measured here).
      params: per-estimator overrides, e.g. ``{"pes": {"pairs": 16}}``.
      out: write compare.json and compare.png there.

    Under a multi-process launch (`chaosgrad.distributed`) every process calls it alike:
    each estimator, and the reference, is built, timed and sampled whole by one process
    (job j on process j mod P), and process 0 gathers the estimates, computes the numbers,
    writes ``out`` and returns the `Comparison`; the others return None. Seconds are then
    measured while the other processes work on their own jobs.
    Raises InputError for unknown or repeated estimators, a window longer than the horizon,
    fewer than 4 samples, or a budget below one estimate.
    """
    t0 = time.perf_counter()
    theta = resolve_theta(system, theta)
    horizon = int(horizon or system.horizon)
    names = _check_inputs(list(estimators_), horizon, int(window), int(samples), budget)
    key = default_key(key)
    common = {"samples": population, "particles": population, "pairs": population,
              "sigma": sigma, "window": window, "horizon": horizon}
    split = distributed.process_count() > 1
    # Under a launch each estimator runs whole on one process: built to work alone.
    with distributed.local_only() if split else _nothing():
        built = [make_estimator(n, system, **_estimator_params(n, common,
                                                               (params or {}).get(n)))
                 for n in names]
    budget = int(budget or samples * population * horizon)
    per_batch = int(reference_per_batch or population)
    reference, reference_reason = _choose_reference(system, theta, key, horizon, reference,
                                                    lyapunov)
    ref_key = jax.random.fold_in(key, 1000)

    def sampler(j):
        if j < len(built):
            return _Sampler(built[j], theta, jax.random.fold_in(key, j))
        return _reference_sampler(system, theta, horizon, reference, ref_key,
                                  per_batch, sigma)

    def check_budget(steps_of):
        for est, steps in zip(built, steps_of, strict=False):
            if steps > budget:
                raise InputError(f"budget {budget} is below the cost of one {est.name} "
                                 f"estimate ({steps:.0f} unroll steps); raise --budget")

    if split:
        # Estimators and the reference are independent: one process each, in turn.
        def allocate(timings):
            check_budget([t[0] for t in timings[:-1]])
            stubs = [_Timed(st, sec) for st, sec in timings]
            counts, n_ref = _allocate(stubs[:-1], stubs[-1], samples, reference_batches,
                                      seconds)
            return [*counts, n_ref]

        done = _split_sampling(sampler, len(built) + 1, allocate, progress)
        if done is None:
            return None  # process 0 reports
        runs = [(est, *g) for est, (g, _) in zip(built, done[:-1], strict=True)]
        (g_ref, st_ref, sec_ref), t_ref = done[-1]
        ref_sampler = _Gathered(None, g_ref, st_ref, sec_ref, t_ref)
        ref_batches = len(g_ref)
    else:
        samplers = [sampler(j) for j in range(len(built))]
        check_budget([s.steps for s in samplers])
        ref_sampler = sampler(len(built))
        counts, ref_batches = _allocate(samplers, ref_sampler, samples, reference_batches,
                                        seconds)
        runs = []
        for s, n in zip(samplers, counts, strict=True):
            grads, steps, secs = s.run(n, f"compare {s.est.name}", progress)
            runs.append((s.est, grads, steps, secs))
    ref = reference_gradient(system, theta, horizon, kind=reference, key=ref_key,
                             batches=ref_batches, per_batch=per_batch,
                             sampler=ref_sampler)
    ref.description += f"; {reference_reason}"
    stats = [_estimator_stats(est, grads, steps, secs, ref, budget)
             for est, grads, steps, secs in runs]
    ranking = rank({s.name: s.mse_at_budget for s in stats})
    notes = _notes(stats, ref)
    comp = Comparison(
        system=system.describe(), horizon=horizon, budget=budget, reference=ref.description,
        reference_norm=ref.norm, reference_se=ref.se, reference_se_upper=ref.se_upper,
        reference_samples=ref.samples,
        stats=stats, ranking=ranking.order, tied=ranking.tied,
        recommendation=_recommend(stats, ranking), notes=notes, run=provenance(key),
        precision=precision_info(np.asarray(jax.tree_util.tree_leaves(theta)[0]).dtype),
        seconds=time.perf_counter() - t0, time_budget=seconds)
    if out is not None:
        comp.save(out)
    return comp


class _Timed:
    """A sampler's cost alone (steps and seconds per estimate), for `_allocate`."""

    def __init__(self, steps: float, seconds: float):
        self.steps, self.seconds = steps, seconds


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def leading_exponent(system: System, theta: PyTree, key: jax.Array, horizon: int):
    """λ1 with its 95% interval (batch means over the run), as the "auto" reference rule
    measures it: over max(500, 5T) steps after a transient of T. Returns (Interval, units).
    A sweep over several T at one θ may measure it once, at its longest T, and pass it to
    `compare` as ``lyapunov``."""
    ly = lyapunov_spectrum(system, theta, key=key, steps=max(500, 5 * horizon), k=1,
                           transient=horizon, progress=False)
    return segment_interval(ly.history_steps, ly.history[:, 0]), ly.units


def _choose_reference(system, theta, key, horizon: int, reference: str,
                      lyapunov=None) -> tuple[str, str]:
    """"auto": the backprop mean (far less noisy) unless λ1's interval shows the gradient
    exploding over the horizon (λ1 resolved above 0.5 / T per step, the margin diagnose
    uses), where backprop's mean is not the smoothed gradient ES and PES estimate."""
    if reference != "auto":
        return reference, "asked for"
    lam, units = lyapunov or leading_exponent(system, theta, key, horizon)
    per_step = system.dt if system.dt is not None else 1.0
    margin = 0.5 / horizon / per_step
    kind = "es" if lam.low > margin else "backprop"
    return kind, (f"auto: λ1 = {lam.fmt('+.3g')} {units}, "
                  + ("resolved above" if kind == "es" else "not resolved above")
                  + f" the margin 0.5/T = {margin:.3g}")


def _allocate(samplers: list[_Sampler], ref: _Sampler, samples: int, ref_batches: int,
              seconds: float | None) -> tuple[list[int], int]:
    """Estimates per estimator and reference batches that fit ``seconds`` of sampling (from
    each one's timed estimate): half to the reference, whose noise limits every bias, half
    shared by the estimators; at most what was asked, at least `MIN_SAMPLES`."""
    if seconds is None:
        return [samples] * len(samplers), ref_batches
    share = 0.5 * float(seconds) / max(len(samplers), 1)
    counts = [int(min(samples, max(MIN_SAMPLES, share // max(s.seconds, 1e-9))))
              for s in samplers]
    n_ref = int(min(ref_batches, max(MIN_SAMPLES, 0.5 * seconds // max(ref.seconds, 1e-9))))
    return counts, n_ref


def _estimator_stats(est, grads, steps, secs, ref: Reference, budget) -> EstimatorStats:
    ok = np.all(np.isfinite(grads), axis=1)
    good = grads[ok]
    n = len(good)
    nan = Interval(math.nan, math.nan, math.nan, method="too few finite estimates")
    if n < MIN_SAMPLES:
        return EstimatorStats(est.name, dict(est.params), len(grads), n, steps, secs, nan,
                              "upper bound", 0, nan, nan, nan, nan, int((~ok).sum()))
    var_coord = good.var(axis=0, ddof=1)
    if est.name in CORRELATED:
        bm = batch_means(good)
        eff = len(bm)
        # the long-run variance per estimate: Var(batch mean) × batch size
        var_mean_coord = bm.var(axis=0, ddof=1) / eff
        v_eff = float(np.sum(bm.var(axis=0, ddof=1))) * (n // eff)
    else:
        eff = n
        var_mean_coord = var_coord / n
        v_eff = float(np.sum(var_coord))
    mean = good.mean(axis=0)
    # the noise behind both means is estimated from few pieces (batch means, reference
    # batches): the t quantile with the smaller count keeps the interval honest
    bias = bias_interval(mean, var_mean_coord, 1.0, ref.mean, ref.var_of_mean,
                         dof=max(1, min(eff, ref.batches) - 1))
    variance = variance_interval(float(np.sum(var_coord)), n - 1)
    veff = variance_interval(v_eff, eff - 1)
    share = steps / budget
    mse = Interval(bias.value**2 + veff.value * share, bias.low**2 + veff.low * share,
                   bias.high**2 + veff.high * share, method="bias² + variance_eff·steps/budget")
    norm = ref.norm
    rel = (Interval(math.sqrt(mse.value) / norm, math.sqrt(mse.low) / norm,
                    math.sqrt(mse.high) / norm, method="sqrt(MSE)/‖g*‖")
           if norm > 0 else Interval(math.inf, math.inf, math.inf, method="‖g*‖ = 0"))
    own_se = math.sqrt(float(np.sum(var_mean_coord)))
    status, needed = _bias_status(bias, ref, own_se)
    return EstimatorStats(est.name, dict(est.params), len(grads), eff, steps, secs, bias,
                          status, needed, variance, veff, mse, rel, int((~ok).sum()), mean)


def _bias_status(bias: Interval, ref: Reference, own_se: float) -> tuple[str, int]:
    """Whether a bias can be called, and how many reference samples would call it.

    A bias is called nonzero only when its interval excludes 0 and the reference's own
    standard error (its 95% upper bound) is at most a fifth of it. An unresolved bias is
    blamed on the reference when the reference is the larger source of noise."""
    se = ref.se_upper
    if bias.low > 0:
        if se <= bias.value / 5:
            return "resolved", 0
        return "reference too noisy", samples_needed(ref.samples, se, bias.value / 5)
    if se > own_se and se > 0:
        target = max(own_se, 1e-300)
        return "reference too noisy", samples_needed(ref.samples, se, target)
    return "upper bound", 0


def _notes(stats: list[EstimatorStats], ref: Reference) -> list[str]:
    notes = []
    noisy = [s for s in stats if s.bias_status == "reference too noisy"]
    if noisy:
        need = max(s.reference_samples_needed for s in noisy)
        notes.append(
            f"the reference is too noisy to resolve the bias of {', '.join(s.name for s in noisy)}"
            f" (its standard error is {ref.se:.2g}, at most {ref.se_upper:.2g}); about {need} "
            "reference samples "
            f"({max(need - ref.samples, 0)} more) would resolve it")
    smoothed = [s.name for s in stats if s.name in ("es", "tes", "pes", "combined")]
    if ref.kind == "backprop" and smoothed:
        notes.append(f"the reference is the backprop mean: {', '.join(smoothed)} estimate the "
                     "gradient of the Gaussian-smoothed loss, so their bias here includes the "
                     "smoothing (PES and truncated ES smooth each truncation separately)")
    for s in stats:
        if s.bias.low <= 0 and np.isfinite(s.bias.high):
            notes.append(f"{s.name}: no bias resolved from zero; bias < {s.bias.high:.3g}")
        if s.nonfinite:
            notes.append(f"{s.name}: {s.nonfinite} of {s.samples} estimates non-finite "
                         "(left out of its statistics)")
    return notes


def _recommend(stats: list[EstimatorStats], ranking: Ranking) -> str:
    by = {s.name: s for s in stats}
    best = by[ranking.order[0]]
    if not np.isfinite(best.mse_at_budget.value):
        return "No estimator gave finite gradients: shorten the horizon or check the system."
    why = ("bias-dominated" if best.bias.value**2 > best.mse_at_budget.value / 2
           else "variance-dominated")
    if not ranking.separated:
        cheapest = min((by[n] for n in ranking.tied), key=lambda s: s.seconds)
        return (f"Tie at 95%: {', '.join(ranking.tied)} — their errors at the budget overlap "
                f"(best point estimate: {best.name}, {best.relative_error.fmt('.2g')} "
                f"relative RMS error). Take the fastest, {cheapest.name}, or collect more "
                "samples to separate them.")
    text = (f"Use {best.name}: the least error for the compute, separated from the rest at "
            f"95% ({best.relative_error.fmt('.2g')} relative RMS error at the budget, {why}).")
    if len(ranking.order) > 1:
        second = by[ranking.order[1]]
        if np.isfinite(second.mse_at_budget.value) and best.mse_at_budget.value > 0:
            ratio = second.mse_at_budget.value / best.mse_at_budget.value
            text += f" Next: {second.name}, {ratio:.3g}x its squared error."
    return text
