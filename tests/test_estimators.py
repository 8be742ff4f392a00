"""Estimators against exact references: closed-form smoothed gradients (ES), the
influence-balancing task (PES unbiased, truncated backprop biased with the wrong sign),
finite differences (backprop), sharded == unsharded, and exact meta-training resumption.

Statistical checks compare the mean of R iid estimates with the reference within
t_{1-α/(2d)}(R-1) · s / sqrt(R) per element (s: sample std, d elements, α = 1e-4 overall).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from chaosgrad.estimators.meta import meta_train
from chaosgrad.estimators.particles import make_schedule
from chaosgrad.systems.influence import influence_balancing
from scipy import stats

from chaosgrad import estimators, systems
from chaosgrad.errors import InputError
from chaosgrad.system import StepOut, System
from chaosgrad.unroll import unroll_grad, unrolled_loss

ALPHA = 1e-4
ROOT = Path(__file__).resolve().parents[1]


def halfwidth(samples: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Per-element half-width of a two-sided (Bonferroni over elements) t interval for the
    mean of the rows of ``samples`` (shape (R, d))."""
    samples = np.asarray(samples, np.float64).reshape(samples.shape[0], -1)
    r, d = samples.shape
    q = stats.t.ppf(1 - alpha / (2 * d), r - 1)
    return q * samples.std(axis=0, ddof=1) / np.sqrt(r)


def assert_unbiased(samples, reference, alpha: float = ALPHA):
    """The mean of ``samples`` (R iid rows) is within the t bound of ``reference``."""
    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    mean = samples.mean(axis=0)
    hw = halfwidth(samples, alpha)
    ref = np.asarray(reference, np.float64).reshape(-1)
    assert np.all(np.abs(mean - ref) <= hw), (mean, ref, hw)
    return mean, hw


# -- a system whose meta-loss is quadratic plus a sinusoid in theta -----------------------------
H = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
C = np.array([0.3, -0.2, 0.1])
AMP, OMEGA = 0.5, 2.0
THETA_Q = np.array([0.1, -0.4, 0.7])


def smooth_quadratic(noise: float = 0.0) -> System:
    """ℓ_t = ½ θᵀHθ + cᵀθ + a Σ sin(ω θ_j) + noise·z_t (z_t ~ N(0,1) from the step key).

    Its Gaussian smoothing with std σ has gradient Hθ + c + a ω e^{-ω²σ²/2} cos(ω θ)."""
    h, c = jnp.asarray(H), jnp.asarray(C)

    def init(key, theta):
        return jnp.zeros(())

    def step(s, theta, key):
        z = jax.random.normal(key, (), theta.dtype)
        loss = 0.5 * theta @ h @ theta + c @ theta + AMP * jnp.sum(jnp.sin(OMEGA * theta))
        return s + 1, StepOut(loss=loss + noise * z)

    return System(
        init,
        step,
        name="smooth-quadratic",
        theta=jnp.asarray(THETA_Q),
        horizon=3,
        precision="float64",
    )


def smoothed_grad(theta, sigma):
    return H @ theta + C + AMP * OMEGA * np.exp(-((OMEGA * sigma) ** 2) / 2) * np.cos(OMEGA * theta)


def raw_grad(theta):
    return H @ theta + C + AMP * OMEGA * np.cos(OMEGA * theta)


def replicate(est, theta, reps: int, calls: int, seed: int = 0):
    """Gradients of ``calls`` successive estimates of ``reps`` independent estimator
    instances (vmapped): array (reps, calls, *theta.shape), plus the last infos."""
    keys = jax.random.split(jax.random.PRNGKey(seed), reps)
    state = jax.jit(jax.vmap(est.init, in_axes=(0, None)))(keys, theta)
    step = jax.jit(jax.vmap(est.estimate, in_axes=(0, None, 0)))
    grads = []
    for j in range(calls):
        ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, 1000 + j)
        g, state, info = step(state, theta, ks)
        grads.append(np.asarray(g))
    return np.stack(grads, axis=1), info


# -- registry ---------------------------------------------------------------------------------
def test_registry_and_params():
    assert estimators.names() == [
        "backprop",
        "combined",
        "es",
        "nres",
        "pes",
        "reparam",
        "tbptt",
        "tes",
    ]
    sysm = smooth_quadratic()
    with pytest.raises(InputError, match="unknown estimator"):
        estimators.make("nope", sysm)
    with pytest.raises(InputError, match="no parameter"):
        estimators.make("pes", sysm, bogus=1)
    with pytest.raises(InputError, match="sigma"):
        estimators.make("es", sysm, sigma=-1.0)
    p = estimators.parse_params(
        "pes", ["pairs=4", "sigma=0.1", "stagger=false", "schedule=loguniform"]
    )
    assert p == {"pairs": 4, "sigma": 0.1, "stagger": False, "schedule": "loguniform"}
    with pytest.raises(InputError, match="cannot read"):
        estimators.parse_params("pes", ["pairs=many"])
    with pytest.raises(InputError, match="schedule"):
        estimators.make("pes", sysm, schedule="weekly")


# -- ES: the gradient of the Gaussian-smoothed loss --------------------------------------------
def test_es_estimates_the_smoothed_gradient():
    sigma = 0.5
    sysm = smooth_quadratic(noise=0.0)
    est = estimators.make("es", sysm, pairs=16, sigma=sigma, shard=False)
    g, _ = replicate(est, sysm.theta, reps=500, calls=1)
    g = g[:, 0]
    mean, hw = assert_unbiased(g, smoothed_grad(THETA_Q, sigma))
    # The test can tell smoothed from raw: the raw gradient lies outside the interval.
    assert np.any(np.abs(mean - raw_grad(THETA_Q)) > hw)
    # Antithetic members share run keys: additive step noise cancels exactly.
    noisy = estimators.make("es", smooth_quadratic(noise=10.0), pairs=16, sigma=sigma, shard=False)
    g2, _ = replicate(noisy, sysm.theta, reps=500, calls=1)
    np.testing.assert_allclose(g2[:, 0], g, rtol=1e-9, atol=1e-9)


def test_combined_estimates_the_smoothed_gradient():
    sigma = 0.5
    sysm = smooth_quadratic(noise=0.0)
    est = estimators.make("combined", sysm, pairs=8, sigma=sigma, shard=False)
    g, info = replicate(est, sysm.theta, reps=400, calls=1)
    assert_unbiased(g[:, 0], smoothed_grad(THETA_Q, sigma))
    w = np.asarray(info["weight_backprop"])
    assert np.all((w > 0) & (w < 1))


def test_inverse_variance_combine_exact():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, (50, 4))
    b = rng.normal(1.0, 3.0, (50, 4))
    a[:, 1] = 2.0  # zero variance: the combination must take a exactly
    b[3, 2] = np.nan  # non-finite b samples: a alone
    comb, wa = estimators.inverse_variance_combine(jnp.asarray(a), jnp.asarray(b))
    va, vb = a.var(0, ddof=1) / 50, b.var(0, ddof=1) / 50
    expect = (a.mean(0) * vb + b.mean(0) * va) / (va + vb)
    np.testing.assert_allclose(np.asarray(comb)[[0, 3]], expect[[0, 3]], rtol=1e-12)
    assert float(comb[1]) == 2.0 and float(wa[1]) == 1.0
    assert float(comb[2]) == pytest.approx(a[:, 2].mean(), rel=1e-12) and float(wa[2]) == 1.0


# -- backprop: finite differences in float64 ----------------------------------------------------
def test_full_backprop_matches_finite_differences():
    sysm = systems.make("rnn", n=4, g=1.5, dtype="float64")
    theta, horizon = sysm.theta, 20
    est = estimators.make("backprop", sysm, samples=2, horizon=horizon, remat_chunk=3, shard=False)
    key = jax.random.PRNGKey(7)
    g, _, info = jax.jit(est.estimate)(est.init(key, theta), theta, key)
    keys = jax.random.split(key, 2)  # the run keys the estimator draws

    loss = jax.jit(
        lambda th: jnp.mean(jax.vmap(lambda k: unrolled_loss(sysm, th, k, horizon))(keys))
    )

    def f(th):
        return float(loss(th))

    h = 1e-6
    fd = np.zeros(theta.shape)
    for idx in np.ndindex(theta.shape):
        e = np.zeros(theta.shape)
        e[idx] = h
        fd[idx] = (f(theta + e) - f(theta - e)) / (2 * h)
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-9)
    assert float(info["loss"]) == pytest.approx(f(theta), rel=1e-12)
    # The same gradient as the core's chunk-wise reverse mode (an exact identity).
    core = unroll_grad(sysm, theta, keys, horizon, chunk=7)
    np.testing.assert_allclose(np.asarray(g), np.mean(np.asarray(core.grad), 0), rtol=1e-10)


# -- influence balancing: PES unbiased, truncated backprop biased with the wrong sign ------------
IB_THETA, IB_T, IB_K = 0.2, 100, 10


@pytest.fixture(scope="module")
def ib():
    sysm = influence_balancing(theta=IB_THETA, horizon=IB_T, dtype="float64")
    true = float(
        jax.grad(lambda th: unrolled_loss(sysm, th, jax.random.PRNGKey(0), IB_T))(sysm.theta)
    )
    return sysm, true


def truncated_reference(theta, horizon, window, n=23, positive=10):
    """Truncated backprop's gradient of the mean loss, windows aligned with the run
    (numpy, independent of the estimator's code)."""
    a = 0.5 * np.eye(n) + 0.5 * np.eye(n, k=1)
    b = np.where(np.arange(n) < positive, 1.0, -1.0)
    s, d, total = np.zeros(n), np.zeros(n), 0.0
    for t in range(horizon):
        if t % window == 0:
            d = np.zeros(n)
        s, d = a @ s + theta * b, a @ d + b
        total += (s[0] - 1) * d[0] / horizon
    return total


def test_influence_balancing_reference(ib):
    sysm, true = ib
    # The exact meta-gradient (s is linear in θ: autodiff equals the closed-form sum).
    assert true == pytest.approx(truncated_reference(IB_THETA, IB_T, IB_T), rel=1e-12)
    assert true > 5


def test_truncated_backprop_is_biased_with_the_wrong_sign(ib):
    sysm, true = ib
    est = estimators.make("tbptt", sysm, particles=2, window=IB_K, stagger=False, shard=False)
    g, _ = replicate(est, sysm.theta, reps=1, calls=IB_T // IB_K)
    ref = truncated_reference(IB_THETA, IB_T, IB_K)
    # The average over one run's windows is exactly the truncated gradient …
    assert g.mean() == pytest.approx(ref, rel=1e-10)
    # … which points the wrong way: the long-horizon negative influences are cut off.
    assert ref < -1 and true > 1
    # A window as long as the run is exact backprop.
    full = estimators.make("tbptt", sysm, particles=1, window=IB_T, stagger=False, shard=False)
    g_full, _ = replicate(full, sysm.theta, reps=1, calls=1)
    assert float(g_full.mean()) == pytest.approx(true, rel=1e-10)


def test_pes_is_unbiased_across_truncations(ib):
    sysm, true = ib
    est = estimators.make("pes", sysm, pairs=4, sigma=0.1, window=IB_K, stagger=False, shard=False)
    g, _ = replicate(est, sysm.theta, reps=400, calls=IB_T // IB_K)
    per_run = g.mean(axis=1)  # one full run of windows per replicate
    mean, hw = assert_unbiased(per_run, true)
    ref = truncated_reference(IB_THETA, IB_T, IB_K)
    assert abs(mean[0] - ref) > hw[0]
    # Truncated ES (no accumulated perturbations) is unbiased only for the truncated gradient.
    tes = estimators.make("tes", sysm, pairs=4, sigma=0.1, window=IB_K, stagger=False, shard=False)
    g_tes, _ = replicate(tes, sysm.theta, reps=400, calls=IB_T // IB_K)
    mean_tes, hw_tes = assert_unbiased(g_tes.mean(axis=1), ref)
    assert abs(mean_tes[0] - true) > hw_tes[0]


@pytest.mark.parametrize("horizon", [95, 7])
def test_pes_staggered_with_resets_mid_window(ib, horizon):
    # T = 95 is not a multiple of K = 10: runs end inside windows. T = 7 < K: several runs
    # end inside one window. Staggered particles are burnt in under PES's own perturbation,
    # so every estimate is unbiased for the gradient of the T-step meta-loss.
    sysm, _ = ib
    true = float(
        jax.grad(lambda th: unrolled_loss(sysm, th, jax.random.PRNGKey(0), horizon))(sysm.theta)
    )
    est = estimators.make(
        "pes", sysm, pairs=8, sigma=0.1, window=IB_K, horizon=horizon, stagger=True, shard=False
    )
    g, info = replicate(est, sysm.theta, reps=300, calls=12)
    assert int(np.sum(info["resets"])) > (300 * 8 * 2 if horizon < IB_K else 0)
    # Each replicate's 12 successive estimates are dependent; the replicates are iid.
    assert_unbiased(g.mean(axis=1), true)


def test_loguniform_schedule_distribution():
    sched = make_schedule("loguniform", 100, min_length=5, max_length=80)
    keys = jax.random.split(jax.random.PRNGKey(3), 20000)
    n = np.asarray(jax.vmap(sched.sample)(keys))
    assert n.min() >= 5 and n.max() <= 80
    # P(length <= m) = (log(m+1) - log 5) / (log 81 - log 5) exactly; binomial bound.
    for m in (10, 30):
        p = (np.log(m + 1) - np.log(5)) / (np.log(81) - np.log(5))
        z = stats.norm.ppf(1 - ALPHA / 4)
        assert abs(np.mean(n <= m) - p) <= z * np.sqrt(p * (1 - p) / n.size)


def test_clipping_wrapper():
    sysm = smooth_quadratic()
    base = estimators.make("backprop", sysm, samples=1, shard=False)
    clipped = estimators.make("backprop", sysm, samples=1, shard=False, clip_norm=0.1)
    key = jax.random.PRNGKey(0)
    g, _, _ = jax.jit(base.estimate)(base.init(key, sysm.theta), sysm.theta, key)
    gc, _, info = jax.jit(clipped.estimate)(clipped.init(key, sysm.theta), sysm.theta, key)
    norm = float(jnp.linalg.norm(g))
    assert norm > 0.1
    np.testing.assert_allclose(np.asarray(gc), np.asarray(g) * 0.1 / norm, rtol=1e-12)
    assert float(info["unclipped_norm"]) == pytest.approx(norm, rel=1e-12)
    assert int(info["clipped"]) == 1


# -- sharding: the same estimates on 4 devices --------------------------------------------------
SHARD_SCRIPT = textwrap.dedent("""
    import json, sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from chaosgrad import estimators, systems
    assert jax.local_device_count() == 4, jax.local_devices()
    sysm = systems.make("rnn", n=4, g=1.5, dtype="float64")
    out = {}
    for name in sys.argv[1].split(","):
        kw = {"horizon": 8}
        kw.update({"tbptt": {"particles": 4, "window": 3}, "backprop": {"samples": 4}}.get(
            name, {"pairs": 4}))
        if name in ("tes", "pes"):
            kw["window"] = 3
        res = []
        for shard in (True, False):
            est = estimators.make(name, sysm, shard=shard, **kw)
            st = jax.jit(est.init)(jax.random.PRNGKey(0), sysm.theta)
            f = jax.jit(est.estimate)
            gs = []
            for i in range(2):
                g, st, info = f(st, sysm.theta, jax.random.PRNGKey(10 + i))
                gs.append(np.asarray(g))
            leaves = jax.tree_util.tree_leaves(st)
            ndev = max((len(x.sharding.device_set) for x in leaves), default=0)
            res.append((gs, ndev))
        (a, nd_a), (b, nd_b) = res
        out[name] = {"maxdiff": max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)),
                     "scale": max(float(np.max(np.abs(x))) for x in a),
                     "devices_sharded": nd_a, "devices_unsharded": nd_b}
    print("RESULT" + json.dumps(out))
""")


def _sharded_vs_unsharded(names):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(
        os.environ,
        XLA_FLAGS=flags,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SHARD_SCRIPT, ",".join(names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT") :])
    assert sorted(out) == sorted(names)
    for name, r in out.items():
        assert r["maxdiff"] <= 1e-12 * max(1.0, r["scale"]), (name, r)
        if name in ("tbptt", "tes", "pes"):
            assert r["devices_sharded"] == 4 and r["devices_unsharded"] == 1, (name, r)


def test_sharded_equals_unsharded():
    # One truncated and one full-unroll estimator in CI; all of them in the slow suite.
    _sharded_vs_unsharded(["pes", "es"])


@pytest.mark.slow
def test_sharded_equals_unsharded_all_estimators():
    _sharded_vs_unsharded(estimators.names())


# -- meta-training: resume after an interruption gives identical results ------------------------
def _train(out, steps, callback=None, estimator="pes"):
    sysm = influence_balancing(theta=0.2, horizon=30, dtype="float64")
    est = estimators.make(estimator, sysm, pairs=2, sigma=0.05, window=5, shard=False)
    return meta_train(
        sysm,
        est,
        optax.adam(0.02),
        steps,
        out,
        jax.random.PRNGKey(1),
        log_every=3,
        checkpoint_every=100,
        eval_seeds=2,
        callback=callback,
    )


def test_meta_train_resumes_identically(tmp_path):
    full = _train(tmp_path / "full", 10)

    def stop(step, rec):
        if step == 4:
            raise KeyboardInterrupt

    cut = _train(tmp_path / "cut", 10, callback=stop)
    assert cut.interrupted and cut.step == 4
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["steps_done"] == 4
    resumed = _train(tmp_path / "cut", 10)
    assert not resumed.interrupted and resumed.step == 10
    np.testing.assert_array_equal(np.asarray(resumed.theta), np.asarray(full.theta))
    assert resumed.history == full.history
    assert resumed.evals == full.evals
    assert [e["step"] for e in full.evals] == [0, 3, 6, 9, 10]
    assert (tmp_path / "cut" / "log.jsonl").read_text() == (
        tmp_path / "full" / "log.jsonl"
    ).read_text()
    with np.load(tmp_path / "full" / "curves.npz") as z:
        assert z["loss"].shape == (10,) and np.all(np.isfinite(z["eval_meta_loss"]))
    # A checkpoint from another configuration is refused, not silently mixed.
    with pytest.raises(InputError, match="different"):
        _train(tmp_path / "full", 12, estimator="tes")


def test_meta_train_cli_lowers_the_meta_loss(tmp_path):
    import argparse

    from chaosgrad.app.meta_train import add_meta_train_parser, run_meta_train

    parser = argparse.ArgumentParser()
    add_meta_train_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        [
            "meta-train",
            "--system",
            "linear",
            "--param",
            "n=3",
            "--param",
            "radius=0.95",
            "--param",
            "loss=quadratic",
            "--estimator",
            "backprop",
            "--est-param",
            "samples=2",
            "--est-param",
            "horizon=20",
            "--steps",
            "15",
            "--lr",
            "0.05",
            "--out",
            str(tmp_path / "cli"),
            "--json",
            "--log-every",
            "5",
        ]
    )
    assert run_meta_train(args) == 0
    res = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert res["final_meta_loss"] < 0.8 * res["initial_meta_loss"]
    bad = parser.parse_args(
        [
            "meta-train",
            "--system",
            "linear",
            "--estimator",
            "pes",
            "--est-param",
            "window=x",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    with pytest.raises(InputError):
        run_meta_train(bad)


def test_pes_perturbation_bookkeeping(ib):
    # ξ after a window is ξ + s ε without a reset, and s ε alone (the current perturbation)
    # when the particle's run ended inside the window — an exact identity.
    from chaosgrad.estimators.es import pair_perturbations

    sysm, _ = ib
    est = estimators.make(
        "pes", sysm, pairs=6, sigma=0.1, window=IB_K, horizon=25, stagger=True, shard=False
    )
    state = jax.jit(est.init)(jax.random.PRNGKey(4), sysm.theta)
    f = jax.jit(est.estimate)
    seen = {True: 0, False: 0}
    for j in range(6):
        key = jax.random.PRNGKey(100 + j)
        _, new, _ = f(state, sysm.theta, key)
        eps = np.asarray(pair_perturbations(key, sysm.theta, 6, 0.1))
        signed = eps[:, None] * np.array([1.0, -1.0])[None, :]
        reset = np.asarray(new.particles.run) > np.asarray(state.particles.run)
        expect = np.where(reset, signed, np.asarray(state.particles.xi) + signed)
        np.testing.assert_allclose(np.asarray(new.particles.xi), expect, rtol=0, atol=1e-15)
        # Both members of a pair share their run keys and reset together.
        assert np.all(reset[:, 0] == reset[:, 1])
        seen[True] += int(reset.sum())
        seen[False] += int((~reset).sum())
        state = new
    assert seen[True] > 0 and seen[False] > 0


def test_pytree_theta_every_estimator():
    # θ as a dict of arrays (as for learned optimizers); a deterministic system, so a
    # truncated-backprop window as long as the run equals full backprop exactly.
    def init(key, th):
        return jnp.ones(3)

    def step(x, th, key):
        x = jnp.tanh(th["A"] @ x + th["b"])
        return x, StepOut(loss=jnp.mean(x**2))

    theta = {"A": 0.9 * jnp.eye(3) + 0.1, "b": jnp.array([0.1, -0.2, 0.3])}
    sysm = System(init, step, name="dict-theta", theta=theta, horizon=12, precision="float64")
    grads = {}
    # es and tes share their pytree code paths with combined and pes.
    for name in ("backprop", "tbptt", "pes", "combined"):
        kw = {
            "tbptt": {"particles": 1, "window": 12, "stagger": False},
            "backprop": {"samples": 2},
        }.get(name, {"pairs": 2})
        est = estimators.make(name, sysm, shard=False, **kw)
        st = est.init(jax.random.PRNGKey(0), theta)
        g, _, info = jax.jit(est.estimate)(st, theta, jax.random.PRNGKey(1))
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(theta), name
        assert int(info["nonfinite_grad"]) == 0 and int(info["steps"]) > 0, name
        grads[name] = g
    for leaf in ("A", "b"):
        np.testing.assert_allclose(
            np.asarray(grads["tbptt"][leaf]),
            np.asarray(grads["backprop"][leaf]),
            rtol=1e-12,
            atol=1e-15,
        )


# -- the credit rules of truncated ES and PES, and the one-reset window -------------------------
def test_tes_and_pes_credit_rules_against_the_formulas():
    # Random ε, ξ and window losses for 3 pairs × 2 members, θ a dict (a 2×2 and a scalar
    # leaf); member (1, ·) reset inside the window. Reference: the defining sums in numpy.
    es_mod = sys.modules["chaosgrad.estimators.es"]
    rng = np.random.default_rng(0)
    eps = {"a": rng.standard_normal((3, 2, 2)), "b": rng.standard_normal(3)}
    xi = {"a": rng.standard_normal((3, 2, 2, 2)), "b": rng.standard_normal((3, 2))}
    old, new = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    reset = np.array([[False, False], [True, True], [False, False]])
    win = es_mod.WindowLosses(jnp.asarray(old), jnp.asarray(new), jnp.asarray(reset))
    signs = np.array([1.0, -1.0])
    g_tes, xi_tes = es_mod.tes_credit(
        jax.tree_util.tree_map(jnp.asarray, eps), jnp.asarray(signs), (), win
    )
    g_pes, xi_pes = es_mod.pes_credit(
        jax.tree_util.tree_map(jnp.asarray, eps),
        jnp.asarray(signs),
        jax.tree_util.tree_map(jnp.asarray, xi),
        win,
    )
    assert xi_tes == ()
    for k in ("a", "b"):
        e, x = eps[k], xi[k]
        ref_tes = sum(signs[m] * e[i] * (old[i, m] + new[i, m]) for i in range(3) for m in (0, 1))
        ref_pes = sum(
            (x[i, m] + signs[m] * e[i]) * old[i, m] + signs[m] * e[i] * new[i, m]
            for i in range(3)
            for m in (0, 1)
        )
        np.testing.assert_allclose(np.asarray(g_tes[k]), ref_tes, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(g_pes[k]), ref_pes, rtol=1e-12, atol=1e-14)
        for i in range(3):
            for m in (0, 1):
                want = signs[m] * e[i] + (0 if reset[i, m] else x[i, m])
                np.testing.assert_allclose(np.asarray(xi_pes[k][i, m]), want, rtol=0, atol=1e-15)
    # The estimators are built from these rules, not from a flag.
    sysm = influence_balancing(theta=0.2, horizon=20, dtype="float64")
    assert estimators.make("pes", sysm, pairs=2).name == "pes"
    assert es_mod.PES.rule is es_mod.pes_credit and es_mod.TES.rule is es_mod.tes_credit


@pytest.mark.parametrize("t", [0, 3, 11, 19])
def test_one_reset_window_equals_the_step_by_step_window(t):
    # K = 8 ≤ every run's length (loguniform in [8, 20]), so at most one reset per window:
    # the vectorised path must reproduce the step-by-step path exactly, with step noise, a
    # reset at any position (t = 19 of a 20-step run resets after the first step) or none.
    from chaosgrad.estimators.particles import (
        _run_window_one_reset,
        _run_window_steps,
        make_schedule,
    )

    def init(key, th):
        return jax.random.normal(key, (3,)) * th

    def step(x, th, key):
        x = jnp.tanh(1.3 * x + 0.1 * jax.random.normal(key, (3,))) * th
        return x, StepOut(loss=jnp.sum(x**2))

    sysm = System(init, step, theta=jnp.asarray(1.1), horizon=20, precision="float64")
    sched = make_schedule("loguniform", 20, min_length=8, max_length=20)
    pk = jax.random.PRNGKey(3)
    x = jnp.array([0.3, -0.2, 0.5])
    args = (sysm, sched, 8, sysm.theta, x, jnp.int32(t), jnp.int32(20), jnp.int32(2), pk)
    (s1, t1, n1, r1), w1 = jax.jit(_run_window_steps, static_argnums=(0, 1, 2))(*args)
    (s2, t2, n2, r2), w2 = jax.jit(_run_window_one_reset, static_argnums=(0, 1, 2))(*args)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
    assert (int(t1), int(n1), int(r1)) == (int(t2), int(n2), int(r2))
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(w2.resets) == (1 if t >= 12 else 0)


# -- noise-reuse ES and the reparameterisation gradient: unbiased for the smoothed target --------
@pytest.mark.parametrize("horizon, stagger", [(100, False), (95, True), (7, True)])
def test_nres_is_unbiased_for_the_whole_run_gradient(ib, horizon, stagger):
    # One perturbation per inner run (kept across windows, fresh at each reset, also when the
    # run ends mid-window or several runs end in one window): unbiased for the gradient of the
    # T-step meta-loss (linear in θ, so smoothing changes nothing), with a variance that does
    # not grow with the truncations as PES's does.
    sysm, _ = ib
    true = float(
        jax.grad(lambda th: unrolled_loss(sysm, th, jax.random.PRNGKey(0), horizon))(sysm.theta)
    )
    est = estimators.make(
        "nres", sysm, pairs=8, sigma=0.1, window=IB_K, horizon=horizon, stagger=stagger, shard=False
    )
    assert est.target == "smoothed" and est.correlated
    g, info = replicate(est, sysm.theta, reps=300, calls=IB_T // IB_K)
    if stagger:
        assert int(np.sum(info["resets"])) > 0
    assert_unbiased(g.mean(axis=1), true)
    if horizon == 100:
        pes = estimators.make(
            "pes",
            sysm,
            pairs=8,
            sigma=0.1,
            window=IB_K,
            horizon=horizon,
            stagger=stagger,
            shard=False,
        )
        g_pes, _ = replicate(pes, sysm.theta, reps=300, calls=IB_T // IB_K)
        # measured 60 against 660: NRES's per-estimate variance is far below PES's here
        assert g.var(axis=0).mean() < 0.3 * g_pes.var(axis=0).mean()


@pytest.mark.parametrize("name", ["nres", "reparam"])
def test_smoothed_estimators_against_the_closed_form(name):
    # the smoothed gradient of quadratic + sinusoid is known in closed form (σ = 0.5 makes
    # the smoothing factor e^{-ω²σ²/2} = 0.61, far from 1: an exact-gradient estimator fails)
    s = smooth_quadratic(noise=0.3)
    kw = {"pairs": 8, "sigma": 0.5, "shard": False}
    if name == "nres":
        kw.update(window=2, horizon=3)
    est = estimators.make(name, s, **kw)
    assert est.target == "smoothed"
    g, _ = replicate(est, s.theta, reps=400, calls=3)
    mean, hw = assert_unbiased(g.mean(axis=1), smoothed_grad(THETA_Q, 0.5))
    assert np.any(np.abs(mean - raw_grad(THETA_Q)) > hw)
