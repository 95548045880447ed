"""``python -m cgdml.learn -o DIR --budget-ns 2``: active learning of a CG model (:func:`cgdml.learn.active_learn`).

Rounds of fit, short CG simulation, choice of the most uncertain configurations, restrained all-atom labelling
with OpenMM and refit, until the all-atom budget is spent or the force uncertainty falls below a target.
Rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

from .._cli import (COUNT_MAX, ArgumentParser, add_verbosity_arguments, configure_logging, cpu_count, float_between,
                    int_between, run_cli, seed_int, show_progress)
from .._io import CgdmlError
from . import LABEL_DEFAULTS, LOOP_DEFAULTS, active_learn, allatom_map, load_allatom_reference, map_reference

_count = int_between(1, COUNT_MAX)
_positive = float_between(0, 1e9, low_open=True)


def build_parser():
    sim = LOOP_DEFAULTS["simulate"]
    p = ArgumentParser(prog="python -m cgdml.learn", description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("-o", "--output", required=True, help="run directory (one subdirectory per round, log.json)")
    p.add_argument("--budget-ns", type=float, required=True, help="all-atom ns the loop may spend on labelling (> 0)")
    p.add_argument("--allatom", nargs=2, metavar=("PDB", "NPZ"), default=None,
                   help="a cgdml.reference run (its topology and frames; its settings rebuild the OpenMM system); "
                        "default: the shipped alanine-dipeptide reference")
    p.add_argument("--map", default="ala2-5", help="map preset or TOML file (default ala2-5)")
    p.add_argument("--force-map", choices=("slice", "aggregate", "optimal"), default="aggregate",
                   help="force map (default aggregate)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start-ns", type=_positive, default=1.0,
                       help="start from the first NS ns of the all-atom frames (default 1)")
    start.add_argument("--dataset", default=None, help="start from this CG dataset (.npz, mapped with --map)")
    p.add_argument("--reference", default=None, help="CG dataset to report js against each round (optional)")
    p.add_argument("--target-uncertainty", type=_positive, default=None,
                   help="stop when the --quantile of the simulated frames' --score uncertainty is below this "
                        "(kJ/mol/nm or kJ/mol/rad)")
    p.add_argument("--quantile", type=float_between(0, 1, low_open=True), default=LOOP_DEFAULTS["quantile"],
                   help=f"quantile of the stopping rule (default {LOOP_DEFAULTS['quantile']:g})")
    p.add_argument("--per-round", type=_count, default=LOOP_DEFAULTS["per_round"],
                   help=f"configurations labelled per round (default {LOOP_DEFAULTS['per_round']})")
    p.add_argument("--top-fraction", type=float_between(0, 1, low_open=True), default=LOOP_DEFAULTS["top_fraction"],
                   help=f"choose among this most uncertain fraction (default {LOOP_DEFAULTS['top_fraction']:g})")
    p.add_argument("--max-rounds", type=_count, default=LOOP_DEFAULTS["max_rounds"],
                   help=f"at most this many rounds (default {LOOP_DEFAULTS['max_rounds']})")
    p.add_argument("--score", choices=("force", "dihedral"), default=LOOP_DEFAULTS["score"],
                   help="uncertainty that ranks frames and stops the loop: force (RMS force std, kJ/mol/nm) or "
                        f"dihedral (generalised force along the soft dihedrals, kJ/mol/rad); default {LOOP_DEFAULTS['score']}")
    p.add_argument("--method", default="auto", choices=("auto", "nystrom", "two-layer", "single"),
                   help="fit method of each round (default auto, as python -m cgdml.fit)")
    p.add_argument("--replicas", type=_count, default=sim["replicas"],
                   help=f"CG replicas per round (default {sim['replicas']})")
    p.add_argument("--steps", type=_count, default=sim["steps"], help=f"CG steps per replica (default {sim['steps']})")
    p.add_argument("--k-restraint", type=_positive, default=LABEL_DEFAULTS["k_restraint"],
                   help=f"restraint on each bead, kJ/mol/nm^2 (default {LABEL_DEFAULTS['k_restraint']:g})")
    p.add_argument("--label-frames", type=_count, default=LABEL_DEFAULTS["n_frames"],
                   help=f"all-atom frames recorded per configuration (default {LABEL_DEFAULTS['n_frames']})")
    p.add_argument("--label-every-ps", type=_positive, default=LABEL_DEFAULTS["save_every_ps"],
                   help=f"their spacing in ps (default {LABEL_DEFAULTS['save_every_ps']:g})")
    p.add_argument("--equilibrate-ps", type=float_between(0, 1e6), default=LABEL_DEFAULTS["equilibrate_ps"],
                   help=f"restrained equilibration before recording, ps (default {LABEL_DEFAULTS['equilibrate_ps']:g})")
    p.add_argument("--timestep-fs", type=float_between(0, 10, low_open=True), default=LABEL_DEFAULTS["timestep_fs"],
                   help=f"all-atom time step in fs (default {LABEL_DEFAULTS['timestep_fs']:g})")
    p.add_argument("--platform", default="CPU", help="OpenMM platform (default CPU)")
    p.add_argument("--threads", type=int_between(0, cpu_count(), "the CPUs of this machine"), default=1,
                   help="OpenMM CPU threads (default 1)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of fits, simulations and labelling (default 0)")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    from ..data import CGDataset
    from ..io.shipped import default_dataset_paths

    pdb, npz = a.allatom if a.allatom else default_dataset_paths()[:2]
    allatom = load_allatom_reference(pdb, npz)
    cgmap = allatom_map(allatom, a.map, a.force_map)
    if a.dataset:
        dataset = CGDataset.load(a.dataset)
    else:
        n = int(round(a.start_ns * 1000.0 / allatom.save_every_ps))
        if n < 1 or n > len(allatom.positions):
            raise CgdmlError(f"--start-ns {a.start_ns:g} asks for {n} frames; {npz} has {len(allatom.positions)} "
                             f"({allatom.save_every_ps:g} ps apart)")
        dataset = map_reference(allatom, cgmap, slice(0, n))
    reference = CGDataset.load(a.reference) if a.reference else None
    result = active_learn(
        allatom, cgmap, dataset, a.output, budget_ns=a.budget_ns, target_uncertainty=a.target_uncertainty,
        quantile=a.quantile, per_round=a.per_round, top_fraction=a.top_fraction, max_rounds=a.max_rounds,
        fit=dict(method=a.method), simulate=dict(replicas=a.replicas, steps=a.steps),
        labeller=dict(k_restraint=a.k_restraint, n_frames=a.label_frames, save_every_ps=a.label_every_ps,
                      equilibrate_ps=a.equilibrate_ps, timestep_fs=a.timestep_fs, platform=a.platform,
                      threads=a.threads),
        reference=reference, seed=a.seed, progress=show_progress(a), score=a.score)
    print(f"{len(result['rounds'])} round(s); {result['stopped']}; final model {result['final_model']}")
    return 0


def cli():
    """The console script ``cgdml-learn`` (setup.cfg): the same command as ``python -m cgdml.learn``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
