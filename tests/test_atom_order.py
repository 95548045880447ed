"""Physical checks of all-atom input (issue 28 item 1): bonds of covalent length in the first frames of every
chunk (a trajectory whose atoms are reversed or shuffled against its topology is refused at map time, though its
bond medians look like bonds), and coordinates far from the origin keep their precision."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.mapping import map_allatom

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "ala2_implicit_300K"
TOP = str(SHIPPED) + ".pdb"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("order")
    with np.load(str(SHIPPED) + ".npz") as z:
        x, f = z["positions"][:2400:8], z["forces"][:2400:8]
    rng = np.random.default_rng(3)
    orders = {"plain": np.arange(x.shape[1]), "reversed": np.arange(x.shape[1])[::-1],
              "shuffled": rng.permutation(x.shape[1])}
    for name, order in orders.items():
        np.save(d / f"x_{name}.npy", x[:, order])
        np.save(d / f"f_{name}.npy", f[:, order])
    np.save(d / "x_far.npy", x.astype(np.float64) + np.array([400.0, -350.0, 520.0]))
    return d


def _map(d, name, xname=None, **kw):
    return map_allatom(TOP, d / f"x_{xname or name}.npy", d / f"f_{name}.npy", "ala2-5", **kw)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_a_wrong_atom_order_is_refused(frames, order):
    with pytest.raises(CgdmlError, match=r"bonds in frames 0-4 are not of covalent length within 25% .*the atoms "
                                         r"are not in the order of the topology"):
        _map(frames, order)


def test_the_check_samples_later_chunks(frames):
    """Good first chunk, atoms reversed from frame 100 on: the chunk starting there is refused (by the comparison
    with the first chunk's bond medians, which runs first)."""
    x = np.load(frames / "x_plain.npy")
    x[100:] = x[100:, ::-1]
    np.save(frames / "x_late.npy", x)
    with pytest.raises(CgdmlError, match="frame 100: .*the atom order does not match the topology"):
        map_allatom(TOP, frames / "x_late.npy", frames / "f_plain.npy", "ala2-5", chunk=50)


def test_the_command_refuses_a_reversed_trajectory_in_one_line(frames, tmp_path):
    r = subprocess.run([sys.executable, "-m", "cgdml.map", "--top", TOP, "--traj", frames / "x_reversed.npy",
                        "--forces", frames / "f_reversed.npy", "--map", "ala2-5", "--temperature", "300",
                        "-o", tmp_path / "cg.npz", "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "not of covalent length" in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "cg.npz").exists()


def test_far_from_origin_coordinates_keep_their_precision(frames, tmp_path):
    plain = _map(frames, "plain")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        far = _map(frames, "plain", xname="far", chunk=50)
    assert sum("each frame is centred" in str(w.message) for w in caught) == 1       # one note, not one per chunk
    bonds = plain.bonds

    def lengths(c):
        return np.linalg.norm(c[:, bonds[:, 1]] - c[:, bonds[:, 0]], axis=-1)

    # float32 at 500 nm would round each coordinate by up to 3e-5 nm; centring keeps the plain map's lengths
    np.testing.assert_allclose(lengths(far.coords), lengths(plain.coords), atol=1e-6)
    np.testing.assert_allclose(far.forces, plain.forces, atol=1e-4)
    shifted = CGDataset(plain.coords + 600.0, plain.forces, plain.system)
    shifted.save(tmp_path / "far.npz")
    back = CGDataset.load(tmp_path / "far.npz")
    np.testing.assert_allclose(lengths(back.coords), lengths(shifted.coords), atol=1e-9)


@pytest.mark.parametrize("fmt", ["dcd", "xtc"])
def test_far_from_origin_trajectories_read_by_mdtraj_are_centred(frames, tmp_path, fmt):
    """A dcd or xtc 1e4 Angstrom from the origin maps as the same trajectory at the origin: each frame is centred
    (one note), so the dataset lies near the origin and is stored in float32 without loss, and bond lengths and
    forces equal those of the unshifted file within the precision the file format itself kept."""
    import mdtraj as md

    top = md.load_topology(TOP)
    x = np.load(frames / "x_plain.npy").astype(np.float64)
    shift = np.array([1000.0, -1000.0, 1000.0])                     # nm: 1e4 Angstrom
    md.Trajectory(x, top).save(str(tmp_path / f"plain.{fmt}"))
    md.Trajectory(x + shift, top).save(str(tmp_path / f"far.{fmt}"))
    # what the format kept: the far file read back and shifted home, against the plain file
    kept = np.abs((md.load(str(tmp_path / f"far.{fmt}"), top=top).xyz - shift)
                  - md.load(str(tmp_path / f"plain.{fmt}"), top=top).xyz).max()
    plain = map_allatom(TOP, tmp_path / f"plain.{fmt}", frames / "f_plain.npy", "ala2-5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        far = map_allatom(TOP, tmp_path / f"far.{fmt}", frames / "f_plain.npy", "ala2-5", chunk=50)
    assert sum("each frame is centred" in str(w.message) for w in caught) == 1       # one note, not one per chunk
    assert np.abs(far.coords).max() < 2.0                                           # centred, not at 1000 nm
    bonds = plain.bonds

    def lengths(c):
        return np.linalg.norm(c[:, bonds[:, 1]] - c[:, bonds[:, 0]], axis=-1)

    # a bond length moves by at most the two ends' position errors
    np.testing.assert_allclose(lengths(far.coords), lengths(plain.coords), atol=2 * np.sqrt(3) * kept + 1e-6)
    np.testing.assert_array_equal(far.forces, plain.forces)
    far.save(tmp_path / "far.npz")
    with np.load(tmp_path / "far.npz") as z:
        assert z["coords"].dtype == np.float32                     # near the origin, float32 loses nothing
    back = CGDataset.load(tmp_path / "far.npz")
    np.testing.assert_allclose(lengths(back.coords), lengths(far.coords), atol=1e-6)
