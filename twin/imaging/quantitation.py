"""Activity quantitation: PET and SPECT in MBq/mL, decay correction, SUV, the injection record.

Definitions and sources:

- PET Units (0054,1001), DecayCorrection (0054,1102), CorrectedImage (0028,0051): DICOM PS3.3
  C.8.9.1 (PET Series Module). DecayCorrection ``START``: values are decay corrected to the
  acquisition start; ``ADMIN``: to the radiopharmaceutical administration time; ``NONE``: not
  decay corrected (each slice as measured at its own acquisition time).
- The START reference time is the Series Date/Time unless that lies after the earliest
  Acquisition Date/Time (some scanners rewrite the series time when post-processing): the rule of
  the QIBA vendor-neutral SUV pseudo-code (QIBA FDG-PET/CT Technical Committee, "SUV
  calculation", 2013; as used by MITK and oro.pet).
- RadiopharmaceuticalInformationSequence (0054,0016): RadiopharmaceuticalStartDateTime
  (0018,1078) or RadiopharmaceuticalStartTime (0018,1072) with the Series Date,
  RadionuclideTotalDose (0018,1074), RadionuclideHalfLife (0018,1075, seconds). The total dose is
  in Bq for PET (PS3.3 C.8.9.2, PET Isotope Module) and in MBq for NM (PS3.3 C.8.4.10.1.7, NM
  Isotope Module).
- SUV (body weight) = C(t) / (A_inj * 2^(-(t - t_inj)/T_half) / W), tissue density 1 g/mL
  (Kinahan PE, Fletcher JW, Semin Ultrasound CT MR 2010;31:496-505, doi:10.1053/j.sult.2010.10.001).
- SPECT from counts: A (MBq) = counts * lambda / (CF * (1 - exp(-lambda T))), the activity at
  the start of an acquisition of duration T (s) with a camera calibration factor CF (reconstructed
  counts per second per MBq); the decay factor is the exact integral of the decay over the
  acquisition (Dewaraja YK et al., MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325,
  doi:10.2967/jnumed.111.100123; Ljungberg M et al., MIRD Pamphlet No. 26, J Nucl Med
  2016;57:151-162, doi:10.2967/jnumed.115.159012).

Inside the code activity is MBq, concentration MBq/mL, time h; the conversions from DICOM's Bq,
Bq/mL and seconds happen here, with :mod:`pbpk_models.units`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from pbpk_models.radionuclides import (
    half_life_h,
    normalise_nuclide,
    parse_radiopharmaceutical,
)
from pbpk_models.units import bq_per_ml_to_mbq_per_ml, bq_to_mbq, seconds_to_h
from twin.errors import InputError
from twin.imaging.dicom import (
    ImageSeries,
    _float,
    _str,
    _value,
    parse_da_tm,
    parse_dt,
    quiet_dicom,
)
from twin.imaging.volume import Volume

# PET Units codes that hold absolute concentration or SUV (PS3.3 C.8.9.1.1.? Units defined terms).
PET_CONCENTRATION_UNITS = {"BQML": 1.0}  # Bq/mL -> factor to Bq/mL


@dataclass(frozen=True)
class InjectionRecord:
    """One administration: when, what, how much.

    Attributes:
        time: administration date and time (naive local time, as DICOM writes it).
        activity_mbq: administered activity at ``time`` (MBq).
        radiopharmaceutical: ``'ga68-psma-11'``-style name (nuclide-ligand).
        ligand_nmol: total ligand amount (labelled + unlabelled, nmol); ``None`` when unknown
            (DICOM has no standard attribute for it).
        source: ``'dicom'`` or ``'user'``.
    """

    time: datetime
    activity_mbq: float
    radiopharmaceutical: str
    ligand_nmol: float | None = None
    source: str = "user"

    def __post_init__(self):
        if not isinstance(self.time, datetime):
            raise InputError(f"injection time must be a datetime, got {self.time!r}")
        a = float(self.activity_mbq)
        if not math.isfinite(a) or a <= 0:
            raise InputError(f"injected activity must be a positive number of MBq, got "
                             f"{self.activity_mbq!r}")
        object.__setattr__(self, "activity_mbq", a)
        object.__setattr__(self, "radiopharmaceutical",
                           parse_radiopharmaceutical(self.radiopharmaceutical).name)
        if self.ligand_nmol is not None and not (float(self.ligand_nmol) >= 0):
            raise InputError(f"ligand amount must be >= 0 nmol, got {self.ligand_nmol!r}")

    @property
    def nuclide(self) -> str:
        return parse_radiopharmaceutical(self.radiopharmaceutical).nuclide


def hours_between(t0: datetime, t1: datetime) -> float:
    """``t1 - t0`` in hours."""
    return seconds_to_h((t1 - t0).total_seconds())


def decay_factor(dt_h, half_life_h_: float):
    """Fraction of activity left after ``dt_h`` hours: 2^(-dt/T_half) (negative dt: > 1)."""
    return np.exp2(-np.asarray(dt_h, dtype=float) / half_life_h_)


def decay_correct(values, measured_at: datetime, reference: datetime, half_life_h_: float):
    """Activity (or concentration) that a sample measured at ``measured_at`` has at ``reference``.

    ``values * 2^(-(reference - measured_at)/T_half)``: a reference before the measurement gives
    a larger value (the usual 'decay correction'), after it a smaller one.
    """
    return np.asarray(values) * decay_factor(hours_between(measured_at, reference), half_life_h_)


def suv_bw(concentration_mbq_per_ml, at: datetime, injection: InjectionRecord, weight_kg: float,
           half_life_h_: float | None = None):
    """Body-weight SUV (g/mL) of a concentration measured (not decay corrected) at ``at``.

    SUV = C(at) / (A_inj * 2^(-(at - t_inj)/T_half) / W) with W in g (Kinahan & Fletcher 2010).
    """
    if weight_kg is None or not (float(weight_kg) > 0):
        raise InputError("SUV needs the patient weight (kg): PatientWeight (0010,1030) is missing; "
                         "give weight_kg explicitly")
    t_half = half_life_h_ or half_life_h(injection.nuclide)
    dose_at = injection.activity_mbq * float(decay_factor(hours_between(injection.time, at),
                                                          t_half))
    return np.asarray(concentration_mbq_per_ml) * (float(weight_kg) * 1000.0) / dose_at


_NUCLIDE_IN_TEXT = re.compile(
    r"(?<![a-z])(?:([a-z]{1,2})-?(\d{1,3}m?)|(\d{1,3}m?)-?([a-z]{1,2}))(?![a-z])")
_ELEMENTS = {"ga": "Ga", "lu": "Lu", "f": "F", "cu": "Cu", "y": "Y", "tc": "Tc", "in": "In",
             "ac": "Ac", "tb": "Tb", "i": "I", "zr": "Zr", "pb": "Pb", "sc": "Sc", "c": "C",
             "ho": "Ho", "re": "Re", "sm": "Sm", "ra": "Ra", "bi": "Bi", "at": "At", "th": "Th"}
# CodeMeaning of the radionuclide code (DICOM PS3.16 CID 18 / CID 4020), e.g. '^68^Gallium'.
_ELEMENT_NAMES = {"gallium": "Ga", "lutetium": "Lu", "fluorine": "F", "copper": "Cu",
                  "yttrium": "Y", "technetium": "Tc", "indium": "In", "actinium": "Ac",
                  "terbium": "Tb", "iodine": "I", "zirconium": "Zr", "lead": "Pb"}


def normalise_radiopharmaceutical(text: str, nuclide: str | None = None) -> str | None:
    """Best-effort ``'Ga68-PSMA-11'``, ``'68Ga PSMA-11'``, ``'PSMA-617'`` (+ nuclide) -> twin name.

    Returns ``None`` when the text gives no ligand.
    """
    s = str(text or "").strip().lower().replace("_", "-").replace(" ", "-")
    s = re.sub(r"-+", "-", s)
    m = _NUCLIDE_IN_TEXT.search(s)
    nuc = None
    if m:
        sym, mass = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        if sym in _ELEMENTS:
            nuc = f"{sym}{mass}"
            s = (s[: m.start()] + s[m.end():]).strip("-")
    if nuc is None and nuclide:
        n = normalise_nuclide(nuclide)
        sym, mass = n.split("-")
        nuc = f"{sym.lower()}{mass}"
    ligand = re.sub(r"-+", "-", s).strip("-")
    if not ligand or nuc is None:
        return None
    try:
        return parse_radiopharmaceutical(f"{nuc}-{ligand}").name
    except InputError:
        return None


def _nuclide_from_code(rp, path) -> str | None:
    seq = _value(rp, "RadionuclideCodeSequence", None, path)
    if not seq:
        return None
    try:
        meaning = str(seq[0].get("CodeMeaning", "")).strip()
    except Exception:
        return None
    m = re.search(r"\^?(\d{1,3}m?)\^?\s*([A-Za-z]+)", meaning)
    if m:
        mass, name = m.groups()
        sym = _ELEMENT_NAMES.get(name.lower(), name if len(name) <= 2 else None)
        if sym:
            try:
                return normalise_nuclide(f"{sym}-{mass}")
            except InputError:
                return None
    return None


@quiet_dicom
def injection_from_dicom(series: ImageSeries, radiopharmaceutical: str | None = None,
                         ligand_nmol: float | None = None) -> InjectionRecord:
    """The injection record of a PT or NM series from its RadiopharmaceuticalInformationSequence.

    ``radiopharmaceutical`` overrides the name written in the file (which is free text).
    Raises InputError naming the missing attribute and how to give the record explicitly.
    """
    ds, path = series.header, series.info.folder
    rp = _value(ds, "RadiopharmaceuticalInformationSequence", None, path)
    fix = ("give the injection explicitly (InjectionRecord(time=..., activity_mbq=..., "
           "radiopharmaceutical=...) or the injection options of load_study)")
    if not rp:
        raise InputError(f"{path}: RadiopharmaceuticalInformationSequence (0054,0016) missing; "
                         f"{fix}")
    try:
        rp = rp[0]
    except Exception:
        raise InputError(f"{path}: RadiopharmaceuticalInformationSequence corrupt; {fix}") from None
    start = parse_dt(_str(rp, "RadiopharmaceuticalStartDateTime", path))
    if start is None:
        t = _str(rp, "RadiopharmaceuticalStartTime", path)
        ref = series.info.start
        start = parse_da_tm(_str(ds, "SeriesDate", path), t) if t else None
        if start is not None and ref is not None and start > ref:
            # Injected before midnight, scanned after: the start time belongs to the day before.
            from datetime import timedelta

            start -= timedelta(days=1)
    if start is None:
        raise InputError(f"{path}: RadiopharmaceuticalStartDateTime (0018,1078) and "
                         f"RadiopharmaceuticalStartTime (0018,1072) missing; {fix}")
    dose = _float(rp, "RadionuclideTotalDose", path)
    if dose is None or not dose > 0:
        raise InputError(f"{path}: RadionuclideTotalDose (0018,1074) missing or not positive; "
                         f"{fix}")
    # PT: Bq (PS3.3 C.8.9.2); NM: MBq (PS3.3 C.8.4.10.1.7).
    activity_mbq = bq_to_mbq(dose) if series.info.modality == "PT" else dose
    nuclide = _nuclide_from_code(rp, path)
    if nuclide is None:
        hl_s = _float(rp, "RadionuclideHalfLife", path)
        nuclide = _nuclide_from_half_life(hl_s) if hl_s else None
    name = radiopharmaceutical or normalise_radiopharmaceutical(
        _str(rp, "Radiopharmaceutical", path), nuclide)
    if name is None:
        raise InputError(f"{path}: cannot tell the radiopharmaceutical from "
                         f"Radiopharmaceutical (0018,0031) = "
                         f"{_str(rp, 'Radiopharmaceutical', path)!r}; give it explicitly, e.g. "
                         f"radiopharmaceutical='ga68-psma-11'")
    return InjectionRecord(time=start, activity_mbq=activity_mbq, radiopharmaceutical=name,
                           ligand_nmol=ligand_nmol, source="dicom")


_KNOWN = ("Ga-68", "Lu-177", "F-18", "Cu-64", "Y-90", "Tc-99m", "In-111", "Zr-89", "I-131",
          "Ac-225", "Tb-161", "Pb-212", "Sc-44", "C-11")


def _nuclide_from_half_life(hl_s: float) -> str | None:
    hl_h = seconds_to_h(hl_s)
    for n in _KNOWN:
        try:
            if abs(half_life_h(n) - hl_h) / half_life_h(n) < 0.01:
                return n
        except InputError:
            continue
    return None


@quiet_dicom
def half_life_from_dicom(series: ImageSeries) -> float | None:
    """RadionuclideHalfLife (0018,1075) in hours, or None."""
    rp = _value(series.header, "RadiopharmaceuticalInformationSequence", None, series.info.folder)
    if not rp:
        return None
    try:
        hl = _float(rp[0], "RadionuclideHalfLife", series.info.folder)
    except Exception:
        return None
    return seconds_to_h(hl) if hl and hl > 0 else None


def scan_start(series: ImageSeries) -> datetime:
    """The acquisition start (the START decay-correction reference, QIBA rule)."""
    t = series.info.start
    if t is None:
        raise InputError(f"{series.info.folder}: SeriesDate/SeriesTime and AcquisitionDate/Time "
                         f"missing; the scan time is unknown: re-export the series with its "
                         f"times")
    return t


@quiet_dicom
def pet_concentration(series: ImageSeries, injection: InjectionRecord | None = None,
                      weight_kg: float | None = None,
                      counts_to_bq_per_ml: float | None = None) -> Volume:
    """PET activity concentration in MBq/mL at the acquisition start (not decay corrected).

    Args:
        series: a PT series from :func:`~twin.imaging.dicom.read_series`.
        injection: needed for DecayCorrection ADMIN and for Units GML (SUV); taken from the
            file when ``None``.
        weight_kg: for Units GML; PatientWeight when ``None``.
        counts_to_bq_per_ml: scanner calibration for Units CNTS (Bq/mL per count).

    Returns:
        Volume with ``units='MBq/mL'`` and ``acquisition_start`` the reference time.

    Raises:
        InputError: unknown Units, missing DecayCorrection, missing times or dose.
    """
    vol, ds, path = series.volume, series.header, series.info.folder
    if series.info.modality != "PT":
        raise InputError(f"{path}: expected a PT series, got {series.info.modality}")
    units = (_str(ds, "Units", path) or "").upper()
    t_ref = scan_start(series)
    values = np.asarray(vol.array, dtype=np.float32)
    if units == "BQML":
        conc = values * np.float32(bq_per_ml_to_mbq_per_ml(1.0))
    elif units == "GML":
        inj = injection or injection_from_dicom(series)
        w = weight_kg or series.info.patient_weight_kg
        if not w:
            raise InputError(f"{path}: Units GML (SUV) needs the patient weight to give Bq/mL; "
                             f"PatientWeight is missing: give weight_kg")
        # SUV values are decay corrected to the administration (the SUV definition).
        conc = values * np.float32(inj.activity_mbq / (float(w) * 1000.0))
        return vol.with_array(_admin_to_start(conc, inj, t_ref, series), units="MBq/mL",
                              acquisition_start=t_ref)
    elif units == "CNTS" and counts_to_bq_per_ml:
        conc = values * np.float32(bq_per_ml_to_mbq_per_ml(counts_to_bq_per_ml))
    elif units == "CNTS":
        raise InputError(f"{path}: PET Units CNTS (counts) are not quantitative; give the scanner "
                         f"calibration counts_to_bq_per_ml, or export the series in Bq/mL (BQML)")
    elif not units:
        raise InputError(f"{path}: PET Units (0054,1001) missing; the values cannot be converted "
                         f"to activity: export the series in Bq/mL (BQML)")
    else:
        raise InputError(f"{path}: unknown PET Units {units!r} (twin reads BQML, GML, and CNTS "
                         f"with a calibration); export the series in Bq/mL")
    dc = (_str(ds, "DecayCorrection", path) or "").upper()
    if dc == "START":
        pass
    elif dc == "ADMIN":
        inj = injection or injection_from_dicom(series)
        conc = _admin_to_start(conc, inj, t_ref, series)
    elif dc == "NONE":
        times = series.slice_times
        if times and all(t is not None for t in times):
            hl = half_life_from_dicom(series) or half_life_h(
                (injection or injection_from_dicom(series)).nuclide)
            dt = np.array([hours_between(t_ref, t) for t in times])
            # Each slice measured at its own time: bring it back to the series start.
            conc = conc * np.exp2(dt / hl).astype(np.float32)[:, None, None]
    elif not dc:
        raise InputError(f"{path}: DecayCorrection (0054,1102) missing; cannot tell to which time "
                         f"the values refer: re-export the series with its PET attributes")
    else:
        raise InputError(f"{path}: unknown DecayCorrection {dc!r} (expected START, ADMIN or NONE)")
    return vol.with_array(conc, units="MBq/mL", acquisition_start=t_ref)


def _admin_to_start(conc, inj, t_ref, series):
    hl = half_life_from_dicom(series) or half_life_h(inj.nuclide)
    return (conc * np.float32(decay_factor(hours_between(inj.time, t_ref), hl))).astype(np.float32)


@quiet_dicom
def nm_acquisition_duration_s(series: ImageSeries) -> float | None:
    """Total acquisition time of a SPECT (s): frame duration x frames per rotation x rotations.

    From RotationInformationSequence (0054,0052): ActualFrameDuration (0018,1242, ms) and
    NumberOfFramesInRotation (0054,0053) (PS3.3 C.8.4.12). Heads acquire simultaneously, so the
    number of detectors does not multiply the time.
    """
    ds, path = series.header, series.info.folder
    seq = _value(ds, "RotationInformationSequence", None, path)
    if not seq:
        ms = _float(ds, "ActualFrameDuration", path)
        return ms / 1000.0 if ms else None
    total = 0.0
    try:
        for item in seq:
            ms = _float(item, "ActualFrameDuration", path)
            n = _float(item, "NumberOfFramesInRotation", path)
            if not ms or not n:
                return None
            total += ms / 1000.0 * n
    except InputError:
        raise
    except Exception:
        return None
    return total or None


@quiet_dicom
def spect_concentration(series: ImageSeries, calibration_cps_per_mbq: float | None = None,
                        acquisition_duration_s: float | None = None,
                        half_life_h_: float | None = None) -> Volume:
    """SPECT activity concentration (MBq/mL) at the acquisition start.

    If the file is quantitative (Units BQML, Siemens xSPECT/GE Q.Metrix style), the values are
    used as they are. Otherwise the voxels are counts and ``calibration_cps_per_mbq`` (camera
    calibration factor, reconstructed counts per second per MBq) is required; the acquisition
    duration is read from the RotationInformationSequence unless given.
    """
    vol, ds, path = series.volume, series.header, series.info.folder
    units = (vol.units or "").upper()
    t_ref = scan_start(series)
    if units == "BQML":
        if calibration_cps_per_mbq is not None:
            raise InputError(f"{path}: the SPECT is already in Bq/mL; do not give a calibration "
                             f"factor as well")
        return vol.with_array(np.asarray(vol.array, np.float32)
                              * np.float32(bq_per_ml_to_mbq_per_ml(1.0)),
                              units="MBq/mL", acquisition_start=t_ref)
    if units not in ("COUNTS", "CNTS", ""):
        raise InputError(f"{path}: unknown SPECT units {vol.units!r}; give a file in counts or "
                         f"Bq/mL")
    if calibration_cps_per_mbq is None:
        raise InputError(f"{path}: the SPECT is in counts; give the camera calibration factor "
                         f"(counts per second per MBq, --spect-calibration / "
                         f"spect_calibration_cps_per_mbq)")
    if not calibration_cps_per_mbq > 0:
        raise InputError(f"camera calibration factor must be positive cps/MBq, got "
                         f"{calibration_cps_per_mbq}")
    duration = acquisition_duration_s or nm_acquisition_duration_s(series)
    if not duration:
        raise InputError(f"{path}: acquisition duration unknown (RotationInformationSequence "
                         f"missing); give acquisition_duration_s")
    if half_life_h_ is None:
        half_life_h_ = half_life_from_dicom(series)
    if half_life_h_ is None:
        raise InputError(f"{path}: RadionuclideHalfLife missing; give half_life_h_ or the "
                         f"injection record")
    lam_s = math.log(2.0) / (half_life_h_ * 3600.0)
    # Counts = A0 * CF * (1 - exp(-lam T)) / lam  ->  A0 = counts * lam / (CF (1 - exp(-lam T))).
    eff_s = -math.expm1(-lam_s * duration) / lam_s
    per_voxel_mbq = 1.0 / (calibration_cps_per_mbq * eff_s)
    conc = np.asarray(vol.array, np.float32) * np.float32(per_voxel_mbq / vol.voxel_volume_ml)
    return vol.with_array(conc, units="MBq/mL", acquisition_start=t_ref)
