"""The :class:`Simulation` loop: an integrator, a batched force function and reporters, over many replicas.

Like ``openmm.app.Simulation``: the integrator (:mod:`cgdml.simulate.integrators`) says how one step is taken,
the reporters (:mod:`cgdml.simulate.reporters`) what is done with the steps (frames, checkpoints, progress,
guards); the loop here draws the noise, calls the forces of the live replicas, lets the guards stop replicas
and calls the reporters.

The noise is one standard normal array (n_replicas, n_beads, 3) per step from one seeded numpy Generator, drawn
whether or not a replica is alive, so a run resumed from a checkpoint is bit-for-bit identical to an
uninterrupted one. A stopped replica is frozen at its last accepted state and left out of later force calls.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .._io import CgdmlError, CgdmlTypeError, as_array, as_int
from ..units import kT as thermal_energy
from .reporters import (BlowupGuard, StopRun, TrajectoryReporter, Trial, restore_events, restore_rng)

log = logging.getLogger("cgdml.simulate")


@dataclass
class SimulationResult:
    """What a run gives back.

    frames: (n_saved, n_replicas, n_beads, 3) float32 nm, frame k taken after step (k + 1) * save_every; frames
    of a replica at or after its stop are NaN. alive: (n_replicas,) bool. stopped_at: the step at which each
    replica was stopped, -1 if it ran on. positions, velocities: the final state (n_replicas, n_beads, 3) nm and
    nm/ps (velocities zero for overdamped). velocity_frames: like frames, with ``save_velocities``. events:
    stops and warnings of the guards (dicts: replica, step, reason, stopped[, value]). step: the last step
    taken (per replica, (n_replicas,), when replica groups ended at different steps). halted: None, or {"step", "reason"} when a guard ended the run early.
    """

    frames: np.ndarray
    alive: np.ndarray
    stopped_at: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    save_every: int
    timings: dict = field(default_factory=dict)
    velocity_frames: np.ndarray | None = None
    events: list = field(default_factory=list)
    step: int | np.ndarray | None = None
    halted: dict | None = None

    @property
    def blowups(self):
        """[{"replica", "step"}] of the replicas stopped by a blow-up, in the order they happened."""
        return [{"replica": e["replica"], "step": e["step"]} for e in self.events
                if e["stopped"] and e["reason"] == BlowupGuard.reason]

    def n_valid_frames(self):
        """Frames saved before each replica stopped (or the run ended), (n_replicas,) int."""
        steps = (np.arange(len(self.frames)) + 1) * self.save_every
        last = np.iinfo(np.int64).max if self.step is None else np.asarray(self.step) + 1
        stop = np.where(self.stopped_at < 0, last, self.stopped_at)
        return (steps[:, None] < stop[None, :]).sum(axis=0)

    def replica_frames(self, i):
        """The valid frames of replica ``i``, (n_valid, n_beads, 3) nm."""
        return self.frames[: self.n_valid_frames()[i], i]


class Simulation:
    """Batched Langevin dynamics of ``positions`` (n_replicas, n_beads, 3) nm.

    ``forces``: ``F(R)`` kJ/mol/nm for R (n, n_beads, 3) nm, or a pair (fast, slow) for a multiple-time-step
    integrator; with ``indexed`` they are called ``F(R, replicas)`` with the replica indices (n,) of R's rows
    (forces that differ between replicas, e.g. umbrella windows). ``integrator``: a
    :class:`cgdml.simulate.integrators.Integrator`. masses (n_beads,) amu; temperature K; ``seed`` an int or a
    SeedSequence. ``reporters``: see :mod:`cgdml.simulate.reporters`; a :class:`BlowupGuard` is added when
    there is none. ``name``: a label for log messages (e.g. a replica group). :meth:`run` runs the steps and
    returns a :class:`SimulationResult`; the state is then in ``positions``, ``velocities``, ``forces``
    (``slow_forces``), ``step``, ``alive``, ``stopped_at`` and ``events``.
    """

    def __init__(self, forces, positions, integrator, *, masses, temperature, seed=0, reporters=(), indexed=False,
                 name=None):
        x0 = np.array(positions, dtype=np.float64)
        if x0.ndim != 3 or x0.shape[2] != 3 or x0.shape[0] < 1:
            raise CgdmlError(f"start coordinates must have shape (n_replicas, n_beads, 3), got {x0.shape}")
        if not np.isfinite(x0).all():
            raise CgdmlError("start coordinates contain NaN or inf")
        masses = np.asarray(masses, dtype=np.float64).reshape(-1)
        if masses.shape != (x0.shape[1],) or not (masses > 0).all():
            raise CgdmlError(f"masses must be {x0.shape[1]} positive numbers (amu), got {masses}")
        pair = isinstance(forces, (tuple, list))
        if pair and len(forces) != 2:
            raise CgdmlError(f"force_fn must be a callable or a pair (fast, slow), got {len(forces)} items")
        fast, slow = forces if pair else (forces, None)
        if not (callable(fast) and (slow is None or callable(slow))):
            got = type(slow if callable(fast) else fast).__name__
            raise CgdmlTypeError(f"forces must be a callable F(R) or a pair (fast, slow) of callables, got {got} "
                                 "(for a CGModel pass model.forces, or run it with cgdml.simulate_model(model))")
        if pair != integrator.pair:
            raise CgdmlError(f"the {type(integrator).__name__} integrator needs "
                             f"{'a (fast, slow) force pair' if integrator.pair else 'one force function'}")
        self.fast, self.slow, self.integrator, self.indexed = fast, slow, integrator, bool(indexed)
        self.x0, self.masses, self.temperature, self.seed = x0, masses, float(temperature), seed
        self.reporters = list(reporters)
        if not any(isinstance(r, BlowupGuard) for r in self.reporters):
            self.reporters.insert(0, BlowupGuard())
        self.name = name
        self.n_steps = None

    @property
    def shape(self):
        return self.x0.shape

    @property
    def n_replicas(self):
        return self.x0.shape[0]

    def fingerprint(self, tag=None):
        """JSON text of the settings that define the run (a checkpoint resumes only a run with the same)."""
        seed = self.seed
        if isinstance(seed, np.random.SeedSequence):
            seed = {"entropy": int(seed.entropy), "spawn_key": [int(k) for k in seed.spawn_key]}
        settings = {**self.integrator.settings(), "temperature": self.temperature, "n_steps": self.n_steps,
                    "seed": seed if isinstance(seed, dict) else int(seed), "masses": self.masses.tolist(),
                    "shape": list(self.shape), "x0_sha256": hashlib.sha256(self.x0.tobytes()).hexdigest(),
                    "tag": tag}
        for r in self.reporters:
            settings.update(r.settings())
        return json.dumps(settings, sort_keys=True)

    # ------------------------------------------------------------------------------------------ state

    def state_arrays(self):
        """The loop's state as checkpoint arrays."""
        out = {"positions": self.positions, "velocities": self.velocities, "forces": self.forces,
               "step": np.int64(self.step), "rng_state": np.array(json.dumps(self.rng.bit_generator.state)),
               "alive": self.alive, "stopped_at": self.stopped_at, "events_json": np.array(json.dumps(self.events))}
        if self.slow_forces is not None:
            out["slow_forces"] = self.slow_forces
        return out

    def restore_state(self, fields):
        """Set the state from checkpoint ``fields`` (a :class:`cgdml._io.Fields`), checked field by field."""
        n = self.n_replicas
        alive = fields.get("alive", lambda v: as_array(v, "b", ndim=1))
        if alive.shape != (n,):
            raise CgdmlError(f"damaged field 'alive' (shaped {alive.shape}, expected ({n},))")
        step = fields.get("step", as_int)
        if not 0 <= step <= self.n_steps:
            raise CgdmlError(f"damaged field 'step' ({step}, not in 0..{self.n_steps})")
        names = ("positions", "velocities", "forces") + (("slow_forces",) if self.integrator.pair else ())
        arrays = {name: fields.get(name, lambda v: as_array(v, "f", shape=self.shape)) for name in names}
        stopped_at = fields.get("stopped_at", lambda v: as_array(v, "i", shape=(n,)))
        state = restore_rng(fields)
        self.step, self.alive, self.stopped_at = step, alive, stopped_at
        self.positions, self.velocities, self.forces = arrays["positions"], arrays["velocities"], arrays["forces"]
        self.slow_forces = arrays.get("slow_forces")
        self.rng.bit_generator.state = state
        self.events = restore_events(fields, alive, stopped_at)

    def _call(self, which, R, rows):
        """Forces ``which`` ("fast" or "slow") of the rows ``rows`` (replica indices), timed."""
        t = time.perf_counter()
        fn = self.fast if which == "fast" else self.slow
        F = np.asarray(fn(R, rows) if self.indexed else fn(R), dtype=np.float64)
        self.timings[which] += time.perf_counter() - t
        return F

    def _start_fresh(self):
        """Step 0: start velocities, forces, and the guards' verdict on the start configurations."""
        x, rows = self.x0.copy(), np.arange(self.n_replicas)
        self.positions = x
        self.velocities = self.integrator.initial_velocities(self.rng, x.shape)
        self.forces = np.array(self._call("fast", x, rows))
        if self.forces.shape != x.shape:
            raise CgdmlError(f"force function returned shape {self.forces.shape}, expected {x.shape}")
        self.slow_forces = None
        if self.integrator.pair:
            self.slow_forces = np.array(self._call("slow", x, rows))
            if self.slow_forces.shape != x.shape:
                raise CgdmlError(f"slow force function returned shape {self.slow_forces.shape}, expected {x.shape}")
        trial = Trial(0, rows, x, self.velocities, self.forces, self.slow_forces)
        self._check(trial)
        bad = trial.stopped
        self.alive[bad], self.stopped_at[bad] = False, 0
        self.forces[bad] = 0.0
        if self.slow_forces is not None:
            self.slow_forces[bad] = 0.0

    def _check(self, trial):
        """Run the guards on ``trial``; their events go to ``self.events`` (also when one ends the run)."""
        try:
            for r in self.reporters:
                if trial.step % r.every == 0:
                    r.check(self, trial)
        except StopRun as stop:
            self.halted = {"step": trial.step, "reason": str(stop)}
            raise
        finally:
            self.events += trial.events

    def _advance(self):
        """One step of every live replica; the guards may stop some (they keep their last accepted state)."""
        step = self.step + 1
        xi = self.rng.standard_normal(self.shape)            # drawn for all replicas: fixed stream per step
        idx = slice(None) if self.alive.all() else np.flatnonzero(self.alive)
        rows = np.arange(self.n_replicas)[idx]
        x, v, F = self.positions, self.velocities, self.forces
        Fs = None if self.slow_forces is None else self.slow_forces[idx]
        xn, vn, Fn, Fsn = self.integrator.step(step, x[idx], v[idx], F[idx], Fs, xi[idx],
                                               lambda R: self._call("fast", R, rows),
                                               lambda R: self._call("slow", R, rows))
        trial = Trial(step, rows, xn, vn, Fn, Fsn)
        self._check(trial)
        bad = trial.stopped
        if bad.any():
            good = ~bad
            keep = rows[good]
            x[keep], v[keep], F[keep] = xn[good], vn[good], Fn[good]
            if Fsn is not None:
                self.slow_forces[keep] = Fsn[good]
            self.alive[rows[bad]], self.stopped_at[rows[bad]] = False, step
        elif isinstance(idx, slice):
            self.positions, self.velocities, self.forces = xn, vn, Fn
            if Fsn is not None:
                self.slow_forces = Fsn
        else:
            x[idx], v[idx], F[idx] = xn, vn, Fn
            if Fsn is not None:
                self.slow_forces[idx] = Fsn
        self.step = step
        for r in self.reporters:
            if step % r.every == 0:
                r.report(self)

    # ------------------------------------------------------------------------------------------ run

    def run(self, n_steps):
        """Run until step ``n_steps`` (a resumed run continues to it); returns a :class:`SimulationResult`.
        Raises :class:`cgdml.simulate.AllBlownUp` when every replica blows up."""
        if not (isinstance(n_steps, (int, np.integer)) and n_steps >= 1):
            raise CgdmlError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        k = self.integrator.slow_every
        if n_steps % k:
            raise CgdmlError(f"n_steps ({n_steps}) must be a multiple of slow_every ({k})")
        t_start = time.perf_counter()
        self.n_steps = int(n_steps)
        self.reporters.sort(key=lambda r: r.order)
        self.integrator.setup(self.masses, thermal_energy(self.temperature))
        self.rng = np.random.default_rng(self.seed)
        self.alive = np.ones(self.n_replicas, dtype=bool)
        self.stopped_at = np.full(self.n_replicas, -1, dtype=np.int64)
        self.events, self.halted, self.timings = [], None, {"fast": 0.0, "slow": 0.0}
        self.step, resumed_from = 0, None
        if any(r.resume(self) for r in self.reporters):
            resumed_from = self.step
        start_step = self.step
        try:
            for r in self.reporters:
                r.start(self)
            if resumed_from is None:
                self._start_fresh()
            while self.step < self.n_steps and self.alive.any():
                self._advance()
        except StopRun as stop:
            log.warning("run stopped at step %d: %s", self.halted["step"], stop)
        finally:
            for r in self.reporters:
                r.finish(self)
        return self._result(time.perf_counter() - t_start, self.step - start_step, resumed_from)

    def _result(self, wall, done, resumed_from):
        traj = next((r for r in self.reporters if isinstance(r, TrajectoryReporter)), None)
        if traj is not None:
            frames, vframes, save_every = traj.frames, traj.velocity_frames, traj.save_every
        else:
            frames, vframes, save_every = np.zeros((0, *self.shape), np.float32), None, self.n_steps
        t = self.timings
        timings = {"wall_s": wall, "force_s": t["fast"] + t["slow"],
                   **({"slow_force_s": t["slow"]} if self.integrator.pair else {}),
                   "steps": done, "resumed_from_step": resumed_from,
                   "steps_per_s": done / wall if wall > 0 else float("nan"),
                   "replica_steps_per_s": done * self.n_replicas / wall if wall > 0 else float("nan")}
        return SimulationResult(frames, self.alive, self.stopped_at, self.positions, self.velocities, save_every,
                                timings, vframes, self.events, self.step, self.halted)
