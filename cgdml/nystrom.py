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
Optionally (``dtype="float32"``) the GEMMs run in single precision, with float64 residuals (:func:`refine`).

Preconditioner: P = (N/s) K_mS K_Sm + lam K_mm with S a uniform random sample of s frames, an unbiased
estimate of the normal matrix in the spirit of Falkon (Rudi, Carratino and Rosasco, NeurIPS 2017), which takes
S = the inducing points. On 100k frames of the 6-bead data (m = 500, lam 0.3) Falkon's choice with stratified
inducing points left the residual at 1e-3 after 60 iterations; s = 2m converged to 1e-4 in 37, with a cheaper
setup. Larger s cuts the iterations further at a setup cost that does not grow with N, so the default s
(:func:`default_precond_frames`) grows with N / m. Each lambda costs one Cholesky factorisation of size m r.

Units: nm, kJ/mol/nm; sigma in descriptor units (nm^-1); lam relative to mean(diag K) as in GDML.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm import tqdm

from . import kernels
from ._io import CgdmlError, Fields, WorkCache, as_array, as_float, as_int, load_npz, save_npz
from .data import check_coords_forces
from .gdml import cholesky_upper, dihedral_quads, mean_kernel_diagonal, reduce_frames
from .geometry import dihedral_projection, project_forces, resolve_cv_score
from .model import CGModel, GDMLModel, fit_record
from .sampling import make_strata, stratified_batch

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


def default_precond_frames(n_frames, m, n_desc, r, products=24):
    """Sampled frames s of the :class:`SampledPreconditioner`: as many as make its setup (s r (m r)^2 flops of
    syrk) cost the flops of ``products`` normal-equation products (2 N m (7 n_desc + 9) each), at least 2 m and at
    most N. More frames cut the CG iterations (100k 6-bead frames, m = 500, lam 0.03: 52, 24, 16, 10 iterations
    with s = 1000, 2000, 4000, 8000), and syrk runs at about three times the flop rate of the streamed product, so
    the setup then costs about as much time as the iterations it leaves: s = 7500 for N = 1M, m = 500; 2m
    (the Falkon-like minimum) for N = 100k.
    """
    s = products * 2.0 * n_frames * m * (7 * n_desc + 9) / (r * (m * r) ** 2)
    return int(min(n_frames, max(2 * m, round(s))))


def syrk_upper(alpha, a, c, block=8192):
    """c += alpha a a^T on the upper triangle, in place: a (n, k) and c (n, n) Fortran-ordered float64.

    BLAS syrk on blocks of at most ``block`` rows, gemm between blocks (the same flops as one syrk): the
    OpenBLAS 0.3.30 that scipy's wheels ship segfaults in one dsyrk call with n >~ 18,500 and k >= 300 (n = m r
    = 18,900 for 700 inducing points of an 11-bead molecule); 8192 is well inside what it handles.
    """
    syrk, gemm = scipy.linalg.get_blas_funcs(("syrk", "gemm"), (a,))
    n = a.shape[0]
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        c[j0:j1, j0:j1] = syrk(alpha, a[j0:j1], beta=1.0, c=c[j0:j1, j0:j1], trans=0)
        if j0:
            c[:j0, j0:j1] = gemm(alpha, a[:j0], a[j0:j1], beta=1.0, c=c[:j0, j0:j1], trans_b=1)
    return c


class SampledPreconditioner:
    """P^-1 for P = (N / s) K_mS K_Sm + lam K_mm, with S a uniform random sample of s frames.

    An unbiased Monte Carlo estimate of K_mN K_Nm that, unlike Falkon's K_mm Omega K_mm, does not depend on how
    the inducing points were picked. ``factor`` (lambda-free) costs one (s r, m r) kernel block and an
    O(s r (m r)^2) product; each lambda then costs one Cholesky factorisation of size m r.
    """

    def __init__(self, base, lam):
        G, Kmm = base
        n = G.shape[0]
        scale = float(np.mean(np.diag(Kmm)))
        for jitter in (0.0, 1e-10, 1e-8, 1e-6):
            A = np.multiply(Kmm, lam)
            A += G
            A = A.T  # symmetric: the Fortran-ordered view is the same matrix, factorised in place (no copy)
            A.flat[:: n + 1] += jitter * lam * scale
            try:
                self.c = (cholesky_upper(A), False)
                return
            except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
                continue
        raise CgdmlError("Nyström preconditioner is singular (duplicate inducing frames?)")

    @staticmethod
    def factor(system, sample, chunk=1000):
        """(G, K_mm) for the :class:`NormalEquations` ``system`` and the sampled frame indices (s,)."""
        fr = system.frames
        G = np.zeros((system.size, system.size), order="F")
        for c0 in range(0, len(sample), chunk):
            rows = sample[c0:c0 + chunk]
            KSm = kernels.assemble(fr.D[rows], fr.W[rows], system.sigma, system.Dm, system.Wm)
            # KSm.T is Fortran-ordered: syrk(trans=0) reads it in place (trans=1 on KSm would copy it)
            syrk_upper(fr.n_frames / len(sample), KSm.T, G)
        del KSm
        kernels.mirror_lower(G)
        return G.T, system.kmm()  # symmetric: the C-ordered view, no copy

    def __call__(self, x):
        return scipy.linalg.cho_solve(self.c, x, check_finite=False)


def pcg(matvec, b, precond, x0=None, tol=1e-5, maxiter=500, callback=None, state=None, progress=False):
    """Preconditioned conjugate gradients for a symmetric positive definite operator.

    Stops when |b - A x| <= tol |b|. ``callback(state)`` runs after each iteration with the full iteration state
    (a dict of x, r, p, rz, k); passing such a ``state`` back continues the run exactly where it was.
    Returns x, the iteration count and the final relative residual.
    """
    bnorm = np.linalg.norm(b) or 1.0
    if state is None:
        x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=np.float64)
        r = b - matvec(x) if x0 is not None else b.copy()
        z = precond(r)
        state = dict(x=x, r=r, p=z.copy(), rz=float(r @ z), k=0)
    x, r, p, rz, k = (state[key] for key in ("x", "r", "p", "rz", "k"))
    x, r, p, rz, k = np.array(x, dtype=np.float64), np.array(r, dtype=np.float64), np.array(p, dtype=np.float64), \
        float(rz), int(k)
    res = np.linalg.norm(r) / bnorm
    with tqdm(total=maxiter, initial=k, desc="Nystrom CG", leave=False, disable=not progress) as bar:
        while res > tol and k < maxiter:
            Ap = matvec(p)
            step = rz / float(p @ Ap)
            x += step * p
            r -= step * Ap
            res = np.linalg.norm(r) / bnorm
            k += 1
            if res > tol:
                z = precond(r)
                rz_new = float(r @ z)
                p = z + (rz_new / rz) * p
                rz = rz_new
            bar.update()
            bar.set_postfix(res=f"{res:.1e}")
            if callback is not None:
                callback(dict(x=x, r=r, p=p, rz=rz, k=k))
    return x, k, res


def refine(matvec, inner_matvec, b, precond, x, tol, maxiter=500, steps=4):
    """Iterative refinement of x for A x = b: each step computes the residual r = b - A x with the exact
    ``matvec`` and adds the PCG solution of A d = r on the cheaper ``inner_matvec`` (the float32 products), to the
    relative tolerance that brings |r| to half of ``tol`` |b|. The float32 operator is accurate to ~1e-7 relative
    on random vectors but only to ~1e-4 near the solution, whose coefficients cancel strongly; one step usually
    restores the float64 residual. Returns x, the inner iterations, the exact relative residual and the steps.
    """
    bnorm = np.linalg.norm(b) or 1.0
    k_total = n = 0
    while True:
        r = b - matvec(x)
        res = np.linalg.norm(r) / bnorm
        if res <= tol or n == steps or k_total >= maxiter:
            return x, k_total, res, n
        d, k, _ = pcg(inner_matvec, r, precond, tol=min(0.5, 0.5 * tol / res), maxiter=maxiter - k_total)
        x = x + d
        k_total += k
        n += 1


class NystromGDML(BaseEstimator):
    """Inducing-point GDML fitted by least squares on every frame (see the module docstring).

    Parameters: ``n_inducing`` m; ``sigma`` (nm^-1); ``lam`` relative to mean(diag K); ``chiral``,
    ``dihedrals``, ``chiral_scale`` as in :class:`cgdml.gdml.GDML`; ``inducing`` "stratified" (needs ``strata``
    in fit) or "random"; ``tol``/``maxiter`` for CG; ``chunk`` frames per streamed block; ``precond_frames`` the
    sampled frames s of the preconditioner (default :func:`default_precond_frames`: 2 m up to ~100k frames, more
    for larger sets); ``dtype`` "float64" or "float32", the precision of the streamed products' GEMMs: float32
    iterations are about twice as fast, and a float64 residual with :func:`refine` (usually one step, a few more
    iterations) brings the solution to the float64 tolerance, so that the forces agree with a float64 fit to
    the CG tolerance (1e-5 relative at tol 1e-6, see the tests); ``workdir``
    keeps the CG iterate (every ``checkpoint_s`` seconds) so that an interrupted fit resumes; ``seed`` picks the
    inducing frames; ``progress`` shows a CG progress bar.

    Learned: ``model_`` (a :class:`cgdml.model.GDMLModel` on the inducing frames, which predicts and saves),
    ``inducing_index_`` (m,), ``lam_`` (absolute), ``cg_iterations_``, ``residual_`` (relative, of the float64
    system), ``cg_refinements_`` (float64 refinement steps of a float32 fit), ``timings_``.
    """

    def __init__(self, n_inducing=1000, sigma=4.0, lam=1.0, chiral=True, dihedrals=None, chiral_scale=1.0,
                 inducing="stratified", tol=1e-4, maxiter=500, chunk=8192, precond_frames=None, dtype="float64",
                 seed=0, workdir=None, checkpoint_s=30.0, progress=False):
        self.n_inducing = n_inducing
        self.sigma = sigma
        self.lam = lam
        self.chiral = chiral
        self.dihedrals = dihedrals
        self.chiral_scale = chiral_scale
        self.inducing = inducing
        self.tol = tol
        self.maxiter = maxiter
        self.chunk = chunk
        self.precond_frames = precond_frames
        self.dtype = dtype
        self.seed = seed
        self.workdir = workdir
        self.checkpoint_s = checkpoint_s
        self.progress = progress

    def _check_params(self):
        for name in ("sigma", "lam", "tol"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise CgdmlError(f"{name} must be positive, got {v!r}")
        for name in ("n_inducing", "maxiter", "chunk"):
            if int(getattr(self, name)) < 1:
                raise CgdmlError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.inducing not in INDUCING:
            raise CgdmlError(f"inducing must be {' or '.join(INDUCING)}, got {self.inducing!r}")
        try:
            dtype_ok = np.dtype(self.dtype).name in DTYPES
        except TypeError:
            dtype_ok = False
        if not dtype_ok:
            raise CgdmlError(f"dtype must be {' or '.join(DTYPES)}, got {self.dtype!r}")

    def fit(self, R, F, strata=None, frames=None, x0=None, cache=None):
        """Fit forces F (N, n_beads, 3) kJ/mol/nm at R (N, n_beads, 3) nm; ``strata`` (N,) for stratified picks.

        For grid searches: ``frames`` passes a :class:`ReducedFrames` of (R, F) built before (its dihedral
        quadruples and chiral scale then hold, not this estimator's), ``x0`` warm-starts
        CG with the coefficients (m r,) of a previous fit on the same inducing frames, and ``cache`` (a dict)
        keeps the lambda-free preconditioner factors per sigma between calls.
        """
        self._check_params()
        t0 = time.perf_counter()
        self.timings_ = {}
        if frames is None:
            R = np.asarray(R)
            quads = dihedral_quads(R.shape[1], self.chiral, self.dihedrals)
            frames = ReducedFrames(R, np.asarray(F), quads, self.chiral_scale, self.chunk)
        self.timings_["descriptors_s"] = time.perf_counter() - t0
        idx = choose_inducing(frames.n_frames, self.n_inducing, strata, self.inducing, self.seed)
        self.lam_ = float(self.lam) * frames.mean_diag(self.sigma)
        system = NormalEquations(frames, idx, self.sigma, self.lam_, self.chunk)
        fast = NormalEquations(frames, idx, self.sigma, self.lam_, self.chunk, np.float32) \
            if np.dtype(self.dtype) == np.float32 else system  # float32 iterations, float64 residuals
        t = time.perf_counter()
        key = ("precond", float(self.sigma), self.n_inducing, self.inducing, self.seed)
        base = cache.get(key) if cache is not None else None
        if base is None:
            n_sample = min(frames.n_frames, int(self.precond_frames or default_precond_frames(
                frames.n_frames, system.m, frames.D.shape[1], frames.r)))
            sample = np.sort(np.random.default_rng([self.seed, 0x9C]).choice(frames.n_frames, n_sample,
                                                                              replace=False))
            base = SampledPreconditioner.factor(system, sample)
            if cache is not None:
                cache.clear()  # one sigma at a time: each entry holds 2 (m r)^2 floats
                cache[key] = base
        precond = SampledPreconditioner(base, self.lam_)
        del base  # (G, K_mm): 2 (m r)^2 doubles that CG does not need (a ``cache`` keeps its own reference)
        b = system.rhs()
        self.timings_["setup_s"] = time.perf_counter() - t
        ckpt = self._checkpoint_path(frames, idx)
        state = None
        if ckpt is not None and ckpt.exists():
            f = Fields(load_npz(ckpt, "Nyström checkpoint"))
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
        a, self.cg_iterations_, self.residual_ = pcg(fast.matvec, b, precond, x0=x0, tol=self.tol,
                                                     maxiter=int(self.maxiter), callback=checkpoint, state=state,
                                                     progress=self.progress)
        self.cg_refinements_ = 0
        if fast is not system:
            a, k, self.residual_, self.cg_refinements_ = refine(
                system.matvec, fast.matvec, b, precond, a, self.tol, max(1, int(self.maxiter) - self.cg_iterations_))
            self.cg_iterations_ += k
        self.timings_["cg_s"] = time.perf_counter() - t
        if self.residual_ > self.tol:
            warnings.warn(f"Nyström CG stopped after {self.cg_iterations_} iterations at relative residual "
                          f"{self.residual_:.2g} > {self.tol:g}", RuntimeWarning, stacklevel=2)
        self.coef_ = a
        self.inducing_index_ = idx
        self.model_ = GDMLModel(system.Dm, system.coefficients(a), self.sigma, frames.quads, frames.chiral_scale,
                                0.0, frames.n_beads)
        self.timings_["total_s"] = time.perf_counter() - t0
        log.info("Nyström GDML: %d frames, m=%d, %d CG iterations (%s, %d refinements), residual %.1e, timings %s",
                 frames.n_frames, system.m, self.cg_iterations_, np.dtype(self.dtype).name, self.cg_refinements_,
                 self.residual_, json.dumps(self.timings_, default=float))
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        return self

    def _checkpoint_path(self, frames, idx):
        if self.workdir is None:
            return None
        h = hashlib.sha256()
        for arr in (frames.D[idx], frames.y[:: max(1, frames.n_frames // 1000)]):
            h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
        key = [frames.n_frames, self.sigma, self.lam, frames.quads.tolist(), frames.chiral_scale]
        if np.dtype(self.dtype) != np.float64:  # float64 keeps the key of earlier versions
            key.append(np.dtype(self.dtype).name)
        h.update(json.dumps(key).encode())
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        return Path(self.workdir) / f"nystrom_cg_{h.hexdigest()[:16]}.npz"

    def predict(self, R):
        """Energies (n,) kJ/mol (up to a constant) and forces (n, n_beads, 3) kJ/mol/nm."""
        check_is_fitted(self, "model_")
        return self.model_.predict(R)

    def predict_forces(self, R):
        """Forces (n, n_beads, 3) kJ/mol/nm."""
        check_is_fitted(self, "model_")
        return self.model_.predict_forces(R)


MAX_REDUCED_SIZE = 12_000  # m r of the default inducing count: the preconditioner holds ~3 (m r)^2 doubles (3.5 GB)


def default_inducing(n_beads, n_frames=None, cap=1000):
    """Default inducing count m: ``cap`` (1000), or fewer for large molecules so that the reduced size m (3N - 6)
    stays within MAX_REDUCED_SIZE (the preconditioner's memory and O((m r)^3) setup), and never more than the
    frames. 5 and 6 beads keep 1000; 11 beads get 444, 14 beads 333, 20 beads 222."""
    r = max(1, 3 * n_beads - 6)
    m = min(cap, MAX_REDUCED_SIZE // r)
    return int(m if n_frames is None else min(m, n_frames))


def fit_nystrom(dataset, n_inducing="auto", sigma=(2.0, 4.0, 8.0), lam=(0.3, 1.0, 3.0), inducing="stratified",
                strata="auto", grid_bins=12, n_strata=50, holdout=0.1, select_frames=100_000, select_inducing=500,
                cv_score="force", chiral=True,
                prior_repulsion=True, prior_dihedrals="auto", tol=1e-4, seed=0, workdir=None, progress=False,
                dtype="float64"):
    """Prior + inducing-point GDML on every frame of ``dataset``, as a :class:`cgdml.model.CGModel`.

    With several (sigma, lam) candidates, each is fitted with min(n_inducing, ``select_inducing``) inducing
    points on up to ``select_frames`` frames outside a random hold-out of ``holdout`` (at most 20,000 frames)
    and scored by the mean squared error of the held-out forces (kJ/mol/nm)^2 (``cv_score="force"``, the default),
    or of their components along the soft dihedrals (kJ/mol/rad)^2 (``"dihedral"``, as the two-layer
    cross-validation, :mod:`cgdml.ensemble`; ``"auto"``: that when the CG topology has a soft dihedral); both are
    recorded. (On alanine dipeptide's 5-bead map the dihedral score picks sigma 2 and a landscape 3x worse than
    sigma 8's, which the force score picks; on the tetrapeptide both pick the same.) The winner is refitted with
    ``n_inducing`` points on all frames (``"auto"``: :func:`default_inducing`). The preconditioner costs
    O((m r)^3), so the smaller selection models
    make the grid cheap; lambdas of one sigma share it and warm-start CG from each other. ``dtype`` is the
    precision of the streamed products (see :class:`NystromGDML`).
    """
    from .prior import HarmonicPrior

    if n_inducing == "auto":
        n_inducing = default_inducing(dataset.n_beads, dataset.n_frames)
    t0 = time.perf_counter()
    sigmas, lams = np.atleast_1d(sigma).astype(float), np.atleast_1d(lam).astype(float)
    for name, values in (("sigma", sigmas), ("lam", lams)):
        if len(values) == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise CgdmlError(f"{name} must be one or more positive numbers, got {list(values)}")
    if not 0 < holdout < 1:
        raise CgdmlError(f"holdout must be between 0 and 1, got {holdout}")
    score_by, soft = resolve_cv_score(cv_score, dataset.cg_topology)
    coords = dataset.coords
    prior = HarmonicPrior(repulsion=prior_repulsion, dihedrals=prior_dihedrals).fit(coords, dataset.temperature,
                                                                                   dataset.cg_topology)
    labels = prior.residual_forces(coords, dataset.forces)
    quads = dihedral_quads(dataset.n_beads, chiral, dataset.cg_topology.chirality_quads)
    labels_strata, strata_method = make_strata(dataset, strata, grid_bins, n_strata, seed) \
        if inducing == "stratified" else (None, "none")
    params = dict(n_inducing=n_inducing, inducing=inducing, chiral=chiral, dihedrals=quads, tol=tol, seed=seed,
                  progress=progress, dtype=dtype)
    timings, scores = {"prior_and_strata_s": time.perf_counter() - t0}, []
    best = (float(sigmas[0]), float(lams[0]))
    if len(sigmas) * len(lams) > 1:
        t = time.perf_counter()
        rng = np.random.default_rng([seed, 0x5E1])
        order = rng.permutation(dataset.n_frames)
        n_val = int(min(20_000, max(1, round(holdout * dataset.n_frames))))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:n_val + select_frames])
        if len(train) < 2:
            raise CgdmlError(f"{dataset.n_frames} frames are too few for a hold-out selection")
        frames = ReducedFrames(coords[train], labels[train], quads, 1.0)
        projection = dihedral_projection(coords[val], soft) if len(soft) else None
        sub_strata = labels_strata[train] if labels_strata is not None else None
        cache = {}
        fingerprint = hashlib.sha256(np.ascontiguousarray(labels[:: max(1, len(labels) // 5000)], np.float32))
        fingerprint.update(json.dumps([dataset.n_frames, n_inducing, select_inducing, select_frames, holdout,
                                       inducing, strata, chiral, prior_repulsion, prior_dihedrals, tol,
                                       seed, score_by]).encode())
        work = WorkCache(workdir, fingerprint.hexdigest()[:16])
        for s in sigmas:
            x0 = None
            for lm in sorted(lams, reverse=True):  # large lambda first: fewest iterations, then warm starts
                key = f"select_s{s:g}_l{lm:g}"
                if work.get(key) is not None:  # scored before an interruption
                    scores.append({k: v.item() for k, v in work.get(key).items()})
                    continue
                est = NystromGDML(sigma=s, lam=lm, **dict(params, n_inducing=min(n_inducing, select_inducing)))
                est.fit(None, None, sub_strata, frames=frames, x0=x0, cache=cache)
                x0 = est.coef_
                err = est.predict_forces(coords[val]) - labels[val]
                mse_force = float(np.mean(err ** 2))
                mse_dihedral = float(np.mean(project_forces(err, projection) ** 2)) if projection else float("nan")
                scores.append(dict(sigma=float(s), lam=float(lm),
                                   mse=mse_dihedral if score_by == "dihedral" else mse_force, mse_force=mse_force,
                                   mse_dihedral=mse_dihedral, cg_iterations=est.cg_iterations_,
                                   fit_s=est.timings_["total_s"]))
                log.info("Nyström selection: sigma %g lam %g: held-out MSE %.6g (kJ/mol/nm)^2, along the dihedrals "
                         "%.6g (kJ/mol/rad)^2", s, lm, mse_force, mse_dihedral)
                work.put(key, **{k: np.array(v) for k, v in scores[-1].items()})
        del frames, cache
        best_score = min(scores, key=lambda d: d["mse"])
        best = (best_score["sigma"], best_score["lam"])
        timings["selection_s"] = time.perf_counter() - t
    t = time.perf_counter()
    est = NystromGDML(sigma=best[0], lam=best[1], workdir=workdir, **params).fit(coords, labels, labels_strata)
    timings["final_fit_s"] = time.perf_counter() - t
    timings.update({f"final_{k}": v for k, v in est.timings_.items()})
    timings["total_s"] = time.perf_counter() - t0
    info = fit_record("Nystrom GDML",
                      dict(n_inducing=n_inducing, sigma=sigmas.tolist(), lam=lams.tolist(), inducing=inducing,
                           holdout=holdout, select_frames=select_frames, select_inducing=select_inducing,
                           cv_score=score_by, chiral=chiral, prior_repulsion=prior_repulsion,
                           prior_dihedrals=prior_dihedrals, tol=tol, seed=seed, dtype=dtype),
                      dict(sigma=best[0], lam=best[1], lam_absolute=est.lam_, n_inducing=len(est.inducing_index_),
                           cg_iterations=est.cg_iterations_, residual=est.residual_),
                      dataset, timings, selection_scores=scores, strata=dict(method=strata_method))
    return CGModel.from_fit(est.model_, prior, dataset, info, seed=seed)
