"""Image-level dose calculation: SimpleITK images in, a dose image and region table out.

Array order is SimpleITK's (z, y, x); spacings given to the kernel code are in that order
(``spacing_zyx``). Grids must be orthogonal; TIA, CT and labels must share one grid unless the
caller asks to resample (CT: linear, -1000 HU outside; labels: nearest neighbour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.errors import InputError


def read_image(path, what: str):
    """Read an image with SimpleITK; InputError (one line) if missing or unreadable."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} path {p} is a folder; give a NIfTI file (.nii or .nii.gz)")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError:
        raise InputError(f"cannot read the {what} file {p}: not an image SimpleITK reads "
                         f"(use NIfTI .nii/.nii.gz)") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {what} must be a 3-D scalar volume, got {img.GetDimension()}-D "
                         f"with {img.GetNumberOfComponentsPerPixel()} components")
    from twin.dosimetry.rtdose import check_orthogonal

    try:
        check_orthogonal(img.GetDirection())
    except InputError:
        raise InputError(f"the {what} has non-orthogonal axes (direction "
                         f"{tuple(round(v, 4) for v in img.GetDirection())}); resample it onto an "
                         f"orthogonal grid first") from None
    return img


def spacing_zyx(img) -> tuple:
    """Voxel edges (mm) in array-axis order (z, y, x)."""
    return tuple(float(s) for s in reversed(img.GetSpacing()))


def same_grid(a, b, tol_mm: float = 1e-3) -> bool:
    """True if two images share size, spacing, origin (within ``tol_mm``) and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol_mm)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol_mm)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def onto_grid(img, reference, what: str, resample: bool, nearest: bool, default: float):
    """``img`` on ``reference``'s grid: as is if already there, resampled if allowed, else error."""
    import SimpleITK as sitk

    if same_grid(img, reference):
        return img
    if not resample:
        sp_a = tuple(round(s, 4) for s in img.GetSpacing())
        sp_b = tuple(round(s, 4) for s in reference.GetSpacing())
        raise InputError(f"the {what} and the TIA are on different grids (size {img.GetSize()} "
                         f"vs {reference.GetSize()}, spacing {sp_a} vs {sp_b}); pass --resample "
                         f"to resample the {what} onto the TIA grid")
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(img, reference, sitk.Transform(), interp, default, img.GetPixelID())


def dose_from_images(tia_img, nuclide: str, ct_img=None, labels_img=None, label_names=None,
                     resample: bool = False, bone_density_threshold_g_cm3=None,
                     v_thresholds_gy=()):
    """Dose image (Gy, float32, TIA grid) and region table from a TIA image (MBq h per voxel).

    Returns (dose SimpleITK image, DoseResult). See :func:`twin.dosimetry.dose.compute_dose`.
    """
    import SimpleITK as sitk

    from pbpk_models.radionuclides import half_life_h, normalise_nuclide
    from twin.dosimetry.density import hu_to_density
    from twin.dosimetry.dose import DoseResult, check_tia, compute_dose
    from twin.dosimetry.dvh import region_statistics
    from twin.dosimetry.kernels import (
        MEDIUM_DENSITY_G_CM3,
        MGY_PER_MBQ_S_TO_GY_PER_MBQ_H,
        database_nuclide,
        dose_kernel,
        kernel_energy_mev,
        local_energy_mev,
    )

    name = normalise_nuclide(nuclide)
    half_life_h(name)  # unknown nuclide -> InputError
    tia = check_tia(sitk.GetArrayFromImage(tia_img))
    sp = spacing_zyx(tia_img)
    density = None
    if ct_img is not None:
        ct = onto_grid(ct_img, tia_img, "CT", resample, nearest=False, default=-1000.0)
        density = hu_to_density(sitk.GetArrayFromImage(ct))
    labels = None
    if labels_img is not None:
        lab_img = onto_grid(labels_img, tia_img, "label volume", resample, nearest=True, default=0)
        labels = sitk.GetArrayFromImage(lab_img)
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.mod(labels, 1) == 0):
                raise InputError("the label volume holds non-integer values; it must be a label "
                                 "map (0 = background, 1, 2, ... = regions)")
            labels = labels.astype(np.int32)
    dose = compute_dose(tia, name, sp, density, bone_density_threshold_g_cm3)
    table = None
    if labels is not None:
        if database_nuclide(name):
            k = dose_kernel(name, sp)  # cached fit; energy absorbed within the kernel
            e = kernel_energy_mev(k / MGY_PER_MBQ_S_TO_GY_PER_MBQ_H, sp,
                                  MEDIUM_DENSITY_G_CM3["soft"])
        else:
            e = local_energy_mev(name)
        table = region_statistics(dose, labels, label_names,
                                  voxel_volume_ml=float(np.prod(sp)) * 1e-3,
                                  v_thresholds_gy=v_thresholds_gy, tia_mbq_h=tia,
                                  energy_mev_per_decay=e, density_g_cm3=density)
    out = sitk.GetImageFromArray(dose.astype(np.float32))
    out.CopyInformation(tia_img)
    result = DoseResult(dose_gy=dose, spacing_mm=sp, nuclide=name,
                        origin_mm=tuple(tia_img.GetOrigin()),
                        direction=tuple(tia_img.GetDirection()), table=table,
                        method="kernel" if database_nuclide(name) else "local deposition",
                        density_corrected=density is not None)
    return out, result
