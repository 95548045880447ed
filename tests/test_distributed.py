"""Dask execution gives bit-for-bit the results of a local run: layer-1 sub-models and simulation replica groups.

One LocalCluster (2 worker processes, one thread each, on loopback) serves the whole module.
"""
import socket

import numpy as np
import pytest

from cgdml._cli import run_cli
from cgdml._io import CgdmlError
from cgdml.mapping import load_default_cg_dataset
from cgdml.distributed import check_scheduler, scheduler_address
from cgdml.pipeline import cg_estimator
from cgdml.simulate import group_checkpoints, simulate
from test_simulate import MASSES, T, Interrupt, double_well_forces, interrupting, sample_start, tiny_model

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "model.npz")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FIT = dict(n_models=4, batch_size=150, mean_set_size=200, sigma1=[2.0, 4.0], lam1=[1.0], sigma2=[2.0], lam2=[1e-2],
           n_folds=2, cv_models=2, cv_mean_set_size=100, cv_holdout=300, progress=False)


def two_layer(ds, **params):
    """The CG estimator of a two-layer fit of ``ds`` (no basin balancing), fitted."""
    return cg_estimator("two-layer", balance_basins=False, **FIT, **params).fit(ds)


def test_two_layer_fit_on_dask_equals_local_processes(client, tmp_path):
    ds = load_default_cg_dataset("ala2-5", "optimal", stride=10)          # 2000 frames of the shipped data
    local = two_layer(ds, n_jobs=2)
    work = tmp_path / "work"
    remote = two_layer(ds, scheduler=client, workdir=work)
    R = ds.coords[::40]
    assert np.array_equal(remote.learner_.mean_set_labels_, local.learner_.mean_set_labels_)
    assert np.array_equal(remote.model_.forces(R), local.model_.forces(R))
    assert remote.learner_.cv_scores_ == local.learner_.cv_scores_
    assert remote.learner_.sigma1_ == local.learner_.sigma1_
    ex = remote.learner_.execution_
    assert ex["backend"] == "dask" and ex["n_workers"] == 2 and ex["tasks"] == 10   # 8 CV layer-1 + 2 CV layer-2
    # a task carries indices (a few hundred int64) and at most a 100-frame label block, never the data set
    assert ex["task_bytes_max"] < 20_000 < ds.coords.nbytes and ex["shared_bytes"] == 2 * ds.coords.nbytes

    # resume on the cluster from the checkpoints, by scheduler address, after losing one sub-model
    cached = sorted(work.glob("l1_*.npz"))
    assert len(cached) == 8
    cached[3].unlink()
    again = two_layer(ds, scheduler=client.scheduler.address, workdir=work)
    assert again.learner_.execution_["tasks"] == 1
    assert np.array_equal(again.model_.forces(R), local.model_.forces(R))


SIM = dict(masses=MASSES, temperature=T, dt=0.01, n_steps=300, save_every=10, integrator="langevin",
           friction=5.0, seed=7, progress=False, save_velocities=True)


def test_replica_groups_run_anywhere_with_the_same_result(client, model_file):
    from cgdml.model import CGModel

    model = CGModel.load(model_file)
    x0 = model.train_coords_sample[:7].astype(np.float64)
    kw = dict(masses=model.masses, temperature=T, dt=0.002, n_steps=200, save_every=10, integrator="langevin",
              seed=3, progress=False)
    here = simulate(model.forces, x0, n_groups=3, **kw)
    procs = simulate(model.forces, x0, n_groups=3, n_jobs=2, **kw)
    remote = simulate(model.forces, x0, n_groups=3, scheduler=client, **kw)
    assert here.frames.shape == (20, 7, 5, 3) and here.alive.all() and np.isfinite(here.frames).all()
    for other in (procs, remote):
        assert np.array_equal(other.frames, here.frames) and np.array_equal(other.velocities, here.velocities)
    # groups are independent streams: the same start in every replica still gives different trajectories
    same = simulate(model.forces, np.repeat(x0[:1], 4, axis=0), n_groups=2, **kw)
    assert not np.array_equal(same.frames[:, 0], same.frames[:, 2])
    # and K matters (other streams), while K = 1 is the ungrouped run
    assert not np.array_equal(simulate(model.forces, x0, n_groups=2, **kw).frames, here.frames)


def test_each_group_resumes_bit_for_bit(tmp_path):
    import numba

    threads = numba.get_num_threads()
    x0 = sample_start(6, 2, seed=5)
    ref = simulate(double_well_forces, x0, n_groups=2, **SIM)
    assert numba.get_num_threads() == threads              # groups run here on one thread, then it is restored
    ckpt = tmp_path / "run.ckpt.npz"
    paths = group_checkpoints(ckpt, 2)
    assert [p.name for p in paths] == ["run.ckpt.g0.npz", "run.ckpt.g1.npz"]
    with pytest.raises(Interrupt):                   # group 0 finishes, group 1 stops after 130 steps
        simulate(interrupting(double_well_forces, 301 + 130), x0, n_groups=2, checkpoint=ckpt,
                 checkpoint_every=50, **SIM)
    assert all(p.exists() for p in paths) and not ckpt.exists()
    res = simulate(double_well_forces, x0, n_groups=2, checkpoint=ckpt, checkpoint_every=50, **SIM)
    assert res.timings["resumed_from_step"] == 100
    assert np.array_equal(res.frames, ref.frames) and np.array_equal(res.velocity_frames, ref.velocity_frames)
    with pytest.raises(CgdmlError, match="run.ckpt.g0.npz.*different settings"):
        simulate(double_well_forces, x0, n_groups=2, checkpoint=ckpt, **{**SIM, "seed": 8})
    with pytest.raises(CgdmlError, match="n_groups must be between 1 and the number of replicas"):
        simulate(double_well_forces, x0, n_groups=7, **SIM)


def test_cli_tasks_on_dask_equal_local(client, model_file, tmp_path):
    import mdtraj as md

    from cgdml.simulate.__main__ import main

    args = [str(model_file), "--replicas", "4", "--steps", "100", "--save-every", "10", "--burn-in", "0",
            "--tasks", "2", "--no-progress"]
    assert main(args + ["-o", str(tmp_path / "local.h5")]) == 0
    assert main(args + ["-o", str(tmp_path / "dask.h5"), "--scheduler", client.scheduler.address]) == 0
    a, b = md.load(str(tmp_path / "local.h5")), md.load(str(tmp_path / "dask.h5"))
    assert a.n_frames == 40 and np.array_equal(a.xyz, b.xyz)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.h5", "dask.json", "dask.pdb", "local.h5", "local.json",
                                                          "local.pdb"]


@pytest.mark.parametrize("command", ["simulate", "fit"])
def test_cli_unreachable_scheduler_is_one_line_error(command, model_file, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"cgdml.{command}" + (".__main__" if command in ("simulate", "fes") else "")).main
    address = f"tcp://127.0.0.1:{closed_port()}"
    out = tmp_path / ("t.h5" if command == "simulate" else "m.npz")
    first = [str(model_file)] if command == "simulate" else []
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, first + ["-o", str(out), "--scheduler", address])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot reach the dask scheduler at {address}"), err
    assert list(tmp_path.iterdir()) == []


def test_scheduler_addresses_and_files(tmp_path):
    assert scheduler_address("node7:8786") == "tcp://node7:8786"
    assert scheduler_address("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    with pytest.raises(CgdmlError, match="nope.json: no such dask scheduler file"):
        scheduler_address(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CgdmlError, match="bad.json: not a dask scheduler file"):
        scheduler_address(str(bad))
    good = tmp_path / "scheduler.json"
    port = closed_port()
    good.write_text(f'{{"type": "Scheduler", "address": "tcp://127.0.0.1:{port}"}}')
    with pytest.raises(CgdmlError, match=f"127.0.0.1:{port} \\(from .*scheduler.json\\)"):
        check_scheduler(str(good))
