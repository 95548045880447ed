"""``python -m cgdml.fit``: fit a CG force field (prior + inducing-point or two-layer GDML), write MODEL.npz + .json.

After the fit, dihedral basins that the training frames leave disconnected get the populations the frames give
them (:mod:`cgdml.basins`; ``--no-balance-basins`` turns this off).

With no dataset it fits the shipped alanine-dipeptide data. Work is checkpointed in ``MODEL.npz.work/``, and a
rerun after an interruption resumes from it. Options are the parameters of :class:`cgdml.pipeline.CGEstimator`
and the method's learner (``--n-folds`` is ``n_folds``); one the method does not take is refused.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ._cli import (ArgumentParser, add_dataset_arguments, add_verbosity_arguments, claim_outputs, configure_logging,
                   dataset_from_args, run_cli, show_progress, with_provenance)
from ._io import CgdmlError, check_output, save_json, tomllib
from .selection import judged_summary, selection_note

COMMAND = "cgdml.fit"
FIT_METHODS = ("two-layer", "nystrom", "single")

# The estimator parameters offered as options (--name-with-dashes, or keys of --config), with their help; types,
# defaults and the methods that take each one come from the estimators (cgdml.pipeline.method_parameters).
HELP = {
    "n_frames": "train the learner on this many frames, drawn uniformly over the strata (the prior always sees "
                "every frame)",
    "n_inducing": "inducing configurations m: they, not the frame count, set the cost of an inducing-point fit "
                  "(its preconditioner holds about 24 (m (3 beads - 6))^2 bytes; a CG iteration costs "
                  "O(frames x m)); auto: 1000, fewer for large molecules so that m (3 beads - 6) <= 12000 "
                  "(444 for 11 beads, 333 for 14)",
    "sigma": "kernel width(s), 1/nm: the hold-out grid of nystrom, one value for single",
    "lam": "regularisation(s), relative to the mean kernel diagonal: the hold-out grid of nystrom, one value for "
           "single",
    "n_models": "layer-1 sub-models",
    "batch_size": "frames per layer-1 sub-model",
    "mean_set_size": "configurations in the mean-force set, the layer-2 training set",
    "sigma1": "candidate kernel widths of layer 1, 1/nm",
    "lam1": "candidate regularisations of layer 1, relative to the mean kernel diagonal",
    "sigma2": "candidate kernel widths of layer 2, 1/nm",
    "lam2": "candidate regularisations of layer 2, relative",
    "n_folds": "cross-validation folds (>= 2 when a hyperparameter has several candidates)",
    "cv_models": "sub-models per candidate and fold during cross-validation",
    "cv_mean_set_size": "layer-2 training size during cross-validation",
    "cv_holdout": "held-out frames scored per fold",
    "cv_score": "hyperparameter score (cross-validation or hold-out): dihedral (held-out forces projected on the "
                "soft dihedrals), force (plain force error) or auto (dihedral when the topology has one)",
    "strata": "stratification of the frames: auto, phi-psi, backbone-kmeans or kmeans",
    "grid_bins": "bins per angle of the phi-psi strata grid",
    "n_strata": "k-means strata",
    "chiral": "add the sines of the topology's dihedrals and impropers to the descriptor (tells mirror images "
              "apart)",
    "prior_repulsion": "short-range repulsion between beads far apart in the bead graph in the prior",
    "prior_dihedrals": "Boltzmann-inverted free-energy profiles of the backbone phi and psi (or the proper "
                       "dihedrals) in the prior (auto: on when the beads belong to two or more amino acids, "
                       "backbone map or C-alpha trace)",
    "residual_weight": "weight (0 to 1) of the learned force on top of the prior; default: judged by short runs",
    "refine_pairs": "correct distances of beads 3+ bonds apart by iterative Boltzmann inversion (judged by short runs)",
    "balance_basins": "give dihedral arcs separated by unsampled gaps their training populations, measured on the "
                      "fitted model by umbrella sampling (a no-op when no dihedral has such gaps)",
    "uncertainty": "compute the force posterior (the model's force uncertainty) and the simulation guard's "
                   "threshold, saved in the model file (docs/uncertainty.md)",
    "n_jobs": "one-thread local processes for the sub-model trainings (-1: one per core; -n: all cores but n - 1)",
    "scheduler": "train the layer-1 sub-models on a Dask cluster: tcp://HOST:PORT or a scheduler file (instead of "
                 "--n-jobs local processes)",
    "seed": "random seed, >= 0",
}
OLD_SPELLINGS = {"n_folds": "--folds", "n_jobs": "--jobs", "n_inducing": "--inducing"}  # still accepted


def _flags(name):
    """The option strings of the parameter ``name``: --name-with-dashes, and its old spelling."""
    return ["--" + name.replace("_", "-")] + ([OLD_SPELLINGS[name]] if name in OLD_SPELLINGS else [])


def _option_help(name, kinds):
    """HELP[name] with the methods that take the option and their true defaults (``kinds``: parameter_table)."""
    defaults = kinds[2]
    shown = lambda v: ("all" if v is None else ("on" if v else "off") if isinstance(v, bool)  # noqa: E731
                       else " ".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple))
                       else f"{v:g}" if isinstance(v, float) else str(v))
    by_value = {}
    for method, value in defaults.items():
        by_value.setdefault(shown(value), []).append(method)
    where = "" if len(defaults) == len(FIT_METHODS) else " and ".join(defaults) + ("" if len(defaults) > 1 else " only")
    default = "default " + (next(iter(by_value)) if len(by_value) == 1 else
                            ", ".join(f"{v} for {' and '.join(ms)}" for v, ms in by_value.items()))
    if name == "scheduler":
        default = "default: local processes"
    return f"{HELP[name]} ({where + '; ' if where else ''}{default})"


def build_parser():
    from .pipeline import parameter_table

    table = parameter_table(HELP)
    p = ArgumentParser(prog="python -m cgdml.fit", description=__doc__.splitlines()[0])
    add_dataset_arguments(p)
    p.add_argument("--config", help="TOML file with fit options, the option names with dashes or underscores "
                   "(command-line options override it)")
    p.add_argument("--method", choices=["auto", *FIT_METHODS], default="auto",
                   help="auto (the default): nystrom, for every map; "
                   "two-layer: the two-layer ensemble (hyperparameters by K-fold cross-validation); nystrom: "
                   "inducing-point GDML fitted to every frame (sigma and lam by hold-out); single: one GDML on "
                   "--n-frames frames, a baseline")
    g = p.add_argument_group("fit options", "each names a parameter of the fit's estimators; one that the chosen "
                             "method does not take is refused")
    for name, (kind, many, defaults) in table.items():
        text = _option_help(name, table[name])
        if kind is bool:
            g.add_argument(*_flags(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(*_flags(name), dest=name, type=kind, nargs="+" if many else None, default=None, help=text,
                           metavar=name.upper() if kind is not str else "NAME")
    add_verbosity_arguments(p)
    p.add_argument("-o", "--output", required=True, help="model file to write (.npz); a .json summary goes beside it")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    configure_logging(args)
    output = Path(args.output)
    if output.suffix != ".npz":
        raise CgdmlError(f"{output}: the model file must end in .npz")
    check_output(output)
    summary = output.with_suffix(".json")
    workdir = output.with_name(output.name + ".work")
    if workdir.exists() and not workdir.is_dir():
        raise CgdmlError(f"{workdir}: exists and is not a directory; the fit keeps its checkpoints there: move or "
                         "delete it, or choose another output name")
    typed = {name: next((o for o in _flags(name) if any(x == o or x.startswith(o + "=") for x in argv)),
                        _flags(name)[0]) for name in HELP if getattr(args, name) is not None}
    with claim_outputs(COMMAND, [output], sidecars={summary: output}, kinds={output: "model"}, temps=[workdir],
                       inputs=[getattr(args, "dataset", None), args.coords, args.cg_forces, args.config, args.map]):
        return _fit(args, typed, output, summary, workdir)


def read_config(path):
    """Fit options from a TOML file: keys are option names, with dashes or underscores (a [fit] table or the top
    level); errors name the key."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise CgdmlError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise CgdmlError(f"{path}: is a directory, not a TOML config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CgdmlError(f"{path}: invalid TOML ({exc})") from None
    except OSError as exc:
        raise CgdmlError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    section = raw.get("fit", raw)
    if not isinstance(section, dict):
        raise CgdmlError(f"{path}: key 'fit' must be a table of fit options")
    from .pipeline import parameter_table

    names = {o.lstrip("-").replace("-", "_"): name for name in HELP for o in _flags(name)}
    table = parameter_table(HELP)
    config = {}
    for key, value in section.items():
        name = names.get(key.replace("-", "_"))
        if name is None:
            raise CgdmlError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(HELP))})")
        kind, many, _ = table[name]
        values = value if isinstance(value, list) else [value]
        if not many and isinstance(value, list):
            raise CgdmlError(f"{path}: key {key!r} takes one value, not a list")
        if not all((isinstance(v, kind) and (kind is bool or not isinstance(v, bool)))
                   or (kind is float and isinstance(v, int) and not isinstance(v, bool)) for v in values):
            raise CgdmlError(f"{path}: key {key!r} must be {'a list of ' if many else ''}{kind.__name__}")
        config[name] = [kind(v) for v in values] if many else kind(value)
    return config


def _fit(args, typed, output, summary, workdir):
    from .pipeline import BalancingError, TooFewFramesError, cg_estimator, check_fit_options, fit_params, resolve_method
    from .validation import ParameterError

    options = read_config(args.config) if args.config else {}
    options.update({name: getattr(args, name) for name in HELP if getattr(args, name) is not None})
    label = lambda name: typed.get(name) or (f"key {name!r} in {args.config}" if name in options  # noqa: E731
                                             else _flags(name)[0])
    try:
        check_fit_options(options)                     # before the data are read
        if options.get("scheduler") is not None:
            from .distributed import check_scheduler

            check_scheduler(options["scheduler"])
        dataset = dataset_from_args(args)
        method = resolve_method(args.method)
        progress = show_progress(args)
        estimator = cg_estimator(method, progress=progress, workdir=workdir, **fit_params(method, options))
    except ParameterError as exc:
        hint = " (chosen by --method auto; give --method to choose another)" \
            if args.method == "auto" and exc.problem.startswith("does not apply") else ""
        raise CgdmlError(f"{label(exc.name)} {exc.problem}{hint}") from None
    print(f"fit method: {method}{' (auto)' if args.method == 'auto' else ''}; CG topology: "
          f"{dataset.cg_topology.describe()}; {dataset.n_frames} frames, {dataset.n_beads} beads")
    cached = [f for f in workdir.glob("*.npz") if not f.name.startswith(".")] if workdir.is_dir() else []
    if cached:
        print(f"resuming from {len(cached)} checkpoint file(s) in {workdir}")
    try:
        model = estimator.fit(dataset).model_
    except TooFewFramesError as exc:
        raise CgdmlError(f"{_dataset_source(args)}: {exc}") from None
    except BalancingError as exc:
        raise CgdmlError(f"basin balancing failed ({exc.reason}); rerun with --no-balance-basins to skip it (the GDML "
                         "fit resumes from its checkpoints)") from None
    strata = model.info.get("strata", {})
    print(f"prior dihedral profiles: {model.info['prior_dihedral_profiles']}; strata: {strata.get('method', 'none')}"
          + (f" ({strata['n_occupied']} occupied)" if "n_occupied" in strata else ""))
    print("chosen " + " ".join(f"{k}={v:g}" for k, v in model.info["chosen"].items()
                               if k.startswith(("sigma", "lam")) and not k.endswith("absolute")))
    note = selection_note(model.info.get("selection"))
    if note:
        print(note)
    for line in judged_summary(model.info):
        print(line)
    for term in model.info.get("basin_balance", []):
        print(f"balanced dihedral {'-'.join(map(str, term['beads']))}: arc populations "
              f"{' '.join(f'{p:.2%}' for p in term['model_population'])} -> "
              f"{' '.join(f'{p:.2%}' for p in term['balanced_population'])} (offsets "
              f"{' '.join(f'{d:+.1f}' for d in term['offset_kJ_per_mol'])} kJ/mol; "
              f"umbrella {term['umbrella']['wall_s']:.0f} s)")
    print(model.describe_uncertainty() + _uncertainty_cost(model.info))
    model.save(output)
    save_json(summary, with_provenance(model.info, COMMAND, output))
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {output} and {summary} ({dataset.n_frames} frames, {dataset.n_beads} beads, "
          f"{model.info['wall_time_s']:.0f} s)")
    return 0


def _uncertainty_cost(info):
    """'' or '; N s of the fit' for the posterior's share of a fit's time."""
    t = info.get("timings", {})
    spent = t.get("uncertainty_s", 0.0) + t.get("uncertainty_threshold_s", 0.0)
    return f" ({spent:.0f} s of the {info['wall_time_s']:.0f} s fit)" if spent else ""


def _dataset_source(args):
    if getattr(args, "dataset", None):
        return str(args.dataset)
    if args.coords:
        return str(args.coords)
    return "the shipped reference"


def cli():
    """The console script ``cgdml-fit`` (setup.cfg): the same command as ``python -m cgdml.fit``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
