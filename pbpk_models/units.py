"""Canonical units and the named conversions between them.

Inside the code: time h, activity MBq, ligand amount nmol, volume mL, mass g, absorbed dose Gy,
energy MeV, rates 1/h. Everything that arrives in another unit (DICOM Bq/mL and seconds,
published models in minutes and litres, user input in GBq) is converted here and nowhere else.

Constants: CODATA 2018 exact values (SI redefinition of 2019): Avogadro constant
N_A = 6.02214076e23 /mol, elementary charge e = 1.602176634e-19 C (so 1 MeV = 1.602176634e-13 J).
"""

from __future__ import annotations

import math
import re

from pbpk_models.errors import InputError

# CODATA 2018, exact by definition of the SI (2019).
AVOGADRO_PER_MOL = 6.02214076e23
JOULE_PER_MEV = 1.602176634e-13

# time
MIN_PER_H = 60.0
S_PER_H = 3600.0
H_PER_DAY = 24.0
H_PER_WEEK = 168.0
H_PER_YEAR = 8766.0  # Julian year, 365.25 d (the convention of radioactivedecay)


def minutes_to_h(t_min):
    return t_min / MIN_PER_H


def h_to_minutes(t_h):
    return t_h * MIN_PER_H


def seconds_to_h(t_s):
    return t_s / S_PER_H


def h_to_seconds(t_h):
    return t_h * S_PER_H


def days_to_h(t_d):
    return t_d * H_PER_DAY


def per_min_to_per_h(k_per_min):
    return k_per_min * MIN_PER_H


def per_h_to_per_min(k_per_h):
    return k_per_h / MIN_PER_H


# volume
ML_PER_L = 1000.0


def litres_to_ml(v_l):
    return v_l * ML_PER_L


def ml_to_litres(v_ml):
    return v_ml / ML_PER_L


# activity
def gbq_to_mbq(a_gbq):
    return a_gbq * 1000.0


def mbq_to_gbq(a_mbq):
    return a_mbq / 1000.0


def bq_to_mbq(a_bq):
    return a_bq * 1e-6


def mbq_to_bq(a_mbq):
    return a_mbq * 1e6


def bq_per_ml_to_mbq_per_ml(c):
    return c * 1e-6


def mbq_per_nmol(decay_constant_per_h: float) -> float:
    """Activity (MBq) of one nmol of a nuclide with the given decay constant (1/h).

    A = lambda N = (lambda_per_h / 3600 s) * (1e-9 mol * N_A) Bq.
    """
    return decay_constant_per_h / S_PER_H * 1e-9 * AVOGADRO_PER_MOL * 1e-6


def nmol_to_mbq(n_nmol, decay_constant_per_h: float):
    return n_nmol * mbq_per_nmol(decay_constant_per_h)


def mbq_to_nmol(a_mbq, decay_constant_per_h: float):
    return a_mbq / mbq_per_nmol(decay_constant_per_h)


# dose
def gy_per_mbq_h(energy_mev_per_decay: float, mass_g: float) -> float:
    """Absorbed dose (Gy) per MBq h of time-integrated activity fully absorbed in ``mass_g``.

    1 MBq h = 3.6e9 decays; energy in J over mass in kg.
    """
    return 1e6 * S_PER_H * energy_mev_per_decay * JOULE_PER_MEV / (mass_g * 1e-3)


# Unit strings that users may attach to parameter values (``--set k_off=0.368/min``), as factors
# to the canonical unit of the same dimension.
_UNIT_FACTORS = {
    # rates -> 1/h
    "1/h": ("1/h", 1.0),
    "/h": ("1/h", 1.0),
    "1/min": ("1/h", MIN_PER_H),
    "/min": ("1/h", MIN_PER_H),
    "1/s": ("1/h", S_PER_H),
    "/s": ("1/h", S_PER_H),
    "1/d": ("1/h", 1.0 / H_PER_DAY),
    "/d": ("1/h", 1.0 / H_PER_DAY),
    # volumes -> mL
    "ml": ("mL", 1.0),
    "l": ("mL", ML_PER_L),
    # concentrations -> nmol/mL
    "nmol/ml": ("nmol/mL", 1.0),
    "nmol/l": ("nmol/mL", 1.0 / ML_PER_L),
    "nm": ("nmol/mL", 1.0 / ML_PER_L),
    # flows -> mL/h
    "ml/h": ("mL/h", 1.0),
    "ml/min": ("mL/h", MIN_PER_H),
    "l/min": ("mL/h", ML_PER_L * MIN_PER_H),
    "l/h": ("mL/h", ML_PER_L),
    # second-order rate constants -> mL/nmol/h
    "ml/nmol/h": ("mL/nmol/h", 1.0),
    "l/nmol/min": ("mL/nmol/h", ML_PER_L * MIN_PER_H),
    "l/nmol/h": ("mL/nmol/h", ML_PER_L),
    # amounts, masses, time
    "nmol": ("nmol", 1.0),
    "g": ("g", 1.0),
    "kg": ("kg", 1.0),
    "h": ("h", 1.0),
    "min": ("h", 1.0 / MIN_PER_H),
    "d": ("h", H_PER_DAY),
    "m^2": ("m^2", 1.0),
    "m2": ("m^2", 1.0),
    "cm": ("cm", 1.0),
}

_NUM_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def parse_quantity(text: str, canonical_unit: str, what: str = "value") -> float:
    """Parse ``"0.368/min"``, ``"14 nmol/L"`` or a bare number into the canonical unit.

    A bare number is taken to be in ``canonical_unit`` already. Raises InputError for a unit of
    another dimension or an unknown unit.
    """
    m = _NUM_UNIT.match(str(text))
    if not m:
        raise InputError(f"{what}: cannot read {text!r} as a number with an optional unit "
                         f"(examples: 0.5, 0.368/min, 14nmol/L)")
    value = float(m.group(1))
    unit = m.group(2).replace(" ", "").lower()
    if not unit:
        return value
    if unit not in _UNIT_FACTORS:
        raise InputError(f"{what}: unknown unit {m.group(2)!r}; known units: "
                         + ", ".join(sorted({k for k in _UNIT_FACTORS})))
    target, factor = _UNIT_FACTORS[unit]
    if target.lower() != canonical_unit.lower():
        raise InputError(f"{what}: unit {m.group(2)!r} is not a unit of {canonical_unit} "
                         f"(the parameter's canonical unit)")
    return value * factor


def check_finite_nonnegative(x: float, what: str) -> float:
    if not isinstance(x, (int, float)) or math.isnan(x) or math.isinf(x):
        raise InputError(f"{what} must be a finite number, got {x!r}")
    if x < 0:
        raise InputError(f"{what} must not be negative, got {x!r}")
    return float(x)
