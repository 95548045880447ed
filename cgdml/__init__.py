"""cgdml: coarse-grained molecular dynamics from all-atom forces with two-layer GDML.

The pipeline, one module per stage: data -> mapping -> features/kernels -> gdml -> prior -> sampling ->
ensemble (two-layer fit) -> simulate -> fes. ``cgdml.GDML`` is the GDML estimator; it is imported on
first use, so that the command-line tools start fast.
"""
__version__ = "0.1.0"

_LAZY = {"GDML": ("gdml", "GDML"), "TwoLayerGDML": ("ensemble", "TwoLayerGDML"),
         "CGDataset": ("data", "CGDataset"), "CGModel": ("model", "CGModel")}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'cgdml' has no attribute {name!r}")
