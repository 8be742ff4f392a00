"""Unrolls of a `System`: jitted, chunked `lax.scan` that compiles once per chunk size.

Also the meta-gradient of an unroll by chunk-wise reverse mode (compile once, memory
O(T/chunk) saved states) and `rollout`/`unrolled_loss`, pure functions to use inside jit.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from chaosgrad.errors import InputError
from chaosgrad.progress import progress_bar
from chaosgrad.system import (
    System,
    default_key,
    done_of,
    float_leaves_phase,
    float_leaves_with_phase,
    is_key_batch,
    loss_of,
    resolve_theta,
    split_run_key,
    step_key,
)

PyTree = Any
DEFAULT_CHUNK = 256


def check_steps(steps, name: str = "steps") -> int:
    """``steps`` as a positive int, or an InputError naming what is accepted."""
    try:
        n = int(steps)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive integer, got {steps!r}") from None
    if n != steps or n <= 0:
        raise InputError(f"{name} must be a positive integer, got {steps!r}")
    return n


def loss_weights(kind: str, t: jax.Array, n: jax.Array) -> jax.Array:
    """Weights w_t of per-step losses in the meta-loss Σ_t w_t ℓ_t, for t in [0, n)."""
    inside = (t >= 0) & (t < n)
    if kind == "mean":
        return jnp.where(inside, 1.0 / n, 0.0)
    if kind == "sum":
        return jnp.where(inside, 1.0, 0.0)
    if kind == "last":
        return jnp.where(t == n - 1, 1.0, 0.0)
    raise InputError(f"meta_loss {kind!r} is not accepted: use 'mean', 'sum' or 'last'")


def meta_loss_of(system: System, losses: jax.Array) -> jax.Array:
    """The meta-loss of per-step ``losses`` (last axis = steps) under the system's rule."""
    n = losses.shape[-1]
    w = loss_weights(system.meta_loss, jnp.arange(n), n).astype(losses.dtype)
    return weighted_sum(w, losses)


def weighted_sum(w: jax.Array, losses: jax.Array) -> jax.Array:
    """Σ_t w_t ℓ_t over the last axis, where steps of weight 0 contribute nothing.

    A step outside the meta-loss (weight 0) cannot turn it into NaN; a NaN or Inf inside it
    (weight ≠ 0) propagates, so it is reported rather than averaged away.
    """
    return jnp.sum(jnp.where(w != 0, w * losses, 0.0), axis=-1)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every floating-point leaf of ``tree`` is finite."""
    leaves = float_leaves_phase(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _tree_where(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


# -- pure rollouts, for use inside jit --------------------------------------------------------
def rollout(
    system: System,
    theta: PyTree,
    state: PyTree,
    steps_key: jax.Array,
    steps: int,
    *,
    t0: int | jax.Array = 0,
    remat_chunk: int | None = None,
) -> tuple[PyTree, jax.Array]:
    """Run ``steps`` steps from ``state`` (pure, jittable, differentiable, vmappable).

    Args:
      system, theta, state: the system, its parameters and the state to start from.
      steps_key: the key the step keys derive from (step t uses ``fold_in(steps_key, t)``).
      steps: a static int.
      t0: the global index of the first step (may be traced).
      remat_chunk: if given, ``jax.checkpoint`` every chunk of this many steps, so reverse
        mode stores one state per chunk instead of every step's activations.

    Returns:
      (final state, per-step losses of shape (steps,)).
    """

    def body(s, i):
        s, out = system.step(s, theta, step_key(steps_key, t0 + i))
        return s, loss_of(out)

    if not remat_chunk or remat_chunk >= steps:
        return lax.scan(body, state, jnp.arange(steps))
    n_full, rest = divmod(steps, remat_chunk)

    @jax.checkpoint
    def chunk(s, c):
        return lax.scan(body, s, c * remat_chunk + jnp.arange(remat_chunk))

    state, losses = lax.scan(chunk, state, jnp.arange(n_full))
    losses = losses.reshape(-1)
    if rest:
        state, tail = lax.scan(body, state, n_full * remat_chunk + jnp.arange(rest))
        losses = jnp.concatenate([losses, tail])
    return state, losses


def unrolled_loss(
    system: System,
    theta: PyTree,
    key: jax.Array,
    steps: int,
    *,
    state: PyTree = None,
    remat_chunk: int | None = None,
) -> jax.Array:
    """The meta-loss of a ``steps``-step unroll from ``key`` (pure; ``jax.grad`` it).

    The state starts from ``system.init`` (with the key's init half) unless ``state`` is
    given. Use ``remat_chunk`` for long unrolls under reverse mode.
    """
    k_init, k_steps = split_run_key(key)
    if state is None:
        state = system.init(k_init, theta)
    _, losses = rollout(system, theta, state, k_steps, steps, remat_chunk=remat_chunk)
    return meta_loss_of(system, losses)


# -- chunked drivers: compile once per (system, chunk), loop on the host -----------------------
def _chunk_body(system: System, chunk: int, record: bool):
    """Unbatched chunk: steps t0 … t0+chunk-1, masked to t < t_end (a traced int)."""

    def run(state, theta, steps_key, t0, t_end):
        def body(s, i):
            t = t0 + i
            new, out = system.step(s, theta, step_key(steps_key, t))
            active = t < t_end
            new = _tree_where(active, new, s)
            phase = system.get_phase(new)
            ys = {"loss": loss_of(out), "finite": all_finite(phase)}
            done = done_of(out)
            if done is not None:
                ys["done"] = done
            if record:
                ys["phase"] = phase
            return new, ys

        return lax.scan(body, state, jnp.arange(chunk))

    return run


@functools.lru_cache(maxsize=64)
def _jit_chunk(system: System, chunk: int, record: bool, batched: bool, theta_batched=False):
    run = _chunk_body(system, chunk, record)
    if batched or theta_batched:
        run = jax.vmap(run, in_axes=(0, 0 if theta_batched else None, 0 if batched else None,
                                     None, None))
    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _jit_init(system: System, batched: bool, theta_batched: bool = False):
    init = system.init
    if batched or theta_batched:
        init = jax.vmap(init, in_axes=(0 if batched else None, 0 if theta_batched else None))
    return jax.jit(init)


def initial_state(
    system: System, theta: PyTree, key: jax.Array, theta_batched: bool = False
) -> PyTree:
    """The state ``system.init`` makes from the init half of ``key`` (or of each key).

    With ``theta_batched`` the leading axis of every leaf of ``theta`` is a batch.
    """
    batched = is_key_batch(key)
    k_init = jax.vmap(split_run_key)(key)[0] if batched else split_run_key(key)[0]
    return _jit_init(system, batched, theta_batched)(k_init, theta)


class UnrollResult(NamedTuple):
    """What `unroll` returns. With a batch of keys every field has a leading batch axis.

    Attributes:
      losses: per-step losses ℓ_t, shape (T,) (NaN/Inf kept as they are).
      meta_loss: the meta-loss (mean of the losses unless the system says otherwise).
      state: the final state.
      trajectory: the phase after each step (leading axis T), when asked for; else None.
      nonfinite_losses: how many per-step losses are NaN or ±Inf.
      nonfinite_steps: how many steps left a non-finite value in the phase.
      first_nonfinite_step: the first step whose loss or phase was non-finite (-1: none).
      done: per-step ``done`` flags, when the system reports them; else None.
      steps: T.
    """

    losses: np.ndarray
    meta_loss: np.ndarray
    state: PyTree
    trajectory: PyTree | None
    nonfinite_losses: np.ndarray
    nonfinite_steps: np.ndarray
    first_nonfinite_step: np.ndarray
    done: np.ndarray | None
    steps: int


def _first_true(mask: np.ndarray) -> np.ndarray:
    any_ = mask.any(axis=-1)
    return np.where(any_, mask.argmax(axis=-1), -1)


def unroll(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    steps: int | None = None,
    *,
    state: PyTree = None,
    t0: int = 0,
    chunk: int | None = None,
    trajectory: bool = False,
    progress: bool | None = None,
    theta_batched: bool = False,
) -> UnrollResult:
    """Run ``steps`` steps of ``system`` in jitted chunks of ``lax.scan``.

    The chunk function compiles once (per chunk size and batch shape) and is reused for
    any number of steps; the last partial chunk is masked, not recompiled.

    Args:
      system: the system.
      theta: its parameters (default: ``system.theta``).
      key: a PRNG key, or a batch of keys (shape (B, 2)) to run B unrolls in one vmap.
        Default: ``PRNGKey(0)``.
      steps: the number of steps T (default: ``system.horizon``).
      state: the state to start from (default: ``system.init`` with the key's init half);
        batched like the keys.
      t0: global index of the first step (step keys are ``fold_in(key, t)``).
      chunk: steps per compiled chunk (default: min(T, 256)).
      trajectory: also return the phase after every step.
      progress: show a progress bar (default: only for long unrolls on a terminal).
      theta_batched: the leading axis of every leaf of ``theta`` is a batch of parameter
        settings, run together in one vmap (with one key: the same randomness for each).

    Returns:
      An `UnrollResult`; non-finite values are counted, never zeroed.
    """
    theta = resolve_theta(system, theta, batched=bool(theta_batched))
    key = default_key(key)
    steps = check_steps(system.horizon if steps is None else steps)
    chunk = min(steps, DEFAULT_CHUNK) if chunk is None else check_steps(chunk, "chunk")
    batched = is_key_batch(key)
    k_steps = jax.vmap(split_run_key)(key)[1] if batched else split_run_key(key)[1]
    if state is None:
        state = initial_state(system, theta, key, theta_batched)
    fn = _jit_chunk(system, chunk, bool(trajectory), batched, bool(theta_batched))
    n_chunks = math.ceil(steps / chunk)
    t_end = jnp.asarray(t0 + steps)
    parts = []
    bar = progress_bar(total=steps, desc=f"unroll {system.name}", enabled=progress, min_total=20000)
    with bar:
        for c in range(n_chunks):
            state, ys = fn(state, theta, k_steps, jnp.asarray(t0 + c * chunk), t_end)
            parts.append(ys)
            bar.update(min(chunk, steps - c * chunk))
    batched = batched or theta_batched
    axis = 1 if batched else 0

    def cat(name):
        x = np.concatenate([np.asarray(p[name]) for p in parts], axis=axis)
        return x[:, :steps] if batched else x[:steps]

    losses = cat("loss")
    finite_phase = cat("finite")
    bad_loss = ~np.isfinite(losses)
    traj = None
    if trajectory:
        traj = jax.tree_util.tree_map(
            lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=axis)[
                (slice(None),) * axis + (slice(0, steps),)
            ],
            *[p["phase"] for p in parts],
        )
    done = cat("done") if "done" in parts[0] else None
    return UnrollResult(
        losses=losses,
        meta_loss=np.asarray(meta_loss_of(system, jnp.asarray(losses))),
        state=state,
        trajectory=traj,
        nonfinite_losses=bad_loss.sum(axis=-1),
        nonfinite_steps=(~finite_phase).sum(axis=-1),
        first_nonfinite_step=_first_true(bad_loss | ~finite_phase),
        done=done,
        steps=steps,
    )


# -- the meta-gradient by chunk-wise reverse mode ---------------------------------------------
@functools.lru_cache(maxsize=64)
def _jit_grad_chunk(system: System, chunk: int, batched: bool):
    run = _chunk_body(system, chunk, record=False)

    def weighted(state, theta, steps_key, t0, t_start, t_end):
        out_state, ys = run(state, theta, steps_key, t0, t_end)
        t = t0 + jnp.arange(chunk) - t_start
        w = loss_weights(system.meta_loss, t, t_end - t_start).astype(ys["loss"].dtype)
        return out_state, weighted_sum(w, ys["loss"]), ys

    def bwd(state, theta, steps_key, t0, t_start, t_end, ct_floats):
        def f(floats, th):
            out_state, val, _ = weighted(
                float_leaves_with_phase(state, floats), th, steps_key, t0, t_start, t_end
            )
            return float_leaves_phase(out_state), val

        (_, val), vjp = jax.vjp(f, float_leaves_phase(state), theta)
        ct_in, ct_theta = vjp((ct_floats, jnp.ones_like(val)))
        return ct_in, ct_theta

    def fwd(state, theta, steps_key, t0, t_start, t_end):
        out_state, val, ys = weighted(state, theta, steps_key, t0, t_start, t_end)
        return out_state, val, ys["loss"], ys["finite"]

    if batched:
        fwd = jax.vmap(fwd, in_axes=(0, None, 0, None, None, None))
        bwd = jax.vmap(bwd, in_axes=(0, None, 0, None, None, None, 0))
    return jax.jit(fwd), jax.jit(bwd)


class GradResult(NamedTuple):
    """What `unroll_grad` returns (leading batch axis with a batch of keys).

    Attributes:
      meta_loss: the meta-loss of the unroll.
      grad: ∂(meta-loss)/∂θ, a pytree like θ (NaN/Inf kept as they are).
      losses: per-step losses, shape (T,).
      state: the final state.
      nonfinite_losses: number of non-finite per-step losses.
      nonfinite_grad: number of non-finite entries of the gradient.
      steps: T.
    """

    meta_loss: np.ndarray
    grad: PyTree
    losses: np.ndarray
    state: PyTree
    nonfinite_losses: np.ndarray
    nonfinite_grad: np.ndarray
    steps: int


def unroll_grad(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    steps: int | None = None,
    *,
    state: PyTree = None,
    t0: int = 0,
    chunk: int | None = None,
    progress: bool | None = None,
) -> GradResult:
    """The meta-loss of a T-step unroll and its exact gradient with respect to θ (backprop).

    Reverse mode runs chunk by chunk: a forward pass saves the state at each chunk boundary,
    then each chunk is recomputed and its vector–Jacobian product taken, last chunk first.
    One compiled forward and one compiled backward chunk serve every horizon, and memory is
    one state per chunk plus one chunk's activations.

    Args are those of `unroll` (a batch of keys gives one gradient per key). Masked steps
    past T inside the last chunk are computed and discarded; pick a ``chunk`` that divides
    T when the dynamics overflow (a masked overflow can turn a finite gradient into NaN).
    """
    theta = resolve_theta(system, theta)
    key = default_key(key)
    steps = check_steps(system.horizon if steps is None else steps)
    chunk = min(steps, 100) if chunk is None else check_steps(chunk, "chunk")
    batched = is_key_batch(key)
    k_steps = jax.vmap(split_run_key)(key)[1] if batched else split_run_key(key)[1]
    if state is None:
        state = initial_state(system, theta, key)
    fwd, bwd = _jit_grad_chunk(system, chunk, batched)
    n_chunks = math.ceil(steps / chunk)
    t_start, t_end = jnp.asarray(t0), jnp.asarray(t0 + steps)
    saved, vals, losses = [], [], []
    bar = progress_bar(
        total=2 * steps, desc=f"grad {system.name}", enabled=progress, min_total=20000
    )
    with bar:
        for c in range(n_chunks):
            saved.append(state)
            state, val, loss, _ = fwd(state, theta, k_steps, jnp.asarray(t0 + c * chunk),
                                      t_start, t_end)
            vals.append(np.asarray(val))
            losses.append(np.asarray(loss))
            bar.update(min(chunk, steps - c * chunk))
        ct = jax.tree_util.tree_map(jnp.zeros_like, float_leaves_phase(state))
        grad = None
        for c in reversed(range(n_chunks)):
            ct, g = bwd(saved[c], theta, k_steps, jnp.asarray(t0 + c * chunk), t_start, t_end, ct)
            grad = g if grad is None else jax.tree_util.tree_map(jnp.add, grad, g)
            bar.update(min(chunk, steps - c * chunk))
    axis = 1 if batched else 0
    losses = np.concatenate(losses, axis=axis)
    losses = losses[:, :steps] if batched else losses[:steps]
    leaves = jax.tree_util.tree_leaves(grad)
    if batched:
        bad = sum(np.sum(~np.isfinite(np.asarray(x).reshape(x.shape[0], -1)), axis=1)
                  for x in leaves)
    else:
        bad = sum(int(np.sum(~np.isfinite(np.asarray(x)))) for x in leaves)
    return GradResult(
        meta_loss=np.sum(np.stack(vals), axis=0),
        grad=grad,
        losses=losses,
        state=state,
        nonfinite_losses=(~np.isfinite(losses)).sum(axis=-1),
        nonfinite_grad=np.asarray(bad),
        steps=steps,
    )
