"""Measure a fraction of Figure 6 at paper scale (the Ant, 400-step episodes, 32 per Adam step,
the paper's policy, float64) and project the whole run: for each t given, one chunk of a
single Adam step and one held-out evaluation is compiled, then timed twice.

    .venv/bin/python benchmarks/truncation_paper_fraction.py 10 400
"""

from __future__ import annotations

import json
import sys
import time

import jax


def main(argv: list[str]) -> int:
    jax.config.update("jax_enable_x64", True)
    from chaosgrad.systems.brax import init_policy

    from chaosgrad.app.figures import truncation

    size = {**truncation.SIZES["paper"], "eval_every": 1}
    system = truncation.make_system(size)
    theta = init_policy(
        jax.random.PRNGKey(1),
        system.metadata["policy_sizes"],
        system.metadata["policy_scale"],
        jax.numpy.float64,
    )
    for t in [int(a) for a in argv[1:]] or [10]:
        init, chunk, reward = truncation._trainer(system, size, t)
        key = jax.random.PRNGKey(2)
        t0 = time.perf_counter()
        jax.block_until_ready(chunk(init(theta), key, 0))
        first = time.perf_counter() - t0
        jax.block_until_ready(reward(theta))  # the evaluation alone: its own compile
        t0 = time.perf_counter()
        jax.block_until_ready(reward(theta))
        evaluation = time.perf_counter() - t0
        steps = []
        for i in range(2):
            t0 = time.perf_counter()
            jax.block_until_ready(chunk(init(theta), key, i + 1))
            steps.append(time.perf_counter() - t0)
        step = min(steps) - evaluation  # one Adam step of 32 episodes, without the evaluation
        runs = len(size["truncations"]) * size["seeds"]
        evals = size["iterations"] // truncation.SIZES["paper"]["eval_every"] + 1
        whole = runs * (size["iterations"] * step + evals * evaluation)
        row = {
            "t": t,
            "first_chunk_with_compile_s": round(first, 1),
            "adam_step_s": round(step, 2),
            "evaluation_s": round(evaluation, 2),
            "step_gradients_per_adam_step": size["batch"] * size["episode"],
            "ms_per_step_gradient": round(1e3 * step / (size["batch"] * size["episode"]), 2),
            "projected_whole_run_h": round(whole / 3600, 1),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
