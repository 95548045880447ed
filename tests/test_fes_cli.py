"""Landscapes of any peptide and any CV (docs/method.md §3, §3b): per-residue panels, --cv, TICA, bead order
independence, and the fes command's JSON and one-line errors (maps without backbone: test_fes_maps.py)."""
import json

import mdtraj as md
import numpy as np
import pytest

from cgdml._cli import run_cli
from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.fes import (CV, compare_fes, compare_panels, landscape_panels, parse_cvs, plot_landscapes,
                       residue_phi_psi, split_half_floor, topology_distributions)
from cgdml.fes.__main__ import main
from cgdml.topology import CGTopology

# ACE-ALA-ALA-ALA-NME backbone beads: C | N CA C | N CA C | N CA C | N
PEPTIDE_NAMES = ["C", "N", "CA", "C", "N", "CA", "C", "N", "CA", "C", "N"]
PEPTIDE_RES = [1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5]
PEPTIDE_RESNAMES = {1: "ACE", 2: "ALA", 3: "ALA", 4: "ALA", 5: "NME"}


def peptide_topology():
    return CGTopology(PEPTIDE_NAMES, [(i, i + 1) for i in range(10)], PEPTIDE_RES,
                      [PEPTIDE_RESNAMES[r] for r in PEPTIDE_RES])


def sample(parents, n_frames, seed, tau=5.0, length=0.15):
    """Correlated toy frames (n_frames, n_beads, 3) nm of a tree of beads (``parents[k]`` is bead k's parent,
    -1 for the root, parents listed before children): each bond vector is an AR(1) series of random
    directions, scaled to ``length``."""
    rng = np.random.default_rng(seed)
    n = len(parents)
    a = np.exp(-1.0 / tau)
    v = np.empty((n_frames, n, 3))
    v[0] = rng.normal(size=(n, 3))
    for t in range(1, n_frames):
        v[t] = a * v[t - 1] + np.sqrt(1 - a * a) * rng.normal(size=(n, 3))
    v *= length / np.linalg.norm(v, axis=-1, keepdims=True)
    xyz = np.zeros((n_frames, n, 3))
    for k, p in enumerate(parents):
        if p >= 0:
            xyz[:, k] = xyz[:, p] + v[:, k]
    return xyz


def write_case(tmp_path, topo, parents, n_model=300, n_ref=400):
    top = topo.to_mdtraj()
    traj = tmp_path / "t.h5"
    md.Trajectory(sample(parents, n_model, 1).astype(np.float32), top).save(str(traj))
    ref_xyz = sample(parents, n_ref, 2)
    CGDataset.from_arrays(ref_xyz, np.zeros_like(ref_xyz), topology=top).save(tmp_path / "ref.npz")
    return traj, tmp_path / "ref.npz", ref_xyz


CHAIN11 = [-1] + list(range(10))
# toy model frames may stray just outside the reference's range of a distance or TICA landscape (warned about)
pytestmark = pytest.mark.filterwarnings("ignore:.*outside the reference's range:UserWarning")


def test_cli_three_residues_three_panels(tmp_path, capsys):
    topo = peptide_topology()
    traj, ref, ref_xyz = write_case(tmp_path, topo, CHAIN11)
    png, js = tmp_path / "fes.png", tmp_path / "m.json"
    assert main([str(traj), "--reference", str(ref), "-o", str(png), "--json", str(js), "--n-boot", "10",
                 "--block", "20"]) == 0
    report = json.loads(js.read_text())
    assert [p["label"] for p in report["panels"]] == ["ALA2", "ALA3", "ALA4"]
    assert [p["residue"] for p in report["panels"]] == ["ALA2", "ALA3", "ALA4"]
    for k, (label, ref_cv) in enumerate(residue_phi_psi(ref_xyz, topo)):
        p = report["panels"][k]
        assert p["cvs"] == [f"phi {label}", f"psi {label}"] and p["periodic"] == [True, True]
        assert p["metrics"]["fes_rmse"] == pytest.approx(compare_fes(
            residue_phi_psi(md.load(str(traj)))[k][1], ref_cv)["fes_rmse"])
        assert p["noise_floor"] == split_half_floor(ref_cv)
        assert p["bootstrap"]["block"] == 20 and set(p["phi_positive"]) == {"model", "reference"}
    mean = report["mean"]
    assert mean["n_panels"] == 3
    assert mean["fes_rmse"] == pytest.approx(np.mean([p["metrics"]["fes_rmse"] for p in report["panels"]]))
    assert mean["bootstrap"]["js"]["lo"] <= mean["js"] <= mean["bootstrap"]["js"]["hi"]
    assert "metrics" not in report                                # single-landscape keys only for one panel
    assert report["cv"] == "phi-psi"
    assert png.stat().st_size > 20000
    out = capsys.readouterr().out
    assert "ALA3: FES RMSE" in out and "mean over 3 landscapes" in out


def test_cli_cv_option(tmp_path):
    topo = peptide_topology()
    traj, ref, ref_xyz = write_case(tmp_path, topo, CHAIN11, n_model=200, n_ref=300)
    js = tmp_path / "m.json"
    assert main([str(traj), "--reference", str(ref), "-o", str(tmp_path / "a.png"), "--json", str(js),
                 "--cv", "phi:3,psi:3", "--n-boot", "0"]) == 0
    report = json.loads(js.read_text())
    assert len(report["panels"]) == 1 and report["panels"][0]["label"] == "ALA3"
    cv_ref = residue_phi_psi(ref_xyz, topo)[1][1]
    assert report["metrics"] == compare_fes(residue_phi_psi(md.load(str(traj)))[1][1], cv_ref)   # old keys
    assert report["noise_floor"] == split_half_floor(cv_ref) and "phi_positive" in report
    # a 1D distance landscape and a 2D angle/dihedral one; non-periodic ranges from the reference, padded
    assert main([str(traj), "--reference", str(ref), "-o", str(tmp_path / "b.png"), "--json", str(js),
                 "--cv", "distance:0,10", "--cv", "angle:0,1,2,dihedral:1,2,3,4", "--n-boot", "5"]) == 0
    report = json.loads(js.read_text())
    d, ad = report["panels"]
    assert d["cvs"] == ["distance 0-10"] and d["periodic"] == [False]
    r = np.linalg.norm(ref_xyz[:, 10] - ref_xyz[:, 0], axis=1)
    lo, hi = d["range"][0]
    assert lo < r.min() and hi > r.max() and hi - lo < 1.2 * (r.max() - r.min())
    assert ad["cvs"] == ["angle 0-1-2", "dihedral 1-2-3-4"] and ad["periodic"] == [False, True]
    assert ad["range"][1] == pytest.approx([-np.pi, np.pi])
    assert report["mean"]["n_panels"] == 2 and (tmp_path / "b.png").exists()


def test_parse_cvs():
    assert parse_cvs("phi:2,psi:2") == [CV("phi", [2]), CV("psi", [2])]
    assert parse_cvs("dihedral:0,1,2,3,distance:0, 13") == [CV("dihedral", [0, 1, 2, 3]), CV("distance", [0, 13])]
    assert parse_cvs("Angle: 0 1 2") == [CV("angle", [0, 1, 2])]
    assert parse_cvs("dist:4,5")[0].kind == "distance"
    for bad, msg in [("dihedral:0,1,2", "needs 4 bead indices"), ("phi:2,3", "needs a residue number"),
                     ("wiggle:1", "unknown CV kind"), ("0,1", "before any kind"), ("distance:0,x", "not an integer"),
                     ("", "no CV given")]:
        with pytest.raises(CgdmlError, match=msg):
            parse_cvs(bad)


@pytest.mark.parametrize("cv, msg", [
    ("distance:0,13", "bead 13 does not exist (the molecule has 11 beads, 0..10)"),
    ("phi:5", "residue 5 has no (phi, psi)"),
    ("angle:0,1,1", "must be distinct"),
    ("phi:2,psi:2,distance:0,1", "one or two CVs"),
    ("bond:0,1", "unknown CV kind"),
])
def test_cli_bad_cv_is_one_line_exit_2_and_no_output(tmp_path, capsys, cv, msg):
    traj, ref, _ = write_case(tmp_path, peptide_topology(), CHAIN11, n_model=50, n_ref=60)
    png, js = tmp_path / "x.png", tmp_path / "x.json"
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(traj), "--reference", str(ref), "-o", str(png), "--json", str(js), "--cv", cv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and msg in err and "Traceback" not in err
    assert not png.exists() and not js.exists()


def branched_toy():
    """6 beads: 0-1-2-3 with branches 4 on 1 and 5 on 2 (several proper dihedrals, no backbone names)."""
    return CGTopology(["A", "B", "C", "D", "E", "F"], [(0, 1), (1, 2), (2, 3), (1, 4), (2, 5)]), [-1, 0, 1, 2, 1, 2]


def test_tica_on_request(tmp_path):
    topo, parents = branched_toy()
    assert not topo.backbone() and len(topo.dihedrals) > 2
    model, ref = sample(parents, 300, 1), sample(parents, 400, 2)
    (panel,) = landscape_panels([model[:150], model[150:]], topo, ref, cvs="tica")
    assert panel.names == ["TIC 1", "TIC 2"] and panel.dim == 2 and panel.periodic == [False, False]
    assert panel.model.shape == (300, 2) and panel.reference.shape == (400, 2)
    # fitted on the reference (kinetic-map scaling: unit variance of its projection), applied to both
    assert np.allclose(panel.reference.std(axis=0), panel.reference.std(axis=0)[0], rtol=0.5)
    lo, hi = panel.range[0]
    assert lo < panel.reference[:, 0].min() and hi > panel.reference[:, 0].max()
    res = compare_panels([panel], bins=12, n_boot=5)
    assert np.isfinite(res["mean"]["fes_rmse"]) and res["panels"][0]["metrics"]["n_ref"] <= 400
    # without a reference: fitted on the model frames
    (alone,) = landscape_panels(model, topo, cvs=["tica"])
    assert alone.reference is None and "model frames" in alone.label
    # the command line
    traj, refp, _ = write_case(tmp_path, topo, parents)
    js = tmp_path / "m.json"
    assert main([str(traj), "--reference", str(refp), "-o", str(tmp_path / "t.png"), "--json", str(js),
                 "--n-boot", "0", "--bins", "12", "--cv", "tica"]) == 0
    report = json.loads(js.read_text())
    assert report["cv"] == "tica" and report["panels"][0]["cvs"] == ["TIC 1", "TIC 2"]
    assert "metrics" in report and "phi_positive" not in report


@pytest.mark.parametrize("n_beads", [4, 5])
def test_no_backbone_with_one_or_two_dihedrals_uses_them(n_beads):
    topo = CGTopology([f"B{k}" for k in range(n_beads)], [(k, k + 1) for k in range(n_beads - 1)])
    xyz = sample([-1] + list(range(n_beads - 1)), 200, 3)
    panels = landscape_panels(xyz, topo, xyz[::-1])
    torsions = [p for p in panels if p.kind == "dihedral"]
    assert [p.names for p in torsions] == [[f"dihedral {'-'.join(map(str, q))}"] for q in topo.dihedrals]
    assert all(p.periodic == [True] and p.range == [(-np.pi, np.pi)] for p in torsions)
    assert compare_panels(panels, n_boot=0)["mean"]["fes_rmse"] == pytest.approx(0.0, abs=1e-12)


def test_bead_order_does_not_change_phi_psi(tmp_path):
    topo = peptide_topology()
    xyz = sample(CHAIN11, 100, 4)
    perm = np.random.default_rng(0).permutation(topo.n_beads)       # new bead k is old bead perm[k]
    inv = np.argsort(perm)
    shuffled = CGTopology([topo.names[i] for i in perm], [(inv[i], inv[j]) for i, j in topo.bonds],
                          topo.residue_ids[perm], [topo.residue_names[i] for i in perm])
    ordered = residue_phi_psi(xyz, topo)
    got = residue_phi_psi(xyz[:, perm], shuffled)
    assert [lab for lab, _ in got] == [lab for lab, _ in ordered] == ["ALA2", "ALA3", "ALA4"]
    for (_, a), (_, b) in zip(got, ordered):
        assert np.allclose(a, b, atol=1e-12)
    # through an .h5 file (the mdtraj topology splits the scattered residues into segments)
    md.Trajectory(xyz[:, perm].astype(np.float32), shuffled.to_mdtraj()).save(str(tmp_path / "s.h5"))
    from_file = residue_phi_psi(md.load(str(tmp_path / "s.h5")))
    assert [lab for lab, _ in from_file] == ["ALA2", "ALA3", "ALA4"]
    for (_, a), (_, b) in zip(from_file, ordered):
        assert np.allclose(a, b, atol=1e-4)
    # --cv bead indices follow the coordinate columns: the permuted distance is the same distance
    d_ord = landscape_panels(xyz, topo, cvs="distance:0,10")[0].model
    d_sh = landscape_panels(xyz[:, perm], shuffled, cvs=f"distance:{inv[0]},{inv[10]}")[0].model
    assert np.allclose(d_ord, d_sh)


def test_distributions_follow_topology_and_plot(tmp_path):
    topo, parents = branched_toy()
    xyz = sample(parents, 200, 5)
    dist = topology_distributions(topo, xyz, xyz)
    labels = [lab for lab, _, _ in dist]
    assert len(dist) == len(topo.bonds) + len(topo.angles)
    assert "bond 1-4 B-E (nm)" in labels and "angle 0-1-4 A-B-E (deg)" in labels
    assert np.allclose(dist[0][1], 0.15)
    panels = landscape_panels(xyz, topo, xyz, cvs=["dihedral:0,1,2,3", "distance:0,3,angle:0,1,2"])
    fig = plot_landscapes(tmp_path / "p.png", panels, bins=20, distributions=dist)
    assert (tmp_path / "p.png").stat().st_size > 10000
    texts = [ax.get_ylabel() for ax in fig.get_axes()]
    assert "probability density" in texts


def test_python_landscapes_equal_the_commands_json(tmp_path):
    """compare_landscapes is what the command runs: its report is the command's JSON (less the provenance)."""
    from cgdml.fes import compare_landscapes

    topo = peptide_topology()
    traj, ref, _ = write_case(tmp_path, topo, CHAIN11, n_model=200, n_ref=300)
    js = tmp_path / "m.json"
    for cvs in ([], ["phi:3,psi:3"], ["distance:0,10", "Angle: 0 1 2"]):
        args = sum((["--cv", c] for c in cvs), [])
        assert main([str(traj), "--reference", str(ref), "-o", str(tmp_path / "a.png"), "--json", str(js),
                     "--n-boot", "8", "--block", "20", *args]) == 0
        command = json.loads(js.read_text())
        del command["written_by"]
        mine = compare_landscapes(str(traj), str(ref), cvs=cvs or None, n_boot=8, block=20)
        assert json.loads(json.dumps(mine)) == command
    # objects instead of files: the same numbers
    objects = compare_landscapes(md.load(str(traj)), CGDataset.load(ref), n_boot=8, block=20)
    assert objects["panels"] == compare_landscapes(str(traj), str(ref), n_boot=8, block=20)["panels"]
    assert objects["trajectories"] == [None] and objects["reference"] is None


def test_lagtime_without_tica_is_refused(tmp_path):
    traj, ref, _ = write_case(tmp_path, peptide_topology(), CHAIN11, n_model=50, n_ref=60)
    with pytest.raises(CgdmlError, match="TICA lag time .* applies only to a TICA landscape"):
        main([str(traj), "--reference", str(ref), "-o", str(tmp_path / "x.png"), "--lagtime", "3"])
    assert not (tmp_path / "x.png").exists()
    topo, parents = branched_toy()                                  # a TICA landscape takes it
    model, ref_xyz = sample(parents, 300, 1), sample(parents, 400, 2)
    with pytest.raises(CgdmlError, match="TICA lag time .* applies only to a TICA landscape"):
        landscape_panels(model, topo, ref_xyz, lagtime=3)           # the default landscapes are not TICA
    (panel,) = landscape_panels(model, topo, ref_xyz, cvs="tica", lagtime=3)
    assert "lag 3 frames" in panel.label


def test_figure_rows_are_named_and_titles_do_not_overlap(tmp_path):
    """Every row names its landscape; the figure title overlaps no panel or row title; 1D panels get no note
    about white bins and y-limits that show their curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from test_fes import _overlap

    topo = peptide_topology()
    xyz, ref = sample(CHAIN11, 400, 1), sample(CHAIN11, 500, 2)
    panels = landscape_panels(xyz, topo, ref, cvs=["phi:2,psi:2", "distance:0,10", "angle:0,1,2,dihedral:1,2,3,4"])
    fig = plot_landscapes(tmp_path / "p.png", panels, bins=20, results=compare_panels(panels, bins=20, n_boot=0))
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    rows = fig.subfigs
    assert [sf._suptitle.get_text() for sf in rows] == ["1. ALA2", "2. distance 0-10",
                                                        "3. angle 0-1-2 / dihedral 1-2-3-4"]
    head = fig._suptitle.get_window_extent(renderer)
    titles = [sf._suptitle.get_window_extent(renderer) for sf in rows]
    titles += [ax.title.get_window_extent(renderer) for ax in fig.get_axes() if ax.get_title()]
    assert not any(_overlap(head, t) for t in titles)
    assert "never visited" in fig._suptitle.get_text()
    (curves,) = [ax for ax in fig.get_axes() if ax.get_ylabel() == "F (kT)" and ax.get_label() != "<colorbar>"]
    top = max(np.nanmax(line.get_ydata()) for line in curves.get_lines())
    assert top < curves.get_ylim()[1] < 1.2 * top
    (bars,) = [ax for ax in fig.get_axes() if ax.get_ylabel() == r"$\Delta F$ (kT)" and ax.get_label() != "<colorbar>"]
    heights = [abs(p.get_height()) for p in bars.patches if np.isfinite(p.get_height())]
    assert max(heights) < bars.get_ylim()[1] < 1.2 * max(heights)
    one_d = plot_landscapes(tmp_path / "q.png", panels[1:2], bins=20)
    assert "never visited" not in one_d._suptitle.get_text() + "".join(t.get_text() for t in one_d.texts)
