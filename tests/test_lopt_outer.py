"""An inner optimizer as an optax outer optimizer: the same steps as a direct call, Adam's
steps as optax.adam's (the sign convention), and meta-training with it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from chaosgrad.systems.lopt import StepInfo, adam, as_outer_optimizer, lstm_lopt, mlp_lopt, sgd

from chaosgrad import estimators, systems
from chaosgrad.errors import InputError


def _tree(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w": jax.random.normal(k1, (3, 4), jnp.float64),
        "b": jax.random.normal(k2, (4,), jnp.float64),
        "s": jax.random.normal(k3, (), jnp.float64),
    }


def _close(a, b, atol=1e-12):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_outer_sgd_step_is_minus_lr_times_the_gradient():
    params, grads = _tree(jax.random.PRNGKey(0)), _tree(jax.random.PRNGKey(1))
    opt = sgd(lr=0.1, dtype=jnp.float64)
    tx = as_outer_optimizer(opt, opt.init_theta(None))
    upd, _ = tx.update(grads, tx.init(params), params)
    _close(upd, jax.tree_util.tree_map(lambda g: -0.1 * g, grads))


def test_outer_adam_takes_optax_adams_steps():
    """Adam wrapped as an outer optimizer and optax.adam, 12 steps on a quadratic: the same
    parameters (both add their updates; a flipped sign would climb)."""
    opt = adam(lr=0.05, dtype=jnp.float64)
    tx, ref = as_outer_optimizer(opt, opt.init_theta(None)), optax.adam(0.05)
    target = _tree(jax.random.PRNGKey(2))

    def loss(p):
        return sum(
            jnp.sum((a - b) ** 2)
            for a, b in zip(
                jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(target), strict=True
            )
        )

    x = y = _tree(jax.random.PRNGKey(3))
    sx, sy = tx.init(x), ref.init(y)
    for _ in range(12):
        ux, sx = tx.update(jax.grad(loss)(x), sx, x)
        uy, sy = ref.update(jax.grad(loss)(y), sy, y)
        x, y = optax.apply_updates(x, ux), optax.apply_updates(y, uy)
    _close(x, y)
    assert int(sx.step) == 12
    assert float(loss(x)) < float(loss(_tree(jax.random.PRNGKey(3))))


def test_outer_learned_optimizer_is_a_direct_call_of_its_update():
    """Three steps of the MLP learned optimizer through the adapter equal three direct calls
    of its update with the step index 0, 1, 2 (its time features) and the value passed."""
    opt = mlp_lopt(lr=0.01, hidden=8, dtype=jnp.float64)
    theta = opt.init_theta(jax.random.PRNGKey(4))
    tx = as_outer_optimizer(opt, theta)
    params = _tree(jax.random.PRNGKey(5))
    state, direct = tx.init(params), opt.init(params, theta)
    for t in range(3):
        g = _tree(jax.random.PRNGKey(10 + t))
        upd, state = tx.update(g, state, params, value=jnp.asarray(0.5))
        ref, direct = opt.update(g, direct, params, theta, StepInfo(jnp.asarray(t), 0.5))
        _close(upd, ref, atol=0)
        _close(state.inner, direct, atol=0)
        assert any(np.any(np.asarray(u) != 0) for u in jax.tree_util.tree_leaves(upd))
        params = optax.apply_updates(params, upd)


def test_outer_optimizer_refusals():
    with pytest.raises(InputError, match="needs_valid"):
        as_outer_optimizer(lstm_lopt(hidden=4, lstm_hidden=4), None)
    opt = sgd(dtype=jnp.float64)
    tx = as_outer_optimizer(opt, opt.init_theta(None))
    p = _tree(jax.random.PRNGKey(0))
    with pytest.raises(InputError, match="reads the parameters"):
        tx.update(p, tx.init(p))


def test_meta_training_with_outer_adam_is_meta_training_with_optax_adam(tmp_path):
    """meta_train with the wrapped Adam and with optax.adam: the same θ after 4 outer steps,
    and the meta-loss evaluations agree."""
    from chaosgrad.estimators.meta import meta_train

    system = systems.make(
        "lopt", task="quadratic", optimizer="sgd", lr=0.3, dim=3, inner_steps=5, dtype="float64"
    )
    est = estimators.make("backprop", system, samples=2, horizon=5)
    opt = adam(lr=0.05, dtype=jnp.float64)
    runs = [
        meta_train(
            system,
            est,
            tx,
            4,
            tmp_path / name,
            jax.random.PRNGKey(0),
            log_every=2,
            eval_seeds=2,
            progress=False,
        )
        for name, tx in (
            ("ours", as_outer_optimizer(opt, opt.init_theta(None))),
            ("optax", optax.adam(0.05)),
        )
    ]
    _close(runs[0].theta, runs[1].theta)
    a, b = ([e["meta_loss"] for e in r.evals] for r in runs)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert a[-1] != a[0]
