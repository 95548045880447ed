"""Nyström GDML iteration benchmark: the cost of one conjugate-gradient iteration and the iterations to tolerance.

Data: the shipped alanine-dipeptide reference mapped to 6 beads (``ala2-6``, aggregate force map), prior-subtracted
labels as in ``fit_nystrom``, tiled to N frames with Gaussian noise (0.003 nm on the coordinates, 0.1 x the label
spread on the forces). sigma 4 nm^-1, lam 0.3 (relative), random inducing frames, the chiral 6-bead descriptor
(n_desc = 18, r = 12).

Part 1 (per iteration): the time of ``NormalEquations.matvec`` (best of a few calls), which is all of one CG
iteration apart from an (m r)^2 preconditioner solve, for the previous two-pass implementation (``before``: the
forward pass K_Nm a, then the adjoint K_mN chunk by chunk through ``kernels.hessian_apply``, reproduced below) and
the fused pass (``after``, float64 and float32). Flops are counted from the shapes with the issue's model,
12 N m n_desc per iteration (three GEMMs of N m n_desc per direction, two directions, 2 flops per multiply-add), the
same count for every implementation. The dgemm (and sgemm) rate of a 4000^3 product on all cores is measured right
before and after each row; the fraction is GFLOP/s over the better of the two dgemm rates.

Part 2 (iterations): the fit's linear algebra (setup = preconditioner + rhs, then PCG to tol 1e-4) at N = 100k and
1M for m = 500 and 1000: before (the previous preconditioner, s = 2m sampled frames) and after (s =
``default_precond_frames``; float64, and float32 with float64 refinement), and the fitted forces against the float64
fit and against the converged solution.

Part 3 (``--fit-1m 500,1000``): whole ``NystromGDML.fit`` runs at N = 1M, each in its own process (wall time and
peak memory).

Run: ``python benchmarks/bench_nystrom.py [--quick] [--fit-1m 500,1000]`` (about an hour on the shared 2-core
machine; --quick: N = 30k and m = 300 only, under 2 minutes). Writes benchmarks/results/bench_nystrom.md
(with --quick only if --write is given).
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

from cgdml import kernels
from cgdml.gdml import dihedral_quads
from cgdml.linalg import SampledPreconditioner, default_precond_frames, pcg, refine
from cgdml.nystrom import NormalEquations, NystromGDML, ReducedFrames, choose_inducing

RESULTS = Path(__file__).resolve().parent / "results" / "bench_nystrom.md"
SIGMA, LAM = 4.0, 0.3


def shipped_tiled(n, seed=0, noise=0.003):
    """(R, F, quads): n frames of the shipped 6-bead data with prior-subtracted labels, tiled with noise."""
    from cgdml.mapping import load_default_cg_dataset
    from cgdml.prior import CGPrior

    data = load_default_cg_dataset("ala2-6")
    labels = CGPrior(repulsion=True).fit(data.coords, data.temperature).residual_forces(data.coords, data.forces)
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


def solve(frames, m, s, dtype=np.float64, seed=0, cache=None, tol=1e-4, x0=None):
    """One fit's linear algebra, as ``NystromGDML.fit`` does it (float32: float32 CG, then float64 refinement).

    Returns dict(setup, k, cg, res, refinements, x) and the float64 system. ``cache`` keeps the preconditioner's
    lambda-free factors per (m, s), which do not depend on the dtype; a cached setup is timed as the first one.
    """
    idx = choose_inducing(frames.n_frames, m, method="random", seed=seed)
    system = NormalEquations(frames, idx, SIGMA, LAM * frames.mean_diag(SIGMA))
    fast = NormalEquations(frames, idx, SIGMA, system.lam, dtype=np.float32) if dtype == np.float32 else system
    cache = {} if cache is None else cache
    t = time.perf_counter()
    if (m, s) not in cache:
        sample = np.sort(np.random.default_rng([seed, 0x9C]).choice(frames.n_frames, s, replace=False))
        base = SampledPreconditioner.factor(system, sample)
        cache[m, s] = base, time.perf_counter() - t
    base, factor_s = cache[m, s]
    t = time.perf_counter()
    precond = SampledPreconditioner(base, system.lam)
    b = system.rhs()
    setup = factor_s + time.perf_counter() - t
    t = time.perf_counter()
    x, k, res = pcg(fast.matvec, b, precond, x0=x0, tol=tol, maxiter=1000)
    n_ref = 0
    if fast is not system:
        x, k2, res, n_ref = refine(system.matvec, fast.matvec, b, precond, x, tol, 1000 - k)
        k += k2
    return dict(setup=setup, k=k, cg=time.perf_counter() - t, res=res, refinements=n_ref, x=x), system


def iterations(frames, ms, t_iter, say, converged=True):
    """Fits before (s = 2m) and after (default s; float64 and float32) for each m, with force differences."""
    from cgdml.model import GDMLModel

    rows = []
    n = frames.n_frames
    R_test = shipped_tiled(2000, seed=7)[0]
    rel = lambda f, ref: (np.sqrt(np.mean((f - ref) ** 2) / np.mean(ref ** 2)),  # noqa: E731
                          np.abs(f - ref).max() / np.abs(ref).max())
    for m in ms:
        cache = {}
        s_new = default_precond_frames(n, m, frames.D.shape[1], frames.r)
        forces = {}
        for label, s, dtype in (("before", 2 * m, np.float64), ("after, float64", s_new, np.float64),
                                ("after, float32", s_new, np.float32)):
            load = load_str()
            out, system = solve(frames, m, s, dtype, cache=cache)
            forces[label] = GDMLModel(system.Dm, system.coefficients(out["x"]), SIGMA, frames.quads,
                                      frames.chiral_scale, 0.0, frames.n_beads).predict_forces(R_test)
            per = t_iter.get((n, m, label))
            rows.append(dict(n=n, m=m, impl=label, s=s, per=per, load=load, **out))
            say(f"  N={n:,} m={m} {label}: s={s}, setup {out['setup']:.1f} s, {out['k']} iterations "
                f"({out['cg']:.1f} s, {out['refinements']} refinements), residual {out['res']:.1e} (load {load})")
        model = lambda system, x: GDMLModel(system.Dm, system.coefficients(x), SIGMA, frames.quads,  # noqa: E731
                                            frames.chiral_scale, 0.0, frames.n_beads)
        if converged:  # the after-float64 fit continued to tol 1e-8: how far each fit is from the exact solution
            out, system = solve(frames, m, s_new, cache=cache, tol=1e-8, x0=rows[-2]["x"])
            exact = model(system, out["x"]).predict_forces(R_test)
            tight = {}  # float32 against float64 where the CG tolerance is not what differs: both to tol 1e-6
            for dtype in (np.float64, np.float32):
                out, system = solve(frames, m, s_new, dtype, cache=cache, tol=1e-6)
                tight[dtype] = model(system, out["x"]).predict_forces(R_test), out["k"]
            rows[-1]["tight"] = rel(tight[np.float32][0], tight[np.float64][0]) + (tight[np.float32][1],
                                                                                 tight[np.float64][1])
            say(f"  N={n:,} m={m} at tol 1e-6: float32 against float64 forces rel. RMS {rows[-1]['tight'][0]:.1e}, "
                f"max {rows[-1]['tight'][1]:.1e} ({tight[np.float32][1]} and {tight[np.float64][1]} iterations)")
        for row in rows[-3:]:
            row["vs64"] = rel(forces[row["impl"]], forces["after, float64"])
            row["vs_exact"] = rel(forces[row["impl"]], exact) if converged else None
            del row["x"]
    return rows


def one_fit(n, m, dtype):
    """Child process of part 3: run NystromGDML.fit (its frames' descriptors timed apart); prints one JSON line."""
    R, F, quads = shipped_tiled(n)
    est = NystromGDML(n_inducing=m, sigma=SIGMA, lam=LAM, dihedrals=quads, inducing="random", dtype=dtype,
                      progress=False)
    t = time.perf_counter()
    est.fit(R, F)
    tm, t_frames = est.timings_, est.timings_["descriptors_s"]
    n_desc, r = est.model_.train_descriptors.shape[1], 3 * R.shape[1] - 6
    print(json.dumps(dict(n=n, m=m, dtype=dtype, frames_s=t_frames, fit_s=time.perf_counter() - t - t_frames,
                          setup_s=tm["final_setup_s"], cg_s=tm["final_cg_s"], k=est.cg_iterations_,
                          res=float(est.residual_), s=default_precond_frames(n, m, n_desc, r), rss=peak_rss_gb())))


def peak_rss_gb():
    """This process's peak resident memory (VmHWM). Not ru_maxrss: after fork and exec that includes the
    parent's peak, which here is larger than the fit's own."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1e6


def full_fit(n, m, dtype, say):
    """Part 3: one whole fit in its own process, so that its peak memory is its own."""
    load = load_str()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--one-fit", str(n), str(m), dtype], stdout=subprocess.PIPE,
                            text=True)
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"fit N={n} m={m} failed: {out[-2000:]}")
    row = dict(json.loads(out.strip().splitlines()[-1]), wall=time.perf_counter() - t, load=load)
    say(f"  NystromGDML.fit N={n:,} m={m} {dtype}: frames {row['frames_s']:.0f} s + fit {row['fit_s']:.0f} s "
        f"(setup {row['setup_s']:.0f} s, {row['k']} iterations in {row['cg_s']:.0f} s), peak RSS {row['rss']:.2f} GB "
        f"(load {load})")
    return row


def main(argv=None):
    global GEMM_N
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 30k and m = 300 only (under 2 minutes)")
    p.add_argument("--sizes", default=None, help="part 1 frame counts, comma separated (default 100000,1000000)")
    p.add_argument("--fit-sizes", default=None, help="part 2 frame counts (default 100000,1000000)")
    p.add_argument("--fit-ms-1m", default="500", help="part 2's m at N = 1M (default %(default)s: m = 1000 there "
                   "takes most of an hour on the shared machine, its whole fit is in part 3)")
    p.add_argument("--fit-1m", default="", help="part 3: whole fits at N = 1M for these m, comma separated "
                   "(e.g. 500,1000; m = 1000 needs about 7 GB)")
    p.add_argument("--dtype", default="float64", help="part 3's dtype")
    p.add_argument("--write", action="store_true", help="write the results file even with --quick")
    p.add_argument("--one-fit", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one_fit:
        one_fit(int(a.one_fit[0]), int(a.one_fit[1]), a.one_fit[2])
        return 0
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    sizes = ints(a.sizes) if a.sizes else [30_000] if a.quick else [100_000, 1_000_000]
    fit_sizes = ints(a.fit_sizes) if a.fit_sizes else [30_000] if a.quick else [100_000, 1_000_000]
    ms = [300] if a.quick else [500, 1000]
    repeat = 2 if a.quick else 3
    GEMM_N = 2000 if a.quick else 4000

    def say(text=""):
        print(text, flush=True)

    t0 = time.perf_counter()
    out = [f"# Nyström GDML iteration benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
           f"{os.cpu_count()} cores{', quick' if a.quick else ''})", "",
           f"Load average (1/5/15 min) at start: {load_str()} on a shared machine: compare within a row (part 1 "
           "measures its dgemm rate right before and after each row).", ""]
    frames = {}
    for n in sorted(set(sizes) | set(fit_sizes)):
        t = time.perf_counter()
        frames[n] = make_frames(n)
        say(f"frames N={n:,}: {time.perf_counter() - t:.0f} s")
    say("Part 1: per-iteration cost")
    rows = per_iteration({n: frames[n] for n in sizes}, ms, repeat, say)
    t_iter = {(r["n"], r["m"], r["impl"].split(" (")[0]): r["t"] for r in rows}
    say("Part 2: iterations to tol 1e-4")
    warm = NormalEquations(frames[fit_sizes[0]], np.arange(20), SIGMA, 1.0)  # compile before timing setups
    SampledPreconditioner(SampledPreconditioner.factor(warm, np.arange(40)), 1.0)
    fit_rows = []
    for n in fit_sizes:
        fit_rows += iterations(frames[n], ms if n < 1_000_000 else ints(a.fit_ms_1m), t_iter, say,
                               converged=n <= 100_000)
    frames.clear()
    full_rows = [full_fit(1_000_000, m, a.dtype, say) for m in ints(a.fit_1m)]

    nd = 18
    out += ["## 1. One CG iteration (the normal-equation product)", "",
            "| frames N | inducing m | implementation | s per iteration | GFLOP per iteration | GFLOP/s | "
            "dgemm GFLOP/s (same run) | fraction of dgemm | speed-up | max rel. diff vs before | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['m']} | {r['impl']} | {r['t']:.3f} | {r['flops'] / 1e9:.1f} | "
                   f"{r['gflops']:.1f} | {r['dgemm']:.0f} | {r['gflops'] / r['dgemm']:.2f} | {r['speedup']:.2f}x | "
                   f"{r['err']:.1e} | {r['load']} |")
    out += ["", f"GFLOP = 12 N m n_desc / 1e9 (n_desc = {nd}), the same nominal count for every row (the two-pass "
            "code executes 1.44x as many flops, the fused pass 1.25x); fraction = GFLOP/s over the dgemm rate "
            f"({GEMM_N}^3, all cores, the better of the measurements right before and after the row). sgemm rates "
            "in the same run: " + ", ".join(f"{r['sgemm']:.0f}" for r in rows[::3]) + " GFLOP/s.", "",
            f"## 2. Iterations to tol 1e-4 (sigma {SIGMA:g}, lam {LAM:g})", "",
            "| frames N | inducing m | fit | preconditioner frames s | setup (s) | CG iterations | CG (s) | "
            "s per iteration (part 1) | setup + iterations x part-1 time (s) | forces vs after-float64: rel. RMS / "
            "max | forces vs converged: rel. RMS / max | load |", "|---" * 12 + "|"]
    pair = lambda v: "-" if v is None else f"{v[0]:.1e} / {v[1]:.1e}"  # noqa: E731
    for r in fit_rows:
        per = r["per"] if r["per"] is not None else r["cg"] / max(r["k"], 1)
        out.append(f"| {r['n']:,} | {r['m']} | {r['impl']} | {r['s']} | {r['setup']:.1f} | {r['k']} | {r['cg']:.1f} | "
                   f"{per:.3f} | {r['setup'] + r['k'] * per:.0f} | {pair(r['vs64'])} | {pair(r['vs_exact'])} | "
                   f"{r['load']} |")
    out += ["", "Before: the previous preconditioner (s = 2m sampled frames) and the previous product, whose iterates "
            "are the fused pass's to 1e-14, so the CG runs with the fused pass and its iterations are costed at "
            "part 1's two-pass time; after: s = default_precond_frames(N, m). float32: float32 CG, then float64 "
            "refinement (the iteration count includes its inner iterations, plus one float64 product per step). "
            "The estimate column is setup + iterations x part-1 time, so rows compare at the same machine load. "
            "Forces: the fitted model on 2000 other tiled frames against the float64 fit, and against that fit "
            "continued to tol 1e-8 (N <= 100k only), relative RMS and max |diff| / max |F|."]
    tight = [r for r in fit_rows if "tight" in r]
    if tight:
        out += ["", "float32 against float64 with both solved to tol 1e-6 (so that the CG tolerance, ~1e-4 in the "
                "forces at tol 1e-4, is not what differs):", "", "| frames N | inducing m | forces rel. RMS | "
                "forces max | iterations float32 / float64 |", "|---|---|---|---|---|"]
        out += [f"| {r['n']:,} | {r['m']} | {r['tight'][0]:.1e} | {r['tight'][1]:.1e} | {r['tight'][2]} / "
                f"{r['tight'][3]} |" for r in tight]
    if full_rows:
        out += ["", "## 3. Whole fits at 1M frames (NystromGDML.fit in its own process)", "",
                "| frames N | inducing m | dtype | s | descriptors (s) | fit (s) | setup (s) | CG iterations | CG (s) "
                "| descriptors + fit (min) | peak RSS (GB) | load |", "|---" * 12 + "|"]
        for r in full_rows:
            out.append(f"| {r['n']:,} | {r['m']} | {r['dtype']} | {r['s']} | {r['frames_s']:.0f} | {r['fit_s']:.0f} | "
                       f"{r['setup_s']:.0f} | {r['k']} | {r['cg_s']:.0f} | {(r['frames_s'] + r['fit_s']) / 60:.1f} | "
                       f"{r['rss']:.2f} | {r['load']} |")
        out += ["", "Descriptors: tiling the shipped data and building the reduced frames (what the command line "
                "does after loading); fit: setup, CG and the model."]
    out += ["", f"Total benchmark time {(time.perf_counter() - t0) / 60:.1f} min; load at end {load_str()}."]
    print("\n".join(out))
    if not a.quick or a.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(out) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
