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


SCORES = ("force", "dihedral")


def dihedral_uncertainty(model, frames, quads=None):
    """Posterior std (n,) kJ/mol/rad of the model's generalised force along the soft dihedrals, RMS over them.

    For each dihedral phi (``quads`` (n_quads, 4); default the CG topology's soft dihedrals), b . F with
    b = grad(phi) / |grad(phi)|^2 is the force whose conditional mean is -dA/dphi (docs/method.md §2.6); its std
    over the force posterior's function samples (:meth:`cgdml.uncertainty.ForcePosterior.sample_forces`) is what
    the landscape is unsure of. The RMS force std of :meth:`cgdml.model.CGModel.force_uncertainty` is dominated
    by the stiff bonds and angles instead.
    """
    from ..geometry import dihedral

    frames = np.asarray(frames, dtype=np.float64)
    quads = np.asarray(model.cg_topology.soft_dihedrals() if quads is None else quads, dtype=np.int64).reshape(-1, 4)
    if not len(quads):
        raise CgdmlError("the CG topology has no soft dihedrals for a dihedral uncertainty; use score='force'")
    post = model.uncertainty
    if post is None:
        raise CgdmlError("the model has no force posterior (fit it with uncertainty=True)")
    samples = post.sample_forces(frames)                                   # (S, n, n_beads, 3)
    var = np.zeros(len(frames))
    for quad in quads:
        _, grad = dihedral(frames, quad)                                   # (n, 4, 3)
        b = grad / np.einsum("nkc,nkc->n", grad, grad)[:, None, None]
        g = np.einsum("snkc,nkc->sn", samples[:, :, quad], b)
        var += g.var(axis=0)
    return np.sqrt(var / len(quads))


def choose_configurations(model, frames, k, top_fraction=0.1, uncertainty=None, score="force"):
    """Choose ``k`` CG configurations of ``frames`` (n, n_beads, 3) nm to label.

    The frames whose force uncertainty is in the top ``top_fraction`` (at least k of them) are candidates; k are
    picked by farthest-point sampling in the model's descriptor from the most uncertain one. ``uncertainty``
    (n,): the frames' scores if already computed; else ``score`` says which: "force" (the RMS force std,
    :meth:`cgdml.model.CGModel.force_uncertainty`, kJ/mol/nm) or "dihedral" (:func:`dihedral_uncertainty`,
    kJ/mol/rad). Returns (indices into ``frames`` (k,) in pick order, the scores (n,)). Fewer than k come back
    when the candidates hold fewer distinct configurations.
    """
    if score not in SCORES:
        raise CgdmlError(f"unknown score {score!r} (choose {' or '.join(SCORES)})")
    frames = np.asarray(frames, dtype=np.float64)
    if not (int(k) == k and k >= 1):
        raise CgdmlError(f"the number of configurations to choose must be a whole number >= 1, got {k}")
    if not 0 < top_fraction <= 1:
        raise CgdmlError(f"top_fraction must be in (0, 1], got {top_fraction:g}")
    if frames.ndim != 3 or not len(frames):
        raise CgdmlError(f"frames must be shaped (n >= 1, n_beads, 3), got {frames.shape}")
    if uncertainty is not None:
        u = np.asarray(uncertainty, dtype=np.float64)
    else:
        u = model.force_uncertainty(frames) if score == "force" else dihedral_uncertainty(model, frames)
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
