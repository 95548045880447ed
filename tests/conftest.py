"""Shared test helpers and toy systems (pytest fixtures; test modules never import one another).

- ``numerical_forces``: -dE/dR by central differences, for finite-difference force checks;
- ``noisy_toy``: a 4-bead molecule whose mean force is known exactly, with CG-like noisy labels;
- ``write_small_model``: a small alanine-dipeptide model file, for tests of the commands around one;
- ``short_judge_runs`` (autouse): fits judge their residual weight on short simulations.

Hypothesis profiles: "ci" (the default, and what .ci/run uses) draws the same examples on every run
(derandomised, no example database), so the README's test command gives the same result on every fresh clone;
"explore" draws new random examples each run and keeps failures in the local database, for hunting bugs:
``python -m pytest --hypothesis-profile=explore tests/test_properties.py`` (or ``HYPOTHESIS_PROFILE=explore``).
"""
import os

import numpy as np
import pytest
from hypothesis import settings

from cgdml.data import CGDataset
from cgdml.geometry import bond_angles, dihedral
from cgdml.units import kT as thermal_energy

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TOY_T = 300.0
TOY_KT = thermal_energy(TOY_T)


def finite_difference_forces(energy, R, h=1e-6):
    """-dE/dR by central differences; ``energy`` maps R (n, n_beads, 3) to energies (n,)."""
    F = np.zeros_like(R)
    for b in range(R.shape[1]):
        for c in range(3):
            Rp, Rm = R.copy(), R.copy()
            Rp[:, b, c] += h
            Rm[:, b, c] -= h
            F[:, b, c] = -(energy(Rp) - energy(Rm)) / (2 * h)
    return F


@pytest.fixture(autouse=True)
def short_judge_runs(monkeypatch):
    """Fits in the tests judge the residual weight (cgdml.selection.judge_residual_weight) on short simulations:
    8 replicas x 3 ps instead of the library's 50 x 60 ps, so that every fit still runs the judge's code path."""
    import cgdml.selection

    monkeypatch.setattr(cgdml.selection, "JUDGE_RUN", dict(replicas=8, steps=1000, burn_in=200, save_every=20))


@pytest.fixture(scope="session")
def write_small_model():
    """``write_small_model(path)``: save a small CG model of the shipped alanine dipeptide (a prior and a GDML on 60
    frames) to ``path`` and return it, for tests of the commands around a model file."""
    def write(path):
        from cgdml.gdml import GDML
        from cgdml.mapping import load_default_cg_dataset
        from cgdml.model import CGModel
        from cgdml.prior import CGPrior

        ds = load_default_cg_dataset(stride=50)
        prior = CGPrior().fit(ds.coords, ds.temperature)
        gdml = GDML(sigma=0.4, lam=0.1, relative_lam=True).fit(ds.coords[:60],
                                                                ds.forces[:60] - prior.forces(ds.coords[:60]))
        CGModel(gdml.model_, prior, ds.system, ds.coords[:40]).save(path)
        return path
    return write


@pytest.fixture(scope="session")
def numerical_forces():
    """The central-difference force function ``numerical_forces(energy, R, h=1e-6)``."""
    return finite_difference_forces


def toy_stiff_energy(R):
    """The bond and angle part of the toy energy (kJ/mol) of R (n, 4, 3) nm."""
    r = np.linalg.norm(np.diff(R, axis=1), axis=-1)
    theta = bond_angles(R, np.array([[0, 1, 2], [1, 2, 3]]))
    return 0.5 * 40000.0 * ((r - 0.15) ** 2).sum(1) + 0.5 * 300.0 * ((theta - 1.9) ** 2).sum(1)


def toy_energy(R):
    """Stiff bonds and angles plus a chiral two-dimensional term in the first angle theta and the dihedral phi."""
    theta = bond_angles(R, np.array([[0, 1, 2], [1, 2, 3]]))
    phi = dihedral(R, (0, 1, 2, 3))[0]
    soft = TOY_KT * (1.5 * np.cos(phi) + 1.0 * np.sin(phi) + 8.0 * (theta[:, 0] - 1.9) * np.cos(phi))
    return toy_stiff_energy(R) + soft


@pytest.fixture(scope="session")
def noisy_toy():
    """(dataset with noisy labels, exact forces) for 4000 Boltzmann-distributed toy configurations.

    Labels are the exact forces plus Gaussian noise of four times the learnable (soft) force, as CG labels are
    mostly noise.
    """
    rng = np.random.default_rng(0)
    a = 1.9
    start = np.array([[0, 0, 0], [0.15, 0, 0], [0.15 - 0.15 * np.cos(a), 0.15 * np.sin(a), 0],
                      [0.15 - 0.15 * np.cos(a) + 0.12, 0.15 * np.sin(a), 0.08]])
    R = np.repeat(start[None], 4000, axis=0) + rng.normal(scale=0.01, size=(4000, 4, 3))
    E = toy_energy(R)
    for _ in range(1500):  # vectorised Metropolis, one independent chain per frame
        trial = R + rng.normal(scale=0.006, size=R.shape)
        Et = toy_energy(trial)
        ok = rng.random(len(R)) < np.exp(-(Et - E) / TOY_KT)
        R[ok], E[ok] = trial[ok], Et[ok]
    F_true = finite_difference_forces(toy_energy, R)
    soft_rms = np.sqrt(np.mean((F_true - finite_difference_forces(toy_stiff_energy, R)) ** 2))
    noisy = F_true + rng.normal(scale=4 * soft_rms, size=R.shape)
    return CGDataset.from_arrays(R, noisy, bead_names=["C1", "C2", "C3", "C4"], temperature=TOY_T), F_true
