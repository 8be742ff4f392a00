"""Classic maps and flows with known Lyapunov exponents: the oracles of chaosgrad's tests.

Logistic (λ = ln 2 at r = 4), Hénon (λ1 ≈ 0.4192), Lorenz-63 (λ1 ≈ 0.906), linear maps x → Ax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_int, check_number
from chaosgrad.config import precision_name, resolve_dtype
from chaosgrad.errors import InputError
from chaosgrad.system import StepOut, System

# One home for these (chaosgrad.config); the short names keep the adapters readable.
_dtype = resolve_dtype
_precision = precision_name


def logistic(r: float = 4.0, x0: float | None = None, dtype: str | None = None) -> System:
    """The logistic map x_{t+1} = r x_t (1 − x_t); θ = r; per-step loss ℓ_t = x_{t+1}.

    At r = 4 the map is conjugate to the tent map and its Lyapunov exponent is exactly ln 2.
    The initial x is uniform in [0.05, 0.95] from the key (or ``x0``). In floating point an
    orbit can land exactly on 0 and stay: start away from dyadic rationals.
    """
    dt = _dtype(dtype)

    def init(key, theta):
        if x0 is not None:
            return jnp.full((1,), x0, dt)
        return jax.random.uniform(key, (1,), dt, 0.05, 0.95)

    def step(x, theta, key):
        x = theta * x * (1 - x)
        return x, StepOut(loss=x[0])

    return System(
        init,
        step,
        name="logistic",
        theta=jnp.asarray(r, dt),
        precision=_precision(dt),
        horizon=100,
        description=f"logistic map, r={r}",
        theta_doc="r (scalar)",
        loss_doc="x_{t+1}",
        metadata={"r": r},
    )


def henon(a: float = 1.4, b: float = 0.3, dtype: str | None = None) -> System:
    """The Hénon map (x, y) → (1 − a x² + y, b x); θ = (a, b); loss ℓ_t = x_{t+1}.

    At a = 1.4, b = 0.3: λ1 ≈ 0.4192 and λ1 + λ2 = ln b exactly (|det J| = b everywhere).
    The initial point is uniform in [−0.1, 0.1]², inside the basin of the attractor.
    """
    dt = _dtype(dtype)

    def init(key, theta):
        return jax.random.uniform(key, (2,), dt, -0.1, 0.1)

    def step(s, theta, key):
        x, y = s[0], s[1]
        s = jnp.stack([1 - theta[0] * x**2 + y, theta[1] * x])
        return s, StepOut(loss=s[0])

    return System(
        init,
        step,
        name="henon",
        theta=jnp.asarray([a, b], dt),
        precision=_precision(dt),
        horizon=100,
        description=f"Henon map, a={a}, b={b}",
        theta_doc="(a, b)",
        loss_doc="x_{t+1}",
        metadata={"a": a, "b": b},
    )


def lorenz(
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    dt: float = 0.01,
    burn_in: int = 1500,
    dtype: str | None = None,
) -> System:
    """Lorenz-63, one classical RK4 step of size ``dt`` per step; θ = (σ, ρ, β).

    The flow's divergence is −(σ + 1 + β), so its exponents sum to −41/3 at the classic
    (10, 28, 8/3), where λ1 ≈ 0.906, λ2 = 0 and λ3 ≈ −14.57 per unit time. Per-step loss
    ℓ_t = z_{t+1} / ρ. The initial point is (1, 1, 1) plus a small key-driven offset,
    moved ``burn_in`` steps along the flow inside ``init`` so that every unroll starts on the
    attractor (from near (1, 1, 1) the orbit needs ~15 time units to spiral out, and
    gradients over shorter horizons would not see the chaos yet). The burn-in runs at θ
    and is differentiated like any other step.
    """
    fdt = _dtype(dtype)
    dt = check_number(dt, "lorenz dt", positive=True)
    burn_in = check_int(burn_in, "lorenz burn_in", lo=0)

    def f(s, th):
        x, y, z = s[0], s[1], s[2]
        return jnp.stack([th[0] * (y - x), x * (th[1] - z) - y, x * y - th[2] * z])

    def rk4(s, theta):
        h = jnp.asarray(dt, s.dtype)
        k1 = f(s, theta)
        k2 = f(s + 0.5 * h * k1, theta)
        k3 = f(s + 0.5 * h * k2, theta)
        k4 = f(s + h * k3, theta)
        return s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def init(key, theta):
        s = jnp.ones(3, fdt) + 0.1 * jax.random.normal(key, (3,), fdt)
        return jax.lax.fori_loop(0, int(burn_in), lambda i, s: rk4(s, theta), s)

    def step(s, theta, key):
        s = rk4(s, theta)
        return s, StepOut(loss=s[2] / theta[1])

    return System(
        init,
        step,
        name="lorenz",
        theta=jnp.asarray([sigma, rho, beta], fdt),
        dt=dt,
        precision=_precision(fdt),
        horizon=1000,
        description=f"Lorenz-63 (sigma={sigma}, rho={rho}, beta={beta:.4g}), RK4 dt={dt}",
        theta_doc="(sigma, rho, beta)",
        loss_doc="z_{t+1} / rho",
        metadata={
            "sigma": sigma,
            "rho": rho,
            "beta": beta,
            "integrator": "rk4",
            "burn_in": int(burn_in),
        },
    )


def linear(
    n: int | None = None,
    radius: float | None = None,
    eigenvalues: tuple | None = None,
    seed: int = 0,
    loss: str = "linear",
    dtype: str | None = None,
) -> System:
    """The linear map x → A x; θ = A.

    Per-step loss: ``loss="linear"`` (default) ℓ_t = cᵀx_{t+1} with a fixed random unit
    readout c, so ‖∂L/∂A‖ grows exactly like |λ_max|^T (the growth rate is λ1 = ln|λ_max|);
    ``loss="quadratic"``: ℓ_t = ½‖x_{t+1}‖², whose gradient grows like |λ_max|^{2T}.

    With ``eigenvalues`` given, A = Q diag(eigenvalues) Qᵀ for a random orthogonal Q (a
    symmetric A of exactly those eigenvalues); otherwise A is Gaussian, rescaled to spectral
    radius ``radius`` (default 0.9). The Lyapunov exponents are ln|eigenvalues of A| exactly.
    ``n`` (default 4) is the dimension; with ``eigenvalues`` it is their count, and an ``n``
    or ``radius`` that disagrees with them is refused, not ignored.
    """
    if loss not in ("linear", "quadratic"):
        raise InputError(f"linear map loss {loss!r} is not accepted: use 'linear' or 'quadratic'")
    fdt = _dtype(dtype)
    seed = check_int(seed, "linear seed", lo=0)
    rng = np.random.default_rng(seed)
    if n is not None:
        n = check_int(n, "linear n", lo=1)
    if eigenvalues is not None:
        try:
            ev = np.atleast_1d(np.asarray(eigenvalues, dtype=np.float64))
        except (TypeError, ValueError):
            ev = np.zeros((0,))
        if ev.ndim != 1 or ev.size == 0 or not np.all(np.isfinite(ev)):
            raise InputError(
                f"eigenvalues must be a non-empty list of finite numbers, got {eigenvalues!r}"
            )
        if n is not None and n != ev.size:
            raise InputError(
                f"linear n={n} disagrees with the {ev.size} eigenvalues given; "
                "give n equal to their count, or leave n out"
            )
        if radius is not None:
            raise InputError(
                "linear: give eigenvalues or radius, not both (the eigenvalues "
                "fix the spectral radius)"
            )
        q, _ = np.linalg.qr(rng.standard_normal((ev.size, ev.size)))
        a = q @ np.diag(ev) @ q.T
        n = ev.size
    else:
        n = 4 if n is None else n
        radius = 0.9 if radius is None else check_number(radius, "linear radius", positive=True)
        a = rng.standard_normal((n, n))
        a *= radius / np.max(np.abs(np.linalg.eigvals(a)))
    c = rng.standard_normal(a.shape[0])
    c = jnp.asarray(c / np.linalg.norm(c), fdt)

    def init(key, theta):
        return jax.random.normal(key, (theta.shape[0],), theta.dtype)

    def step(x, theta, key):
        x = theta @ x
        return x, StepOut(loss=c @ x if loss == "linear" else 0.5 * jnp.sum(x**2))

    return System(
        init,
        step,
        name="linear",
        theta=jnp.asarray(a, fdt),
        precision=_precision(fdt),
        horizon=100,
        description=f"linear map x -> A x, n={a.shape[0]}, {loss} loss",
        theta_doc="A (n x n)",
        loss_doc="c . x_{t+1} (fixed unit readout c)" if loss == "linear" else "0.5 |x_{t+1}|^2",
        metadata={
            "n": int(a.shape[0]),
            "seed": seed,
            "loss": loss,
            "eigenvalues": None if eigenvalues is None else list(map(float, eigenvalues)),
            "radius": None if eigenvalues is not None else radius,
        },
    )


def heat(
    n: int = 32,
    r: float = 0.4,
    seed: int = 0,
    dtype: str | None = None,
) -> System:
    """The FTCS scheme for the 1-D heat equation, u_i ← u_i + r (u_{i+1} − 2u_i + u_{i−1}).

    θ = r = αΔt/Δx² (a scalar); n interior points with u = 0 at both ends (Dirichlet). The
    step is the linear map I + r·L with eigenvalues 1 − 4r sin²(kπ / (2(n+1))), k = 1…n, so
    the scheme is stable iff every |eigenvalue| ≤ 1, i.e. r ≤ 1 / (2 sin²(nπ/(2(n+1)))),
    just above ½: the classic von Neumann bound. Per-step loss ℓ_t = cᵀu_{t+1} with a fixed
    random unit readout c. The initial profile is standard normal from the key.
    """
    fdt = _dtype(dtype)
    n = check_int(n, "heat n (grid points)", lo=2)
    rng = np.random.default_rng(check_int(seed, "heat seed", lo=0))
    c = rng.standard_normal(int(n))
    c = jnp.asarray(c / np.linalg.norm(c), fdt)

    def init(key, theta):
        return jax.random.normal(key, (int(n),), fdt)

    def step(u, theta, key):
        padded = jnp.pad(u, 1)
        u = u + theta * (padded[2:] - 2 * u + padded[:-2])
        return u, StepOut(loss=c @ u)

    return System(
        init,
        step,
        name="heat",
        theta=jnp.asarray(r, fdt),
        precision=_precision(fdt),
        horizon=100,
        description=f"FTCS heat equation, n={n}, r={r}",
        theta_doc="r = alpha dt / dx^2",
        loss_doc="c . u_{t+1} (fixed unit readout c)",
        metadata={"n": int(n), "r": r, "seed": seed},
    )


def heat_eigenvalues(n: int, r: float) -> np.ndarray:
    """The exact eigenvalues 1 − 4r sin²(kπ/(2(n+1))), k = 1…n, of the FTCS heat step."""
    k = np.arange(1, n + 1)
    return 1 - 4 * r * np.sin(k * np.pi / (2 * (n + 1))) ** 2
