"""Which CG configurations to label: the most uncertain ones of a model's own simulation, spread out.

:func:`choose_configurations` ranks frames by the model's force uncertainty (:meth:`cgdml.model.CGModel.
force_uncertainty`), keeps the top ``top_fraction``, and picks ``k`` of them by farthest-point sampling in the
model's own descriptor (inverse pair distances and the chirality sines the model was fitted with), starting from
the most uncertain frame, so that the picks cover the uncertain region rather than cluster in its worst corner.
"""
from __future__ import annotations

import numpy as np

from .._io import CgdmlError
from ..features import descriptor


def farthest_point_order(D, k, first=0):
    """Indices (k,) of rows of D (n, nd) chosen by farthest-point sampling from row ``first`` (in pick order)."""
    n = len(D)
    k = int(min(k, n))
    picks = [int(first)]
    d2 = np.einsum("nd,nd->n", D - D[first], D - D[first])
    for _ in range(k - 1):
        j = int(np.argmax(d2))
        if d2[j] <= 0.0:            # only duplicates left
            break
        picks.append(j)
        diff = D - D[j]
        np.minimum(d2, np.einsum("nd,nd->n", diff, diff), out=d2)
    return np.array(picks, dtype=np.int64)


def choose_configurations(model, frames, k, top_fraction=0.1, uncertainty=None):
    """Choose ``k`` CG configurations of ``frames`` (n, n_beads, 3) nm to label.

    The frames whose force uncertainty is in the top ``top_fraction`` (at least k of them) are candidates; k are
    picked by farthest-point sampling in the model's descriptor from the most uncertain one. ``uncertainty``
    (n,) kJ/mol/nm: the frames' uncertainties if already computed. Returns (indices into ``frames`` (k,) in pick
    order, the uncertainty (n,)). Fewer than k come back when the candidates hold fewer distinct configurations.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if not (int(k) == k and k >= 1):
        raise CgdmlError(f"the number of configurations to choose must be a whole number >= 1, got {k}")
    if not 0 < top_fraction <= 1:
        raise CgdmlError(f"top_fraction must be in (0, 1], got {top_fraction:g}")
    if frames.ndim != 3 or not len(frames):
        raise CgdmlError(f"frames must be shaped (n >= 1, n_beads, 3), got {frames.shape}")
    u = model.force_uncertainty(frames) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    if u.shape != (len(frames),):
        raise CgdmlError(f"{u.shape} uncertainties for {len(frames)} frames")
    finite = np.flatnonzero(np.isfinite(u) & np.isfinite(frames).all(axis=(1, 2)))
    if not len(finite):
        raise CgdmlError("no frame has a finite force uncertainty")
    n_top = min(len(finite), max(int(k), int(np.ceil(top_fraction * len(finite)))))
    top = finite[np.argsort(-u[finite], kind="stable")[:n_top]]       # most uncertain first
    gdml = model.gdml
    D = descriptor(frames[top], gdml.quads, gdml.chiral_scale)
    return top[farthest_point_order(D, k, first=0)], u
