"""All-atom reference simulations of capped peptides with OpenMM (positions and forces for CG fitting).

The command line, ``python -m cgdml.reference -o DIR [--sequence AAA]``, is in :mod:`cgdml.reference.__main__`; it
builds the capped peptide ACE-(sequence)-NME (the default, ``A``, is alanine dipeptide, from the coordinates in the
package data file ``cgdml/presets/ala2.pdb``; other sequences are built with PeptideBuilder, the ``peptides``
extra), parametrises it with AMBER ff14SB (implicit solvent: OBC2 GB, as the ``implicit/obc2.xml`` CustomGBForce or
the same parameters in OpenMM's native, faster GBSAOBCForce; explicit: TIP3P, PME), constrains bonds to hydrogen,
repartitions hydrogen mass, minimises, equilibrates and runs Langevin dynamics (LangevinMiddleIntegrator). Every
``save_every_ps`` it stores the peptide positions (nm) and forces (kJ/mol/nm; ``getState(getForces=True)``, which
excludes constraint forces). Frames are written in chunk files, each written atomically and carrying an OpenMM
checkpoint, so a killed run resumes from its last finished chunk when rerun with the same command (a damaged chunk
is refused, naming the file). DIR must be new, empty, or a run directory of this command (its ``run.json``): other
files there are refused. At the end the chunks are assembled into ``DIR/NAME.pdb`` (topology) and ``DIR/NAME.npz``
(``positions``, ``forces``: float32 (n_frames, n_atoms, 3); ``time_ps``; ``temperature``; ``info_json``).
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import re
import time
from pathlib import Path

import numpy as np

from .._io import (CgdmlError, Fields, OutputLock, as_array, atomic_path, check_memory, check_own_directory, load_npz,
                   one_line, remove_stale_temps, save_json, save_npz)
from ..io.shipped import ala2_pdb_path
from ..units import check_temperature

FORCE_FIELDS = {"implicit": ("amber14/protein.ff14SB.xml", "implicit/obc2.xml"),
                "explicit": ("amber14/protein.ff14SB.xml", "amber14/tip3p.xml")}
# Implicit-solvent GB implementations (same OBC2 model and parameters, igb=5 with mbondi2 radii):
# "custom" is implicit/obc2.xml's CustomGBForce (the shipped alanine-dipeptide data), "native" moves its per-atom
# parameters into OpenMM's built-in GBSAOBCForce, faster on the CPU.
GB_MODELS = ("custom", "native")
NATIVE_GB = "GBSAOBCForce (OBC2; charges, radii and scales of implicit/obc2.xml)"
AMINO_ACIDS = {"A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
               "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
               "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL"}
DIPEPTIDE = "A"
# Settings that must agree between a run directory and a resumed command.
_IDENTITY = ("temperature", "solvent", "seed", "save_every_ps", "chunk_ns", "timestep_fs", "friction_per_ps",
             "hydrogen_mass_amu", "equilibrate_ps", "force_field", "sequence", "gb")


def build_alanine_dipeptide():
    """OpenMM (topology, positions) of capped alanine dipeptide in vacuum (22 atoms)."""
    from openmm import app

    pdb = app.PDBFile(str(ala2_pdb_path()))
    return pdb.topology, pdb.positions


@contextlib.contextmanager
def _seeded_python_random(seed=2024):
    """OpenMM's Modeller places new hydrogens and ions with Python's ``random``: seed it, then restore its state."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def check_sequence(sequence):
    """``sequence`` upper-cased, or a one-line :class:`CgdmlError` naming the first letter that is not one of
    the 20 standard amino acids."""
    if not isinstance(sequence, str) or not sequence.strip():
        raise CgdmlError(f"--sequence must be one-letter amino-acid codes, e.g. AAA, got {sequence!r}")
    seq = sequence.strip().upper()
    for i, letter in enumerate(seq):
        if letter not in AMINO_ACIDS:
            raise CgdmlError(f"--sequence {sequence!r}: {letter!r} (position {i + 1}) is not a standard amino acid; "
                             f"use one-letter codes from {''.join(sorted(AMINO_ACIDS))}")
    return seq


def default_name(sequence, solvent, temperature):
    """Base name of the assembled files: ``ala2_implicit_300K`` for the dipeptide, else ``ace-aaa-nme_...``."""
    seq = check_sequence(sequence)
    stem = "ala2" if seq == DIPEPTIDE else f"ace-{seq.lower()}-nme"
    return f"{stem}_{solvent}_{float(temperature):g}K"


def build_peptide(sequence=DIPEPTIDE, *, phi=-120.0, psi=140.0):
    """OpenMM (topology, positions) of ACE-(sequence)-NME with hydrogens, in vacuum.

    ``sequence`` is one-letter codes of standard amino acids (``"AAA"``: ACE-ALA-ALA-ALA-NME, 42 atoms). ``"A"``
    is the shipped alanine dipeptide (:func:`build_alanine_dipeptide`, the shipped data's structure). Others
    are built by PeptideBuilder (standard geometry, backbone ``phi``/``psi`` in degrees, trans peptide bonds)
    as G-(sequence)-G; the end glycines become the caps (ACE: CA->CH3, C, O; NME: N, CA->C), and
    OpenMM's Modeller adds the hydrogens of the AMBER ff14SB templates (neutral pH protonation states).
    Needs the ``peptides`` extra (PeptideBuilder, Biopython) for sequences other than ``"A"``.
    """
    seq = check_sequence(sequence)
    if seq == DIPEPTIDE:
        return build_alanine_dipeptide()
    try:
        import PeptideBuilder
    except ImportError:
        raise CgdmlError(f"building --sequence {seq} needs PeptideBuilder and Biopython: "
                         "pip install 'cgdml[peptides]'") from None
    import openmm
    from openmm import Vec3, app, unit

    n = len(seq) + 2
    structure = PeptideBuilder.make_structure("G" + seq + "G", [phi] * (n - 1), [psi] * (n - 1))
    residues = list(structure[0]["A"])
    topology, xyz = app.Topology(), []
    chain = topology.addChain()
    for i, res in enumerate(residues):
        if i == 0:
            name, keep = "ACE", {"CA": "CH3", "C": "C", "O": "O"}
        elif i == n - 1:
            name, keep = "NME", {"N": "N", "CA": "C"}  # OpenMM names the NME methyl C
        else:
            name, keep = AMINO_ACIDS[seq[i - 1]], None
        r = topology.addResidue(name, chain)
        for atom in res:
            if keep is not None and atom.get_name() not in keep:
                continue
            label = atom.get_name() if keep is None else keep[atom.get_name()]
            topology.addAtom(label, app.Element.getBySymbol(atom.element), r)
            xyz.append(Vec3(*(0.1 * float(c) for c in atom.get_coord())))
    topology.createStandardBonds()
    topology.createDisulfideBonds(xyz * unit.nanometer)
    modeller = app.Modeller(topology, xyz * unit.nanometer)
    ff = app.ForceField(FORCE_FIELDS["implicit"][0])
    # the same structure every call: seeded placement, and the hydrogens' short minimisation on the Reference
    # platform (the default, multi-threaded CPU platform sums forces in a varying order: ~1e-6 nm differences)
    with _seeded_python_random():
        modeller.addHydrogens(ff, platform=openmm.Platform.getPlatformByName("Reference"))
    try:
        ff.createSystem(modeller.topology)  # every residue matches an ff14SB template
    except ValueError as exc:
        raise CgdmlError(f"--sequence {seq}: the built peptide does not match the force field ({exc})") from None
    return modeller.topology, modeller.positions


def native_gb_force(system):
    """Replace the ``implicit/obc2.xml`` CustomGBForce of ``system`` by OpenMM's native GBSAOBCForce with the
    same charges, radii and screening factors (OBC2, ACE surface term, dielectrics 1 and 78.5, no cutoff)."""
    import openmm

    idx = [i for i, f in enumerate(system.getForces()) if isinstance(f, openmm.CustomGBForce)]
    if len(idx) != 1:
        raise CgdmlError(f"expected one CustomGBForce from implicit/obc2.xml, found {len(idx)}")
    custom = system.getForce(idx[0])
    names = [custom.getPerParticleParameterName(k) for k in range(custom.getNumPerParticleParameters())]
    if names != ["charge", "or", "sr"] or custom.getNonbondedMethod() != openmm.CustomGBForce.NoCutoff:
        raise CgdmlError(f"unexpected implicit/obc2.xml force (parameters {names}); use --gb custom")
    native = openmm.GBSAOBCForce()
    native.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
    native.setSoluteDielectric(1.0)
    native.setSolventDielectric(78.5)
    offset = 0.009  # nm, the dielectric offset of both implementations
    for i in range(custom.getNumParticles()):
        charge, offset_radius, scaled = custom.getParticleParameters(i)
        native.addParticle(charge, offset_radius + offset, scaled / offset_radius)
    system.removeForce(idx[0])
    system.addForce(native)
    return system


def check_gb(solvent, gb, sequence=DIPEPTIDE):
    """The GB implementation for a run: ``custom`` or ``native`` for implicit solvent (default: ``custom`` for
    the dipeptide, as its shipped data, ``native`` for other sequences), None for explicit solvent."""
    if solvent not in FORCE_FIELDS:
        raise CgdmlError(f"unknown solvent {solvent!r} (choose implicit or explicit)")
    if solvent == "explicit":
        if gb is not None:
            raise CgdmlError("--gb applies to implicit solvent only")
        return None
    if gb is None:
        return "custom" if check_sequence(sequence) == DIPEPTIDE else "native"
    if gb not in GB_MODELS:
        raise CgdmlError(f"unknown --gb {gb!r} (choose {' or '.join(GB_MODELS)})")
    return gb


def force_field_names(solvent, gb=None):
    """The force-field files (and GB force) of a run, as recorded in run.json and info_json."""
    names = list(FORCE_FIELDS[solvent])
    return names if gb != "native" else [names[0], NATIVE_GB]


def build_system(solvent="implicit", *, sequence=DIPEPTIDE, gb=None, hydrogen_mass=4.0, padding_nm=1.2):
    """(topology, positions, system, n_solute) for ACE-(sequence)-NME in ``implicit`` or ``explicit`` solvent.

    Bonds to hydrogen are constrained and hydrogen masses set to ``hydrogen_mass`` amu (taken from the
    bonded heavy atom). Implicit solvent: OBC2 GB, ``gb`` as in :func:`check_gb`. Explicit solvent: TIP3P box
    with ``padding_nm`` padding, neutralised with Na+/Cl-, PME, 0.9 nm cutoff.
    """
    from openmm import app, unit

    gb = check_gb(solvent, gb, sequence)
    topology, positions = build_peptide(sequence)
    n_solute = topology.getNumAtoms()
    ff = app.ForceField(*FORCE_FIELDS[solvent])
    common = dict(constraints=app.HBonds, hydrogenMass=hydrogen_mass * unit.amu, rigidWater=True)
    if solvent == "implicit":
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, **common)
        if gb == "native":
            native_gb_force(system)
    else:
        modeller = app.Modeller(topology, positions)
        with _seeded_python_random():  # ions replace the same waters every call
            modeller.addSolvent(ff, model="tip3p", padding=padding_nm * unit.nanometer)
        topology, positions = modeller.topology, modeller.positions
        system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * unit.nanometer,
                                 **common)
    return topology, positions, system, n_solute


def _platform(name, threads):
    import openmm

    try:
        platform = openmm.Platform.getPlatformByName(name)
    except Exception:
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        raise CgdmlError(f"OpenMM platform {name!r} is not available (available: {', '.join(names)})") from None
    props = {"Threads": str(int(threads))} if name == "CPU" and threads else {}
    return platform, props


class _Run:
    """Plan of a chunked run: frames, steps and chunk files of DIR."""

    def __init__(self, settings, outdir):
        self.s = settings
        self.dir = Path(outdir)
        for key in ("ns", "save_every_ps", "timestep_fs", "chunk_ns"):
            if not settings[key] > 0:
                raise CgdmlError(f"--{key.replace('_', '-')} must be > 0, got {settings[key]:g}")
        ts_ps = settings["timestep_fs"] / 1000.0
        steps = settings["save_every_ps"] / ts_ps
        if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
            raise CgdmlError(f"--save-every-ps {settings['save_every_ps']} is not a whole number of "
                             f"{settings['timestep_fs']} fs steps")
        self.steps_per_frame = int(round(steps))
        self.n_frames = int(round(settings["ns"] * 1000.0 / settings["save_every_ps"]))
        self.frames_per_chunk = max(1, int(round(settings["chunk_ns"] * 1000.0 / settings["save_every_ps"])))
        if self.n_frames < 1:
            raise CgdmlError(f"--ns {settings['ns']} gives no frames at --save-every-ps {settings['save_every_ps']}")
        self.n_chunks = -(-self.n_frames // self.frames_per_chunk)

    def chunk_path(self, i):
        return self.dir / f"chunk_{i:05d}.npz"

    def chunk_frames(self, i):
        return min(self.frames_per_chunk, self.n_frames - i * self.frames_per_chunk)

    def finished_chunks(self, n_atoms=None):
        """Number of leading chunk files present (later ones are ignored and redone); each is checked
        (:func:`read_chunk`, ``n_atoms`` atoms)."""
        i = 0
        while i < self.n_chunks and self.chunk_path(i).exists():
            if len(read_chunk(self.chunk_path(i), n_atoms)["positions"]) != self.chunk_frames(i):
                break  # a shorter earlier run ended here with a partial chunk: redo it
            i += 1
        return i


CHUNK_FIX = "delete it and rerun (the run resumes from the chunk before it)"


def read_chunk(path, n_atoms=None):
    """{"positions", "forces"}: float32 (n, n_atoms, 3) of the chunk file ``path``; a damaged or foreign chunk
    (unreadable, a field missing, misshapen or not finite) is a one-line :class:`CgdmlError` naming the file."""
    fields = Fields(load_npz(path, "reference chunk", fix=CHUNK_FIX))
    try:
        out = {name: fields.get(name, lambda v: as_array(v, "f", shape=(None, n_atoms, 3), dtype=np.float32))
               for name in ("positions", "forces")}
        if out["positions"].shape != out["forces"].shape:
            raise CgdmlError(f"positions {out['positions'].shape} and forces {out['forces'].shape} differ in shape")
    except CgdmlError as exc:
        raise CgdmlError(f"{path}: damaged reference chunk: {exc}; {CHUNK_FIX}") from None
    return out


COMMAND = "cgdml.reference"
OPENMM_INT_MAX = 2 ** 31 - 1      # OpenMM takes steps per call and seeds as a C int


def openmm_seed(seed):
    """The OpenMM seed (a C int; 0 there means "a new random seed each run") of a 32-bit ``seed``: the seed itself
    from 1 to 2^31 - 1, else a number in that range derived from it (numpy's SeedSequence), so that every seed
    gives a reproducible run."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 32:
        raise CgdmlError(f"--seed must be between 0 and {2 ** 32 - 1} (a 32-bit seed), got {seed}")
    if 0 < seed <= OPENMM_INT_MAX:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1)[0]) % OPENMM_INT_MAX + 1


def check_name(name):
    """Refuse (one line) a ``--name`` that is not a plain file name, or that names the run's own files."""
    if name is None:
        return
    name = str(name)
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip() or "\0" in name:
        raise CgdmlError(f"--name {name!r} must be a plain file name (no directory, not starting with '.'): the "
                         "assembled files go into the output directory")
    if re.fullmatch(r"chunk_\d+(\.npz)?|run(\.json)?", name):
        raise CgdmlError(f"--name {name!r} is the name of one of the run's own files (chunk_NNNNN.npz, run.json); "
                         "choose another")


def _check_steps(steps, what):
    if steps > OPENMM_INT_MAX:
        raise CgdmlError(f"{what} is {steps} steps, more than OpenMM takes in one call ({OPENMM_INT_MAX})")


def _check_settings(run_json, settings):
    provenance = {"command": COMMAND, "output": run_json.parent.name}
    settings = {"written_by": provenance, **settings}
    if not run_json.exists():
        save_json(run_json, settings)
        return
    try:
        old = json.loads(run_json.read_text())
    except (OSError, ValueError) as exc:
        raise CgdmlError(f"{run_json}: unreadable run settings ({exc})") from None
    if not isinstance(old, dict):
        raise CgdmlError(f"{run_json}: not the run settings of a cgdml reference run (JSON {type(old).__name__}); "
                         "use a new output directory")
    if "written_by" in old and (not isinstance(old["written_by"], dict) or
                                old["written_by"].get("command") != COMMAND):
        raise CgdmlError(f"{run_json}: written by {old['written_by']}, not by {COMMAND}; use a new output directory")
    # a run.json from before --sequence and --gb: the dipeptide, with implicit/obc2.xml's CustomGBForce
    legacy = {"sequence": DIPEPTIDE, "gb": "custom" if old.get("solvent") == "implicit" else None}
    diff = [f"{k} {old.get(k, legacy.get(k))!r} vs {settings[k]!r}" for k in _IDENTITY
            if old.get(k, legacy.get(k)) != settings[k]]
    if diff:
        raise CgdmlError(f"{run_json.parent} holds a run with other settings ({'; '.join(diff)}); "
                         "use a new output directory")
    save_json(run_json, settings)  # ns may grow: a longer run extends the chunks already there


def run_reference(outdir, *, ns=20.0, save_every_ps=1.0, temperature=300.0, solvent="implicit", seed=2024,
                  platform="CPU", threads=1, chunk_ns=1.0, timestep_fs=4.0, friction_per_ps=1.0,
                  hydrogen_mass=4.0, equilibrate_ps=100.0, sequence=DIPEPTIDE, gb=None, name=None, progress=True,
                  log=print):
    """Run (or resume) the reference simulation of ACE-(sequence)-NME in ``outdir``; return (pdb_path, npz_path)
    of the assembly.

    Units: ns, ps, fs, K, amu. ``seed`` seeds velocities and the Langevin noise. ``gb``: see :func:`check_gb`.
    ``name`` defaults to :func:`default_name`.
    """
    import openmm

    temperature = check_temperature(temperature)
    sequence = check_sequence(sequence)
    gb = check_gb(solvent, gb, sequence)
    outdir = Path(outdir)
    for value, label, ok in ((friction_per_ps, "--friction", friction_per_ps >= 0),
                             (hydrogen_mass, "--hydrogen-mass", hydrogen_mass > 0),
                             (equilibrate_ps, "--equilibrate-ps", equilibrate_ps >= 0),
                             (threads, "--threads", threads >= 0)):
        if not ok:
            raise CgdmlError(f"{label} must be {'> 0' if label == '--hydrogen-mass' else '>= 0'}, got {value:g}")
    settings = dict(ns=float(ns), save_every_ps=float(save_every_ps), temperature=temperature, solvent=solvent,
                    seed=int(seed), platform=platform, threads=int(threads), chunk_ns=float(chunk_ns),
                    timestep_fs=float(timestep_fs), friction_per_ps=float(friction_per_ps),
                    hydrogen_mass_amu=float(hydrogen_mass), equilibrate_ps=float(equilibrate_ps),
                    force_field=force_field_names(solvent, gb), sequence=sequence, gb=gb,
                    integrator="LangevinMiddleIntegrator",
                    constraints="HBonds", openmm_version=openmm.__version__)
    check_name(name)
    seed = openmm_seed(seed)
    plan = _Run(settings, outdir)
    _check_steps(plan.steps_per_frame, f"--save-every-ps {save_every_ps:g}")
    _check_steps(int(round(equilibrate_ps * 1000.0 / timestep_fs)), f"--equilibrate-ps {equilibrate_ps:g}")
    plat, props = _platform(platform, threads)
    topology, positions, system, n_solute = build_system(solvent, sequence=sequence, gb=gb,
                                                         hydrogen_mass=hydrogen_mass)
    # the assembly holds positions and forces (float32) twice: the chunks and their concatenation
    check_memory(4 * plan.n_frames * n_solute * 3 * 4.0, f"assembling {plan.n_frames} frames of {n_solute} atoms",
                 "lower --ns or raise --save-every-ps")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgdmlError(f"{outdir}: cannot create the run directory ({exc.strerror or exc})") from None
    with OutputLock(outdir):              # one run per directory; held until the assembled files are written
        remove_stale_temps(outdir)        # left inside by a run killed while writing
        return _run(outdir, plan, settings, plat, props, topology, positions, system, n_solute, solvent, temperature,
                    friction_per_ps, timestep_fs, seed, equilibrate_ps, name, progress, log)


def _run(outdir, plan, settings, plat, props, topology, positions, system, n_solute, solvent, temperature,
         friction_per_ps, timestep_fs, seed, equilibrate_ps, name, progress, log):
    import openmm
    from openmm import unit

    check_own_directory(outdir, COMMAND, lambda d: (d / "run.json").is_file())   # run.json: the run's marker
    _check_settings(outdir / "run.json", settings)

    if solvent == "explicit":
        system.addForce(openmm.MonteCarloBarostat(1.0 * unit.bar, temperature * unit.kelvin))
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, friction_per_ps / unit.picosecond,
                                                 timestep_fs * unit.femtoseconds)
    integrator.setRandomNumberSeed(int(seed))
    context = openmm.Context(system, integrator, plat, props)

    done = plan.finished_chunks(n_solute)
    if done:
        _restore(context, plan.chunk_path(done - 1))
        log(f"resuming {outdir}: {done}/{plan.n_chunks} chunks done")
    else:
        context.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
        context.setVelocitiesToTemperature(temperature * unit.kelvin, int(seed))
        n_eq = int(round(equilibrate_ps * 1000.0 / timestep_fs))
        try:
            integrator.step(n_eq)
        except openmm.OpenMMException as exc:
            raise CgdmlError(f"{outdir}: OpenMM failed during equilibration ({str(exc).strip()})") from None
        log(f"minimised and equilibrated {equilibrate_ps:g} ps")
    pdb_text = _solute_pdb(context, topology, n_solute)

    bar = None
    if progress and done < plan.n_chunks:
        from tqdm import tqdm

        bar = tqdm(total=plan.n_frames, initial=done * plan.frames_per_chunk, unit="ps",
                   unit_scale=plan.s["save_every_ps"], desc="reference")
    t_start, frames_run = time.perf_counter(), 0
    for i in range(done, plan.n_chunks):
        n = plan.chunk_frames(i)
        pos = np.empty((n, n_solute, 3), dtype=np.float32)
        frc = np.empty((n, n_solute, 3), dtype=np.float32)
        t0 = time.perf_counter()
        try:
            for k in range(n):
                integrator.step(plan.steps_per_frame)
                st = context.getState(getPositions=True, getForces=True)
                pos[k] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)[:n_solute]
                frc[k] = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)[:n_solute]
                if bar is not None:
                    bar.update(1)
        except openmm.OpenMMException as exc:
            raise CgdmlError(f"{outdir}: OpenMM failed in chunk {i} ({str(exc).strip()}); chunks before it are "
                             "kept and a rerun resumes there") from None
        if not (np.isfinite(pos).all() and np.isfinite(frc).all()):
            raise CgdmlError(f"{outdir}: the simulation blew up (NaN) in chunk {i}; try a smaller --timestep-fs")
        state = context.getState(getPositions=True, getVelocities=True, getParameters=True)
        save_npz(plan.chunk_path(i), positions=pos, forces=frc,
                 step=np.int64(context.getStepCount()), time_ps=np.float64(state.getTime().value_in_unit(unit.picosecond)),
                 checkpoint=np.frombuffer(context.createCheckpoint(), dtype=np.uint8),
                 state_xml=np.array(openmm.XmlSerializer.serialize(state)))
        dt = time.perf_counter() - t0
        frames_run += n
        ns_day = n * plan.s["save_every_ps"] / 1000.0 / dt * 86400.0
        log(f"chunk {i + 1}/{plan.n_chunks}: {n} frames in {dt:.1f} s ({ns_day:.0f} ns/day)")
    if bar is not None:
        bar.close()
    if frames_run:
        elapsed = time.perf_counter() - t_start
        settings["ns_per_day"] = frames_run * plan.s["save_every_ps"] / 1000.0 / elapsed * 86400.0
        settings["production_wall_s"] = elapsed
        log(f"production: {frames_run} frames, {elapsed:.1f} s, {settings['ns_per_day']:.0f} ns/day")
    return assemble_reference(outdir, plan, pdb_text, settings, name=name)


def _restore(context, chunk_path):
    """Continue from the checkpoint stored in a chunk (state XML when the platform differs)."""
    import openmm

    z = load_npz(chunk_path, "reference chunk", fix=CHUNK_FIX)
    try:
        context.loadCheckpoint(z["checkpoint"].tobytes())
        return
    except Exception:  # another platform or OpenMM version: the state XML
        pass
    try:
        context.setState(openmm.XmlSerializer.deserialize(str(z["state_xml"])))
    except Exception as exc:
        why = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {one_line(exc, 120)}"
        raise CgdmlError(f"{chunk_path}: damaged reference chunk: neither its checkpoint nor its state can be "
                         f"restored ({why}); {CHUNK_FIX}") from None


def _solute_pdb(context, topology, n_solute):
    from openmm import app

    pos = context.getState(getPositions=True).getPositions()[:n_solute]
    top = app.Topology()
    chain = top.addChain()
    atom_map = {}
    for res in topology.residues():
        atoms = [a for a in res.atoms() if a.index < n_solute]
        if not atoms:
            continue
        r = top.addResidue(res.name, chain)
        for a in atoms:
            atom_map[a] = top.addAtom(a.name, a.element, r)
    for a, b in topology.bonds():
        if a in atom_map and b in atom_map:
            top.addBond(atom_map[a], atom_map[b])
    buf = io.StringIO()
    app.PDBFile.writeFile(top, pos, buf)
    return buf.getvalue()


def assemble_reference(outdir, plan, pdb_text, settings, *, name=None):
    """Concatenate the chunks of ``outdir`` into NAME.pdb and NAME.npz (float32, nm and kJ/mol/nm)."""
    outdir = Path(outdir)
    name = name or default_name(settings.get("sequence", DIPEPTIDE), settings["solvent"], settings["temperature"])
    pos, frc = [], []
    n_atoms = None
    for i in range(plan.n_chunks):
        z = read_chunk(plan.chunk_path(i), n_atoms)
        pos.append(z["positions"])
        frc.append(z["forces"])
        n_atoms = z["positions"].shape[1]
    pos, frc = np.concatenate(pos), np.concatenate(frc)
    time_ps = plan.s["save_every_ps"] * np.arange(1, len(pos) + 1)
    pdb_path, npz_path = outdir / f"{name}.pdb", outdir / f"{name}.npz"
    with atomic_path(pdb_path) as tmp:
        tmp.write_text(pdb_text)
    save_npz(npz_path, positions=pos, forces=frc, time_ps=time_ps, temperature=np.float64(settings["temperature"]),
             info_json=np.array(json.dumps(settings)))
    return pdb_path, npz_path
