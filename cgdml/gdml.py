"""GDML force-field estimator: fit bead forces with the Hessian of a Matérn 5/2 descriptor kernel.

Training solves (K + lambda I) alpha = F in the reduced space of each frame's descriptor Jacobian: with the
thin SVD J_j = U_j S_j V_j^T (rank r = 3N - 6, rigid motions removed), the system becomes
(K~ + lambda I) a = V^T F with blocks K~_ij = S_i U_i^T Hc(d_ij) U_j S_j, and the model keeps only the
descriptor-space vectors v_j = J_j alpha_j = U_j S_j a_j. The null-space part of alpha (F_null / lambda) is
annihilated by J, so predictions are identical to the full solve while the Cholesky costs (r / 3N)^3 as much.
Large sets use matrix-free conjugate gradients with a Nyström preconditioner (never storing K).

Units: coordinates nm, forces kJ/mol/nm, energies kJ/mol; sigma is in descriptor units (nm^-1).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from sklearn.base import BaseEstimator
from tqdm import tqdm

from . import kernels
from ._io import CgdmlError, load_npz, save_npz
from .data import as_coordinates
from .features import descriptor, descriptor_jacobian, descriptor_vjp, n_descriptors

FORMAT = "cgdml.gdml"
VERSION = 1
_MAX_LAMBDA_RETRIES = 4


def reduced_rank(n_beads: int, n_desc: int) -> int:
    """Rank kept per frame: 3N - 6 internal degrees of freedom (1 for a dimer), at most n_desc."""
    return min(n_desc, 3 * n_beads - 6 if n_beads >= 3 else 1)


def reduce_frames(R, F, chiral=True, chiral_scale=1.0):
    """Each frame in its reduced basis: descriptors D (M, nd), W = U S (M, nd, r), forces y = V^T F (M, r)
    from the thin SVD J = U S V^T of the descriptor Jacobian, and sum |J|^2 (for mean(diag K)).

    R, F (M, n_beads, 3) in nm and kJ/mol/nm, already checked by :func:`_check_RF`.
    """
    M, N = R.shape[:2]
    D, J = descriptor_jacobian(R, chiral, chiral_scale)
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


def _check_RF(R, F=None, E=None):
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[2] != 3 or R.shape[1] < 2 or R.shape[0] < 1:
        raise CgdmlError(f"coordinates must be shaped (n_frames, n_beads>=2, 3), got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise CgdmlError("coordinates contain NaN or infinite values")
    if F is not None:
        F = np.asarray(F, dtype=np.float64)
        if F.shape != R.shape:
            raise CgdmlError(f"forces shaped {F.shape} do not match coordinates shaped {R.shape}")
        if not np.all(np.isfinite(F)):
            raise CgdmlError("forces contain NaN or infinite values")
    if E is not None:
        E = np.asarray(E, dtype=np.float64).reshape(-1)
        if E.shape[0] != R.shape[0]:
            raise CgdmlError(f"{E.shape[0]} energies given for {R.shape[0]} frames")
    return R, F, E


class GDML(BaseEstimator):
    """Gradient-domain machine learning of a conservative force field on bead coordinates.

    Parameters: ``sigma`` kernel length scale (nm^-1, descriptor units); ``lam`` ridge regularisation, absolute
    ((kJ/mol/nm)^2-free: it adds to K's diagonal) or, with ``relative_lam=True``, relative to mean(diag K);
    ``chiral``/``chiral_scale`` add scaled dihedral sines to the descriptor; ``solver`` is "auto", "cholesky"
    or "cg"; "auto" takes CG for large, well-conditioned systems (relative lam >= 1e-2) and otherwise
    Cholesky when the reduced K fits ``memory_budget_gb``, which also bounds the CG
    preconditioner; ``cg_tol``/``cg_maxiter`` control CG; ``n_inducing`` is the number of Nyström frames
    (default: about 1200 / r frames, within the memory budget).

    Learned: ``D_train_`` (M, n_desc) training descriptors, ``V_`` (M, n_desc) descriptor-space coefficients,
    ``lam_`` absolute lambda used, ``c_`` energy offset (kJ/mol), ``n_train_``, ``n_beads_``, ``solver_``,
    ``cg_iterations_``, ``timings_`` (seconds per fit stage; not saved).
    """

    def __init__(self, sigma=2.0, lam=1e-10, relative_lam=False, chiral=True, chiral_scale=1.0,
                 solver="auto", memory_budget_gb=4.0, cg_tol=1e-6, cg_maxiter=2000, n_inducing=None,
                 verbose=False):
        self.sigma = sigma
        self.lam = lam
        self.relative_lam = relative_lam
        self.chiral = chiral
        self.chiral_scale = chiral_scale
        self.solver = solver
        self.memory_budget_gb = memory_budget_gb
        self.cg_tol = cg_tol
        self.cg_maxiter = cg_maxiter
        self.n_inducing = n_inducing
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------------ fit
    def _log(self, msg):
        if self.verbose:
            print(f"[GDML] {msg}", flush=True)

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
        R, F, E = _check_RF(R, F, E)
        M, N = R.shape[:2]
        t0 = time.perf_counter()
        self.timings_ = {}
        D, W, y, sq_jacobian = reduce_frames(R, F, self.chiral, self.chiral_scale)
        r = W.shape[2]
        y = y.ravel()
        mean_diag = 5.0 / (3.0 * self.sigma ** 2) * sq_jacobian / (M * 3 * N)
        lam = float(self.lam) * (mean_diag if self.relative_lam else 1.0)
        self.timings_["descriptors"] = time.perf_counter() - t0
        self._log(f"{M} frames, {N} beads, reduced size {M * r}, lambda {lam:.3g}, "
                  f"descriptors {time.perf_counter() - t0:.2f} s")

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
        self.D_train_ = D
        self.V_ = np.einsum("mdr,mr->md", W, a.reshape(M, r))
        self.n_train_ = M
        self.n_beads_ = N
        self._prepare()
        self.c_ = 0.0
        if E is not None:
            self.c_ = float(np.mean(E - self.predict(R)[0]))
        self.timings_["total"] = time.perf_counter() - t0
        self._log(f"fit done in {time.perf_counter() - t0:.2f} s ({solver})")
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
                if n > 8192:
                    c = (cholesky_upper_inplace(K.T), False)
                else:
                    c = scipy.linalg.cho_factor(K.T, lower=False, overwrite_a=True, check_finite=False)
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
            self._log(f"assembly {t1 - t0:.2f} s, Cholesky {t2 - t1:.2f} s")
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
        bar = tqdm(total=int(self.cg_maxiter), desc="GDML CG", leave=False, disable=not self.verbose)

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
        self._log(f"CG setup {t1 - t0:.2f} s ({m} inducing frames), {count[0]} iterations "
                  f"{time.perf_counter() - t1:.2f} s")
        return a, lam

    # -------------------------------------------------------------------------------------------- predict
    def _prepare(self):
        self._tables = kernels.TrainTables(self.D_train_, self.V_, self.sigma)
        self._sqt = np.einsum("md,md->m", self.D_train_, self.D_train_)

    def _check_fitted(self, R):
        if not hasattr(self, "V_"):
            raise CgdmlError("GDML model is not fitted yet: call fit() first")
        return as_coordinates(R, self.n_beads_, "GDML model")

    def _g(self, R, energy):
        D = descriptor(R, self.chiral, self.chiral_scale)
        return kernels.hessian_apply(D, self._tables, energy=energy)

    def predict(self, R):
        """Energies (n,) kJ/mol (up to a constant unless fitted with E) and forces (n, n_beads, 3) kJ/mol/nm."""
        R = self._check_fitted(R)
        g, E = self._g(R, True)
        return E + self.c_, descriptor_vjp(R, g, self.chiral, self.chiral_scale)

    def predict_forces(self, R):
        """Forces (n, n_beads, 3) kJ/mol/nm at R (n, n_beads, 3) nm, without energies (simulation path)."""
        R = self._check_fitted(R)
        g, _ = self._g(R, False)
        return descriptor_vjp(R, g, self.chiral, self.chiral_scale)

    def nearest_train_distance(self, R, chunk=1024):
        """Descriptor-space distance (n,) from each configuration to its nearest training configuration."""
        R = self._check_fitted(R)
        D = descriptor(R, self.chiral, self.chiral_scale)
        out = np.empty(D.shape[0])
        for b0 in range(0, D.shape[0], chunk):
            x = D[b0:b0 + chunk]
            r2 = np.einsum("bd,bd->b", x, x)[:, None] + self._sqt[None, :] - 2.0 * (x @ self.D_train_.T)
            out[b0:b0 + chunk] = np.sqrt(np.maximum(r2.min(axis=1), 0.0))
        return out

    # ---------------------------------------------------------------------------------------- persistence
    _HYPER = ("sigma", "lam", "relative_lam", "chiral", "chiral_scale", "solver", "memory_budget_gb",
              "cg_tol", "cg_maxiter", "n_inducing", "verbose")

    def to_arrays(self):
        """All parameters and learned state as a dict of numpy arrays (no pickles), for embedding in an npz."""
        if not hasattr(self, "V_"):
            raise CgdmlError("GDML model is not fitted yet: nothing to save")
        out = {"format": np.array(FORMAT), "version": np.array(VERSION)}
        for name in self._HYPER:
            value = getattr(self, name)
            out[name] = np.array(-1 if value is None else value)
        out.update(lam_=np.array(self.lam_), c_=np.array(self.c_), D_train_=self.D_train_, V_=self.V_,
                   n_beads_=np.array(self.n_beads_), solver_=np.array(self.solver_),
                   cg_iterations_=np.array(self.cg_iterations_))
        return out

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild a fitted model from :meth:`to_arrays` output; raises CgdmlError on foreign or newer data."""
        try:
            fmt = str(arrays["format"])
            version = int(arrays["version"])
        except (KeyError, TypeError, ValueError):
            raise CgdmlError("not a cgdml GDML model (format tag missing)") from None
        if fmt != FORMAT:
            raise CgdmlError(f"not a cgdml GDML model (format {fmt!r})")
        if version > VERSION:
            raise CgdmlError(f"GDML model format version {version} is newer than this cgdml "
                             f"(reads up to {VERSION}); upgrade cgdml")
        try:
            kw = {}
            for name in cls._HYPER:
                v = arrays[name].item()
                kw[name] = None if name == "n_inducing" and v == -1 else v
            types = dict(sigma=float, lam=float, relative_lam=bool, chiral=bool, chiral_scale=float, solver=str,
                         memory_budget_gb=float, cg_tol=float, cg_maxiter=int, verbose=bool)
            kw = {k: (types[k](v) if k in types else None if v is None else int(v)) for k, v in kw.items()}
            model = cls(**kw)
            model._check_params()
            if not np.isfinite(model.chiral_scale):
                raise ValueError(f"chiral_scale {model.chiral_scale}")
            model.lam_ = float(arrays["lam_"])
            model.c_ = float(arrays["c_"])
            model.D_train_ = np.ascontiguousarray(arrays["D_train_"], dtype=np.float64)
            model.V_ = np.ascontiguousarray(arrays["V_"], dtype=np.float64)
            model.n_beads_ = int(arrays["n_beads_"])
            model.solver_ = str(arrays["solver_"])
            model.cg_iterations_ = int(arrays["cg_iterations_"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CgdmlError(f"incomplete or damaged GDML model ({type(exc).__name__}: {exc})") from None
        nd = n_descriptors(model.n_beads_, model.chiral)
        if model.D_train_.ndim != 2 or model.D_train_.shape[1] != nd or model.V_.shape != model.D_train_.shape:
            raise CgdmlError(f"damaged GDML model: training arrays shaped {model.D_train_.shape} and "
                             f"{model.V_.shape}, expected (M, {nd})")
        model.n_train_ = model.D_train_.shape[0]
        model._prepare()
        return model

    def save(self, path):
        """Write the model to a versioned ``.npz`` (atomically)."""
        save_npz(path, **self.to_arrays())

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; a bad, damaged or newer file raises CgdmlError naming it."""
        arrays = load_npz(path, what="GDML model")
        try:
            return cls.from_arrays(arrays)
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
