"""Basin balancing: the free-energy offsets that force matching leaves undetermined.

Force matching fixes a CG free energy only up to one constant per region of configuration space that the
training frames connect. When a backbone dihedral's training distribution splits into disjoint arcs (no
frame on the barrier between them, as for alanine dipeptide's alpha_L basin at phi > 0), the relative free
energy of the arcs comes from how the learned model extrapolates across the empty gap, which the data do
not constrain: on the cgnet alanine-dipeptide data every kernel model put alpha_L several kT too high
(NOTES.md, "Basin balancing").

The only information the data hold about those offsets is how often each arc is visited. For each soft
dihedral of the CG topology (the backbone phi and psi of every residue, else the graph's proper dihedrals)
whose frames fall into two or more arcs of at least ``min_frames`` frames, separated by empty stretches of at
least 30 degrees,
:func:`balance_basins`

1. measures the fitted model's own free energy along the dihedral by umbrella sampling (harmonic windows,
   BAOAB) and WHAM;
2. adds a dihedral term that is constant on each arc (zero force on every training frame) and ramps smoothly
   (half cosine) across each gap, with the constants chosen so that, reweighted exactly through the WHAM
   density, each arc holds the fraction of frames it holds in the training data (arcs with fewer frames go
   with the nearest larger arc).

The model's forces are unchanged wherever the training data are; only the unsampled gaps get a force.
Angles in radians, energies in kJ/mol, lengths in nm.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy.special import logsumexp

from ._io import CgdmlError, Fields, as_array
from .geometry import TWO_PI, dihedral, dihedral_angle_grad, wrap_angle
from .units import kT as thermal_energy

@numba.njit(cache=True)
def _offset(angle, start, width, delta):
    """(U, dU/dangle) of one term: delta[a] on arc a = [start[a], start[a] + width[a]], half-cosine ramps
    across the gaps between consecutive arcs (arcs sorted counterclockwise)."""
    n = start.shape[0]
    for a in range(n):
        if (angle - start[a]) % TWO_PI <= width[a]:
            return delta[a], 0.0
    for a in range(n):
        b = (a + 1) % n
        gap_start = start[a] + width[a]
        gap = (start[b] - gap_start) % TWO_PI
        pos = (angle - gap_start) % TWO_PI
        if pos < gap:
            t = pos / gap
            step = delta[b] - delta[a]
            return delta[a] + step * 0.5 * (1.0 - np.cos(np.pi * t)), step * 0.5 * np.pi * np.sin(np.pi * t) / gap
    return 0.0, 0.0


@numba.njit(parallel=True, cache=True)
def _offsets_energy_forces(R, quads, first, count, start, width, delta):
    n, n_beads = R.shape[0], R.shape[1]
    E = np.zeros(n)
    F = np.zeros((n, n_beads, 3))
    for f in numba.prange(n):
        grad = np.empty((4, 3))
        for t in range(quads.shape[0]):
            q = quads[t]
            angle = dihedral_angle_grad(R[f], q[0], q[1], q[2], q[3], grad)
            s = slice(first[t], first[t] + count[t])
            u, du = _offset(angle, start[s], width[s], delta[s])
            E[f] += u
            for b in range(4):
                for d in range(3):
                    F[f, q[b], d] -= du * grad[b, d]
    return E, F


class DihedralOffsets:
    """Dihedral terms constant on sampled arcs, ramped across the gaps (see the module docstring).

    quads (n_terms, 4) bead indices; term t owns arcs first[t] .. first[t] + count[t] - 1, each arc a with
    start[a] (rad), width[a] (rad, counterclockwise) and energy delta[a] (kJ/mol), sorted by start.
    """

    _ARRAYS = ("quads", "first", "count", "start", "width", "delta")

    def __init__(self, quads, first, count, start, width, delta):
        self.quads = np.ascontiguousarray(quads, dtype=np.int64).reshape(-1, 4)
        self.first = np.ascontiguousarray(first, dtype=np.int64)
        self.count = np.ascontiguousarray(count, dtype=np.int64)
        self.start = np.ascontiguousarray(start, dtype=np.float64)
        self.width = np.ascontiguousarray(width, dtype=np.float64)
        self.delta = np.ascontiguousarray(delta, dtype=np.float64)

    @classmethod
    def from_terms(cls, terms):
        """From a list of (quad, arcs [(start, width), ...], deltas) tuples."""
        quads, first, count, start, width, delta = [], [], [], [], [], []
        for quad, arcs, deltas in terms:
            quads.append(quad)
            first.append(len(start))
            count.append(len(arcs))
            start += [a for a, _ in arcs]
            width += [w for _, w in arcs]
            delta += list(deltas)
        return cls(quads, first, count, start, width, delta)

    def profile(self, term, angles):
        """(U, dU/dangle) of term ``term`` at ``angles`` (radians), each (n,)."""
        s = slice(self.first[term], self.first[term] + self.count[term])
        out = np.array([_offset(float(a), self.start[s], self.width[s], self.delta[s]) for a in np.ravel(angles)])
        return out[:, 0], out[:, 1]

    def energy_forces(self, R):
        """Energies (n,) kJ/mol and forces (n, n_beads, 3) kJ/mol/nm for R (n, n_beads, 3) nm."""
        R = np.ascontiguousarray(R, dtype=np.float64)
        return _offsets_energy_forces(R, self.quads, self.first, self.count, self.start, self.width, self.delta)

    def forces(self, R):
        return self.energy_forces(R)[1]

    def to_arrays(self):
        return {name: getattr(self, name) for name in self._ARRAYS}

    @classmethod
    def from_arrays(cls, arrays, prefix=""):
        """Inverse of :meth:`to_arrays` (entries named ``prefix + name``); a missing or damaged entry raises a
        one-line :class:`CgdmlError` naming it."""
        f = Fields(arrays, prefix)
        shapes = {"quads": (None, 4)}
        return cls(*(f.get(name, lambda v, name=name: as_array(v, "i" if name in ("quads", "first", "count") else "f",
                                                               shape=shapes.get(name), ndim=None if name in shapes
                                                               else 1))
                     for name in cls._ARRAYS))

    def check(self, n_beads):
        """Raise :class:`CgdmlError` unless the arrays are consistent and index ``n_beads`` beads."""
        n_arcs = len(self.start)
        if not (len(self.first) == len(self.count) == len(self.quads)
                and len(self.width) == len(self.delta) == n_arcs
                and ((self.first >= 0) & (self.count >= 1) & (self.first + self.count <= n_arcs)).all()):
            raise CgdmlError("damaged dihedral offsets: inconsistent array shapes")
        if self.quads.size and (self.quads.min() < 0 or self.quads.max() >= n_beads):
            raise CgdmlError(f"damaged dihedral offsets: bead indices outside 0..{n_beads - 1}")
        if not all(np.isfinite(a).all() for a in (self.start, self.width, self.delta)):
            raise CgdmlError("damaged dihedral offsets: NaN or inf values")


def sampled_arcs(angles, bin_width=np.radians(5.0), min_gap=np.radians(30.0), weights=None):
    """Arcs of the circle that the angles (n,) rad populate, split by empty stretches of at least ``min_gap``.

    Returns a list of (start, width) in radians sorted by start, and the number of angles in each; empty lists
    when no such gap exists. Shorter empty stretches (sparse sampling, not a barrier) belong to the arc around them.
    ``weights`` (n,), the frames' Boltzmann weights: every frame (any weight) marks where the force data are, so
    the arcs are those of all angles, but each arc's number is its share of the weight, scaled to the number of
    frames of positive weight (an arc of restrained frames only holds 0: its population is unknown).
    """
    n_bins = int(round(TWO_PI / bin_width))
    min_gap_bins = int(np.ceil(min_gap / bin_width - 1e-9))
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    counts = np.histogram(wrap_angle(angles), bins=edges)[0]
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        population = np.histogram(wrap_angle(angles), bins=edges, weights=weights)[0]
        population *= (weights > 0).sum() / weights.sum()
    occupied = counts > 0
    if occupied.all() or not occupied.any():
        return [], []
    order = np.roll(np.arange(n_bins), -int(np.argmin(occupied)))  # start in an empty bin
    runs = []  # [occupied?, bins] along the circle
    for b in order:
        if runs and runs[-1][0] == occupied[b]:
            runs[-1][1].append(b)
        else:
            runs.append([bool(occupied[b]), [b]])
    arcs, gap_before = [], True
    for occ, bins in runs:
        if not occ and len(bins) >= min_gap_bins:
            gap_before = True
        elif gap_before:
            arcs.append(list(bins))
            gap_before = False
        else:
            arcs[-1].extend(bins)
    if len(arcs) < 2:
        return [], []
    held = counts if weights is None else population
    result = sorted((float(edges[bins[0]]), len(bins) * (TWO_PI / n_bins),
                     int(held[bins].sum()) if weights is None else float(held[bins].sum())) for bins in arcs)
    return [(start, width) for start, width, _ in result], [n for _, _, n in result]


def _rotate_to(R, quad, target, rng, angles, side, n_nearest=20):
    """Start frames for a window at ``target``: a frame near it in angle, with the beads ``side`` (quad[1]'s
    side of the quad[1]-quad[2] bond in the bead graph) rotated about that bond so that the dihedral equals
    ``target`` exactly."""
    from scipy.spatial.transform import Rotation

    near = np.argsort(np.abs(wrap_angle(angles - target)))[:n_nearest]
    i = rng.choice(near)
    x = R[i].copy()
    axis = x[quad[2]] - x[quad[1]]
    axis /= np.linalg.norm(axis)
    rot = Rotation.from_rotvec(-wrap_angle(target - angles[i]) * axis)
    x[side] = rot.apply(x[side] - x[quad[1]]) + x[quad[1]]
    return x


def wham(angle_samples, centers, k_bias, kT, n_bins=72, tol=1e-8, max_iter=20000):
    """Unbiased density of a periodic coordinate from harmonic umbrella windows (1D WHAM, log space).

    angle_samples: list over windows of sampled angles (rad); centers (n_windows,) rad; k_bias kJ/mol/rad^2.
    Returns bin centres (n_bins,) and log-density (n_bins,) normalised to sum 1 (-inf where never sampled).
    """
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    H = np.array([np.histogram(wrap_angle(s), bins=edges)[0] for s in angle_samples], dtype=np.float64)
    N = H.sum(1)
    u = 0.5 * k_bias * wrap_angle(mid[None, :] - np.asarray(centers)[:, None]) ** 2 / kT  # (n_w, n_bins)
    with np.errstate(divide="ignore"):
        log_h, log_n = np.log(H.sum(0)), np.log(N)
    f = np.zeros(len(centers))
    for _ in range(max_iter):
        log_p = log_h - logsumexp(log_n[:, None] + f[:, None] - u, axis=0)
        f_new = -logsumexp(log_p[None, :] - u, axis=1)
        f_new -= f_new[0]
        if np.abs(f_new - f).max() < tol:
            f = f_new
            break
        f = f_new
    log_p = log_h - logsumexp(log_n[:, None] + f[:, None] - u, axis=0)
    return mid, log_p - logsumexp(log_p)


def umbrella_profile(force_fn, starts, quad, side, *, masses, temperature, n_windows=24, per_window=8,
                     n_steps=20000, burn_in=5000, dt=0.002, friction=1.0, save_every=50, seed=0, progress=False):
    """Free-energy density of the model along the dihedral ``quad``, by umbrella sampling and WHAM.

    ``force_fn(R) -> F`` is the model; ``starts`` (n, n_beads, 3) nm are frames to start windows from.
    n_windows harmonic windows (spring kT / (spacing/2)^2) each run ``per_window`` BAOAB replicas for
    ``n_steps`` of ``dt`` ps. Returns (bin centres, log density, info dict).
    """
    from .simulate.replicas import simulate

    kT = thermal_energy(temperature)
    centers = np.linspace(-np.pi, np.pi, n_windows, endpoint=False)
    k_bias = kT / (0.5 * TWO_PI / n_windows) ** 2
    window_of = np.repeat(np.arange(n_windows), per_window)
    rng = np.random.default_rng([seed, 0xB5])
    angles = dihedral(starts, quad)[0]
    x0 = np.array([_rotate_to(starts, quad, centers[w], rng, angles, side) for w in window_of])
    quad = np.asarray(quad)

    def biased(R, replicas):
        F = np.array(force_fn(R), dtype=np.float64)
        angle, grad = dihedral(R, quad)
        dU = k_bias * wrap_angle(angle - centers[window_of[replicas]])
        F[:, quad] -= dU[:, None, None] * grad
        return F

    result = simulate(biased, x0, masses=masses, temperature=temperature, dt=dt, n_steps=n_steps,
                      save_every=save_every, integrator="langevin", friction=friction, seed=seed,
                      progress=progress, indexed_forces=True)
    frames = result.frames[burn_in // save_every:]
    samples = []
    for w in range(n_windows):
        x = frames[:, window_of == w].reshape(-1, *frames.shape[2:])
        x = x[np.isfinite(x).all(axis=(1, 2))]
        samples.append(dihedral(x, quad)[0])
    mid, log_p = wham(samples, centers, k_bias, kT)
    info = {"windows": n_windows, "replicas_per_window": per_window, "steps": n_steps, "dt_ps": dt,
            "blown_up": int((~result.alive).sum()), "empty_bins": int(np.isinf(log_p).sum()),
            "wall_s": result.timings["wall_s"]}
    return mid, log_p, info


def _arc_index(angles, arcs):
    """Index of the nearest arc for each angle (inside an arc, or the closer end across a gap)."""
    dist = np.empty((len(arcs), len(angles)))
    for a, (s, w) in enumerate(arcs):
        pos = (angles - s) % TWO_PI
        dist[a] = np.where(pos <= w, 0.0, np.minimum(pos - w, TWO_PI - pos))
    return dist.argmin(0)


def solve_offsets(mid, log_p, arcs, counts, kT, min_frames=20, n_iter=200, tol=1e-10):
    """Arc energies (kJ/mol, the most populated arc 0) that give each arc of at least ``min_frames`` frames its
    share of ``counts`` under the density exp(log_p) (on bin centres ``mid``) reweighted by the offset term.

    Smaller arcs (too few frames to estimate a population) and gap bins belong to the nearest large arc and take
    its energy, so every sampled arc stays flat. Returns (energies (n_arcs,), indices of the large arcs, their
    target populations (their frames with those of the small arcs they own) and their balanced populations).
    """
    counts = np.asarray(counts)
    large = np.flatnonzero(counts >= min_frames)
    centre = np.array([s + 0.5 * w for s, w in arcs])
    owner = large[_arc_index(centre, [arcs[a] for a in large])]       # arc -> its large arc
    bin_owner = large[_arc_index(mid, [arcs[a] for a in large])]
    target = np.log(np.array([counts[owner == a].sum() for a in large], dtype=np.float64) / counts.sum())
    anchor = int(np.argmax(target))
    delta = np.zeros(len(large))
    for _ in range(n_iter):
        term = DihedralOffsets.from_terms([((0, 1, 2, 3), arcs, delta[np.searchsorted(large, owner)])])
        log_w = log_p - term.profile(0, mid)[0] / kT
        pop = np.array([logsumexp(log_w[bin_owner == a]) if (bin_owner == a).any() else -np.inf
                        for a in large]) - logsumexp(log_w)
        if not np.isfinite(pop).all():
            raise CgdmlError("umbrella sampling left a sampled arc without density; cannot balance it")
        step = kT * (pop - target)
        step -= step[anchor]
        delta += step
        if np.abs(step).max() < tol:
            break
    return delta[np.searchsorted(large, owner)], large, np.exp(target), np.exp(pop)


def balance_basins(model, dataset, *, min_frames=20, seed=0, progress=False, **umbrella):
    """Dihedral offsets that give each sampled arc of every soft dihedral its training population.

    The dihedrals are those of the dataset's CG topology: the backbone (phi, psi) of every residue, or the
    graph's proper dihedrals when there is no backbone (:meth:`cgdml.topology.CGTopology.soft_dihedrals`).
    They are balanced one after another, each measured on the model with the terms found before it, so the
    later ones see the earlier corrections (a joint correction of coupled dihedrals, to first order).

    The arcs are where any frame is; their target populations are the weighted frames of positive weight
    (:attr:`cgdml.data.CGDataset.weights`; restrained frames say where the forces are known, not how often a
    state is visited). Returns (:class:`DihedralOffsets` or None, report list of dicts). ``umbrella`` goes to
    :func:`umbrella_profile`.
    """
    kT = thermal_energy(dataset.temperature)
    terms, report = [], []
    topo = dataset.cg_topology
    for k, quad in enumerate(topo.soft_dihedrals()):
        quad = tuple(int(q) for q in quad)
        weights = getattr(dataset, "weights", None)
        arcs, counts = sampled_arcs(dihedral(dataset.coords, quad)[0],
                                    weights=None if weights is None or np.all(weights == 1) else weights)
        if sum(c >= min_frames for c in counts) < 2:
            continue
        current = DihedralOffsets.from_terms(terms) if terms else None

        def force_fn(R, current=current):
            F = model.forces(R)
            return F + current.forces(R) if current is not None else F

        mid, log_p, info = umbrella_profile(force_fn, dataset.coords, quad, topo.side(quad[1], quad[2]),
                                            masses=dataset.masses,
                                            temperature=dataset.temperature, seed=seed + k, progress=progress,
                                            **umbrella)
        delta, large, target, after = solve_offsets(mid, log_p, arcs, counts, kT, min_frames)
        bin_owner = _arc_index(mid, [arcs[a] for a in large])
        before = np.array([np.exp(logsumexp(log_p[bin_owner == i])) for i in range(len(large))])
        terms.append((quad, arcs, delta))
        report.append({"beads": list(quad),
                       "arcs_deg": [[float(np.degrees(arcs[a][0])), float(np.degrees(sum(arcs[a])))] for a in large],
                       "frames": [counts[a] if isinstance(counts[a], int) else round(counts[a], 3) for a in large], "target_population": target.tolist(),
                       "model_population": before.tolist(), "balanced_population": after.tolist(),
                       "offset_kJ_per_mol": delta[large].tolist(), "small_arcs": int(len(arcs) - len(large)),
                       "umbrella": info})
    return (DihedralOffsets.from_terms(terms) if terms else None), report
