"""Reporters: what a :class:`cgdml.simulate.Simulation` does besides integrating.

A reporter is a small object with optional hooks, called by the simulation loop (all arrays over every replica,
(n_replicas, n_beads, 3) in nm, nm/ps and kJ/mol/nm, unless said otherwise):

- ``check(sim, trial)``: a *guard*. Called after every ``every``-th step, before the step is accepted, with the
  proposed state of the live replicas (a :class:`Trial`). ``trial.stop(mask, reason)`` stops replicas: they
  keep the frames of earlier steps and stay at their last accepted state; ``trial.warn(mask, reason)`` only
  records an event; raising :class:`StopRun` ends the whole run at the previous step.
- ``report(sim)``: after every ``every``-th accepted step (``sim.step``, ``sim.positions``, ``sim.alive``, ...).
- ``start(sim)`` before the first step, ``finish(sim)`` after the last one (also when the run fails);
  ``resume(sim)`` restores a saved run (the checkpoint does this, first).
- ``settings()``: what defines the output (part of the checkpoint's fingerprint); ``state_arrays(sim)`` and
  ``restore_arrays(sim, fields)``: what a checkpoint must carry for this reporter.

Reporters report in increasing ``order`` (the checkpoint last, so that it saves what the others collected this
step). Events (stops and warnings) go to ``sim.events``: dicts with replica, step, reason, stopped, and value
when the guard gives one; checkpoints carry them.

Here: :class:`BlowupGuard` (NaN/inf, runaway coordinates, an optional test such as :func:`bond_blowup`),
:class:`ThresholdGuard` (a per-replica quantity above a threshold: warn, stop the replica, or stop the run),
:class:`TrajectoryReporter` (frames in memory), :class:`CheckpointReporter` and :class:`ProgressReporter`.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from .._io import CgdmlError, Fields, as_array, as_int, as_json, load_npz, save_npz

log = logging.getLogger("cgdml.simulate")

MAX_COORD = 1e6        # nm; a coordinate beyond this (or NaN) is a blow-up: trajectories are stored as float32
PROGRESS_S = 1.0       # the progress bar is updated at least this often (seconds of wall time)
CHECKPOINT_VERSION = 1


class AllBlownUp(CgdmlError):
    """Every replica blew up (a :class:`CgdmlError`: the message advises a smaller time step)."""


class StopRun(Exception):
    """Raised by a guard's ``check`` to end the run; the message says why (it goes into ``result.halted``)."""


class Trial:
    """The proposed state of the live replicas after a step, for guards.

    step: the step just taken (0: the start configurations); replicas (n_live,) their indices; positions,
    velocities, forces (n_live, n_beads, 3); slow_forces: the slow forces when evaluated at this step, else None.
    ``stopped`` (n_live,) bool: replicas a guard has stopped so far; ``events``: what the guards recorded.
    """

    def __init__(self, step, replicas, positions, velocities, forces, slow_forces=None):
        self.step, self.replicas = int(step), replicas
        self.positions, self.velocities, self.forces, self.slow_forces = positions, velocities, forces, slow_forces
        self.stopped = np.zeros(len(replicas), dtype=bool)
        self.events = []

    def _record(self, mask, reason, stopped, values):
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.shape != self.stopped.shape:
            raise ValueError(f"guard mask has shape {mask.shape}, expected ({len(self.stopped)},)")
        for row in np.flatnonzero(mask & ~self.stopped):
            event = {"replica": int(self.replicas[row]), "step": self.step, "reason": str(reason),
                     "stopped": stopped}
            if values is not None:
                event["value"] = float(np.asarray(values).reshape(-1)[row])
            self.events.append(event)
        return mask

    def stop(self, mask, reason, values=None):
        """Stop the live replicas where ``mask`` (n_live,) is true; ``values`` (n_live,) go into their events."""
        self.stopped |= self._record(mask, reason, True, values)

    def warn(self, mask, reason, values=None):
        """Record an event for the replicas where ``mask`` (n_live,) is true, without stopping them."""
        self._record(mask, reason, False, values)


class Reporter:
    """Base class: every hook does nothing (see the module docstring for the protocol)."""

    every = 1
    order = 0

    def settings(self):
        return {}

    def resume(self, sim):
        return False

    def start(self, sim):
        pass

    def check(self, sim, trial):
        pass

    def report(self, sim):
        pass

    def finish(self, sim):
        pass

    def state_arrays(self, sim):
        return {}

    def restore_arrays(self, sim, fields):
        pass


# ------------------------------------------------------------------------------------------------ guards

def bond_blowup(bond_pairs, threshold):
    """A ``blowup`` test: true for replicas where any bonded distance (nm) exceeds ``threshold``."""
    pairs = np.asarray(bond_pairs, dtype=np.int64).reshape(-1, 2)
    threshold = float(threshold)

    def test(R):
        d = R[:, pairs[:, 0]] - R[:, pairs[:, 1]]
        return (np.einsum("nbk,nbk->nb", d, d) > threshold**2).any(axis=1)

    return test


class BlowupGuard(Reporter):
    """Stops replicas whose state is NaN/inf, has a coordinate beyond :data:`MAX_COORD` nm, or fails ``test``
    (R (n, n_beads, 3) -> bool (n,), e.g. :func:`bond_blowup`); warns, and raises :class:`AllBlownUp` when
    none is left (``raise_if_all=False``: the run just ends, for replica groups)."""

    reason = "blow-up"

    def __init__(self, test=None, raise_if_all=True):
        self.test, self.raise_if_all = test, raise_if_all

    def check(self, sim, trial):
        x, v, F = trial.positions, trial.velocities, trial.forces
        total = F.sum(axis=(1, 2)) + v.sum(axis=(1, 2))
        if trial.slow_forces is not None:
            total = total + trial.slow_forces.sum(axis=(1, 2))
        # one reduction per array: NaN fails the comparison, any inf/NaN makes the sums non-finite
        bad = ~((np.abs(x).max(axis=(1, 2)) < MAX_COORD) & np.isfinite(total))
        if self.test is not None:
            bad |= np.asarray(self.test(x), dtype=bool)
        if not bad.any():
            return
        trial.stop(bad, self.reason)
        n_left = int(sim.alive.sum()) - int(trial.stopped.sum())
        if trial.step == 0:
            if n_left == 0 and self.raise_if_all:
                raise AllBlownUp("every start configuration gives non-finite forces or fails the blow-up test")
            return
        ids = trial.replicas[bad]
        warnings.warn(f"replica(s) {', '.join(map(str, ids))} blew up at step {trial.step} (NaN/inf or stretched "
                      f"bond) and were stopped; {n_left} of {sim.n_replicas} continue", stacklevel=4)
        if n_left == 0 and self.raise_if_all:
            raise AllBlownUp(f"all {sim.n_replicas} replicas blew up (last at step {trial.step}); reduce the time "
                             "step or check the model")


ACTIONS = ("warn", "stop-replica", "stop-run")


class ThresholdGuard(Reporter):
    """Every ``every`` steps, ``value_fn(R)`` (n,) of the live replicas; where it exceeds ``threshold``:
    ``action`` "warn" records an event (once per replica), "stop-replica" stops the replica, "stop-run" ends
    the run. ``reason`` names the events (e.g. "force uncertainty")."""

    def __init__(self, value_fn, threshold, every=1, action="warn", reason="threshold"):
        if action not in ACTIONS:
            raise CgdmlError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if not (isinstance(every, (int, np.integer)) and every >= 1):
            raise CgdmlError(f"every must be an integer >= 1, got {every!r}")
        self.value_fn, self.threshold, self.every = value_fn, float(threshold), int(every)
        self.action, self.reason = action, reason
        self.warned = set()

    def check(self, sim, trial):
        values = np.asarray(self.value_fn(trial.positions), dtype=np.float64).reshape(-1)
        over = ~(values <= self.threshold)                       # NaN counts as over
        if not over.any():
            return
        if self.action == "stop-run":
            trial.warn(over, self.reason, values)
            raise StopRun(f"{self.reason} above {self.threshold:.3g} for replica(s) "
                          f"{', '.join(map(str, trial.replicas[over]))} at step {trial.step}")
        if self.action == "stop-replica":
            trial.stop(over, self.reason, values)
            return
        new = over & ~np.isin(trial.replicas, list(self.warned))
        self.warned.update(int(i) for i in trial.replicas[new])
        trial.warn(new, self.reason, values)

    def restore_arrays(self, sim, fields):
        self.warned = {e["replica"] for e in sim.events if e["reason"] == self.reason}


# ------------------------------------------------------------------------------------------------ output

class TrajectoryReporter(Reporter):
    """Collects a frame of every live replica every ``save_every`` steps, in memory: ``frames`` (n_saved,
    n_replicas, n_beads, 3) float32 nm, frame k after step (k + 1) save_every, NaN where a replica had stopped;
    ``velocity_frames`` alike (nm/ps) with ``save_velocities``."""

    def __init__(self, save_every=100, save_velocities=False):
        if not (isinstance(save_every, (int, np.integer)) and save_every >= 1):
            raise CgdmlError(f"save_every must be an integer >= 1, got {save_every!r}")
        self.every = self.save_every = int(save_every)
        self.save_velocities = bool(save_velocities)
        self.frames = self.velocity_frames = None

    def settings(self):
        return {"save_every": self.save_every, "save_velocities": self.save_velocities}

    def _allocate(self, sim):
        self.frames = np.full((sim.n_steps // self.save_every, *sim.shape), np.nan, dtype=np.float32)
        self.velocity_frames = np.full_like(self.frames, np.nan) if self.save_velocities else None

    def start(self, sim):
        k = sim.integrator.slow_every
        if self.save_every % k:
            raise CgdmlError(f"save_every ({self.save_every}) must be a multiple of slow_every ({k})")
        if sim.step == 0:                                     # else restored from a checkpoint
            self._allocate(sim)

    def report(self, sim):
        k, alive = sim.step // self.save_every - 1, sim.alive
        self.frames[k, alive] = sim.positions[alive]
        if self.save_velocities:
            self.velocity_frames[k, alive] = sim.velocities[alive]

    def state_arrays(self, sim):
        k = sim.step // self.save_every
        out = {"frames": self.frames[:k]}
        if self.save_velocities:
            out["velocity_frames"] = self.velocity_frames[:k]
        return out

    def restore_arrays(self, sim, fields):
        self._allocate(sim)
        k = sim.step // self.save_every
        for name in ("frames", "velocity_frames") if self.save_velocities else ("frames",):
            saved = fields.get(name, lambda v: as_array(v, "f", shape=(k, *sim.shape), finite=False,
                                                        dtype=np.float32))
            getattr(self, name)[:k] = saved


class ProgressReporter(Reporter):
    """A tqdm bar over the steps, updated every ``interval_s`` seconds of wall time (default
    :data:`PROGRESS_S`; with many replicas a step takes long), with the live count once a replica stopped."""

    def __init__(self, desc=None, interval_s=None):
        self.desc, self.interval_s = desc, interval_s
        self.bar = None

    def start(self, sim):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=sim.n_steps, initial=sim.step, unit="step", mininterval=0.5,
                        desc=self.desc or f"simulate {sim.n_replicas} replicas")
        self.shown_at = time.perf_counter()

    def report(self, sim):
        interval = PROGRESS_S if self.interval_s is None else self.interval_s
        if sim.step == sim.n_steps or time.perf_counter() - self.shown_at >= interval:
            self.shown_at = time.perf_counter()
            self.bar.update(sim.step - self.bar.n)
            if not sim.alive.all():
                self.bar.set_postfix(alive=int(sim.alive.sum()), refresh=False)

    def finish(self, sim):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------------------------------ checkpoints

def _rng_state(value):
    """A numpy Generator state (JSON text) that a fresh default_rng accepts."""
    state = as_json(value)
    np.random.default_rng().bit_generator.state = state      # raises for a damaged state
    return state


class CheckpointReporter(Reporter):
    """Saves the whole run (state, random stream, events, the other reporters' arrays) to ``path`` (.npz,
    atomically) every ``every`` steps (default n_steps // 20); a run with a checkpoint of the same settings
    (fingerprint: integrator, start, seed, reporters' settings, ``tag``) resumes from it, bit for bit."""

    order = 10

    def __init__(self, path, every=None, tag=None):
        if every is not None and not (isinstance(every, (int, np.integer)) and every >= 1):
            raise CgdmlError(f"checkpoint_every must be >= 1, got {every}")
        self.path, self.checkpoint_every, self.tag = Path(path), every, tag
        self.every = 1

    def start(self, sim):
        self.every = max(1, sim.n_steps // 20) if self.checkpoint_every is None else int(self.checkpoint_every)

    def report(self, sim):
        arrays = sim.state_arrays()
        for r in sim.reporters:
            arrays.update(r.state_arrays(sim))
        save_npz(self.path, settings_json=np.array(sim.fingerprint(self.tag)),
                 format_version=np.int64(CHECKPOINT_VERSION), **arrays)

    def resume(self, sim):
        """Restore ``sim`` from the checkpoint if there is one; True when it did. A checkpoint of other settings,
        or a damaged one, is a one-line :class:`CgdmlError` naming the file (and the field); one without a live
        replica is discarded with a warning."""
        path = self.path
        if not path.exists():
            return False
        fix = "delete it to start afresh (or choose another output)"
        f = Fields(load_npz(path, "simulation checkpoint", fix=fix))
        if "settings_json" not in f or "positions" not in f:
            raise CgdmlError(f"{path}: not a cgdml simulation checkpoint; {fix}")
        try:
            version = f.get("format_version", as_int, 0)
            if version != CHECKPOINT_VERSION:
                raise CgdmlError(f"{path}: checkpoint format version {version} is not {CHECKPOINT_VERSION}; "
                                 "delete it to start afresh")
            old = f.get("settings_json", as_json)
            alive = f.get("alive", lambda v: as_array(v, "b", ndim=1))
        except CgdmlError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise CgdmlError(f"{path}: damaged simulation checkpoint: {exc}; delete it to start afresh") from None
        if not alive.any():
            warnings.warn(f"{path}: discarded this checkpoint: every replica in it had blown up; starting afresh",
                          stacklevel=4)
            path.unlink(missing_ok=True)
            return False
        new = json.loads(sim.fingerprint(self.tag))
        if old != new:
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            shown = ", ".join(f"{k}: {old.get(k)!r} vs now {new.get(k)!r}" if k not in ("x0_sha256", "masses")
                              else k for k in keys)
            raise CgdmlError(f"{path}: checkpoint was written with different settings ({shown}); "
                             "rerun with the original settings or delete the checkpoint")
        try:
            sim.restore_state(f)
            for r in sim.reporters:
                r.restore_arrays(sim, f)
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: damaged simulation checkpoint: {exc}; delete it to start afresh") from None
        log.info("resuming from step %d of %s%s", sim.step, path, f" ({sim.name})" if sim.name else "")
        return True


def restore_rng(fields):
    """The Generator state saved in a checkpoint's ``rng_state`` field (checked)."""
    return fields.get("rng_state", _rng_state)


def restore_events(fields, alive, stopped_at):
    """The events saved in a checkpoint; a checkpoint without them (an older cgdml) gives a blow-up event per
    stopped replica."""
    if "events_json" in fields:
        return fields.get("events_json", lambda v: as_json(v, list))
    return [{"replica": int(i), "step": int(stopped_at[i]), "reason": BlowupGuard.reason, "stopped": True}
            for i in np.flatnonzero(~alive)]
