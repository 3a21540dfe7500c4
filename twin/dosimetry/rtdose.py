"""Dose map output: DICOM RT Dose (pydicom) and NIfTI (SimpleITK), written atomically.

Geometry follows the SimpleITK image that carries the dose (origin = centre of voxel (0, 0, 0)
in patient LPS mm, direction cosines, spacing). RT Dose is one multi-frame object
(DICOM PS3.3 C.8.8.3, RT Dose module): ImagePositionPatient of the first frame,
ImageOrientationPatient = the first two direction columns, PixelSpacing = (row spacing,
column spacing) = (y, x), GridFrameOffsetVector = frame offsets (mm) along the normal
row x column from the first frame, 32-bit unsigned pixels times DoseGridScaling (Gy).
A left-handed grid (slice axis opposite to row x column) is written with its frames reversed so
that the offsets increase. FrameOfReferenceUID, StudyInstanceUID and the patient module come from
a reference DICOM dataset (the planning or SPECT CT) when given, else new UIDs and an anonymous
patient. Patient-identifying values are copied into the file only and never logged.
"""

from __future__ import annotations

import datetime

import numpy as np

from twin.errors import InputError

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
_PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_STUDY_TAGS = ("StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
               "ReferringPhysicianName")


def check_orthogonal(direction, tol: float = 1e-4) -> np.ndarray:
    """Direction cosines (9, row-major as SimpleITK) as 3x3; InputError unless orthonormal."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=tol):
        raise InputError("the image axes are not orthogonal (sheared or oblique-skewed grid); "
                         "resample it onto an orthogonal grid first")
    return d


def image_from_array(array_zyx, like):
    """A SimpleITK image of ``array_zyx`` (z, y, x) with the geometry of the image ``like``."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(array_zyx))
    img.CopyInformation(like)
    return img


def write_nifti(image, path, inputs=()):
    """Write a SimpleITK image to NIfTI (``.nii`` / ``.nii.gz``) atomically."""
    import SimpleITK as sitk

    from twin.atomic import atomic_path

    with atomic_path(path, inputs=inputs) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def write_rtdose(dose_image, path, reference=None, inputs=(), description: str = "twin dose"):
    """Write a dose image (SimpleITK, Gy) as a DICOM RT Dose file, atomically.

    ``reference``: optional pydicom Dataset (or path) of the source CT/SPECT whose frame of
    reference, study and patient module the dose belongs to. Returns the written Dataset.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    from twin.atomic import atomic_path

    import SimpleITK as sitk

    arr = np.asarray(sitk.GetArrayFromImage(dose_image), dtype=np.float64)
    if arr.ndim != 3:
        raise InputError(f"RT Dose needs a 3-D dose volume, got {arr.ndim}-D")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise InputError("the dose map has negative or non-finite values; cannot write RT Dose")
    d = check_orthogonal(dose_image.GetDirection())
    sx, sy, sz = (float(s) for s in dose_image.GetSpacing())
    origin = np.asarray(dose_image.GetOrigin(), dtype=np.float64)
    row, col = d[:, 0], d[:, 1]
    normal = np.cross(row, col)
    nz = arr.shape[0]
    if float(np.dot(d[:, 2], normal)) < 0:  # left-handed: reverse frames
        arr = arr[::-1]
        origin = origin + d[:, 2] * sz * (nz - 1)
    if reference is not None and not isinstance(reference, Dataset):
        try:
            reference = pydicom.dcmread(str(reference), stop_before_pixels=True, force=True)
        except Exception as exc:  # pydicom raises several types for unreadable files
            raise InputError(f"cannot read the reference DICOM file: "
                             f"{type(exc).__name__}") from None

    top = float(arr.max())
    scaling = top / 4294967295.0 if top > 0 else 1.0
    pixels = np.rint(arr / scaling).astype(np.uint32) if top > 0 else np.zeros(arr.shape, np.uint32)

    ds = Dataset()
    now = datetime.datetime.now()
    sop_uid = generate_uid()
    ds.SOPClassUID = RT_DOSE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTDOSE"
    ds.Manufacturer = "twin"
    ds.SeriesDescription = description
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "ANONYMOUS"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyID = ""
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    if reference is not None:
        for tag in _PATIENT_TAGS + _STUDY_TAGS + ("FrameOfReferenceUID",):
            if tag in reference:
                setattr(ds, tag, reference.data_element(tag).value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = int(arr.shape[0])
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.Rows = int(arr.shape[1])
    ds.Columns = int(arr.shape[2])
    ds.PixelSpacing = [f"{sy:.10g}", f"{sx:.10g}"]
    ds.SliceThickness = f"{sz:.10g}"
    ds.ImagePositionPatient = [f"{v:.10g}" for v in origin]
    ds.ImageOrientationPatient = [f"{v:.10g}" for v in np.concatenate([row, col])]
    ds.GridFrameOffsetVector = [f"{k * sz:.10g}" for k in range(arr.shape[0])]
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = f"{scaling:.10g}"
    # DS holds at most 16 characters: re-derive the pixels from the scaling as written.
    scaling_written = float(ds.DoseGridScaling)
    if top > 0:
        pixels = np.clip(np.rint(arr / scaling_written), 0, 4294967295).astype(np.uint32)
    ds.PixelData = np.ascontiguousarray(pixels).astype("<u4").tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_DOSE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    with atomic_path(path, inputs=inputs) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return ds


def read_rtdose(path):
    """Read an RT Dose file: (dose Gy (z, y, x), spacing (x, y, z), origin, direction).

    A thin adapter over :func:`twin.imaging.read_rtdose` (one reader of RT Dose in the project).
    """
    from twin.imaging.dicom_extra import read_rtdose as _read

    vol = _read(path)
    return (np.asarray(vol.array, dtype=np.float64), tuple(map(float, vol.spacing_mm)),
            tuple(map(float, vol.origin_mm)), tuple(map(float, vol.direction)))
