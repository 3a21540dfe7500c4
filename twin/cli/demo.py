"""``twin demo``: the pipeline on the built-in synthetic patient.

Stages:
1. the population-typical patient's twin (``psma-pbrpk``, corrected variant): 68Ga-PSMA-11 PET
   (150 MBq, 3 nmol) at t = 0 and 177Lu-PSMA-617 (7.4 GBq) one week later, one solve each;
2. the synthetic patient written as real DICOM (CT, PET 1 h, SPECT 4/24/96/168 h, RTSTRUCT) from
   the twin's region curves, with its ground truth (DIR/study/);
3-7. the shared pipeline (:func:`twin.pipeline.run_pipeline`, the same as ``twin run``): the
   DICOM read back like clinical data and observed; the twin calibrated on the PET and the first
   SPECT (DIR/twin.json); the sloppiness spectrum and the MBAM steps; voxel TIA and dose
   (DIR/dose.nii.gz, DIR/dose_rtdose.dcm); tables (DIR/regions.csv, DIR/observations.csv),
   DIR/report.html and DIR/provenance.json.

The pipeline's MBAM stage shows the twin's sloppiness spectrum and the hierarchy of the
reduction shipped with the package (``twin reduce`` made beforehand; see twin.pipeline). The full
demo also plans activity and cycles (twin.planning: DIR/plan.csv, DIR/plan_summary.csv).
``--quick``: 6.6 mm voxels, fewer posterior samples and no planning stage.
"""

from __future__ import annotations

from pathlib import Path

from twin.pipeline import CLINICAL_RANGES_GY_PER_GBQ as CLINICAL_RANGES_GY_PER_GBQ  # noqa: F401

PET_MBQ, PET_NMOL = 150.0, 3.0  # 68Ga-PSMA-11: 1.8-2.2 MBq/kg label; 3 nmol (Begum 2019)
THERAPY_MBQ = 7400.0            # standard 177Lu-PSMA-617 cycle (VISION)
THERAPY_NMOL = 57.09            # 10.18 labelled + 46.91 unlabelled (pbpk_models.regimen)
THERAPY_AT_H = 168.0
SPECT_TIMES_H = (4.0, 24.0, 96.0, 168.0)
QUICK_SPACING_MM, FULL_SPACING_MM = 6.6, 4.4
QUICK_SAMPLES, FULL_SAMPLES = 60, 200


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the pipeline on the built-in synthetic patient",
        description="Build the population-typical 177Lu-PSMA-617 twin, write the synthetic "
                    "patient as DICOM from it, read it back, observe, calibrate a personal twin "
                    "on the PET and the first SPECT, show its sloppiness spectrum and the MBAM "
                    "reduction shipped with the package, compute voxel dose and (full demo) plan "
                    "activity and cycles. Outputs in --out: "
                    "report.html, regions.csv, observations.csv, twin.json, dose.nii.gz, "
                    "dose_rtdose.dcm, provenance.json, plan.csv and plan_summary.csv (full demo) "
                    "and the DICOM study (study/dicom).")
    p.add_argument("--out", type=Path, default=Path("twin-demo"), help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="coarser synthetic patient (6.6 mm voxels), fewer posterior samples and no "
                        "planning stage, for a run under a minute")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the synthetic patient, the fit's starts and the "
                        "posterior samples")
    p.set_defaults(func=run)


def demo_config(quick: bool, seed: int, spect_calibration_cps_per_mbq: float,
                fwhm_mm: dict | None = None):
    """The pipeline configuration of the demo (what docs/run_config_example.toml writes out).

    ``fwhm_mm``: the synthetic scanners' resolution {'PET': mm, 'SPECT': mm} (default: those of
    :mod:`twin.imaging.phantom`), used by the partial-volume correction of the observations."""
    from twin.imaging.phantom import PET_FWHM_MM, SPECT_FWHM_MM
    from twin.pipeline import PipelineConfig

    fwhm_mm = dict(fwhm_mm or {"PET": PET_FWHM_MM, "SPECT": SPECT_FWHM_MM})

    return PipelineConfig(
        model="psma-pbrpk", variant="corrected", therapy="lu177-psma-617",
        ligand_nmol={"ga68-psma-11": PET_NMOL, "lu177-psma-617": THERAPY_NMOL},
        spect_calibration_cps_per_mbq=spect_calibration_cps_per_mbq,
        pvc="gtm", fwhm_mm=fwhm_mm,
        fit_seed=seed, sample_seed=seed,
        samples=QUICK_SAMPLES if quick else FULL_SAMPLES, plan=not quick)


def synthetic_study(study_dir: Path, spacing_mm: float, seed: int, progress=None):
    """Stages 1-2 of the demo: the population-typical twin drives the synthetic patient, written
    as DICOM (and its ground truth) into ``study_dir``. Returns (phantom, the therapy's true
    region TIA {region: MBq h}). The same seed gives the same files (tested)."""
    import numpy as np
    import pandas as pd

    from pbpk_models.library import build_spec
    from pbpk_models.regimen import Administration, Regimen
    from pbpk_models.simulate import POPULATION_SETTINGS, simulate
    from twin.imaging import simulate_phantom, write_phantom

    if progress is not None:
        progress.stage("truth_twin", "the population-typical twin: 68Ga-PSMA-11 PET, then "
                                     "7.4 GBq 177Lu-PSMA-617")
    # the synthetic patient's anatomy sets the twin's organ and lesion volumes
    spec = build_spec("psma-pbrpk", "corrected").with_values(anatomy_volumes_ml(spacing_mm, seed))
    regimen = Regimen((
        Administration(0.0, "ga68-psma-11", PET_MBQ, PET_NMOL),
        Administration(THERAPY_AT_H, "lu177-psma-617", THERAPY_MBQ, THERAPY_NMOL),
    ))
    scan_times = [1.0] + [THERAPY_AT_H + t for t in SPECT_TIMES_H]
    times = np.unique(np.concatenate([np.linspace(0.0, THERAPY_AT_H + 60 * 24, 301), scan_times]))
    # Rosenbrock (Rodas5P): robust for this stiff system and cheap to compile. One solve per
    # radiopharmaceutical: the 3 nmol of PET ligand a week earlier do not compete measurably with
    # the therapy (the coupled two-ligand solve gives the same therapy TIA to 3e-10, at 2.5x the
    # compile time; tests/pbpk_models/test_clinical_ranges.py solves it coupled)
    # (the two compile in parallel threads: XLA compiles a program on one core)
    from concurrent.futures import ThreadPoolExecutor

    from pbpk_models.simulate import prepare
    from twin.pipeline import _own_administrations

    def solve(rp):
        model, sub, days = jobs[rp]
        return simulate(model, sub, times_h=times, days=days, settings=POPULATION_SETTINGS)

    jobs = {}  # the models are built first, in this thread (sympy); only the solves run in two
    for rp in regimen.radiopharmaceuticals:
        sub = _own_administrations(regimen, rp)
        days = (times[-1] - sub.administrations[-1].time_h) / 24.0
        jobs[rp] = (prepare(spec, sub, None, days)[0], sub, days)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="twin-truth") as pool:
        results = dict(zip(jobs, pool.map(solve, list(jobs))))
    tacs = pd.concat([res.to_frame(rp) for rp, res in results.items()])
    truth_tia = results["lu177-psma-617"].tia("lu177-psma-617")

    if progress is not None:
        progress.stage("phantom", "the synthetic patient as DICOM (CT, PET, SPECT x4, RTSTRUCT)")
    phantom = simulate_phantom(tacs, spacing_mm=spacing_mm, pet_time_h=1.0,
                               spect_times_h=SPECT_TIMES_H, pet_admin_h=0.0,
                               therapy_admin_h=THERAPY_AT_H, pet_activity_mbq=PET_MBQ,
                               therapy_activity_mbq=THERAPY_MBQ, seed=seed)
    write_phantom(phantom, study_dir)
    return phantom, truth_tia


def run(args) -> int:
    res = run_demo(args.out, quick=args.quick, seed=args.seed)
    table, out = res["regions"], Path(args.out)
    show = table[["region", "tia_mbq_h", "tia_low", "tia_high", "truth_tia_mbq_h",
                  "dose_gy_per_gbq", "clinical_gy_per_gbq", "mean_gy"]]
    show = show[show["region"].isin(["Kidney", "SG", "Liver", "Spleen", "Tumor1", "Tumor2",
                                     "TumorRest", "RedMarrow"])]
    print(show.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    total = res["provenance"]["timings_s"]["total_s"]
    planned = "plan.csv, plan_summary.csv, " if (out / "plan.csv").is_file() else ""
    print(f"wrote {out}/report.html, regions.csv, observations.csv, twin.json, dose.nii.gz, "
          f"dose_rtdose.dcm, {planned}provenance.json, study/ ({total:.0f} s)")
    return 0


def run_demo(out, *, quick: bool = False, seed: int = 0) -> dict:
    """The whole demo into the folder ``out``; returns :func:`twin.pipeline.run_pipeline`'s
    results (tables, posterior, the report's data) with the truth TIA added to ``regions``."""
    from twin.errors import InputError
    from twin.pipeline import Progress, run_pipeline

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    study_dir = out / "study"
    if study_dir.exists() and any(study_dir.iterdir()):
        raise InputError(f"{study_dir} exists and is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(7 if quick else 8)
    spacing = QUICK_SPACING_MM if quick else FULL_SPACING_MM
    phantom, truth_tia = synthetic_study(study_dir, spacing, seed, progress)

    # the camera's calibration factor, as a user gives it for their SPECT/CT
    config = demo_config(quick, seed, phantom.settings["spect_calibration_cps_per_mbq"],
                         {"PET": phantom.settings["pet_fwhm_mm"],
                          "SPECT": phantom.settings["spect_fwhm_mm"]})
    res = run_pipeline(
        study_dir / "dicom", config, out, progress=progress,
        title="Theranostic digital twin: the synthetic demo patient",
        summary_extra={"patient": "synthetic (twin demo)", "voxel size (mm)": spacing,
                       "seed": seed},
        extra_provenance={"demo": {"seed": seed, "voxel_mm": spacing, "quick": quick,
                                   "truth_parameters_changed": anatomy_volumes_ml(spacing,
                                                                                  seed)}})
    res["regions"] = res["regions"].assign(
        truth_tia_mbq_h=res["regions"]["region"].map(truth_tia))
    return res


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
