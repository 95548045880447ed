"""Does the force uncertainty mean something? Calibration, out-of-data detection, landscape band coverage and cost
of the GDML force posterior (cgdml.uncertainty, docs/uncertainty.md), on alanine dipeptide (shipped and cgnet) and
the ACE-AAA-NME tetrapeptide.

Per case (``--cases``, default all whose data exist):

- ``ala2``: the shipped alanine dipeptide (data/), 5 beads, optimal force map;
- ``cgnet``: the cgnet alanine dipeptide (../shared/data/cgnet-ala2), 5 beads, pre-mapped;
- ``tetra``: ACE-AAA-NME (data/, 12,500 frames), 11 backbone beads, aggregate force map; its landscapes are
  compared with an independent 50 ns run (``--tetra-ref``, /work/refs/aaa_s11) when it exists.

Steps (each cached in ``--workdir``/CASE, so a rerun resumes):

1. Fit the inducing-point model (fixed sigma and lam: the values the pipeline's selection chose in
   benchmarks/results/bench_maps.md) on all frames but a held-out block, the last 10% of the trajectory; its
   posterior is ForcePosterior.fit on the learner's training frames and residual labels (the fit's own posterior
   once the model carries one, the issue-25 contract).
2. Calibration: on the held-out block, the squared force error against predicted variance + label noise
   (cgdml.uncertainty.instantaneous_noise on the training frames), per bead: z = error / sqrt(var + noise),
   fractions within 1 and 2 (Gaussian: 68.3% and 95.4%) and mean z^2 (1); and whether held-out forces could
   calibrate the posterior's scale: the mean product of the force errors of nearest held-out frame pairs (the
   label noise cancels) over the predicted variance, with its standard error.
3. Out-of-data detection: the same fit without any training frame whose psi (the first residue's; the middle
   residue's for the tetrapeptide) lies in (-120, 60) deg; the predicted force std on the removed frames against
   held-out kept frames: ratio of medians and ROC AUC (with the plain descriptor distance to the nearest
   inducing centre as a yardstick), and the calibration on the removed frames.
4. Band coverage: simulate the model (the simulate command's defaults), then cgdml.fes.compare_landscapes with
   the model: how often the reference lies inside the 95% band (sampling and model) over bins with >= 20
   reference frames, and the model's share; with ``--refits K``, again with K block-jackknife refits of the fit
   (each without one of K contiguous blocks of the training frames) added to the band.
5. Cost: the force std of 100 replica configurations against one force call on them.
6. Two-layer (``ala2`` only, ``--two-layer``): the two-layer scheme with fixed hyperparameters, rebuilt here so
   that its layer-1 sub-models are kept: their spread against the final layer's posterior, calibrated and as a
   detector, in the data and on the removed region.

Writes benchmarks/results/bench_uncertainty.md (``--output``). Run: ``nice -n 5 python
benchmarks/bench_uncertainty.py``; ``--quick``: the reduced configuration QUICK (smaller fit and posterior, a
shorter run); ``--parts``: only some of the steps; ``--replicas``/``--steps``/``--max-reduced``/
``--sample-frames``/``--min-ess``: one setting changed. The committed results file puts together the reports of
several such runs, each quoted with its command line.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from _common import CGNET, Report, best_wall_and_cpu, load_cgnet, load_shipped, load_str

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REGION = (-120.0, 60.0)                   # psi window removed for the detection test, degrees
# case -> fit settings (bench_maps.md's chosen values), noise pairing separation (frames), region residue
CASES = {"ala2": dict(sigma=8.0, lam=0.3, min_separation=2, residue=0),
         "cgnet": dict(sigma=8.0, lam=0.3, min_separation=2, residue=0),
         "tetra": dict(sigma=8.0, lam=1.0, min_separation=2, residue=1)}
#: the reduced configuration (``--quick``): training frames, inducing points, posterior size, simulation
QUICK = dict(n_train=5000, n_inducing=500, max_reduced=1500, sample_frames=1500, max_eval=500, replicas=50,
             steps=16000)
PARTS = ("calibration", "detection", "coverage", "cost", "two_layer")
TITLES = {"calibration": "calibration", "detection": "out-of-data detection", "coverage": "landscape band coverage",
          "cost": "cost", "two_layer": "two-layer spread"}
TWO_LAYER = dict(n_models=8, batch_size=1000, mean_set_size=1000, sigma1=4.0, lam1=0.3, sigma2=4.0, lam2=1e-3)


# ------------------------------------------------------------------------------------------------ data
def peptide_map(n_residues):
    """TOML map of a capped peptide ACE-(X)n-NME on its backbone: C(ACE), N CA C per residue, N(NME)."""
    beads = [("C", "resid 0 and name C")]
    for r in range(1, n_residues + 1):
        beads += [("N", f"resid {r} and name N"), ("CA", f"resid {r} and name CA"), ("C", f"resid {r} and name C")]
    beads.append(("N", f"resid {n_residues + 1} and name N"))
    return "\n".join(f'[[bead]]\nname = "{n}"\nselect = "{s}"\n' for n, s in beads)


def map_tetra(pdb, work, name):
    from cgdml.data import CGDataset
    from cgdml.mapping import map_allatom

    out = work / f"{name}.npz"
    if not out.exists():
        (work / "map.toml").write_text(peptide_map(3))
        npz = Path(pdb).with_suffix(".npz")
        map_allatom(pdb, npz, npz, work / "map.toml", force_map="aggregate", temperature=300.0).save(out)
    return CGDataset.load(out)


def load_case(case, args, work):
    """(dataset, reference dataset for the landscapes) of a case, or None when its data are missing."""
    if case == "ala2":
        ds = load_shipped()
        return ds, ds
    if case == "cgnet":
        return (load_cgnet(),) * 2 if (CGNET / "ala2_coordinates.npy").exists() else None
    if case == "tetra":
        pdb = ROOT / "data" / "ace-aaa-nme_implicit_300K.pdb"
        ds = map_tetra(pdb, work, "cg")
        ref_pdb = Path(args.tetra_ref) / "ace-aaa-nme_implicit_300K.pdb"
        ref = map_tetra(ref_pdb, work, "ref") if ref_pdb.exists() else ds
        return ds, ref
    raise SystemExit(f"unknown case {case}")


def psi_of(ds, residue):
    from cgdml.fes import residue_phi_psi

    return np.degrees(residue_phi_psi(ds.coords, ds.cg_topology)[residue][1][:, 1])


# ------------------------------------------------------------------------------------------------ fits
def fit_nystrom(ds, settings, args, balance=True):
    """The inducing-point CG estimator (fixed sigma, lam) fitted to ``ds``."""
    from cgdml.pipeline import cg_estimator

    kw = dict(n_inducing=QUICK["n_inducing"]) if args.quick else {}
    return cg_estimator("nystrom", sigma=settings["sigma"], lam=settings["lam"], seed=0, progress=False,
                        balance_basins=balance, **kw).fit(ds)


def build_posterior(R, F, gdml, lam, args, cache):
    """ForcePosterior.fit on the training frames R and labels F of a GDML model (absolute ``lam``), cached."""
    from cgdml.uncertainty import ForcePosterior

    if cache.exists():
        with np.load(cache) as z:
            return ForcePosterior.from_arrays(dict(z))
    t = time.perf_counter()
    post = ForcePosterior.fit(R, F, sigma=gdml.sigma, lam=lam, quads=gdml.quads, chiral_scale=gdml.chiral_scale,
                              max_reduced=args.max_reduced, sample_frames=args.sample_frames, n_samples=32, seed=0)
    post.info["benchmark_fit_s"] = time.perf_counter() - t
    np.savez(cache, **post.to_arrays())
    return post


def posterior_of(est, ds, args, cache):
    """The fit's posterior (the model's, once CGModel carries one), else built the way the library does."""
    own = getattr(est.model_, "uncertainty", None)
    if own is not None:
        return own
    idx = est.train_index_
    R = ds.coords if idx is None else ds.coords[idx]
    F = ds.forces if idx is None else ds.forces[idx]
    return build_posterior(R, est.prior_.residual_forces(R, F), est.learner_.model_, est.learner_.lam_, args, cache)


def fitted(ds, settings, args, work, name, balance=True):
    """(CGModel, posterior) of the inducing-point fit of ``ds``, cached as NAME.npz and NAME_posterior.npz."""
    from cgdml.model import CGModel

    path, cache = work / f"{name}.npz", work / f"{name}_posterior.npz"
    if path.exists() and (cache.exists() or getattr(CGModel.load(path), "uncertainty", None) is not None):
        model = CGModel.load(path)
        post = getattr(model, "uncertainty", None)
        if post is None:
            with np.load(cache) as z:
                from cgdml.uncertainty import ForcePosterior

                post = ForcePosterior.from_arrays(dict(z))
        return model, post
    t = time.perf_counter()
    est = fit_nystrom(ds, settings, args, balance)
    fit_s = time.perf_counter() - t
    post = posterior_of(est, ds, args, cache)
    est.model_.info["benchmark_fit_s"] = fit_s
    est.model_.save(path)
    return est.model_, post


# ------------------------------------------------------------------------------------------------ measures
def calibration(err, var_bead, noise_bead):
    """z = err / sqrt(var + noise) per bead and component: fractions within 1 and 2, mean z^2, the model's share
    of the predicted variance and the excess error (mean err^2 - noise) over the mean model variance."""
    pred = var_bead[:, :, None] + noise_bead[None, :, None]
    z = err / np.sqrt(pred)
    sq = np.mean(err ** 2)
    return {"n_frames": int(len(err)), "within_1": float(np.mean(np.abs(z) < 1)),
            "within_2": float(np.mean(np.abs(z) < 2)), "mean_z2": float(np.mean(z * z)),
            "mse": float(sq), "mean_var": float(var_bead.mean()), "noise": float(noise_bead.mean()),
            "model_share": float(var_bead.mean() / pred.mean()),
            "excess_ratio": float((sq - noise_bead.mean()) / var_bead.mean())}


def pair_scale(err, R, var, quads, chiral_scale, min_separation):
    """The posterior's scale as held-out forces see it, without the label noise: each held-out frame i is paired
    with its nearest frame j in descriptor space more than ``min_separation`` frames away; the mean of
    e_i . Rot e_j (per component; Rot the rigid alignment of R_j onto R_i) estimates the model's error variance
    where the labels' independent noise cancels, and its ratio to the mean predicted sqrt(var_i var_j) is the
    scale s^2 would need. Returns the ratio, its standard error and the number of pairs."""
    from cgdml.features import descriptor
    from cgdml.uncertainty import _kabsch

    D = descriptor(R, quads, chiral_scale)
    sq = np.einsum("nd,nd->n", D, D)
    d2 = sq[:, None] + sq[None] - 2.0 * D @ D.T
    idx = np.arange(len(R))
    d2[np.abs(idx[:, None] - idx[None]) <= min_separation] = np.inf
    j = np.argmin(d2, axis=1)
    ej = np.einsum("nac,nkc->nak", err[j], _kabsch(R[j], R))
    prod = (err * ej).sum(-1).mean(-1) / 3.0
    pv = np.sqrt(var * var[j]).mean()
    return {"scale": float(prod.mean() / pv), "se": float(prod.std(ddof=1) / np.sqrt(len(prod)) / pv),
            "n_pairs": int(len(prod)), "min_separation": int(min_separation)}


def detection(u_removed, u_kept):
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(u_removed)), np.zeros(len(u_kept))]
    return {"ratio_of_medians": float(np.median(u_removed) / np.median(u_kept)),
            "auc": float(roc_auc_score(y, np.r_[u_removed, u_kept])), "n_removed": int(len(u_removed)),
            "n_kept": int(len(u_kept))}



def subsample(idx, n, seed):
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, min(n, len(idx)), replace=False))


# ------------------------------------------------------------------------------------------------ one case
def bench_case(case, args, log):
    from cgdml.uncertainty import instantaneous_noise

    work = Path(args.workdir) / (case + ("-quick" if args.quick else ""))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "row.json"
    row = json.loads(out.read_text()) if out.exists() else {}

    def save():
        out.write_text(json.dumps(row, indent=1))

    loaded = load_case(case, args, work)
    if loaded is None:
        log(f"{case}: data not found, skipped")
        return None
    ds, ref = loaded
    settings = CASES[case]
    n = ds.n_frames
    n_held = n // 10
    train_idx, held_idx = np.arange(n - n_held), np.arange(n - n_held, n)
    if args.quick:
        train_idx = subsample(train_idx, QUICK["n_train"], 1)
    train = ds.subset(train_idx)
    psi = psi_of(ds, settings["residue"])
    in_region = (psi > REGION[0]) & (psi < REGION[1])
    row.update(case=case, n_frames=int(n), n_beads=int(ds.n_beads), n_train=int(len(train_idx)),
               n_held=int(n_held), region_fraction=float(in_region.mean()), settings=settings,
               reference_frames=int(ref.n_frames), independent_reference=ref is not ds)
    log(f"{case}: {n} frames, {ds.n_beads} beads; fitting on {len(train_idx)}")
    model, post = fitted(train, settings, args, work, "model")
    row["posterior"] = {k: post.info.get(k) for k in ("n_inducing", "reduced_size", "rank", "n_sample",
                                                      "noise_variance", "mean_train_variance", "benchmark_fit_s")}
    row["fit_s"] = model.info.get("benchmark_fit_s")
    save()

    # calibration on the held-out block
    if {"calibration", "detection"} & args.parts and "noise" not in row:
        noise = instantaneous_noise(train.coords, train.forces, post.quads, post.chiral_scale,
                                    min_separation=settings["min_separation"])
        row["noise"] = {"variance": noise.variance, "per_bead": noise.per_bead.tolist(), "n_pairs": noise.n_pairs,
                        "gp_noise_variance": post.noise_variance}
        save()
    noise_bead = np.asarray(row["noise"]["per_bead"]) if "noise" in row else None
    held = subsample(held_idx, args.max_eval, 2)
    if "calibration" in args.parts and "calibration" not in row:
        err = ds.forces[held] - model.forces(ds.coords[held])
        row["calibration"] = calibration(err, post.force_variance(ds.coords[held], per_bead=True), noise_bead)
        save()
    if "calibration" in args.parts and "pair_scale" not in row:
        block = held_idx[:2000]                     # contiguous: the first 2000 held-out frames
        R, err = ds.coords[block], ds.forces[block] - model.forces(ds.coords[block])
        row["pair_scale"] = pair_scale(err, R, post.force_variance(R), post.quads, post.chiral_scale,
                                       settings["min_separation"])
        save()
    log(f"{case}: calibration {row.get('calibration')}, pair scale {row.get('pair_scale')}")

    # out-of-data detection
    if "detection" in args.parts and "detection" not in row:
        keep = train_idx[~in_region[train_idx]]
        cut_model, cut_post = fitted(ds.subset(keep), settings, args, work, "model_cut", balance=False)
        removed = subsample(np.nonzero(in_region)[0], args.max_eval, 3)
        kept = held[~in_region[held]]
        var_r = cut_post.force_variance(ds.coords[removed], per_bead=True)
        var_k = cut_post.force_variance(ds.coords[kept], per_bead=True)
        det = detection(np.sqrt(var_r.mean(1)), np.sqrt(var_k.mean(1)))
        dist = detection(cut_model.gdml.nearest_train_distance(ds.coords[removed]),
                         cut_model.gdml.nearest_train_distance(ds.coords[kept]))
        det["distance_auc"], det["distance_ratio"] = dist["auc"], dist["ratio_of_medians"]
        det["variance_ratio_of_medians"] = float(np.median(var_r.mean(1)) / np.median(var_k.mean(1)))
        det["calibration_removed"] = calibration(ds.forces[removed] - cut_model.forces(ds.coords[removed]), var_r,
                                                 noise_bead)
        det["calibration_kept"] = calibration(ds.forces[kept] - cut_model.forces(ds.coords[kept]), var_k,
                                              noise_bead)
        det["rank"] = cut_post.rank
        row["detection"] = det
        save()
    log(f"{case}: detection {row.get('detection')}")

    # landscape band coverage
    if "coverage" in args.parts and "coverage" not in row:
        row["coverage"] = landscape(model, post, ref, args, work, case, log)
        save()
    key = f"coverage_refits{args.refits}" + ("" if args.estimator == "auto" else f"_{args.estimator}")
    if "coverage" in args.parts and args.estimator != "auto" and f"coverage_{args.estimator}" not in row:
        row[f"coverage_{args.estimator}"] = landscape(model, post, ref, args, work, case, log)
        save()
    if "coverage" in args.parts and args.refits and key not in row:
        refits = jackknife_refits(train, settings, args, work, log)
        row[key] = landscape(model, post, ref, args, work, case, log, refits)
        save()
    # cost for 100 replicas
    if "cost" in args.parts and "cost" not in row and (work / "traj.npy").exists():
        R100 = np.load(work / "traj.npy")[-100:].astype(np.float64)
        f_wall, f_cpu = best_wall_and_cpu(lambda: model.forces(R100))
        g_wall, g_cpu = best_wall_and_cpu(lambda: model.gdml.predict_forces(R100))
        u_wall, u_cpu = best_wall_and_cpu(lambda: np.sqrt(post.force_variance(R100)))
        row["cost"] = {"force_ms": 1e3 * f_wall, "force_cpu_ms": 1e3 * f_cpu, "gdml_ms": 1e3 * g_wall,
                       "gdml_cpu_ms": 1e3 * g_cpu, "uncertainty_ms": 1e3 * u_wall, "uncertainty_cpu_ms": 1e3 * u_cpu,
                       "rank": post.rank, "n_inducing": post.info.get("n_inducing"),
                       "centres": int(model.gdml.n_train), "load": load_str()}
        save()
    if case == "ala2" and "two_layer" in args.parts and "two_layer" not in row:
        row["two_layer"] = two_layer(ds, train_idx, held, in_region, noise_bead, args, work, log)
        save()
    return row


def jackknife_refits(train, settings, args, work, log):
    """``args.refits`` block-jackknife refits of the model: the same fit, each without one of K contiguous blocks
    of the (time-ordered) training frames, cached as refitK_k.npz."""
    K = args.refits
    blocks = np.array_split(np.arange(train.n_frames), K)
    out = []
    for k, b in enumerate(blocks):
        t = time.perf_counter()
        out.append(fitted(train.subset(np.delete(np.arange(train.n_frames), b)), settings, args, work,
                          f"refit{K}_{k}")[0])
        log(f"jackknife refit {k + 1} of {K}: {time.perf_counter() - t:.0f} s")
    return out


def landscape(model, post, ref, args, work, case, log, refits=None):
    from cgdml.fes import compare_landscapes
    from cgdml.simulate import simulate_model

    traj = work / "traj.npy"
    if not traj.exists():
        t = time.perf_counter()
        kw = {k: getattr(args, k) for k in ("replicas", "steps") if getattr(args, k) is not None}
        run = simulate_model(model, seed=0, progress=False, **kw)
        np.save(traj, run.coordinates())
        (work / "traj.json").write_text(json.dumps({"frames_per_replica": run.frames_per_replica().tolist(),
                                                    "wall_s": time.perf_counter() - t}))
    xyz = np.load(traj)
    per = json.loads((work / "traj.json").read_text())["frames_per_replica"]
    block = per[0] if len(set(per)) == 1 else None            # one replica per bootstrap block
    model.uncertainty = post                                  # the contract: CGModel.uncertainty
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = compare_landscapes(xyz, ref, model=model, block=block, min_ess=args.min_ess, refits=refits,
                                 estimator=args.estimator,
                                 plot=work / (("fes" if refits is None else f"fes_refits{len(refits)}")
                                              + ("" if args.estimator == "auto" else f"_{args.estimator}") + ".png"))
    band_s = time.perf_counter() - t
    out = {"n_frames": int(len(xyz)), "block": block, "reweighting": rep.get("reweighting"), "band_s": band_s,
           "undefined": rep.get("model_uncertainty_undefined"), "panels": [],
           "n_refits": 0 if refits is None else len(refits)}
    for e in rep["panels"]:
        u = e.get("model_uncertainty") or {}
        out["panels"].append({"label": e["label"], "metrics": e["metrics"], "floor": e["noise_floor"],
                              "bootstrap": {k: e.get("bootstrap", {}).get(k, {}).get("std")
                                            for k in ("fes_rmse", "js")},
                              "band": u.get("band"), "coverage": u.get("coverage"),
                              "median_model_std": _median(u, "model_std"),
                              "median_refit_std": _median(u, "refit_std"),
                              "median_sampling_std": _median(u, "sampling_std")})
    log(f"{case}: landscape {json.dumps(out)[:600]}")
    return out


def _median(u, key):
    v = (u.get("bins") or {}).get(key)
    if v is None:
        return None
    a = np.array(v, dtype=np.float64)
    return float(np.nanmedian(a)) if np.isfinite(a).any() else None


# ------------------------------------------------------------------------------------------------ two-layer
def two_layer_settings(args):
    """TWO_LAYER, with fewer and smaller sub-models in the reduced configuration."""
    return dict(TWO_LAYER, **(dict(n_models=4, batch_size=300, mean_set_size=300) if args.quick else {}))


def two_layer_fit(R, F, strata, quads, args, seed):
    """Layer-1 GDML sub-models on stratified batches, the mean-set labels and the layer-2 GDML (fixed
    hyperparameters, as cgdml.ensemble.TwoLayerGDML without cross-validation): (sub-models, layer-2 estimator,
    mean-set indices, labels)."""
    from cgdml.gdml import GDML
    from cgdml.sampling import stratified_batch

    p = two_layer_settings(args)
    rng = np.random.default_rng([seed, 77])
    subs = []
    for _ in range(p["n_models"]):
        idx = np.sort(stratified_batch(strata, min(p["batch_size"], len(R) // 2), rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subs.append(GDML(sigma=p["sigma1"], lam=p["lam1"], relative_lam=True, dihedrals=quads)
                        .fit(R[idx], F[idx]).model_)
    mean_idx = np.sort(stratified_batch(strata, min(p["mean_set_size"], len(R)), rng))
    labels = np.mean([m.predict_forces(R[mean_idx]) for m in subs], axis=0)
    final = GDML(sigma=p["sigma2"], lam=p["lam2"], relative_lam=True, dihedrals=quads).fit(R[mean_idx], labels)
    return subs, final, mean_idx, labels


def two_layer(ds, train_idx, held, in_region, noise_bead, args, work, log):
    """Layer-1 spread against the final layer's posterior (see the module docstring)."""
    from cgdml.prior import CGPrior
    from cgdml.sampling import make_strata

    out = {"settings": two_layer_settings(args)}
    removed = subsample(np.nonzero(in_region)[0], args.max_eval, 3)
    for name, frames in (("full", train_idx), ("cut", train_idx[~in_region[train_idx]])):
        t = time.perf_counter()
        sub = ds.subset(frames)
        prior = CGPrior(repulsion=True, dihedrals="auto").fit(sub.coords, sub.temperature, sub.cg_topology)
        strata, _ = make_strata(sub, "auto", 12, 50, 0)
        F = prior.residual_forces(sub.coords, sub.forces)
        quads = sub.cg_topology.chirality_quads
        subs, final, mean_idx, labels = two_layer_fit(sub.coords, F, strata, quads, args, 0)
        post = build_posterior(sub.coords[mean_idx], labels, final.model_, final.lam_, args,
                               work / f"two_layer_{name}_posterior.npz")
        fit_s = time.perf_counter() - t
        res = {"fit_s": fit_s, "rank": post.rank, "gp_noise_variance": post.noise_variance}
        sets = {"held": held if name == "full" else held[~in_region[held]], "removed": removed}
        u = {}
        for label, idx in sets.items():
            R = ds.coords[idx]
            preds = np.array([m.predict_forces(R) for m in subs])                  # (K, n, N, 3)
            spread = preds.var(axis=0, ddof=1).reshape(len(idx), ds.n_beads, 3).mean(-1)   # per bead
            err = ds.forces[idx] - (prior.forces(R) + final.model_.predict_forces(R))
            var = post.force_variance(R, per_bead=True)
            res[label] = {"posterior": calibration(err, var, noise_bead),
                          "spread": calibration(err, spread, noise_bead),
                          "spread_of_mean": calibration(err, spread / len(subs), noise_bead)}
            u[label] = {"posterior": np.sqrt(var.mean(1)), "spread": np.sqrt(spread.mean(1))}
        if name == "cut":
            res["detection"] = {k: detection(u["removed"][k], u["held"][k]) for k in ("posterior", "spread")}
        out[name] = res
        log(f"two-layer {name}: {json.dumps(res)[:800]}")
    return out


# ------------------------------------------------------------------------------------------------ report
def write_report(rows, args, say):
    parts = [p for p in PARTS if p in args.parts]
    say("# Force uncertainty: " + ("calibration, out-of-data detection, landscape bands, cost"
                                   if len(parts) == len(PARTS) else ", ".join(TITLES[p] for p in parts)))
    say()
    cmd = f"python benchmarks/bench_uncertainty.py{' --quick' if args.quick else ''}"
    if len(parts) != len(PARTS):
        cmd += " --parts " + " ".join(parts)
    if args.cases != list(CASES):
        cmd += " --cases " + " ".join(args.cases)
    cmd += "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in getattr(args, "given", ()))
    if args.quick:
        fit = (f"**Reduced configuration** (`--quick`): inducing-point fits with {QUICK['n_inducing']} centres on "
               f"{QUICK['n_train']} frames drawn from all but the last 10% of the trajectory (held out)")
    else:
        fit = "Inducing-point fits on all frames but the last 10% of the trajectory (held out)"
    say(f"{time.strftime('%Y-%m-%d')}, load {load_str()} on this shared 2-core machine; `{cmd}`. {fit}, with "
        "fixed (sigma, relative lam), the pipeline's choices in bench_maps.md; DTC posterior: "
        + "; ".join(f"{r['case']} m r {r['posterior']['reduced_size']} ({r['posterior']['n_inducing']} inducing "
                    f"configurations), G on {r['posterior']['n_sample']} frames, rank {r['posterior']['rank']}"
                    for r in rows)
        + " (the fit's own, cgdml.pipeline.POSTERIOR_SETTINGS, when the model carries one; else built with "
        f"m r <= {args.max_reduced} and G on {args.sample_frames} frames), 32 posterior samples."
        + (" Label noise from `instantaneous_noise` on the training frames (min_separation 2 frames)."
           if {"calibration", "detection"} & args.parts else ""))
    say()
    if any("calibration" in r and "detection" in r for r in rows):
        calibration_table(rows, say)
    if any("pair_scale" in r for r in rows):
        pair_table(rows, say)
    if any("coverage" in r for r in rows):
        coverage_table(rows, args, say)
    if any("cost" in r for r in rows):
        cost_table(rows, say)
    tl = next((r["two_layer"] for r in rows if "two_layer" in r), None)
    if tl:
        two_layer_table(tl, say)


def calibration_table(rows, say):
    say("## Calibration (held-out block) and out-of-data detection")
    say()
    say("z = force error / sqrt(model variance + noise variance), per bead and Cartesian component; a calibrated "
        "Gaussian gives 68.3% within 1 and 95.4% within 2, mean z^2 = 1. Model share: mean model variance over "
        "the mean predicted variance. Excess ratio: (mean squared error - noise) / mean model variance (1 when the "
        "model variance accounts for the error above the noise; meaningless where the share is tiny). Detection: "
        f"a fit without any training frame with psi in ({REGION[0]:g}, {REGION[1]:g}) deg (the first residue's; "
        "ALA3's for the tetrapeptide); predicted force std on removed frames against held-out kept frames; "
        "yardstick: AUC of the descriptor distance to the nearest inducing centre.")
    say()
    say("| case | beads | train frames | noise (data) | noise (GP) | within 1 | within 2 | mean z^2 | model share | "
        "removed | std ratio of medians | AUC | distance AUC | removed: within 1 / 2 | removed: mean z^2 | "
        "removed: model share | removed: excess ratio |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if "calibration" in r and "detection" in r):
        c, d = r["calibration"], r["detection"]
        cr = d["calibration_removed"]
        say(f"| {r['case']} | {r['n_beads']} | {r['n_train']} | {r['noise']['variance']:.3g} | "
            f"{r['noise']['gp_noise_variance']:.3g} | {c['within_1']:.3f} | {c['within_2']:.3f} | {c['mean_z2']:.3f} | "
            f"{c['model_share']:.2%} | {r['region_fraction']:.0%} | {d['ratio_of_medians']:.2f} | {d['auc']:.4f} | "
            f"{d['distance_auc']:.4f} | {cr['within_1']:.3f} / {cr['within_2']:.3f} | {cr['mean_z2']:.2f} | "
            f"{cr['model_share']:.1%} | {cr['excess_ratio']:.2f} |")
    say()


def pair_table(rows, say):
    say("## Can held-out forces calibrate the posterior's scale?")
    say()
    say("Every frame of the held-out block (its first 2000 frames) paired with its nearest held-out frame in "
        "descriptor space more than min_separation frames away; the mean of e_i . Rot e_j (force errors, Rot the "
        "rigid alignment) estimates the "
        "model's error variance with the label noise cancelled; scale: its ratio to the posterior's mean predicted "
        "variance (1: calibrated), with its standard error. Excess ratio: (mean squared error - data noise) / mean "
        "model variance on the same kind of frames (the calibration table's held-out sample), which rests on the "
        "noise estimate.")
    say()
    say("| case | pairs | scale | standard error | excess ratio |")
    say("|---|---|---|---|---|")
    for r in (r for r in rows if "pair_scale" in r):
        ps, c = r["pair_scale"], r.get("calibration") or {}
        say(f"| {r['case']} | {ps['n_pairs']} | {ps['scale']:.2f} | {ps['se']:.2f} | "
            f"{c['excess_ratio']:.2f} |" if c else f"| {r['case']} | {ps['n_pairs']} | {ps['scale']:.2f} | "
            f"{ps['se']:.2f} | |")
    say()


def coverage_table(rows, args, say):
    say("## Landscape band coverage")
    say()
    from cgdml.simulate import DEFAULTS

    replicas, steps = args.replicas or DEFAULTS["replicas"], args.steps or DEFAULTS["steps"]
    run = ("the `python -m cgdml.simulate` defaults" if (replicas, steps) == (DEFAULTS["replicas"], DEFAULTS["steps"])
           else f"{replicas} replicas x {steps} steps (otherwise the `python -m cgdml.simulate` defaults)")
    say(f"The model simulated with {run}; `compare_landscapes(..., model=...)`: "
        "32 posterior samples reweight the frames; the 95% band is F_model -+ 1.96 sqrt(model^2 + sampling^2) per "
        "bin (sampling: block bootstrap, one replica per block). Coverage: fraction of the bins with >= 20 "
        "reference frames where the reference lies inside the band (a bin the model misses counts as outside); "
        "also with only the sampling part, and with the reference's own bootstrap spread added.")
    say()
    say("Metrics with their spread over the posterior samples (model std) and over the bootstrap (sampling std); "
        "floor: the reference's split-half noise floor.")
    say()
    say("| case | model band | panel | model frames | fes_rmse (kT) | model std | sampling std | floor | js (nats) | "
        "model std | sampling std | floor |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, cov in coverage_entries(rows):
        for p in cov["panels"]:
            b, m, f = p.get("band"), p["metrics"], p["floor"]
            sp = {k: ("undefined", "") if not b else (f"{b[k]['model_std']:.{d}f}", f"{b[k]['sampling_std']:.{d}f}")
                  for k, d in (("fes_rmse", 3), ("js", 4))}
            say(f"| {r['case']} | {band_name(cov)} | {p['label']} | {cov['n_frames']} | {m['fes_rmse']:.3f} | "
                f"{sp['fes_rmse'][0]} | "
                f"{sp['fes_rmse'][1]} | {f['fes_rmse']:.3f} | {m['js']:.4f} | {sp['js'][0]} | {sp['js'][1]} | "
                f"{f['js']:.4f} |")
    say()
    say("Coverage over the bins with >= 20 reference frames (nominal 95%); ESS: Kish effective sample size of "
        "the samples' weights, min and median over the samples, as a fraction of the frames (the band is reweighted "
        f"only above {args.min_ess:.0%}" + (", the library's default" if args.min_ess == 0.1 else
                                             ": **a diagnostic setting, not the library's 10%**") +
        "; first order in the energy deviations below it, docs/uncertainty.md §11); missed: populated "
        "bins the model never visits (outside by definition); widen: the factor by which the band would have to "
        "widen to cover 95% of the bins; median bin std over the visited bins; band s: "
        "wall time of the whole `compare_landscapes` call with the model band.")
    say()
    say("Model band: the posterior samples alone, or with K block-jackknife refits (the fit repeated K times, each "
        "without one of K contiguous blocks of the training frames; their jackknife variance per bin added to the "
        "posterior's); refit ESS: the refits' effective sample size, min over the refits; without refits: the "
        "coverage of the same run's band without the refit term; median bin std: model (posterior and refits) / "
        "refits alone / sampling.")
    say()
    say("| case | reference | model band | ESS min / median | refit ESS min | bins | missed | inside band | without "
        "refits | model only | sampling only | with reference noise | widen | median bin std model / refits / "
        "sampling (kT) | band s |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, cov in coverage_entries(rows):
        rw = cov.get("reweighting") or {}
        e = rw.get("ess_fraction") or {}
        ess = f"{e['min']:.0%} / {e['median']:.0%}" if e else "-"
        re_ = rw.get("refit_ess_fraction")
        ress = f"{re_['min']:.0%}" if re_ else "-"
        ref = "independent run" if r.get("independent_reference") else "the data set (all frames)"
        for p in cov["panels"]:
            cv = p.get("coverage")
            if not cv or not cv.get("n_bins"):
                say(f"| {r['case']} | {ref} | {band_name(cov)} | {ess} | {ress} | undefined: {cov.get('undefined')} "
                    "| | | | | | | | | |")
                continue
            pct = lambda k: "-" if k not in cv else f"{cv[k]:.0%}"  # noqa: E731
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            say(f"| {r['case']} | {ref} | {band_name(cov)} | {ess} | {ress} | {cv['n_bins']} | "
                f"{cv['missed_by_model']} | {pct('inside')} | {pct('inside_without_refits')} | "
                f"{pct('inside_model_only')} | {pct('inside_sampling_only')} | "
                f"{pct('inside_with_reference_noise')} | "
                f"{'-' if cv.get('widen_to_95') is None else format(cv['widen_to_95'], '.2f')} | "
                f"{fmt(p['median_model_std'])} / {fmt(p.get('median_refit_std'))} / "
                f"{fmt(p['median_sampling_std'])} | {cov['band_s']:.0f} |")
    say()


def coverage_entries(rows):
    """(row, coverage entry) for every landscape measured: the posterior band, then any with refits."""
    for r in rows:
        for k in sorted(k for k in r if k.startswith("coverage")):
            yield r, r[k]


def band_name(cov):
    K = cov.get("n_refits") or 0
    name = "posterior" if not K else f"posterior + {K} jackknife refits"
    estimator = (cov.get("reweighting") or {}).get("estimator")
    return name if estimator is None else f"{name}, {estimator}"


def cost_table(rows, say):
    say("## Cost: 100 replica configurations")
    say()
    say("Best wall time per call (process CPU time, all threads, in brackets; the machine is shared, so CPU time "
        "is the steadier number). Force: `CGModel.forces` (prior + GDML); GDML: its GDML part; uncertainty: "
        "sqrt(ForcePosterior.force_variance), rank k of the low-rank factor.")
    say()
    say("| case | GDML centres | posterior m | rank k | force call ms | GDML ms | uncertainty ms | ratio to force "
        "call (CPU) | posterior fit s | landscape band s |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if "cost" in r):
        c = r["cost"]
        fit_s = r["posterior"].get("benchmark_fit_s")
        say(f"| {r['case']} | {c['centres']} | {c['n_inducing']} | {c['rank']} | {c['force_ms']:.2f} "
            f"({c['force_cpu_ms']:.2f}) | {c['gdml_ms']:.2f} ({c['gdml_cpu_ms']:.2f}) | {c['uncertainty_ms']:.1f} "
            f"({c['uncertainty_cpu_ms']:.1f}) | {c['uncertainty_ms'] / c['force_ms']:.0f}x "
            f"({c['uncertainty_cpu_ms'] / c['force_cpu_ms']:.0f}x) | {'' if fit_s is None else f'{fit_s:.0f}'} | "
            f"{r['coverage']['band_s']:.0f} |")


def two_layer_table(tl, say):
    if True:
        s = tl["settings"]
        say()
        say("## Two-layer: layer-1 spread against the final layer's posterior (shipped alanine dipeptide)")
        say()
        say(f"The two-layer scheme with fixed hyperparameters ({s['n_models']} sub-models x {s['batch_size']} "
            f"stratified frames, sigma1 {s['sigma1']:g}, lam1 {s['lam1']:g}; layer 2 on {s['mean_set_size']} "
            f"frames, sigma2 {s['sigma2']:g}, lam2 {s['lam2']:g}), rebuilt in the benchmark to keep the sub-models. "
            "Uncertainties: the final layer's DTC posterior (fitted to the mean-set labels); the spread (variance "
            "over sub-models, per bead); the spread / K (the error of their mean). Each with the label noise, as "
            "above; held-out frames of the full fit, and the removed frames of the fit without the psi window.")
        say()
        say("| frames | uncertainty | within 1 | within 2 | mean z^2 | model share | excess ratio | detection AUC | "
            "ratio of medians |")
        say("|---|---|---|---|---|---|---|---|---|")
        for where, fit in (("held-out", "full"), ("removed region", "cut")):
            key = "held" if fit == "full" else "removed"
            for u in ("posterior", "spread", "spread_of_mean"):
                c = tl[fit][key][u]
                det = tl["cut"]["detection"].get(u) if fit == "cut" else None
                found = "| |" if det is None else f"| {det['auc']:.4f} | {det['ratio_of_medians']:.2f} |"
                say(f"| {where} | {u.replace('_', ' ')} | {c['within_1']:.3f} | {c['within_2']:.3f} | "
                    f"{c['mean_z2']:.2f} | {c['model_share']:.1%} | {c['excess_ratio']:.2f} {found}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--tetra-ref", default="/work/refs/aaa_s11", help="independent ACE-AAA-NME reference run")
    p.add_argument("--max-reduced", type=int, help="posterior inducing observations m r (default 4000, QUICK's "
                   "with --quick)")
    p.add_argument("--sample-frames", type=int, help="frames that estimate G (default 5000, QUICK's with --quick)")
    p.add_argument("--max-eval", type=int, help="frames per evaluation set (default 2000, QUICK's with --quick)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default all; "
                   "the cost needs the coverage's trajectory, two_layer runs on ala2 only)")
    p.add_argument("--workdir", default="/tmp/cgdml-bench-uncertainty")
    p.add_argument("--quick", action="store_true", help="the reduced configuration (QUICK): smaller fits and "
                   "posterior, a shorter run; the report says so")
    p.add_argument("--replicas", type=int, help="replicas of the coverage run (default: the simulate default, "
                   "QUICK's with --quick)")
    p.add_argument("--steps", type=int, help="steps of the coverage run (default: the simulate default, QUICK's "
                   "with --quick)")
    p.add_argument("--refits", type=int, default=0, help="block-jackknife refits for the landscape band (0: none; "
                   "the band with the posterior alone is always measured)")
    p.add_argument("--min-ess", type=float, default=0.1, help="smallest effective sample size of the reweighting, "
                   "a fraction of the frames (default 0.1, the library's; 0: a diagnostic band however unreliable)")
    p.add_argument("--estimator", choices=("auto", "reweighted", "first-order"), default="auto",
                   help="the model band's estimator (default auto: reweighted while every ESS >= --min-ess, else "
                   "first order; forcing one also measures it beside the auto band)")
    p.add_argument("--output", default=str(RESULTS / "bench_uncertainty.md"))
    args = p.parse_args(argv)
    args.parts = set(args.parts)
    sizes = ("max_reduced", "sample_frames", "max_eval", "replicas", "steps")
    args.given = ([k for k in sizes if getattr(args, k) is not None] + ["min_ess"] * (args.min_ess != 0.1)
                  + ["refits"] * bool(args.refits) + ["estimator"] * (args.estimator != "auto"))
    if args.refits == 1 or args.refits < 0:
        raise SystemExit("--refits must be 0 or at least 2")
    base = QUICK if args.quick else dict(max_reduced=4000, sample_frames=5000, max_eval=2000, replicas=None,
                                         steps=None)
    for k in sizes:
        if getattr(args, k) is None:
            setattr(args, k, base[k])
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
    rows = [r for r in (bench_case(c, args, log) for c in args.cases) if r is not None]
    say = Report()
    write_report(rows, args, say)
    say.write(args.output)
    for r in rows:
        png = Path(args.workdir) / (r["case"] + ("-quick" if args.quick else "")) / "fes.png"
        if png.exists():
            (RESULTS / f"fes_uncertainty_{r['case']}.png").write_bytes(png.read_bytes())


if __name__ == "__main__":
    main()
