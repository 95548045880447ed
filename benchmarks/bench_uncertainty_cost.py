"""Cost of the force uncertainty (cgdml.uncertainty.ForcePosterior.force_variance) for 100 replicas, against one
GDMLModel.predict_forces call on the same 100 configurations, for a 5-bead and a 14-bead model.

The force model has the default inducing-point count of cgdml.nystrom (1000 centres for 5 beads, 333 for 14);
the posterior has m r <= 4000 inducing observations (444 and 111 configurations) and a factor of rank k. Costs
depend only on these shapes, so the arrays are synthetic (chain configurations, random coefficients): a few
seconds per row. Run: ``python benchmarks/bench_uncertainty_cost.py [--ranks 100 300 500 1000] [--threads N]``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_wall_and_cpu  # noqa: E402

from cgdml.features import chain_quads, descriptor
from cgdml.gdml import reduce_frames
from cgdml.model import GDMLModel
from cgdml.uncertainty import ForcePosterior


def chains(n, n_beads, rng):
    """n random chain configurations (nm): bonds 0.38, angles about 110 degrees, random dihedrals."""
    R = np.zeros((n, n_beads, 3))
    for i in range(n):
        x = [np.zeros(3), np.array([0.38, 0, 0])]
        while len(x) < n_beads:
            while True:
                u = rng.standard_normal(3)
                u /= np.linalg.norm(u)
                b = x[-1] - x[-2]
                if -0.6 < u @ b / np.linalg.norm(b) < 0.5:
                    break
            x.append(x[-1] + 0.38 * u)
        R[i] = np.array(x) + 0.01 * rng.standard_normal((n_beads, 3))
    return R



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[100, 300, 500, 1000])
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--max-reduced", type=int, default=4000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"# force uncertainty vs one force call, {args.replicas} replicas "
          f"(load {' / '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs)\n")
    print("| beads | force model centres | posterior m (m r) | rank k | force call ms (CPU ms) | uncertainty ms "
          "(CPU ms) | ratio wall (CPU) | per-bead ms |")
    print("|---|---|---|---|---|---|---|---|")
    for n_beads, centres in ((5, 1000), (14, 333)):
        quads = chain_quads(n_beads)
        R = chains(centres + args.replicas, n_beads, rng)
        D = descriptor(R[:centres], quads)
        model = GDMLModel(D, 1e-3 * rng.standard_normal(D.shape), 2.0, quads, 1.0, 0.0, n_beads)
        Rq = R[centres:]
        force_wall, force_cpu = best_wall_and_cpu(lambda: model.predict_forces(Rq))
        r = 3 * n_beads - 6
        m = args.max_reduced // r
        Du, Wu, _, _ = reduce_frames(R[:m], np.zeros_like(R[:m]), quads)
        for k in args.ranks:
            k = min(k, m * r)
            post = ForcePosterior(Du, Wu, 2.0, quads, 1.0, n_beads, 1.0, 1.0,
                                  1e-2 * rng.standard_normal((m * r, k)), np.zeros((1, m, Du.shape[1])))
            unc_wall, unc_cpu = best_wall_and_cpu(lambda: post.force_variance(Rq))
            bead_wall, _ = best_wall_and_cpu(lambda: post.force_variance(Rq, per_bead=True))
            print(f"| {n_beads} | {centres} | {m} ({m * r}) | {k} | {1e3 * force_wall:.2f} ({1e3 * force_cpu:.2f}) | "
                  f"{1e3 * unc_wall:.1f} ({1e3 * unc_cpu:.1f}) | {unc_wall / force_wall:.0f}x "
                  f"({unc_cpu / force_cpu:.0f}x) | {1e3 * bead_wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
