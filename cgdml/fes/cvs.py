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
    ``residue`` the label (e.g. "ALA2") when the panel is that residue's (phi, psi); ``kind`` what the landscape
    is (one of :data:`LANDSCAPE_KINDS`); ``extra`` True for a landscape of the second group, reported apart
    from the headline mean (docs/method.md §3).
    """

    def __init__(self, label, model, reference, range, names, axes, degrees, periodic, residue=None, kind="cv",
                 extra=False):
        self.label, self.model, self.reference = label, as_cv_array(model), None if reference is None else as_cv_array(reference)
        self.range = [tuple(map(float, r)) for r in range]
        self.names, self.axes = list(names), list(axes)
        self.degrees, self.periodic = list(degrees), list(periodic)
        self.residue = residue
        self.kind, self.extra = str(kind), bool(extra)
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
        from ..validation import ParameterError

        raise ParameterError("lagtime", f"(the TICA lag time) must be between 1 and {shortest - 1} frames, shorter "
                                        f"than the {'reference' if reference is not None else 'shortest trajectory'} "
                                        f"({shortest} frames), got {lag}")
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
    panel = _panel(f"TICA (lag {lag} frames, fitted on the {fitted})", names, names, [False] * d, [False] * d,
                   model, ref)
    panel.kind = "tica"
    return panel


# ------------------------------------------------------------------------------------------------ any map

#: What a :class:`Panel` is: a residue's (phi, psi), the landscapes of any map (:data:`MAP_KINDS`), a TICA
#: projection, or CVs the user chose.
LANDSCAPE_KINDS = ("phi-psi", "dihedral", "dihedral pair", "angle", "end-to-end", "tica", "cv")
#: The landscapes every map is scored on (docs/method.md §3), in report order.
MAP_KINDS = ("dihedral", "dihedral pair", "angle", "end-to-end")
#: A bond's torsion is soft when its circular standard deviation (:func:`circular_std`) in the reference is at
#: least this, in radians (15 degrees): in ACE-AAA-NME (amber ff14SB, 300 K) a trans peptide bond's omega has
#: about 10 degrees, alanine's phi about 25 and psi 70-95.
SOFT_TORSION_STD = float(np.radians(15.0))


def circular_std(angles):
    """Circular standard deviation sqrt(-2 ln R) in radians of angles (n, ...) rad along axis 0, R the length of
    the mean unit vector: the ordinary standard deviation for a narrow peak, infinite for a uniform spread."""
    a = np.asarray(angles, dtype=np.float64)
    r = np.hypot(np.cos(a).mean(axis=0), np.sin(a).mean(axis=0))
    with np.errstate(divide="ignore"):
        return np.sqrt(-2.0 * np.log(np.clip(r, 0.0, 1.0)))


def bond_torsions(topology):
    """One dihedral per bond that can turn, (n, 4) bead quadruples (i, j, k, l) about the bond j-k, in the order
    of the topology's bonds.

    A bond j-k has a torsion when j and k both have further neighbours. The backbone phi or psi
    (:meth:`cgdml.topology.CGTopology.backbone`) is the torsion of its bond; otherwise i is the neighbour of j
    (not k) with the largest branch (the most beads on its side, :meth:`cgdml.topology.CGTopology.side`), and l
    likewise at k: the dihedral along the main chain. Ties go to the lower bead index.
    """
    topo = as_cg_topology(topology)
    named = {}
    for q in topo.backbone_quads():
        named[(int(q[1]), int(q[2]))] = named[(int(q[2]), int(q[1]))] = tuple(int(b) for b in q)

    def outer(j, k):
        others = [b for b in topo.neighbours[j] if b != k]
        return max(others, key=lambda b: (len(topo.side(b, j)), -b)) if others else None

    out = []
    for j, k in topo.bonds.tolist():
        if (j, k) in named:
            out.append(named[(j, k)])
            continue
        i, m = outer(j, k), outer(k, j)
        if i is not None and m is not None and i != m:
            out.append((i, j, k, m))
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def soft_torsions(topology, xyz, threshold=SOFT_TORSION_STD):
    """The torsions of :func:`bond_torsions` that are soft in the frames ``xyz`` (n, n_beads, 3) nm: circular
    standard deviation at least ``threshold`` rad (:data:`SOFT_TORSION_STD`). (n_soft, 4) bead quadruples."""
    quads = bond_torsions(topology)
    if not len(quads):
        return quads
    return quads[circular_std(_dihedral_values(np.asarray(xyz, dtype=np.float64), quads)) >= threshold]


def torsion_pairs(quads):
    """Index pairs (a, b), a < b, of the torsions ``quads`` (n, 4) whose bonds share a bead: consecutive
    torsions, as phi and psi of one residue. A list of tuples."""
    bonds = [{int(q[1]), int(q[2])} for q in np.asarray(quads).reshape(-1, 4)]
    return [(a, b) for a in range(len(bonds)) for b in range(a + 1, len(bonds)) if len(bonds[a] & bonds[b]) == 1]


def end_to_end_pair(topology, xyz=None):
    """The two ends (i, j), i < j, of the molecule: the beads farthest apart in the bead graph (the most bonds
    between them; for a chain or a branched tree, the ends of its longest path). Among tied pairs, the one
    farthest apart on average in the frames ``xyz`` (n, n_beads, 3) nm, then the lowest indices."""
    topo = as_cg_topology(topology)
    if topo.n_beads < 2:
        raise CgdmlError("a single bead has no end-to-end distance")
    d = np.triu(topo.graph_distance, 1)
    pairs = np.argwhere(d == d.max())
    if len(pairs) > 1 and xyz is not None:
        from ..geometry import bond_lengths

        xyz = np.asarray(xyz, dtype=np.float64)
        mean = bond_lengths(xyz[:: max(1, len(xyz) // 10000)], pairs).mean(axis=0)
        pairs = pairs[[int(np.argmax(mean))]]
    return tuple(int(b) for b in pairs[0])


def _torsion_cv(quad, topo):
    """A torsion as a CV: the residue's phi or psi when it is one (named so in reports), else its dihedral."""
    for label, phi, psi in topo.backbone():
        for kind, q in (("phi", phi), ("psi", psi)):
            if np.array_equal(q, quad):
                return CV(kind, [int(topo.residue_ids[phi[2]])])
    return CV("dihedral", quad)


def map_landscapes(topology, xyz):
    """The CV groups of the landscapes every map is scored on (docs/method.md §3), with their kinds: a list of
    (kind, [CV, ...]).

    ``xyz`` (n, n_beads, 3) nm: the reference frames (the model's without a reference), which decide which
    torsions are soft and break ties between end pairs. In order: every soft torsion (:func:`soft_torsions`,
    1D), every pair of consecutive soft torsions (:func:`torsion_pairs`, 2D), every bond angle of the graph
    (1D), and the end-to-end distance (:func:`end_to_end_pair`, 1D).
    """
    topo = as_cg_topology(topology)
    soft = soft_torsions(topo, xyz)
    torsions = [_torsion_cv(q, topo) for q in soft]
    groups = [("dihedral", [cv]) for cv in torsions]
    groups += [("dihedral pair", [torsions[a], torsions[b]]) for a, b in torsion_pairs(soft)]
    groups += [("angle", [CV("angle", t)]) for t in topo.angles.tolist()]
    groups.append(("end-to-end", [CV("distance", end_to_end_pair(topo, xyz))]))
    return groups


def missing_map_landscapes(topology, xyz):
    """Why a map has no landscape of some kind of :data:`MAP_KINDS`: a dict kind -> reason (one sentence), empty
    when it has all four. ``xyz`` (n, n_beads, 3) nm as in :func:`map_landscapes`."""
    topo = as_cg_topology(topology)
    quads = bond_torsions(topo)
    soft = soft_torsions(topo, xyz)
    missing = {}
    if not len(quads):
        missing["dihedral"] = ("no bond has further bonded beads at both ends (a torsion needs a chain of 4 "
                               "bonded beads)")
    elif not len(soft):
        missing["dihedral"] = (f"all {len(quads)} torsion(s) are stiff (circular std under "
                               f"{np.degrees(SOFT_TORSION_STD):.0f} deg in the reference)")
    if not torsion_pairs(soft):
        missing["dihedral pair"] = ("no two soft torsions about bonds that share a bead" if len(soft) else
                                    "no soft torsion")
    if not len(topo.angles):
        missing["angle"] = "no bead has two bonded neighbours"
    return missing


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
    ``cvs``: None for the default. A peptide with a backbone gets the (phi, psi) of every residue (one panel
    each, the headline), then the landscapes of :func:`map_landscapes` as a second group (``extra``); any other
    map gets those of :func:`map_landscapes` (every soft torsion, consecutive pairs of them, every bond angle,
    the end-to-end distance) as its headline. ``"tica"``: a 2D TICA projection of the GDML descriptor (fitted on
    the reference, or on the model frames without one; ``lagtime`` frames, default a few). Otherwise a
    :func:`parse_cvs` string (one panel) or a list of such strings or CV lists (one panel each), 1 or 2 CVs per
    panel. Non-periodic CVs get the reference's range (the model's without one), padded by 5 %. A ``lagtime``
    without a TICA landscape is refused.
    """
    panels = _landscape_panels(model, topology, reference, cvs, lagtime)
    if lagtime is not None and not any(p.is_tica for p in panels):
        raise CgdmlError(f"a TICA lag time ({lagtime} frames) applies only to a TICA landscape, and none of these "
                         f"is one ({'; '.join(p.label for p in panels[:6])}{' ...' if len(panels) > 6 else ''}); "
                         "ask for one with --cv tica (cvs='tica')")
    return panels


def _is_tica(c):
    return isinstance(c, str) and c.strip().lower() == "tica"


def _cv_panels(pooled, topo, ref, groups):
    """One :class:`Panel` per CV group (a list of 1 or 2 :class:`CV`)."""
    panels = []
    for group in groups:
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


def _map_panels(pooled, topo, ref, extra):
    """The panels of :func:`map_landscapes`, with their kinds; the end-to-end one labelled so."""
    kinds_groups = map_landscapes(topo, pooled if ref is None else ref)
    panels = _cv_panels(pooled, topo, ref, [g for _, g in kinds_groups])
    for (kind, _), panel in zip(kinds_groups, panels):
        panel.kind, panel.extra, panel.residue = kind, extra, None
        panel.label = f"end-to-end {panel.names[0]}" if kind == "end-to-end" else " / ".join(panel.names)
    return panels


def _landscape_panels(model, topology, reference, cvs, lagtime=None):
    topo = as_cg_topology(topology)
    model_list = [_check_xyz(x, topo) for x in (model if isinstance(model, (list, tuple)) else [model])]
    ref = None if reference is None else _check_xyz(reference, topo)
    pooled = np.concatenate(model_list)
    if cvs is not None and not (isinstance(cvs, str) and cvs == "phi-psi"):
        items = [cvs] if isinstance(cvs, str) else list(cvs)
        panels = [_tica_panel(model_list, topo, ref, lagtime)] if any(_is_tica(c) for c in items) else []
        rest = [c for c in items if not _is_tica(c)]
        if rest:
            panels += _cv_panels(pooled, topo, ref, cv_groups(rest if not isinstance(cvs, str) else rest[0]))
        return panels
    if topo.n_beads < 2:
        raise CgdmlError("a single bead has no free-energy landscape")
    backbone = topo.backbone()
    if not backbone:
        return _map_panels(pooled, topo, ref, extra=False)
    quads = topo.backbone_quads()
    m, r = _dihedral_values(pooled, quads), None if ref is None else _dihedral_values(ref, quads)
    panels = [_panel(label, [f"phi {label}", f"psi {label}"],
                     [rf"$\phi$ {label} (deg)", rf"$\psi$ {label} (deg)"], [True, True], [True, True],
                     m[:, 2 * k:2 * k + 2], None if r is None else r[:, 2 * k:2 * k + 2], label)
              for k, (label, _, _) in enumerate(backbone)]
    for panel in panels:
        panel.kind = "phi-psi"
    return panels + _map_panels(pooled, topo, ref, extra=True)
