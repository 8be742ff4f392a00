"""Gradient estimators of a system's meta-loss behind one protocol (`Estimator`), by name.

`make(name, system, **params)` builds one — a registered name, or a user's own factory as
``"module:function"`` / ``"file.py:function"``; `register(name, factory)` adds one (as
`chaosgrad.systems.register` does for systems); `names()` lists them; `describe(name)` says
what each takes; `parse_params(name, ["k=v", ...])` types CLI parameters by their defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from chaosgrad.estimators.backprop import backprop, reparam, truncated_backprop
from chaosgrad.estimators.base import (
    INFO_KEYS,
    TARGETS,
    Estimator,
    Info,
    check_estimator,
    check_info,
    clip_by_global_norm,
    finish_info,
)
from chaosgrad.estimators.combine import combined, inverse_variance_combine
from chaosgrad.estimators.es import es, nres, pes, truncated_es

from chaosgrad import user_code
from chaosgrad.checks import check_number
from chaosgrad.errors import InputError
from chaosgrad.params import nonfinite_allowed, parse_kv
from chaosgrad.system import System


@dataclass(frozen=True)
class Entry:
    """A registered estimator: its factory ``factory(system, **params) -> Estimator`` (or
    where it lives, ``"module:function"``) and what it is."""

    name: str
    source: Callable | str
    description: str
    user: bool = True  # a user's factory: its failures are reported as the user's code's

    def factory(self) -> Callable:
        """The function that builds the estimator."""
        if callable(self.source):
            return self.source
        return user_code.load_factory(self.source, "estimator", names)


_REGISTRY: dict[str, Entry] = {}
_ALIASES = {"truncated_backprop": "tbptt", "truncated_es": "tes", "full_backprop": "backprop"}


def register(name: str, factory: Callable | str, description: str = "") -> None:
    """Register an estimator factory under ``name``: ``factory(system, **params)`` returns
    an `Estimator` (its keyword parameters, with defaults, become ``--est-param``s); it may
    be given as ``"module:function"``. A registered estimator runs wherever a built-in one
    does (`make`, ``compare``, ``meta-train``). Registering a name again replaces it."""
    if not isinstance(name, str) or not name or ":" in name:
        raise InputError(
            f"an estimator's name must be a non-empty string without ':', got {name!r}"
        )
    if not (callable(factory) or (isinstance(factory, str) and user_code.is_spec(factory))):
        raise InputError(
            f"register({name!r}, factory): factory must be a function "
            f"(system, **params) -> Estimator or 'module:function', got "
            f"{factory!r}"
        )
    doc = (
        (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]
        if callable(factory)
        else ""
    )
    _REGISTRY[name] = Entry(name, factory, description or doc or f"user estimator {name}")
    _ALIASES.pop(name, None)


def _builtin(name: str, factory: Callable, description: str) -> None:
    _REGISTRY[name] = Entry(name, factory, description, user=False)


_builtin("backprop", backprop, "exact backprop through whole T-step unrolls (rematerialised)")
_builtin(
    "tbptt", truncated_backprop, "truncated backprop, windows of K steps, persistent particles"
)
_builtin("es", es, "antithetic ES over whole unrolls (gradient of the Gaussian-smoothed loss)")
_builtin("tes", truncated_es, "truncated ES, windows of K steps, persistent particles")
_builtin("pes", pes, "persistent ES: truncated ES with accumulated perturbations (unbiased)")
_builtin(
    "nres",
    nres,
    "noise-reuse ES: one perturbation per inner run, windows of K steps "
    "(unbiased for the smoothed loss; variance not growing with truncations)",
)
_builtin(
    "reparam",
    reparam,
    "backprop at θ ± σε, antithetic: the reparameterisation gradient of the Gaussian-smoothed loss",
)
_builtin("combined", combined, "inverse-variance combination of backprop and ES (Metz et al. 2019)")

__all__ = [
    "INFO_KEYS",
    "TARGETS",
    "Estimator",
    "Info",
    "backprop",
    "canonical_name",
    "check_estimator",
    "check_info",
    "clip_by_global_norm",
    "combined",
    "describe",
    "es",
    "finish_info",
    "inverse_variance_combine",
    "make",
    "names",
    "nres",
    "parse_params",
    "pes",
    "register",
    "reparam",
    "truncated_backprop",
    "truncated_es",
]


def names() -> list[str]:
    """Names of the registered estimators."""
    return sorted(_REGISTRY)


def _accepted() -> str:
    return f"{', '.join(names())}, or module:function for your own"


def canonical_name(name: str) -> str:
    """The registry name of estimator ``name`` (aliases resolved; a user's
    ``"module:function"`` is its own name); InputError if unknown."""
    if not isinstance(name, str):
        raise InputError(
            f"an estimator is named by a string, got {type(name).__name__}; accepted: {_accepted()}"
        )
    key = _ALIASES.get(name, name)
    if key in _REGISTRY or user_code.is_spec(key):
        return key
    raise InputError(f"unknown estimator {name!r}; accepted: {_accepted()}")


def _entry(name: str) -> Entry:
    key = canonical_name(name)
    return _REGISTRY.get(key) or Entry(key, key, f"user estimator {key}")


def _factory(name: str):
    entry = _entry(name)
    return entry.name, entry.factory()


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters estimator ``name`` takes (beside the system), plus clip_norm."""
    _, f = _factory(name)
    try:
        sig = list(inspect.signature(f).parameters.items())
    except (TypeError, ValueError) as e:
        raise InputError(
            f"estimator {name!r}: the parameters of {f!r} cannot be read ({e})"
        ) from None
    if not sig or sig[0][1].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise InputError(
            f"estimator {name!r}: its factory must take the system as its "
            "first argument: factory(system, **params) -> Estimator"
        )
    params = dict(sig[1:])
    params["clip_norm"] = inspect.Parameter(
        "clip_norm", inspect.Parameter.KEYWORD_ONLY, default=0.0
    )
    return params


def describe(name: str) -> dict:
    """What estimator ``name`` is and its parameters with their defaults."""
    entry = _entry(name)
    return {
        "name": entry.name,
        "description": entry.description,
        "params": {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in parameters(name).items()
        },
    }


def make(name: str, system: System, **params) -> Estimator:
    """Build estimator ``name`` for ``system`` with ``params`` (see `describe`).

    ``name`` is a registered name or a user's factory as ``"module:function"`` /
    ``"file.py:function"`` (``factory(system, **params)`` returning an `Estimator`).
    ``clip_norm > 0`` wraps it in `clip_by_global_norm`. Raises InputError for an unknown
    estimator or parameter, and in one line for a failure of a user's factory.
    """
    if not isinstance(system, System):
        raise InputError(
            f"make({name!r}, system, ...) needs a chaosgrad.System, got {type(system).__name__}"
        )
    entry = _entry(name)
    f = entry.factory()
    accepted = parameters(name)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise InputError(
            f"estimator {name!r} has no parameter {', '.join(map(repr, unknown))};"
            f" accepted: {', '.join(accepted)}"
        )
    clip = check_number(
        params.pop("clip_norm", 0.0), "estimator clip_norm (0: no clipping)", nonneg=True
    )
    if not entry.user:
        est = f(system, **params)
    else:
        try:
            est = f(system, **params)
        except KeyboardInterrupt:
            raise
        except InputError as e:  # a check of the user's factory refused a setting: say whose
            raise InputError(f"estimator {name!r}: {e}") from None
        except BaseException as e:  # noqa: BLE001 -- any failure of the user's factory
            raise user_code.user_code_error(name, "building it", e, kind="estimator") from None
        check_estimator(est, name)
    return clip_by_global_norm(est, clip) if clip > 0 else est


def parse_params(name: str, items: list[str] | None) -> dict:
    """Turn CLI ``k=v`` strings into typed keyword arguments for ``make(name, ...)``.

    A key given twice, or a NaN/Inf value, is refused (see `chaosgrad.params.parse_kv`).
    """
    _, f = _factory(name)
    return parse_kv(
        items, parameters(name), f"estimator {name!r}", "--est-param", nonfinite_allowed(f)
    )
