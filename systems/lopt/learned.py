"""Learned optimizers: the per-parameter MLP of the paper's Figure 3 and a hierarchical one
(a per-tensor LSTM that sees training and validation losses and feeds the per-parameter MLP).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from chaosgrad.systems.lopt.optimizers import Optimizer
from chaosgrad.systems.lopt.tasks import mlp_apply, mlp_init

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIMESCALES = (1, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
N_PARAM_FEATURES = 2 + len(DECAYS)  # gradient, parameter, momenta
N_FEATURES = N_PARAM_FEATURES + len(TIMESCALES)  # 19, as in the paper
NORM_EPS = 1e-8
OUT_SCALE = 1e-3  # output = direction * exp(OUT_SCALE * magnitude) * lr


def time_features(step: jax.Array, dtype) -> jax.Array:
    """tanh(t / s) for the timescales s = 1, 3, 10, …, 100000 (11 features)."""
    t = jnp.asarray(step).astype(dtype)
    return jnp.tanh(t / jnp.asarray(TIMESCALES, dtype))


def update_momenta(m: jax.Array, g: jax.Array) -> jax.Array:
    """Exponential moving averages of ``g`` at every decay in `DECAYS` (last axis)."""
    d = jnp.asarray(DECAYS, g.dtype)
    return d * m + (1 - d) * g[..., None]


def param_features(
    g: jax.Array, p: jax.Array, m: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The 8 per-parameter features (gradient, parameter, momenta) of one tensor, each
    divided by the square root of its mean square over the tensor; also those mean squares.
    With a 0/1 ``mask`` (a padded task's live entries) the mean is over the live entries,
    so a padded tensor gets the features of the unpadded one.
    """
    f = jnp.concatenate([g[..., None], p[..., None], m], axis=-1)
    axes = tuple(range(f.ndim - 1))
    if mask is None:
        ms = jnp.mean(f * f, axis=axes)
    else:
        w = mask[..., None].astype(f.dtype)
        ms = jnp.sum(f * f * w, axis=axes) / jnp.maximum(jnp.sum(w, axis=axes), 1)
    return f / jnp.sqrt(ms + NORM_EPS), ms


def _mask_leaves(info, treedef, n: int) -> list:
    return [None] * n if info.mask is None else treedef.flatten_up_to(info.mask)


def _step_of(out: jax.Array, lr) -> jax.Array:
    direction, magnitude = out[..., 0], out[..., 1]
    return direction * jnp.exp(OUT_SCALE * magnitude) * lr


def per_parameter_mlp(theta, feats: list, extra: jax.Array, lr, scales: list | None = None) -> list:
    """The per-parameter MLP's steps for every tensor at once: each tensor's features (its
    shape + (8,)) are flattened and stacked with ``extra`` (features shared by a tensor's
    parameters: one row per tensor, or one for all) into a single (parameters, features)
    batch, so the MLP appears once in the program instead of once per tensor (a fraction of
    the compile time; the same arithmetic per parameter). ``scales``: per-tensor factors on
    the steps. Returns the steps, one array per tensor, shaped like it."""
    rows = []
    for i, f in enumerate(feats):
        x = jnp.reshape(f, (-1, f.shape[-1]))
        e = extra if extra.ndim == 1 else extra[i]
        rows.append(jnp.concatenate([x, jnp.broadcast_to(e, (x.shape[0],) + e.shape)], -1))
    steps = -_step_of(mlp_apply(theta, jnp.concatenate(rows, 0)), lr)
    out, start = [], 0
    for i, f in enumerate(feats):
        n = int(np.prod(f.shape[:-1]))
        s = jnp.reshape(steps[start : start + n], f.shape[:-1])
        out.append(s if scales is None else s * scales[i])
        start += n
    return out


def _mlp_theta(key, n_in: int, hidden: int, dtype) -> list[dict]:
    return mlp_init(key, (n_in, hidden, hidden, 2), dtype)


def mlp_lopt(lr: float = 1e-3, hidden: int = 32, dtype=jnp.float32) -> Optimizer:
    """The per-parameter MLP learned optimizer of the paper's Figure 3.

    Per parameter: 19 features — gradient, parameter, 6 momenta (decays 0.1 … 0.9999), each
    normalised by its mean square over the tensor, and 11 tanh time features — into a ReLU
    MLP with two hidden layers of ``hidden`` units and 2 outputs (direction, magnitude);
    the update is −direction · exp(0.001 · magnitude) · lr. θ = the MLP's weights (1,762 at
    hidden=32). Optimizer state: the momenta.
    """

    def init_theta(key):
        return _mlp_theta(key, N_FEATURES, int(hidden), dtype)

    def init(params, theta):
        return {
            "m": jax.tree_util.tree_map(
                lambda p: jnp.zeros(p.shape + (len(DECAYS),), p.dtype), params
            )
        }

    def update(grads, state, params, theta, info):
        tf = time_features(info.step, jax.tree_util.tree_leaves(params)[0].dtype)
        m = jax.tree_util.tree_map(update_momenta, state["m"], grads)

        g_leaves, treedef = jax.tree_util.tree_flatten(grads)
        feats = [
            param_features(g, p, mm, k)[0]
            for g, p, mm, k in zip(
                g_leaves,
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(m),
                _mask_leaves(info, treedef, len(g_leaves)),
                strict=True,
            )
        ]
        return treedef.unflatten(per_parameter_mlp(theta, feats, tf, lr)), {"m": m}

    return Optimizer(
        "mlp",
        init_theta,
        init,
        update,
        False,
        f"weights of the per-parameter MLP learned optimizer (19-{hidden}-{hidden}-2, ReLU)",
    )


N_LOSS_FEATURES = 4
N_TENSOR_FEATURES = N_PARAM_FEATURES + N_LOSS_FEATURES + len(TIMESCALES)
N_CONTEXT = 4
EMA_DECAY = 0.9


def _loss_features(loss, ema):
    ll = jnp.log(loss)
    return jnp.stack([jnp.tanh(ll), jnp.tanh(ll - ema)])


def lstm_lopt(
    lr: float = 1e-3, hidden: int = 32, lstm_hidden: int = 16, dtype=jnp.float32
) -> Optimizer:
    """A hierarchical learned optimizer in the spirit of Wichrowska et al. 2017 (arXiv
    1703.04813) and Metz et al. 2020 (arXiv 2009.11243): a per-tensor recurrent level that
    reads the training *and* validation losses, so it can regularise, feeding a
    per-parameter MLP.

    Per-tensor LSTM (``lstm_hidden`` units, weights shared by all tensors; one (h, c) per
    tensor), 23 inputs per tensor:
      - 8: 0.1·log of the mean squares over the tensor of its per-parameter features
        (gradient, parameter, 6 momenta; over the live entries of a padded task);
      - 4: tanh(log ℓ_train), tanh(log ℓ_train − EMA), tanh(log ℓ_valid),
        tanh(log ℓ_valid − EMA), where ℓ_valid is the loss on this step's validation
        minibatch at the current parameters (``needs_valid`` True: the lopt step computes
        it) and EMA the moving average (decay 0.9) of the log loss, started at step 0;
      - 11: the time features tanh(t / s).
    A linear head gives 4 context features and a per-tensor log step scale. Per-parameter
    MLP (as in `mlp_lopt`): the 19 features of `mlp_lopt` plus the tensor's 4 context
    features (23 inputs) → ``hidden`` → ``hidden`` → 2 (direction, magnitude); the step is
    −direction · exp(0.001 · magnitude) · lr · exp(log scale).

    θ = {"lstm", "head", "mlp"}: 4,535 weights at the defaults (lstm 2,560 = (23 + 16) · 64
    + 64, head 85 = 16 · 5 + 5, mlp 1,890 = 23·32 + 32 + 32·32 + 32 + 32·2 + 2).
    Optimizer state: the momenta, the LSTM's (h, c) per tensor, the EMAs of the log losses.
    """
    lstm_hidden, hidden = int(lstm_hidden), int(hidden)

    def init_theta(key):
        k1, k2, k3 = jax.random.split(key, 3)
        n_in = N_TENSOR_FEATURES + lstm_hidden
        w = jax.random.normal(k1, (n_in, 4 * lstm_hidden), dtype) / float(np.sqrt(n_in))
        b = jnp.zeros((4 * lstm_hidden,), dtype).at[lstm_hidden : 2 * lstm_hidden].set(1.0)
        # a small head: at initialisation the context is weak and the step scale near 1
        head = {
            "w": 0.01 * jax.random.normal(k2, (lstm_hidden, N_CONTEXT + 1), dtype),
            "b": jnp.zeros((N_CONTEXT + 1,), dtype),
        }
        return {
            "lstm": {"w": w, "b": b},
            "head": head,
            "mlp": _mlp_theta(k3, N_FEATURES + N_CONTEXT, hidden, dtype),
        }

    def init(params, theta):
        leaves = jax.tree_util.tree_leaves(params)
        dt = leaves[0].dtype
        z = jnp.zeros((len(leaves), lstm_hidden), dt)
        return {
            "m": jax.tree_util.tree_map(
                lambda p: jnp.zeros(p.shape + (len(DECAYS),), p.dtype), params
            ),
            "h": z,
            "c": z,
            "ema_train": jnp.zeros((), dt),
            "ema_valid": jnp.zeros((), dt),
        }

    def lstm_cell(x, h, c, th):
        z = jnp.concatenate([x, h], -1) @ th["w"] + th["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def update(grads, state, params, theta, info):
        g_leaves, treedef = jax.tree_util.tree_flatten(grads)
        p_leaves = treedef.flatten_up_to(params)
        m_leaves = treedef.flatten_up_to(state["m"])
        dt = g_leaves[0].dtype
        tf = time_features(info.step, dt)
        m_leaves = [update_momenta(m, g) for m, g in zip(m_leaves, g_leaves, strict=True)]
        k_leaves = _mask_leaves(info, treedef, len(g_leaves))
        feats = [
            param_features(g, p, m, k)
            for g, p, m, k in zip(g_leaves, p_leaves, m_leaves, k_leaves, strict=True)
        ]
        first = info.step == 0
        lt, lv = jnp.log(info.train_loss), jnp.log(info.valid_loss)
        ema_t = jnp.where(first, lt, EMA_DECAY * state["ema_train"] + (1 - EMA_DECAY) * lt)
        ema_v = jnp.where(first, lv, EMA_DECAY * state["ema_valid"] + (1 - EMA_DECAY) * lv)
        loss_f = jnp.concatenate(
            [_loss_features(info.train_loss, ema_t), _loss_features(info.valid_loss, ema_v)]
        )
        per_tensor = jnp.stack(
            [jnp.concatenate([0.1 * jnp.log(ms + NORM_EPS), loss_f, tf]) for _, ms in feats]
        )
        h, c = lstm_cell(per_tensor, state["h"], state["c"], theta["lstm"])
        out = h @ theta["head"]["w"] + theta["head"]["b"]
        ctx, log_scale = out[:, :N_CONTEXT], out[:, N_CONTEXT]
        extra = jnp.concatenate([jnp.broadcast_to(tf, (len(feats),) + tf.shape), ctx], -1)
        upd = per_parameter_mlp(
            theta["mlp"],
            [f for f, _ in feats],
            extra,
            lr,
            [jnp.exp(log_scale[i]) for i in range(len(feats))],
        )
        new_state = {
            "m": jax.tree_util.tree_unflatten(treedef, m_leaves),
            "h": h,
            "c": c,
            "ema_train": ema_t,
            "ema_valid": ema_v,
        }
        return jax.tree_util.tree_unflatten(treedef, upd), new_state

    return Optimizer(
        "lstm",
        init_theta,
        init,
        update,
        True,
        f"weights of the hierarchical learned optimizer (per-tensor LSTM "
        f"{lstm_hidden}, per-parameter MLP {N_FEATURES + N_CONTEXT}-{hidden}-"
        f"{hidden}-2)",
    )
