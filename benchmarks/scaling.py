"""Scaling, not just points: estimator cost against population size and state size, and
unroll / unroll_grad cost against the horizon T, with the memory unroll_grad keeps.

    .venv/bin/python benchmarks/scaling.py [--out benchmarks/results] [--reps 5]

Writes ``scaling.png`` and ``scaling.json``. Each point is the median of ``--reps`` timed
calls after a compiling warm-up (float32, tanh RNN g = 1.5). Expected shapes: estimator cost
linear in the population once it dominates fixed costs; PES and ES cost ∝ n² (θ = W has n²
entries: noise and the per-member matmuls both scale with it); unroll and unroll_grad linear
in T, unroll_grad's kept memory linear in T until the residual budget, then one state per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def median_seconds(fn, reps: int) -> float:
    """Median wall-clock seconds of ``reps`` calls after one warm-up (compile) call."""
    jax.block_until_ready(fn())
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def estimator_seconds(name: str, n: int, members: int, reps: int) -> float:
    from chaosgrad import estimators, systems

    system = systems.make("rnn", n=n, g=1.5, dtype="float32")
    kw = {"particles": members} if name == "tbptt" else {"pairs": members // 2}
    if name != "es":
        kw["window"] = 10
    est = estimators.make(name, system, horizon=100, **kw)
    state = jax.jit(est.init)(jax.random.PRNGKey(0), system.theta)
    f = jax.jit(est.estimate)
    return median_seconds(lambda: f(state, system.theta, jax.random.PRNGKey(1))[0], reps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(_HERE / "results"))
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    from chaosgrad import systems
    from chaosgrad.system import split_run_key
    from chaosgrad.unroll import GRAD_CHUNK, _residual_bytes, unroll, unroll_grad

    res = {"population": {}, "state": {}, "horizon": {}}
    pops = [8, 16, 32, 64, 128, 256]
    for name in ("pes", "tes", "tbptt"):
        res["population"][name] = [estimator_seconds(name, 64, m, a.reps) for m in pops]
        print(name, "population", res["population"][name], flush=True)
    ns = [32, 64, 128, 256, 512, 1024]
    for name in ("pes", "tbptt"):
        res["state"][name] = [estimator_seconds(name, n, 16, a.reps) for n in ns]
        print(name, "n", res["state"][name], flush=True)
    ts = [100, 1000, 10_000, 100_000]
    s = systems.make("rnn", n=64, g=1.5, dtype="float32")
    key = jax.random.PRNGKey(0)
    k_init, k_steps = split_run_key(key)
    x0 = s.init(k_init, s.theta)
    fwd, grad, mem = [], [], []
    for t in ts:
        fwd.append(median_seconds(lambda t=t: unroll(s, key=key, steps=t).losses, a.reps))
        grad.append(median_seconds(lambda t=t: unroll_grad(s, key=key, steps=t).grad, a.reps))
        chunk = min(t, GRAD_CHUNK)
        mem.append(_residual_bytes(s, s.theta, x0, k_steps, chunk, False) * -(-t // chunk))
        print("T", t, fwd[-1], grad[-1], mem[-1], flush=True)
    res["horizon"] = {"T": ts, "unroll": fwd, "unroll_grad": grad, "residual_bytes": mem}
    res["meta"] = {
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "populations": pops,
        "n": ns,
        "reps": a.reps,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, ys in res["population"].items():
        ax[0].loglog(pops, np.array(ys) * 1e3, "o-", label=name)
    ax[0].set(
        xlabel="population (members)",
        ylabel="ms per estimate",
        title="estimators vs population (n=64, K=10)",
    )
    for name, ys in res["state"].items():
        ax[1].loglog(ns, np.array(ys) * 1e3, "o-", label=name)
    ax[1].loglog(
        ns,
        np.array(ns, float) ** 2 / ns[-1] ** 2 * res["state"]["pes"][-1] * 1e3,
        "k:",
        label="∝ n²",
    )
    ax[1].set(
        xlabel="RNN width n (θ has n² entries)",
        ylabel="ms per estimate",
        title="estimators vs state size (16 members)",
    )
    ax[2].loglog(ts, np.array(fwd) * 1e3, "o-", label="unroll")
    ax[2].loglog(ts, np.array(grad) * 1e3, "o-", label="unroll_grad")
    ax[2].loglog(ts, np.array(ts, float) / ts[-1] * grad[-1] * 1e3, "k:", label="∝ T")
    ax[2].set(xlabel="horizon T", ylabel="ms", title="unroll vs T (n=64)")
    axm = ax[2].twinx()
    axm.loglog(ts, np.array(mem) / 2**20, "s--", color="gray", label="kept residuals (MB)")
    axm.set_ylabel("MB kept by unroll_grad")
    for x in ax:
        x.legend(fontsize=8)
    axm.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"chaosgrad scaling, {jax.default_backend()} float32 ({res['meta']['date']}, "
        "shared 2-core CPU)",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "scaling.png", dpi=110)
    (out / "scaling.json").write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out / "scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
