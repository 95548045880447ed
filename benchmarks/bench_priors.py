"""Harmonic against tabulated bond and angle terms of the prior (issue 29 item 1), on a C-alpha map.

ACE-AAA-NME with the 5-bead map of the issue (ACE CH3, the three CA, NME C), mapped with cgdml.mapping (aggregate
force map). The prior (no repulsion, no dihedral profiles: the bonded terms alone) is fitted on the first half of
the frames with ``bonded="harmonic"`` and ``bonded="auto"`` (tabulated where :func:`cgdml.prior.needs_table` says
so) and ``"tabulated"``, and each bond and angle distribution is compared with the second half's:

- ``boltzmann``: the term's own Boltzmann distribution J(x) exp(-U(x)/kT) (J = r^2 for bonds, sin(theta) for
  angles), the distribution the term alone holds;
- ``simulated``: a short Langevin run of the prior alone (all its terms together; the C-alpha chain has no
  other force), replicas started from data frames.

The score is the Jensen-Shannon divergence (natural log) between histograms on 60 bins over the data's range;
the floor is the JS divergence between the two halves of the data. Prints a markdown table and writes it to
benchmarks/results/bench_priors.md. Run: ``nice -n 10 python benchmarks/bench_priors.py [--data DIR]`` (a few
minutes on a shared 2-core machine).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CA_MAP = """\
description = "ACE-AAA-NME, C-alpha map: ACE CH3, CA x 3, NME C"
[[bead]]
name = "CA"
select = "resname ACE and name CH3"
[[bead]]
name = "CA"
select = "resid 1 and name CA"
[[bead]]
name = "CA"
select = "resid 2 and name CA"
[[bead]]
name = "CA"
select = "resid 3 and name CA"
[[bead]]
name = "CA"
select = "resname NME and name C"
"""
BINS = 60


def js_divergence(a, b, edges):
    """Jensen-Shannon divergence (nats) between the histograms of samples a and b on ``edges``."""
    p = np.histogram(a, edges)[0].astype(float)
    q = np.histogram(b, edges)[0].astype(float)
    return js_of(p, q)


def js_of(p, q):
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    kl = lambda x: np.sum(x[x > 0] * np.log(x[x > 0] / m[x > 0]))  # noqa: E731
    return float(0.5 * kl(p) + 0.5 * kl(q))


def boltzmann_hist(prior, kind, term, edges, kT):
    """The histogram (probabilities per bin) of the term's own Boltzmann distribution J(x) exp(-U/kT)."""
    fine = np.linspace(edges[0], edges[-1], 40 * (len(edges) - 1) + 1)
    mid = 0.5 * (fine[1:] + fine[:-1])
    jac = mid ** 2 if kind == "bond" else np.sin(mid)
    U = prior.bonded_profile(kind, term, mid)
    w = jac * np.exp(-(U - U.min()) / kT)
    return w.reshape(len(edges) - 1, 40).sum(1)


def load(data_dir, work):
    from cgdml.mapping import map_allatom

    pdb = sorted(Path(data_dir).glob("ace-aaa-nme*.pdb"))[0]
    npz = pdb.with_suffix(".npz")
    (work / "ca.toml").write_text(CA_MAP)
    return map_allatom(pdb, npz, npz, map=str(work / "ca.toml"), force_map="aggregate"), str(npz)


def main(argv=None):
    from cgdml.geometry import bond_angles, bond_lengths
    from cgdml.prior import CGPrior
    from cgdml.simulate import simulate
    from cgdml.units import kT as thermal_energy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "/work/refs/aaa_s11" if Path("/work/refs/aaa_s11").exists() else str(ROOT / "data")
    ap.add_argument("--data", default=default, help="folder with ace-aaa-nme*.pdb and .npz (default: %(default)s)")
    ap.add_argument("--workdir", default="/tmp/bench_priors")
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20000, help="Langevin steps of 2 fs per replica (0: no simulation)")
    ap.add_argument("--out", default=str(RESULTS / "bench_priors.md"))
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds, source = load(args.data, work)
    R = ds.coords.astype(np.float64)
    T = ds.temperature
    kT = thermal_energy(T)
    half = len(R) // 2
    first, second = R[:half], R[half:]
    priors = {mode: CGPrior(repulsion=False, dihedrals=False, bonded=mode).fit(first, T, ds.system.topology)
              for mode in ("harmonic", "auto", "tabulated")}
    ref = priors["harmonic"]
    terms = [("bond", t, tuple(b)) for t, b in enumerate(ref.bond_pairs_)] + \
            [("angle", t, tuple(a)) for t, a in enumerate(ref.angle_triples_)]
    measure = lambda X, kind, idx: (bond_lengths(X, np.array([idx])) if kind == "bond"  # noqa: E731
                                    else bond_angles(X, np.array([idx])))[:, 0]
    rng = np.random.default_rng(0)
    sims, sim_wall = {}, {}
    for mode, prior in priors.items() if args.steps else ():
        x0 = first[rng.choice(half, args.replicas, replace=False)]
        t = time.perf_counter()
        res = simulate(prior.forces, x0, masses=ds.system.masses, temperature=T, dt=0.002, n_steps=args.steps,
                       save_every=100, integrator="langevin", seed=1, progress=False)
        sim_wall[mode] = time.perf_counter() - t
        sims[mode] = res.frames[len(res.frames) // 5:].reshape(-1, R.shape[1], 3).astype(np.float64)
    rows = []
    for kind, t, idx in terms:
        a, b = measure(first, kind, idx), measure(second, kind, idx)
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        edges = np.linspace(lo, hi, BINS + 1)
        data_hist = np.histogram(b, edges)[0].astype(float)
        row = dict(term=f"{kind} {'-'.join(map(str, idx))}", floor=js_divergence(a, b, edges),
                   auto="tabulated" if getattr(priors["auto"], f"{kind}_tabulated_")[t] else "harmonic")
        for mode, prior in priors.items():
            row[f"boltz_{mode}"] = js_of(boltzmann_hist(prior, kind, t, edges, kT), data_hist)
            if args.steps:
                row[f"sim_{mode}"] = js_divergence(measure(sims[mode], kind, idx), b, edges)
        rows.append(row)
    wall = time.perf_counter() - t0
    lines = [
        "# bench_priors: harmonic vs tabulated bond and angle terms (C-alpha ACE-AAA-NME)",
        "",
        f"Data: `{source}` ({len(R)} frames, {R.shape[1]} beads: ACE CH3, CA x 3, NME C; aggregate force map). "
        f"Prior (bonds and angles only, no repulsion or dihedral profiles) fitted on the first {half} frames, "
        f"scored against the second {len(R) - half}. JS divergence in nats on {BINS} bins over the data's range; "
        "floor = JS between the two halves. `boltzmann`: the term's own distribution J(x) exp(-U(x)/kT) "
        "(J = r^2, sin theta). " + (f"`simulated`: Langevin (2 fs, 1/ps) of the prior alone, {args.replicas} "
                                    f"replicas x {args.steps} steps from data frames, first 20% dropped. "
                                    if args.steps else "")
        + "`auto`: what bonded='auto' chose for the term (cgdml.prior.needs_table).",
        "",
    ]
    ways = ("boltz", "sim") if args.steps else ("boltz",)
    modes = ("harmonic", "auto", "tabulated")
    names = {"boltz": "boltzmann", "sim": "simulated"}
    lines += ["| term | auto | floor | " + " | ".join(f"{names[w]} {m}" for w in ways for m in modes) + " |",
              "|---|---|---|" + "---|" * (3 * len(ways))]
    for r in rows:
        lines.append(f"| {r['term']} | {r['auto']} | {r['floor']:.4f} | " + " | ".join(
            f"{r[f'{w}_{m}']:.4f}" for w in ways for m in modes) + " |")
    mean = lambda key: np.mean([r[key] for r in rows])  # noqa: E731
    lines.append("| **mean** | | {:.4f} | ".format(mean("floor")) + " | ".join(
        f"**{mean(f'{w}_{m}'):.4f}**" for w in ways for m in modes) + " |")
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sims_text = ("simulations: " + ", ".join(f"{m} {s:.0f} s" for m, s in sim_wall.items())) if args.steps \
        else "no simulation (--steps 0)"
    lines += ["", f"Wall {wall:.0f} s in all ({sims_text}); load average {load_avg:.1f} at the end; "
              f"{platform.node()}, {os.cpu_count()} CPUs; one run per number.", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)


if __name__ == "__main__":
    main()
