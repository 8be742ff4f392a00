"""The summaries figures save in meta.json (the numbers the README quotes), on inputs whose
answers are known in closed form; and the paper-scale cost sampler's projection."""

import numpy as np
import pytest


def test_toy_summary_fits_the_w_squared_law_and_finds_the_crossing():
    from chaosgrad.app.figures import toy

    ws = np.logspace(-2, 2, 21)
    rep = 3e-3 * ws**2 + 1e-5  # the quadratic floor matters only below w ~ 0.1
    es = np.full_like(ws, 0.2)
    es[3] = 0.07
    s = toy.summary({"ws": ws, "rep_max": rep, "exact_rep_max": 3e-3 * ws**2, "es_max": es})
    assert s["exact_slope"] == pytest.approx(2.0, abs=1e-12)
    assert s["rep_slope"] == pytest.approx(2.0, abs=1e-3)
    assert (s["es_min"], s["es_max"]) == (0.07, 0.2)
    # 3e-3 w² exceeds 0.2 from w = 8.16: on the grid, between 10^0.8 = 6.3 and 10
    assert s["crossing_between"] == pytest.approx([10**0.8, 10.0])


def test_packing_summary_reads_the_longest_horizon_and_counts_extrema():
    from chaosgrad.app.figures import packing

    d = np.linspace(0.1, 1.0, 7)
    smooth = 1.0 + d**2
    rough = smooth * (1 + 0.5 * (-1.0) ** np.arange(7))  # alternates: 5 interior extrema
    energy = np.stack([np.stack([smooth, rough]), np.stack([smooth, rough[::-1]])])
    out = {
        "horizons": np.array([1, 256]),
        "energy": energy,
        **{f"variance_{j}": np.array([1.0, 10.0 ** (50 - 15 * j)]) for j in range(4)},
    }
    s = packing.summary(out)
    assert s["horizon"] == 256
    assert s["variance_at_longest"] == {"0.1": 1e50, "0.35": 1e35, "0.6": 1e20, "0.85": 1e5}
    assert s["seed_extrema_median"] == {"1": 0.0, "256": 5.0}
    assert s["mean_extrema"]["1"] == 0
    # roughness relative to the range: none at T = 1 (1 + D² is a polynomial); at T = 256 the
    # two seeds' alternations cancel only partly, and 2 seeds do not resolve the mean's
    r1, r256 = s["roughness"]["1"], s["roughness"]["256"]
    assert r1["mean_roughness"] < 1e-12 and r1["smooth"]
    assert r256["curve_roughness_median"] > 0.1 and r256["curves"] == 2


def test_spectra_summary_takes_the_last_product_and_the_eigenvalues_at_step_at():
    from chaosgrad.app.figures import spectra

    size = {"steps": 4, "horizons": [2, 4], "at": 2}
    out = {}
    for name, rate in (("init1", 1.0), ("init2", 0.0)):
        out[f"{name}_log_product_radius"] = rate * np.arange(1, 5)
        out[f"{name}_grad_norm"] = np.array([1.0, 7.0 + rate])
        ev = np.ones((4, 3), complex)
        ev[2, 1] = 3j
        out[f"{name}_eigenvalues"] = ev
    s = spectra.summary(out, size)
    assert s["init1"]["product_radius"] == pytest.approx(np.exp(4.0))
    assert s["init2"]["product_radius"] == 1.0
    assert s["init1"]["grad_norm"] == 8.0 and s["init1"]["max_abs_eigenvalue_at"] == 3.0


def test_cost_sampler_computes_two_parts_per_kind_and_projects_the_rest():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_scale_costs.py"
    spec = importlib.util.spec_from_file_location("paper_scale_costs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    store = mod.SamplingStore(2)
    calls = []
    for i in range(5):
        got = store.part(f"seed{i}", lambda i=i: calls.append(i) or {"x": np.array([i])})
        assert got["x"][0] == min(i, 1)  # later parts: a copy of the last computed one
    store.part("slices", lambda: {"y": np.zeros(2)})
    assert calls == [0, 1]
    assert store.skipped == {"seed#": 3} and len(store.computed["seed#"]) == 2
    assert len(store.computed["slices"]) == 1


def test_learning_rate_summary_reads_intervals_and_finds_the_jump():
    from chaosgrad.app.figures import learning_rate as lr

    rows = np.array(
        [
            ["0.03", "0.02", "0.1", "0.95", "sqrt(MSE)/‖g*‖"],
            ["0.2", "0.1", "0.4", "0.95", "sqrt(MSE)/‖g*‖"],
        ]
    )
    out = {
        "lrs": np.array([0.1, 0.3, 1.0, 3.0]),
        "lyapunov": np.array([0.001, 0.006, 0.24, 0.5]),
        "estimators": np.array(["backprop", "es"]),
        "rel_error_0": rows,
        "rel_error_1": np.array([4.8e3, 7.3]),
    }  # older results: the value alone
    s = lr.summary(out)
    assert (s["last_lr_below"], s["max_lyapunov_below"]) == (0.3, 0.006)
    assert (s["first_lr_above"], s["lyapunov_first_above"]) == (1.0, 0.24)
    assert s["rel_error_interval"]["0.1"]["backprop"] == [0.03, 0.02, 0.1]
    assert s["rel_error"]["1.0"] == {"backprop": 4.8e3, "es": 7.3}
