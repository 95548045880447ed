"""mlcg-style HDF5 datasets (the optional extra ``pip install 'cgdml[mdanalysis]'`` brings h5py).

mlcg (``mlcg.datasets.h5_dataset``) stores one HDF5 group per molecule, usually inside a group per data set:
``/OPEP/opep_0000`` with datasets ``cg_coords`` (n_frames, n_beads, 3) and forces (``cg_delta_forces`` or
``cg_forces``, same shape), and attributes ``cg_embeds`` (n_beads,) bead types and ``N_frames``; further
attributes are optional (``cg_pdb``, PDB text, is used here when present). mlcg itself names the coordinate,
force and embedding keys in its ``hdf_key_mapping`` (default ``cg_coords``, ``cg_delta_forces``,
``attrs:cg_embeds``). :func:`load_mlcg` reads one molecule into a :class:`cgdml.data.CGDataset`
(``python -m cgdml.map --mlcg FILE.h5 --molecule NAME``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .._io import CgdmlError, one_line
from ..data import CGDataset, check_finite
from ..system import parse_pdb
from .formats import require_extra

MLCG_FORCE_KEYS = ("cg_forces", "cg_delta_forces")


def mlcg_molecules(h5file):
    """HDF5 paths (without the leading /) of the molecule groups of an open mlcg file: groups holding cg_coords."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "cg_coords" in obj:
            found.append(name)

    h5file.visititems(visit)
    return sorted(found)


def _attr_text(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size == 1:
        return _attr_text(value.reshape(-1)[0])
    return str(value)


def load_mlcg(path, molecule=None, *, forces_key=None, length_unit="nm", energy_unit="kJ/mol", temperature=300.0,
              bead_names=None, topology=None, bonds=None, masses=None, stride=1):
    """One molecule of an mlcg-style HDF5 file as a :class:`cgdml.data.CGDataset`.

    ``molecule``: the group's path (``OPEP/opep_0000``) or its last name (``opep_0000``), optional when the
    file holds one molecule. ``forces_key``: the forces dataset; by default ``cg_forces``, else
    ``cg_delta_forces`` (with a warning: mlcg's delta forces are the mapped forces less a prior's, and cgdml
    fits its own prior). Values are in ``length_unit``/``energy_unit`` (mlcg's data are usually in Å and
    kcal/mol: say so). Bead names and bonds: ``bead_names``/``topology``/``bonds`` as in
    :meth:`cgdml.data.CGDataset.from_arrays`; without them, a ``cg_pdb`` attribute (PDB text) gives the
    topology, else the beads are B0, B1, ... bonded in a chain. ``cg_embeds`` and the other attributes are
    kept in ``info``.
    """
    path = Path(path)
    if not path.exists():
        raise CgdmlError(f"{path}: no such mlcg HDF5 file")
    h5py = require_extra("h5py", path, "mlcg HDF5 files")
    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:
        raise CgdmlError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {one_line(exc, 160)})") from None
    with h5:
        molecules = mlcg_molecules(h5)
        if not molecules:
            raise CgdmlError(f"{path}: no molecule in the file (no group holds a 'cg_coords' dataset)")
        shown = ", ".join(molecules[:10]) + (f" ... ({len(molecules)} in all)" if len(molecules) > 10 else "")
        if molecule is None:
            if len(molecules) > 1:
                raise CgdmlError(f"{path}: {len(molecules)} molecules; choose one with --molecule ({shown})")
            name = molecules[0]
        else:
            want = str(molecule).strip("/")
            matches = [m for m in molecules if m == want] or [m for m in molecules if m.split("/")[-1] == want]
            if not matches:
                raise CgdmlError(f"{path}: no molecule {molecule!r} (molecules: {shown})")
            if len(matches) > 1:
                raise CgdmlError(f"{path}: molecule {molecule!r} is ambiguous ({', '.join(matches)}); give its path")
            name = matches[0]
        group = h5[name]
        where = f"{path}:/{name}"
        if forces_key is None:
            forces_key = next((k for k in MLCG_FORCE_KEYS if k in group), None)
            if forces_key is None:
                raise CgdmlError(f"{where}: no forces dataset ({' or '.join(MLCG_FORCE_KEYS)}; "
                                 f"found {', '.join(group) or 'nothing'})")
        elif forces_key not in group:
            raise CgdmlError(f"{where}: no dataset {forces_key!r} (found {', '.join(group)})")
        if forces_key == "cg_delta_forces":
            warnings.warn(f"{where}: reading cg_delta_forces, which in mlcg are the mapped forces less a prior's "
                          "forces; cgdml fits its own prior, so use the full mapped forces where the file has them",
                          stacklevel=2)
        stride = int(stride)
        if stride < 1:
            raise CgdmlError(f"stride must be >= 1, got {stride}")
        arrays = {}
        for key in ("cg_coords", forces_key):
            ds = group[key]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 3 or ds.shape[2] != 3 or ds.dtype.kind not in "fiu":
                raise CgdmlError(f"{where}/{key}: must be numbers shaped (n_frames, n_beads, 3), got "
                                 f"{getattr(ds, 'dtype', 'a group')} shaped {getattr(ds, 'shape', None)}")
            arrays[key] = ds[::stride]
        coords, forces = arrays["cg_coords"], arrays[forces_key]
        n_frames, n_beads = group["cg_coords"].shape[:2]
        if group[forces_key].shape != group["cg_coords"].shape:
            raise CgdmlError(f"{where}: {forces_key} shaped {group[forces_key].shape} does not match cg_coords "
                             f"shaped {group['cg_coords'].shape}")
        attrs = {k: group.attrs[k] for k in group.attrs}
        if "N_frames" in attrs and int(np.asarray(attrs["N_frames"]).reshape(-1)[0]) != n_frames:
            raise CgdmlError(f"{where}: attribute N_frames = {attrs['N_frames']} but cg_coords holds {n_frames} frames")
        embeds = attrs.get("cg_embeds")
        if embeds is not None and np.asarray(embeds).reshape(-1).shape != (n_beads,):
            raise CgdmlError(f"{where}: attribute cg_embeds has {np.asarray(embeds).size} entries for {n_beads} beads")
        if topology is None and bead_names is None and "cg_pdb" in attrs:
            try:
                topology = parse_pdb(_attr_text(attrs["cg_pdb"]))
            except Exception as exc:
                raise CgdmlError(f"{where}: unreadable cg_pdb attribute ({type(exc).__name__}: "
                                 f"{one_line(exc, 120)})") from None
    check_finite(coords, "coordinates", f"{where}/cg_coords")
    check_finite(forces, "forces", f"{where}/{forces_key}")
    kept = {k: (v.tolist() if isinstance(v, np.ndarray) and v.size <= 10000 else
                _attr_text(v) if isinstance(v, (bytes, str)) else v if np.isscalar(v) else f"({type(v).__name__})")
            for k, v in attrs.items() if k != "cg_pdb"}
    kept = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in kept.items()}
    info = {"source": {"mlcg": str(path), "molecule": name, "coords": "cg_coords", "forces": forces_key},
            "mlcg_attributes": kept, "stride": stride}
    try:
        return CGDataset.from_arrays(coords, forces, length_unit=length_unit, energy_unit=energy_unit,
                                     temperature=temperature, bead_names=bead_names, topology=topology, bonds=bonds,
                                     info=info, masses=masses)
    except CgdmlError as exc:
        raise CgdmlError(f"{where}: {exc}") from None
