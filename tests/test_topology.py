"""The CG topology is the source of truth: bonds, angles, dihedrals, impropers and the backbone come from the
bead graph, never from bead order (a branched toy whose side-chain bead sits in the middle of the list, and a
map that lists beads out of residue order)."""
import textwrap
import warnings

import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.features import descriptor, n_descriptors
from cgdml.fes import residue_phi_psi
from cgdml.geometry import dihedral
from cgdml.mapping import load_default_cg_dataset, map_allatom
from cgdml.prior import CGPrior
from cgdml.topology import CGTopology, parse_bonds

# alanine dipeptide with CB: C(ACE) N CA CB C N(NME); CB (bead 3) is bonded to CA (bead 2), not to C (bead 4)
NAMES = ["C", "N", "CA", "CB", "C", "N"]
BONDS = [(0, 1), (1, 2), (2, 3), (2, 4), (4, 5)]


def branched():
    return CGTopology(NAMES, BONDS, residue_ids=[1, 2, 2, 2, 2, 3], residue_names=["ACE"] + ["ALA"] * 4 + ["NME"])


def test_terms_come_from_the_bonds_not_the_bead_order():
    top = branched()
    assert top.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [2, 4], [4, 5]]
    assert sorted(map(tuple, top.angles.tolist())) == [(0, 1, 2), (1, 2, 3), (1, 2, 4), (2, 4, 5), (3, 2, 4)]
    assert sorted(map(tuple, top.dihedrals.tolist())) == [(0, 1, 2, 3), (0, 1, 2, 4), (1, 2, 4, 5), (3, 2, 4, 5)]
    assert top.impropers.tolist() == [[1, 2, 3, 4]]                # at the branch point CA: chirality
    ((label, phi, psi),) = top.backbone()
    assert label == "ALA2" and phi.tolist() == [0, 1, 2, 4] and psi.tolist() == [1, 2, 4, 5]
    assert top.graph_distance[3, 4] == 2 and top.graph_distance[0, 5] == 4
    assert sorted(map(tuple, top.pairs_apart(3).tolist())) == [(0, 3), (0, 4), (0, 5), (1, 5), (3, 5)]
    assert top.side(1, 2).tolist() == [0, 1] and top.side(4, 2).tolist() == [4, 5]


def toy_frames(top, n=400, seed=0):
    """Noisy copies of one branched geometry (nm)."""
    base = np.array([[0.0, 0.0, 0.0], [0.13, 0.05, 0.0], [0.2, 0.17, 0.02], [0.18, 0.22, 0.16],
                     [0.35, 0.15, -0.03], [0.42, 0.26, 0.02]])
    return base + np.random.default_rng(seed).normal(scale=0.005, size=(n, top.n_beads, 3))


def test_prior_features_and_descriptor_follow_the_graph(numerical_forces):
    top = branched()
    R = toy_frames(top)
    prior = CGPrior(dihedrals=True).fit(R, 300.0, top)
    assert prior.bond_pairs_.tolist() == top.bonds.tolist()           # CA-C bonded, CB-C not
    assert prior.dihedral_quads_.tolist() == top.soft_dihedrals().tolist()  # phi and psi, not index quadruples
    assert [3, 4] not in prior.bond_pairs_.tolist()
    assert prior.repulsion_pairs_.tolist() == top.pairs_apart(3).tolist()
    F = prior.energy_forces(R[:5])[1]
    np.testing.assert_allclose(F, numerical_forces(lambda X: prior.energy_forces(X)[0], R[:5]), rtol=1e-5, atol=1e-3)
    D = descriptor(R, top.chirality_quads)
    assert D.shape[1] == n_descriptors(6, 5)
    np.testing.assert_allclose(D[:, 15:19], np.sin(np.column_stack([dihedral(R, q)[0] for q in top.dihedrals])))
    mirror = R * np.array([1.0, 1.0, -1.0])
    np.testing.assert_allclose(descriptor(mirror, top.chirality_quads)[:, 15:], -D[:, 15:], atol=1e-12)


def test_bad_bonds_are_one_line_errors():
    with pytest.raises(CgdmlError, match="disconnected"):
        CGTopology(NAMES, [(0, 1), (1, 2), (4, 5)])
    with pytest.raises(CgdmlError, match="outside 0..5"):
        CGTopology(NAMES, BONDS + [(2, 9)])
    with pytest.raises(CgdmlError, match="more than once"):
        CGTopology(NAMES, BONDS + [(1, 0)])
    with pytest.raises(CgdmlError, match="itself"):
        CGTopology(NAMES, BONDS + [(3, 3)])
    with pytest.raises(CgdmlError, match="I-J pairs"):
        parse_bonds("0-1,1-x")
    assert parse_bonds("0-1, 1-2,2 3").tolist() == [[0, 1], [1, 2], [2, 3]]


def test_pre_mapped_arrays_take_bonds_or_warn_about_the_chain():
    top = branched()
    R = toy_frames(top, 50)
    ds = CGDataset.from_arrays(R, np.zeros_like(R), bead_names=NAMES, bonds=BONDS)
    assert ds.cg_topology.bonds.tolist() == top.bonds.tolist() and not len(ds.cg_topology.backbone()) == 0
    with pytest.warns(UserWarning, match="assuming a chain in bead order"):
        chain = CGDataset.from_arrays(R, np.zeros_like(R), bead_names=NAMES)
    assert chain.cg_topology.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]


def test_bonded_distances_are_checked_frame_by_frame():
    top = branched()
    R = toy_frames(top, 50)
    R[17] = R[17, ::-1]                                           # one frame with its beads reversed
    with pytest.raises(CgdmlError, match="frame 17: bond"):
        CGDataset.from_arrays(R, np.zeros_like(R), bead_names=NAMES, bonds=BONDS)
    with pytest.raises(CgdmlError, match="length unit"):        # nm data declared as angstrom
        CGDataset.from_arrays(toy_frames(top, 50), np.zeros((50, 6, 3)), bead_names=NAMES, bonds=BONDS,
                              length_unit="angstrom")


def shipped_subset(tmp_path):
    from cgdml.io import default_dataset_paths

    paths = default_dataset_paths()
    with np.load(paths.trajectory) as z:
        np.save(tmp_path / "x.npy", z["positions"][:4000:10])
        np.save(tmp_path / "f.npy", z["forces"][:4000:10])
    return paths.topology, tmp_path / "x.npy", tmp_path / "f.npy"


def test_beads_out_of_residue_order_keep_their_order_and_give_the_same_phi_psi(tmp_path):
    top_path, x, f = shipped_subset(tmp_path)
    shuffled = tmp_path / "shuffled.toml"
    shuffled.write_text(textwrap.dedent("""
        [[bead]]
        name = "C"
        select = "resid 0 and name C"
        [[bead]]
        name = "N"
        select = "resid 1 and name N"
        [[bead]]
        name = "CA"
        select = "resid 1 and name CA"
        [[bead]]
        name = "N"
        select = "resid 2 and name N"
        [[bead]]
        name = "C"
        select = "resid 1 and name C"
    """))
    ordered = map_allatom(top_path, x, f, "ala2-5")
    mixed = map_allatom(top_path, x, f, str(shuffled))
    np.testing.assert_allclose(mixed.coords[:, [0, 1, 2, 4, 3]], ordered.coords)        # columns keep the map order
    assert [a.name for a in mixed.topology.atoms] == ["C", "N", "CA", "N", "C"]          # topology = column order
    ((label_o, pp_o),), ((label_m, pp_m),) = residue_phi_psi(ordered.coords, ordered.cg_topology), \
        residue_phi_psi(mixed.coords, mixed.cg_topology)
    assert label_o == label_m == "ALA2"
    np.testing.assert_allclose(pp_m, pp_o, atol=1e-12)
    # the saved and reloaded dataset keeps both
    mixed.save(tmp_path / "mixed.npz")
    back = CGDataset.load(tmp_path / "mixed.npz")
    np.testing.assert_allclose(residue_phi_psi(back.coords, back.cg_topology)[0][1], pp_o, atol=1e-5)


def test_map_file_bonds_replace_the_atom_graph(tmp_path):
    top_path, x, f = shipped_subset(tmp_path)
    spec = tmp_path / "ca_cb.toml"
    spec.write_text(textwrap.dedent("""
        bonds = [[0, 1], [0, 2]]
        [[bead]]
        name = "CA"
        select = "resid 1 and name CA"
        [[bead]]
        name = "CB"
        select = "resid 1 and name CB"
        [[bead]]
        name = "C"
        select = "resid 1 and name C"
    """))
    ds = map_allatom(top_path, x, f, str(spec))
    assert ds.cg_topology.bonds.tolist() == [[0, 1], [0, 2]]
    spec.write_text(spec.read_text().replace("[[0, 1], [0, 2]]", "[[0, 1]]"))
    with pytest.raises(CgdmlError, match="disconnected"):
        map_allatom(top_path, x, f, str(spec))


def test_six_bead_map_topology_survives_save_and_load(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # a mapped dataset never guesses a chain
        ds = load_default_cg_dataset("ala2-6", stride=100)
    ds.save(tmp_path / "six.npz")
    back = CGDataset.load(tmp_path / "six.npz")
    assert back.cg_topology.bonds.tolist() == branched().bonds.tolist()
    assert back.cg_topology.backbone()[0][1].tolist() == [0, 1, 2, 4]


def peptide_dataset(n_frames=300, seed=1):
    """A capped tripeptide backbone, 11 beads C (N CA C)x3 N, as a random zig-zag chain (nm)."""
    names = ["C"] + ["N", "CA", "C"] * 3 + ["N"]
    residues = [1] + [2, 2, 2, 3, 3, 3, 4, 4, 4] + [5]
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n_frames, 11, 3))
    steps /= np.linalg.norm(steps, axis=2, keepdims=True)
    R = 0.15 * np.cumsum(steps, axis=1)
    top = CGTopology(names, [(i, i + 1) for i in range(10)], residues, ["ACE"] + ["ALA"] * 9 + ["NME"])
    return CGDataset.from_arrays(R, rng.normal(size=R.shape), topology=top.to_mdtraj(), bonds=top.bonds)


def test_longer_peptides_keep_backbone_strata_and_dihedral_scores():
    from cgdml.ensemble import TwoLayerGDML
    from cgdml.pipeline import CGEstimator
    from cgdml.sampling import make_strata

    ds = peptide_dataset()
    assert [label for label, _, _ in ds.cg_topology.backbone()] == ["ALA2", "ALA3", "ALA4"]
    labels, method = make_strata(ds, n_strata=8)
    assert method == "backbone-kmeans" and labels.max() == 7
    with pytest.raises(CgdmlError, match="one residue"):
        make_strata(ds, "phi-psi")
    learner = CGEstimator(TwoLayerGDML(cv_score="dihedral"))._learner_for(ds)   # the topology's score dihedrals
    assert learner.score_dihedrals.tolist() == ds.cg_topology.backbone_quads().tolist()
    assert len(learner.score_dihedrals) == 6


def _bare(top):
    """``top`` (an mdtraj Topology) without its bonds, as read from a PDB without CONECT records for them."""
    import mdtraj as md

    bare = md.Topology()
    for chain in top.chains:
        c = bare.add_chain()
        for res in chain.residues:
            r = bare.add_residue(res.name, c, res.resSeq)
            for atom in res.atoms:
                bare.add_atom(atom.name, atom.element, r)
    return bare


@pytest.mark.parametrize("molecule, beads, good, bad, message", [
    # alanine dipeptide, backbone map: C-CA skips N; 0-based indices shifted by one bead skip C
    ("ala2", [(0, "C"), (1, "N"), (1, "CA"), (1, "C"), (2, "N")], [[0, 1], [1, 2], [2, 3], [3, 4]],
     [[0, 1], [1, 2], [2, 3], [3, 4], [0, 2]], r"bond 0-2 \(C-CA\): .*bead 0 is bonded to 1 \(N\)"),
    ("ala2", [(0, "C"), (1, "N"), (1, "CA"), (1, "C"), (2, "N")], [[0, 1], [1, 2], [2, 3], [3, 4]],
     [[0, 1], [1, 2], [2, 3], [2, 4]], r"bond 2-4 \(CA-N\): .*bead 2 is bonded to 1 \(N\), 3 \(C\)"),
    # ACE-AAA-NME, C-alpha map: a bond from the first to the third C-alpha passes the second
    ("ace-aaa-nme", [(1, "CA"), (2, "CA"), (3, "CA")], [[0, 1], [1, 2]], [[0, 2], [1, 2]],
     r"bond 0-2 \(CA-CA\): .*passes through other beads"),
])
def test_map_file_bonds_are_checked_against_the_atom_groups(molecule, beads, good, bad, message, tmp_path):
    """A map file's bond between beads whose atom groups are not bonded (directly or through atoms of no bead) is
    refused, naming the bond and the bead's real neighbours; the bonds the atom graph gives are accepted without a
    word; on a topology without bonds the map's bonds are kept, with a warning."""
    import mdtraj as md

    from pathlib import Path

    from cgdml.io.shipped import ala2_pdb_path
    from cgdml.mapping import CGMap

    data = Path(__file__).resolve().parent.parent / "cgdml" / "_data"
    top = md.load_topology(str(ala2_pdb_path() if molecule == "ala2" else data / f"{molecule}_implicit_300K.pdb"))
    spec = [{"name": name, "select": f"resid {res} and name {name}"} for res, name in beads]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        derived = CGMap(spec).fit(top).cg_topology_.bonds.tolist()
        assert derived == good
        assert CGMap(spec, bonds=np.array(good)).fit(top).cg_topology_.bonds.tolist() == good
    with pytest.raises(CgdmlError, match=rf"map.toml: {message}.*fix the bead indices"):
        CGMap(spec, bonds=np.array(bad), label="map.toml").fit(top)
    with pytest.warns(UserWarning, match=r"no covalent path joins the atoms of these beads .* kept as the map file "
                                         r"gives them"):
        kept = CGMap(spec, bonds=np.array(bad)).fit(_bare(top))
    assert sorted(map(sorted, kept.cg_topology_.bonds.tolist())) == sorted(map(sorted, bad))


def test_a_map_file_with_a_bond_that_skips_a_bead_is_one_line_through_the_command(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    top_path, x, f = shipped_subset(tmp_path)
    spec = tmp_path / "skip.toml"
    spec.write_text("bonds = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 2]]\n" + "".join(
        f'[[bead]]\nname = "{n}"\nselect = "resid {r} and name {n}"\n'
        for r, n in [(0, "C"), (1, "N"), (1, "CA"), (1, "C"), (2, "N")]))
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "cgdml.map", "--top", top_path, "--traj", x, "--forces", f, "--map", spec,
                        "-o", tmp_path / "cg.npz", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "bond 0-2 (C-CA)" in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "cg.npz").exists()
