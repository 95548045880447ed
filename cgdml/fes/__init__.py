"""Free energy: histograms of collective variables, (phi, psi), and the project's FES comparison metric.

F = -kT ln p on a histogram of CVs (radians for dihedrals). :func:`compare_fes` implements docs/method.md §3:

- ``fes_rmse`` (kT): over the bins the reference visits, weighted by reference population, after removing the
  optimal constant offset (the weighted mean difference); a bin the model never visits counts as 0.5 samples;
- ``js``: Jensen-Shannon divergence (nats) of the two normalised histograms.

:func:`split_half_floor` gives the noise floor (the metric between the reference's halves) and
:func:`bootstrap_metrics` error bars from a block bootstrap over the model frames.

The command line is in :mod:`cgdml.fes.__main__` (``python -m cgdml.fes``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import rel_entr

from .._io import CgdmlError, atomic_path

PERIODIC = (-np.pi, np.pi)
BACKBONE = ("C", "N", "CA", "C", "N")


# ------------------------------------------------------------------------------------------------ histograms

def _as_cv(cv):
    cv = np.asarray(cv, dtype=np.float64)
    if cv.ndim == 1:
        cv = cv[:, None]
    if cv.ndim != 2 or cv.shape[1] not in (1, 2):
        raise CgdmlError(f"collective variables must have shape (n,) or (n, 1 or 2), got {cv.shape}")
    if len(cv) == 0:
        raise CgdmlError("no collective-variable samples")
    return cv


def _ranges(range_, dim):
    if range_ is None:
        return [PERIODIC] * dim
    r = np.asarray(range_, dtype=np.float64)
    if r.shape == (2,) and dim == 1:
        return [tuple(r)]
    if r.shape != (dim, 2):
        raise CgdmlError(f"range must give (low, high) for each of the {dim} CV dimension(s), got {range_}")
    return [tuple(x) for x in r]


def _edges(bins, range_, dim):
    return [np.linspace(lo, hi, int(bins) + 1) for lo, hi in _ranges(range_, dim)]


def _bin_index(cv, edges):
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


def _counts(cv, edges, weights=None):
    n_bins = int(np.prod([len(e) - 1 for e in edges]))
    idx = _bin_index(cv, edges)
    keep = idx >= 0
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    return np.bincount(idx[keep], weights=w, minlength=n_bins).astype(np.float64)


def histogram_fes(cv, bins=36, range=None, kT=1.0, weights=None):
    """Free energy F = -kT ln p of 1D or 2D CV samples ``cv`` (n,) or (n, d).

    ``range`` per dimension defaults to [-pi, pi) (dihedrals). Returns (F, edges, counts): F and counts shaped
    (bins,) or (bins, bins), F in units of ``kT`` (kT by default), minimum 0, +inf in empty bins; edges an
    array (1D) or a list of two arrays (2D).
    """
    cv = _as_cv(cv)
    dim = cv.shape[1]
    edges = _edges(bins, range, dim)
    if weights is not None and np.shape(weights) != (len(cv),):
        raise CgdmlError(f"weights must have shape ({len(cv)},), got {np.shape(weights)}")
    counts = _counts(cv, edges, weights).reshape([len(e) - 1 for e in edges])
    if counts.sum() <= 0:
        raise CgdmlError("no samples fall inside the histogram range")
    with np.errstate(divide="ignore"):
        F = -float(kT) * np.log(counts / counts.sum())
    F -= F[np.isfinite(F)].min()
    return F, (edges[0] if dim == 1 else edges), counts


# ------------------------------------------------------------------------------------------------ metrics

def _metrics_from_counts(h_model, h_ref):
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
    cv_model, cv_ref = _as_cv(cv_model), _as_cv(cv_ref)
    if cv_model.shape[1] != cv_ref.shape[1]:
        raise CgdmlError(f"model CVs have {cv_model.shape[1]} dimension(s), reference {cv_ref.shape[1]}")
    edges = _edges(bins, range, cv_ref.shape[1])
    return _metrics_from_counts(_counts(cv_model, edges), _counts(cv_ref, edges))


def split_half_floor(cv_ref, bins=36, range=None):
    """Noise floor: :func:`compare_fes` of the reference's second half (as model) against its first half."""
    cv_ref = _as_cv(cv_ref)
    half = len(cv_ref) // 2
    if half < 1:
        raise CgdmlError("the reference needs at least 2 frames for a split-half noise floor")
    return compare_fes(cv_ref[half:], cv_ref[:half], bins, range)


def bootstrap_metrics(cv_model, cv_ref, n_boot=200, block=None, bins=36, range=None, seed=0):
    """Block-bootstrap error bars of :func:`compare_fes` over the model frames (time-ordered).

    Each resample concatenates random contiguous blocks of ``block`` frames (default n // 50, at least 1)
    up to the original length; blocks should be longer than the correlation time. Returns
    {metric: {"point", "std", "lo", "hi", "bias"}}: the estimate from all frames, the bootstrap standard error,
    point -+ 1.96 std (lo clipped at 0), and the resamples' mean minus the point (repeated frames bias it up).
    """
    cv_model, cv_ref = _as_cv(cv_model), _as_cv(cv_ref)
    n = len(cv_model)
    block = max(1, n // 50) if block is None else int(block)
    if block < 1 or block > n:
        raise CgdmlError(f"bootstrap block must be between 1 and the {n} model frames, got {block}")
    if int(n_boot) < 2:
        raise CgdmlError(f"n_boot must be >= 2, got {n_boot}")
    edges = _edges(bins, range, cv_ref.shape[1])
    h_ref = _counts(cv_ref, edges)
    idx_model = _bin_index(cv_model, edges)
    n_bins = len(h_ref)
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    samples = {"fes_rmse": [], "js": []}
    for _ in np.arange(int(n_boot)):
        starts = rng.integers(0, n - block + 1, size=n_blocks)
        take = (starts[:, None] + np.arange(block)).ravel()[:n]
        sel = idx_model[take]
        h = np.bincount(sel[sel >= 0], minlength=n_bins).astype(np.float64)
        m = _metrics_from_counts(h, h_ref)
        for k in samples:
            samples[k].append(m[k])
    point = _metrics_from_counts(np.bincount(idx_model[idx_model >= 0], minlength=n_bins).astype(np.float64),
                                 h_ref)
    out = {}
    for k, v in samples.items():
        v = np.asarray(v)
        std = float(v.std(ddof=1))
        # resamples repeat frames, so they visit fewer bins and come out biased upwards: the interval is
        # centred on the estimate from all frames, with the bootstrap standard error
        out[k] = {"point": point[k], "std": std, "lo": max(0.0, point[k] - 1.96 * std),
                  "hi": point[k] + 1.96 * std, "bias": float(v.mean() - point[k])}
    out["n_boot"], out["block"] = int(n_boot), block
    return out


# ------------------------------------------------------------------------------------------------ CVs

def _backbone_by_names(names):
    """Indices of C, N, CA, C, N beads (CB beads skipped) in ``names``, or None."""
    order = [i for i, n in enumerate(names) if n.upper() != "CB"]
    upper = [names[i].upper() for i in order]
    for s in np.arange(len(upper) - len(BACKBONE) + 1):
        if tuple(upper[s:s + len(BACKBONE)]) == BACKBONE:
            return [order[s + j] for j in range(len(BACKBONE))]
    return None


def phi_psi(traj_or_coords, topology=None):
    """Backbone (phi, psi) in radians, (n, 2), IUPAC sign as :func:`mdtraj.compute_phi`.

    ``traj_or_coords``: an mdtraj Trajectory, or coordinates (n, n_beads, 3) nm with ``topology`` (mdtraj
    Topology). Uses mdtraj's residue-based phi/psi (ACE/ALA/NME-style residues with C, N, CA, C atoms);
    falls back to the first bead-name run C, N, CA, (CB), C, N.
    """
    import mdtraj as md

    if isinstance(traj_or_coords, md.Trajectory):
        traj = traj_or_coords
    else:
        if topology is None:
            raise CgdmlError("phi_psi needs a topology for plain coordinates")
        xyz = np.asarray(traj_or_coords, dtype=np.float32)
        if xyz.ndim != 3 or xyz.shape[1:] != (topology.n_atoms, 3):
            raise CgdmlError(f"coordinates of shape {xyz.shape} do not match the topology's {topology.n_atoms} atoms")
        traj = md.Trajectory(xyz, topology)
    top = traj.topology
    phi_idx, phi = md.compute_phi(traj)
    psi_idx, psi = md.compute_psi(traj)
    if phi.shape[1] == 1 and psi.shape[1] == 1:
        return np.column_stack([phi[:, 0], psi[:, 0]]).astype(np.float64)
    if phi.shape[1] > 1 or psi.shape[1] > 1:
        raise CgdmlError(f"topology has {phi.shape[1]} phi and {psi.shape[1]} psi dihedrals; phi_psi handles "
                         "a single residue (dipeptide); use mdtraj.compute_dihedrals for longer chains")
    names = [a.name for a in top.atoms]
    bb = _backbone_by_names(names)
    if bb is None:
        raise CgdmlError(f"no backbone found: need residues with C, N, CA, C atoms or beads named "
                         f"C, N, CA, (CB), C, N in order; beads are {', '.join(names)}")
    ang = md.compute_dihedrals(traj, np.array([bb[:4], bb[1:]]))
    return ang.astype(np.float64)


def bonds_and_angles(coords, bond_pairs):
    """Bond lengths (n, n_bonds) nm and angles (n, n_angles) rad between consecutive bonds sharing a bead."""
    coords = np.asarray(coords, dtype=np.float64)
    pairs = [tuple(p) for p in np.asarray(bond_pairs, dtype=np.int64).reshape(-1, 2)]
    lengths = np.stack([np.linalg.norm(coords[:, j] - coords[:, i], axis=-1) for i, j in pairs], axis=1) \
        if pairs else np.zeros((len(coords), 0))
    triples = []
    for a in range(len(pairs)):
        for b in range(a + 1, len(pairs)):
            shared = set(pairs[a]) & set(pairs[b])
            if len(shared) == 1:
                c = shared.pop()
                triples.append(((set(pairs[a]) - {c}).pop(), c, (set(pairs[b]) - {c}).pop()))
    angles = np.zeros((len(coords), len(triples)))
    for t, (i, j, k) in enumerate(triples):
        u, v = coords[:, i] - coords[:, j], coords[:, k] - coords[:, j]
        cos = np.einsum("nk,nk->n", u, v) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
        angles[:, t] = np.arccos(np.clip(cos, -1.0, 1.0))
    return lengths, angles, triples


# ------------------------------------------------------------------------------------------------ plots

def _savefig(fig, path):
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")


def plot_fes(F, edges, ax=None, vmax=8.0, title="", labels=(r"$\phi$ (rad)", r"$\psi$ (rad)")):
    """Draw a 2D free-energy landscape (kT) on ``ax``; returns the image."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    img = ax.pcolormesh(edges[0], edges[1], np.ma.masked_invalid(F).T, cmap="viridis", vmin=0, vmax=vmax,
                        shading="flat")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_aspect("equal")
    ax.set_title(title)
    return img


def plot_comparison(path, cv_model, cv_ref=None, bins=36, range=None, metrics=None, floor=None,
                    distributions=None, vmax=8.0):
    """Save a figure (atomically) and return it: model FES, and with a reference the reference FES and the
    offset-removed difference map; ``distributions`` = [(label, model_values, ref_values), ...] adds 1D
    histograms. The figure is built without pyplot, so the caller's matplotlib backend is left alone
    (in Jupyter, display the returned figure)."""
    from matplotlib.figure import Figure

    n_top = 1 if cv_ref is None else 3
    n_bottom = len(distributions or [])
    ncols = max(n_top, min(n_bottom, 4))
    nrows = 1 + -(-n_bottom // ncols) if n_bottom else 1
    fig = Figure(figsize=(4.6 * ncols, 4.0 * nrows))
    F_m, edges, _ = histogram_fes(cv_model, bins, range)
    ax = fig.add_subplot(nrows, ncols, 1)
    fig.colorbar(plot_fes(F_m, edges, ax, vmax, f"CG model ({len(_as_cv(cv_model))} frames)"), ax=ax,
                 label="F (kT)")
    if cv_ref is not None:
        F_r, _, counts_r = histogram_fes(cv_ref, bins, range)
        ax = fig.add_subplot(nrows, ncols, 2)
        fig.colorbar(plot_fes(F_r, edges, ax, vmax, f"reference ({len(_as_cv(cv_ref))} frames)"), ax=ax,
                     label="F (kT)")
        offset = (metrics or compare_fes(cv_model, cv_ref, bins, range))["offset"]
        _, _, counts_m = histogram_fes(cv_model, bins, range)
        f_m = -np.log(np.maximum(counts_m, 0.5) / counts_m.sum())
        with np.errstate(divide="ignore"):
            f_r = -np.log(counts_r / counts_r.sum())
        diff = np.where(counts_r > 0, f_m - f_r - offset, np.nan)
        ax = fig.add_subplot(nrows, ncols, 3)
        img = ax.pcolormesh(edges[0], edges[1], np.ma.masked_invalid(diff).T, cmap="RdBu_r", vmin=-3, vmax=3)
        title = "model - reference"
        if metrics:
            title += f"\nRMSE {metrics['fes_rmse']:.2f} kT, JS {metrics['js']:.3f}"
            if floor:
                title += f" (floor {floor['fes_rmse']:.2f}, {floor['js']:.3f})"
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$\phi$ (rad)")
        fig.colorbar(img, ax=ax, label=r"$\Delta F$ (kT)")
    for k, (label, model_vals, ref_vals) in enumerate(distributions or []):
        ax = fig.add_subplot(nrows, ncols, ncols + 1 + k)
        allv = np.concatenate([np.ravel(model_vals)] + ([np.ravel(ref_vals)] if ref_vals is not None else []))
        allv = allv[np.isfinite(allv)]
        lo, hi = np.percentile(allv, [0.1, 99.9])
        e = np.linspace(lo, hi, 60)
        ax.hist(np.ravel(model_vals), e, density=True, histtype="step", label="CG model")
        if ref_vals is not None:
            ax.hist(np.ravel(ref_vals), e, density=True, histtype="step", label="reference")
        ax.set_xlabel(label)
        ax.legend(fontsize="small")
    fig.tight_layout()
    _savefig(fig, path)
    return fig
