"""`diagnose`: verdicts on systems whose behaviour is known, predicted vs measured growth."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chaosgrad import StepOut, System, systems
from chaosgrad.app.cli import main
from chaosgrad.diagnose import diagnose
from chaosgrad.gradients import count_extrema, loss_slice

KEY = jax.random.PRNGKey(0)


def test_lorenz_is_chaotic():
    d = diagnose(
        systems.make("lorenz"), horizons=[100, 300, 600], seeds=6, key=KEY, lyapunov_steps=10_000
    )
    assert d.verdict == "chaotic"
    assert d.lyapunov.exponents[0] == pytest.approx(0.906, abs=0.1)
    assert d.measured_rate > 0.2 and d.critical_horizon is not None


def test_gain_two_rnn_is_chaotic_and_its_growth_matches_the_spectrum(tmp_path):
    d = diagnose(systems.make("rnn", n=64, g=2.0), seeds=8, key=KEY, out=tmp_path)
    assert d.verdict == "chaotic"
    lam = d.lyapunov.exponents[0]
    assert lam > 0.05
    # the fitted rates follow the spectrum: |g| ~ e^{λ1 T}, its variance ~ e^{2 λ1 T}
    assert d.measured_rate == pytest.approx(lam, rel=0.35)
    assert d.measured_variance_rate == pytest.approx(2 * lam, rel=0.35)
    assert d.slices.extrema[-1] > d.slices.extrema[0]  # slices turn jagged with T
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["verdict"] == "chaotic" and rep["critical_horizon"] == pytest.approx(
        d.critical_horizon
    )
    for name in ("summary", "lyapunov", "growth", "variance", "slices"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "Verdict: chaotic" in (tmp_path / "report.md").read_text()


def test_contracting_linear_map_is_stable():
    d = diagnose(
        systems.make("linear", eigenvalues=(0.9, 0.5, -0.3)), seeds=4, key=KEY, lyapunov_steps=2000
    )
    assert d.verdict == "stable" and d.critical_horizon is None
    np.testing.assert_allclose(d.lyapunov.exponents, np.log([0.9, 0.5, 0.3]), atol=1e-8)


def test_predicted_and_measured_growth_agree_on_an_expanding_linear_map():
    # ℓ_t = cᵀx_t: ‖∂L/∂A‖ ∝ λ^T (1 + O(1/(T(λ-1)))), so between T = 50 and 150 the fitted
    # slope is ln λ to within ~1e-3; the gradient is linear in x0, so its variance grows at
    # exactly 2 ln λ up to the same correction. Tolerance stated: 5e-3 and 1e-2.
    lam = 1.2
    d = diagnose(
        systems.make("linear", eigenvalues=(lam, 0.5, 0.2), seed=1),
        horizons=[50, 100, 150],
        seeds=6,
        key=KEY,
        lyapunov_steps=2000,
    )
    # the state grows 1.2^150 ≈ 7e11-fold: it blows up (never "chaotic"), and the rates are
    # still measured and reported
    assert d.verdict == "diverges" and "grew past 1e6×" in d.blowup["reason"]
    assert d.predicted_rate == pytest.approx(np.log(lam), abs=1e-8)
    assert d.measured_rate == pytest.approx(d.predicted_rate, abs=5e-3)
    assert d.measured_variance_rate == pytest.approx(d.predicted_variance_rate, abs=1e-2)


def test_nonfinite_gradients_are_reported_not_averaged():
    d = diagnose(
        systems.make("linear", eigenvalues=(1e60, 0.5), loss="quadratic"),
        horizons=[2, 4, 8],
        seeds=3,
        key=KEY,
        lyapunov_steps=50,
        transient=0,
    )
    assert d.growth.nonfinite_fraction[-1] == 1.0
    assert "NaN/Inf" in d.nonfinite["message"] and "T = " in d.nonfinite["message"]
    assert d.nonfinite["gradient_nonfinite_fraction"][8] == 1.0
    assert d.to_json()["gradient_growth"]["geomean_norm"][-1] is None


def test_user_defined_system_without_registry():
    def init(key, theta):
        return jax.random.uniform(key, (1,), minval=0.2, maxval=0.8)

    def step(x, theta, key):
        x = theta * x * (1 - x)
        return x, StepOut(loss=x[0])

    stable = System(init, step, name="mine", theta=jnp.asarray(2.5), horizon=60)
    d = diagnose(stable, seeds=4, key=KEY, lyapunov_steps=2000)
    assert d.verdict == "stable"  # r = 2.5: fixed point 0.6 with multiplier 2 - r = -0.5
    assert d.lyapunov.exponents[0] == pytest.approx(np.log(0.5), abs=1e-6)


def test_loss_slices_of_a_quadratic_are_exact():
    # linear map with one step: L(A + s D) = cᵀ(A + s D) x0 is affine in s, no extrema
    s = systems.make("linear", eigenvalues=(0.7, 0.2))
    r = loss_slice(s, horizons=[1], key=KEY, points=9, radius=0.5)
    k_init, _ = jax.random.split(KEY)
    x0 = np.asarray(s.init(k_init, s.theta))
    expected = [float(s.step(x0, s.theta + sh * r.direction, None)[1].loss) for sh in r.shifts]
    np.testing.assert_allclose(r.losses[0], expected, rtol=1e-12)
    assert r.extrema[0] == 0
    assert count_extrema([0, 1, 0, 1, 0]) == 3


def test_cli_diagnose_writes_report(tmp_path, capsys):
    assert (
        main(
            [
                "diagnose",
                "rnn",
                "--param",
                "n=16",
                "--param",
                "g=0.5",
                "--horizons",
                "5,10",
                "--seeds",
                "3",
                "--lyapunov-steps",
                "500",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "VERDICT: STABLE" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["verdict"] == "stable"


def test_verdict_needs_the_spectrum_and_the_gradients_to_agree():
    from chaosgrad.diagnose import _verdict
    from chaosgrad.stats import Interval

    def iv(v, h=0.005):
        return Interval(v, v - h, v + h)

    m = 0.01
    assert _verdict(iv(0.1), 0.1, iv(0.09), m, False, -1)[0] == "chaotic"
    assert _verdict(iv(-0.1), 0.2, iv(0.15), m, False, -1)[0] == "chaotic"  # unstable start
    assert _verdict(iv(-0.1), -0.2, iv(-0.01), m, False, -1)[0] == "stable"
    # stretching the loss does not feel (relaxation to a minimum): not called chaotic
    assert _verdict(iv(-0.001), 0.04, iv(-0.01), m, False, -1)[0] == "marginal"
    # gradients grow although the dynamics contract: not called stable
    assert _verdict(iv(-0.3), -0.2, iv(0.3), m, False, -1)[0] == "marginal"
    assert _verdict(iv(0.1), float("nan"), iv(float("nan")), m, True, -1)[0] == "chaotic"
    # an interval that straddles the margin does not allow a verdict
    assert _verdict(Interval(0.05, -0.02, 0.12), 0.0, iv(0.05), m, False, -1)[0] == "marginal"
    assert _verdict(iv(0.1), 0.1, Interval(0.05, -0.01, 0.1), m, False, -1)[0] == "marginal"
    # ... unless the variance's growth is resolved (it carries the signal at few seeds)
    assert (
        _verdict(iv(0.1), 0.1, Interval(0.05, -0.01, 0.1), m, False, -1, Interval(0.2, 0.05, 0.4))[
            0
        ]
        == "chaotic"
    )
    # a diverged forward unroll is never called chaotic, whatever the rest says
    verdict, why = _verdict(iv(0.1), 0.1, iv(0.09), m, True, 7)
    assert verdict == "diverges" and "step 7" in why


@pytest.mark.parametrize("lr", [1.9, 2.5])
def test_gradient_descent_on_a_quadratic_is_stable_iff_below_two_over_lambda_max(lr):
    s = systems.make(
        "lopt", task="quadratic", optimizer="sgd", lr=lr, inner_steps=60, log_loss=False
    )
    h = np.asarray(s.init(KEY, s.theta).task["eigenvalues"])
    d = diagnose(s, seeds=4, key=KEY, lyapunov_steps=4000)  # 4 runs × 1000 steps
    # GD's Jacobian is I - lr H: contracting iff lr < 2 / h_max
    # (a 60-step transient leaves each run's QR basis aligned to within a few 1e-3 in log
    # growth, spread over its 1,000 counted steps; the mean of 4 runs with different
    # starting bases lands within 1e-5)
    assert d.lyapunov.exponents[0] == pytest.approx(np.log(np.abs(1 - lr * h)).max(), abs=1e-5)
    # above 2 / h_max GD diverges: the loss grows without bound (a blow-up, not chaos)
    assert d.verdict == ("stable" if lr < 2 / h.max() else "diverges")
    assert (lr < 2 / h.max()) == (lr == 1.9)


def _growth(rate_g, rate_v, horizons=(10, 30, 100), h=0.01):
    """A GrowthResult whose table follows the given rates exactly."""
    from chaosgrad.gradients import GrowthResult
    from chaosgrad.stats import Interval

    T = np.asarray(horizons, float)
    g, v = np.exp(rate_g * T), 5 * np.exp(rate_v * T)
    return GrowthResult(
        T,
        np.tile(g[:, None], (1, 8)),
        g,
        g,
        v,
        np.zeros(3),
        np.zeros((3, 8)),
        rate_g,
        rate_v,
        "per step",
        None,
        {},
        {},
        0.0,
        Interval(rate_g, rate_g - h, rate_g + h),
        Interval(rate_v, rate_v - 2 * h, rate_v + 2 * h),
    )


def _numbers(text):
    import re

    return [float(x) for x in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", text)]


@pytest.mark.parametrize(
    "case",
    [
        "stable",
        "marginal_shrinks",
        "marginal_unresolved",
        "marginal_grows",
        "chaotic",
        "chaotic_overflow",
        "diverges",
    ],
)
def test_every_verdict_and_recommendation_says_what_its_numbers_say(case):
    """Each sentence of the verdict, the headline and the recommendation is checked against
    the numbers it is built from (no "keeps growing" for a negative rate; the
    headline's factor is the table's)."""
    from chaosgrad.diagnose import _critical, _recommend, _verdict
    from chaosgrad.io import count_text
    from chaosgrad.stats import Interval

    m = 0.005
    lam = {
        "stable": Interval(-0.1, -0.11, -0.09),
        "chaotic": Interval(0.1, 0.09, 0.11),
        "chaotic_overflow": Interval(0.1, 0.09, 0.11),
    }.get(case, Interval(0.001, -0.002, 0.004))
    rates = {
        "stable": (-0.05, -0.1),
        "marginal_shrinks": (-0.0254, -0.0254),
        "marginal_unresolved": (0.0, 0.001),
        "marginal_grows": (0.02, 0.04),
        "chaotic": (0.1, 0.2),
        "chaotic_overflow": (float("nan"), float("nan")),
        "diverges": (0.6, 1.5),
    }[case]
    gr = _growth(*rates)
    if case == "marginal_shrinks":  # the user RNN's numbers at lr = 0.1 (tests/user_rnn.py)
        gr = gr._replace(variance_rate_interval=Interval(-0.0254, -0.0354, -0.018))
    if case == "chaotic_overflow":
        gr = gr._replace(
            growth_interval=Interval(np.nan, np.nan, np.nan),
            variance_rate_interval=Interval(np.nan, np.nan, np.nan),
        )
    first = 46 if case == "diverges" else -1
    blow = (
        {
            "first_step": first,
            "seeds": 1,
            "reason": "the loss grew past 1e6× its initial scale (3.8)",
        }
        if case == "diverges"
        else {"first_step": -1, "reason": ""}
    )
    verdict, conf = _verdict(
        lam,
        lam.value,
        gr.growth_interval,
        m,
        case == "chaotic_overflow",
        first,
        gr.variance_rate_interval,
        blow["reason"] or "x",
    )
    expect = case.split("_")[0]
    assert verdict == expect, (verdict, conf)
    crit, civ = _critical(lam, lam.value, gr, verdict, 100.0, 1.0, m)
    rec = _recommend(verdict, crit, civ, gr, lam, m, 100.0, blow)
    v = gr.variance_rate_interval
    if expect in ("stable", "diverges"):
        assert crit is None
    if case == "diverges":
        assert "from step 46" in rec and "1e6×" in rec and "step 46" in conf
    if case == "stable":
        assert f"{lam.value:+.4g}" in rec and "trustworthy" in rec
    if case == "marginal_shrinks":  # the user RNN's sentence at lr = 0.1
        assert crit is None and "keeps growing" not in rec and "shrinks" in rec
        assert f"{v.value:+.4g} [{v.low:+.4g}, {v.high:+.4g}]" in rec
    if case == "marginal_unresolved":
        assert crit is None and "not resolved from 0" in rec and "keeps growing" not in rec
        assert "T = 100" in rec
    if case in ("marginal_grows", "chaotic"):
        # the critical horizon is the T over which the table's variance grows 100x: check
        # it against the table itself (its variances follow the fitted rate exactly)
        T, V = gr.horizons, gr.variance
        assert V[1] / V[0] == pytest.approx(100 ** ((T[1] - T[0]) / crit), rel=1e-9)
        assert f"T ≈ {count_text(crit)}" in rec and f"{v.value:+.4g}" in rec
        assert ("keeps growing" in rec) == (case == "marginal_grows")
        assert civ.low <= crit <= civ.high
    if case == "chaotic_overflow":
        assert "overflow" in rec and (crit is None or "λ1" in civ.method)
    for x in _numbers(rec):  # no absurd counts printed in full
        assert len(str(int(abs(x)))) < 12 if np.isfinite(x) else True


def test_headline_factor_matches_the_table_and_exponents_are_sorted():
    # Hénon: chaotic, its measured variance grows; the headline's T is the horizon over
    # which the line fitted to the table's variances grows 100x
    d = diagnose(systems.make("henon"), horizons=[5, 10, 20], seeds=8, key=KEY, lyapunov_steps=2000)
    assert d.verdict == "chaotic" and d.critical_horizon is not None
    v = d.growth.variance_rate_interval
    assert d.critical_horizon == pytest.approx(np.log(100) / v.value)
    head = d.summary().splitlines()[3]
    assert f"grows 100x every {d.critical_horizon:.0f} steps" in head
    assert "the rate fitted to the table" in head
    # the table agrees with the fitted rate: the variance's log-slope end to end lies within
    # a factor 2 of the fitted rate
    V, H = d.growth.variance, d.growth.horizons
    assert np.log(V[-1] / V[0]) / (H[-1] - H[0]) == pytest.approx(v.value, rel=0.5)
    ex = d.lyapunov.exponents
    assert np.all(np.diff(ex) <= 0)
    assert d.lyapunov.history[-1].tolist() == ex.tolist()
    listed = [
        float(x) for x in d.summary().split("after")[1].split(":")[1].split("\n")[0].split(",")
    ]
    assert listed == sorted(listed, reverse=True)


def test_blowup_test_is_a_growth_test_not_a_float_range_test():
    from chaosgrad.diagnose import blowup_test

    t = np.arange(100)
    calm = 1 + 0.5 * np.sin(t)[None].repeat(3, 0)
    assert blowup_test(calm, np.ones(3), np.ones(3))["first_step"] == -1
    grows = calm.copy()
    grows[1] = np.exp(0.3 * t)  # passes 1e6 × ~1 at step 47, far below float32's range
    r = blowup_test(grows, np.ones(3), np.ones(3))
    assert r["first_step"] == int(np.ceil(np.log(1e6 * r["loss_scale"]) / 0.3)) and r["seeds"] == 1
    nan = calm.copy()
    nan[2, 7] = np.nan
    assert blowup_test(nan, np.ones(3), np.ones(3))["first_step"] == 7
    # a state that grows a million-fold with a calm loss (e.g. a log loss) also diverges
    r = blowup_test(calm, np.ones(3), np.array([1.0, 2e6, 1.0]))
    assert r["first_step"] == 99 and "state" in r["reason"]
    # a state starting at exactly 0 has no scale to grow from: not tested
    assert blowup_test(calm, np.zeros(3), np.full(3, 5.0))["first_step"] == -1


def test_plots_survive_infinite_and_huge_values(tmp_path):
    # eigenvalue 1e40: the state reaches 1e240 (finite in float64), the gradients overflow
    # to inf at the last horizon; the figures must be drawn and the report saved
    d = diagnose(
        systems.make("linear", eigenvalues=(1e40, 0.5), loss="quadratic"),
        horizons=[2, 4, 6],
        seeds=3,
        key=KEY,
        lyapunov_steps=20,
        transient=0,
        out=tmp_path,
    )
    assert d.verdict == "diverges" and d.figure_error == ""
    for name in ("summary", "growth", "variance", "lyapunov", "slices"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "report.json").read_text())["verdict"] == "diverges"


def test_a_failing_figure_costs_neither_the_report_nor_the_exit_status(
    tmp_path, capsys, monkeypatch
):
    # chaosgrad's own plotting code raising (not matplotlib mocked): the diagnosis is
    # returned and saved, and the command does not call it bad input
    import chaosgrad.plots

    def broken(d, out):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(chaosgrad.plots, "plot_diagnosis", broken)
    with pytest.warns(RuntimeWarning, match="figures could not be drawn"):
        d = diagnose(
            systems.make("rnn", n=4, g=0.5),
            horizons=[2, 4],
            seeds=2,
            key=KEY,
            lyapunov_steps=50,
            out=tmp_path,
        )
    assert "OverflowError" in d.figure_error
    assert json.loads((tmp_path / "report.json").read_text())["figure_error"] == d.figure_error
    assert (
        main(
            [
                "diagnose",
                "rnn",
                "--param",
                "n=4",
                "--param",
                "g=0.5",
                "--horizons",
                "2,4",
                "--seeds",
                "2",
                "--lyapunov-steps",
                "50",
                "--out",
                str(tmp_path / "cli"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "figures not drawn: OverflowError" in capsys.readouterr().out


def test_an_internal_failure_is_not_reported_as_bad_input(capsys, monkeypatch):
    import chaosgrad.app.cli as cli

    def boom(args):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setitem(cli.COMMANDS, "systems", boom)
    assert main(["systems"]) == cli.INTERNAL_ERROR == 3
    err = capsys.readouterr().err
    assert "internal error (not a problem with the input)" in err and "OverflowError" in err
    assert len(err.strip().splitlines()) == 1


def test_tails_are_reported_per_horizon():
    # numbers from a user's run: one seed in 512 with |g| = 1.1e5 while the median is 0.06
    from chaosgrad.diagnose import TAIL_RARITY, seeds_to_see, tail_table

    rng = np.random.default_rng(0)
    row = 0.06 * np.exp(0.1 * rng.normal(size=512))
    row[17] = 1.1e5
    t = tail_table(np.stack([row, np.full(512, 0.06)]))
    assert t["max"][0] == 1.1e5 and t["median"][0] == pytest.approx(0.06, rel=0.02)
    assert t["beyond"][0] == 1 / 512 and t["beyond"][1] == 0.0
    # the seeds needed to see a 1-in-500 tail with 95%: (1 - 1/500)^n <= 0.05
    n = seeds_to_see()
    assert (1 - 1 / TAIL_RARITY) ** n <= 0.05 < (1 - 1 / TAIL_RARITY) ** (n - 1)
    d = diagnose(
        systems.make("rnn", n=4, g=0.5), horizons=[2, 4], seeds=3, key=KEY, lyapunov_steps=50
    )
    text = d.summary()
    assert f"3 seeds see a 1-in-500 tail of |grad| with probability 1%; {n:,} seeds" in text
    med = float(np.median(d.growth.norms[0]))
    assert f"{med:>11.3e}" in text.split("slice NaN")[1].splitlines()[1]
