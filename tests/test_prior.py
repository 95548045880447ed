import numpy as np
import pytest

from cgdml.geometry import bond_angles, bond_lengths, dihedral
from cgdml.prior import CGPrior
from cgdml.units import kT as thermal_energy

T = 300.0
KT = thermal_energy(T)
BOND_K, BOND_R0 = 40000.0, 0.15      # kJ/mol/nm^2, nm
ANGLE_K, ANGLE_T0 = 200.0, 1.9       # kJ/mol/rad^2, rad


def true_energy(R):
    r = bond_lengths(R, np.array([[0, 1], [1, 2], [2, 3]]))
    th = bond_angles(R, np.array([[0, 1, 2], [1, 2, 3]]))
    return 0.5 * BOND_K * ((r - BOND_R0) ** 2).sum(1) + 0.5 * ANGLE_K * ((th - ANGLE_T0) ** 2).sum(1)


def metropolis(energy, R, n_steps, step, rng):
    """Vectorised Metropolis over independent chains R (n_chains, n_beads, 3)."""
    E = energy(R)
    for _ in range(n_steps):
        trial = R + rng.normal(scale=step, size=R.shape)
        Et = energy(trial)
        accept = rng.random(len(R)) < np.exp(-(Et - E) / KT)
        R[accept], E[accept] = trial[accept], Et[accept]
    return R


def start_chain(n):
    a = ANGLE_T0
    pts = [np.zeros(3), np.array([BOND_R0, 0, 0])]
    pts.append(pts[1] + BOND_R0 * np.array([-np.cos(a), np.sin(a), 0]))
    pts.append(pts[2] + BOND_R0 * np.array([1.0, 0.3, 0.4]) / np.linalg.norm([1.0, 0.3, 0.4]))
    return np.repeat(np.array(pts)[None], n, axis=0)


@pytest.fixture(scope="module")
def toy_samples():
    rng = np.random.default_rng(1)
    return metropolis(true_energy, start_chain(3000), 600, 0.004, rng)


def test_boltzmann_inversion_recovers_harmonic_parameters(toy_samples):
    prior = CGPrior(repulsion=False).fit(toy_samples, T)
    np.testing.assert_allclose(prior.bond_r0_, BOND_R0, rtol=0.01)
    # k = kT/var; the r^2 Jacobian and angle-bond coupling bias it slightly, so allow 15 %
    np.testing.assert_allclose(prior.bond_k_, BOND_K, rtol=0.15)
    np.testing.assert_allclose(prior.angle_theta0_, ANGLE_T0, atol=0.02)
    np.testing.assert_allclose(prior.angle_k_, ANGLE_K, rtol=0.15)


def test_prior_reproduces_bond_and_angle_distributions(toy_samples):
    prior = CGPrior(repulsion=False).fit(toy_samples, T)
    rng = np.random.default_rng(2)
    resampled = metropolis(lambda R: prior.energy_forces(R)[0], start_chain(3000), 600, 0.004, rng)
    for measure, idx in ((bond_lengths, np.array([[0, 1], [1, 2], [2, 3]])),
                         (bond_angles, np.array([[0, 1, 2], [1, 2, 3]]))):
        ref, new = measure(toy_samples, idx), measure(resampled, idx)
        np.testing.assert_allclose(new.mean(0), ref.mean(0), rtol=0.01)
        np.testing.assert_allclose(new.std(0), ref.std(0), rtol=0.1)


@pytest.mark.parametrize("dihedrals", [False, True])
def test_prior_forces_are_minus_energy_gradient(numerical_forces, dihedrals):
    rng = np.random.default_rng(0)
    R = start_chain(4) + rng.normal(scale=0.02, size=(4, 4, 3))
    R = np.concatenate([R, R[:, :1] + np.array([0.2, 0.2, 0.0])], axis=1)  # 5 beads
    train = np.concatenate([R + rng.normal(scale=0.05, size=R.shape) for _ in range(50)])
    prior = CGPrior(repulsion=True, dihedrals=dihedrals).fit(train, T)
    assert len(prior.repulsion_pairs_) == 3  # (0,3), (0,4), (1,4)
    assert len(prior.dihedral_quads_) == (2 if dihedrals else 0)  # (0,1,2,3), (1,2,3,4) of the chain
    E, F = prior.energy_forces(R)
    num = numerical_forces(lambda X: prior.energy_forces(X)[0], R)
    np.testing.assert_allclose(F, num, rtol=1e-5, atol=1e-4 * np.abs(F).max())
    np.testing.assert_allclose(F.sum(1), 0.0, atol=1e-8 * np.abs(F).max())  # no net force


def test_repulsion_costs_about_kT_at_closest_training_contact():
    R = start_chain(1)
    R = np.concatenate([R, R[:, :1] + np.array([0.0, 0.0, 0.3])], axis=1)
    prior = CGPrior(repulsion=True).fit(np.repeat(R, 3, axis=0) + 1e-3 * np.arange(3)[:, None, None], T)
    plain = CGPrior(repulsion=False).fit(np.repeat(R, 3, axis=0) + 1e-3 * np.arange(3)[:, None, None], T)
    extra = prior.energy_forces(R)[0] - plain.energy_forces(R)[0]
    assert 0.5 * KT < extra[0] < 4 * KT


def test_round_trip_arrays(toy_samples):
    prior = CGPrior(dihedrals=True).fit(toy_samples[:100], T)
    again = CGPrior.from_arrays(prior.to_arrays())
    np.testing.assert_array_equal(prior.energy_forces(toy_samples[:5])[1], again.energy_forces(toy_samples[:5])[1])


def chain_with_dihedrals(phi, bond=BOND_R0, theta=ANGLE_T0):
    """Four-bead chains (n, 4, 3) nm with bonds ``bond``, angles ``theta`` and dihedrals ``phi`` (n,) rad
    (bead 3 placed from beads 0-2 by the natural-extension reference frame)."""
    A, B = np.zeros(3), np.array([bond, 0.0, 0.0])
    C = B + bond * np.array([-np.cos(theta), np.sin(theta), 0.0])
    bc = (C - B) / bond
    normal = np.cross(B - A, bc)
    normal /= np.linalg.norm(normal)
    m = np.cross(normal, bc)
    D = C + bond * (-np.cos(theta) * bc + np.sin(theta) * (np.cos(phi)[:, None] * m + np.sin(phi)[:, None] * normal))
    return np.concatenate([np.broadcast_to(np.stack([A, B, C]), (len(phi), 3, 3)), D[:, None]], axis=1)


def test_dihedral_profile_recovers_a_known_free_energy():
    """Frames whose dihedral is Boltzmann-distributed in a known, mirror-asymmetric U: the fitted profile is U."""
    U = lambda phi: KT * (1.5 * np.cos(phi) + 0.8 * np.cos(2 * phi - 1.0))  # noqa: E731
    rng = np.random.default_rng(4)
    phi = rng.uniform(-np.pi, np.pi, 2_000_000)
    phi = phi[rng.random(len(phi)) < np.exp(-(U(phi) - U(phi).min()) / KT)][:200_000]
    R = chain_with_dihedrals(phi) + rng.normal(scale=0.002, size=(len(phi), 4, 3))
    built = dihedral(R[:100], (0, 1, 2, 3))[0]
    assert np.abs(np.angle(np.exp(1j * (built - phi[:100])))).max() < 0.1  # the chain is built right
    prior = CGPrior(repulsion=False, dihedrals=True).fit(R, T)
    assert prior.dihedral_quads_.tolist() == [[0, 1, 2, 3]]
    grid = np.linspace(-np.pi, np.pi, 361)
    fitted, truth = prior.dihedral_profile(0, grid), U(grid)
    low = truth < truth.min() + 2.5 * KT                  # where the frames are
    shift = np.mean(fitted[low] - truth[low])
    assert np.abs(fitted[low] - truth[low] - shift).max() < 0.25 * KT
    # the mirror image (U(-phi)) is far off: the sign convention is the geometry module's
    assert np.abs(prior.dihedral_profile(0, -grid)[low] - truth[low] - shift).max() > 1.0 * KT
    # capped, not infinite, where the frames never go
    narrow = CGPrior(repulsion=False, dihedrals=True).fit(chain_with_dihedrals(np.full(100, 0.5)), T)
    assert 9.0 * KT < np.ptp(narrow.dihedral_profile(0, grid)) < 11.0 * KT


def test_model_files_without_dihedral_profiles_still_load(toy_samples):
    """Files written before the prior had dihedral profiles: the prior loads with none."""
    arrays = CGPrior(dihedrals=True).fit(toy_samples[:500], T).to_arrays()
    assert arrays["dihedral_quads_"].shape == (1, 4)
    for name in ("dihedral_quads_", "dihedral_splines_"):
        del arrays[name]
    old = CGPrior.from_arrays(arrays)
    old.check(4)
    assert old.dihedral_quads_.shape == (0, 4) and not old.dihedrals
    plain = CGPrior(dihedrals=False).fit(toy_samples[:500], T)
    np.testing.assert_allclose(old.energy_forces(toy_samples[:5])[1], plain.energy_forces(toy_samples[:5])[1])
