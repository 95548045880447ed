"""GDML force-field estimator: fit bead forces with the Hessian of a Matérn 5/2 descriptor kernel.

Training solves (K + lambda I) alpha = F in the reduced space of each frame's descriptor Jacobian: with the
thin SVD J_j = U_j S_j V_j^T (rank r = 3N - 6, rigid motions removed), the system becomes
(K~ + lambda I) a = V^T F with blocks K~_ij = S_i U_i^T Hc(d_ij) U_j S_j, and the model keeps only the
descriptor-space vectors v_j = J_j alpha_j = U_j S_j a_j. The null-space part of alpha (F_null / lambda) is
annihilated by J, so predictions are identical to the full solve while the Cholesky costs (r / 3N)^3 as much.
Large sets use matrix-free conjugate gradients with a Nyström preconditioner (never storing K; the linear
algebra is :mod:`cgdml.linalg`). The fitted result is a :class:`cgdml.model.GDMLModel`, which predicts, saves and
loads; the estimator holds only the hyperparameters and the solvers. Like the other learners
(:class:`cgdml.nystrom.NystromGDML`, :class:`cgdml.ensemble.TwoLayerGDML`) it fits arrays with ``fit(R, F)``;
:class:`cgdml.pipeline.CGEstimator` adds the prior and the CG system around it (``method="single"``).

Units: coordinates nm, forces kJ/mol/nm, energies kJ/mol; sigma is in descriptor units (nm^-1).
"""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from . import kernels
from ._io import CgdmlError
from .data import check_coords_forces, learner_arrays
from .features import as_quads, chain_quads, descriptor_jacobian, reduce_frames, reduced_rank  # noqa: F401
from .linalg import cholesky_upper, gdml_preconditioner, gdml_preconditioner_base
from .model import GDMLModel
from .validation import SIGMA, Interval, Options, check_params

POSITIVE = Interval(float, 0, None, "neither")  # a finite number > 0

_MAX_LAMBDA_RETRIES = 4
# A lambda path solves its dense (Cholesky) lambdas from one eigendecomposition when it has at least this many: a
# symmetric eigendecomposition costs about 17 Cholesky factorisations of the same matrix (scipy's evd driver, one
# thread, n = 3000: benchmarks/results/bench_fit_speed.md), each further lambda then O(n^2).
EIGH_MIN_LAMBDAS = 20
log = logging.getLogger(__name__)


def dihedral_quads(n_beads, chiral=True, dihedrals=None):
    """The (n_quads, 4) bead quadruples whose sines join the descriptor: ``dihedrals`` when given (from the CG
    topology), else consecutive beads when ``chiral``, else none."""
    if dihedrals is not None:
        return as_quads(dihedrals, n_beads) if chiral else np.zeros((0, 4), dtype=np.int64)
    return chain_quads(n_beads) if chiral else np.zeros((0, 4), dtype=np.int64)


def mean_kernel_diagonal(sigma, mean_sq_jacobian):
    """mean(diag K) of the full-space force kernel, what a relative lambda scales: Hc(0) = 5 / (3 sigma^2) I, so
    it is 5 / (3 sigma^2) times the mean squared Jacobian entry per force component."""
    return 5.0 / (3.0 * sigma ** 2) * mean_sq_jacobian


class PredictsWithModel:
    """``predict`` and ``predict_forces`` of a fitted learner: those of its ``model_`` (a
    :class:`cgdml.model.GDMLModel`), after checking that it was fitted."""

    def predict(self, R):
        """Energies (n,) kJ/mol (up to a constant) and forces (n, n_beads, 3) kJ/mol/nm of the fitted model at R
        (n, n_beads, 3) nm."""
        check_is_fitted(self, "model_")
        return self.model_.predict(R)

    def predict_forces(self, R):
        """Forces (n, n_beads, 3) kJ/mol/nm of the fitted model at R (n, n_beads, 3) nm."""
        check_is_fitted(self, "model_")
        return self.model_.predict_forces(R)


class GDML(PredictsWithModel, BaseEstimator):
    """Gradient-domain machine learning of a conservative force field on bead coordinates (an estimator).

    Parameters: ``sigma`` kernel length scale (nm^-1, descriptor units); ``lam`` ridge regularisation, absolute
    (it adds to K's diagonal) or, with ``relative_lam=True``, relative to mean(diag K); ``chiral`` adds the
    sines of dihedral quadruples to the descriptor: ``dihedrals`` (n_quads, 4) from the CG topology, or
    consecutive beads when None; ``chiral_scale`` scales them; ``solver`` is "auto", "cholesky", "eigh" or "cg";
    "auto" takes CG for large, well-conditioned systems (relative lam >= 1e-2) and otherwise Cholesky when the
    reduced K fits ``memory_budget_gb``, which also bounds the CG preconditioner; "eigh" (a symmetric
    eigendecomposition, three times Cholesky's memory) serves every lambda of :meth:`fit_path` from one
    factorisation, and "auto" takes it for paths of :data:`EIGH_MIN_LAMBDAS` or more dense lambdas that fit;
    ``cg_tol``/``cg_maxiter`` control CG; ``precond_frames`` is the number of Nyström frames of the CG
    preconditioner (default: about 1200 / r frames, within the memory budget).

    Learned: ``model_`` (a :class:`cgdml.model.GDMLModel`), ``lam_`` the absolute lambda used, ``n_train_``,
    ``solver_``, ``cg_iterations_``, ``timings_`` (seconds per fit stage), ``summary_`` (what a fit record keeps).
    """

    _parameter_constraints = {
        "sigma": [SIGMA], "lam": [POSITIVE], "relative_lam": [bool], "chiral": [bool],
        "dihedrals": [None, "array-like"], "chiral_scale": [POSITIVE],
        "solver": [Options(("auto", "cholesky", "eigh", "cg"))],
        "memory_budget_gb": [POSITIVE], "cg_tol": [POSITIVE], "cg_maxiter": [Interval(int, 1)],
        "precond_frames": [None, Interval(int, 1)]}

    def __init__(self, sigma=2.0, lam=1e-10, relative_lam=False, chiral=True, dihedrals=None, chiral_scale=1.0,
                 solver="auto", memory_budget_gb=4.0, cg_tol=1e-6, cg_maxiter=2000, precond_frames=None):
        self.sigma = sigma
        self.lam = lam
        self.relative_lam = relative_lam
        self.chiral = chiral
        self.dihedrals = dihedrals
        self.chiral_scale = chiral_scale
        self.solver = solver
        self.memory_budget_gb = memory_budget_gb
        self.cg_tol = cg_tol
        self.cg_maxiter = cg_maxiter
        self.precond_frames = precond_frames

    # ------------------------------------------------------------------------------------------------ fit
    def validate_params(self):
        """Check every parameter (:func:`cgdml.validation.check_params`); raises ParameterError."""
        check_params(self)

    def fit(self, R, F=None, E=None, groups=None):
        """Fit forces F (n, n_beads, 3) kJ/mol/nm at coordinates R (n, n_beads, 3) nm; E (n,) fixes the offset.

        ``groups`` (strata of the frames) is part of the learners' common contract and unused here. Returns self.
        """
        learner_arrays("GDML", R, F)
        self.validate_params()
        R, F, E = check_coords_forces(R, F, E)
        t0 = time.perf_counter()
        self.timings_ = {}
        frames = self._reduce(R, F)
        (self.model_, record), = self._solve_path(frames, [float(self.lam)])
        self.solver_, self.lam_, self.cg_iterations_ = record["solver"], record["lam_absolute"], record["cg_iterations"]
        self.n_train_ = len(R)
        if E is not None:
            self.model_.offset = float(np.mean(E - self.model_.predict(R)[0]))
        self.timings_["total"] = time.perf_counter() - t0
        self.summary_ = dict(method="single GDML", chosen=dict(sigma=float(self.sigma), lam=float(self.lam),
                                                               lam_absolute=float(self.lam_), solver=self.solver_,
                                                               cg_iterations=int(self.cg_iterations_)))
        log.debug("fit done in %.2f s (%s)", time.perf_counter() - t0, self.solver_)
        return self

    def fit_path(self, R, F, lams):
        """One model per regularisation in ``lams`` (each as ``lam`` would be: relative with ``relative_lam``), on
        the same frames R, F (n, n_beads, 3) nm and kJ/mol/nm: a lambda path. Returns the list of
        :class:`cgdml.model.GDMLModel`, in the order of ``lams``; ``path_`` records each one's lambda, solver and
        CG iterations, ``timings_`` the shared and per-lambda stages (s).

        Each model equals that of ``fit`` with ``lam`` set to its value (the same solver and solution, to rounding
        for the dense solvers and within ``cg_tol`` for conjugate gradients), but the work that does not depend on
        lambda is done once: the frames' descriptors and reduced Jacobians, and for conjugate gradients the kernel
        operator and the lambda-free part of the preconditioner (benchmarks/results/bench_fit_speed.md).
        """
        learner_arrays("GDML", R, F)
        self.validate_params()
        lams = [float(v) for v in np.atleast_1d(lams)]
        if not lams or not all(np.isfinite(v) and v > 0 for v in lams):
            raise CgdmlError(f"fit_path needs positive finite lambdas, got {lams!r}")
        R, F, _ = check_coords_forces(R, F)
        self.timings_ = {}
        frames = self._reduce(R, F)
        out = self._solve_path(frames, lams)
        self.path_ = [dict(lam=lam, **record) for lam, (_, record) in zip(lams, out)]
        self.n_train_ = len(R)
        return [model for model, _ in out]

    def _reduce(self, R, F):
        """The frames in their reduced basis: (D, W, y (M r,), lambda scale, quads, n_beads)."""
        M, N = R.shape[:2]
        quads = dihedral_quads(N, self.chiral, self.dihedrals)
        t0 = time.perf_counter()
        D, W, y, sq_jacobian = reduce_frames(R, F, quads, self.chiral_scale)
        scale = mean_kernel_diagonal(self.sigma, sq_jacobian / (M * 3 * N)) if self.relative_lam else 1.0
        self.timings_["descriptors"] = time.perf_counter() - t0
        log.debug("%d frames, %d beads, reduced size %d, descriptors %.2f s", M, N, y.size, time.perf_counter() - t0)
        return D, W, y.ravel(), scale, quads, N

    def _solver_for(self, lam, M, r):
        """The solver of a fit with regularisation ``lam`` (as given, relative or absolute) on M frames of rank r."""
        if self.solver != "auto":
            return self.solver
        # Noisy (CG) labels need a large relative lambda, which makes K + lam I well conditioned: conjugate
        # gradients then converge in tens of iterations and beat an O((M r)^3) factorisation by far.
        well_conditioned = self.relative_lam and lam >= 1e-2 and M * r > 4000
        size_gb = (M * r) ** 2 * 8 / 1e9
        return "cholesky" if size_gb <= self.memory_budget_gb and not well_conditioned else "cg"

    def _solve_path(self, frames, lams):
        """[(GDMLModel, record)] for each lambda of ``lams`` on the reduced ``frames`` (see :meth:`_reduce`); the
        conjugate-gradient solves share the kernel operator and the preconditioner's lambda-free part."""
        D, W, y, scale, quads, N = frames
        M, _, r = W.shape
        shared = {}
        out = []
        solvers = [self._solver_for(lam, M, r) for lam in lams]
        if (self.solver == "auto" and sum(s == "cholesky" for s in solvers) >= EIGH_MIN_LAMBDAS
                and 3 * (M * r) ** 2 * 8 / 1e9 <= self.memory_budget_gb):
            solvers = ["eigh" if s == "cholesky" else s for s in solvers]
        for lam_given, solver in zip(lams, solvers):
            lam = lam_given * scale
            if solver == "cholesky":
                a, lam = self._solve_cholesky(D, W, y, lam)
            elif solver == "eigh":
                a, lam = self._solve_eigh(D, W, y, lam, shared)
            else:
                a, lam = self._solve_cg(D, W, y, lam, shared)
            model = GDMLModel(D, np.einsum("mdr,mr->md", W, a.reshape(M, r)), self.sigma, quads, self.chiral_scale,
                              0.0, N)
            out.append((model, dict(lam_absolute=float(lam), solver=solver, cg_iterations=int(self.cg_iterations_))))
        return out

    def _add_times(self, **seconds):
        for key, value in seconds.items():  # a lambda path adds up its solves' stages
            self.timings_[key] = self.timings_.get(key, 0.0) + value

    def _solve_cholesky(self, D, W, y, lam):
        n = y.shape[0]
        self.cg_iterations_ = 0
        for attempt in range(_MAX_LAMBDA_RETRIES + 1):
            t0 = time.perf_counter()
            K = kernels.assemble(D, W, self.sigma)  # lower block triangle, C order
            K.flat[:: n + 1] += lam
            t1 = time.perf_counter()
            try:
                # K.T is Fortran-ordered and its upper triangle is K's lower one: LAPACK works in place.
                c = (cholesky_upper(K.T), False)
            except np.linalg.LinAlgError:
                if attempt == _MAX_LAMBDA_RETRIES:
                    break
                warnings.warn(f"GDML kernel matrix not positive definite with lambda={lam:.3g}; "
                              f"retrying with lambda={10 * lam:.3g}", RuntimeWarning, stacklevel=3)
                lam *= 10.0
                continue
            t2 = time.perf_counter()
            a = scipy.linalg.cho_solve(c, y, check_finite=False)
            self._add_times(assembly=t1 - t0, factorization=t2 - t1, solve=time.perf_counter() - t2)
            log.debug("assembly %.2f s, Cholesky %.2f s", t1 - t0, t2 - t1)
            return a, lam
        raise CgdmlError(f"GDML kernel matrix is not positive definite even with lambda={lam:.3g}; "
                         "use a larger lam (or relative_lam=True) or check for duplicate frames")

    def _solve_eigh(self, D, W, y, lam, shared):
        """(K + lam I)^-1 y from one symmetric eigendecomposition K = Q diag(w) Q^T, computed at the first lambda
        of a path and kept in ``shared`` (with Q^T y) for the others: each further lambda costs O((M r)^2)."""
        self.cg_iterations_ = 0
        if "eigh" not in shared:
            t0 = time.perf_counter()
            K = kernels.assemble(D, W, self.sigma)  # lower block triangle, C order: K.T's upper one
            t1 = time.perf_counter()
            w, Q = scipy.linalg.eigh(K.T, lower=False, overwrite_a=True, check_finite=False, driver="evd")
            del K
            shared["eigh"] = (w, Q, Q.T @ y)
            self._add_times(assembly=t1 - t0, factorization=time.perf_counter() - t1)
        w, Q, Qty = shared["eigh"]
        # positive definite in floating point: what a Cholesky factorisation would need (within its rounding)
        floor = np.finfo(float).eps * max(abs(w[-1]), abs(w[0]))
        for _ in range(_MAX_LAMBDA_RETRIES):
            if w[0] + lam > floor:
                break
            warnings.warn(f"GDML kernel matrix not positive definite with lambda={lam:.3g}; "
                          f"retrying with lambda={10 * lam:.3g}", RuntimeWarning, stacklevel=4)
            lam *= 10.0
        if w[0] + lam <= floor:
            raise CgdmlError(f"GDML kernel matrix is not positive definite even with lambda={lam:.3g}; "
                             "use a larger lam (or relative_lam=True) or check for duplicate frames")
        t0 = time.perf_counter()
        a = Q @ (Qty / (w + lam))
        self._add_times(solve=time.perf_counter() - t0)
        return a, lam

    def _inducing_count(self, M, r):
        """Nyström frames of the preconditioner: precond_frames, or as many as keep m r <= 1200 (setup costs
        (m r)^2 M r flops) and the (M r, m r) preconditioner factor within 40% of the memory budget."""
        if self.precond_frames is not None:
            return int(np.clip(self.precond_frames, 1, M))
        fit = int(0.4 * self.memory_budget_gb * 1e9 / (8.0 * M * r * r))
        return max(1, min(M, 1200 // r, fit))

    def _solve_cg(self, D, W, y, lam, shared=None):
        """CG solve of (K + lam I) a = y; ``shared`` (a dict) keeps the kernel operator and the preconditioner's
        lambda-free part for the next lambda of a path."""
        t0 = time.perf_counter()
        shared = {} if shared is None else shared
        m = self._inducing_count(*W.shape[::2])
        if "op" not in shared:
            shared["op"] = kernels.ReducedKernelOperator(D, W, self.sigma)
            shared["precond"] = gdml_preconditioner_base(D, W, self.sigma, m)
        op = shared["op"]
        n = y.shape[0]
        A = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda x: op.matvec(x) + lam * np.ravel(x),
                                               dtype=np.float64)
        precond = gdml_preconditioner(D, W, self.sigma, lam, m, base=shared["precond"])
        t1 = time.perf_counter()
        count = [0]
        bar = tqdm(total=int(self.cg_maxiter), desc="GDML CG", leave=False, disable=not log.isEnabledFor(logging.DEBUG))

        def callback(_):
            count[0] += 1
            bar.update()

        a, info = scipy.sparse.linalg.cg(A, y, rtol=self.cg_tol, atol=0.0, maxiter=int(self.cg_maxiter),
                                         M=precond, callback=callback)
        bar.close()
        self.cg_iterations_ = count[0]
        self._add_times(cg_setup=t1 - t0, cg_iterations=time.perf_counter() - t1)
        if info != 0:
            res = np.linalg.norm(A.matvec(a) - y) / np.linalg.norm(y)
            warnings.warn(f"GDML conjugate gradients stopped after {count[0]} iterations at relative residual "
                          f"{res:.2g} > {self.cg_tol:g}; consider a larger lam", RuntimeWarning, stacklevel=3)
        log.debug("CG setup %.2f s (%d inducing frames), %d iterations %.2f s", t1 - t0, m, count[0],
                  time.perf_counter() - t1)
        return a, lam

