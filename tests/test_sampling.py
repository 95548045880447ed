import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.sampling import grid_strata, kmeans_strata, stratified_batch, stratified_folds


@pytest.fixture
def skewed_labels():
    rng = np.random.default_rng(0)
    # a Boltzmann-like imbalance: stratum populations from 5 to 2000
    sizes = np.array([2000, 900, 400, 100, 30, 5])
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes)), sizes


def test_batches_cover_strata_uniformly_without_replacement(skewed_labels):
    labels, sizes = skewed_labels
    idx = stratified_batch(labels, 120, np.random.default_rng(1))
    assert len(np.unique(idx)) == 120
    counts = np.bincount(labels[idx], minlength=len(sizes))
    # every stratum gets its equal share of 20, the smallest gives all it has and the rest is spread evenly
    assert counts[-1] == 5
    assert counts[:-1].min() >= 20 and counts[:-1].max() - counts[:-1].min() <= 1


def test_batches_cover_strata_uniformly_with_replacement(skewed_labels):
    labels, sizes = skewed_labels
    idx = stratified_batch(labels, 60000, np.random.default_rng(2), replace=True)
    freq = np.bincount(labels[idx], minlength=len(sizes)) / len(idx)
    np.testing.assert_allclose(freq, 1 / len(sizes), atol=0.01)


def test_batches_are_seeded_and_respect_the_pool(skewed_labels):
    labels, _ = skewed_labels
    a = stratified_batch(labels, 50, np.random.default_rng(7))
    b = stratified_batch(labels, 50, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    pool = np.arange(0, len(labels), 2)
    c = stratified_batch(labels, 50, np.random.default_rng(7), pool=pool)
    assert np.isin(c, pool).all()
    with pytest.raises(CgdmlError):
        stratified_batch(labels, len(pool) + 1, np.random.default_rng(0), pool=pool)


def test_grid_strata_on_periodic_angles():
    cv = np.array([[-np.pi, 0.0], [np.pi - 1e-9, 0.1], [0.5, -3.0], [np.pi, 0.0]])
    labels = grid_strata(cv, bins=4)
    assert labels[0] == labels[3]  # pi wraps onto -pi
    assert len(np.unique(labels)) == 3


def test_folds_are_balanced_within_strata(skewed_labels):
    labels, sizes = skewed_labels
    folds = stratified_folds(labels, 5, np.random.default_rng(3))
    for s, n in enumerate(sizes):
        per_fold = np.bincount(folds[labels == s], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1


def test_kmeans_strata_separate_clusters():
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(c, 0.1, size=(200, 3)) for c in (0.0, 5.0, 10.0)])
    labels = kmeans_strata(X, n_strata=3, seed=0)
    for block in range(3):
        assert len(np.unique(labels[block * 200:(block + 1) * 200])) == 1
    assert len(np.unique(labels)) == 3
