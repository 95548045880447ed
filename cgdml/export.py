"""Export a fitted CG model to OpenMM: ``topology.pdb``, ``system.xml`` and ``README.txt`` (see :mod:`cgdml.openmm`).

    python -m cgdml.export MODEL.npz -o DIR

DIR is created if its parent exists. An existing DIR is written into only when it is empty or holds the
README.txt of an earlier export (its first line says so), never over another tool's files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._cli import ArgumentParser, add_verbosity_arguments, claim_outputs, configure_logging, run_cli
from ._io import CgdmlError, check_own_directory

COMMAND = "cgdml.export"
FILES = ("topology.pdb", "system.xml", "README.txt")


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.export", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.npz, from python -m cgdml.fit)")
    p.add_argument("-o", "--output", required=True, help="directory to write the OpenMM files into "
                   f"({', '.join(FILES)})")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise CgdmlError(f"{out}: exists and is not a directory; give a directory for the OpenMM files")
    if not out.parent.is_dir():
        raise CgdmlError(f"{out}: parent directory {out.parent} does not exist")
    with claim_outputs(COMMAND, [out], inputs=[a.model], temps=[out / f for f in FILES]):
        _check_directory(out)
        from .model import CGModel
        from .openmm import write_openmm

        paths = write_openmm(CGModel.load(a.model), out)
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


def _check_directory(out):
    """Refuse (one line) a non-empty ``out`` without the README.txt of an earlier export."""
    from .openmm import README_TITLE

    def ours(directory):
        try:
            with open(directory / "README.txt", errors="replace") as fh:
                return fh.readline().startswith(README_TITLE)
        except OSError:
            return False

    check_own_directory(out, COMMAND, ours)


def cli():
    """The console script ``cgdml-export`` (setup.cfg): the same command as ``python -m cgdml.export``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
