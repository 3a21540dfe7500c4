"""``twin run STUDY_FOLDER --config CONFIG.toml --out DIR``: the pipeline on a user's own study.

The same pipeline as ``twin demo`` (:func:`twin.pipeline.run_pipeline`) after the synthetic
patient: read the DICOM study, observe, calibrate, voxel dose, tables, report.html and
provenance.json. The configuration is a TOML file (stdlib ``tomllib``); every key is documented
in docs/run.md and docs/run_config_example.toml. Unknown keys are an error (a misspelt key
must not be silently ignored).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twin.errors import InputError

# section -> {key: (PipelineConfig field or None, type)}; None: handled specially
_SCHEMA = {
    "model": {"name": ("model", str), "variant": ("variant", str)},
    "radiopharmaceuticals": {"therapy": ("therapy", str), "ligand_nmol": ("ligand_nmol", dict)},
    "imaging": {"spect_calibration_cps_per_mbq": ("spect_calibration_cps_per_mbq", float),
                "masks": ("masks", str), "mask_names": ("mask_names", str),
                "pet_calibration_uncertainty": (None, float),
                "spect_calibration_uncertainty": (None, float),
                "pvc": ("pvc", str), "pet_fwhm_mm": (None, float),
                "spect_fwhm_mm": (None, float)},
    "fit": {"scans": ("fit_scans", str), "personal": ("personal", list),
            "remainder": ("remainder", str),
            "volumes_from_masks": ("volumes_from_masks", list), "fixed": ("fixed", dict),
            "starts": ("starts", int), "max_nfev": ("max_nfev", int), "seed": ("fit_seed", int)},
    "prediction": {"samples": ("samples", int), "seed": ("sample_seed", int),
                   "level": ("level", float), "days": ("days", float)},
    "report": {"title": (None, str), "tac_regions": ("tac_regions", list)},
    "plan": {"enabled": ("plan", bool), "limits": ("plan_limits", list),
             "activity_gbq": ("plan_activity_gbq", list), "max_cycles": ("plan_max_cycles", int),
             "interval_weeks": ("plan_interval_weeks", float),
             "quantile": ("plan_quantile", float), "samples": ("plan_samples", int)},
    "reduce": {"enabled": ("reduce", bool), "file": ("reduction", str)},
}
_TABLES = ("regions", "limits")  # free-form {name: value} tables
_ARRAYS = ("regimen",)


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the pipeline on your own study (DICOM folder + TOML config)",
        description="Read a study folder (CT, PET, SPECT, RTSTRUCT/SEG or a NIfTI label map), "
                    "observe region activity, calibrate the twin on the PET and the first SPECT, "
                    "compute voxel dose, and write report.html, regions.csv, observations.csv, "
                    "twin.json, dose.nii.gz, dose_rtdose.dcm and provenance.json into --out. "
                    "CONFIG.toml: model, radiopharmaceuticals (ligand amounts), region mapping "
                    "(contour name = model region), camera calibration, fit and prediction "
                    "settings, seeds, dose limits, planning and the MBAM reduction shown; see "
                    "docs/run.md and "
                    "docs/run_config_example.toml.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("study", type=Path, metavar="STUDY_FOLDER",
                   help="folder with the study's DICOM series (any depth)")
    p.add_argument("--config", type=Path, required=True, help="CONFIG.toml")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.set_defaults(func=run)


def _typed(value, typ, where: str):
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ in (str, list, dict, bool) and isinstance(value, typ):
        return value
    raise InputError(f"{where}: expected a {typ.__name__}, got {value!r}")


def load_config(path) -> tuple:
    """(PipelineConfig, report title or None) from a TOML file; InputError if malformed."""
    import tomllib

    from twin.pipeline import PipelineConfig

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path} not found; start from docs/run_config_example.toml")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    kw, title, rel, fwhm = {}, None, {}, {}
    for section, body in doc.items():
        if section in _ARRAYS:
            if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
                raise InputError(f"{path}: [[regimen]] must be an array of tables with time_h, "
                                 f"radiopharmaceutical, activity_mbq, ligand_nmol")
            kw["regimen"] = tuple(body)
            continue
        if not isinstance(body, dict):
            raise InputError(f"{path}: top-level key {section!r} must be a [table]")
        if section in _TABLES:
            if section == "regions":
                kw["region_map"] = {str(k).strip().lower(): str(v).strip()
                                    for k, v in body.items()}
            else:
                kw["limits"] = {str(k): _typed(v, float, f"{path}: [limits] {k}")
                                for k, v in body.items()}
            continue
        if section not in _SCHEMA:
            raise InputError(f"{path}: unknown section [{section}]; known: "
                             f"{', '.join(list(_SCHEMA) + list(_TABLES) + list(_ARRAYS))}")
        for key, value in body.items():
            if key not in _SCHEMA[section]:
                raise InputError(f"{path}: unknown key {key!r} in [{section}]; known: "
                                 f"{', '.join(_SCHEMA[section])}")
            name, typ = _SCHEMA[section][key]
            value = _typed(value, typ, f"{path}: [{section}] {key}")
            if key == "title":
                title = value
            elif key.endswith("_calibration_uncertainty"):
                rel[key.split("_")[0].upper()] = value
            elif key.endswith("_fwhm_mm"):
                fwhm[key.split("_")[0].upper()] = value
            elif key in ("masks", "mask_names") or (section, key) == ("reduce", "file"):
                p = Path(value)
                kw[name] = str(p if p.is_absolute() else path.parent / p)
            elif key == "activity_gbq":
                kw[name] = tuple(_typed(x, float, f"{path}: [plan] activity_gbq") for x in value)
            elif typ is list:
                kw[name] = tuple(str(x) for x in value)
            elif key == "ligand_nmol":
                kw[name] = {str(k).lower(): _typed(v, float, f"{path}: ligand_nmol {k}")
                            for k, v in value.items()}
            elif key == "fixed":
                kw[name] = {str(k): _typed(v, float, f"{path}: [fit.fixed] {k}")
                            for k, v in value.items()}
            else:
                kw[name] = value
    if kw.get("reduction") and not Path(kw["reduction"]).is_file():
        raise InputError(f"{path}: [reduce] file {kw['reduction']} does not exist; make it with "
                         f"`twin reduce` or remove the key to use the shipped reduction")
    if rel:
        kw["calibration_rel"] = rel
    if fwhm:
        kw["fwhm_mm"] = fwhm
    if kw.get("pvc", "").lower() in ("none", "off", ""):
        kw.pop("pvc", None)
    elif kw["pvc"].lower() != "gtm":
        raise InputError(f"{path}: [imaging] pvc must be \"gtm\" or \"none\", not "
                         f"{kw['pvc']!r}")
    else:
        kw["pvc"] = "gtm"
        if not fwhm:
            raise InputError(f"{path}: [imaging] pvc = \"gtm\" needs pet_fwhm_mm and "
                             f"spect_fwhm_mm (the reconstructed resolution, mm, measured on a "
                             f"sphere phantom)")
    if "therapy" in kw:
        kw["therapy"] = kw["therapy"].lower()
    return PipelineConfig(**kw), title


def run(args) -> int:
    from twin.pipeline import Progress, run_pipeline

    config, title = load_config(args.config)
    if not args.study.is_dir():
        raise InputError(f"study folder {args.study} not found; give the folder of the DICOM "
                         f"series")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.resolve() == args.study.resolve() or args.study.resolve() in out.resolve().parents:
        raise InputError("--out must not be inside the study folder (the outputs would be read "
                         "as inputs next time)")
    out.mkdir(parents=True, exist_ok=True)
    res = run_pipeline(args.study, config, out, progress=Progress(6 if config.plan else 5),
                       title=title,
                       extra_provenance={"config_file": str(args.config)})
    table = res["regions"]
    cols = [c for c in ("region", "tia_mbq_h", "tia_low", "tia_high", "dose_gy_per_gbq",
                        "mean_gy", "limit_gy") if c in table]
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out}/report.html, regions.csv, observations.csv, twin.json, dose.nii.gz, "
          f"dose_rtdose.dcm, provenance.json ({res['provenance']['timings_s']['total_s']:.0f} s)")
    return 0
