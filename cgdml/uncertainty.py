"""Force uncertainty: the sparse Gaussian-process posterior of a GDML force field (docs/uncertainty.md).

GDML is a GP on the energy E(x) = f(D(x)) with the Matérn 5/2 kernel s^2 k(D, D') (unit-amplitude k, signal
variance s^2); its training data are the reduced forces y_i = -W_i^T grad f(D_i) + noise of variance s^2 lam, with
W_i = U_i S_i from the thin SVD of the descriptor Jacobian (:func:`cgdml.gdml.reduce_frames`). On m inducing
configurations u and all n training frames, the DTC (deterministic training conditional) posterior covariance
of the Cartesian force at x* is

    cov(F*) = s^2 [J*^T Hc(0) J* - K_u*^T B K_u*],   B = K_uu^-1 - lam (lam K_uu + G)^-1,   G = K_un K_nu,

with K_u* = [W_j^T Hc(D_j - D*) J*]_j (m r, 3N) and Hc(0) = 5 / (3 sigma^2) I. When u is the training set,
B = (K + lam I)^-1: the exact GP posterior. :class:`ForcePosterior` keeps a factor Phi (m r, k) with
Phi Phi^T <= B (the variance it gives is never below the full one) and posterior function samples.
:func:`instantaneous_noise` estimates the noise variance of the labels from the data alone.

Units: nm, kJ/mol/nm; variances in (kJ/mol/nm)^2; sigma in descriptor units (nm^-1); lam absolute (the
estimator's ``lam_``, what is added to the reduced kernel's diagonal).
"""
from __future__ import annotations

import dataclasses
import json
import time

import numba as nb
import numpy as np
import scipy.linalg

from . import kernels
from ._io import CgdmlError, Fields, as_array, as_float, as_int, as_json, as_str, json_default
from .data import as_coordinates, check_coords_forces
from .features import as_quads, descriptor, descriptor_jacobian, n_descriptors, reduce_frames
from .gdml_model import GDMLModel

POSTERIOR_FORMAT = "cgdml.ForcePosterior"
POSTERIOR_VERSION = 1
INDUCING_CHOICES = ("fps", "random")
_JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)
SQRT5 = np.sqrt(5.0)


@nb.njit(cache=True, nogil=True, fastmath=True)
def _accumulate(X, Du, Pc, sigma, b0, b1, T, d, q):
    """T[b - b0] = sum_j Hc(X_b - Du_j) Pc[j] for b in [b0, b1): Pc (m, nd, kb), T (tile, nd, kb)."""
    nd = X.shape[1]
    m, _, kb = Pc.shape
    kk = 5.0 / (3.0 * sigma ** 4)
    a = SQRT5 / sigma
    T[:] = 0.0
    for j in range(m):  # Pc[j] stays in L1 and T in L2 while the tile's frames use them
        Pj = Pc[j]
        for b in range(b0, b1):
            r2 = 0.0
            for t in range(nd):
                d[t] = X[b, t] - Du[j, t]
                r2 += d[t] * d[t]
            r = np.sqrt(r2)
            e = np.exp(-a * r)
            if e == 0.0:
                continue
            c1 = kk * (sigma * sigma + SQRT5 * sigma * r) * e
            c2 = 5.0 * kk * e
            q[:] = 0.0
            for t in range(nd):
                dt = d[t]
                for l in range(kb):
                    q[l] += dt * Pj[t, l]
            Tb = T[b - b0]
            for t in range(nd):
                cd = c2 * d[t]
                for l in range(kb):
                    Tb[t, l] += c1 * Pj[t, l] - cd * q[l]


@nb.njit(cache=True, parallel=True)
def _hessian_columns(X, Du, Pb, sigma, Tb, tile):
    """Tb[c, b] = sum_j Hc(X_b - Du_j) Pb[c, j]: Pb (n_blocks, m, nd, kb), Tb (n_blocks, B, nd, kb)."""
    B, nd = X.shape
    n_blocks, m, _, kb = Pb.shape
    n_tiles = (B + tile - 1) // tile
    for task in nb.prange(n_tiles * n_blocks):
        c = task % n_blocks
        b0 = (task // n_blocks) * tile
        b1 = min(b0 + tile, B)
        _accumulate(X, Du, Pb[c], sigma, b0, b1, Tb[c, b0:b1], np.empty(nd), np.empty(kb))


@nb.njit(cache=True, parallel=True, fastmath=True)
def _variance_reduction(X, Jt, Du, Pb, sigma, out, tile):
    """out[c, b, i] = sum over the columns l of block c of (J_b^T T_b)[i, l]^2, with T_b = sum_j Hc(X_b - Du_j) Pb[c, j]
    and Jt (B, 3N, nd) the transposed Jacobians (their zeros are skipped: J is sparse)."""
    B, nd = X.shape
    n_blocks, m, _, kb = Pb.shape
    n_cart = Jt.shape[1]
    n_tiles = (B + tile - 1) // tile
    for task in nb.prange(n_tiles * n_blocks):
        c = task % n_blocks
        b0 = (task // n_blocks) * tile
        b1 = min(b0 + tile, B)
        T = np.empty((b1 - b0, nd, kb))
        _accumulate(X, Du, Pb[c], sigma, b0, b1, T, np.empty(nd), np.empty(kb))
        row = np.empty(kb)
        for b in range(b0, b1):
            Tb = T[b - b0]
            for i in range(n_cart):
                row[:] = 0.0
                for t in range(nd):
                    jt = Jt[b, i, t]
                    if jt != 0.0:
                        for l in range(kb):
                            row[l] += jt * Tb[t, l]
                acc = 0.0
                for l in range(kb):
                    acc += row[l] * row[l]
                out[c, b, i] = acc


def column_blocks(P):
    """P (m, nd, k) as C-contiguous column blocks (n_blocks, m, nd, kb) for :func:`hessian_columns`, zero-padded:
    kb columns of P_j take 32 kB."""
    m, nd, k = P.shape
    kb = int(np.clip(4096 // nd, 8, k))
    n_blocks = -(-k // kb)
    Pb = np.zeros((n_blocks, m, nd, kb))
    for c in range(n_blocks):
        Pb[c, :, :, : min(kb, k - c * kb)] = P[:, :, c * kb:(c + 1) * kb]
    return Pb


def _tile(nd, kb):
    return int(np.clip(65536 // (nd * kb), 1, 64))  # frames whose (nd, kb) blocks of T take 512 kB


def variance_reduction(X, J, Du, Pb, sigma):
    """sum_l (J_b^T T_b)[i, l]^2 (B, 3N) for queries X (B, nd) with Jacobians J (B, nd, 3N), T_b as in
    :func:`hessian_columns` for the column blocks Pb of :func:`column_blocks` (zero padding adds nothing)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    Jt = np.ascontiguousarray(np.asarray(J, dtype=np.float64).transpose(0, 2, 1))
    n_blocks, m, nd, kb = Pb.shape
    out = np.empty((n_blocks, X.shape[0], Jt.shape[1]))
    _variance_reduction(X, Jt, np.ascontiguousarray(Du, dtype=np.float64), Pb, float(sigma), out, _tile(nd, kb))
    return out.sum(axis=0)


def hessian_columns(X, Du, P, sigma, k=None):
    """T[b] = sum_j Hc(X_b - Du_j) P_j for queries X (B, nd), centres Du (m, nd), columns P (m, nd, k): (B, nd, k).

    Each of the k columns is what a GDML model with coefficients P[:, :, l] gives in descriptor space (g(x) of
    :mod:`cgdml.kernels`): 4 B m nd k flops. P may be given as :func:`column_blocks` (n_blocks, m, nd, kb) with
    ``k`` its column count. Numba, parallel over tiles of frames and blocks of columns, sized so that a block
    of P_j stays in L1 and the tile's block of T in L2 (several times faster than the same sums as GEMMs,
    whose (B, m, k) intermediate is memory-bound).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    if P.ndim == 3:
        k = P.shape[2]
        P = column_blocks(np.asarray(P, dtype=np.float64))
    n_blocks, m, nd, kb = P.shape
    Tb = np.empty((n_blocks, X.shape[0], nd, kb))
    _hessian_columns(X, np.ascontiguousarray(Du, dtype=np.float64), P, float(sigma), Tb, _tile(nd, kb))
    return Tb.transpose(1, 2, 0, 3).reshape(X.shape[0], nd, n_blocks * kb)[:, :, :k]


def _frame_chunks(n, per):
    return [(b, min(b + per, n)) for b in range(0, n, per)]


def _reduce(R, F, quads, chiral_scale, chunk=2048):
    """Descriptors (n, nd), W (n, nd, r), reduced labels (n, r) and sum |W|^2 (= |J|^2) per frame, in chunks."""
    parts = []
    for b0, b1 in _frame_chunks(len(R), chunk):
        D, W, y, _ = reduce_frames(R[b0:b1], F[b0:b1], quads, chiral_scale)
        parts.append((D, W, y))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def farthest_points(D, m, seed=0):
    """Sorted indices (m,) of a farthest-point subset of the rows of D (n, nd), from a random first row."""
    n = len(D)
    m = int(min(m, n))
    rng = np.random.default_rng([seed, 0xF95])
    idx = [int(rng.integers(n))]
    d2 = np.einsum("nd,nd->n", D - D[idx[0]], D - D[idx[0]])
    for _ in range(m - 1):
        j = int(np.argmax(d2))
        idx.append(j)
        diff = D - D[j]
        np.minimum(d2, np.einsum("nd,nd->n", diff, diff), out=d2)
    return np.sort(np.array(idx, dtype=np.int64))


class ForcePosterior:
    """The posterior of a GDML force field's force, as a low-rank DTC sparse GP (see the module docstring).

    inducing_descriptors (m, nd) nm^-1 and inducing_jacobians (m, nd, r) (W_j = U_j S_j) of the inducing
    configurations; sigma, quads, chiral_scale, n_beads: the descriptor and kernel of the model; lam the absolute
    regulariser (noise variance / s2); s2 the signal variance, so that the label noise variance is s2 lam
    ((kJ/mol/nm)^2 per reduced component); factor Phi (m r, k) with B ~ Phi Phi^T <= B; sample_coefficients
    (n_samples, m, nd): descriptor-space coefficients of posterior function samples (deviations from the mean);
    info: fit diagnostics (JSON-able dict); rank_profile (k + 1, 2), optional: for each rank i <= k, the fraction
    of the training frames' posterior variance and of trace(B) that keeping only i columns drops.
    """

    def __init__(self, inducing_descriptors, inducing_jacobians, sigma, quads, chiral_scale, n_beads, lam, s2,
                 factor, sample_coefficients, info=None, rank_profile=None):
        self.inducing_descriptors = np.ascontiguousarray(inducing_descriptors, dtype=np.float64)
        self.inducing_jacobians = np.ascontiguousarray(inducing_jacobians, dtype=np.float64)
        self.sigma = float(sigma)
        self.n_beads = int(n_beads)
        self.quads = as_quads(quads, self.n_beads)
        self.chiral_scale = float(chiral_scale)
        self.lam = float(lam)
        self.s2 = float(s2)
        self.factor = np.ascontiguousarray(factor, dtype=np.float64)
        self.sample_coefficients = np.ascontiguousarray(sample_coefficients, dtype=np.float64)
        self.info = dict(info or {})
        self.rank_profile = None if rank_profile is None else np.asarray(rank_profile, dtype=np.float64)
        self._check()
        m, nd, r = self.inducing_jacobians.shape
        # descriptor-space columns P_j = W_j Phi_j (m, nd, k)
        self._P = column_blocks(np.matmul(self.inducing_jacobians, self.factor.reshape(m, r, -1)))

    def _check(self):
        Du, Wu = self.inducing_descriptors, self.inducing_jacobians
        nd = n_descriptors(self.n_beads, len(self.quads))
        if Du.ndim != 2 or Du.shape[1] != nd or len(Du) < 1:
            raise CgdmlError(f"posterior inducing descriptors shaped {Du.shape}, expected (m >= 1, {nd})")
        if Wu.ndim != 3 or Wu.shape[:2] != Du.shape or Wu.shape[2] < 1:
            raise CgdmlError(f"posterior inducing Jacobians shaped {Wu.shape}, expected ({len(Du)}, {nd}, r)")
        m, _, r = Wu.shape
        if self.factor.ndim != 2 or self.factor.shape[0] != m * r:
            raise CgdmlError(f"posterior factor shaped {self.factor.shape}, expected ({m * r}, k)")
        S = self.sample_coefficients
        if S.ndim != 3 or S.shape[1:] != Du.shape:
            raise CgdmlError(f"posterior samples shaped {S.shape}, expected (n_samples, {m}, {nd})")
        for name in ("sigma", "lam", "s2"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise CgdmlError(f"posterior {name} must be a positive number, got {v!r}")
        if not np.isfinite(self.chiral_scale):
            raise CgdmlError(f"posterior chiral_scale must be finite, got {self.chiral_scale!r}")
        for name, a in (("descriptors", Du), ("Jacobians", Wu), ("factor", self.factor), ("samples", S)):
            if not np.isfinite(a).all():
                raise CgdmlError(f"posterior {name} hold NaN or inf")
        p = self.rank_profile
        if p is not None and (p.shape != (self.factor.shape[1] + 1, 2) or not np.isfinite(p).all()):
            raise CgdmlError(f"posterior rank profile shaped {p.shape}, expected ({self.factor.shape[1] + 1}, 2)")

    # ------------------------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, R, F, *, sigma, lam, quads, chiral_scale=1.0, inducing=None, max_reduced=4000, sample_frames=5000,
            rank=None, rank_tol=0.05, n_samples=32, s2=None, seed=0, chunk=512):
        """The DTC posterior of a GDML fit to forces F at R (n, n_beads, 3), nm and kJ/mol/nm.

        F are the labels the GDML was fitted to (the prior-subtracted forces), ``sigma`` its length scale and
        ``lam`` its ABSOLUTE lambda (the estimator's ``lam_``); ``quads``/``chiral_scale`` its descriptor.
        ``inducing``: frame indices (m,), or "fps" (default: farthest points in descriptor space among the sampled
        frames) or "random", with m r <= ``max_reduced``. G = K_un K_nu and the signal variance are estimated on
        ``sample_frames`` random frames scaled by n / n_sample (exact when n <= sample_frames). ``rank`` keeps the
        k leading directions of B; by default the fewest that raise the mean variance over the training frames by
        at most ``rank_tol`` (0: all). ``s2`` fixes the signal variance (default: maximum likelihood).
        ``n_samples`` posterior function samples are drawn with ``seed``. Kernel blocks are built ``chunk`` frames
        at a time: memory O((m r)^2 + chunk r m r).
        """
        t0 = time.perf_counter()
        timings = {}
        R, F, _ = check_coords_forces(R, F)
        n, n_beads = R.shape[:2]
        quads = as_quads(quads, n_beads)
        sigma, lam = float(sigma), float(lam)
        if not (np.isfinite(sigma) and sigma > 0 and np.isfinite(lam) and lam > 0):
            raise CgdmlError(f"sigma and lam must be positive numbers, got {sigma!r} and {lam!r}")
        rng = np.random.default_rng([seed, 0x0C5])
        sample = np.arange(n) if n <= sample_frames else np.sort(rng.choice(n, int(sample_frames), replace=False))
        scale = n / len(sample)
        Ds, Ws, ys = _reduce(R[sample], F[sample], quads, chiral_scale)
        r = Ws.shape[2]
        m_max = max(1, int(max_reduced) // r)
        if isinstance(inducing, str) or inducing is None:
            how = inducing or "fps"
            if how not in INDUCING_CHOICES:
                raise CgdmlError(f"inducing must be frame indices or one of {INDUCING_CHOICES}, got {inducing!r}")
            local = farthest_points(Ds, m_max, seed) if how == "fps" else \
                np.sort(rng.choice(len(sample), min(m_max, len(sample)), replace=False))
            idx = sample[local]
            Du, Wu = Ds[local], Ws[local]
        else:
            idx = np.asarray(inducing)
            if idx.ndim != 1 or not len(idx) or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n:
                raise CgdmlError(f"inducing must be frame indices in [0, {n}), got {idx!r}")
            if len(np.unique(idx)) != len(idx):
                raise CgdmlError("inducing frame indices must be distinct")
            Du, Wu, _ = _reduce(R[idx], F[idx], quads, chiral_scale)
        m = len(Du)
        mr = m * r
        timings["descriptors_s"] = time.perf_counter() - t0

        t = time.perf_counter()
        Kuu = kernels.assemble(Du, Wu, sigma, Du, Wu)
        Kuu = 0.5 * (Kuu + Kuu.T)
        G = np.zeros((mr, mr))
        b = np.zeros(mr)
        for c0, c1 in _frame_chunks(len(sample), max(1, int(chunk))):
            K = kernels.assemble(Ds[c0:c1], Ws[c0:c1], sigma, Du, Wu)   # (c r, m r)
            G += K.T @ K
            b += K.T @ ys[c0:c1].ravel()
        G = 0.5 * (G + G.T) * scale
        b *= scale
        yy = scale * float(np.sum(ys * ys))
        prior_trace = scale * 5.0 / (3.0 * sigma ** 2) * float(np.sum(Ws * Ws))  # sum_i tr K_ii over all frames
        timings["kernel_s"] = time.perf_counter() - t

        t = time.perf_counter()
        mean_diag = float(np.mean(np.diag(Kuu)))
        for jitter in _JITTERS:
            try:
                a, V = scipy.linalg.eigh(G, Kuu + jitter * mean_diag * np.eye(mr), check_finite=False)
                break
            except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
                continue
        else:
            raise CgdmlError("inducing kernel matrix is singular (duplicate inducing frames?)")
        order = np.argsort(a)[::-1]
        a, V = np.maximum(a[order], 0.0), V[:, order]   # V^T Kuu V = I, V^T G V = diag(a)
        timings["eigen_s"] = time.perf_counter() - t

        # B = V diag(a / (a + lam)) V^T; a column's share of the training frames' variance reduction a^2/(a+lam)
        reduction = a * a / (a + lam)
        post_trace = max(prior_trace - float(reduction.sum()), 0.0)   # sum over frames of tr(posterior cov)
        tail = np.concatenate([np.cumsum(reduction[::-1])[::-1], [0.0]])  # tail[k] = dropped with rank k
        if rank is None:
            k = int(np.argmax(tail <= rank_tol * post_trace)) if rank_tol > 0 else int(np.count_nonzero(a > 0))
            k = max(k, 1)
        else:
            k = int(np.clip(int(rank), 1, mr))
        w = np.sqrt(a / (a + lam))
        factor = V[:, :k] * w[:k]
        norms = np.einsum("ik,ik->k", V, V) * w * w               # |Phi_l|^2: trace(B) by column

        s2_estimated = s2 is None
        if s2_estimated:
            vb = V.T @ b
            s2 = (yy - float(np.sum(vb * vb / (lam + a)))) / (lam * n * r)
            s2 = max(s2, 1e-300)
        s2 = float(s2)
        z = np.random.default_rng([seed, 0x5A3]).standard_normal((mr, int(n_samples)))
        da = V @ (z / np.sqrt(lam + a)[:, None]) * np.sqrt(s2 * lam)        # N(0, s2 lam (lam Kuu + G)^-1)
        coeffs = np.einsum("mdr,mrs->smd", Wu, da.reshape(m, r, -1))
        timings["total_s"] = time.perf_counter() - t0
        info = dict(n_frames=int(n), n_sample=int(len(sample)), n_inducing=int(m), reduced_size=int(mr), rank=k,
                    inducing=(inducing if isinstance(inducing, str) else ("fps" if inducing is None else "given")),
                    inducing_index=np.asarray(idx).tolist(), jitter=float(jitter), s2_estimated=s2_estimated,
                    dropped_trace_fraction=float(norms[k:].sum() / max(norms.sum(), 1e-300)),
                    dropped_variance_fraction=float(tail[k] / max(post_trace, 1e-300)),
                    mean_train_variance=float(s2 * post_trace / (n * 3 * n_beads)), noise_variance=float(s2 * lam),
                    timings=timings)
        trace_tail = np.concatenate([np.cumsum(norms[::-1])[::-1], [0.0]])
        profile = np.column_stack([tail[:k + 1] / max(post_trace, 1e-300),
                                   trace_tail[:k + 1] / max(norms.sum(), 1e-300)])
        return cls(Du, Wu, sigma, quads, chiral_scale, n_beads, lam, s2, factor, coeffs, info, profile)

    # ------------------------------------------------------------------------------------------- predict
    @property
    def rank(self):
        return self.factor.shape[1]

    def truncated(self, rank):
        """A cheaper copy that keeps the ``rank`` leading columns of the factor (cost is proportional to the rank;
        the variance can only rise). ``info`` gets the dropped fractions of that rank (from ``rank_profile``)."""
        k = int(rank)
        if not 1 <= k <= self.rank:
            raise CgdmlError(f"rank must be between 1 and {self.rank}, got {rank!r}")
        info = dict(self.info, rank=k)
        if self.rank_profile is not None:
            info.update(dropped_variance_fraction=float(self.rank_profile[k, 0]),
                        dropped_trace_fraction=float(self.rank_profile[k, 1]))
        return ForcePosterior(self.inducing_descriptors, self.inducing_jacobians, self.sigma, self.quads,
                              self.chiral_scale, self.n_beads, self.lam, self.s2, self.factor[:, :k],
                              self.sample_coefficients, info,
                              None if self.rank_profile is None else self.rank_profile[:k + 1])

    @property
    def noise_variance(self):
        """The label noise variance of the GP, s2 lam, (kJ/mol/nm)^2 per reduced force component."""
        return self.s2 * self.lam

    def _chunk(self, chunk):
        if chunk is not None:
            return max(1, int(chunk))
        nd, k = self.inducing_descriptors.shape[1], max(self.rank, self.n_samples)
        return int(np.clip(4e6 // (nd * (6 * self.n_beads + k)), 16, 4096))  # ~32 MB of temporaries

    def force_variance(self, R, per_bead=False, chunk=None):
        """Posterior force variance (kJ/mol/nm)^2 at R (n, n_beads, 3) nm: (n,) trace(cov F*) / (3 n_beads), the
        variance per Cartesian component averaged over beads; ``per_bead``: (n, n_beads), each bead's trace / 3."""
        R = as_coordinates(R, self.n_beads, "force posterior")
        n, N = R.shape[0], self.n_beads
        out = np.empty((n, N)) if per_bead else np.empty(n)
        c0 = 5.0 / (3.0 * self.sigma ** 2)
        for b0, b1 in _frame_chunks(n, self._chunk(chunk)):
            D, J = descriptor_jacobian(R[b0:b1], self.quads, self.chiral_scale)
            red = variance_reduction(D, J, self.inducing_descriptors, self._P, self.sigma)  # |Phi^T K_u*|^2 (B, 3N)
            var = self.s2 * (c0 * np.einsum("btc,btc->bc", J, J) - red)
            var = np.maximum(var, 0.0)
            out[b0:b1] = var.reshape(-1, N, 3).sum(-1) / 3.0 if per_bead else var.mean(axis=1)
        return out

    def prior_variance(self, R, per_bead=False):
        """The prior force variance s2 J^T Hc(0) J (same shapes and units as :meth:`force_variance`): the limit far
        from every training configuration."""
        R = as_coordinates(R, self.n_beads, "force posterior")
        _, J = descriptor_jacobian(R, self.quads, self.chiral_scale)
        var = self.s2 * 5.0 / (3.0 * self.sigma ** 2) * np.einsum("btc,btc->bc", J, J)
        return var.reshape(len(R), self.n_beads, 3).sum(-1) / 3.0 if per_bead else var.mean(axis=1)

    @property
    def n_samples(self):
        return self.sample_coefficients.shape[0]

    def sample_model(self, i):
        """Posterior function sample ``i`` as a :class:`cgdml.model.GDMLModel`: its energy and forces are the
        sample's deviation from the posterior mean (add them to the fitted model's)."""
        return GDMLModel(self.inducing_descriptors, self.sample_coefficients[i], self.sigma, self.quads,
                         self.chiral_scale, 0.0, self.n_beads)

    def sample_forces(self, R, chunk=None):
        """Force deviations (n_samples, n, n_beads, 3) kJ/mol/nm of all posterior samples at R (n, n_beads, 3)."""
        R = as_coordinates(R, self.n_beads, "force posterior")
        P = np.ascontiguousarray(self.sample_coefficients.transpose(1, 2, 0))   # (m, nd, S)
        out = np.empty((self.n_samples, len(R), self.n_beads, 3))
        for b0, b1 in _frame_chunks(len(R), self._chunk(chunk)):
            D, J = descriptor_jacobian(R[b0:b1], self.quads, self.chiral_scale)
            T = hessian_columns(D, self.inducing_descriptors, P, self.sigma)          # (B, nd, S)
            out[:, b0:b1] = np.einsum("bds,bdc->sbc", T, J).reshape(self.n_samples, b1 - b0, self.n_beads, 3)
        return out

    # ---------------------------------------------------------------------------------------- persistence
    def to_arrays(self):
        """The posterior as a dict of numpy arrays (no pickles), for embedding in an ``.npz``."""
        return {"format": np.array(POSTERIOR_FORMAT), "version": np.int64(POSTERIOR_VERSION),
                "inducing_descriptors": self.inducing_descriptors, "inducing_jacobians": self.inducing_jacobians,
                "sigma": np.float64(self.sigma), "quads": self.quads, "chiral_scale": np.float64(self.chiral_scale),
                "n_beads": np.int64(self.n_beads), "lam": np.float64(self.lam), "s2": np.float64(self.s2),
                "factor": self.factor, "sample_coefficients": self.sample_coefficients,
                "info_json": np.array(json.dumps(self.info, default=json_default)),
                **({} if self.rank_profile is None else {"rank_profile": self.rank_profile})}

    @classmethod
    def from_arrays(cls, arrays, prefix=""):
        """Rebuild from :meth:`to_arrays` output (entries named ``prefix + name``); a missing or damaged entry is a
        one-line :class:`CgdmlError` naming it."""
        f = Fields(arrays, prefix)
        if "format" not in f:
            raise CgdmlError(f"no force posterior (missing field {prefix + 'format'!r})")
        fmt, version = f.get("format", as_str), f.get("version", as_int)
        if fmt != POSTERIOR_FORMAT:
            raise CgdmlError(f"not a cgdml force posterior (format {fmt!r})")
        if version > POSTERIOR_VERSION or version < 1:
            raise CgdmlError(f"force posterior format version {version} is not one this cgdml reads "
                             f"(1 to {POSTERIOR_VERSION}); upgrade cgdml")
        positive = lambda v: as_float(v, positive=True)  # noqa: E731
        n_beads = f.get("n_beads", as_int)
        if n_beads < 2:
            raise CgdmlError(f"damaged field {prefix + 'n_beads'!r} ({n_beads})")
        quads = f.get("quads", lambda v: as_quads(as_array(v, "i"), n_beads))
        nd = n_descriptors(n_beads, len(quads))
        Du = f.get("inducing_descriptors", lambda v: as_array(v, shape=(None, nd)))
        if not len(Du):
            raise CgdmlError(f"damaged field {prefix + 'inducing_descriptors'!r} (no inducing configuration)")
        Wu = f.get("inducing_jacobians", lambda v: as_array(v, shape=(len(Du), nd, None)))
        factor = f.get("factor", lambda v: as_array(v, shape=(len(Du) * Wu.shape[2], None)))
        samples = f.get("sample_coefficients", lambda v: as_array(v, shape=(None, len(Du), nd)))
        return cls(Du, Wu, f.get("sigma", positive), quads, f.get("chiral_scale", as_float), n_beads,
                   f.get("lam", positive), f.get("s2", positive), factor, samples, f.get("info_json", as_json, {}),
                   f.get("rank_profile", lambda v: as_array(v, shape=(factor.shape[1] + 1, 2)), None))


# ------------------------------------------------------------------------------------------ label noise
@dataclasses.dataclass
class NoiseEstimate:
    """Label noise from nearest-neighbour frame pairs: ``variance`` (kJ/mol/nm)^2 per Cartesian component (mean over
    beads), ``per_bead`` (n_beads,), the fitted ``slope`` in descriptor distance^2, ``n_pairs`` used and their
    largest squared descriptor distance ``max_distance2``."""
    variance: float
    per_bead: np.ndarray
    slope: float
    n_pairs: int
    max_distance2: float

    def __float__(self):
        return float(self.variance)


def _kabsch(P, Q):
    """Rotations (n, 3, 3) that best map the centred P (n, N, 3) onto the centred Q: Q ~ P @ Rot^T."""
    Pc = P - P.mean(axis=1, keepdims=True)
    Qc = Q - Q.mean(axis=1, keepdims=True)
    H = np.einsum("nai,naj->nij", Pc, Qc)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.matmul(U, Vt)))
    Dg = np.ones((len(P), 3))
    Dg[:, 2] = d
    return np.einsum("nji,nj,nkj->nik", Vt, Dg, U)    # V diag(1, 1, d) U^T


def instantaneous_noise(R, F, quads=(), chiral_scale=1.0, *, n_queries=2000, max_frames=20000, fraction=0.5,
                        min_separation=0, seed=0, chunk=256):
    """The noise variance of instantaneous forces F at R (n, n_beads, 3), estimated from the data alone.

    Each of ``n_queries`` random frames i is paired with its nearest frame j in descriptor space (among up to
    ``max_frames`` random frames, never |i - j| <= ``min_separation`` in index: set it to the force correlation
    time in frames when frames are consecutive snapshots). F_j is rotated by the rigid alignment of R_j onto R_i,
    and h = |F_i - Rot F_j|^2 / (2 * 3 n_beads) is half the mean squared difference. If labels are mean force
    plus independent noise of variance v per component, E h = v + O(d^2) for descriptor distance d: a line in
    d^2 fitted to the ``fraction`` of nearest pairs has intercept v. Returns a :class:`NoiseEstimate` in
    (kJ/mol/nm)^2 per component.
    """
    R, F, _ = check_coords_forces(R, F)
    n, N = R.shape[:2]
    if n < 3:
        raise CgdmlError(f"noise estimate needs at least 3 frames, got {n}")
    rng = np.random.default_rng([seed, 0x9015E])
    pool = np.arange(n) if n <= max_frames else np.sort(rng.choice(n, int(max_frames), replace=False))
    queries = pool if len(pool) <= n_queries else np.sort(rng.choice(pool, int(n_queries), replace=False))
    Dp = descriptor(R[pool], quads, chiral_scale)
    Dq = descriptor(R[queries], quads, chiral_scale)
    sq = np.einsum("nd,nd->n", Dp, Dp)
    nearest = np.empty(len(queries), dtype=np.int64)
    dist2 = np.empty(len(queries))
    for b0, b1 in _frame_chunks(len(queries), chunk):
        x = Dq[b0:b1]
        d2 = np.einsum("bd,bd->b", x, x)[:, None] + sq[None] - 2.0 * x @ Dp.T
        close = np.abs(queries[b0:b1, None] - pool[None, :]) <= min_separation
        d2[close] = np.inf
        j = np.argmin(d2, axis=1)
        nearest[b0:b1] = pool[j]
        dist2[b0:b1] = np.maximum(d2[np.arange(b1 - b0), j], 0.0)
    ok = np.isfinite(dist2)
    if ok.sum() < 3:
        raise CgdmlError("noise estimate found fewer than 3 frame pairs (min_separation too large?)")
    qi, qj, dist2 = queries[ok], nearest[ok], dist2[ok]
    rot = _kabsch(R[qj], R[qi])
    Fj = np.einsum("nac,nkc->nak", F[qj], rot)
    h_bead = 0.5 * ((F[qi] - Fj) ** 2).sum(-1) / 3.0                      # (pairs, N)
    keep = np.argsort(dist2)[: max(3, int(round(fraction * len(dist2))))]
    x = dist2[keep]
    A = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(A, h_bead[keep], rcond=None)               # (2, N): per-bead intercepts, slopes
    per_bead = coef[0]
    return NoiseEstimate(float(per_bead.mean()), per_bead, float(coef[1].mean()), int(len(keep)), float(x.max()))
