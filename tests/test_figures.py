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


def _small_lopt_system():
    from chaosgrad import systems

    # a learned optimizer (4 hidden units) on a noisy quadratic: cheap to compile, and the
    # meta-loss depends on the run key through the inner init and the fixed batch
    return systems.make("lopt", task="quadratic", optimizer="mlp", dim=3, noise=0.5,
                        fixed_batch=True, lopt_hidden=4, dtype="float64")


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
        g = np.stack([np.asarray(ravel_pytree(jax.grad(
            lambda th, T=T: unrolled_loss(s, th, key, T))(unravel(flat + 0.3 * e)))[0])
            for e in eps])
        assert got["variance"][j] == pytest.approx(np.var(g, axis=0, ddof=1).sum(), rel=1e-9)
        assert got["variance"][j] > 0
    # the run key is held fixed, not ignored: another key (other data and init) differs
    other = perturbed_gradient_variance(s, s.theta, [2, 5], std=0.3,
                                        **dict(kw, key=jax.random.PRNGKey(5)))
    assert not np.allclose(other["variance"], got["variance"], rtol=1e-3)


def test_count_turns_ignores_wiggles_below_the_tolerance():
    from chaosgrad.app.figures.learned_optimizer import count_turns

    x = np.linspace(0, 4 * np.pi, 401)  # sin has 4 interior extrema on (0, 4π)
    # then a flat stretch with rounding-level noise: ~100 sign changes, none standing out
    wiggly = np.concatenate([np.sin(x), 1e-5 * np.random.default_rng(0).standard_normal(200)])
    assert count_turns(wiggly, 1e-3) == 4
    assert count_turns(wiggly, 0) > 50
    assert count_turns([0, 1, 0, 1, 0], 0.5) == 3 and count_turns([0, 1, 0, 1, 0], 1.5) == 0


def test_lopt_meta_training_comparison_runs_end_to_end(tmp_path, monkeypatch):
    from chaosgrad.app.figures import lopt_meta_training as m
    from chaosgrad.unroll import unrolled_loss

    tiny = {"horizon": 6, "budget": 240, "eval_seeds": 2, "heldout_seeds": 3,
            "tune_seeds": 2, "lr_grid": [1e-3, 1.0, 4], "outer_lr": 1e-2, "lopt_lr": 0.01,
            "pairs": 2, "particles": 2, "samples": 2, "window": 3, "evals": 2,
            "dtype": "float64", "task": {"task": "quadratic", "dim": 3, "noise": 0.1}}
    monkeypatch.setitem(m.SIZES, "quick", tiny)
    png = figures.run_figure("lopt_meta_training", "quick", tmp_path, progress=False)
    assert png.stat().st_size > 10_000
    meta = json.loads((tmp_path / "lopt_meta_training" / "meta.json").read_text())
    # equal compute: each estimator spent the largest whole number of estimates that fits
    for n in m.ESTIMATORS:
        per = meta["steps_per_estimate"][n]
        assert per == m.steps_per_estimate(n, tiny)
        assert meta["outer_steps"][n] == 240 // per
    assert meta["steps_per_estimate"] == {"pes": 12, "tbptt": 6, "es": 24, "backprop": 12}
    assert len(meta["table"]) == len(m.ESTIMATORS) + 1 + len(m.BASELINES)
    # the held-out Adam number is Adam at its tuned lr on the held-out seeds, recomputed here
    lr = meta["tuned"]["adam"]["lr"]
    assert lr in np.geomspace(1e-3, 1.0, 4)
    s = m.make_system("adam", tiny)
    th = dict(s.theta, log_lr=jnp.asarray(np.log(lr), jnp.float64))
    ref = np.mean([float(unrolled_loss(s, th, jax.random.PRNGKey(m.HELDOUT_OFFSET + i), 6))
                   for i in range(3)])
    assert meta["table"][f"adam (lr {lr:.3g})"]["T"]["meta_loss"] == pytest.approx(ref,
                                                                                   rel=1e-9)
    assert set(meta["vs_adam_at_T"]) == set(m.ESTIMATORS)
    assert isinstance(meta["any_beats_adam_at_T"], bool)


def test_meta_training_seconds_take_out_compiling_steps():
    from chaosgrad.app.figures.lopt_meta_training import compute_seconds

    cum, taken = compute_seconds([10.0, 1.0, 1.0, 1.0, 8.0, 1.0])  # steps 1 and 5 compiled
    np.testing.assert_allclose(cum, [0, 1, 2, 3, 4, 5, 6])
    assert taken == pytest.approx(16.0)


def test_estimator_study_enforces_the_reference_error_bound(tmp_path):
    """A bias is called nonzero only when the reference's 95% upper standard error is at
    most a fifth of it; otherwise the study says the reference is too noisy."""
    import math

    import numpy as np

    from chaosgrad import systems
    from chaosgrad.app.compare import Reference, _bias_status
    from chaosgrad.app.figures import lopt_estimators as le
    from chaosgrad.stats import Interval

    def ref(se, batches=32):
        p = 4
        return Reference(np.ones(p), np.full(p, se**2 / p), 1024, "es", "test", batches)

    bias = Interval(1.0, 0.6, 1.4)
    assert ref(0.1).se_upper < 0.2 and _bias_status(bias, ref(0.1), 0.01)[0] == "resolved"
    status, need = _bias_status(bias, ref(0.5), 0.01)
    assert status == "reference too noisy" and need > 1024
    # two batches cannot vouch for a small standard error: its upper bound is ~30x larger
    assert ref(0.01, batches=2).se_upper > 0.3
    # one cell of the study on a cheap chaotic map, end to end, and its figure
    size = dict(le.SIZES["quick"], samples=8, seconds=None, reference_batches=8,
                reference_per_batch=16)
    s = systems.make("logistic", r=3.7)
    cell = le.cell(s, s.theta, 8, size, jax.random.PRNGKey(0))
    ref_upper = cell["reference"][2]
    for k, code in enumerate(cell["bias_status"]):
        if code == 1:  # resolved
            assert ref_upper <= cell["bias"][k, 0] / 5
    assert np.all(cell["rel_error"][:, 1] <= cell["rel_error"][:, 0])
    assert np.all(cell["rel_error"][:, 0] <= cell["rel_error"][:, 2])
    results = {k: np.asarray(v)[None, None] for k, v in cell.items()}
    results.update(unrolls=np.array([8]), shifts=np.array([0.0]))
    meta = {"estimators": le.ESTIMATORS, "crossover": {"0.0": le.crossover(
        [8], [bool(cell["backprop_best"])])}}
    le.draw(results, meta, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 10_000
    assert le.crossover([8, 32, 128], [True, False, False]) == 32
    assert le.crossover([8, 32], [True, True]) is None
    assert not math.isnan(float(cell["budget"]))
