"""Shared plumbing: user-facing errors, atomic file writes and the command-line wrapper.

Every command-line module calls :func:`run_cli`, which turns a :class:`CgdmlError` (a user mistake)
into one line on stderr and exit status 2, so no traceback ever reaches a user for bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


class CgdmlError(Exception):
    """A user mistake (bad file, bad option, bad data). The message is one line, shown as is."""


def _directory_of(path):
    path = Path(path)
    return path.parent if str(path.parent) else Path(".")


def check_output(path):
    """Fail early, with one line naming ``path``, when its directory is missing or cannot be written to.

    Long runs call this before any work, so that a typo in ``-o`` does not cost the whole run.
    """
    path = Path(path)
    directory = _directory_of(path)
    if not directory.is_dir():
        if directory.exists() or any(p.exists() and not p.is_dir() for p in directory.parents):
            raise CgdmlError(f"{path}: {directory} is not a directory")
        raise CgdmlError(f"{path}: output directory {directory} does not exist")
    if path.is_dir():
        raise CgdmlError(f"{path}: is a directory, not a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as exc:
        raise CgdmlError(f"{path}: cannot write to directory {directory} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted or failed write never leaves a file at ``path`` that looks complete, nor the temporary
    file; a write error (disk full, permission denied, file too large) becomes a one-line :class:`CgdmlError`
    naming ``path``. The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    directory = _directory_of(path)
    if not directory.is_dir():
        check_output(path)  # raises the right message
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=directory)
    except OSError as exc:
        raise CgdmlError(f"{path}: cannot write to directory {directory} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CgdmlError(f"{path}: write failed ({exc.strerror or exc}); nothing was written") from None
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


def numpy_file_kind(path):
    """"npy" or "npz" from the first bytes of ``path`` (NumPy magic or zip header), else None. Without this
    check ``numpy.load`` takes random bytes for a pickle and reports pickled data."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    return None


def load_npz(path, what="file"):
    """Open an ``.npz`` written by cgdml, turning any read failure into a one-line :class:`CgdmlError`."""
    path = Path(path)
    if not path.exists():
        raise CgdmlError(f"{path}: no such {what}")
    if path.is_file() and numpy_file_kind(path) != "npz":
        raise CgdmlError(f"{path}: not a readable {what} (not a NumPy .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile, pickle, OSError, ValueError ...
        raise CgdmlError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors raised as :class:`CgdmlError` (one line on stderr, exit 2) instead of usage text."""

    def error(self, message):
        raise CgdmlError(f"{message} (see {self.prog} --help)")


def one_line(text, limit=600):
    """``text`` with its lines joined and whitespace collapsed, cut at ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {one_line(message)}", file=sys.stderr if file is None else file)


def run_cli(main, argv=None):
    """Run ``main(argv)`` as a command: user errors become one stderr line and a non-zero exit.

    Warnings are shown as one ``warning: ...`` line each (no source line, no file name).
    """
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        status = main(argv)
    except CgdmlError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # disk full, permission denied, ...
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {name}{one_line(exc.strerror or exc)}", file=sys.stderr)
        sys.exit(1)
    finally:
        warnings.showwarning = shown
    sys.exit(status or 0)
