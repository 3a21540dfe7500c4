"""RT Dose reading (DICOM PS3.3 C.8.8.3): the dose grid as a Volume in Gy.

Frames lie at ImagePositionPatient + GridFrameOffsetVector along the slice normal (offsets
relative to the first frame, C.8.8.3.2); values = stored x DoseGridScaling (Gy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.errors import InputError
from twin.imaging.dicom import (
    quiet_dicom,
    SLICE_SPACING_TOLERANCE_MM,
    _dcmread,
    _direction_from_iop,
    _float,
    _floats,
    _pixels,
    _spacing_rc,
    _str,
    _value,
)
from twin.imaging.volume import Volume, check_axial


@quiet_dicom
def read_rtdose(path) -> Volume:
    """Read an RT Dose file as a Volume (``units='Gy'``); uniform frame spacing required."""
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=False)
    if _str(ds, "Modality", path) != "RTDOSE":
        raise InputError(f"{path}: not an RT Dose file (Modality {_str(ds, 'Modality', path)!r})")
    arr = _pixels(ds, path)
    ipp = _floats(ds, "ImagePositionPatient", 3, path)
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    if ipp is None or iop is None:
        raise InputError(f"{path}: RT Dose without ImagePositionPatient/Orientation; re-export")
    direction = _direction_from_iop(iop)
    check_axial(direction.ravel(), str(path))
    ps = _spacing_rc(ds, path)
    offsets = _value(ds, "GridFrameOffsetVector", None, path)
    nf = arr.shape[0]
    if nf > 1:
        try:
            off = np.asarray([float(v) for v in offsets], float)
        except Exception:
            raise InputError(f"{path}: GridFrameOffsetVector missing or corrupt; re-export") \
                from None
        if len(off) != nf:
            raise InputError(f"{path}: {len(off)} frame offsets for {nf} frames; re-export")
        d = np.diff(off)
        dz = float(np.mean(d))
        if np.any(np.abs(d - dz) > SLICE_SPACING_TOLERANCE_MM) or dz == 0:
            raise InputError(f"{path}: RT Dose frames unevenly spaced; resample it to a regular "
                             f"grid first")
        if dz < 0:
            arr = arr[::-1]
            ipp = list(np.asarray(ipp) + off[-1] * direction[:, 2])
            dz = -dz
    else:
        dz = _float(ds, "SliceThickness", path) or 1.0
    scale = _float(ds, "DoseGridScaling", path, 1.0)
    units = _str(ds, "DoseUnits", path).upper() or "GY"
    return Volume(arr.astype(np.float32) * np.float32(scale), spacing_mm=(ps[1], ps[0], abs(dz)),
                  origin_mm=ipp, direction=direction.ravel(),
                  units="Gy" if units == "GY" else units,
                  modality="RTDOSE", frame_of_reference_uid=_str(ds, "FrameOfReferenceUID", path),
                  series_uid=_str(ds, "SeriesInstanceUID", path), source=str(path))
