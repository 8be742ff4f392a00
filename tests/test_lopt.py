"""Unrolled inner training (systems.lopt): exact Jacobians and Lyapunov exponents of gradient
descent on quadratics, meta-gradients against finite differences, baselines against optax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from chaosgrad.systems.lopt import make_task, meta_loss_along_line
from chaosgrad.systems.lopt.learned import N_FEATURES
from jax.flatten_util import ravel_pytree

from chaosgrad import systems
from chaosgrad.errors import InputError
from chaosgrad.jacobian import step_jacobian
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.system import split_run_key
from chaosgrad.unroll import initial_state, unroll, unroll_grad, unrolled_loss

ETA = 0.9
KEY = jax.random.PRNGKey(3)


@pytest.fixture(scope="module")
def gd_quadratic():
    # seed 2: the moduli |1 - 0.9 h_i| are separated by >= 13% (checked below), so the QR
    # basis aligns with the eigenvectors within the transient
    return systems.make(
        "lopt",
        task="quadratic",
        optimizer="sgd",
        lr=ETA,
        dim=5,
        seed=2,
        noise=0.1,
        log_loss=False,
        dtype="float64",
    )


def test_gd_jacobian_is_identity_minus_eta_hessian(gd_quadratic):
    state = initial_state(gd_quadratic, gd_quadratic.theta, KEY)
    h = np.asarray(state.task["hessian"])
    for t in (0, 7):  # the target noise of step t does not enter the Jacobian
        j = np.asarray(step_jacobian(gd_quadratic, state=state, key=KEY, t=t))
        np.testing.assert_allclose(j, np.eye(5) - ETA * h, rtol=0, atol=1e-10)


def test_gd_lyapunov_exponents_are_log_one_minus_eta_h(gd_quadratic):
    state = initial_state(gd_quadratic, gd_quadratic.theta, KEY)
    h = np.asarray(state.task["eigenvalues"])
    expected = np.sort(np.log(np.abs(1 - ETA * h)))[::-1]
    assert np.min(-np.diff(expected)) > 0.13
    res = lyapunov_spectrum(gd_quadratic, key=KEY, steps=200, transient=400)
    np.testing.assert_allclose(res.exponents, expected, rtol=0, atol=1e-8)


def test_momentum_jacobian_is_heavy_ball_block_matrix():
    beta = 0.8
    sys_ = systems.make(
        "lopt", task="quadratic", optimizer="momentum", lr=0.3, dim=3, dtype="float64"
    )
    theta = {"log_lr": jnp.log(0.3), "logit_beta": jnp.log(beta / (1 - beta))}
    state = initial_state(sys_, theta, KEY)
    h, eye = np.asarray(state.task["hessian"]), np.eye(3)
    # phase order (ravel of a dict sorts keys): opt_state (m), then params (x);
    # m' = H (x - x*) + beta m,  x' = x - eta m'
    expected = np.block([[beta * eye, h], [-0.3 * beta * eye, eye - 0.3 * h]])
    j = np.asarray(step_jacobian(sys_, theta, state=state, key=KEY))
    np.testing.assert_allclose(j, expected, rtol=0, atol=1e-12)


def _fd_check(system, theta, steps, coords, eps=1e-6, rtol=1e-6, key=KEY, chunked=False):
    """Backprop meta-gradient vs central differences of the unrolled loss at ``coords``.

    ``chunked``: take the gradient by chaosgrad's chunk-wise `unroll_grad` (two more
    compilations) instead of ``jax.grad`` of `unrolled_loss`.
    """
    flat, unravel = ravel_pytree(theta)
    f = jax.jit(lambda v: unrolled_loss(system, unravel(v), key, steps))
    if chunked:
        res = unroll_grad(system, theta, key, steps, chunk=steps)
        val, flat_g = res.meta_loss, np.asarray(ravel_pytree(res.grad)[0])
        np.testing.assert_allclose(float(f(flat)), float(val), rtol=1e-12)
    else:
        val, flat_g = jax.jit(jax.value_and_grad(f))(flat)
        flat_g = np.asarray(flat_g)
    assert np.all(np.isfinite(flat_g))
    for i in coords:
        e = jnp.zeros_like(flat).at[i].set(eps)
        fd = (float(f(flat + e)) - float(f(flat - e))) / (2 * eps)
        assert fd == pytest.approx(flat_g[i], rel=rtol, abs=1e-9), (i, fd, flat_g[i])
    return flat_g


def test_sgd_log_lr_meta_gradient_matches_finite_differences():
    sys_ = systems.make(
        "lopt", task="quadratic", optimizer="sgd", lr=0.5, dim=5, noise=0.3, dtype="float64"
    )
    g = _fd_check(sys_, sys_.theta, steps=20, coords=[0], chunked=True)
    assert abs(g[0]) > 1e-3  # a real signal, not a vanishing one


def test_mlp_lopt_meta_gradient_matches_finite_differences():
    sys_ = systems.make(
        "lopt", task="digits_mlp", optimizer="mlp", hidden=8, batch_size=32, dtype="float64"
    )
    n = ravel_pytree(sys_.theta)[0].shape[0]
    coords = np.random.default_rng(0).choice(n, 4, replace=False)
    _fd_check(sys_, sys_.theta, steps=6, coords=coords, rtol=1e-5)


def test_lstm_lopt_meta_gradient_matches_finite_differences():
    sys_ = systems.make(
        "lopt", task="sine_mlp", optimizer="lstm", hidden=8, batch_size=16, dtype="float64"
    )
    n = ravel_pytree(sys_.theta)[0].shape[0]
    coords = np.random.default_rng(1).choice(n, 4, replace=False)
    _fd_check(sys_, sys_.theta, steps=6, coords=coords, rtol=1e-5)


def test_mlp_lopt_has_the_papers_size():
    sys_ = systems.make("lopt", task="quadratic", optimizer="mlp", dim=2)
    assert N_FEATURES == 19
    assert ravel_pytree(sys_.theta)[0].shape[0] == 1762  # the paper's Figure 3 count


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_baselines_match_optax(name):
    sys_ = systems.make("lopt", task="quadratic", optimizer=name, lr=0.05, dim=4, dtype="float64")
    ref = optax.adam(0.05) if name == "adam" else optax.sgd(0.05, momentum=0.9)
    state = initial_state(sys_, sys_.theta, KEY)
    res = unroll(sys_, key=KEY, steps=15)
    task = make_task("quadratic", dim=4, dtype=jnp.float64)
    x, ostate = state.params, ref.init(state.params)
    for _ in range(15):
        g = jax.grad(task.loss)(x, state.task, jnp.zeros(4))
        upd, ostate = ref.update(g, ostate, x)
        x = optax.apply_updates(x, upd)
    np.testing.assert_allclose(np.asarray(res.state.params), np.asarray(x), rtol=0, atol=1e-12)


def test_gd_quadratic_meta_loss_along_line_matches_closed_form():
    # noise-free GD: x_t - x* = (I - eta H)^t (x_0 - x*), so
    # loss_t = 1/2 sum_i h_i (1 - eta h_i)^(2t) z_i^2 with z = Q^T (x_0 - x*)
    sys_ = systems.make(
        "lopt", task="quadratic", optimizer="sgd", lr=0.5, dim=4, log_loss=False, dtype="float64"
    )
    shifts = np.array([-1.0, 0.0, 0.5, 1.5])  # ln(lr) shifts: lr from 0.18 to 2.2
    got = meta_loss_along_line(
        sys_, direction={"log_lr": jnp.ones((), jnp.float64)}, shifts=shifts, steps=12, key=KEY
    )
    state = initial_state(sys_, sys_.theta, KEY)
    h = np.asarray(state.task["hessian"])
    w, q = np.linalg.eigh(h)
    z = q.T @ np.asarray(state.params - state.task["minimum"])
    for s, val in zip(shifts, got, strict=True):
        eta = 0.5 * np.exp(s)
        t = np.arange(12)[:, None]
        losses = 0.5 * np.sum(w * (1 - eta * w) ** (2 * t) * z**2, axis=1)
        assert val == pytest.approx(losses.mean(), rel=1e-12)


def test_digits_mlp_trained_by_adam_generalises():
    sys_ = systems.make(
        "lopt",
        task="digits_mlp",
        optimizer="adam",
        lr=0.01,
        hidden=32,
        batch_size=64,
        dtype="float32",
    )
    res = unroll(sys_, key=KEY, steps=300)
    assert int(res.nonfinite_losses) == 0
    task = make_task("digits_mlp", hidden=32, batch_size=64, dtype=jnp.float32)
    acc = float(task.accuracy(res.state.params, res.state.task, "valid"))
    # 359 validation images: 90% is 323 right; a 10-class chance level would be ~36
    assert acc > 0.90, acc
    assert res.losses[-50:].mean() < np.log(0.3)  # training log-loss fell from ln(2.3)


def test_fixed_batch_reuses_one_batch():
    sys_ = systems.make(
        "lopt",
        task="digits_mlp",
        optimizer="sgd",
        hidden=8,
        fixed_batch=True,
        log_loss=False,
        dtype="float64",
    )
    k_init, k_steps = split_run_key(KEY)
    state = sys_.init(k_init, sys_.theta)
    keys = jnp.stack([jax.random.fold_in(k_steps, 0), jax.random.fold_in(k_steps, 5)])
    # same parameters, different step keys: the same batch gives the same loss
    loss = jax.jit(jax.vmap(lambda k: sys_.step(state, sys_.theta, k)[1].loss))(keys)
    assert float(loss[0]) == float(loss[1])
    sys2 = systems.make(
        "lopt", task="digits_mlp", optimizer="sgd", hidden=8, log_loss=False, dtype="float64"
    )
    loss2 = jax.jit(jax.vmap(lambda k: sys2.step(state, sys2.theta, k)[1].loss))(keys)
    assert float(loss2[0]) != float(loss2[1])


@pytest.mark.parametrize(
    "params, accepted",
    [
        ({"task": "mnist"}, "digits_mlp"),
        ({"optimizer": "rmsprop"}, "lstm"),
        ({"loss": "test"}, "valid"),
        ({"lr": -1.0, "optimizer": "sgd"}, "positive"),
    ],
)
def test_bad_names_raise_input_error(params, accepted):
    with pytest.raises(InputError, match=accepted):
        systems.make("lopt", **params)


def test_gradient_growth_rate_is_twice_log_of_the_unstable_mode(gd_quadratic):
    # noise-free GD on the quadratic, plain loss: the meta-gradient of the mean loss is
    # dominated by the mode of largest |1 - eta h_i| =: r, and grows like r^(2T) when r > 1
    # (the learning rate past the edge of stability); below the edge the sum over t
    # converges and the mean decays like 1/T: a least-squares slope of -ln(3)/200 over
    # T = 100, 200, 300
    from chaosgrad.gradients import gradient_growth

    h = np.asarray(initial_state(gd_quadratic, gd_quadratic.theta, KEY).task["eigenvalues"])
    for lr, expected in [(4.0, 2 * np.log(np.max(np.abs(1 - 4.0 * h)))), (0.5, None)]:
        sys_ = systems.make(
            "lopt",
            task="quadratic",
            optimizer="sgd",
            lr=lr,
            dim=5,
            seed=2,
            log_loss=False,
            dtype="float64",
        )
        res = gradient_growth(sys_, horizons=[100, 200, 300], seeds=2, key=KEY)
        assert np.all(res.nonfinite_fraction == 0)
        if expected is None:
            assert res.growth_rate == pytest.approx(-np.log(3) / 200, abs=1e-5)
        else:
            assert res.growth_rate == pytest.approx(expected, abs=1e-3)


def test_valid_loss_and_sampled_tasks():
    sys_ = systems.make(
        "lopt",
        task="quadratic",
        optimizer="sgd",
        dim=3,
        noise=0.5,
        loss="valid",
        log_loss=False,
        sample_task=True,
        dtype="float64",
    )
    keys = jax.random.split(KEY, 2)
    state = initial_state(sys_, sys_.theta, keys)
    h = np.asarray(state.task["hessian"])
    assert not np.allclose(h[0], h[1])  # each run key draws its own task
    res = unroll(sys_, key=keys, steps=1)
    d = np.asarray(state.params - state.task["minimum"])
    # the validation loss has no target noise: 1/2 d^T H d at the parameters before the step
    np.testing.assert_allclose(
        res.losses[:, 0], 0.5 * np.einsum("bi,bij,bj->b", d, h, d), rtol=1e-12
    )
    fixed = systems.make("lopt", task="quadratic", optimizer="sgd", dim=3, dtype="float64")
    h2 = np.asarray(initial_state(fixed, fixed.theta, keys).task["hessian"])
    np.testing.assert_array_equal(h2[0], h2[1])


def test_random_direction_has_the_asked_norm_and_shape():
    from chaosgrad.systems.lopt import random_direction

    theta = systems.make("lopt", task="quadratic", optimizer="mlp", dim=2).theta
    d = random_direction(theta, KEY, norm=1762.0)
    assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(theta)
    assert float(jnp.linalg.norm(ravel_pytree(d)[0])) == pytest.approx(1762.0, rel=1e-6)
