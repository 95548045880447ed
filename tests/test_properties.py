"""Property tests (hypothesis): rigid motions, reflections, bead permutations, bead-count mismatches, random or
damaged bytes as model files, and random damage to every file cgdml reads (datasets, models, GDML models,
simulation checkpoints, fit checkpoints and manifests)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from cgdml._io import CgdmlError
from cgdml.features import chain_quads, descriptor, n_descriptors

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BASE = np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.14, 0.0], [0.35, 0.15, 0.05], [0.4, 0.3, 0.12]])

seeds = st.integers(0, 2**32 - 1)
rotations = seeds.map(lambda s: Rotation.random(random_state=s).as_matrix())
translations = st.lists(st.floats(-50.0, 50.0, allow_nan=False), min_size=3, max_size=3).map(np.array)


def configurations(seed, n=4, n_beads=5, scale=0.02):
    return BASE[:n_beads] + scale * np.random.default_rng(seed).normal(size=(n, n_beads, 3))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A CGModel (harmonic prior + chiral GDML) fitted once on noisy spring forces; saved for the file tests."""
    from cgdml.gdml import GDML
    from cgdml.model import CGModel
    from cgdml.prior import HarmonicPrior
    from cgdml.system import CGSystem
    from cgdml.topology import CGTopology

    R = configurations(0, n=80)
    F = -300.0 * (R - BASE) + np.random.default_rng(1).normal(scale=20.0, size=R.shape)
    F -= F.mean(axis=1, keepdims=True)
    prior = HarmonicPrior().fit(R, 300.0)
    gdml = GDML(sigma=3.0, lam=1e-3, relative_lam=True, chiral=True).fit(R, F - prior.forces(R))
    names = ["C", "N", "CA", "C", "N"]
    m = CGModel(gdml.model_, prior, CGSystem(CGTopology.chain(names, warn=False), np.full(5, 12.0), 300.0), R[:10])
    path = tmp_path_factory.mktemp("model") / "model.npz"
    m.save(path)
    gdml.model_.save(path.with_name("gdml.npz"))
    return m, path


# ------------------------------------------------------------------------------------------------ rigid motions

@FAST
@given(seed=seeds, Q=rotations, t=translations)
def test_energy_invariant_and_forces_covariant_under_rigid_motion(model, seed, Q, t):
    m, _ = model
    R = configurations(seed)
    E, F = m.energy_forces(R)
    E2, F2 = m.energy_forces(R @ Q.T + t)
    np.testing.assert_allclose(E2, E, rtol=1e-8, atol=1e-8 * np.abs(E).max())
    np.testing.assert_allclose(F2, F @ Q.T, rtol=1e-7, atol=1e-7 * np.abs(F).max())
    np.testing.assert_allclose(m.gdml.predict_forces(R @ Q.T + t), m.gdml.predict_forces(R) @ Q.T,
                               atol=1e-7 * np.abs(F).max())
    assert abs(F.sum(axis=1)).max() < 1e-6 * np.abs(F).max()         # no net force: translation invariance


@FAST
@given(seed=seeds, Q=rotations, t=translations, n_beads=st.integers(2, 8), chiral=st.booleans())
def test_descriptor_invariant_under_rigid_motion(seed, Q, t, n_beads, chiral):
    rng = np.random.default_rng(seed)
    R = np.cumsum(rng.normal(scale=0.1, size=(3, n_beads, 3)), axis=1)
    R += rng.normal(scale=0.02, size=R.shape)
    quads = chain_quads(n_beads) if chiral else []
    D = descriptor(R, quads)
    assert D.shape == (3, n_descriptors(n_beads, len(quads)))
    np.testing.assert_allclose(descriptor(R @ Q.T + t, quads), D, rtol=1e-7, atol=1e-9)


@FAST
@given(seed=seeds, Q=rotations, n_beads=st.integers(4, 8))
def test_reflection_flips_only_the_dihedral_sines(seed, Q, n_beads):
    """Any improper orthogonal map (a rotation times a mirror) keeps the inverse distances and negates the sines."""
    rng = np.random.default_rng(seed)
    R = np.cumsum(rng.normal(scale=0.1, size=(3, n_beads, 3)), axis=1)
    improper = Q @ np.diag([1.0, 1.0, -1.0])
    quads = chain_quads(n_beads)
    D, Dm = descriptor(R, quads), descriptor(R @ improper.T, quads)
    n_pairs = n_beads * (n_beads - 1) // 2
    np.testing.assert_allclose(Dm[:, :n_pairs], D[:, :n_pairs], rtol=1e-9)
    np.testing.assert_allclose(Dm[:, n_pairs:], -D[:, n_pairs:], atol=1e-9)
    np.testing.assert_allclose(descriptor(R @ improper.T), descriptor(R), rtol=1e-9)


def test_model_tells_mirror_images_apart(model):
    m, _ = model
    R = configurations(5)
    mirror = np.diag([1.0, 1.0, -1.0])
    E, F = m.energy_forces(R)
    Em, Fm = m.energy_forces(R @ mirror)
    assert np.abs(Fm - F @ mirror).max() > 1e-3 * np.abs(F).max()


# ------------------------------------------------------------------------------------------------ bead permutations

@pytest.fixture(scope="module")
def ala2():
    from cgdml.mapping import ala2_topology, load_map_spec

    rng = np.random.default_rng(3)
    xyz = rng.normal(scale=0.3, size=(6, 22, 3))
    forces = rng.normal(scale=300.0, size=(40, 22, 3))
    return ala2_topology(), load_map_spec("ala2-6")[0], xyz, forces


@FAST
@given(perm=st.permutations(range(6)), kind=st.sampled_from(["slice", "aggregate", "optimal"]))
def test_permuted_bead_definitions_permute_the_mapped_beads(ala2, perm, kind):
    """The model cannot see bead identity in coordinates: permuting the bead list of a map must permute the rows
    of both map matrices, and so the mapped coordinates and forces, consistently and nothing else."""
    import warnings

    from cgdml.mapping import CGMap

    top, beads, xyz, forces = ala2
    perm = list(perm)
    maps = []
    for order in (list(range(6)), perm):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                           # slice: constraint-force warning
            maps.append(CGMap([beads[i] for i in order]).fit(top).fit_force_map(kind, forces_sample=forces))
    a, b = maps
    np.testing.assert_array_equal(b.config_matrix_, a.config_matrix_[perm])
    np.testing.assert_allclose(b.force_matrix_, a.force_matrix_[perm], atol=1e-10)
    np.testing.assert_allclose(b.map_coords(xyz), a.map_coords(xyz)[:, perm], atol=1e-12)
    np.testing.assert_allclose(b.map_forces(forces), a.map_forces(forces)[:, perm], atol=1e-7)
    np.testing.assert_allclose(b.masses_, a.masses_[perm])
    assert b.bead_names_ == [a.bead_names_[i] for i in perm]


@FAST
@given(n_beads=st.integers(1, 9).filter(lambda n: n != 5), n=st.integers(1, 3))
def test_bead_count_mismatch_is_rejected(model, n_beads, n):
    m, _ = model
    R = np.random.default_rng(n_beads).normal(scale=0.2, size=(n, n_beads, 3))
    for call in (m.forces, m.energy_forces, m.gdml.predict_forces, m.gdml.predict, m.out_of_range):
        with pytest.raises(CgdmlError, match="5"):
            call(R)


# ------------------------------------------------------------------------------------------------ damaged files

def _loaders():
    from cgdml.model import CGModel, GDMLModel

    return CGModel.load, GDMLModel.load


def _load_cleanly(path, loader, R):
    """Load ``path``: the result is a working model or a CgdmlError naming the file, never another exception."""
    try:
        loaded = loader(path)
    except CgdmlError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return None
    try:
        out = loaded.forces(R) if hasattr(loaded, "forces") else loaded.predict_forces(R)
    except CgdmlError:
        return None
    assert out.shape == R.shape
    return loaded


@FAST
@given(data=st.binary(max_size=4000), prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"]))
def test_random_bytes_are_a_clean_error(model, tmp_path, data, prefix):
    path = tmp_path / "junk.npz"
    path.write_bytes(prefix + data)
    for loader in _loaders():
        with pytest.raises(CgdmlError, match="junk.npz"):
            loader(path)


@FAST
@given(positions=st.lists(st.integers(0, 10**9), min_size=1, max_size=8), byte=st.integers(0, 255),
       cut=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_damaged_model_files_load_cleanly_or_fail_cleanly(model, tmp_path, positions, byte, cut):
    """Overwritten bytes or a truncated file: the loaders give a working model or a clean CgdmlError."""
    m, good = model
    R = configurations(9, n=2)
    for src, loader in zip((good, good.with_name("gdml.npz")), _loaders()):
        raw = bytearray(src.read_bytes())
        for p in positions:
            raw[p % len(raw)] = byte
        if cut is not None:
            raw = raw[: int(cut * len(raw))]
        path = tmp_path / f"damaged_{src.name}"
        path.write_bytes(bytes(raw))
        _load_cleanly(path, loader, R)


BAD_VALUES = [np.array("text"), np.zeros((2, 2, 2)), np.array(1.5), np.arange(3), np.zeros(0), np.array(-1),
              np.array([np.nan]), np.array(True)]


@FAST
@given(data=st.data())
def test_model_files_with_wrong_entries_load_cleanly_or_fail_cleanly(model, tmp_path, data):
    """Any entry of a model file replaced by a value of the wrong type or shape: a working model or a CgdmlError."""
    from cgdml.model import CGModel

    m, good = model
    with np.load(good) as z:
        arrays = dict(z)
    key = data.draw(st.sampled_from(sorted(arrays)))
    value = data.draw(st.sampled_from(BAD_VALUES))
    path = tmp_path / "edited.npz"
    np.savez(path, **{**arrays, key: value})
    _load_cleanly(path, CGModel.load, configurations(9, n=2))


# ------------------------------------------------------------------------------------------------ every loader
# Random damage (truncated bytes, missing keys, wrong dtypes, NaN, wrong shapes) fed to every loader of a file
# cgdml reads: the result is a working object or ONE line of CgdmlError that names the file, never another
# exception (no traceback on the command line).

def _wrong(value, how):
    a = np.asarray(value)
    if how == "text":
        return np.array("hot")
    if how == "nan":
        b = a.astype(np.float64) if a.dtype.kind in "fiub" else np.array(np.nan)
        if b.size:
            b.reshape(-1)[0] = np.nan
        return b
    if how == "inf":
        return np.full(a.shape, np.inf)
    if how == "shape":
        return a.reshape(-1)[:-1] if a.size > 1 else np.zeros((2, 2, 2))
    if how == "transpose":
        return a.T.copy() if a.ndim > 1 else a[None]
    if how == "empty":
        return np.zeros((0,) + a.shape[1:], dtype=a.dtype)
    if how == "int":
        return a.astype(np.int64) if a.dtype.kind == "f" else np.array(3)
    if how == "float":
        return a.astype(np.float64) + 0.5 if a.dtype.kind in "iub" else np.array(0.5)
    if how == "bool":
        return np.ones(a.shape, dtype=bool)
    if how == "complex":
        return a.astype(np.complex128) if a.dtype.kind in "fiu" else np.array(1j)
    if how == "negative":
        return -np.abs(a) if a.dtype.kind in "fi" else np.array(-1)
    raise ValueError(how)


HOW = ["drop", "text", "nan", "inf", "shape", "transpose", "empty", "int", "float", "bool", "complex", "negative"]
damages = st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(HOW)), min_size=1, max_size=3)


def _damaged(arrays, plan):
    out = dict(arrays)
    keys = sorted(out)
    for index, how in plan:
        key = keys[index % len(keys)]
        if how == "drop":
            out.pop(key, None)
        elif key in out:
            out[key] = _wrong(out[key], how)
    return out


def _write(path, arrays, cut=None):
    np.savez(path, **arrays)
    if cut is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(cut * len(raw))])
    return path


def _clean(call, path):
    """``call()``: its result, or None after a one-line CgdmlError naming ``path``; anything else fails."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except CgdmlError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message, message
        return None


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    """Arrays of a CG dataset, a model, a GDML model, a simulation checkpoint and a fit checkpoint, as written."""
    from cgdml.data import CGDataset
    from cgdml.simulate import simulate

    m, path = model
    d = tmp_path_factory.mktemp("files")
    R = configurations(2, n=30)
    CGDataset(R, -300.0 * (R - BASE), m.system).save(d / "data.npz")

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def forces(X):
        calls["n"] += 1
        if calls["n"] > 7:
            raise Stop
        return -300.0 * (X - BASE)

    with pytest.raises(Stop):
        simulate(forces, R[:3], checkpoint=d / "run.ckpt.npz", checkpoint_every=3, **SIMULATION)
    arrays = {}
    for name, p in (("dataset", d / "data.npz"), ("model", path), ("gdml", path.with_name("gdml.npz")),
                    ("checkpoint", d / "run.ckpt.npz")):
        with np.load(p) as z:
            arrays[name] = dict(z)
    arrays["fit"] = {"held": np.zeros((3, 5, 3), np.float32), "mean": np.ones((4, 5, 3), np.float32)}
    return arrays, R[:3]


SIMULATION = dict(masses=np.full(5, 12.0), temperature=300.0, dt=0.001, n_steps=12, save_every=2,
                  integrator="langevin", friction=1.0, seed=4, progress=False)


@FAST
@given(plan=damages, cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
       which=st.sampled_from(["dataset", "model", "gdml", "checkpoint", "fit"]))
def test_every_loader_gives_an_object_or_one_clean_line(files, tmp_path, plan, cut, which):
    from cgdml._io import WorkCache
    from cgdml.data import CGDataset
    from cgdml.model import CGModel, GDMLModel
    from cgdml.simulate import simulate

    arrays, x0 = files
    if which == "checkpoint":
        path = _write(tmp_path / "run.ckpt.npz", _damaged(arrays[which], plan), cut)
        result = _clean(lambda: simulate(lambda X: -300.0 * (X - BASE), x0, checkpoint=path, checkpoint_every=3,
                                         **SIMULATION), path)
        assert result is None or result.frames.shape == (6, 3, 5, 3)
        return
    if which == "fit":
        cache = WorkCache(tmp_path / "work", "fp")
        path = _write(tmp_path / "work" / "l1_x.npz", _damaged(arrays[which], plan), cut)
        result = _clean(lambda: cache.get("l1_x", {"held": (3, 5, 3), "mean": (4, 5, 3)}), path)
        assert result is None or (result["held"].shape == (3, 5, 3) and np.isfinite(result["mean"]).all())
        return
    path = _write(tmp_path / f"{which}.npz", _damaged(arrays[which], plan), cut)
    loader = {"dataset": CGDataset.load, "model": CGModel.load, "gdml": GDMLModel.load}[which]
    loaded = _clean(lambda: loader(path), path)
    if loaded is None or which == "dataset":
        return
    R = configurations(9, n=2)
    out = _clean(lambda: loaded.forces(R) if which == "model" else loaded.predict_forces(R), path)
    assert out is None or out.shape == R.shape


@FAST
@given(text=st.one_of(st.text(max_size=60), st.sampled_from(['{}', '[]', '{"fingerprint": 3}', '"fp"', 'null',
                                                             '{"fingerprint": "other"}', '{"fingerprint": "fp"',
                                                             '\x00\xff'])))
def test_fit_manifest_damage_is_one_clean_line(tmp_path, text):
    from cgdml._io import WorkCache

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "manifest.json").write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        WorkCache(work, "fp")
    except CgdmlError as exc:
        assert "\n" not in str(exc) and str(work) in str(exc)


@pytest.mark.parametrize("name", ["dihedral_quads_", "dihedral_splines_", "repulsion_pairs_", "angle_k_"])
def test_prior_arrays_saved_empty_load_as_no_terms_or_fail_cleanly(model, tmp_path, name):
    """A prior array written as a flat empty array (the shape numpy gives an empty list) is read as 'no terms of
    this kind' when its partners are empty too, and as a one-line CgdmlError otherwise -- never a numba error."""
    from cgdml.model import CGModel

    m, good = model
    with np.load(good) as z:
        arrays = dict(z)
    key = "prior/" + name
    assert key in arrays
    path = tmp_path / "empty.npz"
    np.savez(path, **{**arrays, key: np.zeros(0)})
    _load_cleanly(path, CGModel.load, configurations(9, n=2))
