"""Simulate: batched Langevin dynamics of many CG replicas.

Three levels, each built on the one below:

- :func:`simulate_model` (:mod:`.model_run`): a fitted :class:`cgdml.model.CGModel` with the defaults of
  ``python -m cgdml.simulate`` (which calls it): multiple-time-step BAOAB, burn-in, blow-up guard, start frames,
  threads. Returns a :class:`ModelRun` (trajectory, sidecar, PDB).
- :func:`simulate` (:mod:`.replicas`): any batched force function ``force_fn(R) -> F`` (R (n, n_beads, 3) nm,
  F kJ/mol/nm) or a (fast, slow) pair, with frames, checkpoints, progress and blow-up handling, in one replica
  group or several independent ones (local processes, Dask).
- :class:`Simulation` (:mod:`.simulation`): the loop, an integrator step (:mod:`.integrators`: :class:`BAOAB`,
  :class:`Overdamped`, :class:`MTSBAOAB`) and reporters (:mod:`.reporters`: trajectory, checkpoint, progress,
  :class:`BlowupGuard`, :class:`ThresholdGuard`, or one's own), in the spirit of ``openmm.app.Simulation``.

A run resumed from its checkpoint is bit-for-bit identical to an uninterrupted one; a replica that blows up is
frozen at its last good state, reported, and left out of later force calls; the others carry on.
The command line is in :mod:`cgdml.simulate.__main__` (``python -m cgdml.simulate``).
"""
from .integrators import BAOAB, INTEGRATORS, MTSBAOAB, Integrator, Overdamped, make_integrator
from .model_run import (DEFAULTS, ModelRun, default_burn_in, model_sha256, run_settings, simulate_model,
                        start_configurations, write_trajectory)
from .replicas import group_checkpoints, simulate
from .reporters import (AllBlownUp, BlowupGuard, CheckpointReporter, ProgressReporter, Reporter, StopRun,
                        ThresholdGuard, TrajectoryReporter, Trial, bond_blowup)
from .simulation import Simulation, SimulationResult

__all__ = ["AllBlownUp", "BAOAB", "BlowupGuard", "CheckpointReporter", "DEFAULTS", "INTEGRATORS", "Integrator",
           "MTSBAOAB", "ModelRun", "Overdamped", "ProgressReporter", "Reporter", "Simulation",
           "SimulationResult", "StopRun", "ThresholdGuard", "TrajectoryReporter", "Trial", "bond_blowup",
           "default_burn_in", "group_checkpoints", "make_integrator", "model_sha256", "run_settings", "simulate",
           "simulate_model", "start_configurations", "write_trajectory"]
