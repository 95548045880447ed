"""All-atom trajectories and forces, read chunk by chunk in nm and kJ/mol/nm (the input of :mod:`cgdml.mapping`).

:func:`load_allatom` yields (positions, forces) chunks of trajectories in any format mdtraj reads, raw NumPy
arrays or GROMACS ``.trr`` forces, and the formats of other engines through MDAnalysis (:mod:`cgdml.io.formats`);
:func:`count_frames` counts frames for a progress bar; :func:`load_topology` reads an all-atom topology.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import CgdmlError, check_memory, numpy_file_kind
from ..data import check_bonded_distances, check_finite
from ..units import force_factor, length_factor
from .formats import MDA_ONLY_TRAJECTORIES, MDAReader, is_mda_file, position_chunks, reader_chunks


RAW_SUFFIXES = (".npy", ".npz")
# float32 keeps about 7 digits: beyond 10 nm from the origin its spacing (> 1e-6 nm) starts to eat into bond
# fluctuations (~0.003 nm) as coordinates grow; positions read in float64 beyond this are centred per frame
FAR_NM = 10.0
# covalent radii in nm (Cordero et al., Dalton Trans. 2008, 2832; C sp3): a bond between two atoms is within
# COVALENT_TOLERANCE of the sum of their radii (double and aromatic bonds are shorter, by up to 21% for C#N)
COVALENT_RADIUS_NM = {"H": 0.031, "C": 0.076, "N": 0.071, "O": 0.066, "F": 0.057, "P": 0.107, "S": 0.105,
                      "Cl": 0.102, "Se": 0.120, "Br": 0.120, "I": 0.139, "B": 0.084, "Si": 0.111}
COVALENT_TOLERANCE = 0.25
COVALENT_SAMPLE = 5          # frames checked at the start of every chunk (the first frames and a sample after)
CHUNK_BYTES = 32             # per atom coordinate of a chunk: positions and forces in float32, float64 copies to map
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


def _centred(xyz, path, warn=True):
    """Positions (n, n_atoms, 3) nm, float64, each frame moved so that its mean position is the origin (the CG
    map, forces and everything downstream depend on relative positions only); ``warn``: say so."""
    import warnings

    if warn:
            warnings.warn(f"{path}: positions lie up to {np.abs(xyz).max():.3g} nm from the origin; each frame is centred "
                      "on its mean position so that float32 storage keeps their precision (a rigid shift per frame: "
                      "distances, angles, the CG map and its forces are unchanged)", stacklevel=3)
    return np.asarray(xyz, dtype=np.float64) - np.asarray(xyz, dtype=np.float64).mean(axis=1, keepdims=True)


def covalent_bond_lengths(topology):
    """(bonds (n, 2) atom indices, expected lengths (n,) nm): the bonds of an mdtraj Topology whose two elements
    both have a covalent radius in :data:`COVALENT_RADIUS_NM`, hydrogen-hydrogen bonds (rigid water) excepted."""
    pairs, lengths = [], []
    for a, b in topology.bonds:
        ea, eb = (getattr(getattr(x, "element", None), "symbol", None) for x in (a, b))
        if ea in COVALENT_RADIUS_NM and eb in COVALENT_RADIUS_NM and not (ea == eb == "H"):
            pairs.append((a.index, b.index))
            lengths.append(COVALENT_RADIUS_NM[ea] + COVALENT_RADIUS_NM[eb])
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(lengths, dtype=np.float64)


def check_covalent_bonds(xyz, bonds, expected, topology, context, first_frame=0):
    """Refuse (one line) positions (n, n_atoms, 3) nm whose bonds, in the median over the first
    :data:`COVALENT_SAMPLE` frames, differ from the sum of covalent radii ``expected`` (n_bonds,) nm by more than
    :data:`COVALENT_TOLERANCE` (two bonds or more, or one by twice that): the atoms are not in the order of the
    topology (or not in nm)."""
    if not len(bonds) or not len(xyz):
        return
    sample = np.asarray(xyz[:COVALENT_SAMPLE], dtype=np.float64)
    d = np.median(np.linalg.norm(sample[:, bonds[:, 1]] - sample[:, bonds[:, 0]], axis=-1), axis=0)
    off = np.abs(d / expected - 1.0)
    bad = np.flatnonzero(off > COVALENT_TOLERANCE)
    # one bond just past the tolerance in a frame or two is a short double bond's fluctuation (C=O is 13% below
    # the sum of radii); a misordered atom breaks every bond it has, and a swap of two atoms at least two
    if len(bad) >= 2 or (len(bad) and off.max() > 2 * COVALENT_TOLERANCE):
        atoms = list(topology.atoms)
        shown = ", ".join(f"{atoms[bonds[i, 0]]}:{atoms[bonds[i, 1]]} {d[i]:.3f} nm (covalent {expected[i]:.3f})"
                          for i in bad[:3])
        raise CgdmlError(f"{context}: {len(bad)} of {len(bonds)} bonds in frames {first_frame}-"
                         f"{first_frame + len(sample) - 1} are not of covalent length within "
                         f"{COVALENT_TOLERANCE:.0%} ({shown}{' ...' if len(bad) > 3 else ''}): the atoms are not in "
                         "the order of the topology, or the length unit is wrong")


class _ArrayReader:
    """Sequential reader of (n_frames, n_atoms, 3) arrays from .npy (memory-mapped), .npz or GROMACS .trr."""

    def __init__(self, path, keys, what, factor):
        self.path, self.what, self.factor, self.pos = Path(path), what, factor, 0
        self._centring = False           # whether frames were centred (and the warning given)
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
        out = out * self.factor
        if self.what == "positions" and len(out) and np.abs(out).max() > FAR_NM:
            out = _centred(out, self.path, warn=not self._centring)
            self._centring = True
        return out.astype(np.float32, copy=False)

    def close(self):
        if self._trr is not None:
            self._trr.close()


def _trajectory_frames(path, units=None):
    """Frame count of an mdtraj-readable trajectory (or one of MDAnalysis's, :mod:`cgdml.io.formats`) without
    reading coordinates, or None."""
    import mdtraj as md

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
    """The forces reader of ``path``: MDAnalysis for the formats of :mod:`cgdml.io.formats`, else NumPy/TRR."""
    if is_mda_file(path):
        return MDAReader(path, **units)
    return _ArrayReader(path, _FORCE_KEYS, "forces", f_factor)


def _same_mda_file(tpath, reader):
    """Whether the trajectory ``tpath`` is the file that the MDAnalysis forces ``reader`` reads."""
    return isinstance(reader, MDAReader) and tpath.exists() and tpath.resolve() == reader.path.resolve()


def _chunk_pairs(tpath, reader, topology, stride, chunk, atom_indices, units):
    """Yield (positions, forces) chunks of one trajectory and its forces reader; positions come from the forces
    file itself when it is the trajectory (MDAnalysis formats), else chunk by chunk from the trajectory. Positions
    beyond :data:`FAR_NM` from the origin are centred per frame, whatever the format (raw arrays are centred by
    their reader, before float32)."""
    if _same_mda_file(tpath, reader):
        pairs = ((reader.last_positions, f) for f in reader_chunks(reader, tpath, topology, chunk, stride,
                                                                    atom_indices))
    else:
        if tpath.suffix.lower() in MDA_ONLY_TRAJECTORIES:
            chunks = position_chunks(tpath, topology, stride, chunk, atom_indices, **units)
        else:
            chunks = _position_chunks(tpath, topology, stride, chunk, atom_indices, units["length_unit"])
        pairs = ((xyz, reader.read(len(xyz), stride, atom_indices)) for xyz in chunks)
    centring = False
    for xyz, f in pairs:
        if len(xyz) and np.abs(xyz).max() > FAR_NM:
            xyz = _centred(xyz, tpath, warn=not centring).astype(np.float32)
            centring = True
        yield xyz, f


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

    Forces from other engines, through MDAnalysis (:mod:`cgdml.io.formats`, ``pip install 'cgdml[mdanalysis]'``):
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
    covalent, covalent_nm = covalent_bond_lengths(sub_topology)
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
        # a chunk longer than a file reads the whole file (mdtraj allocates the whole chunk before reading)
        chunks = [max(1, min(chunk, -(-reader.n_frames // stride))) for reader in readers]
        check_memory(max(chunks) * n_all * 3 * CHUNK_BYTES, f"reading {max(chunks)} frames of {n_all} atoms at a time",
                     "lower the chunk length (--chunk)")
        for tpath, reader, chunk in zip(traj_paths, readers, chunks):
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
                check_covalent_bonds(xyz, covalent, covalent_nm, sub_topology, f"{tpath} (read in {unit})", frame)
                frame += len(xyz)
                yield xyz, f
            if len(reader.read(1, stride, atom_indices)):
                raise CgdmlError(f"{reader.path}: more force frames than the {frame * stride}-frame trajectory {tpath}")
    finally:
        for reader in readers:
            reader.close()
