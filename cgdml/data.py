"""Data: the coarse-grained dataset container (and, below it, all-atom loading).

A :class:`CGDataset` holds mapped coordinates and forces, shapes (n_frames, n_beads, 3), in nm and
kJ/mol/nm, with the bead names, the temperature (K) and the CG topology (an mdtraj Topology, one atom
per bead, stored as PDB text so that the ``.npz`` file needs no pickle).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import CgdmlError, TempFile, load_npz, numpy_file_kind, one_line, save_npz
from .topology import CGTopology
from .units import check_temperature, force_factor, length_factor

DATASET_FORMAT_VERSION = 1


def check_finite(array, name, source="", first_frame=0):
    """Raise a one-line error naming the frames where ``array`` (n_frames, ...) holds NaN or inf.

    ``first_frame`` is added to the reported frame numbers (for chunks of a longer trajectory).
    """
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        frames = np.flatnonzero(bad) + first_frame
        shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
        where = f"{source}: " if source else ""
        raise CgdmlError(f"{where}{name} contain NaN or inf in {len(frames)} frame(s): {shown}")


def as_coordinates(R, n_beads, owner="model"):
    """R as float64 (n, n_beads, 3); a single (n_beads, 3) configuration gains a leading axis.

    Raises a one-line error naming ``owner`` when the shape does not fit ``n_beads`` beads.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (n_beads, 3):
        raise CgdmlError(f"{owner} has {n_beads} beads; coordinates must be shaped (n, {n_beads}, 3), got {R.shape}")
    return R


def check_coords_forces(R, F=None, E=None):
    """Coordinates R (n >= 1, n_beads >= 2, 3) nm, and optionally forces F (same shape) and energies E (n,), as
    float64 arrays; NaN, inf or mismatched shapes raise a one-line :class:`CgdmlError`."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[2] != 3 or R.shape[1] < 2 or R.shape[0] < 1:
        raise CgdmlError(f"coordinates must be shaped (n_frames, n_beads>=2, 3), got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise CgdmlError("coordinates contain NaN or infinite values")
    if F is not None:
        F = np.asarray(F, dtype=np.float64)
        if F.shape != R.shape:
            raise CgdmlError(f"forces shaped {F.shape} do not match coordinates shaped {R.shape}")
        if not np.all(np.isfinite(F)):
            raise CgdmlError("forces contain NaN or infinite values")
    if E is not None:
        E = np.asarray(E, dtype=np.float64).reshape(-1)
        if E.shape[0] != R.shape[0]:
            raise CgdmlError(f"{E.shape[0]} energies given for {R.shape[0]} frames")
    return R, F, E


def chain_topology(bead_names, residue_names=None, residue_of_bead=None):
    """An mdtraj Topology of beads bonded in index order, for data that come without bonds.

    ``residue_names`` (one per residue) and ``residue_of_bead`` (the 0-based residue of each bead) keep peptide
    residues; by default all beads are in one residue "CG".
    """
    if residue_of_bead is None:
        return CGTopology.chain(bead_names, warn=False).to_mdtraj()
    return CGTopology.chain(bead_names, warn=False, residue_ids=np.asarray(residue_of_bead) + 1,
                            residue_names=[residue_names[r] for r in residue_of_bead]).to_mdtraj()


def topology_to_pdb(topology) -> str:
    """PDB text for an mdtraj ``topology`` (atoms in index order, a CONECT record for every bond, coordinates
    zero), used to store a CG topology inside an ``.npz``."""
    return CGTopology.from_mdtraj(topology).to_pdb()


def topology_from_pdb(text: str):
    """The mdtraj Topology of PDB text written by :func:`topology_to_pdb` (or :meth:`CGTopology.to_pdb`)."""
    import mdtraj as md

    with TempFile(".pdb") as tmp:
        Path(tmp).write_text(text)
        return md.load_pdb(tmp, standard_names=False).topology


@dataclass
class CGDataset:
    """Mapped CG data. coords, forces: (n_frames, n_beads, 3) in nm and kJ/mol/nm; temperature in K.

    ``masses`` (n_beads,) in amu; by default the element mass of each bead's atom in the topology.
    ``info`` is free-form provenance (source files, map, units), stored as JSON. ``topology_pdb`` holds the
    bead names, elements and residues (PDB text, atoms in column order) and ``bonds`` (n_bonds, 2) the CG bonds;
    without bonds they come from the PDB's bonds, and without either the beads form a chain in index order
    (with a warning). :attr:`cg_topology` is the bead graph every shaped term is derived from.
    """

    coords: np.ndarray
    forces: np.ndarray
    bead_names: list
    temperature: float
    topology_pdb: str = ""
    info: dict = field(default_factory=dict)
    masses: np.ndarray | None = None
    bonds: np.ndarray | None = None

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
            topo = CGTopology.chain(self.bead_names) if self.bonds is None else CGTopology(self.bead_names, self.bonds)
            self.topology_pdb = topo.to_pdb()
        else:
            top = topology_from_pdb(self.topology_pdb)
            if top.n_atoms != self.n_beads:
                raise CgdmlError(f"the CG topology has {top.n_atoms} beads, the coordinates {self.n_beads}")
            topo = CGTopology.from_mdtraj(top, self.bonds)
        self._cg_topology = topo
        self.bonds = topo.bonds
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
    def cg_topology(self):
        """The bead graph (:class:`cgdml.topology.CGTopology`): bonds, angles, dihedrals, backbone."""
        return self._cg_topology

    @property
    def topology(self):
        """The CG topology as an mdtraj Topology (one atom per bead, in column order, with the CG bonds)."""
        return self._cg_topology.to_mdtraj()

    def to_mdtraj(self):
        """The CG coordinates as an mdtraj Trajectory (nm)."""
        import mdtraj as md

        return md.Trajectory(self.coords.astype(np.float32), self.topology)

    def subset(self, index):
        """A new dataset holding the frames ``index`` (an index array, slice or boolean mask)."""
        return CGDataset(self.coords[index], self.forces[index], self.bead_names, self.temperature,
                         self.topology_pdb, dict(self.info), self.masses, self.bonds)

    @classmethod
    def from_arrays(cls, coords, forces, *, length_unit="nm", energy_unit="kJ/mol", temperature=300.0,
                    bead_names=None, topology=None, bonds=None, info=None, masses=None):
        """Build a dataset from pre-mapped arrays in named units (converted to nm and kJ/mol/nm).

        ``topology`` (mdtraj, one atom per bead in column order) gives names, residues and bonds; ``bonds``
        (n_bonds, 2) gives or overrides the bonds; with neither, the beads form a chain in index order (a
        warning says so). A median bonded distance outside 0.05-1 nm after conversion is refused: the length
        unit is then almost certainly wrong.
        """
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
            if topology.n_atoms != coords.shape[1]:
                raise CgdmlError(f"the topology has {topology.n_atoms} beads, the coordinates {coords.shape[1]}")
            topo = CGTopology.from_mdtraj(topology, bonds)
        else:
            names = bead_names or [f"B{i}" for i in range(coords.shape[1])]
            if len(names) != coords.shape[1]:
                raise CgdmlError(f"{len(names)} bead names for {coords.shape[1]} beads")
            topo = CGTopology.chain(names) if bonds is None else CGTopology(names, bonds)
        check_bonded_distances(coords, topo.bonds, f"after conversion from {length_unit!r}")
        info = dict(info or {})
        info.setdefault("source_units", {"length": length_unit, "energy": energy_unit})
        return cls(coords, forces, topo.names, temperature, topo.to_pdb(), info, masses, topo.bonds)

    def save(self, path):
        """Write the dataset atomically as ``.npz`` (nm, kJ/mol/nm)."""
        import json

        save_npz(path, coords=self.coords.astype(np.float32), forces=self.forces.astype(np.float32),
                 bead_names=np.array(self.bead_names), temperature=np.float64(self.temperature),
                 topology_pdb=np.array(self.topology_pdb), bonds=self.bonds, masses=self.masses,
                 info_json=np.array(json.dumps(self.info)), format_version=np.int64(DATASET_FORMAT_VERSION))

    @classmethod
    def load(cls, path):
        """Read a dataset written by :meth:`save`; any defect is a one-line :class:`CgdmlError` naming the file
        and the field."""
        import json

        z = load_npz(path, "CG dataset")
        missing = [k for k in ("coords", "forces", "bead_names", "temperature") if k not in z]
        if missing:
            raise CgdmlError(f"{path}: not a cgdml CG dataset (missing {', '.join(missing)})")

        def field_value(name, convert, default=None):
            if name not in z:
                return default
            try:
                return convert(z[name])
            except Exception as exc:  # TypeError, ValueError, OverflowError (inf as an integer), JSON errors ...
                raise CgdmlError(f"{path}: damaged field {name!r} ({type(exc).__name__}: {one_line(exc, 120)})") \
                    from None

        version = field_value("format_version", lambda v: int(v.item()), 1)
        if version > DATASET_FORMAT_VERSION:
            raise CgdmlError(f"{path}: dataset format version {version} is newer than this cgdml "
                             f"({DATASET_FORMAT_VERSION}); upgrade cgdml")
        if version < 1:
            raise CgdmlError(f"{path}: damaged field 'format_version' ({version})")
        temperature = field_value("temperature", lambda v: float(v.item()))
        info = field_value("info_json", lambda v: json.loads(str(v.item())), {})
        if not isinstance(info, dict):
            raise CgdmlError(f"{path}: damaged field 'info_json' (not a JSON object)")
        pdb = field_value("topology_pdb", lambda v: str(v.item()), "")
        bonds = field_value("bonds", as_index_pairs)
        masses = field_value("masses", lambda v: np.asarray(v, dtype=np.float64))
        names = field_value("bead_names", lambda v: [str(b) for b in np.atleast_1d(v)])
        for name in ("coords", "forces"):
            if z[name].dtype.kind not in "fiu":
                raise CgdmlError(f"{path}: damaged field {name!r} ({z[name].dtype} values, not numbers)")
        try:
            return cls(z["coords"], z["forces"], names, temperature, pdb, info, masses, bonds)
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
        except Exception as exc:  # an unreadable topology_pdb reaches mdtraj's parser
            raise CgdmlError(f"{path}: damaged dataset ({type(exc).__name__}: {one_line(exc, 160)})") from None


def as_index_pairs(array):
    """An (n, 2) int64 array of bead index pairs; ValueError for non-integer data."""
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{array.dtype} values, not bead indices")
    return np.asarray(array, dtype=np.int64).reshape(-1, 2)


def check_bonded_distances(coords, bonds, context="", first_frame=0, block=200, reference=None):
    """Refuse coordinates (n, n_atoms, 3) nm whose bonds do not look like bonds, with a one-line error.

    The median bonded distance must lie in 0.05-1 nm (else the length unit is wrong), and in every frame each
    bond must stay within max(10 robust standard deviations, 0.05 nm) of its median length (else the atom or
    bead order does not match the topology, or molecules are broken across a periodic boundary). The error
    names the first bad frame (counted from ``first_frame``); frames are checked ``block`` at a time. The
    medians and tolerances come from ``coords`` or from ``reference`` (what an earlier call returned, so that
    later chunks of a trajectory are judged against its start); returns them.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if not len(bonds) or not len(coords):
        return reference
    where = f" {context}" if context else ""
    if reference is None:
        sample = coords[:: max(1, len(coords) // 200)]
        d = np.linalg.norm(sample[:, bonds[:, 1]] - sample[:, bonds[:, 0]], axis=-1)
        median = np.median(d, axis=0)
        overall = float(np.median(median))
        if not 0.05 <= overall <= 1.0:
            raise CgdmlError(f"the median bonded distance is {overall:.3g} nm{where}; bonds are 0.05-1 nm, so "
                             "the length unit is probably wrong")
        reference = (median, np.maximum(10.0 * 1.4826 * np.median(np.abs(d - median), axis=0), 0.05))
    median, tolerance = reference
    for b0 in range(0, len(coords), block):
        x = coords[b0:b0 + block]
        d = np.linalg.norm(x[:, bonds[:, 1]] - x[:, bonds[:, 0]], axis=-1)
        bad = np.abs(d - median) > tolerance
        if bad.any():
            frame, bond = np.argwhere(bad)[0]
            i, j = bonds[bond]
            raise CgdmlError(f"frame {first_frame + b0 + frame}: bond {i}-{j} is {d[frame, bond]:.3g} nm, against "
                             f"a median of {median[bond]:.3g} nm{where}; the atom order does not match the "
                             "topology, or molecules are broken across the periodic boundary")
    return reference


# ----------------------------------------------------------------------------------------------------
# All-atom loading: trajectories and forces, chunk by chunk, in nm and kJ/mol/nm.

RAW_SUFFIXES = (".npy", ".npz")
_POSITION_KEYS = ("positions", "coords", "coordinates", "xyz")
_FORCE_KEYS = ("forces",)


def _as_paths(x):
    return [Path(p) for p in ([x] if isinstance(x, (str, Path)) else list(x))]


def load_topology(top):
    """An mdtraj Topology from a file mdtraj reads (pdb, psf, prmtop, gro, h5, ...) or a Topology."""
    import mdtraj as md

    if isinstance(top, md.Topology):
        return top
    path = Path(top)
    if not path.exists():
        raise CgdmlError(f"{path}: no such topology file")
    try:
        return md.load_topology(str(path))
    except Exception as exc:
        raise CgdmlError(f"{path}: not a readable topology ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0][:200]


class _ArrayReader:
    """Sequential reader of (n_frames, n_atoms, 3) arrays from .npy (memory-mapped), .npz or GROMACS .trr."""

    def __init__(self, path, keys, what, factor):
        self.path, self.what, self.factor, self.pos = Path(path), what, factor, 0
        if not self.path.exists():
            raise CgdmlError(f"{self.path}: no such {what} file")
        suffix = self.path.suffix.lower()
        self._trr = None
        if suffix in RAW_SUFFIXES and self.path.is_file() and numpy_file_kind(self.path) != suffix[1:]:
            raise CgdmlError(f"{self.path}: not a readable {what} file (no NumPy {suffix} content)")
        try:
            if suffix == ".npy":
                self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            elif suffix == ".npz":
                with np.load(self.path, allow_pickle=False) as z:
                    key = next((k for k in keys if k in z.files), z.files[0] if len(z.files) == 1 else None)
                    if key is None:
                        raise CgdmlError(f"{self.path}: no {what} array (expected one of {', '.join(keys)}; "
                                         f"found {', '.join(z.files) or 'nothing'})")
                    self.array = z[key]
            elif suffix == ".trr" and what == "forces":
                from mdtraj.formats import TRRTrajectoryFile

                self._trr = TRRTrajectoryFile(str(self.path))
                self.n_frames = len(self._trr)
                first = self._trr._read(1, None, get_forces=True)
                self._trr.seek(0)
                if first[6] is None:
                    raise CgdmlError(f"{self.path}: the TRR file holds no forces")
                self.n_atoms = first[0].shape[1]
                self.factor = 1.0  # GROMACS units: kJ/mol/nm
                return
            else:
                raise CgdmlError(f"{self.path}: unsupported {what} format {suffix or '(none)'} "
                                 f"(use .npy, .npz{' or .trr' if what == 'forces' else ''}"
                                 f"{'; or, through MDAnalysis, .nc, .h5md, LAMMPS .lammpsdump' if what == 'forces' else ''})")
        except CgdmlError:
            raise
        except Exception as exc:
            raise CgdmlError(f"{self.path}: not a readable {what} file ({type(exc).__name__}: {_first_line(exc)})") from None
        if self.array.ndim != 3 or self.array.shape[2] != 3:
            raise CgdmlError(f"{self.path}: {what} must have shape (n_frames, n_atoms, 3), got {self.array.shape}")
        self.n_frames, self.n_atoms = self.array.shape[:2]

    def read(self, n, stride=1, atom_indices=None):
        """The next ``n`` frames taking every ``stride``-th (float32, converted); fewer at the end."""
        try:
            if self._trr is not None:
                out = self._trr._read(n, None, get_forces=True, stride=stride)[6]
            else:
                out = np.asarray(self.array[self.pos:self.pos + n * stride:stride])
                self.pos += n * stride
        except Exception as exc:
            raise CgdmlError(f"{self.path}: cannot read {self.what} ({type(exc).__name__}: {_first_line(exc)})") from None
        if atom_indices is not None and out.shape[1] != len(atom_indices):
            out = out[:, atom_indices]
        return (out * self.factor).astype(np.float32, copy=False)

    def close(self):
        if self._trr is not None:
            self._trr.close()


def _trajectory_frames(path, units=None):
    """Frame count of an mdtraj-readable trajectory (or one of MDAnalysis's, :mod:`cgdml.formats`) without
    reading coordinates, or None."""
    import mdtraj as md

    from .formats import MDA_ONLY_TRAJECTORIES, MDAReader

    if Path(path).suffix.lower() in MDA_ONLY_TRAJECTORIES:
        reader = MDAReader(path, need_forces=False, **(units or {}))
        reader.close()
        return reader.n_frames

    try:
        with md.open(str(path)) as f:
            return len(f)
    except Exception:
        return None


def count_frames(trajs, stride=1):
    """Frames the trajectories give at ``stride`` (for a progress bar), or None when a format cannot tell."""
    def npz_frames(path):  # from the array header, without reading the data
        import zipfile

        with zipfile.ZipFile(path) as zf:
            names = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            key = next((k for k in _POSITION_KEYS if k in names), next(iter(names)) if len(names) == 1 else None)
            with zf.open(names[key]) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape = read(fh)[0]
        return shape[0]

    total = 0
    for path in _as_paths(trajs):
        try:
            suffix = path.suffix.lower()
            n = npz_frames(path) if suffix == ".npz" else \
                _ArrayReader(path, _POSITION_KEYS, "positions", 1.0).n_frames if suffix in RAW_SUFFIXES else \
                _trajectory_frames(path)
        except Exception:
            n = None
        if n is None:
            return None
        total += -(-n // int(stride))
    return total


def _position_chunks(path, topology, stride, chunk, atom_indices, length_unit):
    """Yield position chunks (nm, float32) of one trajectory file."""
    import mdtraj as md

    if path.suffix.lower() in RAW_SUFFIXES:
        from .formats import reader_chunks

        reader = _ArrayReader(path, _POSITION_KEYS, "positions", length_factor(length_unit))
        yield from reader_chunks(reader, path, topology, chunk, stride, atom_indices)
        return
    if not path.exists():
        raise CgdmlError(f"{path}: no such trajectory file")
    try:
        for t in md.iterload(str(path), top=topology, chunk=chunk, stride=stride, atom_indices=atom_indices):
            yield t.xyz
    except CgdmlError:
        raise
    except Exception as exc:
        raise CgdmlError(f"{path}: cannot read as a trajectory of the {topology.n_atoms}-atom topology "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None


def _forces_reader(path, f_factor, units):
    """The forces reader of ``path``: MDAnalysis for the formats of :mod:`cgdml.formats`, else NumPy/TRR."""
    from .formats import MDAReader, is_mda_file

    if is_mda_file(path):
        return MDAReader(path, **units)
    return _ArrayReader(path, _FORCE_KEYS, "forces", f_factor)


def _same_mda_file(tpath, reader):
    """Whether the trajectory ``tpath`` is the file that the MDAnalysis forces ``reader`` reads."""
    from .formats import MDAReader

    return isinstance(reader, MDAReader) and tpath.exists() and tpath.resolve() == reader.path.resolve()


def _chunk_pairs(tpath, reader, topology, stride, chunk, atom_indices, units):
    """Yield (positions, forces) chunks of one trajectory and its forces reader; positions come from the forces
    file itself when it is the trajectory (MDAnalysis formats), else chunk by chunk from the trajectory."""
    from .formats import MDA_ONLY_TRAJECTORIES, position_chunks, reader_chunks

    if _same_mda_file(tpath, reader):
        for f in reader_chunks(reader, tpath, topology, chunk, stride, atom_indices):
            yield reader.last_positions, f
        return
    if tpath.suffix.lower() in MDA_ONLY_TRAJECTORIES:
        chunks = position_chunks(tpath, topology, stride, chunk, atom_indices, **units)
    else:
        chunks = _position_chunks(tpath, topology, stride, chunk, atom_indices, units["length_unit"])
    for xyz in chunks:
        yield xyz, reader.read(len(xyz), stride, atom_indices)


def load_allatom(top, trajs, forces, *, length_unit="nm", energy_unit="kJ/mol", stride=1, chunk=1000,
                 atom_indices=None, lammps_units="real"):
    """Yield (positions, forces) chunks, float32 (n, n_atoms, 3) in nm and kJ/mol/nm.

    ``top``: topology file (pdb, psf, prmtop, gro, ...) or mdtraj Topology. ``trajs``: one or more
    trajectories, any format ``mdtraj.iterload`` reads (dcd, xtc, trr, h5, nc, ...; their own length
    units), or raw ``.npy``/``.npz`` positions in ``length_unit``. ``forces``: one file per trajectory,
    ``.npy`` (memory-mapped) or ``.npz`` in ``energy_unit``/``length_unit``, or GROMACS ``.trr`` with
    forces (kJ/mol/nm). Frames are strided by ``stride``; ``atom_indices`` selects atoms (forces files
    may hold all atoms or just those). Mismatched frame or atom counts, unreadable files and NaN/inf
    frames raise a one-line :class:`CgdmlError` naming the file.

    Forces from other engines, through MDAnalysis (:mod:`cgdml.formats`, ``pip install 'cgdml[mdanalysis]'``):
    a forces file in AMBER NetCDF (``.nc``, ``.ncdf``), H5MD (``.h5md``) or LAMMPS dump (``.lammpsdump``,
    ``.lammpstrj``, ``.dump``; unit style ``lammps_units``, real or metal) format gives the forces in its own
    units; when the trajectory names the same file, the positions are read with them, in the same pass.
    """
    topology = load_topology(top)
    traj_paths, force_paths = _as_paths(trajs), _as_paths(forces)
    if not traj_paths:
        raise CgdmlError("no trajectory files given")
    if len(traj_paths) != len(force_paths):
        raise CgdmlError(f"{len(traj_paths)} trajectory file(s) but {len(force_paths)} forces file(s); "
                         "give one forces file per trajectory")
    stride, chunk = int(stride), int(chunk)
    if stride < 1 or chunk < 1:
        raise CgdmlError(f"stride and chunk must be >= 1, got {stride} and {chunk}")
    f_factor = force_factor(length_unit, energy_unit)
    length_factor(length_unit)
    n_all = topology.n_atoms
    if atom_indices is not None:
        atom_indices = np.asarray(atom_indices, dtype=int)
        if atom_indices.ndim != 1 or not len(atom_indices) or atom_indices.min() < 0 or atom_indices.max() >= n_all:
            raise CgdmlError(f"atom_indices must be indices into the {n_all} topology atoms")
        sub_topology = topology.subset(atom_indices)
    else:
        sub_topology = topology
    bonds = np.array([(a.index, b.index) for a, b in sub_topology.bonds], dtype=np.int64).reshape(-1, 2)
    # Open every forces file first, so that a bad file fails before any work.
    units = dict(length_unit=length_unit, energy_unit=energy_unit, lammps_units=lammps_units)
    readers = [_forces_reader(p, f_factor, units) for p in force_paths]
    try:
        for tpath, reader in zip(traj_paths, readers):
            want = (n_all,) if atom_indices is None else (n_all, len(atom_indices))
            if reader.n_atoms not in want:
                raise CgdmlError(f"{reader.path}: forces for {reader.n_atoms} atoms but the topology has {n_all}")
            if _same_mda_file(tpath, reader):
                continue  # positions and forces from one file: the same frames
            n_traj = (len(_ArrayReader(tpath, _POSITION_KEYS, "positions", 1.0).array)
                      if tpath.suffix.lower() in RAW_SUFFIXES else _trajectory_frames(tpath, units))
            if n_traj is not None and n_traj != reader.n_frames:
                raise CgdmlError(f"{reader.path}: {reader.n_frames} force frames but {tpath} has {n_traj} frames")
        for tpath, reader in zip(traj_paths, readers):
            frame, reference = 0, None
            unit = f"length unit {length_unit!r}" if tpath.suffix.lower() in RAW_SUFFIXES else "its format's length unit"
            for xyz, f in _chunk_pairs(tpath, reader, topology, stride, chunk, atom_indices, units):
                if xyz.shape[1] != sub_topology.n_atoms:
                    raise CgdmlError(f"{tpath}: {xyz.shape[1]} atoms but the topology has {sub_topology.n_atoms}")
                if len(f) != len(xyz):
                    raise CgdmlError(f"{reader.path}: forces end at frame {frame * stride + len(f) * stride} "
                                     f"but {tpath} goes on")
                check_finite(xyz, "positions", str(tpath), first_frame=frame)
                check_finite(f, "forces", str(reader.path), first_frame=frame)
                reference = check_bonded_distances(xyz, bonds, f"in {tpath} (read in {unit})", frame,
                                                   reference=reference)
                frame += len(xyz)
                yield xyz, f
            if len(reader.read(1, stride, atom_indices)):
                raise CgdmlError(f"{reader.path}: more force frames than the {frame * stride}-frame trajectory {tpath}")
    finally:
        for reader in readers:
            reader.close()


def shipped_data_dir():
    """The directory of the shipped all-atom reference (``data/`` in the repository, ``cgdml/_data`` in an
    installed package), found through :mod:`importlib.resources` so that a wheel install finds it too."""
    from importlib.resources import files

    return Path(str(files("cgdml") / "_data"))


def default_dataset_paths():
    """(topology, trajectory, forces) paths of the shipped all-atom reference (alanine dipeptide, OBC2, 300 K).

    The trajectory and forces live in one ``.npz`` (``positions`` in nm, ``forces`` in kJ/mol/nm).
    """
    from collections import namedtuple

    data = shipped_data_dir()
    top, npz = data / "ala2_implicit_300K.pdb", data / "ala2_implicit_300K.npz"
    for p in (top, npz):
        if not p.exists():
            raise CgdmlError(f"{p}: shipped reference data not found (the cgdml installation is incomplete; "
                             "reinstall it, or pass a dataset)")
    return namedtuple("DatasetPaths", "topology trajectory forces")(top, npz, npz)


def shipped_temperature(path):
    """Temperature (K) stored in a reference ``.npz`` from :mod:`cgdml.reference`, else 300."""
    with np.load(path, allow_pickle=False) as z:
        return float(z["temperature"]) if "temperature" in z.files else 300.0
