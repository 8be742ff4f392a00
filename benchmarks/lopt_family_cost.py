"""Microseconds per inner step of the task family (Adam, batch 32, CPU): single members, the
unpadded digits MLP for comparison, and vmapped particles that draw any member.

    .venv/bin/python benchmarks/lopt_family_cost.py [--steps 200] [--particles 8]

Prints one line per case; docs/lopt_family.md records a run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from chaosgrad.systems.lopt import family
from chaosgrad.systems.lopt.optimizers import adam
from chaosgrad.systems.lopt.tasks import digits_mlp
from chaosgrad.systems.lopt.training import LoptState, inner_step

MEMBERS = (
    "mlp/digits/w32/d2/relu",
    "mlp/iris/w8/d1/tanh",
    "conv/digits/c8/relu",
    "quad/d16/k1000/n0.1",
    "rnn/memory/h16/a0.8",
)


def scan_runner(tk, steps, consts_fn):
    opt = adam()
    theta = opt.init_theta(None)

    def run(key):
        kc, kp, ks = jax.random.split(key, 3)
        consts = consts_fn(kc)
        params = tk.init(kp, consts)
        s = LoptState(params, opt.init(params, theta), jnp.zeros((), jnp.int32), kc, consts)

        def body(s, k):
            s, lt, _ = inner_step(tk, opt, s, theta, k)
            return s, lt

        return jax.lax.scan(body, s, jax.random.split(ks, steps))[1]

    return run


def timed(f, *args, reps=3):
    jax.block_until_ready(f(*args))  # compile
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    key = jax.random.PRNGKey(0)
    tk = family.family_task("all", batch_size=a.batch)
    names = [m["name"] for m in family.members()]

    ref = digits_mlp(hidden=32, depth=2, batch_size=a.batch)
    f = jax.jit(scan_runner(ref, a.steps, lambda k: {}))
    print(f"unpadded digits MLP (64-32-32-10): {1e6 * timed(f, key) / a.steps:8.1f} us/step")
    for name in MEMBERS:
        i = names.index(name)
        f = jax.jit(scan_runner(tk, a.steps, lambda k, i=i: family.member_consts(i, k)))
        print(f"family member {name:28s}: {1e6 * timed(f, key) / a.steps:8.1f} us/step")
    sample = family.family_task("meta_train", batch_size=a.batch).sample
    f = jax.jit(jax.vmap(scan_runner(tk, a.steps, sample)))
    keys = jax.random.split(key, a.particles)
    t = timed(f, keys)
    print(
        f"{a.particles} vmapped particles, any member: {1e6 * t / a.steps:8.1f} us/step "
        f"({1e6 * t / a.steps / a.particles:.1f} per particle)"
    )


if __name__ == "__main__":
    main()
