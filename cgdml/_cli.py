"""Command-line plumbing shared by the command modules (``python -m cgdml.map``, ``fit``, ``simulate``, ``fes``,
``reference``): argument parsing whose errors are one line, the wrapper that turns a :class:`CgdmlError` into one
stderr line and exit status 2, logging levels, and the options that name a CG dataset.

Only command modules import this module.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np

from ._interrupt import MESSAGE as INTERRUPTED, STATUS as INTERRUPT_STATUS, quit_on_interrupt, raise_on_interrupt
from ._io import (FIGURE_FORMATS, CgdmlError, OutputLock, figure_owner, numpy_file_kind, one_line,
                  remove_stale_temps)
from .data import CGDataset
from .io.allatom import count_frames
from .io.arrays import load_cg_arrays
from .io.shipped import default_dataset_paths
from .mapping import FORCE_MAPS, available_presets, load_default_cg_dataset


# ------------------------------------------------------------------------------------------------ numbers
# argparse ``type=`` functions: a bad value is one line that names the option ("argument --dt: must be ...").

def _number(text, kind=float):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def finite_float(text):
    """A finite real number (``inf`` and ``nan`` refused)."""
    return _number(text)


def positive_float(text):
    """A finite number > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def nonnegative_float(text):
    """A finite number >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_int(text):
    """An integer >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


SEED_MAX = 2 ** 32 - 1     # seeds are 32-bit unsigned integers (numpy takes more, OpenMM a C int: see reference)


def seed_int(text):
    """A random seed: an integer from 0 to 2^32 - 1 (numpy refuses negative seeds)."""
    return int_between(0, SEED_MAX, "a 32-bit seed")(text)


def int_between(low, high, why=""):
    """An argparse type: an integer from ``low`` to ``high`` (both included); ``why`` says where the upper bound
    comes from (shown when it is exceeded)."""
    def check(text):
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}{f' ({why})' if why else ''}, got {value}")
        return value
    return check


def float_between(low, high, why="", low_open=False):
    """An argparse type: a finite number from ``low`` (excluded with ``low_open``) to ``high`` (included); ``why``
    says where the upper bound comes from (shown when it is exceeded)."""
    def check(text):
        value = _number(text)
        if (value <= low) if low_open else (value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}{f' ({why})' if why else ''}, got {text!r}")
        return value
    return check


def cpu_count():
    """CPUs this process may use (its affinity mask where the system has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_int(text):
    """Threads: an integer from 1 to the machine's CPUs (more only slow the run down)."""
    return int_between(1, cpu_count(), "the CPUs of this machine")(text)


def jobs_int(text):
    """Local processes: 1 to the machine's CPUs, or -n for all CPUs but n - 1 (joblib's convention)."""
    n = cpu_count()
    value = int_between(-n, n, "the CPUs of this machine")(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1 (or negative: all CPUs but |n| - 1), got '0'")
    return value


COUNT_MAX = 10 ** 9   # replicas, steps, frames: beyond this a run takes years; memory is estimated separately


_REST_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?: <[^>]*>)?`")


def plain_text(text):
    """``text`` without reST markup: :func:`x` and ``x`` become x (for --help, which is not rendered)."""
    return _REST_ROLE.sub(r"\1", text).replace("``", "")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors raised as :class:`CgdmlError` (one line on stderr, exit 2) instead of usage text.

    Every ``type=float`` option takes finite numbers only (``inf`` and ``nan`` are refused, naming the option:
    argparse's type registry maps ``float`` to :func:`finite_float`), the --help text is shown without reST
    markup, and every command has ``--version``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from . import __version__

        self.register("type", float, finite_float)
        self.add_argument("--version", action="version", version=f"%(prog)s (cgdml {__version__})")

    def error(self, message):
        # "argument -o/--output: must be ..." (from the type functions above) reads "--output must be ..."
        message = re.sub(r"^argument (?:-\w/)?(\S+): (must be .*)", r"\1 \2", message)
        raise CgdmlError(f"{message} (see {self.prog} --help)")

    def format_help(self):
        return plain_text(super().format_help())

    def format_usage(self):
        return plain_text(super().format_usage())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {one_line(message)}", file=sys.stderr if file is None else file)


def run_cli(main, argv=None):
    """Run ``main(argv)`` as a command: user errors become one stderr line and a non-zero exit.

    Warnings are shown as one ``warning: ...`` line each (no source line, no file name).
    """
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    raise_on_interrupt()       # Ctrl-C in main: KeyboardInterrupt, so that cleanups run (see cgdml._interrupt)
    try:
        status = main(argv)
    except CgdmlError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as exc:  # disk full, permission denied, ...
        if _from_interrupt(exc):
            _interrupted()
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {name}{one_line(exc.strerror or exc)}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if _from_interrupt(exc):
            _interrupted()
        raise
    finally:
        warnings.showwarning = shown
        quit_on_interrupt()    # Ctrl-C during shutdown (exit hooks): the same line and status, no traceback
    sys.exit(status or 0)


def _from_interrupt(exc):
    """Whether ``exc`` was caused by a Ctrl-C: a KeyboardInterrupt in its chain of causes. Compiled code turns one
    raised inside it into another error ("SystemError: CPUDispatcher(...) returned a result with an exception
    set" from numba)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted():
    quit_on_interrupt()        # a second Ctrl-C while this one is reported changes nothing
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(INTERRUPT_STATUS)


def refuse_to_overwrite(outputs, inputs):
    """The one rule for every command: none of its outputs (sidecars included) may be one of its inputs.

    ``outputs`` and ``inputs`` are paths (None and lists of paths allowed); a clash is a one-line error.
    """
    def flat(paths):
        for p in paths:
            if isinstance(p, (list, tuple)):
                yield from flat(p)
            elif p:
                yield Path(p)

    given = {p.resolve(): p for p in flat(inputs)}
    for out in flat(outputs):
        if out.resolve() in given:
            raise CgdmlError(f"{out}: this output would overwrite the input {given[out.resolve()]}; "
                             "choose another output name")


# ------------------------------------------------------------------------------------------------ outputs
# The one rule, enforced here for every command: no output (sidecars included) is one of the command's inputs,
# and no command writes over a file that another cgdml command (or anything else) wrote for a different output.

PROVENANCE_KEY = "written_by"
_PDB_MARK = "REMARK 999 cgdml written_by "


def written_by(command, output):
    """The provenance record that every JSON sidecar carries: ``{"command": "cgdml.fit", "output": "m.npz"}``."""
    return {"command": command, "output": Path(output).name}


def with_provenance(obj, command, output):
    """``obj`` (a dict for a JSON file) with its provenance record first."""
    return {PROVENANCE_KEY: written_by(command, output), **{k: v for k, v in obj.items() if k != PROVENANCE_KEY}}


def pdb_with_provenance(text, command, output):
    """PDB text with a REMARK line that records the command and the output it was written for."""
    return _PDB_MARK + json.dumps(written_by(command, output)) + "\n" + text


def _legacy_owner(path, data):
    """(command, output) of a JSON file an earlier cgdml wrote without a provenance record, else None."""
    if {"trajectory", "settings", "frames_per_replica"} <= data.keys() and isinstance(data["trajectory"], str):
        return "cgdml.simulate", data["trajectory"]
    if {"method", "chosen", "data", "timings"} <= data.keys():
        return "cgdml.fit", path.with_suffix(".npz").name
    if {"trajectories", "panels", "cv"} <= data.keys():
        return "cgdml.fes", path.name
    return None


def owner_of(path):
    """(command, output) recorded in a cgdml JSON or PDB file at ``path``, else None (a foreign file)."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") in FIGURE_FORMATS:
        return figure_owner(path)
    try:
        if path.suffix.lower() == ".pdb":
            with open(path, errors="replace") as fh:
                head = [fh.readline() for _ in range(3)]
            record = next((ln[len(_PDB_MARK):] for ln in head if ln.startswith(_PDB_MARK)), None)
            data = json.loads(record) if record else None
        else:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and PROVENANCE_KEY not in data:
                return _legacy_owner(path, data)
            data = data.get(PROVENANCE_KEY) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("command"), str) and isinstance(data.get("output"), str):
        return data["command"], data["output"]
    return None


_ROLE = {("cgdml.fit", ".json"): "fit summary", ("cgdml.simulate", ".json"): "sidecar",
         ("cgdml.fes", ".json"): "metrics", ("cgdml.reference", ".json"): "run settings"}


_FIGURE_ROLE = {"cgdml.fes": "landscape plot", "cgdml.cvplot": "score plot"}


def check_sidecar(path, command, output):
    """Refuse (one line) to replace ``path`` unless it is absent or was written by ``command`` for ``output``."""
    path, output = Path(path), Path(output)
    if not path.exists():
        return
    if path.is_dir():
        raise CgdmlError(f"{path}: is a directory; this run would write its {path.suffix[1:]} file there; "
                         "move it or choose another output name")
    owner = owner_of(path)
    if owner == (command, output.name):
        return
    if owner is None:
        raise CgdmlError(f"{path}: exists and was not written by {command} for {output.name}; this run would "
                         f"replace it: move or delete it, or choose another output name")
    role = _ROLE.get((owner[0], path.suffix.lower()), "CG topology" if path.suffix.lower() == ".pdb" else
                     _FIGURE_ROLE.get(owner[0], "figure") if path.suffix.lower().lstrip(".") in FIGURE_FORMATS else "file")
    raise CgdmlError(f"{path}: would overwrite the {role} of {owner[1]} (written by {owner[0]}); choose another "
                     f"output name (or delete {path})")


def _npz_kind(path):
    """What a cgdml ``.npz`` holds: "model", "dataset", "checkpoint" or None (not a cgdml file)."""
    if numpy_file_kind(path) != "npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "kind" in files:
                return "model" if str(z["kind"]) == "cgdml.CGModel" else None
    except Exception:
        return None
    if {"settings_json", "positions", "rng_state"} <= files:
        return "checkpoint"
    if {"coords", "forces", "bead_names"} <= files:
        return "dataset"
    return None


_KIND_NAME = {"model": "a cgdml model", "dataset": "a CG dataset", "checkpoint": "a simulation checkpoint"}


def check_main_output(path, kind):
    """Refuse to replace an existing output that does not hold ``kind``: "model" or "dataset" (an ``.npz`` that
    holds one), or "trajectory" (one whose JSON sidecar says cgdml.simulate wrote it)."""
    path = Path(path)
    if not path.exists():
        return
    if kind == "trajectory":
        side = path.with_suffix(".json")
        if owner_of(side) != ("cgdml.simulate", path.name):
            raise CgdmlError(f"{path}: exists, and no sidecar {side} says cgdml.simulate wrote it; this run would "
                             "replace it: move or delete it, or choose another output name")
        return
    found = _npz_kind(path) if path.is_file() else None
    if found != kind:
        what = _KIND_NAME.get(found, "not a file cgdml writes")
        raise CgdmlError(f"{path}: exists and is {what}, not {_KIND_NAME[kind]}; this run would replace it: "
                         "move or delete it, or choose another output name")


@contextlib.contextmanager
def claim_outputs(command, outputs, *, inputs=(), sidecars=None, reserved=None, kinds=None, temps=()):
    """Check and lock the outputs of one run of ``command``, for the block that writes them.

    - ``outputs``: the files (or directories) the run writes, first the main one; none may be an input
      (:func:`refuse_to_overwrite`, with ``sidecars`` and ``temps``);
    - ``sidecars``: {path: output it belongs to}: an existing one must have been written by ``command`` for that
      output (:func:`check_sidecar`);
    - ``reserved``: {path: what it is}: sidecar paths of the inputs (a model's fit summary), never written;
    - ``kinds``: {path: "model" | "dataset"}: existing ``.npz`` outputs must hold that (:func:`check_main_output`);
    - then every output is locked (:class:`cgdml._io.OutputLock`, held until the block ends) and the temporary
      files a killed run left next to the outputs, sidecars and ``temps`` (checkpoints) are removed.
    """
    outputs = [Path(p) for p in outputs if p]
    sidecars = {Path(k): Path(v) for k, v in (sidecars or {}).items()}
    refuse_to_overwrite(outputs + list(sidecars) + [Path(t) for t in temps], inputs)
    for path, what in (reserved or {}).items():
        for out in outputs + list(sidecars):
            if Path(out).resolve() == Path(path).resolve():
                raise CgdmlError(f"{out}: would overwrite {what}; give the output another name")
    for path, kind in (kinds or {}).items():
        check_main_output(path, kind)
    for path, output in sidecars.items():
        check_sidecar(path, command, output)
    with contextlib.ExitStack() as stack:
        for out in sorted({p.resolve(): p for p in outputs}.values(), key=lambda p: str(p.resolve())):
            stack.enter_context(OutputLock(out))
        for path in outputs + list(sidecars) + [Path(t) for t in temps]:
            remove_stale_temps(path)
        yield


def add_verbosity_arguments(parser):
    """The flags every command has: -v/--verbose (debug messages), -q/--quiet (warnings and errors only, no
    progress bars) and --no-progress (no progress bars). Read them with :func:`configure_logging` and
    :func:`show_progress`."""
    g = parser.add_argument_group("messages")
    g.add_argument("-v", "--verbose", action="store_true", help="show debug messages of the cgdml logger")
    g.add_argument("-q", "--quiet", action="store_true", help="show warnings and errors only, no progress bars")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def show_progress(args):
    """Whether a command shows progress bars: not with --quiet or --no-progress."""
    return not (getattr(args, "quiet", False) or getattr(args, "no_progress", False))


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record is emitted, not the one it was made with
    (which a redirect or an earlier test's capture may have closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(args):
    """Send the ``cgdml`` logger to stderr at the level -v/--quiet ask for (INFO by default)."""
    level = logging.DEBUG if getattr(args, "verbose", False) else \
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logger = logging.getLogger("cgdml")
    logger.setLevel(level)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def add_dataset_arguments(parser, positional=True, map_options=True):
    """Add the options that name a CG dataset, read by :func:`dataset_from_args`: a saved DATASET.npz
    (positional, optional), pre-mapped arrays (--coords, --cg-forces, --beads, --bonds), the units,
    temperature and --stride of every input, and --map/--force-map for the shipped reference used when no
    dataset is given. ``map_options=False`` leaves --map and --force-map to the command (``python -m cgdml.map``
    has them in its all-atom input group)."""
    if positional:
        parser.add_argument("dataset", nargs="?", default=None,
                            help="CG dataset .npz (from python -m cgdml.map); default: the shipped reference")
    g = parser.add_argument_group("pre-mapped arrays")
    g.add_argument("--coords", help="CG coordinates (n_frames, n_beads, 3), .npy or .npz")
    g.add_argument("--cg-forces", help="CG forces (n_frames, n_beads, 3), .npy or .npz")
    g.add_argument("--beads", default=None,
                   help=f"map preset whose CG topology the arrays follow ({', '.join(available_presets())}) "
                        "or comma-separated bead names")
    g.add_argument("--bonds", default=None, help="CG bonds of the arrays as bead index pairs, e.g. 0-1,1-2,2-3 "
                   "(default: the preset's bonds, else a chain in bead order, with a warning)")
    g = parser.add_argument_group("input units, temperature and frames")
    g.add_argument("--length-unit", default=None, help="length unit of the inputs: nm (default), angstrom, pm; not "
                   "with a dataset file or the shipped reference, which carry their units")
    g.add_argument("--energy-unit", default=None, help="energy unit of the inputs: kJ/mol (default), kcal/mol, eV, kT; "
                   "not with a dataset file or the shipped reference")
    g.add_argument("--temperature", type=float, default=None, help="K (default: from the data, else 300)")
    g.add_argument("--stride", type=int_between(1, COUNT_MAX, "frames"), default=1,
                   help="keep every N-th frame (default 1; at least 2 frames must remain)")
    if map_options:
        g = parser.add_argument_group("shipped reference (when no dataset or arrays are given)")
        g.add_argument("--map", default=None,
                       help=f"map: TOML file or preset ({', '.join(available_presets())}); default ala2-5")
        g.add_argument("--force-map", choices=FORCE_MAPS, default="aggregate", help="force map (default aggregate)")
    return parser


def unit_options(args):
    """(length unit, energy unit) of --length-unit/--energy-unit: nm and kJ/mol where not given."""
    return args.length_unit or "nm", args.energy_unit or "kJ/mol"


def refuse_unit_options(args, what):
    """--length-unit/--energy-unit given for an input that carries its own units (``what``): a one-line error."""
    given = [f for f, v in (("--length-unit", args.length_unit), ("--energy-unit", args.energy_unit)) if v]
    if given:
        raise CgdmlError(f"{' and '.join(given)} describe{'s' if len(given) == 1 else ''} raw input arrays; {what} "
                         f"carries its own units (nm, kJ/mol): leave {'it' if len(given) == 1 else 'them'} out")


def stride_option(args):
    if args.stride < 1:
        raise CgdmlError(f"--stride must be >= 1, got {args.stride}")
    return args.stride


def check_stride_frames(args, n_frames, what):
    """Refuse, before any work, a --stride that keeps fewer than 2 of the ``n_frames`` frames of one input
    (``what``; ``n_frames`` None where it cannot be counted without reading the input)."""
    stride = stride_option(args)
    if n_frames is not None and n_frames >= 2 and stride > 1 and -(-n_frames // stride) < 2:
        raise CgdmlError(f"--stride must be between 1 and {n_frames - 1} to keep at least 2 of the {n_frames} frames "
                         f"of {what}, got {stride}")


def check_strided_dataset(args, dataset):
    """The rule of :func:`check_stride_frames` after reading, for inputs whose frames could not be counted."""
    stride = stride_option(args)
    if stride > 1 and dataset.n_frames < 2:
        raise CgdmlError(f"--stride {stride} keeps {dataset.n_frames} frame of the input; at least 2 must remain: "
                         "give a smaller --stride")


def check_temperature_option(args):
    if args.temperature is not None and not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise CgdmlError(f"--temperature must be > 0 K, got {args.temperature:g}")


def dataset_from_args(args):
    """The :class:`CGDataset` named by options from :func:`add_dataset_arguments`."""
    stride = stride_option(args)
    check_temperature_option(args)
    dataset_path = getattr(args, "dataset", None)
    if dataset_path and (args.coords or args.cg_forces):
        raise CgdmlError("give either a dataset file or --coords/--cg-forces, not both")
    if dataset_path and (args.beads or args.bonds):
        raise CgdmlError("--beads and --bonds describe pre-mapped arrays (--coords); a dataset file has its own")
    if (dataset_path or args.coords or args.cg_forces) and getattr(args, "map", None):
        raise CgdmlError("--map maps all-atom data (the shipped reference when nothing else is given), not a "
                         "dataset file or pre-mapped arrays")
    if dataset_path:
        refuse_unit_options(args, f"the dataset {dataset_path}")
        ds = CGDataset.load(dataset_path)
        if args.temperature is not None and abs(args.temperature - ds.temperature) > 1e-9:
            raise CgdmlError(f"{dataset_path}: dataset is at {ds.temperature:g} K, not {args.temperature:g} K")
        check_stride_frames(args, ds.n_frames, dataset_path)
        return ds.subset(slice(None, None, stride)) if stride > 1 else ds
    if args.coords or args.cg_forces:
        if not (args.coords and args.cg_forces):
            raise CgdmlError("--coords and --cg-forces go together")
        length_unit, energy_unit = unit_options(args)
        check_stride_frames(args, count_frames(args.coords), args.coords)
        ds = load_cg_arrays(args.coords, args.cg_forces, beads=args.beads, bonds=args.bonds,
                            length_unit=length_unit, energy_unit=energy_unit,
                            temperature=300.0 if args.temperature is None else args.temperature, stride=stride)
        check_strided_dataset(args, ds)
        return ds
    refuse_unit_options(args, "the shipped reference (used when no input is given)")
    check_stride_frames(args, count_frames(default_dataset_paths().trajectory), "the shipped reference")
    ds = load_default_cg_dataset(map=args.map or "ala2-5", force_map=args.force_map, stride=stride)
    if args.temperature is not None and abs(args.temperature - ds.temperature) > 1e-9:
        raise CgdmlError(f"the shipped reference is at {ds.temperature:g} K, not {args.temperature:g} K")
    return ds


def dataset_summary(dataset):
    """One line: frames, beads, force map and mapped mean squared force per bead ((kJ/mol/nm)^2)."""
    msf = (dataset.forces ** 2).mean(axis=(0, 2))
    per_bead = " ".join(f"{n}:{v:.3g}" for n, v in zip(dataset.bead_names, msf))
    fm = dataset.info.get("force_map", "pre-mapped")
    return (f"{dataset.n_frames} frames, {dataset.n_beads} beads, {dataset.temperature:g} K, force map {fm}; "
            f"mean squared force per bead (kJ/mol/nm)^2: {per_bead} (mean {msf.mean():.3g})")
