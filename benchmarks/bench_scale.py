"""Scale benchmark: the inducing-point (Nyström) GDML fit on up to a million frames, and its landscape accuracy
against the two-layer ensemble.

Part 1 (fit cost): Nyström fits with fixed sigma 4, lam 0.3 (no selection) on the first N frames (10k, 100k,
1M) of a 6-bead alanine-dipeptide dataset of 1,000,000 frames, for m = 500 and 1000 inducing configurations.
The data come from ``python -m cgdml.reference --ns 8 --save-every-ps 0.008 --seed 11`` (implicit solvent,
300 K, HMR 4 fs; 8 ns in 8 fs frames) mapped with ``python -m cgdml.map --map ala2-6 --force-map optimal``;
pass the mapped file with ``--big``. Each fit runs ``python -m cgdml.fit --method nystrom`` in its own process,
so the peak resident memory (ru_maxrss of the child) is that fit's alone. The table gives wall time, the
setup (preconditioner) and CG parts, CG iterations and peak memory.

Part 2 (accuracy at comparable wall time): on the shipped data (ala2-5, optimal force map, 20,000 frames)
and the cgnet data (5 beads, 10,000 frames), the two-layer defaults against Nyström with m = 500 and
m = 1000 (each with its own hold-out selection over sigma {2, 4, 8} x lam {0.1, 0.3, 1, 3}), all through the
command lines: fit, then ``python -m cgdml.simulate`` with its defaults (100 replicas x 50,000 BAOAB steps),
then ``python -m cgdml.fes --json``: JS and FES RMSE of (phi, psi) with bootstrap 95% intervals and the
reference's split-half floor, plus fit and simulation wall times. With ``--big`` it also fits Nyström
(m = 1000, the sigma and lam chosen on the shipped data) to all 1M frames and scores its simulation against
those frames.

Run: ``python benchmarks/bench_scale.py --big BIG.npz [--quick]`` (about an hour on the shared 2-core machine;
--quick: a few minutes). Writes benchmarks/results/bench_scale.md; work files go to --workdir and finished
steps are reused on a rerun. Needs /work/shared (cgnet) data.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cgdml._cli import run_cli
from _common import CGNET, Report, load_shipped, load_str

RESULTS = Path(__file__).resolve().parent / "results" / "bench_scale.md"
SIGMAS, LAMS = ("2", "4", "8"), ("0.1", "0.3", "1", "3")
COST_SIGMA, COST_LAM = 4.0, 0.3  # part 1's fixed hyperparameters


def run(cmd, log):
    """Run a command line; return (wall seconds, peak RSS of that child in GB). Raises on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", *cmd], stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return wall, usage.ru_maxrss / 1e6  # ru_maxrss is in kB on Linux


def cached(path, compute):
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=1))
    return result


def subset_file(big, n, workdir):
    from cgdml.data import CGDataset

    out = workdir / f"big_{n}.npz"
    if not out.exists():
        CGDataset.load(big).subset(np.arange(n)).save(out)
    return out


def fit_cost(big, cases, workdir, say):
    rows = []
    for n, m in cases:
        data = subset_file(big, n, workdir) if n < 1_000_000 else Path(big)

        def compute():
            model = workdir / f"cost_{n}_{m}.npz"
            model.unlink(missing_ok=True)
            load = load_str()
            wall, peak = run(["cgdml.fit", str(data), "-o", str(model), "--method", "nystrom", "--n-inducing",
                              str(m), "--sigma", f"{COST_SIGMA:g}", "--lam", f"{COST_LAM:g}", "--quiet"],
                             workdir / f"cost_{n}_{m}.log")
            info = json.loads(model.with_suffix(".json").read_text())
            t = info["timings"]
            return dict(n=n, m=m, wall_s=wall, peak_gb=peak, setup_s=t["final_setup_s"], cg_s=t["final_cg_s"],
                        iterations=info["chosen"]["cg_iterations"], residual=info["chosen"]["residual"],
                        load=load)
        row = cached(workdir / f"cost_{n}_{m}.row.json", compute)  # beside the model's own cost_N_m.json
        say(f"  N={n:>9,} m={m:>5}: {row['wall_s']:7.1f} s, {row['iterations']} CG iterations, "
            f"peak {row['peak_gb']:.2f} GB (load {row['load']})")
        rows.append(row)
    return rows


def landscape(name, data, method_args, workdir, say, quick, model=None):
    """Fit (unless ``model`` is given), simulate and score one model through the command lines; a result row."""
    def compute():
        nonlocal model
        traj = workdir / f"{name}_traj.h5"
        traj.unlink(missing_ok=True)
        load = load_str()
        if model is None:
            model = workdir / f"{name}.npz"
            model.unlink(missing_ok=True)
            fit_s, fit_gb = run(["cgdml.fit", str(data), "-o", str(model), "--quiet", *method_args],
                                workdir / f"{name}_fit.log")
        else:
            row = json.loads(model.with_suffix(".row.json").read_text())  # part 1's measurements
            fit_s, fit_gb = row["wall_s"], row["peak_gb"]
        sim = ["--replicas", "20", "--steps", "5000"] if quick else []
        sim_s, _ = run(["cgdml.simulate", str(model), "-o", str(traj), "--no-progress", *sim],
                       workdir / f"{name}_sim.log")
        fes_json = workdir / f"{name}_fes.json"
        run(["cgdml.fes", str(traj), "--reference", str(data), "-o", str(workdir / f"{name}_fes.png"),
             "--json", str(fes_json)], workdir / f"{name}_fes.log")
        rep = json.loads(fes_json.read_text())
        info = json.loads(model.with_suffix(".json").read_text())
        b = rep["bootstrap"]
        return dict(name=name, fit_s=fit_s, fit_gb=fit_gb, sim_s=sim_s, js=rep["metrics"]["js"],
                    js_lo=b["js"]["lo"], js_hi=b["js"]["hi"], rmse=rep["metrics"]["fes_rmse"],
                    rmse_lo=b["fes_rmse"]["lo"], rmse_hi=b["fes_rmse"]["hi"], js_floor=rep["noise_floor"]["js"],
                    rmse_floor=rep["noise_floor"]["fes_rmse"], chosen=info.get("chosen", {}), load=load,
                    phi_pos=rep.get("phi_positive", {}).get("model"),
                    phi_pos_ref=rep.get("phi_positive", {}).get("reference"))
    row = cached(workdir / f"{name}.json", compute)
    say(f"  {name}: JS {row['js']:.4f} [{row['js_lo']:.4f}, {row['js_hi']:.4f}] (floor {row['js_floor']:.4f}), "
        f"RMSE {row['rmse']:.3f} kT, fit {row['fit_s']:.0f} s, simulate {row['sim_s']:.0f} s")
    return row


def cgnet_file(workdir):
    out = workdir / "cgnet.npz"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "cgdml.map", "--coords", str(CGNET / "ala2_coordinates.npy"),
                        "--cg-forces", str(CGNET / "ala2_forces.npy"), "--length-unit", "angstrom",
                        "--energy-unit", "kcal/mol", "--beads", "ala2-5", "--temperature", "300", "-o", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
    return out


def shipped_file(workdir):
    out = workdir / "shipped.npz"
    if not out.exists():
        load_shipped().save(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", help="mapped 6-bead dataset with 1,000,000 frames (part 1 and the 1M landscape)")
    p.add_argument("--workdir", default="bench_scale_work", help="work files; finished steps are reused")
    p.add_argument("--quick", action="store_true", help="small settings (a few minutes)")
    p.add_argument("--part", choices=["1", "2", "3", "all"], default="all", help="run only part 1 (fit cost), "
                   "2 (landscapes on shipped and cgnet) or 3 (landscape of the 1M model); processes can share the "
                   "work directory, and a last run with --part all collects the results")
    p.add_argument("--cases", default="10000:500,10000:1000,100000:500,1000000:500,100000:1000,1000000:1000",
                   help="part 1 fits as N:m pairs (default %(default)s)")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/bench_scale.md")
    a = p.parse_args(argv)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = Report()

    t_start = time.perf_counter()
    say(f"# Scale benchmark: inducing-point GDML ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"{os.cpu_count()} cores)")
    say()
    say(f"Load average at start (1/5/15 min): {load_str()} on {os.cpu_count()} cores; the machine is shared, so "
        "compare within a table. Each row below states the 1-minute load when it started.")
    say()
    cost_rows = []
    if a.big and a.part in ("1", "all"):
        cases = [(10_000, 200), (100_000, 200)] if a.quick else \
            [tuple(int(v) for v in case.split(":")) for case in a.cases.split(",")]
        say("## 1. Fit cost against N and m (6 beads, sigma 4, lam 0.3, no selection)")
        say()
        cost_rows = fit_cost(a.big, cases, workdir, lambda s: print(s, flush=True))
        say("| frames N | inducing m | wall (s) | preconditioner setup (s) | CG (s) | CG iterations | s per iteration"
            " | peak RSS (GB) | load |")
        say("|---|---|---|---|---|---|---|---|---|")
        for r in cost_rows:
            say(f"| {r['n']:,} | {r['m']} | {r['wall_s']:.0f} | {r['setup_s']:.0f} | {r['cg_s']:.0f} | "
                f"{r['iterations']} | {r['cg_s'] / max(r['iterations'], 1):.2f} | {r['peak_gb']:.2f} | {r['load']} |")
        say()
        say("Wall time includes loading the data, the prior and phi/psi strata, descriptors and the final write. "
            "Memory: the frames' descriptors, reduced Jacobians and labels (8 N n_desc (r + 1) bytes: 1.9 GB at "
            "1M frames, 6 beads) plus the preconditioner (its matrices and work copies peak at about "
            "5 (m r)^2 doubles: 6.5 GB at m = 1000, 6 beads).")
        say()

    say("## 2. Landscape accuracy against the two-layer ensemble")
    say()
    grid = ["--sigma", *SIGMAS, "--lam", *LAMS]
    methods = [("two-layer", []), ("nystrom-m500", ["--method", "nystrom", "--n-inducing", "500", *grid]),
               ("nystrom-m1000", ["--method", "nystrom", "--n-inducing", "1000", *grid])]
    if a.quick:
        methods = [("two-layer", ["--n-models", "4", "--batch-size", "500", "--mean-set-size", "500",
                                  "--sigma1", "4", "--lam1", "1", "--sigma2", "2", "--lam2", "0.01"]),
                   ("nystrom-m200", ["--method", "nystrom", "--n-inducing", "200", "--sigma", "4", "--lam", "0.3"])]
    rows = []
    if a.part in ("2", "all"):
        for dname, dfile in (("shipped", shipped_file(workdir)), ("cgnet", cgnet_file(workdir))):
            for mname, args in methods:
                rows.append(dict(data=dname, **landscape(f"{dname}_{mname}", dfile, args, workdir,
                                                         lambda s: print(s, flush=True), a.quick)))
    if a.big and not a.quick and a.part in ("3", "all"):
        # the 1M-frame, m = 500 model of part 1, simulated and scored against its 1M frames
        rows.append(dict(data="1M frames, 6 beads", **landscape("big_nystrom-m500", a.big, [], workdir,
                                                                 lambda s: print(s, flush=True), a.quick,
                                                                 model=workdir / "cost_1000000_500.npz")))
    say("| data | method | chosen | fit (s) | fit peak RSS (GB) | simulate (s) | JS [95% CI] | JS floor | "
        "FES RMSE kT [95% CI] | RMSE floor | phi > 0 (ref) | load |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ch = r["chosen"]
        chosen = (f"s {ch['sigma']:g}, l {ch['lam']:g}" if "sigma" in ch else
                  f"s1 {ch['sigma1']:g}, l1 {ch['lam1']:g}, s2 {ch['sigma2']:g}, l2 {ch['lam2']:g}")
        phi = (f"{100 * r['phi_pos']:.2f}% ({100 * r['phi_pos_ref']:.2f}%)" if r.get("phi_pos") is not None else "-")
        say(f"| {r['data']} | {r['name'].split('_', 1)[1]} | {chosen} | {r['fit_s']:.0f} | {r['fit_gb']:.2f} | "
            f"{r['sim_s']:.0f} | {r['js']:.4f} [{r['js_lo']:.4f}, {r['js_hi']:.4f}] | {r['js_floor']:.4f} | "
            f"{r['rmse']:.3f} [{r['rmse_lo']:.3f}, {r['rmse_hi']:.3f}] | {r['rmse_floor']:.3f} | {phi} | "
            f"{r['load']} |")
    say()
    say("Fit and simulate times are wall times of the command lines (simulate: 100 replicas x 50,000 steps, "
        "1 thread). JS and RMSE compare (phi, psi) histograms (36 x 36) with the dataset the model was fitted "
        "to; the floor is that dataset's own split-half value.")
    say()
    say(f"Total benchmark time: {(time.perf_counter() - t_start) / 60:.1f} min (finished steps reused from "
        f"{workdir} are not counted). Load at end: {load_str()}.")
    if not a.no_write:
        say.write(RESULTS)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    run_cli(main)
