"""Region activities of a Study at each scan: the Observations a twin is fitted to.

For every scan and region: activity A = sum over the region's voxels of concentration x voxel
volume (MBq), the region volume (mL), and its uncertainty: Poisson counting noise plus a
proportional calibration term (:func:`calibration.observations.region_sigma_mbq`). Scans are
resampled (linear) onto the masks' grid - the planning CT, fine enough for small organs - after
registration when their frame of reference differs. Voxels outside a scan's field of view are
not counted; a region less than ``min_fov_fraction`` inside the field of view is left out.

Partial-volume effects: blurred activity spills out of small regions (a sphere of 2 cm diameter in
a 12 mm FWHM SPECT recovers roughly half its activity). By default they are not corrected; with
``pvc='gtm'`` and the scanners' resolution (``fwhm_mm``) the region activities are corrected by
the geometric transfer matrix (:mod:`twin.imaging.pvc`).

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
                      min_fov_fraction: float = 0.95, pvc: str | None = None,
                      fwhm_mm: dict | None = None) -> pd.DataFrame:
    """One row per scan and region: the Observations columns plus ``volume_ml, n_voxels,
    mean_mbq_per_ml, sigma_poisson_mbq, sigma_calibration_mbq, fraction_in_fov``.

    Args:
        time_origin: datetime that is t = 0 (default: the study's first administration).
        calibration_rel: relative calibration uncertainty per modality (default PET 0.05,
            SPECT 0.10).
        pet_sensitivity_cps_per_mbq: effective PET sensitivity for the Poisson term.
        pvc: ``None`` (no partial-volume correction) or ``'gtm'``: the geometric transfer
            matrix correction (:mod:`twin.imaging.pvc`, Rousset et al. J Nucl Med 1998). The
            rows then also hold ``activity_uncorrected_mbq`` and ``recovery`` (observed over
            corrected activity); the Poisson term is propagated through the correction and the
            calibration term applies to the corrected activity.
        fwhm_mm: the reconstructed resolution (PSF FWHM, mm) per modality, e.g.
            ``{'PET': 6, 'SPECT': 12}``; required with ``pvc``.
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
    full = np.asarray(masks.labels.array)
    fwhm = _check_pvc(study, pvc, fwhm_mm)
    background = None
    if pvc:
        # unlabelled tissue within reach of the PSF spills into the regions: one more region
        from twin.imaging.pvc import spill_zone

        union = full > 0
        zone = spill_zone(union, max(fwhm.values()), masks.labels.spacing_mm) & ~union
        ct = study.ct
        if ct is not None and ct.same_grid(masks.labels):
            zone &= np.asarray(ct.array) > -500.0   # inside the body (air is below -900 HU)
        background = int(full.max(initial=0)) + 1
        full = np.where(zone, background, full)
    # Work inside the bounding box of the labelled voxels, and on those voxels only: a body
    # fills a fraction of a whole-body CT's field of view.
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
    gtm_cache: dict = {}
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
        sigma_p = np.asarray(region_sigma_mbq(np.clip(total, 0.0, None), sens, dur, 0.0), float)
        observed = total.copy()
        if pvc:
            total, sigma_p = _gtm(total, sigma_p, n_vox, lab_box, nlab, fwhm[scan.modality],
                                  masks.labels.spacing_mm, gtm_cache)
        for label, region in masks.names:
            if label >= nlab or n_vox[label] == 0:
                continue
            if inside[label] < min_fov_fraction:
                log.warning("region %s is %.0f%% outside the %s field of view at %.1f h; left out",
                            region, 100 * (1 - inside[label]), scan.modality, t_h)
                continue
            a = max(float(total[label]), 0.0)
            sp = float(sigma_p[label])
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
            if pvc:
                rows[-1].update(activity_uncorrected_mbq=float(observed[label]),
                                recovery=float(observed[label]) / a if a > 0 else float("nan"))
    if not rows:
        raise InputError(f"{study.source}: no region lies inside any scan's field of view")
    return pd.DataFrame(rows)


def _check_pvc(study: Study, pvc, fwhm_mm) -> dict:
    if pvc is None or pvc is False or pvc == "none":
        return {}
    if pvc != "gtm":
        raise InputError(f"unknown partial-volume correction {pvc!r}; use 'gtm' or none")
    fwhm = {str(k).upper(): v for k, v in dict(fwhm_mm or {}).items()}
    missing = sorted({s.modality for s in study.scans} - set(fwhm))
    if missing:
        raise InputError(f"partial-volume correction needs the reconstructed resolution (PSF "
                         f"FWHM, mm) of every modality; missing for {', '.join(missing)} (give "
                         f"e.g. fwhm_mm={{'PET': 6, 'SPECT': 12}}, measured on a sphere phantom)")
    for k, v in fwhm.items():
        try:
            ok = float(v) > 0 and np.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"the {k} PSF FWHM must be a positive number of mm, got {v!r}")
    return {k: float(v) for k, v in fwhm.items()}


def _gtm(total, sigma_p, n_vox, lab_box, nlab, fwhm_mm, spacing_mm, cache):
    """Region totals (MBq) and their Poisson sigma corrected by the geometric transfer matrix."""
    from twin.imaging.pvc import gtm_correct, transfer_matrix

    if fwhm_mm not in cache:
        G, _ = transfer_matrix(lab_box, nlab, fwhm_mm, spacing_mm)
        cache[fwhm_mm] = G
    G = cache[fwhm_mm]
    keep = np.flatnonzero(n_vox[:nlab] > 0)
    keep = keep[keep > 0]
    n = n_vox[keep].astype(float)
    T, sT = gtm_correct(total[keep] / n, sigma_p[keep] / n, G[np.ix_(keep, keep)])
    out, out_s = np.zeros_like(total, dtype=float), np.zeros_like(total, dtype=float)
    out[keep], out_s[keep] = T * n, sT * n
    return out, out_s


def observe(study: Study, **kwargs) -> Observations:
    """Observations (region, time_h, activity_mbq, sigma_mbq, modality, radiopharmaceutical) of
    every region at every scan; keyword arguments as :func:`region_statistics`."""
    return Observations.from_dataframe(region_statistics(study, **kwargs), source=study.source)
