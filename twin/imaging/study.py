"""A patient's study: CT, PET and SPECT scans with their times and injections, masks, patient.

:func:`load_study` discovers the series in a folder (:func:`~twin.imaging.dicom.scan_folder`),
reads and calibrates them, rasterises the contours onto the planning CT and, when a SPECT/CT is
in another frame of reference, registers its CT to the planning CT (rigid, CT-to-CT).
:func:`describe_folder` lists what was found and what is missing (``twin inspect``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from twin.errors import InputError
from twin.imaging.dicom import SeriesInfo, read_series, scan_folder
from twin.imaging.masks import RegionMasks, read_label_map, read_rtstruct, read_seg
from twin.imaging.quantitation import (
    InjectionRecord,
    hours_between,
    injection_from_dicom,
    nm_acquisition_duration_s,
    pet_concentration,
    spect_concentration,
)
from twin.imaging.volume import Volume


@dataclass(frozen=True)
class Patient:
    """Body weight (kg), height (m) and sex ('M', 'F', 'O' or '') - no identity."""

    weight_kg: float | None = None
    height_m: float | None = None
    sex: str = ""


@dataclass(frozen=True)
class EmissionScan:
    """One quantitative PET or SPECT acquisition.

    Attributes:
        volume: activity concentration (MBq/mL) at ``start``, not decay corrected.
        modality: 'PET' or 'SPECT'.
        start: acquisition start.
        duration_s: acquisition time (s) (PET: one bed position's frame duration).
        injection: the administration this scan images.
        sensitivity_cps_per_mbq: counts/s per MBq, for the Poisson term of the uncertainty
            (the camera calibration factor for SPECT; ``None``: the observe default).
        transform: SimpleITK transform mapping planning-CT points into this scan (registration),
            or ``None`` when the scan shares the planning CT's frame of reference.
    """

    volume: Volume
    modality: str
    start: datetime
    duration_s: float | None
    injection: InjectionRecord
    sensitivity_cps_per_mbq: float | None = None
    transform: object = None

    @property
    def radiopharmaceutical(self) -> str:
        return self.injection.radiopharmaceutical

    def time_after_injection_h(self) -> float:
        return hours_between(self.injection.time, self.start)


@dataclass(frozen=True)
class Study:
    """Everything read from one patient's imaging, immutable.

    ``masks`` lie on the planning ``ct``'s grid (or on the grid they came with when there is no
    CT). Scans are sorted by start time.
    """

    ct: Volume | None = None
    pet: tuple = ()
    spect: tuple = ()
    masks: RegionMasks | None = None
    patient: Patient = field(default_factory=Patient)
    source: str = ""

    @property
    def scans(self) -> tuple:
        return tuple(sorted(self.pet + self.spect, key=lambda s: s.start))

    @property
    def injections(self) -> tuple:
        seen = {}
        for s in self.scans:
            key = (s.injection.time, s.injection.radiopharmaceutical)
            seen.setdefault(key, s.injection)
        return tuple(sorted(seen.values(), key=lambda i: i.time))

    @property
    def first_administration(self) -> datetime:
        inj = self.injections
        if not inj:
            raise InputError(f"{self.source}: the study has no PET or SPECT scan with an injection")
        return inj[0].time

    def with_masks(self, masks: RegionMasks) -> "Study":
        ref = self.ct
        if ref is not None:
            masks.check_grid(ref, "CT")
        return replace(self, masks=masks)


def _pick_planning_ct(cts, structs) -> SeriesInfo | None:
    if not cts:
        return None
    fors = {s.frame_of_reference_uid for s in structs}
    with_struct = [c for c in cts if c.frame_of_reference_uid in fors]
    pool = with_struct or cts
    return max(pool, key=lambda c: (len(c.files) * c.rows * c.columns, -(c.start or datetime.max)
                                    .timestamp()))


def load_study(folder, *, masks=None, mask_names=None, region_map: dict | None = None,
               spect_calibration_cps_per_mbq: float | None = None,
               injections: dict | None = None, patient: Patient | None = None,
               register: bool = True, pet_counts_to_bq_per_ml: float | None = None) -> Study:
    """Read a study folder into a :class:`Study`.

    Args:
        folder: folder with the DICOM series (any depth) and optionally NIfTI masks.
        masks: a NIfTI label map, an RTSTRUCT or SEG file, or a RegionMasks; default: the
            RTSTRUCT/SEG found in the folder that matches the planning CT.
        mask_names: names of a NIfTI label map's labels (dict or CSV ``label,name``).
        region_map: contour name -> model region table
            (:func:`~twin.imaging.masks.load_region_map`).
        spect_calibration_cps_per_mbq: camera calibration factor for SPECT stored as counts.
        injections: ``{'PET': InjectionRecord, 'SPECT': InjectionRecord}`` overriding the DICOM
            injection records (e.g. a ligand amount or a corrected activity).
        patient: overrides the weight/height/sex read from the headers.
        register: register each SPECT/CT whose frame of reference differs from the planning CT.

    Raises:
        InputError: any unreadable series, missing quantitation, inconsistent geometry.
    """
    index = scan_folder(folder)
    injections = dict(injections or {})
    if index.unreadable:
        p, reason = index.unreadable[0]
        raise InputError(reason if str(p) in reason else f"{p}: {reason}")
    structs = index.by_kind("rtstruct") + index.by_kind("seg")
    cts = index.images("CT")
    ct_info = _pick_planning_ct(cts, structs)
    ct = read_series(ct_info).volume if ct_info else None
    pets, spects = [], []
    weights, heights, sexes = [], [], []
    for info in index.images("PT"):
        s = read_series(info)
        inj = injections.get("PET") or injection_from_dicom(s)
        vol = pet_concentration(s, injection=inj)
        dur = None
        try:
            dur = float(s.header.ActualFrameDuration) / 1000.0
        except (AttributeError, ValueError, TypeError):
            pass
        pets.append(EmissionScan(vol, "PET", vol.acquisition_start, dur, inj))
        weights.append(info.patient_weight_kg), heights.append(info.patient_height_m)
        sexes.append(info.patient_sex)
    for info in index.images("NM"):
        s = read_series(info)
        inj = injections.get("SPECT") or injection_from_dicom(s)
        from pbpk_models.radionuclides import half_life_h

        vol = spect_concentration(s, spect_calibration_cps_per_mbq,
                                  half_life_h_=half_life_h(inj.nuclide))
        spects.append(EmissionScan(vol, "SPECT", vol.acquisition_start,
                                   nm_acquisition_duration_s(s), inj,
                                   sensitivity_cps_per_mbq=spect_calibration_cps_per_mbq))
        weights.append(info.patient_weight_kg), heights.append(info.patient_height_m)
        sexes.append(info.patient_sex)
    if ct is not None and register:
        spects = [_register_if_needed(sc, ct, cts) for sc in spects]
        pets = [_register_if_needed(sc, ct, cts) for sc in pets]
    ref = ct if ct is not None else (pets[0].volume if pets else (spects[0].volume if spects
                                                                   else None))
    rmasks = None
    if isinstance(masks, RegionMasks):
        rmasks = masks
    elif masks is not None:
        rmasks = _read_masks_file(Path(masks), ref, mask_names, region_map)
    elif structs and ref is not None:
        match = [s for s in structs if s.frame_of_reference_uid == ref.frame_of_reference_uid]
        if match:
            rmasks = _read_masks_file(Path(match[0].files[0]), ref, mask_names, region_map)
    if rmasks is not None and ref is not None:
        rmasks.check_grid(ref, "CT" if ct is not None else "image")
    pat = patient or Patient(
        weight_kg=next((w for w in weights if w), None),
        height_m=next((h for h in heights if h), None),
        sex=next((x for x in sexes if x), ""))
    return Study(ct=ct, pet=tuple(sorted(pets, key=lambda s: s.start)),
                 spect=tuple(sorted(spects, key=lambda s: s.start)), masks=rmasks, patient=pat,
                 source=str(folder))


def _read_masks_file(path: Path, ref: Volume | None, names, region_map) -> RegionMasks:
    if ref is None:
        raise InputError(f"{path}: masks need an image to lie on; the study has no CT, PET or "
                         f"SPECT")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return read_label_map(path, names=names, reference=ref, region_map=region_map)
    from twin.imaging.dicom import _dcmread, _str

    mod = _str(_dcmread(path, stop_before_pixels=True), "Modality", path)
    if mod == "RTSTRUCT":
        return read_rtstruct(path, ref, region_map=region_map)
    if mod == "SEG":
        return read_seg(path, ref, region_map=region_map)
    raise InputError(f"{path}: masks must be a NIfTI label map, an RTSTRUCT or a DICOM SEG")


def _register_if_needed(scan: EmissionScan, planning_ct: Volume, cts) -> EmissionScan:
    f_scan, f_ct = scan.volume.frame_of_reference_uid, planning_ct.frame_of_reference_uid
    if not f_scan or not f_ct or f_scan == f_ct:
        return scan
    own = [c for c in cts if c.frame_of_reference_uid == f_scan]
    if not own:
        raise InputError(f"{scan.volume.source}: the {scan.modality} is in another frame of "
                         f"reference than the planning CT and has no CT of its own to register; "
                         f"add its SPECT/CT's CT to the folder or give masks drawn on it")
    from twin.imaging.resample import register_rigid

    moving = read_series(own[0]).volume
    res = register_rigid(moving, planning_ct)
    return replace(scan, transform=res.transform)


# -- inspection -------------------------------------------------------------------------------
def describe_folder(folder, show_identifiers: bool = False) -> tuple[list, list]:
    """What ``twin inspect`` prints: (lines describing the series, lines of what is missing).

    Patient-identifying attributes are never included unless ``show_identifiers``.
    """
    from twin.imaging.dicom import patient_identifiers

    index = scan_folder(folder)
    lines, missing, counts_spect = [], [], []
    images = index.images()
    t0 = None
    for s in images:
        if s.modality in ("PT", "NM") and s.start:
            t0 = s.start if t0 is None else min(t0, s.start)
    for s in index.series:
        when = s.start.strftime("%Y-%m-%d %H:%M") if s.start else "time unknown"
        size = (f"{s.columns}x{s.rows}x{s.n_frames if s.n_frames > 1 else len(s.files)}"
                if s.kind == "image" else f"{len(s.files)} file(s)")
        extra = []
        if s.units:
            extra.append(f"units {s.units}")
        if s.radiopharmaceutical:
            extra.append(s.radiopharmaceutical)
        if s.kind == "image" and s.modality in ("PT", "NM") and s.start:
            if s.injection_datetime and s.injection_datetime <= s.start:
                extra.append(f"{hours_between(s.injection_datetime, s.start):.1f} h after "
                             f"injection")
            if t0:
                extra.append(f"+{hours_between(t0, s.start):.1f} h from the first scan")
        lines.append(f"{s.modality:<8} {s.kind:<8} {when}  {size:<14} "
                     f"{(s.description or '')[:40]!r:<42} {', '.join(extra)}")
        lines.append(f"         series {s.series_uid}  frame {s.frame_of_reference_uid or '-'}  "
                     f"in {s.folder}")
        if s.kind == "image" and s.modality == "PT" and s.units not in ("BQML", "GML"):
            missing.append(f"PET series {s.series_uid}: Units {s.units or 'missing'} - not in "
                           f"Bq/mL; export it in Bq/mL")
        if s.kind == "image" and s.modality in ("PT", "NM") and not s.radiopharmaceutical:
            missing.append(f"{s.modality} series {s.series_uid}: no radiopharmaceutical record; "
                           f"give the injection explicitly")
        if s.kind == "image" and s.modality == "NM" and s.units != "BQML":
            counts_spect.append(s.description or s.series_uid)
    if counts_spect:
        missing.append(f"{len(counts_spect)} SPECT series in counts ({', '.join(counts_spect)}): "
                       f"give the camera calibration factor (cps/MBq)")
    for p in index.nifti:
        lines.append(f"NIfTI    volume   {p}")
    for p, reason in index.unreadable:
        lines.append(f"UNREADABLE        {reason}")
    mods = {s.modality for s in images}
    if "CT" not in mods:
        missing.append("no CT (needed for masks, registration and density)")
    if "PT" not in mods:
        missing.append("no PET (pre-therapy scan)")
    if "NM" not in mods:
        missing.append("no SPECT (post-therapy scans)")
    if not index.by_kind("rtstruct") and not index.by_kind("seg") and not index.nifti:
        missing.append("no masks (RTSTRUCT, SEG or NIfTI label map); lesions can be segmented "
                       "from the PET (twin.imaging.segment_lesions)")
    weights = [s.patient_weight_kg for s in images if s.modality in ("PT", "NM")]
    if images and any(s.modality == "PT" for s in images) and not any(weights):
        missing.append("patient weight missing (needed for SUV)")
    if show_identifiers and index.series:
        ident = patient_identifiers(index.series[0].files[0])
        lines.insert(0, "patient: " + ", ".join(f"{k}={v}" for k, v in ident.items()))
    return lines, missing
