"""Shared plumbing: user-facing errors, atomic file writes, npz/JSON/TOML reading and fit checkpoints.

A :class:`CgdmlError` is a user mistake with a one-line message; the command-line wrapper
(:func:`cgdml._cli.run_cli`) shows it as one line on stderr with exit status 2.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib  # noqa: F401 (re-exported)


class CgdmlError(ValueError):
    """A user mistake (bad file, bad option, bad data). The message is one line, shown as is.

    A subclass of :class:`ValueError`, as scikit-learn's parameter errors are, so that ``except ValueError``
    in user code catches it."""


class CgdmlTypeError(CgdmlError, TypeError):
    """An argument of the wrong type given to a public function or estimator; the message says what to pass.

    Both a :class:`CgdmlError` (a command shows it as one line) and a :class:`TypeError`."""


def available_memory():
    """Bytes of memory available to a new allocation now (MemAvailable of /proc/meminfo; elsewhere the physical
    memory), or None where neither is known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def size_text(nbytes):
    """A byte count for messages: 512 B, 3.1 MB, 42 GB, 1.2e+05 TB."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= factor:
            return f"{nbytes / factor:.3g} {unit}"
    return f"{int(nbytes)} B"


def check_memory(nbytes, what, advice):
    """Refuse, before allocating it, an array of about ``nbytes`` (``what`` it holds) that would not fit in the
    memory available: a one-line :class:`CgdmlError` with the estimate and ``advice`` (which option to lower)."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise CgdmlError(f"{what} would take about {size_text(nbytes)} of memory, {size_text(free)} is available; "
                         f"{advice}")


FIGURE_MARK = "cgdml-written-by:"  # then the hex of {"command": ..., "output": NAME} and a "." (survives every format)
FIGURE_FORMATS = {"png": "metadata", "svg": "metadata", "pdf": "metadata", "jpg": "comment", "jpeg": "comment"}


def save_figure(fig, path, written_for):
    """Save a matplotlib figure atomically, its format from the suffix (png, pdf, svg, jpg); the file carries the
    record ``{"command": written_for, "output": NAME}`` (what wrote it, for which output) in its metadata, read
    back by :func:`figure_owner`, so that a command replaces only figures written for the same purpose."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    token = FIGURE_MARK + json.dumps({"command": written_for, "output": path.name}).encode().hex() + "."
    key = {"pdf": "Subject"}.get(fmt, "Description")
    extra = ({"metadata": {key: token}} if FIGURE_FORMATS.get(fmt) == "metadata"
             else {"pil_kwargs": {"comment": token}} if fmt in FIGURE_FORMATS else {})
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight", **extra)


def figure_owner(path, limit=64 << 20):
    """(command, output) recorded by :func:`save_figure` in the figure at ``path``, else None."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return None
    # the "." ends the record: a PNG chunk's CRC (bytes that may look like hex digits) follows it
    found = re.search(re.escape(FIGURE_MARK.encode()) + rb"([0-9a-f]+)\.", data)
    if not found:
        return None
    try:
        record = json.loads(bytes.fromhex(found.group(1).decode()))
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("command"), str) and isinstance(record.get("output"), str):
        return record["command"], record["output"]
    return None


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


def check_own_directory(directory, command, is_ours):
    """Refuse (one line) to write into ``directory`` when it exists, holds files (dot files aside: temporary and
    lock files) and ``is_ours(directory)`` does not find the marker that an earlier run of ``command`` left there
    (export: its README.txt; reference: its run.json). A new or empty directory is accepted."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    found = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    if not found or is_ours(directory):
        return
    shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
    raise CgdmlError(f"{directory}: holds files that {command} did not write there ({shown}); this run would "
                     "write into it: choose a new or empty directory")


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


def load_npz(path, what="file", fix=None):
    """Open an ``.npz`` written by cgdml, turning any read failure into a one-line :class:`CgdmlError`; ``fix``
    (e.g. "delete it to start afresh", for checkpoints) ends the message of a damaged file."""
    path = Path(path)
    if not path.exists():
        raise CgdmlError(f"{path}: no such {what}")
    end = f"; {fix}" if fix else ""
    if path.is_file() and numpy_file_kind(path) != "npz":
        raise CgdmlError(f"{path}: not a readable {what} (not a NumPy .npz archive){end}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile, pickle, OSError, ValueError ...
        raise CgdmlError(f"{path}: not a readable {what} ({type(exc).__name__}: {one_line(exc, 200)}){end}") from None


_MISSING = object()


class Fields:
    """Named entries of a loaded file (a dict of arrays, e.g. from :func:`load_npz`), read one by one.

    :meth:`get` converts an entry and turns a missing or damaged one into a one-line :class:`CgdmlError` that
    names the field (with ``prefix``, e.g. ``gdml/``); the caller adds the file name.
    """

    def __init__(self, arrays, prefix=""):
        self.arrays = arrays
        self.prefix = prefix

    def __contains__(self, name):
        return self.prefix + name in self.arrays

    def keys(self):
        """Field names under the prefix (without it)."""
        return [k[len(self.prefix):] for k in self.arrays if k.startswith(self.prefix)]

    def get(self, name, convert=None, default=_MISSING):
        key = self.prefix + name
        if key not in self.arrays:
            if default is _MISSING:
                raise CgdmlError(f"missing field {key!r}")
            return default
        try:
            value = self.arrays[key]
            return value if convert is None else convert(value)
        except CgdmlError as exc:
            raise CgdmlError(f"damaged field {key!r} ({exc})") from None
        except Exception as exc:  # any conversion failure is damage, never a traceback
            raise CgdmlError(f"damaged field {key!r} ({type(exc).__name__}: {one_line(exc, 120)})") from None


def as_str(value):
    """A text field (a 0-d string array)."""
    a = np.asarray(value)
    if a.dtype.kind not in "US" or a.size != 1:
        raise CgdmlError(f"{a.dtype} {a.shape} values, not text")
    return str(a.reshape(()).item() if a.dtype.kind == "S" else a.reshape(()))


def as_int(value):
    """An integer field (one value)."""
    a = np.asarray(value)
    if a.dtype.kind not in "iub" or a.size != 1:
        raise CgdmlError(f"{a.dtype} {a.shape} values, not one integer")
    return int(a.reshape(()))


def as_float(value, positive=False):
    """A finite real field (one value), > 0 when ``positive``."""
    a = np.asarray(value)
    if a.dtype.kind not in "fiu" or a.size != 1:
        raise CgdmlError(f"{a.dtype} {a.shape} values, not one number")
    x = float(a.reshape(()))
    if not np.isfinite(x) or (positive and not x > 0):
        raise CgdmlError(f"{x!r} is not a {'positive ' if positive else ''}finite number")
    return x


def as_json(value, kind=dict):
    """A JSON text field holding a ``kind`` (dict by default)."""
    obj = json.loads(as_str(value))
    if kind is not None and not isinstance(obj, kind):
        raise CgdmlError(f"JSON {type(obj).__name__}, not a {kind.__name__}")
    return obj


def as_array(value, kind="f", ndim=None, shape=None, finite=True, dtype=None):
    """A numeric array field: dtype kind in ``kind`` ("f": numbers, "i": integers, "b": booleans), ``ndim``
    dimensions, ``shape`` (None entries match any length), finite values; returned as ``dtype``."""
    a = np.asarray(value)
    allowed = {"f": "fiu", "i": "iu", "b": "b"}[kind]
    if a.size and a.dtype.kind not in allowed:
        raise CgdmlError(f"{a.dtype} values, not {dict(f='numbers', i='integers', b='booleans')[kind]}")
    if ndim is not None and a.ndim != ndim:
        raise CgdmlError(f"shaped {a.shape}, expected {ndim} dimension(s)")
    if shape is not None and (a.ndim != len(shape) or any(w is not None and w != n for w, n in zip(shape, a.shape))):
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise CgdmlError(f"shaped {a.shape}, expected {want}")
    out = np.asarray(a, dtype=dtype or {"f": np.float64, "i": np.int64, "b": bool}[kind])
    if finite and kind == "f" and not np.isfinite(out).all():
        raise CgdmlError("holds NaN or inf")
    return out


class TempFile:
    """A temporary file name (``with TempFile(".pdb") as path``), removed with its directory afterwards. A write
    error in the block (a full temporary disk) is a one-line :class:`CgdmlError` naming the directory."""

    def __init__(self, suffix):
        import tempfile

        try:
            self._dir = tempfile.TemporaryDirectory()
        except OSError as exc:
            raise CgdmlError(f"{tempfile.gettempdir()}: cannot create a temporary directory ({exc.strerror or exc}); "
                             "free space there or set TMPDIR to another directory") from None
        self.path = str(Path(self._dir.name) / ("t" + suffix))

    def __enter__(self):
        return self.path

    def __exit__(self, kind, exc, tb):
        self._dir.cleanup()
        if isinstance(exc, OSError):
            raise CgdmlError(f"{Path(self._dir.name).parent}: cannot write a temporary file ({exc.strerror or exc}); "
                             "free space there or set TMPDIR to another directory") from None


class WorkCache:
    """Named arrays stored one ``.npz`` per key under ``workdir`` (or in memory when workdir is None).

    The checkpoints of a long fit: ``manifest.json`` records ``fingerprint`` (a hash of the data and
    settings), so that work from a different fit in the same directory is refused, not reused. A damaged
    manifest or checkpoint is a one-line :class:`CgdmlError` naming the file and the field.
    """

    def __init__(self, workdir, fingerprint):
        self.dir = Path(workdir) if workdir else None
        self.mem = {}
        if self.dir:
            if self.dir.exists() and not self.dir.is_dir():
                raise CgdmlError(f"{self.dir}: exists and is not a directory; the fit keeps its checkpoints there: "
                                 "move or delete it, or choose another output")
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest = self.dir / "manifest.json"
            if manifest.exists():
                old = self._read_manifest(manifest)
                if old != fingerprint:
                    raise CgdmlError(f"{self.dir}: holds work from a different fit (other data or settings); "
                                     "remove it or choose another output")
            else:
                save_json(manifest, {"fingerprint": fingerprint})

    def _read_manifest(self, manifest):
        fix = f"remove {self.dir} to start the fit afresh"
        try:
            data = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CgdmlError(f"{manifest}: damaged fit manifest ({type(exc).__name__}: {one_line(exc, 120)}); "
                             f"{fix}") from None
        if not isinstance(data, dict):
            raise CgdmlError(f"{manifest}: damaged fit manifest (JSON {type(data).__name__}, not an object); {fix}")
        if "fingerprint" not in data:
            raise CgdmlError(f"{manifest}: damaged fit manifest (missing field 'fingerprint'); {fix}")
        if not isinstance(data["fingerprint"], str):
            raise CgdmlError(f"{manifest}: damaged fit manifest (field 'fingerprint' is not text); {fix}")
        return data["fingerprint"]

    def get(self, key, expect=None):
        """The arrays stored under ``key``, or None. ``expect`` ({name: shape}, None entries match any length)
        checks a checkpoint read from disk: each named field present, numeric, finite and so shaped."""
        if key in self.mem:
            return self.mem[key]
        path = self.dir / f"{key}.npz" if self.dir else None
        if path is not None and path.exists():
            arrays = load_npz(path, "fit checkpoint", fix="delete it (the fit recomputes it)")
            fields = Fields(arrays)
            try:
                for name, shape in (expect or {}).items():
                    arrays[name] = fields.get(name, lambda v, shape=shape: as_array(
                        v, "f", shape=shape, dtype=v.dtype if v.dtype.kind == "f" else None))
            except CgdmlError as exc:
                raise CgdmlError(f"{path}: damaged fit checkpoint: {exc}; delete it (the fit recomputes it)") from None
            self.mem[key] = arrays
            return arrays
        return None

    def put(self, key, **arrays):
        self.mem[key] = arrays
        if self.dir:
            save_npz(self.dir / f"{key}.npz", **arrays)


_TEMP_NAME = r"\.{name}\.[a-z0-9_]{{8}}\.(tmp.*|probe)"


def remove_stale_temps(path):
    """Remove the temporary files that :func:`atomic_path` and :func:`check_output` make next to ``path``
    (``.NAME.<random>.tmp*``, ``.NAME.<random>.probe``), left by a run that was killed while writing.

    For a directory (a fit's work directory, a reference run) the temporary files inside it go too. Call it
    only while holding the output's :class:`OutputLock`: a concurrent run's temp file is not stale. Returns the
    paths removed.
    """
    path = Path(path)
    places = [(_directory_of(path), re.compile(_TEMP_NAME.format(name=re.escape(path.name))))]
    if path.is_dir():
        places.append((path, re.compile(_TEMP_NAME.format(name=".+"))))
    removed = []
    for directory, pattern in places:
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if pattern.fullmatch(p.name) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def lock_path(path):
    """The lock file of an output: ``.NAME.lock`` next to it."""
    path = Path(path)
    return _directory_of(path) / f".{path.name}.lock"


class OutputLock:
    """An advisory lock (``fcntl.flock``) on ``.NAME.lock`` next to ``path``, held while the block runs.

    A second run on the same output fails at once with a one-line :class:`CgdmlError` naming the process that
    holds the lock (its PID is written into the lock file). The lock file is removed on exit; one left by a
    killed run is harmless (the kernel releases the lock with the process). Where the file system cannot lock
    (some network file systems), a warning says so and the run goes on without a lock.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.lock_path = lock_path(self.path)
        self.fd = None

    def __enter__(self):
        import fcntl

        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError as exc:
                raise CgdmlError(f"{self.path}: cannot create the lock file {self.lock_path} "
                                 f"({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    warnings.warn(f"{self.path}: cannot lock {self.lock_path} ({exc.strerror or exc}); a second "
                                  "run on this output at the same time would not be detected", stacklevel=2)
                    return self
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                who = f"process {holder}" if holder.isdigit() else "another process"
                raise CgdmlError(f"{self.path}: another cgdml run ({who}) is writing this output (lock "
                                 f"{self.lock_path}); wait for it to end, or choose another output name") from None
            try:  # the holder may have removed the file between our open and flock: lock the current file
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock's few bytes do not fit
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(fd)
            raise CgdmlError(f"{self.path}: cannot write the lock file {self.lock_path} ({exc.strerror or exc}); "
                             "nothing was written") from None
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)           # while still holding the lock (see __enter__)
            os.close(self.fd)
            self.fd = None
