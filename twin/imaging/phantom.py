"""The synthetic patient: anatomy, PET and SPECT from region time-activity curves, as real DICOM.

A male adult torso and head on a voxel grid (default 96 x 96 x 160 voxels of 4.4 mm; ask for
finer grids with ``spacing_mm``), built from ellipsoids and cylinders sized to the ICRP reference
adult male (ICRP Publication 89, Ann ICRP 2002;32(3-4); organ volumes = reference masses /
densities; liver ~1.7 L, spleen ~150 mL, kidneys ~300 mL, parotids 2 x 25 mL, lungs ~4.4 L
inflated). Regions carry the names of the psma-pbrpk model (plus Lacrimal and Bladder).

Activity comes from a table of region time-activity curves (the PBPK model supplies it):
columns ``region, time_h, activity_mbq, radiopharmaceutical``, time in hours from the first
administration. At each scan time the curve is interpolated linearly and each region's activity
spread over its voxels (uniformly, or with a smooth pattern that keeps the region total).
Regions of the table without anatomy here (Art, Vein, Muscle, Skin, Adipose, GI, ...) are spread
over the remainder ('Rest'); labels without a curve share the remainder's concentration.

Imaging physics (typical values, each with its source):
- CT numbers (HU): Schneider W, Bortfeld T, Schlegel W, Phys Med Biol 2000;45:459-478
  (doi:10.1088/0031-9155/45/2/314), Table of tissue CT numbers: lung -800 (inflated, -700 to -900),
  adipose -100, muscle/soft tissue 40, liver 60, spleen 50, kidney 35, blood 45, cortical bone
  1200, spongiosa/red marrow 250; plus Gaussian noise of 15 HU.
- PET (68Ga-PSMA-11, 150 MBq, scanned 1 h after injection, 2 min per bed): effective resolution
  6 mm FWHM (scanner ~4.5 mm, NEMA NU 2, Jakoby BW et al., Phys Med Biol 2011;56:2375-2389, with
  68Ga positron range and clinical reconstruction: Sanchez-Crespo A, Appl Radiat Isot 2013;76:55-62,
  doi:10.1016/j.apradiso.2012.06.034). Activity per EANM/SNMMI guideline (1.8-2.2 MBq/kg, Fendler WP
  et al., Eur J Nucl Med Mol Imaging 2017;44:1014-1024, doi:10.1007/s00259-017-3670-z).
- SPECT (177Lu-PSMA-617, 7400 MBq as in VISION, Sartor O et al., N Engl J Med 2021;385:1091-1103):
  resolution 12 mm FWHM (medium-energy collimator at ~20 cm, 208 keV; Ljungberg M et al., MIRD
  Pamphlet No. 26, J Nucl Med 2016;57:151-162), calibration factor 20 counts/s per MBq for two
  heads (order of 10 cps/MBq per head for 177Lu, MIRD 26), 2 x 60 views of 20 s; 128-matrix-like
  4.8 mm voxels.
- Poisson noise on the expected counts: PET counts = C V S T with the effective sensitivity of
  twin.observe (1000 cps/MBq), SPECT counts = A CF (1 - exp(-lambda T)) / lambda.

Everything random comes from ``numpy.random.default_rng(seed)``; DICOM UIDs derive from the seed
too, so the same seed gives the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pbpk_models.radionuclides import decay_constant_per_h, half_life_h, parse_radiopharmaceutical
from pbpk_models.units import h_to_seconds
from twin.errors import InputError
from twin.imaging.masks import RegionMasks
from twin.imaging.quantitation import InjectionRecord
from twin.imaging.volume import Volume

if False:  # typing only
    from twin.imaging.study import Study  # noqa: F401

# Anatomy painting order: later entries overwrite earlier ones where shapes overlap.
REGIONS = ("Rest", "Brain", "Lungs", "Heart", "Liver", "Spleen", "Kidney", "SG", "Lacrimal",
           "Bladder", "Prostate", "Bone", "RedMarrow", "Tumor1", "Tumor2", "TumorRest")
LABELS = {name: i + 1 for i, name in enumerate(REGIONS)}

# Schneider et al. 2000 (see module docstring).
HU = {"air": -1000, "adipose": -100, "soft": 40, "Rest": 40, "Brain": 35, "Lungs": -800,
      "Heart": 45, "Liver": 60, "Spleen": 50, "Kidney": 35, "SG": 45, "Lacrimal": 45,
      "Bladder": 10, "Prostate": 45, "Bone": 1200, "RedMarrow": 250, "Tumor1": 45, "Tumor2": 45,
      "TumorRest": 45}
CT_NOISE_HU = 15.0

PET_FWHM_MM = 6.0
SPECT_FWHM_MM = 12.0
PET_SENSITIVITY_CPS_PER_MBQ = 1000.0
PET_BED_DURATION_S = 120.0
SPECT_CALIBRATION_CPS_PER_MBQ = 20.0
SPECT_VIEWS_PER_HEAD = 60
SPECT_VIEW_DURATION_S = 20.0
SPECT_SPACING_MM = 4.8
DEFAULT_FOV_MM = (422.4, 422.4, 704.0)
DEFAULT_START = datetime(2024, 3, 4, 9, 0, 0)
PATIENT = {"weight_kg": 80.0, "height_m": 1.78, "sex": "M"}


def _grid(spacing_mm: float, fov_mm=DEFAULT_FOV_MM) -> Volume:
    n = [int(round(f / spacing_mm)) for f in fov_mm]
    # Centre the field of view on x = y = 0; the top slice just above the vertex (z = 0).
    origin = (round(-(n[0] - 1) * spacing_mm / 2, 3), round(-(n[1] - 1) * spacing_mm / 2, 3),
              round(5.0 - (n[2] - 1) * spacing_mm, 3))
    return Volume(np.zeros((n[2], n[1], n[0]), np.uint8), (spacing_mm,) * 3, origin)


def _coords(g: Volume):
    nx, ny, nz = g.size_xyz
    sx, sy, sz = g.spacing_mm
    ox, oy, oz = g.origin_mm
    x = (ox + sx * np.arange(nx))[None, None, :]
    y = (oy + sy * np.arange(ny))[None, :, None]
    z = (oz + sz * np.arange(nz))[:, None, None]
    return x, y, z


def _ell(X, Y, Z, c, r):
    return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0


def _cyl(X, Y, Z, c, r, z0, z1):
    return (((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 <= 1.0) & (Z >= z0) & (Z <= z1)


def anatomy(spacing_mm: float = 4.4, fov_mm=DEFAULT_FOV_MM, seed: int = 0):
    """Label map (RegionMasks) and CT (HU, int16) of the synthetic patient.

    Coordinates in mm, DICOM patient system (x left, y posterior, z superior), vertex at z = 0.
    """
    g = _grid(spacing_mm, fov_mm)
    X, Y, Z = _coords(g)
    shape = g.shape
    lab = np.zeros(shape, np.int16)

    def paint(name, m):
        lab[np.broadcast_to(m, shape)] = LABELS[name]

    head = _ell(X, Y, Z, (0, 0, -110), (75, 95, 110))
    neck = _cyl(X, Y, Z, (0, 10), (55, 55), -260, -170)
    torso = _cyl(X, Y, Z, (0, 0), (170, 110), -2000, -240) & _ell(X, Y, Z, (0, 0, -470), (175, 115,
                                                                                          235)) \
        | _cyl(X, Y, Z, (0, 0), (170, 110), -2000, -470)
    body = head | neck | torso
    paint("Rest", body)
    paint("Brain", _ell(X, Y, Z, (0, 5, -85), (62, 80, 55)))
    paint("Lungs", _ell(X, Y, Z, (-75, 10, -350), (60, 80, 110))
          | _ell(X, Y, Z, (75, 10, -350), (60, 80, 110)))
    paint("Heart", _ell(X, Y, Z, (20, -20, -390), (50, 45, 55)))
    paint("Liver", _ell(X, Y, Z, (-65, 0, -500), (95, 75, 58)))
    paint("Spleen", _ell(X, Y, Z, (90, 40, -490), (35, 25, 45)))
    paint("Kidney", _ell(X, Y, Z, (-70, 55, -570), (27, 24, 55))
          | _ell(X, Y, Z, (70, 55, -570), (27, 24, 55)))
    paint("SG", _ell(X, Y, Z, (-50, 10, -175), (13, 20, 23)) | _ell(X, Y, Z, (50, 10, -175),
                                                                   (13, 20, 23))
          | _ell(X, Y, Z, (-35, -25, -205), (13, 11, 10)) | _ell(X, Y, Z, (35, -25, -205),
                                                                (13, 11, 10)))
    paint("Lacrimal", _ell(X, Y, Z, (-35, -65, -110), (8, 5, 4))
          | _ell(X, Y, Z, (35, -65, -110), (8, 5, 4)))
    paint("Bladder", _ell(X, Y, Z, (0, -20, -640), (40, 35, 30)))
    paint("Prostate", _ell(X, Y, Z, (0, 5, -685), (20, 15, 15)))
    spine_o = _cyl(X, Y, Z, (0, 75), (17, 17), -700, -180)
    spine_i = _cyl(X, Y, Z, (0, 75), (12, 12), -695, -185)
    pelvis_o = _ell(X, Y, Z, (-95, 40, -640), (25, 45, 40)) | _ell(X, Y, Z, (95, 40, -640),
                                                                  (25, 45, 40))
    pelvis_i = _ell(X, Y, Z, (-95, 40, -640), (19, 39, 34)) | _ell(X, Y, Z, (95, 40, -640),
                                                                  (19, 39, 34))
    paint("Bone", spine_o | pelvis_o)
    paint("RedMarrow", spine_i | pelvis_i)
    paint("Tumor1", _ell(X, Y, Z, (-30, 30, -620), (15, 15, 15)))
    paint("Tumor2", _ell(X, Y, Z, (45, 60, -420), (10, 10, 10)))
    paint("TumorRest", _ell(X, Y, Z, (55, -15, -610), (7, 7, 7))
          | _ell(X, Y, Z, (-110, 10, -300), (6, 6, 6)) | _ell(X, Y, Z, (0, 75, -450), (8, 8, 8)))
    lab[~np.broadcast_to(body, shape)] = 0
    # CT: fat under the skin (outer ~12 mm of the torso), soft tissue inside, organs by label.
    hu = np.full(shape, HU["air"], np.float32)
    inner = _cyl(X, Y, Z, (0, 0), (158, 98), -2000, -250) | head | neck
    hu[np.broadcast_to(body, shape)] = HU["adipose"]
    hu[np.broadcast_to(body & inner, shape)] = HU["soft"]
    for name in REGIONS[1:]:
        hu[lab == LABELS[name]] = HU[name]
    rng = np.random.default_rng([seed, 1])
    hu += rng.normal(0.0, CT_NOISE_HU, shape).astype(np.float32)
    ct = g.with_array(np.clip(np.round(hu), -1024, 3071).astype(np.int16), units="HU",
                      modality="CT", description="synthetic CT")
    present = {LABELS[n]: n for n in REGIONS if np.any(lab == LABELS[n])}
    masks = RegionMasks(g.with_array(lab, units="label", description="true regions"),
                        tuple(present.items()))
    return masks, ct


def example_tacs(pet_admin_h: float = 0.0, therapy_admin_h: float = 168.0,
                 pet_activity_mbq: float = 150.0, therapy_activity_mbq: float = 7400.0):
    """Bi-exponential region curves A(t) = A0 f (e^{-k_out tau} - e^{-k_in tau}) e^{-lambda tau}
    (tau = time after the administration) for both radiopharmaceuticals; for tests and demos
    until the PBPK model supplies the curves. Uptake fractions f of the order of published
    177Lu-PSMA-617 biodistributions (kidneys ~2-4%, salivary glands ~1%, liver ~2%; Kratochwil C
    et al., J Nucl Med 2016;57:1170-1176)."""
    # region: (f, k_in 1/h, k_out 1/h)
    params = {"Kidney": (0.045, 1.5, 0.030), "SG": (0.012, 0.8, 0.015),
              "Liver": (0.025, 1.0, 0.010), "Spleen": (0.004, 1.0, 0.015),
              "Lacrimal": (0.0004, 0.8, 0.015), "Tumor1": (0.020, 0.3, 0.004),
              "Tumor2": (0.008, 0.3, 0.005), "TumorRest": (0.006, 0.3, 0.005),
              "Lungs": (0.010, 3.0, 0.03), "Heart": (0.010, 5.0, 0.05),
              "Brain": (0.001, 3.0, 0.03), "Bone": (0.006, 1.0, 0.02),
              "RedMarrow": (0.005, 2.0, 0.03), "Prostate": (0.001, 1.0, 0.02),
              "Bladder": (0.080, 0.6, 0.25), "Rest": (0.35, 6.0, 0.03)}
    rows = []
    for rp, t_adm, a0, times in (
            ("ga68-psma-11", pet_admin_h, pet_activity_mbq, np.arange(0.0, 6.01, 0.25)),
            ("lu177-psma-617", therapy_admin_h, therapy_activity_mbq,
             np.r_[np.arange(0.0, 12.0, 0.5), np.arange(12.0, 400.1, 4.0)])):
        lam = decay_constant_per_h(parse_radiopharmaceutical(rp).nuclide)
        for region, (f, kin, kout) in params.items():
            tau = times
            a = a0 * f * (np.exp(-kout * tau) - np.exp(-kin * tau)) * np.exp(-lam * tau)
            for t, v in zip(tau + t_adm, a):
                rows.append((region, float(t), float(max(v, 0.0)), rp))
    return pd.DataFrame(rows, columns=["region", "time_h", "activity_mbq", "radiopharmaceutical"])


def _check_tacs(tacs: pd.DataFrame):
    need = {"region", "time_h", "activity_mbq", "radiopharmaceutical"}
    if not isinstance(tacs, pd.DataFrame) or not need <= set(tacs.columns):
        raise InputError(f"the region curves need a DataFrame with columns {sorted(need)}")
    if tacs.empty:
        raise InputError("the region curves are empty")
    x = tacs[["time_h", "activity_mbq"]].to_numpy(float)
    if not np.all(np.isfinite(x)) or (x < 0).any():
        raise InputError("region curves: time_h and activity_mbq must be finite and >= 0")


def _region_activity_at(tacs, radiopharmaceutical, t_h) -> dict:
    names = {v: parse_radiopharmaceutical(v).name for v in tacs["radiopharmaceutical"].unique()}
    sub = tacs[tacs["radiopharmaceutical"].map(names) == radiopharmaceutical]
    if sub.empty:
        raise InputError(f"the region curves have no rows for {radiopharmaceutical}; add them or "
                         f"drop that scan")
    out = {}
    for region, g in sub.groupby("region"):
        g = g.sort_values("time_h")
        t, a = g["time_h"].to_numpy(float), g["activity_mbq"].to_numpy(float)
        if not (t[0] - 1e-9 <= t_h <= t[-1] + 1e-9):
            raise InputError(f"the {radiopharmaceutical} curve of {region} covers {t[0]:g}-"
                             f"{t[-1]:g} h, the scan is at {t_h:g} h; extend the curves")
        out[str(region)] = float(np.interp(t_h, t, a))
    return out


def activity_map(masks: RegionMasks, region_activity: dict, pattern: str = "uniform"):
    """Concentration (MBq/mL) on the masks' grid and the activity each region actually got."""
    lab = np.asarray(masks.labels.array)
    nlab = int(lab.max(initial=0)) + 1
    n = np.bincount(lab.ravel(), minlength=nlab).astype(float)
    vml = masks.labels.voxel_volume_ml
    label_of = masks.label_of
    conc_lab = np.zeros(nlab)
    pool_labels = [label_of[r] for r in label_of if r not in region_activity or r == "Rest"]
    pool_act = sum(a for r, a in region_activity.items() if r not in label_of or r == "Rest")
    given = {}
    for r, a in region_activity.items():
        if r in label_of and r != "Rest":
            conc_lab[label_of[r]] = a / (n[label_of[r]] * vml)
            given[r] = a
    pool_n = sum(n[k] for k in pool_labels)
    if pool_act > 0 and pool_n == 0:
        raise InputError("the curves give activity to regions without anatomy, and there is no "
                         "remainder region to hold it")
    if pool_n:
        c = pool_act / (pool_n * vml)
        for k in pool_labels:
            conc_lab[k] = c
        for r, k in label_of.items():
            if k in pool_labels:
                given[r] = c * n[k] * vml
    conc = conc_lab[lab]
    if pattern == "smooth":
        X, Y, Z = _coords(masks.labels)
        f = 1.0 + 0.3 * np.sin(2 * np.pi * X / 120.0) * np.sin(2 * np.pi * Y / 150.0) \
            * np.cos(2 * np.pi * Z / 170.0)
        f = np.broadcast_to(f, lab.shape)
        mean_f = np.bincount(lab.ravel(), weights=f.ravel(), minlength=nlab) / np.maximum(n, 1)
        conc = conc * f / mean_f[lab]
    elif pattern != "uniform":
        raise InputError(f"pattern must be 'uniform' or 'smooth', got {pattern!r}")
    return conc.astype(np.float32), given


def _blur(conc: np.ndarray, spacing_mm, fwhm_mm: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = [fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / s for s in spacing_mm[::-1]]
    return gaussian_filter(conc, sigma=sigma, mode="constant", truncate=3.0)


@dataclass(frozen=True)
class Scan:
    """One simulated emission scan (values as the scanner stores them) and its ground truth."""

    modality: str
    volume: Volume           # PET: MBq/mL (decay corrected to start); SPECT: counts
    expected: Volume         # the noise-free blurred concentration (MBq/mL) on the same grid
    start: datetime
    injection: InjectionRecord
    duration_s: float
    truth: dict              # region -> activity (MBq) at start


@dataclass(frozen=True)
class Phantom:
    """The synthetic patient in memory: anatomy, CT, scans, truth and settings."""

    masks: RegionMasks
    ct: Volume
    scans: tuple
    tacs: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def truth_table(self) -> pd.DataFrame:
        t0 = self.settings["t0"]
        rows = []
        vols = self.masks.volumes_ml()
        for i, s in enumerate(self.scans):
            for region, a in s.truth.items():
                rows.append(dict(scan=i, modality=s.modality,
                                 radiopharmaceutical=s.injection.radiopharmaceutical,
                                 time_h=(s.start - t0).total_seconds() / 3600.0, region=region,
                                 activity_mbq=a, volume_ml=vols.get(region, 0.0)))
        return pd.DataFrame(rows)


def simulate_phantom(tacs: pd.DataFrame | None = None, *, spacing_mm: float = 4.4,
                     fov_mm=DEFAULT_FOV_MM, pet_time_h: float | None = 1.0,
                     spect_times_h=(4.0, 24.0, 96.0, 168.0), pet_admin_h: float = 0.0,
                     therapy_admin_h: float = 168.0, pet_activity_mbq: float = 150.0,
                     therapy_activity_mbq: float = 7400.0,
                     pet_radiopharmaceutical: str = "ga68-psma-11",
                     therapy_radiopharmaceutical: str = "lu177-psma-617",
                     pattern: str = "uniform", seed: int = 0, noise: bool = True,
                     start: datetime = DEFAULT_START) -> Phantom:
    """Simulate the synthetic patient in memory.

    Args:
        tacs: region curves (``region, time_h, activity_mbq, radiopharmaceutical``; time from the
            first administration, h); default :func:`example_tacs`.
        spacing_mm: CT/PET voxel size (mm); 4.4 gives 96 x 96 x 160, 2.2 gives 192 x 192 x 320.
        pet_time_h: PET scan time after its administration (h); ``None`` for no PET.
        spect_times_h: SPECT scan times after the therapy administration (h).
        pet_admin_h, therapy_admin_h: administration times on the curves' time axis (h).
        pattern: 'uniform' or 'smooth' intra-region distribution.
        seed: seeds noise and DICOM UIDs.
        noise: False gives noise-free (blurred) images.
        start: date and time of t = 0.
    """
    if tacs is None:
        tacs = example_tacs(pet_admin_h, therapy_admin_h, pet_activity_mbq, therapy_activity_mbq)
    _check_tacs(tacs)
    masks, ct = anatomy(spacing_mm, fov_mm, seed)
    for_uid = _uid(seed, "for")
    masks = RegionMasks(masks.labels.replace(frame_of_reference_uid=for_uid), masks.names)
    ct = ct.replace(frame_of_reference_uid=for_uid, acquisition_start=start
                    + timedelta(hours=pet_admin_h + (pet_time_h or 0.0)) - timedelta(minutes=5))
    rng = np.random.default_rng([seed, 2])
    scans = []
    spect_grid = _grid(SPECT_SPACING_MM, tuple(np.asarray(ct.size_xyz) * spacing_mm))
    spect_grid = spect_grid.replace(frame_of_reference_uid=for_uid)
    if pet_time_h is not None:
        inj = InjectionRecord(start + timedelta(hours=pet_admin_h), pet_activity_mbq,
                              pet_radiopharmaceutical, source="user")
        t = pet_admin_h + pet_time_h
        acts = _region_activity_at(tacs, inj.radiopharmaceutical, t)
        conc, given = activity_map(masks, acts, pattern)
        expected = _blur(conc, ct.spacing_mm, PET_FWHM_MM)
        if noise:
            k = ct.voxel_volume_ml * PET_SENSITIVITY_CPS_PER_MBQ * PET_BED_DURATION_S
            img = (rng.poisson(np.clip(expected, 0, None) * k) / k).astype(np.float32)
        else:
            img = expected
        when = start + timedelta(hours=t)
        scans.append(Scan("PET", ct.with_array(img, units="MBq/mL", modality="PT",
                                               acquisition_start=when, description="PET"),
                          ct.with_array(expected, units="MBq/mL", modality="PT"), when, inj,
                          PET_BED_DURATION_S, given))
    inj = InjectionRecord(start + timedelta(hours=therapy_admin_h), therapy_activity_mbq,
                          therapy_radiopharmaceutical, source="user")
    lam_s = math.log(2.0) / h_to_seconds(half_life_h(inj.nuclide))
    duration = SPECT_VIEWS_PER_HEAD * SPECT_VIEW_DURATION_S
    eff_s = -math.expm1(-lam_s * duration) / lam_s
    from twin.imaging.resample import resample_to

    for ts in spect_times_h:
        t = therapy_admin_h + float(ts)
        acts = _region_activity_at(tacs, inj.radiopharmaceutical, t)
        conc, given = activity_map(masks, acts, pattern)
        blurred = ct.with_array(_blur(conc, ct.spacing_mm, SPECT_FWHM_MM), units="MBq/mL")
        expected = resample_to(blurred, spect_grid)
        k = spect_grid.voxel_volume_ml * SPECT_CALIBRATION_CPS_PER_MBQ * eff_s
        mu = np.clip(np.asarray(expected.array, float), 0, None) * k
        counts = rng.poisson(mu) if noise else np.round(mu)
        when = start + timedelta(hours=t)
        scans.append(Scan("SPECT", spect_grid.with_array(counts.astype(np.float32),
                                                         units="counts", modality="NM",
                                                         acquisition_start=when,
                                                         description=f"SPECT {ts:g} h"),
                          expected, when, inj, duration, given))
    settings = dict(t0=start, seed=seed, spacing_mm=spacing_mm, pattern=pattern, noise=noise,
                    frame_of_reference_uid=for_uid, patient=dict(PATIENT),
                    pet_fwhm_mm=PET_FWHM_MM, spect_fwhm_mm=SPECT_FWHM_MM,
                    pet_sensitivity_cps_per_mbq=PET_SENSITIVITY_CPS_PER_MBQ,
                    pet_bed_duration_s=PET_BED_DURATION_S,
                    spect_calibration_cps_per_mbq=SPECT_CALIBRATION_CPS_PER_MBQ,
                    spect_views_per_head=SPECT_VIEWS_PER_HEAD,
                    spect_view_duration_s=SPECT_VIEW_DURATION_S, ct_noise_hu=CT_NOISE_HU)
    return Phantom(masks=masks, ct=ct, scans=tuple(scans), tacs=tacs, settings=settings)


def _uid(seed, what):
    from twin.imaging.dicom_write import new_uid

    return new_uid(f"twin-phantom/{seed}/{what}")


def _patient_attrs(seed):
    # Synthetic identity, written so that tests can check it never leaks into outputs.
    return {"PatientName": "Synthetic^Patient", "PatientID": f"TWIN-PHANTOM-{seed:04d}",
            "PatientBirthDate": "19550101", "PatientSex": PATIENT["sex"],
            "PatientWeight": str(PATIENT["weight_kg"]), "PatientSize": str(PATIENT["height_m"]),
            "AccessionNumber": f"ACC{seed:06d}", "InstitutionName": "Synthetic Hospital"}


def region_tia_mbq_h(tacs: pd.DataFrame, radiopharmaceutical: str, admin_h: float) -> dict:
    """Region time-integrated activity (MBq h): trapezoid over the curve from the administration,
    plus the tail after the last point assuming physical decay only (an upper bound)."""
    lam = decay_constant_per_h(parse_radiopharmaceutical(radiopharmaceutical).nuclide)
    sub = tacs[tacs["radiopharmaceutical"].map(lambda s: parse_radiopharmaceutical(s).name)
               == parse_radiopharmaceutical(radiopharmaceutical).name]
    out = {}
    for region, g in sub.groupby("region"):
        g = g[g["time_h"] >= admin_h].sort_values("time_h")
        t, a = g["time_h"].to_numpy(float), g["activity_mbq"].to_numpy(float)
        if len(t) == 0:
            continue
        out[str(region)] = float(np.trapezoid(a, t) + a[-1] / lam)
    return out


def write_phantom(phantom: Phantom, out_dir, write_seg: bool = False) -> dict:
    """Write the phantom as DICOM (CT, PT, NM, RTSTRUCT [, SEG]) and the ground truth beside it.

    Layout: ``out_dir/dicom/{CT,PT_1h,NM_4h,...,RTSTRUCT}/`` and ``out_dir/truth/`` with
    ``labels.nii.gz``, ``regions.csv``, ``activity.csv``, ``tacs.csv``, ``tia_map.nii.gz`` (MBq h
    per voxel of the therapy radiopharmaceutical), ``phantom.json``. ``out_dir`` must not exist
    or be empty; everything is written into a temporary folder and renamed at the end.
    """
    from twin.imaging import dicom_write as dw
    from twin.imaging.io import write_nifti

    s = phantom.settings
    seed = s["seed"]
    patient = _patient_attrs(seed)
    t0 = s["t0"]
    study = {"uid": _uid(seed, "study"), "datetime": t0, "id": "1"}
    out_dir = Path(out_dir)
    paths = {}
    with dw.atomic_folder(out_dir) as tmp:
        dcm = tmp / "dicom"
        (dcm / "CT").mkdir(parents=True)
        ct_series = _uid(seed, "ct")
        dw.write_slices(phantom.ct, dcm / "CT", modality="CT", patient=patient, study=study,
                        series_uid=ct_series, series_number=1, description="CT synthetic",
                        when=phantom.ct.acquisition_start, seed=f"{seed}/ct")
        paths["CT"] = "dicom/CT"
        for i, sc in enumerate(phantom.scans):
            t_after = (sc.start - sc.injection.time).total_seconds() / 3600.0
            if sc.modality == "PET":
                name = f"PT_{t_after:g}h"
                (dcm / name).mkdir()
                bqml = sc.volume.with_array(np.asarray(sc.volume.array, np.float64) * 1e6)
                dw.write_slices(bqml, dcm / name, modality="PT", patient=patient, study=study,
                                series_uid=_uid(seed, f"pt{i}"), series_number=10 + i,
                                description=f"PET {sc.injection.radiopharmaceutical} {t_after:g} h",
                                when=sc.start, seed=f"{seed}/pt{i}",
                                extra=dw.pet_extra(sc.injection, weight_kg=PATIENT["weight_kg"],
                                                   height_m=PATIENT["height_m"],
                                                   frame_duration_ms=sc.duration_s * 1000.0))
            else:
                name = f"NM_{t_after:g}h"
                (dcm / name).mkdir()
                dw.write_nm_tomo(sc.volume, dcm / name / "NM.dcm", patient=patient, study=study,
                                 series_uid=_uid(seed, f"nm{i}"), series_number=20 + i,
                                 description=f"SPECT {sc.injection.radiopharmaceutical} "
                                             f"{t_after:g} h", when=sc.start,
                                 seed=f"{seed}/nm{i}", injection=sc.injection,
                                 frame_duration_ms=s["spect_view_duration_s"] * 1000.0,
                                 frames_in_rotation=s["spect_views_per_head"],
                                 weight_kg=PATIENT["weight_kg"], height_m=PATIENT["height_m"])
            paths[f"scan{i}"] = f"dicom/{name}"
        (dcm / "RTSTRUCT").mkdir()
        dw.write_rtstruct(phantom.masks.labels, dict(phantom.masks.names),
                          dcm / "RTSTRUCT" / "rtstruct.dcm", patient=patient, study=study,
                          series_uid=_uid(seed, "rtstruct"), when=phantom.ct.acquisition_start,
                          seed=f"{seed}/rtstruct", referenced_series_uid=ct_series)
        if write_seg:
            (dcm / "SEG").mkdir()
            dw.write_seg(phantom.masks.labels, dict(phantom.masks.names), dcm / "SEG" / "seg.dcm",
                         patient=patient, study=study, series_uid=_uid(seed, "seg"),
                         when=phantom.ct.acquisition_start, seed=f"{seed}/seg")
        truth = tmp / "truth"
        truth.mkdir()
        write_nifti(phantom.masks.labels, truth / "labels.nii.gz")
        vols = phantom.masks.volumes_ml()
        pd.DataFrame([dict(label=k, region=v, volume_ml=vols[v]) for k, v in phantom.masks.names]
                     ).to_csv(truth / "regions.csv", index=False)
        phantom.truth_table().to_csv(truth / "activity.csv", index=False)
        phantom.tacs.to_csv(truth / "tacs.csv", index=False)
        ther = [sc for sc in phantom.scans if sc.modality == "SPECT"]
        if ther:
            inj = ther[0].injection
            admin_h = (inj.time - t0).total_seconds() / 3600.0
            tia = region_tia_mbq_h(phantom.tacs, inj.radiopharmaceutical, admin_h)
            tmap, _ = activity_map(phantom.masks, tia, s["pattern"])
            write_nifti(phantom.masks.labels.with_array(tmap * np.float32(
                phantom.masks.labels.voxel_volume_ml), units="MBq h"), truth / "tia_map.nii.gz")
        meta = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in s.items()}
        meta["scans"] = [dict(modality=sc.modality, start=sc.start.isoformat(),
                              radiopharmaceutical=sc.injection.radiopharmaceutical,
                              injection_time=sc.injection.time.isoformat(),
                              injected_activity_mbq=sc.injection.activity_mbq,
                              duration_s=sc.duration_s, folder=paths[f"scan{i}"])
                         for i, sc in enumerate(phantom.scans)]
        meta["ct_geometry"] = phantom.ct.geometry()
        meta["spect_geometry"] = ther[0].volume.geometry() if ther else None
        (truth / "phantom.json").write_text(json.dumps(meta, indent=2))
    return {"dicom": out_dir / "dicom", "truth": out_dir / "truth"}


def make_phantom(out_dir, tacs: pd.DataFrame | None = None, **kwargs) -> Phantom:
    """Simulate (:func:`simulate_phantom`) and write (:func:`write_phantom`) in one call."""
    write_seg = kwargs.pop("write_seg", False)
    ph = simulate_phantom(tacs, **kwargs)
    write_phantom(ph, out_dir, write_seg=write_seg)
    return ph


def phantom_study(phantom: Phantom, expected: bool = False) -> "Study":
    """The phantom as a :class:`~twin.imaging.study.Study` without going through DICOM.

    ``expected=True`` uses the noise-free blurred images: observing that Study gives the
    partial-volume-only answer against which a noisy measurement is judged.
    """

    from twin.imaging.study import EmissionScan, Patient, Study

    pet, spect = [], []
    lam = {}
    for sc in phantom.scans:
        if sc.modality == "PET":
            vol = sc.expected if expected else sc.volume
            vol = vol.replace(acquisition_start=sc.start, units="MBq/mL")
            pet.append(EmissionScan(vol, "PET", sc.start, sc.duration_s, sc.injection))
        else:
            cf = phantom.settings["spect_calibration_cps_per_mbq"]
            if expected:
                vol = sc.expected
            else:
                nuc = sc.injection.nuclide
                if nuc not in lam:
                    lam[nuc] = math.log(2.0) / h_to_seconds(half_life_h(nuc))
                eff_s = -math.expm1(-lam[nuc] * sc.duration_s) / lam[nuc]
                k = sc.volume.voxel_volume_ml * cf * eff_s
                vol = sc.volume.with_array(np.asarray(sc.volume.array, np.float32) / np.float32(k))
            vol = vol.replace(acquisition_start=sc.start, units="MBq/mL")
            spect.append(EmissionScan(vol, "SPECT", sc.start, sc.duration_s, sc.injection,
                                      sensitivity_cps_per_mbq=cf))
    p = phantom.settings["patient"]
    return Study(ct=phantom.ct, pet=tuple(pet), spect=tuple(spect), masks=phantom.masks,
                 patient=Patient(p["weight_kg"], p["height_m"], p["sex"]), source="phantom")
