"""Unrolls of a `System`: jitted, chunked `lax.scan` that compiles once per chunk size.

Also `pure_unroll`/`unrolled_loss`, pure functions to use inside jit. The meta-gradient of
an unroll by chunk-wise reverse mode (`unroll_grad`: compile once, memory O(T/chunk) saved
states) lives in `chaosgrad.unroll_reverse` and stays importable from here.

Every entry point takes the *run key* ``key``: its init half makes the initial state and its
steps half the step keys (`split_run_key`), so one key gives the same run everywhere.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax import lax

from chaosgrad import deprecation
from chaosgrad._types import PyTree
from chaosgrad.checks import check_positive_int
from chaosgrad.errors import InputError
from chaosgrad.progress import progress_bar
from chaosgrad.system import (
    System,
    cache_by_functions,
    default_key,
    done_of,
    float_leaves_phase,
    is_key_batch,
    loss_of,
    resolve_theta,
    split_run_key,
    step_key,
)

DEFAULT_CHUNK = 1024
TRAJECTORY_CHUNK = 256


# Deprecated alias (one name per concept): the rule lives in chaosgrad.checks.
check_steps = deprecation.alias(
    check_positive_int, "chaosgrad.unroll.check_steps", "chaosgrad.checks.check_positive_int"
)


def loss_weights(
    kind: str, t: jax.Array | np.ndarray, n: jax.Array | np.ndarray | int
) -> jax.Array:
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


# The name `_scan_chunk` reads (its body belongs to the speed work on the drivers; use
# `otu.tree_where` directly everywhere else).
_tree_where = otu.tree_where


# -- pure rollouts, for use inside jit --------------------------------------------------------
def pure_unroll(
    system: System,
    theta: PyTree,
    key: jax.Array,
    steps: int,
    *,
    state: PyTree = None,
    t0: int | jax.Array = 0,
    remat_chunk: int | None = None,
) -> tuple[PyTree, jax.Array]:
    """Run ``steps`` steps from the run key ``key`` (pure, jittable, differentiable,
    vmappable): the same run as ``unroll(system, theta, key, steps)``.

    Args:
      system: the system.
      theta: its parameters.
      key: the run key: ``system.init`` takes its init half (unless ``state`` is given) and
        step t uses ``fold_in(steps half, t)``, as in `unroll` and `unroll_grad`.
      steps: a static int.
      state: the state to start from (default: ``system.init`` with the key's init half).
      t0: the global index of the first step (may be traced); with ``state``, a run can go
        on where another stopped with the same key.
      remat_chunk: if given, ``jax.checkpoint`` every chunk of this many steps, so reverse
        mode stores one state per chunk instead of every step's activations.

    Returns:
      (final state, per-step losses of shape (steps,)).
    """
    k_init, k_steps = split_run_key(key)
    if state is None:
        state = system.init(k_init, theta)
    return _scan_steps(system, theta, state, k_steps, steps, t0=t0, remat_chunk=remat_chunk)


def _scan_steps(
    system: System,
    theta: PyTree,
    state: PyTree,
    steps_key: jax.Array,
    steps: int,
    *,
    t0: int | jax.Array = 0,
    remat_chunk: int | None = None,
):
    """`pure_unroll` from the *steps* half of a run key (what `rollout` took)."""

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
    """The meta-loss of a ``steps``-step unroll from the run key ``key`` (pure; ``jax.grad``
    it): the meta-loss of `pure_unroll`'s losses, the rule of `meta_loss_of`.

    The state starts from ``system.init`` (with the key's init half) unless ``state`` is
    given. Use ``remat_chunk`` for long unrolls under reverse mode.
    """
    _, losses = pure_unroll(system, theta, key, steps, state=state, remat_chunk=remat_chunk)
    return meta_loss_of(system, losses)


rollout = deprecation.alias(
    _scan_steps,
    "chaosgrad.unroll.rollout(system, theta, state, steps_key, steps)",
    "chaosgrad.unroll.pure_unroll(system, theta, key, steps, state=state), which takes the run "
    "key like every other entry point (steps_key was its steps half, split_run_key(key)[1])",
)


# -- chunked drivers: compile once per (system, chunk), loop on the host -----------------------
def _step_outputs(system: System, out, new, record: bool, checked: bool) -> dict:
    phase = system.get_phase(new)
    ys = {"loss": loss_of(out)}
    if checked:
        ys["finite"] = all_finite(phase)
    done = done_of(out)
    if done is not None:
        ys["done"] = done
    if record:
        ys["phase"] = phase
    return ys


def _chunk_body(system: System, chunk: int, record: bool, checked: bool = False):
    """Unbatched chunk for the forward unroll: steps t0 … min(t0 + chunk, t_end) − 1.

    The trip count is traced (a ``fori_loop`` writing into chunk-sized buffers), so one
    compilation runs full and partial chunks alike, with no masked or padded steps
    (measured: masking every step and padding the last chunk cost 1.8× a hand-written
    scan).

    Finiteness of the phase: ``checked`` records a flag per step (a reduction each step,
    ~20% of a small step). Unchecked, the chunk carries z ← z + 0·phase, which turns NaN
    for good at the first step whose phase holds a NaN or ±Inf, and which XLA fuses into
    the step's own elementwise work; ``ok`` is whether z ended finite, i.e. whether every
    step's phase was. The caller re-runs a chunk that is not ok with ``checked`` to learn
    which steps were non-finite, so the counts stay exact.

    Returns (state, per-step outputs padded to ``chunk``, next t0, ok); entries past the
    chunk's steps are zeros and are dropped on the host.
    """

    def run(state, theta, steps_key, t0, t_end):
        n = jnp.clip(t_end - t0, 0, chunk)

        def first(s):
            new, out = system.step(s, theta, step_key(steps_key, t0))
            return _step_outputs(system, out, new, record, checked)

        ys_shape = jax.eval_shape(first, state)
        bufs = jax.tree_util.tree_map(lambda a: jnp.zeros((chunk,) + a.shape, a.dtype), ys_shape)
        z0 = [jnp.zeros_like(x) for x in float_leaves_phase(system.get_phase(state))]

        def body(i, carry):
            s, bufs, z = carry
            new, out = system.step(s, theta, step_key(steps_key, t0 + i))
            ys = _step_outputs(system, out, new, record, checked)
            bufs = jax.tree_util.tree_map(
                lambda b, y: lax.dynamic_update_index_in_dim(b, y, i, 0), bufs, ys
            )
            if not checked:
                z = [
                    a + 0 * x
                    for a, x in zip(z, float_leaves_phase(system.get_phase(new)), strict=True)
                ]
            return new, bufs, z

        state, bufs, z = lax.fori_loop(0, n, body, (state, bufs, z0))
        ok = all_finite(z) if not checked else jnp.array(True)
        return state, bufs, t0 + n, ok

    return run


@cache_by_functions(maxsize=64)
def _jit_chunk(
    system: System,
    chunk: int,
    record: bool,
    batched: bool,
    theta_batched=False,
    first: bool = False,
    checked: bool = False,
):
    """The compiled chunk ``(state, theta, steps_key, t0, t_end) -> (state, ys, t0', ok)``
    (see `_chunk_body`).

    With ``first``, the first chunk of a run: ``(key, state, theta, t0, t_end) -> (state,
    ys, t0', ok, steps_key, state0)`` splits the run key and (when ``state`` is None) makes
    the initial state ``state0`` in the same call, so a one-chunk unroll is one dispatch."""
    run = _chunk_body(system, chunk, record, checked)
    if batched or theta_batched:
        run = jax.vmap(
            run,
            in_axes=(0, 0 if theta_batched else None, 0 if batched else None, None, None),
            out_axes=(0, 0, None, 0),
        )
    if not first:
        return jax.jit(run)
    init = system.init
    if batched or theta_batched:
        init = jax.vmap(init, in_axes=(0 if batched else None, 0 if theta_batched else None))

    def start(key, state, theta, t0, t_end):
        k_init, k_steps = jax.vmap(split_run_key)(key) if batched else split_run_key(key)
        if state is None:
            state = init(k_init, theta)
        return run(state, theta, k_steps, t0, t_end) + (k_steps, state)

    return jax.jit(start)


@cache_by_functions(maxsize=64)
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


@functools.lru_cache(maxsize=64)
def _host_weights(kind: str, steps: int, dtype: str) -> np.ndarray:
    """The meta-loss weights of `loss_weights` as a read-only numpy array (host side)."""
    w = {
        "mean": np.full(steps, 1.0 / steps),
        "sum": np.ones(steps),
        "last": (np.arange(steps) == steps - 1).astype(float),
    }[kind].astype(np.dtype(dtype))
    w.flags.writeable = False
    return w


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
    any number of steps: its trip count is traced, so a last partial chunk runs only its own
    steps (no masking, no padding) in the same compiled program.

    Args:
      system: the system.
      theta: its parameters (default: ``system.theta``).
      key: a PRNG key, or a batch of keys (shape (B, 2)) to run B unrolls in one vmap.
        Default: ``PRNGKey(0)``.
      steps: the number of steps T (default: ``system.horizon``).
      state: the state to start from (default: ``system.init`` with the key's init half);
        batched like the keys.
      t0: global index of the first step (step keys are ``fold_in(key, t)``).
      chunk: steps per compiled chunk (default: ``DEFAULT_CHUNK`` = 1024; with
        ``trajectory``, min(T, ``TRAJECTORY_CHUNK`` = 256), the steps buffered per chunk).
      trajectory: also return the phase after every step.
      progress: show a progress bar (default: only for long unrolls on a terminal).
      theta_batched: the leading axis of every leaf of ``theta`` is a batch of parameter
        settings, run together in one vmap (with one key: the same randomness for each).

    Returns:
      An `UnrollResult`; non-finite values are counted, never zeroed.
    """
    theta = resolve_theta(system, theta, batched=bool(theta_batched))
    key = default_key(key)
    steps = check_positive_int(system.horizon if steps is None else steps)
    if chunk is None:
        # The trip count is traced, so one chunk size serves every T; a recorded trajectory
        # is buffered per chunk, so keep that buffer no longer than the run.
        chunk = min(steps, TRAJECTORY_CHUNK) if trajectory else DEFAULT_CHUNK
    else:
        chunk = check_positive_int(chunk, "chunk")
    batched = is_key_batch(key)
    start = _jit_chunk(system, chunk, bool(trajectory), batched, bool(theta_batched), True)
    n_chunks = math.ceil(steps / chunk)
    # Looked up only when a second chunk runs: each look-up hashes what the system computes.
    fn = (
        _jit_chunk(system, chunk, bool(trajectory), batched, bool(theta_batched))
        if n_chunks > 1
        else None
    )
    # Chunk starts stay on the device (each chunk returns the next t0): no host transfer
    # or synchronisation between chunks.
    # Python ints: no eager dispatch, and the cheapest arguments for a jitted call.
    t, t_end = int(t0), int(t0 + steps)
    parts, oks, starts = [], [], []
    bar = progress_bar(total=steps, desc=f"unroll {system.name}", enabled=progress, min_total=20000)
    with bar:
        for c in range(n_chunks):
            if c == 0:
                state, ys, t_next, ok, k_steps, state0 = start(key, state, theta, t, t_end)
                starts.append((state0, t))
            else:
                starts.append((state, t))
                assert fn is not None  # looked up above whenever a second chunk runs
                state, ys, t_next, ok = fn(state, theta, k_steps, t, t_end)
            t = t_next
            parts.append(ys)
            oks.append(ok)
            bar.update(min(chunk, steps - c * chunk))
    key_batched, batched = batched, batched or theta_batched
    axis = 1 if batched else 0
    host, oks = jax.device_get((parts, oks))  # one transfer for every chunk's outputs
    finite = []
    all_ok = all(np.all(ok) for ok in oks)  # every phase finite: no per-step flags needed
    for c, (ys, ok) in enumerate(zip(host, oks, strict=True) if not all_ok else ()):
        if np.all(ok):
            finite.append(np.ones_like(ys["loss"], bool))
        else:  # some step left a NaN/Inf in the phase: find which, step by step
            checked = _jit_chunk(
                system, chunk, False, key_batched, bool(theta_batched), False, True
            )
            finite.append(
                np.asarray(
                    checked(*starts[c][:1], theta, k_steps, starts[c][1], t_end)[1]["finite"]
                )
            )

    def cat(xs):
        x = np.concatenate(xs, axis=axis) if len(xs) > 1 else xs[0]
        return x[:, :steps] if batched else x[:steps]

    losses = cat([p["loss"] for p in host])
    bad_loss = ~np.isfinite(losses)
    if all_ok:
        nonfinite_steps = np.zeros_like(bad_loss).sum(axis=-1)  # the type of a count below
        first_bad = _first_true(bad_loss)
    else:
        finite_phase = cat(finite)
        nonfinite_steps = (~finite_phase).sum(axis=-1)
        first_bad = _first_true(bad_loss | ~finite_phase)
    traj = None
    if trajectory:
        traj = jax.tree_util.tree_map(lambda *xs: cat(xs), *[p["phase"] for p in host])
    done = cat([p["done"] for p in host]) if "done" in host[0] else None
    # On the host: an eager jnp meta-loss would dispatch and sync once more per call.
    w = _host_weights(system.meta_loss, steps, losses.dtype.str)
    with np.errstate(invalid="ignore", over="ignore"):
        meta = np.sum(np.where(w != 0, w * losses, 0), axis=-1).astype(losses.dtype)
    return UnrollResult(
        losses=losses,
        meta_loss=meta,
        state=state,
        trajectory=traj,
        nonfinite_losses=bad_loss.sum(axis=-1),
        nonfinite_steps=nonfinite_steps,
        first_nonfinite_step=first_bad,
        done=done,
        steps=steps,
    )


# -- moved: the reverse-mode driver lives in chaosgrad.unroll_reverse --------------------------
# Looked up on first use (PEP 562): chaosgrad.unroll_reverse imports this module, so a plain
# import here would be a cycle. Every old name stays importable from chaosgrad.unroll.
_MOVED = frozenset(
    {
        "CHUNK_BYTES",
        "GRAD_CHUNK",
        "GradResult",
        "RESIDUAL_BUDGET",
        "_RESIDUAL_BYTES",
        "_jit_grad_chunk",
        "_jit_start",
        "_residual_bytes",
        "_scan_chunk",
        "unroll_grad",
    }
)


def __getattr__(name: str):
    if name in _MOVED:
        from chaosgrad import unroll_reverse

        return getattr(unroll_reverse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
