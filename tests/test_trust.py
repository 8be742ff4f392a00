"""Trustworthy answers: intervals that cover the truth at their nominal rate, "tie" when
estimators are equal, a reference too noisy to call a bias, "diverges", a critical horizon
that does not depend on the horizons asked for, and non-finite losses counted."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chaosgrad import StepOut, System, systems
from chaosgrad.app.cli import main
from chaosgrad.app.compare import compare
from chaosgrad.diagnose import diagnose
from chaosgrad.errors import InputError
from chaosgrad.gradients import gradient_growth
from chaosgrad.spectra import DEFAULT_K, lyapunov_spectrum
from chaosgrad.stats import Interval, bias_interval, rank, segment_interval
from chaosgrad.unroll import unroll_grad

KEY = jax.random.PRNGKey(0)


def test_lyapunov_interval_covers_ln2_at_its_nominal_rate():
    # logistic r = 4: λ = ln 2 exactly. 20 independent starts, 95% intervals: the number
    # that miss is Binomial(20, 0.05); P(more than 4 miss) < 0.3%.
    s = systems.make("logistic", r=4.0, dtype="float64")
    cover, widths = 0, []
    for i in range(20):
        res = lyapunov_spectrum(
            s, key=jax.random.PRNGKey(100 + i), steps=20_000, k=1, transient=100, progress=False
        )
        iv = segment_interval(res.history_steps, res.history[:, 0])
        cover += iv.contains(math.log(2))
        widths.append(iv.high - iv.low)
    assert cover >= 16, cover
    assert 0 < np.median(widths) < 0.1  # informative, not a vacuous interval


def test_bias_interval_covers_the_true_bias_at_its_nominal_rate():
    # synthetic: 40 coordinates, an estimator mean and a reference mean with known noise
    rng = np.random.default_rng(0)
    p, n_est, n_ref = 40, 32, 64
    truth = np.zeros(p)
    truth[:4] = 0.5  # ‖bias‖ = 1, well above the noise: the two-sided regime
    cover, zero_cover, reps = 0, 0, 300
    for _ in range(reps):
        est = truth + rng.normal(0, 0.5, (n_est, p))
        ref = rng.normal(0, 0.5, (n_ref, p))
        iv = bias_interval(
            est.mean(0), est.var(0, ddof=1), n_est, ref.mean(0), ref.var(0, ddof=1) / n_ref
        )
        cover += iv.contains(1.0)
        est0 = rng.normal(0, 0.5, (n_est, p))  # unbiased: the interval must reach 0
        iv0 = bias_interval(
            est0.mean(0), est0.var(0, ddof=1), n_est, ref.mean(0), ref.var(0, ddof=1) / n_ref
        )
        zero_cover += iv0.low == 0.0
    assert 0.90 <= cover / reps <= 0.99, cover / reps
    assert zero_cover / reps >= 0.90, zero_cover / reps


def test_rank_says_tie_when_intervals_overlap():
    r = rank(
        {"a": Interval(1.0, 0.8, 1.3), "b": Interval(1.2, 1.1, 1.5), "c": Interval(5.0, 4.0, 6.0)}
    )
    assert r.order == ["a", "b", "c"] and r.tied == ["a", "b"] and not r.separated
    r = rank({"a": Interval(1.0, 0.9, 1.05), "b": Interval(1.2, 1.1, 1.5)})
    assert r.tied == ["a"] and r.separated


def test_compare_calls_two_equal_estimators_a_tie():
    # with one truncation window covering the whole episode, PES accumulates nothing across
    # windows: it is truncated ES by construction, so no ranking may separate them
    c = compare(
        systems.make("logistic", r=3.7),
        estimators_=["tes", "pes"],
        horizon=12,
        window=12,
        samples=16,
        reference="es",
        reference_per_batch=32,
        params={"tes": {"stagger": False}, "pes": {"stagger": False}},
        key=KEY,
    )
    assert sorted(c.tied) == ["pes", "tes"]
    assert c.recommendation.startswith("Tie at 95%: ")


def test_compare_says_when_the_reference_is_too_noisy():
    # ES with 8 pairs, 32 replicates, against a reference of 6 batches of 2 pairs: the
    # reference's variance is ~20× that of the estimator's mean, so it is what limits
    c = compare(
        systems.make("logistic", r=3.9),
        estimators_=["es", "tbptt"],
        horizon=20,
        samples=32,
        reference="es",
        reference_batches=2,
        reference_per_batch=2,
        key=KEY,
    )
    noisy = [s for s in c.stats if s.bias_status == "reference too noisy"]
    assert "es" in [s.name for s in noisy], [(s.name, s.bias_status) for s in c.stats]
    assert all(s.reference_samples_needed > c.reference_samples for s in noisy)
    assert any("the reference is too noisy" in n for n in c.notes)
    for s in c.stats:  # never a bias silently floored: a zero low end comes with a bound
        assert s.bias.low <= s.bias.value <= s.bias.high
        if s.bias.low == 0:
            assert any(f"{s.name}: no bias resolved from zero; bias < " in n for n in c.notes)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--estimators", "backprop,backprop"], "named more than once"),
        (["--estimators", "tbptt", "--window", "50", "--horizon", "10"], "window 50"),
        (["--estimators", "es", "--budget", "1", "--horizon", "10"], "below the cost of one"),
        (["--samples", "2"], "samples must be at least 8"),
    ],
)
def test_compare_rejects_nonsense_with_one_line(argv, message, capsys, tmp_path):
    code = main(["compare", "logistic", "--no-progress", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _divergent():
    def init(key, theta):
        return jax.random.uniform(key, (1,), minval=0.5, maxval=1.0)

    def step(x, theta, key):
        x = theta * x**2 + 1.0
        return x, StepOut(loss=x[0])

    return System(
        init,
        step,
        name="square-plus-one",
        theta=jnp.asarray(1.0),
        horizon=30,
        description="x -> theta x^2 + 1 (diverges)",
    )


@pytest.mark.parametrize("make", [lambda: systems.make("logistic", r=4.5), _divergent])
def test_a_divergent_map_is_called_diverges_never_chaotic(make, tmp_path):
    d = diagnose(make(), horizons=[5, 10, 30], seeds=4, key=KEY, lyapunov_steps=500, out=tmp_path)
    assert d.verdict == "diverges"
    assert 0 <= d.first_nonfinite_step < 30 and d.diverged_seeds >= 1
    assert "diverges" in d.recommendation and "DIVERGES" in d.summary()
    assert d.critical_horizon is None
    assert (tmp_path / "report.json").exists() and (tmp_path / "summary.png").exists()


def test_critical_horizon_does_not_depend_on_the_horizons_asked_for():
    s = systems.make("henon", dtype="float64")
    crit = [
        diagnose(s, horizons=hs, seeds=6, key=KEY, lyapunov_steps=4000).critical_horizon
        for hs in ([10, 33, 100], [2, 10, 100], [5, 20, 60])
    ]
    assert all(c is not None for c in crit)
    assert max(crit) <= 1.2 * min(crit), crit
    # and it is the absolute horizon log(100) / (2 λ1): λ1(Hénon) ≈ 0.42 → ≈ 5.5 steps
    assert crit[0] == pytest.approx(math.log(100) / (2 * 0.42), rel=0.1)


def test_nonfinite_losses_are_counted_even_with_finite_gradients():
    # loss = log(θ − 2) at θ = 1: NaN, while its gradient 1/(θ − 2) = −1 is finite
    def init(key, theta):
        return jnp.zeros(1)

    def step(x, theta, key):
        return x + 0.1, StepOut(loss=jnp.log(theta - 2.0) + x[0])

    s = System(init, step, name="log-negative", theta=jnp.asarray(1.0), horizon=10)
    r = unroll_grad(s, s.theta, KEY, 10, progress=False)
    assert int(r.nonfinite_losses) == 10
    g = gradient_growth(s, horizons=[5, 10], seeds=3, key=KEY, progress=False)
    np.testing.assert_array_equal(g.nonfinite_fraction, [1.0, 1.0])
    np.testing.assert_array_equal(g.nonfinite_loss_fraction, [1.0, 1.0])
    assert math.isnan(g.growth_rate)


def test_one_default_k_everywhere():
    s = systems.make("rnn", n=20, g=1.5)
    assert lyapunov_spectrum(s, key=KEY, steps=50, transient=0).k == min(20, DEFAULT_K)
    assert lyapunov_spectrum(s, key=KEY, steps=50, transient=0, k="all").k == 20
    with pytest.raises(InputError, match="or 'all'"):
        lyapunov_spectrum(s, key=KEY, steps=50, k=21)
    d = diagnose(s, horizons=[5, 10], seeds=3, key=KEY, lyapunov_steps=100)
    assert d.lyapunov.k == DEFAULT_K


def test_diagnose_and_spectrum_plots_survive_systems_with_nothing_to_log_scale(tmp_path, capsys):
    # heat at r = 2 and logistic at r = 4.5 blow up: the report is written first, and every
    # panel with no positive finite data says so instead of failing (the error "Data cannot
    # be log-scaled" used to leave an empty folder)
    out = tmp_path / "heat"
    assert (
        main(
            [
                "diagnose",
                "heat",
                "--param",
                "r=2",
                "--horizons",
                "5,10,40",
                "--seeds",
                "3",
                "--lyapunov-steps",
                "300",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "report.json").exists() and (out / "summary.png").stat().st_size > 10_000
    capsys.readouterr()
    png = tmp_path / "spec.png"
    assert (
        main(
            [
                "spectrum",
                "logistic",
                "--param",
                "r=4.5",
                "--steps",
                "200",
                "--json",
                "--no-progress",
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    import json

    def strict(c):
        raise ValueError(c)

    rep = json.loads(capsys.readouterr().out, parse_constant=strict)
    assert rep["exponents"] == [None] and png.stat().st_size > 5_000
