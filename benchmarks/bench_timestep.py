"""Benchmark the simulation time step: plain BAOAB at larger dt and multiple-time-step BAOAB (issue 18, item 3).

On the shipped alanine-dipeptide model (5 beads, ``python -m cgdml.map ... --map ala2-5 --force-map optimal``
then ``python -m cgdml.fit`` defaults; fitted here once into ``--workdir`` unless ``--model`` is given), each
setting runs ``python -m cgdml.simulate`` with the same replicas, seed, simulated time per replica and burn-in
(in ps), one after another in this process with one thread. Settings: BAOAB at dt = 2 ... 6 fs, and MTS-BAOAB
(``--slow-every K``: the GDML force every K steps as a k dt / 2 half kick at both ends of an outer step, the
prior and basin offsets at every inner step of dt), two MTS settings at 5x the friction, and a second 2 fs run
with another seed (the control: what two runs of the reference setting differ by).

For each run:

- speed: simulated replica-ns per wall second of the full run (the sidecar's simulate time), and in a separate
  timing pass (every setting 3 times, interleaved, best of 3, on the same start frames), whose ratio to the
  2 fs run is the speed-up reported (it is less exposed to load changes on a shared machine);
- landscape: ``python -m cgdml.fes TRAJ --reference DATA`` (phi, psi) js and fes_rmse with the block-bootstrap
  95% interval;
- the (phi, psi) js between the run and the 2 fs run itself (no reference; the control row shows its noise);
- bonds and angles: for every bond and angle of the model's prior, the shift of the mean in units of the 2 fs
  run's standard deviation, and the ratio of standard deviations to the 2 fs run's, from the trajectory (after
  the burn-in), each with its standard error from a bootstrap over replicas (both runs resampled; replicas are
  independent, frames within one are not: bond widths follow the slowly exchanging (phi, psi) basins); the
  worst term is reported, with z = difference / standard error;
- blow-ups (replicas stopped by the simulate CLI's blow-up test).

A setting passes when its js is within (or below) the 2 fs run's bootstrap interval, every bond and angle mean
and width is unchanged (|z| <= Z_MAX, i.e. not distinguishable from the 2 fs run, or the change is below
MEAN_TOL of the width / STD_TOL of the width: negligible), and nothing blew up.

Run: ``python benchmarks/bench_timestep.py [--quick]`` (full: 13-23 minutes on the 2 shared cores). Writes
benchmarks/results/bench_timestep.md (``--quick``: bench_timestep_quick.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from _common import Report, elapsed_log, load_str

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEAN_TOL = 0.02     # a bond/angle mean shift below this (in 2 fs standard deviations) is negligible
STD_TOL = 0.01      # a relative change of a bond/angle width below this is negligible
Z_MAX = 3.0         # larger changes pass when within Z_MAX bootstrap standard errors (7 terms x 2 statistics)
N_BOOT = 1000
FRAME_PS = 0.24     # frame interval: a whole number of outer steps for every setting below

# (dt fs, slow_every K, friction 1/ps): plain BAOAB, then MTS-BAOAB; the first is the reference setting. The last
# two rows ask whether 5x the friction damps the resonance of the bond vibration with the outer step.
FULL = [(2, 1, 1.0), (3, 1, 1.0), (4, 1, 1.0), (5, 1, 1.0), (6, 1, 1.0), (2, 2, 1.0), (2, 3, 1.0), (2, 4, 1.0),
        (2, 6, 1.0), (3, 2, 1.0), (4, 2, 1.0), (4, 3, 1.0), (5, 2, 1.0), (2, 4, 5.0), (4, 2, 5.0)]
QUICK = [(2, 1, 1.0), (4, 1, 1.0), (2, 3, 1.0), (4, 2, 1.0)]


def fit_model(workdir, log):
    """The shipped-data model of the brief: map to 5 beads (optimal force map), fit with the defaults."""
    data, model = workdir / "ala2_cg.npz", workdir / "model.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not data.exists():
        log("mapping the shipped ala2 data to 5 beads")
        subprocess.run([sys.executable, "-m", "cgdml.map", "--top", str(ROOT / "data/ala2_implicit_300K.pdb"),
                        "--traj", str(ROOT / "data/ala2_implicit_300K.npz"), "--forces",
                        str(ROOT / "data/ala2_implicit_300K.npz"), "--map", "ala2-5", "--force-map", "optimal",
                        "-o", str(data)], check=True, env=env)
    if not model.exists():
        log("fitting the model (python -m cgdml.fit defaults, a few minutes)")
        subprocess.run([sys.executable, "-m", "cgdml.fit", str(data), "-o", str(model)], check=True, env=env)
    return data, model


def steps_of(ps, dt_fs, what):
    n = ps * 1000.0 / dt_fs
    if abs(n - round(n)) > 1e-6:
        raise SystemExit(f"{what} {ps} ps is not a whole number of {dt_fs} fs steps")
    return int(round(n))


def label(setting):
    dt, k, gamma = setting
    return (f"BAOAB {dt} fs" if k == 1 else f"MTS {dt} fs x {k}") + ("" if gamma == 1.0 else f", friction {gamma:g}/ps")


def internal_coordinates(xyz, model):
    """Bond lengths (nm) and angles (rad) of every prior term, (n_frames, n_terms) each."""
    from cgdml.geometry import bond_angles, bond_lengths

    return bond_lengths(xyz, model.prior.bond_pairs_), bond_angles(xyz, model.prior.angle_triples_)


def replica_sums(q, counts):
    """Per-replica frame counts, sums and sums of squares of the columns of q (replicas one after another)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = np.asarray(counts, dtype=np.float64)
    keep = n > 0
    s1 = np.add.reduceat(q, starts[keep], axis=0)
    s2 = np.add.reduceat(q * q, starts[keep], axis=0)
    return n[keep], s1, s2


def _moments(w, n, s1, s2):
    """Means and standard deviations (n_boot, n_terms) for replica weights w (n_boot, n_rep)."""
    tot = w @ n
    mean = (w @ s1) / tot[:, None]
    return mean, np.sqrt(np.maximum((w @ s2) / tot[:, None] - mean**2, 0.0))


def distribution_change(q, counts, ref, ref_counts, seed=0):
    """Mean shift / ref std and std / ref std of every column of q against ref, with bootstrap standard errors
    over replicas: dict of arrays shift, shift_se, ratio, ratio_se (n_terms,)."""
    rng = np.random.default_rng(seed)
    a, b = replica_sums(q, counts), replica_sums(ref, ref_counts)
    (ma, sa), (mb, sb) = _moments(np.ones((1, len(a[0]))), *a), _moments(np.ones((1, len(b[0]))), *b)
    wa = rng.multinomial(len(a[0]), np.full(len(a[0]), 1.0 / len(a[0])), size=N_BOOT).astype(np.float64)
    wb = rng.multinomial(len(b[0]), np.full(len(b[0]), 1.0 / len(b[0])), size=N_BOOT).astype(np.float64)
    (ma_b, sa_b), (mb_b, sb_b) = _moments(wa, *a), _moments(wb, *b)
    shift, ratio = (ma - mb)[0] / sb[0], (sa / sb)[0]
    return {"shift": shift, "shift_se": ((ma_b - mb_b) / sb_b).std(0), "ratio": ratio,
            "ratio_se": (sa_b / sb_b).std(0)}


def unchanged(d):
    """Every term's mean and width within Z_MAX standard errors of the reference, or negligibly changed."""
    ok_mean = (np.abs(d["shift"]) <= MEAN_TOL) | (np.abs(d["shift"]) <= Z_MAX * d["shift_se"])
    ok_width = (np.abs(d["ratio"] - 1) <= STD_TOL) | (np.abs(d["ratio"] - 1) <= Z_MAX * d["ratio_se"])
    return bool(ok_mean.all() and ok_width.all())


def describe_change(d):
    """'worst |shift| (z) | width min-max (worst z)' for the table."""
    z_mean = np.abs(d["shift"]) / np.maximum(d["shift_se"], 1e-300)
    z_width = np.abs(d["ratio"] - 1) / np.maximum(d["ratio_se"], 1e-300)
    i = int(np.argmax(np.abs(d["shift"])))
    return (f"{abs(d['shift'][i]):.3f} (z {z_mean.max():.1f})",
            f"{d['ratio'].min():.3f}-{d['ratio'].max():.3f} (z {z_width.max():.1f})")


def timing_pass(model, settings, n_rep, n_steps, rounds, log):
    """Best-of-``rounds`` replica-ns per wall second of each setting, interleaved, 1 thread, no I/O."""
    import numba
    from threadpoolctl import threadpool_limits

    from cgdml.simulate import simulate, start_configurations

    x0 = start_configurations(model, n_rep, 0)
    best = {s: 0.0 for s in settings}
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            for r in range(rounds):
                for st in settings:
                    dt, k, gamma = st
                    forces = (model.fast_forces, model.slow_forces) if k > 1 else model.forces
                    res = simulate(forces, x0, masses=model.masses, temperature=model.temperature, dt=dt / 1000,
                                   n_steps=n_steps, save_every=n_steps, integrator="langevin", friction=gamma,
                                   seed=r, progress=False, slow_every=k)
                    best[st] = max(best[st], n_rep * n_steps * dt * 1e-6 / res.timings["wall_s"])
                log(f"timing round {r + 1}/{rounds}: " + ", ".join(f"{label(st)} {best[st]:.3f}" for st in settings))
    finally:
        numba.set_num_threads(old)
    return best


def run_setting(model_path, data_path, workdir, setting, seed, n_rep, total_ps, burn_ps):
    """One simulate CLI run and its fes comparison; returns the sidecar, the fes JSON and the trajectory."""
    import mdtraj as md

    from cgdml.fes.__main__ import main as fes_main
    from cgdml.simulate.__main__ import main as sim_main

    dt, k, gamma = setting
    name = f"dt{dt}_k{k}_g{gamma:g}_s{seed}"
    traj = workdir / f"{name}.h5"
    for suffix in (".h5", ".json", ".pdb", ".fes.json", ".fes.png", ".h5.ckpt.npz"):   # a fresh, fully timed run
        (workdir / f"{name}{suffix}").unlink(missing_ok=True)
    args = [str(model_path), "-o", str(traj), "--replicas", str(n_rep), "--dt", str(dt / 1000),
            "--steps", str(steps_of(total_ps, dt, "run")), "--burn-in", str(steps_of(burn_ps, dt, "burn-in")),
            "--save-every", str(steps_of(FRAME_PS, dt, "frame interval")), "--slow-every", str(k),
            "--friction", str(gamma), "--seed", str(seed), "--threads", "1", "--no-progress", "--quiet"]
    sim_main(args)
    fes_json = workdir / f"{name}.fes.json"
    fes_main([str(traj), "--reference", str(data_path), "-o", str(workdir / f"{name}.fes.png"),
              "--json", str(fes_json), "--quiet"])
    return (json.loads(traj.with_suffix(".json").read_text()), json.loads(fes_json.read_text()),
            md.load(str(traj)).xyz.astype(np.float64))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 settings, 20 replicas, 24 ps each (a smoke test)")
    p.add_argument("--model", help="fitted CG model (default: fit the shipped data into --workdir)")
    p.add_argument("--reference", help="the CG dataset the model was fitted on (with --model)")
    p.add_argument("--workdir", default="/tmp/dt", help="models, trajectories and fes outputs (default /tmp/dt)")
    p.add_argument("--replicas", type=int, default=None, help="replicas per run (default 100; quick 20)")
    p.add_argument("--ps", type=float, default=None, help="simulated ps per replica (default 120; quick 24)")
    p.add_argument("--burn-in-ps", type=float, default=None, help="burn-in ps (default 24; quick 4.8)")
    p.add_argument("--settings", default=None, help="DT:K[:FRICTION],... (fs, slow_every, 1/ps, default 1); the "
                   "first is the reference")
    p.add_argument("-o", "--output", default=None, help="results markdown file")
    a = p.parse_args(argv)
    log = elapsed_log()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if a.model:
        if not a.reference:
            raise SystemExit("--model needs --reference (the dataset it was fitted on)")
        model_path, data_path = Path(a.model), Path(a.reference)
    else:
        data_path, model_path = fit_model(workdir, log)
    settings = QUICK if a.quick else FULL
    if a.settings:
        settings = [(int(s.split(":")[0]), int(s.split(":")[1]), float((s.split(":") + ["1"])[2]))
                    for s in a.settings.split(",")]
    n_rep = a.replicas or (20 if a.quick else 100)
    total_ps = a.ps or (24.0 if a.quick else 120.0)
    burn_ps = a.burn_in_ps if a.burn_in_ps is not None else (4.8 if a.quick else 24.0)
    out = Path(a.output) if a.output else RESULTS / ("bench_timestep_quick.md" if a.quick else "bench_timestep.md")

    from cgdml.model import CGModel

    model = CGModel.load(model_path)
    ref_set = settings[0]
    say = Report()
    say("# Time step: BAOAB at larger dt and multiple-time-step BAOAB (issue 18, item 3)")
    say()
    say(f"Machine: {platform.node()}, {os.cpu_count()} cores, load at start {load_str()} (shared). "
        f"`python benchmarks/bench_timestep.py{' --quick' if a.quick else ''}`.")
    say()
    say(f"Model: `{model_path}` ({model.n_beads} beads, GDML with {model.gdml.n_train} points, "
        f"{len(model.prior.bond_pairs_)} bonds and {len(model.prior.angle_triples_)} angles in the prior, "
        f"basin offsets: {'yes' if model.offsets is not None else 'no'}); reference `{data_path}`. "
        f"Every run: `python -m cgdml.simulate` with {n_rep} replicas, {total_ps:g} ps per replica "
        f"({n_rep * total_ps / 1000:g} replica-ns), burn-in {burn_ps:g} ps, a frame every {FRAME_PS} ps, friction "
        "1/ps unless given, seed 0, 1 thread; `MTS dt x K` = `--dt dt --slow-every K` (GDML every K steps, outer step K dt).")
    say()

    # ---------------------------------------------------------------- timing pass (interleaved, best of 3)
    timing_steps = 1200 if not a.quick else 240
    log(f"timing pass: {len(settings)} settings x 3 rounds, {n_rep} replicas x {timing_steps} steps")
    speed = timing_pass(model, settings, n_rep, timing_steps, 3, log)

    # ---------------------------------------------------------------- full runs
    rows = {}
    runs = [(st, 0) for st in settings] + [(ref_set, 1)]
    for st, seed in runs:
        log(f"run {label(st)} seed {seed}")
        side, fes, xyz = run_setting(model_path, data_path, workdir, st, seed, n_rep, total_ps, burn_ps)
        from cgdml.fes import phi_psi

        bonds, angles = internal_coordinates(xyz, model)
        rows[(st, seed)] = dict(side=side, fes=fes, bonds=bonds, angles=angles,
                                   counts=side["frames_per_replica"], phipsi=phi_psi(xyz, model.cg_topology))
        t = side["timings"]
        log(f"  wall {t['wall_s']:.0f} s, js {fes['metrics']['js']:.4f} "
            f"[{fes['bootstrap']['js']['lo']:.4f}, {fes['bootstrap']['js']['hi']:.4f}], "
            f"blow-ups {side['n_blown_up']}")

    ref = rows[(ref_set, 0)]
    js_hi = ref["fes"]["bootstrap"]["js"]["hi"]
    ref_rate = speed[ref_set]
    ref_wall_rate = None
    from cgdml.fes import compare_fes

    say("| setting | outer step (fs) | wall (s) | replica-ns/s (run) | replica-ns/s (timing) | speed-up | js [95%] | "
        f"fes_rmse (kT) [95%] | js vs {label(ref_set)} | bond mean shift (sigma) | bond width | "
        "angle mean shift (sigma) | angle width | blow-ups | passes |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = {}
    for (st, seed), r in rows.items():
        dt, k, _ = st
        side, fes, t = r["side"], r["fes"], r["side"]["timings"]
        wall_rate = n_rep * side["settings"]["steps"] * dt * 1e-6 / t["wall_s"]
        if ref_wall_rate is None:
            ref_wall_rate = wall_rate
        db = distribution_change(r["bonds"], r["counts"], ref["bonds"], ref["counts"])
        da = distribution_change(r["angles"], r["counts"], ref["angles"], ref["counts"])
        m, bs = fes["metrics"], fes["bootstrap"]
        js_self = compare_fes(r["phipsi"], ref["phipsi"])["js"]
        ok = m["js"] <= js_hi and unchanged(db) and unchanged(da) and side["n_blown_up"] == 0
        verdicts[(st, seed)] = ok
        name = label(st) + (f" (seed {seed}, control)" if seed else "")
        rate = speed[st]
        say(f"| {name} | {dt * k} | {t['wall_s']:.0f} | {wall_rate:.3f} ({wall_rate / ref_wall_rate:.2f}x) | "
            f"{rate:.3f} | {rate / ref_rate:.2f}x | {m['js']:.4f} [{bs['js']['lo']:.4f}, {bs['js']['hi']:.4f}] | "
            f"{m['fes_rmse']:.3f} [{bs['fes_rmse']['lo']:.3f}, {bs['fes_rmse']['hi']:.3f}] | {js_self:.4f} | "
            f"{' | '.join(describe_change(db))} | {' | '.join(describe_change(da))} | "
            f"{side['n_blown_up']} | {'yes' if ok else 'no'} |")
    say()
    t_ref = ref["side"]["timings"]
    slow_share = {}
    for (st, seed), r in rows.items():
        t = r["side"]["timings"]
        slow_share[(st, seed)] = (t.get("slow_force_s"), t["force_s"], t["wall_s"])
    say(f"Pass: js at most the {label(ref_set)} run's bootstrap upper bound ({js_hi:.4f}); every bond and "
        f"angle unchanged: its mean shift (in {label(ref_set)} standard deviations; the worst term shown) and "
        f"its width (std / std at {label(ref_set)}, min-max over terms) within {Z_MAX:g} bootstrap standard "
        f"errors over replicas (z: the largest over terms), or below {MEAN_TOL} sigma / {STD_TOL:.0%}; "
        f"no blow-ups. {len(model.prior.bond_pairs_)} bonds, {len(model.prior.angle_triples_)} angles. "
        f"Speed-up = timing-pass replica-ns/s over {label(ref_set)}'s (100 replicas x {timing_steps} steps, "
        "best of 3 interleaved rounds); the run column's ratio is over the full runs, one after another.")
    say()
    say(f"Where the time goes ({label(ref_set)} run): force calls {t_ref['force_s']:.0f} of "
        f"{t_ref['wall_s']:.0f} s. MTS runs (slow = GDML force calls, of all force calls, of wall): " + "; ".join(
            f"{label(st)} {s:.0f} / {f:.0f} / {w:.0f} s" for (st, seed), (s, f, w) in slow_share.items()
            if s is not None and seed == 0))
    say()
    passing = [(speed[st] / ref_rate, st) for (st, seed), ok in verdicts.items() if ok and seed == 0
               and st != ref_set]
    if passing:
        best = max(passing)
        say(f"Fastest passing setting: {label(best[1])}, {best[0]:.2f}x the simulated time per wall second "
            f"of {label(ref_set)}.")
    else:
        say("No setting other than the reference passes.")
    say()
    say(f"Load at the end {load_str()}.")
    say.write(out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
