"""``twin dose``: voxel TIA (MBq h per voxel) -> absorbed dose (Gy) by kernel convolution.

    twin dose --tia TIA.nii.gz --nuclide Lu-177 [--ct CT.nii.gz] [--masks LABELS.nii.gz]
              --out DOSE.nii.gz [--rtdose DOSE.dcm] [--table REGIONS.csv]

Everything is read and computed before anything is written; every output is written atomically,
so bad input leaves no output file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from twin.errors import InputError


def register(subparsers):
    p = subparsers.add_parser(
        "dose",
        help="absorbed dose map (Gy) from a voxel TIA map (MBq h per voxel)",
        description="Convolve a time-integrated activity map (MBq h per voxel) with the voxel "
                    "S-value kernel of the nuclide at the image's voxel size (Lanconelli 2012 "
                    "database, resampled to any voxel size), optionally density-corrected from "
                    "CT; nuclides without a kernel (Tb-161, Ac-225, Pb-212 ...) deposit their "
                    "non-penetrating energy locally. Dose in Gy.",
    )
    p.add_argument("--tia", required=True, help="TIA volume, MBq h per voxel (NIfTI)")
    p.add_argument("--nuclide", required=True, help="e.g. Lu-177, Y-90, I-131, Tb-161, Ac-225")
    p.add_argument("--ct", help="CT in HU (NIfTI) for density correction (Schneider 2000)")
    p.add_argument("--masks", help="label volume (NIfTI, integer labels, 0 = background)")
    p.add_argument("--labels-table", help="CSV with columns label,name naming the mask labels")
    p.add_argument("--out", required=True, help="dose output, Gy (NIfTI .nii.gz)")
    p.add_argument("--rtdose", help="also write a DICOM RT Dose file")
    p.add_argument("--rtdose-reference",
                   help="a DICOM file of the source CT/SPECT: RT Dose takes its frame of "
                        "reference, study and patient (else new UIDs, anonymous)")
    p.add_argument("--table", help="per-region table CSV (needs --masks)")
    p.add_argument("--dvh", help="cumulative DVH CSV: region, dose_gy, volume_fraction "
                                 "(needs --masks)")
    p.add_argument("--dvh-plot", help="cumulative DVH plot (PNG/SVG/PDF; needs --masks)")
    p.add_argument("--v-gy", default="", help="comma-separated doses x (Gy) for V_x columns")
    p.add_argument("--resample", action="store_true",
                   help="resample CT (linear) and masks (nearest) onto the TIA grid if needed")
    p.add_argument("--bone-threshold", type=float, default=None, metavar="G_CM3",
                   help="use the bone kernel where CT density >= this (g/cm3); needs --ct")
    p.set_defaults(func=run)


def _labels_table(path) -> dict:
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise InputError(f"labels table not found: {p}")
    try:
        df = pd.read_csv(p)
    except Exception as exc:  # pandas raises several parser errors
        raise InputError(f"cannot read labels table {p}: {type(exc).__name__}") from None
    if not {"label", "name"} <= set(df.columns):
        raise InputError(f"labels table {p} needs columns 'label' and 'name', "
                         f"has {list(df.columns)}")
    return {int(r.label): str(r.name) for r in df.itertuples(index=False)}


def _v_thresholds(text: str) -> tuple:
    if not text:
        return ()
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--v-gy must be comma-separated numbers in Gy, got {text!r}") from None


def run(args) -> int:
    from pbpk_models.radionuclides import half_life_h, normalise_nuclide
    from twin.atomic import atomic_path, write_csv_atomic
    from twin.dosimetry.dvh import cumulative_dvh, plot_dvh
    from twin.dosimetry.images import dose_from_images, read_image
    from twin.dosimetry.rtdose import write_nifti, write_rtdose

    nuclide = normalise_nuclide(args.nuclide)
    half_life_h(nuclide)  # unknown nuclide -> InputError before reading images
    inputs = [p for p in (args.tia, args.ct, args.masks, args.labels_table,
                          args.rtdose_reference) if p]
    outputs = [p for p in (args.out, args.rtdose, args.table, args.dvh, args.dvh_plot) if p]
    for o in outputs:
        po = Path(o)
        parent = po.parent if str(po.parent) else Path(".")
        if not parent.exists():
            raise InputError(f"output folder {parent} does not exist; create it first")
        if any(Path(i).exists() and po.exists() and po.resolve() == Path(i).resolve()
               for i in inputs):
            raise InputError(f"refusing to overwrite the input file {po}; choose another output")
    if len({str(Path(o).resolve()) for o in outputs}) != len(outputs):
        raise InputError("two outputs have the same file name; give each its own")
    if not str(args.out).endswith((".nii", ".nii.gz")):
        raise InputError(f"--out must be a NIfTI file name (.nii or .nii.gz), got {args.out}")
    if (args.table or args.dvh or args.dvh_plot) and not args.masks:
        raise InputError("--table, --dvh and --dvh-plot need --masks (a label volume)")
    if args.bone_threshold is not None and not args.ct:
        raise InputError("--bone-threshold needs --ct")
    if args.rtdose_reference and not Path(args.rtdose_reference).exists():
        raise InputError(f"RT Dose reference file not found: {args.rtdose_reference}")
    vx = _v_thresholds(args.v_gy)
    names = _labels_table(args.labels_table) if args.labels_table else None

    tia = read_image(args.tia, "TIA")
    ct = read_image(args.ct, "CT") if args.ct else None
    masks = read_image(args.masks, "label volume") if args.masks else None
    dose_img, result = dose_from_images(tia, nuclide, ct, masks, names, resample=args.resample,
                                        bone_density_threshold_g_cm3=args.bone_threshold,
                                        v_thresholds_gy=vx)
    dvh = cumulative_dvh(result.dose_gy, _labels_on_grid(masks, tia, args.resample), names) \
        if (args.dvh or args.dvh_plot) else None

    # All computed: now write. Every output goes to a temporary file first; only when all of
    # them are complete are they renamed onto their targets, so an error leaves no output.
    with contextlib.ExitStack() as stack:
        tmp = {o: stack.enter_context(atomic_path(o, inputs=inputs)) for o in outputs}
        write_nifti(dose_img, tmp[args.out])
        if args.rtdose:
            write_rtdose(dose_img, tmp[args.rtdose], reference=args.rtdose_reference,
                         description=f"twin dose {nuclide}")
        if args.table:
            write_csv_atomic(result.table, tmp[args.table])
        if args.dvh:
            write_csv_atomic(dvh, tmp[args.dvh])
        if args.dvh_plot:
            plot_dvh(dvh, tmp[args.dvh_plot], title=f"Cumulative DVH ({nuclide})")
    dmax = float(result.dose_gy.max()) if result.dose_gy.size else 0.0
    print(f"twin dose: {nuclide} ({result.method}"
          f"{', density-corrected' if result.density_corrected else ''}), "
          f"max {dmax:.4g} Gy -> {args.out}")
    return 0


def _labels_on_grid(masks, tia, resample):
    import SimpleITK as sitk

    from twin.dosimetry.images import onto_grid

    lab = onto_grid(masks, tia, "label volume", resample, nearest=True, default=0)
    return sitk.GetArrayFromImage(lab).astype("int64")
