"""Voxel TIA -> absorbed dose map: kernel convolution with optional CT density correction.

The pipeline step of the design document: dose = TIA convolved with the voxel S-value kernel of
the nuclide at the grid's voxel size (:mod:`twin.dosimetry.convolve`), corrected for density
from CT (:mod:`twin.dosimetry.density`); nuclides without a kernel deposit their
non-penetrating energy locally (:func:`twin.dosimetry.kernels.dose_kernel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pbpk_models.radionuclides import normalise_nuclide
from twin.dosimetry.convolve import convolve_dose
from twin.dosimetry.density import density_scale
from twin.dosimetry.kernels import MEDIUM_DENSITY_G_CM3, _check_spacing, database_nuclide
from twin.errors import InputError


@dataclass(frozen=True)
class DoseResult:
    """A dose map with its geometry and per-region table.

    ``dose_gy``: float32 array (z, y, x) in Gy; ``spacing_mm``: voxel edges in array-axis order
    (z, y, x); ``origin_mm`` (x, y, z) and ``direction`` (9 numbers, row-major, SimpleITK
    convention) of the grid; ``nuclide``; ``table``: per-region statistics (pandas DataFrame) or
    None; ``method``: 'kernel' or 'local deposition'; ``density_corrected``.
    """

    dose_gy: np.ndarray
    spacing_mm: tuple
    nuclide: str
    origin_mm: tuple = (0.0, 0.0, 0.0)
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    table: object = field(default=None, compare=False)
    method: str = "kernel"
    density_corrected: bool = False


def check_tia(tia_mbq_h) -> np.ndarray:
    """Validate a TIA volume (MBq h per voxel): finite and non-negative. Returns float32."""
    t = np.asarray(tia_mbq_h)
    if t.ndim < 3:
        raise InputError(f"the TIA must be a 3-D volume, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.number):
        raise InputError("the TIA volume must be numeric (MBq h per voxel)")
    if np.isnan(t).any():
        raise InputError("the TIA volume contains NaN; replace them (e.g. by 0) before dose")
    if (t < 0).any():
        raise InputError(f"the TIA volume has negative values (min {float(t.min()):.3g} MBq h); "
                         f"TIA must be >= 0: clip reconstruction noise to 0 first")
    if np.isinf(t).any():
        raise InputError("the TIA volume contains infinite values")
    return t.astype(np.float32, copy=False)


def compute_dose(tia_mbq_h, nuclide: str, spacing_mm, density_g_cm3=None,
                 bone_density_threshold_g_cm3: float | None = None,
                 half_width=None) -> np.ndarray:
    """Absorbed dose (Gy, float32) from voxel TIA (MBq h per voxel).

    ``spacing_mm``: voxel edges (mm) in array-axis order. ``density_g_cm3``: optional density
    map on the same grid (e.g. :func:`hu_to_density` of a CT); with it, dose is scaled by
    1.04 / rho (soft-tissue kernel). ``bone_density_threshold_g_cm3``: if given (and a density
    map), voxels at or above it take the bone kernel's dose scaled by 1.85 / rho instead (ICRU
    compact bone kernels of the database); a user choice, not a literature value.
    Leading batch axes of the TIA are allowed (density broadcasts).
    """
    tia = check_tia(tia_mbq_h)
    name = normalise_nuclide(nuclide)
    sp = _check_spacing(spacing_mm)
    dose = np.asarray(convolve_dose(tia, name, sp, "soft", half_width))
    if density_g_cm3 is None:
        if bone_density_threshold_g_cm3 is not None:
            raise InputError("a bone kernel needs a density map: give a CT")
        return dose
    rho = np.asarray(density_g_cm3, dtype=np.float32)
    if rho.shape != tia.shape[-3:]:
        raise InputError(f"density map shape {rho.shape} differs from the TIA grid "
                         f"{tia.shape[-3:]}; resample the CT onto the TIA grid")
    dose = dose * density_scale(rho, MEDIUM_DENSITY_G_CM3["soft"])
    if bone_density_threshold_g_cm3 is not None:
        bone = rho >= np.float32(bone_density_threshold_g_cm3)
        # Local deposition (no kernel) is already E / (rho V) in any medium: nothing to swap.
        if bone.any() and database_nuclide(name):
            dose_b = np.asarray(convolve_dose(tia, name, sp, "bone", half_width))
            dose_b = dose_b * density_scale(rho, MEDIUM_DENSITY_G_CM3["bone"])
            dose = np.where(bone, dose_b, dose)
    return dose.astype(np.float32)


def accumulate_cycles(doses) -> np.ndarray:
    """Total absorbed dose (Gy) of several cycles on one grid: the voxel-wise sum.

    Each cycle's map must already be on the common grid (registration is the imaging stage's
    job). For BED, add per-cycle BEDs (full repair between cycles), not the summed dose.
    """
    arrs = [np.asarray(d, dtype=np.float32) for d in doses]
    if not arrs:
        raise InputError("no dose maps to accumulate")
    if any(a.shape != arrs[0].shape for a in arrs):
        raise InputError("dose maps of all cycles must be on the same grid; resample them first")
    return np.sum(np.stack(arrs), axis=0)
