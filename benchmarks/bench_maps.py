"""Any molecule, any bead map: the default pipeline (map -> fit -> simulate -> fes, through the command line) on
every map of the suite, scored on every landscape of docs/method.md §3 against each reference's split-half floor.

Cases (``--cases``; the default is the suite, issue 29 item 3; cases whose data are missing are skipped):

- ``cgnet``: the cgnet explicit-solvent alanine dipeptide (../shared/data/cgnet-ala2, pre-mapped, 5 beads);
- ``ala2-5`` / ``ala2-6``: the shipped alanine dipeptide (data/), 5 backbone beads, or 6 with CB;
- ``PEP-ca5``, ``PEP-bb11``, ``PEP-cb14``, ``PEP-heavy`` for the capped tripeptides PEP = ``aaa`` (ACE-AAA-NME),
  ``aga`` (ACE-AGA-NME) and ``aka`` (ACE-ALA-LYS-ALA-NME, the peptide no default was tuned on: a charged, long,
  flexible side chain): a C-alpha map (ACE CH3, the three CA, NME C, all named CA: no phi/psi), the backbone
  (11: C, then N CA C per residue, N), backbone + CB (14; glycine has none, so AGA's has 13), and every heavy atom
  (20 for AAA; ``aaa-heavy`` is in the suite, ``aga-heavy``/``aka-heavy`` are not);
- not in the default list: ``ala2-5-shuffled`` (the 5 beads listed out of residue order) and ``ala2-6-long`` (the
  CB map on a longer alanine dipeptide run, ``--long DIR``).

Data of the peptides (``--refs DIR``): independent runs of ``python -m cgdml.reference --sequence SEQ --gb native
-o DIR/PEP_sSEED --ns 50 --save-every-ps 2 --seed SEED`` (assembled DIR/PEP_s*/ace-SEQ-nme_*.npz and .pdb; runs
still in progress are assembled from their finished chunks, cut to the same length, under ``--workdir``/runs).
The model is fitted on the first run; the reference is all runs concatenated, so its split-half floor compares
independent runs (run 1 against run 2 with two runs of equal length). Without ``--refs``, ``aaa`` falls back to
the shipped 25 ns run in data/ (fitted on and compared with the same frames).

Aggregate force map for all-atom data; fit, simulate and fes with the commands' defaults (``--method`` is passed
to the fit). Each case writes its files to ``--workdir``/CASE-METHOD and reuses finished steps when rerun (steps.json
keeps the wall time and load of each step), so a killed run resumes. The table (worst case first, by headline
js / floor: the mean js over the headline landscapes over their mean floor) goes into a section of ``--output``
(benchmarks/results/bench_maps.md) headed by the date and method; older sections stay. Run: ``nice -n 5 python
benchmarks/bench_maps.py --refs /work/refs [--cases ...] [--method auto|two-layer|nystrom] [--quick]
[--train-stride N] [--steps N] [--replicas N]`` (full: 15-40 minutes per case on a loaded 2-core machine).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import CGNET, load_str, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUITE = ["cgnet", "ala2-5", "ala2-6", "aaa-ca5", "aaa-bb11", "aaa-cb14", "aaa-heavy", "aga-ca5", "aga-bb11",
         "aga-cb14", "aka-ca5", "aka-bb11", "aka-cb14"]
# peptide -> its sequence between the ACE and NME caps (cgdml.reference names the files ace-SEQ-nme_*)
PEPTIDES = {"aaa": "AAA", "aga": "AGA", "aka": "AKA"}
MAPS = ("ca5", "bb11", "cb14", "heavy")
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


def _toml(beads, description):
    return f'description = "{description}"\n\n' + "\n".join(f'[[bead]]\nname = "{n}"\nselect = "{s}"\n'
                                                              for n, s in beads)


def peptide_map(kind, pdb):
    """TOML map of kind ``ca5``, ``bb11``, ``cb14`` or ``heavy`` for the capped peptide of ``pdb`` (mdtraj residue
    indices: ACE 0, the residues 1..n, NME n + 1). Bonds come from the atom graph (through atoms of no bead)."""
    import mdtraj as md

    top = md.load_topology(str(pdb))
    n = top.n_residues - 2
    if kind == "heavy":
        beads = [(a.name, f"resid {a.residue.index} and name {a.name}") for a in top.atoms
                 if a.element is not None and a.element.symbol != "H"]
        return _toml(beads, f"every heavy atom, {len(beads)} beads")
    if kind == "ca5":
        beads = [("CA", "resid 0 and name CH3")] + [("CA", f"resid {r} and name CA") for r in range(1, n + 1)]
        return _toml(beads + [("CA", f"resid {n + 1} and name C")], "C-alpha map: ACE CH3, every CA, NME C, "
                     "all named CA")
    beads = [("C", "resid 0 and name C")]
    for r in range(1, n + 1):
        beads += [("N", f"resid {r} and name N"), ("CA", f"resid {r} and name CA")]
        if kind == "cb14" and top.residue(r).name != "GLY":
            beads.append(("CB", f"resid {r} and name CB"))
        beads.append(("C", f"resid {r} and name C"))
    beads.append(("N", f"resid {n + 1} and name N"))
    return _toml(beads, "backbone" + (" and CB" if kind == "cb14" else ""))


def reference_runs(pep, args):
    """The runs [(pdb, npz), ...] of peptide ``pep``, the training run first, and where they are from. A run still
    in progress (chunk files and run.json, no assembled files yet) is assembled by :func:`partial_run`; the runs
    in progress are cut to the same number of finished chunks, so that the split-half floor compares runs of
    equal length."""
    assembled, partial = [], []
    if args.refs:
        for d in sorted(p for p in Path(args.refs).glob(f"{pep}_s*") if p.is_dir()):
            npzs = sorted(d.glob(f"ace-{PEPTIDES[pep].lower()}-nme_*.npz"))
            if npzs and npzs[0].with_suffix(".pdb").exists():
                assembled.append((d, npzs[0].with_suffix(".pdb"), npzs[0]))
            elif (d / "run.json").exists() and (d / "chunk_00000.npz").exists():
                partial.append(d)
    runs = [(d, pdb, npz) for d, pdb, npz in assembled]
    if partial:
        n_chunks = min(_finished_chunks(d) for d in partial)
        runs += [(d, *partial_run(d, n_chunks, PEPTIDES[pep], Path(args.workdir) / "runs")) for d in partial]
        runs.sort(key=lambda r: r[0].name)
    if runs:
        what = ", ".join(d.name + ("" if d in [a[0] for a in assembled] else f" (in progress: its first "
                                   f"{n_chunks} chunks)") for d, _, _ in runs)
        return [(pdb, npz) for _, pdb, npz in runs], f"{len(runs)} run(s) in {args.refs}: {what}"
    shipped = ROOT / "data" / "ace-aaa-nme_implicit_300K.npz"
    if pep == "aaa" and shipped.exists():
        return [(shipped.with_suffix(".pdb"), shipped)], "shipped data/ (one run: fitted on and compared with)"
    return [], None


def _finished_chunks(run_dir):
    """Leading chunk files of a run directory (cgdml.reference writes each atomically)."""
    n = 0
    while (Path(run_dir) / f"chunk_{n:05d}.npz").exists():
        n += 1
    return n


def partial_run(run_dir, n_chunks, sequence, out_root):
    """(pdb, npz) of the first ``n_chunks`` chunks of a cgdml.reference run still in progress, assembled under
    ``out_root`` as cgdml.reference assembles a finished run (cgdml has no reader for an unfinished run). The
    topology is cgdml.reference's own build of ACE-(sequence)-NME, whose atom order the run's chunks keep."""
    import numpy as np
    from openmm import app, unit

    from cgdml.reference import build_peptide

    out = Path(out_root) / f"{Path(run_dir).name}_{n_chunks}chunks"
    name = f"ace-{sequence.lower()}-nme_partial"
    pdb, npz = out / f"{name}.pdb", out / f"{name}.npz"
    if npz.exists() and pdb.exists():
        return pdb, npz
    chunks = [np.load(Path(run_dir) / f"chunk_{i:05d}.npz") for i in range(n_chunks)]
    pos, frc = (np.concatenate([c[k] for c in chunks]) for k in ("positions", "forces"))
    topology, _ = build_peptide(sequence)
    if topology.getNumAtoms() != pos.shape[1]:
        raise SystemExit(f"{run_dir}: chunks have {pos.shape[1]} atoms, ACE-{sequence}-NME {topology.getNumAtoms()}")
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    app.PDBFile.writeFile(topology, pos[0].astype(np.float64) * unit.nanometer, buf)
    write_text_atomic(pdb, buf.getvalue())
    settings = json.loads((Path(run_dir) / "run.json").read_text())
    write_text_atomic(out / "run.json", json.dumps(settings, indent=1))
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez(tmp, positions=pos, forces=frc, time_ps=settings["save_every_ps"] * np.arange(1, len(pos) + 1),
             temperature=np.float64(settings["temperature"]), info_json=np.array(json.dumps(settings)))
    os.replace(tmp, npz)
    return pdb, npz


def run(cmd, log):
    """Run a command, echo it, fail loudly with its stderr tail; returns (wall s, stdout, load before/after)."""
    log(f"$ {' '.join(map(str, cmd))}")
    before, t0 = load_str(), time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0, proc.stdout, f"{before} -> {load_str()}"


def case_inputs(case, work, args):
    """(map arguments of the training data, map arguments of the reference or None: the training data, where
    the data come from); None when the case's data are missing."""
    fm = ["--force-map", args.force_map]
    shipped = ["--top", ROOT / "data/ala2_implicit_300K.pdb", "--traj", ROOT / "data/ala2_implicit_300K.npz",
               "--forces", ROOT / "data/ala2_implicit_300K.npz", *fm]
    if case in ("ala2-5", "ala2-6"):
        return shipped + ["--map", case], None, "shipped data/"
    if case == "ala2-5-shuffled":
        (work / "map.toml").write_text(SHUFFLED)
        return shipped + ["--map", work / "map.toml"], None, "shipped data/"
    if case == "cgnet":
        if not (CGNET / "ala2_coordinates.npy").exists():
            return None
        return ["--coords", CGNET / "ala2_coordinates.npy", "--cg-forces", CGNET / "ala2_forces.npy",
                "--length-unit", "angstrom", "--energy-unit", "kcal/mol", "--beads", "ala2-5", "--temperature",
                "300"], None, "cgnet data (pre-mapped)"
    if case == "ala2-6-long":
        pdbs = sorted(Path(args.long).glob("ala2_*.pdb")) if args.long else []
        if not pdbs or not pdbs[0].with_suffix(".npz").exists():
            return None
        npz = pdbs[0].with_suffix(".npz")
        return ["--top", pdbs[0], "--traj", npz, "--forces", npz, *fm, "--map", "ala2-6"], None, str(args.long)
    pep, _, kind = case.partition("-")
    if pep not in PEPTIDES or kind not in MAPS:
        raise SystemExit(f"unknown case {case}: use {', '.join(SUITE)}, aga-heavy, aka-heavy, ala2-5-shuffled "
                         "or ala2-6-long")
    runs, source = reference_runs(pep, args)
    if not runs:
        return None
    (work / "map.toml").write_text(peptide_map(kind, runs[0][0]))
    train = ["--top", runs[0][0], "--traj", runs[0][1], "--forces", runs[0][1], *fm, "--map", work / "map.toml"]
    if len(runs) == 1:
        return train, None, source
    npzs = [npz for _, npz in runs]
    return train, ["--top", runs[0][0], "--traj", *npzs, "--forces", *npzs, *fm, "--map", work / "map.toml"], source


def _step(work, name, fn):
    """Run step ``name`` unless done, keeping its wall time and load in work/steps.json."""
    path = work / "steps.json"
    steps = json.loads(path.read_text()) if path.exists() else {}
    if name not in steps:
        wall, out, load = fn()
        steps[name] = {"wall_s": round(wall, 1), "load": load}
        write_text_atomic(path, json.dumps(steps, indent=1))
        if out.strip():
            print(out.strip().splitlines()[-1], flush=True)
    return steps[name]


def window_floor(ref_path, run_json, settings, seed=0):
    """The js a model run of this length would show from sampling alone, were its dynamics the all-atom one:
    ``replicas`` windows of the written time per replica ((steps - burn-in) x dt), at random starts in the first
    of two equal reference runs, against the second run. Returns {"headline": js, "any_map": js} (means as in
    the fes report) and the window length in frames; None without two runs or their save interval."""
    import numpy as np

    from cgdml.data import CGDataset
    from cgdml.fes import compare_panels, landscape_panels

    if not Path(run_json).exists():
        return None
    save_ps = json.loads(Path(run_json).read_text())["save_every_ps"]
    ref = CGDataset.load(ref_path)
    half = ref.n_frames // 2
    w = max(1, int(round((settings["steps"] - settings["burn_in_steps"]) * settings["dt_ps"] / save_ps)))
    starts = np.random.default_rng(seed).integers(0, half - w, size=settings["replicas"])
    sample = np.concatenate([ref.coords[s:s + w] for s in starts])
    res = compare_panels(landscape_panels(sample, ref.cg_topology, ref.coords[half:]), n_boot=0)
    return {"headline": res["mean"]["js"], "any_map": (res["extra"] or res["mean"])["js"], "frames": w}


def _means(m):
    return {"js": m["js"], "floor_js": m["noise_floor"]["js"], "fes_rmse": m["fes_rmse"],
            "floor_rmse": m["noise_floor"]["fes_rmse"], "n": m["n_panels"]}


def bench_case(case, args, log):
    small = (f"-stride{args.train_stride}" if args.train_stride > 1 else "") + \
        (f"-{args.replicas}x{args.steps}" if args.steps or args.replicas else "")
    work = Path(args.workdir) / f"{case}-{args.method}{'-quick' if args.quick else ''}{small}"
    work.mkdir(parents=True, exist_ok=True)
    inputs = case_inputs(case, work, args)
    if inputs is None:
        log(f"{case}: data not found, skipped")
        return None
    train_args, ref_args, source = inputs
    py = sys.executable
    data, ref = work / "cg.npz", work / ("ref.npz" if ref_args else "cg.npz")
    model, traj, fes = work / "model.npz", work / "traj.h5", work / "fes.json"
    # a step whose output exists (older runs of this script) is not rerun
    done = lambda out: (lambda: (0.0, "", "(earlier run)")) if out.exists() else None  # noqa: E731
    stride = ["--stride", str(args.train_stride)] if args.train_stride > 1 else []
    _step(work, "map", done(data) or (lambda: run([py, "-m", "cgdml.map", *train_args, *stride, "-o", data], log)))
    if ref_args:
        _step(work, "map reference", done(ref) or (lambda: run([py, "-m", "cgdml.map", *ref_args, "-o", ref], log)))
    fit_args = ["--method", args.method]
    if args.quick:
        fit_args += (["--n-models", "4", "--batch-size", "500", "--mean-set-size", "500", "--sigma1", "2", "4",
                      "--lam1", "1", "--sigma2", "1", "2", "--lam2", "0.01"] if args.method == "two-layer" else
                     ["--n-inducing", "200", "--sigma", "2", "4", "--lam", "1"] if args.method == "nystrom" else [])
    fit = _step(work, "fit", done(model) or (lambda: run([py, "-m", "cgdml.fit", data, *fit_args, "--quiet", "-o",
                                                             model], log)))
    sim_args = ["--steps", "10000", "--replicas", "50"] if args.quick else []
    sim_args += (["--steps", str(args.steps)] if args.steps else []) + \
        (["--replicas", str(args.replicas)] if args.replicas else [])
    sim = _step(work, "simulate", done(traj) or (lambda: run([py, "-m", "cgdml.simulate", model, *sim_args,
                                                                "--quiet", "-o", traj], log)))
    _step(work, "fes", done(fes) or (lambda: run([py, "-m", "cgdml.fes", traj, "--reference", ref, "-o",
                                                  work / "fes.png", "--json", fes, "--quiet"], log)))
    report = json.loads(fes.read_text())
    window = None
    if ref_args:
        path = work / "window.json"
        if not path.exists():
            runs, _ = reference_runs(case.partition("-")[0], args)
            found = window_floor(ref, runs[0][0].parent / "run.json",
                                 json.loads(traj.with_suffix(".json").read_text())["settings"])
            write_text_atomic(path, json.dumps(found))
        window = json.loads(path.read_text())
    summary = json.loads(model.with_suffix(".json").read_text())
    settings = json.loads(traj.with_suffix(".json").read_text())["settings"]
    panels = report["panels"] + report.get("extra", {}).get("panels", [])
    row = dict(case=case, method=args.method, source=source, beads=summary["data"]["n_beads"],
               frames=summary["data"]["n_frames"], ref_frames=report["n_ref_frames"],
               fit_method=summary.get("fit_method", args.method), prior_dihedrals=summary.get("prior_dihedral_profiles"),
               chosen=summary["chosen"], dt_fs=1000 * settings["dt_ps"], slow_every=settings.get("slow_every", 1),
               replicas=settings["replicas"], ps_per_replica=settings["steps"] * settings["dt_ps"],
               headline_kind=report["panels"][0].get("kind"), headline=_means(report["mean"]),
               any_map=_means(report.get("extra", {}).get("mean") or report["mean"]),
               kinds={k: _means(m) for k, m in report["kinds"].items()},
               fit=fit, simulate=sim, window=window,
               panels=[dict(label=p["label"], kind=p["kind"], group=p["group"], js=p["metrics"]["js"],
                            floor_js=p["noise_floor"]["js"]) for p in panels])
    write_text_atomic(work / "row.json", json.dumps(row, indent=1))
    return row


def _ratio(m):
    return m["js"] / m["floor_js"] if m["floor_js"] > 0 else float("inf")


def table(rows, method, options, loads):
    """The results section (markdown lines), worst case first; ``options`` the command line's other options."""
    rows = sorted(rows, key=lambda r: -_ratio(r["headline"]))
    date = time.strftime("%Y-%m-%d")
    sims = sorted({f"{r['replicas']} replicas x {r['ps_per_replica']:g} ps" for r in rows})
    out = [f"## {date}: `--method {method}{' ' if options else ''}{options}`", "",
           f"`nice -n 10 python benchmarks/bench_maps.py --method {method} --refs DIR {options}`; one run per number "
           f"(one fit, one simulation: {', '.join(sims)}). js in nats; the headline is the "
           "mean over the headline landscapes (the (phi, psi) of each residue for a map with a backbone, the "
           "landscapes of any map otherwise, docs/method.md §3); js / floor is that mean js over the mean "
           "split-half floor; worst case first. \"Any map\": the mean over every soft torsion, consecutive pair, "
           "bond angle and the end-to-end distance (the headline of a map without backbone, the second group of "
           "one with); then js / floor per kind. \"Window\": the js / floor that sampling alone gives a run of the "
           "model's length (as many windows as replicas, each the written time of one replica, at random starts "
           "in reference run 1, against run 2; all-atom dynamics, see window_floor): a model near it is limited "
           "by its own run length, not by its force field. Load (1/5/15-min averages) at the start and end of "
           "each fit.",
           "",
           "| case | beads | fit frames | ref frames | fit | headline | js | floor | **js / floor** | window "
           "| any map (n) | js / floor | window | torsions | pairs | angles | end-to-end | fit min | fit load "
           "| sim min |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, a, k = r["headline"], r["any_map"], r["kinds"]
        kind_ratio = lambda name: f"{_ratio(k[name]):.2f}" if name in k else "-"  # noqa: E731
        fit = r["fit_method"] + (" + profiles" if r.get("prior_dihedrals") else "")
        wall = lambda s: f"{s['wall_s'] / 60:.1f}" if s["wall_s"] else "-"  # noqa: E731
        win = lambda key, m: f"{r['window'][key] / m['floor_js']:.2f}" if r.get("window") else "-"  # noqa: E731
        out.append(f"| {r['case']} | {r['beads']} | {r['frames']} | {r['ref_frames']} | {fit} | "
                   f"{'phi/psi' if r['headline_kind'] == 'phi-psi' else 'any map'} ({h['n']}) | {h['js']:.4f} | "
                   f"{h['floor_js']:.4f} | **{_ratio(h):.2f}** | {win('headline', h)} | {a['n']} | {_ratio(a):.2f} | "
                   f"{win('any_map', a)} | "
                   f"{kind_ratio('dihedral')} | {kind_ratio('dihedral pair')} | {kind_ratio('angle')} | "
                   f"{kind_ratio('end-to-end')} | {wall(r['fit'])} | {r['fit']['load']} | {wall(r['simulate'])} |")
    out += ["", "Where each case loses most (the three landscapes with the largest js / floor; chosen "
            "hyperparameters; data):", ""]
    for r in rows:
        worst = sorted(r["panels"], key=lambda p: -(p["js"] / p["floor_js"] if p["floor_js"] > 0 else 0))[:3]
        chosen = ", ".join(f"{k} {v:g}" for k, v in r["chosen"].items()
                           if k.startswith(("sigma", "lam")) and not k.endswith("absolute"))
        out.append(f"- {r['case']}: " + "; ".join(f"{p['label']} {p['js']:.4f} / {p['floor_js']:.4f} = "
                                                   f"{p['js'] / p['floor_js']:.1f}x" for p in worst)
                   + f" ({chosen}; {r['source']})")
    out += ["", f"Load at the start and end of the script that wrote this table (steps run earlier are reused): "
            f"{loads}.", ""]
    return out


def write_section(path, lines):
    """Put the section into the results file: replace the section with the same heading, else insert it before the
    first section (older sections stay, as history)."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Default pipeline on maps and molecules\n\n"
    head, new = lines[0], "\n".join(lines) + "\n"
    parts = text.split("\n## ")
    body = [p if k == 0 else "## " + p for k, p in enumerate(parts)]
    for k, p in enumerate(body):
        if k and p.splitlines()[0] == head:
            body[k] = new
            break
    else:
        body.insert(1, new)
    write_text_atomic(path, "\n".join(b.rstrip("\n") + "\n" for b in body))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=SUITE)
    p.add_argument("--method", choices=["auto", "two-layer", "nystrom"], default="auto",
                   help="fit method (default auto, the pipeline's default)")
    p.add_argument("--refs", default=None, help="directory of the peptides' reference runs PEP_sSEED/ (see above)")
    p.add_argument("--force-map", default="aggregate", choices=["aggregate", "optimal"],
                   help="force map of the all-atom cases (default aggregate, the map command's default)")
    p.add_argument("--long", default=None, help="directory of a longer alanine dipeptide reference run (ala2-6-long)")
    p.add_argument("--workdir", default="/tmp/cgdml-bench-maps")
    p.add_argument("--quick", action="store_true", help="small fits and 20 ps runs (a smoke test)")
    p.add_argument("--output", default=str(RESULTS / "bench_maps.md"))
    p.add_argument("--train-stride", type=int, default=1, help="fit on every N-th frame of the training run (the "
                   "reference keeps every frame)")
    p.add_argument("--steps", type=int, default=None, help="steps per replica of the simulation (default: the "
                   "command's, or 10000 with --quick)")
    p.add_argument("--replicas", type=int, default=None, help="replicas of the simulation (default: the command's, "
                   "or 50 with --quick)")
    p.add_argument("--no-write", action="store_true", help="print the table, do not touch --output")
    args = p.parse_args(argv)
    if args.force_map != "aggregate":
        args.workdir = str(Path(args.workdir) / args.force_map)
    t0, start_load = time.perf_counter(), load_str()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
    rows = []
    for case in args.cases:
        row = bench_case(case, args, log)
        if row is not None:
            rows.append(row)
            log(f"{case}: headline js {row['headline']['js']:.4f} / floor {row['headline']['floor_js']:.4f} = "
                f"{_ratio(row['headline']):.2f}x; any map {_ratio(row['any_map']):.2f}x")
    if not rows:
        raise SystemExit("no case had its data")
    options = " ".join((["--quick"] if args.quick else []) + ([f"--train-stride {args.train_stride}"]
                                                                if args.train_stride > 1 else [])
                       + ([f"--steps {args.steps}"] if args.steps else [])
                       + ([f"--replicas {args.replicas}"] if args.replicas else []))
    lines = table(rows, args.method, options, f"{start_load} -> {load_str()}")
    print("\n".join(lines), flush=True)
    if not args.no_write:
        write_section(args.output, lines)


if __name__ == "__main__":
    main()
