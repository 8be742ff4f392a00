"""One process of the multi-process tests (tests/test_distributed.py launches it).

``python dist_worker.py estimates OUT.json NAMES``: joins the launch described by the
CHAOSGRAD_* variables (none: a single process), makes two estimates with each estimator
of NAMES (comma-separated) on a small float64 tanh RNN, and process 0 writes the gradients,
the losses and the layout to OUT.json.

``python dist_worker.py figure OUT``: makes a small Figure 1 (toy) in OUT and, through
`run_split`, a five-part chain whose every part needs the one before (process 0 writes
OUT/chain.json).

``python dist_worker.py compare OUT``: compares backprop, ES and PES on a logistic map
(the estimators and the reference shared out over the processes); process 0 saves the
comparison to OUT (compare.json).

``python dist_worker.py cli ARGS...``: runs ``chaosgrad ARGS...`` (the command joins the
launch itself). With CHAOSGRAD_TEST_DIE_AT=K and CHAOSGRAD_TEST_DIE_ID=I, process I kills
itself (SIGKILL, no clean-up: a crashed host) right after outer step K of meta-train; with
CHAOSGRAD_TEST_TERM_AT=K it sends itself SIGTERM instead (a scheduler's stop).
"""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

from chaosgrad import distributed  # noqa: E402


def estimates(out, names):
    import numpy as np

    from chaosgrad import estimators, systems

    sysm = systems.make("rnn", n=4, g=1.5, dtype="float64")
    res = {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }
    for name in names.split(","):
        kw = {"horizon": 8}
        kw.update(
            {"tbptt": {"particles": 8, "window": 3}, "backprop": {"samples": 8}}.get(
                name, {"pairs": 8}
            )
        )
        if name in ("tes", "pes"):
            kw["window"] = 3
        est = estimators.make(name, sysm, **kw)
        st = jax.jit(est.init)(jax.random.PRNGKey(0), sysm.theta)
        f = jax.jit(est.estimate)
        grads, losses = [], []
        for i in range(2):
            g, st, info = f(st, sysm.theta, jax.random.PRNGKey(10 + i))
            grads.append(distributed.to_host(g).tolist())
            losses.append(float(distributed.to_host(info["loss"])))
        leaves = jax.tree_util.tree_leaves(st)
        res[name] = {
            "grads": grads,
            "losses": losses,
            "state_devices": max((len(x.sharding.device_set) for x in leaves), default=0),
            "state": [np.asarray(x).tolist() for x in distributed.to_host(leaves)],
        }
    if distributed.is_main_process():
        from chaosgrad.io import write_text

        write_text(out, json.dumps(res))


class Chain:
    """An experiment whose part i needs part i - 1 (the worst case for splitting)."""

    @staticmethod
    def run(scale, store, progress):
        import jax.numpy as jnp
        import numpy as np

        x, owners = np.linspace(0.0, 1.0, 3), []
        for i in range(5):
            part = store.part(
                f"c{i}",
                lambda x=x, i=i: {
                    "x": np.asarray(jax.jit(lambda v: jnp.tanh(2.0 * v + i))(x)),
                    "owner": np.asarray(jax.process_index()),
                },
            )
            x = part["x"] * 1.0
            owners.append(part["owner"])
        return {"x": x, "owners": np.asarray(owners)}, {}


def figure(out):
    from pathlib import Path

    from chaosgrad.app import figures
    from chaosgrad.app.figures import toy
    from chaosgrad.io import write_text

    toy.SIZES["quick"] = {"samples": 200, "xs": 11, "ws": 6}
    png = figures.run_figure("toy", "quick", out)
    assert (png is None) == (jax.process_index() != 0)
    got = figures.run_split(
        "chain", Chain, "quick", (Path(out) / "chain", "quick", "c", True), False
    )
    if distributed.is_main_process():
        (res, _), _ = got
        write_text(
            Path(out) / "chain.json",
            json.dumps({"x": res["x"].tolist(), "owners": res["owners"].tolist()}),
        )


def compare(out):
    from chaosgrad import systems
    from chaosgrad.app.compare import compare as run_compare

    c = run_compare(
        systems.make("logistic", r=3.9, dtype="float64"),
        estimators_=("backprop", "es", "pes"),
        horizon=12,
        samples=8,
        reference="es",
        reference_batches=4,
        reference_per_batch=16,
        key=jax.random.PRNGKey(5),
        out=out,
        progress=False,
    )
    assert (c is None) == (jax.process_index() != 0)


def cli(*argv):
    import functools
    import os
    import signal

    from chaosgrad.app import cli as app_cli
    from chaosgrad.app import meta_train as app_meta

    die_at = int(os.environ.get("CHAOSGRAD_TEST_DIE_AT", "0"))
    term_at = int(os.environ.get("CHAOSGRAD_TEST_TERM_AT", "0"))
    if die_at or term_at:
        who = int(os.environ.get("CHAOSGRAD_TEST_DIE_ID", "1"))
        at, sig = (die_at, signal.SIGKILL) if die_at else (term_at, signal.SIGTERM)

        def die(step, rec):
            if step == at and jax.process_index() == who:
                os.kill(os.getpid(), sig)

        app_meta.meta_train = functools.partial(app_meta.meta_train, callback=die)
    sys.exit(app_cli.main(list(argv)))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode in ("estimates", "figure", "compare"):
        distributed.initialize(timeout=60)
    {"estimates": estimates, "cli": cli, "figure": figure, "compare": compare}[mode](*args)
