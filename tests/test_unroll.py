"""Unrolls and gradients: chunking invariance, exact gradients, honest non-finite counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chaosgrad.gradients as gradients
from chaosgrad import InputError, StepOut, System, systems
from chaosgrad.gradients import fit_rate, gradient_growth, overflow_safe_norm
from chaosgrad.unroll import unroll, unroll_grad, unrolled_loss

KEY = jax.random.PRNGKey(7)


def test_chunking_does_not_change_the_unroll():
    s = systems.make("henon")
    a = unroll(s, key=KEY, steps=103, chunk=10)
    b = unroll(s, key=KEY, steps=103, chunk=256)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.state, b.state)
    assert a.losses.shape == (103,)
    assert a.meta_loss == pytest.approx(a.losses.mean(), rel=1e-14)


def test_unroll_matches_a_plain_python_loop_and_records_the_trajectory():
    s = systems.make("henon")
    r = unroll(s, key=KEY, steps=20, chunk=6, trajectory=True)
    k_init, _ = jax.random.split(KEY)
    x = np.asarray(s.init(k_init, s.theta))
    for t in range(20):
        x = np.array([1 - 1.4 * x[0] ** 2 + x[1], 0.3 * x[0]])
        np.testing.assert_allclose(r.trajectory[0][t], x, rtol=1e-12)
        assert r.losses[t] == pytest.approx(x[0], rel=1e-12)


def test_batched_keys_equal_separate_unrolls():
    s = systems.make("rnn", n=5)
    keys = jax.random.split(KEY, 3)
    batch = unroll(s, key=keys, steps=17, chunk=5)
    assert batch.losses.shape == (3, 17)
    for i in range(3):
        one = unroll(s, key=keys[i], steps=17, chunk=5)
        np.testing.assert_allclose(batch.losses[i], one.losses, rtol=1e-12)


def test_nonfinite_values_are_counted_not_hidden():
    s = systems.make("linear", eigenvalues=(1e100, 0.5), seed=0, loss="quadratic")
    r = unroll(s, key=KEY, steps=8, chunk=3)
    # reference in numpy: the loss 0.5|x|^2 overflows one step before x itself does
    k_init, _ = jax.random.split(KEY)
    x = np.asarray(s.init(k_init, s.theta))
    a = np.asarray(s.theta)
    ref_loss, ref_bad_state = [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(8):
            x = a @ x
            ref_loss.append(0.5 * np.sum(x**2))
            ref_bad_state.append(not np.all(np.isfinite(x)))
    ref_loss = np.array(ref_loss)
    assert r.nonfinite_losses == np.sum(~np.isfinite(ref_loss))
    assert r.nonfinite_steps == sum(ref_bad_state)
    assert r.first_nonfinite_step == np.argmax(~np.isfinite(ref_loss))
    assert 0 < r.nonfinite_losses < 8
    assert not np.isfinite(r.meta_loss)  # the mean is not taken over the finite ones only


def test_meta_loss_rules():
    def init(key, theta):
        return jnp.zeros(())

    def step(x, theta, key):
        x = x + theta
        return x, StepOut(loss=x)

    for rule, expected in [("mean", 5.5), ("sum", 55.0), ("last", 10.0)]:
        s = System(init, step, theta=jnp.asarray(1.0), meta_loss=rule)
        assert float(unroll(s, steps=10, chunk=3).meta_loss) == pytest.approx(expected)
        g = unroll_grad(s, steps=10, chunk=3)
        assert float(g.meta_loss) == pytest.approx(expected)
        assert float(g.grad) == pytest.approx(expected)  # the loss is linear in theta


def test_chunked_backprop_equals_jax_grad_and_finite_differences():
    s = systems.make("henon")
    theta = s.theta
    res = unroll_grad(s, theta, KEY, steps=13, chunk=5)
    ref = jax.grad(lambda th: unrolled_loss(s, th, KEY, 13))(theta)
    np.testing.assert_allclose(res.grad, ref, rtol=1e-12)
    eps = 1e-6
    fd = [
        (unrolled_loss(s, theta + eps * e, KEY, 13) - unrolled_loss(s, theta - eps * e, KEY, 13))
        / (2 * eps)
        for e in jnp.eye(2)
    ]
    np.testing.assert_allclose(res.grad, fd, rtol=1e-6)
    remat = jax.grad(lambda th: unrolled_loss(s, th, KEY, 13, remat_chunk=4))(theta)
    np.testing.assert_allclose(remat, ref, rtol=1e-12)


def test_linear_map_gradient_is_the_closed_form():
    # L(A) = (1/T) Σ_{k=1..T} ½|A^k x0|²
    #   =>  dL/dA = (1/T) Σ_k Σ_{j<k} (A^T)^j (A^k x0)(A^{k-1-j} x0)^T
    s = systems.make("linear", n=4, radius=1.05, seed=3, loss="quadratic")
    a = np.asarray(s.theta)
    steps = 12
    res = unroll_grad(s, key=KEY, steps=steps, chunk=5)
    x0 = np.asarray(s.init(jax.random.split(KEY)[0], s.theta))
    powers = [np.linalg.matrix_power(a, k) for k in range(steps + 1)]
    ref = np.zeros_like(a)
    for k in range(1, steps + 1):
        xk = powers[k] @ x0
        for j in range(k):
            ref += powers[j].T @ np.outer(xk, powers[k - 1 - j] @ x0)
    np.testing.assert_allclose(res.grad, ref / steps, rtol=1e-10)
    assert res.nonfinite_grad == 0


def test_gradient_growth_per_seed_norms_are_exact_gradients():
    s = systems.make("rnn", n=6, g=1.8)
    g = gradient_growth(s, horizons=[5, 10], seeds=3, key=KEY)
    keys = jax.random.split(KEY, 3)
    for i, h in enumerate([5, 10]):
        for j in range(3):
            ref = jax.grad(lambda th, k=keys[j], hh=h: unrolled_loss(s, th, k, hh))(s.theta)
            assert g.norms[i, j] == pytest.approx(float(jnp.linalg.norm(ref)), rel=1e-10)
    assert g.nonfinite_fraction.tolist() == [0.0, 0.0]


def test_gradient_growth_on_linear_map_recovers_twice_the_log_eigenvalue():
    # With a quadratic loss the meta-loss grows like λ^{2T}: |g| ~ T λ^{2T}, so the slope of
    # log|g| is 2 ln λ + d(log T)/dT; between T = 200 and 400 that term is ln(2)/200.
    lam = 1.05
    s = systems.make("linear", eigenvalues=(lam, 0.5, 0.2), seed=0, loss="quadratic")
    g = gradient_growth(s, horizons=[200, 400], seeds=2, key=KEY)
    assert g.growth_rate == pytest.approx(2 * np.log(lam) + np.log(2) / 200, abs=5e-3)


def test_overflow_safe_norm_survives_values_near_the_float_range():
    g = {"a": np.array([3e200, 4e200]), "b": np.array([0.0])}
    assert overflow_safe_norm(g) == pytest.approx(5e200, rel=1e-12)
    assert np.isnan(overflow_safe_norm({"a": np.array([1.0, np.nan])}))
    assert overflow_safe_norm({"a": np.array([1.0, np.inf])}) == np.inf
    # why not optax.tree_utils.tree_norm: it squares unscaled, in float32 here
    import optax.tree_utils as otu

    g32 = {"a": np.array([3e20, 4e20], np.float32)}
    assert overflow_safe_norm(g32) == pytest.approx(5e20, rel=1e-6)
    with np.errstate(over="ignore"):
        assert not np.isfinite(float(otu.tree_norm(g32)))


def test_tree_norm_is_a_deprecated_alias():
    g = {"a": np.array([[3.0, 4.0], [1e200, 0.0]])}
    with pytest.warns(DeprecationWarning, match="tree_norm is deprecated.*overflow_safe_norm"):
        old = gradients.tree_norm(g, batched=True)
    np.testing.assert_array_equal(old, overflow_safe_norm(g, batched=True))


def test_fit_rate_is_least_squares_on_finite_points():
    slope, icpt = fit_rate(np.array([1, 2, 3, 4]), np.array([1.0, 3.0, np.nan, 7.0]))
    assert slope == pytest.approx(2.0) and icpt == pytest.approx(-1.0)
    assert np.isnan(fit_rate(np.array([1, 2]), np.array([1.0, np.nan]))[0])


def test_system_rejects_bad_definitions():
    with pytest.raises(InputError, match="both phase and with_phase"):
        System(lambda k, t: 0.0, lambda s, t, k: (s, 0.0), phase=lambda s: s)
    with pytest.raises(InputError, match="meta_loss"):
        System(lambda k, t: 0.0, lambda s, t, k: (s, 0.0), meta_loss="max")
    with pytest.raises(InputError, match="no theta"):
        unroll(System(lambda k, t: 0.0, lambda s, t, k: (s, 0.0)), steps=3)
    with pytest.raises(InputError, match="positive integer"):
        unroll(systems.make("henon"), steps=0)


def test_pure_unroll_takes_the_run_key_like_unroll():
    """One key, one run: pure_unroll (inside jit) gives unroll's losses and state; a run
    continued from a state with t0 gives the rest of it; unrolled_loss is its meta-loss."""
    from chaosgrad.system import split_run_key
    from chaosgrad.unroll import pure_unroll, rollout

    s = systems.make("rnn", n=4)
    ref = unroll(s, s.theta, KEY, 12, chunk=5)
    state, losses = jax.jit(lambda th, k: pure_unroll(s, th, k, 12))(s.theta, KEY)
    np.testing.assert_allclose(losses, ref.losses, rtol=1e-12)
    np.testing.assert_allclose(state, ref.state, rtol=1e-12)
    mid, first = pure_unroll(s, s.theta, KEY, 7)
    _, rest = pure_unroll(s, s.theta, KEY, 5, state=mid, t0=7)
    np.testing.assert_allclose(np.concatenate([first, rest]), ref.losses, rtol=1e-12)
    remat = pure_unroll(s, s.theta, KEY, 12, remat_chunk=5)[1]
    np.testing.assert_allclose(remat, ref.losses, rtol=1e-12)
    assert float(unrolled_loss(s, s.theta, KEY, 12)) == pytest.approx(
        float(ref.meta_loss), rel=1e-12
    )
    # rollout, the old name, took the steps half of the key: it still does, and warns
    with pytest.warns(DeprecationWarning, match="rollout.*is deprecated.*pure_unroll"):
        k_init, k_steps = split_run_key(KEY)
        _, old = rollout(s, s.theta, s.init(k_init, s.theta), k_steps, 12)
    np.testing.assert_array_equal(old, pure_unroll(s, s.theta, KEY, 12)[1])


def _scale_system(theta, **fields):
    return System(
        lambda k, t: jnp.ones(2, jnp.asarray(t).dtype),
        lambda s, t, k: (s * t, jnp.sum(s * t)),
        theta=theta,
        **fields,
    )


def test_system_precision_is_checked_against_theta():
    """A label that disagrees with θ is one line naming both; without one, θ says it."""
    th32, th64 = jnp.asarray(0.5, jnp.float32), jnp.asarray(0.5, jnp.float64)  # x64 is on
    with pytest.raises(InputError) as e:
        _scale_system(th32, name="mislabelled", precision="float64")
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "'mislabelled'" in msg
        and "precision 'float64'" in msg
        and "theta is float32" in msg
    )
    with pytest.raises(InputError, match="precision 'float32' but its theta is float64"):
        _scale_system(th64, precision="float32")
    assert _scale_system(th32).precision == "float32"
    assert _scale_system(th64).precision == "float64"
    assert _scale_system(th64, precision="float64").describe()["precision"] == "float64"
    # the widest leaf decides (float32 weights with a float64 scalar compute in float64)
    assert _scale_system({"w": th32, "b": th64}).precision == "float64"
    assert _scale_system(None).precision == "float32"  # no default θ: nothing to read
    with pytest.raises(InputError, match="'float16' is not accepted"):
        _scale_system(th32, precision="float16")
    # the unroll runs in the precision the system reports
    assert unroll(_scale_system(th32), steps=3).losses.dtype == np.float32
    assert unroll(_scale_system(th64), steps=3).losses.dtype == np.float64


def test_system_replace_and_its_deprecated_alias():
    s = _scale_system(jnp.asarray(0.5, jnp.float32), name="a", horizon=7)
    r = s.replace(name="b", horizon=9)
    assert (r.name, r.horizon, r.precision, s.name) == ("b", 9, "float32", "a")
    assert r.step is s.step and r.theta is s.theta
    # a new θ brings its own precision unless one is given with it
    assert s.replace(theta=jnp.asarray(0.5, jnp.float64)).precision == "float64"
    with pytest.raises(InputError, match="theta is float64"):
        s.replace(theta=jnp.asarray(0.5, jnp.float64), precision="float32")
    with pytest.raises(InputError, match="horizon must be a positive integer"):
        s.replace(horizon=0)  # the copy is checked like a new system
    with pytest.warns(DeprecationWarning, match="System.with_meta is deprecated.*System.replace"):
        old = s.with_meta(horizon=9)
    assert old.horizon == 9 and old.name == "a"


def test_user_system_with_custom_phase_and_integer_state():
    """A user's own step with a counter in its state: the phase excludes the counter."""

    def init(key, theta):
        return {"x": jax.random.uniform(key, (2,)), "t": jnp.asarray(0)}

    def step(s, theta, key):
        x = s["x"]
        x = jnp.stack([1 - theta[0] * x[0] ** 2 + x[1], theta[1] * x[0]])
        return {"x": x, "t": s["t"] + 1}, StepOut(loss=x[0])

    mine = System(init, step, theta=jnp.array([1.4, 0.3]), name="mine")
    assert mine.phase_dim() == 2
    r = unroll(mine, key=KEY, steps=50)
    assert int(r.state["t"]) == 50
    ref = unroll(
        systems.make("henon"),
        key=KEY,
        steps=50,
        state=r.state["x"] * 0 + mine.init(jax.random.split(KEY)[0], mine.theta)["x"],
    )
    np.testing.assert_allclose(r.losses, ref.losses, rtol=1e-12)
    g = unroll_grad(mine, key=KEY, steps=30, chunk=7)
    ref_g = jax.grad(lambda th: unrolled_loss(mine, th, KEY, 30))(mine.theta)
    np.testing.assert_allclose(g.grad, ref_g, rtol=1e-12)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("chunk", [4, 5, 20])
def test_unroll_grad_both_memory_modes_equal_jax_grad(keep, chunk):
    # Kept residuals (jax.grad's memory) and recomputed chunks (one state per chunk) give the
    # same exact gradient, for full chunks only (5, 20 divide 20) and a partial last one (4
    # does not divide 22), one key and a batch of keys.
    s = systems.make("rnn", n=6, g=1.8)
    steps = 22 if chunk == 4 else 20
    ref = jax.grad(lambda th: unrolled_loss(s, th, KEY, steps))(s.theta)
    res = unroll_grad(s, key=KEY, steps=steps, chunk=chunk, keep_residuals=keep)
    np.testing.assert_allclose(res.grad, ref, rtol=1e-10, atol=1e-14)
    fwd = unroll(s, key=KEY, steps=steps)
    np.testing.assert_allclose(res.losses, fwd.losses, rtol=1e-12)
    np.testing.assert_allclose(res.state, fwd.state, rtol=1e-12)
    assert float(res.meta_loss) == pytest.approx(float(fwd.meta_loss), rel=1e-12)
    keys = jax.random.split(KEY, 3)
    batch = unroll_grad(s, key=keys, steps=steps, chunk=chunk, keep_residuals=keep)
    for i in range(3):
        ref_i = jax.grad(lambda th, k=keys[i]: unrolled_loss(s, th, k, steps))(s.theta)
        np.testing.assert_allclose(batch.grad[i], ref_i, rtol=1e-10, atol=1e-14)


def test_rebuilt_system_reuses_compiled_chunks():
    # The compile cache is keyed on what the system computes, not on the System object:
    # building the same system again, or a copy with another θ, compiles nothing new.
    from chaosgrad.unroll import _jit_chunk

    a = systems.make("rnn", n=5, g=1.5)
    b = systems.make("rnn", n=5, g=1.5, seed=3)
    assert _jit_chunk(a, 8, False, False) is _jit_chunk(b, 8, False, False)
    assert _jit_chunk(a, 8, False, False) is _jit_chunk(
        a.replace(theta=2 * a.theta), 8, False, False
    )
    assert _jit_chunk(a, 8, False, False) is not _jit_chunk(systems.make("henon"), 8, False, False)
    np.testing.assert_array_equal(
        unroll(b, key=KEY, steps=9).losses, unroll(b, key=KEY, steps=9, chunk=4).losses
    )


@pytest.mark.parametrize("batch", [False, True])
def test_a_phase_that_turns_nonfinite_and_back_is_still_counted(batch):
    # The fast path learns that a chunk went non-finite from a sticky sum; the exact steps
    # come from re-running that chunk with a check per step. Here the phase is NaN exactly
    # at steps 3 and 12 (and finite after each: the step repairs it), losses stay finite.
    def init(key, theta):
        return jnp.zeros(2)

    def step(x, theta, key):
        t = x[1] + 1
        bad = (t == 4) | (t == 13)
        x0 = jnp.where(bad, jnp.nan, theta * t)
        return jnp.stack([x0, t]), StepOut(loss=theta * t)

    s = System(init, step, theta=jnp.asarray(0.5))
    keys = jax.random.split(KEY, 2) if batch else KEY
    r = unroll(s, key=keys, steps=20, chunk=8)
    assert np.all(r.nonfinite_steps == 2)
    assert np.all(r.first_nonfinite_step == 3)
    assert np.all(r.nonfinite_losses == 0)


@pytest.mark.parametrize("plan", ["remat-kept", "remat-recomputed"])
def test_unroll_grad_memory_plans_beyond_the_budget_equal_jax_grad(monkeypatch, plan):
    # Past the residual budget unroll_grad checkpoints every step (keeping one state per
    # step) and, past it again, recomputes chunks too: both are the exact gradient.
    from chaosgrad import unroll_reverse as unroll_mod  # unroll_grad's memory planner
    from chaosgrad.system import split_run_key

    s = systems.make("rnn", n=6, g=1.8)
    steps = 22
    k_init, k_steps = split_run_key(KEY)
    x0 = s.init(k_init, s.theta)
    kept = unroll_mod._residual_bytes(s, s.theta, x0, k_steps, 22, False, True)
    monkeypatch.setattr(unroll_mod, "RESIDUAL_BUDGET", kept if plan == "remat-kept" else 0)
    res = unroll_grad(s, key=KEY, steps=steps)
    ref = jax.grad(lambda th: unrolled_loss(s, th, KEY, steps))(s.theta)
    np.testing.assert_allclose(res.grad, ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.losses, unroll(s, key=KEY, steps=steps).losses, rtol=1e-12)


def test_metadata_and_its_deprecated_name_meta():
    s = _scale_system(jnp.asarray(0.5, jnp.float32), name="a")
    with pytest.warns(DeprecationWarning, match=r"System\(meta=...\) is deprecated.*metadata"):
        old = System(s.init, s.step, theta=s.theta, meta={"c": 1})
    assert old.metadata == {"c": 1} and old.describe()["c"] == 1
    with pytest.warns(DeprecationWarning, match="System.meta is deprecated.*System.metadata"):
        assert old.meta == {"c": 1}
    with pytest.warns(DeprecationWarning):
        assert s.replace(meta={"d": 2}).metadata == {"d": 2}
    with pytest.raises(InputError, match="metadata= alone"):
        System(s.init, s.step, theta=s.theta, meta={"c": 1}, metadata={"c": 2})


def test_key_third_and_the_old_order():
    """gradient_growth, loss_slice and diagnose take (system, theta, key, *, horizons, ...);
    the old order (system, theta, horizons, seeds, key=...) gives the same result and warns."""
    import warnings

    from chaosgrad.gradients import loss_slice

    s = systems.make("henon")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = gradient_growth(s, None, KEY, horizons=[2, 4], seeds=2, progress=False)
        sl = loss_slice(s, None, KEY, horizons=[2], points=5)
        assert gradient_growth(s, None, None, horizons=[2], seeds=1, progress=False).norms.size
    with pytest.warns(DeprecationWarning, match=r"gradient_growth\(system, theta, horizons, seeds"):
        old = gradient_growth(s, None, [2, 4], 2, key=KEY, progress=False)
    np.testing.assert_array_equal(old.norms, new.norms)
    with pytest.warns(DeprecationWarning, match=r"loss_slice\(system, theta, horizons"):
        np.testing.assert_array_equal(loss_slice(s, None, [2], key=KEY, points=5).losses, sl.losses)
    with pytest.raises(TypeError, match="multiple values"), pytest.warns(DeprecationWarning):
        gradient_growth(s, None, [2, 4], horizons=[2])


def test_one_home_for_input_checks_and_the_old_names():
    """The value checks live in chaosgrad.checks; the old homes re-export them or warn."""
    import argparse

    from chaosgrad.estimators import base

    import chaosgrad.unroll as unroll_module
    from chaosgrad import checks, jacobian, lyapunov, params
    from chaosgrad.app import cli_types

    assert params.check_int is checks.check_int and jacobian.check_dense is checks.check_dense
    assert lyapunov.resolve_k is checks.resolve_k
    assert base.check_positive_int is checks.check_positive_int
    assert gradients._check_horizons is checks.check_horizons
    with pytest.warns(DeprecationWarning, match="check_steps is deprecated.*check_positive_int"):
        assert unroll_module.check_steps(3, "steps") == 3
    with pytest.warns(DeprecationWarning, match="check_positive_float is deprecated"):
        assert base.check_positive_float(0.5, "sigma") == 0.5
    for bad in (0, True, 2.5, "3", float("nan")):
        with pytest.raises(InputError, match="seeds must be a positive integer"):
            checks.check_positive_int(bad, "seeds")
    # the command line's types raise argparse's error with the rule's own message
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, got '0'"):
        cli_types._positive_int("0")
    with pytest.raises(InputError, match="expected a positive integer, got '1_0'"):
        checks.positive_int_text("1_0")
    assert cli_types._int_list("30,10") == [30, 10] and cli_types._k_arg("ALL") == "all"
