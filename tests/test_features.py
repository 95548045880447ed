"""Descriptor and Jacobian: finite differences, invariances, chirality and sgdml ordering."""
import mdtraj as md
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cgdml._io import CgdmlError
from cgdml.features import chain_quads, descriptor, descriptor_jacobian, descriptor_vjp, n_descriptors, pair_indices


def chain(n_frames, n_beads, seed=0):
    """Random zig-zag chains with ~0.15 nm bonds (nm)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n_frames, n_beads, 3))
    steps /= np.linalg.norm(steps, axis=2, keepdims=True)
    return 0.15 * np.cumsum(steps, axis=1) + rng.normal(scale=0.01, size=(n_frames, n_beads, 3))


def mdtraj_dihedrals(R):
    top = md.Topology()
    res = top.add_residue("X", top.add_chain())
    for i in range(R.shape[1]):
        top.add_atom(f"B{i}", md.element.carbon, res)
    quads = [[k, k + 1, k + 2, k + 3] for k in range(R.shape[1] - 3)]
    return md.compute_dihedrals(md.Trajectory(R, top), quads)


@pytest.mark.parametrize("n_beads,quads", [(3, None), (4, None), (5, None), (6, []), (6, None),
                                           (6, [[0, 2, 1, 3], [5, 1, 3, 2]])])  # the last: not in bead order
def test_jacobian_matches_finite_differences(n_beads, quads):
    R = chain(4, n_beads, seed=n_beads)
    quads = chain_quads(n_beads) if quads is None else np.array(quads).reshape(-1, 4)
    D, J = descriptor_jacobian(R, quads, chiral_scale=1.7)
    assert D.shape == (4, n_descriptors(n_beads, len(quads))) and J.shape == (4, D.shape[1], 3 * n_beads)
    np.testing.assert_allclose(D, descriptor(R, quads, 1.7), rtol=1e-14)
    h = 1e-6
    Jfd = np.empty_like(J)
    for c in range(3 * n_beads):
        Rp, Rm = R.copy(), R.copy()
        Rp.reshape(4, -1)[:, c] += h
        Rm.reshape(4, -1)[:, c] -= h
        Jfd[:, :, c] = (descriptor(Rp, quads, 1.7) - descriptor(Rm, quads, 1.7)) / (2 * h)
    np.testing.assert_allclose(J, Jfd, atol=1e-6 * np.abs(J).max())


def test_vjp_equals_jacobian_transpose_product():
    R = chain(5, 6, seed=3)
    quads = np.array([[0, 1, 2, 3], [4, 2, 1, 5], [1, 2, 3, 4]])
    D, J = descriptor_jacobian(R, quads)
    G = np.random.default_rng(0).normal(size=D.shape)
    expect = np.einsum("nkc,nk->nc", J, G).reshape(R.shape)
    np.testing.assert_allclose(descriptor_vjp(R, G, quads), expect, atol=1e-12 * np.abs(expect).max())


def test_inverse_distances_in_sgdml_order():
    R = chain(3, 5, seed=1)
    a, b = pair_indices(5)
    expect = 1.0 / np.linalg.norm(R[:, a] - R[:, b], axis=2)
    np.testing.assert_allclose(descriptor(R), expect, rtol=1e-14)
    sgdml_desc = pytest.importorskip("sgdml.utils.desc")
    D_sg, _ = sgdml_desc.Desc(5, max_processes=1).from_R(R.reshape(3, -1))
    np.testing.assert_allclose(descriptor(R), D_sg, rtol=1e-12)


def test_dihedral_sines_match_mdtraj_and_flip_under_reflection():
    R = chain(50, 6, seed=2)
    D = descriptor(R, chain_quads(6), chiral_scale=2.0)
    n_pairs = 15
    np.testing.assert_allclose(D[:, n_pairs:], 2.0 * np.sin(mdtraj_dihedrals(R)), atol=1e-5)  # mdtraj: float32
    mirror = R * np.array([1.0, -1.0, 1.0])
    Dm = descriptor(mirror, chain_quads(6), chiral_scale=2.0)
    np.testing.assert_allclose(Dm[:, :n_pairs], D[:, :n_pairs], rtol=1e-13)
    np.testing.assert_allclose(Dm[:, n_pairs:], -D[:, n_pairs:], atol=1e-13)
    assert np.abs(D[:, n_pairs:]).max() > 0.5


def test_descriptor_invariant_to_rotation_and_translation():
    R = chain(10, 5, seed=4)
    Q = Rotation.random(random_state=5).as_matrix()
    moved = R @ Q.T + np.array([1.0, -2.0, 0.5])
    quads = chain_quads(5)
    np.testing.assert_allclose(descriptor(moved, quads), descriptor(R, quads), rtol=1e-11, atol=1e-12)
    # Jacobian rows are covariant: J(moved) acts on rotated displacements like J(R) on the originals.
    _, J = descriptor_jacobian(R, quads)
    _, Jm = descriptor_jacobian(moved, quads)
    Jrot = np.einsum("nkbi,ij->nkbj", J.reshape(10, -1, 5, 3), Q.T).reshape(J.shape)
    np.testing.assert_allclose(Jm, Jrot, atol=1e-10 * np.abs(J).max())
    # Rigid motions are in the Jacobian's null space: rank 3N - 6.
    assert np.all(np.linalg.matrix_rank(J, tol=1e-8 * np.abs(J).max()) == 9)


def test_bad_shape_raises_clean_error():
    with pytest.raises(CgdmlError):
        descriptor(np.zeros((4, 5, 2)))


def test_bad_quadruples_raise_clean_errors():
    R = chain(2, 5, seed=0)
    with pytest.raises(CgdmlError, match="index the 5 beads"):
        descriptor(R, [[0, 1, 2, 5]])
    with pytest.raises(CgdmlError, match="four distinct beads"):
        descriptor(R, [[0, 1, 1, 3]])
