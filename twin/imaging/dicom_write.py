"""Writing DICOM image series (CT, PT, NM tomogram), RTSTRUCT and SEG with pydicom.

Used by the synthetic patient and by tests; real attributes with correct quantitation tags
(DICOM PS3.3 C.8.9 PET, C.8.4 NM) so that the same readers read them. Series are written into a
folder atomically: into a temporary sibling folder, renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

from twin.errors import InputError
from twin.imaging.dicom import (
    SOP_CT,
    SOP_NM,
    SOP_PET,
    SOP_RTSTRUCT,
    SOP_SEG,
    format_da_tm,
)
from twin.imaging.volume import Volume

# Root for generated UIDs: pydicom's registered prefix (PS3.5 9.2; pydicom.uid.PYDICOM_ROOT_UID).
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, generate_uid  # noqa: E402


def _ds(value: float) -> str:
    """A DS string (max 16 characters, PS3.5 6.2) with as much precision as fits."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


@contextlib.contextmanager
def atomic_folder(target):
    """Yield a temporary folder next to ``target``; rename it onto ``target`` on success.

    Refuses an existing non-empty ``target`` (never overwrite what might be an input).
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise InputError(f"output folder {target} exists and is not empty; choose a new folder")
    parent = target.parent
    if not parent.exists():
        raise InputError(f"output folder's parent {parent} does not exist; create it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_uid(seed: str | None = None) -> str:
    """A UID under pydicom's root; deterministic when ``seed`` is given (reproducible phantoms)."""
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[seed] if seed else None)


def _base(sop_class, modality, patient, study, series_uid, series_number, description,
          when: datetime, frame_of_reference_uid, seed):
    from pydicom.dataset import Dataset, FileMetaDataset

    sop_uid = new_uid(f"{seed}/sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_ROOT_UID + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.SpecificCharacterSet = "ISO_IR 100"
    for k, v in patient.items():
        setattr(ds, k, v)
    ds.StudyInstanceUID = study["uid"]
    ds.StudyID = study.get("id", "1")
    d, t = format_da_tm(study["datetime"])
    ds.StudyDate, ds.StudyTime = d, t
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    d, t = format_da_tm(when)
    ds.SeriesDate, ds.SeriesTime = d, t
    ds.AcquisitionDate, ds.AcquisitionTime = d, t
    ds.ContentDate, ds.ContentTime = d, t
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "twin synthetic patient"
    ds.PatientPosition = "HFS"
    return ds


def _image_pixels(ds, stored: np.ndarray):
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def _check_writable_geometry(vol: Volume):
    d = vol.direction_matrix
    if not np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2], atol=1e-6):
        raise InputError("the volume's slice axis is not row x column; DICOM slices need a "
                         "right-handed direction matrix")


def _radiopharm_item(injection, half_life_s, dose_value, nuclide_meaning):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    rp = Dataset()
    rp.Radiopharmaceutical = injection.radiopharmaceutical
    d, t = format_da_tm(injection.time)
    rp.RadiopharmaceuticalStartTime = t
    rp.RadiopharmaceuticalStartDateTime = d + t
    rp.RadionuclideTotalDose = _ds(dose_value)
    rp.RadionuclideHalfLife = _ds(half_life_s)
    code = Dataset()
    code.CodeValue = nuclide_meaning[0]
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = nuclide_meaning[1]
    rp.RadionuclideCodeSequence = Sequence([code])
    return rp


# SNOMED codes of the radionuclides (PS3.16 CID 18 Isotopes in Radiopharmaceuticals).
_NUCLIDE_CODES = {"Ga-68": ("C-131A3", "^68^Gallium"), "Lu-177": ("C-145A4", "^177^Lutetium"),
                  "F-18": ("C-111A1", "^18^Fluorine")}


def write_slices(vol: Volume, folder, *, modality: str, patient: dict, study: dict,
                 series_uid: str, series_number: int, description: str, when: datetime,
                 seed: str, extra=None, per_slice_times=None) -> list:
    """Write a single-frame series (CT or PT) into ``folder`` (which must exist); one file per
    slice. CT: int16 HU with RescaleIntercept 0; PT: int16 with a per-slice RescaleSlope (how
    scanners store PET, PS3.3 C.8.9.4). Returns the file paths."""
    from pydicom.dataset import Dataset

    _check_writable_geometry(vol)
    folder = Path(folder)
    d = vol.direction_matrix
    iop = [_ds(v) for v in np.r_[d[:, 0], d[:, 1]]]
    paths = []
    arr = vol.array
    for k in range(arr.shape[0]):
        sop = SOP_CT if modality == "CT" else SOP_PET
        ds = _base(sop, modality, patient, study, series_uid, series_number, description, when,
                   vol.frame_of_reference_uid, f"{seed}/{k}")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = vol.index_to_physical([0, 0, k])
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(vol.spacing_mm[1]), _ds(vol.spacing_mm[0])]
        ds.SliceThickness = _ds(vol.spacing_mm[2])
        ds.InstanceNumber = k + 1
        ds.SliceLocation = _ds(pos[2])
        sl = np.asarray(arr[k], dtype=np.float64)
        if modality == "CT":
            stored = np.clip(np.round(sl), -32768, 32767).astype(np.int16)
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
            ds.KVP = "120"
        else:
            peak = float(np.max(np.abs(sl))) if sl.size else 0.0
            slope = peak / 32767.0 if peak > 0 else 1.0
            stored = np.round(sl / slope).astype(np.int16)
            ds.RescaleIntercept, ds.RescaleSlope = "0", _ds(slope)
            ds.ImageIndex = k + 1
            if per_slice_times is not None:
                dd, tt = format_da_tm(per_slice_times[k])
                ds.AcquisitionDate, ds.AcquisitionTime = dd, tt
        if extra:
            extra(ds)
        _image_pixels(ds, stored)
        p = folder / f"{modality}_{k + 1:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def pet_extra(injection, units="BQML", decay_correction="START", weight_kg=None, height_m=None,
              frame_duration_ms=120000.0, nuclide=None):
    """Attributes of the PET Series and PET Isotope modules (PS3.3 C.8.9.1, C.8.9.2)."""
    from pydicom.sequence import Sequence

    from pbpk_models.radionuclides import half_life_h

    nuc = nuclide or injection.nuclide

    def f(ds):
        ds.Units = units
        ds.DecayCorrection = decay_correction
        ds.CorrectedImage = (["ATTN", "SCAT", "DECY"] if decay_correction != "NONE"
                             else ["ATTN", "SCAT"])
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CountsSource = "EMISSION"
        ds.ActualFrameDuration = str(int(frame_duration_ms))
        ds.NumberOfSlices = 1
        if weight_kg is not None:
            ds.PatientWeight = _ds(weight_kg)
        if height_m is not None:
            ds.PatientSize = _ds(height_m)
        ds.RadiopharmaceuticalInformationSequence = Sequence([_radiopharm_item(
            injection, half_life_h(nuc) * 3600.0, injection.activity_mbq * 1e6,  # PT: Bq
            _NUCLIDE_CODES.get(nuc, ("", nuc)))])
    return f


def write_nm_tomo(vol: Volume, path, *, patient: dict, study: dict, series_uid: str,
                  series_number: int, description: str, when: datetime, seed: str, injection,
                  frame_duration_ms: float, frames_in_rotation: int, n_detectors: int = 2,
                  units: str | None = None, weight_kg=None, height_m=None) -> Path:
    """Write a reconstructed SPECT (NM Image IOD, RECON TOMO, multi-frame, PS3.3 C.8.4).

    ``vol`` holds counts (uint16) or, with ``units='BQML'``, Bq/mL stored with a RescaleSlope.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.tag import Tag

    from pbpk_models.radionuclides import half_life_h

    _check_writable_geometry(vol)
    ds = _base(SOP_NM, "NM", patient, study, series_uid, series_number, description, when,
               vol.frame_of_reference_uid, seed)
    nz = vol.shape[0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = [Tag(0x0054, 0x0080)]  # SliceVector
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.PixelSpacing = [_ds(vol.spacing_mm[1]), _ds(vol.spacing_mm[0])]
    ds.SliceThickness = _ds(vol.spacing_mm[2])
    ds.SpacingBetweenSlices = _ds(vol.spacing_mm[2])
    d = vol.direction_matrix
    det = Dataset()
    det.ImagePositionPatient = [_ds(v) for v in vol.origin_mm]
    det.ImageOrientationPatient = [_ds(v) for v in np.r_[d[:, 0], d[:, 1]]]
    ds.DetectorInformationSequence = Sequence([det])
    ds.NumberOfDetectors = n_detectors
    rot = Dataset()
    rot.ActualFrameDuration = str(int(round(frame_duration_ms)))
    rot.NumberOfFramesInRotation = frames_in_rotation
    rot.AngularStep = _ds(360.0 / (frames_in_rotation * n_detectors))
    ds.RotationInformationSequence = Sequence([rot])
    ds.NumberOfRotations = 1
    ew = Dataset()
    rng = Dataset()
    # 177Lu 208 keV photopeak, 20% window (MIRD Pamphlet 26).
    rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = "187.2", "228.8"
    ew.EnergyWindowRangeSequence = Sequence([rng])
    ew.EnergyWindowName = "EM208"
    ds.EnergyWindowInformationSequence = Sequence([ew])
    ds.NumberOfEnergyWindows = 1
    nuc = injection.nuclide
    ds.RadiopharmaceuticalInformationSequence = Sequence([_radiopharm_item(
        injection, half_life_h(nuc) * 3600.0, injection.activity_mbq,  # NM: MBq
        _NUCLIDE_CODES.get(nuc, ("", nuc)))])
    if weight_kg is not None:
        ds.PatientWeight = _ds(weight_kg)
    if height_m is not None:
        ds.PatientSize = _ds(height_m)
    arr = np.asarray(vol.array, dtype=np.float64)
    if units == "BQML":
        ds.Units = "BQML"
        peak = float(arr.max()) if arr.size else 0.0
        slope = peak / 65535.0 if peak > 0 else 1.0
        stored = np.round(arr / slope).astype(np.uint16)
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), "0"
    else:
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"{path}: SPECT counts outside 0..65535 cannot be stored in 16 bits; "
                             f"lower the acquisition time or the calibration factor")
        stored = np.round(arr).astype(np.uint16)
    _image_pixels(ds, stored)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_rtstruct(labels: Volume, names: dict, path, *, patient: dict, study: dict,
                   series_uid: str, when: datetime, seed: str, referenced_series_uid: str = "",
                   colours=None) -> Path:
    """Write the regions of a label map as an RTSTRUCT of CLOSED_PLANAR contours (PS3.3 C.8.8.6).

    Contours are the 0.5 iso-lines (marching squares, contourpy) of each region's binary mask
    on each slice, so rasterising them at voxel centres (even-odd rule) gives the mask back.
    """
    import contourpy
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _base(SOP_RTSTRUCT, "RTSTRUCT", patient, study, series_uid, 99, "twin regions", when,
               labels.frame_of_reference_uid, seed)
    ds.StructureSetLabel = "twin"
    d, t = format_da_tm(when)
    ds.StructureSetDate, ds.StructureSetTime = d, t
    ref = Dataset()
    ref.FrameOfReferenceUID = labels.frame_of_reference_uid
    if referenced_series_uid:
        rs = Dataset()
        rs.SeriesInstanceUID = referenced_series_uid
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
        st.ReferencedSOPInstanceUID = study["uid"]
        st.RTReferencedSeriesSequence = Sequence([rs])
        ref.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    arr = np.asarray(labels.array)
    ssroi, roic, obs = [], [], []
    for n, (label, name) in enumerate(sorted(names.items()), start=1):
        mask = arr == label
        if not mask.any():
            continue
        r = Dataset()
        r.ROINumber = n
        r.ReferencedFrameOfReferenceUID = labels.frame_of_reference_uid
        r.ROIName = name
        r.ROIGenerationAlgorithm = "AUTOMATIC"
        ssroi.append(r)
        contours = []
        for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
            padded = np.pad(mask[k].astype(np.float64), 1)
            gen = contourpy.contour_generator(z=padded, line_type="Separate")
            for line in gen.lines(0.5):
                if len(line) < 4:
                    continue
                line = line[:-1] if np.allclose(line[0], line[-1]) else line
                ij = np.c_[line[:, 0] - 1, line[:, 1] - 1, np.full(len(line), k)]
                xyz = labels.index_to_physical(ij)
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(xyz)
                c.ContourData = [_ds(v) for v in xyz.ravel()]
                contours.append(c)
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ROIDisplayColor = list((colours or {}).get(name, (255, 0, 0)))
        rc.ContourSequence = Sequence(contours)
        roic.append(rc)
        o = Dataset()
        o.ObservationNumber = n
        o.ReferencedROINumber = n
        o.RTROIInterpretedType = "ORGAN" if not name.lower().startswith("tumor") else "GTV"
        o.ROIInterpreter = ""
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ssroi)
    ds.ROIContourSequence = Sequence(roic)
    ds.RTROIObservationsSequence = Sequence(obs)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_seg(labels: Volume, names: dict, path, *, patient: dict, study: dict, series_uid: str,
              when: datetime, seed: str) -> Path:
    """Write a label map as a binary DICOM SEG (PS3.3 A.51, C.8.20): one frame per segment and
    slice that contains it, with per-frame plane positions."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _base(SOP_SEG, "SEG", patient, study, series_uid, 98, "twin segmentation", when,
               labels.frame_of_reference_uid, seed)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SegmentationType = "BINARY"
    ds.ContentLabel = "TWIN"
    arr = np.asarray(labels.array)
    segs, frames, per = [], [], []
    d = labels.direction_matrix
    for n, (label, name) in enumerate(sorted(names.items()), start=1):
        s = Dataset()
        s.SegmentNumber = n
        s.SegmentLabel = name
        s.SegmentAlgorithmType = "MANUAL"
        segs.append(s)
        mask = arr == label
        for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
            frames.append(mask[k])
            fg = Dataset()
            pp = Dataset()
            pp.ImagePositionPatient = [_ds(v) for v in labels.index_to_physical([0, 0, k])]
            fg.PlanePositionSequence = Sequence([pp])
            si = Dataset()
            si.ReferencedSegmentNumber = n
            fg.SegmentIdentificationSequence = Sequence([si])
            per.append(fg)
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [_ds(v) for v in np.r_[d[:, 0], d[:, 1]]]
    pm = Dataset()
    pm.PixelSpacing = [_ds(labels.spacing_mm[1]), _ds(labels.spacing_mm[0])]
    pm.SliceThickness = _ds(labels.spacing_mm[2])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.SegmentSequence = Sequence(segs)
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    from pydicom.pixels import pack_bits

    ds.PixelData = pack_bits(np.asarray(frames, dtype=np.uint8)) if frames else b""
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
