"""Inducing-point (Nyström) GDML: exact normal-equation products, the m = N limit, forces, noise averaging."""
import numpy as np
import pytest

from cgdml import kernels
from cgdml.ensemble import fit_single
from cgdml.gdml import GDML
from cgdml.nystrom import (NormalEquations, NystromGDML, ReducedFrames, SampledPreconditioner, choose_inducing,
                           fit_nystrom, pcg)


def test_streamed_products_match_dense_normal_equations(noisy_toy):
    data, _ = noisy_toy
    frames = ReducedFrames(data.coords[:300], data.forces[:300], chunk=64)
    idx = choose_inducing(300, 40, method="random")
    system = NormalEquations(frames, idx, sigma=1.0, lam=0.5, chunk=70)  # chunks not aligned with the frames
    Knm = kernels.assemble(frames.D, frames.W, 1.0, system.Dm, system.Wm)
    Kmm = system.kmm()
    np.testing.assert_allclose(Kmm, Kmm.T, atol=0)
    np.testing.assert_allclose(Kmm, Knm[(idx[:, None] * frames.r + np.arange(frames.r)).ravel()], rtol=1e-12,
                               atol=1e-12 * np.abs(Kmm).max())
    a = np.random.default_rng(0).standard_normal(system.size)
    dense = Knm.T @ (Knm @ a) + 0.5 * Kmm @ a
    np.testing.assert_allclose(system.matvec(a), dense, rtol=1e-10, atol=1e-10 * np.abs(dense).max())
    np.testing.assert_allclose(system.rhs(), Knm.T @ frames.y.ravel(), rtol=1e-10,
                               atol=1e-10 * np.abs(Knm.T @ frames.y.ravel()).max())


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_all_frames_inducing_is_exact_gdml(noisy_toy, lam):
    # With m = N, (K K + lam K) a = K y is (K + lam I) a = y: the GDML solution.
    data, _ = noisy_toy
    R, F = data.coords[:120], data.forces[:120]
    exact = GDML(sigma=1.0, lam=lam, relative_lam=True, solver="cholesky").fit(R, F)
    nys = NystromGDML(n_inducing=120, sigma=1.0, lam=lam, inducing="random", tol=1e-11, maxiter=2000).fit(R, F)
    X = data.coords[2000:2100]
    f_exact, f_nys = exact.predict_forces(X), nys.predict_forces(X)
    assert np.linalg.norm(f_nys - f_exact) / np.linalg.norm(f_exact) < 1e-7


def test_forces_are_minus_the_energy_gradient(noisy_toy, numerical_forces):
    data, _ = noisy_toy
    est = NystromGDML(n_inducing=50, sigma=1.0, lam=1.0).fit(data.coords[:500], data.forces[:500],
                                                           strata=np.arange(500) % 7)
    R = data.coords[3000:3005]
    energy = lambda X: est.predict(X)[0]
    np.testing.assert_allclose(est.predict_forces(R), numerical_forces(energy, R), rtol=1e-5, atol=1e-4)


def test_sampled_preconditioner_cuts_iterations(noisy_toy):
    data, _ = noisy_toy
    frames = ReducedFrames(data.coords[:2000], data.forces[:2000])
    idx = choose_inducing(2000, 100, strata=np.arange(2000) % 9)
    system = NormalEquations(frames, idx, sigma=1.0, lam=0.01 * frames.mean_diag(1.0))
    b = system.rhs()
    sample = np.sort(np.random.default_rng(1).choice(2000, 200, replace=False))
    precond = SampledPreconditioner(SampledPreconditioner.factor(system, sample, chunk=70), system.lam)
    _, k_pre, res_pre = pcg(system.matvec, b, precond, tol=1e-6, maxiter=2000)
    _, k_plain, _ = pcg(system.matvec, b, lambda x: x, tol=1e-6, maxiter=2000)
    print(f"CG iterations: sampled preconditioner {k_pre}, none {k_plain}")
    assert res_pre <= 1e-6 and k_pre < k_plain / 5


def test_learning_from_every_frame_beats_a_subset_of_the_same_size(noisy_toy):
    # Labels are 4x noisier than the learnable force. 300 inducing points fitted on 3000 frames average the
    # noise of all of them; a GDML on 300 frames (the same model size, its best lambda chosen against the
    # truth) cannot.
    data, F_true = noisy_toy
    train, test = data.subset(np.arange(3000)), np.arange(3000, 4000)
    err = lambda model: float(np.mean((model.forces(data.coords[test]) - F_true[test]) ** 2))
    nys = fit_nystrom(train, n_inducing=300, sigma=[1.0], lam=[0.3, 3.0, 30.0], strata="kmeans", n_strata=20)
    single = min(err(fit_single(train, 300, sigma=1.0, lam=lam, strata="kmeans")) for lam in (0.3, 1.0, 3.0, 10.0))
    print(f"mean-force MSE: Nystrom {err(nys):.1f} (chosen lam {nys.info['chosen']['lam']:g}), best single "
          f"{single:.1f}")
    assert err(nys) < 0.5 * single
    assert len(nys.info["selection_scores"]) == 3


def test_interrupted_fit_resumes_from_its_checkpoint(noisy_toy, tmp_path):
    data, _ = noisy_toy
    R, F = data.coords[:1500], data.forces[:1500]
    kw = dict(n_inducing=80, sigma=1.0, lam=0.1, inducing="random", tol=1e-8, maxiter=5000)
    full = NystromGDML(**kw).fit(R, F)

    class Stop(Exception):
        pass

    import cgdml.nystrom as nystrom

    real_pcg = nystrom.pcg

    def interrupted(*args, callback=None, **kwargs):
        def cb(state):
            callback(state)
            if state["k"] == 5:
                raise Stop
        return real_pcg(*args, callback=cb, **kwargs)

    nystrom.pcg = interrupted
    try:
        with pytest.raises(Stop):
            NystromGDML(workdir=tmp_path, checkpoint_s=0.0, **kw).fit(R, F)
    finally:
        nystrom.pcg = real_pcg
    assert len(list(tmp_path.glob("nystrom_cg_*.npz"))) == 1
    resumed = NystromGDML(workdir=tmp_path, checkpoint_s=0.0, **kw).fit(R, F)
    assert resumed.cg_iterations_ == full.cg_iterations_ > 5
    np.testing.assert_array_equal(resumed.coef_, full.coef_)  # the CG state is saved whole: an exact resume
    assert not list(tmp_path.glob("nystrom_cg_*.npz"))  # removed once the fit is done


def test_bad_parameters_name_the_problem(noisy_toy):
    data, _ = noisy_toy
    from cgdml._io import CgdmlError

    with pytest.raises(CgdmlError, match="n_inducing"):
        NystromGDML(n_inducing=0).fit(data.coords[:50], data.forces[:50])
    with pytest.raises(CgdmlError, match="inducing"):
        NystromGDML(inducing="leverage").fit(data.coords[:50], data.forces[:50])
    with pytest.raises(CgdmlError, match="lam"):
        fit_nystrom(data.subset(np.arange(100)), lam=[-1.0])


def test_fit_command_line_nystrom_writes_a_model_that_simulates(noisy_toy, tmp_path):
    import json

    from cgdml.fit import main as fit_main
    from cgdml.model import CGModel
    from cgdml.simulate import simulate

    data, _ = noisy_toy
    path = tmp_path / "toy.npz"
    data.subset(np.arange(2000)).save(path)
    out = tmp_path / "model.npz"
    assert fit_main([str(path), "-o", str(out), "--method", "nystrom", "--inducing", "60", "--sigma1", "1", "2",
                     "--lam1", "1", "--strata", "kmeans", "--quiet"]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["method"] == "Nystrom GDML" and len(info["selection_scores"]) == 2
    assert info["chosen"]["n_inducing"] == 60 and not (tmp_path / "model.npz.work").exists()
    model = CGModel.load(out)
    res = simulate(model.forces, model.train_coords_sample[:4], masses=model.masses, temperature=300.0, dt=0.002,
                   n_steps=200, save_every=50, integrator="langevin", friction=1.0, seed=0)
    assert res.alive.all() and np.isfinite(res.positions).all()
