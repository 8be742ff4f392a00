"""A test helper shared by the rigid-body tests (Brax, MJX): a system's one-step Jacobian
next to central finite differences of the same phase map."""

import jax
import jax.numpy as jnp

from chaosgrad.jacobian import phase_map, step_jacobian
from chaosgrad.system import split_run_key


def jac_and_fd(system, state, key, h=1e-6):
    """Dense jacfwd Jacobian and central differences of the same phase map, one compile."""
    _, k_steps = split_run_key(key)

    @jax.jit
    def both(s):
        jac = step_jacobian(system, system.theta, key, s)
        f, x = phase_map(system, system.theta, s, k_steps, 0)
        e = jnp.eye(x.shape[0], dtype=x.dtype) * h
        fpm = jax.vmap(lambda d: f(x + d)[0])(jnp.concatenate([e, -e]))
        fp, fm = jnp.split(fpm, 2)
        return jac, ((fp - fm) / (2 * h)).T

    return both(state)
