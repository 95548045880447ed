"""Active learning: the CG model asks OpenMM for the all-atom data it lacks (issue 26; docs/method.md §2.9).

- :mod:`.label`: restrained all-atom labelling of chosen CG configurations (:class:`RestrainedLabeller`), the
  all-atom system of a :mod:`cgdml.reference` run (:func:`load_allatom_reference`) and its map;
- :mod:`.choose`: which configurations (:func:`choose_configurations`: top force or dihedral uncertainty, farthest-point);
- :mod:`.loop`: the resumable loop (:func:`active_learn`), what ``python -m cgdml.learn`` runs.
"""
from .choose import choose_configurations, dihedral_uncertainty, farthest_point_order
from .label import (LABEL_DEFAULTS, AllAtomReference, RestrainedLabeller, allatom_map, check_map_fits,
                    load_allatom_reference, map_reference, superpose, superposed_rmsd)
from .loop import LOOP_DEFAULTS, active_learn

__all__ = ["LABEL_DEFAULTS", "LOOP_DEFAULTS", "AllAtomReference", "RestrainedLabeller", "active_learn",
           "allatom_map", "check_map_fits", "choose_configurations", "dihedral_uncertainty",
           "farthest_point_order",
           "load_allatom_reference", "map_reference", "superpose", "superposed_rmsd"]
