"""cgdml: coarse-grained molecular dynamics from all-atom forces with two-layer GDML."""
__version__ = "0.1.0"
