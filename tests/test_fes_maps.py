"""The landscapes of any map (docs/method.md §3): soft torsions, consecutive pairs of them, bond angles and the
end-to-end distance, each with its split-half floor, their mean and the mean of each kind; the second group of
a peptide with a backbone; the end pair and the torsion of each bond from the bead graph."""
import json
import re
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from cgdml.data import CGDataset
from cgdml.fes import compare_fes, compare_landscapes, compare_panels, landscape_panels, split_half_floor
from cgdml.fes.__main__ import main
from cgdml.fes.cvs import (MAP_KINDS, SOFT_TORSION_STD, bond_torsions, circular_std, end_to_end_pair,
                           missing_map_landscapes, soft_torsions, torsion_pairs)
from cgdml.geometry import bond_angles, dihedrals
from cgdml.mapping import map_allatom
from cgdml.topology import CGTopology

pytestmark = pytest.mark.filterwarnings("ignore:.*outside the reference's range:UserWarning")


def chain_frames(angles, torsions, bond=0.38):
    """Frames (n, n_beads, 3) nm of a chain 0-1-...-(m+1) built from its internal coordinates: bond angles
    (n, m) rad at beads 1..m and dihedrals (n, m - 1) rad about bonds 1-2, 2-3, ... (natural extension of
    reference frames)."""
    n, m = angles.shape
    xyz = np.zeros((n, m + 2, 3))
    xyz[:, 1, 0] = bond
    xyz[:, 2] = xyz[:, 1] + bond * np.stack([-np.cos(angles[:, 0]), np.sin(angles[:, 0]), np.zeros(n)], axis=1)
    for k in range(3, m + 2):
        a, b, c = xyz[:, k - 3], xyz[:, k - 2], xyz[:, k - 1]
        bc = (c - b) / np.linalg.norm(c - b, axis=1, keepdims=True)
        nrm = np.cross(b - a, bc)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        theta, phi = angles[:, k - 2], torsions[:, k - 3]
        xyz[:, k] = c + bond * (-np.cos(theta)[:, None] * bc + (np.sin(theta) * np.cos(phi))[:, None]
                                * np.cross(nrm, bc) + (np.sin(theta) * np.sin(phi))[:, None] * nrm)
    return xyz


def five_bead_frames(n, seed, stiff_first=False):
    """A 5-bead chain (3 angles, 2 dihedrals): angles around 100 deg, dihedrals from a two-state mixture, the
    first held at 180 +- 5 deg when ``stiff_first``."""
    rng = np.random.default_rng(seed)
    angles = np.radians(100 + 8 * rng.normal(size=(n, 3)))
    torsions = np.where(rng.random((n, 2)) < 0.3, -1.0, 1.0) + 0.4 * rng.normal(size=(n, 2))
    if stiff_first:
        torsions[:, 0] = np.pi + np.radians(5) * rng.normal(size=n)
    return chain_frames(angles, torsions), angles, np.angle(np.exp(1j * torsions))


def test_chain_builder_is_exact():
    xyz, angles, torsions = five_bead_frames(50, 0)
    assert np.allclose(bond_angles(xyz, [(0, 1, 2), (1, 2, 3), (2, 3, 4)]), angles)
    assert np.allclose(dihedrals(xyz, np.array([(0, 1, 2, 3), (1, 2, 3, 4)]))[0], torsions)


def test_five_bead_chain_without_names():
    """Two soft torsions, their pair, three angles and the end-to-end distance 0-4; each panel's floor is the
    split-half floor of its own CV; the headline mean and the kind means average the panels."""
    topo = CGTopology(["B"] * 5, [(k, k + 1) for k in range(4)])
    model, _, _ = five_bead_frames(3000, 1)
    ref, ref_angles, ref_torsions = five_bead_frames(4000, 2)
    panels = landscape_panels(model, topo, ref)
    assert [(p.kind, p.names) for p in panels] == [
        ("dihedral", ["dihedral 0-1-2-3"]), ("dihedral", ["dihedral 1-2-3-4"]),
        ("dihedral pair", ["dihedral 0-1-2-3", "dihedral 1-2-3-4"]),
        ("angle", ["angle 0-1-2"]), ("angle", ["angle 1-2-3"]), ("angle", ["angle 2-3-4"]),
        ("end-to-end", ["distance 0-4"])]
    assert not any(p.extra for p in panels) and panels[-1].label == "end-to-end distance 0-4"
    assert np.allclose(panels[2].reference, ref_torsions) and np.allclose(panels[4].reference[:, 0], ref_angles[:, 1])
    assert np.allclose(panels[-1].reference[:, 0], np.linalg.norm(ref[:, 4] - ref[:, 0], axis=1))
    assert panels[2].periodic == [True, True] and panels[3].periodic == [False]
    res = compare_panels(panels, bins=24, n_boot=0)
    entries = res["panels"]
    for p, e in zip(panels, entries):
        assert e["kind"] == p.kind and e["group"] == "headline"
        assert e["noise_floor"] == split_half_floor(p.reference, 24, p.range)
        assert e["metrics"] == compare_fes(p.model, p.reference, 24, p.range)
    assert res["mean"]["n_panels"] == 7 and res["extra"] is None
    assert res["mean"]["js"] == pytest.approx(np.mean([e["metrics"]["js"] for e in entries]))
    assert res["mean"]["noise_floor"]["js"] == pytest.approx(np.mean([e["noise_floor"]["js"] for e in entries]))
    assert list(res["kinds"]) == ["dihedral", "dihedral pair", "angle", "end-to-end"]
    assert res["kinds"]["angle"]["n_panels"] == 3
    assert res["kinds"]["angle"]["js"] == pytest.approx(np.mean([e["metrics"]["js"] for e in entries[3:6]]))
    # the same distribution: every landscape near its floor; a model with wrong torsion populations is not
    assert res["mean"]["js"] < 3 * res["mean"]["noise_floor"]["js"]
    bad_xyz, _, _ = five_bead_frames(3000, 3, stiff_first=True)
    worse = compare_panels(landscape_panels(bad_xyz, topo, ref), bins=24, n_boot=0)
    assert worse["kinds"]["dihedral"]["js"] > 10 * res["kinds"]["dihedral"]["js"]
    assert worse["kinds"]["angle"]["js"] < 3 * res["kinds"]["angle"]["noise_floor"]["js"]


def test_stiff_torsion_is_not_a_landscape():
    """A torsion held at 180 +- 5 deg (a trans peptide bond's kind of stiffness) is left out, with its pairs."""
    topo = CGTopology(["B"] * 5, [(k, k + 1) for k in range(4)])
    ref, _, torsions = five_bead_frames(2000, 4, stiff_first=True)
    assert np.degrees(circular_std(torsions[:, 0])) == pytest.approx(5, rel=0.1)
    assert circular_std(torsions[:, 1]) > SOFT_TORSION_STD
    assert soft_torsions(topo, ref).tolist() == [[1, 2, 3, 4]]
    kinds = [p.kind for p in landscape_panels(ref, topo, ref)]
    assert kinds == ["dihedral", "angle", "angle", "angle", "end-to-end"]
    # the reference decides, not the model
    model, _, _ = five_bead_frames(500, 5)
    assert [p.names for p in landscape_panels(model, topo, ref) if p.kind == "dihedral"] == [["dihedral 1-2-3-4"]]
    assert circular_std(np.zeros(10)) == 0 and circular_std(np.linspace(-np.pi, np.pi, 1000, endpoint=False)) > 5


def test_end_to_end_from_a_branched_graph():
    """Bonds 0-1, 1-2, 2-3, 1-4, 4-5, 5-6: the longest path is 3-2-1-4-5-6, not bead 0 to the last bead; with
    a tie, the pair farther apart in the frames wins; bead order does not matter."""
    topo = CGTopology(list("ABCDEFG"), [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6)])
    assert end_to_end_pair(topo) == (3, 6)
    tied = CGTopology(list("ABCDEFGH"), [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6), (5, 7)])
    xyz = np.zeros((3, 8, 3))
    xyz[:, 6, 0], xyz[:, 7, 0] = 1.0, 2.0                            # bead 7 is farther from bead 3
    assert end_to_end_pair(tied, xyz) == (3, 7)
    xyz[:, 6, 0] = 3.0
    assert end_to_end_pair(tied, xyz) == (3, 6)
    perm = np.array([6, 2, 0, 5, 3, 1, 4])                           # new bead k is old bead perm[k]
    inv = np.argsort(perm)
    shuffled = CGTopology([topo.names[i] for i in perm], [(inv[i], inv[j]) for i, j in topo.bonds])
    assert sorted(perm[list(end_to_end_pair(shuffled))]) == [3, 6]
    panels = landscape_panels(np.random.default_rng(0).normal(size=(20, 7, 3)), topo)
    assert panels[-1].kind == "end-to-end" and panels[-1].names == ["distance 3-6"]


def test_torsion_of_each_bond_follows_the_main_chain():
    """One torsion per bond whose ends both have other neighbours: along the largest branches; backbone phi and
    psi by their IUPAC beads; pairs are torsions about bonds that share a bead."""
    # 0-1-2-3-4 with a one-bead branch 5 on 1 and a two-bead branch 6-7 on 3
    topo = CGTopology(list("ABCDEFGH"), [(0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (3, 6), (6, 7)])
    quads = bond_torsions(topo).tolist()
    assert quads == [[0, 1, 2, 3], [1, 2, 3, 6], [2, 3, 6, 7]]       # about 1-2, 2-3 (branch 6-7 > 4), 3-6
    assert torsion_pairs(np.array(quads)) == [(0, 1), (1, 2)]
    # a backbone: the CB branch does not take phi's place; panels named phi/psi
    names = ["C", "N", "CA", "CB", "C", "N"]
    bb = CGTopology(names, [(0, 1), (1, 2), (2, 3), (2, 4), (4, 5)], [1, 2, 2, 2, 2, 3],
                    ["ACE"] + ["ALA"] * 4 + ["NME"])
    assert bond_torsions(bb).tolist() == [[0, 1, 2, 4], [1, 2, 4, 5]]


def test_peptide_keeps_its_headline_and_adds_the_second_group(tmp_path, capsys, monkeypatch):
    """A backbone map: the headline is the (phi, psi) of each residue as before; the landscapes of any map come
    as a second group, with phi and psi named, and the figure draws none of them twice."""
    names = ["C", "N", "CA", "C", "N", "CA", "C", "N"]              # ACE | ALA2 | ALA3 | NME
    res = [1, 2, 2, 2, 3, 3, 3, 4]
    topo = CGTopology(names, [(k, k + 1) for k in range(7)], res, [{1: "ACE", 4: "NME"}.get(r, "ALA") for r in res])
    rng = np.random.default_rng(6)

    def frames(n):
        angles = np.radians(110 + 5 * rng.normal(size=(n, 6)))
        tors = np.column_stack([-1.2 + 0.5 * rng.normal(size=n), 2.4 + 0.8 * rng.normal(size=n),
                                np.pi + np.radians(5) * rng.normal(size=n),                   # omega: stiff
                                -1.2 + 0.5 * rng.normal(size=n), 2.4 + 0.8 * rng.normal(size=n)])
        return chain_frames(angles, tors, bond=0.145)

    model, ref = frames(1500), frames(2000)
    panels = landscape_panels(model, topo, ref)
    head = [p for p in panels if not p.extra]
    assert [(p.label, p.kind) for p in head] == [("ALA2", "phi-psi"), ("ALA3", "phi-psi")]
    extra = [p for p in panels if p.extra]
    assert [p.names for p in extra if p.kind != "angle"] == [
        ["phi ALA2"], ["psi ALA2"], ["phi ALA3"], ["psi ALA3"], ["phi ALA2", "psi ALA2"], ["phi ALA3", "psi ALA3"],
        ["distance 0-7"]]
    assert sum(p.kind == "angle" for p in extra) == 6
    res_all = compare_panels(panels, bins=24, n_boot=5, block=50)
    res_head = compare_panels(head, bins=24, n_boot=5, block=50)
    assert res_all["mean"] == res_head["mean"]                       # the headline is what it was
    assert res_all["extra"]["n_panels"] == len(extra) and "bootstrap" not in res_all["extra"]
    assert res_all["kinds"]["phi-psi"]["js"] == pytest.approx(res_all["mean"]["js"])
    # the command: headline panels under "panels", the second group under "extra", the figure once each
    top = topo.to_mdtraj()
    md.Trajectory(model.astype(np.float32), top).save(str(tmp_path / "t.h5"))
    CGDataset.from_arrays(ref, np.zeros_like(ref), topology=top).save(tmp_path / "ref.npz")
    js = tmp_path / "m.json"
    assert main([str(tmp_path / "t.h5"), "--reference", str(tmp_path / "ref.npz"), "-o", str(tmp_path / "f.png"),
                 "--json", str(js), "--n-boot", "0", "--bins", "24"]) == 0
    report = json.loads(js.read_text())
    assert [p["label"] for p in report["panels"]] == ["ALA2", "ALA3"] and report["cv"] == "phi-psi"
    assert report["extra"]["mean"]["n_panels"] == len(extra) == len(report["extra"]["panels"])
    assert set(report["kinds"]) == {"phi-psi", "dihedral", "dihedral pair", "angle", "end-to-end"}
    out = capsys.readouterr().out
    assert "second group" in out and "end-to-end (mean of 1)" in out
    fig_rows = []
    monkeypatch.setattr("cgdml.fes.plot.plot_landscapes", lambda path, p, *a, **k: fig_rows.extend(x.label for x in p))
    compare_landscapes(str(tmp_path / "t.h5"), str(tmp_path / "ref.npz"), n_boot=0, plot=tmp_path / "g.png")
    assert fig_rows == ["ALA2", "ALA3", "end-to-end distance 0-7"]


def test_command_on_a_map_without_backbone(tmp_path, capsys):
    topo = CGTopology(["CA"] * 5, [(k, k + 1) for k in range(4)])
    model, _, _ = five_bead_frames(600, 7)
    ref, _, _ = five_bead_frames(800, 8)
    top = topo.to_mdtraj()
    md.Trajectory(model.astype(np.float32), top).save(str(tmp_path / "t.h5"))
    CGDataset.from_arrays(ref, np.zeros_like(ref), topology=top).save(tmp_path / "ref.npz")
    js = tmp_path / "m.json"
    assert main([str(tmp_path / "t.h5"), "--reference", str(tmp_path / "ref.npz"), "-o", str(tmp_path / "f.png"),
                 "--json", str(js), "--n-boot", "4", "--block", "50"]) == 0
    report = json.loads(js.read_text())
    assert report["cv"] == "map" and len(report["panels"]) == 7 and "extra" not in report
    assert report["mean"]["n_panels"] == 7 and "bootstrap" in report["mean"]
    assert list(report["kinds"]) == ["dihedral", "dihedral pair", "angle", "end-to-end"]
    out = capsys.readouterr().out
    assert "mean over 7 landscapes" in out and "dihedral pair (mean of 1)" in out


@pytest.mark.parametrize("n_beads, missing", [
    (2, {"dihedral": "no bond has further bonded beads", "dihedral pair": "no soft torsion",
         "angle": "no bead has two bonded neighbours"}),
    (3, {"dihedral": "no bond has further bonded beads", "dihedral pair": "no soft torsion"}),
    (4, {"dihedral": "all 1 torsion.* are stiff", "dihedral pair": "no soft torsion"}),
    (5, {"dihedral pair": "no two soft torsions about bonds that share a bead"})])
def test_a_map_without_some_kind_says_why(tmp_path, capsys, n_beads, missing):
    """Short chains lack torsions, pairs or angles: scored on what they have, and the report and the command
    say which kind is missing and why."""
    topo = CGTopology(["B"] * n_beads, [(k, k + 1) for k in range(n_beads - 1)])
    xyz, _, _ = five_bead_frames(600, 9, stiff_first=True)
    xyz = xyz[:, :n_beads]
    kinds = {p.kind for p in landscape_panels(xyz, topo, xyz)}
    assert kinds == set(MAP_KINDS) - set(missing)
    got = missing_map_landscapes(topo, xyz)
    assert set(got) == set(missing) and all(re.match(missing[k], got[k]) for k in missing)
    top = topo.to_mdtraj()
    md.Trajectory(xyz.astype(np.float32), top).save(str(tmp_path / "t.h5"))
    CGDataset.from_arrays(xyz, np.zeros_like(xyz), topology=top).save(tmp_path / "ref.npz")
    js = tmp_path / "m.json"
    assert main([str(tmp_path / "t.h5"), "--reference", str(tmp_path / "ref.npz"), "-o", str(tmp_path / "f.png"),
                 "--json", str(js), "--n-boot", "0"]) == 0
    report = json.loads(js.read_text())
    assert report["missing"] == got and set(report["kinds"]) == kinds
    out = capsys.readouterr().out
    assert all(f"no {k} landscape: {got[k]}" in out for k in missing)


# ------------------------------------------------------------------------------------------- the shipped data

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "ace-aaa-nme_implicit_300K"


def shipped_map(tmp_path, beads, stride=20):
    """The shipped ACE-AAA-NME run (25 ns) mapped with ``beads`` [(name, selection)], every ``stride``-th frame."""
    path = tmp_path / "map.toml"
    path.write_text("\n".join(f'[[bead]]\nname = "{n}"\nselect = "{s}"\n' for n, s in beads))
    npz = SHIPPED.with_suffix(".npz")
    return map_allatom(SHIPPED.with_suffix(".pdb"), npz, npz, path, stride=stride)


CA_BEADS = [("CA", "resid 0 and name CH3")] + [("CA", f"resid {r} and name CA") for r in (1, 2, 3)] + \
    [("CA", "resid 4 and name C")]


def test_shipped_c_alpha_map_in_any_bead_order(tmp_path):
    """ACE-AAA-NME with 5 beads all named CA (no phi/psi): two soft pseudo-dihedrals, their pair, three angles,
    the end-to-end distance from ACE CH3 to NME C; the same landscapes, in values, when the beads are listed
    in another order; the two halves of the run agree within a few floors."""
    data = shipped_map(tmp_path, CA_BEADS)
    topo = data.cg_topology
    assert not topo.backbone() and topo.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    half = len(data.coords) // 2
    panels = landscape_panels(data.coords[:half], topo, data.coords[half:])
    assert [p.kind for p in panels] == ["dihedral", "dihedral", "dihedral pair", "angle", "angle", "angle",
                                        "end-to-end"]
    assert panels[-1].names == ["distance 0-4"] and missing_map_landscapes(topo, data.coords) == {}
    res = compare_panels(panels, n_boot=0)
    assert res["mean"]["js"] < 3 * res["mean"]["noise_floor"]["js"]
    # listed as CA2, NME C, CA1, ACE CH3, CA3: new bead k is old bead order[k]
    order = [2, 4, 1, 0, 3]
    shuffled = shipped_map(tmp_path, [CA_BEADS[k] for k in order])
    assert np.allclose(shuffled.coords, data.coords[:, order])
    moved = landscape_panels(shuffled.coords[:half], shuffled.cg_topology, shuffled.coords[half:])
    assert [p.kind for p in moved] == [p.kind for p in panels]
    assert moved[-1].names == [f"distance {min(order.index(0), order.index(4))}-{max(order.index(0), order.index(4))}"]
    columns = lambda ps, kind: sorted(np.round(c, 5).tolist() for p in ps if p.kind == kind  # noqa: E731
                                      for c in p.reference.T)
    for kind in MAP_KINDS:                              # a torsion read backwards is the same angle
        assert columns(panels, kind) == columns(moved, kind), kind


def test_shipped_backbone_and_heavy_atom_maps(tmp_path):
    """The backbone map (11 beads) keeps its per-residue (phi, psi) headline; the heavy-atom map (20 beads, every
    C, N, O) too, and its soft torsions are exactly the three phi and psi, the peptide bonds' omega being
    stiff (the backbone map's end bonds have no torsion); both have the landscapes of any map as the second
    group, ends ACE CH3 / C to NME."""
    top = md.load_topology(str(SHIPPED.with_suffix(".pdb")))
    backbone = [("C", "resid 0 and name C")] + [(n, f"resid {r} and name {n}") for r in (1, 2, 3)
                                                 for n in ("N", "CA", "C")] + [("N", "resid 4 and name N")]
    heavy = [(a.name, f"resid {a.residue.index} and name {a.name}") for a in top.atoms if a.element.symbol != "H"]
    for beads, n_angles, n_omega in ((backbone, 9, 2), (heavy, 25, 4)):
        data = shipped_map(tmp_path, beads)
        topo = data.cg_topology
        assert data.n_beads == len(beads) and len(topo.angles) == n_angles
        half = len(data.coords) // 2
        panels = landscape_panels(data.coords[:half], topo, data.coords[half:])
        head = [p for p in panels if not p.extra]
        assert [(p.label, p.kind) for p in head] == [(f"ALA{r}", "phi-psi") for r in (2, 3, 4)]
        torsions = [p.names[0] for p in panels if p.kind == "dihedral"]
        assert torsions == [f"{a} ALA{r}" for r in (2, 3, 4) for a in ("phi", "psi")]
        omegas = [q for q in bond_torsions(topo) if topo.names[q[1]] == "C" and topo.names[q[2]] == "N"]
        omega_std = np.degrees(circular_std(dihedrals(data.coords, np.array(omegas))[0]))
        assert len(omegas) == n_omega and np.all(omega_std < 15)
        assert sum(p.kind == "angle" for p in panels) == n_angles
        (end,) = [p for p in panels if p.kind == "end-to-end"]
        i, j = (int(b) for b in end.names[0].split()[1].split("-"))
        assert j == data.n_beads - 1 and i in ((0,) if beads is backbone else (0, 2))  # ACE CH3 or O, NME
        res = compare_panels(panels, n_boot=0)
        assert res["extra"]["js"] < 3 * res["extra"]["noise_floor"]["js"]
