"""``python -m cgdml.fes TRAJ.h5 --reference DATA.npz -o FES.png --json METRICS.json``: free-energy landscapes
and their comparison with a reference.

Landscapes: by default the (phi, psi) of every residue of the CG topology (one row each); a molecule without
backbone gets its one or two proper dihedrals, else a 2D TICA projection. ``--cv phi:2,psi:2`` (repeatable,
one landscape each) chooses the CVs: phi/psi of a residue number, dihedral:I,J,K,L, angle:I,J,K,
distance:I,J (bead indices).

The work is :func:`cgdml.fes.compare_landscapes`, whose report is the JSON: ``panels`` (one entry per landscape:
label, cvs, range, periodic, metrics, noise_floor, bootstrap, model_outside_range; residue and phi_positive for
a residue's (phi, psi)) and ``mean`` (over the panels); with a single landscape also the top-level ``metrics``,
``noise_floor``, ``bootstrap`` (and ``phi_positive``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .._cli import (ArgumentParser, add_verbosity_arguments, claim_outputs, configure_logging, int_between,
                    positive_int, run_cli, with_provenance)
from .._io import CgdmlError, check_output, save_json
from .compare import SELF_DESCRIBING, compare_landscapes

COMMAND = "cgdml.fes"


# a 1000-bin axis resolves 0.36 deg of a dihedral, finer than any trajectory fills; a 95% bootstrap interval
# settles long before 100000 resamples
_bins = int_between(2, 1000, "finer bins than a trajectory can fill")


def _n_boot(text):
    """--n-boot: 0 (no bootstrap) or an integer from 2 to 100000."""
    value = int_between(0, 100000, "a 95% interval settles long before that")(text)
    if value == 1:
        raise argparse.ArgumentTypeError("must be 0 or >= 2, got 1")
    return value


def _metric_line(head, m, bootstrap=None):
    """``head`` FES RMSE ... kT, JS ... nats, with the bootstrap interval when given."""
    line = f"{head}FES RMSE {m['fes_rmse']:.3f} kT, JS {m['js']:.4f} nats"
    if bootstrap:
        b = bootstrap
        line += f" (bootstrap 95%: RMSE {b['fes_rmse']['lo']:.3f}-{b['fes_rmse']['hi']:.3f}, " \
                f"JS {b['js']['lo']:.4f}-{b['js']['hi']:.4f})"
    return line


def _print_entry(prefix, e):
    m, fl = e["metrics"], e["noise_floor"]
    print(_metric_line(prefix, m, e.get("bootstrap")))
    print(f"{prefix}noise floor (reference split half): FES RMSE {fl['fes_rmse']:.3f} kT, JS {fl['js']:.4f} nats")
    print(f"{prefix}{m['bins_missed_by_model']} of {m['bins_ref_visited']} reference bins never visited by the "
          f"model ({m['n_model']} model frames, {m['n_ref']} reference frames in range)")
    if "phi_positive" in e:
        pp = e["phi_positive"]
        print(f"{prefix}phi > 0 population: model {pp['model']:.1%}, reference {pp['reference']:.1%}")


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.fes", description=(
        "Free-energy landscapes of CG trajectories (by default the (phi, psi) of every residue), optionally "
        "compared with a reference CG dataset: FES RMSE (kT) and Jensen-Shannon divergence per landscape and "
        "their mean, with split-half noise floor and block bootstrap."))
    p.add_argument("traj", nargs="+", help="trajectory file(s) readable by mdtraj (.h5 carries its topology)")
    p.add_argument("--reference", help="reference CG dataset (.npz) to compare with")
    p.add_argument("--cv", action="append", default=None, metavar="KIND:I[,J..],...",
                   help="one landscape of one or two CVs, e.g. phi:2,psi:2 (residue number as in the backbone "
                        "label ALA2), dihedral:0,1,2,3, angle:0,1,2, distance:0,13 (bead indices); repeat for "
                        "more landscapes. Default: (phi, psi) of every residue; without backbone the graph's "
                        "one or two dihedrals, else a 2D TICA projection")
    p.add_argument("--lagtime", type=positive_int, default=None,
                   help="TICA lag time in frames (default: a few frames); only for a TICA landscape (a molecule "
                        "without backbone and with more than two dihedrals), refused otherwise")
    p.add_argument("--top", help="topology file (e.g. .pdb) for trajectory formats without one")
    p.add_argument("--bins", type=_bins, default=36, help="bins per dimension (default 36; dihedrals on "
                   "[-180, 180) deg, other CVs on the reference's range padded by 5%%)")
    p.add_argument("--n-boot", type=_n_boot, default=200, help="bootstrap resamples (default 200; 0 = none)")
    p.add_argument("--block", type=positive_int, default=None, help="bootstrap block length in frames (default: "
                   "frames/50; use at least a few correlation times, e.g. one replica's frames)")
    p.add_argument("-o", "--output", required=True, help="plot file (.png, .pdf, .svg)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    out = Path(a.output)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CgdmlError(f"{out}: plot must end in .png, .pdf or .svg")
    for path in [out] + ([Path(a.json)] if a.json else []):
        check_output(path)
    if a.json and Path(a.json).resolve() == out.resolve():
        raise CgdmlError(f"{a.json}: --json and -o name the same file")
    with claim_outputs(COMMAND, [out, a.json], sidecars={out: out, **({a.json: a.json} if a.json else {})},
                       inputs=[a.traj, a.reference, a.top]):
        return _fes(a, out)


def _fes(a, out):
    if a.top is not None and not Path(a.top).exists():
        raise CgdmlError(f"{a.top}: no such topology file")
    for p in a.traj:
        if Path(p).exists() and Path(p).suffix.lower() not in SELF_DESCRIBING and a.top is None:
            raise CgdmlError(f"{p}: this format carries no topology; give --top")
    report = compare_landscapes(a.traj, a.reference, topology=a.top, cvs=a.cv, bins=a.bins, n_boot=a.n_boot,
                                block=a.block, lagtime=a.lagtime, plot=out)
    if a.reference:
        single = len(report["panels"]) == 1
        for e in report["panels"]:
            _print_entry("" if single else f"{e['label']}: ", e)
        if not single:
            m = report["mean"]
            print(_metric_line(f"mean over {m['n_panels']} landscapes: ", m, m.get("bootstrap")))
            print(f"mean noise floor: FES RMSE {m['noise_floor']['fes_rmse']:.3f} kT, "
                  f"JS {m['noise_floor']['js']:.4f} nats")
    if a.json:
        save_json(a.json, with_provenance(report, COMMAND, a.json))
    print(f"wrote {out}" + (f" and {a.json}" if a.json else ""))
    return 0


def cli():
    """The console script ``cgdml-fes`` (setup.cfg): the same command as ``python -m cgdml.fes``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
