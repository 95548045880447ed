"""Parameter checks of the estimators, in one place, the scikit-learn way.

Each estimator lists the values its parameters accept in a class attribute ``_parameter_constraints``
({name: [constraint, ...]}: a value is valid when any constraint of its list accepts it) and calls
:func:`check_params` at the start of ``fit``. A bad value is a :class:`ParameterError`, a one-line
:class:`cgdml._io.CgdmlError` (a ``ValueError``) that names the parameter, never a command-line flag: commands
re-label it with the option the user typed (``ParameterError.name``, ``ParameterError.problem``).

Constraints: :class:`Interval` (a number in a range), :class:`Grid` (one or more numbers, each in an interval:
a hyperparameter grid), :class:`Options` (one of a few values), ``bool``, ``None`` (the parameter may be None,
which means "default" or "automatic"), ``"array-like"`` and ``object`` (anything: no check).
"""
from __future__ import annotations

import numbers

import numpy as np

from ._io import CgdmlError


class ParameterError(CgdmlError):
    """A parameter value outside its constraints. ``str(error)`` is ``"{name} {problem}"``, e.g.
    ``"n_models must be >= 1, got 0"``; a command shows ``problem`` after its own name for the option."""

    def __init__(self, name, problem):
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


def show(value):
    """A value as a message shows it: numbers with %g, strings quoted, sequences as [a, b] (no numpy reprs)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return str(bool(value) if value is not None else None)
    if isinstance(value, numbers.Real):
        return f"{float(value):g}" if isinstance(value, (float, np.floating)) else str(int(value))
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(show(v) for v in np.ravel(np.asarray(value, dtype=object))) + "]"
    return repr(value)


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_positive_number(value):
    """Whether ``value`` reads as a finite number > 0 (a float, an int, a numeric string); never raises."""
    try:
        return bool(np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        return False


class Interval:
    """A number (``kind`` int or float; floats must be finite) between ``low`` and ``high`` (None: unbounded);
    ``closed`` is "both", "left", "right" or "neither"."""

    def __init__(self, kind, low=None, high=None, closed="both"):
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value):
        if not (_is_int(value) if self.kind is int else _is_real(value) and np.isfinite(value)):
            return False
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        return ((self.low is None or (value >= self.low if left else value > self.low))
                and (self.high is None or (value <= self.high if right else value < self.high)))

    def __str__(self):
        left = None if self.low is None else (">= " if self.closed in ("both", "left") else "> ") + show(self.low)
        right = None if self.high is None else (("<= " if self.closed in ("both", "right") else "< ")
                                                + show(self.high))
        if left and right:
            return f"{left} and {right}"
        return left or right or ("an integer" if self.kind is int else "a finite number")


def _cpus():
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


SEED = Interval(int, 0, 2 ** 32 - 1)               # a 32-bit seed
# kernel widths in descriptor units (1/nm): beyond 1e4 the kernel is flat over any set of CG configurations
SIGMA = Interval(float, 0, 1e4, "right")
# ensemble members: the ensemble-mean noise falls as 1/sqrt(n); 10000 is far past any gain
N_MODELS = Interval(int, 1, 10000)
# local processes: 1 to the CPUs of the machine, or -n for all but n - 1 (joblib's convention)
N_JOBS = [Interval(int, -_cpus(), -1), Interval(int, 1, _cpus())]


class Grid:
    """One or more values (a number, or a list, tuple or array of numbers), each accepted by ``interval``."""

    def __init__(self, interval):
        self.interval = interval

    def accepts(self, value):
        values = np.ravel(np.asarray(value, dtype=object)) if not isinstance(value, str) else [value]
        return len(values) > 0 and all(self.interval.accepts(v) for v in values)

    def __str__(self):
        return f"one or more numbers {self.interval}"


class Options:
    """One of ``values`` (strings, or other values compared with ==)."""

    def __init__(self, values):
        self.values = tuple(values)

    def accepts(self, value):
        return isinstance(value, type(self.values[0])) and value in self.values

    def __str__(self):
        shown = [show(v) for v in self.values]
        return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _accepts(constraint, value):
    if constraint is None:
        return value is None
    if constraint is bool:
        return isinstance(value, (bool, np.bool_))
    if constraint is object:
        return True
    if constraint == "array-like":
        return value is not None and not isinstance(value, str)
    return constraint.accepts(value)


def _describe(constraint):
    return {bool: "True or False", object: "anything", "array-like": "an array"}.get(constraint) or str(constraint)


def check_param(name, value, constraints):
    """Raise :class:`ParameterError` unless one of ``constraints`` accepts ``value``. The message lists what is
    accepted (None is left out: it stands for a default, never what a user meant to give)."""
    if any(_accepts(c, value) for c in constraints):
        return
    words = [_describe(c) for c in constraints if c is not None]
    raise ParameterError(name, f"must be {' or '.join(words)}, got {show(value)}")


def check_params(estimator):
    """Check every parameter of ``estimator`` (a scikit-learn style estimator) against its class's
    ``_parameter_constraints``; raises :class:`ParameterError` for the first bad one."""
    params = estimator.get_params(deep=False)
    for name, constraints in type(estimator)._parameter_constraints.items():
        check_param(name, params[name], constraints)


def value_type(constraints):
    """(type, many) of the values ``constraints`` describe, for reading them from text: int, float, str or bool,
    and whether a list is accepted (a :class:`Grid`). None where no plain type fits."""
    many = any(isinstance(c, Grid) for c in constraints)
    for c in constraints:
        inner = c.interval if isinstance(c, Grid) else c
        if isinstance(inner, Interval):
            return inner.kind, many
    if bool in constraints:
        return bool, False
    for c in constraints:
        if isinstance(c, Options) and isinstance(c.values[0], str):
            return str, False
    return None, False
