"""PES estimates per second against the number of processes on localhost (1, 2, 4 processes
of one CPU device each, gloo collectives), the bytes that cross processes per estimate read
from the compiled program's collectives, and a projection to 64 hosts from those bytes.

    .venv/bin/python benchmarks/distributed_scaling.py [--system lopt|rnn] [--pairs 8]
        [--window 10] [--reps 10] [--processes 1,2,4] [--out benchmarks/results]

Writes ``distributed_scaling.txt`` (the table and the projection) and
``distributed_scaling.json``. The population is fixed (strong scaling: each of P processes
holds pairs / P antithetic pairs). On this 2-core machine four processes share two cores, so
the curve flattens past two: it is the curve this machine allows, not the method's.

``--system lopt`` is the learned optimizer (1,762 float32 weights; about 40 s of compile per
process); ``--system rnn`` a tanh RNN with n = 42 (1,764 weights, a few seconds).
``--estimator es|backprop|tbptt|tes`` times another estimator (the population is its pairs,
samples or particles; files get the suffix ``_<estimator>``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

# Bytes per element of the HLO element types that can appear in a collective.
_ELEMENT_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_SHAPE = re.compile(r"\b(" + "|".join(_ELEMENT_BYTES) + r")\[([\d,]*)\]")

# The projection's assumptions (stated in the report).
LINK_BYTES_PER_S = 12.5e9  # 100 Gb/s per host (InfiniBand EDR / 100 GbE)
LINK_LATENCY_S = 10e-6  # per message step of the ring


def collective_bytes(hlo_text: str) -> list[tuple[str, int, bool]]:
    """The collectives of a compiled HLO module as (op, bytes, scalar) per result element in
    program order (each element of a tuple result on its own; ``-start``/``-done`` pairs
    once); ``scalar`` marks 0-d elements (losses, counts), whose size does not grow with θ."""
    out: list[tuple[str, int, bool]] = []
    for line in hlo_text.splitlines():
        if "=" not in line:
            continue
        lhs, rhs = line.split("=", 1)
        rhs = rhs.strip()
        for op in _COLLECTIVES:
            m = re.search(r"\b" + op + r"(-start)?\(", rhs)
            if m is None:
                continue
            result_type = rhs[: m.start()]
            for dtype, dims in _SHAPE.findall(result_type):
                size = 1
                for d in filter(None, dims.split(",")):
                    size *= int(d)
                out.append((op, size * _ELEMENT_BYTES[dtype], dims == ""))
            break
    return out


def make_system(name: str):
    """The benchmark's system: the learned optimizer, or a tanh RNN of about its size."""
    from chaosgrad import systems

    if name == "lopt":
        return systems.make("lopt")
    return systems.make("rnn", n=42, g=1.5, dtype="float32")


def estimator_params(name: str, population: int, window: int) -> dict:
    """The keyword arguments giving estimator ``name`` a population of ``population`` (and
    ``window`` steps per estimate for the truncated ones)."""
    if name == "backprop":
        return {"samples": population}
    if name == "es":
        return {"pairs": population}
    if name == "tbptt":
        return {"particles": population, "window": window}
    return {"pairs": population, "window": window}


def worker(a) -> None:
    """One process: join the launch, time ``reps`` PES estimates after a warm-up, and (on
    process 0) write the timings and the compiled program's collectives to ``a.part``."""
    import jax

    from chaosgrad import distributed, estimators

    distributed.initialize(timeout=300)
    system = make_system(a.system)
    est = estimators.make(a.estimator, system, **estimator_params(a.estimator, a.pairs, a.window))
    t0 = time.perf_counter()
    state = jax.jit(est.init)(jax.random.PRNGKey(0), system.theta)
    f = jax.jit(est.estimate)
    compiled = f.lower(state, system.theta, jax.random.PRNGKey(1)).compile()
    for i in range(2):  # warm-up: compile and first runs
        g, state, _ = f(state, system.theta, jax.random.PRNGKey(1 + i))
    jax.block_until_ready(g)
    warm = time.perf_counter() - t0
    distributed.barrier("timed")
    times = []
    for i in range(a.reps):
        t = time.perf_counter()
        g, state, _ = f(state, system.theta, jax.random.PRNGKey(100 + i))
        jax.block_until_ready(g)
        times.append(time.perf_counter() - t)
    distributed.barrier("done")
    if distributed.is_main_process():
        import numpy as np

        theta_leaves = jax.tree_util.tree_leaves(system.theta)
        part = {
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "estimator": a.estimator,
            "pairs": a.pairs,
            "window": a.window,
            "reps": a.reps,
            "weights": int(sum(x.size for x in theta_leaves)),
            "theta_bytes": int(sum(x.size * x.dtype.itemsize for x in theta_leaves)),
            "seconds_per_estimate": float(np.median(times)),
            "seconds_spread": [float(np.min(times)), float(np.max(times))],
            "warmup_seconds": warm,
            "collectives": collective_bytes(compiled.as_text()),
            "system": system.description,
            "cores": os.cpu_count(),
            "jax": jax.__version__,
        }
        Path(a.part).write_text(json.dumps(part))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(a, processes: int, part: Path) -> dict:
    """Run ``processes`` workers on localhost (one CPU device each) and return process 0's
    part; a launch past ``a.timeout`` seconds is killed and reported as a failure."""
    port = _free_port()
    procs = []
    for i in range(processes):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOSGRAD_")}
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            PYTHONPATH=str(_HERE.parent),
        )
        if processes > 1:
            env.update(
                CHAOSGRAD_COORDINATOR=f"127.0.0.1:{port}",
                CHAOSGRAD_NUM_PROCESSES=str(processes),
                CHAOSGRAD_PROCESS_ID=str(i),
            )
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--part",
            str(part),
            "--system",
            a.system,
            "--estimator",
            a.estimator,
            "--pairs",
            str(a.pairs),
            "--window",
            str(a.window),
            "--reps",
            str(a.reps),
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    deadline = time.monotonic() + a.timeout
    errors = []
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise SystemExit(f"{processes} processes did not finish in {a.timeout} s") from None
        if p.returncode:
            errors.append(f"process {i}: status {p.returncode}\n{err[-2000:]}")
    if errors:
        raise SystemExit("\n".join(errors))
    return json.loads(part.read_text())


def _summary(collectives) -> str:
    """'a (op) + b scalars' for a row of the table."""
    if not collectives:
        return "-"
    arrays = [n for _, n, scalar in collectives if not scalar]
    scalars = sum(n for _, n, scalar in collectives if scalar)
    ops = sorted({op for op, _, _ in collectives})
    return f"{sum(arrays)} in {len(arrays)} arrays + {scalars} in scalars ({', '.join(ops)})"


def ring_allreduce_seconds(nbytes: float, hosts: int) -> float:
    """Time of a ring all-reduce of ``nbytes`` over ``hosts`` at the assumed link speed and
    latency: 2 (P − 1) steps, each sending nbytes / P."""
    if hosts < 2:
        return 0.0
    steps = 2 * (hosts - 1)
    return steps * (LINK_LATENCY_S + nbytes / hosts / LINK_BYTES_PER_S)


def report(rows: list[dict]) -> tuple[str, dict]:
    """The scaling table, the bytes per estimate and the 64-host projection, as text and
    as a JSON-able dict."""
    base = rows[0]
    name = base.get("estimator", "pes")
    lines = [
        f"{name.upper()} estimates per second on localhost ({base['system']}; "
        f"{base['weights']} weights; a population of {base['pairs']} split over the "
        f"processes, window {base['window']}; median of {base['reps']} estimates; "
        "1 CPU device per process, "
        f"{base.get('cores', os.cpu_count())} cores on this machine, shared with other "
        "work; one process may already use several cores through XLA's thread pool)",
        "",
        "processes  pairs/process  s/estimate  estimates/s  speedup  efficiency  "
        "collective bytes/estimate",
    ]
    for r in rows:
        r["estimates_per_second"] = 1.0 / r["seconds_per_estimate"]
        r["speedup"] = base["seconds_per_estimate"] / r["seconds_per_estimate"]
        r["efficiency"] = r["speedup"] / r["processes"]
        r["collective_bytes"] = int(sum(n for _, n, _ in r["collectives"]))
        lines.append(
            f"{r['processes']:>9}  {r['pairs'] // r['processes']:>13}  "
            f"{r['seconds_per_estimate']:>10.4f}  {r['estimates_per_second']:>11.2f}  "
            f"{r['speedup']:>7.2f}  {r['efficiency']:>10.2f}  "
            f"{r['collective_bytes']:>9} = "
            f"{_summary(r['collectives'])}"
        )
    multi = [r for r in rows if r["processes"] > 1]
    worst = max(multi, key=lambda r: r["collective_bytes"]) if multi else base
    payload = worst["collective_bytes"]
    theta_bytes = base["theta_bytes"]
    itemsize = theta_bytes // base["weights"]
    # Collectives at least θ-sized scale with θ; the rest (loss, counts, norms) do not.
    big = [n for _, n, scalar in worst["collectives"] if not scalar]
    extra = payload - sum(big)
    copies = sum(big) / theta_bytes
    at = {
        "lopt_1762": round(1762 * itemsize * copies) + extra,
        "1e6": round(10**6 * itemsize * copies) + extra,
    }
    lines += [
        "",
        f"Bytes crossing processes per estimate (the compiled program's collectives, "
        f"P > 1): {payload} = {copies:g} x theta ({base['weights']} x {itemsize} B = "
        f"{theta_bytes}) + {extra} of scalars (loss and counts).",
        f"Assumption of the projection: what crosses hosts is what crosses processes "
        f"here, the {copies:g} theta-sized all-reduce(s) of the gradient's partial sums "
        "and a few scalars; the population's states and noise stay where their pairs "
        "live (each pair draws from its own key), whatever the host count.",
        f"  at the lopt size (1,762 weights, {itemsize}-byte floats): {at['lopt_1762']} "
        f"bytes all-reduced per estimate; a ring all-reduce sends 2(P-1)/P of that per "
        f"host: {2 * 63 / 64 * at['lopt_1762']:.0f} bytes per host at 64 hosts",
        f"  at 10^6 weights ({itemsize}-byte floats): {at['1e6']} bytes all-reduced; "
        f"{2 * 63 / 64 * at['1e6']:.0f} bytes per host at 64 hosts",
    ]
    # Weak scaling to 64 hosts: each host keeps the measured 1-process population and
    # compute time; the estimate adds one all-reduce of the payload.
    t_host = base["seconds_per_estimate"]
    proj = {}
    lines += [
        "",
        f"Projection to 64 hosts (weak scaling: each host holds the {base['pairs']} "
        f"pairs it held alone here, {t_host:.4f} s of compute per estimate; links of "
        f"{LINK_BYTES_PER_S / 1e9:.1f} GB/s and {LINK_LATENCY_S * 1e6:.0f} us per ring "
        "step — assumed, not measured):",
        "weights     all-reduce s  s/estimate  pairs/estimate  pair-estimates/s  comm share",
    ]
    for label, nbytes in at.items():
        t_comm = ring_allreduce_seconds(nbytes, 64)
        t = t_host + t_comm
        proj[label] = {
            "bytes": nbytes,
            "allreduce_seconds": t_comm,
            "seconds_per_estimate": t,
            "pairs_per_estimate": 64 * base["pairs"],
            "pair_estimates_per_second": 64 * base["pairs"] / t,
            "comm_share": t_comm / t,
        }
        lines.append(
            f"{label:<10}  {t_comm:>12.2e}  {t:>10.4f}  {64 * base['pairs']:>14}  "
            f"{64 * base['pairs'] / t:>16.0f}  {t_comm / t:>10.1%}"
        )
    result = {
        "rows": rows,
        "payload_bytes": payload,
        "theta_bytes": theta_bytes,
        "theta_sized_allreduces": copies,
        "scalar_bytes": extra,
        "bytes_per_estimate": at,
        "projection_64_hosts": proj,
        "assumptions": {
            "link_bytes_per_s": LINK_BYTES_PER_S,
            "link_latency_s": LINK_LATENCY_S,
            "model": "weak scaling, ring all-reduce of theta-sized payload",
        },
    }
    return "\n".join(lines) + "\n", result


def main(argv=None) -> int:
    """Run the benchmark (or, with --worker, one of its processes)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", choices=("lopt", "rnn"), default="lopt")
    p.add_argument("--estimator", choices=("pes", "es", "backprop", "tbptt", "tes"), default="pes")
    p.add_argument(
        "--pairs",
        type=int,
        default=8,
        help="the population: pairs (ES, PES), samples (backprop), particles",
    )
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", default=str(_HERE / "results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="print and save the report of a saved distributed_scaling.json again",
    )
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    import tempfile

    from chaosgrad.io import dumps, write_text

    counts = [int(x) for x in a.processes.split(",")]
    rows = []
    if a.from_json:
        rows = json.loads(Path(a.from_json).read_text())["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts if not rows else []:
            t = time.perf_counter()
            rows.append(launch(a, n, Path(tmp) / f"part{n}.json"))
            print(
                f"{n} process(es): {rows[-1]['seconds_per_estimate']:.4f} s/estimate "
                f"({time.perf_counter() - t:.0f} s with start-up)",
                flush=True,
            )
    text, result = report(rows)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "distributed_scaling" + ("" if a.estimator == "pes" else f"_{a.estimator}")
    write_text(out / f"{stem}.txt", text)
    write_text(out / f"{stem}.json", dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
