"""The landscape judge of the residual weight (cgdml.selection.judge_residual_weight): a learned force that
distorts the landscape is switched off, one that the prior needs is kept, and the fit records the choice."""
import numpy as np
import pytest

from cgdml.data import CGDataset
from cgdml.nystrom import NystromGDML
from cgdml.pipeline import CGEstimator
from cgdml.selection import JUDGE_WEIGHTS, judge_note, judge_residual_weight

RUN = dict(replicas=16, steps=2000, burn_in=400, save_every=20)


def _fit(dataset, dihedrals, weight=1.0):
    learner = NystromGDML(sigma=4.0, lam=0.01, n_inducing=200, progress=False)
    return CGEstimator(learner, prior_dihedrals=dihedrals, balance_basins=False, uncertainty=False,
                       residual_weight=weight, refine_pairs=False, progress=False).fit(dataset).model_


@pytest.fixture(scope="module")
def exact_toy(noisy_toy):
    """The toy's Boltzmann frames with their exact (noise-free) forces, 2000 of them."""
    dataset, exact = noisy_toy
    return CGDataset.from_arrays(dataset.coords[:2000], exact[:2000], bead_names=["C1", "C2", "C3", "C4"],
                                 bonds=[(0, 1), (1, 2), (2, 3)], temperature=dataset.temperature)


def test_a_distorting_residual_is_switched_off(exact_toy, numerical_forces):
    """Labels that disagree with the frames' distribution (the exact forces plus those of a spurious 3 kT
    cos(phi) term, as a residual fitted to noise can) give a learned force that moves the dihedral landscape;
    the prior's dihedral profile, taken from the positions, holds it, and the judge drops the learned force."""
    from cgdml.geometry import dihedral

    kT = 2.494338785445972 * exact_toy.temperature / 300.0
    spurious = lambda R: 3.0 * kT * np.cos(dihedral(R, (0, 1, 2, 3))[0])  # noqa: E731
    R = exact_toy.coords
    biased = CGDataset.from_arrays(R, exact_toy.forces + numerical_forces(spurious, R), bead_names=["C1", "C2", "C3", "C4"],
                                   bonds=[(0, 1), (1, 2), (2, 3)], temperature=exact_toy.temperature)
    model = _fit(biased, dihedrals=True)
    weight, record = judge_residual_weight(model, exact_toy, run=RUN)
    scores = {r["weight"]: r["js"] for r in record["candidates"]}
    assert [r["weight"] for r in record["candidates"]] == list(JUDGE_WEIGHTS)
    assert weight < 0.5 and scores[weight] < scores[1.0] / 2, scores
    assert record["winner"] == weight and record["run"] == RUN


def test_a_residual_the_prior_needs_is_kept(exact_toy):
    """Without dihedral profiles the prior lacks the toy's dihedral term (about 2 kT of free energy along phi);
    the learned force supplies it, and the judge keeps it rather than the prior alone."""
    model = _fit(exact_toy, dihedrals=False)
    weight, record = judge_residual_weight(model, exact_toy, run=RUN)
    scores = {r["weight"]: r["js"] for r in record["candidates"]}
    assert weight > 0.0 and scores[weight] < scores[0.0] / 2, scores


def test_the_fit_records_the_judged_weight(exact_toy):
    """``residual_weight="auto"`` judges and scales the learned force by the winner; a given weight skips the
    judge; the record says which, and a non-decisive judge gets its one-line note."""
    auto = _fit(exact_toy, dihedrals=False, weight="auto")
    judged = auto.info["residual_weight"]
    assert judged["winner"] in JUDGE_WEIGHTS and len(judged["candidates"]) == len(JUDGE_WEIGHTS)
    given = _fit(exact_toy, dihedrals=False, weight=0.5)
    assert given.info["residual_weight"] == dict(rule="given", winner=0.5)
    full = _fit(exact_toy, dihedrals=False, weight=1.0)
    R = exact_toy.coords[:50]
    np.testing.assert_allclose(given.gdml.predict_forces(R), 0.5 * full.gdml.predict_forces(R), rtol=1e-10,
                               atol=1e-9)
    tie = dict(judged, decisive=False)
    assert "not decisive" in judge_note(tie) and judge_note(dict(judged, decisive=True)) is None
    with pytest.raises(ValueError, match="residual_weight"):
        CGEstimator(residual_weight=1.5).validate_params()
