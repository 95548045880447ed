"""Map all-atom trajectories and forces to a CG dataset (``.npz``, see :meth:`cgdml.data.CGDataset.save`).

    python -m cgdml.map --top TOP --traj TRAJ [TRAJ ...] --forces F [F ...] --map MAP.toml|PRESET \\
        [--force-map slice|aggregate|optimal] [--stride N] [--temperature K] \\
        [--length-unit U --energy-unit U] -o OUT.npz
    python -m cgdml.map --coords C.npy --cg-forces F.npy --length-unit angstrom --energy-unit kcal/mol \\
        [--beads ala2-5] --temperature 300 -o OUT.npz

With no input at all, the shipped alanine-dipeptide reference (data/) is mapped. Trajectories are read
chunk by chunk, so their size is not limited by memory. :func:`add_dataset_arguments` and
:func:`dataset_from_args` are shared with ``python -m cgdml.fit``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np

from ._io import ArgumentParser, CgdmlError, check_output, numpy_file_kind, run_cli
from .data import CGDataset, check_finite, load_default_cg_dataset
from .mapping import FORCE_MAPS, available_presets, map_allatom, preset_map


def add_dataset_arguments(parser, positional=True):
    """Add the options that name a CG dataset: a saved DATASET.npz (positional, optional), pre-mapped
    arrays (--coords, --cg-forces, --beads), their units and temperature, and --map/--force-map/--stride
    for the shipped reference used when nothing else is given."""
    if positional:
        parser.add_argument("dataset", nargs="?", default=None,
                            help="CG dataset .npz (from python -m cgdml.map); default: the shipped reference")
    g = parser.add_argument_group("pre-mapped arrays")
    g.add_argument("--coords", help="CG coordinates (n_frames, n_beads, 3), .npy or .npz")
    g.add_argument("--cg-forces", help="CG forces (n_frames, n_beads, 3), .npy or .npz")
    g.add_argument("--beads", default=None,
                   help=f"map preset whose CG topology the arrays follow ({', '.join(available_presets())}) "
                        "or comma-separated bead names")
    g.add_argument("--length-unit", default="nm", help="length unit of the inputs: nm (default), angstrom, pm")
    g.add_argument("--energy-unit", default="kJ/mol", help="energy unit of the inputs: kJ/mol (default), kcal/mol, eV, kT")
    g.add_argument("--temperature", type=float, default=None, help="K (default: from the data, else 300)")
    g.add_argument("--map", default=None,
                   help=f"map: TOML file or preset ({', '.join(available_presets())}); default ala2-5")
    g.add_argument("--force-map", choices=FORCE_MAPS, default="aggregate", help="force map (default aggregate)")
    g.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1)")
    return parser


def _load_array(path, what):
    path = Path(path)
    if not path.exists():
        raise CgdmlError(f"{path}: no such {what} file")
    if path.is_file() and numpy_file_kind(path) is None:
        raise CgdmlError(f"{path}: not a readable {what} array (neither .npy nor .npz content)")
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.ndarray):
            return z
        with z:
            if len(z.files) != 1:
                raise CgdmlError(f"{path}: expected one array, found {', '.join(z.files) or 'none'}")
            return z[z.files[0]]
    except CgdmlError:
        raise
    except Exception as exc:
        raise CgdmlError(f"{path}: not a readable {what} array ({type(exc).__name__}: {exc})") from None


def _stride(args):
    if args.stride < 1:
        raise CgdmlError(f"--stride must be >= 1, got {args.stride}")
    return args.stride


def _check_temperature(args):
    if args.temperature is not None and not args.temperature > 0:
        raise CgdmlError(f"--temperature must be > 0 K, got {args.temperature:g}")


def dataset_from_args(args):
    """The :class:`CGDataset` named by options from :func:`add_dataset_arguments`."""
    stride = _stride(args)
    _check_temperature(args)
    dataset_path = getattr(args, "dataset", None)
    if dataset_path and (args.coords or args.cg_forces):
        raise CgdmlError("give either a dataset file or --coords/--cg-forces, not both")
    if dataset_path:
        ds = CGDataset.load(dataset_path)
        if args.temperature is not None and abs(args.temperature - ds.temperature) > 1e-9:
            raise CgdmlError(f"{dataset_path}: dataset is at {ds.temperature:g} K, not {args.temperature:g} K")
        return ds.subset(slice(None, None, stride)) if stride > 1 else ds
    if args.coords or args.cg_forces:
        if not (args.coords and args.cg_forces):
            raise CgdmlError("--coords and --cg-forces go together")
        from .units import energy_factor, length_factor

        length_factor(args.length_unit)
        energy_factor(args.energy_unit, 300.0 if args.temperature is None else args.temperature)
        coords = _load_array(args.coords, "coordinates")
        forces = _load_array(args.cg_forces, "forces")
        for path, array, what in ((args.coords, coords, "coordinates"), (args.cg_forces, forces, "forces")):
            if array.ndim != 3 or array.shape[2] != 3:
                raise CgdmlError(f"{path}: {what} must have shape (n_frames, n_beads, 3), got {array.shape}")
        if forces.shape != coords.shape:
            raise CgdmlError(f"{args.cg_forces}: forces shaped {forces.shape} do not match the coordinates "
                             f"{args.coords} shaped {coords.shape}")
        check_finite(coords, "coordinates", str(args.coords))
        check_finite(forces, "forces", str(args.cg_forces))
        coords, forces = coords[::stride], forces[::stride]
        topology = masses = names = None
        if args.beads in available_presets():
            cgmap = preset_map(args.beads)
            topology, masses = cgmap.cg_topology_, cgmap.masses_
            if coords.ndim == 3 and coords.shape[1] != cgmap.n_beads:
                raise CgdmlError(f"{args.coords}: {coords.shape[1]} beads but preset {args.beads} has {cgmap.n_beads}")
        elif args.beads:
            names = [b.strip() for b in args.beads.split(",")]
        info = {"source": {"coords": str(args.coords), "forces": str(args.cg_forces)}, "beads": args.beads}
        try:
            return CGDataset.from_arrays(coords, forces, length_unit=args.length_unit, energy_unit=args.energy_unit,
                                         temperature=300.0 if args.temperature is None else args.temperature,
                                         bead_names=names, topology=topology, info=info, masses=masses)
        except CgdmlError as exc:
            raise CgdmlError(f"{args.coords}: {exc}") from None
    ds = load_default_cg_dataset(map=args.map or "ala2-5", force_map=args.force_map, stride=stride)
    if args.temperature is not None and abs(args.temperature - ds.temperature) > 1e-9:
        raise CgdmlError(f"the shipped reference is at {ds.temperature:g} K, not {args.temperature:g} K")
    return ds


def summary(dataset):
    """One line: frames, beads, force map and mapped mean squared force per bead ((kJ/mol/nm)^2)."""
    msf = (dataset.forces ** 2).mean(axis=(0, 2))
    per_bead = " ".join(f"{n}:{v:.4g}" for n, v in zip(dataset.bead_names, msf))
    fm = dataset.info.get("force_map", "pre-mapped")
    return (f"{dataset.n_frames} frames, {dataset.n_beads} beads, {dataset.temperature:g} K, force map {fm}; "
            f"mean squared force per bead (kJ/mol/nm)^2: {per_bead} (mean {msf.mean():.4g})")


@contextlib.contextmanager
def _one_line_warnings():
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv=None):
    p = ArgumentParser(prog="python -m cgdml.map", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    aa = p.add_argument_group("all-atom input")
    aa.add_argument("--top", help="topology (pdb, psf, prmtop, gro, ...)")
    aa.add_argument("--traj", nargs="+", help="trajectories (dcd, xtc, trr, h5, nc, ... or .npy/.npz positions)")
    aa.add_argument("--forces", nargs="+", help="forces, one file per trajectory (.npy, .npz, GROMACS .trr)")
    aa.add_argument("--chunk", type=int, default=1000, help="frames read at a time (default 1000)")
    aa.add_argument("--constraints", choices=("hbonds", "detect", "none"), default="hbonds",
                    help="constrained atom pairs: bonds to H (default), detected from positions, or none")
    add_dataset_arguments(p, positional=False)
    p.add_argument("-o", "--output", required=True, help="CG dataset to write (.npz)")
    a = p.parse_args(argv)
    out = Path(a.output)
    if out.suffix != ".npz":
        raise CgdmlError(f"{out}: the output file must end in .npz")
    check_output(out)
    _check_temperature(a)
    with _one_line_warnings():
        if a.top or a.traj or a.forces:
            missing = [f for f, v in (("--top", a.top), ("--traj", a.traj), ("--forces", a.forces), ("--map", a.map))
                       if not v]
            if missing:
                raise CgdmlError(f"all-atom input needs {', '.join(missing)}")
            if a.coords or a.cg_forces:
                raise CgdmlError("give either all-atom input (--top ...) or pre-mapped arrays (--coords ...), not both")
            ds = map_allatom(a.top, a.traj, a.forces, a.map, force_map=a.force_map,
                             temperature=300.0 if a.temperature is None else a.temperature,
                             length_unit=a.length_unit, energy_unit=a.energy_unit, stride=_stride(a),
                             chunk=a.chunk, constraints=a.constraints)
        else:
            ds = dataset_from_args(a)
    ds.save(out)
    print(f"wrote {out}: {summary(ds)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
