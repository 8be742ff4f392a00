"""The learned-optimizer generalisation study: held-out members, the beats/fraction and
divergence rules against hand-made cases, the estimator choice, the common randomness of
learned optimizers and Adam, and the study end to end at a tiny size."""

import json

import jax
import numpy as np
import pytest
from chaosgrad.systems.lopt import baselines, family

from chaosgrad import systems
from chaosgrad.app import figures
from chaosgrad.app.figures import lopt_generalization as g


def test_heldout_tasks_are_the_held_out_split_of_the_kinds():
    every = dict(g.SIZES["quick"], task={"kinds": "all"})
    assert g.heldout_tasks(every) == list(family.split_indices("held_out"))
    held, train = g.heldout_tasks(g.SIZES["quick"]), g.train_tasks(g.SIZES["quick"])
    kinds = {family.members()[i]["kind"] for i in held}
    assert kinds == {"mlp", "quad", "rnn"} and len(held) == 46  # 47 less the conv member
    assert not set(held) & set(train)
    assert set(held) | set(train) == {
        i for i in range(family.N_MEMBERS) if family.members()[i]["kind"] != "conv"
    }


def test_fraction_beaten_and_its_interval_on_a_hand_made_case():
    # 2 runs × 4 tasks; the baseline diverged on task 3 (+inf) and run 1 on task 2 (NaN)
    lopt = np.array([[0.0, 2.0, 1.0, 5.0], [0.5, 0.5, np.nan, np.inf]])
    base = np.array([1.0, 1.0, 1.0, np.inf])
    win = g.beats(lopt, base)
    # strictly below wins; a tie (1.0 vs 1.0), a NaN and inf against inf do not
    np.testing.assert_array_equal(win, [[1, 0, 0, 1], [1, 1, 0, 0]])
    f = g.fraction_interval(win, boot=2000)
    assert f["fraction"] == pytest.approx(4 / 8)
    lo, hi = f["interval"]
    assert 0 <= lo <= f["fraction"] <= hi <= 1 and hi - lo > 0.2
    # every run wins everywhere: no spread
    assert g.fraction_interval(np.ones((3, 5)), boot=200) == {"fraction": 1.0, "interval": [1, 1]}


def test_final_loss_divergence_and_median_curve_rules():
    # (tasks 2, seeds 1, steps 10) log losses
    c = np.zeros((2, 1, 10))
    c[0, 0] = np.linspace(0.0, -9.0, 10)  # falls: final loss at 10 = mean of the last step
    c[1, 0] = np.linspace(0.0, 9.0, 10)  # rises above its start: diverged
    np.testing.assert_allclose(g.final_loss(c, 10)[:, 0], [-9.0, 9.0])
    np.testing.assert_allclose(g.final_loss(c, 5)[:, 0], [-4.0, 4.0])  # last tenth of 5: step 5
    assert list(g.diverged(c, 10)[:, 0]) == [False, True]
    c2 = c.copy()
    c2[0, 0, 3] = np.nan  # a non-finite loss anywhere up to the horizon: diverged
    assert list(g.diverged(c2, 10)[:, 0]) == [True, True]
    assert list(g.diverged(c2, 3)[:, 0]) == [False, True]  # ... not after it; 1 rose
    assert np.isinf(g.final_loss(np.array([1.0, np.nan]), 2))
    # median over 3 tasks of log(L_t / L_0): the middle task's curve; a NaN task counts high
    curves = np.stack([c[0], c[1], c[0] + 5.0])[None]  # (1 run, 3 tasks, 1 seed, 10)
    np.testing.assert_allclose(g.median_curve(curves)[0], c[0, 0])
    curves[0, 2, 0, 4] = np.nan
    np.testing.assert_allclose(g.median_curve(curves)[0, 4], c[1, 0, 4])


def test_estimator_choice_records_a_tie_and_the_comparison_estimator():
    rec = {"recommended": "tbptt", "ranking": ["tbptt", "pes"], "tied": ["tbptt"]}
    assert g.pick(rec)["estimator"] == "tbptt" and g.pick(rec)["comparison"] == "pes"
    assert g.pick(rec)["how"] == "recommended"
    tie = {"recommended": None, "ranking": ["pes", "es", "tbptt"], "tied": ["pes", "es"]}
    p = g.pick(tie)
    assert p["estimator"] == "pes" and p["comparison"] == "tbptt"  # PES picked: vs tbptt
    assert p["how"].startswith("best point estimate") and p["tied"] == ["pes", "es"]


def test_compare_settings_are_the_ones_its_estimators_accept():
    """Every candidate of both scales, with the settings the study gives `compare`, builds the
    estimator `compare` runs for it under its smoothed target (backprop: the
    reparameterisation gradient, whose settings are pairs, not samples)."""
    from chaosgrad.estimators import make as make_estimator

    from chaosgrad.app.compare.run import _runner

    system = systems.make("logistic")
    for scale in ("quick", "paper"):
        size = g.SIZES[scale]
        for name in size["candidates"]:
            params = g.compare_params(name, size)
            est = make_estimator(_runner(name, "smoothed"), system, **params)
            kept = {k: v for k, v in params.items() if k in est.params}
            assert kept and all(est.params[k] == v for k, v in kept.items()), (scale, name)


def test_member_curves_share_final_losses_randomness():
    """Adam through `member_curves` (any optimizer's per-step losses) reproduces
    `final_losses` run for run: the same keys, so learned optimizers and Adam are compared on
    common randomness."""
    quads = [i for i in family.split_indices("held_out") if family.members()[i]["kind"] == "quad"]
    grid = baselines.with_lrs([1e-2, 1e-1])
    run = {"seeds": 2, "seed": 3, "batch_size": 4}
    ref = baselines.final_losses(grid, quads[:3], inner_steps=20, **run)
    c = baselines.member_curves("adam", baselines.adam_theta(grid), quads[:3], 20, **run)
    assert c.shape == (2, 3, 2, 20)
    np.testing.assert_allclose(g.per_task(c, 20), ref, rtol=1e-6)
    # and the lr matters (the curves are of the given θ, not a default)
    assert not np.allclose(c[0], c[1])


def test_horizon_choice_is_the_first_rugged_candidate(monkeypatch):
    """The study runs at the first [T, step scale] candidate whose slices are rugged for every
    learned optimizer, measures none after it, and falls back to the last one, recorded as
    not rugged, when none is."""
    x = np.linspace(-1, 1, 21)
    smooth = np.stack([x**2 + 0.001 * np.sin(40 * x)] * 3, axis=1)  # roughness ≈ 0.0007
    rough = np.stack([x**2 + 0.2 * np.sin(40 * x)] * 3, axis=1)  # roughness ≈ 0.1
    rugged_at = {("mlp", 50, 0.01), ("lstm", 50, 0.01), ("lstm", 20, 0.003)}
    asked = []

    def fake_slice(opt, size):
        asked.append((opt, size["horizon"], size["lopt_lr"]))
        hit = (opt, size["horizon"], size["lopt_lr"]) in rugged_at
        return {"shifts": x, "losses": rough if hit else smooth}

    class Store:
        def part(self, key, fn):
            return fn()

    monkeypatch.setattr(g, "slice_roughness", fake_slice)
    base = {"optimizers": ["mlp", "lstm"]}
    cands = [[20, 3e-3], [50, 3e-3], [50, 1e-2], [100, 1e-2]]
    size, rec, arrays = g.choose_horizon(dict(base, horizon_candidates=cands), Store())
    assert (size["horizon"], size["lopt_lr"]) == (50, 1e-2) and rec["chosen"]["rugged"]
    # the lstm alone rugged at the first candidate is not enough; nothing after is measured
    assert [c["rugged"] for c in rec["candidates"]] == [False, False, True]
    assert asked[-1] == ("lstm", 50, 1e-2) and len(asked) == 6
    assert rec["candidates"][0]["lstm"]["rugged"] and not rec["candidates"][0]["mlp"]["rugged"]
    np.testing.assert_array_equal(arrays["slice_mlp"], rough)
    size, rec, _ = g.choose_horizon(dict(base, horizon_candidates=cands[:2]), Store())
    assert (size["horizon"], size["lopt_lr"]) == (50, 3e-3) and not rec["chosen"]["rugged"]


@pytest.mark.slow  # compile-bound (~90 s: the slices, compare, training, baselines): make test-slow
def test_lopt_generalization_runs_end_to_end(tmp_path, monkeypatch):
    tiny = {  # no "horizon" or "lopt_lr": the study takes them from the chosen candidate
        "horizon_candidates": [[4, 3e-3], [6, 3e-3]],
        "window": 3,
        "runs": 2,
        "budget": 120,
        "tune_budget": 60,
        "outer_lrs": [1e-2],
        "eval_seeds": 2,
        "heldout_seeds": 2,
        "tune_seeds": 2,
        "lr_grid": [1e-3, 1.0, 4],
        "list_k": 2,
        "list_candidates": 4,
        "pairs": 2,
        "particles": 2,
        "samples": 2,
        "evals": 2,
        "boot": 200,
        "dtype": "float32",
        "task": {"task": "family", "split": "meta_train", "kinds": "quad", "batch_size": 8},
        "optimizers": ["mlp"],
        "candidates": ["tbptt", "pes"],
        "compare_samples": 8,
        "compare_population": 2,
        "compare_reference_batches": 10,
        "slice_points": 5,
        "slice_keys": 2,
        "slice_range": 0.01,
    }
    monkeypatch.setitem(g.SIZES, "quick", tiny)
    png = figures.run_figure("lopt_generalization", "quick", tmp_path, progress=False)
    assert png.stat().st_size > 10_000
    meta = json.loads((tmp_path / "lopt_generalization" / "meta.json").read_text())
    res = np.load(tmp_path / "lopt_generalization" / "results.npz")
    # the held-out tasks evaluated are exactly the held-out quadratics
    quads = [i for i in family.split_indices("held_out") if family.members()[i]["kind"] == "quad"]
    assert meta["heldout"]["indices"] == quads
    # the estimator choice is recorded, from the comparison it ran
    choice = meta["estimator_choice"]
    assert choice["estimator"] in tiny["candidates"] and choice["ranking"][0] in tiny["candidates"]
    assert choice["comparison"] == ("tbptt" if choice["estimator"] == "pes" else "pes")
    assert meta["rows"] == [f"mlp/{choice['estimator']}", f"mlp/{choice['comparison']}"]
    assert set(meta["slice"]) == {"mlp"} and "rugged" in meta["slice"]["mlp"]
    hc = meta["horizon_choice"]
    assert hc["chosen"]["horizon"] == meta["horizon"] == meta["sizes"]["horizon"]
    assert [c["horizon"] for c in hc["candidates"]] == [4, 6][: len(hc["candidates"])]
    assert hc["candidates"][-1]["rugged"] or len(hc["candidates"]) == 2
    for row in meta["rows"]:
        assert meta["outer_steps"][row] == 120 // meta["fse_per_estimate"][row.split("/")[1]]
        for k, v in meta["table"][row].items():
            if k.startswith("vs_"):
                lo, hi = v["interval"]
                assert 0 <= lo <= v["fraction"] <= hi <= 1, (row, k, v)
        # the fraction is that of the saved final losses
        win = g.beats(res[f"final_{row}_T"], res["final_family_adam_T"])
        assert meta["table"][row]["vs_family_adam_T"]["fraction"] == pytest.approx(win.mean())
    # family-tuned Adam's held-out number, recomputed independently by `final_losses`
    lr = meta["adam"]["family_lr"]
    assert lr in np.geomspace(1e-3, 1.0, 4)
    ref = baselines.final_losses(
        baselines.with_lrs([lr]),
        quads,
        inner_steps=10 * meta["horizon"],
        seeds=2,
        seed=g.EVAL_SEED,
        batch_size=8,
    )[0]
    np.testing.assert_allclose(res["final_family_adam_10T"], ref, rtol=1e-6)
    assert meta["goal"][meta["rows"][0]].keys() == {"most_at_T", "no_divergence_10T"}
    assert jax.tree_util.tree_leaves(meta["table"])  # saved as strict JSON
