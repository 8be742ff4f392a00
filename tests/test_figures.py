"""Figures: the toy's variances against closed forms, saved results, resume and redraw."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from chaosgrad.app import figures
from chaosgrad.app.figures import toy
from chaosgrad.errors import InputError


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
    assert (
        meta["scale"] == "quick"
        and meta["versions"]["jax"]
        and meta["precision"]["dtype"] is None
        and meta["parts_reused"] == 0
    )
    # which device ran it, not only the backend (a "gpu" meta.json once named no GPU)
    import jax

    assert meta["precision"]["device_kind"] == jax.devices()[0].device_kind
    assert meta["precision"]["device_count"] == len(jax.devices()) >= 1
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
    ref = (
        sum(
            jax.grad(lambda th, x=x: s.step(jnp.asarray(x), th, None)[1].loss)(s.theta)
            for x in states
        )
        / 20
    )
    g_one = jax.grad(lambda th: truncated_loss(s, th, key, 20, 1))(s.theta)
    np.testing.assert_allclose(g_one, ref, rtol=1e-10)


def _small_lopt_system():
    from chaosgrad import systems

    # a learned optimizer (4 hidden units) on a noisy quadratic: cheap to compile, and the
    # meta-loss depends on the run key through the inner init and the fixed batch
    return systems.make(
        "lopt",
        task="quadratic",
        optimizer="mlp",
        dim=3,
        noise=0.5,
        fixed_batch=True,
        lopt_hidden=4,
        dtype="float64",
    )


def test_figure3_variance_is_over_theta_perturbations_with_data_and_init_fixed():
    from jax.flatten_util import ravel_pytree

    from chaosgrad.app.figures.learned_optimizer import perturbed_gradient_variance
    from chaosgrad.unroll import unrolled_loss

    s = _small_lopt_system()
    key, pkey = jax.random.PRNGKey(3), jax.random.PRNGKey(4)
    kw = {"samples": 5, "key": key, "perturbation_key": pkey, "remat_chunk": 2}
    # no perturbation: every sample is the same θ with the same data and init -> exactly 0
    zero = perturbed_gradient_variance(s, s.theta, [2, 5], std=0.0, **kw)
    assert np.all(zero["variance"] == 0.0) and np.all(zero["nonfinite"] == 0)
    got = perturbed_gradient_variance(s, s.theta, [2, 5], std=0.3, **kw)
    # reference: the same perturbations, each gradient taken with the one fixed run key
    flat, unravel = ravel_pytree(s.theta)
    eps = jax.random.normal(pkey, (5, flat.size), flat.dtype)
    for j, T in enumerate([2, 5]):
        g = np.stack(
            [
                np.asarray(
                    ravel_pytree(
                        jax.grad(lambda th, T=T: unrolled_loss(s, th, key, T))(
                            unravel(flat + 0.3 * e)
                        )
                    )[0]
                )
                for e in eps
            ]
        )
        assert got["variance"][j] == pytest.approx(np.var(g, axis=0, ddof=1).sum(), rel=1e-9)
        assert got["variance"][j] > 0
    # the run key is held fixed, not ignored: another key (other data and init) differs
    other = perturbed_gradient_variance(
        s, s.theta, [2, 5], std=0.3, **dict(kw, key=jax.random.PRNGKey(5))
    )
    assert not np.allclose(other["variance"], got["variance"], rtol=1e-3)


def test_count_turns_ignores_wiggles_below_the_tolerance():
    from chaosgrad.app.figures.learned_optimizer import count_turns

    x = np.linspace(0, 4 * np.pi, 401)  # sin has 4 interior extrema on (0, 4π)
    # then a flat stretch with rounding-level noise: ~100 sign changes, none standing out
    wiggly = np.concatenate([np.sin(x), 1e-5 * np.random.default_rng(0).standard_normal(200)])
    assert count_turns(wiggly, 1e-3) == 4
    assert count_turns(wiggly, 0) > 50
    assert count_turns([0, 1, 0, 1, 0], 0.5) == 3 and count_turns([0, 1, 0, 1, 0], 1.5) == 0


def test_growth_fits_tell_an_exponential_from_a_power_law():
    from chaosgrad.gradients import growth_fits

    t = np.array([10, 30, 60, 90, 120, 180, 240])
    e = growth_fits(t, 3e-5 * np.exp(0.07 * t))
    assert abs(e["rate"] - 0.07) < 1e-12 and e["exp_rms"] < 1e-12
    assert e["power_rms"] > 0.1 and e["better"] == "exponential"
    p = growth_fits(t, 2e-4 * t**3.5)
    assert abs(p["power"] - 3.5) < 1e-12 and p["power_rms"] < 1e-12
    assert p["exp_rms"] > 0.1 and p["better"] == "power law"
    # non-finite and non-positive values are left out (counted by "points"), never replaced
    q = growth_fits(t, np.where(t == 60, np.nan, 2e-4 * t**3.5) * np.where(t == 90, -1, 1))
    assert q["points"] == 5 and abs(q["power"] - 3.5) < 1e-12
    # two points fit either law exactly: no verdict
    assert growth_fits([10, 20, 30], [1.0, 2.0, np.inf])["better"] is None


def test_smoothing_change_against_the_noise_of_the_mean():
    from chaosgrad.app.figures.learned_optimizer import smoothing_change

    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 101)
    base = np.sin(20 * x)  # range 2
    noise = 0.1 * rng.standard_normal((64, 101))
    same = smoothing_change(base, base + noise)
    # the mean of 64 noisy copies moves by its standard error alone: 0.1/8 over a range of 2
    assert abs(same["noise"] - 0.1 / 8 / 2) < 0.1 * 0.1 / 8 / 2
    assert same["rms"] < 2 * same["noise"] and not same["changed"]
    moved = smoothing_change(base, 0.5 * base + noise)  # smoothing halves the oscillation
    assert abs(moved["rms"] - 0.5 * np.sqrt(0.5) / 2) < 0.01 and moved["changed"]
    bad = smoothing_change(base, np.vstack([base + noise[:3], np.full(101, np.nan)]))
    assert bad["samples"] == 3 and bad["nonfinite_samples"] == 1


@pytest.mark.slow  # heavy (compile-bound, 30-80 s on 2 cores): make test-slow
def test_lopt_meta_training_comparison_runs_end_to_end(tmp_path, monkeypatch):
    from chaosgrad.app.figures import lopt_meta_training as m
    from chaosgrad.unroll import unrolled_loss

    # two estimators and Adam keep it small: each meta-training run compiles its own step
    monkeypatch.setattr(m, "ESTIMATORS", ("pes", "backprop"))
    monkeypatch.setattr(m, "BASELINES", ("adam",))
    tiny = {
        "horizon": 6,
        "window": 3,
        "runs": 2,
        "budget": 240,
        "tune_budget": 120,
        "outer_lrs": [1e-3, 1e-2],
        "eval_seeds": 2,
        "heldout_seeds": 3,
        "tune_seeds": 2,
        "lr_grid": [1e-3, 1.0, 3],
        "betas": [0.5, 0.9],
        "schedules": ["constant", "cosine"],
        "lopt_lr": 0.01,
        "pairs": 2,
        "particles": 2,
        "samples": 2,
        "evals": 2,
        "boot": 200,
        "dtype": "float64",
        "task": {"task": "quadratic", "dim": 3, "noise": 0.1},
    }
    monkeypatch.setitem(m.SIZES, "quick", tiny)
    png = figures.run_figure("lopt_meta_training", "quick", tmp_path, progress=False)
    assert png.stat().st_size > 10_000
    meta = json.loads((tmp_path / "lopt_meta_training" / "meta.json").read_text())
    # equal compute in forward-step equivalents: a differentiated step costs 1 + 2
    assert meta["fse_per_estimate"] == {"pes": 12, "backprop": 36}
    assert m.fse_per_estimate("tbptt", tiny) == 18 and m.fse_per_estimate("es", tiny) == 24
    for n in m.ESTIMATORS:
        assert meta["outer_steps"][n] == 240 // meta["fse_per_estimate"][n]
        assert meta["outer_lr"][n]["best"] in tiny["outer_lrs"]
        assert len(meta["train_seconds"][n]) == 2  # one per run
    assert set(meta["table"]) == {*m.ESTIMATORS, "init", *m.BASELINES}
    # Adam's held-out number is Adam at its tuned point on the held-out seeds, recomputed
    point = meta["tuned"]["adam"]
    assert point["schedule"] in ("constant", "cosine") and point["beta"] in (0.5, 0.9)
    s = m.make_system("adam", tiny, schedule=point["schedule"])
    th = m._baseline_theta(s, "adam", point)
    ref = np.mean(
        [float(unrolled_loss(s, th, jax.random.PRNGKey(m.HELDOUT_OFFSET + i), 6)) for i in range(3)]
    )
    assert meta["table"]["adam"]["T"]["meta_loss"] == pytest.approx(ref, rel=1e-9)
    lo, hi = meta["table"]["adam"]["T"]["meta_loss_interval"]
    assert lo <= ref <= hi
    for n in m.ESTIMATORS:
        for h in ("T", "10T"):
            v = meta["vs_adam"][n][h]
            assert v["verdict"] in ("better", "tie", "worse", "diverges")
    assert set(meta["beat_adam_at_T"]) <= set(m.ESTIMATORS)


@pytest.mark.slow  # compile-bound (six meta-training runs at tiny sizes): make test-slow
def test_lopt_self_training_runs_end_to_end(tmp_path, monkeypatch):
    from jax.flatten_util import ravel_pytree

    from chaosgrad.app.figures import lopt_self_training as m
    from chaosgrad.app.figures.lopt_meta_training import _built
    from chaosgrad.io import load_npz
    from chaosgrad.unroll import unrolled_loss

    tiny = {
        "horizon": 6,
        "window": 3,
        "estimator": "pes",
        "pairs": 2,
        "particles": 2,
        "samples": 2,
        "stage1_steps": 4,
        "stage1_lr": 1e-2,
        "steps": 4,
        "tune_steps": 2,
        "outer_lrs": [1e-2],  # a one-point grid: each rate is a run to compile
        "runs": 2,
        "evals": 2,
        "eval_seeds": 2,
        "heldout_seeds": 3,
        "lopt_lr": 0.01,
        "boot": 200,
        "dtype": "float64",
        "task": {"task": "quadratic", "dim": 3, "noise": 0.1, "sample_task": True},
    }
    monkeypatch.setitem(m.SIZES, "quick", tiny)
    png = figures.run_figure("lopt_self_training", "quick", tmp_path, progress=False)
    assert png.stat().st_size > 10_000
    folder = tmp_path / "lopt_self_training"
    meta = json.loads((folder / "meta.json").read_text())
    tuned = meta["adam_outer_lr"]
    assert tuned["best"] == tiny["outer_lrs"][int(np.argmin(tuned["scores"]))]
    parts = {p.name.split("-", 2)[2][:-4]: p for p in (folder / "parts").glob("*.npz")}
    # equal compute: the same estimator and outer steps for both outer optimizers
    for k in m.OUTER_NAMES:
        for r in range(2):
            part = load_npz(parts[f"train-{k}-{r}"])
            assert int(part["outer_steps"]) == 4 and float(part["fse_per_estimate"]) == 12
    # the held-out meta-loss of run 0's Adam-trained θ, recomputed from its saved θ
    lopt, _ = _built("pes", json.dumps(tiny, sort_keys=True))
    theta = ravel_pytree(lopt.theta)[1](jnp.asarray(load_npz(parts["train-adam-0"])["theta"]))
    ref = np.mean(
        [
            float(unrolled_loss(lopt, theta, jax.random.PRNGKey(m.HELDOUT_OFFSET + i), 6))
            for i in range(3)
        ]
    )
    assert meta["summary"]["adam"]["per_run"][0] == pytest.approx(ref, rel=1e-9)
    moved = np.asarray(load_npz(parts["train-self-1"])["theta"]) - np.asarray(
        ravel_pytree(m.theta0_of(1, tiny))[0]
    )
    assert meta["summary"]["self"]["theta_rms_change"][1] == pytest.approx(
        np.sqrt(np.mean(moved**2)), rel=1e-12
    )
    # paired by run and seed with equal seeds per run: the mean difference is the difference
    # of the per-run means
    s, a = (np.asarray(meta["summary"][k]["per_run"]) for k in ("self", "adam"))
    d = meta["self_minus_adam"]
    assert d["difference"] == pytest.approx(np.mean(s - a), rel=1e-9)
    assert d["verdict"] in ("better", "worse", "tie", "diverges")
    assert meta["resolved"] == (d["verdict"] in ("better", "worse"))
    assert meta["self_outer"]["time_features_beyond_training"] is False  # 4 steps < 6
    for k in m.OUTER_NAMES:
        assert 0 < meta["summary"][k]["outer_update_seconds"]


def test_median_band_is_the_median_with_a_bootstrap_interval():
    from chaosgrad.app.figures.lopt_self_training import median_band

    c = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    med, lo, hi = median_band(c, 500)
    np.testing.assert_array_equal(med, [3.0, 4.0])
    # a resample's median is the smallest run's with probability 7/27 (two or three of the
    # three draws are that run), above the 2.5% quantile: the interval is the runs' range
    np.testing.assert_array_equal(lo, [1.0, 2.0])
    np.testing.assert_array_equal(hi, [5.0, 9.0])
    same = median_band(np.ones((4, 3)), 100)
    for x in same:
        np.testing.assert_array_equal(x, np.ones(3))


def test_hierarchical_bootstrap_interval_covers_the_mean_of_runs():
    from chaosgrad.app.figures.lopt_meta_training import hierarchical_interval

    rng = np.random.default_rng(0)
    covered = 0
    for i in range(200):  # runs differ (sd 1) more than seeds within a run (sd 0.3)
        x = rng.normal(size=(5, 1)) + 0.3 * rng.normal(size=(5, 16))
        _, lo, hi = hierarchical_interval(x, 500, seed=i)
        covered += lo <= 0 <= hi
    # a percentile bootstrap over 5 runs undercovers a little: measured 0.87
    assert 0.8 <= covered / 200 <= 0.99
    one = hierarchical_interval(np.ones((1, 8)), 100)
    assert one == (1.0, 1.0, 1.0)


def test_meta_training_seconds_take_out_compiling_steps():
    from chaosgrad.app.figures.lopt_meta_training import compute_seconds

    cum, taken = compute_seconds([10.0, 1.0, 1.0, 1.0, 8.0, 1.0])  # steps 1 and 5 compiled
    np.testing.assert_allclose(cum, [0, 1, 2, 3, 4, 5, 6])
    assert taken == pytest.approx(16.0)


def test_estimator_study_cell_records_its_target_and_null_check(tmp_path):
    """One cell of the estimator study: a bias is resolved exactly when its interval's low
    end is above 0, and the cell records its target and its null check."""
    import math

    import numpy as np

    from chaosgrad import systems
    from chaosgrad.app.figures import lopt_estimators as le

    # one cell of the study on a cheap chaotic map, end to end, and its figure
    size = dict(
        le.SIZES["quick"], samples=8, seconds=None, reference_batches=16, reference_per_batch=16
    )
    s = systems.make("logistic", r=3.7)
    cell = le.cell(s, s.theta, 8, size, jax.random.PRNGKey(0))
    for k, code in enumerate(cell["bias_status"]):  # resolved exactly when low > 0
        assert (code == 1) == (cell["bias"][k, 1] > 0)
    assert str(cell["target"]) == "smoothed" and 0 < float(cell["null_p"]) <= 1
    assert np.all(cell["rel_error"][:, 1] <= cell["rel_error"][:, 0])
    assert np.all(cell["rel_error"][:, 0] <= cell["rel_error"][:, 2])
    assert le.crossover([8, 32, 128], [False, True, True]) == 32
    assert le.crossover([8, 32], [False, False]) is None
    assert not math.isnan(float(cell["budget"]))


def test_state_perturbation_oracle_mse_matches_closed_form():
    """Appendix oracle (not Figure 7): a perturbation ε·v_k of the FTCS heat step's start (or
    added every step) leaves MSE ε²λ_k^{2i}/n (or ε²(Σ_{j<i}λ_k^j)²/n) — exact for a linear
    step."""
    import chaosgrad
    from chaosgrad.app.figures import state_perturbation as fig7

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
    assert r["every"][0, 0, 3] == pytest.approx(1e-8 * (1 + lam + lam**2) ** 2 / 4, rel=1e-6)
    # every point against the closed form with the exact λ_k = 1 − 4r sin²(kπ/(2(n+1))): the
    # deviation is iterated on its own, so nothing at this size is near the round-off floor
    err_once, below = fig7.relative_error(r["once"], r["exact_once"], r["floor_once"])
    err_every, _ = fig7.relative_error(r["every"], r["exact_every"], r["floor_every"])
    assert err_once < 1e-9 and err_every < 1e-9 and below == 0
    # the iterated deviation is the difference of the perturbed and the unperturbed run (the
    # paper's definition), which here is still resolved: O(1) runs, no growing mode
    ok = r["exact_once"] > fig7.TWO_RUN_FLOOR_MSE
    np.testing.assert_allclose(r["two_run_once"][ok], r["once"][ok], rtol=1e-5)
    # an unstable r grows exactly the modes with |λ| > 1; a stable one none
    stable = fig7.measure(n, 0.45, [1e-2], steps)
    assert np.all(stable["once"][:, 0, -1] < 1e-4 / n)
    unstable = fig7.measure(n, 0.9, [1e-2], steps)
    grows = np.abs(unstable["eigenvalues"]) > 1
    # 1 − 3.6 sin²(3π/10) = −1.36 and 1 − 3.6 sin²(4π/10) = −2.26: the two rough modes grow
    np.testing.assert_array_equal(grows, [False, False, True, True])
    assert np.all(unstable["once"][grows, 0, -1] > 1e-4 / n)


def test_state_perturbation_iterated_deviation_survives_the_round_off_of_two_runs():
    """Why the state-perturbation oracle iterates the deviation: at r = 0.55 the unperturbed
    run grows like max|λ|^i (1.18^100 ≈ 2e7 at n = 16), and its round-off, amplified alike,
    swamps the ε-mode of decaying eigenvectors in the difference of two runs; the iterated
    deviation has no such run beside it and keeps the closed form."""
    import chaosgrad
    from chaosgrad.app.figures import state_perturbation as fig7

    chaosgrad.enable_x64()
    r = fig7.measure(16, 0.55, [1e-6, 1e-3], 100)
    assert r["base_rms_final"] > 1e6
    two_run, _ = fig7.relative_error(
        r["two_run_once"], r["exact_once"], np.full(r["exact_once"].shape, fig7.TWO_RUN_FLOOR_MSE)
    )
    err, below = fig7.relative_error(r["once"], r["exact_once"], r["floor_once"])
    assert two_run > 10 and err < 1e-5
    assert 0 < below < r["once"].size / 2


def test_state_perturbation_registered_as_an_oracle_not_figure7(tmp_path, monkeypatch):
    from chaosgrad.app.figures import state_perturbation as oracle

    assert figures.FIGURES["perturbation"][1].startswith("Figure 7")
    assert not figures.FIGURES["state_perturbation"][1].startswith("Figure 7")
    assert not figures.FIGURES["linear"][1].startswith("Figure 7")
    monkeypatch.setitem(
        oracle.SIZES, "quick", {"n": 6, "steps": 12, "eps": [1e-5, 1e-2], "eps_points": 4}
    )
    figures.run_figure("state_perturbation", "quick", tmp_path)
    meta = json.loads((tmp_path / "state_perturbation" / "meta.json").read_text())
    assert "eigenvector" in meta["drawn"] and "not the paper's Figure 7" in meta["assumption"]
    for r, grow in (("0.45", 0), ("0.55", 1)):
        pr = meta["per_r"][r]
        assert pr["modes_growing"] == grow and pr["nonfinite"] == 0
        assert pr["rel_error_once"] < 1e-4 and pr["eigenvalue_max_abs_error"] < 1e-12


def test_figure7_two_maps_by_hand():
    """n = 2, k = 2, X⁰ = I, ε = s·e₁e₂ᵀ: X₁ = [[1, s], [0, 1]] and A₁A₀x⁰ − D₁D₀x⁰ =
    (s (d₁[2] − d₁[1]) d₀[2], 0) exactly (X₁ is I plus a nilpotent part: no O(s²) term)."""
    import chaosgrad
    from chaosgrad.app.figures import perturbation as fig7

    chaosgrad.enable_x64()
    d = np.array([[0.7, -1.3], [1.1, 0.4]])  # d₀, d₁
    x_mat, x0 = np.eye(2), np.ones(2)
    g = np.array([[0.0, 1.0], [0.0, 0.0]])
    s = 0.3
    err = np.asarray(
        fig7.exact_states(jnp.asarray(x_mat), jnp.asarray(s * g), jnp.asarray(d), jnp.asarray(x0))
    ) - np.asarray(fig7.approximate_states(jnp.asarray(x_mat), jnp.asarray(d), jnp.asarray(x0)))
    by_hand = np.array([s * (0.4 - 1.1) * -1.3, 0.0])
    np.testing.assert_allclose(err[2], by_hand, atol=1e-15)
    np.testing.assert_allclose(err[:2], 0, atol=1e-15)  # k = 0, 1: no drift yet
    np.testing.assert_allclose(s * fig7.first_order_error(x_mat, g, d, x0)[2], by_hand, atol=1e-15)
    assert fig7.first_order_mse(x_mat, g, d, x0)[2] == pytest.approx(by_hand[0] ** 2 / 2 / s**2)


def _figure7_case(moduli=(1.05, 1.2), n=5, steps=8):
    from chaosgrad.app.figures import perturbation as fig7

    p = fig7.setup(n, steps, moduli, draws=3, seed=3)
    return fig7, p, tuple(jnp.asarray(p[k]) for k in ("X0", "D", "x0"))


def test_figure7_first_order_term_is_the_derivative_of_the_exact_product():
    """The closed-form first-order error X⁰((X⁰⁻¹G) ∘ C_k)X⁰⁻¹x⁰ equals d/ds of the exact
    product Π A_i x⁰ (X_i = X⁰ + i·s·G) at s = 0, by forward-mode autodiff through the solves,
    for every k and each spectrum."""
    import chaosgrad

    chaosgrad.enable_x64()
    for moduli in ((0.5, 0.95), (1.0, 1.0), (1.05, 1.2)):
        fig7, p, (x_mat, d, x0) = _figure7_case(moduli)
        for g in p["G"]:
            g = jnp.asarray(g)

            def states(s, g=g, x_mat=x_mat, d=d, x0=x0, fig7=fig7):
                return fig7.exact_states(x_mat, s * g, d, x0)

            _, tangent = jax.jvp(states, (jnp.float64(0.0),), (jnp.float64(1.0),))
            closed = fig7.first_order_error(p["X0"], np.asarray(g), p["D"], p["x0"])
            np.testing.assert_allclose(
                closed, np.asarray(tangent), rtol=1e-9, atol=1e-11 * np.abs(closed).max()
            )
            assert np.abs(closed[-1]).max() > 1e-3  # a drift off the diagonal: not zero


def test_figure7_mse_is_first_order_law_times_eps_squared():
    """MSE_k = c_k(G) ‖ε‖² (1 + O(‖ε‖)): the ratio tends to 1 and its error shrinks about
    tenfold per decade of ‖ε‖; the expected c̄_k equals the average of c_k over a basis."""
    import chaosgrad

    chaosgrad.enable_x64()
    fig7, p, _ = _figure7_case()
    eps = np.array([1e-6, 1e-5, 1e-4])
    m = fig7.measure(5, 8, (1.05, 1.2), eps, draws=3, seed=3)
    rel = fig7.first_order_relative_error(m, eps)
    assert np.all(np.isfinite(rel)) and np.all(rel[:, 0] < 1e-3)
    ratio = rel[:, 1:] / rel[:, :-1]
    assert np.all((ratio > 5) & (ratio < 20)), ratio
    # c_k(G) is a quadratic form in G; over G uniform on the unit sphere of R^{n×n} its mean
    # is its trace over n², i.e. the mean of c_k over the n² unit matrices e_p e_qᵀ
    n = 5
    basis = np.eye(n * n).reshape(n * n, n, n)
    avg = np.mean([fig7.first_order_mse(p["X0"], g, p["D"], p["x0"]) for g in basis], axis=0)
    np.testing.assert_allclose(
        fig7.expected_first_order_mse(p["X0"], p["D"], p["x0"]), avg, rtol=1e-12
    )


def test_figure7_rescaled_eigenvectors_and_scalar_maps_leave_no_error():
    """Exact cases: ε = s·X⁰Λ only rescales the eigenvectors (A_i unchanged: no error at any
    s, and C_k's diagonal is 0); D_i = ρ_i I makes every A_i = ρ_i I (no error for any ε)."""
    import chaosgrad

    chaosgrad.enable_x64()
    fig7, p, (x_mat, d, x0) = _figure7_case()
    lam = jnp.asarray(np.diag(np.linspace(-0.5, 1.0, 5)))
    approx = fig7.approximate_states(x_mat, d, x0)
    exact = fig7.exact_states(x_mat, 0.05 * x_mat @ lam, d, x0)
    scale = float(jnp.abs(approx).max())
    np.testing.assert_allclose(exact, approx, atol=1e-12 * scale)
    c = fig7.first_order_coefficients(p["D"])
    # the diagonal is (k−1)S_k − (k−1)S_k: zero up to the rounding of the sum
    np.testing.assert_allclose(np.diagonal(c, axis1=1, axis2=2), 0, atol=1e-14 * np.abs(c).max())
    scalar = jnp.asarray(np.repeat(np.asarray(p["D"])[:, :1], 5, axis=1))
    g = jnp.asarray(p["G"][0])
    np.testing.assert_allclose(
        fig7.exact_states(x_mat, 0.05 * g, scalar, x0),
        fig7.approximate_states(x_mat, scalar, x0),
        atol=1e-12 * scale,
    )


def test_figure7_registered_with_its_first_order_law_in_meta(tmp_path, monkeypatch):
    from chaosgrad.app.figures import perturbation as fig7

    monkeypatch.setitem(
        fig7.SIZES, "quick", {"n": 4, "steps": 6, "eps": [1e-6, 1e-2], "eps_points": 5, "draws": 2}
    )
    png = figures.run_figure("perturbation", "quick", tmp_path)
    assert png.exists()
    meta = json.loads((tmp_path / "perturbation" / "meta.json").read_text())
    assert "X_{i+1} = X_i + ε" in meta["drawn"] and "C_k" in meta["first_order"]
    assert set(meta["summary"]) == {"inside", "on", "outside"}
    for s in meta["summary"].values():
        assert s["nonfinite"] == 0 and s["slope_small_eps"] == pytest.approx(2, abs=0.01)
        assert s["rel_error_smallest_eps"] < 1e-3


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
    np.testing.assert_array_equal(
        fixed.init(k1, s.theta), s.init(jax.random.split(jax.random.PRNGKey(0))[0], s.theta)
    )  # the start of PRNGKey(0)'s own run
    l1 = unroll(fixed, s.theta, k1, 3).losses
    l2 = unroll(fixed, s.theta, k2, 3).losses
    assert not np.allclose(l1, l2)
    # first loss: 0.5·x0 + noise_0, so the difference is the step noise alone
    from chaosgrad.system import split_run_key, step_key

    noise = [jax.random.normal(step_key(split_run_key(k)[1], 0), (2,))[0] for k in (k1, k2)]
    assert float(l1[0] - l2[0]) == pytest.approx(float(noise[0] - noise[1]), rel=1e-6)


def test_rigid_body_panel_c_draws_the_randomness_of_panel_b(tmp_path, monkeypatch):
    """Figure 2 end to end on a stand-in system whose only randomness is its reset: (c) is
    taken over panel (b)'s randomness (reset fixed, step noise per seed), so every seed's
    gradient is the same and the variance is exactly 0; from a random reset it is not."""
    import chaosgrad
    from chaosgrad.app.figures import rigid_body as fig2
    from chaosgrad.gradients import gradient_growth

    def init(key, theta):
        return jax.random.normal(key, (2,))

    def step(x, theta, key):  # deterministic: the randomness is the start alone
        x = jnp.tanh(theta["w"] * x) + 0.1 * x
        return x, chaosgrad.StepOut(loss=jnp.sum(x**2))

    toy = chaosgrad.System(init, step, name="reset_only", theta={"w": jnp.asarray(1.5)})
    tiny = {
        "env": "toy",
        "unrolls": [1, 2],
        "points": 5,
        "seeds": 2,
        "smooth_unroll": 2,
        "var_horizons": [2, 4],
        "var_seeds": 4,
        "layers": 1,
    }
    monkeypatch.setitem(fig2.SIZES, "quick", tiny)
    monkeypatch.setattr(fig2, "make_system", lambda size: toy)
    figures.run_figure("rigid_body", "quick", tmp_path, progress=False)
    meta = json.loads((tmp_path / "rigid_body" / "meta.json").read_text())
    assert meta["randomness"]["c"].startswith("as in b: reset state fixed")
    for c in meta["summary"]["c"].values():
        assert c["variance"] == 0.0 and c["variance_first"] == 0.0
    # the same seeds from their own resets do vary: the zero above is the fixed reset's
    free = gradient_growth(
        toy,
        toy.theta,
        [2, 4],
        4,
        key=jax.random.fold_in(jax.random.PRNGKey(0), 100),
        progress=False,
    )
    assert np.all(free.variance > 1e-6)
    assert (tmp_path / "rigid_body" / "rigid_body.png").exists()


def test_rigid_body_summary_counts_extrema_and_roughness():
    from chaosgrad.app.figures import rigid_body as fig2

    x = np.linspace(-1, 1, 201)
    assert fig2.wiggle(3 * x**2 - x + 2) == pytest.approx(0.0, abs=1e-12)
    # a ±0.05 square wave of 40 periods is nearly orthogonal to quadratics: RMS ≈ 0.05
    assert fig2.wiggle(0.05 * np.sign(np.sin(40 * np.pi * x + 0.1))) == pytest.approx(
        0.05, rel=0.05
    )
    assert np.isnan(fig2.wiggle([0, np.nan, 1, 2]))
    size = {"unrolls": [1, 16]}
    jag = x**2 + 0.05 * np.sign(np.sin(40 * np.pi * x))  # 40 flips: jagged
    out = {
        "slice_losses": np.stack([x**2, jag]),
        # three "seeds": jagged copies with opposite flips, so their mean is x² + 0.05/3·…
        "seed_losses": np.stack(
            [np.stack([x, jag]), np.stack([x, x**2]), np.stack([x, 2 * x**2 - jag])]
        ),
        "smooth_unrolls": np.array([8, 16]),
        "var_horizons": np.array([2, 4]),
        **{f"variance_{j}": np.array([1.0, 1e3]) for j in range(3)},
        **{f"nonfinite_{j}": np.zeros(2) for j in range(3)},
    }
    summ = fig2.summary(out, size)
    assert summ["a"]["1"]["extrema"] == 1 and summ["a"]["16"]["extrema"] > 30
    assert summ["b"]["16"]["mean_extrema"] == 1  # (jag + x² + 2x² − jag)/3 = x²
    assert summ["b"]["16"]["mean_wiggle"] < 1e-12 < 0.04 < summ["b"]["16"]["seed_wiggle_median"]
    assert summ["b"]["16"]["seed_extrema_max"] > 30 and summ["b"]["16"]["seed_extrema_min"] == 1
    assert summ["c"]["0.002"]["variance"] == 1e3 and summ["b"]["8"]["nonfinite"] == 0
    assert "variance_per_param" not in summ["c"]["0.002"]  # no parameter count given
    assert fig2.summary(out, size, n_params=4)["c"]["0.002"]["variance_per_param"] == 250.0
    # relative to the range: the fixed slice x² has none, the jagged one 40 flips of ±0.05
    assert summ["a"]["1"]["roughness"] < 1e-12 < 0.03 < summ["a"]["16"]["roughness"]
    # the three seeds' mean is x² (smooth), one seed's is jagged: the words follow
    r = summ["b"]["16"]["roughness"]
    assert r["smooth"] and r["smoother"] and r["mean_roughness"] < 1e-12


def test_truncation_training_batches_episodes_and_scores_held_out_episodes():
    """Figure 6: each Adam step's loss is the mean truncated loss of `batch` fresh episodes;
    the policy is scored on the fixed evaluation episodes before training and after every
    chunk; a non-finite gradient is counted and its update skipped."""
    from chaosgrad import systems
    from chaosgrad.app.figures import truncation

    s = systems.make("rnn", n=6, g=1.5)
    size = {
        "episode": 12,
        "iterations": 4,
        "eval_every": 2,
        "batch": 2,
        "lr": 1e-2,
        "eval_episodes": 3,
    }
    key = jax.random.PRNGKey(5)
    r = truncation._train(s, s.theta, size, 4, key)
    keys = jax.random.split(jax.random.fold_in(key, 0), 2)
    expect = np.mean([float(truncation.truncated_loss(s, s.theta, k, 12, 4)) for k in keys])
    assert r["loss"][0] == pytest.approx(expect, rel=1e-9)
    assert r["loss"].shape == (4,) and r["ok"].all() and r["eval_reward"].shape == (3,)
    assert r["loss"][1] != r["loss"][0]  # θ moved and new episodes were drawn
    # the score before training is −(mean full-episode loss) over the evaluation keys
    ev = -np.mean(
        [
            float(truncation.truncated_loss(s, s.theta, k, 12, 12))
            for k in truncation.eval_keys(size)
        ]
    )
    assert r["eval_reward"][0] == pytest.approx(ev, rel=1e-9)
    # the last score is that of the trained θ: rerun by hand with optax for the same keys
    opt = optax.adam(size["lr"])
    th, st = s.theta, opt.init(s.theta)
    for i in range(4):
        ks = jax.random.split(jax.random.fold_in(key, i), 2)
        g = jax.grad(
            lambda p, ks=ks: jnp.mean(
                jnp.stack([truncation.truncated_loss(s, p, k, 12, 4) for k in ks])
            )
        )(th)
        u, st = opt.update(g, st, th)
        th = optax.apply_updates(th, u)
    ev = -np.mean(
        [float(truncation.truncated_loss(s, th, k, 12, 12)) for k in truncation.eval_keys(size)]
    )
    assert r["eval_reward"][-1] == pytest.approx(ev, rel=1e-8)
    # the logistic map at r = 10 leaves [0, 1] and overflows: every gradient is non-finite,
    # every step is counted as skipped and θ stays where it was (its score does not change)
    bad = systems.make("logistic", r=10.0)
    r = truncation._train(bad, bad.theta, size, 1, key)
    assert not r["ok"].any() and not np.isfinite(r["grad_norm"]).any()
    np.testing.assert_array_equal(r["eval_reward"], r["eval_reward"][0])


def test_truncation_summary_intervals_over_seeds_and_paired_to_no_truncation():
    from chaosgrad.app.figures import truncation

    # three seeds, final held-out rewards 1, 2, 3 at t = 1 and 0, 0, 3 without truncation
    ev1 = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    ev4 = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    ok = np.ones((3, 10), bool)
    ok[0, 3] = False
    out = {
        "eval_reward_1": ev1,
        "eval_reward_4": ev4,
        "loss_1": -np.ones((3, 10)),
        "loss_4": -np.ones((3, 10)),
        "grad_norm_1": np.array([[1.0] * 9 + [np.inf]] * 3),
        "grad_norm_4": np.ones((3, 10)),
        "ok_1": ok,
        "ok_4": np.ones((3, 10), bool),
    }
    size = {"truncations": [1, 4]}
    summ = truncation.summary(out, size)
    s1 = summ["1"]
    # mean 2 ± t(0.975, 2)·1/√3
    assert s1["final_reward"] == pytest.approx(2.0)
    assert s1["high"] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    # paired differences 1, 2, 0: mean 1, sd 1
    assert s1["minus_full"] == pytest.approx(1.0)
    assert s1["minus_full_low"] == pytest.approx(1 - 4.302653 / np.sqrt(3), rel=1e-5)
    assert s1["skipped"] == 1 and s1["grad_norm_max"] == 1.0 and s1["gain"] == 2.0
    v = truncation.verdict(summ, out, size)
    assert v["best_t"] == 1 and not v["best_above_full"] and v["full_gain"] == 1.0
    # paired differences 1, 2, 0 to the best: the interval reaches below 0, a tie
    assert v["tied_with_best"] == [4]
    # finals 5, 6, 7 against 0, 0, 3: differences 5, 6, 4, mean 5 ± 2.48, a winner
    out["eval_reward_1"] = np.array([[0.0, 5.0], [0.0, 6.0], [0.0, 7.0]])
    v = truncation.verdict(truncation.summary(out, size), out, size)
    assert v["best_t"] == 1 and v["tied_with_best"] == [] and v["best_above_full"]
    with pytest.raises(InputError, match="divide"):
        truncation.check_size(
            {"truncations": [1, 5], "episode": 12, "iterations": 4, "eval_every": 2}
        )


def test_estimator_study_runs_end_to_end_with_its_meta(tmp_path, monkeypatch):
    """The study's whole `run` (picks, master seeds, cells, the summary of how often each
    conclusion holds, the crossover per run, meta.json and the figure) on a cheap chaotic
    map."""
    from chaosgrad import systems
    from chaosgrad.app import figures
    from chaosgrad.app.figures import lopt_estimators as le

    monkeypatch.setattr(le, "make_system", lambda dtype: systems.make("logistic", r=3.7))
    # the (θ, direction) picks are the learned optimizer's own (tested with Figure 3): here
    # r itself, twice, as two picks
    monkeypatch.setattr(
        le,
        "chosen_point",
        lambda system, size, key, store: (
            system.theta,
            jax.numpy.ones_like(system.theta),
            {"rule": "test"},
        ),
    )
    monkeypatch.setattr(
        le,
        "picks_from",
        lambda system, report, picks: [
            (system.theta, jax.numpy.ones_like(system.theta), {"seed": p}) for p in range(picks)
        ],
    )
    monkeypatch.setitem(
        le.SIZES,
        "quick",
        dict(
            le.SIZES["quick"],
            unrolls=[4, 8],
            shifts=(0.0,),
            picks=2,
            seeds=1,
            samples=8,
            reference_batches=16,
        ),
    )
    store = figures.Store(tmp_path, "quick", "test")
    results, meta = le.run("quick", store, False)
    assert results["rel_error"].shape == (2, 1, 1, 2, len(le.ESTIMATORS), 3)
    cell = meta["cells"]["0.0"]["8"]
    assert cell["runs"] == 2 and sum(cell["recommended"].values()) == 2
    for e in cell["estimators"].values():
        assert 0 <= e["among_best"] <= 2
        lo, hi = e["rel_error_range"]
        assert lo <= e["rel_error_median"] <= hi
    # logistic r = 3.7 at T = 8: backprop's variance explodes; the reference is ES
    assert set(cell["reference_kinds"]) <= {"es", "reparam"}
    assert meta["null_checks"]["cells"] == 4 and 0 <= meta["null_checks"]["resolved"] <= 4
    assert meta["seconds"]["compile"] >= 0 and meta["seconds"]["sampling"] > 0
    cross = meta["crossover"]["0.0"]
    assert cross["runs"] == 2 and len(cross["per_run"]) == 2
    figures.write_json(tmp_path / "meta.json", meta)  # strict JSON: no tuples or NaN left
    le.draw(results, json.loads((tmp_path / "meta.json").read_text()), tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


@pytest.mark.slow
def test_truncation_paper_configuration_runs_on_a_shrunk_ant(tmp_path, monkeypatch):
    """Figure 6's paper configuration (Ant, the paper's tanh-Normal policy, generalized
    backend) end to end, shrunk to 2 Adam steps of 2 short episodes: its parts, summary and
    image are made, and every number is finite."""
    from chaosgrad.app.figures import truncation

    size = {
        **truncation.SIZES["paper"],
        "episode": 10,
        "truncations": [5, 10],
        "iterations": 2,
        "eval_every": 1,
        "batch": 2,
        "seeds": 2,
        "eval_episodes": 2,
    }
    monkeypatch.setitem(truncation.SIZES, "paper", size)
    png = figures.run_figure("truncation", "paper", tmp_path)
    meta = json.loads((tmp_path / "truncation" / "meta.json").read_text())
    assert png.stat().st_size > 10_000 and meta["system"]["policy"] == "paper"
    for t in ("5", "10"):
        v = meta["summary"][t]
        assert np.isfinite(v["final_reward"]) and v["skipped"] == 0 and len(v["per_seed"]) == 2
