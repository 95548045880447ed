"""Inputs from other tools: forces from other engines through MDAnalysis (cgdml.io.formats: AMBER NetCDF, LAMMPS
dump, H5MD), a user-given linear force map (.npy, cgdml.mapping), and mlcg-style HDF5 datasets (cgdml.io.mlcg).
Every file is written here."""
import subprocess
import sys
import warnings
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.io import ala2_pdb_path, default_dataset_paths, load_allatom
from cgdml.mapping import ala2_topology, map_allatom, preset_map

mda = pytest.importorskip("MDAnalysis", reason="the mdanalysis extra: pip install 'cgdml[mdanalysis]'")
h5py = pytest.importorskip("h5py", reason="the mdanalysis extra: pip install 'cgdml[mdanalysis]'")

KCAL = 4.184  # kJ per kcal
N_FRAMES = 23


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """(dir, PDB path, topology, positions nm, forces kJ/mol/nm) of alanine dipeptide, 23 jiggled frames."""
    d = tmp_path_factory.mktemp("formats")
    pdb = d / "ala2.pdb"
    pdb.write_text(ala2_pdb_path().read_text())
    top = ala2_topology()
    rng = np.random.default_rng(1)
    base = md.load_pdb(str(pdb)).xyz[0]
    x = (base + rng.normal(scale=0.004, size=(N_FRAMES, 22, 3))).astype(np.float32)
    f = rng.normal(scale=400.0, size=(N_FRAMES, 22, 3)).astype(np.float32)
    return d, pdb, top, x, f


def collect(gen):
    xs, fs = zip(*list(gen))
    return np.concatenate(xs), np.concatenate(fs)


def _universe(x_angstrom, f_mda):
    """An MDAnalysis Universe holding positions (Å) and forces (MDAnalysis units, kJ/mol/Å) in memory."""
    from MDAnalysis.coordinates.memory import MemoryReader

    u = mda.Universe.empty(x_angstrom.shape[1], trajectory=False)
    u.load_new(x_angstrom, format=MemoryReader, forces=f_mda, dt=1.0)
    return u


def _write(path, u, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mda.Writer(str(path), u.atoms.n_atoms, forces=True, **kwargs) as w:
            for _ in u.trajectory:
                w.write(u.atoms)


# ------------------------------------------------------------------------------------------ AMBER NetCDF
def test_amber_netcdf_positions_and_forces_in_nm_and_kj(system):
    """NCDFWriter stores Å and kcal/mol/Å (checked on the raw variables); load_allatom returns nm, kJ/mol/nm."""
    d, pdb, top, x, f = system
    path = d / "run.nc"
    _write(path, _universe(x * 10.0, f / 10.0))  # MDAnalysis units: Å, kJ/(mol Å)
    from scipy.io import netcdf_file

    with netcdf_file(str(path), mmap=False) as raw:  # the AMBER convention, independent of cgdml's reader
        assert raw.variables["forces"].units == b"kilocalorie/mole/angstrom"
        np.testing.assert_allclose(raw.variables["forces"][:] * KCAL * 10.0, f, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(raw.variables["coordinates"][:] / 10.0, x, atol=1e-6)
    X, F = collect(load_allatom(pdb, path, path, chunk=5))
    np.testing.assert_allclose(X, x, atol=1e-6)
    np.testing.assert_allclose(F, f, rtol=1e-5, atol=1e-3)
    X, F = collect(load_allatom(top, path, path, chunk=4, stride=3))  # strided chunks: the same frames
    np.testing.assert_allclose(X, x[::3], atol=1e-6)
    np.testing.assert_allclose(F, f[::3], rtol=1e-5, atol=1e-3)
    heavy = top.select("not element H")
    X, F = collect(load_allatom(top, path, path, atom_indices=heavy))
    np.testing.assert_allclose(F, f[:, heavy], rtol=1e-5, atol=1e-3)
    # forces from the NetCDF file, positions from another trajectory
    md.Trajectory(x, top).save_dcd(str(d / "run.dcd"))
    X, F = collect(load_allatom(top, d / "run.dcd", path, chunk=6))
    np.testing.assert_allclose(X, x, atol=1e-4)
    np.testing.assert_allclose(F, f, rtol=1e-5, atol=1e-3)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # MDAnalysis's reader of junk
def test_amber_netcdf_without_forces_or_frames_is_refused(system):
    d, pdb, top, x, f = system
    from MDAnalysis.coordinates.memory import MemoryReader

    u = mda.Universe.empty(22, trajectory=False)
    u.load_new(x * 10.0, format=MemoryReader, dt=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mda.Writer(str(d / "noforces.nc"), 22) as w:
            for _ in u.trajectory:
                w.write(u.atoms)
    with pytest.raises(CgdmlError, match=r"noforces.nc: the AMBER NetCDF file holds no forces .*ntwf"):
        collect(load_allatom(top, d / "noforces.nc", d / "noforces.nc"))
    _write(d / "short.nc", _universe(x[:20] * 10.0, f[:20] / 10.0))
    md.Trajectory(x, top).save_dcd(str(d / "long.dcd"))
    with pytest.raises(CgdmlError, match=r"short.nc: 20 force frames but .*long.dcd has 23"):
        collect(load_allatom(top, d / "long.dcd", d / "short.nc"))
    (d / "junk.nc").write_bytes(b"not netcdf" * 20)
    with pytest.raises(CgdmlError, match=r"junk.nc: not a readable AMBER NetCDF file"):
        collect(load_allatom(top, d / "junk.nc", d / "junk.nc"))


# ------------------------------------------------------------------------------------------ LAMMPS dump
def _write_lammps_dump(path, x_angstrom, forces, origin=(0.0, 0.0, 0.0), shuffle=None):
    """A LAMMPS text dump (columns id type x y z fx fy fz), atoms listed in the order ``shuffle``."""
    n_frames, n_atoms = x_angstrom.shape[:2]
    order = np.arange(n_atoms) if shuffle is None else shuffle
    lo = np.asarray(origin)
    lines = []
    for t in range(n_frames):
        lines += ["ITEM: TIMESTEP", str(100 * t), "ITEM: NUMBER OF ATOMS", str(n_atoms), "ITEM: BOX BOUNDS pp pp pp"]
        lines += [f"{lo[k]:.6f} {lo[k] + 40.0:.6f}" for k in range(3)]
        lines.append("ITEM: ATOMS id type x y z fx fy fz")
        for i in order:
            p, q = x_angstrom[t, i] + lo, forces[t, i]
            lines.append(f"{i + 1} 1 {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {q[0]:.8g} {q[1]:.8g} {q[2]:.8g}")
    Path(path).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("style, energy", [("real", KCAL), ("metal", 96.48533212)])
def test_lammps_dump_positions_and_forces(system, style, energy):
    """fx fy fz in kcal/mol/Å (units real) or eV/Å (units metal) come back in kJ/mol/nm; atoms listed out of order
    are sorted by id; the box origin that MDAnalysis removes is a translation of every frame."""
    d, pdb, top, x, f = system
    path = d / f"run_{style}.lammpsdump"
    origin = np.array([-5.0, 2.5, 7.0])
    shuffle = np.random.default_rng(2).permutation(22)
    _write_lammps_dump(path, x * 10.0, f / energy / 10.0, origin=origin, shuffle=shuffle)
    X, F = collect(load_allatom(pdb, path, path, chunk=7, lammps_units=style))
    np.testing.assert_allclose(X, x, atol=2e-6)  # the positions as written relative to the box corner (xlo ylo zlo)
    np.testing.assert_allclose(F, f, rtol=1e-6, atol=1e-3)
    X, F = collect(load_allatom(pdb, path, path, chunk=2, stride=4, lammps_units=style))
    np.testing.assert_allclose(F, f[::4], rtol=1e-6, atol=1e-3)
    assert len(X) == len(x[::4])


def test_lammps_dump_without_force_columns_is_refused(system):
    d, pdb, top, x, f = system
    text = "".join(f"ITEM: TIMESTEP\n{t}\nITEM: NUMBER OF ATOMS\n22\nITEM: BOX BOUNDS pp pp pp\n0 40\n0 40\n0 40\n"
                   "ITEM: ATOMS id type x y z\n" + "".join(f"{i + 1} 1 {p[0]} {p[1]} {p[2]}\n"
                                                          for i, p in enumerate(x[t] * 10)) for t in range(3))
    (d / "pos.lammpsdump").write_text(text)
    with pytest.raises(CgdmlError, match="pos.lammpsdump: the LAMMPS dump file holds no forces .*fx fy fz"):
        collect(load_allatom(pdb, d / "pos.lammpsdump", d / "pos.lammpsdump"))
    with pytest.raises(CgdmlError, match="LAMMPS units must be real or metal"):
        collect(load_allatom(pdb, d / "pos.lammpsdump", d / "pos.lammpsdump", lammps_units="lj"))


# ------------------------------------------------------------------------------------------ H5MD
@pytest.mark.parametrize("units", [dict(lengthunit="Angstrom", forceunit="kJ/(mol*Angstrom)"),
                                   dict(lengthunit="nm", forceunit="kJ/(mol*nm)")])
def test_h5md_positions_and_forces_from_the_file_units(system, units):
    """H5MDWriter in Å and kJ/(mol Å) (MDAnalysis's own) or nm and kJ/(mol nm): the file's unit attributes decide."""
    d, pdb, top, x, f = system
    path = d / f"run_{units['lengthunit']}.h5md"
    _write(path, _universe(x * 10.0, f / 10.0), timeunit="ps", **units)
    with h5py.File(path, "r") as raw:
        attrs = raw["particles/trajectory/force/value"].attrs
        assert attrs["unit"] == ("kJ mol-1 nm-1" if units["lengthunit"] == "nm" else "kJ mol-1 Angstrom-1")
    X, F = collect(load_allatom(pdb, path, path, chunk=8))
    np.testing.assert_allclose(X, x, atol=1e-6)
    np.testing.assert_allclose(F, f, rtol=1e-5, atol=1e-3)
    # an H5MD trajectory (mdtraj cannot read it) with forces in another file
    np.save(d / "f.npy", f)
    X, F = collect(load_allatom(pdb, path, d / "f.npy", chunk=5))
    np.testing.assert_allclose(X, x, atol=1e-6)
    np.testing.assert_array_equal(F, f)


def test_h5md_without_unit_attributes_takes_the_given_units(system):
    d, pdb, top, x, f = system
    path = d / "nounits.h5md"
    _write(path, _universe(x * 10.0, f / 10.0), timeunit="ps", lengthunit="Angstrom", forceunit="kJ/(mol*Angstrom)")
    with h5py.File(path, "r+") as raw:
        for group in ("position", "force"):
            del raw[f"particles/trajectory/{group}/value"].attrs["unit"]
    X, F = collect(load_allatom(pdb, path, path, length_unit="angstrom", energy_unit="kJ/mol"))
    np.testing.assert_allclose(X, x, atol=1e-6)
    np.testing.assert_allclose(F, f, rtol=1e-5, atol=1e-3)


def test_map_cli_reads_forces_from_another_engine(system, tmp_path):
    """python -m cgdml.map with --traj and --forces naming the same NetCDF file equals mapping the arrays."""
    d, pdb, top, x, f = system
    path = d / "cli.nc"
    _write(path, _universe(x * 10.0, f / 10.0))
    np.save(d / "cli_x.npy", x)
    np.save(d / "cli_f.npy", f)
    out = tmp_path / "cg.npz"
    run = subprocess.run([sys.executable, "-m", "cgdml.map", "--top", str(pdb), "--traj", str(path), "--forces",
                          str(path), "--map", "ala2-5", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ds = CGDataset.load(out)
    ref = map_allatom(pdb, d / "cli_x.npy", d / "cli_f.npy", "ala2-5")
    np.testing.assert_allclose(ds.coords, ref.coords, atol=1e-5)
    np.testing.assert_allclose(ds.forces, ref.forces, rtol=1e-4, atol=1e-2)


def test_missing_mdanalysis_names_the_extra(system, monkeypatch):
    d, pdb, top, x, f = system
    _write(d / "extra.nc", _universe(x * 10.0, f / 10.0))
    monkeypatch.setitem(sys.modules, "MDAnalysis", None)  # import MDAnalysis now raises ImportError
    with pytest.raises(CgdmlError) as exc:
        collect(load_allatom(pdb, d / "extra.nc", d / "extra.nc"))
    assert "pip install 'cgdml[mdanalysis]'" in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------ user force maps
@pytest.fixture(scope="module")
def shipped():
    return default_dataset_paths()


def _map_cli(shipped, out, force_map, *extra):
    return subprocess.run([sys.executable, "-m", "cgdml.map", "--top", str(shipped.topology), "--traj",
                           str(shipped.trajectory), "--forces", str(shipped.forces), "--map", "ala2-5",
                           "--stride", "40", "--force-map", str(force_map), *extra, "-o", str(out)],
                          capture_output=True, text=True)


def test_saved_aggregate_map_gives_the_aggregate_dataset(shipped, tmp_path):
    matrix = preset_map("ala2-5", md.load_topology(str(shipped.topology))).fit_force_map("aggregate").force_matrix_
    np.save(tmp_path / "aggregate.npy", matrix)
    for name, fm in (("builtin", "aggregate"), ("file", tmp_path / "aggregate.npy")):
        run = _map_cli(shipped, tmp_path / f"{name}.npz", fm)
        assert run.returncode == 0, run.stderr
    a, b = CGDataset.load(tmp_path / "builtin.npz"), CGDataset.load(tmp_path / "file.npz")
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.forces, b.forces)
    assert a.bead_names == b.bead_names and np.array_equal(a.bonds, b.bonds) and np.allclose(a.masses, b.masses)
    assert b.info["force_map"] == str(tmp_path / "aggregate.npy")
    assert max(b.info["consistency_error"]) < 1e-12


def test_inconsistent_force_maps_are_refused(shipped, tmp_path):
    top = md.load_topology(str(shipped.topology))
    cgmap = preset_map("ala2-5", top).fit_force_map("aggregate")
    bad = cgmap.force_matrix_.copy()
    bad[2, cgmap.bead_atoms_[2][0]] += 0.01  # B C^T = I fails by 0.01 for bead 2
    np.save(tmp_path / "perturbed.npy", bad)
    run = _map_cli(shipped, tmp_path / "bad.npz", tmp_path / "perturbed.npy")
    assert run.returncode == 2 and not (tmp_path / "bad.npz").exists()
    line = run.stderr.strip()
    assert "\n" not in line and "perturbed.npy" in line and "B C^T = I fails by 0.01" in line, line
    # the slice map keeps B C^T = I but splits constrained hydrogens from their heavy atom
    with pytest.warns(UserWarning, match="slice force map leaves out the constraint forces"):
        np.save(tmp_path / "slice.npy", preset_map("ala2-5", top).fit_force_map("slice").force_matrix_)
    with pytest.raises(CgdmlError, match=r"weights differ inside a constraint group by 1 .*--constraints none"):
        map_allatom(shipped.topology, shipped.trajectory, shipped.forces, "ala2-5",
                    force_map=tmp_path / "slice.npy", stride=200)
    ds = map_allatom(shipped.topology, shipped.trajectory, shipped.forces, "ala2-5", force_map=tmp_path / "slice.npy",
                     stride=200, constraints="none")  # without constraints the slice map is consistent
    assert ds.n_beads == 5
    np.save(tmp_path / "wide.npy", np.zeros((5, 23)))
    with pytest.raises(CgdmlError, match=r"wide.npy: force map shaped \(5, 23\).* must be shaped \(5, 22\)"):
        map_allatom(shipped.topology, shipped.trajectory, shipped.forces, "ala2-5", force_map=tmp_path / "wide.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk" * 40)
    with pytest.raises(CgdmlError, match="junk.npy: not a NumPy .npy file"):
        map_allatom(shipped.topology, shipped.trajectory, shipped.forces, "ala2-5", force_map=tmp_path / "junk.npy")
    run = _map_cli(shipped, tmp_path / "x.npz", "best")
    assert run.returncode == 2 and "--force-map must be slice, aggregate, optimal or a .npy" in run.stderr


# ------------------------------------------------------------------------------------------ mlcg HDF5
def _write_mlcg(path, molecules, forces_key="cg_delta_forces"):
    """An mlcg-style file: one group per data set, one per molecule (cg_coords, forces, cg_embeds, N_frames)."""
    with h5py.File(path, "w") as h5:
        for name, (coords, forces, pdb) in molecules.items():
            g = h5.create_group(name)
            g.create_dataset("cg_coords", data=coords.astype(np.float32))
            g.create_dataset(forces_key, data=forces.astype(np.float32))
            g.attrs["cg_embeds"] = np.arange(1, coords.shape[1] + 1)
            g.attrs["N_frames"] = coords.shape[0]
            if pdb:
                g.attrs["cg_pdb"] = pdb


def test_mlcg_hdf5_molecule_in_angstrom_and_kcal(tmp_path):
    from cgdml.mapping import load_default_cg_dataset

    ds0 = preset_map("ala2-5")  # its bead graph is the molecule's
    rng = np.random.default_rng(3)

    cg = load_default_cg_dataset(stride=500)  # 40 frames, 5 beads, nm and kJ/mol/nm
    other = rng.normal(size=(9, 3, 3))
    _write_mlcg(tmp_path / "set.h5", {"OPEP/ala2_0000": (cg.coords * 10.0, cg.forces / 41.84, None),
                                      "OPEP/tri_0001": (other, other, None),
                                      "CATH/pdb_0002": (cg.coords * 10.0, cg.forces / 41.84,
                                                        cg.cg_topology.to_pdb())})
    out = tmp_path / "cg.npz"
    run = subprocess.run([sys.executable, "-m", "cgdml.map", "--mlcg", str(tmp_path / "set.h5"), "--molecule",
                          "ala2_0000", "--length-unit", "angstrom", "--energy-unit", "kcal/mol", "--beads", "ala2-5",
                          "--temperature", "300", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "cg_delta_forces" in run.stderr  # the warning that mlcg's delta forces have a prior taken off
    ds = CGDataset.load(out)
    np.testing.assert_allclose(ds.coords, cg.coords, atol=1e-6)
    np.testing.assert_allclose(ds.forces, cg.forces, rtol=1e-5, atol=1e-3)
    assert ds.bead_names == cg.bead_names and np.array_equal(ds.bonds, cg.bonds)
    assert np.allclose(ds.masses, ds0.masses_)
    assert ds.info["source"]["molecule"] == "OPEP/ala2_0000"
    assert ds.info["mlcg_attributes"]["cg_embeds"] == [1, 2, 3, 4, 5]
    assert ds.info["mlcg_attributes"]["N_frames"] == 40
    # the bead names and bonds of a cg_pdb attribute, every 4th frame, forces key named
    from cgdml.io.mlcg import load_mlcg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_mlcg(tmp_path / "set.h5", "CATH/pdb_0002", length_unit="angstrom", energy_unit="kcal/mol",
                       stride=4, forces_key="cg_delta_forces")
    assert ds.bead_names == cg.bead_names and np.array_equal(ds.bonds, cg.bonds) and ds.n_frames == 10
    np.testing.assert_allclose(ds.forces, cg.forces[::4], rtol=1e-5, atol=1e-3)


@pytest.mark.filterwarnings("ignore:.*reading cg_delta_forces", "ignore:no CG bonds given")
def test_mlcg_full_forces_and_errors(tmp_path):
    from cgdml.io.mlcg import load_mlcg

    rng = np.random.default_rng(4)
    x = np.cumsum(rng.normal(scale=0.2, size=(6, 4, 3)) + [0.38, 0, 0], axis=1)  # a 4-bead chain, nm
    F = rng.normal(size=(6, 4, 3))
    _write_mlcg(tmp_path / "one.h5", {"mol": (x, F, None)}, forces_key="cg_forces")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full forces: no delta-forces warning (bonds given: no chain warning)
        ds = load_mlcg(tmp_path / "one.h5", bead_names=["A", "B", "C", "D"], bonds=[[0, 1], [1, 2], [2, 3]])
    np.testing.assert_allclose(ds.coords, x, atol=1e-6)
    np.testing.assert_allclose(ds.forces, F, atol=1e-6)
    assert ds.info["source"]["forces"] == "cg_forces"
    _write_mlcg(tmp_path / "two.h5", {"A/m1": (x, F, None), "B/m1": (x, F, None), "B/m2": (x, F, None)})
    with pytest.raises(CgdmlError, match=r"two.h5: 3 molecules; choose one with --molecule \(A/m1, B/m1, B/m2\)"):
        load_mlcg(tmp_path / "two.h5")
    with pytest.raises(CgdmlError, match=r"molecule 'm1' is ambiguous \(A/m1, B/m1\)"):
        load_mlcg(tmp_path / "two.h5", "m1")
    with pytest.raises(CgdmlError, match=r"no molecule 'm3'"):
        load_mlcg(tmp_path / "two.h5", "m3")
    with h5py.File(tmp_path / "two.h5", "r+") as h5:
        h5["B/m2"].attrs["N_frames"] = 7
    with pytest.raises(CgdmlError, match=r"B/m2: attribute N_frames = 7 but cg_coords holds 6 frames"):
        load_mlcg(tmp_path / "two.h5", "B/m2")
    with pytest.raises(CgdmlError, match="median bonded distance"):  # nm read as Å: refused
        load_mlcg(tmp_path / "one.h5", length_unit="angstrom")
    out = tmp_path / "o.npz"
    run = subprocess.run([sys.executable, "-m", "cgdml.map", "--molecule", "m1", "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--molecule goes with --mlcg FILE.h5" in run.stderr


def test_missing_h5py_names_the_extra(tmp_path, monkeypatch):
    from cgdml.io.mlcg import load_mlcg

    (tmp_path / "x.h5").write_bytes(b"\x89HDF")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(CgdmlError, match=r"x.h5: reading mlcg HDF5 files needs h5py.*pip install 'cgdml\[mdanalysis\]'"):
        load_mlcg(tmp_path / "x.h5")
