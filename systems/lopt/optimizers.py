"""Inner optimizers whose meta-parameters θ are learnable: the `Optimizer` record and the
hand-designed baselines (SGD, momentum, Adam) with log learning rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad._types import PyTree


class StepInfo(NamedTuple):
    """What an optimizer sees beside the gradient at one inner step.

    Attributes:
      step: the inner step index t (an int array).
      train_loss: the training loss at the current parameters (on this step's batch).
      valid_loss: the validation loss at the current parameters, or None when the
        optimizer does not ask for it (``needs_valid`` False) and the meta-loss is not it.
      mask: for a padded task (`chaosgrad.systems.lopt.family`), a 0/1 pytree shaped like
        the params marking the live entries; None when every entry is live. Optimizers that
        normalise over a tensor take the statistics over its live entries only.
    """

    step: jax.Array
    train_loss: jax.Array
    valid_loss: jax.Array | None = None
    mask: PyTree = None


class Optimizer(NamedTuple):
    """An optimizer with meta-parameters θ, as pure functions in the style of optax.

    Attributes:
      name: short name.
      init_theta: ``init_theta(key) -> theta``, default meta-parameters.
      init: ``init(params, theta) -> opt_state``; every leaf of opt_state is a float array
        (counters live in the inner-training state), so the whole of it is dynamical.
      update: ``update(grads, opt_state, params, theta, info) -> (updates, opt_state)``;
        new params = params + updates (``optax.apply_updates``).
      needs_valid: whether ``update`` reads ``info.valid_loss``.
      theta_doc: what θ is.
    """

    name: str
    init_theta: Callable[[jax.Array], PyTree]
    init: Callable[[PyTree, PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree, PyTree, StepInfo], tuple[PyTree, PyTree]]
    needs_valid: bool
    theta_doc: str


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(x) with derivative 0 (not ∞) at x = 0.

    A parameter whose gradient is exactly 0 (a dead ReLU unit) keeps Adam's v at 0, and the
    infinite derivative of sqrt there would turn the meta-gradient into 0 · ∞ = NaN.
    """
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def sgd(lr: float = 0.1, dtype=jnp.float32) -> Optimizer:
    """Gradient descent, update −η g; θ = {"log_lr": ln η}."""

    def init_theta(key):
        return {"log_lr": jnp.asarray(np.log(lr), dtype)}

    def init(params, theta):
        return ()

    def update(grads, state, params, theta, info):
        eta = jnp.exp(theta["log_lr"])
        return _tmap(lambda g: -eta * g, grads), state

    return Optimizer("sgd", init_theta, init, update, False, "{'log_lr': ln(learning rate)}")


def momentum(lr: float = 0.1, beta: float = 0.9, dtype=jnp.float32) -> Optimizer:
    """Heavy-ball momentum as in ``optax.sgd(lr, momentum=beta)``: m ← g + β m, update −η m.

    θ = {"log_lr": ln η, "logit_beta": logit β}.
    """

    def init_theta(key):
        return {
            "log_lr": jnp.asarray(np.log(lr), dtype),
            "logit_beta": jnp.asarray(_logit(beta), dtype),
        }

    def init(params, theta):
        return {"m": _tmap(jnp.zeros_like, params)}

    def update(grads, state, params, theta, info):
        eta, b = jnp.exp(theta["log_lr"]), jax.nn.sigmoid(theta["logit_beta"])
        m = _tmap(lambda g, m: g + b * m, grads, state["m"])
        return _tmap(lambda m: -eta * m, m), {"m": m}

    return Optimizer(
        "momentum",
        init_theta,
        init,
        update,
        False,
        "{'log_lr': ln(learning rate), 'logit_beta': logit(momentum)}",
    )


def adam(
    lr: float = 0.01, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, dtype=jnp.float32
) -> Optimizer:
    """Adam (Kingma & Ba 2015) with bias correction, as ``optax.adam``.

    θ = {"log_lr": ln η, "logit_b1": logit β1, "logit_b2": logit β2, "log_eps": ln ε}.
    """

    def init_theta(key):
        return {
            "log_lr": jnp.asarray(np.log(lr), dtype),
            "logit_b1": jnp.asarray(_logit(b1), dtype),
            "logit_b2": jnp.asarray(_logit(b2), dtype),
            "log_eps": jnp.asarray(np.log(eps), dtype),
        }

    def init(params, theta):
        return {"m": _tmap(jnp.zeros_like, params), "v": _tmap(jnp.zeros_like, params)}

    def update(grads, state, params, theta, info):
        eta, eps_ = jnp.exp(theta["log_lr"]), jnp.exp(theta["log_eps"])
        c1, c2 = jax.nn.sigmoid(theta["logit_b1"]), jax.nn.sigmoid(theta["logit_b2"])
        m = _tmap(lambda g, m: c1 * m + (1 - c1) * g, grads, state["m"])
        v = _tmap(lambda g, v: c2 * v + (1 - c2) * g * g, grads, state["v"])
        t = (info.step + 1).astype(eta.dtype)
        k1, k2 = 1 - c1**t, 1 - c2**t
        upd = _tmap(lambda m, v: -eta * (m / k1) / (_safe_sqrt(v / k2) + eps_), m, v)
        return upd, {"m": m, "v": v}

    return Optimizer(
        "adam",
        init_theta,
        init,
        update,
        False,
        "{'log_lr', 'logit_b1', 'logit_b2', 'log_eps'}: Adam's hyperparameters",
    )
