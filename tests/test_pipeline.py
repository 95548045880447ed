"""One fit path: ``cgdml.fit_cg_model`` from Python and ``python -m cgdml.fit`` give the same model, array for
array; the CG estimator is the prior plus a learner on the residual forces; options that do not apply are refused;
a wheel-style lookup finds the shipped data."""
import json

import numpy as np
import pytest

import cgdml
from cgdml._io import CgdmlError
from cgdml.fit import main as fit_main
from cgdml.model import CGModel
from cgdml.pipeline import CGEstimator, cg_estimator
from cgdml.validation import ParameterError

SMALL = dict(n_models=3, batch_size=150, mean_set_size=150, sigma1=[2.0, 4.0], lam1=[1.0], sigma2=[2.0],
             lam2=[1e-2], cv_models=1, cv_mean_set_size=100, cv_holdout=200)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    ds = cgdml.load_default_cg_dataset(stride=40)   # 500 frames of the shipped alanine dipeptide, 5 beads
    path = tmp_path_factory.mktemp("pipeline") / "cg.npz"
    ds.save(path)
    return cgdml.CGDataset.load(path), path        # the saved copy: what the command line reads (float32)


@pytest.mark.parametrize("method", ["two-layer", "nystrom", "single"])
def test_python_and_command_line_give_the_same_model(small_dataset, tmp_path, method):
    ds, path = small_dataset
    if method == "two-layer":
        params, flags = SMALL, ["--method", "two-layer"]
        for key, value in SMALL.items():
            flags += [f"--{key.replace('_', '-')}", *map(str, np.atleast_1d(value))]
    elif method == "nystrom":
        params = dict(n_inducing=40, sigma=[2.0, 4.0], lam=[1.0])
        flags = ["--method", "nystrom", "--n-inducing", "40", "--sigma", "2", "4", "--lam", "1"]
    else:
        params = dict(n_frames=200, sigma=3.0, lam=1.0)
        flags = ["--method", "single", "--n-frames", "200", "--sigma", "3", "--lam", "1"]
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
    assert summary["fit_method"] == model.info["fit_method"] == method


def test_the_cg_estimator_is_the_prior_plus_the_learner_on_the_residual_forces(small_dataset):
    """The CG-level sequence, written once: CGPrior on every frame, the learner on F - F_prior, the sum as the
    model's force; the learner gets the topology's dihedrals and the strata."""
    from cgdml.gdml import GDML
    from cgdml.prior import CGPrior

    ds = small_dataset[0]
    fit = CGEstimator(GDML(sigma=3.0, lam=1.0, relative_lam=True), balance_basins=False, refine_pairs=False,
                      progress=False).fit(ds)
    prior = CGPrior().fit(ds.coords, ds.temperature, ds.cg_topology)
    gdml = GDML(sigma=3.0, lam=1.0, relative_lam=True, dihedrals=ds.cg_topology.chirality_quads).fit(
        ds.coords, ds.forces - prior.forces(ds.coords))
    R = ds.coords[::7]
    want = prior.forces(R) + gdml.predict_forces(R)
    np.testing.assert_allclose(fit.model_.forces(R), want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    assert fit.method_ == "single" and fit.train_index_ is None and fit.learner_ is not fit.learner
    assert fit.learner.dihedrals is None and fit.learner_.dihedrals.tolist() == ds.cg_topology.chirality_quads.tolist()
    assert fit.strata_method_ == "phi-psi" and len(fit.strata_) == ds.n_frames
    assert fit.model_.info["strata"]["n_occupied"] == fit.strata_.max() + 1


def test_a_training_subset_is_drawn_over_the_strata(small_dataset):
    """n_frames: the learner sees that many frames, no stratum more than its share, the prior every frame."""
    ds = small_dataset[0]
    fit = cg_estimator("single", n_frames=120, balance_basins=False, progress=False).fit(ds)
    idx = fit.train_index_
    assert len(idx) == len(np.unique(idx)) == 120 and fit.learner_.n_train_ == 120
    counts = np.bincount(fit.strata_[idx])
    full = np.bincount(fit.strata_)
    share = counts[full > 0]
    # water-filling: every stratum gives all its frames or at least as many as any other stratum got
    assert all(c == f or c >= share.max() - 1 for c, f in zip(share, full[full > 0]))
    from cgdml.prior import CGPrior

    np.testing.assert_array_equal(fit.prior_.bond_k_, CGPrior().fit(ds.coords, ds.temperature, ds.cg_topology).bond_k_)


def test_options_that_do_not_apply_are_refused(small_dataset, tmp_path):
    ds, path = small_dataset
    with pytest.raises(ParameterError, match="n_models does not apply to the nystrom fit"):
        cgdml.fit_cg_model(ds, "nystrom", n_models=3)
    with pytest.raises(ParameterError, match="sigma1 does not apply to the single fit"):
        cg_estimator("single", sigma1=[2.0])
    with pytest.raises(CgdmlError, match="--sigma1 does not apply to the nystrom fit"):
        fit_main([str(path), "--method", "nystrom", "--sigma1", "2", "-o", str(tmp_path / "m.npz")])
    with pytest.raises(CgdmlError, match="--sigma takes one value for the single fit, got 2"):
        fit_main([str(path), "--method", "single", "--sigma", "2", "4", "-o", str(tmp_path / "m.npz")])
    with pytest.raises(CgdmlError, match="--n-models does not apply to the nystrom fit .chosen by --method auto"):
        fit_main([str(path), "--n-models", "3", "-o", str(tmp_path / "m.npz")])   # ala2: auto is nystrom
    assert not list(tmp_path.iterdir())


def test_a_fit_ends_with_one_summary_line(monkeypatch, capsys, caplog):
    """Printed when logging is not set up (a notebook) and progress is on; logged (cgdml.pipeline, INFO) when it
    is; nothing with progress=False and no logging."""
    import logging

    info = dict(method="two-layer GDML", data=dict(n_frames=1234), wall_time_s=61.6,
                chosen=dict(sigma1=2.0, lam1=np.float64(1.0), sigma2=4.0, lam2=0.01, lam2_absolute=5.3),
                basin_balance=[{}])
    line = "fit: two-layer GDML on 1234 frames in 62 s; chosen sigma1 2, lam1 1, sigma2 4, lam2 0.01; " \
           "1 dihedral(s) balanced"
    monkeypatch.setattr(logging.getLogger("cgdml"), "handlers", [])         # (a command run here adds one)
    monkeypatch.setattr(logging.getLogger("cgdml"), "propagate", False)     # no handler anywhere: a notebook
    CGEstimator(progress=True)._report(info)
    assert capsys.readouterr().out == line + "\n"
    CGEstimator(progress=False)._report(info)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(logging.getLogger("cgdml"), "propagate", True)      # pytest's handlers: logging is set up
    with caplog.at_level(logging.INFO, logger="cgdml"):
        CGEstimator(progress=True)._report(info)
    assert capsys.readouterr().out == "" and caplog.messages == [line]


def test_fit_help_gives_the_true_defaults(monkeypatch):
    from cgdml.ensemble import TwoLayerGDML
    from cgdml.fit import build_parser
    from cgdml.nystrom import NystromGDML

    monkeypatch.setenv("COLUMNS", "1000")   # no line breaks inside the help texts
    text = " ".join(build_parser().format_help().split())
    assert f"default {NystromGDML().cv_score} for nystrom, {TwoLayerGDML().cv_score} for two-layer" in text
    assert "they, not the frame count, set the cost of an inducing-point fit" in text
    assert "--n-folds N_FOLDS, --folds N_FOLDS" in text and "(two-layer only; default 12)" in text


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


def test_one_default_method_and_profiles_by_amino_acids():
    """"auto" fits inducing-point GDML for every map; the prior's dihedral profiles are on for two or more amino
    acids (backbone or not), off for one."""
    from cgdml.pipeline import DEFAULT_METHOD, resolve_method
    from cgdml.prior import uses_dihedral_profiles
    from cgdml.topology import CGTopology

    assert resolve_method("auto") == DEFAULT_METHOD == "nystrom" and resolve_method("two-layer") == "two-layer"
    with pytest.raises(CgdmlError, match="unknown fit method 'tree'"):
        resolve_method("tree")
    for n_residues, profiles in ((1, False), (3, True)):
        top = peptide_topology(n_residues)
        assert len(top.backbone()) == n_residues
        assert uses_dihedral_profiles("auto", top) is profiles
    assert uses_dihedral_profiles("auto", None) is False and uses_dihedral_profiles(True, None) is True
    # a C-alpha trace (every bead named CA, no backbone) of ACE-AAA-NME: profiles by its amino acids; the caps do
    # not count, nor do beads without residue names
    trace = CGTopology(["CA"] * 5, [(i, i + 1) for i in range(4)], residue_ids=[1, 2, 3, 4, 5],
                       residue_names=["ACE", "ALA", "ALA", "HIE", "NME"])
    assert trace.backbone() == [] and trace.n_amino_acids == 3 and uses_dihedral_profiles("auto", trace) is True
    one = CGTopology(["CA"] * 3, [(0, 1), (1, 2)], residue_ids=[1, 2, 3], residue_names=["ACE", "ALA", "NME"])
    assert one.n_amino_acids == 1 and uses_dihedral_profiles("auto", one) is False
    assert CGTopology.chain(["A", "B", "C", "D"], warn=False).n_amino_acids == 0
    with pytest.raises(CgdmlError, match="prior dihedrals"):
        uses_dihedral_profiles("yes", None)


def test_auto_prior_fits_every_residues_phi_and_psi():
    from cgdml.prior import CGPrior, HarmonicPrior

    assert HarmonicPrior is CGPrior   # the earlier name still imports
    top = peptide_topology(3)
    rng = np.random.default_rng(0)
    R = np.cumsum(np.full((200, top.n_beads, 3), 0.08) + rng.normal(scale=0.05, size=(200, top.n_beads, 3)), axis=1)
    prior = CGPrior().fit(R, 300.0, top)
    assert prior.dihedral_quads_.tolist() == top.backbone_quads().tolist() and len(prior.dihedral_quads_) == 6
    assert len(CGPrior().fit(R[:, :5], 300.0, peptide_topology(1)).dihedral_quads_) == 0
