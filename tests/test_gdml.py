"""GDML estimator: conservative forces, invariances, accuracy on an analytic potential, solvers, persistence."""
import warnings
import zipfile

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from scipy.spatial.transform import Rotation

from cgdml._io import CgdmlError
from cgdml.features import chain_quads, descriptor_jacobian
from cgdml.gdml import GDML
from cgdml.model import GDMLModel

BASE = np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.14, 0.0], [0.35, 0.15, 0.05], [0.4, 0.3, 0.12]])
K_SPRING = 500.0  # kJ/mol/nm^2


def springs(R):
    """Harmonic springs between all bead pairs, rest lengths from BASE: energies (n,) and forces (n, 5, 3)."""
    a, b = np.tril_indices(len(BASE), k=-1)
    d = R[:, a] - R[:, b]
    r = np.linalg.norm(d, axis=2)
    r0 = np.linalg.norm(BASE[a] - BASE[b], axis=1)
    E = 0.5 * K_SPRING * np.sum((r - r0) ** 2, axis=1)
    f = -(K_SPRING * (r - r0) / r)[:, :, None] * d
    F = np.zeros_like(R)
    np.add.at(F, (slice(None), a), f)
    np.add.at(F, (slice(None), b), -f)
    return E, F


def samples(n, seed):
    rng = np.random.default_rng(seed)
    R = BASE + 0.02 * rng.normal(size=(n, len(BASE), 3))
    return (R, *springs(R))


@pytest.fixture(scope="module")
def fitted():
    R, E, F = samples(200, seed=0)
    return GDML(sigma=50.0, lam=1e-8).fit(R, F, E)


def test_learns_analytic_potential(fitted):
    R, E, F = samples(100, seed=1)
    Ep, Fp = fitted.predict(R)
    rel = np.sqrt(np.mean((Fp - F) ** 2) / np.mean(F ** 2))
    assert rel < 0.15, rel
    assert np.sqrt(np.mean((Ep - E) ** 2)) < 0.15 * np.std(E)  # energy offset fitted from E
    np.testing.assert_allclose(fitted.predict_forces(R), Fp, rtol=1e-12, atol=1e-10)


def test_forces_are_minus_energy_gradient(fitted):
    R, _, _ = samples(3, seed=2)
    _, F = fitted.predict(R)
    h = 1e-6
    grad = np.empty_like(R)
    for c in range(R[0].size):
        Rp, Rm = R.copy(), R.copy()
        Rp.reshape(3, -1)[:, c] += h
        Rm.reshape(3, -1)[:, c] -= h
        grad.reshape(3, -1)[:, c] = (fitted.predict(Rp)[0] - fitted.predict(Rm)[0]) / (2 * h)
    np.testing.assert_allclose(F, -grad, atol=1e-5 * np.abs(F).max())


def test_rotation_translation_covariance(fitted):
    R, _, _ = samples(5, seed=3)
    Q = Rotation.random(random_state=4).as_matrix()
    E, F = fitted.predict(R)
    Em, Fm = fitted.predict(R @ Q.T + np.array([0.3, -1.0, 2.0]))
    np.testing.assert_allclose(Em, E, atol=1e-8 * np.abs(E).max())
    np.testing.assert_allclose(Fm, F @ Q.T, atol=1e-8 * np.abs(F).max())


def naive_full_solve(R, F, Rtest, sigma, lam, chiral):
    """Textbook GDML: full (3N M)^2 kernel of J^T Hc J blocks, dense solve, predicted forces."""
    quads = chain_quads(R.shape[1]) if chiral else []
    D, J = descriptor_jacobian(R, quads)
    Dt, Jt = descriptor_jacobian(Rtest, quads)

    def hess(d):
        r = np.linalg.norm(d)
        e = np.exp(-np.sqrt(5) * r / sigma)
        return 5 / (3 * sigma ** 4) * e * ((sigma ** 2 + np.sqrt(5) * sigma * r) * np.eye(len(d)) - 5 * np.outer(d, d))

    M, n = len(R), R[0].size
    K = np.block([[J[i].T @ hess(D[i] - D[j]) @ J[j] for j in range(M)] for i in range(M)])
    alpha = np.linalg.solve(K + lam * np.eye(M * n), F.reshape(-1)).reshape(M, n)
    return np.array([sum(Jt[b].T @ hess(Dt[b] - D[j]) @ J[j] @ alpha[j] for j in range(M))
                     for b in range(len(Rtest))]).reshape(Rtest.shape)


@pytest.mark.parametrize("chiral", [False, True])
def test_reduced_solve_equals_full_solve(chiral):
    rng = np.random.default_rng(5)
    R = BASE + 0.05 * rng.normal(size=(15, 5, 3))
    F = rng.normal(size=R.shape) * 10.0  # noise labels: no shortcut through a smooth target
    Rtest = BASE + 0.05 * rng.normal(size=(4, 5, 3))
    expect = naive_full_solve(R, F, Rtest, sigma=3.0, lam=1e-3, chiral=chiral)
    got = GDML(sigma=3.0, lam=1e-3, chiral=chiral).fit(R, F).predict_forces(Rtest)
    np.testing.assert_allclose(got, expect, atol=1e-8 * np.abs(expect).max())


def test_cholesky_and_cg_agree():
    R, _, F = samples(120, seed=6)
    F = F + np.random.default_rng(7).normal(scale=5.0, size=F.shape)
    Rt, _, _ = samples(20, seed=8)
    kw = dict(sigma=20.0, lam=1e-3, relative_lam=True)
    chol = GDML(solver="cholesky", **kw).fit(R, F)
    cg = GDML(solver="cg", precond_frames=30, cg_tol=1e-10, **kw).fit(R, F)
    assert cg.solver_ == "cg" and chol.solver_ == "cholesky" and cg.cg_iterations_ > 1
    assert cg.lam_ == chol.lam_
    Fc = chol.predict_forces(Rt)
    np.testing.assert_allclose(cg.predict_forces(Rt), Fc, atol=1e-6 * np.abs(Fc).max())
    # auto picks CG when the reduced matrix exceeds the memory budget
    assert GDML(memory_budget_gb=1e-6, **kw).fit(R[:30], F[:30]).solver_ == "cg"


def test_lambda_path_equals_one_fit_per_lambda():
    """fit_path: every solver's models equal the per-lambda fits (one eigendecomposition for all the eigh lambdas,
    the CG lambdas sharing the kernel operator and the preconditioner's lambda-free part), and the held-out
    scores of the whole grid with them."""
    R, _, F = samples(120, seed=6)
    F = F + np.random.default_rng(7).normal(scale=5.0, size=F.shape)
    Rt, _, Ft = samples(40, seed=8)
    lams = [3.0, 0.3, 1e-2, 1e-3]
    for solver, kw in (("cholesky", {}), ("cg", dict(precond_frames=30, cg_tol=1e-12))):
        for path_solver in ((solver,) if solver == "cg" else ("cholesky", "eigh")):
            est = GDML(sigma=20.0, relative_lam=True, solver=path_solver, **kw)
            path = est.fit_path(R, F, lams)
            assert [p["solver"] for p in est.path_] == [path_solver] * len(lams)
            for lam, model, rec in zip(lams, path, est.path_):
                one = GDML(sigma=20.0, lam=lam, relative_lam=True, solver=solver, **kw).fit(R, F)
                assert rec["lam_absolute"] == one.lam_
                want, got = one.predict_forces(Rt), model.predict_forces(Rt)
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max())
                score_one, score_path = np.mean((want - Ft) ** 2), np.mean((got - Ft) ** 2)
                assert score_path == pytest.approx(score_one, rel=1e-8)
    # the auto solver takes one eigendecomposition for a long dense path, and keeps the same solutions
    many = list(np.geomspace(1e-4, 1e-2, 20))
    est = GDML(sigma=20.0, relative_lam=True)
    models = est.fit_path(R[:40], F[:40], many)
    assert {p["solver"] for p in est.path_} == {"eigh"}
    for lam in (many[0], many[-1]):
        want = GDML(sigma=20.0, lam=lam, relative_lam=True).fit(R[:40], F[:40]).predict_forces(Rt)
        np.testing.assert_allclose(models[many.index(lam)].predict_forces(Rt), want, atol=1e-8 * np.abs(want).max())


def test_eigh_path_raises_lambda_of_a_singular_kernel():
    R, _, F = samples(10, seed=10)
    R, F = np.concatenate([R, R, R]), np.concatenate([F, F, F])  # duplicates: K has exact zero modes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = GDML(sigma=50.0, solver="eigh")
        est.fit_path(R, F, [1e-16, 1.0])
    assert est.path_[0]["lam_absolute"] > 1e-16 and est.path_[1]["lam_absolute"] == 1.0
    assert any("not positive definite" in str(w.message) for w in caught)


def test_gdml_preconditioner_is_the_inverse_of_its_nystrom_matrix():
    """P^-1 from the Woodbury identity (one syrk) equals the dense inverse of P = B B^T + blockdiag(Lam)."""
    from cgdml.linalg import gdml_preconditioner, gdml_preconditioner_base
    from cgdml.features import reduce_frames

    R, _, F = samples(30, seed=12)
    D, W, _, _ = reduce_frames(R, F, chain_quads(5))
    M, _, r = W.shape
    B, C = gdml_preconditioner_base(D, W, 20.0, 6)
    lam = 0.1 * np.mean(np.einsum("ii->i", C.reshape(M * r, r)[:r]))
    P = B @ B.T
    for i in range(M):
        P[i * r:(i + 1) * r, i * r:(i + 1) * r] += C[i] + lam * np.eye(r)
    x = np.random.default_rng(13).normal(size=M * r)
    got = gdml_preconditioner(D, W, 20.0, lam, 6).matvec(x)
    np.testing.assert_allclose(got, np.linalg.solve(P, x), rtol=1e-8, atol=1e-10 * np.abs(got).max())


def test_relative_lambda_scales_with_kernel_diagonal():
    R, _, F = samples(20, seed=9)
    D, J = descriptor_jacobian(R, chain_quads(5))
    mean_diag = 5 / (3 * 4.0 ** 2) * np.mean(np.sum(J ** 2, axis=1))  # diag of J^T Hc(0) J
    m = GDML(sigma=4.0, lam=1e-2, relative_lam=True).fit(R, F)
    assert m.lam_ == pytest.approx(1e-2 * mean_diag, rel=1e-12)


def test_singular_kernel_raises_lambda_with_warning():
    R, _, F = samples(10, seed=10)
    R, F = np.concatenate([R, R, R]), np.concatenate([F, F, F])  # duplicates: K has exact zero modes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = GDML(sigma=50.0, lam=1e-16).fit(R, F)
    assert m.lam_ > 1e-16
    assert any("not positive definite" in str(w.message) for w in caught)


def test_chiral_descriptor_breaks_mirror_symmetry():
    rng = np.random.default_rng(11)
    R = BASE + 0.03 * rng.normal(size=(60, 5, 3))
    F = rng.normal(size=R.shape) * 20.0
    mirror = np.array([1.0, 1.0, -1.0])
    test = BASE + 0.03 * rng.normal(size=(10, 5, 3))
    for chiral in (False, True):
        m = GDML(sigma=5.0, lam=1e-2, relative_lam=True, chiral=chiral).fit(R, F)
        E, Fp = m.predict(test)
        Em, Fm = m.predict(test * mirror)
        diff = np.abs(Fm - Fp * mirror).max() / np.abs(Fp).max()
        if chiral:
            assert diff > 1e-2 and np.abs(Em - E).max() > 1e-3 * np.abs(E).max()
        else:
            assert diff < 1e-10
            np.testing.assert_allclose(Em, E, rtol=1e-10, atol=1e-12)


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "model.npz"
    fitted.model_.save(path)
    loaded = GDMLModel.load(path)
    R, _, _ = samples(7, seed=12)
    E, F = fitted.predict(R)
    E2, F2 = loaded.predict(R)
    np.testing.assert_array_equal(E2, E)
    np.testing.assert_array_equal(F2, F)
    assert (loaded.n_train, loaded.n_beads, loaded.sigma) == (200, 5, fitted.sigma)
    # the model file holds fitted arrays only, no solver settings
    assert not {"memory_budget_gb", "verbose", "solver", "cg_tol"} & set(np.load(path).files)
    # embedding in a container file under a key prefix
    arrays = {f"gdml/{k}": v for k, v in fitted.model_.to_arrays().items()}
    inner = GDMLModel.from_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("gdml/")})
    np.testing.assert_array_equal(inner.predict_forces(R), F)
    np.testing.assert_allclose(loaded.nearest_train_distance(fitted_train_like(R)), 0.0, atol=1e-6)


def test_version_1_model_arrays_still_load(fitted):
    """cgdml 0.1 saved the estimator (D_train_, V_, c_, chiral, ...): the same predictions come back."""
    m = fitted.model_
    old = dict(format=np.array("cgdml.gdml"), version=np.array(1), sigma=np.array(m.sigma), lam=np.array(1e-8),
               relative_lam=np.array(False), chiral=np.array(True), chiral_scale=np.array(1.0), solver=np.array("auto"),
               memory_budget_gb=np.array(4.0), cg_tol=np.array(1e-6), cg_maxiter=np.array(2000),
               n_inducing=np.array(-1), verbose=np.array(False), lam_=np.array(1e-8), c_=np.array(m.offset),
               D_train_=m.train_descriptors, V_=m.coefficients, n_beads_=np.array(5), solver_=np.array("cholesky"),
               cg_iterations_=np.array(0))
    R, _, _ = samples(4, seed=2)
    np.testing.assert_array_equal(GDMLModel.from_arrays(old).predict(R)[1], fitted.predict(R)[1])


def fitted_train_like(R):
    """The first training configurations of the fixture (seed 0) for a zero-distance check."""
    return samples(200, seed=0)[0][:3]


def test_bad_files_raise_clean_errors(fitted, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(CgdmlError, match="garbage.npz"):
        GDMLModel.load(garbage)
    good = tmp_path / "good.npz"
    fitted.model_.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CgdmlError, match="truncated.npz"):
        GDMLModel.load(truncated)
    arrays = fitted.model_.to_arrays()
    with pytest.raises(CgdmlError, match="newer"):
        GDMLModel.from_arrays({**arrays, "version": np.array(99)})
    with pytest.raises(CgdmlError):
        GDMLModel.from_arrays({k: v for k, v in arrays.items() if k != "coefficients"})
    with pytest.raises(CgdmlError, match="NaN"):
        GDMLModel.from_arrays({**arrays, "coefficients": np.full_like(arrays["coefficients"], np.nan)})
    with pytest.raises(CgdmlError):
        GDMLModel.from_arrays({"something": np.zeros(3)})
    with pytest.raises(CgdmlError):
        GDMLModel.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(good)


def test_input_errors(fitted):
    with pytest.raises(CgdmlError):
        GDML().fit(np.zeros((3, 5, 3)), np.zeros((3, 4, 3)))
    with pytest.raises(CgdmlError):
        fitted.predict(np.zeros((2, 6, 3)))
    with pytest.raises(NotFittedError):
        GDML().predict(np.zeros((2, 5, 3)))
    with pytest.raises(CgdmlError):
        GDML(sigma=-1.0).fit(*samples(3, seed=0)[::2])


def test_blocked_cholesky_matches_lapack():
    from scipy.linalg import cholesky

    from cgdml.linalg import cholesky_upper_inplace

    rng = np.random.default_rng(13)
    G = rng.normal(size=(300, 300))
    A = G @ G.T + 300 * np.eye(300)
    U = cholesky_upper_inplace(np.asfortranarray(A), block=64)
    np.testing.assert_allclose(np.triu(U), cholesky(A), atol=1e-10)
    with pytest.raises(np.linalg.LinAlgError):
        cholesky_upper_inplace(np.asfortranarray(A - 400 * np.eye(300)), block=64)


def test_estimators_follow_the_scikit_learn_contract():
    from cgdml import GDML as PackageGDML, CGEstimator, CGPrior, NystromGDML, TwoLayerGDML

    for est in (PackageGDML(sigma=3.0, lam=0.1), NystromGDML(n_inducing=10, sigma=2.0),
                TwoLayerGDML(n_models=3, sigma1=(2.0, 4.0)), CGPrior(repulsion=False), CGEstimator(n_frames=40)):
        copy = clone(est)
        assert type(copy) is type(est) and copy.get_params(deep=True) == est.get_params(deep=False)
        params = copy.get_params()
        copy.set_params(**({"seed": 7} if "seed" in params else {"sigma": 9.0} if "sigma" in params else
                           {"repulsion": not params["repulsion"]}))
        assert copy.get_params() != est.get_params()
    with pytest.raises(NotFittedError):
        NystromGDML().predict_forces(np.zeros((1, 5, 3)))


def test_learners_share_one_fit_contract(noisy_toy):
    """GDML, NystromGDML and TwoLayerGDML: fit(R, F, groups=...) returns the learner with model_ a GDMLModel that
    fits the forces better than zero, and a summary_ for the fit record; bad parameters are ParameterErrors (a
    ValueError naming the parameter) before any work."""
    from cgdml import NystromGDML, TwoLayerGDML
    from cgdml.validation import ParameterError

    data, _ = noisy_toy
    R, F, groups = data.coords[:400], data.forces[:400], np.arange(400) % 5
    learners = [GDML(sigma=1.0, lam=1.0, relative_lam=True),
                NystromGDML(n_inducing=40, sigma=[1.0], lam=[1.0], progress=False),
                TwoLayerGDML(n_models=2, batch_size=100, mean_set_size=80, sigma1=[1.0], lam1=[1.0], sigma2=[1.0],
                             lam2=[1e-2], progress=False)]
    for learner in learners:
        assert learner.fit(R, F, groups=groups) is learner and isinstance(learner.model_, GDMLModel)
        err = np.mean((learner.predict_forces(R) - F) ** 2)
        assert err < np.mean(F ** 2), type(learner).__name__
        assert {"method", "chosen"} <= set(learner.summary_)
        bad = clone(learner).set_params(chiral="yes")
        with pytest.raises(ParameterError, match="chiral must be True or False, got 'yes'") as info:
            bad.fit(R, F)
        assert isinstance(info.value, ValueError) and info.value.name == "chiral"
