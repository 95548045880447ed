"""The active-learning loop, :func:`active_learn`: fit, simulate, choose, label, join, refit (issue 26).

Round r (directory ``OUT/round_NNN``, each file written atomically, each step skipped on a rerun when its file is
there, so a killed run resumes where it stopped):

1. ``model.npz``: the model fitted to the starting dataset joined with the restrained chunks of rounds < r;
2. ``simulation.npz``: a short simulation of it (``coords``, the frames' ``uncertainty``: the ``score``);
3. stop when the ``quantile`` of that uncertainty is below ``target_uncertainty``, or when the all-atom budget
   cannot pay for one more configuration;
4. ``selected.npz``: the configurations to label (:func:`cgdml.learn.choose.choose_configurations`);
5. ``labels.npz``: their restrained all-atom frames (a :class:`cgdml.data.CGDataset` of weight-0 frames,
   :class:`cgdml.learn.label.RestrainedLabeller`) and ``allatom.npz`` (each configuration's last all-atom frame,
   added to the pool of start structures of later rounds);
6. ``round.json``: the round's record; its presence marks the round done.

``OUT/log.json`` holds the settings and every finished round's record (all-atom ns spent so far, the uncertainty
quantiles, js against a reference when one is given, the configurations' start RMSDs), and the last round's
``model.npz`` is the final model. One line per round goes to the ``cgdml.learn`` logger (or is printed).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .._io import CgdmlError, OutputLock, load_npz, remove_stale_temps, save_json, save_npz
from ..data import CGDataset, dataset_argument
from ..validation import is_positive_number
from .choose import SCORES, choose_configurations, dihedral_uncertainty
from .label import LABEL_DEFAULTS, RestrainedLabeller, check_map_fits

log = logging.getLogger("cgdml.learn")
QUANTILES = (0.5, 0.9, 0.99)
LOOP_DEFAULTS = dict(per_round=8, top_fraction=0.1, quantile=0.9, max_rounds=20, score="force",
                     simulate=dict(replicas=20, steps=12000, save_every=100))
COMMAND = "cgdml.learn"
# settings that must agree between a run directory and a rerun
_IDENTITY = ("budget_ns", "per_round", "top_fraction", "quantile", "target_uncertainty", "seed", "labeller", "simulate",
             "fit", "dataset_frames", "map", "allatom", "score")


def _say(line, progress):
    if logging.getLogger("cgdml").hasHandlers() or not progress:
        log.info(line)
    else:
        from tqdm.auto import tqdm

        tqdm.write(line)


def _fit(fit, dataset, seed, progress):
    """The model of ``dataset``: ``fit`` is None (fit_cg_model with the library defaults), a dict of
    fit_cg_model parameters, a CGEstimator (cloned), or a callable dataset -> CGModel."""
    from sklearn.base import clone

    from ..pipeline import CGEstimator, fit_cg_model

    if fit is None or isinstance(fit, dict):
        params = dict(fit or {})
        params.setdefault("seed", seed)
        params.setdefault("progress", progress)
        return fit_cg_model(dataset, **params)
    if isinstance(fit, CGEstimator):
        return clone(fit).fit(dataset).model_
    if callable(fit):
        return fit(dataset)
    raise CgdmlError(f"fit must be None, a dict of fit_cg_model parameters, a CGEstimator or a callable, got "
                     f"{type(fit).__name__}")


def _fit_record(fit):
    from ..pipeline import CGEstimator

    if fit is None or isinstance(fit, dict):
        return {"fit_cg_model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (fit or {}).items()
                                 if k not in ("progress", "workdir")}}
    if isinstance(fit, CGEstimator):
        return {"estimator": repr(fit)}
    return {"callable": getattr(fit, "__qualname__", type(fit).__name__)}


def _js(reference, coords, topology):
    """Mean js over the headline landscapes of ``coords`` against ``reference`` (and the floor)."""
    import warnings

    from ..fes import compare_landscapes

    with warnings.catch_warnings():      # frames outside the reference's range: expected of early rounds
        warnings.simplefilter("ignore", UserWarning)
        report = compare_landscapes(coords, reference, topology=topology, n_boot=0)
    mean = report.get("mean") or {}
    return float(mean["js"]), float(mean["noise_floor"]["js"])


def active_learn(allatom, cgmap, dataset, outdir, *, budget_ns, target_uncertainty=None,
                 quantile=LOOP_DEFAULTS["quantile"], per_round=LOOP_DEFAULTS["per_round"],
                 top_fraction=LOOP_DEFAULTS["top_fraction"], max_rounds=LOOP_DEFAULTS["max_rounds"], fit=None,
                 simulate=None, labeller=None, reference=None, seed=0, progress=True, score=LOOP_DEFAULTS["score"]):
    """Run (or resume) active learning in ``outdir``; returns the log (dict: settings, rounds, stop reason).

    Parameters
    ----------
    allatom : :class:`cgdml.learn.label.AllAtomReference`, the all-atom system (and the first start structures).
    cgmap : the fitted :class:`cgdml.mapping.CGMap` of ``allatom`` with its force map (the one ``dataset`` was
        mapped with): a map that does not fit the atoms or the dataset's beads is a one-line error.
    dataset : the starting :class:`cgdml.data.CGDataset` (Boltzmann frames, weight 1).
    budget_ns : all-atom ns the loop may spend on restrained labelling (> 0); a round labels only what still fits.
    target_uncertainty : stop when the ``quantile`` of the simulated frames' uncertainty (``score``; kJ/mol/nm or
        kJ/mol/rad) is below it (None: run until the budget or ``max_rounds``).
    per_round, top_fraction : configurations labelled per round, chosen among the top fraction by uncertainty.
    score : which uncertainty ranks the frames and stops the loop: "force" (the RMS force std, kJ/mol/nm) or
        "dihedral" (the generalised force along the soft dihedrals, kJ/mol/rad;
        :func:`cgdml.learn.choose.dihedral_uncertainty`).
    fit : how each round fits (None: :func:`cgdml.pipeline.fit_cg_model` defaults; a dict of its parameters; a
        :class:`cgdml.pipeline.CGEstimator`; a callable dataset -> CGModel).
    simulate : :func:`cgdml.simulate.simulate_model` parameters of each round's short run (default
        ``LOOP_DEFAULTS["simulate"]``; guard off).
    labeller : :class:`cgdml.learn.label.RestrainedLabeller` parameters (default ``LABEL_DEFAULTS``).
    reference : a CGDataset to compute each round's js against (its Boltzmann frames; optional).
    seed : fits, simulations and labelling; progress : bars and one line per round.
    """
    from ..simulate import simulate_model

    dataset = dataset_argument(dataset, "active_learn")
    if not is_positive_number(budget_ns):
        raise CgdmlError(f"the all-atom budget must be a number of ns > 0, got {budget_ns!r}")
    if target_uncertainty is not None and not target_uncertainty > 0:
        raise CgdmlError(f"target_uncertainty must be > 0 kJ/mol/nm, got {target_uncertainty!r}")
    if not 0 < quantile < 1:
        raise CgdmlError(f"quantile must be in (0, 1), got {quantile!r}")
    if not (int(per_round) == per_round and per_round >= 1) or not (int(max_rounds) == max_rounds and max_rounds >= 1):
        raise CgdmlError(f"per_round and max_rounds must be whole numbers >= 1, got {per_round!r}, {max_rounds!r}")
    if score not in SCORES:
        raise CgdmlError(f"unknown score {score!r} (choose {' or '.join(SCORES)})")
    check_map_fits(cgmap, allatom, dataset.system)
    sim = dict(LOOP_DEFAULTS["simulate"], **(simulate or {}))
    lab = dict(LABEL_DEFAULTS, **(labeller or {}))
    labeller_obj = RestrainedLabeller(allatom, cgmap, dataset.system, seed=seed, **lab)
    cost = labeller_obj.ns_per_configuration
    settings = dict(budget_ns=float(budget_ns), per_round=int(per_round), top_fraction=float(top_fraction),
                    quantile=float(quantile), target_uncertainty=target_uncertainty, seed=int(seed),
                    labeller={k: v for k, v in lab.items() if k not in ("platform", "threads")},
                    simulate={k: v for k, v in sim.items() if k not in ("threads", "jobs", "scheduler")},
                    fit=_fit_record(fit), dataset_frames=int(dataset.n_frames), map=str(cgmap.label),
                    allatom=str(Path(allatom.npz).name), ns_per_configuration=cost, command=COMMAND, score=score)
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgdmlError(f"{outdir}: cannot create the output directory ({exc.strerror or exc})") from None
    with OutputLock(outdir):
        remove_stale_temps(outdir)
        _check_settings(outdir / "log.json", settings)
        return _loop(outdir, settings, allatom, dataset, labeller_obj, cost, fit, sim, reference, max_rounds,
                     progress, simulate_model)


def _check_settings(path, settings):
    if not path.exists():
        save_json(path, dict(settings=settings, rounds=[], stopped=None))
        return
    try:
        old = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CgdmlError(f"{path}: not the log of a cgdml.learn run; use a new output directory") from None
    legacy = {"score": "force"}          # logs written before the score option
    diff = [f"{k} {old.get(k, legacy.get(k))!r} vs {settings[k]!r}" for k in _IDENTITY
            if json.loads(json.dumps(old.get(k, legacy.get(k)))) != json.loads(json.dumps(settings[k]))]
    if diff:
        raise CgdmlError(f"{path.parent} holds a run with other settings ({'; '.join(diff)}); use a new output "
                         "directory")


def _loop(outdir, settings, allatom, dataset, labeller, cost, fit, sim, reference, max_rounds, progress,
          simulate_model):
    from ..model import CGModel

    seed, q = settings["seed"], settings["quantile"]
    chunks, pools, rounds, spent, stopped = [], [allatom.positions], [], 0.0, None
    for r in range(int(max_rounds)):
        rdir = outdir / f"round_{r:03d}"
        rdir.mkdir(exist_ok=True)
        done = rdir / "round.json"
        if done.exists():                                    # a finished round: take its record and labels
            record = json.loads(done.read_text())
            rounds.append(record)
            if record.get("stopped"):
                stopped = record["stopped"]
                break
            chunks.append(CGDataset.load(rdir / "labels.npz", allow_all_biased=True))
            pools.append(load_npz(rdir / "allatom.npz", "all-atom frames")["positions"])
            spent = record["allatom_ns_total"]
            continue
        t0 = time.perf_counter()
        data = CGDataset.concatenate([dataset] + chunks, info=dict(dataset.info, active_learning_round=r))
        model_path = rdir / "model.npz"
        if model_path.exists():
            model = CGModel.load(model_path)
        else:
            model = _fit(fit, data, seed + r, progress)
            model.save(model_path)
        sim_path = rdir / "simulation.npz"
        if sim_path.exists():
            z = load_npz(sim_path, "round simulation")
            coords, u = z["coords"], z["uncertainty"]
        else:
            run = simulate_model(model, **dict(dict(guard="off", seed=seed + 1000 * r, progress=progress), **sim))
            coords = np.asarray(run.coordinates(), dtype=np.float64)
            if not len(coords):
                raise CgdmlError(f"round {r}: the simulation of the model kept no frames")
            u = model.force_uncertainty(coords) if settings["score"] == "force" else \
                dihedral_uncertainty(model, coords)
            save_npz(sim_path, coords=coords.astype(np.float32), uncertainty=u)
        quantiles = {f"{p:g}": float(np.quantile(u, p)) for p in sorted(set(QUANTILES) | {q})}
        record = dict(round=r, n_frames=int(data.n_frames), n_restrained=int(data.biased.sum()),
                      uncertainty_quantiles=quantiles, allatom_ns_before=spent)
        if reference is not None:
            record["js"], record["js_floor"] = _js(reference, coords, dataset.cg_topology)
        afford = int(np.floor((settings["budget_ns"] - spent) / cost + 1e-9))
        target = settings["target_uncertainty"]
        if target is not None and quantiles[f"{q:g}"] < target:
            stopped = f"the {q:g} quantile of the force uncertainty is below {target:g} kJ/mol/nm"
        elif afford < 1:
            stopped = f"the all-atom budget of {settings['budget_ns']:g} ns is spent"
        elif r == max_rounds - 1:
            stopped = f"max_rounds ({max_rounds}) reached"
        if stopped:
            record.update(allatom_ns_total=spent, stopped=stopped, wall_s=time.perf_counter() - t0)
            _finish(outdir, rdir, record, rounds, stopped, progress, settings["score"])
            break
        k = min(settings["per_round"], afford)
        sel_path = rdir / "selected.npz"
        if sel_path.exists():
            z = load_npz(sel_path, "selected configurations")
            targets, chosen = z["targets"], z["index"]
        else:
            chosen, _ = choose_configurations(model, coords, k, settings["top_fraction"], uncertainty=u,
                                              score=settings["score"])
            targets = coords[chosen]
            save_npz(sel_path, targets=targets, index=chosen, uncertainty=u[chosen])
        labels_path = rdir / "labels.npz"
        if labels_path.exists():
            chunk = CGDataset.load(labels_path, allow_all_biased=True)
            final = load_npz(rdir / "allatom.npz", "all-atom frames")["positions"]
            configs = json.loads(str(load_npz(rdir / "allatom.npz", "all-atom frames")["configurations"]))
        else:
            labeller.seed = seed + 7 * r + 1
            chunk, rec = labeller.label(targets, np.concatenate(pools), round_index=r, progress=progress)
            final, configs = rec["final_positions"], rec["configurations"]
            save_npz(rdir / "allatom.npz", positions=final.astype(np.float32),
                     configurations=np.array(json.dumps(configs)))
            chunk.save(labels_path)
        ns = len(targets) * cost
        spent += ns
        record.update(n_labelled=int(len(targets)), selected_uncertainty=[float(x) for x in u[chosen]],
                      start_rmsd_nm=[c["start_rmsd_nm"] for c in configs], allatom_ns=ns, allatom_ns_total=spent,
                      wall_s=time.perf_counter() - t0)
        chunks.append(chunk)
        pools.append(final)
        _finish(outdir, rdir, record, rounds, None, progress, settings["score"])
    log_path = outdir / "log.json"
    full = json.loads(log_path.read_text())
    full.update(rounds=rounds, stopped=stopped, final_model=str(outdir / f"round_{rounds[-1]['round']:03d}" /
                                                                 "model.npz") if rounds else None)
    save_json(log_path, full)
    return full


def _finish(outdir, rdir, record, rounds, stopped, progress, score="force"):
    """Write the round's record (marking it done) and the log; say one line."""
    save_json(rdir / "round.json", record)
    rounds.append(record)
    log_path = outdir / "log.json"
    full = json.loads(log_path.read_text())
    full.update(rounds=rounds, stopped=stopped)
    save_json(log_path, full)
    qs = record["uncertainty_quantiles"]
    line = (f"round {record['round']}: {record['n_frames']} frames ({record['n_restrained']} restrained), "
            f"{score} uncertainty median {qs['0.5']:.3g} / q0.9 {qs['0.9']:.3g} "
            f"{'kJ/mol/nm' if score == 'force' else 'kJ/mol/rad'}, all-atom "
            f"{record['allatom_ns_total']:.3g} ns")
    if "js" in record:
        line += f", js {record['js']:.3g} (floor {record['js_floor']:.3g})"
    line += f"; {stopped}" if stopped else f"; labelled {record['n_labelled']}"
    _say(line, progress)
