"""Free energy: landscapes of collective variables from CG trajectories, and the project's comparison metric.

F = -kT ln p on a histogram of CVs, compared with a reference by the metric of docs/method.md §3 (``fes_rmse``
in kT and ``js`` in nats, with a split-half noise floor and a block bootstrap). Modules:

- :mod:`.histograms`: histograms, :func:`compare_fes`, :func:`split_half_floor`, :func:`bootstrap_metrics`;
- :mod:`.cvs`: collective variables -- the (phi, psi) of every residue from the CG topology's bead graph
  (:func:`residue_phi_psi`, :func:`phi_psi`), user CV sets (:func:`parse_cvs`: ``phi:2,psi:2``,
  ``dihedral:0,1,2,3``, ``angle:0,1,2``, ``distance:0,13``), TICA for molecules without backbone, and the
  :class:`Panel` objects of :func:`landscape_panels`;
- :mod:`.compare`: :func:`compare_panels` and :func:`compare_landscapes`, which is what ``python -m cgdml.fes``
  runs (from trajectories and a reference dataset to the report the command writes as JSON, and the figure);
- :mod:`.plot`: :func:`plot_landscapes`, :func:`plot_comparison`, :func:`plot_fes`.

The command line is in :mod:`cgdml.fes.__main__` (``python -m cgdml.fes``).
"""
from .compare import compare_landscapes, compare_panels, load_trajectories, reference_topology
from .cvs import (CV, CV_KINDS, Panel, as_cg_topology, bonds_and_angles, cv_groups, cv_range, landscape_panels,
                  parse_cvs, phi_psi, residue_phi_psi, topology_distributions)
from .histograms import (PERIODIC, as_cv_array, bin_counts, bin_edges, bin_index, bootstrap_draws, bootstrap_metrics,
                         bootstrap_summary, bootstrap_undefined, check_bootstrap, compare_fes, histogram_fes,
                         histogram_ranges, metrics_from_counts, split_half_floor)
from .plot import plot_comparison, plot_fes, plot_landscapes

__all__ = ["CV", "CV_KINDS", "PERIODIC", "Panel", "as_cg_topology", "as_cv_array", "bin_counts", "bin_edges",
           "bin_index", "bonds_and_angles", "bootstrap_draws", "bootstrap_metrics", "bootstrap_summary",
           "bootstrap_undefined", "check_bootstrap", "compare_fes", "compare_landscapes", "compare_panels",
           "cv_groups", "cv_range", "histogram_fes", "histogram_ranges", "landscape_panels", "load_trajectories",
           "metrics_from_counts", "parse_cvs", "phi_psi", "plot_comparison", "plot_fes", "plot_landscapes",
           "reference_topology", "residue_phi_psi", "split_half_floor", "topology_distributions"]
