"""The force uncertainty of a fitted CG model (issue 25, item 1): every learner's fit carries a force posterior
and a guard threshold; they survive save/load; an old model file (no ``uncertainty/`` fields) loads without
them and says so; the uncertainty is small on the training frames and larger at an unsampled torsion."""
import numpy as np
import pytest

import cgdml
from cgdml._io import CgdmlError
from cgdml.geometry import dihedral
from cgdml.model import CGModel
from cgdml.pipeline import THRESHOLD_MARGIN, THRESHOLD_QUANTILE

# tiny fits (seconds) on 500 frames of the shipped alanine dipeptide (5 beads: C N CA C N; phi = 0-1-2-3)
TINY = {"single": dict(n_frames=60, sigma=3.0, lam=1.0),
        "nystrom": dict(n_inducing=20, sigma=[3.0], lam=[1.0]),
        "two-layer": dict(n_models=2, batch_size=100, mean_set_size=60, sigma1=[3.0], lam1=[1.0], sigma2=[3.0],
                          lam2=[1e-2], cv_models=1, cv_mean_set_size=60, cv_holdout=100)}


@pytest.fixture(scope="module")
def dataset():
    return cgdml.load_default_cg_dataset(stride=40)


@pytest.fixture(scope="module")
def models(dataset):
    return {method: cgdml.fit_cg_model(dataset, method, seed=1, progress=False, balance_basins=False, **params)
            for method, params in TINY.items()}


def rotate_phi(R, degrees):
    """R with phi (beads 0-1-2-3) set to ``degrees`` by turning beads 3 and 4 about the 1-2 bond (psi, bonds and
    angles unchanged)."""
    R = np.array(R, dtype=np.float64)
    turn = np.radians(degrees) - dihedral(R, (0, 1, 2, 3))[0]
    axis = R[:, 2] - R[:, 1]
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    for b in (3, 4):
        v = R[:, b] - R[:, 2]
        c, s = np.cos(turn)[:, None], np.sin(turn)[:, None]
        along = np.sum(axis * v, axis=1, keepdims=True) * axis
        R[:, b] = R[:, 2] + along + c * (v - along) + s * np.cross(axis, v)   # Rodrigues
    return R


@pytest.mark.parametrize("method", list(TINY))
def test_uncertainty_is_small_on_the_data_and_larger_at_an_unsampled_torsion(models, dataset, method):
    model = models[method]
    assert model.has_uncertainty and model.uncertainty.n_beads == 5
    R = dataset.coords[::5]
    assert np.degrees(dihedral(dataset.coords, (0, 1, 2, 3))[0]).max() < 0     # phi > 0 is never sampled
    far = rotate_phi(R, 90.0)
    np.testing.assert_allclose(dihedral(far, (1, 2, 3, 4))[0], dihedral(R, (1, 2, 3, 4))[0], atol=1e-9)
    u_in, u_far = model.force_uncertainty(R), model.force_uncertainty(far)
    assert u_in.shape == (len(R),) and np.isfinite(u_in).all() and (u_in > 0).all()
    assert np.median(u_far) > 1.5 * np.median(u_in)
    # the std is the square root of the posterior variance, never above the prior's (the far-away limit)
    np.testing.assert_allclose(u_in ** 2, model.uncertainty.force_variance(R), rtol=1e-12)
    assert (u_far ** 2 <= model.uncertainty.prior_variance(far) * (1 + 1e-9)).all()
    # per bead: (n, n_beads), and the frame value is their RMS; batched like forces
    per_bead = model.force_uncertainty(R, per_bead=True)
    assert per_bead.shape == (len(R), 5)
    np.testing.assert_allclose(np.sqrt(np.mean(per_bead ** 2, axis=1)), u_in, rtol=1e-10)
    np.testing.assert_allclose(model.force_uncertainty(R[3]), u_in[3:4], rtol=1e-12)
    # the guard threshold: the recorded rule applied to the training frames, above almost all of them
    rule = model.info["uncertainty"]["threshold_rule"]
    assert rule["quantile"] == THRESHOLD_QUANTILE and rule["margin"] == THRESHOLD_MARGIN
    assert model.uncertainty_threshold == pytest.approx(THRESHOLD_MARGIN * rule["quantile_value"])
    assert model.info["uncertainty"]["threshold"] == pytest.approx(model.uncertainty_threshold)
    assert np.mean(model.force_uncertainty(dataset.coords) > model.uncertainty_threshold) < 0.01
    assert model.uncertainty_threshold < np.quantile(u_far, 0.5)


def test_posterior_is_of_what_each_learner_was_fitted_to(models):
    """single: its training frames, exactly; nystrom: its own inducing configurations; two-layer: the final layer's
    mean-force set with its lambda."""
    single, nystrom, two = (models[m] for m in TINY)
    np.testing.assert_array_equal(single.uncertainty.inducing_descriptors, single.gdml.train_descriptors)
    assert single.uncertainty.lam == pytest.approx(single.info["uncertainty"]["lam"])
    assert nystrom.uncertainty.info["n_inducing"] == 20 and nystrom.uncertainty.info["n_frames"] == 500
    np.testing.assert_array_equal(nystrom.uncertainty.inducing_descriptors, nystrom.gdml.train_descriptors)
    assert two.uncertainty.info["n_frames"] == 60
    assert two.uncertainty.lam == pytest.approx(two.info["chosen"]["lam2_absolute"])


def test_save_load_round_trip(models, dataset, tmp_path):
    model = models["nystrom"]
    model.save(tmp_path / "m.npz")
    back = CGModel.load(tmp_path / "m.npz")
    assert back.uncertainty_threshold == model.uncertainty_threshold
    R = dataset.coords[:20]
    np.testing.assert_array_equal(back.force_uncertainty(R), model.force_uncertainty(R))
    np.testing.assert_array_equal(back.uncertainty.sample_coefficients, model.uncertainty.sample_coefficients)
    assert back.describe_uncertainty() == model.describe_uncertainty()
    assert "guard threshold" in back.describe_uncertainty()


def test_an_old_model_file_loads_without_uncertainty(models, dataset, tmp_path):
    models["single"].save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        old = {k: z[k] for k in z.files if not k.startswith("uncertainty/")}
    assert len(old) < len(np.load(tmp_path / "new.npz").files)
    np.savez(tmp_path / "old.npz", **old)
    model = CGModel.load(tmp_path / "old.npz")
    assert model.uncertainty is None and model.uncertainty_threshold is None and not model.has_uncertainty
    np.testing.assert_array_equal(model.forces(dataset.coords[:5]), models["single"].forces(dataset.coords[:5]))
    with pytest.raises(CgdmlError, match="has no force uncertainty.*refit") as err:
        model.force_uncertainty(dataset.coords[:5])
    assert "\n" not in str(err.value)
    assert "no force uncertainty" in model.describe_uncertainty()


def test_a_damaged_or_mismatched_posterior_is_a_clean_error(models, tmp_path):
    models["single"].save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = dict(z)
    bad = dict(arrays, **{"uncertainty/factor": arrays["uncertainty/factor"][:-1]})
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(CgdmlError, match="bad.npz.*uncertainty/factor"):
        CGModel.load(tmp_path / "bad.npz")
    other = dict(arrays, **{"uncertainty/threshold": np.float64(-1.0)})
    np.savez(tmp_path / "neg.npz", **other)
    with pytest.raises(CgdmlError, match="neg.npz.*uncertainty/threshold"):
        CGModel.load(tmp_path / "neg.npz")


def test_uncertainty_false_skips_it(dataset):
    model = cgdml.fit_cg_model(dataset, "single", uncertainty=False, seed=1, progress=False, balance_basins=False,
                               **TINY["single"])
    assert model.uncertainty is None and "uncertainty" not in model.info


def test_the_fit_command_computes_the_same_posterior(dataset, tmp_path, capsys):
    """python -m cgdml.fit: the posterior and threshold of the Python fit, array for array, and one line on them;
    --no-uncertainty (the estimator's ``uncertainty``) skips it."""
    from cgdml.fit import main as fit_main

    dataset.save(tmp_path / "cg.npz")
    saved = cgdml.CGDataset.load(tmp_path / "cg.npz")              # what the command reads (float32)
    flags = [str(tmp_path / "cg.npz"), "--method", "single", "--n-frames", "60", "--sigma", "3", "--lam", "1",
             "--seed", "1", "--no-balance-basins", "--no-progress"]
    assert fit_main(flags + ["-o", str(tmp_path / "m.npz")]) == 0
    assert "force uncertainty: DTC posterior on 60 inducing configurations" in capsys.readouterr().out
    cli = CGModel.load(tmp_path / "m.npz")
    model = cgdml.fit_cg_model(saved, "single", seed=1, progress=False, balance_basins=False, **TINY["single"])
    theirs = cli.uncertainty.to_arrays()
    for name, value in model.uncertainty.to_arrays().items():
        if name != "info_json":                                    # (it holds the fit's timings)
            np.testing.assert_array_equal(theirs[name], value, err_msg=name)
    assert cli.uncertainty_threshold == model.uncertainty_threshold
    assert fit_main(flags + ["--no-uncertainty", "-o", str(tmp_path / "n.npz")]) == 0
    assert "no force uncertainty" in capsys.readouterr().out
    assert CGModel.load(tmp_path / "n.npz").uncertainty is None


# ----------------------------------------------------------------------------------------- the simulation guard
RUN = dict(replicas=4, steps=200, save_every=10, burn_in=0, seed=3, progress=False, guard_every=50)


def flagging(model, from_call=3, rows=(0, 2)):
    """A copy of ``model`` whose force_uncertainty reports 1e9 for ``rows`` at its ``from_call``-th call (call k
    checks step (k - 1) guard_every); ``seen`` keeps the configurations it was given."""
    import copy

    fake, real, seen = copy.copy(model), model.force_uncertainty, []

    def force_uncertainty(R, per_bead=False):
        seen.append(np.array(R))
        u = real(R)
        if len(seen) == from_call:
            u[list(rows)] = 1e9
        return u

    fake.force_uncertainty, fake.seen = force_uncertainty, seen
    return fake


def test_guard_warns_with_step_frame_and_value_and_leaves_the_run_alone(models):
    from cgdml.simulate import simulate_model

    model = flagging(models["single"])
    with pytest.warns(UserWarning, match=r"2 of 4 replicas crossed the force-uncertainty threshold .* first at "
                                         r"step 100"):
        run = simulate_model(model, **RUN)
    assert len(model.seen) == 5                                         # steps 0, 50, 100, 150, 200
    events = run.guard_events()
    assert [(e["replica"], e["step"], e["stopped"]) for e in events] == [(0, 100, False), (2, 100, False)]
    assert all(e["value"] == 1e9 and e["reason"] == "force uncertainty" for e in events)
    xyz = run.coordinates()
    for e in events:                                    # the frame is the configuration the guard saw
        assert e["frame"] == 20 * e["replica"] + 9 and e["time_ps"] == pytest.approx(100 * run.dt)
        np.testing.assert_array_equal(xyz[e["frame"]], model.seen[2][e["replica"]].astype(np.float32))
    side = run.sidecar("t.h5")
    assert side["events"] == events and side["frames_per_replica"] == [20] * 4
    assert side["settings"]["guard"] == {"action": "warn", "every": 50, "threshold": models["single"].uncertainty_threshold,
                                         "threshold_from": "the model"}
    # warn changes nothing in the trajectory: the same arrays as an unguarded run
    off = simulate_model(models["single"], **dict(RUN, guard="off"))
    np.testing.assert_array_equal(off.coordinates(), xyz)
    assert off.events() == [] and off.settings["guard"] == {"action": "off"}


def test_guard_stops_a_replica_or_the_run(models):
    from cgdml.simulate import simulate_model

    with pytest.warns(UserWarning, match="2 of 4 replicas crossed"):
        run = simulate_model(flagging(models["single"]), **dict(RUN, guard="stop-replica"))
    assert run.result.stopped_at.tolist() == [100, -1, 100, -1] and run.result.alive.tolist() == [0, 1, 0, 1]
    assert run.frames_per_replica().tolist() == [9, 20, 9, 20]           # frames up to step 90 kept
    assert [(e["replica"], e["step"], e["frame"]) for e in run.guard_events()] == [(0, 100, 8), (2, 100, 37)]
    assert np.isfinite(run.coordinates()).all()

    with pytest.warns(UserWarning, match="the run stopped there"):
        run = simulate_model(flagging(models["single"]), **dict(RUN, guard="stop-run"))
    assert run.result.halted["step"] == 100 and run.frames_per_replica().tolist() == [9] * 4
    assert [(e["replica"], e["frame"]) for e in run.guard_events()] == [(0, 8), (2, 26)]


def test_replicas_started_at_an_unsampled_torsion_are_flagged(models, dataset):
    """With the model's own threshold: replicas that start at phi = +90 degrees (never sampled) are stopped at
    step 0, replicas started on training frames run on."""
    from cgdml.simulate import simulate_model
    from cgdml.simulate.model_run import start_configurations

    for method in ("nystrom", "two-layer"):
        model = models[method]
        pool = np.concatenate([dataset.coords[:10], rotate_phi(dataset.coords[:10], 90.0)])
        kw = dict(replicas=8, steps=20, save_every=10, burn_in=0, seed=1, progress=False, guard_every=10,
                  guard="stop-replica", start=pool)
        far = dihedral(start_configurations(model, 8, seed=1, start=pool), (0, 1, 2, 3))[0] > 0
        assert 0 < far.sum() < 8
        with pytest.warns(UserWarning, match=f"{far.sum()} of 8 replicas crossed"):
            run = simulate_model(model, **kw)
        stopped = {e["replica"] for e in run.guard_events() if e["step"] == 0}
        assert stopped == set(np.flatnonzero(far)) and run.result.alive.tolist() == (~far).tolist(), method


def test_a_model_without_uncertainty_runs_unguarded_and_says_so(models, recwarn):
    import copy

    from cgdml.simulate import simulate_model

    old = copy.copy(models["single"])
    old.uncertainty = old.uncertainty_threshold = None
    run = simulate_model(old, **RUN)
    said = [w for w in recwarn if "force uncertainty" in str(w.message)]
    assert len(said) == 1 and "ran without the uncertainty guard" in str(said[0].message)
    assert "\n" not in str(said[0].message)
    assert run.settings["guard"]["action"] == "off" and run.events() == []
    with pytest.raises(CgdmlError, match="guard must be one of"):
        simulate_model(old, **dict(RUN, guard="loud"))
    with pytest.raises(CgdmlError, match="guard_threshold must be a number > 0"):
        simulate_model(old, **dict(RUN, guard_threshold=-1.0))
    with pytest.raises(CgdmlError, match="guard_every must be an integer"):
        simulate_model(old, **dict(RUN, guard_every=0))


def test_the_command_guards_as_python_does(models, tmp_path, capsys):
    """python -m cgdml.simulate --guard-threshold: the same arrays and events as simulate_model, the count in its
    summary line; --guard off: no events."""
    import json

    import mdtraj as md

    from cgdml.simulate import simulate_model
    from cgdml.simulate.__main__ import main

    path = tmp_path / "m.npz"
    models["single"].save(path)
    threshold = float(np.median(models["single"].force_uncertainty(models["single"].train_coords_sample)))
    flags = ["--replicas", "4", "--steps", "200", "--save-every", "10", "--burn-in", "50", "--seed", "3",
             "--guard-every", "50", "--guard-threshold", str(threshold), "--no-progress"]
    with pytest.warns(UserWarning, match="replicas crossed the force-uncertainty threshold"):
        assert main([str(path), "-o", str(tmp_path / "t.h5")] + flags) == 0
    assert "above the uncertainty threshold" in capsys.readouterr().out
    side = json.loads((tmp_path / "t.h5").with_suffix(".json").read_text())
    with pytest.warns(UserWarning, match="replicas crossed"):
        run = simulate_model(path, replicas=4, steps=200, save_every=10, burn_in=50, seed=3, guard_every=50,
                             guard_threshold=threshold, progress=False)
    assert np.array_equal(md.load(str(tmp_path / "t.h5")).xyz, run.coordinates())
    assert side["events"] == json.loads(json.dumps(run.events())) and run.guard_events()
    assert side["settings"]["guard"]["threshold_from"] == "the user"
    assert main([str(path), "-o", str(tmp_path / "off.h5"), "--guard", "off"] + flags) == 0
    assert json.loads((tmp_path / "off.h5").with_suffix(".json").read_text())["events"] == []
    with pytest.raises(CgdmlError, match="--guard-threshold"):
        main([str(path), "-o", str(tmp_path / "bad.h5"), "--guard-threshold", "0", "--no-progress"])
