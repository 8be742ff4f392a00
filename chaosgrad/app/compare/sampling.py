"""How a comparison samples: replicate sizes (`MIN_SAMPLES`, `PILOT`, `REFERENCE_FACTOR`),
each estimator built once per system and settings (`make_estimator`), the `_Sampler` that
draws and times replicates, sharing the jobs across the processes of a launch, the
reference's estimator and sampler, the choice of reference kind from the pilot, the
allocation of samples to the budget, and `_Jobs`, the list of what one comparison samples.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from chaosgrad import distributed, estimators
from chaosgrad._types import PyTree
from chaosgrad.errors import InputError
from chaosgrad.progress import progress_bar
from chaosgrad.system import System

MIN_SAMPLES = 8  # replicates per estimator: the sign-flip bias test needs at least 6 groups
PILOT = 4  # batches of each reference kind measured before the reference is chosen
REFERENCE_FACTOR = 10  # the reference has at least this many times an estimator's replicates


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


# compare's shared settings, handed to every estimator whose factory takes them (by name in
# its signature): a user's estimator with the same parameter names takes them too.
SHARED_SETTINGS = ("samples", "particles", "pairs", "sigma", "window", "horizon")


def _estimator_params(name: str, common: dict, extra: dict | None) -> dict:
    accepted = estimators.parameters(name)
    params = {k: common[k] for k in SHARED_SETTINGS if k in accepted}
    params.update(extra or {})
    return params


def _split_sampling(samplers_fn, n_jobs: int, allocate, progress) -> list | None:
    """Run the ``n_jobs`` samplers (the estimators, then the reference) split over the
    processes of a launch: job j is built, timed and run by process j mod P alone
    (`distributed.local_only`). Timings are shared first, so every process allocates
    the samples the same way (``allocate(steps_and_seconds) -> counts``). Returns process
    0's list of ((rows, steps, seconds), timed seconds) per job, None on the others."""
    import io as _io
    import json

    rank, count = distributed.process_index(), distributed.process_count()
    mine = {}
    with distributed.local_only():
        for j in range(n_jobs):
            if j % count == rank:
                mine[j] = samplers_fn(j)
    timing = {j: (s.steps, s.seconds) for j, s in mine.items()}
    shared = {}
    for blob in distributed.allgather_bytes(json.dumps(timing).encode()):
        shared.update({int(j): v for j, v in json.loads(blob).items()})
    counts = allocate([shared[j] for j in range(n_jobs)])
    runs = {}
    with distributed.local_only():
        for j, s in mine.items():
            runs[j] = s.run(counts[j], f"compare {s.est.name}", progress if rank == 0 else False)
    buf = _io.BytesIO()
    np.savez(
        buf,
        **{f"g{j}": g for j, (g, _, _) in runs.items()},
        meta=np.asarray(json.dumps({j: [st, sec] for j, (_, st, sec) in runs.items()})),
    )
    got: dict = {}
    for blob in distributed.allgather_bytes(buf.getvalue()):
        with np.load(_io.BytesIO(blob), allow_pickle=False) as z:
            for j, (st, sec) in json.loads(str(z["meta"])).items():
                got[int(j)] = (z[f"g{j}"], st, sec)
    if rank != 0:
        return None
    return [(got[j], shared[j][1]) for j in range(n_jobs)]


class _Sampler:
    """Independent replicates of one estimator at fixed θ: replicate r starts from a fresh
    ``init`` (key ``fold_in(key, r)``) and averages ``per_replicate`` successive estimates
    with fresh keys. The first replicate compiles and the second is timed; both are kept as
    ordinary replicates (on long unrolls each costs seconds)."""

    def __init__(self, est, theta, key, per_replicate: int = 1):
        self.est, self.theta, self.key = est, theta, key
        self.per_replicate = max(1, int(per_replicate))
        self.estimate = jax.jit(est.estimate)
        self.next = 0
        t0 = time.perf_counter()
        self.kept = [self._replicate()]
        t1 = time.perf_counter()
        self.kept.append(self._replicate())
        self.seconds = time.perf_counter() - t1
        # the first replicate's time beyond an ordinary one: tracing and compiling
        self.compile_seconds = max(t1 - t0 - self.seconds, 0.0)

    def _replicate(self) -> np.ndarray:
        k = jax.random.fold_in(self.key, self.next)
        self.next += 1
        state = self.est.init(jax.random.fold_in(k, 0), self.theta)
        total, first, steps = None, None, 0.0
        for i in range(self.per_replicate):
            g, state, info = self.estimate(state, self.theta, jax.random.fold_in(k, 1 + i))
            estimators.check_info(info, self.est.name)
            g = _flat(jax.block_until_ready(g))
            first = g if first is None else first
            total = g if total is None else total + g
            steps += float(info["steps"])
        self.steps = steps / self.per_replicate
        assert total is not None and first is not None  # per_replicate ≥ 1
        return np.stack([total / self.per_replicate, first])

    def run(self, samples: int, desc: str, progress) -> tuple[np.ndarray, float, float]:
        """``samples`` replicates (the two made while compiling and timing come first):
        an array (samples, 2, d) of each replicate's mean and its first estimate (flat
        gradients; the first estimates are independent single estimates), steps per
        estimate, median seconds per replicate."""
        rows = list(self.kept[:samples])
        self.kept = self.kept[samples:]
        secs = [self.seconds]
        with progress_bar(samples - len(rows), desc, progress, min_total=1) as bar:
            for _ in range(samples - len(rows)):
                t0 = time.perf_counter()
                rows.append(self._replicate())
                secs.append(time.perf_counter() - t0)
                bar.update(1)
        return np.stack(rows), float(self.steps), float(np.median(secs))


# Estimators built for a system, reused by later comparisons on the same system (a sweep
# over θ or shifts): the same estimator object keeps its compiled programs, so each
# (estimator, settings) compiles once per system instead of once per comparison.
_BUILT: dict = {}


def make_estimator(name: str, system: System, **params):
    """`estimators.make`, memoised on (system, name, params) while the system lives."""
    # The process count is part of the key: an estimator built to work alone (inside
    # `distributed.local_only`) must not be handed to a population spread over processes.
    key = (
        id(system),
        name,
        tuple(sorted((k, repr(v)) for k, v in params.items())),
        distributed.process_count(),
    )
    hit = _BUILT.get(key)
    if hit is not None and hit[0] is system:
        return hit[1]
    if len(_BUILT) > 256:
        _BUILT.clear()
    est = estimators.make(name, system, **params)
    _BUILT[key] = (system, est)
    return est


def release(system: System) -> int:
    """Forget the estimators built for ``system`` by earlier comparisons, so their compiled
    programs are freed: for a caller done comparing on it. A large system's programs hold
    many memory mappings (one comparison on the learned-optimizer task family: about 33,000,
    against Linux's default limit of 65,530 per process). Returns how many were dropped."""
    gone = [k for k, (s, _) in _BUILT.items() if s is system]
    for k in gone:
        del _BUILT[k]
    return len(gone)


def _reference_estimator(system, kind: str, horizon: int, per_batch: int, sigma: float):
    if kind == "es":
        return make_estimator("es", system, pairs=per_batch, sigma=sigma, horizon=horizon)
    if kind == "reparam":
        return make_estimator("reparam", system, pairs=per_batch, sigma=sigma, horizon=horizon)
    if kind == "backprop":
        return make_estimator("backprop", system, samples=per_batch, horizon=horizon)
    raise InputError(
        f"reference {kind!r} is not accepted: use 'auto', 'reparam', 'es' or 'backprop'"
    )


def _reference_sampler(system, theta, horizon, kind, key, per_batch, sigma) -> _Sampler:
    return _Sampler(_reference_estimator(system, kind, horizon, per_batch, sigma), theta, key)


def _choose_reference(pilot_rows: dict, seconds: dict) -> tuple[str, str]:
    """The reference kind with the least variance per second of sampling, measured on the
    pilot batches across run keys at T (both kinds are unbiased for the smoothed target)."""
    score, parts = {}, []
    for k, rows in pilot_rows.items():
        g = rows[:, 0]
        ok = np.all(np.isfinite(g), axis=1)
        var = float(np.sum(g[ok].var(axis=0, ddof=1))) if ok.sum() >= 2 else math.inf
        score[k] = var * seconds[k] if ok.all() else math.inf
        parts.append(f"{k} {var:.3g} per batch, {seconds[k]:.2g} s")
    best = min(score, key=lambda k: (score[k], k != "reparam"))
    return best, (
        f"auto: the least variance per second across run keys at T ({'; '.join(parts)}"
        f"; {PILOT} batches each)"
    )


def _allocate(
    seconds_of: list[float],
    ref_seconds: float,
    samples: int,
    ref_batches: int,
    seconds: float | None,
) -> tuple[list[int], int]:
    """Replicates per estimator and reference batches that fit ``seconds`` of sampling (from
    each one's timed replicate): half to the reference, whose noise limits every bias, half
    shared by the estimators; at most what was asked, at least `MIN_SAMPLES`."""
    if seconds is None:
        return [samples] * len(seconds_of), ref_batches
    share = 0.5 * float(seconds) / max(len(seconds_of), 1)
    counts = [int(min(samples, max(MIN_SAMPLES, share // max(s, 1e-9)))) for s in seconds_of]
    n_ref = int(min(ref_batches, max(MIN_SAMPLES, 0.5 * seconds // max(ref_seconds, 1e-9))))
    return counts, n_ref


@dataclasses.dataclass
class _Jobs:
    """What compare samples: job j < len(built) is estimator j, then the ``extra`` jobs
    (role, kind): the reference, the cross-check and the null sample. The reference pilots
    are sampled first (`run_pilots`) and continue as the reference and cross-check jobs."""

    system: System
    theta: PyTree
    key: jax.Array
    horizon: int
    sigma: float
    samples: int
    seconds: float | None
    built: list
    per_rep: list
    budget: int
    per_batch: int
    n_ref: int
    extra: list = dataclasses.field(default_factory=list)
    pilots: dict = dataclasses.field(default_factory=dict)
    pilot_rows: dict = dataclasses.field(default_factory=dict)

    @property
    def ref_key(self) -> jax.Array:
        return jax.random.fold_in(self.key, 1000)

    def run_pilots(self, kinds) -> None:
        """``PILOT`` batches of each reference kind, to choose the reference from."""
        self.pilots = {
            k: _reference_sampler(
                self.system,
                self.theta,
                self.horizon,
                k,
                jax.random.fold_in(self.ref_key, i),
                self.per_batch,
                self.sigma,
            )
            for i, k in enumerate(kinds)
        }
        self.pilot_rows = {
            k: s.run(PILOT, f"reference pilot ({k})", False)[0] for k, s in self.pilots.items()
        }

    def sampler(self, j) -> _Sampler:
        if j < len(self.built):
            return _Sampler(
                self.built[j], self.theta, jax.random.fold_in(self.key, j), self.per_rep[j]
            )
        role, kind = self.extra[j - len(self.built)]
        if role in ("reference", "cross-check"):
            return self.pilots[kind]
        return _Sampler(
            _reference_estimator(self.system, kind, self.horizon, self.per_batch, self.sigma),
            self.theta,
            jax.random.fold_in(self.ref_key, 77),
        )

    def wanted(self, role) -> int:
        return {
            "reference": self.n_ref - PILOT,
            "cross-check": max(self.samples - PILOT, 2),
            "null": self.samples,
        }[role]

    def check_budget(self, steps_of) -> None:
        for est, steps in zip(self.built, steps_of, strict=False):
            if steps > self.budget:
                raise InputError(
                    f"budget {self.budget} is below the cost of one {est.name} "
                    f"estimate ({steps:.0f} unroll steps); raise --budget"
                )

    def allocate(self, timings) -> list:
        """Samples per job from its (steps, seconds) per sample."""
        n = len(self.built)
        self.check_budget([t[0] for t in timings[:n]])
        counts = _allocate(
            [t[1] for t in timings[:n]],
            timings[n][1],
            self.samples,
            self.n_ref - PILOT,
            self.seconds,
        )
        return [*counts[0], counts[1], *[self.wanted(r) for r, _ in self.extra[1:]]]

    def sample(self, split: bool, progress) -> tuple[list, dict] | None:
        """Every job's (rows, steps, seconds) and the timing; None on a process of a launch
        other than 0 (process 0 gathers and reports)."""
        n_jobs = len(self.built) + len(self.extra)
        if split:
            done = _split_sampling(self.sampler, n_jobs, self.allocate, progress)
            if done is None:
                return None
            return [g for g, _ in done], {}
        samplers = [self.sampler(j) for j in range(n_jobs)]
        compile_seconds = sum(
            {id(s): s.compile_seconds for s in [*samplers, *self.pilots.values()]}.values()
        )
        t_sample = time.perf_counter()
        counts = self.allocate([(s.steps, s.seconds) for s in samplers])
        results = [
            s.run(c, f"compare {s.est.name}", progress if j < len(self.built) else False)
            for j, (s, c) in enumerate(zip(samplers, counts, strict=True))
        ]
        return results, {
            "compile_seconds": round(compile_seconds, 2),
            "sampling_seconds": round(time.perf_counter() - t_sample, 2),
        }
