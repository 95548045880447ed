"""Inducing-point (Nyström) GDML: learn the mean force from every frame, not from a kernel-sized subset.

The force field is expanded on m inducing configurations x_j with coefficients a_j in each one's reduced basis
(v_j = W_j a_j in descriptor space), exactly the form of a GDML model trained on them:

    F(x) = J(x)^T sum_j Hc(D(x) - D_j) v_j.

The coefficients are the least-squares fit to all N frames, regularised by the RKHS norm,

    min_a  sum_i |y_i - K_im a|^2 + lam a^T K_mm a   <=>   (K_mN K_Nm + lam K_mm) a = K_mN y,

with y_i = V_i^T F_i the force of frame i in its reduced (internal) basis and K_im the reduced kernel blocks of
:mod:`cgdml.gdml`. With m = N and K invertible this is GDML's (K + lam I) a = y, so ``lam`` means the same.
Preconditioned conjugate gradients solve it; every product streams over the frames in chunks through the
batched Hessian kernel (two passes of O(N m n_desc)), so neither K_Nm nor the N x N kernel is ever stored.
Only the frames' descriptors, reduced Jacobians W_i (n_desc x r) and labels are kept: 8 N n_desc (r + 1) bytes.

Preconditioner: P = (N/s) K_mS K_Sm + lam K_mm with S a uniform random sample of s = 2m frames, an unbiased
estimate of the normal matrix in the spirit of Falkon (Rudi, Carratino and Rosasco, NeurIPS 2017), which takes
S = the inducing points. On 100k frames of the 6-bead data (m = 500, lam 0.3) Falkon's choice with stratified
inducing points left the residual at 1e-3 after 60 iterations; s = 2m converged to 1e-4 in 37, with a cheaper
setup. Each lambda costs one Cholesky factorisation of size m r.

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
from .model import CGModel, GDMLModel, fit_record
from .sampling import make_strata, stratified_batch

INDUCING = ("stratified", "random")
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

    ``matvec`` and ``rhs`` stream over the frames in chunks of ``chunk``; memory beyond the frames' arrays is
    O(chunk m + m nd). ``sigma`` is the kernel length scale and ``lam`` the absolute lambda.
    """

    def __init__(self, frames, inducing, sigma, lam, chunk=8192):
        self.frames, self.sigma, self.lam, self.chunk = frames, float(sigma), float(lam), int(chunk)
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

    def _adjoint(self, q_of_chunk):
        """K_mN applied to per-frame descriptor vectors q_i = W_i u_i, given chunk by chunk."""
        h = np.zeros((self.m, self.Dm.shape[1]))
        for c0 in range(0, self.frames.n_frames, self.chunk):
            sl = slice(c0, c0 + self.chunk)
            tab = kernels.TrainTables(self.frames.D[sl], q_of_chunk(sl), self.sigma)
            h += kernels.hessian_apply(self.Dm, tab)[0]
        return self._back(h)

    def kmm_matvec(self, a):
        """K_mm a (m r,), exactly, in O(m^2 nd)."""
        tab = kernels.TrainTables(self.Dm, self.coefficients(a), self.sigma)
        return self._back(kernels.hessian_apply(self.Dm, tab)[0])

    def matvec(self, a):
        tab = kernels.TrainTables(self.Dm, self.coefficients(a), self.sigma)
        W = self.frames.W

        def q_of_chunk(sl):
            g = kernels.hessian_apply(self.frames.D[sl], tab)[0]
            p = np.matmul(g[:, None, :], W[sl])                     # W_i^T g_i: frame i's reduced prediction
            return np.matmul(W[sl], p.transpose(0, 2, 1))[:, :, 0]  # W_i p_i
        return self._adjoint(q_of_chunk) + self.lam * self.kmm_matvec(a)

    def rhs(self):
        W, y = self.frames.W, self.frames.y
        return self._adjoint(lambda sl: np.matmul(W[sl], y[sl][:, :, None])[:, :, 0])

    def kmm(self):
        """Dense symmetric K_mm (m r, m r)."""
        K = kernels.assemble(self.Dm, self.Wm, self.sigma)
        il = np.tril_indices(self.size, -1)
        K[il[1], il[0]] = K[il]
        return K


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
            A = G + lam * Kmm
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
            syrk, = scipy.linalg.get_blas_funcs(("syrk",), (KSm,))
            G = syrk(fr.n_frames / len(sample), KSm, beta=1.0, c=G, trans=1, overwrite_c=True)  # upper triangle
        del KSm
        il = np.tril_indices(G.shape[0], -1)
        G[il] = G.T[il]
        return np.ascontiguousarray(G), system.kmm()

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


class NystromGDML(BaseEstimator):
    """Inducing-point GDML fitted by least squares on every frame (see the module docstring).

    Parameters: ``n_inducing`` m; ``sigma`` (nm^-1); ``lam`` relative to mean(diag K); ``chiral``,
    ``dihedrals``, ``chiral_scale`` as in :class:`cgdml.gdml.GDML`; ``inducing`` "stratified" (needs ``strata``
    in fit) or "random"; ``tol``/``maxiter`` for CG; ``chunk`` frames per streamed block; ``precond_frames`` the
    sampled frames s of the preconditioner (default 2 m); ``workdir`` keeps the CG iterate (every
    ``checkpoint_s`` seconds) so that an interrupted fit resumes; ``seed`` picks the inducing frames;
    ``progress`` shows a CG progress bar.

    Learned: ``model_`` (a :class:`cgdml.model.GDMLModel` on the inducing frames, which predicts and saves),
    ``inducing_index_`` (m,), ``lam_`` (absolute), ``cg_iterations_``, ``residual_``, ``timings_``.
    """

    def __init__(self, n_inducing=1000, sigma=4.0, lam=1.0, chiral=True, dihedrals=None, chiral_scale=1.0,
                 inducing="stratified", tol=1e-4, maxiter=500, chunk=8192, precond_frames=None, seed=0, workdir=None,
                 checkpoint_s=30.0, progress=False):
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
        t = time.perf_counter()
        key = ("precond", float(self.sigma), self.n_inducing, self.inducing, self.seed)
        base = cache.get(key) if cache is not None else None
        if base is None:
            n_sample = min(frames.n_frames, int(self.precond_frames or 2 * system.m))
            sample = np.sort(np.random.default_rng([self.seed, 0x9C]).choice(frames.n_frames, n_sample,
                                                                              replace=False))
            base = SampledPreconditioner.factor(system, sample)
            if cache is not None:
                cache.clear()  # one sigma at a time: each entry holds 2 (m r)^2 floats
                cache[key] = base
        precond = SampledPreconditioner(base, self.lam_)
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
        a, self.cg_iterations_, self.residual_ = pcg(system.matvec, b, precond, x0=x0, tol=self.tol,
                                                     maxiter=int(self.maxiter), callback=checkpoint, state=state,
                                                     progress=self.progress)
        self.timings_["cg_s"] = time.perf_counter() - t
        if self.residual_ > self.tol:
            warnings.warn(f"Nyström CG stopped after {self.cg_iterations_} iterations at relative residual "
                          f"{self.residual_:.2g} > {self.tol:g}", RuntimeWarning, stacklevel=2)
        self.coef_ = a
        self.inducing_index_ = idx
        self.model_ = GDMLModel(system.Dm, system.coefficients(a), self.sigma, frames.quads, frames.chiral_scale,
                                0.0, frames.n_beads)
        self.timings_["total_s"] = time.perf_counter() - t0
        log.info("Nyström GDML: %d frames, m=%d, %d CG iterations, residual %.1e, timings %s", frames.n_frames,
                 system.m, self.cg_iterations_, self.residual_, json.dumps(self.timings_, default=float))
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        return self

    def _checkpoint_path(self, frames, idx):
        if self.workdir is None:
            return None
        h = hashlib.sha256()
        for arr in (frames.D[idx], frames.y[:: max(1, frames.n_frames // 1000)]):
            h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
        h.update(json.dumps([frames.n_frames, self.sigma, self.lam, frames.quads.tolist(), frames.chiral_scale]).encode())
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


def fit_nystrom(dataset, n_inducing=1000, sigma=(2.0, 4.0, 8.0), lam=(0.3, 1.0, 3.0), inducing="stratified",
                strata="auto", grid_bins=12, n_strata=50, holdout=0.1, select_frames=100_000, select_inducing=500,
                chiral=True,
                prior_repulsion=True, tol=1e-4, seed=0, workdir=None, progress=False):
    """Prior + inducing-point GDML on every frame of ``dataset``, as a :class:`cgdml.model.CGModel`.

    With several (sigma, lam) candidates, each is fitted with min(n_inducing, ``select_inducing``) inducing
    points on up to ``select_frames`` frames outside a random hold-out of ``holdout`` (at most 20,000 frames)
    and scored by the mean squared error of the held-out forces (kJ/mol/nm)^2; the winner is refitted with
    ``n_inducing`` points on all frames. The preconditioner costs O((m r)^3), so the smaller selection models
    make the grid cheap; lambdas of one sigma share it and warm-start CG from each other.
    """
    from .prior import HarmonicPrior

    t0 = time.perf_counter()
    sigmas, lams = np.atleast_1d(sigma).astype(float), np.atleast_1d(lam).astype(float)
    for name, values in (("sigma", sigmas), ("lam", lams)):
        if len(values) == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise CgdmlError(f"{name} must be one or more positive numbers, got {list(values)}")
    if not 0 < holdout < 1:
        raise CgdmlError(f"holdout must be between 0 and 1, got {holdout}")
    coords = dataset.coords
    prior = HarmonicPrior(repulsion=prior_repulsion).fit(coords, dataset.temperature, dataset.cg_topology)
    labels = prior.residual_forces(coords, dataset.forces)
    quads = dihedral_quads(dataset.n_beads, chiral, dataset.cg_topology.chirality_quads)
    labels_strata, strata_method = make_strata(dataset, strata, grid_bins, n_strata, seed) \
        if inducing == "stratified" else (None, "none")
    params = dict(n_inducing=n_inducing, inducing=inducing, chiral=chiral, dihedrals=quads, tol=tol, seed=seed,
                  progress=progress)
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
        sub_strata = labels_strata[train] if labels_strata is not None else None
        cache = {}
        fingerprint = hashlib.sha256(np.ascontiguousarray(labels[:: max(1, len(labels) // 5000)], np.float32))
        fingerprint.update(json.dumps([dataset.n_frames, n_inducing, select_inducing, select_frames, holdout,
                                       inducing, strata, chiral, prior_repulsion, tol, seed]).encode())
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
                mse = float(np.mean((est.predict_forces(coords[val]) - labels[val]) ** 2))
                scores.append(dict(sigma=float(s), lam=float(lm), mse=mse, cg_iterations=est.cg_iterations_,
                                   fit_s=est.timings_["total_s"]))
                log.info("Nyström selection: sigma %g lam %g: held-out MSE %.6g", s, lm, mse)
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
                           chiral=chiral, prior_repulsion=prior_repulsion, tol=tol, seed=seed),
                      dict(sigma=best[0], lam=best[1], lam_absolute=est.lam_, n_inducing=len(est.inducing_index_),
                           cg_iterations=est.cg_iterations_, residual=est.residual_),
                      dataset, timings, selection_scores=scores, strata=dict(method=strata_method))
    return CGModel.from_fit(est.model_, prior, dataset, info, seed=seed)
