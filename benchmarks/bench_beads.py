"""Scale in beads: fit time, peak memory and simulation throughput of the default pipeline against bead count.

Maps of real all-atom data (no synthetic molecules):

- 5 beads: the shipped alanine dipeptide, backbone (``ala2-5``); 6 beads: with CB (``ala2-6``);
- 10 beads: the shipped alanine dipeptide, every heavy atom;
- 11 and 14 beads: ACE-AAA-NME from ``python -m cgdml.reference --sequence AAA`` (``--tetra DIR``), backbone and
  backbone + CB; 20 beads: its heavy atoms but the hydrogens' carbons of the caps kept (CH3 C O, N CA CB C O per
  residue, N CH3).

For each map and both fit methods (``two-layer`` and ``nystrom``, command-line defaults) it runs
``python -m cgdml.fit`` in a child process and records its wall time and peak resident memory, then
``python -m cgdml.simulate`` with 100 replicas for 2000 steps on one thread and on 2 processes (``--tasks 2
--jobs 2``), recording replica-steps/s. ``--frames N`` tiles each dataset with small Gaussian noise (0.001 nm)
to N frames to time fits of a larger dataset than the reference holds (said so in the table).

Run: ``python benchmarks/bench_beads.py [--tetra DIR] [--maps 5 6 10 11 14 20] [--frames 40000]``; writes
benchmarks/results/bench_beads.md with every finished row in ``--workdir`` (rows are reused when rerun).

Precision (``--precision-models 5=M5.npz 14=M14.npz ...``, fitted models, each with a label): for each model,
``python -m cgdml.simulate`` (100 replicas x 2000 steps, 1 thread) with ``--precision float64`` and ``float32``,
interleaved, ``--repeat`` times; the float32 force error (max and RMS of F32 - F64 over the float64 run's last 500
frames and the 100 start frames); and, for the model with the most GDML configurations (then beads), the throughput
of the same model cut to its first M configurations with the GDML term scaled by 0 (the prior's dynamics at the full
kernel cost of M configurations: what a model compressed onto M inducing configurations would run at). Replaces the
section "Precision of the GDML force" of ``--output`` (or appends it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import Report, load_str, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["--top", ROOT / "data/ala2_implicit_300K.pdb", "--traj", ROOT / "data/ala2_implicit_300K.npz",
           "--forces", ROOT / "data/ala2_implicit_300K.npz"]
PEAK = ("import resource, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_module(sys.argv[0], "
        "run_name='__main__')\nfinally:\n    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n    print(f'PEAK_KB {kb}', file=sys.stderr)\n")


def toml(beads):
    return "\n".join(f'[[bead]]\nname = "{n}"\nselect = "{s}"\n' for n, s in beads)


def ala2_heavy():
    atoms = [(0, "CH3"), (0, "C"), (0, "O"), (1, "N"), (1, "CA"), (1, "CB"), (1, "C"), (1, "O"), (2, "N"), (2, "C")]
    return toml([(n if n != "C" or r != 2 else "CH3", f"resid {r} and name {n}") for r, n in atoms])


def peptide(n_res, cb=False, heavy=False):
    """Map of ACE-(X)n-NME: C(ACE), N CA [CB] C per residue, N(NME); ``heavy`` adds the caps' methyl carbons and
    every carbonyl O (and CB)."""
    beads = [("CH3", "resid 0 and name CH3")] if heavy else []
    beads += [("C", "resid 0 and name C")] + ([("O", "resid 0 and name O")] if heavy else [])
    for r in range(1, n_res + 1):
        beads += [("N", f"resid {r} and name N"), ("CA", f"resid {r} and name CA")]
        beads += [("CB", f"resid {r} and name CB")] if cb or heavy else []
        beads += [("C", f"resid {r} and name C")] + ([("O", f"resid {r} and name O")] if heavy else [])
    beads.append(("N", f"resid {n_res + 1} and name N"))
    if heavy:
        beads.append(("CH3", f"resid {n_res + 1} and name C"))
    return toml(beads)


def map_args(n_beads, work, tetra):
    if n_beads == 5:
        return SHIPPED + ["--map", "ala2-5"]
    if n_beads == 6:
        return SHIPPED + ["--map", "ala2-6"]
    if n_beads == 10:
        (work / "map.toml").write_text(ala2_heavy())
        return SHIPPED + ["--map", work / "map.toml"]
    pdbs = sorted(Path(tetra).glob("ace-aaa-nme*.pdb"))
    if not pdbs or not pdbs[0].with_suffix(".npz").exists():
        return None
    (work / "map.toml").write_text(peptide(3, cb=n_beads == 14, heavy=n_beads == 20))
    npz = pdbs[0].with_suffix(".npz")
    return ["--top", pdbs[0], "--traj", npz, "--forces", npz, "--map", work / "map.toml"]


def run(cmd, log):
    log("$ " + " ".join(map(str, cmd)))
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {proc.stderr.strip()[-1500:]}")
    peak = [int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KB")]
    return time.perf_counter() - t0, (peak[0] / 1e6 if peak else float("nan")), proc.stdout


def tile(data, n_frames, out, seed=0):
    """``data`` tiled to ``n_frames`` frames with 0.001 nm Gaussian noise on the coordinates (timing only)."""
    from cgdml.data import CGDataset

    ds = CGDataset.load(data)
    reps = -(-n_frames // ds.n_frames)
    rng = np.random.default_rng(seed)
    coords = np.concatenate([ds.coords] * reps)[:n_frames]
    coords = coords + rng.normal(scale=0.001, size=coords.shape) * (np.arange(len(coords)) >= ds.n_frames)[:, None, None]
    forces = np.concatenate([ds.forces] * reps)[:n_frames]
    CGDataset(coords, forces, ds.system, dict(ds.info, tiled=n_frames)).save(out)


PRECISION_TITLE = "## Precision of the GDML force"


def _simulate_rate(py, model, precision, traj, log):
    run([py, "-m", "cgdml.simulate", model, "--replicas", "100", "--steps", "2000", "--burn-in", "0", "--quiet",
         "--threads", "1", "--precision", precision, "-o", traj], log)
    return json.loads(traj.with_suffix(".json").read_text())["timings"]["replica_steps_per_s"]


def precision_section(models, workdir, output, repeat, cut_sizes, log):
    """The float64/float32 throughput and force-error tables of the models {beads: path} (see the docstring)."""
    import mdtraj as md

    from cgdml.model import CGModel
    from cgdml.simulate import start_configurations

    py, work = sys.executable, Path(workdir) / "precision"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for beads, path in models.items():
        model = CGModel.load(path)
        rates = {"float64": [], "float32": []}
        for k in range(repeat):
            for prec in rates:
                rates[prec].append(_simulate_rate(py, path, prec, work / f"sim{beads}_{prec}_{k}.h5", log))
        R = np.concatenate([md.load(str(work / f"sim{beads}_float64_0.h5")).xyz[-500:].astype(np.float64),
                            start_configurations(model, 100)])
        F64, F32 = model.forces(R), model.with_precision("float32").forces(R)
        G64 = model.slow_forces(R)
        d = F32 - F64
        rows.append(dict(beads=beads, M=model.gdml.n_train, rates=rates, max=np.abs(d).max(),
                         rms=np.sqrt(np.mean(d ** 2)), rms_f=np.sqrt(np.mean(F64 ** 2)),
                         rms_g=np.sqrt(np.mean(G64 ** 2)), load=load_str()))
        log(f"{beads} beads: {rows[-1]}")
    cut = []
    size = {label: (CGModel.load(p).gdml.n_train, CGModel.load(p).n_beads) for label, p in models.items()}
    beads, path = max(models.items(), key=lambda item: size[item[0]])
    model = CGModel.load(path)
    for M in cut_sizes:
        g = model.gdml
        part = type(g)(g.train_descriptors[:M], g.coefficients[:M], g.sigma, g.quads, g.chiral_scale, g.offset,
                       g.n_beads).scaled(0.0)
        small = work / f"cut{beads}_{M}.npz"
        CGModel(part, model.prior, model.system, model.train_coords_sample, model.info, model.offsets).save(small)
        cut.append(dict(M=M, rates={prec: _simulate_rate(py, small, prec, work / f"cut{beads}_{M}_{prec}.h5", log)
                                    for prec in ("float64", "float32")}, load=load_str()))
        log(f"cut to {M}: {cut[-1]}")
    say = Report()
    say(PRECISION_TITLE)
    say()
    say(f"{time.strftime('%Y-%m-%d')}, this 2-core machine, beside other work (load = 1/5/15-minute averages when the "
        "row finished). `python benchmarks/bench_beads.py --precision-models "
        + " ".join(f"{b}=MODEL" for b in models) + f" --repeat {repeat}`: `python -m cgdml.simulate` with "
        "100 replicas x 2000 steps, 1 thread, the default multiple-time-step Langevin, `--precision float64` and "
        "`float32` run one after the other (each number one run; compare within a row). Force error: F(float32) - "
        "F(float64) of the whole model over the float64 run's last 500 frames and the 100 start frames; "
        "|F| and |F_gdml| are the RMS of the whole force and of its GDML term.")
    say()
    say("| beads | M (GDML configurations) | replica-steps/s float64 | float32 | speed-up | max abs error (kJ/mol/nm) "
        "| RMS error | RMS error / RMS F | RMS error / RMS F_gdml | load |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r64, r32 = r["rates"]["float64"], r["rates"]["float32"]
        say(f"| {r['beads']} | {r['M']} | {' / '.join(f'{x:,.0f}' for x in r64)} | "
            f"{' / '.join(f'{x:,.0f}' for x in r32)} | {' / '.join(f'{b / a:.2f}' for a, b in zip(r64, r32))} | "
            f"{r['max']:.2g} | {r['rms']:.2g} | {r['rms'] / r['rms_f']:.1e} | {r['rms'] / r['rms_g']:.1e} | "
            f"{r['load']} |")
    if cut:
        say()
        say(f"The {beads}-bead model cut to its first M configurations, GDML term scaled by 0 (the kernel cost of a "
            "model on M configurations, the prior's dynamics): replica-steps/s.")
        say()
        say("| M | float64 | float32 | load |")
        say("|---|---|---|---|")
        for c in cut:
            say(f"| {c['M']} | {c['rates']['float64']:,.0f} | {c['rates']['float32']:,.0f} | {c['load']} |")
    text = Path(output).read_text() if Path(output).exists() else ""
    head = text.split(PRECISION_TITLE)[0].rstrip("\n")
    write_text_atomic(output, (head + "\n\n" if head else "") + say.text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", nargs="+", type=int, default=[5, 6, 10, 11, 14, 20])
    p.add_argument("--methods", nargs="+", default=["two-layer", "nystrom"])
    p.add_argument("--tetra", default=str(ROOT / "data"))
    p.add_argument("--frames", type=int, default=None, help="tile every dataset to this many frames")
    p.add_argument("--workdir", default="/tmp/cgdml-bench-beads")
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/bench_beads.md"))
    p.add_argument("--precision-models", nargs="+", default=None, metavar="BEADS=MODEL",
                   help="only the precision tables, for these fitted models")
    p.add_argument("--repeat", type=int, default=1, help="runs per precision (--precision-models)")
    p.add_argument("--cut", nargs="*", type=int, default=[2000, 1000, 500, 333],
                   help="configuration counts of the cut-model table (--precision-models)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:6.0f} s] {m}", flush=True)  # noqa: E731
    if args.precision_models:
        models = {b: Path(m) for b, m in (x.split("=", 1) for x in args.precision_models)}
        return precision_section(models, args.workdir, args.output, args.repeat, args.cut, log)
    py = sys.executable
    for n in args.maps:
        work = Path(args.workdir) / f"b{n}"
        work.mkdir(parents=True, exist_ok=True)
        margs = map_args(n, work, args.tetra)
        if margs is None:
            log(f"{n} beads: tetrapeptide data not found, skipped")
            continue
        data = work / "cg.npz"
        if not data.exists():
            run([py, "-m", "cgdml.map", *margs, "--force-map", "aggregate", "-o", data], log)
        if args.frames:
            tiled = work / f"cg_{args.frames}.npz"
            if not tiled.exists():
                tile(data, args.frames, tiled)
            data = tiled
        n_frames = int(np.load(data)["coords"].shape[0])
        for method in args.methods:
            row_file = work / f"row_{method}_{n_frames}.json"
            if row_file.exists():
                continue
            model = work / f"model_{method}_{n_frames}.npz"
            fit_s, peak_gb, _ = run([py, "-c", PEAK, "cgdml.fit", data, "--method", method, "--quiet", "-o", model],
                                    log)
            speeds = {}
            for label, extra in (("1 thread", []), ("2 processes", ["--tasks", "2", "--jobs", "2"])):
                traj = work / f"sim_{method}_{label[0]}.h5"
                run([py, "-m", "cgdml.simulate", model, "--replicas", "100", "--steps", "2000", "--burn-in", "0",
                     "--quiet", *extra, "-o", traj], log)
                speeds[label] = json.loads(traj.with_suffix(".json").read_text())["timings"]["replica_steps_per_s"]
            info = json.loads(model.with_suffix(".json").read_text())
            row = dict(beads=n, frames=n_frames, tiled=bool(args.frames), method=method, fit_s=fit_s,
                       peak_gb=peak_gb, speeds=speeds, load=load_str(),
                       model_size=info["chosen"].get("n_inducing") or info["chosen"].get("n_layer1_models"))
            row_file.write_text(json.dumps(row))
    # the table holds every finished row in the work directory, so that runs with and without --frames add up
    rows = sorted((json.loads(f.read_text()) for f in Path(args.workdir).glob("b*/row_*.json")),
                  key=lambda r: (r["beads"], r["frames"], r["method"]))
    say = Report()
    say("# Scale in beads: default fits and simulation throughput")
    say()
    say(f"{time.strftime('%Y-%m-%d')}, this 2-core machine; fit = `python -m cgdml.fit DATA --method M` with defaults "
        "(child process; peak RSS of it and its children); simulate = `python -m cgdml.simulate` with 100 "
        "replicas x 2000 steps at its default step (replica-steps count inner steps).")
    say()
    say("| beads | frames | method | fit (min) | peak memory (GB) | replica-steps/s, 1 thread | 2 processes | load |")
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r['beads']} | {r['frames']}{' (tiled)' if r['tiled'] else ''} | {r['method']} | {r['fit_s'] / 60:.1f} "
            f"| {r['peak_gb']:.2f} | {r['speeds']['1 thread']:,.0f} | {r['speeds']['2 processes']:,.0f} | {r['load']} |")
    say()
    say(f"Wall time of this run: {time.perf_counter() - t0:.0f} s.")
    say.write(args.output)


if __name__ == "__main__":
    main()
