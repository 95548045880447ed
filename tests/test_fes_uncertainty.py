"""Model uncertainty of landscapes (cgdml.fes.reweight, docs/uncertainty.md §9): posterior-sample energies,
reweighting against analytically reweighted histograms, the per-bin model spread, the JSON keys, the band shrinking
as the samples agree, the effective sample size flag and the first-order band that replaces reweighting below it
(equal to the reweighted band for small deviations, exact for deviations constant within each bin), the fes
command's --model option end to end and a model without a posterior."""
import json
import warnings

import mdtraj as md
import numpy as np
import pytest
from scipy.stats import norm

from cgdml._cli import run_cli
from cgdml._io import CgdmlError
from cgdml.data import CGDataset
from cgdml.fes import compare_landscapes, compare_panels, histogram_fes
from cgdml.fes.__main__ import main
from cgdml.fes.cvs import Panel
from cgdml.fes.reweight import (Z95, ModelWeights, aligned_free_energy, as_grid, coverage, effective_sample_size,
                                first_order_counts, jackknife_std, model_band, sample_energies, sample_weights)
from cgdml.gdml import GDML
from cgdml.gdml_model import GDMLModel
from cgdml.model import CGModel
from cgdml.prior import CGPrior
from cgdml.topology import chain_topology
from cgdml.uncertainty import ForcePosterior
from cgdml.units import kT as thermal_energy

T = 300.0
KT = thermal_energy(T)
NAMES = ["C", "N", "CA", "C", "N"]


def frames(n, seed, tau=4.0, length=0.15):
    """Correlated 5-bead chain frames (n, 5, 3) nm: each bond an AR(1) series of random directions (so that the
    backbone (phi, psi) of the middle residue covers the whole map)."""
    rng = np.random.default_rng(seed)
    a = np.exp(-1.0 / tau)
    v = np.empty((n, 4, 3))
    v[0] = rng.normal(size=(4, 3))
    for t in range(1, n):
        v[t] = a * v[t - 1] + np.sqrt(1 - a * a) * rng.normal(size=(4, 3))
    v *= length / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.concatenate([np.zeros((n, 1, 3)), np.cumsum(v, axis=1)], axis=1)


@pytest.fixture(scope="module")
def toy():
    """(reference dataset, CGModel with a small force posterior as ``uncertainty``, model frames)."""
    top = chain_topology(NAMES, ["ACE", "ALA", "NME"], [0, 1, 1, 1, 2])
    R = frames(1500, 1)
    ds = CGDataset.from_arrays(R, np.random.default_rng(2).normal(0.0, 40.0, R.shape), temperature=T, topology=top)
    prior = CGPrior().fit(ds.coords, T)
    res = ds.forces[:80] - prior.forces(ds.coords[:80])
    fit = GDML(sigma=2.0, lam=1.0, relative_lam=True).fit(ds.coords[:80], res)
    post = ForcePosterior.fit(ds.coords[:80], res, sigma=2.0, lam=fit.lam_, quads=fit.model_.quads, max_reduced=360,
                              n_samples=12, seed=3)
    model = CGModel(fit.model_, prior, ds.system, ds.coords[:20])
    model.uncertainty = post
    return ds, model, frames(2000, 7)


def test_sample_energies_are_the_sample_models_energies(toy):
    _, model, xyz = toy
    post = model.uncertainty
    E = sample_energies(post, xyz[:70], chunk=32)
    want = np.array([post.sample_model(i).predict(xyz[:70])[0] for i in range(post.n_samples)])
    np.testing.assert_allclose(E, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert np.abs(want).max() > 0


def test_reweighting_reproduces_the_analytic_histogram():
    """Frames x ~ N(0, 1) reweighted with an energy deviation kT b x sample N(-b, 1): the weighted histogram is
    the analytic one, and the per-bin spread over samples b_s is std(b) |x_bin - mean_w(x_bin)| exactly."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400_000)
    b = np.array([0.6, -0.4, 0.2])
    w = sample_weights(KT * b[:, None] * x[None], KT)
    np.testing.assert_allclose(w.sum(1), 1.0)
    edges = np.linspace(-3, 3, 25)
    for k, bk in enumerate(b):
        F, _, counts = histogram_fes(x, 24, (-3.0, 3.0), weights=w[k])
        p = np.diff(norm.cdf(edges, loc=-bk))
        want = -np.log(p / p.sum())
        want -= want.min()
        ok = p / p.sum() > 0.01
        # statistical error of a reweighted bin: about 1 / sqrt(effective frames in it)
        err = 1.0 / np.sqrt(effective_sample_size(w[k])[0] * p[ok] / p.sum())
        assert np.all(np.abs((F - F[ok].min())[ok] - (want - want[ok].min())[ok]) < 5 * err + 0.01)
    # unequal weights lose effective frames: exp(-b^2) of them for Gaussian x
    np.testing.assert_allclose(effective_sample_size(w) / len(x), np.exp(-b ** 2), rtol=0.05)

    # per-bin model spread: F_s(b) - c_s = F_0(b) - c_0 + b_s (xbar_b - sum_b w(b) xbar_b) to second order
    bs = rng.normal(0.0, 0.1, 40)
    W = sample_weights(KT * bs[:, None] * x[None], KT)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, -1, 24)
    idx[(x < -3) | (x >= 3)] = -1
    entry, metrics = model_band(idx, W, [24], n_boot=0)
    assert metrics is None and entry["sampling"] is False and entry["bins"]["sampling_std"] is None
    counts = np.bincount(idx[idx >= 0], minlength=24)
    xbar = np.bincount(idx[idx >= 0], weights=x[idx >= 0], minlength=24) / np.maximum(counts, 1)
    align = counts / counts.sum()
    want = np.std(bs, ddof=1) * np.abs(xbar - align @ xbar)
    got = as_grid(entry["bins"]["model_std"])
    pop = counts > 200
    np.testing.assert_allclose(got[pop], want[pop], rtol=0.02, atol=2e-3)
    np.testing.assert_allclose(as_grid(entry["bins"]["std"])[pop], got[pop])     # no sampling part


def panel(model_cv, ref_cv):
    return Panel("toy", model_cv, ref_cv, [(-np.pi, np.pi)] * 2, ["a", "b"], ["a", "b"], [True, True], [True, True])


def test_band_json_keys_and_quadrature():
    rng = np.random.default_rng(1)
    model_cv = rng.vonmises(0.0, 1.0, size=(3000, 2))
    ref_cv = rng.vonmises(0.1, 1.0, size=(4000, 2))
    E = rng.normal(0.0, 0.3, (16, 1)) * model_cv[None, :, 0] * KT
    mw = ModelWeights(sample_weights(E, KT), KT)
    out = compare_panels([panel(model_cv, ref_cv)], bins=12, n_boot=20, block=100, model_weights=mw)
    e = out["panels"][0]
    u = e["model_uncertainty"]
    assert set(u) == {"n_samples", "sampling", "estimator", "bins", "metrics", "band", "coverage"}
    assert u["n_samples"] == 16 and u["estimator"] == "reweighted"
    assert set(u["bins"]) == {"shape", "free_energy", "model_std", "sampling_std", "std", "difference",
                              "reference_std"}
    assert u["bins"]["shape"] == [12, 12] and len(u["bins"]["model_std"]) == 12
    m, s, t = (as_grid(u["bins"][k]) for k in ("model_std", "sampling_std", "std"))
    ok = np.isfinite(t)
    np.testing.assert_allclose(t[ok], np.hypot(m, s)[ok], atol=2e-4)        # rounded to 1e-4 in the report
    for k in ("fes_rmse", "js"):
        b = u["band"][k]
        assert set(b) == {"point", "model_std", "sampling_std", "std", "lo", "hi"}
        assert b["point"] == e["metrics"][k] and b["sampling_std"] == e["bootstrap"][k]["std"]
        assert b["std"] == pytest.approx(np.hypot(b["model_std"], b["sampling_std"]))
        assert b["lo"] <= b["point"] <= b["hi"] and b["model_std"] > 0
        assert set(u["metrics"][k]) == {"point", "model_mean", "model_std"}
    cov = u["coverage"]
    assert set(cov) == {"min_count", "n_bins", "missed_by_model", "inside", "inside_model_only",
                        "inside_sampling_only", "inside_with_reference_noise", "widen_to_95"} and cov["n_bins"] > 20
    assert cov["inside_model_only"] <= cov["inside"] and cov["inside_sampling_only"] <= cov["inside"]
    assert cov["inside"] <= cov["inside_with_reference_noise"]
    assert set(out["mean"]["model_uncertainty"]) == {"n_samples", "estimator", "metrics", "band"}
    # samples without spread: no model part, the band is the bootstrap's
    flat = compare_panels([panel(model_cv, ref_cv)], bins=12, n_boot=20, block=100,
                          model_weights=ModelWeights(sample_weights(np.zeros((4, 3000)), KT), KT))
    fu = flat["panels"][0]["model_uncertainty"]
    assert np.nanmax(as_grid(fu["bins"]["model_std"])) == 0.0 and fu["band"]["js"]["model_std"] == 0.0
    assert fu["coverage"]["inside"] == fu["coverage"]["inside_sampling_only"]


def test_coverage_counts_bins_inside_the_band():
    """20 populated bins with |difference| = 1.96 sigma k / 10 for k = 1..20: the 10 with k <= 10 lie inside;
    widening the band 1.9 times brings 19 of 20 (95%) inside; a missed bin counts as outside."""
    k = np.arange(1.0, 21.0)
    sigma = np.full(20, 0.5)
    diff = Z95 * sigma * k / 10 * np.where(k % 2, 1, -1)
    h_ref, visited = np.full(20, 30), np.ones(20, bool)
    cov = coverage(diff, sigma * 0.6, sigma * 0.8, h_ref, visited)       # 0.6^2 + 0.8^2 = 1
    assert cov["n_bins"] == 20 and cov["inside"] == 0.5 and cov["widen_to_95"] == pytest.approx(1.9)
    assert cov["inside_sampling_only"] == 0.4 and cov["inside_model_only"] == 0.3
    visited[0] = False
    h_ref[1] = 19                                                        # below min_count: not counted
    cov = coverage(diff, sigma * 0.6, sigma * 0.8, h_ref, visited)
    assert cov["n_bins"] == 19 and cov["missed_by_model"] == 1 and cov["inside"] == pytest.approx(8 / 19)
    visited[2:4] = False                                                 # 3 of 19 missed: over 5%
    assert coverage(diff, sigma * 0.6, sigma * 0.8, h_ref, visited)["widen_to_95"] is None


def test_band_shrinks_as_the_samples_agree():
    """Posterior samples c dE_s: the per-bin model spread scales with c (to first order), the metrics' spread
    shrinks with it, and the band tends to the bootstrap's as c -> 0."""
    rng = np.random.default_rng(4)
    model_cv = rng.vonmises(0.0, 1.0, size=(6000, 2))
    ref_cv = rng.vonmises(0.1, 1.0, size=(6000, 2))
    E = (rng.normal(0.0, 0.3, (16, 1)) * np.cos(model_cv[None, :, 0])
         + rng.normal(0.0, 0.3, (16, 1)) * np.sin(model_cv[None, :, 1])) * KT
    out = {}
    for c in (1.0, 0.5, 0.25, 0.0):
        mw = ModelWeights(sample_weights(c * E, KT), KT)
        u = compare_panels([panel(model_cv, ref_cv)], bins=10, n_boot=20, block=200,
                           model_weights=mw)["panels"][0]["model_uncertainty"]
        out[c] = (as_grid(u["bins"]["model_std"]), u["band"]["fes_rmse"], u["coverage"])
    ok = np.isfinite(out[1.0][0]) & (out[1.0][0] > 1e-3)
    for c in (0.5, 0.25):
        np.testing.assert_allclose(np.median(out[c][0][ok] / out[1.0][0][ok]), c, rtol=0.05)
        # a metric is not linear in the free energies (an RMSE near 0): it only shrinks
        assert out[c][1]["model_std"] < out[2 * c][1]["model_std"] and out[c][1]["std"] < out[2 * c][1]["std"]
    assert np.nanmax(out[0.0][0]) == 0.0 and out[0.0][1]["std"] == pytest.approx(out[0.0][1]["sampling_std"])
    assert out[0.0][2]["inside"] <= out[0.25][2]["inside"] <= out[1.0][2]["inside"]


def test_sample_energies_scale_with_the_sample_coefficients(toy):
    _, model, xyz = toy
    post = model.uncertainty
    half = ForcePosterior(**{**vars_of(post), "sample_coefficients": 0.5 * post.sample_coefficients})
    np.testing.assert_allclose(sample_energies(half, xyz[:50]), 0.5 * sample_energies(post, xyz[:50]), rtol=1e-12)


def test_a_low_ess_sample_is_flagged():
    """One sample whose weights sit on a few frames: named in low_ess_samples, and the whole band (every sample,
    not just that one) is first order instead of reweighted (it used to be withheld: the contract changed in
    issue 25's fallback)."""
    rng = np.random.default_rng(5)
    cv = rng.uniform(-np.pi, np.pi, size=(2000, 2))
    E = rng.normal(0.0, 0.1, (6, 2000)) * KT
    E[3] = rng.normal(0.0, 5.0, 2000) * KT
    mw = ModelWeights(sample_weights(E, KT), KT, energies=E)
    assert mw.low_ess_samples.tolist() == [3] and mw.too_small and mw.summary()["low_ess_samples"] == [3]
    assert "1 of 6 samples" in mw.warning() and "first order" in mw.warning()
    assert mw.estimator_used == "first-order" and mw.summary()["estimator"] == "first-order"
    out = compare_panels([panel(cv, cv)], bins=8, n_boot=0, model_weights=mw)
    u = out["panels"][0]["model_uncertainty"]
    assert u["estimator"] == "first-order" and "model_uncertainty_undefined" not in out["panels"][0]
    fine = ModelWeights(sample_weights(np.delete(E, 3, axis=0), KT), KT)
    assert not fine.too_small and fine.low_ess_samples.tolist() == [] and fine.warning() is None
    assert fine.estimator_used == "reweighted"
    # forcing reweighting against the ESS (a diagnostic): the reweighted band, and a warning that says so
    forced = ModelWeights(sample_weights(E, KT), KT, energies=E, estimator="reweighted")
    assert forced.estimator_used == "reweighted" and "forced and understates" in forced.warning()
    fu = compare_panels([panel(cv, cv)], bins=8, n_boot=0, model_weights=forced)["panels"][0]["model_uncertainty"]
    assert fu["estimator"] == "reweighted" and fu["bins"]["model_std"] != u["bins"]["model_std"]
    with pytest.raises(CgdmlError, match="estimator must be one of"):
        ModelWeights(sample_weights(E, KT), KT, estimator="exact")


def test_small_effective_sample_size_gives_a_first_order_band():
    """Every sample's weights on a few frames (5 kT of noise per frame): no reweighted band, but the first-order
    one, whose per-bin spread is that of the samples' bin means of dE / kT (aligned), a constant per sample
    apart; the metrics get a finite spread; energies recovered from the weights give the same band."""
    rng = np.random.default_rng(2)
    cv = rng.uniform(-np.pi, np.pi, size=(20000, 2))
    E = (rng.normal(0.0, 5.0, (8, 20000)) + rng.normal(0.0, 30.0, (8, 1))) * KT
    mw = ModelWeights(sample_weights(E, KT), KT, energies=E)
    assert mw.too_small and mw.ess_fraction.max() < 0.1 and "effective sample size" in mw.warning()
    summary = mw.summary()
    assert summary["ess_too_small"] is True and summary["n_samples"] == 8 and summary["estimator"] == "first-order"
    assert set(summary["ess_fraction"]) == {"min", "median", "max"}
    out = compare_panels([panel(cv, cv)], bins=8, n_boot=0, model_weights=mw)
    u = out["panels"][0]["model_uncertainty"]
    assert u["estimator"] == "first-order" and out["mean"]["model_uncertainty"]["estimator"] == "first-order"
    from cgdml.fes.histograms import bin_index
    idx = bin_index(cv, [np.linspace(-np.pi, np.pi, 9)] * 2)
    h = np.bincount(idx, minlength=64).astype(float)
    assert h.min() > 200
    mean = np.stack([np.bincount(idx, weights=e, minlength=64) for e in E / KT]) / h
    want = np.std(mean - (mean @ (h / h.sum()))[:, None], axis=0, ddof=1)
    np.testing.assert_allclose(as_grid(u["bins"]["model_std"]).ravel(), want, rtol=0.02, atol=1e-4)
    # the bin means' noise: 5 kT / sqrt(frames in the bin), not the 30 kT constants, not a collapse
    assert np.median(want * np.sqrt(h)) == pytest.approx(5.0, rel=0.2)
    assert all(np.isfinite(u["band"][k]["model_std"]) and u["band"][k]["model_std"] > 0 for k in ("fes_rmse", "js"))
    bare = ModelWeights(sample_weights(E, KT), KT)
    np.testing.assert_allclose(as_grid(compare_panels([panel(cv, cv)], bins=8, n_boot=0, model_weights=bare)
                                       ["panels"][0]["model_uncertainty"]["bins"]["model_std"]),
                               as_grid(u["bins"]["model_std"]), atol=2e-4)


def test_first_order_band_ignores_a_constant_in_the_deviations():
    """An energy sample is defined up to a constant: adding c_s to dE_s changes neither estimator's band, also
    when the reference populates bins the model never visits (they enter the alignment)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(50_000)
    edges = np.linspace(-6, 6, 49)
    idx = np.searchsorted(edges, x, side="right") - 1
    idx[(x < -6) | (x >= 6)] = -1
    ref = np.full(48, 50.0)                               # flat: the model misses the outer bins
    E = KT * rng.normal(0.0, 0.3, (10, 1)) * x[None] ** 2
    assert (np.bincount(idx[idx >= 0], minlength=48) == 0).sum() > 10
    for est in ("weights", "energies"):
        a, b = ((model_band(idx, sample_weights(e, KT), [48], h_ref=ref, n_boot=0) if est == "weights" else
                 model_band(idx, None, [48], h_ref=ref, n_boot=0, energies=e / KT))
                for e in (E, E + KT * rng.normal(0.0, 50.0, (10, 1))))
        np.testing.assert_allclose(as_grid(a[0]["bins"]["model_std"]), as_grid(b[0]["bins"]["model_std"]),
                                   atol=2e-4, equal_nan=True)
        for k in ("fes_rmse", "js"):
            np.testing.assert_allclose(a[1][k], b[1][k], rtol=1e-6)


def test_first_order_equals_reweighting_for_small_deviations():
    """Frames x ~ N(0, 1), samples dE_s = kT b_s x with small b_s: the first-order per-bin spread is exactly
    std(b) |xbar_b - sum_b w(b) xbar_b| (linear response), and the reweighted one agrees with it to O(b^2); so do
    the metrics' spreads."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal(200_000)
    edges = np.linspace(-3, 3, 25)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, -1, 24)
    idx[(x < -3) | (x >= 3)] = -1
    ref = np.bincount(idx[idx >= 0], minlength=24).astype(float)[::-1].copy()   # a skewed reference
    bs = rng.normal(0.0, 0.02, 24)
    E = KT * bs[:, None] * x[None]
    rw, m_rw = model_band(idx, sample_weights(E, KT), [24], h_ref=ref, n_boot=0)
    fo, m_fo = model_band(idx, None, [24], h_ref=ref, n_boot=0, energies=E / KT)
    assert rw["estimator"] == "reweighted" and fo["estimator"] == "first-order"
    counts = np.bincount(idx[idx >= 0], minlength=24)
    xbar = np.bincount(idx[idx >= 0], weights=x[idx >= 0], minlength=24) / counts
    want = np.std(bs, ddof=1) * np.abs(xbar - (ref / ref.sum()) @ xbar)
    np.testing.assert_allclose(as_grid(fo["bins"]["model_std"]), want, atol=1e-4)
    pop = counts > 500
    np.testing.assert_allclose(as_grid(rw["bins"]["model_std"])[pop], as_grid(fo["bins"]["model_std"])[pop],
                               rtol=0.03, atol=3e-4)
    for k in ("fes_rmse", "js"):
        np.testing.assert_allclose(m_fo[k], m_rw[k], rtol=0.05)
        assert fo["metrics"][k]["model_std"] == pytest.approx(rw["metrics"][k]["model_std"], rel=0.05)
    assert fo["coverage"]["n_bins"] == rw["coverage"]["n_bins"]
    assert fo["bins"]["free_energy"] == rw["bins"]["free_energy"]


def test_first_order_is_exact_for_deviations_constant_in_each_bin():
    """dE_s(x) = kT c_s(b(x)), several kT from bin to bin: exact reweighting moves bin b by c_s(b) (aligned), and
    the first-order landscape and histograms are the same, whatever the size; the ESS has collapsed."""
    rng = np.random.default_rng(11)
    n_bins = 10
    idx = rng.integers(0, n_bins, 100_000)
    idx[:500] = -1                                           # some frames outside the range
    c = rng.normal(0.0, 3.0, (6, n_bins))
    E = KT * np.where(idx >= 0, c[:, np.clip(idx, 0, None)], rng.normal(0.0, 3.0, (6, len(idx))))
    W = sample_weights(E, KT)
    assert effective_sample_size(W).min() / len(idx) < 0.1
    shift, H_fo = first_order_counts(idx, E / KT, n_bins)
    np.testing.assert_allclose(shift - shift[:, :1], c - c[:, :1], atol=1e-9)
    from cgdml.fes.reweight import reweighted_counts
    np.testing.assert_allclose(H_fo, reweighted_counts(idx, W, n_bins), rtol=1e-9)
    h = np.bincount(idx[idx >= 0], minlength=n_bins).astype(float)
    rw, m_rw = model_band(idx, W, [n_bins], h_ref=h, n_boot=0)
    fo, m_fo = model_band(idx, None, [n_bins], h_ref=h, n_boot=0, energies=E / KT)
    align = h / h.sum()
    F0 = aligned_free_energy(h, h.sum(), align)
    exact = F0 + c - (c @ align)[:, None]                    # analytic: -ln(h e^-c) aligned
    np.testing.assert_allclose(as_grid(fo["bins"]["model_std"]), np.std(exact, axis=0, ddof=1), atol=1e-4)
    np.testing.assert_allclose(as_grid(fo["bins"]["model_std"]), as_grid(rw["bins"]["model_std"]), atol=1e-4)
    for k in ("fes_rmse", "js"):
        np.testing.assert_allclose(m_fo[k], m_rw[k], rtol=1e-9)


def test_compare_landscapes_with_a_model(toy, tmp_path):
    ds, model, xyz = toy
    report = compare_landscapes(xyz, ds, model=model, n_boot=10, block=100, plot=tmp_path / "f.png")
    rw = report["reweighting"]
    assert rw["n_samples"] == 12 and rw["kT"] == pytest.approx(KT) and rw["n_frames"] == len(xyz)
    assert not rw["ess_too_small"] and report["model"] is None
    assert report["model_uncertainty"] == report["panels"][0]["model_uncertainty"]    # a single landscape
    assert "band" in report["model_uncertainty"] and "model_uncertainty" in report["mean"]
    assert (tmp_path / "f.png").stat().st_size > 20000
    assert report["reweighting"]["estimator"] == "reweighted" == report["model_uncertainty"]["estimator"]
    # forced first order with the ESS intact: a band of the same size (the deviations are small), no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forced = compare_landscapes(xyz, ds, model=model, n_boot=10, block=100, estimator="first-order")
    fu, ru = forced["model_uncertainty"], report["model_uncertainty"]
    assert fu["estimator"] == "first-order" and forced["reweighting"]["estimator"] == "first-order"
    ok = as_grid(ru["bins"]["model_std"]) > 0.01
    np.testing.assert_allclose(np.median(as_grid(fu["bins"]["model_std"])[ok] / as_grid(ru["bins"]["model_std"])[ok]),
                               1.0, rtol=0.1)
    with pytest.raises(CgdmlError, match="estimator must be one of"):
        compare_landscapes(xyz, ds, model=model, estimator="second-order")
    # a large posterior scale: the weights collapse; one warning, and a first-order band instead of none
    scale = 300.0
    big = ForcePosterior(**{**vars_of(model.uncertainty), "sample_coefficients":
                            scale * model.uncertainty.sample_coefficients})
    loud = CGModel(model.gdml, model.prior, model.system, model.train_coords_sample)
    loud.uncertainty = big
    with pytest.warns(UserWarning) as caught:
        report = compare_landscapes(xyz, ds, model=loud, n_boot=0)
    lines = [str(w.message) for w in caught if "effective sample size" in str(w.message)]
    assert len(lines) == 1 and "first order in the model's energy uncertainty" in lines[0]
    assert report["reweighting"]["ess_too_small"] and report["reweighting"]["estimator"] == "first-order"
    assert "model_uncertainty_undefined" not in report and report["model_uncertainty"]["estimator"] == "first-order"
    assert "coverage" in report["model_uncertainty"] and "band" in report["model_uncertainty"]
    # the first-order shifts are linear in the deviations: the per-bin spread is the small one times the scale
    loud_std = as_grid(report["model_uncertainty"]["bins"]["model_std"])
    np.testing.assert_allclose(loud_std[ok], scale * as_grid(fu["bins"]["model_std"])[ok], rtol=1e-3,
                               atol=scale * 1e-4)       # the report rounds to 1e-4
    # without a reference: per-bin spreads only
    report = compare_landscapes(xyz, None, topology=ds.cg_topology, model=model, n_boot=10, block=100,
                                plot=tmp_path / "g.png")
    u = report["panels"][0]["model_uncertainty"]
    assert set(u) == {"n_samples", "sampling", "estimator", "bins"} and "difference" not in u["bins"]


def vars_of(post):
    return dict(inducing_descriptors=post.inducing_descriptors, inducing_jacobians=post.inducing_jacobians,
                sigma=post.sigma, quads=post.quads, chiral_scale=post.chiral_scale, n_beads=post.n_beads,
                lam=post.lam, s2=post.s2, factor=post.factor, sample_coefficients=post.sample_coefficients)


def write_files(tmp_path, toy, with_posterior):
    ds, model, xyz = toy
    traj, ref, path = tmp_path / "t.h5", tmp_path / "ref.npz", tmp_path / "model.npz"
    md.Trajectory(xyz.astype(np.float32), ds.cg_topology.to_mdtraj()).save(str(traj))
    ds.save(ref)
    plain = CGModel(model.gdml, model.prior, model.system, model.train_coords_sample)
    if with_posterior:
        plain.uncertainty = model.uncertainty
    plain.save(path)
    return traj, ref, path


def test_cli_model_without_posterior_says_so_in_one_line(toy, tmp_path, capsys):
    ds, model, xyz = toy
    traj, ref, path = write_files(tmp_path, toy, False)
    if getattr(CGModel.load(path), "uncertainty", None) is not None:
        pytest.skip("this cgdml saves a posterior with every model")
    js = tmp_path / "m.json"
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(traj), "--reference", str(ref), "--model", str(path), "-o", str(tmp_path / "f.png"),
                       "--json", str(js), "--n-boot", "5", "--block", "100"])
    assert exc.value.code == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "posterior" in line]
    assert len(err) == 1 and err[0].startswith("warning: ") and "no force posterior" in err[0]
    report = json.loads(js.read_text())
    assert report["model"] == str(path) and "no force posterior" in report["model_uncertainty_undefined"]
    assert "reweighting" not in report and "model_uncertainty" not in report["panels"][0]


def test_cli_model_option(toy, tmp_path, capsys, monkeypatch):
    ds, model, xyz = toy
    traj, ref, path = write_files(tmp_path, toy, True)
    if getattr(CGModel.load(path), "uncertainty", None) is None:    # before models carry their posterior
        load = CGModel.load

        def with_posterior(p):
            m = load(p)
            m.uncertainty = model.uncertainty
            return m

        monkeypatch.setattr(CGModel, "load", staticmethod(with_posterior))
    js, png = tmp_path / "m.json", tmp_path / "f.png"
    assert main([str(traj), "--reference", str(ref), "--model", str(path), "-o", str(png), "--json", str(js),
                 "--n-boot", "8", "--block", "100", "--temperature", "330", "--bins", "8"]) == 0
    report = json.loads(js.read_text())
    assert report["model"] == str(path) and report["reweighting"]["kT"] == pytest.approx(thermal_energy(330.0))
    assert "coverage" in report["model_uncertainty"] and png.stat().st_size > 20000
    out = capsys.readouterr().out
    assert "posterior spread over 12 samples" in out and "effective sample size" in out
    assert "free energy std per bin" in out and "reference inside the band" in out
    bins = report["model_uncertainty"]["bins"]
    assert np.nanmax(as_grid(bins["model_std"])) > 0 and bins["shape"] == [8, 8]
    assert report["model_uncertainty"]["estimator"] == "reweighted" and "(first order)" not in out
    # forcing the first-order band (a diagnostic): said in the output and the JSON
    assert main([str(traj), "--reference", str(ref), "--model", str(path), "-o", str(png), "--json", str(js),
                 "--n-boot", "8", "--block", "100", "--bins", "8", "--model-estimator", "first-order"]) == 0
    out = capsys.readouterr().out
    assert "model band: first order in the energy deviations of 12 posterior samples" in out
    assert "posterior spread (first order) over 12 samples" in out
    assert json.loads(js.read_text())["model_uncertainty"]["estimator"] == "first-order"
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(traj), "--reference", str(ref), "-o", str(png), "--model-estimator", "first-order"])
    assert exc.value.code == 2 and "--model-estimator applies only with --model" in capsys.readouterr().err
    # without a reference: the per-bin band alone, printed and saved
    assert main([str(traj), "--model", str(path), "-o", str(png), "--json", str(js), "--n-boot", "8",
                 "--block", "100"]) == 0
    out = capsys.readouterr().out
    assert "free energy std per bin" in out and "reference inside" not in out
    u = json.loads(js.read_text())["panels"][0]["model_uncertainty"]
    assert set(u["bins"]) == {"shape", "free_energy", "model_std", "sampling_std", "std"}
    np.testing.assert_allclose(as_grid(u["bins"]["std"]), np.hypot(as_grid(u["bins"]["model_std"]),
                                                                   as_grid(u["bins"]["sampling_std"])), atol=2e-4)
    # the bead counts must agree; --temperature needs --model; one-line errors
    other = CGDataset.from_arrays(frames(50, 3)[:, :4], np.zeros((50, 4, 3)), temperature=T)
    with pytest.raises(CgdmlError, match="model has 5 beads, trajectories have 4"):
        compare_landscapes(other.coords, other, model=path)
    with pytest.raises(CgdmlError, match="no such model file"):
        compare_landscapes(xyz, ds, model=tmp_path / "missing.npz")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(traj), "--reference", str(ref), "-o", str(tmp_path / "g.png"), "--temperature", "300"])
    assert exc.value.code == 2 and "--temperature applies only with --model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ jackknife refits
def test_jackknife_std_of_a_mean_is_its_standard_error():
    """Delete-one (K = n) jackknife of the sample mean: exactly the textbook standard error s / sqrt(n); with
    blocks, the same within the block means' spread."""
    x = np.random.default_rng(8).normal(3.0, 2.0, 400)
    loo = (x.sum() - x) / (len(x) - 1)
    assert jackknife_std(loo) == pytest.approx(np.std(x, ddof=1) / np.sqrt(len(x)), rel=1e-12)
    blocks = np.array_split(x, 8)
    dropped = np.array([(x.sum() - b.sum()) / (len(x) - len(b)) for b in blocks])
    means = np.array([b.mean() for b in blocks])
    assert jackknife_std(dropped) == pytest.approx(np.std(means, ddof=1) / np.sqrt(8), rel=1e-12)


def test_refits_add_their_jackknife_variance_per_bin():
    """Refit energy differences kT c_k x on frames x ~ N(0, 1): each refit's aligned free energy shifts by
    c_k (xbar_b - sum_b w(b) xbar_b), so the refit std per bin is the jackknife std of c_k times that, and the
    model std is its quadrature sum with the posterior samples'."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(300_000)
    edges = np.linspace(-3, 3, 25)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, -1, 24)
    idx[(x < -3) | (x >= 3)] = -1
    bs, cs = rng.normal(0.0, 0.1, 30), np.array([0.05, -0.1, 0.12, 0.0])
    W = sample_weights(KT * bs[:, None] * x[None], KT)
    Wk = sample_weights(KT * cs[:, None] * x[None], KT)
    alone, _ = model_band(idx, W, [24], n_boot=0)
    entry, _ = model_band(idx, W, [24], n_boot=0, refit_weights=Wk)
    assert entry["n_refits"] == 4
    counts = np.bincount(idx[idx >= 0], minlength=24)
    xbar = np.bincount(idx[idx >= 0], weights=x[idx >= 0], minlength=24) / np.maximum(counts, 1)
    lever = np.abs(xbar - (counts / counts.sum()) @ xbar)
    pop = counts > 200
    got = as_grid(entry["bins"]["refit_std"])
    np.testing.assert_allclose(got[pop], (jackknife_std(cs) * lever)[pop], rtol=0.03, atol=2e-3)
    post = as_grid(entry["bins"]["posterior_std"])
    np.testing.assert_allclose(post[pop], as_grid(alone["bins"]["model_std"])[pop], atol=1e-4)
    np.testing.assert_allclose(as_grid(entry["bins"]["model_std"])[pop], np.hypot(post, got)[pop], atol=2e-4)


def test_refits_widen_the_band_and_coverage(toy, tmp_path):
    """Refits identical to the model add nothing; refits that differ widen the band (coverage can only rise), and
    keep the band without them as inside_without_refits; a refit whose weights collapse makes the whole band
    (samples and refits) first order, with a warning (it used to withhold the band)."""
    ds, model, xyz = toy
    plain = compare_landscapes(xyz, ds, model=model, n_boot=10, block=100, bins=8)
    same = compare_landscapes(xyz, ds, model=model, n_boot=10, block=100, bins=8, refits=[model, model, model])
    cu, cs = plain["model_uncertainty"]["coverage"], same["model_uncertainty"]["coverage"]
    assert same["reweighting"]["n_refits"] == 3 and same["model_uncertainty"]["n_refits"] == 3
    assert cs["inside"] == cu["inside"] == cs["inside_without_refits"]
    assert np.nanmax(as_grid(same["model_uncertainty"]["bins"]["refit_std"])) == 0.0

    def shifted(c):
        g = model.gdml
        m = CGModel(GDMLModel(g.train_descriptors, (1 + c) * g.coefficients, g.sigma, g.quads, g.chiral_scale, 0.0,
                              g.n_beads), model.prior, model.system,
                    model.train_coords_sample)
        m.uncertainty = model.uncertainty
        return m

    wide = compare_landscapes(xyz, ds, model=model, n_boot=10, block=100, bins=8,
                              refits=[shifted(c) for c in (0.3, 0.6)])
    u = wide["model_uncertainty"]
    assert np.nanmedian(as_grid(u["bins"]["refit_std"])) > 0
    assert u["coverage"]["inside"] >= u["coverage"]["inside_without_refits"] == cu["inside"]
    for k in ("fes_rmse", "js"):
        assert u["metrics"][k]["model_std"] == pytest.approx(np.hypot(u["metrics"][k]["posterior_std"],
                                                                      u["metrics"][k]["refit_std"]))
        assert u["band"][k]["model_std"] > plain["model_uncertainty"]["band"][k]["model_std"]
    with pytest.warns(UserWarning, match="refit reweighting collapsed.*first order"):
        rep = compare_landscapes(xyz, ds, model=model, n_boot=0, refits=[shifted(c) for c in (1e3, -1e3)])
    u = rep["model_uncertainty"]
    assert rep["reweighting"]["low_ess_refits"] and u["estimator"] == "first-order" and u["n_refits"] == 2
    assert np.nanmedian(as_grid(u["bins"]["refit_std"])) > np.nanmedian(as_grid(u["bins"]["posterior_std"]))
    with pytest.raises(CgdmlError, match="at least 2 refits"):
        compare_landscapes(xyz, ds, model=model, refits=[model])
    with pytest.raises(CgdmlError, match="need the model"):
        compare_landscapes(xyz, ds, refits=[model, model])


def test_cli_refits_option(toy, tmp_path, capsys):
    ds, model, xyz = toy
    traj, ref, path = write_files(tmp_path, toy, True)
    js = tmp_path / "m.json"
    args = [str(traj), "--reference", str(ref), "--model", str(path), "-o", str(tmp_path / "f.png"), "--json",
            str(js), "--n-boot", "5", "--block", "100", "--bins", "8"]
    assert main(args + ["--refits", str(path), str(path)]) == 0
    assert "and 2 jackknife refits" in capsys.readouterr().out
    u = json.loads(js.read_text())["model_uncertainty"]
    assert u["n_refits"] == 2 and "inside_without_refits" in u["coverage"]
    with pytest.raises(SystemExit) as exc:
        run_cli(main, args[:3] + ["-o", str(tmp_path / "g.png"), "--refits", str(path), str(path)])
    assert exc.value.code == 2 and "--refits applies only with --model" in capsys.readouterr().err
