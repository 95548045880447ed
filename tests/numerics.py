"""Shared numerical helpers for the tests."""
import numpy as np


def numerical_forces(energy, R, h=1e-6):
    """-dE/dR by central differences; ``energy`` maps R (n, n_beads, 3) to energies (n,)."""
    F = np.zeros_like(R)
    for b in range(R.shape[1]):
        for c in range(3):
            Rp, Rm = R.copy(), R.copy()
            Rp[:, b, c] += h
            Rm[:, b, c] -= h
            F[:, b, c] = -(energy(Rp) - energy(Rm)) / (2 * h)
    return F
