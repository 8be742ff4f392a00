"""Lyapunov exponents of a `System`: the spectrum by the QR (Benettin) method with a
transient, a convergence history and k ≤ n tangent vectors (`lyapunov_spectrum`), independent
runs and the leading exponent's interval (`lyapunov_runs`, `leading_exponent_interval`),
finite-time exponents, and the one rule for ``k`` (`resolve_k`) the spectra share.
`chaosgrad.spectra` re-exports every name.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from chaosgrad._types import PyTree
from chaosgrad.checks import DEFAULT_K, check_positive_int, resolve_k  # noqa: F401 -- re-exported
from chaosgrad.config import precision_info
from chaosgrad.errors import InputError
from chaosgrad.jacobian import phase_map, start_run
from chaosgrad.progress import progress_bar
from chaosgrad.system import System, cache_by_functions
from chaosgrad.unroll import all_finite

FLOAT32_LONG_RUN = 20_000


# -- Lyapunov spectrum (Benettin / QR) --------------------------------------------------------
# How ill-conditioned the tangent basis may grow between two QRs, as log κ: the smallest
# |R_kk| of a Householder QR is accurate to about eps·κ relative, so κ ≤ eps^(-1/2) keeps
# half the digits in the weakest direction (float32: κ ≈ 3e3; float64: κ ≈ 7e7).
LOG_COND_LIMIT = {np.dtype(np.float32): 8.0, np.dtype(np.float64): 18.0}
MAX_QR_EVERY = 32


QR_CHUNK = 1024  # steps per compiled QR chunk: one program serves every run of a system


@cache_by_functions(maxsize=64)
def _jit_qr_chunk(system: System, chunk: int, k: int):
    """Steps t0 … min(t0 + chunk, t_end) − 1 of state and k tangent vectors.

    The trip count, the QR interval ``every`` and the recording window are traced, so one
    compiled program serves the probe, the transient and the counted steps of every run
    (each program of an MJX model costs tens of seconds to trace, even from a warm cache).
    Within a window of ``window`` steps starting at ``w0``, the basis is re-orthonormalised
    every ``every`` steps, at the window's last step and at the run's last step (t_end − 1),
    so every window ends with an orthonormal basis and its complete log-growth.

    Between QRs the basis is propagated unnormalised: the product's QR has diag R equal to
    the product of the per-step diag Rs, so the summed log|R_ii| is the same in exact
    arithmetic, for 1/every of the QRs (re-orthonormalising every m steps is standard for
    the QR method; ``every`` must keep the basis well-conditioned, see `_safe_qr_every`).
    Tangents are pushed by a vmapped ``jax.jvp`` (the primal computed once): tracing it
    costs about half of ``jax.linearize`` on an MJX step.

    Returns the new state and basis, log|diag R| per step (zeros where no QR ran; rows past
    the chunk's steps are zeros) and whether each step stayed finite.
    """

    def qr_logs(m):
        q, r = jnp.linalg.qr(m)
        return q, jnp.log(jnp.abs(jnp.diagonal(r)))

    def run(state, basis, theta, steps_key, t0, t_end, w0, window, every):
        n = jnp.clip(t_end - t0, 0, chunk)
        dtype = basis.dtype
        logs0 = jnp.zeros((chunk, k), dtype)
        oks0 = jnp.ones((chunk,), bool)

        def body(i, carry):
            s, q, logs, oks = carry
            t = t0 + i
            f, x = phase_map(system, theta, s, steps_key, t)
            _, jq, new_s = jax.vmap(
                lambda v: jax.jvp(f, (x,), (v,), has_aux=True),
                in_axes=1,
                out_axes=(None, 1, None),
            )(q)
            v = (t - w0) % window
            due = ((v + 1) % every == 0) | (v + 1 == window) | (t == t_end - 1)
            q_new, lg = lax.cond(due, qr_logs, lambda m: (m, jnp.zeros(k, dtype)), jq)
            ok = all_finite(x) & jnp.all(jnp.isfinite(lg))
            logs = lax.dynamic_update_index_in_dim(logs, lg, i, 0)
            oks = lax.dynamic_update_index_in_dim(oks, ok, i, 0)
            return new_s, q_new, logs, oks

        s, q, logs, oks = lax.fori_loop(0, n, body, (state, basis, logs0, oks0))
        return s, q, logs, oks

    return jax.jit(run)


def _safe_qr_every(rates: np.ndarray, dtype) -> int:
    """How many steps the basis may go between QRs, from measured per-step growth rates:
    over m steps the columns' norms spread by about exp((λ_1 − λ_k) m) and grow or shrink
    by exp(|λ| m); m keeps twice that (finite-time rates fluctuate) within the conditioning
    limit of the dtype, between 1 and MAX_QR_EVERY."""
    rates = np.asarray(rates, np.float64)
    if not np.all(np.isfinite(rates)):
        return 1
    rate = max(float(rates.max() - rates.min()), float(np.abs(rates).max()), 1e-12)
    limit = LOG_COND_LIMIT.get(np.dtype(dtype), 8.0)
    return int(np.clip(np.floor(limit / (2.0 * rate)), 1, MAX_QR_EVERY))


class LyapunovResult(NamedTuple):
    """What `lyapunov_spectrum` returns.

    Attributes:
      exponents: the k leading Lyapunov exponents, per step (maps) or per unit time (flows),
        sorted descending (``history`` and ``window_exponents`` columns in the same order).
      history_steps: the step counts (after the transient) at which the estimate was recorded.
      history: the running estimate at each of those, shape (len(history_steps), k).
      window_exponents: the exponents over each recording window alone (finite-time), same
        shape as ``history``.
      steps, transient, k, n: the run's sizes (n is the phase dimension).
      dt: the time step of a flow (None for maps); units: "per step" or "per unit time".
      nonfinite_step: first step (after the transient) where the state or the growth went
        non-finite, or -1.
      precision: dtype, x64 mode, matmul precision, backend.
      system: the system's metadata.
      seconds: wall-clock time of the run (compile included).
      qr_every: the steps between re-orthonormalisations (counted steps).
      runs: independent runs averaged into this result (`lyapunov_runs`; 1 for one run).
    """

    exponents: np.ndarray
    history_steps: np.ndarray
    history: np.ndarray
    window_exponents: np.ndarray
    steps: int
    transient: int
    k: int
    n: int
    dt: float | None
    units: str
    nonfinite_step: int
    precision: dict
    system: dict
    seconds: float
    qr_every: int = 1
    runs: int = 1

    def to_json(self) -> dict:
        """A JSON-friendly summary (exponents, sizes, precision, system)."""
        return {
            "system": self.system.get("name"),
            "exponents": [float(x) for x in self.exponents],
            "sum": float(np.sum(self.exponents)),
            "steps": self.steps,
            "transient": self.transient,
            "k": self.k,
            "n": self.n,
            "dt": self.dt,
            "units": self.units,
            "nonfinite_step": self.nonfinite_step,
            "precision": self.precision,
            "system_meta": self.system,
            "seconds": round(self.seconds, 3),
            "qr_every": self.qr_every,
            "runs": self.runs,
        }


def _qr_run(system, theta, state, k_steps, q, t0, steps, record_every, desc, progress, every=1):
    """Run the QR chunks for ``steps`` steps from global step ``t0``, recording windows of
    ``record_every`` steps; per-window log-growth sums, window ends, the end state and basis,
    and the first non-finite step (counted from ``t0``; −1 if none)."""
    k = q.shape[1]
    fn = _jit_qr_chunk(system, QR_CHUNK, k)
    # the chunk's outputs come back committed to a device: committing its inputs to that
    # device (the basis's, where JAX put it) keeps the second chunk from lowering and
    # loading the program again
    state, q = jax.device_put((state, q), next(iter(q.devices())))
    logs, oks = [], []
    args = (jnp.asarray(t0 + steps), jnp.asarray(t0), jnp.asarray(record_every), jnp.asarray(every))
    with progress_bar(steps, desc, progress, min_total=50_000) as bar:
        for start in range(0, steps, QR_CHUNK):
            state, q, lg, ok = fn(state, q, theta, k_steps, jnp.asarray(t0 + start), *args)
            m = min(QR_CHUNK, steps - start)
            lg, ok = jax.device_get((lg, ok))
            logs.append(np.asarray(lg[:m], np.float64))
            oks.append(ok[:m])
            bar.update(m)
    logs, oks = np.concatenate(logs), np.concatenate(oks)
    ends = np.minimum(np.arange(1, math.ceil(steps / record_every) + 1) * record_every, steps)
    sums = np.add.reduceat(logs, np.concatenate([[0], ends[:-1]]), axis=0)  # window starts
    bad = int(np.argmin(oks)) if not oks.all() else -1
    return state, q, sums, ends, bad


def lyapunov_spectrum(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    steps: int = 10_000,
    k: int | str | None = None,
    transient: int = 1_000,
    state: PyTree = None,
    record_every: int | None = None,
    progress: bool | None = None,
    qr_every: int | None = None,
) -> LyapunovResult:
    """The k leading Lyapunov exponents by the QR (Benettin) method.

    k tangent vectors are pushed through each step by a vmapped ``jax.jvp`` (matrix-free, so
    the cost is k jvps a step, never an n × n Jacobian) and re-orthonormalised by QR; the
    exponents are the time averages of log|diag R|. The first ``transient`` steps move both
    the state onto its attractor and the tangent basis onto the leading Lyapunov vectors,
    and are not counted.

    Args:
      system: the system; theta: its parameters (default ``system.theta``).
      key: the run key (initial state, step keys, initial tangent basis).
      steps: counted steps after the transient.
      k: number of exponents (1 ≤ k ≤ n); default ``DEFAULT_K`` = min(n, 8), the same at
        every entry point; ``"all"`` for the full spectrum.
      transient: uncounted steps first.
      state: start here instead of ``system.init``.
      record_every: steps per convergence-history point (default: steps/200, at least 1).
      progress: progress bar (default: on a terminal for long runs).
      qr_every: re-orthonormalise every this many steps (and at every history point).
        Default: chosen from the growth rates measured over the transient's first 100
        steps (QR every step there), so that the basis stays well-conditioned between
        QRs (`_safe_qr_every`); 1 when there is no transient.

    Returns:
      A `LyapunovResult`. Exponents are per step for maps and per unit time for flows
      (``system.dt`` set). A float32 run longer than 20,000 steps warns: use float64
      (``chaosgrad.enable_x64()``) for values you will quote.
    """
    t_start = time.perf_counter()
    steps = check_positive_int(steps)
    if int(transient) < 0:
        raise InputError(f"transient must be >= 0, got {transient}")
    theta, state, k_steps, key = start_run(system, theta, key, state)
    x0, _ = system.flat_phase(state)
    n = int(x0.shape[0])
    k = resolve_k(k, n, system.name)
    dtype = x0.dtype
    if dtype == jnp.float32 and steps + transient > FLOAT32_LONG_RUN:
        warnings.warn(
            f"Lyapunov spectrum of {system.name!r} over {steps + transient} steps in float32: "
            "rounding drifts on long runs; enable float64 (chaosgrad.enable_x64()) for values "
            "you will quote",
            stacklevel=2,
        )
    record_every = (
        max(1, steps // 200)
        if record_every is None
        else check_positive_int(record_every, "record_every")
    )
    q0 = jax.random.normal(jax.random.fold_in(key, 7), (n, k), dtype)
    q, _ = jnp.linalg.qr(q0)
    every = 1 if qr_every is None else check_positive_int(qr_every, "qr_every")
    done = 0
    if transient and qr_every is None:
        # Probe: QR every step over the transient's start, then pick the safe interval.
        done = min(int(transient), 100)
        state, q, probe, _, _ = _qr_run(
            system, theta, state, k_steps, q, 0, done, done, f"transient {system.name}", progress
        )
        every = _safe_qr_every(probe[0] / done, dtype)
    if transient > done:
        rest = int(transient) - done
        state, q, _, _, _ = _qr_run(
            system,
            theta,
            state,
            k_steps,
            q,
            done,
            rest,
            min(rest, max(record_every, 1000)),
            f"transient {system.name}",
            progress,
            every,
        )
    _, _, sums, ends, bad = _qr_run(
        system,
        theta,
        state,
        k_steps,
        q,
        transient,
        steps,
        record_every,
        f"lyapunov {system.name}",
        progress,
        every,
    )
    scale = system.dt if system.dt is not None else 1.0
    widths = np.diff(np.concatenate([[0], ends]))[:, None]
    history = np.cumsum(sums, axis=0) / (ends[:, None] * scale)
    # The QR's columns converge to descending order, but over a finite run two near-equal
    # exponents can come out swapped: list them sorted (history columns with them; NaN last).
    final = history[-1]
    order = np.argsort(np.where(np.isfinite(final), -final, np.inf), kind="stable")
    history = history[:, order]
    return LyapunovResult(
        exponents=history[-1],
        history_steps=ends,
        history=history,
        window_exponents=(sums / (widths * scale))[:, order],
        steps=steps,
        transient=int(transient),
        k=k,
        n=n,
        dt=system.dt,
        units="per unit time" if system.dt is not None else "per step",
        nonfinite_step=int(bad),
        precision=precision_info(dtype),
        system=system.describe(),
        seconds=time.perf_counter() - t_start,
        qr_every=every,
    )


def _segment_means(steps: np.ndarray, running: np.ndarray, segments: int) -> np.ndarray:
    """The averages over ``segments`` consecutive pieces of a run, from its running average
    (``running[i]`` is the average over the first ``steps[i]`` steps)."""
    t = np.asarray(steps, np.float64).ravel()
    r = np.asarray(running, np.float64).ravel()
    incr = np.diff(np.concatenate([[0.0], r * t]))
    dt = np.diff(np.concatenate([[0.0], t]))
    m = min(segments, r.size)
    edges = np.linspace(0, r.size, m + 1).astype(int)
    return np.array(
        [incr[a:b].sum() / dt[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )


def leading_exponent_interval(results, segments: int = 20, level: float = 0.95):
    """λ1 with a 95% interval from independent runs (different run keys), each cut into
    ``segments`` batch means.

    One run's batch means see only the spread along that trajectory; when the system is not
    stationary (a learned optimizer's task, a parameter that drifts, an initial condition
    that persists) runs differ by more than that, and an interval from one run misses the
    next run's value. Here the estimate is the mean of the R runs' λ1, and its squared
    standard error is max(B, W) / R, with B the variance between the runs' values and W the
    mean within-run variance of a run's value (from its batch means): the run-to-run
    spread whenever it is the larger, never less than the within-run noise. The t quantile
    has R − 1 degrees of freedom when B is used, else those of the batch means. With one
    run it is that run's batch-means interval.

    Args:
      results: `LyapunovResult`s of independent runs with the same sizes.

    Returns:
      A `chaosgrad.stats.Interval` (method names the runs and segments).
    """
    from chaosgrad.stats import Interval, _t

    results = list(results)
    if not results:
        raise InputError("leading_exponent_interval needs at least one LyapunovResult")
    values, within, dofs = [], [], []
    for res in results:
        r = np.asarray(res.history, np.float64)[:, 0]
        if r.size < 4 or not np.all(np.isfinite(r)):
            value = float(r[-1]) if r.size else math.nan
            return Interval(value, -math.inf, math.inf, level, "segments (too few or non-finite)")
        seg = _segment_means(res.history_steps, r, segments)
        values.append(float(r[-1]))
        within.append(float(seg.var(ddof=1)) / seg.size)
        dofs.append(seg.size - 1)
    R = len(values)
    value = float(np.mean(values))
    W = float(np.mean(within))
    B = float(np.var(values, ddof=1)) if R > 1 else 0.0
    if R > 1 and B >= W:
        se2, dof, which = B / R, R - 1, "run-to-run spread"
    else:
        se2, dof, which = W / R, int(sum(dofs)), "within-run batch means"
    h = _t(level, dof) * math.sqrt(se2)
    m = min(segments, np.asarray(results[0].history).shape[0])
    return Interval(
        value,
        value - h,
        value + h,
        level,
        f"{R} run{'s' if R > 1 else ''} × {m} segments; {which} (t, {dof} dof)",
    )


class LyapunovRuns(NamedTuple):
    """What `lyapunov_runs` returns.

    Attributes:
      result: the runs merged into one `LyapunovResult` (exponents, history and window
        exponents averaged over the runs, sorted descending; ``runs`` set).
      interval: λ1's interval over the runs (`leading_exponent_interval`).
      run_exponents: each run's exponents, shape (runs, k).
      results: the runs themselves.
    """

    result: LyapunovResult
    interval: Any
    run_exponents: np.ndarray
    results: list


def lyapunov_runs(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    runs: int = 4,
    steps: int = 10_000,
    k: int | str | None = None,
    transient: int = 1_000,
    record_every: int | None = None,
    progress: bool | None = None,
) -> LyapunovRuns:
    """The Lyapunov spectrum from ``runs`` independent trajectories (run keys
    ``fold_in(key, r)``), each of ``steps`` counted steps after its own ``transient``, with
    λ1's interval covering the run-to-run spread (`leading_exponent_interval`). The runs
    share one compiled program. `compare` and `diagnose` measure λ1 this way.
    """
    from chaosgrad.system import default_key

    runs = check_positive_int(runs, "runs")
    key = default_key(key)
    res = [
        lyapunov_spectrum(
            system,
            theta,
            key=jax.random.fold_in(key, r),
            steps=steps,
            k=k,
            transient=transient,
            record_every=record_every,
            progress=progress,
        )
        for r in range(runs)
    ]
    exps = np.stack([r.exponents for r in res])
    hist = np.mean([r.history for r in res], axis=0)
    order = np.argsort(np.where(np.isfinite(hist[-1]), -hist[-1], np.inf), kind="stable")
    bad = [r.nonfinite_step for r in res if r.nonfinite_step >= 0]
    merged = res[0]._replace(
        exponents=hist[-1][order],
        history=hist[:, order],
        window_exponents=np.mean([r.window_exponents for r in res], axis=0)[:, order],
        nonfinite_step=min(bad) if bad else -1,
        seconds=sum(r.seconds for r in res),
        runs=runs,
    )
    return LyapunovRuns(merged, leading_exponent_interval(res), exps, res)


def finite_time_lyapunov(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    window: int = 100,
    windows: int = 100,
    k: int | None = 1,
    transient: int = 1_000,
    state: PyTree = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Finite-time Lyapunov exponents: the QR growth rates over consecutive windows.

    Each row is the k leading exponents measured over one window of ``window`` steps (per
    step, or per unit time for flows), with the tangent basis carried over from the window
    before. Their mean over the windows is exactly the Lyapunov spectrum of the whole run;
    their spread shows how unevenly the dynamics stretch along the trajectory.

    Returns an array of shape (windows, k).
    """
    res = lyapunov_spectrum(
        system,
        theta,
        key=key,
        steps=check_positive_int(window, "window") * check_positive_int(windows, "windows"),
        k=k,
        transient=transient,
        state=state,
        record_every=window,
        progress=progress,
    )
    return res.window_exponents
