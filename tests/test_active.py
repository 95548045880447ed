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


def _sample(bias, n_chains=20000, n_steps=300, step=0.8, seed=0):
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


# ---------------------------------------------------------------- datasets that know which frames are Boltzmann samples
@pytest.fixture(scope="module")
def ala2():
    from cgdml.mapping import load_default_cg_dataset

    return load_default_cg_dataset(stride=10)


def _with_biased_frames(ds, seed=0):
    """``ds`` joined with 400 restrained-like frames (weight 0), all in the phi > 0 corner, with noise."""
    from cgdml.data import CGDataset
    from cgdml.geometry import dihedral

    rng = np.random.default_rng(seed)
    phi = dihedral(ds.coords, ds.cg_topology.backbone_quads()[0])[0]
    pool = np.flatnonzero(phi < -2.0)           # one corner of the (phi, psi) plane
    pick = rng.choice(pool, 400)
    coords = ds.coords[pick] + rng.normal(0, 0.003, size=(400, ds.n_beads, 3))
    forces = ds.forces[pick] + rng.normal(0, 50.0, size=(400, ds.n_beads, 3))
    extra = CGDataset(coords, forces, ds.system, {"restrained": True}, np.zeros(400))
    return CGDataset.concatenate([ds, extra])


def test_weights_are_saved_checked_on_load_and_joined(ala2, tmp_path):
    from cgdml._io import CgdmlError
    from cgdml.data import CGDataset

    assert np.all(ala2.weights == 1) and not ala2.biased.any()
    joined = _with_biased_frames(ala2)
    assert joined.n_frames == ala2.n_frames + 400 and joined.biased.sum() == 400
    assert joined.info["joined"][1] == {"restrained": True}
    joined.save(tmp_path / "j.npz")
    back = CGDataset.load(tmp_path / "j.npz")
    assert np.array_equal(back.weights, joined.weights)
    assert int(np.load(tmp_path / "j.npz")["format_version"]) == 2
    ala2.save(tmp_path / "plain.npz")                       # all ones: written as before (no weights field)
    z = dict(np.load(tmp_path / "plain.npz"))
    assert "weights" not in z and int(z["format_version"]) == 1
    assert np.all(CGDataset.load(tmp_path / "plain.npz").weights == 1)
    assert np.array_equal(back.subset(slice(-5, None)).weights, np.zeros(5))
    for bad, msg in ((np.full(ala2.n_frames, np.nan), "NaN"), (-np.ones(ala2.n_frames), ">= 0"),
                     (np.ones(3), "one number per frame"), (np.zeros(ala2.n_frames), "every frame has weight 0")):
        np.savez(tmp_path / "bad.npz", **dict(z, weights=bad, format_version=np.int64(2)))
        with pytest.raises(CgdmlError, match=msg) as err:
            CGDataset.load(tmp_path / "bad.npz")
        assert "bad.npz" in str(err.value) and "\n" not in str(err.value)
    other = CGDataset(ala2.coords, ala2.forces, ala2.system.__class__(ala2.system.topology, ala2.masses, 350.0))
    with pytest.raises(CgdmlError, match="dataset 1 differs from dataset 0 in its temperature"):
        CGDataset.concatenate([ala2, other])


def test_biased_frames_do_not_change_populations(ala2):
    """Prior tables, k-means strata, start frames, arc populations and landscape floors read only weight > 0."""
    from cgdml.basins import sampled_arcs
    from cgdml.fes import compare_landscapes
    from cgdml.prior import CGPrior
    from cgdml.sampling import make_strata

    joined = _with_biased_frames(ala2)
    n = ala2.n_frames
    for kw in (dict(bonded="tabulated", dihedrals=True), dict(bonded="auto", dihedrals=False)):
        plain = CGPrior(**kw).fit(ala2.coords, ala2.temperature, ala2.cg_topology)
        weighted = CGPrior(**kw).fit(joined.coords, joined.temperature, joined.cg_topology, weights=joined.weights)
        blind = CGPrior(**kw).fit(joined.coords, joined.temperature, joined.cg_topology)   # what it guards against
        for name in ("bond_r0_", "bond_k_", "angle_theta0_", "angle_k_", "bond_splines_", "angle_splines_",
                     "dihedral_splines_", "bond_tabulated_", "angle_tabulated_"):
            assert np.array_equal(getattr(plain, name), getattr(weighted, name)), name
        assert not np.allclose(plain.angle_theta0_, blind.angle_theta0_, rtol=0, atol=1e-5)
    labels, method = make_strata(ala2, "kmeans", n_strata=12)
    joined_labels, _ = make_strata(joined, "kmeans", n_strata=12)
    assert method == "kmeans" and np.array_equal(labels, joined_labels[:n])
    grid, grid_joined = make_strata(ala2)[0], make_strata(joined)[0][:n]        # the (phi, psi) grid: same cells
    assert len(np.unique(grid)) == np.unique(np.stack([grid, grid_joined]), axis=1).shape[1] == len(np.unique(grid_joined))
    # arcs: where any frame is; populations: the weighted frames
    rng = np.random.default_rng(1)
    angles = np.concatenate([rng.normal(-1.5, 0.3, 900), rng.normal(1.0, 0.2, 100)])
    biased = rng.normal(1.0, 0.05, 500)                  # inside the second arc
    arcs, counts = sampled_arcs(angles)
    arcs_w, counts_w = sampled_arcs(np.concatenate([angles, biased]), weights=np.r_[np.ones(1000), np.zeros(500)])
    assert len(arcs) == 2 and np.allclose(arcs, arcs_w) and np.allclose(counts, counts_w)
    # landscapes: the reference's histograms and split-half floor are those of its Boltzmann frames
    traj = ala2.coords[::3]
    a = compare_landscapes(traj, ala2, topology=ala2.cg_topology, n_boot=0)
    b = compare_landscapes(traj, joined, topology=joined.cg_topology, n_boot=0)
    assert a["noise_floor"] == b["noise_floor"] and a["metrics"] == b["metrics"]
    assert b["n_ref_frames"] == n


def test_weighted_prior_equals_repeated_frames(ala2):
    """A frame of weight 2 counts as two frames (weighted means, variances and histograms)."""
    from cgdml.prior import CGPrior

    w = np.ones(ala2.n_frames)
    w[:300] = 2.0
    repeated = np.concatenate([ala2.coords, ala2.coords[:300]])
    a = CGPrior(dihedrals=True, bonded="harmonic").fit(ala2.coords, ala2.temperature, ala2.cg_topology, weights=w)
    b = CGPrior(dihedrals=True, bonded="harmonic").fit(repeated, ala2.temperature, ala2.cg_topology)
    for name in ("bond_r0_", "bond_k_", "angle_theta0_", "angle_k_", "dihedral_splines_"):
        assert np.allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9), name


# ---------------------------------------------------------------- restrained labelling, choice and the loop (OpenMM)
FAST_LABELS = dict(n_frames=2, equilibrate_ps=0.04, save_every_ps=0.02, minimise_steps=100)
FAST_FIT = dict(method="single", n_frames=60, balance_basins=False, progress=False)
FAST_SIM = dict(replicas=3, steps=200, save_every=20)


@pytest.fixture(scope="module")
def allatom():
    pytest.importorskip("openmm")
    from cgdml.io.shipped import default_dataset_paths
    from cgdml.learn import allatom_map, load_allatom_reference, map_reference

    paths = default_dataset_paths()
    ref = load_allatom_reference(paths.topology, paths.trajectory)
    cgmap = allatom_map(ref, "ala2-5")
    return ref, cgmap, map_reference(ref, cgmap, slice(0, 300))


def test_restrained_labels_are_the_unrestrained_mapped_forces(allatom):
    import openmm
    from openmm import unit

    from cgdml._io import CgdmlError
    from cgdml.learn import RestrainedLabeller, superposed_rmsd
    from cgdml.learn.label import superpose

    ref, cgmap, ds = allatom
    rng = np.random.default_rng(0)
    targets = cgmap.map_coords(ref.positions[[5000, 12000]])
    # a rigid motion of a target changes neither the start frame nor the superposed RMSD
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    moved = targets[0] @ rot.T + np.array([1.0, -2.0, 0.5])
    images = cgmap.map_coords(ref.positions[:300])
    assert np.allclose(superposed_rmsd(images, moved), superposed_rmsd(images, targets[0]), atol=1e-9)
    assert np.allclose(superpose(moved, targets[0]), targets[0], atol=1e-9)
    labeller = RestrainedLabeller(ref, cgmap, ds.system, **FAST_LABELS, k_restraint=5000.0, seed=3)
    chunk, record = labeller.label(np.stack([moved, targets[1]]), ref.positions[:300], round_index=4)
    assert chunk.n_frames == 4 and np.all(chunk.weights == 0) and chunk.bead_names == ds.bead_names
    assert record["allatom_ns"] == pytest.approx(2 * labeller.ns_per_configuration)
    # the beads sit at the (superposed) target within the restraint's thermal spread (sqrt(3 kT / k) = 0.04 nm)
    for i, target in enumerate((targets[0], targets[1])):
        assert superposed_rmsd(chunk.coords[2 * i:2 * i + 2], target).max() < 0.06
    # the label is the mapped force of the system without the restraint
    plain = openmm.Context(ref.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    plain.setPositions(record["final_positions"][1] * unit.nanometer)
    f = plain.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    mapped = cgmap.map_forces(np.asarray(f)[None])[0]
    assert np.abs(mapped - chunk.forces[-1]).max() < 1e-3 * np.abs(mapped).max()
    stiff = RestrainedLabeller(ref, cgmap, ds.system, **dict(FAST_LABELS, minimise_steps=0), k_restraint=1e13,
                               timestep_fs=4.0)
    with pytest.raises(CgdmlError, match="round 7, configuration 0: the restrained all-atom run blew up") as err:
        stiff.label(targets[1:] + 0.3, ref.positions[:300], round_index=7)
    assert "\n" not in str(err.value)


def test_choose_configurations_takes_uncertain_and_spread_frames():
    from types import SimpleNamespace

    from cgdml.learn import choose_configurations

    rng = np.random.default_rng(0)
    base = np.array([[0, 0, 0], [0.15, 0, 0], [0.2, 0.14, 0], [0.35, 0.15, 0.05]], dtype=float)
    frames = base + rng.normal(0, 0.01, size=(300, 4, 3))
    frames[:100, 3] += 0.3                     # region A: most uncertain
    frames[100:150, 3] -= 0.3                  # region B: uncertain, a little less
    u = np.r_[np.full(100, 10.0), np.full(50, 9.0), np.ones(150)] + rng.random(300) * 0.1
    model = SimpleNamespace(force_uncertainty=lambda R: None, gdml=SimpleNamespace(quads=np.zeros((0, 4), int),
                                                                                   chiral_scale=1.0))
    index, _ = choose_configurations(model, frames, 4, top_fraction=0.5, uncertainty=u)
    assert len(index) == 4 and index[0] == np.argmax(u) and np.all(index < 150)
    assert (index < 100).any() and ((index >= 100) & (index < 150)).any()   # both regions, not 4 from A


def test_active_learning_loop_resumes_after_a_kill(allatom, tmp_path, monkeypatch):
    import json

    from cgdml import fit_cg_model
    from cgdml.learn import RestrainedLabeller, active_learn

    ref, cgmap, ds = allatom
    fits = []

    def fit(data):
        fits.append(data.n_frames)
        return fit_cg_model(data, **FAST_FIT)

    labeller = RestrainedLabeller(ref, cgmap, ds.system, **FAST_LABELS)
    budget = 2.5 * 2 * labeller.ns_per_configuration     # two rounds of two, then half a round
    kw = dict(budget_ns=budget, per_round=2, fit=fit, simulate=FAST_SIM, labeller=FAST_LABELS, progress=False,
              reference=ds)
    real_label = RestrainedLabeller.label

    def killed(self, targets, pool=None, *, round_index=0, progress=False):
        if round_index == 1:
            raise KeyboardInterrupt("killed in round 1")
        return real_label(self, targets, pool, round_index=round_index, progress=progress)

    monkeypatch.setattr(RestrainedLabeller, "label", killed)
    with pytest.raises(KeyboardInterrupt):
        active_learn(ref, cgmap, ds, tmp_path / "run", **kw)
    assert fits == [300, 304]
    round0 = tmp_path / "run" / "round_000"
    stamp = {p.name: p.stat().st_mtime_ns for p in round0.iterdir()}
    assert (round0 / "round.json").exists() and not (tmp_path / "run" / "round_001" / "round.json").exists()
    assert (tmp_path / "run" / "round_001" / "selected.npz").exists()
    monkeypatch.setattr(RestrainedLabeller, "label", real_label)
    result = active_learn(ref, cgmap, ds, tmp_path / "run", **kw)
    # round 0 and round 1's fit, simulation and choice were not redone
    assert fits == [300, 304, 308, 310]
    assert {p.name: p.stat().st_mtime_ns for p in round0.iterdir()} == stamp
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r.get("n_labelled", 0) for r in rounds] == [2, 2, 1, 0]
    assert rounds[-1]["stopped"].startswith("the all-atom budget") and rounds[-1]["allatom_ns_total"] <= budget
    assert rounds[-1]["n_restrained"] == 5 * FAST_LABELS["n_frames"]
    assert all("js" in r and set(r["uncertainty_quantiles"]) == {"0.5", "0.9", "0.99"} for r in rounds)
    assert json.loads((tmp_path / "run" / "log.json").read_text())["final_model"].endswith("round_003/model.npz")
    again = active_learn(ref, cgmap, ds, tmp_path / "run", **kw)            # a finished run is not redone
    assert len(fits) == 4 and again["rounds"] == rounds


def test_active_learning_bad_input(allatom, tmp_path):
    from cgdml._io import CgdmlError
    from cgdml.learn import active_learn, allatom_map

    ref, cgmap, ds = allatom
    kw = dict(per_round=1, fit=FAST_FIT, simulate=FAST_SIM, labeller=FAST_LABELS, progress=False)
    for budget in (0, -1.0, float("nan"), "lots"):
        with pytest.raises(CgdmlError, match="budget must be a number of ns > 0"):
            active_learn(ref, cgmap, ds, tmp_path / "zero", budget_ns=budget, **kw)
    six = allatom_map(ref, "ala2-6")
    with pytest.raises(CgdmlError, match="the map does not fit the data"):
        active_learn(ref, six, ds, tmp_path / "six", budget_ns=1.0, **kw)
    from cgdml.mapping import CGMap, load_map_spec
    from cgdml.reference import build_peptide

    pytest.importorskip("PeptideBuilder")
    import mdtraj as md

    top, pos = build_peptide("AA")
    other = CGMap(load_map_spec("ala2-5")[0]).fit(md.Topology.from_openmm(top)).fit_force_map("aggregate")
    with pytest.raises(CgdmlError, match="atoms, the all-atom system has 22"):
        active_learn(ref, other, ds, tmp_path / "other", budget_ns=1.0, **kw)
    with pytest.raises(CgdmlError, match="round 0, configuration 0: the restrained all-atom run blew up") as err:
        active_learn(ref, cgmap, ds, tmp_path / "stiff", budget_ns=1.0,
                     **dict(kw, labeller=dict(FAST_LABELS, k_restraint=1e13, timestep_fs=4.0, minimise_steps=0)))
    assert "\n" not in str(err.value)
    kept = tmp_path / "stiff" / "round_000"
    assert (kept / "model.npz").exists() and (kept / "selected.npz").exists() and not (kept / "labels.npz").exists()


def test_learn_command_refuses_a_zero_budget(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cgdml.learn", "-o", str(tmp_path / "run"), "--budget-ns", "0",
                          "--start-ns", "0.1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    lines = [x for x in out.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "budget must be a number of ns > 0" in lines[0], out.stderr


def test_dihedral_uncertainty_is_the_posterior_spread_of_the_generalised_force(allatom):
    """dihedral_uncertainty equals the std over posterior samples of b . F computed by finite differences of the
    dihedral (b = grad phi / |grad phi|^2), and choose_configurations ranks by it with score='dihedral'."""
    from cgdml import fit_cg_model
    from cgdml.geometry import dihedral
    from cgdml.learn import choose_configurations, dihedral_uncertainty

    _, _, ds = allatom
    model = fit_cg_model(ds, **FAST_FIT)
    frames = ds.coords[::30]
    u = dihedral_uncertainty(model, frames)
    samples = model.uncertainty.sample_forces(frames)
    var = np.zeros(len(frames))
    quads = model.cg_topology.soft_dihedrals()
    h = 1e-6
    for quad in quads:
        grad = np.zeros((len(frames), 4, 3))
        for a in range(4):
            for c in range(3):
                step = np.zeros_like(frames)
                step[:, quad[a], c] = h
                grad[:, a, c] = (np.angle(np.exp(1j * (dihedral(frames + step, quad)[0]
                                                       - dihedral(frames - step, quad)[0])))) / (2 * h)
        b = grad / (grad ** 2).sum((1, 2))[:, None, None]
        var += np.einsum("snkc,nkc->sn", samples[:, :, quad], b).var(0)
    assert len(quads) == 2 and np.allclose(u, np.sqrt(var / len(quads)), rtol=1e-4)
    index, scores = choose_configurations(model, frames, 2, top_fraction=0.2, score="dihedral")
    assert np.allclose(scores, u) and index[0] == np.argmax(u)
