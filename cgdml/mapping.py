"""CG maps: beads chosen by mdtraj selections in a TOML file, and the slice, aggregate and optimal force maps.

A map file lists beads in order::

    description = "..."          # optional
    [[bead]]
    name = "CA"                  # bead (CG atom) name
    select = "resid 1 and name CA"
    weights = "com"              # com | cog, only for beads of several atoms

The configurational map ``config_matrix_`` (n_beads, n_atoms) places each bead at its atom, or at the
centre of mass / geometry of its atoms. A force map ``force_matrix_`` (n_beads, n_atoms) turns atom forces
into bead forces. All maps obey the consistency condition ``force_matrix_ @ config_matrix_.T = I``; the
aggregate and optimal maps also give equal weight to all atoms of a constraint group, so that the
constraint forces (absent from OpenMM's ``getState(getForces=True)``) cancel (docs/method.md §2.1).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._io import tomllib, CgdmlError, numpy_file_kind, one_line
from .data import CGDataset
from .io.allatom import count_frames, load_allatom, load_topology
from .io.shipped import ala2_pdb_path, default_dataset_paths, shipped_temperature
from .system import CGSystem
from .topology import CGTopology

PRESET_DIR = Path(__file__).resolve().parent / "presets"
FORCE_MAPS = ("slice", "aggregate", "optimal")
PROGRESS_DELAY_S = 2.0  # map_allatom shows its progress bars for runs longer than this only
_TOP_KEYS = {"bead", "description", "bonds"}
_BEAD_KEYS = {"name", "select", "weights"}


def available_presets():
    """Names of the bundled map presets (``ala2-5``, ``ala2-6``, ...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_map_spec(source):
    """(beads, label) from a preset name or a TOML path; beads is a list of dicts (name, select, weights).

    An optional top-level ``bonds = [[i, j], ...]`` (bead indices) replaces the bonds derived from the atom
    graph; :func:`load_map_bonds` reads it.
    """
    path = Path(source)
    if not path.suffix and (PRESET_DIR / f"{source}.toml").exists():
        path, label = PRESET_DIR / f"{source}.toml", str(source)
    else:
        label = str(path)
        if not path.exists():
            raise CgdmlError(f"{path}: no such map file (presets: {', '.join(available_presets())})")
        if path.is_dir():
            raise CgdmlError(f"{path}: is a directory, not a map file (a TOML file or a preset: "
                             f"{', '.join(available_presets())})")
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CgdmlError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise CgdmlError(f"{path}: cannot read the map file ({exc.strerror or exc})") from None
    bad = set(spec) - _TOP_KEYS
    if bad:
        raise CgdmlError(f"{path}: unknown key {sorted(bad)[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    beads = spec.get("bead")
    if not isinstance(beads, list) or not beads:
        raise CgdmlError(f"{path}: no beads (add [[bead]] tables with name and select)")
    for i, bead in enumerate(beads):
        if not isinstance(bead, dict):
            raise CgdmlError(f"{path}: bead {i} is not a table")
        bad = set(bead) - _BEAD_KEYS
        if bad:
            raise CgdmlError(f"{path}: bead {i}: unknown key {sorted(bad)[0]!r} (allowed: name, select, weights)")
        for key in ("name", "select"):
            if not isinstance(bead.get(key), str) or not bead[key].strip():
                raise CgdmlError(f"{path}: bead {i}: missing or empty {key!r}")
        if bead.get("weights", "com") not in ("com", "cog"):
            raise CgdmlError(f"{path}: bead {i} ({bead['name']}): weights must be 'com' or 'cog', "
                             f"got {bead['weights']!r}")
    return [dict(b) for b in beads], label


def load_map_bonds(source):
    """The ``bonds = [[i, j], ...]`` list of a map file or preset (n, 2) int array, or None when it has none."""
    path = Path(source)
    if not path.suffix and (PRESET_DIR / f"{source}.toml").exists():
        path = PRESET_DIR / f"{source}.toml"
    spec = tomllib.loads(path.read_text())
    if "bonds" not in spec:
        return None
    bonds = spec["bonds"]
    if not (isinstance(bonds, list) and all(isinstance(b, list) and len(b) == 2 and
                                            all(isinstance(i, int) and not isinstance(i, bool) for i in b)
                                            for b in bonds)):
        raise CgdmlError(f"{path}: bonds must be a list of [i, j] bead index pairs, got {bonds!r}")
    return np.array(bonds, dtype=np.int64).reshape(-1, 2)


class CGMap:
    """Linear CG map of an all-atom topology (estimator style: ``fit`` resolves it on a topology).

    Parameters: ``beads`` (list of dicts name/select/weights, see :func:`load_map_spec`); ``bonds``: CG bonds
    (n, 2) bead indices, instead of those derived from the atom graph; ``constraints``: ``"hbonds"`` (bonds to hydrogen in the topology), ``"detect"`` (atom pairs whose
    distance has std < ``constraint_tol`` nm in a positions sample), ``"none"``, or an array of atom
    pairs; ``regularization``: relative ridge added to the force covariance for the optimal map.

    Attributes after ``fit``: ``config_matrix_`` (n_beads, n_atoms), ``bead_atoms_``, ``constraints_``
    (n_pairs, 2), ``constraint_groups_`` (group label per atom), ``cg_topology_`` (a
    :class:`cgdml.topology.CGTopology`: bead names, residues, bonds), ``masses_`` (amu). After
    ``fit_force_map``: ``force_matrix_``, ``force_map_``.
    """

    def __init__(self, beads, *, bonds=None, constraints="hbonds", constraint_tol=1e-4, regularization=1e-6, label=""):
        self.beads = beads
        self.bonds = bonds
        self.constraints = constraints
        self.constraint_tol = constraint_tol
        self.regularization = regularization
        self.label = label

    @classmethod
    def from_toml(cls, source, topology, *, positions_sample=None, **params):
        """Map from a preset name or TOML file, fitted on ``topology`` (file or mdtraj Topology)."""
        beads, label = load_map_spec(source)
        return cls(beads, bonds=load_map_bonds(source), label=label, **params).fit(topology, positions_sample)

    # ------------------------------------------------------------------ configurational map
    def fit(self, topology, positions_sample=None):
        """Resolve the bead selections on ``topology``; ``positions_sample`` (n, n_atoms, 3) nm for "detect"."""
        top = load_topology(topology)
        where = f"{self.label}: " if self.label else ""
        n_atoms = top.n_atoms
        masses = np.array([a.element.mass if a.element is not None else 0.0 for a in top.atoms])
        C = np.zeros((len(self.beads), n_atoms))
        owner = np.full(n_atoms, -1)
        bead_atoms = []
        for i, bead in enumerate(self.beads):
            try:
                idx = top.select(bead["select"])
            except Exception as exc:
                raise CgdmlError(f"{where}bead {i} ({bead['name']}): bad selection {bead['select']!r} "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
            if not len(idx):
                raise CgdmlError(f"{where}bead {i} ({bead['name']}): selection {bead['select']!r} matches no atoms")
            clash = idx[owner[idx] >= 0]
            if len(clash):
                j = owner[clash[0]]
                raise CgdmlError(f"{where}beads {j} ({self.beads[j]['name']}) and {i} ({bead['name']}) overlap "
                                 f"at atom {top.atom(int(clash[0]))}")
            if len(idx) > 1 and "weights" not in bead:
                raise CgdmlError(f"{where}bead {i} ({bead['name']}) selects {len(idx)} atoms; "
                                 "set weights = \"com\" or \"cog\"")
            w = masses[idx] if bead.get("weights", "com") == "com" else np.ones(len(idx))
            if not w.sum() > 0:
                raise CgdmlError(f"{where}bead {i} ({bead['name']}): its atoms have no mass; use weights = \"cog\"")
            C[i, idx] = w / w.sum()
            owner[idx] = i
            bead_atoms.append(idx)
        self.topology_ = top
        self.atom_masses_ = masses
        self.config_matrix_ = C
        self.bead_atoms_ = bead_atoms
        self.bead_of_atom_ = owner
        self.bead_names_ = [b["name"] for b in self.beads]
        self._set_constraints(positions_sample)
        self.cg_topology_ = self._cg_topology()
        return self

    @property
    def n_beads(self):
        return len(self.beads)

    def _set_constraints(self, positions_sample=None):
        top, n = self.topology_, self.topology_.n_atoms
        bonds = np.array([(a.index, b.index) for a, b in top.bonds], dtype=int).reshape(-1, 2)
        mode = self.constraints
        if isinstance(mode, str) and mode == "hbonds":
            is_h = np.array([a.element is not None and a.element.symbol == "H" for a in top.atoms])
            pairs = bonds[is_h[bonds].any(axis=1)] if len(bonds) else bonds
        elif isinstance(mode, str) and mode == "none":
            pairs = np.zeros((0, 2), dtype=int)
        elif isinstance(mode, str) and mode == "detect":
            if positions_sample is None:
                pairs = np.zeros((0, 2), dtype=int)  # detected later, when fit_force_map gets positions
            else:
                pairs = detect_constraints(positions_sample, bonds if len(bonds) else None, self.constraint_tol)
        elif isinstance(mode, str):
            raise CgdmlError(f"constraints must be 'hbonds', 'detect', 'none' or atom pairs, got {mode!r}")
        else:
            pairs = np.asarray(mode, dtype=int).reshape(-1, 2)
            if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
                raise CgdmlError(f"constraint pairs must index the {n} atoms")
        self.constraints_ = pairs
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        self.constraint_groups_ = connected_components(graph, directed=False)[1]
        self.aggregate_atoms_ = [np.flatnonzero(np.isin(self.constraint_groups_, self.constraint_groups_[idx]))
                                 for idx in self.bead_atoms_]
        self.masses_ = np.array([self.atom_masses_[g].sum() for g in self.aggregate_atoms_])

    def _cg_topology(self):
        """The bead graph: one bead per atom group, in the residue of its first atom; bonds where atom bonds join
        two beads' groups (through atoms of no bead), or the map's own ``bonds`` list."""
        top = self.topology_
        names, res_ids, res_names, elements = [], [], [], []
        for i, idx in enumerate(self.bead_atoms_):
            atom = top.atom(int(idx[0]))
            heavy = [top.atom(int(a)).element for a in idx
                     if top.atom(int(a)).element is not None and top.atom(int(a)).element.symbol != "H"]
            element = heavy[0] if heavy else atom.element
            names.append(self.bead_names_[i])
            res_ids.append(atom.residue.resSeq)
            res_names.append(atom.residue.name)
            elements.append(element.symbol if element is not None else "C")
        pairs = self._bonded_bead_pairs()
        if self.bonds is not None:
            self._check_map_bonds(pairs)
            return CGTopology(names, self.bonds, res_ids, res_names, elements)
        try:
            return CGTopology(names, sorted(pairs), res_ids, res_names, elements)
        except CgdmlError as exc:
            where = f"{self.label}: " if self.label else ""
            raise CgdmlError(f"{where}{exc} (or add bonds = [[i, j], ...] to the map file)") from None

    def _bonded_bead_pairs(self):
        """{(i, j)}, i < j: the bead pairs whose atom groups are bonded in the all-atom topology, directly or
        through atoms of no bead."""
        top = self.topology_
        neighbours = [[] for _ in range(top.n_atoms)]
        for a, b in top.bonds:
            neighbours[a.index].append(b.index)
            neighbours[b.index].append(a.index)
        owner, pairs = self.bead_of_atom_, set()
        for i, idx in enumerate(self.bead_atoms_):
            seen, stack = set(idx.tolist()), list(idx.tolist())
            while stack:  # walk through atoms that belong to no bead
                for b in neighbours[stack.pop()]:
                    if b in seen:
                        continue
                    seen.add(b)
                    if owner[b] < 0:
                        stack.append(b)
                    elif owner[b] != i:
                        pairs.add((min(i, owner[b]), max(i, owner[b])))
        return pairs

    def _check_map_bonds(self, pairs):
        """Check the map file's own ``bonds`` against the atom groups (``pairs``: :meth:`_bonded_bead_pairs`).

        A bond between beads of one molecule whose atom groups are not bonded (the covalent path between them
        passes through another bead's atoms) is refused: it would give the prior a bond, angles and dihedrals
        that are not there (almost always a wrong index). A bond between groups that no covalent path joins is kept
        with a warning: the all-atom topology may lack bonds there (a PDB without CONECT records), which is why a
        map lists its bonds."""
        top = self.topology_
        where = f"{self.label}: " if self.label else ""
        atom_bonds = np.array([(a.index, b.index) for a, b in top.bonds], dtype=int).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(atom_bonds)), (atom_bonds[:, 0], atom_bonds[:, 1])),
                           shape=(top.n_atoms, top.n_atoms))
        molecule = connected_components(graph, directed=False)[1]
        unjoined = []
        for i, j in np.asarray(self.bonds, dtype=int).reshape(-1, 2).tolist():
            if not (0 <= i < self.n_beads and 0 <= j < self.n_beads) or i == j or (min(i, j), max(i, j)) in pairs:
                continue  # out of range or a self-bond: CGTopology's one-line errors
            label = f"bond {i}-{j} ({self.bead_names_[i]}-{self.bead_names_[j]})"
            if molecule[self.bead_atoms_[i][0]] == molecule[self.bead_atoms_[j][0]]:
                near = sorted({b for p in pairs if i in p for b in p} - {i})
                shown = ", ".join(f"{b} ({self.bead_names_[b]})" for b in near) or "none"
                raise CgdmlError(f"{where}{label}: the atoms of these beads are not bonded in the all-atom topology, "
                                 f"the covalent path between them passes through other beads (bead {i} is bonded to "
                                 f"{shown}); a CG bond joins beads whose atom groups are bonded: fix the bead indices "
                                 "(0-based, in the order of the [[bead]] tables)")
            unjoined.append(label)
        if unjoined:
            warnings.warn(f"{where}{', '.join(unjoined)}: no covalent path joins the atoms of these beads in the "
                          "all-atom topology (it may lack bonds there); kept as the map file gives them",
                          stacklevel=4)

    # ------------------------------------------------------------------ force maps
    def fit_force_map(self, kind="aggregate", forces_sample=None, positions_sample=None, *, force_cov=None):
        """Build ``force_matrix_`` for ``kind`` in slice | aggregate | optimal; returns self.

        ``optimal`` needs ``forces_sample`` (n, n_atoms, 3) or ``force_cov`` (n_atoms, n_atoms), see
        :func:`force_covariance`. ``positions_sample`` (nm) serves constraint detection (``"detect"``).
        """
        if not hasattr(self, "config_matrix_"):
            raise CgdmlError("fit the map on a topology before fitting a force map")
        if kind not in FORCE_MAPS:
            raise CgdmlError(f"unknown force map {kind!r} (choose {', '.join(FORCE_MAPS)})")
        if positions_sample is not None and isinstance(self.constraints, str) and self.constraints == "detect":
            self._set_constraints(positions_sample)
        n_beads, n_atoms = self.config_matrix_.shape
        B = np.zeros((n_beads, n_atoms))
        if kind == "slice":
            for i, idx in enumerate(self.bead_atoms_):
                B[i, idx] = 1.0
            cut = [self.bead_names_[i] for i, (idx, agg) in enumerate(zip(self.bead_atoms_, self.aggregate_atoms_))
                   if len(agg) > len(idx)]
            if cut:
                warnings.warn(f"slice force map leaves out the constraint forces on bead(s) {', '.join(cut)}; "
                              "the aggregate or optimal map is consistent with constraints", stacklevel=2)
        else:
            self._check_separable()
            if kind == "aggregate":
                for i, agg in enumerate(self.aggregate_atoms_):
                    B[i, agg] = 1.0
            else:
                if force_cov is None:
                    if forces_sample is None:
                        raise CgdmlError("the optimal force map needs a forces sample")
                    self.check_covariance_frames(len(forces_sample))
                    force_cov = force_covariance(forces_sample)
                force_cov = np.asarray(force_cov, dtype=np.float64)
                if force_cov.shape != (n_atoms, n_atoms):
                    raise CgdmlError(f"force covariance must be ({n_atoms}, {n_atoms}), got {force_cov.shape}")
                B = optimal_force_map(self.config_matrix_, force_cov, self.constraint_groups_, self.regularization)
        self.force_matrix_ = B
        self.force_map_ = kind
        return self

    def set_force_matrix(self, matrix, label="user", positions_sample=None, tol=1e-5):
        """Use a given linear force map ``matrix`` (n_beads, n_atoms), e.g. from aggforce; returns self.

        It must be consistent with the configurational map and the constraints, as the built-in maps are
        (:meth:`consistency_error`): max |B C^T - I| and the largest weight difference between two constrained
        atoms, per bead, both at most ``tol``; else a one-line error says which condition fails and by how much.
        ``positions_sample`` (nm) serves constraint detection (``"detect"``).
        """
        if not hasattr(self, "config_matrix_"):
            raise CgdmlError("fit the map on a topology before giving it a force map")
        if positions_sample is not None and isinstance(self.constraints, str) and self.constraints == "detect":
            self._set_constraints(positions_sample)
        B = np.asarray(matrix, dtype=np.float64)
        C = self.config_matrix_
        where = f"{label}: " if label else ""
        if B.shape != C.shape:
            raise CgdmlError(f"{where}force map shaped {B.shape}, but map {self.label or '(given)'} has "
                             f"{C.shape[0]} beads on {C.shape[1]} atoms: it must be shaped {C.shape}")
        if not np.isfinite(B).all():
            raise CgdmlError(f"{where}the force map holds NaN or inf")
        gap = np.abs(B @ C.T - np.eye(len(B)))
        if gap.max() > tol:
            i, j = np.unravel_index(np.argmax(gap), gap.shape)
            raise CgdmlError(f"{where}inconsistent force map: B C^T = I fails by {gap.max():.3g} (tolerance {tol:g}; "
                             f"entry bead {i} ({self.bead_names_[i]}), bead {j} ({self.bead_names_[j]})): the forces "
                             f"it maps are not the mean forces on the bead positions of map {self.label or '(given)'}")
        pairs = self.constraints_
        if len(pairs):
            split = np.abs(B[:, pairs[:, 0]] - B[:, pairs[:, 1]])
            if split.max() > tol:
                i, k = np.unravel_index(np.argmax(split), split.shape)
                a, b = pairs[k]
                top = self.topology_
                raise CgdmlError(f"{where}inconsistent force map: weights differ inside a constraint group by "
                                 f"{split.max():.3g} (tolerance {tol:g}; bead {i} ({self.bead_names_[i]}), constrained "
                                 f"atoms {a} ({top.atom(int(a))}) and {b} ({top.atom(int(b))})), so constraint forces "
                                 "do not cancel; give constrained atoms equal weights, or --constraints none if the "
                                 "forces hold no constraint forces")
        self.force_matrix_ = B
        self.force_map_ = label
        return self

    def check_covariance_frames(self, n_frames):
        """Refuse (one line) to build the optimal force map from fewer frames than its force covariance needs:
        the covariance of the G constraint groups has rank at most 3 per frame, so at least max(2, G / 3)."""
        groups = len(np.unique(self.constraint_groups_))
        need = max(2, -(-groups // 3))
        if n_frames < need:
            raise CgdmlError(f"the optimal force map needs at least {need} frames for the force covariance of its "
                             f"{groups} constraint groups, got {n_frames}; use more frames or --force-map aggregate")

    def _check_separable(self):
        owner = np.full(self.topology_.n_atoms, -1)
        for i, agg in enumerate(self.aggregate_atoms_):
            clash = agg[owner[agg] >= 0]
            if len(clash):
                j = owner[clash[0]]
                raise CgdmlError(f"beads {j} ({self.bead_names_[j]}) and {i} ({self.bead_names_[i]}) are joined by "
                                 "constraints; no consistent aggregate or optimal force map separates them")
            owner[agg] = i

    # ------------------------------------------------------------------ applying the map
    def map_coords(self, xyz):
        """Bead positions (n_frames, n_beads, 3) from atom positions (n_frames, n_atoms, 3)."""
        return np.matmul(self.config_matrix_, np.asarray(xyz, dtype=np.float64))

    def map_forces(self, forces):
        """Bead forces (n_frames, n_beads, 3) from atom forces (n_frames, n_atoms, 3)."""
        if not hasattr(self, "force_matrix_"):
            raise CgdmlError("call fit_force_map before map_forces")
        return np.matmul(self.force_matrix_, np.asarray(forces, dtype=np.float64))

    def consistency_error(self):
        """(max |B C^T - I|, max weight difference inside a constraint group): both ~0 for a consistent map."""
        B, C = self.force_matrix_, self.config_matrix_
        cons = np.abs(B @ C.T - np.eye(len(B))).max()
        pairs = self.constraints_
        split = np.abs(B[:, pairs[:, 0]] - B[:, pairs[:, 1]]).max() if len(pairs) else 0.0
        return float(cons), float(split)


def load_force_matrix(source):
    """A user-given linear force map (n_beads, n_atoms) float64 from a ``.npy`` file (or an array), and its label.

    Only the shape and the values are checked here; consistency with a configurational map is checked by
    :meth:`CGMap.set_force_matrix`.
    """
    if isinstance(source, np.ndarray):
        matrix, label = source, "(array)"
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise CgdmlError(f"{path}: no such force map file (a .npy matrix, n_beads x n_atoms)")
        if path.is_file() and numpy_file_kind(path) != "npy":
            raise CgdmlError(f"{path}: not a NumPy .npy file (a force map is a .npy matrix, n_beads x n_atoms)")
        try:
            matrix = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise CgdmlError(f"{path}: not a readable force map ({type(exc).__name__}: {one_line(exc, 160)})") \
                from None
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
        raise CgdmlError(f"{label}: a force map is a 2-d matrix of numbers (n_beads, n_atoms), "
                         f"got {matrix.dtype} values shaped {matrix.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise CgdmlError(f"{label}: the force map holds NaN or inf")
    return matrix, label


def detect_constraints(positions, candidate_pairs=None, tol=1e-4):
    """Atom pairs (k, 2) whose distance std over ``positions`` (n, n_atoms, 3) nm is below ``tol`` nm.

    Candidates: ``candidate_pairs`` (e.g. topology bonds), else all pairs closer than 0.2 nm on average.
    """
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim != 3 or len(x) < 2:
        raise CgdmlError("constraint detection needs at least 2 frames of positions (n, n_atoms, 3)")
    if candidate_pairs is None:
        i, j = np.triu_indices(x.shape[1], 1)
        close = np.linalg.norm(x[:, i] - x[:, j], axis=-1).mean(axis=0) < 0.2
        candidate_pairs = np.stack([i[close], j[close]], axis=1)
    pairs = np.asarray(candidate_pairs, dtype=int).reshape(-1, 2)
    d = np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)
    return pairs[d.std(axis=0) < tol]


def force_covariance(forces):
    """Sigma_ab = mean over frames and x, y, z of f_a f_b; (n_atoms, n_atoms) in (kJ/mol/nm)^2."""
    f = np.asarray(forces, dtype=np.float64)
    flat = f.transpose(1, 0, 2).reshape(f.shape[1], -1)
    return flat @ flat.T / flat.shape[1]


def optimal_force_map(config_matrix, force_cov, groups, regularization=1e-6):
    """Force map with least mean-squared mapped force, subject to B C^T = I and equal weights per group.

    With P (n_atoms, n_groups) the group indicator, A = P^T Sigma P + ridge and G = C P, each bead's group
    weights solve min b^T A b subject to G b = e_I; the Lagrange solution is B = (A^-1 G^T (G A^-1 G^T)^-1)^T.
    """
    C = np.asarray(config_matrix, dtype=np.float64)
    groups = np.asarray(groups)
    _, labels = np.unique(groups, return_inverse=True)
    P = np.zeros((C.shape[1], labels.max() + 1))
    P[np.arange(len(labels)), labels] = 1.0
    A = P.T @ force_cov @ P
    A[np.diag_indices_from(A)] += regularization * np.trace(A) / len(A)
    G = C @ P
    try:
        cf = scipy.linalg.cho_factor(A)
        AinvGt = scipy.linalg.cho_solve(cf, G.T)
        S = G @ AinvGt
        X = scipy.linalg.solve(S, np.eye(len(S)), assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        raise CgdmlError("the optimal force map is singular: the force covariance is degenerate or the beads "
                         "cannot be separated under the constraints; raise the regularization") from None
    return (AinvGt @ X).T @ P.T


# ---------------------------------------------------------------------- pipeline
def ala2_topology():
    """The all-atom mdtraj Topology of capped alanine dipeptide (ACE-ALA-NME, 22 atoms) used by the presets."""
    return load_topology(ala2_pdb_path())


def preset_map(name, topology=None, **params):
    """A fitted :class:`CGMap` for a preset (on the alanine dipeptide topology unless one is given)."""
    return CGMap.from_toml(name, ala2_topology() if topology is None else topology, **params)


def map_allatom(top, trajs, forces, map="ala2-5", *, force_map="aggregate", temperature=300.0,
                length_unit="nm", energy_unit="kJ/mol", stride=1, chunk=1000, constraints="hbonds",
                regularization=1e-6, progress=False, lammps_units="real"):
    """Map all-atom trajectories and forces (see :func:`cgdml.io.allatom.load_allatom`) to a :class:`CGDataset`.

    ``map``: preset name or TOML file. ``force_map``: slice | aggregate | optimal, or a user-given linear
    force map, a ``.npy`` path (or an array) of shape (n_beads, n_atoms), refused unless consistent with the
    map and the constraints (:meth:`CGMap.set_force_matrix`). The optimal map (and constraint detection)
    takes one extra pass over the data to accumulate the force covariance (and a positions sample).
    ``lammps_units``: unit style of LAMMPS dump forces (:mod:`cgdml.io.formats`). ``progress`` shows bars over
    the frames for runs longer than a few seconds.
    """
    topology = load_topology(top)
    beads, label = load_map_spec(map)
    cgmap = CGMap(beads, bonds=load_map_bonds(map), constraints=constraints, regularization=regularization,
                  label=label).fit(topology)
    load = dict(length_unit=length_unit, energy_unit=energy_unit, stride=stride, chunk=chunk,
                lammps_units=lammps_units)
    user_matrix = None
    if isinstance(force_map, np.ndarray) or (isinstance(force_map, (str, Path)) and str(force_map) not in FORCE_MAPS
                                             and Path(force_map).suffix.lower() == ".npy"):
        user_matrix, force_map = load_force_matrix(force_map)
    elif force_map not in FORCE_MAPS:
        raise CgdmlError(f"unknown force map {force_map!r} (choose {', '.join(FORCE_MAPS)}, or a .npy matrix)")
    detect = isinstance(constraints, str) and constraints == "detect"
    if user_matrix is not None and not detect:  # refuse an inconsistent map before reading any frame
        cgmap.set_force_matrix(user_matrix, force_map)
    cov, n, sample = None, 0, []
    total = count_frames(trajs, stride) if progress else None

    def bar(desc):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="frame", mininterval=1.0, delay=PROGRESS_DELAY_S,
                    disable=not progress)

    if (user_matrix is None and force_map == "optimal") or detect:
        cov = np.zeros((topology.n_atoms,) * 2)
        with bar("force covariance") as pbar:
            for xyz, f in load_allatom(topology, trajs, forces, **load):
                flat = f.astype(np.float64).transpose(1, 0, 2).reshape(f.shape[1], -1)
                cov += flat @ flat.T
                n += flat.shape[1]
                if sum(len(s) for s in sample) < 2000:
                    sample.append(xyz)
                pbar.update(len(xyz))
        cov /= max(n, 1)
        if user_matrix is None and force_map == "optimal":
            cgmap.check_covariance_frames(n // 3)
    if user_matrix is None:
        cgmap.fit_force_map(force_map, positions_sample=np.concatenate(sample) if detect else None, force_cov=cov)
    elif detect:
        cgmap.set_force_matrix(user_matrix, force_map, positions_sample=np.concatenate(sample))
    coords, cg_forces = [], []
    with bar("mapping") as pbar:
        for xyz, f in load_allatom(topology, trajs, forces, **load):
            coords.append(cgmap.map_coords(xyz))
            cg_forces.append(cgmap.map_forces(f))
            pbar.update(len(xyz))
    if not coords:
        raise CgdmlError("the trajectories hold no frames")
    info = {"source": {"topology": str(top) if not hasattr(top, "atoms") else "(Topology)",
                       "trajectories": [str(p) for p in ([trajs] if isinstance(trajs, (str, Path)) else trajs)],
                       "forces": [str(p) for p in ([forces] if isinstance(forces, (str, Path)) else forces)]},
            "map": label, "beads": beads, "force_map": force_map, "stride": int(stride),
            "source_units": {"length": length_unit, "energy": energy_unit},
            "constraints": int(len(cgmap.constraints_)), "consistency_error": cgmap.consistency_error()}
    system = CGSystem(cgmap.cg_topology_, cgmap.masses_, temperature)
    return CGDataset(np.concatenate(coords), np.concatenate(cg_forces), system, info)


def load_default_cg_dataset(map="ala2-5", force_map="aggregate", stride=1):
    """The shipped alanine-dipeptide reference mapped to CG beads with ``map`` and ``force_map``."""
    paths = default_dataset_paths()
    return map_allatom(paths.topology, paths.trajectory, paths.forces, map, force_map=force_map,
                       temperature=shipped_temperature(paths.trajectory), stride=stride)
