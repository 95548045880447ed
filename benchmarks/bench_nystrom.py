"""Nyström GDML iteration benchmark: the cost of one conjugate-gradient iteration and the iterations to tolerance.

Data: the shipped alanine-dipeptide reference mapped to 6 beads (``ala2-6``, aggregate force map), prior-subtracted
labels as in ``fit_nystrom``, tiled to N frames with Gaussian noise (0.003 nm on the coordinates, 0.1 x the label
spread on the forces). sigma 4 nm^-1, lam 0.3 (relative), random inducing frames, the chiral 6-bead descriptor
(n_desc = 18, r = 12).

Part 1 (per iteration): the time of ``NormalEquations.matvec`` (best of a few calls), which is all of one CG
iteration apart from an (m r)^2 preconditioner solve, for the previous two-pass implementation (``before``: the
forward pass K_Nm a, then the adjoint K_mN over chunks through ``kernels.hessian_apply``, reproduced below) and the
fused pass (``after``, float64 and float32). Flops are counted from the shapes with the issue's model, 12 N m n_desc
per iteration (three GEMMs of N m n_desc per direction, two directions, 2 flops per multiply-add), the same count
for every implementation. (The previous code performs 312 flops per frame-inducing pair for n_desc = 18, the fused
pass 270 in float64 or float32, so their achieved flop rates are 1.44x and 1.25x these nominal rates.) The dgemm
(and sgemm) rate of a 4000 x 4000 product on all cores is measured right before and after each row, and GFLOP/s
are given as a fraction of the better of the two dgemm measurements.

Part 2 (iterations): real fits (setup = rhs + preconditioner; then PCG to tol 1e-4) at N = 100k, before (the
previous preconditioner with s = 2m sampled frames) and after (the default s of ``default_precond_frames``),
and the final model's forces of the float32 fit against the float64 fit (relative RMS and max over 2000 frames).

Run: ``python benchmarks/bench_nystrom.py [--quick] [--fit-1m]``. --quick: N = 50k only, fits at 20k (under 2
minutes); --fit-1m: also the whole ``NystromGDML.fit`` at N = 1M, m = 500 (and m = 1000 with --fit-1m-1000).
Writes benchmarks/results/bench_nystrom.md (not with --quick unless --write).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from cgdml import kernels
from cgdml.gdml import dihedral_quads
from cgdml.nystrom import (NormalEquations, NystromGDML, ReducedFrames, SampledPreconditioner, choose_inducing,
                           default_precond_frames, pcg)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_nystrom.md"
SIGMA, LAM = 4.0, 0.3


def shipped_tiled(n, seed=0, noise=0.003):
    """(R, F, quads): n frames of the shipped 6-bead data with prior-subtracted labels, tiled with noise."""
    from cgdml.mapping import load_default_cg_dataset
    from cgdml.prior import HarmonicPrior

    data = load_default_cg_dataset("ala2-6")
    labels = HarmonicPrior(repulsion=True).fit(data.coords, data.temperature).residual_forces(data.coords,
                                                                                             data.forces)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.n_frames, n)
    R = data.coords[idx] + noise * rng.standard_normal((n, data.n_beads, 3))
    F = labels[idx] + 0.1 * labels.std() * rng.standard_normal((n, data.n_beads, 3))
    return R, F, dihedral_quads(data.n_beads)


def make_frames(n, seed=0):
    R, F, quads = shipped_tiled(n, seed)
    return ReducedFrames(R, F, quads)


GEMM_N = 4000


def gemm_rate(dtype, n=None, repeat=2):
    """Best GFLOP/s of an n x n x n product on all cores (multi-threaded BLAS)."""
    n = n or GEMM_N
    A = np.random.default_rng(0).random((n, n)).astype(dtype)
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        A @ A
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def two_pass_matvec(system, a):
    """The previous NormalEquations.matvec: K_Nm a chunk by chunk through hessian_apply, then K_mN of the frames'
    descriptor vectors with the roles of frames and inducing points swapped, then the lam K_mm term."""
    fr, W = system.frames, system.frames.W
    tab = kernels.TrainTables(system.Dm, system.coefficients(a), system.sigma)
    h = np.zeros_like(system.Dm)
    for c0 in range(0, fr.n_frames, system.chunk):
        sl = slice(c0, c0 + system.chunk)
        g = kernels.hessian_apply(fr.D[sl], tab)[0]
        p = np.matmul(g[:, None, :], W[sl])
        q = np.matmul(W[sl], p.transpose(0, 2, 1))[:, :, 0]
        h += kernels.hessian_apply(system.Dm, kernels.TrainTables(fr.D[sl], q, system.sigma))[0]
    return system._back(h) + system.lam * system.kmm_matvec(a)


def best_of(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def load_str():
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def per_iteration(frames_by_n, ms, repeat, say):
    rows = []
    for n, frames in frames_by_n.items():
        nd = frames.D.shape[1]
        for m in ms:
            idx = choose_inducing(n, m, method="random")
            lam = LAM * frames.mean_diag(SIGMA)
            s64 = NormalEquations(frames, idx, SIGMA, lam)
            s32 = NormalEquations(frames, idx, SIGMA, lam, dtype=np.float32)
            a = np.random.default_rng(1).standard_normal(s64.size)
            ref = two_pass_matvec(s64, a)
            err64 = np.abs(s64.matvec(a) - ref).max() / np.abs(ref).max()
            err32 = np.abs(s32.matvec(a) - ref).max() / np.abs(ref).max()
            flops = 12.0 * n * m * nd
            load = load_str()
            dg0, sg0 = gemm_rate(np.float64), gemm_rate(np.float32)
            t_before = best_of(lambda: two_pass_matvec(s64, a), repeat)
            t64 = best_of(lambda: s64.matvec(a), repeat)
            t32 = best_of(lambda: s32.matvec(a), repeat)
            dg1, sg1 = gemm_rate(np.float64), gemm_rate(np.float32)
            dg, sg = max(dg0, dg1), max(sg0, sg1)
            for impl, t, err in (("before (two passes)", t_before, 0.0), ("after, float64", t64, err64),
                                 ("after, float32", t32, err32)):
                rows.append(dict(n=n, m=m, impl=impl, t=t, flops=flops, gflops=flops / t / 1e9, dgemm=dg,
                                 sgemm=sg, err=err, speedup=t_before / t, load=load))
            say(f"  N={n:,} m={m}: before {t_before:.2f} s, float64 {t64:.2f} s, float32 {t32:.2f} s "
                f"(dgemm {dg0:.0f}/{dg1:.0f}, sgemm {sg0:.0f}/{sg1:.0f} GFLOP/s, load {load})")
    return rows


def solve(frames, m, s, dtype=np.float64, seed=0, cache=None):
    """One fit's linear algebra: (setup s, iterations, CG s, residual, coefficients, system). ``cache`` keeps
    the preconditioner's lambda-free factors per (m, s) (they do not depend on the dtype); a cached setup is
    timed as the first one's."""
    idx = choose_inducing(frames.n_frames, m, method="random", seed=seed)
    system = NormalEquations(frames, idx, SIGMA, LAM * frames.mean_diag(SIGMA), dtype=dtype)
    cache = {} if cache is None else cache
    t = time.perf_counter()
    if (m, s) not in cache:
        sample = np.sort(np.random.default_rng([seed, 0x9C]).choice(frames.n_frames, s, replace=False))
        cache[m, s] = SampledPreconditioner.factor(system, sample), None
    base, factor_s = cache[m, s]
    t_factor = time.perf_counter() - t
    cache[m, s] = base, t_factor if factor_s is None else factor_s
    t = time.perf_counter()
    precond = SampledPreconditioner(base, system.lam)
    b = system.rhs()
    setup = cache[m, s][1] + time.perf_counter() - t
    t = time.perf_counter()
    x, k, res = pcg(system.matvec, b, precond, tol=1e-4, maxiter=500)
    return setup, k, time.perf_counter() - t, res, x, system


def iterations(frames, ms, t_iter, say, cache=None):
    """Fits before (s = 2m) and after (default s; float64 and float32), with the float32 model's force error."""
    from cgdml.model import GDMLModel

    rows = []
    n = frames.n_frames
    R_test = shipped_tiled(2000, seed=7)[0]
    for m in ms:
        s_new = default_precond_frames(n, m, frames.D.shape[1], frames.r)
        models = {}
        for label, s, dtype in (("before", 2 * m, np.float64), ("after, float64", s_new, np.float64),
                                ("after, float32", s_new, np.float32)):
            load = load_str()
            setup, k, cg, res, x, system = solve(frames, m, s, dtype, cache=cache)
            models[label] = GDMLModel(system.Dm, system.coefficients(x), SIGMA, frames.quads, frames.chiral_scale,
                                      0.0, frames.n_beads)
            per = t_iter.get((n, m, label)) or cg / max(k, 1)
            rows.append(dict(n=n, m=m, impl=label, s=s, setup=setup, k=k, cg=cg, res=res, per=per, load=load))
            say(f"  N={n:,} m={m} {label}: s={s}, setup {setup:.1f} s, {k} iterations ({cg:.1f} s), "
                f"residual {res:.1e} (load {load})")
        f64 = models["after, float64"].predict_forces(R_test)
        for label in ("after, float32", "before"):
            d = models[label].predict_forces(R_test) - f64
            rows[-1 if label == "after, float32" else -3].update(
                rms=np.sqrt(np.mean(d ** 2) / np.mean(f64 ** 2)), mx=np.abs(d).max() / np.abs(f64).max())
    return rows


def full_fit(frames, m, dtype, say):
    est = NystromGDML(n_inducing=m, sigma=SIGMA, lam=LAM, inducing="random", dtype=dtype)
    load = load_str()
    t = time.perf_counter()
    est.fit(None, None, frames=frames)
    wall = time.perf_counter() - t
    tm = est.timings_
    row = dict(n=frames.n_frames, m=m, dtype=np.dtype(dtype).name, wall=wall, setup=tm["setup_s"], cg=tm["cg_s"],
               k=est.cg_iterations_, res=est.residual_, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
               load=load)
    say(f"  NystromGDML.fit N={frames.n_frames:,} m={m} {row['dtype']}: {wall:.0f} s (setup {row['setup']:.0f} s, "
        f"{row['k']} iterations in {row['cg']:.0f} s), peak RSS {row['rss']:.2f} GB (load {load})")
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 50k and fits at 20k (under 2 minutes)")
    p.add_argument("--fit-1m", action="store_true", help="also NystromGDML.fit on 1M frames with m = 500")
    p.add_argument("--fit-1m-1000", action="store_true", help="and with m = 1000 (about 7 GB)")
    p.add_argument("--sizes", default=None, help="part 1 frame counts, comma separated (default 100000,1000000)")
    p.add_argument("--write", action="store_true", help="write the results file even with --quick")
    a = p.parse_args(argv)
    sizes = [int(v) for v in a.sizes.split(",")] if a.sizes else [50_000] if a.quick else [100_000, 1_000_000]
    global GEMM_N
    ms = [500] if a.quick else [500, 1000]
    fit_ms = [200] if a.quick else ms
    n_fit = 20_000 if a.quick else 100_000
    repeat = 2 if a.quick else 3
    GEMM_N = 2000 if a.quick else 4000
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    t0 = time.perf_counter()
    out = [f"# Nyström GDML iteration benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
           f"{os.cpu_count()} cores{', quick' if a.quick else ''})", "",
           f"Load average (1/5/15 min) at start: {load_str()} on a shared machine: compare within a row, whose "
           "dgemm rate is measured right before and after it.", ""]
    frames = {}
    for n in sorted(set(sizes) | {n_fit}):
        t = time.perf_counter()
        frames[n] = make_frames(n)
        say(f"frames N={n:,}: {time.perf_counter() - t:.0f} s")
    say("Part 1: per-iteration cost")
    rows = per_iteration({n: frames[n] for n in sizes}, ms, repeat, say)
    t_iter = {(r["n"], r["m"], r["impl"].split(" (")[0]): r["t"] for r in rows}
    t_iter.update({(r["n"], r["m"], "before"): r["t"] for r in rows if r["impl"].startswith("before")})
    say("Part 2: iterations to tol 1e-4")
    fit_rows = iterations(frames[n_fit], fit_ms, t_iter, say, cache={})
    full_rows = []
    if a.fit_1m or a.fit_1m_1000:
        big = frames.get(1_000_000) or make_frames(1_000_000)
        for m in ([500] if a.fit_1m else []) + ([1000] if a.fit_1m_1000 else []):
            full_rows.append(full_fit(big, m, np.float64, say))

    out += ["## 1. One CG iteration (the normal-equation product)", "",
            "| frames N | inducing m | implementation | s per iteration | GFLOP per iteration | GFLOP/s | "
            "dgemm GFLOP/s (same run) | fraction of dgemm | speed-up | max rel. diff vs before | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['m']} | {r['impl']} | {r['t']:.3f} | {r['flops'] / 1e9:.1f} | "
                   f"{r['gflops']:.1f} | {r['dgemm']:.0f} | {r['gflops'] / r['dgemm']:.2f} | {r['speedup']:.2f}x | "
                   f"{r['err']:.1e} | {r['load']} |")
    out += ["", f"GFLOP = 12 N m n_desc / 1e9 (n_desc = {frames[sizes[0]].D.shape[1]}), the same nominal count for "
            f"every row; fraction = GFLOP/s over the dgemm rate ({GEMM_N}^3, all cores, best of the measurements before "
            "and after the row). sgemm rates of the same run: " +
            ", ".join(sorted({f"{r['sgemm']:.0f}" for r in rows})) + " GFLOP/s.", "",
            f"## 2. Iterations to tol 1e-4 (N = {n_fit:,}, sigma {SIGMA:g}, lam {LAM:g})", "",
            "| frames N | inducing m | fit | preconditioner frames s | setup (s) | CG iterations | CG (s) | "
            "s per iteration (part 1) | setup + iterations x part-1 time (s) | force diff vs after-float64: rel. RMS "
            "/ max | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in fit_rows:
        diff = f"{r['rms']:.1e} / {r['mx']:.1e}" if "rms" in r else "-"
        out.append(f"| {r['n']:,} | {r['m']} | {r['impl']} | {r['s']} | {r['setup']:.1f} | {r['k']} | {r['cg']:.1f} | "
                   f"{r['per']:.3f} | {r['setup'] + r['k'] * r['per']:.1f} | {diff} | {r['load']} |")
    out += ["", "Before: the previous preconditioner (s = 2m sampled frames) and the two-pass product; after: "
            "s = default_precond_frames(N, m) and the fused pass. Per-iteration times are taken from part 1 where "
            "it has the same N (so the before row costs its iterations at the previous speed); otherwise the CG time "
            "over the iterations. Force differences: the model's forces on 2000 other tiled frames against the "
            "float64 fit with the same inducing frames, relative RMS and max |diff| / max |F|."]
    if full_rows:
        out += ["", "## 3. Whole fits (NystromGDML.fit, descriptors built beforehand)", "",
                "| frames N | inducing m | dtype | wall (s) | setup (s) | CG iterations | CG (s) | peak RSS (GB) | "
                "load |", "|---|---|---|---|---|---|---|---|---|"]
        for r in full_rows:
            out.append(f"| {r['n']:,} | {r['m']} | {r['dtype']} | {r['wall']:.0f} | {r['setup']:.0f} | {r['k']} | "
                       f"{r['cg']:.0f} | {r['rss']:.2f} | {r['load']} |")
    out += ["", f"Total benchmark time {(time.perf_counter() - t0) / 60:.1f} min; load at end {load_str()}."]
    print("\n".join(out))
    if not a.quick or a.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(out) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
