"""``python -m cgdml.fes TRAJ.h5 --reference DATA.npz -o FES.png --json METRICS.json``: free-energy landscapes
and their comparison with a reference (the library is :mod:`cgdml.fes`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._cli import ArgumentParser, add_verbosity_arguments, configure_logging, run_cli
from .._io import CgdmlError, check_output, save_json
from . import bonds_and_angles, bootstrap_metrics, compare_fes, phi_psi, plot_comparison, split_half_floor


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


def main(argv=None):
    p = ArgumentParser(prog="python -m cgdml.fes", description=(
        "Free-energy landscape of CG trajectories over (phi, psi), optionally compared with a reference CG "
        "dataset: FES RMSE (kT) and Jensen-Shannon divergence with split-half noise floor and bootstrap."))
    p.add_argument("traj", nargs="+", help="trajectory file(s) readable by mdtraj (.h5 carries its topology)")
    p.add_argument("--reference", help="reference CG dataset (.npz) to compare with")
    p.add_argument("--cv", choices=["phi-psi"], default="phi-psi", help="collective variables (default phi-psi)")
    p.add_argument("--top", help="topology file (e.g. .pdb) for trajectory formats without one")
    p.add_argument("--bins", type=int, default=36, help="bins per dimension on [-pi, pi) (default 36)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (default 200; 0 = none)")
    p.add_argument("--block", type=int, default=None, help="bootstrap block length in frames (default: frames/50; "
                   "use at least a few correlation times, e.g. one replica's frames)")
    p.add_argument("-o", "--output", required=True, help="plot file (.png, .pdf, .svg)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    add_verbosity_arguments(p)
    a = p.parse_args(argv)
    configure_logging(a)
    if a.bins < 2:
        raise CgdmlError(f"--bins must be >= 2, got {a.bins}")
    if a.n_boot < 0 or a.n_boot == 1:
        raise CgdmlError(f"--n-boot must be 0 or >= 2, got {a.n_boot}")
    out = Path(a.output)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CgdmlError(f"{out}: plot must end in .png, .pdf or .svg")
    for path in [out] + ([Path(a.json)] if a.json else []):
        check_output(path)
    if a.top is not None and not Path(a.top).exists():
        raise CgdmlError(f"{a.top}: no such topology file")

    trajs = _load_trajectories(a.traj, a.top)
    cv_model = []
    for path, t in zip(a.traj, trajs):
        try:
            cv_model.append(phi_psi(t))
        except CgdmlError as exc:
            raise CgdmlError(f"{path}: {exc}") from None
    cv_model = np.concatenate(cv_model)
    xyz_model = np.concatenate([t.xyz for t in trajs])
    bond_pairs = [(b[0].index, b[1].index) for b in trajs[0].topology.bonds]
    report = {"trajectories": [str(t) for t in a.traj], "n_frames": len(cv_model), "cv": a.cv, "bins": a.bins}
    metrics = floor = None
    cv_ref = None
    distributions = []
    if a.reference:
        from ..data import CGDataset

        ref = CGDataset.load(a.reference)
        if ref.n_beads != xyz_model.shape[1]:
            raise CgdmlError(f"{a.reference}: reference has {ref.n_beads} beads, trajectories have "
                             f"{xyz_model.shape[1]}")
        cv_ref = phi_psi(ref.coords, ref.topology)
        metrics = compare_fes(cv_model, cv_ref, a.bins)
        floor = split_half_floor(cv_ref, a.bins)
        report.update(reference=str(a.reference), n_ref_frames=len(cv_ref), metrics=metrics, noise_floor=floor)
        if a.n_boot:
            report["bootstrap"] = bootstrap_metrics(cv_model, cv_ref, a.n_boot, a.block, bins=a.bins)
        l_m, ang_m, triples = bonds_and_angles(xyz_model, bond_pairs)
        l_r, ang_r, _ = bonds_and_angles(ref.coords, bond_pairs)
        names = [at.name for at in trajs[0].topology.atoms]
        distributions = [(f"bond {names[i]}-{names[j]} (nm)", l_m[:, k], l_r[:, k])
                         for k, (i, j) in enumerate(bond_pairs)]
        distributions += [(f"angle {names[i]}-{names[j]}-{names[k]} (deg)", np.degrees(ang_m[:, t]),
                           np.degrees(ang_r[:, t]))
                          for t, (i, j, k) in enumerate(triples)]
        line = f"FES RMSE {metrics['fes_rmse']:.3f} kT, JS {metrics['js']:.4f} nats"
        if "bootstrap" in report:
            b = report["bootstrap"]
            line += f" (bootstrap 95%: RMSE {b['fes_rmse']['lo']:.3f}-{b['fes_rmse']['hi']:.3f}, " \
                    f"JS {b['js']['lo']:.4f}-{b['js']['hi']:.4f})"
        print(line)
        print(f"noise floor (reference split half): FES RMSE {floor['fes_rmse']:.3f} kT, JS {floor['js']:.4f} nats")
        print(f"{metrics['bins_missed_by_model']} of {metrics['bins_ref_visited']} reference bins never visited "
              f"by the model ({len(cv_model)} model frames, {len(cv_ref)} reference frames)")
        report["phi_positive"] = dict(model=float(np.mean(cv_model[:, 0] > 0)), reference=float(np.mean(cv_ref[:, 0] > 0)))
        print(f"phi > 0 population: model {report['phi_positive']['model']:.2%}, "
              f"reference {report['phi_positive']['reference']:.2%}")
    plot_comparison(out, cv_model, cv_ref, a.bins, metrics=metrics, floor=floor, distributions=distributions)
    if a.json:
        save_json(a.json, report)
    print(f"wrote {out}" + (f" and {a.json}" if a.json else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
