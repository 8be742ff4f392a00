# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Pick a gradient estimator
#
# When backprop through a long unroll is chaotic, what should you use instead? `compare`
# measures each estimator's bias and variance against a reference gradient, what one
# estimate costs in unroll steps and seconds, and the squared error you get when every
# estimator spends the same compute. Then we train with the winner.
#
# Systems: the logistic map at r = 3.9 (chaotic, λ ≈ 0.5 per step) and a tanh RNN with gain
# 0.5 (contracting). Estimators: full backprop, truncated backprop (tbptt), antithetic ES over
# whole unrolls, and PES (persistent ES over truncated windows, unbiased).

# %%
import os

import jax

import chaosgrad
from chaosgrad import systems
from chaosgrad.plots import show_png

chaosgrad.enable_x64()
QUICK = os.environ.get("CHAOSGRAD_NOTEBOOK_SCALE", "quick") == "quick"
OUT = os.environ.get("CHAOSGRAD_NOTEBOOK_OUT", "out/notebooks")
SAMPLES = 16 if QUICK else 64

# %% [markdown]
# ## 1. A chaotic system: black-box estimators win

# %%
chaotic = systems.make("logistic", r=3.9)
ESTIMATORS = ["backprop", "tbptt", "es", "pes"]
c = chaosgrad.compare(
    chaotic,
    estimators=ESTIMATORS,
    horizon=30,
    samples=SAMPLES,
    key=jax.random.PRNGKey(0),
    out=f"{OUT}/compare_logistic",
)
print(c.table())
show_png(c.figures["compare"])

# %% [markdown]
# ## 2. A stable system: backprop wins

# %%
stable = systems.make("rnn", n=8, g=0.5)
c2 = chaosgrad.compare(
    stable,
    estimators=ESTIMATORS,
    horizon=50,
    samples=SAMPLES,
    key=jax.random.PRNGKey(0),
    out=f"{OUT}/compare_rnn",
)
print(c2.table())
show_png(c2.figures["compare"])

# %% [markdown]
# ## 3. Train with the recommended estimator
# `chaosgrad.meta_train` runs any estimator (by name) with an outer optimizer (by name), logs
# the meta-loss on fixed evaluation unrolls, checkpoints atomically and resumes after an
# interruption. We train the stable RNN's weights with the estimator its comparison
# recommends — or, when the best ones tie, the best point estimate (`ranking[0]`): its
# meta-loss (½ mean x², over fixed evaluation seeds) falls step after step.
#
# Why not the logistic map? Its meta-loss, the mean of x over the unroll, is a rough function
# of r (periodic windows interleave with chaos): twenty outer steps move r by hundredths,
# and what the evaluation then shows is that roughness, not progress. The comparison above
# is what tells you which gradient to trust there; whether θ can be improved is a question
# about the landscape (see the loss slices of `diagnose`).

# %%
best = c2.recommended or c2.ranking[0]
windowed = next(s.traits["windowed"] for s in c2.stats if s.name == best)  # what it is
res = chaosgrad.meta_train(
    stable,
    best,
    steps=20 if QUICK else 200,
    out=f"{OUT}/meta_{best}",
    optimizer="adam",
    outer_lr=1e-2,
    estimator_params={"horizon": 50, **({"window": 10} if windowed else {})},
    key=jax.random.PRNGKey(1),
    log_every=5,
    progress=False,
)
first, last = res.evals[0], res.evals[-1]
print(
    f"{best}: meta-loss {first['meta_loss']:.4g} (step {first['step']}) -> "
    f"{last['meta_loss']:.4g} (step {last['step']})"
)
assert last["meta_loss"] < first["meta_loss"], "training with the recommended estimator"
