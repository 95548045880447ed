"""The hyperparameter scores of a fit, as saved in MODEL.json: tables and plots (``python -m cgdml.cvplot``). The
scores are computed by :mod:`cgdml.selection`.

A two-layer fit saves ``cv_scores``: one entry per candidate with ``layer`` (1 or 2), ``sigma``, ``lam``,
``mse`` (the K-fold cross-validation score; for layer 1 extrapolated to the final ensemble size) and
``mse_folds`` (the score of each fold); layer 2 entries also name the layer-1 choice (``sigma1``, ``lam1``)
they were scored on. The score is the held-out mean squared error of the forces projected on the dihedrals
((kJ/mol/rad)^2, ``cv_score = "dihedral"``) or of the bead forces ((kJ/mol/nm)^2, ``"force"``). A Nyström fit
saves ``selection_scores``: ``sigma``, ``lam`` and the hold-out score of each candidate, by its ``cv_score``
(the force MSE in records without one).
"""
from __future__ import annotations

import json
from pathlib import Path

from ._io import CgdmlError, one_line, save_figure
from .selection import best

_SYMBOL = {"sigma": "$\\sigma$", "lam": "$\\lambda$"}
_UNITS = {"dihedral": "dihedral-force MSE (kJ/mol/rad)$^2$", "force": "force MSE (kJ/mol/nm)$^2$"}


def read_fit_record(path):
    """The fit record (a dict) of MODEL.json, or of the MODEL.json beside MODEL.npz (else the model's own info)."""
    path = Path(path)
    if path.suffix == ".npz":
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            path = sidecar
        else:
            from .model import CGModel

            return CGModel.load(path).info
    if not path.exists():
        raise CgdmlError(f"{path}: no such model summary (MODEL.json, written by python -m cgdml.fit)")
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CgdmlError(f"{path}: not a JSON model summary ({type(exc).__name__}: {one_line(exc, 120)})") from None
    if not isinstance(info, dict):
        raise CgdmlError(f"{path}: not a model summary (a JSON object, from python -m cgdml.fit)")
    return info


def score_panels(info, source="the model"):
    """[(title, y label, entries, chosen entry)] for each layer of ``info`` (cv_scores) or its Nyström
    ``selection_scores``; entries are dicts with sigma, lam, mse and optionally mse_folds or mse_se. A record without
    scores is a one-line error."""
    panels = []
    scores = info.get("cv_scores") or []
    unit = _UNITS.get(info.get("cv_score"), "CV score")
    for layer in (1, 2):
        entries = [_entry(e, source) for e in scores if isinstance(e, dict) and e.get("layer") == layer]
        if not entries:
            continue
        title = f"layer {layer}: $\\sigma_{layer}$, $\\lambda_{layer}$"
        first = next(e for e in scores if isinstance(e, dict) and e.get("layer") == layer)
        if layer == 2 and "sigma1" in first:
            title += f" (on layer 1 $\\sigma_1$={first['sigma1']:g}, $\\lambda_1$={first['lam1']:g})"
        panels.append((title, unit, entries, best(entries)))
    selection = info.get("selection_scores") or []
    entries = [_entry(e, source) for e in selection if isinstance(e, dict)]
    if entries:
        params = info.get("params") if isinstance(info.get("params"), dict) else {}
        score = info.get("cv_score") or params.get("cv_score")
        panels.append(("Nyström selection: $\\sigma$, $\\lambda$", _UNITS.get(score, _UNITS["force"]), entries,
                       best(entries)))
    if not panels:
        method = info.get("method", "the fit")
        raise CgdmlError(f"{source}: no hyperparameter scores ({method} saved neither cv_scores nor "
                         "selection_scores: with one sigma and one lam per layer nothing is scored; give grids, "
                         "several candidates of sigma or lam, to the fit)")
    return panels


def _entry(e, source):
    try:
        out = dict(sigma=float(e["sigma"]), lam=float(e["lam"]), mse=float(e["mse"]))
    except (KeyError, TypeError, ValueError):
        raise CgdmlError(f"{source}: damaged score entry {one_line(json.dumps(e), 120)} "
                         "(needs sigma, lam and mse)") from None
    folds = e.get("mse_folds")
    if isinstance(folds, list) and folds:
        out["mse_folds"] = [float(v) for v in folds]
    if isinstance(e.get("mse_se"), (int, float)):
        out["mse_se"] = float(e["mse_se"])  # a hold-out score's standard error: the selection rule uses it
    return out


def format_table(info, source="the model"):
    """The scores as text, one line per candidate, the chosen one of each layer marked with '*'."""
    lines = []
    for title, unit, entries, chosen in score_panels(info, source):
        plain = title.replace("$", "").replace("\\sigma", "sigma").replace("\\lambda", "lam")
        lines.append(f"{plain}; score = {unit.replace('$^2$', '^2')}")
        lines.append(f"  {'sigma':>8} {'lam':>8} {'score':>12}  folds")
        for e in sorted(entries, key=lambda e: (e["sigma"], e["lam"])):
            folds = " ".join(f"{v:.4g}" for v in e.get("mse_folds", []))
            mark = "*" if e is chosen else " "
            lines.append(f"{mark} {e['sigma']:>8g} {e['lam']:>8g} {e['mse']:>12.6g}  {folds}")
    return "\n".join(lines)


def plot_scores(info, path=None, source="the model"):
    """A figure of the scores: for each layer, the score against sigma (a line per lambda) and against lambda (a
    line per sigma), folds as faint dots, the chosen candidate ringed. Saved to ``path`` (png, pdf, svg, ...)
    when given; built without pyplot, so the caller's backend is left alone. Returns the figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    panels = score_panels(info, source)
    fig = Figure(figsize=(10.5, 3.6 * len(panels)))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for row, (title, unit, entries, chosen) in enumerate(panels):
        for col, (x_key, line_key) in enumerate((("sigma", "lam"), ("lam", "sigma"))):
            ax = axes[row, col]
            groups = sorted({e[line_key] for e in entries})
            colours = _colours(len(groups))
            symbol = _SYMBOL[line_key]
            for colour, value in zip(colours, groups):
                line = sorted((e for e in entries if e[line_key] == value), key=lambda e: e[x_key])
                xs = [e[x_key] for e in line]
                ax.plot(xs, [e["mse"] for e in line], "o-", color=colour, ms=4,
                        label=f"{symbol} = {value:g}")
                for e in line:
                    folds = e.get("mse_folds", [])
                    ax.plot([e[x_key]] * len(folds), folds, ".", color=colour, alpha=0.3, ms=3)
            ax.plot([chosen[x_key]], [chosen["mse"]], "o", ms=12, mfc="none", mec="k", mew=1.5, label="chosen")
            ax.set_xscale("log")
            ticks = sorted({e[x_key] for e in entries})
            ax.xaxis.set_major_locator(FixedLocator(ticks))  # the grid values, plainly
            ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
            ax.xaxis.set_minor_locator(NullLocator())
            values = [e["mse"] for e in entries] + [v for e in entries for v in e.get("mse_folds", [])]
            if min(values) > 0 and max(values) / min(values) > 10:
                ax.set_yscale("log")
            ax.set_xlabel(_SYMBOL[x_key] + (" (nm$^{-1}$)" if x_key == "sigma" else ""))
            ax.set_ylabel(unit)
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, ncol=1 + len(groups) // 6)
    summary = "; ".join(f"{_SYMBOL['sigma']}={b['sigma']:g} {_SYMBOL['lam']}={b['lam']:g} ({b['mse']:.4g})"
                     for _, _, _, b in panels)
    fig.suptitle(f"hyperparameter scores of {info.get('method', 'the fit')}: chosen {summary}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, "cgdml.cvplot")   # a score plot (the record lets cvplot -o replace it, and only it)
    return fig


def _colours(n):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.8 * i / max(n - 1, 1)) for i in range(n)] if n > 1 else ["C0"]
