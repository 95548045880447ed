"""Pre-mapped CG arrays (coordinates and forces already at the bead level, e.g. from another CG tool) as a
:class:`cgdml.data.CGDataset`: :func:`load_cg_arrays` is what ``python -m cgdml.map --coords C --cg-forces F``
(and ``fit --coords``) runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import CgdmlError, numpy_file_kind, one_line
from ..data import CGDataset, check_finite
from ..mapping import available_presets, preset_map
from ..topology import parse_bonds
from ..units import check_temperature, energy_factor, length_factor


def load_array(path, what):
    """The one array of a ``.npy`` or ``.npz`` file; errors are one line naming the file and ``what`` it is."""
    path = Path(path)
    if not path.exists():
        raise CgdmlError(f"{path}: no such {what} file")
    if path.is_file() and numpy_file_kind(path) is None:
        raise CgdmlError(f"{path}: not a readable {what} array (neither .npy nor .npz content)")
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.ndarray):
            return z
        with z:
            if len(z.files) != 1:
                raise CgdmlError(f"{path}: expected one array, found {', '.join(z.files) or 'none'}")
            return z[z.files[0]]
    except CgdmlError:
        raise
    except Exception as exc:
        raise CgdmlError(f"{path}: not a readable {what} array ({type(exc).__name__}: {one_line(exc, 300)})") \
            from None


def resolve_beads(beads):
    """What ``beads`` says about the beads of pre-mapped data, as (bead names, CG topology, masses amu), the
    unknown ones None: a map preset name (``ala2-5``, ...: its CG topology and bead masses), bead names (a list,
    or one string of comma-separated names), or None (nothing known)."""
    if beads is None or (isinstance(beads, str) and not beads.strip()):
        return None, None, None
    if isinstance(beads, str) and beads in available_presets():
        cgmap = preset_map(beads)
        return None, cgmap.cg_topology_, cgmap.masses_
    names = beads.split(",") if isinstance(beads, str) else beads
    return [str(b).strip() for b in names], None, None


def load_cg_arrays(coords, forces, *, beads=None, bonds=None, length_unit="nm", energy_unit="kJ/mol",
                   temperature=300.0, stride=1):
    """A :class:`CGDataset` of pre-mapped CG coordinates and forces.

    ``coords`` and ``forces``: arrays (n_frames, n_beads, 3), or ``.npy``/``.npz`` files holding one array each,
    in ``length_unit`` and ``energy_unit``/``length_unit`` (converted to nm and kJ/mol/nm). ``beads``: a map preset
    whose CG topology (names, residues, bonds) and bead masses the arrays follow, or bead names (a list or a
    comma-separated string). ``bonds``: bead index pairs (n_bonds, 2) or a string such as ``"0-1,1-2"``; they
    replace the preset's. Without a preset or bonds the beads form a chain in index order (with a warning).
    ``temperature`` in K; ``stride`` keeps every N-th frame. Errors are one line naming the file.
    """
    where = {"coordinates": coords, "forces": forces}
    names = {k: str(v) if isinstance(v, (str, Path)) else "(array)" for k, v in where.items()}
    stride = int(stride)
    if stride < 1:
        raise CgdmlError(f"stride must be >= 1, got {stride}")
    temperature = check_temperature(temperature)
    length_factor(length_unit)
    energy_factor(energy_unit, temperature)
    arrays = {k: load_array(v, k) if isinstance(v, (str, Path)) else np.asarray(v) for k, v in where.items()}
    for what, array in arrays.items():
        if array.ndim != 3 or array.shape[2] != 3:
            raise CgdmlError(f"{names[what]}: {what} must have shape (n_frames, n_beads, 3), got {array.shape}")
    coords, forces = arrays["coordinates"], arrays["forces"]
    if forces.shape != coords.shape:
        raise CgdmlError(f"{names['forces']}: forces shaped {forces.shape} do not match the coordinates "
                         f"{names['coordinates']} shaped {coords.shape}")
    check_finite(coords, "coordinates", names["coordinates"])
    check_finite(forces, "forces", names["forces"])
    coords, forces = coords[::stride], forces[::stride]
    bead_names, topology, masses = resolve_beads(beads)
    if topology is not None and coords.shape[1] != topology.n_beads:
        raise CgdmlError(f"{names['coordinates']}: {coords.shape[1]} beads but preset {beads} has "
                         f"{topology.n_beads}")
    if isinstance(bonds, str):
        bonds = parse_bonds(bonds)
    info = {"source": {"coords": names["coordinates"], "forces": names["forces"]},
            "beads": beads if beads is None or isinstance(beads, str) else list(bead_names)}
    try:
        return CGDataset.from_arrays(coords, forces, length_unit=length_unit, energy_unit=energy_unit,
                                     temperature=temperature, bead_names=bead_names, topology=topology, info=info,
                                     masses=masses, bonds=bonds)
    except CgdmlError as exc:
        raise CgdmlError(f"{names['coordinates']}: {exc}") from None
