"""Benchmark: seconds per estimate and unroll steps per second of every estimator, against a
plain forward unroll of the same population for the same steps (the ratio is the overhead).

    PYTHONPATH=. python benchmarks/estimators.py [--n 32] [--horizon 100] [--window 10]
        [--population 16] [--reps 20] [--dtype float32] [--json]

Population: samples (backprop), particles (tbptt), 2 × pairs (es, tes, pes, combined).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `estimators` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def _time(fn, reps):
    out = fn()  # compile and warm up
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_seconds(system, theta, population, steps, reps):
    """Median seconds of a jitted, vmapped forward unroll of ``population`` runs."""
    from chaosgrad.unroll import pure_unroll

    @jax.jit
    def run(key):
        def one(k):
            _, losses = pure_unroll(system, theta, k, steps)
            return jnp.mean(losses)

        return jax.vmap(one)(jax.random.split(key, population))

    return _time(lambda: run(jax.random.PRNGKey(0)), reps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="RNN width")
    p.add_argument("--g", type=float, default=1.5, help="RNN gain")
    p.add_argument("--horizon", type=int, default=100, help="T of full unrolls / inner runs")
    p.add_argument("--window", type=int, default=10, help="K of truncated estimators")
    p.add_argument("--population", type=int, default=16, help="inner runs per estimate (even)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    from chaosgrad import estimators, systems

    system = systems.make("rnn", n=args.n, g=args.g, dtype=args.dtype)
    theta = system.theta
    pop, pairs = args.population, args.population // 2
    configs = {
        "backprop": {"samples": pop, "horizon": args.horizon},
        "tbptt": {"particles": pop, "window": args.window, "horizon": args.horizon},
        "es": {"pairs": pairs, "horizon": args.horizon},
        "tes": {"pairs": pairs, "window": args.window, "horizon": args.horizon},
        "pes": {"pairs": pairs, "window": args.window, "horizon": args.horizon},
        "combined": {"pairs": pairs, "horizon": args.horizon},
    }
    rows = []
    fwd_cache = {}
    for name, kw in configs.items():
        est = estimators.make(name, system, **kw)
        state = jax.jit(est.init)(jax.random.PRNGKey(0), theta)
        f = jax.jit(est.estimate)
        _, _, info = f(state, theta, jax.random.PRNGKey(1))
        steps = int(info["steps"])
        per_run = steps // pop
        sec = _time(lambda f=f, state=state: f(state, theta, jax.random.PRNGKey(1))[0], args.reps)
        if per_run not in fwd_cache:
            fwd_cache[per_run] = forward_seconds(system, theta, pop, per_run, args.reps)
        fwd = fwd_cache[per_run]
        rows.append(
            {
                "estimator": name,
                "population": pop,
                "steps_per_estimate": steps,
                "seconds_per_estimate": sec,
                "steps_per_second": steps / sec,
                "forward_seconds": fwd,
                "forward_steps_per_second": steps / fwd,
                "overhead": sec / fwd,
            }
        )
    meta = {
        "system": system.describe(),
        "window": args.window,
        "population": pop,
        "reps": args.reps,
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return 0
    print(
        f"# {meta['system']['description']}, T={args.horizon}, K={args.window}, "
        f"population {pop}, {args.dtype}, {meta['device']}, median of {args.reps}"
    )
    head = (
        f"{'estimator':<10}{'steps/est':>10}{'s/estimate':>12}{'steps/s':>12}"
        f"{'fwd s':>11}{'fwd steps/s':>13}{'overhead':>10}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['estimator']:<10}{r['steps_per_estimate']:>10}"
            f"{r['seconds_per_estimate']:>12.3e}{r['steps_per_second']:>12.3e}"
            f"{r['forward_seconds']:>11.3e}{r['forward_steps_per_second']:>13.3e}"
            f"{r['overhead']:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
