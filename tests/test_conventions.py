"""Conventions: console scripts beside ``python -m``, and the plot of the cross-validation scores of MODEL.json."""
import configparser
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cgdml import __version__
from cgdml._io import CgdmlError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"cgdml-map": "cgdml.map", "cgdml-fit": "cgdml.fit", "cgdml-simulate": "cgdml.simulate.__main__",
            "cgdml-fes": "cgdml.fes.__main__", "cgdml-export": "cgdml.export",
            "cgdml-reference": "cgdml.reference.__main__", "cgdml-cvplot": "cgdml.cvplot",
            "cgdml-learn": "cgdml.learn.__main__"}


def console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_every_command_has_a_console_script():
    scripts = console_scripts()
    assert {name: target.split(":")[0] for name, target in scripts.items()} == COMMANDS
    for name, target in scripts.items():
        module, function = target.split(":")
        cli = getattr(importlib.import_module(module), function)
        assert callable(cli) and cli.__code__.co_argcount == 0, name
    # and every module that python -m runs is listed
    modules = {str(p.relative_to(ROOT).with_suffix("")).replace("/", ".") for p in (ROOT / "cgdml").rglob("*.py")
               if 'if __name__ == "__main__":' in p.read_text()}
    assert modules == set(COMMANDS.values())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_console_script_runs_the_command(name):
    """The entry point as pip's wrapper calls it (sys.argv[0] the script name): --version, and a usage error as
    one line with exit status 2, as with python -m."""
    module, function = console_scripts()[name].split(":")
    call = f"import sys; sys.argv = [{name!r}] + sys.argv[1:]; from {module} import {function}; {function}()"
    run = subprocess.run([sys.executable, "-c", call, "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and f"cgdml {__version__}" in run.stdout, run.stderr
    run = subprocess.run([sys.executable, "-c", call, "--no-such-option"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr


# ------------------------------------------------------------------------------------------ CV plot
def two_layer_record():
    """A MODEL.json record shaped as cgdml.ensemble writes it: a 3x2 grid for layer 1, 2x2 for layer 2."""
    rng = np.random.default_rng(0)
    scores = []
    for s in (2.0, 4.0, 8.0):
        for lam in (0.3, 3.0):
            mse = 50.0 + (np.log2(s) - 2.0) ** 2 * 10 + lam
            scores.append(dict(layer=1, sigma=s, lam=lam, mse=mse, mse_folds=list(mse + rng.normal(size=4)),
                               mse_cv_ensemble=mse + 1))
    for s in (4.0, 8.0):
        for lam in (0.1, 1.0):
            mse = 40.0 + s + 5 * lam
            scores.append(dict(layer=2, sigma=s, lam=lam, mse=mse, mse_folds=list(mse + rng.normal(size=4)),
                               sigma1=4.0, lam1=0.3, models_per_fold=8))
    return dict(method="two-layer GDML", cv_score="dihedral", cv_scores=scores,
                chosen=dict(sigma1=4.0, lam1=0.3, sigma2=4.0, lam2=0.1))


def test_cvplot_command_plots_and_tabulates_the_two_layer_scores(tmp_path):
    model = tmp_path / "MODEL.json"
    model.write_text(json.dumps(two_layer_record()))
    run = subprocess.run([sys.executable, "-m", "cgdml.cvplot", str(model), "-o", str(tmp_path / "cv.png")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = [line.split() for line in run.stdout.splitlines() if line.startswith("*")]
    assert chosen == [["*", "4", "0.3", "50.3", *chosen[0][4:]], ["*", "4", "0.1", "44.5", *chosen[1][4:]]]
    assert "layer 1: sigma_1, lam_1" in run.stdout and "(kJ/mol/rad)^2" in run.stdout
    # MODEL.npz names its MODEL.json
    (tmp_path / "MODEL.npz").write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "cgdml.cvplot", str(tmp_path / "MODEL.npz"), "-o",
                          str(tmp_path / "cv.pdf")], capture_output=True, text=True)
    assert run.returncode == 0 and (tmp_path / "cv.pdf").read_bytes()[:4] == b"%PDF", run.stderr


def test_cv_plot_shows_every_score_against_sigma_and_lambda():
    from cgdml.selection_report import plot_scores

    record = two_layer_record()
    fig = plot_scores(record)
    axes = fig.axes
    assert len(axes) == 4  # layers 1 and 2, each against sigma and against lambda
    for ax, layer, x_key, line_key in [(axes[0], 1, "sigma", "lam"), (axes[1], 1, "lam", "sigma"),
                                       (axes[2], 2, "sigma", "lam"), (axes[3], 2, "lam", "sigma")]:
        entries = [e for e in record["cv_scores"] if e["layer"] == layer]
        lines = [line for line in ax.lines if line.get_label().startswith("$")]
        assert len(lines) == len({e[line_key] for e in entries})
        for line in lines:
            value = float(line.get_label().split("=")[1])
            want = sorted((e for e in entries if e[line_key] == value), key=lambda e: e[x_key])
            np.testing.assert_allclose(line.get_xdata(), [e[x_key] for e in want])
            np.testing.assert_allclose(line.get_ydata(), [e["mse"] for e in want])
        ringed = [line for line in ax.lines if line.get_label() == "chosen"][0]
        best = min(entries, key=lambda e: e["mse"])
        assert ringed.get_xdata()[0] == best[x_key] and ringed.get_ydata()[0] == best["mse"]
        assert ax.get_xscale() == "log"
    assert "layer 2" in axes[2].get_title() and "4" in axes[2].get_title()


def test_cvplot_nystrom_selection_scores(tmp_path):
    record = dict(method="Nystrom GDML", selection_scores=[
        dict(sigma=s, lam=lam, mse=30.0 + s + lam, cg_iterations=12, fit_s=0.5) for s in (2.0, 4.0, 8.0)
        for lam in (0.3, 1.0, 3.0)])
    model = tmp_path / "nys.json"
    model.write_text(json.dumps(record))
    run = subprocess.run([sys.executable, "-m", "cgdml.cvplot", str(model), "-o", str(tmp_path / "nys.svg")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Nyström selection" in run.stdout and "(kJ/mol/nm)^2" in run.stdout
    assert [line.split()[:4] for line in run.stdout.splitlines() if line.startswith("*")] == \
        [["*", "2", "0.3", "32.3"]]
    assert "<svg" in (tmp_path / "nys.svg").read_text()[:2000]


def test_cvplot_errors_are_one_line(tmp_path):
    (tmp_path / "single.json").write_text(json.dumps(dict(method="single GDML", chosen=dict(sigma=4.0, lam=3.0))))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "damaged.json").write_text(json.dumps(dict(cv_scores=[dict(layer=1, sigma=2.0)])))
    cases = [("single.json", "no hyperparameter scores"), ("bad.json", "not a JSON model summary"),
             ("missing.json", "no such model summary"), ("damaged.json", "damaged score entry")]
    for name, message in cases:
        run = subprocess.run([sys.executable, "-m", "cgdml.cvplot", str(tmp_path / name), "-o",
                              str(tmp_path / "x.png")], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, run.stderr
        assert not (tmp_path / "x.png").exists()
    from cgdml.selection_report import score_panels

    with pytest.raises(CgdmlError, match="give grids"):
        score_panels({"cv_scores": []})


def test_every_command_has_the_common_flags():
    """-v/--verbose, -q/--quiet and --no-progress on every command, read through cgdml._cli."""
    from cgdml._cli import show_progress

    for target in COMMANDS.values():
        parser = importlib.import_module(target).build_parser()
        help_text = parser.format_help()
        for flag in ("-v, --verbose", "-q, --quiet", "--no-progress"):
            assert flag in help_text, (target, flag)
    parser = importlib.import_module("cgdml.export").build_parser()
    for argv, shown in ((["m.npz", "-o", "d"], True), (["m.npz", "-o", "d", "-q"], False),
                        (["m.npz", "-o", "d", "--no-progress"], False), (["m.npz", "-o", "d", "--quiet"], False)):
        assert show_progress(parser.parse_args(argv)) is shown, argv
