"""The records of a comparison: `EstimatorStats` per estimator, the `Reference`, and
`Comparison` with its JSON, terminal text and figure (`save`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import chi2 as _chi2

from chaosgrad.io import write_json
from chaosgrad.plots import plot_comparison, save
from chaosgrad.stats import (
    Interval,
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
    mean_grad: np.ndarray = field(repr=False, default=None)
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
