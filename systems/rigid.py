"""Helpers shared by the rigid-body adapters (Brax, MJX): rotation-vector coordinates for
free-joint quaternions, the policies θ parameterises, and float casting of physics models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_positive_int
from chaosgrad.config import resolve_dtype, x64_enabled
from chaosgrad.errors import InputError

POLICIES = ("linear", "mlp", "paper")
# The paper's policy (Brax's default of 2021): 4 hidden layers of 32 swish units, a
# tanh-Normal action distribution whose mean and scale are the output layer's two halves.
PAPER_HIDDEN, PAPER_LAYERS = 32, 4
# brax.training's NormalTanhDistribution: scale = softplus(raw) + min_std
PAPER_MIN_STD = 1e-3


# -- rotation-vector coordinates for free-joint quaternions ----------------------------------
def quat_to_rotvec(q: jax.Array) -> jax.Array:
    """Rotation vector ω (angle · axis, |ω| ≤ π) of quaternions q = (w, x, y, z), shape (..., 4).

    q and −q are the same rotation: the hemisphere w ≥ 0 is used. Smooth at the identity
    (a series replaces angle/sin(angle/2) there), so jvp/vjp never see 0/0.
    """
    q = q * jnp.where(q[..., :1] < 0, -1.0, 1.0).astype(q.dtype)
    w, v = q[..., 0], q[..., 1:]
    s2 = jnp.sum(v * v, axis=-1)
    small = s2 < jnp.finfo(q.dtype).eps
    s = jnp.sqrt(jnp.where(small, 1.0, s2))
    w_safe = jnp.where(small, jnp.where(w == 0, 1.0, w), 1.0)
    # 2 atan2(s, w) / s, and its series 2/w (1 − s²/(3w²)) for s → 0
    factor = jnp.where(
        small, 2.0 / w_safe * (1.0 - s2 / (3.0 * w_safe**2)), 2.0 * jnp.arctan2(s, w) / s
    )
    return factor[..., None] * v


def rotvec_to_quat(omega: jax.Array) -> jax.Array:
    """Unit quaternion (w, x, y, z) of rotation vectors ω, shape (..., 3); smooth at ω = 0."""
    t2 = jnp.sum(omega * omega, axis=-1)
    small = t2 < jnp.finfo(omega.dtype).eps
    t = jnp.sqrt(jnp.where(small, 1.0, t2))
    half_sinc = jnp.where(small, 0.5 - t2 / 48.0, jnp.sin(0.5 * t) / t)
    c = jnp.where(small, 1.0 - t2 / 8.0, jnp.cos(0.5 * t))
    return jnp.concatenate([c[..., None], half_sinc[..., None] * omega], axis=-1)


def with_rotvecs(q: jax.Array, quats: np.ndarray, omega: jax.Array) -> jax.Array:
    """``q`` with the quaternions at index rows ``quats`` (shape (n, 4)) set from rotation
    vectors ``omega`` (shape (n, 3)), each on the hemisphere and with the norm of the
    quaternion it replaces (so a state is exact in value when ``omega`` is its own rotation
    vector). Brax's resets add noise to q, quaternions included, so they are not exactly of
    unit norm; `quat_to_rotvec` reads only the direction, and a unit quaternion put in place
    of a non-unit one would change the state by more than ``omega`` asks."""
    old = q[quats]
    sign = jnp.where(old[:, :1] < 0, -1.0, 1.0).astype(q.dtype)
    norm = jnp.linalg.norm(old, axis=-1, keepdims=True)
    return q.at[quats].set(sign * norm * rotvec_to_quat(omega))


# -- settings both adapters take ------------------------------------------------------------
def check_run_settings(horizon: int, action_noise: float, dtype) -> str:
    """Raise InputError unless the horizon is positive, the action noise non-negative and
    the dtype usable (float64 needs JAX's float64 mode); returns the dtype's name."""
    check_positive_int(horizon, "horizon")
    if not action_noise >= 0:
        raise InputError(f"action_noise must be >= 0, got {action_noise!r}")
    dt = jnp.dtype(resolve_dtype(dtype))
    if dt == jnp.float64 and not x64_enabled():
        raise InputError("dtype float64 needs JAX's float64 mode: call chaosgrad.enable_x64()")
    return dt.name


# -- policies ---------------------------------------------------------------------------------
def check_policy(policy: str, hidden: int, layers: int) -> None:
    """Raise InputError unless ``policy`` is one of `POLICIES` with usable sizes."""
    if policy not in POLICIES:
        raise InputError(f"unknown policy {policy!r}; accepted: {', '.join(POLICIES)}")
    if policy == "mlp" and (int(hidden) < 1 or int(layers) < 1):
        raise InputError(f"mlp policy needs hidden >= 1 and layers >= 1, got {hidden}, {layers}")


def policy_sizes(
    policy: str, obs_size: int, act_size: int, hidden: int = 32, layers: int = 2
) -> list[int]:
    """Layer widths from the observation to the output: ``linear`` [obs, act]; ``mlp``
    ``layers`` hidden of ``hidden``; ``paper`` 4 hidden of 32 and 2·act outputs (the mean
    and the raw scale of the tanh-Normal)."""
    if policy == "linear":
        return [obs_size, act_size]
    if policy == "paper":
        return [obs_size] + [PAPER_HIDDEN] * PAPER_LAYERS + [2 * act_size]
    return [obs_size] + [hidden] * layers + [act_size]


def policy_doc(policy: str, sizes: list[int]) -> str:
    """One line on what the policy computes."""
    if policy == "linear":
        return "linear: a = tanh(W obs + b)"
    if policy == "paper":
        return (
            f"the paper's: swish MLP {' -> '.join(map(str, sizes))} giving a tanh-Normal "
            "(mean m, scale softplus(s) + 0.001); deterministic a = tanh(m)"
        )
    return f"tanh MLP {' -> '.join(map(str, sizes))}"


def init_policy(key: jax.Array, sizes: list[int], scale: float, dtype) -> list[dict]:
    """Layers {"w": (n_in, n_out), "b": (n_out,)} with w ~ N(0, scale²/n_in), b = 0."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (n_in, n_out), dtype) * (scale / np.sqrt(n_in))
        layers.append({"w": w, "b": jnp.zeros((n_out,), dtype)})
    return layers


def apply_policy(theta: list[dict], obs: jax.Array) -> jax.Array:
    """Deterministic policy: tanh after every layer, so actions lie in [−1, 1]."""
    h = obs
    for layer in theta:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h


def paper_policy(theta: list[dict], obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The paper's policy: swish hidden layers, a linear output split into the tanh-Normal's
    pre-tanh mean and scale (softplus + `PAPER_MIN_STD`, as brax.training's)."""
    h = obs
    for layer in theta[:-1]:
        h = jax.nn.swish(h @ layer["w"] + layer["b"])
    out = h @ theta[-1]["w"] + theta[-1]["b"]
    mean, raw = jnp.split(out, 2, axis=-1)
    return mean, jax.nn.softplus(raw) + PAPER_MIN_STD


def policy_action(
    policy: str, theta: list[dict], obs: jax.Array, noise: float, key: jax.Array
) -> jax.Array:
    """The action of ``policy`` at ``obs``, with randomness only when ``noise`` > 0.

    ``linear``/``mlp``: a = π_θ(obs) + noise · N(0, 1). ``paper``: a = tanh(m) without noise
    (the deterministic loss), else a = tanh(m + noise · scale · N(0, 1)): ``noise = 1``
    samples the policy's own tanh-Normal.
    """
    if policy == "paper":
        mean, std = paper_policy(theta, obs)
        if noise:
            mean = mean + noise * std * jax.random.normal(key, mean.shape, mean.dtype)
        return jnp.tanh(mean)
    action = apply_policy(theta, obs)
    if noise:
        action = action + noise * jax.random.normal(key, action.shape, action.dtype)
    return action


def cast_floats(tree, dt):
    """``tree`` with every floating-point array leaf cast to ``dt`` (other leaves kept)."""

    def cast(x):
        if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dt)
        return x

    return jax.tree_util.tree_map(cast, tree)


def like(new, old):
    """``new`` with each leaf cast to the dtype of the matching leaf of ``old`` (a scan carry
    must keep one type; physics steps return some leaves as Python floats)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.asarray(n, jnp.asarray(o).dtype), new, old)
