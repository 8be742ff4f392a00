"""The one-step state-transition Jacobian ∂phase_{t+1}/∂phase_t of a `System`.

Matrix-free (jvp/vjp linear operators) and, when small enough, dense (`jax.jacfwd`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from chaosgrad import deprecation
from chaosgrad.checks import MAX_DENSE_DIM, check_dense  # noqa: F401 -- re-exported
from chaosgrad.system import System, default_key, resolve_theta, split_run_key, step_key
from chaosgrad.system import is_key as _is_key

PyTree = Any


def phase_map(
    system: System, theta: PyTree, state: PyTree, steps_key: jax.Array, t
) -> tuple[Callable[[jax.Array], tuple[jax.Array, PyTree]], jax.Array]:
    """The step as a map of flat phase vectors, at ``state`` and global step ``t``.

    Returns ``(f, x)`` where ``x`` is the flat phase of ``state`` and ``f(x) -> (x_next,
    next_state)``: the parts of the state outside the phase (counters, data keys) are held
    at their values in ``state``. ``f`` is meant for ``jax.linearize(f, x, has_aux=True)``.
    """
    x, unravel = system.flat_phase(state)
    kt = step_key(steps_key, t)

    def f(xf):
        new_state, _ = system.step(system.set_phase(state, unravel(xf)), theta, kt)
        x_next, _ = system.flat_phase(new_state)
        return x_next, new_state

    return f, x


class StepJacobian(NamedTuple):
    """The one-step Jacobian J at a state, as a linear operator on flat phase vectors.

    Attributes:
      matvec: v ↦ J v (a jvp).
      rmatvec: u ↦ Jᵀ u (a vjp).
      x: the flat phase at which J is taken.
      x_next: the flat phase one step later.
      n: the phase dimension (J is n × n).
    """

    matvec: Callable[[jax.Array], jax.Array]
    rmatvec: Callable[[jax.Array], jax.Array]
    x: jax.Array
    x_next: jax.Array
    n: int

    def dense(self) -> jax.Array:
        """J as an n × n matrix (n jvps); only for small n."""
        check_dense(self.n)
        return jax.vmap(self.matvec, in_axes=1, out_axes=1)(jnp.eye(self.n, dtype=self.x.dtype))


def start_run(system: System, theta: PyTree, key: jax.Array | None, state: PyTree):
    """θ (or the system's default), the state (or ``init`` from the key's init half), the
    key the steps derive from, and the run key itself (PRNGKey(0) when None)."""
    theta = resolve_theta(system, theta)
    key = default_key(key)
    k_init, k_steps = split_run_key(key)
    if state is None:
        state = system.init(k_init, theta)
    return theta, state, k_steps, key


def _key_then_state(name: str, key, state):
    """``(key, state)`` in the order ``(system, theta, key, state, t)``. The order before
    0.2.0, ``(system, theta, state, key, t)``, still works with a DeprecationWarning: it is
    recognised by a third argument that is not a key (a state) or a key in the fourth."""
    if (key is not None and not _is_key(key)) or (key is None and _is_key(state)):
        deprecation.warn(
            f"{name}(system, theta, state, key, t)",
            f"{name}(system, theta, key, state, t) or keywords",
            stacklevel=4,
        )
        return state, key
    return key, state


def step_jacobian_operator(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    state: PyTree = None,
    t: int = 0,
) -> StepJacobian:
    """The Jacobian of one step at ``state`` (default: the initial state), matrix-free.

    ``key`` is the run key as in `chaosgrad.unroll`: step ``t`` uses the same step key as
    step ``t`` of an unroll from that key. Arguments in the order of every entry point,
    ``(system, theta, key, ...)``; the order before 0.2.0, ``(system, theta, state, key,
    t)``, still works and warns.
    """
    key, state = _key_then_state("step_jacobian_operator", key, state)
    theta, state, k_steps, _ = start_run(system, theta, key, state)
    f, x = phase_map(system, theta, state, k_steps, t)
    x_next, jvp, _ = jax.linearize(f, x, has_aux=True)
    _, vjp = jax.vjp(lambda xf: f(xf)[0], x)
    return StepJacobian(
        matvec=jvp, rmatvec=lambda u: vjp(u)[0], x=x, x_next=x_next, n=int(x.shape[0])
    )


def step_jacobian(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    state: PyTree = None,
    t: int = 0,
    *,
    max_dim: int = MAX_DENSE_DIM,
) -> jax.Array:
    """The one-step Jacobian ∂phase_{t+1}/∂phase_t as a dense n × n matrix (``jax.jacfwd``),
    at ``state`` (default: the initial state from ``key``) and global step ``t``.

    Arguments as in `step_jacobian_operator` (the old order ``(system, theta, state, key,
    t)`` still works and warns).
    """
    key, state = _key_then_state("step_jacobian", key, state)
    theta, state, k_steps, _ = start_run(system, theta, key, state)
    f, x = phase_map(system, theta, state, k_steps, t)
    check_dense(int(x.shape[0]), max_dim)
    return jax.jacfwd(lambda xf: f(xf)[0])(x)
