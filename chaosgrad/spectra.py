"""Spectra of state-transition Jacobians: per-step eigenvalues along a trajectory and
singular values of Jacobian products. Lyapunov spectra (QR/Benettin with convergence history)
and finite-time exponents live in `chaosgrad.lyapunov` and stay importable from here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from chaosgrad.checks import MAX_DENSE_DIM, check_dense, check_int, check_positive_int
from chaosgrad.errors import InputError
from chaosgrad.jacobian import phase_map, start_run
from chaosgrad.lyapunov import (  # noqa: F401 -- re-exported
    DEFAULT_K,
    FLOAT32_LONG_RUN,
    LOG_COND_LIMIT,
    MAX_QR_EVERY,
    LyapunovResult,
    LyapunovRuns,
    _jit_qr_chunk,
    _qr_run,
    _safe_qr_every,
    _segment_means,
    finite_time_lyapunov,
    leading_exponent_interval,
    lyapunov_runs,
    lyapunov_spectrum,
    resolve_k,
)
from chaosgrad.system import System, cache_by_functions

PyTree = Any


# -- eigenvalues of one-step Jacobians along a trajectory --------------------------------------
@cache_by_functions(maxsize=32)
def _jit_dense_jac_chunk(system: System, chunk: int):
    def run(state, theta, steps_key, t0):
        def body(s, i):
            f, x = phase_map(system, theta, s, steps_key, t0 + i)
            jac = jax.jacfwd(lambda xf: f(xf)[0])(x)
            new_s = f(x)[1]
            return new_s, jac

        return lax.scan(body, state, jnp.arange(chunk))

    return jax.jit(run)


class EigenResult(NamedTuple):
    """Eigenvalues of the one-step Jacobians along a trajectory.

    Attributes:
      steps: the step index t of each Jacobian J_t = ∂phase_{t+1}/∂phase_t.
      eigenvalues: complex, shape (len(steps), m), sorted by decreasing modulus (m = n
        densely, or the k leading ones matrix-free).
      max_abs: the spectral radius of each J_t (largest |eigenvalue|).
      method: "dense" or "arnoldi".
    """

    steps: np.ndarray
    eigenvalues: np.ndarray
    max_abs: np.ndarray
    method: str


def _sort_by_modulus(ev: np.ndarray) -> np.ndarray:
    return np.take_along_axis(ev, np.argsort(-np.abs(ev), axis=-1), axis=-1)


def jacobian_eigenvalues(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    steps: int = 100,
    state: PyTree = None,
    k: int | None = None,
    method: str = "auto",
    dense_max_dim: int = 512,
) -> EigenResult:
    """Eigenvalues of ∂phase_{t+1}/∂phase_t for t = 0 … steps−1 along one trajectory.

    Args:
      method: "dense" (``jacfwd`` + LAPACK, all n eigenvalues), "arnoldi" (the k leading
        eigenvalues by ARPACK on the matrix-free jvp, for large n), or "auto" (dense when
        n ≤ ``dense_max_dim``).
      k: how many leading eigenvalues to keep (`resolve_k`; default: all densely, 6 by
        Arnoldi).
    """
    steps = check_positive_int(steps)
    theta, state, k_steps, _ = start_run(system, theta, key, state)
    n = int(system.flat_phase(state)[0].shape[0])
    if method == "auto":
        method = "dense" if n <= dense_max_dim else "arnoldi"
    k = resolve_k(k, n, system.name, default="all" if method != "arnoldi" else min(6, n))
    if method == "dense":
        check_dense(n, MAX_DENSE_DIM)
        chunk = int(max(1, min(steps, 256, 2e8 // (8 * n * n))))
        fn = _jit_dense_jac_chunk(system, chunk)
        evs = []
        for c in range(math.ceil(steps / chunk)):
            state, jacs = fn(state, theta, k_steps, jnp.asarray(c * chunk))
            jacs = np.asarray(jacs, dtype=np.float64)
            evs.append(
                np.linalg.eigvals(jacs)
                if np.all(np.isfinite(jacs))
                else np.array([_eig_or_nan(j) for j in jacs])
            )
        ev = _sort_by_modulus(np.concatenate(evs)[:steps])[:, :k]
    elif method == "arnoldi":
        ev = _arnoldi_along(system, theta, state, k_steps, steps, k)
    else:
        raise InputError(f"method {method!r} is not accepted: use 'auto', 'dense' or 'arnoldi'")
    return EigenResult(np.arange(steps), ev, np.abs(ev).max(axis=1), method)


def _eig_or_nan(j):
    if np.all(np.isfinite(j)):
        return np.linalg.eigvals(j)
    return np.full(j.shape[0], np.nan + 0j)


def _arnoldi_along(system, theta, state, k_steps, steps, k):
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    @jax.jit
    def advance(s, t):
        f, x = phase_map(system, theta, s, k_steps, t)
        return f(x)[1]

    @jax.jit
    def matvec(s, t, v):
        f, x = phase_map(system, theta, s, k_steps, t)
        return jax.jvp(lambda xf: f(xf)[0], (x,), (v,))[1]

    x0 = system.flat_phase(state)[0]
    n, dtype = int(x0.shape[0]), x0.dtype
    if k >= n - 1:
        raise InputError(f"Arnoldi needs k < n - 1 = {n - 1}; use method='dense' for all of them")
    out = []
    for t in range(steps):
        ti = jnp.asarray(t)
        op = LinearOperator(
            (n, n),
            dtype=np.float64,
            matvec=lambda v, s=state, ti=ti: np.asarray(
                matvec(s, ti, jnp.asarray(v.ravel(), dtype)), np.float64
            ),
        )
        try:
            vals = eigs(op, k=k, which="LM", return_eigenvectors=False, tol=1e-8)
        except ArpackNoConvergence as e:
            vals = np.concatenate([e.eigenvalues, np.full(k - len(e.eigenvalues), np.nan)])
        out.append(vals)
        state = advance(state, ti)
    return _sort_by_modulus(np.asarray(out, dtype=np.complex128))


# -- products of Jacobians --------------------------------------------------------------------
@cache_by_functions(maxsize=32)
def _jit_product_chunk(system: System, chunk: int, n_sv: int):
    """Dense product P_t = J_{t-1} … J_0 kept as exp(c)·P̂ so it never overflows."""

    def run(state, p_hat, log_c, theta, steps_key, t0):
        def body(carry, i):
            s, p, c = carry
            f, x = phase_map(system, theta, s, steps_key, t0 + i)
            _, jvp, new_s = jax.linearize(f, x, has_aux=True)
            p = jax.vmap(jvp, in_axes=1, out_axes=1)(p)
            nrm = jnp.linalg.norm(p)
            p = p / nrm
            c = c + jnp.log(nrm)
            sv = jnp.linalg.svd(p, compute_uv=False)[:n_sv]
            return (new_s, p, c), (c + jnp.log(sv), p)

        (s, p, c), (log_sv, ps) = lax.scan(body, (state, p_hat, log_c), jnp.arange(chunk))
        return s, p, c, log_sv, ps

    return jax.jit(run)


class ProductResult(NamedTuple):
    """Growth of the Jacobian product ∂phase_t/∂phase_0 = J_{t-1} ⋯ J_0 with t.

    Attributes:
      steps: t = 1 … T.
      log_singular_values: log σ_i of the product at each t, shape (T, k) (natural log, so
        no overflow however chaotic the system).
      log_max_abs_eigenvalue: log of the product's spectral radius at each t (dense only).
    """

    steps: np.ndarray
    log_singular_values: np.ndarray
    log_max_abs_eigenvalue: np.ndarray


def jacobian_products(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    steps: int = 100,
    k: int | str | None = 1,
    state: PyTree = None,
    eigenvalues: bool = True,
    max_dim: int = 256,
) -> ProductResult:
    """log singular values (and spectral radius) of ∂phase_t/∂phase_0 for every t ≤ steps.

    Dense: the n × n product is carried with a running log-scale so it cannot overflow; for
    large n use `product_singular_values` (matrix-free, one horizon). The leading singular
    value and the spectral radius are accurate at every t; a subleading σ_i is resolved only
    while σ_i/σ_1 stays well above the float epsilon (use `lyapunov_spectrum` for the rates
    of the weaker directions). ``k``: how many singular values (`resolve_k`; default 1).
    """
    steps = check_positive_int(steps)
    theta, state, k_steps, _ = start_run(system, theta, key, state)
    x0, _ = system.flat_phase(state)
    n = int(x0.shape[0])
    check_dense(n, max_dim)
    k = resolve_k(k, n, system.name, default=1)
    chunk = min(steps, 256)
    fn = _jit_product_chunk(system, chunk, k)
    p, c = jnp.eye(n, dtype=x0.dtype), jnp.zeros((), x0.dtype)
    log_sv, log_eig = [], []
    for i in range(math.ceil(steps / chunk)):
        state, p, c, lsv, ps = fn(state, p, c, theta, k_steps, jnp.asarray(i * chunk))
        log_sv.append(np.asarray(lsv, np.float64))
        if eigenvalues:
            ps = np.asarray(ps, np.float64)
            cs = np.asarray(lsv[:, 0], np.float64) - np.log(
                np.linalg.svd(ps, compute_uv=False)[:, 0]
            )
            radius = np.array([np.abs(_eig_or_nan(pp)).max() for pp in ps])
            log_eig.append(cs + np.log(radius))
    log_sv = np.concatenate(log_sv)[:steps]
    log_eig = np.concatenate(log_eig)[:steps] if eigenvalues else np.full(steps, np.nan)
    return ProductResult(np.arange(1, steps + 1), log_sv, log_eig)


def product_singular_values(
    system: System,
    theta: PyTree = None,
    key: jax.Array | None = None,
    *,
    steps: int = 100,
    k: int | str | None = 1,
    state: PyTree = None,
    iters: int = 30,
) -> np.ndarray:
    """The k leading singular values of ∂phase_T/∂phase_0, matrix-free (T = ``steps``).

    Subspace iteration on MᵀM, with M V by vmapped jvp through the T-step unroll and MᵀU by
    its vjp; no n × n matrix is formed. Values above the float range come out as inf; use
    `jacobian_products` (log-scaled) for small systems, or shorter horizons. ``k``:
    `resolve_k` (default 1).
    """
    steps = check_positive_int(steps)
    theta, state, k_steps, key = start_run(system, theta, key, state)
    x0, unravel = system.flat_phase(state)
    n = int(x0.shape[0])
    k = resolve_k(k, n, system.name, default=1)
    iters = check_int(iters, "iters (subspace iterations)", lo=1)

    def flow(xf):
        s = system.set_phase(state, unravel(xf))

        def body(s, t):
            f, x = phase_map(system, theta, s, k_steps, t)
            return f(x)[1], None

        s, _ = lax.scan(body, s, jnp.arange(steps))
        return system.flat_phase(s)[0]

    @jax.jit
    def iterate(v):
        _, jvp = jax.linearize(flow, x0)
        mv = jax.vmap(jvp, in_axes=1, out_axes=1)(v)
        vjp = jax.linear_transpose(jvp, x0)
        mtmv = jax.vmap(lambda u: vjp(u)[0], in_axes=1, out_axes=1)(mv)
        return mv, jnp.linalg.qr(mtmv)[0]

    v, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, 11), (n, k), x0.dtype))
    for _ in range(int(iters)):
        mv, v = iterate(v)
    mv, _ = iterate(v)
    return np.linalg.svd(np.asarray(mv, np.float64), compute_uv=False)
