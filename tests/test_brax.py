"""Brax adapter: one-step Jacobian vs finite differences, chaos of the inverted pendulum,
free-joint coordinates without a spurious exponent, input errors. CI-sized (few compiles).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chaosgrad.systems.brax import brax_system, quat_to_rotvec, rotvec_to_quat
from jacobian_check import jac_and_fd

from chaosgrad import systems
from chaosgrad.errors import InputError
from chaosgrad.gradients import gradient_growth
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.system import split_run_key
from chaosgrad.unroll import unroll

# A free-floating body (free joint: 7 positions, 6 velocities) with one motorised arm,
# no contacts and no gravity: the cheapest system with a quaternion in q.
TUMBLER_XML = """
<mujoco model="tumbler">
  <option timestep="0.02" gravity="0 0 0"/>
  <default><geom contype="0" conaffinity="0"/></default>
  <worldbody>
    <body name="torso" pos="0 0 0">
      <joint name="root" type="free" limited="false" armature="0" damping="0"/>
      <geom name="core" type="box" size="0.3 0.2 0.1" density="5"/>
      <body name="arm" pos="0.3 0 0">
        <joint name="hinge" type="hinge" axis="0 1 0" damping="0.1" limited="false"/>
        <geom name="rod" type="capsule" fromto="0 0 0 0.5 0 0" size="0.05" density="5"/>
      </body>
    </body>
  </worldbody>
  <actuator><motor joint="hinge" gear="1" ctrllimited="true" ctrlrange="-1 1"/></actuator>
</mujoco>
"""


def _register_tumbler():
    from brax import envs
    from brax.envs.base import PipelineEnv, State
    from brax.io import mjcf

    class Tumbler(PipelineEnv):
        def __init__(self, backend="generalized", **kwargs):
            super().__init__(sys=mjcf.loads(TUMBLER_XML), backend=backend, n_frames=2)

        def reset(self, rng):
            k1, k2 = jax.random.split(rng)
            q = self.sys.init_q.at[7:].add(jax.random.uniform(k1, (1,), minval=-0.5, maxval=0.5))
            qd = jax.random.uniform(k2, (self.sys.qd_size(),), minval=-1.0, maxval=1.0)
            ps = self.pipeline_init(q, qd)
            zero = jnp.zeros(())
            return State(ps, self._get_obs(ps), zero, zero, {}, {})

        def step(self, state, action):
            ps = self.pipeline_step(state.pipeline_state, action)
            return state.replace(
                pipeline_state=ps, obs=self._get_obs(ps), reward=-jnp.sum(ps.qd**2)
            )

        @property
        def action_size(self):
            return 1

        def _get_obs(self, ps):
            return jnp.concatenate([ps.q[7:], ps.qd])

    envs.register_environment("chaosgrad_tumbler", Tumbler)


@pytest.fixture(scope="module")
def pendulum():
    return brax_system("inverted_pendulum", backend="generalized", dtype="float64")


def test_bad_names_raise_input_error():
    with pytest.raises(InputError, match="inverted_pendulum"):
        systems.make("brax:no_such_env")
    with pytest.raises(InputError, match="generalized, positional, spring, mjx"):
        brax_system("inverted_pendulum", backend="warp")
    with pytest.raises(InputError, match="linear, mlp"):
        brax_system(policy="cnn")
    with pytest.raises(InputError, match="auto, reward, angle"):
        brax_system(loss="energy")


def test_same_arguments_give_same_system(pendulum):
    # one System object per configuration, so its compiled chunks are reused
    assert brax_system("inverted_pendulum", dtype="float64") is pendulum
    d = pendulum.describe()
    assert d["backend"] == "generalized" and d["env"] == "inverted_pendulum"
    assert d["loss"] == "angle" and "constant" in pendulum.loss_doc
    assert pendulum.phase_dim() == 4


def test_rotvec_round_trip():
    w = jnp.array([[0.0, 0.0, 0.0], [1e-9, -2e-9, 0.0], [0.3, -1.2, 0.5], [0.0, 3.0, 0.1]])
    q = rotvec_to_quat(w)
    np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), 1.0, atol=1e-15)
    np.testing.assert_allclose(quat_to_rotvec(q), w, atol=1e-12)
    np.testing.assert_allclose(quat_to_rotvec(-q), w, atol=1e-12)  # q and -q: one rotation
    # at the identity: d rotvec / d (x, y, z) = 2 I, finite (no 0/0)
    jac = jax.jacfwd(quat_to_rotvec)(jnp.array([1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(jac[:, 1:], 2 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(rotvec_to_quat)(jnp.zeros(3))[1:], 0.5 * np.eye(3))


def test_with_rotvecs_inverts_quat_to_rotvec_on_non_unit_quaternions():
    """Brax's resets add noise to q, quaternions included: with_phase's round trip must hold
    there too (it failed by 2-8% of a small change on Ant's reset before the replaced
    quaternion kept its norm)."""
    from chaosgrad.systems.rigid import with_rotvecs

    q = jnp.array([0.1, 0.2, 1.07, 0.02, -0.05, 0.01, 0.3])  # position, |quat| = 1.07..
    quats = np.array([[2, 3, 4, 5]])
    w0 = quat_to_rotvec(q[quats])
    back = with_rotvecs(q, quats, w0)
    np.testing.assert_allclose(back, q, atol=1e-12)  # its own rotation vector: exact
    w = w0 + jnp.array([[1e-3, -1e-3, 1e-3]])
    # with_phase adds (new − reference) to the state; both keep the norm, so the rotation
    # vector read back is the one asked for
    moved = q + (with_rotvecs(q, quats, w) - with_rotvecs(q, quats, w0))
    np.testing.assert_allclose(quat_to_rotvec(moved[quats]), w, atol=1e-12)


def test_step_jacobian_matches_finite_differences(pendulum):
    key = jax.random.PRNGKey(3)
    state = pendulum.init(split_run_key(key)[0], pendulum.theta)
    jac, fd = jac_and_fd(pendulum, state, key)
    assert jac.shape == (4, 4)
    # central differences in float64 at h=1e-6: error ~ h² |f'''| + eps/h ≈ 1e-9
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-7)
    # the closed loop matters: the policy feeds the state back into the cart force
    assert np.abs(np.asarray(jac) - np.eye(4)).max() > 0.05


def test_inverted_pendulum_positive_lyapunov_exponent(pendulum):
    # the first 2 s (50 steps) from near upright, before the pole comes to rest on its
    # ±90° joint limit (after that the flow contracts: the long-run exponents are negative)
    res = lyapunov_spectrum(
        pendulum, key=jax.random.PRNGKey(0), steps=50, k=2, transient=0, record_every=50
    )
    assert res.nonfinite_step == -1
    # the upright is a saddle: a pole of length 0.6 m alone falls at sqrt(3 g / (2 L)) ≈ 5/s;
    # joint damping and the policy's feedback slow it, but it stays well above 0
    assert res.exponents[0] > 1.0, res.exponents
    assert res.units == "per unit time" and res.dt == pytest.approx(0.04)


@pytest.mark.slow  # heavy (compile-bound, 30-80 s on 2 cores): make test-slow
def test_inverted_pendulum_gradient_grows_with_horizon(pendulum):
    g = gradient_growth(pendulum, horizons=(10, 30, 100), seeds=3, key=jax.random.PRNGKey(1))
    assert np.all(g.nonfinite_fraction == 0)
    assert g.geomean_norm[-1] > 1e3 * g.geomean_norm[0], g.geomean_norm
    assert g.growth_rate > 1.0, g.growth_rate  # per second
    assert g.system["backend"] == "generalized"


def test_no_resets_and_done_reported(pendulum):
    res = unroll(pendulum, pendulum.theta, jax.random.PRNGKey(2), 60, trajectory=True)
    q = np.asarray(res.trajectory["q"])
    done = np.asarray(res.done)
    # done is exactly brax's own termination rule |pole angle| > 0.2 on the new state ...
    np.testing.assert_array_equal(done, np.abs(q[:, 1]) > 0.2)
    assert done.any() and not done.all()
    first = int(np.argmax(done))
    # ... and nothing resets after it: no jump back to the reset box |q| <= 0.01
    assert np.all(np.abs(np.diff(q[first:, 1])) < 0.5)
    # the per-step loss is the pole angle squared of the new state
    np.testing.assert_allclose(res.losses, q[:, 1] ** 2, rtol=1e-12)


@pytest.fixture(scope="module")
def tumblers():
    _register_tumbler()
    return (
        brax_system("chaosgrad_tumbler", dtype="float64", policy_scale=2.0),
        brax_system("chaosgrad_tumbler", dtype="float64", policy_scale=2.0, rotations="quaternion"),
    )


@pytest.mark.slow  # heavy (compile-bound, 30-80 s on 2 cores): make test-slow
def test_free_joint_phase_has_no_spurious_exponent(tumblers):
    rot, raw = tumblers
    # q: 7 (free) + 1, qd: 6 + 1; one quaternion number is redundant
    assert rot.phase_dim() == 14 and raw.phase_dim() == 15
    steps = 600  # 24 s of simulated time (dt = 0.04 s)
    kw = dict(key=jax.random.PRNGKey(4), steps=steps, transient=0, record_every=200)
    lr = lyapunov_spectrum(rot, k=14, **kw)
    lq = lyapunov_spectrum(raw, k=15, **kw)
    assert lr.nonfinite_step == -1 and np.all(np.isfinite(lr.exponents))
    # raw quaternions: brax renormalises them every substep, so the norm direction is
    # crushed to rounding (log 1e-16 per 0.02 s ≈ -1800/s): far below anything physical
    assert lq.exponents[-1] < -100, lq.exponents
    # rotation vectors: every exponent is physical, and they are the raw spectrum without
    # the artificial one. Exponents do not depend on the chart, but finite-T estimates
    # from different charts and initial bases differ by C/T, C ~ log(condition) (measured
    # max differences 0.34, 0.17, 0.10, 0.033 at T = 8, 24, 40, 120 s: C ≈ 3-4 s); allow 8/T
    t_sec = steps * rot.dt
    assert lr.exponents[-1] > -20, lr.exponents
    np.testing.assert_allclose(lr.exponents, lq.exponents[:14], atol=8.0 / t_sec)
    # the sum (mean log|det J| / dt on the physical directions) agrees more tightly
    # (measured differences 0.019, 0.0046, 6e-4 at T = 8, 40, 120 s)
    assert abs(lr.exponents.sum() - lq.exponents[:14].sum()) < 0.5 / t_sec


def test_free_joint_jacobian_matches_finite_differences(tumblers):
    rot, _ = tumblers
    key = jax.random.PRNGKey(5)
    state = rot.init(split_run_key(key)[0], rot.theta)
    jac, fd = jac_and_fd(rot, state, key)
    assert jac.shape == (14, 14)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_ant_phase_has_28_coordinates_and_no_spurious_exponent():
    # ant: q has 15 entries (free torso: 3 + quaternion 4, 8 hinges), qd has 14
    rot = brax_system("ant", dtype="float64")
    raw = brax_system("ant", dtype="float64", rotations="quaternion")
    assert rot.phase_dim() == 28 and raw.phase_dim() == 29
    kw = dict(key=jax.random.PRNGKey(0), steps=100, transient=0, record_every=100)
    lr = lyapunov_spectrum(rot, k=28, **kw)
    lq = lyapunov_spectrum(raw, k=29, **kw)
    assert np.all(np.isfinite(lr.exponents)), lr.exponents
    # contacts and damping make physical exponents down to about -140/s; the quaternion-norm
    # direction, crushed to rounding by renormalisation every 0.01 s substep, lies far below
    assert lq.exponents[-1] < -500 and lq.exponents[-1] < 3 * lr.exponents[-1], (
        lq.exponents,
        lr.exponents,
    )


def test_paper_policy_is_a_tanh_normal_of_swish_layers():
    from chaosgrad.systems.rigid import (
        PAPER_MIN_STD,
        init_policy,
        policy_action,
        policy_sizes,
    )

    # closed form: obs -> 32 -> 32 -> 32 -> 32 -> 2·act, weights and biases
    def count(obs, act):
        return (obs + 1) * 32 + 3 * (32 + 1) * 32 + (32 + 1) * 2 * act

    assert policy_sizes("paper", 27, 8) == [27, 32, 32, 32, 32, 16]
    theta = init_policy(jax.random.PRNGKey(0), policy_sizes("paper", 27, 8), 1.0, jnp.float64)
    assert sum(x.size for x in jax.tree_util.tree_leaves(theta)) == count(27, 8) == 4592
    obs = jax.random.normal(jax.random.PRNGKey(1), (27,), jnp.float64)
    h = obs
    for layer in theta[:-1]:
        h = h @ layer["w"] + layer["b"]
        h = h / (1 + jnp.exp(-h))  # swish
    out = h @ theta[-1]["w"] + theta[-1]["b"]
    mean, std = out[:8], jnp.log1p(jnp.exp(out[8:])) + PAPER_MIN_STD
    key = jax.random.PRNGKey(2)
    np.testing.assert_allclose(
        policy_action("paper", theta, obs, 0.0, key), np.tanh(mean), rtol=1e-13
    )
    eps = jax.random.normal(key, (8,), jnp.float64)
    np.testing.assert_allclose(
        policy_action("paper", theta, obs, 1.0, key), np.tanh(mean + std * eps), rtol=1e-12
    )


@pytest.mark.slow  # heavy (compile-bound, 30-80 s on 2 cores): make test-slow
def test_paper_policy_runs_through_one_gradient():
    from chaosgrad.gradients import random_direction
    from chaosgrad.unroll import unroll_grad

    s = brax_system("inverted_pendulum", dtype="float64", policy="paper")
    # obs 4, action 1: 5·32 + 3·33·32 + 33·2 = 3394 weights
    assert sum(x.size for x in jax.tree_util.tree_leaves(s.theta)) == 3394
    assert s.describe()["policy_sizes"] == [4, 32, 32, 32, 32, 2]
    key = jax.random.PRNGKey(0)
    g = unroll_grad(s, s.theta, key, 10)
    assert np.isfinite(float(g.meta_loss))
    d = random_direction(s.theta, jax.random.PRNGKey(1))
    h = 1e-5
    plus, minus = (
        unroll_grad(
            s, jax.tree_util.tree_map(lambda t, u, c=c: t + c * h * u, s.theta, d), key, 10
        ).meta_loss
        for c in (1.0, -1.0)
    )
    fd = (float(plus) - float(minus)) / (2 * h)
    directional = sum(
        float(jnp.vdot(a, b))
        for a, b in zip(
            jax.tree_util.tree_leaves(g.grad), jax.tree_util.tree_leaves(d), strict=True
        )
    )
    assert abs(directional) > 1e-8
    assert directional == pytest.approx(fd, rel=1e-5, abs=1e-10)
