"""`make bench`: one table of chaosgrad's costs against hand-written baselines and evosax.

Every row times ours and its baseline in the same process, interleaved (A, B, A, B, ...)
over ``--rounds`` rounds after a warm-up call that compiles both; the ratio is the median
of the per-round ratios, with its spread (25th–75th percentile). Baselines are written the
way a careful user would write them by hand: per-member θ for populations, no random-
number setup inside a forward baseline, one jitted function.

    .venv/bin/python benchmarks/bench.py [--rounds 9] [--quick] [--out benchmarks/results]

evosax (0.3.2, the `bench` extra) is the peer for PES: the same inner problem (the tanh
RNN's window of K steps, per-member θ) runs under both, and both estimates are checked
against the exact gradient before they are timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
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
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

PAIRS, K, SIGMA, T_INNER = 8, 10, 0.01, 100


def interleaved(ours, base, rounds: int):
    """Per-round (ours, baseline) seconds, alternating the two; compile excluded (three
    warm-up calls each: the first compiles, the others settle allocations and caches)."""
    for _ in range(3):
        jax.block_until_ready(ours())
        jax.block_until_ready(base())
    a, b = [], []
    for r in range(rounds):
        for fn, out in ((ours, a), (base, b)) if r % 2 == 0 else ((base, b), (ours, a)):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t)
    return np.array(a), np.array(b)


def summarise(a, b, speedup: bool = False) -> dict:
    """Median ours/baseline ratio (baseline/ours for a speed-up) and its 25–75% spread."""
    r = (b / a) if speedup else (a / b)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {
        "ours_s": float(np.median(a)),
        "base_s": float(np.median(b)),
        "ratio": float(med),
        "q25": float(q1),
        "q75": float(q3),
        "rounds": len(r),
    }


# -- the inner problem: a window of K steps of the tanh RNN, per-member θ ----------------------
def rnn_window(w, x):
    """K steps of x → tanh(W x); the window loss is the mean of ½ mean(x²) (as `systems.rnn`)."""

    def body(x, _):
        x = jnp.tanh(w @ x)
        return x, 0.5 * jnp.mean(x**2)

    x, losses = lax.scan(body, x, None, length=K)
    return x, jnp.mean(losses)


def make_floor(n: int, noise: bool):
    """The floor of a population estimate: draw the 8 θ-sized perturbations (one normal
    draw) and run the 16 members' windows with their own θ ± ε, vmapped (no noise: θ)."""

    @jax.jit
    def floor(theta, x, key):
        if noise:
            eps = SIGMA * jax.random.normal(key, (PAIRS,) + theta.shape, theta.dtype)
            thetas = jnp.concatenate([theta + eps, theta - eps])
        else:
            thetas = jnp.broadcast_to(theta, (2 * PAIRS,) + theta.shape)
        return jax.vmap(rnn_window)(thetas, x)

    return floor


def make_tbptt_by_hand(n: int):
    """What `jax.grad` through the same 16 windows costs written by hand (shared θ)."""

    def loss(theta, x):
        xs, ls = jax.vmap(rnn_window, in_axes=(None, 0))(theta, x)
        return jnp.mean(ls), xs

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def estimator_rows(n: int, rounds: int, names=("pes", "tes", "tbptt", "es")) -> list[dict]:
    from chaosgrad import estimators, systems

    system = systems.make("rnn", n=n, g=1.5, dtype="float32")
    theta = system.theta
    x = jax.random.normal(jax.random.PRNGKey(3), (2 * PAIRS, n), jnp.float32)
    key = jax.random.PRNGKey(1)
    rows = []
    for name in names:
        if name == "tbptt":
            est = estimators.make(name, system, particles=2 * PAIRS, window=K, horizon=T_INNER)
        elif name == "es":
            est = estimators.make(name, system, pairs=PAIRS, horizon=T_INNER)
        else:
            est = estimators.make(name, system, pairs=PAIRS, window=K, horizon=T_INNER)
        state = jax.jit(est.init)(jax.random.PRNGKey(0), theta)
        f = jax.jit(est.estimate)

        def ours(f=f, state=state):
            return f(state, theta, key)[0]

        if name == "tbptt":
            hand = make_tbptt_by_hand(n)
            bare = make_floor(n, noise=False)
            a, b = interleaved(ours, lambda g=bare: g(theta, x, key), rounds)
            rows.append(
                dict(
                    summarise(a, b),
                    figure=f"tbptt estimate, RNN n={n}, 16 particles, K=10",
                    baseline="bare vmapped scan of the 16 windows",
                    goal="<= 4x",
                    ok=None,
                )
            )
            rows[-1]["ok"] = rows[-1]["ratio"] <= 4.0
            a, b = interleaved(ours, lambda g=hand: g(theta, x), rounds)
            rows.append(
                dict(
                    summarise(a, b),
                    figure=f"tbptt estimate, RNN n={n}",
                    baseline="jax.grad through the same 16 windows by hand",
                    goal="(info)",
                    ok=None,
                )
            )
            continue
        if name == "es":
            floor_t = make_es_floor(n)
            a, b = interleaved(ours, lambda g=floor_t: g(theta, x, key), rounds)
            figure = f"es estimate, RNN n={n}, 8 pairs, T={T_INNER}"
            baseline = f"floor: 8 perturbations + bare vmapped {T_INNER}-step scan"
        else:
            floor = make_floor(n, noise=True)
            a, b = interleaved(ours, lambda g=floor: g(theta, x, key), rounds)
            figure = f"{name} estimate, RNN n={n}, 8 pairs, K={K}"
            baseline = "floor: 8 perturbations + bare vmapped scan of 16 members"
        row = dict(summarise(a, b), figure=figure, baseline=baseline, goal="<= 1.2x")
        row["ok"] = row["ratio"] <= 1.2
        rows.append(row)
    return rows


def make_es_floor(n: int):
    @jax.jit
    def floor(theta, x, key):
        eps = SIGMA * jax.random.normal(key, (PAIRS,) + theta.shape, theta.dtype)
        thetas = jnp.concatenate([theta + eps, theta - eps])

        def run(w, x0):
            def body(x, _):
                x = jnp.tanh(w @ x)
                return x, 0.5 * jnp.mean(x**2)

            return jnp.mean(lax.scan(body, x0, None, length=T_INNER)[1])

        return jax.vmap(run)(thetas, x)

    return floor


# -- evosax's PersistentES on the same inner problem -------------------------------------------
def evosax_pes(n: int):
    """evosax 0.3's PersistentES driving the RNN windows: (init, step) where step is one
    ask → 16 windows with per-member θ → tell, and the gradient it applied (SGD, lr 1)."""
    import optax
    from evosax.algorithms import PersistentES

    solution = jnp.zeros((n, n), jnp.float32)
    es = PersistentES(
        population_size=2 * PAIRS,
        solution=solution,
        optimizer=optax.sgd(1.0),
        std_schedule=optax.constant_schedule(SIGMA),
    )
    params = es.default_params.replace(T=T_INNER, K=K)

    def init(key, theta, x0):
        state = es.init(key, theta, params)
        return state, x0

    def step(carry, key, x_reset):
        state, x = carry
        pop, state = es.ask(key, state, params)
        x, fitness = jax.vmap(rnn_window)(pop, x)
        mean_before = state.mean
        state, _ = es.tell(key, pop, fitness, state, params)
        # The inner runs end together when evosax resets its accumulated noise.
        x = jnp.where(state.inner_step_counter == 0, x_reset, x)
        return (state, x), (mean_before - state.mean).reshape(n, n)

    return init, step


def agreement(rounds_runs: int = 2000, n: int = 6) -> dict:
    """Both PES implementations against the exact gradient on a small, deterministic copy of
    the inner problem (fixed x0, non-chaotic g = 0.9, T = 20, K = 5 → 4 windows per run):
    the mean over runs of each run's average window estimate vs jax.grad of the T-step loss.
    """
    from chaosgrad import estimators, systems
    from chaosgrad.system import System
    from chaosgrad.unroll import unrolled_loss

    global K, T_INNER
    saved = K, T_INNER
    K, T_INNER = 5, 20
    try:
        base = systems.make("rnn", n=n, g=0.9, dtype="float32")
        x0 = jax.random.normal(jax.random.PRNGKey(5), (n,), jnp.float32)
        fixed = System(
            lambda key, th: x0, base.step, name="rnn-fixed-x0", theta=base.theta, horizon=T_INNER
        )
        theta = base.theta
        exact = np.asarray(
            jax.grad(lambda th: unrolled_loss(fixed, th, jax.random.PRNGKey(0), T_INNER))(theta),
            np.float64,
        )
        windows = T_INNER // K
        # ours: synchronised particles (stagger=False) like evosax's
        est = estimators.make(
            "pes",
            fixed,
            pairs=PAIRS,
            sigma=SIGMA,
            window=K,
            horizon=T_INNER,
            stagger=False,
            shard=False,
        )
        init = jax.jit(jax.vmap(est.init, in_axes=(0, None)))
        step = jax.jit(jax.vmap(est.estimate, in_axes=(0, None, 0)))
        keys = jax.random.split(jax.random.PRNGKey(11), rounds_runs)
        st = init(keys, theta)
        total = 0
        for w in range(windows):
            g, st, _ = step(st, theta, jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, w))
            total = total + np.asarray(g, np.float64)
        ours = total / windows
        # evosax
        e_init, e_step = evosax_pes(n)
        xr = jnp.broadcast_to(x0, (2 * PAIRS, n))
        ekeys = jax.random.split(jax.random.PRNGKey(12), rounds_runs)
        carry = jax.jit(jax.vmap(lambda k: e_init(k, theta, xr)))(ekeys)
        vstep = jax.jit(jax.vmap(e_step, in_axes=(0, 0, None)))
        acc = 0
        for w in range(windows):
            carry, g = vstep(carry, jax.vmap(jax.random.fold_in, in_axes=(0, None))(ekeys, w), xr)
            acc = acc + np.asarray(g, np.float64)
        theirs = acc / windows

        def rel(samples):
            m = samples.mean(axis=0)
            err = float(np.linalg.norm(m - exact) / np.linalg.norm(exact))
            se = float(
                np.linalg.norm(samples.std(axis=0, ddof=1))
                / np.sqrt(len(samples))
                / np.linalg.norm(exact)
            )
            return err, se

        (eo, so), (ee, se) = rel(ours), rel(theirs)
        return {
            "n": n,
            "runs": rounds_runs,
            "ours_rel_err": eo,
            "ours_rel_se": so,
            "evosax_rel_err": ee,
            "evosax_rel_se": se,
            "ok": bool(eo <= 3 * so + 0.02 and ee <= 3 * se + 0.02),
        }
    finally:
        K, T_INNER = saved


def evosax_rows(n: int, rounds: int) -> list[dict]:
    from chaosgrad import estimators, systems

    system = systems.make("rnn", n=n, g=1.5, dtype="float32")
    theta = system.theta
    est = estimators.make("pes", system, pairs=PAIRS, sigma=SIGMA, window=K, horizon=T_INNER)
    state = jax.jit(est.init)(jax.random.PRNGKey(0), theta)
    f = jax.jit(est.estimate)
    e_init, e_step = evosax_pes(n)
    e_step = jax.jit(e_step)
    x0 = jax.random.normal(jax.random.PRNGKey(3), (2 * PAIRS, n), jnp.float32)
    carry = e_init(jax.random.PRNGKey(0), theta.reshape(n, n), x0)
    key = jax.random.PRNGKey(1)
    a, b = interleaved(lambda: f(state, theta, key)[0], lambda: e_step(carry, key, x0)[1], rounds)
    row = dict(
        summarise(a, b),
        figure=f"pes estimate vs evosax PersistentES, n={n}",
        baseline="evosax 0.3.2 ask + same 16 windows + tell",
        goal="< 1x",
    )
    row["ok"] = row["ratio"] < 1.0
    return [row]


# -- unroll and its gradient --------------------------------------------------------------------
def unroll_rows(rounds: int, n: int = 256, steps: int = 1000) -> list[dict]:
    from chaosgrad import systems
    from chaosgrad.unroll import unroll, unroll_grad, unrolled_loss

    s = systems.make("rnn", n=n, g=1.5, dtype="float32")
    theta, key = s.theta, jax.random.PRNGKey(0)
    x0 = s.init(jax.random.split(key)[0], theta)

    @jax.jit
    def hand(theta, x):
        def body(x, _):
            x = jnp.tanh(theta @ x)
            return x, 0.5 * jnp.mean(x**2)

        x, losses = lax.scan(body, x, None, length=steps)
        return x, losses, jnp.mean(losses)

    grad = jax.jit(jax.grad(lambda th, k: unrolled_loss(s, th, k, steps)))

    def by_hand():
        # The same results in the same place as `unroll`: losses and meta-loss on the host.
        x, losses, meta = hand(theta, x0)
        return x, np.asarray(losses), np.asarray(meta)

    a, b = interleaved(lambda: unroll(s, theta, key, steps).losses, by_hand, rounds)
    r1 = dict(
        summarise(a, b),
        figure=f"unroll, RNN n={n}, T={steps}",
        baseline="jitted lax.scan by hand from the same x0, losses fetched to numpy",
        goal="<= 1.05x",
    )
    r1["ok"] = r1["ratio"] <= 1.05
    a, b = interleaved(
        lambda: unroll_grad(s, theta, key, steps).grad, lambda: grad(theta, key), rounds
    )
    r2 = dict(
        summarise(a, b),
        figure=f"unroll_grad, RNN n={n}, T={steps}",
        baseline="jitted jax.grad(unrolled_loss)",
        goal="<= 1.1x",
    )
    r2["ok"] = r2["ratio"] <= 1.1
    return [r1, r2]


def lopt_rows(rounds: int, steps: int) -> list[dict]:
    from chaosgrad import systems
    from chaosgrad.unroll import unroll, unroll_grad

    s = systems.make("lopt", task="digits_mlp", optimizer="mlp", dtype="float32")
    theta, key = s.theta, jax.random.PRNGKey(0)
    a, b = interleaved(
        lambda: unroll_grad(s, theta, key, steps).grad,
        lambda: unroll(s, theta, key, steps).losses,
        rounds,
    )
    row = dict(
        summarise(a, b),
        figure=f"backprop/forward, lopt digits MLP + MLP optimizer, T={steps}",
        baseline="unroll (forward) of the same steps",
        goal="<= 4x",
    )
    row["ok"] = row["ratio"] <= 4.0
    return [row]


def lyapunov_rows(
    rounds: int, n: int, k: int, steps: int, goal: float, every_step_too: bool = False
) -> list[dict]:
    sys.path.insert(0, str(_HERE))
    from lyapunov_jvp_vs_dense import dense_qr_spectrum

    from chaosgrad import systems
    from chaosgrad.spectra import lyapunov_spectrum

    system = systems.make("rnn", n=n, g=2.0, dtype="float32")
    key = jax.random.PRNGKey(0)
    # A short transient lets the QR interval be chosen from the measured growth, as a user
    # gets by default; both sides then time the same `steps` counted steps.
    res = lyapunov_spectrum(
        system, key=key, steps=steps, k=k, transient=100, record_every=steps, progress=False
    )
    every = res.qr_every

    def ours():
        return lyapunov_spectrum(
            system,
            key=key,
            steps=steps,
            k=k,
            transient=0,
            record_every=steps,
            qr_every=every,
            progress=False,
        ).exponents

    def dense():
        return dense_qr_spectrum(system, key, steps, k, steps)

    a, b = interleaved(ours, dense, rounds)
    row = dict(
        summarise(a, b, speedup=True),
        figure=f"lyapunov_spectrum k={k}, n={n} (QR every {every})",
        baseline="QR of dense jacfwd Jacobians, every step",
        goal=f">= {goal:.0f}x",
    )
    row["ok"] = row["ratio"] >= goal
    rows = [row]
    if every_step_too:  # what re-orthonormalising every m steps is worth, for the record

        def ours_every_step():
            return lyapunov_spectrum(
                system,
                key=key,
                steps=steps,
                k=k,
                transient=0,
                record_every=steps,
                qr_every=1,
                progress=False,
            ).exponents

        a, b = interleaved(ours_every_step, dense, rounds)
        rows.append(
            dict(
                summarise(a, b, speedup=True),
                figure=f"lyapunov_spectrum k={k}, n={n} (QR every step)",
                baseline="QR of dense jacfwd Jacobians, every step",
                goal="(info)",
                ok=None,
            )
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="estimators and unroll rows only")
    p.add_argument("--lopt-steps", type=int, default=1000)
    p.add_argument("--out", default=str(_HERE / "results"))
    a = p.parse_args(argv)
    rows = []
    check = None
    for n in (256, 32):
        rows += estimator_rows(n, a.rounds, ("pes", "tes", "tbptt", "es") if n == 256 else ("pes",))
    try:
        import evosax  # noqa: F401
    except ImportError:
        print(
            "evosax is not installed (pip install '.[bench]'): skipping its rows", file=sys.stderr
        )
    else:
        check = agreement()
        for n in (32, 256):
            rows += evosax_rows(n, a.rounds)
    rows += unroll_rows(a.rounds)
    if not a.quick:
        sys.path.insert(0, str(_HERE))
        from first_call import first_call_rows

        rows += first_call_rows()
        rows += lopt_rows(max(3, a.rounds // 3), a.lopt_steps)
        rows += lyapunov_rows(max(3, a.rounds // 3), 1024, 16, 50, 32, every_step_too=True)
        rows += lyapunov_rows(3, 2048, 16, 20, 64)
    meta = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "cpu_count": __import__("os").cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "dtype": "float32",
        "rounds": a.rounds,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    lines = [
        f"# chaosgrad benchmarks: {meta['backend']} ({meta['cpu_count']} cores), "
        f"float32, jax {meta['jax']}, {meta['date']}; interleaved rounds, compile "
        "excluded; ratio = ours/baseline (speed-ups: baseline/ours), median [25%-75%]",
        f"{'figure':<58} {'ours':>10} {'baseline':>10} {'ratio':>20}  {'goal':<9} meets",
    ]
    for r in rows:
        spread = f"{r['ratio']:.2f} [{r['q25']:.2f}-{r['q75']:.2f}]"
        lines.append(
            f"{r['figure']:<58} {_fmt(r['ours_s']):>10} {_fmt(r['base_s']):>10} "
            f"{spread:>20}  {r['goal']:<9} "
            f"{'-' if r['ok'] is None else ('yes' if r['ok'] else 'no')}"
        )
        lines.append(f"    baseline: {r['baseline']}")
    if check is not None:
        lines.append(
            f"PES vs exact gradient (n={check['n']}, {check['runs']} runs, fixed x0, T=20, "
            f"K=5): ours rel. error {check['ours_rel_err']:.3f} (s.e. "
            f"{check['ours_rel_se']:.3f}), evosax {check['evosax_rel_err']:.3f} (s.e. "
            f"{check['evosax_rel_se']:.3f}): {'agree' if check['ok'] else 'DISAGREE'}"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.txt").write_text(text + "\n")
    append_history(out / "bench-history.md", text)
    (out / "bench.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "agreement": check}, indent=1) + "\n"
    )
    return 0


HISTORY_HEAD = """# `make bench`: every run

Each `make bench` (`benchmarks/bench.py`) appends its table here, oldest first, under the
date, machine and JAX version of its first line; `bench.txt` beside this file is the latest
alone, `bench.json` its numbers.
"""


def history_entry(table: str, note: str = "") -> str:
    """One run's section of the history: a heading from the table's first line (date, machine,
    JAX version), an optional note, then the table as printed."""
    first = table.splitlines()[0]
    m = re.match(r"# chaosgrad benchmarks: (.*?), float32, jax ([^,]+), ([^;]+);", first)
    title = f"{m.group(3)}: {m.group(1)}, jax {m.group(2)}" if m else first.lstrip("# ")
    return f"## {title}\n\n" + (f"{note}\n\n" if note else "") + f"```\n{table.rstrip()}\n```\n"


def append_history(path: Path, table: str, note: str = "") -> None:
    """Add one run's table to the history file at ``path`` (created with its heading if
    missing), atomically: a reader sees the history before or after, never half of it."""
    from chaosgrad.io import write_text

    old = path.read_text() if path.exists() else HISTORY_HEAD
    write_text(path, old.rstrip("\n") + "\n\n" + history_entry(table, note))


def _fmt(sec: float) -> str:
    return f"{sec * 1e3:.2f} ms" if sec < 1 else f"{sec:.2f} s"


if __name__ == "__main__":
    raise SystemExit(main())
