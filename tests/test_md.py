"""Tests of the jax-md packing system: closed-form energies, conservation laws, symplecticity,
finite-difference Jacobians across the periodic boundary and FIRE gradients w.r.t. D.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chaosgrad.systems.md import box_side, geometry, kinetic_energy, md_system

from chaosgrad.errors import InputError
from chaosgrad.jacobian import step_jacobian
from chaosgrad.spectra import lyapunov_spectrum
from chaosgrad.system import split_run_key, step_key
from chaosgrad.unroll import unroll, unroll_grad

N = 16
KEY = jax.random.PRNGKey(3)


@pytest.fixture(scope="module")
def nve64():
    return md_system("nve", n=N, dtype="float64")


@pytest.fixture(scope="module")
def fire64():
    return md_system("fire", n=N, dtype="float64")


def total_energy(system, states):
    """H = U + K of a (batch of) NVE state(s)."""
    g = geometry(system.theta, N)
    return jax.vmap(lambda u, p: g.energy(u) + kinetic_energy(p))(
        states["position"], states["momentum"]
    )


def initial_phase(system):
    """The phase of the run key's initial state, with a leading axis of length 1."""
    st = system.init(split_run_key(KEY)[0], system.theta)
    return jax.tree_util.tree_map(lambda x: x[None], system.get_phase(st))


# -- construction and the closed-form physics ------------------------------------------------
def test_bad_mode_and_small_box_raise():
    with pytest.raises(InputError, match="mode 'npt'.*fire, nve, nvt, brownian"):
        md_system("npt")
    with pytest.raises(InputError, match="box side"):
        md_system("fire", n=4)  # L ≈ 1.5 < 2: the minimum image would be wrong
    with pytest.raises(InputError, match="dt"):
        md_system("nve", dt=-0.1)


def test_box_side_is_the_papers():
    d = 0.35
    paper = np.sqrt(64 * np.pi * (d**2 + 1) / 4 / 0.98)  # PAPER.md, N = 128
    assert float(box_side(d, 128, 0.98)) == pytest.approx(paper, rel=1e-12)
    # the disks cover exactly `packing` of the box
    side = float(box_side(d, 7, 0.5))
    assert (3 * np.pi * d**2 / 4 + 4 * np.pi / 4) / side**2 == pytest.approx(0.5, rel=1e-12)


def test_pair_energy_closed_form_across_the_boundary():
    d = 0.6
    g = geometry(d, 4)  # species: small, small, large, large
    side = float(g.box_side)
    u = np.array([[0.98, 0.5], [0.02, 0.5], [0.5, 0.05], [0.5, 0.95]])
    # pair (0, 1): small-small across x = 0 at real distance 0.04 L; pair (2, 3): large-large
    # across y = 0 at 0.1 L; every other pair is farther apart than its sigma.
    r01, r23 = 0.04 * side, 0.10 * side
    assert r01 < d and r23 < 1.0
    expected = 0.5 * (1 - r01 / d) ** 2 + 0.5 * (1 - r23 / 1.0) ** 2
    assert float(g.energy(jnp.asarray(u))) == pytest.approx(expected, rel=1e-12)
    # particle 1 sits at +x of particle 0 across the boundary, so it pushes 0 towards -x with
    # |F| = dU/dr = (1 - r/σ)/σ
    f = np.asarray(g.force(jnp.asarray(u)))
    np.testing.assert_allclose(f[0], [-(1 - r01 / d) / d, 0.0], rtol=1e-10, atol=1e-14)


def test_force_is_jax_md_real_space_force():
    # jax-md's own periodic_general(box=L) with fractional coordinates gives real-space forces
    from chaosgrad.systems.md import pair_sigma, species
    from jax_md import energy, space

    d = 0.45
    g = geometry(d, N)
    u = jax.random.uniform(KEY, (N, 2), jnp.float64)
    disp, _ = space.periodic_general(g.box_side, fractional_coordinates=True)
    e = energy.soft_sphere_pair(disp, species=species(N), sigma=pair_sigma(d))
    np.testing.assert_allclose(g.force(u), -jax.grad(e)(u), rtol=1e-10, atol=1e-12)
    assert float(g.energy(u)) == pytest.approx(float(e(u)), rel=1e-12)


# -- NVE: energy conservation and symplecticity -------------------------------------------------
def test_nve_conserves_energy_float32():
    s = md_system("nve", n=N, dtype="float32")
    res = unroll(s, key=KEY, steps=1000, trajectory=True)
    h0 = total_energy(s, initial_phase(s))[0]
    h = total_energy(s, res.trajectory)
    drift = float(jnp.max(jnp.abs(h - h0)) / jnp.abs(h0))
    # velocity Verlet at dt = 0.01 from a jammed random start: measured 3e-5
    assert drift < 1e-3
    assert res.nonfinite_losses == 0


def test_nve_energy_float64_drift_and_second_order(nve64):
    # Velocity Verlet's energy error is O(dt²) and does not drift: halving dt divides it by
    # 4. In float64 rounding (~1e-15) is invisible next to it, so the bounds are on the
    # integrator itself: measured max |ΔH|/H = 8e-5 over 1,000 steps at dt = 0.01.
    res = unroll(nve64, key=KEY, steps=1000, trajectory=True)
    h0 = total_energy(nve64, initial_phase(nve64))[0]
    err = jnp.abs(total_energy(nve64, res.trajectory) - h0) / h0
    assert float(jnp.max(err)) < 2e-4
    fine = md_system("nve", n=N, dt=0.005, dtype="float64")
    res_fine = unroll(fine, key=KEY, steps=200, trajectory=True)
    err_fine = jnp.abs(total_energy(fine, res_fine.trajectory) - h0) / h0
    # over one unit of time, before chaos separates the two trajectories
    ratio = float(jnp.max(err[:100]) / jnp.max(err_fine))
    assert 3.5 < ratio < 4.5


def test_nvt_nose_hoover_invariant_is_conserved():
    from jax_md import simulate

    kT = 1e-3
    s = md_system("nvt", n=N, kT=kT, dtype="float64")
    g = geometry(s.theta, N)
    start = s.init(split_run_key(KEY)[0], s.theta)
    end = unroll(s, key=KEY, steps=1000).state
    inv = [float(simulate.nvt_nose_hoover_invariant(g.energy, st, kT)) for st in (start, end)]
    # measured relative drift 1.8e-4 (the Nosé–Hoover chain's extended energy)
    assert abs(inv[1] - inv[0]) / abs(inv[0]) < 1e-3
    # the thermostat pulled the hot start (overlaps release energy) toward kT: 2K/(dof) < 5 kT
    assert float(jnp.sum(end.momentum**2)) / (2 * N) < 5 * kT


@pytest.fixture(scope="module")
def boundary_state(nve64):
    """An NVE state with particle 0 about to cross x = 1 and particle 1 overlapping it."""
    s = nve64
    st = s.init(split_run_key(KEY)[0], s.theta)
    ph = s.get_phase(st)
    pos = ph["position"].at[0].set(jnp.array([0.99995, 0.5])).at[1].set(jnp.array([0.04, 0.52]))
    mom = ph["momentum"].at[0].set(jnp.array([1.0, 0.0]))
    return s.set_phase(st, {"position": pos, "momentum": mom})


def _jacobian_and_fd(system, state, h=1e-6):
    """The one-step Jacobian (``chaosgrad.jacobian.step_jacobian``) at step t = 0 of run key
    KEY, its central finite differences, and the positions after the step (one compile)."""

    def run(state):
        x, unravel = system.flat_phase(state)
        kt = step_key(split_run_key(KEY)[1], 0)

        def f(xf):
            new, _ = system.step(system.set_phase(state, unravel(xf)), system.theta, kt)
            return system.flat_phase(new)[0]

        eye = jnp.eye(x.shape[0], dtype=x.dtype)
        fd = (jax.vmap(lambda e: f(x + h * e) - f(x - h * e))(eye)).T / (2 * h)
        jac = step_jacobian(system, system.theta, KEY, state, 0)
        return jac, fd, unravel(f(x))["position"]

    return [np.asarray(a) for a in jax.jit(run)(state)]


def test_nve_jacobian_matches_fd_across_the_boundary(nve64, boundary_state):
    jac, fd, u_next = _jacobian_and_fd(nve64, boundary_state)
    # the particle really crossed and was not wrapped back: no jump in the phase
    assert u_next[0, 0] > 1.0
    assert np.max(np.abs(jac - fd)) < 1e-7 * max(1.0, np.max(np.abs(jac)))
    # symplectic (volume preserving): det J = 1
    assert np.linalg.det(jac) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize(
    "mode",
    # FIRE's step is also checked through its gradient below: its own FD check is opt-in
    [pytest.param("fire", marks=pytest.mark.slow), "nvt", "brownian"],
)
def test_other_modes_jacobian_matches_fd_across_the_boundary(mode, boundary_state):
    s = md_system(mode, n=N, dtype="float64")
    st = s.init(split_run_key(KEY)[0], s.theta)
    pos = boundary_state.position
    ph = {**s.get_phase(st), "position": pos}
    if "momentum" in ph:
        ph["momentum"] = boundary_state.momentum
    st = s.set_phase(st, ph)
    jac, fd, u_next = _jacobian_and_fd(s, st)
    assert np.max(np.abs(jac - fd)) < 1e-7 * max(1.0, np.max(np.abs(jac)))
    if mode != "brownian":
        assert u_next[0, 0] > 1.0  # crossed without wrapping


def test_nve_lyapunov_spectrum_sums_to_zero(nve64):
    res = lyapunov_spectrum(nve64, key=KEY, steps=200, transient=0, record_every=200, k="all")
    assert res.k == res.n == 4 * N
    # exact for a volume-preserving map: Σλ = log|det J| / dt = 0 (measured ~1e-14)
    assert abs(float(np.sum(res.exponents))) < 1e-6
    assert res.exponents.max() > 0.3  # a jammed soft-sphere liquid is chaotic (λ1 ≈ 1)
    assert res.nonfinite_step == -1


# -- FIRE: the gradient of the final energy w.r.t. the small diameter ---------------------------
def test_fire_gradient_matches_central_difference(fire64):
    steps = 20
    res = unroll_grad(fire64, key=KEY, steps=steps, chunk=steps)
    h = 1e-5
    up = unroll(fire64, fire64.theta + h, KEY, steps).meta_loss
    down = unroll(fire64, fire64.theta - h, KEY, steps).meta_loss
    fd = float((up - down) / (2 * h))
    # measured agreement ~1e-8 relative: FIRE over 20 steps is far from chaotic
    assert float(res.grad) == pytest.approx(fd, rel=1e-6)
    assert res.nonfinite_grad == 0
    # the meta-loss is the energy after the last step, and FIRE lowered it from the start
    assert float(res.meta_loss) == pytest.approx(res.losses[-1], rel=1e-12)
    assert res.losses[-1] < 0.5 * res.losses[0]


# -- noise, batching ---------------------------------------------------------------------------
def test_brownian_noise_comes_from_the_step_key():
    s = md_system("brownian", n=N, dtype="float64")
    st = s.init(split_run_key(KEY)[0], s.theta)
    step = jax.jit(s.step)
    a, _ = step(st, s.theta, jax.random.PRNGKey(1))
    b, _ = step(st, s.theta, jax.random.PRNGKey(1))
    c, _ = step(st, s.theta, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a.position, b.position)
    # same force, independent noises: the real-space difference is Gaussian with standard
    # deviation sqrt(2) sqrt(2 kT dt / γ) per coordinate (mass 1); 32 samples estimate it to
    # ±13% (one standard error), so ±40% is a three-sigma bound
    diff = np.asarray(a.position - c.position) * float(geometry(s.theta, N).box_side)
    expected = np.sqrt(2) * np.sqrt(2 * 1e-3 * 1e-3 / 0.1)
    assert np.std(diff) == pytest.approx(expected, rel=0.4)


def test_batched_unroll_equals_single_unrolls(fire64):
    keys = jax.random.split(KEY, 2)
    batch = unroll(fire64, key=keys, steps=20)
    for i in range(2):
        one = unroll(fire64, key=keys[i], steps=20)
        np.testing.assert_allclose(batch.losses[i], one.losses, rtol=1e-12)


@pytest.mark.slow
def test_fire_small_diameter_gradient_grows_at_the_lyapunov_rate():
    # D = 0.1 is the paper's chaotic end of Figure 4: ‖∂E_T/∂D‖ grows like exp(λ1 T).
    # Measured: growth 0.126 per step, λ1 ≈ 0.11 per step over the same 100 steps.
    from chaosgrad.gradients import gradient_growth

    s = md_system("fire", d_small=0.1, dtype="float64")
    growth = gradient_growth(s, horizons=[10, 30, 100], seeds=4)
    lyap = lyapunov_spectrum(s, key=KEY, steps=100, transient=0, k=4, record_every=100)
    lam = float(lyap.exponents.max())
    assert growth.nonfinite_fraction.max() == 0
    assert lam > 0.05
    assert growth.growth_rate == pytest.approx(lam, rel=0.5)
