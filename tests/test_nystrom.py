"""Inducing-point (Nyström) GDML: exact normal-equation products, the m = N limit, forces, noise averaging."""
import numpy as np
import pytest

from cgdml import kernels
from cgdml.gdml import GDML
from cgdml.linalg import SampledPreconditioner, default_precond_frames, pcg
from cgdml.nystrom import NormalEquations, NystromGDML, ReducedFrames, choose_inducing
from cgdml.pipeline import fit_cg_model
from cgdml.selection import decide, holdout_split, mse


def fit_nystrom(data, **params):
    """Prior + inducing-point GDML on every frame of ``data``, as a CGModel (no basin balancing), its learned
    force whole (residual weight 1) and unrefined: these tests measure the learner, not the landscape judge nor
    the pair refinement."""
    params.setdefault("residual_weight", 1.0)
    params.setdefault("refine_pairs", False)
    return fit_cg_model(data, "nystrom", balance_basins=False, progress=False, **params)


def fit_single(data, n_frames, **params):
    """One GDML on n_frames stratified frames (the single-model baseline), as a CGModel, its learned force whole,
    unrefined."""
    params.setdefault("residual_weight", 1.0)
    params.setdefault("refine_pairs", False)
    return fit_cg_model(data, "single", n_frames=n_frames, balance_basins=False, progress=False, **params)


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


@pytest.mark.parametrize("n_threads", [1, 2])
def test_fused_pass_matches_the_dense_kernel_in_any_tiling(noisy_toy, n_threads):
    # The fused pass (one set of pair coefficients for K_Nm and K_mN, in tiles) against dense K_Nm, with tiles and
    # threaded tasks that do not divide the frames; float32 GEMMs to single precision.
    data, _ = noisy_toy
    frames = ReducedFrames(data.coords[:257], data.forces[:257])
    idx = choose_inducing(257, 31, method="random", seed=3)
    Dm, Wm = frames.D[idx], frames.W[idx]
    Knm = kernels.assemble(frames.D, frames.W, 1.3, Dm, Wm)
    a = np.random.default_rng(2).standard_normal(31 * frames.r)
    V = np.einsum("mdr,mr->md", Wm, a.reshape(31, frames.r))
    back = lambda h: np.einsum("md,mdr->mr", h, Wm).ravel()  # noqa: E731
    want_mv, want_rhs = Knm.T @ (Knm @ a), Knm.T @ frames.y.ravel()
    for dtype, rtol in ((np.float64, 1e-11), (np.float32, 2e-5)):
        for block, task in ((7, 50), (64, 300), (None, 16384)):
            tab = kernels.InducingTables(Dm, V, 1.3, dtype)
            got = back(kernels.normal_pass(frames.D, frames.W, tab, block=block, n_threads=n_threads, task=task))
            np.testing.assert_allclose(got, want_mv, rtol=0, atol=rtol * np.abs(want_mv).max())
            tab = kernels.InducingTables(Dm, None, 1.3, dtype)
            got = back(kernels.normal_pass(frames.D, frames.W, tab, frames.y, block=block, n_threads=n_threads,
                                           task=task))
            np.testing.assert_allclose(got, want_rhs, rtol=0, atol=rtol * np.abs(want_rhs).max())


def test_pair_coefficients_use_an_exact_exponential():
    # The vectorised exp(-a r) of the fused pass against numpy over the whole range (underflow included).
    ar = np.concatenate([[0.0, 1e-300, 1e-8, 0.5 * np.log(2)], np.geomspace(1e-6, 800.0, 5000)])
    m = len(ar)
    L = np.stack([ar ** 2, np.linspace(-3, 3, m)], axis=1).reshape(2 * m, 1)
    dv = L[1::2, 0].copy()
    ar = np.sqrt(L[0::2, 0])  # what the kernel sees (exp(-a r) is only as exact as a r itself)
    E = np.empty((m, 1))
    kernels._pair_coeffs(L, E, 0.7, 1.9, np.empty(1, dtype=np.int64), True)
    e = np.exp(-ar)
    np.testing.assert_allclose(E[:, 0], 1.9 * e, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(L[0::2, 0], 0.7 * (1 + ar) * e, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(L[1::2, 0], 1.9 * e * dv, rtol=1e-14, atol=1e-300)
    # float32: a few ulps, times the condition number a r of exp(-a r) (the float32 sqrt rounds a r)
    L32 = np.stack([np.linspace(0, 30, m) ** 2, np.linspace(-3, 3, m)], axis=1).reshape(2 * m, 1).astype(np.float32)
    ar, dv = np.sqrt(L32[0::2, 0].astype(np.float64)), L32[1::2, 0].astype(np.float64)
    E32 = np.empty((m, 1), dtype=np.float32)
    kernels._pair_coeffs32(L32, E32, 0.7, 1.9, np.empty(1, dtype=np.int32), True)
    e = np.exp(-ar)
    for got, want in ((E32[:, 0], 1.9 * e), (L32[0::2, 0], 0.7 * (1 + ar) * e), (L32[1::2, 0], 1.9 * e * dv)):
        assert np.all(np.abs(got - want) <= 4e-7 * (1 + ar) * np.abs(want) + 1e-37)


def test_float32_products_give_the_float64_model(noisy_toy):
    # Single-precision GEMMs in the streamed products, float64 residuals (refinement): the fit meets the float64
    # tolerance, its forces agree with the float64 fit to the CG tolerance, and at the default tol it is as close
    # to the converged solution as the float64 fit.
    data, _ = noisy_toy
    R, F = data.coords[:3000], data.forces[:3000]
    X = data.coords[3000:]
    kw = dict(n_inducing=150, sigma=1.0, lam=0.03, inducing="random")
    exact = NystromGDML(tol=1e-10, maxiter=2000, **kw).fit(R, F).predict_forces(X)
    rel = lambda f, ref: (np.sqrt(np.mean((f - ref) ** 2) / np.mean(ref ** 2)),  # noqa: E731
                          np.abs(f - ref).max() / np.abs(ref).max())
    for tol in (1e-6, 1e-4):
        f64 = NystromGDML(tol=tol, **kw).fit(R, F)
        f32 = NystromGDML(dtype="float32", tol=tol, **kw).fit(R, F)
        assert f32.residual_ <= tol and f64.cg_refinements_ == 0 and f32.cg_refinements_ <= 2
        F64, F32 = f64.predict_forces(X), f32.predict_forces(X)
        print(f"tol {tol:g}: float32 vs float64 forces rel. RMS {rel(F32, F64)[0]:.1e}, max {rel(F32, F64)[1]:.1e}; "
              f"vs converged: float32 {rel(F32, exact)[0]:.1e}, float64 {rel(F64, exact)[0]:.1e}; iterations "
              f"{f32.cg_iterations_} ({f32.cg_refinements_} refinements) and {f64.cg_iterations_}")
        if tol == 1e-6:
            assert max(rel(F32, F64)) < 1e-4
        else:
            assert rel(F32, exact)[0] < 2 * rel(F64, exact)[0] + 1e-6


def test_default_preconditioner_frames_grow_with_the_data():
    assert default_precond_frames(5_000, 500, 18, 12) == 250  # m / 2
    assert default_precond_frames(200, 500, 18, 12) == 200  # at most N
    assert default_precond_frames(100_000, 500, 18, 12) == 750  # the setup costs 24 products
    big = default_precond_frames(1_000_000, 500, 18, 12)
    assert 10 * 500 < big < 20 * 500 and default_precond_frames(1_000_000, 1000, 18, 12) < big


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
                                                           groups=np.arange(500) % 7)
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
    scores = nys.info["selection_scores"]
    assert len(scores) == 3
    # scored on the plain force error by default, the error along the chain's dihedral recorded too
    assert nys.info["params"]["cv_score"] == "force"
    assert all(s["mse"] == s["mse_force"] and np.isfinite(s["mse_dihedral"]) for s in scores)
    assert nys.info["chosen"]["lam"] == decide(scores)[0]["lam"]  # the selection rule on the force scores
    assert nys.info["selection"]["winner"]["lam"] == nys.info["chosen"]["lam"]


def test_hold_out_selection_scores_each_candidate_as_a_cold_fit_would(noisy_toy):
    # The selection warm-starts CG from the previous lambda and shares the preconditioner of a sigma: that saves
    # iterations, not accuracy. Each candidate's held-out score is that of a fresh fit on the same frames; the
    # winner (by cgdml.selection.decide: the smoothest within one standard error of the smallest score) is refitted
    # on every frame.
    data, _ = noisy_toy
    R, F = data.coords[:2000], data.forces[:2000]
    kw = dict(n_inducing=60, inducing="random", tol=1e-8, maxiter=2000, progress=False)
    est = NystromGDML(sigma=[1.0, 2.0], lam=[0.1, 1.0], **kw).fit(R, F)
    table = est.selection_scores_
    assert [(e["sigma"], e["lam"]) for e in table[:4]] == [(1.0, 1.0), (1.0, 0.1), (2.0, 1.0), (2.0, 0.1)]
    assert all(e.get("extension") for e in table[4:])   # steps past an edge the winner sat on
    val, train = holdout_split(2000, 0.1, 100_000, seed=0)
    for e in table:
        cold = NystromGDML(sigma=e["sigma"], lam=e["lam"], **kw).fit(R[train], F[train])
        assert mse(cold.predict_forces(R[val]), F[val]) == pytest.approx(e["mse_force"], rel=1e-6)
    win = decide(table)[0]
    assert est.summary_["chosen"]["sigma"] == win["sigma"] and est.summary_["chosen"]["lam"] == win["lam"]
    final = NystromGDML(sigma=win["sigma"], lam=win["lam"], **kw).fit(R, F)
    np.testing.assert_array_equal(est.coef_, final.coef_)


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
    with pytest.raises(CgdmlError, match="dtype"):
        NystromGDML(dtype="float16").fit(data.coords[:50], data.forces[:50])
    with pytest.raises(CgdmlError, match="lam"):
        fit_nystrom(data.subset(np.arange(100)), lam=[-1.0])
    with pytest.raises(CgdmlError, match="cv_score"):
        fit_nystrom(data.subset(np.arange(100)), cv_score="energy")


def test_fit_command_line_nystrom_writes_a_model_that_simulates(noisy_toy, tmp_path):
    import json

    from cgdml.fit import main as fit_main
    from cgdml.model import CGModel
    from cgdml.simulate import simulate

    data, _ = noisy_toy
    path = tmp_path / "toy.npz"
    data.subset(np.arange(2000)).save(path)
    out = tmp_path / "model.npz"
    assert fit_main([str(path), "-o", str(out), "--method", "nystrom", "--inducing", "60", "--sigma", "1", "2",
                     "--lam", "1", "--strata", "kmeans", "--quiet"]) == 0    # --inducing: the old spelling
    info = json.loads(out.with_suffix(".json").read_text())
    extended = info["selection"].get("extended", [])   # steps past the grid's edge where the winner sat on it
    assert info["method"] == "Nyström GDML" and len(info["selection_scores"]) == 2 + len(extended)
    assert info["chosen"]["n_inducing"] == 60 and not (tmp_path / "model.npz.work").exists()
    model = CGModel.load(out)
    res = simulate(model.forces, model.train_coords_sample[:4], masses=model.masses, temperature=300.0, dt=0.002,
                   n_steps=200, save_every=50, integrator="langevin", friction=1.0, seed=0)
    assert res.alive.all() and np.isfinite(res.positions).all()


def test_blocked_syrk_matches_the_upper_triangle_of_a_at():
    """syrk_upper (blocks of syrk and gemm, which keeps clear of an OpenBLAS dsyrk segfault at n >~ 18,500)
    equals c + alpha a a^T on the upper triangle, for block sizes that do and do not divide n."""
    from cgdml.linalg import syrk_upper

    rng = np.random.default_rng(3)
    a = np.asfortranarray(rng.standard_normal((41, 9)))
    c = np.asfortranarray(rng.standard_normal((41, 41)))
    iu = np.triu_indices(41)
    for block in (1, 8, 41, 100):
        out = syrk_upper(0.3, a, c.copy(order="F"), block=block)
        assert np.allclose(out[iu], (c + 0.3 * a @ a.T)[iu], rtol=0, atol=1e-12)
