"""The one step interface every iterative system implements.

`System` holds pure functions (`init`, `step`, optional `phase`/`with_phase`) and metadata.
Validation by tracing (`check_system`) lives in `chaosgrad.validation` and the compile cache
(`compile_key`, `cache_by_functions`) in `chaosgrad.compile_cache`; both stay importable from
here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from chaosgrad.checks import check_number, check_positive_int
from chaosgrad.compile_cache import (  # noqa: F401 -- re-exported
    _LIBRARY_ROOTS,
    _MAX_DEPTH,
    _MAX_ITEMS,
    _code_key,
    _frozen,
    _function_key,
    _global_key,
    _global_names,
    _is_library,
    _Same,
    _Uncacheable,
    _value_key,
    cache_by_functions,
    compile_key,
)
from chaosgrad.config import auto_enable_compilation_cache
from chaosgrad.errors import InputError
from chaosgrad.io import jsonable
from chaosgrad.validation import (  # noqa: F401 -- re-exported
    _CHECKED,
    _check_phase_round_trip,
    _describe_leaves,
    _dtype,
    _shape,
    _signature,
    _spec,
    _trace,
    check_system,
)

# The persistent compilation cache is on for the Python API as for the command line: every
# computing module imports this one. CHAOSGRAD_NO_CACHE=1 leaves it off.
auto_enable_compilation_cache()

PyTree = Any
META_LOSSES = ("mean", "sum", "last")


class StepOut(NamedTuple):
    """What `System.step` returns beside the new state.

    Attributes:
      loss: the per-step loss ℓ_t (a scalar). The meta-loss of an unroll of T steps is the
        mean of ℓ_0 … ℓ_{T-1}.
      done: for episodic systems, whether the episode ended at this step (else None).
      aux: anything else the system wants to report (a pytree, or None).
    """

    loss: jax.Array
    done: jax.Array | None = None
    aux: PyTree = None


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)


def float_leaves_phase(state: PyTree) -> list:
    """Default phase: the list of every floating-point leaf of `state`, in tree order."""
    return [x for x in jax.tree_util.tree_leaves(state) if _is_float(x)]


def float_leaves_with_phase(state: PyTree, phase: list) -> PyTree:
    """Inverse of `float_leaves_phase`: put `phase` back into the float leaves of `state`."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    it = iter(phase)
    new = [next(it) if _is_float(x) else x for x in leaves]
    return jax.tree_util.tree_unflatten(treedef, new)


@dataclasses.dataclass(frozen=True, eq=False)
class System:
    """An iterative system s_{t+1}, ℓ_t = f(s_t, θ, key_t), as a record of pure functions.

    Args:
      init: ``init(key, theta) -> state``, the initial state (any pytree).
      step: ``step(state, theta, key) -> (state, out)``; ``out`` is a `StepOut` (or anything
        with a ``.loss`` attribute, or a dict with a ``"loss"`` key, or a bare scalar loss).
      phase: ``phase(state) -> pytree``, the dynamical variables the Jacobian is taken over.
        Default: every floating-point leaf of the state.
      with_phase: ``with_phase(state, phase) -> state``, the inverse of ``phase``. Required
        when ``phase`` is given.
      name: a short name used in reports.
      theta: the default parameters (any pytree), used when a tool is called without theta.
      dt: the time step for flows (exponents are then reported per unit time); None for maps.
      horizon: the natural unroll length, used as a default by the tools.
      precision: "float32" or "float64", the precision the system runs in: the widest
        floating dtype of ``theta``'s leaves (as JAX runs it: float64 only with x64 on).
        Default (None): read from ``theta`` ("float32" without a default θ). Given, it must
        match ``theta``: a float32 θ labelled "float64" is an InputError naming both.
      meta_loss: how the per-step losses of a T-step unroll make the meta-loss: "mean"
        (default), "sum", or "last" (ℓ_{T-1} alone, e.g. the energy after minimisation).
      description: one line on what the system is.
      theta_doc: what ``theta`` means.
      loss_doc: what the per-step loss is.
      metadata: any further facts about the system, recorded in results (``meta=`` is the
        deprecated name; in chaosgrad "meta" means the outer problem: meta-loss,
        meta-training).

    Every function must be jittable and vmappable; randomness comes only from the keys
    passed in. The step's key at global step t is ``jax.random.fold_in(key, t)`` in every
    tool, so results do not depend on how an unroll is chunked.

    Example::

        def init(key, theta):
            return jax.random.uniform(key, (2,))
        def step(x, theta, key):
            x = jnp.array([1 - theta[0] * x[0] ** 2 + x[1], theta[1] * x[0]])
            return x, chaosgrad.StepOut(loss=x[0])
        henon = chaosgrad.System(init, step, name="my-henon", theta=jnp.array([1.4, 0.3]))
    """

    init: Callable[[jax.Array, PyTree], PyTree]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, Any]]
    phase: Callable[[PyTree], PyTree] | None = None
    with_phase: Callable[[PyTree, PyTree], PyTree] | None = None
    name: str = "system"
    theta: PyTree = None
    dt: float | None = None
    horizon: int = 100
    precision: str | None = None
    meta_loss: str = "mean"
    description: str = ""
    theta_doc: str = ""
    loss_doc: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.init) or not callable(self.step):
            raise InputError("System needs callable init(key, theta) and step(state, theta, key)")
        if (self.phase is None) != (self.with_phase is None):
            raise InputError("System: give both phase and with_phase, or neither")
        if self.precision not in (None, "float32", "float64"):
            raise InputError(
                f"System precision {self.precision!r} is not accepted: use 'float32' or 'float64'"
            )
        object.__setattr__(self, "precision", _checked_precision(self))  # frozen: set once
        if self.meta_loss not in META_LOSSES:
            raise InputError(
                f"System meta_loss {self.meta_loss!r} is not accepted: use one of {META_LOSSES}"
            )
        if self.dt is not None:
            try:
                check_number(self.dt, "System dt", positive=True)
            except InputError:
                raise InputError(
                    f"System dt must be a positive finite number (or None for "
                    f"maps), got {self.dt!r}"
                ) from None
        horizon = check_positive_int(self.horizon, "System horizon")
        object.__setattr__(self, "horizon", horizon)  # frozen: set once, as an int

    # -- phase helpers ---------------------------------------------------------------------
    def get_phase(self, state: PyTree) -> PyTree:
        """The dynamical variables of `state` (the system's ``phase``, or its float leaves)."""
        return self.phase(state) if self.phase is not None else float_leaves_phase(state)

    def set_phase(self, state: PyTree, phase: PyTree) -> PyTree:
        """`state` with its dynamical variables replaced by `phase`."""
        if self.with_phase is not None:
            return self.with_phase(state, phase)
        return float_leaves_with_phase(state, phase)

    def flat_phase(self, state: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
        """The phase as one flat vector, and the function that turns such a vector back."""
        return ravel_pytree(self.get_phase(state))

    def phase_dim(self, theta: PyTree = None, key: jax.Array | None = None) -> int:
        """Dimension n of the phase vector (the Jacobian is n × n)."""
        theta = self.theta if theta is None else theta
        key = default_key(key)
        shape = jax.eval_shape(lambda k: self.flat_phase(self.init(k, theta))[0], key)
        return int(shape.shape[0])

    def replace(self, **changes) -> System:
        """A copy of this system with some fields changed (``dataclasses.replace``), e.g.
        ``system.replace(theta=..., horizon=1000)``. A new ``theta`` without a new
        ``precision`` takes its precision from the new θ."""
        if "meta" in changes:
            changes["metadata"] = _renamed_meta(changes.pop("meta"), changes)
        if "theta" in changes and "precision" not in changes:
            changes["precision"] = None
        return dataclasses.replace(self, **changes)

    @property
    def meta(self) -> dict:
        """Deprecated name of `System.metadata` (removed in 0.3.0)."""
        from chaosgrad import deprecation

        deprecation.warn("System.meta", "System.metadata")
        return self.metadata

    def with_meta(self, **changes) -> System:
        """Deprecated alias of `System.replace` (removed in 0.3.0)."""
        from chaosgrad import deprecation

        deprecation.warn("System.with_meta", "System.replace", stacklevel=3)
        return self.replace(**changes)

    def describe(self) -> dict:
        """Metadata as a JSON-friendly dict (recorded with every result)."""
        return {
            "name": self.name,
            "description": self.description,
            "theta": self.theta_doc,
            "loss": self.loss_doc,
            "dt": self.dt,
            "horizon": int(self.horizon),
            "precision": self.precision,
            "meta_loss": self.meta_loss,
            **jsonable(self.metadata)[0],
        }


def _renamed_meta(meta: dict, kwargs: dict) -> dict:
    """``meta=``, the deprecated name of ``metadata=``: warned about, refused beside it."""
    from chaosgrad import deprecation

    if kwargs.get("metadata") is not None:
        raise InputError("System: give metadata= alone (meta= is its deprecated name)")
    deprecation.warn("System(meta=...)", "System(metadata=...)", stacklevel=4)
    return meta


_dataclass_init = System.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args, meta: dict | None = None, **kwargs):
    if meta is not None:
        kwargs["metadata"] = _renamed_meta(meta, kwargs)
    _dataclass_init(self, *args, **kwargs)


System.__init__ = _init  # the dataclass's own __init__, plus the old keyword meta=


def _checked_precision(system: System) -> str:
    """The system's precision: what its θ runs in, which a given label must match."""
    widths = {
        np.dtype(jax.dtypes.canonicalize_dtype(_dtype(x))).itemsize
        for x in jax.tree_util.tree_leaves(system.theta)
        if jnp.issubdtype(_dtype(x), jnp.floating)
    }
    if not widths:  # no default θ (or no float leaf, refused when θ is checked)
        return system.precision or "float32"
    actual = "float64" if max(widths) >= 8 else "float32"
    if system.precision is not None and system.precision != actual:
        raise InputError(
            f"System {system.name!r} says precision {system.precision!r} but its "
            f"theta is {actual}: give theta in {system.precision} (float64 needs "
            "chaosgrad.enable_x64()) or leave precision out"
        )
    return actual


def loss_of(out: Any) -> jax.Array:
    """The per-step loss from whatever a step returned as ``out``."""
    if hasattr(out, "loss"):
        return out.loss
    if isinstance(out, dict) and "loss" in out:
        return out["loss"]
    if isinstance(out, (jax.Array, float, int)) or hasattr(out, "shape"):
        return out
    raise InputError(
        "step(state, theta, key) must return (state, out) where out is a StepOut, has a "
        f"'.loss' attribute, is a dict with 'loss', or is a scalar loss; got {type(out).__name__}"
    )


def done_of(out: Any) -> jax.Array | None:
    """The ``done`` flag of a step's output, or None."""
    if hasattr(out, "done"):
        return out.done
    if isinstance(out, dict):
        return out.get("done")
    return None


def split_run_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split a run's key into the key passed to ``init`` and the key the steps derive from.

    Every tool uses this, so the same ``key`` gives the same initial state and the same
    step keys in an unroll, a Jacobian spectrum and a gradient.
    """
    k_init, k_steps = jax.random.split(key)
    return k_init, k_steps


def step_key(steps_key: jax.Array, t) -> jax.Array:
    """The key of global step ``t`` of an unroll whose steps derive from ``steps_key``."""
    return jax.random.fold_in(steps_key, t)


def is_key_batch(key: jax.Array) -> bool:
    """Whether ``key`` is a batch of PRNG keys (leading axis) rather than one key."""
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    if key.ndim == 1 and key.shape[0] == 2:
        return False
    if key.ndim == 2 and key.shape[-1] == 2:
        return True
    raise InputError(
        f"key must be a PRNG key (jax.random.PRNGKey(seed), shape (2,)) or a batch of them "
        f"(shape (B, 2)); got shape {tuple(key.shape)}"
    )


def is_key(x) -> bool:
    """Whether ``x`` is one PRNG key (a typed key, or uint32 of shape (2,))."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return jnp.ndim(x) == 0
    return dtype == jnp.uint32 and tuple(jnp.shape(x)) == (2,)


def default_key(key: jax.Array | None) -> jax.Array:
    """``key``, or PRNGKey(0) when None: every entry point's default, so runs reproduce."""
    return jax.random.PRNGKey(0) if key is None else key


def resolve_theta(system: System, theta: PyTree, *, batched: bool = False) -> PyTree:
    """``theta`` or, when None, the system's default, checked against the system.

    Every analysis entry point calls this first, so it is where a system is checked at
    first use (`check_system`, cached per system and θ shape). ``batched``: the leading
    axis of every leaf of ``theta`` is a batch of parameter settings.
    """
    if theta is None:
        theta = system.theta
    if theta is None:
        raise InputError(f"no theta given and system {system.name!r} has no default theta")
    check_system(system, theta, batched=batched)
    return theta
