"""Integrator steps for batched Langevin dynamics: the arithmetic of one step, nothing else.

Arrays are (n, n_beads, 3): positions x in nm, velocities v in nm/ps, forces F in kJ/mol/nm; masses in amu,
so F / m is in nm/ps^2. The loop, the noise stream, blow-ups and output belong to :class:`cgdml.simulate.Simulation`.

- :class:`Overdamped`: Euler-Maruyama Brownian dynamics, x += F dt / (m gamma) + sqrt(2 kT dt / (m gamma)) xi
  (diffusion constant D = kT / (m gamma) per bead);
- :class:`BAOAB`: underdamped Langevin, the BAOAB splitting of Leimkuhler and Matthews; friction 0 is
  velocity Verlet (NVE);
- :class:`MTSBAOAB`: impulse r-RESPA on BAOAB for a (fast, slow) force pair,
  B_slow(k dt/2) [B A O A B]_fast^k B_slow(k dt/2), the slow force once per k = ``slow_every`` steps.
"""
from __future__ import annotations

import numpy as np

from .._io import CgdmlError

INTEGRATORS = ("overdamped", "langevin")


class Integrator:
    """One step of the dynamics for the live replicas.

    ``dt`` ps, ``friction`` gamma 1/ps. :meth:`setup` takes the masses (n_beads,) amu and kT kJ/mol;
    :meth:`step` advances (x, v, F) by one step given the standard normal noise ``xi`` and the force
    callables, and returns (x, v, F, slow F or None). ``slow_every`` > 0 only for force pairs.
    """

    name = ""
    pair = False                 # True: forces are a (fast, slow) pair
    slow_every = 1

    def __init__(self, dt, friction):
        self.dt, self.friction = float(dt), float(friction)
        if not self.dt > 0:
            raise CgdmlError(f"time step dt must be > 0 ps, got {self.dt}")
        if not (self.friction > 0 or (self.name == "langevin" and self.friction == 0)):
            raise CgdmlError(f"friction must be > 0 /ps (0 allowed only for langevin), got {self.friction}")

    def settings(self):
        """The settings that define the trajectory (for checkpoint fingerprints)."""
        return {"integrator": self.name, "dt": self.dt, "friction": self.friction}

    def setup(self, masses, kt):
        """Precompute the step's coefficients for masses (n_beads,) amu at thermal energy kt kJ/mol."""
        self.m = np.asarray(masses, dtype=np.float64)[None, :, None]
        self.kt = float(kt)

    def initial_velocities(self, rng, shape):
        """Start velocities (n, n_beads, 3) nm/ps."""
        return np.zeros(shape)

    def step(self, step, x, v, F, Fs, xi, fast, slow):
        """Advance one step (``step`` is the number of the step being taken, from 1); see the class."""
        raise NotImplementedError


class Overdamped(Integrator):
    """Euler-Maruyama: x += F dt / (m gamma) + sqrt(2 kT dt / (m gamma)) xi; velocities stay zero."""

    name = "overdamped"

    def __init__(self, dt, friction=1000.0):
        super().__init__(dt, friction)

    def setup(self, masses, kt):
        super().setup(masses, kt)
        self.mobility = self.dt / (self.m * self.friction)            # (D / kT) dt
        self.noise_scale = np.sqrt(2.0 * self.kt * self.mobility)     # sqrt(2 D dt)

    def step(self, step, x, v, F, Fs, xi, fast, slow):
        xn = x + self.mobility * F + self.noise_scale * xi
        return xn, v, fast(xn), None


class BAOAB(Integrator):
    """Underdamped Langevin, BAOAB splitting: B (half kick), A (half drift), O (Ornstein-Uhlenbeck), A, B."""

    name = "langevin"

    def __init__(self, dt, friction=1.0):
        super().__init__(dt, friction)

    def setup(self, masses, kt):
        super().setup(masses, kt)
        self.half_dt_over_m = 0.5 * self.dt / self.m
        self.c1 = np.exp(-self.friction * self.dt)
        self.noise_scale = np.sqrt((1.0 - self.c1 * self.c1) * self.kt / self.m)

    def initial_velocities(self, rng, shape):
        return rng.standard_normal(shape) * np.sqrt(self.kt / self.m)

    def _baoab(self, x, v, F, xi, fast):
        vn = v + self.half_dt_over_m * F                              # B
        xn = x + 0.5 * self.dt * vn                                   # A
        vn = self.c1 * vn + self.noise_scale * xi                     # O
        xn = xn + 0.5 * self.dt * vn                                  # A
        Fn = fast(xn)
        return xn, vn + self.half_dt_over_m * Fn, Fn                  # B

    def step(self, step, x, v, F, Fs, xi, fast, slow):
        return (*self._baoab(x, v, F, xi, fast), None)


class MTSBAOAB(BAOAB):
    """Multiple time steps (impulse r-RESPA) on BAOAB: a slow half kick of k dt / 2 opens and closes every outer
    step of k = ``slow_every`` inner BAOAB steps with the fast force. Step counts stay in inner steps; with
    k = 1 it is BAOAB with the summed force (up to the order of the additions)."""

    pair = True

    def __init__(self, dt, friction=1.0, slow_every=2):
        super().__init__(dt, friction)
        if not (isinstance(slow_every, (int, np.integer)) and slow_every >= 1):
            raise CgdmlError(f"slow_every must be an integer >= 1, got {slow_every!r}")
        self.slow_every = int(slow_every)

    def settings(self):
        return {**super().settings(), "slow_every": self.slow_every}

    def setup(self, masses, kt):
        super().setup(masses, kt)
        self.half_outer_over_m = 0.5 * self.slow_every * self.dt / self.m

    def step(self, step, x, v, F, Fs, xi, fast, slow):
        if (step - 1) % self.slow_every == 0:
            v = v + self.half_outer_over_m * Fs                       # B slow: opens an outer step
        xn, vn, Fn = self._baoab(x, v, F, xi, fast)
        Fsn = None
        if step % self.slow_every == 0:
            Fsn = slow(xn)
            vn = vn + self.half_outer_over_m * Fsn                    # B slow: closes it (NaN shows in vn)
        return xn, vn, Fn, Fsn


def make_integrator(integrator, dt, friction=None, slow_every=1, pair=False):
    """The integrator named ``integrator`` ("overdamped" or "langevin"); a langevin run with a (fast, slow)
    force ``pair`` is :class:`MTSBAOAB`. ``friction`` None: 1000/ps overdamped, 1/ps langevin."""
    if integrator not in INTEGRATORS:
        raise CgdmlError(f"integrator must be one of {', '.join(INTEGRATORS)}, got {integrator!r}")
    if not (isinstance(slow_every, (int, np.integer)) and slow_every >= 1):
        raise CgdmlError(f"slow_every must be an integer >= 1, got {slow_every!r}")
    if pair and integrator != "langevin":
        raise CgdmlError("a (fast, slow) force pair (multiple time steps) needs integrator='langevin'")
    if slow_every > 1 and not pair:
        raise CgdmlError(f"slow_every={slow_every} needs force_fn as a pair (fast, slow)")
    kw = {} if friction is None else {"friction": friction}
    if integrator == "overdamped":
        return Overdamped(dt, **kw)
    return MTSBAOAB(dt, slow_every=slow_every, **kw) if pair else BAOAB(dt, **kw)
