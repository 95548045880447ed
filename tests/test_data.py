"""All-atom loading (formats, units, chunking, errors), the shipped dataset and the map command line."""
import json
import re
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
from cgdml.mapping import load_default_cg_dataset
from cgdml.mapping import ala2_topology

KCAL_PER_A = 41.84  # kJ/mol/nm per kcal/mol/Angstrom


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """Alanine dipeptide topology (PDB), 50 jiggled frames (nm) and random forces (kJ/mol/nm)."""
    d = tmp_path_factory.mktemp("aa")
    top = ala2_topology()
    rng = np.random.default_rng(0)
    base = md.load_pdb(str(_ala2_pdb(d))).xyz[0]
    x = (base + rng.normal(scale=0.005, size=(50, 22, 3))).astype(np.float32)
    f = rng.normal(scale=500.0, size=(50, 22, 3)).astype(np.float32)
    return d, top, x, f


def _ala2_pdb(d):
    path = Path(d) / "ala2.pdb"
    path.write_text(ala2_pdb_path().read_text())
    return path


def collect(gen):
    xs, fs = zip(*list(gen))
    return np.concatenate(xs), np.concatenate(fs)


def test_units_are_converted_at_load(system):
    d, top, x, f = system
    np.save(d / "x_A.npy", x * 10.0)
    np.save(d / "f_kcal.npy", f / KCAL_PER_A)
    X, F = collect(load_allatom(_ala2_pdb(d), d / "x_A.npy", d / "f_kcal.npy", length_unit="angstrom",
                                energy_unit="kcal/mol"))
    np.testing.assert_allclose(X, x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(F, f, rtol=1e-5, atol=1e-3)
    # kJ/mol with angstrom lengths: forces scale by 10 only
    X, F = collect(load_allatom(top, d / "x_A.npy", d / "f_kcal.npy", length_unit="angstrom", energy_unit="kJ/mol"))
    np.testing.assert_allclose(F, f / KCAL_PER_A * 10.0, rtol=1e-5)


def test_chunked_loading_equals_whole_loading_across_files_and_formats(system):
    d, top, x, f = system
    md.Trajectory(x[:30], top).save_dcd(str(d / "a.dcd"))  # DCD stores Angstrom: mdtraj converts
    md.Trajectory(x[30:], top).save_xtc(str(d / "b.xtc"))
    np.save(d / "fa.npy", f[:30])
    np.savez(d / "fb.npz", forces=f[30:])
    args = (_ala2_pdb(d), [d / "a.dcd", d / "b.xtc"], [d / "fa.npy", d / "fb.npz"])
    whole = collect(load_allatom(*args, chunk=10**6))
    for chunk, stride in [(7, 1), (4, 3), (1, 2)]:
        X, F = collect(load_allatom(*args, chunk=chunk, stride=stride))
        ref_x = np.concatenate([x[:30][::stride], x[30:][::stride]])
        ref_f = np.concatenate([f[:30][::stride], f[30:][::stride]])
        np.testing.assert_allclose(X, ref_x, atol=2e-3)  # xtc precision 1e-3 nm
        np.testing.assert_array_equal(F, ref_f)
        if stride == 1:
            np.testing.assert_array_equal(X, whole[0])
            assert max(len(c[0]) for c in load_allatom(*args, chunk=chunk)) <= chunk


def test_gromacs_trr_forces_and_atom_selection(system):
    from mdtraj.formats import TRRTrajectoryFile

    d, top, x, f = system
    n = len(x)
    with TRRTrajectoryFile(str(d / "run.trr"), "w") as t:
        t._write(x, np.arange(n, dtype=np.float32), np.arange(n, dtype=np.int32),
                 np.tile(np.eye(3, dtype=np.float32) * 3, (n, 1, 1)), np.zeros(n, np.float32), None, f)
    X, F = collect(load_allatom(_ala2_pdb(d), d / "run.trr", d / "run.trr", chunk=16, stride=2))
    np.testing.assert_allclose(X, x[::2], atol=1e-6)
    np.testing.assert_allclose(F, f[::2], rtol=1e-6)
    heavy = top.select("not element H")
    X, F = collect(load_allatom(top, d / "run.trr", d / "run.trr", atom_indices=heavy))
    np.testing.assert_allclose(F, f[:, heavy], rtol=1e-6)
    np.testing.assert_allclose(X, x[:, heavy], atol=1e-6)


def _error(gen_fn):
    with pytest.raises(CgdmlError) as exc:
        collect(gen_fn())
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_mismatches_and_corrupt_files_are_one_line_errors(system):
    d, top, x, f = system
    pdb = _ala2_pdb(d)
    np.save(d / "x.npy", x)
    np.save(d / "f49.npy", f[:49])
    np.save(d / "f21.npy", f[:, :21])
    md.Trajectory(x, top).save_dcd(str(d / "x.dcd"))
    (d / "junk.npy").write_bytes(b"not an array at all" * 10)
    (d / "junk.dcd").write_bytes(b"\x00\x01garbage" * 100)
    assert "f49.npy: 49 force frames" in _error(lambda: load_allatom(pdb, d / "x.npy", d / "f49.npy"))
    assert "f49.npy" in _error(lambda: load_allatom(pdb, d / "x.dcd", d / "f49.npy"))
    assert "f21.npy: forces for 21 atoms" in _error(lambda: load_allatom(pdb, d / "x.npy", d / "f21.npy"))
    assert "junk.npy: not a readable forces file" in _error(lambda: load_allatom(pdb, d / "x.npy", d / "junk.npy"))
    assert "junk.dcd" in _error(lambda: load_allatom(pdb, d / "junk.dcd", d / "f49.npy"))
    assert "missing.npy: no such" in _error(lambda: load_allatom(pdb, d / "x.npy", d / "missing.npy"))
    assert "2 trajectory file(s) but 1" in _error(lambda: load_allatom(pdb, [d / "x.npy"] * 2, d / "f49.npy"))
    small = md.Topology()
    small.add_atom("C", md.element.carbon, small.add_residue("X", small.add_chain()))
    np.save(d / "f1.npy", f[:, :1])
    assert "x.dcd" in _error(lambda: load_allatom(small, d / "x.dcd", d / "f1.npy"))


def test_nan_frames_are_reported_with_their_global_index(system):
    d, top, x, f = system
    bad = f.copy()
    bad[37, 4, 1] = np.nan
    np.save(d / "x.npy", x)
    np.save(d / "fnan.npy", bad)
    msg = _error(lambda: load_allatom(top, d / "x.npy", d / "fnan.npy", chunk=10))
    assert "fnan.npy" in msg and "37" in msg and "1 frame" in msg


def test_wrong_length_unit_and_wrong_atom_order_are_refused(system):
    d, top, x, f = system
    np.save(d / "xA.npy", x * 10)
    np.save(d / "f.npy", f)
    msg = _error(lambda: load_allatom(top, d / "xA.npy", d / "f.npy"))  # Angstrom read as nm
    assert "median bonded distance" in msg and "length unit" in msg and "xA.npy" in msg
    reordered = x.copy()
    reordered[7:] = reordered[7:, ::-1]                        # frames from 7 on: atoms listed in reverse
    np.save(d / "x_rev.npy", reordered)
    msg = _error(lambda: load_allatom(top, d / "x_rev.npy", d / "f.npy", chunk=5))
    assert "frame 7: bond" in msg and "atom order" in msg and "x_rev.npy" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collect(load_allatom(top, d / "xA.npy", d / "f.npy", length_unit="angstrom"))


# ------------------------------------------------------------------------ the shipped dataset
def test_shipped_reference_is_alanine_dipeptide_at_300K():
    paths = default_dataset_paths()
    ds = load_default_cg_dataset(stride=10)
    assert ds.coords.shape == (2000, 5, 3) and ds.temperature == 300.0
    assert ds.bead_names == ["C", "N", "CA", "C", "N"] and ds.info["force_map"] == "aggregate"
    phi = md.compute_phi(ds.to_mdtraj())[1][:, 0]
    assert (phi < 0).mean() > 0.9  # L-alanine: alpha_L (phi > 0) is rare
    with np.load(paths.trajectory) as z:
        assert z["positions"].shape == (20000, 22, 3) and z["forces"].dtype == np.float32
    ds6 = load_default_cg_dataset(map="ala2-6", force_map="optimal", stride=20)
    assert ds6.n_beads == 6 and ds6.info["consistency_error"][0] < 1e-8


# ------------------------------------------------------------------------ command line
def run_map(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cgdml.map", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_map_cli_writes_a_cg_dataset(system):
    d, top, x, f = system
    np.save(d / "x.npy", x)
    np.save(d / "f.npy", f)
    out = d / "cg.npz"
    r = run_map("--top", _ala2_pdb(d), "--traj", d / "x.npy", "--forces", d / "f.npy", "--map", "ala2-6",
                "--force-map", "aggregate", "--stride", "2", "--temperature", "310", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "mean squared force per bead" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    ds = CGDataset.load(out)
    assert ds.coords.shape == (25, 6, 3) and ds.temperature == 310
    np.testing.assert_allclose(ds.coords[:, 2], x[::2, 8], atol=1e-6)         # CA bead sits on CA (atom 8)
    np.testing.assert_allclose(ds.forces[:, 2], f[::2, [8, 9]].sum(1), rtol=1e-5, atol=1e-3)  # CA + HA
    assert md.compute_phi(ds.to_mdtraj())[1].shape == (25, 1)


def test_map_cli_premapped_arrays_in_angstrom_kcal(system, tmp_path):
    d, top, x, f = system
    np.save(tmp_path / "c.npy", x[:, [4, 6, 8, 14, 16]] * 10)
    np.save(tmp_path / "g.npy", f[:, [4, 6, 8, 14, 16]] / KCAL_PER_A)
    out = tmp_path / "cg.npz"
    r = run_map("--coords", tmp_path / "c.npy", "--cg-forces", tmp_path / "g.npy", "--length-unit", "angstrom",
                "--energy-unit", "kcal/mol", "--beads", "ala2-5", "--temperature", "300", "-o", out)
    assert r.returncode == 0, r.stderr
    ds = CGDataset.load(out)
    np.testing.assert_allclose(ds.coords, x[:, [4, 6, 8, 14, 16]], atol=1e-6)
    np.testing.assert_allclose(ds.forces, f[:, [4, 6, 8, 14, 16]], rtol=1e-5, atol=1e-3)
    assert [r.name for r in ds.topology.residues] == ["ACE", "ALA", "NME"]
    np.testing.assert_allclose(md.compute_phi(ds.to_mdtraj())[1][:, 0],
                               md.compute_phi(md.Trajectory(x, top))[1][:, 0], atol=1e-4)


@pytest.mark.parametrize("case", ["frames", "atoms", "corrupt"])
def test_map_cli_errors_are_one_line_and_write_nothing(system, tmp_path, case):
    d, top, x, f = system
    np.save(tmp_path / "x.npy", x)
    forces = tmp_path / "f.npy"
    if case == "frames":
        np.save(forces, f[:-3])
    elif case == "atoms":
        np.save(forces, f[:, :20])
    else:
        forces.write_bytes(b"\x93NUMPY garbage" * 50)
    out = tmp_path / "out.npz"
    r = run_map("--top", _ala2_pdb(d), "--traj", tmp_path / "x.npy", "--forces", forces, "--map", "ala2-5",
                "-o", out)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "f.npy" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.npz*"))


def _help_sections(parser):
    """{section title: its text} of a parser's --help."""
    sections = {}
    for block in parser.format_help().split("\n\n"):
        title, _, body = block.partition("\n")
        sections[title.rstrip(":")] = body
    return sections


def test_map_help_tells_where_each_option_applies():
    from cgdml.map import build_parser

    sections = _help_sections(build_parser())
    arrays, aa = sections["pre-mapped arrays"], sections["all-atom input"]
    for flag in ("--stride", "--map", "--force-map", "--length-unit", "--temperature"):
        assert flag not in arrays, flag
    assert "--map" in aa and "--force-map" in aa and "FILE.npy" in aa
    assert "--stride" in sections["input units, temperature and frames"]
    map_help = " ".join(aa[aa.index("--map"):aa.index("--force-map")].split())
    assert "required with all-atom input" in map_help and "default" not in map_help


def test_python_and_command_line_map_the_same_dataset(system, tmp_path):
    """The map command is a shell over map_allatom and load_cg_arrays: the same arrays, system and info; the CG PDB
    beside the dataset reads back as its system."""
    from cgdml.io import load_cg_arrays
    from cgdml.mapping import map_allatom
    from cgdml.system import CGSystem

    d, top, x, f = system
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "f.npy", f)
    r = run_map("--top", _ala2_pdb(d), "--traj", tmp_path / "x.npy", "--forces", tmp_path / "f.npy", "--map",
                "ala2-6", "--force-map", "optimal", "--stride", "2", "--temperature", "310", "-o", tmp_path / "aa.npz")
    assert r.returncode == 0, r.stderr
    py = map_allatom(_ala2_pdb(d), tmp_path / "x.npy", tmp_path / "f.npy", "ala2-6", force_map="optimal", stride=2,
                     temperature=310)
    cmd = CGDataset.load(tmp_path / "aa.npz")
    np.testing.assert_array_equal(cmd.coords, py.coords.astype(np.float32))
    np.testing.assert_array_equal(cmd.forces, py.forces.astype(np.float32))
    assert cmd.system == py.system and cmd.info == json.loads(json.dumps(py.info))
    assert CGSystem.from_pdb_file(tmp_path / "aa.pdb", masses=py.masses, temperature=310) == py.system

    cg = py.coords * 10.0, py.forces / KCAL_PER_A
    np.save(tmp_path / "c.npy", cg[0])
    np.save(tmp_path / "g.npy", cg[1])
    for beads, bonds in (("ala2-6", None), ("C,N,CA,CB,C,N", "0-1,1-2,2-3,2-4,4-5")):
        args = ["--coords", tmp_path / "c.npy", "--cg-forces", tmp_path / "g.npy", "--length-unit", "angstrom",
                "--energy-unit", "kcal/mol", "--beads", beads, "--stride", "3", "--temperature", "310"]
        r = run_map(*args, *(["--bonds", bonds] if bonds else []), "-o", tmp_path / "arrays.npz")
        assert r.returncode == 0, r.stderr
        cmd = CGDataset.load(tmp_path / "arrays.npz")
        py_arrays = load_cg_arrays(tmp_path / "c.npy", tmp_path / "g.npy", beads=beads, bonds=bonds,
                                   length_unit="angstrom", energy_unit="kcal/mol", temperature=310, stride=3)
        np.testing.assert_array_equal(cmd.coords, py_arrays.coords.astype(np.float32))
        np.testing.assert_array_equal(cmd.forces, py_arrays.forces.astype(np.float32))
        assert cmd.system == py_arrays.system and cmd.info == py_arrays.info
        np.testing.assert_allclose(py_arrays.coords, py.coords[::3], rtol=1e-12)
        assert py_arrays.bonds.tolist() == py.bonds.tolist()
    assert py_arrays.masses.tolist() != py.masses.tolist()         # bead names only: element masses
    in_memory = load_cg_arrays(cg[0], cg[1], beads="ala2-6", length_unit="angstrom", energy_unit="kcal/mol")
    assert in_memory.system == CGSystem(py.cg_topology, py.masses, 300.0)
    assert in_memory.info["source"] == {"coords": "(array)", "forces": "(array)"}


def test_load_cg_arrays_errors_name_the_file(tmp_path):
    from cgdml.io import load_cg_arrays

    R = 0.15 * np.cumsum(np.ones((10, 5, 3)), axis=1)
    np.save(tmp_path / "c.npy", R)
    np.save(tmp_path / "g4.npy", np.zeros((10, 4, 3)))
    np.save(tmp_path / "g.npy", np.zeros((10, 5, 3)))
    cases = [(dict(forces=tmp_path / "g4.npy"), "g4.npy: forces shaped (10, 4, 3) do not match"),
             (dict(beads="ala2-6"), "c.npy: 5 beads but preset ala2-6 has 6"),
             (dict(length_unit="furlong"), "unknown length unit 'furlong'"),
             (dict(forces=tmp_path / "nope.npy"), "nope.npy: no such forces file"),
             (dict(beads="A,B"), "c.npy: 2 bead names for 5 beads"),
             (dict(stride=0), "stride must be >= 1")]
    for kwargs, message in cases:
        with pytest.raises(CgdmlError, match=re.escape(message)):
            load_cg_arrays(**{"coords": tmp_path / "c.npy", "forces": tmp_path / "g.npy", "beads": "ala2-5", **kwargs})


def test_options_that_cannot_apply_are_refused(system, tmp_path):
    from cgdml.map import main

    d, top, x, f = system
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "f.npy", f)
    np.save(tmp_path / "c.npy", x[:, [4, 6, 8, 14, 16]])
    all_atom = ["--top", str(_ala2_pdb(d)), "--traj", str(tmp_path / "x.npy"), "--forces", str(tmp_path / "f.npy"),
                "--map", "ala2-5"]
    arrays = ["--coords", str(tmp_path / "c.npy"), "--cg-forces", str(tmp_path / "c.npy")]
    for argv, message in [(all_atom + ["--beads", "ala2-5"], "--beads and --bonds describe pre-mapped arrays"),
                          (all_atom + ["--bonds", "0-1"], "--beads and --bonds describe pre-mapped arrays"),
                          (arrays + ["--map", "ala2-6"], "--map maps all-atom data"),
                          (["--mlcg", "x.h5", "--map", "ala2-6"], "--map maps all-atom data")]:
        with pytest.raises(CgdmlError, match=message):
            main(argv + ["-o", str(tmp_path / "out.npz")])
    assert not (tmp_path / "out.npz").exists()


def test_dataset_arguments_shared_with_fit(system, tmp_path):
    import argparse

    from cgdml._cli import add_dataset_arguments, dataset_from_args

    d, top, x, f = system
    parser = add_dataset_arguments(argparse.ArgumentParser())
    cg = CGDataset.from_arrays(x[:, [4, 6, 8, 14, 16]], f[:, [4, 6, 8, 14, 16]], bead_names=list("CNACN"))
    cg.save(tmp_path / "ds.npz")
    ds = dataset_from_args(parser.parse_args([str(tmp_path / "ds.npz"), "--stride", "5"]))
    assert ds.n_frames == 10
    np.testing.assert_allclose(ds.coords, x[::5, [4, 6, 8, 14, 16]], atol=1e-6)
    with pytest.raises(CgdmlError, match="not both"):
        dataset_from_args(parser.parse_args([str(tmp_path / "ds.npz"), "--coords", "c.npy", "--cg-forces", "f.npy"]))
    with pytest.raises(CgdmlError, match="go together"):
        dataset_from_args(parser.parse_args(["--coords", "c.npy"]))
    with pytest.raises(CgdmlError, match="310 K"):
        dataset_from_args(parser.parse_args([str(tmp_path / "ds.npz"), "--temperature", "310"]))
    for extra, message in [(["--map", "ala2-6"], "--map maps all-atom data"), (["--beads", "ala2-5"], "--beads")]:
        with pytest.raises(CgdmlError, match=message):
            dataset_from_args(parser.parse_args([str(tmp_path / "ds.npz"), *extra]))
    ds = dataset_from_args(parser.parse_args(["--map", "ala2-6", "--stride", "50"]))  # the shipped reference
    assert ds.n_beads == 6 and ds.n_frames == 400
