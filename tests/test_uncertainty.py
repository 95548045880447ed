"""Force uncertainty (cgdml.uncertainty): the DTC posterior against brute-force Gaussian processes whose force
covariances come from finite differences of the scalar Matérn kernel k(D(x), D(x')), the low-rank factor, the
posterior samples, persistence and the label-noise estimator."""
import numpy as np
import pytest
import scipy.stats

from cgdml._io import CgdmlError
from cgdml.features import chain_quads, descriptor, descriptor_jacobian
from cgdml.uncertainty import ForcePosterior, instantaneous_noise

N_BEADS = 5
QUADS = chain_quads(N_BEADS)
SIGMA, LAM = 1.5, 2.0
BASE = np.array([[0.0, 0.0, 0.0], [0.38, 0.0, 0.0], [0.50, 0.36, 0.0], [0.88, 0.40, 0.12], [1.00, 0.74, 0.26]])


def toy(n, seed, spread=0.03):
    """n configurations around a 5-bead chain (nm) with smooth forces plus noise (kJ/mol/nm)."""
    rng = np.random.default_rng(seed)
    R = BASE + spread * rng.standard_normal((n, N_BEADS, 3))
    F = -300.0 * (R - R.mean(axis=1, keepdims=True)) + 3.0 * rng.standard_normal(R.shape)
    return R, F


# ------------------------------------------------------------------------------- brute-force Gaussian process
def matern(r, sigma=SIGMA):
    a = np.sqrt(5.0) * r / sigma
    return (1.0 + a + a * a / 3.0) * np.exp(-a)


def _perturbed(R, h):
    """Descriptors of every configuration with each Cartesian coordinate moved by +h and -h: (n, 3N, 2, nd)."""
    n, N = R.shape[:2]
    X = np.repeat(R.reshape(n, 1, 1, 3 * N), 3 * N, axis=1).repeat(2, axis=2).copy()
    eye = np.eye(3 * N)[None, :, :]
    X[:, :, 0] += h * eye
    X[:, :, 1] -= h * eye
    return descriptor(X.reshape(-1, N, 3), QUADS).reshape(n, 3 * N, 2, -1)


def _fd(Ra, Rb, h):
    Pa, Pb = _perturbed(Ra, h), _perturbed(Rb, h)
    A, B = Pa.reshape(-1, Pa.shape[-1]), Pb.reshape(-1, Pb.shape[-1])
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None] - 2 * A @ B.T
    k = matern(np.sqrt(np.maximum(d2, 0))).reshape(len(Ra), Pa.shape[1], 2, len(Rb), Pb.shape[1], 2)
    C = (k[:, :, 0, :, :, 0] - k[:, :, 0, :, :, 1] - k[:, :, 1, :, :, 0] + k[:, :, 1, :, :, 1]) / (4 * h * h)
    return C  # d^2 k / dx_a dx'_b: the covariance of the forces -dE/dx and -dE/dx'


def force_cov(Ra, Rb, h=2e-4):
    """Cartesian force covariance blocks (na, 3N, nb, 3N) of the unit-amplitude GP, by Richardson-extrapolated
    central differences of the scalar kernel (independent of cgdml.kernels)."""
    return (4.0 * _fd(Ra, Rb, h / 2) - _fd(Ra, Rb, h)) / 3.0


def reduced_bases(R):
    """Per-frame orthonormal bases V_i (n, 3N, r) of the internal (non-rigid) force space, r = 3N - 6."""
    _, J = descriptor_jacobian(R, QUADS)
    return np.linalg.svd(J)[2][:, : 3 * R.shape[1] - 6].transpose(0, 2, 1)


def reduced_blocks(C, Va, Vb):
    """V_a^T C V_b per block pair: (na r, nb r)."""
    K = np.einsum("iar,iajb,jbs->irjs", Va, C, Vb)
    return K.reshape(Va.shape[0] * Va.shape[2], Vb.shape[0] * Vb.shape[2])


def trace_stats(cov):
    """(n,) trace / 3N and (n, N) per-bead trace / 3 of covariance blocks (n, 3N, 3N)."""
    d = np.einsum("ncc->nc", cov)
    return d.mean(1), d.reshape(len(d), -1, 3).sum(-1) / 3


@pytest.fixture(scope="module")
def data():
    R, F = toy(24, 0)
    Rq, _ = toy(5, 1, spread=0.06)
    C = force_cov(np.concatenate([R, Rq]), np.concatenate([R, Rq]))
    n = len(R)
    return dict(R=R, F=F, Rq=Rq, K=C[:n, :, :n], Kq=C[:n, :, n:], Kqq=diag_blocks(C[n:, :, n:]))


def diag_blocks(C):
    """The (n, 3N, 3N) diagonal blocks of force covariances (n, 3N, n, 3N)."""
    return np.stack([C[i, :, i] for i in range(C.shape[0])])


# ---------------------------------------------------------------------------------------------------- tests
def test_exact_posterior_matches_brute_force_gp(data):
    R, F, Rq = data["R"], data["F"], data["Rq"]
    n, d = len(R), 3 * N_BEADS
    post = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, inducing=np.arange(n), rank_tol=0)
    assert post.rank == n * (d - 6) and post.info["n_sample"] == n
    K = data["K"].reshape(n * d, n * d)
    A = K + LAM * np.eye(n * d)  # noise s2 lam on every Cartesian component; the rigid ones carry no information
    cases = ((Rq, data["Kq"], data["Kqq"]), (R[:4], data["K"][:, :, :4], diag_blocks(data["K"][:4, :, :4])))
    for Rx, Kx, Kxx in cases:  # held-out queries, then training frames
        Kx = Kx.reshape(n * d, -1)
        cov = Kxx - np.stack([Kx[:, i * d:(i + 1) * d].T @ np.linalg.solve(A, Kx[:, i * d:(i + 1) * d])
                              for i in range(len(Rx))])
        total, per_bead = trace_stats(post.s2 * cov)
        np.testing.assert_allclose(post.force_variance(Rx), total, rtol=1e-6)
        np.testing.assert_allclose(post.force_variance(Rx, per_bead=True), per_bead, rtol=1e-6)
        np.testing.assert_allclose(post.force_variance(Rx, per_bead=True).mean(1), post.force_variance(Rx), rtol=1e-12)
    # signal variance: maximum likelihood y^T (K + lam I)^-1 y / (n r) over the reduced (internal) forces
    V = reduced_bases(R)
    y = F.reshape(n, d)
    null = y - np.einsum("iar,ir->ia", V, np.einsum("iar,ia->ir", V, y))
    s2 = (y.ravel() @ np.linalg.solve(A, y.ravel()) - np.sum(null ** 2) / LAM) / (n * (d - 6))
    np.testing.assert_allclose(post.s2, s2, rtol=1e-6)
    assert post.noise_variance == pytest.approx(post.s2 * LAM)
    # the recorded mean training variance is the mean of force_variance over the training frames (Cartesian)
    assert post.info["mean_train_variance"] == pytest.approx(post.force_variance(R).mean(), rel=1e-6)


def test_dtc_subset_matches_dense_formula(data):
    R, F, Rq = data["R"], data["F"], data["Rq"]
    n, d, r = len(R), 3 * N_BEADS, 3 * N_BEADS - 6
    idx = np.array([0, 3, 7, 11, 16, 20])
    post = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, inducing=idx, rank_tol=0, s2=2.5)
    V = reduced_bases(R)
    Knn = reduced_blocks(data["K"], V, V)
    rows = (idx[:, None] * r + np.arange(r)).ravel()
    Kuu, Kun = Knn[np.ix_(rows, rows)], Knn[rows]
    G = Kun @ Kun.T
    Kuq = np.einsum("jar,jaqb->jrqb", V[idx], data["Kq"][idx]).reshape(len(idx) * r, -1)
    cov = []
    for i in range(len(Rq)):
        k = Kuq[:, i * d:(i + 1) * d]
        cov.append(data["Kqq"][i] - k.T @ np.linalg.solve(Kuu, k) + LAM * k.T @ np.linalg.solve(LAM * Kuu + G, k))
    total, per_bead = trace_stats(2.5 * np.array(cov))
    np.testing.assert_allclose(post.force_variance(Rq), total, rtol=1e-6)
    np.testing.assert_allclose(post.force_variance(Rq, per_bead=True), per_bead, rtol=1e-6)
    # DTC needs the labels only through s2: the maximum-likelihood value over the reduced labels
    y = np.einsum("iar,ia->ir", V, F.reshape(n, d)).ravel()
    b = Kun @ y
    s2 = (y @ y - b @ np.linalg.solve(LAM * Kuu + G, b)) / (LAM * n * r)
    fitted = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, inducing=idx, rank_tol=0)
    np.testing.assert_allclose(fitted.s2, s2, rtol=1e-6)


def test_variance_rises_away_from_the_data():
    R, F = toy(40, 2)
    post = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS)
    t = np.linspace(0.0, 3.0, 31)
    path = R[0] * (1.0 + t)[:, None, None]  # a training configuration, swollen until far from every one
    ratio = post.force_variance(path) / post.prior_variance(path)
    assert ratio[0] < 0.3
    assert np.all(np.diff(ratio) > -1e-3 * ratio[1:])
    assert ratio[-1] > 0.99 and ratio.max() <= 1.0 + 1e-12
    per_bead = post.force_variance(path, per_bead=True) / post.prior_variance(path, per_bead=True)
    assert per_bead[-1].min() > 0.98


def test_low_rank_factor_is_conservative_and_ranks_frames():
    R, F = toy(60, 3)
    Rh, _ = toy(80, 4, spread=0.07)
    full = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, rank_tol=0)
    low = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS)   # default rank_tol
    fixed = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, rank=full.rank // 4)
    v = full.force_variance(Rh)
    assert low.rank < full.rank and 0 < low.info["dropped_variance_fraction"] <= 0.05
    assert 0 < low.info["dropped_trace_fraction"] < 1
    for trunc in (low, fixed):
        vt = trunc.force_variance(Rh)
        assert np.all(vt >= v * (1 - 1e-10))
        assert scipy.stats.spearmanr(vt, v)[0] > 0.99
    cheap = full.truncated(low.rank)  # columns ordered by importance: truncating the full fit is the same choice
    np.testing.assert_allclose(cheap.force_variance(Rh), low.force_variance(Rh), rtol=1e-9)
    assert cheap.info["dropped_variance_fraction"] == pytest.approx(low.info["dropped_variance_fraction"])
    assert np.all(np.diff(full.rank_profile[:, 0]) <= 1e-15) and full.rank_profile[-1, 0] == 0
    with pytest.raises(CgdmlError, match="rank"):
        full.truncated(0)
    # the mean variance over the training frames grows by about what the rank choice allowed
    grow = low.force_variance(R).mean() / full.force_variance(R).mean() - 1
    assert 0 <= grow < 0.1


def test_posterior_samples_have_the_posterior_covariance(data):
    R, F, Rq = data["R"], data["F"], data["Rq"][:3]
    n, d, r = len(R), 3 * N_BEADS, 3 * N_BEADS - 6
    idx = np.array([1, 5, 9, 14, 18, 22])
    post = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, inducing=idx, n_samples=4000, seed=5)
    S = post.sample_forces(Rq).reshape(post.n_samples, -1)           # (samples, 3 * 3N)
    np.testing.assert_allclose(post.sample_model(7).predict_forces(Rq).ravel(), S[7], rtol=1e-9,
                               atol=1e-9 * np.abs(S[7]).max())
    V = reduced_bases(R)
    Knn = reduced_blocks(data["K"], V, V)
    rows = (idx[:, None] * r + np.arange(r)).ravel()
    Kuu, G = Knn[np.ix_(rows, rows)], Knn[rows] @ Knn[rows].T
    Kuq = np.einsum("jar,jaqb->jrqb", V[idx], data["Kq"][idx][:, :, :3]).reshape(len(idx) * r, -1)
    C = post.s2 * LAM * Kuq.T @ np.linalg.solve(LAM * Kuu + G, Kuq)      # within-span posterior covariance
    U = np.random.default_rng(0).standard_normal((6, C.shape[0]))
    want = np.einsum("ua,ab,ub->u", U, C, U)
    got = np.var(S @ U.T, axis=0)
    np.testing.assert_allclose(got, want, rtol=5 * np.sqrt(2 / post.n_samples))
    assert abs(S.mean(0) @ U[0]) < 5 * np.sqrt(want[0] / post.n_samples)


def test_round_trip_and_damaged_fields(tmp_path):
    R, F = toy(30, 6)
    post = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, n_samples=3)
    arrays = {f"unc/{k}": v for k, v in post.to_arrays().items()}
    np.savez(tmp_path / "p.npz", **arrays)
    back = ForcePosterior.from_arrays(dict(np.load(tmp_path / "p.npz")), "unc/")
    np.testing.assert_array_equal(back.force_variance(R[:5]), post.force_variance(R[:5]))
    np.testing.assert_array_equal(back.sample_forces(R[:2]), post.sample_forces(R[:2]))
    assert back.info["rank"] == post.rank
    np.testing.assert_array_equal(back.rank_profile, post.rank_profile)
    for key, value, message in (("unc/factor", np.full((3, 3), np.nan), "damaged field 'unc/factor'"),
                                ("unc/s2", np.float64(-1.0), "damaged field 'unc/s2'"),
                                ("unc/inducing_jacobians", np.zeros((2, 2)), "damaged field 'unc/inducing_jacobians'"),
                                ("unc/version", np.int64(99), "version 99"),
                                ("unc/rank_profile", np.zeros((2, 2)), "damaged field 'unc/rank_profile'"),
                                ("unc/sample_coefficients", None, "missing field 'unc/sample_coefficients'")):
        bad = dict(arrays)
        bad.pop(key) if value is None else bad.__setitem__(key, value)
        with pytest.raises(CgdmlError, match=message) as err:
            ForcePosterior.from_arrays(bad, "unc/")
        assert "\n" not in str(err.value)
    bad = dict(arrays, **{"unc/factor": np.zeros((5, 2))})
    with pytest.raises(CgdmlError, match="factor"):
        ForcePosterior.from_arrays(bad, "unc/")


def _bond_forces(R, pairs, k, r0):
    F = np.zeros_like(R)
    for (a, b), l0 in zip(pairs, r0):
        v = R[:, a] - R[:, b]
        dist = np.linalg.norm(v, axis=1, keepdims=True)
        f = -k * (dist - l0) * v / dist
        F[:, a] += f
        F[:, b] -= f
    return F


def test_noise_estimator_recovers_known_noise():
    rng = np.random.default_rng(7)
    R = BASE + 0.02 * rng.standard_normal((500, N_BEADS, 3))
    pairs = [(a, b) for a in range(N_BEADS) for b in range(a)]
    r0 = [np.linalg.norm(BASE[a] - BASE[b]) for a, b in pairs]
    noise = 5.0
    F = _bond_forces(R, pairs, 300.0, r0) + noise * rng.standard_normal(R.shape)
    q = np.linalg.qr(rng.standard_normal((len(R), 3, 3)))[0]           # random rotations of frames and forces
    R, F = np.einsum("nij,naj->nai", q, R), np.einsum("nij,naj->nai", q, F)
    est = instantaneous_noise(R, F, QUADS)
    assert est.variance == pytest.approx(noise ** 2, rel=0.2)
    assert est.per_bead.shape == (N_BEADS,) and float(est) == est.variance
    naive = np.mean((F[1:] - F[:-1]) ** 2) / 2                         # no alignment, no extrapolation
    assert naive > 2 * noise ** 2


def test_inducing_choices_and_bad_arguments():
    R, F = toy(30, 8)
    rand = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, inducing="random", max_reduced=90)
    fps = ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, max_reduced=90)
    assert rand.info["n_inducing"] == fps.info["n_inducing"] == 10 and fps.info["inducing"] == "fps"
    assert rand.info["inducing_index"] != fps.info["inducing_index"]
    for bad, message in (("nearest", "inducing must be"), (np.array([0, 0]), "distinct"),
                         (np.array([0, 30]), r"\[0, 30\)")):
        with pytest.raises(CgdmlError, match=message):
            ForcePosterior.fit(R, F, sigma=SIGMA, lam=LAM, quads=QUADS, inducing=bad)
    with pytest.raises(CgdmlError, match="positive"):
        ForcePosterior.fit(R, F, sigma=SIGMA, lam=0.0, quads=QUADS)
    with pytest.raises(CgdmlError, match="beads"):
        fps.force_variance(R[:, :4])
