"""One compiled program per estimator for every horizon, with the estimates of the code that
compiled one program per horizon (recorded by ``data/record_estimates.py`` at commit 94ff132:
``estimates_94ff132_O0.npz`` under the test command's
``XLA_FLAGS=--xla_backend_optimization_level=0``, ``estimates_94ff132.npz`` without it, since
XLA's optimisation level changes the order of floating-point operations).

The truncated estimators and ES give bitwise-equal estimates, and every estimator's shared
program gives bit for bit what a program built for one horizon gives. The reverse-mode whole-unroll
estimators (backprop, reparam, combined) now sum the meta-loss and pull its gradient back
chunk by chunk, a different order of floating-point sums, which the Hénon map's chaos
amplifies by about exp(λ₁ T): at T = 30 they agree to 2e-10 relative, not bit for bit.
"""

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from jax import monitoring
from jax._src import dispatch

from chaosgrad import estimators, systems

DATA = Path(__file__).parent / "data"
O0 = "--xla_backend_optimization_level=0" in os.environ.get("XLA_FLAGS", "")
RECORDED = np.load(DATA / ("estimates_94ff132_O0.npz" if O0 else "estimates_94ff132.npz"))
spec = __import__("importlib.util").util.spec_from_file_location(
    "record_estimates", DATA / "record_estimates.py"
)
record = __import__("importlib.util").util.module_from_spec(spec)
spec.loader.exec_module(record)

BITWISE = {"tbptt", "tes", "pes", "nres", "es"}
HORIZONS = (9, 17, 30)  # 17 was not recorded: it only has to reuse the program


class Lowerings:
    """Counts programs lowered to MLIR (one per jit cache miss, whether or not the
    persistent compilation cache then has the executable)."""

    def __init__(self):
        self.n = 0
        monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event, duration, **kw):
        if event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
            self.n += 1


LOWERINGS = Lowerings()


def _estimates(system, name, horizon):
    kw = dict(record.CASES[name])
    if name == "pes" and horizon == 30:
        kw["schedule"] = "loguniform"
    est = estimators.make(name, system, horizon=horizon, **kw)
    state = jax.jit(est.init)(jax.random.PRNGKey(1), system.theta)
    jax.block_until_ready(state)
    step = jax.jit(est.estimate)
    before = LOWERINGS.n
    out = []
    for i in range(record.ESTIMATES):
        g, state, info = step(state, system.theta, jax.random.PRNGKey(10 + i))
        out.append((jax.tree_util.tree_leaves(g), info["loss"]))
    jax.block_until_ready(out)
    return out, LOWERINGS.n - before


@pytest.mark.parametrize("name", sorted(record.CASES))
def test_one_program_for_three_horizons_with_the_recorded_estimates(name):
    system = systems.make("henon")
    built = {}
    for horizon in HORIZONS:
        out, lowered = _estimates(system, name, horizon)
        built[horizon] = lowered
        if horizon not in record.HORIZONS:
            continue
        for i, (grads, loss) in enumerate(out):
            tag = f"henon/{name}/{horizon}/{i}"
            want = [RECORDED[f"{tag}/grad{j}"] for j in range(len(grads))] + [
                RECORDED[f"{tag}/loss"]
            ]
            got = [np.asarray(g) for g in grads] + [np.asarray(loss)]
            for w, g in zip(want, got, strict=True):
                if name in BITWISE:
                    np.testing.assert_array_equal(g, w, err_msg=tag)
                else:
                    np.testing.assert_allclose(g, w, rtol=1e-9, atol=0, err_msg=tag)
    # The shared program (T an input) against a program built for one horizon (the state,
    # T included, a constant of the program): bit for bit, for every estimator.
    est = estimators.make(name, system, horizon=17, **record.CASES[name])
    state = est.init(jax.random.PRNGKey(1), system.theta)
    shared = jax.jit(est.estimate)(state, system.theta, jax.random.PRNGKey(10))
    alone = jax.jit(lambda th, k: est.estimate(state, th, k))(system.theta, jax.random.PRNGKey(10))
    for a, b in zip(
        jax.tree_util.tree_leaves(shared), jax.tree_util.tree_leaves(alone), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The first horizon builds the program (pes's log-uniform schedule at T = 30 is another
    # static setting, so it may build once more); the other horizons build nothing.
    assert built[17] == 0, built
    if name != "pes":
        assert built[30] == 0, built


@pytest.mark.parametrize("horizon", [1, 7, 8, 47, 48, 49])
def test_chunked_reverse_pass_is_the_gradient_of_the_unroll(horizon):
    """The in-program reverse pass (chunk 8, room for 6 chunk starts) against jax.grad of the
    plain unroll: a partial first chunk, a full one, partial and exactly full buffers; past
    the buffer's room the meta-loss and gradient are NaN, never a wrong number."""
    from chaosgrad.estimators.unrolled import unroll_value_and_grad

    from chaosgrad.unroll import unrolled_loss

    system = systems.make("rnn", n=4, g=1.5, dtype="float64")
    key = jax.random.PRNGKey(3)
    (val, bad), grad = jax.jit(lambda th: unroll_value_and_grad(system, th, key, horizon, 8, 6))(
        system.theta
    )
    if horizon > 48:
        assert np.isnan(float(val)) and np.all(np.isnan(np.asarray(grad)))
        return
    want_val, want_grad = jax.value_and_grad(lambda th: unrolled_loss(system, th, key, horizon))(
        system.theta
    )
    assert int(bad) == 0
    np.testing.assert_allclose(float(val), float(want_val), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-12, atol=1e-15)


def test_lyapunov_chunk_is_compiled_once_whatever_its_inputs_commitment():
    """A state committed to a device (as an MJX model's is) and the uncommitted first basis:
    the chunk's first call and its later calls, which get its committed outputs, share one
    compiled program. Also with JAX's default device given as a platform name."""
    from chaosgrad.lyapunov import QR_CHUNK, _jit_qr_chunk, lyapunov_spectrum

    system = systems.make("henon", dtype="float64")
    state = jax.device_put(system.init(jax.random.PRNGKey(0), system.theta), jax.devices()[0])
    lyapunov_spectrum(system, steps=3000, transient=300, k=2, state=state, progress=False)
    assert _jit_qr_chunk(system, QR_CHUNK, 2)._cache_size() == 1
    before = jax.config.jax_default_device
    try:
        jax.config.update("jax_default_device", jax.devices()[0].platform)
        again = lyapunov_spectrum(system, steps=3000, transient=300, k=2, progress=False)
    finally:
        jax.config.update("jax_default_device", before)
    np.testing.assert_allclose(again.exponents, [0.42, -1.62], atol=0.03)


def test_lyapunov_spectrum_runs_one_program_for_probe_transient_and_steps():
    """The QR chunk's trip count, QR interval and recording window are inputs: a spectrum
    run (probe, rest of the transient, counted steps) builds one chunk program, and a second
    run with other lengths and another window builds none; the exponents are those of a
    run with QR at every step (to the interval's rounding)."""
    from chaosgrad.lyapunov import lyapunov_spectrum

    system = systems.make("henon", dtype="float64")
    first = lyapunov_spectrum(system, steps=3000, transient=300, k=2, progress=False)
    before = LOWERINGS.n
    again = lyapunov_spectrum(
        system, steps=1700, transient=150, k=2, record_every=7, progress=False
    )
    jax.block_until_ready(again.exponents)
    # one program for the chunk; small eager ops (the first basis' QR) are already built
    assert LOWERINGS.n - before == 0, LOWERINGS.n - before
    assert first.qr_every > 1  # the probe chose an interval: probe and counted steps differ
    every_step = lyapunov_spectrum(
        system, steps=3000, transient=300, k=2, qr_every=1, progress=False
    )
    np.testing.assert_allclose(first.exponents, every_step.exponents, rtol=1e-9, atol=1e-12)
    # the Hénon map's published exponents (0.419, -1.623) at this short run's accuracy
    np.testing.assert_allclose(first.exponents, [0.42, -1.62], atol=0.03)
    assert again.history.shape == (len(again.history_steps), 2)
    assert again.history_steps[-1] == 1700 and again.history_steps[0] == 7


def test_meta_train_runs_share_one_outer_step_program(tmp_path):
    """Two meta-training runs with the same system, estimator and outer optimizer but other
    keys and initial θ lower no new program in the second run (the run's keys are arguments,
    not constants), and each run's θ is bit for bit what it is when it runs alone in a fresh
    cache."""
    import optax
    from chaosgrad.estimators import train
    from chaosgrad.estimators.meta import meta_train
    from chaosgrad.systems.influence import influence_balancing

    system = influence_balancing(theta=0.2, horizon=30, dtype="float64")
    est = estimators.make("pes", system, pairs=2, sigma=0.05, window=5, shard=False)
    opt = optax.adam(0.02)

    def run(seed, theta0, folder):
        res = meta_train(
            system, est, opt, 4, tmp_path / folder, jax.random.PRNGKey(seed),
            theta0=theta0, log_every=2, eval_seeds=2, progress=False, resume=False,
        )  # fmt: skip
        jax.block_until_ready(res.theta)
        return np.asarray(jax.tree_util.tree_leaves(res.theta)[0])

    other = jax.block_until_ready(jax.tree_util.tree_map(lambda x: x + 0.05, system.theta))
    first = run(1, None, "a")
    before = LOWERINGS.n
    second = run(2, other, "b")
    assert LOWERINGS.n - before == 0, LOWERINGS.n - before
    assert not np.array_equal(first, second)  # the key and θ0 did reach the program
    train._jit_train_step.cache_clear()
    train._jit_evaluate.cache_clear()
    mid = LOWERINGS.n
    alone = run(2, other, "c")
    assert LOWERINGS.n > mid  # built afresh
    np.testing.assert_array_equal(second, alone)


def test_meta_train_recompiles_when_a_global_its_system_reads_changes(tmp_path):
    """A notebook cell re-run with a changed global: the same system, estimator and optimizer
    objects, but the step reads the new value, so the run is the one a fresh cache gives
    (not the shared program traced with the old value)."""
    import jax.numpy as jnp
    import optax
    from chaosgrad.estimators import train
    from chaosgrad.estimators.meta import meta_train

    from chaosgrad.system import StepOut, System

    namespace = {"A": 1.4, "jnp": jnp, "StepOut": StepOut}
    exec(
        "def step(s, th, key):\n"
        "    x = jnp.tanh(A * th * s) + 0.1\n"
        "    return x, StepOut(loss=jnp.sum(x**2))\n",
        namespace,
    )
    system = System(
        lambda key, th: jnp.array([0.1, 0.2]), namespace["step"], name="mine", theta=0.5,
        horizon=10,
    )  # fmt: skip
    est = estimators.make("es", system, pairs=2, sigma=0.05, horizon=10)
    opt = optax.adam(0.05)

    def run(folder):
        res = meta_train(
            system, est, opt, 3, tmp_path / folder, jax.random.PRNGKey(0), progress=False,
            resume=False,
        )  # fmt: skip
        return float(res.theta), res.evals[-1]["meta_loss"]

    first = run("a")
    namespace["A"] = 0.2
    changed = run("b")
    train._jit_train_step.cache_clear()
    train._jit_evaluate.cache_clear()
    fresh = run("c")
    assert changed == fresh and changed != first
