"""Option parsers shared by several subcommands."""

from __future__ import annotations

from twin.errors import InputError


def region_hours(items, option: str) -> dict:
    """``["Kidney=2.8", ...]`` -> ``{"Kidney": 2.8}``: positive hours per region, for options
    such as ``--repair-half-time`` and ``--half-life-h``; InputError naming the option."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise InputError(f"{option} takes REGION=HOURS, got {item!r}")
        region, value = item.split("=", 1)
        try:
            v = float(value)
        except ValueError:
            raise InputError(f"{option} {item!r}: HOURS must be a number") from None
        if not v > 0:
            raise InputError(f"{option} {item!r}: HOURS must be > 0")
        out[region.strip()] = v
    return out
