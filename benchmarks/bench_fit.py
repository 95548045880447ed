"""Benchmark the two-layer GDML fit against a single GDML model, at three training budgets.

Data: the cgnet alanine dipeptide (5 beads, explicit water, 10,000 frames, /work/shared) and the shipped
implicit-solvent alanine dipeptide mapped to 5 beads with the optimal force map
(``load_default_cg_dataset("ala2-5", "optimal")``, 20,000 frames). A fixed random 20% of the frames is the
test set; each budget trains on the first ``budget`` frames of a fixed shuffle of the rest (nested subsets).

Single model: ``fit_cg_model(method="single")`` (stratified) on min(budget, mean_set_size) frames, the size of the two-layer
model's final training set. Its (sigma, lam) are chosen on a validation split (25% of the training frames, at
most 2000): each candidate of SINGLE_SIGMA x SINGLE_LAM is trained on the rest and scored against the held-out
instantaneous forces; the winner is refitted on all training frames. Its wall time includes this search.
Two-layer: ``TwoLayerGDML`` with the class defaults read at run time, scaled down only where the budget
requires it (batch size at most half a CV training fold, set sizes at most the frames available) and with
n_models capped at N_MODELS_MAX; its own 3-fold CV picks all four hyperparameters.

Score: MSE of the total forces (prior + GDML, kJ/mol/nm) against the held-out instantaneous forces, and that MSE
subtracted from the prior-only MSE (the part the GDML learned; the instantaneous force noise dominates both).
Toy: the 4-bead molecule of tests/conftest.py (exact mean force known, labels with heavy noise); the
same two fits at three budgets, scored by the MSE against the exact mean force on 1000 test frames.

All fits run with one numba and one BLAS thread (on the shared 2-core machine extra threads slow small fits).
Run: ``python benchmarks/bench_fit.py [--quick]`` (about 20 min with the 12 x 2000-frame defaults on the shared
2-core machine; --quick about 1 min). Writes benchmarks/results/bench_fit.md too. Needs /work/shared data.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from cgdml._cli import run_cli
from _common import (elapsed_log, fit_single_cv, load_cgnet, load_shipped, load_str, mse, two_layer_defaults,
                     write_text_atomic)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "bench_fit.md"
TEST_FRACTION = 0.2
SINGLE_SIGMA = (1.0, 2.0, 4.0)  # nm^-1 (descriptor units)
SINGLE_LAM = (1.0, 3.0, 10.0, 30.0)  # relative to mean(diag K)
N_MODELS_MAX = 24


def load_toy():
    """(dataset with noisy labels, exact forces): the toy of the tests' ``noisy_toy`` fixture (tests/conftest.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cgdml_tests_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.noisy_toy.__wrapped__()  # the fixture's own function


def two_layer_params(n_train, defaults, quick, toy):
    """Two-layer fit parameters for ``n_train`` frames: the defaults, shrunk only where the budget forces it."""
    p = dict(defaults)
    folds = p["n_folds"]
    fold_train = n_train * (folds - 1) // folds
    p["batch_size"] = min(p["batch_size"], fold_train // 2)
    p["mean_set_size"] = min(p["mean_set_size"], n_train)
    p["cv_mean_set_size"] = min(p["cv_mean_set_size"], fold_train)
    p["n_models"] = min(p["n_models"], N_MODELS_MAX)
    if toy:
        p.update(strata="kmeans", n_strata=20)  # as in tests/test_ensemble.py
    if quick:
        p.update(n_models=min(p["n_models"], 8), cv_models=2, sigma1=tuple(p["sigma1"])[-2:],
                 lam1=tuple(p["lam1"])[-2:], sigma2=tuple(p["sigma2"])[-2:], lam2=tuple(p["lam2"])[-1:])
    p.update(progress=False, n_jobs=1, workdir=None, balance_basins=False)
    return p


def fit_two_layer(train, params):
    """The fitted CG estimator (``.model_`` the CGModel, ``.learner_`` the TwoLayerGDML) and the seconds taken."""
    from cgdml.pipeline import cg_estimator

    t0 = time.perf_counter()
    est = cg_estimator("two-layer", **params).fit(train)
    return est, time.perf_counter() - t0


def single_cv(train, size, quick, toy, seed=0):
    """The single-GDML fit with (sigma, lam) chosen on a validation split; returns (model, chosen, seconds)."""
    kw = dict(strata="kmeans") if toy else {}
    sigmas, lams = (SINGLE_SIGMA[1:], SINGLE_LAM[1:3]) if quick else (SINGLE_SIGMA, SINGLE_LAM)
    t0 = time.perf_counter()
    model, _, chosen = fit_single_cv(train, size, sigmas, lams, seed=seed, **kw)
    return model, chosen, time.perf_counter() - t0


def paired_diff(pred_a, pred_b, target):
    """Mean and standard error over test frames of the per-frame squared-error difference a - b."""
    d = ((pred_a - target) ** 2).mean(axis=(1, 2)) - ((pred_b - target) ** 2).mean(axis=(1, 2))
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def split(n, seed=0):
    """(test indices, shuffled pool of the remaining frames) for a fixed seed."""
    perm = np.random.default_rng([seed, 7]).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    return np.sort(perm[:n_test]), perm[n_test:]


def bench_dataset(name, data, budgets, defaults, quick, log):
    test, pool = split(data.n_frames)
    Rt, Ft = data.coords[test], data.forces[test]
    rows = []
    for b in budgets:
        b = min(b, len(pool))
        train = data.subset(np.sort(pool[:b]))
        params = two_layer_params(b, defaults, quick, toy=False)
        size = params["mean_set_size"]
        single, chosen, t_single = single_cv(train, size, quick, toy=False)
        two, t_two = fit_two_layer(train, params)
        prior_mse = mse(two.model_.prior.forces(Rt), Ft)
        p_single, p_two = single.forces(Rt), two.model_.forces(Rt)
        e_single, e_two = mse(p_single, Ft), mse(p_two, Ft)
        diff = paired_diff(p_two, p_single, Ft)
        row = dict(data=name, budget=b, n_test=len(test), prior=prior_mse, single=e_single, two=e_two, diff=diff,
                   t_single=t_single, t_two=t_two, single_size=size, single_chosen=chosen,
                   two_chosen=dict(sigma1=two.learner_.sigma1_, lam1=two.learner_.lam1_, sigma2=two.learner_.sigma2_,
                                   lam2=two.learner_.lam2_),
                   two_models=two.learner_.n_layer1_models_, batch=params["batch_size"], load=os.getloadavg()[0],
                   timings=two.timings_)
        rows.append(row)
        log(f"{name} budget {b}: prior {prior_mse:.1f}, single {e_single:.1f} ({t_single:.0f} s, {chosen}), "
            f"two-layer {e_two:.1f} ({t_two:.0f} s, {row['two_chosen']}), load {row['load']:.1f}")
    return rows


def bench_toy(budgets, defaults, quick, log):
    data, F_true = load_toy()
    test = np.arange(3000, 4000)  # as in tests/test_ensemble.py; training frames come from the first 3000
    Rt = data.coords[test]
    rows = []
    for b in budgets:
        train = data.subset(np.arange(b))
        params = two_layer_params(b, defaults, quick, toy=True)
        size = params["mean_set_size"]
        single, chosen, t_single = single_cv(train, size, quick, toy=True)
        two, t_two = fit_two_layer(train, params)
        prior = mse(two.model_.prior.forces(Rt), F_true[test])
        p_single, p_two = single.forces(Rt), two.model_.forces(Rt)
        e_single, e_two = mse(p_single, F_true[test]), mse(p_two, F_true[test])
        diff = paired_diff(p_two, p_single, F_true[test])
        noise = mse(data.forces[test], F_true[test])
        row = dict(budget=b, prior=prior, single=e_single, two=e_two, diff=diff, noise=noise, t_single=t_single,
                   t_two=t_two, single_size=size, single_chosen=chosen,
                   two_chosen=dict(sigma1=two.learner_.sigma1_, lam1=two.learner_.lam1_, sigma2=two.learner_.sigma2_,
                                   lam2=two.learner_.lam2_),
                   two_models=two.learner_.n_layer1_models_, batch=params["batch_size"], load=os.getloadavg()[0])
        rows.append(row)
        log(f"toy budget {b}: prior {prior:.1f}, single {e_single:.1f} ({t_single:.0f} s, {chosen}), "
            f"two-layer {e_two:.1f} ({t_two:.0f} s, {row['two_chosen']}), noise {noise:.0f}")
    return rows


def fmt_chosen(c):
    return ", ".join(f"{k} {v:g}" for k, v in c.items() if k in ("sigma", "lam", "sigma1", "lam1", "sigma2", "lam2"))


def report(rows, toy_rows, defaults, args, load_start, wall):
    lines = [f"# Fit benchmark: two-layer GDML vs single GDML ({time.strftime('%Y-%m-%d %H:%M')}, "
             f"{platform.node()}, {os.cpu_count()} cores){' [--quick]' if args.quick else ''}", ""]
    lines += [f"Load average (1/5/15 min) at start: {load_start}; at end: {load_str()} on {os.cpu_count()} "
              f"cores (shared machine: wall times are only comparable as ratios within this run). "
              f"All fits with 1 numba and 1 BLAS thread, n_jobs=1. Total run {wall / 60:.1f} min.", ""]
    shown = {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()
             if k not in ("progress", "workdir", "n_jobs")}
    lines += [f"`TwoLayerGDML` defaults at run time: `{shown}`. Per budget: n_models capped at "
              f"{N_MODELS_MAX}, batch_size <= half a CV training fold, mean_set_size and cv_mean_set_size <= the "
              "frames available; the CV grids are the defaults" + (" (trimmed for --quick)." if args.quick else "."),
              "",
              "Single model: `fit_cg_model(method=\"single\")` (stratified) on the two-layer model's mean-set size; "
              f"(sigma, lam) chosen "
              f"from sigma {list(SINGLE_SIGMA[1:] if args.quick else SINGLE_SIGMA)} x lam "
              f"{list(SINGLE_LAM[1:3] if args.quick else SINGLE_LAM)} (lam relative to mean diag K) by the MSE on a "
              "validation split of its training frames (25%, at most 2000), then refitted on all; its time "
              "includes that search. Two-layer time includes its own 3-fold CV.", ""]
    lines += ["## Held-out force MSE, (kJ/mol/nm)^2, against instantaneous forces", "",
              "Improvement = prior-only MSE minus model MSE (what the GDML learned; larger is better). "
              "two - single = two-layer MSE minus single MSE +- its paired standard error over test frames "
              "(negative: two-layer better; the SE treats test frames as independent, which MD frames are only "
              f"roughly). Test set: a fixed random {TEST_FRACTION:.0%} of the frames; budget = training frames.", "",
              "| data | budget | test | prior MSE | single MSE | two-layer MSE | two - single | single improvement | "
              "two-layer improvement | single time (s) | two-layer time (s) | single: M, chosen | "
              "two-layer: layer-1 models x batch, chosen | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['budget']} | {r['n_test']} | {r['prior']:.1f} | {r['single']:.1f} | "
                     f"{r['two']:.1f} | {r['diff'][0]:.0f} +- {r['diff'][1]:.0f} | {r['prior'] - r['single']:.1f} | {r['prior'] - r['two']:.1f} | "
                     f"{r['t_single']:.0f} | {r['t_two']:.0f} | {r['single_size']}, {fmt_chosen(r['single_chosen'])} | "
                     f"{r['two_models']} x {r['batch']}, {fmt_chosen(r['two_chosen'])} | {r['load']:.1f} |")
    lines += ["", "## Toy (4 beads, exact mean force known): MSE against the exact mean force, (kJ/mol/nm)^2", "",
              "Labels = exact force + Gaussian noise (tests/conftest.py `noisy_toy`); 1000 test frames; "
              "noise = MSE of the noisy labels themselves.", "",
              "| budget | prior MSE | single MSE | two-layer MSE | two-layer / single | two - single (+- SE) | noise | "
              "single time (s) | two-layer time (s) | single: M, chosen | two-layer: models x batch, chosen |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in toy_rows:
        lines.append(f"| {r['budget']} | {r['prior']:.0f} | {r['single']:.0f} | {r['two']:.0f} | "
                     f"{r['two'] / r['single']:.2f} | {r['diff'][0]:.0f} +- {r['diff'][1]:.0f} | {r['noise']:.0f} | {r['t_single']:.0f} | {r['t_two']:.0f} | "
                     f"{r['single_size']}, {fmt_chosen(r['single_chosen'])} | "
                     f"{r['two_models']} x {r['batch']}, {fmt_chosen(r['two_chosen'])} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small budgets and trimmed grids (a smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = ap.parse_args(argv)
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    warnings.simplefilter("ignore")  # automatic lambda increases are recorded by the estimators
    load_start = load_str()
    t0 = time.perf_counter()
    defaults = two_layer_defaults()
    log = elapsed_log(t0)

    log(f"load {load_start}; two-layer defaults {defaults}")
    rows, toy_rows = [], []
    with threadpool_limits(1):
        cgnet_budgets = (500, 1000) if args.quick else (1000, 3000, 8000)
        shipped_budgets = (500, 1000) if args.quick else (1000, 3000, 16000)
        rows += bench_dataset("cgnet", load_cgnet(), cgnet_budgets, defaults, args.quick, log)
        rows += bench_dataset("shipped ala2-5 optimal", load_shipped(), shipped_budgets, defaults, args.quick, log)
        toy_rows = bench_toy((300, 600) if args.quick else (500, 1500, 3000), defaults, args.quick, log)
    text = report(rows, toy_rows, defaults, args, load_start, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        write_text_atomic(RESULTS, text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    run_cli(main)
