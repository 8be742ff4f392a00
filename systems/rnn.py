"""A vanilla tanh RNN run as an autonomous iterated map, chaotic for gain g > 1.

x_{t+1} = tanh(W x_t) with W_ij ~ N(0, g²/n) (Sompolinsky, Crisanti & Sommers 1988).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_int, check_number
from chaosgrad.config import precision_name as _precision
from chaosgrad.config import resolve_dtype as _dtype
from chaosgrad.memory import check_fits
from chaosgrad.system import StepOut, System


def rnn(n: int = 64, g: float = 2.0, seed: int = 0, dtype: str | None = None) -> System:
    """The map x → tanh(W x); θ = W (n × n); per-step loss ℓ_t = ½ mean(x_{t+1}²).

    W is Gaussian with variance g²/n (from ``seed``). For large n the origin is stable for
    g < 1 and the dynamics are chaotic for g > 1. The initial state is standard normal.
    """
    n = check_int(n, "rnn n", lo=1)
    seed = check_int(seed, "rnn seed", lo=0)
    g = check_number(g, "rnn gain g")
    fdt = _dtype(dtype)
    # W is drawn in float64 by numpy, then copied at the working precision: refuse up front
    # what cannot fit rather than fail inside numpy after a long wait.
    check_fits(float(n) * n * (8 + np.dtype(fdt).itemsize), f"rnn n={n} (W is {n} x {n})")
    w = np.random.default_rng(seed).standard_normal((n, n)) * (g / np.sqrt(n))

    def init(key, theta):
        return jax.random.normal(key, (theta.shape[0],), theta.dtype)

    def step(x, theta, key):
        x = jnp.tanh(theta @ x)
        return x, StepOut(loss=0.5 * jnp.mean(x**2))

    return System(
        init,
        step,
        name="rnn",
        theta=jnp.asarray(w, fdt),
        precision=_precision(fdt),
        horizon=100,
        description=f"tanh RNN, n={n}, gain g={g}",
        theta_doc="recurrent weights W (n x n)",
        loss_doc="0.5 mean(x_{t+1}^2)",
        metadata={"n": int(n), "g": g, "seed": seed},
    )
