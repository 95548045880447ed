"""GDML descriptor: inverse pairwise bead distances plus (optionally) sines of chosen bead dihedrals.

Layout of one descriptor row (length ``n_descriptors(n_beads, len(quads))``):

* ``1 / |r_a - r_b|`` (nm^-1) for every pair ``a > b`` in the order of ``numpy.tril_indices(n, k=-1)``:
  (1,0), (2,0), (2,1), (3,0), ... -- the same order as sgdml, so models agree with it entry by entry;
* ``chiral_scale * sin(phi_q)`` for every bead quadruple q in ``quads`` (n_quads, 4), with the IUPAC sign
  convention of ``mdtraj.compute_dihedrals``. Inverse distances cannot tell a configuration from its mirror
  image; the dihedral sines can. The quadruples come from the CG topology (its proper dihedrals and the
  impropers at branch points, :mod:`cgdml.topology`); :func:`chain_quads` gives consecutive beads, for a bare
  chain with no topology.

The Jacobian ``J = dD/dx`` has shape (n_desc, 3 n_beads) with Cartesian index ``3 * bead + axis``.
``descriptor_vjp`` computes ``J^T g`` without forming ``J`` (the hot path of force prediction);
:func:`reduce_frames` puts frames in the reduced basis of their Jacobian (the GDML fit's and the force
posterior's training set, :mod:`cgdml.gdml`, :mod:`cgdml.uncertainty`).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ._io import CgdmlError
from .geometry import dihedral_angle_grad


def n_descriptors(n_beads: int, n_quads: int = 0) -> int:
    """Descriptor length: n(n-1)/2 inverse distances plus one sine per dihedral quadruple."""
    return n_beads * (n_beads - 1) // 2 + int(n_quads)


def chain_quads(n_beads: int):
    """Consecutive bead quadruples (k, k+1, k+2, k+3), (n_beads - 3, 4): the dihedrals of a bare chain."""
    return np.array([(k, k + 1, k + 2, k + 3) for k in range(n_beads - 3)], dtype=np.int64).reshape(-1, 4)


def as_quads(quads, n_beads: int):
    """``quads`` as a C-contiguous int64 (n_quads, 4) array of valid, distinct bead indices (one-line errors)."""
    q = np.ascontiguousarray(np.asarray(quads if quads is not None else [], dtype=np.int64).reshape(-1, 4))
    if q.size and (q.min() < 0 or q.max() >= n_beads):
        raise CgdmlError(f"dihedral quadruples must index the {n_beads} beads, got {q.tolist()}")
    s = np.sort(q, axis=1)
    if (s[:, 1:] == s[:, :-1]).any():
        raise CgdmlError(f"each dihedral quadruple needs four distinct beads, got {q.tolist()}")
    return q


def pair_indices(n_beads: int):
    """(a, b) bead index arrays of the inverse-distance entries, sgdml order (a > b)."""
    return np.tril_indices(n_beads, k=-1)


@nb.njit(cache=True, nogil=True)
def _descriptor_kernel(R, quads, scale, D):
    n, nb_ = R.shape[0], R.shape[1]
    for f in range(n):
        x = R[f]
        k = 0
        for a in range(1, nb_):
            for b in range(a):
                dx = x[a, 0] - x[b, 0]
                dy = x[a, 1] - x[b, 1]
                dz = x[a, 2] - x[b, 2]
                D[f, k] = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
                k += 1
        grad = np.empty((4, 3))
        for q in range(quads.shape[0]):
            D[f, k] = scale * np.sin(dihedral_angle_grad(x, quads[q, 0], quads[q, 1], quads[q, 2], quads[q, 3], grad))
            k += 1


@nb.njit(cache=True, nogil=True)
def _jacobian_kernel(R, quads, scale, D, J):
    n, nb_ = R.shape[0], R.shape[1]
    for f in range(n):
        x = R[f]
        k = 0
        for a in range(1, nb_):
            for b in range(a):
                dx = x[a, 0] - x[b, 0]
                dy = x[a, 1] - x[b, 1]
                dz = x[a, 2] - x[b, 2]
                inv = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
                D[f, k] = inv
                inv3 = inv * inv * inv
                J[f, k, 3 * a + 0] = -dx * inv3
                J[f, k, 3 * a + 1] = -dy * inv3
                J[f, k, 3 * a + 2] = -dz * inv3
                J[f, k, 3 * b + 0] = dx * inv3
                J[f, k, 3 * b + 1] = dy * inv3
                J[f, k, 3 * b + 2] = dz * inv3
                k += 1
        grad = np.empty((4, 3))
        for q in range(quads.shape[0]):
            angle = dihedral_angle_grad(x, quads[q, 0], quads[q, 1], quads[q, 2], quads[q, 3], grad)
            D[f, k] = scale * np.sin(angle)
            c = scale * np.cos(angle)
            for p in range(4):
                for d in range(3):
                    J[f, k, 3 * quads[q, p] + d] = c * grad[p, d]
            k += 1


@nb.njit(cache=True, nogil=True)
def _vjp_kernel(R, G, quads, scale, out):
    n, nb_ = R.shape[0], R.shape[1]
    for f in range(n):
        x = R[f]
        o = out[f]
        for a in range(nb_):
            o[a, 0] = 0.0
            o[a, 1] = 0.0
            o[a, 2] = 0.0
        k = 0
        for a in range(1, nb_):
            for b in range(a):
                dx = x[a, 0] - x[b, 0]
                dy = x[a, 1] - x[b, 1]
                dz = x[a, 2] - x[b, 2]
                inv = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
                c = -G[f, k] * inv * inv * inv
                o[a, 0] += c * dx
                o[a, 1] += c * dy
                o[a, 2] += c * dz
                o[b, 0] -= c * dx
                o[b, 1] -= c * dy
                o[b, 2] -= c * dz
                k += 1
        grad = np.empty((4, 3))
        for q in range(quads.shape[0]):
            angle = dihedral_angle_grad(x, quads[q, 0], quads[q, 1], quads[q, 2], quads[q, 3], grad)
            c = scale * G[f, k] * np.cos(angle)
            for p in range(4):
                for d in range(3):
                    o[quads[q, p], d] += c * grad[p, d]
            k += 1


def _check_R(R):
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[2] != 3 or R.shape[1] < 2:
        raise CgdmlError(f"coordinates must be shaped (n_frames, n_beads>=2, 3), got {R.shape}")
    return np.ascontiguousarray(R)


def descriptor(R, quads=(), chiral_scale: float = 1.0):
    """Descriptors D (n, n_desc) of coordinates R (n, n_beads, 3) in nm; D in nm^-1 (sines dimensionless).

    ``quads`` (n_quads, 4): the bead quadruples whose dihedral sines (times ``chiral_scale``) end the row.
    """
    R = _check_R(R)
    quads = as_quads(quads, R.shape[1])
    D = np.empty((R.shape[0], n_descriptors(R.shape[1], len(quads))))
    _descriptor_kernel(R, quads, float(chiral_scale), D)
    return D


def descriptor_jacobian(R, quads=(), chiral_scale: float = 1.0):
    """Descriptors D (n, n_desc) and Jacobians J = dD/dx (n, n_desc, 3 n_beads)."""
    R = _check_R(R)
    quads = as_quads(quads, R.shape[1])
    nd = n_descriptors(R.shape[1], len(quads))
    D = np.empty((R.shape[0], nd))
    J = np.zeros((R.shape[0], nd, 3 * R.shape[1]))
    _jacobian_kernel(R, quads, float(chiral_scale), D, J)
    return D, J


def descriptor_vjp(R, G, quads=(), chiral_scale: float = 1.0):
    """J(R)^T G per frame: R (n, n_beads, 3), G (n, n_desc) -> (n, n_beads, 3), without forming J."""
    R = _check_R(R)
    quads = as_quads(quads, R.shape[1])
    G = np.ascontiguousarray(G, dtype=np.float64)
    out = np.empty_like(R)
    _vjp_kernel(R, G, quads, float(chiral_scale), out)
    return out


def reduced_rank(n_beads: int, n_desc: int) -> int:
    """Rank kept per frame: 3N - 6 internal degrees of freedom (1 for a dimer), at most n_desc."""
    return min(n_desc, 3 * n_beads - 6 if n_beads >= 3 else 1)


def _one_blas_thread():
    """A context in which BLAS/LAPACK run on one thread (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


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
    # one BLAS thread: M small SVDs are 5-20x slower with OpenBLAS threads than without, worst on a busy machine
    # (benchmarks/results/bench_fit_speed.md)
    with _one_blas_thread():
        U, S, Vh = np.linalg.svd(J, full_matrices=False)
    W = U[:, :, :r] * S[:, None, :r]
    y = np.einsum("mkc,mc->mk", Vh[:, :r], F.reshape(M, -1))
    return D, W, y, float(np.sum(J * J))
