"""The estimator protocol (`Estimator`: ``init``/``estimate``), population sharding, and the
pytree helpers every estimator shares (noise like θ, norms, non-finite counts, clipping).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from jax.sharding import NamedSharding

from chaosgrad import distributed
from chaosgrad.checks import check_number, check_positive_int  # noqa: F401 -- re-exported
from chaosgrad.errors import InputError

PyTree = Any
POPULATION_AXIS = distributed.POPULATION_AXIS


class Estimator(NamedTuple):
    """A gradient estimator of a system's meta-loss, as two pure functions and its traits.

    Attributes:
      init: ``init(key, theta) -> est_state``: the estimator's persistent state (for
        truncated estimators the population of inner states and the schedule's bounds; for
        whole unrolls the horizon T, `chaosgrad.estimators.unrolled.Horizon`). The horizon
        lives in the state, so one compiled ``estimate`` serves every T.
      estimate: ``estimate(est_state, theta, key) -> (grad, est_state, info)``. ``grad`` is
        a pytree like θ; ``info`` is an `Info`: a dict of scalars with at least ``loss``
        (the mean loss the estimate saw), ``steps`` (system steps run),
        ``nonfinite_losses``, ``nonfinite_grad`` and ``grad_norm`` — build it with
        `finish_info`, which fills the last two. Pure and jittable:
        ``jax.jit(est.estimate)``.
      name: the registry name (a user's estimator: any name it reports under).
      params: the settings it was built with (recorded with results).

    Its traits — what `compare`, the figures and meta-training read, never its name:
      target: the gradient it is unbiased for, at θ held fixed (one of `TARGETS`):
        "exact" ∇E_key L_T(θ); "smoothed" ∇E_key E_ε L_T(θ + ε), ε ~ N(0, σ²I) over the whole
        run, σ = ``smoothing``; "smoothed per truncation" the same with a fresh ε for every
        truncation window (PES: equal to "smoothed" up to O(σ²) where the loss is smooth);
        "truncated" the gradient with the state held fixed at window starts (biased for
        every other target); "none" no stated gradient (a compressed or otherwise biased
        estimate, judged only by its error).
      correlated: whether successive estimates share state (persistent particles), so that
        only independent replicates of several successive estimates (batch means) give
        honest intervals.
      smoothing: σ of the Gaussian smoothing of its target (0.0 when it smooths nothing).
      windowed: whether each estimate advances windows of K = ``params["window"]`` steps of
        persistent inner runs (a window must fit in the horizon) instead of whole unrolls.
      reverse_mode: whether it differentiates through the unroll, so that each step it runs
        also costs a backward pass (cost accounting in forward-step equivalents).
      steps: system steps one estimate runs (0: not known before it runs; its ``info``
        says).
    """

    init: Callable[[jax.Array, PyTree], PyTree]
    estimate: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, dict]]
    name: str
    params: dict
    target: str = "exact"
    correlated: bool = False
    smoothing: float = 0.0
    windowed: bool = False
    reverse_mode: bool = False
    steps: int = 0

    def traits(self) -> dict:
        """What the estimator is, as plain values (recorded with results)."""
        return {
            "target": self.target,
            "smoothing": self.smoothing,
            "correlated": self.correlated,
            "windowed": self.windowed,
            "reverse_mode": self.reverse_mode,
            "steps": self.steps,
        }


TARGETS = ("exact", "smoothed", "smoothed per truncation", "truncated", "none")


class Info(TypedDict):
    """The ``info`` of an estimate (a plain dict, so it passes through ``jax.jit``): the five
    keys of `INFO_KEYS` are required; an estimator may add its own (``resets``,
    ``weight_backprop``, ``clipped``, ...)."""

    loss: jax.Array
    steps: jax.Array
    nonfinite_losses: jax.Array
    nonfinite_grad: jax.Array
    grad_norm: jax.Array


INFO_KEYS = ("loss", "steps", "nonfinite_losses", "nonfinite_grad", "grad_norm")


def check_info(info, name: str) -> None:
    """Refuse, in one line, an estimate's ``info`` that is not a dict with every key of
    `INFO_KEYS` (works on traced or abstract values as well as on arrays)."""
    if not isinstance(info, dict):
        raise InputError(
            f"estimator {name!r}: estimate(...) must return (grad, state, info) "
            f"with info a dict, got {type(info).__name__}; build it with "
            "chaosgrad.estimators.finish_info"
        )
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise InputError(
            f"estimator {name!r}: its info lacks {', '.join(missing)}; an "
            f"estimate's info needs {', '.join(INFO_KEYS)} (build it with "
            "chaosgrad.estimators.finish_info(grad, loss=..., steps=..., "
            "nonfinite_losses=...))"
        )


def check_estimator(est, name: str | None = None) -> Estimator:
    """``est`` if it is an `Estimator` whose functions are callable and whose traits are of
    the accepted values, else an InputError naming the field (``name``: what it was asked as).
    """
    who = name or getattr(est, "name", None) or type(est).__name__
    if not isinstance(est, Estimator):
        raise InputError(
            f"estimator {who!r} is a {type(est).__name__}, not a chaosgrad.estimators.Estimator"
        )
    if not (callable(est.init) and callable(est.estimate)):
        raise InputError(f"estimator {who!r}: init and estimate must be functions")
    if not isinstance(est.name, str) or not est.name:
        raise InputError(f"estimator {who!r}: its name must be a non-empty string")
    if not isinstance(est.params, dict):
        raise InputError(
            f"estimator {who!r}: params must be a dict, got {type(est.params).__name__}"
        )
    if est.target not in TARGETS:
        raise InputError(
            f"estimator {who!r}: target {est.target!r} is not accepted; "
            f"accepted: {', '.join(TARGETS)}"
        )
    try:
        smoothing = float(est.smoothing)
    except (TypeError, ValueError):
        smoothing = float("nan")
    if not smoothing >= 0 or smoothing == float("inf"):
        raise InputError(
            f"estimator {who!r}: smoothing must be a finite σ >= 0, got {est.smoothing!r}"
        )
    if est.target.startswith("smoothed") and smoothing == 0:
        raise InputError(f"estimator {who!r}: a {est.target!r} target needs its σ as smoothing=...")
    if est.windowed and "window" not in est.params:
        raise InputError(
            f"estimator {who!r}: a windowed estimator records its window K in params['window']"
        )
    if isinstance(est.steps, bool) or not isinstance(est.steps, int) or est.steps < 0:
        raise InputError(
            f"estimator {who!r}: steps must be an integer >= 0 (0: unknown), got {est.steps!r}"
        )
    return est


# -- pytree helpers ----------------------------------------------------------------------------
# Noise like θ, scaling, sums and norms come from optax.tree_utils (tree_random_like,
# tree_scale, tree_add, tree_norm). The two below are ours because optax has no equivalent:
# a mean over a leading sample axis, and a count (not a norm) of non-finite entries.
def tree_mean0(tree: PyTree) -> PyTree:
    """The mean over the leading (sample) axis of every leaf."""
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)


def count_nonfinite(tree: PyTree) -> jax.Array:
    """How many entries of the pytree are NaN or ±Inf (an int32 scalar)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.int32)
    return sum(jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) for x in leaves)


def finish_info(grad: PyTree, *, loss, steps, nonfinite_losses, **extra) -> Info:
    """The info of an estimate, built in one place: ``loss`` (the mean loss it saw),
    ``steps`` (system steps run), ``nonfinite_losses`` (NaN/Inf per-step losses), then
    ``nonfinite_grad`` and ``grad_norm`` of ``grad``, and the estimator's own ``extra``
    fields."""
    return Info(
        loss=loss,
        steps=steps,
        nonfinite_losses=nonfinite_losses,
        nonfinite_grad=count_nonfinite(grad),
        grad_norm=otu.tree_norm(grad),
        **extra,
    )


# -- sharding the population over devices --------------------------------------------------------
def population_sharding(n: int, shard: bool = True) -> NamedSharding | None:
    """A sharding that splits a leading population axis of size ``n`` over every device of
    every process (`chaosgrad.distributed.population_devices`): on one process the largest
    number of local devices that divides ``n``; under a multi-process launch the same number
    from each process. Returns None when ``shard`` is False.

    The same code runs on one device (the constraint is then trivial), many local devices,
    or P processes × D devices; each member's keys and noise come from its global index, so
    the estimate does not depend on the layout.
    """
    if not shard:
        return None
    return distributed.population_sharding(n)


def shard_population(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Constrain every array leaf with a leading axis to ``sharding`` (no-op for None)."""
    if sharding is None:
        return tree

    def one(x):
        if not hasattr(x, "ndim") or x.ndim == 0:
            return x
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree_util.tree_map(one, tree)


# -- wrappers ----------------------------------------------------------------------------------
def clip_by_global_norm(estimator: Estimator, max_norm: float) -> Estimator:
    """``estimator`` with its gradient rescaled to global norm ≤ ``max_norm``.

    The info gains ``unclipped_norm`` (the norm before clipping) and ``clipped`` (1 when it
    was rescaled). A non-finite gradient stays non-finite (it is counted, not hidden).
    Clipping trades bias for variance: the clipped estimate is unbiased for nothing in
    particular once clipping is active.
    """
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise InputError(f"clip max_norm must be positive, got {max_norm!r}")

    # every trait is kept: clipping changes the estimate, not what the estimator is
    return estimator._replace(
        estimate=_clipped_estimate(estimator.estimate, max_norm),
        params=dict(estimator.params, clip_norm=max_norm),
    )


@functools.lru_cache(maxsize=64)
def _clipped_estimate(estimate: Callable, max_norm: float) -> Callable:
    """``estimate`` clipped to global norm ``max_norm``: one function per (estimate, norm),
    so a clipped estimator, like the one it wraps, compiles once for every horizon."""

    def clipped(est_state, theta, key):
        grad, est_state, info = estimate(est_state, theta, key)
        norm = otu.tree_norm(grad)
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
        # tree_cast_like: a float64 scale must not promote float32 leaves.
        grad = otu.tree_cast_like(otu.tree_scale(scale, grad), grad)
        info = dict(
            info,
            unclipped_norm=norm,
            clipped=(norm > max_norm).astype(jnp.int32),
            grad_norm=otu.tree_norm(grad),
        )
        return grad, est_state, info

    return clipped


def check_positive_float(value, name: str) -> float:
    """Deprecated (removed in 0.3.0): use ``chaosgrad.checks.check_number(value, name,
    positive=True)``."""
    from chaosgrad import deprecation

    deprecation.warn(
        "chaosgrad.estimators.base.check_positive_float",
        "chaosgrad.checks.check_number(..., positive=True)",
    )
    return check_number(value, name, positive=True)


def check_sigma(sigma, system) -> float:
    """σ as a positive float whose square does not underflow in θ's precision (σ² divides
    every ES-type estimate: an underflow would read as a diverging system)."""
    import math

    import numpy as np

    sigma = check_number(sigma, "sigma", positive=True)
    leaves = jax.tree_util.tree_leaves(system.theta)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    tiny = float(np.finfo(dtype).tiny)
    if sigma**2 < tiny:
        raise InputError(
            f"sigma {sigma:g} is too small: sigma² underflows in {np.dtype(dtype)}"
            f"; accepted: sigma >= {math.sqrt(tiny):.1e}"
        )
    return sigma
