"""Integrator physics (Boltzmann sampling, equipartition, NVE energy, diffusion), checkpoint resume and blow-ups."""
import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.simulate import bond_blowup, simulate
from cgdml.units import kT as thermal_energy

T = 300.0
KT = thermal_energy(T)
H = 1.5 * KT          # double-well barrier height (kJ/mol), wells at x = +-1 nm
KY = 4.0 * KT         # harmonic stiffness in y and z (kJ/mol/nm^2): <y^2> = 0.25 nm^2


def double_well_forces(R):
    """U = H (x^2 - 1)^2 + KY (y^2 + z^2) / 2 for every bead; R (n, n_beads, 3) nm."""
    F = -KY * R
    x = R[..., 0]
    F[..., 0] = -4.0 * H * x * (x * x - 1.0)
    return F


def exact_x_probabilities(edges, kt):
    """Bin probabilities of x under exp(-H (x^2-1)^2 / kt), by fine quadrature."""
    fine = np.linspace(edges[0], edges[-1], 200001)
    dens = np.exp(-H * (fine**2 - 1.0) ** 2 / kt)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(fine))])
    cdf /= cdf[-1]
    return np.diff(np.interp(edges, fine, cdf))


def sample_start(n_rep, n_beads, seed=1):
    """Draws from the exact Boltzmann distribution (x by inverse CDF, y and z Gaussian); the second half of the
    replicas mirrors the first (antithetic), so the two wells start exactly equally populated."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(-2.5, 2.5, 5001)
    p = exact_x_probabilities(edges, KT)
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    x0 = rng.normal(0.0, np.sqrt(KT / KY), size=(n_rep, n_beads, 3))
    x0[..., 0] = np.interp(rng.random((n_rep, n_beads)), cdf, edges)
    half = n_rep // 2
    x0[n_rep - half:] = -x0[:half]
    return x0


def total_variation(abs_x, kt, edges):
    """Total variation distance between the histogram of |x| and its exact Boltzmann bin probabilities."""
    counts, _ = np.histogram(abs_x, bins=edges)
    exact = exact_x_probabilities(np.concatenate([-edges[::-1], edges[1:]]), kt)
    half = len(edges) - 1
    exact = exact[half:] + exact[:half][::-1]
    return 0.5 * np.abs(counts / counts.sum() - exact / exact.sum()).sum()


MASSES = np.array([1.0, 4.0])


@pytest.fixture(scope="module")
def runs():
    x0 = sample_start(2000, 2)
    common = dict(masses=MASSES, temperature=T, n_steps=3000, save_every=20, seed=3, progress=False)
    over = simulate(double_well_forces, x0, integrator="overdamped", friction=10.0, dt=0.01, **common)
    lang = simulate(double_well_forces, x0, integrator="langevin", friction=5.0, dt=0.02,
                    save_velocities=True, **common)
    return {"overdamped": over, "langevin": lang}


@pytest.mark.parametrize("integrator", ["overdamped", "langevin"])
def test_samples_boltzmann_double_well(runs, integrator):
    res = runs[integrator]
    assert res.alive.all()
    frames = res.frames[len(res.frames) // 3:].astype(np.float64)     # drop burn-in
    edges = np.linspace(0.0, 2.2, 23)                                  # |x|: the wells are mirror images
    for bead in range(2):                                              # light and heavy bead
        x = np.abs(frames[:, :, bead, 0].ravel())
        tv = total_variation(x, KT, edges)
        # measured TV ~0.004 against exp(-U/kT); 10% off in T gives ~0.02, 20% off ~0.045, T/2 (a missing
        # factor of 2 in the noise variance) ~0.17
        assert tv < 0.012, (integrator, bead, tv)
        for wrong in (0.8 * KT, 1.25 * KT, 0.5 * KT):
            assert total_variation(x, wrong, edges) > 0.03
        y2 = np.mean(frames[:, :, bead, 1:] ** 2)
        assert y2 == pytest.approx(KT / KY, rel=0.03), (integrator, bead)


def test_baoab_equipartition(runs):
    res = runs["langevin"]
    v = res.velocity_frames[len(res.frames) // 3:].astype(np.float64)
    for bead, m in enumerate(MASSES):
        kinetic_t = m * np.mean(v[:, :, bead] ** 2) / KT               # = T_kin / T, per bead
        assert kinetic_t == pytest.approx(1.0, abs=0.02), bead


def test_overdamped_free_diffusion_constant():
    """Free Brownian motion: MSD = 6 D t with D = kT / (m gamma), per bead mass."""
    x0 = np.zeros((2000, 2, 3))
    gamma, dt, n = 20.0, 0.01, 50
    res = simulate(lambda R: np.zeros_like(R), x0, masses=MASSES, temperature=T, dt=dt, n_steps=n, save_every=n,
                   integrator="overdamped", friction=gamma, progress=False)
    msd = np.mean(np.sum(res.frames[-1].astype(np.float64) ** 2, axis=-1), axis=0)
    expected = 6 * KT / (MASSES * gamma) * n * dt
    assert msd == pytest.approx(expected, rel=0.05)                  # 2000 samples of a chi^2_3: 2% noise


def test_baoab_zero_friction_conserves_energy():
    k, m, dt = 100.0, 2.0, 0.01                                        # omega dt = 0.07
    x0 = np.random.default_rng(0).normal(0, 0.2, size=(50, 1, 3))
    res = simulate(lambda R: -k * R, x0, masses=[m], temperature=T, dt=dt, n_steps=20000, save_every=10,
                   integrator="langevin", friction=0.0, save_velocities=True, progress=False)
    x = res.frames.astype(np.float64)
    v = res.velocity_frames.astype(np.float64)
    E = 0.5 * m * np.sum(v**2, axis=(2, 3)) + 0.5 * k * np.sum(x**2, axis=(2, 3))    # (n_saved, n_rep)
    rel = np.abs(E - E[0]) / E[0]
    assert rel.max() < 0.01                                            # shadow-energy oscillation ~ (omega dt)^2 / 4
    drift = np.abs(E[-200:].mean(axis=0) - E[:200].mean(axis=0)) / E[0]
    assert drift.max() < 1e-3                                          # no secular drift over ~225 periods


# ------------------------------------------------------------------------------- multiple time steps (r-RESPA)
def dw_fast(R):
    """The confining part of the double well: H x^4 + KY (y^2 + z^2) / 2 (plus H, a constant)."""
    F = -KY * R
    F[..., 0] = -4.0 * H * R[..., 0] ** 3
    return F


def dw_slow(R):
    """The barrier: -2 H x^2; dw_fast + dw_slow = double_well_forces."""
    F = np.zeros_like(R)
    F[..., 0] = 4.0 * H * R[..., 0]
    return F


def test_split_double_well_sums_to_the_whole():
    R = sample_start(10, 2)
    assert np.allclose(dw_fast(R) + dw_slow(R), double_well_forces(R))


def test_mts_baoab_samples_boltzmann_double_well():
    x0 = sample_start(2000, 2)
    calls = {"fast": 0, "slow": 0}

    def fast(R):
        calls["fast"] += 1
        return dw_fast(R)

    def slow(R):
        calls["slow"] += 1
        return dw_slow(R)

    res = simulate((fast, slow), x0, masses=MASSES, temperature=T, n_steps=3000, save_every=21, seed=3,
                   integrator="langevin", friction=5.0, dt=0.01, slow_every=3, save_velocities=True, progress=False)
    assert calls == {"fast": 3001, "slow": 1001}                       # slow once per outer step (+ the start)
    assert res.alive.all() and res.timings["slow_force_s"] > 0
    frames = res.frames[len(res.frames) // 3:].astype(np.float64)
    v = res.velocity_frames[len(res.frames) // 3:].astype(np.float64)
    edges = np.linspace(0.0, 2.2, 23)
    for bead, m in enumerate(MASSES):
        x = np.abs(frames[:, :, bead, 0].ravel())
        tv = total_variation(x, KT, edges)
        assert tv < 0.012, (bead, tv)                                  # as plain BAOAB (wrong T: > 0.03)
        assert total_variation(x, 0.8 * KT, edges) > 0.03
        assert np.mean(frames[:, :, bead, 1:] ** 2) == pytest.approx(KT / KY, rel=0.03), bead
        assert m * np.mean(v[:, :, bead] ** 2) / KT == pytest.approx(1.0, abs=0.02), bead


def test_mts_slow_every_1_is_baoab():
    """A pair with slow_every = 1 is BAOAB with the summed force (up to the order of the additions)."""
    x0 = sample_start(6, 2, seed=2)
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=200, save_every=10, integrator="langevin",
              friction=1.0, seed=4, progress=False)
    a = simulate(double_well_forces, x0, **kw)
    b = simulate((dw_fast, dw_slow), x0, **kw)
    assert np.allclose(a.frames, b.frames, atol=1e-5)


def test_mts_baoab_zero_friction_conserves_energy():
    """r-RESPA is symplectic: a stiff fast spring (omega dt = 0.1) and a soft anharmonic slow force, k = 5."""
    kf, ks, m, dt = 200.0, 4.0, 2.0, 0.01                                # omega_fast = 10/ps, outer step 0.05 ps

    def slow(R):
        return -ks * R - 4.0 * R**3

    x0 = np.random.default_rng(0).normal(0, 0.2, size=(50, 1, 3))
    res = simulate((lambda R: -kf * R, slow), x0, masses=[m], temperature=T, dt=dt, n_steps=20000, save_every=10,
                   integrator="langevin", friction=0.0, save_velocities=True, progress=False, slow_every=5)
    x = res.frames.astype(np.float64)
    v = res.velocity_frames.astype(np.float64)
    E = (0.5 * m * np.sum(v**2, axis=(2, 3)) + 0.5 * (kf + ks) * np.sum(x**2, axis=(2, 3))
         + np.sum(x**4, axis=(2, 3)))
    rel = np.abs(E - E[0]) / E[0]
    assert rel.max() < 0.02
    drift = np.abs(E[-200:].mean(axis=0) - E[:200].mean(axis=0)) / E[0]
    assert drift.max() < 1e-3                                          # no secular drift over ~300 periods


@pytest.mark.parametrize("bad, match", [
    (dict(slow_every=0), "slow_every"), (dict(slow_every=2.0), "slow_every"),
    (dict(n_steps=301), "multiples of slow_every"), (dict(save_every=5), "multiples of slow_every"),
    (dict(integrator="overdamped"), "needs integrator='langevin'"),
])
def test_mts_bad_settings(bad, match):
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=300, save_every=6, integrator="langevin",
              friction=1.0, progress=False, slow_every=3)
    with pytest.raises(CgdmlError, match=match):
        simulate((dw_fast, dw_slow), np.zeros((2, 2, 3)), **{**kw, **bad})
    with pytest.raises(CgdmlError, match="needs force_fn as a pair"):
        simulate(double_well_forces, np.zeros((2, 2, 3)), **kw)
    with pytest.raises(CgdmlError, match="pair"):
        simulate((dw_fast, dw_slow, dw_slow), np.zeros((2, 2, 3)), **kw)


class Interrupt(Exception):
    pass


def interrupting(force_fn, after):
    calls = {"n": 0}

    def f(R):
        calls["n"] += 1
        if calls["n"] > after:
            raise Interrupt
        return force_fn(R)

    return f


@pytest.mark.parametrize("integrator", ["overdamped", "langevin"])
def test_resume_is_bit_for_bit(tmp_path, integrator):
    x0 = sample_start(8, 2, seed=5)
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=300, save_every=7, integrator=integrator,
              friction=5.0, seed=11, progress=False, save_velocities=True)
    ref = simulate(double_well_forces, x0, **kw)
    ckpt = tmp_path / "run.ckpt.npz"
    with pytest.raises(Interrupt):
        simulate(interrupting(double_well_forces, 130), x0, checkpoint=ckpt, checkpoint_every=50, **kw)
    assert ckpt.exists()
    res = simulate(double_well_forces, x0, checkpoint=ckpt, checkpoint_every=50, **kw)
    assert res.timings["resumed_from_step"] == 100
    assert np.array_equal(res.frames, ref.frames)
    assert np.array_equal(res.velocity_frames, ref.velocity_frames)
    assert np.array_equal(res.positions, ref.positions)
    # a different setting must not silently resume
    with pytest.raises(CgdmlError, match="different settings.*dt"):
        simulate(double_well_forces, x0, checkpoint=ckpt, **{**kw, "dt": 0.02})
    with pytest.raises(CgdmlError, match="different settings"):
        simulate(double_well_forces, x0 + 0.01, checkpoint=ckpt, **kw)
    ckpt.write_bytes(b"not a zip")
    with pytest.raises(CgdmlError, match="run.ckpt.npz"):
        simulate(double_well_forces, x0, checkpoint=ckpt, **kw)


def test_mts_resume_is_bit_for_bit(tmp_path):
    """Checkpoints inside an outer step (every 50 steps, k = 3) carry the slow forces: the resumed run is
    identical to an uninterrupted one."""
    x0 = sample_start(8, 2, seed=5)
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=300, save_every=6, integrator="langevin",
              friction=5.0, seed=11, progress=False, save_velocities=True, slow_every=3)
    ref = simulate((dw_fast, dw_slow), x0, **kw)
    ckpt = tmp_path / "run.ckpt.npz"
    with pytest.raises(Interrupt):
        simulate((interrupting(dw_fast, 130), dw_slow), x0, checkpoint=ckpt, checkpoint_every=50, **kw)
    res = simulate((dw_fast, dw_slow), x0, checkpoint=ckpt, checkpoint_every=50, **kw)
    assert res.timings["resumed_from_step"] == 100 and 100 % 3 != 0
    assert np.array_equal(res.frames, ref.frames)
    assert np.array_equal(res.velocity_frames, ref.velocity_frames)
    assert np.array_equal(res.positions, ref.positions) and np.array_equal(res.velocities, ref.velocities)
    with pytest.raises(CgdmlError, match="different settings.*slow_every"):
        simulate((dw_fast, dw_slow), x0, checkpoint=ckpt, **{**kw, "slow_every": 2})
    with pytest.raises(CgdmlError, match="different settings.*slow_every"):   # nor a plain run
        simulate(double_well_forces, x0, checkpoint=ckpt, **{**kw, "slow_every": 1})


def test_mts_groups_and_blowups():
    """Replica groups give the same result with a pair; a replica blowing up inside an outer step is frozen."""
    x0 = sample_start(8, 2, seed=5)
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=60, save_every=6, integrator="langevin",
              friction=5.0, seed=11, progress=False, slow_every=3)
    a = simulate((dw_fast, dw_slow), x0, n_groups=2, **kw)
    b = simulate((dw_fast, dw_slow), x0, n_groups=2, n_jobs=2, **kw)
    assert np.array_equal(a.frames, b.frames) and a.alive.all() and "slow_force_s" in a.timings

    calls, sizes = {"n": 0}, []

    def slow_bomb(R):                                                  # replica 2 explodes at the 4th call
        calls["n"] += 1
        sizes.append(len(R))
        F = dw_slow(R)
        if calls["n"] == 4:
            F[2] = np.nan
        return F

    with pytest.warns(UserWarning, match="replica.*2 blew up at step 9"):
        res = simulate((dw_fast, slow_bomb), x0, **kw)
    assert res.alive.tolist() == [True, True, False] + [True] * 5 and res.stopped_at[2] == 9
    assert res.n_valid_frames().tolist() == [10, 10, 1] + [10] * 5
    assert np.isfinite(res.frames[:, [0, 1, 3, 4, 5, 6, 7]]).all() and np.isfinite(res.frames[0, 2]).all()
    assert sizes[:4] == [8] * 4 and set(sizes[4:]) == {7}                 # then left out of the slow calls too


def test_seeded_runs_reproduce():
    x0 = sample_start(4, 2)
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=50, save_every=10, integrator="langevin",
              friction=1.0, progress=False)
    a = simulate(double_well_forces, x0, seed=1, **kw)
    b = simulate(double_well_forces, x0, seed=1, **kw)
    c = simulate(double_well_forces, x0, seed=2, **kw)
    assert np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames, c.frames)


def test_blowup_stops_one_replica_others_continue():
    k = 50.0
    batch_sizes = []

    def explosive(R):
        batch_sizes.append(len(R))
        F = -k * R
        out = np.abs(R[..., 0]) > 2.0                                  # beyond |x| = 2 the force pushes outwards
        F[out] = 1e8 * R[out]
        return F

    x0 = np.zeros((5, 1, 3))
    x0[2, 0, 0] = 2.5
    with pytest.warns(UserWarning, match="replica.*2 blew up"):
        res = simulate(explosive, x0, masses=[12.0], temperature=T, dt=0.002, n_steps=200, save_every=10,
                       integrator="langevin", friction=1.0, progress=False)
    assert res.alive.tolist() == [True, True, False, True, True]
    s = res.stopped_at[2]
    assert 0 < s < 200 and (res.stopped_at[[0, 1, 3, 4]] == -1).all()
    assert res.blowups == [{"replica": 2, "step": int(s)}]
    assert np.isfinite(res.frames[:, [0, 1, 3, 4]]).all()
    counts = res.n_valid_frames()
    assert counts.tolist() == [20, 20, (s - 1) // 10, 20, 20]
    assert np.isfinite(res.replica_frames(2)).all() and np.isnan(res.frames[counts[2]:, 2]).all()
    assert batch_sizes[0] == 5 and set(batch_sizes[s + 1:]) == {4}    # frozen replica left out of force calls


# ----------------------------------------------------------------------------------- Simulation and reporters
def runaway_forces(R):
    """A harmonic well (k = 50) in which beyond |x| = 2 nm the force pushes outwards."""
    F = -50.0 * R
    out = np.abs(R[..., 0]) > 2.0
    F[out] = 1e3 * R[out]
    return F


def farthest_x(R):
    """The largest |x| (nm) of a replica's beads, (n,)."""
    return np.abs(R[..., 0]).max(axis=1)


RUNAWAY = dict(masses=[12.0], temperature=T, dt=0.002, n_steps=400, save_every=10, integrator="langevin",
               friction=1.0, progress=False, seed=1)


def runaway_start():
    x0 = np.zeros((5, 1, 3))
    x0[2, 0, 0] = 2.1                                                 # replica 2 runs away, the others stay home
    return x0


def test_simulation_object_equals_simulate():
    """Simulation + integrator + reporters built by hand is simulate(): the same frames, bit for bit."""
    from cgdml.simulate import BAOAB, Simulation, TrajectoryReporter

    x0 = sample_start(6, 2, seed=2)
    ref = simulate(double_well_forces, x0, masses=MASSES, temperature=T, dt=0.01, n_steps=200, save_every=10,
                   integrator="langevin", friction=1.0, seed=4, progress=False, save_velocities=True)
    traj = TrajectoryReporter(10, save_velocities=True)
    sim = Simulation(double_well_forces, x0, BAOAB(0.01, friction=1.0), masses=MASSES, temperature=T, seed=4,
                     reporters=[traj])
    res = sim.run(200)
    assert np.array_equal(res.frames, ref.frames) and np.array_equal(res.velocity_frames, ref.velocity_frames)
    assert res.frames is traj.frames and res.step == 200 and res.halted is None and res.events == []


def test_threshold_guard_stops_a_replica_which_keeps_its_frames():
    from cgdml.simulate import ThresholdGuard

    guard = ThresholdGuard(farthest_x, 2.5, action="stop-replica", reason="far from home")
    res = simulate(runaway_forces, runaway_start(), reporters=[guard], **RUNAWAY)
    (event,) = res.events
    s = event["step"]
    assert event["replica"] == 2 and event["stopped"] and event["reason"] == "far from home" and event["value"] > 2.5
    assert res.alive.tolist() == [True, True, False, True, True] and res.stopped_at[2] == s
    assert res.blowups == []                                            # not a blow-up
    assert res.n_valid_frames().tolist() == [40, 40, (s - 1) // 10, 40, 40]
    assert np.isfinite(res.replica_frames(2)).all() and farthest_x(res.positions[2:3])[0] <= 2.5


def test_threshold_guard_warns_once_per_replica_every_k_steps():
    from cgdml.simulate import ThresholdGuard

    guard = ThresholdGuard(farthest_x, 0.15, every=5, reason="wide")
    res = simulate(runaway_forces, np.zeros((6, 1, 3)), reporters=[guard], **RUNAWAY)
    assert res.alive.all() and len(res.events) >= 2
    assert all(e["step"] % 5 == 0 and not e["stopped"] and e["value"] > 0.15 for e in res.events)
    assert len({e["replica"] for e in res.events}) == len(res.events)   # once per replica


def test_stop_run_keeps_the_frames_before_it():
    from cgdml.simulate import ThresholdGuard

    guard = ThresholdGuard(farthest_x, 2.5, action="stop-run", reason="far from home")
    res = simulate(runaway_forces, runaway_start(), reporters=[guard], **RUNAWAY)
    s = res.halted["step"]
    assert "far from home" in res.halted["reason"] and res.step == s - 1 and res.alive.all()
    assert res.events == [{"replica": 2, "step": s, "reason": "far from home", "stopped": False,
                           "value": res.events[0]["value"]}]
    assert (res.n_valid_frames() == (s - 1) // 10).all()
    assert np.isfinite(res.frames[: (s - 1) // 10]).all() and np.isnan(res.frames[(s - 1) // 10:]).all()


def test_guard_events_survive_resume_and_groups(tmp_path):
    """Events are checkpointed (a resumed run reports what an uninterrupted one does) and merged over groups."""
    from cgdml.simulate import ThresholdGuard

    x0 = sample_start(8, 2, seed=5)
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=300, save_every=10, integrator="langevin",
              friction=5.0, seed=11, progress=False)

    def guard():
        return [ThresholdGuard(farthest_x, 1.4, every=3, reason="wide")]

    ref = simulate(double_well_forces, x0, reporters=guard(), **kw)
    assert ref.events
    ckpt = tmp_path / "run.ckpt.npz"
    with pytest.raises(Interrupt):
        simulate(interrupting(double_well_forces, 170), x0, checkpoint=ckpt, checkpoint_every=50, reporters=guard(),
                 **kw)
    res = simulate(double_well_forces, x0, checkpoint=ckpt, checkpoint_every=50, reporters=guard(), **kw)
    assert res.timings["resumed_from_step"] == 150
    assert res.events == ref.events and np.array_equal(res.frames, ref.frames)
    groups = simulate(double_well_forces, x0, n_groups=2, reporters=guard(), **kw)
    halves = [simulate(double_well_forces, part, reporters=guard(), **{**kw, "seed": s})
              for part, s in zip(np.array_split(x0, 2), np.random.SeedSequence(11).spawn(2))]
    expected = sorted([*halves[0].events, *({**e, "replica": e["replica"] + 4} for e in halves[1].events)],
                      key=lambda e: (e["step"], e["replica"]))
    assert groups.events == expected


def test_bond_blowup_and_all_blown_up():
    test = bond_blowup([[0, 1]], 0.5)
    R = np.zeros((3, 2, 3))
    R[1, 1, 0] = 0.6
    R[2, 1, 2] = 0.4
    assert test(R).tolist() == [False, True, False]

    def stretch(R):                                                    # a bond that keeps lengthening
        F = np.zeros_like(R)
        F[:, 1, 0] = 1e4
        return F

    with pytest.warns(UserWarning), pytest.raises(CgdmlError, match="all 3 replicas blew up"):
        simulate(stretch, np.zeros((3, 2, 3)), masses=[12.0, 12.0], temperature=T, dt=0.002, n_steps=1000,
                 save_every=10, integrator="overdamped", friction=1.0, blowup=test, progress=False)


def test_total_blowup_discards_the_checkpoint(tmp_path):
    """A checkpoint of a run in which every replica blew up is of no use and would block the advised rerun with a
    smaller dt ("different settings"): it is discarded, and one left by an older cgdml is discarded on load."""
    from cgdml.simulate import AllBlownUp

    def stretch(R):                                                    # the bond passes 0.5 nm in ~30 steps
        F = np.zeros_like(R)
        F[:, 1, 0] = 1e2
        return F

    ckpt = tmp_path / "run.ckpt.npz"
    kw = dict(masses=[12.0, 12.0], temperature=T, n_steps=1000, save_every=10, integrator="overdamped",
              friction=1.0, blowup=bond_blowup([[0, 1]], 0.5), progress=False, checkpoint=ckpt, checkpoint_every=10)
    with pytest.warns(UserWarning), pytest.raises(AllBlownUp, match=r"all 3 replicas blew up.*discarded its "
                                                                    r"checkpoint .*run.ckpt.npz"):
        simulate(stretch, np.zeros((3, 2, 3)), dt=0.002, **kw)
    assert not ckpt.exists()
    res = simulate(lambda R: np.zeros_like(R), np.zeros((3, 2, 3)), dt=0.001, **{**kw, "blowup": None})  # rerun
    assert res.alive.all() and res.timings["resumed_from_step"] is None

    # a checkpoint without a live replica (an older cgdml kept them): discarded with a warning, not resumed
    x0, ckpt = sample_start(4, 2), tmp_path / "old.ckpt.npz"
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=100, save_every=10, integrator="langevin",
              friction=1.0, progress=False, checkpoint=ckpt, checkpoint_every=20)
    with pytest.raises(Interrupt):
        simulate(interrupting(double_well_forces, 50), x0, **kw)
    with np.load(ckpt) as z:
        arrays = dict(z)
    np.savez(ckpt, **{**arrays, "alive": np.zeros(4, dtype=bool)})
    with pytest.warns(UserWarning, match="discarded this checkpoint: every replica in it had blown up"):
        res = simulate(double_well_forces, x0, **{**kw, "dt": 0.005})
    assert res.timings["resumed_from_step"] is None and res.alive.all()


def test_progress_bar_moves_by_wall_time(monkeypatch, capsys):
    """With many replicas a step takes long: the bar is updated every PROGRESS_S seconds of wall time, not every
    so many steps, so it moves even when 50 steps take minutes."""
    import time

    from cgdml.simulate import reporters as sim

    monkeypatch.setattr(sim, "PROGRESS_S", 0.05)

    def slow(R):                                                       # 40 steps in ~2 s: tqdm prints every 0.5 s
        time.sleep(0.05)
        return double_well_forces(R)

    simulate(slow, sample_start(2, 2), masses=MASSES, temperature=T, dt=0.01, n_steps=40, save_every=10,
             integrator="langevin", friction=1.0, progress=True)
    shown = {int(n) for n in __import__("re").findall(r"\| *(\d+)/40 ", capsys.readouterr().err)}
    assert len(shown - {0, 40}) >= 2, shown


def test_resume_says_so(tmp_path, caplog):
    import logging

    x0 = sample_start(4, 2)
    ckpt = tmp_path / "run.ckpt.npz"
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=100, save_every=10, integrator="langevin",
              friction=1.0, progress=False, checkpoint=ckpt, checkpoint_every=20)
    with pytest.raises(Interrupt):
        simulate(interrupting(double_well_forces, 50), x0, **kw)
    with caplog.at_level(logging.INFO, logger="cgdml.simulate"):
        simulate(double_well_forces, x0, **kw)
    assert f"resuming from step 40 of {ckpt}" in caplog.text


@pytest.mark.parametrize("bad, match", [
    (dict(dt=0.0), "dt must be > 0"), (dict(n_steps=0), "n_steps"), (dict(friction=-1.0), "friction"),
    (dict(integrator="verlet"), "integrator"), (dict(masses=[1.0]), "masses"),
    (dict(integrator="overdamped", friction=0.0), "friction"),
])
def test_bad_settings_are_one_line_errors(bad, match):
    kw = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=10, save_every=5, integrator="langevin",
              friction=1.0, progress=False)
    with pytest.raises(CgdmlError, match=match):
        simulate(double_well_forces, np.zeros((2, 2, 3)), **{**kw, **bad})


# ----------------------------------------------------------------------------------------------- command line

NAMES = ["C", "N", "CA", "C", "N"]


def tiny_model(path):
    """A small fitted CGModel (prior + GDML on 60 noisy frames of a 5-bead backbone) written to ``path``."""
    from cgdml.data import CGDataset
    from cgdml.gdml import GDML
    from cgdml.model import CGModel
    from cgdml.prior import CGPrior
    from cgdml.topology import chain_topology

    rng = np.random.default_rng(0)
    template = np.array([[0.0, 0.0, 0.0], [0.13, 0.0, 0.0], [0.18, 0.14, 0.0], [0.33, 0.15, 0.03],
                         [0.39, 0.27, 0.08]])
    R = template + rng.normal(0.0, 0.006, size=(300, 5, 3))
    F = -2e3 * (R - R.mean(axis=1, keepdims=True) - (template - template.mean(0))) + rng.normal(0, 50, R.shape)
    F -= F.mean(axis=1, keepdims=True)
    ds = CGDataset.from_arrays(R, F, temperature=T, topology=chain_topology(NAMES, ["ACE", "ALA", "NME"],
                                                                              [0, 1, 1, 1, 2]))
    prior = CGPrior().fit(ds.coords, T)
    gdml = GDML(sigma=2.0, lam=1e-2, relative_lam=True).fit(ds.coords[:60], ds.forces[:60] - prior.forces(ds.coords[:60]))
    CGModel(gdml.model_, prior, ds.system, ds.coords[:40]).save(path)
    ds.save(path.parent / "data.npz")
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "model.npz")


def test_cli_writes_trajectory_sidecar_and_resumes(model_file, tmp_path, monkeypatch):
    import json

    import mdtraj as md

    from cgdml.model import CGModel
    from cgdml.simulate.__main__ import main

    # plain BAOAB (--slow-every 1): one CGModel.forces call per step, which the interruption below counts
    args = ["--replicas", "6", "--steps", "200", "--save-every", "10", "--checkpoint-every", "50", "--slow-every", "1",
            "--burn-in", "0", "--no-progress"]
    clean = tmp_path / "clean.h5"
    assert main([str(model_file), "-o", str(clean)] + args) == 0
    traj = md.load(str(clean))
    assert traj.n_frames == 6 * 20 and [a.name for a in traj.topology.atoms] == NAMES
    assert [r.name for r in traj.topology.residues] == ["ACE", "ALA", "NME"]
    side = json.loads(clean.with_suffix(".json").read_text())
    assert side["frames_per_replica"] == [20] * 6 and side["blowups"] == [] and side["timings"]["steps_per_s"] > 0
    assert not (tmp_path / "clean.h5.ckpt.npz").exists()
    assert np.isfinite(traj.xyz).all() and side["settings"]["blowup_bond_nm"] == pytest.approx(
        2 * CGModel.load(model_file).max_bond_length)

    # a burn-in drops the leading frames of each replica, nothing else changes
    burnt = tmp_path / "burnt.h5"
    assert main([str(model_file), "-o", str(burnt)] + args[:-3] + ["--burn-in", "50", "--no-progress"]) == 0
    assert json.loads(burnt.with_suffix(".json").read_text())["frames_per_replica"] == [15] * 6
    assert np.array_equal(md.load(str(burnt)).xyz.reshape(6, 15, 5, 3), traj.xyz.reshape(6, 20, 5, 3)[:, 5:])

    # interrupt a second run after 130 force calls, then rerun the same command: identical trajectory
    out = tmp_path / "resumed.dcd"
    real = CGModel.forces
    calls = {"n": 0}

    def flaky(self, R):
        calls["n"] += 1
        if calls["n"] == 130:
            raise KeyboardInterrupt
        return real(self, R)

    monkeypatch.setattr(CGModel, "forces", flaky)
    with pytest.raises(KeyboardInterrupt):
        main([str(model_file), "-o", str(out)] + args)
    assert (tmp_path / "resumed.dcd.ckpt.npz").exists() and not out.exists()
    assert main([str(model_file), "-o", str(out)] + args) == 0
    assert json.loads(out.with_suffix(".json").read_text())["timings"]["resumed_from_step"] == 100
    again = md.load(str(out), top=traj.topology)
    assert np.allclose(again.xyz, traj.xyz, atol=1e-6)                 # dcd stores float32 in Angstrom
    assert not (tmp_path / "resumed.dcd.ckpt.npz").exists()

    # a different setting does not silently resume someone else's checkpoint
    monkeypatch.setattr(CGModel, "forces", flaky)
    calls["n"] = 0
    other = tmp_path / "other.h5"
    with pytest.raises(KeyboardInterrupt):
        main([str(model_file), "-o", str(other)] + args)
    with pytest.raises(CgdmlError, match="different settings.*dt"):
        main([str(model_file), "-o", str(other), "--dt", "0.001"] + args)


def test_cli_multiple_time_steps(model_file, tmp_path, monkeypatch):
    """--slow-every K: the GDML part every K steps (CGModel.slow_forces), the prior every step; resumes."""
    import json

    import mdtraj as md

    from cgdml.model import CGModel
    from cgdml.simulate.__main__ import main

    model = CGModel.load(model_file)
    R = model.train_coords_sample[:3]
    assert np.allclose(model.fast_forces(R) + model.slow_forces(R), model.forces(R))
    args = ["--replicas", "4", "--steps", "200", "--save-every", "10", "--checkpoint-every", "50",
            "--burn-in", "0", "--no-progress", "--slow-every", "2"]
    clean = tmp_path / "mts.h5"
    real = {name: getattr(CGModel, name) for name in ("fast_forces", "slow_forces")}
    calls, stop = {"fast_forces": 0, "slow_forces": 0}, {"at": None}

    def counting(name):
        def f(self, R):
            calls[name] += 1
            if name == "fast_forces" and calls[name] == stop["at"]:
                raise KeyboardInterrupt
            return real[name](self, R)
        return f

    for name in calls:
        monkeypatch.setattr(CGModel, name, counting(name))
    assert main([str(model_file), "-o", str(clean)] + args) == 0
    assert calls == {"fast_forces": 201, "slow_forces": 101}
    side = json.loads(clean.with_suffix(".json").read_text())
    assert side["settings"]["slow_every"] == 2 and side["timings"]["slow_force_s"] > 0
    traj = md.load(str(clean))
    assert traj.n_frames == 4 * 20 and np.isfinite(traj.xyz).all()

    calls["fast_forces"], stop["at"] = 0, 70                            # interrupt at step 69, inside an outer step
    out = tmp_path / "mts2.h5"
    with pytest.raises(KeyboardInterrupt):
        main([str(model_file), "-o", str(out)] + args)
    assert main([str(model_file), "-o", str(out)] + args) == 0
    assert json.loads(out.with_suffix(".json").read_text())["timings"]["resumed_from_step"] == 50
    assert np.array_equal(md.load(str(out)).xyz, traj.xyz)


@pytest.mark.parametrize("extra, match", [
    (["--slow-every", "0"], "--slow-every"), (["--steps", "200", "--slow-every", "3"], "multiples of --slow-every"),
    (["--integrator", "overdamped", "--slow-every", "2"], "needs --integrator langevin"),
    (["--steps", "0"], "--steps"), (["--dt", "-1"], "--dt"), (["--friction", "0"], "--friction"),
    (["--replicas", "0"], "--replicas"), (["--steps", "100", "--save-every", "500"], "larger than --steps"),
    (["--steps", "100", "--burn-in", "100"], "--burn-in"), (["--steps", "100", "--burn-in", "95"], "no frame"),
])
def test_cli_bad_options(model_file, tmp_path, extra, match):
    from cgdml.simulate.__main__ import main

    with pytest.raises(CgdmlError, match=match):
        main([str(model_file), "-o", str(tmp_path / "t.h5"), "--no-progress"] + extra)


def test_cli_bad_files(model_file, tmp_path):
    from cgdml.data import CGDataset
    from cgdml.simulate.__main__ import main

    with pytest.raises(CgdmlError, match="must end in"):
        main([str(model_file), "-o", str(tmp_path / "t.txt")])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CgdmlError, match="junk.npz"):
        main([str(tmp_path / "junk.npz"), "-o", str(tmp_path / "t.h5")])
    wrong = CGDataset.from_arrays(np.cumsum(np.full((3, 4, 3), 0.1), axis=1), np.zeros((3, 4, 3)))
    wrong.save(tmp_path / "four.npz")
    with pytest.raises(CgdmlError, match="4 beads.*5"):
        main([str(model_file), "-o", str(tmp_path / "t.h5"), "--start", str(tmp_path / "four.npz")])
    # start frames from a dataset work
    assert main([str(model_file), "-o", str(tmp_path / "s.xtc"), "--start", str(model_file.parent / "data.npz"),
                 "--replicas", "2", "--steps", "20", "--save-every", "10", "--no-progress"]) == 0


def test_python_run_equals_command(model_file, tmp_path):
    """simulate_model from Python is what the command runs: the same positions bit for bit, the same sidecar."""
    import json

    import mdtraj as md

    from cgdml.model import CGModel
    from cgdml.simulate import simulate_model
    from cgdml.simulate.__main__ import main

    out = tmp_path / "cli.h5"
    assert main([str(model_file), "-o", str(out), "--replicas", "4", "--steps", "200", "--save-every", "10",
                 "--burn-in", "60", "--seed", "3", "--no-progress"]) == 0
    kw = dict(replicas=4, steps=200, save_every=10, burn_in=60, seed=3, progress=False)
    run = simulate_model(model_file, **kw)
    assert np.array_equal(md.load(str(out)).xyz, run.coordinates())
    side = json.loads(out.with_suffix(".json").read_text())
    mine = run.sidecar(out.name)
    for key in ("settings", "frames_per_replica", "n_frames", "frame_time_ps", "blowups", "events"):
        assert side[key] == mine[key], key
    assert side["settings"]["slow_every"] == 2 and side["settings"]["dt_ps"] == 0.003     # the defaults
    # a model object instead of its file: the same run
    again = simulate_model(CGModel.load(model_file), **kw)
    assert np.array_equal(again.coordinates(), run.coordinates())
    # output= writes what the command writes, without the provenance records
    saved = tmp_path / "py.h5"
    simulate_model(model_file, output=saved, **kw)
    assert np.array_equal(md.load(str(saved)).xyz, run.coordinates())
    assert json.loads(saved.with_suffix(".json").read_text())["settings"] == side["settings"]


def test_library_defaults_are_the_commands():
    """Every option of the command has the library parameter of the same name with the same default."""
    import inspect

    from cgdml.simulate import simulate_model
    from cgdml.simulate.__main__ import build_parser

    args = vars(build_parser().parse_args(["m.npz", "-o", "t.h5"]))
    params = inspect.signature(simulate_model).parameters
    shared = set(args) - {"model", "output", "no_progress", "quiet", "verbose"}
    assert shared <= set(params), shared - set(params)
    for name in shared:
        if name != "start":
            assert params[name].default == args[name], name
