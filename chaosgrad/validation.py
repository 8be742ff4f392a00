"""Validation of a `chaosgrad.system.System` by tracing: `check_system` runs ``init``,
``step`` and the phase round trip once under `jax.eval_shape` (no compute) and names the
function and what was expected in an InputError; a (system, θ signature) pair is checked
once.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from chaosgrad._types import PyTree
from chaosgrad.errors import InputError

if TYPE_CHECKING:  # the record; chaosgrad.system imports this module
    from chaosgrad.system import System


# Systems already checked, with the θ signatures they were checked with. Weak keys: a
# system built in a loop is forgotten with it. `System` hashes by identity (eq=False).
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Systems built by chaosgrad's own factories (`chaosgrad.systems.make` of a registered name):
# their init, step and phase functions are checked by the test suite
# (tests/test_fuzz.py::test_built_in_systems_pass_the_full_check), so at their default θ's
# signature the tracing checks are skipped (each traces the step again: seconds for an MJX
# or Brax model, on every command). A θ of another signature is checked in full; a copy
# (`dataclasses.replace`) or a user's factory is never in this set.
_BUILT_IN: weakref.WeakSet = weakref.WeakSet()


def mark_built_in(system: System) -> System:
    """Record ``system`` as built by chaosgrad's own factory (see `_BUILT_IN`)."""
    _BUILT_IN.add(system)
    return system


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
        raise InputError(
            f"{what} of system {system.name!r} cannot be traced by JAX: "
            f"{type(e).__name__}: {first}{hint}"
        ) from None


def check_system(system: System, theta: PyTree = None, *, batched: bool = False) -> None:
    """Check ``system`` with ``theta`` by tracing it once with `jax.eval_shape` (no compute).

    θ must match the system's default θ in tree structure and leaf shapes, with floating
    leaves; ``step(state, theta, key)`` must return ``(state, out)`` with the state's
    structure, shapes and dtypes unchanged and a scalar float loss. Each failure is an
    InputError naming the function and what was expected. A (system, θ signature) pair is
    checked once; later calls cost a dictionary look-up. A system built by
    `chaosgrad.systems.make` from one of chaosgrad's own factories is not traced at its
    default θ's signature (the test suite checks those functions); θ itself is still checked.
    """
    from chaosgrad.system import loss_of  # here: chaosgrad.system imports this module

    theta = system.theta if theta is None else theta
    if theta is None:
        raise InputError(f"no theta given and system {system.name!r} has no default theta")
    if batched:  # check one member of the batch
        theta = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(_shape(x)[1:], _dtype(x)), theta
        )
    sig = _signature(theta)
    seen = _CHECKED.setdefault(system, set())
    if sig in seen:
        return
    name = system.name
    bad = [
        _dtype(x).name
        for x in jax.tree_util.tree_leaves(theta)
        if not jnp.issubdtype(_dtype(x), jnp.floating)
    ]
    if bad:
        raise InputError(
            f"theta of system {name!r} must have floating-point leaves (its "
            f"gradient is taken); got {', '.join(bad)} leaves"
        )
    if system.theta is not None and theta is not system.theta:
        d_leaves, d_tree = jax.tree_util.tree_flatten(system.theta)
        leaves, tree = jax.tree_util.tree_flatten(theta)
        if tree != d_tree:  # type: ignore[operator]  # jaxlib's PyTreeDef stub has no __ne__
            raise InputError(
                f"theta of system {name!r} has structure {tree}; expected the "
                f"structure of its default theta, {d_tree}"
            )
        for i, (a, b) in enumerate(zip(leaves, d_leaves, strict=True)):
            if _shape(a) != _shape(b):
                where = f" (leaf {i})" if len(leaves) > 1 else ""
                raise InputError(
                    f"theta of system {name!r} has shape {list(_shape(a))}"
                    f"{where}; expected {list(_shape(b))} like its default "
                    "theta"
                )
    if sum(int(np.prod(_shape(x))) for x in jax.tree_util.tree_leaves(theta)) == 0:
        raise InputError(
            f"theta of system {name!r} has no entries (size 0): the gradient is "
            "taken with respect to theta; give it at least one parameter"
        )
    if system in _BUILT_IN and system.theta is not None and sig == _signature(system.theta):
        seen.add(sig)  # its functions are checked by the test suite at this signature
        return
    th = jax.tree_util.tree_map(_spec, theta)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = _trace(system, "init(key, theta)", system.init, key, th)
    cplx = [
        f"{x.dtype.name}{list(x.shape)}"
        for x in jax.tree_util.tree_leaves(state)
        if jnp.issubdtype(x.dtype, jnp.complexfloating)
    ]
    if cplx:
        raise InputError(
            f"init(key, theta) of system {name!r} returned a complex state "
            f"({', '.join(cplx[:3])}); chaosgrad takes real states: keep the "
            "real and imaginary parts as two float leaves"
        )
    result = _trace(system, "step(state, theta, key)", system.step, state, th, key)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        got = (
            f"a {type(result).__name__} of {len(result)}"
            if isinstance(result, (tuple, list))
            else f"{type(result).__name__} {_describe_leaves(result)}"
        )
        raise InputError(
            f"step(state, theta, key) of system {name!r} must return (new_state, out); got {got}"
        )
    new_state, out = result
    s_leaves, s_tree = jax.tree_util.tree_flatten(state)
    n_leaves, n_tree = jax.tree_util.tree_flatten(new_state)
    if s_tree != n_tree:  # type: ignore[operator]  # jaxlib's PyTreeDef stub has no __ne__
        raise InputError(
            f"step(state, theta, key) of system {name!r} returned a state of "
            f"structure {n_tree}; expected the structure init made, {s_tree}"
        )
    for i, (a, b) in enumerate(zip(n_leaves, s_leaves, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            where = f" (leaf {i})" if len(s_leaves) > 1 else ""
            raise InputError(
                f"step(state, theta, key) of system {name!r} returned a state "
                f"{a.dtype.name}{list(a.shape)}{where}; expected it unchanged "
                f"from init: {b.dtype.name}{list(b.shape)}"
            )
    loss = loss_of(out)
    if _shape(loss) != () or not jnp.issubdtype(_dtype(loss), jnp.floating):
        raise InputError(
            f"step(state, theta, key) of system {name!r} returned a loss "
            f"{_dtype(loss).name}{list(_shape(loss))}; expected a "
            "scalar float (the per-step loss)"
        )
    if system.phase is not None and not _check_phase_round_trip(system, state, theta, batched):
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
    if b_tree != s_tree or any(  # type: ignore[operator]  # as above
        a.shape != b.shape or a.dtype != b.dtype for a, b in zip(b_leaves, s_leaves, strict=True)
    ):
        raise InputError(
            f"with_phase(state, phase) of system {name!r} must return a state "
            "like init's (same structure, shapes and dtypes)"
        )
    if any(not jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(p)):
        raise InputError(
            f"phase(state) of system {name!r} must return floating-point "
            "leaves (the Jacobian is taken over them)"
        )
    if batched:
        return True  # its functions are those of the unbatched θ, checked there
    if any(
        isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))
        for x in jax.tree_util.tree_leaves(theta)
    ):
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
        raise InputError(
            f"with_phase of system {name!r} is not the inverse of phase: "
            "phase(with_phase(state, p)) differs from p (by "
            f"{100 * err:.3g}% of a small change to p); the Jacobians would be "
            "wrong. with_phase(state, phase) must put the phase back"
        )
    return True
