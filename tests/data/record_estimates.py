"""Record every estimator's estimates at two horizons, for tests/test_compile_once.py.

`estimates_94ff132.npz` was written by this script at commit 94ff132, when each estimator
compiled one program per horizon; the test checks that the one-program-per-estimator code
gives the same estimates. Run from the repository root:
``python tests/data/record_estimates.py OUT.npz``.
"""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from chaosgrad import estimators, systems  # noqa: E402

CASES = {  # name: settings (besides the horizon)
    "backprop": {"samples": 3},
    "reparam": {"pairs": 2, "sigma": 0.05},
    "es": {"pairs": 3, "sigma": 0.05},
    "combined": {"pairs": 3, "sigma": 0.05},
    "tbptt": {"particles": 3, "window": 4},
    "tes": {"pairs": 2, "sigma": 0.05, "window": 4},
    "pes": {"pairs": 2, "sigma": 0.05, "window": 4},
    "nres": {"pairs": 2, "sigma": 0.05, "window": 4},
}
SYSTEMS = {"henon": {}, "rnn": {"n": 4}}
HORIZONS = (9, 30)
ESTIMATES = 3


def record() -> dict:
    out = {}
    for sname, skw in SYSTEMS.items():
        system = systems.make(sname, **skw)
        for name, kw in CASES.items():
            for horizon in HORIZONS:
                extra = {"schedule": "loguniform"} if name == "pes" and horizon == 30 else {}
                est = estimators.make(name, system, horizon=horizon, **kw, **extra)
                state = est.init(jax.random.PRNGKey(1), system.theta)
                step = jax.jit(est.estimate)
                for i in range(ESTIMATES):
                    g, state, info = step(state, system.theta, jax.random.PRNGKey(10 + i))
                    tag = f"{sname}/{name}/{horizon}/{i}"
                    for j, leaf in enumerate(jax.tree_util.tree_leaves(g)):
                        out[f"{tag}/grad{j}"] = np.asarray(leaf)
                    out[f"{tag}/loss"] = np.asarray(info["loss"])
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **record())
