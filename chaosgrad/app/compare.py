"""`compare`: which gradient estimator to use on a system. Every estimator is judged against
one stated target gradient — by default that of the Gaussian-smoothed meta-loss, which ES,
NRES and PES estimate — through an independent reference of that target; bias, variance,
cost and the error at equal compute come from independent replicates (fresh populations and
keys), with intervals whose calibration is tested, and a null check on every comparison.
"""

from __future__ import annotations

import contextlib
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
from chaosgrad.diagnose import TAIL_MULTIPLE, tail_table
from chaosgrad.errors import InputError
from chaosgrad.estimators import Estimator
from chaosgrad.io import count_text, write_json
from chaosgrad.plots import plot_comparison, save
from chaosgrad.progress import progress_bar
from chaosgrad.stats import (
    BiasTest,
    Interval,
    Ranking,
    bias_test,
    dominated,
    rank,
    samples_needed,
    trace_variance_interval,
)
from chaosgrad.system import System, default_key, resolve_theta

PyTree = Any
DEFAULT_ESTIMATORS = ("backprop", "tbptt", "es", "pes")
TARGETS = ("smoothed", "exact")
MIN_SAMPLES = 8  # replicates per estimator: the sign-flip bias test needs at least 6 groups
PILOT = 4  # batches of each reference kind measured before the reference is chosen
REFERENCE_FACTOR = 10  # the reference has at least this many times an estimator's replicates


@dataclass
class EstimatorStats:
    """One estimator's numbers against the reference g* of the stated target, each with a 95%
    interval, all from independent replicates.

    Attributes:
      name: the name asked for (an `Estimator` given as an object: its own name);
        estimator: the name of what ran (under the smoothed target "backprop" runs as
        "reparam", backprop at θ ± σε); target: the gradient it is unbiased for on its own
        (see `chaosgrad.estimators.TARGETS`); traits: all it says it is
        (`Estimator.traits`); params: its settings.
      samples: replicates taken (each from a fresh ``init`` and keys); per_replicate:
        successive estimates averaged in each (a truncated estimator's replicate covers a
        whole inner run per particle); effective_samples: the finite replicates.
      steps: unroll steps one estimate costs; seconds: median wall time of one replicate.
      bias: ‖E[ĝ] − g*‖ by `chaosgrad.stats.bias_test` (sign-flip test of an unbiased
        U-statistic over independent groups): ``low > 0`` exactly when resolved from zero.
      bias_p: the test's p-value. bias_status: "resolved", "upper bound" (not resolved) or
        "reference too noisy" (not resolved, and the reference's noise is the larger part).
      reference_samples_needed: reference samples that would make its noise the smaller part.
      variance: tr Cov of one estimate (from the first estimate of each replicate).
      variance_eff: the variance per estimate that averaging sees (per_replicate × tr Cov of
        a replicate mean: for correlated estimators the long-run variance).
      mse_at_budget: bias² + variance_eff · steps / budget; relative_error: its root / ‖g*‖.
      nonfinite: replicates with a non-finite estimate (left out, counted).
      tails: median and largest replicate norm, the share of replicates beyond
        `chaosgrad.diagnose.TAIL_MULTIPLE` × the median, and whether one replicate dominates
        the spread (then its mean is not trusted).
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
    estimator: str = ""
    target: str = ""
    per_replicate: int = 1
    bias_p: float = math.nan
    tails: dict = field(default_factory=dict)
    mean_grad: np.ndarray = field(repr=False, default=None)
    traits: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-friendly dict (intervals as value/low/high)."""
        return {
            "name": self.name, "estimator": self.estimator, "target": self.target,
            "traits": self.traits, "params": self.params, "samples": self.samples,
            "per_replicate": self.per_replicate,
            "effective_samples": self.effective_samples, "steps": self.steps,
            "seconds": self.seconds, "bias": self.bias.to_json(), "bias_p": self.bias_p,
            "bias_status": self.bias_status,
            "reference_samples_needed": self.reference_samples_needed,
            "variance": self.variance.to_json(), "variance_eff": self.variance_eff.to_json(),
            "mse_at_budget": self.mse_at_budget.to_json(),
            "relative_error": self.relative_error.to_json(), "nonfinite": self.nonfinite,
            "tails": self.tails}


@dataclass
class Reference:
    """The reference gradient g*: its mean, per-coordinate squared standard error, how many
    samples are behind it and what it is; ``batches`` holds the independent batch estimates
    (rows) the bias tests use."""

    mean: np.ndarray
    var_of_mean: np.ndarray
    samples: int
    kind: str
    description: str
    batches: int = 0
    rows: np.ndarray = field(repr=False, default=None)

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
    """What `compare` returns: the target, the reference, per-estimator statistics, the null
    check, and an honest ranking whose first name is the recommended estimator."""

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
    target: str = "smoothed"
    target_description: str = ""
    null_check: dict = field(default_factory=dict)
    reference_check: dict = field(default_factory=dict)
    recommended: str | None = None
    timing: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-friendly summary (write it with `chaosgrad.io`: non-finite → null)."""
        return {
            "system": self.system, "horizon": self.horizon, "budget": self.budget,
            "intervals": "95%", "target": self.target,
            "target_description": self.target_description, "reference": self.reference,
            "reference_norm": self.reference_norm, "reference_se": self.reference_se,
            "reference_se_upper": self.reference_se_upper,
            "reference_samples": self.reference_samples,
            "reference_check": self.reference_check, "null_check": self.null_check,
            "estimators": [s.to_json() for s in self.stats],
            "ranking": self.ranking, "tied": self.tied, "recommended": self.recommended,
            "recommendation": self.recommendation, "notes": self.notes,
            "precision": self.precision, "figures": self.figures,
            "seconds": round(self.seconds, 2), "time_budget": self.time_budget,
            "timing": self.timing, "run": self.run,
        }

    def table(self) -> str:
        """The comparison as a table for the terminal (95% intervals in brackets)."""
        lines = [
            f"chaosgrad compare: {self.system.get('description') or self.system.get('name')}, "
            f"T = {self.horizon}, budget {self.budget} unroll steps per estimator; "
            "[95% intervals]",
            f"target: {self.target_description}",
            f"reference: {self.reference}, ‖g*‖ = {self.reference_norm:.4g}, standard error "
            f"{self.reference_se:.2g} ({self.reference_se / self.reference_norm:.1%} of ‖g*‖; "
            f"95% upper bound {self.reference_se_upper:.2g})"
            if self.reference_norm > 0 else f"reference: {self.reference}, ‖g*‖ = 0",
            f"{'estimator':<10}{'steps/est':>10}{'s/rep':>9}  {'bias':<29}{'variance':<32}"
            f"{'rel. RMS error @budget':<27}{'NaN':>4}",
        ]
        for name in self.ranking:
            s = next(x for x in self.stats if x.name == name)
            b = (f"< {s.bias.high:.3g}" if not s.bias.low > 0 else s.bias.fmt())
            if s.bias_status == "reference too noisy":
                b += " (ref!)"
            lines.append(f"{s.name:<10}{s.steps:>10.0f}{s.seconds:>9.2e}  {b:<29}"
                         f"{s.variance.fmt():<32}{s.relative_error.fmt():<27}{s.nonfinite:>4}")
        if self.reference_check:
            rc = self.reference_check
            d = rc["difference"]
            lines.append(f"cross-check: {rc['kind']} ({rc['batches']} batches) against the "
                         f"reference: difference {d['value']:.3g} [{d['low']:.3g}, "
                         f"{d['high']:.3g}] (p = {rc['p_value']:.2g}), "
                         + ("they agree" if rc["agree"] else "they DISAGREE"))
        if self.null_check:
            lines.append(f"null check: {self.null_check.get('sentence', '')}")
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


# compare's shared settings, handed to every estimator whose factory takes them (by name in
# its signature): a user's estimator with the same parameter names takes them too.
SHARED_SETTINGS = ("samples", "particles", "pairs", "sigma", "window", "horizon")


def _estimator_params(name: str, common: dict, extra: dict | None) -> dict:
    accepted = estimators.parameters(name)
    params = {k: common[k] for k in SHARED_SETTINGS if k in accepted}
    params.update(extra or {})
    return params


def _split_sampling(samplers_fn, n_jobs: int, allocate, progress) -> list | None:
    """Run the ``n_jobs`` samplers (the estimators, then the reference) split over the
    processes of a launch: job j is built, timed and run by process j mod P alone
    (`distributed.local_only`). Timings are shared first, so every process allocates
    the samples the same way (``allocate(steps_and_seconds) -> counts``). Returns process
    0's list of ((rows, steps, seconds), timed seconds) per job, None on the others."""
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
    """Independent replicates of one estimator at fixed θ: replicate r starts from a fresh
    ``init`` (key ``fold_in(key, r)``) and averages ``per_replicate`` successive estimates
    with fresh keys. The first replicate compiles and the second is timed; both are kept as
    ordinary replicates (on long unrolls each costs seconds)."""

    def __init__(self, est, theta, key, per_replicate: int = 1):
        self.est, self.theta, self.key = est, theta, key
        self.per_replicate = max(1, int(per_replicate))
        self.estimate = jax.jit(est.estimate)
        self.next = 0
        t0 = time.perf_counter()
        self.kept = [self._replicate()]
        t1 = time.perf_counter()
        self.kept.append(self._replicate())
        self.seconds = time.perf_counter() - t1
        # the first replicate's time beyond an ordinary one: tracing and compiling
        self.compile_seconds = max(t1 - t0 - self.seconds, 0.0)

    def _replicate(self) -> np.ndarray:
        k = jax.random.fold_in(self.key, self.next)
        self.next += 1
        state = self.est.init(jax.random.fold_in(k, 0), self.theta)
        total, first, steps = None, None, 0.0
        for i in range(self.per_replicate):
            g, state, info = self.estimate(state, self.theta, jax.random.fold_in(k, 1 + i))
            estimators.check_info(info, self.est.name)
            g = _flat(jax.block_until_ready(g))
            first = g if first is None else first
            total = g if total is None else total + g
            steps += float(info["steps"])
        self.steps = steps / self.per_replicate
        return np.stack([total / self.per_replicate, first])

    def run(self, samples: int, desc: str, progress) -> tuple[np.ndarray, float, float]:
        """``samples`` replicates (the two made while compiling and timing come first):
        an array (samples, 2, d) of each replicate's mean and its first estimate (flat
        gradients; the first estimates are independent single estimates), steps per
        estimate, median seconds per replicate."""
        rows = list(self.kept[:samples])
        self.kept = self.kept[samples:]
        secs = [self.seconds]
        with progress_bar(samples - len(rows), desc, progress, min_total=1) as bar:
            for _ in range(samples - len(rows)):
                t0 = time.perf_counter()
                rows.append(self._replicate())
                secs.append(time.perf_counter() - t0)
                bar.update(1)
        return np.stack(rows), float(self.steps), float(np.median(secs))


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


def _reference_estimator(system, kind: str, horizon: int, per_batch: int, sigma: float):
    if kind == "es":
        return make_estimator("es", system, pairs=per_batch, sigma=sigma, horizon=horizon)
    if kind == "reparam":
        return make_estimator("reparam", system, pairs=per_batch, sigma=sigma, horizon=horizon)
    if kind == "backprop":
        return make_estimator("backprop", system, samples=per_batch, horizon=horizon)
    raise InputError(f"reference {kind!r} is not accepted: use 'auto', 'reparam', 'es' or "
                     "'backprop'")


def _reference_sampler(system, theta, horizon, kind, key, per_batch, sigma) -> _Sampler:
    return _Sampler(_reference_estimator(system, kind, horizon, per_batch, sigma), theta, key)


def _reference_from_rows(rows: np.ndarray, kind: str, per_batch: int, horizon: int,
                         note: str = "") -> Reference:
    """A `Reference` from independent batch estimates (rows: (batches, d)); batches with a
    non-finite gradient are left out (and must not be more than half)."""
    ok = np.all(np.isfinite(rows), axis=1)
    good = rows[ok]
    if len(good) < max(2, len(rows) // 2):
        raise InputError(f"the {kind} reference gradient is non-finite in {int((~ok).sum())} of "
                         f"{len(ok)} batches: the system diverges at T = {horizon}")
    unit = "runs" if kind == "backprop" else "pairs"
    what = {"es": "antithetic ES over whole unrolls",
            "reparam": "backprop at θ ± σε (reparameterisation, antithetic)",
            "backprop": "backprop"}[kind]
    desc = f"{kind}: {what}, {count_text(len(good) * per_batch)} {unit} in {len(good)} batches"
    return Reference(mean=good.mean(axis=0), var_of_mean=good.var(axis=0, ddof=1) / len(good),
                     samples=len(good) * per_batch, kind=kind,
                     description=desc + (f"; {note}" if note else ""), batches=len(good),
                     rows=good)


def reference_gradient(system: System, theta: PyTree, horizon: int, *, kind: str,
                       key: jax.Array, batches: int = 32, per_batch: int = 32,
                       sigma: float = 0.01, sampler: _Sampler | None = None) -> Reference:
    """A reference gradient g* with its standard error, from ``batches`` independent batches.

    ``kind="reparam"``: backprop at θ ± σε (unbiased for the gradient of the Gaussian-smoothed
    meta-loss, the default target); ``kind="es"``: antithetic ES over whole unrolls (the same
    target, with a variance bounded by the loss's spread); ``kind="backprop"``: the mean of
    exact gradients (the gradient of the expected meta-loss, the "exact" target). Batches
    with a non-finite gradient are left out (and must not be more than half).
    """
    sampler = sampler or _reference_sampler(system, theta, horizon, kind, key, per_batch,
                                            sigma)
    rows, _, _ = sampler.run(batches, f"reference ({kind})", False)
    return _reference_from_rows(rows[:, 0], kind, per_batch, horizon)


def _check_inputs(asked, horizon, samples, budget, target) -> list[tuple[str, Any]]:
    """(label, what) for each estimator asked for: a registry name or ``"module:function"``
    (resolved, unknown names refused here) or an `Estimator` object (checked)."""
    if not asked:
        raise InputError("name at least one estimator; accepted: "
                         + ", ".join(estimators.names()) + ", module:function, or an "
                         "Estimator object")
    entries = []
    for a in asked:
        if isinstance(a, str):
            entries.append((estimators.canonical_name(a), a))
        else:
            est = estimators.check_estimator(a)
            entries.append((est.name, est))
    labels = [n for n, _ in entries]
    dup = sorted({n for n in labels if labels.count(n) > 1})
    if dup:
        raise InputError(f"estimator {', '.join(dup)} named more than once; name each once")
    if target not in TARGETS:
        raise InputError(f"target {target!r} is not accepted: use one of {', '.join(TARGETS)}")
    if isinstance(horizon, bool) or horizon <= 0:
        raise InputError(f"horizon must be a positive integer, got {horizon}")
    if samples < MIN_SAMPLES:
        raise InputError(f"samples must be at least {MIN_SAMPLES} (independent replicates: the "
                         f"bias test needs them), got {samples}")
    if budget is not None and budget <= 0:
        raise InputError(f"budget must be a positive number of unroll steps, got {budget}")
    return [(n, a if not isinstance(a, str) else n) for n, a in entries]


def _check_windows(labels, built, horizon) -> None:
    """A windowed estimator's window K must fit in the horizon."""
    for name, est in zip(labels, built, strict=True):
        if est.windowed and not 1 <= int(est.params["window"]) <= horizon:
            raise InputError(f"window {est.params['window']} of {name} must be between 1 and "
                             f"the horizon {horizon}")


def _replicate_length(est, horizon: int, window: int) -> int:
    """Successive estimates per replicate: one for independent estimates; for a correlated
    estimator ceil(T / K), a whole inner run per particle (its own window K when windowed,
    else compare's ``window``), so replicate means are honest batch means."""
    if not est.correlated:
        return 1
    k = int(est.params["window"]) if est.windowed else int(window)
    return max(1, math.ceil(horizon / k))


def _runner(name: str, target: str) -> str:
    """The registry estimator that runs for ``name``: under the smoothed target, "backprop"
    is the reparameterisation gradient (backprop at θ ± σε)."""
    return "reparam" if (name == "backprop" and target == "smoothed") else name


def compare(
    system: System,
    theta: PyTree = None,
    estimators: tuple | list = DEFAULT_ESTIMATORS,
    *,
    horizon: int | None = None,
    target: str = "smoothed",
    budget: int | None = None,
    samples: int = 16,
    window: int = 10,
    sigma: float = 0.01,
    population: int = 8,
    reference: str = "auto",
    reference_batches: int | None = None,
    reference_per_batch: int | None = None,
    seconds: float | None = None,
    params: dict | None = None,
    key: jax.Array | None = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    estimators_: tuple[str, ...] | list[str] | None = None,
) -> Comparison | None:
    """Compare gradient estimators of ``system``'s T-step meta-loss at fixed θ, against one
    stated target gradient.

    The target (``target``): "smoothed" (default) is ∇_θ E_key E_ε L_T(θ + ε; key) with
    ε ~ N(0, σ² I) — what ES, NRES and PES estimate; there "backprop" runs as the
    reparameterisation gradient, backprop at θ ± σε (`chaosgrad.estimators.reparam`).
    "exact" is ∇_θ E_key L_T(θ; key), which backprop estimates: ES and PES are then charged
    for their smoothing, and the notes say so.

    The reference g* is independent of every estimator it judges (its own keys) and has
    ``reference_batches`` (default 10 × ``samples``) batches of ``reference_per_batch``
    (default ``population``) runs or pairs. Under the smoothed target two unbiased kinds
    exist: the reparameterisation gradient and antithetic ES over whole unrolls; "auto"
    measures the spread of both across run keys at T (4 batches each) and takes the one with
    the least variance per second; the other kind's batches (``samples`` of them) are a
    cross-check, tested for agreement with the reference. Under the exact target the
    reference is backprop.

    Every estimator gives ``samples`` independent replicates, each from a fresh ``init`` and
    keys; a replicate of a correlated (truncated) estimator averages ceil(T / window)
    successive estimates, a whole inner run per particle. What an estimator is comes from
    its traits (`chaosgrad.estimators.Estimator`: target and smoothing, correlated,
    windowed), never from its name, so a user's estimator is judged like a built-in one.
    From the replicates: the bias (a sign-flip test of an unbiased U-statistic,
    `chaosgrad.stats.bias_test`: no independent-coordinates assumption), the variance of
    one estimate and the long-run variance per estimate
    (Satterthwaite intervals), the cost, and the squared error at ``budget`` unroll steps,
    each with a 95% interval. A null check — reparameterisation backprop (backprop under
    "exact") against an independent sample of itself — is recorded with every comparison.
    ``ranking[0]`` is the best point estimate; the recommendation names it only when its
    interval separates it from the rest and the reference, the null check and the tails
    allow a recommendation, and says why not otherwise.

    Args:
      estimators: registry names, ``"module:function"`` factories (built like registered
        ones: compare's settings go to the parameters their signature names), or
        `Estimator` objects built for ``system`` (used as they are); ``estimators_``: the
        old name of this argument.
      horizon: T (default: the system's). window: K for truncated estimators (≤ T).
      sigma: ES/PES/NRES perturbation scale and the smoothing of the target.
      population: samples/pairs/particles per estimate.
      samples: replicates per estimator (at least 8).
      budget: unroll steps (default: ``samples × population × T``).
      reference: "auto", "reparam" (alias "backprop" under the smoothed target), "es", or
        "backprop" (the exact target's).
      seconds: a time budget for the sampling (after compiling): half to the reference,
        half shared by the estimators, never below 8 replicates each.
      params: per-estimator overrides, e.g. ``{"pes": {"pairs": 16}}``.
      out: write compare.json and compare.png there.

    Under a multi-process launch (`chaosgrad.distributed`) every process calls it alike:
    each estimator, and each reference sample, is built and sampled whole by one process,
    and process 0 gathers the replicates, computes the numbers, writes ``out`` and returns
    the `Comparison`; the others return None.
    Raises InputError (one line, naming what is accepted) for unknown or repeated
    estimators, an unknown target or reference, a window longer than the horizon, fewer
    than 8 samples, or a budget below one estimate.
    """
    t0 = time.perf_counter()
    theta = resolve_theta(system, theta)
    horizon = int(horizon or system.horizon)
    asked = estimators_ if estimators_ is not None else estimators
    if isinstance(asked, str):  # "backprop,es,mymod:make"
        asked = [n.strip() for n in asked.split(",") if n.strip()]
    asked = [asked] if isinstance(asked, Estimator) else list(asked)
    entries = _check_inputs(asked, horizon, int(samples), budget, target)
    names = [n for n, _ in entries]
    key = default_key(key)
    samples = int(samples)
    common = {"samples": population, "particles": population, "pairs": population,
              "sigma": sigma, "window": window, "horizon": horizon}
    split = distributed.process_count() > 1
    if split and any(not isinstance(what, str) for _, what in entries):
        # each estimator is sampled by one process alone: it must be built inside
        # `distributed.local_only`, which an object built by the caller was not
        raise InputError("under a multi-process launch give compare's estimators by name or "
                         "module:function (each is then built for the process that samples "
                         "it), not as Estimator objects")
    local = distributed.local_only if split else contextlib.nullcontext
    with local():
        built = []
        for n, what in entries:
            if not isinstance(what, str):
                if n in (params or {}):
                    raise InputError(f"estimator {n!r} was given as an Estimator object, "
                                     "used as built: give its settings when building it, "
                                     "not in params")
                built.append(what)  # the user's own object, as built
                continue
            runner = _runner(n, target)
            overrides = (params or {}).get(n)
            built.append(make_estimator(runner, system,
                                        **_estimator_params(runner, common, overrides)))
    _check_windows(names, built, horizon)
    per_rep = [_replicate_length(e, horizon, window) for e in built]
    budget = int(budget or samples * population * horizon)
    per_batch = int(reference_per_batch or population)
    n_ref = max(int(reference_batches or REFERENCE_FACTOR * samples), PILOT + 2)
    kinds, chosen, reason = _reference_kinds(target, reference)
    ref_key = jax.random.fold_in(key, 1000)
    with local():
        pilots = {k: _reference_sampler(system, theta, horizon, k,
                                         jax.random.fold_in(ref_key, i), per_batch, sigma)
                  for i, k in enumerate(kinds)}
        pilot_rows = {k: s.run(PILOT, f"reference pilot ({k})", False)[0]
                      for k, s in pilots.items()}
    if chosen is None:
        chosen, reason = _choose_reference(pilot_rows, {k: s.seconds for k, s in pilots.items()})
    other = next((k for k in kinds if k != chosen), None)
    null_kind = "backprop" if target == "exact" else "reparam"
    # backprop asked for by name is already a sample of the null kind
    null_in = next((i for i, (n, what) in enumerate(entries)
                    if n == "backprop" and isinstance(what, str)), None)
    # jobs: the estimators, the reference, the cross-check, a null sample when backprop was
    # not asked for
    extra = [("reference", chosen), *([("cross-check", other)] if other else []),
             *([("null", null_kind)] if null_in is None else [])]

    def sampler(j):
        if j < len(built):
            return _Sampler(built[j], theta, jax.random.fold_in(key, j), per_rep[j])
        role, kind = extra[j - len(built)]
        if role in ("reference", "cross-check"):
            return pilots[kind]
        return _Sampler(_reference_estimator(system, kind, horizon, per_batch, sigma), theta,
                        jax.random.fold_in(ref_key, 77))

    def wanted(role):
        return {"reference": n_ref - PILOT, "cross-check": max(samples - PILOT, 2),
                "null": samples}[role]

    def check_budget(steps_of):
        for est, steps in zip(built, steps_of, strict=False):
            if steps > budget:
                raise InputError(f"budget {budget} is below the cost of one {est.name} "
                                 f"estimate ({steps:.0f} unroll steps); raise --budget")

    def allocate(timings):
        check_budget([t[0] for t in timings[:len(built)]])
        counts = _allocate([t[1] for t in timings[:len(built)]], timings[len(built)][1],
                           samples, n_ref - PILOT, seconds)
        return [*counts[0], counts[1], *[wanted(r) for r, _ in extra[1:]]]

    n_jobs = len(built) + len(extra)
    t_sample = None
    if split:
        done = _split_sampling(sampler, n_jobs, allocate, progress)
        if done is None:
            return None  # process 0 reports
        results = [g for g, _ in done]
    else:
        samplers = [sampler(j) for j in range(n_jobs)]
        compile_seconds = sum({id(s): s.compile_seconds for s in [*samplers, *pilots.values()]
                               }.values())
        t_sample = time.perf_counter()
        counts = allocate([(s.steps, s.seconds) for s in samplers])
        results = [s.run(c, f"compare {s.est.name}", progress if j < len(built) else False)
                   for j, (s, c) in enumerate(zip(samplers, counts, strict=True))]
        t_sample = {"compile_seconds": round(compile_seconds, 2),
                    "sampling_seconds": round(time.perf_counter() - t_sample, 2)}
    by_role = {role: results[len(built) + i][0] for i, (role, _) in enumerate(extra)}
    ref = _reference_from_rows(
        np.concatenate([pilot_rows[chosen], by_role["reference"]])[:, 0], chosen, per_batch,
        horizon, reason)
    ref_check = {}
    cross = None
    if other:
        cross = np.concatenate([pilot_rows[other], by_role["cross-check"]])[:, 0]
        ref_check = _reference_check(cross, ref, other)
    stats = [_estimator_stats(n, est, rows, steps, secs, ref, budget, m)
             for n, est, (rows, steps, secs), m in zip(names, built, results, per_rep,
                                                       strict=False)]
    smoothing = {n: e.smoothing for n, e in zip(names, built, strict=True)}
    null_rows = results[null_in][0] if null_in is not None else by_role["null"]
    against = ref.rows if chosen == null_kind else cross
    null_check = _null_check(null_rows[:, 0], against, null_kind,
                             "the reference" if chosen == null_kind else "the cross-check")
    ranking = rank({s.name: s.mse_at_budget for s in stats})
    text, recommended = _recommend(stats, ranking, ref, null_check, ref_check)
    comp = Comparison(
        system=system.describe(), horizon=horizon, budget=budget, reference=ref.description,
        reference_norm=ref.norm, reference_se=ref.se, reference_se_upper=ref.se_upper,
        reference_samples=ref.samples, stats=stats, ranking=ranking.order, tied=ranking.tied,
        recommendation=text, notes=_notes(stats, ref, target, sigma, smoothing),
        run=provenance(key),
        precision=precision_info(np.asarray(jax.tree_util.tree_leaves(theta)[0]).dtype),
        seconds=time.perf_counter() - t0, time_budget=seconds, target=target,
        target_description=_target_text(target, sigma), null_check=null_check,
        reference_check=ref_check, recommended=recommended, timing=t_sample or {})
    if out is not None:
        comp.save(out)
    return comp


def _target_text(target: str, sigma: float) -> str:
    if target == "exact":
        return "exact: ∇_θ E_key L_T(θ; key), the gradient of the expected meta-loss"
    return (f"smoothed: ∇_θ E_key E_ε L_T(θ + ε; key), ε ~ N(0, σ²I), σ = {sigma:g} (what ES, "
            "NRES and PES estimate; backprop runs at θ ± σε)")


def _reference_kinds(target: str, reference: str) -> tuple[list[str], str | None, str]:
    """The reference kinds to sample and the chosen one (None: choose after the pilot)."""
    if target == "exact":
        if reference not in ("auto", "backprop"):
            raise InputError(f"reference {reference!r} does not estimate the exact target; "
                             "use 'auto' or 'backprop' (or --target smoothed)")
        return ["backprop"], "backprop", "the exact target's unbiased estimator"
    ref = "reparam" if reference == "backprop" else reference
    if ref not in ("auto", "reparam", "es"):
        raise InputError(f"reference {reference!r} is not accepted: use 'auto', 'reparam' "
                         "(or 'backprop'), 'es'")
    return ["reparam", "es"], (None if ref == "auto" else ref), "asked for"


def _choose_reference(pilot_rows: dict, seconds: dict) -> tuple[str, str]:
    """The reference kind with the least variance per second of sampling, measured on the
    pilot batches across run keys at T (both kinds are unbiased for the smoothed target)."""
    score, parts = {}, []
    for k, rows in pilot_rows.items():
        g = rows[:, 0]
        ok = np.all(np.isfinite(g), axis=1)
        var = float(np.sum(g[ok].var(axis=0, ddof=1))) if ok.sum() >= 2 else math.inf
        score[k] = var * seconds[k] if ok.all() else math.inf
        parts.append(f"{k} {var:.3g} per batch, {seconds[k]:.2g} s")
    best = min(score, key=lambda k: (score[k], k != "reparam"))
    return best, (f"auto: the least variance per second across run keys at T ({'; '.join(parts)}"
                  f"; {PILOT} batches each)")


def _reference_check(cross: np.ndarray, ref: Reference, other: str) -> dict:
    """The other unbiased kind against the reference: they estimate the same gradient, so
    a resolved difference says one of them is not what it claims (or a tail was missed)."""
    ok = np.all(np.isfinite(cross), axis=1)
    t = bias_test(cross[ok], ref.rows)
    se = math.sqrt(float(np.sum(cross[ok].var(axis=0, ddof=1))) / max(ok.sum(), 1))
    return {"kind": other, "batches": int(ok.sum()), "difference": t.interval.to_json(),
            "p_value": t.p_value, "agree": not t.resolved, "se": se,
            "precise": bool(se < 0.2 * ref.norm and ref.se < 0.2 * ref.norm)}


def _null_check(a: np.ndarray, b: np.ndarray, kind: str, against: str) -> dict:
    """An unbiased estimator against an independent sample of itself: its bias must not be
    resolved (at 95%, one such check in twenty resolves by chance)."""
    a = a[np.all(np.isfinite(a), axis=1)]
    b = b[np.all(np.isfinite(b), axis=1)]
    t: BiasTest = bias_test(a, b)
    if not t.interval.finite:
        return {"estimator": kind, "against": against, "resolved": False,
                "sentence": f"not run ({len(a)} and {len(b)} finite samples)"}
    verdict = ("RESOLVED — the intervals here are not to be trusted" if t.resolved
               else "not resolved, as it should not be")
    return {"estimator": kind, "against": against, "bias": t.interval.to_json(),
            "p_value": t.p_value, "resolved": t.resolved, "groups": t.groups,
            "sentence": f"{kind} against an independent sample of itself ({against}): bias "
                        f"{t.interval.fmt()} (p = {t.p_value:.2g}), {verdict}"}


def _allocate(seconds_of: list[float], ref_seconds: float, samples: int, ref_batches: int,
              seconds: float | None) -> tuple[list[int], int]:
    """Replicates per estimator and reference batches that fit ``seconds`` of sampling (from
    each one's timed replicate): half to the reference, whose noise limits every bias, half
    shared by the estimators; at most what was asked, at least `MIN_SAMPLES`."""
    if seconds is None:
        return [samples] * len(seconds_of), ref_batches
    share = 0.5 * float(seconds) / max(len(seconds_of), 1)
    counts = [int(min(samples, max(MIN_SAMPLES, share // max(s, 1e-9)))) for s in seconds_of]
    n_ref = int(min(ref_batches, max(MIN_SAMPLES, 0.5 * seconds // max(ref_seconds, 1e-9))))
    return counts, n_ref


def _estimator_stats(name, est, rows, steps, secs, ref: Reference, budget,
                     per_rep: int) -> EstimatorStats:
    means, firsts = rows[:, 0], rows[:, 1]
    ok = np.all(np.isfinite(means), axis=1)
    good = means[ok]
    n = len(good)
    nan = Interval(math.nan, math.nan, math.nan, method="too few finite replicates")
    base = {"estimator": est.name, "target": est.target, "per_replicate": per_rep,
            "traits": est.traits()}
    if n < 4:
        return EstimatorStats(name, dict(est.params), len(means), n, steps, secs, nan,
                              "upper bound", 0, nan, nan, nan, nan, int((~ok).sum()), **base)
    test = bias_test(good, ref.rows)
    bias = test.interval
    variance, _ = trace_variance_interval(firsts[ok])
    v_rep, _ = trace_variance_interval(good)
    veff = Interval(v_rep.value * per_rep, v_rep.low * per_rep, v_rep.high * per_rep,
                    method=f"{per_rep} × tr Cov of a replicate mean; {v_rep.method}")
    share = steps / budget
    mse = Interval(bias.value**2 + veff.value * share, bias.low**2 + veff.low * share,
                   bias.high**2 + veff.high * share, method="bias² + variance_eff·steps/budget")
    norm = ref.norm
    rel = (Interval(math.sqrt(mse.value) / norm, math.sqrt(mse.low) / norm,
                    math.sqrt(mse.high) / norm, method="sqrt(MSE)/‖g*‖")
           if norm > 0 else Interval(math.inf, math.inf, math.inf, method="‖g*‖ = 0"))
    own = v_rep.value / n  # squared standard error of the estimator's mean
    ref_noise = float(np.sum(ref.var_of_mean))
    if test.resolved:
        status, needed = "resolved", 0
    elif ref_noise > own and ref_noise > 0:
        status = "reference too noisy"
        needed = samples_needed(ref.samples, math.sqrt(ref_noise), math.sqrt(max(own, 1e-300)))
    else:
        status, needed = "upper bound", 0
    tail = tail_table(np.linalg.norm(good, axis=1)[None])
    dom, share, limit = dominated(good)
    tails = {"median_norm": tail["median"][0], "max_norm": tail["max"][0],
             f"beyond_{TAIL_MULTIPLE:g}x_median": tail["beyond"][0],
             "dominated": dom, "largest_share": share, "gaussian_limit": limit}
    return EstimatorStats(name, dict(est.params), len(means), n, steps, secs, bias, status,
                          needed, variance, veff, mse, rel, int((~ok).sum()),
                          bias_p=test.p_value, tails=tails, mean_grad=good.mean(axis=0),
                          **base)


def _notes(stats: list[EstimatorStats], ref: Reference, target: str, sigma: float,
           smoothing: dict | None = None) -> list[str]:
    notes = []
    noisy = [s for s in stats if s.bias_status == "reference too noisy"]
    if noisy:
        need = max(s.reference_samples_needed for s in noisy)
        notes.append(
            f"the reference is too noisy for {', '.join(s.name for s in noisy)}: its noise "
            "exceeds theirs "
            f"(its standard error is {ref.se:.2g}, at most {ref.se_upper:.2g}); about "
            f"{count_text(need)} reference samples ({count_text(max(need - ref.samples, 0))} "
            "more) would make it the smaller part")
    if target == "smoothed" and any(s.name == "backprop" for s in stats):
        notes.append(f"backprop runs at θ ± σε (σ = {sigma:g}, antithetic): the "
                     "reparameterisation gradient of the smoothed target")
    small = [s.name for s in stats if ref.batches < REFERENCE_FACTOR * s.effective_samples]
    if small:
        notes.append(f"the reference has {ref.batches} batches, fewer than "
                      f"{REFERENCE_FACTOR} × the replicates of {', '.join(small)} (the time "
                      "budget cut it): raise --seconds for a reference that dominates less")
    own = {s.name: s.target for s in stats}
    if target == "exact":
        smoothed = [n for n, t in own.items() if t.startswith("smoothed")]
        if smoothed:
            notes.append(f"the target is the exact gradient: {', '.join(smoothed)} estimate "
                         "the gradient of the Gaussian-smoothed loss, so their bias here "
                         "includes the smoothing")
    if target == "smoothed":
        exact = [n for n, t in own.items() if t == "exact"]
        if exact:
            notes.append(f"the target is the smoothed gradient: {', '.join(exact)} "
                         f"{_verb(exact, 'estimates', 'estimate')} the exact one, so "
                         f"{_verb(exact, 'its', 'their')} bias here includes the smoothing")
    per_trunc = [n for n, t in own.items() if t == "smoothed per truncation"]
    if per_trunc and target == "smoothed":
        notes.append(f"{', '.join(per_trunc)} {_verb(per_trunc, 'smooths', 'smooth')} each "
                     "truncation separately: its own target differs from the stated one by "
                     "O(σ²) where the loss is smooth; that difference is part of the bias shown "
                     "(not measured apart)")
    truncated = [n for n, t in own.items() if t == "truncated"]
    if truncated:
        notes.append(f"{', '.join(truncated)} {_verb(truncated, 'is', 'are')} unbiased only for "
                     "the truncated gradient")
    other_sigma = [f"{n} (σ = {(smoothing or {})[n]:g})" for n, t in own.items()
                   if target == "smoothed" and t.startswith("smoothed")
                   and not math.isclose((smoothing or {}).get(n, sigma), sigma)]
    if other_sigma:
        notes.append(f"{', '.join(other_sigma)} {_verb(other_sigma, 'smooths', 'smooth')} with "
                     f"another σ than the target's ({sigma:g}): the difference is part of the "
                     "bias shown")
    unstated = [n for n, t in own.items() if t == "none"]
    if unstated:
        notes.append(f"{', '.join(unstated)} {_verb(unstated, 'states', 'state')} no target "
                     "gradient: its bias against the stated one is measured, not assumed zero")
    for s in stats:
        if not s.bias.low > 0 and np.isfinite(s.bias.high):
            notes.append(f"{s.name}: no bias resolved from zero; bias < {s.bias.high:.3g}")
        if s.nonfinite:
            notes.append(f"{s.name}: {s.nonfinite} of {s.samples} replicates non-finite "
                         "(left out of its statistics)")
        if s.tails.get("dominated"):
            notes.append(f"{s.name}: one replicate carries {s.tails['largest_share']:.0%} of "
                         "the spread, more than Gaussian replicates reach once in a thousand "
                         f"({s.tails['gaussian_limit']:.0%}; largest norm "
                         f"{s.tails['max_norm']:.3g}, median {s.tails['median_norm']:.3g}): "
                         "a heavy tail, its mean is not trusted")
    return notes


def _verb(names: list, one: str, many: str) -> str:
    return one if len(names) == 1 else many


def _recommend(stats: list[EstimatorStats], ranking: Ranking, ref: Reference, null: dict,
               ref_check: dict) -> tuple[str, str | None]:
    """The recommendation sentence and the recommended name (None: no recommendation)."""
    by = {s.name: s for s in stats}
    best = by[ranking.order[0]]
    if not np.isfinite(best.mse_at_budget.value):
        return ("No estimator gave finite gradients: shorten the horizon or check the "
                "system."), None
    blocked = []
    if ref.norm > 0 and ref.se_upper >= ref.norm:
        blocked.append(f"the reference's standard error (at most {ref.se_upper:.2g} at 95%) "
                       f"is as large as ‖g*‖ = {ref.norm:.3g}")
    if null.get("resolved"):
        blocked.append("the null check resolved a bias of an estimator against itself")
    if ref_check and not ref_check.get("agree", True):
        blocked.append(f"the {ref_check['kind']} cross-check disagrees with the reference "
                       f"(p = {ref_check['p_value']:.2g})")
    heavy = [s.name for s in stats if s.tails.get("dominated") and s.name in ranking.tied]
    if dominated(ref.rows)[0]:
        heavy.append("the reference")
    if heavy:
        blocked.append(f"the mean of {', '.join(heavy)} is dominated by one sample")
    if blocked:
        return (f"No recommendation: {'; '.join(blocked)}. Best point estimate: {best.name} "
                f"({best.relative_error.fmt('.2g')} relative RMS error)."), None
    why = ("bias-dominated" if best.bias.value**2 > best.mse_at_budget.value / 2
           else "variance-dominated")
    if not ranking.separated:
        return (f"Tie at 95%: {', '.join(ranking.tied)} — their errors at the budget overlap "
                f"(best point estimate: {best.name}, {best.relative_error.fmt('.2g')} "
                "relative RMS error). Collect more replicates to separate them."), None
    text = (f"Use {best.name}: the least error for the compute, separated from the rest at "
            f"95% ({best.relative_error.fmt('.2g')} relative RMS error at the budget, {why}).")
    if len(ranking.order) > 1:
        second = by[ranking.order[1]]
        if np.isfinite(second.mse_at_budget.value) and best.mse_at_budget.value > 0:
            ratio = second.mse_at_budget.value / best.mse_at_budget.value
            text += f" Next: {second.name}, {ratio:.3g}x its squared error."
    return text, best.name

