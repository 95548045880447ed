"""Collective variables of CG trajectories: backbone (phi, psi) per residue, user CV sets, TICA, and the
:class:`Panel` (one landscape of 1 or 2 CVs, model and reference) that :mod:`cgdml.fes.compare` scores and
:mod:`cgdml.fes.plot` draws.

Coordinates are (n_frames, n_beads, 3) in nm; CVs are in radians (dihedrals, angles), nm (distances) or TICA
units. Which beads a CV joins comes from the CG topology's bead graph (:class:`cgdml.topology.CGTopology`), never
from bead order; dihedrals are those of :func:`cgdml.geometry.dihedrals` (IUPAC sign, as mdtraj).
"""
from __future__ import annotations

import numpy as np

from .._io import CgdmlError
from .histograms import PERIODIC, as_cv_array, bin_edges

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


def _dihedral_values(xyz, quads, chunk=50_000):
    """Dihedral angles (n, n_quads) rad of :func:`cgdml.geometry.dihedrals`, ``chunk`` frames at a time (it also
    returns gradients, 12 numbers per angle, which long trajectories should not hold at once)."""
    from ..geometry import dihedrals

    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    if not len(xyz):
        return np.zeros((0, len(quads)))
    return np.concatenate([dihedrals(xyz[s:s + chunk], quads)[0] for s in range(0, len(xyz), chunk)])


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
                raise CgdmlError(f"CVs {raw!r}: {exc}") from None

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
            raise CgdmlError(f"CVs {raw!r}: {tok!r} comes before any kind; write e.g. phi:2,psi:2 or "
                             f"distance:0,13 (kinds: {', '.join(CV_KINDS)})")
        try:
            index.append(int(tok))
        except ValueError:
            raise CgdmlError(f"CVs {raw!r}: {tok!r} is not an integer (bead index or residue number)") from None
    close()
    if not cvs:
        raise CgdmlError(f"CVs {raw!r}: no CV given; write e.g. phi:2,psi:2 (kinds: {', '.join(CV_KINDS)})")
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
    def is_tica(self):
        """True for a TICA projection."""
        return self.names[0].startswith("TIC ")

    def edges(self, bins):
        """Histogram bin edges of each dimension (``bins`` per dimension, over ``range``)."""
        return bin_edges(bins, self.range, self.dim)

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
                         "projection, which needs deeptime (pip install deeptime); or choose the CVs") from None
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


def cv_groups(cvs):
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
            raise CgdmlError(f"CVs {','.join(map(repr, g))}: a landscape takes one or two CVs, got {len(g)} "
                             "(give each landscape its own CV set)")
    return groups


def landscape_panels(model, topology, reference=None, cvs=None, lagtime=None):
    """The landscapes to draw and score (docs/method.md §3), as :class:`Panel` objects.

    ``model``: coordinates (n, n_beads, 3) nm, or a list of such arrays (trajectories, pooled; TICA keeps them
    apart); ``reference``: coordinates or None; ``topology``: CGTopology or mdtraj Topology (the bead graph).
    ``cvs``: None for the default -- the (phi, psi) of every residue (one panel each); without backbone the
    one or two proper dihedrals of the graph, else a 2D TICA projection of the GDML descriptor (fitted on the
    reference, or on the model frames without one; ``lagtime`` frames, default a few). Otherwise a
    :func:`parse_cvs` string (one panel) or a list of such strings or CV lists (one panel each), 1 or 2 CVs
    per panel. Non-periodic CVs get the reference's range (the model's without one), padded by 5 %. A
    ``lagtime`` without a TICA landscape is refused.
    """
    panels = _landscape_panels(model, topology, reference, cvs, lagtime)
    if lagtime is not None and not any(p.is_tica for p in panels):
        raise CgdmlError(f"a TICA lag time ({lagtime} frames) applies only to a TICA landscape, and none of these "
                         f"is one ({'; '.join(p.label for p in panels)}); TICA is the default landscape of a "
                         "molecule without backbone and with more than two dihedrals")
    return panels


def _landscape_panels(model, topology, reference, cvs, lagtime=None):
    topo = as_cg_topology(topology)
    model_list = [_check_xyz(x, topo) for x in (model if isinstance(model, (list, tuple)) else [model])]
    ref = None if reference is None else _check_xyz(reference, topo)
    pooled = np.concatenate(model_list)
    if cvs is not None and not (isinstance(cvs, str) and cvs == "phi-psi"):
        panels = []
        for group in cv_groups(cvs):
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
        return _landscape_panels(model_list, topo, ref, [group])
    if topo.n_beads < 3:
        if topo.n_beads == 2:
            return _landscape_panels(model_list, topo, ref, [[CV("distance", (0, 1))]])
        raise CgdmlError("a single bead has no free-energy landscape")
    return [_tica_panel(model_list, topo, ref, lagtime)]
