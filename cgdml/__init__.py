"""cgdml: coarse-grained molecular dynamics from all-atom forces with two-layer GDML.

The pipeline, one module per stage: data -> mapping -> features/kernels -> gdml -> prior -> sampling ->
ensemble (two-layer fit) -> basins -> simulate -> fes, with :func:`fit_cg_model` running the whole fit. The
names below are imported on first use, so that the command-line tools start fast.
"""
__version__ = "0.2.0"

from ._interrupt import install_at_start as _install_at_start

_install_at_start()  # Ctrl-C while a command starts: one line, exit 130 (see cgdml._interrupt)
del _install_at_start

_LAZY = {"GDML": ("gdml", "GDML"), "NystromGDML": ("nystrom", "NystromGDML"),
         "TwoLayerGDML": ("ensemble", "TwoLayerGDML"), "GDMLModel": ("model", "GDMLModel"),
         "CGModel": ("model", "CGModel"), "CGDataset": ("data", "CGDataset"),
         "fit_cg_model": ("pipeline", "fit_cg_model"), "CGEstimator": ("pipeline", "CGEstimator"),
         "CGPrior": ("prior", "CGPrior"),
         "load_default_cg_dataset": ("mapping", "load_default_cg_dataset"),
         "CGSystem": ("system", "CGSystem"), "map_allatom": ("mapping", "map_allatom"),
         "load_cg_arrays": ("io.arrays", "load_cg_arrays"),
         "Simulation": ("simulate", "Simulation"), "simulate_model": ("simulate", "simulate_model"),
         "compare_landscapes": ("fes", "compare_landscapes")}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'cgdml' has no attribute {name!r}")
