"""The CG topology: the bead graph from which every shaped term of a CG model is derived (docs/method.md §3b).

A :class:`CGTopology` holds, per bead (in coordinate-column order), its name, element and residue, and the
bonds between beads. From the bonds it derives, once: bond angles (bonded triples), proper dihedrals (bonded
quadruples), impropers at branch points (which carry chirality, e.g. N-CA-CB-C at a CB bead), graph
distances, and the backbone (phi, psi) of every residue, found from bead names along bonds (C-N-CA-C and
N-CA-C-N paths), never from bead index order.

Residues are identified by their residue number (PDB resSeq). Beads of one residue need not be contiguous in
the bead order: :meth:`CGTopology.to_mdtraj` then splits the residue into contiguous segments, so that the
mdtraj topology's atom order always equals the bead order.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, shortest_path

from ._io import CgdmlError, TempFile


#: Force-field residue names of amino acids that mdtraj's table lacks (protonation and disulfide variants).
AMINO_ACID_VARIANTS = frozenset({"HIE", "HID", "HIP", "HSD", "HSE", "HSP", "CYX", "CYM", "ASH", "GLH", "LYN"})


def is_amino_acid(residue_name):
    """Whether ``residue_name`` names an amino acid (mdtraj's one-letter table or a force-field variant; caps
    such as ACE and NME are not amino acids)."""
    from mdtraj.core.residue_names import _AMINO_ACID_CODES

    name = str(residue_name).upper()
    return _AMINO_ACID_CODES.get(name) is not None or name in AMINO_ACID_VARIANTS


def _element_symbol(name):
    return name[0].upper() if name[:1].upper() in ("C", "N", "O", "S", "H", "P") else "C"


def parse_bonds(text):
    """Bonds from a command-line string like ``"0-1,1-2,2-3"`` (or ``"0 1, 1 2"``), as an (n, 2) int array."""
    pairs = []
    for item in str(text).replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.replace("-", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            pairs.append((int(parts[0]), int(parts[1])))
        except ValueError:
            raise CgdmlError(f"bad bond {item!r} in {text!r}: write bonds as I-J pairs of bead indices, "
                             "e.g. 0-1,1-2") from None
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def chain_topology(bead_names, residue_names=None, residue_of_bead=None):
    """An mdtraj Topology of beads bonded in index order, for data that come without bonds.

    ``residue_names`` (one per residue) and ``residue_of_bead`` (the 0-based residue of each bead) keep peptide
    residues; by default all beads are in one residue "CG".
    """
    if residue_of_bead is None:
        return CGTopology.chain(bead_names, warn=False).to_mdtraj()
    return CGTopology.chain(bead_names, warn=False, residue_ids=np.asarray(residue_of_bead) + 1,
                            residue_names=[residue_names[r] for r in residue_of_bead]).to_mdtraj()


class CGTopology:
    """Bead graph of a CG molecule; beads are indexed in coordinate-column order.

    names (n_beads,) bead names; bonds (n_bonds, 2) bead index pairs; residue_ids (n_beads,) residue numbers
    (default: all 1); residue_names (n_beads,) the residue name of each bead (default "CG"); elements (n_beads,)
    element symbols (default: from the first letter of the name, carbon otherwise). The graph must be connected
    and the bonds distinct; anything else is a one-line :class:`CgdmlError`.
    """

    def __init__(self, names, bonds, residue_ids=None, residue_names=None, elements=None):
        self.names = [str(n) for n in names]
        n = len(self.names)
        if n < 1:
            raise CgdmlError("a CG topology needs at least one bead")
        self.residue_ids = np.ones(n, dtype=np.int64) if residue_ids is None else \
            np.asarray(residue_ids, dtype=np.int64).reshape(-1)
        self.residue_names = ["CG"] * n if residue_names is None else [str(r) for r in residue_names]
        self.elements = [_element_symbol(b) for b in self.names] if elements is None else [str(e) for e in elements]
        if not len(self.residue_ids) == len(self.residue_names) == len(self.elements) == n:
            raise CgdmlError(f"CG topology: {n} bead names but {len(self.residue_ids)} residue ids, "
                             f"{len(self.residue_names)} residue names and {len(self.elements)} elements")
        self.bonds = self._check_bonds(bonds, n)
        self.neighbours = [[] for _ in range(n)]
        for i, j in self.bonds:
            self.neighbours[i].append(int(j))
            self.neighbours[j].append(int(i))
        self.neighbours = [sorted(nb) for nb in self.neighbours]
        adjacency = csr_matrix((np.ones(len(self.bonds)), (self.bonds[:, 0], self.bonds[:, 1])), shape=(n, n))
        n_parts, part = connected_components(adjacency, directed=False)
        if n_parts > 1:
            lonely = [i for i in range(n) if part[i] != part[0]]
            raise CgdmlError(f"the CG bonds leave the bead graph disconnected ({n_parts} pieces; beads "
                             f"{', '.join(map(str, lonely[:10]))}{' ...' if len(lonely) > 10 else ''} are not "
                             "bonded to bead 0); give the missing bonds")
        self.graph_distance = shortest_path(adjacency, directed=False, unweighted=True).astype(np.int64) \
            if n > 1 else np.zeros((1, 1), dtype=np.int64)
        self.angles = self._angles()
        self.dihedrals = self._dihedrals()
        self.impropers = self._impropers()

    # ------------------------------------------------------------------------------------------ construction
    @staticmethod
    def _check_bonds(bonds, n):
        b = np.asarray(bonds if bonds is not None else [], dtype=np.float64).reshape(-1, 2) if np.size(bonds) else \
            np.zeros((0, 2))
        bad = ~(np.isfinite(b) & (b == np.round(b))).all(axis=1)
        if bad.any():
            raise CgdmlError(f"bonds must be pairs of bead indices, got {b[bad][0].tolist()} "
                             f"(bond {int(np.argmax(bad))} of {len(b)})")
        b = b.astype(np.int64)
        if b.size and (b.min() < 0 or b.max() >= n):
            bad = b[(b < 0).any(1) | (b >= n).any(1)][0].tolist()
            raise CgdmlError(f"bond {bad[0]}-{bad[1]} names a bead outside 0..{n - 1} ({n} beads)")
        if (b[:, 0] == b[:, 1]).any():
            i = int(b[b[:, 0] == b[:, 1]][0, 0])
            raise CgdmlError(f"bond {i}-{i} joins a bead to itself")
        b = np.sort(b, axis=1)
        uniq, counts = np.unique(b, axis=0, return_counts=True)
        if (counts > 1).any():
            i, j = uniq[counts > 1][0]
            raise CgdmlError(f"bond {i}-{j} is listed more than once")
        return uniq.reshape(-1, 2)

    @classmethod
    def chain(cls, names, warn=True, **kwargs):
        """Beads bonded in index order, 0-1-2-...; with ``warn``, a warning names the assumption."""
        n = len(names)
        if warn and n > 2:
            warnings.warn(f"no CG bonds given: assuming a chain in bead order (0-1-...-{n - 1}); give the bonds "
                          "(a map with bonded atom groups, bonds = [[i, j], ...] in the map file, or --bonds) "
                          "if the molecule is branched or listed out of order", stacklevel=3)
        return cls(names, [(i, i + 1) for i in range(n - 1)], **kwargs)

    @classmethod
    def from_mdtraj(cls, topology, bonds=None, names=None):
        """From an mdtraj Topology (one atom per bead, in column order); ``bonds`` overrides its bonds and
        ``names`` its atom names."""
        atoms = sorted(topology.atoms, key=lambda a: a.index)
        if bonds is None:
            bonds = [(a.index, b.index) for a, b in topology.bonds]
        return cls([a.name for a in atoms] if names is None else names, bonds, [a.residue.resSeq for a in atoms],
                   [a.residue.name for a in atoms],
                   [a.element.symbol if a.element is not None and a.element.symbol else _element_symbol(a.name)
                    for a in atoms])

    # ------------------------------------------------------------------------------------------ derived terms
    @property
    def n_beads(self):
        return len(self.names)

    def _angles(self):
        out = [(i, j, k) for j in range(self.n_beads) for a, i in enumerate(self.neighbours[j])
               for k in self.neighbours[j][a + 1:]]
        return np.array(out, dtype=np.int64).reshape(-1, 3)

    def _dihedrals(self):
        out = []
        for j, k in self.bonds:
            for i in self.neighbours[j]:
                for m in self.neighbours[k]:
                    if i != k and m != j and i != m:
                        out.append((i, j, k, m))
        return np.array(out, dtype=np.int64).reshape(-1, 4)

    def _impropers(self):
        """At each bead with three or more bonds: (a, centre, b, c) for its neighbours a < b and each further c."""
        out = []
        for centre, nb in enumerate(self.neighbours):
            if len(nb) >= 3:
                out += [(nb[0], centre, nb[1], c) for c in nb[2:]]
        return np.array(out, dtype=np.int64).reshape(-1, 4)

    @property
    def chirality_quads(self):
        """Proper dihedrals then impropers, (n, 4): the signed features that tell a configuration from its mirror."""
        return np.concatenate([self.dihedrals, self.impropers]).reshape(-1, 4)

    def pairs_apart(self, min_bonds=3):
        """Bead pairs (i < j), (n, 2), at least ``min_bonds`` bonds apart in the graph (non-bonded exclusions)."""
        i, j = np.triu_indices(self.n_beads, 1)
        keep = self.graph_distance[i, j] >= min_bonds
        return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)

    def side(self, j, k):
        """Beads on j's side of the bond j-k (j included): what turns when the dihedral about j-k turns.

        In a ring both sides are joined, and the whole ring but k comes back."""
        seen, stack = {j}, [j]
        while stack:
            for b in self.neighbours[stack.pop()]:
                if b != k and b not in seen:
                    seen.add(b)
                    stack.append(b)
        return np.array(sorted(seen), dtype=np.int64)

    def backbone(self):
        """Backbone dihedrals of every residue with both: a list of (label, phi quad, psi quad), in residue order.

        phi = C(i-1)-N-CA-C and psi = N-CA-C-N(i+1), found along bonds from beads named C, N and CA (the
        IUPAC definition; case-insensitive). ``label`` is the CA bead's residue name and number, e.g. "ALA2".
        """
        upper = [n.upper() for n in self.names]
        found = []
        for ca in range(self.n_beads):
            if upper[ca] != "CA":
                continue
            ns = [b for b in self.neighbours[ca] if upper[b] == "N"]
            cs = [b for b in self.neighbours[ca] if upper[b] == "C"]
            if len(ns) != 1 or len(cs) != 1:
                continue
            n, c = ns[0], cs[0]
            prev = [b for b in self.neighbours[n] if upper[b] == "C" and b != c]
            nxt = [b for b in self.neighbours[c] if upper[b] == "N" and b != n]
            if len(prev) == 1 and len(nxt) == 1:
                label = f"{self.residue_names[ca]}{self.residue_ids[ca]}"
                found.append((int(self.residue_ids[ca]), ca, label, (prev[0], n, ca, c), (n, ca, c, nxt[0])))
        return [(label, np.array(phi), np.array(psi)) for _, _, label, phi, psi in sorted(found)]

    @property
    def n_amino_acids(self):
        """The number of amino-acid residues the beads belong to, by residue name (caps such as ACE and NME do
        not count), whatever the map keeps of them: a C-alpha trace of a tripeptide has 3, as its backbone map
        does. What the prior's dihedral profiles key on (:func:`cgdml.prior.uses_dihedral_profiles`)."""
        return len({rid for rid, name in zip(self.residue_ids, self.residue_names) if is_amino_acid(name)})

    def backbone_quads(self):
        """All backbone dihedrals (2 n_residues, 4): phi_1, psi_1, phi_2, psi_2, ..."""
        return np.array([q for _, phi, psi in self.backbone() for q in (phi, psi)], dtype=np.int64).reshape(-1, 4)

    def soft_dihedrals(self):
        """The dihedrals a landscape is measured on: the backbone (phi, psi) of every residue when there is a
        backbone, else every proper dihedral of the graph."""
        bb = self.backbone_quads()
        return bb if len(bb) else self.dihedrals

    # ------------------------------------------------------------------------------------------ conversion
    def to_mdtraj(self):
        """An mdtraj Topology with atoms in bead order and exactly these bonds (residues split into contiguous
        segments where the bead order leaves and re-enters them)."""
        import mdtraj as md

        top = md.Topology()
        chain = top.add_chain()
        atoms, current = [], None
        for i, name in enumerate(self.names):
            key = (self.residue_ids[i], self.residue_names[i])
            if current is None or key != current[0]:
                current = (key, top.add_residue(self.residue_names[i], chain, resSeq=int(self.residue_ids[i])))
            try:
                element = md.element.Element.getBySymbol(self.elements[i])
            except KeyError:
                element = md.element.virtual
            atoms.append(top.add_atom(name, element, current[1]))
        for i, j in self.bonds:
            top.add_bond(atoms[i], atoms[j])
        return top

    def to_pdb(self, coords=None):
        """PDB text of the beads (coords (n_beads, 3) nm, default zeros) with a CONECT record for every bond, so
        that VMD, PyMOL and mdtraj see the CG bonds."""
        import mdtraj as md

        xyz = np.zeros((1, self.n_beads, 3), dtype=np.float32) if coords is None else \
            np.asarray(coords, dtype=np.float32).reshape(1, self.n_beads, 3)
        with TempFile(".pdb") as tmp:
            md.Trajectory(xyz, self.to_mdtraj()).save_pdb(tmp)
            lines = [ln for ln in Path(tmp).read_text().splitlines() if not ln.startswith(("CONECT", "END"))]
        for i in range(self.n_beads):
            if self.neighbours[i]:
                lines.append("CONECT" + f"{i + 1:5d}" + "".join(f"{j + 1:5d}" for j in self.neighbours[i]))
        return "\n".join(lines + ["END", ""])

    def describe(self):
        """One line: beads, bonds and the derived terms."""
        bb = self.backbone()
        return (f"{self.n_beads} beads, {len(self.bonds)} bonds, {len(self.angles)} angles, {len(self.dihedrals)} "
                f"dihedrals, {len(self.impropers)} impropers; backbone: "
                f"{', '.join(label for label, _, _ in bb) if bb else 'none'}")
