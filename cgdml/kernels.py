"""Matérn 5/2 kernel on descriptors, used through its Hessian (docs/method.md §2.3).

With d = D(x) - D(x'), r = |d|, s = sigma and e = exp(-sqrt5 r / s), the scalar kernel is
phi(r) = (1 + sqrt5 r/s + 5 r^2/(3 s^2)) e, and the covariance of descriptor-space gradients is

    Hc(d) = -grad^2 phi = c1(r) I - c2(r) d d^T,   c1 = k (s^2 + sqrt5 s r) e,  c2 = 5 k e,  k = 5 / (3 s^4),

which is positive definite. A force block between frames is J(x)^T Hc(d) J(x'). A model with descriptor-space
coefficients v_j (= J_j alpha_j) predicts

    F(x) = J(x)^T g(x),  g(x) = sum_j Hc(d_j) v_j,    E(x) = sum_j grad phi(d_j) . v_j = -(5/(3 s^3)) sum_j (s + sqrt5 r_j) e_j (d_j . v_j),

so that F = -dE/dx exactly. Everything here works on plain arrays; :mod:`cgdml.gdml` holds the estimator.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os

import numba as nb
import numpy as np

SQRT5 = np.sqrt(5.0)


# ----------------------------------------------------------------------------------------------- dense blocks
@nb.njit(cache=True, inline="always")
def _block(Di, Wi, Dj, Wj, sigma, out, r0, c0, d, u, w):
    nd, ri = Wi.shape
    rj = Wj.shape[1]
    r2 = 0.0
    for t in range(nd):
        d[t] = Di[t] - Dj[t]
        r2 += d[t] * d[t]
    r = np.sqrt(r2)
    k = 5.0 / (3.0 * sigma ** 4)
    e = np.exp(-SQRT5 * r / sigma)
    c1 = k * (sigma * sigma + SQRT5 * sigma * r) * e
    c2 = 5.0 * k * e
    for p in range(ri):
        acc = 0.0
        for t in range(nd):
            acc += Wi[t, p] * d[t]
        u[p] = acc
    for q in range(rj):
        acc = 0.0
        for t in range(nd):
            acc += Wj[t, q] * d[t]
        w[q] = acc
    for p in range(ri):
        cu = c2 * u[p]
        for q in range(rj):
            acc = 0.0
            for t in range(nd):
                acc += Wi[t, p] * Wj[t, q]
            out[r0 + p, c0 + q] = c1 * acc - cu * w[q]


@nb.njit(cache=True)
def _sym_row(i, D, W, sigma, out, d, u, w):
    r = W.shape[2]
    for j in range(i + 1):
        _block(D[i], W[i], D[j], W[j], sigma, out, i * r, j * r, d, u, w)


@nb.njit(cache=True, parallel=True)
def _assemble_sym(D, W, sigma, out):
    """Lower block triangle (blocks j <= i) of the symmetric reduced kernel matrix.

    Rows are processed in pairs (k, M-1-k) so that every parallel task has the same amount of work.
    """
    M, nd, r = W.shape
    for kk in nb.prange((M + 1) // 2):
        d = np.empty(nd)
        u = np.empty(r)
        w = np.empty(r)
        _sym_row(kk, D, W, sigma, out, d, u, w)
        if M - 1 - kk != kk:
            _sym_row(M - 1 - kk, D, W, sigma, out, d, u, w)


@nb.njit(cache=True, parallel=True)
def _assemble_rect(Dr, Wr, Dc, Wc, sigma, out):
    nr, nd, rr = Wr.shape
    nc, _, rc = Wc.shape
    for i in nb.prange(nr):
        d = np.empty(nd)
        u = np.empty(rr)
        w = np.empty(rc)
        for j in range(nc):
            _block(Dr[i], Wr[i], Dc[j], Wc[j], sigma, out, i * rr, j * rc, d, u, w)


def assemble(D, W, sigma, Dc=None, Wc=None, out=None):
    """Reduced kernel matrix with blocks W_i^T Hc(D_i - D_j) W_j.

    D (M, nd), W (M, nd, r). Without ``Dc``/``Wc`` the matrix is square and symmetric and only its lower block
    triangle is filled (the rest is left as is); with them, all (M r, Mc rc) entries are computed.
    """
    D = np.ascontiguousarray(D, dtype=np.float64)
    W = np.ascontiguousarray(W, dtype=np.float64)
    if Dc is None:
        M, _, r = W.shape
        if out is None:
            out = np.zeros((M * r, M * r))
        _assemble_sym(D, W, float(sigma), out)
        return out
    Dc = np.ascontiguousarray(Dc, dtype=np.float64)
    Wc = np.ascontiguousarray(Wc, dtype=np.float64)
    if out is None:
        out = np.empty((W.shape[0] * W.shape[2], Wc.shape[0] * Wc.shape[2]))
    _assemble_rect(D, W, Dc, Wc, float(sigma), out)
    return out


# ------------------------------------------------------------------------------------------------ BLAS form
class TrainTables:
    """Training-side matrices for batched prediction with GEMMs (built once per fitted model).

    With a = sqrt5 / s, one GEMM of the augmented batch [x, 1, |x|^2] with ``Z`` gives a^2 r_ij^2 and
    d_ij . v_j = x_i . v_j - D_j . v_j side by side; two more GEMMs with ``VA`` = [V, -D.V] and ``DA`` = [D, 1]
    give the descriptor-space force g_i, its row sums and the energy.
    """

    def __init__(self, Dt, V, sigma):
        Dt = np.ascontiguousarray(Dt, dtype=np.float64)
        V = np.ascontiguousarray(V, dtype=np.float64)
        M, nd = Dt.shape
        a2 = 5.0 / sigma ** 2
        tv = np.einsum("md,md->m", Dt, V)
        Z = np.zeros((2 * M, nd + 2))
        Z[:M, :nd] = -2.0 * a2 * Dt
        Z[:M, nd] = a2 * np.einsum("md,md->m", Dt, Dt)
        Z[:M, nd + 1] = a2
        Z[M:, :nd] = V
        Z[M:, nd] = -tv
        self.ZT = np.ascontiguousarray(Z.T)
        self.VA = np.ascontiguousarray(np.column_stack([V, -tv]))
        self.DA = np.ascontiguousarray(np.column_stack([Dt, np.ones(M)]))
        self.M, self.nd, self.sigma = M, nd, float(sigma)


@nb.njit(cache=True, nogil=True, fastmath=True)
def _pass1(P, M, A):
    """P[:, :M] holds a^2 r^2: overwrite it with a r, and A with -a r (exp of A follows in numpy)."""
    B = P.shape[0]
    for i in range(B):
        for j in range(M):
            ar = np.sqrt(max(P[i, j], 0.0))
            P[i, j] = ar
            A[i, j] = -ar


@nb.njit(cache=True, nogil=True, fastmath=True)
def _pass2(P, M, A):
    """With A = exp(-a r): P[:, :M] <- (1 + a r) e (scaled c1) and P[:, M:] <- e (d.v) (scaled c2 d.v)."""
    B = P.shape[0]
    for i in range(B):
        for j in range(M):
            e = A[i, j]
            P[i, j] = (1.0 + P[i, j]) * e
            P[i, M + j] *= e


def _apply_rows(X, tab, energy):
    B, nd = X.shape
    M = tab.M
    s = tab.sigma
    XA = np.empty((B, nd + 2))
    XA[:, :nd] = X
    XA[:, nd] = 1.0
    XA[:, nd + 1] = np.einsum("bd,bd->b", X, X)
    P = XA @ tab.ZT  # (B, 2M): a^2 r^2 | d.v
    A = np.empty((B, M))
    _pass1(P, M, A)
    np.exp(A, out=A)
    _pass2(P, M, A)
    G1 = P[:, :M] @ tab.VA  # sum_j c1' [v_j, -tv_j]
    G2 = P[:, M:] @ tab.DA  # sum_j c2' (d.v) [D_j, 1]
    k = 5.0 / (3.0 * s ** 4)
    g = (k * s * s) * G1[:, :nd] + (5.0 * k) * (G2[:, :nd] - G2[:, nd:] * X)
    E = None
    if energy:
        E = (-5.0 / (3.0 * s ** 2)) * (np.einsum("bd,bd->b", X, G1[:, :nd]) + G1[:, nd])
    return g, E


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@functools.lru_cache(maxsize=8)
def _executor_for(n, pid):
    return concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="cgdml-gdml")


def _executor(n):
    """Shared worker threads (one pool per process id, so a forked child never inherits dead threads)."""
    return _executor_for(n, os.getpid())


def hessian_apply(Dx, tab, energy=False, chunk=256, n_threads=None):
    """g_i = sum_j Hc(Dx_i - D_j) v_j for a batch Dx (B, nd), and E_i = sum_j grad phi(d_ij) . v_j if ``energy``.

    ``tab`` is a :class:`TrainTables`. Rows are processed in chunks with single-threaded GEMMs, spread over
    ``n_threads`` Python threads (default: numba's thread count), which is much faster than multi-threaded
    BLAS on these thin products, above all on a busy machine. Returns g (B, nd) and E (B,) or None.
    """
    Dx = np.ascontiguousarray(Dx, dtype=np.float64)
    B = Dx.shape[0]
    n_threads = nb.get_num_threads() if n_threads is None else int(n_threads)
    per = max(8, min(chunk, -(-B // max(n_threads, 1))))
    bounds = [(b, min(b + per, B)) for b in range(0, B, per)]
    with _blas_controller().limit(limits=1, user_api="blas"):
        if len(bounds) == 1 or n_threads <= 1:
            parts = [_apply_rows(Dx[b0:b1], tab, energy) for b0, b1 in bounds]
        else:
            ex = _executor(n_threads)
            parts = list(ex.map(lambda b: _apply_rows(Dx[b[0]:b[1]], tab, energy), bounds))
    g = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    E = (np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]) if energy else None
    return g, E


@nb.njit(cache=True, parallel=True)
def _coeffs(P, sqx, sqt, sigma, C2):
    B, M = P.shape
    k = 5.0 / (3.0 * sigma ** 4)
    a = SQRT5 / sigma
    for i in nb.prange(B):
        for j in range(M):
            r2 = sqx[i] + sqt[j] - 2.0 * P[i, j]
            r = np.sqrt(r2) if r2 > 0.0 else 0.0
            e = np.exp(-a * r)
            P[i, j] = k * (sigma * sigma + SQRT5 * sigma * r) * e
            C2[i, j] = 5.0 * k * e


@nb.njit(cache=True, nogil=True)
def _scale_dv(Q, C2, tv, S):
    B, M = Q.shape
    for i in range(B):
        acc = 0.0
        for j in range(M):
            t = C2[i, j] * (Q[i, j] - tv[j])
            Q[i, j] = t
            acc += t
        S[i] = acc


class ReducedKernelOperator:
    """Matrix-free product with the reduced kernel matrix K~ (blocks W_i^T Hc(d_ij) W_j), size M r.

    Stores only the (M, M) pair coefficients c1 and c2 (2 * 8 M^2 bytes); each product costs three GEMMs of
    O(M^2 nd) in row chunks.
    """

    def __init__(self, D, W, sigma, chunk=1024):
        self.D = np.ascontiguousarray(D, dtype=np.float64)
        self.W = np.ascontiguousarray(W, dtype=np.float64)
        self.M, self.nd, self.r = self.W.shape
        self.shape = (self.M * self.r, self.M * self.r)
        self.chunk = int(chunk)
        sq = np.einsum("md,md->m", self.D, self.D)
        self.C1 = self.D @ self.D.T
        self.C2 = np.empty_like(self.C1)
        _coeffs(self.C1, sq, sq, float(sigma), self.C2)

    def _rows(self, sl, V, tv, y):
        x = self.D[sl]
        Q = x @ V.T
        S = np.empty(Q.shape[0])
        _scale_dv(Q, self.C2[sl], tv, S)
        g = self.C1[sl] @ V
        g += Q @ self.D
        g -= S[:, None] * x
        y[sl] = np.matmul(g[:, None, :], self.W[sl])[:, 0, :]

    def matvec(self, a):
        a = np.asarray(a, dtype=np.float64).reshape(self.M, self.r)
        V = np.matmul(self.W, a[:, :, None])[:, :, 0]
        tv = np.einsum("md,md->m", self.D, V)
        y = np.empty((self.M, self.r))
        n_threads = nb.get_num_threads()
        per = max(1, min(self.chunk, -(-self.M // n_threads)))
        slices = [slice(i0, i0 + per) for i0 in range(0, self.M, per)]
        with _blas_controller().limit(limits=1, user_api="blas"):
            list(_executor(n_threads).map(lambda sl: self._rows(sl, V, tv, y), slices))
        return y.ravel()
