"""Hyperparameter selection of the fits: the scores, the K-fold cross-validation of the two-layer scheme, the
hold-out search of the inducing-point fit, and the rule that picks the winner of a score table.

Scores (``cv_score``, :data:`SCORES`) are mean squared errors against held-out *instantaneous* forces, which
differ from the error against the unknown mean force by the constant noise variance, so they rank candidates as
the mean-force error would:

- ``"force"``: the plain force error, (kJ/mol/nm)^2;
- ``"dihedral"``: the error of the forces' components along the soft dihedrals, b . F with
  b = grad(phi) / |grad(phi)|^2, the generalised force along phi whose conditional mean is the slope of the free
  energy along phi, (kJ/mol/rad)^2. It scores the soft coordinates a landscape is measured on, where the plain
  force error is dominated by the stiff bonds and angles (docs/method.md §2.6);
- ``"auto"``: ``"dihedral"`` when there is a soft dihedral, else ``"force"``.

The fit's last choice is not a score table's: :func:`judge_residual_weight` weighs the learned force on top of the
prior by the landscapes of short simulations against the training frames, where force scores cannot see what
moves a soft landscape (docs/method.md §2.6, the residual weight).

A score table is a list of dicts with at least ``sigma``, ``lam`` and ``mse`` (and ``mse_folds`` or ``mse_se``
for its spread); :func:`decide` picks its winner by the one-standard-error rule and records whether the choice
was decisive and whether it sits on an edge of the grid (MODEL.json ``selection``).
These tables are what MODEL.json keeps as ``cv_scores`` (two-layer) and ``selection_scores`` (inducing-point),
and what ``python -m cgdml.cvplot`` draws (:mod:`cgdml.selection_report`).
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from ._io import CgdmlError
from .geometry import dihedral_force_projection
from .sampling import stratified_batch

SCORES = ("auto", "dihedral", "force")
CV_SCORES = SCORES  # the name under which earlier versions exported it


# ------------------------------------------------------------------------------------------------- scores
def resolve_score(setting, quads, where=""):
    """The score a fit uses and the dihedrals (n_quads, 4) it projects on.

    ``setting`` is one of :data:`SCORES`; ``quads`` the soft dihedrals available (bead quadruples). Returns
    (``"dihedral"`` or ``"force"``, quads); raises CgdmlError for an unknown setting, or for ``"dihedral"``
    without a dihedral (``where`` says where none was found, e.g. "in the CG topology (...)").
    """
    if setting not in SCORES:
        raise CgdmlError(f"cv_score must be {', '.join(map(repr, SCORES[:-1]))} or {SCORES[-1]!r}, got {setting!r}")
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    if setting == "dihedral" and not len(quads):
        raise CgdmlError(f"cv_score 'dihedral' needs a dihedral{' ' + where if where else ''}")
    return ("dihedral" if len(quads) else "force") if setting == "auto" else setting, quads


def score_projection(coords, quads):
    """Projectors of forces on the dihedrals ``quads`` (n_quads, 4) at coords (n_frames, n_beads, 3) nm.

    Returns (quads, b (n_frames, n_quads, 4, 3) in nm/rad) with b = grad(phi) / |grad(phi)|^2 over the
    dihedral's four beads, so that b . F = -dU/dphi (kJ/mol/rad) for any force F = -(dU/dphi) grad(phi).
    """
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    return quads, dihedral_force_projection(coords, quads)


def project_forces(forces, projection):
    """Forces (..., n_frames, n_beads, 3) -> their dihedral components (..., n_frames, n_quads)."""
    quads, b = projection
    return np.einsum("...nqax,nqax->...nq", np.asarray(forces, dtype=np.float64)[..., quads, :], b)


def mse(pred, target, projection=None):
    """Mean squared force error, (kJ/mol/nm)^2, or of its dihedral components, (kJ/mol/rad)^2, with a
    ``projection`` from :func:`score_projection`."""
    err = np.asarray(pred, dtype=np.float64) - target
    if projection is not None:
        err = project_forces(err, projection)
    return float(np.mean(err ** 2))


def ensemble_size_correction(preds, n_final, projection=None):
    """Change in the MSE of an ensemble average when it grows from m = len(preds) to ``n_final`` models.

    For exchangeable sub-models the average of n has error bias^2 + noise + c + (v - c)/n, where v - c
    is the between-model variance, estimated without bias by the sample variance over the m models.
    Cross-validating a few models this way scores lambda for the ensemble that will actually be used:
    a small lambda that interpolates noise is penalised less when many models average it out.
    """
    m = len(preds)
    if m < 2:
        return 0.0
    if projection is not None:
        preds = project_forces(preds, projection)
    between = float(preds.var(axis=0, ddof=1).mean())
    return between * (1.0 / n_final - 1.0 / m)


def standard_error(entry, key="mse"):
    """The standard error of an entry's score: from its per-fold scores ``{key}_folds`` (std / sqrt(K)), or its
    ``{key}_se`` (a hold-out score's, over the held-out frames); None when the entry has neither."""
    folds = entry.get(f"{key}_folds")
    if folds is not None and len(folds) > 1:
        return float(np.std(folds, ddof=1) / np.sqrt(len(folds)))
    se = entry.get(f"{key}_se")
    return float(se) if se is not None and np.isfinite(se) else None


def grid_edges(table, entry):
    """The hyperparameters (``sigma``, ``lam``) of ``entry`` that sit on an edge of the table's grid, as
    ["lam at the upper edge", ...]; a hyperparameter with one value in the table is not searched and has none."""
    edges = []
    for name in ("sigma", "lam"):
        values = sorted({float(e[name]) for e in table})
        if len(values) > 1 and float(entry[name]) in (values[0], values[-1]):
            edges.append(f"{name} at the {'lower' if float(entry[name]) == values[0] else 'upper'} edge")
    return edges


#: How many times a hold-out search extends its grid past an edge that its winner sits on.
MAX_EXTENSIONS = 3
#: The range an extended grid stays in: sigma (1/nm) and relative lambda.
EXTENSION_BOUNDS = {"sigma": (0.25, 256.0), "lam": (1e-4, 1e4)}


def extension_candidates(table, winner):
    """The (sigma, lam) candidates one step past each grid edge that ``winner`` sits on (:func:`grid_edges`): the
    edge value times (upper) or over (lower) the grid's outermost ratio on that side, with the winner's other
    hyperparameter; none past :data:`EXTENSION_BOUNDS` or already in ``table``."""
    out = []
    for name in ("sigma", "lam"):
        values = sorted({float(e[name]) for e in table})
        if len(values) < 2 or float(winner[name]) not in (values[0], values[-1]):
            continue
        upper = float(winner[name]) == values[-1]
        step = values[-1] / values[-2] if upper else values[1] / values[0]
        new = values[-1] * step if upper else values[0] / step
        lo, hi = EXTENSION_BOUNDS[name]
        if not lo <= new <= hi:
            continue
        cand = dict(sigma=float(winner["sigma"]), lam=float(winner["lam"]))
        cand[name] = float(new)
        if not any(np.isclose(e["sigma"], cand["sigma"]) and np.isclose(e["lam"], cand["lam"]) for e in table):
            out.append((cand["sigma"], cand["lam"]))
    return out


def decide(table, key="mse"):
    """The winner of a score table (dicts with ``sigma``, ``lam`` and ``key``) and the record of the choice.

    The lowest score wins (the first of equal ones). Every candidate whose score is within one standard error
    (:func:`standard_error`) of the lowest ties with it, and the selection is *decisive* when the lowest score
    stands alone; a tie is reported, not broken by smoothness: taking the smoothest of the tied candidates (the
    one-standard-error rule) over-smoothed the shipped alanine dipeptide, whose nine hold-out candidates all
    tie (NOTES.md, "Priors and selection"). Without a standard error (tables from older fits), whether the
    selection was decisive is unknown (None).

    Returns (winner, record): record is a JSON-ready dict with ``rule``, ``decisive``, ``n_candidates``,
    ``n_tied`` (candidates within one standard error, the lowest included), ``standard_error``, ``lowest`` and
    ``winner`` (sigma, lam, score), ``edges`` (:func:`grid_edges` of the winner) and, when the search extended
    its grid (:func:`extension_candidates`), ``extended`` (the added candidates). It is what MODEL.json keeps
    as ``selection``; :func:`selection_note` says it in one line.
    """
    lowest = min(table, key=lambda entry: entry[key])
    se = standard_error(lowest, key)
    if se is None:
        winner, tied = lowest, [lowest]
    else:
        tied = [e for e in table if e[key] <= lowest[key] + se]
        winner = lowest
    point = lambda e: dict(sigma=float(e["sigma"]), lam=float(e["lam"]), score=float(e[key]))  # noqa: E731
    extended = [dict(sigma=float(e["sigma"]), lam=float(e["lam"])) for e in table if e.get("extension")]
    record = dict(rule="lowest score" if se is None else "lowest score; within one standard error of it: tied",
                  decisive=None if se is None else len(tied) == 1, n_candidates=len(table),
                  n_tied=len(tied), standard_error=se, lowest=point(lowest), winner=point(winner),
                  edges=grid_edges(table, winner), **({"extended": extended} if extended else {}))
    return winner, record


def best(table, key="mse"):
    """The winning entry of a score table (dicts): :func:`decide`'s winner (the lowest ``key``, the first of
    equal ones, when the entries carry no standard error)."""
    return decide(table, key)[0]


def selection_note(records):
    """One line on a selection that was not decisive or chose an edge of its grid, or None when it was clean.
    ``records`` is a :func:`decide` record or a dict of them by name (e.g. the two layers)."""
    if not records:
        return None
    if "rule" in records:
        records = {"": records}
    parts = []
    for name, rec in records.items():
        what = []
        if rec.get("decisive") is False:
            what.append(f"not decisive: {rec['n_tied']} of {rec['n_candidates']} candidates within one standard "
                        f"error of the best, took the best (sigma {rec['winner']['sigma']:g}, lam "
                        f"{rec['winner']['lam']:g})")
        if rec.get("edges"):
            what.append(", ".join(rec["edges"]) + " of the grid")
        if what:
            parts.append((f"{name}: " if name else "") + "; ".join(what))
    return "selection " + "; ".join(parts) + " (extend the grid to search further)" * any(
        rec.get("edges") for rec in records.values()) if parts else None


# ------------------------------------------------------------------------------------------- hold-out search
def holdout_split(n_frames, holdout, max_train, seed):
    """(held-out, training) frame indices, each sorted: a random ``holdout`` fraction (at least 1, at most 20,000
    frames) held out, and up to ``max_train`` of the others for training."""
    order = np.random.default_rng([seed, 0x5E1]).permutation(n_frames)
    n_val = int(min(20_000, max(1, round(holdout * n_frames))))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:n_val + max_train])
    if len(train) < 2:
        raise CgdmlError(f"{n_frames} frames are too few for a hold-out selection")
    return val, train


def holdout_scores(pred, target, score, projection=None):
    """The scores of one candidate's held-out forces ``pred`` against ``target`` (n, n_beads, 3): ``mse`` by
    ``score``, and both ``mse_force`` and ``mse_dihedral`` (NaN without a ``projection``)."""
    mse_force, se_force = _mse_se(pred, target)
    mse_dihedral, se_dihedral = _mse_se(pred, target, projection) if projection is not None else (np.nan, np.nan)
    dihedral = score == "dihedral"
    return dict(mse=mse_dihedral if dihedral else mse_force, mse_se=se_dihedral if dihedral else se_force,
                mse_force=mse_force, mse_dihedral=mse_dihedral)


def _mse_se(pred, target, projection=None):
    """(:func:`mse`, its standard error over the frames: the std of the per-frame mean squared error / sqrt(n))."""
    err = np.asarray(pred, dtype=np.float64) - target
    if projection is not None:
        err = project_forces(err, projection)
    per_frame = (err ** 2).reshape(len(err), -1).mean(1)
    se = per_frame.std(ddof=1) / np.sqrt(len(per_frame)) if len(per_frame) > 1 else np.nan
    return float(per_frame.mean()), float(se)


def holdout_search(candidates, evaluate, cache=None):
    """Score each (sigma, lam) of ``candidates``, in order: ``evaluate(sigma, lam)`` returns the entry (a dict with
    ``mse``). A :class:`cgdml._io.WorkCache` ``cache`` keeps the entries, so an interrupted search resumes where
    it stopped (entries found there are not evaluated again). Returns the score table."""
    table = []
    for sigma, lam in candidates:
        key = f"select_s{sigma:g}_l{lam:g}"
        cached = cache.get(key) if cache is not None else None
        if cached is not None:  # scored before an interruption
            table.append({k: v.item() for k, v in cached.items()})
            continue
        table.append(dict(sigma=float(sigma), lam=float(lam), **evaluate(sigma, lam)))
        if cache is not None:
            cache.put(key, **{k: np.array(v) for k, v in table[-1].items()})
    return table


# ------------------------------------------------------------------------------ K-fold (the two-layer scheme)
def fold_sets(strata, folds, n_folds, n_held, n_mean, rng_of_fold, final):
    """For each fold k < ``n_folds`` of ``folds`` (n_frames,): the frames its models predict on, a dict of index
    arrays: ``held`` (at most ``n_held`` frames of fold k, scored), ``mean`` (a stratified set of at most
    ``n_mean`` frames outside it, the CV mean-force set) and ``final`` (the final mean-force set).
    ``rng_of_fold(k)`` is the random generator of fold k."""
    sets = {}
    for k in range(n_folds):
        rng = rng_of_fold(k)
        test = np.flatnonzero(folds == k)
        pool = np.flatnonzero(folds != k)
        if len(test) == 0 or len(pool) < 2:
            raise CgdmlError(f"cross-validation fold {k + 1} of {n_folds} holds {len(test)} of the {len(folds)} "
                             "frames; use fewer folds (n_folds) or more frames")
        sets[k] = dict(held=np.sort(rng.choice(test, size=min(n_held, len(test)), replace=False)),
                       mean=np.sort(stratified_batch(strata, min(n_mean, len(pool)), rng, pool=pool)),
                       final=final)
    return sets


def cross_validate_two_layer(layer1_grid, layer2_grid, targets, projections, *, n_models, cv_models,
                             train_layer1, train_layer2):
    """K-fold choice of (sigma1, lam1), then (sigma2, lam2), of the two-layer scheme (docs/method.md §2.6).

    Layer 1: ``cv_models`` sub-models per candidate and fold; their average's held-out score is extrapolated to
    the final ensemble of ``n_models`` (:func:`ensemble_size_correction`). Layer 2: the best layer 1 grows to
    n_models / n_folds sub-models per fold; each (sigma2, lam2) is trained on the fold's mean set labelled by that
    fold's ensemble and scored on the held-out fold. The fold ensembles together are the final layer 1.

    ``targets[k]`` are the held-out labels of fold k and ``projections[k]`` its score projection (or None). The
    training is the caller's: ``train_layer1(sigma1, lam1, n_per_fold, stage)`` returns, per fold, the list of its
    sub-models' predictions (dicts with ``held`` and ``mean``); ``train_layer2(sigma1, lam1, n_per_fold, ensembles,
    candidates)`` returns {(sigma2, lam2, fold): held-out predictions}. Returns (score table, final layer-1
    predictions per fold).
    """
    n_folds = len(targets)
    table = []
    for s1, l1 in itertools.product(layer1_grid[0], layer1_grid[1]):
        preds = train_layer1(s1, l1, cv_models, "CV layer 1")
        fold_scores, fold_raw = [], []
        for k in range(n_folds):
            held = np.array([p["held"] for p in preds[k]], dtype=np.float64)
            raw = mse(held.mean(0), targets[k], projections[k])
            fold_raw.append(raw)
            fold_scores.append(raw + ensemble_size_correction(held, n_models, projections[k]))
        table.append(dict(layer=1, sigma=float(s1), lam=float(l1), mse=float(np.mean(fold_scores)),
                          mse_folds=fold_scores, mse_cv_ensemble=float(np.mean(fold_raw))))
    best1 = best(table)
    s1, l1 = best1["sigma"], best1["lam"]
    per_fold = max(cv_models, -(-n_models // n_folds))
    final = train_layer1(s1, l1, per_fold, "layer 1")
    candidates = list(itertools.product(layer2_grid[0], layer2_grid[1]))
    held = train_layer2(s1, l1, per_fold, final, candidates)
    for s2, l2 in candidates:
        fold_scores = [mse(held[s2, l2, k], targets[k], projections[k]) for k in range(n_folds)]
        table.append(dict(layer=2, sigma=float(s2), lam=float(l2), mse=float(np.mean(fold_scores)),
                          mse_folds=fold_scores, sigma1=s1, lam1=l1, models_per_fold=per_fold))
    return table, final


# ------------------------------------------------------------------------- the landscape judge of the residual
#: Candidate weights of the learned (GDML) force on top of the prior: the fit as it is, shrunk toward the prior,
#: and the prior alone (docs/method.md §2.6, the residual weight).
JUDGE_WEIGHTS = (1.0, 0.3, 0.1, 0.0)
#: The judge's short simulation of each candidate: :func:`cgdml.simulate.model_run.simulate_model` arguments
#: (50 replicas x 60 ps with the default 3 fs multiple-time-step BAOAB, started from training frames; the GDML
#: force in float64, as when the judge was calibrated, so that fits do not change with the simulation default).
JUDGE_RUN = dict(replicas=50, steps=20000, burn_in=4000, save_every=50, precision="float64")
#: The judge is decisive when the runner-up's score exceeds the winner's by more than this many of the winner's
#: bootstrap standard deviations.
JUDGE_MARGIN = 2.0


def landscape_score(report):
    """The judge's score of a :func:`cgdml.fes.compare.compare_landscapes` report against the training frames:
    the mean JS divergence (nats) over every landscape it scored, headline and extra (each residue's (phi, psi);
    every soft torsion, consecutive pair, bond angle and the end-to-end distance), and the bootstrap standard
    deviation of the headline mean (None without one)."""
    scored = [p["metrics"]["js"] for p in report["panels"] if "metrics" in p]
    boot = (report.get("mean") or {}).get("bootstrap")
    return float(np.mean(scored)), (float(boot["js"]["std"]) if boot else None)


def run_rank(row):
    """Sort key of a :func:`short_run_score` row: a run that lost replicas after every run that lost none, then the
    lower mean landscape JS first."""
    return row["stopped"] > 0, row["js"]


def clearly_better(best, other):
    """Whether the short run ``best`` beats ``other`` decisively: ``other`` lost replicas, or its JS is more than
    :data:`JUDGE_MARGIN` of ``best``'s bootstrap standard deviation above ``best``'s."""
    return bool(other["stopped"] > 0 or other["js"] - best["js"] > JUDGE_MARGIN * best["js_std"])


def judge_residual_weight(model, dataset, weights=JUDGE_WEIGHTS, run=None, seed=0, return_frames=False):
    """The weight of the learned force on top of the prior, judged by the landscapes of short simulations.

    Held-out force errors rank candidates by their force error, and on a coarse map the instantaneous forces are
    mostly noise: a learned residual whose held-out score ties with zero can still move the soft dihedrals and
    angles by kT, because their mean forces are a few kJ/mol/nm. The prior's Boltzmann-inverted terms come from
    the frames' positions, which carry those distributions with far less noise. So each candidate ``weight`` x
    the learned force + the prior is simulated (``run``, default :data:`JUDGE_RUN`, the same seed for every
    candidate, from ``model``'s training sample) and scored against the training frames of ``dataset`` by
    :func:`landscape_score`; the lowest score wins. A candidate whose simulation lost replicas (blow-ups) loses
    to one that lost none.

    Returns (weight, record): record is JSON-ready, with ``rule``, ``winner``, ``decisive`` (the runner-up is more
    than :data:`JUDGE_MARGIN` bootstrap standard deviations worse; None without a bootstrap), ``candidates``
    (weight, js, js_std, stopped replicas, frames) and ``run``; with ``return_frames`` also the winner's frames
    (n, n_beads, 3) nm as a third item.
    """
    import copy

    run = dict(JUDGE_RUN if run is None else run)
    rows, frames = [], {}
    for weight in weights:
        candidate = copy.copy(model)
        candidate.gdml = model.gdml.scaled(weight)
        row, frames[float(weight)] = short_run_score(candidate, dataset, run, seed)
        rows.append(dict(weight=float(weight), **row))
    ranked = sorted(rows, key=run_rank)
    best = ranked[0]
    decisive = None
    if len(ranked) > 1 and best["js_std"] is not None and np.isfinite(best["js"]):
        decisive = clearly_better(best, ranked[1])
    record = dict(rule="lowest mean landscape JS of a short simulation against the training frames "
                       "(docs/method.md §2.6, the residual weight)", winner=best["weight"], decisive=decisive,
                  margin=JUDGE_MARGIN, candidates=rows, run=run)
    if return_frames:
        return best["weight"], record, frames[best["weight"]]
    return best["weight"], record


def short_run_score(model, dataset, run=None, seed=0):
    """Simulate ``model`` briefly (``run``: :func:`cgdml.simulate.model_run.simulate_model` arguments, default
    :data:`JUDGE_RUN`; guard off, from the model's training sample) and score its landscapes against the frames
    of ``dataset`` (:func:`landscape_score`). Returns (row, frames): row {js, js_std, stopped (replicas lost),
    frames (count)}, js inf when fewer than 2 frames were written; frames (n, n_beads, 3) nm."""
    from .fes.compare import compare_landscapes
    from .simulate.model_run import simulate_model

    sim = simulate_model(model, seed=seed, guard="off", progress=False, **dict(JUDGE_RUN if run is None else run))
    frames = sim.coordinates()
    stopped = int(np.sum(~np.asarray(sim.result.alive)))
    if len(frames) < 2:
        return dict(js=float("inf"), js_std=None, stopped=stopped, frames=0), frames
    with warnings.catch_warnings():   # frames outside the training range are the judge's business, not news
        warnings.simplefilter("ignore", UserWarning)
        report = compare_landscapes(frames, dataset, n_boot=50, seed=seed)
    js, std = landscape_score(report)
    return dict(js=js, js_std=std, stopped=stopped, frames=int(len(frames))), frames


def judge_summary(record):
    """What ``python -m cgdml.fit`` prints of a judge's record: the weight and its candidates' scores, and the
    :func:`judge_note` when it was not decisive; no lines for a given weight or none."""
    if not record or not record.get("candidates"):
        return []
    scores = ", ".join(f"{r['weight']:g}: {r['js']:.3g}" for r in record["candidates"])
    lines = [f"residual weight {record['winner']:g} of the learned force on top of the prior (landscape JS against "
             f"the training frames: {scores})"]
    return lines + ([judge_note(record)] if judge_note(record) else [])


def judge_note(record):
    """One line on a judge that was not decisive, or None."""
    if not record or record.get("decisive") is not False:
        return None
    scores = ", ".join(f"{r['weight']:g}: {r['js']:.3g}" for r in record["candidates"])
    return (f"residual weight not decisive: the landscapes of weights {scores} (JS, nats) are within "
            f"{record['margin']:g} bootstrap standard deviations; took {record['winner']:g}")


def refinement_summary(record):
    """What ``python -m cgdml.fit`` prints of a pair-distance refinement record (:func:`cgdml.refine.refine_pairs`):
    one line (none without iterations)."""
    if not record or len(record.get("iterations", [])) < 2:
        return []
    scores = ", ".join(f"{r['iteration']}: {r['js']:.3g}" for r in record["iterations"])
    kept = record["kept"]
    return [f"pair-distance correction of {record['pairs']} bead pairs: "
            + (f"iteration {kept} kept" if kept else "none kept") + f" (landscape JS against the training frames by "
            f"iteration: {scores})" + (" (not decisive)" if record.get("decisive") is False else "")]


def judged_summary(info):
    """The lines ``python -m cgdml.fit`` prints of a model's ``info`` about its choices by short runs: the
    residual weight (:func:`judge_summary`) and the pair-distance refinement (:func:`refinement_summary`)."""
    return judge_summary(info.get("residual_weight")) + refinement_summary(info.get("pair_correction"))
