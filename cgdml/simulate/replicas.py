""":func:`simulate`: the one-call form of a :class:`Simulation` with the usual reporters, for one replica group or
several independent ones (local processes or a Dask cluster, see :mod:`cgdml.distributed`).

With ``n_groups`` K > 1 the replicas are split into K consecutive groups, each an independent run with its own
random stream (``SeedSequence(seed).spawn(K)``) and its own checkpoint, in one thread; the result is the same
bit for bit wherever the groups run.
"""
from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np

from .._io import CgdmlError
from .integrators import make_integrator
from .reporters import (AllBlownUp, BlowupGuard, CheckpointReporter, ProgressReporter, TrajectoryReporter)
from .simulation import Simulation, SimulationResult


def group_checkpoints(checkpoint, n_groups):
    """Checkpoint paths of the ``n_groups`` replica groups: ``checkpoint`` itself for one group, else
    ``NAME.g0.npz``, ``NAME.g1.npz``, ... for ``NAME.npz``."""
    path = Path(checkpoint)
    if n_groups == 1:
        return [path]
    stem = path.name[:-4] if path.name.endswith(".npz") else path.name
    return [path.with_name(f"{stem}.g{g}.npz") for g in range(n_groups)]


def simulate(force_fn, x0, *, masses, temperature, dt, n_steps, save_every=100, integrator="overdamped",
             friction=None, seed=0, checkpoint=None, checkpoint_every=None, blowup=None, progress=True,
             save_velocities=False, checkpoint_tag=None, n_groups=1, n_jobs=1, scheduler=None, indexed_forces=False,
             slow_every=1, reporters=()):
    """Run ``n_steps`` of Langevin dynamics for all replicas in ``x0`` (n_replicas, n_beads, 3) nm.

    masses (n_beads,) amu; temperature K; dt ps; friction gamma 1/ps (default 1 for langevin, 1000 for
    overdamped); ``force_fn(R) -> F`` batched, kJ/mol/nm, or a pair ``(fast, slow)`` of such functions whose
    sum is the force: multiple-time-step BAOAB with the slow one every ``slow_every`` steps (langevin only;
    n_steps and save_every multiples of it). ``checkpoint``: path of an ``.npz`` written every
    ``checkpoint_every`` steps (default n_steps // 20); if it exists and was written with the same settings
    (``checkpoint_tag`` adds e.g. a model hash), the run resumes from it. ``blowup(R) -> bool (n,)`` flags
    replicas to stop besides NaN/inf. ``n_groups``: independent replica groups (see the module docstring), each
    checkpointed to its own file (:func:`group_checkpoints`); ``n_jobs`` local processes for them, or
    ``scheduler`` (a Dask address, scheduler file or Client; group checkpoints then need a file system the
    workers share). ``indexed_forces``: call ``force_fn(R, replicas)`` with the replica indices (n,) of R's rows,
    for forces that differ between replicas (umbrella windows); one group only. ``reporters``: more reporters
    (guards, see :mod:`cgdml.simulate.reporters`); each group gets its own copy.
    Returns a :class:`SimulationResult`; raises :class:`AllBlownUp` (a :class:`CgdmlError`) if every replica
    blows up, and then discards the checkpoint (a rerun with a smaller time step would find it in its way).
    """
    x0 = np.array(x0, dtype=np.float64)
    if x0.ndim != 3 or x0.shape[2] != 3 or x0.shape[0] < 1:
        raise CgdmlError(f"start coordinates must have shape (n_replicas, n_beads, 3), got {x0.shape}")
    n_steps, save_every = int(n_steps), int(save_every)
    if n_steps < 1 or save_every < 1:
        raise CgdmlError(f"n_steps and save_every must be >= 1, got {n_steps} and {save_every}")
    pair = isinstance(force_fn, (tuple, list))
    if pair and len(force_fn) != 2:
        raise CgdmlError(f"force_fn must be a callable or a pair (fast, slow), got {len(force_fn)} items")
    step = make_integrator(integrator, dt, friction, slow_every, pair)
    Simulation(force_fn, x0, step, masses=masses, temperature=temperature)      # checks x0, masses, forces
    if n_steps % step.slow_every or save_every % step.slow_every:
        raise CgdmlError(f"n_steps ({n_steps}) and save_every ({save_every}) must be multiples of "
                         f"slow_every ({step.slow_every})")
    if checkpoint_every is not None and int(checkpoint_every) < 1:
        raise CgdmlError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if not 1 <= int(n_groups) <= len(x0):
        raise CgdmlError(f"n_groups must be between 1 and the number of replicas ({len(x0)}), got {n_groups}")
    n_groups = int(n_groups)
    if indexed_forces and (n_groups != 1 or scheduler is not None):
        raise CgdmlError("indexed_forces needs a single replica group")
    run = dict(integrator=step, masses=masses, temperature=temperature, n_steps=n_steps, save_every=save_every,
               save_velocities=save_velocities, checkpoint_every=checkpoint_every, blowup=blowup,
               indexed=indexed_forces, reporters=list(reporters))
    try:
        if n_groups == 1 and scheduler is None:
            return _run_group(force_fn, x0, seed, dict(run, checkpoint=checkpoint, checkpoint_tag=checkpoint_tag,
                                                       progress=progress, copy_reporters=False))
        return _run_groups(force_fn, x0, seed, checkpoint, checkpoint_tag, progress, n_groups, n_jobs, scheduler, run)
    except AllBlownUp as exc:
        if checkpoint is None:
            raise
        dropped = [p for p in group_checkpoints(checkpoint, n_groups) if p.exists()]
        for path in dropped:
            path.unlink(missing_ok=True)
        note = f"; discarded its checkpoint {', '.join(map(str, dropped))}" if dropped else ""
        raise AllBlownUp(f"{exc}{note}") from None


def _run_group(force_fn, x0, seed, kw):
    """One Simulation with the trajectory, checkpoint, progress and blow-up reporters (``kw``, see
    :func:`simulate`); ``all_may_blow_up``: end (all replicas stopped) instead of raising."""
    extra = copy.deepcopy(kw["reporters"]) if kw.get("copy_reporters", True) else kw["reporters"]
    reporters = [BlowupGuard(kw["blowup"], raise_if_all=not kw.get("all_may_blow_up", False)),
                 TrajectoryReporter(kw["save_every"], kw["save_velocities"]), *extra]
    if kw["checkpoint"] is not None:
        reporters.append(CheckpointReporter(kw["checkpoint"], kw["checkpoint_every"], kw["checkpoint_tag"]))
    if kw["progress"]:
        reporters.append(ProgressReporter(kw.get("desc")))
    sim = Simulation(force_fn, x0, copy.copy(kw["integrator"]), masses=kw["masses"], temperature=kw["temperature"],
                     seed=seed, reporters=reporters, indexed=kw["indexed"], name=kw.get("desc"))
    return sim.run(kw["n_steps"])


def _run_groups(force_fn, x0, seed, checkpoint, checkpoint_tag, progress, n_groups, n_jobs, scheduler, run):
    from ..distributed import TaskRunner

    parts = np.array_split(x0, n_groups)
    seeds = [int(seed)] if n_groups == 1 else np.random.SeedSequence(int(seed)).spawn(n_groups)
    ckpts = [None] * n_groups if checkpoint is None else [p.resolve() for p in group_checkpoints(checkpoint, n_groups)]
    t0 = time.perf_counter()
    with TaskRunner(n_jobs, scheduler) as runner:
        runner.progress = progress and not runner.in_process    # a bar over groups run elsewhere
        progress = progress and runner.in_process               # a step bar per group run here
        fn = runner.share(_ForcePair(*force_fn) if isinstance(force_fn, (tuple, list)) else force_fn)
        tasks = []
        for g, (part, group_seed, ckpt) in enumerate(zip(parts, seeds, ckpts)):
            tag = checkpoint_tag if n_groups == 1 else {"tag": checkpoint_tag, "group": g, "n_groups": n_groups}
            tasks.append((_quiet_group, (fn, part, group_seed, dict(
                run, checkpoint=ckpt, checkpoint_tag=tag, progress=progress, all_may_blow_up=True,
                desc=f"simulate group {g + 1}/{n_groups} ({len(part)} replicas)"))))
        results = [None] * n_groups
        for g, result in runner.run(tasks, f"simulate {len(x0)} replicas in {n_groups} groups", limit_threads=True):
            results[g] = result
    return _merge_groups(results, time.perf_counter() - t0)


class _ForcePair:
    """A (fast, slow) force pair as one object, shared once with the workers."""

    def __init__(self, fast, slow):
        self.fast, self.slow = fast, slow


def _quiet_group(force_fn, x0, seed, kw):
    """One replica group (a task): blow-ups are collected, not warned about (the caller reports them)."""
    if isinstance(force_fn, _ForcePair):
        force_fn = (force_fn.fast, force_fn.slow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run_group(force_fn, x0, seed, kw)


def _merge_groups(results, wall):
    """One :class:`SimulationResult` with the groups' replicas in order."""
    sizes = [len(r.alive) for r in results]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    events = sorted(({**e, "replica": int(e["replica"] + off)} for r, off in zip(results, offsets) for e in r.events),
                    key=lambda e: (e["step"], e["replica"]))
    alive = np.concatenate([r.alive for r in results])
    stops = [e for e in events if e["stopped"]]
    if not alive.any() and all(e["reason"] == BlowupGuard.reason for e in stops):
        raise AllBlownUp(f"all {len(alive)} replicas blew up (last at step {max(e['step'] for e in stops)}); "
                         "reduce the time step or check the model")
    if stops:
        shown = ", ".join(f"{e['replica']} (step {e['step']}, {e['reason']})" for e in stops[:20])
        warnings.warn(f"replica(s) {shown}{' ...' if len(stops) > 20 else ''} were stopped; "
                      f"{alive.sum()} of {len(alive)} ran to the end", stacklevel=3)
    steps = max(r.timings["steps"] for r in results)
    resumed = [r.timings["resumed_from_step"] for r in results if r.timings["resumed_from_step"] is not None]
    timings = {"wall_s": wall, "force_s": sum(r.timings["force_s"] for r in results), "steps": steps,
               **({"slow_force_s": sum(r.timings["slow_force_s"] for r in results)}
                  if "slow_force_s" in results[0].timings else {}),
               "resumed_from_step": min(resumed) if resumed else None,
               "steps_per_s": steps / wall if wall > 0 else float("nan"),
               "replica_steps_per_s": sum(r.timings["steps"] * n for r, n in zip(results, sizes)) / wall
               if wall > 0 else float("nan"), "groups": len(results)}
    vframes = None if results[0].velocity_frames is None else np.concatenate([r.velocity_frames for r in results], 1)
    halted = [{**r.halted, "group": g} for g, r in enumerate(results) if r.halted]
    last = [r.step for r in results]
    last = last[0] if len(set(last)) == 1 else np.repeat(last, sizes)
    return SimulationResult(np.concatenate([r.frames for r in results], axis=1), alive,
                            np.concatenate([r.stopped_at for r in results]),
                            np.concatenate([r.positions for r in results]),
                            np.concatenate([r.velocities for r in results]), results[0].save_every, timings, vframes,
                            events, last, halted[0] if halted else None)
