"""Shared plumbing: user-facing errors, atomic file writes, npz/JSON/TOML reading and fit checkpoints.

A :class:`CgdmlError` is a user mistake with a one-line message; the command-line wrapper
(:func:`cgdml._cli.run_cli`) shows it as one line on stderr with exit status 2.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib  # noqa: F401 (re-exported)


class CgdmlError(Exception):
    """A user mistake (bad file, bad option, bad data). The message is one line, shown as is."""


def one_line(text, limit=600):
    """``text`` with its lines joined and whitespace collapsed, cut at ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


class TempFile:
    """A temporary file name (``with TempFile(".pdb") as path``), removed with its directory afterwards."""

    def __init__(self, suffix):
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.path = str(Path(self._dir.name) / ("t" + suffix))

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        self._dir.cleanup()


class WorkCache:
    """Named arrays stored one ``.npz`` per key under ``workdir`` (or in memory when workdir is None).

    The checkpoints of a long fit: ``manifest.json`` records ``fingerprint`` (a hash of the data and
    settings), so that work from a different fit in the same directory is refused, not reused.
    """

    def __init__(self, workdir, fingerprint):
        self.dir = Path(workdir) if workdir else None
        self.mem = {}
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest = self.dir / "manifest.json"
            if manifest.exists():
                old = json.loads(manifest.read_text()).get("fingerprint")
                if old != fingerprint:
                    raise CgdmlError(f"{self.dir}: holds work from a different fit (other data or settings); "
                                     "remove it or choose another output")
            else:
                save_json(manifest, {"fingerprint": fingerprint})

    def get(self, key):
        if key in self.mem:
            return self.mem[key]
        path = self.dir / f"{key}.npz" if self.dir else None
        if path is not None and path.exists():
            self.mem[key] = load_npz(path, "fit checkpoint")
            return self.mem[key]
        return None

    def put(self, key, **arrays):
        self.mem[key] = arrays
        if self.dir:
            save_npz(self.dir / f"{key}.npz", **arrays)
