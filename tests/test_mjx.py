"""MJX adapter: one-step Jacobians against central differences (hinges and a free joint), the
uncontrolled double pendulum's Lyapunov spectrum (chaotic, Hamiltonian pairing), the CLI.
CI-sized: one double-pendulum system (float64) shared by its tests, one tumbler, one cartpole.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mujoco.mjx")

from chaosgrad.systems.mjx import mjx_system, model_names  # noqa: E402
from jacobian_check import jac_and_fd  # noqa: E402

from chaosgrad import systems  # noqa: E402
from chaosgrad.app.cli import main  # noqa: E402
from chaosgrad.errors import InputError  # noqa: E402
from chaosgrad.jacobian import step_jacobian  # noqa: E402
from chaosgrad.spectra import lyapunov_spectrum  # noqa: E402
from chaosgrad.system import split_run_key  # noqa: E402


@pytest.fixture(scope="module")
def pendulum():
    # the CLI's `--x64` with default parameters builds this same object (its compiled
    # chunks are reused there)
    return systems.make("mjx:double_pendulum", dtype="float64")


def test_registry_and_errors(pendulum):
    assert model_names() == ["cartpole", "double_pendulum", "tumbler"]
    assert mjx_system("double_pendulum", dtype="float64") is pendulum
    d = pendulum.describe()
    assert d["model"] == "double_pendulum" and d["phase_dim"] == 4 and d["dt"] == 0.02
    assert pendulum.phase_dim() == 4 and "tip height" in pendulum.loss_doc
    with pytest.raises(InputError, match="accepted: cartpole, double_pendulum, tumbler"):
        systems.make("mjx:humanoid")
    with pytest.raises(InputError, match="linear, mlp, paper"):
        mjx_system(policy="cnn")
    with pytest.raises(
        InputError, match=r"n_frames \(0 = the model's own\) must be an integer in 0"
    ):
        mjx_system(n_frames=-1)


def test_the_mjx_system_passes_the_full_check(pendulum):
    """`systems.make` marks it built-in (its check skips the traces at the default θ); the
    full check, on an unmarked copy, passes."""
    import dataclasses

    from chaosgrad import validation

    assert pendulum in validation._BUILT_IN
    validation.check_system(dataclasses.replace(pendulum))


def test_step_jacobian_matches_finite_differences(pendulum):
    key = jax.random.PRNGKey(3)
    state = pendulum.init(split_run_key(key)[0], pendulum.theta)
    jac, fd = jac_and_fd(pendulum, state, key)
    assert jac.shape == (4, 4)
    # central differences in float64 at h = 1e-6: truncation h²|f'''| + rounding eps/h ~ 1e-9
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-7)
    # two RK4 steps of 0.01 s: the position rows start as [I, 0.02 I]
    np.testing.assert_allclose(np.asarray(jac)[:2, 2:], 0.02 * np.eye(2), atol=5e-3)
    # the closed loop matters: zero the policy and the Jacobian changes
    theta0 = jax.tree_util.tree_map(jnp.zeros_like, pendulum.theta)
    jac0 = step_jacobian(pendulum, theta0, key, state)
    assert np.abs(np.asarray(jac) - np.asarray(jac0)).max() > 1e-3


def test_uncontrolled_double_pendulum_is_chaotic_and_hamiltonian(pendulum):
    # θ = 0: no torque, an undamped double pendulum started near the top (high energy)
    theta0 = jax.tree_util.tree_map(jnp.zeros_like, pendulum.theta)
    res = lyapunov_spectrum(
        pendulum, theta0, key=jax.random.PRNGKey(0), steps=500, k=4, transient=0, record_every=500
    )
    lam = np.asarray(res.exponents)
    assert res.nonfinite_step == -1 and res.units == "per unit time"
    # chaotic: λ1 well above 0 (measured 1.43/s over these 10 s, 1.08/s over 60 s)
    assert lam[0] > 0.5, lam
    # Hamiltonian: exponents come in ± pairs and sum to 0 (volume is conserved in (q, p);
    # in (q, q̇) up to log det M(q0)/det M(qT) / T); measured sum -0.038 at 10 s
    assert abs(lam.sum()) < 0.1, lam
    assert abs(lam[0] + lam[3]) < 0.3 and abs(lam[1] + lam[2]) < 0.3, lam


def test_free_joint_jacobian_matches_finite_differences():
    tumbler = mjx_system("tumbler", dtype="float64", policy_scale=2.0)
    # qpos: 7 (free: 3 + quaternion) + 1 hinge, qvel: 6 + 1; the quaternion is a rotation
    # vector in the phase (3 numbers for 3 dof): 3 + 1 + 3 + 7 = 14, not 15
    assert tumbler.phase_dim() == 14 and tumbler.describe()["quaternions"] == 1
    key = jax.random.PRNGKey(5)
    state = tumbler.init(split_run_key(key)[0], tumbler.theta)
    x = tumbler.flat_phase(state)[0]
    assert np.abs(np.asarray(tumbler.get_phase(state)["rot"])).max() < 1e-12  # reset: identity
    jac, fd = jac_and_fd(tumbler, state, key)
    assert jac.shape == (14, 14) and x.shape == (14,)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-6)
    # with_phase is exact at the base point: phase(with_phase(s, phase(s))) == phase(s)
    back = tumbler.flat_phase(tumbler.set_phase(state, tumbler.get_phase(state)))[0]
    np.testing.assert_allclose(back, x, atol=1e-15)


def test_systems_lists_mjx(capsys):
    assert main(["systems", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mjx"]["params"]["model"] == "double_pendulum"
    assert "MJX" in rows["mjx"]["description"]


@pytest.mark.slow  # heavy (compile-bound, 30-80 s on 2 cores): make test-slow
def test_cli_diagnose_mjx_cartpole(tmp_path, capsys):
    # the cheapest model (Euler, 2 dof): `diagnose` compiles a dozen programs of it
    out = tmp_path / "rep"
    assert (
        main(
            [
                "diagnose",
                "mjx:cartpole",
                "--x64",
                "--horizons",
                "10,25",
                "--seeds",
                "3",
                "--lyapunov-steps",
                "200",
                "--k",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "VERDICT: CHAOTIC" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["system"]["name"] == "mjx:cartpole" and report["verdict"] == "chaotic"
    # the pole starts near upright, a saddle: from the start the tangent space stretches
    # (a 1 m pole alone falls at sqrt(3 g / 2) = 3.8/s; measured finite-time λ1 +3.2/s)
    assert report["finite_time_exponent"] > 1.0
    assert (
        report["gradient_growth"]["geomean_norm"][1] > report["gradient_growth"]["geomean_norm"][0]
    )


def test_missing_mujoco_names_the_mjx_extra(monkeypatch):
    import sys

    from chaosgrad.errors import MissingExtra

    # an import of a module whose sys.modules entry is None raises ImportError: mujoco absent
    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(MissingExtra, match=r"pip install 'chaosgrad\[mjx\]'"):
        mjx_system("cartpole", seed=987654)  # a configuration not built (cached) before
