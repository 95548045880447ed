"""Bad input, faults and long runs through the REAL command lines (``python -m cgdml.X``).

Every bad input must end with a non-zero exit status, exactly one line on stderr that names the file or the
problem, no traceback, and no output file (nor temporary file) left behind. Killed fits and simulations must
resume from their checkpoints and give the same result as uninterrupted runs. The bad-input commands are
independent, so they run a few at a time in a thread pool (most of each one's time is Python start-up).
"""
import hashlib
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
FIT_SMALL = ["--method", "two-layer", "--n-models", "2", "--batch-size", "20", "--mean-set-size", "20", "--sigma1", "2",
             "--lam1", "1",
             "--sigma2", "2", "--lam2", "0.01", "--folds", "2", "--cv-models", "1", "--quiet"]
SIM_SMALL = ["--replicas", "2", "--steps", "20", "--save-every", "10", "--burn-in", "0", "--no-progress"]
SIM_CKPT = [*SIM_SMALL, "--checkpoint-every", "5", "--slow-every", "1"]   # plain BAOAB: one force call per step
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
    from cgdml.prior import CGPrior

    prior = CGPrior().fit(ds.coords, ds.temperature)
    R = ds.coords[:n_train]
    gdml = GDML(sigma=sigma, lam=0.1, relative_lam=True).fit(R, ds.forces[:n_train] - prior.forces(R))
    model = CGModel(gdml.model_, prior, ds.system, ds.coords[:40])
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

    # damaged fields (each a one-line error naming the file and the field)
    write_npz(d / "cg_hot.npz", **{**arrays, "temperature": np.array("hot")})
    write_npz(d / "model_nomasses.npz", **{k: v for k, v in marrays.items() if k != "masses"})
    write_npz(d / "model_hot.npz", **{**marrays, "temperature": np.array("hot")})
    coefficients = marrays["gdml/coefficients"].copy()
    coefficients[0, 0] = np.nan
    write_npz(d / "model_nan.npz", **{**marrays, "gdml/coefficients": coefficients})
    # too few distinct frames for a fit (and for the optimal force map)
    ds.subset([0]).save(d / "one.npz")
    ds.subset([0, 1]).save(d / "two.npz")
    ds.subset(np.zeros(50, dtype=int)).save(d / "same.npz")
    ds.subset(np.arange(12)).save(d / "twelve.npz")
    np.save(d / "x1.npy", x[:1])
    np.save(d / "f1.npy", f[:1])
    with pytest.warns(UserWarning, match="chain"):
        CGDataset.from_arrays(ds.coords[:, ::-1], ds.forces[:, ::-1], bead_names=ds.bead_names[::-1],
                              temperature=T).save(d / "cg_reversed.npz")
    # files that other cgdml commands wrote for other outputs, and foreign files, at sidecar and output paths
    from cgdml._cli import with_provenance

    (d / "fitted.json").write_text(json.dumps(with_provenance({"method": "two-layer GDML"}, "cgdml.fit",
                                                              "fitted.npz")))
    (d / "other.json").write_text(json.dumps(with_provenance({"trajectory": "other.dcd"}, "cgdml.simulate",
                                                             "other.dcd")))
    (d / "notes.json").write_text('{"my": "notes"}\n')
    (d / "aa.pdb").write_text(top.read_text())                        # an all-atom PDB, not an input
    np.savez(d / "raw.npz", positions=x[:5])
    # fit checkpoints: a damaged manifest, and a checkpoint of this very fit (FIT_SMALL) with a missing field
    from cgdml.pipeline import cg_estimator

    (d / "badmanifest.npz.work").mkdir()
    (d / "badmanifest.npz.work" / "manifest.json").write_text('{"finger": "print"}\n')
    work = d / "badckpt.npz.work"
    work.mkdir()
    # the learner's fingerprint of the data FIT_SMALL fits (the saved dataset, residual forces, strata) and settings
    learner, R, F, groups = cg_estimator("two-layer", n_models=2, batch_size=20, mean_set_size=20, sigma1=[2.0],
                                         lam1=[1.0], sigma2=[2.0], lam2=[0.01], n_folds=2,
                                         cv_models=1)._prepare(CGDataset.load(d / "cg.npz"))
    fingerprint = learner._fingerprint(R, F, groups)
    (work / "manifest.json").write_text(json.dumps({"fingerprint": fingerprint}))
    np.savez(work / "l1_s2_l1_f-1_m0.npz", held=np.zeros((20, 5, 3), dtype=np.float32))
    # simulation checkpoints of SIM_CKPT runs, damaged: an interrupted run's checkpoint, edited
    from cgdml.model import CGModel
    from cgdml.simulate.__main__ import main as simulate_main

    real, calls = CGModel.forces, {"n": 0}

    def interrupted(self, R):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real(self, R)

    CGModel.forces = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            simulate_main([str(d / "model.npz"), "-o", str(d / "ck.h5"), *SIM_CKPT])
    finally:
        CGModel.forces = real
    with np.load(d / "ck.h5.ckpt.npz") as z:
        ck = dict(z)
    assert int(ck["step"]) == 10
    write_npz(d / "ck_rng.h5.ckpt.npz", **{**ck, "rng_state": np.array('{"bit_generator": "PCG64"}')})
    write_npz(d / "ck_novel.h5.ckpt.npz", **{k: v for k, v in ck.items() if k != "velocities"})
    (d / "ck.h5.ckpt.npz").unlink()

    traj = d / "cg.h5"
    md.Trajectory(ds.coords[:50].astype(np.float32), ds.topology).save_hdf5(str(traj))
    md.Trajectory(ds.coords[:50].astype(np.float32), ds.topology).save_dcd(str(d / "cg.dcd"))
    (d / "garbage.h5").write_bytes(GARBAGE)
    md.Trajectory(ds.coords[:50, :4].astype(np.float32), ds.topology.subset(range(4))).save_hdf5(str(d / "four.h5"))
    md.Trajectory(ds.coords[:1].astype(np.float32), ds.topology).save_hdf5(str(d / "one.h5"))
    (d / "existing_file").write_text("a file, not a directory\n")
    return SimpleNamespace(d=d, ds=ds, model=model, top=top, snapshot=snapshot(d))


def snapshot(directory):
    """{relative path: sha256} of every file under ``directory``: inputs must stay byte for byte the same."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


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
    # numbers on the command line: finite and in range, the option named
    "sim-seed-negative": ("simulate", _sim("D/model.npz", "--seed", "-1"), ["--seed must be >= 0", "-1"]),
    "fit-seed-negative": ("fit", _fit("--seed", "-1"), ["--seed must be >= 0", "-1"]),
    "reference-seed-negative": ("reference", ["-o", "O/run", "--seed", "-1"], ["--seed must be >= 0"]),
    "sim-dt-inf": ("simulate", _sim("D/model.npz", "--dt", "inf"), ["--dt must be a finite number", "'inf'"]),
    "sim-dt-nan": ("simulate", _sim("D/model.npz", "--dt", "nan"), ["--dt must be a finite number", "'nan'"]),
    "sim-dt-zero": ("simulate", _sim("D/model.npz", "--dt", "0"), ["--dt must be > 0"]),
    "sim-temperature-inf": ("simulate", _sim("D/model.npz", "--temperature", "inf"),
                            ["--temperature must be a finite number"]),
    "map-temperature-inf": ("map", _map("--temperature", "inf"), ["--temperature must be a finite number"]),
    "fit-premapped-temperature-nan": ("fit", [*FIT_SMALL, "--coords", "D/c.npy", "--cg-forces", "D/g.npy",
                                              "--temperature", "nan", "-o", "O/model.npz"],
                                      ["--temperature must be a finite number"]),
    "sim-friction-inf": ("simulate", _sim("D/model.npz", "--friction", "inf"), ["--friction must be a finite number"]),
    "sim-blowup-factor-nan": ("simulate", _sim("D/model.npz", "--blowup-factor", "nan"),
                              ["--blowup-factor must be a finite number"]),
    "fit-sigma-inf": ("fit", _fit("--sigma1", "2", "inf"), ["--sigma1 must be a finite number", "'inf'"]),
    "reference-ns-inf": ("reference", ["-o", "O/run", "--ns", "inf"], ["--ns must be a finite number"]),
    "reference-temperature-inf": ("reference", ["-o", "O/run", "--temperature", "inf"],
                                  ["--temperature must be a finite number"]),
    "map-chunk-zero": ("map", _map("--chunk", "0"), ["--chunk must be >= 1"]),
    "fit-n-frames-zero": ("fit", _fit("--method", "single", "--n-frames", "0"), ["--n-frames must be >= 1"]),
    "fit-folds-one-with-grid": ("fit", _fit("--lam2", "0.01", "0.1", "--folds", "1"),
                                ["--folds", "must be >= 2", "lam2", "got 1"]),
    # too few distinct frames: refused before the fit, naming the count
    "fit-one-frame": ("fit", _fit(dataset="D/one.npz"), ["one.npz", "1 distinct frame(s)", "at least 10"]),
    "fit-two-frames": ("fit", _fit(dataset="D/two.npz"), ["two.npz", "2 distinct frame(s)", "at least 10"]),
    "fit-identical-frames": ("fit", _fit(dataset="D/same.npz"), ["same.npz", "1 distinct frame(s) among its 50"]),
    "fit-five-folds-two-frames": ("fit", _fit("--folds", "5", "--lam2", "0.01", "0.1", dataset="D/two.npz"),
                                  ["two.npz", "2 distinct frame(s)"]),
    "fit-ten-folds-twelve-frames": ("fit", _fit("--folds", "10", "--lam2", "0.01", "0.1", dataset="D/twelve.npz"),
                                    ["twelve.npz", "12 distinct frame(s)", "at least 20", "10 folds"]),
    "fit-single-one-frame": ("fit", ["D/one.npz", "--method", "single", "--quiet", "-o", "O/model.npz"],
                             ["one.npz", "1 distinct"]),
    "fit-nystrom-two-frames": ("fit", ["D/two.npz", "--method", "nystrom", "--quiet", "-o", "O/model.npz"],
                               ["two.npz", "2 distinct"]),
    # options that the chosen method does not take: refused, naming the option as typed
    "fit-option-not-for-method": ("fit", _fit("--method", "single"), ["--n-models", "does not apply", "single fit"]),
    "fit-option-not-for-auto": ("fit", ["D/cg.npz", "--sigma1", "2", "-o", "O/model.npz"],
                                ["--sigma1 does not apply to the nystrom fit", "--method auto"]),
    "map-optimal-one-frame": ("map", _with(_with(_map("--force-map", "optimal"), "--traj", "D/x1.npy"),
                                           "--forces", "D/f1.npy"),
                              ["optimal force map needs at least", "got 1"]),
    # damaged fields of the files cgdml reads: the file and the field named
    "fit-dataset-text-temperature": ("fit", _fit(dataset="D/cg_hot.npz"), ["cg_hot.npz", "'temperature'"]),
    "fes-reference-text-temperature": ("fes", ["D/cg.h5", "--reference", "D/cg_hot.npz", "-o", "O/fes.png"],
                                       ["cg_hot.npz", "'temperature'"]),
    "sim-model-missing-masses": ("simulate", _sim("D/model_nomasses.npz"),
                                 ["model_nomasses.npz", "missing field 'masses'"]),
    "sim-model-text-temperature": ("simulate", _sim("D/model_hot.npz"), ["model_hot.npz", "'temperature'"]),
    "sim-model-nan-coefficients": ("simulate", _sim("D/model_nan.npz"),
                                   ["model_nan.npz", "'gdml/coefficients'", "NaN"]),
    "fit-damaged-manifest": ("fit", _fit(out="D/badmanifest.npz"),
                             ["badmanifest.npz.work/manifest.json", "missing field 'fingerprint'"]),
    "fit-damaged-checkpoint": ("fit", _fit(out="D/badckpt.npz"),
                               ["l1_s2_l1_f-1_m0.npz", "missing field 'final'", "delete it"]),
    "sim-checkpoint-bad-rng-state": ("simulate", _sim("D/model.npz", *SIM_CKPT[-4:], out="D/ck_rng.h5"),
                                     ["ck_rng.h5.ckpt.npz", "'rng_state'"]),
    "sim-checkpoint-missing-key": ("simulate", _sim("D/model.npz", *SIM_CKPT[-4:], out="D/ck_novel.h5"),
                                   ["ck_novel.h5.ckpt.npz", "missing field 'velocities'"]),
    "fes-reference-bead-order": ("fes", ["D/cg.h5", "--reference", "D/cg_reversed.npz", "-o", "O/fes.png"],
                                 ["cg_reversed.npz", "bead order"]),
    # no command writes over a file another cgdml command wrote for another output, nor over a foreign file
    "sim-sidecar-over-other-fit-summary": ("simulate", _sim("D/model.npz", out="D/fitted.h5"),
                                           ["fitted.json", "fit summary of fitted.npz", "cgdml.fit"]),
    "sim-sidecar-over-other-run": ("simulate", _sim("D/model.npz", out="D/other.h5"),
                                   ["other.json", "sidecar of other.dcd", "cgdml.simulate"]),
    "sim-sidecar-over-foreign-json": ("simulate", _sim("D/model.npz", out="D/notes.h5"),
                                      ["notes.json", "not written by cgdml.simulate", "move or delete it"]),
    "sim-over-foreign-trajectory": ("simulate", _sim("D/model.npz", out="D/cg.h5"), ["cg.h5", "no sidecar"]),
    "fes-json-over-fit-summary": ("fes", ["D/cg.h5", "-o", "O/fes.png", "--json", "D/fitted.json"],
                                  ["fitted.json", "fit summary of fitted.npz"]),
    "fit-summary-over-other-run": ("fit", _fit(out="D/other.npz"), ["other.json", "sidecar of other.dcd"]),
    "fit-over-dataset": ("fit", _fit(out="D/four.npz"), ["four.npz", "is a CG dataset, not a cgdml model"]),
    "map-over-model": ("map", _map(out="D/model.npz"), ["model.npz", "is a cgdml model, not a CG dataset"]),
    "map-over-foreign-npz": ("map", _map(out="D/raw.npz"), ["raw.npz", "not a file cgdml writes"]),
    "map-pdb-over-foreign-pdb": ("map", _map(out="D/aa.npz"), ["aa.pdb", "not written by cgdml.map"]),
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
    assert_clean_failure(r, CASES[name][2], OUTPUTS.get(name, []))
    assert not list(o.iterdir()), f"{name} left {list(o.iterdir())} behind"
    assert r.returncode == 2                                            # CgdmlError, not a crash


def test_inputs_directory_is_untouched(results, inputs):
    """No case changed, removed or added a byte next to its inputs (outputs, sidecars, temp, lock and checkpoint
    files, work directories), though many cases name outputs there."""
    assert snapshot(inputs.d) == inputs.snapshot
    assert sorted(p.name for p in inputs.d.rglob(".*")) == []


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


def test_full_disk_at_the_lock_names_the_path(inputs, tmp_path, monkeypatch):
    """ENOSPC on the few bytes of the lock file (the first write of every command): one line naming the output,
    exit 2, and no lock file left behind, in process and through the command line (EFBIG at a 1-byte limit)."""
    import errno

    from cgdml.map import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    args = [_resolve(a, inputs.d, tmp_path) for a in _map()]
    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", full)
        with pytest.raises(CgdmlError, match=r"cg.npz: cannot write the lock file .*\(No space left on device\); "
                                             r"nothing was written"):
            main(args)
    assert not list(tmp_path.iterdir())
    # the temporary PDB of the CG topology, on a full temporary disk: the directory is named
    import tempfile

    import mdtraj as md

    with monkeypatch.context() as m:
        m.setattr(md.Trajectory, "save_pdb", full)
        with pytest.raises(CgdmlError, match=rf"{re.escape(tempfile.gettempdir())}: cannot write a temporary file "
                                             r"\(No space left on device\); free space there or set TMPDIR"):
            main(args)
    assert not list(tmp_path.iterdir())
    r = run_limited("map", *args, max_file_bytes=1)       # every file write fails (the lock's bytes are cut to 1)
    assert_clean_failure(r, ["File too large"], [tmp_path / "cg.npz"])
    assert re.match(r"error: /\S+: ", r.stderr) and r.returncode == 2 and not list(tmp_path.iterdir()), r.stderr


def test_export_on_a_full_disk_leaves_no_directory(inputs, tmp_path):
    """The disk fills after topology.pdb: export removes what it wrote and the directory it created (a rerun would
    take a half-written directory for another tool's), and the rerun with room succeeds."""
    pytest.importorskip("openmm")
    out = tmp_path / "omm"
    r = run_limited("export", inputs.d / "model.npz", "-o", out, max_file_bytes=4096)
    assert_clean_failure(r, ["system.xml", "write failed", "File too large"], [])
    assert r.returncode == 2 and not list(tmp_path.iterdir()), list(tmp_path.iterdir())
    r = run("export", inputs.d / "model.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "system.xml", "topology.pdb"]


def test_units_with_a_dataset_are_refused(inputs, tmp_path):
    """A dataset file (and the shipped reference) carries its units: --length-unit/--energy-unit with it would do
    nothing, so they are refused, not ignored."""
    cases = [("fit", [inputs.d / "cg.npz", "--length-unit", "angstrom", "-o", tmp_path / "m1.npz"],
              ["--length-unit describes raw input arrays", "cg.npz carries its own units", "leave it out"]),
             ("fit", [inputs.d / "cg.npz", "--length-unit", "nm", "--energy-unit", "kcal/mol",
                      "-o", tmp_path / "m2.npz"],
              ["--length-unit and --energy-unit describe raw input arrays", "leave them out"]),
             ("fit", ["--energy-unit", "kcal/mol", "-o", tmp_path / "m3.npz"], ["the shipped reference"]),
             ("map", ["--length-unit", "angstrom", "-o", tmp_path / "cg.npz"], ["the shipped reference"])]
    for module, args, needles in cases:
        r = run(module, *args)
        assert_clean_failure(r, needles, [])
        assert r.returncode == 2
    assert not list(tmp_path.iterdir())


def test_a_directory_or_file_in_the_wrong_place_exits_2(inputs, tmp_path):
    """A directory given as the TOML map or fit config, and a file where the fit keeps its work directory: one line
    and exit 2 (a user mistake), not exit 1; the file is left as it was."""
    (tmp_path / "maps").mkdir()
    work = tmp_path / "model.npz.work"
    work.write_text("my notes")
    cases = [("map", _with(_map(out=str(tmp_path / "cg.npz")), "--map", str(tmp_path / "maps")),
              ["maps: is a directory, not a map file"]),
             ("fit", _fit("--config", str(tmp_path / "maps"), out=str(tmp_path / "m.npz")),
              ["maps: is a directory, not a TOML config file"]),
             ("fit", _fit(out=str(tmp_path / "model.npz")),
              ["model.npz.work: exists and is not a directory", "move or delete it"])]
    for module, args, needles in cases:
        r = run(module, *[_resolve(a, inputs.d, tmp_path) for a in args])
        assert_clean_failure(r, needles, [])
        assert r.returncode == 2, (module, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "model.npz.work"]
    assert work.read_text() == "my notes"


def test_a_truncated_checkpoint_names_the_file_and_says_to_delete_it(inputs, tmp_path):
    """A checkpoint cut short (a disk that filled during a copy): simulate and fit name the file and say to delete
    it; the simulation rerun after deleting it runs."""
    import shutil

    raw = (inputs.d / "ck_novel.h5.ckpt.npz").read_bytes()
    ckpt = tmp_path / "ck.h5.ckpt.npz"
    ckpt.write_bytes(raw[: len(raw) // 2])
    args = [_resolve(a, inputs.d, tmp_path) for a in _sim("D/model.npz", *SIM_CKPT[-4:], out="O/ck.h5")]
    r = run("simulate", *args)
    assert_clean_failure(r, ["ck.h5.ckpt.npz: not a readable simulation checkpoint", "delete it to start afresh"], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5.ckpt.npz"]       # kept, for the user to judge
    ckpt.unlink()
    assert run("simulate", *args).returncode == 0
    work = tmp_path / "badckpt.npz.work"
    shutil.copytree(inputs.d / "badckpt.npz.work", work)
    part = work / "l1_s2_l1_f-1_m0.npz"
    part.write_bytes(part.read_bytes()[:100])
    r = run("fit", *[_resolve(a, inputs.d, tmp_path) for a in _fit(out="O/badckpt.npz")])
    assert_clean_failure(r, ["l1_s2_l1_f-1_m0.npz: not a readable fit checkpoint", "delete it (the fit recomputes it)"],
                         [])
    assert not (tmp_path / "badckpt.npz").exists()


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
    """Layer-1 and layer-2 GDML models trained in a run, from its one overall progress bar ("fit: STAGE: ...| n/N"):
    work found in the checkpoints is taken off its total, so the final n = N counts the trainings of this run."""
    counts = re.findall(r"fit: [^|\r\n]*\|[^|\r\n]*\| (\d+)/(\d+)", stderr)
    assert counts and counts[-1][0] == counts[-1][1], counts[-3:]
    assert not re.search(r"(?:^|\r|\n)(?:CV layer 1|layer 1|CV layer 2):", stderr)   # no bar per stage
    return int(counts[-1][1])


def test_killed_fit_resumes_from_its_checkpoints(fit_data, tmp_path):
    """SIGKILL a fit once layer-1 checkpoints exist; the same command then trains only what is missing and gives
    the model of an uninterrupted run. (Layer 1 is checkpointed per batch of sub-models, one batch per CV candidate.)"""
    from threadpoolctl import threadpool_limits

    from cgdml.data import CGDataset
    from cgdml.model import CGModel
    from cgdml.pipeline import cg_estimator

    args = [fit_data, "--method", "two-layer", "--n-models", 4, "--batch-size", 120, "--mean-set-size", 100,
            "--sigma1", 2, "--lam1", 1, 10,
            "--sigma2", 2, "--lam2", 0.01, 0.1, "--folds", 2, "--cv-models", 1, "--seed", 3,
            "--residual-weight", 1, "--no-refine-pairs"]
    # the uninterrupted fit, in this process (the command line is a thin shell over it); the judge and the pair
    # refinement are left out: their short runs are what the conftest shrinks here but not in the subprocess
    work_clean = tmp_path / "clean.work"
    with threadpool_limits(1):
        clean = cg_estimator("two-layer", n_models=4, batch_size=120, mean_set_size=100, sigma1=[2.0],
                             lam1=[1.0, 10.0], sigma2=[2.0], lam2=[0.01, 0.1], n_folds=2, cv_models=1, seed=3,
                             workdir=work_clean, progress=False, balance_basins=False, residual_weight=1.0,
                             refine_pairs=False).fit(CGDataset.load(fit_data)).model_
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
    assert f"resuming from step {side['timings']['resumed_from_step']} of {ckpt}" in r.stderr, r.stderr
    assert side["written_by"] == {"command": "cgdml.simulate", "output": "t.h5"}
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
    mirror = CGDataset(ds.coords * np.array([1.0, 1.0, -1.0]), ds.forces, ds.system)
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


# ------------------------------------------------------------------------------------------------- one run per output

def _wait_for(path, proc, timeout=120):
    t0 = time.monotonic()
    while not Path(path).exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.05)


def test_a_second_run_on_the_same_output_is_refused(inputs, tmp_path):
    """Two simulations on one -o: the second (even with another seed) exits 2 naming the process of the first,
    and touches nothing: the first's checkpoint stays, and it resumes after a kill."""
    out = tmp_path / "t.h5"
    args = [inputs.d / "model.npz", "-o", out, "--replicas", 2, "--steps", 400000, "--save-every", 100,
            "--checkpoint-every", 50, "--no-progress"]
    first = subprocess.Popen(command("simulate", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env=ENV)
    try:
        _wait_for(Path(str(out) + ".ckpt.npz"), first)
        lock = tmp_path / ".t.h5.lock"
        assert lock.read_text().strip() == str(first.pid)
        before = snapshot(tmp_path)
        for seed in (0, 7):
            r = run("simulate", *args, "--seed", seed)
            assert_clean_failure(r, ["t.h5", f"another cgdml run (process {first.pid})", "wait for it"], [])
            assert r.returncode == 2
        assert first.poll() is None
        files = lambda snap: {n for n in snap if ".tmp." not in n}     # noqa: E731 (the first run's come and go)
        assert files(snapshot(tmp_path)) == files(before)              # nothing added or removed
    finally:
        first.kill()
        first.wait()
    # the lock died with its process: a rerun gets past it (to the checkpoint, written with other --steps)
    r = run("simulate", *_with([str(a) for a in args], "--steps", "600"))
    assert_clean_failure(r, ["t.h5.ckpt.npz", "different settings", "n_steps"], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5.ckpt.npz"]


def test_every_command_refuses_an_output_locked_by_another_run(inputs, tmp_path):
    """The lock is taken by map, fit, simulate, fes, export and reference alike (here held by this process)."""
    from cgdml._io import OutputLock

    d = inputs.d
    commands = {"map": [*_map(out=str(tmp_path / "cg.npz"))], "fit": _fit(out=str(tmp_path / "model.npz")),
                "simulate": _sim(out=str(tmp_path / "t.h5")),
                "fes": ["D/cg.h5", "-o", str(tmp_path / "fes.png"), "--json", str(tmp_path / "m.json")],
                "export": ["D/model.npz", "-o", str(tmp_path / "omm")]}
    locked = {"map": "cg.npz", "fit": "model.npz", "simulate": "t.h5", "fes": "m.json", "export": "omm"}
    import importlib.util

    if importlib.util.find_spec("openmm") is not None:            # reference locks its run directory
        (tmp_path / "run").mkdir()
        commands["reference"] = ["-o", str(tmp_path / "run"), "--ns", "0.001", "--equilibrate-ps", "0"]
        locked["reference"] = "run"
    for module, args in commands.items():
        with OutputLock(tmp_path / locked[module]):
            r = run(module, *[_resolve(a, d, tmp_path) for a in args])
        assert_clean_failure(r, [locked[module], f"another cgdml run (process {os.getpid()})"], [])
        assert r.returncode == 2, module
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if "reference" in commands else [])
    assert not list((tmp_path / "run").iterdir()) if "reference" in commands else True


def test_stale_temporary_files_are_removed_at_the_next_run(inputs, tmp_path):
    """A final write (or a checkpoint) killed half-way leaves .NAME.XXXXXXXX.tmp.* files: the next run removes
    them (under the output's lock), and leaves other files alone."""
    stale = [tmp_path / ".t.h5.k3j5l_x0.tmp.h5", tmp_path / ".t.json.abcdefgh.tmp.json",
             tmp_path / ".t.h5.ckpt.npz.zz9yy8xx.tmp.npz"]
    keep = tmp_path / ".t.h5.notes"
    for p in stale + [keep]:
        p.write_bytes(b"partial")
    r = run("simulate", *_sim(str(inputs.d / "model.npz"), out=str(tmp_path / "t.h5")))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.h5.notes", "t.h5", "t.json", "t.pdb"]


def test_total_blowup_does_not_block_the_advised_rerun(inputs, tmp_path):
    """All replicas blow up at a large --dt: the checkpoints of that run are discarded, so that the rerun with a
    smaller --dt that the message advises runs (instead of failing with "different settings")."""
    out = tmp_path / "t.h5"
    args = [inputs.d / "model.npz", "-o", out, "--replicas", 8, "--steps", 200, "--save-every", 10, "--burn-in", 0,
            "--checkpoint-every", 1, "--no-progress"]
    r = run("simulate", *args, "--dt", "0.05")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: all 8 replicas blew up") and "reduce the time step" in last, r.stderr
    assert all(line.startswith("warning: ") for line in r.stderr.strip().splitlines()[:-1]), r.stderr
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())
    r = run("simulate", *args, "--dt", "0.002")
    assert r.returncode == 0, r.stderr
    assert "different settings" not in r.stderr
    assert re.search(r"; [\d.]+k? replica-steps/s \([\d.]+k? steps/s\)", r.stdout), r.stdout   # never "0 steps/s"


def test_one_frame_trajectory_has_no_bootstrap_interval(inputs, tmp_path):
    """One model frame makes one bootstrap block: every resample is that frame, so the interval would have zero
    width. fes reports it as undefined (a warning, no interval in the JSON) instead."""
    js = tmp_path / "m.json"
    r = run("fes", inputs.d / "one.h5", "--reference", inputs.d / "cg.npz", "-o", tmp_path / "fes.png", "--json", js)
    assert r.returncode == 0, r.stderr
    assert "bootstrap interval undefined" in r.stderr and "fewer than 2 blocks" in r.stderr, r.stderr
    assert "bootstrap 95%" not in r.stdout
    report = json.loads(js.read_text())
    assert "bootstrap" not in report and "fewer than 2 blocks" in report["bootstrap_undefined"]
    assert report["written_by"] == {"command": "cgdml.fes", "output": "m.json"}


COMMANDS = ("map", "fit", "simulate", "fes", "reference", "export")


def test_help_of_every_command_has_no_markup_and_explains_every_flag():
    import importlib

    for module in COMMANDS:
        r = run(module, "--help")
        assert r.returncode == 0, (module, r.stderr)
        assert "``" not in r.stdout and not re.search(r":\w+:`", r.stdout), (module, r.stdout)
        name = {"simulate": "cgdml.simulate.__main__", "fes": "cgdml.fes.__main__",
                "reference": "cgdml.reference.__main__"}.get(module, f"cgdml.{module}")
        parser = importlib.import_module(name).build_parser()
        bare = [a.option_strings or a.dest for a in parser._actions if not (a.help or "").strip()]
        assert not bare, f"{module}: no help for {bare}"


def test_map_shows_progress_over_frames(inputs, tmp_path, monkeypatch, capsys):
    """map reads trajectories chunk by chunk with a progress bar over frames (on stderr, for runs longer than
    PROGRESS_DELAY_S; here at once), and none with --quiet."""
    from cgdml import mapping
    from cgdml.map import main

    monkeypatch.setattr(mapping, "PROGRESS_DELAY_S", 0.0)
    args = [_resolve(a, inputs.d, tmp_path) for a in _map("--chunk", "50")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"mapping: 100%.*200/200", err), err
    assert main(args + ["--quiet"]) == 0
    assert "mapping" not in capsys.readouterr().err


_WORKERS = """
import sys
from cgdml.distributed import TaskRunner
task = "import os, pathlib, time; pathlib.Path(sys.argv[1], str(os.getpid())).touch(); time.sleep(60)"
with TaskRunner(n_jobs=2, progress=False) as runner:
    for i, _ in runner.run([(exec, (task.replace("sys.argv[1]", repr(sys.argv[1])),))] * 2):
        pass
"""


def _children(pid):
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid):
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_local_workers_do_not_outlive_their_parent(how, tmp_path):
    """joblib/loky worker processes end within seconds when the parent is killed (SIGKILL: nothing can run in the
    parent, the workers watch it) or interrupted (Ctrl-C: the parent kills them)."""
    parent = subprocess.Popen([sys.executable, "-c", _WORKERS, str(tmp_path)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while len(list(tmp_path.iterdir())) < 2:                  # both tasks running, each in its worker
        if parent.poll() is not None or time.monotonic() - t0 > 120:
            parent.kill()
            pytest.fail(f"the tasks did not start: {parent.communicate()}")
        time.sleep(0.1)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    loky = [c for c in _children(parent.pid) if b"loky" in (Path("/proc") / str(c) / "cmdline").read_bytes()]
    assert set(workers) <= set(loky)
    parent.send_signal(how)
    parent.wait(90)                                           # generous: the machine may be loaded
    t0 = time.monotonic()
    while any(_alive(w) for w in loky) and time.monotonic() - t0 < 45:  # the bug was minutes
        time.sleep(0.2)
    left = [w for w in loky if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"loky processes {left} outlived their parent (workers {workers})"
