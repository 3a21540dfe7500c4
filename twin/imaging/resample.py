"""Resampling to a common grid and rigid CT-to-CT registration (SimpleITK).

Concentrations (MBq/mL, HU) are resampled with linear interpolation, labels with nearest
neighbour. Registration: rigid (Euler 3D), Mattes mutual information, multi-resolution, as in the
SimpleITK registration examples (Yaniv Z et al., J Digit Imaging 2018;31:290-303,
doi:10.1007/s10278-017-0037-8).
"""

from __future__ import annotations

from dataclasses import dataclass

from twin.errors import InputError
from twin.imaging.volume import Volume


def resample_to(volume: Volume, reference: Volume, interpolation: str = "linear",
                default_value: float = 0.0, transform=None) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid.

    Args:
        interpolation: ``'linear'`` (intensities), ``'nearest'`` (labels) or ``'bspline'``.
        default_value: value outside ``volume`` (0 for activity; use -1000 for CT in HU).
        transform: optional SimpleITK transform mapping reference points to ``volume`` points
            (the result of :func:`register_rigid`).
    """
    import SimpleITK as sitk

    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
              "bspline": sitk.sitkBSpline}.get(interpolation)
    if interp is None:
        raise InputError(f"interpolation must be linear, nearest or bspline, got {interpolation!r}")
    if transform is None and volume.same_grid(reference):
        return volume.replace(frame_of_reference_uid=volume.frame_of_reference_uid
                              or reference.frame_of_reference_uid)
    src = volume.to_sitk()
    out_type = src.GetPixelID()
    if interpolation != "nearest" and volume.array.dtype.kind in "iub":
        src = sitk.Cast(src, sitk.sitkFloat32)
        out_type = sitk.sitkFloat32
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(_grid_image(reference))
    f.SetInterpolator(interp)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(out_type)
    if transform is not None:
        f.SetTransform(transform)
    img = f.Execute(src)
    fields = dict(units=volume.units, modality=volume.modality,
                  frame_of_reference_uid=reference.frame_of_reference_uid,
                  series_uid=volume.series_uid, acquisition_start=volume.acquisition_start,
                  description=volume.description, source=volume.source)
    return Volume.from_sitk(img, **fields)


def _grid_image(reference: Volume):
    """A 1-byte SimpleITK image with the reference's geometry (the reference filter only needs
    the grid; this avoids copying a large reference array)."""
    import SimpleITK as sitk

    img = sitk.Image(list(reference.size_xyz), sitk.sitkUInt8)
    img.SetSpacing(reference.spacing_mm)
    img.SetOrigin(reference.origin_mm)
    img.SetDirection(reference.direction)
    return img


@dataclass(frozen=True)
class RigidResult:
    """A rigid registration: the transform (fixed -> moving points) and its quality.

    ``translation_mm`` and ``rotation_rad`` (Euler angles about x, y, z) are the parameters;
    ``metric`` the final Mattes mutual information (lower is better).
    """

    transform: object
    translation_mm: tuple
    rotation_rad: tuple
    metric: float


def register_rigid(moving_ct: Volume, fixed_ct: Volume, shrink: tuple = (4, 2),
                   iterations: int = 100, seed: int = 0) -> RigidResult:
    """Rigid CT-to-CT registration of ``moving_ct`` (e.g. the SPECT/CT's CT) to ``fixed_ct``.

    Returns the transform that maps fixed (planning CT) coordinates into the moving image, which
    is what :func:`resample_to` needs (``resample_to(spect, planning_ct, transform=...)``).
    """
    import SimpleITK as sitk

    fixed = sitk.Cast(fixed_ct.to_sitk(), sitk.sitkFloat32)
    moving = sitk.Cast(moving_ct.to_sitk(), sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                 numberOfIterations=iterations)
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = tuple(shrink) + ((1,) if tuple(shrink)[-1:] != (1,) else ())
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([s / 2.0 for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    try:
        out = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise InputError(f"rigid registration of {moving_ct.source} to {fixed_ct.source} failed "
                         f"({str(exc).strip().splitlines()[-1][:100]}); check that both CTs "
                         f"overlap") from None
    tx = out.GetNthTransform(0) if hasattr(out, "GetNthTransform") else out
    ax, ay, az, tx_, ty_, tz_ = tx.GetParameters()  # Euler3D: angles (rad), translation (mm)
    return RigidResult(transform=out, translation_mm=(tx_, ty_, tz_), rotation_rad=(ax, ay, az),
                       metric=float(reg.GetMetricValue()))
