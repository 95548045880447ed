"""Unit conventions. Internally cgdml uses nm, kJ/mol, ps, amu and kelvin, as OpenMM and mdtraj do."""
from __future__ import annotations

from ._io import CgdmlError

BOLTZMANN = 0.00831446261815324  # kJ/mol/K

LENGTH_UNITS = {"nm": 1.0, "nanometer": 1.0, "angstrom": 0.1, "a": 0.1, "å": 0.1, "pm": 0.001}
ENERGY_UNITS = {"kj/mol": 1.0, "kcal/mol": 4.184, "kt": None, "ev": 96.48533212}


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to nm."""
    key = str(unit).strip().lower()
    if key not in LENGTH_UNITS:
        raise CgdmlError(f"unknown length unit {unit!r} (known: nm, angstrom, pm)")
    return LENGTH_UNITS[key]


def energy_factor(unit: str, temperature: float | None = None) -> float:
    """Factor that converts an energy in ``unit`` to kJ/mol (``kT`` needs the temperature in K)."""
    key = str(unit).strip().lower().replace(" ", "")
    if key not in ENERGY_UNITS:
        raise CgdmlError(f"unknown energy unit {unit!r} (known: kJ/mol, kcal/mol, eV, kT)")
    if key == "kt":
        return kT(temperature)
    return ENERGY_UNITS[key]


def force_factor(length_unit: str, energy_unit: str, temperature: float | None = None) -> float:
    """Factor that converts forces in energy_unit/length_unit to kJ/mol/nm."""
    return energy_factor(energy_unit, temperature) / length_factor(length_unit)


def check_temperature(temperature) -> float:
    """Return the temperature as a float in K, or raise a one-line error when it is not positive."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise CgdmlError(f"temperature must be a number in K, got {temperature!r}") from None
    if not (t > 0 and t < float("inf")):
        raise CgdmlError(f"temperature must be > 0 K and finite, got {t:g}")
    return t


def kT(temperature) -> float:
    """Thermal energy in kJ/mol at ``temperature`` K."""
    return BOLTZMANN * check_temperature(temperature)
