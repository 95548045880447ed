"""``python -m cgdml.fit``: fit a CG force field (prior + inducing-point or two-layer GDML), write MODEL.npz + .json.

After the fit, dihedral basins that the training frames leave disconnected get the populations the frames
give them (:mod:`cgdml.basins`; ``--no-balance-basins`` turns this off).

With no dataset it maps and fits the shipped alanine-dipeptide data. Work is checkpointed in
``MODEL.npz.work/``; rerunning the same command after an interruption resumes from it.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ._cli import (ArgumentParser, add_dataset_arguments, add_verbosity_arguments, claim_outputs, configure_logging,
                   dataset_from_args, positive_int, run_cli, with_provenance)
from ._io import CgdmlError, check_output, save_json, tomllib

COMMAND = "cgdml.fit"

# option name -> (type, is a list, help): the TwoLayerGDML options, as flags and as keys of --config.
# The defaults are TwoLayerGDML's (cgdml.ensemble).
OPTIONS = {
    "n_models": (int, False, "layer-1 sub-models (default 12)"),
    "batch_size": (int, False, "frames per layer-1 sub-model (default 2000)"),
    "mean_set_size": (int, False, "configurations in the mean-force set, the layer-2 training set (default 2000)"),
    "sigma1": (float, True, "candidate kernel widths of layer 1, 1/nm (default 2 4 8; for --method single/nystrom "
                            "their sigma grid)"),
    "lam1": (float, True, "candidate regularisations of layer 1, relative to the mean kernel diagonal "
                          "(default 0.3 1 3)"),
    "sigma2": (float, True, "candidate kernel widths of layer 2, 1/nm (default 1 2 4)"),
    "lam2": (float, True, "candidate regularisations of layer 2, relative (default 0.001 0.01 0.1)"),
    "folds": (int, False, "cross-validation folds (default 2; >= 2 when a hyperparameter has several candidates)"),
    "cv_models": (int, False, "sub-models per candidate and fold during cross-validation (default 2)"),
    "cv_mean_set_size": (int, False, "layer-2 training size during cross-validation (default 600)"),
    "cv_holdout": (int, False, "held-out frames scored per fold (default 4000)"),
    "strata": (str, False, "stratification: auto (default), phi-psi, backbone-kmeans or kmeans"),
    "grid_bins": (int, False, "bins per angle of the phi-psi strata grid (default 12)"),
    "n_strata": (int, False, "k-means strata (default 50)"),
    "cv_score": (str, False, "cross-validation (two-layer) or hold-out (nystrom) score: auto (default: dihedral "
                             "when the topology has one), dihedral (held-out forces projected on the soft "
                             "dihedrals) or force (plain force error)"),
    "chiral": (bool, False, "add the sines of the topology's dihedrals and impropers to the descriptor "
                            "(default on; tells mirror images apart)"),
    "prior_repulsion": (bool, False, "short-range repulsion between beads far apart in the bead graph in the "
                                     "prior (default on)"),
    "prior_dihedrals": (bool, False, "Boltzmann-inverted free-energy profiles of the backbone phi and psi (or the "
                                     "proper dihedrals) in the prior (default: on for peptides of two or more "
                                     "residues, off otherwise)"),
    "jobs": (int, False, "local processes for the layer-1 trainings (default 1; negative: all cores but |n| - 1)"),
    "seed": (int, False, "random seed, >= 0 (default 0)"),
}
PARAM_NAME = {"folds": "n_folds", "jobs": "n_jobs"}


def read_config(path):
    """Fit options from a TOML file (keys as in OPTIONS, dashes or underscores); errors name the key."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise CgdmlError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CgdmlError(f"{path}: invalid TOML ({exc})") from None
    except OSError as exc:
        raise CgdmlError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    section = raw.get("fit", raw)
    if not isinstance(section, dict):
        raise CgdmlError(f"{path}: key 'fit' must be a table of fit options")
    config = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if name not in OPTIONS:
            raise CgdmlError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(OPTIONS))})")
        kind, is_list, _ = OPTIONS[name]
        values = value if isinstance(value, list) else [value]
        if not is_list and isinstance(value, list):
            raise CgdmlError(f"{path}: key {key!r} takes one value, not a list")
        if not all((isinstance(v, kind) and (kind is bool or not isinstance(v, bool)))
                   or (kind is float and isinstance(v, int) and not isinstance(v, bool)) for v in values):
            raise CgdmlError(f"{path}: key {key!r} must be {'a list of ' if is_list else ''}{kind.__name__}")
        config[name] = [kind(v) for v in values] if is_list else kind(value)
    return config


def _check_options(options, config=None):
    """Counts >= 1, --jobs not 0, hyperparameter grids of positive finite numbers: checked before any work."""
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        where = f" (option {flag} or key {name!r} in {config})" if config else ""
        kind, is_list, _ = OPTIONS[name]
        if name == "cv_score":
            from .geometry import CV_SCORES

            if value not in CV_SCORES:
                raise CgdmlError(f"{flag} must be {', '.join(CV_SCORES[:-1])} or {CV_SCORES[-1]}, got {value!r}{where}")
        elif name == "jobs":
            if value == 0:
                raise CgdmlError(f"{flag} must be >= 1 (or negative: all cores but |n| - 1), got 0{where}")
        elif name == "seed":
            if value < 0:
                raise CgdmlError(f"{flag} must be >= 0, got {value}{where}")
        elif kind is int and value < 1:
            raise CgdmlError(f"{flag} must be >= 1, got {value}{where}")
        elif is_list and not all(v > 0 and v < float("inf") for v in value):
            raise CgdmlError(f"{flag} must be positive numbers, got {' '.join(f'{v:g}' for v in value)}{where}")


def method_params(method, params, args):
    """The :func:`cgdml.pipeline.fit_cg_model` keyword arguments of ``method`` from the command-line options
    (``params``, TwoLayerGDML names): the Nyström and single fits take --sigma1/--lam1 as their grid."""
    if method == "two-layer":
        return params
    if method == "nystrom":
        keep = ("chiral", "prior_repulsion", "prior_dihedrals", "strata", "grid_bins", "n_strata", "cv_score")
        return dict({k: v for k, v in params.items() if k in keep},
                    n_inducing="auto" if args.inducing is None else args.inducing,
                    sigma=params.get("sigma1", (2.0, 4.0, 8.0)), lam=params.get("lam1", (0.3, 1.0, 3.0)))
    keep = ("chiral", "prior_repulsion", "prior_dihedrals", "strata", "grid_bins")
    return dict({k: v for k, v in params.items() if k in keep}, n_frames=args.n_frames,
                sigma=params.get("sigma1", [4.0])[0], lam=params.get("lam1", [3.0])[0])


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.fit", description=__doc__.splitlines()[0])
    add_dataset_arguments(p)
    p.add_argument("--config", help="TOML file with fit options (command-line options override it)")
    p.add_argument("--method", choices=["auto", "nystrom", "two-layer", "single"], default="auto",
                   help="auto (the default): two-layer for peptides of two or more residues, nystrom otherwise; "
                   "nystrom: inducing-point GDML fitted to every frame (--sigma1/--lam1 are its hold-out grid, "
                   "default 2 4 8 / 0.3 1 3); two-layer: the two-layer ensemble; single: the single-GDML baseline")
    p.add_argument("--n-frames", type=positive_int, default=3000, help="frames for --method single (default 3000)")
    p.add_argument("--inducing", type=positive_int, default=None, help="inducing configurations for --method nystrom "
                   "(default 1000, fewer for large molecules so that m (3 beads - 6) <= 12000: 444 for 11 beads, "
                   "333 for 14; memory about 24 (m (3 beads - 6))^2 bytes)")
    for name, (kind, is_list, text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, dest=name, type=kind, nargs="+" if is_list else None, default=None, help=text,
                           metavar=name.upper() if kind is not str else "NAME")
    p.add_argument("--balance-basins", action=argparse.BooleanOptionalAction, default=True,
                   help="give dihedral arcs separated by unsampled gaps their training populations, measured on "
                   "the fitted model by umbrella sampling (default on; a no-op when no dihedral has such gaps)")
    p.add_argument("--scheduler", help="train the layer-1 sub-models on a Dask cluster: tcp://HOST:PORT or a "
                   "scheduler file (instead of --jobs local processes)")
    add_verbosity_arguments(p)
    p.add_argument("-o", "--output", required=True, help="model file to write (.npz); a .json summary goes beside it")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    output = Path(args.output)
    if output.suffix != ".npz":
        raise CgdmlError(f"{output}: the model file must end in .npz")
    check_output(output)
    summary = output.with_suffix(".json")
    workdir = output.with_name(output.name + ".work")
    with claim_outputs(COMMAND, [output], sidecars={summary: output}, kinds={output: "model"}, temps=[workdir],
                       inputs=[getattr(args, "dataset", None), args.coords, args.cg_forces, args.config, args.map]):
        return _fit(args, output, summary, workdir)


def _dataset_source(args):
    if getattr(args, "dataset", None):
        return str(args.dataset)
    if args.coords:
        return str(args.coords)
    return "the shipped reference"


def _fit(args, output, summary, workdir):
    options = read_config(args.config) if args.config else {}
    options.update({k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None})
    _check_options(options, args.config)
    if args.scheduler is not None:
        from .distributed import check_scheduler

        check_scheduler(args.scheduler)
    dataset = dataset_from_args(args)
    params = {PARAM_NAME.get(k, k): v for k, v in options.items()}
    seed = params.pop("seed", 0)
    from .pipeline import check_fit_frames, default_method, fit_cg_model

    method = default_method(dataset) if args.method == "auto" else args.method
    fit_params = method_params(method, params, args)
    try:
        check_fit_frames(dataset, method, fit_params)
    except CgdmlError as exc:
        raise CgdmlError(f"{_dataset_source(args)}: {exc}") from None
    cached = [f for f in workdir.glob("*.npz") if not f.name.startswith(".")] if workdir.is_dir() else []
    if cached:
        print(f"resuming from {len(cached)} checkpoint file(s) in {workdir}")
    model = fit_cg_model(dataset, method, balance_basins=args.balance_basins, seed=seed,
                         progress=not args.quiet, workdir=workdir, scheduler=args.scheduler, **fit_params)
    chosen = model.info["chosen"]
    strata = model.info.get("strata", {})
    print(f"fit method: {method}{' (auto)' if args.method == 'auto' else ''}; prior dihedral profiles: "
          f"{model.info['prior_dihedral_profiles']}")
    print(f"CG topology: {dataset.cg_topology.describe()}; strata: {strata.get('method', 'none')}"
          + (f" ({strata['n_occupied']} occupied)" if "n_occupied" in strata else ""))
    print("chosen " + " ".join(f"{k}={v:g}" for k, v in chosen.items() if k.startswith(("sigma", "lam")) and
                               not k.endswith("absolute")))
    for term in model.info.get("basin_balance", []):
        print(f"balanced dihedral {'-'.join(map(str, term['beads']))}: arc populations "
              f"{' '.join(f'{p:.2%}' for p in term['model_population'])} -> "
              f"{' '.join(f'{p:.2%}' for p in term['balanced_population'])} (offsets "
              f"{' '.join(f'{d:+.1f}' for d in term['offset_kJ_per_mol'])} kJ/mol; "
              f"umbrella {term['umbrella']['wall_s']:.0f} s)")
    model.save(output)
    save_json(summary, with_provenance(model.info, COMMAND, output))
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {output} and {summary} ({dataset.n_frames} frames, {dataset.n_beads} beads, "
          f"{model.info['wall_time_s']:.0f} s)")
    return 0


def cli():
    """The console script ``cgdml-fit`` (setup.cfg): the same command as ``python -m cgdml.fit``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
