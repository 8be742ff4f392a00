"""Black-box estimators from loss values alone: antithetic ES over whole unrolls, truncated
ES over windows of a persistent population, and PES (Vicol, Metz & Sohl-Dickstein 2021).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from chaosgrad.estimators.base import (
    Estimator,
    check_positive_int,
    check_sigma,
    finish_info,
    population_sharding,
    shard_population,
)
from chaosgrad.estimators.particles import (
    Particles,
    TracedSchedule,
    TruncatedState,
    init_population,
    make_schedule,
    member_signs,
    pair_perturbations,
    perturbed_thetas,
    run_window,
)
from chaosgrad.estimators.unrolled import Horizon, horizon_init, steps_of, unroll_value

from chaosgrad._types import PyTree
from chaosgrad.system import System, cache_by_functions, resolve_theta


def es(
    system: System, pairs: int = 8, sigma: float = 0.01, horizon: int = 0, shard: bool = True
) -> Estimator:
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
    sigma = check_sigma(sigma, system)
    horizon = check_positive_int(horizon or system.horizon, "horizon")
    estimate = _es_estimate(system, pairs, sigma, population_sharding(pairs, shard))

    init = horizon_init(horizon)
    return Estimator(
        init,
        estimate,
        "es",
        {"pairs": pairs, "sigma": sigma, "horizon": horizon},
        target="smoothed",
        smoothing=sigma,
        steps=2 * pairs * horizon,
    )


@cache_by_functions(maxsize=32)
def _es_estimate(system: System, pairs: int, sigma: float, sharding):
    """ES's ``estimate``, one function (one compiled program) for every horizon: T is in the
    state and the unroll is a loop with a traced trip count."""

    # One vmap over pairs × members (θ ± ε share the pair's run key): a single batched loop.
    vloss = jax.vmap(
        jax.vmap(lambda th, k, n: unroll_value(system, th, k, n), in_axes=(0, None, None)),
        in_axes=(0, 0, None),
    )

    def estimate(est_state: Horizon, theta, key):
        k_eps, k_runs = jax.random.split(key)
        eps = pair_perturbations(k_eps, theta, pairs, sigma, sharding)
        keys = shard_population(jax.random.split(k_runs, pairs), sharding)
        steps = steps_of(est_state)
        vals, bad = vloss(perturbed_thetas(theta, eps, 2), keys, steps)
        lp, lm = vals[:, 0], vals[:, 1]
        diff = (lp - lm) / (2 * pairs * sigma**2)
        grad = jax.tree_util.tree_map(lambda e: jnp.tensordot(diff.astype(e.dtype), e, axes=1), eps)
        info = finish_info(
            grad,
            loss=jnp.mean(vals),
            steps=2 * pairs * steps,
            nonfinite_losses=jnp.sum(bad).astype(jnp.int32),
        )
        return grad, est_state, info

    return estimate


def _contract(w: jax.Array, tree: PyTree, axes: int) -> PyTree:
    """Σ over the leading ``axes`` axes of ``w`` · leaf, as one contraction per leaf.

    A ``tensordot`` is a single matrix–vector product over the population; broadcasting
    ``w`` against θ-sized leaves and summing (``jnp.sum(w * x, axis=(0, 1))``) builds a
    θ × population temporary and reduces it slowly on XLA's CPU backend (16 members of a
    256 × 256 leaf: 8.4 ms against 0.34 ms for the tensordot; 2 cores, 2026-12-07)."""
    return jax.tree_util.tree_map(lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=axes), tree)


class WindowLosses(NamedTuple):
    """The losses of one window of a truncated ES population, shape (pairs, members).

    Attributes:
      old: loss of the steps still in the run that was going at the window's start.
      new: loss of the steps in runs begun inside the window.
      reset: whether the member's run ended inside the window.
    """

    old: jax.Array
    new: jax.Array
    reset: jax.Array


def tes_credit(eps: PyTree, signs: jax.Array, xi: PyTree, win: WindowLosses):
    """Truncated ES's credit rule: the window's whole loss goes to the perturbation that
    drove the window, Σ_{i,m} s_m ε_i (L^old_{i,m} + L^new_{i,m}); nothing persists.

    Args:
      eps: the window's perturbations ε_i, leaves (pairs, *θ.shape).
      signs: the member signs s_m, shape (members,).
      xi: unused (truncated ES keeps no ξ): ``()``.
      win: the window's losses.

    Returns:
      (Σ, unnormalised — divide by pairs·members·σ² — and the new ξ, ``()``).
    """
    del xi
    return _contract((win.old + win.new) @ signs.astype(win.old.dtype), eps, 1), ()


def pes_credit(eps: PyTree, signs: jax.Array, xi: PyTree, win: WindowLosses):
    """PES's credit rule: steps of the run that was going at the window's start are
    credited to ξ + s_m ε_i, every perturbation that run has seen; steps of runs begun
    inside the window to s_m ε_i alone:
    Σ_{i,m} (ξ_{i,m} + s_m ε_i) L^old_{i,m} + s_m ε_i L^new_{i,m}
      = Σ_{i,m} ξ_{i,m} L^old_{i,m} + Σ_i ε_i Σ_m s_m (L^old_{i,m} + L^new_{i,m}).
    The new ξ is ξ + s_m ε_i, or s_m ε_i alone for a member whose run ended in the window.

    Written as two contractions so that no (ξ + s ε) × loss array is built: the only
    θ × population array made is the new ξ, which the estimator must keep anyway.

    Args and returns: as `tes_credit`, with ``xi`` leaves (pairs, members, *θ.shape).
    """
    total, _ = tes_credit(eps, signs, (), win)
    grad = jax.tree_util.tree_map(jnp.add, _contract(win.old, xi, 2), total)

    def new_xi(x, e):
        s = signs.astype(e.dtype).reshape((1, -1) + (1,) * (e.ndim - 1))
        r = win.reset.reshape(win.reset.shape + (1,) * (e.ndim - 1))
        se = s * e[:, None]
        return jnp.where(r, se, x + se)

    return grad, jax.tree_util.tree_map(new_xi, xi, eps)


class Credit(NamedTuple):
    """How a truncated ES turns a window's losses into a gradient: ``rule`` (`tes_credit`
    or `pes_credit`) and whether it keeps ξ (then the population burns in under a
    perturbation ε₀ that ξ records, so the first estimate is already unbiased)."""

    rule: Callable
    persistent: bool
    target: str = "truncated"


TES = Credit(tes_credit, persistent=False)
PES = Credit(pes_credit, persistent=True, target="smoothed per truncation")


def _population(
    system: System,
    pairs,
    sigma,
    window,
    horizon,
    schedule,
    min_length,
    max_length,
    stagger,
    antithetic,
    shard,
    *,
    burn_in: bool,
):
    """The checked settings of a truncated ES estimator and its ``init``: a staggered
    population, burnt in under a perturbation that ξ records when ``burn_in``.
    Returns (pairs, sigma, window, schedule, members, sharding, init)."""
    pairs = check_positive_int(pairs, "pairs")
    sigma = check_sigma(sigma, system)
    window = check_positive_int(window, "window")
    sched = make_schedule(schedule, horizon or system.horizon, min_length, max_length)
    members = 2 if antithetic else 1
    sharding = population_sharding(pairs, shard)

    def init(key, theta):
        theta = resolve_theta(system, theta)
        return init_population(
            system,
            sched,
            theta,
            key,
            pairs=pairs,
            members=members,
            stagger=bool(stagger),
            burn_in_sigma=sigma if burn_in else None,
            sharding=sharding,
        )

    return pairs, sigma, window, sched, members, sharding, init


def _truncated(
    system: System,
    name: str,
    credit: Credit,
    *,
    pairs: int,
    sigma: float,
    window: int,
    horizon: int,
    schedule: str,
    min_length: int,
    max_length: int,
    stagger: bool,
    antithetic: bool,
    shard: bool,
) -> Estimator:
    """A truncated ES estimator over a persistent population, crediting losses by ``credit``."""
    pairs, sigma, window, sched, members, sharding, init = _population(
        system,
        pairs,
        sigma,
        window,
        horizon,
        schedule,
        min_length,
        max_length,
        stagger,
        antithetic,
        shard,
        burn_in=credit.persistent,
    )
    estimate = _truncated_estimate(
        system,
        credit,
        pairs,
        sigma,
        window,
        sched.kind,
        window <= sched.min_length,
        members,
        sharding,
    )
    return Estimator(
        init,
        estimate,
        name,
        {
            "pairs": pairs,
            "sigma": sigma,
            "window": window,
            "schedule": sched.kind,
            "min_length": sched.min_length,
            "max_length": sched.max_length,
            "stagger": bool(stagger),
            "antithetic": bool(antithetic),
        },
        target=credit.target,
        correlated=True,
        smoothing=sigma,
        windowed=True,
        steps=pairs * members * window,
    )


@cache_by_functions(maxsize=32)
def _truncated_estimate(
    system: System,
    credit: Credit,
    pairs: int,
    sigma: float,
    window: int,
    kind: str,
    one_reset: bool,
    members: int,
    sharding,
):
    """A truncated ES ``estimate``, one function for every horizon (the schedule's bounds
    are in the state)."""

    def one(th, bounds, state, t, length, run, pk):
        return run_window(
            system,
            TracedSchedule(kind, bounds),
            window,
            th,
            state,
            t,
            length,
            run,
            pk,
            one_reset=one_reset,
        )

    vone = jax.vmap(
        jax.vmap(one, in_axes=(0, None, 0, 0, 0, 0, None)), in_axes=(0, None, 0, 0, 0, 0, 0)
    )

    def estimate(est_state: TruncatedState, theta, key):
        p = est_state.particles
        eps = pair_perturbations(key, theta, pairs, sigma, sharding)
        carry, win = vone(
            perturbed_thetas(theta, eps, members),
            est_state.lengths,
            p.state,
            p.t,
            p.length,
            p.run,
            est_state.pair_keys,
        )
        losses = WindowLosses(
            old=win.loss(~win.fresh), new=win.loss(win.fresh), reset=win.resets > 0
        )
        total, xi = credit.rule(eps, member_signs(members), p.xi, losses)
        grad = otu.tree_scale(1.0 / (pairs * members * sigma**2), total)
        # carry: the fields before xi (mypy cannot count a starred tuple)
        new = shard_population(Particles(*carry, xi=xi), sharding)  # type: ignore[misc]
        info = finish_info(
            grad,
            loss=jnp.mean(losses.old + losses.new),
            steps=jnp.asarray(pairs * members * window),
            nonfinite_losses=jnp.sum(~jnp.isfinite(win.losses)).astype(jnp.int32),
            nonfinite_states=jnp.sum(~win.finite_state).astype(jnp.int32),
            resets=jnp.sum(win.resets).astype(jnp.int32),
        )
        return grad, est_state._replace(particles=new, count=est_state.count + 1), info

    return estimate


def truncated_es(
    system: System,
    pairs: int = 8,
    sigma: float = 0.01,
    window: int = 10,
    horizon: int = 0,
    schedule: str = "constant",
    min_length: int = 0,
    max_length: int = 0,
    stagger: bool = True,
    antithetic: bool = True,
    shard: bool = True,
) -> Estimator:
    """Truncated ES: each estimate perturbs θ by ±ε_i for one window of K steps of a
    persistent particle pair and weights the window loss by that ε alone:
    ĝ = (1 / (2 N σ²)) Σ_i ε_i (L_i⁺ − L_i⁻).

    Biased like truncated backprop: it ignores how earlier windows' perturbations (which the
    particle's state carries) shape this window's loss. It is unbiased only for the gradient
    of the smoothed window loss with the window's starting state held fixed.

    Args: as `pes`.
    """
    return _truncated(
        system,
        "tes",
        TES,
        pairs=pairs,
        sigma=sigma,
        window=window,
        horizon=horizon,
        schedule=schedule,
        min_length=min_length,
        max_length=max_length,
        stagger=stagger,
        antithetic=antithetic,
        shard=shard,
    )


def pes(
    system: System,
    pairs: int = 8,
    sigma: float = 0.01,
    window: int = 10,
    horizon: int = 0,
    schedule: str = "constant",
    min_length: int = 0,
    max_length: int = 0,
    stagger: bool = True,
    antithetic: bool = True,
    shard: bool = True,
) -> Estimator:
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
      schedule: inner-run lengths, "constant" or "loguniform" (see `make_schedule`).
      min_length: lower bound of the log-uniform lengths.
      max_length: upper bound of the log-uniform lengths.
      stagger: start particles at uniform random steps of their first run, burnt in with a
        perturbation ε₀ that ξ records, so estimates are unbiased from the first one.
      antithetic: particles in ± pairs sharing ε and keys.
      shard: shard the pairs over the local devices.
    """
    return _truncated(
        system,
        "pes",
        PES,
        pairs=pairs,
        sigma=sigma,
        window=window,
        horizon=horizon,
        schedule=schedule,
        min_length=min_length,
        max_length=max_length,
        stagger=stagger,
        antithetic=antithetic,
        shard=shard,
    )


def nres(
    system: System,
    pairs: int = 8,
    sigma: float = 0.01,
    window: int = 10,
    horizon: int = 0,
    schedule: str = "constant",
    min_length: int = 0,
    max_length: int = 0,
    stagger: bool = True,
    antithetic: bool = True,
    shard: bool = True,
) -> Estimator:
    """Noise-reuse ES (NRES; Li et al. 2023, "Noise-Reuse in Online Evolution Strategies";
    ES-Single in Vicol et al. 2023): each particle keeps one perturbation ε for its whole
    inner run and credits every window of that run to it:
    ĝ = (1 / (M N σ²)) Σ_{i,m} s_m (ε_i^{run} L_{i,m}^{old} + ε_i^{next} L_{i,m}^{new}),
    where L^{old} is the window loss of the steps of the run that was going at the window's
    start (run with θ + s_m ε^{run} since its first step) and L^{new} that of runs begun
    inside the window, which start and run with a fresh θ + s_m ε^{next} (drawn from the
    estimate's key) that the particle then keeps.

    Unbiased at a θ held fixed for the gradient of the Gaussian-smoothed T-step meta-loss
    ∇E L_T(θ + ε) (Stein's lemma applied run by run: every step of a run sees the same ε),
    the target of ES — not per truncation like PES. Its variance does not grow with the
    number of truncations since the run began (PES's does, as ξ accumulates). Staggered
    particles burn in under their first run's ε, so the first estimate is already unbiased.

    Args: as `pes`.
    """
    # ξ holds s_m ε of the particle's current run (the burn-in runs under it).
    pairs, sigma, window, sched, members, sharding, init = _population(
        system,
        pairs,
        sigma,
        window,
        horizon,
        schedule,
        min_length,
        max_length,
        stagger,
        antithetic,
        shard,
        burn_in=True,
    )

    estimate = _nres_estimate(
        system, pairs, sigma, window, sched.kind, window <= sched.min_length, members, sharding
    )
    return Estimator(
        init,
        estimate,
        "nres",
        {
            "pairs": pairs,
            "sigma": sigma,
            "window": window,
            "schedule": sched.kind,
            "min_length": sched.min_length,
            "max_length": sched.max_length,
            "stagger": bool(stagger),
            "antithetic": bool(antithetic),
        },
        target="smoothed",
        correlated=True,
        smoothing=sigma,
        windowed=True,
        steps=pairs * members * window,
    )


@cache_by_functions(maxsize=32)
def _nres_estimate(
    system: System,
    pairs: int,
    sigma: float,
    window: int,
    kind: str,
    one_reset: bool,
    members: int,
    sharding,
):
    """NRES's ``estimate``, one function for every horizon."""

    def one(th, th_next, bounds, state, t, length, run, pk):
        return run_window(
            system,
            TracedSchedule(kind, bounds),
            window,
            th,
            state,
            t,
            length,
            run,
            pk,
            th_next,
            one_reset=one_reset,
        )

    vone = jax.vmap(
        jax.vmap(one, in_axes=(0, 0, None, 0, 0, 0, 0, None)), in_axes=(0, 0, None, 0, 0, 0, 0, 0)
    )

    def estimate(est_state: TruncatedState, theta, key):
        p = est_state.particles
        eps = pair_perturbations(key, theta, pairs, sigma, sharding)
        xi_next = perturbed_thetas(jax.tree_util.tree_map(jnp.zeros_like, theta), eps, members)
        th_run = jax.tree_util.tree_map(lambda t_, x: t_[None, None] + x, theta, p.xi)
        th_next = perturbed_thetas(theta, eps, members)
        carry, win = vone(
            th_run, th_next, est_state.lengths, p.state, p.t, p.length, p.run, est_state.pair_keys
        )
        old, new = win.loss(~win.fresh), win.loss(win.fresh)
        total = jax.tree_util.tree_map(jnp.add, _contract(old, p.xi, 2), _contract(new, xi_next, 2))
        grad = otu.tree_scale(1.0 / (pairs * members * sigma**2), total)
        reset = win.resets > 0

        def keep(x, xn):
            r = reset.reshape(reset.shape + (1,) * (x.ndim - 2))
            return jnp.where(r, xn, x)

        xi = jax.tree_util.tree_map(keep, p.xi, xi_next)
        # carry: the fields before xi (mypy cannot count a starred tuple)
        new_p = shard_population(Particles(*carry, xi=xi), sharding)  # type: ignore[misc]
        info = finish_info(
            grad,
            loss=jnp.mean(old + new),
            steps=jnp.asarray(pairs * members * window),
            nonfinite_losses=jnp.sum(~jnp.isfinite(win.losses)).astype(jnp.int32),
            nonfinite_states=jnp.sum(~win.finite_state).astype(jnp.int32),
            resets=jnp.sum(win.resets).astype(jnp.int32),
        )
        return grad, est_state._replace(particles=new_p, count=est_state.count + 1), info

    return estimate
