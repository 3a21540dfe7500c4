"""Organ limits as data: ``REGION:dose_gy<=X`` or ``REGION:bed_gy<=X`` at a posterior quantile.

Known limits and their sources (as listed in /work/shared/data/pbpk/clinical_reference.md and
/work/shared/data/trials/population_radiobiology.md; cite the papers):

- Kidney BED 40 Gy (no risk factors) and 28 Gy (with risk factors): Bodei L et al., Eur J Nucl
  Med Mol Imaging 2008;35:1847-1856 (177Lu/90Y-DOTATATE nephrotoxicity); Wessels BW et al.
  (MIRD Pamphlet 20), J Nucl Med 2008;49:1884-1899.
- Kidney absorbed dose 23 Gy: Emami B et al., Int J Radiat Oncol Biol Phys 1991;21:109-122
  (EBRT TD5/5), the cap used in dosimetry-guided PRRT and in RESIST-PC.
- Red marrow absorbed dose 2 Gy: Benua RS et al., Am J Roentgenol 1962;87:171-182 (131I
  practice).
- Salivary glands: no validated limit for radioligand therapy; the EBRT anchor is a mean
  parotid dose < 25 Gy (QUANTEC, Deasy JO et al., Int J Radiat Oncol Biol Phys 2010;76:S58-S63)
  - offered as an optional, explicitly EBRT-derived limit, not a default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from twin.errors import InputError

QUANTITIES = ("dose_gy", "bed_gy")


@dataclass(frozen=True)
class Limit:
    """``quantity`` (cumulative over the regimen) of ``region`` must stay <= ``value`` at the
    plan's posterior quantile."""

    region: str
    quantity: str
    value: float
    source: str = "user-given"

    def __post_init__(self):
        if self.quantity not in QUANTITIES:
            raise InputError(f"limit quantity must be dose_gy or bed_gy, got {self.quantity!r}")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value) or \
                self.value <= 0:
            raise InputError(f"limit value must be a positive number of Gy, got {self.value!r}")

    def __str__(self) -> str:
        return f"{self.region}:{self.quantity}<={self.value:g}"


_BODEI = ("Bodei L et al., Eur J Nucl Med Mol Imaging 2008;35:1847-1856; Wessels BW et al. "
          "(MIRD 20), J Nucl Med 2008;49:1884-1899")
KNOWN_LIMITS = {
    ("Kidney", "bed_gy", 40.0): "kidney BED, no risk factors: " + _BODEI,
    ("Kidney", "bed_gy", 28.0): "kidney BED, with risk factors: " + _BODEI,
    ("Kidney", "dose_gy", 23.0): "kidney TD5/5: Emami B et al., Int J Radiat Oncol Biol Phys "
                                 "1991;21:109-122 (EBRT); RESIST-PC cap",
    ("RedMarrow", "dose_gy", 2.0): "red marrow: Benua RS et al., Am J Roentgenol 1962;87:171 "
                                   "(131I practice)",
    ("SG", "dose_gy", 25.0): "EBRT anchor only (mean parotid dose, QUANTEC: Deasy JO et al., "
                             "Int J Radiat Oncol Biol Phys 2010;76:S58); no validated RLT limit",
}


def _with_source(region, quantity, value) -> Limit:
    src = KNOWN_LIMITS.get((region, quantity, float(value)), "user-given")
    return Limit(region, quantity, float(value), src)


def default_limits(risk_factors: bool = False) -> list[Limit]:
    """Kidney BED 40 Gy (28 Gy with risk factors) and red-marrow dose 2 Gy, with sources."""
    return [_with_source("Kidney", "bed_gy", 28.0 if risk_factors else 40.0),
            _with_source("RedMarrow", "dose_gy", 2.0)]


_PATTERN = re.compile(r"^\s*([A-Za-z0-9_\-\[\]]+)\s*:\s*([a-z_]+)\s*(<=|<)\s*([^\s]+)\s*$")


def parse_limit(text: str) -> Limit:
    """Parse ``REGION:dose_gy<=X`` or ``REGION:bed_gy<=X`` (X in Gy)."""
    m = _PATTERN.match(str(text))
    if not m:
        raise InputError(f"cannot read the limit {text!r}; write REGION:dose_gy<=X or "
                         f"REGION:bed_gy<=X, e.g. Kidney:bed_gy<=40 or RedMarrow:dose_gy<=2")
    region, quantity, _, value = m.groups()
    if quantity not in QUANTITIES:
        raise InputError(f"limit {text!r}: the quantity must be dose_gy or bed_gy, not "
                         f"{quantity!r}")
    try:
        v = float(value)
    except ValueError:
        raise InputError(f"limit {text!r}: {value!r} is not a number (Gy)") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"limit {text!r}: the value must be a positive number of Gy")
    return _with_source(region, quantity, v)


def check_limits(limits, regions, bed_available) -> list[Limit]:
    """Validate limits against the model's regions and the regions with BED parameters."""
    out = []
    for lim in limits:
        lim = parse_limit(lim) if isinstance(lim, str) else lim
        if lim.region not in regions:
            raise InputError(f"limit {lim}: unknown region {lim.region!r}; the model's regions: "
                             f"{', '.join(regions)}")
        if lim.quantity == "bed_gy" and lim.region not in bed_available:
            raise InputError(f"limit {lim}: no BED for {lim.region} (no repair half-time in the "
                             f"project's references); give one (repair_half_time_h / "
                             f"--repair-half-time {lim.region}=HOURS) or limit dose_gy instead")
        out.append(lim)
    if not out:
        raise InputError("give at least one limit (e.g. Kidney:bed_gy<=40)")
    keys = [(lim.region, lim.quantity) for lim in out]
    if len(set(keys)) != len(keys):
        raise InputError("two limits on the same region and quantity; keep the tighter one")
    return out
