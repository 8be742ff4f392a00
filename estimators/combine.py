"""The inverse-variance combination of backprop and ES gradient estimates (Metz et al. 2019,
"Understanding and correcting pathologies in the training of learned optimizers").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from chaosgrad.estimators.backprop import antithetic
from chaosgrad.estimators.base import (
    Estimator,
    check_positive_int,
    finish_info,
)
from chaosgrad.estimators.unrolled import Horizon, horizon_init, steps_of

from chaosgrad._types import PyTree
from chaosgrad.errors import InputError
from chaosgrad.system import System


def inverse_variance_combine(samples_a: PyTree, samples_b: PyTree):
    """Combine two unbiased estimators of the same gradient, element by element, with
    weights 1/variance, each variance estimated across the samples (leading axis, N ≥ 2).

    For element j: â = mean(a_j), v_a = var(a_j)/N (unbiased sample variance), likewise b;
    the result is (â v_b + b̂ v_a) / (v_a + v_b) — the minimum-variance unbiased mix of two
    independent estimates. An element whose a-samples are non-finite uses b alone (and
    vice versa); when both variances are 0 the two means are averaged.

    Returns:
      (combined, weight_a): pytrees like one sample; ``weight_a`` ∈ [0, 1] is the weight on a.
    """

    def one(a, b):
        n = a.shape[0]
        if n < 2:
            raise InputError("inverse-variance combination needs at least 2 samples")
        ma, mb = jnp.mean(a, 0), jnp.mean(b, 0)
        va, vb = jnp.var(a, 0, ddof=1) / n, jnp.var(b, 0, ddof=1) / n
        ok_a = jnp.isfinite(ma) & jnp.isfinite(va)
        ok_b = jnp.isfinite(mb) & jnp.isfinite(vb)
        s = va + vb
        wa = jnp.where(s > 0, vb / jnp.where(s > 0, s, 1), 0.5)
        wa = jnp.where(ok_a & ~ok_b, 1.0, jnp.where(ok_b & ~ok_a, 0.0, wa))
        comb = jnp.where(wa == 0, mb, jnp.where(wa == 1, ma, wa * ma + (1 - wa) * mb))
        return comb, wa

    pairs = jax.tree_util.tree_map(one, samples_a, samples_b)
    outer = jax.tree_util.tree_structure(samples_a)
    comb, wa = jax.tree_util.tree_transpose(outer, jax.tree_util.tree_structure((0, 0)), pairs)
    return comb, wa


def combined(
    system: System,
    pairs: int = 8,
    sigma: float = 0.01,
    horizon: int = 0,
    remat_chunk: int = 0,
    shard: bool = True,
) -> Estimator:
    """Backprop and antithetic ES over the same N pairs of whole unrolls, combined per
    element by inverse variance (`inverse_variance_combine`).

    For pair i (run key k_i, ε_i ~ N(0, σ² I)): the backprop sample is
    ½ (∇L(θ + ε_i, k_i) + ∇L(θ − ε_i, k_i)) and the ES sample ε_i (L⁺ − L⁻) / (2σ²); both
    are unbiased for ∇_θ E[L_T(θ + ε)], the smoothed meta-loss, so the combination targets
    it too (up to the O(1/N) bias of weights estimated from the same samples). Where
    backprop's variance explodes (chaos) the weight moves to ES; where it is smooth, to
    backprop. ``info`` reports the mean weight on backprop.

    Args:
      system: any `chaosgrad.System`.
      pairs: N ≥ 2 pairs per estimate (sharded over devices).
      sigma: σ of the perturbations.
      horizon: T (0: the system's horizon).
      remat_chunk: checkpoint chunk for backprop (0: the default chunk, see `backprop`).
      shard: shard the pairs over the local devices.
    """
    pairs = check_positive_int(pairs, "pairs")
    if pairs < 2:
        raise InputError(f"combined needs pairs >= 2 to estimate variances, got {pairs}")
    pair = antithetic(system, pairs, sigma, horizon, remat_chunk, shard)
    sigma, horizon = pair.sigma, pair.horizon

    init = horizon_init(horizon)
    return Estimator(
        init,
        _combined_estimate(pair.run, pairs, sigma),
        "combined",
        {"pairs": pair.pairs, "sigma": sigma, "horizon": horizon, "remat_chunk": pair.chunk},
        target="smoothed",
        smoothing=sigma,
        reverse_mode=True,
        steps=2 * pairs * horizon,
    )


@functools.lru_cache(maxsize=32)
def _combined_estimate(run, pairs: int, sigma: float):
    """The combination's ``estimate`` over a shared `Antithetic.run`: one function (one
    compiled program) for every horizon."""

    def estimate(est_state: Horizon, theta, key):
        steps = steps_of(est_state)
        eps, (vals, bad), g = run(theta, key, steps)
        lp, lm = vals[:, 0], vals[:, 1]
        g_bp = jax.tree_util.tree_map(lambda x: 0.5 * (x[:, 0] + x[:, 1]), g)
        g_es = jax.tree_util.tree_map(
            lambda e: (
                e
                * ((lp - lm) / (2 * sigma**2)).astype(e.dtype).reshape((-1,) + (1,) * (e.ndim - 1))
            ),
            eps,
        )
        vals = jnp.mean(vals, axis=1)
        grad, w_bp = inverse_variance_combine(g_bp, g_es)
        leaves = jax.tree_util.tree_leaves(w_bp)
        size = sum(x.size for x in leaves)
        info = finish_info(
            grad,
            loss=jnp.mean(vals),
            steps=2 * pairs * steps,
            nonfinite_losses=jnp.sum(bad).astype(jnp.int32),
            weight_backprop=sum(jnp.sum(x) for x in leaves) / size,
            nonfinite_backprop=jnp.asarray(
                sum(jnp.sum(~jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(g_bp))
            ).astype(jnp.int32),
        )
        return grad, est_state, info

    return estimate
