"""Brax: compile vs run seconds of unrolls and gradients, and gradient growth vs Lyapunov.

Not run in CI. Example: python benchmarks/brax_gradients.py --env inverted_pendulum --seeds 4
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import chaosgrad
from chaosgrad import systems
from chaosgrad.gradients import gradient_growth
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.unroll import unroll, unroll_grad


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, time.perf_counter() - t


def main(argv=None) -> dict:
    """Measure one (env, backend): build, unroll/grad compile and run, growth, Lyapunov."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--env", default="inverted_pendulum")
    p.add_argument("--backend", default="generalized")
    p.add_argument("--horizons", default="10,30,100")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--lyap-steps", type=int, default=50)
    p.add_argument("--float64", action="store_true")
    a = p.parse_args(argv)
    if a.float64:
        chaosgrad.enable_x64()
    horizons = [int(h) for h in a.horizons.split(",")]
    out = {"env": a.env, "backend": a.backend, "device": jax.default_backend()}
    sy, out["build_s"] = _timed(lambda: systems.make("brax", env=a.env, backend=a.backend))
    key = jax.random.PRNGKey(0)
    h = max(horizons)
    # first call = compile + run; second = run only (same compiled chunk)
    _, t1 = _timed(lambda: unroll(sy, sy.theta, key, h, chunk=a.chunk).losses)
    _, t2 = _timed(lambda: unroll(sy, sy.theta, key, h, chunk=a.chunk).losses)
    out["unroll"] = {"steps": h, "first_s": t1, "run_s": t2, "compile_s": t1 - t2}
    _, t1 = _timed(lambda: unroll_grad(sy, sy.theta, key, h, chunk=a.chunk).grad)
    g, t2 = _timed(lambda: unroll_grad(sy, sy.theta, key, h, chunk=a.chunk).grad)
    out["grad"] = {
        "steps": h,
        "first_s": t1,
        "run_s": t2,
        "compile_s": t1 - t2,
        "norm": float(
            np.sqrt(
                sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree_util.tree_leaves(g))
            )
        ),
    }
    gg = gradient_growth(sy, horizons=horizons, seeds=a.seeds, key=key, chunk=a.chunk)
    out["growth"] = {
        k: gg.to_json()[k]
        for k in ("horizons", "geomean_norm", "nonfinite_fraction", "growth_rate", "units")
    }
    out["growth"]["seconds"] = gg.seconds
    print(json.dumps(out), flush=True)  # partial results, in case the spectrum fails
    ly = lyapunov_spectrum(
        sy, key=key, steps=a.lyap_steps, k=1, transient=0, record_every=a.lyap_steps
    )
    out["lyapunov_from_start"] = {
        "steps": a.lyap_steps,
        "lambda1": float(ly.exponents[0]),
        "units": ly.units,
        "seconds": ly.seconds,
    }
    out["system"] = sy.describe()
    print(json.dumps(out, indent=1), flush=True)
    return out


if __name__ == "__main__":
    main()
