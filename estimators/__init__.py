"""Gradient estimators of a system's meta-loss behind one protocol (`Estimator`), by name.

`make(name, system, **params)` builds one; `names()` lists them; `describe(name)` says what
each takes; `parse_params(name, ["k=v", ...])` types CLI parameters by their defaults.
"""

from __future__ import annotations

import inspect

from chaosgrad.estimators.backprop import backprop, reparam, truncated_backprop
from chaosgrad.estimators.base import TARGETS, Estimator, clip_by_global_norm
from chaosgrad.estimators.combine import combined, inverse_variance_combine
from chaosgrad.estimators.es import es, nres, pes, truncated_es

from chaosgrad.errors import InputError
from chaosgrad.params import check_number, nonfinite_allowed, parse_kv
from chaosgrad.system import System

_REGISTRY = {
    "backprop": (backprop, "exact backprop through whole T-step unrolls (rematerialised)"),
    "tbptt": (truncated_backprop, "truncated backprop, windows of K steps, persistent particles"),
    "es": (es, "antithetic ES over whole unrolls (gradient of the Gaussian-smoothed loss)"),
    "tes": (truncated_es, "truncated ES, windows of K steps, persistent particles"),
    "pes": (pes, "persistent ES: truncated ES with accumulated perturbations (unbiased)"),
    "nres": (nres, "noise-reuse ES: one perturbation per inner run, windows of K steps "
                   "(unbiased for the smoothed loss; variance not growing with truncations)"),
    "reparam": (reparam, "backprop at θ ± σε, antithetic: the reparameterisation gradient "
                         "of the Gaussian-smoothed loss"),
    "combined": (combined, "inverse-variance combination of backprop and ES (Metz et al. 2019)"),
}
_ALIASES = {"truncated_backprop": "tbptt", "truncated_es": "tes", "full_backprop": "backprop"}

__all__ = [
    "TARGETS",
    "Estimator",
    "backprop",
    "canonical_name",
    "clip_by_global_norm",
    "combined",
    "describe",
    "es",
    "inverse_variance_combine",
    "make",
    "names",
    "nres",
    "parse_params",
    "pes",
    "reparam",
    "truncated_backprop",
    "truncated_es",
]


def names() -> list[str]:
    """Names of the registered estimators."""
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registry name of estimator ``name`` (aliases resolved); InputError if unknown."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise InputError(f"unknown estimator {name!r}; accepted: {', '.join(names())}")
    return key


def _factory(name: str):
    key = canonical_name(name)
    return key, _REGISTRY[key][0]


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters estimator ``name`` takes (beside the system), plus clip_norm."""
    _, f = _factory(name)
    params = dict(list(inspect.signature(f).parameters.items())[1:])
    params["clip_norm"] = inspect.Parameter("clip_norm", inspect.Parameter.KEYWORD_ONLY,
                                            default=0.0)
    return params


def describe(name: str) -> dict:
    """What estimator ``name`` is and its parameters with their defaults."""
    key, _ = _factory(name)
    return {"name": key, "description": _REGISTRY[key][1],
            "params": {k: p.default for k, p in parameters(name).items()}}


def make(name: str, system: System, **params) -> Estimator:
    """Build estimator ``name`` for ``system`` with ``params`` (see `describe`).

    ``clip_norm > 0`` wraps it in `clip_by_global_norm`. Raises InputError for an unknown
    estimator or parameter.
    """
    if not isinstance(system, System):
        raise InputError(f"make({name!r}, system, ...) needs a chaosgrad.System, "
                         f"got {type(system).__name__}")
    _, f = _factory(name)
    accepted = parameters(name)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise InputError(f"estimator {name!r} has no parameter {', '.join(map(repr, unknown))};"
                         f" accepted: {', '.join(accepted)}")
    clip = check_number(params.pop("clip_norm", 0.0), "estimator clip_norm (0: no clipping)",
                        nonneg=True)
    est = f(system, **params)
    return clip_by_global_norm(est, clip) if clip > 0 else est


def parse_params(name: str, items: list[str] | None) -> dict:
    """Turn CLI ``k=v`` strings into typed keyword arguments for ``make(name, ...)``.

    A key given twice, or a NaN/Inf value, is refused (see `chaosgrad.params.parse_kv`).
    """
    _, f = _factory(name)
    return parse_kv(items, parameters(name), f"estimator {name!r}", "--est-param",
                    nonfinite_allowed(f))
