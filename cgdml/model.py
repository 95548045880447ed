"""The fitted CG force field: prior plus learned GDML correction (plus any basin-balancing dihedral offsets,
:mod:`cgdml.basins`), with what simulation needs to know.

A :class:`CGModel` is what ``python -m cgdml.fit`` writes and ``python -m cgdml.simulate`` loads: one
versioned ``.npz`` file with the prior, the GDML model, the temperature, the CG topology, bead masses,
a sample of training configurations to start replicas from, and the fit metadata (JSON).
"""
from __future__ import annotations

import json
import warnings

import numpy as np

from ._io import CgdmlError, json_default, load_npz, save_npz

MODEL_FORMAT_VERSION = 1


class CGModel:
    """U(x) = U_prior(x) + U_gdml(x) [+ U_offsets(x)]. Coordinates in nm, energies in kJ/mol, forces in kJ/mol/nm."""

    def __init__(self, gdml, prior, temperature, bead_names, topology_pdb, masses, train_coords_sample,
                 info=None, offsets=None):
        self.gdml = gdml
        self.prior = prior
        self.offsets = offsets
        self.temperature = float(temperature)
        self.bead_names = list(bead_names)
        self.topology_pdb = topology_pdb
        self.masses = np.asarray(masses, dtype=np.float64)
        self.train_coords_sample = np.asarray(train_coords_sample, dtype=np.float64)
        self.info = dict(info or {})

    @property
    def n_beads(self):
        return len(self.bead_names)

    @property
    def bond_pairs(self):
        """Bonded bead pairs (n_bonds, 2), from the prior."""
        return self.prior.bond_pairs_

    @property
    def max_bond_length(self):
        """The longest bond seen in training (nm)."""
        return self.prior.max_bond_length_

    def _check(self, R):
        from .data import as_coordinates

        return as_coordinates(R, self.n_beads, "model")

    def forces(self, R):
        """Forces (n, n_beads, 3) in kJ/mol/nm for R (n, n_beads, 3) in nm. The simulation hot path."""
        R = self._check(R)
        F = self.prior.forces(R) + self.gdml.predict_forces(R)
        return F if self.offsets is None else F + self.offsets.forces(R)

    def energy_forces(self, R):
        """Energies (n,) in kJ/mol (up to a constant) and forces (n, n_beads, 3) in kJ/mol/nm."""
        R = self._check(R)
        e_prior, f_prior = self.prior.energy_forces(R)
        e_gdml, f_gdml = self.gdml.predict(R)
        if self.offsets is not None:
            e_off, f_off = self.offsets.energy_forces(R)
            e_gdml, f_gdml = e_gdml + e_off, f_gdml + f_off
        return e_prior + e_gdml, f_prior + f_gdml

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
        arrays.update(format_version=np.int64(MODEL_FORMAT_VERSION), kind=np.array("cgdml.CGModel"),
                      temperature=np.float64(self.temperature), bead_names=np.array(self.bead_names),
                      topology_pdb=np.array(self.topology_pdb), masses=self.masses,
                      train_coords_sample=self.train_coords_sample.astype(np.float32),
                      info_json=np.array(json.dumps(self.info, default=json_default)))
        save_npz(path, **arrays)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`; a bad file is a one-line :class:`CgdmlError`."""
        z = load_npz(path, "cgdml model file")
        try:
            kind = str(z["kind"]) if "kind" in z else ""
        except (TypeError, ValueError):
            kind = ""
        if kind != "cgdml.CGModel":
            raise CgdmlError(f"{path}: not a cgdml model file (no 'kind' = cgdml.CGModel)")
        try:
            version = int(z["format_version"])
        except (KeyError, TypeError, ValueError):
            raise CgdmlError(f"{path}: damaged cgdml model file (no readable format_version)") from None
        if version > MODEL_FORMAT_VERSION:
            raise CgdmlError(f"{path}: model format version {version} is newer than this cgdml supports "
                             f"({MODEL_FORMAT_VERSION}); upgrade cgdml")
        from .basins import DihedralOffsets
        from .gdml import GDML  # heavy imports (numba, scikit-learn) only for a file that looks right
        from .prior import HarmonicPrior

        try:
            gdml = GDML.from_arrays({k[5:]: v for k, v in z.items() if k.startswith("gdml/")})
            prior = HarmonicPrior.from_arrays({k[6:]: v for k, v in z.items() if k.startswith("prior/")})
            offsets = {k[8:]: v for k, v in z.items() if k.startswith("offsets/")}
            model = cls(gdml, prior, float(z["temperature"]), [str(b) for b in z["bead_names"]],
                        str(z["topology_pdb"]), z["masses"], z["train_coords_sample"],
                        json.loads(str(z["info_json"])),
                        DihedralOffsets.from_arrays(offsets) if offsets else None)
            model._check_consistent()
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CgdmlError(f"{path}: damaged cgdml model file ({type(exc).__name__}: {exc})") from None
        return model

    def _check_consistent(self):
        """Raise CgdmlError when the parts of a loaded model disagree (a damaged or hand-edited file)."""
        n = self.n_beads
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise CgdmlError(f"damaged cgdml model file: temperature {self.temperature}")
        try:
            sigma_ok = bool(np.isfinite(self.gdml.sigma) and self.gdml.sigma > 0)
        except TypeError:
            sigma_ok = False
        if not sigma_ok:
            raise CgdmlError(f"damaged cgdml model file: GDML sigma {self.gdml.sigma!r}")
        if self.gdml.n_beads_ != n:
            raise CgdmlError(f"damaged cgdml model file: GDML model for {self.gdml.n_beads_} beads, {n} bead names")
        if self.masses.shape != (n,) or not (self.masses > 0).all():
            raise CgdmlError(f"damaged cgdml model file: masses shaped {self.masses.shape}, expected ({n},) > 0")
        if self.train_coords_sample.ndim != 3 or self.train_coords_sample.shape[1:] != (n, 3):
            raise CgdmlError(f"damaged cgdml model file: start sample shaped {self.train_coords_sample.shape}")
        if not np.isfinite(self.train_coords_sample).all():
            raise CgdmlError("damaged cgdml model file: start sample holds NaN or inf")
        self.prior.check(n)
        if self.offsets is not None:
            self.offsets.check(n)

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
