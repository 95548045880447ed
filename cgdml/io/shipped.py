"""Data shipped with cgdml, found through :mod:`importlib.resources` so that an installed wheel finds it too:
the all-atom reference simulation of alanine dipeptide (``data/`` in the repository, ``cgdml/_data`` in a
package) and the all-atom PDB of alanine dipeptide that the map presets are written for
(``cgdml/presets/ala2.pdb``).
"""
from __future__ import annotations

from collections import namedtuple
from importlib.resources import files
from pathlib import Path

import numpy as np

from .._io import CgdmlError

DatasetPaths = namedtuple("DatasetPaths", "topology trajectory forces")


def ala2_pdb_path():
    """Path of the all-atom PDB of capped alanine dipeptide (ACE-ALA-NME, 22 atoms, AMBER names, Angstrom)."""
    return Path(str(files("cgdml") / "presets" / "ala2.pdb"))


def shipped_data_dir():
    """The directory of the shipped all-atom reference (``data/`` in the repository, ``cgdml/_data`` in an
    installed package)."""
    return Path(str(files("cgdml") / "_data"))


def default_dataset_paths():
    """(topology, trajectory, forces) paths of the shipped all-atom reference (alanine dipeptide, OBC2, 300 K).

    The trajectory and forces live in one ``.npz`` (``positions`` in nm, ``forces`` in kJ/mol/nm).
    """
    data = shipped_data_dir()
    top, npz = data / "ala2_implicit_300K.pdb", data / "ala2_implicit_300K.npz"
    for p in (top, npz):
        if not p.exists():
            raise CgdmlError(f"{p}: shipped reference data not found (the cgdml installation is incomplete; "
                             "reinstall it, or pass a dataset)")
    return DatasetPaths(top, npz, npz)


def shipped_temperature(path):
    """Temperature (K) stored in a reference ``.npz`` from :mod:`cgdml.reference`, else 300."""
    with np.load(path, allow_pickle=False) as z:
        return float(z["temperature"]) if "temperature" in z.files else 300.0
