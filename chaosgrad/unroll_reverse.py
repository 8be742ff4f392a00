"""The meta-gradient of an unroll by chunk-wise reverse mode: `unroll_grad` and its
driver (compile once per chunk size; the residuals of every chunk kept while they fit in
`RESIDUAL_BUDGET`, else one state per step with each step recomputed, else one state per
chunk: the memory planner). The forward unroll it runs on is `chaosgrad.unroll`, which
re-exports `unroll_grad` and `GradResult`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from chaosgrad.checks import check_positive_int
from chaosgrad.progress import progress_bar
from chaosgrad.system import (
    System,
    cache_by_functions,
    default_key,
    float_leaves_phase,
    float_leaves_with_phase,
    is_key_batch,
    loss_of,
    resolve_theta,
    split_run_key,
    step_key,
)
from chaosgrad.unroll import (
    _tree_where,
    all_finite,
    loss_weights,
    weighted_sum,
)

PyTree = Any
GRAD_CHUNK = 256
# unroll_grad keeps every chunk's vjp residuals (jax.grad's cost and memory) while they
# fit in this many bytes, and recomputes chunk by chunk beyond it.
RESIDUAL_BUDGET = 256 * 2**20
CHUNK_BYTES = 4 * 2**20


# -- the meta-gradient by chunk-wise reverse mode ---------------------------------------------
@cache_by_functions(maxsize=64)
def _jit_start(system: System, batched: bool, make_state: bool):
    """``(key, theta, state) -> (state, steps_key)`` in one compiled call: the run key's
    split and, with ``make_state``, ``system.init`` on its init half."""

    def start(key, theta, state):
        k_init, k_steps = split_run_key(key)
        return (system.init(k_init, theta) if make_state else state), k_steps

    if batched:
        start = jax.vmap(start, in_axes=(0, None, 0 if not make_state else None))
    return jax.jit(start)


_RESIDUAL_BYTES: dict = {}


def _residual_bytes(system, theta, state, k_steps, chunk, batched, remat=False) -> int:
    """Bytes of one chunk's vjp residuals (from shapes alone; nothing runs; remembered per
    compiled chunk and argument shapes, since tracing costs more than a short unroll)."""
    fwd, _ = _jit_grad_chunk(system, chunk, batched, False, True, remat)
    args = (state, theta, k_steps)
    sig = (
        fwd,
        jax.tree_util.tree_structure(args),
        tuple((jnp.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(args)),
    )
    if sig not in _RESIDUAL_BYTES:
        z = 0
        shapes = jax.eval_shape(fwd, state, theta, k_steps, z, z, z)[4]
        _RESIDUAL_BYTES[sig] = sum(
            int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
            for a in jax.tree_util.tree_leaves(shapes)
        )
    return _RESIDUAL_BYTES[sig]


def _scan_chunk(system: System, chunk: int, masked: bool, remat: bool = False):
    """Differentiable chunk: a static-length scan of steps t0 … t0+chunk-1. Only the last,
    partial chunk of a run is ``masked`` to t < t_end; full chunks neither mask nor
    differentiate through masks. ``remat``: each step under ``jax.checkpoint``, so reverse
    mode keeps one state per step and recomputes the step's activations."""
    step_fn = jax.checkpoint(system.step) if remat else system.step

    def run(state, theta, steps_key, t0, t_end):
        def body(s, i):
            t = t0 + i
            new, out = step_fn(s, theta, step_key(steps_key, t))
            if masked:
                new = _tree_where(t < t_end, new, s)
            return new, (loss_of(out), all_finite(system.get_phase(new)))

        return lax.scan(body, state, jnp.arange(chunk))

    return run


@cache_by_functions(maxsize=64)
def _jit_grad_chunk(
    system: System, chunk: int, batched: bool, masked: bool, keep: bool, remat: bool = False
):
    """Compiled forward and backward chunks for `unroll_grad`.

    ``keep``: the forward also linearises and returns the vjp's residuals (a pytree, kept on
    the device), so the backward only applies them — the cost of ``jax.grad`` through the
    whole unroll, with its O(T) memory. Otherwise the backward recomputes its chunk from
    the saved start state (O(T / chunk) memory, one more forward per chunk); it also
    returns the chunk's primal outputs, so the last chunk needs no separate forward.
    """
    run = _scan_chunk(system, chunk, masked, remat)

    def f(state, floats, th, steps_key, t0, t_start, t_end):
        out_state, (losses, finite) = run(
            float_leaves_with_phase(state, floats), th, steps_key, t0, t_end
        )
        t = t0 + jnp.arange(chunk) - t_start
        w = loss_weights(system.meta_loss, t, t_end - t_start).astype(losses.dtype)
        val = weighted_sum(w, losses)
        return (float_leaves_phase(out_state), val), (out_state, losses, finite)

    def linearise(state, theta, steps_key, t0, t_start, t_end):
        (_, val), vjp, (out_state, losses, finite) = jax.vjp(
            lambda fl, th: f(state, fl, th, steps_key, t0, t_start, t_end),
            float_leaves_phase(state),
            theta,
            has_aux=True,
        )
        return out_state, val, losses, finite, vjp

    def pull(vjp, val, ct_floats, grad):
        ct_in, ct_theta = vjp((ct_floats, jnp.ones_like(val)))
        return ct_in, jax.tree_util.tree_map(jnp.add, grad, ct_theta)

    def fwd(state, theta, steps_key, t0, t_start, t_end):
        if keep:
            return linearise(state, theta, steps_key, t0, t_start, t_end)
        (_, val), (out_state, losses, finite) = f(
            state, float_leaves_phase(state), theta, steps_key, t0, t_start, t_end
        )
        return out_state, val, losses, finite

    def bwd_kept(vjp, val, ct_floats, grad):
        return pull(vjp, val, ct_floats, grad)

    def bwd_recompute(state, theta, steps_key, t0, t_start, t_end, ct_floats, grad):
        out_state, val, losses, finite, vjp = linearise(state, theta, steps_key, t0, t_start, t_end)
        ct_in, grad = pull(vjp, val, ct_floats, grad)
        return ct_in, grad, (out_state, val, losses, finite)

    if batched:
        fwd = jax.vmap(fwd, in_axes=(0, None, 0, None, None, None))
        bwd_kept = jax.vmap(bwd_kept)
        bwd_recompute = jax.vmap(bwd_recompute, in_axes=(0, None, 0, None, None, None, 0, 0))
    return jax.jit(fwd), jax.jit(bwd_kept if keep else bwd_recompute)


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
    keep_residuals: bool | None = None,
) -> GradResult:
    """The meta-loss of a T-step unroll and its exact gradient with respect to θ (backprop).

    Reverse mode runs chunk by chunk: a forward pass saves the state at each chunk boundary,
    then each chunk is recomputed and its vector–Jacobian product taken, last chunk first.
    One compiled forward and one compiled backward chunk serve every horizon, and memory is
    one state per chunk plus one chunk's activations.

    Args are those of `unroll` (a batch of keys gives one gradient per key), and
    ``keep_residuals``: keep every chunk's linearisation from the forward pass, so the
    backward pass costs what ``jax.grad`` of the whole unroll costs, with O(T) memory
    (False: recompute each chunk in the backward pass, memory one state per chunk). None
    picks the cheapest plan within ``RESIDUAL_BUDGET`` bytes: every step's residuals; else
    one state per step, each step's activations recomputed (``jax.checkpoint`` per step,
    with chunks of about ``CHUNK_BYTES`` of saved states when ``chunk`` is not given); else
    that and chunks recomputed. Only the last chunk, when ``chunk`` does not divide
    T, masks its steps past T; pick a ``chunk`` that divides T when the dynamics overflow
    (a masked overflow can turn a finite gradient into NaN).
    """
    theta = resolve_theta(system, theta)
    key = default_key(key)
    steps = check_positive_int(system.horizon if steps is None else steps)
    auto_chunk = chunk is None
    chunk = min(steps, GRAD_CHUNK) if chunk is None else check_positive_int(chunk, "chunk")
    batched = is_key_batch(key)
    state, k_steps = _jit_start(system, batched, state is None)(key, theta, state)
    n_chunks = math.ceil(steps / chunk)
    full = steps // chunk  # chunk index `full` exists only when chunk does not divide T
    # Cheapest plan that fits the memory budget: (1) keep every step's residuals (jax.grad's
    # cost); (2) keep one state per step and recompute each step's activations in the
    # backward pass (+1 forward; for steps whose activations dwarf their state, e.g. inner
    # training of a network, streaming them through memory costs more than recomputing);
    # (3) one state per chunk, chunks recomputed (+2 forwards).
    remat = False
    if keep_residuals is None:

        def fits(rm):
            return (
                _residual_bytes(system, theta, state, k_steps, chunk, batched, rm) * n_chunks
                <= RESIDUAL_BUDGET
            )

        keep_residuals = fits(False)
        if not keep_residuals:
            remat = True
            keep_residuals = fits(True)
            if auto_chunk:
                # Heavy steps: keep one chunk's saved states within a cache-sized block
                # (lopt digits MLP, T=1000: 5.2x forward at chunk 20, 8.3x at 256).
                per_step = (
                    _residual_bytes(system, theta, state, k_steps, chunk, batched, True) / chunk
                )
                fit = int(CHUNK_BYTES // max(per_step, 1.0))
                chunk = int(min(chunk, max(16, 2 ** int(math.log2(max(fit, 1))))))
                n_chunks = math.ceil(steps / chunk)
                full = steps // chunk
    fns = [
        _jit_grad_chunk(system, chunk, batched, c == full, bool(keep_residuals), remat)
        for c in range(n_chunks)
    ]
    # Python ints and numpy zeros go to the device with the call: no eager dispatch each.
    ts = [int(t0 + c * chunk) for c in range(n_chunks)]
    t_start, t_end = int(t0), int(t0 + steps)
    lead = (k_steps.shape[0],) if batched else ()
    grad = jax.tree_util.tree_map(
        lambda x: np.zeros(lead + jnp.shape(x), jnp.result_type(x)), theta
    )
    saved, vals, losses, outs = [], [], [], []
    bar = progress_bar(
        total=2 * steps, desc=f"grad {system.name}", enabled=progress, min_total=20000
    )
    # Nothing below waits on the host: chunks are dispatched asynchronously and their
    # outputs fetched once at the end (issue 12: a sync per chunk).
    with bar:
        last = n_chunks if keep_residuals else n_chunks - 1
        for c in range(last):
            saved.append(state)
            out = fns[c][0](state, theta, k_steps, ts[c], t_start, t_end)
            state, val, loss = out[:3]
            outs.append(out)
            vals.append(val)
            losses.append(loss)
            bar.update(min(chunk, steps - c * chunk))
        # The state keeps its shapes along the run: the end's cotangent is shaped like it.
        ct = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), float_leaves_phase(state))
        if not keep_residuals:
            saved.append(state)  # the last chunk's forward happens inside its backward
        for c in reversed(range(n_chunks)):
            bwd = fns[c][1]
            if keep_residuals:
                ct, grad = bwd(outs[c][4], vals[c], ct, grad)
            else:
                ct, grad, prim = bwd(saved[c], theta, k_steps, ts[c], t_start, t_end, ct, grad)
                if c == n_chunks - 1:
                    state, val, loss = prim[:3]
                    vals.append(val)
                    losses.append(loss)
            bar.update(min(chunk, steps - c * chunk))
    del saved, outs
    vals, losses, grad = jax.device_get((vals, losses, grad))
    axis = 1 if batched else 0
    losses = np.concatenate(losses, axis=axis)
    losses = losses[:, :steps] if batched else losses[:steps]
    leaves = jax.tree_util.tree_leaves(grad)
    if batched:
        bad = sum(
            np.sum(~np.isfinite(np.asarray(x).reshape(x.shape[0], -1)), axis=1) for x in leaves
        )
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
