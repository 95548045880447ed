"""Basin balancing (cgdml.basins): dihedral geometry, the offset term, WHAM, and the whole correction on a
four-bead chain whose dihedral free energy is known exactly."""
from types import SimpleNamespace

import numpy as np
import pytest

from cgdml.basins import (DihedralOffsets, _arc_index, balance_basins, sampled_arcs, solve_offsets, umbrella_profile,
                          wham)
from cgdml.geometry import dihedral, wrap_angle
from cgdml.topology import CGTopology
from cgdml.units import kT as thermal_energy


TEMPERATURE = 300.0
KT = thermal_energy(TEMPERATURE)


def chain(angles, rng, noise=0.002):
    """Four-bead chains (n, 4, 3) nm with bonds 0.15 nm, angles 110 deg and the given dihedrals (rad)."""
    n = len(angles)
    theta = np.radians(110.0)
    b = 0.15
    x = np.zeros((n, 4, 3))
    x[:, 1] = [b, 0, 0]
    x[:, 2] = x[:, 1] + b * np.array([-np.cos(theta), np.sin(theta), 0])
    # bead 3 from bond b, angle theta at bead 2 and the dihedral
    e1 = (x[:, 2] - x[:, 1]) / b
    n1 = np.cross(x[:, 1] - x[:, 0], e1)
    n1 /= np.linalg.norm(n1, axis=1)[:, None]
    m1 = np.cross(n1, e1)
    d = np.stack([-np.cos(theta) * np.ones(n), np.sin(theta) * np.cos(angles), np.sin(theta) * np.sin(angles)], 1)
    x[:, 3] = x[:, 2] + b * (d[:, :1] * e1 + d[:, 1:2] * m1 + d[:, 2:] * n1)
    return x + noise * rng.standard_normal(x.shape)


def test_dihedral_matches_mdtraj_and_finite_differences(numerical_forces):
    import mdtraj as md

    rng = np.random.default_rng(0)
    R = rng.standard_normal((50, 4, 3))
    angle, grad = dihedral(R, (0, 1, 2, 3))
    top = md.Topology()
    residue = top.add_residue("ALA", top.add_chain())
    for name in "ABCD":
        top.add_atom(name, md.element.carbon, residue)
    traj = md.Trajectory(R, top)
    ref = md.compute_dihedrals(traj, [[0, 1, 2, 3]], periodic=False)[:, 0]
    assert np.allclose(angle, ref, atol=1e-5)
    F = numerical_forces(lambda X: -np.unwrap(dihedral(X, (0, 1, 2, 3))[0]), R, h=1e-6)
    assert np.allclose(grad, F, atol=1e-5 * np.abs(grad).max())


def test_chain_builder_sets_the_dihedral():
    rng = np.random.default_rng(1)
    target = rng.uniform(-np.pi, np.pi, 200)
    got = dihedral(chain(target, rng, noise=0.0), (0, 1, 2, 3))[0]
    assert np.allclose(wrap_angle(got - target), 0.0, atol=1e-9)


@pytest.fixture
def two_arc_offsets():
    arcs = [(np.radians(20.0), np.radians(60.0)), (np.radians(175.0), np.radians(165.0))]
    return arcs, DihedralOffsets.from_terms([((0, 1, 2, 3), arcs, [-24.0, 0.0])])


def test_offsets_are_constant_on_arcs_and_smooth_across_gaps(two_arc_offsets):
    arcs, term = two_arc_offsets
    grid = np.radians(np.linspace(-180, 180, 3601))
    U, dU = term.profile(0, grid)
    on_minor = (grid >= arcs[0][0]) & (grid <= arcs[0][0] + arcs[0][1])
    on_major = ((grid - arcs[1][0]) % (2 * np.pi)) <= arcs[1][1]
    assert np.allclose(U[on_minor], -24.0) and np.allclose(U[on_major], 0.0)
    assert np.all(dU[on_minor | on_major] == 0.0)
    # continuous, with the derivative the profile reports (C1 half-cosine ramps)
    assert np.abs(np.diff(U)).max() < 24.0 * np.pi / 2 * np.diff(grid)[0] / np.radians(40.0) * 1.01
    mid = 0.5 * (grid[1:] + grid[:-1])
    assert np.allclose(np.diff(U) / np.diff(grid), term.profile(0, mid)[1], atol=1e-2)


def test_offset_forces_match_finite_differences(two_arc_offsets, numerical_forces):
    _, term = two_arc_offsets
    rng = np.random.default_rng(2)
    angles = np.radians(rng.uniform(-20, 20, 20).tolist() + rng.uniform(80, 175, 20).tolist())  # in the gaps
    R = chain(angles, rng)
    E, F = term.energy_forces(R)
    assert np.abs(F).max() > 1.0
    assert np.allclose(F, numerical_forces(lambda X: term.energy_forces(X)[0], R), atol=1e-5)


def test_sampled_arcs_splits_at_wide_empty_stretches_only():
    rng = np.random.default_rng(3)
    major = rng.vonmises(np.radians(-90), 8.0, 5000)
    minor = rng.vonmises(np.radians(60), 40.0, 300)
    stray = np.radians([150.0, 151.0])
    arcs, counts = sampled_arcs(np.concatenate([major, minor, stray]))
    assert len(arcs) == 3 and sorted(counts)[:2] == [2, 300] and max(counts) >= 4990  # lone outliers: own arcs
    start, width = arcs[counts.index(300)]
    assert start < np.radians(60) < start + width and width < np.radians(80)
    assert sampled_arcs(rng.uniform(-np.pi, np.pi, 20000)) == ([], [])  # no gap: nothing to balance
    sparse = np.concatenate([rng.uniform(-1.0, 0.0, 50), rng.uniform(0.35, 1.0, 50)])  # a 20 deg hole: sparse data
    assert sampled_arcs(sparse) == ([], [])
    assert len(sampled_arcs(sparse, min_gap=np.radians(15))[0]) == 2


def test_wham_recovers_a_known_periodic_density():
    rng = np.random.default_rng(4)
    free = lambda a: 3.0 * np.cos(2 * a) + 1.5 * np.sin(a)  # in kT
    centers = np.linspace(-np.pi, np.pi, 24, endpoint=False)
    k = 1.0 / (np.pi / 24) ** 2  # kT/rad^2
    samples = []
    for c in centers:  # rejection-sample each biased window
        a = wrap_angle(c + rng.normal(0, 1 / np.sqrt(k), 400000))
        keep = rng.random(len(a)) < np.exp(-(free(a) - free(a).min()))
        samples.append(a[keep][:30000])
    mid, log_p = wham(samples, centers, k * KT, KT)
    fine = np.linspace(-np.pi, np.pi, 72 * 50, endpoint=False) + np.pi / 3600
    exact = np.log(np.exp(-free(fine)).reshape(72, 50).sum(1))  # bin-integrated
    exact -= np.log(np.exp(exact).sum())
    assert np.abs(log_p - exact).max() < 0.1


def test_solve_offsets_gives_each_arc_its_share():
    mid = np.linspace(-np.pi, np.pi, 72, endpoint=False) + np.pi / 72
    log_p = -0.5 * (wrap_angle(mid + np.pi / 2) / 0.4) ** 2 + np.where(np.abs(mid - 1.0) < 0.3, -12.0, -np.inf)
    log_p = np.logaddexp(log_p, -0.5 * (wrap_angle(mid + np.pi / 2) / 0.4) ** 2)
    arcs = [(0.6, 0.8), (np.radians(175), np.radians(165))]
    delta, large, target, pops = solve_offsets(mid, log_p, arcs, [30, 970], KT)
    assert list(large) == [0, 1] and np.allclose(target, [0.03, 0.97])
    assert np.allclose(pops, [0.03, 0.97], atol=1e-8) and delta[1] == 0.0 and delta[0] < -5 * KT
    # a third arc of 5 frames (too few to weigh) takes the energy of its nearest large arc and adds to its share
    arcs3 = arcs[:1] + [(1.6, 0.1)] + arcs[1:]
    delta3, large3, target3, pops3 = solve_offsets(mid, log_p, arcs3, [30, 5, 965], KT)
    assert list(large3) == [0, 2] and delta3[1] == delta3[0] and np.allclose(target3, [0.035, 0.965])
    assert np.allclose(pops3, target3, atol=1e-8)


class ChainModel:
    """Four-bead chain: harmonic bonds and angles (the cgdml prior, Boltzmann-inverted from stiff chains)
    plus a dihedral potential ``dihedral_energy(phi) -> (U, dU/dphi)`` in kJ/mol."""

    def __init__(self, dihedral_energy):
        from cgdml.prior import CGPrior

        self.dihedral_energy = dihedral_energy
        self.masses = np.full(4, 12.0)
        rng = np.random.default_rng(99)
        self.prior = CGPrior(repulsion=False).fit(chain(rng.uniform(-np.pi, np.pi, 2000), rng), TEMPERATURE)

    def energy_forces(self, R):
        E, F = self.prior.energy_forces(R)
        angle, grad = dihedral(R, (0, 1, 2, 3))
        e, de = self.dihedral_energy(angle)
        F -= de[:, None, None] * grad
        return E + e, F

    def forces(self, R):
        return self.energy_forces(R)[1]


def two_basins(angle):
    """Two basins, phi = -90 deg (deep) and +60 deg (2 kT higher), 12 kT barriers between: kJ/mol."""
    c = np.array([0.0, -2.0, 3.0, 2.0, -1.0]) * KT  # a0 + sum a_n cos(n phi) + b1 sin(phi)
    e = c[1] * np.cos(angle) + c[2] * np.cos(2 * angle) + c[3] * np.sin(angle) + c[4] * np.sin(2 * angle)
    de = -c[1] * np.sin(angle) - 2 * c[2] * np.sin(2 * angle) + c[3] * np.cos(angle) + 2 * c[4] * np.cos(2 * angle)
    return e, de


def test_chain_model_forces_match_finite_differences(numerical_forces):
    rng = np.random.default_rng(5)
    model = ChainModel(two_basins)
    R = chain(rng.uniform(-np.pi, np.pi, 10), rng)
    assert np.allclose(model.forces(R), numerical_forces(lambda X: model.energy_forces(X)[0], R), atol=1e-4)


def test_balance_basins_restores_the_population_a_wrong_model_loses():
    """Training frames sample both basins but never the barriers; the 'fitted' model is right on the data and
    wrong by 6 kT across the gaps (an extrapolation error). Balancing must undo exactly that. This also tests
    umbrella sampling + WHAM against an exact dihedral free energy."""
    rng = np.random.default_rng(7)
    grid = np.linspace(-np.pi, np.pi, 3600, endpoint=False)
    weight = np.exp(-two_basins(grid)[0] / KT)
    frames = rng.choice(grid, size=4000, p=weight / weight.sum())
    frames = frames[np.abs(wrap_angle(frames - np.radians(-15))) > np.radians(30)]   # drop the barrier frames
    frames = frames[np.abs(wrap_angle(frames - np.radians(135))) > np.radians(30)]
    coords = chain(frames, rng)
    dataset = SimpleNamespace(coords=coords, masses=np.full(4, 12.0), temperature=TEMPERATURE, n_beads=4,
                              cg_topology=CGTopology.chain(["C1", "C2", "C3", "C4"], warn=False))
    arcs, counts = sampled_arcs(dihedral(coords, (0, 1, 2, 3))[0])
    assert len(arcs) == 2
    error = DihedralOffsets.from_terms([((0, 1, 2, 3), arcs, [6.0 * KT if c < max(counts) else 0.0
                                                                for c in counts])])

    class WrongModel(ChainModel):
        def forces(self, R):
            return super().forces(R) + error.forces(R)

    offsets, report = balance_basins(WrongModel(two_basins), dataset)  # default umbrella: 24 x 8 x 40 ps
    minor = int(np.argmin(counts))
    (term,) = report
    assert term["model_population"][minor] < 0.2 * term["target_population"][minor]
    assert term["offset_kJ_per_mol"][minor] == pytest.approx(-6.0 * KT, abs=0.4 * KT)
    # the balanced model, measured afresh, holds the minor basin at its training population
    fixed = WrongModel(two_basins)
    mid, log_p, _ = umbrella_profile(lambda R: fixed.forces(R) + offsets.forces(R), coords, (0, 1, 2, 3), [0, 1],
                                     masses=fixed.masses, temperature=TEMPERATURE, seed=1)
    assert np.exp(log_p[_arc_index(mid, arcs) == minor]).sum() == pytest.approx(term["target_population"][minor],
                                                                                rel=0.35)
    # and its whole dihedral free energy is the true one: for fixed-length bonds and angles the dihedral's
    # marginal is exp(-U(phi)/kT), so umbrella sampling + WHAM of the balanced model must recover it
    exact = -two_basins(mid)[0] / KT
    exact -= np.log(np.exp(exact).sum())
    resolvable = exact > np.log(1e-4)
    err = (log_p - exact)[resolvable]
    assert np.abs(err - err.mean()).max() < 0.5
    # where the training frames are, the offsets add no force
    assert np.abs(offsets.forces(coords)).max() == 0.0


def test_model_file_round_trips_offsets(tmp_path, two_arc_offsets):
    from cgdml.model import CGModel
    from test_simulate import tiny_model

    _, term = two_arc_offsets
    path = tiny_model(tmp_path / "model.npz")
    model = CGModel.load(path)
    R = chain(np.radians([0.0, 10.0, 100.0]), np.random.default_rng(8))
    R = np.concatenate([R, R[:, -1:] + [0.1, 0.1, 0.0]], axis=1)  # five beads, dihedral 0-1-2-3 in a gap
    plain = model.forces(R)
    model.offsets = term
    model.save(path)
    loaded = CGModel.load(path)
    assert np.array_equal(loaded.offsets.delta, term.delta)
    assert np.allclose(loaded.forces(R) - plain, term.forces(R)) and np.abs(term.forces(R)).max() > 1.0
    E1, F1 = loaded.energy_forces(R)
    assert np.allclose(F1, loaded.forces(R))
    arrays = dict(np.load(path))
    arrays["offsets/quads"] = np.array([[0, 1, 2, 9]])
    np.savez(tmp_path / "bad.npz", **arrays)
    from cgdml._io import CgdmlError
    with pytest.raises(CgdmlError, match="bead indices"):
        CGModel.load(tmp_path / "bad.npz")


def test_fit_reports_a_failed_balancing_in_one_line(tmp_path, monkeypatch):
    import cgdml.basins
    from cgdml._io import CgdmlError
    from cgdml.fit import main as fit_main
    from test_simulate import tiny_model

    tiny_model(tmp_path / "model.npz")

    def fail(*args, **kwargs):
        raise CgdmlError("every replica blew up")

    monkeypatch.setattr(cgdml.basins, "balance_basins", fail)
    out = tmp_path / "fit.npz"
    args = [str(tmp_path / "data.npz"), "-o", str(out), "--method", "single", "--n-frames", "60", "--quiet"]
    with pytest.raises(CgdmlError, match="basin balancing failed .*--no-balance-basins"):
        fit_main(args)
    assert not out.exists()
    assert fit_main(args + ["--no-balance-basins"]) == 0 and out.exists()
