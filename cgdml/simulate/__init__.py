"""Simulate: batched Langevin dynamics of many CG replicas with any force function.

:func:`simulate` advances all replicas together, with one batched ``force_fn(R) -> F`` call per step
(R (n, n_beads, 3) nm, F kJ/mol/nm). Two integrators:

- ``"overdamped"``: Euler-Maruyama Brownian dynamics, x += F dt / (m gamma) + sqrt(2 kT dt / (m gamma)) xi,
  i.e. diffusion constant D = kT / (m gamma) per bead;
- ``"langevin"``: underdamped BAOAB (Leimkuhler-Matthews) with bead masses and friction gamma (1/ps);
  friction 0 gives velocity Verlet (NVE).

Multiple time steps (impulse r-RESPA, ``"langevin"`` only): with ``force_fn`` a pair ``(fast, slow)`` and
``slow_every`` = k, one outer step of k dt is a half kick of k dt / 2 with the slow force, k BAOAB steps of dt
with the fast force, and another slow half kick, i.e. B_slow(k dt/2) [B A O A B]_fast^k B_slow(k dt/2). The
slow force (for a CG model the GDML term, the expensive part) is evaluated once per k steps, the fast one
(prior and basin offsets, cheap) every step; at friction 0 the scheme is symplectic. Steps, ``dt`` and
``save_every`` stay in inner steps (simulated time = n_steps dt); n_steps and save_every must be multiples of
k, so frames and velocities are taken at outer-step boundaries.

The noise is one standard normal array (n_replicas, n_beads, 3) per step from one seeded numpy Generator,
drawn whether or not a replica is alive, so a run resumed from a checkpoint is bit-for-bit identical to an
uninterrupted one. A replica that blows up (NaN/inf, |coordinate| > 1e6 nm, or ``blowup(R)`` true) is frozen at its last good
state, reported, and left out of later force calls; the others carry on.

With ``n_groups`` K > 1 the replicas are split into K consecutive groups, each an independent run with its own
random stream (``SeedSequence(seed).spawn(K)``) and its own checkpoint, in one thread. The groups run one
after another, in local processes (``n_jobs``) or on a Dask cluster (``scheduler``, see
:mod:`cgdml.distributed`); the result is the same bit for bit wherever they run.

The command line is in :mod:`cgdml.simulate.__main__` (``python -m cgdml.simulate``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import CgdmlError, Fields, as_array, as_int, as_json, atomic_path, load_npz, save_npz
from ..units import kT as thermal_energy

log = logging.getLogger(__name__)
PROGRESS_S = 1.0  # the progress bar is updated at least this often (seconds of wall time)


class AllBlownUp(CgdmlError):
    """Every replica blew up (a :class:`CgdmlError`: the message advises a smaller time step)."""

INTEGRATORS = ("overdamped", "langevin")
MAX_COORD = 1e6  # nm; a coordinate beyond this (or NaN) is a blow-up: trajectories are stored as float32
CHECKPOINT_VERSION = 1

# Command-line defaults (documented in --help). Langevin at friction 1/ps crosses ala2's (phi, psi) basins quickly:
# on the ala2 5-bead model, 100 replicas started from training frames relax to the model's own basin populations
# within ~20 ps (the burn-in, not written) and then make ~5 beta <-> alpha transitions per 50 ps each, so ~100 ps
# per replica (10 ns in all) converges the (phi, psi) landscape.
# The Langevin default is multiple-time-step BAOAB, 3 fs inner steps (the prior and basin offsets) with the GDML
# force every 2 steps (a 6 fs outer step): the fastest setting that kept the landscape (js within the 2 fs run's
# bootstrap interval) and every bond and angle distribution (mean and width within 3 bootstrap standard errors,
# or below 0.02 sigma / 1 %) on two maps, benchmarks/results/bench_timestep.md (ala2 5 beads: 2.8x the simulated
# time per wall second of BAOAB at 2 fs) and bench_timestep_ala2-6.md (the CB map: 3.0x). Inner steps of 3 fs are
# stable for the stiffest CG bonds (k ~ 4e5 kJ/mol/nm^2, reduced mass ~7 amu: omega dt ~ 0.75). Larger outer steps
# fail: at 8 fs the bonds widen 5-6 % (impulse resonance with the ~25 fs bond vibration), at 12 fs they double;
# plain BAOAB holds up to 5 fs (2.5x) and widens the stiffest bond 5 % at 6 fs. A user's --dt alone means plain
# BAOAB at that step (slow_every 1), see cgdml.simulate.__main__.
# Overdamped Euler-Maruyama only depends on dt/gamma; 2 fs with gamma = 1000/ps keeps the per-step bond relaxation
# k dt (1/m1 + 1/m2) / gamma near 0.1: on ala2 its bond widths match BAOAB's within 1 %, but it crosses between
# (phi, psi) basins ~5x less often than BAOAB at 1/ps, so it needs ~5x more steps.
DEFAULTS = {"replicas": 100, "steps": 34000, "save_every": 100, "burn_in": 6800,
            "langevin": {"dt": 0.003, "friction": 1.0, "slow_every": 2},
            "overdamped": {"dt": 0.002, "friction": 1000.0, "slow_every": 1}}


@dataclass
class SimulationResult:
    """Output of :func:`simulate`.

    frames: (n_saved, n_replicas, n_beads, 3) float32 nm, frame k taken after step (k + 1) * save_every;
    frames of a replica at or after its blow-up are NaN. alive: (n_replicas,) bool. stopped_at: step at which
    each replica blew up, -1 if alive. velocities: final velocities (n_replicas, n_beads, 3) nm/ps (zeros
    for overdamped). velocity_frames: like frames, only with ``save_velocities=True``.
    """

    frames: np.ndarray
    alive: np.ndarray
    stopped_at: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    save_every: int
    timings: dict = field(default_factory=dict)
    velocity_frames: np.ndarray | None = None
    blowups: list = field(default_factory=list)

    def n_valid_frames(self):
        """Frames saved before each replica blew up, (n_replicas,) int."""
        steps = (np.arange(len(self.frames)) + 1) * self.save_every
        stop = np.where(self.stopped_at < 0, np.iinfo(np.int64).max, self.stopped_at)
        return (steps[:, None] < stop[None, :]).sum(axis=0)

    def replica_frames(self, i):
        """The valid frames of replica ``i``, (n_valid, n_beads, 3) nm."""
        return self.frames[: self.n_valid_frames()[i], i]


def bond_blowup(bond_pairs, threshold):
    """A ``blowup`` test: true for replicas where any bonded distance (nm) exceeds ``threshold``."""
    pairs = np.asarray(bond_pairs, dtype=np.int64).reshape(-1, 2)
    threshold = float(threshold)

    def test(R):
        d = R[:, pairs[:, 0]] - R[:, pairs[:, 1]]
        return (np.einsum("nbk,nbk->nb", d, d) > threshold**2).any(axis=1)

    return test


class _ForcePair:
    """The (fast, slow) forces of a multiple-time-step run, as one object (shared once with workers)."""

    def __init__(self, fast, slow):
        if not (callable(fast) and callable(slow)):
            raise CgdmlError("force_fn must be a callable or a pair (fast, slow) of callables")
        self.fast, self.slow = fast, slow


def _force_pair(force_fn):
    """``force_fn`` as a :class:`_ForcePair` when it is a (fast, slow) pair, else unchanged."""
    if isinstance(force_fn, (tuple, list)):
        if len(force_fn) != 2:
            raise CgdmlError(f"force_fn must be a callable or a pair (fast, slow), got {len(force_fn)} items")
        return _ForcePair(*force_fn)
    return force_fn


def _fingerprint(**settings):
    return json.dumps(settings, sort_keys=True)


def _load_checkpoint(path, fingerprint, shape, n_save, save_velocities, n_steps, save_every):
    """The state saved in the checkpoint ``path`` of a run with these settings, checked field by field; None
    when it holds no live replica (it is then discarded, with a warning). A checkpoint of other settings, or a
    damaged one, is a one-line :class:`CgdmlError` naming the file (and the field)."""
    z = load_npz(path, "simulation checkpoint")
    f = Fields(z)
    if "settings_json" not in f or "positions" not in f:
        raise CgdmlError(f"{path}: not a cgdml simulation checkpoint")
    n_rep = shape[0]
    try:
        version = f.get("format_version", as_int, 0)
        if version != CHECKPOINT_VERSION:
            raise CgdmlError(f"{path}: checkpoint format version {version} is not {CHECKPOINT_VERSION}; delete it "
                             "to start afresh")
        old = f.get("settings_json", as_json)
        alive = f.get("alive", lambda v: as_array(v, "b", ndim=1))
    except CgdmlError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise CgdmlError(f"{path}: damaged simulation checkpoint: {exc}; delete it to start afresh") from None
    if not alive.any():
        warnings.warn(f"{path}: discarded this checkpoint: every replica in it had blown up; starting afresh",
                      stacklevel=3)
        Path(path).unlink(missing_ok=True)
        return None
    new = json.loads(fingerprint)
    if old != new:
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} vs now {new.get(k)!r}" if k not in ("x0_sha256", "masses")
                          else k for k in keys)
        raise CgdmlError(f"{path}: checkpoint was written with different settings ({shown}); "
                         "rerun with the original settings or delete the checkpoint")
    try:
        if alive.shape != (n_rep,):
            raise CgdmlError(f"damaged field 'alive' (shaped {alive.shape}, expected ({n_rep},))")
        state = {"alive": alive}
        state["step"] = step = f.get("step", as_int)
        if not 0 <= step <= n_steps:
            raise CgdmlError(f"damaged field 'step' ({step}, not in 0..{n_steps})")
        names = ("positions", "velocities", "forces") + (("slow_forces",) if "slow_every" in new else ())
        for name in names:                              # slow forces: multiple-time-step runs only
            state[name] = f.get(name, lambda v: as_array(v, "f", shape=shape))
        state["stopped_at"] = f.get("stopped_at", lambda v: as_array(v, "i", shape=(n_rep,)))
        k = step // save_every
        frame_shape = (k, *shape)
        if k > n_save:
            raise CgdmlError(f"damaged field 'step' ({step}: more frames than the run saves)")
        names = ("frames", "velocity_frames") if save_velocities else ("frames",)
        for name in names:
            state[name] = f.get(name, lambda v: as_array(v, "f", shape=frame_shape, finite=False, dtype=np.float32))
        state["rng_state"] = f.get("rng_state", _rng_state)
    except CgdmlError as exc:
        raise CgdmlError(f"{path}: damaged simulation checkpoint: {exc}; delete it to start afresh") from None
    return state


def _rng_state(value):
    """A numpy Generator state (JSON text) that a fresh default_rng accepts."""
    state = as_json(value)
    np.random.default_rng().bit_generator.state = state      # raises for a damaged state
    return state


def simulate(force_fn, x0, *, masses, temperature, dt, n_steps, save_every=100, integrator="overdamped",
             friction=None, seed=0, checkpoint=None, checkpoint_every=None, blowup=None, progress=True,
             save_velocities=False, checkpoint_tag=None, n_groups=1, n_jobs=1, scheduler=None, indexed_forces=False,
             slow_every=1):
    """Run ``n_steps`` of Langevin dynamics for all replicas in ``x0`` (n_replicas, n_beads, 3) nm.

    masses (n_beads,) amu; temperature K; dt ps; friction gamma 1/ps (default 1 for langevin, 1000 for
    overdamped, see ``DEFAULTS``); ``force_fn(R) -> F`` batched,
    kJ/mol/nm, or a pair ``(fast, slow)`` of such functions whose sum is the force: multiple-time-step BAOAB
    with the slow one every ``slow_every`` steps (see the module docstring; langevin only). ``checkpoint``: path
    of an ``.npz`` written every ``checkpoint_every`` steps (default
    n_steps // 20); if it exists and was written with the same settings (``checkpoint_tag`` adds e.g. a
    model hash), the run resumes from it. ``blowup(R) -> bool (n,)`` flags replicas to stop besides NaN/inf.
    ``n_groups``: independent replica groups (see the module docstring), each checkpointed to its own file
    (:func:`group_checkpoints`); ``n_jobs`` local processes for them, or ``scheduler`` (a Dask address,
    scheduler file or Client; group checkpoints then need a file system the workers share).
    ``indexed_forces``: call ``force_fn(R, replicas)`` with the replica indices (n,) of R's rows, for forces
    that differ between replicas (umbrella windows); one group only (with a pair, both get the indices).
    Returns a :class:`SimulationResult`; raises :class:`CgdmlError` if every replica blows up.
    """
    kwargs = dict(masses=masses, temperature=temperature, dt=dt, n_steps=n_steps, save_every=save_every,
                  integrator=integrator, friction=friction, checkpoint_every=checkpoint_every, blowup=blowup,
                  save_velocities=save_velocities, slow_every=slow_every)
    try:
        force_fn = _force_pair(force_fn)
        if indexed_forces:
            if n_groups != 1 or scheduler is not None:
                raise CgdmlError("indexed_forces needs a single replica group")
            rows = np.arange(len(x0))

            def indexed(fn):
                return lambda R, idx=slice(None): fn(R, rows[idx])

            fn = _ForcePair(indexed(force_fn.fast), indexed(force_fn.slow)) if isinstance(force_fn, _ForcePair) \
                else indexed(force_fn)
            return _simulate_one(fn, x0, seed=seed,
                                 checkpoint=checkpoint, progress=progress, checkpoint_tag=checkpoint_tag,
                                 indexed=True, **kwargs)
        if n_groups == 1 and scheduler is None:
            return _simulate_one(force_fn, x0, seed=seed, checkpoint=checkpoint, progress=progress,
                                 checkpoint_tag=checkpoint_tag, **kwargs)
        return _simulate_groups(force_fn, x0, seed, checkpoint, checkpoint_tag, progress, n_groups, n_jobs, scheduler,
                                kwargs)
    except AllBlownUp as exc:
        # a checkpoint of a run that ended in total blow-up is of no use, and would block the advised rerun
        # with a smaller time step ("different settings"): discard it
        if checkpoint is None:
            raise
        dropped = [p for p in group_checkpoints(checkpoint, int(n_groups)) if p.exists()]
        for path in dropped:
            path.unlink(missing_ok=True)
        note = f"; discarded its checkpoint {', '.join(map(str, dropped))}" if dropped else ""
        raise AllBlownUp(f"{exc}{note}") from None


def group_checkpoints(checkpoint, n_groups):
    """Checkpoint paths of the ``n_groups`` replica groups: ``checkpoint`` itself for one group, else
    ``NAME.g0.npz``, ``NAME.g1.npz``, ... for ``NAME.npz``."""
    path = Path(checkpoint)
    if n_groups == 1:
        return [path]
    stem = path.name[:-4] if path.name.endswith(".npz") else path.name
    return [path.with_name(f"{stem}.g{g}.npz") for g in range(n_groups)]


def _seed_key(seed):
    """JSON form of an int seed or a SeedSequence (for the checkpoint fingerprint)."""
    if isinstance(seed, np.random.SeedSequence):
        return {"entropy": int(seed.entropy), "spawn_key": [int(k) for k in seed.spawn_key]}
    return int(seed)


def _simulate_groups(force_fn, x0, seed, checkpoint, checkpoint_tag, progress, n_groups, n_jobs, scheduler, kwargs):
    from ..distributed import TaskRunner

    x0 = _check_start(x0)
    n_rep = len(x0)
    if not 1 <= int(n_groups) <= n_rep:
        raise CgdmlError(f"n_groups must be between 1 and the number of replicas ({n_rep}), got {n_groups}")
    n_groups = int(n_groups)
    _check_settings(x0.shape[1], **{k: kwargs[k] for k in ("masses", "integrator", "n_steps", "save_every", "dt",
                                                           "friction", "checkpoint_every", "slow_every")},
                    pair=isinstance(force_fn, _ForcePair))
    parts = np.array_split(x0, n_groups)
    seeds = [int(seed)] if n_groups == 1 else np.random.SeedSequence(int(seed)).spawn(n_groups)
    ckpts = [None] * n_groups if checkpoint is None else [p.resolve() for p in group_checkpoints(checkpoint, n_groups)]
    t0 = time.perf_counter()
    with TaskRunner(n_jobs, scheduler) as runner:
        runner.progress = progress and not runner.in_process    # a bar over groups run elsewhere
        progress = progress and runner.in_process               # a step bar per group run here
        fn = runner.share(force_fn)
        tasks = []
        for g, (part, group_seed, ckpt) in enumerate(zip(parts, seeds, ckpts)):
            tag = checkpoint_tag if n_groups == 1 else {"tag": checkpoint_tag, "group": g, "n_groups": n_groups}
            tasks.append((_simulate_group, (fn, part, group_seed, dict(
                kwargs, checkpoint=ckpt, checkpoint_tag=tag, progress=progress,
                desc=f"simulate group {g + 1}/{n_groups} ({len(part)} replicas)"))))
        results = [None] * n_groups
        for g, result in runner.run(tasks, f"simulate {n_rep} replicas in {n_groups} groups", limit_threads=True):
            results[g] = result
    return _merge_groups(results, time.perf_counter() - t0)


def _simulate_group(force_fn, x0, seed, kwargs):
    """One replica group (a task): blow-ups are collected, not warned about (the caller reports them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _simulate_one(force_fn, x0, seed=seed, all_may_blow_up=True, **kwargs)


def _merge_groups(results, wall):
    """One :class:`SimulationResult` with the groups' replicas in order."""
    sizes = [len(r.alive) for r in results]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    blowups = sorted(({"replica": int(b["replica"] + off), "step": b["step"]}
                      for r, off in zip(results, offsets) for b in r.blowups), key=lambda b: (b["step"], b["replica"]))
    alive = np.concatenate([r.alive for r in results])
    if not alive.any():
        raise AllBlownUp(f"all {len(alive)} replicas blew up (last at step {max(b['step'] for b in blowups)}); "
                         "reduce the time step or check the model")
    if blowups:
        shown = ", ".join(f"{b['replica']} (step {b['step']})" for b in blowups[:20])
        warnings.warn(f"replica(s) {shown}{' ...' if len(blowups) > 20 else ''} blew up (NaN/inf or stretched bond) "
                      f"and were stopped; {alive.sum()} of {len(alive)} ran to the end", stacklevel=3)
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
    return SimulationResult(np.concatenate([r.frames for r in results], axis=1), alive,
                            np.concatenate([r.stopped_at for r in results]),
                            np.concatenate([r.positions for r in results]),
                            np.concatenate([r.velocities for r in results]), results[0].save_every, timings, vframes,
                            blowups)


def _check_start(x0):
    x0 = np.array(x0, dtype=np.float64)
    if x0.ndim != 3 or x0.shape[2] != 3 or x0.shape[0] < 1:
        raise CgdmlError(f"start coordinates must have shape (n_replicas, n_beads, 3), got {x0.shape}")
    if not np.isfinite(x0).all():
        raise CgdmlError("start coordinates contain NaN or inf")
    return x0


def _check_settings(n_beads, masses, integrator, n_steps, save_every, dt, friction, checkpoint_every, slow_every=1,
                    pair=False):
    """Validated (masses, n_steps, save_every, dt, friction, checkpoint_every, slow_every); one-line errors.
    ``pair``: the forces are a (fast, slow) pair (multiple time steps)."""
    masses = np.asarray(masses, dtype=np.float64).reshape(-1)
    if masses.shape != (n_beads,) or not (masses > 0).all():
        raise CgdmlError(f"masses must be {n_beads} positive numbers (amu), got {masses}")
    if integrator not in INTEGRATORS:
        raise CgdmlError(f"integrator must be one of {', '.join(INTEGRATORS)}, got {integrator!r}")
    n_steps, save_every = int(n_steps), int(save_every)
    if n_steps < 1 or save_every < 1:
        raise CgdmlError(f"n_steps and save_every must be >= 1, got {n_steps} and {save_every}")
    if friction is None:
        friction = DEFAULTS[integrator]["friction"]
    dt, friction = float(dt), float(friction)
    if not dt > 0:
        raise CgdmlError(f"time step dt must be > 0 ps, got {dt}")
    if not (friction > 0 or (integrator == "langevin" and friction == 0)):
        raise CgdmlError(f"friction must be > 0 /ps (0 allowed only for langevin), got {friction}")
    checkpoint_every = max(1, n_steps // 20) if checkpoint_every is None else int(checkpoint_every)
    if checkpoint_every < 1:
        raise CgdmlError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if not (isinstance(slow_every, (int, np.integer)) and slow_every >= 1):
        raise CgdmlError(f"slow_every must be an integer >= 1, got {slow_every!r}")
    slow_every = int(slow_every)
    if pair and integrator != "langevin":
        raise CgdmlError("a (fast, slow) force pair (multiple time steps) needs integrator='langevin'")
    if slow_every > 1:
        if not pair:
            raise CgdmlError(f"slow_every={slow_every} needs force_fn as a pair (fast, slow)")
        if n_steps % slow_every or save_every % slow_every:
            raise CgdmlError(f"n_steps ({n_steps}) and save_every ({save_every}) must be multiples of "
                             f"slow_every ({slow_every})")
    return masses, n_steps, save_every, dt, friction, checkpoint_every, slow_every


def _simulate_one(force_fn, x0, *, masses, temperature, dt, n_steps, save_every, integrator, friction, seed,
                  checkpoint, checkpoint_every, blowup, progress, save_velocities, checkpoint_tag, desc=None,
                  all_may_blow_up=False, indexed=False, slow_every=1):
    """:func:`simulate` for one group of replicas with one random stream (``seed``: int or SeedSequence).

    ``all_may_blow_up``: return (all replicas stopped) instead of raising when every replica blows up.
    ``indexed``: call ``force_fn(R, idx)`` with the rows' replica selection (see ``indexed_forces``).
    ``force_fn`` may be a :class:`_ForcePair` (or a (fast, slow) pair): multiple time steps, see the module.
    """
    x0 = _check_start(x0)
    n_rep, n_beads, _ = x0.shape
    force_fn = _force_pair(force_fn)
    mts = isinstance(force_fn, _ForcePair)
    masses, n_steps, save_every, dt, friction, checkpoint_every, slow_every = _check_settings(
        n_beads, masses, integrator, n_steps, save_every, dt, friction, checkpoint_every, slow_every, mts)
    fast_fn, slow_fn = (force_fn.fast, force_fn.slow) if mts else (force_fn, None)
    kt = thermal_energy(temperature)

    m = masses[None, :, None]
    n_save = n_steps // save_every
    fingerprint = _fingerprint(integrator=integrator, dt=dt, friction=friction, temperature=float(temperature),
                               n_steps=n_steps, save_every=save_every, seed=_seed_key(seed),
                               masses=masses.tolist(), shape=list(x0.shape), save_velocities=bool(save_velocities),
                               x0_sha256=hashlib.sha256(x0.tobytes()).hexdigest(), tag=checkpoint_tag,
                               **({"slow_every": slow_every} if mts else {}))
    rng = np.random.default_rng(seed)
    frames = np.full((n_save, n_rep, n_beads, 3), np.nan, dtype=np.float32)
    vframes = np.full_like(frames, np.nan) if save_velocities else None
    alive = np.ones(n_rep, dtype=bool)
    stopped_at = np.full(n_rep, -1, dtype=np.int64)
    t_force = t_slow = 0.0
    Fs = None                                           # the slow forces (multiple time steps)
    t_start = time.perf_counter()

    z = None
    if checkpoint is not None and Path(checkpoint).exists():
        z = _load_checkpoint(checkpoint, fingerprint, x0.shape, n_save, save_velocities, n_steps, save_every)
    if z is not None:
        x, v, F = z["positions"].copy(), z["velocities"].copy(), z["forces"].copy()
        if mts:
            Fs = z["slow_forces"].copy()
        step = int(z["step"])
        rng.bit_generator.state = z["rng_state"]
        alive[:], stopped_at[:] = z["alive"], z["stopped_at"]
        k = len(z["frames"])
        frames[:k] = z["frames"]
        if save_velocities:
            vframes[:k] = z["velocity_frames"]
        resumed_from = step
        log.info("resuming from step %d of %s%s", step, checkpoint, f" ({desc})" if desc else "")
    else:
        x, step, resumed_from = x0, 0, None
        if integrator == "langevin":
            v = rng.standard_normal(x.shape) * np.sqrt(kt / m)
        else:
            v = np.zeros_like(x)
        tf = time.perf_counter()
        F = np.array(fast_fn(x), dtype=np.float64)
        t_force += time.perf_counter() - tf
        if F.shape != x.shape:
            raise CgdmlError(f"force function returned shape {F.shape}, expected {x.shape}")
        bad = ~np.isfinite(F).reshape(n_rep, -1).all(axis=1)
        if mts:
            tf = time.perf_counter()
            Fs = np.array(slow_fn(x), dtype=np.float64)
            t_slow += time.perf_counter() - tf
            if Fs.shape != x.shape:
                raise CgdmlError(f"slow force function returned shape {Fs.shape}, expected {x.shape}")
            bad |= ~np.isfinite(Fs).reshape(n_rep, -1).all(axis=1)
        if blowup is not None:
            bad |= np.asarray(blowup(x), dtype=bool)
        if bad.all() and not all_may_blow_up:
            raise AllBlownUp("every start configuration gives non-finite forces or fails the blow-up test")
        alive[bad], stopped_at[bad] = False, 0
        F[bad] = 0.0
        if mts:
            Fs[bad] = 0.0

    if integrator == "overdamped":
        mobility = dt / (m * friction)                  # (D / kT) dt
        noise_scale = np.sqrt(2.0 * kt * mobility)       # sqrt(2 D dt)
    else:
        half_dt_over_m = 0.5 * dt / m
        c1 = np.exp(-friction * dt)
        noise_scale = np.sqrt((1.0 - c1 * c1) * kt / m)
        half_outer_over_m = 0.5 * slow_every * dt / m   # the slow half kick (multiple time steps)

    blowups = [{"replica": int(i), "step": int(stopped_at[i])} for i in np.flatnonzero(~alive)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_steps, initial=step, unit="step", desc=desc or f"simulate {n_rep} replicas",
                   mininterval=0.5)
    start_step = step
    shown_at = time.perf_counter()
    try:
        while step < n_steps and alive.any():
            step += 1
            xi = rng.standard_normal(x.shape)           # drawn for all replicas: fixed stream per step
            idx = slice(None) if alive.all() else np.flatnonzero(alive)
            xa, va, Fa, xia = x[idx], v[idx], F[idx], xi[idx]
            if integrator == "overdamped":
                xn = xa + mobility * Fa + noise_scale * xia
                vn = va
            else:
                if mts and (step - 1) % slow_every == 0:
                    va = va + half_outer_over_m * Fs[idx]                   # B slow: opens an outer step
                vn = va + half_dt_over_m * Fa                               # B
                xn = xa + 0.5 * dt * vn                                     # A
                vn = c1 * vn + noise_scale * xia                            # O
                xn = xn + 0.5 * dt * vn                                     # A
            tf = time.perf_counter()
            Fn = np.asarray(fast_fn(xn, idx) if indexed else fast_fn(xn), dtype=np.float64)
            t_force += time.perf_counter() - tf
            if integrator == "langevin":
                vn = vn + half_dt_over_m * Fn                               # B
            Fsn = None
            if mts and step % slow_every == 0:
                tf = time.perf_counter()
                Fsn = np.asarray(slow_fn(xn, idx) if indexed else slow_fn(xn), dtype=np.float64)
                t_slow += time.perf_counter() - tf
                vn = vn + half_outer_over_m * Fsn                           # B slow: closes it (NaN shows in vn)
            # one reduction per array: NaN fails the comparison, any inf/NaN makes the sums non-finite
            bad = ~((np.abs(xn).max(axis=(1, 2)) < MAX_COORD) & np.isfinite(Fn.sum(axis=(1, 2)) + vn.sum(axis=(1, 2))))
            if blowup is not None:
                bad |= np.asarray(blowup(xn), dtype=bool)
            if bad.any():
                ids = np.arange(n_rep)[idx][bad]
                good = ~bad
                keep = np.arange(n_rep)[idx][good]
                x[keep], v[keep], F[keep] = xn[good], vn[good], Fn[good]
                if Fsn is not None:
                    Fs[keep] = Fsn[good]
                alive[ids], stopped_at[ids] = False, step
                for i in ids:
                    blowups.append({"replica": int(i), "step": int(step)})
                warnings.warn(f"replica(s) {', '.join(map(str, ids))} blew up at step {step} (NaN/inf or "
                              f"stretched bond) and were stopped; {alive.sum()} of {n_rep} continue", stacklevel=2)
                if not alive.any() and not all_may_blow_up:
                    raise AllBlownUp(f"all {n_rep} replicas blew up (last at step {step}); reduce the time step "
                                     "or check the model")
            elif isinstance(idx, slice):
                x, v, F = xn, vn, Fn
                if Fsn is not None:
                    Fs = Fsn
            else:
                x[idx], v[idx], F[idx] = xn, vn, Fn
                if Fsn is not None:
                    Fs[idx] = Fsn
            if step % save_every == 0:
                k = step // save_every - 1
                frames[k, alive] = x[alive]
                if save_velocities:
                    vframes[k, alive] = v[alive]
            if checkpoint is not None and (step % checkpoint_every == 0):
                k = step // save_every
                extra = {"velocity_frames": vframes[:k]} if save_velocities else {}
                if mts:
                    extra["slow_forces"] = Fs
                save_npz(checkpoint, positions=x, velocities=v, forces=F, step=np.int64(step),
                         rng_state=np.array(json.dumps(rng.bit_generator.state)), alive=alive,
                         stopped_at=stopped_at, frames=frames[:k], settings_json=np.array(fingerprint),
                         format_version=np.int64(CHECKPOINT_VERSION), **extra)
            if bar is not None and (step == n_steps or time.perf_counter() - shown_at >= PROGRESS_S):
                shown_at = time.perf_counter()                              # by wall time: with many replicas
                bar.update(step - bar.n)                                    # a step takes long
                if blowups:
                    bar.set_postfix(alive=int(alive.sum()), refresh=False)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t_start
    done = step - start_step
    timings = {"wall_s": wall, "force_s": t_force + t_slow, **({"slow_force_s": t_slow} if mts else {}),
               "steps": done, "resumed_from_step": resumed_from,
               "steps_per_s": done / wall if wall > 0 else float("nan"),
               "replica_steps_per_s": done * n_rep / wall if wall > 0 else float("nan")}
    return SimulationResult(frames, alive, stopped_at, x, v, save_every, timings, vframes, blowups)


def start_configurations(model, n_replicas, seed=0, start=None):
    """Start coordinates (n_replicas, n_beads, 3) nm: random frames of ``start`` (a CGDataset) or of the
    model's training sample, drawn with a generator derived from ``seed`` (so a rerun picks the same)."""
    pool = model.train_coords_sample if start is None else start.coords
    pool = np.asarray(pool, dtype=np.float64)
    if pool.ndim != 3 or pool.shape[1:] != (model.n_beads, 3):
        raise CgdmlError(f"start configurations have shape {pool.shape[1:]}, the model needs ({model.n_beads}, 3)")
    if len(pool) == 0:
        raise CgdmlError("no start configurations available")
    rng = np.random.default_rng([int(seed), 0x5EED])
    pick = rng.choice(len(pool), size=n_replicas, replace=n_replicas > len(pool))
    return pool[pick]


def write_trajectory(path, result, topology, dt, skip=0):
    """Write every replica's valid frames after the first ``skip`` saved ones (burn-in), one replica after
    another, to one mdtraj file (format by suffix), atomically. Returns per-replica frame counts."""
    import mdtraj as md


    valid = result.n_valid_frames()
    counts = np.maximum(valid - skip, 0)
    if counts.sum() == 0:
        raise CgdmlError(f"{path}: no frames to write (every replica blew up during the burn-in)")
    xyz = np.concatenate([result.frames[skip:v, i] for i, v in enumerate(valid)], axis=0)
    times = np.concatenate([(skip + np.arange(c) + 1) * result.save_every * dt for c in counts])
    traj = md.Trajectory(xyz.astype(np.float32), topology, time=times)
    with atomic_path(path) as tmp:
        try:
            traj.save(str(tmp), force_overwrite=True)
        except OSError:
            raise                                   # atomic_path reports it with the path
        except Exception as exc:                    # e.g. PyTables errors on a full disk
            raise CgdmlError(f"{path}: cannot write trajectory ({type(exc).__name__}: {exc})") from None
    return counts
