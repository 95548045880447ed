"""The public functions and estimators given the wrong kind of argument (issue 28 item 6): a one-line
:class:`cgdml._io.CgdmlTypeError` (a TypeError and a CgdmlError) that says what to pass, raised before any work,
never an AttributeError from deep inside."""
from pathlib import Path

import numpy as np
import pytest

from cgdml import CGDataset, CGEstimator, GDML, NystromGDML, TwoLayerGDML, fit_cg_model, simulate_model
from cgdml._io import CgdmlError, CgdmlTypeError
from cgdml.simulate import Simulation
from cgdml.simulate.integrators import make_integrator

R = np.random.default_rng(0).normal(size=(12, 4, 3))
F = np.random.default_rng(1).normal(size=(12, 4, 3))


@pytest.fixture(scope="module")
def dataset():
    return CGDataset.from_arrays(0.01 * R + np.arange(4)[None, :, None] * 0.2, F, bonds=[(0, 1), (1, 2), (2, 3)],
                                 temperature=300.0)


def test_the_error_is_a_type_error_and_a_cgdml_error():
    assert issubclass(CgdmlTypeError, TypeError) and issubclass(CgdmlTypeError, CgdmlError)


@pytest.mark.parametrize("call", [fit_cg_model, lambda d: CGEstimator().fit(d)], ids=["fit_cg_model", "CGEstimator"])
@pytest.mark.parametrize("given, hint", [(R, "CGDataset.from_arrays"), ((R, F), "CGDataset.from_arrays"),
                                         ("cg.npz", "CGDataset.load('cg.npz')"), (Path("cg.npz"), "CGDataset.load"),
                                         (None, "CGDataset.load(path)")])
def test_the_fit_takes_a_dataset(call, given, hint):
    with pytest.raises(CgdmlTypeError, match="takes a CGDataset, got") as info:
        call(given)
    assert hint in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("learner", [TwoLayerGDML, NystromGDML, GDML])
def test_a_learner_takes_arrays(learner, dataset):
    name = learner.__name__
    with pytest.raises(CgdmlTypeError, match=rf"{name}\.fit\(R, F\) takes .* not a CGDataset; .*fit_cg_model"):
        learner().fit(dataset)
    with pytest.raises(CgdmlTypeError, match="the forces F are missing"):
        learner().fit(R)
    with pytest.raises(CgdmlTypeError, match="R is str, not an array of numbers"):
        learner().fit("coords.npy", "forces.npy")
    with pytest.raises(CgdmlTypeError, match="F is ndarray of dtype object"):
        learner().fit(R, np.array([None] * 3, dtype=object))
    with pytest.raises(CgdmlTypeError, match="R is list, not an array of numbers"):
        learner().fit([[1.0, 2.0], [3.0]], F)                  # ragged


def test_a_learner_still_takes_nested_lists():
    learner = GDML(sigma=2.0, lam=1e-3).fit(R.tolist(), F.tolist())
    assert np.isfinite(learner.predict_forces(R[:2])).all()


@pytest.mark.parametrize("given", [R, None, 3, {"model": 1}])
def test_simulate_model_takes_a_model(given):
    with pytest.raises(CgdmlTypeError, match="simulate_model takes a CGModel or the path of a model file, got"):
        simulate_model(given, replicas=1, steps=2, save_every=1)


def test_simulation_takes_a_force_callable():
    step = make_integrator("langevin", 0.002, 1.0, 1, False)
    with pytest.raises(CgdmlTypeError, match="forces must be a callable .* got ndarray .*model.forces"):
        Simulation(np.zeros((1, 4, 3)), R[:1], step, masses=np.ones(4), temperature=300.0)
