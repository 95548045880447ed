"""Fit speed of the two-layer fit before and after a change: the same `python -m cgdml.fit` on the same data, one
source tree against another, in the same run, with the results compared.

For each map (ACE-AAA-NME from data/: 11 beads = backbone, 14 = backbone + CB; the maps of bench_beads.py) and
each source tree (``--trees NAME=PATH``, e.g. ``before=/tmp/base after=.``; a tree is put first on PYTHONPATH),
it runs ``python -m cgdml.fit DATA --method two-layer [--fit-args ...]`` in a child process and records the wall
time, the peak resident memory of it and its children, the estimator's own timings, the chosen hyperparameters
and the load average before and after. Runs alternate between the trees map by map, so that both see similar
machine load (the machine is shared: compare the ratios within one run). Each tree's model is then compared
with the first tree's: whether the same hyperparameters were chosen and the largest force difference on 500
frames of the data, against the models' RMS force and the first model's mean force uncertainty there.

Run: ``python benchmarks/bench_fit_speed.py --trees before=/tmp/base after=. --maps 11 14 --fit-args="..."``;
rows are kept in ``--workdir`` (a rerun reuses them) and the table goes to ``--output``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import Report, load_str
from bench_beads import PEAK, peptide

ROOT = Path(__file__).resolve().parents[1]
TETRA = ROOT / "data/ace-aaa-nme_implicit_300K"


def run(cmd, tree, log, threads=None):
    env = dict(os.environ, PYTHONPATH=str(tree))
    log("$ PYTHONPATH=" + str(tree) + " " + " ".join("<script>" if "\n" in str(c) else str(c) for c in cmd))
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=tree, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {proc.stderr.strip()[-1500:]}")
    peak = [int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KB")]
    return time.perf_counter() - t0, (peak[0] / 1e6 if peak else float("nan"))


def map_data(n_beads, work, log):
    data = work / f"cg{n_beads}.npz"
    if not data.exists():
        (work / f"map{n_beads}.toml").write_text(peptide(3, cb=n_beads == 14))
        run([sys.executable, "-m", "cgdml.map", "--top", TETRA.with_suffix(".pdb"), "--traj", TETRA.with_suffix(".npz"),
             "--forces", TETRA.with_suffix(".npz"), "--map", work / f"map{n_beads}.toml", "--force-map", "aggregate",
             "-q", "-o", data], ROOT, log)
    return data


def compare(model_a, model_b, data, n=500):
    """(max |F_a - F_b| / RMS |F_a|, max |F_a - F_b|, mean force uncertainty of model a) on n frames of data."""
    from cgdml.data import CGDataset
    from cgdml.model import CGModel

    ds = CGDataset.load(data)
    R = ds.coords[np.linspace(0, ds.n_frames - 1, n).astype(int)].astype(np.float64)
    a, b = CGModel.load(model_a), CGModel.load(model_b)
    fa, fb = a.forces(R), b.forces(R)
    diff = float(np.abs(fa - fb).max())
    unc = float("nan")
    if a.uncertainty is not None:
        unc = float(np.mean(a.force_uncertainty(R)))
    return diff / float(np.sqrt(np.mean(fa ** 2))), diff, unc


PATH_SNIPPET = """
import json, sys, time, warnings
import numpy as np
from threadpoolctl import threadpool_limits
import numba
from cgdml.data import CGDataset
from cgdml.pipeline import cg_estimator
from cgdml.gdml import GDML
data, n_frames, sigma, lams, out, use_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    [float(v) for v in sys.argv[4].split(",")], sys.argv[5], sys.argv[6] == "path"
learner, R, F, _ = cg_estimator("two-layer")._prepare(CGDataset.load(data))
idx = np.sort(np.random.default_rng(0).choice(len(R), n_frames, replace=False))
Rt = R[np.random.default_rng(1).choice(len(R), 500, replace=False)]
numba.set_num_threads(1)
with threadpool_limits(1), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    if use_path:
        models = GDML(sigma=sigma, relative_lam=True, dihedrals=learner.dihedrals).fit_path(R[idx], F[idx], lams)
    else:
        models = [GDML(sigma=sigma, lam=lam, relative_lam=True, dihedrals=learner.dihedrals).fit(R[idx], F[idx]).model_
                  for lam in lams]
    wall = time.perf_counter() - t
np.savez(out, wall=wall, forces=np.array([m.predict_forces(Rt) for m in models]))
"""


def path_part(trees, n_beads, data, work, log, n_frames=2000, sigma=4.0, lams="3,1,0.3"):
    """One layer-1 batch (``n_frames`` residual-force frames, ``sigma``, the default lam1 grid), one thread: each
    lambda fitted on its own in every tree, and as one lambda path in the last tree (the current code). Returns
    rows (tree, how, wall s, max force difference to the first tree / its RMS force)."""
    rows = []
    runs = [(name, tree, "separate") for name, tree in trees] + [(trees[-1][0], trees[-1][1], "path")]
    ref = None
    for name, tree, how in runs:
        out = work / f"path_{n_beads}_{name}_{how}.npz"
        if not out.exists():
            load = load_str()
            run([sys.executable, "-c", PATH_SNIPPET, data, n_frames, sigma, lams, out, how], tree, log)
            (work / f"{out.stem}.load").write_text(f"{load} -> {load_str()}")
        res = np.load(out)
        ref = res["forces"] if ref is None else ref
        rel = float(np.abs(res["forces"] - ref).max() / np.sqrt(np.mean(ref ** 2)))
        rows.append((name, how, float(res["wall"]), rel, (work / f"{out.stem}.load").read_text()))
    return rows


def eigh_vs_cholesky(n=3000):
    """Seconds of one Cholesky factorisation and one symmetric eigendecomposition (evd) of an n x n SPD matrix,
    one thread."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    A = np.random.default_rng(0).normal(size=(n, n))
    A = A @ A.T / n + np.eye(n)
    with threadpool_limits(1):
        t = time.perf_counter()
        scipy.linalg.cho_factor(A.copy(), check_finite=False)
        chol = time.perf_counter() - t
        t = time.perf_counter()
        scipy.linalg.eigh(A, check_finite=False, driver="evd")
        return chol, time.perf_counter() - t


def svd_threads(n_frames=2000, n_desc=108, n_cols=42):
    """Seconds of the batched SVD of reduce_frames (n_frames Jacobians n_desc x n_cols) with the process's BLAS
    threads and with one."""
    from threadpoolctl import threadpool_limits

    J = np.random.default_rng(0).normal(size=(n_frames, n_desc, n_cols))
    t = time.perf_counter()
    np.linalg.svd(J, full_matrices=False)
    default = time.perf_counter() - t
    with threadpool_limits(1):
        t = time.perf_counter()
        np.linalg.svd(J, full_matrices=False)
        return default, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", nargs="+", required=True, help="NAME=PATH source trees, the first is the reference")
    p.add_argument("--maps", nargs="+", type=int, default=[11, 14])
    p.add_argument("--fit-args", default="", help="extra options of python -m cgdml.fit, one string")
    p.add_argument("--parts", nargs="+", default=["fit", "path"], choices=["fit", "path"],
                   help="fit: the whole fits; path: one layer-1 batch's lambdas, and the kernels behind the choices")
    p.add_argument("--path-beads", type=int, default=14)
    p.add_argument("--workdir", default="/tmp/cgdml-bench-fit-speed")
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/bench_fit_speed.md"))
    args = p.parse_args(argv)
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.trees]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:6.0f} s] {m}", flush=True)  # noqa: E731
    extra = shlex.split(args.fit_args)
    for n in args.maps if "fit" in args.parts else []:
        data = map_data(n, work, log)
        for name, tree in trees:
            row_file = work / f"row_{n}_{name}.json"
            if row_file.exists():
                continue
            model = work / f"model_{n}_{name}.npz"
            load_before = load_str()
            fit_s, peak_gb = run([sys.executable, "-c", PEAK, "cgdml.fit", data, "--method", "two-layer", *extra,
                                  "--quiet", "-o", model], tree, log)
            info = json.loads(model.with_suffix(".json").read_text())
            chosen = {k: info["chosen"][k] for k in ("sigma1", "lam1", "sigma2", "lam2")}
            row = dict(beads=n, tree=name, fit_s=fit_s, peak_gb=peak_gb, load=f"{load_before} -> {load_str()}",
                       chosen=chosen, timings={k: v for k, v in info.get("timings", {}).items()
                                               if isinstance(v, (int, float))})
            row_file.write_text(json.dumps(row))
            log(f"{n} beads, {name}: {fit_s:.0f} s, chosen {chosen}")
    say = Report()
    say("# Fit speed: the two-layer fit before and after")
    say()
    say(f"{time.strftime('%Y-%m-%d')}, this shared 2-core machine; `python -m cgdml.fit DATA --method two-layer "
        f"{args.fit_args}` (child process; wall time, peak RSS of it and its children); load = the 1/5/15-minute "
        "load average before -> after the run. Trees: " + ", ".join(f"{name} = `{tree}`" for name, tree in trees))
    say()
    say("| beads | tree | fit (min) | ratio to first | CV + layer 1 (min) | peak memory (GB) | chosen sigma1 lam1 "
        "sigma2 lam2 | same choice | max force diff / RMS force | max force diff (kJ/mol/nm) | mean force uncertainty "
        "(kJ/mol/nm) | load |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.maps:
        rows = [json.loads((work / f"row_{n}_{name}.json").read_text()) for name, _ in trees
                if (work / f"row_{n}_{name}.json").exists()]
        if not rows:
            continue
        ref = rows[0]
        for r in rows:
            rel, diff, unc = compare(work / f"model_{n}_{ref['tree']}.npz", work / f"model_{n}_{r['tree']}.npz",
                                     work / f"cg{n}.npz")
            c = r["chosen"]
            cv = r["timings"].get("cross_validation_and_layer1_s", float("nan")) / 60
            say(f"| {n} | {r['tree']} | {r['fit_s'] / 60:.1f} | {r['fit_s'] / ref['fit_s']:.2f} | {cv:.1f} | "
                f"{r['peak_gb']:.2f} | {c['sigma1']:g} {c['lam1']:g} {c['sigma2']:g} {c['lam2']:g} | "
                f"{'yes' if c == ref['chosen'] else 'NO'} | {rel:.1e} | {diff:.2g} | {unc:.3g} | {r['load']} |")
    if "path" in args.parts:
        n = args.path_beads
        rows = path_part(trees, n, map_data(n, work, log), work, log)
        say()
        say(f"## One layer-1 batch: {n} beads, 2000 frames, sigma 4, lam 3, 1, 0.3 (one thread)")
        say()
        say("| tree | lambdas fitted | time (s) | ratio to first | max force difference / RMS force | load |")
        say("|---|---|---|---|---|---|")
        for name, how, wall, rel, load in rows:
            say(f"| {name} | {'one at a time' if how == 'separate' else 'one lambda path'} | {wall:.1f} | "
                f"{wall / rows[0][2]:.2f} | {rel:.1e} | {load} |")
        chol, eig = eigh_vs_cholesky()
        svd_default, svd_one = svd_threads()
        say()
        say(f"Kernels behind the choices (load {load_str()}): one symmetric eigendecomposition (scipy evd) of a "
            f"3000 x 3000 matrix {eig:.2f} s against {chol:.2f} s for its Cholesky factorisation, one thread "
            f"({eig / chol:.0f}x); the batched SVD of 2000 descriptor Jacobians (108 x 42, 14 beads) "
            f"{svd_default:.2f} s with this process's BLAS threads, {svd_one:.2f} s with one.")
    say()
    say(f"Wall time of this run: {time.perf_counter() - t0:.0f} s.")
    say.write(args.output)


if __name__ == "__main__":
    main()
