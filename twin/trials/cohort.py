"""Cohorts of real studies: every study folder through the pipeline, one Dask task per patient.

Per patient (:func:`process_study`, a plain function that a Dask worker imports):
1. :func:`twin.imaging.load_study` reads the DICOM (CT, PET, SPECT, RTSTRUCT/SEG);
2. :func:`twin.observe.observe` measures the region activity of every scan;
3. the region TIA of the therapy radiopharmaceutical by :func:`twin.kinetics.fit_regions`
   (sum-of-exponentials fit of each region's SPECT series, physical decay after the last scan):
   a documented lighter step than the twin calibration (:func:`calibration.fit`, a few seconds
   to a minute per patient with compilation), chosen so that a cohort task stays cheap;
4. absorbed dose per region = TIA x S with S from ``pbpk_models.units.gy_per_mbq_h`` and the
   region's mask volume at 1 g/mL (**assumed** unit density; self-dose of the non-penetrating
   emissions as in the organ engine).

:func:`run_cohort` submits one task per study folder to a ``dask.distributed`` cluster (a
``LocalCluster`` with ``n_workers`` single-threaded processes by default, or an existing
scheduler by address), with ``retries``; results are gathered as they complete into one table
(one row per region and patient) and a status table (one row per patient: ok or the error).
A failing patient never stops the cohort. Patient identifiers from DICOM are never written:
patients are named by their folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from twin.errors import InputError


def find_studies(folder) -> list[Path]:
    """Sub-folders of ``folder`` (sorted), each one patient's study."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"cohort folder {root} does not exist or is not a folder")
    studies = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not studies:
        raise InputError(f"{root} holds no study folders; put one folder per patient in it")
    return studies


def process_study(folder, spect_calibration_cps_per_mbq: float | None = None) -> dict:
    """Run one patient's study (see the module docstring); returns {'patient', 'regions',
    'seconds'} with ``regions`` a list of row dicts. Raises on failure (the caller reports)."""
    import os

    os.environ.setdefault("JAX_ENABLE_X64", "1")
    import jax

    jax.config.update("jax_enable_x64", True)
    from pbpk_models import radionuclides as rn
    from pbpk_models import units as u
    from twin.imaging import load_study
    from twin.kinetics import fit_regions
    from twin.observe import observe

    t0 = time.time()
    folder = Path(folder)
    study = load_study(folder, spect_calibration_cps_per_mbq=spect_calibration_cps_per_mbq)
    obs = observe(study)
    spect = obs.select(modality="SPECT")
    if len(spect) == 0:
        raise InputError(f"{folder.name}: no SPECT scans of the therapy")
    rp = str(spect.radiopharmaceutical[0])
    sub = spect.select(radiopharmaceutical=rp)
    nuclide = rn.parse_radiopharmaceutical(rp).nuclide
    lam = rn.decay_constant_per_h(nuclide)
    tia = fit_regions(sub, lambda_phys_per_h=lam)
    labels = study.masks.labels
    voxel_ml = float(np.prod(labels.spacing_mm)) / 1000.0
    vol = {name: float((labels.array == lab).sum()) * voxel_ml for lab, name in study.masks.names}
    e = rn.energy_per_decay_mev(nuclide)
    rows = []
    for _, r in tia.iterrows():
        m = vol.get(r["region"], np.nan)
        rows.append({"patient": folder.name, "region": r["region"], "radiopharmaceutical": rp,
                     "tia_mbq_h": r["tia_mbq_h"], "tia_low": r["tia_low"],
                     "tia_high": r["tia_high"], "volume_ml": m,
                     "dose_gy": r["tia_mbq_h"] * u.gy_per_mbq_h(e, m) if m and m > 0 else np.nan})
    return {"patient": folder.name, "regions": rows, "seconds": time.time() - t0}


def run_cohort(folder, *, scheduler: str | None = None, n_workers: int = 2, retries: int = 1,
               spect_calibration_cps_per_mbq: float | None = None, progress: bool = True,
               timeout_s: float | None = None):
    """Process every study in ``folder`` on Dask; return (regions table, status table)."""
    import pandas as pd
    from dask.distributed import Client, LocalCluster, as_completed

    studies = find_studies(folder)
    if n_workers < 1:
        raise InputError(f"n_workers must be at least 1, got {n_workers}")
    if retries < 0:
        raise InputError(f"retries must be >= 0, got {retries}")
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    else:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    try:
        futures = {client.submit(process_study, str(s), spect_calibration_cps_per_mbq,
                                 retries=retries, key=f"study-{i}-{s.name}", pure=False): s.name
                   for i, s in enumerate(studies)}
        rows, status = [], []
        it = as_completed(futures)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(futures), desc="patients", unit="study")
        for fut in it:
            name = futures[fut]
            try:
                res = fut.result(timeout=timeout_s)
                rows.extend(res["regions"])
                status.append({"patient": name, "status": "ok", "error": "",
                               "seconds": round(res["seconds"], 2)})
            except Exception as exc:  # noqa: BLE001 - a failing patient is reported, not fatal
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                status.append({"patient": name, "status": "failed",
                               "error": f"{type(exc).__name__}: {msg}"[:300], "seconds": np.nan})
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    cols = ["patient", "region", "radiopharmaceutical", "tia_mbq_h", "tia_low", "tia_high",
            "volume_ml", "dose_gy"]
    table = pd.DataFrame(rows, columns=cols).sort_values(["patient", "region"],
                                                         ignore_index=True)
    status = pd.DataFrame(status).sort_values("patient", ignore_index=True)
    return table, status
