"""The one step interface every iterative system implements.

`System` holds pure functions (`init`, `step`, optional `phase`/`with_phase`) and metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from chaosgrad.config import auto_enable_compilation_cache
from chaosgrad.errors import InputError
from chaosgrad.io import jsonable
from chaosgrad.params import check_int, check_number

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
      meta: any further metadata (recorded in results).

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
    meta: dict = dataclasses.field(default_factory=dict)

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
                raise InputError(f"System dt must be a positive finite number (or None for "
                                 f"maps), got {self.dt!r}") from None
        try:
            horizon = check_int(self.horizon, "System horizon", lo=1)
        except InputError:
            raise InputError(f"System horizon must be a positive integer, got "
                             f"{self.horizon!r}") from None
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
        if "theta" in changes and "precision" not in changes:
            changes["precision"] = None
        return dataclasses.replace(self, **changes)

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
            **jsonable(self.meta)[0],
        }


def _checked_precision(system: System) -> str:
    """The system's precision: what its θ runs in, which a given label must match."""
    widths = {np.dtype(jax.dtypes.canonicalize_dtype(_dtype(x))).itemsize
              for x in jax.tree_util.tree_leaves(system.theta)
              if jnp.issubdtype(_dtype(x), jnp.floating)}
    if not widths:  # no default θ (or no float leaf, refused when θ is checked)
        return system.precision or "float32"
    actual = "float64" if max(widths) >= 8 else "float32"
    if system.precision is not None and system.precision != actual:
        raise InputError(f"System {system.name!r} says precision {system.precision!r} but its "
                         f"theta is {actual}: give theta in {system.precision} (float64 needs "
                         "chaosgrad.enable_x64()) or leave precision out")
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


# Systems already checked, with the θ signatures they were checked with. Weak keys: a
# system built in a loop is forgotten with it. `System` hashes by identity (eq=False).
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(jnp.shape(x))


def _dtype(x):
    return x.dtype if hasattr(x, "dtype") else jnp.result_type(x)


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(_shape(x), jax.dtypes.canonicalize_dtype(_dtype(x)))


def _describe_leaves(tree: PyTree) -> str:
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) > 4:
        return f"{len(leaves)} leaves"
    return ", ".join(f"{_dtype(x).name}{list(_shape(x))}" for x in leaves) or "none"


def _signature(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((_shape(x), _dtype(x).name) for x in leaves)


def _trace(system: System, what: str, fn, *args):
    """``jax.eval_shape(fn, *args)``; a failure is an InputError naming ``what``."""
    try:
        return jax.eval_shape(fn, *args)
    except InputError:
        raise
    except Exception as e:  # any error from tracing the user's function is bad input
        first = (str(e).strip().splitlines() or [""])[0]
        hint = ""
        if isinstance(e, jax.errors.ConcretizationTypeError):
            hint = " (a Python if/while/int() on a traced value: use jnp.where or lax.cond)"
        raise InputError(f"{what} of system {system.name!r} cannot be traced by JAX: "
                         f"{type(e).__name__}: {first}{hint}") from None


def check_system(system: System, theta: PyTree = None, *, batched: bool = False) -> None:
    """Check ``system`` with ``theta`` by tracing it once with `jax.eval_shape` (no compute).

    θ must match the system's default θ in tree structure and leaf shapes, with floating
    leaves; ``step(state, theta, key)`` must return ``(state, out)`` with the state's
    structure, shapes and dtypes unchanged and a scalar float loss. Each failure is an
    InputError naming the function and what was expected. A (system, θ signature) pair is
    checked once; later calls cost a dictionary look-up.
    """
    theta = system.theta if theta is None else theta
    if theta is None:
        raise InputError(f"no theta given and system {system.name!r} has no default theta")
    if batched:  # check one member of the batch
        theta = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(
            _shape(x)[1:], _dtype(x)), theta)
    sig = _signature(theta)
    seen = _CHECKED.setdefault(system, set())
    if sig in seen:
        return
    name = system.name
    bad = [_dtype(x).name for x in jax.tree_util.tree_leaves(theta)
           if not jnp.issubdtype(_dtype(x), jnp.floating)]
    if bad:
        raise InputError(f"theta of system {name!r} must have floating-point leaves (its "
                         f"gradient is taken); got {', '.join(bad)} leaves")
    if system.theta is not None and theta is not system.theta:
        d_leaves, d_tree = jax.tree_util.tree_flatten(system.theta)
        leaves, tree = jax.tree_util.tree_flatten(theta)
        if tree != d_tree:
            raise InputError(f"theta of system {name!r} has structure {tree}; expected the "
                             f"structure of its default theta, {d_tree}")
        for i, (a, b) in enumerate(zip(leaves, d_leaves, strict=True)):
            if _shape(a) != _shape(b):
                where = f" (leaf {i})" if len(leaves) > 1 else ""
                raise InputError(f"theta of system {name!r} has shape {list(_shape(a))}"
                                 f"{where}; expected {list(_shape(b))} like its default "
                                 "theta")
    if sum(int(np.prod(_shape(x))) for x in jax.tree_util.tree_leaves(theta)) == 0:
        raise InputError(f"theta of system {name!r} has no entries (size 0): the gradient is "
                         "taken with respect to theta; give it at least one parameter")
    th = jax.tree_util.tree_map(_spec, theta)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = _trace(system, "init(key, theta)", system.init, key, th)
    cplx = [f"{x.dtype.name}{list(x.shape)}" for x in jax.tree_util.tree_leaves(state)
            if jnp.issubdtype(x.dtype, jnp.complexfloating)]
    if cplx:
        raise InputError(f"init(key, theta) of system {name!r} returned a complex state "
                         f"({', '.join(cplx[:3])}); chaosgrad takes real states: keep the "
                         "real and imaginary parts as two float leaves")
    result = _trace(system, "step(state, theta, key)", system.step, state, th, key)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        got = (f"a {type(result).__name__} of {len(result)}"
               if isinstance(result, (tuple, list))
               else f"{type(result).__name__} {_describe_leaves(result)}")
        raise InputError(f"step(state, theta, key) of system {name!r} must return "
                         f"(new_state, out); got {got}")
    new_state, out = result
    s_leaves, s_tree = jax.tree_util.tree_flatten(state)
    n_leaves, n_tree = jax.tree_util.tree_flatten(new_state)
    if s_tree != n_tree:
        raise InputError(f"step(state, theta, key) of system {name!r} returned a state of "
                         f"structure {n_tree}; expected the structure init made, {s_tree}")
    for i, (a, b) in enumerate(zip(n_leaves, s_leaves, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            where = f" (leaf {i})" if len(s_leaves) > 1 else ""
            raise InputError(f"step(state, theta, key) of system {name!r} returned a state "
                             f"{a.dtype.name}{list(a.shape)}{where}; expected it unchanged "
                             f"from init: {b.dtype.name}{list(b.shape)}")
    loss = loss_of(out)
    if _shape(loss) != () or not jnp.issubdtype(_dtype(loss), jnp.floating):
        raise InputError(f"step(state, theta, key) of system {name!r} returned a loss "
                         f"{_dtype(loss).name}{list(_shape(loss))}; expected a "
                         "scalar float (the per-step loss)")
    if system.phase is not None and not _check_phase_round_trip(system, state, theta,
                                                                batched):
        return  # the round trip could not run here (θ traced): check again next time
    seen.add(sig)


def _check_phase_round_trip(system: System, state, theta, batched: bool) -> bool:
    """``with_phase`` must invert ``phase``: traced for shapes, then run once on a real
    state, ``phase(with_phase(s, p + δ))`` must give back ``p + δ`` (a ``with_phase`` that
    ignores its argument, or scales it, would make every Jacobian wrong without a word)."""
    name = system.name
    p = _trace(system, "phase(state)", system.phase, state)
    back = _trace(system, "with_phase(state, phase)", system.with_phase, state, p)
    s_leaves, s_tree = jax.tree_util.tree_flatten(state)
    b_leaves, b_tree = jax.tree_util.tree_flatten(back)
    if b_tree != s_tree or any(a.shape != b.shape or a.dtype != b.dtype
                               for a, b in zip(b_leaves, s_leaves, strict=True)):
        raise InputError(f"with_phase(state, phase) of system {name!r} must return a state "
                         "like init's (same structure, shapes and dtypes)")
    if any(not jnp.issubdtype(x.dtype, jnp.floating)
           for x in jax.tree_util.tree_leaves(p)):
        raise InputError(f"phase(state) of system {name!r} must return floating-point "
                         "leaves (the Jacobian is taken over them)")
    if batched:
        return True  # its functions are those of the unbatched θ, checked there
    if any(isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))
           for x in jax.tree_util.tree_leaves(theta)):
        return False  # nothing concrete to run on (θ abstract, or traced inside a jit)

    def errors(key, theta):
        s = system.init(key, theta)
        flat, unravel = ravel_pytree(system.phase(s))
        sign = jnp.where(jnp.arange(flat.size) % 2 == 0, 1.0, -1.0).astype(flat.dtype)
        delta = 1e-3 * (1 + jnp.abs(flat)) * sign
        got = ravel_pytree(system.phase(system.with_phase(s, unravel(flat + delta))))[0]
        err = jnp.abs(got - (flat + delta)) / jnp.abs(delta)
        return jnp.max(jnp.where(jnp.isfinite(err), err, 0.0))

    with jax.ensure_compile_time_eval():  # run now, even when called inside a jit trace
        err = float(jax.jit(errors)(jax.random.PRNGKey(0), theta))
    if err > 0.05:
        raise InputError(f"with_phase of system {name!r} is not the inverse of phase: "
                         "phase(with_phase(state, p)) differs from p (by "
                         f"{100 * err:.3g}% of a small change to p); the Jacobians would be "
                         "wrong. with_phase(state, phase) must put the phase back")
    return True


# -- compiled-function caches keyed on what a system computes ------------------------------------
# A compiled program bakes in everything its Python functions read while being traced: their
# code, closure cells, defaults, and the module globals they read. The key below covers all
# of these, so a redefined function that reads a changed global (a notebook cell re-run with
# A = 0.2 instead of 1.4) compiles afresh instead of being served the old program.
# A value that can be neither compared by content nor trusted immutable makes the system
# uncacheable: it then compiles on every call, never reusing a program wrongly.

# Functions from these packages are installed code: their module globals do not change while
# a program runs, so only their code, closures and defaults are keyed (cheap, and two builds
# of a built-in system still share compiled programs).
_LIBRARY_ROOTS = frozenset({
    "chaosgrad", "jax", "jaxlib", "numpy", "optax", "scipy", "flax", "equinox", "brax",
    "mujoco", "functools", "builtins", "math", "operator", "ml_dtypes",
})
_MAX_DEPTH = 12
_MAX_ITEMS = 256


class _Uncacheable(Exception):
    """A value a compiled function depends on cannot be keyed safely."""


class _Same:
    """Equal only to the very same object, which it keeps alive: an ``id`` cannot be reused
    by another object while a cache key holds it."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


@functools.lru_cache(maxsize=2048)
def _global_names(code) -> tuple:
    """Every name ``code`` (or a function or lambda nested in it) may read as a global."""
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            names.update(_global_names(c))
    return tuple(sorted(names))


def _is_library(obj) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    return mod.split(".")[0] in _LIBRARY_ROOTS


def _function_key(f: Any, memo: dict | None = None, depth: int = 0) -> Any:
    """A hashable key that is equal for two functions that compute the same thing: the same
    code, equal closure values, defaults and (for user code) values of the globals it reads,
    nested functions compared the same way.

    Values that cannot be compared by content are compared by identity only when they are
    immutable (JAX arrays, dtypes, classes, modules); anything else raises `_Uncacheable`,
    so the key errs on the side of recompiling, never of reusing wrongly.
    """
    memo = {} if memo is None else memo
    return _value_key(f, memo, depth)


def _code_key(f, memo: dict, depth: int) -> tuple:
    code = f.__code__
    if id(f) in memo:
        key = memo[id(f)]
        return ("recursive", code) if key is None else key
    memo[id(f)] = None  # a function that reads itself (recursion) stops here
    cells = []
    for c in f.__closure__ or ():
        try:
            cells.append(_value_key(c.cell_contents, memo, depth + 1))
        except ValueError:  # an empty cell (a name bound later in the enclosing function)
            cells.append(("empty",))
    defaults = tuple(_value_key(d, memo, depth + 1) for d in (f.__defaults__ or ()))
    kwdefaults = tuple((k, _value_key(v, memo, depth + 1))
                       for k, v in sorted((f.__kwdefaults__ or {}).items()))
    reads: tuple = ()
    if not _is_library(f):
        g = f.__globals__
        names = _global_names(code)
        read = []
        for name in names:
            if name in g:
                read.append((name, _global_key(g[name], names, memo, depth + 1)))
        reads = tuple(read)
    key = ("fn", code, tuple(cells), defaults, kwdefaults, reads)
    memo[id(f)] = key
    return key


def _global_key(x: Any, names: tuple, memo: dict, depth: int) -> Any:
    """A global's key; for a module, also the plain values of the attributes the code may read
    (``cfg.A``), since those are module globals too."""
    if isinstance(x, types.ModuleType):
        if _is_library(x) or (x.__name__.split(".")[0] in _LIBRARY_ROOTS):
            return ("module", x.__name__)
        attrs = []
        for n in names:
            v = getattr(x, n, None)
            if v is not None and not callable(v) and not isinstance(v, types.ModuleType):
                attrs.append((n, _value_key(v, memo, depth + 1)))
            elif callable(v) and hasattr(v, "__code__"):
                attrs.append((n, _value_key(v, memo, depth + 1)))
        return ("module", _Same(x), tuple(attrs))
    return _value_key(x, memo, depth)


def _frozen(x) -> bool:
    params = getattr(type(x), "__dataclass_params__", None)
    return bool(params is not None and params.frozen)


def _value_key(x: Any, memo: dict, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _Uncacheable("nested too deeply")
    if isinstance(x, (bool, int, str, bytes, type(None))):
        return ("value", type(x), x)
    if isinstance(x, (float, complex)):  # repr: NaN equals NaN, -0.0 differs from 0.0
        return ("value", type(x), repr(x))
    if isinstance(x, types.FunctionType):
        return _code_key(x, memo, depth)
    if isinstance(x, types.MethodType):
        return ("method", _value_key(x.__func__, memo, depth + 1),
                _value_key(x.__self__, memo, depth + 1))
    if isinstance(x, functools.partial):
        return ("partial", _value_key(x.func, memo, depth + 1),
                tuple(_value_key(a, memo, depth + 1) for a in x.args),
                tuple((k, _value_key(v, memo, depth + 1)) for k, v in sorted(x.keywords.items())))
    if isinstance(x, jax.Array):  # immutable; identity, kept alive by the key
        return ("array", _Same(x))
    if isinstance(x, np.ndarray):  # mutable in place: by content
        if x.dtype == object:
            raise _Uncacheable("a numpy array of objects")
        data = np.ascontiguousarray(x)
        return ("ndarray", data.dtype.str, data.shape,
                hashlib.blake2b(data.tobytes(), digest_size=16).digest())
    if isinstance(x, np.generic):
        return ("npscalar", x.dtype.str, x.tobytes())
    if isinstance(x, (np.dtype, type, types.ModuleType, types.BuiltinFunctionType)):
        return ("same", _Same(x))
    if isinstance(x, (tuple, list, set, frozenset)):
        if len(x) > _MAX_ITEMS:
            raise _Uncacheable(f"a {type(x).__name__} of {len(x)} items")
        items = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
        return (type(x),) + tuple(_value_key(v, memo, depth + 1) for v in items)
    if isinstance(x, dict):
        if len(x) > _MAX_ITEMS:
            raise _Uncacheable(f"a dict of {len(x)} items")
        return (type(x),) + tuple((_value_key(k, memo, depth + 1),
                                   _value_key(v, memo, depth + 1)) for k, v in x.items())
    if _is_library(type(x)) and (not hasattr(x, "__dict__") or _frozen(x)):
        # Installed code's objects without attributes to reassign (jit wrappers, ufuncs, a
        # Brax or MJX model, which are frozen dataclasses of arrays): by identity.
        return ("same", _Same(x))
    if hasattr(x, "__dict__") or hasattr(type(x), "__slots__"):
        fields = dict(getattr(x, "__dict__", {}))
        for slot in getattr(type(x), "__slots__", ()):
            if isinstance(slot, str) and hasattr(x, slot):
                fields[slot] = getattr(x, slot)
        return ("object", type(x), _Same(x), _value_key(fields, memo, depth + 1))
    raise _Uncacheable(f"a {type(x).__name__}")


def compile_key(system: System) -> tuple:
    """What a compiled function of ``system`` depends on: its functions (by `_function_key`)
    and meta-loss rule, not the `System` object. Two builds of the same system, or copies
    that differ in θ, name or metadata (`System.replace`), share compiled functions."""
    fns = (system.init, system.step, system.phase, system.with_phase)
    memo: dict = {}
    return tuple(_function_key(f, memo) for f in fns) + (system.meta_loss,)


def cache_by_functions(maxsize: int = 64):
    """Decorator for ``build(system, *args)`` → compiled function: cached on
    ``(compile_key(system), *args)`` instead of on the `System` object's identity, so a
    system rebuilt by its factory (every command, figure and estimator builds its own)
    reuses the programs compiled for the last build instead of compiling again (a Brax
    step compiles in 30 to 70 s on 2 CPU cores)."""

    def deco(build):
        cache: dict = {}

        @functools.wraps(build)
        def wrapper(system: System, *args):
            try:
                key = (compile_key(system),) + args
            except _Uncacheable:  # correctness first: compile for this call alone
                return build(system, *args)
            if key in cache:
                cache[key] = cache.pop(key)  # most recently used last
                return cache[key]
            fn = build(system, *args)
            cache[key] = fn
            while len(cache) > maxsize:
                cache.pop(next(iter(cache)))
            return fn

        wrapper.cache_clear = cache.clear
        return wrapper

    return deco
