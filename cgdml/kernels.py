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


@nb.njit(cache=True, parallel=True)
def mirror_lower(A):
    """A[j, i] = A[i, j] for all i < j, in place: the upper triangle copied onto the lower one (of the array's
    index space, whatever its memory order). No index arrays, so no memory beyond A itself."""
    n = A.shape[0]
    for b in nb.prange((n + 63) // 64):
        for j in range(b * 64, min(n, b * 64 + 64)):
            for i in range(j):
                A[j, i] = A[i, j]


# ------------------------------------------------------------------------------------------------ BLAS form
class TrainTables:
    """Training-side matrices for batched prediction with GEMMs (built once per fitted model).

    With a = sqrt5 / s, one GEMM of the augmented batch [x, 1, |x|^2] with ``Z`` gives a^2 r_ij^2 and
    d_ij . v_j = x_i . v_j - D_j . v_j side by side; two more GEMMs with ``VA`` = [V, -D.V] and ``DA`` = [D, 1]
    give the descriptor-space force g_i, its row sums and the energy. :meth:`single` gives the same matrices in
    float32 about the training descriptors' centre c (so that |x - c|^2 + |D - c|^2 - 2 (x - c).(D - c) keeps
    its accuracy), for :func:`hessian_apply` with ``precision="float32"``.
    """

    def __init__(self, Dt, V, sigma, center=None, dtype=np.float64):
        Dt = np.ascontiguousarray(Dt, dtype=np.float64)
        V = np.ascontiguousarray(V, dtype=np.float64)
        self._arrays = (Dt, V)
        M, nd = Dt.shape
        self.center = None if center is None else np.asarray(center, dtype=np.float64)
        if self.center is not None:
            Dt = Dt - self.center
        a2 = 5.0 / sigma ** 2
        tv = np.einsum("md,md->m", Dt, V)
        Z = np.zeros((2 * M, nd + 2))
        Z[:M, :nd] = -2.0 * a2 * Dt
        Z[:M, nd] = a2 * np.einsum("md,md->m", Dt, Dt)
        Z[:M, nd + 1] = a2
        Z[M:, :nd] = V
        Z[M:, nd] = -tv
        self.ZT = np.ascontiguousarray(Z.T, dtype=dtype)
        self.VA = np.ascontiguousarray(np.column_stack([V, -tv]), dtype=dtype)
        self.DA = np.ascontiguousarray(np.column_stack([Dt, np.ones(M)]), dtype=dtype)
        self.M, self.nd, self.sigma, self.dtype = M, nd, float(sigma), np.dtype(dtype)
        self._single = None

    def single(self):
        """The float32 tables about the centre of the training descriptors (built on first use, then kept)."""
        if self.dtype == np.float32:
            return self
        if self._single is None:
            Dt, V = self._arrays
            self._single = TrainTables(Dt, V, self.sigma, center=Dt.mean(axis=0), dtype=np.float32)
        return self._single


@nb.njit(cache=True, nogil=True, fastmath=True)
def _pass1(P, M, A, zero):
    """P[:, :M] holds a^2 r^2: overwrite it with a r, and A with -a r (exp of A follows in numpy). ``zero`` in
    P's dtype keeps float32 arithmetic in float32."""
    B = P.shape[0]
    for i in range(B):
        for j in range(M):
            ar = np.sqrt(max(P[i, j], zero))
            P[i, j] = ar
            A[i, j] = -ar


@nb.njit(cache=True, nogil=True, fastmath=True)
def _pass2(P, M, A, one):
    """With A = exp(-a r): P[:, :M] <- (1 + a r) e (scaled c1) and P[:, M:] <- e (d.v) (scaled c2 d.v)."""
    B = P.shape[0]
    for i in range(B):
        for j in range(M):
            e = A[i, j]
            P[i, j] = (one + P[i, j]) * e
            P[i, M + j] *= e


def _apply_rows(X, tab, energy):
    """g (B, nd) and E (B,) or None for descriptors X (B, nd) float64: GEMMs in ``tab``'s dtype, about its centre
    when it has one; the last combination (where G2 and x cancel) in float64."""
    B, nd = X.shape
    M, dt = tab.M, tab.dtype
    s = tab.sigma
    if tab.center is not None:
        X = X - tab.center
    XA = np.empty((B, nd + 2), dtype=dt)
    XA[:, :nd] = X
    XA[:, nd] = 1.0
    XA[:, nd + 1] = np.einsum("bd,bd->b", X, X)
    P = XA @ tab.ZT  # (B, 2M): a^2 r^2 | d.v
    A = np.empty((B, M), dtype=dt)
    _pass1(P, M, A, dt.type(0.0))
    np.exp(A, out=A)
    _pass2(P, M, A, dt.type(1.0))
    G1 = np.asarray(P[:, :M] @ tab.VA, dtype=np.float64)  # sum_j c1' [v_j, -tv_j]
    G2 = np.asarray(P[:, M:] @ tab.DA, dtype=np.float64)  # sum_j c2' (d.v) [D_j, 1]
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


PRECISIONS = ("float64", "float32")


def hessian_apply(Dx, tab, energy=False, chunk=256, n_threads=None, precision="float64"):
    """g_i = sum_j Hc(Dx_i - D_j) v_j for a batch Dx (B, nd), and E_i = sum_j grad phi(d_ij) . v_j if ``energy``.

    ``tab`` is a :class:`TrainTables`. Rows are processed in chunks with single-threaded GEMMs, spread over
    ``n_threads`` Python threads (default: numba's thread count), which is much faster than multi-threaded
    BLAS on these thin products, above all on a busy machine. ``precision="float32"`` runs the GEMMs and the
    pair coefficients in single precision about the training descriptors' centre (:meth:`TrainTables.single`;
    accuracy: benchmarks/results/bench_beads.md), the final combination in float64. Returns g (B, nd) and E (B,)
    or None, float64.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        tab = tab.single()
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


# ------------------------------------------------------------------------- fused normal-equation pass
# exp(x) for x <= 0 as 2^k p(f), x = k ln2 + f, |f| <= ln2/2, p the degree-12 Taylor polynomial (truncation
# error below 2e-16): unlike numba's scalar libm call it vectorises, so the pair coefficients cost one pass.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # Cody-Waite split of ln 2
_LN2_LO = 1.90821492927058770002e-10


@nb.njit(cache=True, inline="always")
def _exp_taylor(f):
    p = 1.0 / 479001600.0
    p = p * f + 1.0 / 39916800.0
    p = p * f + 1.0 / 3628800.0
    p = p * f + 1.0 / 362880.0
    p = p * f + 1.0 / 40320.0
    p = p * f + 1.0 / 5040.0
    p = p * f + 1.0 / 720.0
    p = p * f + 1.0 / 120.0
    p = p * f + 1.0 / 24.0
    p = p * f + 1.0 / 6.0
    p = p * f + 0.5
    p = p * f + 1.0
    return p * f + 1.0


_FAST = {"nnan", "ninf", "nsz", "contract"}  # no reassociation: it would undo the Cody-Waite reduction


@nb.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _scale_rows(L, E, j, scale, kc1, kc2, one, forward):
    """Second half of the pair coefficients of row j: e = E scale, then c1' (row 2j), t (row 2j+1) and c2' (E),
    constants in L's precision. One array per loop: loops that mix rows of L with E do not vectorise (the
    compiler cannot rule out aliasing)."""
    a, b, e = L[2 * j], L[2 * j + 1], E[j]
    for i in range(e.size):
        e[i] *= scale[i]
    for i in range(e.size):
        a[i] = kc1 * (one + a[i]) * e[i]
    if forward:
        for i in range(e.size):
            b[i] *= kc2 * e[i]
    for i in range(e.size):
        e[i] *= kc2


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _pair_coeffs(L, E, kc1, kc2, bits, forward):
    """Matérn pair coefficients of a tile, in place.

    L (2m, B): row 2j holds a^2 r_ji^2 and becomes c1' = kc1 (1 + a r) e; row 2j+1 holds d.v and becomes
    t = c2' (d.v) when ``forward``. E (m, B) <- c2' = kc2 e, with e = exp(-a r). ``bits`` (B,) int64 scratch.
    L and E are float64.
    """
    m, B = E.shape
    scale = bits.view(np.float64)
    for j in range(m):
        for i in range(B):
            ar = np.sqrt(max(L[2 * j, i], 0.0))
            x = max(-ar, -700.0)
            k = np.floor(x * _LOG2E + 0.5)
            E[j, i] = _exp_taylor((x - k * _LN2_HI) - k * _LN2_LO)
            bits[i] = (np.int64(k) + 1023) << 52  # 2^k
            L[2 * j, i] = ar
        _scale_rows(L, E, j, scale, kc1, kc2, 1.0, forward)


# float32 variant: degree-7 Taylor polynomial (truncation error 5e-9, below float32 rounding), 2^k from int32 bits,
# every constant float32 so that the loops run 16 lanes wide.
_F = np.float32
_F_LOG2E, _F_LN2_HI, _F_LN2_LO = _F(1.4426950408889634), _F(0.693359375), _F(-2.12194440e-4)
_F_XMIN, _F_HALF, _F_ONE, _F_ZERO = _F(-87.0), _F(0.5), _F(1.0), _F(0.0)
_F_C = (_F(1 / 5040), _F(1 / 720), _F(1 / 120), _F(1 / 24), _F(1 / 6))


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _pair_coeffs32(L, E, kc1, kc2, bits, forward):
    """:func:`_pair_coeffs` in float32 arithmetic (L, E float32; ``bits`` (B,) int32 scratch)."""
    m, B = E.shape
    scale = bits.view(np.float32)
    c1, c2 = _F(kc1), _F(kc2)
    p7, p6, p5, p4, p3 = _F_C
    for j in range(m):
        for i in range(B):
            ar = np.sqrt(max(L[2 * j, i], _F_ZERO))
            x = max(-ar, _F_XMIN)
            k = np.floor(x * _F_LOG2E + _F_HALF)
            f = (x - k * _F_LN2_HI) - k * _F_LN2_LO
            p = ((((((p7 * f + p6) * f + p5) * f + p4) * f + p3) * f + _F_HALF) * f + _F_ONE) * f + _F_ONE
            E[j, i] = p
            bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)  # 2^k
            L[2 * j, i] = ar
        _scale_rows(L, E, j, scale, c1, c2, _F_ONE, forward)


@nb.njit(cache=True, nogil=True)
def _augment(X, c, XA):
    """XA[i] = [x_i - c, 1, |x_i - c|^2] (centred descriptors keep |x|^2 + |D|^2 - 2 x.D accurate)."""
    B, nd = X.shape
    for i in range(B):
        s = 0.0
        for t in range(nd):
            xt = X[i, t] - c[t]
            XA[i, t] = xt
            s += xt * xt
        XA[i, nd] = 1.0
        XA[i, nd + 1] = s


@nb.njit(cache=True, nogil=True)
def _project(GT, Y, XA, W, R, forward):
    """Each frame's descriptor vector q_i = W_i u_i, with u_i = W_i^T g_i (g_i = GT[:nd, i] - x_i GT[nd, i]) when
    ``forward``, else u_i = Y[i]. Fills R (2B, nd+1): rows i = [q_i, x_i.q_i], rows B+i = [-x_i, -1]."""
    B, nd, r = W.shape
    g = np.empty(nd)
    u = np.empty(r)
    for i in range(B):
        if forward:
            s = np.float64(GT[nd, i])
            for t in range(nd):
                g[t] = GT[t, i] - XA[i, t] * s
            for k in range(r):
                acc = 0.0
                for t in range(nd):
                    acc += W[i, t, k] * g[t]
                u[k] = acc
        else:
            for k in range(r):
                u[k] = Y[i, k]
        xq = 0.0
        for t in range(nd):
            acc = 0.0
            for k in range(r):
                acc += W[i, t, k] * u[k]
            R[i, t] = acc
            xq += acc * XA[i, t]
            R[B + i, t] = -XA[i, t]
        R[i, nd] = xq
        R[B + i, nd] = -1.0


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _adjoint_coeffs(L, S, E, R):
    """L[2j+1, i] <- u = c2' (d_ij . q_i) = E * S; then R[i, nd] <- 0 (R[:B] becomes [q_i, 0])."""
    m, B = E.shape
    for j in range(m):
        for i in range(B):
            L[2 * j + 1, i] = E[j, i] * S[j, i]
    for i in range(B):
        R[i, R.shape[1] - 1] = 0.0


class InducingTables:
    """Inducing-side matrices of :func:`normal_pass` for descriptors Dm (m, nd) and coefficients V (m, nd).

    Rows 2j and 2j+1 of ``Z`` (2m, nd+2) give a^2 r^2 and d.v against the augmented frames [x - c, 1, |x - c|^2]
    (c the centre of Dm); columns 2j, 2j+1 of ``VDT`` (nd+1, 2m) are [v_j, 0] and [D_j - c, 1], and ``DA``
    (m, nd+1) = [-(D_j - c), 1]. ``dtype`` is that of the GEMMs (float64, or float32 for the fast approximate pass).
    """

    def __init__(self, Dm, V, sigma, dtype=np.float64):
        Dm = np.asarray(Dm, dtype=np.float64)
        m, nd = Dm.shape
        self.center = Dm.mean(axis=0)
        Dc = Dm - self.center
        a2 = 5.0 / sigma ** 2
        Z = np.zeros((m, 2, nd + 2))
        Z[:, 0, :nd] = -2.0 * a2 * Dc
        Z[:, 0, nd] = a2 * np.einsum("md,md->m", Dc, Dc)
        Z[:, 0, nd + 1] = a2
        VD = np.zeros((m, 2, nd + 1))
        VD[:, 1, :nd] = Dc
        VD[:, 1, nd] = 1.0
        if V is not None:
            V = np.asarray(V, dtype=np.float64)
            Z[:, 1, :nd] = V
            Z[:, 1, nd] = -np.einsum("md,md->m", Dc, V)
            VD[:, 0, :nd] = V
        self.Z = np.ascontiguousarray(Z.reshape(2 * m, nd + 2), dtype=dtype)
        self.VDT = np.ascontiguousarray(VD.reshape(2 * m, nd + 1).T, dtype=dtype)
        self.DA = np.ascontiguousarray(np.column_stack([-Dc, np.ones(m)]), dtype=dtype)
        self.Dc = Dc
        k = 5.0 / (3.0 * sigma ** 4)
        self.kc1, self.kc2 = k * sigma * sigma, 5.0 * k
        self.m, self.nd, self.dtype, self.forward = m, nd, np.dtype(dtype), V is not None


def _normal_range(D, W, Y, tab, b0, b1, block):
    """sum_{i in [b0, b1)} Hc(D_i - D_j) q_i for all j, tile by tile: (m, nd+1) before the last correction."""
    m, nd, dt = tab.m, tab.nd, tab.dtype
    XA = np.empty((block, nd + 2), dtype=dt)
    Lbuf = np.empty(2 * m * block, dtype=dt)
    Ebuf = np.empty(m * block, dtype=dt)
    Sbuf = np.empty(m * block, dtype=dt)
    Gbuf = np.empty((nd + 1) * block, dtype=dt)
    Rbuf = np.empty(2 * block * (nd + 1), dtype=dt)
    out = np.empty((m, nd + 1), dtype=dt)
    f32 = dt == np.float32
    coeffs = _pair_coeffs32 if f32 else _pair_coeffs
    bits = np.empty(block, dtype=np.int32 if f32 else np.int64)
    no_labels = np.empty((block, W.shape[2]))
    h = np.zeros((m, nd + 1))
    for c0 in range(b0, b1, block):
        c1 = min(c0 + block, b1)
        B = c1 - c0
        xa = XA[:B]
        _augment(D[c0:c1], tab.center, xa)
        L = Lbuf[:2 * m * B].reshape(2 * m, B)
        E = Ebuf[:m * B].reshape(m, B)
        R = Rbuf[:2 * B * (nd + 1)].reshape(2 * B, nd + 1)
        np.matmul(tab.Z, xa.T, out=L)                       # a^2 r^2 and d.v, interleaved rows
        coeffs(L, E, tab.kc1, tab.kc2, bits[:B], tab.forward)
        GT = Gbuf[:(nd + 1) * B].reshape(nd + 1, B)
        if tab.forward:
            np.matmul(tab.VDT, L, out=GT)                   # sum_j [c1' v_j + t D_j, t], transposed
        _project(GT, no_labels[:B] if tab.forward else Y[c0:c1], xa, W[c0:c1], R, tab.forward)
        S = Sbuf[:m * B].reshape(m, B)
        np.matmul(tab.DA, R[:B].T, out=S)                    # d_ij . q_i = x_i.q_i - D_j.q_i
        _adjoint_coeffs(L, S, E, R)
        np.matmul(L.reshape(m, 2 * B), R, out=out)           # [c1'^T | u^T] [[q, 0], [-x, -1]]
        h += out
    return h


def normal_pass(D, W, tab, Y=None, block=None, n_threads=None, task=16384):
    """h_j = sum_i Hc(D_i - D_j) q_i (m, nd) over all frames i, streamed in tiles: one pass for K_mN K_Nm v.

    D (N, nd) and W (N, nd, r) are the frames' descriptors and reduced Jacobians, ``tab`` an
    :class:`InducingTables`. With coefficients in ``tab`` (the forward pass), q_i = W_i W_i^T g_i with
    g_i = sum_j Hc(D_i - D_j) v_j, frame i's prediction: ``K_mN K_Nm a`` in descriptor space. Without them,
    q_i = W_i Y_i for labels Y (N, r): ``K_mN y``. Each pair's kernel coefficients (one exp) serve both
    directions, and every product is a GEMM on a tile of ``block`` frames that stays in cache. Tiles run in
    tasks of ``task`` frames on ``n_threads`` threads (single-threaded BLAS each); the sum over frames is
    accumulated in float64 whatever the GEMM dtype.
    """
    N = D.shape[0]
    n_threads = nb.get_num_threads() if n_threads is None else int(n_threads)
    task = max(1, min(int(task), -(-N // max(1, n_threads))))
    if block is None:
        block = max(32, min(128, 65536 // tab.m // 32 * 32))  # 32 to 256 frames cost the same within 5%
    block = min(int(block), task)
    bounds = [(b, min(b + task, N)) for b in range(0, N, task)]
    with _blas_controller().limit(limits=1, user_api="blas"):
        run = lambda b: _normal_range(D, W, Y, tab, b[0], b[1], block)
        parts = [run(b) for b in bounds] if n_threads <= 1 or len(bounds) == 1 else \
            list(_executor(n_threads).map(run, bounds))
    h = np.sum(parts, axis=0) if len(parts) > 1 else parts[0]
    return h[:, :tab.nd] - tab.Dc * h[:, tab.nd:]


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
