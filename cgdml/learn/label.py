"""Restrained all-atom labelling: mean-force data at CG configurations chosen by the model (issue 26).

For each target CG configuration R (n_beads, 3) nm, :class:`RestrainedLabeller` starts from the all-atom frame
of its pool whose CG image is closest to R after optimal superposition (RMSD over beads), superposes R onto that
image (so the restraint neither translates nor rotates the molecule), adds a harmonic restraint on every bead
centre, W = sum_I k/2 |C_I x - R_I|^2 (an OpenMM ``CustomCentroidBondForce`` with one group per bead, the
map's position weights and the target as per-bond parameters), minimises, equilibrates and records frames. Each
frame's label is the map's force of the unrestrained system (the restraint sits in its own force group, left
out of ``getState(getForces=True)``), at the frame's own CG image M(x), not at R. The restraint depends on M(x)
only, so p(x | M(x)) and the mean force are those of the unbiased system (docs/method.md §2.9); the frames get
weight 0 in the :class:`cgdml.data.CGDataset` because their CG populations are the restraint's.

The all-atom system is that of a :mod:`cgdml.reference` run (:func:`load_allatom_reference`): its run settings
rebuild the same OpenMM system (force field, implicit solvent, hydrogen masses, constraints), and its frames are
the first pool of start structures. Implicit solvent only (the frames hold the peptide's atoms only). Units:
nm, ps, fs, K, kJ/mol.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import CgdmlError, load_npz
from ..data import CGDataset
from ..system import CGSystem

RESTRAINT_GROUP = 31          # OpenMM force group of the restraint (left out of the recorded forces)
LABEL_DEFAULTS = dict(k_restraint=5000.0, equilibrate_ps=2.0, n_frames=20, save_every_ps=0.5, timestep_fs=2.0,
                      friction_per_ps=1.0, minimise_steps=500)


def superpose(mobile, target):
    """``mobile`` (n_beads, 3) moved onto ``target`` (n_beads, 3) by the rotation and translation that minimise
    the RMSD (Kabsch, proper rotations only)."""
    P = mobile - mobile.mean(0)
    Q = target - target.mean(0)
    U, _, Vt = np.linalg.svd(P.T @ Q)
    d = np.sign(np.linalg.det(U @ Vt))
    rot = U @ np.diag([1.0, 1.0, d]) @ Vt
    return P @ rot + target.mean(0)


def superposed_rmsd(images, target):
    """RMSD (n,) nm of each CG configuration ``images`` (n, n_beads, 3) to ``target`` (n_beads, 3) after optimal
    superposition (proper rotations)."""
    P = images - images.mean(1, keepdims=True)
    Q = target - target.mean(0)
    H = np.einsum("nai,aj->nij", P, Q)
    s = np.linalg.svd(H, compute_uv=False)
    d = np.sign(np.linalg.det(H))
    s[:, 2] *= d
    msd = (np.einsum("nai,nai->n", P, P) + np.einsum("ai,ai->", Q, Q) - 2 * s.sum(1)) / target.shape[0]
    return np.sqrt(np.maximum(msd, 0.0))


@dataclass
class AllAtomReference:
    """An all-atom system and its frames: ``pdb`` and ``npz`` paths of a :mod:`cgdml.reference` run,
    ``settings`` (its run settings), the OpenMM ``topology`` and ``system``, the mdtraj ``md_topology``,
    ``positions`` and ``forces`` (n_frames, n_atoms, 3) nm and kJ/mol/nm, ``save_every_ps``."""

    pdb: Path
    npz: Path
    settings: dict
    topology: object
    system: object
    md_topology: object
    positions: np.ndarray
    forces: np.ndarray
    save_every_ps: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def temperature(self):
        return float(self.settings["temperature"])

    @property
    def n_atoms(self):
        return self.positions.shape[1]


def load_allatom_reference(pdb, npz):
    """The all-atom reference of a :mod:`cgdml.reference` run (``pdb``, ``npz``: e.g. the shipped
    ``ala2_implicit_300K``), with its OpenMM system rebuilt from the run settings (sequence, solvent, GB model,
    hydrogen mass). One-line errors for a missing file, explicit solvent and an atom count or atom names that do
    not match the rebuilt system."""
    from ..io.allatom import load_topology
    from ..reference import DIPEPTIDE, build_system

    pdb, npz = Path(pdb), Path(npz)
    md_topology = load_topology(pdb)
    z = load_npz(npz, "all-atom reference")
    for key in ("positions", "forces", "info_json"):
        if key not in z:
            raise CgdmlError(f"{npz}: not a cgdml.reference run (missing {key!r})")
    try:
        settings = json.loads(str(z["info_json"]))
    except ValueError:
        raise CgdmlError(f"{npz}: damaged run settings (info_json)") from None
    if settings.get("solvent") != "implicit":
        raise CgdmlError(f"{npz}: restrained labelling needs an implicit-solvent run (got {settings.get('solvent')!r})")
    sequence = settings.get("sequence", DIPEPTIDE)
    gb = settings.get("gb", "custom" if sequence == DIPEPTIDE else None)
    topology, _, system, n_solute = build_system("implicit", sequence=sequence, gb=gb,
                                                 hydrogen_mass=float(settings.get("hydrogen_mass_amu", 4.0)))
    positions, forces = np.asarray(z["positions"], np.float64), np.asarray(z["forces"], np.float64)
    if positions.ndim != 3 or positions.shape[1] != n_solute or md_topology.n_atoms != n_solute:
        raise CgdmlError(f"{npz}: {positions.shape[1] if positions.ndim == 3 else '?'} atoms in the frames and "
                         f"{md_topology.n_atoms} in {pdb.name}, but the rebuilt ACE-{sequence}-NME system has "
                         f"{n_solute}")
    names = [a.name for a in topology.atoms()]
    if [a.name for a in md_topology.atoms] != names:
        raise CgdmlError(f"{pdb}: atom names or order differ from the rebuilt ACE-{sequence}-NME system")
    return AllAtomReference(pdb, npz, settings, topology, system, md_topology, positions, forces,
                            float(settings.get("save_every_ps", 1.0)))


class RestrainedLabeller:
    """Mapped all-atom forces at given CG configurations, from restrained OpenMM runs (module docstring).

    Parameters
    ----------
    allatom : :class:`AllAtomReference` (the system; its frames start the pool of start structures).
    cgmap : a fitted :class:`cgdml.mapping.CGMap` on the all-atom topology, with a force map.
    system : the :class:`cgdml.system.CGSystem` of the chunks (the starting dataset's, so they can be joined).
    k_restraint : kJ/mol/nm^2 per bead; equilibrate_ps : under the restraint after minimisation, not recorded;
    n_frames, save_every_ps : frames recorded per configuration and their spacing; timestep_fs, friction_per_ps :
    the Langevin integrator (LangevinMiddleIntegrator); minimise_steps : of the pull (L-BFGS under the restraint).
    platform, threads : OpenMM platform ("CPU", "Reference", "CUDA", ...); seed : integrator and velocities.
    """

    def __init__(self, allatom, cgmap, system, *, k_restraint=LABEL_DEFAULTS["k_restraint"],
                 equilibrate_ps=LABEL_DEFAULTS["equilibrate_ps"], n_frames=LABEL_DEFAULTS["n_frames"],
                 save_every_ps=LABEL_DEFAULTS["save_every_ps"], timestep_fs=LABEL_DEFAULTS["timestep_fs"],
                 friction_per_ps=LABEL_DEFAULTS["friction_per_ps"], minimise_steps=LABEL_DEFAULTS["minimise_steps"],
                 platform="CPU", threads=1, seed=0):
        for name, value in (("k_restraint", k_restraint), ("save_every_ps", save_every_ps),
                            ("timestep_fs", timestep_fs)):
            if not value > 0:
                raise CgdmlError(f"{name} must be > 0, got {value:g}")
        if not (int(n_frames) == n_frames and n_frames >= 1):
            raise CgdmlError(f"n_frames must be a whole number >= 1, got {n_frames}")
        if not equilibrate_ps >= 0:
            raise CgdmlError(f"equilibrate_ps must be >= 0, got {equilibrate_ps:g}")
        check_map_fits(cgmap, allatom, system)
        self.allatom, self.cgmap, self.system = allatom, cgmap, system
        self.k_restraint, self.n_frames = float(k_restraint), int(n_frames)
        self.steps_per_frame = max(1, int(round(save_every_ps * 1000.0 / timestep_fs)))
        self.equilibrate_steps = int(round(equilibrate_ps * 1000.0 / timestep_fs))
        self.timestep_fs, self.friction_per_ps, self.minimise_steps = timestep_fs, friction_per_ps, int(minimise_steps)
        self.platform, self.threads, self.seed = platform, threads, seed
        self._openmm = None

    @property
    def ns_per_configuration(self):
        """All-atom time (ns) one configuration costs: equilibration and the recorded frames."""
        return (self.equilibrate_steps + self.n_frames * self.steps_per_frame) * self.timestep_fs * 1e-6

    def _context(self):
        """The OpenMM context (built once): the all-atom system plus the restraint in its own force group."""
        if self._openmm is not None:
            return self._openmm
        import copy

        import openmm
        from openmm import unit

        from ..reference import openmm_seed

        system = copy.deepcopy(self.allatom.system)
        for f in system.getForces():
            if f.getForceGroup() == RESTRAINT_GROUP:
                raise CgdmlError(f"the all-atom system already uses force group {RESTRAINT_GROUP}")
        restraint = openmm.CustomCentroidBondForce(1, "0.5*k_restraint*((x1-tx)^2+(y1-ty)^2+(z1-tz)^2)")
        restraint.addGlobalParameter("k_restraint", self.k_restraint)
        for name in ("tx", "ty", "tz"):
            restraint.addPerBondParameter(name)
        C = self.cgmap.config_matrix_
        for i in range(C.shape[0]):
            atoms = np.flatnonzero(C[i])
            restraint.addGroup([int(a) for a in atoms], [float(w) for w in C[i, atoms]])
            restraint.addBond([i], [0.0, 0.0, 0.0])
        restraint.setForceGroup(RESTRAINT_GROUP)
        system.addForce(restraint)
        integrator = openmm.LangevinMiddleIntegrator(self.allatom.temperature * unit.kelvin,
                                                     self.friction_per_ps / unit.picosecond,
                                                     self.timestep_fs * unit.femtoseconds)
        integrator.setRandomNumberSeed(openmm_seed(self.seed))
        try:
            platform = openmm.Platform.getPlatformByName(self.platform)
        except Exception:
            raise CgdmlError(f"OpenMM platform {self.platform!r} is not available") from None
        props = {"Threads": str(int(self.threads))} if self.platform == "CPU" and self.threads else {}
        context = openmm.Context(system, integrator, platform, props)
        self._openmm = (context, integrator, restraint)
        return self._openmm

    def label(self, targets, pool=None, *, round_index=0, progress=False):
        """Label the CG configurations ``targets`` (n, n_beads, 3) nm; returns (chunk, record).

        ``pool`` (m, n_atoms, 3) nm: all-atom frames to start from (default: the reference's). The chunk is a
        :class:`cgdml.data.CGDataset` of ``n * n_frames`` frames (CG images and mapped unrestrained forces,
        weight 0); ``record`` is a dict: per configuration (``configurations``) the start frame, its superposed
        RMSD to the target and the recorded frames' mean bead distance from the (superposed) target (nm);
        ``final_positions`` (n, n_atoms, 3) nm, the last frame of each (for later pools); ``allatom_ns``. A run
        that blows up (NaN, or an OpenMM error) is a one-line :class:`CgdmlError` naming ``round_index`` and
        the configuration.
        """
        import openmm
        from openmm import unit

        targets = np.asarray(targets, dtype=np.float64)
        n_beads = self.cgmap.config_matrix_.shape[0]
        if targets.ndim != 3 or targets.shape[1:] != (n_beads, 3) or not np.isfinite(targets).all():
            raise CgdmlError(f"targets must be finite CG configurations shaped (n, {n_beads}, 3) nm, got "
                             f"{targets.shape}")
        pool = self.allatom.positions if pool is None else np.asarray(pool, dtype=np.float64)
        images = self.cgmap.map_coords(pool)
        context, integrator, restraint = self._context()
        T = self.allatom.temperature
        n, k = len(targets), self.n_frames
        coords = np.empty((n * k, n_beads, 3))
        forces = np.empty((n * k, n_beads, 3))
        final = np.empty((n,) + pool.shape[1:])
        configurations = []
        mask = sum(1 << g for g in range(32) if g != RESTRAINT_GROUP)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"round {round_index} labelling", unit="config", leave=False)
        for i, target in enumerate(targets):
            where = f"round {round_index}, configuration {i}"
            rmsd = superposed_rmsd(images, target)
            start = int(np.argmin(rmsd))
            aligned = superpose(target, images[start])
            for b in range(n_beads):
                restraint.setBondParameters(b, [b], [float(v) for v in aligned[b]])
            try:
                restraint.updateParametersInContext(context)
                context.setPositions(pool[start] * unit.nanometer)
                if self.minimise_steps:
                    openmm.LocalEnergyMinimizer.minimize(context, 10.0, self.minimise_steps)
                context.setVelocitiesToTemperature(T * unit.kelvin, int(self.seed + 7919 * (i + 1)) % (2 ** 31 - 1))
                integrator.step(self.equilibrate_steps)
                for f in range(k):
                    integrator.step(self.steps_per_frame)
                    x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                    fx = context.getState(getForces=True, groups=mask).getForces(asNumpy=True).value_in_unit(
                        unit.kilojoule_per_mole / unit.nanometer)
                    x, fx = np.asarray(x, dtype=np.float64), np.asarray(fx, dtype=np.float64)
                    if not (np.isfinite(x).all() and np.isfinite(fx).all()):
                        raise FloatingPointError
                    coords[i * k + f] = self.cgmap.map_coords(x[None])[0]
                    forces[i * k + f] = self.cgmap.map_forces(fx[None])[0]
                final[i] = x
            except (openmm.OpenMMException, FloatingPointError) as exc:
                detail = "" if isinstance(exc, FloatingPointError) else f" ({str(exc).strip().splitlines()[0]})"
                raise CgdmlError(f"{where}: the restrained all-atom run blew up (NaN){detail} with a restraint of "
                                 f"{self.k_restraint:g} kJ/mol/nm^2 per bead at a {self.timestep_fs:g} fs step; "
                                 "lower the restraint constant or the time step") from None
            drift = np.linalg.norm(coords[i * k:(i + 1) * k] - aligned, axis=-1).mean()
            configurations.append(dict(start_frame=start, start_rmsd_nm=float(rmsd[start]),
                                       mean_bead_distance_nm=float(drift)))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        info = {"restrained": dict(k_restraint=self.k_restraint, round=int(round_index), n_configurations=n,
                                   frames_per_configuration=k, allatom_ns=n * self.ns_per_configuration,
                                   map=getattr(self.cgmap, "label", ""), force_map=getattr(self.cgmap, "force_map_", ""))}
        chunk = CGDataset(coords, forces, self.system, info, np.zeros(n * k))
        return chunk, dict(configurations=configurations, final_positions=final,
                           allatom_ns=n * self.ns_per_configuration)


def check_map_fits(cgmap, allatom, system=None):
    """One-line :class:`CgdmlError` unless the fitted map ``cgmap`` is a map of ``allatom``'s atoms (same atom
    count) with a force map, and (when given) its beads are those of the CG ``system`` (names and bonds)."""
    if not hasattr(cgmap, "config_matrix_") or not hasattr(cgmap, "force_matrix_"):
        raise CgdmlError("the CG map must be fitted on the all-atom topology and have a force map")
    n_atoms = cgmap.config_matrix_.shape[1]
    if n_atoms != allatom.n_atoms:
        raise CgdmlError(f"the map {cgmap.label or '(given)'} is for {n_atoms} atoms, the all-atom system has "
                         f"{allatom.n_atoms}")
    if system is not None:
        if list(cgmap.cg_topology_.names) != list(system.bead_names):
            raise CgdmlError(f"the map {cgmap.label or '(given)'} makes beads {list(cgmap.cg_topology_.names)}, the "
                             f"dataset has {list(system.bead_names)}: the map does not fit the data")
        a = np.sort(np.sort(np.asarray(cgmap.cg_topology_.bonds), axis=1), axis=0)
        b = np.sort(np.sort(np.asarray(system.bonds), axis=1), axis=0)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise CgdmlError(f"the map {cgmap.label or '(given)'} bonds its beads differently from the dataset")


def allatom_map(allatom, map="ala2-5", force_map="aggregate"):
    """The :class:`cgdml.mapping.CGMap` of preset or TOML ``map`` fitted on ``allatom``'s topology with
    ``force_map`` ("slice", "aggregate", or "optimal" from the reference's forces), as
    :func:`cgdml.mapping.map_allatom` builds it; a map whose selections do not match the atoms is a one-line
    error."""
    from ..mapping import CGMap, force_covariance, load_map_bonds, load_map_spec

    beads, label = load_map_spec(map)
    cgmap = CGMap(beads, bonds=load_map_bonds(map), label=label).fit(allatom.md_topology)
    if force_map == "optimal":
        sample = allatom.forces[:: max(1, len(allatom.forces) // 5000)]
        cgmap.check_covariance_frames(len(sample))
        return cgmap.fit_force_map("optimal", force_cov=force_covariance(sample))
    if force_map not in ("slice", "aggregate"):
        raise CgdmlError(f"unknown force map {force_map!r} (choose slice, aggregate or optimal)")
    return cgmap.fit_force_map(force_map)


def map_reference(allatom, cgmap, frames=None):
    """The :class:`cgdml.data.CGDataset` (weights 1) of the reference's ``frames`` (an index or slice; default
    all) mapped with ``cgmap``."""
    index = slice(None) if frames is None else frames
    system = CGSystem(cgmap.cg_topology_, cgmap.masses_, allatom.temperature)
    info = {"source": {"topology": str(allatom.pdb), "trajectories": [str(allatom.npz)]}, "map": cgmap.label,
            "force_map": cgmap.force_map_}
    return CGDataset(cgmap.map_coords(allatom.positions[index]), cgmap.map_forces(allatom.forces[index]), system,
                     info)
