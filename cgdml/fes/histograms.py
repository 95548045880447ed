"""Histograms of collective variables and the FES comparison metric of docs/method.md §3.

F = -kT ln p on a histogram of CVs (radians for dihedrals); :func:`compare_fes` gives ``fes_rmse`` (kT, over the
bins the reference visits, weighted by reference population, after the optimal constant offset; a bin the model
never visits counts as 0.5 samples) and ``js`` (Jensen-Shannon divergence in nats of the normalised histograms);
:func:`split_half_floor` the noise floor between the reference's halves; :func:`bootstrap_metrics` error bars
from a block bootstrap over the model frames. Re-exported by :mod:`cgdml.fes`.
"""
from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from .._io import CgdmlError

PERIODIC = (-np.pi, np.pi)


# ------------------------------------------------------------------------------------------------ histograms

def as_cv_array(cv):
    cv = np.asarray(cv, dtype=np.float64)
    if cv.ndim == 1:
        cv = cv[:, None]
    if cv.ndim != 2 or cv.shape[1] not in (1, 2):
        raise CgdmlError(f"collective variables must have shape (n,) or (n, 1 or 2), got {cv.shape}")
    if len(cv) == 0:
        raise CgdmlError("no collective-variable samples")
    return cv


def histogram_ranges(range_, dim):
    if range_ is None:
        return [PERIODIC] * dim
    r = np.asarray(range_, dtype=np.float64)
    if r.shape == (2,) and dim == 1:
        return [tuple(r)]
    if r.shape != (dim, 2):
        raise CgdmlError(f"range must give (low, high) for each of the {dim} CV dimension(s), got {range_}")
    return [tuple(x) for x in r]


def bin_edges(bins, range_, dim):
    return [np.linspace(lo, hi, int(bins) + 1) for lo, hi in histogram_ranges(range_, dim)]


def bin_index(cv, edges):
    """Flat bin index of each sample (n,), -1 outside the range. Bins are [lo, hi) except the last, closed."""
    flat = np.zeros(len(cv), dtype=np.int64)
    inside = np.ones(len(cv), dtype=bool)
    for d, e in enumerate(edges):
        nb = len(e) - 1
        i = np.searchsorted(e, cv[:, d], side="right") - 1
        i[cv[:, d] == e[-1]] = nb - 1
        inside &= (i >= 0) & (i < nb) & np.isfinite(cv[:, d])
        flat = flat * nb + np.clip(i, 0, nb - 1)
    return np.where(inside, flat, -1)


def bin_counts(cv, edges, weights=None):
    n_bins = int(np.prod([len(e) - 1 for e in edges]))
    idx = bin_index(cv, edges)
    keep = idx >= 0
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    return np.bincount(idx[keep], weights=w, minlength=n_bins).astype(np.float64)


def histogram_fes(cv, bins=36, range=None, kT=1.0, weights=None):
    """Free energy F = -kT ln p of 1D or 2D CV samples ``cv`` (n,) or (n, d).

    ``range`` per dimension defaults to [-pi, pi) (dihedrals). Returns (F, edges, counts): F and counts shaped
    (bins,) or (bins, bins), F in units of ``kT`` (kT by default), minimum 0, +inf in empty bins; edges an
    array (1D) or a list of two arrays (2D).
    """
    cv = as_cv_array(cv)
    dim = cv.shape[1]
    edges = bin_edges(bins, range, dim)
    if weights is not None and np.shape(weights) != (len(cv),):
        raise CgdmlError(f"weights must have shape ({len(cv)},), got {np.shape(weights)}")
    counts = bin_counts(cv, edges, weights).reshape([len(e) - 1 for e in edges])
    if counts.sum() <= 0:
        raise CgdmlError("no samples fall inside the histogram range")
    with np.errstate(divide="ignore"):
        F = -float(kT) * np.log(counts / counts.sum())
    F -= F[np.isfinite(F)].min()
    return F, (edges[0] if dim == 1 else edges), counts


# ------------------------------------------------------------------------------------------------ metrics

def metrics_from_counts(h_model, h_ref):
    n_model, n_ref = h_model.sum(), h_ref.sum()
    if n_model <= 0 or n_ref <= 0:
        raise CgdmlError("a histogram for the FES comparison is empty (no samples inside the CV range)")
    visited = h_ref > 0
    w = h_ref[visited] / n_ref                                    # reference population of visited bins
    f_ref = -np.log(w)
    f_model = -np.log(np.maximum(h_model[visited], 0.5) / n_model)   # never-visited bin: half a sample
    diff = f_model - f_ref
    offset = np.dot(w, diff)                                     # optimal constant under these weights
    rmse = float(np.sqrt(np.dot(w, (diff - offset) ** 2)))
    p, q = h_ref / n_ref, h_model / n_model
    m = 0.5 * (p + q)
    js = float(0.5 * rel_entr(p, m).sum() + 0.5 * rel_entr(q, m).sum())
    return {"fes_rmse": rmse, "js": js, "offset": float(offset), "n_model": int(round(n_model)),
            "n_ref": int(round(n_ref)), "bins_ref_visited": int(visited.sum()),
            "bins_missed_by_model": int((visited & (h_model == 0)).sum())}


def compare_fes(cv_model, cv_ref, bins=36, range=None):
    """FES comparison of model CV samples against reference ones (docs/method.md §3): dict with ``fes_rmse`` (kT),
    ``js`` (nats), the removed ``offset`` (kT), sample and bin counts."""
    cv_model, cv_ref = as_cv_array(cv_model), as_cv_array(cv_ref)
    if cv_model.shape[1] != cv_ref.shape[1]:
        raise CgdmlError(f"model CVs have {cv_model.shape[1]} dimension(s), reference {cv_ref.shape[1]}")
    edges = bin_edges(bins, range, cv_ref.shape[1])
    return metrics_from_counts(bin_counts(cv_model, edges), bin_counts(cv_ref, edges))


def split_half_floor(cv_ref, bins=36, range=None):
    """Noise floor: :func:`compare_fes` of the reference's second half (as model) against its first half."""
    cv_ref = as_cv_array(cv_ref)
    half = len(cv_ref) // 2
    if half < 1:
        raise CgdmlError("the reference needs at least 2 frames for a split-half noise floor")
    return compare_fes(cv_ref[half:], cv_ref[:half], bins, range)


def block_resamples(n, n_boot, block, seed):
    """Frame indices of ``n_boot`` block-bootstrap resamples of ``n`` time-ordered frames (generator)."""
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    for _ in np.arange(int(n_boot)):
        starts = rng.integers(0, n - block + 1, size=n_blocks)
        yield (starts[:, None] + np.arange(block)).ravel()[:n]


def check_bootstrap(n, n_boot, block):
    block = max(1, n // 50) if block is None else int(block)
    if block < 1 or block > n:
        from ..validation import ParameterError

        raise ParameterError("block", f"(the bootstrap block length) must be between 1 and {n}, the model frames, "
                                      f"got {block}")
    if int(n_boot) < 2:
        raise CgdmlError(f"n_boot must be >= 2, got {n_boot}")
    return block


def bootstrap_undefined(n, block):
    """Why a block bootstrap of ``n`` frames in blocks of ``block`` has no interval (fewer than 2 blocks: every
    resample is the same frames, a zero-width interval that would claim certainty), else None."""
    block = max(1, n // 50) if block is None else int(block)
    if n // max(block, 1) < 2:
        return (f"{n} model frame(s) in blocks of {block} make fewer than 2 blocks, so every resample is the same "
                "frames")
    return None


def bootstrap_summary(point, samples):
    v = np.asarray(samples, dtype=np.float64)
    std = float(v.std(ddof=1))
    # resamples repeat frames, so they visit fewer bins and come out biased upwards: the interval is
    # centred on the estimate from all frames, with the bootstrap standard error
    return {"point": float(point), "std": std, "lo": max(0.0, point - 1.96 * std), "hi": point + 1.96 * std,
            "bias": float(v.mean() - point)}


def bootstrap_draws(idx_models, h_refs, n_boot, block, seed):
    """Per panel {metric: array (n_boot,)} over shared block resamples of the model frames (the same
    resamples for every panel, so that the mean over panels can be bootstrapped too)."""
    n = len(idx_models[0])
    samples = [{"fes_rmse": [], "js": []} for _ in idx_models]
    for take in block_resamples(n, n_boot, block, seed):
        for s, idx, h_ref in zip(samples, idx_models, h_refs):
            sel = idx[take]
            m = metrics_from_counts(np.bincount(sel[sel >= 0], minlength=len(h_ref)).astype(np.float64), h_ref)
            for k in s:
                s[k].append(m[k])
    return [{k: np.asarray(v) for k, v in s.items()} for s in samples]


def bootstrap_metrics(cv_model, cv_ref, n_boot=200, block=None, bins=36, range=None, seed=0):
    """Block-bootstrap error bars of :func:`compare_fes` over the model frames (time-ordered).

    Each resample concatenates random contiguous blocks of ``block`` frames (default n // 50, at least 1)
    up to the original length; blocks should be longer than the correlation time. Returns
    {metric: {"point", "std", "lo", "hi", "bias"}}: the estimate from all frames, the bootstrap standard error,
    point -+ 1.96 std (lo clipped at 0), and the resamples' mean minus the point (repeated frames bias it up).
    """
    cv_model, cv_ref = as_cv_array(cv_model), as_cv_array(cv_ref)
    block = check_bootstrap(len(cv_model), n_boot, block)
    why = bootstrap_undefined(len(cv_model), block)
    if why:
        raise CgdmlError(f"no bootstrap interval: {why}")
    edges = bin_edges(bins, range, cv_ref.shape[1])
    h_ref = bin_counts(cv_ref, edges)
    idx_model = bin_index(cv_model, edges)
    samples = bootstrap_draws([idx_model], [h_ref], n_boot, block, seed)[0]
    point = metrics_from_counts(np.bincount(idx_model[idx_model >= 0], minlength=len(h_ref)).astype(np.float64),
                                 h_ref)
    out = {k: bootstrap_summary(point[k], v) for k, v in samples.items()}
    out["n_boot"], out["block"] = int(n_boot), block
    return out
