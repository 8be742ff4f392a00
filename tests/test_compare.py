"""`compare`: estimator rankings where the answer is known, and its statistics' bookkeeping."""

import json

import jax
import numpy as np
import pytest

from chaosgrad import systems
from chaosgrad.app.cli import main
from chaosgrad.app.compare import compare, reference_gradient

KEY = jax.random.PRNGKey(0)


def test_black_box_beats_backprop_on_a_chaotic_map():
    # logistic r = 3.9 (λ ≈ 0.5 per step): backprop's variance ~ e^{2·0.5·30}, ES's bounded;
    # the reference is chosen by the measured spread: ES, cross-checked by reparam backprop
    c = compare(
        systems.make("logistic", r=3.9),
        horizon=30,
        samples=16,
        key=KEY,
        estimators=["backprop", "tbptt", "es", "pes", "nres"],
    )
    assert c.reference.startswith("es") and c.target == "smoothed"
    assert c.reference_check["kind"] == "reparam" and c.reference_check["agree"]
    assert c.reference_samples >= 10 * 16 * 8  # 10 x the replicates, 8 pairs a batch
    rank = c.ranking
    assert rank.index("es") < rank.index("backprop")
    assert rank.index("pes") < rank.index("backprop")
    by = {s.name: s for s in c.stats}
    assert by["backprop"].variance.value > 1e3 * by["es"].variance.value
    # separated, not a tie: backprop's interval lies far above ES's
    assert by["backprop"].mse_at_budget.low > by["es"].mse_at_budget.high


def test_backprop_first_on_a_stable_system(tmp_path):
    c = compare(systems.make("rnn", n=8, g=0.5), horizon=50, samples=16, key=KEY, out=tmp_path)
    assert c.reference.startswith("reparam")  # the smoothed target's low-variance reference
    # contracting dynamics: backprop is unbiased and cheap enough; truncated backprop's bias
    # is tiny, so the two may tie, but the black-box estimators lose, separated at 95%
    assert c.ranking[0] in ("backprop", "tbptt") and "backprop" in c.tied
    assert set(c.tied) <= {"backprop", "tbptt"}
    by = {s.name: s for s in c.stats}
    for loser in ("es", "pes"):
        assert by[loser].mse_at_budget.low > by["backprop"].mse_at_budget.high
    assert c.recommendation.startswith(("Use backprop", "Tie at 95%: "))
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["ranking"] == c.ranking and saved["target"] == "smoothed"
    assert saved["target_description"].startswith("smoothed: ∇_θ E_key E_ε L_T(θ + ε; key)")
    assert saved["null_check"]["estimator"] == "reparam"
    assert saved["null_check"]["resolved"] == (saved["null_check"]["bias"]["low"] > 0)
    # ranking[0] is the recommended estimator, or the ranking says tie
    assert saved["recommended"] in (c.ranking[0], None)
    assert (saved["recommended"] is None) == (len(c.tied) > 1)
    # compiling and sampling are reported apart
    assert saved["timing"]["compile_seconds"] >= 0 and saved["timing"]["sampling_seconds"] > 0
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    saved_by = {e["name"]: e for e in saved["estimators"]}
    for s in c.stats:  # the figure of merit is bias² + variance·cost/budget, exactly
        m = s.mse_at_budget
        assert m.value == pytest.approx(s.bias.value**2 + s.variance_eff.value * s.steps / c.budget)
        assert m.low <= m.value <= m.high
        assert saved_by[s.name]["mse_at_budget"]["high"] == pytest.approx(m.high)


def test_reference_gradient_of_a_linear_system_is_exact():
    # influence balancing is linear in θ, so E[backprop] is its exact meta-gradient and
    # every sample equals it: the standard error is 0 up to rounding
    s = systems.make("influence")
    ref = reference_gradient(s, s.theta, 20, kind="backprop", key=KEY, batches=4, per_batch=4)
    g, se = ref.mean, ref.se
    from chaosgrad.unroll import unrolled_loss

    exact = jax.grad(lambda th: unrolled_loss(s, th, KEY, 20))(s.theta)
    np.testing.assert_allclose(g, np.ravel(exact), rtol=1e-10)
    assert se < 1e-10


def test_cli_compare_rejects_unknown_estimator(capsys):
    assert main(["compare", "rnn", "--estimators", "backprop,nope"]) == 2
    assert "unknown estimator 'nope'" in capsys.readouterr().err


def test_exact_target_charges_the_smoothing_and_names_it():
    c = compare(
        systems.make("rnn", n=8, g=0.5),
        estimators=["backprop", "es"],
        horizon=20,
        samples=8,
        target="exact",
        key=KEY,
    )
    assert c.target == "exact" and c.reference.startswith("backprop")
    assert not c.reference_check  # no second unbiased kind for the exact gradient
    assert any("includes the smoothing" in n for n in c.notes)
    by = {s.name: s for s in c.stats}
    assert by["backprop"].estimator == "backprop" and by["es"].target == "smoothed"


def test_reference_that_does_not_estimate_the_target_is_refused():
    from chaosgrad.errors import InputError

    with pytest.raises(InputError, match="does not estimate the exact target"):
        compare(systems.make("rnn", n=4), horizon=10, target="exact", reference="es")
    with pytest.raises(InputError, match="target 'wiggly' is not accepted"):
        compare(systems.make("rnn", n=4), horizon=10, target="wiggly")


def test_release_forgets_the_estimators_built_for_a_system():
    """`release` drops the memoised estimators of one system (so their programs can be
    freed) and leaves another system's; a later comparison builds afresh."""
    from chaosgrad.app.compare import make_estimator, release

    a, b = systems.make("logistic", r=3.7), systems.make("logistic", r=3.7)
    ea = make_estimator("es", a, pairs=2, sigma=0.1, horizon=5)
    assert make_estimator("es", a, pairs=2, sigma=0.1, horizon=5) is ea
    make_estimator("tbptt", a, particles=2, window=2, horizon=5)
    eb = make_estimator("es", b, pairs=2, sigma=0.1, horizon=5)
    assert release(a) == 2 and release(a) == 0
    assert make_estimator("es", a, pairs=2, sigma=0.1, horizon=5) is not ea
    assert make_estimator("es", b, pairs=2, sigma=0.1, horizon=5) is eb
