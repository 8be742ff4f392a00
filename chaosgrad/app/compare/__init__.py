"""`compare`: which gradient estimator to use on a system. Every estimator is judged against
one stated target gradient — by default that of the Gaussian-smoothed meta-loss, which ES,
NRES and PES estimate — through an independent reference of that target; bias, variance,
cost and the error at equal compute come from independent replicates (fresh populations and
keys), with intervals whose calibration is tested, and a null check on every comparison.

A package of five modules, one job each: `run` (`compare` and `reference_gradient`, in named
steps), `sampling` (building, drawing and timing replicates, across processes), `records`
(`EstimatorStats`, `Reference`, `Comparison` and its JSON, text and figure), `statistics`
(what fills them) and `report` (the report's words). Every name stays importable from here.
"""

from chaosgrad._types import PyTree  # noqa: F401 -- re-exported
from chaosgrad.app.compare.report import (  # noqa: F401 -- re-exported
    Comparison,
    EstimatorStats,
    Reference,
    _estimator_stats,
    _notes,
    _null_check,
    _recommend,
    _reference_check,
    _reference_from_rows,
    _target_text,
    _verb,
)
from chaosgrad.app.compare.run import (  # noqa: F401 -- re-exported
    DEFAULT_ESTIMATORS,
    TARGETS,
    _asked,
    _build,
    _check_inputs,
    _check_windows,
    _judge,
    _reference_kinds,
    _replicate_length,
    _runner,
    compare,
    reference_gradient,
)
from chaosgrad.app.compare.sampling import (  # noqa: F401 -- re-exported
    _BUILT,
    MIN_SAMPLES,
    PILOT,
    REFERENCE_FACTOR,
    SHARED_SETTINGS,
    _allocate,
    _choose_reference,
    _estimator_params,
    _flat,
    _Jobs,
    _reference_estimator,
    _reference_sampler,
    _Sampler,
    _split_sampling,
    make_estimator,
    release,
)
