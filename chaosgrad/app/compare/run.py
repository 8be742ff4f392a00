"""`compare` itself: inputs checked, a pilot, the reference chosen and sampled, every
estimator sampled, statistics, notes and the recommendation gathered into a `Comparison`;
and `reference_gradient`, the reference alone.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import jax
import numpy as np

from chaosgrad import distributed, estimators
from chaosgrad.app.compare.records import Comparison, Reference
from chaosgrad.app.compare.report import _notes, _recommend, _target_text
from chaosgrad.app.compare.sampling import (
    MIN_SAMPLES,
    PILOT,
    REFERENCE_FACTOR,
    PyTree,
    _choose_reference,
    _estimator_params,
    _Jobs,
    _reference_sampler,
    _Sampler,
    make_estimator,
)
from chaosgrad.app.compare.statistics import (
    _estimator_stats,
    _null_check,
    _reference_check,
    _reference_from_rows,
)
from chaosgrad.checks import check_positive_int
from chaosgrad.config import precision_info, provenance
from chaosgrad.errors import InputError
from chaosgrad.estimators import Estimator
from chaosgrad.stats import (
    rank,
)
from chaosgrad.system import System, default_key, resolve_theta

DEFAULT_ESTIMATORS = ("backprop", "tbptt", "es", "pes")
TARGETS = ("smoothed", "exact")


def reference_gradient(
    system: System,
    theta: PyTree,
    horizon: int,
    *,
    kind: str,
    key: jax.Array,
    batches: int = 32,
    per_batch: int = 32,
    sigma: float = 0.01,
    sampler: _Sampler | None = None,
) -> Reference:
    """A reference gradient g* with its standard error, from ``batches`` independent batches.

    ``kind="reparam"``: backprop at θ ± σε (unbiased for the gradient of the Gaussian-smoothed
    meta-loss, the default target); ``kind="es"``: antithetic ES over whole unrolls (the same
    target, with a variance bounded by the loss's spread); ``kind="backprop"``: the mean of
    exact gradients (the gradient of the expected meta-loss, the "exact" target). Batches
    with a non-finite gradient are left out (and must not be more than half).
    """
    sampler = sampler or _reference_sampler(system, theta, horizon, kind, key, per_batch, sigma)
    rows, _, _ = sampler.run(batches, f"reference ({kind})", False)
    return _reference_from_rows(rows[:, 0], kind, per_batch, horizon)


def _check_inputs(asked, horizon, samples, budget, target) -> list[tuple[str, Any]]:
    """(label, what) for each estimator asked for: a registry name or ``"module:function"``
    (resolved, unknown names refused here) or an `Estimator` object (checked)."""
    if not asked:
        raise InputError(
            "name at least one estimator; accepted: "
            + ", ".join(estimators.names())
            + ", module:function, or an "
            "Estimator object"
        )
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
    check_positive_int(horizon, "horizon")
    if samples < MIN_SAMPLES:
        raise InputError(
            f"samples must be at least {MIN_SAMPLES} (independent replicates: the "
            f"bias test needs them), got {samples}"
        )
    if budget is not None and budget <= 0:
        raise InputError(f"budget must be a positive number of unroll steps, got {budget}")
    return [(n, a if not isinstance(a, str) else n) for n, a in entries]


def _check_windows(labels, built, horizon) -> None:
    """A windowed estimator's window K must fit in the horizon."""
    for name, est in zip(labels, built, strict=True):
        if est.windowed and not 1 <= int(est.params["window"]) <= horizon:
            raise InputError(
                f"window {est.params['window']} of {name} must be between 1 and "
                f"the horizon {horizon}"
            )


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
    entries = _check_inputs(
        _asked(estimators_ if estimators_ is not None else estimators),
        horizon,
        int(samples),
        budget,
        target,
    )
    names = [n for n, _ in entries]
    key = default_key(key)
    samples = int(samples)
    common = {
        "samples": population,
        "particles": population,
        "pairs": population,
        "sigma": sigma,
        "window": window,
        "horizon": horizon,
    }
    split = distributed.process_count() > 1
    local = distributed.local_only if split else contextlib.nullcontext
    built = _build(system, entries, common, params, target, split, local)
    _check_windows(names, built, horizon)
    kinds, chosen, reason = _reference_kinds(target, reference)
    jobs = _Jobs(
        system=system,
        theta=theta,
        key=key,
        horizon=horizon,
        sigma=sigma,
        samples=samples,
        seconds=seconds,
        built=built,
        per_rep=[_replicate_length(e, horizon, window) for e in built],
        budget=int(budget or samples * population * horizon),
        per_batch=int(reference_per_batch or population),
        n_ref=max(int(reference_batches or REFERENCE_FACTOR * samples), PILOT + 2),
    )
    with local():
        jobs.run_pilots(kinds)
    if chosen is None:
        chosen, reason = _choose_reference(
            jobs.pilot_rows, {k: s.seconds for k, s in jobs.pilots.items()}
        )
    other = next((k for k in kinds if k != chosen), None)
    null_kind = "backprop" if target == "exact" else "reparam"
    # backprop asked for by name is already a sample of the null kind
    null_in = next(
        (i for i, (n, what) in enumerate(entries) if n == "backprop" and isinstance(what, str)),
        None,
    )
    # jobs: the estimators, the reference, the cross-check, a null sample when backprop was
    # not asked for
    jobs.extra = [
        ("reference", chosen),
        *([("cross-check", other)] if other else []),
        *([("null", null_kind)] if null_in is None else []),
    ]
    sampled = jobs.sample(split, progress)
    if sampled is None:
        return None  # process 0 reports
    results, t_sample = sampled
    comp = _judge(
        jobs,
        names,
        results,
        t_sample,
        chosen=chosen,
        reason=reason,
        other=other,
        null_kind=null_kind,
        null_in=null_in,
        target=target,
        t0=t0,
    )
    if out is not None:
        comp.save(out)
    return comp


def _asked(asked) -> list:
    """The estimators asked for, as a list: a comma-separated string of names is split, and
    one `Estimator` object is a list of one."""
    if isinstance(asked, str):  # "backprop,es,mymod:make"
        asked = [n.strip() for n in asked.split(",") if n.strip()]
    return [asked] if isinstance(asked, Estimator) else list(asked)


def _build(system, entries, common, params, target, split, local) -> list:
    """Each estimator built for ``system`` with compare's settings (an `Estimator` object
    given by the caller is used as built), inside ``local`` (one process's devices)."""
    if split and any(not isinstance(what, str) for _, what in entries):
        # each estimator is sampled by one process alone: it must be built inside
        # `distributed.local_only`, which an object built by the caller was not
        raise InputError(
            "under a multi-process launch give compare's estimators by name or "
            "module:function (each is then built for the process that samples "
            "it), not as Estimator objects"
        )
    with local():
        built = []
        for n, what in entries:
            if not isinstance(what, str):
                if n in (params or {}):
                    raise InputError(
                        f"estimator {n!r} was given as an Estimator object, "
                        "used as built: give its settings when building it, "
                        "not in params"
                    )
                built.append(what)  # the user's own object, as built
                continue
            runner = _runner(n, target)
            overrides = (params or {}).get(n)
            built.append(
                make_estimator(runner, system, **_estimator_params(runner, common, overrides))
            )
    return built


def _judge(
    jobs: _Jobs,
    names: list,
    results: list,
    timing: dict,
    *,
    chosen: str,
    reason: str,
    other: str | None,
    null_kind: str,
    null_in: int | None,
    target: str,
    t0: float,
) -> Comparison:
    """The reference from its rows, each estimator's statistics against it, the cross and
    null checks, the ranking and the recommendation, as a `Comparison` (``t0``: when compare
    started)."""
    built, sigma = jobs.built, jobs.sigma
    by_role = {role: results[len(built) + i][0] for i, (role, _) in enumerate(jobs.extra)}
    ref = _reference_from_rows(
        np.concatenate([jobs.pilot_rows[chosen], by_role["reference"]])[:, 0],
        chosen,
        jobs.per_batch,
        jobs.horizon,
        reason,
    )
    ref_check = {}
    cross = None
    if other:
        cross = np.concatenate([jobs.pilot_rows[other], by_role["cross-check"]])[:, 0]
        ref_check = _reference_check(cross, ref, other)
    stats = [
        _estimator_stats(n, est, rows, steps, secs, ref, jobs.budget, m)
        for n, est, (rows, steps, secs), m in zip(names, built, results, jobs.per_rep, strict=False)
    ]
    smoothing = {n: e.smoothing for n, e in zip(names, built, strict=True)}
    null_rows = results[null_in][0] if null_in is not None else by_role["null"]
    against = ref.rows if chosen == null_kind else cross
    null_check = _null_check(
        null_rows[:, 0],
        against,
        null_kind,
        "the reference" if chosen == null_kind else "the cross-check",
    )
    ranking = rank({s.name: s.mse_at_budget for s in stats})
    text, recommended = _recommend(stats, ranking, ref, null_check, ref_check)
    return Comparison(
        system=jobs.system.describe(),
        horizon=jobs.horizon,
        budget=jobs.budget,
        reference=ref.description,
        reference_norm=ref.norm,
        reference_se=ref.se,
        reference_se_upper=ref.se_upper,
        reference_samples=ref.samples,
        stats=stats,
        ranking=ranking.order,
        tied=ranking.tied,
        recommendation=text,
        notes=_notes(stats, ref, target, sigma, smoothing),
        run=provenance(jobs.key),
        precision=precision_info(np.asarray(jax.tree_util.tree_leaves(jobs.theta)[0]).dtype),
        seconds=time.perf_counter() - t0,
        time_budget=jobs.seconds,
        target=target,
        target_description=_target_text(target, sigma),
        null_check=null_check,
        reference_check=ref_check,
        recommended=recommended,
        timing=timing,
    )


def _reference_kinds(target: str, reference: str) -> tuple[list[str], str | None, str]:
    """The reference kinds to sample and the chosen one (None: choose after the pilot)."""
    if target == "exact":
        if reference not in ("auto", "backprop"):
            raise InputError(
                f"reference {reference!r} does not estimate the exact target; "
                "use 'auto' or 'backprop' (or --target smoothed)"
            )
        return ["backprop"], "backprop", "the exact target's unbiased estimator"
    ref = "reparam" if reference == "backprop" else reference
    if ref not in ("auto", "reparam", "es"):
        raise InputError(
            f"reference {reference!r} is not accepted: use 'auto', 'reparam' (or 'backprop'), 'es'"
        )
    return ["reparam", "es"], (None if ref == "auto" else ref), "asked for"
