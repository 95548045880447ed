"""The whole fit of a CG force field: :class:`CGEstimator` and its front door :func:`fit_cg_model`.

A :class:`CGEstimator` fits a :class:`cgdml.data.CGDataset` in one sequence, written once: the prior
(:class:`cgdml.prior.CGPrior`), the strata of the frames, the residual forces (labels minus prior forces), a
learner on them, the :class:`cgdml.model.CGModel` around the learned GDML model, and basin balancing
(:mod:`cgdml.basins`). The learners share one contract, ``learner.fit(R, F, groups=strata)`` with the fitted
:class:`cgdml.model.GDMLModel` in ``learner.model_``:

- ``"nystrom"``: :class:`cgdml.nystrom.NystromGDML`, inducing-point GDML on every frame, (sigma, lam) by hold-out;
- ``"two-layer"``: :class:`cgdml.ensemble.TwoLayerGDML`, the two-layer ensemble, chosen by K-fold CV;
- ``"single"``: :class:`cgdml.gdml.GDML` on ``n_frames`` stratified frames (a baseline).

Force uncertainty (``uncertainty=True``, the default): after the learner, :meth:`CGEstimator.fit` computes the
posterior of the learned force (:class:`cgdml.uncertainty.ForcePosterior`, a low-rank DTC sparse GP) on what
the learner was fitted to, with the learner's own kernel and lambda: for ``"single"`` its training frames (the
exact posterior when they fit the budget :data:`POSTERIOR_SETTINGS` ``max_reduced``, else a farthest-point
subset of them as inducing configurations), for ``"nystrom"`` every frame with its own inducing configurations
(a farthest-point subset when they exceed the budget), for ``"two-layer"`` the final layer's mean-force set
with its labels and lambda. The model's ``uncertainty_threshold`` is then :data:`THRESHOLD_MARGIN` times the
:data:`THRESHOLD_QUANTILE` quantile of the force uncertainty over a random sample of the dataset's frames. What
the defaults cost and why they are what they are: docs/uncertainty.md §9.

``python -m cgdml.fit`` builds the same estimator (:func:`cg_estimator`) from its options, which are these
estimators' parameters under their own names, so that a fit from Python and one from the command line with the
same settings and seed give the same model, array for array.

Progress: with ``progress=True`` (the default) the stages show tqdm bars (notebook-aware) and the fit ends with
one summary line (method, chosen hyperparameters, time). The line goes to the ``cgdml.pipeline`` logger (INFO)
when logging is configured, as the command line does, and is printed otherwise (a notebook, a plain script);
``progress=False`` or the logger's level turns it off.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.base import BaseEstimator

from ._io import CgdmlError
from .data import dataset_argument
from .ensemble import TwoLayerGDML
from .gdml import GDML
from .model import CGModel, fit_record
from .nystrom import NystromGDML
from .prior import CGPrior
from .sampling import STRATA, make_strata, stratified_batch
from .selection import judge_residual_weight, resolve_score
from .validation import SEED, Interval, Options, ParameterError, check_param, check_params, value_type

METHODS = ("auto", "nystrom", "two-layer", "single")
# What "auto" fits, for every map: chosen by the worst case over the maps of benchmarks/bench_maps.py against
# independent 50 ns references (docs/guide/fitting.md); the two-layer fit was 2-3x worse on peptide backbones
DEFAULT_METHOD = "nystrom"
# method -> (learner class, the method's learner defaults where they differ from the class's)
LEARNERS = {"nystrom": (NystromGDML, {}), "two-layer": (TwoLayerGDML, {}),
            "single": (GDML, dict(sigma=4.0, lam=3.0, relative_lam=True))}
CG_DEFAULTS = {"single": dict(n_frames=3000)}  # the method's CGEstimator defaults where they differ
MIN_FIT_FRAMES = 10   # distinct frames: below this the Boltzmann-inverted prior alone is noise (k = kT / var)
log = logging.getLogger(__name__)

# The force posterior of a fit (cgdml.uncertainty.ForcePosterior.fit arguments): m r <= max_reduced inducing
# observations, G estimated on sample_frames frames, the rank that raises the training frames' mean variance by at
# most rank_tol. Chosen so that the posterior adds little to a default fit and a guard check stays cheap
# (docs/uncertainty.md §9).
POSTERIOR_SETTINGS = dict(max_reduced=2000, sample_frames=4000, rank_tol=0.05, n_samples=32)
# The guard threshold: THRESHOLD_MARGIN x the THRESHOLD_QUANTILE quantile of the force uncertainty over
# THRESHOLD_FRAMES random frames of the dataset (docs/uncertainty.md §9).
THRESHOLD_QUANTILE, THRESHOLD_MARGIN, THRESHOLD_FRAMES = 0.99, 1.5, 2000


class TooFewFramesError(CgdmlError):
    """A dataset with fewer distinct frames than a fit needs."""


class BalancingError(CgdmlError):
    """Basin balancing failed after the force matching (``reason`` says why); ``balance_basins=False`` skips it."""

    def __init__(self, reason):
        super().__init__(f"basin balancing failed ({reason}); set balance_basins=False to skip it (the GDML fit "
                         "resumes from its checkpoints)")
        self.reason = reason


def distinct_frames(coords):
    """The number of distinct configurations in coords (n, n_beads, 3)."""
    flat = np.ascontiguousarray(np.asarray(coords, dtype=np.float64).reshape(len(coords), -1))
    return len(np.unique(flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()))


def resolve_method(method="auto"):
    """``method``, or for ``"auto"`` :data:`DEFAULT_METHOD` (one method for every map)."""
    if method not in METHODS:
        raise CgdmlError(f"unknown fit method {method!r} (choose {', '.join(METHODS)})")
    return DEFAULT_METHOD if method == "auto" else method


def method_of(learner):
    """The fit method name of a learner: "nystrom", "two-layer" or "single"."""
    return next(name for name, (cls, _) in LEARNERS.items() if isinstance(learner, cls))


def check_fit_frames(dataset, learner):
    """Refuse (:class:`TooFewFramesError`, one line naming the counts) a dataset with fewer distinct frames than
    a fit with ``learner`` needs: at least MIN_FIT_FRAMES, and for a cross-validated two-layer fit two per fold.
    Returns the count."""
    need, why = MIN_FIT_FRAMES, ""
    if isinstance(learner, TwoLayerGDML) and learner.runs_cross_validation() and 2 * learner.n_folds > need:
        need, why = 2 * learner.n_folds, f" (two per cross-validation fold, {learner.n_folds} folds)"
    n = distinct_frames(dataset.coords)
    if n < need:
        same = "" if n == dataset.n_frames else f" among its {dataset.n_frames} frames"
        raise TooFewFramesError(f"{n} distinct frame(s){same}: a {method_of(learner)} fit needs at least {need} "
                                f"distinct frames{why}; the prior and the force field would be fitted to noise "
                                "(use more frames)")
    return n


def method_parameters(method):
    """{name: (default, constraints)} of every parameter a ``method`` fit takes: the CGEstimator's and its
    learner's, with the method's defaults (what ``python -m cgdml.fit`` offers as options)."""
    cls, learner_defaults = LEARNERS[method]
    out = {}
    for owner, defaults in ((CGEstimator, CG_DEFAULTS.get(method, {})), (cls, learner_defaults)):
        params = {**owner().get_params(deep=False), **defaults}
        out.update({name: (value, owner._parameter_constraints[name]) for name, value in params.items()
                    if name != "learner"})
    return out


def parameter_table(names):
    """{name: (type, several, {method: default})} of the parameters ``names`` over the fit methods that take them:
    the type of their values (int, float, str or bool; a parameter without a plain type is str), whether some
    method takes several (a grid), and each method's default."""
    params = {method: method_parameters(method) for method in LEARNERS}
    table = {}
    for name in names:
        kinds = [value_type(params[m][name][1]) for m in LEARNERS if name in params[m]]
        table[name] = (kinds[0][0] or str, any(many for _, many in kinds),
                       {m: params[m][name][0] for m in LEARNERS if name in params[m]})
    return table


def check_fit_options(options):
    """Check option values read from text ({name: value}, a list where several were given) before the method is
    known: each must suit some method that takes it. Raises :class:`ParameterError` (the first method's reason)."""
    params = {method: method_parameters(method) for method in LEARNERS}
    for name, value in options.items():
        if not any(name in params[m] for m in LEARNERS):
            raise ParameterError(name, "is not a parameter of any fit method")
        one = value[0] if isinstance(value, list) and len(value) == 1 else value
        errors = []
        for constraints in [params[m][name][1] for m in LEARNERS if name in params[m]]:
            try:
                check_param(name, one, constraints)
                break
            except ParameterError as exc:
                errors.append(exc)
        else:
            raise errors[0]


def fit_params(method, options):
    """The parameters of a ``method`` fit from option values read from text ({name: value}): a list of one value
    becomes that value where the method takes one. Raises :class:`ParameterError` for an option the method does
    not take or several values where it takes one."""
    params, out = method_parameters(method), {}
    for name, value in options.items():
        if name not in params:
            raise ParameterError(name, f"does not apply to the {method} fit")
        if isinstance(value, list) and not value_type(params[name][1])[1]:
            if len(value) > 1:
                raise ParameterError(name, f"takes one value for the {method} fit, got {len(value)}")
            value = value[0]
        out[name] = value
    return out


def cg_estimator(method, **params):
    """The :class:`CGEstimator` of ``method`` ("nystrom", "two-layer" or "single"; see :func:`resolve_method` for
    "auto"), with the method's defaults and ``params``, each given to whichever of the CG estimator and its
    learner takes it: ``seed`` and ``progress`` to both, ``workdir`` to the learner (ignored by one without
    checkpoints). A parameter that neither takes is refused, and so is a bad value (:class:`ParameterError`)."""
    if method not in LEARNERS:
        raise CgdmlError(f"unknown fit method {method!r} (choose {', '.join(LEARNERS)})")
    cls, learner_defaults = LEARNERS[method]
    cg_names = set(CGEstimator().get_params(deep=False)) - {"learner"}
    learner_names = set(cls().get_params(deep=False))
    cg_params, learner_params = dict(CG_DEFAULTS.get(method, {})), dict(learner_defaults)
    for name, value in params.items():
        if name not in cg_names | learner_names and name != "workdir":
            raise ParameterError(name, f"does not apply to the {method} fit")
        if name in cg_names:
            cg_params[name] = value
        if name in learner_names:
            learner_params[name] = value
    estimator = CGEstimator(cls(**learner_params), **cg_params)
    estimator.validate_params()
    estimator.learner.validate_params()
    return estimator


class CGEstimator(BaseEstimator):
    """A CG force field fitted to a CG dataset: prior -> residual forces -> ``learner`` -> CGModel -> basin
    offsets (see the module docstring). ``fit(dataset)`` sets ``model_``, a :class:`cgdml.model.CGModel`.

    Parameters
    ----------
    learner : a learner estimator (:class:`cgdml.gdml.GDML`, :class:`cgdml.nystrom.NystromGDML` or
        :class:`cgdml.ensemble.TwoLayerGDML`), fitted on a copy; None: :data:`DEFAULT_METHOD`'s with its
        defaults. Its ``dihedrals`` (descriptor) and ``score_dihedrals`` (hyperparameter score) left at None are
        taken from the dataset's CG topology: its chirality quadruples and its soft dihedrals.
    n_frames : train the learner on this many frames (None: all), drawn by ``subset``: "stratified" (uniformly
        over the strata) or "random". The prior is always fitted to every frame.
    strata : how frames are stratified for the learner (:func:`cgdml.sampling.make_strata`): "auto", "phi-psi",
        "backbone-kmeans" or "kmeans"; grid_bins (phi/psi grid) and n_strata (k-means).
    prior_repulsion, prior_dihedrals : the prior's repulsion and dihedral profiles (True, False or "auto":
        on when the beads belong to two or more amino acids), :class:`cgdml.prior.CGPrior`.
    residual_weight : the weight of the learned force on top of the prior: "auto" (the default) judges the
        weights :data:`cgdml.selection.JUDGE_WEIGHTS` by the landscapes of short simulations against the training
        frames (:func:`cgdml.selection.judge_residual_weight`, on one thread), or a number in [0, 1] (1: the fit as
        it is; 0: the prior alone).
    refine_pairs : afterwards correct the distances of beads three or more bonds apart by iterative Boltzmann
        inversion against the training frames, keeping the iteration whose short run's landscapes are closest to
        them, or none (:func:`cgdml.refine.refine_pairs`, on one thread; docs/method.md §2.6).
    balance_basins : afterwards give dihedral arcs that the training frames leave disconnected their training
        populations (:func:`cgdml.basins.balance_basins`, on one thread; a no-op when no dihedral has gaps).
    uncertainty : compute the force posterior and its guard threshold (see the module docstring), saved with the
        model (``model.uncertainty``, ``model.uncertainty_threshold``); False skips it.
    seed : the strata, the training subset, the model's start configurations and basin balancing.
    progress : progress bars and the summary line (the learner has its own ``progress``).

    Learned: ``model_``, ``prior_``, ``learner_`` (the fitted learner), ``method_`` ("nystrom", "two-layer" or
    "single"), ``strata_`` (n_frames,), ``strata_method_``, ``train_index_`` (the learner's frames; None: all),
    ``timings_`` (s).
    """

    _parameter_constraints = {
        "learner": [None, object], "n_frames": [None, Interval(int, 1)],
        "subset": [Options(("stratified", "random"))], "strata": [Options(STRATA)], "grid_bins": [Interval(int, 1)],
        "n_strata": [Interval(int, 1)], "prior_repulsion": [bool], "prior_dihedrals": [bool, Options(("auto",))],
        "balance_basins": [bool], "refine_pairs": [bool],
        "residual_weight": [Interval(float, 0, 1, "both"), Options(("auto",))],
        "uncertainty": [bool], "seed": [SEED], "progress": [bool]}

    def __init__(self, learner=None, n_frames=None, subset="stratified", strata="auto", grid_bins=12, n_strata=50,
                 prior_repulsion=True, prior_dihedrals="auto", balance_basins=True, residual_weight="auto",
                 refine_pairs=True, uncertainty=True, seed=0, progress=True):
        self.learner = learner
        self.n_frames = n_frames
        self.subset = subset
        self.strata = strata
        self.grid_bins = grid_bins
        self.n_strata = n_strata
        self.prior_repulsion = prior_repulsion
        self.prior_dihedrals = prior_dihedrals
        self.balance_basins = balance_basins
        self.residual_weight = residual_weight
        self.refine_pairs = refine_pairs
        self.uncertainty = uncertainty
        self.seed = seed
        self.progress = progress

    def validate_params(self):
        """Check every parameter (:func:`cgdml.validation.check_params`); raises ParameterError."""
        check_params(self)

    def _learner_for(self, dataset):
        """A fresh learner with this estimator's parameters, its topology-dependent ones filled in."""
        if self.learner is None:
            cls, defaults = LEARNERS[resolve_method("auto")]
            learner = cls(**defaults, seed=self.seed, progress=self.progress)
        else:
            learner = type(self.learner)(**self.learner.get_params(deep=False))  # shares (not copies) a Dask client
        learner.validate_params()
        topo, params, fill = dataset.cg_topology, learner.get_params(deep=False), {}
        if "dihedrals" in params and params["dihedrals"] is None:
            fill["dihedrals"] = topo.chirality_quads
        if "score_dihedrals" in params and params["score_dihedrals"] is None:
            fill["score_dihedrals"] = resolve_score(params["cv_score"], topo.soft_dihedrals(),
                                                    f"in the CG topology ({topo.describe()})")[1]
        return learner.set_params(**fill)

    def _training_frames(self, dataset):
        """Indices (sorted) of the frames the learner sees, or None for all of them."""
        if self.n_frames is None:
            return None
        rng = np.random.default_rng([self.seed, 5])
        n = min(int(self.n_frames), dataset.n_frames)
        if self.subset == "stratified":
            return np.sort(stratified_batch(self.strata_, n, rng))
        return np.sort(rng.choice(dataset.n_frames, size=n, replace=False))

    def _prepare(self, dataset):
        """The learner (a fresh copy, its topology-dependent parameters filled in) and what it is fitted to:
        coordinates R, residual forces F and the strata of those frames. Sets ``method_``, ``prior_``,
        ``strata_``, ``strata_method_`` and ``train_index_``."""
        learner = self._learner_for(dataset)
        self.method_ = method_of(learner)
        check_fit_frames(dataset, learner)
        coords = dataset.coords
        self.prior_ = CGPrior(repulsion=self.prior_repulsion, dihedrals=self.prior_dihedrals).fit(
            coords, dataset.temperature, dataset.cg_topology, weights=dataset.weights)
        self.strata_, self.strata_method_ = make_strata(dataset, self.strata, self.grid_bins, self.n_strata, self.seed)
        idx = self.train_index_ = self._training_frames(dataset)
        if idx is None:
            return learner, coords, self.prior_.residual_forces(coords, dataset.forces), self.strata_
        return learner, coords[idx], self.prior_.residual_forces(coords[idx], dataset.forces[idx]), self.strata_[idx]

    def fit(self, dataset):
        """Fit to a :class:`cgdml.data.CGDataset`; returns self with ``model_`` (a CGModel)."""
        dataset = dataset_argument(dataset, "CGEstimator.fit")
        self.validate_params()
        t0 = time.perf_counter()
        learner, R, F, groups = self._prepare(dataset)
        timings = {"prior_and_strata_s": time.perf_counter() - t0}
        self.learner_ = learner.fit(R, F, groups=groups)
        timings.update(learner.timings_)
        posterior = None
        if self.uncertainty:
            t = time.perf_counter()
            posterior = self._posterior(learner, R, F)
            timings["uncertainty_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        summary = dict(learner.summary_)
        info = fit_record(summary.pop("method"), self._recorded_params(), summary.pop("chosen"), dataset, timings,
                          **summary, strata=dict(method=self.strata_method_, n_occupied=int(self.strata_.max() + 1)))
        model = CGModel.from_fit(learner.model_, self.prior_, dataset, info, seed=self.seed)
        if posterior is not None:
            t = time.perf_counter()
            model.uncertainty = posterior
            model.uncertainty_threshold, rule = self._threshold(model, dataset)
            timings["uncertainty_threshold_s"] = time.perf_counter() - t
            model.info["uncertainty"] = _posterior_record(posterior, rule, timings)
        from .distributed import limited_threads

        frames = baseline = None
        if self.residual_weight == "auto":
            t = time.perf_counter()
            weight, judged, frames = limited_threads(lambda: judge_residual_weight(model, dataset, seed=self.seed,
                                                                                  return_frames=True))
            baseline = next({k: v for k, v in r.items() if k != "weight"} for r in judged["candidates"]
                            if r["weight"] == weight)
            timings["judge_s"] = time.perf_counter() - t
        else:
            weight, judged = float(self.residual_weight), dict(rule="given", winner=float(self.residual_weight))
        if weight != 1.0:
            model.gdml = model.gdml.scaled(weight)
        model.info["residual_weight"] = judged
        if self.refine_pairs:
            from .refine import refine_pairs

            t = time.perf_counter()
            model, model.info["pair_correction"] = limited_threads(
                lambda: refine_pairs(model, dataset, frames=frames, baseline=baseline, seed=self.seed))
            timings["refine_s"] = time.perf_counter() - t
        if self.balance_basins:
            from .basins import balance_basins

            # one thread, as the simulate CLI's default: batched replica force calls run faster than with numba's
            # threads on a shared machine (NOTES.md, "Threads")
            try:
                model.offsets, report = limited_threads(
                    lambda: balance_basins(model, dataset, seed=self.seed, progress=self.progress))
            except CgdmlError as exc:
                raise BalancingError(exc) from None
            model.info["basin_balance"] = report
        model.info["fit_method"] = self.method_
        model.info["prior_dihedral_profiles"] = int(len(model.prior.dihedral_quads_))
        model.info["wall_time_s"] = time.perf_counter() - t0
        self.timings_, self.model_ = timings, model
        self._report(model.info)
        return self

    def _posterior(self, learner, R, F):
        """The force posterior of the fitted ``learner`` on what it was fitted to, R and F (the residual forces):
        the one place that knows each learner's training set, kernel and lambda (see the module docstring)."""
        from .uncertainty import ForcePosterior, farthest_points

        gdml, settings = learner.model_, dict(POSTERIOR_SETTINGS)
        kw = dict(quads=gdml.quads, chiral_scale=gdml.chiral_scale, seed=self.seed, **settings)
        r = max(1, 3 * R.shape[1] - 6)
        m_max = max(1, settings["max_reduced"] // r)
        if isinstance(learner, NystromGDML):
            inducing = np.asarray(learner.inducing_index_)
            if len(inducing) > m_max:   # a farthest-point subset of its own inducing configurations
                inducing = inducing[farthest_points(gdml.train_descriptors, m_max, self.seed)]
            return ForcePosterior.fit(R, F, sigma=gdml.sigma, lam=learner.lam_, inducing=inducing, **kw)
        if isinstance(learner, TwoLayerGDML):
            idx = learner.mean_set_index_
            return ForcePosterior.fit(R[idx], learner.mean_set_labels_, sigma=gdml.sigma,
                                      lam=learner.summary_["chosen"]["lam2_absolute"], **kw)
        return ForcePosterior.fit(R, F, sigma=gdml.sigma, lam=learner.lam_, **kw)   # single: exact when it fits

    def _threshold(self, model, dataset):
        """The guard threshold (kJ/mol/nm) of ``model`` and the record of its rule: THRESHOLD_MARGIN x the
        THRESHOLD_QUANTILE quantile of the force uncertainty over THRESHOLD_FRAMES random frames of ``dataset``."""
        rng = np.random.default_rng([self.seed, 0x7E5])
        n = min(THRESHOLD_FRAMES, dataset.n_frames)
        sample = np.sort(rng.choice(dataset.n_frames, n, replace=False))
        u = model.force_uncertainty(dataset.coords[sample])
        q = float(np.quantile(u, THRESHOLD_QUANTILE))
        rule = dict(quantile=THRESHOLD_QUANTILE, margin=THRESHOLD_MARGIN, n_frames=int(n), quantile_value=q,
                    median=float(np.median(u)), max=float(u.max()))
        return THRESHOLD_MARGIN * q, rule

    def _recorded_params(self):
        """The hyperparameters that shape the result (the CG estimator's and the learner's as given, not where
        and how the fit runs), as plain JSON-ready values."""
        learner = self.learner if self.learner is not None else self.learner_
        execution = ("learner", "progress", "n_jobs", "workdir", "scheduler", "checkpoint_s")
        params = {**learner.get_params(deep=False), **self.get_params(deep=False)}
        return {k: (np.asarray(v).tolist() if isinstance(v, (tuple, list, np.ndarray)) else v)
                for k, v in params.items() if k not in execution}

    def _report(self, info):
        """The summary line of the fit (see the module docstring for where it goes)."""
        chosen = ", ".join(f"{k} {v:g}" for k, v in info["chosen"].items()
                           if k.startswith(("sigma", "lam")) and not k.endswith("absolute"))
        balanced = len(info.get("basin_balance", []))
        line = (f"fit: {info['method']} on {info['data']['n_frames']} frames in {info['wall_time_s']:.0f} s; "
                f"chosen {chosen}" + (f"; {balanced} dihedral(s) balanced" if balanced else ""))
        judged = info.get("residual_weight") or {}
        if judged.get("rule") not in (None, "given"):
            line += f"; residual weight {judged['winner']:g} (judged by short simulations)"
        if logging.getLogger("cgdml").hasHandlers() or not self.progress:
            log.info(line)
        else:
            from tqdm.auto import tqdm

            tqdm.write(line)


def _posterior_record(posterior, rule, timings):
    """What MODEL.json keeps of a force posterior: its size, scales, cost and the threshold rule."""
    info = posterior.info
    keep = ("n_frames", "n_sample", "n_inducing", "reduced_size", "rank", "inducing", "jitter",
            "dropped_variance_fraction", "mean_train_variance", "noise_variance")
    return dict({k: info[k] for k in keep if k in info}, s2=posterior.s2, lam=posterior.lam,
                n_samples=posterior.n_samples, threshold=rule["margin"] * rule["quantile_value"],
                threshold_rule=rule, timings=dict(info.get("timings", {}), fit_s=timings.get("uncertainty_s"),
                                                  threshold_s=timings.get("uncertainty_threshold_s")),
                settings=dict(POSTERIOR_SETTINGS))


def fit_cg_model(dataset, method="auto", **params):
    """Fit a CG force field to a :class:`cgdml.data.CGDataset`; returns a :class:`cgdml.model.CGModel`.

    ``method``: "auto" (the default: :data:`DEFAULT_METHOD`, inducing-point GDML for every map), "nystrom",
    "two-layer" or "single" (see the module docstring). ``params`` are the parameters of :class:`CGEstimator`
    and of the method's learner (e.g. ``sigma1=(2, 4)``, ``n_models=12`` for two-layer; ``sigma``, ``lam``,
    ``n_inducing`` for nystrom; ``n_frames``, ``sigma``, ``lam`` for single), and ``seed``, ``progress`` and
    ``workdir`` (checkpoints, so that an interrupted fit resumes). A parameter that does not apply to the method
    is refused. This is what ``python -m cgdml.fit`` runs; the record of the fit is ``model.info``.
    """
    dataset = dataset_argument(dataset, "fit_cg_model")
    return cg_estimator(resolve_method(method), **params).fit(dataset).model_
