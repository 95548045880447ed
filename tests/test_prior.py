import numpy as np
import pytest

from cgdml.geometry import bond_angles, bond_lengths
from cgdml.prior import HarmonicPrior
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
    prior = HarmonicPrior(repulsion=False).fit(toy_samples, T)
    np.testing.assert_allclose(prior.bond_r0_, BOND_R0, rtol=0.01)
    # k = kT/var; the r^2 Jacobian and angle-bond coupling bias it slightly, so allow 15 %
    np.testing.assert_allclose(prior.bond_k_, BOND_K, rtol=0.15)
    np.testing.assert_allclose(prior.angle_theta0_, ANGLE_T0, atol=0.02)
    np.testing.assert_allclose(prior.angle_k_, ANGLE_K, rtol=0.15)


def test_prior_reproduces_bond_and_angle_distributions(toy_samples):
    prior = HarmonicPrior(repulsion=False).fit(toy_samples, T)
    rng = np.random.default_rng(2)
    resampled = metropolis(lambda R: prior.energy_forces(R)[0], start_chain(3000), 600, 0.004, rng)
    for measure, idx in ((bond_lengths, np.array([[0, 1], [1, 2], [2, 3]])),
                         (bond_angles, np.array([[0, 1, 2], [1, 2, 3]]))):
        ref, new = measure(toy_samples, idx), measure(resampled, idx)
        np.testing.assert_allclose(new.mean(0), ref.mean(0), rtol=0.01)
        np.testing.assert_allclose(new.std(0), ref.std(0), rtol=0.1)


def test_prior_forces_are_minus_energy_gradient(numerical_forces):
    rng = np.random.default_rng(0)
    R = start_chain(4) + rng.normal(scale=0.02, size=(4, 4, 3))
    R = np.concatenate([R, R[:, :1] + np.array([0.2, 0.2, 0.0])], axis=1)  # 5 beads
    prior = HarmonicPrior(repulsion=True).fit(R + rng.normal(scale=0.01, size=R.shape), T)
    assert len(prior.repulsion_pairs_) == 3  # (0,3), (0,4), (1,4)
    E, F = prior.energy_forces(R)
    num = numerical_forces(lambda X: prior.energy_forces(X)[0], R)
    np.testing.assert_allclose(F, num, rtol=1e-5, atol=1e-4 * np.abs(F).max())
    np.testing.assert_allclose(F.sum(1), 0.0, atol=1e-8 * np.abs(F).max())  # no net force


def test_repulsion_costs_about_kT_at_closest_training_contact():
    R = start_chain(1)
    R = np.concatenate([R, R[:, :1] + np.array([0.0, 0.0, 0.3])], axis=1)
    prior = HarmonicPrior(repulsion=True).fit(np.repeat(R, 3, axis=0) + 1e-3 * np.arange(3)[:, None, None], T)
    plain = HarmonicPrior(repulsion=False).fit(np.repeat(R, 3, axis=0) + 1e-3 * np.arange(3)[:, None, None], T)
    extra = prior.energy_forces(R)[0] - plain.energy_forces(R)[0]
    assert 0.5 * KT < extra[0] < 4 * KT


def test_round_trip_arrays(toy_samples):
    prior = HarmonicPrior().fit(toy_samples[:100], T)
    again = HarmonicPrior.from_arrays(prior.to_arrays())
    np.testing.assert_array_equal(prior.energy_forces(toy_samples[:5])[1], again.energy_forces(toy_samples[:5])[1])
