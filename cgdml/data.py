"""Data: the coarse-grained dataset container (and, below it, all-atom loading).

A :class:`CGDataset` holds mapped coordinates and forces, shapes (n_frames, n_beads, 3), in nm and
kJ/mol/nm, with the bead names, the temperature (K) and the CG topology (an mdtraj Topology, one atom
per bead, stored as PDB text so that the ``.npz`` file needs no pickle).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import CgdmlError, load_npz, save_npz
from .units import check_temperature, force_factor, length_factor

DATASET_FORMAT_VERSION = 1


def check_finite(array, name, source=""):
    """Raise a one-line error naming the frames where ``array`` (n_frames, ...) holds NaN or inf."""
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        frames = np.flatnonzero(bad)
        shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
        where = f"{source}: " if source else ""
        raise CgdmlError(f"{where}{name} contain NaN or inf in {len(frames)} frame(s): {shown}")


def chain_topology(bead_names, residue_names=None, residue_of_bead=None):
    """An mdtraj Topology with one atom per bead and bonds between consecutive beads.

    ``residue_names`` (one per residue) and ``residue_of_bead`` (residue index of each bead) let the
    topology keep peptide residues, so that ``mdtraj.compute_phi`` works on CG trajectories.
    """
    import mdtraj as md

    top = md.Topology()
    chain = top.add_chain()
    n = len(bead_names)
    if residue_of_bead is None:
        residue_of_bead = [0] * n
        residue_names = residue_names or ["CG"]
    residues = [top.add_residue(name, chain) for name in residue_names]
    atoms = []
    for name, res in zip(bead_names, residue_of_bead):
        element = md.element.Element.getBySymbol(name[0]) if name[:1] in ("C", "N", "O", "S") else md.element.carbon
        atoms.append(top.add_atom(name, element, residues[res]))
    for a, b in zip(atoms[:-1], atoms[1:]):
        top.add_bond(a, b)
    return top


def topology_to_pdb(topology) -> str:
    """PDB text for ``topology`` (coordinates zero), used to store a CG topology inside an ``.npz``."""
    import mdtraj as md

    traj = md.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    with _TempFile(".pdb") as tmp:
        traj.save_pdb(tmp)
        text = Path(tmp).read_text()
    return text


def topology_from_pdb(text: str):
    """Inverse of :func:`topology_to_pdb`."""
    import mdtraj as md

    with _TempFile(".pdb") as tmp:
        Path(tmp).write_text(text)
        return md.load_pdb(tmp, standard_names=False).topology


class _TempFile:
    def __init__(self, suffix):
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.path = str(Path(self._dir.name) / ("t" + suffix))

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        self._dir.cleanup()


@dataclass
class CGDataset:
    """Mapped CG data. coords, forces: (n_frames, n_beads, 3) in nm and kJ/mol/nm; temperature in K.

    ``masses`` (n_beads,) in amu; by default the element mass of each bead's atom in the topology.
    ``info`` is free-form provenance (source files, map, units), stored as JSON.
    """

    coords: np.ndarray
    forces: np.ndarray
    bead_names: list
    temperature: float
    topology_pdb: str = ""
    info: dict = field(default_factory=dict)
    masses: np.ndarray | None = None

    def __post_init__(self):
        self.coords = np.ascontiguousarray(self.coords, dtype=np.float64)
        self.forces = np.ascontiguousarray(self.forces, dtype=np.float64)
        self.bead_names = [str(b) for b in self.bead_names]
        self.temperature = check_temperature(self.temperature)
        if self.coords.ndim != 3 or self.coords.shape[2] != 3:
            raise CgdmlError(f"coords must have shape (n_frames, n_beads, 3), got {self.coords.shape}")
        if self.forces.shape != self.coords.shape:
            raise CgdmlError(f"forces shape {self.forces.shape} does not match coords shape {self.coords.shape}")
        if len(self.bead_names) != self.coords.shape[1]:
            raise CgdmlError(f"{len(self.bead_names)} bead names for {self.coords.shape[1]} beads")
        if len(self.coords) == 0:
            raise CgdmlError("the dataset has no frames")
        check_finite(self.coords, "coordinates")
        check_finite(self.forces, "forces")
        if not self.topology_pdb:
            self.topology_pdb = topology_to_pdb(chain_topology(self.bead_names))
        if self.masses is None:
            self.masses = np.array([a.element.mass for a in self.topology.atoms])
        self.masses = np.asarray(self.masses, dtype=np.float64)
        if self.masses.shape != (self.n_beads,) or not (self.masses > 0).all():
            raise CgdmlError(f"bead masses must be {self.n_beads} positive numbers (amu), got {self.masses}")

    @property
    def n_frames(self) -> int:
        return self.coords.shape[0]

    @property
    def n_beads(self) -> int:
        return self.coords.shape[1]

    @property
    def topology(self):
        """The CG topology as an mdtraj Topology (one atom per bead)."""
        return topology_from_pdb(self.topology_pdb)

    def to_mdtraj(self):
        """The CG coordinates as an mdtraj Trajectory (nm)."""
        import mdtraj as md

        return md.Trajectory(self.coords.astype(np.float32), self.topology)

    def subset(self, index):
        """A new dataset holding the frames ``index`` (an index array, slice or boolean mask)."""
        return CGDataset(self.coords[index], self.forces[index], self.bead_names, self.temperature,
                         self.topology_pdb, dict(self.info), self.masses)

    @classmethod
    def from_arrays(cls, coords, forces, *, length_unit="nm", energy_unit="kJ/mol", temperature=300.0,
                    bead_names=None, topology=None, info=None, masses=None):
        """Build a dataset from pre-mapped arrays in named units (converted to nm and kJ/mol/nm)."""
        coords = np.asarray(coords, dtype=np.float64)
        forces = np.asarray(forces, dtype=np.float64)
        if coords.ndim != 3 or coords.shape[-1] != 3:
            raise CgdmlError(f"coordinates must have shape (n_frames, n_beads, 3), got {coords.shape}")
        if forces.shape != coords.shape:
            raise CgdmlError(f"forces shape {forces.shape} does not match coordinates shape {coords.shape}")
        temperature = check_temperature(temperature)
        coords = coords * length_factor(length_unit)
        forces = forces * force_factor(length_unit, energy_unit, temperature)
        if topology is not None:
            bead_names = [a.name for a in topology.atoms]
            pdb = topology_to_pdb(topology)
        else:
            bead_names = bead_names or [f"B{i}" for i in range(coords.shape[1])]
            pdb = ""
        info = dict(info or {})
        info.setdefault("source_units", {"length": length_unit, "energy": energy_unit})
        return cls(coords, forces, bead_names, temperature, pdb, info, masses)

    def save(self, path):
        """Write the dataset atomically as ``.npz`` (nm, kJ/mol/nm)."""
        import json

        save_npz(path, coords=self.coords.astype(np.float32), forces=self.forces.astype(np.float32),
                 bead_names=np.array(self.bead_names), temperature=np.float64(self.temperature),
                 topology_pdb=np.array(self.topology_pdb), masses=self.masses, info_json=np.array(json.dumps(self.info)),
                 format_version=np.int64(DATASET_FORMAT_VERSION))

    @classmethod
    def load(cls, path):
        """Read a dataset written by :meth:`save`; any defect is a one-line :class:`CgdmlError`."""
        import json

        z = load_npz(path, "CG dataset")
        missing = [k for k in ("coords", "forces", "bead_names", "temperature") if k not in z]
        if missing:
            raise CgdmlError(f"{path}: not a cgdml CG dataset (missing {', '.join(missing)})")
        version = int(z.get("format_version", 1))
        if version > DATASET_FORMAT_VERSION:
            raise CgdmlError(f"{path}: dataset format version {version} is newer than this cgdml "
                             f"({DATASET_FORMAT_VERSION}); upgrade cgdml")
        try:
            return cls(z["coords"], z["forces"], list(z["bead_names"]), float(z["temperature"]),
                       str(z["topology_pdb"]) if "topology_pdb" in z else "",
                       json.loads(str(z["info_json"])) if "info_json" in z else {}, z.get("masses"))
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
