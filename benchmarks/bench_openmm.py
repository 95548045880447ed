"""Benchmark the OpenMM route (cgdml.openmm.to_openmm) against cgdml.simulate on a toy model.

The toy (as in tests/test_openmm.py): a six-bead chain sampled by BAOAB on an analytic force field (harmonic bonds
and angles, a cosine per dihedral), fitted as a harmonic prior plus GDML on ``--n-train`` frames, plus one dihedral
offset term. Timed, each the best of three rounds, all in this process on one thread (numba, BLAS, OpenMM):

- ``cgdml.simulate`` (BAOAB, 2 fs, friction 1/ps) with 1 and with 100 replicas;
- a single-replica OpenMM ``LangevinMiddleIntegrator`` (2 fs, 1/ps) of the exported System on the CPU platform
  (Threads=1) and on the Reference platform, and, for the CPU platform's own per-step cost, the same System
  without the GDML ``PythonForce``;
- one ``GDMLModel.predict`` call on one configuration (what the PythonForce does per step).

Prints a markdown table of replica-steps/s with ratios to the OpenMM CPU run (wall-clock ratios within one run,
so they survive a busy machine better than the absolute numbers).

Run: ``python benchmarks/bench_openmm.py [--n-train 300] [--steps 2000]`` (about 10 s; longer with more training
frames).
"""
from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

T, N_BEADS, DT, FRICTION = 300.0, 6, 0.002, 1.0  # K, beads, ps, 1/ps


def toy_model(n_train, seed=0):
    """The toy CGModel (see the module docstring) fitted on ``n_train`` of 3000 equilibrium frames."""
    from cgdml.basins import DihedralOffsets
    from cgdml.data import CGDataset
    from cgdml.gdml import GDML
    from cgdml.geometry import dihedrals
    from cgdml.model import CGModel
    from cgdml.prior import HarmonicPrior
    from cgdml.simulate import simulate

    n = N_BEADS
    harmonic = HarmonicPrior.from_arrays(dict(
        repulsion=False, temperature_=T, repulsion_eps_=0.0, max_bond_length_=1.0,
        bond_pairs_=np.array([(i, i + 1) for i in range(n - 1)]), bond_r0_=np.full(n - 1, 0.38),
        bond_k_=np.full(n - 1, 3000.0), angle_triples_=np.array([(i, i + 1, i + 2) for i in range(n - 2)]),
        angle_theta0_=np.full(n - 2, 1.9), angle_k_=np.full(n - 2, 60.0),
        repulsion_pairs_=np.zeros((0, 2), dtype=np.int64), repulsion_rmin_=np.zeros(0)))
    quads = np.array([(i, i + 1, i + 2, i + 3) for i in range(n - 3)])
    k_phi, phi0 = np.array([3.0, 2.0, 3.0]), np.array([1.0, -2.0, 0.5])

    def truth(R):
        F = harmonic.forces(R)
        angle, grad = dihedrals(R, quads)
        dU = -k_phi * np.sin(angle - phi0)
        for t, q in enumerate(quads):
            F[:, q] -= dU[:, t, None, None] * grad[:, t]
        return F

    x = np.zeros((n, 3))
    for i in range(1, n):
        step = np.array([np.sin(0.95), (-1) ** i * np.cos(0.95), 0.1 * i])
        x[i] = x[i - 1] + 0.38 * step / np.linalg.norm(step)
    res = simulate(truth, np.repeat(x[None], 20, axis=0), masses=np.full(n, 12.011), temperature=T, dt=0.004,
                   n_steps=10000, save_every=50, integrator="langevin", seed=1, progress=False)
    R = res.frames[50:].reshape(-1, n, 3).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the toy's topology is a chain in bead order
        ds = CGDataset.from_arrays(R, truth(R), bead_names=[f"C{i + 1}" for i in range(n)], temperature=T)
    prior = HarmonicPrior(repulsion=True).fit(ds.coords, T)
    pick = np.random.default_rng(seed).choice(ds.n_frames, size=min(n_train, ds.n_frames), replace=False)
    gdml = GDML(sigma=4.0, lam=1e-3, relative_lam=True).fit(
        ds.coords[pick], prior.residual_forces(ds.coords[pick], ds.forces[pick])).model_
    offsets = DihedralOffsets.from_terms([((1, 2, 3, 4), [(-2.5, 2.0), (0.5, 2.0)], [0.0, 2.5])])
    return CGModel(gdml, prior, ds.system, ds.coords[::100], offsets=offsets)


def best(fn, repeat=3):
    """Best wall time (s) of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def openmm_rate(system, x0, platform_name, n_steps, properties=None):
    """Steps/s of a LangevinMiddleIntegrator run of ``system`` from x0 (n_beads, 3) nm (best of three)."""
    import openmm
    import openmm.unit as unit

    integrator = openmm.LangevinMiddleIntegrator(T * unit.kelvin, FRICTION / unit.picosecond, DT * unit.picoseconds)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform_name), properties or {})
    context.setPositions(x0)
    context.setVelocitiesToTemperature(T * unit.kelvin, 1)
    integrator.step(200)  # warm-up
    return n_steps / best(lambda: integrator.step(n_steps))


def simulate_rate(model, n_replicas, n_steps):
    """Replica-steps/s of cgdml.simulate (BAOAB) with ``n_replicas`` replicas of ``model`` (best of three)."""
    from cgdml.simulate import simulate

    x0 = model.train_coords_sample[np.arange(n_replicas) % len(model.train_coords_sample)]

    def run():
        simulate(model.forces, x0, masses=model.masses, temperature=T, dt=DT, n_steps=n_steps, save_every=100,
                 integrator="langevin", friction=FRICTION, seed=1, progress=False)

    run()  # compile and warm up
    return n_replicas * n_steps / best(run)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=300, help="GDML training frames (default 300)")
    p.add_argument("--steps", type=int, default=2000, help="steps per timed single-replica round (default 2000)")
    a = p.parse_args(argv)
    import openmm

    from cgdml.openmm import to_openmm

    model = toy_model(a.n_train)
    system, _ = to_openmm(model)
    native = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    for index in reversed(range(native.getNumForces())):
        if isinstance(native.getForce(index), openmm.PythonForce):
            native.removeForce(index)
    x0 = model.train_coords_sample[0]
    cpu = {"Threads": "1"}
    rows = [
        ("cgdml.simulate, 1 replica", simulate_rate(model, 1, a.steps)),
        ("cgdml.simulate, 100 replicas", simulate_rate(model, 100, max(a.steps // 10, 50))),
        ("OpenMM CPU (1 thread), 1 replica", openmm_rate(system, x0, "CPU", a.steps, cpu)),
        ("OpenMM Reference, 1 replica", openmm_rate(system, x0, "Reference", a.steps)),
        ("OpenMM CPU (1 thread), 1 replica, without the GDML force", openmm_rate(native, x0, "CPU", a.steps, cpu)),
    ]
    R = model.train_coords_sample[:1].copy()
    predict_s = best(lambda: [model.gdml.predict(R) for _ in range(1000)]) / 1000
    reference = rows[2][1]
    print(f"Toy model: {N_BEADS} beads, GDML on {model.gdml.n_train} frames, one dihedral offset; OpenMM "
          f"{openmm.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread.\n")
    print("| run | replica-steps/s | us per replica-step | relative to OpenMM CPU |")
    print("|---|---:|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:,.1f} | {rate / reference:.2f} |")
    print(f"\nOne GDMLModel.predict call on one configuration: {predict_s * 1e6:.0f} us.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
