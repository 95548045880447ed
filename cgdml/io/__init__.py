"""Readers: everything that turns files into arrays or datasets.

- :mod:`cgdml.io.allatom`: all-atom trajectories and forces, chunk by chunk (:func:`load_allatom`,
  :func:`count_frames`, :func:`load_topology`);
- :mod:`cgdml.io.formats`: forces (and positions) of other MD engines through MDAnalysis;
- :mod:`cgdml.io.mlcg`: mlcg-style HDF5 datasets (:func:`load_mlcg`);
- :mod:`cgdml.io.arrays`: pre-mapped CG arrays (:func:`load_cg_arrays`);
- :mod:`cgdml.io.shipped`: the data shipped with cgdml (:func:`default_dataset_paths`, :func:`ala2_pdb_path`).

The all-atom data are mapped to CG datasets by :mod:`cgdml.mapping`; the dataset container is
:class:`cgdml.data.CGDataset`. The functions named above are imported on first use (``from cgdml.io import
load_allatom``), so that importing one reader does not import them all.
"""
_LAZY = {"load_allatom": "allatom", "count_frames": "allatom", "load_topology": "allatom",
         "load_cg_arrays": "arrays", "load_mlcg": "mlcg", "ala2_pdb_path": "shipped",
         "default_dataset_paths": "shipped", "shipped_data_dir": "shipped"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cgdml.io' has no attribute {name!r}")
