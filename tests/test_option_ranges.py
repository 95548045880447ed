"""Every numeric option has a range that follows from its meaning and the machine (issue 28 item 3): huge,
tiny and 2^31-sized values through the real commands end in one line and exit 2 before any work, allocations
are estimated first (the message gives the estimate), and a 32-bit seed is a valid seed everywhere."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cgdml._cli import cpu_count, float_between, int_between, seed_int
from cgdml._io import CgdmlError, check_memory
from cgdml.reference import check_name, openmm_seed

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
BIG = "1000000000000"


@pytest.fixture(scope="module")
def model(tmp_path_factory, write_small_model):
    return write_small_model(tmp_path_factory.mktemp("ranges") / "m.npz")


def test_the_shared_validators():
    import argparse

    assert seed_int(str(2 ** 32 - 1)) == 2 ** 32 - 1 and seed_int("2147483648") == 2 ** 31
    for bad in ("-1", str(2 ** 32), "1e3", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_int(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"<= 5 \(why\), got 6"):
        int_between(1, 5, "why")("6")
    with pytest.raises(argparse.ArgumentTypeError, match=r"<= 1 \(ps\), got '1e300'"):
        float_between(0, 1, "ps", low_open=True)("1e300")
    with pytest.raises(argparse.ArgumentTypeError, match="> 0"):
        float_between(0, 1, low_open=True)("0")
    assert float_between(0, 1)("0") == 0.0 and cpu_count() >= 1


def test_memory_is_estimated_before_allocating():
    with pytest.raises(CgdmlError, match=r"the frames would take about 1e\+03 TB of memory, .* available; lower it"):
        check_memory(1e15, "the frames", "lower it")
    check_memory(1e3, "a little", "")


def test_openmm_seeds_are_32_bit_and_reproducible():
    assert [openmm_seed(s) for s in (1, 2024, 2 ** 31 - 1)] == [1, 2024, 2 ** 31 - 1]
    derived = [openmm_seed(s) for s in (0, 2 ** 31, 2 ** 32 - 1)]
    assert all(1 <= d <= 2 ** 31 - 1 for d in derived) and len(set(derived)) == 3   # 0 would be "random" in OpenMM
    assert derived == [openmm_seed(s) for s in (0, 2 ** 31, 2 ** 32 - 1)]
    with pytest.raises(CgdmlError, match="32-bit seed"):
        openmm_seed(2 ** 32)


@pytest.mark.parametrize("name", ["../x", "sub/x", "/tmp/x", ".hidden", "", "chunk_00000", "chunk_00001.npz", "run",
                                  "run.json", " x"])
def test_reference_names_are_plain_file_names(name):
    with pytest.raises(CgdmlError, match="--name"):
        check_name(name)


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", f"cgdml.{module}", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=REPO)


def test_numbers_out_of_range_through_the_commands(model, tmp_path):
    out = tmp_path / "t.h5"
    sim = ["simulate", model, "-o", out, "--no-progress"]
    ref = ["reference", "-o", tmp_path / "ref", "--quiet"]
    fit = ["fit", "-o", tmp_path / "f.npz", "--quiet"]
    cases = [
        (sim + ["--replicas", BIG], "--replicas must be <= 1000000000"),
        (sim + ["--steps", BIG], "--steps must be <= 1000000000"),
        (sim + ["--replicas", "1000000000"], "would take about"),       # the trajectory's memory, estimated
        (sim + ["--jobs", BIG], "the CPUs of this machine"),
        (sim + ["--threads", BIG], "the CPUs of this machine"),
        (sim + ["--tasks", "1000000000"], "--tasks must be between 1 and --replicas"),
        (sim + ["--seed", BIG], "a 32-bit seed"),
        (sim + ["--blowup-factor", "1e300"], "--blowup-factor must be <= 100"),
        (sim + ["--dt", "1e300"], "--dt must be <= 1 (ps"),
        (fit + ["--sigma1", "1e300"], "--sigma1 must be one or more numbers > 0 and <= 10000"),
        (fit + ["--sigma2", "1e300"], "--sigma2 must be"),
        (fit + ["--n-models", BIG], "--n-models must be >= 1 and <= 10000"),
        (fit + ["--jobs", BIG], "--jobs must be"),
        (fit + ["--seed", BIG], "--seed must be >= 0 and <= 4294967295"),
        (ref + ["--seed", str(2 ** 32)], "a 32-bit seed"),
        (ref + ["--threads", BIG], "the CPUs of this machine"),
        (ref + ["--hydrogen-mass", "1e300"], "--hydrogen-mass must be <= 4.5 (amu"),
        (ref + ["--equilibrate-ps", "1e300"], "--equilibrate-ps must be"),
        (ref + ["--ns", "1e300"], "--ns must be"),
        (ref + ["--ns", "1e6", "--save-every-ps", "0.004"], "would take about"),
        (ref + ["--name", "../x"], "plain file name"),
        (ref + ["--name", "chunk_00000"], "the run's own files"),
        (["fes", out, "-o", tmp_path / "f.png", "--bins", BIG], "--bins must be <= 1000"),
        (["fes", out, "-o", tmp_path / "f.png", "--n-boot", BIG], "--n-boot must be <= 100000"),
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: _run(*c[0]), cases))
    for (args, needle), r in zip(cases, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr[-2000:])
        assert needle in lines[0], (args, lines[0])
    assert not (tmp_path / "ref").exists() and not out.exists()


def test_a_reference_seed_of_2_to_the_31_runs(tmp_path):
    pytest.importorskip("openmm")
    short = ["--ns", "0.002", "--equilibrate-ps", "0.004", "--save-every-ps", "0.004", "--chunk-ns", "0.002",
             "--quiet"]
    runs = [_run("reference", "-o", tmp_path / str(i), "--seed", "2147483648", *short) for i in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (np.load(next((tmp_path / str(i)).glob("ala2_*.npz")))["positions"] for i in range(2))
    np.testing.assert_array_equal(a, b)                 # a derived seed is a seed: the same run twice


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """200 all-atom frames of the shipped reference (x.npy, f.npy, and as plain.dcd), their 5-bead dataset cg.npz
    and a 50-frame CG trajectory cg.h5."""
    import mdtraj as md

    from cgdml.mapping import map_allatom

    d = tmp_path_factory.mktemp("frames")
    shipped = REPO / "data" / "ala2_implicit_300K"
    with np.load(str(shipped) + ".npz") as z:
        np.save(d / "x.npy", z["positions"][:2000:10])
        np.save(d / "f.npy", z["forces"][:2000:10])
    top = str(shipped) + ".pdb"
    md.Trajectory(np.load(d / "x.npy"), md.load_topology(top)).save_dcd(str(d / "plain.dcd"))
    ds = map_allatom(top, d / "x.npy", d / "f.npy", "ala2-5")
    ds.save(d / "cg.npz")
    np.save(d / "c.npy", ds.coords)
    np.save(d / "g.npy", ds.forces)
    md.Trajectory(ds.coords[:50].astype(np.float32), ds.topology).save_hdf5(str(d / "cg.h5"))
    return d, top


def test_frame_options_are_bounded_by_the_data(frames, tmp_path):
    """--stride keeps at least 2 frames, --chunk is a count (and one longer than the file reads the whole file, not
    a chunk-sized allocation), --block and --lagtime fit in the frames; each out-of-range value is one line naming
    the option and its range, before any work."""
    d, top = frames
    aa = ["map", "--top", top, "--traj", d / "x.npy", "--forces", d / "f.npy", "--map", "ala2-5", "--quiet"]
    h5 = ["fes", d / "cg.h5"]
    cases = [
        (aa + ["--stride", "1000", "-o", tmp_path / "a1.npz"],
         "--stride must be between 1 and 199 to keep at least 2 of the 200 frames of"),
        (aa + ["--stride", BIG, "-o", tmp_path / "a2.npz"], "--stride must be <= 1000000000"),
        (aa + ["--chunk", BIG, "-o", tmp_path / "a3.npz"], "--chunk must be <= 1000000000"),
        (["map", "--coords", d / "c.npy", "--cg-forces", d / "g.npy", "--beads", "ala2-5", "--stride", "200", "-o",
          tmp_path / "a4.npz"], "--stride must be between 1 and 199"),
        (["map", "--stride", "20000", "-o", tmp_path / "a5.npz"], "of the shipped reference, got 20000"),
        (["fit", d / "cg.npz", "--stride", "300", "-o", tmp_path / "m.npz"], "--stride must be between 1 and 199"),
        (h5 + ["--reference", d / "cg.npz", "--block", "51", "-o", tmp_path / "f1.png"],
         "--block (the bootstrap block length) must be between 1 and 50, the model frames, got 51"),
        (h5 + ["--cv", "tica", "--lagtime", "50", "-o", tmp_path / "f2.png"],
         "--lagtime (the TICA lag time) must be between 1 and 49 frames, shorter than the shortest trajectory"),
        (h5 + ["--reference", d / "cg.npz", "--cv", "tica", "--lagtime", "200", "-o", tmp_path / "f3.png"],
         "--lagtime (the TICA lag time) must be between 1 and 199 frames, shorter than the reference"),
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: _run(*c[0]), cases))
    for (args, needle), r in zip(cases, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr[-2000:])
        assert needle in lines[0], (args, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # the largest stride that keeps 2 frames, and a chunk far longer than the file (mdtraj would allocate 246 GB)
    r = _run("map", "--top", top, "--traj", d / "plain.dcd", "--forces", d / "f.npy", "--map", "ala2-5", "--quiet",
             "--stride", "199", "--chunk", "1000000000", "-o", tmp_path / "s.npz")
    assert r.returncode == 0, r.stderr[-2000:]
    from cgdml.data import CGDataset

    assert CGDataset.load(tmp_path / "s.npz").n_frames == 2
