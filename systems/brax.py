"""Brax rigid-body environments under a deterministic policy, as a chaosgrad `System`.

θ = policy weights; the phase is the generalized coordinates (q, q̇) with free-joint
quaternions in rotation-vector coordinates; no resets inside an unroll.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_int
from chaosgrad.config import precision_name as _precision
from chaosgrad.errors import InputError, require
from chaosgrad.system import StepOut, System

from .rigid import (
    POLICIES,
    apply_policy,
    cast_floats,
    check_policy,
    check_run_settings,
    init_policy,
    like,
    policy_action,
    policy_doc,
    policy_sizes,
    quat_to_rotvec,
    rotvec_to_quat,
    with_rotvecs,
)

__all__ = [
    "BACKENDS",
    "POLICIES",
    "apply_policy",
    "brax_system",
    "env_names",
    "init_policy",
    "quat_to_rotvec",
    "rotvec_to_quat",
]

BACKENDS = ("generalized", "positional", "spring", "mjx")
LOSSES = ("auto", "reward", "angle")
ROTATIONS = ("rotvec", "quaternion")
# Environments whose reward carries no gradient: "auto" picks a state-dependent loss.
CONSTANT_REWARD = {"inverted_pendulum": "angle"}
# Physics substeps "auto" picks: brax's generalized inverted_pendulum at its shipped 0.02 s
# timestep blows up (|q| ~ 1e24 within 300-1500 steps, even with zero action) when the pole
# bounces on its joint limits; at 0.01 s it stays bounded over 1,500 steps.
AUTO_SUBSTEPS = {("inverted_pendulum", "generalized"): 2}
MJX_SOLVER_ITERATIONS = 1  # mjx reverse mode needs a fixed-length solver (no while_loop)


def _envs():
    return require("brax.envs", "brax")


def env_names() -> list[str]:
    """Names of the environments `brax.envs` can build (bundled and registered ones)."""
    envs = _envs()

    return sorted(getattr(envs, "_envs", {}))


def _joint_layout(sys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays into q: the non-quaternion entries, the free-joint quaternions
    (shape (n_free, 4)), and the hinge (rotational 1–3 dof) angles."""
    base = require("brax.base", "brax")
    Q_WIDTHS, QD_WIDTHS = base.Q_WIDTHS, base.QD_WIDTHS

    ang = np.asarray(sys.dof.motion.ang)
    plain: list[int] = []
    quats: list[list[int]] = []
    hinges: list[int] = []
    qi = di = 0
    for typ in sys.link_types:
        if typ == "f":
            plain.extend(range(qi, qi + 3))
            quats.append(list(range(qi + 3, qi + 7)))
        else:
            for j in range(Q_WIDTHS[typ]):
                plain.append(qi + j)
                if np.linalg.norm(ang[di + j]) > 0:
                    hinges.append(qi + j)
        qi += Q_WIDTHS[typ]
        di += QD_WIDTHS[typ]
    return (
        np.asarray(plain, np.int32),
        np.asarray(quats, np.int32).reshape(-1, 4),
        np.asarray(hinges, np.int32),
    )


def _tree_add_delta(base, new, ref):
    """base + (new − ref) on float leaves (exact ``base`` in value when new == ref)."""

    def f(b, n, r):
        if jnp.issubdtype(jnp.asarray(b).dtype, jnp.inexact):
            return b + (n - r)
        return b

    return jax.tree_util.tree_map(f, base, new, ref)


def _make_env(env: str, backend: str):
    envs = _envs()

    names = env_names()
    if env not in names:
        raise InputError(f"unknown brax environment {env!r}; accepted: {', '.join(names)}")
    if backend not in BACKENDS:
        raise InputError(f"unknown brax backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    try:
        e = envs.get_environment(env, backend=backend)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"brax environment {env!r} cannot be built with backend {backend!r}: {err}"
        ) from None
    if not hasattr(e, "pipeline_init") or not hasattr(e, "_get_obs") or not hasattr(e, "sys"):
        others = ", ".join(n for n in names if n != "fast")
        raise InputError(
            f"brax environment {env!r} is not a physics PipelineEnv with a "
            f"flat observation; use one of {others}"
        )
    return e


class _Spec(NamedTuple):
    """`brax_system`'s checked arguments (hashable: equal specs give the same System)."""

    env: str
    backend: str
    policy: str
    hidden: int
    layers: int
    horizon: int
    policy_scale: float
    action_noise: float
    seed: int
    loss: str
    rotations: str
    substeps: int
    dt_name: str


def _configured_env(spec: _Spec):
    """The env with its physics cast to the working dtype, mjx's solver fixed for reverse
    mode, and substeps applied; returns (env, mjx iterations or None, substeps used)."""
    e = _make_env(spec.env, spec.backend)
    sys = cast_floats(e.sys, jnp.dtype(spec.dt_name))
    mjx_iters = None
    if spec.backend == "mjx":
        mjx_iters = MJX_SOLVER_ITERATIONS
        sys = sys.tree_replace({"opt.iterations": mjx_iters})
    substeps = spec.substeps or AUTO_SUBSTEPS.get((spec.env, spec.backend), 1)
    if substeps > 1:  # same control step env.dt, finer physics
        sys = sys.tree_replace({"opt.timestep": sys.opt.timestep / substeps})
        e._n_frames = e._n_frames * substeps
    e.sys = sys
    return e, mjx_iters, substeps


class _Layout(NamedTuple):
    """Where the phase's coordinates sit in q: plain entries, free-joint quaternions (as
    rotation vectors in the phase), hinge angles; n_rot counts raw quaternions kept whole."""

    plain: np.ndarray
    quats: np.ndarray
    hinges: np.ndarray
    n_free: int
    n_rot: int


def _layout(sys, rotations: str) -> _Layout:
    plain, quats, hinges = _joint_layout(sys)
    n_free = int(quats.shape[0])
    if rotations == "quaternion":  # raw q: quaternions kept whole (the artificial direction)
        return _Layout(np.arange(int(sys.q_size()), dtype=np.int32), quats[:0], hinges, 0, n_free)
    return _Layout(plain, quats, hinges, n_free, 0)


class _Adapter:
    """init / step / phase / with_phase of one configured env under a policy (see
    `brax_system` for what each does)."""

    def __init__(self, e, layout: _Layout, loss_kind: str, policy: str, action_noise: float, dt):
        self.e, self.lay, self.loss_kind, self.policy = e, layout, loss_kind, policy
        self.action_noise, self.dt = action_noise, dt
        self.act_size = int(e.action_size)
        self.obs_takes_action = len(inspect.signature(e._get_obs).parameters) >= 2

    def observe(self, ps, action):
        return self.e._get_obs(ps, action) if self.obs_takes_action else self.e._get_obs(ps)

    def init(self, key, theta):
        s = self.e.reset(key)
        s = s.replace(info={**s.info, "action": jnp.zeros((self.act_size,), self.dt)})
        return cast_floats(s, self.dt)

    def step(self, state, theta, key):
        action = policy_action(self.policy, theta, state.obs, self.action_noise, key)
        # some envs (ant) update state.metrics in place: give them copies, so no value
        # traced inside a transformation leaks into the caller's state
        new = self.e.step(state.replace(metrics=dict(state.metrics), info=dict(state.info)), action)
        new = new.replace(info={**new.info, "action": action})
        new = like(new, state)
        if self.loss_kind == "angle":
            ell = jnp.sum(new.pipeline_state.q[self.lay.hinges] ** 2)
        else:
            ell = -new.reward
        return new, StepOut(loss=ell, done=new.done > 0.5, aux={"reward": new.reward})

    def phase(self, state):
        q, qd = state.pipeline_state.q, state.pipeline_state.qd
        out = {"q": q[self.lay.plain], "qd": qd}
        if self.lay.n_free:
            out["rot"] = quat_to_rotvec(q[self.lay.quats])
        return out

    def _decode(self, state, p):
        q = state.pipeline_state.q
        q = q.at[self.lay.plain].set(p["q"])
        if self.lay.n_free:
            q = with_rotvecs(q, self.lay.quats, p["rot"])
        return q, p["qd"]

    def _rebuild(self, state, q, qd):
        ps = like(self.e.pipeline_init(q, qd), state.pipeline_state)
        return ps, self.observe(ps, state.info["action"]).astype(state.obs.dtype)

    def with_phase(self, state, p):
        ps_new, obs_new = self._rebuild(state, *self._decode(state, p))
        ps_ref, obs_ref = self._rebuild(state, *self._decode(state, self.phase(state)))
        ps = _tree_add_delta(state.pipeline_state, ps_new, ps_ref)
        return state.replace(pipeline_state=ps, obs=state.obs + (obs_new - obs_ref))


def _policy_sizes(e, spec: _Spec) -> list[int]:
    probe = jax.eval_shape(e.reset, jax.random.PRNGKey(0))
    if not hasattr(probe.obs, "shape") or probe.obs.ndim != 1:
        raise InputError(
            f"brax environment {spec.env!r} has a non-flat observation; "
            "only flat-array observations are supported"
        )
    return policy_sizes(
        spec.policy, int(probe.obs.shape[0]), int(e.action_size), spec.hidden, spec.layers
    )


@functools.lru_cache(maxsize=32)
def _build(spec: _Spec) -> System:
    dt = jnp.dtype(spec.dt_name)
    env, loss = spec.env, spec.loss
    e, mjx_iters, substeps = _configured_env(spec)
    sys = e.sys
    lay = _layout(sys, spec.rotations)
    loss_kind = CONSTANT_REWARD.get(env, "reward") if loss == "auto" else loss
    if loss_kind == "angle" and lay.hinges.size == 0:
        raise InputError(
            f"loss 'angle' needs hinge joints and {env!r} has none; "
            f"accepted losses: {', '.join(LOSSES)}"
        )
    sizes = _policy_sizes(e, spec)
    theta0 = init_policy(jax.random.PRNGKey(spec.seed), sizes, spec.policy_scale, dt)
    ad = _Adapter(e, lay, loss_kind, spec.policy, spec.action_noise, dt)
    q_size, qd_size = int(sys.q_size()), int(sys.qd_size())
    if loss_kind == "angle":
        loss_doc = "sum of squared hinge angles of the next state" + (
            f" (auto: {env}'s reward is constant, so -reward has gradient 0)"
            if loss == "auto"
            else ""
        )
    else:
        loss_doc = "-reward of the step (the environment's reward)"
    n_free, n_rot = lay.n_free, lay.n_rot
    return System(
        ad.init,
        ad.step,
        phase=ad.phase,
        with_phase=ad.with_phase,
        name=f"brax:{env}",
        theta=theta0,
        dt=float(e.dt),
        horizon=spec.horizon,
        precision=_precision(dt),
        description=f"Brax {env} ({spec.backend} backend, physics dt "
        f"{float(sys.opt.timestep):g} x {int(e._n_frames)}) under a "
        f"deterministic {spec.policy} policy, no resets",
        theta_doc=f"policy weights, list of layers {{w, b}} "
        f"({policy_doc(spec.policy, sizes)}); "
        f"init N(0, {spec.policy_scale}^2/fan_in) from seed {spec.seed}",
        loss_doc=loss_doc,
        metadata={
            "env": env,
            "backend": spec.backend,
            "policy": spec.policy,
            "policy_sizes": sizes,
            "policy_scale": spec.policy_scale,
            "action_noise": spec.action_noise,
            "seed": spec.seed,
            "loss": loss_kind,
            "loss_requested": loss,
            "obs_size": sizes[0],
            "action_size": sizes[-1],
            "q_size": q_size,
            "qd_size": qd_size,
            "free_joints": n_free + n_rot,
            "phase_dim": q_size - n_free + qd_size,
            "phase_coords": (
                "(q, qd); free-joint quaternions as rotation vectors"
                if n_free
                else "(q, qd); raw quaternions (one artificial direction per free joint)"
                if n_rot
                else "(q, qd)"
            ),
            "env_dt": float(e.dt),
            "resets": "none (done is reported, the unroll goes on)",
            "mjx_solver_iterations": mjx_iters,
            "substeps": substeps,
            "physics_timestep": float(sys.opt.timestep),
            "n_frames": int(e._n_frames),
        },
    )


def brax_system(
    env: str = "inverted_pendulum",
    backend: str = "generalized",
    policy: str = "linear",
    hidden: int = 32,
    layers: int = 2,
    horizon: int = 100,
    policy_scale: float = 1.0,
    action_noise: float = 0.0,
    seed: int = 0,
    loss: str = "auto",
    rotations: str = "rotvec",
    substeps: int = 0,
    dtype: str | None = None,
) -> System:
    """A Brax environment driven by a deterministic policy π_θ, one env step per system step.

    Step: a_t = π_θ(obs_t) (+ ``action_noise`` · N(0, 1) from the step key), then
    ``env.step``. Brax's auto-reset wrappers are not used: a terminated episode goes on
    (``done`` is reported in `StepOut`), so chaos is not hidden by resets.

    θ: a list of layers ``{"w", "b"}``; ``policy="linear"`` is a = tanh(W obs + b),
    ``"mlp"`` has ``layers`` hidden tanh layers of width ``hidden``; ``"paper"`` is the
    paper's (Brax's default policy of 2021): 4 hidden layers of 32 swish units whose output
    is the mean m and raw scale s of a tanh-Normal; the step takes a = tanh(m), or with
    ``action_noise`` > 0 a = tanh(m + action_noise · (softplus(s) + 0.001) · N(0, 1))
    (``action_noise=1`` samples the policy's own distribution); ``hidden`` and ``layers``
    are ignored. The default θ is drawn from ``seed``: w ~ N(0, policy_scale²/fan_in),
    b = 0.

    Loss: ``"reward"`` is ℓ_t = −r_t. ``"angle"`` is the sum of squared hinge angles of the
    next state. ``"auto"`` is −reward except for inverted_pendulum, whose reward is the
    constant 1 (its gradient is exactly 0), where it is ``"angle"`` (the pole angle²).
    ``loss_doc`` and ``meta["loss"]`` say which one a system uses.

    Phase (the coordinates of Jacobians and Lyapunov spectra): the generalized coordinates
    {"q", "qd", "rot"} of the pipeline state. A free joint's orientation is a unit
    quaternion, four numbers for three degrees of freedom; in those coordinates the
    Jacobian has one artificial direction (the quaternion norm, which brax renormalises
    away, giving a spurious −∞ exponent; without renormalisation a spurious 0). So each
    free-joint quaternion is replaced by its rotation vector ω = angle · axis (|ω| ≤ π, a
    chart that is smooth and well conditioned away from |ω| = π, where the spectra are
    unaffected since consecutive charts agree), and the phase has 2·dof entries (ant: 14 +
    14 = 28, not 29). ``with_phase`` rebuilds the whole state from (q, qd) by the backend's
    ``pipeline_init`` (forward kinematics, inertia, observation) and applies the change
    relative to the current state, so the state is exact in value at the base point and
    perturbations move along the joint manifold. For spring/positional (maximal
    coordinates) this confines perturbations to joint-consistent ones; the stiff
    joint-spring modes are not part of the phase. Observations that depend on the previous
    action (humanoid) hold that action fixed under a perturbation.

    Args:
      env: a `brax.envs` name (``env_names()``).
      backend: "generalized", "positional", "spring" or "mjx" (mjx runs with
        ``opt.iterations = 1`` so reverse mode works; recorded in ``meta``).
      policy: "linear", "mlp" or "paper" (see above).
      hidden: width of the "mlp" policy's hidden layers.
      layers: number of the "mlp" policy's hidden layers.
      policy_scale: the default θ's weights are N(0, policy_scale²/fan_in).
      seed: draws the default θ.
      horizon: the natural unroll length.
      action_noise: standard deviation of Gaussian noise added to actions (0: none); for
        ``policy="paper"`` the multiple of the policy's own scale (see above).
      loss: "auto", "reward" or "angle".
      rotations: "rotvec" (above) or "quaternion": the raw q with whole quaternions, only
        to see the artificial direction (phase dimension one larger per free joint).
      substeps: split each physics step of the env into this many (same control step
        ``env.dt``); 0 = auto: 2 for inverted_pendulum on generalized (whose shipped
        timestep blows up numerically within a few hundred steps), else 1 (brax as shipped).
      dtype: "float32" or "float64" (default: JAX's current default float); the brax
        system's constants are cast to it.

    Returns:
      A `System` (``dt`` = the env's control step, so exponents are per second). The
      same arguments return the same object, so compiled chunks are reused.
    """
    check_policy(policy, hidden, layers)
    if loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; accepted: {', '.join(LOSSES)}")
    if rotations not in ROTATIONS:
        raise InputError(f"unknown rotations {rotations!r}; accepted: {', '.join(ROTATIONS)}")
    substeps = check_int(substeps, "brax substeps (0 = auto)", lo=0)
    horizon = check_int(horizon, "brax horizon", lo=1)
    seed = check_int(seed, "brax seed", lo=0, hi=2**32 - 1)
    hidden = check_int(hidden, "brax hidden", lo=0)
    layers = check_int(layers, "brax layers", lo=0)
    dtype_name = check_run_settings(horizon, action_noise, dtype)
    return _build(
        _Spec(
            env,
            backend,
            policy,
            int(hidden),
            int(layers),
            int(horizon),
            float(policy_scale),
            float(action_noise),
            int(seed),
            loss,
            rotations,
            int(substeps),
            dtype_name,
        )
    )
