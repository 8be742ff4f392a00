"""jax-md soft-sphere packing (the paper's Figure 4) behind the `chaosgrad.System` interface.

A periodic 2-D bidisperse soft-sphere system whose parameter θ is the small diameter D; modes
``fire`` (FIRE minimisation), ``nve``, ``nvt`` (Nosé–Hoover) and ``brownian``.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from chaosgrad.checks import check_int
from chaosgrad.config import precision_name as _precision
from chaosgrad.config import resolve_dtype as _dtype
from chaosgrad.errors import InputError, require
from chaosgrad.system import StepOut, System

MODES = ("fire", "nve", "nvt", "brownian")
# Per-mode time steps. FIRE: jax-md's own dt_start (its dt_max is 4x that). The others are
# stable with margin at packing 0.98: the stiffest pair (σ = D) has k = 1/D², and with about
# six contacts ω·dt ≈ 0.04 at D = 0.6 for dt = 0.01; Brownian moves dt·F/γ, so its step is
# γ = 0.1 times smaller.
DEFAULT_DT = {"fire": 0.1, "nve": 0.01, "nvt": 0.01, "brownian": 0.001}
SPATIAL_DIM = 2
PyTree = Any


def _jax_md():
    # Importing jax_md takes seconds (it pulls e3nn-jax, pymatgen): only when a system is built.
    require("jax_md", "md")
    from jax_md import energy, minimize, simulate, space

    return energy, minimize, simulate, space


def box_side(d_small, n: int = 32, packing: float = 0.98):
    """Side L of the square periodic box that puts ``n`` bidisperse disks at ``packing``.

    ``n // 2`` disks have diameter ``d_small`` (= D) and the rest diameter 1, so the disks
    cover n_s π D²/4 + n_l π/4 and L = sqrt(that / packing). For n = 128 this is the paper's
    L = sqrt(64 π (D² + 1)/4 / 0.98). Works on traced ``d_small`` (it is differentiable).
    """
    n_small, n_large = n // 2, n - n // 2
    area = (n_small * d_small**2 + n_large) * (np.pi / 4)
    return jnp.sqrt(area / packing)


def pair_sigma(d_small) -> jax.Array:
    """The 2 × 2 matrix of contact distances: σ_SS = D, σ_SL = (D + 1)/2, σ_LL = 1."""
    d_small = jnp.asarray(d_small)
    mid = (d_small + 1) / 2
    one = jnp.ones_like(d_small)
    return jnp.stack([jnp.stack([d_small, mid]), jnp.stack([mid, one])])


def species(n: int) -> np.ndarray:
    """Species of each particle: 0 (small) for the first ``n // 2``, 1 (large) for the rest."""
    return (np.arange(n) >= n // 2).astype(np.int32)


@contextlib.contextmanager
def _quiet_float64_request():
    # jax-md sums energies "in float64" (util.high_precision_sum); JAX without x64 truncates
    # that to float32 with a UserWarning at trace time. Expected: the run is float32 then,
    # as its precision record says.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Explicitly requested dtype float64")
        yield


class Geometry(NamedTuple):
    """The physics at one θ = D, on fractional positions u ∈ R^{n×2} (real x = L u).

    Attributes:
      box_side: L(D).
      energy: u ↦ total potential energy Σ_{i<j} ½ (1 − r_ij/σ_ij)² for r_ij < σ_ij.
      force: u ↦ −∂E/∂x = −(1/L) ∂E/∂u, the force in real space (what integrators need).
      shift: (u, dx) ↦ u + dx / L, unwrapped (no reduction into the unit cell).
      displacement: (u_a, u_b) ↦ L · minimum-image(u_a − u_b), a real-space vector.
    """

    box_side: jax.Array
    energy: Any
    force: Any
    shift: Any
    displacement: Any


def geometry(d_small, n: int = 32, packing: float = 0.98) -> Geometry:
    """The energy, force, shift and displacement functions of the packing at D = ``d_small``.

    Positions are fractional and *unwrapped*: the minimum image is taken on differences
    (``space.periodic_general(1.0, fractional_coordinates=True, wrapped=False)``), so a disk
    crossing the boundary moves continuously and the step has no jumps for Jacobians.

    The box enters only as the explicit factor L(D) on the unit-cell displacement, so
    autodiff sees the true dependence on D. (Passing ``box=L`` to ``periodic_general``
    instead routes L through jax-md's ``space.transform``, whose custom JVP lets tangents
    pass through unscaled by L, to make ``grad(energy)`` a real-space force; that
    convention gives derivatives with respect to the box, and Jacobians in fractional
    coordinates, that disagree with finite differences.)
    """
    energy, _, _, space = _jax_md()
    side = box_side(d_small, n, packing)
    unit_disp, unit_shift = space.periodic_general(1.0, fractional_coordinates=True, wrapped=False)

    def displacement(ua, ub, **unused):
        return side * unit_disp(ua, ub)

    pair_energy = energy.soft_sphere_pair(
        displacement, species=species(n), sigma=pair_sigma(d_small), epsilon=1.0, alpha=2.0
    )

    def energy_fn(u, **unused):
        with _quiet_float64_request():
            return pair_energy(u)

    def force(u, **unused):
        return -jax.grad(energy_fn)(u) / side

    def shift(u, dx, **unused):
        return unit_shift(u, dx / side)

    return Geometry(side, energy_fn, force, shift, displacement)


def kinetic_energy(momentum: jax.Array, mass=1.0) -> jax.Array:
    """Σ p² / 2m (real-space momenta)."""
    return jnp.sum(momentum**2) / (2 * mass)


class _MDConfig(NamedTuple):
    """The checked settings of one md system (see `md_system`)."""

    mode: str
    n: int
    packing: float
    side: float
    step_dt: float
    kT: float
    gamma: float
    nh_tau: float
    chain_length: int
    init_seed: int
    fdt: Any


def _md_config(
    mode, n, d_small, packing, dt, kT, gamma, tau, chain_length, init_seed, dtype
) -> _MDConfig:
    """Check `md_system`'s parameters (InputError naming the bad one) and derive the rest."""
    if mode not in MODES:
        raise InputError(f"md mode {mode!r} is not accepted: use one of {', '.join(MODES)}")
    fdt = _dtype(dtype)
    n = check_int(n, "md n", lo=4)
    if not d_small > 0:
        raise InputError(f"md d_small must be positive, got {d_small!r}")
    if not packing > 0:
        raise InputError(f"md packing must be positive, got {packing!r}")
    side = float(box_side(float(d_small), n, float(packing)))
    if not side > 2 * max(1.0, float(d_small)):
        raise InputError(
            f"md box side L = {side:.3g} (n={n}, d_small={d_small}, packing={packing}) must "
            f"exceed twice the largest diameter ({2 * max(1.0, d_small):.3g}) for the minimum "
            "image: use more particles or a lower packing"
        )
    step_dt = DEFAULT_DT[mode] if dt is None else float(dt)
    if not step_dt > 0:
        raise InputError(f"md dt must be positive, got {dt!r}")
    if not kT >= 0:
        raise InputError(f"md kT must be ≥ 0, got {kT!r}")
    if not gamma > 0:
        raise InputError(f"md gamma must be positive, got {gamma!r}")
    if tau is not None and not tau > 0:
        raise InputError(f"md tau must be positive, got {tau!r}")
    chain_length = check_int(chain_length, "md chain_length", lo=2)
    init_seed = check_int(init_seed, "md init_seed", lo=-1)
    nh_tau = 100 * step_dt if tau is None else float(tau)
    return _MDConfig(
        mode,
        n,
        float(packing),
        side,
        step_dt,
        float(kT),
        float(gamma),
        nh_tau,
        int(chain_length),
        int(init_seed),
        fdt,
    )


def _integrator(cfg: _MDConfig, theta):
    """The geometry at diameter θ and jax-md's (init_fn, apply_fn) for the mode."""
    _, minimize, simulate, _ = _jax_md()
    g = geometry(theta, cfg.n, cfg.packing)
    if cfg.mode == "fire":
        fns = minimize.fire_descent(g.force, g.shift, dt_start=cfg.step_dt, dt_max=4 * cfg.step_dt)
    elif cfg.mode == "nve":
        fns = simulate.nve(g.force, g.shift, cfg.step_dt)
    elif cfg.mode == "nvt":
        fns = simulate.nvt_nose_hoover(
            g.force, g.shift, cfg.step_dt, cfg.kT, chain_length=cfg.chain_length, tau=cfg.nh_tau
        )
    else:
        fns = simulate.brownian(g.force, g.shift, cfg.step_dt, cfg.kT, gamma=cfg.gamma)
    return g, fns


def _md_init(cfg: _MDConfig, key, theta):
    with _quiet_float64_request():
        k_pos, k_mom = jax.random.split(key)
        if cfg.init_seed >= 0:
            k_pos = jax.random.PRNGKey(cfg.init_seed)
        u = jax.random.uniform(k_pos, (cfg.n, SPATIAL_DIM), cfg.fdt)
        _, (init_fn, _) = _integrator(cfg, theta)
        mass = jnp.asarray(1.0, cfg.fdt)
        if cfg.mode == "fire":
            state = init_fn(u, mass=mass)
            # jax-md stores dt and α at the smallest dtype that holds them (float16):
            # keep the schedule in the working precision instead.
            return state.set(dt=jnp.asarray(cfg.step_dt, cfg.fdt), alpha=jnp.asarray(0.1, cfg.fdt))
        if cfg.mode == "nve":
            return init_fn(k_mom, u, kT=cfg.kT, mass=mass)
        return init_fn(k_mom, u, mass=mass)


def _md_step(cfg: _MDConfig, state, theta, key):
    g, (_, apply_fn) = _integrator(cfg, theta)
    if cfg.mode == "brownian":
        state = state.set(rng=key)
    else:
        state = state.set(force=g.force(state.position))
    if cfg.mode == "nvt":
        chain = state.chain.set(kinetic_energy=kinetic_energy(state.momentum, state.mass))
        state = state.set(chain=chain)
    with _quiet_float64_request():
        state = apply_fn(state)
    return state, StepOut(loss=g.energy(state.position))


def _md_phase(cfg: _MDConfig, state):
    out = {"position": state.position}
    if cfg.mode != "brownian":
        out["momentum"] = state.momentum
    if cfg.mode == "nvt":
        out["chain_position"] = state.chain.position
        out["chain_momentum"] = state.chain.momentum
    return out


def _md_with_phase(cfg: _MDConfig, state, ph):
    state = state.set(position=ph["position"])
    if cfg.mode != "brownian":
        state = state.set(momentum=ph["momentum"])
    if cfg.mode == "nvt":
        chain = state.chain.set(position=ph["chain_position"], momentum=ph["chain_momentum"])
        state = state.set(chain=chain)
    return state


def md_system(
    mode: str = "fire",
    n: int = 32,
    d_small: float = 0.6,
    packing: float = 0.98,
    dt: float | None = None,
    kT: float = 1e-3,
    gamma: float = 0.1,
    tau: float | None = None,
    chain_length: int = 5,
    horizon: int = 100,
    init_seed: int = -1,
    meta_loss: str = "auto",
    dtype: str | None = None,
) -> System:
    """The paper's jax-md packing experiment as a `chaosgrad.System`; θ = D (a scalar).

    ``n`` disks in a periodic square box in 2-D, ``n // 2`` of diameter D and the rest of
    diameter 1, soft-sphere pairs U = ½ (1 − r/σ)² for r < σ with σ_AB = (D_A + D_B)/2
    (``jax_md.energy.soft_sphere_pair``). The box side L(D) keeps the packing fraction at
    ``packing`` for every D (see `box_side`); positions are fractional u ∈ [0, 1)² drawn
    uniformly from the init key, so real positions L(D) u and the gradient with respect
    to D flows through the box (see `geometry`).

    Modes (each step wraps one jax-md step; per-step loss = total potential energy after
    the step, ``E(u_{t+1})``):
      - ``fire``: ``jax_md.minimize.fire_descent`` (dt_start = ``dt``, dt_max = 4 dt, other
        settings jax-md's defaults); meta-loss "last", the energy after T steps.
        ``System.dt`` is None (FIRE's step adapts: exponents are per step).
      - ``nve``: velocity Verlet (``jax_md.simulate.nve``), momenta Maxwell–Boltzmann at
        ``kT``; meta-loss "mean".
      - ``nvt``: Nosé–Hoover chain of length ``chain_length`` at ``kT``
        (``simulate.nvt_nose_hoover``, ``tau`` default 100 dt); meta-loss "mean".
      - ``brownian``: overdamped Langevin (``simulate.brownian``, friction ``gamma``) at
        ``kT``; its noise comes from the step key; meta-loss "mean".

    Phase (what Jacobians and Lyapunov spectra are taken over): the fractional positions
    and the real-space momenta (FIRE's momentum-like velocity for ``fire``); for ``nvt``
    also the thermostat chain positions ξ and momenta p_ξ (the ξ never feed back, so they
    add ``chain_length`` exact zero exponents); for ``brownian`` positions only
    (overdamped: there are no momenta). FIRE's adaptive dt, α and counter are held: they
    change only when the sign of F·P flips, so they are piecewise constant in the phase.
    Cached forces (and the chain's kinetic energy) are recomputed from the phase at the start
    of every step, so the step is a function of the phase alone; this costs one extra force
    evaluation per step. Fractional positions are not wrapped into [0, 1): no jumps in
    the Jacobian. For fixed D the map u = x / L is a constant linear change of
    coordinates, so spectra equal those in real coordinates; the NVE step stays volume
    preserving (det J = 1).

    Args:
      mode: "fire", "nve", "nvt" or "brownian".
      n: number of disks (≥ 4); pairs are dense (O(n²)), fine to a few hundred.
      d_small: the default θ, the small diameter D (> 0).
      packing: packing fraction (> 0); 0.98 is the paper's (jammed).
      dt: time step (default: `DEFAULT_DT` of the mode).
      kT: temperature (nve: of the initial momenta; nvt: thermostat; brownian: noise).
      gamma: Brownian friction coefficient.
      tau: Nosé–Hoover time constant (default 100 dt, jax-md's default).
      chain_length: Nosé–Hoover chain length.
      horizon: natural unroll length.
      init_seed: ≥ 0 fixes the initial configuration (PRNGKey(init_seed)) for every run
        key; -1 (default) draws it from each run's init key.
      meta_loss: "auto" ("last" for fire, "mean" otherwise), or "mean", "sum", "last".
      dtype: "float32", "float64" or None (JAX's default float).

    Returns:
      The `System`. Raises InputError for a bad mode or parameter, including a box too
      small for the minimum image (L must exceed twice the largest diameter).
    """
    cfg = _md_config(mode, n, d_small, packing, dt, kT, gamma, tau, chain_length, init_seed, dtype)
    if meta_loss == "auto":
        meta_loss = "last" if mode == "fire" else "mean"
    fdt, step_dt, side = cfg.fdt, cfg.step_dt, cfg.side
    init = functools.partial(_md_init, cfg)
    step = functools.partial(_md_step, cfg)
    phase = functools.partial(_md_phase, cfg)
    with_phase = functools.partial(_md_with_phase, cfg)

    loss_doc = "total potential energy E(u_{t+1}) after the step"
    if meta_loss == "last":
        loss_doc += "; meta-loss: energy after T steps"
    return System(
        init,
        step,
        phase=phase,
        with_phase=with_phase,
        name=f"md:{mode}",
        theta=jnp.asarray(d_small, fdt),
        dt=None if mode == "fire" else step_dt,
        horizon=check_int(horizon, "md horizon", lo=1),
        precision=_precision(fdt),
        meta_loss=meta_loss,
        description=(
            f"jax-md 2-D bidisperse soft spheres ({mode}), n={n}, packing={packing}, "
            f"L(D={d_small})={side:.4g}"
        ),
        theta_doc="small diameter D (large diameter 1; pair sigma (D+1)/2)",
        loss_doc=loss_doc,
        metadata={
            "mode": mode,
            "n": n,
            "d_small": float(d_small),
            "packing": float(packing),
            "box_side": side,
            "dt_step": step_dt,
            "kT": float(kT),
            "gamma": float(gamma),
            "tau": cfg.nh_tau if mode == "nvt" else None,
            "init_seed": int(init_seed),
            "coordinates": "fractional positions (unwrapped), real-space momenta",
        },
    )
