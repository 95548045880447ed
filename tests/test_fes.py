"""FES histograms and metric (DESIGN §3), hand-computed examples, (phi, psi) against mdtraj, plots and CLI."""
import json
import math

import mdtraj as md
import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.topology import CGTopology, chain_topology
from cgdml.fes.__main__ import main
from cgdml.fes import (bonds_and_angles, bootstrap_metrics, compare_fes, histogram_fes, phi_psi,
                       split_half_floor)


def test_histogram_fes_is_minus_log_probability():
    cv = np.array([0.1, 0.2, 0.3, 2.0, -2.0, 3.2])          # 3.2 is outside [-pi, pi)
    F, edges, counts = histogram_fes(cv, bins=4, kT=2.0)
    assert np.allclose(edges, np.linspace(-np.pi, np.pi, 5))
    assert counts.tolist() == [1, 0, 3, 1]
    assert np.isinf(F[1]) and F[2] == 0.0
    assert F[0] == pytest.approx(-2.0 * math.log(1 / 3)) and F[3] == pytest.approx(F[0])
    cv2 = np.column_stack([cv[:5], -cv[:5]])
    F2, (ex, ey), c2 = histogram_fes(cv2, bins=4)
    ref, _, _ = np.histogram2d(cv2[:, 0], cv2[:, 1], bins=[ex, ey])
    assert np.array_equal(c2, ref)
    w = np.array([1.0, 1.0, 2.0, 4.0, 0.0])
    _, _, cw = histogram_fes(cv[:5], bins=4, weights=w)
    assert cw.tolist() == [0.0, 0.0, 4.0, 4.0]


def test_metric_zero_for_identical_inputs():
    cv = np.random.default_rng(0).uniform(-np.pi, np.pi, size=(500, 2))
    m = compare_fes(cv, cv)
    assert m["fes_rmse"] == 0.0 and abs(m["js"]) < 1e-15 and m["bins_missed_by_model"] == 0


def test_metric_hand_computed_with_half_sample_and_offset():
    # 2 bins on [0, 2): reference counts [3, 1]; model counts [1, 0] -> the empty bin counts as 0.5 samples
    ref = np.array([0.5, 0.5, 0.5, 1.5])
    model = np.array([0.5])
    m = compare_fes(model, ref, bins=2, range=(0.0, 2.0))
    w = [0.75, 0.25]
    diff = [-math.log(1.0) + math.log(0.75), -math.log(0.5) + math.log(0.25)]   # F_model - F_ref per bin
    offset = w[0] * diff[0] + w[1] * diff[1]
    rmse = math.sqrt(w[0] * (diff[0] - offset) ** 2 + w[1] * (diff[1] - offset) ** 2)
    assert m["offset"] == pytest.approx(offset) and m["fes_rmse"] == pytest.approx(rmse)
    assert m["fes_rmse"] == pytest.approx(0.17557, abs=1e-5)
    mid = [0.875, 0.125]
    js = 0.5 * (0.75 * math.log(0.75 / mid[0]) + 0.25 * math.log(0.25 / mid[1])) + 0.5 * math.log(1 / mid[0])
    assert m["js"] == pytest.approx(js) and m["js"] == pytest.approx(0.09561, abs=1e-5)
    assert m["bins_missed_by_model"] == 1 and m["bins_ref_visited"] == 2


def test_metric_offset_free_and_only_over_reference_bins():
    # model = reference distribution on its bins, scaled x3, plus mass in a bin the reference never visits:
    # F differs by a constant there, removed by the offset -> rmse 0; JS sees the extra mass
    ref = np.repeat([0.5, 1.5, 2.5], [2, 1, 1])
    model = np.concatenate([np.repeat([0.5, 1.5, 2.5], [6, 3, 3]), np.full(12, 3.5)])
    m = compare_fes(model, ref, bins=4, range=(0.0, 4.0))
    assert m["fes_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert m["offset"] == pytest.approx(math.log(2.0))
    # p = [.5, .25, .25, 0], q = [.25, .125, .125, .5], m = (p + q) / 2: KL(p|m) = ln(4/3), KL(q|m) = ln(4/3) / 2
    assert m["js"] == pytest.approx(0.75 * math.log(4.0 / 3.0))


def ar1(rng, n, tau=20.0, sigma=0.7):
    """Stationary 2D AR(1) series N(0, sigma^2) with correlation time tau frames."""
    from scipy.signal import lfilter

    a = math.exp(-1.0 / tau)
    e = rng.normal(0.0, sigma * math.sqrt(1 - a * a), size=(n, 2))
    e[0] = rng.normal(0.0, sigma, size=2)
    return lfilter([1.0], [1.0, -a], e, axis=0)


def test_split_half_floor():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 0.7, size=(4000, 2))
    floor = split_half_floor(ref)
    assert floor == compare_fes(ref[2000:], ref[:2000])
    assert 0 < floor["fes_rmse"] < 1.0 and 0 < floor["js"] < 0.2


def test_block_bootstrap_error_bars_match_replicate_spread():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 0.7, size=(20000, 2))
    # spread of the metrics over 40 independent correlated model runs (measured: rmse 0.034, js 0.0037)
    reps = np.array([[compare_fes(ar1(rng, 4000), ref)[k] for k in ("fes_rmse", "js")] for _ in range(40)])
    spread = reps.std(axis=0, ddof=1)
    x = ar1(rng, 4000)
    blocked = bootstrap_metrics(x, ref, n_boot=100, block=100)       # block = 5 correlation times
    iid = bootstrap_metrics(x, ref, n_boot=100, block=1)
    for j, k in enumerate(("fes_rmse", "js")):
        assert 0.6 < blocked[k]["std"] / spread[j] < 2.0, (k, blocked[k]["std"], spread[j])
        assert iid[k]["std"] < 0.75 * blocked[k]["std"]                # ignoring correlation underestimates
        assert blocked[k]["point"] == compare_fes(x, ref)[k]
        assert blocked[k]["lo"] <= blocked[k]["point"] <= blocked[k]["hi"]
        assert blocked[k]["bias"] > 0                                  # repeated frames visit fewer bins
    bad = bootstrap_metrics(ar1(rng, 4000) + 0.5, ref, n_boot=50, block=100)
    assert blocked["js"]["hi"] < bad["js"]["lo"] and blocked["fes_rmse"]["hi"] < bad["fes_rmse"]["lo"]
    with pytest.raises(CgdmlError, match="block"):
        bootstrap_metrics(x, ref, block=10**6)


def peptide_topology(names, residue_names, residue_of_bead, bonds=None):
    """mdtraj Topology with residues (``residue_of_bead`` indexes ``residue_names``; residue numbers start at
    1) and ``bonds`` (default: a chain in bead order)."""
    res = np.asarray(residue_of_bead)
    bonds = [(i, i + 1) for i in range(len(names) - 1)] if bonds is None else bonds
    return CGTopology(names, bonds, residue_ids=res + 1, residue_names=[residue_names[r] for r in res]).to_mdtraj()


CB_BONDS = [(0, 1), (1, 2), (2, 3), (2, 4), (4, 5)]          # C-N-CA(-CB)-C-N: CB is a branch on CA


def _peptide(n_frames=20, cb=False, seed=0):
    rng = np.random.default_rng(seed)
    names = ["C", "N", "CA", "CB", "C", "N"] if cb else ["C", "N", "CA", "C", "N"]
    res = [0, 1, 1, 1, 1, 2] if cb else [0, 1, 1, 1, 2]
    xyz = np.cumsum(rng.normal(0, 0.15, size=(n_frames, len(names), 3)), axis=1)
    return names, res, xyz


@pytest.mark.parametrize("cb", [False, True])
def test_phi_psi_matches_mdtraj(cb):
    names, res, xyz = _peptide(cb=cb)
    bonds = CB_BONDS if cb else None
    top = peptide_topology(names, ["ACE", "ALA", "NME"], res, bonds)
    traj = md.Trajectory(xyz.astype(np.float32), top)
    got = phi_psi(traj)
    assert np.allclose(got[:, 0], md.compute_phi(traj)[1][:, 0])
    assert np.allclose(got[:, 1], md.compute_psi(traj)[1][:, 0])
    assert np.allclose(phi_psi(xyz, top), got)
    # (phi, psi) come from bead names along bonds: the same beads in one anonymous residue give the same angles
    flat = peptide_topology(names, ["CG"], [0] * len(names), bonds)
    assert md.compute_phi(md.Trajectory(xyz.astype(np.float32), flat))[1].shape[1] == 0
    assert np.allclose(phi_psi(xyz, flat), got, atol=1e-6)


def test_phi_psi_known_geometry_and_sign():
    # C-N-CA-C with the last C rotated +60 deg about N-CA (IUPAC: clockwise looking down N->CA is positive)
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.0, 0.0, 0.0])
    c = np.array([0.0, 0.0, 1.0])
    ang = np.deg2rad(60.0)
    d = c + np.array([np.cos(ang), np.sin(ang), 0.0])
    e = d + np.array([0.0, 0.0, 1.0])
    xyz = np.array([[a, b, c, d, e]]) * 0.15
    top = peptide_topology(["C", "N", "CA", "C", "N"], ["ACE", "ALA", "NME"], [0, 1, 1, 1, 2])
    phi = phi_psi(xyz, top)[0, 0]
    assert abs(abs(phi) - np.deg2rad(60.0)) < 1e-5
    assert np.isclose(phi, md.compute_dihedrals(md.Trajectory(xyz.astype(np.float32), top), [[0, 1, 2, 3]])[0, 0])


def test_phi_psi_no_backbone_is_clear_error():
    top = chain_topology(["B0", "B1", "B2", "B3"])
    with pytest.raises(CgdmlError, match="no backbone"):
        phi_psi(np.zeros((2, 4, 3)), top)


def test_bonds_and_angles():
    xyz = np.array([[[0, 0, 0], [0.1, 0, 0], [0.1, 0.2, 0]]], dtype=float)
    lengths, angles, triples = bonds_and_angles(xyz, [(0, 1), (1, 2)])
    assert np.allclose(lengths, [[0.1, 0.2]]) and triples == [(0, 1, 2)] and np.allclose(angles, np.pi / 2)


def test_cli_writes_plot_and_metrics(tmp_path, capsys):
    names, res, xyz = _peptide(n_frames=300, seed=2)
    top = peptide_topology(names, ["ACE", "ALA", "NME"], res)
    md.Trajectory(xyz.astype(np.float32), top).save(str(tmp_path / "t.h5"))
    _, _, xyz_ref = _peptide(n_frames=400, seed=3)
    CGDataset.from_arrays(xyz_ref, np.zeros_like(xyz_ref), topology=top).save(tmp_path / "ref.npz")
    assert main([str(tmp_path / "t.h5"), "--reference", str(tmp_path / "ref.npz"), "-o", str(tmp_path / "f.png"),
                 "--json", str(tmp_path / "m.json"), "--n-boot", "20", "--block", "30"]) == 0
    out = capsys.readouterr().out
    assert "FES RMSE" in out and "noise floor" in out
    report = json.loads((tmp_path / "m.json").read_text())
    cv_m = phi_psi(md.load(str(tmp_path / "t.h5")))
    assert report["metrics"] == compare_fes(cv_m, phi_psi(xyz_ref, top))
    assert report["bootstrap"]["block"] == 30 and report["bootstrap"]["n_boot"] == 20
    assert report["noise_floor"] == split_half_floor(phi_psi(xyz_ref, top))
    assert (tmp_path / "f.png").stat().st_size > 10000
    with pytest.raises(CgdmlError, match="no such trajectory"):
        main([str(tmp_path / "missing.h5"), "-o", str(tmp_path / "g.png")])
    md.Trajectory(xyz.astype(np.float32), top).save(str(tmp_path / "t.dcd"))
    with pytest.raises(CgdmlError, match="give --top"):
        main([str(tmp_path / "t.dcd"), "-o", str(tmp_path / "g.png")])
    # formats without topology take --top; several trajectories are pooled; no reference: landscape only
    md.Trajectory(xyz[:1].astype(np.float32), top).save(str(tmp_path / "top.pdb"))
    assert main([str(tmp_path / "t.dcd"), str(tmp_path / "t.h5"), "--top", str(tmp_path / "top.pdb"),
                 "-o", str(tmp_path / "g.svg"), "--json", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["n_frames"] == 600
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(CgdmlError, match="reference has 4 beads, trajectories have 5"):
        four = np.cumsum(np.random.default_rng(4).normal(0, 0.15, size=(3, 4, 3)), axis=1)
        bad = CGDataset.from_arrays(four, np.zeros_like(four), bonds=[(0, 1), (1, 2), (2, 3)])
        bad.save(tmp_path / "four.npz")
        main([str(tmp_path / "t.h5"), "--reference", str(tmp_path / "four.npz"), "-o", str(tmp_path / "h.png")])


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_plot_comparison_degrees_and_readable_layout(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cgdml.fes import plot_comparison, plot_fes

    rng = np.random.default_rng(0)
    cv_m, cv_r = rng.normal(0, 0.7, size=(2000, 2)), rng.normal(0.1, 0.7, size=(3000, 2))
    lengths = rng.normal(0.3812, 0.004, size=(2000, 1))
    m, fl = compare_fes(cv_m, cv_r), split_half_floor(cv_r)
    fig = plot_comparison(tmp_path / "c.png", cv_m, cv_r, metrics=m, floor=fl,
                          distributions=[("bond 0-1 C-N (nm)", lengths, lengths + 0.001)])
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    maps = [ax for ax in fig.get_axes() if ax.get_label() != "<colorbar>" and ax.get_xlabel().endswith("(deg)")]
    assert len(maps) == 3                                          # CG | reference | difference
    for ax in maps:
        assert ax.get_xlim() == (-180.0, 180.0) and ax.get_ylim() == (-180.0, 180.0)
        assert list(ax.get_xticks()) == [-180, -90, 0, 90, 180]
    assert "RMSE" in maps[2].get_title() and "floor" in maps[2].get_title()
    bars = [ax for ax in fig.get_axes() if ax.get_label() == "<colorbar>"]
    for ax in maps:
        title = ax.title.get_window_extent(renderer)
        assert not any(_overlap(title, cb.get_tightbbox(renderer)) for cb in bars)
    (hist,) = [ax for ax in fig.get_axes() if ax.get_xlabel().startswith("bond")]
    assert hist.get_ylabel() == "probability density"
    boxes = [t.get_window_extent(renderer) for t in hist.get_xticklabels() if t.get_visible() and t.get_text()]
    assert len(boxes) >= 2 and not any(_overlap(a, b) for k, a in enumerate(boxes) for b in boxes[k + 1:])
    assert any("never visited" in t.get_text() for t in fig.texts + [sf._suptitle for sf in fig.subfigs if sf._suptitle])
    # plot_fes of a Ramachandran histogram draws degrees too
    from matplotlib.figure import Figure

    F, edges, _ = histogram_fes(cv_m)
    ax = Figure().add_subplot()
    plot_fes(F, edges, ax, 8.0, "title")
    assert ax.get_xlim() == (-180.0, 180.0) and ax.get_xlabel() == r"$\phi$ (deg)"
