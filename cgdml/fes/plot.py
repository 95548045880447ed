"""Figures of free-energy landscapes: :func:`plot_landscapes` (one row per :class:`cgdml.fes.cvs.Panel`: CG model |
reference | difference, and the bond and angle distributions), :func:`plot_comparison` (one set of CVs) and
:func:`plot_fes` (one 2D map on an axis).

Free energies are in kT; angles are drawn in degrees. Figures are built without pyplot, so the caller's
matplotlib backend is left alone (in Jupyter, display the returned figure).
"""
from __future__ import annotations


import numpy as np

from .._io import CgdmlError, save_figure
from .cvs import Panel
from .histograms import as_cv_array, bin_counts, bin_index, compare_fes, histogram_fes, histogram_ranges
from .reweight import Z95, as_grid

MAX_DISTRIBUTIONS = 40
NOTE_2D = ("white bins were never visited (difference maps: bins the reference never visits; bins the model "
           "misses count as half a sample)")


def _savefig(fig, path):
    save_figure(fig, path, "cgdml.fes")     # a landscape plot (the record lets fes -o replace it, and only it)


def _is_periodic_edges(e):
    e = np.asarray(e)
    return len(e) > 1 and np.isclose(e[0], -np.pi) and np.isclose(e[-1], np.pi)


def _degree_axis(axis):
    from matplotlib.ticker import FixedLocator

    axis.set_major_locator(FixedLocator([-180, -90, 0, 90, 180]))


def _few_ticks(axis, n=4):
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=n))


def _style_axes(ax, panel_like):
    """Limits, ticks and labels of a landscape axis; ``panel_like`` = (ranges, axis labels, degrees, periodic)
    with one entry per CV (the x axis, and the y axis for 2D)."""
    ranges, labels, degrees, periodic = panel_like
    for d, (axis, setlim, setlabel) in enumerate(((ax.xaxis, ax.set_xlim, ax.set_xlabel),
                                                  (ax.yaxis, ax.set_ylim, ax.set_ylabel))[:len(ranges)]):
        lo, hi = ranges[d]
        f = 180.0 / np.pi if degrees[d] else 1.0
        setlim(lo * f, hi * f)
        setlabel(labels[d])
        if periodic[d]:
            _degree_axis(axis)
        else:
            _few_ticks(axis)
    if len(ranges) == 2 and all(periodic):
        ax.set_aspect("equal")


def plot_fes(F, edges, ax=None, vmax=8.0, title="", labels=None, degrees=None):
    """Draw a 2D free-energy landscape F (bins x, bins y) in kT on ``ax``; returns the image.

    ``edges`` in the histogram's units (radians for dihedrals). ``degrees`` (default: when both axes span
    [-pi, pi), i.e. a Ramachandran map) draws the axes in degrees, -180..180 with ticks every 90. ``labels``
    default to phi/psi (deg) for a Ramachandran map, else "CV 1"/"CV 2". White bins: never visited.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    if degrees is None:
        degrees = all(_is_periodic_edges(e) for e in edges)
    if labels is None:
        labels = (r"$\phi$ (deg)", r"$\psi$ (deg)") if degrees else ("CV 1", "CV 2")
    f = 180.0 / np.pi if degrees else 1.0
    img = ax.pcolormesh(np.asarray(edges[0]) * f, np.asarray(edges[1]) * f, np.ma.masked_invalid(F).T,
                        cmap="viridis", vmin=0, vmax=vmax, shading="flat")
    periodic = [degrees and _is_periodic_edges(e) for e in edges]
    _style_axes(ax, ([(e[0], e[-1]) for e in edges], labels, [degrees] * 2, periodic))
    ax.set_title(title)
    return img


def _difference(panel, edges, offset):
    """F_model - F_reference - offset (kT) on the bins the reference visits (NaN elsewhere); a bin the model
    misses counts as half a sample."""
    shape = [len(e) - 1 for e in edges]
    c_m = bin_counts(panel.model, edges).reshape(shape)
    c_r = bin_counts(panel.reference, edges).reshape(shape)
    f_m = -np.log(np.maximum(c_m, 0.5) / max(c_m.sum(), 1.0))
    with np.errstate(divide="ignore"):
        f_r = -np.log(c_r / c_r.sum())
    return np.where(c_r > 0, f_m - f_r - offset, np.nan)


def _score_title(entry):
    lines = ["CG − reference"]
    if entry and "metrics" in entry:
        m = entry["metrics"]
        lines.append(f"RMSE {m['fes_rmse']:.2f} kT, JS {m['js']:.3f}")
        if entry.get("noise_floor"):
            fl = entry["noise_floor"]
            lines.append(f"(floor {fl['fes_rmse']:.2f} kT, {fl['js']:.3f})")
    return "\n".join(lines)


def _upper_limit(*curves):
    """A y-axis top that shows every finite value of the curves, with a margin."""
    finite = np.concatenate([c[np.isfinite(c)] for c in curves if c is not None] or [np.zeros(0)])
    return 1.08 * float(finite.max()) if len(finite) and finite.max() > 0 else 1.0


def _band(entry):
    """The per-bin arrays of an entry's model band as float arrays (NaN where undefined), or None."""
    band = (entry or {}).get("model_uncertainty")
    if not band:
        return None
    out = {k: (None if v is None else as_grid(v)) for k, v in band["bins"].items() if k != "shape"}
    out["coverage"] = band.get("coverage")
    out["estimator"] = band.get("estimator")
    return out


def _band_title(band):
    order = ", first order" if band.get("estimator") == "first-order" else ""
    lines = [f"model std (kT{order}), median {np.nanmedian(band['model_std']):.2f}"]
    if band.get("sampling_std") is not None:
        lines.append(f"sampling std: median {np.nanmedian(band['sampling_std']):.2f} kT")
    cov = band.get("coverage")
    if cov and cov.get("n_bins"):
        lines.append(f"ref. inside 95% band: {cov['inside']:.0%} of {cov['n_bins']} bins")
    return "\n".join(lines)


def _outside_band(panel, edges, diff, band):
    """Centres (x, y) of the bins with >= min_count reference frames where the reference is outside the band."""
    cov = band.get("coverage") or {}
    counts = bin_counts(panel.reference, edges).reshape(diff.shape)
    std = np.nan_to_num(band["std"], nan=0.0)
    with np.errstate(invalid="ignore"):
        out = (counts >= cov.get("min_count", 1)) & ~(np.abs(diff) <= Z95 * std)
    i, j = np.nonzero(out)
    centres = [0.5 * (e[1:] + e[:-1]) for e in edges]
    return centres[0][i], centres[1][j]


def _draw_panel_row(sub, panel, bins, entry, vmax, ncols):
    """One row (a subfigure): CG | reference | difference (2D), or both F curves | difference (1D); with a model
    band a last column, the per-bin model standard deviation (2D map, 1D curves)."""
    has_ref = panel.reference is not None
    band = _band(entry)
    f = [180.0 / np.pi if d else 1.0 for d in panel.degrees]
    style = (panel.range, panel.axes, panel.degrees, panel.periodic)
    gs = sub.add_gridspec(1, ncols)
    edges = panel.edges(bins)
    inside = (bin_index(panel.model, edges) >= 0).any()
    F_m = histogram_fes(panel.model, bins, panel.range)[0] if inside else None
    F_r = None if not has_ref else histogram_fes(panel.reference, bins, panel.range)[0]
    offset = entry["metrics"]["offset"] if entry and "metrics" in entry else \
        (compare_fes(panel.model, panel.reference, bins, panel.range)["offset"] if has_ref else 0.0)
    diff = _difference(panel, edges, offset) if has_ref else None
    if panel.dim == 2:
        axes = []
        for col, (F, title) in enumerate([(F_m, f"CG model ({len(panel.model)} frames)")]
                                         + ([(F_r, f"reference ({len(panel.reference)} frames)")] if has_ref else [])):
            ax = sub.add_subplot(gs[0, col])
            img = None
            if F is not None:
                img = ax.pcolormesh(edges[0] * f[0], edges[1] * f[1], np.ma.masked_invalid(F).T, cmap="viridis",
                                    vmin=0, vmax=vmax, shading="flat")
            else:
                ax.text(0.5, 0.5, "no model frame\ninside the range", ha="center", va="center",
                        transform=ax.transAxes)
            _style_axes(ax, style)
            ax.set_title(title, fontsize="medium")
            axes.append((ax, img))
        imgs = [im for _, im in axes if im is not None]
        if imgs:
            sub.colorbar(imgs[0], ax=[a for a, _ in axes], label="F (kT)", shrink=0.9)
        if has_ref:
            ax = sub.add_subplot(gs[0, 2])
            img = ax.pcolormesh(edges[0] * f[0], edges[1] * f[1], np.ma.masked_invalid(diff).T, cmap="RdBu_r",
                                vmin=-3, vmax=3, shading="flat")
            _style_axes(ax, style)
            ax.set_title(_score_title(entry), fontsize="medium")
            sub.colorbar(img, ax=ax, label=r"$\Delta F$ (kT)", shrink=0.9)
            if band is not None:
                x, y = _outside_band(panel, edges, diff, band)
                ax.plot(x * f[0], y * f[1], "k.", ms=2.5, label="outside 95% band")
        if band is not None:
            ax = sub.add_subplot(gs[0, ncols - 1])
            ms = band["model_std"]
            top = max(0.5, float(np.nanpercentile(ms, 98))) if np.isfinite(ms).any() else 1.0
            img = ax.pcolormesh(edges[0] * f[0], edges[1] * f[1], np.ma.masked_invalid(ms).T, cmap="magma_r",
                                vmin=0, vmax=top, shading="flat")
            _style_axes(ax, style)
            ax.set_title(_band_title(band), fontsize="medium")
            sub.colorbar(img, ax=ax, label="model std (kT)", shrink=0.9)
        return
    centres = 0.5 * (edges[0][1:] + edges[0][:-1]) * f[0]
    ax = sub.add_subplot(gs[0, 0:2] if has_ref else gs[0, 0])
    for F, label, ls in ((F_m, "CG model", "-"), (F_r, "reference", "--")):
        if F is not None:
            ax.plot(centres, np.where(np.isfinite(F), F, np.nan), drawstyle="steps-mid", ls=ls, label=label)
    if band is not None and F_m is not None:
        half = Z95 * band["std"]
        ax.fill_between(centres, F_m - half, F_m + half, step="mid", color="tab:blue", alpha=0.25, lw=0,
                        label="95% band (sampling and model)")
    _style_axes(ax, style)
    top = _upper_limit(F_m, F_r)
    ax.set_ylim(-0.03 * top, top)
    ax.set_ylabel("F (kT)")
    ax.legend(fontsize="small")
    ax.set_title(f"F = −kT ln p ({len(panel.model)} CG frames" + (f", {len(panel.reference)} reference)"
                                                                  if has_ref else ")"), fontsize="medium")
    if has_ref:
        ax = sub.add_subplot(gs[0, 2])
        ax.bar(centres, diff, width=(edges[0][1] - edges[0][0]) * f[0], color="tab:purple")
        ax.axhline(0, color="k", lw=0.5)
        _style_axes(ax, style)
        if band is not None:
            ax.errorbar(centres, diff, yerr=Z95 * band["std"], fmt="none", ecolor="k", elinewidth=0.6, capsize=0)
        reach = _upper_limit(np.abs(diff) + (0 if band is None else Z95 * np.nan_to_num(band["std"])))
        ax.set_ylim(-reach, reach)
        ax.set_ylabel(r"$\Delta F$ (kT)")
        ax.set_title(_score_title(entry), fontsize="medium")
    if band is not None:
        ax = sub.add_subplot(gs[0, ncols - 1])
        for key, label, ls in (("model_std", "model", "-"), ("sampling_std", "sampling", "--"),
                               ("std", "both", ":")):
            if band.get(key) is not None:
                ax.plot(centres, band[key], drawstyle="steps-mid", ls=ls, label=label)
        _style_axes(ax, style)
        ax.set_ylim(0, _upper_limit(band["std"]))
        ax.set_ylabel("std of F (kT)")
        ax.legend(fontsize="small")
        ax.set_title(_band_title(band), fontsize="medium")


def _draw_distributions(fig, distributions, ncols):
    shown = list(distributions)[:MAX_DISTRIBUTIONS]
    nrows = -(-len(shown) // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(shown):
            ax.set_visible(False)
            continue
        label, model_vals, ref_vals = shown[k]
        allv = np.concatenate([np.ravel(model_vals)] + ([np.ravel(ref_vals)] if ref_vals is not None else []))
        allv = allv[np.isfinite(allv)]
        lo, hi = np.percentile(allv, [0.1, 99.9]) if len(allv) else (0.0, 1.0)
        if hi - lo <= 1e-6 * max(1.0, abs(hi)):                  # (nearly) constant: a narrow window
            half = 0.5 * max(abs(hi) * 0.01, 1e-3)
            lo, hi = lo - half, hi + half
        e = np.linspace(lo, hi, 60)
        ax.hist(np.ravel(model_vals), e, density=True, histtype="step", label="CG model")
        if ref_vals is not None:
            ax.hist(np.ravel(ref_vals), e, density=True, histtype="step", label="reference")
        ax.set_xlabel(label, fontsize="small")
        _few_ticks(ax.xaxis, 3)
        _few_ticks(ax.yaxis, 4)
        ax.tick_params(labelsize="small")
        if k % ncols == 0:
            ax.set_ylabel("probability density", fontsize="small")
        if k == 0:
            ax.legend(fontsize="x-small")
    title = "bond and angle distributions of the CG topology"
    if len(distributions) > len(shown):
        title += f" (the first {len(shown)} of {len(distributions)})"
    fig.suptitle(title, fontsize="medium")


def plot_landscapes(path, panels, bins=36, results=None, distributions=None, vmax=8.0):
    """Save (atomically) and return a figure with one row per :class:`Panel`, titled with its label: CG model |
    reference | difference (offset removed, titled with the metric and its noise floor), axes in degrees for
    angles; 1D panels show both F curves and the difference. ``results``: the scores to show, the output of
    :func:`cgdml.fes.compare.compare_panels` (:func:`cgdml.fes.compare.compare_landscapes` passes them); without
    them the titles carry none. ``distributions`` = [(label, model_values, ref_values), ...] adds 1D histograms
    below (see :func:`cgdml.fes.cvs.topology_distributions`)."""
    from matplotlib.figure import Figure

    panels = list(panels)
    if not panels:
        raise CgdmlError("no landscape to plot")
    has_ref = any(p.reference is not None for p in panels)
    entries = (results or {}).get("panels") or [None] * len(panels)
    has_band = any(e and "model_uncertainty" in e for e in entries)
    ncols = (3 if has_ref else 1) + has_band
    distributions = list(distributions or [])
    n_dist = min(len(distributions), MAX_DISTRIBUTIONS)
    dcols = 4 if has_ref else 3
    drows = -(-n_dist // dcols) if n_dist else 0
    width = (14.0 if has_ref else max(6.0, 2.9 * dcols if drows else 6.0)) + 4.7 * has_band
    titled = len(panels) > 1 or bool(panels[0].label)
    h_top, h_bottom = (4.2 + 0.3 * titled) * len(panels) + 0.6, 2.6 * drows + 0.4 * bool(drows)
    fig = Figure(figsize=(width, h_top + h_bottom), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[h_top, h_bottom]) if drows else (fig, None)
    rows = top.subfigures(len(panels), 1, squeeze=False).ravel()
    for k, (sub, panel, entry) in enumerate(zip(rows, panels, entries)):
        _draw_panel_row(sub, panel, bins, entry, vmax, ncols)
        if titled:
            sub.suptitle(f"{k + 1}. {panel.label}" if len(panels) > 1 else panel.label, fontsize="large",
                         fontweight="bold", x=0.01, ha="left")
    head = ["Free energy F = −kT ln p"]
    if results and results.get("mean") and len(panels) > 1:
        m = results["mean"]
        head[0] += (f"; mean over {m['n_panels']} landscapes: RMSE {m['fes_rmse']:.2f} kT, JS {m['js']:.3f} "
                    f"(floor {m['noise_floor']['fes_rmse']:.2f} kT, {m['noise_floor']['js']:.3f})")
    if any(p.dim == 2 for p in panels):
        head.append(NOTE_2D if has_ref else "white bins were never visited")
    top.suptitle("\n".join(head), fontsize="medium")
    if bottom is not None:
        _draw_distributions(bottom, distributions, dcols)
    _savefig(fig, path)
    return fig


def plot_comparison(path, cv_model, cv_ref=None, bins=36, range=None, metrics=None, floor=None,
                    distributions=None, vmax=8.0):
    """Save a figure (atomically) and return it: model FES, and with a reference the reference FES and the
    offset-removed difference map of one set of CVs (n,) or (n, 2) rad; ``range`` defaults to [-pi, pi) (a
    Ramachandran map, drawn in degrees). ``distributions`` = [(label, model_values, ref_values), ...] adds 1D
    histograms. For several residues or CV sets see :func:`plot_landscapes`."""
    cv_model = as_cv_array(cv_model)
    dim = cv_model.shape[1]
    ranges = histogram_ranges(range, dim)
    periodic = [np.isclose(lo, -np.pi) and np.isclose(hi, np.pi) for lo, hi in ranges]
    if range is None and dim == 2:
        axes = [r"$\phi$ (deg)", r"$\psi$ (deg)"]
        names = ["phi", "psi"]
    else:
        names = [f"CV {d + 1}" for d in np.arange(dim)]
        axes = [f"{n} (deg)" if p else n for n, p in zip(names, periodic)]
    panel = Panel("", cv_model, cv_ref, ranges, names, axes, periodic, periodic)
    results = None
    if cv_ref is not None:
        entry = {"metrics": metrics or compare_fes(cv_model, cv_ref, bins, range)}
        if floor:
            entry["noise_floor"] = floor
        results = {"panels": [entry], "mean": None}
    return plot_landscapes(path, [panel], bins, results, distributions, vmax)
