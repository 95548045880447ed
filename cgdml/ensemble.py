"""The two-layer GDML scheme (Wang, Chmiela, Müller, Noé, Clementi, JCP 152, 194106, 2020; docs/method.md §2.6).

On (prior-subtracted) forces F at coordinates R, with the frames' strata as ``groups``:

1. Layer 1: many small GDML models, each on a batch drawn uniformly over the occupied strata.
2. The mean-force set: stratified configurations labelled with the average layer-1 prediction.
3. Layer 2: one GDML model trained on the mean-force set is the final force field.

Hyperparameters are chosen by K-fold cross-validation over frames, folds balanced within strata
(:func:`cgdml.selection.cross_validate_two_layer`; the scores are those of :mod:`cgdml.selection`). Every
expensive unit of work is cached in ``workdir``, so an interrupted fit resumes where it stopped. Sub-model
trainings run in local joblib processes (``n_jobs``; one per core by default) or on a Dask cluster (``scheduler``;
see :mod:`cgdml.distributed`), where the data arrays are scattered once and each task carries only its batch
indices; each task is one lambda path (the sub-models of all lambdas on one batch and sigma,
:meth:`cgdml.gdml.GDML.fit_path`). The prior, the strata and the CG model around the result are
:class:`cgdml.pipeline.CGEstimator`'s.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from ._io import WorkCache
from .data import check_coords_forces, learner_arrays
from .distributed import TaskRunner
from .features import as_quads, chain_quads
from .gdml import GDML, POSITIVE, PredictsWithModel, dihedral_quads
from .sampling import stratified_batch, stratified_folds
from .selection import SCORES, cross_validate_two_layer, decide, fold_sets, resolve_score, score_projection
from .validation import N_JOBS, N_MODELS, SEED, SIGMA, Grid, Interval, Options, ParameterError, check_params


def _fit_path_and_predict(coords, labels, train_idx, predict_on, sigma, lams, quads, train_labels=None):
    """Train one GDML per lambda of ``lams`` on frames ``train_idx`` (a lambda path: :meth:`cgdml.gdml.GDML.fit_path`)
    and return, per lambda, its forces (float32) on each index array in ``predict_on``.

    The labels are ``labels[train_idx]``, or ``train_labels`` when given (then ``labels`` is unused); ``quads``
    (n_quads, 4) are the descriptor's dihedrals.
    """
    gdml = GDML(sigma=sigma, relative_lam=True, dihedrals=quads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an automatic lambda increase is recorded in lam_, not shouted
        models = gdml.fit_path(coords[train_idx], labels[train_idx] if train_labels is None else train_labels, lams)
    return [[model.predict_forces(coords[idx]).astype(np.float32) for idx in predict_on] for model in models]


@dataclass
class _Work:
    """What the stages of one fit share: the task runner, the checkpoint cache, the data arrays (coords,
    labels) and their handles for tasks (the arrays locally, futures on Dask), the overall progress bar."""
    runner: TaskRunner
    cache: WorkCache
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


class TwoLayerGDML(PredictsWithModel, BaseEstimator):
    """Two-layer GDML force matching, a learner: ``fit(R, F, groups)`` sets ``model_``, the layer-2
    :class:`cgdml.model.GDMLModel`. :class:`cgdml.pipeline.CGEstimator` (``method="two-layer"``) fits it on the
    residual forces of a CG dataset.

    Parameters
    ----------
    n_models, batch_size : int
        Layer-1 sub-model count and frames per sub-model.
    mean_set_size : int
        Configurations in the mean-force set (the layer-2 training set).
    sigma1, sigma2 : float or sequence of float
        Candidate kernel widths (descriptor units, 1/nm) for layers 1 and 2.
    lam1, lam2 : float or sequence of float
        Candidate regularisations, relative to the mean kernel diagonal (noise/signal ratio).
    n_folds, cv_models, cv_mean_set_size, cv_holdout : int
        Cross-validation folds (>= 2 when a hyperparameter has several candidates), sub-models per candidate
        and fold, the layer-2 training size during CV, and the held-out frames scored per fold.
    cv_score : {"auto", "dihedral", "force"}
        "dihedral": held-out force errors projected on the ``score_dihedrals``; "force": the plain held-out
        force MSE; "auto": dihedral when there is a score dihedral. See :mod:`cgdml.selection`.
    chiral : bool
        Add the sines of the ``dihedrals`` to the descriptor (they tell a configuration from its mirror image).
    dihedrals, score_dihedrals : (n, 4) int array or None
        The descriptor's dihedrals and those of the score (None: consecutive beads).
    n_jobs : int
        Parallel sub-model trainings in local joblib processes (-1, the default: one per core; 1: in this process;
        negative: all cores but ``|n_jobs| - 1``). Every training runs on one thread wherever it runs, so the
        result does not depend on ``n_jobs``.
    scheduler : str or distributed.Client or None
        Run the layer-1 and CV trainings on Dask instead: ``tcp://HOST:PORT`` or a scheduler-file path. Results
        equal those of a local run with ``n_jobs > 1``, bit for bit.
    seed : int
        The random streams of folds, batches and sets.
    workdir : path or None
        Checkpoint directory for resuming.
    progress : bool
        One progress bar over the sub-model trainings.

    Attributes
    ----------
    model_ : GDMLModel
        The layer-2 model.
    sigma1_, lam1_, sigma2_, lam2_ : float
        The chosen hyperparameters.
    cv_scores_ : list of dict
        The cross-validation table; ``cv_score_`` the score used.
    selection_ : dict or None
        How each layer's winner was chosen (:func:`cgdml.selection.decide` records under ``layer1`` and
        ``layer2``); None without cross-validation.
    mean_set_index_, mean_set_labels_ : ndarray
        The mean-force set and its labels (the layer-1 average).
    n_layer1_models_, layer1_spread_, batch_size_, strata_, execution_, timings_, summary_
        Sub-model count, mean spread of their predictions, the batch size used, the groups used, where the
        trainings ran, timings (s) and the one-line summary.
    """

    _parameter_constraints = {
        **{name: [Interval(int, 1)] for name in ("batch_size", "mean_set_size", "n_folds", "cv_models",
                                                 "cv_mean_set_size", "cv_holdout")},
        "n_models": [N_MODELS], "sigma1": [Grid(SIGMA)], "sigma2": [Grid(SIGMA)],
        **{name: [Grid(POSITIVE)] for name in ("lam1", "lam2")},
        "cv_score": [Options(SCORES)], "chiral": [bool], "dihedrals": [None, "array-like"],
        "score_dihedrals": [None, "array-like"], "n_jobs": N_JOBS,
        "seed": [SEED], "workdir": [None, object], "progress": [bool], "scheduler": [None, object]}

    def __init__(self, n_models=12, batch_size=2000, mean_set_size=2000, sigma1=(2.0, 4.0, 8.0),
                 lam1=(0.3, 1.0, 3.0), sigma2=(1.0, 2.0, 4.0), lam2=(1e-3, 1e-2, 1e-1), n_folds=2, cv_models=2,
                 cv_mean_set_size=600, cv_holdout=4000, cv_score="auto", chiral=True, dihedrals=None,
                 score_dihedrals=None, n_jobs=-1, seed=0, workdir=None, progress=True, scheduler=None):
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
        self.cv_score = cv_score
        self.chiral = chiral
        self.dihedrals = dihedrals
        self.score_dihedrals = score_dihedrals
        self.n_jobs = n_jobs
        self.seed = seed
        self.workdir = workdir
        self.progress = progress
        self.scheduler = scheduler

    # ------------------------------------------------------------------ helpers
    def _rng(self, *stream):
        return np.random.default_rng([self.seed, *stream])

    def runs_cross_validation(self):
        """Whether fit cross-validates: some hyperparameter has several candidates and there are >= 2 folds."""
        grids = (self.sigma1, self.lam1, self.sigma2, self.lam2)
        return self.n_folds >= 2 and any(len(np.atleast_1d(g)) > 1 for g in grids)

    def validate_params(self):
        """Check every parameter (:func:`cgdml.validation.check_params`) and that several candidates come with
        two or more folds; raises :class:`cgdml.validation.ParameterError`."""
        check_params(self)
        grids = [name for name in ("sigma1", "lam1", "sigma2", "lam2") if len(np.atleast_1d(getattr(self, name))) > 1]
        if grids and self.n_folds < 2:
            raise ParameterError("n_folds", f"must be >= 2 to cross-validate the candidates of {', '.join(grids)}, "
                                 f"got {self.n_folds}; give one value of each to fit without cross-validation")

    def _prepare(self, R, F):
        """Settings that depend on the data: the batch size, the descriptor's and the score's dihedrals."""
        n, n_beads = R.shape[:2]
        pool = n * (self.n_folds - 1) // self.n_folds if self.runs_cross_validation() else n
        self.batch_size_ = min(self.batch_size, max(1, pool // 2))
        if self.batch_size_ < self.batch_size:
            warnings.warn(f"batch size {self.batch_size} lowered to {self.batch_size_}, half of the {pool} frames a "
                          "sub-model can draw from, so that the sub-models differ", stacklevel=3)
        self.quads_ = dihedral_quads(n_beads, self.chiral, self.dihedrals)
        score_quads = chain_quads(n_beads) if self.score_dihedrals is None else as_quads(self.score_dihedrals,
                                                                                         n_beads)
        self.cv_score_, self.cv_quads_ = resolve_score(self.cv_score, score_quads)

    def _n_trainings(self):
        """GDML trainings of the cross-validation and layer 1, known before they start (the overall progress
        bar's total; work found in the checkpoints is taken off it as the stages meet it)."""
        n_grid = lambda *names: int(np.prod([len(np.atleast_1d(getattr(self, n))) for n in names]))  # noqa: E731
        if not self.runs_cross_validation():
            return self.n_models
        per_fold = max(self.cv_models, -(-self.n_models // self.n_folds))
        return (n_grid("sigma1", "lam1") * self.n_folds * self.cv_models + self.n_folds * (per_fold - self.cv_models)
                + n_grid("sigma2", "lam2") * self.n_folds)

    # ------------------------------------------------------------------ stages
    def _layer1(self, specs, work, strata, folds, sets, desc):
        """Train the sub-models ``specs`` = [(sigma1, lam1, fold, i)] not yet in ``cache``; return their entries.

        A model of fold k draws its batch from the frames outside fold k (fold -1: from all frames) and
        predicts on ``sets[k]``, a dict of named index arrays (held-out frames, mean sets). The batch depends on
        (fold, i) only: the lambdas of one (sigma1, fold, i) are one task, a lambda path on one batch.
        """
        n_beads = work.coords.shape[1]
        expect = {k: {name: (len(idx), n_beads, 3) for name, idx in sets[k].items()} for k in sets}
        work.stage(desc)
        paths = {}
        for s1, l1, k, i in specs:
            key = f"l1_s{s1:g}_l{l1:g}_f{k}_m{i}"
            cached = work.cache.get(key, expect[k]) is not None
            work.account(key, cached)
            if not cached and key not in paths.setdefault((s1, k, i), {}).values():
                paths[s1, k, i][l1] = key
        tasks, keys = [], []
        for (s1, k, i), by_lam in paths.items():
            if not by_lam:
                continue
            pool = np.flatnonzero(folds != k)
            batch = stratified_batch(strata, min(self.batch_size_, len(pool)), self._rng(2, k + 1, i), pool=pool)
            lams = sorted(by_lam, reverse=True)
            tasks.append((_fit_path_and_predict, (work.coords_h, work.labels_h, batch, list(sets[k].values()), s1,
                                                  lams, self.quads_)))
            keys.append(([by_lam[lam] for lam in lams], k))
        for j, per_lam in work.runner.run(tasks, desc, bar=work.bar, limit_threads=True,
                                          weights=[len(ks) for ks, _ in keys]):
            names, k = keys[j]
            for key, preds in zip(names, per_lam):
                work.cache.put(key, **{name: p.astype(np.float32) for name, p in zip(sets[k], preds)})
        return [work.cache.get(f"l1_s{s1:g}_l{l1:g}_f{k}_m{i}") for s1, l1, k, i in specs]

    def _layer2_on_folds(self, work, sets, s1, l1, per_fold, ensembles, candidates):
        """Train each layer-2 candidate (sigma2, lam2) on each fold's CV mean set labelled by that fold's layer-1
        ensemble; {(sigma2, lam2, fold): held-out predictions}. The lambdas of one (sigma2, fold) are one task."""
        keys, paths = [], {}
        for s2, l2 in candidates:
            for k in range(self.n_folds):
                key = f"l2_s{s1:g}_l{l1:g}_n{per_fold}_s{s2:g}_l{l2:g}_f{k}"
                keys.append((key, s2, l2, k))
                cached = work.cache.get(key, {"held": (len(sets[k]["held"]), work.coords.shape[1], 3)}) is not None
                work.account(key, cached)
                if not cached:
                    paths.setdefault((s2, k), {})[l2] = key
        tasks, names = [], []
        for (s2, k), by_lam in paths.items():
            mean_labels = np.mean([e["mean"] for e in ensembles[k]], axis=0).astype(np.float64)
            lams = sorted(by_lam, reverse=True)
            tasks.append((_fit_path_and_predict, (work.coords_h, None, sets[k]["mean"], [sets[k]["held"]], s2, lams,
                                                  self.quads_, mean_labels)))
            names.append([by_lam[lam] for lam in lams])
        work.stage("CV layer 2")
        for j, per_lam in work.runner.run(tasks, "CV layer 2", bar=work.bar, limit_threads=True,
                                          weights=[len(n) for n in names]):
            for key, (p_held,) in zip(names[j], per_lam):
                work.cache.put(key, held=p_held.astype(np.float32))
        return {(s2, l2, k): work.cache.get(key)["held"] for key, s2, l2, k in keys}

    def _cross_validate(self, work, strata, folds):
        """The CV table and the final layer-1 entries (:func:`cgdml.selection.cross_validate_two_layer`)."""
        sets = fold_sets(strata, folds, self.n_folds, self.cv_holdout, self.cv_mean_set_size,
                         lambda k: self._rng(1, k), self.mean_set_index_)
        dihedral_score = self.cv_score_ == "dihedral"
        project = {k: score_projection(work.coords[sets[k]["held"]], self.cv_quads_) if dihedral_score else None
                   for k in range(self.n_folds)}
        targets = {k: work.labels[sets[k]["held"]] for k in range(self.n_folds)}

        # every candidate's CV sub-models first, so that the lambdas of one (sigma1, batch) are one lambda path;
        # cross_validate_two_layer then finds them in the cache
        self._layer1([(s1, l1, k, i) for s1 in np.atleast_1d(self.sigma1) for l1 in np.atleast_1d(self.lam1)
                      for k in range(self.n_folds) for i in range(self.cv_models)], work, strata, folds, sets,
                     "CV layer 1")

        def train_layer1(s1, l1, n_per_fold, stage):
            specs = [(s1, l1, k, i) for k in range(self.n_folds) for i in range(n_per_fold)]
            entries = self._layer1(specs, work, strata, folds, sets, stage)
            return {k: [e for e, sp in zip(entries, specs) if sp[2] == k] for k in range(self.n_folds)}

        def train_layer2(s1, l1, per_fold, ensembles, candidates):
            return self._layer2_on_folds(work, sets, s1, l1, per_fold, ensembles, candidates)

        table, final = cross_validate_two_layer(
            (np.atleast_1d(self.sigma1), np.atleast_1d(self.lam1)), (np.atleast_1d(self.sigma2),
                                                                     np.atleast_1d(self.lam2)),
            targets, project, n_models=self.n_models, cv_models=self.cv_models, train_layer1=train_layer1,
            train_layer2=train_layer2)
        return table, [e for k in range(self.n_folds) for e in final[k]]

    def fit(self, R, F=None, groups=None):
        """Fit forces F (n, n_beads, 3) kJ/mol/nm at R (n, n_beads, 3) nm; ``groups`` (n,) are the frames' strata
        (None: one stratum, uniform draws). Returns self."""
        learner_arrays("TwoLayerGDML", R, F)
        self.validate_params()
        R, F, _ = check_coords_forces(R, F)
        self._prepare(R, F)
        t0 = time.perf_counter()
        timings = {}
        n = len(R)
        self.strata_ = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
        folds = stratified_folds(self.strata_, self.n_folds, self._rng(0))
        self.mean_set_index_ = np.sort(stratified_batch(self.strata_, min(self.mean_set_size, n), self._rng(3)))
        cache = WorkCache(self.workdir, self._fingerprint(R, F, self.strata_))
        runs_cv = self.runs_cross_validation()
        bar = tqdm(total=self._n_trainings(), desc="fit", unit="model", disable=not self.progress, smoothing=0.1)
        with bar, TaskRunner(self.n_jobs, self.scheduler, self.progress) as runner:
            work = _Work(runner, cache, R, F, runner.share(R), runner.share(F), bar, set())
            if not runs_cv:
                s1, l1 = float(np.atleast_1d(self.sigma1)[0]), float(np.atleast_1d(self.lam1)[0])
                self.cv_scores_ = []
                all_frames = np.full(n, -2)  # fold -1 draws from every frame
                entries = self._layer1([(s1, l1, -1, i) for i in range(self.n_models)], work, self.strata_,
                                       all_frames, {-1: dict(final=self.mean_set_index_)}, "layer 1")
            else:
                self.cv_scores_, entries = self._cross_validate(work, self.strata_, folds)
            self.execution_ = runner.describe()
        self.selection_ = None
        if not runs_cv:
            s2, l2 = float(np.atleast_1d(self.sigma2)[0]), float(np.atleast_1d(self.lam2)[0])
        else:
            (best1, rec1), (best2, rec2) = (decide([s for s in self.cv_scores_ if s["layer"] == layer])
                                            for layer in (1, 2))
            self.selection_ = dict(layer1=rec1, layer2=rec2)
            s1, l1, s2, l2 = best1["sigma"], best1["lam"], best2["sigma"], best2["lam"]
        self.sigma1_, self.lam1_, self.sigma2_, self.lam2_ = s1, l1, s2, l2
        preds = np.array([e["final"] for e in entries], dtype=np.float64)
        self.n_layer1_models_ = len(preds)
        self.mean_set_labels_ = preds.mean(0)
        self.layer1_spread_ = float(preds.std(0).mean()) if len(preds) > 1 else float("nan")
        timings["cross_validation_and_layer1_s"] = time.perf_counter() - t0

        t = time.perf_counter()
        gdml = GDML(sigma=s2, lam=l2, relative_lam=True, dihedrals=self.quads_)
        gdml.fit(R[self.mean_set_index_], self.mean_set_labels_)
        self.model_ = gdml.model_
        timings["layer2_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        self.timings_ = timings
        self.summary_ = dict(method="two-layer GDML", cv_score=self.cv_score_, cv_scores=self.cv_scores_,
                             selection=self.selection_, execution=self.execution_,
                             chosen=dict(sigma1=s1, lam1=l1, sigma2=s2, lam2=l2, lam2_absolute=float(gdml.lam_),
                                         n_layer1_models=len(preds), batch_size=self.batch_size_))
        return self

    _EXECUTION = ("n_jobs", "workdir", "progress", "scheduler")  # where and how it runs, not what it computes

    def _fingerprint(self, R, F, groups):
        """Hash of the data (R, F and the strata ``groups``) and of the settings a checkpointed unit of work depends
        on (the grids and the sub-model count are not among them: their work units are keyed by name)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(R, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(F, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(groups, dtype=np.int64).tobytes())
        params = {k: (np.asarray(v).tolist() if isinstance(v, (tuple, list, np.ndarray)) else v)
                  for k, v in self.get_params().items()
                  if k not in self._EXECUTION + ("sigma1", "lam1", "sigma2", "lam2", "n_models")}
        h.update(json.dumps(params, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

