"""Exception types shared by all three packages (re-exported as :mod:`twin.errors`).

They are defined in the lowest package so that imports run in one direction only
(``twin`` -> ``calibration`` -> ``pbpk_models``).
"""

from __future__ import annotations


class TwinError(Exception):
    """Root of every error the project raises on purpose."""


class InputError(TwinError, ValueError):
    """Bad input at a boundary: a file, a DICOM tag, a geometry, a unit, a CLI option."""


class ModelError(TwinError):
    """A model is ill-formed or was asked for something it does not have."""


class FitError(TwinError):
    """A fit did not converge. ``diagnostics`` carries what the optimiser reported."""

    def __init__(self, message: str, diagnostics: dict | None = None):
        super().__init__(message)
        self.diagnostics = dict(diagnostics or {})


class PlanInfeasible(TwinError):
    """No regimen meets the limits. ``binding_limit`` names the limit that cannot be met."""

    def __init__(self, message: str, binding_limit: str | None = None):
        super().__init__(message)
        self.binding_limit = binding_limit


class PrecisionError(TwinError):
    """A computation that needs JAX's 64-bit mode was called without it."""
