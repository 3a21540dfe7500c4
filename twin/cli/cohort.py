"""``twin cohort``: many studies through the pipeline on Dask, one task per patient.

Fixed interface (shared/CLI.md): ``twin cohort FOLDER --out DIR/ [--scheduler ADDRESS]``;
added: ``--config CONFIG.toml`` (the ``twin run`` format, docs/run.md) and ``--method
pipeline|kinetics``. The default method is the whole pipeline per patient
(:func:`twin.pipeline.run_pipeline`: observe, calibrate with ``calibration.fit``, predict, voxel
dose, report), with the configuration of ``--config`` or, without one, ``twin run``'s defaults;
each patient's outputs in DIR/patients/<name>/. ``--method kinetics`` is the lighter method
(region TIA from sum-of-exponentials fits of the SPECT series, no calibration).
FOLDER holds one sub-folder per patient (DICOM: CT, PET, SPECT series, RTSTRUCT/SEG). Outputs:
DIR/cohort_regions.csv (patient, region, radiopharmaceutical, tia_mbq_h, tia_low, tia_high,
volume_ml, dose_gy; pipeline also tiac_h, dose_gy_per_gbq, mean_gy, max_gy, d98_gy, limit_gy,
fraction_of_limit) and DIR/cohort_status.csv (patient, status ok|failed, error, seconds,
method, output, fit_chi2).
A failing patient is reported in the status table and on stderr; it never stops the cohort.
Exit code 0 if at least one patient completed, 3 if all failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twin.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "cohort", help="run many patient studies on Dask (one task per patient)",
        description="Process every study folder inside FOLDER (one per patient), one Dask task "
                    "per patient on a LocalCluster (default) or an existing scheduler. With "
                    "--config CONFIG.toml (the format of `twin run`, docs/run.md) each patient "
                    "goes through the whole pipeline: read, observe, calibrate the twin "
                    "(calibration.fit), predict region TIA with credible intervals, voxel dose, "
                    "report; outputs per patient in DIR/patients/<name>/. Without --config the "
                    "pipeline runs with the defaults of `twin run`. --method kinetics is the "
                    "lighter method: it fits each region's SPECT series with exponentials and "
                    "computes region TIA and self-dose (no calibration). Writes "
                    "DIR/cohort_regions.csv and DIR/cohort_status.csv; failing patients are "
                    "reported, not fatal.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", type=Path, help="folder with one study sub-folder per patient")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler, e.g. tcp://host:8786 "
                        "(default: a LocalCluster on this machine)")
    p.add_argument("--config", type=Path, default=None,
                   help="CONFIG.toml of the pipeline (same format as `twin run`, docs/run.md; "
                        "default: the defaults of `twin run`)")
    p.add_argument("--method", choices=("pipeline", "kinetics"), default="pipeline",
                   help="per-patient method: the whole pipeline, or region TIA from "
                        "exponential fits of the SPECT series only (kinetics)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed task")
    p.add_argument("--spect-calibration", type=float, default=None,
                   help="SPECT camera calibration (counts/s per MBq) for SPECT stored as counts "
                        "(overrides the config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from twin.atomic import write_csv_atomic
    from twin.trials.cohort import run_cohort

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if args.scheduler is not None and not str(args.scheduler).startswith(
            ("tcp://", "tls://", "inproc://", "ucx://")):
        raise InputError(f"--scheduler must be an address like tcp://host:8786, got "
                         f"{args.scheduler!r}")
    if args.spect_calibration is not None and not args.spect_calibration > 0:
        raise InputError("--spect-calibration must be a positive number of counts/s per MBq")
    config = None
    if args.config is not None:
        from twin.cli.run import load_config

        if args.method == "kinetics":
            raise InputError("--config configures the pipeline; drop it or use --method pipeline")
        config, _title = load_config(args.config)
    method = args.method
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if method == "pipeline":
        folder = Path(args.folder).resolve()
        if out.resolve() == folder or folder in out.resolve().parents:
            raise InputError("--out must not be inside the cohort folder (its patients folder "
                             "would be read as a study next time)")
    from twin.trials.cohort import find_studies

    find_studies(args.folder)  # bad folder: error before anything is written
    out.mkdir(parents=True, exist_ok=True)
    table, status = run_cohort(args.folder, scheduler=args.scheduler, n_workers=args.workers,
                               retries=args.retries,
                               spect_calibration_cps_per_mbq=args.spect_calibration,
                               progress=not args.no_progress, method=method, config=config,
                               out=out)
    write_csv_atomic(table, out / "cohort_regions.csv", index=False)
    write_csv_atomic(status, out / "cohort_status.csv", index=False)
    failed = status[status.status != "ok"]
    for _, r in failed.iterrows():
        print(f"twin cohort: patient {r.patient} failed: {r.error}", file=sys.stderr)
    print(f"{(status.status == 'ok').sum()} of {len(status)} patients completed; wrote "
          f"{out}/cohort_regions.csv, cohort_status.csv")
    return 0 if (status.status == "ok").any() else 3
