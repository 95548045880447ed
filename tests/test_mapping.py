"""CG maps: consistency conditions, aggregate/optimal force maps, com/cog weights, presets, errors."""

import mdtraj as md
import numpy as np
import pytest

from cgdml._io import CgdmlError
from cgdml.io import default_dataset_paths
from cgdml.mapping import (CGMap, available_presets, detect_constraints, force_covariance, load_map_spec,
                           map_allatom, preset_map)


def small_molecule():
    """C1(H11,H12)-N1(HN)-C2(=O2)-C3(H31): 9 atoms; bonds to H are the constraints."""
    top = md.Topology()
    res = top.add_residue("MOL", top.add_chain())
    el = md.element
    spec = [("C1", el.carbon), ("H11", el.hydrogen), ("H12", el.hydrogen), ("N1", el.nitrogen), ("HN", el.hydrogen),
            ("C2", el.carbon), ("O2", el.oxygen), ("C3", el.carbon), ("H31", el.hydrogen)]
    atoms = {name: top.add_atom(name, e, res) for name, e in spec}
    for a, b in [("C1", "H11"), ("C1", "H12"), ("C1", "N1"), ("N1", "HN"), ("N1", "C2"), ("C2", "O2"),
                 ("C2", "C3"), ("C3", "H31")]:
        top.add_bond(atoms[a], atoms[b])
    return top


MAP_TOML = """
[[bead]]
name = "CX"
select = "name C1"
[[bead]]
name = "NX"
select = "name N1"
[[bead]]
name = "CO"
select = "name C2 O2"
weights = "com"
[[bead]]
name = "CC"
select = "name C3 H31"
weights = "cog"
"""


@pytest.fixture
def small_map(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(MAP_TOML)
    return CGMap.from_toml(path, small_molecule())


def noisy_forces(n, rng):
    """Synthetic forces with strongly correlated components (bond-like pair forces) plus independent noise."""
    f = rng.normal(size=(n, 9, 3))
    pairs = [(0, 1), (0, 3), (3, 4), (3, 5), (5, 6), (5, 7), (7, 8), (0, 2)]
    for a, b in pairs:
        g = 5.0 * rng.normal(size=(n, 3))
        f[:, a] += g
        f[:, b] -= g
    return f


@pytest.mark.parametrize("kind", ["slice", "aggregate", "optimal"])
def test_consistency_condition(small_map, kind):
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="slice") if kind == "slice" else _nothing():
        small_map.fit_force_map(kind, forces_sample=noisy_forces(2000, rng))
    B, C = small_map.force_matrix_, small_map.config_matrix_
    np.testing.assert_allclose(B @ C.T, np.eye(4), atol=1e-9)
    cons, split = small_map.consistency_error()
    assert cons < 1e-9
    if kind != "slice":
        assert split < 1e-9  # constraint forces cancel: equal weights on constrained pairs
    x = rng.normal(size=(3, 9, 3))
    np.testing.assert_allclose(small_map.map_coords(x), np.einsum("ia,fak->fik", C, x))
    np.testing.assert_allclose(small_map.map_forces(x), np.einsum("ia,fak->fik", B, x))
    # a rigid translation of all atoms by t moves every bead by t (rows of C sum to 1)
    t = rng.normal(size=3)
    np.testing.assert_allclose(small_map.map_coords(x + t) - small_map.map_coords(x), np.broadcast_to(t, (3, 4, 3)))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_aggregate_sums_constrained_hydrogens(small_map):
    small_map.fit_force_map("aggregate")
    f = np.random.default_rng(1).normal(size=(5, 9, 3))
    F = small_map.map_forces(f)
    np.testing.assert_allclose(F[:, 0], f[:, [0, 1, 2]].sum(1))   # C1 + H11 + H12
    np.testing.assert_allclose(F[:, 1], f[:, [3, 4]].sum(1))      # N1 + HN
    np.testing.assert_allclose(F[:, 2], f[:, [5, 6]].sum(1))      # C2 + O2 (com bead, no hydrogens)
    np.testing.assert_allclose(F[:, 3], f[:, [7, 8]].sum(1))      # C3 + H31
    m = md.element
    np.testing.assert_allclose(small_map.masses_, [m.carbon.mass + 2 * m.hydrogen.mass, m.nitrogen.mass + m.hydrogen.mass,
                                                   m.carbon.mass + m.oxygen.mass, m.carbon.mass + m.hydrogen.mass])


def test_com_and_cog_weights(small_map):
    C = small_map.config_matrix_
    mc, mo = md.element.carbon.mass, md.element.oxygen.mass
    np.testing.assert_allclose(C[2, [5, 6]], [mc / (mc + mo), mo / (mc + mo)])
    np.testing.assert_allclose(C[3, [7, 8]], [0.5, 0.5])
    np.testing.assert_allclose(C.sum(1), 1.0)
    x = np.random.default_rng(2).normal(size=(4, 9, 3))
    np.testing.assert_allclose(small_map.map_coords(x)[:, 2], np.average(x[:, [5, 6]], axis=1, weights=[mc, mo]))
    np.testing.assert_allclose(small_map.map_coords(x)[:, 3], x[:, [7, 8]].mean(1))


def test_optimal_map_has_least_mapped_force_variance(small_map):
    rng = np.random.default_rng(3)
    train, test = noisy_forces(20000, rng), noisy_forces(20000, rng)
    msf = {}
    for kind in ("slice", "aggregate", "optimal"):
        with pytest.warns(UserWarning) if kind == "slice" else _nothing():
            small_map.fit_force_map(kind, forces_sample=train)
        msf[kind] = (small_map.map_forces(test) ** 2).mean()
    assert msf["optimal"] < 0.9 * msf["aggregate"] and msf["optimal"] < 0.9 * msf["slice"], msf
    # it is the constrained minimum: feasible perturbations (same constraints) only raise the objective
    small_map.regularization = 0.0
    small_map.fit_force_map("optimal", forces_sample=train)
    B, cov = small_map.force_matrix_, force_covariance(train)
    groups = small_map.constraint_groups_
    P = (groups[:, None] == np.unique(groups)[None]).astype(float)
    G = small_map.config_matrix_ @ P
    null = np.linalg.svd(G)[2][G.shape[0]:]   # group-weight directions with G d = 0
    base = np.einsum("ia,ab,ib->", B, cov, B)
    for _ in range(20):
        D = rng.normal(size=(4, len(null))) @ null @ P.T * 0.05
        assert np.einsum("ia,ab,ib->", B + D, cov, B + D) > base


def test_constraint_detection_from_positions(small_map):
    rng = np.random.default_rng(4)
    x = rng.normal(scale=0.2, size=(50, 9, 3))
    # make the four X-H pairs rigid: H at fixed distance 0.1 nm in a random direction
    for h, heavy in [(1, 0), (2, 0), (4, 3), (8, 7)]:
        u = rng.normal(size=(50, 3))
        x[:, h] = x[:, heavy] + 0.1 * u / np.linalg.norm(u, axis=1, keepdims=True)
    pairs = detect_constraints(x, candidate_pairs=[(a.index, b.index) for a, b in small_map.topology_.bonds])
    assert sorted(map(tuple, pairs)) == sorted(map(tuple, small_map.constraints_))
    m = CGMap(small_map.beads, constraints="detect").fit(small_map.topology_, positions_sample=x)
    np.testing.assert_array_equal(m.constraint_groups_, small_map.constraint_groups_)


@pytest.mark.parametrize("text, match", [
    ('[[bead]]\nname = "A"\nselect = "name XX"\n', "matches no atoms"),
    ('[[bead]]\nname = "A"\nselect = "name C1"\n[[bead]]\nname = "B"\nselect = "name C1 N1"\nweights = "cog"\n',
     "overlap"),
    ('[[bead]]\nname = "A"\nselct = "name C1"\n', "unknown key 'selct'"),
    ('beads = 3\n', "unknown key 'beads'"),
    ('[[bead]]\nname = "A"\nselect = "name C1 N1"\n', "weights"),
    ('[[bead]]\nname = "A"\nselect = "name C1 N1"\nweights = "mass"\n', "weights must be"),
    ('[[bead]]\nname = "A"\nselect = "nme C1"\n', "bad selection"),
    ('[[bead]\nname = "A"\n', "not valid TOML"),
])
def test_map_file_errors(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CgdmlError, match=match) as exc:
        CGMap.from_toml(path, small_molecule())
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_aggregate_refuses_beads_joined_by_constraints(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text('[[bead]]\nname = "C"\nselect = "name C1"\n[[bead]]\nname = "H"\nselect = "name H11"\n')
    m = CGMap.from_toml(path, small_molecule())
    with pytest.raises(CgdmlError, match="joined by constraints"):
        m.fit_force_map("aggregate")


def test_presets_and_cg_topology():
    assert {"ala2-5", "ala2-6"} <= set(available_presets())
    beads, _ = load_map_spec("ala2-6")
    assert [b["name"] for b in beads] == ["C", "N", "CA", "CB", "C", "N"]
    m = preset_map("ala2-6")
    assert m.cg_topology_.bonds.tolist() == [[0, 1], [1, 2], [2, 3], [2, 4], [4, 5]]  # CA-CB and CA-C, not CB-C
    assert [r.name for r in m.cg_topology_.to_mdtraj().residues] == ["ACE", "ALA", "NME"]
    np.testing.assert_allclose(preset_map("ala2-5").masses_, [12.011, 15.015, 13.019, 12.011, 15.015], atol=2e-3)


@pytest.fixture(scope="module")
def shipped():
    paths = default_dataset_paths()
    with np.load(paths.trajectory) as z:
        return paths, z["positions"][:4000], z["forces"][:4000]


def test_presets_keep_phi_psi_of_shipped_data(shipped):
    paths, x, f = shipped
    top = md.load_topology(str(paths.topology))
    aa = md.Trajectory(x[:500], top)
    for preset in ("ala2-5", "ala2-6"):
        m = CGMap.from_toml(preset, top)
        cg = md.Trajectory(m.map_coords(x[:500]).astype(np.float32), m.cg_topology_.to_mdtraj())
        np.testing.assert_allclose(md.compute_phi(cg)[1], md.compute_phi(aa)[1], atol=1e-5)
        np.testing.assert_allclose(md.compute_psi(cg)[1], md.compute_psi(aa)[1], atol=1e-5)
    # the OpenMM run constrained exactly the bonds to hydrogen
    detected = detect_constraints(x[:500], [(a.index, b.index) for a, b in top.bonds])
    assert sorted(map(tuple, detected)) == sorted(map(tuple, CGMap.from_toml("ala2-5", top).constraints_))


def test_optimal_lowers_mapped_force_noise_on_shipped_data(shipped):
    paths, x, f = shipped
    top = md.load_topology(str(paths.topology))
    m = CGMap.from_toml("ala2-5", top)
    train, test = f[:2000], f[2000:]
    msf = {}
    for kind in ("aggregate", "optimal"):
        m.fit_force_map(kind, forces_sample=train)
        msf[kind] = (m.map_forces(test) ** 2).mean()
        assert m.consistency_error()[0] < 1e-8 and m.consistency_error()[1] < 1e-12
    assert msf["optimal"] < 0.8 * msf["aggregate"], msf


def test_map_allatom_matches_direct_mapping(shipped, tmp_path):
    paths, x, f = shipped
    np.save(tmp_path / "x.npy", x[:300])
    np.save(tmp_path / "f.npy", f[:300])
    ds = map_allatom(paths.topology, tmp_path / "x.npy", tmp_path / "f.npy", "ala2-5", force_map="optimal",
                     chunk=70, temperature=300)
    m = CGMap.from_toml("ala2-5", md.load_topology(str(paths.topology)))
    m.fit_force_map("optimal", forces_sample=f[:300])
    np.testing.assert_allclose(ds.coords, m.map_coords(x[:300]), atol=1e-6)
    np.testing.assert_allclose(ds.forces, m.map_forces(f[:300]), rtol=1e-6, atol=1e-3)
    assert ds.bead_names == ["C", "N", "CA", "C", "N"] and ds.info["force_map"] == "optimal"
    np.testing.assert_allclose(ds.masses, m.masses_)
