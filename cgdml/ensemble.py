"""The two-layer GDML scheme (Wang, Chmiela, Müller, Noé, Clementi, JCP 152, 194106, 2020; docs/method.md §2.6).

1. Fit the prior and subtract its forces from the labels.
2. Stratify the frames (phi/psi grid for peptides, k-means in descriptor space otherwise).
3. Layer 1: many small GDML models, each on a batch drawn uniformly over the occupied strata.
4. The mean-force set: stratified configurations labelled with the average layer-1 prediction.
5. Layer 2: one GDML model trained on the mean-force set is the final force field.

Hyperparameters are chosen by K-fold cross-validation over frames (folds balanced within strata). The
score is the mean squared error against held-out *instantaneous* forces; it differs from the error
against the unknown mean force only by the constant noise variance, so it ranks candidates correctly.
By default (``cv_score="dihedral"``, chains of >= 4 beads) the errors are first projected on the chain
dihedrals: b . F with b = grad(phi) / |grad(phi)|^2 is the generalised force along phi, whose conditional mean
is the slope of the free energy along phi. The projection is a fixed linear map of each frame's forces, so the
argument above still holds; it scores the soft coordinates a landscape is measured on, where the plain force
error is dominated by the stiff bonds and angles (on cgnet the plain score picks sigma1 = 8 and a landscape
twice the noise floor, the projected one sigma1 = 2 and a markedly better one; see NOTES).
Layer 1 (sigma1, lam1) is scored through the average of its sub-models, extrapolated from the few
cross-validation models to the final ensemble size; layer 2 (sigma2, lam2) through the layer-2 model
trained on that average. Every expensive unit of work is cached in ``workdir``, so
an interrupted fit resumes where it stopped. Sub-model trainings run one after another, in local joblib
processes (``n_jobs``) or on a Dask cluster (``scheduler``; see :mod:`cgdml.distributed`), where the data
arrays are scattered once and each task carries only its batch indices.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
import warnings
from dataclasses import dataclass

import numpy as np

from sklearn.base import BaseEstimator

from ._io import CgdmlError, WorkCache
from .distributed import TaskRunner
from .gdml import GDML
from .geometry import dihedral_projection, project_forces, resolve_cv_score
from .model import CGModel, fit_record
from .prior import HarmonicPrior
from .sampling import make_strata, stratified_batch, stratified_folds


def _fit_and_predict(coords, labels, train_idx, predict_on, sigma, lam, quads, train_labels=None):
    """Train one GDML on frames ``train_idx`` and return its forces (float32) on each index array in ``predict_on``.

    The labels are ``labels[train_idx]``, or ``train_labels`` when given (then ``labels`` is unused); ``quads``
    (n_quads, 4) are the descriptor's dihedrals.
    """
    model = GDML(sigma=sigma, lam=lam, relative_lam=True, dihedrals=quads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an automatic lambda increase is recorded in lam_, not shouted
        model.fit(coords[train_idx], labels[train_idx] if train_labels is None else train_labels)
    return [model.predict_forces(coords[idx]).astype(np.float32) for idx in predict_on]


def _mse(pred, target, projection=None):
    """Mean squared force error, (kJ/mol/nm)^2, or of its dihedral components, (kJ/mol/rad)^2."""
    err = np.asarray(pred, dtype=np.float64) - target
    if projection is not None:
        err = project_forces(err, projection)
    return float(np.mean(err ** 2))


def _ensemble_size_correction(preds, n_final, projection=None):
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


@dataclass
class _Work:
    """What the stages of one fit share: the task runner, the checkpoint cache, the data arrays (coords,
    prior-subtracted labels) and their handles for tasks (the arrays locally, futures on Dask)."""
    runner: TaskRunner
    cache: object
    coords: np.ndarray
    labels: np.ndarray
    coords_h: object
    labels_h: object
    bar: object = None          # the overall progress bar of the sub-model trainings
    counted: set = None         # work units the bar's total already accounts for

    def account(self, key, cached):
        """Count ``key`` once on the bar: a cached unit leaves the total (only trainings are progress)."""
        if key in self.counted:
            return
        self.counted.add(key)
        if cached and self.bar is not None:
            self.bar.total -= 1
            self.bar.refresh()

    def stage(self, name):
        if self.bar is not None:
            self.bar.set_description(f"fit: {name}", refresh=True)


class TwoLayerGDML(BaseEstimator):
    """Two-layer GDML force matching, as an estimator: ``TwoLayerGDML(...).fit(dataset).model_`` is a CGModel.

    This is the force-matching stage; :func:`cgdml.pipeline.fit_cg_model` runs it and then basin balancing,
    exactly as ``python -m cgdml.fit`` does.

    Parameters
    ----------
    n_models, batch_size : layer-1 sub-model count and frames per sub-model.
    mean_set_size : configurations in the mean-force set (the layer-2 training set).
    sigma1, sigma2 : candidate kernel widths (descriptor units, 1/nm) for layers 1 and 2.
    lam1, lam2 : candidate regularisations, relative to the mean kernel diagonal (noise/signal ratio).
    n_folds : cross-validation folds; cv_models sub-models per candidate and fold; cv_mean_set_size the
        layer-2 training size during CV; cv_holdout held-out frames scored per fold.
    strata : "auto" | "phi-psi" | "backbone-kmeans" | "kmeans" (:func:`cgdml.sampling.make_strata`); grid_bins
        (phi/psi grid) or n_strata (k-means).
    cv_score : "auto" (``dihedral`` when the CG topology has a dihedral, else ``force``) | "dihedral" (held-out
        force errors projected on the backbone (phi, psi) of every residue, or on the graph's proper dihedrals
        without a backbone) | "force" (plain held-out force MSE).
    chiral : add the sines of the topology's proper dihedrals and impropers to the descriptor (they tell a
        configuration from its mirror image).
    n_jobs : parallel layer-1 trainings in local joblib processes (one thread each; 1: in this process).
    scheduler : run the layer-1 and CV trainings on Dask instead: ``tcp://HOST:PORT``, a scheduler-file path
        or a ``distributed.Client``. Results equal those of a local run with n_jobs > 1, bit for bit.
    workdir : checkpoint directory for resuming.
    """

    def __init__(self, n_models=12, batch_size=2000, mean_set_size=2000, sigma1=(2.0, 4.0, 8.0),
                 lam1=(0.3, 1.0, 3.0), sigma2=(1.0, 2.0, 4.0), lam2=(1e-3, 1e-2, 1e-1), n_folds=2, cv_models=2,
                 cv_mean_set_size=600, cv_holdout=4000, strata="auto", grid_bins=12, n_strata=50, cv_score="auto",
                 chiral=True, prior_repulsion=True, prior_dihedrals="auto", n_jobs=1, seed=0, workdir=None,
                 progress=True, scheduler=None):
        self.n_models = n_models
        self.batch_size = batch_size
        self.mean_set_size = mean_set_size
        self.sigma1 = sigma1
        self.lam1 = lam1
        self.sigma2 = sigma2
        self.lam2 = lam2
        self.n_folds = n_folds
        self.cv_models = cv_models
        self.cv_mean_set_size = cv_mean_set_size
        self.cv_holdout = cv_holdout
        self.strata = strata
        self.grid_bins = grid_bins
        self.n_strata = n_strata
        self.cv_score = cv_score
        self.chiral = chiral
        self.prior_repulsion = prior_repulsion
        self.prior_dihedrals = prior_dihedrals
        self.n_jobs = n_jobs
        self.seed = seed
        self.workdir = workdir
        self.progress = progress
        self.scheduler = scheduler

    # ------------------------------------------------------------------ helpers
    def _rng(self, *stream):
        return np.random.default_rng([self.seed, *stream])

    def _runs_cv(self):
        """Cross-validation runs when any hyperparameter has several candidates and there are >= 2 folds."""
        grids = (self.sigma1, self.lam1, self.sigma2, self.lam2)
        return self.n_folds >= 2 and any(len(np.atleast_1d(g)) > 1 for g in grids)

    def _check(self, dataset):
        n = dataset.n_frames
        if min(self.n_models, self.batch_size, self.mean_set_size, self.cv_models, self.n_folds) < 1:
            raise CgdmlError("n_models, batch_size, mean_set_size, cv_models and folds must all be >= 1")
        grids = [name for name in ("sigma1", "lam1", "sigma2", "lam2") if len(np.atleast_1d(getattr(self, name))) > 1]
        if grids and self.n_folds < 2:
            raise CgdmlError(f"folds (--folds) must be >= 2 to cross-validate the candidates of {', '.join(grids)}, "
                             f"got {self.n_folds}; give one value of each to fit without cross-validation")
        pool = n * (self.n_folds - 1) // self.n_folds if self._runs_cv() else n
        self.batch_size_ = min(self.batch_size, max(1, pool // 2))
        if self.batch_size_ < self.batch_size:
            warnings.warn(f"batch size {self.batch_size} lowered to {self.batch_size_}, half of the {pool} frames a "
                          "sub-model can draw from, so that the sub-models differ", stacklevel=3)
        topo = dataset.cg_topology
        self.cv_score_, self.cv_quads_ = resolve_cv_score(self.cv_score, topo)
        self.quads_ = topo.chirality_quads if self.chiral else np.zeros((0, 4), dtype=np.int64)
        for name in ("sigma1", "lam1", "sigma2", "lam2"):
            values = np.atleast_1d(getattr(self, name))
            if len(values) == 0 or not (values > 0).all():
                raise CgdmlError(f"{name} must be one or more positive numbers, got {list(values)}")

    def _n_trainings(self):
        """GDML trainings of the cross-validation and layer 1, known before they start (the overall progress
        bar's total; work found in the checkpoints is taken off it as the stages meet it)."""
        n_grid = lambda *names: int(np.prod([len(np.atleast_1d(getattr(self, n))) for n in names]))  # noqa: E731
        if not self._runs_cv():
            return self.n_models
        per_fold = max(self.cv_models, -(-self.n_models // self.n_folds))
        return (n_grid("sigma1", "lam1") * self.n_folds * self.cv_models + self.n_folds * (per_fold - self.cv_models)
                + n_grid("sigma2", "lam2") * self.n_folds)

    # ------------------------------------------------------------------ stages
    def _layer1(self, specs, work, strata, folds, sets, desc):
        """Train the sub-models ``specs`` = [(sigma1, lam1, fold, i)] not yet in ``cache``; return their entries.

        A model of fold k draws its batch from the frames outside fold k (fold -1: from all frames) and
        predicts on ``sets[k]``, a dict of named index arrays (held-out frames, mean sets).
        """
        tasks, keys = [], []
        n_beads = work.coords.shape[1]
        expect = {k: {name: (len(idx), n_beads, 3) for name, idx in sets[k].items()} for k in sets}
        work.stage(desc)
        for s1, l1, k, i in specs:
            key = f"l1_s{s1:g}_l{l1:g}_f{k}_m{i}"
            cached = work.cache.get(key, expect[k]) is not None
            work.account(key, cached)
            if not cached:
                pool = np.flatnonzero(folds != k)
                batch = stratified_batch(strata, min(self.batch_size_, len(pool)), self._rng(2, k + 1, i), pool=pool)
                tasks.append((_fit_and_predict, (work.coords_h, work.labels_h, batch, list(sets[k].values()), s1, l1,
                                                 self.quads_)))
                keys.append((key, k))
        for j, preds in work.runner.run(tasks, desc, bar=work.bar):
            key, k = keys[j]
            work.cache.put(key, **{name: p.astype(np.float32) for name, p in zip(sets[k], preds)})
        return [work.cache.get(f"l1_s{s1:g}_l{l1:g}_f{k}_m{i}") for s1, l1, k, i in specs]

    def _cross_validate(self, work, strata, folds):
        """Choose (sigma1, lam1), then (sigma2, lam2); return the CV table and the final layer-1 entries.

        Layer 1: ``cv_models`` sub-models per candidate and fold, their average scored on the held-out
        fold and extrapolated to the final ensemble size. Layer 2: the best layer 1 grows to
        n_models / n_folds sub-models per fold; each layer-2 candidate is trained on the fold's mean set
        labelled by that fold's ensemble and scored on the held-out fold. The fold ensembles together
        are the final layer 1, so no sub-model is trained twice.
        """
        labels, cache = work.labels, work.cache
        sets = {}
        for k in range(self.n_folds):
            rng = self._rng(1, k)
            test = np.flatnonzero(folds == k)
            pool = np.flatnonzero(folds != k)
            if len(test) == 0 or len(pool) < 2:
                raise CgdmlError(f"cross-validation fold {k + 1} of {self.n_folds} holds {len(test)} of the "
                                 f"{len(folds)} frames; use fewer folds (--folds) or more frames")
            sets[k] = dict(held=np.sort(rng.choice(test, size=min(self.cv_holdout, len(test)), replace=False)),
                           mean=np.sort(stratified_batch(strata, min(self.cv_mean_set_size, len(pool)), rng, pool=pool)),
                           final=self.mean_set_index_)
        dihedral_score = self.cv_score_ == "dihedral"
        project = {k: dihedral_projection(work.coords[sets[k]["held"]], self.cv_quads_) if dihedral_score else None
                   for k in range(self.n_folds)}
        scores = []
        for s1, l1 in itertools.product(np.atleast_1d(self.sigma1), np.atleast_1d(self.lam1)):
            specs = [(s1, l1, k, i) for k in range(self.n_folds) for i in range(self.cv_models)]
            entries = self._layer1(specs, work, strata, folds, sets, "CV layer 1")
            fold_scores, fold_raw = [], []
            for k in range(self.n_folds):
                held_preds = np.array([e["held"] for e, sp in zip(entries, specs) if sp[2] == k], dtype=np.float64)
                raw = _mse(held_preds.mean(0), labels[sets[k]["held"]], project[k])
                fold_raw.append(raw)
                fold_scores.append(raw + _ensemble_size_correction(held_preds, self.n_models, project[k]))
            scores.append(dict(layer=1, sigma=float(s1), lam=float(l1), mse=float(np.mean(fold_scores)),
                               mse_folds=fold_scores, mse_cv_ensemble=float(np.mean(fold_raw))))
        best1 = min(scores, key=lambda s: s["mse"])
        s1, l1 = best1["sigma"], best1["lam"]
        per_fold = max(self.cv_models, -(-self.n_models // self.n_folds))
        specs = [(s1, l1, k, i) for k in range(self.n_folds) for i in range(per_fold)]
        final_entries = self._layer1(specs, work, strata, folds, sets, "layer 1")
        tasks, keys = [], []
        for s2, l2 in itertools.product(np.atleast_1d(self.sigma2), np.atleast_1d(self.lam2)):
            for k in range(self.n_folds):
                key = f"l2_s{s1:g}_l{l1:g}_n{per_fold}_s{s2:g}_l{l2:g}_f{k}"
                keys.append((key, s2, l2, k))
                cached = cache.get(key, {"held": (len(sets[k]["held"]), work.coords.shape[1], 3)}) is not None
                work.account(key, cached)
                if not cached:
                    mean_labels = np.mean([e["mean"] for e, sp in zip(final_entries, specs) if sp[2] == k],
                                          axis=0).astype(np.float64)
                    tasks.append((key, (_fit_and_predict, (work.coords_h, None, sets[k]["mean"], [sets[k]["held"]],
                                                           s2, l2, self.quads_, mean_labels))))
        work.stage("CV layer 2")
        for j, (p_held,) in work.runner.run([t for _, t in tasks], "CV layer 2", bar=work.bar):
            cache.put(tasks[j][0], held=p_held.astype(np.float32))
        for s2, l2 in itertools.product(np.atleast_1d(self.sigma2), np.atleast_1d(self.lam2)):
            fold_scores = [_mse(cache.get(key)["held"], labels[sets[k]["held"]], project[k])
                           for key, a, b, k in keys if (a, b) == (s2, l2)]
            scores.append(dict(layer=2, sigma=float(s2), lam=float(l2), mse=float(np.mean(fold_scores)),
                               mse_folds=fold_scores, sigma1=s1, lam1=l1, models_per_fold=per_fold))
        return scores, final_entries

    def fit(self, dataset):
        """Fit to a :class:`cgdml.data.CGDataset`. Sets ``model_`` (a CGModel) and the CV table ``cv_scores_``."""
        self._check(dataset)
        t0 = time.perf_counter()
        timings = {}
        coords = dataset.coords
        self.prior_ = HarmonicPrior(repulsion=self.prior_repulsion, dihedrals=self.prior_dihedrals).fit(
            coords, dataset.temperature, dataset.cg_topology)
        labels = self.prior_.residual_forces(coords, dataset.forces)
        self.strata_, self.strata_method_ = make_strata(dataset, self.strata, self.grid_bins, self.n_strata, self.seed)
        folds = stratified_folds(self.strata_, self.n_folds, self._rng(0))
        self.mean_set_index_ = np.sort(stratified_batch(self.strata_, min(self.mean_set_size, dataset.n_frames),
                                                        self._rng(3)))
        cache = WorkCache(self.workdir, self._fingerprint(dataset))
        timings["prior_and_strata_s"] = time.perf_counter() - t0

        t = time.perf_counter()
        runs_cv = self._runs_cv()
        from tqdm import tqdm

        bar = tqdm(total=self._n_trainings(), desc="fit", unit="model", disable=not self.progress, smoothing=0.1)
        with bar, TaskRunner(self.n_jobs, self.scheduler, self.progress) as runner:
            work = _Work(runner, cache, coords, labels, runner.share(coords), runner.share(labels), bar, set())
            if not runs_cv:
                s1, l1 = float(np.atleast_1d(self.sigma1)[0]), float(np.atleast_1d(self.lam1)[0])
                self.cv_scores_ = []
                all_frames = np.full(dataset.n_frames, -2)  # fold -1 draws from every frame
                entries = self._layer1([(s1, l1, -1, i) for i in range(self.n_models)], work, self.strata_,
                                       all_frames, {-1: dict(final=self.mean_set_index_)}, "layer 1")
            else:
                self.cv_scores_, entries = self._cross_validate(work, self.strata_, folds)
            self.execution_ = runner.describe()
        if not runs_cv:
            s2, l2 = float(np.atleast_1d(self.sigma2)[0]), float(np.atleast_1d(self.lam2)[0])
        else:
            best1 = min((s for s in self.cv_scores_ if s["layer"] == 1), key=lambda s: s["mse"])
            best2 = min((s for s in self.cv_scores_ if s["layer"] == 2), key=lambda s: s["mse"])
            s1, l1, s2, l2 = best1["sigma"], best1["lam"], best2["sigma"], best2["lam"]
        self.sigma1_, self.lam1_, self.sigma2_, self.lam2_ = s1, l1, s2, l2
        preds = np.array([e["final"] for e in entries], dtype=np.float64)
        self.n_layer1_models_ = len(preds)
        self.mean_set_labels_ = preds.mean(0)
        self.layer1_spread_ = float(preds.std(0).mean()) if len(preds) > 1 else float("nan")
        timings["cross_validation_and_layer1_s"] = time.perf_counter() - t

        t = time.perf_counter()
        gdml = GDML(sigma=s2, lam=l2, relative_lam=True, dihedrals=self.quads_)
        gdml.fit(coords[self.mean_set_index_], self.mean_set_labels_)
        timings["layer2_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        self.timings_ = timings
        info = fit_record("two-layer GDML", self._recorded_params(),
                          dict(sigma1=s1, lam1=l1, sigma2=s2, lam2=l2, lam2_absolute=float(gdml.lam_),
                               n_layer1_models=len(preds), batch_size=self.batch_size_),
                          dataset, timings, cv_score=self.cv_score_, cv_scores=self.cv_scores_,
                          strata=dict(method=self.strata_method_, n_occupied=int(self.strata_.max() + 1)),
                          execution=self.execution_)
        self.model_ = CGModel.from_fit(gdml.model_, self.prior_, dataset, info, seed=self.seed)
        return self

    _EXECUTION = ("n_jobs", "workdir", "progress", "scheduler")  # where and how it runs, not what it computes

    def _recorded_params(self):
        """The hyperparameters that shape the result, as plain JSON-ready values."""
        return {k: (list(v) if isinstance(v, (tuple, list, np.ndarray)) else v)
                for k, v in self.get_params().items() if k not in self._EXECUTION}

    def _fingerprint(self, dataset):
        """Hash of the data and of the settings a checkpointed unit of work depends on (the grids and the
        sub-model count are not among them: their work units are keyed by name)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(dataset.coords, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(dataset.forces, dtype=np.float32).tobytes())
        h.update(json.dumps({k: v for k, v in self._recorded_params().items() if k not in
                             ("sigma1", "lam1", "sigma2", "lam2", "n_models")},
                            sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]


def fit_single(dataset, n_frames, sigma=4.0, lam=3.0, stratified=True, strata="auto", grid_bins=12,
               chiral=True, prior_repulsion=True, prior_dihedrals="auto", seed=0):
    """Baseline: one GDML on ``n_frames`` frames (stratified or uniformly random). Returns a CGModel."""
    t0 = time.perf_counter()
    prior = HarmonicPrior(repulsion=prior_repulsion, dihedrals=prior_dihedrals).fit(dataset.coords,
                                                                                   dataset.temperature,
                                                                                   dataset.cg_topology)
    rng = np.random.default_rng([seed, 5])
    n_frames = min(n_frames, dataset.n_frames)
    if stratified:
        labels_strata, _ = make_strata(dataset, strata, grid_bins, seed=seed)
        idx = np.sort(stratified_batch(labels_strata, n_frames, rng))
    else:
        idx = np.sort(rng.choice(dataset.n_frames, size=n_frames, replace=False))
    labels = prior.residual_forces(dataset.coords[idx], dataset.forces[idx])
    gdml = GDML(sigma=sigma, lam=lam, relative_lam=True, chiral=chiral,
                dihedrals=dataset.cg_topology.chirality_quads).fit(dataset.coords[idx], labels)
    info = fit_record("single GDML", dict(n_frames=n_frames, sigma=sigma, lam=lam, stratified=stratified,
                                          strata=strata, grid_bins=grid_bins, chiral=chiral,
                                          prior_repulsion=prior_repulsion, prior_dihedrals=prior_dihedrals,
                                          seed=seed),
                      dict(sigma=sigma, lam=lam, lam_absolute=float(gdml.lam_), solver=gdml.solver_,
                           cg_iterations=int(gdml.cg_iterations_)), dataset,
                      dict(total_s=time.perf_counter() - t0))
    return CGModel.from_fit(gdml.model_, prior, dataset, info, seed=seed)
