"""A user's own system, end to end: a 2-layer tanh RNN trained by minibatch GD, θ = log lr, its
state a dict pytree (tests/user_rnn.py), diagnosed at lr = 0.1, 0.3, 0.5 in float32 and
float64. The verdicts are stable-or-marginal / marginal-or-chaotic / diverges and agree
across the precisions; nothing crashes; every report is saved with its figures; the words
follow the numbers."""

import functools
import json
import re

import jax
import numpy as np
import pytest
from user_rnn import tanh_rnn_gd

from chaosgrad.diagnose import diagnose
from chaosgrad.io import count_text


@functools.cache
def _system(dtype):
    # one system per precision; lr is θ, so the three learning rates share its compiles
    return tanh_rnn_gd(dtype=dtype)


EXPECTED = {0.1: ("stable", "marginal"), 0.3: ("marginal", "chaotic"), 0.5: ("diverges",)}


@pytest.mark.parametrize("lr", sorted(EXPECTED))
def test_user_rnn_verdicts_agree_across_precisions(lr, tmp_path):
    verdicts = {}
    for dtype in ("float32", "float64"):
        out = tmp_path / dtype
        theta = {"log_lr": np.log(np.asarray(lr, dtype))}
        d = diagnose(
            _system(dtype),
            theta,
            horizons=[10, 30, 100],
            seeds=8,
            key=jax.random.PRNGKey(0),
            lyapunov_steps=400,
            out=out,
            progress=False,
        )
        verdicts[dtype] = d.verdict
        assert d.verdict in EXPECTED[lr], (dtype, d.summary())
        assert d.figure_error == "" and (out / "summary.png").stat().st_size > 10_000
        assert json.loads((out / "report.json").read_text())["verdict"] == d.verdict
        text = d.summary()
        assert "keeps growing" not in text or d.growth.variance_rate_interval.low > 0
        ex = d.lyapunov.exponents[np.isfinite(d.lyapunov.exponents)]
        assert np.all(np.diff(ex) <= 0)
        if d.verdict == "diverges":
            assert "chaotic" not in text.lower().split("verdict:")[1].splitlines()[0]
            assert f"from step {d.first_nonfinite_step}" in text
            assert 0 <= d.first_nonfinite_step < 100
        if d.critical_horizon is not None:
            # the headline's T is the horizon over which the line fitted to the table's
            # variances grows 100x, and the recommendation names the same T
            v = d.growth.variance_rate_interval
            assert f"grows 100x every {count_text(d.critical_horizon)} steps" in text
            assert d.critical_horizon == pytest.approx(np.log(100) / v.value)
            V = d.growth.variance  # the table: 10 -> 100 grows as the fitted rate says
            assert np.log(V[-1] / V[0]) / 90 == pytest.approx(v.value, rel=0.5)
            assert f"T ≈ {count_text(d.critical_horizon)}" in d.recommendation
        for n in re.findall(r"\d{12,}", text):  # no absurd integers printed in full
            pytest.fail(f"an unreadable number in the report: {n}")
    assert verdicts["float32"] == verdicts["float64"], verdicts
