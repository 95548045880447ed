"""The CG system: what a CG dataset and a CG model share, in one object.

A :class:`CGSystem` holds the bead graph (a :class:`cgdml.topology.CGTopology`: bead names, elements, residues,
bonds), the bead masses (n_beads,) in amu and the temperature in K. A :class:`cgdml.data.CGDataset` and a
:class:`cgdml.model.CGModel` each hold one, and the stages (map, fit, simulate, fes, export) pass it on.

In ``.npz`` files a system is five entries (:meth:`CGSystem.to_arrays`, :meth:`CGSystem.from_arrays`):
``bead_names``, ``topology_pdb`` (PDB text: elements and residues, one atom per bead, CONECT bonds), ``bonds``
(n_bonds, 2), ``masses`` and ``temperature``. This module is the one place that reads CG PDB text, from those
files (:func:`parse_pdb`) and from the PDB sidecars that ``python -m cgdml.map`` and ``python -m cgdml.simulate``
write (:func:`read_pdb_topology`, :meth:`CGSystem.from_pdb_file`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import CgdmlError, Fields, TempFile, as_array, as_float, as_str, one_line
from .topology import CGTopology
from .units import check_temperature, kT


def as_index_pairs(array):
    """An (n, 2) int64 array of bead index pairs; ValueError for non-integer data."""
    array = np.asarray(array)
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{array.dtype} values, not bead indices")
    return np.asarray(array, dtype=np.int64).reshape(-1, 2)


def _bead_names(value):
    a = np.asarray(value)
    if a.dtype.kind not in "US" or a.ndim != 1 or not len(a):
        raise CgdmlError(f"{a.dtype} {a.shape} values, not bead names")
    return [str(b) for b in a.astype(str)]


def _load_pdb(path):
    import mdtraj as md

    return md.load_pdb(str(path), standard_names=False).topology


def _mdtraj_topology(text):
    """The mdtraj Topology of PDB text; None for empty text."""
    if not text.strip():
        return None
    with TempFile(".pdb") as tmp:
        Path(tmp).write_text(text)
        return _load_pdb(tmp)


def parse_pdb(text, bonds=None):
    """The :class:`CGTopology` of CG PDB text (one atom per bead, in bead order; bonds from its CONECT records
    unless ``bonds`` (n_bonds, 2) is given), as :meth:`CGTopology.to_pdb` writes it."""
    top = _mdtraj_topology(text)
    if top is None:
        raise CgdmlError("empty PDB text: no CG topology")
    return CGTopology.from_mdtraj(top, bonds)


def read_pdb_topology(path, bonds=None):
    """The :class:`CGTopology` of a CG PDB file: the sidecar ``.pdb`` of a dataset or trajectory written by cgdml
    (one atom per bead, in bead order, CONECT bonds), or any PDB of that shape. Errors are one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise CgdmlError(f"{path}: no such CG topology file")
    try:
        top = _load_pdb(path)
    except Exception as exc:  # mdtraj's parser on a damaged or foreign file
        raise CgdmlError(f"{path}: not a readable PDB file ({type(exc).__name__}: {one_line(exc, 160)})") from None
    try:
        return CGTopology.from_mdtraj(top, bonds)
    except CgdmlError as exc:
        raise CgdmlError(f"{path}: {exc}") from None


def element_masses(topology):
    """Masses (n_beads,) in amu of the elements of the beads of ``topology`` (a :class:`CGTopology`); 0 for an
    element mdtraj does not know."""
    import mdtraj as md

    def mass(symbol):
        try:
            return md.element.Element.getBySymbol(symbol).mass
        except KeyError:
            return 0.0

    return np.array([mass(e) for e in topology.elements], dtype=np.float64)


class CGSystem:
    """A CG system: the bead graph ``topology`` (a :class:`CGTopology`), bead ``masses`` (n_beads,) in amu
    (default: the mass of each bead's element) and the ``temperature`` in K.

    Treat it as read-only: datasets and models share it. Two systems are equal when their bead names, elements,
    residues, bonds, masses and temperatures are.
    """

    def __init__(self, topology, masses=None, temperature=300.0):
        if not isinstance(topology, CGTopology):
            raise CgdmlError(f"a CG system needs a CGTopology, got {type(topology).__name__}")
        self.topology = topology
        self.masses = element_masses(topology) if masses is None else np.array(masses, dtype=np.float64)
        self.temperature = check_temperature(temperature)
        self.check()

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_mdtraj(cls, topology, bonds=None, masses=None, temperature=300.0):
        """From an mdtraj Topology (one atom per bead, in bead order); ``bonds`` overrides its bonds."""
        return cls(CGTopology.from_mdtraj(topology, bonds), masses, temperature)

    @classmethod
    def from_pdb(cls, text, bonds=None, masses=None, temperature=300.0):
        """From CG PDB text (:func:`parse_pdb`)."""
        return cls(parse_pdb(text, bonds), masses, temperature)

    @classmethod
    def from_pdb_file(cls, path, bonds=None, masses=None, temperature=300.0):
        """From a CG PDB file such as the sidecar of a dataset or trajectory (:func:`read_pdb_topology`). A PDB
        file holds no masses nor temperature: the masses default to the elements', the temperature to 300 K."""
        return cls(read_pdb_topology(path, bonds), masses, temperature)

    def check(self):
        """Raise a one-line :class:`CgdmlError` unless the masses are one positive number per bead."""
        n, m = self.n_beads, self.masses
        if m.shape != (n,):
            raise CgdmlError(f"bead masses must be {n} numbers (amu), one per bead, got an array shaped {m.shape}")
        bad = np.flatnonzero(~(np.isfinite(m) & (m > 0)))
        if len(bad):
            i = int(bad[0])
            raise CgdmlError(f"bead masses must be positive numbers (amu); bead {i} ({self.bead_names[i]}) has "
                             f"{float(m[i]):g}")

    # ------------------------------------------------------------------------------------------ properties
    @property
    def n_beads(self) -> int:
        return self.topology.n_beads

    @property
    def bead_names(self) -> list:
        """Bead names (n_beads,), in bead (coordinate-column) order."""
        return list(self.topology.names)

    @property
    def bonds(self) -> np.ndarray:
        """CG bonds (n_bonds, 2), bead index pairs i < j."""
        return self.topology.bonds

    @property
    def kT(self) -> float:
        """Thermal energy in kJ/mol."""
        return kT(self.temperature)

    def __eq__(self, other):
        if not isinstance(other, CGSystem):
            return NotImplemented
        a, b = self.topology, other.topology
        return (a.names == b.names and a.elements == b.elements and a.residue_names == b.residue_names
                and np.array_equal(a.residue_ids, b.residue_ids) and np.array_equal(a.bonds, b.bonds)
                and np.array_equal(self.masses, other.masses) and self.temperature == other.temperature)

    __hash__ = None

    def __repr__(self):
        return f"CGSystem({self.n_beads} beads, {len(self.bonds)} bonds, {self.temperature:g} K)"

    # ------------------------------------------------------------------------------------------ conversion
    def to_mdtraj(self):
        """The CG topology as an mdtraj Topology (one atom per bead, in bead order, with the CG bonds)."""
        return self.topology.to_mdtraj()

    def to_pdb(self, coords=None):
        """PDB text of the beads at ``coords`` (n_beads, 3) nm (default zeros), with CONECT records."""
        return self.topology.to_pdb(coords)

    def to_arrays(self):
        """The entries that store the system in an ``.npz``: bead_names, topology_pdb, bonds, masses, temperature."""
        return {"bead_names": np.array(self.bead_names), "topology_pdb": np.array(self.to_pdb()),
                "bonds": self.bonds, "masses": self.masses, "temperature": np.float64(self.temperature)}

    @classmethod
    def from_arrays(cls, arrays, prefix="", required=()):
        """The system stored by :meth:`to_arrays` (entries named ``prefix + name``), from files of any cgdml
        version: ``bead_names`` and ``temperature``, and the entries named in ``required``, must be there;
        without ``topology_pdb`` the beads and residues come from the names; without ``bonds`` the bonds come
        from the PDB text's CONECT records, and without either the beads form a chain in bead order (with a
        warning); without ``masses`` the masses are the elements'. The names are those of ``bead_names`` (PDB
        text cuts them to four characters). A missing or damaged entry is a one-line :class:`CgdmlError`
        naming it; the caller adds the file name.
        """
        f = Fields(arrays, prefix)
        for name in ("bead_names", "temperature", *required):
            f.get(name)  # "missing field ..."
        names = f.get("bead_names", _bead_names)
        temperature = f.get("temperature", lambda v: as_float(v, positive=True))
        bonds = f.get("bonds", as_index_pairs, None)
        pdb = f.get("topology_pdb", lambda v: _mdtraj_topology(as_str(v)), None)
        if pdb is not None and pdb.n_atoms != len(names):
            raise CgdmlError(f"damaged field {prefix + 'bead_names'!r} or {prefix + 'topology_pdb'!r} ({len(names)} "
                             f"bead names, CG topology of {pdb.n_atoms} beads)")
        masses = f.get("masses", lambda v: as_array(v, shape=(len(names),)), None)
        try:
            if pdb is not None:
                topology = CGTopology.from_mdtraj(pdb, bonds, names)
            else:
                topology = CGTopology.chain(names) if bonds is None else CGTopology(names, bonds)
        except CgdmlError as exc:
            fields = " or ".join(repr(prefix + k) for k in ("topology_pdb", "bonds") if k in f)
            raise CgdmlError(f"damaged field {fields} ({exc})") from None
        try:
            return cls(topology, masses, temperature)
        except CgdmlError as exc:
            raise CgdmlError(f"damaged field {prefix + 'masses'!r} ({exc})") from None

