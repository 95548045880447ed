"""Forces from other MD engines, read through MDAnalysis (the optional extra ``pip install 'cgdml[mdanalysis]'``:
MDAnalysis and h5py). A forces file in one of these formats is read by its suffix:

=====================  ===========================================  =============================================
format                 suffixes                                     units read
=====================  ===========================================  =============================================
AMBER NetCDF           ``.nc``, ``.ncdf``, ``.netcdf``              Å and kcal/mol/Å (the convention; a
                                                                    ``forces`` variable is needed: AMBER
                                                                    ``ntwf = -1`` writes it into the trajectory)
H5MD                   ``.h5md``                                    the file's ``unit`` attributes; where the file
                                                                    has none, ``--length-unit``/``--energy-unit``
LAMMPS dump            ``.lammpsdump``, ``.lammpstrj``, ``.dump``   LAMMPS ``units real`` (Å, kcal/mol/Å) or
                                                                    ``metal`` (Å, eV/Å): ``lammps_units``
                                                                    (``--lammps-units``); columns fx fy fz needed
=====================  ===========================================  =============================================

Positions and forces come out in nm and kJ/mol/nm. The rule in :func:`cgdml.io.allatom.load_allatom` (``--traj`` /
``--forces`` of ``python -m cgdml.map``): a forces file in one of these formats gives the forces; when the
trajectory is the same file, its positions are read with the forces, frame for frame in one pass, chunk by
chunk. A trajectory in H5MD or LAMMPS dump format with separate forces is read through MDAnalysis too. LAMMPS
atoms are ordered by their ``id`` column (MDAnalysis sorts them), and MDAnalysis moves each frame's box origin
(xlo, ylo, zlo) to 0: a translation, which a CG dataset does not see.

The other inputs from other tools: user-given force maps (``.npy``, :func:`cgdml.mapping.load_force_matrix`)
and mlcg-style HDF5 datasets (:mod:`cgdml.io.mlcg`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .._io import CgdmlError, one_line
from ..units import force_factor, length_factor

MDA_FORMATS = {".nc": "AMBER NetCDF", ".ncdf": "AMBER NetCDF", ".netcdf": "AMBER NetCDF", ".h5md": "H5MD",
               ".lammpsdump": "LAMMPS dump", ".lammpstrj": "LAMMPS dump", ".dump": "LAMMPS dump"}
#: trajectory suffixes that mdtraj does not read, so that positions come through MDAnalysis as well
MDA_ONLY_TRAJECTORIES = (".h5md", ".lammpsdump", ".dump")
#: LAMMPS unit styles: (length unit, energy unit) of positions and forces in a dump
LAMMPS_UNITS = {"real": ("angstrom", "kcal/mol"), "metal": ("angstrom", "eV")}
MDANALYSIS_EXTRA = "pip install 'cgdml[mdanalysis]'"


def is_mda_file(path):
    """Whether ``path`` has one of the suffixes read through MDAnalysis (:data:`MDA_FORMATS`)."""
    return Path(path).suffix.lower() in MDA_FORMATS


def require_extra(module, path, what):
    """Import ``module`` of the mdanalysis extra, or raise a one-line error naming the extra."""
    try:
        return __import__(module)
    except ImportError:
        raise CgdmlError(f"{path}: reading {what} needs {module}, an optional extra: {MDANALYSIS_EXTRA}") from None


class MDAReader:
    """Sequential reader of positions (nm) and forces (kJ/mol/nm) from a file MDAnalysis reads.

    The same interface as the forces readers of :mod:`cgdml.io.allatom`: ``n_frames``, ``n_atoms``, ``path``,
    :meth:`read` (the next forces chunk) and :meth:`close`; :attr:`last_positions` holds the positions of the
    frames that the last :meth:`read` returned. ``need_forces=False`` opens a trajectory for positions only.
    ``length_unit``/``energy_unit`` serve only an H5MD file without unit attributes.
    """

    def __init__(self, path, *, need_forces=True, length_unit="nm", energy_unit="kJ/mol", lammps_units="real"):
        self.path, self.pos, self.last_positions = Path(path), 0, None
        suffix = self.path.suffix.lower()
        if suffix not in MDA_FORMATS:
            raise CgdmlError(f"{self.path}: not a format read through MDAnalysis ({', '.join(MDA_FORMATS)})")
        self.format = MDA_FORMATS[suffix]
        what = f"{self.format} files"
        if not self.path.exists():
            raise CgdmlError(f"{self.path}: no such {'forces' if need_forces else 'trajectory'} file")
        require_extra("MDAnalysis", self.path, what)
        if self.format == "H5MD":
            require_extra("h5py", self.path, what)
        if self.format == "LAMMPS dump" and lammps_units not in LAMMPS_UNITS:
            raise CgdmlError(f"LAMMPS units must be {' or '.join(LAMMPS_UNITS)}, got {lammps_units!r}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MDAnalysis warns about missing time, box, ...
                self._reader = self._open(need_forces)
                self.n_frames, self.n_atoms = int(self._reader.n_frames), int(self._reader.n_atoms)
        except CgdmlError:
            raise
        except Exception as exc:
            raise CgdmlError(f"{self.path}: not a readable {self.format} file "
                             f"({type(exc).__name__}: {one_line(exc, 200)})") from None
        self._length, self._force = self._factors(length_unit, energy_unit, lammps_units)

    def _open(self, need_forces):
        if self.format == "AMBER NetCDF":
            from MDAnalysis.coordinates.TRJ import NCDFReader as Reader
        elif self.format == "H5MD":
            from MDAnalysis.coordinates.H5MD import H5MDReader as Reader
        else:
            from MDAnalysis.coordinates.LAMMPS import DumpReader as Reader
        reader = Reader(str(self.path), convert_units=False)  # cgdml converts, from the units the reader names
        has_forces = getattr(reader, "has_forces", None)
        if has_forces is None:
            has_forces = reader.ts.has_forces
        if need_forces and not has_forces:
            reader.close()
            hint = {"AMBER NetCDF": "no 'forces' variable (AMBER writes forces into the trajectory with ntwf = -1)",
                    "H5MD": "no particles/*/force group",
                    "LAMMPS dump": "no fx fy fz columns"}[self.format]
            raise CgdmlError(f"{self.path}: the {self.format} file holds no forces ({hint})")
        return reader

    def _factors(self, length_unit, energy_unit, lammps_units):
        """(length factor to nm, force factor to kJ/mol/nm) for the values the reader returns unconverted."""
        from MDAnalysis import units

        if self.format == "LAMMPS dump":
            length, energy = LAMMPS_UNITS[lammps_units]
            return length_factor(length), force_factor(length, energy)
        file_units = self._reader.units
        try:
            length = (units.get_conversion_factor("length", file_units["length"], "nm")
                      if file_units.get("length") else length_factor(length_unit))
            force = (units.get_conversion_factor("force", file_units["force"], "kJ/(mol*nm)")
                     if file_units.get("force") else force_factor(length_unit, energy_unit))
        except (KeyError, ValueError, TypeError) as exc:
            raise CgdmlError(f"{self.path}: unknown units in the {self.format} file ({one_line(exc, 120)})") from None
        return float(length), float(force)

    def read(self, n, stride=1, atom_indices=None):
        """The forces of the next ``n`` frames taking every ``stride``-th (float32, kJ/mol/nm); fewer at the end.

        Their positions (nm) are left in :attr:`last_positions`; a positions-only reader returns them.
        """
        frames = range(self.pos, min(self.pos + n * stride, self.n_frames), stride)
        self.pos += n * stride
        xyz = np.empty((len(frames), self.n_atoms, 3), dtype=np.float32)
        f = np.empty_like(xyz) if self._reader.ts.has_forces else None
        k = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MDAnalysis warns of missing time steps, boxes, ...
                for k, i in enumerate(frames):
                    ts = self._reader[i]
                    xyz[k] = ts.positions
                    if f is not None:
                        f[k] = ts.forces
        except Exception as exc:
            raise CgdmlError(f"{self.path}: cannot read frame {frames[k]} ({type(exc).__name__}: "
                             f"{one_line(exc, 200)})") from None
        if atom_indices is not None:
            xyz = xyz[:, atom_indices]
            if f is not None:
                f = f[:, atom_indices]
        xyz *= np.float32(self._length)
        self.last_positions = xyz
        if f is None:
            return xyz
        f *= np.float32(self._force)
        return f

    def close(self):
        self._reader.close()


def reader_chunks(reader, path, topology, chunk, stride=1, atom_indices=None):
    """Yield ``reader.read(chunk, stride, atom_indices)`` until it comes back empty, once the reader's atom count
    is checked against ``topology``'s (a :class:`MDAReader` or the NumPy/TRR reader of :mod:`cgdml.io.allatom`)."""
    if reader.n_atoms != topology.n_atoms:
        raise CgdmlError(f"{path}: {reader.n_atoms} atoms but the topology has {topology.n_atoms}")
    while len(block := reader.read(chunk, stride, atom_indices)):
        yield block


def position_chunks(path, topology, stride, chunk, atom_indices, **units):
    """Yield position chunks (nm, float32) of a trajectory MDAnalysis reads (H5MD, LAMMPS dump)."""
    reader = MDAReader(path, need_forces=False, **units)
    try:
        for _ in reader_chunks(reader, path, topology, chunk, stride, atom_indices):
            yield reader.last_positions
    finally:
        reader.close()
