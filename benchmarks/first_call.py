"""First-call latency (trace, compile and run in a fresh process, no persistent compile
cache) of chaosgrad's estimators against the same gradient written by hand.

Each case runs in its own process, ours and the hand-written baseline alternating, so
neither inherits the other's compiled programs or warm caches:

    .venv/bin/python benchmarks/first_call.py CASE ours|hand   # one process, prints JSON
    .venv/bin/python benchmarks/first_call.py rows spectrum-mjx --rounds 3   # rows alone

Cases:
  backprop-lopt: the backprop estimator (8 samples) on the learned optimizer (digits MLP
    task, MLP optimizer, float32) at T = 100, then a second horizon T = 50 in the same
    process, then T = 50 again (its compute alone). The baseline is
    ``jax.jit(jax.grad(...))`` of the samples' mean ``lax.scan`` meta-loss, one program per
    horizon.
  sweep-lopt: the same estimator with 2 samples at T = 8, 32, 128 and 256 in one process
    against four hand-written programs.
  diagnose-rnn: `chaosgrad.diagnose` on the default RNN (n = 64, horizons 10, 33, 100, 8
    seeds, 4 Lyapunov runs, k = 8, 41-point slices), against the same computations written
    by hand in JAX: a forward scan per seed, the QR Lyapunov spectrum by jvp (4 runs and the
    finite-time one), the gradient per seed at each horizon, the loss along a line at each
    horizon — nine jitted programs, no statistics.

  spectrum-mjx: `lyapunov_spectrum` on the MJX double pendulum (float64, all 4 exponents,
    100 transient + 200 counted steps) with the persistent compile cache already warm (a
    warm-up process per side fills it first): the fixed cost a second command pays for an
    MJX model. The baseline is the QR (Benettin) loop by jvp over the same step written by
    hand, one ``jax.jit`` of a ``lax.scan``, with the same cache.

`benchmarks/bench.py` calls `first_call_rows`, which runs the processes and returns rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
SWEEP = (8, 32, 128, 256)


def _system():
    from chaosgrad import systems

    return systems.make("lopt", task="digits_mlp", optimizer="mlp", dtype="float32")


def _scan_run(system, th, key, horizon):
    """(final state, per-step losses) of a ``horizon``-step run, a ``lax.scan`` by hand."""
    import jax.numpy as jnp
    from jax import lax

    from chaosgrad.system import loss_of, split_run_key, step_key

    k_init, k_steps = split_run_key(key)

    def body(s, t):
        s, out = system.step(s, th, step_key(k_steps, t))
        return s, loss_of(out)

    return lax.scan(body, system.init(k_init, th), jnp.arange(horizon))


def _hand(system, samples: int, horizon: int):
    """The gradient of the samples' mean T-step meta-loss, as a user writes it by hand."""
    import jax
    import jax.numpy as jnp

    def loss(th, k):
        return jnp.mean(_scan_run(system, th, k, horizon)[1])

    def grad(th, key):
        keys = jax.random.split(key, samples)
        return jax.grad(lambda t: jnp.mean(jax.vmap(lambda k: loss(t, k))(keys)))(th)

    return jax.jit(grad)


def _ours(system, samples: int, horizon: int):
    import jax

    from chaosgrad import estimators

    est = estimators.make("backprop", system, samples=samples, horizon=horizon)
    step = jax.jit(est.estimate)
    return lambda th, key: step(est.init(key, th), th, key)[0]


def _hand_diagnose(system, hs=(10, 33, 100), seeds=8, runs=4, k=8, points=41):
    """What `diagnose` computes on an array-state system, written by hand (no statistics,
    no report): returns the arrays, so every program runs."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from chaosgrad.system import split_run_key, step_key

    theta = system.theta
    hmax = max(hs)
    steps = max(50, -(-max(2000, 20 * hmax) // runs))

    def run_losses(th, key, horizon):
        return _scan_run(system, th, key, horizon)

    forward = jax.jit(jax.vmap(lambda k: run_losses(theta, k, hmax)))

    def lyapunov(key, transient, counted):
        k_init, k_steps = split_run_key(key)
        s0 = system.init(k_init, theta)
        q0 = jnp.eye(s0.shape[0], k, dtype=s0.dtype)

        def body(carry, t):
            s, q, acc = carry
            f = lambda x: system.step(x, theta, step_key(k_steps, t))[0]  # noqa: E731
            s2, tq = jax.vmap(lambda v: jax.jvp(f, (s,), (v,)), in_axes=1, out_axes=(None, 1))(q)
            q2, r = jnp.linalg.qr(tq)
            logs = jnp.log(jnp.abs(jnp.diagonal(r)))
            return (s2, q2, acc + jnp.where(t >= transient, logs, 0.0)), None

        (_, _, acc), _ = lax.scan(
            body, (s0, q0, jnp.zeros(k, s0.dtype)), jnp.arange(transient + counted)
        )
        return acc / counted

    lyap_runs = jax.jit(jax.vmap(lambda kk: lyapunov(kk, hmax, steps)))
    lyap_ft = jax.jit(jax.vmap(lambda kk: lyapunov(kk, 0, hmax)))
    grads = {
        h: jax.jit(
            jax.vmap(
                jax.grad(lambda th, kk, h=h: jnp.mean(run_losses(th, kk, h)[1])), in_axes=(None, 0)
            )
        )
        for h in hs
    }
    direction = jax.random.normal(jax.random.PRNGKey(3), theta.shape, theta.dtype)
    shifts = jnp.linspace(-1.0, 1.0, points, dtype=theta.dtype)
    slices = {
        h: jax.jit(
            jax.vmap(
                lambda a, kk, h=h: jnp.mean(run_losses(theta + a * direction, kk, h)[1]),
                in_axes=(0, None),
            )
        )
        for h in hs
    }
    key = jax.random.PRNGKey(0)
    keys = jax.random.split(key, seeds)
    out = [
        forward(keys),
        lyap_runs(jax.random.split(key, runs)),
        lyap_ft(jax.random.split(jax.random.fold_in(key, 10), 3)),
    ]
    out += [grads[h](theta, keys) for h in hs] + [slices[h](shifts, key) for h in hs]
    return out


MJX_STEPS, MJX_TRANSIENT = 200, 100


def _hand_spectrum(system, transient: int, counted: int):
    """The full Lyapunov spectrum of a pytree-state system by QR on jvp-pushed tangents of
    its flat phase, QR every step, one jitted scan (no convergence history, no checks)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from chaosgrad.system import split_run_key, step_key

    theta = system.theta
    k_init, k_steps = split_run_key(jax.random.PRNGKey(0))

    @jax.jit
    def run(k_init, k_steps):
        s0 = system.init(k_init, theta)
        p0, unflat = system.flat_phase(s0)
        n = p0.shape[0]

        def body(carry, t):
            s, q, acc = carry
            key = step_key(k_steps, t)

            def f(p):
                new = system.step(system.set_phase(s, unflat(p)), theta, key)[0]
                return system.flat_phase(new)[0], new

            p = system.flat_phase(s)[0]
            _, tq, s2 = jax.vmap(
                lambda v: jax.jvp(f, (p,), (v,), has_aux=True), in_axes=1, out_axes=(None, 1, None)
            )(q)
            q2, r = jnp.linalg.qr(tq)
            logs = jnp.log(jnp.abs(jnp.diagonal(r)))
            return (s2, q2, acc + jnp.where(t >= transient, logs, 0.0)), None

        carry = (s0, jnp.eye(n, dtype=p0.dtype), jnp.zeros(n, p0.dtype))
        (_, _, acc), _ = lax.scan(body, carry, jnp.arange(transient + counted))
        return acc / counted

    return run(k_init, k_steps)


def run_case(case: str, side: str) -> dict:
    """Seconds of each call of ``case`` on ``side`` ("ours" or "hand") in this process."""
    import jax

    if case == "spectrum-mjx":
        import chaosgrad
        from chaosgrad import systems
        from chaosgrad.config import enable_compilation_cache

        chaosgrad.enable_x64()
        enable_compilation_cache()  # both sides: the folder of $CHAOSGRAD_CACHE_DIR
        t = time.perf_counter()
        system = systems.make("mjx", model="double_pendulum")
        if side == "ours":
            from chaosgrad.lyapunov import lyapunov_spectrum

            lyapunov_spectrum(
                system, steps=MJX_STEPS, transient=MJX_TRANSIENT, k="all", progress=False
            )
        else:
            jax.block_until_ready(_hand_spectrum(system, MJX_TRANSIENT, MJX_STEPS))
        return {"case": case, "side": side, "plan": [], "seconds": [time.perf_counter() - t]}
    if case == "diagnose-rnn":
        from chaosgrad import diagnose, systems

        system = systems.make("rnn")
        t = time.perf_counter()
        if side == "ours":
            diagnose(system, progress=False)
        else:
            jax.block_until_ready(_hand_diagnose(system))
        return {"case": case, "side": side, "plan": [], "seconds": [time.perf_counter() - t]}
    build = _ours if side == "ours" else _hand
    system = _system()
    key = jax.random.PRNGKey(0)
    plan = [(8, 100), (8, 50), (8, 50)] if case == "backprop-lopt" else [(2, t) for t in SWEEP]
    seconds = []
    for samples, horizon in plan:
        t = time.perf_counter()
        jax.block_until_ready(build(system, samples, horizon)(system.theta, key))
        seconds.append(time.perf_counter() - t)
    return {"case": case, "side": side, "plan": plan, "seconds": seconds}


def _spawn(case: str, side: str, cache: str | None = None) -> dict:
    """Run one case in a fresh process: no persistent compile cache, or (``cache``) that
    cache folder."""
    if cache is None:
        env = dict(os.environ, CHAOSGRAD_NO_CACHE="1")
    else:
        env = dict(os.environ, CHAOSGRAD_CACHE_DIR=cache)
        env.pop("CHAOSGRAD_NO_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, __file__, case, side], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


CASES = ("backprop-lopt", "sweep-lopt", "diagnose-rnn", "spectrum-mjx")


def first_call_rows(rounds: int = 2, cases=CASES) -> list[dict]:
    """Rows for `bench.py`: per round one fresh process for ours and one for the baseline,
    alternating which goes first; ratios are medians over rounds (spread: min–max)."""
    import tempfile

    import numpy as np

    rows = []
    for case in cases:
        ours, hand = [], []
        with tempfile.TemporaryDirectory(prefix="chaosgrad-bench-cache-") as tmp:
            cache = tmp if case == "spectrum-mjx" else None
            if cache is not None:  # fill the cache: what a second command finds
                _spawn(case, "ours", cache)
                _spawn(case, "hand", cache)
            for r in range(rounds):
                for side in ("ours", "hand") if r % 2 == 0 else ("hand", "ours"):
                    (ours if side == "ours" else hand).append(_spawn(case, side, cache)["seconds"])
        ours, hand = np.array(ours), np.array(hand)
        if case == "backprop-lopt":
            first = ours[:, 0] / hand[:, 0]
            rows.append(
                _row(
                    first,
                    ours[:, 0],
                    hand[:, 0],
                    "first call: backprop estimator, lopt, T=100",
                    "jax.jit(jax.grad(lax.scan meta-loss)) by hand, fresh process",
                    "<= 1.5x",
                    lambda m: m <= 1.5,
                )
            )
            # A second horizon: what it costs beyond its own compute (the warm repeat).
            extra = (ours[:, 1] - ours[:, 2]) / ours[:, 0]
            rows.append(
                _row(
                    extra,
                    ours[:, 1] - ours[:, 2],
                    ours[:, 0],
                    "second horizon (T=50) beyond its compute / first call",
                    "our first call (T=100) in the same process",
                    "<= 0.1x",
                    lambda m: m <= 0.1,
                )
            )
            raw = ours[:, 1] / ours[:, 0]
            rows.append(
                _row(
                    raw,
                    ours[:, 1],
                    ours[:, 0],
                    "second horizon (T=50), compute included / first call",
                    "our first call (T=100) in the same process",
                    "(info)",
                    None,
                )
            )
            rows.append(
                _row(
                    hand[:, 1] / hand[:, 0],
                    hand[:, 1],
                    hand[:, 0],
                    "by hand: second horizon (T=50) / first call",
                    "the hand-written first call (T=100)",
                    "(info)",
                    None,
                )
            )
        elif case == "spectrum-mjx":
            rows.append(
                _row(
                    ours[:, 0] / hand[:, 0],
                    ours[:, 0],
                    hand[:, 0],
                    f"warm-cache call: spectrum, MJX double pendulum, float64, T={MJX_STEPS}",
                    "jvp-QR scan by hand, fresh process, same warm compile cache",
                    "<= 1.5x",
                    lambda m: m <= 1.5,
                )
            )
        elif case == "diagnose-rnn":
            rows.append(
                _row(
                    ours[:, 0] / hand[:, 0],
                    ours[:, 0],
                    hand[:, 0],
                    "first call: diagnose, RNN n=64 (defaults)",
                    "its nine computations by hand in JAX, fresh process",
                    "<= 1.5x",
                    lambda m: m <= 1.5,
                )
            )
        else:
            tot_o, tot_h = ours.sum(axis=1), hand.sum(axis=1)
            rows.append(
                _row(
                    tot_o / tot_h,
                    tot_o,
                    tot_h,
                    f"horizon sweep T={','.join(map(str, SWEEP))}, lopt, 2 samples",
                    "four jax.jit(jax.grad(...)) programs by hand, fresh process",
                    "(info)",
                    None,
                )
            )
    return rows


def _row(ratio, ours, base, figure, baseline, goal, ok) -> dict:
    import numpy as np

    med = float(np.median(ratio))
    return {
        "ours_s": float(np.median(ours)),
        "base_s": float(np.median(base)),
        "ratio": med,
        "q25": float(np.min(ratio)),
        "q75": float(np.max(ratio)),
        "rounds": len(ratio),
        "ours_each_s": [float(x) for x in np.ravel(ours)],
        "base_each_s": [float(x) for x in np.ravel(base)],
        "figure": figure,
        "baseline": baseline,
        "goal": goal,
        "ok": None if ok is None else bool(ok(med)),
    }


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))
    if sys.argv[1] == "rows":  # first_call.py rows CASE [CASE ...] [--rounds N]: rows as JSON
        args = sys.argv[2:]
        n = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 2
        names = [a for a in args if a in CASES]
        for row in first_call_rows(n, names):
            print(json.dumps(row))
    else:
        print(json.dumps(run_case(sys.argv[1], sys.argv[2])))
