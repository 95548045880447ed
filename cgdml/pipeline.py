"""The whole fit, in one call: prior, force matching (two-layer, Nyström or single GDML), basin balancing.

:func:`fit_cg_model` is what ``python -m cgdml.fit`` runs, so that a fit from Python and one from the command
line with the same settings and seed give the same model, array for array.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ._io import CgdmlError

METHODS = ("auto", "nystrom", "two-layer", "single")
MIN_FIT_FRAMES = 10   # distinct frames: below this the Boltzmann-inverted prior alone is noise (k = kT / var)
log = logging.getLogger(__name__)


def distinct_frames(coords):
    """The number of distinct configurations in coords (n, n_beads, 3)."""
    flat = np.ascontiguousarray(np.asarray(coords, dtype=np.float64).reshape(len(coords), -1))
    return len(np.unique(flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()))


def default_method(dataset):
    """The fit method ``"auto"`` picks for ``dataset``: ``"two-layer"`` for a peptide of two or more residues (the
    CG topology's backbone), ``"nystrom"`` otherwise.

    Chosen by landscape accuracy (benchmarks/results/bench_maps.md, js over the split-half floor): on
    ACE-AAA-NME the two-layer ensemble with the prior's dihedral profiles reaches 1.2x the floor against 1.6x for
    the inducing-point fit with them (3.7x without); on alanine dipeptide (5- and 6-bead maps, the cgnet data)
    the inducing-point fit is at 0.8-1.5x where the two-layer one is at 2-7x. On a second peptide, ACE-AGA-NME,
    the two-layer fit reaches 2.1x against the inducing-point fit's 1.5x, so which of the two suits peptides
    best is not settled (one run each).
    """
    return "two-layer" if dataset.cg_topology.is_polypeptide else "nystrom"


def check_fit_frames(dataset, method="nystrom", params=None):
    """Refuse (one line naming the counts) a dataset with fewer distinct frames than a ``method`` fit needs:
    at least MIN_FIT_FRAMES, and for a cross-validated two-layer fit two per fold."""
    params = params or {}
    need, why = MIN_FIT_FRAMES, ""
    if method == "two-layer":
        folds = int(params.get("n_folds", 2))
        grids = [params.get(k, (0, 0)) for k in ("sigma1", "lam1", "sigma2", "lam2")]
        if folds >= 2 and any(len(np.atleast_1d(g)) > 1 for g in grids) and 2 * folds > need:
            need, why = 2 * folds, f" (two per cross-validation fold, {folds} folds)"
    n = distinct_frames(dataset.coords)
    if n < need:
        same = "" if n == dataset.n_frames else f" among its {dataset.n_frames} frames"
        raise CgdmlError(f"{n} distinct frame(s){same}: a {method} fit needs at least {need} distinct frames{why}; "
                         "the prior and the force field would be fitted to noise (use more frames)")
    return n


def fit_cg_model(dataset, method="auto", *, balance_basins=True, seed=0, progress=False, workdir=None,
                 n_jobs=1, scheduler=None, **params):
    """Fit a CG force field to a :class:`cgdml.data.CGDataset`; returns a :class:`cgdml.model.CGModel`.

    ``method``:

    - ``"auto"`` (the default): :func:`default_method`, two-layer for peptides of two or more residues,
      inducing-point otherwise (chosen by landscape accuracy across maps and molecules);
    - ``"nystrom"``: inducing-point GDML on every frame, :func:`cgdml.nystrom.fit_nystrom`
      (``n_inducing``, ``sigma``, ``lam``, ...);
    - ``"two-layer"``: :class:`cgdml.ensemble.TwoLayerGDML` (``params`` are its hyperparameters, e.g.
      ``sigma1=(2, 4)``, ``n_models=12``);
    - ``"single"``: one GDML on ``n_frames`` stratified frames, :func:`cgdml.ensemble.fit_single` (a baseline).

    ``balance_basins``: afterwards give dihedral arcs that the training frames leave disconnected their
    training populations (:func:`cgdml.basins.balance_basins`, on one thread; a no-op when no dihedral has
    gaps). ``workdir`` keeps checkpoints so that an interrupted fit resumes; ``n_jobs``/``scheduler`` run the
    two-layer sub-models in local processes or on Dask. The record of the fit is ``model.info``.
    """
    if method not in METHODS:
        raise CgdmlError(f"unknown fit method {method!r} (choose {', '.join(METHODS)})")
    if method == "auto":
        method = default_method(dataset)
        log.info("fit method: %s (auto: %d residue(s) with backbone dihedrals)", method,
                 len(dataset.cg_topology.backbone()))
    check_fit_frames(dataset, method, params)
    t0 = time.perf_counter()
    if method == "two-layer":
        from .ensemble import TwoLayerGDML

        estimator = TwoLayerGDML(seed=seed, progress=progress, workdir=workdir, n_jobs=n_jobs, scheduler=scheduler,
                                 **params)
        model = estimator.fit(dataset).model_
    elif method == "nystrom":
        from .nystrom import fit_nystrom

        model = fit_nystrom(dataset, seed=seed, workdir=workdir, progress=progress, **params)
    else:
        from .ensemble import fit_single

        model = fit_single(dataset, seed=seed, **params)
    log.info("force matching done in %.0f s: %s", time.perf_counter() - t0, model.info.get("chosen"))
    if balance_basins:
        from .basins import balance_basins as balance
        from .distributed import limited_threads

        # one thread, as the simulate CLI's default: batched replica force calls run 1.5-2x faster than with
        # numba's threads on a shared 2-core machine (see NOTES)
        try:
            model.offsets, report = limited_threads(lambda: balance(model, dataset, seed=seed, progress=progress))
        except CgdmlError as exc:
            raise CgdmlError(f"basin balancing failed ({exc}); rerun with --no-balance-basins (balance_basins=False) "
                             "to skip it (the GDML fit resumes from its checkpoints)") from None
        model.info["basin_balance"] = report
    model.info["fit_method"] = method
    model.info["prior_dihedral_profiles"] = int(len(model.prior.dihedral_quads_))
    model.info["wall_time_s"] = time.perf_counter() - t0
    return model
