"""Reading DICOM: study discovery, image series (CT, PT, NM tomograms) and their header facts.

pydicom reads every file (headers and pixel data); the geometry is computed here from
ImagePositionPatient / ImageOrientationPatient (DICOM PS3.3 C.7.6.2) so that it is exact and
checked: SimpleITK's series reader silently averages the spacing over a missing slice (see
NOTES.md), so slice positions are verified here to be evenly spaced and collinear.

Every problem with a file becomes an :class:`~twin.errors.InputError` naming the file and what
to do. Patient-identifying attributes are never copied into the objects returned here, except
by :func:`patient_identifiers`, which callers use only when the user asks for them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from twin.errors import InputError
from twin.imaging.volume import Volume, check_axial

# SOP classes (DICOM PS3.4 Annex B.5, standard SOP classes).
SOP_CT = "1.2.840.10008.5.1.4.1.1.2"
SOP_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SOP_PET = "1.2.840.10008.5.1.4.1.1.128"
SOP_ENHANCED_PET = "1.2.840.10008.5.1.4.1.1.130"
SOP_NM = "1.2.840.10008.5.1.4.1.1.20"
SOP_RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
SOP_RTDOSE = "1.2.840.10008.5.1.4.1.1.481.2"
SOP_SEG = "1.2.840.10008.5.1.4.1.1.66.4"

IMAGE_MODALITIES = ("CT", "PT", "NM")

# Slice positions must be evenly spaced to this tolerance (mm). Scanners write positions with
# 6-10 significant digits; a missing slice moves a position by a whole spacing (>= 0.5 mm).
SLICE_SPACING_TOLERANCE_MM = 0.01

# Attributes that identify the patient (DICOM PS3.15 Annex E, Basic Application Level
# Confidentiality Profile, Table E.1-1 - the subset that commonly holds identity). They are read
# only by patient_identifiers() and never stored in SeriesInfo, Volume, logs or output tables.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "MedicalRecordLocator", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StudyID",
    "IssuerOfPatientID", "EthnicGroup", "PatientComments",
)


# -- low-level helpers ------------------------------------------------------------------------
def quiet_dicom(fn):
    """Run ``fn`` with pydicom's value validation off and its warnings silenced.

    pydicom validates values lazily, on first access, and its warnings quote the offending
    value: for a malformed PatientName that would put an identifier into the logs. Problems
    that matter become InputError instead. The setting is restored afterwards (no global state
    changes).
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pydicom import config

        old = config.settings.reading_validation_mode
        config.settings.reading_validation_mode = config.IGNORE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        finally:
            config.settings.reading_validation_mode = old
    return wrapper


def _dcmread(path, stop_before_pixels: bool):
    """pydicom.dcmread turning every failure into InputError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                # Some files (pydicom's own rtstruct.dcm) lack the 128-byte preamble and file
                # meta; read them as a raw data set and keep them only if they look like DICOM.
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    raise InputError(f"{path}: not a DICOM file; remove it from the folder")
                return ds
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: corrupt DICOM (an element claims more memory than exists); "
                         f"re-export the file from the scanner or PACS") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InputError(f"{path}: cannot read DICOM ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); the file is "
                         f"corrupt or truncated: re-export it from the scanner or PACS") from None


def _value(ds, keyword, default=None, path=""):
    """One attribute's value, with corrupt values turned into InputError."""
    try:
        if keyword not in ds:
            return default
        v = ds.get(keyword, default)
        if v is None or (hasattr(v, "__len__") and not isinstance(v, (str, bytes)) and len(v) == 0
                         and not hasattr(v, "VR")):
            return default
        return v
    except Exception as exc:
        raise InputError(f"{path}: attribute {keyword} is corrupt ({type(exc).__name__}); "
                         f"re-export the file from the scanner or PACS") from None


def _str(ds, keyword, path="", default="") -> str:
    v = _value(ds, keyword, None, path)
    if v is None:
        return default
    return str(v).strip()


def _float(ds, keyword, path="", default=None):
    v = _value(ds, keyword, None, path)
    if v is None or str(v).strip() == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{path}: attribute {keyword} = {str(v)[:40]!r} is not a number; "
                         f"fix or re-export the file") from None


def _floats(ds, keyword, n, path=""):
    v = _value(ds, keyword, None, path)
    if v is None:
        return None
    try:
        out = [float(x) for x in (v if not isinstance(v, (str, bytes)) else str(v).split("\\"))]
    except (TypeError, ValueError):
        raise InputError(f"{path}: attribute {keyword} is not a list of numbers; fix or "
                         f"re-export the file") from None
    if len(out) != n or not np.all(np.isfinite(out)):
        raise InputError(f"{path}: attribute {keyword} needs {n} finite numbers, got {len(out)}; "
                         f"fix or re-export the file")
    return out


def parse_da_tm(date: str | None, time: str | None) -> datetime | None:
    """DICOM DA 'YYYYMMDD' and TM 'HHMMSS.FFFFFF' (PS3.5 Table 6.2-1) -> datetime."""
    if not date:
        return None
    date = str(date).strip().replace(".", "").replace("-", "")
    try:
        day = datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return None
    t = str(time or "").strip().replace(":", "")
    if not t:
        return day
    try:
        hh = int(t[0:2])
        mm = int(t[2:4]) if len(t) >= 4 else 0
        ss = float(t[4:]) if len(t) > 4 else 0.0
    except ValueError:
        return None
    if not (0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss < 61):
        return None
    return day + timedelta(hours=hh, minutes=mm, seconds=ss)


def parse_dt(value: str | None) -> datetime | None:
    """DICOM DT 'YYYYMMDDHHMMSS.FFFFFF&ZZXX' -> naive local datetime (offset dropped)."""
    if not value:
        return None
    s = str(value).strip()
    for sign in "+-":
        if sign in s[8:]:
            s = s[: 8 + s[8:].index(sign)]
    return parse_da_tm(s[:8], s[8:] or None)


def format_da_tm(dt: datetime) -> tuple[str, str]:
    """datetime -> (DA, TM) strings."""
    return dt.strftime("%Y%m%d"), dt.strftime("%H%M%S.%f")


# -- the facts of one series ------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesInfo:
    """What a series is, from its headers alone (no pixel data, no patient identity).

    Times are naive local datetimes as DICOM writes them; durations in seconds; activity as
    written in the file (see :mod:`twin.imaging.quantitation` for units).
    """

    series_uid: str
    modality: str
    sop_class_uid: str
    files: tuple
    kind: str  # 'image', 'rtstruct', 'seg', 'rtdose', 'other'
    description: str = ""
    frame_of_reference_uid: str = ""
    study_uid: str = ""
    series_datetime: datetime | None = None
    acquisition_datetime: datetime | None = None
    n_frames: int = 0
    rows: int = 0
    columns: int = 0
    units: str = ""
    radiopharmaceutical: str = ""
    injection_datetime: datetime | None = None
    image_type: tuple = ()
    patient_weight_kg: float | None = None
    patient_height_m: float | None = None
    patient_sex: str = ""

    @property
    def folder(self) -> str:
        return str(Path(self.files[0]).parent) if self.files else ""

    @property
    def start(self) -> datetime | None:
        """Acquisition start: the earlier of series and first acquisition time (QIBA rule)."""
        times = [t for t in (self.series_datetime, self.acquisition_datetime) if t is not None]
        return min(times) if times else None


def _kind(sop: str, modality: str) -> str:
    if sop == SOP_RTSTRUCT or modality == "RTSTRUCT":
        return "rtstruct"
    if sop == SOP_SEG or modality == "SEG":
        return "seg"
    if sop == SOP_RTDOSE or modality == "RTDOSE":
        return "rtdose"
    if modality in IMAGE_MODALITIES:
        return "image"
    return "other"


def _first_radiopharmaceutical(ds, path=""):
    seq = _value(ds, "RadiopharmaceuticalInformationSequence", None, path)
    if not seq:
        return None
    try:
        return seq[0]
    except Exception:
        raise InputError(f"{path}: RadiopharmaceuticalInformationSequence is corrupt; "
                         f"re-export the file") from None


def _info_from_dataset(ds, path: Path) -> dict:
    modality = _str(ds, "Modality", path).upper()
    sop = _str(ds, "SOPClassUID", path)
    rp = _first_radiopharmaceutical(ds, path)
    rp_name = _str(rp, "Radiopharmaceutical", path) if rp is not None else ""
    inj = None
    if rp is not None:
        inj = parse_dt(_str(rp, "RadiopharmaceuticalStartDateTime", path)) or parse_da_tm(
            _str(ds, "SeriesDate", path), _str(rp, "RadiopharmaceuticalStartTime", path) or None)
    acq = parse_dt(_str(ds, "AcquisitionDateTime", path)) or parse_da_tm(
        _str(ds, "AcquisitionDate", path) or _str(ds, "SeriesDate", path),
        _str(ds, "AcquisitionTime", path) or None)
    image_type = _value(ds, "ImageType", (), path)
    try:
        image_type = tuple(str(x).upper() for x in image_type) if not isinstance(
            image_type, str) else tuple(image_type.upper().split("\\"))
    except Exception:
        image_type = ()
    height = _float(ds, "PatientSize", path)
    try:
        nf = int(_value(ds, "NumberOfFrames", 1, path) or 1)
        rows = int(_value(ds, "Rows", 0, path) or 0)
        cols = int(_value(ds, "Columns", 0, path) or 0)
    except (TypeError, ValueError):
        raise InputError(f"{path}: Rows/Columns/NumberOfFrames are not integers; re-export the "
                         f"file") from None
    return dict(
        series_uid=_str(ds, "SeriesInstanceUID", path) or f"(no SeriesInstanceUID) {path.parent}",
        modality=modality, sop_class_uid=sop, kind=_kind(sop, modality),
        description=_str(ds, "SeriesDescription", path),
        frame_of_reference_uid=_str(ds, "FrameOfReferenceUID", path),
        study_uid=_str(ds, "StudyInstanceUID", path),
        series_datetime=parse_da_tm(_str(ds, "SeriesDate", path), _str(ds, "SeriesTime", path)
                                    or None),
        acquisition_datetime=acq, n_frames=nf, rows=rows, columns=cols,
        units=_str(ds, "Units", path).upper(), radiopharmaceutical=rp_name,
        injection_datetime=inj, image_type=image_type,
        patient_weight_kg=_float(ds, "PatientWeight", path) or None,
        patient_height_m=height or None,
        patient_sex=_str(ds, "PatientSex", path).upper(),
    )


@dataclass(frozen=True)
class FolderIndex:
    """The result of scanning a folder: DICOM series, NIfTI files and files not understood."""

    folder: str
    series: tuple = ()
    nifti: tuple = ()
    unreadable: tuple = ()  # (path, reason) pairs

    def by_kind(self, kind: str) -> tuple:
        return tuple(s for s in self.series if s.kind == kind)

    def images(self, modality: str | None = None) -> tuple:
        out = [s for s in self.series if s.kind == "image"
               and (modality is None or s.modality == modality)]
        return tuple(sorted(out, key=lambda s: (s.start or datetime.max, s.series_uid)))


NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI_SUFFIXES)


@quiet_dicom
def scan_folder(folder, recursive: bool = True) -> FolderIndex:
    """Find the DICOM series and NIfTI files under ``folder`` (headers only, fast).

    Files that are neither are listed in ``unreadable`` with the reason, not raised, so that a
    folder with a stray README still scans. Raises InputError if ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found; give the folder holding the DICOM files")
    if folder.is_file():
        paths = [folder]
    else:
        it = folder.rglob("*") if recursive else folder.glob("*")
        paths = sorted(p for p in it if p.is_file() and not p.name.startswith("."))
    groups: dict[str, dict] = {}
    files: dict[str, list] = {}
    times: dict[str, list] = {}
    nifti, unreadable = [], []
    for p in paths:
        if _is_nifti(p):
            nifti.append(str(p))
            continue
        if p.suffix.lower() in (".csv", ".json", ".txt", ".md", ".parquet", ".toml"):
            continue
        try:
            ds = _dcmread(p, stop_before_pixels=True)
            info = _info_from_dataset(ds, p)
        except InputError as exc:
            unreadable.append((str(p), str(exc)))
            continue
        uid = info["series_uid"]
        groups.setdefault(uid, info)
        files.setdefault(uid, []).append(str(p))
        if info["acquisition_datetime"] is not None:
            times.setdefault(uid, []).append(info["acquisition_datetime"])
    series = []
    for uid, info in groups.items():
        info = dict(info)
        info["files"] = tuple(files[uid])
        if times.get(uid):
            info["acquisition_datetime"] = min(times[uid])
        series.append(SeriesInfo(**info))
    series.sort(key=lambda s: (s.kind != "image", s.modality, s.start or datetime.max))
    return FolderIndex(folder=str(folder), series=tuple(series), nifti=tuple(nifti),
                       unreadable=tuple(unreadable))


@quiet_dicom
def patient_identifiers(path) -> dict:
    """The identifying attributes of one file (only for ``twin inspect --show-identifiers``)."""
    ds = _dcmread(path, stop_before_pixels=True)
    return {k: _str(ds, k, path) for k in IDENTIFYING_KEYWORDS if _str(ds, k, path)}


# -- pixel data -------------------------------------------------------------------------------
_NATIVE_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
              "1.2.840.10008.1.2.1.99"}


def _pixels(ds, path: Path) -> np.ndarray:
    """Stored pixel values as an array ``(frames, rows, cols)``, with a truncation check."""
    if "PixelData" not in ds:
        raise InputError(f"{path}: has no pixel data; it is not an image (remove it or point to "
                         f"the image series)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(_value(ds, "SamplesPerPixel", 1, path) or 1)
        nf = int(_value(ds, "NumberOfFrames", 1, path) or 1)
    except Exception:
        raise InputError(f"{path}: Rows, Columns or BitsAllocated missing or corrupt; re-export "
                         f"the file") from None
    if spp != 1:
        raise InputError(f"{path}: {spp} samples per pixel (colour); twin reads greyscale "
                         f"quantitative images only")
    if rows <= 0 or cols <= 0 or nf <= 0 or bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{path}: impossible image size {rows}x{cols}x{nf} with {bits} bits; "
                         f"re-export the file")
    ts = ""
    if getattr(ds, "file_meta", None) is not None:
        ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if ts in _NATIVE_TS or not ts:
        expected = (rows * cols * nf * bits + 7) // 8
        try:
            got = len(ds.PixelData)
        except Exception:
            raise InputError(f"{path}: pixel data unreadable; the file is truncated or corrupt: "
                             f"re-export it") from None
        if got < expected:
            raise InputError(f"{path}: truncated file (pixel data has {got} bytes, the header "
                             f"promises {expected}); copy or export the file again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except MemoryError:
        raise InputError(f"{path}: corrupt pixel data; re-export the file") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot decode pixel data ({type(exc).__name__}) with transfer "
                         f"syntax {ts or 'unknown'}; decompress the file (e.g. gdcmconv --raw) or "
                         f"re-export it uncompressed") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (nf, rows, cols):
        raise InputError(f"{path}: pixel data shape {arr.shape} does not match the header "
                         f"({nf}, {rows}, {cols}); re-export the file")
    return arr


def _rescale(ds, path):
    slope = _float(ds, "RescaleSlope", path, 1.0)
    intercept = _float(ds, "RescaleIntercept", path, 0.0)
    if not np.isfinite(slope) or not np.isfinite(intercept):
        raise InputError(f"{path}: RescaleSlope/RescaleIntercept not finite; re-export the file")
    return slope, intercept


# -- geometry ---------------------------------------------------------------------------------
def _spacing_rc(ds, path, keyword="PixelSpacing"):
    ps = _floats(ds, keyword, 2, path)
    if ps is None:
        raise InputError(f"{path}: PixelSpacing missing; the file has no geometry (a secondary "
                         f"capture or planar image?) - give a tomographic image series")
    if min(ps) <= 0:
        raise InputError(f"{path}: PixelSpacing {ps} is not positive; re-export the file")
    return ps  # [row spacing (y), column spacing (x)], PS3.3 C.7.6.2.1.1... 10.7.1.3


def _direction_from_iop(iop) -> np.ndarray:
    row = np.asarray(iop[:3], float)
    col = np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    return np.stack([row, col, normal], axis=1)  # columns = index axes


def _check_positions(positions: np.ndarray, normal: np.ndarray, files, source: str):
    """Sort slices along the normal and verify even spacing and no shear. Returns (order, dz)."""
    s = positions @ normal
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    if len(s_sorted) == 1:
        return order, None
    d = np.diff(s_sorted)
    if np.any(d < SLICE_SPACING_TOLERANCE_MM):
        i = int(np.argmax(d < SLICE_SPACING_TOLERANCE_MM))
        raise InputError(
            f"{source}: two slices at the same position ({files[order[i]]} and "
            f"{files[order[i + 1]]}): the folder mixes several acquisitions of one series; move "
            f"each acquisition into its own folder")
    dz = float(np.median(d))
    bad = np.abs(d - dz) > SLICE_SPACING_TOLERANCE_MM
    if np.any(bad):
        i = int(np.argmax(bad))
        raise InputError(
            f"{source}: inconsistent slice spacing ({d[i]:.4g} mm before {files[order[i + 1]]}, "
            f"{dz:.4g} mm elsewhere): a slice is missing or duplicated; re-export the complete "
            f"series")
    inplane = positions[order] - np.outer(s_sorted, normal)
    if np.max(np.abs(inplane - inplane[0])) > SLICE_SPACING_TOLERANCE_MM * 10:
        raise InputError(f"{source}: slice positions are not on a line along the slice normal "
                         f"(gantry tilt or mixed series); reconstruct without tilt or resample "
                         f"to an axial grid first")
    return order, float(np.mean(d))


@dataclass(frozen=True)
class ImageSeries:
    """A read image series: the volume (rescaled values, DICOM units) and its header facts.

    ``volume.units`` is ``'HU'`` for CT, the DICOM Units code (e.g. ``'BQML'``, ``'CNTS'``) for
    PET, ``'BQML'`` or ``'counts'`` for NM. ``slice_times`` holds each slice's acquisition time
    (single-frame PET, for DecayCorrection NONE). ``header`` keeps the first file's data set
    without pixel data and without patient-identifying attributes (for quantitation).
    """

    volume: Volume
    info: SeriesInfo
    header: object
    slice_times: tuple = ()


def _strip_identity(ds):
    for k in IDENTIFYING_KEYWORDS:
        if k in ds:
            try:
                delattr(ds, k)
            except Exception:
                pass
    return ds


@quiet_dicom
def read_series(source, series_uid: str | None = None, modality: str | None = None) -> ImageSeries:
    """Read one image series (CT, PT or NM) from a folder, a file, or a :class:`SeriesInfo`.

    A folder must hold exactly one image series unless ``series_uid`` or ``modality`` selects
    one. Geometry is exact (from the DICOM attributes) and checked: axial orientation, even
    slice spacing, one acquisition per position.

    Raises:
        InputError: unreadable or truncated files, several series where one was expected,
            inconsistent geometry, non-axial orientation.
    """
    if isinstance(source, SeriesInfo):
        info = source
    else:
        index = scan_folder(source)
        cands = [s for s in index.images()
                 if (series_uid is None or s.series_uid == series_uid)
                 and (modality is None or s.modality == modality.upper())]
        if not cands:
            reasons = "; ".join(f"{Path(p).name}: {r.split(': ', 1)[-1]}" for p, r in
                                index.unreadable[:3])
            if index.unreadable and not index.series:
                raise InputError(index.unreadable[0][1])
            raise InputError(f"{source}: no CT, PT or NM image series found"
                             + (f" matching {series_uid or modality}" if (series_uid or modality)
                                else "") + (f" ({reasons})" if reasons else "")
                             + "; point to the folder with the image files")
        if len(cands) > 1:
            listing = ", ".join(f"{s.modality} '{s.description}' ({len(s.files)} files)"
                                for s in cands)
            raise InputError(f"{source}: the folder mixes {len(cands)} image series ({listing}); "
                             f"pass series_uid= (see `twin inspect`) or put each series in its own "
                             f"folder")
        info = cands[0]
        bad = [p for p, _ in index.unreadable if Path(p).parent == Path(info.files[0]).parent]
        if bad:
            raise InputError(dict(index.unreadable)[bad[0]])
    if info.kind != "image":
        raise InputError(f"{info.folder}: series is {info.modality} ({info.kind}), not an image; "
                         f"read it as a mask (read_rtstruct / read_seg)")
    if info.n_frames > 1 or info.modality == "NM":
        if len(info.files) != 1:
            raise InputError(f"{info.folder}: {len(info.files)} multi-frame files in one series; "
                             f"give one reconstructed tomogram per series")
        return _read_multiframe(info)
    return _read_single_frames(info)


def _read_single_frames(info: SeriesInfo) -> ImageSeries:
    source = info.folder
    positions, iops, spacings, sizes, slices, times, rescale = [], [], [], [], [], [], []
    first = None
    for f in info.files:
        p = Path(f)
        ds = _dcmread(p, stop_before_pixels=False)
        if first is None:
            first = ds
        ipp = _floats(ds, "ImagePositionPatient", 3, p)
        iop = _floats(ds, "ImageOrientationPatient", 6, p)
        if ipp is None or iop is None:
            raise InputError(f"{p}: ImagePositionPatient/ImageOrientationPatient missing; the "
                             f"image has no patient geometry (re-export it as a tomographic "
                             f"series)")
        positions.append(ipp)
        iops.append(iop)
        spacings.append(_spacing_rc(ds, p))
        arr = _pixels(ds, p)
        if arr.shape[0] != 1:
            raise InputError(f"{p}: multi-frame file inside a single-frame series; separate them")
        sizes.append(arr.shape[1:])
        slices.append(arr[0])
        rescale.append(_rescale(ds, p))
        times.append(parse_dt(_str(ds, "AcquisitionDateTime", p)) or parse_da_tm(
            _str(ds, "AcquisitionDate", p) or _str(ds, "SeriesDate", p),
            _str(ds, "AcquisitionTime", p) or None))
    files = list(info.files)
    if len(set(sizes)) > 1:
        raise InputError(f"{source}: slices of different sizes {sorted(set(sizes))}: the folder "
                         f"mixes series; put each series in its own folder")
    iops = np.asarray(iops)
    if np.max(np.abs(iops - iops[0])) > 1e-4:
        raise InputError(f"{source}: slices with different orientations: the folder mixes "
                         f"series; put each series in its own folder")
    spacings = np.asarray(spacings)
    if np.max(np.abs(spacings - spacings[0])) > 1e-6:
        raise InputError(f"{source}: slices with different pixel spacings: the folder mixes "
                         f"series; put each series in its own folder")
    direction = _direction_from_iop(iops[0])
    check_axial(direction.ravel(), source)
    positions = np.asarray(positions)
    order, dz = _check_positions(positions, direction[:, 2], files, source)
    if dz is None:
        dz = _float(first, "SpacingBetweenSlices", files[0]) or _float(
            first, "SliceThickness", files[0]) or 1.0
    slope = np.array([rescale[i][0] for i in order])
    inter = np.array([rescale[i][1] for i in order])
    stack = np.stack([slices[i] for i in order])
    values = _apply_rescale(stack, slope, inter, info.modality)
    units = "HU" if info.modality == "CT" else (info.units or "")
    vol = Volume(values, spacing_mm=(spacings[0][1], spacings[0][0], dz),
                 origin_mm=positions[order[0]], direction=direction.ravel(), units=units,
                 modality=info.modality, frame_of_reference_uid=info.frame_of_reference_uid,
                 series_uid=info.series_uid, acquisition_start=info.start,
                 description=info.description, source=source)
    return ImageSeries(volume=vol, info=info, header=_strip_identity(_header_only(first)),
                       slice_times=tuple(times[i] for i in order))


def _header_only(ds):
    if "PixelData" in ds:
        del ds.PixelData
    return ds


def _apply_rescale(stack, slope, inter, modality):
    """Stored values -> rescaled (PS3.3 C.11.1.1.2: value = stored * slope + intercept)."""
    if (np.all(slope == 1.0) and np.all(inter == np.round(inter)) and modality == "CT"
            and np.issubdtype(stack.dtype, np.integer)):
        lo = int(stack.min()) + int(inter.min())
        hi = int(stack.max()) + int(inter.max())
        dtype = np.int16 if (lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max) \
            else np.int32  # CT in HU fits int16: half the memory (512^2 x 300 = 157 MB)
        out = stack.astype(dtype, copy=stack.dtype != dtype)
        out += inter.astype(dtype)[:, None, None]
        return out
    return (stack.astype(np.float32) * slope.astype(np.float32)[:, None, None]
            + inter.astype(np.float32)[:, None, None])


def _read_multiframe(info: SeriesInfo) -> ImageSeries:
    p = Path(info.files[0])
    ds = _dcmread(p, stop_before_pixels=False)
    arr = _pixels(ds, p)
    nf = arr.shape[0]
    if "PerFrameFunctionalGroupsSequence" in ds:
        direction, positions, ps, slope, inter = _enhanced_geometry(ds, p, nf)
        order, dz = _check_positions(positions, direction[:, 2], [f"{p} frame {i + 1}"
                                                               for i in range(nf)], str(p))
        origin = positions[order[0]]
        arr = arr[order]
        slope, inter = slope[order], inter[order]
    elif info.modality == "NM":
        itype = info.image_type
        if not any("TOMO" in t for t in itype):
            raise InputError(f"{p}: NM image of type {'/'.join(itype) or 'unknown'} is not a "
                             f"reconstructed tomogram (RECON TOMO); twin needs the reconstructed "
                             f"SPECT, not the projections or a planar image")
        det = _value(ds, "DetectorInformationSequence", None, p)
        try:
            item = det[0] if det else ds
        except Exception:
            raise InputError(f"{p}: DetectorInformationSequence is corrupt; re-export") from None
        iop = _floats(item, "ImageOrientationPatient", 6, p) or _floats(
            ds, "ImageOrientationPatient", 6, p)
        ipp = _floats(item, "ImagePositionPatient", 3, p) or _floats(
            ds, "ImagePositionPatient", 3, p)
        if iop is None or ipp is None:
            raise InputError(f"{p}: NM tomogram without ImagePositionPatient/"
                             f"ImageOrientationPatient in DetectorInformationSequence (DICOM PS3.3 "
                             f"C.8.4.11); re-export the reconstruction with patient geometry")
        direction = _direction_from_iop(iop)
        ps = _spacing_rc(ds, p)
        # NM frames of a tomogram are slices along row x column (PS3.3 C.8.4.15), spaced by
        # SpacingBetweenSlices (falls back to SliceThickness, which vendors also fill).
        dz = _float(ds, "SpacingBetweenSlices", p) or _float(ds, "SliceThickness", p)
        if not dz or dz <= 0:
            raise InputError(f"{p}: NM tomogram without SpacingBetweenSlices/SliceThickness; "
                             f"re-export the reconstruction")
        origin = np.asarray(ipp)
        slope1, inter1 = _rescale(ds, p)
        slope, inter = np.full(nf, slope1), np.full(nf, inter1)
    else:
        raise InputError(f"{p}: multi-frame {info.modality} file without per-frame geometry; "
                         f"re-export it as single-frame slices or enhanced multi-frame")
    check_axial(direction.ravel(), str(p))
    values = _apply_rescale(arr, np.asarray(slope, float), np.asarray(inter, float), info.modality)
    if info.modality == "CT":
        units = "HU"
    elif info.modality == "NM":
        units = info.units or ("counts" if np.all(slope == 1) and np.all(inter == 0) else "")
        units = units or "counts"
    else:
        units = info.units
    vol = Volume(values, spacing_mm=(ps[1], ps[0], dz), origin_mm=origin,
                 direction=direction.ravel(), units=units, modality=info.modality,
                 frame_of_reference_uid=info.frame_of_reference_uid, series_uid=info.series_uid,
                 acquisition_start=info.start, description=info.description, source=str(p))
    return ImageSeries(volume=vol, info=info, header=_strip_identity(_header_only(ds)))


def _fg(item, seq_name, path):
    seq = _value(item, seq_name, None, path)
    if not seq:
        return None
    try:
        return seq[0]
    except Exception:
        raise InputError(f"{path}: {seq_name} is corrupt; re-export the file") from None


def _enhanced_geometry(ds, p, nf):
    """Geometry of an enhanced multi-frame image or SEG (PS3.3 C.7.6.16 functional groups)."""
    shared = _fg(ds, "SharedFunctionalGroupsSequence", p)
    per = _value(ds, "PerFrameFunctionalGroupsSequence", None, p)
    try:
        per = list(per)
    except Exception:
        raise InputError(f"{p}: PerFrameFunctionalGroupsSequence is corrupt; re-export") from None
    if len(per) != nf:
        raise InputError(f"{p}: {len(per)} per-frame groups for {nf} frames; re-export the file")

    def find(frame, seq, kw, n):
        for grp in (frame, shared):
            if grp is None:
                continue
            item = _fg(grp, seq, p)
            if item is not None:
                v = _floats(item, kw, n, p) if n else _float(item, kw, p)
                if v is not None:
                    return v
        return None

    iop = find(per[0], "PlaneOrientationSequence", "ImageOrientationPatient", 6)
    ps = find(per[0], "PixelMeasuresSequence", "PixelSpacing", 2)
    if iop is None or ps is None:
        raise InputError(f"{p}: enhanced multi-frame without PlaneOrientation/PixelMeasures; "
                         f"re-export the file")
    positions = []
    slope, inter = np.ones(nf), np.zeros(nf)
    for i, fr in enumerate(per):
        ipp = find(fr, "PlanePositionSequence", "ImagePositionPatient", 3)
        if ipp is None:
            raise InputError(f"{p}: frame {i + 1} has no ImagePositionPatient; re-export")
        positions.append(ipp)
        s = find(fr, "PixelValueTransformationSequence", "RescaleSlope", 0)
        b = find(fr, "PixelValueTransformationSequence", "RescaleIntercept", 0)
        slope[i] = 1.0 if s is None else s
        inter[i] = 0.0 if b is None else b
    return _direction_from_iop(iop), np.asarray(positions), ps, slope, inter


def enhanced_frame_positions(ds, path, nf):
    """(direction 3x3, frame positions (nf, 3), pixel spacing [row, col]) of a multi-frame set."""
    d, pos, ps, _, _ = _enhanced_geometry(ds, path, nf)
    return d, pos, ps
