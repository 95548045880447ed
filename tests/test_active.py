"""Active learning (issue 26): biased frames as force-matching data, dataset weights, restrained labelling,
selection and the resumable loop."""
import numpy as np
import pytest

# ---------------------------------------------------------------- the invariance of the mean force (method.md §2.9)
# Toy all-atom system x = (x1, x2), kT = 1, CG map R = M(x) = x1 (force map: the x1 component).
# u = V(x1) + k(x1) x2^2 / 2 with V = x1^4 / 4 - x1^2 and k = 1 + x1^2 / 2, so the free energy is
# A(R) = V(R) + (kT / 2) ln k(R) and the mean force F(R) = -V'(R) - kT k'(R) / (2 k(R)).


def _V_prime(x1):
    return x1 ** 3 - 2.0 * x1


def _k(x1):
    return 1.0 + 0.5 * x1 ** 2


def _mean_force(R):
    return -_V_prime(R) - 0.5 * R / _k(R)          # k' = x1


def _force_x1(x):
    return -_V_prime(x[:, 0]) - 0.5 * x[:, 0] * x[:, 1] ** 2


def _sample(bias, n_chains=20000, n_steps=600, step=0.7, seed=0):
    """Independent samples of exp(-(u + bias)) (the last state of each of ``n_chains`` Metropolis chains)."""
    rng = np.random.default_rng(seed)

    def energy(x):
        return x[:, 0] ** 4 / 4 - x[:, 0] ** 2 + 0.5 * _k(x[:, 0]) * x[:, 1] ** 2 + bias(x)

    x = rng.normal(0.0, 1.0, size=(n_chains, 2))
    e = energy(x)
    for _ in range(n_steps):
        y = x + rng.normal(0.0, step, size=x.shape)
        ey = energy(y)
        accept = np.log(rng.random(n_chains)) < e - ey
        x[accept], e[accept] = y[accept], ey[accept]
    return x


def _binned_z(x, edges, min_count=300):
    """z-scores of the binned mean of the x1 force against the analytic mean force (bins with enough samples)."""
    f = _force_x1(x)
    which = np.digitize(x[:, 0], edges) - 1
    z = []
    for b in range(len(edges) - 1):
        sel = which == b
        if sel.sum() < min_count:
            continue
        # the analytic mean force averaged over the bin's samples (it varies across a bin)
        expected = _mean_force(x[sel, 0]).mean()
        z.append((f[sel].mean() - expected) / (f[sel].std() / np.sqrt(sel.sum())))
    return np.array(z)


def test_cg_only_bias_keeps_the_mean_force():
    """A harmonic restraint on the CG coordinate moves the samples but not the conditional mean of the force;
    a restraint on the other coordinate (not a function of M(x)) changes it."""
    edges = np.linspace(-2.5, 2.5, 26)
    plain = _sample(lambda x: 0.0 * x[:, 0], seed=1)
    cg_bias = _sample(lambda x: 2.0 * (x[:, 0] - 1.0) ** 2, seed=2)             # W(M(x)), kappa = 4
    other = _sample(lambda x: 2.0 * (x[:, 1] - 1.0) ** 2, seed=3)               # acts on x2, not on M(x)
    # the CG bias does move the CG distribution: plain samples sit in both wells, biased ones near x1 = 1
    assert (plain[:, 0] < 0).mean() > 0.4 and (cg_bias[:, 0] < 0).mean() < 0.05
    z_plain, z_cg, z_other = (_binned_z(x, edges) for x in (plain, cg_bias, other))
    assert len(z_plain) >= 12 and len(z_cg) >= 6 and len(z_other) >= 6
    assert np.abs(z_plain).max() < 4.5 and np.abs(z_cg).max() < 4.5
    assert np.mean(z_plain ** 2) < 2.0 and np.mean(z_cg ** 2) < 2.0       # chi^2 per bin ~ 1
    assert np.abs(z_other).max() > 6.0 and np.mean(z_other ** 2) > 8.0


def test_force_matching_on_biased_frames_finds_the_mean_force():
    """Least squares of the x1 force on a polynomial of R over biased frames gives the analytic mean force where
    the frames are (the minimiser of the force-matching objective does not depend on the bias)."""
    x = np.concatenate([_sample(lambda x, c=c: 4.0 * (x[:, 0] - c) ** 2, n_chains=8000, seed=10 + i)
                        for i, c in enumerate((-1.5, -0.5, 0.5, 1.5))])
    R = x[:, 0]
    basis = np.vander(R, 6)
    coef = np.linalg.lstsq(basis, _force_x1(x), rcond=None)[0]
    grid = np.linspace(-1.6, 1.6, 33)
    fitted = np.vander(grid, 6) @ coef
    assert np.abs(fitted - _mean_force(grid)).max() < 0.08 * np.abs(_mean_force(grid)).max()
