"""Helpers shared by the benchmark scripts: timing, load averages, the results-file report, the data loaders,
the single-GDML validation search and the sgdml reference (benchmark code, not library code)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("CGDML_SHARED", "/work/shared"))
CGNET = SHARED / "data" / "cgnet-ala2"  # ala2_coordinates.npy (Angstrom), ala2_forces.npy (kcal/mol/Angstrom)
CGNET_BEADS = ["C", "N", "CA", "C", "N"]


# ------------------------------------------------------------------------------------------------ timing, load
def best_time(fn, repeat=3, min_time=0.5):
    """Best wall time of ``fn()`` per call over ``repeat`` rounds of at least ``min_time`` s each."""
    best = np.inf
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / n)
    return best


def best_wall_and_cpu(fn, repeat=3, min_time=0.3):
    """Best (wall, process CPU) seconds per call of ``fn()`` over ``repeat`` rounds of at least ``min_time`` s
    each (CPU time counts all threads and is less sensitive to machine load)."""
    best = (np.inf, np.inf)
    for _ in range(repeat):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 >= min_time:
                break
        best = (min(best[0], (time.perf_counter() - t0) / n), min(best[1], (time.process_time() - c0) / n))
    return best


def load_str():
    """The 1/5/15-minute load averages as "a / b / c"."""
    la = os.getloadavg()
    return f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f}"


def elapsed_log(t0=None):
    """A ``log(msg)`` that prints msg after the seconds since ``t0`` (default: now), flushed."""
    t0 = time.perf_counter() if t0 is None else t0

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    return log


# ------------------------------------------------------------------------------------------------ results files
def write_text_atomic(path, text):
    """Write ``text`` to ``path`` atomically, creating its folder if needed."""
    from cgdml._io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


class Report:
    """``say(line="")`` prints a line (flushed) and keeps it; ``write(path)`` saves the kept lines atomically."""

    def __init__(self):
        self.lines = []

    def __call__(self, s=""):
        print(s, flush=True)
        self.lines.append(s)

    @property
    def text(self):
        return "\n".join(self.lines) + "\n"

    def write(self, path):
        write_text_atomic(path, self.text)


# ------------------------------------------------------------------------------------------------ data
def cgnet_topology():
    """The cgnet data's mdtraj Topology: beads C, N, CA, C, N in residues ACE, ALA (N, CA, C), NME, bonded in
    bead order (built with mdtraj directly, so it does not depend on cgdml's topology helpers)."""
    import mdtraj as md

    top = md.Topology()
    chain = top.add_chain()
    residues = [top.add_residue(name, chain) for name in ("ACE", "ALA", "NME")]
    atoms = [top.add_atom(name, md.element.Element.getBySymbol(name[0]), residues[res])
             for name, res in zip(CGNET_BEADS, (0, 1, 1, 1, 2))]
    for a, b in zip(atoms[:-1], atoms[1:]):
        top.add_bond(a, b)
    return top


def load_cgnet():
    """The cgnet alanine dipeptide (5 beads, 300 K) as a CGDataset in nm and kJ/mol/nm."""
    from cgdml.data import CGDataset

    return CGDataset.from_arrays(np.load(CGNET / "ala2_coordinates.npy"), np.load(CGNET / "ala2_forces.npy"),
                                 length_unit="angstrom", energy_unit="kcal/mol", temperature=300.0,
                                 bead_names=CGNET_BEADS, topology=cgnet_topology())


def load_shipped():
    """The shipped implicit-solvent alanine dipeptide, 5 beads, optimal force map."""
    from cgdml.mapping import load_default_cg_dataset

    return load_default_cg_dataset("ala2-5", "optimal")


# ------------------------------------------------------------------------------------------------ fits
def mse(pred, target):
    return float(np.mean((pred - target) ** 2))


def two_layer_defaults():
    """The parameters of a two-layer fit (cgdml.pipeline.CGEstimator's and TwoLayerGDML's) and their defaults,
    read at run time."""
    from cgdml.pipeline import method_parameters

    return {name: default for name, (default, _) in method_parameters("two-layer").items()}


def fit_single_cv(train, n_frames, sigmas, lams, seed=0, stratified=True, **kw):
    """The single-GDML fit (``method="single"``) of ``train`` on n_frames frames with (sigma, lam) chosen on a
    validation split of ``train``.

    The split holds out 25% of the frames (at most 2000); every candidate of sigmas x lams is fitted on the rest
    and scored by the MSE against the held-out instantaneous forces; the winner is refitted on all of ``train``.
    ``stratified``: draw the frames over the strata (else uniformly); ``kw`` goes to every fit. Returns
    (CGModel, the final GDML estimator, dict(sigma, lam, n_cv, n_val)).
    """
    from cgdml.pipeline import cg_estimator

    def fit(data, n, s, lam):
        return cg_estimator("single", n_frames=n, sigma=s, lam=lam, seed=seed, balance_basins=False, progress=False,
                            subset="stratified" if stratified else "random", **kw).fit(data)

    rng = np.random.default_rng([seed, 11])
    perm = rng.permutation(train.n_frames)
    n_val = min(2000, train.n_frames // 4)
    val, fit_part = perm[:n_val], train.subset(np.sort(perm[n_val:]))
    n_cv = min(n_frames, fit_part.n_frames)
    scores = {}
    for s in sigmas:
        for lam in lams:
            m = fit(fit_part, n_cv, s, lam).model_
            scores[(s, lam)] = mse(m.forces(train.coords[val]), train.forces[val])
    s, lam = min(scores, key=scores.get)
    est = fit(train, n_frames, s, lam)
    return est.model_, est.learner_, dict(sigma=s, lam=lam, n_cv=n_cv, n_val=n_val)


# ------------------------------------------------------------------------------------------------ sgdml
def sgdml_train(R, F, sigma, lam, z, name, theory):
    """Train sgdml (GDML: use_sym=False, no energies: use_E=False, analytic solver) on R, F with atomic numbers
    ``z``; returns (model dict, train seconds)."""
    from sgdml.train import GDMLTrain

    ds = {"R": R, "F": F, "z": np.asarray(z), "name": np.array(name), "theory": np.array(theory)}
    trainer = GDMLTrain(max_processes=os.cpu_count())
    task = trainer.create_task(ds, len(R), ds, 0, sig=sigma, lam=lam, use_sym=False, use_E=False)
    t0 = time.perf_counter()
    model = trainer.train(task)
    return model, time.perf_counter() - t0


def sgdml_predictor(model, n_proc=None):
    """sgdml's GDMLPredict for ``model``, silent; ``n_proc`` processes (default: sgdml's own choice)."""
    from sgdml.predict import GDMLPredict

    kw = {} if n_proc is None else dict(max_processes=n_proc)
    return GDMLPredict(model, log_level=logging.CRITICAL, **kw)
