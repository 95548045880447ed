"""The pair-distance refinement (cgdml.refine): the prior's tabulated pair corrections are exact forces of their
energy and flat past their range, survive a save, and iterative Boltzmann inversion restores an angle-dihedral
coupling that the prior's independent one-dimensional terms miss."""
import numpy as np
import pytest

from cgdml.data import CGDataset
from cgdml.geometry import bond_lengths
from cgdml.nystrom import NystromGDML
from cgdml.pipeline import CGEstimator
from cgdml.prior import TABLE_INTERVALS, CGPrior
from cgdml.refine import correction_splines, density, ibi_update, pair_grids, refine_pairs

RUN = dict(replicas=16, steps=2000, burn_in=400, save_every=20)
NAMES, BONDS = ["C1", "C2", "C3", "C4"], [(0, 1), (1, 2), (2, 3)]


@pytest.fixture(scope="module")
def exact_toy(noisy_toy):
    """The toy's Boltzmann frames (a 4-bead chain whose angle theta_1 and dihedral phi couple: conftest's
    toy_energy) with their exact forces, 2000 of them."""
    dataset, exact = noisy_toy
    return CGDataset.from_arrays(dataset.coords[:2000], exact[:2000], bead_names=NAMES, bonds=BONDS,
                                 temperature=dataset.temperature)


def _corrected_prior(dataset, rng):
    prior = CGPrior().fit(dataset.coords, dataset.temperature, dataset.cg_topology)
    pairs = dataset.cg_topology.pairs_apart(3)
    grids = pair_grids(bond_lengths(dataset.coords, pairs))
    values = rng.normal(scale=2.0, size=grids.shape).cumsum(axis=1) * 0.3
    return prior.set_pair_corrections(pairs, *correction_splines(values, grids)), pairs, grids, values


def test_pair_corrections_are_forces_of_their_energy(exact_toy, numerical_forces):
    prior, pairs, grids, values = _corrected_prior(exact_toy, np.random.default_rng(1))
    assert pairs.tolist() == [[0, 3]]
    plain = CGPrior().fit(exact_toy.coords, exact_toy.temperature, exact_toy.cg_topology)
    R = exact_toy.coords[:40]
    E, F = prior.energy_forces(R)
    np.testing.assert_allclose(F, numerical_forces(lambda X: prior.energy_forces(X)[0], R), atol=2e-3, rtol=1e-5)
    # the correction is the spline through its values, added to the plain prior's energy
    r = bond_lengths(R, pairs)[:, 0]
    np.testing.assert_allclose(E - plain.energy_forces(R)[0], prior.pair_correction(0, r), atol=1e-9)
    np.testing.assert_allclose(prior.pair_correction(0, grids[0]), values[0], atol=1e-9)


def test_pair_corrections_are_flat_past_their_range(exact_toy):
    """Past either end of its table a correction adds a constant energy and no force."""
    prior, pairs, grids, values = _corrected_prior(exact_toy, np.random.default_rng(2))
    lo, hi = grids[0, 0], grids[0, -1]
    far = np.array([lo - 0.2, lo - 0.05, hi + 0.05, hi + 0.3])
    np.testing.assert_allclose(prior.pair_correction(0, far), [values[0, 0]] * 2 + [values[0, -1]] * 2, atol=1e-9)
    R = np.zeros((2, 4, 3))
    R[:, :, 0] = np.array([0.0, 0.15, 0.30, 0.45])
    R[1, 3, 0] = hi + 0.4                                   # 0-3 far past the range, only bead 3 moved
    plain = CGPrior().fit(exact_toy.coords, exact_toy.temperature, exact_toy.cg_topology)
    plain.set_pair_corrections(np.zeros((0, 2), dtype=np.int64), np.zeros((0, TABLE_INTERVALS, 4)), np.zeros((0, 2)))
    diff = prior.energy_forces(R[1:])[1] - plain.energy_forces(R[1:])[1]
    np.testing.assert_allclose(diff, 0.0, atol=1e-9)


def test_pair_corrections_survive_a_save_and_older_files_have_none(exact_toy, tmp_path):
    prior, pairs, _, _ = _corrected_prior(exact_toy, np.random.default_rng(3))
    arrays = prior.to_arrays()
    back = CGPrior.from_arrays(arrays)
    back.check(4)
    R = exact_toy.coords[:20]
    np.testing.assert_allclose(back.energy_forces(R)[1], prior.energy_forces(R)[1], atol=1e-12)
    old = {k: v for k, v in arrays.items() if not k.startswith("pair_correction")}
    assert len(CGPrior.from_arrays(old).pair_correction_pairs_) == 0
    damaged = dict(arrays, pair_correction_spline_range_=arrays["pair_correction_spline_range_"][:, ::-1])
    with pytest.raises(ValueError, match="pair_correction"):
        CGPrior.from_arrays(damaged).check(4)


def test_the_ibi_step_moves_density_towards_the_data():
    """One IBI step on a known case: samples from N(0.50, 0.03) against data from N(0.55, 0.03) (nm): the step
    kT ln(p_model / p_data) is linear in r with slope kT (0.55 - 0.50) / 0.03^2 between the modes."""
    rng = np.random.default_rng(4)
    kT = 2.5
    model, data = rng.normal(0.50, 0.03, 200000), rng.normal(0.55, 0.03, 200000)
    grid = np.linspace(0.40, 0.65, TABLE_INTERVALS + 1)
    step = ibi_update(model, data, grid, kT, 0.003)
    mid = (grid > 0.49) & (grid < 0.56)
    slope = np.polyfit(grid[mid], step[mid], 1)[0]
    assert slope == pytest.approx(-kT * 0.05 / 0.03 ** 2, rel=0.08)
    p = density(data, grid, 0.003)
    assert np.average(step, weights=p) == pytest.approx(0.0, abs=1e-9)


def test_refinement_restores_the_angle_dihedral_coupling(exact_toy, tmp_path):
    """The prior alone (bonds, angles, a dihedral profile; residual weight 0) misses the toy's 8 kT
    (theta_1 - 1.9) cos(phi) coupling, so its 0-3 distance distribution is off; iterative Boltzmann correction
    of that distance brings the short runs' landscapes (which include the 0-3 distance) at least 1.5x closer to
    the training frames', and the model keeps the best iteration."""
    learner = NystromGDML(sigma=4.0, lam=0.01, n_inducing=200, progress=False)
    model = CGEstimator(learner, prior_dihedrals=True, balance_basins=False, uncertainty=False, residual_weight=0.0,
                        refine_pairs=False, progress=False).fit(exact_toy).model_
    refined, record = refine_pairs(model, exact_toy, run=RUN, iterations=3)
    scores = [r["js"] for r in record["iterations"]]
    assert len(scores) == 4 and record["pairs"] == 1
    assert record["kept"] == int(np.argmin(scores)) and record["kept"] > 0, scores
    assert min(scores) < scores[0] / 1.5, scores
    assert len(refined.prior.pair_correction_pairs_) == 1 and len(model.prior.pair_correction_pairs_) == 0
    # a model with corrections is written as format 3, which an older cgdml refuses instead of dropping them
    from cgdml.model import CGModel

    for m, version in ((model, 2), (refined, 3)):
        m.save(tmp_path / f"v{version}.npz")
        assert int(np.load(tmp_path / f"v{version}.npz")["format_version"]) == version
    back = CGModel.load(tmp_path / "v3.npz")
    R = exact_toy.coords[:10]
    np.testing.assert_allclose(back.energy_forces(R)[1], refined.energy_forces(R)[1], rtol=1e-10, atol=1e-8)


def test_the_fit_records_the_refinement(exact_toy):
    """``refine_pairs=True`` (the default) runs after the judge and records its iterations; False skips it."""
    learner = NystromGDML(sigma=4.0, lam=0.01, n_inducing=200, progress=False)
    fit = lambda **kw: CGEstimator(learner, prior_dihedrals=True, balance_basins=False,  # noqa: E731
                                   uncertainty=False, progress=False, **kw).fit(exact_toy).model_
    model = fit()
    record = model.info["pair_correction"]
    assert record["pairs"] == 1 and len(record["iterations"]) >= 2 and record["iterations"][0]["iteration"] == 0
    judged = model.info["residual_weight"]
    winner = next(r for r in judged["candidates"] if r["weight"] == judged["winner"])
    assert record["iterations"][0]["js"] == winner["js"]     # the judge's run is the refinement's start
    assert "pair_correction" not in fit(refine_pairs=False).info


def test_openmm_export_carries_the_pair_corrections(exact_toy):
    """The exported prior (cgdml.openmm) gives the corrected prior's energies and forces, inside and past the
    correction's table."""
    openmm = pytest.importorskip("openmm")
    import openmm.unit as unit

    from cgdml.openmm import _prior_forces

    prior, _, grids, _ = _corrected_prior(exact_toy, np.random.default_rng(5))
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    for _, force in _prior_forces(prior, openmm):
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    R = exact_toy.coords[:30].copy()
    R[-1, 3] += (R[-1, 3] - R[-1, 0]) * 2.0                  # 0-3 past the table's upper end
    assert bond_lengths(R[-1:], np.array([[0, 3]]))[0, 0] > grids[0, -1]
    E, F = prior.energy_forces(R)
    for i, x in enumerate(R):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        assert e == pytest.approx(E[i], abs=1e-4 * max(1.0, abs(E[i])))
        np.testing.assert_allclose(f, F[i], atol=1e-3 * max(1.0, np.abs(F[i]).max()))
