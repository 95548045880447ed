"""Map all-atom trajectories and forces to a CG dataset (``.npz``, see :meth:`cgdml.data.CGDataset.save`).

    python -m cgdml.map --top TOP --traj TRAJ [TRAJ ...] --forces F [F ...] --map MAP.toml|PRESET \\
        [--force-map slice|aggregate|optimal] [--stride N] [--temperature K] \\
        [--length-unit U --energy-unit U] -o OUT.npz
    python -m cgdml.map --coords C.npy --cg-forces F.npy --length-unit angstrom --energy-unit kcal/mol \\
        [--beads ala2-5] --temperature 300 -o OUT.npz
    python -m cgdml.map --mlcg FILE.h5 --molecule NAME --length-unit angstrom --energy-unit kcal/mol \\
        [--beads NAMES --bonds 0-1,...] --temperature 300 -o OUT.npz

Forces from other engines (AMBER NetCDF .nc, H5MD .h5md, LAMMPS dump .lammpsdump; the extra
cgdml[mdanalysis]) are read through MDAnalysis: give the file as --forces, and as --traj too to take its
positions (see cgdml.io.formats). --force-map also takes a .npy matrix (n_beads, n_atoms), e.g. from aggforce.

With no input at all, the shipped alanine-dipeptide reference (data/) is mapped, with --map or the ala2-5
preset. Trajectories are read chunk by chunk, so their size is not limited by memory. The dataset options live
in :mod:`cgdml._cli`, shared with ``python -m cgdml.fit``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from ._cli import (COUNT_MAX, ArgumentParser, add_dataset_arguments, add_verbosity_arguments, check_stride_frames,
                   check_strided_dataset, check_temperature_option, claim_outputs, configure_logging,
                   dataset_from_args, dataset_summary, int_between, pdb_with_provenance, run_cli, show_progress,
                   stride_option, unit_options)
from ._cli_inputs import add_force_map_argument, add_format_arguments, check_format_options, mlcg_dataset_from_args
from ._io import CgdmlError, atomic_path, check_output
from .io.allatom import count_frames
from .mapping import available_presets, map_allatom

COMMAND = "cgdml.map"


@contextlib.contextmanager
def _one_line_warnings():
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def build_parser():
    p = ArgumentParser(prog="python -m cgdml.map", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    aa = p.add_argument_group("all-atom input")
    aa.add_argument("--top", help="topology (pdb, psf, prmtop, gro, ...)")
    aa.add_argument("--traj", nargs="+", help="trajectories (dcd, xtc, trr, h5, nc, ... or .npy/.npz positions)")
    aa.add_argument("--forces", nargs="+", help="forces, one file per trajectory (.npy, .npz, GROMACS .trr)")
    aa.add_argument("--map", help=f"CG map, required with all-atom input: a TOML file or a preset "
                    f"({', '.join(available_presets())})")
    add_force_map_argument(aa)
    aa.add_argument("--chunk", type=int_between(1, COUNT_MAX, "frames"), default=1000,
                    help="frames read at a time (default 1000; a longer chunk than a file reads the whole file)")
    aa.add_argument("--constraints", choices=("hbonds", "detect", "none"), default="hbonds",
                    help="constrained atom pairs: bonds to H (default), detected from positions, or none")
    add_dataset_arguments(p, positional=False, map_options=False)
    add_format_arguments(p)
    p.add_argument("-o", "--output", required=True, help="CG dataset to write (.npz); its CG topology (.pdb) goes "
                   "beside it")
    add_verbosity_arguments(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    configure_logging(a)
    out = Path(a.output)
    if out.suffix != ".npz":
        raise CgdmlError(f"{out}: the output file must end in .npz")
    check_output(out)
    pdb = out.with_suffix(".pdb")
    with claim_outputs(COMMAND, [out], sidecars={pdb: out}, kinds={out: "dataset"},
                       inputs=[a.top, a.traj, a.forces, a.coords, a.cg_forces, a.map, a.mlcg, a.force_map]):
        check_temperature_option(a)
        check_format_options(a)
        with _one_line_warnings():
            if a.top or a.traj or a.forces:
                missing = [f for f, v in (("--top", a.top), ("--traj", a.traj), ("--forces", a.forces),
                                          ("--map", a.map)) if not v]
                if missing:
                    raise CgdmlError(f"all-atom input needs {', '.join(missing)}")
                if a.coords or a.cg_forces:
                    raise CgdmlError("give either all-atom input (--top ...) or pre-mapped arrays (--coords ...), "
                                     "not both")
                if a.beads or a.bonds:
                    raise CgdmlError("--beads and --bonds describe pre-mapped arrays; with all-atom input the map "
                                     "(--map) gives the beads and bonds")
                if len(a.traj) == 1:
                    check_stride_frames(a, count_frames(a.traj), a.traj[0])
                ds = map_allatom(a.top, a.traj, a.forces, a.map, force_map=a.force_map,
                                 temperature=300.0 if a.temperature is None else a.temperature,
                                 length_unit=unit_options(a)[0], energy_unit=unit_options(a)[1],
                                 stride=stride_option(a),
                                 chunk=a.chunk, constraints=a.constraints, progress=show_progress(a),
                                 lammps_units=a.lammps_units)
            elif a.mlcg:
                ds = mlcg_dataset_from_args(a)
            else:
                ds = dataset_from_args(a)
            check_strided_dataset(a, ds)
        ds.save(out)
        with atomic_path(pdb) as tmp:  # the CG topology, for VMD, PyMOL and fes --top
            tmp.write_text(pdb_with_provenance(ds.cg_topology.to_pdb(ds.coords[0]), COMMAND, out))
    print(f"wrote {out} and {pdb}: {dataset_summary(ds)}; CG topology {ds.cg_topology.describe()}")
    return 0


def cli():
    """The console script ``cgdml-map`` (setup.cfg): the same command as ``python -m cgdml.map``."""
    run_cli(main)


if __name__ == "__main__":
    run_cli(main)
