"""The model's share of a landscape's uncertainty: CG frames reweighted with posterior function samples
(docs/uncertainty.md §11).

A CG trajectory of a fitted model samples exp(-U(x) / kT), with U the posterior-mean energy. Posterior function
sample s adds dE_s(x) kJ/mol (:meth:`cgdml.uncertainty.ForcePosterior.sample_model`), so the same frames with
weights w_s(x) ~ exp(-dE_s(x) / kT) sample that plausible force field's Boltzmann distribution. One histogram per
sample gives one landscape per sample; their spread per bin (kT) and the spread of the metrics (``fes_rmse``,
``js``) are the model's contribution to the landscape uncertainty, beside the sampling (block bootstrap) part of
:mod:`cgdml.fes.histograms`. The two are combined in quadrature into a 95% band.

Reweighting is trustworthy only while no sample's weights sit on a few frames: :class:`ModelWeights` checks the
Kish effective sample size of every sample, and below ``min_ess`` (a fraction of the frames) the band is taken to
first order in the energy deviations instead (:func:`first_order_counts`): bin b of sample s moves by the mean of
dE_s / kT over the bin's frames, which needs no weights and so cannot collapse. It is exact for deviations that are
constant within each bin and for small ones, an approximation otherwise (docs/uncertainty.md §11).

Free energies are aligned as the metric aligns them (docs/method.md §3): F(b) - sum_b w(b) F(b) with w the
reference's population (the model's own without a reference), an empty bin counting as half a sample.

The posterior is that of one fit at fixed hyperparameters, and misses what a refit of the whole estimator (prior,
inducing points, basin offsets) on other data would change. Block-jackknife refits (the same fit, each without one
of K contiguous blocks of the training frames) reweight the frames too, with weights exp(-(U_k - U) / kT), and their
jackknife variance (K - 1) / K sum_k (F_k - mean F)^2 per bin is added to the posterior's (docs/uncertainty.md §11).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .._io import CgdmlError
from ..data import as_coordinates
from ..features import descriptor
from .histograms import block_resamples, check_bootstrap, metrics_from_counts

#: smallest Kish effective sample size, as a fraction of the frames, at which the band is reweighted (below it:
#: first order)
MIN_ESS = 0.1
#: the estimators of the model band: "auto" (reweighted while the ESS allows, else first order) or either forced
ESTIMATORS = ("auto", "reweighted", "first-order")
#: reference bins with fewer frames are not counted in the band coverage
MIN_COUNT = 20
Z95 = 1.959963984540054
METRICS = ("fes_rmse", "js")


# ------------------------------------------------------------------------------------------------ weights
def sample_energies(posterior, R, chunk=1024):
    """Energy deviations (n_samples, n) kJ/mol of every posterior function sample at R (n, n_beads, 3) nm.

    Row s equals ``posterior.sample_model(s).predict(R)[0]``; all samples share the inducing configurations,
    so one kernel evaluation per frame and inducing point serves them all (a force call's cost, roughly, for
    all samples together). With a = sqrt(5) / sigma and r_j = |D(x) - D_j|:
    E_s(x) = -5 / (3 sigma^2) sum_j (1 + a r_j) exp(-a r_j) (D(x) - D_j) . v_sj.
    """
    R = as_coordinates(R, posterior.n_beads, "posterior samples")
    Du = posterior.inducing_descriptors                      # (m, nd)
    V = posterior.sample_coefficients                        # (S, m, nd)
    S, m, nd = V.shape
    Vm = np.ascontiguousarray(V.transpose(1, 0, 2).reshape(m, S * nd))
    tv = np.einsum("smd,md->ms", V, Du)                      # (m, S): D_j . v_sj
    sq = np.einsum("md,md->m", Du, Du)
    a = np.sqrt(5.0) / posterior.sigma
    out = np.empty((S, len(R)))
    for b0 in range(0, len(R), int(chunk)):
        X = descriptor(R[b0:b0 + chunk], posterior.quads, posterior.chiral_scale)
        r = np.sqrt(np.maximum(np.einsum("bd,bd->b", X, X)[:, None] + sq[None] - 2.0 * X @ Du.T, 0.0))
        C = (1.0 + a * r) * np.exp(-a * r)                   # (B, m)
        XV = (C @ Vm).reshape(len(X), S, nd)
        out[:, b0:b0 + len(X)] = (-5.0 / (3.0 * posterior.sigma ** 2)) * (np.einsum("bsd,bd->sb", XV, X)
                                                                          - (C @ tv).T)
    return out


def sample_weights(energies, kT):
    """Normalised Boltzmann reweighting factors (S, n): w_si ~ exp(-E_si / kT), each row summing to 1, for
    energy deviations ``energies`` (S, n) kJ/mol and ``kT`` kJ/mol."""
    E = np.atleast_2d(np.asarray(energies, dtype=np.float64))
    if not (np.isfinite(kT) and kT > 0):
        raise CgdmlError(f"kT must be a positive number, got {kT!r}")
    if not np.isfinite(E).all():
        raise CgdmlError("posterior sample energies hold NaN or inf")
    logw = -E / float(kT)
    logw -= logw.max(axis=1, keepdims=True)
    w = np.exp(logw)
    return w / w.sum(axis=1, keepdims=True)


def effective_sample_size(weights):
    """Kish effective sample size (S,) of normalised weight rows (S, n): 1 / sum_i w_si^2 (n for equal weights)."""
    w = np.atleast_2d(weights)
    return 1.0 / np.einsum("si,si->s", w, w)


@dataclasses.dataclass
class ModelWeights:
    """Reweighting factors of the frames of a CG trajectory under the posterior function samples.

    ``weights`` (n_samples, n_frames), each row summing to 1; ``kT`` kJ/mol (the trajectories' temperature);
    ``min_ess``: the smallest effective sample size, as a fraction of the frames, at which the band is reweighted
    (below it the band is first order: :attr:`estimator_used`).
    """
    weights: np.ndarray
    kT: float
    min_ess: float = MIN_ESS
    #: reweighting factors (n_refits, n_frames) of block-jackknife refits of the model, or None
    refit_weights: np.ndarray = None
    #: the energy deviations (n_samples, n_frames) kJ/mol the weights came from (None: recovered from the weights)
    energies: np.ndarray = None
    #: the refits' energy deviations U_k - U (n_refits, n_frames) kJ/mol, or None
    refit_energies: np.ndarray = None
    #: "auto" (reweighted while every ESS allows, else first order), "reweighted" or "first-order" (forced)
    estimator: str = "auto"

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise CgdmlError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")

    @property
    def n_samples(self):
        return self.weights.shape[0]

    @property
    def n_refits(self):
        return 0 if self.refit_weights is None else self.refit_weights.shape[0]

    @property
    def ess_fraction(self):
        """Kish effective sample size of each sample's weights over the frame count (n_samples,)."""
        return effective_sample_size(self.weights) / self.weights.shape[1]

    @property
    def refit_ess_fraction(self):
        """The same for each refit's weights (n_refits,), empty without refits."""
        if self.refit_weights is None:
            return np.zeros(0)
        return effective_sample_size(self.refit_weights) / self.refit_weights.shape[1]

    @property
    def low_ess_samples(self):
        """Indices of the samples whose effective sample size is below ``min_ess``."""
        return np.flatnonzero(self.ess_fraction < self.min_ess)

    @property
    def low_ess_refits(self):
        """Indices of the refits whose effective sample size is below ``min_ess``."""
        return np.flatnonzero(self.refit_ess_fraction < self.min_ess)

    @property
    def too_small(self):
        """True when some sample's (or refit's) effective sample size is below ``min_ess``: reweighting is not
        trusted, and the band is first order (dropping those samples would keep the ones closest to the mean,
        and the band would understate the spread)."""
        return bool(len(self.low_ess_samples) or len(self.low_ess_refits))

    @property
    def estimator_used(self):
        """The band's estimator, "reweighted" or "first-order": the forced ``estimator``, else first order when
        :attr:`too_small`. Samples and refits always share one estimator."""
        if self.estimator != "auto":
            return self.estimator
        return "first-order" if self.too_small else "reweighted"

    def reduced_energies(self, refits=False):
        """The energy deviations over kT (n_samples, n_frames), or the refits' with ``refits`` (None without
        refits): the stored energies, else -ln w (each row up to a constant, which the first-order band
        ignores)."""
        E, w = (self.refit_energies, self.refit_weights) if refits else (self.energies, self.weights)
        if E is not None:
            return np.atleast_2d(np.asarray(E, dtype=np.float64)) / self.kT
        if w is None:
            return None
        return -np.log(np.maximum(w, np.finfo(np.float64).tiny))

    def warning(self):
        """One line when the band is not the trusted reweighted one (the ESS collapsed, or an estimator was
        forced against it), else None."""
        if not self.too_small:
            return None
        if len(self.low_ess_samples):
            e, what = self.ess_fraction, "posterior sample"
            count = f"{len(self.low_ess_samples)} of {self.n_samples} samples below {self.min_ess:.0%}"
        else:
            e, what = self.refit_ess_fraction, "jackknife refit"
            count = f"{len(self.low_ess_refits)} of {self.n_refits} refits below {self.min_ess:.0%}"
        head = (f"{what} reweighting collapsed: the effective sample size of the weights falls to {e.min():.1%} of "
                f"the frames ({count}, median {np.median(e):.1%})")
        if self.estimator_used == "reweighted":
            return head + "; the reweighted model band was forced and understates the spread"
        return (head + "; the model band is first order in the model's energy uncertainty instead (each bin moves "
                "by the bin's mean energy deviation, docs/uncertainty.md §11), an approximation")

    def summary(self):
        """The report's description: n_samples, kT, n_frames, the ESS fractions (min, median, max),
        min_ess_fraction, low_ess_samples (indices), the flag ess_too_small and the estimator of the band
        ("reweighted" or "first-order"); with refits also n_refits, refit_ess_fraction (min, median, max) and
        low_ess_refits."""
        e = self.ess_fraction
        out = {"n_samples": int(self.n_samples), "kT": float(self.kT), "n_frames": int(self.weights.shape[1]),
               "ess_fraction": {"min": float(e.min()), "median": float(np.median(e)), "max": float(e.max())},
               "min_ess_fraction": float(self.min_ess), "low_ess_samples": self.low_ess_samples.tolist(),
               "ess_too_small": self.too_small, "estimator": self.estimator_used}
        if self.n_refits:
            r = self.refit_ess_fraction
            out.update(n_refits=self.n_refits, low_ess_refits=self.low_ess_refits.tolist(),
                       refit_ess_fraction={"min": float(r.min()), "median": float(np.median(r)),
                                           "max": float(r.max())})
        return out


def model_weights(posterior, R, kT, min_ess=MIN_ESS, refit_energies=None, estimator="auto"):
    """:class:`ModelWeights` of frames R (n, n_beads, 3) nm under the samples of ``posterior`` (a
    :class:`cgdml.uncertainty.ForcePosterior`) at ``kT`` kJ/mol (the temperature the frames were sampled at).
    ``refit_energies`` (K, n) kJ/mol: U_k - U at the frames for K >= 2 block-jackknife refits of the model (any
    constant per row), or None; ``estimator``: see :class:`ModelWeights`."""
    if posterior.n_samples < 2:
        raise CgdmlError(f"a model band needs at least 2 posterior samples, the posterior has {posterior.n_samples}")
    if not 0 <= min_ess <= 1:
        raise CgdmlError(f"min_ess must be a fraction of the frames in [0, 1], got {min_ess!r}")
    refit = None
    if refit_energies is not None:
        E = np.atleast_2d(np.asarray(refit_energies, dtype=np.float64))
        if E.shape[0] < 2 or E.shape[1] != len(R):
            raise CgdmlError(f"refit energies shaped {E.shape}, expected (at least 2 refits, {len(R)} frames)")
        refit = sample_weights(E, kT)
    E_s = sample_energies(posterior, R)
    return ModelWeights(sample_weights(E_s, kT), float(kT), float(min_ess), refit, E_s,
                        None if refit is None else E, estimator)


def jackknife_std(values):
    """Block-jackknife standard deviation of K delete-one-block estimates ``values`` (K, ...):
    sqrt((K - 1) / K sum_k (v_k - mean v)^2), elementwise."""
    v = np.asarray(values, dtype=np.float64)
    K = len(v)
    return np.sqrt((K - 1) / K * np.sum((v - v.mean(axis=0)) ** 2, axis=0))


# ------------------------------------------------------------------------------------------------ per bin
def aligned_free_energy(h, n, w):
    """F(b) - sum_b w(b) F(b) (kT) with F = -ln(max(h, 0.5) / n), for bin counts h (..., n_bins) out of n frames
    and alignment weights w (n_bins,) summing to 1 (an empty bin counts as half a sample, as in the metric)."""
    F = -np.log(np.maximum(h, 0.5) / np.asarray(n, dtype=np.float64)[..., None])
    return F - (F @ w)[..., None]


def reweighted_counts(idx, weights, n_bins):
    """Histograms (S, n_bins) of the frames' flat bin indices ``idx`` (n,) (-1: outside the range) under each
    row of ``weights`` (S, n), scaled so that each sums to the number of frames inside the range."""
    inside = idx >= 0
    W = weights[:, inside]
    W = W * (inside.sum() / W.sum(axis=1, keepdims=True))
    return np.stack([np.bincount(idx[inside], weights=w, minlength=n_bins) for w in W])


def first_order_counts(idx, reduced_energies, n_bins):
    """The first-order landscapes of energy deviations ``reduced_energies`` (S, n) (over kT) of the frames with
    flat bin indices ``idx`` (n,) (-1: outside): (shift (S, n_bins), counts (S, n_bins)).

    shift_s(b) = <dE_s / kT>_b - <dE_s / kT> (the mean over the bin's frames minus the mean over all frames in
    range; 0 in a bin without frames, which keeps its half sample): to first order in the deviation (the
    cumulant expansion of -ln <exp(-dE_s / kT)>_b and of the normalisation), the bin's free energy -ln p_s(b)
    moves by it. It does not depend on a constant added to dE_s. counts_s(b) = h(b) exp(-shift_s(b)), scaled to
    the frames in range, is the histogram of the frames reweighted with the deviation averaged over each bin
    (for the metrics; exactly the reweighted histogram when the deviation is constant within each bin). Needs no
    per-frame weights, so it never collapses.
    """
    inside = idx >= 0
    i = idx[inside]
    E = np.atleast_2d(np.asarray(reduced_energies, dtype=np.float64))[:, inside]
    if not np.isfinite(E).all():
        raise CgdmlError("energy deviations hold NaN or inf")
    h = np.bincount(i, minlength=n_bins).astype(np.float64)
    sums = np.stack([np.bincount(i, weights=e, minlength=n_bins) for e in E])
    shift = np.where(h > 0, sums / np.maximum(h, 1.0) - E.mean(axis=1, keepdims=True), 0.0)
    with np.errstate(divide="ignore"):
        logH = np.log(h)[None] - shift
    logH -= logH.max(axis=1, keepdims=True)
    H = np.exp(logH)
    return shift, H * (inside.sum() / H.sum(axis=1, keepdims=True))


def bootstrap_bin_std(idx, w, n_boot, block, seed):
    """Per-bin standard deviation (n_bins,) kT of the aligned free energy (:func:`aligned_free_energy` with
    weights w) over ``n_boot`` block-bootstrap resamples of the time-ordered frames' bin indices ``idx``."""
    n_bins = len(w)
    draws = []
    for take in block_resamples(len(idx), n_boot, block, seed):
        sel = idx[take]
        sel = sel[sel >= 0]
        draws.append(aligned_free_energy(np.bincount(sel, minlength=n_bins).astype(np.float64), len(sel), w))
    return np.std(draws, axis=0, ddof=1)


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if not np.isfinite(x) else x


def json_grid(a, shape):
    """A per-bin array as nested lists (bins per dimension ``shape``) for JSON, rounded to 1e-4, NaN -> None."""
    return _nan_to_none(np.round(np.asarray(a, dtype=np.float64).reshape(shape), 4).tolist())


def as_grid(values):
    """The inverse of :func:`json_grid`: a float array, None -> NaN."""
    return np.array(values, dtype=np.float64)


def _landscapes(idx, weights, energies, n_bins, n_in, align, F):
    """(counts (S, n_bins), aligned free energies (S, n_bins)) of the samples: reweighted, or first order when
    ``energies`` (S, n, over kT) is given: F_s = F + shift_s - sum_b align(b) shift_s(b) with the shift of
    :func:`first_order_counts` (F: the model's aligned free energy)."""
    if energies is None:
        H = reweighted_counts(idx, weights, n_bins)
        return H, aligned_free_energy(H, np.full(len(H), n_in), align)
    shift, H = first_order_counts(idx, energies, n_bins)
    return H, F[None] + shift - (shift @ align)[:, None]


def model_band(idx, weights, shape, h_ref=None, n_boot=200, block=None, seed=0, ref_idx=None, min_count=MIN_COUNT,
               refit_weights=None, energies=None, refit_energies=None):
    """The model band of one landscape: per-bin standard deviations and, with a reference, the metrics' spread
    and the coverage of the reference by the 95% band.

    ``idx`` (n,) the model frames' flat bin indices (-1 outside), time-ordered; ``weights`` (S, n) normalised
    reweighting factors (:class:`ModelWeights`); ``shape`` the histogram's bins per dimension; ``h_ref``
    (n_bins,) reference counts or None; ``n_boot``/``block``/``seed`` the block bootstrap of the sampling part
    (``n_boot`` 0: no sampling part, the band is the model's alone); ``ref_idx`` (n_ref,) the reference frames'
    bin indices, time-ordered, for the reference's own sampling noise in the coverage; ``min_count`` the
    reference frames a bin needs to count in the coverage; ``refit_weights`` (K, n) the reweighting factors of K
    block-jackknife refits, whose jackknife variance (:func:`jackknife_std`) adds to the posterior samples' in
    ``model_std`` (the two parts are kept as ``posterior_std`` and ``refit_std``), or None. ``energies`` (S, n)
    and ``refit_energies`` (K, n): the energy deviations over kT; when given, the band is first order
    (:func:`first_order_counts`: each bin's free energy moves by the bin's mean deviation, the metrics come from
    the histograms of the frames reweighted with it) and ``weights``/``refit_weights`` are not used.

    Returns (entry, sample_metrics): entry is the report's ``model_uncertainty`` of the landscape (keys in
    :func:`cgdml.fes.compare.compare_panels`), sample_metrics {metric: (S,)} for averaging over landscapes, with
    {metric + "_refits": (K,)} when there are refits (None without a reference).
    """
    n_bins = int(np.prod(shape))
    inside = idx >= 0
    n_in = int(inside.sum())
    h_model = np.bincount(idx[inside], minlength=n_bins).astype(np.float64)
    align = (h_ref if h_ref is not None else h_model)
    align = align / align.sum()
    first_order = energies is not None
    if first_order and refit_energies is None and refit_weights is not None:
        refit_energies = -np.log(np.maximum(refit_weights, np.finfo(np.float64).tiny))
    F = aligned_free_energy(h_model, n_in, align)
    H, F_s = _landscapes(idx, weights, energies, n_bins, n_in, align, F)           # (S, n_bins) each
    visited = h_model > 0
    posterior_std = np.where(visited, np.std(F_s, axis=0, ddof=1), np.nan)
    model_std, refit_std, H_k = posterior_std, None, None
    entry = {"n_samples": int(len(H)), "sampling": bool(n_boot),
             "estimator": "first-order" if first_order else "reweighted"}
    if (refit_energies if first_order else refit_weights) is not None:
        H_k, F_k = _landscapes(idx, refit_weights, refit_energies if first_order else None, n_bins, n_in, align, F)
        refit_std = np.where(visited, jackknife_std(F_k), np.nan)
        model_std = np.hypot(posterior_std, refit_std)
        entry["n_refits"] = int(len(H_k))
    if n_boot:
        block = check_bootstrap(len(idx), n_boot, block)
        sampling_std = np.where(visited, bootstrap_bin_std(idx, align, n_boot, block, seed), np.nan)
    else:
        sampling_std = np.zeros(n_bins)
    std = np.sqrt(model_std ** 2 + sampling_std ** 2)
    bins = {"shape": [int(s) for s in shape], "free_energy": F, "model_std": model_std,
            "sampling_std": sampling_std if n_boot else None, "std": std}
    if refit_std is not None:
        bins.update(posterior_std=posterior_std, refit_std=refit_std)
    sample_metrics = None
    if h_ref is not None:
        point = metrics_from_counts(h_model, h_ref)
        sample_metrics = {k: np.array([metrics_from_counts(h, h_ref)[k] for h in H]) for k in METRICS}
        entry["metrics"] = {}
        for k in METRICS:
            entry["metrics"][k] = {"point": float(point[k]), "model_mean": float(sample_metrics[k].mean()),
                                   "model_std": float(sample_metrics[k].std(ddof=1))}
        if H_k is not None:
            for k in METRICS:
                refit = np.array([metrics_from_counts(h, h_ref)[k] for h in H_k])
                e = entry["metrics"][k]
                e["posterior_std"], e["refit_std"] = e["model_std"], float(jackknife_std(refit))
                e["model_std"] = float(np.hypot(e["posterior_std"], e["refit_std"]))
                sample_metrics[k + "_refits"] = refit
        F_ref = aligned_free_energy(h_ref, h_ref.sum(), align)
        diff = np.where(h_ref > 0, F - F_ref, np.nan)
        bins["difference"] = diff
        ref_std = None
        if ref_idx is not None and n_boot:
            ref_block = max(1, len(ref_idx) // 50)
            if len(ref_idx) // ref_block >= 2:
                ref_std = bootstrap_bin_std(ref_idx, align, n_boot, ref_block, seed + 1)
                bins["reference_std"] = np.where(h_ref > 0, ref_std, np.nan)
        entry["coverage"] = coverage(diff, model_std, sampling_std if n_boot else None, h_ref, visited, ref_std,
                                     min_count, posterior_std if refit_std is not None else None)
    entry["bins"] = {k: (v if v is None or k == "shape" else json_grid(v, shape)) for k, v in bins.items()}
    return entry, sample_metrics


def coverage(diff, model_std, sampling_std, h_ref, visited, ref_std=None, min_count=MIN_COUNT, posterior_std=None):
    """How often the reference lies inside the 95% band, over the bins with at least ``min_count`` reference
    frames: |F_model - F_ref - offset| <= 1.96 sigma per bin. ``inside``: sigma^2 = model^2 + sampling^2 (the
    band); ``inside_sampling_only`` and ``inside_model_only`` its parts; ``inside_with_reference_noise`` adds the
    reference's own bootstrap variance; with ``posterior_std`` (when ``model_std`` includes jackknife refits)
    ``inside_without_refits`` is the band of the posterior samples and sampling alone. A populated bin the model
    never visits counts as outside.
    ``widen_to_95``: the factor by which the band would have to widen for the reference to lie inside it in 95%
    of these bins (the 95th percentile of |difference| / (1.96 sigma); None when over 5% of them are missed)."""
    populated = h_ref >= min_count
    n = int(populated.sum())
    out = {"min_count": int(min_count), "n_bins": n, "missed_by_model": int((populated & ~visited).sum())}
    if not n:
        return out
    d = np.abs(diff[populated])
    ok = visited[populated]
    s = sampling_std[populated] if sampling_std is not None else np.zeros(n)
    m = model_std[populated]

    def frac(sigma):
        return float(np.mean(ok & (d <= Z95 * np.where(ok, sigma, 0.0))))

    with np.errstate(invalid="ignore", divide="ignore"):
        out["inside"] = frac(np.sqrt(m ** 2 + s ** 2))
        ratio = np.where(ok, d / (Z95 * np.sqrt(m ** 2 + s ** 2)), np.inf)
        q = float(np.quantile(ratio, 0.95, method="inverted_cdf"))
        out["widen_to_95"] = q if np.isfinite(q) else None
        out["inside_model_only"] = frac(m)
        if sampling_std is not None:
            out["inside_sampling_only"] = frac(s)
        if ref_std is not None:
            out["inside_with_reference_noise"] = frac(np.sqrt(m ** 2 + s ** 2 + ref_std[populated] ** 2))
        if posterior_std is not None:
            out["inside_without_refits"] = frac(np.sqrt(posterior_std[populated] ** 2 + s ** 2))
    return out


def metric_band(point, model_samples, bootstrap=None, refits=None):
    """The 95% interval of a metric from the model's samples (S,), the jackknife refits' values (K,) when given,
    and the bootstrap summary (:func:`cgdml.fes.histograms.bootstrap_summary`) when given, in quadrature: point,
    model_std (posterior and refits), sampling_std, std, lo, hi."""
    m = float(np.std(model_samples, ddof=1))
    if refits is not None:
        m = float(np.hypot(m, jackknife_std(refits)))
    s = float(bootstrap["std"]) if bootstrap else 0.0
    std = float(np.hypot(m, s))
    return {"point": float(point), "model_std": m, "sampling_std": s if bootstrap else None, "std": std,
            "lo": max(0.0, point - Z95 * std), "hi": point + Z95 * std}
