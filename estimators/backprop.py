"""Reverse-mode estimators: full backprop through whole unrolls (rematerialised), and
truncated backprop through windows of K steps of a persistent, staggered population.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from chaosgrad.estimators.base import (
    Estimator,
    check_positive_int,
    check_sigma,
    finish_info,
    population_sharding,
    shard_population,
    tree_mean0,
)
from chaosgrad.estimators.particles import (
    Particles,
    TracedSchedule,
    TruncatedState,
    init_population,
    make_schedule,
    pair_perturbations,
    perturbed_thetas,
    run_window,
)
from chaosgrad.estimators.unrolled import (
    Horizon,
    capacity_of,
    chunk_of,
    horizon_init,
    slots_of,
    steps_of,
    unroll_value_and_grad,
)

from chaosgrad.system import System, cache_by_functions, resolve_theta


def backprop(
    system: System, samples: int = 8, horizon: int = 0, remat_chunk: int = 0, shard: bool = True
) -> Estimator:
    """Full backprop: the exact gradient of the T-step meta-loss of ``samples`` independent
    runs (fresh run keys from the estimate's key), averaged.

    Unbiased for ∇_θ E_key[L_T(θ, key)] (the gradient of the expected T-step meta-loss) —
    when that gradient exists; in chaotic systems its variance grows like exp(2 λ₁ T).

    One compiled ``estimate`` serves every horizon up to 1024 (then one per doubling): T
    is in the estimator's state (`Horizon`), and the reverse pass runs chunk by chunk
    inside the program (`chaosgrad.estimators.unrolled`).

    Args:
      system: any `chaosgrad.System`.
      samples: independent runs per estimate (the population; sharded over devices).
      horizon: T (0: the system's horizon).
      remat_chunk: the reverse pass keeps the state every this many steps and recomputes
        the steps between (0: 8, more above T = 1024); memory is about
        max(1024, T) / chunk states plus one chunk's activations.
      shard: shard the samples over the local devices.
    """
    samples = check_positive_int(samples, "samples")
    horizon = check_positive_int(horizon or system.horizon, "horizon")
    capacity = capacity_of(horizon)
    chunk = chunk_of(remat_chunk, capacity)
    estimate = _backprop_estimate(
        system, samples, chunk, slots_of(capacity, chunk), population_sharding(samples, shard)
    )

    init = horizon_init(horizon)
    return Estimator(
        init,
        estimate,
        "backprop",
        {"samples": samples, "horizon": horizon, "remat_chunk": chunk},
        reverse_mode=True,
        steps=samples * horizon,
    )


@cache_by_functions(maxsize=32)
def _backprop_estimate(system: System, samples: int, chunk: int, slots: int, sharding):
    """Backprop's ``estimate``, one function (so one compiled program) for every horizon."""

    def per_sample(theta, k, steps):
        return unroll_value_and_grad(system, theta, k, steps, chunk, slots)

    vg = jax.vmap(per_sample, in_axes=(None, 0, None))

    def estimate(est_state: Horizon, theta, key):
        steps = steps_of(est_state)
        keys = shard_population(jax.random.split(key, samples), sharding)
        (vals, bad), grads = vg(theta, keys, steps)
        grad = tree_mean0(grads)
        info = finish_info(
            grad,
            loss=jnp.mean(vals),
            steps=samples * steps,
            nonfinite_losses=jnp.sum(bad).astype(jnp.int32),
        )
        return grad, est_state, info

    return estimate


def truncated_backprop(
    system: System,
    particles: int = 8,
    window: int = 10,
    horizon: int = 0,
    schedule: str = "constant",
    min_length: int = 0,
    max_length: int = 0,
    stagger: bool = True,
    shard: bool = True,
) -> Estimator:
    """Truncated backprop (TBPTT): each estimate advances every particle K = ``window``
    steps and differentiates its window loss with the state at the window's start held
    fixed (a stop-gradient every K steps); particles persist across estimates.

    Biased: it drops every path through the state that crosses a window boundary, so it is
    unbiased only for dynamics with no memory longer than K (the bias can flip the sign —
    the influence-balancing task). With a constant schedule and staggered particles its
    expected *loss* is the T-step meta-loss; its gradient is the truncated one.

    Args:
      system: any `chaosgrad.System`.
      particles: population size (sharded over devices).
      window: K, steps per estimate per particle.
      horizon: inner-run length T for the constant schedule, and the default max_length
        (0: the system's horizon).
      schedule: "constant" or "loguniform" inner-run lengths (see `make_schedule`).
      min_length: lower bound of the log-uniform lengths.
      max_length: upper bound of the log-uniform lengths.
      stagger: start particles at uniform random steps of their first run (burn-in with θ).
      shard: shard the particles over the local devices.
    """
    n = check_positive_int(particles, "particles")
    window = check_positive_int(window, "window")
    sched = make_schedule(schedule, horizon or system.horizon, min_length, max_length)
    sharding = population_sharding(n, shard)
    estimate = _tbptt_estimate(system, n, window, sched.kind, window <= sched.min_length, sharding)

    def init(key, theta):
        theta = resolve_theta(system, theta)
        return init_population(
            system,
            sched,
            theta,
            key,
            pairs=n,
            members=1,
            stagger=bool(stagger),
            burn_in_sigma=None,
            sharding=sharding,
        )

    return Estimator(
        init,
        estimate,
        "tbptt",
        {
            "particles": n,
            "window": window,
            "schedule": sched.kind,
            "min_length": sched.min_length,
            "max_length": sched.max_length,
            "stagger": bool(stagger),
        },
        target="truncated",
        correlated=True,
        windowed=True,
        reverse_mode=True,
        steps=n * window,
    )


@cache_by_functions(maxsize=32)
def _tbptt_estimate(system: System, n: int, window: int, kind: str, one_reset: bool, sharding):
    """Truncated backprop's ``estimate``, one function for every horizon (the schedule's
    bounds are in the state)."""

    def one(theta, bounds, state, t, length, run, pk):
        carry, win = run_window(
            system,
            TracedSchedule(kind, bounds),
            window,
            theta,
            state,
            t,
            length,
            run,
            pk,
            one_reset=one_reset,
        )
        return win.loss(), (carry, win)

    vone = jax.vmap(
        jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, None)), in_axes=(None, None, 0, 0, 0, 0, 0)
    )

    def total(theta, bounds, p: Particles, pair_keys):
        vals, aux = vone(theta, bounds, p.state, p.t, p.length, p.run, pair_keys)
        return jnp.mean(vals), (vals, aux)

    def estimate(est_state: TruncatedState, theta, key):
        p = est_state.particles
        (_, (vals, (carry, win))), grad = jax.value_and_grad(total, has_aux=True)(
            theta, est_state.lengths, p, est_state.pair_keys
        )
        # carry: the fields before xi (mypy cannot count a starred tuple)
        new = shard_population(Particles(*carry, xi=()), sharding)  # type: ignore[misc]
        info = finish_info(
            grad,
            loss=jnp.mean(vals),
            steps=jnp.asarray(n * window),
            nonfinite_losses=jnp.sum(~jnp.isfinite(win.losses)).astype(jnp.int32),
            nonfinite_states=jnp.sum(~win.finite_state).astype(jnp.int32),
            resets=jnp.sum(win.resets).astype(jnp.int32),
        )
        return grad, est_state._replace(particles=new, count=est_state.count + 1), info

    return estimate


class Antithetic(NamedTuple):
    """The shared part of the estimators that differentiate ± pairs of whole unrolls
    (`reparam`, `chaosgrad.estimators.combined`): checked settings and ``run(theta, key,
    steps) -> (eps, (meta-losses, non-finite loss counts), gradients)``, one batched
    reverse-mode unroll of every pair's ± members (each pair's members share its run key),
    the same function for every horizon."""

    pairs: int
    sigma: float
    horizon: int
    chunk: int
    run: Callable


def antithetic(system: System, pairs, sigma, horizon, remat_chunk, shard) -> Antithetic:
    """`Antithetic` for ``system``: settings checked (σ² must not underflow), the reverse
    pass in chunks of ``remat_chunk`` steps (0: the default, see `backprop`), the pairs
    sharded over the devices."""
    pairs = check_positive_int(pairs, "pairs")
    sigma = check_sigma(sigma, system)
    horizon = check_positive_int(horizon or system.horizon, "horizon")
    capacity = capacity_of(horizon)
    chunk = chunk_of(remat_chunk, capacity)
    run = _antithetic_run(
        system, pairs, sigma, chunk, slots_of(capacity, chunk), population_sharding(pairs, shard)
    )
    return Antithetic(pairs, sigma, horizon, chunk, run)


@cache_by_functions(maxsize=32)
def _antithetic_run(system: System, pairs: int, sigma: float, chunk: int, slots: int, sharding):
    """`Antithetic.run`, one function for every horizon."""

    def member(th, k, steps):
        return unroll_value_and_grad(system, th, k, steps, chunk, slots)

    vmember = jax.vmap(jax.vmap(member, in_axes=(0, None, None)), in_axes=(0, 0, None))

    def run(theta, key, steps):
        k_eps, k_runs = jax.random.split(key)
        eps = pair_perturbations(k_eps, theta, pairs, sigma, sharding)
        keys = shard_population(jax.random.split(k_runs, pairs), sharding)
        return (eps, *vmember(perturbed_thetas(theta, eps, 2), keys, steps))

    return run


def reparam(
    system: System,
    pairs: int = 8,
    sigma: float = 0.01,
    horizon: int = 0,
    remat_chunk: int = 0,
    shard: bool = True,
) -> Estimator:
    """Backprop at θ ± ε: the reparameterisation gradient of the Gaussian-smoothed meta-loss,
    ĝ = (1 / 2N) Σ_i (∇L_T(θ + ε_i; k_i) + ∇L_T(θ − ε_i; k_i)), ε_i ~ N(0, σ² I), both
    members of a pair sharing the run key k_i.

    Unbiased for ∇_θ E_{key, ε}[L_T(θ + ε; key)], the target of ES, NRES and PES, wherever
    the exact gradient exists; like backprop, its variance grows like exp(2 λ₁ T) in chaotic
    systems (the smoothing does not tame the Jacobian products). The antithetic pair cancels
    the odd part of the noise's effect. One compiled ``estimate`` serves every horizon (see
    `backprop`).

    Args:
      system: any `chaosgrad.System`.
      pairs: N antithetic pairs per estimate (sharded over devices).
      sigma: σ of the perturbations.
      horizon: T (0: the system's horizon).
      remat_chunk: reverse-pass chunk (0: the default, see `backprop`).
      shard: shard the pairs over the local devices.
    """
    pair = antithetic(system, pairs, sigma, horizon, remat_chunk, shard)
    horizon = pair.horizon

    init = horizon_init(horizon)
    return Estimator(
        init,
        _reparam_estimate(pair.run, pair.pairs),
        "reparam",
        {
            "pairs": pair.pairs,
            "sigma": pair.sigma,
            "horizon": pair.horizon,
            "remat_chunk": pair.chunk,
        },
        target="smoothed",
        smoothing=pair.sigma,
        reverse_mode=True,
        steps=2 * pair.pairs * pair.horizon,
    )


@functools.lru_cache(maxsize=32)
def _reparam_estimate(run: Callable, pairs: int):
    """Reparam's ``estimate`` over a shared `Antithetic.run`: one function per run."""

    def estimate(est_state: Horizon, theta, key):
        steps = steps_of(est_state)
        _, (vals, bad), g = run(theta, key, steps)
        grad = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=(0, 1)), g)
        info = finish_info(
            grad,
            loss=jnp.mean(vals),
            steps=2 * pairs * steps,
            nonfinite_losses=jnp.sum(bad).astype(jnp.int32),
        )
        return grad, est_state, info

    return estimate
