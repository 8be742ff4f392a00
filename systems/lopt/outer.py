"""A (learned) inner optimizer used as an optax outer optimizer (`as_outer_optimizer`), so a
meta-trained optimizer can meta-train a fresh copy of itself with `meta_train`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from chaosgrad.systems.lopt.optimizers import Optimizer, StepInfo

from chaosgrad._types import PyTree
from chaosgrad.errors import InputError


class OuterState(NamedTuple):
    """The adapter's state.

    Attributes:
      step: outer updates applied so far (int32): the wrapped optimizer's step index t.
      inner: the wrapped optimizer's own state (its momenta; for `lstm_lopt` also its
        recurrent state), shaped for the parameters it trains.
    """

    step: jax.Array
    inner: PyTree


def as_outer_optimizer(
    optimizer: Optimizer, theta: PyTree
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` with meta-parameters ``theta`` as an optax transformation.

    Both conventions add the returned updates to the parameters (``optax.apply_updates``;
    `Optimizer.update`'s ``new params = params + updates``), so the updates are passed on
    unchanged: no sign flip. ``theta`` is held fixed (a constant of the transformation);
    the parameters the transformation trains are a different pytree (for self-training, a
    fresh copy of the same optimizer's weights).

    What the wrapped optimizer sees at update ``t`` (0 for the first): the gradient, the
    parameters, its own state, and `StepInfo(step=t, train_loss=value, valid_loss=None,
    mask=None)`, where ``value`` is the loss at these parameters when the caller passes it
    (optax's extra-argument convention, ``update(grads, state, params, value=loss)``), else
    NaN: an optimizer that reads the loss then produces NaN updates, loudly. `mlp_lopt` and
    the hand-designed optimizers read neither loss; `meta_train` does not pass ``value``.
    An optimizer that needs a validation loss (``needs_valid``, e.g. `lstm_lopt`) is
    refused: an outer problem has no validation minibatch to give it.

    Args:
      optimizer: an `Optimizer` (`mlp_lopt`, `adam`, …).
      theta: its meta-parameters (e.g. weights meta-trained by `meta_train`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
    """
    if optimizer.needs_valid:
        raise InputError(
            f"optimizer {optimizer.name!r} reads a validation loss (needs_valid), which an "
            "outer optimizer is never given; use one that does not (e.g. mlp_lopt)"
        )

    def init(params):
        return OuterState(jnp.zeros((), jnp.int32), optimizer.init(params, theta))

    def update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args  # other transformations' arguments (optax.chain passes all along)
        if params is None:
            raise InputError(
                f"the outer optimizer {optimizer.name!r} reads the parameters: call "
                "update(grads, state, params)"
            )
        leaf = jax.tree_util.tree_leaves(params)[0]
        loss = jnp.asarray(jnp.nan if value is None else value, leaf.dtype)
        info = StepInfo(state.step, loss, None, None)
        steps, inner = optimizer.update(updates, state.inner, params, theta, info)
        return steps, OuterState(state.step + 1, inner)

    return optax.GradientTransformationExtraArgs(init, update)
