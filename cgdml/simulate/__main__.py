"""``python -m cgdml.simulate MODEL.npz -o TRAJ.h5``: batched Langevin replicas of a fitted CG model.

Writes one mdtraj trajectory (all replicas, one after another), a CG PDB and a JSON sidecar; the library is
:mod:`cgdml.simulate`.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from .._cli import (ArgumentParser, add_verbosity_arguments, claim_outputs, configure_logging, pdb_with_provenance,
                    run_cli, seed_int, with_provenance)
from .._io import CgdmlError, atomic_path, check_output, save_json
from . import DEFAULTS, INTEGRATORS, bond_blowup, group_checkpoints, simulate, start_configurations, write_trajectory

COMMAND = "cgdml.simulate"


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rate(x):
    """A rate with 3 significant digits and a k/M suffix: 0.512, 41.3, 12.6k, 3.40M."""
    if not x == x or x in (float("inf"), float("-inf")):
        return "n/a"
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.simulate", description=(
        "Run batched Langevin simulations of a fitted CG model and write one mdtraj trajectory (all replicas, "
        "one after another) plus a JSON sidecar. Interrupted runs resume when the same command is rerun."))
    p.add_argument("model", help="fitted CG model (.npz)")
    p.add_argument("-o", "--output", required=True, help="trajectory file: .h5 (mdtraj HDF5), .dcd or .xtc")
    p.add_argument("--replicas", type=int, default=DEFAULTS["replicas"],
                   help=f"replicas run together (default {DEFAULTS['replicas']})")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                   help=f"steps per replica (default {DEFAULTS['steps']}: "
                   f"{DEFAULTS['steps'] * DEFAULTS['langevin']['dt']:g} ps per replica at the default langevin step)")
    p.add_argument("--burn-in", type=int, default=None, help=f"leading steps not written to the trajectory "
                   f"(default {DEFAULTS['burn_in']}, or steps/5 for runs shorter than twice that)")
    p.add_argument("--dt", type=float, default=None,
                   help=f"time step in ps (default {DEFAULTS['langevin']['dt']:g} for langevin, with --slow-every "
                   f"{DEFAULTS['langevin']['slow_every']}; {DEFAULTS['overdamped']['dt']:g} for overdamped); "
                   "--dt without --slow-every runs plain BAOAB at that step")
    p.add_argument("--save-every", type=int, default=DEFAULTS["save_every"],
                   help=f"save a frame every N steps (default {DEFAULTS['save_every']})")
    p.add_argument("--integrator", choices=INTEGRATORS, default="langevin",
                   help="langevin (BAOAB, default) or overdamped (Euler-Maruyama)")
    p.add_argument("--slow-every", type=int, default=None, metavar="K",
                   help="multiple time steps (langevin): the GDML force every K steps, the prior (and basin "
                   f"offsets) every step (default {DEFAULTS['langevin']['slow_every']} with the default --dt, "
                   "1 with a given --dt; 1 = plain BAOAB); "
                   "--steps and --save-every must be multiples of K")
    p.add_argument("--friction", type=float, default=None,
                   help="friction gamma in 1/ps (default 1 for langevin, 1000 for overdamped)")
    p.add_argument("--temperature", type=float, default=None, help="K (default: the model's temperature)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed, >= 0 (default 0)")
    p.add_argument("--start", default=None, help="CG dataset (.npz) to draw start frames from "
                   "(default: the model's training sample)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints "
                   "(default steps/20)")
    p.add_argument("--blowup-factor", type=float, default=2.0, help="stop a replica when a bond exceeds this "
                   "factor times the longest bond seen in training (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads for the force calls (numba and BLAS; "
                   "default 1: one batched call per step is small, and extra threads slow it down on a busy "
                   "machine; run several seeds side by side instead; --tasks groups use one each)")
    p.add_argument("--tasks", type=int, default=1, help="split the replicas into K groups, each an independent "
                   "task with its own random stream and checkpoint (default 1; results depend on K, not on where "
                   "the groups run)")
    p.add_argument("--jobs", type=int, default=1, help="local processes for the --tasks groups, one thread each "
                   "(default 1: one after another)")
    p.add_argument("--scheduler", default=None, help="run the --tasks groups on a Dask cluster: tcp://HOST:PORT "
                   "or a scheduler file (checkpoints need a file system the workers share)")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)

    out = Path(a.output)
    if out.suffix.lower() not in (".h5", ".dcd", ".xtc"):
        raise CgdmlError(f"{out}: output must end in .h5, .dcd or .xtc")
    check_output(out)
    pdb, side, ckpt = out.with_suffix(".pdb"), out.with_suffix(".json"), Path(str(out) + ".ckpt.npz")
    fit_summary = Path(a.model).with_suffix(".json")
    with claim_outputs(COMMAND, [out], sidecars={pdb: out, side: out}, kinds={out: "trajectory"},
                       inputs=[a.model, a.start], temps=group_checkpoints(ckpt, a.tasks),
                       reserved={fit_summary: f"the fit summary of {a.model}"}):
        return _simulate(a, out, pdb, side, ckpt)


def _simulate(a, out, pdb, side, ckpt):
    if a.temperature is not None and not a.temperature > 0:
        raise CgdmlError(f"--temperature must be > 0 K, got {a.temperature:g}")
    dt = DEFAULTS[a.integrator]["dt"] if a.dt is None else a.dt
    friction = DEFAULTS[a.integrator]["friction"] if a.friction is None else a.friction
    # the default step is a (dt, slow_every) pair: a --dt of one's own alone means plain BAOAB at that step
    slow_every = a.slow_every if a.slow_every is not None else \
        DEFAULTS[a.integrator]["slow_every"] if a.dt is None else 1
    for name, val in (("--replicas", a.replicas), ("--steps", a.steps), ("--save-every", a.save_every)):
        if val < 1:
            raise CgdmlError(f"{name} must be >= 1, got {val}")
    if a.checkpoint_every is not None and a.checkpoint_every < 1:
        raise CgdmlError(f"--checkpoint-every must be >= 1, got {a.checkpoint_every}")
    if not dt > 0:
        raise CgdmlError(f"--dt must be > 0 ps, got {dt}")
    if not friction > 0:
        raise CgdmlError(f"--friction must be > 0 /ps, got {friction}")
    if slow_every < 1:
        raise CgdmlError(f"--slow-every must be >= 1, got {slow_every}")
    if slow_every > 1 and a.integrator != "langevin":
        raise CgdmlError("--slow-every > 1 (multiple time steps) needs --integrator langevin")
    if a.steps % slow_every or a.save_every % slow_every:
        default = " (the default with the default --dt; --slow-every 1 runs plain BAOAB)" \
            if a.slow_every is None else ""
        raise CgdmlError(f"--steps ({a.steps}) and --save-every ({a.save_every}) must be multiples of "
                         f"--slow-every ({slow_every}{default})")
    if a.save_every > a.steps:
        raise CgdmlError(f"--save-every {a.save_every} is larger than --steps {a.steps}: nothing would be saved")
    burn_in = a.burn_in
    if burn_in is None:
        burn_in = DEFAULTS["burn_in"] if DEFAULTS["burn_in"] <= a.steps // 2 else a.steps // 5
    if not 0 <= burn_in < a.steps:
        raise CgdmlError(f"--burn-in must be between 0 and --steps - 1 ({a.steps - 1}), got {burn_in}")
    if (a.steps - burn_in) < a.save_every:
        raise CgdmlError(f"no frame would be written: --steps {a.steps} minus --burn-in {burn_in} is less than "
                         f"--save-every {a.save_every}")
    if a.threads < 1:
        raise CgdmlError(f"--threads must be >= 1, got {a.threads}")
    if not 1 <= a.tasks <= a.replicas:
        raise CgdmlError(f"--tasks must be between 1 and --replicas ({a.replicas}), got {a.tasks}")
    if a.jobs == 0:
        raise CgdmlError("--jobs must be >= 1 (or negative: all cores but |n| - 1), got 0")
    if a.scheduler is not None:
        from ..distributed import check_scheduler

        check_scheduler(a.scheduler)
    if not a.blowup_factor > 1:
        raise CgdmlError(f"--blowup-factor must be > 1, got {a.blowup_factor}")

    from ..data import CGDataset
    from ..model import CGModel

    start = CGDataset.load(a.start) if a.start is not None else None
    model = CGModel.load(a.model)
    temperature = model.temperature if a.temperature is None else a.temperature
    if start is not None:
        if start.n_beads != model.n_beads:
            raise CgdmlError(f"{a.start}: dataset has {start.n_beads} beads, model {a.model} has {model.n_beads}")
    x0 = start_configurations(model, a.replicas, a.seed, start)
    model.warn_if_out_of_range(x0, what=f"start configurations (from {a.start or a.model})")
    blowup = bond_blowup(model.bond_pairs, a.blowup_factor * model.max_bond_length) \
        if len(model.bond_pairs) else None
    settings = {"model": str(a.model), "replicas": a.replicas, "steps": a.steps, "dt_ps": dt,
                "save_every": a.save_every, "integrator": a.integrator, "friction_per_ps": friction,
                "temperature_K": float(temperature), "seed": a.seed, "start": a.start, "burn_in_steps": burn_in,
                "blowup_bond_nm": a.blowup_factor * model.max_bond_length, "tasks": a.tasks,
                "slow_every": slow_every}
    import numba
    from threadpoolctl import threadpool_limits

    numba_threads = numba.get_num_threads()
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with warnings.catch_warnings(), threadpool_limits(limits=a.threads):
            warnings.simplefilter("default")
            forces = (model.fast_forces, model.slow_forces) if slow_every > 1 else model.forces
            result = simulate(forces, x0, masses=model.masses, temperature=temperature, dt=dt,
                              n_steps=a.steps, save_every=a.save_every, integrator=a.integrator, friction=friction,
                              seed=a.seed, checkpoint=ckpt, checkpoint_every=a.checkpoint_every, blowup=blowup,
                              progress=not (a.no_progress or a.quiet),
                              checkpoint_tag={"model_sha256": _file_sha256(a.model),
                                              "blowup": settings["blowup_bond_nm"]},
                              n_groups=a.tasks, n_jobs=a.jobs, scheduler=a.scheduler, slow_every=slow_every)
    finally:
        numba.set_num_threads(numba_threads)                   # main() may run inside a notebook or test
    model.warn_if_out_of_range(result.positions[result.alive], what="final replica configurations")
    topology = model.cg_topology
    counts = write_trajectory(out, result, topology.to_mdtraj(), dt, burn_in // a.save_every)
    with atomic_path(pdb) as tmp:  # the CG topology for VMD, PyMOL and fes --top (.dcd, .xtc)
        tmp.write_text(pdb_with_provenance(topology.to_pdb(result.positions[int(np.argmax(result.alive))]),
                                           COMMAND, out))
    t = result.timings
    sidecar = {"trajectory": out.name, "settings": settings, "n_replicas": a.replicas,
               "frames_per_replica": counts.tolist(), "n_frames": int(counts.sum()),
               "frame_time_ps": a.save_every * dt, "blowups": result.blowups,
               "n_blown_up": int((~result.alive).sum()), "timings": t,
               "ns_per_day_per_replica": (t["steps_per_s"] * dt * 86400 / 1000) if t["steps"] else None}
    save_json(side, with_provenance(sidecar, COMMAND, out))
    for path in group_checkpoints(ckpt, a.tasks):
        path.unlink(missing_ok=True)
    print(f"wrote {out} ({int(counts.sum())} frames from {a.replicas} replicas, {sidecar['n_blown_up']} blown up) "
          f"with {pdb} and {side}; {rate(t['replica_steps_per_s'])} replica-steps/s "
          f"({rate(t['steps_per_s'])} steps/s)")
    return 0


def cli():
    """The console script ``cgdml-simulate`` (setup.cfg): the same command as ``python -m cgdml.simulate``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
