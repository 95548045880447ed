"""Matérn 5/2 kernel on descriptors, used through its Hessian (DESIGN §2.3).

With d = D(x) - D(x'), r = |d|, s = sigma and e = exp(-sqrt5 r / s), the scalar kernel is
phi(r) = (1 + sqrt5 r/s + 5 r^2/(3 s^2)) e, and the covariance of descriptor-space gradients is

    Hc(d) = -grad^2 phi = c1(r) I - c2(r) d d^T,   c1 = k (s^2 + sqrt5 s r) e,  c2 = 5 k e,  k = 5 / (3 s^4),

which is positive definite. A force block between frames is J(x)^T Hc(d) J(x'). A model with descriptor-space
coefficients v_j (= J_j alpha_j) predicts

    F(x) = J(x)^T g(x),  g(x) = sum_j Hc(d_j) v_j,    E(x) = sum_j grad phi(d_j) . v_j = -(5/(3 s^3)) sum_j (s + sqrt5 r_j) e_j (d_j . v_j),

so that F = -dE/dx exactly. Everything here works on plain arrays; :mod:`cgdml.gdml` holds the estimator.
"""
from __future__ import annotations

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
@nb.njit(cache=True, parallel=True)
def _fuse(P, Q, sqx, sqt, tv, sigma, want_e, S, E):
    """From P = Dx Dt^T and Q = Dx V^T, overwrite P with c1 and Q with c2 (d.v); row sums into S, energies into E."""
    B, M = P.shape
    k = 5.0 / (3.0 * sigma ** 4)
    a = SQRT5 / sigma
    ek = -5.0 / (3.0 * sigma ** 3)
    s2 = sigma * sigma
    for i in nb.prange(B):
        acc = 0.0
        acc_e = 0.0
        for j in range(M):
            r2 = sqx[i] + sqt[j] - 2.0 * P[i, j]
            r = np.sqrt(r2) if r2 > 0.0 else 0.0
            e = np.exp(-a * r)
            dv = Q[i, j] - tv[j]
            t = 5.0 * k * e * dv
            P[i, j] = k * (s2 + SQRT5 * sigma * r) * e
            Q[i, j] = t
            acc += t
            if want_e:
                acc_e += (sigma + SQRT5 * r) * e * dv
        S[i] = acc
        E[i] = ek * acc_e


def hessian_apply(Dx, Dt, V, sigma, energy=False, chunk=512, tv=None, sqt=None):
    """g_i = sum_j Hc(Dx_i - Dt_j) V_j for a batch, and optionally E_i = sum_j grad phi(d_ij) . V_j.

    Dx (B, nd), Dt (M, nd), V (M, nd). Works in row chunks of ``chunk`` with GEMMs; memory O(chunk * M).
    Returns g (B, nd) and E (B,) (zeros unless ``energy``).
    """
    Dx = np.ascontiguousarray(Dx, dtype=np.float64)
    B = Dx.shape[0]
    if tv is None:
        tv = np.einsum("md,md->m", Dt, V)
    if sqt is None:
        sqt = np.einsum("md,md->m", Dt, Dt)
    g = np.empty_like(Dx)
    E = np.zeros(B)
    S = np.empty(B)
    for b0 in range(0, B, chunk):
        x = Dx[b0:b0 + chunk]
        P = x @ Dt.T
        Q = x @ V.T
        sqx = np.einsum("bd,bd->b", x, x)
        _fuse(P, Q, sqx, sqt, tv, float(sigma), bool(energy), S[b0:b0 + chunk], E[b0:b0 + chunk])
        gb = P @ V
        gb += Q @ Dt
        gb -= S[b0:b0 + chunk, None] * x
        g[b0:b0 + chunk] = gb
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


@nb.njit(cache=True, parallel=True)
def _scale_dv(Q, C2, tv, S):
    B, M = Q.shape
    for i in nb.prange(B):
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

    def matvec(self, a):
        a = np.asarray(a, dtype=np.float64).reshape(self.M, self.r)
        V = np.einsum("mdr,mr->md", self.W, a)
        tv = np.einsum("md,md->m", self.D, V)
        y = np.empty((self.M, self.r))
        for i0 in range(0, self.M, self.chunk):
            sl = slice(i0, i0 + self.chunk)
            x = self.D[sl]
            Q = x @ V.T
            S = np.empty(Q.shape[0])
            _scale_dv(Q, self.C2[sl], tv, S)
            g = self.C1[sl] @ V
            g += Q @ self.D
            g -= S[:, None] * x
            y[sl] = np.einsum("mdr,md->mr", self.W[sl], g)
        return y.ravel()
