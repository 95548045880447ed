"""Active learning against plain all-atom MD at the same all-atom cost (issue 26, item 4).

Alanine dipeptide, 5-bead map, the shipped implicit-solvent reference (20 ns). Both arms start from the same
poor dataset, the first ``--start-ns`` ns of the shipped run, and are fitted with the same settings (``FIT``):

- active: :func:`cgdml.learn.active_learn` with an all-atom budget of ``--budget-ns`` (restrained labelling,
  ``--per-round`` configurations per round);
- plain MD: the shipped run continued, i.e. its first start + b ns for b in ``--plain-ns``.

Every model (each active round's, each plain-MD fit) is judged the same way: ``EVAL`` replicas from its own start
frames, (phi, psi) js against the full shipped reference, and the reference's split-half floor. Caveat: the
plain-MD arm's frames are a prefix of the reference itself (no independent long alanine-dipeptide run is in the
repository), which favours it. Resumable: models, simulations and scores are cached under ``--out``.

Run: ``nice -n 10 python benchmarks/bench_active.py --out /tmp/bench_active``; writes
benchmarks/results/bench_active.md.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from _common import Report, elapsed_log, load_str

ROOT = Path(__file__).resolve().parents[1]
FIT = dict(method="nystrom", n_inducing=300)
EVAL = dict(replicas=100, steps=10000, save_every=50, guard="off")
ROUND_SIM = dict(replicas=20, steps=6000, save_every=50)


def evaluate(model_path, reference, cache, seed=1):
    """(js, floor) of a model's (phi, psi) landscape from an EVAL run, cached in ``cache`` (JSON)."""
    from cgdml.fes import compare_landscapes
    from cgdml.model import CGModel
    from cgdml.simulate import simulate_model

    cache = Path(cache)
    if cache.exists():
        d = json.loads(cache.read_text())
        return d["js"], d["floor"]
    model = CGModel.load(model_path)
    run = simulate_model(model, seed=seed, progress=False, **EVAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = compare_landscapes(run.coordinates(), reference, n_boot=0, topology=reference.cg_topology)
    js, floor = float(report["mean"]["js"]), float(report["mean"]["noise_floor"]["js"])
    cache.write_text(json.dumps(dict(js=js, floor=floor)))
    return js, floor


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/bench_active")
    p.add_argument("--start-ns", type=float, default=1.0)
    p.add_argument("--budget-ns", type=float, default=1.0)
    p.add_argument("--per-round", type=int, default=12)
    p.add_argument("--plain-ns", default="0.5,1,2,4,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", default="force", help="active arms: the loop's score, comma-separated")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/bench_active.md"))
    a = p.parse_args()
    from cgdml import fit_cg_model
    from cgdml.io.shipped import default_dataset_paths
    from cgdml.learn import active_learn, allatom_map, load_allatom_reference, map_reference

    log, t0 = elapsed_log(), time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = default_dataset_paths()
    allatom = load_allatom_reference(paths.topology, paths.trajectory)
    cgmap = allatom_map(allatom, "ala2-5")
    full = map_reference(allatom, cgmap)
    per_ns = int(round(1000.0 / allatom.save_every_ps))
    start = map_reference(allatom, cgmap, slice(0, int(round(a.start_ns * per_ns))))
    log(f"reference {full.n_frames} frames; start {start.n_frames} frames")

    arms = {}
    for score in a.scores.split(","):
        name = "active" if score == "force" else f"active_{score}"
        result = active_learn(allatom, cgmap, start, out / name, budget_ns=a.budget_ns, per_round=a.per_round,
                              fit=dict(FIT), simulate=ROUND_SIM, reference=full, seed=a.seed, progress=False,
                              max_rounds=100, score=score)
        log(f"active learning ({score}): {len(result['rounds'])} rounds; {result['stopped']}")
        rows = []
        for r in result["rounds"]:
            rdir = out / name / f"round_{r['round']:03d}"
            js, floor = evaluate(rdir / "model.npz", full, rdir / "eval.json")
            rows.append(dict(r, eval_js=js, floor=floor))
            log(f"active ({score}) round {r['round']}: {a.start_ns + r['allatom_ns_before']:.3f} ns, js {js:.4f}")
        arms[score] = (result, rows)
    result, active = next(iter(arms.values()))

    plain = []
    for b in [0.0] + [float(x) for x in a.plain_ns.split(",")]:
        pdir = out / f"plain_{b:g}"
        pdir.mkdir(exist_ok=True)
        if b == 0.0:
            model_path = out / "active" / "round_000" / "model.npz"        # the same fit of the same frames
        else:
            model_path = pdir / "model.npz"
            if not model_path.exists():
                n = int(round((a.start_ns + b) * per_ns))
                fit_cg_model(full.subset(slice(0, n)), **FIT, seed=a.seed, progress=False).save(model_path)
        js, floor = evaluate(model_path, full, pdir / "eval.json")
        plain.append(dict(ns=a.start_ns + b, js=js, floor=floor))
        log(f"plain MD {a.start_ns + b:g} ns: js {js:.4f}")

    say = Report()
    floor = active[0]["floor"]
    goal = 1.5 * floor
    say("# Active learning against plain all-atom MD (alanine dipeptide)")
    say()
    say(f"{time.strftime('%Y-%m-%d')}, load {load_str()}. `python benchmarks/bench_active.py --start-ns {a.start_ns:g} "
        f"--budget-ns {a.budget_ns:g} --per-round {a.per_round} --plain-ns {a.plain_ns} --scores {a.scores}` (one "
        "seed; the steps ran under loads of 6-13 on 2 cores). Shipped implicit-solvent "
        f"alanine dipeptide (20 ns, 1 ps frames), 5-bead map, aggregate force map. Both arms start from the first "
        f"{a.start_ns:g} ns ({start.n_frames} frames) and are fitted with `fit_cg_model(**{FIT})` (basin balancing "
        f"on, force posterior on). Each model is judged by a run of {EVAL['replicas']} replicas x {EVAL['steps']} "
        f"steps (default MTS 3 fs x 2) from its own start frames: (phi, psi) js against the full 20 ns; split-half "
        f"floor {floor:.4f}, goal 1.5 x floor = {goal:.4f}.")
    say()
    say(f"Labelling: {json.dumps(result['settings']['labeller'])}; {result['settings']['ns_per_configuration'] * 1000:g} "
        f"ps of all-atom time per configuration; per round {a.per_round} configurations from the top "
        f"{result['settings']['top_fraction']:g} by the arm's score (uncertainty) of a {ROUND_SIM['replicas']} x "
        f"{ROUND_SIM['steps']}-step run. Caveat: the plain-MD arm's frames are a prefix of the reference itself.")
    say()
    for score, (_, rows) in arms.items():
        unit = "kJ/mol/nm" if score == "force" else "kJ/mol/rad"
        say(f"## Active learning, score {score!r}")
        say()
        say(f"| round | all-atom ns (start + labelled) | frames (restrained) | {score} uncertainty q0.5 / q0.9 ({unit}) "
            "| round-run js | js (eval) | js / floor |")
        say("|---|---|---|---|---|---|---|")
        for r in rows:
            q = r["uncertainty_quantiles"]
            say(f"| {r['round']} | {a.start_ns + r['allatom_ns_before']:.3f} | {r['n_frames']} ({r['n_restrained']}) "
                f"| {q['0.5']:.3g} / {q['0.9']:.3g} | {r['js']:.4f} | {r['eval_js']:.4f} | {r['eval_js'] / floor:.2f} |")
        say()
    say("## Plain all-atom MD, same fit")
    say()
    say("| all-atom ns | js (eval) | js / floor |")
    say("|---|---|---|")
    for r in plain:
        say(f"| {r['ns']:g} | {r['js']:.4f} | {r['js'] / floor:.2f} |")
    say()

    def first(rows, key, ns):
        hit = [ns(r) for r in rows if r[key] <= goal]
        return min(hit) if hit else None

    t_plain = first(plain, "js", lambda r: r["ns"])
    say(f"Plain MD reaches 1.5 x floor {'at %g ns' % t_plain if t_plain else 'not within %g ns' % plain[-1]['ns']}.")
    for score, (_, rows) in arms.items():
        t_active = first(rows, "eval_js", lambda r: a.start_ns + r["allatom_ns_before"])
        best_a = min(rows, key=lambda r: r["eval_js"])
        say(f"Active learning ({score}): 1.5 x floor {'at %.3f ns' % t_active if t_active else 'not reached'}"
            + (f" (plain / active {t_plain / t_active:.2f})" if t_active and t_plain else "")
            + f"; best round {best_a['round']} (js {best_a['eval_js']:.4f} at "
            f"{a.start_ns + best_a['allatom_ns_before']:.3f} ns).")
    say(f"Wall time of this invocation: {time.perf_counter() - t0:.0f} s (cached steps not rerun).")
    say.write(a.results)


if __name__ == "__main__":
    main()
