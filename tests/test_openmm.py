"""cgdml models inside OpenMM (cgdml.openmm, python -m cgdml.export): the System's energies and forces are the
model's, its Langevin dynamics samples the model's distribution, and the exported files load back.

The toy model is fitted here: a six-bead chain sampled by BAOAB on an analytic force field (harmonic bonds and
angles, one cosine term per dihedral), fitted as a harmonic prior plus GDML, plus a dihedral offset term.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

openmm = pytest.importorskip("openmm")
if not hasattr(openmm, "PythonForce"):
    pytest.skip("this OpenMM has no PythonForce", allow_module_level=True)
import openmm.app as app  # noqa: E402
import openmm.unit as unit  # noqa: E402

from cgdml.basins import DihedralOffsets  # noqa: E402
from cgdml.data import CGDataset  # noqa: E402
from cgdml.gdml import GDML  # noqa: E402
from cgdml.geometry import bond_lengths, dihedral, dihedrals  # noqa: E402
from cgdml.model import CGModel  # noqa: E402
from cgdml.openmm import GDML_GROUP, OFFSETS_GROUP, PRIOR_GROUP, to_openmm, write_openmm  # noqa: E402
from cgdml.prior import CGPrior  # noqa: E402
from cgdml.simulate import simulate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:no CG bonds given")  # the toy is a chain in bead order

ROOT = Path(__file__).resolve().parents[1]
T = 300.0
N_BEADS = 6
BOND, THETA = 0.38, 1.9           # nm, rad
QUADS = np.array([(i, i + 1, i + 2, i + 3) for i in range(N_BEADS - 3)])
K_PHI, PHI0 = np.array([3.0, 2.0, 3.0]), np.array([1.0, -2.0, 0.5])  # U = k (1 + cos(phi - phi0)), kJ/mol, rad
OFFSET_QUAD = (1, 2, 3, 4)
OFFSET_ARCS, OFFSET_DELTAS = [(-2.5, 2.0), (0.5, 2.0)], [0.0, 2.5]  # rad; kJ/mol (1 kT), mirror-asymmetric
DT, FRICTION = 0.004, 1.0         # ps, 1/ps


def truth_forces(R):
    """Forces (n, 6, 3) kJ/mol/nm of the analytic toy force field at R (n, 6, 3) nm."""
    n = N_BEADS
    bonds = CGPrior.from_arrays(dict(
        repulsion=False, temperature_=T, repulsion_eps_=0.0, max_bond_length_=1.0,
        bond_pairs_=np.array([(i, i + 1) for i in range(n - 1)]), bond_r0_=np.full(n - 1, BOND),
        bond_k_=np.full(n - 1, 3000.0), angle_triples_=np.array([(i, i + 1, i + 2) for i in range(n - 2)]),
        angle_theta0_=np.full(n - 2, THETA), angle_k_=np.full(n - 2, 60.0),
        repulsion_pairs_=np.zeros((0, 2), dtype=np.int64), repulsion_rmin_=np.zeros(0)))
    F = bonds.forces(R)
    angle, grad = dihedrals(R, QUADS)
    dU = -K_PHI * np.sin(angle - PHI0)
    for t, q in enumerate(QUADS):
        F[:, q] -= dU[:, t, None, None] * grad[:, t]
    return F


def zigzag():
    """A start chain (6, 3) nm: bonds BOND, angles near THETA, dihedrals near 160 degrees."""
    x = np.zeros((N_BEADS, 3))
    for i in range(1, N_BEADS):
        step = np.array([np.sin(THETA / 2), (-1) ** i * np.cos(THETA / 2), 0.1 * i])
        x[i] = x[i - 1] + BOND * step / np.linalg.norm(step)
    return x


@pytest.fixture(scope="module")
def toy():
    """(CGModel, CGDataset) of the toy chain: 3000 equilibrium frames (20 replicas, 10 ps burn-in, 30 ps),
    a prior with dihedral profiles, GDML on 300 of them, one dihedral offset term."""
    res = simulate(truth_forces, np.repeat(zigzag()[None], 20, axis=0), masses=np.full(N_BEADS, 12.011),
                   temperature=T, dt=DT, n_steps=10000, save_every=50, integrator="langevin", seed=1,
                   progress=False)
    R = res.frames[50:].reshape(-1, N_BEADS, 3).astype(np.float64)
    ds = CGDataset.from_arrays(R, truth_forces(R), bead_names=[f"C{i + 1}" for i in range(N_BEADS)], temperature=T)
    prior = CGPrior(repulsion=True, dihedrals=True).fit(ds.coords, T)
    pick = np.random.default_rng(0).choice(ds.n_frames, size=300, replace=False)
    gdml = GDML(sigma=4.0, lam=1e-3, relative_lam=True).fit(
        ds.coords[pick], prior.residual_forces(ds.coords[pick], ds.forces[pick])).model_
    offsets = DihedralOffsets.from_terms([(OFFSET_QUAD, OFFSET_ARCS, OFFSET_DELTAS)])
    model = CGModel(gdml, prior, ds.system, ds.coords[::100], offsets=offsets)
    return model, ds


def openmm_energy_forces(system, R, groups=-1):
    """Energies (n,) kJ/mol and forces (n, n_beads, 3) kJ/mol/nm of ``system`` at R (n, n_beads, 3) nm."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    E, F = np.empty(len(R)), np.empty(R.shape)
    for i, x in enumerate(R):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True, groups=groups)
        E[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        F[i] = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return E, F


def test_system_energies_and_forces_are_the_models(toy):
    model, ds = toy
    system, topology = to_openmm(model)
    assert system.getNumParticles() == topology.getNumAtoms() == N_BEADS
    assert topology.getNumBonds() == N_BEADS - 1
    assert np.allclose([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(N_BEADS)], model.masses)
    assert system.getNumConstraints() == 0 and not system.usesPeriodicBoundaryConditions()
    R = ds.coords[np.linspace(0, ds.n_frames - 1, 100).astype(int)]
    E, F = model.energy_forces(R)
    E_mm, F_mm = openmm_energy_forces(system, R)
    # GDML energies carry the model's offset: the System's energies are the model's, without a free constant
    assert np.abs(E_mm - E).max() <= 1e-6 * np.abs(E).max()
    assert np.abs(F_mm - F).max() <= 1e-6 * np.abs(F).max()
    # each part in its force group
    e_prior, f_prior = model.prior.energy_forces(R)
    e_gdml, f_gdml = model.gdml.predict(R)
    for group, (e, f) in ((PRIOR_GROUP, (e_prior, f_prior)), (GDML_GROUP, (e_gdml, f_gdml))):
        e_mm, f_mm = openmm_energy_forces(system, R, groups={group})
        assert np.abs(e_mm - e).max() <= 1e-6 * np.abs(E).max()
        assert np.abs(f_mm - f).max() <= 1e-6 * np.abs(F).max()


def test_offsets_force_matches_and_uses_the_same_dihedral_sign(toy):
    model, _ = toy
    rng = np.random.default_rng(3)
    R = 0.3 * rng.standard_normal((300, N_BEADS, 3))   # dihedrals all around the circle, ramps included
    angle = dihedral(R, OFFSET_QUAD)[0]
    assert (angle > 0.6).sum() > 30 and (angle < -0.6).sum() > 30
    E, F = model.offsets.energy_forces(R)
    # the term is not mirror-symmetric: the opposite dihedral sign would give other energies
    mirrored = model.offsets.energy_forces(R * np.array([1.0, 1.0, -1.0]))[0]
    assert np.abs(mirrored - E).max() > 0.5 * max(OFFSET_DELTAS)
    exact, _ = to_openmm(model)
    assert sum(isinstance(f, openmm.CustomTorsionForce) for f in exact.getForces()) == 1
    E_mm, F_mm = openmm_energy_forces(exact, R, groups={OFFSETS_GROUP})
    assert np.abs(E_mm - E).max() < 1e-9 * max(OFFSET_DELTAS)
    assert np.abs(F_mm - F).max() < 1e-9 * np.abs(F).max()
    # tabulated: a periodic spline through 3600 samples of the profile, off only near the ends of the ramps
    table, _ = to_openmm(model, n_table=3600)
    assert sum(isinstance(f, openmm.CustomCompoundBondForce) and f.getForceGroup() == OFFSETS_GROUP
               for f in table.getForces()) == 1
    E_mm, F_mm = openmm_energy_forces(table, R, groups={OFFSETS_GROUP})
    assert np.abs(E_mm - E).max() < 1e-6 * max(OFFSET_DELTAS)
    assert np.abs(F_mm - F).max() < 1e-3 * np.abs(F).max()


def integrated_time(x, c=5.0):
    """Integrated autocorrelation time (in samples, at least 1) of the series x (n_series, n), with Sokal's
    automatic window; an oscillating autocorrelation (a bond) counts as uncorrelated."""
    x = np.atleast_2d(x) - np.mean(x)
    n = x.shape[1]
    f = np.fft.rfft(x, 2 * n, axis=1)
    acf = np.fft.irfft(f * np.conj(f), axis=1)[:, :n].mean(0)
    acf /= acf[0]
    tau = 2.0 * np.cumsum(acf) - 1.0
    window = np.flatnonzero(np.arange(n) >= c * tau)
    return max(1.0, float(tau[window[0]] if len(window) else tau[-1]))


def observables(frames):
    """Bond 2-3 length (nm) and the offset dihedral (rad) of frames (..., n_beads, 3), shaped frames[..., 0, 0]."""
    shape = frames.shape[:-2]
    R = frames.reshape(-1, N_BEADS, 3).astype(np.float64)
    return bond_lengths(R, [(2, 3)])[:, 0].reshape(shape), dihedral(R, OFFSET_QUAD)[0].reshape(shape)


def decorrelated(series):
    """Every ceil(2 tau)-th sample of each series (n_series, n): about independent samples, and the stride.

    tau is the longest correlation time of the series, its squared deviation (a bond's oscillation hides its
    slowly decorrelating amplitude) and its indicators at the quartiles (what the KS statistic counts).
    """
    features = [series, (series - series.mean()) ** 2]
    features += [(series < q).astype(float) for q in np.quantile(series, [0.25, 0.5, 0.75])]
    stride = int(np.ceil(2.0 * max(integrated_time(f) for f in features)))
    return series[:, ::stride].ravel(), stride


def run_openmm(system, x0, n_saved, save_every, seed):
    """Frames (n_saved, n_beads, 3) nm of a LangevinMiddleIntegrator run (Reference platform) from x0 (n_beads, 3)."""
    integrator = openmm.LangevinMiddleIntegrator(T * unit.kelvin, FRICTION / unit.picosecond, DT * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x0)
    context.setVelocitiesToTemperature(T * unit.kelvin, seed)
    frames = np.empty((n_saved, len(x0), 3))
    for k in range(n_saved):
        integrator.step(save_every)
        frames[k] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return frames


def test_openmm_langevin_samples_the_simulate_distribution(toy):
    """Both sides start from the model's own equilibrium: 64 BAOAB replicas (cgdml.simulate) relax for 20 ps from
    the training sample and then give the reference (20 ps each); four OpenMM runs of 100 ps start from four
    relaxed replicas. The dihedral's basins exchange within a few ps: ~70-140 OpenMM and ~400 reference samples.
    (Other seeds gave p 0.1-0.8; with the offsets' dihedral sign flipped the dihedral's p is ~1e-9.)"""
    model, _ = toy
    save_every, burn = 10, 500   # steps per saved frame; saved frames dropped (20 ps)
    x0 = model.train_coords_sample[np.arange(64) % len(model.train_coords_sample)]
    ref = simulate(model.forces, x0, masses=model.masses, temperature=T, dt=DT, n_steps=2 * burn * save_every,
                   save_every=save_every, integrator="langevin", friction=FRICTION, seed=5, progress=False)
    system = to_openmm(model)[0]
    frames = np.stack([run_openmm(system, ref.frames[burn - 1, r].astype(np.float64), 2500, save_every, seed=7 + r)
                       for r in range(4)])
    for mm, sim, name in zip(observables(frames), observables(ref.frames[burn:].transpose(1, 0, 2, 3)),
                             ("bond length", "dihedral")):
        (a, stride_a), (b, stride_b) = decorrelated(mm), decorrelated(sim)
        assert len(a) >= 50 and len(b) >= 200, (name, len(a), stride_a, len(b), stride_b)
        p = ks_2samp(a, b).pvalue
        assert p > 0.01, f"{name}: KS p = {p:.3g} ({len(a)} OpenMM and {len(b)} simulate samples)"


def _write_model(model, path):
    model.save(path)
    return path


def test_export_cli_writes_loadable_files(toy, tmp_path):
    model, _ = toy
    path = _write_model(model, tmp_path / "model.npz")
    out = tmp_path / "openmm"
    run = subprocess.run([sys.executable, "-m", "cgdml.export", str(path), "-o", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "system.xml", "topology.pdb"]
    pdb = app.PDBFile(str(out / "topology.pdb"))
    assert pdb.topology.getNumAtoms() == N_BEADS and pdb.topology.getNumBonds() == N_BEADS - 1
    x = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert np.abs(x - model.train_coords_sample[0]).max() < 1e-3   # PDB keeps 0.001 nm
    system = openmm.XmlSerializer.deserialize((out / "system.xml").read_text())
    assert any(isinstance(f, openmm.PythonForce) for f in system.getForces())  # the GDML force serialises
    E, F = openmm_energy_forces(system, x[None])
    E_ref, F_ref = model.energy_forces(x[None])
    assert np.abs(E - E_ref).max() <= 1e-6 * np.abs(E_ref).max()
    assert np.abs(F - F_ref).max() <= 1e-6 * np.abs(F_ref).max()
    readme = (out / "README.txt").read_text()
    assert "to_openmm(CGModel.load(" in readme and "UncertaintyReporter(CGModel.load(" in readme


@pytest.mark.parametrize("case", ["missing model", "not a model", "output is a file"])
def test_export_cli_user_errors_are_one_line(case, toy, tmp_path):
    model, _ = toy
    args = [str(tmp_path / "nope.npz"), "-o", str(tmp_path / "out")]
    if case == "not a model":
        (tmp_path / "junk.npz").write_text("not a model")
        args[0] = str(tmp_path / "junk.npz")
    elif case == "output is a file":
        args[0] = str(_write_model(model, tmp_path / "model.npz"))
        (tmp_path / "out").write_text("")
    run = subprocess.run([sys.executable, "-m", "cgdml.export", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("error: ")
    assert "Traceback" not in run.stderr


def test_write_openmm_refuses_bad_directory(toy, tmp_path):
    from cgdml._io import CgdmlError

    model, _ = toy
    with pytest.raises(CgdmlError, match="does not exist"):
        write_openmm(model, tmp_path / "missing" / "out")
    with pytest.raises(CgdmlError, match="CGModel"):
        to_openmm(model.gdml)


def test_write_openmm_without_a_picklable_gdml_force_says_how_to_rebuild(toy, tmp_path, monkeypatch):
    import cgdml.openmm

    def unpicklable(self):
        raise TypeError("not picklable here")

    model, _ = toy
    monkeypatch.setattr(cgdml.openmm.GDMLComputation, "__getstate__", unpicklable)
    write_openmm(model, tmp_path / "out")
    system = openmm.XmlSerializer.deserialize((tmp_path / "out" / "system.xml").read_text())
    assert not any(isinstance(f, openmm.PythonForce) for f in system.getForces())
    assert system.getNumForces() == to_openmm(model)[0].getNumForces() - 1
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "does NOT contain the GDML force" in readme and "to_openmm(CGModel.load(" in readme


# ------------------------------------------------------------------------------------------------ guard
@pytest.fixture(scope="module")
def guarded(toy):
    """The toy model with an exact force posterior on its GDML training frames and the pipeline's threshold rule
    (1.5 x the 0.99 quantile of the force uncertainty over the data)."""
    from cgdml.uncertainty import ForcePosterior

    model, ds = toy
    pick = np.random.default_rng(0).choice(ds.n_frames, size=300, replace=False)
    post = ForcePosterior.fit(ds.coords[pick], model.prior.residual_forces(ds.coords[pick], ds.forces[pick]),
                              sigma=model.gdml.sigma, lam=1.0, quads=model.gdml.quads, n_samples=2,
                              max_reduced=1200)
    guarded = CGModel(model.gdml, model.prior, model.system, model.train_coords_sample, offsets=model.offsets,
                      uncertainty=post)
    u = guarded.force_uncertainty(ds.coords[::3])
    guarded.uncertainty_threshold = 1.5 * np.quantile(u, 0.99)
    return guarded, ds


def openmm_simulation(model, x0, seed=3):
    system, top = to_openmm(model)
    integrator = openmm.LangevinMiddleIntegrator(T * unit.kelvin, FRICTION / unit.picosecond, DT * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    sim = app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(x0)
    sim.context.setVelocitiesToTemperature(T * unit.kelvin, seed)
    return sim


def test_uncertainty_reporter_checks_every_k_steps_and_warns_once(guarded, recwarn):
    from cgdml.openmm import UncertaintyReporter

    model, ds = guarded
    sim = openmm_simulation(model, ds.coords[0])
    quiet = UncertaintyReporter(model, every=40)
    sim.reporters.append(quiet)
    quiet.check(sim)                                                # step 0: a training frame, inside the data
    sim.step(120)
    assert [s for s, _ in quiet.values] == [0, 40, 80, 120] and quiet.events == []
    R = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert quiet.values[-1][1] == pytest.approx(float(model.force_uncertainty(np.asarray(R)[None])[0]), rel=1e-9)
    assert quiet.values[0][1] < model.uncertainty_threshold
    # a threshold below every value: one event and one warning, and the run goes on
    low = min(v for _, v in quiet.values) / 2
    loud = UncertaintyReporter(model, every=40, threshold=low)
    sim.reporters[:] = [loud]
    with pytest.warns(UserWarning, match="crossed the threshold"):
        sim.step(120)
    assert sim.currentStep == 240 and len(loud.values) == 3 and len(loud.events) == 1
    e = loud.events[0]
    assert e["step"] == 160 and e["stopped"] is False and e["reason"] == "force uncertainty" and e["value"] > low
    assert e["time_ps"] == pytest.approx(160 * DT)


def test_uncertainty_reporter_stops_a_run(guarded):
    """The chain squeezed to 0.8 of a training frame's size (bonds 3 std short, every distance shorter) has a larger
    force uncertainty than the frame; with a threshold between the two, :meth:`check` passes the frame and
    "stop" raises GuardStop at the squeezed one; in a run, GuardStop leaves simulation.step at the first check
    above the threshold."""
    from cgdml.openmm import GuardStop, UncertaintyReporter

    model, ds = guarded
    inside, squeezed = ds.coords[0], 0.8 * ds.coords[0]
    u_in, u_out = (float(model.force_uncertainty(x[None])[0]) for x in (inside, squeezed))
    assert u_out > 2 * u_in
    sim = openmm_simulation(model, inside)
    guard = UncertaintyReporter(model, every=5, threshold=np.sqrt(u_in * u_out), action="stop")
    guard.check(sim)
    assert guard.events == [] and guard.values[0][1] == pytest.approx(u_in)
    sim.context.setPositions(squeezed)
    with pytest.raises(GuardStop, match="left the training data"):
        guard.check(sim)
    assert guard.events[0]["step"] == 0 and guard.events[0]["stopped"] is True
    sim.context.setPositions(inside)
    strict = UncertaintyReporter(model, every=5, threshold=u_in / 100, action="stop")
    sim.reporters.append(strict)
    with pytest.raises(GuardStop):
        sim.step(100)
    assert sim.currentStep == 5 and strict.events[0]["step"] == 5 and len(strict.values) == 1


def test_uncertainty_reporter_user_errors(guarded, toy):
    from cgdml._io import CgdmlError
    from cgdml.openmm import UncertaintyReporter

    model, _ = guarded
    with pytest.raises(CgdmlError, match="no force uncertainty"):
        UncertaintyReporter(toy[0])
    with pytest.raises(CgdmlError, match="action must be one of warn, stop"):
        UncertaintyReporter(model, action="stop-run")
    with pytest.raises(CgdmlError, match="every must be an integer"):
        UncertaintyReporter(model, every=0)
    bare = CGModel(model.gdml, model.prior, model.system, model.train_coords_sample, uncertainty=model.uncertainty)
    with pytest.raises(CgdmlError, match="positive threshold"):
        UncertaintyReporter(bare)
    assert UncertaintyReporter(bare, threshold=5.0).threshold == 5.0
