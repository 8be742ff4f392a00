"""The user's entry points as `chaosgrad.compare` and `chaosgrad.meta_train`, with plain
argument names: estimators and outer optimizers by name or as objects.

`chaosgrad/__init__.py` looks these up lazily, so the library never imports the layers above
it. The full-control functions stay where they were (`chaosgrad.app.compare.compare`,
`chaosgrad.estimators.meta.meta_train`).
"""

from __future__ import annotations

import os
from typing import Any

from chaosgrad.app.compare import DEFAULT_ESTIMATORS, Comparison
from chaosgrad.app.compare import compare as _compare
from chaosgrad.checks import check_number
from chaosgrad.errors import InputError

PyTree = Any
OUTER_OPTIMIZERS = ("adam", "sgd", "momentum", "adamw", "rmsprop")

__all__ = ["Comparison", "OUTER_OPTIMIZERS", "compare", "meta_train", "outer_optimizer"]


def compare(system, theta: PyTree = None, estimators=DEFAULT_ESTIMATORS, **kwargs):
    """Which gradient estimator for ``system``? `chaosgrad.app.compare.compare` with the
    estimators ``estimators``: registered names (e.g. ``("backprop", "es", "pes")``, or one
    comma-separated string), ``"module:function"`` factories, or `Estimator` objects built
    for ``system``; every other keyword is passed on (horizon, budget, samples, seconds,
    key, out, ...).

    Returns:
      A `Comparison` (None on a process other than 0 of a multi-process launch).
    """
    if "estimators_" in kwargs:
        raise InputError("pass the estimators as estimators=..., not estimators_=")
    return _compare(system, theta, estimators, **kwargs)


def outer_optimizer(name, lr: float):
    """An optax optimizer by name (one of OUTER_OPTIMIZERS) at learning rate ``lr``; an
    optax GradientTransformation given as ``name`` is returned as it is."""

    import optax

    if not isinstance(name, str):
        return name
    check_number(lr, "the outer learning rate", positive=True)
    makers = {
        "adam": optax.adam,
        "sgd": optax.sgd,
        "adamw": optax.adamw,
        "rmsprop": optax.rmsprop,
        "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    }
    if name not in makers:
        raise InputError(
            f"unknown outer optimizer {name!r}; accepted: " + ", ".join(OUTER_OPTIMIZERS)
        )
    return makers[name](lr)


def meta_train(
    system,
    estimator="pes",
    *,
    steps: int = 100,
    out: str | os.PathLike = "out/meta-train",
    optimizer="adam",
    outer_lr: float = 1e-3,
    key=None,
    theta: PyTree = None,
    estimator_params: dict | None = None,
    **kwargs,
):
    """Meta-train ``system``'s θ: `chaosgrad.estimators.meta.meta_train` with plain names.

    Args:
      system: a `chaosgrad.System`.
      estimator: a registered estimator's name ("backprop", "tbptt", "es", "tes", "pes",
        "nres", "combined", ... or one added by `chaosgrad.estimators.register`) or a
        ``"module:function"`` factory, built with ``estimator_params``; or an `Estimator`
        object built for ``system``.
      steps: outer steps. out: the output folder (log.jsonl, curves.npz, theta.npz, ...).
      optimizer: the outer optimizer, one of OUTER_OPTIMIZERS (with ``outer_lr``), or an
        optax GradientTransformation.
      key: the run key (default PRNGKey(0)); theta: the starting θ (default the system's).
      kwargs: passed on (log_every, checkpoint_every, eval_seeds, resume, progress, ...).

    Returns:
      A `chaosgrad.estimators.meta.MetaTrainResult`.
    """
    import jax

    from chaosgrad import estimators as registry
    from chaosgrad.estimators.meta import meta_train as _meta_train

    est = (
        registry.make(estimator, system, **(estimator_params or {}))
        if isinstance(estimator, str)
        else estimator
    )
    opt = outer_optimizer(optimizer, outer_lr)
    config = kwargs.pop("outer_config", None) or (
        {"optimizer": optimizer, "lr": outer_lr} if isinstance(optimizer, str) else None
    )
    return _meta_train(
        system,
        est,
        opt,
        steps,
        out,
        jax.random.PRNGKey(0) if key is None else key,
        theta,
        outer_config=config,
        **kwargs,
    )
