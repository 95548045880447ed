"""A real peer, side by side: cgdml's default pipeline against CGnet (and optionally CGSchNet) on the cgnet
alanine-dipeptide data, at 1,000, 3,000 and 10,000 training frames, both simulated with cgdml's default Langevin
settings and scored with cgdml's metric against the same reference.

- Data: ../shared/data/cgnet-ala2 (pre-mapped 5 beads, Angstrom, kcal/mol/Angstrom, 300 K; 10,000 frames). The
  reference for scoring is the full dataset (js and fes_rmse against its split-half floor), as bench_maps' cgnet
  case. Each (budget, seed) draws its training frames at random, seeded (the 10,000 budget is every frame).
- cgdml: the command line with defaults: ``cgdml.map`` of the subset's arrays (as bench_maps does), ``cgdml.fit``,
  ``cgdml.simulate --seed SEED``, ``cgdml.fes --reference FULL``.
- Peers: the cgnet package (../shared/peers/cgnet, on PYTHONPATH of a separate Python with torch, ``--torch-python``;
  torch is never imported by cgdml or by this script's own process). This script re-runs itself under that Python
  (``_peer`` sub-command) to train and simulate; see ``train_peer`` for the protocol (validation split, early
  stopping on the validation force loss, the papers' architecture and priors). The peer's trajectory is written as
  an mdtraj HDF5 file with the reference's CG topology and scored by the same ``cgdml.fes`` command.
- Simulation of the peer: cgnet's own ``Simulation`` class with friction and masses (Langevin; Angstrom, kcal/mol,
  amu, time unit 48.888 fs) at cgdml's defaults (``cgdml.simulate.DEFAULTS``: replicas, steps, burn-in, save
  interval, time step, friction; the bead masses of the dataset; start frames drawn from the training frames with
  the generator cgdml uses), every step a full force call. Replicas whose bonds exceed twice the longest training
  bond (cgdml's blow-up rule) are cut there, as cgdml does.

Skips cleanly (a message, exit 0) when the torch Python, torch or the peer package is missing. Each step's files go
to ``--workdir`` and are reused when rerun. ``--quick``: one budget, one seed, tiny fits and short runs (a smoke
test). Run: ``python benchmarks/bench_peers.py [--peers cgnet cgschnet] [--jobs 2] [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("CGDML_SHARED", "/work/shared"))
CGNET_DATA = SHARED / "data" / "cgnet-ala2"
CGNET_PEER = SHARED / "peers" / "cgnet"
TORCH_PYTHON = os.environ.get("CGDML_TORCH_PYTHON", "/work/torch-venv/bin/python")
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}

# units of the cgnet package: Angstrom, kcal/mol, amu -> time unit sqrt(amu A^2 / (kcal/mol)) = 48.888 fs
CGNET_TIME_FS = 48.888
KB_KCAL = 0.0019872041  # kcal/mol/K

# the peer's training protocol (see train_peer); --quick shrinks the epochs
PROTOCOL = dict(val_fraction=0.2, max_epochs=1000, patience=30, lr=3e-3, lr_factor=0.3, lr_patience=8,
                min_lr=1e-5, batch_max=512, batches_min=8, lipschitz=4.0, width=160, depth=5, rep_exp=6)
SCHNET = dict(width=128, depth=5, n_blocks=5, n_gaussians=50, cutoff=5.0, n_embeddings=10,
              embeddings=[6, 7, 6, 6, 7])


# =============================================================================================== the peer (torch)
def chain_pairs(n_beads, min_sep):
    return [(i, j) for i in range(n_beads) for j in range(i + min_sep, n_beads)]


def build_peer(arch, coords, temperature):
    """A cgnet model (CGnet or CGSchNet) with the papers' priors, statistics from ``coords`` (Angstrom).

    Features (CGnet): every pairwise distance, the backbone angles and the backbone dihedrals' cos and sin, z-scored
    (GeometryStatistics + ZscoreLayer), then ``depth`` tanh layers of ``width`` and a linear output (Wang et al.
    2019: 5 x 160). CGSchNet (Husic et al. 2020 / the cgnet notebook): a SchnetFeature (5 interaction blocks of 128,
    50 Gaussians to 5 A, bead embeddings by element) beside the GeometryFeature, shifted-softplus terminal network
    5 x 128 summed over beads. Priors: harmonic bonds and angles (k = kT / variance, x0 = mean of the training
    split) and a repulsion 1/2 (r_min / r)^6 on pairs three or more bonds apart, r_min the smallest training
    distance of the pair.
    """
    import torch.nn as nn
    from cgnet.feature import (CGBeadEmbedding, FeatureCombiner, GaussianRBF, GeometryFeature,
                               GeometryStatistics, LinearLayer, SchnetFeature, ShiftedSoftplus)
    from cgnet.network import CGnet, ForceLoss, HarmonicLayer, RepulsionLayer, ZscoreLayer

    n_beads = coords.shape[1]
    stats = GeometryStatistics(coords, backbone_inds="all", get_all_distances=True, get_backbone_angles=True,
                               get_backbone_dihedrals=True, temperature=temperature)
    bond_list, _ = stats.get_prior_statistics(features="Bonds", as_list=True)
    angle_list, _ = stats.get_prior_statistics(features="Angles", as_list=True)
    rep = chain_pairs(n_beads, 3)
    rmin = [float(np.linalg.norm(coords[:, i] - coords[:, j], axis=-1).min()) for i, j in rep]
    priors = [HarmonicLayer(stats.return_indices("Bonds"), bond_list),
              HarmonicLayer(stats.return_indices("Angles"), angle_list)]
    if rep:
        priors.append(RepulsionLayer(stats.return_indices(rep),
                                     [{"ex_vol": r, "exp": PROTOCOL["rep_exp"]} for r in rmin]))
    geometry = GeometryFeature(feature_tuples=stats.feature_tuples)
    if arch == "cgnet":
        zscores, _ = stats.get_zscore_array()
        width, act = PROTOCOL["width"], nn.Tanh()
        layers = [ZscoreLayer(zscores)] + LinearLayer(zscores.shape[1], width, activation=act)
        feature = geometry
    else:
        width, act = SCHNET["width"], ShiftedSoftplus()
        schnet = SchnetFeature(feature_size=width, embedding_layer=CGBeadEmbedding(SCHNET["n_embeddings"], width),
                               rbf_layer=GaussianRBF(high_cutoff=SCHNET["cutoff"], n_gaussians=SCHNET["n_gaussians"]),
                               n_interaction_blocks=SCHNET["n_blocks"], calculate_geometry=False, n_beads=n_beads,
                               neighbor_cutoff=None)
        feature = FeatureCombiner([geometry, schnet], distance_indices=stats.return_indices("Distances"))
        layers = LinearLayer(width, width, activation=act)
    depth = PROTOCOL["depth"] if arch == "cgnet" else SCHNET["depth"]
    for _ in range(depth - 1):
        layers += LinearLayer(width, width, activation=act)
    layers += LinearLayer(width, 1, activation=None)
    return CGnet(layers, ForceLoss(), feature=feature, priors=priors), stats


def train_peer(arch, coords, forces, seed, temperature, quick, log, fixed_epochs=None):
    """Train with a validation split and early stopping; return (model, record).

    Protocol: ``val_fraction`` of the frames held out at random (seeded); Adam at ``lr`` (the cgnet notebook's
    3e-3), the learning rate cut by ``lr_factor`` (the notebook's 0.3) when the validation force loss has not
    improved for ``lr_patience`` epochs (ReduceLROnPlateau, down to ``min_lr``); L2 Lipschitz projection of every
    linear layer after each step (strength 4, Wang et al. 2019); batches of min(512, n_train / 8) frames so that
    small budgets still take several steps per epoch; training stops when the validation loss has not improved for
    ``patience`` epochs (or at ``max_epochs``) and the weights of the best validation epoch are kept.
    ``fixed_epochs``: a sensitivity variant, no early stopping: train that many epochs, keep the last weights.
    """
    import torch
    from cgnet.network import lipschitz_projection

    P = dict(PROTOCOL)
    if quick:
        P.update(max_epochs=6, patience=3)
    if fixed_epochs:
        P.update(max_epochs=int(fixed_epochs), patience=np.inf, fixed_epochs=int(fixed_epochs))
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 29])
    perm = rng.permutation(len(coords))
    n_val = max(1, int(round(P["val_fraction"] * len(coords))))
    val, tr = np.sort(perm[:n_val]), perm[n_val:]
    model, _ = build_peer(arch, coords[tr], temperature)
    emb = torch.tensor(SCHNET["embeddings"], dtype=torch.long)[None] if arch == "cgschnet" else None
    batch = int(min(P["batch_max"], max(16, len(tr) // P["batches_min"])))
    opt = torch.optim.Adam(model.parameters(), lr=P["lr"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=P["lr_factor"], patience=P["lr_patience"],
                                                       min_lr=P["min_lr"])
    X, F = torch.tensor(coords, dtype=torch.float32), torch.tensor(forces, dtype=torch.float32)

    def forward(idx):
        x = X[idx].clone().requires_grad_(True)
        e = None if emb is None else emb.expand(len(idx), -1)
        return model(x, e)[1]

    def val_loss():
        tot = 0.0
        for k in range(0, len(val), 1000):
            idx = val[k:k + 1000]
            tot += float(((forward(idx).detach() - F[idx]) ** 2).sum())
        return tot / (len(val) * F.shape[1] * 3)

    best, best_state, best_epoch, bad, history = np.inf, None, 0, 0, []
    t0 = time.perf_counter()
    for epoch in range(1, P["max_epochs"] + 1):
        model.train()
        order = rng.permutation(tr)
        tot = 0.0
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            loss = ((forward(idx) - F[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            lipschitz_projection(model, strength=P["lipschitz"])
            tot += float(loss.detach()) * len(idx)
        model.eval()
        vl = val_loss()
        history.append([epoch, tot / len(order), vl, opt.param_groups[0]["lr"]])
        if vl < best * (1 - 1e-4):
            best, best_epoch, bad = vl, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if epoch % 10 == 0 or epoch == 1:
            log(f"{arch} epoch {epoch}: train {tot / len(order):.2f}, val {vl:.2f} (best {best:.2f} at "
                f"{best_epoch}), lr {opt.param_groups[0]['lr']:.1e}, {time.perf_counter() - t0:.0f} s")
        if bad >= P["patience"]:
            break
        sched.step(vl)
    if not fixed_epochs:
        model.load_state_dict(best_state)
    model.eval()
    record = dict(arch=arch, n_frames=len(coords), n_train=len(tr), n_val=len(val), batch=batch,
                  epochs=len(history), best_epoch=best_epoch, best_val_loss=best, protocol=P,
                  train_wall_s=time.perf_counter() - t0, history=history,
                  n_params=int(sum(p.numel() for p in model.parameters())))
    return model, record


def simulate_peer(model, arch, x0, masses, sim, seed, max_bond):
    """cgnet's Simulation (Langevin: friction and masses given) from ``x0`` (Angstrom); returns (frames in nm
    (replicas, saved frames after burn-in, beads, 3) with NaN from a blow-up on, record)."""
    import torch
    from cgnet.network import Simulation

    beta = 1.0 / (KB_KCAL * sim["temperature_K"])
    dt = sim["dt_ps"] * 1000.0 / CGNET_TIME_FS               # cgnet time units
    friction = sim["friction_per_ps"] * CGNET_TIME_FS / 1000.0  # 1/ps -> 1/(cgnet time unit)
    emb = None if arch == "cgnet" else torch.tensor(SCHNET["embeddings"], dtype=torch.long)[None].expand(len(x0), -1)
    x = torch.tensor(np.asarray(x0, dtype=np.float32), requires_grad=True)
    s = Simulation(model, x, embeddings=emb, dt=dt, beta=beta, friction=friction, masses=list(map(float, masses)),
                   length=sim["steps"], save_interval=sim["save_every"], random_seed=seed)
    t0 = time.perf_counter()
    traj = s.simulate()                                     # (replicas, saved, beads, 3), Angstrom
    wall = time.perf_counter() - t0
    bonds = np.linalg.norm(traj[:, :, 1:] - traj[:, :, :-1], axis=-1)  # the 5-bead chain's bonds
    bad = ~np.isfinite(traj).all(axis=(2, 3)) | (np.nan_to_num(bonds, nan=np.inf) > 2 * max_bond).any(-1)
    stopped = np.where(bad.any(1), bad.argmax(1), -1)
    traj = traj.astype(np.float64) / 10.0                   # nm
    for i, k in enumerate(stopped):
        if k >= 0:
            traj[i, k:] = np.nan
    skip = sim["burn_in"] // sim["save_every"]
    record = dict(sim_wall_s=wall, n_blown_up=int((stopped >= 0).sum()), stopped_at_frame=stopped.tolist(),
                  replica_steps_per_s=len(x0) * sim["steps"] / wall, dt_internal=dt, friction_internal=friction,
                  beta=beta, settings=sim)
    return traj[:, skip:], record


def peer_main(argv):
    """``_peer`` sub-command, run under the torch Python: train (reused if done) and simulate (reused if done)."""
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["cgnet", "cgschnet"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--sim", required=True, help="JSON: settings, masses, x0 file")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--fixed-epochs", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(f"[{a.arch} {out.name}] {msg}", flush=True)  # noqa: E731
    coords = np.load(Path(a.data) / "coords.npy").astype(np.float32)
    forces = np.load(Path(a.data) / "forces.npy").astype(np.float32)
    sim = json.loads(Path(a.sim).read_text())
    model_file, train_file = out / "model.pt", out / "train.json"
    if model_file.exists() and train_file.exists():
        model = torch.load(model_file, weights_only=False)
        model.eval()
    else:
        model, record = train_peer(a.arch, coords, forces, a.seed, sim["settings"]["temperature_K"], a.quick, log,
                                   a.fixed_epochs)
        torch.save(model, str(model_file) + ".tmp")
        os.replace(str(model_file) + ".tmp", model_file)
        train_file.write_text(json.dumps(record, indent=1))
        log(f"trained: {record['epochs']} epochs (best {record['best_epoch']}), val loss "
            f"{record['best_val_loss']:.2f}, {record['train_wall_s']:.0f} s")
    if not (out / "sim.npz").exists():
        max_bond = float(np.linalg.norm(coords[:, 1:] - coords[:, :-1], axis=-1).max())
        frames, record = simulate_peer(model, a.arch, np.load(sim["x0"]), sim["masses"], sim["settings"], a.seed,
                                       max_bond)
        np.savez(out / "sim.tmp.npz", frames=frames)
        os.replace(out / "sim.tmp.npz", out / "sim.npz")
        (out / "sim.json").write_text(json.dumps(record, indent=1))
        log(f"simulated: {record['sim_wall_s']:.0f} s, {record['n_blown_up']} blown up")


# =============================================================================================== the driver
class LoadSampler:
    """Samples the 1-minute load average every ``every`` s in a thread; ``mean(t0, t1)`` over a span."""

    def __init__(self, every=20.0):
        self.samples, self.every, self._stop = [], every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.time(), os.getloadavg()[0]))
            self._stop.wait(self.every)

    def mean(self, t0, t1):
        vals = [v for t, v in self.samples if t0 <= t <= t1] or [os.getloadavg()[0]]
        return float(np.mean(vals))

    def stop(self):
        self._stop.set()


def run(cmd, log, env=None):
    log("$ " + " ".join(map(str, cmd)))
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                           f"{proc.stderr.strip()[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def timed_step(done, work, name, fn, load):
    """Run ``fn()`` unless ``done`` exists; keep its wall time and mean load in work/timings.json."""
    tfile = work / "timings.json"
    timings = json.loads(tfile.read_text()) if tfile.exists() else {}
    if not done.exists():
        t0 = time.time()
        fn()
        timings[name] = dict(wall_s=time.time() - t0, load=load.mean(t0, time.time()))
        tfile.write_text(json.dumps(timings, indent=1))
    return timings.get(name, {})


def peer_available(torch_py, peer):
    """(None, torch version) when the torch Python imports torch and cgnet, else (why not, None)."""
    if not Path(torch_py).exists():
        return f"no torch Python at {torch_py} (--torch-python or CGDML_TORCH_PYTHON)", None
    if not (Path(peer) / "cgnet" / "__init__.py").exists():
        return f"no cgnet package in {peer}", None
    proc = subprocess.run([torch_py, "-c", "import torch, cgnet.network, cgnet.feature; print(torch.__version__)"],
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD, "PYTHONPATH": str(peer)})
    if proc.returncode:
        return f"{torch_py} cannot import torch and cgnet: {(proc.stderr.strip().splitlines() or [''])[-1]}", None
    return None, proc.stdout.strip()


def score(traj, ref, work, log):
    fes = work / "fes.json"
    if not fes.exists():
        run([sys.executable, "-m", "cgdml.fes", traj, "--reference", ref, "-o", work / "fes.png", "--json", fes,
             "--quiet"], log)
    rep = json.loads(fes.read_text())
    return dict(js=rep["metrics"]["js"], fes_rmse=rep["metrics"]["fes_rmse"], floor_js=rep["noise_floor"]["js"],
                floor_rmse=rep["noise_floor"]["fes_rmse"], phi_positive=rep.get("phi_positive", {}).get("model"),
                phi_positive_ref=rep.get("phi_positive", {}).get("reference"),
                js_ci=(rep.get("bootstrap") or {}).get("js"))


def cgdml_task(budget, seed, args, ref, log, load):
    py = sys.executable
    work = Path(args.workdir) / f"b{budget}-s{seed}" / "cgdml"
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work.parent / "data"
    data, model, traj = work / "cg.npz", work / "model.npz", work / "traj.h5"
    timed_step(data, work, "map", lambda: run(
        [py, "-m", "cgdml.map", "--coords", data_dir / "coords.npy", "--cg-forces", data_dir / "forces.npy",
         "--length-unit", "angstrom", "--energy-unit", "kcal/mol", "--beads", "ala2-5", "--temperature", "300",
         "-o", data], log), load)
    fit_args = ["--method", "nystrom", "--inducing", "200", "--sigma", "2", "4", "--lam", "1"] if args.quick else []
    fit = timed_step(model, work, "fit", lambda: run([py, "-m", "cgdml.fit", data, *fit_args, "--quiet", "-o", model],
                                                     log), load)
    sim_args = ["--steps", str(args.quick_steps), "--replicas", str(args.quick_replicas)] if args.quick else []
    sim = timed_step(traj, work, "simulate", lambda: run(
        [py, "-m", "cgdml.simulate", model, *sim_args, "--seed", str(seed), "--quiet", "-o", traj], log), load)
    row = dict(budget=budget, seed=seed, tool="cgdml", **score(traj, ref, work, log))
    summary = json.loads(model.with_suffix(".json").read_text())
    side = json.loads(traj.with_suffix(".json").read_text())
    chosen = ", ".join(f"{k} {v:g}" for k, v in summary["chosen"].items()
                       if k.startswith(("sigma", "lam")) and not k.endswith("absolute"))
    row.update(fit_s=fit.get("wall_s"), fit_load=fit.get("load"), sim_s=sim.get("wall_s"), sim_load=sim.get("load"),
               detail=f"{summary.get('fit_method', 'default')}: {chosen}", n_blown_up=side["n_blown_up"],
               n_frames=side["n_frames"], settings=side["settings"])
    return row


def peer_task(arch, budget, seed, args, ref, log, load):
    tool = arch + (f"-e{args.fixed_epochs}" if args.fixed_epochs else "")
    work = Path(args.workdir) / f"b{budget}-s{seed}" / tool
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work.parent / "data"
    from cgdml.data import CGDataset
    from cgdml.simulate import DEFAULTS

    ds = CGDataset.load(ref)
    lang = DEFAULTS["langevin"]
    settings = dict(replicas=DEFAULTS["replicas"], steps=DEFAULTS["steps"], burn_in=DEFAULTS["burn_in"],
                    save_every=DEFAULTS["save_every"], dt_ps=lang["dt"], friction_per_ps=lang["friction"],
                    temperature_K=float(ds.temperature))
    if args.quick:
        settings.update(replicas=args.quick_replicas, steps=args.quick_steps, burn_in=args.quick_steps // 5)
    # start frames: random training frames, with the generator cgdml.simulate.start_configurations uses
    pool = np.load(data_dir / "coords.npy")
    pick = np.random.default_rng([seed, 0x5EED]).choice(len(pool), size=settings["replicas"],
                                                        replace=settings["replicas"] > len(pool))
    np.save(work / "x0.npy", pool[pick])
    (work / "sim_in.json").write_text(json.dumps(dict(settings=settings, masses=ds.masses.tolist(),
                                                      x0=str(work / "x0.npy")), indent=1))
    cmd = [args.torch_python, Path(__file__).resolve(), "_peer", "--arch", arch, "--data", data_dir, "--out", work,
           "--seed", seed, "--sim", work / "sim_in.json"] + (["--quick"] if args.quick else []) + \
        (["--fixed-epochs", args.fixed_epochs] if args.fixed_epochs else [])
    env = {"PYTHONPATH": str(args.peer)}
    timed_step(work / "sim.npz", work, "train+simulate", lambda: run(cmd, log, env=env), load)
    traj = work / "traj.h5"
    if not traj.exists():
        import mdtraj as md

        frames = np.load(work / "sim.npz")["frames"]
        xyz = [f[np.isfinite(f).all(axis=(1, 2))] for f in frames]  # replica after replica, as cgdml writes
        dt_frame = settings["save_every"] * settings["dt_ps"]
        skip = settings["burn_in"] // settings["save_every"]
        times = np.concatenate([(skip + np.arange(len(x)) + 1) * dt_frame for x in xyz])
        t = md.Trajectory(np.concatenate(xyz).astype(np.float32), ds.cg_topology.to_mdtraj(), time=times)
        t.save_hdf5(str(work / "traj.tmp.h5"))
        os.replace(work / "traj.tmp.h5", traj)
    row = dict(budget=budget, seed=seed, tool=tool, **score(traj, ref, work, log))
    tr = json.loads((work / "train.json").read_text())
    sm = json.loads((work / "sim.json").read_text())
    both = json.loads((work / "timings.json").read_text()).get("train+simulate", {})
    row.update(fit_s=tr["train_wall_s"], sim_s=sm["sim_wall_s"], fit_load=both.get("load"), sim_load=both.get("load"),
               detail=f"{tr['epochs']} epochs (best {tr['best_epoch']}), val loss {tr['best_val_loss']:.1f}, "
               f"batch {tr['batch']}", n_blown_up=sm["n_blown_up"], n_frames=int(md_frames(work / "sim.npz")),
               settings=sm["settings"], val_loss=tr["best_val_loss"])
    return row


def md_frames(path):
    f = np.load(path)["frames"]
    return np.isfinite(f).all(axis=(2, 3)).sum()


def prepare(args, log, load):
    """The full reference (mapped once) and each budget's seeded random subset of the arrays."""
    work = Path(args.workdir)
    ref = work / "reference" / "cg.npz"
    (work / "reference").mkdir(parents=True, exist_ok=True)
    if not ref.exists():
        run([sys.executable, "-m", "cgdml.map", "--coords", CGNET_DATA / "ala2_coordinates.npy", "--cg-forces",
             CGNET_DATA / "ala2_forces.npy", "--length-unit", "angstrom", "--energy-unit", "kcal/mol", "--beads",
             "ala2-5", "--temperature", "300", "-o", ref], log)
    coords = np.load(CGNET_DATA / "ala2_coordinates.npy")
    forces = np.load(CGNET_DATA / "ala2_forces.npy")
    for b in args.budgets:
        for s in args.seeds:
            d = work / f"b{b}-s{s}" / "data"
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "forces.npy").exists():
                idx = np.sort(np.random.default_rng([s, b]).choice(len(coords), size=min(b, len(coords)),
                                                                   replace=False))
                np.save(d / "coords.npy", coords[idx])
                np.save(d / "forces.npy", forces[idx])
    return ref


def tools_of(rows):
    """cgdml first, then the peers in the order they appear."""
    return ["cgdml"] + [t for t in dict.fromkeys(r["tool"] for r in rows) if t != "cgdml"]


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def report(rows, args, wall, load_start, load_end):
    from _common import Report

    say = Report()
    say(f"# cgdml and a real peer, side by side{' (--quick)' if args.quick else ''}")
    say()
    loads = [r[k] for r in rows for k in ("fit_load", "sim_load") if r.get(k) is not None]
    span = f"; the 1-minute load during the steps was {min(loads):.0f}-{max(loads):.0f}" if loads else ""
    if args.report_only:
        say(f"{time.strftime('%Y-%m-%d')}: the finished steps in {args.workdir}{span} on this 2-core machine. "
            f"`python benchmarks/bench_peers.py {' '.join(args.argv)}`.")
    else:
        say(f"{time.strftime('%Y-%m-%d')}; load average (1/5/15 min) {load_start} at the start, {load_end} at the "
            f"end{span}; wall time {wall / 60:.0f} min with {args.jobs} lanes on this 2-core machine. "
            f"`python benchmarks/bench_peers.py {' '.join(args.argv)}`.")
    say()
    P, sim = PROTOCOL, next((r["settings"] for r in rows if r["tool"] == "cgdml"), {})
    say(f"Protocol. Data: the cgnet alanine dipeptide ({CGNET_DATA}, 10,000 frames, 5 beads, 300 K); each budget's "
        "frames drawn at random (seed = row's seed; the 10,000 budget is every frame). Reference: the full dataset; "
        "js and fes_rmse of the (phi, psi) landscape from `cgdml.fes` against its split-half floor, for both tools "
        "(same command, same reference, same bins and bootstrap). cgdml: `cgdml.map` of the subset's arrays, "
        "`cgdml.fit` with defaults, `cgdml.simulate --seed SEED` with defaults"
        + (f" ({sim.get('replicas')} replicas x {sim.get('steps')} steps of {1000 * sim.get('dt_ps', 0):g} fs "
           f"(GDML force every {sim.get('slow_every')}), burn-in {sim.get('burn_in_steps')} steps, a frame every "
           f"{sim.get('save_every')} steps, friction {sim.get('friction_per_ps')}/ps, {sim.get('temperature_K')} K)"
           if sim else "") + ". "
        f"Peers (cgnet package, torch {args.torch_version}, one thread): {100 * P['val_fraction']:.0f}% of the "
        "budget's frames held out for validation; Adam, learning rate "
        f"{P['lr']:g} cut x{P['lr_factor']} after {P['lr_patience']} epochs without a better validation force "
        f"loss (down to {P['min_lr']:g}); early stopping after {P['patience']} such epochs (at most "
        f"{P['max_epochs']}), keeping the best validation epoch; batches of min({P['batch_max']}, n_train / "
        f"{P['batches_min']}); Lipschitz projection {P['lipschitz']:g} after every step. CGnet: every distance, "
        f"angle and dihedral cos/sin, z-scored, {P['depth']} tanh layers of {P['width']}; CGSchNet: "
        f"{SCHNET['n_blocks']} interaction blocks of {SCHNET['width']}, {SCHNET['n_gaussians']} Gaussians to "
        f"{SCHNET['cutoff']:g} A, {SCHNET['depth']} shifted-softplus layers. Priors: harmonic bonds and angles "
        f"(k = kT / variance of the training split) and a repulsion 1/2 (r_min / r)^{P['rep_exp']} kcal/mol on pairs "
        "three or more bonds apart (r_min: the pair's smallest training distance). Simulation: cgnet's Simulation "
        "with friction and masses (Langevin), cgdml's default replicas, steps, burn-in, save interval, time step "
        "and friction, the dataset's bead masses, start frames drawn from the budget's frames with cgdml's "
        "generator, the full force every step; a replica is cut where a bond exceeds twice the longest training "
        "bond (cgdml's rule). Times: wall seconds on this shared machine (the load column: mean 1-minute load "
        "during the step; the peer's two numbers share one process).")
    say()
    ref_pos = next((r["phi_positive_ref"] for r in rows if r.get("phi_positive_ref") is not None), None)
    say("| budget | seed | tool | js | floor js | js / floor | fes_rmse (kT) | floor (kT) | phi > 0 "
        f"(reference {fmt(None if ref_pos is None else 100 * ref_pos, '.1f')}%) | train / fit (s) | "
        "simulation (s) | load (fit, sim) | blown up | details |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r['budget']} | {r['seed']} | {r['tool']} | {r['js']:.4f} | {r['floor_js']:.4f} | "
            f"{r['js'] / r['floor_js']:.2f} | {r['fes_rmse']:.3f} | {r['floor_rmse']:.3f} | "
            f"{fmt(None if r.get('phi_positive') is None else 100 * r['phi_positive'], '.1f')}% | "
            f"{fmt(r['fit_s'], '.0f')} | "
            f"{fmt(r['sim_s'], '.0f')} | {fmt(r['fit_load'], '.1f')}, {fmt(r['sim_load'], '.1f')} | "
            f"{r['n_blown_up']} | {r['detail']} |")
    say()
    say("Per budget, mean over seeds:")
    say()
    say("| budget | tool | seeds | js | js / floor | fes_rmse (kT) | train / fit (s) | simulation (s) |")
    say("|---|---|---|---|---|---|---|---|")
    for b in args.budgets:
        for tool in tools_of(rows):
            rs = [r for r in rows if r["budget"] == b and r["tool"] == tool]
            if not rs:
                continue
            m = lambda k: float(np.mean([r[k] for r in rs]))  # noqa: E731
            mt = lambda k: None if any(r[k] is None for r in rs) else m(k)  # noqa: E731
            say(f"| {b} | {tool} | {len(rs)} | {m('js'):.4f} | {m('js') / m('floor_js'):.2f} | {m('fes_rmse'):.3f} | "
                f"{fmt(mt('fit_s'), '.0f')} | {fmt(mt('sim_s'), '.0f')} |")
    return say


def figure(rows, args, path):
    """js / floor against the training budget, each tool's seeds as dots and their mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for tool, color in zip(tools_of(rows), ["C0", "C3", "C2", "C1"]):
        rs = [r for r in rows if r["tool"] == tool]
        if not rs:
            continue
        budgets = sorted({r["budget"] for r in rs})
        ax.scatter([r["budget"] for r in rs], [r["js"] / r["floor_js"] for r in rs], color=color, s=18, alpha=0.6)
        ax.plot(budgets, [np.mean([r["js"] / r["floor_js"] for r in rs if r["budget"] == b]) for b in budgets],
                color=color, label=tool, marker="o")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="split-half floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training frames")
    ax.set_ylabel("js / floor of the (phi, psi) landscape")
    ax.set_title("cgnet alanine dipeptide, same Langevin settings", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_peer"]:
        return peer_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 10000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--peers", nargs="+", choices=["cgnet", "cgschnet"], default=["cgnet"])
    p.add_argument("--torch-python", default=TORCH_PYTHON, help="a Python with torch (default: $CGDML_TORCH_PYTHON "
                   "or /work/torch-venv/bin/python)")
    p.add_argument("--peer", default=str(CGNET_PEER), help="folder holding the cgnet package")
    p.add_argument("--workdir", default="/tmp/cgdml-bench-peers")
    p.add_argument("--jobs", type=int, default=2, help="tasks run side by side, one thread each (default 2)")
    p.add_argument("--quick", action="store_true", help="one budget and seed, tiny fits, 20-replica 6 ps runs")
    p.add_argument("--fixed-epochs", type=int, default=None, help="sensitivity variant of the peers: no early "
                   "stopping, train this many epochs and keep the last weights (tool name PEER-eN)")
    p.add_argument("--report-only", action="store_true", help="write the results of the finished steps in "
                   "--workdir, run nothing")
    p.add_argument("--output", default=None, help="results file (default benchmarks/results/bench_peers.md; "
                   "--quick: WORKDIR/bench_peers_quick.md)")
    args = p.parse_args(argv)
    args.argv = argv
    args.quick_steps, args.quick_replicas = 2000, 20
    if args.quick:
        args.budgets, args.seeds = args.budgets[:1], args.seeds[:1]
        args.workdir = args.workdir.rstrip("/") + "-quick"
    why = None if (CGNET_DATA / "ala2_forces.npy").exists() else f"no cgnet data in {CGNET_DATA}"
    if why is None:
        why, args.torch_version = peer_available(args.torch_python, args.peer)
    if why:
        print(f"bench_peers: skipped: {why}")
        return 0
    sys.path.insert(0, str(HERE))
    from _common import load_str

    load_start, t0 = load_str(), time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
    load = LoadSampler()
    ref = prepare(args, log, load)
    tasks, keys = [], []
    for s in args.seeds:  # seed-major: a first seed at every budget before the second
        for b in args.budgets:
            tasks.append(lambda b=b, s=s: cgdml_task(b, s, args, ref, log, load))
            keys.append((b, s, "cgdml"))
            for arch in args.peers:
                tasks.append(lambda b=b, s=s, arch=arch: peer_task(arch, b, s, args, ref, log, load))
                keys.append((b, s, arch + (f"-e{args.fixed_epochs}" if args.fixed_epochs else "")))
    if args.report_only:  # only the (budget, seed, tool) whose score exists; nothing is run
        tasks = [t for t, (b, s, tool) in zip(tasks, keys)
                 if (Path(args.workdir) / f"b{b}-s{s}" / tool / "fes.json").exists()]
    rows, failures = [], []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(t) for t in tasks]
        for f in futures:
            try:
                row = f.result()
                rows.append(row)
                log(f"{row['tool']} budget {row['budget']} seed {row['seed']}: js {row['js']:.4f} "
                    f"(floor {row['floor_js']:.4f}), fes_rmse {row['fes_rmse']:.3f}")
            except Exception as exc:  # keep the other rows; report the failure
                failures.append(str(exc))
                log(f"FAILED: {exc}")
    load.stop()
    order = tools_of(rows)
    rows.sort(key=lambda r: (r["budget"], r["seed"], order.index(r["tool"])))
    (Path(args.workdir) / "rows.json").write_text(json.dumps(rows, indent=1))
    say = report(rows, args, time.perf_counter() - t0, load_start, load_str())
    for msg in failures:
        say(f"- failed: {msg.splitlines()[0]}")
    out = args.output or (str(Path(args.workdir) / "bench_peers_quick.md") if args.quick
                          else str(RESULTS / "bench_peers.md"))
    say.write(out)
    print(f"wrote {out}")
    if not args.quick:
        figure(rows, args, RESULTS / "bench_peers.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
