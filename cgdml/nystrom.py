"""Inducing-point (Nyström) GDML: learn the mean force from every frame, not from a kernel-sized subset.

The force field is expanded on m inducing configurations x_j with coefficients a_j in each one's reduced basis
(v_j = W_j a_j in descriptor space), exactly the form of a GDML model trained on them:

    F(x) = J(x)^T sum_j Hc(D(x) - D_j) v_j.

The coefficients are the least-squares fit to all N frames, regularised by the RKHS norm,

    min_a  sum_i |y_i - K_im a|^2 + lam a^T K_mm a   <=>   (K_mN K_Nm + lam K_mm) a = K_mN y,

with y_i = V_i^T F_i the force of frame i in its reduced (internal) basis and K_im the reduced kernel blocks of
:mod:`cgdml.gdml`. With m = N and K invertible this is GDML's (K + lam I) a = y, so ``lam`` means the same.
Preconditioned conjugate gradients solve it; every product is one pass over the frames in cache-sized tiles
(:func:`cgdml.kernels.normal_pass`: each frame-inducing pair's kernel coefficients are computed once and serve
K_Nm and K_mN, four GEMMs of O(m n_desc) per frame), so neither K_Nm nor the N x N kernel is ever stored.
Only the frames' descriptors, reduced Jacobians W_i (n_desc x r) and labels are kept: 8 N n_desc (r + 1) bytes.
Optionally (``dtype="float32"``) the GEMMs run in single precision, with float64 residuals
(:func:`cgdml.linalg.refine`).

Preconditioner: P = (N/s) K_mS K_Sm + lam K_mm with S a uniform random sample of s frames, an unbiased
estimate of the normal matrix in the spirit of Falkon (Rudi, Carratino and Rosasco, NeurIPS 2017), which takes
S = the inducing points; with stratified inducing points Falkon's choice converged far more slowly (NOTES.md).
Larger s cuts the iterations at a setup cost that does not grow with N, so the default s
(:func:`cgdml.linalg.default_precond_frames`) grows with N / m. Each lambda costs one Cholesky factorisation of
size m r (:class:`cgdml.linalg.SampledPreconditioner`).

Hyperparameters: with several (sigma, lam) candidates, :class:`NystromGDML` chooses by hold-out
(:func:`cgdml.selection.holdout_search`) on smaller models, then fits the winner on every frame.

:func:`compress` refits a fitted model's GDML term (e.g. a two-layer model's 2000 mean-force configurations) onto
fewer inducing configurations by this same least-squares fit to its own forces: a faster model, nearly the same
force field.

Units: nm, kJ/mol/nm; sigma in descriptor units (nm^-1); lam relative to mean(diag K) as in GDML.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from . import kernels
from ._io import CgdmlError, Fields, WorkCache, as_array, as_float, as_int, load_npz, save_npz
from .data import check_coords_forces, learner_arrays
from .features import as_quads, chain_quads
from .gdml import POSITIVE, PredictsWithModel, dihedral_quads, mean_kernel_diagonal, reduce_frames
from .linalg import SampledPreconditioner, default_precond_frames, pcg, refine
from .model import GDMLModel
from .sampling import stratified_batch
from .selection import (MAX_EXTENSIONS, SCORES, decide, extension_candidates, holdout_scores, holdout_search,
                        holdout_split, resolve_score, score_projection)
from .validation import SEED, SIGMA, Grid, Interval, Options, check_params

INDUCING = ("stratified", "random")
DTYPES = ("float64", "float32")
log = logging.getLogger(__name__)


class ReducedFrames:
    """Per-frame descriptors D (N, nd), reduced Jacobians W (N, nd, r) and reduced labels y (N, r).

    Built chunk by chunk from coordinates R (N, n_beads, 3) nm and forces F (same shape) kJ/mol/nm, so the
    (N, nd, 3 n_beads) Jacobian never exists at once; ``quads`` (n_quads, 4) are the descriptor's dihedrals.
    """

    def __init__(self, R, F, quads=(), chiral_scale=1.0, chunk=8192):
        n_frames, n_beads = R.shape[:2]
        self.n_frames, self.n_beads = n_frames, n_beads
        self.quads, self.chiral_scale = np.asarray(quads, dtype=np.int64).reshape(-1, 4), float(chiral_scale)
        self.D = self.W = self.y = None
        sq_jac = 0.0
        for c0 in range(0, n_frames, chunk):
            Rc, Fc, _ = check_coords_forces(R[c0:c0 + chunk], F[c0:c0 + chunk])
            D, W, y, sq = reduce_frames(Rc, Fc, quads, chiral_scale)
            if self.D is None:
                self.D = np.empty((n_frames, D.shape[1]))
                self.W = np.empty((n_frames, *W.shape[1:]))
                self.y = np.empty((n_frames, y.shape[1]))
            self.D[c0:c0 + chunk], self.W[c0:c0 + chunk], self.y[c0:c0 + chunk] = D, W, y
            sq_jac += sq
        self.mean_sq_jacobian = sq_jac / (n_frames * 3 * n_beads)

    @property
    def r(self):
        return self.W.shape[2]

    def mean_diag(self, sigma):
        """mean(diag K) of the full-space kernel for length scale ``sigma`` (what a relative lambda scales)."""
        return mean_kernel_diagonal(sigma, self.mean_sq_jacobian)


def choose_inducing(n_frames, m, strata=None, method="stratified", seed=0):
    """Sorted indices (m,) of inducing frames.

    ``stratified`` draws uniformly over the occupied strata (labels (N,)), so rare states get inducing points;
    ``random`` draws uniformly over frames.
    """
    if method not in INDUCING:
        raise CgdmlError(f"unknown inducing-point choice {method!r} (use {' or '.join(INDUCING)})")
    m = int(min(m, n_frames))
    rng = np.random.default_rng([seed, 0x1D])
    if method == "random" or strata is None:
        return np.sort(rng.choice(n_frames, m, replace=False))
    return np.sort(stratified_batch(np.asarray(strata), m, rng))


class NormalEquations:
    """The Nyström system (K_mN K_Nm + lam K_mm) a = K_mN y over ``frames`` (a :class:`ReducedFrames`).

    ``matvec`` and ``rhs`` stream over the frames in one fused pass (:func:`cgdml.kernels.normal_pass`): each
    pair's kernel coefficients are computed once and serve both K_Nm and K_mN, in tiles that stay in cache;
    memory beyond the frames' arrays is O(m nd) plus O(m) per tile frame and thread. ``sigma`` is the kernel
    length scale and ``lam`` the absolute lambda; ``chunk`` frames make one threaded task. ``dtype`` float32
    runs the pass's GEMMs in single precision (sums over frames stay float64): about twice as fast, with
    products accurate to ~1e-7 relative on random vectors (instead of ~1e-14) but only to ~1e-4 near the
    solution, where the coefficients cancel: solve with float64 residuals (:func:`refine`).
    """

    def __init__(self, frames, inducing, sigma, lam, chunk=8192, dtype=np.float64):
        self.frames, self.sigma, self.lam, self.chunk = frames, float(sigma), float(lam), int(chunk)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float64, np.float32):
            raise CgdmlError(f"dtype must be float64 or float32, got {dtype!r}")
        self.idx = np.asarray(inducing)
        self.Dm = np.ascontiguousarray(frames.D[self.idx])
        self.Wm = np.ascontiguousarray(frames.W[self.idx])
        self.m, self.r = len(self.idx), frames.r
        self.size = self.m * self.r

    def coefficients(self, a):
        """Descriptor-space coefficients v (m, nd) of the reduced vector a (m r,)."""
        return np.matmul(self.Wm, np.asarray(a).reshape(self.m, self.r, 1))[:, :, 0]

    def _back(self, h):
        return np.matmul(h[:, None, :], self.Wm)[:, 0, :].ravel()  # W_j^T h_j

    def _pass(self, V=None, y=None):
        tab = kernels.InducingTables(self.Dm, V, self.sigma, self.dtype)
        return self._back(kernels.normal_pass(self.frames.D, self.frames.W, tab, y, task=self.chunk))

    def kmm_matvec(self, a):
        """K_mm a (m r,), exactly, in O(m^2 nd)."""
        tab = kernels.TrainTables(self.Dm, self.coefficients(a), self.sigma)
        return self._back(kernels.hessian_apply(self.Dm, tab)[0])

    def matvec(self, a):
        """(K_mN K_Nm + lam K_mm) a for a (m r,): one pass over the frames."""
        return self._pass(V=self.coefficients(a)) + self.lam * self.kmm_matvec(a)

    def rhs(self):
        """K_mN y (m r,)."""
        return self._pass(y=self.frames.y)

    def kmm(self):
        """Dense symmetric K_mm (m r, m r)."""
        K = kernels.assemble(self.Dm, self.Wm, self.sigma)  # lower block triangle
        kernels.mirror_lower(K.T)
        return K


#: Below this relative lambda the preconditioner samples 2 m frames instead of m / 2: with nearly noise-free
#: labels (compress) it must carry the system; measured at 0.1, m / 2 still saved time (NOTES.md)
SMALL_LAM = 0.05
MAX_REDUCED_SIZE = 12_000  # m r of the default inducing count: the preconditioner holds ~3 (m r)^2 doubles (3.5 GB)


def default_inducing(n_beads, n_frames=None, cap=1000):
    """Default inducing count m: ``cap`` (1000), or fewer for large molecules so that the reduced size m (3N - 6)
    stays within MAX_REDUCED_SIZE (the preconditioner's memory and O((m r)^3) setup), and never more than the
    frames. 5 and 6 beads keep 1000; 11 beads get 444, 14 beads 333, 20 beads 222."""
    r = max(1, 3 * n_beads - 6)
    m = min(cap, MAX_REDUCED_SIZE // r)
    return int(m if n_frames is None else min(m, n_frames))



@dataclass
class _Solution:
    """One solve of the normal equations: the model and what the fit record keeps of it."""
    model: GDMLModel
    coef: np.ndarray
    index: np.ndarray
    lam: float
    cg_iterations: int
    residual: float
    refinements: int
    timings: dict


class _WarmStart:
    """What the solves of a hold-out search share: the CG iterate of the previous lambda of the same sigma (the
    next, smaller lambda starts from it) and the lambda-free preconditioner factors of that sigma."""

    def __init__(self):
        self.sigma, self.x0, self.precond = None, None, {}

    def start(self, sigma):
        """The starting iterate for a solve at ``sigma`` (None at a new sigma)."""
        if sigma != self.sigma:
            self.sigma, self.x0 = sigma, None
        return self.x0


class NystromGDML(PredictsWithModel, BaseEstimator):
    """Inducing-point GDML fitted by least squares on every frame, its (sigma, lam) chosen by hold-out (see the
    module docstring). ``fit(R, F, groups=None)`` sets ``model_``, a :class:`cgdml.model.GDMLModel`.

    Parameters
    ----------
    n_inducing : m, the inducing configurations, or "auto" (:func:`default_inducing`: 1000, fewer for large
        molecules). m, not the frame count, sets the cost: the preconditioner holds and factorises
        (m (3 n_beads - 6))^2 numbers, while each CG iteration costs only O(N m n_desc).
    sigma, lam : kernel length scale(s), nm^-1, and regularisation(s) relative to mean(diag K) (as in
        :class:`cgdml.gdml.GDML`). With several candidates, each (sigma, lam) is fitted with min(n_inducing,
        ``select_inducing``) inducing points on up to ``select_frames`` frames outside a random hold-out of
        ``holdout`` (at most 20,000 frames), scored on it, and the winner refitted on all frames; lambdas of one
        sigma share the preconditioner and warm-start CG from each other (largest first).
    cv_score : the hold-out score, "force" (held-out force MSE), "dihedral" (of their components along the
        ``score_dihedrals``) or "auto" (dihedral when there is one); both are recorded (:mod:`cgdml.selection`).
    chiral, dihedrals, chiral_scale : the descriptor's dihedral sines, as in :class:`cgdml.gdml.GDML`;
        ``score_dihedrals`` (n, 4) the dihedrals of the score (None: consecutive beads).
    inducing : "stratified" (uniform over the ``groups`` given to fit) or "random".
    tol, maxiter : CG tolerance (relative residual of the normal equations) and iteration cap.
    chunk : frames per streamed block; precond_frames : the sampled frames s of the preconditioner (None:
        :func:`cgdml.linalg.default_precond_frames`).
    dtype : "float64" or "float32", the precision of the streamed products' GEMMs: float32 iterations are about
        twice as fast, and float64 refinement (:func:`cgdml.linalg.refine`) brings the solution to the float64
        tolerance.
    seed : picks the hold-out, the inducing frames and the preconditioner sample.
    workdir : keeps the hold-out scores and the final CG iterate (every ``checkpoint_s`` seconds), so that an
        interrupted fit resumes. progress : CG progress bars.

    Learned: ``model_``, ``inducing_index_`` (m,), ``coef_`` (m r,), ``lam_`` (absolute), ``cg_iterations_``,
    ``residual_`` (relative, of the float64 system), ``cg_refinements_`` (float64 refinement steps of a float32
    fit), ``selection_scores_`` (the hold-out table, empty without candidates), ``selection_`` (how the winner was
    chosen: :func:`cgdml.selection.decide`'s record, None without candidates), ``timings_`` (s), ``summary_``.
    """

    _parameter_constraints = {
        "n_inducing": [Interval(int, 1), Options(("auto",))], "sigma": [Grid(SIGMA)], "lam": [Grid(POSITIVE)],
        "chiral": [bool], "dihedrals": [None, "array-like"], "chiral_scale": [POSITIVE],
        "inducing": [Options(INDUCING)], "cv_score": [Options(SCORES)], "score_dihedrals": [None, "array-like"],
        "holdout": [Interval(float, 0, 1, "neither")], "select_frames": [Interval(int, 2)],
        "select_inducing": [Interval(int, 1)], "tol": [POSITIVE], "maxiter": [Interval(int, 1)],
        "chunk": [Interval(int, 1)], "precond_frames": [None, Interval(int, 1)], "dtype": [Options(DTYPES)],
        "seed": [SEED], "workdir": [None, object], "checkpoint_s": [Interval(float, 0)],
        "progress": [bool]}

    def __init__(self, n_inducing="auto", sigma=(2.0, 4.0, 8.0), lam=(0.3, 1.0, 3.0), cv_score="force", chiral=True,
                 dihedrals=None, chiral_scale=1.0, score_dihedrals=None, inducing="stratified", holdout=0.1,
                 select_frames=100_000, select_inducing=500, tol=1e-4, maxiter=500, chunk=8192, precond_frames=None,
                 dtype="float64", seed=0, workdir=None, checkpoint_s=30.0, progress=True):
        self.n_inducing = n_inducing
        self.sigma = sigma
        self.lam = lam
        self.cv_score = cv_score
        self.chiral = chiral
        self.dihedrals = dihedrals
        self.chiral_scale = chiral_scale
        self.score_dihedrals = score_dihedrals
        self.inducing = inducing
        self.holdout = holdout
        self.select_frames = select_frames
        self.select_inducing = select_inducing
        self.tol = tol
        self.maxiter = maxiter
        self.chunk = chunk
        self.precond_frames = precond_frames
        self.dtype = dtype
        self.seed = seed
        self.workdir = workdir
        self.checkpoint_s = checkpoint_s
        self.progress = progress

    def validate_params(self):
        """Check every parameter (:func:`cgdml.validation.check_params`); raises ParameterError."""
        check_params(self)

    def fit(self, R, F=None, groups=None):
        """Fit forces F (N, n_beads, 3) kJ/mol/nm at R (N, n_beads, 3) nm; ``groups`` (N,) are the strata that
        stratified inducing points are drawn from (None: uniform). Returns self."""
        learner_arrays("NystromGDML", R, F)
        self.validate_params()
        t0 = time.perf_counter()
        R, F = np.asarray(R), np.asarray(F)
        check_coords_forces(R[:1], F[:1])  # the shapes; every frame is checked as it is reduced
        if R.shape != F.shape:
            check_coords_forces(R, F)
        n_frames, n_beads = R.shape[:2]
        m = default_inducing(n_beads, n_frames) if self.n_inducing == "auto" else int(self.n_inducing)
        quads = dihedral_quads(n_beads, self.chiral, self.dihedrals)
        sigmas, lams = np.atleast_1d(self.sigma).astype(float), np.atleast_1d(self.lam).astype(float)
        self.timings_, self.selection_scores_, self.selection_ = {}, [], None
        score, soft = resolve_score(self.cv_score, self._score_quads(n_beads))
        self.cv_score_ = score
        chosen = (float(sigmas[0]), float(lams[0]))
        if len(sigmas) * len(lams) > 1:
            t = time.perf_counter()
            candidates = [(s, lam) for s in sigmas for lam in sorted(lams, reverse=True)]  # large lambda first
            table = self._select(R, F, groups, quads, m, candidates, score, soft)
            for _ in range(MAX_EXTENSIONS):   # a winner on an edge of the grid: search one step past it
                more = extension_candidates(table, decide(table)[0])
                if not more:
                    break
                table += [dict(entry, extension=True)
                          for entry in self._select(R, F, groups, quads, m, more, score, soft)]
            self.selection_scores_ = table
            winner, self.selection_ = decide(self.selection_scores_)
            chosen = (winner["sigma"], winner["lam"])
            self.timings_["selection_s"] = time.perf_counter() - t
        t = time.perf_counter()
        frames = ReducedFrames(R, F, quads, self.chiral_scale, self.chunk)
        self.timings_["descriptors_s"] = time.perf_counter() - t
        sol = self._solve(frames, groups, *chosen, m, workdir=self.workdir)
        self.timings_["final_fit_s"] = time.perf_counter() - t
        self.timings_.update({f"final_{k}": v for k, v in sol.timings.items()})
        self.timings_["total_s"] = time.perf_counter() - t0
        self.model_, self.coef_, self.inducing_index_, self.lam_ = sol.model, sol.coef, sol.index, sol.lam
        self.cg_iterations_, self.residual_, self.cg_refinements_ = sol.cg_iterations, sol.residual, sol.refinements
        self.summary_ = dict(method="Nyström GDML", cv_score=self.cv_score_, selection_scores=self.selection_scores_,
                             selection=self.selection_,
                             chosen=dict(sigma=chosen[0], lam=chosen[1], lam_absolute=sol.lam,
                                         n_inducing=len(sol.index), cg_iterations=int(sol.cg_iterations),
                                         residual=float(sol.residual)))
        return self

    def _score_quads(self, n_beads):
        """The dihedrals (n, 4) of the dihedral score: ``score_dihedrals``, or consecutive beads."""
        return chain_quads(n_beads) if self.score_dihedrals is None else as_quads(self.score_dihedrals, n_beads)

    def _select(self, R, F, groups, quads, m, candidates, score, soft):
        """The hold-out score table of the (sigma, lam) ``candidates`` (:func:`cgdml.selection.holdout_search`), by
        ``score`` ("force" or "dihedral", along the dihedrals ``soft``)."""
        val, train = holdout_split(len(R), self.holdout, self.select_frames, self.seed)
        frames = ReducedFrames(R[train], F[train], quads, self.chiral_scale, self.chunk)
        projection = score_projection(R[val], soft) if len(soft) else None
        sub_groups = np.asarray(groups)[train] if groups is not None else None
        m_select, warm = min(m, self.select_inducing), _WarmStart()

        def evaluate(sigma, lam):
            sol = self._solve(frames, sub_groups, sigma, lam, m_select, warm=warm)
            warm.x0 = sol.coef
            entry = holdout_scores(sol.model.predict_forces(R[val]), F[val], score, projection)
            log.info("Nyström selection: sigma %g lam %g: held-out MSE %.4g (kJ/mol/nm)^2, along the dihedrals "
                     "%.4g (kJ/mol/rad)^2", sigma, lam, entry["mse_force"], entry["mse_dihedral"])
            return dict(entry, cg_iterations=sol.cg_iterations, fit_s=sol.timings["total_s"])

        h = hashlib.sha256(np.ascontiguousarray(F[:: max(1, len(F) // 5000)], np.float32))
        h.update(np.ascontiguousarray(R[:: max(1, len(R) // 5000)], np.float32))
        if groups is not None:
            h.update(np.ascontiguousarray(groups, np.int64))
        h.update(json.dumps([len(R), m, int(self.select_inducing), int(self.select_frames), float(self.holdout),
                             self.inducing, quads.tolist(), soft.tolist(), float(self.chiral_scale), float(self.tol),
                             int(self.seed), score, self.dtype]).encode())
        return holdout_search(candidates, evaluate, WorkCache(self.workdir, h.hexdigest()[:16]))

    def _solve(self, frames, groups, sigma, lam, m, warm=None, workdir=None):
        """Solve the normal equations for one (sigma, lam) with m inducing frames of ``frames`` (a
        :class:`ReducedFrames`); ``warm`` (a :class:`_WarmStart`) shares iterates and preconditioners between the
        solves of a search, ``workdir`` keeps the CG iterate for resuming."""
        t0 = time.perf_counter()
        timings = {}
        idx = choose_inducing(frames.n_frames, m, groups, self.inducing, self.seed)
        lam_abs = float(lam) * frames.mean_diag(sigma)
        system = NormalEquations(frames, idx, sigma, lam_abs, self.chunk)
        fast = NormalEquations(frames, idx, sigma, lam_abs, self.chunk, np.float32) \
            if np.dtype(self.dtype) == np.float32 else system  # float32 iterations, float64 residuals
        t = time.perf_counter()
        small_lam = lam < SMALL_LAM   # nearly noise-free labels: the preconditioner carries the system
        key = ("precond", float(sigma), m, self.inducing, self.seed, small_lam)
        base = warm.precond.get(key) if warm is not None else None
        if base is None:
            n_sample = min(frames.n_frames, int(self.precond_frames or default_precond_frames(
                frames.n_frames, system.m, frames.D.shape[1], frames.r,
                min_frames=2 * system.m if small_lam else None)))
            sample = np.sort(np.random.default_rng([self.seed, 0x9C]).choice(frames.n_frames, n_sample,
                                                                              replace=False))
            base = SampledPreconditioner.factor(system, sample)
            if warm is not None:
                warm.precond.clear()  # one sigma at a time: each entry holds 2 (m r)^2 floats
                warm.precond[key] = base
        precond = SampledPreconditioner(base, lam_abs)
        del base  # (G, K_mm): 2 (m r)^2 doubles that CG does not need (``warm`` keeps its own reference)
        b = system.rhs()
        timings["setup_s"] = time.perf_counter() - t
        ckpt = self._checkpoint_path(frames, idx, sigma, lam, workdir)
        state = None
        if ckpt is not None and ckpt.exists():
            f = Fields(load_npz(ckpt, "Nyström checkpoint", fix="delete it (the fit recomputes it)"))
            try:
                state = {key: f.get(key, lambda v: as_array(v, shape=b.shape)) for key in ("x", "r", "p")}
                state.update(rz=f.get("rz", as_float), k=f.get("k", as_int))
            except CgdmlError as exc:
                raise CgdmlError(f"{ckpt}: damaged fit checkpoint: {exc}; delete it (the fit recomputes it)") \
                    from None
            log.info("resuming Nyström CG at iteration %d from %s", int(state["k"]), ckpt)
        last_save = [time.perf_counter()]

        def checkpoint(cg_state):
            if ckpt is not None and time.perf_counter() - last_save[0] >= self.checkpoint_s:
                save_npz(ckpt, **cg_state)
                last_save[0] = time.perf_counter()

        t = time.perf_counter()
        x0 = warm.start(sigma) if warm is not None else None
        a, iterations, residual = pcg(fast.matvec, b, precond, x0=x0, tol=self.tol, maxiter=int(self.maxiter),
                                      callback=checkpoint, state=state, progress=self.progress)
        refinements = 0
        if fast is not system:
            a, k, residual, refinements = refine(system.matvec, fast.matvec, b, precond, a, self.tol,
                                                 max(1, int(self.maxiter) - iterations))
            iterations += k
        timings["cg_s"] = time.perf_counter() - t
        if residual > self.tol:
            warnings.warn(f"Nyström CG stopped after {iterations} iterations at relative residual {residual:.2g} > "
                          f"{self.tol:g}", RuntimeWarning, stacklevel=3)
        model = GDMLModel(system.Dm, system.coefficients(a), sigma, frames.quads, frames.chiral_scale, 0.0,
                          frames.n_beads)
        timings["total_s"] = time.perf_counter() - t0
        log.info("Nyström GDML: %d frames, m = %d, %d CG iterations (%s, %d refinements), residual %.1e, %.1f s",
                 frames.n_frames, system.m, iterations, np.dtype(self.dtype).name, refinements, residual,
                 timings["total_s"])
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        return _Solution(model, a, idx, lam_abs, iterations, residual, refinements, timings)

    def _checkpoint_path(self, frames, idx, sigma, lam, workdir):
        if workdir is None:
            return None
        h = hashlib.sha256()
        for arr in (frames.D[idx], frames.y[:: max(1, frames.n_frames // 1000)]):
            h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
        key = [frames.n_frames, float(sigma), float(lam), frames.quads.tolist(), frames.chiral_scale]
        if np.dtype(self.dtype) != np.float64:  # float64 keeps the key of earlier versions
            key.append(np.dtype(self.dtype).name)
        h.update(json.dumps(key).encode())
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return Path(workdir) / f"nystrom_cg_{h.hexdigest()[:16]}.npz"



def compress(model, R, n_inducing="auto", lam=1e-5, tol=1e-5, maxiter=1000, seed=0, check_frames=2000):
    """A model whose GDML term is refitted onto ``n_inducing`` configurations: cheaper to evaluate, nearly the same
    force field.

    The new term is the inducing-point least-squares fit (:class:`NystromGDML` at the model's sigma, quadruples and
    chiral scale, ``lam`` relative and small: its labels are noise-free) to the model's own GDML forces at the
    configurations R (N, n_beads, 3) nm, e.g. the training frames; its energy offset matches the old one on
    average over R. The prediction cost grows with the configuration count, so a two-layer model's 2000 mean-force
    configurations compressed onto the inducing-point default (:func:`default_inducing`) simulate about as fast
    as an inducing-point model (accuracy and landscapes: benchmarks/results/bench_beads.md).

    ``model``: a :class:`cgdml.model.CGModel` (returned as a copy with the new GDML term, its fit record extended
    with ``compressed``; prior, offsets and force posterior are kept: the posterior describes the training data,
    which the new term was fitted to reproduce) or a :class:`GDMLModel`. ``n_inducing``: m, or "auto". ``check_frames``: up to this many
    frames of R (evenly spaced) give the record's ``relative_rms_difference`` of the GDML forces, new against old.
    """
    import copy

    from .data import as_coordinates
    from .model import CGModel

    cg = model if isinstance(model, CGModel) else None
    g = model.gdml if cg is not None else model
    if not isinstance(g, GDMLModel):
        raise CgdmlError(f"compress takes a CGModel or a GDMLModel, got {type(model).__name__}")
    R = as_coordinates(R, g.n_beads, "compress")
    m = default_inducing(g.n_beads, len(R)) if n_inducing == "auto" else int(n_inducing)
    if not 1 <= m < g.n_train:
        raise CgdmlError(f"n_inducing must be between 1 and the model's {g.n_train - 1} (fewer configurations than "
                         f"it has), got {n_inducing!r}")
    t0 = time.perf_counter()
    est = NystromGDML(n_inducing=m, sigma=g.sigma, lam=lam, dihedrals=g.quads, chiral_scale=g.chiral_scale,
                      inducing="random", tol=tol, maxiter=maxiter, dtype="float32", seed=seed,
                      progress=False).fit(R, g.predict_forces(R))
    new = est.model_
    check = R[np.linspace(0, len(R) - 1, min(len(R), int(check_frames))).astype(int)]
    E_old, F_old = g.predict(check, precision="float64")
    E_new, F_new = new.predict(check, precision="float64")
    new = GDMLModel(new.train_descriptors, new.coefficients, new.sigma, new.quads, new.chiral_scale,
                    float(np.mean(E_old - E_new)), new.n_beads, g.precision)
    if cg is None:
        return new
    record = dict(from_configurations=g.n_train, n_inducing=m, n_frames=len(R), lam=float(lam),
                  lam_absolute=float(est.lam_), cg_iterations=int(est.cg_iterations_),
                  relative_rms_difference=float(np.sqrt(np.mean((F_new - F_old) ** 2) / np.mean(F_old ** 2))),
                  seconds=time.perf_counter() - t0)
    out = copy.copy(cg)
    out.gdml, out.info = new, dict(cg.info, compressed=record)
    return out
