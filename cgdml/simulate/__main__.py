"""``python -m cgdml.simulate MODEL.npz -o TRAJ.h5``: batched Langevin replicas of a fitted CG model.

Writes one mdtraj trajectory (all replicas, one after another), a CG PDB and a JSON sidecar. The run is
:func:`cgdml.simulate.simulate_model` with the options as its arguments: the same run from Python.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .._cli import (COUNT_MAX, ArgumentParser, add_verbosity_arguments, claim_outputs, configure_logging,
                    float_between, int_between, jobs_int, pdb_with_provenance, run_cli, seed_int, show_progress,
                    threads_int, with_provenance)
from .._io import CgdmlError, atomic_path, check_output, save_json
from ..kernels import PRECISIONS
from . import DEFAULTS, INTEGRATORS, group_checkpoints, run_settings, simulate_model
from .model_run import GUARD_REASON, GUARDS

COMMAND = "cgdml.simulate"


def rate(x):
    """A rate with 3 significant digits and a k/M suffix: 0.512, 41.3, 12.6k, 3.40M."""
    if not x == x or x in (float("inf"), float("-inf")):
        return "n/a"
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


_count = int_between(1, COUNT_MAX)


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.simulate", description=(
        "Run batched Langevin simulations of a fitted CG model and write one mdtraj trajectory (all replicas, "
        "one after another) plus a JSON sidecar. Interrupted runs resume when the same command is rerun."))
    p.add_argument("model", help="fitted CG model (.npz)")
    p.add_argument("-o", "--output", required=True, help="trajectory file: .h5 (mdtraj HDF5), .dcd or .xtc")
    p.add_argument("--replicas", type=_count, default=DEFAULTS["replicas"],
                   help=f"replicas run together (default {DEFAULTS['replicas']})")
    p.add_argument("--steps", type=_count, default=DEFAULTS["steps"],
                   help=f"steps per replica (default {DEFAULTS['steps']}: "
                   f"{DEFAULTS['steps'] * DEFAULTS['langevin']['dt']:g} ps per replica at the default langevin step)")
    p.add_argument("--burn-in", type=int_between(0, COUNT_MAX), default=None, help=f"leading steps not written to the trajectory "
                   f"(default {DEFAULTS['burn_in']}, or steps/5 for runs shorter than twice that)")
    p.add_argument("--dt", type=float_between(0, 1, "ps: a CG time step is fs to tens of fs", low_open=True), default=None,
                   help=f"time step in ps (default {DEFAULTS['langevin']['dt']:g} for langevin, with --slow-every "
                   f"{DEFAULTS['langevin']['slow_every']}; {DEFAULTS['overdamped']['dt']:g} for overdamped); "
                   "--dt without --slow-every runs plain BAOAB at that step")
    p.add_argument("--save-every", type=_count, default=DEFAULTS["save_every"],
                   help=f"save a frame every N steps (default {DEFAULTS['save_every']})")
    p.add_argument("--integrator", choices=INTEGRATORS, default="langevin",
                   help="langevin (BAOAB, default) or overdamped (Euler-Maruyama)")
    p.add_argument("--slow-every", type=int_between(1, 1000), default=None, metavar="K",
                   help="multiple time steps (langevin): the GDML force every K steps, the prior (and basin "
                   f"offsets) every step (default {DEFAULTS['langevin']['slow_every']} with the default --dt, "
                   "1 with a given --dt; 1 = plain BAOAB); "
                   "--steps and --save-every must be multiples of K")
    p.add_argument("--friction", type=float_between(0, 1e6, "1/ps", low_open=True), default=None,
                   help="friction gamma in 1/ps (default 1 for langevin, 1000 for overdamped)")
    p.add_argument("--temperature", type=float_between(0, 1e4, "K", low_open=True), default=None, help="K (default: the model's temperature)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed, >= 0 (default 0)")
    p.add_argument("--start", default=None, help="CG dataset (.npz) to draw start frames from "
                   "(default: the model's training sample)")
    p.add_argument("--checkpoint-every", type=_count, default=None, help="steps between checkpoints "
                   "(default steps/20)")
    p.add_argument("--blowup-factor", type=float_between(1, 100, "times the longest training bond", low_open=True), default=2.0, help="stop a replica when a bond exceeds this "
                   "factor times the longest bond seen in training (default 2)")
    p.add_argument("--threads", type=threads_int, default=1, help="threads for the force calls (numba and BLAS; "
                   "default 1: one batched call per step is small, and extra threads slow it down on a busy "
                   "machine; run several seeds side by side instead; --tasks groups use one each)")
    p.add_argument("--tasks", type=_count, default=1, help="split the replicas into K groups, each an independent "
                   "task with its own random stream and checkpoint (default 1; results depend on K, not on where "
                   "the groups run)")
    p.add_argument("--jobs", type=jobs_int, default=1, help="local processes for the --tasks groups, one thread each "
                   "(default 1: one after another)")
    p.add_argument("--scheduler", default=None, help="run the --tasks groups on a Dask cluster: tcp://HOST:PORT "
                   "or a scheduler file (checkpoints need a file system the workers share)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS["precision"],
                   help=f"precision of the GDML force's kernel sums (default {DEFAULTS['precision']}: float32 runs "
                   "the GDML force up to twice as fast at a relative force error of ~1e-5; float64 as before; "
                   "benchmarks/results/bench_beads.md)")
    g = p.add_argument_group("uncertainty guard", "watch the model's force uncertainty: a replica above the "
                             "threshold has left the training data (docs/uncertainty.md)")
    g.add_argument("--guard", choices=GUARDS, default="warn",
                   help="what a replica crossing the threshold causes: warn (the default: an event with its step and "
                   "frame in the JSON sidecar, and one warning with the count), stop-replica, stop-run, or off; a "
                   "model without a force posterior runs unguarded, with a line saying so")
    g.add_argument("--guard-every", type=_count, default=None, metavar="K",
                   help=f"check every K steps (default {DEFAULTS['guard_every']}: a few %% of the run time with the other "
                   "defaults, docs/uncertainty.md §10)")
    g.add_argument("--guard-threshold", type=float_between(0, 1e9, "kJ/mol/nm", low_open=True), default=None, metavar="KJ_MOL_NM",
                   help="force standard deviation (RMS over beads, kJ/mol/nm) above which a replica counts as outside "
                   "the data (default: the model's, from its training frames)")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)

    out = Path(a.output)
    if out.suffix.lower() not in (".h5", ".dcd", ".xtc"):
        raise CgdmlError(f"{out}: output must end in .h5, .dcd or .xtc")
    check_output(out)
    run_settings(**_options(a), spell=_option)          # option errors before any file is touched
    pdb, side, ckpt = out.with_suffix(".pdb"), out.with_suffix(".json"), Path(str(out) + ".ckpt.npz")
    fit_summary = Path(a.model).with_suffix(".json")
    with claim_outputs(COMMAND, [out], sidecars={pdb: out, side: out}, kinds={out: "trajectory"},
                       inputs=[a.model, a.start], temps=group_checkpoints(ckpt, a.tasks),
                       reserved={fit_summary: f"the fit summary of {a.model}"}):
        return _simulate(a, out, pdb, side, ckpt)


def _option(name):
    """The option that sets the library parameter ``name`` (for messages): steps -> --steps."""
    return "--" + name.replace("_", "-")


def _options(a):
    """The library parameters of :func:`simulate_model` from the options."""
    return dict(replicas=a.replicas, steps=a.steps, burn_in=a.burn_in, dt=a.dt, slow_every=a.slow_every,
                friction=a.friction, integrator=a.integrator, save_every=a.save_every, temperature=a.temperature,
                seed=a.seed, checkpoint_every=a.checkpoint_every, blowup_factor=a.blowup_factor, threads=a.threads,
                tasks=a.tasks, jobs=a.jobs, scheduler=a.scheduler, guard=a.guard, guard_every=a.guard_every,
                guard_threshold=a.guard_threshold, precision=a.precision)


def _simulate(a, out, pdb, side, ckpt):
    options = _options(a)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        run = simulate_model(a.model, **options, start=a.start, checkpoint=ckpt,
                             progress=show_progress(a))
    counts = run.write_trajectory(out)
    with atomic_path(pdb) as tmp:  # the CG topology for VMD, PyMOL and fes --top (.dcd, .xtc)
        tmp.write_text(pdb_with_provenance(run.pdb_text(), COMMAND, out))
    sidecar = run.sidecar(out.name)
    save_json(side, with_provenance(sidecar, COMMAND, out))
    for path in group_checkpoints(ckpt, a.tasks):
        path.unlink(missing_ok=True)
    t = sidecar["timings"]
    guarded = sum(e["stopped"] for e in sidecar["events"]) - sidecar["n_blown_up"]
    crossed = len({e["replica"] for e in sidecar["events"] if e["reason"] == GUARD_REASON})
    print(f"wrote {out} ({int(counts.sum())} frames from {a.replicas} replicas, {sidecar['n_blown_up']} blown up"
          f"{f', {guarded} stopped by a guard' if guarded else ''}"
          f"{f', {crossed} above the uncertainty threshold' if crossed else ''}) with {pdb} and {side}; "
          f"{rate(t['replica_steps_per_s'])} replica-steps/s ({rate(t['steps_per_s'])} steps/s)")
    return 0


def cli():
    """The console script ``cgdml-simulate`` (setup.cfg): the same command as ``python -m cgdml.simulate``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
