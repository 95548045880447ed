"""Dense and iterative linear algebra of the GDML fits: Cholesky factors, blocked syrk, preconditioned conjugate
gradients with iterative refinement, and the two Nyström preconditioners (exact GDML and inducing-point GDML).

Everything works on plain float64 arrays (the inducing-point preconditioner on a
:class:`cgdml.nystrom.NormalEquations`); the estimators in :mod:`cgdml.gdml` and :mod:`cgdml.nystrom` call it.
The BLAS/LAPACK calls are blocked where OpenBLAS 0.3.30 (scipy's wheels) segfaults on single large calls (see
:func:`cholesky_upper_inplace` and :func:`syrk_upper`).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from tqdm.auto import tqdm

from . import kernels
from ._io import CgdmlError


# ------------------------------------------------------------------------------------------------------ dense
def cholesky_upper(A):
    """Upper Cholesky factor of the symmetric matrix A (its upper triangle is read; A may be overwritten),
    Fortran-ordered for LAPACK's potrs; use it as ``scipy.linalg.cho_solve((c, False), b)``.

    Large matrices go through :func:`cholesky_upper_inplace`; a C-ordered factor would make every cho_solve
    copy it, which costs more than the solve. Raises numpy.linalg.LinAlgError if A is not positive definite.
    """
    A = np.asfortranarray(A)
    if A.shape[0] > 8192:
        return cholesky_upper_inplace(A)
    return scipy.linalg.cho_factor(A, lower=False, overwrite_a=True, check_finite=False)[0]


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


# -------------------------------------------------------------------------------------------------- iterative
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
    with tqdm(total=maxiter, initial=k, desc="Nyström CG", leave=False, disable=not progress) as bar:
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


# ------------------------------------------------------------------------------------------- preconditioners
def gdml_preconditioner_base(D, W, sigma, m, seed=0):
    """The lambda-free part of :func:`gdml_preconditioner`: (B (M r, m r), C (M, r, r)) with B = K_nm L^-T
    (K_mm = L L^T, on ``m`` random frames) and C_i = K_ii - B_i B_i^T, the per-frame blocks that the Nyström
    part misses. A lambda path computes it once per (frames, sigma)."""
    M, _, r = W.shape
    mr = m * r
    idx = np.sort(np.random.default_rng(seed).choice(M, m, replace=False))
    Knm = kernels.assemble(D, W, sigma, D[idx], W[idx])  # (M r, m r)
    rows = (idx[:, None] * r + np.arange(r)).ravel()
    Kmm = Knm[rows].copy()
    Kmm.flat[:: mr + 1] += 1e-10 * np.mean(np.diag(Kmm))
    L = scipy.linalg.cholesky(Kmm, lower=True, overwrite_a=True, check_finite=False)
    B = scipy.linalg.solve_triangular(L, Knm.T, lower=True, overwrite_b=True, check_finite=False).T
    del Knm
    B3 = B.reshape(M, r, mr)
    Kii = 5.0 / (3.0 * sigma ** 2) * np.einsum("mdr,mds->mrs", W, W)  # Hc(0) = 5/(3 s^2) I
    return B, Kii - np.einsum("mrk,msk->mrs", B3, B3)


def gdml_preconditioner(D, W, sigma, lam, m, seed=0, base=None):
    """P^-1 (a scipy LinearOperator of size M r) for exact GDML's (K + lam I) a = y, K the reduced kernel of the
    frames' descriptors D (M, nd) and reduced Jacobians W (M, nd, r) at length scale ``sigma``.

    Nyström on ``m`` random frames plus the exact per-frame diagonal blocks: P = B B^T + Lam with
    B = K_nm L^-T (K_mm = L L^T) and Lam_i = K_ii - B_i B_i^T + lam I (r x r blocks, a partially independent
    conditional). P^-1 by Woodbury: only B (M r x m r) and an (m r)^2 matrix are kept. ``base``: the
    lambda-free (B, C) of :func:`gdml_preconditioner_base` for these arguments, when already computed.
    The Woodbury matrix I + B^T Lam^-1 B = I + Z^T Z, Z_i = G_i^-1 B_i with Lam_i = G_i G_i^T, is one syrk.
    """
    M, _, r = W.shape
    mr = m * r
    B, C = gdml_preconditioner_base(D, W, sigma, m, seed) if base is None else base
    B3 = B.reshape(M, r, mr)
    lam_blocks = C + lam * np.eye(r)
    try:
        Ginv = np.linalg.inv(np.linalg.cholesky(lam_blocks))       # (M, r, r) lower-triangular inverses
    except np.linalg.LinAlgError:                                    # C_i is PSD up to rounding; lam keeps it PD
        raise CgdmlError(f"GDML preconditioner blocks are not positive definite with lambda={lam:.3g}; use a "
                         "larger lam") from None
    Linv = np.matmul(Ginv.transpose(0, 2, 1), Ginv)                  # Lam_i^-1
    inner = np.eye(mr, order="F")
    for c0 in range(0, M, 256):
        Z = np.matmul(Ginv[c0:c0 + 256], B3[c0:c0 + 256]).reshape(-1, mr)
        syrk_upper(1.0, Z.T, inner)  # Z.T is Fortran-ordered: no copy
    ci = (cholesky_upper(inner), False)

    def apply(x):
        z = np.matmul(Linv, np.asarray(x).reshape(M, r, 1)).ravel()
        w = B @ scipy.linalg.cho_solve(ci, B.T @ z, check_finite=False)
        return z - np.matmul(Linv, w.reshape(M, r, 1)).ravel()

    return scipy.sparse.linalg.LinearOperator((M * r, M * r), matvec=apply, dtype=np.float64)


def default_precond_frames(n_frames, m, n_desc, r, products=24, min_frames=None):
    """Sampled frames s of the :class:`SampledPreconditioner`: as many as make its setup (s r (m r)^2 flops of
    syrk) cost the flops of ``products`` normal-equation products (2 N m (7 n_desc + 9) each), at least
    ``min_frames`` (None: m / 2) and at most N. More frames cut the CG iterations, and syrk runs at about three
    times the flop rate of the streamed product, so the setup then costs about as much time as the iterations it
    leaves. The floor m / 2 (not the
    Falkon-like 2 m) because below ~100k frames the products are cheap and the setup is the fit: on 5,000 frames
    it cut a fit 2.2x (11 beads, m 444: 9 -> 19 iterations) and 2.6x (5 beads, m 1000; NOTES.md). A small
    lambda (nearly noise-free labels) leaves the preconditioner to carry the system: give it 2 m there.
    """
    s = products * 2.0 * n_frames * m * (7 * n_desc + 9) / (r * (m * r) ** 2)
    return int(min(n_frames, max(m // 2 if min_frames is None else min_frames, round(s))))


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
        """(G, K_mm) for the :class:`cgdml.nystrom.NormalEquations` ``system`` and the sampled frame indices (s,)."""
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
