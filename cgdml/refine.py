"""Structural refinement of a fitted CG model: iterative Boltzmann correction of the distances between beads
three or more bonds apart (docs/method.md §2.6, "The pair-distance refinement").

The prior's Boltzmann-inverted terms are one-dimensional and independent, so a model whose learned force is
mostly switched off (a coarse map with noisy forces, docs/method.md §2.6) misses how its angles and dihedrals
couple: a C-alpha trace without the coupling puts helical angles with extended dihedrals, and its end-to-end
distance comes out unimodal where the all-atom one is bimodal. The distance r_ij between beads i and j three or
more bonds apart is a function of the angles and dihedrals between them, so its distribution carries that
coupling, and it is measured on the training frames' positions with little noise.

Iterative Boltzmann inversion (IBI) corrects the model by a tabulated pair term per such pair,
dU_ij(r) <- dU_ij(r) + a kT ln[p_model(r) / p_data(r)], with p_model from a short simulation of the current model
(the residual-weight judge's run) and p_data from the training frames, both smoothed by the same kernel; the
correction is defined where both densities are, flat past that, and capped. The prior's dihedral profiles get the
same update from their own distributions, since the pair terms would otherwise move them; the damping a < 1
keeps the correlated updates from overshooting. Each iteration is scored like the
judge (the mean landscape JS against the training frames), and the best of no correction and every iteration is
kept, so the refinement can only make the model agree better with its own training frames' landscapes. An
iteration that scores worse than the best so far is discarded, and the next one starts again from the best with
half the step (a backtracking line search).
"""
from __future__ import annotations

import copy

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from .geometry import bond_lengths, dihedrals
from .prior import TABLE_INTERVALS, bandwidth, dihedral_density
from . import selection
from .selection import clearly_better, run_rank, short_run_score
from .units import kT as thermal_energy

#: IBI iterations after the uncorrected model's run: on the 11-bead backbone of ACE-AAA-NME the training-frame
#: score still fell at the 8th (0.071 -> 0.041 after 3 -> 0.023 after 8), and the independent references' js / floor
#: went from 8.6x (3) to 2.6x (8; NOTES.md, "Pair-distance refinement")
REFINE_ITERATIONS = 8
#: The fraction of each IBI step taken first (halved after each worse iteration): the pair distances and the
#: dihedrals they span are corrected together and are correlated, so full steps overshoot (on a C-alpha trace of
#: ACE-AAA-NME full steps diverged), and on backbone maps, with many more pairs, so did half steps. A quarter
#: step was better on two backbone maps and worse on two C-alpha traces; chosen by the worst case (NOTES.md,
#: "Pair-distance refinement")
REFINE_DAMPING = 0.25
#: A correction stays within this many kT of its mean
CORRECTION_CAP_KT = 3.0
#: The correction is updated where both densities exceed this fraction of the data density's maximum
MIN_RELATIVE_DENSITY = 0.02
#: Density estimates: the histogram smoothed by this many Silverman bandwidths of the training distances
SMOOTHING = 1.0


def correction_pairs(topology):
    """The bead pairs (n, 2) the refinement corrects: every pair three or more bonds apart in ``topology`` (a
    :class:`cgdml.topology.CGTopology`), the pairs whose distance the angles and dihedrals between them set."""
    return topology.pairs_apart(3)


def pair_grids(r_data, intervals=TABLE_INTERVALS):
    """The table grids (n_pairs, intervals + 1) nm of the corrections: each pair's training range of distances
    ``r_data`` (n_frames, n_pairs)."""
    lo, hi = r_data.min(0), r_data.max(0)
    return np.linspace(lo, hi, intervals + 1).T


def density(r, grid, width):
    """Smoothed density (len(grid),) of the distances r (n,) nm on the evenly spaced ``grid``: a histogram on
    bins of grid spacing / 4 smoothed by a Gaussian of ``width`` nm, read at the grid points, summing to 1 over
    the fine bins (samples outside the grid fall away)."""
    h = (grid[-1] - grid[0]) / (len(grid) - 1) / 4
    edges = grid[0] - h / 2 + np.arange(4 * (len(grid) - 1) + 2) * h
    counts = np.histogram(r, bins=edges)[0].astype(np.float64)
    p = gaussian_filter1d(counts, max(width / h, 1.0), mode="constant", truncate=4.0)
    p /= max(len(r), 1)
    return p[::4]


def log_ratio_step(p_model, p_data, x, kT, period=None):
    """The IBI step kT ln[p_model / p_data] (len(x),) kJ/mol from two densities at the points x, defined where both
    exceed :data:`MIN_RELATIVE_DENSITY` of the data density's maximum and interpolated (periodically with
    ``period``) between and past those points (zero when nowhere defined), its population-weighted mean removed."""
    floor = MIN_RELATIVE_DENSITY * p_data.max()
    ok = (p_model > floor) & (p_data > floor)
    if ok.sum() < 2:
        return np.zeros(len(x))
    step = np.interp(x, x[ok], kT * np.log(p_model[ok] / p_data[ok]), period=period)
    return step - np.average(step, weights=p_data + 1e-300)


def ibi_update(r_model, r_data, grid, kT, width):
    """The IBI step (len(grid),) kJ/mol of one pair's distances on ``grid`` (:func:`log_ratio_step` of the
    :func:`density` of the model's and the data's distances, both smoothed by ``width`` nm)."""
    return log_ratio_step(density(r_model, grid, width), density(r_data, grid, width), grid, kT)


def correction_splines(values, grids):
    """Clamped cubic splines (zero slope at both ends, so the term is flat and forceless past its range) through
    ``values`` (n_pairs, intervals + 1) kJ/mol on ``grids``: coefficients (n_pairs, intervals, 4) and ranges
    (n_pairs, 2) nm, as :meth:`cgdml.prior.CGPrior.set_pair_corrections` takes them."""
    splines = np.stack([CubicSpline(g, v, bc_type="clamped").c.T for g, v in zip(grids, values)])
    return splines, np.stack([grids[:, 0], grids[:, -1]], axis=1)


def dihedral_update(phi_model, phi_data, nodes, kT):
    """The IBI step (n_nodes,) kJ/mol of one dihedral profile at its ``nodes`` (:func:`log_ratio_step` of the
    smoothed dihedral densities, :func:`cgdml.prior.dihedral_density`)."""
    return log_ratio_step(dihedral_density(phi_model, nodes), dihedral_density(phi_data, nodes), nodes, kT,
                          period=2 * np.pi)


def profile_nodes(prior):
    """The nodes (n_nodes,) rad of ``prior``'s dihedral profiles: -pi + k 2 pi / n_nodes."""
    n = prior.dihedral_splines_.shape[1]
    return -np.pi + np.arange(n) * (2 * np.pi / n)


def corrected(model, pairs, values, grids, dihedral_values=None):
    """A copy of ``model`` whose prior carries the pair corrections ``values`` (n_pairs, intervals + 1) kJ/mol on
    ``grids`` and, with ``dihedral_values`` (n_quads, n_nodes) kJ/mol, its dihedral profiles plus those values at
    their nodes (periodic splines again); the prior and model are copied, the learned force shared."""
    out = copy.copy(model)
    out.prior = copy.deepcopy(model.prior)
    out.prior.set_pair_corrections(pairs, *correction_splines(values, grids))
    if dihedral_values is not None and len(dihedral_values):
        nodes = profile_nodes(model.prior)
        grid = np.append(nodes, np.pi)
        for t, extra in enumerate(dihedral_values):
            U = model.prior.dihedral_profile(t, nodes) + extra
            out.prior.dihedral_splines_[t] = CubicSpline(grid, np.append(U, U[0]), bc_type="periodic").c.T
    return out


def refine_pairs(model, dataset, *, frames=None, baseline=None, iterations=REFINE_ITERATIONS, run=None, seed=0):
    """Iterative Boltzmann correction of ``model``'s distances between beads three or more bonds apart, judged
    by the landscapes of short runs (see the module docstring).

    ``dataset``: the training :class:`cgdml.data.CGDataset` (its Boltzmann frames are the target); ``frames``
    (n, n_beads, 3) nm and ``baseline`` (a :func:`cgdml.selection.short_run_score` row) of the uncorrected model's
    run with the same ``run`` and ``seed``, when the caller has them (the residual-weight judge's winner),
    else simulated here; ``iterations`` IBI steps, each followed by a run.

    Each iteration steps from the best one so far, and halves its step after one that scored worse.
    Returns (model, record): the best of the uncorrected model and every iteration (lowest score; a run that lost
    replicas loses), and a JSON-ready record with ``rule``, ``pairs`` (how many), ``kept`` (the iteration kept, 0
    for none), ``decisive`` (the kept one beats the uncorrected model by more than
    :data:`cgdml.selection.JUDGE_MARGIN` bootstrap standard deviations; None without a bootstrap or when none
    was kept), ``iterations`` (iteration, js, js_std, stopped, frames, max_correction_kT, step) and ``run``.
    """
    from .fes.compare import reference_population

    run = dict(selection.JUDGE_RUN if run is None else run)
    pairs = correction_pairs(dataset.cg_topology)
    record = dict(rule="iterative Boltzmann correction of the distances of beads three or more bonds apart, the "
                       "iteration with the lowest mean landscape JS against the training frames kept (docs/method.md "
                       "§2.6)", pairs=int(len(pairs)), kept=0, decisive=None, iterations=[], run=run)
    if not len(pairs):
        return model, record
    if frames is None or baseline is None:
        baseline, frames = short_run_score(model, dataset, run, seed)
    kT = thermal_energy(dataset.temperature)
    target = reference_population(dataset).coords
    r_data = bond_lengths(target, pairs)
    grids = pair_grids(r_data)
    widths = np.array([SMOOTHING * bandwidth(r_data[:, p]) for p in range(len(pairs))])
    values = np.zeros_like(grids)
    quads, nodes = model.prior.dihedral_quads_, profile_nodes(model.prior)
    phi_data = dihedrals(target, quads)[0] if len(quads) else None
    dihedral_values = np.zeros((len(quads), len(nodes)))
    rows = [dict(iteration=0, **baseline, max_correction_kT=0.0, step=0.0)]
    models = [model]
    best, step = 0, REFINE_DAMPING
    best_values, best_dihedrals, best_frames = values, dihedral_values, frames
    for it in range(1, int(iterations) + 1):
        if rows[best]["frames"] < 2:
            break
        X = np.asarray(best_frames, dtype=np.float64)
        r_model = bond_lengths(X, pairs)
        values = best_values.copy()
        for p in range(len(pairs)):
            values[p] += step * ibi_update(r_model[:, p], r_data[:, p], grids[p], kT, widths[p])
        values = np.clip(values, -CORRECTION_CAP_KT * kT, CORRECTION_CAP_KT * kT)
        dihedral_values = best_dihedrals.copy()
        if len(quads):
            phi_model = dihedrals(X, quads)[0]
            for t in range(len(quads)):
                dihedral_values[t] += step * dihedral_update(phi_model[:, t], phi_data[:, t], nodes, kT)
            dihedral_values = np.clip(dihedral_values, -CORRECTION_CAP_KT * kT, CORRECTION_CAP_KT * kT)
        candidate = corrected(model, pairs, values, grids, dihedral_values)
        row, frames = short_run_score(candidate, dataset, run, seed)
        largest = max(np.abs(values).max(), np.abs(dihedral_values).max(initial=0.0))
        rows.append(dict(iteration=it, **row, max_correction_kT=float(largest / kT), step=float(step)))
        models.append(candidate)
        if run_rank(rows[-1]) < run_rank(rows[best]):
            best, best_values, best_dihedrals, best_frames = it, values, dihedral_values, frames
        else:   # backtrack: the next step starts again from the best iteration, half as long
            step /= 2
    kept = rows[best]
    record.update(kept=best, iterations=rows)
    if best and kept["js_std"] is not None:
        record["decisive"] = clearly_better(kept, rows[0])
    return models[best], record
