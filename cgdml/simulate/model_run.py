"""Simulating a fitted CG model with the defaults of ``python -m cgdml.simulate``: :func:`simulate_model`.

The command is a thin layer over :func:`simulate_model`, so a Python user gets the same run (the same arrays,
bit for bit, for the same seed). The defaults (:data:`DEFAULTS`) and the rules that complete them are in
:func:`run_settings`; why they are what they are: docs/method.md §2.7.

Uncertainty guard: a model with a force posterior (``model.uncertainty``) is watched by a
:class:`~cgdml.simulate.reporters.ThresholdGuard` on ``model.force_uncertainty`` every ``guard_every`` steps
(default ``DEFAULTS["guard_every"]``); a replica above the threshold (default: the model's
``uncertainty_threshold``) has left the training data, and ``guard`` says what then happens: "warn" (the
default: an event in the trajectory's JSON, one warning with the count), "stop-replica", "stop-run" or "off".
The default interval keeps the guard's share of a default run's time within 10% (docs/uncertainty.md §10).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import CgdmlError, CgdmlTypeError, atomic_path, check_memory, save_json
from ..kernels import PRECISIONS
from ..validation import is_positive_number
from .integrators import INTEGRATORS
from .replicas import group_checkpoints, simulate
from .reporters import ThresholdGuard, bond_blowup

# Langevin is multiple-time-step BAOAB: 3 fs inner steps (the prior and basin offsets), the GDML force every
# 2 steps (a 6 fs outer step), the fastest setting that kept the landscape and every bond and angle
# distribution on two maps (docs/method.md §2.7). A dt of one's own alone means plain BAOAB at that step.
# Friction 1/ps crosses alanine dipeptide's (phi, psi) basins quickly: ~100 ps per replica after a ~20 ps
# burn-in. Overdamped Euler-Maruyama depends only on dt / gamma; it crosses basins several times more slowly.
# The uncertainty guard evaluates the force posterior every guard_every steps: one evaluation for 100 replicas
# costs some tens of default steps for a 5-bead model, so every 1000 steps keeps it well within 10% of the run
# (measured: docs/uncertainty.md §10); a multiple of save_every, so that the frame at an event is the
# configuration the guard saw.
# The GDML force's kernel sums run in float32 (about the training descriptors' centre, final combination in
# float64): ~1e-5 relative force error, NVE drift as float64's, the tetrapeptide's landscapes within their bootstrap
# intervals of float64's, ~1.5x the throughput of the 14-bead two-layer model (benchmarks/results/bench_beads.md).
DEFAULTS = {"replicas": 100, "steps": 34000, "save_every": 100, "burn_in": 6800, "guard_every": 1000,
            "precision": "float32",
            "langevin": {"dt": 0.003, "friction": 1.0, "slow_every": 2},
            "overdamped": {"dt": 0.002, "friction": 1000.0, "slow_every": 1}}
GUARDS = ("warn", "stop-replica", "stop-run", "off")
GUARD_REASON = "force uncertainty"   # the events' reason


def default_burn_in(steps):
    """Leading steps not written: ``DEFAULTS["burn_in"]``, or steps // 5 for runs shorter than twice that."""
    return DEFAULTS["burn_in"] if DEFAULTS["burn_in"] <= steps // 2 else steps // 5


def run_settings(*, replicas=DEFAULTS["replicas"], steps=DEFAULTS["steps"], burn_in=None, dt=None, slow_every=None,
                 friction=None, integrator="langevin", save_every=DEFAULTS["save_every"], temperature=None, seed=0,
                 checkpoint_every=None, blowup_factor=2.0, threads=1, tasks=1, jobs=1, scheduler=None, guard="warn",
                 guard_every=None, guard_threshold=None, precision=DEFAULTS["precision"], spell=str):
    """The settings of a model run with the defaults completed and checked: a dict with these same keys.

    dt ps (default by integrator, :data:`DEFAULTS`); slow_every: the GDML force every K steps (default 2 with
    the default dt, else 1: a dt of one's own alone means plain BAOAB); friction 1/ps (default by integrator);
    burn_in steps (:func:`default_burn_in`); temperature K (None: the model's); guard one of :data:`GUARDS`,
    guard_every steps (default ``DEFAULTS["guard_every"]``), guard_threshold kJ/mol/nm (None: the model's);
    precision of the GDML kernel sums, "float64" or "float32" (:meth:`cgdml.model.CGModel.with_precision`).
    ``spell(name)``: how a message names a parameter (the command passes its option names). A bad value is a
    one-line :class:`CgdmlError`.
    """
    if integrator not in INTEGRATORS:
        raise CgdmlError(f"{spell('integrator')} must be one of {', '.join(INTEGRATORS)}, got {integrator!r}")
    if temperature is not None and not (temperature > 0 and np.isfinite(temperature)):
        raise CgdmlError(f"{spell('temperature')} must be > 0 K, got {temperature:g}")
    defaults = DEFAULTS[integrator]
    default_k = slow_every is None and dt is None
    if slow_every is None:
        slow_every = defaults["slow_every"] if dt is None else 1
    dt = defaults["dt"] if dt is None else dt
    friction = defaults["friction"] if friction is None else friction
    for name, value in (("replicas", replicas), ("steps", steps), ("save_every", save_every),
                        ("slow_every", slow_every), ("threads", threads)) + \
            ((("checkpoint_every", checkpoint_every),) if checkpoint_every is not None else ()):
        if not value >= 1:
            raise CgdmlError(f"{spell(name)} must be >= 1, got {value}")
    if not dt > 0:
        raise CgdmlError(f"{spell('dt')} must be > 0 ps, got {dt}")
    if not friction > 0:
        raise CgdmlError(f"{spell('friction')} must be > 0 /ps, got {friction}")
    if slow_every > 1 and integrator != "langevin":
        raise CgdmlError(f"{spell('slow_every')} > 1 (multiple time steps) needs {spell('integrator')} langevin")
    if steps % slow_every or save_every % slow_every:
        why = f" (the default with the default {spell('dt')}; {spell('slow_every')} 1 runs plain BAOAB)" \
            if default_k else ""
        raise CgdmlError(f"{spell('steps')} ({steps}) and {spell('save_every')} ({save_every}) must be multiples of "
                         f"{spell('slow_every')} ({slow_every}{why})")
    if save_every > steps:
        raise CgdmlError(f"{spell('save_every')} {save_every} is larger than {spell('steps')} {steps}: nothing "
                         "would be saved")
    burn_in = default_burn_in(steps) if burn_in is None else burn_in
    if not 0 <= burn_in < steps:
        raise CgdmlError(f"{spell('burn_in')} must be between 0 and {spell('steps')} - 1 ({steps - 1}), got {burn_in}")
    if steps - burn_in < save_every:
        raise CgdmlError(f"no frame would be written: {spell('steps')} {steps} minus {spell('burn_in')} {burn_in} is "
                         f"less than {spell('save_every')} {save_every}")
    if not 1 <= tasks <= replicas:
        raise CgdmlError(f"{spell('tasks')} must be between 1 and {spell('replicas')} ({replicas}), got {tasks}")
    if jobs == 0:
        raise CgdmlError(f"{spell('jobs')} must be >= 1 (or negative: all cores but |n| - 1), got 0")
    if not blowup_factor > 1:
        raise CgdmlError(f"{spell('blowup_factor')} must be > 1, got {blowup_factor}")
    if guard not in GUARDS:
        raise CgdmlError(f"{spell('guard')} must be one of {', '.join(GUARDS)}, got {guard!r}")
    guard_every = DEFAULTS["guard_every"] if guard_every is None else guard_every
    if not (isinstance(guard_every, (int, np.integer)) and guard_every >= 1):
        raise CgdmlError(f"{spell('guard_every')} must be an integer >= 1 (steps), got {guard_every!r}")
    if guard_threshold is not None and not is_positive_number(guard_threshold):
        raise CgdmlError(f"{spell('guard_threshold')} must be a number > 0 (kJ/mol/nm), got {guard_threshold!r}")
    if not (isinstance(precision, str) and precision in PRECISIONS):
        raise CgdmlError(f"{spell('precision')} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if scheduler is not None:
        from ..distributed import check_scheduler

        check_scheduler(scheduler)
    return dict(replicas=int(replicas), steps=int(steps), burn_in=int(burn_in), dt=float(dt),
                slow_every=int(slow_every), friction=float(friction), integrator=integrator,
                save_every=int(save_every), temperature=temperature, seed=int(seed),
                checkpoint_every=checkpoint_every, blowup_factor=float(blowup_factor), threads=int(threads),
                tasks=int(tasks), jobs=int(jobs), scheduler=scheduler, guard=guard, guard_every=int(guard_every),
                guard_threshold=None if guard_threshold is None else float(guard_threshold), precision=precision)


def start_configurations(model, n_replicas, seed=0, start=None):
    """Start coordinates (n_replicas, n_beads, 3) nm: random frames of ``start`` (a CGDataset or coordinates
    (n, n_beads, 3) nm) or of the model's training sample, drawn with a generator derived from ``seed`` (so a
    rerun picks the same)."""
    pool = model.train_coords_sample if start is None else getattr(start, "coords", start)
    pool = np.asarray(pool, dtype=np.float64)
    if pool.ndim != 3 or pool.shape[1:] != (model.n_beads, 3):
        raise CgdmlError(f"start configurations have shape {pool.shape[1:]}, the model needs ({model.n_beads}, 3)")
    if len(pool) == 0:
        raise CgdmlError("no start configurations available")
    rng = np.random.default_rng([int(seed), 0x5EED])
    pick = rng.choice(len(pool), size=n_replicas, replace=n_replicas > len(pool))
    return pool[pick]


def model_sha256(model):
    """A hash of a CG model's force field (GDML, prior and basin offsets), for checkpoint fingerprints."""
    h = hashlib.sha256()
    parts = [("gdml", model.gdml), ("prior", model.prior)] + ([("offsets", model.offsets)] if model.offsets is not None else [])
    for prefix, part in parts:
        for key, value in sorted(part.to_arrays().items()):
            a = np.ascontiguousarray(value)
            h.update(f"{prefix}/{key}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def write_trajectory(path, result, topology, dt, skip=0):
    """Write every replica's valid frames after the first ``skip`` saved ones (burn-in), one replica after
    another, to one mdtraj file (format by suffix), atomically. ``topology``: an mdtraj Topology; dt ps.
    Returns per-replica frame counts (n_replicas,)."""
    import mdtraj as md

    counts, xyz, times = _written_frames(result, dt, skip)
    if counts.sum() == 0:
        raise CgdmlError(f"{path}: no frames to write (every replica stopped during the burn-in)")
    traj = md.Trajectory(xyz, topology, time=times)
    with atomic_path(path) as tmp:
        try:
            traj.save(str(tmp), force_overwrite=True)
        except OSError:
            raise                                   # atomic_path reports it with the path
        except Exception as exc:                    # e.g. PyTables errors on a full disk
            raise CgdmlError(f"{path}: cannot write trajectory ({type(exc).__name__}: {exc})") from None
    return counts


def _written_frames(result, dt, skip):
    """(counts (n_replicas,), frames (n, n_beads, 3) float32 nm, times (n,) ps) after ``skip`` saved frames."""
    valid = result.n_valid_frames()
    counts = np.maximum(valid - skip, 0)
    xyz = np.concatenate([result.frames[skip:v, i] for i, v in enumerate(valid)], axis=0).astype(np.float32)
    times = np.concatenate([(skip + np.arange(c) + 1) * result.save_every * dt for c in counts])
    return counts, xyz, times


@dataclass
class ModelRun:
    """What :func:`simulate_model` ran: ``result`` (a :class:`SimulationResult`, burn-in included),
    ``settings`` (those of the JSON sidecar), ``topology`` (the model's CGTopology), ``dt`` ps, ``burn_in``
    steps. Its trajectory holds every replica's frames after the burn-in, one replica after another."""

    result: object
    settings: dict
    topology: object
    dt: float
    burn_in: int

    @property
    def skip(self):
        """Saved frames of each replica that fall in the burn-in."""
        return self.burn_in // self.result.save_every

    def frames_per_replica(self):
        """Frames each replica contributes to the trajectory, (n_replicas,) int."""
        return np.maximum(self.result.n_valid_frames() - self.skip, 0)

    def coordinates(self):
        """The trajectory's frames (n_frames, n_beads, 3) float32 nm, one replica after another."""
        return _written_frames(self.result, self.dt, self.skip)[1]

    def trajectory(self):
        """The trajectory as an mdtraj Trajectory (times in ps)."""
        import mdtraj as md

        _, xyz, times = _written_frames(self.result, self.dt, self.skip)
        return md.Trajectory(xyz, self.topology.to_mdtraj(), time=times)

    def write_trajectory(self, path):
        """Write the trajectory (.h5, .dcd, .xtc, ...) atomically; returns the frames per replica."""
        return write_trajectory(path, self.result, self.topology.to_mdtraj(), self.dt, self.skip)

    def pdb_text(self):
        """The CG topology as PDB text, at the final configuration of the first replica still running."""
        return self.topology.to_pdb(self.result.positions[int(np.argmax(self.result.alive))])

    def events(self):
        """The run's events (:attr:`SimulationResult.events`), each with ``time_ps`` and ``frame``: the index in the
        trajectory of the replica's last frame written at or before the event (before it, for a stop; the frame
        the guard saw when the step is a multiple of save_every), None when that falls in the burn-in. A step that
        was not accepted (a stop, or a warning at the step where a guard ended the run) counts as the step before."""
        r, counts = self.result, self.frames_per_replica()
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        last = np.broadcast_to(np.asarray(r.step if r.step is not None else np.iinfo(np.int64).max), counts.shape)
        out = []
        for e in r.events:
            i, step = int(e["replica"]), int(e["step"])
            accepted = not e["stopped"] and step <= last[i]
            k = (step if accepted else step - 1) // r.save_every - 1 - self.skip   # written frame of replica i
            frame = int(offsets[i] + k) if 0 <= k < counts[i] else None
            out.append({**e, "time_ps": step * self.dt, "frame": frame})
        return out

    def guard_events(self):
        """The events of the uncertainty guard (see :meth:`events`)."""
        return [e for e in self.events() if e["reason"] == GUARD_REASON]

    def sidecar(self, trajectory_name):
        """The JSON sidecar of the trajectory file ``trajectory_name``: settings, frames, stops, timings."""
        r, t = self.result, self.result.timings
        counts = self.frames_per_replica()
        out = {"trajectory": str(trajectory_name), "settings": self.settings, "n_replicas": len(r.alive),
               "frames_per_replica": counts.tolist(), "n_frames": int(counts.sum()),
               "frame_time_ps": r.save_every * self.dt, "blowups": r.blowups,
               "n_blown_up": len(r.blowups), "events": self.events(), "timings": t,
               "ns_per_day_per_replica": (t["steps_per_s"] * self.dt * 86400 / 1000) if t["steps"] else None}
        if r.halted:
            out["halted"] = r.halted
        return out

    def save(self, path):
        """Write the trajectory ``path`` with its CG PDB (``.pdb``) and JSON sidecar (``.json``) beside it."""
        path = Path(path)
        self.write_trajectory(path)
        with atomic_path(path.with_suffix(".pdb")) as tmp:
            tmp.write_text(self.pdb_text())
        save_json(path.with_suffix(".json"), self.sidecar(path.name))


def _limited_threads(threads):
    """A context: numba and BLAS limited to ``threads`` threads."""
    import contextlib

    import numba
    from threadpoolctl import threadpool_limits

    @contextlib.contextmanager
    def limit():
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with threadpool_limits(limits=threads):
                yield
        finally:
            numba.set_num_threads(before)                      # we may run inside a notebook or test

    return limit()


def _uncertainty_guard(model, s):
    """(ThresholdGuard or None, the guard's settings for the sidecar) of a run with settings ``s``."""
    action, every = s["guard"], s["guard_every"]
    if action == "off":
        return None, {"action": "off"}
    if not model.has_uncertainty:
        return None, {"action": "off", "why": "the model has no force uncertainty (fitted by an older cgdml, or "
                      "with --no-uncertainty): it ran without the uncertainty guard; refit to get one"}
    threshold = model.uncertainty_threshold if s["guard_threshold"] is None else s["guard_threshold"]
    if threshold is None:
        return None, {"action": "off", "why": "the model stores no uncertainty threshold: it ran without the "
                      "uncertainty guard; give guard_threshold (--guard-threshold) to guard the run"}
    guard = ThresholdGuard(model.force_uncertainty, threshold, every=every, action=action, reason=GUARD_REASON)
    return guard, {"action": action, "every": every, "threshold": float(threshold),
                   "threshold_from": "the model" if s["guard_threshold"] is None else "the user"}


def _warn_guard_events(run, settings):
    """One warning with the count of replicas that crossed the uncertainty threshold (none: no warning)."""
    events = run.guard_events()
    if not events:
        return
    n = len({e["replica"] for e in events})
    first = min(events, key=lambda e: e["step"])
    what = {"warn": "they ran on; their frames after the event are outside the training data",
            "stop-replica": "they were stopped", "stop-run": "the run stopped there"}[settings["action"]]
    warnings.warn(f"{n} of {len(run.result.alive)} replicas crossed the force-uncertainty threshold "
                  f"{settings['threshold']:.4g} kJ/mol/nm (checked every {settings['every']} steps; first at step "
                  f"{first['step']}, {first['time_ps']:g} ps): {what} (events with step and frame in the "
                  "trajectory's JSON)", stacklevel=3)


def simulate_model(model, *, replicas=DEFAULTS["replicas"], steps=DEFAULTS["steps"], burn_in=None, dt=None,
                   slow_every=None, friction=None, integrator="langevin", save_every=DEFAULTS["save_every"],
                   temperature=None, seed=0, start=None, checkpoint=None, checkpoint_every=None, blowup_factor=2.0,
                   threads=1, tasks=1, jobs=1, scheduler=None, guard="warn", guard_every=None, guard_threshold=None,
                   precision=DEFAULTS["precision"], progress=True, reporters=(), output=None):
    """Simulate a fitted CG model as ``python -m cgdml.simulate`` does; returns a :class:`ModelRun`.

    ``model``: a :class:`cgdml.model.CGModel` or the path of one. Replicas start from frames of ``start`` (a
    CGDataset, its path, or coordinates (n, n_beads, 3) nm; default: the model's training sample) and run
    ``steps`` steps (multiple-time-step BAOAB by default, see :func:`run_settings` for every default); a replica
    whose bond stretches beyond ``blowup_factor`` times the longest training bond, or whose state turns
    non-finite, is stopped. ``checkpoint``: an .npz to resume from and save to (every ``checkpoint_every``
    steps); ``threads`` for the force calls; ``tasks`` independent replica groups, run in ``jobs`` local
    processes or on a Dask ``scheduler``; ``reporters``: more guards (:mod:`cgdml.simulate.reporters`).
    ``guard``: what a replica whose force uncertainty exceeds ``guard_threshold`` (kJ/mol/nm; default the
    model's ``uncertainty_threshold``), checked every ``guard_every`` steps, causes: "warn" (default), "stop-replica",
    "stop-run" or "off" (see the module docstring); a model without a force posterior runs unguarded, with a
    warning that says so. ``precision``: "float32" (default) or "float64" kernel sums for the GDML force (the
    guard's posterior stays float64; accuracy and speed: benchmarks/results/bench_beads.md). ``output``: write the
    trajectory there, with its .pdb and .json (the checkpoint is then removed).
    """
    from ..data import CGDataset
    from ..model import CGModel

    if not isinstance(model, (CGModel, str, os.PathLike)):
        raise CgdmlTypeError(f"simulate_model takes a CGModel or the path of a model file, got "
                             f"{type(model).__name__} (fit one with cgdml.fit_cg_model, load one with CGModel.load)")
    if not (start is None or isinstance(start, (CGDataset, str, os.PathLike, np.ndarray, list, tuple))):
        raise CgdmlTypeError(f"start must be a CGDataset, its path or coordinates (n, n_beads, 3) nm, got "
                             f"{type(start).__name__}")
    s = run_settings(replicas=replicas, steps=steps, burn_in=burn_in, dt=dt, slow_every=slow_every, friction=friction,
                     integrator=integrator, save_every=save_every, temperature=temperature, seed=seed,
                     checkpoint_every=checkpoint_every, blowup_factor=blowup_factor, threads=threads, tasks=tasks,
                     jobs=jobs, scheduler=scheduler, guard=guard, guard_every=guard_every,
                     guard_threshold=guard_threshold, precision=precision)
    model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
    start_name = str(start) if isinstance(start, (str, os.PathLike)) else None
    if model_name:
        model = CGModel.load(model)
    if start_name:
        start = CGDataset.load(start)
        if start.n_beads != model.n_beads:
            raise CgdmlError(f"{start_name}: dataset has {start.n_beads} beads, "
                             f"{f'model {model_name}' if model_name else 'the model'} has {model.n_beads}")
    n_saved = s["steps"] // s["save_every"]          # the run keeps every saved frame in memory (float32)
    check_memory(n_saved * s["replicas"] * model.n_beads * 3 * 4.0,
                 f"the trajectory of {s['replicas']} replicas x {n_saved} saved frames x {model.n_beads} beads",
                 "lower replicas or steps, or raise save_every")
    temperature = model.temperature if s["temperature"] is None else s["temperature"]
    x0 = start_configurations(model, s["replicas"], s["seed"], start)
    model.warn_if_out_of_range(x0, what=f"start configurations (from {start_name or model_name or 'the model'})")
    blowup_nm = s["blowup_factor"] * model.max_bond_length
    blowup = bond_blowup(model.bond_pairs, blowup_nm) if len(model.bond_pairs) else None
    settings = {"model": model_name, "replicas": s["replicas"], "steps": s["steps"], "dt_ps": s["dt"],
                "save_every": s["save_every"], "integrator": s["integrator"], "friction_per_ps": s["friction"],
                "temperature_K": float(temperature), "seed": s["seed"], "start": start_name,
                "burn_in_steps": s["burn_in"], "blowup_bond_nm": blowup_nm, "tasks": s["tasks"],
                "slow_every": s["slow_every"], "precision": s["precision"]}
    guard_reporter, guard_settings = _uncertainty_guard(model, s)
    settings["guard"] = guard_settings
    tag = {"model_sha256": model_sha256(model), "blowup": blowup_nm}
    if guard_reporter is not None:
        tag["guard"] = {k: guard_settings[k] for k in ("action", "every", "threshold")}
    if s["precision"] != "float64":              # float64 runs keep the tag of earlier versions' checkpoints
        tag["precision"] = s["precision"]
    model = model.with_precision(s["precision"])
    forces = (model.fast_forces, model.slow_forces) if s["slow_every"] > 1 else model.forces
    with _limited_threads(s["threads"]):
        result = simulate(forces, x0, masses=model.masses, temperature=temperature, dt=s["dt"], n_steps=s["steps"],
                          save_every=s["save_every"], integrator=s["integrator"], friction=s["friction"],
                          seed=s["seed"], checkpoint=checkpoint, checkpoint_every=s["checkpoint_every"],
                          blowup=blowup, progress=progress, checkpoint_tag=tag,
                          n_groups=s["tasks"], n_jobs=s["jobs"], scheduler=s["scheduler"],
                          slow_every=s["slow_every"],
                          reporters=list(reporters) + ([guard_reporter] if guard_reporter is not None else []))
    if result.alive.any():
        model.warn_if_out_of_range(result.positions[result.alive], what="final replica configurations")
    run = ModelRun(result, settings, model.cg_topology, s["dt"], s["burn_in"])
    if guard_reporter is not None:
        _warn_guard_events(run, guard_settings)
    elif "why" in guard_settings:          # said after the run, so that an error during it stays one line
        warnings.warn(guard_settings["why"], stacklevel=2)
    if output is not None:
        run.save(output)
        if checkpoint is not None:
            for path in group_checkpoints(checkpoint, s["tasks"]):
                path.unlink(missing_ok=True)
    return run

