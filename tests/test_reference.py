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


def test_a_directory_that_is_not_a_run_is_refused(short_run, tmp_path):
    """run.json marks a run directory: another directory that holds files is neither written into nor resumed in
    (its files stay as they were), while a new, an empty and the run's own directory are accepted."""
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    d, pdb, _ = short_run
    shutil.copy(d / "chunk_00000.npz", other)               # chunks without run.json: not a run to resume either
    with pytest.raises(CgdmlError, match=r"other: holds files that cgdml.reference did not write there "
                                         r"\(chunk_00000.npz, notes.txt\).*choose a new or empty directory"):
        run_reference(other, **SHORT)
    assert sorted(p.name for p in other.iterdir()) == ["chunk_00000.npz", "notes.txt"]
    (tmp_path / "empty").mkdir()
    run_reference(tmp_path / "empty", **{**SHORT, "ns": 0.001})
    run_reference(tmp_path / "empty", **{**SHORT, "ns": 0.001})   # its own directory: reassembled


def _damaged_copy(short_run, tmp_path, edit):
    """A copy of the short run whose first chunk is ``edit(arrays)`` (a dict, or bytes to write as they are), the
    second chunk and the assembly removed (as if killed during the second chunk)."""
    import shutil

    d, _, npz = short_run
    run = tmp_path / "run"
    shutil.copytree(d, run)
    chunk = run / "chunk_00000.npz"
    with np.load(chunk) as z:
        arrays = dict(z)
    new = edit(arrays, chunk.read_bytes())
    if isinstance(new, bytes):
        chunk.write_bytes(new)
    else:
        np.savez(chunk, **new)
    (run / "chunk_00001.npz").unlink()
    (run / npz.name).unlink()
    return run, chunk


@pytest.mark.parametrize("damage, message", [
    (lambda z, raw: {k: v for k, v in z.items() if k != "positions"}, "missing field 'positions'"),
    (lambda z, raw: {k: v for k, v in z.items() if k != "forces"}, "missing field 'forces'"),
    (lambda z, raw: {**z, "positions": z["positions"][:, :5]}, r"shaped \(10, 5, 3\), expected \(n, 22, 3\)"),
    (lambda z, raw: {**z, "forces": z["forces"][:4]}, "differ in shape"),
    (lambda z, raw: raw[: len(raw) // 2], "not a readable reference chunk"),
    (lambda z, raw: {**z, "checkpoint": np.frombuffer(b"garbage" * 9, np.uint8), "state_xml": np.array("<x/>")},
     "neither its checkpoint nor its state can be restored"),
    (lambda z, raw: {k: v for k, v in z.items() if k not in ("checkpoint", "state_xml")},
     "neither its checkpoint nor its state can be restored"),
])
def test_a_damaged_chunk_is_one_line_naming_it_and_the_advice_works(short_run, tmp_path, damage, message):
    """A chunk with a field missing, misshapen, truncated, or with a checkpoint that cannot be restored: one line
    naming the file and telling to delete it; after that, the rerun resumes from the chunk before (here: starts
    afresh) and gives the same trajectory as the uninterrupted run."""
    run, chunk = _damaged_copy(short_run, tmp_path, damage)
    with pytest.raises(CgdmlError, match=rf"chunk_00000.npz: .*{message}.*delete it and rerun") as caught:
        run_reference(run, **SHORT)
    assert "\n" not in str(caught.value)
    chunk.unlink()
    _, npz = run_reference(run, **SHORT)
    np.testing.assert_array_equal(np.load(npz)["positions"], np.load(short_run[2])["positions"])
