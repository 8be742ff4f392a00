"""MuJoCo MJX models under a deterministic policy, as a chaosgrad `System`.

θ = policy weights; the phase is (qpos, qvel) with free/ball-joint quaternions as rotation
vectors. The models are small MJCF files shipped in systems/mjx_models/ (no downloads).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_int
from chaosgrad.config import precision_name as _precision
from chaosgrad.errors import InputError, require
from chaosgrad.system import StepOut, System

from .rigid import (
    cast_floats,
    check_policy,
    check_run_settings,
    init_policy,
    like,
    policy_action,
    policy_doc,
    policy_sizes,
    quat_to_rotvec,
    with_rotvecs,
)

MODEL_DIR = Path(__file__).resolve().parent / "mjx_models"
# mjx reverse mode needs a fixed-length constraint solver (no while_loop); our models have
# no contacts or limits, but a solver count is set anyway and recorded in meta
SOLVER_ITERATIONS = 1
# MuJoCo joint types (mjtJoint): free 0, ball 1, slide 2, hinge 3
_FREE, _BALL, _SLIDE, _HINGE = 0, 1, 2, 3


def _mujoco():
    """(mujoco, mujoco.mjx), or MissingExtra naming the ``mjx`` extra. mjx prints a notice
    to stdout when its optional warp backend is absent: kept off stdout (JSON goes there)."""
    with contextlib.redirect_stdout(io.StringIO()):
        mujoco = require("mujoco", "mjx")
        mjx = require("mujoco.mjx", "mjx")
    return mujoco, mjx


# -- the shipped models: reset distribution and reward of each --------------------------------
class Model(NamedTuple):
    """A shipped MJCF model: file, control repeat, reset and reward (both pure functions of
    arrays: ``reset(key, qpos0, nv) -> (qpos, qvel)``, ``reward(qpos, qvel) -> scalar``)."""

    xml: str
    n_frames: int
    reset: Callable
    reward: Callable
    reward_doc: str
    description: str


def _reset_double_pendulum(key, qpos0, nv):
    # near the top (q1 = π - 0.3, q2 = 0.6): energy far above the rest state, the
    # uncontrolled motion is chaotic (2 dof, energy conserved, no regular island there)
    k1, k2 = jax.random.split(key)
    q = jnp.asarray([np.pi - 0.3, 0.6], qpos0.dtype) + jax.random.uniform(
        k1, (2,), qpos0.dtype, -0.05, 0.05
    )
    return q, jax.random.uniform(k2, (nv,), qpos0.dtype, -0.05, 0.05)


def _reset_cartpole(key, qpos0, nv):
    k1, k2 = jax.random.split(key)
    return (
        qpos0 + jax.random.uniform(k1, qpos0.shape, qpos0.dtype, -0.05, 0.05),
        jax.random.uniform(k2, (nv,), qpos0.dtype, -0.05, 0.05),
    )


def _reset_tumbler(key, qpos0, nv):
    k1, k2 = jax.random.split(key)
    q = qpos0.at[7:].add(jax.random.uniform(k1, (1,), qpos0.dtype, -0.5, 0.5))
    return q, jax.random.uniform(k2, (nv,), qpos0.dtype, -1.0, 1.0)


MODELS = {
    "double_pendulum": Model(
        "double_pendulum.xml",
        2,
        _reset_double_pendulum,
        lambda q, qd: -(jnp.cos(q[0]) + jnp.cos(q[0] + q[1])),
        "tip height above the pivot, -(cos q1 + cos(q1 + q2)) m (swing-up)",
        "planar double pendulum (two 1 m rods, undamped, RK4 0.01 s), motor on the shoulder",
    ),
    "cartpole": Model(
        "cartpole.xml",
        2,
        _reset_cartpole,
        lambda q, qd: jnp.cos(q[1]) - 0.01 * q[0] ** 2,
        "cos(pole angle) - 0.01 cart position² (balance upright)",
        "cart on an unlimited rail with a 1 m pole, upright start (a saddle)",
    ),
    "tumbler": Model(
        "tumbler.xml",
        2,
        _reset_tumbler,
        lambda q, qd: -jnp.sum(qd**2),
        "-|qvel|² (bring the free body and its arm to rest)",
        "free-floating box with a motorised arm, no gravity or contacts (a free joint)",
    ),
}


def model_names() -> list[str]:
    """Names of the shipped MJCF models ``mjx:NAME`` accepts."""
    return sorted(MODELS)


class _Layout(NamedTuple):
    """Indices into qpos: plain entries, quaternions (rows of 4, shown as rotation vectors)."""

    plain: np.ndarray
    quats: np.ndarray


def _layout(mj_model) -> _Layout:
    plain: list[int] = []
    quats: list[list[int]] = []
    for j in range(mj_model.njnt):
        typ, adr = int(mj_model.jnt_type[j]), int(mj_model.jnt_qposadr[j])
        if typ == _FREE:
            plain.extend(range(adr, adr + 3))
            quats.append(list(range(adr + 3, adr + 7)))
        elif typ == _BALL:
            quats.append(list(range(adr, adr + 4)))
        else:
            plain.append(adr)
    return _Layout(np.asarray(plain, np.int32), np.asarray(quats, np.int32).reshape(-1, 4))


class _Spec(NamedTuple):
    """`mjx_system`'s checked arguments (hashable: equal specs give the same System)."""

    model: str
    policy: str
    hidden: int
    layers: int
    horizon: int
    policy_scale: float
    action_noise: float
    seed: int
    n_frames: int
    dt_name: str


class _Adapter:
    """init / step / phase / with_phase of one MJX model under a policy (see `mjx_system`)."""

    def __init__(self, mjx, m, d0, model: Model, lay: _Layout, spec: _Spec, n_frames: int):
        self.mjx, self.m, self.d0, self.model, self.lay = mjx, m, d0, model, lay
        self.spec, self.n_frames = spec, n_frames

    def observe(self, d):
        return jnp.concatenate([d.qpos, d.qvel])

    def init(self, key, theta):
        qpos, qvel = self.model.reset(key, self.d0.qpos, self.d0.qvel.shape[0])
        return self.d0.replace(
            qpos=qpos.astype(self.d0.qpos.dtype), qvel=qvel.astype(self.d0.qvel.dtype)
        )

    def step(self, d, theta, key):
        a = policy_action(self.spec.policy, theta, self.observe(d), self.spec.action_noise, key)
        new = d.replace(ctrl=a.astype(d.ctrl.dtype))

        def frame(x, _):
            return like(self.mjx.step(self.m, x), x), None

        new, _ = jax.lax.scan(frame, new, None, length=self.n_frames)
        r = self.model.reward(new.qpos, new.qvel)
        return new, StepOut(loss=-r, aux={"reward": r})

    def phase(self, d):
        out = {"q": d.qpos[self.lay.plain], "qd": d.qvel}
        if self.lay.quats.size:
            out["rot"] = quat_to_rotvec(d.qpos[self.lay.quats])
        return out

    def with_phase(self, d, p):
        q = d.qpos.at[self.lay.plain].set(p["q"])
        if self.lay.quats.size:
            q = with_rotvecs(q, self.lay.quats, p["rot"])
        return d.replace(qpos=q, qvel=p["qd"])


@functools.lru_cache(maxsize=32)
def _build(spec: _Spec) -> System:
    mujoco, mjx = _mujoco()
    dt = jnp.dtype(spec.dt_name)
    model = MODELS[spec.model]
    mj = mujoco.MjModel.from_xml_path(str(MODEL_DIR / model.xml))
    mj.opt.iterations = SOLVER_ITERATIONS
    mj.opt.ls_iterations = SOLVER_ITERATIONS
    n_frames = spec.n_frames or model.n_frames
    with contextlib.redirect_stdout(io.StringIO()):
        m = cast_floats(mjx.put_model(mj), dt)
        d0 = cast_floats(mjx.make_data(m), dt)
    lay = _layout(mj)
    sizes = policy_sizes(spec.policy, int(mj.nq + mj.nv), int(mj.nu), spec.hidden, spec.layers)
    theta0 = init_policy(jax.random.PRNGKey(spec.seed), sizes, spec.policy_scale, dt)
    ad = _Adapter(mjx, m, d0, model, lay, spec, n_frames)
    n_quat = int(lay.quats.shape[0])
    env_dt = float(mj.opt.timestep) * n_frames
    return System(
        ad.init,
        ad.step,
        phase=ad.phase,
        with_phase=ad.with_phase,
        name=f"mjx:{spec.model}",
        theta=theta0,
        dt=env_dt,
        horizon=spec.horizon,
        precision=_precision(dt),
        description=f"MJX {spec.model}: {model.description}; physics dt "
        f"{float(mj.opt.timestep):g} x {n_frames} per step, under a deterministic "
        f"{spec.policy} policy, no resets",
        theta_doc=f"policy weights, list of layers {{w, b}} ({policy_doc(spec.policy, sizes)})"
        f"; init N(0, {spec.policy_scale}^2/fan_in) from seed {spec.seed}",
        loss_doc=f"-reward of the step; reward = {model.reward_doc}",
        metadata={
            "model": spec.model,
            "xml": model.xml,
            "policy": spec.policy,
            "policy_sizes": sizes,
            "policy_scale": spec.policy_scale,
            "action_noise": spec.action_noise,
            "seed": spec.seed,
            "obs": "(qpos, qvel)",
            "obs_size": sizes[0],
            "action_size": int(mj.nu),
            "nq": int(mj.nq),
            "nv": int(mj.nv),
            "quaternions": n_quat,
            "phase_dim": int(mj.nq) - n_quat + int(mj.nv),
            "phase_coords": (
                "(qpos, qvel); free/ball-joint quaternions as rotation vectors"
                if n_quat
                else "(qpos, qvel)"
            ),
            "env_dt": env_dt,
            "physics_timestep": float(mj.opt.timestep),
            "n_frames": n_frames,
            "solver_iterations": SOLVER_ITERATIONS,
            "resets": "none",
            "mujoco": mujoco.__version__,
        },
    )


def mjx_system(
    model: str = "double_pendulum",
    policy: str = "linear",
    hidden: int = 32,
    layers: int = 2,
    horizon: int = 100,
    policy_scale: float = 1.0,
    action_noise: float = 0.0,
    seed: int = 0,
    n_frames: int = 0,
    dtype: str | None = None,
) -> System:
    """A shipped MJCF model simulated by MuJoCo MJX under a policy π_θ, as a `System`.

    Step: a_t = π_θ(obs_t) with obs = (qpos, qvel) (+ ``action_noise`` randomness from the
    step key), written to ``ctrl``, then ``n_frames`` calls of ``mjx.step``. No resets.
    Loss ℓ_t = −reward of the new state (each model's reward is in ``loss_doc``):
    double_pendulum: the tip height (swing-up); cartpole: cos(pole angle) − 0.01 x²;
    tumbler: −|qvel|².

    θ: the same policies as `brax_system` (``"linear"``, ``"mlp"``, ``"paper"``), with
    w ~ N(0, policy_scale²/fan_in), b = 0 from ``seed`` (``policy_scale=0``: θ = 0, so the
    action is 0 and the system is uncontrolled).

    Phase: {"q", "qd", "rot"}: qpos without its quaternions, qvel, and each free- or
    ball-joint quaternion as a rotation vector (3 numbers for 3 degrees of freedom, so no
    artificial norm direction; see `brax_system`). Every other field of MJX's Data (derived
    kinematics, solver warm start) is recomputed by the next ``mjx.step``.

    Args:
      model: one of `model_names()` (``mjx:NAME`` sets it).
      policy: "linear", "mlp" or "paper" (see above).
      hidden: width of the "mlp" policy's hidden layers.
      layers: number of the "mlp" policy's hidden layers.
      policy_scale: the default θ's weights are N(0, policy_scale²/fan_in).
      seed: draws the default θ.
      horizon: the natural unroll length.
      action_noise: Gaussian action noise (for ``"paper"``: the multiple of its own scale).
      n_frames: physics steps per system step (0: the model's own, 2 for every shipped one).
      dtype: "float32" or "float64" (default: JAX's current default float).

    Returns:
      A `System` (``dt`` = physics timestep × n_frames, so exponents are per second); the
      same arguments return the same object, so compiled chunks are reused.
    """
    if model not in MODELS:
        raise InputError(f"unknown mjx model {model!r}; accepted: {', '.join(model_names())}")
    check_policy(policy, hidden, layers)
    n_frames = check_int(n_frames, "mjx n_frames (0 = the model's own)", lo=0)
    horizon = check_int(horizon, "mjx horizon", lo=1)
    seed = check_int(seed, "mjx seed", lo=0, hi=2**32 - 1)
    hidden = check_int(hidden, "mjx hidden", lo=0)
    layers = check_int(layers, "mjx layers", lo=0)
    if not policy_scale >= 0:
        raise InputError(f"policy_scale must be >= 0, got {policy_scale!r}")
    dtype_name = check_run_settings(horizon, action_noise, dtype)
    return _build(
        _Spec(
            model,
            policy,
            int(hidden),
            int(layers),
            int(horizon),
            float(policy_scale),
            float(action_noise),
            int(seed),
            int(n_frames),
            dtype_name,
        )
    )
