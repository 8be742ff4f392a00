"""Cost of unrolled learned-optimizer training: forward inner steps per second, and one
meta-gradient by backprop relative to the forward unroll, with and without rematerialisation.

Peak memory is XLA's own account of the compiled function (``memory_analysis()``: the
temporary buffers it allocates, plus arguments and outputs).

    PYTHONPATH=. python benchmarks/lopt_unroll.py --steps 200 --remat 10
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from chaosgrad import systems
from chaosgrad.unroll import unroll_grad, unrolled_loss


def _peak_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not report it
        return None
    if m is None:
        return None
    return int(
        m.temp_size_in_bytes
        + m.argument_size_in_bytes
        + m.output_size_in_bytes
        - getattr(m, "alias_size_in_bytes", 0)
    )


def _time(fn, args, repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls (after one warm-up call)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def run(
    task: str,
    optimizer: str,
    steps: int,
    remat: int,
    batch_size: int,
    hidden: int,
    repeats: int,
    dtype: str,
) -> list[dict]:
    """Time and size the forward unroll and its meta-gradient; one dict per row."""
    system = systems.make(
        "lopt", task=task, optimizer=optimizer, batch_size=batch_size, hidden=hidden, dtype=dtype
    )
    theta, key = system.theta, jax.random.PRNGKey(0)
    variants = {
        "forward unroll": lambda th, k: unrolled_loss(system, th, k, steps),
        "backprop": jax.grad(lambda th, k: unrolled_loss(system, th, k, steps)),
        f"backprop, remat every {remat}": jax.grad(
            lambda th, k: unrolled_loss(system, th, k, steps, remat_chunk=remat)
        ),
    }
    rows = []
    for name, fn in variants.items():
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(theta, key).compile()
        compile_s = time.perf_counter() - t0
        secs = _time(compiled, (theta, key), repeats)
        rows.append(
            {
                "variant": name,
                "compile_s": compile_s,
                "seconds": secs,
                "peak_mb": (_peak_bytes(compiled) or 0) / 2**20,
            }
        )
    # chaosgrad's chunk-wise reverse mode (host loop over compiled chunks) for comparison
    chunk = remat * 5 if steps % (remat * 5) == 0 else steps
    t0 = time.perf_counter()
    unroll_grad(system, theta, key, steps, chunk=chunk)
    first = time.perf_counter() - t0
    secs = _time(lambda: unroll_grad(system, theta, key, steps, chunk=chunk).grad, (), repeats)
    rows.append(
        {
            "variant": f"unroll_grad, chunk {chunk}",
            "compile_s": first - secs,
            "seconds": secs,
            "peak_mb": None,
        }
    )
    fwd = rows[0]["seconds"]
    for r in rows:
        r["steps_per_s"] = steps / r["seconds"]
        r["ratio_to_forward"] = r["seconds"] / fwd
    return rows


def main(argv=None) -> None:
    """Parse arguments, run the benchmark, print a table (and JSON with --json)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits_mlp")
    p.add_argument("--optimizer", default="mlp")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--remat", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = run(a.task, a.optimizer, a.steps, a.remat, a.batch_size, a.hidden, a.repeats, a.dtype)
    print(
        f"lopt {a.task} / {a.optimizer}, {a.steps} inner steps, batch {a.batch_size}, "
        f"hidden {a.hidden}, {a.dtype}, {jax.devices()[0].platform}"
    )
    print(
        f"{'variant':<28}{'compile s':>10}{'run s':>9}{'steps/s':>10}{'x forward':>11}"
        f"{'peak MB':>9}"
    )
    for r in rows:
        mb = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        print(
            f"{r['variant']:<28}{r['compile_s']:>10.2f}{r['seconds']:>9.3f}"
            f"{r['steps_per_s']:>10.0f}{r['ratio_to_forward']:>11.2f}{mb:>9}"
        )
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
