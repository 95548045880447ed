"""``python -m cgdml.fes TRAJ.h5 --reference DATA.npz -o FES.png --json METRICS.json``: free-energy landscapes
and their comparison with a reference (the library is :mod:`cgdml.fes`).

Landscapes: by default the (phi, psi) of every residue of the CG topology (one row each); a molecule without
backbone gets its one or two proper dihedrals, else a 2D TICA projection. ``--cv phi:2,psi:2`` (repeatable,
one landscape each) chooses the CVs: phi/psi of a residue number, dihedral:I,J,K,L, angle:I,J,K,
distance:I,J (bead indices).

JSON: ``panels`` (one entry per landscape: label, cvs, range, periodic, metrics, noise_floor, bootstrap,
model_outside_range; residue and phi_positive for a residue's (phi, psi)) and ``mean`` (over the panels);
with a single landscape also the top-level ``metrics``, ``noise_floor``, ``bootstrap`` (and ``phi_positive``).
"""
from __future__ import annotations

import logging
import warnings

from pathlib import Path

import numpy as np

from .._cli import (ArgumentParser, add_verbosity_arguments, claim_outputs, configure_logging, positive_int, run_cli,
                    with_provenance)
from .._io import CgdmlError, check_output, save_json
from . import (as_cg_topology, compare_panels, landscape_panels, parse_cvs, plot_landscapes,
               topology_distributions)


def _load_trajectories(paths, top):
    import mdtraj as md

    trajs = []
    for p in paths:
        if not Path(p).exists():
            raise CgdmlError(f"{p}: no such trajectory")
        if Path(p).suffix.lower() not in (".h5", ".pdb", ".hdf5") and top is None:
            raise CgdmlError(f"{p}: this format carries no topology; give --top")
        try:
            trajs.append(md.load(str(p), top=top) if top is not None and Path(p).suffix.lower() != ".h5"
                         else md.load(str(p)))
        except Exception as exc:
            with open(p, "rb") as fh:
                head = fh.read(8)
            if Path(p).suffix.lower() in (".h5", ".hdf5") and head != b"\x89HDF\r\n\x1a\n":
                raise CgdmlError(f"{p}: cannot read trajectory (not an HDF5 file)") from None
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise CgdmlError(f"{p}: cannot read trajectory ({type(exc).__name__}: {first})") from None
    n_atoms = {t.n_atoms for t in trajs}
    if len(n_atoms) > 1:
        raise CgdmlError(f"trajectories have different bead counts: {sorted(n_atoms)}")
    return trajs


log = logging.getLogger("cgdml.fes")
COMMAND = "cgdml.fes"


def _topology(trajs, ref, traj_path=None, ref_path=None):
    """The bead graph the CVs are taken from: the reference dataset's (the one the model was fitted on) when
    there is one, checked against the trajectory's; else the trajectory's. Messages name both files."""
    traj_top = trajs[0].topology
    if ref is None:
        return as_cg_topology(traj_top)
    topo = ref.cg_topology
    names = [a.name for a in traj_top.atoms]
    if names != list(topo.names):
        first = next(i for i, (a, b) in enumerate(zip(names, topo.names)) if a != b)
        raise CgdmlError(f"{ref_path}: the reference's bead {first} is {topo.names[first]!r}, the trajectory "
                         f"{traj_path}'s {names[first]!r}: the bead order of trajectory and reference differ")
    bonds = {tuple(sorted((a.index, b.index))) for a, b in traj_top.bonds}
    if bonds != {tuple(b) for b in topo.bonds.tolist()}:
        warnings.warn(f"the bonds of the trajectory {traj_path} differ from those of the reference {ref_path}; "
                      "the CVs and bond/angle distributions follow the reference's CG topology")
    return topo


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
        print(f"{prefix}phi > 0 population: model {pp['model']:.2%}, reference {pp['reference']:.2%}")
    if e.get("model_outside_range", 0) > 0:
        warnings.warn(f"{prefix}{e['model_outside_range']:.2%} of the model frames fall outside the reference's "
                      "range of this landscape and are not counted by the metric")


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
                   help="TICA lag time in frames (molecules without backbone; default: a few frames)")
    p.add_argument("--top", help="topology file (e.g. .pdb) for trajectory formats without one")
    p.add_argument("--bins", type=int, default=36, help="bins per dimension (default 36; dihedrals on "
                   "[-180, 180) deg, other CVs on the reference's range padded by 5%%)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (default 200; 0 = none)")
    p.add_argument("--block", type=int, default=None, help="bootstrap block length in frames (default: frames/50; "
                   "use at least a few correlation times, e.g. one replica's frames)")
    p.add_argument("-o", "--output", required=True, help="plot file (.png, .pdf, .svg)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    if a.bins < 2:
        raise CgdmlError(f"--bins must be >= 2, got {a.bins}")
    if a.n_boot < 0 or a.n_boot == 1:
        raise CgdmlError(f"--n-boot must be 0 or >= 2, got {a.n_boot}")
    if a.lagtime is not None and a.lagtime < 1:
        raise CgdmlError(f"--lagtime must be >= 1 frame, got {a.lagtime}")
    cv_arg = [c for c in (a.cv or []) if c != "phi-psi"]       # "phi-psi": the old spelling of the default
    cvs = [parse_cvs(c) for c in cv_arg] or None
    for group in cvs or []:
        if len(group) not in (1, 2):
            raise CgdmlError(f"--cv {','.join(map(repr, group))}: a landscape takes one or two CVs, got "
                             f"{len(group)} (give --cv once per landscape)")
    out = Path(a.output)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CgdmlError(f"{out}: plot must end in .png, .pdf or .svg")
    for path in [out] + ([Path(a.json)] if a.json else []):
        check_output(path)
    if a.json and Path(a.json).resolve() == out.resolve():
        raise CgdmlError(f"{a.json}: --json and -o name the same file")
    with claim_outputs(COMMAND, [out, a.json], sidecars={a.json: a.json} if a.json else None,
                       inputs=[a.traj, a.reference, a.top]):
        return _fes(a, out, cvs)


def _fes(a, out, cvs):
    if a.top is not None and not Path(a.top).exists():
        raise CgdmlError(f"{a.top}: no such topology file")

    trajs = _load_trajectories(a.traj, a.top)
    ref = None
    if a.reference:
        from ..data import CGDataset

        ref = CGDataset.load(a.reference)
        if ref.n_beads != trajs[0].n_atoms:
            raise CgdmlError(f"{a.reference}: reference has {ref.n_beads} beads, trajectories have "
                             f"{trajs[0].n_atoms}")
    topo = _topology(trajs, ref, a.traj[0], a.reference)
    xyz_list = [t.xyz.astype(np.float64) for t in trajs]
    ref_xyz = None if ref is None else ref.coords
    panels = landscape_panels(xyz_list, topo, ref_xyz, cvs, lagtime=a.lagtime)
    n_frames = sum(len(x) for x in xyz_list)
    if cvs:
        cv_name = " ".join(",".join(map(repr, g)) for g in cvs)
    elif panels[0].residue:
        cv_name = "phi-psi"
    else:
        cv_name = "tica" if panels[0].names[0].startswith("TIC") else ",".join(panels[0].names)
    report = {"trajectories": [str(t) for t in a.traj], "n_frames": n_frames, "cv": cv_name, "bins": a.bins,
              "topology": topo.describe()}
    log.info("landscapes: %s", "; ".join(pn.label for pn in panels))
    try:
        results = compare_panels(panels, a.bins, a.n_boot if ref is not None else 0, a.block)
    except CgdmlError as exc:
        raise CgdmlError(f"{a.reference}: {exc}" if ref is not None and "bootstrap" not in str(exc)
                         else str(exc)) from None
    report["panels"] = results["panels"]
    why = (results["mean"] or {}).get("bootstrap_undefined")
    if why:
        warnings.warn(f"bootstrap interval undefined: {why}; give more frames or a shorter --block (or --n-boot 0)")
    if ref is not None:
        report.update(reference=str(a.reference), n_ref_frames=int(ref.n_frames), mean=results["mean"])
        single = len(panels) == 1
        for e in results["panels"]:
            _print_entry("" if single else f"{e['label']}: ", e)
        if single:
            e = results["panels"][0]
            report.update(metrics=e["metrics"], noise_floor=e["noise_floor"])
            for key in ("bootstrap", "bootstrap_undefined", "phi_positive"):
                if key in e:
                    report[key] = e[key]
        else:
            m = results["mean"]
            print(_metric_line(f"mean over {m['n_panels']} landscapes: ", m, m.get("bootstrap")))
            print(f"mean noise floor: FES RMSE {m['noise_floor']['fes_rmse']:.3f} kT, "
                  f"JS {m['noise_floor']['js']:.4f} nats")
    distributions = topology_distributions(topo, np.concatenate(xyz_list), ref_xyz) if ref is not None else []
    plot_landscapes(out, panels, a.bins, results if ref is not None else None, distributions)
    if a.json:
        save_json(a.json, with_provenance(report, COMMAND, a.json))
    print(f"wrote {out}" + (f" and {a.json}" if a.json else ""))
    return 0


def cli():
    """The console script ``cgdml-fes`` (setup.cfg): the same command as ``python -m cgdml.fes``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
