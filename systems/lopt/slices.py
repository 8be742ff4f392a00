"""Loss slices: the meta-loss of an unroll along a line θ + s·d in θ-space, for many shifts s
and seeds at once (one jitted vmap), and random directions to slice along.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from chaosgrad._types import PyTree
from chaosgrad.checks import check_positive_int
from chaosgrad.gradients import random_direction  # noqa: F401  (re-exported)
from chaosgrad.system import System, default_key, is_key_batch, resolve_theta
from chaosgrad.unroll import unrolled_loss


@functools.lru_cache(maxsize=16)
def _jit_slice(system: System, steps: int, remat_chunk: int | None):
    def one(theta, direction, s, key):
        th = jax.tree_util.tree_map(lambda t, d: t + s * d, theta, direction)
        return unrolled_loss(system, th, key, steps, remat_chunk=remat_chunk)

    over_keys = jax.vmap(one, in_axes=(None, None, None, 0))
    return jax.jit(jax.vmap(over_keys, in_axes=(None, None, 0, None)))


def meta_loss_along_line(
    system: System,
    theta: PyTree = None,
    direction: PyTree = None,
    shifts=(-0.01, 0.0, 0.01),
    steps: int | None = None,
    key: jax.Array | None = None,
    *,
    remat_chunk: int | None = None,
) -> np.ndarray:
    """Meta-loss of a ``steps``-step unroll at θ + s·direction for every shift s (and every
    run key of a batch): the raw values on a line through θ, one unroll per (shift, key).

    Not `chaosgrad.gradients.loss_slice`, which draws its own direction (normalised to unit
    norm), shifts by a radius and returns per-horizon curves with extrema counts; this one
    takes the direction as given (unnormalised: a shift s moves θ by s·‖d‖) and returns the
    array of losses for one unroll length, for one key or a batch.

    Args:
      system: the system.
      theta: the point θ (default ``system.theta``).
      direction: a pytree like θ (default: a Gaussian direction of norm = its size, from
        PRNGKey(0), as in the paper's Figure 3).
      shifts: the values of s.
      steps: the unroll length (default ``system.horizon``).
      key: a run key, or a batch of keys (B, 2): the same keys at every shift, so each
        curve holds the randomness fixed.

    Returns:
      Meta-losses of shape (len(shifts),), or (len(shifts), B) for a batch of keys;
      non-finite values are kept.
    """
    theta = resolve_theta(system, theta)
    steps = check_positive_int(system.horizon if steps is None else steps)
    if direction is None:
        n = ravel_pytree(theta)[0].shape[0]
        direction = random_direction(theta, jax.random.PRNGKey(0), norm=float(n))
    key = default_key(key)
    batched = is_key_batch(key)
    keys = key if batched else key[None]
    dtype = ravel_pytree(theta)[0].dtype
    out = _jit_slice(system, steps, remat_chunk)(theta, direction, jnp.asarray(shifts, dtype), keys)
    out = np.asarray(out)
    return out if batched else out[:, 0]
