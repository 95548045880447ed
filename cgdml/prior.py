"""Prior potential: harmonic bonds and angles from Boltzmann inversion, plus optional short-range repulsion.

The prior keeps CG simulations inside physical space, where the learned kernel model falls to zero
(docs/method.md §2.5). Its forces are subtracted from the labels before learning and added back when simulating.
Energies in kJ/mol, lengths in nm, angles in radians.
"""
from __future__ import annotations

import numba
import numpy as np
from sklearn.base import BaseEstimator

from ._io import CgdmlError, Fields, as_array, as_float, as_int
from .geometry import bond_angles, bond_lengths
from .units import kT as thermal_energy


class HarmonicPrior(BaseEstimator):
    """Harmonic bonds and angles fitted by Boltzmann inversion, plus a short-range repulsion (an estimator).

    U = sum_b k_b/2 (r - r0)^2 + sum_a k_a/2 (theta - theta0)^2 + sum_p kT (r_min,p / r)^12 (if repulsion),
    with k = kT / variance and x0 = mean of the training distribution. The repulsion acts on bead pairs at
    least three bonds apart in the bead graph; r_min,p is the smallest distance that pair reaches in the
    training data, so the repulsion costs about kT there and rises steeply below it.

    The terms come from the CG topology passed to :meth:`fit` (its bonds, bonded triples and graph
    distances), or from ``bonds`` / ``angles`` / ``repulsion_pairs`` given here; with neither, from a chain in
    bead order (consecutive pairs and triples, pairs three apart), for bare arrays without a topology.
    """

    def __init__(self, repulsion=True, bonds=None, angles=None, repulsion_pairs=None):
        self.repulsion = repulsion
        self.bonds = bonds
        self.angles = angles
        self.repulsion_pairs = repulsion_pairs

    def _terms(self, n_beads, topology):
        """(bonds (n, 2), angles (n, 3), repulsion pairs (n, 2)) from the topology, the parameters or a chain."""
        if topology is not None:
            bonds, angles, pairs = topology.bonds, topology.angles, topology.pairs_apart(3)
        else:
            bonds = [(i, i + 1) for i in range(n_beads - 1)]
            angles = [(i, i + 1, i + 2) for i in range(n_beads - 2)]
            pairs = [(i, j) for i in range(n_beads) for j in range(i + 3, n_beads)]
        bonds = bonds if self.bonds is None else self.bonds
        angles = angles if self.angles is None else self.angles
        pairs = pairs if self.repulsion_pairs is None else self.repulsion_pairs
        return (np.array(bonds, dtype=np.int64).reshape(-1, 2), np.array(angles, dtype=np.int64).reshape(-1, 3),
                np.array(pairs, dtype=np.int64).reshape(-1, 2))

    def fit(self, R, temperature, topology=None):
        """Fit to coordinates R (n_frames, n_beads, 3) in nm sampled at ``temperature`` K; ``topology`` (a
        :class:`cgdml.topology.CGTopology`) says which beads are bonded."""
        R = np.asarray(R, dtype=np.float64)
        n_beads = R.shape[1]
        if n_beads < 2:
            raise CgdmlError("a prior needs at least two beads")
        kT = thermal_energy(temperature)
        self.temperature_ = float(temperature)
        self.bond_pairs_, self.angle_triples_, pairs = self._terms(n_beads, topology)
        r = bond_lengths(R, self.bond_pairs_)
        self.bond_r0_ = r.mean(0)
        self.bond_k_ = kT / np.maximum(r.var(0), 1e-12)
        theta = bond_angles(R, self.angle_triples_)
        self.angle_theta0_ = theta.mean(0)
        self.angle_k_ = kT / np.maximum(theta.var(0), 1e-12)
        if self.repulsion and len(pairs):
            self.repulsion_pairs_ = pairs
            self.repulsion_rmin_ = bond_lengths(R, pairs).min(0)
        else:
            self.repulsion_pairs_ = np.zeros((0, 2), dtype=np.int64)
            self.repulsion_rmin_ = np.zeros(0)
        self.repulsion_eps_ = kT
        self.max_bond_length_ = float(r.max()) if r.size else 0.0
        return self

    def energy_forces(self, R):
        """Energies (n,) in kJ/mol and forces (n, n_beads, 3) in kJ/mol/nm for R (n, n_beads, 3) in nm."""
        R = np.ascontiguousarray(R, dtype=np.float64)
        return _prior_energy_forces(R, self.bond_pairs_, self.bond_r0_, self.bond_k_, self.angle_triples_,
                                    self.angle_theta0_, self.angle_k_, self.repulsion_pairs_,
                                    self.repulsion_rmin_, float(self.repulsion_eps_))

    def forces(self, R):
        """Forces (n, n_beads, 3) in kJ/mol/nm."""
        return self.energy_forces(R)[1]

    def residual_forces(self, R, F, chunk=65536):
        """F minus the prior forces at R, both (n, n_beads, 3): the labels a learned correction fits
        (delta learning). Computed ``chunk`` frames at a time, so its working memory stays bounded."""
        out = np.empty(np.shape(F))
        for c0 in range(0, len(out), chunk):
            out[c0:c0 + chunk] = F[c0:c0 + chunk] - self.forces(R[c0:c0 + chunk])
        return out

    _ARRAYS = ("bond_pairs_", "bond_r0_", "bond_k_", "angle_triples_", "angle_theta0_", "angle_k_",
               "repulsion_pairs_", "repulsion_rmin_")

    def to_arrays(self):
        """Learned state as a dict of arrays (for embedding in a model file)."""
        out = {name: getattr(self, name) for name in self._ARRAYS}
        out.update(repulsion=np.bool_(self.repulsion), temperature_=np.float64(self.temperature_),
                   repulsion_eps_=np.float64(self.repulsion_eps_), max_bond_length_=np.float64(self.max_bond_length_))
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix=""):
        """Inverse of :meth:`to_arrays` (entries named ``prefix + name``); a missing or damaged entry raises a
        one-line :class:`CgdmlError` naming it."""
        f = Fields(arrays, prefix)
        prior = cls(repulsion=f.get("repulsion", as_int) != 0)
        for name in cls._ARRAYS:
            index = name.endswith(("pairs_", "triples_"))
            setattr(prior, name, np.ascontiguousarray(f.get(name, lambda v, index=index: as_array(
                v, "i" if index else "f"))))
        prior.temperature_ = f.get("temperature_", lambda v: as_float(v, positive=True))
        prior.repulsion_eps_ = f.get("repulsion_eps_", as_float)
        prior.max_bond_length_ = f.get("max_bond_length_", lambda v: as_float(v, positive=True))
        return prior

    def check(self, n_beads):
        """Raise :class:`CgdmlError` unless the learned arrays are consistent and index ``n_beads`` beads; the
        message names the fields (as stored in a model file, ``prior/...``)."""
        shapes = [("bond_pairs_", 2, ("bond_r0_", "bond_k_")), ("angle_triples_", 3, ("angle_theta0_", "angle_k_")),
                  ("repulsion_pairs_", 2, ("repulsion_rmin_",))]
        for index_name, width, param_names in shapes:
            index, params = getattr(self, index_name), [getattr(self, p) for p in param_names]
            if index.ndim != 2 or index.shape[1] != width or any(p.shape != (len(index),) for p in params):
                raise CgdmlError(f"damaged prior: field 'prior/{index_name}' shaped {index.shape} with "
                                 f"{', '.join(repr('prior/' + p) for p in param_names)} shaped "
                                 f"{[p.shape for p in params]}")
            if index.size and (index.min() < 0 or index.max() >= n_beads):
                raise CgdmlError(f"damaged prior: field 'prior/{index_name}' holds bead indices outside "
                                 f"0..{n_beads - 1}")
            for name, p in zip(param_names, params):
                if not np.isfinite(p).all():
                    raise CgdmlError(f"damaged prior: field 'prior/{name}' holds NaN or inf")


@numba.njit(parallel=True, cache=True)
def _prior_energy_forces(R, bonds, r0, kb, angles, theta0, ka, rep_pairs, rmin, eps):
    n, n_beads = R.shape[0], R.shape[1]
    E = np.zeros(n)
    F = np.zeros((n, n_beads, 3))
    for f in numba.prange(n):
        e = 0.0
        for b in range(bonds.shape[0]):
            i, j = bonds[b, 0], bonds[b, 1]
            d = R[f, j] - R[f, i]
            r = np.sqrt((d * d).sum())
            e += 0.5 * kb[b] * (r - r0[b]) ** 2
            g = kb[b] * (r - r0[b]) / r  # dU/dr / r
            for c in range(3):
                F[f, i, c] += g * d[c]
                F[f, j, c] -= g * d[c]
        for a in range(angles.shape[0]):
            i, j, k = angles[a, 0], angles[a, 1], angles[a, 2]
            u = R[f, i] - R[f, j]
            v = R[f, k] - R[f, j]
            nu = np.sqrt((u * u).sum())
            nv = np.sqrt((v * v).sum())
            cos = (u * v).sum() / (nu * nv)
            cos = min(1.0, max(-1.0, cos))
            theta = np.arccos(cos)
            sin = max(np.sqrt(1.0 - cos * cos), 1e-8)
            e += 0.5 * ka[a] * (theta - theta0[a]) ** 2
            # dU/dcos = dU/dtheta * dtheta/dcos = ka (theta - theta0) * (-1/sin)
            dudcos = -ka[a] * (theta - theta0[a]) / sin
            for c in range(3):
                dcos_du = v[c] / (nu * nv) - cos * u[c] / (nu * nu)
                dcos_dv = u[c] / (nu * nv) - cos * v[c] / (nv * nv)
                F[f, i, c] -= dudcos * dcos_du
                F[f, k, c] -= dudcos * dcos_dv
                F[f, j, c] += dudcos * (dcos_du + dcos_dv)
        for p in range(rep_pairs.shape[0]):
            i, j = rep_pairs[p, 0], rep_pairs[p, 1]
            d = R[f, j] - R[f, i]
            r = np.sqrt((d * d).sum())
            x = (rmin[p] / r) ** 12
            e += eps * x
            g = -12.0 * eps * x / (r * r)  # dU/dr / r
            for c in range(3):
                F[f, i, c] += g * d[c]
                F[f, j, c] -= g * d[c]
        E[f] = e
    return E, F
