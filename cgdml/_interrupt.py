"""The one interrupt rule of the commands: Ctrl-C (SIGINT) at any moment prints one line and exits with status 130.

Inside a command's ``main`` an interrupt is a :class:`KeyboardInterrupt`, so that ``finally`` blocks run and the
last checkpoint stays for a rerun; :func:`cgdml._cli.run_cli` turns it into the line. Before ``main`` (the imports
of ``python -m cgdml.X``, which take seconds) and after it (interpreter shutdown) there is nothing to clean up,
and an interrupt there would be a traceback from inside an import or an exit hook: :func:`quit_on_interrupt`
makes it the same line and status at once. This module imports nothing heavy: :mod:`cgdml` calls
:func:`install_at_start` first thing.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

MESSAGE = "interrupted: rerun the same command to resume from the last checkpoint"
STATUS = 130


def _quit(signum, frame):
    try:
        sys.stdout.flush()
    except Exception:       # a closed or broken stdout must not turn the exit into a traceback
        pass
    os.write(2, (MESSAGE + "\n").encode())
    os._exit(STATUS)


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def quit_on_interrupt():
    """From now on, SIGINT prints :data:`MESSAGE` and ends the process with :data:`STATUS` at once, where this
    process is a cgdml command (:func:`started_as_command`) and SIGINT is not ignored or someone else's."""
    if (_main_thread() and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _quit)
            and started_as_command()):
        signal.signal(signal.SIGINT, _quit)


def raise_on_interrupt():
    """From now on, SIGINT raises :class:`KeyboardInterrupt` (Python's default), where :func:`quit_on_interrupt`
    had set it."""
    if _main_thread() and signal.getsignal(signal.SIGINT) is _quit:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def started_as_command(argv=None):
    """Whether this process is a cgdml command: ``python -m cgdml.X`` (``sys.orig_argv``) or a ``cgdml-X`` console
    script (``sys.argv[0]``)."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].split(".")[0] == "cgdml"
    return bool(sys.argv) and os.path.basename(sys.argv[0]).startswith("cgdml-")


def install_at_start():
    """:func:`quit_on_interrupt` when this process is a cgdml command that is still starting (``sys.argv[0]`` is
    "-m" while ``python -m`` imports the command's packages; a console script has no such phase marker, so its
    own name is checked); a library user's process is left alone."""
    starting = bool(sys.argv) and (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]).startswith("cgdml-"))
    if starting:
        quit_on_interrupt()
