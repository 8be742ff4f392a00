"""Figures: the toy's variances against closed forms, saved results, resume and redraw."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chaosgrad.app import figures
from chaosgrad.app.figures import toy


def test_toy_reparameterisation_variance_matches_closed_form():
    xs = np.linspace(-10, 10, 41)
    n = 4000
    for w in (0.5, 10.0, 60.0):
        r = toy._variances(w, xs, n, jax.random.PRNGKey(1))
        # sample variance of n iid draws: relative sd ≈ sqrt(2/(n-1)) for near-Gaussian
        # draws; a bounded cosine has lighter tails, so 6 sd is a < 1e-6 false-failure bound
        assert r["rep_max"] == pytest.approx(r["exact_rep_max"], rel=6 * np.sqrt(2 / (n - 1)))


def test_toy_smoothed_loss_closed_form_matches_monte_carlo():
    eps = 0.3 * np.random.default_rng(0).standard_normal(200_000)
    for w, x in [(4.0, 1.3), (10.0, -7.0)]:
        mc = np.asarray(toy.toy_loss(x + eps, w))
        assert toy.smoothed_loss(x, w) == pytest.approx(mc.mean(), abs=6 * mc.std() / 447)


def test_figure_results_are_saved_resumed_and_redrawn(tmp_path, monkeypatch):
    monkeypatch.setitem(toy.SIZES, "quick", {"samples": 200, "xs": 11, "ws": 4})
    png = figures.run_figure("toy", "quick", tmp_path)
    meta = json.loads((tmp_path / "toy" / "meta.json").read_text())
    assert meta["scale"] == "quick" and meta["versions"]["jax"] and meta["precision"]["dtype"] \
        is None and meta["parts_reused"] == 0
    first = dict(np.load(tmp_path / "toy" / "results.npz"))
    # an interrupted run: results.npz never written, the parts are there -> resume from them
    (tmp_path / "toy" / "results.npz").unlink()
    figures.run_figure("toy", "quick", tmp_path)
    meta = json.loads((tmp_path / "toy" / "meta.json").read_text())
    assert meta["parts_reused"] == 4
    again = dict(np.load(tmp_path / "toy" / "results.npz"))
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    # redraw only: the experiment is not run again when results exist
    png.unlink()
    monkeypatch.setattr(toy, "run", lambda *a: pytest.fail("re-ran the experiment"))
    assert figures.run_figure("toy", "quick", tmp_path).stat().st_size > 10_000


def test_truncated_episode_loss_value_is_exact_and_gradient_truncates():
    from chaosgrad import systems
    from chaosgrad.app.figures.truncation import truncated_loss
    from chaosgrad.unroll import unrolled_loss

    s = systems.make("rnn", n=6, g=1.5)
    key = jax.random.PRNGKey(2)
    full = unrolled_loss(s, s.theta, key, 20)
    assert float(truncated_loss(s, s.theta, key, 20, 5)) == pytest.approx(float(full), rel=1e-12)
    g_full = jax.grad(lambda th: unrolled_loss(s, th, key, 20))(s.theta)
    g_none = jax.grad(lambda th: truncated_loss(s, th, key, 20, 20))(s.theta)
    np.testing.assert_allclose(g_none, g_full, rtol=1e-12)
    # with every = 1 only the direct dependence of each step on θ remains: the sum over steps
    # of the one-step gradients at the (fixed) visited states
    from chaosgrad.system import split_run_key
    from chaosgrad.unroll import unroll

    traj = unroll(s, s.theta, key, 20, trajectory=True).trajectory[0]
    k_init, _ = split_run_key(key)
    states = np.concatenate([np.asarray(s.init(k_init, s.theta))[None], traj[:-1]])
    ref = sum(jax.grad(lambda th, x=x: s.step(jnp.asarray(x), th, None)[1].loss)(s.theta)
              for x in states) / 20
    g_one = jax.grad(lambda th: truncated_loss(s, th, key, 20, 1))(s.theta)
    np.testing.assert_allclose(g_one, ref, rtol=1e-10)


def test_eigenvector_perturbation_mse_matches_closed_form():
    """Figure 7: a perturbation ε·v_k of the FTCS heat step's start (or added every step)
    leaves MSE ε²λ_k^{2i}/n (or ε²(Σ_{j<i}λ_k^j)²/n) — exact for a linear step."""
    import chaosgrad
    from chaosgrad.app.figures import perturbation as fig7

    chaosgrad.enable_x64()
    n, steps = 4, 10
    r = fig7.measure(n, 0.55, [1e-4, 1e-2], steps)
    # eigenvalues of the Jacobian: 1 − 4r sin²(kπ/(2(n+1))), by hand for n = 4, r = 0.55
    by_hand = np.sort(1 - 2.2 * np.sin(np.arange(1, 5) * np.pi / 10) ** 2)[::-1]
    np.testing.assert_allclose(r["eigenvalues"], by_hand, atol=1e-13)
    # k = n (λ ≈ −0.99) after 10 steps at ε = 1e-2, by hand: 1e-4 · λ^20 / 4
    assert r["once"][-1, 1, -1] == pytest.approx(1e-4 * by_hand[-1] ** 20 / 4, rel=1e-9)
    # 'every step' at i = 3 is ε²(1 + λ + λ²)²/n
    lam = by_hand[0]
    assert r["every"][0, 0, 3] == pytest.approx(1e-8 * (1 + lam + lam ** 2) ** 2 / 4, rel=1e-6)
    err_once, below = fig7.relative_error(r["once"], r["exact_once"])
    err_every, _ = fig7.relative_error(r["every"], r["exact_every"])
    # k = 2 (λ = 0.24) at ε = 1e-4 falls below the round-off floor by step 10, nothing else
    assert err_once < 1e-5 and err_every < 1e-5 and 0 < below < 8
    # an unstable r grows exactly the modes with |λ| > 1; a stable one none
    stable = fig7.measure(n, 0.45, [1e-2], steps)
    assert np.all(stable["once"][:, 0, -1] < 1e-4 / n)
    unstable = fig7.measure(n, 0.9, [1e-2], steps)
    grows = np.abs(unstable["eigenvalues"]) > 1
    # 1 − 3.6 sin²(3π/10) = −1.36 and 1 − 3.6 sin²(4π/10) = −2.26: the two rough modes grow
    np.testing.assert_array_equal(grows, [False, False, True, True])
    assert np.all(unstable["once"][grows, 0, -1] > 1e-4 / n)


def test_figure7_registered_under_its_own_name_and_meta_says_what_is_drawn(tmp_path,
                                                                          monkeypatch):
    from chaosgrad.app.figures import perturbation as fig7

    assert figures.FIGURES["perturbation"][1].startswith("Figure 7")
    assert not figures.FIGURES["linear"][1].startswith("Figure 7")
    monkeypatch.setitem(fig7.SIZES, "quick", {"n": 6, "steps": 12, "eps": [1e-5, 1e-2],
                                              "eps_points": 4})
    figures.run_figure("perturbation", "quick", tmp_path)
    meta = json.loads((tmp_path / "perturbation" / "meta.json").read_text())
    assert "eigenvector" in meta["drawn"] and "X^{i+1} = X^i + ε" in meta["assumption"]
    for r, grow in (("0.45", 0), ("0.55", 1)):
        pr = meta["per_r"][r]
        assert pr["modes_growing"] == grow and pr["nonfinite"] == 0
        assert pr["rel_error_once"] < 1e-4 and pr["eigenvalue_max_abs_error"] < 1e-12


def test_fixed_reset_keeps_the_start_and_varies_only_the_step_noise():
    """Figure 2b's randomness: with the reset fixed, two keys start from the same state and
    differ only through the noise the steps draw."""
    import chaosgrad
    from chaosgrad.app.figures.rigid_body import fixed_reset
    from chaosgrad.unroll import unroll

    def init(key, theta):
        return jax.random.normal(key, (2,))

    def step(x, theta, key):
        x = theta * x + jax.random.normal(key, (2,))
        return x, chaosgrad.StepOut(loss=x[0])

    s = chaosgrad.System(init, step, name="noisy", theta=jnp.asarray(0.5))
    fixed = fixed_reset(s, jax.random.PRNGKey(0))
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(fixed.init(k1, s.theta), fixed.init(k2, s.theta))
    np.testing.assert_array_equal(fixed.init(k1, s.theta), s.init(jax.random.split(
        jax.random.PRNGKey(0))[0], s.theta))  # the start of PRNGKey(0)'s own run
    l1 = unroll(fixed, s.theta, k1, 3).losses
    l2 = unroll(fixed, s.theta, k2, 3).losses
    assert not np.allclose(l1, l2)
    # first loss: 0.5·x0 + noise_0, so the difference is the step noise alone
    from chaosgrad.system import split_run_key, step_key
    noise = [jax.random.normal(step_key(split_run_key(k)[1], 0), (2,))[0] for k in (k1, k2)]
    assert float(l1[0] - l2[0]) == pytest.approx(float(noise[0] - noise[1]), rel=1e-6)


def test_rigid_body_summary_counts_extrema_and_roughness():
    from chaosgrad.app.figures import rigid_body as fig2

    x = np.linspace(-1, 1, 201)
    assert fig2.wiggle(3 * x ** 2 - x + 2) == pytest.approx(0.0, abs=1e-12)
    # a ±0.05 square wave of 40 periods is nearly orthogonal to quadratics: RMS ≈ 0.05
    assert fig2.wiggle(0.05 * np.sign(np.sin(40 * np.pi * x + 0.1))) == pytest.approx(0.05,
                                                                                      rel=0.05)
    assert np.isnan(fig2.wiggle([0, np.nan, 1, 2]))
    size = {"unrolls": [1, 16]}
    jag = x ** 2 + 0.05 * np.sign(np.sin(40 * np.pi * x))  # 40 flips: jagged
    out = {"slice_losses": np.stack([x ** 2, jag]),
           # three "seeds": jagged copies with opposite flips, so their mean is x² + 0.05/3·…
           "seed_losses": np.stack([np.stack([x, jag]), np.stack([x, x ** 2]),
                                    np.stack([x, 2 * x ** 2 - jag])]),
           "smooth_unrolls": np.array([8, 16]), "var_horizons": np.array([2, 4]),
           **{f"variance_{j}": np.array([1.0, 1e3]) for j in range(3)},
           **{f"nonfinite_{j}": np.zeros(2) for j in range(3)}}
    summ = fig2.summary(out, size)
    assert summ["a"]["1"]["extrema"] == 1 and summ["a"]["16"]["extrema"] > 30
    assert summ["b"]["16"]["mean_extrema"] == 1  # (jag + x² + 2x² − jag)/3 = x²
    assert summ["b"]["16"]["mean_wiggle"] < 1e-12 < 0.04 < summ["b"]["16"]["seed_wiggle_median"]
    assert summ["b"]["16"]["seed_extrema_max"] > 30 and summ["b"]["16"]["seed_extrema_min"] == 1
    assert summ["c"]["0.002"]["variance"] == 1e3 and summ["b"]["8"]["nonfinite"] == 0


def test_truncation_training_batches_episodes_and_summarises_over_seeds():
    """Figure 6: each Adam step's loss is the mean truncated loss of `batch` fresh episodes;
    the final reward is a t interval over training seeds."""
    from chaosgrad import systems
    from chaosgrad.app.figures import truncation

    s = systems.make("rnn", n=6, g=1.5)
    size = {"episode": 12, "iterations": 3, "batch": 2, "lr": 1e-2}
    key = jax.random.PRNGKey(5)
    r = truncation._train(s, s.theta, size, 4, key)
    keys = jax.random.split(jax.random.fold_in(key, 0), 2)
    expect = np.mean([float(truncation.truncated_loss(s, s.theta, k, 12, 4)) for k in keys])
    assert r["loss"][0] == pytest.approx(expect, rel=1e-9)
    assert r["loss"].shape == (3,) and int(r["skipped"]) == 0
    assert r["loss"][1] != r["loss"][0]  # θ moved and new episodes were drawn
    # three seeds whose last-10% rewards are 1, 2, 3: mean 2 ± t(0.975, 2)·1/√3 = 2 ± 2.484
    loss = -np.array([[0.0] * 9 + [1.0], [5.0] * 9 + [2.0], [0.0] * 9 + [3.0]])
    out = {"loss_1": loss, "grad_norm_1": np.array([[1.0] * 9 + [np.inf]] * 3),
           "skipped_1": np.array([1, 1, 1])}
    summ = truncation.summary(out, {"truncations": [1], "iterations": 10})["1"]
    assert summ["final_reward"] == pytest.approx(2.0)
    assert summ["high"] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert summ["skipped"] == 3 and summ["grad_norm_max"] == 1.0
    assert summ["initial_reward"] == pytest.approx(5 / 3)
