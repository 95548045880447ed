"""``python -m cgdml.cvplot``: plot the hyperparameter scores saved in MODEL.json (see :mod:`cgdml.selection_report`).

    python -m cgdml.cvplot MODEL.json -o cv.png      # or MODEL.npz: the MODEL.json beside it

For each layer of a two-layer fit, the cross-validation score against sigma (a line per lambda) and against
lambda (a line per sigma), the folds as faint dots and the chosen candidate ringed; for a Nyström fit, its
selection scores. The scores are printed as a table too. The format follows the suffix of -o (png, pdf, svg).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._cli import (ArgumentParser, add_verbosity_arguments, check_sidecar, configure_logging, refuse_to_overwrite,
                   run_cli)
from ._io import CgdmlError, check_output

COMMAND = "cgdml.cvplot"


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.cvplot", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="MODEL.json (or MODEL.npz) from python -m cgdml.fit")
    p.add_argument("-o", "--output", required=True, help="figure to write (.png, .pdf, .svg)")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    out = Path(a.output)
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise CgdmlError(f"{out}: the figure must end in .png, .pdf, .svg or .jpg")
    check_output(out)
    refuse_to_overwrite([out], [a.model, Path(a.model).with_suffix(".json")])
    check_sidecar(out, COMMAND, out)          # only a score plot that cvplot wrote for this name is replaced
    from .selection_report import format_table, plot_scores, read_fit_record

    info = read_fit_record(a.model)
    print(format_table(info, a.model))
    plot_scores(info, out, a.model)
    print(f"wrote {out}")
    return 0


def cli():
    """The console script ``cgdml-cvplot`` (setup.cfg): the same command as ``python -m cgdml.cvplot``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
