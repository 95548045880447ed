"""The OpenMM reference generator: a short run, its physics, and resuming from the chunk checkpoints."""
import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.reference import build_system, run_reference

SHORT = dict(ns=0.002, save_every_ps=0.1, chunk_ns=0.001, equilibrate_ps=0.4, seed=7, threads=1, progress=False,
             log=lambda *a: None)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    pdb, npz = run_reference(d, **SHORT)
    return d, pdb, npz


def test_short_run_writes_chunks_and_assembly(short_run):
    import mdtraj as md

    d, pdb, npz = short_run
    z = np.load(npz)
    assert z["positions"].shape == (20, 22, 3) and z["forces"].shape == (20, 22, 3)
    assert z["positions"].dtype == np.float32 and np.isfinite(z["forces"]).all()
    np.testing.assert_allclose(z["time_ps"], 0.1 * np.arange(1, 21))
    chunks = sorted(d.glob("chunk_*.npz"))
    assert len(chunks) == 2
    np.testing.assert_array_equal(np.concatenate([np.load(c)["positions"] for c in chunks]), z["positions"])
    top = md.load_topology(str(pdb))
    assert top.n_atoms == 22 and [r.name for r in top.residues] == ["ACE", "ALA", "NME"]
    # X-H bonds are constrained: their lengths do not fluctuate
    hb = np.array([(a.index, b.index) for a, b in top.bonds if "H" in (a.element.symbol, b.element.symbol)])
    dist = np.linalg.norm(z["positions"][:, hb[:, 0]] - z["positions"][:, hb[:, 1]], axis=-1)
    assert len(hb) == 12 and dist.std(axis=0).max() < 1e-5


def test_saved_forces_are_minus_energy_gradient(short_run):
    """Stored forces equal -dU/dx of a fresh system at the stored positions (finite differences)."""
    import openmm
    from openmm import unit

    d, pdb, npz = short_run
    z = np.load(npz)
    _, _, system, _ = build_system("implicit", hydrogen_mass=4.0)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    x = z["positions"][5].astype(np.float64)

    def energy(xyz):
        ctx.setPositions(xyz * unit.nanometer)
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    ctx.setPositions(x * unit.nanometer)
    f = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    np.testing.assert_allclose(z["forces"][5], f, rtol=1e-3, atol=0.5)
    h = 1e-5
    for atom, k in [(8, 0), (4, 2), (10, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[atom, k] += h
        xm[atom, k] -= h
        fd = -(energy(xp) - energy(xm)) / (2 * h)
        assert abs(fd - z["forces"][5, atom, k]) < 1e-2 * abs(fd) + 1.0


def test_killed_run_resumes_from_its_last_chunk(short_run, tmp_path):
    d, pdb, npz = short_run
    import shutil

    run = tmp_path / "run"
    shutil.copytree(d, run)
    first = np.load(run / "chunk_00000.npz")["positions"]
    second = np.load(run / "chunk_00001.npz")
    mtime = (run / "chunk_00000.npz").stat().st_mtime_ns
    (run / "chunk_00001.npz").unlink()  # as if killed during the second chunk
    (run / npz.name).unlink()
    messages = []
    run_reference(run, **{**SHORT, "log": messages.append})
    assert any("resuming" in m and "1/2" in m for m in messages)
    assert (run / "chunk_00000.npz").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.load(run / "chunk_00000.npz")["positions"], first)
    redone = np.load(run / "chunk_00001.npz")
    # the checkpoint restores positions, velocities and the integrator's random state: same trajectory
    np.testing.assert_allclose(redone["positions"], second["positions"], atol=1e-5)
    assert redone["step"] == second["step"]
    assert np.load(run / npz.name)["positions"].shape == (20, 22, 3)
    # a finished run only reassembles
    messages.clear()
    run_reference(run, **{**SHORT, "log": messages.append})
    assert any("2/2 chunks done" in m for m in messages)


def test_resume_with_other_settings_is_refused(short_run, tmp_path):
    d, _, _ = short_run
    import shutil

    shutil.copytree(d, tmp_path / "run")
    with pytest.raises(CgdmlError, match="other settings.*temperature"):
        run_reference(tmp_path / "run", **{**SHORT, "temperature": 350.0})
