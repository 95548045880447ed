"""Bad input, faults and long runs through the REAL command lines (``python -m cgdml.X``).

Every bad input must end with a non-zero exit status, exactly one line on stderr that names the file or the
problem, no traceback, and no output file (nor temporary file) left behind. Killed fits and simulations must
resume from their checkpoints and give the same result as uninterrupted runs. The bad-input commands are
independent, so they run a few at a time in a thread pool (most of each one's time is Python start-up).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cgdml._io import CgdmlError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "ala2_implicit_300K"
T = 300.0
FIT_SMALL = ["--n-models", "2", "--batch-size", "20", "--mean-set-size", "20", "--sigma1", "2", "--lam1", "1",
             "--sigma2", "2", "--lam2", "0.01", "--folds", "2", "--cv-models", "1", "--quiet"]
SIM_SMALL = ["--replicas", "2", "--steps", "20", "--save-every", "10", "--burn-in", "0", "--no-progress"]
GARBAGE = np.random.default_rng(7).bytes(3000)


# one BLAS thread per command: the commands run side by side, and spinning BLAS threads on a busy machine make a
# 1000 x 1000 Cholesky take seconds instead of milliseconds
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def command(module, *args):
    return [sys.executable, "-m", f"cgdml.{module}", *map(str, args)]


def run(module, *args, timeout=240):
    return subprocess.run(command(module, *args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def run_limited(module, *args, max_file_bytes):
    """The real command line with RLIMIT_FSIZE: writes past ``max_file_bytes`` fail with EFBIG, as on a full disk
    (Python ignores SIGXFSZ, so the write raises OSError instead of killing the process)."""
    code = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
            f"sys.argv = ['cgdml.{module}'] + sys.argv[1:]; runpy.run_module('cgdml.{module}', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=240, cwd=REPO, env=ENV)


def leftovers(path):
    """The file at ``path``, its temporary files (``.NAME.*``) and its fit sidecars, where they exist."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    for extra in (path, path.with_suffix(".json"), Path(str(path) + ".work"), Path(str(path) + ".ckpt.npz")):
        if extra.exists():
            found.append(extra)
    return found


def assert_clean_failure(r, needles, outputs):
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    for out in outputs:
        assert not leftovers(out), leftovers(out)


# ------------------------------------------------------------------------------------------------- inputs

def tiny_model(ds, path, n_train=60, sigma=0.4):
    """A CGModel (prior + GDML on ``n_train`` frames of ``ds``) saved to ``path``."""
    from cgdml.gdml import GDML
    from cgdml.model import CGModel
    from cgdml.prior import HarmonicPrior

    prior = HarmonicPrior().fit(ds.coords, ds.temperature)
    R = ds.coords[:n_train]
    gdml = GDML(sigma=sigma, lam=0.1, relative_lam=True).fit(R, ds.forces[:n_train] - prior.forces(R))
    model = CGModel(gdml.model_, prior, ds.temperature, ds.bead_names, ds.topology_pdb, ds.masses, ds.coords[:40])
    model.save(path)
    return model


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small all-atom data (200 frames of the shipped reference), its 5-bead map, a model, and bad variants."""
    import mdtraj as md

    from cgdml.data import CGDataset
    from cgdml.mapping import map_allatom

    d = tmp_path_factory.mktemp("inputs")
    with np.load(str(SHIPPED) + ".npz") as z:
        x, f = z["positions"][:2000:10], z["forces"][:2000:10]
    top = d / "ala2.pdb"
    top.write_text(Path(str(SHIPPED) + ".pdb").read_text())
    np.save(d / "x.npy", x)
    np.save(d / "f.npy", f)
    np.save(d / "x21.npy", x[:, :21])
    np.save(d / "f_2d.npy", f[..., :2])
    np.save(d / "f_150.npy", f[:150])
    x_nan = x.copy()
    x_nan[[3, 17], 5, 1] = np.nan
    np.save(d / "x_nan.npy", x_nan)
    f_inf = f.copy()
    f_inf[42, 0, 0] = np.inf
    np.save(d / "f_inf.npy", f_inf)
    (d / "garbage.npy").write_bytes(GARBAGE)
    (d / "garbage.pdb").write_bytes(GARBAGE)
    (d / "empty.toml").write_text('[[bead]]\nname = "CA"\nselect = "name XYZ"\n')
    (d / "overlap.toml").write_text('[[bead]]\nname = "CA"\nselect = "resid 1 and name CA"\n'
                                    '[[bead]]\nname = "CB"\nselect = "resid 1 and name CA"\n')
    (d / "badkey.toml").write_text('[[bead]]\nname = "CA"\nselekt = "name CA"\n')
    (d / "syntax.toml").write_text('[[bead]\nname = "CA"\n')

    ds = map_allatom(top, d / "x.npy", d / "f.npy", "ala2-5", temperature=T)
    ds.save(d / "cg.npz")
    np.save(d / "c.npy", ds.coords)
    np.save(d / "g.npy", ds.forces)
    np.save(d / "g_199.npy", ds.forces[:199])
    g_nan = ds.forces.copy()
    g_nan[[8, 9], 1, 2] = np.nan
    np.save(d / "g_nan.npy", g_nan)
    CGDataset.from_arrays(ds.coords[:, :4], ds.forces[:, :4], bead_names=ds.bead_names[:4]).save(d / "four.npz")
    with np.load(d / "cg.npz") as z:
        arrays = dict(z)
    nan_coords = arrays["coords"].copy()
    nan_coords[11] = np.nan
    write_npz(d / "cg_nan.npz", **{**arrays, "coords": nan_coords})
    write_npz(d / "cg_v99.npz", **{**arrays, "format_version": np.int64(99)})
    (d / "garbage.npz").write_bytes(GARBAGE)
    (d / "fit_unknown.toml").write_text("[fit]\nsigma3 = 1.0\n")
    (d / "fit_type.toml").write_text('n_models = "many"\n')
    (d / "fit_syntax.toml").write_text("n_models = = 3\n")
    (d / "fit_range.toml").write_text("cv_holdout = 0\n")

    model = tiny_model(ds, d / "model.npz")
    raw = (d / "model.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    with np.load(d / "model.npz") as z:
        marrays = dict(z)
    write_npz(d / "model_v99.npz", **{**marrays, "format_version": np.int64(99)})
    write_npz(d / "model_novalues.npz", **{k: v for k, v in marrays.items() if k != "gdml/coefficients"})
    write_npz(d / "model_beads.npz", **{**marrays, "bead_names": marrays["bead_names"][:4]})
    write_npz(d / "model_noversion.npz", **{k: v for k, v in marrays.items() if k != "format_version"})

    traj = d / "cg.h5"
    md.Trajectory(ds.coords[:50].astype(np.float32), ds.topology).save_hdf5(str(traj))
    md.Trajectory(ds.coords[:50].astype(np.float32), ds.topology).save_dcd(str(d / "cg.dcd"))
    (d / "garbage.h5").write_bytes(GARBAGE)
    md.Trajectory(ds.coords[:50, :4].astype(np.float32), ds.topology.subset(range(4))).save_hdf5(str(d / "four.h5"))
    (d / "existing_file").write_text("a file, not a directory\n")
    return SimpleNamespace(d=d, ds=ds, model=model, top=top)


# ------------------------------------------------------------------------------------------------- cases
# name -> (module, args, substrings of the one-line message, outputs that must not exist); paths are
# relative to the inputs directory D, O is the case's own (empty) output directory.

def _map(*extra, out="O/cg.npz"):
    return ["--top", "D/ala2.pdb", "--traj", "D/x.npy", "--forces", "D/f.npy", "--map", "ala2-5", "-o", out,
            *extra]


def _with(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _fit(*extra, out="O/model.npz", dataset="D/cg.npz"):
    return [dataset, *FIT_SMALL, "-o", out, *extra]


def _sim(model="D/model.npz", *extra, out="O/t.h5"):
    return [model, "-o", out, *SIM_SMALL, *extra]


CASES = {
    # map: missing/unreadable files, disagreeing inputs, NaN/inf, selections, units, map TOML, outputs
    "map-missing-topology": ("map", _with(_map(), "--top", "D/nope.pdb"), ["nope.pdb", "no such topology"]),
    "map-garbage-topology": ("map", _with(_map(), "--top", "D/garbage.pdb"), ["garbage.pdb"]),
    "map-missing-trajectory": ("map", _with(_map(), "--traj", "D/nope.npy"), ["nope.npy", "no such"]),
    "map-garbage-trajectory": ("map", _with(_map(), "--traj", "D/garbage.npy"),
                               ["garbage.npy", "not a readable positions file (no NumPy .npy content)"]),
    "map-atom-count": ("map", _with(_map(), "--traj", "D/x21.npy"), ["x21.npy", "21 atoms", "22"]),
    "map-forces-shape": ("map", _with(_map(), "--forces", "D/f_2d.npy"), ["f_2d.npy", "shape"]),
    "map-forces-frames": ("map", _with(_map(), "--forces", "D/f_150.npy"), ["f_150.npy", "150 force frames", "200"]),
    "map-nan-coords": ("map", _with(_map(), "--traj", "D/x_nan.npy"), ["x_nan.npy", "NaN or inf", "2 frame(s): 3, 17"]),
    "map-inf-forces": ("map", _with(_map(), "--forces", "D/f_inf.npy"), ["f_inf.npy", "NaN or inf", "frame(s): 42"]),
    "map-empty-selection": ("map", _with(_map(), "--map", "D/empty.toml"), ["empty.toml", "matches no atoms"]),
    "map-overlapping-beads": ("map", _with(_map(), "--map", "D/overlap.toml"), ["overlap.toml", "overlap", "CA"]),
    "map-unknown-length-unit": ("map", _map("--length-unit", "furlong"), ["unknown length unit 'furlong'"]),
    "map-unknown-energy-unit": ("map", _map("--energy-unit", "kcal"), ["unknown energy unit 'kcal'"]),
    "map-toml-unknown-key": ("map", _with(_map(), "--map", "D/badkey.toml"), ["badkey.toml", "'selekt'"]),
    "map-toml-syntax": ("map", _with(_map(), "--map", "D/syntax.toml"), ["syntax.toml", "not valid TOML"]),
    "map-temperature-zero": ("map", _map("--temperature", "0"), ["--temperature must be > 0 K"]),
    "map-premapped-nan-forces": ("map", ["--coords", "D/c.npy", "--cg-forces", "D/g_nan.npy", "-o", "O/cg.npz"],
                                 ["g_nan.npy", "forces contain NaN or inf in 2 frame(s): 8, 9"]),
    "map-premapped-frames": ("map", ["--coords", "D/c.npy", "--cg-forces", "D/g_199.npy", "-o", "O/cg.npz"],
                             ["g_199.npy", "(199, 5, 3)", "(200, 5, 3)"]),
    "map-no-such-outdir": ("map", _map(out="O/nodir/cg.npz"), ["nodir", "does not exist"]),
    "map-file-as-outdir": ("map", _map(out="D/existing_file/cg.npz"), ["existing_file", "not a directory"]),
    "map-unwritable-outdir": ("map", _map(out="/proc/cgdml_test_cg.npz"), ["/proc", "cannot write"]),
    # fit: dataset files, pre-mapped arrays, units, TOML config (naming the key), settings, outputs
    "fit-missing-dataset": ("fit", _fit(dataset="D/nope.npz"), ["nope.npz", "no such CG dataset"]),
    "fit-garbage-dataset": ("fit", _fit(dataset="D/garbage.npz"),
                            ["garbage.npz", "not a readable CG dataset (not a NumPy .npz archive)"]),
    "fit-nan-dataset": ("fit", _fit(dataset="D/cg_nan.npz"), ["cg_nan.npz", "1 frame(s): 11"]),
    "fit-newer-dataset": ("fit", _fit(dataset="D/cg_v99.npz"), ["cg_v99.npz", "version 99", "newer"]),
    "fit-premapped-frames": ("fit", [*FIT_SMALL, "--coords", "D/c.npy", "--cg-forces", "D/g_199.npy", "-o",
                                     "O/model.npz"], ["g_199.npy", "do not match"]),
    "fit-premapped-temperature": ("fit", [*FIT_SMALL, "--coords", "D/c.npy", "--cg-forces", "D/g.npy",
                                          "--temperature", "-5", "-o", "O/model.npz"], ["--temperature must be > 0"]),
    "fit-config-unknown-key": ("fit", _fit("--config", "D/fit_unknown.toml"), ["fit_unknown.toml", "'sigma3'"]),
    "fit-config-wrong-type": ("fit", _fit("--config", "D/fit_type.toml"), ["fit_type.toml", "'n_models'", "int"]),
    "fit-config-syntax": ("fit", _fit("--config", "D/fit_syntax.toml"), ["fit_syntax.toml", "invalid TOML"]),
    "fit-config-out-of-range": ("fit", _fit("--config", "D/fit_range.toml"),
                                ["'cv_holdout'", "fit_range.toml", "got 0"]),
    "fit-missing-config": ("fit", _fit("--config", "D/nope.toml"), ["nope.toml", "no such config"]),
    "fit-zero-models": ("fit", _fit("--n-models", "0"), ["--n-models must be >= 1"]),
    "fit-no-such-outdir": ("fit", _fit(out="O/nodir/model.npz"), ["nodir", "does not exist"]),
    "fit-file-as-outdir": ("fit", _fit(out="D/existing_file/model.npz"), ["existing_file", "not a directory"]),
    "fit-unwritable-outdir": ("fit", _fit(out="/proc/cgdml_test_model.npz"), ["/proc", "cannot write"]),
    # simulate: model files, start dataset, settings, outputs
    "sim-missing-model": ("simulate", _sim("D/nope.npz"), ["nope.npz", "no such cgdml model file"]),
    "sim-garbage-model": ("simulate", _sim("D/garbage.npz"),
                          ["garbage.npz", "not a readable cgdml model file (not a NumPy .npz archive)"]),
    "sim-truncated-model": ("simulate", _sim("D/truncated.npz"), ["truncated.npz", "not a readable cgdml model"]),
    "sim-corrupt-model": ("simulate", _sim("D/model_novalues.npz"), ["model_novalues.npz", "coefficients"]),
    "sim-unversioned-model": ("simulate", _sim("D/model_noversion.npz"), ["model_noversion.npz", "format_version"]),
    "sim-newer-model": ("simulate", _sim("D/model_v99.npz"), ["model_v99.npz", "version 99", "newer"]),
    "sim-inconsistent-model": ("simulate", _sim("D/model_beads.npz"), ["model_beads.npz", "5 beads", "4 bead names"]),
    "sim-dataset-as-model": ("simulate", _sim("D/cg.npz"), ["cg.npz", "not a cgdml model file"]),
    "sim-start-bead-count": ("simulate", _sim("D/model.npz", "--start", "D/four.npz"), ["four.npz", "4 beads", "5"]),
    "sim-start-nan": ("simulate", _sim("D/model.npz", "--start", "D/cg_nan.npz"), ["cg_nan.npz", "frame(s): 11"]),
    "sim-start-missing": ("simulate", _sim("D/model.npz", "--start", "D/nope.npz"), ["nope.npz", "no such"]),
    "sim-temperature-zero": ("simulate", _sim("D/model.npz", "--temperature", "0"), ["--temperature must be > 0"]),
    "sim-negative-steps": ("simulate", _sim("D/model.npz", "--steps", "-5"), ["--steps must be >= 1, got -5"]),
    "sim-sidecar-over-fit-summary": ("simulate", _sim("D/model.npz", out="D/model.h5"),
                                     ["model.json", "would overwrite the fit summary"]),
    "sim-negative-replicas": ("simulate", _sim("D/model.npz", "--replicas", "-3"), ["--replicas must be >= 1"]),
    "sim-steps-not-a-number": ("simulate", _sim("D/model.npz", "--steps", "many"), ["--steps", "'many'"]),
    "sim-missing-output-option": ("simulate", ["D/model.npz"], ["-o/--output"]),
    "sim-no-such-outdir": ("simulate", _sim(out="O/nodir/t.h5"), ["nodir", "does not exist"]),
    "sim-file-as-outdir": ("simulate", _sim(out="D/existing_file/t.h5"), ["existing_file", "not a directory"]),
    "sim-unwritable-outdir": ("simulate", _sim(out="/proc/cgdml_test_t.h5"), ["/proc", "cannot write"]),
    # fes: trajectories, topology, reference, options, outputs
    "fes-missing-trajectory": ("fes", ["D/nope.h5", "-o", "O/fes.png"], ["nope.h5", "no such trajectory"]),
    "fes-garbage-trajectory": ("fes", ["D/garbage.h5", "-o", "O/fes.png"],
                               ["garbage.h5", "cannot read trajectory (not an HDF5 file)"]),
    "fes-dcd-without-topology": ("fes", ["D/cg.dcd", "-o", "O/fes.png"], ["cg.dcd", "give --top"]),
    "fes-cv-bead-missing": ("fes", ["D/four.h5", "--cv", "distance:0,9", "-o", "O/fes.png"], ["bead 9 does not exist"]),
    "fes-reference-bead-count": ("fes", ["D/cg.h5", "--reference", "D/four.npz", "-o", "O/fes.png", "--json",
                                         "O/m.json"], ["four.npz", "4 beads", "5"]),
    "fes-garbage-reference": ("fes", ["D/cg.h5", "--reference", "D/garbage.npz", "-o", "O/fes.png"],
                              ["garbage.npz", "not a readable CG dataset"]),
    "fes-one-bin": ("fes", ["D/cg.h5", "--bins", "1", "-o", "O/fes.png"], ["--bins must be >= 2"]),
    "fes-no-such-outdir": ("fes", ["D/cg.h5", "-o", "O/nodir/fes.png"], ["nodir", "does not exist"]),
    "fes-file-as-json-dir": ("fes", ["D/cg.h5", "-o", "O/fes.png", "--json", "D/existing_file/m.json"],
                             ["existing_file", "not a directory"]),
    "fes-unwritable-outdir": ("fes", ["D/cg.h5", "-o", "/proc/cgdml_test_fes.png"], ["/proc", "cannot write"]),
    # reference (OpenMM): settings are checked before the run directory is created
    "reference-temperature-zero": ("reference", ["-o", "O/run", "--temperature", "0"], ["temperature must be > 0"]),
    "reference-zero-timestep": ("reference", ["-o", "O/run", "--timestep-fs", "0"], ["--timestep-fs must be > 0"]),
    "reference-unknown-platform": ("reference", ["-o", "O/run", "--platform", "Abacus"], ["'Abacus'", "available"]),
    "reference-file-as-outdir": ("reference", ["-o", "D/existing_file/run", "--ns", "0.001"],
                                 ["existing_file/run", "cannot create"]),
}
# outputs each case must leave absent (besides everything under its own directory O, checked to stay empty)
OUTPUTS = {"map-unwritable-outdir": ["/proc/cgdml_test_cg.npz"],
           "fit-unwritable-outdir": ["/proc/cgdml_test_model.npz"],
           "sim-unwritable-outdir": ["/proc/cgdml_test_t.h5"], "fes-unwritable-outdir": ["/proc/cgdml_test_fes.png"]}


def _resolve(arg, d, o):
    return str(d / arg[2:]) if arg.startswith("D/") else str(o / arg[2:]) if arg.startswith("O/") else arg


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
    """Run every case (a few at a time) once; name -> (CompletedProcess, its output directory)."""
    root = tmp_path_factory.mktemp("cases")

    def one(name):
        module, args, _ = CASES[name]
        o = root / name
        o.mkdir()
        return name, run(module, *[_resolve(a, inputs.d, o) for a in args]), o

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {name: (r, o) for name, r, o in pool.map(one, CASES)}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clean_line(results, inputs, name):
    r, o = results[name]
    before = sorted(p.name for p in inputs.d.iterdir())
    assert_clean_failure(r, CASES[name][2], OUTPUTS.get(name, []))
    assert not list(o.iterdir()), f"{name} left {list(o.iterdir())} behind"
    assert sorted(p.name for p in inputs.d.iterdir()) == before
    if name.startswith(("sim-", "fit-")):
        assert r.returncode == 2                                        # CgdmlError, not a crash


def test_inputs_directory_is_untouched(results, inputs):
    """No case wrote anything next to its inputs (temp files, checkpoints, work directories)."""
    stray = [p.name for p in inputs.d.iterdir() if p.name.startswith(".") or p.name.endswith((".work", ".ckpt.npz"))]
    assert not stray


def test_good_inputs_work(inputs, tmp_path):
    """The inputs the cases spoil are good as given: the map and simulate commands succeed on them."""
    r = run("map", *[_resolve(a, inputs.d, tmp_path) for a in _map()])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cg.npz").stat().st_mode & 0o044, "atomic writes must honour the umask, not mkstemp's 0600"


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not restrict root (the /proc and file-as-directory "
                    "cases cover unwritable outputs)")
def test_read_only_directory(inputs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run("simulate", *[_resolve(a, inputs.d, ro) for a in _sim()])
        assert_clean_failure(r, ["t.h5", "cannot write", "Permission denied"], [ro / "t.h5"])
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------------- full disk

def test_full_disk_through_the_command_line(inputs, tmp_path):
    """A write that fails part-way (file size limit: EFBIG, as ENOSPC on a full disk) leaves no file."""
    out = tmp_path / "cg.npz"
    r = run_limited("map", *[_resolve(a, inputs.d, tmp_path) for a in _map()], max_file_bytes=4096)
    assert_clean_failure(r, ["cg.npz", "write failed", "File too large"], [out])
    assert not list(tmp_path.iterdir())


def test_full_disk_in_process(tmp_path, monkeypatch):
    """ENOSPC while writing: atomic_path removes the temp file, keeps an older file and names the path."""
    import errno

    from cgdml import _io
    from cgdml.data import CGDataset

    ds = CGDataset.from_arrays(0.1 * np.random.default_rng(0).normal(size=(5, 3, 3)), np.zeros((5, 3, 3)))
    old = tmp_path / "ds.npz"
    old.write_bytes(b"previous version")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_io.np, "savez_compressed", full)
    with pytest.raises(CgdmlError, match=r"ds.npz: write failed \(No space left on device\)"):
        ds.save(old)
    assert old.read_bytes() == b"previous version" and [p.name for p in tmp_path.iterdir()] == ["ds.npz"]
    with pytest.raises(CgdmlError, match="new.json: write failed"):
        with _io.atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [p.name for p in tmp_path.iterdir()] == ["ds.npz"]


# ------------------------------------------------------------------------------------------------- kill + resume

def _kill_when(proc, pattern_dir, glob, timeout=120):
    """SIGKILL ``proc`` as soon as a file matching ``glob`` (not a temp file) appears in ``pattern_dir``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before a checkpoint appeared: "
                        f"{proc.stderr.read()[-2000:]}")
        if pattern_dir.is_dir() and any(not p.name.startswith(".") for p in pattern_dir.glob(glob)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint appeared")


@pytest.fixture(scope="module")
def fit_data(inputs, tmp_path_factory):
    """400 frames of the shipped reference, mapped, so that layer-1 training takes a few seconds."""
    from cgdml.mapping import map_allatom

    d = tmp_path_factory.mktemp("fitdata")
    with np.load(str(SHIPPED) + ".npz") as z:
        np.save(d / "x.npy", z["positions"][:20000:50])
        np.save(d / "f.npy", z["forces"][:20000:50])
    map_allatom(inputs.top, d / "x.npy", d / "f.npy", "ala2-5", temperature=T).save(d / "cg.npz")
    return d / "cg.npz"


def _models_trained(stderr):
    """Layer-1 and layer-2 GDML models trained in a run, from the totals its progress bars start with."""
    return sum(int(n) for n in re.findall(r"(?:CV layer 1|layer 1|CV layer 2): +0%\|[^|\r\n]*\| 0/(\d+)", stderr))


def test_killed_fit_resumes_from_its_checkpoints(fit_data, tmp_path):
    """SIGKILL a fit once layer-1 checkpoints exist; the same command then trains only what is missing and gives
    the model of an uninterrupted run. (Layer 1 is checkpointed per batch of sub-models, one batch per CV candidate.)"""
    from threadpoolctl import threadpool_limits

    from cgdml.data import CGDataset
    from cgdml.ensemble import TwoLayerGDML
    from cgdml.model import CGModel

    args = [fit_data, "--n-models", 4, "--batch-size", 120, "--mean-set-size", 100, "--sigma1", 2, "--lam1", 1, 10,
            "--sigma2", 2, "--lam2", 0.01, 0.1, "--folds", 2, "--cv-models", 1, "--seed", 3]
    # the uninterrupted fit, in this process (the command line is a thin shell over it)
    work_clean = tmp_path / "clean.work"
    with threadpool_limits(1):
        clean = TwoLayerGDML(n_models=4, batch_size=120, mean_set_size=100, sigma1=[2.0], lam1=[1.0, 10.0],
                             sigma2=[2.0], lam2=[0.01, 0.1], n_folds=2, cv_models=1, seed=3, workdir=work_clean,
                             progress=False).fit(CGDataset.load(fit_data)).model_
    trained_clean = len(list(work_clean.glob("l[12]_*.npz")))
    assert trained_clean == 4 + 2 + 4                  # CV layer 1, the rest of layer 1, CV layer 2

    out = tmp_path / "model.npz"
    work = Path(str(out) + ".work")
    proc = subprocess.Popen(command("fit", *args, "-o", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=ENV)
    _kill_when(proc, work, "l1_*.npz")
    assert not out.exists()
    cached = [p for p in work.glob("*.npz") if not p.name.startswith(".")]
    assert len(cached) >= 1
    r = run("fit", *args, "-o", out)                                    # the same command
    assert r.returncode == 0, r.stderr
    assert f"resuming from {len(cached)} checkpoint file(s)" in r.stdout, r.stdout
    assert _models_trained(r.stderr) == trained_clean - len(cached)    # only the missing models were trained
    assert not work.exists() and not [p for p in leftovers(out) if p.name.startswith(".")]

    a, b = clean, CGModel.load(out)
    assert a.info["chosen"] == b.info["chosen"]
    R = a.train_coords_sample[:20]
    np.testing.assert_allclose(b.forces(R), a.forces(R), rtol=1e-9, atol=1e-9 * np.abs(a.forces(R)).max())
    np.testing.assert_array_equal(b.gdml.train_descriptors, a.gdml.train_descriptors)


def test_killed_simulation_resumes_bit_for_bit(inputs, tmp_path):
    import mdtraj as md

    args = [inputs.d / "model.npz", "--replicas", 4, "--steps", 6000, "--save-every", 20, "--burn-in", 1000,
            "--checkpoint-every", 500, "--seed", 5, "--no-progress"]
    from cgdml.simulate.__main__ import main

    clean = tmp_path / "clean.h5"                                       # uninterrupted, in this process
    assert main([str(a) for a in args] + ["-o", str(clean)]) == 0

    out = tmp_path / "t.h5"
    ckpt = tmp_path / "t.h5.ckpt.npz"
    proc = subprocess.Popen(command("simulate", *args, "-o", out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    _kill_when(proc, tmp_path, ckpt.name)
    assert not out.exists()
    r = run("simulate", *args, "-o", out)
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["timings"]["resumed_from_step"] >= 500
    assert not ckpt.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    a, b = md.load(str(clean)), md.load(str(out))
    assert a.n_frames == 4 * 250
    assert np.array_equal(a.xyz, b.xyz) and np.array_equal(a.time, b.time)


# ------------------------------------------------------------------------------------------------- far from training

def test_simulate_warns_about_starts_far_from_training(inputs, tmp_path, capsys):
    """Mirror images (D-alanine) of training frames lie outside the model's data: simulate warns, in one line
    each, about the start and the final configurations, and still runs."""
    from cgdml._cli import run_cli
    from cgdml.data import CGDataset
    from cgdml.simulate.__main__ import main

    ds, model = inputs.ds, inputs.model
    mirror = CGDataset(ds.coords * np.array([1.0, 1.0, -1.0]), ds.forces, ds.bead_names, ds.temperature,
                       ds.topology_pdb, masses=ds.masses)
    assert (model.gdml.nearest_train_distance(mirror.coords[:40]) > 3 * model.gdml.sigma).mean() > 0.9
    assert not model.out_of_range(model.train_coords_sample).any()
    mirror.save(tmp_path / "mirror.npz")
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(inputs.d / "model.npz"), "-o", str(tmp_path / "m.h5"), "--start",
                       str(tmp_path / "mirror.npz"), "--replicas", "8", "--steps", "200", "--save-every", "10",
                       "--burn-in", "0", "--no-progress"])
    assert exit_.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any(re.fullmatch(r"warning: \d+ of 8 start configurations \(from .*mirror.npz\) lie more than 3 sigma.*",
                            line) for line in err), err
    assert any(line.startswith("warning: ") and "final replica configurations" in line for line in err), err
    assert all(line.startswith("warning: ") for line in err), err
    assert (tmp_path / "m.h5").exists()

    # started from its own training sample the model does not warn
    with pytest.raises(SystemExit):
        run_cli(main, [str(inputs.d / "model.npz"), "-o", str(tmp_path / "own.h5"), "--replicas", "4",
                       "--steps", "20", "--save-every", "10", "--burn-in", "0", "--no-progress"])
    assert "start configurations" not in capsys.readouterr().err
