"""Region activities of a Study at each scan: the Observations a twin is fitted to.

For every scan and region: activity A = sum over the region's voxels of concentration x voxel
volume (MBq), the region volume (mL), and its uncertainty: Poisson counting noise plus a
proportional calibration term (:func:`calibration.observations.region_sigma_mbq`). Scans are
resampled (linear) onto the masks' grid - the planning CT, fine enough for small organs - after
registration when their frame of reference differs. Voxels outside a scan's field of view are
not counted; a region less than ``min_fov_fraction`` inside the field of view is left out.

Partial-volume effects are not corrected: blurred activity spills out of small regions (a
sphere of 2 cm diameter in a 12 mm FWHM SPECT recovers roughly half its activity), so fits should
use the sigma as a floor and the recovery of small regions with care.

Defaults for the Poisson term (where the data carry no count information):
- PET: effective sensitivity 1000 counts/s per MBq after attenuation (NEMA NU 2 system
  sensitivities of current PET/CT are ~10 kcps/MBq, e.g. 9.7 for the Biograph mCT, Jakoby BW et al.,
  Phys Med Biol 2011;56:2375-2389, doi:10.1088/0031-9155/56/8/004; attenuation in the body and the
  axial sensitivity profile reduce it about tenfold), one bed position's frame duration.
- SPECT: the camera calibration factor (cps/MBq) and acquisition time.
Calibration terms: PET 5%, SPECT 10% (see calibration.observations).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from calibration.observations import Observations, region_sigma_mbq
from twin.errors import InputError
from twin.imaging.quantitation import hours_between
from twin.imaging.study import Study

log = logging.getLogger(__name__)

PET_SENSITIVITY_CPS_PER_MBQ = 1000.0
SPECT_SENSITIVITY_CPS_PER_MBQ = 20.0  # used only when a Bq/mL SPECT carries no calibration
PET_DEFAULT_DURATION_S = 120.0  # 2 min per bed position, a common clinical protocol
CALIBRATION_REL = {"PET": 0.05, "SPECT": 0.10}


def region_statistics(study: Study, *, time_origin=None, calibration_rel: dict | None = None,
                      pet_sensitivity_cps_per_mbq: float = PET_SENSITIVITY_CPS_PER_MBQ,
                      min_fov_fraction: float = 0.95) -> pd.DataFrame:
    """One row per scan and region: the Observations columns plus ``volume_ml, n_voxels,
    mean_mbq_per_ml, sigma_poisson_mbq, sigma_calibration_mbq, fraction_in_fov``.

    Args:
        time_origin: datetime that is t = 0 (default: the study's first administration).
        calibration_rel: relative calibration uncertainty per modality (default PET 0.05,
            SPECT 0.10).
        pet_sensitivity_cps_per_mbq: effective PET sensitivity for the Poisson term.
    """
    from twin.imaging.resample import resample_to

    if study.masks is None:
        raise InputError(f"{study.source}: the study has no masks; give masks= to load_study "
                         f"(NIfTI label map, RTSTRUCT or SEG)")
    if not study.scans:
        raise InputError(f"{study.source}: the study has no PET or SPECT scan to observe")
    cal = dict(CALIBRATION_REL, **(calibration_rel or {}))
    t0 = time_origin or study.first_administration
    masks = study.masks
    # Work inside the bounding box of the labelled voxels, and on those voxels only: a body
    # fills a fraction of a whole-body CT's field of view.
    full = np.asarray(masks.labels.array)
    box = tuple(slice(int(np.nonzero(full.any(axis=ax))[0][0]),
                      int(np.nonzero(full.any(axis=ax))[0][-1]) + 1)
                for ax in ((1, 2), (0, 2), (0, 1))) if full.any() else tuple(
                    slice(0, n) for n in full.shape)
    lab_box = full[box]
    grid = masks.labels.replace(array=lab_box, origin_mm=tuple(
        masks.labels.index_to_physical([box[2].start, box[1].start, box[0].start])))
    sel = np.flatnonzero(lab_box)
    labels = lab_box.ravel()[sel].astype(np.intp)
    nlab = int(labels.max(initial=0)) + 1
    n_vox = np.bincount(labels, minlength=nlab)
    vox_ml = masks.labels.voxel_volume_ml
    rows = []
    for scan in study.scans:
        vol = scan.volume
        if scan.transform is None:
            f_a, f_b = vol.frame_of_reference_uid, masks.labels.frame_of_reference_uid
            if f_a and f_b and f_a != f_b:
                raise InputError(f"{vol.source}: the {scan.modality} is in another frame of "
                                 f"reference than the masks; load the study with register=True "
                                 f"and the SPECT/CT's CT, or give masks drawn on it")
        if vol.same_grid(masks.labels) and scan.transform is None:
            conc = np.asarray(vol.array)[box].ravel()[sel].astype(np.float32)
            inside = np.ones(nlab)
        else:
            res = resample_to(vol, grid, default_value=np.nan, transform=scan.transform)
            conc = np.asarray(res.array).ravel()[sel]
            nan = np.isnan(conc)
            inside = 1.0 - np.bincount(labels[nan], minlength=nlab) / np.maximum(n_vox, 1)
            conc[nan] = 0.0
        total = np.bincount(labels, weights=conc, minlength=nlab) * vox_ml  # MBq
        if scan.modality == "PET":
            sens = pet_sensitivity_cps_per_mbq
            dur = scan.duration_s or PET_DEFAULT_DURATION_S
        else:
            sens = scan.sensitivity_cps_per_mbq or SPECT_SENSITIVITY_CPS_PER_MBQ
            dur = scan.duration_s or 1200.0
        t_h = hours_between(t0, scan.start)
        for label, region in masks.names:
            if label >= nlab or n_vox[label] == 0:
                continue
            if inside[label] < min_fov_fraction:
                log.warning("region %s is %.0f%% outside the %s field of view at %.1f h; left out",
                            region, 100 * (1 - inside[label]), scan.modality, t_h)
                continue
            a = max(float(total[label]), 0.0)
            sp = float(region_sigma_mbq(a, sens, dur, 0.0))
            sc = cal[scan.modality] * a
            sig = float(np.hypot(sp, sc))
            if sig <= 0:
                sig = float(np.sqrt(1.0 / (sens * dur)))  # one count's worth: never zero
            rows.append(dict(region=region, time_h=t_h, activity_mbq=a, sigma_mbq=sig,
                             modality=scan.modality,
                             radiopharmaceutical=scan.radiopharmaceutical,
                             volume_ml=float(n_vox[label]) * vox_ml, n_voxels=int(n_vox[label]),
                             mean_mbq_per_ml=a / (float(n_vox[label]) * vox_ml),
                             sigma_poisson_mbq=sp, sigma_calibration_mbq=sc,
                             fraction_in_fov=float(inside[label])))
    if not rows:
        raise InputError(f"{study.source}: no region lies inside any scan's field of view")
    return pd.DataFrame(rows)


def observe(study: Study, **kwargs) -> Observations:
    """Observations (region, time_h, activity_mbq, sigma_mbq, modality, radiopharmaceutical) of
    every region at every scan; keyword arguments as :func:`region_statistics`."""
    return Observations.from_dataframe(region_statistics(study, **kwargs), source=study.source)
