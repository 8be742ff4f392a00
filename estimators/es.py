"""Black-box estimators from loss values alone: antithetic ES over whole unrolls, truncated
ES over windows of a persistent population, and PES (Vicol, Metz & Sohl-Dickstein 2021).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from chaosgrad.estimators.backprop import full_unroll_loss
from chaosgrad.estimators.base import (
    Estimator,
    check_positive_float,
    check_positive_int,
    finish_info,
    population_sharding,
    shard_population,
    tree_normal,
    tree_scale,
)
from chaosgrad.estimators.particles import (
    Particles,
    TruncatedState,
    init_population,
    make_schedule,
    perturbed_thetas,
    run_window,
)

from chaosgrad.system import System, resolve_theta

PyTree = Any


def pair_perturbations(key: jax.Array, theta: PyTree, pairs: int, sigma: float, sharding=None):
    """ε_i ~ N(0, σ² I) for i < pairs, θ-shaped leaves with a leading pair axis.

    Pair i's draw comes from its own key ``split(key, pairs)[i]``, so it does not depend on
    how the pairs are sharded.
    """
    keys = shard_population(jax.random.split(key, pairs), sharding)
    return jax.vmap(lambda k: tree_scale(tree_normal(k, theta), sigma))(keys)


def es(system: System, pairs: int = 8, sigma: float = 0.01, horizon: int = 0,
       shard: bool = True) -> Estimator:
    """Antithetic ES over whole T-step unrolls:
    ĝ = (1 / (2 N σ²)) Σ_i ε_i (L(θ + ε_i, k_i) − L(θ − ε_i, k_i)), ε_i ~ N(0, σ² I).

    Both members of a pair share the run key k_i (same initial state, data and step noise).
    Unbiased for ∇_θ E_{ε, key}[L_T(θ + ε, key)], the gradient of the Gaussian-smoothed
    expected meta-loss (Stein's lemma), whatever the dynamics; its variance stays bounded by
    the loss's spread, not by the Jacobian products.

    Args:
      system: any `chaosgrad.System`.
      pairs: antithetic pairs N per estimate (sharded over devices).
      sigma: perturbation scale σ.
      horizon: T (0: the system's horizon).
      shard: shard the pairs over the local devices.
    """
    pairs = check_positive_int(pairs, "pairs")
    sigma = check_positive_float(sigma, "sigma")
    horizon = check_positive_int(horizon or system.horizon, "horizon")
    sharding = population_sharding(pairs, shard)

    def init(key, theta):
        return ()

    def member_loss(th, k):
        val, losses = full_unroll_loss(system, th, k, horizon)
        return val, jnp.sum(~jnp.isfinite(losses))

    # One vmap over pairs × members (θ ± ε share the pair's run key): a single batched scan.
    vloss = jax.vmap(jax.vmap(member_loss, in_axes=(0, None)), in_axes=(0, 0))

    def estimate(est_state, theta, key):
        k_eps, k_runs = jax.random.split(key)
        eps = pair_perturbations(k_eps, theta, pairs, sigma, sharding)
        keys = shard_population(jax.random.split(k_runs, pairs), sharding)
        vals, bad = vloss(perturbed_thetas(theta, eps, 2), keys)
        lp, lm = vals[:, 0], vals[:, 1]
        diff = (lp - lm) / (2 * pairs * sigma**2)
        grad = jax.tree_util.tree_map(
            lambda e: jnp.tensordot(diff.astype(e.dtype), e, axes=1), eps)
        info = finish_info(grad, loss=jnp.mean(vals),
                           steps=jnp.asarray(2 * pairs * horizon),
                           nonfinite_losses=jnp.sum(bad).astype(jnp.int32))
        return grad, est_state, info

    return Estimator(init, estimate, "es", {"pairs": pairs, "sigma": sigma, "horizon": horizon})


def _truncated(system: System, name: str, accumulate: bool, pairs: int, sigma: float,
               window: int, horizon: int, schedule: str, min_length: int, max_length: int,
               stagger: bool, antithetic: bool, shard: bool) -> Estimator:
    pairs = check_positive_int(pairs, "pairs")
    sigma = check_positive_float(sigma, "sigma")
    window = check_positive_int(window, "window")
    sched = make_schedule(schedule, horizon or system.horizon, min_length, max_length)
    members = 2 if antithetic else 1
    sharding = population_sharding(pairs, shard)

    def init(key, theta):
        theta = resolve_theta(system, theta)
        return init_population(system, sched, theta, key, pairs=pairs, members=members,
                               stagger=bool(stagger),
                               burn_in_sigma=sigma if accumulate else None, sharding=sharding)

    def one(th, state, t, length, run, pk):
        return run_window(system, sched, window, th, state, t, length, run, pk)

    vone = jax.vmap(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None)), in_axes=(0, 0, 0, 0, 0, 0))

    def estimate(est_state: TruncatedState, theta, key):
        p = est_state.particles
        eps = pair_perturbations(key, theta, pairs, sigma, sharding)
        thetas = perturbed_thetas(theta, eps, members)
        carry, win = vone(thetas, p.state, p.t, p.length, p.run, est_state.pair_keys)
        # s_m ε for every member: the perturbation that drove this window.
        signed = perturbed_thetas(jax.tree_util.tree_map(jnp.zeros_like, theta), eps, members)
        loss_old = win.loss(~win.fresh)  # steps of the run that was going at the window start
        loss_new = win.loss(win.fresh)   # steps of runs begun inside this window
        reset = win.resets > 0
        denom = pairs * members * sigma**2

        def bcast(v, x):
            return v.reshape(v.shape + (1,) * (x.ndim - 2)).astype(x.dtype)

        if accumulate:
            # ξ covers every perturbation the current run has seen; steps after a reset
            # inside the window were driven by the current ε alone.
            acc = jax.tree_util.tree_map(jnp.add, p.xi, signed)
            grad = jax.tree_util.tree_map(
                lambda a, e: jnp.sum(bcast(loss_old, a) * a + bcast(loss_new, e) * e,
                                     axis=(0, 1)) / denom, acc, signed)
            xi = jax.tree_util.tree_map(
                lambda a, e: jnp.where(bcast(reset, a) > 0, e, a), acc, signed)
        else:
            total = loss_old + loss_new
            grad = jax.tree_util.tree_map(
                lambda e: jnp.sum(bcast(total, e) * e, axis=(0, 1)) / denom, signed)
            xi = ()
        new = shard_population(Particles(*carry, xi=xi), sharding)
        info = finish_info(
            grad, loss=jnp.mean(loss_old + loss_new),
            steps=jnp.asarray(pairs * members * window),
            nonfinite_losses=jnp.sum(~jnp.isfinite(win.losses)).astype(jnp.int32),
            nonfinite_states=jnp.sum(~win.finite_state).astype(jnp.int32),
            resets=jnp.sum(win.resets).astype(jnp.int32))
        return grad, TruncatedState(new, est_state.pair_keys, est_state.count + 1), info

    return Estimator(init, estimate, name, {
        "pairs": pairs, "sigma": sigma, "window": window, "schedule": sched.kind,
        "min_length": sched.min_length, "max_length": sched.max_length,
        "stagger": bool(stagger), "antithetic": bool(antithetic)})


def truncated_es(system: System, pairs: int = 8, sigma: float = 0.01, window: int = 10,
                 horizon: int = 0, schedule: str = "constant", min_length: int = 0,
                 max_length: int = 0, stagger: bool = True, antithetic: bool = True,
                 shard: bool = True) -> Estimator:
    """Truncated ES: each estimate perturbs θ by ±ε_i for one window of K steps of a
    persistent particle pair and weights the window loss by that ε alone:
    ĝ = (1 / (2 N σ²)) Σ_i ε_i (L_i⁺ − L_i⁻).

    Biased like truncated backprop: it ignores how earlier windows' perturbations (which the
    particle's state carries) shape this window's loss. It is unbiased only for the gradient
    of the smoothed window loss with the window's starting state held fixed.

    Args: as `pes`.
    """
    return _truncated(system, "tes", False, pairs, sigma, window, horizon, schedule,
                      min_length, max_length, stagger, antithetic, shard)


def pes(system: System, pairs: int = 8, sigma: float = 0.01, window: int = 10,
        horizon: int = 0, schedule: str = "constant", min_length: int = 0,
        max_length: int = 0, stagger: bool = True, antithetic: bool = True,
        shard: bool = True) -> Estimator:
    """Persistent ES (PES): like truncated ES, but each particle keeps ξ, the sum of every
    perturbation applied since its inner run began, and weights its window loss by ξ:
    ĝ = (1 / (M N σ²)) Σ_{i,m} (ξ_{i,m} L_{i,m}^{old} + s_m ε_i L_{i,m}^{new}),
    where L^{old} is the window loss of steps still in the run that was going at the window
    start, and L^{new} that of steps in runs begun inside the window (credited to the
    current ε only, since ξ resets with the run). M = 2 members with signs s = ±1 share
    ε_i and the run keys (antithetic); M = 1 without. (Earlier perturbations are
    independent of a run begun after them, so dropping them at a reset removes variance,
    not bias.)

    Unbiased, at a θ held fixed across the truncations, for the gradient of the Gaussian-
    smoothed meta-loss in which each window is perturbed independently — for a constant
    schedule with staggered particles, ∇_θ E[L_T(θ + ε…)], the full T-step meta-loss
    smoothed with σ; with log-uniform lengths, the run-length-weighted average of the runs'
    meta-losses. (While θ moves during training the unbiasedness is approximate, as in the
    paper.) Its variance grows with the number of windows since the last reset.

    Args:
      system: any `chaosgrad.System`.
      pairs: N, perturbation groups (sharded over devices).
      sigma: σ, the perturbation scale.
      window: K, steps per estimate per particle.
      horizon: inner-run length T (0: the system's horizon).
      schedule, min_length, max_length: inner-run lengths (see `make_schedule`).
      stagger: start particles at uniform random steps of their first run, burnt in with a
        perturbation ε₀ that ξ records, so estimates are unbiased from the first one.
      antithetic: particles in ± pairs sharing ε and keys.
      shard: shard the pairs over the local devices.
    """
    return _truncated(system, "pes", True, pairs, sigma, window, horizon, schedule,
                      min_length, max_length, stagger, antithetic, shard)

