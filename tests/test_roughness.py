"""Roughness relative to a curve's own range, and what a mean of N noisy curves resolves, on
synthetic curves whose answers are known in closed form."""

import numpy as np
import pytest

from chaosgrad.roughness import (
    DEGREE,
    MeanRoughness,
    mean_roughness,
    roughness,
    significant_turns,
    smoothness,
)

X = np.linspace(-1.0, 1.0, 401)


def test_polynomials_and_constants_have_no_roughness_and_nan_is_not_hidden():
    assert roughness(3 * X**4 - X**3 + 2) == pytest.approx(0.0, abs=1e-13)
    assert roughness(np.full(50, 7.0)) == 0.0
    assert np.isnan(roughness([0.0, 1.0, np.nan, 2.0]))
    # degree 2 leaves the quartic's x⁴ part: not zero
    assert roughness(X**4, degree=2) > 0.01


def test_fast_oscillation_and_square_wave_give_their_closed_forms():
    # a sine of amplitude a with 20 periods is nearly orthogonal to polynomials of degree 4:
    # its RMS a/√2 remains, over the curve's range
    a = 0.1
    y = X**2 + a * np.sin(40 * np.pi * X)
    assert roughness(y) == pytest.approx(a / np.sqrt(2) / np.ptp(y), rel=0.01)
    # a ±1 square wave: RMS 1 over range 2
    assert roughness(np.sign(np.sin(40 * np.pi * X + 0.1))) == pytest.approx(0.5, rel=0.01)
    # relative to the range: unchanged by scale and offset
    assert roughness(-250 * y + 3) == pytest.approx(roughness(y), rel=1e-10)


def test_significant_turns_count_only_turns_above_a_fraction_of_the_range():
    t = np.linspace(0, 1, 1001)
    rng = np.random.default_rng(0)
    wavy = np.sin(10 * np.pi * t) + 1e-3 * rng.standard_normal(t.size)  # 5 periods
    assert significant_turns(wavy, 0.05) == 10
    assert significant_turns(wavy, 1.5) == 0
    # a steep trend with wiggles of 1% of its range: none at 5%, many at 0.1%
    trend = 100 * t + 1.0 * np.sin(200 * np.pi * t)
    assert significant_turns(trend, 0.05) == 0
    assert significant_turns(trend, 0.001) > 100


def test_mean_of_noisy_curves_sits_at_its_noise_floor():
    """N curves = smooth q(x) + iid N(0, σ²) per point: the mean's residual is noise alone,
    RMS σ/√N · √(1 − (DEGREE + 1)/P) (the fit takes DEGREE + 1 of P dimensions), so the mean's
    roughness equals the floor and is not resolved."""
    rng = np.random.default_rng(1)
    n, sigma = 400, 0.05
    q = X**2
    curves = q + sigma * rng.standard_normal((n, X.size))
    r = mean_roughness(curves)
    kept = np.sqrt(1 - (DEGREE + 1) / X.size)
    expected = sigma / np.sqrt(n) * kept / np.ptp(curves.mean(axis=0))
    assert r.floor == pytest.approx(expected, rel=0.03)
    assert r.mean == pytest.approx(r.floor, rel=0.1)
    # one curve: σ over its own range (q's plus the noise's extremes)
    per = np.median(sigma * kept / np.ptp(curves, axis=1))
    assert r.per_curve_median == pytest.approx(per, rel=0.03)
    v = smoothness(r)
    assert v["smooth"] and v["smoother"] and not v["resolved"]
    assert r.curves == n and r.nonfinite == 0


def test_roughness_shared_by_every_curve_is_resolved_above_the_floor():
    """A common fast oscillation c(x) survives averaging: mean² ≈ rough(c)² + floor²."""
    rng = np.random.default_rng(2)
    n, sigma, a = 100, 0.05, 0.03
    q = X**2 + a * np.sin(40 * np.pi * X)
    r = mean_roughness(q + sigma * rng.standard_normal((n, X.size)))
    common = a / np.sqrt(2) / np.ptp(q)
    assert r.mean == pytest.approx(np.hypot(common, r.floor), rel=0.05)
    v = smoothness(r)
    assert v["resolved"] and not v["smooth"]  # 2% of the range: at the threshold's edge
    assert r.mean > 0.02


def test_a_curve_with_a_nan_is_left_out_and_counted():
    curves = np.stack([X**2, X**2 + 0.01 * np.sin(40 * np.pi * X), X**2])
    curves[1, 5] = np.nan
    r = mean_roughness(curves)
    assert (r.curves, r.nonfinite) == (2, 1)
    assert r.mean == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        mean_roughness(X)


def test_smoothness_words_follow_their_stated_thresholds():
    def verdict(mean, floor, per):
        return smoothness(MeanRoughness(mean, floor, np.asarray(per), len(per), 0, DEGREE))

    v = verdict(0.019, 0.001, [0.3, 0.4, 0.5])
    assert v["smooth"] and v["smoother"] and v["resolved"]
    v = verdict(0.17, 0.1, [0.2, 0.3, 0.4])  # the mean over half the median: not smoother
    assert not v["smooth"] and not v["smoother"] and not v["resolved"]
    v = verdict(0.17, 0.01, [0.4, 0.5, 0.6])
    assert v["smoother"] and v["resolved"] and not v["smooth"]
    assert not verdict(float("nan"), 0.1, [0.3])["smooth"]
