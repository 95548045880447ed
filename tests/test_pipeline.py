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
    from cgdml.data import default_dataset_paths, shipped_data_dir

    assert shipped_data_dir().name == "_data"
    assert all(p.exists() for p in default_dataset_paths())
