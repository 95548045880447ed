"""GDML descriptor: inverse pairwise bead distances plus (optionally) sines of backbone dihedrals.

Layout of one descriptor row (length ``n_descriptors(n_beads, chiral)``):

* ``1 / |r_a - r_b|`` (nm^-1) for every pair ``a > b`` in the order of ``numpy.tril_indices(n, k=-1)``:
  (1,0), (2,0), (2,1), (3,0), ... -- the same order as sgdml, so models agree with it entry by entry;
* if ``chiral``: ``chiral_scale * sin(phi_k)`` for every consecutive quadruple (k, k+1, k+2, k+3), with the
  IUPAC sign convention of ``mdtraj.compute_dihedrals``. Inverse distances cannot tell a configuration from
  its mirror image; the dihedral sines can.

The Jacobian ``J = dD/dx`` has shape (n_desc, 3 n_beads) with Cartesian index ``3 * bead + axis``.
``descriptor_vjp`` computes ``J^T g`` without forming ``J`` (the hot path of force prediction).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ._io import CgdmlError


def n_descriptors(n_beads: int, chiral: bool = True) -> int:
    """Descriptor length: n(n-1)/2 inverse distances plus n-3 dihedral sines when chiral."""
    n_pairs = n_beads * (n_beads - 1) // 2
    return n_pairs + (max(n_beads - 3, 0) if chiral else 0)


def pair_indices(n_beads: int):
    """(a, b) bead index arrays of the inverse-distance entries, sgdml order (a > b)."""
    return np.tril_indices(n_beads, k=-1)


@nb.njit(cache=True, inline="always")
def _cross(u, v, out):
    out[0] = u[1] * v[2] - u[2] * v[1]
    out[1] = u[2] * v[0] - u[0] * v[2]
    out[2] = u[0] * v[1] - u[1] * v[0]


@nb.njit(cache=True)
def _dihedral_sin_grad(x, k, grad):
    """sin(phi) of beads k..k+3 (IUPAC sign) and d sin(phi) / d positions into grad (4, 3)."""
    b1 = x[k + 1] - x[k]
    b2 = x[k + 2] - x[k + 1]
    b3 = x[k + 3] - x[k + 2]
    m = np.empty(3)
    n = np.empty(3)
    _cross(b1, b2, m)
    _cross(b2, b3, n)
    mm = m[0] * m[0] + m[1] * m[1] + m[2] * m[2]
    nn = n[0] * n[0] + n[1] * n[1] + n[2] * n[2]
    g2 = np.sqrt(b2[0] * b2[0] + b2[1] * b2[1] + b2[2] * b2[2])
    inv_mn = 1.0 / np.sqrt(mm * nn)
    b1n = b1[0] * n[0] + b1[1] * n[1] + b1[2] * n[2]
    mdn = m[0] * n[0] + m[1] * n[1] + m[2] * n[2]
    sin_phi = g2 * b1n * inv_mn
    cos_phi = mdn * inv_mn
    # Blondel & Karplus (1996) gradient of phi, written for b1, b2, b3.
    fg = b1[0] * b2[0] + b1[1] * b2[1] + b1[2] * b2[2]  # F.G with F = -b1, G = -b2
    hg = -(b3[0] * b2[0] + b3[1] * b2[1] + b3[2] * b2[2])  # H.G with H = b3
    for d in range(3):
        dp0 = -g2 / mm * m[d]
        dp3 = g2 / nn * n[d]
        ta = fg / (mm * g2) * m[d]
        tb = hg / (nn * g2) * n[d]
        grad[0, d] = cos_phi * dp0
        grad[1, d] = cos_phi * (-dp0 + ta - tb)
        grad[2, d] = cos_phi * (-dp3 - ta + tb)
        grad[3, d] = cos_phi * dp3
    return sin_phi


@nb.njit(cache=True, nogil=True)
def _descriptor_kernel(R, chiral, scale, D):
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
        if chiral:
            grad = np.empty((4, 3))
            for q in range(nb_ - 3):
                D[f, k] = scale * _dihedral_sin_grad(x, q, grad)
                k += 1


@nb.njit(cache=True, nogil=True)
def _jacobian_kernel(R, chiral, scale, D, J):
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
        if chiral:
            grad = np.empty((4, 3))
            for q in range(nb_ - 3):
                D[f, k] = scale * _dihedral_sin_grad(x, q, grad)
                for p in range(4):
                    for d in range(3):
                        J[f, k, 3 * (q + p) + d] = scale * grad[p, d]
                k += 1


@nb.njit(cache=True, nogil=True)
def _vjp_kernel(R, G, chiral, scale, out):
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
        if chiral:
            grad = np.empty((4, 3))
            for q in range(nb_ - 3):
                _dihedral_sin_grad(x, q, grad)
                c = scale * G[f, k]
                for p in range(4):
                    for d in range(3):
                        o[q + p, d] += c * grad[p, d]
                k += 1


def _check_R(R):
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[2] != 3 or R.shape[1] < 2:
        raise CgdmlError(f"coordinates must be shaped (n_frames, n_beads>=2, 3), got {R.shape}")
    return np.ascontiguousarray(R)


def descriptor(R, chiral: bool = True, chiral_scale: float = 1.0):
    """Descriptors D (n, n_desc) of coordinates R (n, n_beads, 3) in nm; D in nm^-1 (sines dimensionless)."""
    R = _check_R(R)
    D = np.empty((R.shape[0], n_descriptors(R.shape[1], chiral)))
    _descriptor_kernel(R, bool(chiral), float(chiral_scale), D)
    return D


def descriptor_jacobian(R, chiral: bool = True, chiral_scale: float = 1.0):
    """Descriptors D (n, n_desc) and Jacobians J = dD/dx (n, n_desc, 3 n_beads)."""
    R = _check_R(R)
    nd = n_descriptors(R.shape[1], chiral)
    D = np.empty((R.shape[0], nd))
    J = np.zeros((R.shape[0], nd, 3 * R.shape[1]))
    _jacobian_kernel(R, bool(chiral), float(chiral_scale), D, J)
    return D, J


def descriptor_vjp(R, G, chiral: bool = True, chiral_scale: float = 1.0):
    """J(R)^T G per frame: R (n, n_beads, 3), G (n, n_desc) -> (n, n_beads, 3), without forming J."""
    R = _check_R(R)
    G = np.ascontiguousarray(G, dtype=np.float64)
    out = np.empty_like(R)
    _vjp_kernel(R, G, bool(chiral), float(chiral_scale), out)
    return out
