"""The project's exception types.

Every error a user can cause is one of these, with a message that says what is wrong and
what to do about it. ``TwinError`` is the root; the command line turns any ``TwinError`` into a
one-line message and a non-zero exit, without a traceback.

The classes live in :mod:`pbpk_models.errors` (the lowest package, so that every package can
raise them without importing upwards) and are re-exported here, where the design document
places them.
"""

from pbpk_models.errors import (
    FitError as FitError,
    InputError as InputError,
    ModelError as ModelError,
    PlanInfeasible as PlanInfeasible,
    PrecisionError as PrecisionError,
    TwinError as TwinError,
)

__all__ = ["TwinError", "InputError", "ModelError", "FitError", "PlanInfeasible", "PrecisionError"]
