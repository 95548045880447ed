"""``python -m cgdml.fes TRAJ.h5 --reference DATA.npz -o FES.png --json METRICS.json``: free-energy landscapes
and their comparison with a reference.

Landscapes (docs/method.md §3): by default the (phi, psi) of every residue of the CG topology (one row each,
the headline), then the landscapes of any map as a second group (every soft torsion, consecutive pairs of
them, every bond angle, the end-to-end distance); a map without backbone gets those as its headline.
``--cv phi:2,psi:2`` (repeatable, one landscape each) chooses the CVs: phi/psi of a residue number,
dihedral:I,J,K,L, angle:I,J,K, distance:I,J (bead indices), or tica (a 2D TICA projection).

The work is :func:`cgdml.fes.compare_landscapes`, whose report is the JSON: ``panels`` (one entry per landscape:
label, cvs, range, periodic, kind, group, metrics, noise_floor, bootstrap, model_outside_range; residue and
phi_positive for a residue's (phi, psi)), ``mean`` (over the panels), ``kinds`` (the mean of each kind of
landscape), ``extra`` (the second group's panels and mean) and ``missing`` (kind -> why the map has none of
that kind; printed, a line each); with a single headline landscape also the top-level ``metrics``,
``noise_floor``, ``bootstrap`` (and ``phi_positive``).

``--model MODEL.npz`` (the model that made the trajectories) adds the model's share of the uncertainty: the frames
reweighted with the model's posterior function samples (docs/uncertainty.md §11), per bin and for the metrics,
combined with the bootstrap into a 95% band, a map of the per-bin standard deviation beside the difference map,
and the JSON keys ``model``, ``reweighting`` and, per panel, ``model_uncertainty`` (or
``model_uncertainty_undefined``: why not; see :func:`cgdml.fes.compare.compare_panels`). When the reweighting
collapses (some sample's effective sample size under 10% of the frames) the band is first order in the samples'
energy deviations instead, with one warning line (``estimator`` in the JSON; ``--model-estimator`` forces one, a
diagnostic). A model fitted by an older cgdml has no posterior: one warning line, no model band.
``--refits R1.npz R2.npz ...`` (block-jackknife refits of the model) add the spread of refitting the whole
estimator to the model band.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._cli import (ArgumentParser, add_verbosity_arguments, claim_outputs, configure_logging, int_between,
                    positive_float, positive_int, run_cli, with_provenance)
from .._io import CgdmlError, check_output, save_json
from ..validation import ParameterError
from .compare import SELF_DESCRIBING, compare_landscapes
from .reweight import as_grid

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


def _model_line(prefix, e):
    """The model band of a report entry in one line (or why there is none), or None."""
    if "model_uncertainty_undefined" in e:
        return None
    u = e.get("model_uncertainty")
    if not u or "band" not in u:
        return None
    b = u["band"]
    what = "sampling and model" if u["sampling"] else "model only"
    order = " (first order)" if u.get("estimator") == "first-order" else ""
    line = (f"{prefix}posterior spread{order} over {u['n_samples']} samples: RMSE {b['fes_rmse']['model_std']:.3f} kT, "
            f"JS {b['js']['model_std']:.4f}; 95% band ({what}): RMSE {b['fes_rmse']['lo']:.3f}-"
            f"{b['fes_rmse']['hi']:.3f}, JS {b['js']['lo']:.4f}-{b['js']['hi']:.4f}")
    cov = u.get("coverage") or {}
    if cov.get("n_bins"):
        line += (f"; reference inside the band in {cov['inside']:.0%} of {cov['n_bins']} bins with "
                 f">= {cov['min_count']} reference frames")
    return line


def _bin_line(prefix, e):
    """The per-bin standard deviations of a report entry's model band in one line, or None."""
    u = e.get("model_uncertainty")
    if not u:
        return None
    b = u["bins"]
    m, t = as_grid(b["model_std"]), as_grid(b["std"])
    if not np.isfinite(m).any():
        return None
    line = (f"{prefix}free energy std per bin over {int(np.isfinite(m).sum())} visited bins: model median "
            f"{np.nanmedian(m):.2f} kT (max {np.nanmax(m):.2f})")
    if b.get("sampling_std") is not None:
        line += f", sampling median {np.nanmedian(as_grid(b['sampling_std'])):.2f} kT"
    return line + f", both median {np.nanmedian(t):.2f} kT (95% band: -+ 1.96 std)"


def _js_line(head, m):
    """``head`` JS, its floor and their ratio of a mean entry."""
    floor = m["noise_floor"]["js"]
    ratio = f"{m['js'] / floor:.2f}x the floor" if floor > 0 else "floor 0"
    return f"{head}JS {m['js']:.4f} nats, floor {floor:.4f} ({ratio})"


def _print_entry(prefix, e):
    m, fl = e["metrics"], e["noise_floor"]
    print(_metric_line(prefix, m, e.get("bootstrap")))
    for line in (_model_line(prefix, e), _bin_line(prefix, e)):
        if line:
            print(line)
    print(f"{prefix}noise floor (reference split half): FES RMSE {fl['fes_rmse']:.3f} kT, JS {fl['js']:.4f} nats")
    print(f"{prefix}{m['bins_missed_by_model']} of {m['bins_ref_visited']} reference bins never visited by the "
          f"model ({m['n_model']} model frames, {m['n_ref']} reference frames in range)")
    if "phi_positive" in e:
        pp = e["phi_positive"]
        print(f"{prefix}phi > 0 population: model {pp['model']:.1%}, reference {pp['reference']:.1%}")


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.fes", description=(
        "Free-energy landscapes of CG trajectories (by default the (phi, psi) of every residue, and the "
        "landscapes of any map: soft torsions, their consecutive pairs, bond angles, end-to-end distance), optionally "
        "compared with a reference CG dataset: FES RMSE (kT) and Jensen-Shannon divergence per landscape and "
        "their mean, with split-half noise floor and block bootstrap."))
    p.add_argument("traj", nargs="+", help="trajectory file(s) readable by mdtraj (.h5 carries its topology)")
    p.add_argument("--reference", help="reference CG dataset (.npz) to compare with")
    p.add_argument("--cv", action="append", default=None, metavar="KIND:I[,J..],...",
                   help="one landscape of one or two CVs, e.g. phi:2,psi:2 (residue number as in the backbone "
                        "label ALA2), dihedral:0,1,2,3, angle:0,1,2, distance:0,13 (bead indices), or tica (a "
                        "2D TICA projection); repeat for more landscapes. Default: (phi, psi) of every residue, "
                        "then every soft torsion, consecutive pairs of them, bond angles and the end-to-end "
                        "distance as a second group (the headline without backbone)")
    p.add_argument("--lagtime", type=positive_int, default=None,
                   help="TICA lag time in frames (default: a few frames); only with --cv tica, refused otherwise")
    p.add_argument("--top", help="topology file (e.g. .pdb) for trajectory formats without one")
    p.add_argument("--bins", type=_bins, default=36, help="bins per dimension (default 36; dihedrals on "
                   "[-180, 180) deg, other CVs on the reference's range padded by 5%%)")
    p.add_argument("--n-boot", type=_n_boot, default=200, help="bootstrap resamples (default 200; 0 = none)")
    p.add_argument("--block", type=positive_int, default=None, help="bootstrap block length in frames (default: "
                   "frames/50; use at least a few correlation times, e.g. one replica's frames)")
    p.add_argument("--model", help="the model (.npz) that made the trajectories: adds the model's share of the "
                   "uncertainty (its posterior function samples reweight the frames) per bin and for the metrics, "
                   "a 95%% band with the bootstrap, and a map of the per-bin standard deviation")
    p.add_argument("--refits", nargs="+", metavar="REFIT", help="with --model: K >= 2 block-jackknife refits of "
                   "the model (the same fit, each without one of K contiguous blocks of the training frames); their "
                   "spread joins the model band (docs/uncertainty.md section 11)")
    p.add_argument("--model-estimator", choices=("auto", "reweighted", "first-order"), default="auto",
                   help="with --model: how the posterior samples give landscapes (default auto: reweighting while "
                   "every sample keeps an effective sample size of 10%% of the frames, else first order in their "
                   "energy deviations; forcing one is a diagnostic)")
    p.add_argument("--temperature", type=positive_float, default=None, help="with --model: the temperature (K) "
                   "the trajectories were run at (default: the model's)")
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
                       inputs=[a.traj, a.reference, a.top, a.model, a.refits]):
        return _fes(a, out)


def _fes(a, out):
    if a.top is not None and not Path(a.top).exists():
        raise CgdmlError(f"{a.top}: no such topology file")
    for p in a.traj:
        if Path(p).exists() and Path(p).suffix.lower() not in SELF_DESCRIBING and a.top is None:
            raise CgdmlError(f"{p}: this format carries no topology; give --top")
    if a.temperature is not None and a.model is None:
        raise CgdmlError("--temperature applies only with --model (it is the temperature of the reweighting)")
    if a.refits and a.model is None:
        raise CgdmlError("--refits applies only with --model (they are refits of it)")
    if a.model_estimator != "auto" and a.model is None:
        raise CgdmlError("--model-estimator applies only with --model")
    try:
        report = compare_landscapes(a.traj, a.reference, topology=a.top, cvs=a.cv, bins=a.bins, n_boot=a.n_boot,
                                    block=a.block, lagtime=a.lagtime, plot=out, model=a.model,
                                    temperature=a.temperature, refits=a.refits, estimator=a.model_estimator)
    except ParameterError as exc:
        if exc.name not in ("block", "lagtime"):
            raise
        raise CgdmlError(f"--{exc.name} {exc.problem}") from None
    for kind, why in report.get("missing", {}).items():
        print(f"no {kind} landscape: {why}")
    rw = report.get("reweighting")
    if rw:
        e = rw["ess_fraction"]
        if rw.get("estimator") == "first-order":
            print(f"model band: first order in the energy deviations of {rw['n_samples']} posterior samples over "
                  f"the {rw['n_frames']} frames (reweighting's effective sample size {e['min']:.1%}-{e['max']:.0%} "
                  "of them)")
        else:
            print(f"model band: {rw['n_samples']} posterior samples reweight the {rw['n_frames']} frames (effective "
                  f"sample size {e['min']:.0%}-{e['max']:.0%} of them)")
        if rw.get("n_refits"):
            r = rw["refit_ess_fraction"]
            print(f"and {rw['n_refits']} jackknife refits (effective sample size {r['min']:.0%}-{r['max']:.0%}); "
                  "their spread is in the model band")
    if not a.reference:
        single = len(report["panels"]) == 1
        for e in report["panels"]:
            if _bin_line("" if single else f"{e['label']}: ", e):
                print(_bin_line("" if single else f"{e['label']}: ", e))
    else:
        single = len(report["panels"]) == 1
        for e in report["panels"]:
            _print_entry("" if single else f"{e['label']}: ", e)
        if not single:
            m = report["mean"]
            print(_metric_line(f"mean over {m['n_panels']} landscapes: ", m, m.get("bootstrap")))
            if _model_line("mean: ", m):
                print(_model_line("mean: ", m))
            print(f"mean noise floor: FES RMSE {m['noise_floor']['fes_rmse']:.3f} kT, "
                  f"JS {m['noise_floor']['js']:.4f} nats")
        if "extra" in report:
            print(_js_line(f"second group (the landscapes of any map), mean over {report['extra']['mean']['n_panels']}"
                           " landscapes: ", report["extra"]["mean"]))
        if len(report["kinds"]) > 1:
            for kind, m in report["kinds"].items():
                print(_js_line(f"  {kind} (mean of {m['n_panels']}): ", m))
    if a.json:
        save_json(a.json, with_provenance(report, COMMAND, a.json))
    print(f"wrote {out}" + (f" and {a.json}" if a.json else ""))
    return 0


def cli():
    """The console script ``cgdml-fes`` (setup.cfg): the same command as ``python -m cgdml.fes``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
