"""The GDML force field as fitted arrays: :class:`GDMLModel` (F(x) = J(x)^T sum_j Hc(D(x) - D_j) v_j and its energy).

The learners (:class:`cgdml.gdml.GDML`, :class:`cgdml.nystrom.NystromGDML`, :class:`cgdml.ensemble.TwoLayerGDML`)
produce one; :class:`cgdml.model.CGModel` holds one with the prior; the posterior function samples of
:class:`cgdml.uncertainty.ForcePosterior` are ones. It lives below all of them (it needs only the descriptor and the
kernels), so that the CG model can hold a force posterior. ``cgdml.model.GDMLModel`` is the same class.

Units: coordinates nm, energies kJ/mol, forces kJ/mol/nm; sigma in descriptor units (nm^-1).
"""
from __future__ import annotations

import copy

import numpy as np

from . import kernels
from ._io import CgdmlError, Fields, as_array, as_float, as_int, as_str, load_npz, save_npz
from .data import as_coordinates
from .features import as_quads, chain_quads, descriptor, descriptor_vjp, n_descriptors

GDML_FORMAT = "cgdml.GDMLModel"
GDML_VERSION = 2
_OLD_GDML_FORMAT = "cgdml.gdml"  # version 1: the estimator's own arrays (read, never written)


def check_precision(precision):
    """``precision`` if it is one of :data:`cgdml.kernels.PRECISIONS` ("float64", "float32"), else a one-line
    :class:`CgdmlError`."""
    if not isinstance(precision, str) or precision not in kernels.PRECISIONS:
        raise CgdmlError(f"precision must be one of {', '.join(kernels.PRECISIONS)}, got {precision!r}")
    return precision


class GDMLModel:
    """A GDML force field: F(x) = J(x)^T sum_j Hc(D(x) - D_j) v_j and its energy (see :mod:`cgdml.kernels`).

    train_descriptors (M, n_desc) nm^-1: the descriptors D_j of the training (or inducing) configurations;
    coefficients (M, n_desc): their descriptor-space coefficients v_j; sigma (nm^-1) the Matérn length scale;
    quads (n_quads, 4): the bead quadruples whose dihedral sines end the descriptor, scaled by chiral_scale;
    offset (kJ/mol) is added to energies; n_beads the bead count.

    ``precision`` ("float64" or "float32"): how :meth:`predict` and :meth:`predict_forces` evaluate the kernel
    sums unless told otherwise; float32 runs them in single precision (:func:`cgdml.kernels.hessian_apply`), about
    twice as fast, to a relative force error of ~1e-5 (benchmarks/results/bench_beads.md). Not saved with the model.
    """

    def __init__(self, train_descriptors, coefficients, sigma, quads, chiral_scale=1.0, offset=0.0, n_beads=None,
                 precision="float64"):
        self.train_descriptors = np.ascontiguousarray(train_descriptors, dtype=np.float64)
        self.coefficients = np.ascontiguousarray(coefficients, dtype=np.float64)
        self.sigma = float(sigma)
        self.chiral_scale = float(chiral_scale)
        self.offset = float(offset)
        self.n_beads = int(n_beads)
        self.quads = as_quads(quads, self.n_beads)
        self.precision = check_precision(precision)
        self._check()
        self._tables = kernels.TrainTables(self.train_descriptors, self.coefficients, self.sigma)
        self._sq_train = np.einsum("md,md->m", self.train_descriptors, self.train_descriptors)

    def _check(self):
        if not (np.isfinite(self.sigma) and self.sigma > 0):
            raise CgdmlError(f"GDML sigma must be a positive number, got {self.sigma!r}")
        if not (np.isfinite(self.chiral_scale) and np.isfinite(self.offset)):
            raise CgdmlError(f"GDML chiral_scale {self.chiral_scale!r} and offset {self.offset!r} must be finite")
        nd = n_descriptors(self.n_beads, len(self.quads))
        D, V = self.train_descriptors, self.coefficients
        if D.ndim != 2 or D.shape[1] != nd or V.shape != D.shape or len(D) < 1:
            raise CgdmlError(f"GDML training arrays shaped {D.shape} and {V.shape}, expected (M >= 1, {nd})")
        if not (np.isfinite(D).all() and np.isfinite(V).all()):
            raise CgdmlError("GDML descriptors or coefficients hold NaN or inf")

    @property
    def n_train(self):
        return len(self.train_descriptors)

    def _g(self, R, energy, precision):
        precision = self.precision if precision is None else check_precision(precision)
        return kernels.hessian_apply(descriptor(R, self.quads, self.chiral_scale), self._tables, energy=energy,
                                     precision=precision)

    def scaled(self, weight):
        """This force field times ``weight`` (a new GDMLModel: coefficients and offset scaled; weight 0 keeps the
        arrays and predicts zero)."""
        return GDMLModel(self.train_descriptors, float(weight) * self.coefficients, self.sigma, self.quads,
                         self.chiral_scale, float(weight) * self.offset, self.n_beads, self.precision)

    def with_precision(self, precision):
        """This model evaluated at ``precision`` ("float64" or "float32") by default: a shallow copy that shares
        the arrays and prediction tables."""
        other = copy.copy(self)
        other.precision = check_precision(precision)
        return other

    def predict(self, R, precision=None):
        """Energies (n,) kJ/mol (up to a constant) and forces (n, n_beads, 3) kJ/mol/nm at R (n, n_beads, 3) nm;
        ``precision`` "float64" or "float32" (None: the model's :attr:`precision`)."""
        R = as_coordinates(R, self.n_beads, "GDML model")
        g, E = self._g(R, True, precision)
        return E + self.offset, descriptor_vjp(R, g, self.quads, self.chiral_scale)

    def predict_forces(self, R, precision=None):
        """Forces (n, n_beads, 3) kJ/mol/nm at R (n, n_beads, 3) nm, without energies (the simulation path);
        ``precision`` as in :meth:`predict`."""
        R = as_coordinates(R, self.n_beads, "GDML model")
        g, _ = self._g(R, False, precision)
        return descriptor_vjp(R, g, self.quads, self.chiral_scale)

    def nearest_train_distance(self, R, chunk=1024):
        """Descriptor-space distance (n,) from each configuration to its nearest training configuration."""
        R = as_coordinates(R, self.n_beads, "GDML model")
        D = descriptor(R, self.quads, self.chiral_scale)
        out = np.empty(D.shape[0])
        for b0 in range(0, D.shape[0], chunk):
            x = D[b0:b0 + chunk]
            r2 = np.einsum("bd,bd->b", x, x)[:, None] + self._sq_train[None, :] - 2.0 * (x @ self.train_descriptors.T)
            out[b0:b0 + chunk] = np.sqrt(np.maximum(r2.min(axis=1), 0.0))
        return out

    # ---------------------------------------------------------------------------------------- persistence
    def to_arrays(self):
        """The fitted arrays as a dict of numpy arrays (no pickles), for embedding in an ``.npz``."""
        return {"format": np.array(GDML_FORMAT), "version": np.int64(GDML_VERSION),
                "train_descriptors": self.train_descriptors, "coefficients": self.coefficients,
                "sigma": np.float64(self.sigma), "quads": self.quads, "chiral_scale": np.float64(self.chiral_scale),
                "offset": np.float64(self.offset), "n_beads": np.int64(self.n_beads)}

    @classmethod
    def from_arrays(cls, arrays, prefix=""):
        """Rebuild a model from :meth:`to_arrays` output (entries named ``prefix + name``) or a version-1 cgdml
        GDML record; a missing or damaged entry is a one-line :class:`CgdmlError` naming it."""
        f = Fields(arrays, prefix)
        if "format" not in f or "version" not in f:
            raise CgdmlError("not a cgdml GDML model (format tag missing)")
        fmt, version = f.get("format", as_str), f.get("version", as_int)
        number, positive = as_float, (lambda v: as_float(v, positive=True))
        if fmt == _OLD_GDML_FORMAT and version == 1:
            # cgdml 0.1 stored the estimator; its fitted arrays are all a model needs (chain-order sines)
            n_beads = f.get("n_beads_", as_int)
            quads = chain_quads(n_beads) if f.get("chiral", as_int) else np.zeros((0, 4), dtype=np.int64)
            return cls(f.get("D_train_", lambda v: as_array(v, ndim=2)), f.get("V_", lambda v: as_array(v, ndim=2)),
                       f.get("sigma", positive), quads, f.get("chiral_scale", number), f.get("c_", number), n_beads)
        if fmt != GDML_FORMAT:
            raise CgdmlError(f"not a cgdml GDML model (format {fmt!r})")
        if version > GDML_VERSION:
            raise CgdmlError(f"GDML model format version {version} is newer than this cgdml "
                             f"(reads up to {GDML_VERSION}); upgrade cgdml")
        n_beads = f.get("n_beads", as_int)
        if n_beads < 2:
            raise CgdmlError(f"damaged field {prefix + 'n_beads'!r} ({n_beads})")
        quads = f.get("quads", lambda v: as_quads(as_array(v, "i"), n_beads))
        D = f.get("train_descriptors", lambda v: as_array(v, shape=(None, n_descriptors(n_beads, len(quads)))))
        V = f.get("coefficients", lambda v: as_array(v, shape=D.shape))
        if len(D) < 1:
            raise CgdmlError(f"damaged field {prefix + 'train_descriptors'!r} (no training configuration)")
        return cls(D, V, f.get("sigma", positive), quads, f.get("chiral_scale", number), f.get("offset", number),
                   n_beads)

    def save(self, path):
        """Write the model to a versioned ``.npz`` (atomically)."""
        save_npz(path, **self.to_arrays())

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; a bad, damaged or newer file raises CgdmlError naming it."""
        arrays = load_npz(path, what="GDML model")
        try:
            return cls.from_arrays(arrays)
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
