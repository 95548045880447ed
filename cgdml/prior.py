"""The CG prior (:class:`CGPrior`): bonds and angles from Boltzmann inversion (harmonic, or tabulated splines
where the distribution is not Gaussian, e.g. bimodal), optional dihedral free-energy profiles and an optional
short-range repulsion.

The prior keeps CG simulations inside physical space, where the learned kernel model falls to zero
(docs/method.md §2.5). Its forces are subtracted from the labels before learning and added back when simulating.
Energies in kJ/mol, lengths in nm, angles in radians.
"""
from __future__ import annotations

import numba
import numpy as np
from sklearn.base import BaseEstimator

from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from ._io import CgdmlError, Fields, as_array, as_float, as_int
from .geometry import bond_angles, bond_lengths, dihedral_angle_grad, dihedrals
from .units import kT as thermal_energy
from .validation import Options, check_params

PROFILE_NODES = 72                    # spline nodes of a dihedral profile (5 degrees apart)
PROFILE_SMOOTHING = np.radians(7.5)   # Gaussian smoothing of the dihedral histogram (rad)
PROFILE_CAP_KT = 10.0                 # a profile rises at most this many kT above its minimum
TABLE_INTERVALS = 128                 # spline intervals of a tabulated bond or angle term
TABLE_BANDWIDTH = 0.5                 # smoothing of a bond or angle table, in units of Silverman's bandwidth
TABLE_RULE_KT = 0.75                  # "auto": tabulate a term whose profile departs this far from its harmonic one
TABLE_RULE_REGION_KT = 3.0            # ... where the profile is within this many kT of its minimum
TABLE_RULE_SMOOTHING = 1.0            # ... the profile smoothed by Silverman's bandwidth, so noise does not decide
BONDED = ("auto", "tabulated", "harmonic")


def dihedral_density(angles, nodes, smoothing=PROFILE_SMOOTHING, weights=None):
    """Smoothed density (len(nodes),) of the dihedral angles (n,) rad at ``nodes`` rad: the histogram on 1-degree
    bins (frames weighted by ``weights``, default equal) smoothed by a wrapped Gaussian of width ``smoothing``
    (rad), normalised over the bins, interpolated periodically between the bin centres."""
    fine = 360
    width = 2 * np.pi / fine
    counts = np.histogram(angles, bins=fine, range=(-np.pi, np.pi), weights=weights)[0].astype(float)
    p = gaussian_filter1d(counts, smoothing / width, mode="wrap")
    p /= max(p.sum(), 1e-300)
    centres = -np.pi + (np.arange(fine) + 0.5) * width
    return np.interp(nodes, centres, p, period=2 * np.pi)


def dihedral_profiles(angles, kT, nodes=PROFILE_NODES, smoothing=PROFILE_SMOOTHING, cap_kT=PROFILE_CAP_KT,
                      weights=None):
    """Periodic cubic splines of the free energy -kT ln p(phi) of each column of ``angles`` (n_frames, n) in rad
    (frames weighted by ``weights`` (n_frames,), default equal).

    p is the histogram on 1-degree bins smoothed by a wrapped Gaussian of width ``smoothing`` (rad)
    (:func:`dihedral_density`); the profile is capped ``cap_kT`` above its minimum (unsampled arcs become a flat
    barrier, not an infinite one) and shifted to zero mean. Returns the spline coefficients (n, nodes, 4): on node
    interval k, starting at phi_k = -pi + k 2 pi / nodes, U = ((c0 x + c1) x + c2) x + c3 with x = phi - phi_k
    (kJ/mol).
    """
    angles = np.asarray(angles, dtype=np.float64).reshape(len(angles), -1)
    out = np.zeros((angles.shape[1], nodes, 4))
    grid = -np.pi + np.arange(nodes + 1) * (2 * np.pi / nodes)
    for d in range(angles.shape[1]):
        p_nodes = dihedral_density(angles[:, d], grid[:-1], smoothing, weights)
        F = -kT * np.log(np.maximum(p_nodes, p_nodes.max() * np.exp(-cap_kT)))
        F -= F.mean()
        spline = CubicSpline(grid, np.append(F, F[0]), bc_type="periodic")
        out[d] = spline.c.T
    return out


def weighted_quantiles(x, q, weights):
    """Quantiles ``q`` of the samples ``x`` (n,) with weights (n,) (the inverse of the weighted empirical CDF,
    interpolated between the samples' mid-points)."""
    order = np.argsort(x)
    x, w = np.asarray(x, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(q, cdf, x)


def bandwidth(x, weights=None):
    """Gaussian smoothing width of a density estimate of the samples ``x`` (n,): Silverman's rule,
    0.9 min(std, IQR / 1.34) n^(-1/5), in the units of x (0 for samples without spread). With ``weights`` (n,),
    the weighted std and IQR and Kish's effective sample size for n."""
    x = np.asarray(x, dtype=np.float64)
    if weights is None:
        q75, q25 = np.percentile(x, [75, 25])
        spread = min(x.std(), (q75 - q25) / 1.34) or x.std()
        return 0.9 * spread * len(x) ** -0.2
    w = np.asarray(weights, dtype=np.float64)
    mean = np.average(x, weights=w)
    std = np.sqrt(np.average((x - mean) ** 2, weights=w))
    q25, q75 = weighted_quantiles(x, [0.25, 0.75], w)
    spread = min(std, (q75 - q25) / 1.34) or std
    return 0.9 * spread * (w.sum() ** 2 / (w ** 2).sum()) ** -0.2


def bonded_table(x, kT, kind, intervals=TABLE_INTERVALS, cap_kT=PROFILE_CAP_KT, smoothing=TABLE_BANDWIDTH,
                 weights=None):
    """The Boltzmann-inverted free energy of one bond (``kind`` "bond", x = r in nm) or angle ("angle", x = theta
    in rad) from its samples ``x`` (n,): U(x) = -kT ln[p(x) / J(x)], J = r^2 or sin(theta).

    p is the histogram smoothed by a Gaussian of ``smoothing`` times :func:`bandwidth` (a kernel density
    estimate; Silverman's rule assumes one Gaussian mode and would broaden each mode of a multimodal
    distribution, the case tables are for: tests/test_prior_tabulated.py), U is capped
    ``cap_kT`` above its minimum (an unsampled gap between two modes becomes a flat barrier) and shifted to a zero
    minimum. The table spans the sampled range, trimmed at each end to where U first falls below the cap, and is
    the natural cubic spline through U at ``intervals + 1`` equally spaced nodes (the spline OpenMM's
    ``Continuous1DFunction`` builds from the same values). Returns (coefficients (intervals, 4), (lo, hi)): on
    interval k, from x_k = lo + k h, U = ((c0 y + c1) y + c2) y + c3 with y = x - x_k (kJ/mol); None when the
    samples have no spread. ``weights`` (n,) weight the samples (default equal).
    """
    x = np.asarray(x, dtype=np.float64)
    bw = smoothing * bandwidth(x, weights)
    lo, hi = x.min(), x.max()
    resolution = 1e-6 * max(abs(lo), abs(hi), 1.0)   # spreads below this are rounding (a constrained bond)
    if not bw > 0 or not hi - lo > resolution:
        return None
    width = bw / 8
    n_bins = int(np.ceil((hi - lo) / width)) + 1
    edges = lo - width / 2 + np.arange(n_bins + 1) * width          # bin centres lo, lo + width, ...
    counts = np.histogram(x, bins=edges, weights=weights)[0].astype(np.float64)
    p = gaussian_filter1d(counts, 8.0, mode="constant", truncate=5.0)
    centres = lo + np.arange(n_bins) * width
    jac = centres ** 2 if kind == "bond" else np.sin(np.clip(centres, bw, np.pi - bw))
    U = -kT * np.log(np.maximum(p, 1e-300) / jac)
    below = np.flatnonzero(U <= U.min() + cap_kT)
    lo, hi = centres[below[0]], centres[below[-1]]
    if not hi - lo > resolution:
        return None
    grid = np.linspace(lo, hi, intervals + 1)
    values = np.minimum(np.interp(grid, centres, U), U.min() + cap_kT)
    values -= values.min()
    spline = CubicSpline(grid, values, bc_type="natural")
    return spline.c.T.copy(), (float(lo), float(hi))


def table_values(coefficients, lo, hi, x, harmonic_k):
    """U (n,) in kJ/mol of a tabulated term (:func:`bonded_table`) at x (n,), with its harmonic continuation
    outside [lo, hi]: U(end) + U'(end) d + harmonic_k d^2 / 2, d the distance past the end (value and slope
    continuous)."""
    c = np.asarray(coefficients)
    x = np.asarray(x, dtype=np.float64)
    n = c.shape[0]
    h = (hi - lo) / n
    k = np.clip(((x - lo) // h).astype(int), 0, n - 1)
    y = np.clip(x, lo, hi) - (lo + k * h)
    U = ((c[k, 0] * y + c[k, 1]) * y + c[k, 2]) * y + c[k, 3]
    s_lo = c[0, 2]
    s_hi = (3.0 * c[-1, 0] * h + 2.0 * c[-1, 1]) * h + c[-1, 2]
    d_lo, d_hi = np.minimum(x - lo, 0.0), np.maximum(x - hi, 0.0)
    return U + d_lo * (s_lo + 0.5 * harmonic_k * d_lo) + d_hi * (s_hi + 0.5 * harmonic_k * d_hi)


def needs_table(coefficients, lo, hi, x0, k, kT, rule_kT=TABLE_RULE_KT, region_kT=TABLE_RULE_REGION_KT):
    """The "auto" rule: whether a bonded term's Boltzmann-inverted profile (:func:`bonded_table`) departs from
    its harmonic term k/2 (x - x0)^2 by more than ``rule_kT`` kT (after the best constant shift) anywhere the
    profile lies within ``region_kT`` kT of its minimum, i.e. where nearly all the population is. A unimodal,
    near-Gaussian distribution stays harmonic; a bimodal or skewed one is tabulated."""
    grid = np.linspace(lo, hi, 4 * len(coefficients) + 1)
    U = table_values(coefficients, lo, hi, grid, k)
    inside = U <= U.min() + region_kT * kT
    diff = U[inside] - 0.5 * k * (grid[inside] - x0) ** 2
    return bool(np.ptp(diff) > 2 * rule_kT * kT)


def uses_dihedral_profiles(setting, topology=None):
    """Whether a prior with ``dihedrals=setting`` (True, False or "auto") fits dihedral profiles.

    "auto": yes when the beads of ``topology`` belong to two or more amino acids (:attr:`CGTopology.n_amino_acids`,
    by residue name: a backbone map or a C-alpha trace alike), no otherwise: with several residues the global
    descriptor spreads the frames over every combination of residue states and the profiles supply each
    dihedral's free energy; with one, the kernel sees the whole (phi, psi) landscape and the product of
    one-dimensional profiles adds a coupling error it must undo (docs/method.md §2.5; the measurements are in
    NOTES.md and docs/).
    """
    if setting == "auto":
        return topology is not None and topology.n_amino_acids >= 2
    if not isinstance(setting, (bool, np.bool_)):
        raise CgdmlError(f"prior dihedrals must be True, False or 'auto', got {setting!r}")
    return bool(setting)


class CGPrior(BaseEstimator):
    """The prior of a CG force field (an estimator): bonds and angles fitted by Boltzmann inversion, dihedral
    profiles and a short-range repulsion.

    U = sum_b k_b/2 (r - r0)^2 + sum_a k_a/2 (theta - theta0)^2 [+ sum_d U_d(phi_d)] [+ sum_p kT (r_min,p / r)^12],
    with k = kT / variance and x0 = mean of the training distribution. ``bonded`` replaces a bond's or angle's
    harmonic term by its tabulated free energy -kT ln[p(x) / J(x)] (J = r^2 or sin(theta); :func:`bonded_table`,
    continued harmonically with stiffness k past the sampled range): "tabulated" for every term, "harmonic" for
    none, "auto" (the default) where the harmonic term misdescribes the distribution (:func:`needs_table`: it
    departs from the table, smoothed a little more, by more than ``TABLE_RULE_KT`` kT where the population is),
    so a bimodal or skewed distribution (e.g. the C-alpha angles of a peptide) is held and a Gaussian one stays
    harmonic. With ``dihedrals``, U_d is the Boltzmann-inverted free energy -kT ln p(phi_d) of each soft dihedral (the backbone phi and psi of every
    residue, or every proper dihedral of a molecule without a backbone), smoothed and capped
    (:func:`dihedral_profiles`): the learned model then fits what the independent dihedral profiles miss (their
    coupling), and where it has no data it falls back to them rather than to bonds and angles alone.
    ``dihedrals="auto"`` turns them on when the beads belong to two or more amino acids (by residue name; see
    :func:`uses_dihedral_profiles`) and off otherwise. The repulsion acts on bead pairs at least three bonds
    apart in the bead graph; r_min,p is the smallest distance that pair reaches in the training data, so the
    repulsion costs about kT there and rises steeply below it.

    The terms come from the CG topology passed to :meth:`fit` (its bonds, bonded triples and graph
    distances), or from ``bonds`` / ``angles`` / ``repulsion_pairs`` given here; with neither, from a chain in
    bead order (consecutive pairs and triples, pairs three apart), for bare arrays without a topology.
    """

    _parameter_constraints = {"repulsion": [bool], "dihedrals": [bool, Options(("auto",))],
                              "bonded": [Options(BONDED)], "bonds": [None, "array-like"], "angles": [None, "array-like"],
                              "repulsion_pairs": [None, "array-like"], "dihedral_quads": [None, "array-like"]}

    def __init__(self, repulsion=True, dihedrals="auto", bonded="auto", bonds=None, angles=None,
                 repulsion_pairs=None, dihedral_quads=None):
        self.repulsion = repulsion
        self.dihedrals = dihedrals
        self.bonded = bonded
        self.bonds = bonds
        self.angles = angles
        self.repulsion_pairs = repulsion_pairs
        self.dihedral_quads = dihedral_quads

    def _terms(self, n_beads, topology):
        """(bonds (n, 2), angles (n, 3), repulsion pairs (n, 2), soft dihedrals (n, 4)) from the topology, the
        parameters or a chain."""
        if topology is not None:
            bonds, angles, pairs = topology.bonds, topology.angles, topology.pairs_apart(3)
            quads = topology.soft_dihedrals()
        else:
            bonds = [(i, i + 1) for i in range(n_beads - 1)]
            angles = [(i, i + 1, i + 2) for i in range(n_beads - 2)]
            pairs = [(i, j) for i in range(n_beads) for j in range(i + 3, n_beads)]
            quads = [(i, i + 1, i + 2, i + 3) for i in range(n_beads - 3)]
        bonds = bonds if self.bonds is None else self.bonds
        angles = angles if self.angles is None else self.angles
        pairs = pairs if self.repulsion_pairs is None else self.repulsion_pairs
        quads = quads if self.dihedral_quads is None else self.dihedral_quads
        return (np.array(bonds, dtype=np.int64).reshape(-1, 2), np.array(angles, dtype=np.int64).reshape(-1, 3),
                np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(quads, dtype=np.int64).reshape(-1, 4))

    def fit(self, R, temperature, topology=None, weights=None):
        """Fit to coordinates R (n_frames, n_beads, 3) in nm sampled at ``temperature`` K; ``topology`` (a
        :class:`cgdml.topology.CGTopology`) says which beads are bonded. ``weights`` (n_frames,): each frame's
        Boltzmann weight (:attr:`cgdml.data.CGDataset.weights`; default equal). The Boltzmann-inverted terms
        read only frames of positive weight, weighted; the repulsion's closest distances and the longest bond
        are the range of physical configurations and read every frame."""
        check_params(self)
        R_all = R = np.asarray(R, dtype=np.float64)
        w = None
        if weights is not None:
            from .data import check_weights

            w = check_weights(weights, len(R), "prior weights")
            R, w = R[w > 0], w[w > 0]
            w = None if np.all(w == w[0]) else w / w.mean()
        n_beads = R.shape[1]
        if n_beads < 2:
            raise CgdmlError("a prior needs at least two beads")
        kT = thermal_energy(temperature)
        self.temperature_ = float(temperature)
        self.dihedrals_ = uses_dihedral_profiles(self.dihedrals, topology)
        self.bond_pairs_, self.angle_triples_, pairs, quads = self._terms(n_beads, topology)
        r = bond_lengths(R, self.bond_pairs_)
        self.bond_r0_, var = _mean_var(r, w)
        self.bond_k_ = kT / np.maximum(var, 1e-12)
        theta = bond_angles(R, self.angle_triples_)
        self.angle_theta0_, var = _mean_var(theta, w)
        self.angle_k_ = kT / np.maximum(var, 1e-12)
        for kind, x in (("bond", r), ("angle", theta)):
            self._fit_tables(kind, x, kT, w)
        if self.repulsion and len(pairs):
            self.repulsion_pairs_ = pairs
            self.repulsion_rmin_ = bond_lengths(R_all, pairs).min(0)
        else:
            self.repulsion_pairs_ = np.zeros((0, 2), dtype=np.int64)
            self.repulsion_rmin_ = np.zeros(0)
        self.repulsion_eps_ = kT
        if self.dihedrals_ and len(quads):
            self.dihedral_quads_ = quads
            self.dihedral_splines_ = dihedral_profiles(dihedrals(R, quads)[0], kT, weights=w)
        else:
            self.dihedral_quads_ = np.zeros((0, 4), dtype=np.int64)
            self.dihedral_splines_ = np.zeros((0, PROFILE_NODES, 4))
        self.set_pair_corrections(np.zeros((0, 2), dtype=np.int64), np.zeros((0, TABLE_INTERVALS, 4)), np.zeros((0, 2)))
        r_all = bond_lengths(R_all, self.bond_pairs_)
        self.max_bond_length_ = float(r_all.max()) if r_all.size else 0.0
        return self

    def _fit_tables(self, kind, x, kT, weights=None):
        """The tabulated terms of ``kind`` ("bond" or "angle") from its samples x (n_frames, n_terms), by
        ``bonded``: every term, none, or ("auto") those :func:`needs_table` picks on the profile smoothed with
        ``TABLE_RULE_SMOOTHING`` (on 8 draws each of 3,000 and 20,000 samples it tabulated no Gaussian bond or
        angle and every bimodal one of tests/test_prior_tabulated.py's kinds). Sets ``{kind}_tabulated_``
        (n_terms,) bool, ``{kind}_splines_`` (n_terms, TABLE_INTERVALS, 4) and ``{kind}_spline_range_``
        (n_terms, 2); a harmonic term's rows are zeros."""
        n = x.shape[1]
        tabulated, splines, ranges = np.zeros(n, dtype=bool), np.zeros((n, TABLE_INTERVALS, 4)), np.zeros((n, 2))
        x0, k = getattr(self, f"{kind}_{'r0' if kind == 'bond' else 'theta0'}_"), getattr(self, f"{kind}_k_")
        for t in range(n if self.bonded != "harmonic" else 0):
            if self.bonded == "auto":  # decided on a smoother profile: sampling noise in the tails is no reason
                smooth = bonded_table(x[:, t], kT, kind, smoothing=TABLE_RULE_SMOOTHING, weights=weights)
                if smooth is None or not needs_table(smooth[0], *smooth[1], x0[t], k[t], kT):
                    continue
            table = bonded_table(x[:, t], kT, kind, weights=weights)
            if table is not None:
                tabulated[t], splines[t], ranges[t] = True, table[0], table[1]
        setattr(self, f"{kind}_tabulated_", tabulated)
        setattr(self, f"{kind}_splines_", splines)
        setattr(self, f"{kind}_spline_range_", ranges)

    def bonded_profile(self, kind, term, x):
        """The fitted free energy U (kJ/mol) of bond (``kind`` "bond", x in nm) or angle ("angle", x in rad) term
        ``term`` at x: its table with the harmonic continuation (:func:`table_values`), or its harmonic term."""
        x = np.asarray(x, dtype=np.float64)
        x0 = (self.bond_r0_ if kind == "bond" else self.angle_theta0_)[term]
        k = (self.bond_k_ if kind == "bond" else self.angle_k_)[term]
        if not getattr(self, f"{kind}_tabulated_")[term]:
            return 0.5 * k * (x - x0) ** 2
        return table_values(getattr(self, f"{kind}_splines_")[term], *getattr(self, f"{kind}_spline_range_")[term],
                            x, k)

    def set_pair_corrections(self, pairs, splines, ranges):
        """Set the pair-distance corrections (:mod:`cgdml.refine`): bead pairs (n, 2), spline coefficients
        (n, intervals, 4) in kJ/mol on [lo, hi] = ``ranges`` (n, 2) nm (as :func:`bonded_table`'s), each flat past
        its ends (a clamped spline: zero slope there, so no force outside the range); returns self."""
        self.pair_correction_pairs_ = np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.pair_correction_splines_ = np.ascontiguousarray(splines, dtype=np.float64)
        self.pair_correction_spline_range_ = np.ascontiguousarray(ranges, dtype=np.float64).reshape(-1, 2)
        return self

    def pair_correction(self, term, r):
        """The pair-distance correction (kJ/mol) of term ``term`` at distances r (nm), flat past its range."""
        return table_values(self.pair_correction_splines_[term], *self.pair_correction_spline_range_[term], r, 0.0)

    def energy_forces(self, R):
        """Energies (n,) in kJ/mol and forces (n, n_beads, 3) in kJ/mol/nm for R (n, n_beads, 3) in nm."""
        R = np.ascontiguousarray(R, dtype=np.float64)
        f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
        return _prior_energy_forces(R, self.bond_pairs_, self.bond_r0_, self.bond_k_, self.angle_triples_,
                                    self.angle_theta0_, self.angle_k_, self.repulsion_pairs_,
                                    self.repulsion_rmin_, float(self.repulsion_eps_), self.dihedral_quads_,
                                    f64(self.dihedral_splines_), np.ascontiguousarray(self.bond_tabulated_, np.bool_),
                                    f64(self.bond_splines_), f64(self.bond_spline_range_),
                                    np.ascontiguousarray(self.angle_tabulated_, np.bool_), f64(self.angle_splines_),
                                    f64(self.angle_spline_range_), self.pair_correction_pairs_,
                                    f64(self.pair_correction_splines_), f64(self.pair_correction_spline_range_))

    def dihedral_profile(self, term, angles):
        """The fitted profile U_d (kJ/mol) of dihedral term ``term`` at ``angles`` (rad)."""
        c = self.dihedral_splines_[term]
        h = 2 * np.pi / c.shape[0]
        t = np.mod(np.asarray(angles, dtype=np.float64) + np.pi, 2 * np.pi)
        k = np.minimum((t // h).astype(int), c.shape[0] - 1)
        x = t - k * h
        return ((c[k, 0] * x + c[k, 1]) * x + c[k, 2]) * x + c[k, 3]

    def forces(self, R):
        """Forces (n, n_beads, 3) in kJ/mol/nm."""
        return self.energy_forces(R)[1]

    def residual_forces(self, R, F, chunk=65536):
        """F minus the prior forces at R, both (n, n_beads, 3): the labels a learned correction fits
        (delta learning). Computed ``chunk`` frames at a time, so its working memory stays bounded."""
        out = np.empty(np.shape(F))
        for c0 in range(0, len(out), chunk):
            out[c0:c0 + chunk] = F[c0:c0 + chunk] - self.forces(R[c0:c0 + chunk])
        return out

    _ARRAYS = ("bond_pairs_", "bond_r0_", "bond_k_", "angle_triples_", "angle_theta0_", "angle_k_",
               "repulsion_pairs_", "repulsion_rmin_", "dihedral_quads_", "dihedral_splines_")
    _OPTIONAL = {"dihedral_quads_": (0, 4), "dihedral_splines_": (0, PROFILE_NODES, 4)}  # absent in older files
    _TABLES = ("bond_tabulated_", "bond_splines_", "bond_spline_range_", "angle_tabulated_", "angle_splines_",
               "angle_spline_range_")  # absent in older files: every bond and angle harmonic
    _CORRECTIONS = {"pair_correction_pairs_": (0, 2), "pair_correction_splines_": (0, TABLE_INTERVALS, 4),
                    "pair_correction_spline_range_": (0, 2)}  # absent in older files: no corrections
    _EMPTY = {"bond_pairs_": (0, 2), "bond_r0_": (0,), "bond_k_": (0,), "angle_triples_": (0, 3),
              "angle_theta0_": (0,), "angle_k_": (0,), "repulsion_pairs_": (0, 2), "repulsion_rmin_": (0,),
              **_OPTIONAL}  # the shape of each array when the prior has no terms of its kind

    def to_arrays(self):
        """Learned state as a dict of arrays (for embedding in a model file)."""
        out = {name: getattr(self, name) for name in self._ARRAYS + self._TABLES + tuple(self._CORRECTIONS)}
        out.update(repulsion=np.bool_(self.repulsion), temperature_=np.float64(self.temperature_),
                   repulsion_eps_=np.float64(self.repulsion_eps_), max_bond_length_=np.float64(self.max_bond_length_))
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix=""):
        """Inverse of :meth:`to_arrays` (entries named ``prefix + name``); a missing or damaged entry raises a
        one-line :class:`CgdmlError` naming it."""
        f = Fields(arrays, prefix)
        prior = cls(repulsion=f.get("repulsion", as_int) != 0)
        for name in cls._ARRAYS:
            index = name.endswith(("pairs_", "triples_", "quads_"))
            empty = cls._OPTIONAL.get(name)
            if empty is not None and name not in f:
                setattr(prior, name, np.zeros(empty, dtype=np.int64 if index else np.float64))
                continue
            value = np.ascontiguousarray(f.get(name, lambda v, index=index: as_array(v, "i" if index else "f")))
            if value.size == 0:  # no terms of this kind, however the empty array is shaped
                value = np.zeros(cls._EMPTY[name], dtype=value.dtype)
            setattr(prior, name, value)
        for kind, n in (("bond", len(prior.bond_pairs_)), ("angle", len(prior.angle_triples_))):
            for name, empty, dtype in ((f"{kind}_tabulated_", (n,), "b"), (f"{kind}_splines_", (n, TABLE_INTERVALS, 4),
                                                                             "f"), (f"{kind}_spline_range_", (n, 2), "f")):
                value = f.get(name, lambda v, dtype=dtype: as_array(v, dtype)) if name in f else np.zeros(0)
                if value.size == 0:  # absent (an older file: every term harmonic) or no terms of this kind
                    value = np.zeros(empty, dtype=bool if dtype == "b" else np.float64)
                setattr(prior, name, np.ascontiguousarray(value))
        for name, empty in cls._CORRECTIONS.items():
            index = name.endswith("pairs_")
            value = (f.get(name, lambda v, index=index: as_array(v, "i" if index else "f")) if name in f
                     else np.zeros(0))
            setattr(prior, name, np.ascontiguousarray(value if value.size else
                                                      np.zeros(empty, dtype=np.int64 if index else np.float64)))
        prior.bonded = "auto" if prior.bond_tabulated_.any() or prior.angle_tabulated_.any() else "harmonic"
        prior.dihedrals = prior.dihedrals_ = len(prior.dihedral_quads_) > 0
        prior.temperature_ = f.get("temperature_", lambda v: as_float(v, positive=True))
        prior.repulsion_eps_ = f.get("repulsion_eps_", as_float)
        prior.max_bond_length_ = f.get("max_bond_length_", lambda v: as_float(v, positive=True))
        return prior

    def check(self, n_beads):
        """Raise :class:`CgdmlError` unless the learned arrays are consistent and index ``n_beads`` beads; the
        message names the fields (as stored in a model file, ``prior/...``)."""
        tables = lambda kind: (f"{kind}_tabulated_", f"{kind}_splines_", f"{kind}_spline_range_")  # noqa: E731
        shapes = [("bond_pairs_", 2, ("bond_r0_", "bond_k_") + tables("bond")),
                  ("angle_triples_", 3, ("angle_theta0_", "angle_k_") + tables("angle")),
                  ("repulsion_pairs_", 2, ("repulsion_rmin_",)), ("dihedral_quads_", 4, ("dihedral_splines_",)),
                  ("pair_correction_pairs_", 2, ("pair_correction_splines_", "pair_correction_spline_range_"))]
        trailing = {"splines_": 2, "spline_range_": 1}  # trailing dimensions: (nodes, 4) and (2,)
        for index_name, width, param_names in shapes:
            index, params = getattr(self, index_name), [getattr(self, p) for p in param_names]
            if index.ndim != 2 or index.shape[1] != width or any(
                    p.shape[:1] != (len(index),) or p.ndim != 1 + next((d for e, d in trailing.items()
                                                                       if name.endswith(e)), 0)
                    or (name.endswith("splines_") and (p.shape[1] < 1 or p.shape[2] != 4))
                    or (name.endswith("range_") and p.shape[1:] != (2,)) for name, p in zip(param_names, params)):
                raise CgdmlError(f"damaged prior: field 'prior/{index_name}' shaped {index.shape} with "
                                 f"{', '.join(repr('prior/' + p) for p in param_names)} shaped "
                                 f"{[p.shape for p in params]}")
            if index.size and (index.min() < 0 or index.max() >= n_beads):
                raise CgdmlError(f"damaged prior: field 'prior/{index_name}' holds bead indices outside "
                                 f"0..{n_beads - 1}")
            for name, p in zip(param_names, params):
                if not np.isfinite(p).all():
                    raise CgdmlError(f"damaged prior: field 'prior/{name}' holds NaN or inf")
        for kind in ("bond", "angle", "pair_correction"):
            if kind == "pair_correction":
                splines, ranges = self.pair_correction_splines_, self.pair_correction_spline_range_
                on = np.ones(len(ranges), dtype=bool)
            else:
                on, splines, ranges = (getattr(self, name) for name in tables(kind))
            if splines.shape[1] < 1 or np.any(ranges[on, 1] <= ranges[on, 0]):
                raise CgdmlError(f"damaged prior: field 'prior/{kind}_spline_range_' holds an empty range or "
                                 f"'prior/{kind}_splines_' no interval")


HarmonicPrior = CGPrior  # the earlier name (it holds more than harmonic terms), kept for old imports


def _mean_var(x, weights=None):
    """Column means and variances of x (n, m), weighted by ``weights`` (n,) when given."""
    if weights is None:
        return x.mean(0), x.var(0)
    mean = np.average(x, axis=0, weights=weights)
    return mean, np.average((x - mean) ** 2, axis=0, weights=weights)


@numba.njit(cache=True, inline="always")
def _table(x, c, lo, hi, k):
    """(U, dU/dx) of a tabulated term at x: the spline ``c`` (n, 4) on [lo, hi], continued harmonically with
    stiffness k past either end (see :func:`table_values`)."""
    n = c.shape[0]
    h = (hi - lo) / n
    if x < lo:
        d = x - lo
        return c[0, 3] + d * (c[0, 2] + 0.5 * k * d), c[0, 2] + k * d
    if x >= hi:
        u = ((c[n - 1, 0] * h + c[n - 1, 1]) * h + c[n - 1, 2]) * h + c[n - 1, 3]
        s = (3.0 * c[n - 1, 0] * h + 2.0 * c[n - 1, 1]) * h + c[n - 1, 2]
        d = x - hi
        return u + d * (s + 0.5 * k * d), s + k * d
    j = min(int((x - lo) / h), n - 1)
    y = x - (lo + j * h)
    return ((c[j, 0] * y + c[j, 1]) * y + c[j, 2]) * y + c[j, 3], (3.0 * c[j, 0] * y + 2.0 * c[j, 1]) * y + c[j, 2]


@numba.njit(parallel=True, cache=True)
def _prior_energy_forces(R, bonds, r0, kb, angles, theta0, ka, rep_pairs, rmin, eps, quads, splines,
                         bond_tab, bond_splines, bond_range, angle_tab, angle_splines, angle_range, corr_pairs,
                         corr_splines, corr_range):
    n, n_beads = R.shape[0], R.shape[1]
    E = np.zeros(n)
    F = np.zeros((n, n_beads, 3))
    n_nodes = splines.shape[1]
    h = 2 * np.pi / n_nodes
    for f in numba.prange(n):
        e = 0.0
        grad = np.empty((4, 3))
        for q in range(quads.shape[0]):
            phi = dihedral_angle_grad(R[f], quads[q, 0], quads[q, 1], quads[q, 2], quads[q, 3], grad)
            t = (phi + np.pi) % (2 * np.pi)
            k = min(int(t // h), n_nodes - 1)
            x = t - k * h
            c = splines[q, k]
            e += ((c[0] * x + c[1]) * x + c[2]) * x + c[3]
            dudphi = (3.0 * c[0] * x + 2.0 * c[1]) * x + c[2]
            for a in range(4):
                for d in range(3):
                    F[f, quads[q, a], d] -= dudphi * grad[a, d]
        for b in range(bonds.shape[0]):
            i, j = bonds[b, 0], bonds[b, 1]
            d = R[f, j] - R[f, i]
            r = np.sqrt((d * d).sum())
            if bond_tab[b]:
                u, dudr = _table(r, bond_splines[b], bond_range[b, 0], bond_range[b, 1], kb[b])
            else:
                u, dudr = 0.5 * kb[b] * (r - r0[b]) ** 2, kb[b] * (r - r0[b])
            e += u
            g = dudr / r  # dU/dr / r
            for c in range(3):
                F[f, i, c] += g * d[c]
                F[f, j, c] -= g * d[c]
        for a in range(angles.shape[0]):
            i, j, k = angles[a, 0], angles[a, 1], angles[a, 2]
            u = R[f, i] - R[f, j]
            v = R[f, k] - R[f, j]
            nu = np.sqrt((u * u).sum())
            nv = np.sqrt((v * v).sum())
            cos = (u * v).sum() / (nu * nv)
            cos = min(1.0, max(-1.0, cos))
            theta = np.arccos(cos)
            sin = max(np.sqrt(1.0 - cos * cos), 1e-8)
            if angle_tab[a]:
                ua, dudtheta = _table(theta, angle_splines[a], angle_range[a, 0], angle_range[a, 1], ka[a])
            else:
                ua, dudtheta = 0.5 * ka[a] * (theta - theta0[a]) ** 2, ka[a] * (theta - theta0[a])
            e += ua
            dudcos = -dudtheta / sin  # dU/dcos = dU/dtheta * dtheta/dcos
            for c in range(3):
                dcos_du = v[c] / (nu * nv) - cos * u[c] / (nu * nu)
                dcos_dv = u[c] / (nu * nv) - cos * v[c] / (nv * nv)
                F[f, i, c] -= dudcos * dcos_du
                F[f, k, c] -= dudcos * dcos_dv
                F[f, j, c] += dudcos * (dcos_du + dcos_dv)
        for p in range(rep_pairs.shape[0]):
            i, j = rep_pairs[p, 0], rep_pairs[p, 1]
            d = R[f, j] - R[f, i]
            r = np.sqrt((d * d).sum())
            x = (rmin[p] / r) ** 12
            e += eps * x
            g = -12.0 * eps * x / (r * r)  # dU/dr / r
            for c in range(3):
                F[f, i, c] += g * d[c]
                F[f, j, c] -= g * d[c]
        for p in range(corr_pairs.shape[0]):
            i, j = corr_pairs[p, 0], corr_pairs[p, 1]
            d = R[f, j] - R[f, i]
            r = np.sqrt((d * d).sum())
            u, dudr = _table(r, corr_splines[p], corr_range[p, 0], corr_range[p, 1], 0.0)
            e += u
            g = dudr / r
            for c in range(3):
                F[f, i, c] += g * d[c]
                F[f, j, c] -= g * d[c]
        E[f] = e
    return E, F
