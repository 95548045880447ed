"""Command-line options of ``python -m cgdml.map`` for inputs from other tools: LAMMPS unit styles, mlcg HDF5
datasets and --force-map taking a .npy matrix (see :mod:`cgdml.io.formats`, :mod:`cgdml.io.mlcg`). Only command
modules import this module, as :mod:`cgdml._cli`.
"""
from __future__ import annotations

from pathlib import Path

from ._io import CgdmlError
from .io.arrays import resolve_beads
from .io.formats import LAMMPS_UNITS
from .io.mlcg import load_mlcg
from .mapping import FORCE_MAPS
from .topology import parse_bonds


def add_force_map_argument(group):
    """--force-map of ``python -m cgdml.map``: slice, aggregate or optimal, or a .npy matrix (checked by
    :func:`check_format_options`)."""
    group.add_argument("--force-map", default="aggregate", metavar="{" + ",".join(FORCE_MAPS) + "} | FILE.npy",
                       help=f"force map: {', '.join(FORCE_MAPS)} (default aggregate), or a .npy matrix (n_beads, "
                            "n_atoms), e.g. from aggforce, checked for consistency with the map")


def add_format_arguments(parser):
    """The ``python -m cgdml.map`` options of this module: --lammps-units and --mlcg/--molecule/--mlcg-forces."""
    g = parser.add_argument_group("other formats")
    g.add_argument("--lammps-units", choices=tuple(LAMMPS_UNITS), default="real",
                   help="LAMMPS unit style of LAMMPS dump forces: real (Å, kcal/mol/Å; default) or metal (Å, eV/Å)")
    g.add_argument("--mlcg", metavar="FILE.h5", help="mlcg-style HDF5 dataset (groups with cg_coords and "
                   "cg_forces or cg_delta_forces), in --length-unit/--energy-unit; names and bonds as for --coords")
    g.add_argument("--molecule", help="the molecule of --mlcg: group path (OPEP/opep_0000) or name")
    g.add_argument("--mlcg-forces", metavar="KEY", default=None,
                   help="forces dataset of --mlcg (default cg_forces, else cg_delta_forces)")
    return parser


def check_format_options(args):
    """One-line errors, before any work, for the options of this module: a --force-map that is neither a built-in
    map nor a .npy file; --mlcg with other inputs; --molecule or --mlcg-forces without --mlcg."""
    value = args.force_map
    if value not in FORCE_MAPS and Path(value).suffix.lower() != ".npy":
        raise CgdmlError(f"--force-map must be {', '.join(FORCE_MAPS)} or a .npy matrix file, got {value!r}")
    if args.mlcg:
        other = [f for f, v in (("--top", args.top), ("--traj", args.traj), ("--forces", args.forces),
                                ("--coords", args.coords), ("--cg-forces", args.cg_forces)) if v]
        if other:
            raise CgdmlError(f"give either --mlcg or {', '.join(other)}, not both")
        if args.map:
            raise CgdmlError("--map maps all-atom data, not the pre-mapped arrays of --mlcg (which take --beads)")
    else:
        given = [f for f, v in (("--molecule", args.molecule), ("--mlcg-forces", args.mlcg_forces)) if v]
        if given:
            raise CgdmlError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --mlcg FILE.h5")


def mlcg_dataset_from_args(args):
    """The :class:`CGDataset` of ``--mlcg`` (with --molecule, --beads, --bonds, units, --temperature, --stride)."""
    if args.stride < 1:
        raise CgdmlError(f"--stride must be >= 1, got {args.stride}")
    names, topology, masses = resolve_beads(args.beads)
    ds = load_mlcg(args.mlcg, args.molecule, forces_key=args.mlcg_forces, length_unit=args.length_unit or "nm",
                   energy_unit=args.energy_unit or "kJ/mol",
                   temperature=300.0 if args.temperature is None else args.temperature,
                   bead_names=names, topology=topology, bonds=parse_bonds(args.bonds) if args.bonds else None,
                   masses=masses, stride=args.stride)
    ds.info["beads"] = args.beads
    return ds
