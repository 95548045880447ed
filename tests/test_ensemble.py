"""Two-layer scheme on a toy molecule whose mean force is known exactly.

The toy: 4 beads, stiff harmonic bonds and angles plus a chiral two-dimensional term in the first angle
theta and the dihedral phi. Labels are the exact forces plus heavy Gaussian noise (four times the
learnable force), as CG labels are mostly noise.
"""
import numpy as np
import pytest

from cgdml.data import CGDataset
from cgdml.ensemble import TwoLayerGDML, fit_single

def mean_force_error(model, data, F_true, test):
    return float(np.mean((model.forces(data.coords[test]) - F_true[test]) ** 2))


def test_two_layer_beats_single_model_on_noisy_toy(noisy_toy):
    data, F_true = noisy_toy
    test = np.arange(3000, 4000)
    train = data.subset(np.arange(3000))
    two = TwoLayerGDML(n_models=24, batch_size=200, mean_set_size=300, sigma1=[1.0], lam1=[3.0], sigma2=[1.0],
                       lam2=[1e-2], strata="kmeans", n_strata=20, progress=False).fit(train)
    err_two = mean_force_error(two.model_, data, F_true, test)
    # the single model gets the same final size (300 frames) and its best lambda, chosen against the truth
    err_single = min(mean_force_error(fit_single(train, 300, sigma=1.0, lam=lam, strata="kmeans"), data, F_true, test)
                     for lam in (0.3, 1.0, 3.0, 10.0))
    print(f"mean-force MSE: two-layer {err_two:.1f}, best single {err_single:.1f}")
    assert err_two < 0.6 * err_single, (err_two, err_single)


def test_cross_validation_picks_a_sensible_sigma(noisy_toy):
    # On this toy the true mean-force error is smallest near sigma = 3 (about 1100), and several times
    # worse for a kernel far too narrow (0.01: no generalisation) or far too wide (1000: nearly linear).
    # Without the prior's dihedral profile (off for this chain anyway: it has no peptide backbone), which would
    # take most of the toy's soft force out of the labels: all three candidates then score alike.
    data, _ = noisy_toy
    two = TwoLayerGDML(n_models=12, batch_size=150, mean_set_size=150, sigma1=[0.01, 3.0, 1000.0], lam1=[3.0],
                       sigma2=[1.0], lam2=[1e-2, 1e-1], n_folds=3, cv_models=4, cv_mean_set_size=150,
                       strata="kmeans", n_strata=20, prior_dihedrals=False,
                       progress=False).fit(data.subset(np.arange(3000)))
    layer1 = {s["sigma"]: s["mse"] for s in two.cv_scores_ if s["layer"] == 1}
    print("layer-1 CV MSE by sigma:", layer1)
    assert two.sigma1_ == 3.0, layer1
    assert len([s for s in two.cv_scores_ if s["layer"] == 2]) == 2
    assert two.n_layer1_models_ == 12  # the fold ensembles (3 x 4) are the final layer 1


def test_fit_resumes_from_cached_layer1_models(noisy_toy, tmp_path):
    data, _ = noisy_toy
    train = data.subset(np.arange(1000))
    kwargs = dict(n_models=4, batch_size=100, mean_set_size=100, sigma1=[1.0], lam1=[3.0], sigma2=[1.0],
                  lam2=[1e-2], strata="kmeans", n_strata=10, progress=False, workdir=tmp_path / "work")
    first = TwoLayerGDML(**kwargs).fit(train)
    cached = sorted(p.name for p in (tmp_path / "work").glob("l1_*.npz"))
    assert len(cached) == 4
    (tmp_path / "work" / cached[-1]).unlink()  # as if killed before the last sub-model finished
    again = TwoLayerGDML(**kwargs).fit(train)
    np.testing.assert_allclose(again.mean_set_labels_, first.mean_set_labels_, rtol=1e-5, atol=1e-6)


def test_batch_larger_than_the_data_is_lowered_with_a_warning(noisy_toy):
    data, _ = noisy_toy
    small = data.subset(np.arange(400))
    with pytest.warns(UserWarning, match="lowered to 200"):
        two = TwoLayerGDML(n_models=2, batch_size=10_000, mean_set_size=50, sigma1=[1.0], lam1=[3.0], sigma2=[1.0],
                           lam2=[1e-2], strata="kmeans", n_strata=10, progress=False).fit(small)
    assert two.batch_size_ == 200 and two.model_.info["chosen"]["batch_size"] == 200


def test_dihedral_projection_gives_the_generalised_force(numerical_forces):
    # U = k (1 - cos phi) of the first dihedral of a random 5-bead chain: with F from central differences
    # of U, its projection on that dihedral is the generalised force -dU/dphi = -k sin(phi).
    from cgdml.ensemble import _mse
    from cgdml.geometry import dihedral_projection, project_forces
    from cgdml.features import chain_quads
    from cgdml.geometry import dihedral as iupac_dihedral  # checked against mdtraj in test_basins

    rng = np.random.default_rng(3)
    R = np.cumsum(rng.normal(scale=0.1, size=(20, 5, 3)), axis=1)
    k = 7.0
    energy = lambda X: k * (1.0 - np.cos(iupac_dihedral(X, (0, 1, 2, 3))[0]))  # noqa: E731
    F = numerical_forces(energy, R)
    quads, b = dihedral_projection(R, chain_quads(R.shape[1]))
    assert quads.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]] and b.shape == (20, 2, 4, 3)
    along = project_forces(F, (quads, b))
    phi = iupac_dihedral(R, (0, 1, 2, 3))[0]
    np.testing.assert_allclose(along[:, 0], -k * np.sin(phi), rtol=1e-6, atol=1e-6)
    # a uniform force (a translation) moves no dihedral: zero projected error, non-zero plain error
    shifted = F + np.array([3.0, -1.0, 2.0])
    assert _mse(shifted, F, (quads, b)) < 1e-20 and _mse(shifted, F) == pytest.approx(14.0 / 3.0)


def test_cv_score_is_dihedral_for_chains_and_force_otherwise(noisy_toy):
    from cgdml._io import CgdmlError

    data, _ = noisy_toy
    small = data.subset(np.arange(600))
    kwargs = dict(n_models=2, batch_size=100, mean_set_size=60, sigma1=[1.0, 3.0], lam1=[3.0], sigma2=[1.0],
                  lam2=[1e-2], cv_models=1, cv_mean_set_size=60, cv_holdout=100, strata="kmeans", n_strata=5,
                  progress=False)
    auto = TwoLayerGDML(**kwargs).fit(small)
    forced = TwoLayerGDML(cv_score="force", **kwargs).fit(small)
    assert auto.model_.info["cv_score"] == "dihedral" and forced.model_.info["cv_score"] == "force"
    # the same sub-models and predictions (same seed), scored in different units: every score differs
    assert all(a["mse"] != f["mse"] for a, f in zip(auto.cv_scores_, forced.cv_scores_))
    three = CGDataset.from_arrays(data.coords[:600, :3], data.forces[:600, :3], bead_names=["C1", "C2", "C3"],
                                  temperature=data.temperature)
    with pytest.raises(CgdmlError, match="needs a dihedral in the CG topology"):
        TwoLayerGDML(cv_score="dihedral", **kwargs).fit(three)
    with pytest.raises(CgdmlError, match="cv_score must be"):
        TwoLayerGDML(cv_score="phi", **kwargs).fit(small)
