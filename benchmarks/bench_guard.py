"""Cost and use of the simulation guard (issue 25, item 4): force uncertainty against a force call, and a model
fitted only on the beta basin of alanine dipeptide, simulated hot.

Model: the inducing-point fit (``fit_cg_model(..., "nystrom")``, its defaults: 1000 inducing configurations,
sigma and lam by hold-out; the force posterior and guard threshold of cgdml.pipeline's defaults) on the shipped
alanine dipeptide (5 beads) with every frame whose psi lies in (-120, 60) degrees removed: the beta/PPII basin
only. Every ``--stride``-th frame; basin balancing off.

Part 1 (cost): for 100 replicas (training frames), one ``CGModel.forces`` call, the fast (prior) and slow (GDML)
parts of the default multiple-time-step integrator, and one ``CGModel.force_uncertainty`` call, best of 3 (wall
and process CPU: the machine is shared). The guard's share of a default run is t_unc / (guard_every t_step +
t_unc) with t_step the measured CPU (and wall) time per step of a 100-replica run with the simulate defaults (``--guard
off``); a run of ``--cost-steps`` steps with the default guard is timed against it as well.

Part 2 (hot): ``--replicas`` replicas from training frames, simulated at ``--hot`` K (the model's 300 K labels) for
``--steps`` steps with the simulate defaults, except ``--guard warn --guard-every 100`` (one check per saved
frame, so that the step of a crossing is known to 0.3 ps). Per replica: the step of its first guard event, of its
first saved frame inside the removed region (psi in (-100, 40) degrees, well inside it) and of a blow-up.

Run: ``nice -n 5 python benchmarks/bench_guard.py [--stride 2] [--steps 20000] [--replicas 50] [--hot 600]
[--sigma 4 --lam 0.3]`` (a fixed sigma and lam skip the hold-out);
writes benchmarks/results/bench_guard.md. Uses the shipped data only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, best_wall_and_cpu, elapsed_log, load_shipped, load_str  # noqa: E402

import cgdml  # noqa: E402
from cgdml.geometry import dihedral  # noqa: E402
from cgdml.model import CGModel  # noqa: E402
from cgdml.simulate import DEFAULTS, simulate_model  # noqa: E402

REMOVED = (-120.0, 60.0)   # psi (degrees) of the removed frames
INSIDE = (-100.0, 40.0)    # psi well inside the removed region: a replica there has entered the unsampled basin


def psi(R):
    return np.degrees(dihedral(R, (1, 2, 3, 4))[0])


DT = DEFAULTS["langevin"]["dt"]


def guarded_run(model, start, temperature, args, log):
    """A guarded run (warn every 100 steps) from ``start`` at ``temperature``; its table column (strings)."""
    t = time.perf_counter()
    run = simulate_model(model, replicas=args.replicas, steps=args.steps, save_every=100, burn_in=0,
                         temperature=temperature, seed=1, start=start, guard="warn", guard_every=100, progress=False)
    wall = time.perf_counter() - t
    log(f"run at {temperature:g} K: {wall:.0f} s")
    counts, xyz = run.frames_per_replica(), run.coordinates()
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flagged = {e["replica"]: e["step"] for e in run.guard_events()}
    blown = {b["replica"]: b["step"] for b in run.result.blowups}
    entered = {}
    for i in range(args.replicas):
        p = psi(xyz[offsets[i]:offsets[i] + counts[i]])
        inside = np.flatnonzero((p > INSIDE[0]) & (p < INSIDE[1]))
        if len(inside):
            entered[i] = int((inside[0] + 1) * 100)      # frame k is after step (k + 1) save_every
    sample = xyz[::max(1, len(xyz) // 2000)].astype(np.float64)
    u, p = model.force_uncertainty(sample), psi(sample)
    removed = (p > REMOVED[0]) & (p < REMOVED[1])
    thr = model.uncertainty_threshold
    lead = [(entered[i] - flagged[i]) * run.dt for i in entered if flagged.get(i, np.inf) <= entered[i]]
    med = lambda m: f"{np.median(u[m]):.1f}" if m.any() else "-"  # noqa: E731
    pct = lambda m: f"{100 * np.mean(u[m] > thr):.1f}%" if m.any() else "-"  # noqa: E731
    return dict(flagged=f"{len(flagged)} of {args.replicas}", entered=str(len(entered)),
                before=str(sum(flagged.get(i, np.inf) <= entered[i] for i in entered)),
                strictly=str(sum(flagged.get(i, np.inf) < entered[i] for i in entered)),
                never=str(len(set(flagged) - set(entered))),
                blown=f"{len(blown)} ({sum(flagged.get(i, np.inf) <= blown[i] for i in blown)})",
                lead=f"{np.median(lead):.1f}, {max(lead):.1f}" if lead else "-",
                u=f"{med(~removed)} / {med(removed)}", above=f"{pct(~removed)} / {pct(removed)}", wall=f"{wall:.0f}")



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--replicas", type=int, default=50)
    ap.add_argument("--hot", type=float, default=600.0)
    ap.add_argument("--cost-steps", type=int, default=2000)
    ap.add_argument("--sigma", type=float, nargs="+", default=None, help="nystrom sigma grid (default: its own)")
    ap.add_argument("--lam", type=float, nargs="+", default=None, help="nystrom lam grid (default: its own)")
    ap.add_argument("--model", type=Path, default=Path("/tmp") / f"bench_guard_beta_{os.getuid()}.npz",
                    help="fitted model cache (fitted and written when missing)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_guard.md")
    args = ap.parse_args()
    log, say = elapsed_log(), Report()
    warnings.simplefilter("ignore")

    full = load_shipped()
    keep = ~((psi(full.coords) > REMOVED[0]) & (psi(full.coords) < REMOVED[1]))
    beta = full.subset(np.flatnonzero(keep)[::args.stride])
    if args.model.exists():
        model = CGModel.load(args.model)
        log(f"loaded {args.model}")
    else:
        t = time.perf_counter()
        grid = {k: v for k, v in (("sigma", args.sigma), ("lam", args.lam)) if v is not None}
        model = cgdml.fit_cg_model(beta, "nystrom", seed=0, progress=False, balance_basins=False, **grid)
        log(f"fitted in {time.perf_counter() - t:.0f} s")
        model.save(args.model)
    u_info = model.info["uncertainty"]
    say("# Simulation guard: cost and a beta-only model simulated hot (benchmarks/bench_guard.py)")
    say()
    say(f"Command: `python benchmarks/bench_guard.py {' '.join(sys.argv[1:])}`.")
    say()
    grid = "sigma and lam by its hold-out" if args.sigma is None and args.lam is None else \
        f"sigma {args.sigma or 'grid'}, lam {args.lam or 'grid'} given"
    say(f"Model: nystrom (n_inducing default; {grid}) on the shipped alanine dipeptide (5 beads) without psi in {REMOVED} degrees: "
        f"{beta.n_frames} of {full.n_frames} frames (stride {args.stride}); chosen {model.info['chosen']}; fit "
        f"{model.info['wall_time_s']:.0f} s, of which posterior {u_info['timings']['fit_s']:.0f} s and threshold "
        f"{u_info['timings']['threshold_s']:.1f} s. {model.describe_uncertainty()} (rule: "
        f"{u_info['threshold_rule']['margin']} x the {u_info['threshold_rule']['quantile']} quantile over "
        f"{u_info['threshold_rule']['n_frames']} training frames; their median "
        f"{u_info['threshold_rule']['median']:.1f}, max {u_info['threshold_rule']['max']:.1f} kJ/mol/nm).")
    say()

    # ------------------------------------------------------------------ part 1: cost
    rng = np.random.default_rng(0)
    R = beta.coords[rng.choice(beta.n_frames, 100, replace=False)]
    rows = [("forces (prior + GDML)", lambda: model.forces(R)), ("fast forces (prior)", lambda: model.fast_forces(R)),
            ("slow forces (GDML)", lambda: model.slow_forces(R)), ("force_uncertainty", lambda: model.force_uncertainty(R))]
    from cgdml.distributed import limited_threads
    cost = {name: limited_threads(best_wall_and_cpu, fn) for name, fn in rows}
    ref = cost["forces (prior + GDML)"]
    say(f"## 1. Cost for 100 replicas (one thread each as the simulate default; load average {load_str()})")
    say()
    say("| call | wall ms | CPU ms | x forces (CPU) |")
    say("|---|---|---|---|")
    for name, (w, c) in cost.items():
        say(f"| {name} | {1e3 * w:.2f} | {1e3 * c:.2f} | {c / ref[1]:.2f} |")
    kw = dict(replicas=100, steps=args.cost_steps, save_every=100, burn_in=0, seed=0, progress=False)
    runs = {}
    for guard in ("off", "warn"):
        def go(guard=guard):
            t, c = time.perf_counter(), time.process_time()
            simulate_model(model, guard=guard, **kw)
            return time.perf_counter() - t, time.process_time() - c
        runs[guard] = limited_threads(go)
    every = DEFAULTS["guard_every"]
    n_checks = args.cost_steps // every + 1
    share = {}
    for k, what in ((1, "CPU"), (0, "wall")):
        t_step, t_unc = runs["off"][k] / args.cost_steps, cost["force_uncertainty"][k]
        share[what] = (t_step, t_unc, t_unc / (every * t_step + t_unc))
    say()
    say(f"Default run (100 replicas, MTS BAOAB, slow_every 2), {args.cost_steps} steps: guard off "
        f"{runs['off'][0]:.1f} s wall ({runs['off'][1]:.1f} s CPU), guard warn every {every} steps ({n_checks} "
        f"checks) {runs['warn'][0]:.1f} s wall ({runs['warn'][1]:.1f} s CPU).")
    say()
    say(f"| guard every {every} steps | per step, ms | one check, ms | check / step | share of the run |")
    say("|---|---|---|---|---|")
    for what, (t_step, t_unc, sh) in share.items():
        say(f"| {what} | {1e3 * t_step:.2f} | {1e3 * t_unc:.2f} | {t_unc / t_step:.1f} | {100 * sh:.2f}% |")
    say()
    say("CPU time (all threads of this process) is the steadier measure on a shared machine; the wall share "
        "swings with the load. The measured difference of the two runs "
        f"({100 * (runs['warn'][1] - runs['off'][1]) / runs['off'][1]:+.1f}% CPU, "
        f"{100 * (runs['warn'][0] - runs['off'][0]) / runs['off'][0]:+.1f}% wall) is within that noise.")
    say()
    log("cost done")

    # ------------------------------------------------------------------ part 2: hot (and the model's temperature)
    temps = [model.temperature, args.hot]
    stats = [guarded_run(model, beta.coords, T, args, log) for T in temps]
    say(f"## 2. Beta-only model simulated at {' and '.join(f'{T:g} K' for T in temps)}")
    say()
    say(f"{args.replicas} replicas from training frames x {args.steps} steps ({args.steps * DT:g} ps each), simulate "
        "defaults otherwise, guard warn every 100 steps; 'entered': a saved frame with psi in "
        f"{INSIDE} degrees (inside the removed region {REMOVED}).")
    say()
    say("| replicas | " + " | ".join(f"{T:g} K" for T in temps) + " |")
    say("|---|" + "---|" * len(temps))
    for key, label in [("flagged", "flagged by the guard"), ("entered", "entered the removed basin"),
                       ("before", "entered, flagged at or before the first frame inside"),
                       ("strictly", "entered, flagged before the first frame inside"),
                       ("never", "flagged, never entered"), ("blown", "blown up (flagged before)"),
                       ("lead", "lead of the flag over the entry, ps (median, max)"), ("u", "force std (kJ/mol/nm), "
                       "median over frames outside / inside the removed psi range"),
                       ("above", "frames above the threshold, outside / inside"), ("wall", "wall time, s")]:
        say(f"| {label} | " + " | ".join(str(st[key]) for st in stats) + " |")
    say()
    say(f"Threshold {model.uncertainty_threshold:.1f} kJ/mol/nm (the model's).")
    say()
    say(f"Load average after: {load_str()}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    say.write(args.out)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
