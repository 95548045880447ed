"""Fitted models: :class:`GDMLModel` (a learned force field on descriptors) and :class:`CGModel` (prior plus GDML
plus any basin-balancing dihedral offsets, :mod:`cgdml.basins`, with what simulation needs to know).

Models hold fitted arrays, predict, and save/load; the estimators that produce them (:class:`cgdml.gdml.GDML`,
:class:`cgdml.nystrom.NystromGDML`, :class:`cgdml.ensemble.TwoLayerGDML`) hold hyperparameters and solvers.
A :class:`CGModel` is what ``python -m cgdml.fit`` writes and ``python -m cgdml.simulate`` loads: one versioned
``.npz`` file with the prior, the GDML model, the temperature, the CG topology, bead masses, a sample of
training configurations to start replicas from, the fit metadata (JSON) and, from fits by this version on, the
force posterior (:class:`cgdml.uncertainty.ForcePosterior`, under ``uncertainty/``) with its guard threshold
(``uncertainty/threshold``; docs/uncertainty.md §9).

Units: coordinates nm, energies kJ/mol, forces kJ/mol/nm; sigma in descriptor units (nm^-1).
"""
from __future__ import annotations

import json
import warnings

import numpy as np

from . import kernels
from ._io import CgdmlError, Fields, as_array, as_float, as_int, as_json, as_str, json_default, load_npz, save_npz
from .data import as_coordinates
from .features import as_quads, chain_quads, descriptor, descriptor_vjp, n_descriptors
from .system import CGSystem

MODEL_FORMAT_VERSION = 2
GDML_FORMAT = "cgdml.GDMLModel"
GDML_VERSION = 2
_OLD_GDML_FORMAT = "cgdml.gdml"  # version 1: the estimator's own arrays (read, never written)


def fit_record(method, params, chosen, dataset, timings, **extra):
    """The provenance of a fit, the same shape for every method: ``method`` (its name), ``params`` (the
    estimator's hyperparameters), ``chosen`` (what selection picked), ``data`` (frames, beads, temperature,
    source), ``timings`` (s) and any ``extra`` entries (cross-validation scores, strata, execution)."""
    return dict(method=method, params=params, chosen=chosen, **extra, timings=timings,
                data=dict(n_frames=dataset.n_frames, n_beads=dataset.n_beads, temperature=dataset.temperature,
                          source=dataset.info))


class GDMLModel:
    """A GDML force field: F(x) = J(x)^T sum_j Hc(D(x) - D_j) v_j and its energy (see :mod:`cgdml.kernels`).

    train_descriptors (M, n_desc) nm^-1: the descriptors D_j of the training (or inducing) configurations;
    coefficients (M, n_desc): their descriptor-space coefficients v_j; sigma (nm^-1) the Matérn length scale;
    quads (n_quads, 4): the bead quadruples whose dihedral sines end the descriptor, scaled by chiral_scale;
    offset (kJ/mol) is added to energies; n_beads the bead count.
    """

    def __init__(self, train_descriptors, coefficients, sigma, quads, chiral_scale=1.0, offset=0.0, n_beads=None):
        self.train_descriptors = np.ascontiguousarray(train_descriptors, dtype=np.float64)
        self.coefficients = np.ascontiguousarray(coefficients, dtype=np.float64)
        self.sigma = float(sigma)
        self.chiral_scale = float(chiral_scale)
        self.offset = float(offset)
        self.n_beads = int(n_beads)
        self.quads = as_quads(quads, self.n_beads)
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

    def _g(self, R, energy):
        return kernels.hessian_apply(descriptor(R, self.quads, self.chiral_scale), self._tables, energy=energy)

    def predict(self, R):
        """Energies (n,) kJ/mol (up to a constant) and forces (n, n_beads, 3) kJ/mol/nm at R (n, n_beads, 3) nm."""
        R = as_coordinates(R, self.n_beads, "GDML model")
        g, E = self._g(R, True)
        return E + self.offset, descriptor_vjp(R, g, self.quads, self.chiral_scale)

    def predict_forces(self, R):
        """Forces (n, n_beads, 3) kJ/mol/nm at R (n, n_beads, 3) nm, without energies (the simulation path)."""
        R = as_coordinates(R, self.n_beads, "GDML model")
        g, _ = self._g(R, False)
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


def _load_uncertainty(arrays):
    """(ForcePosterior or None, threshold or None) from a model file's ``uncertainty/`` fields."""
    f = Fields(arrays, "uncertainty/")
    if not f.keys():
        return None, None
    from .uncertainty import ForcePosterior

    posterior = ForcePosterior.from_arrays(arrays, "uncertainty/")
    threshold = f.get("threshold", lambda v: as_float(v, positive=True), None)
    return posterior, threshold


class CGModel:
    """U(x) = U_prior(x) + U_gdml(x) [+ U_offsets(x)]. Coordinates in nm, energies in kJ/mol, forces in kJ/mol/nm.

    ``gdml`` (a :class:`GDMLModel`), ``prior`` (a :class:`cgdml.prior.CGPrior`), ``system`` (the
    :class:`cgdml.system.CGSystem`: bead graph, masses, temperature), ``train_coords_sample`` (n, n_beads, 3) nm
    (start configurations for simulations), ``info`` (the fit record, JSON) and ``offsets`` (basin-balancing
    dihedral terms, :class:`cgdml.basins.DihedralOffsets`, or None). The properties ``temperature``, ``masses``,
    ``bead_names``, ``cg_topology`` and ``n_beads`` are the system's.

    ``uncertainty``: the posterior of the GDML force (a :class:`cgdml.uncertainty.ForcePosterior`), or None for a
    model fitted without one (an older cgdml, or ``uncertainty=False``); ``uncertainty_threshold``: the force
    standard deviation (kJ/mol/nm) above which a configuration counts as outside the training data (the
    simulation guard's default), or None. See :meth:`force_uncertainty` and docs/uncertainty.md §9.
    """

    def __init__(self, gdml, prior, system, train_coords_sample, info=None, offsets=None, uncertainty=None,
                 uncertainty_threshold=None):
        if not isinstance(system, CGSystem):
            raise CgdmlError(f"a CG model needs a CGSystem, got {type(system).__name__}")
        self.gdml = gdml
        self.prior = prior
        self.system = system
        self.train_coords_sample = np.asarray(train_coords_sample, dtype=np.float64)
        self.info = dict(info or {})
        self.offsets = offsets
        self.uncertainty = uncertainty
        self.uncertainty_threshold = None if uncertainty_threshold is None else float(uncertainty_threshold)

    @classmethod
    def from_fit(cls, gdml, prior, dataset, info, n_start=500, seed=0):
        """A model of a fitted :class:`GDMLModel` and prior that carries the dataset's system.

        It keeps ``n_start`` frames drawn at random from the (Boltzmann-distributed) dataset, not from the
        stratified training set, so that replicas started there begin near equilibrium.
        """
        rng = np.random.default_rng([seed, 6])
        sample = np.sort(rng.choice(dataset.n_frames, size=min(n_start, dataset.n_frames), replace=False))
        return cls(gdml, prior, dataset.system, dataset.coords[sample], info)

    @property
    def temperature(self):
        """Temperature in K."""
        return self.system.temperature

    @property
    def masses(self):
        """Bead masses (n_beads,) in amu."""
        return self.system.masses

    @property
    def bead_names(self):
        return self.system.bead_names

    @property
    def cg_topology(self):
        """The bead graph (:class:`cgdml.topology.CGTopology`) of the model."""
        return self.system.topology

    @property
    def n_beads(self):
        return self.system.n_beads

    @property
    def bond_pairs(self):
        """Bonded bead pairs (n_bonds, 2), from the prior."""
        return self.prior.bond_pairs_

    @property
    def max_bond_length(self):
        """The longest bond seen in training (nm)."""
        return self.prior.max_bond_length_

    def _check(self, R):
        return as_coordinates(R, self.n_beads, "model")

    def forces(self, R):
        """Forces (n, n_beads, 3) in kJ/mol/nm for R (n, n_beads, 3) in nm. The simulation hot path."""
        R = self._check(R)
        F = self.prior.forces(R) + self.gdml.predict_forces(R)
        return F if self.offsets is None else F + self.offsets.forces(R)

    def fast_forces(self, R):
        """The cheap part of :meth:`forces`: prior plus basin offsets (multiple-time-step simulation)."""
        R = self._check(R)
        F = self.prior.forces(R)
        return F if self.offsets is None else F + self.offsets.forces(R)

    def slow_forces(self, R):
        """The expensive part of :meth:`forces`: the GDML term (fast_forces + slow_forces = forces)."""
        return self.gdml.predict_forces(self._check(R))

    def energy_forces(self, R):
        """Energies (n,) in kJ/mol (up to a constant) and forces (n, n_beads, 3) in kJ/mol/nm."""
        R = self._check(R)
        e_prior, f_prior = self.prior.energy_forces(R)
        e_gdml, f_gdml = self.gdml.predict(R)
        if self.offsets is not None:
            e_off, f_off = self.offsets.energy_forces(R)
            e_gdml, f_gdml = e_gdml + e_off, f_gdml + f_off
        return e_prior + e_gdml, f_prior + f_gdml

    @property
    def has_uncertainty(self):
        """Whether the model carries a force posterior (models fitted by cgdml before it, or with
        ``uncertainty=False``, do not)."""
        return self.uncertainty is not None

    def _posterior(self):
        if self.uncertainty is None:
            raise CgdmlError("this model has no force uncertainty (fitted by an older cgdml, or with "
                             "--no-uncertainty); refit to get one")
        return self.uncertainty

    def force_uncertainty(self, R, per_bead=False):
        """Predicted standard deviation of the model's force, kJ/mol/nm, at R (n, n_beads, 3) nm: (n,), the RMS over
        beads of the per-Cartesian-component posterior std, sqrt(trace(cov F) / 3 n_beads); ``per_bead``:
        (n, n_beads), each bead's sqrt(trace / 3). Batched like :meth:`forces` (any n, evaluated in chunks).

        It is the GDML posterior's (:meth:`cgdml.uncertainty.ForcePosterior.force_variance`): the uncertainty of
        the learned mean force, without the label noise. A model without a posterior raises :class:`CgdmlError`.
        """
        post = self._posterior()
        R = self._check(R)
        return np.sqrt(post.force_variance(R, per_bead=per_bead))

    def out_of_range(self, R, factor=3.0):
        """Boolean mask (n,): configurations whose descriptor lies far from every training point.

        "Far" means more than ``factor`` kernel lengths (sigma) from the nearest training descriptor.
        """
        return self.gdml.nearest_train_distance(self._check(R)) > factor * self.gdml.sigma

    def save(self, path):
        """Write the model atomically as one ``.npz``."""
        arrays = {f"gdml/{k}": v for k, v in self.gdml.to_arrays().items()}
        arrays.update({f"prior/{k}": v for k, v in self.prior.to_arrays().items()})
        if self.offsets is not None:
            arrays.update({f"offsets/{k}": v for k, v in self.offsets.to_arrays().items()})
        if self.uncertainty is not None:
            arrays.update({f"uncertainty/{k}": v for k, v in self.uncertainty.to_arrays().items()})
            if self.uncertainty_threshold is not None:
                arrays["uncertainty/threshold"] = np.float64(self.uncertainty_threshold)
        arrays.update(format_version=np.int64(MODEL_FORMAT_VERSION), kind=np.array("cgdml.CGModel"),
                      **self.system.to_arrays(), train_coords_sample=self.train_coords_sample.astype(np.float32),
                      info_json=np.array(json.dumps(self.info, default=json_default)))
        save_npz(path, **arrays)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; a bad file is a one-line :class:`CgdmlError` naming the file and
        the damaged or missing field. A file without ``uncertainty/`` fields (an older cgdml) loads with
        ``uncertainty`` None."""
        z = load_npz(path, "cgdml model file")
        f = Fields(z)
        try:
            kind = f.get("kind", as_str, "")
        except CgdmlError:
            kind = ""
        if kind != "cgdml.CGModel":
            raise CgdmlError(f"{path}: not a cgdml model file (no 'kind' = cgdml.CGModel)")
        from .basins import DihedralOffsets
        from .prior import CGPrior

        try:
            version = f.get("format_version", as_int)
            if version < 1 or version > MODEL_FORMAT_VERSION:
                raise CgdmlError(f"model format version {version} is newer than this cgdml supports "
                                 f"({MODEL_FORMAT_VERSION}); upgrade cgdml")
            gdml = GDMLModel.from_arrays(z, "gdml/")
            prior = CGPrior.from_arrays(z, "prior/")
            offsets = DihedralOffsets.from_arrays(z, "offsets/") if Fields(z, "offsets/").keys() else None
            posterior, threshold = _load_uncertainty(z)
            system = CGSystem.from_arrays(z, required=("topology_pdb", "masses"))
            model = cls(gdml, prior, system, f.get("train_coords_sample", lambda v: as_array(v, ndim=3)),
                        f.get("info_json", as_json), offsets, posterior, threshold)
            model._check_consistent()
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
        return model

    def _check_consistent(self):
        """Raise CgdmlError when the parts of a loaded model disagree (a damaged or hand-edited file)."""
        n = self.n_beads
        if self.gdml.n_beads != n:
            raise CgdmlError(f"damaged cgdml model file: GDML model for {self.gdml.n_beads} beads (field "
                             f"'gdml/n_beads'), {n} bead names (field 'bead_names')")
        if self.train_coords_sample.ndim != 3 or self.train_coords_sample.shape[1:] != (n, 3) or \
                not len(self.train_coords_sample):
            raise CgdmlError(f"damaged field 'train_coords_sample' (shaped {self.train_coords_sample.shape}, "
                             f"expected (n >= 1, {n}, 3))")
        if not np.isfinite(self.train_coords_sample).all():
            raise CgdmlError("damaged field 'train_coords_sample' (holds NaN or inf)")
        self.prior.check(n)
        if self.offsets is not None:
            self.offsets.check(n)
        post = self.uncertainty
        if post is not None:
            g = self.gdml
            if post.n_beads != n or not np.array_equal(post.quads, g.quads) or \
                    post.inducing_descriptors.shape[1] != g.train_descriptors.shape[1]:
                raise CgdmlError(f"damaged cgdml model file: the force posterior (fields 'uncertainty/') is for "
                                 f"{post.n_beads} beads and another descriptor than the GDML model's")

    def describe_uncertainty(self):
        """One line on the model's force uncertainty: its posterior and threshold, or that it has none."""
        if self.uncertainty is None:
            return "no force uncertainty (fitted by an older cgdml, or with --no-uncertainty)"
        p = self.uncertainty
        threshold = "no threshold" if self.uncertainty_threshold is None else \
            f"guard threshold {self.uncertainty_threshold:.4g} kJ/mol/nm"
        return (f"force uncertainty: DTC posterior on {len(p.inducing_descriptors)} inducing configurations, rank "
                f"{p.rank}; {threshold}")

    def warn_if_out_of_range(self, R, factor=3.0, what="configurations"):
        """Warn when any configuration in R lies far outside the training data; returns the mask (n,)."""
        R = self._check(R)
        if not len(R):
            return np.zeros(0, dtype=bool)
        far = self.out_of_range(R, factor)
        if far.any():
            warnings.warn(f"{far.sum()} of {len(far)} {what} lie more than {factor:g} sigma (descriptor space) from "
                          "every training configuration; the learned force is unreliable there", stacklevel=2)
        return far
