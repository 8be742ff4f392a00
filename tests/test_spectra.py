"""Lyapunov spectra and Jacobian spectra against exact identities and published values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chaosgrad
from chaosgrad import InputError, systems
from chaosgrad.jacobian import step_jacobian, step_jacobian_operator
from chaosgrad.spectra import (
    finite_time_lyapunov,
    jacobian_eigenvalues,
    jacobian_products,
    lyapunov_runs,
    lyapunov_spectrum,
    product_singular_values,
    resolve_k,
)

KEY = jax.random.PRNGKey(3)


def test_logistic_r4_exponent_is_ln2():
    res = lyapunov_spectrum(systems.make("logistic", r=4.0), key=KEY, steps=100_000, k=1)
    assert res.nonfinite_step == -1
    assert res.exponents[0] == pytest.approx(np.log(2), abs=0.01)


def test_henon_published_exponent_and_exact_sum():
    res = lyapunov_spectrum(systems.make("henon"), key=KEY, steps=100_000, k=2)
    assert res.exponents[0] == pytest.approx(0.420, abs=0.005)
    # |det J| = b at every point, so λ1 + λ2 = ln b up to rounding.
    assert res.exponents.sum() == pytest.approx(np.log(0.3), abs=1e-6)
    assert res.precision["dtype"] == "float64"


def test_lorenz_published_exponents_per_unit_time():
    res = lyapunov_spectrum(systems.make("lorenz"), key=KEY, steps=100_000, k=3, transient=2000)
    assert res.units == "per unit time" and res.dt == 0.01
    assert res.exponents[0] == pytest.approx(0.906, abs=0.05)
    assert res.exponents[1] == pytest.approx(0.0, abs=0.03)
    assert res.exponents.sum() == pytest.approx(-41 / 3, abs=0.05)


def test_linear_map_exponents_are_log_moduli_of_eigenvalues():
    ev = (1.3, -0.8, 0.5, 0.1)
    res = lyapunov_spectrum(
        systems.make("linear", eigenvalues=ev, seed=2), key=KEY, steps=500, transient=500
    )
    np.testing.assert_allclose(res.exponents, np.log(np.abs(ev)), atol=1e-8)


def test_linear_map_partial_spectrum_matches_leading_exponents():
    ev = (1.1, 0.9, -0.6, 0.3, 0.2)
    s = systems.make("linear", eigenvalues=ev, seed=1)
    res = lyapunov_spectrum(s, key=KEY, steps=500, k=2, transient=500)
    np.testing.assert_allclose(res.exponents, np.log([1.1, 0.9]), atol=1e-8)


def test_convergence_history_ends_at_the_exponents():
    res = lyapunov_spectrum(systems.make("henon"), key=KEY, steps=3000, k=2, record_every=100)
    assert res.history.shape == (30, 2)
    np.testing.assert_array_equal(res.history_steps, np.arange(100, 3001, 100))
    np.testing.assert_allclose(res.history[-1], res.exponents)


def test_finite_time_exponents_average_to_the_spectrum():
    s = systems.make("henon")
    ftle = finite_time_lyapunov(s, key=KEY, window=50, windows=40, k=2)
    full = lyapunov_spectrum(s, key=KEY, steps=2000, k=2, record_every=50)
    assert ftle.shape == (40, 2)
    np.testing.assert_allclose(ftle.mean(axis=0), full.exponents, rtol=1e-10)
    assert ftle[:, 0].std() > 0.05  # the stretching is uneven along the attractor


def test_bad_k_is_a_clear_error():
    with pytest.raises(ValueError, match="between 1 and the phase dimension 2"):
        lyapunov_spectrum(systems.make("henon"), key=KEY, steps=10, k=3)


_K_ENTRY_POINTS = {
    "lyapunov_spectrum": lambda s, k: lyapunov_spectrum(s, key=KEY, steps=4, transient=0, k=k),
    "lyapunov_runs": lambda s, k: lyapunov_runs(s, key=KEY, runs=2, steps=4, transient=0, k=k),
    "finite_time_lyapunov": lambda s, k: finite_time_lyapunov(
        s, key=KEY, window=2, windows=2, transient=0, k=k
    ),
    "jacobian_eigenvalues": lambda s, k: jacobian_eigenvalues(s, key=KEY, steps=2, k=k),
    "jacobian_products": lambda s, k: jacobian_products(s, key=KEY, steps=2, k=k),
    "product_singular_values": lambda s, k: product_singular_values(
        s, key=KEY, steps=2, k=k, iters=2
    ),
    "diagnose": lambda s, k: chaosgrad.diagnose(
        s, horizons=[2], seeds=2, k=k, lyapunov_steps=4, progress=False
    ),
}


@pytest.mark.parametrize("entry", sorted(_K_ENTRY_POINTS))
@pytest.mark.parametrize("k", [3, 0, -1, 2.5, True, "two", [1]])
def test_k_is_resolved_one_way_everywhere(entry, k):
    """Every entry point that takes k refuses the same values with the same one-line message
    (`resolve_k`): nothing is clamped (jacobian_products used to cut k = 3 to 2 silently)."""
    with pytest.raises(InputError) as e:
        _K_ENTRY_POINTS[entry](systems.make("henon"), k)
    assert str(e.value) == (
        f"k must be an integer between 1 and the phase dimension 2 of 'henon', or 'all'; got {k!r}"
    )


def test_k_all_and_whole_values_mean_the_same_everywhere():
    s = systems.make("henon")
    assert resolve_k("all", 2) == resolve_k(" ALL ", 2) == resolve_k(2.0, 2) == 2
    assert resolve_k("1", 2) == resolve_k(np.int64(1), 2) == 1
    assert resolve_k(None, 20) == 8 and resolve_k(None, 3) == 3  # min(n, DEFAULT_K)
    assert resolve_k(None, 20, default=1) == 1 and resolve_k(None, 5, default="all") == 5
    assert lyapunov_spectrum(s, key=KEY, steps=4, transient=0, k="all").k == 2
    assert jacobian_products(s, key=KEY, steps=2, k="all").log_singular_values.shape == (2, 2)
    assert jacobian_products(s, key=KEY, steps=2).log_singular_values.shape == (2, 1)
    assert product_singular_values(s, key=KEY, steps=2, k="all", iters=2).shape == (2,)
    assert jacobian_eigenvalues(s, key=KEY, steps=2, k=1).eigenvalues.shape == (2, 1)
    assert jacobian_eigenvalues(s, key=KEY, steps=2).eigenvalues.shape == (2, 2)  # all
    assert finite_time_lyapunov(s, key=KEY, window=2, windows=2, transient=0, k="all").shape == (
        2,
        2,
    )


def test_float32_long_run_warns():
    s = systems.make("henon", dtype="float32")
    with pytest.warns(UserWarning, match="float32"):
        lyapunov_spectrum(s, key=KEY, steps=20_000, k=1, transient=1000)


# -- one-step Jacobians ------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("henon", {}), ("lorenz", {}), ("rnn", {"n": 6})])
def test_step_jacobian_matches_finite_differences_and_operator(name, params):
    s = systems.make(name, **params)
    state = s.init(jax.random.PRNGKey(0), s.theta)
    jac = np.asarray(step_jacobian(s, state=state, key=KEY, t=5))
    x, unravel = s.flat_phase(state)
    kt = jax.random.fold_in(jax.random.split(KEY)[1], 5)

    def f(xv):
        return s.flat_phase(s.step(s.set_phase(state, unravel(xv)), s.theta, kt)[0])[0]

    eps = 1e-6
    fd = np.stack([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(x.size)], 1)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-7)
    op = step_jacobian_operator(s, state=state, key=KEY, t=5)
    np.testing.assert_allclose(op.dense(), jac, rtol=1e-12, atol=1e-12)
    u = np.random.default_rng(0).standard_normal(x.size)
    np.testing.assert_allclose(op.rmatvec(jnp.asarray(u)), jac.T @ u, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.x_next, f(x), rtol=1e-12)


def test_one_argument_order_and_the_old_one_still_works():
    """(system, theta, key, state, t) everywhere; the old (system, theta, state, key, t) of
    the step Jacobians gives the same matrix with a DeprecationWarning; keywords never warn."""
    import warnings

    s = systems.make("henon")
    state = jnp.array([0.3, -0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = np.asarray(step_jacobian(s, s.theta, KEY, state, 5))
        assert np.array_equal(np.asarray(step_jacobian(s, key=KEY, state=state, t=5)), new)
        assert np.array_equal(
            np.asarray(step_jacobian(s, s.theta, None, state)),
            np.asarray(step_jacobian(s, state=state)),
        )
        op = step_jacobian_operator(s, s.theta, KEY, state, 5)
        # the key third, by position, at every spectra entry point
        a = lyapunov_spectrum(s, s.theta, KEY, steps=20, transient=0, k=2)
        assert np.array_equal(
            a.exponents, lyapunov_spectrum(s, key=KEY, steps=20, transient=0, k=2).exponents
        )
        assert np.array_equal(
            jacobian_products(s, None, KEY, steps=3).log_singular_values,
            jacobian_products(s, key=KEY, steps=3).log_singular_values,
        )
    np.testing.assert_array_equal(op.dense(), new)
    with pytest.warns(
        DeprecationWarning,
        match=r"step_jacobian\(system, theta, state, key, t\)"
        r" is deprecated.*step_jacobian\(system, theta, key, state, t\)",
    ):
        old = np.asarray(step_jacobian(s, s.theta, state, KEY, 5))
    np.testing.assert_array_equal(old, new)
    with pytest.warns(DeprecationWarning, match="step_jacobian_operator"):
        old_op = step_jacobian_operator(s, s.theta, state, KEY, 5)
    np.testing.assert_array_equal(old_op.dense(), new)
    with pytest.warns(DeprecationWarning):  # the old order with the key left out
        assert np.array_equal(
            np.asarray(step_jacobian(s, s.theta, state)), np.asarray(step_jacobian(s, state=state))
        )
    with pytest.warns(DeprecationWarning):  # ... and with None for the state
        assert np.array_equal(
            np.asarray(step_jacobian(s, s.theta, None, KEY)), np.asarray(step_jacobian(s, key=KEY))
        )


def test_henon_jacobian_is_closed_form():
    s = systems.make("henon")
    state = jnp.array([0.3, -0.2])
    jac = np.asarray(step_jacobian(s, state=state))
    np.testing.assert_allclose(jac, [[-2 * 1.4 * 0.3, 1.0], [0.3, 0.0]], atol=1e-15)


def test_dense_and_matrix_free_eigenvalues_agree():
    s = systems.make("rnn", n=40, g=2.0)
    dense = jacobian_eigenvalues(s, key=KEY, steps=3, method="dense")
    arn = jacobian_eigenvalues(s, key=KEY, steps=3, method="arnoldi", k=4)
    assert dense.method == "dense" and arn.method == "arnoldi"
    np.testing.assert_allclose(np.abs(arn.eigenvalues), np.abs(dense.eigenvalues[:, :4]), rtol=1e-6)
    np.testing.assert_allclose(arn.max_abs, dense.max_abs, rtol=1e-6)


def test_linear_map_eigenvalues_along_trajectory_are_constant():
    ev = (1.2, -0.7, 0.3)
    res = jacobian_eigenvalues(systems.make("linear", eigenvalues=ev), key=KEY, steps=4)
    for row in res.eigenvalues:
        np.testing.assert_allclose(np.sort(row.real)[::-1], np.sort(ev)[::-1], atol=1e-12)


def test_product_singular_values_dense_and_matrix_free_agree():
    s = systems.make("rnn", n=24, g=1.5)
    dense = jacobian_products(s, key=KEY, steps=30, k=3)
    free = product_singular_values(s, key=KEY, steps=30, k=3, iters=60)
    np.testing.assert_allclose(np.log(free), dense.log_singular_values[-1], rtol=1e-6, atol=1e-6)
    # exact at t = 1: the product is the one-step Jacobian itself
    j0 = np.asarray(step_jacobian(s, key=KEY))
    np.testing.assert_allclose(
        dense.log_singular_values[0], np.log(np.linalg.svd(j0, compute_uv=False)[:3]), rtol=1e-10
    )
    np.testing.assert_allclose(
        dense.log_max_abs_eigenvalue[0], np.log(np.abs(np.linalg.eigvals(j0)).max()), rtol=1e-10
    )


def test_linear_map_products_grow_at_exactly_the_log_eigenvalue():
    s = systems.make("linear", eigenvalues=(1.5, 0.5), seed=4)
    res = jacobian_products(s, key=KEY, steps=400, k=2)
    t = res.steps
    # a symmetric A: singular values of A^t are |eigenvalues|^t, and never overflow here
    np.testing.assert_allclose(res.log_singular_values[:, 0], t * np.log(1.5), rtol=1e-10)
    # the second is resolved while σ2/σ1 = 3^-t stays well above float64's epsilon
    np.testing.assert_allclose(res.log_singular_values[:20, 1], t[:20] * np.log(0.5), rtol=1e-5)
    np.testing.assert_allclose(res.log_max_abs_eigenvalue, t * np.log(1.5), rtol=1e-10)


@pytest.mark.parametrize("r", [0.4, 0.55])
def test_ftcs_heat_exponents_are_the_von_neumann_eigenvalues(r):
    from chaosgrad.systems.maps import heat_eigenvalues

    s = systems.make("heat", n=8, r=r)
    res = lyapunov_spectrum(s, key=KEY, steps=2000, transient=2000)
    expected = np.sort(np.log(np.abs(heat_eigenvalues(8, r))))[::-1]
    np.testing.assert_allclose(res.exponents, expected, atol=1e-8)
    assert (res.exponents[0] > 0) == (r > 0.5)  # unstable just above the bound r = 1/2


@pytest.mark.parametrize(
    "name,params,every", [("henon", {}, 4), ("rnn", {"n": 12, "g": 2.0}, 7), ("lorenz", {}, 10)]
)
def test_qr_every_m_steps_equals_qr_every_step(name, params, every):
    # The QR of an m-step product has diag R equal to the product of the per-step diag Rs,
    # so re-orthonormalising every m steps gives the same exponents and convergence history
    # up to rounding (float64), here with m not dividing the history window (25 steps).
    s = systems.make(name, **params)
    kw = dict(key=KEY, steps=1000, k=2, transient=0, record_every=25)
    one = lyapunov_spectrum(s, qr_every=1, **kw)
    many = lyapunov_spectrum(s, qr_every=every, **kw)
    assert many.qr_every == every and one.qr_every == 1
    np.testing.assert_allclose(many.history, one.history, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.exponents, one.exponents, rtol=1e-10, atol=1e-13)


def test_automatic_qr_interval_is_safe_and_exact():
    from chaosgrad.spectra import _safe_qr_every

    # Henon: rates 0.42 and -1.62 per step, so the basis spreads by e^2.04 a step: with
    # log κ ≤ 18 (float64) and a safety factor 2, m = floor(18 / 4.08) = 4.
    assert _safe_qr_every(np.array([0.42, -1.62]), np.float64) == 4
    assert _safe_qr_every(np.array([0.42, -1.62]), np.float32) == 1
    assert _safe_qr_every(np.array([np.nan, 0.1]), np.float64) == 1
    assert _safe_qr_every(np.array([1e-9, -1e-9]), np.float64) == 32
    s = systems.make("rnn", n=12, g=2.0)
    auto = lyapunov_spectrum(s, key=KEY, steps=2000, k=3, transient=200)
    ref = lyapunov_spectrum(s, key=KEY, steps=2000, k=3, transient=200, qr_every=1)
    assert auto.qr_every > 1
    np.testing.assert_allclose(auto.exponents, ref.exponents, rtol=1e-9, atol=1e-12)


def _persistent_slope_map():
    """A circle map x -> frac(c x + 0.05 sin 2πx) whose slope c ~ U(2, 3) is drawn per run
    from the key and kept (not in the phase): each run is stationary, but λ1 = E log|c +
    0.1π cos 2πx| differs from run to run, as a learned optimizer's sampled task does."""
    from chaosgrad import StepOut, System

    def init(key, theta):
        k1, k2 = jax.random.split(key)
        return {
            "x": jax.random.uniform(k1, (1,), minval=0.1, maxval=0.9),
            "c": jax.random.uniform(k2, (), minval=2.0, maxval=3.0),
        }

    def step(s, theta, key):
        x = s["x"]
        x = jnp.mod(s["c"] * x + 0.05 * jnp.sin(2 * jnp.pi * x), 1.0)
        return {"x": x, "c": s["c"]}, StepOut(loss=x[0])

    return System(
        init,
        step,
        name="drift",
        theta=jnp.asarray(0.0),
        horizon=50,
        phase=lambda s: s["x"],
        with_phase=lambda s, x: {"x": x, "c": s["c"]},
    )


def test_lambda1_interval_over_runs_covers_the_run_to_run_spread():
    """Two independent measurements' intervals overlap as often as they should on
    a system that is not stationary across runs. One run's batch means miss it."""
    from chaosgrad.spectra import leading_exponent_interval, lyapunov_runs
    from chaosgrad.stats import segment_interval

    s = _persistent_slope_map()
    pairs, runs_overlap, one_overlap = 12, 0, 0
    for i in range(pairs):
        a, b = (
            lyapunov_runs(
                s,
                key=jax.random.PRNGKey(1000 + 2 * i + j),
                runs=4,
                steps=400,
                k=1,
                transient=20,
                progress=False,
            )
            for j in (0, 1)
        )
        runs_overlap += a.interval.overlaps(b.interval)
        one = [
            segment_interval(r.results[0].history_steps, r.results[0].history[:, 0]) for r in (a, b)
        ]
        one_overlap += one[0].overlaps(one[1])
        # the merged result's λ1 is the mean of the runs, inside its own interval
        assert a.result.exponents[0] == pytest.approx(a.run_exponents[:, 0].mean())
        assert a.interval.low < a.result.exponents[0] < a.interval.high
        assert "run-to-run" in a.interval.method
    # two independent 95% intervals of the same mean overlap with probability > 0.99 when
    # they are honest; P(fewer than 10 of 12 | p = 0.97) < 0.01. One run's intervals, a few
    # thousandths wide against a spread of ~0.1 between runs, almost never overlap.
    assert runs_overlap >= 10, runs_overlap
    assert one_overlap <= 4, one_overlap
    # one run alone: the same as its batch means
    r = lyapunov_runs(
        s, key=jax.random.PRNGKey(7), runs=1, steps=400, k=1, transient=20, progress=False
    )
    iv1 = leading_exponent_interval(r.results)
    iv0 = segment_interval(r.results[0].history_steps, r.results[0].history[:, 0])
    assert iv1.low == pytest.approx(iv0.low) and iv1.high == pytest.approx(iv0.high)
