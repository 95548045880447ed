"""cgdml models inside OpenMM: :func:`to_openmm` builds an ``openmm.System`` (and ``openmm.app.Topology``) of a
:class:`cgdml.model.CGModel`; :func:`write_openmm` writes it to a directory (``python -m cgdml.export``).

The System has one particle per bead (mass ``model.masses``, amu), no constraints, no periodic box, and:

- force group 0, the prior: its harmonic bonds and angles as native forces, ``HarmonicBondForce`` (k/2 (r - r0)^2)
  and ``HarmonicAngleForce`` (k/2 (theta - theta0)^2), each tabulated bond or angle as a two- or three-particle
  ``CustomCompoundBondForce`` (``CustomBondForce`` takes no tabulated functions) on a non-periodic
  ``Continuous1DFunction`` (the same natural spline) with its harmonic
  continuation past the table's ends, and a ``CustomBondForce`` ``eps*(rmin/r)^12`` with per-pair
  parameters for the repulsion pairs, and one four-particle ``CustomCompoundBondForce`` per dihedral profile of
  the prior (``prior.dihedral_profile`` tabulated at 3600 points as a periodic ``Continuous1DFunction``), and
  one two-particle ``CustomCompoundBondForce`` per pair-distance correction (:mod:`cgdml.refine`), tabulated at
  3600 points and flat past its range;
- force group 1, the GDML term as an ``openmm.PythonForce`` that calls ``model.gdml.predict`` once per force
  evaluation (energies include the model's constant offset, so the System's energy is ``model.energy_forces``'s
  exactly, not up to a constant);
- force group 2, one ``CustomTorsionForce`` per basin-balancing dihedral term (``model.offsets``), its energy
  the term's exact closed form (constant on each arc, half-cosine ramps across the gaps), checked against
  ``model.offsets.profile`` on 3600 angles when it is built. A term whose profile is not of that form (or any term
  with ``n_table`` given) becomes a periodic natural cubic spline (``Continuous1DFunction`` over [-pi, pi])
  through samples of ``profile``, as a four-particle ``CustomCompoundBondForce`` ``f(dihedral(p1,p2,p3,p4))``:
  ``CustomTorsionForce`` takes no tabulated functions (OpenMM 8.6.1). The spline misses the exact term near the
  ends of the ramps, where its second derivative jumps: with 3600 points by < 1e-6 kJ/mol in energy but up to
  ~4e-4 of the ramp's largest slope in dU/dphi (4e-6 of the largest force of the test model), hence the
  closed form, which agrees to rounding. The offsets' dihedral follows the IUPAC/mdtraj sign convention, which
  is OpenMM's torsion angle too (checked in tests/test_openmm.py).

Serialisation: ``openmm.XmlSerializer`` stores a PythonForce as a pickle of its computation, here a
:class:`GDMLComputation` whose pickle holds the GDML model's arrays (``GDMLModel.to_arrays``), so ``system.xml``
from :func:`write_openmm` holds the complete System (OpenMM 8.6.1). Reading it back
(``XmlSerializer.deserialize``) unpickles: it needs cgdml importable, and, as with any pickle, only load files
you trust. Should pickling fail, :func:`write_openmm` writes ``system.xml`` without the GDML force and says so in
``README.txt``; the full System is then rebuilt from the model file with :func:`to_openmm`.

Speed: the PythonForce is one Python call per step (~70 us for a 6-bead, 300-frame GDML model), so a single
OpenMM replica is not faster than ``cgdml.simulate``, which batches replicas into one force call (~25x the
replica-steps/s at 100 replicas); for small CG systems the Reference platform also beats the CPU platform,
whose per-step overhead (50-250 us on a busy 2-core machine) exceeds the work. See benchmarks/bench_openmm.py.

The simulation guard of ``cgdml.simulate`` (docs/uncertainty.md §10) is not part of the System: an
``openmm.System`` holds forces, not checks. :class:`UncertaintyReporter` carries it to an
``openmm.app.Simulation`` as a reporter: every ``every`` steps it evaluates ``model.force_uncertainty`` on the
simulation's positions and, above the threshold (the model's by default), records an event and warns once
("warn") or raises :class:`GuardStop` out of ``simulation.step`` ("stop"; one Simulation is one replica, so
``stop-replica`` and ``stop-run`` are the same thing here).

Units: nm, kJ/mol, kJ/mol/nm, ps, amu, radians (OpenMM's own).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import warnings

import numpy as np

from ._io import CgdmlError, atomic_path
from .geometry import TWO_PI

PRIOR_GROUP, GDML_GROUP, OFFSETS_GROUP = 0, 1, 2
N_TABLE = 3600


def _openmm():
    """The openmm module, or a one-line error saying what is missing."""
    try:
        import openmm
        import openmm.app  # noqa: F401
        import openmm.unit  # noqa: F401
    except ImportError:
        raise CgdmlError("OpenMM is not installed (pip install openmm or conda install -c conda-forge openmm)") \
            from None
    if not hasattr(openmm, "PythonForce"):
        raise CgdmlError(f"OpenMM {openmm.__version__} has no PythonForce, which the GDML term needs; "
                         "upgrade OpenMM (8.6.1 works)")
    return openmm


class GDMLComputation:
    """The computation of an ``openmm.PythonForce``: ``model.predict`` at the State's positions.

    Called with an ``openmm.State``; returns (energy kJ/mol, forces (n_beads, 3) kJ/mol/nm). Pickles as the
    model's arrays, so ``XmlSerializer`` can store it.
    """

    def __init__(self, gdml):
        self.gdml = gdml

    def __call__(self, state):
        from openmm.unit import nanometer

        R = state.getPositions(asNumpy=True).value_in_unit(nanometer)  # (n_beads, 3)
        E, F = self.gdml.predict(np.asarray(R, dtype=np.float64)[None])
        return float(E[0]), F[0]

    def __getstate__(self):
        return {"gdml": self.gdml.to_arrays()}

    def __setstate__(self, state):
        from .model import GDMLModel

        self.gdml = GDMLModel.from_arrays(state["gdml"])


def _topology(system, app):
    """The CG topology of ``system`` (a :class:`cgdml.system.CGSystem`) as an ``openmm.app.Topology``: one atom
    per bead, in bead order, with the beads' names, elements and residues, and the CG bonds."""
    topo = system.topology
    top = app.Topology()
    chain = top.addChain("A")
    atoms, current = [], None
    for i, name in enumerate(topo.names):
        key = (int(topo.residue_ids[i]), topo.residue_names[i])
        if key != current:
            residue, current = top.addResidue(key[1], chain, str(key[0])), key
        try:
            element = app.Element.getBySymbol(topo.elements[i])
        except KeyError:
            element = None
        atoms.append(top.addAtom(name, element, residue, str(i + 1)))
    for i, j in topo.bonds:
        top.addBond(atoms[i], atoms[j])
    return top


def _periodic_table_force(openmm, name, values, quad):
    """``f(dihedral(p1, p2, p3, p4))`` with f the periodic spline through ``values`` on [-pi, pi] (first = last)."""
    force = openmm.CustomCompoundBondForce(4, f"{name}(dihedral(p1, p2, p3, p4))")
    force.addTabulatedFunction(name, openmm.Continuous1DFunction(list(map(float, values)), -np.pi, np.pi, True))
    force.addBond([int(b) for b in quad], [])
    return force


def _bonded_table_force(openmm, prior, kind, term, beads):
    """Tabulated bond (``kind`` "bond") or angle ("angle") ``term`` of ``prior`` on ``beads``: a two- or
    three-particle ``CustomCompoundBondForce`` ``table(clamp(x, lo, hi))`` plus the harmonic continuation past either end, as
    :func:`cgdml.prior.table_values`. ``table`` is the non-periodic ``Continuous1DFunction`` through the spline's
    node values: OpenMM's natural cubic spline through them is the prior's spline itself."""
    c = getattr(prior, f"{kind}_splines_")[term]
    lo, hi = map(float, getattr(prior, f"{kind}_spline_range_")[term])
    k = float((prior.bond_k_ if kind == "bond" else prior.angle_k_)[term])
    h = (hi - lo) / len(c)
    values = np.append(c[:, 3], ((c[-1, 0] * h + c[-1, 1]) * h + c[-1, 2]) * h + c[-1, 3])
    slope_lo, slope_hi = float(c[0, 2]), float((3.0 * c[-1, 0] * h + 2.0 * c[-1, 1]) * h + c[-1, 2])
    x = "distance(p1, p2)" if kind == "bond" else "angle(p1, p2, p3)"
    force = openmm.CustomCompoundBondForce(
        len(beads), f"table(min(max(x, lo), hi)) + dlo*(slo + 0.5*k*dlo) + dhi*(shi + 0.5*k*dhi); "
        f"dlo = min(x - lo, 0); dhi = max(x - hi, 0); x = {x}")
    force.addTabulatedFunction("table", openmm.Continuous1DFunction(list(map(float, values)), lo, hi, False))
    for name in ("lo", "hi", "slo", "shi", "k"):
        force.addPerBondParameter(name)
    force.addBond([int(b) for b in beads], [lo, hi, slope_lo, slope_hi, k])
    return force


def _pair_correction_force(openmm, prior, term, beads, n_table=None):
    """Pair-distance correction ``term`` of ``prior`` (:mod:`cgdml.refine`) on ``beads``: a two-particle
    ``CustomCompoundBondForce`` ``table(clamp(distance, lo, hi))``, flat past either end as the prior's term, with
    ``table`` the natural spline through ``n_table`` + 1 samples of the prior's clamped spline (equal within the
    spline error; the two differ most in the first and last intervals, whose slopes end at zero)."""
    lo, hi = map(float, prior.pair_correction_spline_range_[term])
    values = prior.pair_correction(term, np.linspace(lo, hi, (n_table or N_TABLE) + 1))
    force = openmm.CustomCompoundBondForce(2, "table(min(max(distance(p1, p2), lo), hi))")
    force.addTabulatedFunction("table", openmm.Continuous1DFunction(list(map(float, values)), lo, hi, False))
    for name in ("lo", "hi"):
        force.addPerBondParameter(name)
    force.addBond([int(b) for b in beads], [lo, hi])
    return force


def _prior_forces(prior, openmm, n_table=None):
    """The prior as OpenMM forces (group 0): native bonds and angles, custom repulsion and dihedral profiles."""
    bonds = openmm.HarmonicBondForce()
    tables = []
    for t, ((i, j), r0, k) in enumerate(zip(prior.bond_pairs_, prior.bond_r0_, prior.bond_k_)):
        if prior.bond_tabulated_[t]:
            tables.append((f"cgdml prior bond {t} (beads {i} {j}), tabulated",
                           _bonded_table_force(openmm, prior, "bond", t, (i, j))))
        else:
            bonds.addBond(int(i), int(j), float(r0), float(k))
    angles = openmm.HarmonicAngleForce()
    for t, ((i, j, k), theta0, ka) in enumerate(zip(prior.angle_triples_, prior.angle_theta0_, prior.angle_k_)):
        if prior.angle_tabulated_[t]:
            tables.append((f"cgdml prior angle {t} (beads {i} {j} {k}), tabulated",
                           _bonded_table_force(openmm, prior, "angle", t, (i, j, k))))
        else:
            angles.addAngle(int(i), int(j), int(k), float(theta0), float(ka))
    forces = [("cgdml prior bonds", bonds), ("cgdml prior angles", angles)] + tables
    if len(prior.repulsion_pairs_):
        rep = openmm.CustomBondForce("eps*(rmin/r)^12")
        rep.addPerBondParameter("eps")
        rep.addPerBondParameter("rmin")
        for (i, j), rmin in zip(prior.repulsion_pairs_, prior.repulsion_rmin_):
            rep.addBond(int(i), int(j), [float(prior.repulsion_eps_), float(rmin)])
        forces.append(("cgdml prior repulsion", rep))
    for t, (i, j) in enumerate(prior.pair_correction_pairs_):
        forces.append((f"cgdml prior pair correction {t} (beads {i} {j})",
                       _pair_correction_force(openmm, prior, t, (i, j), n_table)))
    grid = np.linspace(-np.pi, np.pi, (n_table or N_TABLE) + 1)
    for t, quad in enumerate(prior.dihedral_quads_):
        values = prior.dihedral_profile(t, grid)
        values[-1] = values[0]
        forces.append((f"cgdml prior dihedral {t} (beads {' '.join(map(str, quad))})",
                       _periodic_table_force(openmm, "profile", values, quad)))
    return forces


def _ramps(offsets, term):
    """The term as ramps: U(phi) = u0 + sum_g step_g ramp((pos - at_g) / width_g), pos = (phi - origin) mod 2 pi,
    ramp(t) = (1 - cos(pi clip(t, 0, 1))) / 2: the half-cosine steps across the gaps between the arcs (arcs
    counterclockwise from arc 0). Returns (u0, origin, at (n,), width (n,), step (n,)), gaps without a step left out."""
    s = slice(offsets.first[term], offsets.first[term] + offsets.count[term])
    start, width, delta = offsets.start[s], offsets.width[s], offsets.delta[s]
    gap_start = start + width
    gap = (np.roll(start, -1) - gap_start) % TWO_PI
    step = np.roll(delta, -1) - delta
    keep = step != 0.0
    return float(delta[0]), float(start[0]), ((gap_start - start[0]) % TWO_PI)[keep], gap[keep], step[keep]


def _ramps_energy(ramps, phi):
    """U (n,) kJ/mol of :func:`_ramps` output at dihedrals phi (n,) rad (what the OpenMM expression computes)."""
    u0, origin, at, width, step = ramps
    pos = (phi - origin) % TWO_PI
    t = np.clip((pos[:, None] - at) / width, 0.0, 1.0)
    return u0 + (step * 0.5 * (1.0 - np.cos(np.pi * t))).sum(axis=1)


def _ramps_expression(ramps):
    """The OpenMM (Lepton) expression in ``theta`` of :func:`_ramps` output."""
    u0, origin, at, width, step = ramps
    terms = [f"{u0:.17g}"] + [f"({0.5 * d:.17g})*(1 - cos({np.pi:.17g}*min(max((pos - ({a:.17g}))/{w:.17g}, 0), 1)))"
                              for a, w, d in zip(at, width, step)]
    if len(terms) == 1:
        return terms[0]
    wrap = f"pos = theta - ({origin:.17g}) - {TWO_PI:.17g}*floor((theta - ({origin:.17g}))/{TWO_PI:.17g})"
    return " + ".join(terms) + "; " + wrap


def _offset_forces(offsets, openmm, n_table):
    """One dihedral force per offset term (group 2): an exact ``CustomTorsionForce`` of its ramps, or with
    ``n_table`` (or when the term's profile is not the ramps' form) a periodic spline through ``n_table or
    N_TABLE`` samples of its profile, as a four-particle ``CustomCompoundBondForce``."""
    grid = np.linspace(-np.pi, np.pi, (n_table or N_TABLE) + 1)
    forces = []
    for t, quad in enumerate(offsets.quads):
        values = offsets.profile(t, grid)[0]
        name = f"cgdml dihedral offset {t} (beads {' '.join(map(str, quad))})"
        ramps = _ramps(offsets, t)
        exact = n_table is None and (ramps[3] > 1e-9).all() and \
            np.abs(_ramps_energy(ramps, grid) - values).max() <= 1e-9 * (1.0 + np.abs(values).max())
        if exact:
            force = openmm.CustomTorsionForce(_ramps_expression(ramps))
            force.addTorsion(*(int(b) for b in quad), [])
        else:
            values[-1] = values[0]  # periodic: the ends are the same angle
            force = _periodic_table_force(openmm, "offset", values, quad)
        forces.append((name, force))
    return forces


def to_openmm(model, n_table=None):
    """(openmm.System, openmm.app.Topology) of ``model`` (a :class:`cgdml.model.CGModel`), see the module docstring.

    ``n_table``: tabulate each dihedral offset term at that many points over [-pi, pi] instead of the exact
    expression (default None: exact).
    """
    from .model import CGModel

    if not isinstance(model, CGModel):
        raise CgdmlError(f"to_openmm needs a cgdml CGModel, got {type(model).__name__}")
    if n_table is not None and not (isinstance(n_table, (int, np.integer)) and n_table >= 16):
        raise CgdmlError(f"n_table must be None or an integer >= 16 (spline points), got {n_table!r}")
    openmm = _openmm()
    model._check_consistent()
    topology = _topology(model.system, openmm.app)
    system = openmm.System()
    for mass in model.masses:
        system.addParticle(float(mass))
    forces = [(name, f, PRIOR_GROUP) for name, f in _prior_forces(model.prior, openmm, n_table)]
    gdml = openmm.PythonForce(GDMLComputation(model.gdml))
    forces.append(("cgdml GDML", gdml, GDML_GROUP))
    if model.offsets is not None:
        forces += [(name, f, OFFSETS_GROUP) for name, f in _offset_forces(model.offsets, openmm, n_table)]
    for name, force, group in forces:
        force.setName(name)
        force.setForceGroup(group)
        system.addForce(force)
    return system, topology


class GuardStop(CgdmlError):
    """Raised out of ``simulation.step`` by an :class:`UncertaintyReporter` with action "stop"."""


GUARD_ACTIONS = ("warn", "stop")


class UncertaintyReporter:
    """The ``cgdml.simulate`` guard for an OpenMM Simulation of an exported model (an OpenMM reporter: add it to
    ``simulation.reporters``).

    Every ``every`` steps (default ``cgdml.simulate.DEFAULTS["guard_every"]``) it evaluates
    ``model.force_uncertainty`` (kJ/mol/nm) at the simulation's positions; a value above ``threshold`` (default
    ``model.uncertainty_threshold``) or NaN means the simulation has left the training data. ``action`` "warn"
    (default) records the event and warns once, and the run goes on unchanged; "stop" records it and raises
    :class:`GuardStop` from ``simulation.step`` (the positions stay those of the step checked). ``events``: dicts
    with step, time_ps, value, reason "force uncertainty" and stopped, as in the trajectory JSON of
    ``cgdml.simulate``; ``values``: (step, value) of every check. OpenMM asks a reporter nothing at step 0: call
    :meth:`check` for the start configuration. A model without a posterior (or threshold, unless one is given) is
    a one-line :class:`CgdmlError`.
    """

    reason = "force uncertainty"

    def __init__(self, model, every=None, threshold=None, action="warn"):
        from .simulate import DEFAULTS

        if model.uncertainty is None:
            raise CgdmlError("this model has no force uncertainty (fitted by an older cgdml, or with "
                             "--no-uncertainty): nothing to guard with; refit to get one")
        threshold = model.uncertainty_threshold if threshold is None else threshold
        if threshold is None or not (np.isfinite(threshold) and threshold > 0):
            raise CgdmlError(f"the guard needs a positive threshold (kJ/mol/nm): the model stores none, give one "
                             f"(got {threshold!r})")
        every = DEFAULTS["guard_every"] if every is None else every
        if not (isinstance(every, (int, np.integer)) and every >= 1):
            raise CgdmlError(f"every must be an integer >= 1, got {every!r}")
        if action not in GUARD_ACTIONS:
            raise CgdmlError(f"action must be one of {', '.join(GUARD_ACTIONS)}, got {action!r}")
        self.model, self.every, self.threshold, self.action = model, int(every), float(threshold), action
        self.events, self.values = [], []

    def describeNextReport(self, simulation):  # noqa: N802 (OpenMM's name)
        """Steps to the next multiple of ``every``; positions only."""
        return {"steps": self.every - simulation.currentStep % self.every, "periodic": None,
                "include": ["positions"]}

    def report(self, simulation, state):
        """Check the positions of ``state`` (called by OpenMM)."""
        import openmm.unit as unit

        R = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        self._check(R, simulation.currentStep, state.getTime().value_in_unit(unit.picosecond))

    def check(self, simulation):
        """Check the simulation's current positions now (e.g. the start configuration, before any step)."""
        self.report(simulation, simulation.context.getState(getPositions=True))

    def _check(self, R, step, time_ps):
        value = float(self.model.force_uncertainty(R[None])[0])
        self.values.append((int(step), value))
        if value <= self.threshold:
            return
        stop = self.action == "stop"
        event = {"step": int(step), "time_ps": float(time_ps), "value": value, "reason": self.reason,
                 "stopped": stop}
        if stop:
            self.events.append(event)
            raise GuardStop(f"{self.reason} {value:.4g} kJ/mol/nm above the threshold {self.threshold:.4g} at step "
                            f"{step} ({time_ps:g} ps): the simulation left the training data, stopped")
        if not self.events:
            self.events.append(event)
            warnings.warn(f"{self.reason} {value:.4g} kJ/mol/nm crossed the threshold {self.threshold:.4g} at step "
                          f"{step} ({time_ps:g} ps): the simulation has left the training data and runs on")


README_TITLE = "OpenMM files of a cgdml coarse-grained model"   # the first line of README.txt: export's mark
_README = README_TITLE + """ ({n_beads} beads at {temperature:g} K)

topology.pdb  the CG topology (one atom per bead) with a start configuration (a training frame)
system.xml    the openmm.System (XmlSerializer): bead masses, no constraints, no periodic box;
              force group 0 the prior (bonds, angles, repulsion, dihedral profiles),
              force group 1 the GDML term (an openmm.PythonForce),
              force group 2 the dihedral offsets (CustomTorsionForce; none if the model has none)
{gdml_note}
Rebuild the full System from the model file (needs cgdml):

    from cgdml.model import CGModel
    from cgdml.openmm import to_openmm
    system, top = to_openmm(CGModel.load("MODEL.npz"))

Simulate, e.g. with the model's temperature and 2 fs steps:

    import openmm, openmm.app as app, openmm.unit as u
    pdb = app.PDBFile("topology.pdb")
    integrator = openmm.LangevinMiddleIntegrator({temperature:g} * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
    simulation = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(pdb.positions)
    simulation.step(1000)

The System runs unguarded. The force-uncertainty guard of python -m cgdml.simulate is a reporter here (needs
cgdml and the model file; "warn" warns once and records events, "stop" raises cgdml.openmm.GuardStop):

    from cgdml.openmm import UncertaintyReporter
    guard = UncertaintyReporter(CGModel.load("MODEL.npz"), every=1000, action="warn")
    simulation.reporters.append(guard)
    guard.check(simulation)            # the start configuration
    simulation.step(100000)
    print(guard.events)
"""

_NOTE_FULL = """\
system.xml is complete. Its GDML force is stored as a pickle of cgdml.openmm.GDMLComputation (the model's
arrays): reading it with XmlSerializer.deserialize(open("system.xml").read()) needs cgdml importable, and
unpickles the file, so load only files you trust.
"""

_NOTE_PARTIAL = """\
system.xml does NOT contain the GDML force, which could not be serialised:
    {reason}
It holds the prior and the offsets only; rebuild the full System as below.
"""


def _write_files(openmm, model, system, topology, paths):
    """Write the three files of :func:`write_openmm` to ``paths``, each atomically."""
    try:
        xml = openmm.XmlSerializer.serialize(system)
        note = _NOTE_FULL
    except openmm.OpenMMException as exc:  # the PythonForce's computation could not be pickled
        for index in reversed(range(system.getNumForces())):
            if isinstance(system.getForce(index), openmm.PythonForce):
                system.removeForce(index)
        xml = openmm.XmlSerializer.serialize(system)
        note = _NOTE_PARTIAL.format(reason=" ".join(f"{type(exc).__name__}: {exc}".split())[:200])
    positions = np.asarray(model.train_coords_sample[0], dtype=np.float64)
    with atomic_path(paths[0]) as tmp:
        with open(tmp, "w") as fh:
            openmm.app.PDBFile.writeFile(topology, [openmm.Vec3(*x) for x in positions] * openmm.unit.nanometer, fh)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(xml)
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(_README.format(n_beads=model.n_beads, temperature=model.temperature, gdml_note=note))


def write_openmm(model, directory):
    """Write ``topology.pdb``, ``system.xml`` and ``README.txt`` of ``model`` into ``directory`` (created if its
    parent exists). Returns the list of paths written. Each file is written atomically."""
    openmm = _openmm()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CgdmlError(f"{directory}: exists and is not a directory")
    if not directory.parent.is_dir():
        raise CgdmlError(f"{directory}: parent directory {directory.parent} does not exist")
    system, topology = to_openmm(model)
    if len(model.train_coords_sample) == 0:
        raise CgdmlError("the model has no start configuration (empty training sample)")
    created = not directory.exists()
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise CgdmlError(f"{directory}: cannot create directory ({exc.strerror or exc})") from None
    paths = [directory / "topology.pdb", directory / "system.xml", directory / "README.txt"]
    try:
        _write_files(openmm, model, system, topology, paths)
    except BaseException:
        if created:  # a failed export (a full disk) leaves no directory that a rerun would take for a stranger's
            for path in paths:
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return paths
