"""Shared plumbing: user-facing errors, atomic file writes and the command-line wrapper.

Every command-line module calls :func:`run_cli`, which turns a :class:`CgdmlError` (a user mistake)
into one line on stderr and exit status 2, so no traceback ever reaches a user for bad input.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


class CgdmlError(Exception):
    """A user mistake (bad file, bad option, bad data). The message is one line, shown as is."""


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted or failed write never leaves a file at ``path`` that looks complete.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CgdmlError(f"{path}: output directory {directory} does not exist")
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_npz(path, **arrays):
    """Write a compressed ``.npz`` atomically (numpy would otherwise append ``.npz`` to the temp name)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def json_default(o):
    """``json.dumps(default=...)`` hook: numpy scalars and arrays become plain Python, paths strings."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_json(path, obj):
    """Write JSON atomically, with numpy scalars and arrays converted to plain Python."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")


def load_npz(path, what="file"):
    """Open an ``.npz`` written by cgdml, turning any read failure into a one-line :class:`CgdmlError`."""
    path = Path(path)
    if not path.exists():
        raise CgdmlError(f"{path}: no such {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile, pickle, OSError, ValueError ...
        raise CgdmlError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


def run_cli(main, argv=None):
    """Run ``main(argv)`` as a command: user errors become one stderr line and a non-zero exit."""
    prog = Path(sys.argv[0]).stem if argv is None else "cgdml"
    try:
        status = main(argv)
    except CgdmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # disk full, permission denied, ...
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {name}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
