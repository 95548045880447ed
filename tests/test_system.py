"""The CG system (cgdml.system.CGSystem): one object for the bead graph, masses and temperature, stored in dataset
and model files as the entries they always had, so that files of every cgdml version load."""
import warnings

import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.system import CGSystem, parse_pdb, read_pdb_topology
from cgdml.topology import CGTopology
from cgdml.units import BOLTZMANN

SYSTEM_KEYS = {"bead_names", "topology_pdb", "bonds", "masses", "temperature"}


def branched(names=("C", "N", "CA", "CB", "C", "N")):
    """Alanine dipeptide with CB: residues ACE, ALA, NME; CB (bead 3) bonded to CA, not to C."""
    top = CGTopology(list(names), [(0, 1), (1, 2), (2, 3), (2, 4), (4, 5)], residue_ids=[1, 2, 2, 2, 2, 3],
                     residue_names=["ACE", "ALA", "ALA", "ALA", "ALA", "NME"], elements=["C", "N", "C", "C", "C", "N"])
    return CGSystem(top, [12.011, 15.015, 13.019, 15.035, 12.011, 15.015], 310.0)


def frames(system, n=40, seed=0):
    base = np.array([[0.0, 0.0, 0.0], [0.13, 0.05, 0.0], [0.2, 0.17, 0.02], [0.18, 0.22, 0.16],
                     [0.35, 0.15, -0.03], [0.42, 0.26, 0.02]])
    return base + np.random.default_rng(seed).normal(scale=0.003, size=(n, system.n_beads, 3))


def test_properties_come_from_the_parts():
    s = branched()
    assert s.n_beads == 6 and s.bead_names == ["C", "N", "CA", "CB", "C", "N"]
    assert s.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [2, 4], [4, 5]]
    assert s.kT == pytest.approx(BOLTZMANN * 310.0)
    top = s.to_mdtraj()
    assert [a.name for a in top.atoms] == s.bead_names and [r.name for r in top.residues] == ["ACE", "ALA", "NME"]
    assert sorted((a.index, b.index) for a, b in top.bonds) == [tuple(b) for b in s.bonds.tolist()]
    # default masses are the elements'
    assert np.allclose(CGSystem(s.topology).masses, [12.011, 14.007, 12.011, 12.011, 12.011, 14.007], atol=1e-3)


def test_array_round_trip_is_exact_and_keeps_the_keys():
    s = branched()
    arrays = s.to_arrays()
    assert set(arrays) == SYSTEM_KEYS
    assert arrays["bead_names"].dtype.kind == "U" and arrays["topology_pdb"].dtype.kind == "U"
    assert arrays["bonds"].dtype == np.int64 and arrays["masses"].dtype == np.float64
    assert arrays["temperature"].dtype == np.float64 and arrays["temperature"].shape == ()
    back = CGSystem.from_arrays(arrays)
    assert back == s and back is not s
    assert CGSystem.from_arrays({"x/" + k: v for k, v in arrays.items()}, prefix="x/") == s
    # equality sees every part
    assert CGSystem(s.topology, s.masses, 300.0) != s
    assert CGSystem(s.topology, s.masses * 1.01, 310.0) != s
    assert branched(("C", "N", "CA", "CB", "C", "NX")) != s


def test_pdb_round_trip_keeps_the_bead_graph():
    s = branched()
    xyz = frames(s, 1)[0]
    text = s.to_pdb(xyz)
    assert text.count("CONECT") == 6
    top = parse_pdb(text)
    assert CGSystem(top, s.masses, s.temperature) == s
    assert top.backbone()[0][0] == "ALA2"
    # PDB cuts names to four characters; the bead_names entry keeps them whole
    long = branched(("C", "N", "CA", "CBETA", "C", "N"))
    assert parse_pdb(long.to_pdb()).names[3] == "CBET"
    assert CGSystem.from_arrays(long.to_arrays()) == long


def test_pdb_sidecar_files_are_read(tmp_path):
    s = branched()
    path = tmp_path / "cg.pdb"
    path.write_text('REMARK 999 cgdml written_by {"command": "cgdml.map", "output": "cg.npz"}\n' + s.to_pdb())
    assert CGSystem.from_pdb_file(path, masses=s.masses, temperature=310.0) == s
    assert read_pdb_topology(path).bonds.tolist() == s.bonds.tolist()
    for bad, message in [(tmp_path / "nope.pdb", "no such CG topology file"), (tmp_path, "no such CG topology")]:
        with pytest.raises(CgdmlError, match=message):
            read_pdb_topology(bad)


def test_bad_parts_are_one_line_errors():
    s = branched()
    with pytest.raises(CgdmlError, match="6 numbers"):
        CGSystem(s.topology, [12.0] * 5)
    with pytest.raises(CgdmlError, match=r"bead 3 \(CB\) has -1"):
        CGSystem(s.topology, [12.0, 12.0, 12.0, -1.0, 12.0, 12.0])
    with pytest.raises(CgdmlError, match="temperature"):
        CGSystem(s.topology, s.masses, 0.0)
    with pytest.raises(CgdmlError, match="needs a CGTopology"):
        CGSystem(s.to_mdtraj())
    arrays = s.to_arrays()
    for key, value, message in [("bead_names", np.array(["C", "N"]), "2 bead names, CG topology of 6 beads"),
                                ("masses", np.ones(4), "damaged field 'masses'"),
                                ("bonds", np.array([[0, 1]]), "damaged field 'topology_pdb' or 'bonds'"),
                                ("temperature", np.array("hot"), "damaged field 'temperature'")]:
        with pytest.raises(CgdmlError, match=message) as exc:
            CGSystem.from_arrays({**arrays, key: value})
        assert "\n" not in str(exc.value)
    with pytest.raises(CgdmlError, match="missing field 'masses'"):
        CGSystem.from_arrays({k: v for k, v in arrays.items() if k != "masses"}, required=("masses",))


def test_dataset_and_model_files_keep_their_keys_and_share_the_system(tmp_path):
    from cgdml.gdml import GDML
    from cgdml.model import CGModel
    from cgdml.prior import HarmonicPrior

    s = branched()
    R = frames(s, 60)
    ds = CGDataset(R, -1e3 * (R - R.mean(0)), s, {"note": "toy"})
    assert ds.system is s and ds.temperature == 310.0 and ds.bead_names == s.bead_names
    assert ds.masses is s.masses and ds.cg_topology is s.topology and ds.subset([0, 1]).system is s
    ds.save(tmp_path / "ds.npz")
    with np.load(tmp_path / "ds.npz") as z:
        assert set(z.files) == SYSTEM_KEYS | {"coords", "forces", "info_json", "format_version"}
    back = CGDataset.load(tmp_path / "ds.npz")
    assert back.system == s and back.info == {"note": "toy"}
    np.testing.assert_array_equal(back.coords, R.astype(np.float32))

    prior = HarmonicPrior().fit(R, s.temperature, s.topology)
    gdml = GDML(sigma=2.0, lam=1e-2, relative_lam=True).fit(R[:20], ds.forces[:20] - prior.forces(R[:20]))
    model = CGModel.from_fit(gdml.model_, prior, ds, {"method": "toy"}, n_start=10)
    assert model.system is s and model.temperature == 310.0 and model.n_beads == 6
    model.save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as z:
        assert SYSTEM_KEYS <= set(z.files)
    assert CGModel.load(tmp_path / "model.npz").system == s


def test_old_files_load(tmp_path):
    """Files of earlier cgdml versions: datasets without bonds, masses or format version (bonds from the PDB's
    CONECT records, masses from the elements), and a model without bonds (version 1)."""
    from cgdml.gdml import GDML
    from cgdml.model import CGModel
    from cgdml.prior import HarmonicPrior

    s = branched()
    R = frames(s, 40)
    ds = CGDataset(R, np.zeros_like(R), s)
    ds.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        arrays = dict(z)
    np.savez(tmp_path / "old.npz", **{k: v for k, v in arrays.items() if k not in ("bonds", "masses", "format_version")})
    old = CGDataset.load(tmp_path / "old.npz")
    assert old.bonds.tolist() == s.bonds.tolist() and old.cg_topology.backbone()[0][0] == "ALA2"
    np.testing.assert_allclose(old.masses, CGSystem(s.topology).masses)
    np.savez(tmp_path / "bare.npz", **{k: arrays[k] for k in ("coords", "forces", "bead_names", "temperature")})
    with pytest.warns(UserWarning, match="assuming a chain"):
        bare = CGDataset.load(tmp_path / "bare.npz")
    assert bare.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]] and bare.temperature == 310.0

    prior = HarmonicPrior().fit(R, s.temperature, s.topology)
    gdml = GDML(sigma=2.0, lam=1e-2, relative_lam=True).fit(R[:10], np.zeros((10, 6, 3)) - prior.forces(R[:10]))
    CGModel(gdml.model_, prior, s, R[:5]).save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as z:
        marrays = dict(z)
    np.savez(tmp_path / "model_v1.npz", **{**{k: v for k, v in marrays.items() if k != "bonds"},
                                             "format_version": np.int64(1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CGModel.load(tmp_path / "model_v1.npz").system == s


def test_old_positional_construction_is_refused_with_a_pointer():
    R = np.zeros((3, 2, 3))
    with pytest.raises(CgdmlError, match="CGDataset.from_arrays"):
        CGDataset(R, R, ["A", "B"], 300.0)
