"""Benchmark the cgdml GDML core against sgdml on the cgnet alanine-dipeptide data.

Measures: force agreement with sgdml (same sigma, lambda, training points, chiral=False); training wall time
(M = 500, 1000, 2000) against sgdml and against a bare scipy Cholesky of our reduced system; prediction time
per configuration (single and 100 batched replicas) against sgdml's GDMLPredict; matrix-free CG training at
M = 5000 with 6 beads (peak memory, time). Run: ``python benchmarks/bench_gdml.py [--quick] [--sgdml-2000]``.
Writes the table to benchmarks/results/bench_gdml.md too. Needs /work/shared data and the sgdml package.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg

from cgdml import kernels
from cgdml._cli import run_cli
from cgdml.features import chain_quads, descriptor, descriptor_jacobian, descriptor_vjp
from cgdml.gdml import GDML, reduced_rank
from cgdml.units import length_factor
from _common import CGNET, Report, best_time, load_cgnet, sgdml_predictor, sgdml_train

RESULTS = Path(__file__).resolve().parent / "results" / "bench_gdml.md"
SIGMA = 2.0  # nm^-1
REL_LAM = 1e-4  # lambda relative to mean(diag K); the same absolute value is given to sgdml
SCIPY_CHO_MAX = 12000  # larger scipy cho_factor calls segfault in multithreaded OpenBLAS on this machine
CG_REL_LAM = 1e-3  # for the matrix-free run (CG iterations grow as lambda shrinks)


def load_data():
    """cgnet ala2 in nm and kJ/mol/nm (float64)."""
    ds = load_cgnet()
    return ds.coords, ds.forces


def wall_and_cpu(fn, repeat=3, min_time=0.5):
    """Best (wall, process CPU) seconds per call of ``fn()``; CPU time sums all threads (less load-sensitive)."""
    best = (np.inf, np.inf)
    for _ in range(repeat):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < min_time:
            fn()
            n += 1
        best = min(best, ((time.perf_counter() - t0) / n, (time.process_time() - c0) / n))
    return best


def sgdml_ala2(R, F, sigma, lam):
    """Train sgdml on the cgnet frames R, F; returns (model, seconds)."""
    return sgdml_train(R, F, sigma, lam, z=[6, 7, 6, 6, 7], name="cgnet-ala2", theory="cgnet mapped AMBER ff99SB-ILDN")


def _time_cho(K):
    t0 = time.perf_counter()
    scipy.linalg.cho_factor(K.T, lower=False, overwrite_a=True, check_finite=False)
    return time.perf_counter() - t0


def cholesky_reference(R, sigma, lam):
    """Time scipy cho_factor alone on our reduced kernel matrix (same size and matrix as in fit)."""
    D, J = descriptor_jacobian(R)
    r = reduced_rank(R.shape[1], D.shape[1])
    U, S, _ = np.linalg.svd(J, full_matrices=False)
    K = kernels.assemble(D, U[:, :, :r] * S[:, None, :r], sigma)
    del U, S, J
    K.flat[:: K.shape[0] + 1] += lam
    n = K.shape[0]
    if n < 6000:  # small: best of 3 (a copy each time), so thread start-up does not dominate
        dt = min(_time_cho(K.copy()) for _ in range(3))
    else:
        dt = _time_cho(K)
    return n, dt, n ** 3 / 3.0 / dt / 1e9


# --------------------------------------------------------------------------------------- 6-bead CG part
def six_bead_data(n, seed=0):
    """Real ala2 backbone frames plus a CB bead from ideal N-CA-C geometry, with noise-free analytic forces.

    CB is placed rigidly (coefficients of the standard ideal-CB construction, in Angstrom) and appended as bead
    5. Forces come from U = sum_pairs k/2 (r - r0)^2 + kappa sum_k sin(dihedral_k), r0 = mean distances:
    a smooth, chiral field that the model should learn almost exactly.
    """
    Ra = np.load(CGNET / "ala2_coordinates.npy").astype(np.float64)
    idx = np.random.default_rng(seed).permutation(len(Ra))[:n]
    Ra = Ra[idx]
    b = Ra[:, 2] - Ra[:, 1]
    c = Ra[:, 3] - Ra[:, 2]
    a = np.cross(b, c)
    cb = -0.58273431 * a + 0.56802827 * b - 0.54067466 * c + Ra[:, 2]
    R = np.concatenate([Ra, cb[:, None]], axis=1) * length_factor("angstrom")
    return R, analytic_forces(R)


def analytic_forces(R, k=2000.0, kappa=10.0):
    quads = chain_quads(R.shape[1])
    D = descriptor(R, quads)
    n_pairs = R.shape[1] * (R.shape[1] - 1) // 2
    r = 1.0 / D[:, :n_pairs]
    r0 = np.linspace(0.2, 0.5, n_pairs)  # fixed rest lengths (nm); the field is analytic, not fitted
    G = np.empty_like(D)
    G[:, :n_pairs] = -(k * (r - r0)) * r ** 2  # dU/d(1/r) = dU/dr * dr/d(1/r) = k (r - r0) * (-r^2)
    G[:, n_pairs:] = kappa
    return -descriptor_vjp(R, G, quads)


def _vm_hwm_gb():
    """Peak resident memory of this process so far (VmHWM), GB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def cg_part(M, n_test=500):
    """Fit M 6-bead frames matrix-free (CG + Nyström) in this process; print a JSON line with the numbers."""
    R, F = six_bead_data(M + n_test, seed=1)
    start_gb = _vm_hwm_gb()
    model = GDML(sigma=SIGMA, lam=CG_REL_LAM, relative_lam=True, chiral=True, solver="auto",
                 memory_budget_gb=1.5, cg_tol=1e-6, cg_maxiter=1000)
    tracemalloc.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(R[:M], F[:M])
    fit_s = time.perf_counter() - t0
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    fit_hwm_gb = _vm_hwm_gb()
    Fp = model.predict_forces(R[M:])
    rel = float(np.sqrt(np.mean((Fp - F[M:]) ** 2) / np.mean(F[M:] ** 2)))
    # batched prediction for 100 replicas (simulation use): per-configuration time
    X = R[M:M + 100]
    model.predict_forces(X)
    t100 = best_time(lambda: model.predict_forces(X)) / len(X)
    t1 = best_time(lambda: model.predict_forces(X[:1]))
    out = dict(M=M, n_beads=6, solver=model.solver_, reduced_size=M * 12, iterations=model.cg_iterations_,
               fit_s=fit_s, traced_peak_gb=traced_peak / 1e9,
               maxrss_gb=_vm_hwm_gb(),
               start_hwm_gb=start_gb, fit_hwm_gb=fit_hwm_gb,
               dense_gb=(M * 12) ** 2 * 8 / 1e9, test_rel_rmse=rel, lam=model.lam_,
               warnings=[str(w.message) for w in caught], pred100_us=t100 * 1e6, pred1_us=t1 * 1e6)
    print("CGJSON " + json.dumps(out), flush=True)


def simulation_prediction(M=3000, n_rep=100):
    """The simulation use case: a 3000-point 6-bead chiral model (CG-trained) predicting 100 replicas at once."""
    R, F = six_bead_data(M + n_rep, seed=3)
    model = GDML(sigma=SIGMA, lam=1e-2, relative_lam=True, chiral=True, memory_budget_gb=1.5).fit(R[:M], F[:M])
    X = R[M:]
    model.predict_forces(X)
    wall, cpu = wall_and_cpu(lambda: model.predict_forces(X))
    wall1, cpu1 = wall_and_cpu(lambda: model.predict_forces(X[:1]))
    return dict(M=M, solver=model.solver_, wall_us=wall / n_rep * 1e6, cpu_us=cpu / n_rep * 1e6,
                wall1_us=wall1 * 1e6, cpu1_us=cpu1 * 1e6)


def run_cg_subprocess(M):
    """Run :func:`cg_part` in a fresh process so that its peak RSS is its own."""
    proc = subprocess.run([sys.executable, __file__, "--cg-part", str(M)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CGJSON "):
            return json.loads(line[7:])
    raise RuntimeError(f"CG part failed:\n{proc.stdout}\n{proc.stderr}")


# ------------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (about 2 minutes)")
    ap.add_argument("--sgdml-2000", action="store_true", help="also train sgdml at M=2000 (needs ~15 GB, minutes)")
    ap.add_argument("--cg-part", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cg_part is not None:
        cg_part(args.cg_part)
        return 0

    sizes = [200, 400] if args.quick else [500, 1000, 2000]
    sgdml_sizes = sizes[:2] + ([2000] if args.sgdml_2000 and not args.quick else [])
    M_cg = 1500 if args.quick else 5000
    R, F = load_data()
    perm = np.random.default_rng(0).permutation(len(R))
    test = perm[-200:]
    say = Report()

    load = os.getloadavg()
    say(f"# GDML core benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, "
        f"load avg {load[0]:.1f} at start)")
    say()
    say(f"cgnet ala2, 5 beads, nm / kJ/mol/nm; sigma = {SIGMA} nm^-1, lambda = {REL_LAM:g} x mean(diag K) "
        "(same absolute value for sgdml); chiral=False for every sgdml comparison; sgdml 1.0.3 with "
        "use_sym=False, use_E=False (no energies needed or passed), analytic solver, default GDMLPredict.")
    say("The machine is shared with other jobs: compare ratios within this run, not absolute times.")
    say()
    say("## Training")
    say()
    say("| M | reduced n | ours fit (s) | factorization in fit (s) | its GFLOP/s | factorization / fit | "
        "scipy cho_factor alone (s) | its GFLOP/s | sgdml train (s) | speed-up | max rel. force diff vs sgdml |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    sg_models = {}
    ours = {}
    fmt = lambda v, f: "n/a" if v is None else f.format(v)  # noqa: E731
    for M in sizes:
        tr = perm[:M]
        model = GDML(sigma=SIGMA, lam=REL_LAM, relative_lam=True, chiral=False, solver="cholesky",
                     memory_budget_gb=8.0)
        model.fit(R[tr[:50]], F[tr[:50]])  # warm numba caches
        fit_s, fact_s = np.inf, np.inf
        for _ in range(2 if M <= 1000 else 1):  # best of two where cheap: the machine is shared
            t0 = time.perf_counter()
            model.fit(R[tr], F[tr])
            fit_s = min(fit_s, time.perf_counter() - t0)
            fact_s = min(fact_s, model.timings_["factorization"])
        ours[M] = model
        n = M * reduced_rank(R.shape[1], 10)
        cho_s = gflops = None
        if n <= SCIPY_CHO_MAX:
            n, cho_s, gflops = cholesky_reference(R[tr], SIGMA, model.lam_)
        sg_s, diff = None, None
        if M in sgdml_sizes:
            sg_model, sg_s = sgdml_ala2(R[tr], F[tr], SIGMA, model.lam_)
            sg_models[M] = sg_model
            _, Fs = sgdml_predictor(sg_model).predict(R[test].reshape(len(test), -1))
            Fo = model.predict_forces(R[test]).reshape(len(test), -1)
            diff = np.abs(Fs - Fo).max() / np.abs(Fs).max()
        say(f"| {M} | {n} | {fit_s:.2f} | {fact_s:.2f} | {n ** 3 / 3 / fact_s / 1e9:.1f} | {fact_s / fit_s:.2f} "
            f"| {fmt(cho_s, '{:.2f}')} | {fmt(gflops, '{:.1f}')} | {fmt(sg_s, '{:.1f}')} "
            f"| {fmt(None if sg_s is None else sg_s / fit_s, '{:.1f}x')} | {fmt(diff, '{:.1e}')} |")
    say()
    say(f"Factorization: scipy cho_factor up to n = 8192, above that cgdml's blocked Cholesky (potrf on 2048 "
        f"blocks + GEMM updates), because multithreaded OpenBLAS potrf segfaults here for n above ~15000 (a bare "
        f"scipy.linalg.cho_factor of a 16300 x 16300 matrix crashes; with 1 thread it works). The scipy "
        f"reference is therefore only run for n <= {SCIPY_CHO_MAX}. GFLOP/s = n^3/3 / time.")
    say()
    say("## Prediction (forces only, per configuration)")
    say()
    say("| model | batch | ours wall (us/config) | ours CPU (us/config) | sgdml wall (us/config) | speed-up (wall) |")
    say("|---|---|---|---|---|---|")
    Mp = max(sg_models)
    pred = sgdml_predictor(sg_models[Mp])
    X = R[test[:100]]
    Xf = X.reshape(100, -1)
    for B in (1, 100):
        t_ours, c_ours = wall_and_cpu(lambda: ours[Mp].predict_forces(X[:B]))
        t_ours, c_ours = t_ours / B, c_ours / B
        t_sg = best_time(lambda: pred.predict(Xf[:B], return_E=False), repeat=2) / B
        say(f"| 5 beads, M={Mp}, chiral=False | {B} | {t_ours * 1e6:.1f} | {c_ours * 1e6:.1f} | {t_sg * 1e6:.0f} "
            f"| {t_sg / t_ours:.0f}x |")
    del pred

    say()
    say(f"## Matrix-free CG training, 6 beads, M={M_cg} (separate process)")
    say()
    cg = run_cg_subprocess(M_cg)
    say(f"sigma = {SIGMA} nm^-1, lambda = {CG_REL_LAM:g} x mean(diag K), chiral=True, memory_budget_gb=1.5 "
        "(so solver='auto' picks CG), cg_tol=1e-6 (relative residual), Nyström + diagonal-block preconditioner.")
    say("6 beads = the 5 real backbone beads of cgnet frames plus a CB placed rigidly from N, CA, C (ideal "
        "geometry); labels are noise-free forces of an analytic field (all-pair springs + dihedral sines), "
        "so the held-out error checks that CG really solved the system.")
    say()
    say("| M | reduced n | dense reduced K would need | solver | CG iterations | fit (s) | peak RSS before fit | "
        "peak RSS through fit | tracemalloc peak (fit) | peak RSS incl. prediction timing | held-out rel. force RMSE |")
    # peak RSS = VmHWM of the child (ru_maxrss would inherit the parent's peak across fork + exec)
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    say(f"| {cg['M']} | {cg['reduced_size']} | {cg['dense_gb']:.1f} GB | {cg['solver']} | {cg['iterations']} | "
        f"{cg['fit_s']:.1f} | {cg['start_hwm_gb']:.2f} GB | {cg['fit_hwm_gb']:.2f} GB | {cg['traced_peak_gb']:.2f} GB "
        f"| {cg['maxrss_gb']:.2f} GB | {cg['test_rel_rmse']:.2e} |")
    if cg["warnings"]:
        say(f"\nwarnings: {'; '.join(cg['warnings'])}")
    say()
    say(f"Prediction with this {cg['M']}-point 6-bead chiral model: {cg['pred100_us']:.1f} us/config batched "
        f"(100 replicas), {cg['pred1_us']:.0f} us for a single configuration.")
    say()
    sp = simulation_prediction(3000 if not args.quick else 1000)
    say(f"## Simulation use case: 6-bead chiral model with {sp['M']} training points, 100 replicas per call")
    say()
    say("| model | batch | wall (us/config) | process CPU, all threads (us/config) | wall if CPU split over 2 free cores |")
    say("|---|---|---|---|---|")
    say(f"| 6 beads, M={sp['M']} ({sp['solver']}) | 100 | {sp['wall_us']:.1f} | {sp['cpu_us']:.1f} | {sp['cpu_us'] / 2:.1f} |")
    say(f"| 6 beads, M={sp['M']} ({sp['solver']}) | 1 | {sp['wall1_us']:.0f} | {sp['cpu1_us']:.0f} | n/a |")
    load = os.getloadavg()
    say()
    say(f"Load average at end: {load[0]:.1f} (2 cores).")
    say.write(RESULTS)
    return 0


if __name__ == "__main__":
    run_cli(main)
