"""One fit path: ``cgdml.fit_cg_model`` from Python and ``python -m cgdml.fit`` give the same model, array for
array; old model files still load; a wheel-style lookup finds the shipped data."""
import json

import numpy as np
import pytest

import cgdml
from cgdml._io import CgdmlError
from cgdml.fit import main as fit_main
from cgdml.model import CGModel

SMALL = dict(n_models=3, batch_size=150, mean_set_size=150, sigma1=[2.0, 4.0], lam1=[1.0], sigma2=[2.0],
             lam2=[1e-2], cv_models=1, cv_mean_set_size=100, cv_holdout=200)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    ds = cgdml.load_default_cg_dataset(stride=40)   # 500 frames of the shipped alanine dipeptide, 5 beads
    path = tmp_path_factory.mktemp("pipeline") / "cg.npz"
    ds.save(path)
    return cgdml.CGDataset.load(path), path        # the saved copy: what the command line reads (float32)


@pytest.mark.parametrize("method", ["two-layer", "nystrom"])
def test_python_and_command_line_give_the_same_model(small_dataset, tmp_path, method):
    ds, path = small_dataset
    if method == "two-layer":
        params, flags = SMALL, ["--method", "two-layer"]
        for key, value in SMALL.items():
            flags += [f"--{key.replace('_', '-')}", *map(str, np.atleast_1d(value))]
    else:
        params = dict(n_inducing=40, sigma=[2.0, 4.0], lam=[1.0])
        flags = ["--method", "nystrom", "--inducing", "40", "--sigma1", "2", "4", "--lam1", "1"]
    model = cgdml.fit_cg_model(ds, method, seed=5, **params)
    out = tmp_path / "model.npz"
    assert fit_main([str(path), *flags, "--seed", "5", "--quiet", "-o", str(out)]) == 0
    cli = CGModel.load(out)
    np.testing.assert_array_equal(cli.gdml.train_descriptors, model.gdml.train_descriptors)
    np.testing.assert_array_equal(cli.gdml.coefficients, model.gdml.coefficients)
    for name in ("bond_r0_", "bond_k_", "angle_k_", "repulsion_rmin_"):
        np.testing.assert_array_equal(getattr(cli.prior, name), getattr(model.prior, name))
    assert (cli.offsets is None) == (model.offsets is None)
    R = ds.coords[::50]
    np.testing.assert_array_equal(cli.forces(R), model.forces(R))
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["chosen"] == json.loads(json.dumps(model.info["chosen"]))
    assert set(summary) >= {"method", "params", "chosen", "data", "timings"}


def test_unknown_method_is_a_clean_error(small_dataset):
    with pytest.raises(CgdmlError, match="unknown fit method"):
        cgdml.fit_cg_model(small_dataset[0], "magic")


def test_shipped_data_is_package_data():
    from cgdml.io import default_dataset_paths, shipped_data_dir

    assert shipped_data_dir().name == "_data"
    assert all(p.exists() for p in default_dataset_paths())


def peptide_topology(n_residues):
    """Backbone beads C N CA C ... N of ACE-(ALA)n-NME, bonded in chain order."""
    from cgdml.topology import CGTopology

    names = ["C"] + ["N", "CA", "C"] * n_residues + ["N"]
    resid = [0] + [r + 1 for r in range(n_residues) for _ in range(3)] + [n_residues + 1]
    resname = ["ACE"] + ["ALA"] * (3 * n_residues) + ["NME"]
    return CGTopology(names, [(i, i + 1) for i in range(len(names) - 1)], residue_ids=resid, residue_names=resname)


def test_auto_defaults_follow_the_number_of_residues():
    """Two or more residues: the two-layer fit with the prior's dihedral profiles; one: inducing-point, none."""
    from types import SimpleNamespace

    from cgdml.pipeline import default_method
    from cgdml.prior import uses_dihedral_profiles

    for n_residues, method, profiles in ((1, "nystrom", False), (3, "two-layer", True)):
        top = peptide_topology(n_residues)
        assert len(top.backbone()) == n_residues and top.is_polypeptide is (n_residues >= 2)
        assert default_method(SimpleNamespace(cg_topology=top)) == method
        assert uses_dihedral_profiles("auto", top) is profiles
    assert uses_dihedral_profiles("auto", None) is False and uses_dihedral_profiles(True, None) is True
    with pytest.raises(CgdmlError, match="prior dihedrals"):
        uses_dihedral_profiles("yes", None)


def test_auto_prior_fits_every_residues_phi_and_psi():
    from cgdml.prior import HarmonicPrior

    top = peptide_topology(3)
    rng = np.random.default_rng(0)
    R = np.cumsum(np.full((200, top.n_beads, 3), 0.08) + rng.normal(scale=0.05, size=(200, top.n_beads, 3)), axis=1)
    prior = HarmonicPrior().fit(R, 300.0, top)
    assert prior.dihedral_quads_.tolist() == top.backbone_quads().tolist() and len(prior.dihedral_quads_) == 6
    assert len(HarmonicPrior().fit(R[:, :5], 300.0, peptide_topology(1)).dihedral_quads_) == 0
