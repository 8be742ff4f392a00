"""The influence-balancing task (Tallec & Ollivier 2017; the PES paper's Figure 4): a linear
system whose short-horizon and long-horizon influences of θ on the loss have opposite signs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_int
from chaosgrad.config import precision_name as _precision
from chaosgrad.config import resolve_dtype as _dtype
from chaosgrad.errors import InputError
from chaosgrad.system import StepOut, System


def influence_balancing(
    n: int = 23,
    positive: int = 10,
    theta: float = 0.0,
    horizon: int = 100,
    dtype: str | None = None,
) -> System:
    """s_{t+1} = A s_t + θ b with A = ½ I + ½ (superdiagonal), b = (+1 × ``positive``,
    −1 × the rest); s_0 = 0; per-step loss ℓ_t = ½ (s_{t+1}[0] − 1)²; θ a scalar.

    Coordinate k of b reaches s[0] after about 2k steps, so windows shorter than that see
    only the positive influences: truncated backprop's gradient has the wrong sign when
    the negative ones dominate (n − positive > positive). The state is linear in θ and the
    loss quadratic, so the Gaussian-smoothed loss has the same gradient as the loss. The
    system is deterministic (keys are ignored).
    """
    n = check_int(n, "influence_balancing n", lo=1)
    positive = check_int(positive, "influence_balancing positive", lo=0)
    horizon = check_int(horizon, "influence_balancing horizon", lo=1)
    if n < 1 or not 0 <= positive <= n:
        raise InputError(
            f"influence_balancing needs n >= 1 and 0 <= positive <= n, "
            f"got n={n}, positive={positive}"
        )
    fdt = _dtype(dtype)
    a = 0.5 * np.eye(n) + 0.5 * np.eye(n, k=1)
    b = np.where(np.arange(n) < positive, 1.0, -1.0)
    a_j, b_j = jnp.asarray(a, fdt), jnp.asarray(b, fdt)

    def init(key, th):
        return jnp.zeros(n, fdt)

    def step(s, th, key):
        s = a_j @ s + th * b_j
        return s, StepOut(loss=0.5 * (s[0] - 1.0) ** 2)

    return System(
        init,
        step,
        name="influence",
        theta=jnp.asarray(theta, fdt),
        precision=_precision(fdt),
        horizon=int(horizon),
        description=f"influence balancing, n={n}, positive={positive}",
        theta_doc="theta (scalar), the input gain",
        loss_doc="0.5 (s_{t+1}[0] - 1)^2",
        metadata={"n": n, "positive": positive, "A": "0.5 I + 0.5 superdiagonal"},
    )
