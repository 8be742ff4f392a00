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
import optax
from chaosgrad.estimators.meta import meta_train

import chaosgrad
from chaosgrad import estimators, systems
from chaosgrad.app.compare import compare
from chaosgrad.plots import show_png

chaosgrad.enable_x64()
QUICK = os.environ.get("CHAOSGRAD_NOTEBOOK_SCALE", "quick") == "quick"
OUT = os.environ.get("CHAOSGRAD_NOTEBOOK_OUT", "out/notebooks")
SAMPLES = 16 if QUICK else 64

# %% [markdown]
# ## 1. A chaotic system: black-box estimators win

# %%
chaotic = systems.make("logistic", r=3.9)
c = compare(chaotic, horizon=30, samples=SAMPLES, reference_batches=8 if QUICK else 32,
            key=jax.random.PRNGKey(0), out=f"{OUT}/compare_logistic")
print(c.table())
show_png(c.figures["compare"])

# %% [markdown]
# ## 2. A stable system: backprop wins

# %%
stable = systems.make("rnn", n=8, g=0.5)
c2 = compare(stable, horizon=50, samples=SAMPLES, reference_batches=8 if QUICK else 32,
             key=jax.random.PRNGKey(0), out=f"{OUT}/compare_rnn")
print(c2.table())
show_png(c2.figures["compare"])

# %% [markdown]
# ## 3. Train with the recommended estimator
# `meta_train` runs any estimator with an optax optimizer, logs the meta-loss on fixed
# evaluation unrolls, checkpoints atomically and resumes after an interruption.

# %%
best = c.ranking[0]
est = estimators.make(best, chaotic, horizon=30, **({"window": 10} if best in ("pes", "tes",
                                                                              "tbptt") else {}))
res = meta_train(chaotic, est, optax.adam(1e-2), steps=20 if QUICK else 200,
                 out_dir=f"{OUT}/meta_{best}", key=jax.random.PRNGKey(1), log_every=5,
                 progress=False)
first, last = res.evals[0], res.evals[-1]
print(f"{best}: meta-loss {first['meta_loss']:.4f} (step {first['step']}) -> "
      f"{last['meta_loss']:.4f} (step {last['step']})")
