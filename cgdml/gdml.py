"""GDML force-field estimator: fit bead forces with the Hessian of a Matérn 5/2 descriptor kernel.

Training solves (K + lambda I) alpha = F in the reduced space of each frame's descriptor Jacobian: with the
thin SVD J_j = U_j S_j V_j^T (rank r = 3N - 6, rigid motions removed), the system becomes
(K~ + lambda I) a = V^T F with blocks K~_ij = S_i U_i^T Hc(d_ij) U_j S_j, and the model keeps only the
descriptor-space vectors v_j = J_j alpha_j = U_j S_j a_j. The null-space part of alpha (F_null / lambda) is
annihilated by J, so predictions are identical to the full solve while the Cholesky costs (r / 3N)^3 as much.
Large sets use matrix-free conjugate gradients with a Nyström preconditioner (never storing K). The fitted
result is a :class:`cgdml.model.GDMLModel`, which predicts, saves and loads; the estimator holds only the
hyperparameters and the solvers.

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
from tqdm import tqdm

from . import kernels
from ._io import CgdmlError
from .data import check_coords_forces
from .features import as_quads, chain_quads, descriptor_jacobian
from .model import GDMLModel

_MAX_LAMBDA_RETRIES = 4
log = logging.getLogger(__name__)


def reduced_rank(n_beads: int, n_desc: int) -> int:
    """Rank kept per frame: 3N - 6 internal degrees of freedom (1 for a dimer), at most n_desc."""
    return min(n_desc, 3 * n_beads - 6 if n_beads >= 3 else 1)


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


def cholesky_upper(A):
    """Upper Cholesky factor of the symmetric matrix A (its upper triangle is read; A may be overwritten),
    Fortran-ordered for LAPACK's potrs; use it as ``scipy.linalg.cho_solve((c, False), b)``.

    Large matrices go through :func:`cholesky_upper_inplace`; a C-ordered factor would make every cho_solve
    copy it (1 s instead of 0.09 s at size 6000). Raises numpy.linalg.LinAlgError if A is not positive definite.
    """
    A = np.asfortranarray(A)
    if A.shape[0] > 8192:
        return cholesky_upper_inplace(A)
    return scipy.linalg.cho_factor(A, lower=False, overwrite_a=True, check_finite=False)[0]


def reduce_frames(R, F, quads=(), chiral_scale=1.0):
    """Each frame in its reduced basis: descriptors D (M, nd), W = U S (M, nd, r), forces y = V^T F (M, r)
    from the thin SVD J = U S V^T of the descriptor Jacobian, and sum |J|^2 (for mean(diag K)).

    R, F (M, n_beads, 3) in nm and kJ/mol/nm, already checked by :func:`cgdml.data.check_coords_forces`;
    quads (n_quads, 4) the dihedral quadruples of the descriptor.
    """
    M, N = R.shape[:2]
    D, J = descriptor_jacobian(R, quads, chiral_scale)
    if not np.all(np.isfinite(J)):
        raise CgdmlError("descriptor undefined for some frame (overlapping or collinear beads)")
    r = reduced_rank(N, D.shape[1])
    U, S, Vh = np.linalg.svd(J, full_matrices=False)
    W = U[:, :, :r] * S[:, None, :r]
    y = np.einsum("mkc,mc->mk", Vh[:, :r], F.reshape(M, -1))
    return D, W, y, float(np.sum(J * J))


def cholesky_upper_inplace(A, block=2048):
    """Upper Cholesky factor of the F-ordered symmetric matrix A (upper triangle used), in place; returns A.

    Right-looking blocked algorithm: LAPACK potrf on diagonal blocks, trsm on the block row and GEMM updates of
    the trailing matrix. Multi-threaded OpenBLAS potrf segfaults on this project's machines for n above
    ~15000 (reproducible with a bare scipy.linalg.cho_factor), while GEMM and small potrf calls are fine.
    Raises numpy.linalg.LinAlgError when A is not positive definite.
    """
    n = A.shape[0]
    potrf, = scipy.linalg.get_lapack_funcs(("potrf",), (A,))
    trsm, = scipy.linalg.get_blas_funcs(("trsm",), (A,))
    for k in range(0, n, block):
        e = min(k + block, n)
        c, info = potrf(A[k:e, k:e], lower=0, clean=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"leading minor of order {k + info} is not positive definite")
        A[k:e, k:e] = c
        if e == n:
            break
        X = trsm(1.0, c, A[k:e, e:], side=0, lower=0, trans_a=1, diag=0)  # U_kk^T X = A_k,rest
        A[k:e, e:] = X
        for j0 in range(e, n, block):
            j1 = min(j0 + block, n)
            A[e:j1, j0:j1] -= X[:, : j1 - e].T @ X[:, j0 - e:j1 - e]
    return A


class GDML(BaseEstimator):
    """Gradient-domain machine learning of a conservative force field on bead coordinates (an estimator).

    Parameters: ``sigma`` kernel length scale (nm^-1, descriptor units); ``lam`` ridge regularisation, absolute
    (it adds to K's diagonal) or, with ``relative_lam=True``, relative to mean(diag K); ``chiral`` adds the
    sines of dihedral quadruples to the descriptor: ``dihedrals`` (n_quads, 4) from the CG topology, or
    consecutive beads when None; ``chiral_scale`` scales them; ``solver`` is "auto", "cholesky" or "cg";
    "auto" takes CG for large, well-conditioned systems (relative lam >= 1e-2) and otherwise Cholesky when the
    reduced K fits ``memory_budget_gb``, which also bounds the CG preconditioner; ``cg_tol``/``cg_maxiter``
    control CG; ``n_inducing`` is the number of Nyström frames of the CG preconditioner (default: about
    1200 / r frames, within the memory budget).

    Learned: ``model_`` (a :class:`cgdml.model.GDMLModel`), ``lam_`` the absolute lambda used, ``n_train_``,
    ``solver_``, ``cg_iterations_``, ``timings_`` (seconds per fit stage).
    """

    def __init__(self, sigma=2.0, lam=1e-10, relative_lam=False, chiral=True, dihedrals=None, chiral_scale=1.0,
                 solver="auto", memory_budget_gb=4.0, cg_tol=1e-6, cg_maxiter=2000, n_inducing=None):
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
        self.n_inducing = n_inducing

    # ------------------------------------------------------------------------------------------------ fit
    def _check_params(self):
        if not (np.isfinite(self.sigma) and self.sigma > 0):
            raise CgdmlError(f"sigma must be positive, got {self.sigma!r}")
        if not (np.isfinite(self.lam) and self.lam > 0):
            raise CgdmlError(f"lam must be positive, got {self.lam!r}")
        if self.solver not in ("auto", "cholesky", "cg"):
            raise CgdmlError(f"solver must be 'auto', 'cholesky' or 'cg', got {self.solver!r}")

    def fit(self, R, F, E=None):
        """Fit forces F (n, n_beads, 3) kJ/mol/nm at coordinates R (n, n_beads, 3) nm; E (n,) fixes the offset."""
        self._check_params()
        R, F, E = check_coords_forces(R, F, E)
        M, N = R.shape[:2]
        quads = dihedral_quads(N, self.chiral, self.dihedrals)
        t0 = time.perf_counter()
        self.timings_ = {}
        D, W, y, sq_jacobian = reduce_frames(R, F, quads, self.chiral_scale)
        r = W.shape[2]
        y = y.ravel()
        lam = float(self.lam) * (mean_kernel_diagonal(self.sigma, sq_jacobian / (M * 3 * N))
                                 if self.relative_lam else 1.0)
        self.timings_["descriptors"] = time.perf_counter() - t0
        log.debug("%d frames, %d beads, reduced size %d, lambda %.3g, descriptors %.2f s", M, N, M * r, lam,
                  time.perf_counter() - t0)

        size_gb = (M * r) ** 2 * 8 / 1e9
        solver = self.solver
        if solver == "auto":
            # Noisy (CG) labels need a large relative lambda, which makes K + lam I well conditioned: conjugate
            # gradients then converge in tens of iterations and beat an O((M r)^3) factorisation by far.
            well_conditioned = self.relative_lam and self.lam >= 1e-2 and M * r > 4000
            solver = "cholesky" if size_gb <= self.memory_budget_gb and not well_conditioned else "cg"
        if solver == "cholesky":
            a, lam = self._solve_cholesky(D, W, y, lam)
        else:
            a, lam = self._solve_cg(D, W, y, lam)
        self.solver_ = solver
        self.lam_ = lam
        self.n_train_ = M
        self.model_ = GDMLModel(D, np.einsum("mdr,mr->md", W, a.reshape(M, r)), self.sigma, quads,
                                self.chiral_scale, 0.0, N)
        if E is not None:
            self.model_.offset = float(np.mean(E - self.model_.predict(R)[0]))
        self.timings_["total"] = time.perf_counter() - t0
        log.debug("fit done in %.2f s (%s)", time.perf_counter() - t0, solver)
        return self

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
            self.timings_.update(assembly=t1 - t0, factorization=t2 - t1, solve=time.perf_counter() - t2)
            log.debug("assembly %.2f s, Cholesky %.2f s", t1 - t0, t2 - t1)
            return a, lam
        raise CgdmlError(f"GDML kernel matrix is not positive definite even with lambda={lam:.3g}; "
                         "use a larger lam (or relative_lam=True) or check for duplicate frames")

    def _inducing_count(self, M, r):
        """Nyström frames: n_inducing, or as many as keep m r <= 1200 (setup costs (m r)^2 M r flops) and the
        (M r, m r) preconditioner factor within 40% of the memory budget."""
        if self.n_inducing is not None:
            return int(np.clip(self.n_inducing, 1, M))
        fit = int(0.4 * self.memory_budget_gb * 1e9 / (8.0 * M * r * r))
        return max(1, min(M, 1200 // r, fit))

    def _nystrom(self, D, W, lam, m):
        """Preconditioner: Nyström on m random inducing frames plus the exact per-frame diagonal blocks.

        P = B B^T + Lam with B = K_nm L^-T (K_mm = L L^T) and Lam_i = K_ii - B_i B_i^T + lam I (r x r blocks,
        a partially independent conditional). P^-1 by Woodbury: only B (M r x m r) and an (m r)^2 matrix are kept.
        """
        M, _, r = W.shape
        mr = m * r
        idx = np.sort(np.random.default_rng(0).choice(M, m, replace=False))
        Knm = kernels.assemble(D, W, self.sigma, D[idx], W[idx])  # (M r, m r)
        rows = (idx[:, None] * r + np.arange(r)).ravel()
        Kmm = Knm[rows].copy()
        Kmm.flat[:: mr + 1] += 1e-10 * np.mean(np.diag(Kmm))
        L = scipy.linalg.cholesky(Kmm, lower=True, overwrite_a=True, check_finite=False)
        B = scipy.linalg.solve_triangular(L, Knm.T, lower=True, overwrite_b=True, check_finite=False).T
        del Knm
        B3 = B.reshape(M, r, mr)
        Kii = 5.0 / (3.0 * self.sigma ** 2) * np.einsum("mdr,mds->mrs", W, W)  # Hc(0) = 5/(3 s^2) I
        lam_blocks = Kii - np.einsum("mrk,msk->mrs", B3, B3) + lam * np.eye(r)
        Linv = np.linalg.inv(lam_blocks)  # (M, r, r)
        inner = np.eye(mr)
        for c0 in range(0, M, 256):
            X = np.matmul(Linv[c0:c0 + 256], B3[c0:c0 + 256]).reshape(-1, mr)
            inner += B3[c0:c0 + 256].reshape(-1, mr).T @ X
        ci = scipy.linalg.cho_factor(inner, lower=True, overwrite_a=True, check_finite=False)

        def apply(x):
            z = np.matmul(Linv, np.asarray(x).reshape(M, r, 1)).ravel()
            w = B @ scipy.linalg.cho_solve(ci, B.T @ z, check_finite=False)
            return z - np.matmul(Linv, w.reshape(M, r, 1)).ravel()

        return scipy.sparse.linalg.LinearOperator((M * r, M * r), matvec=apply, dtype=np.float64)

    def _solve_cg(self, D, W, y, lam):
        t0 = time.perf_counter()
        op = kernels.ReducedKernelOperator(D, W, self.sigma)
        n = y.shape[0]
        A = scipy.sparse.linalg.LinearOperator((n, n), matvec=lambda x: op.matvec(x) + lam * np.ravel(x),
                                               dtype=np.float64)
        m = self._inducing_count(*W.shape[::2])
        precond = self._nystrom(D, W, lam, m)
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
        self.timings_.update(cg_setup=t1 - t0, cg_iterations=time.perf_counter() - t1)
        if info != 0:
            res = np.linalg.norm(A.matvec(a) - y) / np.linalg.norm(y)
            warnings.warn(f"GDML conjugate gradients stopped after {count[0]} iterations at relative residual "
                          f"{res:.2g} > {self.cg_tol:g}; consider a larger lam", RuntimeWarning, stacklevel=3)
        log.debug("CG setup %.2f s (%d inducing frames), %d iterations %.2f s", t1 - t0, m, count[0],
                  time.perf_counter() - t1)
        return a, lam

    # -------------------------------------------------------------------------------------------- predict
    def predict(self, R):
        """Energies (n,) kJ/mol and forces (n, n_beads, 3) kJ/mol/nm of the fitted model (see ``model_``)."""
        check_is_fitted(self, "model_")
        return self.model_.predict(R)

    def predict_forces(self, R):
        """Forces (n, n_beads, 3) kJ/mol/nm of the fitted model."""
        check_is_fitted(self, "model_")
        return self.model_.predict_forces(R)
