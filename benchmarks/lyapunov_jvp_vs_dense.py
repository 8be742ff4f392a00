"""Benchmark: matrix-free jvp-QR Lyapunov spectrum vs QR on dense per-step Jacobians.

Both compute the k leading exponents of the tanh RNN (n ≥ 512) over the same steps, in the
same process, after a warm-up that compiles each; prints seconds and the speed-up ratio.

    .venv/bin/python benchmarks/lyapunov_jvp_vs_dense.py --n 1024 --k 16 --steps 50
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from chaosgrad import systems
from chaosgrad.jacobian import phase_map
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.system import split_run_key


def dense_qr_spectrum(system, key, steps, k, chunk):
    """The baseline: build J_t densely (jacfwd) every step, then Q ← qr(J_t Q)."""
    theta = system.theta
    k_init, k_steps = split_run_key(key)
    state = system.init(k_init, theta)
    n = system.flat_phase(state)[0].shape[0]
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, 7), (n, k), state.dtype))

    @jax.jit
    def run(state, q, t0):
        def body(carry, i):
            s, q = carry
            f, x = phase_map(system, theta, s, k_steps, t0 + i)
            jac = jax.jacfwd(lambda xf: f(xf)[0])(x)
            q, r = jnp.linalg.qr(jac @ q)
            return (f(x)[1], q), jnp.log(jnp.abs(jnp.diagonal(r)))

        (s, q), logs = lax.scan(body, (state, q), jnp.arange(chunk))
        return s, q, logs.sum(0)

    total = jnp.zeros(k, state.dtype)
    for c in range(steps // chunk):
        state, q, s = run(state, q, c * chunk)
        total = total + s
    return np.asarray(total) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="RNN size (phase dimension)")
    ap.add_argument("--k", type=int, default=16, help="number of exponents")
    ap.add_argument("--steps", type=int, default=50, help="steps (a multiple of --chunk)")
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    system = systems.make("rnn", n=args.n, g=2.0, dtype="float32")
    key = jax.random.PRNGKey(0)

    def jvp_qr():
        return lyapunov_spectrum(
            system,
            key=key,
            steps=args.steps,
            k=args.k,
            transient=0,
            record_every=args.chunk,
            progress=False,
        ).exponents

    def dense_qr():
        return dense_qr_spectrum(system, key, args.steps, args.k, args.chunk)

    results = {}
    for name, fn in [("jvp-QR (matrix-free)", jvp_qr), ("dense-Jacobian QR", dense_qr)]:
        t = time.perf_counter()
        exps = fn()  # compiles
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        results[name] = {"first_call_s": first, "best_s": min(times), "exponents": exps}
    a, b = results["jvp-QR (matrix-free)"], results["dense-Jacobian QR"]
    agree = float(np.max(np.abs(a["exponents"] - b["exponents"])))
    print(
        f"tanh RNN n={args.n}, g=2, float32, k={args.k}, {args.steps} steps, "
        f"{jax.default_backend()} ({jax.device_count()} device)"
    )
    print(f"{'method':<24}{'first call (s)':>16}{'best of ' + str(args.repeats) + ' (s)':>16}")
    for name, r in results.items():
        print(f"{name:<24}{r['first_call_s']:>16.3f}{r['best_s']:>16.3f}")
    print(
        f"speed-up of jvp-QR over dense QR: {b['best_s'] / a['best_s']:.1f}x "
        f"(max |difference| of the {args.k} exponents: {agree:.2e})"
    )
    print(
        json.dumps(
            {
                "n": args.n,
                "k": args.k,
                "steps": args.steps,
                "jvp_qr_s": a["best_s"],
                "dense_qr_s": b["best_s"],
                "ratio": b["best_s"] / a["best_s"],
                "max_abs_diff": agree,
            }
        )
    )


if __name__ == "__main__":
    main()
