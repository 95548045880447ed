"""Any molecule, any bead map: the default pipeline (map -> fit -> simulate -> fes, through the command line) on maps
and molecules it was not tuned on, against each reference's split-half noise floor.

Cases (``--cases``, default all whose data exist):

- ``ala2-5``: the shipped alanine dipeptide (data/), 5 backbone beads, aggregate force map (the tuned case);
- ``ala2-6``: the same data with CB, 6 beads (C N CA CB C N), aggregate force map;
- ``ala2-5-shuffled``: the 5-bead map with the beads listed out of residue order (C N CA N C);
- ``cgnet``: the cgnet explicit-solvent alanine dipeptide (../shared/data/cgnet-ala2, pre-mapped, 5 beads);
- ``tetra-11`` / ``tetra-14``: ACE-AAA-NME from ``python -m cgdml.reference --sequence AAA`` (``--tetra DIR``),
  backbone beads (11) or backbone + CB (14), aggregate force map; landscapes per residue;
- ``aga-11``: ACE-ALA-GLY-ALA-NME from ``python -m cgdml.reference --sequence AGA`` (``--aga DIR``), 11 backbone
  beads, aggregate force map (a second peptide, not tuned on);
- ``ala2-6-long``: the CB map on a fresh, longer alanine dipeptide run (``--long DIR``, from ``python -m
  cgdml.reference -o DIR --ns 50 --save-every-ps 2 --gb native``), aggregate force map.

Each case writes its files to ``--workdir``/CASE and reuses finished steps when rerun. Prints a markdown table
and writes it to benchmarks/results/bench_maps.md. Run: ``python benchmarks/bench_maps.py [--cases ...]
[--method two-layer|nystrom] [--quick]`` (full: about 10 minutes per case on a quiet 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _common import CGNET, Report, load_str

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHUFFLED = """\
description = "alanine dipeptide backbone, 5 beads listed out of residue order: C(ACE) N CA N(NME) C"
[[bead]]
name = "C"
select = "resid 0 and name C"
[[bead]]
name = "N"
select = "resid 1 and name N"
[[bead]]
name = "CA"
select = "resid 1 and name CA"
[[bead]]
name = "N"
select = "resid 2 and name N"
[[bead]]
name = "C"
select = "resid 1 and name C"
"""


# peptide case -> (argument naming its reference directory, file-name start, residues, CB beads): the reference
# is DIR/NAME*.pdb and .npz, as python -m cgdml.reference names them
PEPTIDES = {"tetra-11": ("tetra", "ace-aaa-nme", 3, False), "tetra-14": ("tetra", "ace-aaa-nme", 3, True),
            "aga-11": ("aga", "ace-aga-nme", 3, False)}


def peptide_map(n_residues, with_cb):
    """TOML map of a capped peptide ACE-(X)n-NME: C(ACE), then N CA [CB] C per residue, then N(NME)."""
    beads = [("C", "resid 0 and name C")]
    for r in range(1, n_residues + 1):
        beads += [("N", f"resid {r} and name N"), ("CA", f"resid {r} and name CA")]
        if with_cb:
            beads.append(("CB", f"resid {r} and name CB"))
        beads.append(("C", f"resid {r} and name C"))
    beads.append(("N", f"resid {n_residues + 1} and name N"))
    return "\n".join(f'[[bead]]\nname = "{n}"\nselect = "{s}"\n' for n, s in beads)


def run(cmd, log, cwd=ROOT):
    """Run a command, echo it, fail loudly with its stderr tail."""
    log(f"$ {' '.join(map(str, cmd))}")
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0, proc.stdout


def map_case(case, work, args):
    """The ``python -m cgdml.map`` arguments of a case (None: its data are missing)."""
    shipped = ["--top", ROOT / "data/ala2_implicit_300K.pdb", "--traj", ROOT / "data/ala2_implicit_300K.npz",
               "--forces", ROOT / "data/ala2_implicit_300K.npz", "--force-map", args.force_map]
    if case == "ala2-5":
        return shipped + ["--map", "ala2-5"]
    if case == "ala2-6":
        return shipped + ["--map", "ala2-6"]
    if case == "ala2-5-shuffled":
        (work / "shuffled.toml").write_text(SHUFFLED)
        return shipped + ["--map", work / "shuffled.toml"]
    if case == "cgnet":
        if not (CGNET / "ala2_coordinates.npy").exists():
            return None
        return ["--coords", CGNET / "ala2_coordinates.npy", "--cg-forces", CGNET / "ala2_forces.npy",
                "--length-unit", "angstrom", "--energy-unit", "kcal/mol", "--beads", "ala2-5", "--temperature", "300"]
    if case == "ala2-6-long":
        pdbs = sorted(Path(args.long).glob("ala2_*.pdb")) if args.long else []
        if not pdbs or not pdbs[0].with_suffix(".npz").exists():
            return None
        npz = pdbs[0].with_suffix(".npz")
        return ["--top", pdbs[0], "--traj", npz, "--forces", npz, "--force-map", args.force_map, "--map", "ala2-6"]
    if case in PEPTIDES:
        folder, name, n_residues, with_cb = PEPTIDES[case]
        pdbs = sorted(Path(getattr(args, folder) or "/nonexistent").glob(f"{name}*.pdb"))
        npzs = [p.with_suffix(".npz") for p in pdbs if p.with_suffix(".npz").exists()]
        if not npzs:
            return None
        (work / "map.toml").write_text(peptide_map(n_residues, with_cb))
        return ["--top", npzs[0].with_suffix(".pdb"), "--traj", npzs[0], "--forces", npzs[0], "--force-map",
                args.force_map, "--map", work / "map.toml"]
    raise SystemExit(f"unknown case {case}")


def bench_case(case, args, log):
    fmap = "" if args.force_map == "aggregate" else f"-{args.force_map}"
    work = Path(args.workdir) / f"{case}-{args.method}{fmap}{'-quick' if args.quick else ''}"
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    row = {"case": case, "method": args.method}
    data, model, traj, fes = work / "cg.npz", work / "model.npz", work / "traj.h5", work / "fes.json"
    map_args = map_case(case, work, args)
    if map_args is None:
        log(f"{case}: data not found, skipped")
        return None
    if not data.exists():
        row["map_s"], _ = run([py, "-m", "cgdml.map", *map_args, "-o", data], log)
    fit_args = ["--method", args.method] + (["--n-models", "4", "--batch-size", "500", "--mean-set-size", "500",
                                              "--sigma1", "2", "4", "--lam1", "1", "--sigma2", "1", "2", "--lam2",
                                              "0.01"] if args.quick and args.method == "two-layer" else [])
    if args.quick and args.method == "nystrom":
        fit_args += ["--n-inducing", "200", "--sigma", "2", "4", "--lam", "1"]
    if not model.exists():
        row["fit_s"], out = run([py, "-m", "cgdml.fit", data, *fit_args, "--quiet", "-o", model], log)
        log(out.strip().splitlines()[-1])
    sim_args = ["--steps", "10000", "--replicas", "50"] if args.quick else []
    if not traj.exists():
        row["simulate_s"], _ = run([py, "-m", "cgdml.simulate", model, *sim_args, "--quiet", "-o", traj], log)
    if not fes.exists():
        run([py, "-m", "cgdml.fes", traj, "--reference", data, "-o", work / "fes.png", "--json", fes, "--quiet"], log)
    report = json.loads(fes.read_text())
    summary = json.loads(model.with_suffix(".json").read_text())
    panels = report.get("panels") or report.get("per_residue") or [
        dict(label="phi/psi", metrics=report["metrics"], noise_floor=report["noise_floor"])]
    sim = json.loads(traj.with_suffix(".json").read_text())["settings"]
    row.update(force_map=args.force_map if case != "cgnet" else "pre-mapped", dt_fs=1000 * sim["dt_ps"],
               slow_every=sim.get("slow_every", 1))
    row.update(fit_method=summary.get("fit_method", args.method),
               prior_dihedrals=summary.get("prior_dihedral_profiles"))
    row.update(beads=summary["data"]["n_beads"], frames=summary["data"]["n_frames"],
               chosen=summary["chosen"], strata=summary.get("strata", {}).get("method"),
               fit_wall_s=summary.get("wall_time_s"), panels=[
                   dict(label=p.get("label"), js=p["metrics"]["js"], fes_rmse=p["metrics"]["fes_rmse"],
                        floor_js=p["noise_floor"]["js"], floor_rmse=p["noise_floor"]["fes_rmse"]) for p in panels])
    if "phi_positive" in report:
        row["phi_positive"] = report["phi_positive"]
    (work / "row.json").write_text(json.dumps(row, indent=1))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["ala2-5", "ala2-6", "ala2-5-shuffled", "cgnet", "tetra-11",
                                                   "tetra-14", "aga-11", "ala2-6-long"])
    p.add_argument("--method", choices=["auto", "two-layer", "nystrom"], default="auto",
                   help="fit method (default auto, the pipeline's default: two-layer for peptides of two or more "
                   "residues, nystrom otherwise)")
    p.add_argument("--tetra", default=str(ROOT / "data"), help="directory with the tetrapeptide reference (.pdb+.npz)")
    p.add_argument("--aga", default=None, help="directory with the ACE-AGA-NME reference (.pdb+.npz)")
    p.add_argument("--force-map", default="aggregate", choices=["aggregate", "optimal"],
                   help="force map of the all-atom cases (default aggregate, the map command's default)")
    p.add_argument("--long", default=None, help="directory of a longer alanine dipeptide reference run (ala2-6-long)")
    p.add_argument("--workdir", default="/tmp/cgdml-bench-maps")
    p.add_argument("--quick", action="store_true", help="small fits and 20 ps runs (a smoke test)")
    p.add_argument("--output", default=str(RESULTS / "bench_maps.md"))
    args = p.parse_args(argv)
    say = Report()
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
    rows = [r for r in (bench_case(c, args, log) for c in args.cases) if r is not None]
    say(f"# Default pipeline on maps and molecules ({args.method}{', --quick' if args.quick else ''})")
    say()
    say(f"{time.strftime('%Y-%m-%d')}, load {load_str()}; map -> fit -> simulate -> fes with command-line "
        "defaults (100 replicas x ~100 ps; step: BAOAB dt x GDML every K steps); js and fes_rmse against each "
        "reference's split-half floor.")
    say()
    say("| case | force map | beads | frames | fit | strata | chosen | step | panel | js | floor js | js / floor "
        "| fes_rmse (kT) | floor (kT) |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        chosen = ", ".join(f"{k} {v:g}" for k, v in r["chosen"].items()
                           if k.startswith(("sigma", "lam")) and not k.endswith("absolute"))
        for k, pnl in enumerate(r["panels"]):
            step = f"{r['dt_fs']:g} fs" + (f" x {r['slow_every']}" if r["slow_every"] > 1 else "")
            fit = r.get("fit_method", r["method"]) + (" + dihedral profiles" if r.get("prior_dihedrals") else "")
            head = f"| {r['case']} | {r['force_map']} | {r['beads']} | {r['frames']} | {fit} | {r['strata']} " \
                f"| {chosen} | {step} |" if k == 0 else "| | | | | | | | |"
            say(f"{head} {pnl['label']} | {pnl['js']:.4f} | {pnl['floor_js']:.4f} | {pnl['js'] / pnl['floor_js']:.2f} "
                f"| {pnl['fes_rmse']:.3f} | {pnl['floor_rmse']:.3f} |")
        if len(r["panels"]) > 1:
            mean = lambda key: sum(p[key] for p in r["panels"]) / len(r["panels"])  # noqa: E731
            say(f"| | | | | | | | | mean | {mean('js'):.4f} | {mean('floor_js'):.4f} | {mean('js') / mean('floor_js'):.2f} "
                f"| {mean('fes_rmse'):.3f} | {mean('floor_rmse'):.3f} |")
    say()
    for r in rows:
        if "phi_positive" in r:
            say(f"- {r['case']}: phi > 0 population model {r['phi_positive']['model']:.2%}, reference "
                f"{r['phi_positive']['reference']:.2%}")
    say(textwrap.dedent(f"""
        Wall time of this run: {time.perf_counter() - t0:.0f} s. Files in {args.workdir}."""))
    say.write(args.output)


if __name__ == "__main__":
    main()
