"""Fitted models: :class:`GDMLModel` (a learned force field on descriptors, defined in :mod:`cgdml.gdml_model`) and
:class:`CGModel` (prior plus GDML plus any basin-balancing dihedral offsets, :mod:`cgdml.basins`, with what
simulation needs to know).

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

import copy
import json
import warnings

import numpy as np

from ._io import CgdmlError, Fields, as_array, as_float, as_int, as_json, as_str, json_default, load_npz, save_npz
from .data import as_coordinates
from .gdml_model import GDML_FORMAT, GDML_VERSION, GDMLModel  # noqa: F401 (cgdml.model.GDMLModel is this class)
from .system import CGSystem

#: The newest model file format this cgdml reads and writes. A file is written with the lowest version that holds
#: all it carries, so older cgdml reads what it can use and refuses what it would silently drop: 3 adds the prior's
#: pair-distance corrections (cgdml.refine), which a version-2 reader would ignore.
MODEL_FORMAT_VERSION = 3


def fit_record(method, params, chosen, dataset, timings, **extra):
    """The provenance of a fit, the same shape for every method: ``method`` (its name), ``params`` (the
    estimator's hyperparameters), ``chosen`` (what selection picked), ``data`` (frames, beads, temperature,
    source), ``timings`` (s) and any ``extra`` entries (cross-validation scores, strata, execution)."""
    return dict(method=method, params=params, chosen=chosen, **extra, timings=timings,
                data=dict(n_frames=dataset.n_frames, n_beads=dataset.n_beads, temperature=dataset.temperature,
                          source=dataset.info))


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
        stratified training set, so that replicas started there begin near equilibrium: frames of positive
        weight only, drawn in proportion to their weights (:meth:`cgdml.data.CGDataset.population`).
        """
        rng = np.random.default_rng([seed, 6])
        index, w = dataset.population()       # Boltzmann-distributed frames only (weight > 0)
        if w is None:
            pick = rng.choice(len(index), size=min(n_start, len(index)), replace=False)
        else:
            pick = rng.choice(len(index), size=min(n_start, int((w > 0).sum())), replace=False, p=w / w.sum())
        sample = np.sort(index[pick])
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

    @property
    def precision(self):
        """How the GDML term's kernel sums are evaluated: "float64" or "float32" (:class:`GDMLModel`)."""
        return self.gdml.precision

    def with_precision(self, precision):
        """This model with its GDML term evaluated at ``precision`` ("float64" or "float32"; float32 kernel sums run
        about twice as fast, see :class:`GDMLModel`): a shallow copy sharing every array."""
        other = copy.copy(self)
        other.gdml = self.gdml.with_precision(precision)
        return other

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
        """Predicted standard deviation of the model's force (the GDML posterior's,
        :meth:`cgdml.uncertainty.ForcePosterior.force_variance`): the uncertainty of the learned mean force,
        without the label noise (docs/uncertainty.md §9).

        Parameters
        ----------
        R : (n, n_beads, 3) or (n_beads, 3) nm; batched like :meth:`forces` (any n, evaluated in chunks).
        per_bead : give each bead's std instead of the RMS over beads.

        Returns
        -------
        (n,) kJ/mol/nm, sqrt(trace(cov F) / 3 n_beads), or with ``per_bead`` (n, n_beads), each bead's
        sqrt(trace / 3). A model without a posterior raises :class:`CgdmlError`.
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
        version = 3 if len(self.prior.pair_correction_pairs_) else 2
        arrays.update(format_version=np.int64(version), kind=np.array("cgdml.CGModel"),
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
