"""Independent tasks (layer-1 sub-models, simulation replica groups) run locally or on a Dask cluster.

:class:`TaskRunner` runs ``(fn, args)`` tasks one after another, in local joblib processes, or, given a
scheduler (``tcp://HOST:PORT``, a scheduler file, or a ``distributed.Client``), on Dask workers. Large
read-only inputs go through :meth:`TaskRunner.share`: on Dask they are scattered once to every worker and
tasks receive the future as a handle, so a task carries only its own small arguments (batch indices,
seeds). Every worker task runs with one numba and one BLAS thread, so a result does not depend on where
it ran: local processes and Dask workers give bit-for-bit the same numbers.

Dask is optional: ``pip install 'cgdml[dask]'``.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from ._io import CgdmlError

CONNECT_TIMEOUT_S = 30
_HOST_PORT = re.compile(r"[\w.\-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+")


def limited_threads(fn, *args):
    """Run ``fn(*args)`` with one BLAS and one numba thread (the workers supply the parallelism)."""
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            return fn(*args)
    finally:
        numba.set_num_threads(before)


_WATCHDOG = {}


def _exit_with_parent(poll_s=1.0):
    """In a local worker process: exit as soon as the process that started it is gone (killed with SIGKILL, say:
    it cannot shut its workers down then, and idle joblib/loky workers would otherwise linger for minutes)."""
    if _WATCHDOG.get("pid") == os.getpid():
        return
    _WATCHDOG["pid"], parent = os.getpid(), os.getppid()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:       # re-parented: the parent died
                os._exit(1)

    threading.Thread(target=watch, name="cgdml-parent-watchdog", daemon=True).start()


def _local_worker_task(fn, *args):
    """A task in a local joblib worker: with the parent watchdog and one thread (see :func:`limited_threads`)."""
    _exit_with_parent()
    return limited_threads(fn, *args)


def kill_local_workers():
    """Stop joblib's local (loky) worker processes now, e.g. when the parent is interrupted mid-run."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)


def scheduler_address(scheduler):
    """The address named by ``scheduler``: ``tcp://HOST:PORT``, ``HOST:PORT`` or a scheduler-file path."""
    text = str(scheduler)
    path = Path(text)
    if "://" not in text and path.is_file():
        try:
            info = json.loads(path.read_text())
            address = info["address"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise CgdmlError(f"{path}: not a dask scheduler file ({type(exc).__name__}: {exc})") from None
        if not isinstance(address, str):
            raise CgdmlError(f"{path}: not a dask scheduler file (address {address!r} is not a string)")
        return address
    if "://" in text:
        return text
    if _HOST_PORT.fullmatch(text):
        return "tcp://" + text
    raise CgdmlError(f"{text}: no such dask scheduler file (give tcp://HOST:PORT or the file written by "
                     "'dask scheduler --scheduler-file')")


def check_scheduler(scheduler, timeout=5.0):
    """Return the scheduler's address after checking it answers, or raise a one-line :class:`CgdmlError`.

    For ``tcp://`` and ``tls://`` addresses a TCP connection is opened (fails fast when nothing listens).
    """
    address = scheduler_address(scheduler)
    where = address if str(scheduler) == address else f"{address} (from {scheduler})"
    parts = urlsplit(address)
    if parts.scheme in ("tcp", "tls"):
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or port is None:
            raise CgdmlError(f"dask scheduler address {address!r} must look like tcp://HOST:PORT")
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            raise CgdmlError(f"cannot reach the dask scheduler at {where}: {exc.strerror or exc}") from None
    return address


def connect(scheduler, timeout=CONNECT_TIMEOUT_S):
    """``(client, owned)``: a ``distributed.Client`` for an address or scheduler file, or the Client given.

    ``owned`` is true when the client was opened here (the caller closes it).
    """
    try:
        from distributed import Client
    except ImportError:
        raise CgdmlError("a dask scheduler needs dask.distributed: pip install 'cgdml[dask]'") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    address = check_scheduler(scheduler)
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise CgdmlError(f"cannot connect to the dask scheduler at {address}: {exc}") from None
    return client, True


def _payload_bytes(fn, args):
    """Pickled size of a task as submitted (a future counts as its key): what travels per task."""
    import cloudpickle
    from distributed import Future

    return len(cloudpickle.dumps((fn, tuple(a.key if isinstance(a, Future) else a for a in args))))


class TaskRunner:
    """Run independent ``(fn, args)`` tasks; a context manager (it opens and closes the Dask client).

    n_jobs : local joblib processes when no scheduler is given (1: one after another in this process,
        with this process's threads; otherwise one thread per process). Ignored on Dask.
    scheduler : None, a Dask address, a scheduler-file path or a ``distributed.Client``.
    progress : show a progress bar over tasks.

    ``stats`` counts tasks and the pickled bytes submitted per task (Dask only).
    """

    def __init__(self, n_jobs=1, scheduler=None, progress=True):
        self.n_jobs = n_jobs
        self.scheduler = scheduler
        self.progress = progress
        self.client = None
        self._owned = False
        self.stats = {"tasks": 0, "task_bytes_max": 0, "task_bytes_total": 0, "shared_bytes": 0}

    def __enter__(self):
        if self.scheduler is not None:
            self.client, self._owned = connect(self.scheduler)
        return self

    def __exit__(self, *exc):
        if self._owned:
            self.client.close()
        self.client = None
        self._owned = False

    @property
    def in_process(self):
        """True when tasks run one after another in this process."""
        return self.client is None and self.n_jobs == 1

    def describe(self):
        """A JSON-able summary: where tasks ran, and on Dask the worker count and bytes per task."""
        if self.client is None:
            return {"backend": "local", "n_jobs": self.n_jobs}
        info = self.client.scheduler_info()
        return {"backend": "dask", "scheduler": info.get("address"), "n_workers": len(info.get("workers", {})),
                **self.stats}

    def share(self, obj):
        """A handle to pass in task arguments for ``obj``: ``obj`` itself locally; on Dask a future of ``obj``
        scattered once to every worker (a new worker fetches it from a peer when a task needs it)."""
        if self.client is None:
            return obj
        self.stats["shared_bytes"] += int(getattr(obj, "nbytes", 0))
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(self, tasks, desc="tasks", limit_threads=False, bar=None, weights=None):
        """Yield ``(i, result)`` for the ``tasks`` [(fn, args)]: in order locally, as each finishes on Dask.

        Worker tasks run under :func:`limited_threads`, and so does a lone task run here for n_jobs > 1;
        ``limit_threads`` applies it to tasks run here with n_jobs = 1 too. ``bar``: a tqdm bar to advance by one
        per finished task (an overall bar of the caller) instead of a bar of these tasks; ``weights`` (one int per
        task) advance it by that much instead (a task that does several units of work).
        A failing task raises its exception here and cancels the tasks not yet finished; when the caller stops
        (an exception, Ctrl-C), local worker processes are killed rather than left running.
        """
        from tqdm import tqdm

        own = bar is None
        steps = [1] * len(tasks) if weights is None else [int(w) for w in weights]
        if own:
            bar = tqdm(total=sum(steps), desc=desc, disable=not self.progress or not tasks, leave=False)
        try:
            if self.client is not None:
                yield from self._run_dask(tasks, bar, steps)
            elif self.n_jobs == 1 or len(tasks) <= 1:
                limit_threads = limit_threads or self.n_jobs != 1      # as in a worker process
                for i, (fn, args) in enumerate(tasks):
                    result = limited_threads(fn, *args) if limit_threads else fn(*args)
                    bar.update(steps[i])
                    yield i, result
            else:
                from joblib import Parallel, delayed

                par = Parallel(n_jobs=self.n_jobs, return_as="generator")
                done = 0
                try:
                    for i, result in enumerate(par(delayed(_local_worker_task)(fn, *args) for fn, args in tasks)):
                        done += 1
                        bar.update(steps[i])
                        yield i, result
                finally:
                    if done < len(tasks):          # interrupted or failed: no orphan workers
                        kill_local_workers()
        finally:
            if own:
                bar.close()

    def _run_dask(self, tasks, bar, steps):
        from distributed import as_completed

        futures = {}
        for i, (fn, args) in enumerate(tasks):
            size = _payload_bytes(fn, args)
            self.stats["tasks"] += 1
            self.stats["task_bytes_total"] += size
            self.stats["task_bytes_max"] = max(self.stats["task_bytes_max"], size)
            futures[self.client.submit(limited_threads, fn, *args, pure=False)] = i
        try:
            for future in as_completed(list(futures), loop=self.client.loop):
                result = future.result()
                i = futures.pop(future)
                bar.update(steps[i])
                yield i, result
        finally:
            if futures:
                self.client.cancel(list(futures))
