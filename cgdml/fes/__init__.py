"""Free energy: histograms of collective variables, (phi, psi), and the project's FES comparison metric.

F = -kT ln p on a histogram of CVs (radians for dihedrals; the histograms and metrics are in
:mod:`cgdml.fes.histograms`, re-exported here). :func:`compare_fes` implements docs/method.md §3:

- ``fes_rmse`` (kT): over the bins the reference visits, weighted by reference population, after removing the
  optimal constant offset (the weighted mean difference); a bin the model never visits counts as 0.5 samples;
- ``js``: Jensen-Shannon divergence (nats) of the two normalised histograms.

:func:`split_half_floor` gives the noise floor (the metric between the reference's halves) and
:func:`bootstrap_metrics` error bars from a block bootstrap over the model frames.

Landscapes of any molecule: :func:`landscape_panels` makes one :class:`Panel` (1 or 2 CVs) per residue's
(phi, psi) from the CG topology's bead graph (never bead order), or per user CV set (:func:`parse_cvs`:
``phi:2,psi:2``, ``dihedral:0,1,2,3``, ``angle:0,1,2``, ``distance:0,13``); without backbone, the graph's one or
two proper dihedrals, else a 2D TICA projection of the GDML descriptor. Non-periodic CVs are histogrammed on
the reference's range (padded 5 %). :func:`compare_panels` scores every panel and their mean (with a shared
block bootstrap); :func:`plot_landscapes` draws one row per panel (CG | reference | difference, angles in
degrees) and the bond/angle distributions of the topology (:func:`topology_distributions`).

The command line is in :mod:`cgdml.fes.__main__` (``python -m cgdml.fes``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import CgdmlError, atomic_path
from .histograms import (PERIODIC, as_cv_array, bin_counts, bin_edges, bin_index,  # noqa: F401 (re-exported)
                         bootstrap_draws, bootstrap_metrics, bootstrap_summary, bootstrap_undefined, check_bootstrap,
                         compare_fes, histogram_fes, histogram_ranges, metrics_from_counts, split_half_floor)

# ------------------------------------------------------------------------------------------------ CVs

def as_cg_topology(topology):
    """A :class:`cgdml.topology.CGTopology` from one, or from an mdtraj Topology (one atom per bead)."""
    from ..topology import CGTopology

    return topology if isinstance(topology, CGTopology) else CGTopology.from_mdtraj(topology)


def _check_xyz(xyz, topo):
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[1:] != (topo.n_beads, 3):
        raise CgdmlError(f"coordinates of shape {xyz.shape} do not match the topology's {topo.n_beads} beads")
    return xyz


def _coords_and_topology(traj_or_coords, topology):
    import mdtraj as md

    if isinstance(traj_or_coords, md.Trajectory):
        return traj_or_coords.xyz.astype(np.float64), as_cg_topology(topology or traj_or_coords.topology)
    if topology is None:
        raise CgdmlError("backbone dihedrals of plain coordinates need a topology")
    topo = as_cg_topology(topology)
    return _check_xyz(traj_or_coords, topo), topo


def _dihedral_values(xyz, quads):
    """Dihedral angles (n, n_quads) rad, IUPAC sign, the formula of :func:`cgdml.geometry.dihedrals` without
    the gradients (so that long trajectories fit in memory)."""
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    b1 = xyz[:, quads[:, 1]] - xyz[:, quads[:, 0]]
    b2 = xyz[:, quads[:, 2]] - xyz[:, quads[:, 1]]
    b3 = xyz[:, quads[:, 3]] - xyz[:, quads[:, 2]]
    m, n = np.cross(b1, b2), np.cross(b2, b3)
    return np.arctan2(np.linalg.norm(b2, axis=-1) * (b1 * n).sum(-1), (m * n).sum(-1))


def residue_phi_psi(traj_or_coords, topology=None):
    """Backbone (phi, psi) of every residue: a list of (label, angles (n, 2) rad), IUPAC sign as mdtraj.

    ``traj_or_coords``: an mdtraj Trajectory, or coordinates (n, n_beads, 3) nm with ``topology`` (a
    CGTopology or mdtraj Topology). The dihedrals come from the bead graph (C-N-CA-C and N-CA-C-N paths by bead
    name, see :meth:`cgdml.topology.CGTopology.backbone`), not from bead order. An empty list: no backbone.
    """
    xyz, topo = _coords_and_topology(traj_or_coords, topology)
    backbone = topo.backbone()
    if not backbone:
        return []
    angles = _dihedral_values(xyz, topo.backbone_quads())
    return [(label, angles[:, 2 * k:2 * k + 2]) for k, (label, _, _) in enumerate(backbone)]


def phi_psi(traj_or_coords, topology=None):
    """Backbone (phi, psi) in radians, (n, 2), of a molecule with one residue (a dipeptide); see
    :func:`residue_phi_psi` for longer peptides."""
    per_residue = residue_phi_psi(traj_or_coords, topology)
    if len(per_residue) == 1:
        return per_residue[0][1]
    _, topo = _coords_and_topology(traj_or_coords, topology)
    if not per_residue:
        raise CgdmlError(f"no backbone found: need bonded beads named C, N, CA, C, N (phi = C-N-CA-C, psi = "
                         f"N-CA-C-N); beads are {', '.join(topo.names)}")
    raise CgdmlError(f"the topology has {len(per_residue)} residues with (phi, psi) "
                     f"({', '.join(lab for lab, _ in per_residue)}); use residue_phi_psi")


def bonds_and_angles(coords, bond_pairs):
    """Bond lengths (n, n_bonds) nm and angles (n, n_angles) rad between consecutive bonds sharing a bead."""
    coords = np.asarray(coords, dtype=np.float64)
    pairs = [tuple(p) for p in np.asarray(bond_pairs, dtype=np.int64).reshape(-1, 2)]
    lengths = np.stack([np.linalg.norm(coords[:, j] - coords[:, i], axis=-1) for i, j in pairs], axis=1) \
        if pairs else np.zeros((len(coords), 0))
    triples = []
    for a in range(len(pairs)):
        for b in range(a + 1, len(pairs)):
            shared = set(pairs[a]) & set(pairs[b])
            if len(shared) == 1:
                c = shared.pop()
                triples.append(((set(pairs[a]) - {c}).pop(), c, (set(pairs[b]) - {c}).pop()))
    angles = np.zeros((len(coords), len(triples)))
    for t, (i, j, k) in enumerate(triples):
        u, v = coords[:, i] - coords[:, j], coords[:, k] - coords[:, j]
        cos = np.einsum("nk,nk->n", u, v) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
        angles[:, t] = np.arccos(np.clip(cos, -1.0, 1.0))
    return lengths, angles, triples


def topology_distributions(topology, model_coords, ref_coords=None):
    """Bond-length (nm) and bond-angle (deg) samples of every bond and angle of the CG topology (not of bead
    order): a list of (label, model values, reference values or None) for :func:`plot_landscapes`."""
    from ..geometry import bond_angles, bond_lengths

    topo = as_cg_topology(topology)
    model_coords = _check_xyz(model_coords, topo)
    ref_coords = None if ref_coords is None else _check_xyz(ref_coords, topo)
    names = topo.names
    out = []
    if len(topo.bonds):
        l_m = bond_lengths(model_coords, topo.bonds)
        l_r = None if ref_coords is None else bond_lengths(ref_coords, topo.bonds)
        out += [(f"bond {i}-{j} {names[i]}-{names[j]} (nm)", l_m[:, k], None if l_r is None else l_r[:, k])
                for k, (i, j) in enumerate(topo.bonds)]
    if len(topo.angles):
        a_m = np.degrees(bond_angles(model_coords, topo.angles))
        a_r = None if ref_coords is None else np.degrees(bond_angles(ref_coords, topo.angles))
        out += [(f"angle {i}-{j}-{k} {names[i]}-{names[j]}-{names[k]} (deg)", a_m[:, t],
                 None if a_r is None else a_r[:, t]) for t, (i, j, k) in enumerate(topo.angles)]
    return out


# ------------------------------------------------------------------------------------------------ CV sets

#: CV kinds of :func:`parse_cvs`: how many integers follow the ``kind:`` token.
CV_KINDS = {"phi": 1, "psi": 1, "dihedral": 4, "distance": 2, "angle": 3}
_CV_ALIASES = {"dih": "dihedral", "torsion": "dihedral", "dist": "distance"}
_GREEK = {"phi": r"$\phi$", "psi": r"$\psi$"}


class CV:
    """One collective variable: ``kind`` (a key of :data:`CV_KINDS`) and ``index`` (the residue number for
    phi/psi, as in the backbone labels, e.g. ALA2 -> 2; bead indices otherwise)."""

    def __init__(self, kind, index):
        kind = _CV_ALIASES.get(str(kind).lower(), str(kind).lower())
        if kind not in CV_KINDS:
            raise CgdmlError(f"unknown CV kind {kind!r}: use {', '.join(CV_KINDS)}")
        index = tuple(int(i) for i in index)
        if len(index) != CV_KINDS[kind]:
            what = "a residue number" if kind in ("phi", "psi") else f"{CV_KINDS[kind]} bead indices"
            raise CgdmlError(f"CV {kind}:{','.join(map(str, index))} needs {what}, got {len(index)}")
        self.kind, self.index = kind, index

    def __repr__(self):
        return f"{self.kind}:{','.join(map(str, self.index))}"

    def __eq__(self, other):
        return isinstance(other, CV) and (self.kind, self.index) == (other.kind, other.index)

    @property
    def periodic(self):
        return self.kind in ("phi", "psi", "dihedral")


def parse_cvs(text):
    """CVs from a command-line string: ``"phi:2,psi:2"``, ``"dihedral:0,1,2,3"``, ``"distance:0,13"``,
    ``"angle:0,1,2"``, or several run together (``"dihedral:0,1,2,3,distance:0,13"``): a new CV starts at
    each ``kind:`` token and the comma- (or space-) separated integers after it belong to it. A list of
    :class:`CV`; anything malformed is a one-line :class:`CgdmlError`."""
    raw = str(text)
    tokens = [t for t in raw.replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    cvs, kind, index = [], None, []

    def close():
        if kind is not None:
            try:
                cvs.append(CV(kind, index))
            except CgdmlError as exc:
                raise CgdmlError(f"--cv {raw!r}: {exc}") from None

    for tok in tokens:
        tok = tok.strip()
        if ":" in tok:
            close()
            kind, _, first = tok.partition(":")
            index = []
            tok = first.strip()
            if not tok:
                continue
        if kind is None:
            raise CgdmlError(f"--cv {raw!r}: {tok!r} comes before any kind; write e.g. phi:2,psi:2 or "
                             f"distance:0,13 (kinds: {', '.join(CV_KINDS)})")
        try:
            index.append(int(tok))
        except ValueError:
            raise CgdmlError(f"--cv {raw!r}: {tok!r} is not an integer (bead index or residue number)") from None
    close()
    if not cvs:
        raise CgdmlError(f"--cv {raw!r}: no CV given; write e.g. phi:2,psi:2 (kinds: {', '.join(CV_KINDS)})")
    return cvs


def _resolve_cv(cv, topo):
    """(plain name, axis label, function xyz -> values (n,) in rad or nm) of one CV, checked against ``topo``."""
    from ..geometry import bond_angles, bond_lengths

    n = topo.n_beads
    if cv.kind in ("phi", "psi"):
        res = cv.index[0]
        backbone = {}
        for label, phi, psi in topo.backbone():
            backbone.setdefault(int(topo.residue_ids[phi[2]]), (label, phi, psi))
        if res not in backbone:
            have = ", ".join(v[0] for v in backbone.values()) or "none"
            raise CgdmlError(f"CV {cv}: residue {res} has no (phi, psi) in the CG topology (residues with a "
                             f"backbone: {have})")
        label, phi, psi = backbone[res]
        quad = phi if cv.kind == "phi" else psi
        return (f"{cv.kind} {label}", f"{_GREEK[cv.kind]} {label} (deg)",
                lambda xyz, q=quad: _dihedral_values(xyz, q)[:, 0])
    bad = [i for i in cv.index if not 0 <= i < n]
    if bad:
        raise CgdmlError(f"CV {cv}: bead {bad[0]} does not exist (the molecule has {n} beads, 0..{n - 1})")
    if len(set(cv.index)) != len(cv.index):
        raise CgdmlError(f"CV {cv}: the beads must be distinct")
    idx = np.array(cv.index)
    beads = "-".join(map(str, cv.index))
    names = "-".join(topo.names[i] for i in cv.index)
    if cv.kind == "dihedral":
        return f"dihedral {beads}", f"dihedral {beads} {names} (deg)", lambda xyz: _dihedral_values(xyz, idx)[:, 0]
    if cv.kind == "angle":
        return f"angle {beads}", f"angle {beads} {names} (deg)", lambda xyz: bond_angles(xyz, idx)[:, 0]
    return f"distance {beads}", f"distance {beads} {names} (nm)", lambda xyz: bond_lengths(xyz, idx)[:, 0]


class Panel:
    """One landscape: 1 or 2 CVs sampled by the model (and the reference), with their histogram ranges.

    ``model``/``reference`` (n, d) in rad (dihedrals, angles) or nm (distances) or TICA units; ``range`` the
    (low, high) of each dimension; ``names`` plain CV names (for JSON), ``axes`` axis labels; ``degrees`` per
    dimension whether it is an angle drawn in degrees; ``periodic`` whether it is a dihedral on [-pi, pi);
    ``residue`` the label (e.g. "ALA2") when the panel is that residue's (phi, psi).
    """

    def __init__(self, label, model, reference, range, names, axes, degrees, periodic, residue=None):
        self.label, self.model, self.reference = label, as_cv_array(model), None if reference is None else as_cv_array(reference)
        self.range = [tuple(map(float, r)) for r in range]
        self.names, self.axes = list(names), list(axes)
        self.degrees, self.periodic = list(degrees), list(periodic)
        self.residue = residue
        if self.reference is not None and self.reference.shape[1] != self.model.shape[1]:
            raise CgdmlError(f"panel {label}: model CVs have {self.model.shape[1]} dimension(s), reference "
                             f"{self.reference.shape[1]}")

    @property
    def dim(self):
        return self.model.shape[1]

    @property
    def is_ramachandran(self):
        return self.dim == 2 and all(self.periodic)


def cv_range(values, periodic=False, pad=0.05):
    """Histogram range (low, high) of one CV: [-pi, pi) for a dihedral, else the span of ``values`` padded by
    ``pad`` of it on both sides."""
    if periodic:
        return PERIODIC
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        raise CgdmlError("no finite CV values to take a histogram range from")
    lo, hi = float(v.min()), float(v.max())
    width = (hi - lo) * pad if hi > lo else max(abs(lo) * pad, 1e-3)
    return lo - width, hi + width


def _panel(label, names, axes, degrees, periodic, model, reference, residue=None):
    basis = model if reference is None else reference
    ranges = [cv_range(basis[:, d], periodic[d]) for d in range(basis.shape[1])]
    return Panel(label, model, reference, ranges, names, axes, degrees, periodic, residue)


def _tica_panel(model_list, topo, reference, lagtime=None, chunk=20000):
    from ..features import descriptor

    try:
        from deeptime.decomposition import TICA
    except ImportError:
        raise CgdmlError("the landscape of a molecule without backbone or one or two dihedrals is a TICA "
                         "projection, which needs deeptime (pip install deeptime); or give --cv") from None
    quads = topo.chirality_quads
    fit_on = [reference] if reference is not None else model_list
    shortest = min(len(x) for x in fit_on)
    lag = max(1, min(5, shortest // 10)) if lagtime is None else int(lagtime)
    if lag < 1 or lag >= shortest:
        raise CgdmlError(f"TICA lag time must be between 1 and {shortest - 1} frames, got {lag}")
    n_desc = topo.n_beads * (topo.n_beads - 1) // 2 + len(quads)
    est = TICA(lagtime=lag, dim=min(2, n_desc))
    for x in fit_on:
        for s in range(0, len(x) - lag, chunk):
            D = descriptor(x[s:s + chunk + lag], quads)
            est.partial_fit((D[:-lag], D[lag:]))
    tica = est.fetch_model()

    def project(x):
        return np.concatenate([tica.transform(descriptor(x[s:s + chunk], quads)) for s in range(0, len(x), chunk)])

    model = np.concatenate([project(x) for x in model_list])
    ref = None if reference is None else project(reference)
    d = model.shape[1]
    names = [f"TIC {k + 1}" for k in range(d)]
    fitted = "reference" if reference is not None else "model frames"
    return _panel(f"TICA (lag {lag} frames, fitted on the {fitted})", names, names, [False] * d, [False] * d,
                  model, ref)


def _cv_groups(cvs):
    """Panels' CV lists from a parse_cvs string, a flat list of CV objects (one panel), or a list of strings /
    CV lists / (kind, index) lists (one panel each)."""
    if isinstance(cvs, str):
        groups = [parse_cvs(cvs)]
    elif all(isinstance(g, CV) for g in cvs):
        groups = [list(cvs)]
    else:
        groups = [parse_cvs(g) if isinstance(g, str) else [c if isinstance(c, CV) else CV(*c) for c in g]
                  for g in cvs]
    for g in groups:
        if len(g) not in (1, 2):
            raise CgdmlError(f"--cv {','.join(map(repr, g))}: a landscape takes one or two CVs, got {len(g)} "
                             "(give --cv once per landscape)")
    return groups


def landscape_panels(model, topology, reference=None, cvs=None, lagtime=None):
    """The landscapes to draw and score (docs/method.md §3), as :class:`Panel` objects.

    ``model``: coordinates (n, n_beads, 3) nm, or a list of such arrays (trajectories, pooled; TICA keeps them
    apart); ``reference``: coordinates or None; ``topology``: CGTopology or mdtraj Topology (the bead graph).
    ``cvs``: None for the default -- the (phi, psi) of every residue (one panel each); without backbone the
    one or two proper dihedrals of the graph, else a 2D TICA projection of the GDML descriptor (fitted on the
    reference, or on the model frames without one; ``lagtime`` frames, default a few). Otherwise a
    :func:`parse_cvs` string (one panel) or a list of such strings or CV lists (one panel each), 1 or 2 CVs
    per panel. Non-periodic CVs get the reference's range (the model's without one), padded by 5 %.
    """
    topo = as_cg_topology(topology)
    model_list = [_check_xyz(x, topo) for x in (model if isinstance(model, (list, tuple)) else [model])]
    ref = None if reference is None else _check_xyz(reference, topo)
    pooled = np.concatenate(model_list)
    if cvs is not None and not (isinstance(cvs, str) and cvs == "phi-psi"):
        panels = []
        for group in _cv_groups(cvs):
            resolved = [_resolve_cv(cv, topo) for cv in group]
            m = np.column_stack([f(pooled) for _, _, f in resolved])
            r = None if ref is None else np.column_stack([f(ref) for _, _, f in resolved])
            names = [name for name, _, _ in resolved]
            residue = None
            if [cv.kind for cv in group] == ["phi", "psi"] and group[0].index == group[1].index:
                residue = names[0].split(" ", 1)[1]
            panels.append(_panel(residue or " / ".join(names), names, [a for _, a, _ in resolved],
                                 [cv.kind != "distance" for cv in group], [cv.periodic for cv in group],
                                 m, r, residue))
        return panels
    backbone = topo.backbone()
    if backbone:
        quads = topo.backbone_quads()
        m, r = _dihedral_values(pooled, quads), None if ref is None else _dihedral_values(ref, quads)
        return [_panel(label, [f"phi {label}", f"psi {label}"],
                       [rf"$\phi$ {label} (deg)", rf"$\psi$ {label} (deg)"], [True, True], [True, True],
                       m[:, 2 * k:2 * k + 2], None if r is None else r[:, 2 * k:2 * k + 2], label)
                for k, (label, _, _) in enumerate(backbone)]
    if len(topo.dihedrals) in (1, 2):
        group = [CV("dihedral", q) for q in topo.dihedrals]
        return landscape_panels(model_list, topo, ref, [group])
    if topo.n_beads < 3:
        if topo.n_beads == 2:
            return landscape_panels(model_list, topo, ref, [[CV("distance", (0, 1))]])
        raise CgdmlError("a single bead has no free-energy landscape")
    return [_tica_panel(model_list, topo, ref, lagtime)]


# ------------------------------------------------------------------------------------------------ scores

def _bins_of(panel, bins):
    return bin_edges(bins, panel.range, panel.dim)


def compare_panels(panels, bins=36, n_boot=200, block=None, seed=0):
    """The metric of docs/method.md §3 for every panel with a reference, and their mean.

    Returns {"panels": [entry, ...], "mean": {...}} where each entry has ``label``, ``cvs`` (plain names),
    ``range`` and ``periodic`` per dimension, ``metrics`` (:func:`compare_fes`), ``noise_floor``
    (:func:`split_half_floor`), ``bootstrap`` (:func:`bootstrap_metrics`, when ``n_boot``),
    ``bootstrap_undefined`` (why, instead of ``bootstrap``, when the model frames make fewer than 2 blocks),
    ``model_outside_range`` (fraction of model frames outside the histogram range: ignored by the metric) and,
    for a residue's (phi, psi), ``residue`` and ``phi_positive``. ``mean`` averages fes_rmse and js over the
    panels, with the mean floor and, when ``n_boot``, a bootstrap of the mean over the same resamples. Without a
    reference the entries carry the CV description only and ``mean`` is None.
    """
    entries, idx_models, h_refs = [], [], []
    for p in panels:
        e = {"label": p.label, "cvs": p.names, "range": [list(r) for r in p.range], "periodic": p.periodic}
        if p.residue:
            e["residue"] = p.residue
        entries.append(e)
        if p.reference is None:
            continue
        edges = _bins_of(p, bins)
        idx = bin_index(p.model, edges)
        e["model_outside_range"] = float(np.mean(idx < 0))
        if (idx < 0).all():
            raise CgdmlError(f"landscape {p.label}: no model frame falls inside the reference's range "
                             f"{', '.join(f'[{lo:.4g}, {hi:.4g}]' for lo, hi in p.range)}")
        h_ref = bin_counts(p.reference, edges)
        e["metrics"] = metrics_from_counts(np.bincount(idx[idx >= 0], minlength=len(h_ref)).astype(np.float64),
                                            h_ref)
        e["noise_floor"] = split_half_floor(p.reference, bins, p.range)
        if p.residue:
            e["phi_positive"] = {"model": float(np.mean(p.model[:, 0] > 0)),
                                 "reference": float(np.mean(p.reference[:, 0] > 0))}
        idx_models.append(idx)
        h_refs.append(h_ref)
    scored = [e for e in entries if "metrics" in e]
    if not scored:
        return {"panels": entries, "mean": None}
    mean = {k: float(np.mean([e["metrics"][k] for e in scored])) for k in ("fes_rmse", "js")}
    mean["noise_floor"] = {k: float(np.mean([e["noise_floor"][k] for e in scored])) for k in ("fes_rmse", "js")}
    mean["n_panels"] = len(scored)
    if n_boot:
        block = check_bootstrap(len(idx_models[0]), n_boot, block)
    why = bootstrap_undefined(len(idx_models[0]), block) if n_boot else None
    if why:        # reported as undefined, not as a zero-width interval
        for e in scored + [mean]:
            e["bootstrap_undefined"] = why
    elif n_boot:
        draws = bootstrap_draws(idx_models, h_refs, n_boot, block, seed)
        for e, d in zip(scored, draws):
            e["bootstrap"] = {k: bootstrap_summary(e["metrics"][k], v) for k, v in d.items()}
            e["bootstrap"]["n_boot"], e["bootstrap"]["block"] = int(n_boot), block
        mean["bootstrap"] = {k: bootstrap_summary(mean[k], np.mean([d[k] for d in draws], axis=0)) for k in ("fes_rmse", "js")}
        mean["bootstrap"]["n_boot"], mean["bootstrap"]["block"] = int(n_boot), block
    return {"panels": entries, "mean": mean}


# ------------------------------------------------------------------------------------------------ plots

MAX_DISTRIBUTIONS = 40
_NOTE = "white bins were never visited"
_NOTE_DIFF = ("white bins were never visited (difference maps: bins the reference never visits; "
              "bins the model misses count as half a sample)")


def _savefig(fig, path):
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")


def _is_periodic_edges(e):
    e = np.asarray(e)
    return len(e) > 1 and np.isclose(e[0], -np.pi) and np.isclose(e[-1], np.pi)


def _degree_axis(axis):
    from matplotlib.ticker import FixedLocator

    axis.set_major_locator(FixedLocator([-180, -90, 0, 90, 180]))


def _few_ticks(axis, n=4):
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=n))


def _style_axes(ax, panel_like):
    """Limits, ticks and labels of a 2D landscape axis; ``panel_like`` = (ranges, axes labels, degrees,
    periodic)."""
    ranges, labels, degrees, periodic = panel_like
    for d, (axis, setlim, setlabel) in enumerate(((ax.xaxis, ax.set_xlim, ax.set_xlabel),
                                                  (ax.yaxis, ax.set_ylim, ax.set_ylabel))[:len(ranges)]):
        lo, hi = ranges[d]
        f = 180.0 / np.pi if degrees[d] else 1.0
        setlim(lo * f, hi * f)
        setlabel(labels[d])
        if periodic[d]:
            _degree_axis(axis)
        else:
            _few_ticks(axis)
    if len(ranges) == 2 and all(periodic):
        ax.set_aspect("equal")


def plot_fes(F, edges, ax=None, vmax=8.0, title="", labels=None, degrees=None):
    """Draw a 2D free-energy landscape (kT) on ``ax``; returns the image.

    ``edges`` in the histogram's units (radians for dihedrals). ``degrees`` (default: when both axes span
    [-pi, pi), i.e. a Ramachandran map) draws the axes in degrees, -180..180 with ticks every 90. ``labels``
    default to phi/psi (deg) for a Ramachandran map, else "CV 1"/"CV 2". White bins: never visited.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    if degrees is None:
        degrees = all(_is_periodic_edges(e) for e in edges)
    if labels is None:
        labels = (r"$\phi$ (deg)", r"$\psi$ (deg)") if degrees else ("CV 1", "CV 2")
    f = 180.0 / np.pi if degrees else 1.0
    img = ax.pcolormesh(np.asarray(edges[0]) * f, np.asarray(edges[1]) * f, np.ma.masked_invalid(F).T,
                        cmap="viridis", vmin=0, vmax=vmax, shading="flat")
    periodic = [degrees and _is_periodic_edges(e) for e in edges]
    _style_axes(ax, ([(e[0], e[-1]) for e in edges], labels, [degrees] * 2, periodic))
    ax.set_title(title)
    return img


def _difference(panel, bins, offset):
    edges = _bins_of(panel, bins)
    shape = [len(e) - 1 for e in edges]
    c_m = bin_counts(panel.model, edges).reshape(shape)
    c_r = bin_counts(panel.reference, edges).reshape(shape)
    f_m = -np.log(np.maximum(c_m, 0.5) / max(c_m.sum(), 1.0))
    with np.errstate(divide="ignore"):
        f_r = -np.log(c_r / c_r.sum())
    return np.where(c_r > 0, f_m - f_r - offset, np.nan), edges


def _score_title(label, entry):
    lines = [f"{label}: CG − reference" if label else "CG − reference"]
    if entry and "metrics" in entry:
        m = entry["metrics"]
        lines.append(f"RMSE {m['fes_rmse']:.2f} kT, JS {m['js']:.3f}")
        if entry.get("noise_floor"):
            fl = entry["noise_floor"]
            lines.append(f"(floor {fl['fes_rmse']:.2f} kT, {fl['js']:.3f})")
    return "\n".join(lines)


def _draw_panel_row(fig, gs, row, panel, bins, entry, vmax, ncols):
    """One row: CG | reference | difference (2D), or CG and reference curves | difference (1D)."""
    has_ref = panel.reference is not None
    f = [180.0 / np.pi if d else 1.0 for d in panel.degrees]
    style = (panel.range, panel.axes, panel.degrees, panel.periodic)
    prefix = f"{panel.label}: " if panel.label and len(panel.label) <= 12 else ""
    n_m = len(panel.model)
    edges = _bins_of(panel, bins)
    inside = (bin_index(panel.model, edges) >= 0).any()
    F_m = histogram_fes(panel.model, bins, panel.range)[0] if inside else None
    F_r = None if not has_ref else histogram_fes(panel.reference, bins, panel.range)[0]
    title_m = f"{prefix}CG model ({n_m} frames)"
    title_r = f"{prefix}reference ({len(panel.reference)} frames)" if has_ref else ""
    offset = entry["metrics"]["offset"] if entry and "metrics" in entry else \
        (compare_fes(panel.model, panel.reference, bins, panel.range)["offset"] if has_ref else 0.0)
    long_label = panel.label if not prefix and panel.label else ""
    if panel.dim == 2:
        axes = []
        for col, (F, title) in enumerate([(F_m, title_m)] + ([(F_r, title_r)] if has_ref else [])):
            ax = fig.add_subplot(gs[row, col])
            if F is not None:
                img = ax.pcolormesh(edges[0] * f[0], edges[1] * f[1], np.ma.masked_invalid(F).T, cmap="viridis",
                                    vmin=0, vmax=vmax, shading="flat")
            else:
                img = None
                ax.text(0.5, 0.5, "no model frame\ninside the range", ha="center", va="center",
                        transform=ax.transAxes)
            _style_axes(ax, style)
            ax.set_title(title, fontsize="medium")
            axes.append((ax, img))
        imgs = [im for _, im in axes if im is not None]
        if imgs:
            fig.colorbar(imgs[0], ax=[a for a, _ in axes], label="F (kT)", shrink=0.9)
        if has_ref:
            diff, _ = _difference(panel, bins, offset)
            ax = fig.add_subplot(gs[row, 2])
            img = ax.pcolormesh(edges[0] * f[0], edges[1] * f[1], np.ma.masked_invalid(diff).T, cmap="RdBu_r",
                                vmin=-3, vmax=3, shading="flat")
            _style_axes(ax, style)
            ax.set_title(_score_title(prefix.rstrip(": "), entry), fontsize="medium")
            fig.colorbar(img, ax=ax, label=r"$\Delta F$ (kT)", shrink=0.9)
    else:
        centres = 0.5 * (edges[0][1:] + edges[0][:-1]) * f[0]
        ax = fig.add_subplot(gs[row, 0:2] if has_ref and ncols >= 3 else gs[row, 0])
        if F_m is not None:
            ax.plot(centres, np.where(np.isfinite(F_m), F_m, np.nan), drawstyle="steps-mid", label="CG model")
        if F_r is not None:
            ax.plot(centres, np.where(np.isfinite(F_r), F_r, np.nan), drawstyle="steps-mid", ls="--",
                    label="reference")
        _style_axes(ax, style)
        ax.set_ylim(0, vmax)
        ax.set_ylabel("F (kT)")
        ax.legend(fontsize="small")
        ax.set_title(f"{prefix}F = −kT ln p ({n_m} CG frames" + (f", {len(panel.reference)} reference)"
                                                                 if has_ref else ")"), fontsize="medium")
        if has_ref:
            diff, _ = _difference(panel, bins, offset)
            ax = fig.add_subplot(gs[row, 2])
            ax.bar(centres, diff, width=(edges[0][1] - edges[0][0]) * f[0], color="tab:purple")
            ax.axhline(0, color="k", lw=0.5)
            _style_axes(ax, style)
            ax.set_ylabel(r"$\Delta F$ (kT)")
            ax.set_title(_score_title(prefix.rstrip(": "), entry), fontsize="medium")
    return long_label


def _draw_distributions(fig, distributions, ncols):
    shown = list(distributions)[:MAX_DISTRIBUTIONS]
    nrows = -(-len(shown) // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(shown):
            ax.set_visible(False)
            continue
        label, model_vals, ref_vals = shown[k]
        allv = np.concatenate([np.ravel(model_vals)] + ([np.ravel(ref_vals)] if ref_vals is not None else []))
        allv = allv[np.isfinite(allv)]
        lo, hi = np.percentile(allv, [0.1, 99.9]) if len(allv) else (0.0, 1.0)
        if hi - lo <= 1e-6 * max(1.0, abs(hi)):                  # (nearly) constant: a narrow window
            half = 0.5 * max(abs(hi) * 0.01, 1e-3)
            lo, hi = lo - half, hi + half
        e = np.linspace(lo, hi, 60)
        ax.hist(np.ravel(model_vals), e, density=True, histtype="step", label="CG model")
        if ref_vals is not None:
            ax.hist(np.ravel(ref_vals), e, density=True, histtype="step", label="reference")
        ax.set_xlabel(label, fontsize="small")
        _few_ticks(ax.xaxis, 3)
        _few_ticks(ax.yaxis, 4)
        ax.tick_params(labelsize="small")
        if k % ncols == 0:
            ax.set_ylabel("probability density", fontsize="small")
        if k == 0:
            ax.legend(fontsize="x-small")
    title = "bond and angle distributions of the CG topology"
    if len(distributions) > len(shown):
        title += f" (the first {len(shown)} of {len(distributions)})"
    fig.suptitle(title, fontsize="medium")


def plot_landscapes(path, panels, bins=36, results=None, distributions=None, vmax=8.0):
    """Save (atomically) and return a figure with one row per :class:`Panel`: CG model | reference |
    difference (offset removed, titled with the metric and its noise floor), axes in degrees for angles; 1D
    panels show both F curves and the difference. ``results``: the output of :func:`compare_panels` (computed
    when None and there is a reference); ``distributions`` = [(label, model_values, ref_values), ...] adds 1D
    histograms below (see :func:`topology_distributions`). Built without pyplot (the caller's backend is left
    alone; in Jupyter, display the returned figure)."""
    from matplotlib.figure import Figure

    panels = list(panels)
    if not panels:
        raise CgdmlError("no landscape to plot")
    has_ref = any(p.reference is not None for p in panels)
    if results is None and has_ref:
        results = compare_panels(panels, bins, n_boot=0)
    entries = (results or {}).get("panels") or [None] * len(panels)
    ncols = 3 if has_ref else 1
    distributions = list(distributions or [])
    n_dist = min(len(distributions), MAX_DISTRIBUTIONS)
    dcols = 4 if has_ref else 3
    drows = -(-n_dist // dcols) if n_dist else 0
    width = 14.0 if has_ref else max(6.0, 2.9 * dcols if drows else 6.0)
    h_top, h_bottom = 4.2 * len(panels) + 0.4, 2.6 * drows + 0.4 * bool(drows)
    fig = Figure(figsize=(width, h_top + h_bottom), layout="constrained")
    if drows:
        top, bottom = fig.subfigures(2, 1, height_ratios=[h_top, h_bottom])
    else:
        top, bottom = fig, None
    gs = top.add_gridspec(len(panels), ncols)
    long_labels = []
    for row, (panel, entry) in enumerate(zip(panels, entries)):
        lab = _draw_panel_row(top, gs, row, panel, bins, entry, vmax, ncols)
        if lab:
            long_labels.append(f"row {row + 1}: {lab}")
    head = "Free energy F = −kT ln p"
    if results and results.get("mean") and len(panels) > 1:
        m = results["mean"]
        head += (f"; mean over {m['n_panels']} landscapes: RMSE {m['fes_rmse']:.2f} kT, JS {m['js']:.3f} "
                 f"(floor {m['noise_floor']['fes_rmse']:.2f} kT, {m['noise_floor']['js']:.3f})")
    top.suptitle("\n".join([head] + long_labels + [_NOTE_DIFF if has_ref else _NOTE]), fontsize="medium")
    if bottom is not None:
        _draw_distributions(bottom, distributions, dcols)
    _savefig(fig, path)
    return fig


def plot_comparison(path, cv_model, cv_ref=None, bins=36, range=None, metrics=None, floor=None,
                    distributions=None, vmax=8.0):
    """Save a figure (atomically) and return it: model FES, and with a reference the reference FES and the
    offset-removed difference map of one set of CVs (n,) or (n, 2); ``range`` defaults to [-pi, pi) (a
    Ramachandran map, drawn in degrees). ``distributions`` = [(label, model_values, ref_values), ...] adds 1D
    histograms. For several residues or CV sets see :func:`plot_landscapes`. The figure is built without
    pyplot, so the caller's matplotlib backend is left alone (in Jupyter, display the returned figure)."""
    cv_model = as_cv_array(cv_model)
    dim = cv_model.shape[1]
    ranges = histogram_ranges(range, dim)
    periodic = [np.isclose(lo, -np.pi) and np.isclose(hi, np.pi) for lo, hi in ranges]
    if range is None and dim == 2:
        axes = [r"$\phi$ (deg)", r"$\psi$ (deg)"]
        names = ["phi", "psi"]
    else:
        names = [f"CV {d + 1}" for d in np.arange(dim)]
        axes = [f"{n} (deg)" if p else n for n, p in zip(names, periodic)]
    panel = Panel("", cv_model, cv_ref, ranges, names, axes, periodic, periodic)
    results = None
    if cv_ref is not None:
        entry = {"metrics": metrics or compare_fes(cv_model, cv_ref, bins, range)}
        if floor:
            entry["noise_floor"] = floor
        results = {"panels": [entry], "mean": None}
    return plot_landscapes(path, [panel], bins, results, distributions, vmax)
