"""What a comparison found: the records (`EstimatorStats` per estimator, the `Reference`,
`Comparison` with its JSON, text and figure), the statistics that fill them (each
estimator's bias, variance and cost against the reference; the reference and null checks),
and the report's words (notes and the recommendation).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import chi2 as _chi2

from chaosgrad.app.compare.sampling import (
    REFERENCE_FACTOR,
)
from chaosgrad.diagnose import TAIL_MULTIPLE, tail_table
from chaosgrad.errors import InputError
from chaosgrad.io import count_text, write_json
from chaosgrad.plots import plot_comparison, save
from chaosgrad.stats import (
    BiasTest,
    Interval,
    Ranking,
    bias_test,
    dominated,
    samples_needed,
    trace_variance_interval,
)


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
    mean_grad: np.ndarray = field(repr=False, default=None)  # type: ignore[arg-type]  # filled in by compare
    traits: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-friendly dict (intervals as value/low/high)."""
        return {
            "name": self.name,
            "estimator": self.estimator,
            "target": self.target,
            "traits": self.traits,
            "params": self.params,
            "samples": self.samples,
            "per_replicate": self.per_replicate,
            "effective_samples": self.effective_samples,
            "steps": self.steps,
            "seconds": self.seconds,
            "bias": self.bias.to_json(),
            "bias_p": self.bias_p,
            "bias_status": self.bias_status,
            "reference_samples_needed": self.reference_samples_needed,
            "variance": self.variance.to_json(),
            "variance_eff": self.variance_eff.to_json(),
            "mse_at_budget": self.mse_at_budget.to_json(),
            "relative_error": self.relative_error.to_json(),
            "nonfinite": self.nonfinite,
            "tails": self.tails,
        }


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
    rows: np.ndarray = field(repr=False, default=None)  # type: ignore[arg-type]  # filled in by compare

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
        return self.se * math.sqrt((self.batches - 1) / float(_chi2.ppf(0.025, self.batches - 1)))

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
            "system": self.system,
            "horizon": self.horizon,
            "budget": self.budget,
            "intervals": "95%",
            "target": self.target,
            "target_description": self.target_description,
            "reference": self.reference,
            "reference_norm": self.reference_norm,
            "reference_se": self.reference_se,
            "reference_se_upper": self.reference_se_upper,
            "reference_samples": self.reference_samples,
            "reference_check": self.reference_check,
            "null_check": self.null_check,
            "estimators": [s.to_json() for s in self.stats],
            "ranking": self.ranking,
            "tied": self.tied,
            "recommended": self.recommended,
            "recommendation": self.recommendation,
            "notes": self.notes,
            "precision": self.precision,
            "figures": self.figures,
            "seconds": round(self.seconds, 2),
            "time_budget": self.time_budget,
            "timing": self.timing,
            "run": self.run,
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
            if self.reference_norm > 0
            else f"reference: {self.reference}, ‖g*‖ = 0",
            f"{'estimator':<10}{'steps/est':>10}{'s/rep':>9}  {'bias':<29}{'variance':<32}"
            f"{'rel. RMS error @budget':<27}{'NaN':>4}",
        ]
        for name in self.ranking:
            s = next(x for x in self.stats if x.name == name)
            b = f"< {s.bias.high:.3g}" if not s.bias.low > 0 else s.bias.fmt()
            if s.bias_status == "reference too noisy":
                b += " (ref!)"
            lines.append(
                f"{s.name:<10}{s.steps:>10.0f}{s.seconds:>9.2e}  {b:<29}"
                f"{s.variance.fmt():<32}{s.relative_error.fmt():<27}{s.nonfinite:>4}"
            )
        if self.reference_check:
            rc = self.reference_check
            d = rc["difference"]
            lines.append(
                f"cross-check: {rc['kind']} ({rc['batches']} batches) against the "
                f"reference: difference {d['value']:.3g} [{d['low']:.3g}, "
                f"{d['high']:.3g}] (p = {rc['p_value']:.2g}), "
                + ("they agree" if rc["agree"] else "they DISAGREE")
            )
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


def _reference_from_rows(
    rows: np.ndarray, kind: str, per_batch: int, horizon: int, note: str = ""
) -> Reference:
    """A `Reference` from independent batch estimates (rows: (batches, d)); batches with a
    non-finite gradient are left out (and must not be more than half)."""
    ok = np.all(np.isfinite(rows), axis=1)
    good = rows[ok]
    if len(good) < max(2, len(rows) // 2):
        raise InputError(
            f"the {kind} reference gradient is non-finite in {int((~ok).sum())} of "
            f"{len(ok)} batches: the system diverges at T = {horizon}"
        )
    unit = "runs" if kind == "backprop" else "pairs"
    what = {
        "es": "antithetic ES over whole unrolls",
        "reparam": "backprop at θ ± σε (reparameterisation, antithetic)",
        "backprop": "backprop",
    }[kind]
    desc = f"{kind}: {what}, {count_text(len(good) * per_batch)} {unit} in {len(good)} batches"
    return Reference(
        mean=good.mean(axis=0),
        var_of_mean=good.var(axis=0, ddof=1) / len(good),
        samples=len(good) * per_batch,
        kind=kind,
        description=desc + (f"; {note}" if note else ""),
        batches=len(good),
        rows=good,
    )


def _target_text(target: str, sigma: float) -> str:
    if target == "exact":
        return "exact: ∇_θ E_key L_T(θ; key), the gradient of the expected meta-loss"
    return (
        f"smoothed: ∇_θ E_key E_ε L_T(θ + ε; key), ε ~ N(0, σ²I), σ = {sigma:g} (what ES, "
        "NRES and PES estimate; backprop runs at θ ± σε)"
    )


def _reference_check(cross: np.ndarray, ref: Reference, other: str) -> dict:
    """The other unbiased kind against the reference: they estimate the same gradient, so
    a resolved difference says one of them is not what it claims (or a tail was missed)."""
    ok = np.all(np.isfinite(cross), axis=1)
    t = bias_test(cross[ok], ref.rows)
    se = math.sqrt(float(np.sum(cross[ok].var(axis=0, ddof=1))) / max(ok.sum(), 1))
    return {
        "kind": other,
        "batches": int(ok.sum()),
        "difference": t.interval.to_json(),
        "p_value": t.p_value,
        "agree": not t.resolved,
        "se": se,
        "precise": bool(se < 0.2 * ref.norm and ref.se < 0.2 * ref.norm),
    }


def _null_check(a: np.ndarray, b: np.ndarray, kind: str, against: str) -> dict:
    """An unbiased estimator against an independent sample of itself: its bias must not be
    resolved (at 95%, one such check in twenty resolves by chance)."""
    a = a[np.all(np.isfinite(a), axis=1)]
    b = b[np.all(np.isfinite(b), axis=1)]
    t: BiasTest = bias_test(a, b)
    if not t.interval.finite:
        return {
            "estimator": kind,
            "against": against,
            "resolved": False,
            "sentence": f"not run ({len(a)} and {len(b)} finite samples)",
        }
    verdict = (
        "RESOLVED — the intervals here are not to be trusted"
        if t.resolved
        else "not resolved, as it should not be"
    )
    return {
        "estimator": kind,
        "against": against,
        "bias": t.interval.to_json(),
        "p_value": t.p_value,
        "resolved": t.resolved,
        "groups": t.groups,
        "sentence": f"{kind} against an independent sample of itself ({against}): bias "
        f"{t.interval.fmt()} (p = {t.p_value:.2g}), {verdict}",
    }


def _estimator_stats(
    name, est, rows, steps, secs, ref: Reference, budget, per_rep: int
) -> EstimatorStats:
    means, firsts = rows[:, 0], rows[:, 1]
    ok = np.all(np.isfinite(means), axis=1)
    good = means[ok]
    n = len(good)
    nan = Interval(math.nan, math.nan, math.nan, method="too few finite replicates")
    base = {
        "estimator": est.name,
        "target": est.target,
        "per_replicate": per_rep,
        "traits": est.traits(),
    }
    if n < 4:
        return EstimatorStats(
            name,
            dict(est.params),
            len(means),
            n,
            steps,
            secs,
            nan,
            "upper bound",
            0,
            nan,
            nan,
            nan,
            nan,
            int((~ok).sum()),
            **base,
        )
    test = bias_test(good, ref.rows)
    bias = test.interval
    variance, _ = trace_variance_interval(firsts[ok])
    v_rep, _ = trace_variance_interval(good)
    veff = Interval(
        v_rep.value * per_rep,
        v_rep.low * per_rep,
        v_rep.high * per_rep,
        method=f"{per_rep} × tr Cov of a replicate mean; {v_rep.method}",
    )
    share = steps / budget
    mse = Interval(
        bias.value**2 + veff.value * share,
        bias.low**2 + veff.low * share,
        bias.high**2 + veff.high * share,
        method="bias² + variance_eff·steps/budget",
    )
    norm = ref.norm
    rel = (
        Interval(
            math.sqrt(mse.value) / norm,
            math.sqrt(mse.low) / norm,
            math.sqrt(mse.high) / norm,
            method="sqrt(MSE)/‖g*‖",
        )
        if norm > 0
        else Interval(math.inf, math.inf, math.inf, method="‖g*‖ = 0")
    )
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
    tails = {
        "median_norm": tail["median"][0],
        "max_norm": tail["max"][0],
        f"beyond_{TAIL_MULTIPLE:g}x_median": tail["beyond"][0],
        "dominated": dom,
        "largest_share": share,
        "gaussian_limit": limit,
    }
    return EstimatorStats(
        name,
        dict(est.params),
        len(means),
        n,
        steps,
        secs,
        bias,
        status,
        needed,
        variance,
        veff,
        mse,
        rel,
        int((~ok).sum()),
        bias_p=test.p_value,
        tails=tails,
        mean_grad=good.mean(axis=0),
        **base,
    )


def _notes(
    stats: list[EstimatorStats],
    ref: Reference,
    target: str,
    sigma: float,
    smoothing: dict | None = None,
) -> list[str]:
    notes = []
    noisy = [s for s in stats if s.bias_status == "reference too noisy"]
    if noisy:
        need = max(s.reference_samples_needed for s in noisy)
        notes.append(
            f"the reference is too noisy for {', '.join(s.name for s in noisy)}: its noise "
            "exceeds theirs "
            f"(its standard error is {ref.se:.2g}, at most {ref.se_upper:.2g}); about "
            f"{count_text(need)} reference samples ({count_text(max(need - ref.samples, 0))} "
            "more) would make it the smaller part"
        )
    if target == "smoothed" and any(s.name == "backprop" for s in stats):
        notes.append(
            f"backprop runs at θ ± σε (σ = {sigma:g}, antithetic): the "
            "reparameterisation gradient of the smoothed target"
        )
    small = [s.name for s in stats if ref.batches < REFERENCE_FACTOR * s.effective_samples]
    if small:
        notes.append(
            f"the reference has {ref.batches} batches, fewer than "
            f"{REFERENCE_FACTOR} × the replicates of {', '.join(small)} (the time "
            "budget cut it): raise --seconds for a reference that dominates less"
        )
    own = {s.name: s.target for s in stats}
    if target == "exact":
        smoothed = [n for n, t in own.items() if t.startswith("smoothed")]
        if smoothed:
            notes.append(
                f"the target is the exact gradient: {', '.join(smoothed)} estimate "
                "the gradient of the Gaussian-smoothed loss, so their bias here "
                "includes the smoothing"
            )
    if target == "smoothed":
        exact = [n for n, t in own.items() if t == "exact"]
        if exact:
            notes.append(
                f"the target is the smoothed gradient: {', '.join(exact)} "
                f"{_verb(exact, 'estimates', 'estimate')} the exact one, so "
                f"{_verb(exact, 'its', 'their')} bias here includes the smoothing"
            )
    per_trunc = [n for n, t in own.items() if t == "smoothed per truncation"]
    if per_trunc and target == "smoothed":
        notes.append(
            f"{', '.join(per_trunc)} {_verb(per_trunc, 'smooths', 'smooth')} each "
            "truncation separately: its own target differs from the stated one by "
            "O(σ²) where the loss is smooth; that difference is part of the bias shown "
            "(not measured apart)"
        )
    truncated = [n for n, t in own.items() if t == "truncated"]
    if truncated:
        notes.append(
            f"{', '.join(truncated)} {_verb(truncated, 'is', 'are')} unbiased only for "
            "the truncated gradient"
        )
    other_sigma = [
        f"{n} (σ = {(smoothing or {})[n]:g})"
        for n, t in own.items()
        if target == "smoothed"
        and t.startswith("smoothed")
        and not math.isclose((smoothing or {}).get(n, sigma), sigma)
    ]
    if other_sigma:
        notes.append(
            f"{', '.join(other_sigma)} {_verb(other_sigma, 'smooths', 'smooth')} with "
            f"another σ than the target's ({sigma:g}): the difference is part of the "
            "bias shown"
        )
    unstated = [n for n, t in own.items() if t == "none"]
    if unstated:
        notes.append(
            f"{', '.join(unstated)} {_verb(unstated, 'states', 'state')} no target "
            "gradient: its bias against the stated one is measured, not assumed zero"
        )
    for s in stats:
        if not s.bias.low > 0 and np.isfinite(s.bias.high):
            notes.append(f"{s.name}: no bias resolved from zero; bias < {s.bias.high:.3g}")
        if s.nonfinite:
            notes.append(
                f"{s.name}: {s.nonfinite} of {s.samples} replicates non-finite "
                "(left out of its statistics)"
            )
        if s.tails.get("dominated"):
            notes.append(
                f"{s.name}: one replicate carries {s.tails['largest_share']:.0%} of "
                "the spread, more than Gaussian replicates reach once in a thousand "
                f"({s.tails['gaussian_limit']:.0%}; largest norm "
                f"{s.tails['max_norm']:.3g}, median {s.tails['median_norm']:.3g}): "
                "a heavy tail, its mean is not trusted"
            )
    return notes


def _verb(names: list, one: str, many: str) -> str:
    return one if len(names) == 1 else many


def _recommend(
    stats: list[EstimatorStats], ranking: Ranking, ref: Reference, null: dict, ref_check: dict
) -> tuple[str, str | None]:
    """The recommendation sentence and the recommended name (None: no recommendation)."""
    by = {s.name: s for s in stats}
    best = by[ranking.order[0]]
    if not np.isfinite(best.mse_at_budget.value):
        return (
            "No estimator gave finite gradients: shorten the horizon or check the system."
        ), None
    blocked = []
    if ref.norm > 0 and ref.se_upper >= ref.norm:
        blocked.append(
            f"the reference's standard error (at most {ref.se_upper:.2g} at 95%) "
            f"is as large as ‖g*‖ = {ref.norm:.3g}"
        )
    if null.get("resolved"):
        blocked.append("the null check resolved a bias of an estimator against itself")
    if ref_check and not ref_check.get("agree", True):
        blocked.append(
            f"the {ref_check['kind']} cross-check disagrees with the reference "
            f"(p = {ref_check['p_value']:.2g})"
        )
    heavy = [s.name for s in stats if s.tails.get("dominated") and s.name in ranking.tied]
    if dominated(ref.rows)[0]:
        heavy.append("the reference")
    if heavy:
        blocked.append(f"the mean of {', '.join(heavy)} is dominated by one sample")
    if blocked:
        return (
            f"No recommendation: {'; '.join(blocked)}. Best point estimate: {best.name} "
            f"({best.relative_error.fmt('.2g')} relative RMS error)."
        ), None
    why = (
        "bias-dominated"
        if best.bias.value**2 > best.mse_at_budget.value / 2
        else "variance-dominated"
    )
    if not ranking.separated:
        return (
            f"Tie at 95%: {', '.join(ranking.tied)} — their errors at the budget overlap "
            f"(best point estimate: {best.name}, {best.relative_error.fmt('.2g')} "
            "relative RMS error). Collect more replicates to separate them."
        ), None
    text = (
        f"Use {best.name}: the least error for the compute, separated from the rest at "
        f"95% ({best.relative_error.fmt('.2g')} relative RMS error at the budget, {why})."
    )
    if len(ranking.order) > 1:
        second = by[ranking.order[1]]
        if np.isfinite(second.mse_at_budget.value) and best.mse_at_budget.value > 0:
            ratio = second.mse_at_budget.value / best.mse_at_budget.value
            text += f" Next: {second.name}, {ratio:.3g}x its squared error."
    return text, best.name
