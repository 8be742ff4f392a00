"""Gradient growth ‖∂L_T/∂D‖ versus the leading Lyapunov exponent for the jax-md packing,
with compile and run times. Run: ``PYTHONPATH=$PWD python benchmarks/md_growth.py``.
"""

import json
import time

import jax

jax.config.update("jax_enable_x64", True)

from chaosgrad.systems.md import md_system  # noqa: E402

from chaosgrad.gradients import gradient_growth  # noqa: E402
from chaosgrad.spectra import lyapunov_spectrum  # noqa: E402
from chaosgrad.unroll import unroll, unroll_grad  # noqa: E402

CASES = [  # (mode, D, horizons)
    ("fire", 0.6, [10, 30, 100]),
    ("fire", 0.1, [10, 30, 100]),
    ("nve", 0.6, [10, 30, 100]),
    ("nve", 0.6, [100, 300, 1000]),
]


def timings(mode: str) -> dict:
    """Seconds: first call (compile + run) and second call (run) of 100-step unrolls/grads."""
    s = md_system(mode, dtype="float64")
    out = {}
    for name, fn in (
        ("unroll_100", lambda: unroll(s, steps=100).state.position),
        ("grad_100", lambda: unroll_grad(s, steps=100).grad),
    ):
        for label in ("first", "second"):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            out[f"{name}_{label}_s"] = round(time.perf_counter() - t, 4)
    return out


def main() -> None:
    """Print one JSON line per case and per mode's timings."""
    for mode, d, hs in CASES:
        s = md_system(mode, d_small=d, dtype="float64")
        g = gradient_growth(s, horizons=hs, seeds=4)
        lyap = lyapunov_spectrum(
            s, key=jax.random.PRNGKey(0), steps=max(hs), transient=0, k=4, record_every=max(hs)
        )
        print(
            json.dumps(
                {
                    "mode": mode,
                    "d_small": d,
                    "horizons": hs,
                    "geomean_norm": [float(x) for x in g.geomean_norm],
                    "growth_rate": g.growth_rate,
                    "variance_rate": g.variance_rate,
                    # over the same steps as the longest unroll, from the start (FIRE is not
                    # stationary); the largest of 4 QR exponents is less sensitive to the random
                    # initial tangent vector than a single one over so few steps
                    "lyapunov_1": float(lyap.exponents.max()),
                    "units": g.units,
                }
            )
        )
    for mode in ("fire", "nve", "nvt", "brownian"):
        print(json.dumps({"mode": mode, "n": 32, "float64": True, **timings(mode)}))


if __name__ == "__main__":
    main()
