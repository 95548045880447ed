"""Faster GDML models: single-precision evaluation (GDMLModel precision="float32": forces against float64, finite
differences of its own energy, energy conservation in NVE, the simulate option) and compression onto fewer
inducing configurations (cgdml.nystrom.compress)."""
import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.simulate import simulate


@pytest.fixture(scope="module")
def toy_model(noisy_toy):
    """A GDML model of the 4-bead toy, fitted here on 400 frames (so 400 training configurations)."""
    from cgdml.gdml import GDML

    ds, _ = noisy_toy
    return GDML(sigma=2.0, lam=0.3, relative_lam=True).fit(ds.coords[:400], ds.forces[:400]).model_, ds


@pytest.fixture(scope="module")
def ala2_model(write_small_model, tmp_path_factory):
    """The small alanine-dipeptide CG model (prior + GDML on 60 frames)."""
    from cgdml.model import CGModel

    return CGModel.load(write_small_model(tmp_path_factory.mktemp("precision") / "model.npz"))


def relative_rms(a, b):
    return np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2))


def test_float32_forces_match_float64(toy_model, ala2_model):
    """On two molecules: float32 forces agree with float64 to 1e-4 relative RMS (measured ~1e-6 to 1e-5), worst
    component within 1e-3 of the force RMS, and differ from them (the single-precision path really ran)."""
    gdml, ds = toy_model
    rng = np.random.default_rng(1)
    for model, R in ((gdml, ds.coords[2000:2100]),
                     (ala2_model.gdml, ala2_model.train_coords_sample + rng.normal(0, 0.003, (40, 5, 3)))):
        assert model.precision == "float64"
        F64 = model.predict_forces(R)
        F32 = model.predict_forces(R, precision="float32")
        rms = np.sqrt(np.mean(F64 ** 2))
        assert relative_rms(F32, F64) < 1e-4
        assert np.abs(F32 - F64).max() < 1e-3 * rms
        assert not np.array_equal(F32, F64)
        E64, G64 = model.predict(R)
        E32, G32 = model.with_precision("float32").predict(R)      # the model's own default
        assert np.array_equal(G32, F32) and np.array_equal(G64, F64)
        assert np.abs((E32 - E64) - np.mean(E32 - E64)).max() < 1e-4 * np.std(E64)


def test_float32_forces_are_minus_the_gradient_of_its_energy(toy_model, ala2_model, numerical_forces):
    """Finite differences of the float32 energy give the float32 forces as well as float64's do, up to the float32
    rounding of the energy (~1e-6 relative; h = 3e-4 nm keeps both it and the truncation ~1e-3 of the force
    scale); the CG model's energy_forces follows its GDML term's precision."""
    gdml, ds = toy_model
    R = ds.coords[3000:3005]
    err = {}
    for p in ("float64", "float32"):
        model = gdml.with_precision(p)
        F = model.predict_forces(R)
        F_num = numerical_forces(lambda X: model.predict(X)[0], R, h=3e-4)
        err[p] = np.abs(F_num - F).max() / np.sqrt(np.mean(F ** 2))
    assert err["float64"] < 1e-3 and err["float32"] < err["float64"] + 2e-3, err
    model = ala2_model.with_precision("float32")
    assert model.precision == "float32" and ala2_model.precision == "float64"     # a copy; the original unchanged
    R = model.train_coords_sample[:4]
    E, F = model.energy_forces(R)
    assert np.array_equal(F, model.forces(R))
    assert np.allclose(F - ala2_model.forces(R), model.gdml.predict(R)[1] - ala2_model.gdml.predict(R)[1], rtol=0,
                       atol=1e-9 * np.abs(F).max())
    assert np.array_equal(model.slow_forces(R), ala2_model.gdml.predict_forces(R, precision="float32"))


def _nve_drift(model, x0):
    """Energy drift of velocity Verlet (BAOAB at friction 0, dt 1 fs) over 4000 steps: |mean E over the last 200
    saved frames - over the first 200| per replica, in units of the kinetic energy scale (3 n_beads / 2) kT."""
    res = simulate(model.forces, x0, masses=model.masses, temperature=model.temperature, dt=0.001, n_steps=4000,
                   save_every=10, integrator="langevin", friction=0.0, save_velocities=True, seed=2,
                   progress=False)
    assert res.alive.all()
    x = res.frames.astype(np.float64)
    v = res.velocity_frames.astype(np.float64)
    n, r = x.shape[:2]
    pot = model.with_precision("float64").energy_forces(x.reshape(n * r, *x.shape[2:]))[0].reshape(n, r)
    E = 0.5 * np.sum(model.masses[None, None, :, None] * v ** 2, axis=(2, 3)) + pot
    scale = 1.5 * x.shape[2] * 2.494                                  # (3 n_beads / 2) kT at 300 K, kJ/mol
    return np.abs(E[-200:].mean(axis=0) - E[:200].mean(axis=0)) / scale


def test_float32_conserves_energy_like_float64(ala2_model):
    """NVE on the alanine-dipeptide model: the float32 force's energy drift is as small as float64's (measured
    both ~1e-4 of the kinetic energy scale; a force that is not a gradient drifts steadily)."""
    x0 = ala2_model.train_coords_sample[:8]
    d64 = _nve_drift(ala2_model, x0)
    d32 = _nve_drift(ala2_model.with_precision("float32"), x0)
    assert d64.max() < 0.01
    assert d32.max() < max(2.0 * d64.max(), 1e-3)


def test_precision_is_checked(ala2_model):
    with pytest.raises(CgdmlError, match="precision must be one of"):
        ala2_model.with_precision("float16")
    with pytest.raises(CgdmlError, match="precision must be one of"):
        ala2_model.gdml.predict_forces(ala2_model.train_coords_sample[:1], precision="half")


def test_simulate_precision_option(write_small_model, tmp_path):
    """--precision float32: recorded in the sidecar, a run close to the float64 one over a short stretch, and a
    checkpoint of one precision is not resumed by the other."""
    import json

    import mdtraj as md

    from cgdml.simulate.__main__ import main

    model_file = write_small_model(tmp_path / "m.npz")
    args = ["--replicas", "4", "--steps", "40", "--save-every", "10", "--burn-in", "0", "--no-progress"]
    outs = {}
    for p in ("float64", "float32"):
        out = tmp_path / f"{p}.h5"
        assert main([str(model_file), "-o", str(out), "--precision", p] + args) == 0
        assert json.loads(out.with_suffix(".json").read_text())["settings"]["precision"] == p
        outs[p] = md.load(str(out)).xyz
    assert np.abs(outs["float32"] - outs["float64"]).max() < 1e-4           # nm, after 40 steps
    with pytest.raises(CgdmlError, match="--precision"):
        main([str(model_file), "-o", str(tmp_path / "x.h5"), "--precision", "float16"] + args)


def test_compress_keeps_the_force_field(toy_model):
    """A 400-configuration toy model refitted onto 200 inducing configurations from its own forces at 2000 frames:
    held-out forces within a few % of the original's (more inducing configurations, closer), energies equal up to
    a constant."""
    from cgdml.nystrom import compress

    gdml, ds = toy_model
    R, held = ds.coords[:2000], ds.coords[3000:3300]
    F = gdml.predict_forces(held)
    err = {}
    for m in (50, 200):
        small = compress(gdml, R, n_inducing=m)
        assert small.n_train == m and small.sigma == gdml.sigma and np.array_equal(small.quads, gdml.quads)
        err[m] = relative_rms(small.predict_forces(held), F)
    assert err[200] < 0.05 and err[200] < err[50] / 2, err
    E = gdml.predict(held)[0]
    dE = small.predict(held)[0] - E
    assert np.abs(dE.mean()) < 0.05 * np.std(E) and np.std(dE) < 0.05 * np.std(E)


def test_compress_a_cg_model(ala2_model, tmp_path):
    """A CG model keeps its prior, system and sample, gains the compressed term and a fit record, and saves."""
    from cgdml.mapping import load_default_cg_dataset
    from cgdml.model import CGModel
    from cgdml.nystrom import compress

    R = load_default_cg_dataset(stride=20).coords[:1500]
    small = compress(ala2_model, R, n_inducing=30)
    assert small.gdml.n_train == 30 and ala2_model.gdml.n_train == 60 and small.prior is ala2_model.prior
    rec = small.info["compressed"]
    assert rec["from_configurations"] == 60 and rec["n_inducing"] == 30 and rec["n_frames"] == len(R)
    X = R[::50]
    # the record's difference is the GDML forces' over R (every frame: fewer than check_frames); 60 configurations
    # at sigma 0.4 overlap little, so half of them cannot carry the field: the accuracy test is the toy's
    diff = relative_rms(small.gdml.predict_forces(R, "float64"), ala2_model.gdml.predict_forces(R, "float64"))
    assert 0 < rec["relative_rms_difference"] == pytest.approx(diff, rel=1e-9)
    assert np.allclose(small.forces(X) - ala2_model.forces(X),
                       small.gdml.predict_forces(X) - ala2_model.gdml.predict_forces(X), atol=1e-6)
    small.save(tmp_path / "small.npz")
    again = CGModel.load(tmp_path / "small.npz")
    assert again.gdml.n_train == 30 and again.info["compressed"] == rec
    with pytest.raises(CgdmlError, match="n_inducing"):
        compress(ala2_model, R, n_inducing=60)
    with pytest.raises(CgdmlError, match="compress"):
        compress(ala2_model, R[:, :4])
