"""Persistent populations of inner runs (particles) for the truncated estimators, and the
inner-run length schedules (constant, log-uniform) that decide when a particle resets.

A population has ``pairs`` groups of ``members`` particles (2 for antithetic pairs, else 1);
members of a group share their run keys (same data and step noise) and their reset times.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from jax import lax

from chaosgrad.checks import check_positive_int
from chaosgrad.errors import InputError
from chaosgrad.system import (
    System,
    cache_by_functions,
    done_of,
    loss_of,
    split_run_key,
    step_key,
)
from chaosgrad.unroll import all_finite, loss_weights, weighted_sum

PyTree = Any
_LENGTH_TAG = 0x4C454E  # folds a run key into the key of its run length


class LengthBounds(NamedTuple):
    """A schedule's bounds as arrays: int32 ``min_length`` and ``max_length``, and the
    float32 ``log_lo`` = log(min_length) and ``log_span`` = log(max_length + 1) −
    log(min_length) that the log-uniform draw uses.

    The estimator state carries them packed in one int32[4] array (`pack`; the floats by
    their bits), so that one compiled ``estimate`` serves every horizon at the cost of one
    more input and output, not four (each costs microseconds per call on small problems)."""

    min_length: jax.Array
    max_length: jax.Array
    log_lo: jax.Array
    log_span: jax.Array

    def pack(self) -> jax.Array:
        """The bounds as one int32[4] array (exact: the floats travel as their bits)."""
        bits = lax.bitcast_convert_type(jnp.stack([self.log_lo, self.log_span]), jnp.int32)
        return jnp.concatenate([jnp.stack([self.min_length, self.max_length]), bits])

    @staticmethod
    def unpack(packed: jax.Array) -> LengthBounds:
        """The inverse of `pack`."""
        logs = lax.bitcast_convert_type(packed[2:], jnp.float32)
        return LengthBounds(packed[0], packed[1], logs[0], logs[1])


class Schedule(NamedTuple):
    """How long each inner run lasts before its particle resets.

    Attributes:
      kind: "constant" (every run lasts ``max_length`` steps) or "loguniform" (each run's
        length is drawn log-uniformly from [min_length, max_length], from the run's key).
      min_length, max_length: bounds on the length (equal for "constant").
    """

    kind: str
    min_length: int
    max_length: int

    def bounds(self) -> jax.Array:
        """The bounds packed as one int32[4] array (`LengthBounds.pack`), for a program that
        serves every horizon."""
        lo, hi = math.log(self.min_length), math.log(self.max_length + 1)
        return LengthBounds(
            jnp.asarray(self.min_length, jnp.int32),
            jnp.asarray(self.max_length, jnp.int32),
            jnp.asarray(lo, jnp.float32),
            jnp.asarray(hi - lo, jnp.float32),
        ).pack()

    def sample(self, run_key: jax.Array) -> jax.Array:
        """The length of the inner run with key ``run_key`` (an int32 scalar)."""
        return TracedSchedule(self.kind, self.bounds()).sample(run_key)


class TracedSchedule(NamedTuple):
    """A `Schedule` whose bounds are a (possibly traced) packed array (`LengthBounds.pack`):
    draws exactly the lengths the `Schedule` with the same bounds draws."""

    kind: str
    bounds: jax.Array

    def sample(self, run_key: jax.Array) -> jax.Array:
        """The length of the inner run with key ``run_key`` (an int32 scalar)."""
        b = LengthBounds.unpack(self.bounds)
        if self.kind == "constant":
            return jnp.asarray(b.max_length, jnp.int32)
        u = jax.random.uniform(jax.random.fold_in(run_key, _LENGTH_TAG), (), jnp.float32)
        n = jnp.floor(jnp.exp(b.log_lo + u * b.log_span)).astype(jnp.int32)
        return jnp.clip(n, b.min_length, b.max_length)


SCHEDULES = ("constant", "loguniform")


def make_schedule(kind: str, horizon: int, min_length: int = 0, max_length: int = 0) -> Schedule:
    """A run-length schedule. ``constant``: every run lasts ``horizon`` steps. ``loguniform``:
    lengths log-uniform in [min_length, max_length] (defaults: horizon // 10 and horizon)."""
    if kind not in SCHEDULES:
        raise InputError(f"schedule {kind!r} is not accepted: use one of {SCHEDULES}")
    horizon = check_positive_int(horizon, "horizon")
    if kind == "constant":
        return Schedule("constant", horizon, horizon)
    hi = int(max_length) or horizon
    lo = int(min_length) or max(1, hi // 10)
    if not 1 <= lo <= hi:
        raise InputError(
            f"loguniform schedule needs 1 <= min_length <= max_length, got {lo} and {hi}"
        )
    return Schedule("loguniform", lo, hi)


class Particles(NamedTuple):
    """The inner runs of a population; every field has leading axes (pairs, members).

    Attributes:
      state: the inner states (a system state pytree).
      t: the index of the next step inside the current inner run.
      length: the length of the current inner run.
      run: how many inner runs this particle has finished (its run key is
        ``fold_in(pair_key, run)``, so members of a pair share data and step noise).
      xi: PES's accumulated perturbation (θ-shaped) since the last reset; ``()`` otherwise.
    """

    state: PyTree
    t: jax.Array
    length: jax.Array
    run: jax.Array
    xi: PyTree


class Window(NamedTuple):
    """What one member's window of K steps produced (per-step arrays of shape (K,)).

    Attributes:
      losses: the per-step losses ℓ.
      weights: each step's weight ŵ in the window loss Σ ŵ ℓ (see `run_window`).
      fresh: True for steps after the member's first reset inside this window.
      finite_state: whether the phase after the step was finite.
      resets: how many inner runs ended inside the window.
    """

    losses: jax.Array
    weights: jax.Array
    fresh: jax.Array
    finite_state: jax.Array
    resets: jax.Array

    def loss(self, mask=None) -> jax.Array:
        """The window loss Σ ŵ ℓ (restricted to ``mask`` when given)."""
        w = self.weights if mask is None else jnp.where(mask, self.weights, 0)
        return weighted_sum(w, self.losses)


def first_particle_run(
    system: System,
    schedule: Schedule | TracedSchedule,
    theta: PyTree,
    pair_key: jax.Array,
    offset: jax.Array | None,
):
    """The first inner run of a particle, advanced ``offset`` steps (a burn-in) with θ.

    Returns (state, t, length, run). ``offset`` None means no burn-in (t = 0).
    """
    run_key = jax.random.fold_in(pair_key, 0)
    length = schedule.sample(run_key)
    k_init, k_steps = split_run_key(run_key)
    state = system.init(k_init, theta)
    if offset is None:
        return state, jnp.zeros((), jnp.int32), length, jnp.zeros((), jnp.int32)

    def body(i, s):
        new, _ = system.step(s, theta, step_key(k_steps, i))
        return new

    # A loop with a traced trip count compiles once for every offset and every horizon.
    state = lax.fori_loop(0, offset.astype(jnp.int32), body, state)
    return state, offset.astype(jnp.int32), length, jnp.zeros((), jnp.int32)


def _reports_done(system: System, theta: PyTree, state: PyTree) -> bool:
    """Whether the system's step returns a ``done`` flag (decided from shapes alone)."""
    key = jax.random.PRNGKey(0)
    out = jax.eval_shape(lambda s, th: system.step(s, th, key)[1], state, theta)
    return done_of(out) is not None


def run_window(
    system: System,
    schedule: Schedule | TracedSchedule,
    window: int,
    theta: PyTree,
    state: PyTree,
    t: jax.Array,
    length: jax.Array,
    run: jax.Array,
    pair_key: jax.Array,
    theta_next: PyTree = None,
    *,
    one_reset: bool | None = None,
):
    """Run one particle for ``window`` steps with parameters ``theta``, resetting it when its
    inner run reaches its length (or the step reports ``done``).

    ``theta_next`` (noise-reuse ES): the parameters of runs begun inside the window, used
    for their ``init`` and every one of their steps, so that each inner run sees one
    perturbation from its first step to its last. None: ``theta`` throughout.

    A reset draws the next run key ``fold_in(pair_key, run + 1)``, its length from the
    schedule and its initial state ``system.init(k_init, theta)`` with the *current* θ (so
    a perturbed particle's new run depends on the current perturbation only).

    Step weights: a step at index τ of a run of length T gets ŵ = T·w_τ(T)/K, where w_τ(T)
    is the system's meta-loss weight (1/T for "mean", 1 for "sum", [τ = T−1] for "last") and
    K = ``window``. For "mean" the window loss Σ ŵ ℓ is the mean of the window's per-step
    losses. When the particles' positions are uniform over the run (staggered starts), the
    expected window loss equals the T-step meta-loss, since each step of the run falls in a
    window with probability K/T (for K ≤ T).

    ``one_reset``: whether no run can end twice inside a window (K ≤ the shortest run),
    decided by the caller when the schedule's bounds are traced (None: from ``schedule``).

    Returns ((state, t, length, run), Window).
    """
    if one_reset is None:
        one_reset = window <= schedule.min_length
    # When no run can end twice inside a window (K ≤ the shortest run, no ``done``), where
    # the one reset falls is known before the window runs: the scan then carries the state
    # alone, and weights, step indices and freshness are computed once, vectorised,
    # afterwards (per-step bookkeeping dominated small populations: one window of K = 10
    # steps for 16 particles of a 32-unit RNN took 0.27 ms step by step and 0.16 ms this
    # way, with the same losses; CPU, 2 cores, 2026-12-07).
    if one_reset and not _reports_done(system, theta, state):
        return _run_window_one_reset(
            system, schedule, window, theta, state, t, length, run, pair_key, theta_next
        )
    return _run_window_steps(
        system, schedule, window, theta, state, t, length, run, pair_key, theta_next
    )


def _run_window_steps(
    system: System,
    schedule: Schedule,
    window: int,
    theta: PyTree,
    state: PyTree,
    t: jax.Array,
    length: jax.Array,
    run: jax.Array,
    pair_key: jax.Array,
    theta_next: PyTree = None,
):
    """`run_window` for any schedule: resets decided step by step (any number per window)."""
    kind = system.meta_loss
    th_new = theta if theta_next is None else theta_next

    def body(carry, _):
        s, t, n, r, fresh = carry
        _, k_steps = split_run_key(jax.random.fold_in(pair_key, r))
        th = theta if theta_next is None else otu.tree_where(fresh, theta_next, theta)
        s2, out = system.step(s, th, step_key(k_steps, t))
        loss = jnp.asarray(loss_of(out))
        w = (loss_weights(kind, t, n) * n / window).astype(loss.dtype)
        finite = all_finite(system.get_phase(s2))
        t2 = t + 1
        end = t2 >= n
        done = done_of(out)
        if done is not None:
            end = end | jnp.asarray(done, bool)
        r2 = r + end.astype(jnp.int32)
        new_key = jax.random.fold_in(pair_key, r2)
        s_new, n_new = system.init(split_run_key(new_key)[0], th_new), schedule.sample(new_key)
        s3 = otu.tree_where(end, s_new, s2)
        t3 = jnp.where(end, 0, t2).astype(jnp.int32)
        n3 = jnp.where(end, n_new, n)
        return (s3, t3, n3, r2, fresh | end), (loss, w, fresh, finite)

    carry0 = (state, t, length, run, jnp.zeros((), bool))
    (state, t2, n2, r2, _), (losses, w, fresh, finite) = lax.scan(body, carry0, None, length=window)
    return (state, t2, n2, r2), Window(losses, w, fresh, finite, r2 - run)


def _run_window_one_reset(
    system: System,
    schedule: Schedule,
    window: int,
    theta: PyTree,
    state: PyTree,
    t: jax.Array,
    length: jax.Array,
    run: jax.Array,
    pair_key: jax.Array,
    theta_next: PyTree = None,
):
    """`run_window` when at most one run can end inside the window, with the same results
    step for step: the current run has ``left = length − t`` steps left; steps i < left
    belong to it, the rest to the next run (key ``fold_in(pair_key, run + 1)``), which
    starts from ``init`` with the current θ."""
    kind = system.meta_loss
    next_key = jax.random.fold_in(pair_key, run + 1)
    s_next = system.init(split_run_key(next_key)[0], theta if theta_next is None else theta_next)
    n_next = schedule.sample(next_key)
    k_old = split_run_key(jax.random.fold_in(pair_key, run))[1]
    k_new = split_run_key(next_key)[1]
    left = length - t

    def body(s, i):
        key = jnp.where(i < left, step_key(k_old, t + i), step_key(k_new, i - left))
        th = theta if theta_next is None else otu.tree_where(i < left, theta, theta_next)
        s2, out = system.step(s, th, key)
        finite = all_finite(system.get_phase(s2))  # the step's own result, before a reset
        return otu.tree_where(i == left - 1, s_next, s2), (jnp.asarray(loss_of(out)), finite)

    i = jnp.arange(window)
    state, (losses, finite) = lax.scan(body, state, i)
    old = i < left
    tk = jnp.where(old, t + i, i - left)
    nk = jnp.where(old, length, n_next)
    w = (loss_weights(kind, tk, nk) * nk / window).astype(losses.dtype)
    reset = left <= window
    t2 = jnp.where(reset, window - left, t + window).astype(jnp.int32)
    n2 = jnp.where(reset, n_next, length)
    r2 = run + reset.astype(jnp.int32)
    return (state, t2, n2, r2), Window(losses, w, ~old, finite, r2 - run)


class TruncatedState(NamedTuple):
    """The persistent state of a truncated estimator.

    Attributes:
      particles: the population (`Particles`, leading axes (pairs, members)).
      pair_keys: one base key per pair, shape (pairs, 2); run r of a pair has key
        ``fold_in(pair_key, r)``.
      count: how many estimates have been made.
      lengths: the schedule's bounds (`LengthBounds.pack`), traced, so that one compiled
        ``estimate`` serves every horizon.
    """

    particles: Particles
    pair_keys: jax.Array
    count: jax.Array
    lengths: jax.Array


def member_signs(members: int, dtype=jnp.float32) -> jax.Array:
    """The perturbation sign of each member: (+1, −1) for antithetic pairs, (+1,) alone."""
    return jnp.asarray([1.0, -1.0][:members], dtype)


def perturbed_thetas(theta: PyTree, eps: PyTree, members: int) -> PyTree:
    """θ + s_m ε for every pair and member: leaves of shape (pairs, members, *θ.shape),
    from ``eps`` with leaves (pairs, *θ.shape)."""

    def one(th, e):
        s = member_signs(members, e.dtype).reshape((1, members) + (1,) * th.ndim)
        return th[None, None] + s * e[:, None]

    return jax.tree_util.tree_map(one, theta, eps)


def pair_perturbations(key: jax.Array, theta: PyTree, pairs: int, sigma: float, sharding=None):
    """ε_i ~ N(0, σ² I) for i < pairs, θ-shaped leaves with a leading pair axis.

    One normal draw per leaf of shape (pairs, *leaf.shape), from the key's split per leaf
    (`optax.tree_utils.tree_split_key_like`; the key itself for a one-leaf θ). On CPU every
    threefry draw is a loop of its own, so a per-pair key split and draw cost more loops
    than this one; measured with jax 0.10.2 (CPU, 2 cores, 2026-12-07) the two take the
    same time within 20% (8 or 64 pairs of 32 × 32 or 256 × 256 leaves: 0.2 to 6 ms
    each). With JAX's partitionable threefry (the default) the values do not depend on how
    the pairs are sharded.
    """
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    keys = (
        [key]
        if len(leaves) == 1
        else jax.tree_util.tree_leaves(otu.tree_split_key_like(key, theta))
    )
    eps = [
        sigma * jax.random.normal(k, (pairs,) + jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=True)
    ]
    from chaosgrad.estimators.base import shard_population

    return shard_population(jax.tree_util.tree_unflatten(treedef, eps), sharding)


def init_population(
    system: System,
    schedule: Schedule,
    theta: PyTree,
    key: jax.Array,
    *,
    pairs: int,
    members: int,
    stagger: bool,
    burn_in_sigma: float | None,
    sharding=None,
) -> TruncatedState:
    """A fresh population: ``pairs`` × ``members`` particles, each at the start of its first
    inner run, or — with ``stagger`` — advanced a uniform random number of steps into it, so
    that particles do not reset together and their positions are uniform over the run.

    With ``burn_in_sigma`` (PES), each pair draws ε₀ ~ N(0, σ²) and member m burns in (and
    initialises) with θ + s_m ε₀ and starts with ξ = s_m ε₀: the population is then exactly
    what PES at this θ would have produced, so PES is unbiased from its first estimate.
    Otherwise particles burn in with θ and carry no ξ.
    """
    fn = _jit_init_population(
        system,
        schedule.kind,
        int(pairs),
        int(members),
        bool(stagger),
        None if burn_in_sigma is None else float(burn_in_sigma),
        sharding,
    )
    return fn(theta, key, schedule.bounds())


@cache_by_functions(maxsize=32)
def _jit_init_population(
    system: System,
    kind: str,
    pairs: int,
    members: int,
    stagger: bool,
    burn_in_sigma: float | None,
    sharding,
):
    """`init_population` compiled once per (system's functions, schedule kind, settings),
    for every horizon (the schedule's bounds are arguments): run eagerly, its burn-in was
    traced and compiled anew on every call (a fresh closure each time), which dominated the
    first estimate of every truncated estimator on costly systems."""
    from chaosgrad.estimators.base import shard_population

    def build(theta, key, bounds):
        schedule = TracedSchedule(kind, bounds)
        k_pairs, k_offset, k_eps = jax.random.split(key, 3)
        pair_keys = jax.random.split(k_pairs, pairs)
        lengths = jax.vmap(lambda k: schedule.sample(jax.random.fold_in(k, 0)))(pair_keys)
        if stagger:
            offsets = jax.random.randint(k_offset, (pairs,), 0, jnp.iinfo(jnp.int32).max) % lengths
        else:
            offsets = None
        if burn_in_sigma is not None:
            eps = pair_perturbations(k_eps, theta, pairs, burn_in_sigma)
            xi = perturbed_thetas(jax.tree_util.tree_map(jnp.zeros_like, theta), eps, members)
        else:
            eps = jax.tree_util.tree_map(
                lambda x: jnp.zeros((pairs,) + jnp.shape(x), jnp.result_type(x)), theta
            )
            xi = ()
        thetas = perturbed_thetas(theta, eps, members)

        def per_pair(th, pk, off):
            return jax.vmap(lambda t_: first_particle_run(system, schedule, t_, pk, off))(th)

        state, t, length, run = jax.vmap(per_pair, in_axes=(0, 0, 0 if stagger else None))(
            thetas, pair_keys, offsets
        )
        init = TruncatedState(
            Particles(state, t, length, run, xi), pair_keys, jnp.zeros((), jnp.int32), bounds
        )
        # Placed by a sharding constraint, like the state `estimate` returns: then the first
        # and every later estimate see the same input shardings and compile once.
        return shard_population(init, sharding)

    return jax.jit(build)
