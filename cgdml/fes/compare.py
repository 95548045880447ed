"""Comparing CG landscapes with a reference (docs/method.md §3): :func:`compare_panels` scores :class:`Panel`
objects, :func:`compare_landscapes` does what ``python -m cgdml.fes`` does, from trajectories to the report
(the command's JSON) and the figure.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .._io import CgdmlError
from .cvs import MAP_KINDS, as_cg_topology, cv_groups, landscape_panels, missing_map_landscapes
from .histograms import (bin_counts, bin_index, bootstrap_draws, bootstrap_summary, bootstrap_undefined,
                         check_bootstrap, metrics_from_counts, split_half_floor)
from .reweight import ESTIMATORS, METRICS, MIN_COUNT, MIN_ESS, metric_band, model_band, model_weights

log = logging.getLogger("cgdml.fes")
#: trajectory formats that carry their topology (others need a topology file)
SELF_DESCRIBING = (".h5", ".hdf5", ".pdb")


def compare_panels(panels, bins=36, n_boot=200, block=None, seed=0, model_weights=None, min_count=MIN_COUNT):
    """The metric of docs/method.md §3 for every panel with a reference, and their mean; with ``model_weights``
    also the model's share of the uncertainty (docs/uncertainty.md §11).

    Returns {"panels": [entry, ...], "mean": {...}} where each entry has ``label``, ``cvs`` (plain names),
    ``range`` and ``periodic`` per dimension, ``metrics`` (:func:`compare_fes`), ``noise_floor``
    (:func:`split_half_floor`), ``bootstrap`` (:func:`bootstrap_metrics`, when ``n_boot``),
    ``bootstrap_undefined`` (why, instead of ``bootstrap``, when the model frames make fewer than 2 blocks),
    ``model_outside_range`` (fraction of model frames outside the histogram range: ignored by the metric),
    ``kind`` and ``group`` ("headline", or "extra" for a panel of the second group) and, for a residue's (phi,
    psi), ``residue`` and ``phi_positive``. ``mean`` averages fes_rmse and js over the headline panels, with the
    mean floor and, when ``n_boot``, a bootstrap of the mean over the same resamples (the extra panels are not
    resampled); ``extra`` is the same mean over the extra panels (None without them) and ``kinds`` the mean over
    the panels of each kind (both groups). Without a reference the entries carry the CV description only and
    ``mean`` is None.

    ``model_weights`` (a :class:`cgdml.fes.reweight.ModelWeights` over the pooled model frames) adds to every
    entry ``model_uncertainty`` (:func:`cgdml.fes.reweight.model_band`): reweighted, or first order in the energy
    deviations when the weights' effective sample size is too small (``ModelWeights.estimator_used``):

    - ``n_samples``; ``sampling`` (whether the band includes the bootstrap's sampling part); ``estimator``
      ("reweighted" or "first-order");
    - ``bins``: ``shape`` (bins per dimension) and per-bin nested lists in kT (None where undefined):
      ``free_energy`` (aligned as the metric aligns it), ``model_std`` (spread over the posterior samples),
      ``sampling_std`` (block bootstrap; None without one), ``std`` (the two in quadrature: the 95% band is
      free_energy -+ 1.96 std) and, with a reference, ``difference`` (F_model - F_ref - offset) and
      ``reference_std`` (the reference's own block-bootstrap spread);
    - with a reference: ``metrics`` {fes_rmse, js: {point, model_mean, model_std}} (over the samples), ``band``
      {fes_rmse, js: {point, model_std, sampling_std, std, lo, hi}} (95%, the parts in quadrature), and
      ``coverage`` (:func:`cgdml.fes.reweight.coverage`: how often the reference lies inside the band over the
      bins with at least ``min_count`` reference frames).

    ``mean`` then gets ``model_uncertainty`` with the spread and band of the mean metrics over the same samples
    (and the ``estimator``).
    """
    entries, idx_models, h_refs = [], [], []
    for p in panels:
        e = {"label": p.label, "cvs": p.names, "range": [list(r) for r in p.range], "periodic": p.periodic,
             "kind": p.kind, "group": "extra" if p.extra else "headline"}
        if p.residue:
            e["residue"] = p.residue
        entries.append(e)
        if p.reference is None:
            continue
        edges = p.edges(bins)
        idx = bin_index(p.model, edges)
        e["model_outside_range"] = float(np.mean(idx < 0))
        if (idx < 0).all():
            raise CgdmlError(f"landscape {p.label}: no model frame falls inside the reference's range "
                             f"{', '.join(f'[{lo:.4g}, {hi:.4g}]' for lo, hi in p.range)}")
        h_ref = bin_counts(p.reference, edges)
        e["metrics"] = metrics_from_counts(np.bincount(idx[idx >= 0], minlength=len(h_ref)).astype(np.float64),
                                            h_ref)
        e["noise_floor"] = split_half_floor(p.reference, bins, p.range)
        if p.residue:
            e["phi_positive"] = {"model": float(np.mean(p.model[:, 0] > 0)),
                                 "reference": float(np.mean(p.reference[:, 0] > 0))}
        if not p.extra:
            idx_models.append(idx)
            h_refs.append(h_ref)
    scored = [e for e in entries if "metrics" in e and e["group"] == "headline"]
    mean = _mean_of(scored) if scored else None
    extra = [e for e in entries if "metrics" in e and e["group"] == "extra"]
    kinds = {}
    for e in entries:
        if "metrics" in e:
            kinds.setdefault(e["kind"], []).append(e)
    n_frames = len(panels[0].model) if panels else 0
    if n_boot:
        block = check_bootstrap(n_frames, n_boot, block)
    why = bootstrap_undefined(n_frames, block) if n_boot else None
    if scored and why:        # reported as undefined, not as a zero-width interval
        for e in scored + [mean]:
            e["bootstrap_undefined"] = why
    elif scored and n_boot:
        draws = bootstrap_draws(idx_models, h_refs, n_boot, block, seed)
        for e, d in zip(scored, draws):
            e["bootstrap"] = {k: bootstrap_summary(e["metrics"][k], v) for k, v in d.items()}
            e["bootstrap"]["n_boot"], e["bootstrap"]["block"] = int(n_boot), block
        mean["bootstrap"] = {k: bootstrap_summary(mean[k], np.mean([d[k] for d in draws], axis=0)) for k in ("fes_rmse", "js")}
        mean["bootstrap"]["n_boot"], mean["bootstrap"]["block"] = int(n_boot), block
    if model_weights is not None:
        _add_model_bands(panels, entries, mean, bins, 0 if why else n_boot, block, seed, model_weights, min_count)
    return {"panels": entries, "mean": mean, "extra": _mean_of(extra) if extra else None,
            "kinds": {k: _mean_of(v) for k, v in kinds.items()}}


def _mean_of(entries):
    """Mean fes_rmse and js of scored entries, their mean noise floor and their number."""
    mean = {k: float(np.mean([e["metrics"][k] for e in entries])) for k in ("fes_rmse", "js")}
    mean["noise_floor"] = {k: float(np.mean([e["noise_floor"][k] for e in entries])) for k in ("fes_rmse", "js")}
    mean["n_panels"] = len(entries)
    return mean


def _add_model_bands(panels, entries, mean, bins, n_boot, block, seed, model_weights, min_count):
    """Each entry's ``model_uncertainty`` (see :func:`compare_panels`), and the mean's."""
    estimator = model_weights.estimator_used
    energies = {}
    if estimator == "first-order":
        energies = {"energies": model_weights.reduced_energies(),
                    "refit_energies": model_weights.reduced_energies(refits=True)}
    samples = []
    for p, e in zip(panels, entries):
        edges = p.edges(bins)
        shape = [len(x) - 1 for x in edges]
        h_ref = None if p.reference is None else bin_counts(p.reference, edges)
        ref_idx = None if p.reference is None else bin_index(p.reference, edges)
        band, metrics = model_band(bin_index(p.model, edges), model_weights.weights, shape, h_ref, n_boot, block,
                                   seed, ref_idx, min_count, model_weights.refit_weights, **energies)
        if metrics is not None:
            band["band"] = {k: metric_band(e["metrics"][k], metrics[k], (e.get("bootstrap") or {}).get(k),
                                           metrics.get(k + "_refits")) for k in METRICS}
            if not p.extra:   # the mean is over the headline landscapes
                samples.append(metrics)
        e["model_uncertainty"] = band
    if mean and samples:
        per_sample = {k: np.mean([s[k] for s in samples], axis=0) for k in samples[0]}
        mean["model_uncertainty"] = {
            "n_samples": model_weights.n_samples, "estimator": estimator,
            "metrics": {k: {"point": mean[k], "model_mean": float(per_sample[k].mean()),
                            "model_std": float(per_sample[k].std(ddof=1))} for k in METRICS},
            "band": {k: metric_band(mean[k], per_sample[k], (mean.get("bootstrap") or {}).get(k),
                                    per_sample.get(k + "_refits")) for k in METRICS}}
        if model_weights.n_refits:
            mean["model_uncertainty"]["n_refits"] = model_weights.n_refits


def load_trajectories(paths, topology=None):
    """mdtraj Trajectories of the files ``paths``; ``topology`` (a file, e.g. the .pdb beside a .dcd) for
    formats without one. Unreadable files are one-line :class:`CgdmlError` naming the file."""
    import mdtraj as md

    trajs = []
    for p in paths:
        if not Path(p).exists():
            raise CgdmlError(f"{p}: no such trajectory")
        suffix = Path(p).suffix.lower()
        if suffix not in SELF_DESCRIBING and topology is None:
            raise CgdmlError(f"{p}: this format carries no topology; give a topology file")
        try:
            trajs.append(md.load(str(p), top=str(topology)) if topology is not None and suffix != ".h5"
                         else md.load(str(p)))
        except Exception as exc:
            with open(p, "rb") as fh:
                head = fh.read(8)
            if suffix in (".h5", ".hdf5") and head != b"\x89HDF\r\n\x1a\n":
                raise CgdmlError(f"{p}: cannot read trajectory (not an HDF5 file)") from None
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise CgdmlError(f"{p}: cannot read trajectory ({type(exc).__name__}: {first})") from None
    n_atoms = {t.n_atoms for t in trajs}
    if len(n_atoms) > 1:
        raise CgdmlError(f"trajectories have different bead counts: {sorted(n_atoms)}")
    return trajs


def reference_topology(traj_topology, reference, traj_name="the trajectory", ref_name="the reference"):
    """The bead graph the CVs are taken from: the reference dataset's (the one the model was fitted on), checked
    against the trajectory's mdtraj topology (bead names must agree; differing bonds are warned about)."""
    topo = reference.cg_topology
    names = [a.name for a in traj_topology.atoms]
    if names != list(topo.names):
        first = next(i for i, (a, b) in enumerate(zip(names, topo.names)) if a != b)
        raise CgdmlError(f"{ref_name}: the reference's bead {first} is {topo.names[first]!r}, the trajectory "
                         f"{traj_name}'s {names[first]!r}: the bead order of trajectory and reference differ")
    bonds = {tuple(sorted((a.index, b.index))) for a, b in traj_topology.bonds}
    if bonds != {tuple(b) for b in topo.bonds.tolist()}:
        warnings.warn(f"the bonds of the trajectory {traj_name} differ from those of the reference {ref_name}; "
                      "the CVs and bond/angle distributions follow the reference's CG topology")
    return topo


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def compare_landscapes(trajectories, reference=None, *, topology=None, cvs=None, bins=36, n_boot=200, block=None,
                       lagtime=None, seed=0, plot=None, model=None, temperature=None, min_ess=MIN_ESS,
                       min_count=MIN_COUNT, refits=None, estimator="auto"):
    """Free-energy landscapes of CG trajectories compared with a reference: what ``python -m cgdml.fes`` does.

    ``trajectories``: a trajectory file (.h5 carries its topology), an mdtraj Trajectory, coordinates
    (n, n_beads, 3) nm, or a list of these (pooled). ``reference``: a CGDataset, the path of one, or None
    (only its frames of positive weight are read: :func:`reference_population`).
    ``topology``: a topology file for formats without one, or (with plain coordinates and no reference) a
    CGTopology or mdtraj Topology. ``cvs``: see :func:`cgdml.fes.cvs.landscape_panels` (default: the (phi, psi)
    of every residue, then the landscapes of any map as a second group; without backbone those landscapes);
    ``bins`` per dimension; ``n_boot`` block-bootstrap resamples of ``block`` frames
    (default frames / 50); ``lagtime`` frames for a TICA landscape; ``plot``: save the figure there
    (:func:`cgdml.fes.plot.plot_landscapes`, with the bond and angle distributions when there is a reference).

    ``model``: the :class:`cgdml.model.CGModel` that made the trajectories (or its path), for the model's share
    of the uncertainty: the frames are reweighted with its posterior function samples (docs/uncertainty.md §11)
    at ``temperature`` K (the trajectories'; default the model's) while every sample's weights keep an effective
    sample size of ``min_ess`` of the frames; below it the band is first order in the samples' energy deviations
    (each bin moves by their mean over its frames), with a one-line warning. ``estimator`` ("auto", or
    "reweighted" / "first-order" to force one: a diagnostic) chooses. The coverage counts bins with
    ``min_count`` reference frames. A model without a force posterior gets a one-line warning and no model
    band.
    ``refits``: K >= 2 block-jackknife refits of ``model`` (CGModels or paths: the same fit, each without one of K
    contiguous blocks of its training frames); the frames are reweighted with their energy differences too, and
    their jackknife variance is added to the model band (docs/uncertainty.md §11).

    Returns the report the command writes as JSON: trajectories (file names, None for objects), n_frames, cv,
    bins, topology, panels (the headline landscapes: label, cvs, range, periodic, kind, group, metrics,
    noise_floor, bootstrap, model_outside_range; residue and phi_positive for a residue's (phi, psi)); with a
    reference also reference, n_ref_frames, mean (over the headline panels), kinds (the mean of each kind of
    landscape), extra (the second group: its panels and mean, when there is one); with the default landscapes,
    missing (kind -> why the map has no landscape of that kind, when it lacks one); and for a single headline
    landscape the top-level metrics, noise_floor, bootstrap, phi_positive. The figure draws every landscape
    once: angles in the distribution block, not the extra panels whose CVs a headline panel already shows.
    With ``model``: ``model`` (its file name, None for an object), ``reweighting``
    (:meth:`cgdml.fes.reweight.ModelWeights.summary`: n_samples, kT, n_frames, ess_fraction {min, median,
    max}, min_ess_fraction, low_ess_samples, ess_too_small, estimator) when it has a posterior, and
    ``model_uncertainty_undefined`` (why) when it has none; each panel (and ``mean``) has ``model_uncertainty``
    (see :func:`compare_panels`; ``estimator`` says which), and a single headline landscape's
    ``model_uncertainty`` is copied to the top level.
    """
    if int(bins) != bins or bins < 2:
        raise CgdmlError(f"bins must be an integer >= 2, got {bins}")
    if n_boot < 0 or n_boot == 1:
        raise CgdmlError(f"n_boot must be 0 or >= 2, got {n_boot}")
    if lagtime is not None and not lagtime >= 1:
        raise CgdmlError(f"lagtime must be >= 1 frame, got {lagtime}")
    if estimator not in ESTIMATORS:
        raise CgdmlError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    items = _as_list(trajectories)
    names = [str(t) if isinstance(t, (str, Path)) else None for t in items]
    top_file = topology if isinstance(topology, (str, Path)) else None
    if top_file is not None and not Path(top_file).exists():
        raise CgdmlError(f"{top_file}: no such topology file")
    files = [t for t in items if isinstance(t, (str, Path))]
    loaded = iter(load_trajectories(files, top_file))
    trajs = [next(loaded) if isinstance(t, (str, Path)) else t for t in items]
    xyz_list = [np.asarray(t.xyz if hasattr(t, "xyz") else t, dtype=np.float64) for t in trajs]
    if block is not None and n_boot and (reference is not None or model is not None):   # before any work
        check_bootstrap(sum(len(x) for x in xyz_list), n_boot, block)
    traj_topology = next((t.topology for t in trajs if hasattr(t, "topology")), None)
    ref, ref_name = reference, None
    if isinstance(reference, (str, Path)):
        from ..data import CGDataset

        ref, ref_name = CGDataset.load(reference), str(reference)
    ref = reference_population(ref, ref_name)
    n_beads = xyz_list[0].shape[1] if xyz_list[0].ndim == 3 else None
    if ref is not None and ref.n_beads != n_beads:
        raise CgdmlError(f"{ref_name or 'reference'}: reference has {ref.n_beads} beads, trajectories have {n_beads}")
    if ref is not None and traj_topology is not None:
        topo = reference_topology(traj_topology, ref, names[0] or "the trajectory", ref_name or "the reference")
    elif ref is not None:
        topo = ref.cg_topology
    elif traj_topology is not None:
        topo = as_cg_topology(traj_topology)
    elif topology is not None and top_file is None:
        topo = as_cg_topology(topology)
    else:
        raise CgdmlError("plain coordinates need a topology (a CGTopology or mdtraj Topology) or a reference")
    ref_xyz = None if ref is None else ref.coords
    cg_model, model_name = _load_model(model, n_beads)
    if refits is not None and cg_model is None:
        raise CgdmlError("refits need the model they are refits of (give model)")
    cv_sets = None if cvs is None else [c for c in _as_list(cvs) if c != "phi-psi"] or None
    panels = landscape_panels(xyz_list, topo, ref_xyz, cv_sets, lagtime=lagtime)

    report = {"trajectories": names, "n_frames": sum(len(x) for x in xyz_list), "cv": _cv_name(cv_sets, panels),
              "bins": int(bins), "topology": topo.describe()}
    if cv_sets is None:
        missing = missing_map_landscapes(topo, np.concatenate(xyz_list) if ref_xyz is None else ref_xyz)
        if missing:
            report["missing"] = missing
    log.info("landscapes: %s", "; ".join(p.label for p in panels))
    weights = None
    if cg_model is not None:
        report["model"] = model_name
        weights, why = _model_weights(cg_model, model_name, np.concatenate(xyz_list), temperature, min_ess,
                                      _load_refits(refits, n_beads), estimator)
        if weights is not None:
            report["reweighting"] = weights.summary()
            if weights.warning():
                warnings.warn(weights.warning())
        if why:
            report["model_uncertainty_undefined"] = why
            warnings.warn(why)
    try:
        results = compare_panels(panels, bins, n_boot if ref is not None or weights is not None else 0, block, seed,
                                 weights, min_count)
    except CgdmlError as exc:
        raise CgdmlError(f"{ref_name}: {exc}" if ref_name and "bootstrap" not in str(exc) else str(exc)) from None
    headline = [e for e in results["panels"] if e["group"] == "headline"]
    extra = [e for e in results["panels"] if e["group"] == "extra"]
    report["panels"] = headline
    why = (results["mean"] or {}).get("bootstrap_undefined")
    if why:
        warnings.warn(f"bootstrap interval undefined: {why}; give more frames or shorter blocks (or no bootstrap)")
    if ref is not None:
        report.update(reference=ref_name, n_ref_frames=int(ref.n_frames), mean=results["mean"],
                      kinds=results["kinds"])
        if extra:
            report["extra"] = {"panels": extra, "mean": results["extra"]}
        single = len(headline) == 1
        outside = [e for e in results["panels"] if e.get("model_outside_range", 0) > 0]
        if single and len(panels) == 1 and outside:
            warnings.warn(f"{100 * outside[0]['model_outside_range']:.2g}% of the model frames fall outside the "
                          "reference's range of this landscape and are not counted by the metric")
        elif outside:
            warnings.warn("some model frames fall outside the reference's range of these landscapes and are not "
                          "counted by the metric: " + ", ".join(f"{e['label']} {100 * e['model_outside_range']:.2g}%"
                                                                for e in outside))
        if single:
            e = headline[0]
            report.update(metrics=e["metrics"], noise_floor=e["noise_floor"])
            for key in ("bootstrap", "bootstrap_undefined", "phi_positive"):
                if key in e:
                    report[key] = e[key]
    if len(headline) == 1 and "model_uncertainty" in headline[0]:
        report["model_uncertainty"] = headline[0]["model_uncertainty"]
    if plot is not None:
        from .cvs import topology_distributions
        from .plot import plot_landscapes

        distributions = topology_distributions(topo, np.concatenate(xyz_list), ref_xyz) if ref is not None else []
        shown = set().union(*(p.names for p in panels if not p.extra))
        drawn = [k for k, p in enumerate(panels)
                 if not (p.kind == "angle" and distributions) and not (p.extra and set(p.names) <= shown)]
        drawn = drawn or list(range(len(panels)))
        plot_results = (None if ref is None and weights is None
                        else dict(results, panels=[results["panels"][k] for k in drawn]))
        plot_landscapes(plot, [panels[k] for k in drawn], bins, plot_results, distributions)
    return report


def reference_population(ref, name=None):
    """The frames of a reference :class:`cgdml.data.CGDataset` that are Boltzmann samples (weight > 0; restrained
    frames of active learning have weight 0), in their order, so that its histograms and split-half floors are
    populations. Unequal positive weights are refused (one line): the histograms here count frames."""
    if ref is None or np.all(ref.weights == 1):
        return ref
    index, w = ref.population()
    if w is not None:
        raise CgdmlError(f"{name or 'the reference'}: its frames have unequal positive weights; landscapes compare "
                         "unweighted frames (use a reference of plain Boltzmann samples)")
    return ref.subset(index)


def _load_model(model, n_beads):
    """(CGModel or None, its file name or None) of ``model`` (a CGModel, its path, or None), checked against the
    trajectories' bead count."""
    if model is None:
        return None, None
    name = None
    if isinstance(model, (str, Path)):
        from ..model import CGModel

        name = str(model)
        if not Path(name).exists():
            raise CgdmlError(f"{name}: no such model file")
        model = CGModel.load(name)
    if model.n_beads != n_beads:
        raise CgdmlError(f"{name or 'model'}: model has {model.n_beads} beads, trajectories have {n_beads}")
    return model, name


def _load_refits(refits, n_beads):
    """The jackknife refits as CGModels (None for None), checked against the trajectories' bead count."""
    if refits is None:
        return None
    models = [_load_model(r, n_beads)[0] for r in _as_list(refits)]
    if len(models) < 2:
        raise CgdmlError(f"a jackknife needs at least 2 refits, got {len(models)}")
    return models


def _model_weights(model, name, xyz, temperature, min_ess, refits=None, estimator="auto"):
    """(ModelWeights, None), or (None, why) for a model without a force posterior."""
    posterior = getattr(model, "uncertainty", None)
    if posterior is None:
        return None, (f"{name or 'the model'} has no force posterior (fitted by an older cgdml): no model band; "
                      "refit it to get one")
    from ..units import kT

    dE = None
    if refits:
        E = model.energy_forces(xyz)[0]
        dE = np.array([r.energy_forces(xyz)[0] - E for r in refits])
    return model_weights(posterior, xyz, kT(model.temperature if temperature is None else temperature), min_ess,
                         dE, estimator), None


def _cv_name(cv_sets, panels):
    """The report's "cv": the CV sets as given, "phi-psi" for the residues' (phi, psi), "map" for the landscapes
    of any map (docs/method.md §3), "tica", or the CVs."""
    if cv_sets:
        rest = [c for c in cv_sets if not (isinstance(c, str) and c.strip().lower() == "tica")]
        return " ".join((["tica"] if len(rest) < len(cv_sets) else [])
                        + [",".join(map(repr, group)) for group in (cv_groups(rest) if rest else [])])
    if panels[0].residue:
        return "phi-psi"
    if panels[0].kind in MAP_KINDS:
        return "map"
    return "tica" if panels[0].is_tica else ",".join(panels[0].names)
