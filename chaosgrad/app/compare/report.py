"""The words of a comparison's report: the target in a sentence, the notes and the
recommendation. The records (`chaosgrad.app.compare.records`) and their statistics
(`chaosgrad.app.compare.statistics`) stay importable from here.
"""

from __future__ import annotations

import math

import numpy as np

from chaosgrad.app.compare.records import (  # noqa: F401 -- re-exported
    Comparison,
    EstimatorStats,
    Reference,
)
from chaosgrad.app.compare.sampling import (
    REFERENCE_FACTOR,
)
from chaosgrad.app.compare.statistics import (  # noqa: F401 -- re-exported
    _estimator_stats,
    _null_check,
    _reference_check,
    _reference_from_rows,
)
from chaosgrad.io import count_text
from chaosgrad.stats import (
    Ranking,
    dominated,
)


def _target_text(target: str, sigma: float) -> str:
    if target == "exact":
        return "exact: ∇_θ E_key L_T(θ; key), the gradient of the expected meta-loss"
    return (
        f"smoothed: ∇_θ E_key E_ε L_T(θ + ε; key), ε ~ N(0, σ²I), σ = {sigma:g} (what ES, "
        "NRES and PES estimate; backprop runs at θ ± σε)"
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
