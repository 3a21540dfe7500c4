"""Atomic output (temporary file beside the target, then rename); defined in
:mod:`pbpk_models.atomic` so that every package can use it, re-exported here."""

from pbpk_models.atomic import *  # noqa: F401,F403
from pbpk_models.atomic import __all__  # noqa: F401
