"""Tabulated bond and angle terms of the prior (cgdml.prior.bonded_table, CGPrior(bonded=...)).

The toy is a three-bead molecule sampled exactly (no Markov chain): bead 1 at the origin, beads 0 and 2 at
distances r1 and r2 from it, at angle theta, with r1 ~ r^2 exp(-U1/kT) (bimodal), r2 ~ r^2 exp(-U2/kT)
(harmonic) and theta ~ sin(theta) exp(-U3/kT) (a double well with modes near 92 and 126 degrees, like the
C-alpha angles of a peptide).
"""
import numpy as np
import pytest

from cgdml.geometry import bond_angles, bond_lengths
from cgdml.prior import CGPrior, needs_table
from cgdml.units import kT as thermal_energy

T = 300.0
KT = thermal_energy(T)
R_GRID = np.linspace(0.25, 0.55, 3001)        # nm
THETA_GRID = np.linspace(0.6, np.pi - 0.01, 3001)  # rad


def u_bond_bimodal(r):
    """Double well in r (kJ/mol): minima near 0.36 and 0.44 nm, barrier ~2.5 kT, slightly tilted."""
    return KT * (2.5 * (((r - 0.40) / 0.04) ** 2 - 1) ** 2 + 0.5 * (r - 0.40) / 0.04)


def u_bond_harmonic(r):
    return 0.5 * 20000.0 * (r - 0.38) ** 2


def u_angle_bimodal(theta):
    """Double well in theta (kJ/mol): minima near 1.6 and 2.2 rad, barrier ~3 kT, tilted."""
    x = (theta - 1.9) / 0.3
    return KT * (3.0 * (x ** 2 - 1) ** 2 - 0.4 * x)


def density(u, grid, jacobian):
    p = jacobian * np.exp(-(u - u.min()) / KT)
    return p / np.trapezoid(p, grid)


def draw(u, grid, jacobian, n, rng):
    """n samples of the density jacobian * exp(-u/kT) on ``grid``, by the inverse CDF."""
    cdf = np.cumsum(density(u(grid), grid, jacobian))
    return np.interp(rng.random(n), cdf / cdf[-1], grid)


def molecules(r1, r2, theta, rng):
    """Frames (n, 3, 3) nm with |x0 - x1| = r1, |x2 - x1| = r2, angle 0-1-2 = theta, randomly oriented."""
    u = rng.normal(size=(len(r1), 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = rng.normal(size=u.shape)
    w -= (w * u).sum(1, keepdims=True) * u
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    v = np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * w
    R = np.stack([r1[:, None] * u, np.zeros_like(u), r2[:, None] * v], axis=1)
    return R + rng.normal(size=(len(r1), 1, 3))  # translated


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(7)
    n = 40000
    r1 = draw(u_bond_bimodal, R_GRID, R_GRID ** 2, n, rng)
    r2 = draw(u_bond_harmonic, R_GRID, R_GRID ** 2, n, rng)
    theta = draw(u_angle_bimodal, THETA_GRID, np.sin(THETA_GRID), n, rng)
    return molecules(r1, r2, theta, rng)


@pytest.fixture(scope="module")
def prior(samples):
    return CGPrior(repulsion=False, dihedrals=False).fit(samples, T)


def total_variation(p, q, grid):
    return 0.5 * np.trapezoid(np.abs(p - q), grid)


def test_toy_is_built_right(samples):
    np.testing.assert_allclose(bond_lengths(samples[:5], np.array([[0, 1]]))[:, 0],
                               np.linalg.norm(samples[:5, 0] - samples[:5, 1], axis=1))
    theta = bond_angles(samples, np.array([[0, 1, 2]]))[:, 0]
    assert 0.2 < (theta < 1.9).mean() < 0.8 and theta.min() > 1.0  # both wells populated


def test_auto_tabulates_the_bimodal_terms_and_keeps_the_gaussian_one_harmonic(prior):
    assert prior.bonded == "auto"
    assert prior.bond_pairs_.tolist() == [[0, 1], [1, 2]] and prior.angle_triples_.tolist() == [[0, 1, 2]]
    assert prior.bond_tabulated_.tolist() == [True, False]
    assert prior.angle_tabulated_.tolist() == [True]
    # the rule on a harmonic table of the same term says no
    grid = np.linspace(0.3, 0.46, 129)
    c = np.zeros((128, 4))
    from scipy.interpolate import CubicSpline
    c[:] = CubicSpline(grid, 0.5 * 20000.0 * (grid - 0.38) ** 2, bc_type="natural").c.T
    assert not needs_table(c, 0.3, 0.46, 0.38, 20000.0, KT)


def test_auto_keeps_gaussian_terms_harmonic_despite_sampling_noise():
    """Gaussian bonds (soft and stiff) and a Gaussian angle, 3,000 frames, several draws: no term is tabulated."""
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        n = 3000
        r1 = draw(lambda r: 0.5 * 3000.0 * (r - 0.38) ** 2, R_GRID, R_GRID ** 2, n, rng)
        r2 = draw(u_bond_harmonic, R_GRID, R_GRID ** 2, n, rng)
        theta = draw(lambda t: 0.5 * 60.0 * (t - 1.9) ** 2, THETA_GRID, np.sin(THETA_GRID), n, rng)
        prior = CGPrior(repulsion=False, dihedrals=False).fit(molecules(r1, r2, theta, rng), T)
        assert not prior.bond_tabulated_.any() and not prior.angle_tabulated_.any(), seed


@pytest.mark.parametrize("kind, term, u, grid, jacobian", [
    ("angle", 0, u_angle_bimodal, THETA_GRID, np.sin(THETA_GRID)),
    ("bond", 0, u_bond_bimodal, R_GRID, R_GRID ** 2),
    ("bond", 1, u_bond_harmonic, R_GRID, R_GRID ** 2)])
def test_boltzmann_distribution_of_the_prior_is_the_datas(prior, samples, kind, term, u, grid, jacobian):
    """The prior's own distribution of each term, J(x) exp(-U_prior(x)/kT) with J = sin(theta) or r^2, matches
    the true one (both modes of a bimodal term, in the right proportion); the harmonic term cannot."""
    truth = density(u(grid), grid, jacobian)
    fitted = density(prior.bonded_profile(kind, term, grid), grid, jacobian)
    assert total_variation(fitted, truth, grid) < 0.025
    if term == 0:
        harmonic = CGPrior(repulsion=False, dihedrals=False, bonded="harmonic").fit(samples, T)
        single = density(harmonic.bonded_profile(kind, term, grid), grid, jacobian)
        assert total_variation(single, truth, grid) > 0.15
        # two modes, each within a few degrees (or 5 pm) of the truth's
        peaks = lambda p: grid[1:-1][(p[1:-1] > p[:-2]) & (p[1:-1] >= p[2:]) & (p[1:-1] > 0.2 * p.max())]  # noqa
        found, want = peaks(fitted), peaks(truth)
        assert len(found) == len(want) == 2
        np.testing.assert_allclose(found, want, atol=0.06 if kind == "angle" else 0.005)
        assert len(peaks(single)) == 1


def test_sampled_histogram_matches_the_data(prior, samples):
    """Metropolis on the prior alone reproduces the data's bimodal angle histogram (the sin(theta) Jacobian
    comes from the geometry, not from the prior)."""
    rng = np.random.default_rng(3)
    R = samples[:2000].copy()
    E = prior.energy_forces(R)[0]
    for _ in range(400):
        trial = R + rng.normal(scale=0.012, size=R.shape)
        Et = prior.energy_forces(trial)[0]
        accept = rng.random(len(R)) < np.exp(-(Et - E) / KT)
        R[accept], E[accept] = trial[accept], Et[accept]
    edges = np.linspace(1.2, 2.7, 16)
    data = np.histogram(bond_angles(samples, np.array([[0, 1, 2]]))[:, 0], edges)[0] / len(samples)
    model = np.histogram(bond_angles(R, np.array([[0, 1, 2]]))[:, 0], edges)[0] / len(R)
    assert 0.5 * np.abs(data - model).sum() < 0.06


def test_tabulated_forces_are_minus_the_energy_gradient(prior, samples, numerical_forces):
    """Inside the tables, and past their ends (the harmonic continuation): forces = -dE/dR."""
    rng = np.random.default_rng(1)
    inside = samples[:6] + rng.normal(scale=0.003, size=(6, 3, 3))
    outside = np.array(samples[:4])
    outside[:, 0] = outside[:, 1] + (outside[:, 0] - outside[:, 1]) * 1.4     # bond 0 stretched past the table
    outside[:, 2] = outside[:, 1] + (outside[:, 2] - outside[:, 1]) * 0.7     # bond 1 compressed
    lo, hi = prior.bond_spline_range_[0]
    assert (bond_lengths(outside, np.array([[0, 1]]))[:, 0] > hi).all()
    for R in (inside, outside):
        E, F = prior.energy_forces(R)
        num = numerical_forces(lambda X: prior.energy_forces(X)[0], R)
        np.testing.assert_allclose(F, num, rtol=1e-5, atol=1e-5 * np.abs(F).max())
    # the continuation is value- and slope-continuous at the ends
    for kind, term in (("bond", 0), ("angle", 0)):
        lo, hi = getattr(prior, f"{kind}_spline_range_")[term]
        for end in (lo, hi):
            u = prior.bonded_profile(kind, term, np.array([end - 1e-7, end, end + 1e-7]))
            assert abs(u[0] - u[1]) < 1e-3 and abs((u[2] - u[1]) - (u[1] - u[0])) < 1e-3


def test_modes(samples):
    """'tabulated' tables every term, 'harmonic' none; a bad value is a one-line error."""
    every = CGPrior(repulsion=False, dihedrals=False, bonded="tabulated").fit(samples[:5000], T)
    assert every.bond_tabulated_.all() and every.angle_tabulated_.all()
    none = CGPrior(repulsion=False, dihedrals=False, bonded="harmonic").fit(samples[:5000], T)
    assert not none.bond_tabulated_.any() and not none.angle_tabulated_.any()
    assert none.bond_splines_.shape == (2, none.bond_splines_.shape[1], 4)
    with pytest.raises(ValueError, match="bonded"):
        CGPrior(bonded="spline").fit(samples[:100], T)


def test_model_file_round_trip(prior, samples, tmp_path):
    path = tmp_path / "prior.npz"
    np.savez(path, **{"prior/" + k: v for k, v in prior.to_arrays().items()})
    with np.load(path) as z:
        again = CGPrior.from_arrays(dict(z), prefix="prior/")
    again.check(3)
    assert again.bonded == "auto"
    np.testing.assert_array_equal(again.bond_tabulated_, prior.bond_tabulated_)
    for a, b in zip(again.energy_forces(samples[:20]), prior.energy_forces(samples[:20])):
        np.testing.assert_array_equal(a, b)


def test_older_files_without_tables_load_harmonic(prior, samples):
    arrays = prior.to_arrays()
    for name in CGPrior._TABLES:
        del arrays[name]
    old = CGPrior.from_arrays(arrays)
    old.check(3)
    assert old.bonded == "harmonic" and not old.bond_tabulated_.any() and not old.angle_tabulated_.any()
    harmonic = CGPrior(repulsion=False, dihedrals=False, bonded="harmonic").fit(samples, T)
    np.testing.assert_allclose(old.energy_forces(samples[:5])[1], harmonic.energy_forces(samples[:5])[1])


def test_damaged_table_is_a_one_line_error(prior):
    from cgdml._io import CgdmlError

    arrays = prior.to_arrays()
    arrays["angle_spline_range_"] = np.array([[2.0, 1.0]])
    with pytest.raises(CgdmlError, match="angle_spline_range_") as err:
        CGPrior.from_arrays(arrays).check(3)
    assert "\n" not in str(err.value)


def test_openmm_energies_and_forces_match(prior, samples):
    """The tabulated terms exported to OpenMM (cgdml.openmm) give cgdml's energies and forces, inside the tables
    and past their ends."""
    openmm = pytest.importorskip("openmm")
    import openmm.unit as unit

    from cgdml.openmm import _prior_forces

    system = openmm.System()
    for _ in range(3):
        system.addParticle(12.0)
    forces = _prior_forces(prior, openmm)
    assert sum("tabulated" in name for name, _ in forces) == 2
    for _, force in forces:
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    R = np.concatenate([samples[:50], samples[:5]])
    R[-5:, 0] = R[-5:, 1] + (R[-5:, 0] - R[-5:, 1]) * 1.3
    E, F = prior.energy_forces(R)
    for x, e, f in zip(R, E, F):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        e_mm = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f_mm = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        assert abs(e_mm - e) <= 1e-4 * max(abs(e), KT)
        assert np.abs(f_mm - f).max() <= 1e-4 * np.abs(f).max()



def test_constrained_bonds_fit_without_error():
    """Bonds of one length in every frame, up to rounding (as after constraints): nothing to tabulate, and the
    prior fits with finite forces instead of failing in the spline."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3000, 3, 3))
    v *= 0.15 / np.linalg.norm(v, axis=-1, keepdims=True)          # every bond 0.15 nm, to ~1e-17
    R = np.concatenate([np.zeros((3000, 1, 3)), np.cumsum(v, axis=1)], axis=1)
    assert 0 < np.ptp(bond_lengths(R, np.array([[0, 1]]))) < 1e-12
    prior = CGPrior().fit(R, 300.0)
    assert np.isfinite(prior.forces(R[:10])).all()
