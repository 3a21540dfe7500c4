"""``twin demo``: the pipeline on the built-in synthetic patient.

Stages (more arrive with calibration, MBAM, planning):
1. the population-typical patient's twin (``psma-pbrpk``, corrected variant): 68Ga-PSMA-11 PET
   (150 MBq, 3 nmol) at t = 0 and 177Lu-PSMA-617 (7.4 GBq) one week later, one simulation;
2. the synthetic patient written as real DICOM (CT, PET 1 h, SPECT 4/24/96/168 h, RTSTRUCT) from
   the twin's region curves, with its ground truth;
3. the DICOM read back like clinical data and observed: region activity per scan;
4. the therapy's voxel TIA (the twin's region TIA spread over each region by the latest SPECT's
   uptake pattern) and the absorbed dose by kernel convolution with CT density correction;
5. outputs: DIR/regions.csv (per region: twin TIA, TIAC, self-dose per GBq with clinical ranges,
   voxel dose statistics), DIR/observations.csv, DIR/dose.nii.gz, DIR/dose_rtdose.dcm,
   DIR/provenance.json (versions, parameters, seed, timings), DIR/study/ (the DICOM).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

# Published clinical ranges of absorbed dose per administered activity (Gy/GBq), for the table.
# 177Lu-PSMA-617: kidneys 0.39 (Violet J et al., J Nucl Med 2019;60:517) to 0.82 +/- 0.25
# (Mol Imaging Radionucl Ther 2017, PMC5472088); salivary glands 0.44-0.72 (Hohberg M et al.,
# Mol Imaging Biol 2016;18:437: 0.72) to 1.90 +/- 1.19 (parotid, PMC5472088).
# 177Lu-DOTATATE: kidneys 0.38 +/- 0.19 (EJNMMI Phys 2018, doi:10.1186/s40658-018-0232-9) to
# 0.57 +/- 0.09 (Clin Nucl Med 2013); spleen 0.85 (Lutathera label) to 1.17 +/- 0.14 (Clin Nucl
# Med 2013). See shared/data/pbpk/clinical_reference.md and docs/research/.
CLINICAL_RANGES_GY_PER_GBQ = {
    "lu177-psma-617": {"Kidney": (0.39, 0.82), "SG": (0.44, 1.90)},
    "lu177-dotatate": {"Kidney": (0.38, 0.57), "Spleen": (0.85, 1.17)},
}
PET_MBQ, PET_NMOL = 150.0, 3.0  # 68Ga-PSMA-11: 1.8-2.2 MBq/kg label; 3 nmol (Begum 2019)
THERAPY_MBQ = 7400.0            # standard 177Lu-PSMA-617 cycle (VISION)
THERAPY_AT_H = 168.0
SPECT_TIMES_H = (4.0, 24.0, 96.0, 168.0)


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the pipeline on the built-in synthetic patient",
        description="Build the population-typical 177Lu-PSMA-617 twin, write the synthetic "
                    "patient as DICOM from it, read it back, observe, and compute voxel dose. "
                    "Outputs: regions.csv, observations.csv, dose.nii.gz, dose_rtdose.dcm, "
                    "provenance.json and the DICOM study, in --out.")
    p.add_argument("--out", type=Path, default=Path("twin-demo"), help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="coarser synthetic patient (6.6 mm voxels) for a faster run")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic patient")
    p.set_defaults(func=run)


def _stage(i, n, text):
    print(f"[{i}/{n}] {text}", flush=True)


def twin_table(result, rp: str):
    """Region TIA, TIAC and self-dose per GBq of one radiopharmaceutical, with clinical ranges."""
    from pbpk_models import radionuclides as rn
    from twin.cli.simulate import region_table

    nuclide = dict((r.name, r.nuclide) for r in result.model.radiopharmaceuticals)[rp]
    i = result.radiopharmaceuticals.index(rp)
    table = region_table(result, rn.energy_per_decay_mev(nuclide), rp_index=i)
    ranges = CLINICAL_RANGES_GY_PER_GBQ.get(rp, {})
    table["clinical_gy_per_gbq"] = [
        f"{ranges[r][0]}-{ranges[r][1]}" if r in ranges else "" for r in table["region"]]
    return table


def run(args) -> int:
    import jax
    import numpy as np
    import pandas as pd

    from pbpk_models import radionuclides as rn
    from pbpk_models.library import build_spec
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import simulate
    from twin.atomic import write_csv_atomic, write_text_atomic
    from twin.errors import InputError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    study_dir = out / "study"
    if study_dir.exists() and any(study_dir.iterdir()):
        raise InputError(f"{study_dir} exists and is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    n = 5
    timings = {}
    t0 = time.time()

    _stage(1, n, "the population-typical twin: 68Ga-PSMA-11 PET, then 7.4 GBq 177Lu-PSMA-617")
    spacing = 6.6 if args.quick else 4.4
    # the synthetic patient's anatomy sets the twin's organ and lesion volumes
    spec = build_spec("psma-pbrpk", "corrected").with_values(anatomy_volumes_ml(spacing, args.seed))
    regimen = Regimen((
        Administration(0.0, "ga68-psma-11", PET_MBQ, PET_NMOL),
        Administration(THERAPY_AT_H, "lu177-psma-617", THERAPY_MBQ, 57.09),
    ))
    scan_times = [1.0] + [THERAPY_AT_H + t for t in SPECT_TIMES_H]
    times = np.unique(np.concatenate([np.linspace(0.0, THERAPY_AT_H + 60 * 24, 301), scan_times]))
    result = simulate(spec, regimen, times_h=times, days=60.0)
    tacs = pd.concat([result.to_frame(rp) for rp in result.radiopharmaceuticals])
    table = twin_table(result, "lu177-psma-617")
    timings["twin_s"] = round(time.time() - t0, 2)

    _stage(2, n, "the synthetic patient as DICOM (CT, PET, SPECT x4, RTSTRUCT)")
    t = time.time()
    from twin.imaging import simulate_phantom, write_phantom

    phantom = simulate_phantom(tacs, spacing_mm=spacing, pet_time_h=1.0,
                               spect_times_h=SPECT_TIMES_H, pet_admin_h=0.0,
                               therapy_admin_h=THERAPY_AT_H, pet_activity_mbq=PET_MBQ,
                               therapy_activity_mbq=THERAPY_MBQ, seed=args.seed)
    write_phantom(phantom, study_dir)
    timings["phantom_s"] = round(time.time() - t, 2)

    _stage(3, n, "reading the DICOM back and observing region activity")
    t = time.time()
    from twin.imaging import load_study
    from twin.observe import observe

    # the camera's calibration factor, as a user gives it for their SPECT/CT
    study = load_study(study_dir / "dicom", spect_calibration_cps_per_mbq=phantom.settings[
        "spect_calibration_cps_per_mbq"])
    observations = observe(study)
    observations.to_csv(out / "observations.csv")
    timings["observe_s"] = round(time.time() - t, 2)

    _stage(4, n, "voxel TIA and absorbed dose (kernel convolution, CT density)")
    t = time.time()
    dose_table = _voxel_dose(study, result.tia("lu177-psma-617"), out)
    timings["dose_s"] = round(time.time() - t, 2)

    _stage(5, n, "tables and provenance")
    table = table.merge(dose_table, on="region", how="left")
    write_csv_atomic(table, out / "regions.csv")
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
              for p in sorted((out).glob("*.csv"))}
    provenance = {
        "twin_version": __import__("twin").__version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "model": {"name": spec.name, "variant": spec.variant, "references": spec.references},
        "parameters": {k: float(v) for k, v in zip(result.model.parameter_names,
                                                    np.asarray(result.params))},
        "regimen": regimen.to_frame().to_dict(orient="records"),
        "seed": args.seed,
        "voxel_mm": spacing,
        "nuclide_energy_mev": rn.energy_per_decay_mev("Lu-177"),
        "output_sha256_16": hashes,
        "timings_s": {**timings, "total_s": round(time.time() - t0, 2)},
    }
    write_text_atomic(out / "provenance.json", json.dumps(provenance, indent=2))
    show = table[["region", "tia_mbq_h", "tiac_h", "dose_gy_per_gbq", "clinical_gy_per_gbq"]
                 + [c for c in ("mean_gy",) if c in table]]
    print(show.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out}/regions.csv, observations.csv, dose.nii.gz, dose_rtdose.dcm, "
          f"provenance.json, study/ ({time.time() - t0:.0f} s)")
    return 0


# model volume parameters that the synthetic anatomy defines
ANATOMY_PARAMETERS = ("Kidney", "SG", "Liver", "Spleen", "Tumor1", "Tumor2", "TumorRest")


def anatomy_volumes_ml(spacing_mm: float, seed: int) -> dict:
    """Volumes (mL) of the synthetic patient's organs and lesions, as model parameters."""
    import numpy as np

    from twin.imaging.phantom import anatomy

    masks, _ = anatomy(spacing_mm, seed=seed)
    voxel_ml = float(np.prod(masks.labels.spacing_mm)) / 1000.0
    labels = masks.labels.array
    out = {}
    for label, region in masks.names:
        if region in ANATOMY_PARAMETERS:
            out[f"V_{region}"] = float((labels == label).sum()) * voxel_ml
    return out


def _voxel_dose(study, region_tia: dict, out: Path):
    """Spread the twin's region TIA by the latest SPECT and convolve; write dose files."""
    import numpy as np

    from twin.dosimetry import (compute_dose, hu_to_density, region_statistics,
                                spread_region_tia, write_rtdose)
    from twin.imaging import resample_to
    from twin.imaging.io import write_nifti

    labels = study.masks.labels
    names = dict(study.masks.names)
    latest = max(study.spect, key=lambda s: s.start)
    uptake = resample_to(latest.volume, labels, interpolation="linear").array
    uptake = np.clip(uptake, 0.0, None)
    known = {r: v for r, v in region_tia.items() if r in set(names.values())}
    tia = spread_region_tia(known, labels.array, names, uptake)
    ct = resample_to(study.ct, labels, interpolation="linear", default_value=-1000.0)
    density = hu_to_density(ct.array)
    spacing_zyx = tuple(float(s) for s in labels.spacing_mm[::-1])
    dose = np.asarray(compute_dose(tia.astype(np.float32), "Lu-177", spacing_zyx,
                                   density_g_cm3=density))
    dose_vol = labels.replace(array=dose.astype(np.float32), units="Gy")
    write_nifti(dose_vol, out / "dose.nii.gz")
    write_rtdose(dose_vol.to_sitk(), out / "dose_rtdose.dcm")
    voxel_ml = float(np.prod(labels.spacing_mm)) / 1000.0
    stats = region_statistics(dose, labels.array, names, voxel_volume_ml=voxel_ml)
    keep = [c for c in ("region", "mean_gy", "max_gy", "d2_gy", "d50_gy", "d98_gy")
            if c in stats.columns]
    return stats[keep]
