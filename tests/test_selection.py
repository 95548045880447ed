"""Hyperparameter selection (cgdml.selection): the dihedral score, the ensemble-size extrapolation of the K-fold
score, the hold-out and fold splits, and the rule that picks a winner."""
import numpy as np
import pytest

from cgdml._io import CgdmlError, WorkCache
from cgdml.selection import (best, ensemble_size_correction, fold_sets, holdout_search, holdout_split, mse,
                             project_forces, resolve_score, score_projection)


def test_dihedral_projection_gives_the_generalised_force(numerical_forces):
    # U = k (1 - cos phi) of the first dihedral of a random 5-bead chain: with F from central differences
    # of U, its projection on that dihedral is the generalised force -dU/dphi = -k sin(phi).
    from cgdml.features import chain_quads
    from cgdml.geometry import dihedral as iupac_dihedral  # checked against mdtraj in test_basins

    rng = np.random.default_rng(3)
    R = np.cumsum(rng.normal(scale=0.1, size=(20, 5, 3)), axis=1)
    k = 7.0
    energy = lambda X: k * (1.0 - np.cos(iupac_dihedral(X, (0, 1, 2, 3))[0]))  # noqa: E731
    F = numerical_forces(energy, R)
    quads, b = score_projection(R, chain_quads(R.shape[1]))
    assert quads.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]] and b.shape == (20, 2, 4, 3)
    along = project_forces(F, (quads, b))
    phi = iupac_dihedral(R, (0, 1, 2, 3))[0]
    np.testing.assert_allclose(along[:, 0], -k * np.sin(phi), rtol=1e-6, atol=1e-6)
    # a uniform force (a translation) moves no dihedral: zero projected error, non-zero plain error
    shifted = F + np.array([3.0, -1.0, 2.0])
    assert mse(shifted, F, (quads, b)) < 1e-20 and mse(shifted, F) == pytest.approx(14.0 / 3.0)


def test_ensemble_size_correction_predicts_the_larger_ensemble():
    # sub-models = truth + bias + independent noise of variance v: the average of n has MSE bias^2 + v / n. The
    # score of 4 models, corrected to 16, matches the MSE of 16 models (to the sampling error).
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3000, 4, 3))
    bias, v = 0.3, 2.0

    def models(m):
        return target + bias + rng.normal(scale=np.sqrt(v), size=(m, *target.shape))

    four = models(4)
    corrected = mse(four.mean(0), target) + ensemble_size_correction(four, 16)
    assert corrected == pytest.approx(bias ** 2 + v / 16, rel=0.03)
    assert corrected == pytest.approx(mse(models(16).mean(0), target), rel=0.03)
    assert ensemble_size_correction(four[:1], 16) == 0.0   # one model: no spread to extrapolate with


def test_the_winner_is_the_smallest_score_and_the_first_of_ties():
    table = [dict(sigma=2.0, lam=1.0, mse=5.0), dict(sigma=4.0, lam=1.0, mse=3.0), dict(sigma=8.0, lam=1.0, mse=3.0)]
    assert best(table) is table[1]
    assert best(table, key="sigma") is table[0]


def test_scores_resolve_against_the_dihedrals_at_hand():
    quads = [[0, 1, 2, 3]]
    assert resolve_score("auto", quads)[0] == "dihedral" and resolve_score("auto", [])[0] == "force"
    assert resolve_score("force", quads)[1].tolist() == quads
    with pytest.raises(CgdmlError, match="cv_score 'dihedral' needs a dihedral in the CG topology"):
        resolve_score("dihedral", [], "in the CG topology")
    with pytest.raises(CgdmlError, match="cv_score must be"):
        resolve_score("energy", quads)


def test_holdout_split_and_search_resume(tmp_path):
    val, train = holdout_split(1000, 0.1, 500, seed=3)
    assert len(val) == 100 and len(train) == 500 and not set(val) & set(train)
    assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    assert np.array_equal(holdout_split(1000, 0.1, 500, seed=3)[0], val)
    assert len(holdout_split(300_000, 0.1, 10**6, seed=0)[0]) == 20_000         # at most 20,000 held out
    with pytest.raises(CgdmlError, match="too few"):
        holdout_split(2, 0.5, 10, seed=0)
    calls = []

    def evaluate(sigma, lam):
        calls.append((sigma, lam))
        return dict(mse=(np.log(sigma) - 1.0) ** 2 + lam)

    grid = [(2.0, 1.0), (4.0, 1.0), (4.0, 0.1)]
    table = holdout_search(grid, evaluate, WorkCache(tmp_path, "fingerprint"))
    assert (best(table)["sigma"], best(table)["lam"]) == (4.0, 0.1) and calls == grid
    again = holdout_search(grid, evaluate, WorkCache(tmp_path, "fingerprint"))   # resumed: nothing evaluated
    assert again == table and calls == grid


def test_fold_sets_hold_out_a_fold_and_draw_the_mean_set_outside_it():
    from cgdml.sampling import stratified_folds

    strata = np.repeat(np.arange(5), 40)
    folds = stratified_folds(strata, 2, np.random.default_rng(0))
    final = np.arange(0, 200, 7)
    sets = fold_sets(strata, folds, 2, 30, 50, lambda k: np.random.default_rng([9, k]), final)
    for k in (0, 1):
        held, mean = sets[k]["held"], sets[k]["mean"]
        assert len(held) == 30 and np.all(folds[held] == k)
        assert len(mean) == 50 and np.all(folds[mean] != k)
        assert np.bincount(strata[mean]).tolist() == [10] * 5
        assert sets[k]["final"] is final
    with pytest.raises(CgdmlError, match="use fewer folds"):
        fold_sets(strata[:3], np.array([0, 0, 0]), 2, 30, 50, lambda k: np.random.default_rng(k), final)
