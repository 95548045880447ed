"""The coarse-grained dataset container, :class:`CGDataset`, and the checks of coordinates and forces.

A :class:`CGDataset` holds mapped coordinates and forces, shapes (n_frames, n_beads, 3), in nm and kJ/mol/nm, and
the CG system they belong to (:class:`cgdml.system.CGSystem`: bead graph, masses, temperature). The readers that
produce datasets are in :mod:`cgdml.io` and :mod:`cgdml.mapping`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ._io import CgdmlError, CgdmlTypeError, Fields, as_array, as_int, as_json, load_npz, save_npz
from .system import CGSystem
from .topology import CGTopology
from .units import check_temperature, force_factor, length_factor

DATASET_FORMAT_VERSION = 2   # 2: per-frame weights (files whose weights are all 1 are written as version 1)


def check_finite(array, name, source="", first_frame=0):
    """Raise a one-line error naming the frames where ``array`` (n_frames, ...) holds NaN or inf.

    ``first_frame`` is added to the reported frame numbers (for chunks of a longer trajectory).
    """
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        frames = np.flatnonzero(bad) + first_frame
        shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
        where = f"{source}: " if source else ""
        raise CgdmlError(f"{where}{name} contain NaN or inf in {len(frames)} frame(s): {shown}")


def as_coordinates(R, n_beads, owner="model"):
    """R as float64 (n, n_beads, 3); a single (n_beads, 3) configuration gains a leading axis.

    Raises a one-line error naming ``owner`` when the shape does not fit ``n_beads`` beads.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (n_beads, 3):
        raise CgdmlError(f"{owner} has {n_beads} beads; coordinates must be shaped (n, {n_beads}, 3), got {R.shape}")
    return R


def check_coords_forces(R, F=None, E=None):
    """Coordinates R (n >= 1, n_beads >= 2, 3) nm, and optionally forces F (same shape) and energies E (n,), as
    float64 arrays; NaN, inf or mismatched shapes raise a one-line :class:`CgdmlError`."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[2] != 3 or R.shape[1] < 2 or R.shape[0] < 1:
        raise CgdmlError(f"coordinates must be shaped (n_frames, n_beads>=2, 3), got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise CgdmlError("coordinates contain NaN or infinite values")
    if F is not None:
        F = np.asarray(F, dtype=np.float64)
        if F.shape != R.shape:
            raise CgdmlError(f"forces shaped {F.shape} do not match coordinates shaped {R.shape}")
        if not np.all(np.isfinite(F)):
            raise CgdmlError("forces contain NaN or infinite values")
    if E is not None:
        E = np.asarray(E, dtype=np.float64).reshape(-1)
        if E.shape[0] != R.shape[0]:
            raise CgdmlError(f"{E.shape[0]} energies given for {R.shape[0]} frames")
    return R, F, E


_FIT_A_DATASET = "to fit a CGDataset, use cgdml.fit_cg_model(dataset) or cgdml.CGEstimator(learner=...).fit(dataset)"


def learner_arrays(owner, R, F):
    """The type checks of a learner's ``fit(R, F)`` (``owner``: its class name): R and F given, each an array of
    numbers, neither a :class:`CGDataset`; else a one-line :class:`CgdmlTypeError` that says what to pass.
    Shapes and values are checked later (:func:`check_coords_forces`)."""
    usage = f"{owner}.fit(R, F) takes coordinates R (n_frames, n_beads, 3) nm and forces F (same shape) kJ/mol/nm"
    if isinstance(R, CGDataset) or isinstance(F, CGDataset):
        raise CgdmlTypeError(f"{usage}, not a CGDataset; {_FIT_A_DATASET}")
    if F is None:
        raise CgdmlTypeError(f"{usage}; the forces F are missing ({_FIT_A_DATASET})")
    for name, x in (("R", R), ("F", F)):
        try:
            kind = np.asarray(x).dtype.kind
        except (TypeError, ValueError):      # ragged nested lists
            kind = "O"
        if kind not in "biuf":
            held = f" of dtype {x.dtype}" if isinstance(x, np.ndarray) else ""
            raise CgdmlTypeError(f"{usage}; {name} is {type(x).__name__}{held}, not an array of numbers")


def dataset_argument(dataset, where):
    """``dataset`` if it is a :class:`CGDataset`, else a one-line :class:`CgdmlTypeError` from ``where`` (the
    function's name) that says how to make one from what was given (a path, arrays, something else)."""
    if isinstance(dataset, CGDataset):
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        hint = f"load the file first: CGDataset.load({os.fspath(dataset)!r})"
    elif isinstance(dataset, (np.ndarray, list, tuple)):
        hint = ("for coordinates and forces arrays (n_frames, n_beads, 3), build one with "
                "CGDataset.from_arrays(coords, forces, bead_names=..., temperature=...) or cgdml.load_cg_arrays, or "
                "fit the arrays with a learner's fit(R, F)")
    else:
        hint = "load one with CGDataset.load(path) or map all-atom data with cgdml.map_allatom"
    raise CgdmlTypeError(f"{where} takes a CGDataset, got {type(dataset).__name__}; {hint}")


def check_weights(weights, n_frames, source="", some_positive=True):
    """Per-frame Boltzmann weights (n_frames,) float64: finite, >= 0 and (``some_positive``) at least one positive;
    else a one-line :class:`CgdmlError` (prefixed with ``source``). None gives all ones."""
    where = f"{source}: " if source else ""
    if weights is None:
        return np.ones(n_frames)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise CgdmlError(f"{where}weights must be numbers, one per frame") from None
    if w.ndim != 1 or len(w) != n_frames:
        raise CgdmlError(f"{where}weights must be one number per frame ({n_frames},), got shape {w.shape}")
    if not np.isfinite(w).all():
        raise CgdmlError(f"{where}weights contain NaN or inf (frame {int(np.flatnonzero(~np.isfinite(w))[0])})")
    if (w < 0).any():
        raise CgdmlError(f"{where}weights must be >= 0 (frame {int(np.flatnonzero(w < 0)[0])} has {w[w < 0][0]:g})")
    if some_positive and not (w > 0).any():
        raise CgdmlError(f"{where}every frame has weight 0: a dataset needs some Boltzmann-distributed frames "
                         "(weight > 0) for the populations its prior and strata read")
    return np.ascontiguousarray(w)


def check_bonded_distances(coords, bonds, context="", first_frame=0, block=200, reference=None):
    """Refuse coordinates (n, n_atoms, 3) nm whose bonds do not look like bonds, with a one-line error.

    The median bonded distance must lie in 0.05-1 nm (else the length unit is wrong), and in every frame each
    bond must stay within max(10 robust standard deviations, 0.05 nm) of its median length (else the atom or
    bead order does not match the topology, or molecules are broken across a periodic boundary). The error
    names the first bad frame (counted from ``first_frame``); frames are checked ``block`` at a time. The
    medians and tolerances come from ``coords`` or from ``reference`` (what an earlier call returned, so that
    later chunks of a trajectory are judged against its start); returns them.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if not len(bonds) or not len(coords):
        return reference
    where = f" {context}" if context else ""
    if reference is None:
        sample = coords[:: max(1, len(coords) // 200)]
        d = np.linalg.norm(sample[:, bonds[:, 1]] - sample[:, bonds[:, 0]], axis=-1)
        median = np.median(d, axis=0)
        overall = float(np.median(median))
        if not 0.05 <= overall <= 1.0:
            raise CgdmlError(f"the median bonded distance is {overall:.3g} nm{where}; bonds are 0.05-1 nm, so "
                             "the length unit is probably wrong")
        reference = (median, np.maximum(10.0 * 1.4826 * np.median(np.abs(d - median), axis=0), 0.05))
    median, tolerance = reference
    for b0 in range(0, len(coords), block):
        x = coords[b0:b0 + block]
        d = np.linalg.norm(x[:, bonds[:, 1]] - x[:, bonds[:, 0]], axis=-1)
        bad = np.abs(d - median) > tolerance
        if bad.any():
            frame, bond = np.argwhere(bad)[0]
            i, j = bonds[bond]
            raise CgdmlError(f"frame {first_frame + b0 + frame}: bond {i}-{j} is {d[frame, bond]:.3g} nm, against "
                             f"a median of {median[bond]:.3g} nm{where}; the atom order does not match the "
                             "topology, or molecules are broken across the periodic boundary")
    return reference


@dataclass(eq=False)
class CGDataset:
    """Mapped CG data: ``coords`` and ``forces`` (n_frames, n_beads, 3) in nm and kJ/mol/nm, the ``system`` they
    belong to (a :class:`cgdml.system.CGSystem`: bead graph, masses, temperature) and ``info``, free-form
    provenance (source files, map, units) stored as JSON, and ``weights`` (n_frames,), each frame's Boltzmann
    weight: 1 for frames of an unbiased run (the default), 0 for frames that are good for forces but not for
    populations (restrained all-atom frames, docs/method.md §2.9), or exp(W / kT) up to a constant for a known
    bias W. Everything that reads populations from the frames (the prior's Boltzmann inversion, k-means strata,
    basin balancing, the model's start frames, landscape references) uses the weighted frames of positive weight
    (:meth:`population`); force matching uses every frame. A dataset of weight-0 frames only (a chunk of
    restrained frames) can be built and joined to others, but not fitted, nor loaded without
    ``allow_all_biased``.

    Build one from arrays in any unit with :meth:`from_arrays`; read and write ``.npz`` files with :meth:`load`
    and :meth:`save`. The properties ``temperature``, ``masses``, ``bead_names``, ``bonds``, ``cg_topology`` and
    ``topology`` (mdtraj) are the system's.
    """

    coords: np.ndarray
    forces: np.ndarray
    system: CGSystem
    info: dict = field(default_factory=dict)
    weights: np.ndarray = None

    def __post_init__(self):
        if not isinstance(self.system, CGSystem):
            raise CgdmlError(f"a CG dataset needs a CGSystem, got {type(self.system).__name__} (build a dataset "
                             "from arrays, bead names and a temperature with CGDataset.from_arrays)")
        self.coords = np.ascontiguousarray(self.coords, dtype=np.float64)
        self.forces = np.ascontiguousarray(self.forces, dtype=np.float64)
        if self.coords.ndim != 3 or self.coords.shape[2] != 3:
            raise CgdmlError(f"coords must have shape (n_frames, n_beads, 3), got {self.coords.shape}")
        if self.forces.shape != self.coords.shape:
            raise CgdmlError(f"forces shape {self.forces.shape} does not match coords shape {self.coords.shape}")
        if self.coords.shape[1] != self.system.n_beads:
            raise CgdmlError(f"the CG system has {self.system.n_beads} beads, the coordinates {self.coords.shape[1]}")
        if len(self.coords) == 0:
            raise CgdmlError("the dataset has no frames")
        check_finite(self.coords, "coordinates")
        check_finite(self.forces, "forces")
        self.weights = check_weights(self.weights, len(self.coords), some_positive=False)
        self.info = dict(self.info or {})

    @property
    def n_frames(self) -> int:
        return self.coords.shape[0]

    @property
    def n_beads(self) -> int:
        return self.coords.shape[1]

    @property
    def temperature(self) -> float:
        """Temperature in K."""
        return self.system.temperature

    @property
    def masses(self) -> np.ndarray:
        """Bead masses (n_beads,) in amu."""
        return self.system.masses

    @property
    def bead_names(self) -> list:
        return self.system.bead_names

    @property
    def bonds(self) -> np.ndarray:
        """CG bonds (n_bonds, 2), bead index pairs."""
        return self.system.bonds

    @property
    def cg_topology(self):
        """The bead graph (:class:`cgdml.topology.CGTopology`): bonds, angles, dihedrals, backbone."""
        return self.system.topology

    @property
    def topology(self):
        """The CG topology as an mdtraj Topology (one atom per bead, in column order, with the CG bonds)."""
        return self.system.to_mdtraj()

    def to_mdtraj(self):
        """The CG coordinates as an mdtraj Trajectory (nm)."""
        import mdtraj as md

        return md.Trajectory(self.coords.astype(np.float32), self.topology)

    @property
    def biased(self) -> np.ndarray:
        """(n_frames,) bool: frames of weight 0, good for forces only."""
        return self.weights == 0

    def population(self):
        """(index, weights): the frames that carry populations (weight > 0), sorted, and their weights
        normalised to mean 1; the weights are None when they are all equal (plain, unweighted frames)."""
        check_weights(self.weights, self.n_frames, "dataset")
        index = np.flatnonzero(self.weights > 0)
        w = self.weights[index]
        if np.all(w == w[0]):
            return index, None
        return index, w / w.mean()

    def subset(self, index):
        """A new dataset holding the frames ``index`` (an index array, slice or boolean mask), with their
        weights."""
        return CGDataset(self.coords[index], self.forces[index], self.system, dict(self.info), self.weights[index])

    @classmethod
    def concatenate(cls, datasets, info=None):
        """One dataset of the frames of ``datasets`` (a sequence of :class:`CGDataset`) in order, with their
        weights. They must share the CG system (bead names, bonds, temperature; masses within 1e-6 amu), else a
        one-line error names the first that differs. ``info`` defaults to {"joined": [each dataset's info]}."""
        datasets = list(datasets)
        if not datasets or not all(isinstance(d, CGDataset) for d in datasets):
            raise CgdmlTypeError("CGDataset.concatenate takes a non-empty sequence of CGDatasets")
        first = datasets[0]
        for k, d in enumerate(datasets[1:], 1):
            why = None
            if d.bead_names != first.bead_names:
                why = "bead names"
            elif not np.array_equal(np.sort(np.sort(d.bonds, axis=1), axis=0),
                                    np.sort(np.sort(first.bonds, axis=1), axis=0)):
                why = "bonds"
            elif abs(d.temperature - first.temperature) > 1e-9:
                why = f"temperature ({d.temperature:g} K against {first.temperature:g} K)"
            elif not np.allclose(d.masses, first.masses, rtol=0, atol=1e-6):
                why = "masses"
            if why:
                raise CgdmlError(f"cannot join datasets: dataset {k} differs from dataset 0 in its {why}")
        info = {"joined": [d.info for d in datasets]} if info is None else info
        return cls(np.concatenate([d.coords for d in datasets]), np.concatenate([d.forces for d in datasets]),
                   first.system, info, np.concatenate([d.weights for d in datasets]))

    @classmethod
    def from_arrays(cls, coords, forces, *, length_unit="nm", energy_unit="kJ/mol", temperature=300.0,
                    bead_names=None, topology=None, bonds=None, info=None, masses=None):
        """Build a dataset from pre-mapped arrays (n_frames, n_beads, 3) in named units (converted to nm and
        kJ/mol/nm).

        ``topology`` (a :class:`cgdml.topology.CGTopology`, or an mdtraj Topology with one atom per bead in column
        order) gives names, elements, residues and bonds; ``bonds`` (n_bonds, 2) gives or overrides the bonds;
        with neither, the beads (named ``bead_names``, default B0, B1, ...) form a chain in index order (a
        warning says so). ``masses`` (n_beads,) amu default to the elements'. A median bonded distance outside
        0.05-1 nm after conversion is refused: the length unit is then almost certainly wrong.
        """
        coords = np.asarray(coords, dtype=np.float64)
        forces = np.asarray(forces, dtype=np.float64)
        if coords.ndim != 3 or coords.shape[-1] != 3:
            raise CgdmlError(f"coordinates must have shape (n_frames, n_beads, 3), got {coords.shape}")
        if forces.shape != coords.shape:
            raise CgdmlError(f"forces shape {forces.shape} does not match coordinates shape {coords.shape}")
        temperature = check_temperature(temperature)
        coords = coords * length_factor(length_unit)
        forces = forces * force_factor(length_unit, energy_unit, temperature)
        n_beads = coords.shape[1]
        if topology is not None:
            topo = topology if isinstance(topology, CGTopology) else CGTopology.from_mdtraj(topology)
            if topo.n_beads != n_beads:
                raise CgdmlError(f"the topology has {topo.n_beads} beads, the coordinates {n_beads}")
            if bonds is not None:
                topo = CGTopology(topo.names, bonds, topo.residue_ids, topo.residue_names, topo.elements)
        else:
            names = [f"B{i}" for i in range(n_beads)] if bead_names is None else list(bead_names)
            if len(names) != n_beads:
                raise CgdmlError(f"{len(names)} bead names for {n_beads} beads")
            topo = CGTopology.chain(names) if bonds is None else CGTopology(names, bonds)
        check_bonded_distances(coords, topo.bonds, f"after conversion from {length_unit!r}")
        info = dict(info or {})
        info.setdefault("source_units", {"length": length_unit, "energy": energy_unit})
        return cls(coords, forces, CGSystem(topo, masses, temperature), info)

    def save(self, path):
        """Write the dataset atomically as ``.npz`` (nm, kJ/mol/nm): coords, forces, the system's entries
        (:meth:`cgdml.system.CGSystem.to_arrays`), info_json and format_version. Coordinates are stored in
        float32, or in float64 where they lie more than 10 nm from the origin (float32 would round them by more
        than 1e-6 nm). Weights other than all ones are stored (``weights``, float64) in format version 2, which an
        older cgdml refuses rather than reading biased frames as Boltzmann samples."""
        far = len(self.coords) and np.abs(self.coords).max() > 10.0
        plain = bool(np.all(self.weights == 1.0))
        extra = {} if plain else {"weights": self.weights.astype(np.float64)}
        save_npz(path, coords=self.coords.astype(np.float64 if far else np.float32),
                 forces=self.forces.astype(np.float32),
                 **self.system.to_arrays(), info_json=np.array(json.dumps(self.info)),
                 format_version=np.int64(1 if plain else DATASET_FORMAT_VERSION), **extra)

    @classmethod
    def load(cls, path, allow_all_biased=False):
        """Read a dataset written by :meth:`save`; any defect is a one-line :class:`CgdmlError` naming the file and
        the field. Weights must be finite, >= 0, one per frame and, unless ``allow_all_biased`` (a chunk of
        restrained frames), not all 0."""
        z = load_npz(path, "CG dataset")
        missing = [k for k in ("coords", "forces", "bead_names", "temperature") if k not in z]
        if missing:
            raise CgdmlError(f"{path}: not a cgdml CG dataset (missing {', '.join(missing)})")
        f = Fields(z)
        try:
            version = f.get("format_version", as_int, 1)
            if version > DATASET_FORMAT_VERSION:
                raise CgdmlError(f"dataset format version {version} is newer than this cgdml "
                                 f"({DATASET_FORMAT_VERSION}); upgrade cgdml")
            if version < 1:
                raise CgdmlError(f"damaged field 'format_version' ({version})")
            info = f.get("info_json", as_json, {})
            coords, forces = (f.get(name, lambda v: as_array(v, finite=False)) for name in ("coords", "forces"))
            weights = f.get("weights", lambda v: as_array(v, finite=False), None)
            if weights is not None:
                weights = check_weights(weights, len(coords), "field 'weights'", not allow_all_biased)
            return cls(coords, forces, CGSystem.from_arrays(z), info, weights)
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
