"""Stratification and batch drawing for the two-layer scheme (docs/method.md §2.6).

Frames are assigned to strata, either cells of a grid over collective variables (phi/psi for peptides,
or any CV the user computes) or k-means clusters in descriptor space. Batches are then drawn uniformly
over the occupied strata, so rare regions are represented as well as the common ones.
"""
from __future__ import annotations

import numpy as np

from ._io import CgdmlError

STRATA = ("auto", "phi-psi", "backbone-kmeans", "kmeans")


def grid_strata(cv, bins=12, range=None, periodic=True):
    """Stratum label (n_frames,) of each frame: its cell on a regular grid over ``cv`` (n_frames, n_cv).

    ``range`` is a sequence of (low, high) per CV, default (-pi, pi) for every CV when ``periodic``.
    Labels are renumbered 0..n_occupied-1.
    """
    cv = np.asarray(cv, dtype=np.float64)
    if cv.ndim == 1:
        cv = cv[:, None]
    n_cv = cv.shape[1]
    bins = np.broadcast_to(np.asarray(bins, dtype=np.int64), (n_cv,))
    if range is None:
        if not periodic:
            raise CgdmlError("grid_strata needs a range for non-periodic CVs")
        range = [(-np.pi, np.pi)] * n_cv
    cell = np.zeros(len(cv), dtype=np.int64)
    for k, ((low, high), nb) in enumerate(zip(range, bins)):
        idx = np.floor((cv[:, k] - low) / (high - low) * nb).astype(np.int64)
        idx = np.mod(idx, nb) if periodic else np.clip(idx, 0, nb - 1)
        cell = cell * nb + idx
    return np.unique(cell, return_inverse=True)[1]


def kmeans_strata(features, n_strata=50, seed=0, weights=None):
    """Stratum label (n_frames,) from MiniBatchKMeans on ``features`` (n_frames, n_features).

    ``weights`` (n_frames,), the frames' Boltzmann weights (:attr:`cgdml.data.CGDataset.weights`): the clusters
    are fitted to the frames of positive weight, weighted (the populations), and every frame is then labelled
    by its nearest cluster. Equal weights give the unweighted fit.
    """
    from sklearn.cluster import MiniBatchKMeans

    features = np.asarray(features, dtype=np.float64)
    if weights is None or np.all(np.asarray(weights) == weights[0]):
        fit_on, w = features, None
    else:
        weights = np.asarray(weights, dtype=np.float64)
        keep = weights > 0
        fit_on, w = features[keep], weights[keep]
        w = None if np.all(w == w[0]) else w / w.mean()
    n_strata = int(min(n_strata, len(fit_on)))
    km = MiniBatchKMeans(n_clusters=n_strata, random_state=seed, n_init=3, batch_size=2048)
    if fit_on is features:
        return np.unique(km.fit_predict(features, sample_weight=w), return_inverse=True)[1]
    km.fit(fit_on, sample_weight=w)
    return np.unique(km.predict(features), return_inverse=True)[1]


def stratified_batch(labels, size, rng, replace=False, pool=None):
    """Indices (size,) of frames drawn uniformly over the occupied strata.

    Each occupied stratum gets an equal share of ``size``. Without replacement, a stratum with fewer
    frames than its share gives all it has and the remainder is spread over the others. ``pool``
    (optional indices) restricts the draw to a subset of frames, e.g. the training folds.
    """
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    if size <= 0:
        raise CgdmlError(f"batch size must be positive, got {size}")
    if not replace and size > len(pool):
        raise CgdmlError(f"cannot draw {size} frames without replacement from {len(pool)}")
    pool_labels = labels[pool]
    order = np.argsort(pool_labels, kind="stable")
    strata, starts, counts = np.unique(pool_labels[order], return_index=True, return_counts=True)
    members = [order[s:s + c] for s, c in zip(starts, counts)]
    if replace:
        chosen_strata = rng.integers(len(strata), size=size)
        picks = [members[s][rng.integers(counts[s])] for s in chosen_strata]
        return pool[np.array(picks, dtype=np.int64)]
    share = _water_fill(counts, size, rng)
    picks = [rng.choice(m, size=k, replace=False) for m, k in zip(members, share) if k > 0]
    out = pool[np.concatenate(picks)]
    rng.shuffle(out)
    return out


def _water_fill(counts, size, rng):
    """Split ``size`` over strata as evenly as their ``counts`` allow (random tie-breaking)."""
    share = np.zeros(len(counts), dtype=np.int64)
    remaining = size
    open_ = np.ones(len(counts), dtype=bool)
    while remaining > 0:
        idx = np.flatnonzero(open_)
        per = remaining // len(idx)
        if per == 0:
            lucky = rng.choice(idx, size=remaining, replace=False)
            share[lucky] += 1
            break
        add = np.minimum(per, counts[idx] - share[idx])
        share[idx] += add
        remaining -= add.sum()
        open_ = share < counts
    return share


def stratified_folds(labels, n_folds, rng):
    """Fold index (n_frames,) in 0..n_folds-1, balanced within every stratum."""
    labels = np.asarray(labels)
    folds = np.empty(len(labels), dtype=np.int64)
    for s in np.unique(labels):
        idx = np.flatnonzero(labels == s)
        rng.shuffle(idx)
        folds[idx] = (np.arange(len(idx)) + rng.integers(n_folds)) % n_folds
    return folds


def make_strata(dataset, method="auto", grid_bins=12, n_strata=50, seed=0):
    """Stratum labels (n_frames,) and the name of the method used, from the dataset's CG topology.

    ``auto``: a (phi, psi) grid for a peptide with one residue; k-means on (cos, sin) of every backbone dihedral
    for longer peptides; else k-means in descriptor space (inverse distances and the sines of the graph's
    dihedrals). ``phi-psi`` and ``backbone-kmeans`` force the first two (an error without a backbone),
    ``kmeans`` the last. K-means clusters are fitted to the frames of positive weight (:func:`kmeans_strata`);
    the (phi, psi) grid does not depend on populations.
    """
    from .features import descriptor
    from .geometry import dihedrals

    if method not in STRATA:
        raise CgdmlError(f"unknown stratification {method!r} (use {', '.join(STRATA)})")
    topo = dataset.cg_topology
    backbone = topo.backbone_quads()
    if method in ("phi-psi", "backbone-kmeans") and not len(backbone):
        raise CgdmlError(f"stratification {method!r} needs a peptide backbone (bonded beads named C, N, CA, C, N); "
                         f"the topology has none ({topo.describe()})")
    if method == "phi-psi" and len(backbone) != 2:
        raise CgdmlError(f"stratification 'phi-psi' is for one residue; this peptide has {len(backbone) // 2} "
                         "(use auto or backbone-kmeans)")
    if method in ("auto", "phi-psi") and len(backbone) == 2:
        return grid_strata(dihedrals(dataset.coords, backbone)[0], bins=grid_bins), "phi-psi"
    if method in ("auto", "backbone-kmeans") and len(backbone):
        angles = dihedrals(dataset.coords, backbone)[0]
        return kmeans_strata(np.concatenate([np.cos(angles), np.sin(angles)], axis=1), n_strata, seed,
                             dataset.weights), "backbone-kmeans"
    return kmeans_strata(descriptor(dataset.coords, topo.chirality_quads), n_strata, seed, dataset.weights), "kmeans"
