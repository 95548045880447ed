"""Geometry of bead configurations: distances, bond angles and dihedrals, with the gradients the force fields need.

Every function takes coordinates R (n_frames, n_beads, 3) in nm and index arrays into the bead axis, so that
the CG topology (:mod:`cgdml.topology`), not bead order, says which beads a term joins. Angles are in
radians; dihedrals follow the IUPAC sign convention of :func:`mdtraj.compute_dihedrals`, in [-pi, pi).
"""
from __future__ import annotations

import numba
import numpy as np

TWO_PI = 2.0 * np.pi


def wrap_angle(a):
    """Angles mapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % TWO_PI - np.pi


def bond_lengths(R, pairs):
    """Distances (n_frames, n_pairs) in nm between bead ``pairs`` (n_pairs, 2) of R (n_frames, n_beads, 3)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    d = R[:, pairs[:, 1]] - R[:, pairs[:, 0]]
    return np.linalg.norm(d, axis=-1)


def bond_angles(R, triples):
    """Angles (n_frames, n_triples) in radians at the middle bead of each triple (i, j, k)."""
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    a = R[:, triples[:, 0]] - R[:, triples[:, 1]]
    b = R[:, triples[:, 2]] - R[:, triples[:, 1]]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


@numba.njit(cache=True, nogil=True)
def dihedral_angle_grad(x, i, j, k, l, grad):
    """Dihedral angle (rad) of beads i, j, k, l of one configuration x (n_beads, 3), and its gradient
    d angle / d positions (rad/nm) of the four beads written into grad (4, 3).

    The gradient is that of Blondel and Karplus (J. Comput. Chem. 17, 1132, 1996), which has no singularity at
    0 or pi; it is undefined only when three consecutive beads are collinear.
    """
    # scalar arithmetic throughout: numpy temporaries here (each an allocation) cost ~10x the arithmetic
    b1x, b1y, b1z = x[j, 0] - x[i, 0], x[j, 1] - x[i, 1], x[j, 2] - x[i, 2]
    b2x, b2y, b2z = x[k, 0] - x[j, 0], x[k, 1] - x[j, 1], x[k, 2] - x[j, 2]
    b3x, b3y, b3z = x[l, 0] - x[k, 0], x[l, 1] - x[k, 1], x[l, 2] - x[k, 2]
    mx, my, mz = b1y * b2z - b1z * b2y, b1z * b2x - b1x * b2z, b1x * b2y - b1y * b2x      # b1 x b2
    nx, ny, nz = b2y * b3z - b2z * b3y, b2z * b3x - b2x * b3z, b2x * b3y - b2y * b3x      # b2 x b3
    mm = mx * mx + my * my + mz * mz
    nn = nx * nx + ny * ny + nz * nz
    g2 = np.sqrt(b2x * b2x + b2y * b2y + b2z * b2z)
    angle = np.arctan2(g2 * (b1x * nx + b1y * ny + b1z * nz), mx * nx + my * ny + mz * nz)
    fg = b1x * b2x + b1y * b2y + b1z * b2z
    hg = -(b3x * b2x + b3y * b2y + b3z * b2z)
    a0, a3, ta, tb = -g2 / mm, g2 / nn, fg / (mm * g2), hg / (nn * g2)
    for d, md, nd in ((0, mx, nx), (1, my, ny), (2, mz, nz)):
        dp0 = a0 * md
        dp3 = a3 * nd
        t = ta * md - tb * nd
        grad[0, d] = dp0
        grad[1, d] = -dp0 + t
        grad[2, d] = -dp3 - t
        grad[3, d] = dp3
    return angle


@numba.njit(parallel=True, cache=True)
def _dihedrals_kernel(R, quads, angle, grad):
    for f in numba.prange(R.shape[0]):
        for q in range(quads.shape[0]):
            angle[f, q] = dihedral_angle_grad(R[f], quads[q, 0], quads[q, 1], quads[q, 2], quads[q, 3], grad[f, q])


def dihedrals(R, quads):
    """Dihedral angles (n, n_quads) in radians of bead quadruples ``quads`` (n_quads, 4), and their gradients
    (n, n_quads, 4, 3) in rad/nm with respect to the four beads of each quadruple."""
    R = np.ascontiguousarray(R, dtype=np.float64)
    quads = np.ascontiguousarray(quads, dtype=np.int64).reshape(-1, 4)
    angle, grad = np.empty((len(R), len(quads))), np.empty((len(R), len(quads), 4, 3))
    _dihedrals_kernel(R, quads, angle, grad)
    return angle, grad


def dihedral(R, quad):
    """Dihedral angle (n,) in radians of the beads ``quad`` (i, j, k, l) and its gradient (n, 4, 3) in rad/nm."""
    angle, grad = dihedrals(R, np.asarray(quad).reshape(1, 4))
    return angle[:, 0], grad[:, 0]


def dihedral_force_projection(R, quads):
    """Projectors b = grad(phi) / |grad(phi)|^2 (n, n_quads, 4, 3) in nm/rad of the dihedrals ``quads``.

    For any force of the form F = -(dU/dphi) grad(phi), b . F over the quadruple's beads is -dU/dphi
    (kJ/mol/rad): the generalised force along phi, whose conditional mean is the slope of the free energy.
    """
    _, grad = dihedrals(R, quads)
    return grad / (grad ** 2).sum(axis=(2, 3))[:, :, None, None]
